#!/usr/bin/env bash
# The test command: installs what is missing (hack/setup.sh), then runs every test tier —
# unit, component (Azure simulator), integration (real kube-apiserver + etcd) and end to end
# (network namespaces, iptables, real SDKs; the images under runc and on kubelet nodes). Needs
# root for the network-namespace tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash hack/setup.sh
# The images the image and kubelet-node tests run (cached Debian layers; a release build).
bash hack/images.sh --node
export AADPODID_AZ="${AADPODID_AZ:-${AADPODID_AZ_VENV:-$HOME/.cache/aadpodid/az-venv}/bin/az}"
cargo test --workspace "$@"
