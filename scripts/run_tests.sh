#!/bin/sh
# Run every test suite: C tests (release and ASan+UBSan builds) and the Lua
# tests, then print one summary line `total: N passed, N failed`.
# Exits non-zero if anything failed. Assumes `make all debug` has been run.
set -u
cd "$(dirname "$0")/.."
B=${B:-build}
BD=${BD:-build-debug}
passed=0
failed=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

count_cmocka() { # $1: label, $2...: command
  label=$1; shift
  "$@" >"$log" 2>&1
  rc=$?
  p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
  f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
  p=${p:-0}; f=${f:-0}
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi # crashed or sanitizer report
  if [ "$f" -ne 0 ]; then
    echo "FAIL $label ($p passed, $f failed)"
    cat "$log"
  else
    echo "ok   $label ($p passed)"
  fi
  passed=$((passed + p)); failed=$((failed + f))
}

# llama.cpp's prebuilt CPU library (npm) lets test_quant_live compare
# quantized bytes with llama.cpp's own quantizer; without node it skips.
if command -v npm >/dev/null 2>&1 && [ ! -d tests/node-llama/node_modules/@node-llama-cpp ]; then
  (cd tests/node-llama && npm install --no-audit --no-fund --silent >/dev/null 2>&1) ||
    echo "note: npm install in tests/node-llama failed; test_quant_live will skip"
fi

for t in "$B"/tests/test_*; do
  [ -x "$t" ] && count_cmocka "$t" "$t"
done
for t in "$BD"/tests/test_*; do
  [ -x "$t" ] && count_cmocka "$t" env ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 "$t"
done

# Lua tests: the runner prints `N passed, N failed` as its last line.
"$B/tide" run tests/lua/run.lua >"$log" 2>&1
rc=$?
cat "$log"
line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
p=$(echo "$line" | sed -n 's/^\([0-9]*\) passed.*/\1/p'); p=${p:-0}
f=$(echo "$line" | sed -n 's/.* \([0-9]*\) failed.*/\1/p'); f=${f:-0}
if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
passed=$((passed + p)); failed=$((failed + f))

echo "total: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
