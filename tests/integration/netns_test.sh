#!/usr/bin/env bash
# netns_test.sh - clients on their own hosts: gw in a small network of namespaces,
# then the kernel's own NAT in the same network, side by side.
#
# usage: netns_test.sh GWD GWCTL GWSIM NETPROBE [gw|block|kernel|both]
#
# The network (every name carries this script's PID, every address exists only
# inside the namespaces made here):
#
#   c1 10.201.1.11 ─┐                                   ┌───────────────┐
#   c2 10.201.1.12 ─┤  LAN 10.201.1.0/24 (bridge in sw)  │ gw            │  10.202.0.0/24  ┌────────────┐
#   r  10.201.1.2  ─┼──────────────────────────────────── eth0 10.201.1.1 eth1 10.202.0.1 ─── 10.202.0.2 b │
#    │ masquerade   │                                   └───────────────┘                 └────────────┘
#    └─ 10.203.0.1 ── c3 10.203.0.11, c4 10.203.0.12 (inner NAT: both leave as 10.201.1.2)
#
# The backend host has no route anywhere but the gateway's link. Each client host opens
# one TCP and one UDP flow to 10.201.1.1:80 from the SAME source port, and holds them open
# while the tables are read.
#   gw:     gwd (the build under test) on port 80; checks: all flows arrive on the one
#           port 80 from 3 distinct client addresses; the backend sees only 10.202.0.1;
#           every flow's source port is the one `gwctl show nat --json` gives it; c3 and c4
#           (one address behind the inner NAT) get distinct mappings; gwd exits 0 on SIGTERM
#           (the ASan build checks leaks) and the store holds every flow.
#   block:  gwd with port-block allocation and the block log: one block per client
#           address (c3 and c4 share one), every flow's port in its block, the store's
#           log holds 3 block_alloc + 3 block_free rows and no flow rows, whois names a
#           block by any of its ports.
#   kernel: the same flows through nftables dnat + masquerade in the gateway namespace;
#           checks the same rewrite in `conntrack -L`.
#   both (default): all three, then gw's `show nat` and the kernel's `conntrack -L` printed
#           side by side for the same client hosts.
# Everything is removed at exit, also on failure. Exit 0 pass, 1 fail, 77 skipped (why
# is printed: not root, a tool missing, no namespaces/veth/bridge/nftables nat here).
set -uo pipefail

if [ $# -lt 4 ]; then
    echo "usage: $0 GWD GWCTL GWSIM NETPROBE [gw|block|kernel|both]" >&2
    exit 2
fi
GWD=$1 GWCTL=$2 GWSIM=$3 NETPROBE=$4 MODE=${5:-both}

skip() {
    echo "SKIP netns_test: $*"
    exit 77
}
[ "$(id -u)" -eq 0 ] || skip "needs root for ip netns, veth and nftables (uid $(id -u))"
for t in ip nft conntrack ss jq; do
    command -v "$t" >/dev/null || skip "'$t' is not installed (scripts/deps.sh test installs it)"
done
for b in "$GWD" "$GWCTL" "$GWSIM" "$NETPROBE"; do
    [ -x "$b" ] || skip "$b is not built"
done

T=gwn$$ # prefix of every namespace
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gw-netns-$$.XXXXXX")
NSES=()
PIDS=()
FAILS=0
LAN=10.201.1
GW_IP=$LAN.1
BACK_GW=10.202.0.1
BACK_B=10.202.0.2
BE_PORT=9000
POOL_LO=29000 POOL_HI=29999
HOSTS=(c1 c2 c3 c4)
declare -A HOST_IP=([c1]=$LAN.11 [c2]=$LAN.12 [c3]=10.203.0.11 [c4]=10.203.0.12)
declare -A SEEN_AS=([c1]=$LAN.11 [c2]=$LAN.12 [c3]=$LAN.2 [c4]=$LAN.2) # what gw sees

log() { echo "netns_test: $*"; }
ok() { echo "  ok   $*"; }
bad() {
    echo "  FAIL $*"
    FAILS=$((FAILS + 1))
}
# nsx HOST cmd... : run in that host's namespace. Not for `&`: a function in the
# background is a subshell, and $! would be its PID, not the program's.
nsx() {
    local h=$1
    shift
    ip netns exec "$T-$h" "$@"
}

cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    for p in "${NSES[@]}"; do ip netns del "$p" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

mkns() {
    ip netns add "$T-$1" || return 1
    NSES+=("$T-$1")
    nsx "$1" ip link set lo up
}

# link A IFA B IFB: a veth pair made directly inside the two namespaces.
link() {
    ip link add "$2" netns "$T-$1" type veth peer name "$4" netns "$T-$3" &&
        nsx "$1" ip link set "$2" up && nsx "$3" ip link set "$4" up
}

build_network() {
    local h
    for h in sw gw b r c1 c2 c3 c4; do mkns "$h" || return 1; done
    # The LAN: a bridge in the switch namespace, one port per host.
    nsx sw ip link add br0 type bridge forward_delay 0 &&
        nsx sw ip link set br0 up || return 1
    for h in gw r c1 c2; do
        link sw "p-$h" "$h" eth0 && nsx sw ip link set "p-$h" master br0 || return 1
    done
    nsx gw ip addr add "$GW_IP/24" dev eth0 &&
        nsx c1 ip addr add "$LAN.11/24" dev eth0 &&
        nsx c2 ip addr add "$LAN.12/24" dev eth0 &&
        nsx r ip addr add "$LAN.2/24" dev eth0 &&
        nsx c1 ip route add default via "$GW_IP" &&
        nsx c2 ip route add default via "$GW_IP" || return 1
    # The backend link: the backend host knows nothing but this /24.
    link gw eth1 b eth0 &&
        nsx gw ip addr add "$BACK_GW/24" dev eth1 &&
        nsx b ip addr add "$BACK_B/24" dev eth0 || return 1
    # The inner NAT: r masquerades c3 and c4 behind its one LAN address.
    nsx r ip link add br1 type bridge forward_delay 0 &&
        nsx r ip link set br1 up &&
        nsx r ip addr add 10.203.0.1/24 dev br1 || return 1
    for h in c3 c4; do
        link r "p-$h" "$h" eth0 && nsx r ip link set "p-$h" master br1 &&
            nsx "$h" ip addr add "${HOST_IP[$h]}/24" dev eth0 &&
            nsx "$h" ip route add default via 10.203.0.1 || return 1
    done
    nsx r sysctl -qw net.ipv4.ip_forward=1 &&
        nsx r ip route add default via "$GW_IP" &&
        nsx r nft -f - <<'EOF' || return 1
table ip innernat {
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "eth0" masquerade
    }
}
EOF
    nsx gw sysctl -qw net.ipv4.ip_forward=0
}

# wait_for SECONDS cmd...: retries cmd every 0.1 s, at most SECONDS.
wait_for() {
    local n=$(($1 * 10))
    shift
    while [ $n -gt 0 ]; do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
        n=$((n - 1))
    done
    return 1
}

start_backend() {
    ip netns exec "$T-b" "$GWSIM" backend --bind 0.0.0.0 --port "$BE_PORT" --name b1 >"$WORK/backend.out" 2>&1 &
    PIDS+=("$!")
    wait_for 10 grep -q listening "$WORK/backend.out" || {
        cat "$WORK/backend.out"
        return 1
    }
}

# run_probes PHASE PORT: from every client host, one TCP and one UDP flow from source
# port PORT, held open; one JSON line per flow in $WORK/PHASE-HOST-PROTO.json.
PROBE_PIDS=()
run_probes() {
    local phase=$1 port=$2 h proto
    PROBE_PIDS=()
    for h in "${HOSTS[@]}"; do
        for proto in tcp udp; do
            ip netns exec "$T-$h" "$NETPROBE" -b "${HOST_IP[$h]}:$port" -t 5 -H 60 "$proto" "$GW_IP" 80 \
                >"$WORK/$phase-$h-$proto.json" 2>"$WORK/$phase-$h-$proto.err" &
            PROBE_PIDS+=("$!")
            PIDS+=("$!")
        done
    done
    # A probe prints its line once its flow has been answered, then holds the flow.
    local i f
    for h in "${HOSTS[@]}"; do
        for proto in tcp udp; do
            f=$WORK/$phase-$h-$proto.json
            for ((i = 0; i < 100; i++)); do
                [ -s "$f" ] && break
                sleep 0.1
            done
            if [ -s "$f" ] && [ "$(jq -r '.tries' "$f" 2>/dev/null)" != 1 ]; then
                # Only the inner NAT may lose a first datagram: c3 and c4 start from one
                # source port at once, and one of the two new conntrack entries can fail
                # its insertion (counted as insert_failed/drop in r). gw must lose none.
                if { [ "$h" = c3 ] || [ "$h" = c4 ]; } && nsx r conntrack -S 2>/dev/null |
                    grep -qE '(insert_failed|drop)=[1-9]'; then
                    ok "$phase: $h $proto flow answered after a datagram lost in r's conntrack: $(cat "$f")"
                else
                    bad "$phase: $h $proto flow answered only after $(jq -r '.tries' "$f") datagrams, with no loss in the inner NAT to explain it"
                fi
            elif [ -s "$f" ]; then
                ok "$phase: $h $proto flow answered: $(cat "$f")"
            else
                bad "$phase: $h $proto flow got no answer: $(cat "$WORK/$phase-$h-$proto.err")"
            fi
        done
    done
}

stop_probes() {
    local p
    for p in "${PROBE_PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PROBE_PIDS[@]}"; do wait "$p" 2>/dev/null; done
    PROBE_PIDS=()
}

probe() { # probe PHASE HOST PROTO FIELD
    jq -r ".$4" "$WORK/$1-$2-$3.json" 2>/dev/null
}

# check_seen PHASE: the backend saw every flow from the gateway's back address, with a
# port from the pool; the backend host's own sockets agree.
check_backend_view() {
    local phase=$1 h proto seen peers
    for h in "${HOSTS[@]}"; do
        for proto in tcp udp; do
            seen=$(probe "$phase" "$h" "$proto" seen)
            local port=${seen##*:}
            if [ "${seen%:*}" = "$BACK_GW" ] && [ "$port" -ge $POOL_LO ] && [ "$port" -le $POOL_HI ]; then
                ok "$phase: backend saw $h $proto as $seen (gateway address, pool port)"
            else
                bad "$phase: backend saw $h $proto as '$seen', want $BACK_GW:$POOL_LO-$POOL_HI"
            fi
        done
    done
    peers=$(nsx b ss -Htn state established "( sport = :$BE_PORT )" | awk '{print $4}' | sort)
    if [ "$(echo "$peers" | grep -c .)" -eq 4 ] && ! echo "$peers" | grep -qv "^$BACK_GW:"; then
        ok "$phase: backend host has 4 TCP connections, all from $BACK_GW"
    else
        bad "$phase: backend host TCP peers: $(echo $peers), want 4 from $BACK_GW"
    fi
}

# The 4-host-in-3-addresses picture from the gateway host: every TCP flow on port 80.
check_one_port() {
    local phase=$1 peers n ips
    peers=$(nsx gw ss -Htn state established "( sport = :80 )" | awk '{print $4}')
    n=$(echo "$peers" | grep -c .)
    ips=$(echo "$peers" | sed 's/:[0-9]*$//' | sort -u | tr '\n' ' ')
    if [ "$n" -eq 4 ] && [ "$ips" = "$LAN.11 $LAN.12 $LAN.2 " ]; then
        ok "$phase: 4 TCP flows from 3 client addresses ($ips) on the one port $GW_IP:80"
    else
        bad "$phase: on $GW_IP:80: $n flows from '$ips', want 4 from $LAN.11 $LAN.12 $LAN.2"
    fi
}

# The inner NAT's own view: which LAN port r gave each of c3, c4 (PROTO HOST -> port).
inner_port() { # inner_port PROTO HOST
    nsx r conntrack -L -p "$1" -s "${HOST_IP[$2]}" 2>/dev/null |
        awk '{ n = 0; for (i = 1; i <= NF; i++) if ($i ~ /^dport=/ && ++n == 2) { sub("dport=", "", $i); print $i } }' |
        head -n 1
}

# ---- phase gw ---------------------------------------------------------------------
GWD_PID=
# start_gwd PHASE EXTRA-ARGS...: gwd in the gateway namespace on port 80, store
# $WORK/PHASE.db, control socket $WORK/PHASE.sock. Returns 1 when it never answers.
start_gwd() {
    local phase=$1
    shift
    ip netns exec "$T-gw" "$GWD" -p 80 --tcp-backend "echo=$BACK_B:$BE_PORT" --udp-backend "echo-udp=$BACK_B:$BE_PORT" \
        --nat-ip "$BACK_GW" --nat-ports "$POOL_LO-$POOL_HI" "$@" \
        --db "$WORK/$phase.db" --control "$WORK/$phase.sock" >"$WORK/$phase-gwd.log" 2>&1 &
    GWD_PID=$!
    PIDS+=("$GWD_PID")
    if ! wait_for 15 "$GWCTL" --socket "$WORK/$phase.sock" show nat --json; then
        bad "$phase: gwd did not answer on its control socket"
        cat "$WORK/$phase-gwd.log"
        return 1
    fi
}

# stop_gwd PHASE: SIGTERM, and gwd must exit 0 within 30 s.
stop_gwd() {
    local phase=$1 rc=0 i
    kill -TERM "$GWD_PID"
    for ((i = 0; i < 300; i++)); do
        kill -0 "$GWD_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$GWD_PID" 2>/dev/null; then
        bad "$phase: gwd still running 30 s after SIGTERM, killing it"
        kill -KILL "$GWD_PID"
    fi
    wait "$GWD_PID" || rc=$?
    if [ $rc -eq 0 ]; then ok "$phase: gwd exited 0 on SIGTERM"; else
        bad "$phase: gwd exited $rc on SIGTERM"
        tail -n 40 "$WORK/$phase-gwd.log"
    fi
}

phase_gw() {
    log "phase gw: gwd on $GW_IP:80 (tcp+udp), backend $BACK_B:$BE_PORT, pool $BACK_GW:$POOL_LO-$POOL_HI"
    start_gwd gw || return
    run_probes gw 40000
    "$GWCTL" --socket "$WORK/gw.sock" show nat --json >"$WORK/gw-nat.json" 2>"$WORK/gwctl.err" ||
        bad "gw: gwctl show nat --json failed: $(cat "$WORK/gwctl.err")"
    "$GWCTL" --socket "$WORK/gw.sock" show nat >"$WORK/gw-nat.txt" 2>&1
    for h in c3 c4; do
        echo "$h tcp $(inner_port tcp $h) udp $(inner_port udp $h)" >>"$WORK/inner.txt"
    done
    check_one_port gw
    check_backend_view gw
    check_nat_table
    stop_probes
    stop_gwd gw
    check_store
}

# Every flow the clients saw is one row of show nat: same client (as the gateway saw it),
# the nat port the backend saw, the gateway's address, the one backend.
check_nat_table() {
    local f=$WORK/gw-nat.json h proto seen port cip cport row n
    n=$(jq '.sessions | length' "$f" 2>/dev/null)
    if [ "$(jq '.total' "$f" 2>/dev/null)" = 8 ] && [ "$n" = 8 ]; then
        ok "gw: show nat has 8 sessions (4 hosts x tcp+udp)"
    else
        bad "gw: show nat total=$(jq '.total' "$f" 2>/dev/null) sessions=$n, want 8"
    fi
    for h in "${HOSTS[@]}"; do
        for proto in tcp udp; do
            seen=$(probe gw "$h" "$proto" seen)
            port=${seen##*:}
            row=$(jq -c --arg p "$proto" --argjson np "${port:-0}" \
                '[.sessions[] | select(.proto == $p and .nat_port == $np)]' "$f" 2>/dev/null)
            if [ "$(echo "$row" | jq length 2>/dev/null)" != 1 ]; then
                bad "gw: $h $proto: no single show nat row with nat_port $port: $row"
                continue
            fi
            cip=$(echo "$row" | jq -r '.[0].client_ip')
            cport=$(echo "$row" | jq -r '.[0].client_port')
            local want_port=40000
            [ "$h" = c3 ] || [ "$h" = c4 ] && want_port=$(awk -v h="$h" -v p="$proto" \
                '$1 == h { print (p == "tcp") ? $3 : $5 }' "$WORK/inner.txt")
            if [ "$cip" = "${SEEN_AS[$h]}" ] && [ "$cport" = "$want_port" ] &&
                [ "$(echo "$row" | jq -r '.[0].nat_ip')" = "$BACK_GW" ] &&
                [ "$(echo "$row" | jq -r '.[0].backend_ip')" = "$BACK_B" ] &&
                [ "$(echo "$row" | jq -r '.[0].backend_port')" = "$BE_PORT" ]; then
                ok "gw: $h $proto: $cip:$cport -> $BACK_GW:$port -> $BACK_B:$BE_PORT, as the backend saw it"
            else
                bad "gw: $h $proto: row $row, want client ${SEEN_AS[$h]}:$want_port nat $BACK_GW:$port"
            fi
        done
    done
    # c3 and c4 share one address: distinct client ports, distinct mappings.
    for proto in tcp udp; do
        local m3 m4
        m3=$(probe gw c3 "$proto" seen)
        m4=$(probe gw c4 "$proto" seen)
        if [ -n "$m3" ] && [ -n "$m4" ] && [ "$m3" != "$m4" ]; then
            ok "gw: c3 and c4 behind one address ($LAN.2) have distinct $proto mappings ($m3, $m4)"
        else
            bad "gw: c3 and c4 $proto mappings not distinct: '$m3' '$m4'"
        fi
    done
    # Same source port from different hosts, and per protocol one nat port per flow.
    for proto in tcp udp; do
        local ports
        ports=$(jq -r --arg p "$proto" '.sessions[] | select(.proto == $p) | .nat_port' "$f" 2>/dev/null | sort -u | wc -l)
        if [ "$ports" -eq 4 ]; then
            ok "gw: 4 distinct $proto nat ports for 4 client hosts"
        else
            bad "gw: $ports distinct $proto nat ports, want 4"
        fi
    done
}

# After a clean stop the store holds every flow with the same mapping.
check_store() {
    local n
    n=$("$GWCTL" --db "$WORK/gw.db" show nat --all --json 2>"$WORK/gwctl-db.err" | jq '.total' 2>/dev/null)
    if [ "$n" = 8 ]; then
        ok "gw: the store (gwctl --db show nat --all) holds the 8 flows after shutdown"
        "$GWCTL" --db "$WORK/gw.db" show nat --all >"$WORK/gw-store.txt" 2>&1
    else
        bad "gw: gwctl --db show nat total '$n', want 8: $(cat "$WORK/gwctl-db.err")"
    fi
}

# ---- phase block -------------------------------------------------------------------
# The carrier's way: port blocks of 64 per subscriber address, the block log. The
# subscribers are the three addresses gw sees (c3 and c4 share $LAN.2, so they share
# a block): three blocks, every flow's port inside its subscriber's block, and the
# store's log holds the blocks, not the flows.
phase_block() {
    log "phase block: gwd --nat-policy block --nat-log blocks, pool $BACK_GW:$POOL_LO-$POOL_HI"
    start_gwd block --nat-policy block --nat-log blocks || return
    run_probes block 42000
    "$GWCTL" --socket "$WORK/block.sock" show blocks --json >"$WORK/blocks.json" 2>"$WORK/gwctl.err" ||
        bad "block: gwctl show blocks --json failed: $(cat "$WORK/gwctl.err")"
    "$GWCTL" --socket "$WORK/block.sock" show blocks >"$WORK/blocks.txt" 2>&1
    local f=$WORK/blocks.json h proto seen port lo last sub n mid
    if [ "$(jq '.total' "$f" 2>/dev/null)" = 3 ] && [ "$(jq -r '.policy' "$f")" = block ]; then
        ok "block: show blocks lists 3 blocks, one per subscriber address"
    else
        bad "block: show blocks: $(cat "$f"), want 3 blocks"
    fi
    for sub in "$LAN.11:2" "$LAN.12:2" "$LAN.2:4"; do
        n=$(jq --arg c "${sub%:*}" '[.blocks[] | select(.client_ip == $c)] | if length == 1 then .[0].sessions else -1 end' "$f" 2>/dev/null)
        if [ "$n" = "${sub#*:}" ]; then
            ok "block: ${sub%:*} has one block and ${sub#*:} live sessions"
        else
            bad "block: ${sub%:*}: sessions '$n' in one block, want ${sub#*:}"
        fi
    done
    for h in "${HOSTS[@]}"; do
        for proto in tcp udp; do
            seen=$(probe block "$h" "$proto" seen)
            port=${seen##*:}
            lo=$(jq --arg c "${SEEN_AS[$h]}" '.blocks[] | select(.client_ip == $c) | .nat_port' "$f" 2>/dev/null)
            last=$(jq --arg c "${SEEN_AS[$h]}" '.blocks[] | select(.client_ip == $c) | .nat_port_last' "$f" 2>/dev/null)
            if [ -n "$lo" ] && [ "${port:-0}" -ge "$lo" ] && [ "${port:-0}" -le "$last" ] &&
                [ $(((lo - POOL_LO) % 64)) -eq 0 ] && [ $((last - lo)) -eq 63 ]; then
                ok "block: $h $proto: $seen in ${SEEN_AS[$h]}'s block $lo-$last"
            else
                bad "block: $h $proto: backend saw '$seen', ${SEEN_AS[$h]}'s block '$lo-$last'"
            fi
        done
    done
    mid=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)
    lo=$(jq --arg c "$LAN.11" '.blocks[] | select(.client_ip == $c) | .nat_port' "$f" 2>/dev/null)
    stop_probes
    stop_gwd block
    # The log: three blocks taken and given back, no per-flow row; the sessions are
    # still in nat_sessions; whois on a port of c1's block no flow used names c1.
    local rows
    rows=$("$GWCTL" --db "$WORK/block.db" log --json 2>/dev/null |
        jq -r '[.events[].event] | group_by(.) | map("\(.[0])=\(length)") | join(" ")' 2>/dev/null)
    if [ "$rows" = "block_alloc=3 block_free=3" ]; then
        ok "block: the log holds 3 block_alloc and 3 block_free rows, no flow rows"
    else
        bad "block: log rows '$rows', want block_alloc=3 block_free=3"
    fi
    n=$("$GWCTL" --db "$WORK/block.db" show nat --all --json 2>/dev/null | jq '.total' 2>/dev/null)
    [ "$n" = 8 ] && ok "block: the store still has the 8 sessions" ||
        bad "block: the store has '$n' sessions, want 8"
    if [ -n "$lo" ] && "$GWCTL" --db "$WORK/block.db" whois "$BACK_GW:$((lo + 63))" --at "$mid" \
        >"$WORK/whois.txt" 2>&1 && grep -q "of $LAN.11: taken" "$WORK/whois.txt"; then
        ok "block: whois $BACK_GW:$((lo + 63)) at $mid names $LAN.11's block"
    else
        bad "block: whois $BACK_GW:$((lo + 63)): $(cat "$WORK/whois.txt")"
    fi
}

# ---- phase kernel -----------------------------------------------------------------
phase_kernel() {
    log "phase kernel: nftables dnat $GW_IP:80 -> $BACK_B:$BE_PORT, masquerade to $BACK_GW:$POOL_LO-$POOL_HI"
    nsx gw sysctl -qw net.ipv4.ip_forward=1
    nsx gw nft -f - <<EOF || {
table ip gwnat {
    chain pre {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr $GW_IP tcp dport 80 dnat to $BACK_B:$BE_PORT
        ip daddr $GW_IP udp dport 80 dnat to $BACK_B:$BE_PORT
    }
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "eth1" meta l4proto { tcp, udp } masquerade to :$POOL_LO-$POOL_HI
    }
}
EOF
        bad "kernel: nft rules refused"
        return
    }
    nsx gw conntrack -F >/dev/null 2>&1
    run_probes kernel 41000
    nsx gw conntrack -L -o extended >"$WORK/conntrack.txt" 2>/dev/null
    nsx gw conntrack -L >"$WORK/conntrack-plain.txt" 2>/dev/null
    check_backend_view kernel
    local h proto seen line
    for h in "${HOSTS[@]}"; do
        for proto in tcp udp; do
            seen=$(probe kernel "$h" "$proto" seen)
            # original src=CLIENT ... reply ... dst=BACK_GW dport=NATPORT
            line=$(awk -v c="src=${SEEN_AS[$h]}" -v p="$proto" -v d="dport=${seen##*:}" \
                '$3 == p { n = 0; dp = ""; for (i = 1; i <= NF; i++) if ($i ~ /^dport=/ && ++n == 2) dp = $i;
                  if (index($0, c " ") && dp == d) print }' "$WORK/conntrack.txt")
            if [ -n "$line" ]; then
                ok "kernel: $h $proto: conntrack maps ${SEEN_AS[$h]} to $seen"
            else
                bad "kernel: $h $proto: no conntrack entry ${SEEN_AS[$h]} -> $seen"
            fi
        done
    done
    stop_probes
}

# ---- side by side -----------------------------------------------------------------
side_by_side() {
    echo
    echo "== the same client hosts through gw and through the kernel's NAT"
    printf '%-5s %-5s %-22s %-22s %-22s %-22s\n' HOST PROTO "GW: CLIENT AS SEEN" "GW: NAT" \
        "KERNEL: CLIENT AS SEEN" "KERNEL: NAT"
    local h proto gwc gwn kc kn
    for h in "${HOSTS[@]}"; do
        for proto in tcp udp; do
            gwn=$(probe gw "$h" "$proto" seen)
            kn=$(probe kernel "$h" "$proto" seen)
            gwc=$(jq -r --arg p "$proto" --argjson np "${gwn##*:}" \
                '.sessions[] | select(.proto == $p and .nat_port == $np) | "\(.client_ip):\(.client_port)"' \
                "$WORK/gw-nat.json" 2>/dev/null)
            kc=$(awk -v p="$proto" -v d="dport=${kn##*:}" \
                '$3 == p { n = 0; dp = ""; for (i = 1; i <= NF; i++) { if ($i ~ /^dport=/ && ++n == 2) dp = $i;
                  if ($i ~ /^src=/ && !s) s = substr($i, 5); if ($i ~ /^sport=/ && !sp) sp = substr($i, 7) }
                  if (dp == d) print s ":" sp; s = ""; sp = "" }' "$WORK/conntrack.txt")
            printf '%-5s %-5s %-22s %-22s %-22s %-22s\n' "$h" "$proto" "$gwc" "$gwn" "$kc" "$kn"
        done
    done
    echo
    echo "== gwctl show nat (gw phase, flows live)"
    cat "$WORK/gw-nat.txt"
    echo
    echo "== gwctl --db gw.db show nat --all (gw phase, from the store after gwd stopped)"
    cat "$WORK/gw-store.txt" 2>/dev/null
    echo
    echo "== gwctl show blocks (block phase: one block per client address)"
    cat "$WORK/blocks.txt" 2>/dev/null
    echo
    echo "== conntrack -L in the gateway namespace (kernel phase)"
    cat "$WORK/conntrack-plain.txt"
    echo
}

# Can this kernel (and sandbox) do it at all? A throwaway namespace says.
probe_ns=$T-probe
if ! ip netns add "$probe_ns" 2>"$WORK/probe.err"; then
    skip "cannot make a network namespace here: $(cat "$WORK/probe.err")"
fi
NSES+=("$probe_ns")
ip -n "$probe_ns" link add p0 type veth peer name p1 2>"$WORK/probe.err" ||
    skip "no veth support: $(cat "$WORK/probe.err")"
ip -n "$probe_ns" link add b0 type bridge 2>"$WORK/probe.err" ||
    skip "no bridge support: $(cat "$WORK/probe.err")"
ip netns exec "$probe_ns" nft add table ip gwprobe 2>"$WORK/probe.err" ||
    skip "no nftables in this kernel: $(cat "$WORK/probe.err")"
ip netns exec "$probe_ns" nft add chain ip gwprobe post \
    '{ type nat hook postrouting priority srcnat; }' 2>"$WORK/probe.err" ||
    skip "no nftables nat in this kernel: $(cat "$WORK/probe.err")"

log "building the network (namespaces $T-*)"
build_network || {
    bad "could not build the network"
    exit 1
}
start_backend || {
    bad "gwsim backend did not start in $T-b"
    exit 1
}
case $MODE in
gw) phase_gw ;;
block) phase_block ;;
kernel) phase_kernel ;;
both)
    phase_gw
    phase_block
    phase_kernel
    side_by_side
    ;;
*)
    echo "unknown mode $MODE" >&2
    exit 2
    ;;
esac
if [ $FAILS -eq 0 ]; then
    log "PASS"
    exit 0
fi
log "FAIL: $FAILS checks failed"
exit 1
