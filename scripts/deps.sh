#!/usr/bin/env bash
# deps.sh - install the Debian packages gw needs, when they are missing.
# usage: scripts/deps.sh build|test|bench
#   build: compiler, CMake and the libraries (libev, jansson, sqlite3)
#   test:  build + Criterion, clang (libFuzzer), curl, iperf3, iproute2,
#          nftables, conntrack, docker.io, docker-compose, debootstrap, jq
#   bench: test + haproxy, nginx (stream module), wrk
set -euo pipefail

want=(build-essential cmake pkg-config libev-dev libjansson-dev libsqlite3-dev sqlite3)
case "${1:-build}" in
build) ;;
test | bench)
    want+=(libcriterion-dev clang curl iperf3 iproute2 nftables conntrack procps psmisc
        docker.io docker-compose debootstrap jq)
    [ "${1}" = bench ] && want+=(haproxy nginx-light libnginx-mod-stream wrk)
    ;;
*)
    echo "usage: $0 build|test|bench" >&2
    exit 2
    ;;
esac

missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "gw: missing Debian packages: ${missing[*]}" >&2
    echo "gw: run as root, or: sudo apt-get install ${missing[*]}" >&2
    exit 1
fi
echo "gw: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Package scripts must not start services (nginx, haproxy, docker) behind our back.
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d.gw
chmod +x /usr/sbin/policy-rc.d.gw
restore=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
    cp /usr/sbin/policy-rc.d.gw /usr/sbin/policy-rc.d
    restore=1
fi
trap '[ $restore = 1 ] && rm -f /usr/sbin/policy-rc.d; rm -f /usr/sbin/policy-rc.d.gw' EXIT
apt-get update -q || true
apt-get install -y -q --no-install-recommends "${missing[@]}"
