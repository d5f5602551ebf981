#!/usr/bin/env bash
# smoke.sh - ctest smoke test of the gateway load tools (no proxy): starts
# bench_echo on kernel-chosen loopback ports, runs every load tool for half a
# second against it and checks each one moved traffic with no error.
# usage: smoke.sh TOOLS_DIR
set -u
dir=$1
tmp=$(mktemp -d /tmp/gw-bench-smoke.XXXXXX)
echo_pid=0
# shellcheck source=bench/gateway/echo_lib.sh
. "$(dirname "$0")/echo_lib.sh"
cleanup() {
    stop_pids TERM "$echo_pid"
    rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

echo_start "$dir" "$tmp" 60 || fail "bench_echo did not announce its ports"
tcp=$echo_tcp sink=$echo_sink udp=$echo_udp
check() { result_check "$1" "$2" || fail "$1"; }
"$dir/bench_connrate" --target 127.0.0.1:$tcp --conc 8 --src-ips 4 --seconds 0.5 >"$tmp/cr" 2>&1 || fail "connrate exit $?: $(cat "$tmp/cr")"
check connrate "$tmp/cr"
# Paced: 400/s for 0.5 s starts at most 201 connections (the schedule's
# bound) and, on an idle loopback echo, not far fewer.
"$dir/bench_connrate" --target 127.0.0.1:$tcp --conc 8 --seconds 0.5 --rate 400 >"$tmp/crp" 2>&1 ||
    fail "connrate --rate exit $?: $(cat "$tmp/crp")"
check connrate-paced "$tmp/crp"
paced=$(sed -n 's/^RESULT ops=\([0-9]*\).*/\1/p' "$tmp/crp")
[ "$paced" -le 201 ] && [ "$paced" -ge 120 ] || fail "connrate --rate 400 for 0.5 s made $paced connections"
"$dir/bench_keepalive" --target 127.0.0.1:$tcp --conc 4 --seconds 0.5 >"$tmp/ka" 2>&1 || fail "keepalive exit $?: $(cat "$tmp/ka")"
check keepalive "$tmp/ka"
"$dir/bench_bulk" --target 127.0.0.1:$sink --seconds 0.5 >"$tmp/bu" 2>&1 || fail "bulk exit $?: $(cat "$tmp/bu")"
check bulk "$tmp/bu"
"$dir/bench_bulk" --target 127.0.0.1:$tcp --seconds 0.5 --echo >"$tmp/be" 2>&1 || fail "bulk --echo exit $?: $(cat "$tmp/be")"
check bulk-echo "$tmp/be"
"$dir/bench_udp" --target 127.0.0.1:$udp --conc 4 --seconds 0.5 >"$tmp/ud" 2>&1 || fail "udp exit $?: $(cat "$tmp/ud")"
check udp "$tmp/ud"
grep -q ' lost=0 ' "$tmp/ud" || fail "udp lost datagrams on loopback: $(cat "$tmp/ud")"
"$dir/bench_idle" --target 127.0.0.1:$tcp --conc 300 --src-ips 3 --seconds 0.2 >"$tmp/id" 2>&1 || fail "idle exit $?: $(cat "$tmp/id")"
grep -q '^READY flows=300 failed=0 ' "$tmp/id" || fail "idle: $(cat "$tmp/id")"
check idle "$tmp/id"
kill -TERM "$echo_pid"
wait "$echo_pid"
rc=$?
echo_pid=0
[ "$rc" = 0 ] || fail "bench_echo exit $rc: $(cat "$tmp/echo.err")"
exit 0
