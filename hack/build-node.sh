#!/usr/bin/env bash
# Builds what a local kubelet node needs beyond Debian's containerd, runc and CNI plugins: the
# kubelet, and the kube-scheduler and kube-controller-manager that place a chart's Deployment
# and DaemonSet pods on it (from the wrapper module hack/node, through the Go module proxy, at
# the control plane's Kubernetes version), and the pause binary of the same release (its C
# source ships in the k8s.io/kubernetes module; built static with gcc).
#
# Cached like hack/build-tools.sh: ${AADPODID_NODE_DIR:-$HOME/.cache/aadpodid/node}/<key>/bin,
# <key> hashing every input, with the stable symlink <node dir>/bin. A second run prints
# "cached" and returns at once. The last line of stdout is always the bin directory.
set -euo pipefail

K8S_VERSION=v1.34.4
PAUSE_VERSION=3.10.1

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
wrapper=$root/hack/node
node_dir=${AADPODID_NODE_DIR:-$HOME/.cache/aadpodid/node}

export GOTOOLCHAIN=local
export GOFLAGS=-buildvcs=false

k8s_minor=${K8S_VERSION#v1.}
k8s_minor=${k8s_minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor -X $pkg.gitTreeState=clean"
done

log() { printf 'build-node: %s\n' "$*" >&2; }

command -v go >/dev/null || { log "go is not installed (need go >= 1.24)"; exit 1; }
command -v gcc >/dev/null || { log "gcc is not installed (Debian package gcc)"; exit 1; }
command -v flock >/dev/null || { log "flock is not installed (Debian package util-linux)"; exit 1; }
[[ -f /usr/lib/x86_64-linux-gnu/libc.a || -f /usr/lib/$(gcc -dumpmachine)/libc.a ]] ||
	{ log "static libc missing (Debian package libc6-dev)"; exit 1; }

if ! grep -q "k8s.io/kubernetes $K8S_VERSION\$" "$wrapper/go.mod"; then
	log "hack/node/go.mod does not require k8s.io/kubernetes $K8S_VERSION; keep them in step"
	exit 1
fi

key=$(
	{
		printf 'k8s=%s pause=%s\nldflags=%s\n' "$K8S_VERSION" "$PAUSE_VERSION" "$ldflags"
		go version
		gcc --version | sed -n 1p
		go env GOOS GOARCH CGO_ENABLED
		cat "$wrapper/go.mod" "$wrapper/go.sum" "$wrapper/tools.go"
	} | sha256sum | cut -c1-16
)
dest=$node_dir/$key
bins=(kubelet kube-scheduler kube-controller-manager pause)

mkdir -p "$node_dir"
exec 9>"$node_dir/.lock"
flock 9

link_stable() {
	ln -sfn "$key/bin" "$node_dir/.bin.new"
	mv -T "$node_dir/.bin.new" "$node_dir/bin"
}

complete=true
for b in "${bins[@]}"; do [[ -x $dest/bin/$b ]] || complete=false; done
if $complete; then
	link_stable
	echo "cached"
	echo "$dest/bin"
	exit 0
fi

tmp=$(mktemp -d "$node_dir/.build.XXXXXX")
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/bin"

start=$SECONDS
log "building kubelet, kube-scheduler and kube-controller-manager $K8S_VERSION (minutes on a cold Go cache)"
(cd "$wrapper" && nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$tmp/bin/" \
	k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-controller-manager)
module_dir=$(cd "$wrapper" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
log "building pause $PAUSE_VERSION from $module_dir/build/pause/linux/pause.c"
gcc -Os -static -Wall -Werror -DVERSION="v$PAUSE_VERSION" -o "$tmp/bin/pause" "$module_dir/build/pause/linux/pause.c"
strip "$tmp/bin/pause"

"$tmp/bin/kubelet" --version >&2
"$tmp/bin/pause" -v >&2

rm -rf "$dest"
mv -T "$tmp" "$dest"
trap - EXIT
link_stable
for old in "$node_dir"/*/; do
	old=${old%/}
	[[ $old == "$dest" || ! -x $old/bin/kubelet ]] || rm -rf "$old"
done
log "built in $((SECONDS - start))s"
echo "$dest/bin"
