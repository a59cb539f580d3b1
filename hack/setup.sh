#!/usr/bin/env bash
# Installs what the tests and the sandbox need on a fresh Debian machine, idempotently:
# Debian packages, the Go-built control plane and Helm (cached), the real Azure SDK clients
# (Python azure-identity/msal, Node @azure/identity, the Azure CLI in its own venv).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
for cmd in iptables ip curl openssl setpriv flock nsenter conntrack containerd ctr runc gcc; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
# The local kubelet nodes: Debian's containerd, runc and CNI plugins (bridge, host-local, loopback).
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
# The image push test's local registry.
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages for: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq iptables iproute2 curl openssl util-linux conntrack \
    containerd runc containernetworking-plugins gcc libc6-dev docker-registry >/dev/null
fi

echo "setup: control plane and helm (cached after the first build)"
bash hack/build-tools.sh | tail -n 1

echo "setup: kubelet, scheduler, controller manager and pause for the local nodes (cached)"
bash hack/build-node.sh | tail -n 1

echo "setup: Python SDKs"
python3 -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt

echo "setup: Node SDK"
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

AZ_VENV="${AADPODID_AZ_VENV:-$HOME/.cache/aadpodid/az-venv}"
if [ ! -x "$AZ_VENV/bin/az" ]; then
  echo "setup: Azure CLI (own venv: it pins its own msal)"
  python3 -m venv "$AZ_VENV"
  "$AZ_VENV/bin/pip" install -q --disable-pip-version-check azure-cli==2.91.0
fi
echo "setup: done"
