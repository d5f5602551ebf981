#!/usr/bin/env bash
# soak_test.sh - gwd under every workload at once, reloaded every second, then
# stopped: built with sanitizers (the ASan build of the test command), any
# use-after-free or leak on the relay paths shows here.
#
# On loopback: bench_echo as the TCP and UDP backend; gwd on a kernel-chosen
# port with NAT ports 20000-32767 (below the kernel's ephemeral range); at once for SECONDS (default 10) s:
# bench_connrate (FIN close), bench_connrate --rst, bench_keepalive, bench_udp
# and bench_bulk --echo, from several source IPs each, while a SIGHUP reloads
# gwd every second. Then SIGTERM. Checks: every load tool moved traffic with
# no error; gwd answered `show stats` mid-load and at the end with no watch
# error and nothing dropped by the store; gwd exited 0; its stderr has no
# sanitizer report; the store holds every session, all closed.
#
# usage: soak_test.sh GWD GWCTL TOOLS_DIR [SECONDS]
set -u
gwd_bin=$1
gwctl_bin=$2
tools=$3
secs=${4:-10}
tmp=$(mktemp -d /tmp/gw-soak.XXXXXX)
# shellcheck source=bench/gateway/echo_lib.sh
. "$(dirname "$0")/../../bench/gateway/echo_lib.sh"
pids=()
gwd_pid=0
cleanup() {
    stop_pids KILL "${pids[@]}" "$gwd_pid"
    rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*" >&2
    tail -20 "$tmp/gwd.err" >&2
    exit 1
}
command -v sqlite3 >/dev/null || { echo "SKIP: no sqlite3 CLI (scripts/deps.sh test installs it)"; exit 77; }

echo_start "$tools" "$tmp" $((secs + 60)) || fail "bench_echo did not announce its ports"
pids+=("$echo_pid")
tcp=127.0.0.1:$echo_tcp
udp=127.0.0.1:$echo_udp

"$gwd_bin" -p 0 -b 127.0.0.1 --tcp-backend "$tcp" --udp-backend "$udp" --nat-ports 20000-32767 \
    --db "$tmp/gwd.db" --control "$tmp/ctl.sock" >"$tmp/gwd.out" 2>"$tmp/gwd.err" &
gwd_pid=$!
port=""
for _ in $(seq 100); do
    port=$(sed -n 's/.*ready: port \([0-9]*\),.*/\1/p' "$tmp/gwd.err" | head -1)
    [ -n "$port" ] && break
    kill -0 "$gwd_pid" 2>/dev/null || break
    sleep 0.1
done
[ -n "$port" ] || fail "gwd did not say it was ready"
target=127.0.0.1:$port

stats() { "$gwctl_bin" --socket "$tmp/ctl.sock" --json --timeout 5 show stats; }
# jfield FILE DOTTED.KEY: a value out of gwctl's JSON (SQLite's JSON functions
# and the sqlite3 shell's readfile(): no other JSON tool needed)
jfield() {
    sqlite3 :memory: "SELECT coalesce(json_extract(j, '\$.result.$2'), json_extract(j, '\$.$2'))
                      FROM (SELECT CAST(readfile('$1') AS TEXT) AS j)"
}

run_load() { # name tool args...
    local name=$1
    shift
    "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
    pids+=($!)
}
run_load connrate "$tools/bench_connrate" --target "$target" --conc 12 --seconds "$secs" --src-ips 16
run_load connrst "$tools/bench_connrate" --target "$target" --conc 4 --seconds "$secs" --src-ips 8 --rst
run_load keepalive "$tools/bench_keepalive" --target "$target" --conc 24 --seconds "$secs" --src-ips 8
run_load udp "$tools/bench_udp" --target "$target" --conc 16 --seconds "$secs" --src-ips 8
run_load bulk "$tools/bench_bulk" --target "$target" --conc 2 --seconds "$secs" --echo
load_pids=("${pids[@]:1}")

for i in $(seq "$secs"); do
    sleep 1
    kill -HUP "$gwd_pid" || fail "gwd died under load (second $i)"
    if [ "$i" = $((secs / 2)) ]; then
        stats >"$tmp/mid.json" || fail "show stats mid-load"
    fi
done
for p in "${load_pids[@]}"; do
    wait "$p" || true
done
for name in connrate connrst keepalive udp bulk; do
    result_check "$name" "$tmp/$name.out" || fail "$name through gwd"
done

stats >"$tmp/end.json" || fail "show stats after the load"
for f in mid end; do
    [ "$(jfield "$tmp/$f.json" loop.watch_errors)" = 0 ] || fail "watch errors ($f)"
    [ "$(jfield "$tmp/$f.json" store.dropped)" = 0 ] || fail "the store dropped records ($f)"
done
[ "$(jfield "$tmp/end.json" traffic.reload_failures)" = 0 ] || fail "a reload failed"
reloads=$(jfield "$tmp/end.json" traffic.reloads)
[ "$reloads" -ge $((secs - 1)) ] || fail "only $reloads reloads of $secs"
opened=$(jfield "$tmp/end.json" mappings.opened)
echo "gwd: $opened mappings, $reloads reloads, loop $(jfield "$tmp/end.json" loop.passes) passes"

kill -TERM "$gwd_pid"
rc=0
wait "$gwd_pid" || rc=$?
gwd_pid=0
[ "$rc" = 0 ] || fail "gwd exited $rc after SIGTERM"
if grep -q -E 'AddressSanitizer|LeakSanitizer|runtime error:' "$tmp/gwd.err"; then
    grep -m 20 -A 12 -E 'AddressSanitizer|LeakSanitizer|runtime error:' "$tmp/gwd.err" >&2
    fail "sanitizer report in gwd's stderr"
fi
rows=$(sqlite3 "$tmp/gwd.db" "SELECT count(*) FROM nat_sessions")
open=$(sqlite3 "$tmp/gwd.db" "SELECT count(*) FROM nat_sessions WHERE closed_at IS NULL")
echo "store: $rows sessions, $open open"
[ "$rows" = "$opened" ] || fail "the store has $rows sessions, gwd opened $opened"
[ "$open" = 0 ] || fail "$open sessions left open in the store after SIGTERM"
echo "PASS"
