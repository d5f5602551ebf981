#!/usr/bin/env bash
# docker-base.sh - make the base image debian:bookworm-slim locally, without a registry.
#
# usage: scripts/docker-base.sh [--rootfs-only]
#
# debootstrap --variant=minbase bookworm into a cache directory (reused across runs),
# then `docker import` that root as debian:bookworm-slim, so the project's Dockerfile
# builds unchanged where no image registry is reachable. Does nothing when the image
# already exists in the engine that `docker` talks to (DOCKER_HOST is honoured).
# --rootfs-only makes (or checks) the cached root and stops before docker.
#
# Environment:
#   GW_BASE_CACHE   cache directory (default /var/cache/gw); the root lives in
#                   $GW_BASE_CACHE/bookworm-rootfs, complete when .gw-complete exists
#   GW_DEBIAN_MIRROR  Debian mirror (default: the first `debian` URI apt uses here,
#                   else http://deb.debian.org/debian)
#   GW_BASE_IMAGE   image name to create (default debian:bookworm-slim)
#
# Needs root (debootstrap, chroot). A cold run takes 1-3 minutes depending on the mirror.
set -euo pipefail

cache=${GW_BASE_CACHE:-/var/cache/gw}
root=$cache/bookworm-rootfs
image=${GW_BASE_IMAGE:-debian:bookworm-slim}
rootfs_only=0
[ "${1:-}" = --rootfs-only ] && rootfs_only=1

log() { echo "docker-base: $*" >&2; }

# apt_mirror: print the Debian mirror apt is configured with here (deb822 or one-line).
apt_mirror() {
    local m=""
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
        m=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' \
            /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$m" ] && [ -r /etc/apt/sources.list ]; then
        m=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' \
            /etc/apt/sources.list)
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

# make_rootfs: debootstrap into a temporary directory, trim it like the -slim images,
# then rename it into place so a half-made root is never mistaken for a complete one.
make_rootfs() {
    local mirror tmp
    mirror=${GW_DEBIAN_MIRROR:-$(apt_mirror)}
    tmp=$cache/bookworm-rootfs.tmp.$$
    rm -rf "$tmp"
    log "debootstrap --variant=minbase bookworm from $mirror (takes a few minutes)"
    if ! debootstrap --variant=minbase bookworm "$tmp" "$mirror" >"$cache/debootstrap.log" 2>&1; then
        log "debootstrap failed, see $cache/debootstrap.log"
        tail -n 20 "$cache/debootstrap.log" >&2
        rm -rf "$tmp"
        return 1
    fi
    # What the official -slim images do: no apt caches or lists, none kept later either.
    cat >"$tmp/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    cat >"$tmp/etc/apt/apt.conf.d/docker-no-recommends" <<'EOF'
APT::Install-Recommends "false";
EOF
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" \
        >"$tmp/etc/apt/sources.list"
    rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/* \
        "$tmp"/var/log/*.log "$tmp"/var/log/apt/* "$tmp"/tmp/*
    : >"$tmp/etc/hostname"
    : >"$tmp/etc/resolv.conf"
    touch "$tmp/.gw-complete"
    rm -rf "$root"
    mv "$tmp" "$root"
}

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 # one maker at a time; a second caller waits and then finds the cache warm

if [ "$rootfs_only" = 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
    log "$image exists, nothing to do"
    exit 0
fi
if [ -e "$root/.gw-complete" ]; then
    log "using cached root $root"
else
    command -v debootstrap >/dev/null || {
        log "debootstrap is not installed (apt-get install debootstrap)"
        exit 1
    }
    make_rootfs
fi
[ "$rootfs_only" = 1 ] && exit 0

log "docker import $root as $image"
tar --numeric-owner -C "$root" --exclude=./.gw-complete -c . |
    docker import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' - "$image" >/dev/null
log "$image ready"
