/*
 * gw_udp.c - UDP flows: datagrams read in batches (recvmmsg) on the listener;
 * the first datagram of a client endpoint routes it, opens its mapping and an
 * upstream socket bound to nat_ip:nat_port and connected to the server;
 * replies are read in batches and sent back from the listener socket and the
 * local address the client wrote to (IP_PKTINFO / IPV6_PKTINFO), so a
 * multi-homed host answers from the right address.
 *
 * Sending: the datagrams of one batch are grouped by flow (each direction),
 * and a run of equal-sized datagrams of one flow leaves in one UDP GSO send
 * (UDP_SEGMENT): the kernel builds and routes one packet and cuts it into
 * the datagrams at the last moment, which on loopback saves most of the
 * per-datagram path. The rest go by sendmmsg. A kernel without UDP GSO
 * (checked once: getsockopt UDP_SEGMENT) never uses it; a flow whose GSO send
 * is refused (segments above the route's MTU, a device without checksum
 * offload) stops using it.
 *
 * Failover: when the server of a mapping is gone (ECONNREFUSED on the
 * connected upstream socket: ICMP port unreachable; or the health check
 * marks it down), the client's next datagram moves the flow to another
 * server of its route's pool: a new session (same client, new destination)
 * is opened before the old one is closed with "backend_down", so with
 * endpoint-independent mapping the client keeps its external port. Counted
 * in `failovers`. With no other server, a refused flow stays (the server may
 * be back), a down one is closed (backend_down).
 *
 * Mappings end on libnat's expiry (gw_nat.c closes the flow).
 */
#include <errno.h>
#include <netinet/udp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gwd.h"

#define UDP_MAX_DATAGRAM 65536
#define UDP_ROUNDS 4 /* recvmmsg batches per wakeup at most */
#define UDP_PORT_TRIES 16
#define UDP_GSO_MAX_SEGS 64      /* the kernel's UDP_MAX_SEGMENTS */
#define UDP_GSO_MAX_BYTES 65000  /* payload of one GSO send (under 64 KiB with headers) */

#define GW_UDP_F_REFUSED 0x01 /* the upstream socket got ECONNREFUSED: fail over */
#define GW_UDP_F_NO_GSO 0x02  /* a GSO send of this flow was refused: plain sends */

/* Control data of one send: the reply's source address and the GSO size. */
union udp_ctrl {
    char buf[CMSG_SPACE(sizeof(struct in6_pktinfo)) + CMSG_SPACE(sizeof(uint16_t))];
    struct cmsghdr align;
};

struct gw_udp_batch {
    struct mmsghdr msgs[GW_UDP_BATCH];
    struct iovec iov[GW_UDP_BATCH];
    struct sockaddr_storage addrs[GW_UDP_BATCH];
    union {
        char buf[CMSG_SPACE(sizeof(struct in6_pktinfo)) + CMSG_SPACE(sizeof(struct in_pktinfo))];
        struct cmsghdr align;
    } ctrl[GW_UDP_BATCH];
    char data[GW_UDP_BATCH][UDP_MAX_DATAGRAM];
    /* one flow's group of datagrams being sent */
    struct mmsghdr out[GW_UDP_BATCH];
    struct iovec oiov[GW_UDP_BATCH];
    union udp_ctrl octrl[GW_UDP_BATCH];
    struct gw_flow *flows[GW_UDP_BATCH]; /* the flow of each received datagram */
    bool gso_off;                        /* the kernel has no UDP GSO: never again */
};

/* ---- client index: client endpoint -> flow ----------------------------- */

static size_t ep_hash(const struct nat_endpoint *ep, size_t size)
{
    uint64_t h = 1469598103934665603ull;

    for (int i = 0; i < 16; i++)
        h = (h ^ ep->addr.b[i]) * 1099511628211ull;
    h = (h ^ ep->port) * 1099511628211ull;
    h ^= h >> 29;
    return (size_t)(h & (size - 1));
}

static bool ep_equal(const struct nat_endpoint *a, const struct nat_endpoint *b)
{
    return a->port == b->port && memcmp(a->addr.b, b->addr.b, 16) == 0;
}

static struct gw_flow *index_find(struct gw_ctx *ctx, const struct nat_endpoint *ep)
{
    if (!ctx->udp_hash)
        return NULL;
    for (struct gw_flow *f = ctx->udp_hash[ep_hash(ep, ctx->udp_hash_size)]; f; f = f->u.udp.hnext)
        if (ep_equal(&f->client, ep))
            return f;
    return NULL;
}

static int index_grow(struct gw_ctx *ctx)
{
    size_t size = ctx->udp_hash_size ? ctx->udp_hash_size * 2 : 1024;
    struct gw_flow **nh = calloc(size, sizeof(*nh));

    if (!nh)
        return -ENOMEM;
    for (size_t i = 0; i < ctx->udp_hash_size; i++) {
        struct gw_flow *f = ctx->udp_hash[i], *next;
        for (; f; f = next) {
            next = f->u.udp.hnext;
            size_t h = ep_hash(&f->client, size);
            f->u.udp.hnext = nh[h];
            nh[h] = f;
        }
    }
    free(ctx->udp_hash);
    ctx->udp_hash = nh;
    ctx->udp_hash_size = size;
    return 0;
}

static int index_add(struct gw_ctx *ctx, struct gw_flow *f)
{
    if (ctx->udp_hash_count >= ctx->udp_hash_size && index_grow(ctx) < 0)
        return -ENOMEM;
    size_t h = ep_hash(&f->client, ctx->udp_hash_size);
    f->u.udp.hnext = ctx->udp_hash[h];
    ctx->udp_hash[h] = f;
    ctx->udp_hash_count++;
    return 0;
}

static void index_remove(struct gw_ctx *ctx, struct gw_flow *f)
{
    if (!ctx->udp_hash)
        return;
    struct gw_flow **pp = &ctx->udp_hash[ep_hash(&f->client, ctx->udp_hash_size)];
    for (; *pp; pp = &(*pp)->u.udp.hnext) {
        if (*pp == f) {
            *pp = f->u.udp.hnext;
            ctx->udp_hash_count--;
            return;
        }
    }
}

/* Frees the index and the batch buffers. */
void gw_udp_index_free(struct gw_ctx *ctx)
{
    free(ctx->udp_hash);
    ctx->udp_hash = NULL;
    ctx->udp_hash_size = ctx->udp_hash_count = 0;
    free(ctx->udp_batch);
    ctx->udp_batch = NULL;
}

/* The UDP part of gw_flow_close. */
void gw_udp_release(struct gw_flow *flow)
{
    gw_io_forget(&flow->ctx->poll, &flow->u.udp.io);
    if (flow->u.udp.fd >= 0)
        close(flow->u.udp.fd);
    flow->u.udp.fd = -1;
    index_remove(flow->ctx, flow);
}

/* True when the kernel knows UDP_SEGMENT (Linux 4.18+). A kernel that does
 * not would ignore the cmsg and send the run as one datagram, so ask first. */
static bool gso_supported(void)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), v = 0;
    socklen_t len = sizeof(v);

    if (fd < 0)
        return false;
    bool ok = getsockopt(fd, SOL_UDP, UDP_SEGMENT, &v, &len) == 0;
    close(fd);
    return ok;
}

static struct gw_udp_batch *batch_get(struct gw_ctx *ctx)
{
    if (!ctx->udp_batch) {
        ctx->udp_batch = malloc(sizeof(*ctx->udp_batch));
        if (!ctx->udp_batch)
            return NULL;
        ctx->udp_batch->gso_off = !gso_supported();
        if (ctx->udp_batch->gso_off)
            gw_log(GW_LOG_INFO, "udp: no UDP GSO in this kernel: plain sends");
    }
    return ctx->udp_batch;
}

/* ---- replies -------------------------------------------------------------- */

/* Writes the cmsg that makes a reply of flow leave from the local address the
 * client wrote to, at c. Returns its CMSG_SPACE, or 0 when not known. */
static size_t put_pktinfo(struct cmsghdr *c, const struct gw_flow *flow)
{
    if (flow->u.udp.local_af == AF_INET) {
        struct in_pktinfo pi;
        memset(&pi, 0, sizeof(pi));
        pi.ipi_spec_dst = flow->u.udp.local.v4;
        c->cmsg_level = IPPROTO_IP;
        c->cmsg_type = IP_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(pi));
        memcpy(CMSG_DATA(c), &pi, sizeof(pi));
        return CMSG_SPACE(sizeof(pi));
    }
    if (flow->u.udp.local_af == AF_INET6) {
        struct in6_pktinfo pi;
        memset(&pi, 0, sizeof(pi));
        pi.ipi6_addr = flow->u.udp.local.v6;
        pi.ipi6_ifindex = (unsigned)flow->u.udp.ifindex;
        c->cmsg_level = IPPROTO_IPV6;
        c->cmsg_type = IPV6_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(pi));
        memcpy(CMSG_DATA(c), &pi, sizeof(pi));
        return CMSG_SPACE(sizeof(pi));
    }
    return 0;
}

/* Where a group of one flow's datagrams goes: upstream (the flow's connected
 * socket) or back to the client (the listener, from the flow's local address). */
struct udp_dest {
    int fd;
    struct gw_sockaddr *to; /* NULL: connected */
    bool reply;                   /* add the flow's reply source (pktinfo) */
};

static void set_control(struct msghdr *m, union udp_ctrl *ctrl, const struct gw_flow *flow,
                        const struct udp_dest *d, uint16_t gso_size)
{
    size_t len = 0;

    m->msg_control = NULL;
    m->msg_controllen = 0;
    if (!d->reply && gso_size == 0)
        return;
    memset(ctrl, 0, sizeof(*ctrl));
    m->msg_control = ctrl->buf;
    m->msg_controllen = sizeof(ctrl->buf);
    struct cmsghdr *c = CMSG_FIRSTHDR(m);
    if (d->reply) {
        len = put_pktinfo(c, flow);
        if (len)
            c = (struct cmsghdr *)(void *)(ctrl->buf + len);
    }
    if (gso_size) {
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(gso_size));
        memcpy(CMSG_DATA(c), &gso_size, sizeof(gso_size));
        len += CMSG_SPACE(sizeof(gso_size));
    }
    m->msg_controllen = len;
    if (len == 0)
        m->msg_control = NULL;
}

/* How many datagrams from v[0] can leave as one GSO send: all of one size
 * but the last, which may be shorter; 1 when GSO is no use. */
static int gso_run(const struct iovec *v, int n)
{
    size_t size = v[0].iov_len, total = size;
    int k = 1;

    if (size == 0 || size > UINT16_MAX)
        return 1;
    while (k < n && k < UDP_GSO_MAX_SEGS && v[k].iov_len == size &&
           total + size <= UDP_GSO_MAX_BYTES) {
        total += size;
        k++;
    }
    if (k < n && k < UDP_GSO_MAX_SEGS && v[k].iov_len > 0 && v[k].iov_len < size &&
        total + v[k].iov_len <= UDP_GSO_MAX_BYTES)
        k++;
    return k;
}

/* Sends v[0..n) one datagram each, by sendmmsg. A datagram that fails is
 * dropped (its errno in *err) and the rest are tried. Returns how many went. */
static int send_plain(struct gw_udp_batch *b, const struct gw_flow *flow,
                      const struct udp_dest *d, struct iovec *v, int n, uint64_t *bytes, int *err)
{
    int sent = 0, done = 0;

    for (int k = 0; k < n; k++) {
        struct msghdr *m = &b->out[k].msg_hdr;
        m->msg_name = d->to ? &d->to->ss : NULL;
        m->msg_namelen = d->to ? d->to->len : 0;
        m->msg_iov = &v[k];
        m->msg_iovlen = 1;
        m->msg_flags = 0;
        set_control(m, &b->octrl[k], flow, d, 0);
    }
    while (done < n) {
        int r = sendmmsg(d->fd, b->out + done, (unsigned)(n - done), MSG_DONTWAIT);
        if (r <= 0) {
            *err = r < 0 ? errno : EIO;
            done++;
            continue;
        }
        for (int k = done; k < done + r; k++)
            *bytes += v[k].iov_len;
        done += r;
        sent += r;
    }
    return sent;
}

/* Sends the datagrams v[0..n) of flow to d, in order: runs of one size as one
 * UDP GSO send each, the rest by sendmmsg. Adds the payload sent to *bytes;
 * *err = errno of the last failure (0 when none). Returns how many went. */
static int send_dgrams(struct gw_udp_batch *b, struct gw_flow *flow, const struct udp_dest *d,
                       struct iovec *v, int n, uint64_t *bytes, int *err)
{
    int sent = 0, i = 0;

    *err = 0;
    while (i < n) {
        bool gso = !b->gso_off && !(flow->u.udp.uflags & GW_UDP_F_NO_GSO);
        int run = gso ? gso_run(v + i, n - i) : 1;
        if (run >= 2) {
            struct msghdr m;
            memset(&m, 0, sizeof(m));
            m.msg_name = d->to ? &d->to->ss : NULL;
            m.msg_namelen = d->to ? d->to->len : 0;
            m.msg_iov = v + i;
            m.msg_iovlen = (size_t)run;
            set_control(&m, &b->octrl[0], flow, d, (uint16_t)v[i].iov_len);
            ssize_t r = sendmsg(d->fd, &m, MSG_DONTWAIT);
            if (r >= 0) {
                *bytes += (uint64_t)r;
                sent += run;
                i += run;
                continue;
            }
            int e = errno;
            if (e == ENOPROTOOPT || e == EOPNOTSUPP) {
                b->gso_off = true; /* no UDP GSO here after all */
                gw_log(GW_LOG_INFO, "udp: GSO send refused (%s): plain sends from now on",
                       strerror(e));
            } else if (e == EINVAL || e == EMSGSIZE || e == EIO) {
                /* Segments above the route's MTU, or a device without
                 * checksum offload (EIO): this flow sends plainly. */
                flow->u.udp.uflags |= GW_UDP_F_NO_GSO;
            } else {
                *err = e; /* EAGAIN, ENOBUFS, ECONNREFUSED...: the run is dropped */
                i += run;
                continue;
            }
        } else {
            /* Gather the datagrams that will not go by GSO into one sendmmsg. */
            run = 1;
            while (i + run < n && (!gso || gso_run(v + i + run, n - i - run) < 2))
                run++;
        }
        sent += send_plain(b, flow, d, v + i, run, bytes, err);
        i += run;
    }
    return sent;
}

static void upstream_cb(struct gw_io *w, int revents)
{
    struct gw_flow *flow = w->data;
    struct gw_ctx *ctx = flow->ctx;
    struct gw_udp_batch *b = batch_get(ctx);
    struct gw_sockaddr client;

    if (revents & EV_ERROR) { /* its socket could not be watched (gw_poll.h) */
        gw_flow_close(flow, "error");
        return;
    }
    if (!b)
        return;
    gw_sockaddr_from_endpoint(&client, &flow->client);
    struct udp_dest d = {flow->u.udp.listener->udp_fd, &client, true};
    for (int round = 0; round < UDP_ROUNDS; round++) {
        for (int i = 0; i < GW_UDP_BATCH; i++) {
            b->iov[i].iov_base = b->data[i];
            b->iov[i].iov_len = UDP_MAX_DATAGRAM;
            memset(&b->msgs[i].msg_hdr, 0, sizeof(b->msgs[i].msg_hdr));
            b->msgs[i].msg_hdr.msg_iov = &b->iov[i];
            b->msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int n = recvmmsg(flow->u.udp.fd, b->msgs, GW_UDP_BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) {
            /* ECONNREFUSED: the server's port is closed (ICMP port unreachable):
             * the client's next datagram moves the flow to another server. */
            if (n < 0 && errno == ECONNREFUSED)
                flow->u.udp.uflags |= GW_UDP_F_REFUSED;
            return;
        }
        for (int i = 0; i < n; i++)
            b->iov[i].iov_len = b->msgs[i].msg_len;
        uint64_t bytes = 0;
        int err, sent = send_dgrams(b, flow, &d, b->iov, n, &bytes, &err);
        ctx->counters.udp_dropped += (uint64_t)(n - sent);
        ctx->counters.udp_datagrams_out += (uint64_t)sent;
        ctx->counters.bytes_out += bytes;
        if (flow->sess) {
            if (!(flow->flags & GW_FLOW_F_ESTABLISHED)) {
                flow->flags |= GW_FLOW_F_ESTABLISHED;
                nat_session_set_state(ctx->nat, flow->sess, NAT_STATE_ESTABLISHED,
                                      gw_loop_ms(ctx->loop));
            }
            nat_session_touch(ctx->nat, flow->sess, gw_loop_ms(ctx->loop), 0, bytes);
        }
        if (n < GW_UDP_BATCH)
            return;
    }
}

/* ---- new mappings --------------------------------------------------------- */

static void local_from_cmsg(struct gw_flow *flow, struct msghdr *m)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
            struct in_pktinfo pi;
            memcpy(&pi, CMSG_DATA(c), sizeof(pi));
            flow->u.udp.local.v4 = pi.ipi_addr;
            flow->u.udp.local_af = AF_INET;
            flow->u.udp.ifindex = pi.ipi_ifindex;
        } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
            struct in6_pktinfo pi;
            memcpy(&pi, CMSG_DATA(c), sizeof(pi));
            flow->u.udp.local.v6 = pi.ipi6_addr;
            flow->u.udp.local_af = AF_INET6;
            flow->u.udp.ifindex = (int)pi.ipi6_ifindex;
        }
    }
}

/* Socket bound to the session's external endpoint and connected to srv; repicks
 * busy ports. Returns the fd, -ENOSPC (no port: refused) or -errno. */
static int upstream_socket(struct gw_ctx *ctx, struct nat_session *sess,
                           const struct gw_server *srv)
{
    for (int tries = 0;; tries++) {
        struct gw_sockaddr ext;
        gw_sockaddr_from_endpoint(&ext, &sess->ext);
        if (ext.ss.ss_family != srv->conf.addr.ss.ss_family)
            return -EAFNOSUPPORT;
        int fd = socket(ext.ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -errno;
        if (bind(fd, (const struct sockaddr *)&ext.ss, ext.len) < 0) {
            int e = errno;
            close(fd);
            if (e == EADDRINUSE && tries < UDP_PORT_TRIES) {
                ctx->counters.bind_busy++;
                if (nat_session_repick(ctx->nat, sess, gw_loop_ms(ctx->loop), GW_BUSY_PORT_MS) ==
                    NAT_OK)
                    continue;
                return -ENOSPC;
            }
            return -e;
        }
        if (connect(fd, (const struct sockaddr *)&srv->conf.addr.ss, srv->conf.addr.len) < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        return fd;
    }
}

static struct gw_flow *flow_new(struct gw_listener *l, const struct nat_endpoint *client,
                                struct msghdr *m)
{
    struct gw_ctx *ctx = l->ctx;
    char ip[NAT_ADDR_STRLEN];

    if (ctx->stopping) {
        ctx->counters.refused_draining++;
        return NULL;
    }
    if (ctx->cfg->max_flows && gw_flows_live(ctx) >= ctx->cfg->max_flows) {
        ctx->counters.refused_max_flows++;
        return NULL;
    }
    struct gw_route_input in = {NAT_PROTO_UDP, client};
    struct gw_backend *b = gw_route_pick(ctx, &in);
    if (!b) {
        ctx->counters.refused_no_route++;
        return NULL;
    }
    struct gw_server *srv = gw_backend_pick(b, &client->addr, 0, NULL);
    if (!srv) {
        ctx->counters.refused_no_server++;
        return NULL;
    }
    struct gw_flow *flow = calloc(1, sizeof(*flow));
    if (!flow)
        return NULL;
    struct nat_key key;
    memset(&key, 0, sizeof(key));
    key.client = *client;
    gw_endpoint_from_sockaddr(&key.dst, (const struct sockaddr *)&srv->conf.addr.ss);
    key.proto = NAT_PROTO_UDP;
    struct nat_session *sess;
    enum nat_err err = nat_session_open(ctx->nat, &key, b->tag, gw_loop_ms(ctx->loop), &sess);
    if (err != NAT_OK) {
        uint64_t held; /* counted by libnat (nat_stats.refused) */
        if (gw_log_allow(&ctx->rl.refused, gw_loop_ms(ctx->loop), &held))
            gw_log(GW_LOG_INFO, "udp %s:%u refused: %s (%lu more refusals not logged)",
                   nat_addr_format(&client->addr, ip), client->port, nat_err_name(err),
                   (unsigned long)held);
        free(flow);
        return NULL;
    }
    int fd = upstream_socket(ctx, sess, srv);
    if (fd < 0) {
        uint64_t held;
        if (fd != -ENOSPC && gw_log_allow(&ctx->rl.sockets, gw_loop_ms(ctx->loop), &held))
            gw_log(GW_LOG_WARN, "udp upstream socket to %s: %s (%lu more not logged)",
                   srv->conf.name, strerror(-fd), (unsigned long)held);
        nat_session_close(ctx->nat, sess, gw_loop_ms(ctx->loop),
                          fd == -ENOSPC ? "refused" : "error");
        free(flow);
        return NULL;
    }
    flow->ctx = ctx;
    flow->proto = NAT_PROTO_UDP;
    flow->state = GW_FLOW_RELAY;
    flow->client = *client;
    flow->sess = sess;
    sess->udata = flow;
    flow->server = srv;
    flow->backend_tag = b->tag;
    gw_server_acquire(srv);
    flow->u.udp.fd = fd;
    flow->u.udp.listener = l;
    local_from_cmsg(flow, m);
    gw_io_init(&flow->u.udp.io, upstream_cb, fd, EV_READ);
    flow->u.udp.io.data = flow;
    LIST_INSERT_HEAD(&ctx->flows, flow, link);
    ctx->counters.udp_live++;
    ctx->counters.udp_flows++;
    if (index_add(ctx, flow) < 0) {
        gw_flow_close(flow, "error");
        return NULL;
    }
    gw_io_start(&ctx->poll, &flow->u.udp.io);
    return flow;
}

/* ---- failover -------------------------------------------------------------- */

/* True when flow's server is gone: refused (ICMP) or down by health check. */
static bool server_gone(const struct gw_flow *flow)
{
    return (flow->u.udp.uflags & GW_UDP_F_REFUSED) ||
           (flow->server && flow->server->health == GW_HEALTH_DOWN);
}

/*
 * Moves flow to another server of its route's pool (see the top of the file):
 * a new session and upstream socket, then the old session closed with
 * "backend_down". Returns flow, or NULL when it was closed (no other server
 * and the old one is down, or no mapping/socket could be had).
 */
static struct gw_flow *udp_failover(struct gw_flow *flow)
{
    struct gw_ctx *ctx = flow->ctx;
    struct gw_server *old = flow->server;
    uint64_t now = gw_loop_ms(ctx->loop), held;
    char ip[NAT_ADDR_STRLEN];
    struct gw_route_input in = {NAT_PROTO_UDP, &flow->client};
    struct gw_backend *b = gw_route_pick(ctx, &in);
    struct gw_server *srv = b ? gw_backend_pick(b, &flow->client.addr, gw_server_bit(b, old), NULL)
                              : NULL;

    if (old)
        old->connect_failures++;
    if (!srv) {
        if (old && old->health != GW_HEALTH_DOWN) {
            /* Refused, but nowhere else to go: keep trying this one. */
            flow->u.udp.uflags &= (uint8_t)~GW_UDP_F_REFUSED;
            return flow;
        }
        ctx->counters.refused_no_server++;
        gw_flow_close(flow, "backend_down");
        return NULL;
    }
    /* The old socket goes first: with endpoint-independent mapping the new
     * session gets the same nat_ip:nat_port, which the new socket binds. */
    gw_io_forget(&ctx->poll, &flow->u.udp.io);
    close(flow->u.udp.fd);
    flow->u.udp.fd = -1;
    struct nat_key key;
    memset(&key, 0, sizeof(key));
    key.client = flow->client;
    gw_endpoint_from_sockaddr(&key.dst, (const struct sockaddr *)&srv->conf.addr.ss);
    key.proto = NAT_PROTO_UDP;
    struct nat_session *sess;
    enum nat_err err = nat_session_open(ctx->nat, &key, b->tag, now, &sess);
    if (err != NAT_OK) { /* counted by libnat (nat_stats.refused) */
        gw_flow_close(flow, "backend_down");
        return NULL;
    }
    int fd = upstream_socket(ctx, sess, srv);
    if (fd < 0) {
        nat_session_close(ctx->nat, sess, now, fd == -ENOSPC ? "refused" : "error");
        gw_flow_close(flow, "backend_down");
        return NULL;
    }
    if (gw_log_allow(&ctx->rl.refused, now, &held))
        gw_log(GW_LOG_INFO, "udp %s:%u: server %s gone, moved to %s (%lu more not logged)",
               nat_addr_format(&flow->client.addr, ip), flow->client.port,
               old ? old->conf.name : "-", srv->conf.name, (unsigned long)held);
    if (flow->sess) {
        flow->sess->udata = NULL; /* closing it must not tear the flow down */
        nat_session_close(ctx->nat, flow->sess, now, "backend_down");
    }
    flow->sess = sess;
    sess->udata = flow;
    flow->flags &= (uint8_t)~GW_FLOW_F_ESTABLISHED;
    flow->attempts++;
    flow->backend_tag = b->tag;
    gw_server_acquire(srv);
    flow->server = srv;
    if (old)
        gw_server_release(old); /* may free a retired server */
    flow->u.udp.fd = fd;
    flow->u.udp.uflags &= (uint8_t)~GW_UDP_F_REFUSED;
    gw_io_set(&flow->u.udp.io, fd, EV_READ);
    gw_io_start(&ctx->poll, &flow->u.udp.io);
    ctx->counters.failovers++;
    return flow;
}

/* ---- the listener ----------------------------------------------------------- */

/* Sends flow's datagrams v[0..n) upstream. */
static void forward_up(struct gw_flow *flow, struct gw_udp_batch *b, struct iovec *v, int n)
{
    struct gw_ctx *ctx = flow->ctx;
    struct udp_dest d = {flow->u.udp.fd, NULL, false};
    uint64_t bytes = 0;
    int err;

    int sent = send_dgrams(b, flow, &d, v, n, &bytes, &err);
    ctx->counters.udp_dropped += (uint64_t)(n - sent);
    if (err == ECONNREFUSED)
        flow->u.udp.uflags |= GW_UDP_F_REFUSED;
    ctx->counters.bytes_in += bytes;
    if (flow->sess && bytes)
        nat_session_touch(ctx->nat, flow->sess, gw_loop_ms(ctx->loop), bytes, 0);
}

/* The flow of client (found, failed over, or new), or NULL: dropped. */
static struct gw_flow *flow_of(struct gw_listener *l, const struct nat_endpoint *client,
                               struct msghdr *m)
{
    struct gw_flow *flow = index_find(l->ctx, client);

    if (!flow)
        return flow_new(l, client, m);
    if (server_gone(flow))
        return udp_failover(flow);
    return flow;
}

/* Receives up to UDP_ROUNDS batches on l; each batch's datagrams are grouped
 * by flow and sent upstream one group per flow. */
void gw_udp_receive(struct gw_listener *l)
{
    struct gw_ctx *ctx = l->ctx;
    struct gw_udp_batch *b = batch_get(ctx);

    if (!b) {
        char tmp[1];
        recv(l->udp_fd, tmp, sizeof(tmp), MSG_DONTWAIT); /* no memory: drop one */
        ctx->counters.udp_dropped++;
        return;
    }
    for (int round = 0; round < UDP_ROUNDS; round++) {
        for (int i = 0; i < GW_UDP_BATCH; i++) {
            struct msghdr *m = &b->msgs[i].msg_hdr;
            b->iov[i].iov_base = b->data[i];
            b->iov[i].iov_len = UDP_MAX_DATAGRAM;
            m->msg_name = &b->addrs[i];
            m->msg_namelen = sizeof(b->addrs[i]);
            m->msg_iov = &b->iov[i];
            m->msg_iovlen = 1;
            m->msg_control = b->ctrl[i].buf;
            m->msg_controllen = sizeof(b->ctrl[i].buf);
            m->msg_flags = 0;
        }
        int n = recvmmsg(l->udp_fd, b->msgs, GW_UDP_BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0)
            return;
        ctx->counters.udp_datagrams_in += (uint64_t)n;
        /* Every flow is found (or made, or failed over) before anything is
         * sent, so no flow of the batch is closed while its datagrams wait. */
        struct nat_endpoint prev;
        for (int i = 0; i < n; i++) {
            struct nat_endpoint client;
            gw_endpoint_from_sockaddr(&client, (const struct sockaddr *)&b->addrs[i]);
            if (i > 0 && ep_equal(&client, &prev))
                b->flows[i] = b->flows[i - 1];
            else
                b->flows[i] = flow_of(l, &client, &b->msgs[i].msg_hdr);
            prev = client;
            b->iov[i].iov_len = b->msgs[i].msg_len;
        }
        bool taken[GW_UDP_BATCH] = {false};
        for (int i = 0; i < n; i++) {
            struct gw_flow *flow = b->flows[i];
            if (taken[i])
                continue;
            if (!flow) {
                ctx->counters.udp_dropped++;
                continue;
            }
            int k = 0;
            for (int j = i; j < n; j++) {
                if (b->flows[j] == flow) {
                    b->oiov[k++] = b->iov[j];
                    taken[j] = true;
                }
            }
            forward_up(flow, b, b->oiov, k);
        }
        if (n < GW_UDP_BATCH)
            return;
    }
}
