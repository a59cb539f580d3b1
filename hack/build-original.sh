#!/usr/bin/env bash
# Builds the original aad-pod-identity's `mic` and `nmi` (v1.8.17) from the Go module proxy, for
# the side-by-side benchmarks only. Nothing of the original's source is committed: the tagged
# module is downloaded into the Go module cache and built there, with its own go.mod/go.sum (no
# replace lines) and its Makefile's release flags (netgo/osusergo tags, -s, version variables,
# CGO_ENABLED=0, static).
#
# `go install mod@version` is not used: it asks the proxy for the module's version list, which
# the proxy here refuses (403), while the exact version is served.
#
# Prints the directory holding `mic` and `nmi`. Cached under
# ${AADPODID_ORIGINAL_DIR:-$HOME/.cache/aadpodid/original}/<version>/bin.
set -euo pipefail

version="${AADPODID_ORIGINAL_VERSION:-v1.8.17}"
bin="${AADPODID_ORIGINAL_DIR:-$HOME/.cache/aadpodid/original}/$version/bin"
if [[ -x "$bin/mic" && -x "$bin/nmi" ]]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "build-original: go is required (https://go.dev/dl/)" >&2; exit 1; }
pkg=github.com/Azure/aad-pod-identity
src="$(cd / && go mod download -json "$pkg@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[[ -d "$src" ]] || { echo "build-original: could not download $pkg@$version" >&2; exit 1; }

ldflags="-s -X $pkg/version.NMIVersion=${version#v} -X $pkg/version.MICVersion=${version#v}"
ldflags+=" -X $pkg/version.GitCommit=$version -X $pkg/version.BuildDate=$(date -u +%Y-%m-%d-%H:%M) -extldflags '-static'"
tmp="$bin.tmp.$$"
mkdir -p "$tmp"
for cmd in mic nmi; do
  echo "build-original: building $pkg/cmd/$cmd@$version" >&2
  (cd "$src" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -tags "netgo osusergo" -ldflags "$ldflags" -o "$tmp/$cmd" "./cmd/$cmd") >&2
done
mkdir -p "$bin"
mv "$tmp/mic" "$tmp/nmi" "$bin/" && rmdir "$tmp"
echo "$bin"
