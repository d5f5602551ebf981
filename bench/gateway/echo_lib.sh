# shellcheck shell=bash disable=SC2034  # the variables are for the sourcing script
# echo_lib.sh - sourced by bench/gateway/smoke.sh, sched.sh and
# tests/integration/soak_test.sh: bench_echo as a backend on kernel-chosen
# loopback ports, and the check of a load tool's RESULT line.

# echo_start TOOLS_DIR DIR SECONDS: starts bench_echo (TCP echo, TCP sink, UDP
# echo on 127.0.0.1) for at most SECONDS s, its output in DIR/echo.out and
# DIR/echo.err; sets echo_pid and the ports echo_tcp, echo_sink, echo_udp.
# Returns 1 when it did not announce them within 5 s (echo_pid is set anyway,
# for the caller's cleanup).
echo_start() {
    "$1/bench_echo" --tcp 127.0.0.1:0 --sink 127.0.0.1:0 --udp 127.0.0.1:0 --seconds "$3" \
        >"$2/echo.out" 2>"$2/echo.err" &
    echo_pid=$!
    for _ in $(seq 50); do
        [ "$(grep -c '^LISTEN' "$2/echo.out")" = 3 ] && break
        sleep 0.1
    done
    echo_tcp=$(awk '$1=="LISTEN" && $2=="tcp" {print $3}' "$2/echo.out")
    echo_sink=$(awk '$1=="LISTEN" && $2=="sink" {print $3}' "$2/echo.out")
    echo_udp=$(awk '$1=="LISTEN" && $2=="udp" {print $3}' "$2/echo.out")
    [ -n "$echo_tcp" ] && [ -n "$echo_sink" ] && [ -n "$echo_udp" ]
}

# stop_pids SIGNAL PID...: sends SIGNAL to each PID still alive (0 = none)
# and waits for it: the processes this script started, and only those.
stop_pids() {
    local sig=$1 p
    shift
    for p in "$@"; do
        if [ "$p" != 0 ] && kill -0 "$p" 2>/dev/null; then
            kill "-$sig" "$p"
            wait "$p" 2>/dev/null
        fi
    done
}

# result_check NAME FILE: FILE's RESULT line has ops > 0 and errors=0; else
# says which and returns 1.
result_check() {
    local ops err
    ops=$(sed -n 's/^RESULT ops=\([0-9]*\).*/\1/p' "$2")
    err=$(sed -n 's/^RESULT.* errors=\([0-9]*\).*/\1/p' "$2")
    if [ -z "$ops" ] || [ "$ops" -le 0 ]; then
        echo "$1 moved nothing: $(cat "$2")" >&2
        return 1
    fi
    if [ "$err" != 0 ]; then
        echo "$1 had errors: $(cat "$2")" >&2
        return 1
    fi
    echo "ok $1: $(grep '^RESULT' "$2")"
}
