#!/usr/bin/env bash
# Dependency policy: licenses, duplicate versions and sources (deny.toml). Installs cargo-deny
# (pinned) when missing. Advisories need the RustSec database from the network, so they are not
# checked here: run `cargo deny check advisories` where you have it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
version=0.20.2
if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny $version"; then
  echo "deny: installing cargo-deny $version (debug build: it only reads Cargo metadata)"
  cargo install cargo-deny --locked --version "$version" --debug --quiet
fi
cargo deny --log-level warn check bans licenses sources
