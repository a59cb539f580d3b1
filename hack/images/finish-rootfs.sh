#!/bin/sh
# The last step of an image's root filesystem, shared by hack/images.sh (a directory unpacked
# from Debian packages) and the Dockerfile (the same inside a build stage), so that both build
# the same contents:
#
#   finish-rootfs.sh mic ROOTFS   distroless style: users, name-service switch, the CA bundle
#   finish-rootfs.sh nmi ROOTFS   the iptables wrapper under the six iptables names, a user
#   finish-rootfs.sh sdk ROOTFS   (the local node's test image of the Python SDK) a user
#
# Both then lose what a container never reads (documentation, manuals, package caches).
set -eu

kind=$1
root=$2
here=$(cd "$(dirname "$0")" && pwd)

# Adds a passwd/group line unless the name is there already.
add_line() {
	file=$root/etc/$1
	touch "$file"
	grep -q "^${2%%:*}:" "$file" || printf '%s\n' "$2" >>"$file"
}

finish_mic() {
	# No shell in this image: accounts exist only for ownership and `id` lookups.
	add_line passwd 'root:x:0:0:root:/root:/usr/sbin/nologin'
	add_line passwd 'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin'
	add_line passwd 'nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin'
	add_line group 'root:x:0:'
	add_line group 'nogroup:x:65534:'
	add_line group 'nonroot:x:65532:'
	mkdir -p "$root/home/nonroot"
	chown 65532:65532 "$root/home/nonroot"
	chmod 0700 "$root/home/nonroot"
	printf 'passwd: files\ngroup: files\nhosts: files dns\nnetworks: files\n' >"$root/etc/nsswitch.conf"
	# What update-ca-certificates would write, without running it: every Mozilla root that
	# ca-certificates ships, one PEM file (rustls reads it through the platform verifier).
	mkdir -p "$root/etc/ssl/certs"
	cat "$root"/usr/share/ca-certificates/mozilla/*.crt >"$root/etc/ssl/certs/ca-certificates.crt"
	test -s "$root/etc/ssl/certs/ca-certificates.crt"
}

finish_nmi() {
	add_line passwd 'nonroot:x:10001:10001:nonroot:/nonexistent:/usr/sbin/nologin'
	add_line group 'nonroot:x:10001:'
	install -m 0755 "$here/iptables-wrapper" "$root/usr/sbin/iptables-wrapper"
	for name in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
		ln -sfn iptables-wrapper "$root/usr/sbin/$name"
	done
	# Both backends must be there for the wrapper to choose between.
	for backend in xtables-legacy-multi xtables-nft-multi conntrack; do
		test -x "$root/usr/sbin/$backend"
	done
}

case "$kind" in
mic) finish_mic ;;
nmi) finish_nmi ;;
sdk) add_line passwd 'nonroot:x:65532:65532:nonroot:/tmp:/usr/sbin/nologin' && add_line group 'nonroot:x:65532:' ;;
*)
	echo "usage: $0 mic|nmi|sdk ROOTFS" >&2
	exit 2
	;;
esac

rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
	"$root"/usr/share/lintian "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
	"$root"/var/lib/apt/lists/* "$root"/var/log/*.log
