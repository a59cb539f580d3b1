#!/usr/bin/env bash
# The local sandbox, as far as it exists today: on a fresh machine it installs what is missing,
# then walks the seed's flow on real parts — a real kube-apiserver + etcd, the Azure simulator
# (ARM, Azure AD, a per-node IMDS), MIC assigning the identity to a scale set, and NMI in a
# network-namespace node answering pods' SDKs through iptables at 169.254.169.254.
#
# The interactive sandbox (helm install into aad-broker, two nodes, --stay-up) is issue 6;
# until it lands this runs the two end-to-end scenarios that carry the seed's steps.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash hack/setup.sh
export AADPODID_AZ="${AADPODID_AZ:-${AADPODID_AZ_VENV:-$HOME/.cache/aadpodid/az-venv}/bin/az}"

step() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nsandbox: FAILED at step: %s\n' "$*" >&2; exit 1; }

step "az identity create + kubectl apply -f identityconfig/ + a pod labelled aadpodidbinding: MIC assigns the identity to the node's scale set (AzureAssignedIdentity <pod>-<ns>-<identity> Assigned, IMDS issues its token)"
cargo test -q -p aadpodid-mic --test integration -- --exact seed_flow_assigns_the_identity_on_the_vmss_and_imds_issues_its_token --nocapture \
  || fail "MIC seed flow"

step "The pod's unchanged SDKs (Python azure-identity, raw AzureServiceTokenProvider-shaped request) get tokens through NMI at 169.254.169.254"
cargo test -q -p aadpodid-nmi --test e2e_apiserver -- --exact standard_mode_binary_serves_each_pod_its_own_identity_and_waits_for_assignment --nocapture \
  || fail "NMI token flow"

step "The Azure CLI in a pod: az login --identity, az account get-access-token"
cargo test -q -p aadpodid-nmi --test e2e_apiserver -- --exact azure_cli_logs_in_with_the_pods_identity_and_gets_tokens --nocapture \
  || fail "Azure CLI"

printf '\nsandbox: every step worked.\n'
