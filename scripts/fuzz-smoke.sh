#!/usr/bin/env bash
# A short fuzz run of every target, for CI: scripts/fuzz-long.sh with SECONDS per target
# (default 20), from scratch copies of the checked-in corpora.
#
#   scripts/fuzz-smoke.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/fuzz-long.sh "${1:-20}"
