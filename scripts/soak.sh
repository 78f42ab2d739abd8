#!/usr/bin/env bash
# The soak run (not in CI): the fault mix of tests/faults.rs for MINUTES per runtime on
# loopback, with a fresh test server every 20 faults; prints messages, faults, reconnects,
# lost, duplicated and peak RSS per runtime, and fails if any check failed.
#
#   scripts/soak.sh [MINUTES] [tokio|smol|both]     (defaults: 5, both)
#
# VANTIQ_FAULT_SEED picks the seed (printed at the start); RUST_LOG=info shows the SDK's log.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-5}
runtime=${2:-both}
exec cargo run --release -q -p vantiq-e2e --bin soak -- --minutes "$minutes" --runtime "$runtime"
