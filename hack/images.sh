#!/usr/bin/env bash
# Builds the MIC and NMI container images without a Docker daemon, from Debian packages and our
# release binaries, as OCI archives; optionally pushes them to a registry.
#
#   bash hack/images.sh                                   # target/images/{mic,nmi}.tar
#   bash hack/images.sh --push myregistry.azurecr.io/aadpodid
#   helm install pod-identity charts/aad-pod-identity --set image.repository=myregistry.azurecr.io/aadpodid
#
# Options: --out DIR (default target/images), --tag TAG (default: the chart's mic/nmi tag),
# --push REGISTRY/REPO (pushes REGISTRY/REPO/mic:TAG and REGISTRY/REPO/nmi:TAG with skopeo, which
# reads credentials from `skopeo login`), --insecure (plain HTTP or an untrusted certificate at
# that registry), --refresh (rebuild the Debian layers even when cached), --bin-dir DIR (take
# mic and nmi from DIR instead of building them with `cargo build --release`), --node (also the
# images a local kubelet node runs besides ours, for the sandbox and tests: pause.tar from the
# pause binary of hack/build-node.sh, and sdk-python.tar, Debian's python3 with the pinned
# Azure SDK of tests/python/requirements.txt).
#
# Each image is two layers: a Debian trixie root filesystem (cached under
# ~/.cache/aadpodid/images, keyed by everything that goes into it, rebuilt after 7 days so that
# Debian's security updates come in) and our binary.
#   mic  distroless style: base-files, libc6, libgcc-s1 and the CA bundle unpacked without
#        maintainer scripts; no shell; runs as 65532:65532.
#   nmi  Debian's essential set plus iptables (both backends), conntrack and ca-certificates,
#        and hack/images/iptables-wrapper in front of iptables (it picks the node's backend).
# The Dockerfile builds the same contents from the same package lists and the same last step
# (hack/images/finish-rootfs.sh); crates/sandbox/tests/images.rs holds them in step.
# Installs mmdebstrap, umoci and skopeo from Debian when missing. Needs root (mmdebstrap runs
# the NMI packages' maintainer scripts in a chroot).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

SUITE=trixie
MIRROR=${AADPODID_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Unpacked with their dependencies; the CA bundle comes from ca-certificates without its own.
MIC_PACKAGES="base-files libc6 libgcc-s1"
NMI_PACKAGES="iptables conntrack ca-certificates"
MIC_USER=65532:65532
NMI_USER=10001
IMAGE_PATH=/usr/sbin:/usr/bin:/sbin:/bin
MAX_AGE_DAYS=7

out=$root/target/images
tag=
push=
insecure=false
refresh=false
bin_dir=
node=false
while [[ $# -gt 0 ]]; do
	case $1 in
	--out) out=$2; shift 2 ;;
	--tag) tag=$2; shift 2 ;;
	--push) push=${2%/}; shift 2 ;;
	--insecure) insecure=true; shift ;;
	--refresh) refresh=true; shift ;;
	--bin-dir) bin_dir=$2; shift 2 ;;
	--node) node=true; shift ;;
	-h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "images: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done

log() { printf 'images: %s\n' "$*" >&2; }

temps=()
cleanup() { [[ ${#temps[@]} -eq 0 ]] || rm -rf "${temps[@]}"; }
trap cleanup EXIT

# The tag the chart pulls: values.yaml's mic.tag and nmi.tag, which must agree.
chart_tag() {
	local tags
	tags=$(sed -n 's/^  tag: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' charts/aad-pod-identity/values.yaml | sort -u)
	if [[ $(wc -l <<<"$tags") != 1 || -z $tags ]]; then
		log "charts/aad-pod-identity/values.yaml: mic.tag and nmi.tag differ or are missing ($tags); pass --tag"
		exit 1
	fi
	printf '%s\n' "$tags"
}

ensure_tools() {
	local missing=()
	for cmd in mmdebstrap umoci skopeo; do
		command -v "$cmd" >/dev/null || missing+=("$cmd")
	done
	if [[ ${#missing[@]} -gt 0 ]]; then
		log "installing ${missing[*]} from Debian"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends mmdebstrap umoci skopeo >/dev/null
	fi
}

# Prints the cache key of kind's base layer: every input that shapes it.
base_key() {
	{
		printf 'suite=%s mirror=%s kind=%s mic=%s nmi=%s\n' "$SUITE" "$MIRROR" "$1" "$MIC_PACKAGES" "$NMI_PACKAGES"
		declare -f "mmdebstrap_$1"
		cat hack/images/finish-rootfs.sh
		case $1 in
		nmi) cat hack/images/iptables-wrapper ;;
		sdk) cat tests/python/requirements.txt ;;
		esac
	} | sha256sum | cut -c1-16
}

mmdebstrap_mic() {
	# The CA bundle without ca-certificates' dependencies (openssl, debconf): only its data.
	local hook='cd "$1/tmp" && APT_CONFIG=$MMDEBSTRAP_APT_CONFIG apt-get download -qq ca-certificates &&
		dpkg-deb -x ca-certificates_*.deb "$1" && rm -f ca-certificates_*.deb'
	nice -n 10 mmdebstrap --quiet --variant=extract --include="${MIC_PACKAGES// /,}" \
		--extract-hook="$hook" "$SUITE" "$1" "$MIRROR"
}

mmdebstrap_nmi() {
	local exclude=() dir
	for dir in doc man info locale; do
		exclude+=(--dpkgopt="path-exclude=/usr/share/$dir/*")
	done
	nice -n 10 mmdebstrap --quiet --variant=essential --include="${NMI_PACKAGES// /,}" "${exclude[@]}" "$SUITE" "$1" "$MIRROR"
}

# The pods' Python SDK: Debian's python3, the pinned packages as wheels built for it.
mmdebstrap_sdk() {
	local hook='python=$(chroot "$1" python3 -c "import sys; print(\"%d.%d\" % sys.version_info[:2])") &&
		python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-compile --only-binary=:all: \
			--platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 \
			--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
			--python-version "$python" --implementation cp \
			--target "$1/usr/local/lib/python$python/dist-packages" -r "$REQUIREMENTS"'
	REQUIREMENTS=$root/tests/python/requirements.txt nice -n 10 mmdebstrap --quiet --variant=essential \
		--include=python3,ca-certificates --dpkgopt='path-exclude=/usr/share/doc/*' \
		--customize-hook="$hook" "$SUITE" "$1" "$MIRROR"
}

# Sets BASE_LAYER to kind's base layer (an uncompressed tar), building it when not cached.
base_layer() {
	local kind=$1 cache key layer tmp
	cache=${AADPODID_IMAGES_CACHE:-$HOME/.cache/aadpodid/images}
	key=$(base_key "$kind")
	layer=$cache/$kind-base-$key.tar
	mkdir -p "$cache"
	if [[ $refresh == false && -n $(find "$layer" -mtime "-$MAX_AGE_DAYS" 2>/dev/null) ]]; then
		log "$kind: Debian layer cached ($layer)"
		BASE_LAYER=$layer
		return
	fi
	log "$kind: building the Debian $SUITE layer"
	tmp=$(mktemp -d "$cache/.build.XXXXXX")
	temps+=("$tmp")
	"mmdebstrap_$kind" "$tmp/rootfs" >&2
	sh hack/images/finish-rootfs.sh "$kind" "$tmp/rootfs"
	# Device nodes and mount points' contents come from the runtime, not the image.
	rm -rf "$tmp"/rootfs/dev/* "$tmp"/rootfs/proc/* "$tmp"/rootfs/sys/* "$tmp"/rootfs/tmp/*
	tar --sort=name --numeric-owner --xattrs -C "$tmp/rootfs" -cf "$tmp/layer.tar" .
	for old in "$cache/$kind"-base-*.tar; do [[ $old == "$layer" ]] || rm -f "$old"; done
	mv -f "$tmp/layer.tar" "$layer"
	rm -rf "$tmp"
	BASE_LAYER=$layer
}

# A layer (uncompressed tar, files owned by root) holding FILE at PATH with MODE.
file_layer() {
	local file=$1 path=$2 mode=$3 dir
	dir=$(mktemp -d)
	temps+=("$dir")
	install -D -m "$mode" "$file" "$dir/tree/${path#/}"
	tar --sort=name --numeric-owner --owner=0 --group=0 -C "$dir/tree" -cf "$dir/layer.tar" .
	FILE_LAYER=$dir/layer.tar
}

# Writes $out/<name>.tar, an OCI archive of LAYERs (uncompressed tars, in order) run as USER
# with ENTRYPOINT, referenced as REF (the name a kubelet or `docker load` gives it).
assemble() {
	local name=$1 ref=$2 user=$3 entrypoint=$4 tmp layer
	shift 4
	tmp=$(mktemp -d)
	temps+=("$tmp")
	umoci init --layout "$tmp/oci"
	umoci new --image "$tmp/oci:build"
	for layer in "$@"; do
		umoci raw add-layer --image "$tmp/oci:build" --history.created_by "hack/images.sh" "$layer"
	done
	umoci config --image "$tmp/oci:build" --os linux --architecture amd64 \
		--config.entrypoint "$entrypoint" --config.user "$user" --config.env "PATH=$IMAGE_PATH" \
		--config.label "org.opencontainers.image.title=$name" --config.label "org.opencontainers.image.version=${ref##*:}"
	umoci gc --layout "$tmp/oci"
	mkdir -p "$out"
	rm -f "$out/$name.tar"
	skopeo copy --quiet "oci:$tmp/oci:build" "oci-archive:$out/$name.tar:$ref"
	log "$name: $out/$name.tar ($(du -h "$out/$name.tar" | cut -f1))"
}

# mic or nmi: the Debian layer and /usr/bin/<kind>, named `localhost/aadpodid/<kind>:<tag>`: a name
# no public registry can serve, so an imported archive is used only where it was imported
# (`--set image.repository=localhost/aadpodid`); `--push` names them after the registry instead.
ours() {
	local kind=$1 user=$2
	base_layer "$kind"
	file_layer "$bin_dir/$kind" "/usr/bin/$kind" 0755
	assemble "$kind" "localhost/aadpodid/$kind:$tag" "$user" "/usr/bin/$kind" "$BASE_LAYER" "$FILE_LAYER"
}

# The node's own images: the pod sandbox (pause) and the pods' Python SDK.
node_images() {
	local node_bin
	node_bin=$(bash hack/build-node.sh | tail -n 1)
	file_layer "$node_bin/pause" /pause 0755
	assemble pause "registry.k8s.io/pause:$("$node_bin/pause" -v | sed -n 's/.*v\([0-9.]*\).*/\1/p')" \
		65535:65535 /pause "$FILE_LAYER"
	base_layer sdk
	assemble sdk-python "localhost/aadpodid/sdk-python:$tag" 65532:65532 /usr/bin/python3 "$BASE_LAYER"
}

push_image() {
	local kind=$1 flags=()
	[[ $insecure == true ]] && flags+=(--dest-tls-verify=false)
	log "pushing $push/$kind:$tag"
	skopeo copy --quiet "${flags[@]}" "oci-archive:$out/$kind.tar" "docker://$push/$kind:$tag"
}

[[ $(id -u) == 0 ]] || { log "needs root (mmdebstrap builds the Debian layers in a chroot)"; exit 1; }
[[ -n $tag ]] || tag=$(chart_tag)
ensure_tools
start=$SECONDS
if [[ -z $bin_dir ]]; then
	log "building mic and nmi (release)"
	nice -n 10 cargo build --release --locked -q -p aadpodid-mic -p aadpodid-nmi
	bin_dir=${CARGO_TARGET_DIR:-$root/target}/release
fi
ours mic "$MIC_USER"
ours nmi "$NMI_USER"
[[ $node == false ]] || node_images
if [[ -n $push ]]; then
	push_image mic
	push_image nmi
fi
log "done in $((SECONDS - start))s"
