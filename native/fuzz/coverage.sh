#!/usr/bin/env bash
# npm run fuzz:coverage: what the corpora reach. Rebuilds every target with clang's source-based coverage
# (no sanitizers) into native/fuzz/build/cov/, runs each once over its corpus (the seeds and what
# `npm run fuzz` found, native/fuzz/build/corpus/<name>/), and prints llvm-cov's line and region coverage
# of the native sources each target compiles. Needs llvm-profdata and llvm-cov (Debian: llvm).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
for tool in llvm-profdata llvm-cov; do
  if ! command -v "$tool" >/dev/null; then
    echo "fuzz coverage: skipped: $tool is not installed (Debian: apt-get install llvm)"
    exit 0
  fi
done
make -s -C "$here" BUILD=build/cov SANITIZE="-fsanitize=fuzzer -fprofile-instr-generate -fcoverage-mapping" all
for t in $(make -s -C "$here" print-targets); do
  name="${t%_fuzz}"
  dirs=()
  for d in "$here/build/corpus/$name" "$here/corpus/$name"; do [ -d "$d" ] && dirs+=("$d"); done
  prof="$here/build/cov/$t"
  rm -f "$prof".profraw
  LLVM_PROFILE_FILE="$prof.profraw" "$prof" -runs=0 "${dirs[@]}" >"$prof.log" 2>&1 || true
  llvm-profdata merge -sparse -o "$prof.profdata" "$prof.profraw"
  inputs="$(find "${dirs[@]}" -type f | wc -l)"
  echo "fuzz coverage: $t over $inputs inputs (${dirs[*]})"
  # Per source file of the binding (the harness and the stubs are left out).
  llvm-cov report "$prof" -instr-profile="$prof.profdata" -show-region-summary=true \
    "$here/../src/h2.c" "$here/../src/conn.c" "$here/../src/tls.c" "$here/../src/tls_records.c" \
    "$here/../src/record.c" 2>/dev/null |
    awk 'NR == 1 || /src\/(h2|conn|tls|tls_records|record)\.c/ { print "  " $0 }'
done
