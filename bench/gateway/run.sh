#!/usr/bin/env bash
# run.sh - gwd vs HAProxy vs nginx vs no proxy, side by side in one run.
#
# For each workload, each proxy in turn (none, haproxy, nginx, gwd) is started
# fresh with a generated config (temp dir, loopback, free ports), pinned to
# core 1; the load tool and the backend (bench_echo) run on core 0. The
# proxy's CPU time (utime+stime of every process/thread it has, from
# /proc/PID/stat) is read before and after the load; for the idle-flows test
# its private memory (smaps_rollup) is read with 0 and with N flows held.
# Prints a table with CPU per unit of work and the ratio to the best peer.
#
# usage: bench/gateway/run.sh [--build DIR] [--seconds S] [--flows N]
#                             [--proxies "none haproxy nginx gwd [gwd-nodb] [gwd-pba]"]
#                             [--tests "connrate keepalive bulk udp idle"]
#                             [--rounds R] [--perf] [--keep]
#                             [--quiet-wait S] [--quiet-pct P] [--nice N]
#                             [--syscalls] [--syscalls-perf] [--report RESULTS_TSV]
#                             [--conn-rate R]
#   --build DIR  build tree holding bench/gateway/bench_* and gateway/gwd
#                (default /tmp/b-bench; configure it with -DCMAKE_BUILD_TYPE=Release)
#   --quiet-wait S, --quiet-pct P: before each measurement wait up to S s
#                (default 3) for the machine to be at most P% busy (default
#                30) -- the machine is shared; the busy figure is logged
#   --nice N     run proxy, backend and load at nice N (e.g. -10 on a busy
#                shared machine, root only; the same for every proxy)
#   --syscalls   run each proxy under `strace -c -f` and print system calls
#                per unit of work instead of CPU (strace slows the proxy: the
#                counts are exact, the CPU figures of such a run are not)
#   --syscalls-perf  the same counts from the kernel's syscall tracepoints
#                (`perf stat -e syscalls:sys_enter_*`): the proxy runs at full
#                speed, so batching and timing-dependent paths are as in a
#                normal run (root, or perf_event_paranoid <= -1); the CPU
#                figures of such a run are close to normal ones
#   --report F   only print the report of an earlier run's results.tsv (--keep);
#                add --rounds and, for a paced run, --conn-rate as it had them
#   --conn-rate R  connrate at a fixed offered load of R connections/s (below
#                what every proxy takes: its CPU per connection then does not
#                depend on how fast it went, and rounds vary much less)
#   gwd-nodb     gwd with --db none: what the SQLite store costs (diagnostic)
#   gwd-pba      gwd as a carrier with port-block allocation runs it: policy
#                block (128 ports a block), blocks held 10 s after a client's
#                last flow, the log per block (nat.log "blocks"); every flow
#                still a nat_sessions row (diagnostic)
#   haproxy-log, nginx-log: the peers with a log line per connection
#                (HAProxy: option tcplog to stdout, a file; nginx: access_log
#                with a 64 KiB buffer): what logging costs them (diagnostic)
#   gwd-base, gwd-base-nodb: the same with the binary $GWD_BASE, to compare
#                two builds (before/after a change) interleaved in one run
#   --perf       also record `perf record -e cpu-clock -g` of each proxy per
#                test and round (perf-TEST-PROXY-ROUND.data, left in the temp
#                dir, which is then kept)
# Environment: GWD=path of gwd; GWD_DB=store for gwd (default a file in the
# temp dir; "none" or ":memory:" to see what the store costs); GWD_BASE_DB=the
# same for gwd-base (default: GWD_DB's); GWD_EXTRA=more
# gwd flags (e.g. "--nat-policy sequential").
# Every process it starts is killed by PID on exit; every run is bounded.
set -u

build=/tmp/b-bench
secs=5
flows=9000
proxies="none haproxy nginx gwd"
tests="connrate keepalive bulk udp idle"
rounds=3
quiet_wait=3
quiet_pct=30
nice=0
sysc=0
perf=0
keep=0
report=""
conn_rate=""
while [ $# -gt 0 ]; do
    case "$1" in
    --build) build=$2; shift ;;
    --seconds) secs=$2; shift ;;
    --flows) flows=$2; shift ;;
    --proxies) proxies=$2; shift ;;
    --tests) tests=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --quiet-wait) quiet_wait=$2; shift ;;
    --quiet-pct) quiet_pct=$2; shift ;;
    --nice) nice=$2; shift ;;
    --perf) perf=1; keep=1 ;;
    --syscalls) sysc=1 ;;
    --syscalls-perf) sysc=2 ;;
    --report) report=$2; shift ;;
    --conn-rate) conn_rate=$2; shift ;;
    --keep) keep=1 ;;
    *) sed -n '2,/^# Every process/p' "$0" >&2; exit 2 ;;
    esac
    shift
done

tools=$build/bench/gateway
gwd_bin=${GWD:-$build/gateway/gwd}
for t in bench_echo bench_connrate bench_keepalive bench_bulk bench_udp bench_idle; do
    [ -x "$tools/$t" ] || { echo "run.sh: $tools/$t missing (cmake --build $build --target bench_gateway_tools)" >&2; exit 1; }
done
case " $proxies " in *" gwd"*)
    [ -x "$gwd_bin" ] || { echo "run.sh: $gwd_bin missing: gwd left out" >&2; proxies=${proxies//gwd-nodb/}; proxies=${proxies//gwd/}; } ;;
esac
case " $proxies " in *" gwd-base"*)
    [ -x "${GWD_BASE:-}" ] || { echo "run.sh: GWD_BASE (${GWD_BASE:-unset}) not executable: gwd-base left out" >&2; proxies=${proxies//gwd-base-nodb/}; proxies=${proxies//gwd-base/}; } ;;
esac

tmp=$(mktemp -d /tmp/gw-bench.XXXXXX)
pids=()
LOAD_CPU="nice -n $nice taskset -c 0"
PROXY_CPU="nice -n $nice taskset -c 1"
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

kill_pid() { # kill_pid PID: TERM, wait up to 3 s, then KILL
    local p=$1 i
    kill -0 "$p" 2>/dev/null || return 0
    kill -TERM "$p" 2>/dev/null
    for i in $(seq 30); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
}
cleanup() {
    local p
    for p in "${pids[@]}"; do kill_pid "$p"; done
    if [ "$keep" = 1 ]; then echo "run.sh: kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { # port_free PORT: no TCP or UDP socket of any state uses it
    [ -z "$(ss -Htuan "sport = :$1" 2>/dev/null)" ]
}
pick_port() { # a free port in 10000-19999 (below every NAT pool and the ephemeral range)
    local p i
    for i in $(seq 200); do
        p=$((10000 + RANDOM % 10000))
        port_free "$p" && { echo "$p"; return 0; }
    done
    return 1
}
wait_listen() { # wait_listen PORT [udp]: bounded 5 s
    local i flag=-Htln
    [ "${2:-}" = udp ] && flag=-Huln
    for i in $(seq 50); do
        [ -n "$(ss $flag "sport = :$1" 2>/dev/null)" ] && return 0
        sleep 0.1
    done
    return 1
}
tree_pids() { # tree_pids PID: PID and its children (nginx master + worker)
    echo "$1"
    ps -o pid= --ppid "$1" 2>/dev/null
}
cpu_ticks() { # cpu_ticks PID...: utime+stime of all threads, in clock ticks
    local p sum=0 rest
    for p in "$@"; do
        rest=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        set -- $rest
        sum=$((sum + ${12} + ${13}))
    done
    echo "$sum"
}
thread_ticks() { # thread_ticks PID...: "comm ticks" per thread name (threads of one name summed)
    local p t
    for p in "$@"; do
        for t in /proc/"$p"/task/*; do
            [ -r "$t/stat" ] || continue
            sed 's/^[0-9]* (\(.*\)) [A-Za-z] \(.*\)$/\1 \2/' "$t/stat" 2>/dev/null
        done
    done | awk '{c[$1] += $12 + $13} END {for (n in c) print n, c[n]}' | sort
}
mem_kb() { # mem_kb PID...: "private_kB rss_kB" summed (smaps_rollup)
    local p priv=0 rss=0
    for p in "$@"; do
        read -r a b < <(awk '/^Rss:/{r=$2} /^Private_(Clean|Dirty):/{p+=$2} END{print p+0, r+0}' \
            "/proc/$p/smaps_rollup" 2>/dev/null)
        priv=$((priv + ${a:-0}))
        rss=$((rss + ${b:-0}))
    done
    echo "$priv $rss"
}
hz=$(getconf CLK_TCK)

# --syscalls-perf: one tracepoint per system call a proxy may make, those this
# kernel has, plus the total.
SYSC_EVENTS=raw_syscalls:sys_enter
if [ "$sysc" = 2 ]; then
    tp=/sys/kernel/tracing/events/syscalls
    [ -d "$tp" ] || tp=/sys/kernel/debug/tracing/events/syscalls
    [ -d "$tp" ] || { echo "run.sh: no syscall tracepoints (tracefs not mounted)" >&2; exit 1; }
    for sc in accept accept4 socket setsockopt getsockopt bind connect getpeername getsockname \
        epoll_ctl epoll_wait epoll_pwait recvfrom sendto recvmsg sendmsg recvmmsg sendmmsg \
        read write readv writev pread64 pwrite64 splice pipe2 shutdown close fcntl ioctl \
        futex clock_gettime fsync fdatasync openat mmap munmap madvise brk; do
        [ -d "$tp/sys_enter_$sc" ] && SYSC_EVENTS="$SYSC_EVENTS,syscalls:sys_enter_$sc"
    done
fi

busy_pct() { # busy_pct: % of all CPUs busy over 0.5 s (from /proc/stat)
    local a b
    a=$(awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat)
    sleep 0.5
    b=$(awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN{split(a,x," "); split(b,y," "); t=y[1]-x[1]; i=y[2]-x[2];
        printf "%d", (t > 0) ? 100 * (t - i) / t : 0}'
}
# The machine is shared: before each measurement wait (bounded by --quiet-wait
# seconds) for a moment when the other processes leave both cores mostly idle.
wait_quiet() {
    local i b
    for i in $(seq $((quiet_wait * 2))); do
        b=$(busy_pct)
        [ "$b" -le "$quiet_pct" ] && { QUIET="busy ${b}%"; return 0; }
    done
    QUIET="busy ${b:-?}% (no quiet moment in ${quiet_wait}s)"
}

if [ -z "$report" ]; then
# Backend: one echo port, one sink port, one UDP echo port, on core 0.
BE=$(pick_port) && SINK=$(pick_port) && UBE=$(pick_port) || { echo "run.sh: no free port" >&2; exit 1; }
$LOAD_CPU "$tools/bench_echo" --tcp 127.0.0.1:$BE --sink 127.0.0.1:$SINK --udp 127.0.0.1:$UBE \
    --seconds 3600 >"$tmp/backend.out" 2>"$tmp/backend.log" &
pids+=("$!")
wait_listen "$BE" || { echo "run.sh: backend did not start" >&2; exit 1; }
fi

# 8 NAT source addresses for gwd: a (nat_ip, nat_port) toward one backend
# stays in TIME_WAIT after gwd closes it, so one address' 12,768 ports last
# about a second at connection-rate speeds; 8 give ~100k ports.
nat_ips=""
for i in 1 2 3 4 5 6 7 8; do nat_ips+=" --nat-ip 127.2.0.$i"; done

start_proxy() { # start_proxy NAME PORT TCP_BACKEND_PORT: sets PROXY_PID (0 for none)
    local name=$1 port=$2 tport=$3 cfg
    PROXY_PID=0
    case $name in
    none) return 0 ;;
    haproxy | haproxy-log)
        # haproxy-log: the same with a log line per connection (option
        # tcplog) written to its stdout, a file: what logging costs HAProxy.
        local logcfg="" logopt=""
        [ "$name" = haproxy-log ] && { logcfg="log stdout format raw local0"; logopt="log global
    option tcplog"; }
        cfg=$tmp/haproxy.cfg
        cat >"$cfg" <<EOF
global
    nbthread 1
    maxconn 9900
    $logcfg
defaults
    mode tcp
    $logopt
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:$port
    default_backend be
backend be
    server s1 127.0.0.1:$tport
EOF
        $PROXY_CPU haproxy -db -f "$cfg" >"$tmp/$name.log" 2>&1 &
        ;;
    nginx | nginx-log)
        # nginx-log: the same with an access_log line per session, buffered
        # (64 KiB) as nginx's docs advise for busy servers.
        local logcfg="access_log off;"
        [ "$name" = nginx-log ] && logcfg="log_format gw '\$remote_addr:\$remote_port \$time_iso8601 \$protocol \$status \$bytes_received \$bytes_sent \$session_time \$upstream_addr';
    access_log $tmp/nginx-access.log gw buffer=64k;"
        cfg=$tmp/nginx.conf
        cat >"$cfg" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log warn;
events { worker_connections 19900; }
stream {
    $logcfg
    upstream be { server 127.0.0.1:$tport; }
    upstream ube { server 127.0.0.1:$UBE; }
    server { listen 127.0.0.1:$port; proxy_pass be; }
    server { listen 127.0.0.1:$port udp; proxy_pass ube; proxy_timeout 30s; }
}
EOF
        $PROXY_CPU nginx -p "$tmp" -e "$tmp/nginx-error.log" -c "$cfg" >"$tmp/nginx.log" 2>&1 &
        ;;
    gwd | gwd-nodb | gwd-base | gwd-base-nodb | gwd-pba)
        local db=${GWD_DB:-$tmp/gwd.db} bin=$gwd_bin conf=""
        if [ "$name" = gwd-pba ]; then
            echo '{"nat":{"policy":"block","block_size":128,"block_hold":10,"log":"blocks"}}' \
                >"$tmp/gwd-pba.json"
            conf="-c $tmp/gwd-pba.json"
        fi
        case $name in gwd-base*) bin=$GWD_BASE; db=${GWD_BASE_DB:-$db} ;; esac
        case $name in *-nodb) db=none ;; esac
        rm -f "$tmp"/gwd.db*
        # shellcheck disable=SC2086
        $PROXY_CPU "$bin" $conf -p "$port" -b 127.0.0.1 --tcp-backend be=127.0.0.1:$tport \
            --udp-backend ube=127.0.0.1:$UBE $nat_ips --nat-ports 20000-32767 \
            --db "$db" --control "$tmp/gwd.sock" --log-level warn \
            ${GWD_EXTRA:-} >>"$tmp/$name.log" 2>&1 &
        ;;
    esac
    PROXY_PID=$!
    pids+=("$PROXY_PID")
    if ! wait_listen "$port"; then
        echo "run.sh: $name did not listen on $port; log:" >&2
        tail -5 "$tmp/$name.log" >&2
        kill_pid "$PROXY_PID"
        return 1
    fi
    sleep 0.3 # nginx: let the worker start
    return 0
}

kv() { # kv KEY FILE: value of KEY= in the RESULT line
    sed -n 's/^RESULT.* '"$1"'=\([^ ]*\).*/\1/p; s/^RESULT '"$1"'=\([^ ]*\).*/\1/p' "$2" | head -1
}

res=${report:-$tmp/results.tsv}
[ -n "$report" ] || : >"$res"
run_one() { # run_one TEST PROXY ROUND
    local t=$1 px=$2 r=$3 port tport=$BE target tree c0 c1 out=$tmp/$1-$2-$3.out
    local m0 m1 lpid perfpid=0
    [ "$t" = bulk ] && tport=$SINK
    case $t/$px in udp/haproxy*) return 0 ;; esac # HAProxy 2.6 has no UDP proxy
    [ "$t" = idle ] && [ "$r" != 1 ] && return 0      # memory does not vary: once
    port=$(pick_port) || return 1
    start_proxy "$px" "$port" "$tport" || { printf '%s\t%s\t%s\tFAILED\n' "$t" "$px" "$r" >>"$res"; return 0; }
    if [ "$px" = none ]; then
        case $t in udp) target=127.0.0.1:$UBE ;; bulk) target=127.0.0.1:$SINK ;; *) target=127.0.0.1:$BE ;; esac
        tree=""
    else
        target=127.0.0.1:$port
        [ "$t" = udp ] && { wait_listen "$port" udp || true; }
        tree=$(tree_pids "$PROXY_PID")
    fi
    if [ "$perf" = 1 ] && [ -n "$tree" ] && command -v perf >/dev/null; then
        perf record -q -e cpu-clock -g -o "$tmp/perf-$t-$px-$r.data" -p "$(echo $tree | tr ' ' ',')" \
            >/dev/null 2>&1 &
        perfpid=$!
        pids+=("$perfpid")
        sleep 0.2
    fi
    local stpid=0
    if [ "$sysc" = 1 ] && [ -n "$tree" ]; then
        # shellcheck disable=SC2046
        strace -c -f -o "$tmp/strace-$t-$px-$r.txt" $(printf -- '-p %s ' $tree) 2>/dev/null &
        stpid=$!
        pids+=("$stpid")
        sleep 0.5
    elif [ "$sysc" = 2 ] && [ -n "$tree" ]; then
        perf stat -x, -o "$tmp/perfstat-$t-$px-$r.txt" -e "$SYSC_EVENTS" \
            -p "$(echo $tree | tr ' ' ',')" >/dev/null 2>&1 &
        stpid=$!
        pids+=("$stpid")
        sleep 0.5
    fi
    QUIET="strace"
    [ "$sysc" = 1 ] || wait_quiet
    # shellcheck disable=SC2086
    c0=$(cpu_ticks $tree)
    local th0 th1
    # shellcheck disable=SC2086
    th0=$(thread_ticks $tree)
    case $t in
    connrate) $LOAD_CPU "$tools/bench_connrate" --target "$target" --conc 64 --src-ips 64 --seconds "$secs" \
        ${conn_rate:+--rate "$conn_rate"} >"$out" 2>&1 ;;
    keepalive) $LOAD_CPU "$tools/bench_keepalive" --target "$target" --conc 50 --seconds "$secs" >"$out" 2>&1 ;;
    bulk) $LOAD_CPU "$tools/bench_bulk" --target "$target" --conc 1 --seconds "$secs" >"$out" 2>&1 ;;
    udp) $LOAD_CPU "$tools/bench_udp" --target "$target" --conc 16 --window 4 --seconds "$secs" >"$out" 2>&1 ;;
    idle)
        # shellcheck disable=SC2086
        m0=$(mem_kb $tree)
        $LOAD_CPU "$tools/bench_idle" --target "$target" --conc "$flows" --src-ips 16 --seconds 120 >"$out" 2>&1 &
        lpid=$!
        pids+=("$lpid")
        for i in $(seq 900); do grep -q '^READY' "$out" && break; sleep 0.1; done
        sleep 1
        # shellcheck disable=SC2086
        m1=$(mem_kb $tree)
        kill -TERM "$lpid" 2>/dev/null
        wait "$lpid" 2>/dev/null
        ;;
    esac
    if [ "$stpid" != 0 ]; then
        sleep 1 # let write-behind work land inside the count
        kill -INT "$stpid" 2>/dev/null
        wait "$stpid" 2>/dev/null
    fi
    # Let work the proxy does behind the load (gwd's SQLite write-behind) finish
    # and count it: wait until its CPU time stops moving (bounded 10 s).
    # shellcheck disable=SC2086
    c1=$(cpu_ticks $tree)
    if [ -n "$tree" ]; then
        local prev=-1 still=0
        for i in $(seq 50); do
            sleep 0.2
            prev=$c1
            # shellcheck disable=SC2086
            c1=$(cpu_ticks $tree)
            if [ "$c1" = "$prev" ]; then still=$((still + 1)); else still=0; fi
            [ "$still" -ge 2 ] && break
        done
    fi
    # shellcheck disable=SC2086
    th1=$(thread_ticks $tree)
    [ "$perfpid" != 0 ] && kill_pid "$perfpid"
    [ "$px" != none ] && kill_pid "$PROXY_PID"
    local ops rate p50 p99 err gbps dg cpu_us per
    ops=$(kv ops "$out"); rate=$(kv rate "$out"); p50=$(kv p50_us "$out"); p99=$(kv p99_us "$out")
    err=$(kv errors "$out"); gbps=$(kv gbps "$out"); dg=$(kv dgrams "$out")
    [ -n "$ops" ] || { printf '%s\t%s\t%s\tFAILED\n' "$t" "$px" "$r" >>"$res"; cat "$out" >&2; return 0; }
    cpu_us=$(( (c1 - c0) * 1000000 / hz ))
    [ -z "$tree" ] && cpu_us=""
    if [ "$t" = idle ]; then
        local flows_up=${ops} p0 p1 r1
        read -r p0 _ <<<"$m0"; read -r p1 r1 <<<"$m1"
        [ -z "$tree" ] && { p0=0; p1=0; r1=0; }
        per=$(awk -v a="$p0" -v b="$p1" -v n="$flows_up" 'BEGIN{ if (n>0) printf "%.0f", (b-a)*1024/n; else print "" }')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$px" "$r" "$flows_up" "$err" "$p0" "$p1" "$r1" "$per" >>"$res"
    else
        [ "$t" = udp ] && ops=$dg
        per=$(awk -v c="$cpu_us" -v n="$ops" 'BEGIN{ if (c!="" && n>0) printf "%.3f", c/n; else print "" }')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$px" "$r" "$ops" "$rate" "$p50" "$p99" \
            "$err" "$cpu_us" "$per" "$gbps" >>"$res"
    fi
    echo "run.sh: $t $px round $r ($QUIET before): $(grep -v "^RESULT" "$out" | head -1)" >&2
    # Where a multi-threaded proxy's CPU went (gwd: the loop, the store's writer
    # and checkpointer), per unit of work.
    if [ -n "$tree" ] && [ "$t" != idle ] && [ "$(echo "$th1" | wc -l)" -gt 1 ]; then
        echo "run.sh:   threads, us per unit: $(join <(echo "$th0") <(echo "$th1") |
            awk -v hz="$hz" -v n="$ops" 'n > 0 {printf "%s %.1f  ", $1, ($3 - $2) * 1e6 / hz / n}')" >&2
    fi
}

if [ -z "$report" ]; then
echo "run.sh: $(date -u +%FT%TZ) $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "run.sh: nice $nice, quiet-pct $quiet_pct, quiet-wait ${quiet_wait}s, ${secs}s x $rounds rounds" >&2
echo "run.sh: haproxy $(haproxy -v | sed -n '1s/HAProxy version \([^ ]*\).*/\1/p'), $(nginx -v 2>&1 | sed 's/.*: //'), gwd ${gwd_bin}" >&2
for r in $(seq "$rounds"); do
    for t in $tests; do
        for px in $proxies; do
            run_one "$t" "$px" "$r"
        done
    done
done
fi

if [ "$sysc" != 0 ]; then
    # Counts per unit of work from each round's strace -c (sysc 1) or perf stat
    # (sysc 2) file; the two differ only in how a line names and counts a call.
    if [ "$sysc" = 2 ]; then
        prefix=perfstat; how="perf stat, syscall tracepoints"
        parse='$3 == "raw_syscalls:sys_enter" { tot = $1 }
            $3 ~ /^syscalls:sys_enter_/ && $1 ~ /^[0-9]+$/ { k = $3; sub(/^syscalls:sys_enter_/, "", k); c[k] = $1 }'
        fs=,
    else
        prefix=strace; how="strace -c -f"
        parse='$1 ~ /^[0-9.]+$/ && $NF != "total" { c[$NF] = $4; tot += $4 }'
        fs=' '
    fi
    echo
    echo "## system calls per unit of work ($how; connrate: per connection, keepalive:"
    echo "## per request, bulk: per MiB, udp: per datagram crossing, idle: per flow opened)"
    while IFS=$'\t' read -r t px r ops rest; do
        f=$tmp/$prefix-$t-$px-$r.txt
        [ -s "$f" ] && [ "$ops" != FAILED ] || continue
        [ "$t" = udp ] && ops=$(kv dgrams "$tmp/$t-$px-$r.out")
        [ "$t" = bulk ] && ops=$(awk -v b="$ops" 'BEGIN{printf "%.0f", b / 1048576}')
        awk -F"$fs" -v t="$t" -v px="$px" -v n="$ops" "$parse"'
            END {
                if (n <= 0) exit
                line = sprintf("%-9s %-8s total %6.2f:", t, px, tot / n)
                for (k in c) if (c[k] / n >= 0.05) line = line sprintf(" %s %.2f", k, c[k] / n)
                print line
            }' "$f"
    done <"$res"
    exit 0
fi

# Report: one table per test, best round per proxy (lowest CPU per op; for
# bulk highest Gbit/s; for idle lowest bytes per flow), the ratio to the
# reference peer and, for gwd, the target and whether it is met.
awk -F'\t' -v flows="$flows" -v rounds="$rounds" -v paced="$conn_rate" '
function peer(p) { return p == "haproxy" || p == "nginx" }
$4 == "FAILED" { failed[$1 "/" $2] = 1; next }
$1 == "idle" {
    k = $1 "/" $2
    if (!(k in sc) || $9 + 0 < sc[k] + 0) { sc[k] = $9; row[k] = $0 }
    next
}
{
    k = $1 "/" $2
    # the round with the least CPU per unit of work (none: the fastest)
    score = ($10 == "" ? -$5 : $10)
    if (!(k in sc) || score < sc[k]) { sc[k] = score; row[k] = $0 }
    # and, over all rounds, the best throughput and p99
    if (!(k in maxrate) || $5 + 0 > maxrate[k]) maxrate[k] = $5 + 0
    if ($7 != "" && (!(k in minp99) || $7 + 0 < minp99[k])) minp99[k] = $7 + 0
    if ($11 != "" && (!(k in maxg) || $11 + 0 > maxg[k])) maxg[k] = $11 + 0
}
function val(t, f) { return t == "idle" ? f[9] : (t == "bulk" ? maxg[t "/" f[2]] : f[10]) }
END {
    split("connrate keepalive bulk udp idle", T, " ")
    np = split("none haproxy nginx gwd gwd-nodb gwd-pba gwd-base gwd-base-nodb haproxy-log nginx-log", P, " ")
    unit["connrate"] = "conn"; unit["keepalive"] = "req"; unit["udp"] = "dgram"
    for (ti = 1; ti <= 5; ti++) {
        t = T[ti]; ref = ""; refp = ""; refrate = ""; refp99 = ""; refcap = ""; refratep = ""; refp99p = ""
        # reference: the best peer, except bulk (HAProxy) and udp (nginx)
        for (pi = 2; pi <= 3; pi++) {
            p = P[pi]; k = t "/" p
            if (!(k in row)) continue
            if (t == "bulk" && p != "haproxy") continue
            if (t == "udp" && p != "nginx") continue
            split(row[k], f, "\t"); v = val(t, f)
            if (v == "") continue
            if (ref == "" || v + 0 < ref + 0) { ref = v; refp = p
                refcap = (f[9] == "" || f[9] == 0) ? "" : f[4] * 8 / 1e9 / (f[9] / 1e6) }
            # throughput and p99 targets: the best peer at each, over all rounds
            if (refrate == "" || maxrate[k] > refrate) { refrate = maxrate[k]; refratep = p }
            if (k in minp99 && (refp99 == "" || minp99[k] < refp99)) { refp99 = minp99[k]; refp99p = p }
        }
        hdr = 0
        for (pi = 1; pi <= np; pi++) {
            p = P[pi]; k = t "/" p
            if (!(k in row) && !(k in failed)) continue
            if (!hdr) {
                printf "\n## %s\n", t
                if (t == "idle")
                    printf "%-8s %6s %5s %10s %10s %10s %8s %8s\n", "proxy", "flows", "fail", "priv0 KiB", "privN KiB", "RSS KiB", "B/flow", "ratio"
                else if (t == "bulk")
                    printf "%-8s %8s %6s %7s %10s %8s %14s %8s\n", "proxy", "Gbit/s", "errors", "CPU s", "CPU us/MB", "ratio", "Gbit/s/CPU-s", "ratio"
                else
                    printf "%-8s %8s %8s %8s %8s %6s %7s %9s %8s\n", "proxy", "ops", "ops/s", "p50 us", "p99 us", "errors", "CPU s", "us/" unit[t], "ratio"
                hdr = 1
            }
            if ((k in failed) && !(k in row)) { printf "%-8s FAILED\n", p; continue }
            split(row[k], f, "\t"); v = val(t, f); ratio = ""
            if (p != "none" && ref != "" && v != "" && ref + 0 > 0) ratio = sprintf("%.2fx", v / ref)
            if (t == "idle") {
                printf "%-8s %6s %5s %10s %10s %10s %8s %8s\n", p, f[4], f[5], f[6], f[7], f[8], v, ratio
            } else if (t == "bulk") {
                cpu = f[9] == "" ? "-" : sprintf("%.2f", f[9] / 1e6)
                permb = (f[9] == "" || f[4] == 0) ? "-" : sprintf("%.1f", f[9] / (f[4] / 1e6))
                cap = (f[9] == "" || f[9] == 0) ? "" : sprintf("%.2f", f[4] * 8 / 1e9 / (f[9] / 1e6))
                capr = (cap != "" && refcap != "") ? sprintf("%.2fx", cap / refcap) : ""
                printf "%-8s %8s %6s %7s %10s %8s %14s %8s\n", p, maxg[k], f[8], cpu, permb, ratio, cap, capr
            } else {
                cpu = f[9] == "" ? "-" : sprintf("%.2f", f[9] / 1e6)
                printf "%-8s %8s %8.0f %8.0f %8.0f %6s %7s %9s %8s\n", p, f[4], f[5], f[6], f[7], f[8], cpu, f[10] == "" ? "-" : sprintf("%.1f", f[10]), ratio
            }
            if (p != "gwd" || v == "" || (ref == "" && t != "idle")) continue
            if (t == "connrate" && paced != "") {
                # paced: every proxy had the same offered load, no ops/s to compare
                printf "  target: us/%s <= %s (%s): %s; best p99 %.0f <= %.0f us (%s): %s (paced at %s/s)\n",
                    unit[t], ref, refp, (v + 0 <= ref + 0) ? "MET" : "MISSED",
                    minp99[k], refp99, refp99p, (minp99[k] <= refp99) ? "MET" : "MISSED", paced
            } else if (t == "connrate" || t == "keepalive") {
                printf "  target: us/%s <= %s (%s): %s; best ops/s %.0f >= %.0f (%s): %s; best p99 %.0f <= %.0f us (%s): %s\n",
                    unit[t], ref, refp, (v + 0 <= ref + 0) ? "MET" : "MISSED",
                    maxrate[k], refrate, refratep, (maxrate[k] >= refrate) ? "MET" : "MISSED",
                    minp99[k], refp99, refp99p, (minp99[k] <= refp99) ? "MET" : "MISSED"
            } else if (t == "bulk") {
                printf "  target: Gbit/s >= 1.5 x HAProxy = %.3f: %s; per CPU-second: %s\n", 1.5 * ref, (v + 0 >= 1.5 * ref) ? "MET" : "MISSED",
                    (cap != "" && refcap != "" && cap + 0 >= 1.5 * refcap) ? "MET" : "MISSED"
            } else if (t == "udp") {
                printf "  target: us/dgram <= 0.67 x nginx = %.2f: %s\n", 0.67 * ref, (v + 0 <= 0.67 * ref) ? "MET" : "MISSED"
            } else if (t == "idle") {
                printf "  target: <= 1024 B/flow: %s\n", (v + 0 <= 1024) ? "MET" : "MISSED"
            }
        }
    }
}' "$res"
# The mean over all rounds, beside the best round: with the machine's
# round-to-round spread, a difference smaller than the spread of the means
# is not a difference.
[ "$rounds" -gt 1 ] && awk -F'\t' '
$4 != "FAILED" && $1 != "idle" && $1 != "bulk" && $10 != "" {
    k = $1 "/" $2; n[k]++; cpu[k] += $10; rate[k] += $5; p99[k] += $7
    if (!(k in lo) || $10 < lo[k]) lo[k] = $10
    if (!(k in hi) || $10 > hi[k]) hi[k] = $10
}
END {
    split("connrate keepalive udp", T, " ")
    np = split("haproxy nginx gwd gwd-nodb gwd-pba gwd-base gwd-base-nodb haproxy-log nginx-log", P, " ")
    for (ti = 1; ti <= 3; ti++) {
        t = T[ti]; ref = ""; hdr = 0
        for (pi = 1; pi <= 2; pi++) {
            k = t "/" P[pi]
            if (!(k in n) || (t == "udp" && P[pi] != "nginx")) continue
            if (ref == "" || cpu[k] / n[k] < ref) { ref = cpu[k] / n[k]; refp = P[pi] }
        }
        for (pi = 1; pi <= np; pi++) {
            k = t "/" P[pi]
            if (!(k in n)) continue
            if (!hdr) { printf "\n## %s, mean of the rounds\n%-13s %6s %10s %15s %9s %9s %8s\n", t, "proxy", "rounds",
                "us/unit", "(min-max)", "ops/s", "p99 us", "ratio"; hdr = 1 }
            m = cpu[k] / n[k]
            printf "%-13s %6d %10.1f %15s %9.0f %9.0f %8s\n", P[pi], n[k], m,
                sprintf("(%.1f-%.1f)", lo[k], hi[k]), rate[k] / n[k], p99[k] / n[k],
                ref != "" ? sprintf("%.2fx", m / ref) : ""
        }
        if (hdr && ref != "") printf "(ratio: mean us/unit vs the mean of %s)\n", refp
    }
}' "$res"
echo
echo "(best of $rounds round(s) per proxy: each row is the round with the least CPU per unit of work,"
echo " except bulk Gbit/s, the best round's; targets on ops/s and p99 use each proxy's best round;"
echo " CPU = the proxy's utime+stime (all processes and threads)"
echo " over the load run; ratio = vs the best peer (bulk: vs HAProxy, udp: vs nginx); connrate:"
echo " 64 in flight from 64 client IPs${conn_rate:+, paced at $conn_rate conn/s}, 64 B echo, client closes; keepalive: 50 conns x 64 B echo;"
echo " bulk: 1 conn one way into a sink (Gbit/s/CPU-s = what one full core of the proxy would move); udp: 16 sockets x 4 in flight, 64 B, us/dgram counts"
echo " requests + replies; idle: $flows flows, B/flow = private memory (smaps_rollup) delta / flows)"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
