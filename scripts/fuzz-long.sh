#!/usr/bin/env bash
# Runs the fuzz targets for a given time each and prints the executions per target.
#
#   scripts/fuzz-long.sh DURATION [TARGET...]
#
# DURATION is per target: seconds, or with a unit (90s, 10m, 2h). Without TARGETs, every
# target in fuzz/Cargo.toml runs, one after the other. Each starts from a scratch copy of
# its checked-in corpus (fuzz/corpus/<target>/), so the repository is never touched; set
# FUZZ_KEEP=DIR to keep the grown corpora there. A crash stops that target, leaves its
# input in fuzz/artifacts/<target>/ (git-ignored) and makes the script fail; turn it into a
# regression test by copying the input into fuzz/corpus/<target>/<descriptive-name> (the
# corpus replay, `cargo test -p vantiq-fuzz`, then runs it on every test run) and fixing the
# bug. Needs cargo-fuzz (`cargo install cargo-fuzz`); works on stable Rust (`-s none`: no
# sanitizer). FUZZ_ARGS adds libFuzzer options (e.g. FUZZ_ARGS="-jobs=2 -workers=2").
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
case "$1" in
  *h) secs=$(( ${1%h} * 3600 )) ;;
  *m) secs=$(( ${1%m} * 60 )) ;;
  *s) secs=${1%s} ;;
  *[!0-9]*|'') usage ;;
  *) secs=$1 ;;
esac
shift
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "cargo-fuzz is not installed: cargo install cargo-fuzz" >&2
  exit 2
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/vantiq-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

echo "building ${#targets[@]} fuzz target(s)…"
for t in "${targets[@]}"; do
  cargo fuzz build -s none --features libfuzzer "$t" >"$scratch/build.log" 2>&1 \
    || { cat "$scratch/build.log" >&2; exit 1; }
done

failed=()
summary=()
for t in "${targets[@]}"; do
  if [ ! -d "fuzz/corpus/$t" ]; then
    echo "no corpus directory fuzz/corpus/$t" >&2
    exit 2
  fi
  mkdir -p "$scratch/$t"
  cp fuzz/corpus/"$t"/* "$scratch/$t/"
  seeds=$(find "$scratch/$t" -type f | wc -l)
  echo "== $t: ${secs}s from $seeds checked-in inputs"
  log="$scratch/$t.log"
  status=0
  # shellcheck disable=SC2086
  cargo fuzz run -s none --features libfuzzer "$t" "$scratch/$t" -- \
    -max_total_time="$secs" -timeout=60 -print_final_stats=1 ${FUZZ_ARGS:-} \
    >"$log" 2>&1 || status=$?
  execs=$(grep -ho 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{s+=$2} END {print s+0}')
  corpus=$(find "$scratch/$t" -type f | wc -l)
  if [ "$status" -ne 0 ]; then
    failed+=("$t")
    grep -E 'panicked|ERROR|SUMMARY|Test unit written|artifact_prefix' "$log" | head -20 >&2 || true
    tail -5 "$log" >&2
    result=CRASH
  else
    result=ok
  fi
  summary+=("$(printf '%-16s %6ss %12s execs %8s execs/s  corpus %5s -> %-5s %s' \
    "$t" "$secs" "$execs" "$(( execs / (secs > 0 ? secs : 1) ))" "$seeds" "$corpus" "$result")")
  if [ -n "${FUZZ_KEEP:-}" ]; then
    mkdir -p "$FUZZ_KEEP/$t"
    cp "$scratch/$t"/* "$FUZZ_KEEP/$t/"
  fi
done

echo
echo "target            time        executions      rate    corpus (in -> out)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
  exit 1
fi
