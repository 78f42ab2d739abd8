#!/usr/bin/env bash
# The benchmarks in one command (method and results: BENCHMARKS.md).
#
# Usage: scripts/bench.sh [--rounds N] [--quick] [--no-python] [--no-criterion] [-- ARGS...]
#   --rounds N      rounds of the end-to-end benchmarks (default 3; 1 with --quick)
#   --quick         smoke run: smaller sizes (20k notifications, 100 sources), short criterion
#   --no-python     skip the published Python SDK (otherwise a venv is created under
#                   target/bench-pyvenv on first use: pip install vantiqconnectorsdk)
#   --no-criterion  skip the core micro-benchmarks
#   -- ARGS         passed on to the harness (e.g. -- --phases query,latency --scale 2,
#                   or -- --extra tokiopatched=/path/to/echo_tokio for an A/B run)
#
# Builds everything in release (CARGO_TARGET_DIR, default target/bench), runs the criterion
# benches of vantiq-proto, then the end-to-end harness (bench/): a load server on loopback
# and each connector under test in turn (tokio, smol, raw async-tungstenite, Python SDK),
# round after round. Prints the markdown report and writes it to target/bench-report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/bench}"
mkdir -p "$CARGO_TARGET_DIR"
CARGO_TARGET_DIR="$(cd "$CARGO_TARGET_DIR" && pwd)"

rounds=""
quick=0
python=1
criterion=1
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=${2:?--rounds needs a value}; shift 2 ;;
    --quick) quick=1; shift ;;
    --no-python) python=0; shift ;;
    --no-criterion) criterion=0; shift ;;
    --) shift; extra+=("$@"); break ;;
    *) sed -n '2,16p' "$0" >&2; exit 2 ;;
  esac
done

echo "== build (release)" >&2
cargo build --release -q -p vantiq-bench --bins \
  -p vantiq-connector-tokio --example echo_tokio \
  -p vantiq-connector-smol --example echo_smol
bin="$CARGO_TARGET_DIR/release"

args=(--tokio "$bin/examples/echo_tokio" --smol "$bin/examples/echo_smol" --raw "$bin/raw-echo")
if [ -n "$rounds" ]; then args+=(--rounds "$rounds"); fi
if [ $quick = 1 ]; then args+=(--quick); fi

if [ $python = 1 ]; then
  venv="$root/target/bench-pyvenv"
  if ! "$venv/bin/python" -c 'import vantiqconnectorsdk' >/dev/null 2>&1; then
    echo "== Python venv: $venv (pip install vantiqconnectorsdk)" >&2
    if ! { python3 -m venv "$venv" &&
           "$venv/bin/python" -m pip install -q --disable-pip-version-check vantiqconnectorsdk; }; then
      echo "warning: could not install the Python SDK; the python connector is skipped" >&2
      python=0
    fi
  fi
  if [ $python = 1 ]; then
    args+=(--python "$venv/bin/python" --python-script "$root/vantiq-testkit/tests/python/echo_connector.py")
    PYTHON_VERSION="$("$venv/bin/python" --version 2>&1), vantiqconnectorsdk $("$venv/bin/python" -c \
      'import importlib.metadata as m; print(m.version("vantiqconnectorsdk"), "+ websockets", m.version("websockets"))')"
    export PYTHON_VERSION
  fi
fi

if [ $criterion = 1 ]; then
  echo "== criterion: vantiq-proto/benches/frames.rs" >&2
  crit=()
  if [ $quick = 1 ]; then
    crit=(--warm-up-time 0.1 --measurement-time 0.3 --sample-size 10 --nresamples 1000)
  fi
  cargo bench -q -p vantiq-proto --bench frames -- ${crit[@]+"${crit[@]}"} >&2
  args+=(--criterion "$CARGO_TARGET_DIR/criterion")
fi

# 10,000 sockets on each side: raise the soft limit (the harness does too, for its children).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
RUSTC_VERSION="$(rustc -V)"
export RUSTC_VERSION

echo "== end-to-end harness" >&2
out="$root/target/bench-report.md"
"$bin/vantiq-bench" "${args[@]}" --out "$out" ${extra[@]+"${extra[@]}"}
echo "== report written to $out" >&2
