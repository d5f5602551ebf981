/*
 * gw_tcp.c - TCP flows: accept in batches, route, NAT mapping, an outbound
 * socket bound to nat_ip:nat_port (EADDRINUSE and EADDRNOTAVAIL move to
 * another pool port), non-blocking connect with a timeout and failover to the
 * next server, then the relay: bounded pending bytes per direction with
 * backpressure, FIN forwarded as shutdown(SHUT_WR), RST forwarded as RST.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gwd.h"

#define MAX_PORT_TRIES 16 /* bind/connect retries on other pool ports per attempt */
#define MAX_FAILOVER 8    /* servers tried per flow at most */

static void tcp_io_cb(struct gw_io *w, int revents);
static void tcp_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);

static const char *side_reason(int side, const char *what)
{
    if (strcmp(what, "rst") == 0)
        return side == GW_SIDE_CLIENT ? "client_rst" : "backend_rst";
    return side == GW_SIDE_CLIENT ? "client_fin" : "backend_fin";
}

/* ---- teardown ----------------------------------------------------------- */

static void close_fd(int fd, bool rst)
{
    if (fd < 0)
        return;
    if (rst) {
        struct linger lg = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    close(fd);
}

/* The socket of one side (-1 when none): kept in its watcher, not twice. */
static inline int side_fd(const struct gw_flow *flow, int side)
{
    return flow->u.tcp.io[side].fd;
}

/* Bytes wait to be written toward `side` (in the copy buffer or the pipe). */
static bool has_pending(const struct gw_flow *flow, int side)
{
    const struct gw_pipe *gp = flow->u.tcp.pipe[side];

    return flow->u.tcp.pend[side] || (gp && gp->len);
}

/* The TCP part of gw_flow_close. */
void gw_tcp_release(struct gw_flow *flow, bool rst)
{
    struct gw_ctx *ctx = flow->ctx;

    for (int i = 0; i < 2; i++) {
        gw_io_forget(&ctx->poll, &flow->u.tcp.io[i]);
        close_fd(side_fd(flow, i), rst);
        gw_io_set(&flow->u.tcp.io[i], -1, 0);
        free(flow->u.tcp.pend[i]);
        flow->u.tcp.pend[i] = NULL;
        if (flow->u.tcp.pipe[i]) {
            close(flow->u.tcp.pipe[i]->rd);
            close(flow->u.tcp.pipe[i]->wr);
            free(flow->u.tcp.pipe[i]);
            flow->u.tcp.pipe[i] = NULL;
        }
    }
    ev_timer_stop(ctx->loop, &flow->u.tcp.timer);
}

/*
 * One connect attempt failed: close its socket, its session and its server.
 * Only a connect that failed or timed out counts against the server
 * (connect_failures); no fd, no port or a bind error is gwd's own trouble.
 */
static void attempt_failed(struct gw_flow *flow, const char *reason)
{
    struct gw_ctx *ctx = flow->ctx;
    struct nat_session *s = flow->sess;

    gw_io_forget(&ctx->poll, &flow->u.tcp.io[GW_SIDE_BACKEND]);
    ev_timer_stop(ctx->loop, &flow->u.tcp.timer);
    close_fd(side_fd(flow, GW_SIDE_BACKEND), false);
    gw_io_set(&flow->u.tcp.io[GW_SIDE_BACKEND], -1, 0);
    flow->sess = NULL;
    if (s) {
        s->udata = NULL;
        nat_session_close(ctx->nat, s, gw_loop_ms(ctx->loop), reason);
    }
    if (flow->server) {
        if (strcmp(reason, "connect_failed") == 0 || strcmp(reason, "connect_timeout") == 0)
            flow->server->connect_failures++;
        gw_server_release(flow->server);
        flow->server = NULL;
    }
}

/* ---- connecting ---------------------------------------------------------- */

/* A flow refused for want of a mapping: counted by reason, logged (rate
 * limited). `what` says when it happened, or NULL at the open. */
static void log_refused(struct gw_flow *flow, enum nat_err err, uint64_t now, const char *what)
{
    struct gw_ctx *ctx = flow->ctx;
    char ip[NAT_ADDR_STRLEN];
    uint64_t held;

    if (what) /* libnat counts the refused opens itself */
        ctx->counters.refused_repick[err < NAT_ERR_COUNT ? err : NAT_ERR_INVAL]++;
    if (gw_log_allow(&ctx->rl.refused, now, &held))
        gw_log(GW_LOG_INFO, "tcp %s:%u refused: %s%s%s (%lu more refusals not logged)",
               nat_addr_format(&flow->client.addr, ip), flow->client.port, nat_err_name(err),
               what ? ", " : "", what ? what : "", (unsigned long)held);
}

/*
 * The flow's translated port cannot be used now (busy on the host, or its
 * 4-tuple still in TIME_WAIT): counts it in *counter and moves the session to
 * another port of the pool for GW_BUSY_PORT_MS. Returns true when it got one
 * (try again), false when none is left (the attempt failed as "refused").
 */
static bool repick_port(struct gw_flow *flow, uint64_t *counter, uint64_t now)
{
    (*counter)++;
    enum nat_err err = nat_session_repick(flow->ctx->nat, flow->sess, now, GW_BUSY_PORT_MS);
    if (err == NAT_OK)
        return true;
    log_refused(flow, err, now, "no free port after a busy one");
    attempt_failed(flow, "refused");
    return false;
}

static void established(struct gw_flow *flow);

/*
 * Opens the mapping toward srv and starts the connect. Returns 0 (under way,
 * or already complete: then the flow relays), -ENOSPC (no mapping: refused,
 * nothing left open), -EMFILE (out of fds), or another -errno (this server
 * failed; its session is closed).
 */
static int start_connect(struct gw_flow *flow, struct gw_server *srv, struct gw_backend *b)
{
    struct gw_ctx *ctx = flow->ctx;
    uint64_t now = gw_loop_ms(ctx->loop);
    struct nat_key key;
    struct nat_session *sess;
    enum nat_err err;
    int one = 1, fd = -1;
    bool connected = false;

    memset(&key, 0, sizeof(key));
    key.client = flow->client;
    gw_endpoint_from_sockaddr(&key.dst, (const struct sockaddr *)&srv->conf.addr.ss);
    key.proto = NAT_PROTO_TCP;
    err = nat_session_open(ctx->nat, &key, b->tag, now, &sess);
    if (err != NAT_OK) {
        log_refused(flow, err, now, NULL);
        return -ENOSPC;
    }
    sess->udata = flow;
    flow->sess = sess;
    flow->server = srv;
    flow->backend_tag = b->tag;
    flow->proxy_protocol = (uint8_t)b->conf.proxy_protocol;
    gw_server_acquire(srv);

    for (int tries = 0;; tries++) {
        struct gw_sockaddr ext;
        gw_sockaddr_from_endpoint(&ext, &sess->ext);
        if (ext.ss.ss_family != srv->conf.addr.ss.ss_family) {
            gw_log(GW_LOG_ERROR, "nat ip and server %s are of different families", srv->conf.name);
            attempt_failed(flow, "error");
            return -EAFNOSUPPORT;
        }
        fd = socket(ext.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            int e = errno;
            attempt_failed(flow, "error");
            return e == EMFILE || e == ENFILE ? -EMFILE : -e;
        }
        /* REUSEADDR: the port may still have TIME_WAIT sockets of earlier
         * flows. NODELAY here, not after the connect: the client socket has
         * it from the listener (accepted sockets inherit it). */
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (bind(fd, (const struct sockaddr *)&ext.ss, ext.len) < 0) {
            int e = errno;
            close(fd);
            if (e == EADDRINUSE && tries < MAX_PORT_TRIES) {
                if (repick_port(flow, &ctx->counters.bind_busy, now))
                    continue;
                return -ENOSPC;
            }
            uint64_t held;
            if (gw_log_allow(&ctx->rl.sockets, now, &held))
                gw_log(GW_LOG_WARN, "bind to nat port %u: %s (%lu more not logged)", sess->ext.port,
                       strerror(e), (unsigned long)held);
            attempt_failed(flow, "error");
            return -e;
        }
        connected =
            connect(fd, (const struct sockaddr *)&srv->conf.addr.ss, srv->conf.addr.len) == 0;
        if (!connected && errno != EINPROGRESS) {
            int e = errno;
            close(fd);
            if (e == EADDRNOTAVAIL && tries < MAX_PORT_TRIES) {
                /* That 4-tuple is still in TIME_WAIT from an earlier flow. */
                if (repick_port(flow, &ctx->counters.connect_addrnotavail, now))
                    continue;
                return -ENOSPC;
            }
            ctx->counters.connect_failed++;
            attempt_failed(flow, "connect_failed");
            return -e;
        }
        break;
    }
    /*
     * A connect to a local server is usually complete by the time connect()
     * returns EINPROGRESS (the handshake runs in the softirq of the call):
     * one getpeername() then spares the wait for writability, its getsockopt
     * and two epoll changes of the watcher (EPOLLOUT, then EPOLLIN). Still in
     * progress, or failed at once (ENOTCONN either way): wait for writability,
     * where SO_ERROR tells which.
     */
    if (!connected) {
        struct sockaddr_storage peer;
        socklen_t pl = sizeof(peer);
        connected = getpeername(fd, (struct sockaddr *)&peer, &pl) == 0;
    }
    if (connected) {
        gw_io_set(&flow->u.tcp.io[GW_SIDE_BACKEND], fd, 0);
        established(flow);
        return 0;
    }
    gw_io_set(&flow->u.tcp.io[GW_SIDE_BACKEND], fd, EV_WRITE);
    gw_io_start(&ctx->poll, &flow->u.tcp.io[GW_SIDE_BACKEND]);
    ev_timer_set(&flow->u.tcp.timer, b->conf.connect_timeout_ms / 1000.0, 0.);
    ev_timer_start(ctx->loop, &flow->u.tcp.timer);
    return 0;
}

/*
 * Tries servers of b that this flow has not tried yet (flow->tried) until a
 * connect is under way. Returns 0, or -1 when the flow was closed (no server
 * left, no mapping, all failed).
 */
static int try_servers(struct gw_flow *flow, struct gw_backend *b, const char *last_reason)
{
    struct gw_ctx *ctx = flow->ctx;

    while (b && flow->attempts < MAX_FAILOVER) {
        uint32_t bit = 0;
        struct gw_server *s = gw_backend_pick(b, &flow->client.addr, flow->tried, &bit);
        if (!s)
            break; /* none up, or all tried */
        flow->tried |= bit;
        flow->tried_gen = ctx->backends_gen;
        if (flow->attempts++ > 0)
            ctx->counters.failovers++;
        int rc = start_connect(flow, s, b);
        if (rc == 0)
            return 0;
        if (rc == -ENOSPC) {
            gw_flow_close(flow, "refused");
            return -1;
        }
        if (rc == -EMFILE) {
            gw_listen_pause(ctx);
            gw_flow_close(flow, "error");
            return -1;
        }
        last_reason = "connect_failed";
    }
    if (!last_reason) {
        char ip[NAT_ADDR_STRLEN];
        uint64_t held;
        ctx->counters.refused_no_server++;
        if (gw_log_allow(&ctx->rl.refused, gw_loop_ms(ctx->loop), &held))
            gw_log(GW_LOG_INFO,
                   "tcp %s:%u refused: no server up in backend %s (%lu more "
                   "refusals not logged)",
                   nat_addr_format(&flow->client.addr, ip), flow->client.port, b ? b->name : "-",
                   (unsigned long)held);
        last_reason = "refused";
    }
    gw_flow_close(flow, last_reason);
    return -1;
}

/*
 * Fills the PROXY v2 header from byte 13 on: family/transport `fam`, the
 * length, source then destination address (alen bytes each), source then
 * destination port (network order). Returns the header's whole length.
 */
static size_t proxy_v2_addresses(char *buf, uint8_t fam, const void *src, const void *dst,
                                 size_t alen, uint16_t sport, uint16_t dport)
{
    size_t len = 2 * alen + 4;

    buf[13] = (char)fam;
    buf[14] = 0;
    buf[15] = (char)len;
    memcpy(buf + 16, src, alen);
    memcpy(buf + 16 + alen, dst, alen);
    memcpy(buf + 16 + 2 * alen, &sport, 2);
    memcpy(buf + 18 + 2 * alen, &dport, 2);
    return 16 + len;
}

/* Appends the PROXY protocol header (v1 or v2) as the first bytes toward the backend. */
static void proxy_header(struct gw_flow *flow, int version)
{
    struct sockaddr_storage local;
    socklen_t ll = sizeof(local);
    struct gw_sockaddr client;
    char buf[232];
    size_t n = 0;

    if (getsockname(side_fd(flow, GW_SIDE_CLIENT), (struct sockaddr *)&local, &ll) < 0)
        return;
    gw_sockaddr_from_endpoint(&client, &flow->client);
    bool v4 = client.ss.ss_family == AF_INET && local.ss_family == AF_INET;
    bool v6 = client.ss.ss_family == AF_INET6 && local.ss_family == AF_INET6;
    const struct sockaddr_in *c4 = (const struct sockaddr_in *)&client.ss;
    const struct sockaddr_in *l4 = (const struct sockaddr_in *)&local;
    const struct sockaddr_in6 *c6 = (const struct sockaddr_in6 *)&client.ss;
    const struct sockaddr_in6 *l6 = (const struct sockaddr_in6 *)&local;

    if (version == 1) {
        char cs[INET6_ADDRSTRLEN], ls[INET6_ADDRSTRLEN];
        if (v4 || v6) {
            inet_ntop(client.ss.ss_family,
                      v4 ? (const void *)&c4->sin_addr : (const void *)&c6->sin6_addr, cs,
                      sizeof(cs));
            inet_ntop(local.ss_family,
                      v4 ? (const void *)&l4->sin_addr : (const void *)&l6->sin6_addr, ls,
                      sizeof(ls));
            n = (size_t)snprintf(buf, sizeof(buf), "PROXY %s %s %s %u %u\r\n", v4 ? "TCP4" : "TCP6",
                                 cs, ls, ntohs(v4 ? c4->sin_port : c6->sin6_port),
                                 ntohs(v4 ? l4->sin_port : l6->sin6_port));
        } else {
            n = (size_t)snprintf(buf, sizeof(buf), "PROXY UNKNOWN\r\n");
        }
    } else {
        static const char sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                     0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
        memcpy(buf, sig, 12);
        buf[12] = 0x21; /* version 2, PROXY */
        if (v4) {
            n = proxy_v2_addresses(buf, 0x11 /* TCP over IPv4 */, &c4->sin_addr, &l4->sin_addr,
                                   4, c4->sin_port, l4->sin_port);
        } else if (v6) {
            n = proxy_v2_addresses(buf, 0x21 /* TCP over IPv6 */, &c6->sin6_addr,
                                   &l6->sin6_addr, 16, c6->sin6_port, l6->sin6_port);
        } else {
            buf[12] = 0x20; /* LOCAL */
            buf[13] = 0;
            buf[14] = 0;
            buf[15] = 0;
            n = 16;
        }
    }
    struct gw_buf *pb = malloc(sizeof(*pb) + n);
    if (!pb)
        return;
    pb->off = 0;
    pb->len = pb->cap = n;
    memcpy(pb->data, buf, n);
    flow->u.tcp.pend[GW_SIDE_BACKEND] = pb;
}

static void update_watchers(struct gw_flow *flow);

/*
 * The connect to the server completed: relay from now on. The client's
 * first bytes are read when its socket is reported readable, not at once: a
 * speculative recv here found nothing in ~40% of connections of the
 * connection-rate benchmark and cost more CPU than the readiness report it
 * spares (bench/RESULTS.md, "TCP: fewer system calls per new connection").
 */
static void established(struct gw_flow *flow)
{
    struct gw_ctx *ctx = flow->ctx;

    ev_timer_stop(ctx->loop, &flow->u.tcp.timer);
    flow->state = GW_FLOW_RELAY;
    nat_session_set_state(ctx->nat, flow->sess, NAT_STATE_ESTABLISHED, gw_loop_ms(ctx->loop));
    if (flow->proxy_protocol)
        proxy_header(flow, flow->proxy_protocol);
    gw_io_stop(&ctx->poll, &flow->u.tcp.io[GW_SIDE_BACKEND]);
    flow->u.tcp.io[GW_SIDE_BACKEND].events = 0;
    update_watchers(flow);
}

/* Connect finished (writable) or failed: relay, or fail over. */
static void connect_done(struct gw_flow *flow, bool timed_out)
{
    struct gw_ctx *ctx = flow->ctx;
    int err = 0;
    socklen_t el = sizeof(err);

    if (!timed_out &&
        getsockopt(side_fd(flow, GW_SIDE_BACKEND), SOL_SOCKET, SO_ERROR, &err, &el) < 0)
        err = errno;
    if (!timed_out && err == 0) {
        established(flow);
        return;
    }
    struct gw_server *failed = flow->server;
    struct gw_backend *b = failed ? failed->backend : NULL;
    if (!b) /* a reload retired the server: the flow's pool, by its name, now */
        b = gw_backend_find(ctx, gw_backend_name(ctx, flow->backend_tag));
    if (b && b->proto != NAT_PROTO_TCP)
        b = NULL;
    /* A reload since the flow's tries: their positions are of the old pool;
     * only the one that just failed is known in the new one. */
    if (flow->tried_gen != ctx->backends_gen) {
        flow->tried = gw_server_bit(b, failed);
        flow->tried_gen = ctx->backends_gen;
    }
    const char *reason = timed_out ? "connect_timeout" : "connect_failed";
    if (timed_out)
        ctx->counters.connect_timeout++;
    else
        ctx->counters.connect_failed++;
    uint64_t held;
    if (gw_log_allow(&ctx->rl.sockets, gw_loop_ms(ctx->loop), &held))
        gw_log(GW_LOG_INFO, "backend %s server %s: %s (%lu more connect failures not logged)",
               b ? b->name : "-", failed ? failed->conf.name : "-",
               timed_out ? "connect timed out" : strerror(err), (unsigned long)held);
    attempt_failed(flow, reason); /* failed may be freed now (a retired server) */
    try_servers(flow, b, reason);
}

static void tcp_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct gw_flow *flow = w->data;

    (void)loop;
    (void)revents;
    if (flow->state == GW_FLOW_CONNECTING)
        connect_done(flow, true);
}

/* ---- relaying ------------------------------------------------------------ */

/* The side that sent the first FIN. */
static int first_fin_side(const struct gw_flow *flow)
{
    return (flow->flags & GW_FLOW_F_FIRST_FIN_BACKEND) ? GW_SIDE_BACKEND : GW_SIDE_CLIENT;
}

/*
 * Sets each side's watcher to what the flow waits for. A side that sent its
 * FIN is not read any more, but the watcher of the first FIN's side stays as
 * it is until its next readiness report (GW_FLOW_F_EOF_KEPT): gw_poll, as
 * libev, leaves a stopped fd in the epoll set, and when that fd (readable for
 * good at EOF) is reported again it removes it with an EPOLL_CTL_DEL. Short
 * flows often end (the other side's FIN) before that report: then no
 * epoll_ctl at all.
 */
static void update_watchers(struct gw_flow *flow)
{
    struct gw_poll *poll = &flow->ctx->poll;

    for (int i = 0; i < 2; i++) {
        int other = 1 - i;
        int want = 0;
        uint8_t eof = i == GW_SIDE_CLIENT ? GW_FLOW_F_EOF_CLIENT : GW_FLOW_F_EOF_BACKEND;
        if (!(flow->flags & eof) && !has_pending(flow, other))
            want |= EV_READ;
        else if ((flow->flags & eof) && (flow->flags & GW_FLOW_F_EOF_KEPT) &&
                 i == first_fin_side(flow) && gw_io_active(&flow->u.tcp.io[i]))
            want |= flow->u.tcp.io[i].events & EV_READ;
        if (has_pending(flow, i))
            want |= EV_WRITE;
        struct gw_io *w = &flow->u.tcp.io[i];
        if (gw_io_active(w) && w->events == want)
            continue;
        gw_io_stop(poll, w);
        if (want) {
            gw_io_set(w, w->fd, want);
            gw_io_start(poll, w);
        }
    }
}

static void account(struct gw_flow *flow, int from, size_t n)
{
    struct gw_ctx *ctx = flow->ctx;

    if (from == GW_SIDE_CLIENT)
        ctx->counters.bytes_in += n;
    else
        ctx->counters.bytes_out += n;
    if (flow->sess)
        nat_session_touch(ctx->nat, flow->sess, gw_loop_ms(ctx->loop),
                          from == GW_SIDE_CLIENT ? n : 0, from == GW_SIDE_CLIENT ? 0 : n);
}

/* FIN forwarded toward `side` once its pending bytes are out. */
static void forward_fin(struct gw_flow *flow, int side)
{
    uint8_t shut = side == GW_SIDE_CLIENT ? GW_FLOW_F_SHUT_CLIENT : GW_FLOW_F_SHUT_BACKEND;

    if (flow->flags & shut)
        return;
    flow->flags |= shut;
    /* Both sides have sent their FIN and nothing waits: the flow closes right
     * after this (relay_event), and close() sends the FIN by itself (the
     * receive queues are empty, so it is no reset). */
    if ((flow->flags & GW_FLOW_F_EOF_CLIENT) && (flow->flags & GW_FLOW_F_EOF_BACKEND) &&
        !has_pending(flow, 0) && !has_pending(flow, 1))
        return;
    shutdown(side_fd(flow, side), SHUT_WR);
}

/* A write toward `to` failed for good: the peer is gone. Returns -1 (closed). */
static int write_failed(struct gw_flow *flow, int to, int e)
{
    if (e == EPIPE || e == ECONNRESET)
        gw_flow_close(flow, side_reason(to, "rst"));
    else
        gw_flow_close(flow, "error");
    return -1;
}

/* A read from `from` failed. Returns -1 (closed) or 0 (try again later). */
static int read_failed(struct gw_flow *flow, int from, int e)
{
    if (e == EAGAIN || e == EINTR)
        return 0;
    gw_flow_close(flow, e == ECONNRESET ? side_reason(from, "rst") : "error");
    return -1;
}

/* Writes what the pipe toward `side` holds. Returns 0, or -1 when closed. */
static int flush_pipe(struct gw_flow *flow, int side)
{
    struct gw_pipe *gp = flow->u.tcp.pipe[side];

    while (gp->len) {
        ssize_t w = splice(gp->rd, NULL, side_fd(flow, side), NULL, gp->len,
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return 0;
            return write_failed(flow, side, errno);
        }
        if (w == 0)
            return 0;
        gp->len -= (size_t)w;
    }
    return 0;
}

/* Writes pending bytes toward `side`, then the FIN when it is due. Returns
 * 0, or -1 when the flow closed. */
static int flush_pending(struct gw_flow *flow, int side)
{
    struct gw_buf *pb = flow->u.tcp.pend[side];
    uint8_t eof_other = side == GW_SIDE_CLIENT ? GW_FLOW_F_EOF_BACKEND : GW_FLOW_F_EOF_CLIENT;

    while (pb && pb->off < pb->len) {
        ssize_t w = send(side_fd(flow, side), pb->data + pb->off, pb->len - pb->off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return 0;
            return write_failed(flow, side, errno);
        }
        pb->off += (size_t)w;
    }
    if (pb) {
        free(pb);
        flow->u.tcp.pend[side] = NULL;
    }
    if (flow->u.tcp.pipe[side] && flush_pipe(flow, side) < 0)
        return -1;
    if (!has_pending(flow, side) && (flow->flags & eof_other))
        forward_fin(flow, side);
    return 0;
}

/* `from` sent its FIN: remember it, and pass it on once the bytes before it are out. */
static void on_eof(struct gw_flow *flow, int from)
{
    struct gw_ctx *ctx = flow->ctx;
    int to = 1 - from;
    uint8_t eof = from == GW_SIDE_CLIENT ? GW_FLOW_F_EOF_CLIENT : GW_FLOW_F_EOF_BACKEND;

    if (!(flow->flags & (GW_FLOW_F_EOF_CLIENT | GW_FLOW_F_EOF_BACKEND))) {
        if (from == GW_SIDE_BACKEND)
            flow->flags |= GW_FLOW_F_FIRST_FIN_BACKEND;
        flow->flags |= GW_FLOW_F_EOF_KEPT;
        flow->state = GW_FLOW_HALF_CLOSED;
        if (flow->sess)
            nat_session_set_state(ctx->nat, flow->sess, NAT_STATE_CLOSING, gw_loop_ms(ctx->loop));
    }
    flow->flags |= eof;
    if (!has_pending(flow, to))
        forward_fin(flow, to);
}

/*
 * A direction that has moved limits.splice_after bytes is a bulk transfer:
 * from now on it goes socket -> pipe -> socket with splice(2), no copy
 * through user space. Costs two descriptors for the flow's life; when none
 * can be had the flow stays with copying.
 */
static void maybe_splice(struct gw_flow *flow, int to)
{
    uint64_t after = flow->ctx->cfg->splice_after;
    int p[2];

    if (!after || flow->u.tcp.pipe[to] || (flow->flags & GW_FLOW_F_NO_SPLICE) || !flow->sess)
        return;
    if ((to == GW_SIDE_BACKEND ? flow->sess->bytes_in : flow->sess->bytes_out) < after)
        return;
    struct gw_pipe *gp = malloc(sizeof(*gp));
    if (!gp || pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0) {
        free(gp);
        flow->flags |= GW_FLOW_F_NO_SPLICE;
        return;
    }
    fcntl(p[1], F_SETPIPE_SZ, GW_PIPE_SIZE); /* best effort */
    int cap = fcntl(p[1], F_GETPIPE_SZ);
    gp->rd = p[0];
    gp->wr = p[1];
    gp->len = 0;
    gp->cap = cap > 0 ? (size_t)cap : 65536;
    flow->u.tcp.pipe[to] = gp;
    flow->ctx->counters.spliced++;
}

/* Bulk: moves bytes from `from` into the pipe and on to the other side. */
static int relay_splice(struct gw_flow *flow, int from)
{
    int to = 1 - from;
    struct gw_pipe *gp = flow->u.tcp.pipe[to];
    ssize_t n = splice(side_fd(flow, from), NULL, gp->wr, NULL, gp->cap - gp->len,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);

    if (n < 0 && (errno == EINVAL || errno == ENOSYS) && gp->len == 0) {
        /* This socket pair cannot splice: copy instead, for good. */
        close(gp->rd);
        close(gp->wr);
        free(gp);
        flow->u.tcp.pipe[to] = NULL;
        flow->flags |= GW_FLOW_F_NO_SPLICE;
        return 0;
    }
    if (n < 0)
        return read_failed(flow, from, errno);
    if (n == 0) {
        on_eof(flow, from);
        return 0;
    }
    gp->len += (size_t)n;
    account(flow, from, (size_t)n);
    return flush_pipe(flow, to);
}

/* Reads from `from` and writes to the other side. Returns 0, or -1 when closed. */
static int relay_read(struct gw_flow *flow, int from)
{
    struct gw_ctx *ctx = flow->ctx;
    int to = 1 - from;

    maybe_splice(flow, to);
    if (flow->u.tcp.pipe[to])
        return relay_splice(flow, from);
    size_t cap =
        ctx->cfg->buffer_size < ctx->scratch_size ? ctx->cfg->buffer_size : ctx->scratch_size;
    ssize_t n = recv(side_fd(flow, from), ctx->scratch, cap, 0);
    if (n < 0)
        return read_failed(flow, from, errno);
    if (n == 0) {
        on_eof(flow, from);
        return 0;
    }
    account(flow, from, (size_t)n);
    ssize_t w = send(side_fd(flow, to), ctx->scratch, (size_t)n, MSG_NOSIGNAL);
    if (w < 0) {
        if (errno != EAGAIN && errno != EINTR)
            return write_failed(flow, to, errno);
        w = 0;
    }
    if (w < n) {
        size_t rest = (size_t)(n - w);
        struct gw_buf *pb = malloc(sizeof(*pb) + rest);
        if (!pb) {
            gw_flow_close(flow, "error");
            return -1;
        }
        pb->off = 0;
        pb->len = pb->cap = rest;
        memcpy(pb->data, ctx->scratch + w, rest);
        flow->u.tcp.pend[to] = pb;
    }
    return 0;
}

static void relay_event(struct gw_flow *flow, int side, int revents)
{
    if ((revents & EV_WRITE) && has_pending(flow, side) && flush_pending(flow, side) < 0)
        return;
    uint8_t eof = side == GW_SIDE_CLIENT ? GW_FLOW_F_EOF_CLIENT : GW_FLOW_F_EOF_BACKEND;
    if ((revents & EV_READ) && (flow->flags & eof))
        flow->flags &= (uint8_t)~GW_FLOW_F_EOF_KEPT; /* reported again: stop it now */
    if ((revents & EV_READ) && !(flow->flags & eof) && !has_pending(flow, 1 - side) &&
        relay_read(flow, side) < 0)
        return;
    if ((flow->flags & GW_FLOW_F_EOF_CLIENT) && (flow->flags & GW_FLOW_F_EOF_BACKEND) &&
        !has_pending(flow, 0) && !has_pending(flow, 1)) {
        gw_flow_close(flow,
                      (flow->flags & GW_FLOW_F_FIRST_FIN_BACKEND) ? "backend_fin" : "client_fin");
        return;
    }
    update_watchers(flow);
}

static void tcp_io_cb(struct gw_io *w, int revents)
{
    struct gw_flow *flow = w->data;
    int side = w == &flow->u.tcp.io[GW_SIDE_CLIENT] ? GW_SIDE_CLIENT : GW_SIDE_BACKEND;

    if (revents & EV_ERROR) { /* its socket could not be watched (gw_poll.h) */
        gw_flow_close(flow, "error");
        return;
    }
    if (flow->state == GW_FLOW_CONNECTING) {
        if (side == GW_SIDE_BACKEND)
            connect_done(flow, false);
        return;
    }
    relay_event(flow, side, revents);
}

/* ---- accepting ------------------------------------------------------------ */

static void flow_start(struct gw_listener *l, int fd, const struct sockaddr *sa)
{
    struct gw_ctx *ctx = l->ctx;
    struct gw_flow *flow;

    if (ctx->cfg->max_flows && gw_flows_live(ctx) >= ctx->cfg->max_flows) {
        ctx->counters.refused_max_flows++;
        close(fd);
        return;
    }
    flow = calloc(1, sizeof(*flow));
    if (!flow) {
        close(fd);
        return;
    }
    flow->ctx = ctx;
    flow->proto = NAT_PROTO_TCP;
    flow->state = GW_FLOW_CONNECTING;
    gw_endpoint_from_sockaddr(&flow->client, sa);
    for (int i = 0; i < 2; i++) {
        gw_io_init(&flow->u.tcp.io[i], tcp_io_cb, i == GW_SIDE_CLIENT ? fd : -1, 0);
        flow->u.tcp.io[i].data = flow;
    }
    ev_timer_init(&flow->u.tcp.timer, tcp_timer_cb, 0., 0.);
    flow->u.tcp.timer.data = flow;
    LIST_INSERT_HEAD(&ctx->flows, flow, link);
    ctx->counters.tcp_live++;

    struct gw_route_input in = {NAT_PROTO_TCP, &flow->client};
    struct gw_backend *b = gw_route_pick(ctx, &in);
    if (!b) {
        ctx->counters.refused_no_route++;
        gw_flow_close(flow, "refused");
        return;
    }
    try_servers(flow, b, NULL);
}

/* Accepts up to GW_ACCEPT_BATCH connections on l. */
void gw_tcp_accept(struct gw_listener *l)
{
    struct gw_ctx *ctx = l->ctx;

    for (int i = 0; i < GW_ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(l->tcp_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            switch (errno) {
            case EAGAIN:
                return;
            case EINTR:
            case ECONNABORTED:
            case EPROTO:
                continue;
            case EMFILE:
            case ENFILE:
            case ENOBUFS:
            case ENOMEM:
                gw_listen_pause(ctx);
                return;
            default: {
                uint64_t held;
                ctx->counters.accept_errors++;
                if (gw_log_allow(&ctx->rl.accept, gw_loop_ms(ctx->loop), &held))
                    gw_log(GW_LOG_WARN, "accept: %s", strerror(errno));
                return;
            }
            }
        }
        ctx->counters.tcp_accepted++;
        flow_start(l, fd, (const struct sockaddr *)&ss);
        if (ctx->accept_paused)
            return;
    }
}
