/*
 * gw_listen.c - the listening sockets: per bound address one TCP listener and
 * one UDP socket on the same port number (IPv4 and IPv6 apart, V6ONLY), their
 * libev watchers, and the pause/resume of accepting when descriptors run out.
 */
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gwd.h"

static void tcp_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    gw_tcp_accept(w->data);
}

static void udp_recv_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    gw_udp_receive(w->data);
}

static void set_port(struct gw_sockaddr *a, uint16_t port)
{
    if (a->ss.ss_family == AF_INET)
        ((struct sockaddr_in *)&a->ss)->sin_port = htons(port);
    else
        ((struct sockaddr_in6 *)&a->ss)->sin6_port = htons(port);
}

/* Opens one socket of `type` bound to a; returns the fd or -errno. */
static int open_bound(const struct gw_sockaddr *a, int type, int backlog)
{
    int one = 1;
    int fd = socket(a->ss.ss_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -errno;
    if (type == SOCK_STREAM) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        /* Accepted sockets inherit it: no setsockopt per connection. */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    if (a->ss.ss_family == AF_INET6) {
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        if (type == SOCK_DGRAM)
            setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof(one));
    } else if (type == SOCK_DGRAM) {
        setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one));
    }
    if (type == SOCK_DGRAM) {
        /* Every client's datagrams queue on this one socket: give it room
         * for bursts (FORCE passes net.core.rmem_max when root). */
        int size = GW_UDP_RCVBUF;
        if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) < 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    }
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0 ||
        (type == SOCK_STREAM && listen(fd, backlog) < 0)) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

static void close_all(struct gw_ctx *ctx)
{
    for (size_t i = 0; i < ctx->n_listeners; i++) {
        struct gw_listener *l = &ctx->listeners[i];
        ev_io_stop(ctx->loop, &l->tcp_io);
        ev_io_stop(ctx->loop, &l->udp_io);
        if (l->tcp_fd >= 0)
            close(l->tcp_fd);
        if (l->udp_fd >= 0)
            close(l->udp_fd);
        l->tcp_fd = l->udp_fd = -1;
    }
    ctx->n_listeners = 0;
}

/* One attempt at binding everything on `port` (0: learn it from the first bind). */
/* listen(2) backlog: the configured one, or the kernel's maximum. */
int gw_listen_backlog(int cfg_backlog)
{
    FILE *f;
    int v = 0;

    if (cfg_backlog > 0)
        return cfg_backlog;
    f = fopen("/proc/sys/net/core/somaxconn", "re");
    if (f) {
        if (fscanf(f, "%d", &v) != 1)
            v = 0;
        fclose(f);
    }
    return v > 0 ? v : GW_FALLBACK_BACKLOG;
}

static int open_all(struct gw_ctx *ctx, uint16_t port)
{
    const struct gw_config *cfg = ctx->cfg;
    int backlog = gw_listen_backlog(cfg->backlog);
    char buf[80];

    for (size_t i = 0; i < cfg->n_binds; i++) {
        struct gw_listener *l = &ctx->listeners[ctx->n_listeners];
        memset(l, 0, sizeof(*l));
        l->ctx = ctx;
        l->addr = cfg->binds[i];
        l->tcp_fd = l->udp_fd = -1;
        set_port(&l->addr, port);
        int fd = open_bound(&l->addr, SOCK_STREAM, backlog);
        if (fd < 0 && cfg->binds_default && l->addr.ss.ss_family == AF_INET6 &&
            (fd == -EAFNOSUPPORT || fd == -EADDRNOTAVAIL)) {
            gw_log(GW_LOG_WARN, "no IPv6 here (%s): serving IPv4 only", strerror(-fd));
            continue;
        }
        if (fd < 0) {
            if (fd != -EADDRINUSE || cfg->port != 0)
                gw_log(GW_LOG_ERROR, "tcp %s: %s", gw_sockaddr_format(&l->addr, buf, sizeof(buf)),
                       strerror(-fd));
            return fd;
        }
        l->tcp_fd = fd;
        ctx->n_listeners++;
        if (port == 0) {
            socklen_t sl = sizeof(l->addr.ss);
            getsockname(fd, (struct sockaddr *)&l->addr.ss, &sl);
            port = ntohs(((struct sockaddr_in *)&l->addr.ss)->sin_port);
        }
        fd = open_bound(&l->addr, SOCK_DGRAM, 0);
        if (fd < 0) {
            if (fd != -EADDRINUSE || cfg->port != 0)
                gw_log(GW_LOG_ERROR, "udp %s: %s", gw_sockaddr_format(&l->addr, buf, sizeof(buf)),
                       strerror(-fd));
            return fd;
        }
        l->udp_fd = fd;
        ev_io_init(&l->tcp_io, tcp_accept_cb, l->tcp_fd, EV_READ);
        l->tcp_io.data = l;
        ev_io_init(&l->udp_io, udp_recv_cb, l->udp_fd, EV_READ);
        l->udp_io.data = l;
    }
    if (ctx->n_listeners == 0) {
        gw_log(GW_LOG_ERROR, "no address to listen on");
        return -EADDRNOTAVAIL;
    }
    ctx->port = port;
    return 0;
}

/* Binds TCP + UDP on the same port for every address (see gwd.h). */
int gw_listen_open(struct gw_ctx *ctx)
{
    int rc = -EADDRINUSE;

    ctx->listeners = calloc(ctx->cfg->n_binds, sizeof(*ctx->listeners));
    if (!ctx->listeners)
        return -ENOMEM;
    /* With port 0 the UDP port (or another address) may be taken where the
     * kernel's TCP choice was free: try a few kernel choices. */
    for (int attempt = 0; attempt < (ctx->cfg->port == 0 ? 16 : 1); attempt++) {
        rc = open_all(ctx, ctx->cfg->port);
        if (rc == 0)
            break;
        close_all(ctx);
        if (rc != -EADDRINUSE)
            break;
    }
    if (rc) {
        if (rc == -EADDRINUSE && ctx->cfg->port == 0)
            gw_log(GW_LOG_ERROR, "no port free on both TCP and UDP");
        free(ctx->listeners);
        ctx->listeners = NULL;
        return rc;
    }
    for (size_t i = 0; i < ctx->n_listeners; i++) {
        char buf[80];
        gw_log(GW_LOG_INFO, "listening on tcp+udp %s",
               gw_sockaddr_format(&ctx->listeners[i].addr, buf, sizeof(buf)));
    }
    gw_log(GW_LOG_INFO, "listening on tcp+udp port %u (backlog %d)", ctx->port,
           gw_listen_backlog(ctx->cfg->backlog));
    return 0;
}

static void accept_resume_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct gw_ctx *ctx = w->data;

    (void)loop;
    (void)revents;
    ctx->accept_paused = false;
    if (ctx->stopping)
        return;
    gw_log(GW_LOG_DEBUG, "accepting again");
    for (size_t i = 0; i < ctx->n_listeners; i++)
        if (ctx->listeners[i].tcp_fd >= 0)
            ev_io_start(ctx->loop, &ctx->listeners[i].tcp_io);
}

/* Starts the watchers. */
void gw_listen_start(struct gw_ctx *ctx)
{
    ev_timer_init(&ctx->accept_timer, accept_resume_cb, 0.1, 0.);
    ctx->accept_timer.data = ctx;
    for (size_t i = 0; i < ctx->n_listeners; i++) {
        ev_io_start(ctx->loop, &ctx->listeners[i].tcp_io);
        ev_io_start(ctx->loop, &ctx->listeners[i].udp_io);
    }
}

/*
 * Out of descriptors (EMFILE/ENFILE): stop accepting for a while instead of
 * spinning on a listener that stays readable. Called by gw_tcp_accept.
 */
void gw_listen_pause(struct gw_ctx *ctx)
{
    if (ctx->accept_paused)
        return;
    uint64_t held;
    ctx->accept_paused = true;
    ctx->counters.accept_paused++;
    if (gw_log_allow(&ctx->rl.accept, gw_loop_ms(ctx->loop), &held))
        gw_log(GW_LOG_WARN,
               "out of file descriptors: accepting paused for 100 ms (%lu live "
               "flows, %lu more pauses not logged)",
               (unsigned long)gw_flows_live(ctx), (unsigned long)held);
    for (size_t i = 0; i < ctx->n_listeners; i++)
        ev_io_stop(ctx->loop, &ctx->listeners[i].tcp_io);
    ev_timer_set(&ctx->accept_timer, 0.1, 0.);
    ev_timer_start(ctx->loop, &ctx->accept_timer);
}

/* Closes the TCP listeners (drain: no new TCP flow). */
void gw_listen_stop_tcp(struct gw_ctx *ctx)
{
    ev_timer_stop(ctx->loop, &ctx->accept_timer);
    for (size_t i = 0; i < ctx->n_listeners; i++) {
        struct gw_listener *l = &ctx->listeners[i];
        ev_io_stop(ctx->loop, &l->tcp_io);
        if (l->tcp_fd >= 0)
            close(l->tcp_fd);
        l->tcp_fd = -1;
    }
}

/* Closes everything. */
void gw_listen_close(struct gw_ctx *ctx)
{
    if (!ctx->listeners)
        return;
    ev_timer_stop(ctx->loop, &ctx->accept_timer);
    close_all(ctx);
    free(ctx->listeners);
    ctx->listeners = NULL;
}

/* The bound port. */
uint16_t gw_listen_port(const struct gw_ctx *ctx)
{
    return ctx->port;
}
