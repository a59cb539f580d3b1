#!/usr/bin/env bash
# Builds the tools the tests and the local sandbox run: kube-apiserver, etcd and kubectl (from
# the wrapper module hack/controlplane, through the Go module proxy) and Helm (go install).
#
# The result lands in ${AADPODID_TOOLS_DIR:-$HOME/.cache/aadpodid/tools}/<key>/bin, where <key>
# hashes every input of the build (wrapper go.mod/go.sum/sources, tool versions, ldflags, Go
# version), and the stable symlink <tools dir>/bin points at it. A second run with the same
# inputs prints "cached" and returns at once. Concurrent runs are serialised with flock, and a
# build happens in a temporary directory renamed into place only when complete, so a killed
# build never looks finished.
#
# The last line of stdout is always the bin directory.
#
# Usage: hack/build-tools.sh                 build (or reuse) the tools
#        hack/build-tools.sh --print-replaces print the staging replace block for K8S_VERSION
set -euo pipefail

K8S_VERSION=v1.34.4
HELM_VERSION=v3.22.0

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
wrapper=$root/hack/controlplane
tools_dir=${AADPODID_TOOLS_DIR:-$HOME/.cache/aadpodid/tools}

# Never fetch a Go toolchain behind our back: the local go must do.
export GOTOOLCHAIN=local
export GOFLAGS=-buildvcs=false

k8s_minor=${K8S_VERSION#v1.}
k8s_minor=${k8s_minor%%.*}
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	k8s_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor -X $pkg.gitTreeState=clean"
done
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"

log() { printf 'build-tools: %s\n' "$*" >&2; }

# Prints the replace lines k8s.io/kubernetes needs at K8S_VERSION: its own go.mod replaces each
# staging module with ./staging/..., which does not apply to modules that require it.
print_replaces() {
	local gomod staging_version
	gomod=$(cd "$wrapper" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
	staging_version=v0.${K8S_VERSION#v1.}
	printf 'replace (\n'
	sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*#\1#p' "$gomod" | sort -u |
		while read -r module; do printf '\t%s => %s %s\n' "$module" "$module" "$staging_version"; done
	printf ')\n'
}

if [[ ${1:-} == --print-replaces ]]; then
	print_replaces
	exit 0
fi

command -v go >/dev/null || { log "go is not installed (need go >= 1.24)"; exit 1; }
command -v flock >/dev/null || { log "flock is not installed (Debian package util-linux)"; exit 1; }

if ! grep -q "k8s.io/kubernetes $K8S_VERSION\$" "$wrapper/go.mod"; then
	log "hack/controlplane/go.mod does not require k8s.io/kubernetes $K8S_VERSION; keep them in step"
	exit 1
fi

key=$(
	{
		printf 'k8s=%s helm=%s\nk8s_ldflags=%s\nhelm_ldflags=%s\n' "$K8S_VERSION" "$HELM_VERSION" "$k8s_ldflags" "$helm_ldflags"
		go version
		go env GOOS GOARCH CGO_ENABLED
		cd "$wrapper"
		for f in go.mod go.sum tools.go cmd/etcd/main.go; do
			printf '== %s\n' "$f"
			cat "$f"
		done
	} | sha256sum | cut -c1-16
)
dest=$tools_dir/$key

mkdir -p "$tools_dir"
exec 9>"$tools_dir/.lock"
flock 9

link_stable() {
	ln -sfn "$key/bin" "$tools_dir/.bin.new"
	mv -T "$tools_dir/.bin.new" "$tools_dir/bin"
}

if [[ -x $dest/bin/kube-apiserver && -x $dest/bin/etcd && -x $dest/bin/kubectl && -x $dest/bin/helm ]]; then
	link_stable
	echo "cached"
	echo "$dest/bin"
	exit 0
fi

tmp=$(mktemp -d "$tools_dir/.build.XXXXXX")
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/bin"

start=$SECONDS
log "building kube-apiserver, kubectl $K8S_VERSION and etcd (several minutes on a cold Go cache)"
(cd "$wrapper" && go build -trimpath -ldflags "$k8s_ldflags" -o "$tmp/bin/" \
	k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl ./cmd/etcd)
log "building helm $HELM_VERSION"
GOBIN=$tmp/bin go install -trimpath -ldflags "$helm_ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"

"$tmp/bin/kube-apiserver" --version >&2
# No `| head`: with pipefail, SIGPIPE to the writer would fail the build.
etcd_version=$("$tmp/bin/etcd" --version)
printf '%s\n' "${etcd_version%%$'\n'*}" >&2
"$tmp/bin/kubectl" version --client >&2
"$tmp/bin/helm" version --short >&2

rm -rf "$dest"
mv -T "$tmp" "$dest"
trap - EXIT
link_stable
# Older builds are unreachable through the symlink now; running binaries survive the unlink.
for old in "$tools_dir"/*/; do
	old=${old%/}
	[[ $old == "$dest" || ! -x $old/bin/kube-apiserver ]] || rm -rf "$old"
done
log "built in $((SECONDS - start))s"
echo "$dest/bin"
