#!/usr/bin/env bash
# The local sandbox (run as root on a Debian machine): installs what is missing, builds our MIC
# and NMI, then walks the getting-started steps on real parts — a real kube-apiserver + etcd, the Azure
# simulator (ARM, Azure AD, one IMDS per node), `helm install` of charts/aad-pod-identity into
# aad-broker, MIC and NMI running under the chart's service accounts with the chart's args, two
# network-namespace nodes (a VMSS instance and a VM) and a pod on each whose Python SDK gets a
# token through 169.254.169.254.
#
#   bash hack/sandbox.sh              # the walkthrough; exit 0 when every step worked
#   bash hack/sandbox.sh --stay-up    # then keep it up to try more, Ctrl-C cleans up
#   bash hack/sandbox.sh --kubelet    # MIC and NMI from the images, on two real kubelet nodes
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash hack/setup.sh
for arg in "$@"; do if [[ $arg == --kubelet ]]; then bash hack/images.sh --node; fi; done
cargo build -q -p aadpodid-mic -p aadpodid-nmi -p aadpodid-cli -p aadpodid-sandbox
exec cargo run -q -p aadpodid-sandbox --bin sandbox -- "$@"
