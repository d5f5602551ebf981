/*
 * gw_udp.c - UDP flows: datagrams read in batches (recvmmsg) on the listener;
 * the first datagram of a client endpoint routes it, opens its mapping and an
 * upstream socket bound to nat_ip:nat_port and connected to the server;
 * replies are read in batches and sent back (sendmmsg) from the listener
 * socket and the local address the client wrote to (IP_PKTINFO /
 * IPV6_PKTINFO), so a multi-homed host answers from the right address.
 * Mappings end on libnat's expiry (gw_nat.c closes the flow).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gwd.h"

#define UDP_MAX_DATAGRAM 65536
#define UDP_ROUNDS 4 /* recvmmsg batches per wakeup at most */
#define UDP_PORT_TRIES 16

struct gw_udp_batch {
    struct mmsghdr msgs[GW_UDP_BATCH];
    struct iovec iov[GW_UDP_BATCH];
    struct sockaddr_storage addrs[GW_UDP_BATCH];
    union {
        char buf[CMSG_SPACE(sizeof(struct in6_pktinfo)) + CMSG_SPACE(sizeof(struct in_pktinfo))];
        struct cmsghdr align;
    } ctrl[GW_UDP_BATCH];
    char data[GW_UDP_BATCH][UDP_MAX_DATAGRAM];
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
    ev_io_stop(flow->ctx->loop, &flow->u.udp.io);
    if (flow->u.udp.fd >= 0)
        close(flow->u.udp.fd);
    flow->u.udp.fd = -1;
    index_remove(flow->ctx, flow);
}

static struct gw_udp_batch *batch_get(struct gw_ctx *ctx)
{
    if (!ctx->udp_batch)
        ctx->udp_batch = malloc(sizeof(*ctx->udp_batch));
    return ctx->udp_batch;
}

/* ---- replies -------------------------------------------------------------- */

/* Fills msg's control with the source address the reply must leave from. */
static void set_reply_source(struct msghdr *msg, void *ctrl, size_t ctrl_size,
                             const struct gw_flow *flow)
{
    msg->msg_control = NULL;
    msg->msg_controllen = 0;
    if (flow->u.udp.local_af == 0)
        return;
    memset(ctrl, 0, ctrl_size);
    msg->msg_control = ctrl;
    if (flow->u.udp.local_af == AF_INET) {
        msg->msg_controllen = CMSG_SPACE(sizeof(struct in_pktinfo));
        struct cmsghdr *c = CMSG_FIRSTHDR(msg);
        c->cmsg_level = IPPROTO_IP;
        c->cmsg_type = IP_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
        struct in_pktinfo pi;
        memset(&pi, 0, sizeof(pi));
        pi.ipi_spec_dst = flow->u.udp.local.v4;
        memcpy(CMSG_DATA(c), &pi, sizeof(pi));
    } else {
        msg->msg_controllen = CMSG_SPACE(sizeof(struct in6_pktinfo));
        struct cmsghdr *c = CMSG_FIRSTHDR(msg);
        c->cmsg_level = IPPROTO_IPV6;
        c->cmsg_type = IPV6_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(struct in6_pktinfo));
        struct in6_pktinfo pi;
        memset(&pi, 0, sizeof(pi));
        pi.ipi6_addr = flow->u.udp.local.v6;
        pi.ipi6_ifindex = (unsigned)flow->u.udp.ifindex;
        memcpy(CMSG_DATA(c), &pi, sizeof(pi));
    }
}

static void upstream_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct gw_flow *flow = w->data;
    struct gw_ctx *ctx = flow->ctx;
    struct gw_udp_batch *b = batch_get(ctx);
    struct gw_sockaddr client;

    (void)loop;
    (void)revents;
    if (!b)
        return;
    gw_sockaddr_from_endpoint(&client, &flow->client);
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
            /* ECONNREFUSED: the server's port is closed (ICMP); nothing to forward. */
            return;
        }
        uint64_t bytes = 0;
        for (int i = 0; i < n; i++) {
            struct msghdr *m = &b->msgs[i].msg_hdr;
            b->iov[i].iov_len = b->msgs[i].msg_len;
            bytes += b->msgs[i].msg_len;
            m->msg_name = &client.ss;
            m->msg_namelen = client.len;
            set_reply_source(m, b->ctrl[i].buf, sizeof(b->ctrl[i].buf), flow);
        }
        int sent = 0;
        while (sent < n) {
            int s = sendmmsg(flow->u.udp.listener->udp_fd, b->msgs + sent, (unsigned)(n - sent), 0);
            if (s <= 0) {
                ctx->counters.udp_dropped += (uint64_t)(n - sent);
                break;
            }
            sent += s;
        }
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
    struct gw_server *srv = gw_backend_pick(b, &client->addr, NULL);
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
        uint64_t held;
        ctx->counters.refused_nat[err < NAT_ERR_COUNT ? err : NAT_ERR_INVAL]++;
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
    ev_io_init(&flow->u.udp.io, upstream_cb, fd, EV_READ);
    flow->u.udp.io.data = flow;
    LIST_INSERT_HEAD(&ctx->flows, flow, link);
    ctx->counters.udp_live++;
    ctx->counters.udp_flows++;
    if (index_add(ctx, flow) < 0) {
        gw_flow_close(flow, "error");
        return NULL;
    }
    ev_io_start(ctx->loop, &flow->u.udp.io);
    return flow;
}

/* ---- the listener ----------------------------------------------------------- */

/* Sends datagrams [i, j) of the batch (all from flow's client) upstream. */
static void forward_up(struct gw_flow *flow, struct gw_udp_batch *b, int i, int j)
{
    struct gw_ctx *ctx = flow->ctx;
    uint64_t bytes = 0;

    for (int k = i; k < j; k++) {
        struct msghdr *m = &b->msgs[k].msg_hdr;
        b->iov[k].iov_len = b->msgs[k].msg_len;
        m->msg_name = NULL;
        m->msg_namelen = 0;
        m->msg_control = NULL;
        m->msg_controllen = 0;
    }
    int sent = 0;
    while (sent < j - i) {
        int r =
            sendmmsg(flow->u.udp.fd, b->msgs + i + sent, (unsigned)(j - i - sent), MSG_DONTWAIT);
        if (r <= 0) {
            /* The datagram that failed is dropped; the rest are tried. */
            ctx->counters.udp_dropped++;
            sent++;
            continue;
        }
        for (int k = i + sent; k < i + sent + r; k++)
            bytes += b->msgs[k].msg_len;
        sent += r;
    }
    ctx->counters.bytes_in += bytes;
    if (flow->sess && bytes)
        nat_session_touch(ctx->nat, flow->sess, gw_loop_ms(ctx->loop), bytes, 0);
}

/* Receives up to UDP_ROUNDS batches on l and forwards each datagram. */
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
        for (int i = 0; i < n;) {
            struct nat_endpoint client;
            gw_endpoint_from_sockaddr(&client, (const struct sockaddr *)&b->addrs[i]);
            struct gw_flow *flow = index_find(ctx, &client);
            if (!flow)
                flow = flow_new(l, &client, &b->msgs[i].msg_hdr);
            /* The datagrams that follow from the same client go out in one
             * sendmmsg on its upstream socket. */
            int j = i + 1;
            while (j < n) {
                struct nat_endpoint next;
                gw_endpoint_from_sockaddr(&next, (const struct sockaddr *)&b->addrs[j]);
                if (!ep_equal(&next, &client))
                    break;
                j++;
            }
            ctx->counters.udp_datagrams_in += (uint64_t)(j - i);
            if (flow)
                forward_up(flow, b, i, j);
            else
                ctx->counters.udp_dropped += (uint64_t)(j - i);
            i = j;
        }
        if (n < GW_UDP_BATCH)
            return;
    }
}
