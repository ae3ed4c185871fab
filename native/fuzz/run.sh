#!/usr/bin/env bash
# npm run fuzz: builds every fuzz target (native/fuzz/Makefile) and runs each for FUZZ_SECONDS (default 60)
# with its seed corpus and dictionary; prints exec/s and coverage; fails on a crash, keeping the input that
# caused it in native/fuzz/build/crashes/<target>/. docs/fuzzing.md says how to run longer or reproduce.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
seconds="${FUZZ_SECONDS:-60}"

cc="$(command -v clang-14 || command -v clang || true)"
if [ -z "$cc" ]; then
  echo "fuzz: skipped: clang is not installed (Debian: apt-get install clang libfuzzer-14-dev libclang-rt-14-dev)"
  exit 0
fi
probe="$(mktemp -d)"
trap 'rm -rf "$probe"' EXIT
printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' >"$probe/p.c"
if ! "$cc" -fsanitize=fuzzer,address,undefined -o "$probe/p" "$probe/p.c" >/dev/null 2>&1; then
  echo "fuzz: skipped: $cc cannot link libFuzzer with ASan (Debian: apt-get install libfuzzer-14-dev libclang-rt-14-dev)"
  exit 0
fi

make -s -C "$here" all
targets="$(make -s -C "$here" print-targets)"
failed=0
for t in $targets; do
  name="${t%_fuzz}"
  seeds="$here/corpus/$name"
  work="$here/build/corpus/$name"
  crashes="$here/build/crashes/$t"
  mkdir -p "$work" "$crashes"
  args=(-max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$crashes/")
  [ -f "$here/$name.dict" ] && args+=(-dict="$here/$name.dict")
  dirs=("$work")
  [ -d "$seeds" ] && dirs+=("$seeds")
  log="$here/build/$t.log"
  echo "fuzz: $t for ${seconds}s (corpus: ${dirs[*]})"
  set +e
  "$here/build/$t" "${args[@]}" "${dirs[@]}" >"$log" 2>&1
  rc=$?
  set -e
  last="$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)"
  cov="$(sed -nE 's/.*cov: ([0-9]+).*/\1/p' <<<"$last")"
  ft="$(sed -nE 's/.*ft: ([0-9]+).*/\1/p' <<<"$last")"
  runs="$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+)/\1/p' "$log")"
  eps="$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+)/\1/p' "$log")"
  if [ "$rc" -ne 0 ]; then
    failed=1
    echo "fuzz: $t FAILED (exit $rc) after ${runs:-?} runs; the log: $log"
    grep -E 'ERROR|SUMMARY|Test unit written' "$log" | head -5 | sed 's/^/  /'
    ls "$crashes" | sed "s|^|  crash input: $crashes/|"
  else
    echo "fuzz: $t ok: ${runs:-?} runs, ${eps:-?} exec/s, cov: ${cov:-?} ft: ${ft:-?}"
  fi
done
exit "$failed"
