#!/usr/bin/env bash
# test.sh - build gw twice and run every test.
#   1. build/release: optimised, warnings are errors; the unit tests run.
#   2. build/asan: ASan + UBSan, warnings are errors; every test runs
#      (unit, integration with real gwd/backends/curl/iperf3, fuzz, netns, docker).
# Ends with ctest's summary line; exits non-zero when anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh test
jobs=$(nproc)

build() { # build DIR cmake-args...
    local dir=$1
    shift
    cmake -S . -B "$dir" -DGW_WERROR=ON "$@" >/dev/null
    cmake --build "$dir" -j "$jobs"
}

build build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGW_TESTS=ON -DGW_BENCH=ON
build build/asan -DCMAKE_BUILD_TYPE=Debug -DGW_SANITIZE=ON -DGW_TESTS=ON -DGW_BENCH=ON

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

echo "== unit tests, release build"
ctest --test-dir build/release -L unit --output-on-failure -j "$jobs"
echo "== every test, ASan+UBSan build"
log=build/asan/ctest.out
rc=0
ctest --test-dir build/asan --output-on-failure --timeout 1200 2>&1 | tee "$log" || rc=$?
# ctest lists skipped tests without their reason: show the SKIP lines they
# printed, then ctest's summary line again so it stays the last word.
if grep -q 'Not Run\|Skipped' "$log"; then
    grep -h '^SKIP ' build/asan/Testing/Temporary/LastTest.log 2>/dev/null || true
    grep -E '^[0-9]+% tests passed' "$log" || true
fi
exit $rc
