#!/usr/bin/env bash
# sched.sh - how long gwd's loop waits for its core while it could run.
#
# gwd (pinned to core 1, the store on) under the connection-rate load
# (bench_connrate on core 0, 64 in flight from 64 client IPs, bench_echo as
# the backend) while `perf sched record` watches core 1 for SECONDS s. From
# `perf sched timehist --state`: each time the loop thread was switched out
# runnable (state R), how long until it ran again, and which threads had the
# core meanwhile (the store's gwdb-writer and gwdb-ckpt, softirqs...). Prints
# the load's result line, the count of such waits over 0.5, 1 and 2 ms, their
# total, the threads that held the core longest, and the WAL's size at the
# end of the load (a checkpointer that falls behind shows there).
#
# usage: bench/gateway/sched.sh [--build DIR] [--seconds S] GWD...
#   --build DIR  build tree with bench/gateway/bench_* (default /tmp/b-bench)
#   GWD          one or more gwd binaries, measured one after the other
# Needs perf with the sched tracepoints (root). Every process it starts is
# stopped by PID; the load runs SECONDS + 3 s.
set -u
build=/tmp/b-bench
secs=4
while [ $# -gt 0 ]; do
    case "$1" in
    --build) build=$2; shift 2 ;;
    --seconds) secs=$2; shift 2 ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    *) break ;;
    esac
done
[ $# -gt 0 ] || { sed -n '14,16p' "$0" >&2; exit 2; }
tools=$build/bench/gateway
# shellcheck source=bench/gateway/echo_lib.sh
. "$(dirname "$0")/echo_lib.sh"

tmp=$(mktemp -d /tmp/gw-sched.XXXXXX)
echo_pid=0
gwd_pid=0
cleanup() {
    stop_pids TERM "$gwd_pid" "$echo_pid"
    rm -rf "$tmp"
}
trap cleanup EXIT

measure() { # measure GWD
    local gwd=$1 dir port nat_ips="" load_pid
    dir=$(mktemp -d "$tmp/run.XXXX")
    echo_pid=0
    echo_start "$tools" "$dir" $((secs + 30)) || { echo "bench_echo did not start" >&2; return 1; }
    taskset -p -c 0 "$echo_pid" >/dev/null
    for i in 1 2 3 4 5 6 7 8; do nat_ips+=" --nat-ip 127.2.0.$i"; done
    # shellcheck disable=SC2086  # nat_ips is a list of flags
    taskset -c 1 "$gwd" -p 0 -b 127.0.0.1 --tcp-backend "127.0.0.1:$echo_tcp" $nat_ips \
        --nat-ports 20000-32767 --db "$dir/gwd.db" --control "$dir/ctl.sock" \
        >"$dir/gwd.out" 2>"$dir/gwd.err" &
    gwd_pid=$!
    port=""
    for _ in $(seq 100); do
        port=$(sed -n 's/.*ready: port \([0-9]*\),.*/\1/p' "$dir/gwd.err" | head -1)
        [ -n "$port" ] && break
        sleep 0.1
    done
    [ -n "$port" ] || { echo "gwd did not start: $(tail -2 "$dir/gwd.err")" >&2; return 1; }
    taskset -c 0 "$tools/bench_connrate" --target "127.0.0.1:$port" --conc 64 --src-ips 64 \
        --seconds $((secs + 3)) >"$dir/load.out" 2>&1 &
    load_pid=$!
    sleep 2
    perf sched record -o "$dir/sched.data" -C 1 -- sleep "$secs" >/dev/null 2>&1
    wal=$(stat -c %s "$dir/gwd.db-wal" 2>/dev/null || echo 0)
    wait "$load_pid"
    stop_pids TERM "$gwd_pid" "$echo_pid"
    gwd_pid=0 echo_pid=0
    echo "$gwd: $(grep '^RESULT' "$dir/load.out" | cut -c1-110)"
    perf sched timehist -i "$dir/sched.data" --state 2>/dev/null | awk -v wal="$wal" -v secs="$secs" '
        /^ *[0-9]+\.[0-9]+ \[/ {
            task = $3
            if (task ~ /^gwd\[/) {
                if (state == "R") {
                    w = $4; total += w
                    if (w > 0.5) a++
                    if (w > 1) b++
                    if (w > 2) c++
                }
                state = $NF
            } else if (state == "R") {
                held[task] += $(NF - 1)
            }
        }
        END {
            printf "  loop runnable but waiting, over %s s: >0.5 ms %d, >1 ms %d, >2 ms %d times, %.1f ms in all\n", secs, a, b, c, total
            printf "  held the core meanwhile (ms):"
            for (k in held) if (held[k] >= 5) printf " %s %.1f", k, held[k]
            printf "\n  WAL at the end of the load: %.1f MB\n", wal / 1048576
        }'
}

for g in "$@"; do
    measure "$g" || exit 1
done
