# gw in one image: gwd (the gateway), gwctl (its CLI) and gwsim (backends, clients).
#
#   docker build -t gw .
#   docker run --rm gw gwd --help
#
# Two stages: the builder has the compiler and the -dev packages; the runtime image
# carries only the three binaries and the shared libraries they load. gwd runs as the
# unprivileged user `gw` and binds port 80 through a file capability
# (cap_net_bind_service), not by running as root. See docs/docker.md.

FROM debian:bookworm-slim AS builder
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential cmake pkg-config libev-dev libjansson-dev libsqlite3-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGW_WERROR=ON \
        -DGW_TESTS=OFF -DGW_BENCH=OFF \
    && cmake --build /build -j "$(nproc)" --target gwd gwctl gwsim \
    && mkdir -p /out \
    && for b in gwd gwctl gwsim; do \
           f=$(find /build -type f -name "$b" -perm -u+x | head -n 1); \
           [ -n "$f" ] || { echo "no $b built" >&2; exit 1; }; \
           install -m 0755 -s "$f" /out/"$b"; \
       done

FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libev4 libjansson4 libsqlite3-0 libcap2-bin sqlite3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system gw \
    && useradd --system --gid gw --home-dir /var/lib/gw --shell /usr/sbin/nologin gw \
    && install -d -o gw -g gw -m 0755 /var/lib/gw /run/gw
COPY --from=builder /out/ /usr/local/bin/
# Port 80 without root: the capability sits on the file, so it works for user gw.
RUN setcap cap_net_bind_service=+ep /usr/local/bin/gwd \
    && getcap /usr/local/bin/gwd | grep -q cap_net_bind_service
# gwd and gwctl meet on this socket (GW_SOCKET is honoured by both).
ENV GW_SOCKET=/run/gw/gwd.sock
VOLUME ["/var/lib/gw", "/run/gw"]
USER gw
WORKDIR /var/lib/gw
EXPOSE 80/tcp 80/udp
CMD ["gwd", "--port", "80", "--db", "/var/lib/gw/gw.db"]
