#!/usr/bin/env bash
# The benchmarks, ours against the original aad-pod-identity v1.8.17 (built by
# hack/build-original.sh from the Go module proxy), side by side on the local control plane,
# Azure simulator and network-namespace nodes. Writes docs/benchmarks.md.
#   bash hack/bench.sh                       # the full sizes, 3 runs each (tens of minutes)
#   bash hack/bench.sh --size tiny --runs 1  # seconds: proves they start and finish (CI)
# Needs root (network namespaces, iptables). Extra flags go to the `bench` binary (--help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash hack/setup.sh
out=docs/benchmarks.md
for arg in "$@"; do [[ "$arg" == tiny ]] && out="${TMPDIR:-/tmp}/aadpodid-benchmarks-tiny.md"; done
exec cargo run --release --locked -q -p aadpodid-bench -- --out "$out" "$@"
