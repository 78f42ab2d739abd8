#!/usr/bin/env bash
# Checks both echo examples (tokio and smol) against the echo contract through the
# devserver's control API. Usage: scripts/echo-contract.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=debug
flags=()
if [[ "${1:-}" == "--release" ]]; then profile=release; flags=(--release); fi
cargo build "${flags[@]}" -q -p vantiq-testkit --bin vantiq-devserver
cargo build "${flags[@]}" -q -p vantiq-connector-tokio --example echo_tokio
cargo build "${flags[@]}" -q -p vantiq-connector-smol --example echo_smol
target="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)"
for ex in echo_tokio echo_smol; do
  python3 scripts/echo_contract.py "$target/$profile/vantiq-devserver" "$target/$profile/examples/$ex" "$ex"
done
