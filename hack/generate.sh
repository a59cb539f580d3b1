#!/usr/bin/env bash
# Regenerates every generated file that is checked in. CI runs it and then
# `git diff --exit-code`; tests also fail when a generated file drifts.
#
#   deploy/crds.yaml                         the four CRDs, from the Rust types (crates/api, `crdgen`)
#   charts/aad-pod-identity/crds/crd.yaml    a copy of deploy/crds.yaml for the Helm chart
#   deploy/infra/**.yaml                     plain manifests for users without Helm, rendered from the
#                                            chart by hack/render-deploy.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo run -q -p aadpodid-api --bin crdgen > deploy/crds.yaml.new
mv deploy/crds.yaml.new deploy/crds.yaml
cp deploy/crds.yaml charts/aad-pod-identity/crds/crd.yaml

bash hack/render-deploy.sh deploy/infra
