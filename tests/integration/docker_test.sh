#!/usr/bin/env bash
# docker_test.sh - the Dockerfile and deploy/docker-compose.yml, for real, on a Docker
# engine this script starts and stops itself.
#
# usage: tests/integration/docker_test.sh [SOURCE_DIR]
#
#  1. starts its own dockerd (own --data-root, exec-root, socket, pidfile and default
#     bridge; DOCKER_HOST points at it for everything below);
#  2. makes debian:bookworm-slim with scripts/docker-base.sh (debootstrap + docker
#     import; no registry needed) unless the data-root already has it;
#  3. builds the image from the Dockerfile through docker-compose;
#  4. runs the documented command, `docker-compose up --abort-on-container-exit
#     --exit-code-from clients`, and wants exit code 0;
#  5. starts gateway and backends again, runs the clients once more, then checks
#     `gwctl show nat --json` inside the gateway (every flow translated to the gateway's
#     address on the backend network, with a pool port) and what the backends say they
#     saw; checks that gwd runs as user gw, binds 80 by capability, and stops on SIGTERM;
#  6. removes every container, network and volume it made, stops dockerd by its PID and
#     undoes the host changes dockerd makes (bridge, iptables rules, ip_forward).
#
# Kept between runs on purpose: the data-root ($GW_DOCKER_DATA_ROOT, default
# /var/lib/gw-docker-test) with the base image and the build cache, and the debootstrap
# root in /var/cache/gw; a warm run then takes well under a minute. GW_DOCKER_CLEAN=1
# removes the data-root at the end too. Runs are serialised by a lock (one data-root).
#
# Exit 0 pass, 1 fail, 77 skipped with the reason printed (not root, a tool missing,
# dockerd cannot run here, no Debian mirror for the base image), GW_SKIP_DOCKER=1 skips.
set -uo pipefail

SRC=$(cd "${1:-$(dirname "$0")/../..}" && pwd)
skip() {
    echo "SKIP docker_test: $*"
    exit 77
}
[ "${GW_SKIP_DOCKER:-0}" = 1 ] && skip "GW_SKIP_DOCKER=1 is set"
[ "$(id -u)" -eq 0 ] || skip "needs root to start its own dockerd (uid $(id -u))"
for t in dockerd docker docker-compose containerd runc debootstrap iptables-save jq ip flock; do
    command -v "$t" >/dev/null ||
        skip "'$t' is not installed (scripts/deps.sh test installs docker.io docker-compose debootstrap jq)"
done

DATA_ROOT=${GW_DOCKER_DATA_ROOT:-/var/lib/gw-docker-test}
RUN=/run/gw-docker-test-$$
BRIDGE=gw-docker0 # fixed: dockerd keeps the default network in its data-root
PROJECT=gwtest$$
COMPOSE_FILE=$SRC/deploy/docker-compose.yml
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gw-docker-$$.XXXXXX")
export DOCKER_HOST=unix://$RUN/docker.sock
# Classic builder (no buildx needed). `run` and `exec` go through the docker CLI: with
# COMPOSE_INTERACTIVE_NO_CLI=1 compose 1.29 loses the output of short-lived containers.
export COMPOSE_DOCKER_CLI_BUILD=0 DOCKER_BUILDKIT=0
export GW_IMAGE=gw:latest
FAILS=0
DOCKERD_PID=
BRIDGE_MADE=0
IPT_SAVED=0
FWD_BEFORE=$(cat /proc/sys/net/ipv4/ip_forward)

log() { echo "docker_test: $* ($(date -u +%T))"; }
ok() { echo "  ok   $*"; }
bad() {
    echo "  FAIL $*"
    FAILS=$((FAILS + 1))
}
compose() { timeout 600 docker-compose -p "$PROJECT" -f "$COMPOSE_FILE" "$@"; }

# restore_iptables: the filter and nat tables as they were before dockerd ran. With
# iptables-nft a table dockerd created is deleted; with legacy iptables it is emptied.
restore_iptables() { # restore_iptables SNAPSHOT
    local t
    iptables-restore <"$1" || echo "docker_test: could not restore iptables (saved in $1)"
    for t in filter nat; do
        grep -q "^\*$t\$" "$1" && continue
        if iptables -V | grep -q nf_tables; then
            nft delete table ip "$t" 2>/dev/null
        else
            iptables -t "$t" -F && iptables -t "$t" -X
            [ "$t" = filter ] && iptables -P FORWARD ACCEPT
        fi
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
        log "cleaning up: compose down -v, dangling images, dockerd (pid $DOCKERD_PID)"
        compose down -v --remove-orphans -t 5 >>"$WORK/compose-down.log" 2>&1 ||
            cat "$WORK/compose-down.log"
        docker image prune -f >/dev/null 2>&1
        kill -TERM "$DOCKERD_PID"
        local i
        for ((i = 0; i < 300; i++)); do
            kill -0 "$DOCKERD_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$DOCKERD_PID" 2>/dev/null; then
            echo "docker_test: dockerd did not stop in 30 s, killing it"
            kill -KILL "$DOCKERD_PID"
        fi
        wait "$DOCKERD_PID" 2>/dev/null
    fi
    # Undo what dockerd does to the host: its rules, its bridge, forwarding.
    [ "$IPT_SAVED" = 1 ] && restore_iptables "$RUN/iptables.before"
    [ "$BRIDGE_MADE" = 1 ] && ip link del "$BRIDGE" 2>/dev/null
    echo "$FWD_BEFORE" >/proc/sys/net/ipv4/ip_forward
    if [ -d "$RUN" ]; then
        umount -R "$RUN" 2>/dev/null
        rm -rf "$RUN"
    fi
    [ "${GW_DOCKER_CLEAN:-0}" = 1 ] && rm -rf "$DATA_ROOT"
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# ---- 1. our own dockerd -------------------------------------------------------------
mkdir -p "$(dirname "$DATA_ROOT")" /run/lock
# fd 8 holds the lock; dockerd must not inherit it (a dockerd left by a killed run
# would hold the lock forever).
exec 8>/run/lock/gw-docker-test.lock
log "waiting for the lock (one run at a time per data-root)"
flock -w 900 8 || {
    bad "another docker_test held the lock for 15 minutes"
    exit 1
}

# A run that was killed (ctest kills a test at its timeout) could not clean up: its
# dockerd may still run. Its run directory has the PID and the iptables snapshot.
for dir in /run/gw-docker-test-*; do
    [ -d "$dir" ] || continue
    kill -0 "${dir##*-}" 2>/dev/null && continue # that run is alive (it cannot be: lock)
    log "cleaning up after an earlier run that was killed: $dir"
    pid=$(cat "$dir/docker.pid" 2>/dev/null)
    if [ -n "$pid" ] && grep -q dockerd "/proc/$pid/cmdline" 2>/dev/null; then
        kill -TERM "$pid"
        for ((i = 0; i < 300; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    if [ -f "$dir/iptables.before" ] && ! grep -q '^:DOCKER ' "$dir/iptables.before"; then
        restore_iptables "$dir/iptables.before"
    fi
    umount -R "$dir" 2>/dev/null
    rm -rf "$dir" "${TMPDIR:-/tmp}/gw-docker-${dir##*-}".*
done

# The default bridge gets a /24 that no route here uses yet. A bridge left by a run
# that was killed is ours (we hold the lock): remove it first.
ip link del "$BRIDGE" 2>/dev/null
subnet=
for s in 10.231.{0..9}; do
    ip -4 route show | grep -q "^$s\." && continue
    subnet=$s
    break
done
[ -n "$subnet" ] || skip "no free 10.231.x.0/24 for the test dockerd's bridge"
ip link add "$BRIDGE" type bridge || skip "cannot make a bridge (kernel without bridge support?)"
BRIDGE_MADE=1
ip addr add "$subnet.1/24" dev "$BRIDGE" && ip link set "$BRIDGE" up

# Another dockerd owns the DOCKER chains already: then ours are left for it to keep.
mkdir -p "$RUN"
if iptables-save >"$RUN/iptables.before" 2>/dev/null; then
    grep -q '^:DOCKER ' "$RUN/iptables.before" || IPT_SAVED=1
fi

log "starting dockerd: data-root $DATA_ROOT, socket $RUN/docker.sock, bridge $BRIDGE ($subnet.0/24)"
# Own containerd namespaces too: dockerd uses a system containerd when one runs.
dockerd --data-root "$DATA_ROOT" --exec-root "$RUN/exec" --host "$DOCKER_HOST" \
    --pidfile "$RUN/docker.pid" --bridge "$BRIDGE" --iptables=true --ip-masq=true \
    --containerd-namespace gw-docker-test --containerd-plugins-namespace gw-docker-test-plugins \
    >"$WORK/dockerd.log" 2>&1 8>&- &
DOCKERD_PID=$!
up=0
for ((i = 0; i < 600; i++)); do
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    if docker version >/dev/null 2>&1; then
        up=1
        break
    fi
    sleep 0.1
done
if [ $up = 0 ]; then
    tail -n 15 "$WORK/dockerd.log"
    skip "dockerd did not come up in 60 s here (log above)"
fi
log "dockerd $(docker version -f '{{.Server.Version}}') is up (pid $DOCKERD_PID)"
# The data-root is ours alone: containers, networks and volumes left by a killed run go.
docker container prune -f >/dev/null 2>&1
docker network prune -f >/dev/null 2>&1
docker volume prune -f >/dev/null 2>&1

# ---- 2. the base image -----------------------------------------------------------------
start=$SECONDS
if ! "$SRC/scripts/docker-base.sh" >"$WORK/base.log" 2>&1; then
    cat "$WORK/base.log"
    skip "could not make debian:bookworm-slim (debootstrap needs a Debian mirror)"
fi
log "base image ready in $((SECONDS - start)) s"

# Can a container reach the mirror? If not, build with the host's network.
if ! timeout 120 docker run --rm debian:bookworm-slim apt-get update -q >"$WORK/probe.log" 2>&1; then
    log "containers cannot reach the Debian mirror on the bridge; building with --network host"
    tail -n 5 "$WORK/probe.log"
    export GW_BUILD_NETWORK=host
fi

# ---- 3. the image --------------------------------------------------------------------
start=$SECONDS
if ! compose build >"$WORK/build.log" 2>&1; then
    tail -n 60 "$WORK/build.log"
    bad "docker-compose build failed"
    exit 1
fi
log "image $GW_IMAGE built in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$GW_IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}'))"

# The runtime image: no compiler, a non-root user, the capability on gwd.
img() { docker run --rm --entrypoint "" "$GW_IMAGE" "$@"; }
if [ "$(img id -un)" = gw ]; then ok "image runs as user gw"; else bad "image user is '$(img id -un)', want gw"; fi
if img sh -c 'command -v cc || command -v gcc || command -v cmake' >/dev/null 2>&1; then
    bad "runtime image carries a compiler"
else
    ok "runtime image has no compiler"
fi
caps=$(img getcap /usr/local/bin/gwd)
if echo "$caps" | grep -q cap_net_bind_service; then ok "gwd has the file capability: $caps"; else
    bad "gwd has no cap_net_bind_service ('$caps')"
fi

# ---- 4. the documented way -----------------------------------------------------------
log "docker-compose up --abort-on-container-exit --exit-code-from clients"
start=$SECONDS
compose up --no-build --abort-on-container-exit --exit-code-from clients >"$WORK/up.log" 2>&1
rc=$?
if [ $rc -eq 0 ]; then
    ok "documented run: clients exited 0 in $((SECONDS - start)) s"
else
    tail -n 80 "$WORK/up.log"
    bad "documented run: exit code $rc (the clients' exit code, or compose's)"
fi
n=$(compose run --rm --no-deps -T gateway gwctl --db /var/lib/gw/gw.db show nat --all --json 2>"$WORK/db.err" |
    jq '.total' 2>/dev/null)
if [ "$n" = 100 ]; then ok "the store volume holds the 100 flows after the run"; else
    bad "store after the run: total '$n', want 100 ($(cat "$WORK/db.err"))"
fi
compose down -v -t 5 >>"$WORK/compose-down.log" 2>&1

# ---- 5. live checks ------------------------------------------------------------------
log "live: gateway + backends up, clients once more, then the gateway's NAT table"
compose up -d --no-build gateway >"$WORK/up-d.log" 2>&1 || {
    cat "$WORK/up-d.log"
    bad "compose up -d gateway failed"
    exit 1
}
healthy=0
for ((i = 0; i < 60; i++)); do
    st=$(docker inspect -f '{{.State.Health.Status}}' "${PROJECT}_gateway_1" 2>/dev/null)
    [ "$st" = healthy ] && healthy=1 && break
    sleep 0.5
done
if [ $healthy = 0 ]; then
    compose logs gateway | tail -n 40
    bad "gateway never became healthy"
    exit 1
fi
ipof() { # ipof CONTAINER NETWORK
    docker inspect -f "{{(index .NetworkSettings.Networks \"${PROJECT}_$2\").IPAddress}}" "$1"
}
GW_BACK=$(ipof "${PROJECT}_gateway_1" back)
GW_FRONT=$(ipof "${PROJECT}_gateway_1" front)
B1=$(ipof "${PROJECT}_backend1_1" back)
B2=$(ipof "${PROJECT}_backend2_1" back)
log "gateway front $GW_FRONT back $GW_BACK; backend1 $B1, backend2 $B2"

# gwd: user gw, port 80 on TCP and UDP, nothing else needed.
gwd_user=$(compose exec -T gateway sh -c \
    'for p in /proc/[0-9]*; do [ "$(cat $p/comm)" = gwd ] && stat -c %U $p; done' 2>/dev/null | tr -d '\r')
if [ "$gwd_user" = gw ]; then
    ok "gwd runs as user gw"
else
    bad "gwd runs as '$gwd_user', want gw"
fi
if compose exec -T gateway sh -c "grep -qE ':0050 [0-9A-F]+:[0-9A-F]+ 0A ' /proc/net/tcp /proc/net/tcp6 &&
        grep -q ':0050 ' /proc/net/udp /proc/net/udp6"; then
    ok "gwd listens on port 80 TCP and UDP with net.ipv4.ip_unprivileged_port_start=1024"
else
    bad "gwd is not on port 80 TCP+UDP"
fi

compose run --rm -T clients >"$WORK/clients.json" 2>"$WORK/clients.err"
rc=$?
if [ $rc -eq 0 ]; then ok "clients exited 0"; else
    cat "$WORK/clients.err"
    tail -c 3000 "$WORK/clients.json"
    bad "clients exited $rc"
fi
# The compose file asks for 20 clients x 5 flows; every one must have passed, with the
# backend's view checked against the NAT table.
summary=$(jq -c '{flows, ok, failed, nat_checked, client_ips}' "$WORK/clients.json" 2>/dev/null)
if [ "$summary" = '{"flows":100,"ok":100,"failed":0,"nat_checked":true,"client_ips":1}' ]; then
    ok "clients: 100 flows from one client host, all ok, each checked against the NAT table"
else
    bad "clients summary: '$summary', want 100 flows ok, 0 failed, nat_checked"
fi

# A flow seen from a client by hand: bash's /dev/tcp and /dev/udp, through the gateway.
# The backend names the peer it saw: it must be the gateway's back address. (UDP is read
# with dd: one read() takes the whole datagram, where bash's `read` takes one byte.)
for proto in tcp udp; do
    line=$(compose run --rm -T --no-deps clients bash -c \
        "exec 3<>/dev/$proto/gateway/80 && echo hello >&3 &&
         timeout 5 dd bs=65536 count=1 <&3 2>/dev/null | head -n 1" \
        2>>"$WORK/byhand.err" | tr -d '\r')
    seen=${line##*peer=}
    port=${seen##*:}
    if [[ "$line" =~ ^gwsim-backend\ backend[12]\ peer= ]] && [ "${seen%:*}" = "$GW_BACK" ] &&
        [ "$port" -ge 29000 ] && [ "$port" -le 29999 ]; then
        ok "by hand, $proto: '$line' (the gateway's back address, a pool port)"
    else
        bad "by hand, $proto: '$line', want peer=$GW_BACK:29000-29999"
        grep -v -e '^Creating' "$WORK/byhand.err"
        compose exec -T gateway gwctl show stats
    fi
done

# check_sessions WHAT FILE WANT_TOTAL [PROTO]: every session in FILE (show nat --json)
# is translated to the gateway's back address with a pool port, toward one of the two
# backends on 9000, from a client on the front network; no two live ones share a
# mapping; and there are exactly WANT_TOTAL of them (of PROTO, when given).
check_sessions() {
    local what=$1 f=$2 want=$3 proto=${4:-} n wrong dup
    n=$(jq --arg p "$proto" '[.sessions[] | select($p == "" or .proto == $p)] | length' "$f" 2>/dev/null)
    if [ "$n" = "$want" ] && [ "$(jq '.sessions | length' "$f")" = "$(jq '.total' "$f")" ]; then
        ok "$what: $n ${proto:-tcp+udp} sessions, as many as the clients made"
    else
        bad "$what: ${n:-no} ${proto:-} sessions (total $(jq '.total' "$f" 2>/dev/null)), want $want"
        echo "sessions per client address, protocol and state:"
        jq -r '.sessions[] | "\(.client_ip) \(.proto) \(.state) \(.close_reason)"' "$f" | sort | uniq -c
    fi
    wrong=$(jq -c --arg gw "$GW_BACK" --arg b1 "$B1" --arg b2 "$B2" --arg fr "${GW_FRONT%.*}." '
        [.sessions[] | select(.nat_ip != $gw or .nat_port < 29000 or .nat_port > 29999
            or (.backend_ip != $b1 and .backend_ip != $b2) or .backend_port != 9000
            or (.client_ip | startswith($fr) | not))] | .[:3]' "$f" 2>/dev/null)
    if [ "$wrong" = "[]" ]; then
        ok "$what: every session is ${GW_FRONT%.*}.x -> $GW_BACK:29000-29999 -> $B1|$B2:9000"
    else
        bad "$what: sessions not translated to $GW_BACK from the front network: $wrong"
    fi
    dup=$(jq -r '.sessions[] | select(.state != "closed") | "\(.proto) \(.nat_port) \(.backend_ip)"' \
        "$f" | sort | uniq -d | head -n 3)
    if [ -z "$dup" ]; then ok "$what: no two live sessions share a mapping"; else
        bad "$what: live sessions sharing a mapping: $dup"
    fi
}

# Live table: TCP flows are over (closed flows leave it), the UDP mappings stay for
# their 300 s timeout: the 50 UDP flows of the clients and the one made by hand.
compose exec -T gateway gwctl show nat --json --limit 1000 >"$WORK/nat.json" 2>"$WORK/nat.err" ||
    bad "gwctl show nat --json in the gateway failed: $(cat "$WORK/nat.err")"
compose exec -T gateway gwctl show nat --limit 1000 >"$WORK/nat.txt" 2>&1
check_sessions "live show nat" "$WORK/nat.json" 51 udp
echo "== docker-compose exec gateway gwctl show nat (first lines)"
head -n 8 "$WORK/nat.txt"

# Stopping is fast: gwd (under tini) ends on SIGTERM well inside compose's 10 s.
start=$SECONDS
compose stop -t 10 gateway >/dev/null 2>&1
code=$(docker inspect -f '{{.State.ExitCode}}' "${PROJECT}_gateway_1" 2>/dev/null)
if [ "$code" = 0 ] && [ $((SECONDS - start)) -lt 10 ]; then
    ok "gateway stopped on SIGTERM in $((SECONDS - start)) s, exit 0"
    [ $((SECONDS - start)) -ge 5 ] && compose logs --tail 5 gateway
else
    compose logs --tail 20 gateway
    bad "gateway stop: exit code '$code' after $((SECONDS - start)) s"
fi

# The store, after the stop: every flow of this run, TCP and UDP, 100 + 2 by hand.
compose run --rm --no-deps -T gateway gwctl --db /var/lib/gw/gw.db show nat --all --json --limit 1000 \
    >"$WORK/store.json" 2>"$WORK/store.err" || bad "gwctl --db show nat failed: $(cat "$WORK/store.err")"
check_sessions "store" "$WORK/store.json" 102

if [ $FAILS -eq 0 ]; then
    log "PASS"
    exit 0
fi
log "FAIL: $FAILS checks failed"
exit 1
