#!/usr/bin/env bash
# run.sh - build gw (release) and run it.
#   scripts/run.sh              the demo: two `gwsim backend` processes and gwd on
#                               port 80 (8080 when not root), TCP and UDP, store in
#                               ./run/gw.db; Ctrl-C stops everything.
#   scripts/run.sh ARGS...      build, then run `gwd ARGS...` in the foreground.
# Installs the Debian packages it needs when run as root (see scripts/deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD

scripts/deps.sh build
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGW_TESTS=OFF -DGW_BENCH=OFF >/dev/null
cmake --build build/release -j "$(nproc)" --target gwd gwctl gwsim

bin=$top/build/release
if [ $# -gt 0 ]; then
    exec "$bin/gateway/gwd" "$@"
fi

port=80
[ "$(id -u)" -eq 0 ] || port=8080
mkdir -p run
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# Starts a demo backend in this shell (so its PID is ours to stop) and sets
# `port_of` to the port it reports.
start_backend() { # name
    local name=$1 out=run/$1.out
    "$bin/sim/gwsim" backend --tcp --udp --port 0 --bind 127.0.0.1 --name "$name" >"$out" 2>&1 &
    pids+=($!)
    port_of=""
    for _ in $(seq 50); do
        port_of=$(sed -n 's/^listening tcp=\([0-9]*\).*/\1/p' "$out")
        [ -n "$port_of" ] && return 0
        sleep 0.1
    done
    echo "gw demo: backend $name did not start; see $out" >&2
    exit 1
}
start_backend web1
p1=$port_of
start_backend web2
p2=$port_of

echo "gw demo: gwd on port $port (TCP and UDP), backends web1=127.0.0.1:$p1 web2=127.0.0.1:$p2"
echo "  try: curl http://127.0.0.1:$port/   |   $bin/sim/gwsim clients --gateway 127.0.0.1:$port --clients 100 --ips 10"
echo "  look: $bin/gateway/gwctl show nat   |   sqlite3 run/gw.db 'select * from nat_sessions'"
"$bin/gateway/gwd" -p "$port" -b 127.0.0.1 \
    --tcp-backend "web=127.0.0.1:$p1" --tcp-backend "web=127.0.0.1:$p2" \
    --udp-backend "echo=127.0.0.1:$p1" --udp-backend "echo=127.0.0.1:$p2" \
    --db run/gw.db &
pids+=($!)
wait "${pids[-1]}"
