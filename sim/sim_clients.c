/*
 * sim_clients.c - the load generator: one libev loop, at most `concurrency`
 * flows open, each a small state machine CONNECT -> HELLO -> REQUESTS ->
 * HOLD -> done (TCP) or REQUESTS -> HOLD -> done (UDP). Results are folded
 * into counters as flows end, so memory is bounded by the concurrency (and
 * the distinct-address sets).
 */
#include "sim/sim_clients.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ev.h>

#include "sim/sim_ctl.h"
#include "sim/sim_util.h"

#define HELLO_MAX 256
#define LAT_MAX (1u << 20) /* latency samples kept (reservoir beyond) */

static const char *const result_names[SIM_FLOW_RESULT_COUNT] = {
    "ok",
    "bind_eaddrinuse",
    "bind_eaddrnotavail",
    "bind_error",
    "connect_eaddrnotavail",
    "connect_refused",
    "connect_timeout",
    "connect_error",
    "closed_before_hello",
    "reset_before_hello",
    "bad_hello",
    "closed_early",
    "reset",
    "reply_mismatch",
    "timeout",
    "nat_missing",
    "nat_mismatch",
    "control_error",
    "socket_error",
    "not_started",
};

const char *sim_flow_result_name(enum sim_flow_result r)
{
    return r < SIM_FLOW_RESULT_COUNT ? result_names[r] : "?";
}

/* ---- a set of strings (distinct tuples, NAT ports) -------------------------- */

struct strset {
    char **keys; /* owned */
    char **vals; /* owned: the first backend that used the key (nat set only) */
    uint8_t *flag;
    size_t n, cap;
};

static uint64_t str_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;

    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* Adds key (with val); returns the slot index, or -1 when out of memory. *added (if
 * added is not NULL) says if new. */
static long strset_add(struct strset *s, const char *key, const char *val, bool *added)
{
    size_t i;

    if ((s->n + 1) * 2 > s->cap) {
        struct strset ns = {0};
        ns.cap = s->cap ? s->cap * 2 : 256;
        ns.keys = calloc(ns.cap, sizeof(char *));
        ns.vals = calloc(ns.cap, sizeof(char *));
        ns.flag = calloc(ns.cap, 1);
        if (ns.keys == NULL || ns.vals == NULL || ns.flag == NULL) {
            free(ns.keys);
            free(ns.vals);
            free(ns.flag);
            return -1;
        }
        for (size_t k = 0; k < s->cap; k++) {
            if (s->keys[k] == NULL)
                continue;
            i = str_hash(s->keys[k]) & (ns.cap - 1);
            while (ns.keys[i] != NULL)
                i = (i + 1) & (ns.cap - 1);
            ns.keys[i] = s->keys[k];
            ns.vals[i] = s->vals[k];
            ns.flag[i] = s->flag[k];
        }
        ns.n = s->n;
        free(s->keys);
        free(s->vals);
        free(s->flag);
        *s = ns;
    }
    for (i = str_hash(key) & (s->cap - 1); s->keys[i] != NULL; i = (i + 1) & (s->cap - 1)) {
        if (strcmp(s->keys[i], key) == 0) {
            if (added != NULL)
                *added = false;
            return (long)i;
        }
    }
    s->keys[i] = strdup(key);
    s->vals[i] = val != NULL ? strdup(val) : NULL;
    if (s->keys[i] == NULL || (val != NULL && s->vals[i] == NULL))
        return -1;
    s->n++;
    if (added != NULL)
        *added = true;
    return (long)i;
}

static void strset_free(struct strset *s)
{
    for (size_t i = 0; i < s->cap; i++) {
        free(s->keys[i]);
        free(s->vals[i]);
    }
    free(s->keys);
    free(s->vals);
    free(s->flag);
    memset(s, 0, sizeof(*s));
}

/* ---- state ---------------------------------------------------------------------- */

enum flow_state {
    FS_CONNECTING = 0,
    FS_HELLO, /* TCP: reading the hello line (request 0 already sent) */
    FS_ECHO,  /* reading the echo of the current request */
    FS_CHECK, /* first reply in: waiting for the batched NAT-table check */
    FS_HOLD,
};

struct cl_ctx;

struct flow {
    struct cl_ctx *ctx; /* borrowed */
    ev_io io;
    ev_timer tm;
    int fd;
    enum flow_state state;
    uint64_t index;
    int proto;
    char src_ip[SIM_IP_STRLEN];
    uint16_t src_port;
    char src[SIM_ADDR_STRLEN];
    char peer[SIM_ADDR_STRLEN];
    char backend[64];
    char hello[HELLO_MAX];
    size_t hello_len;
    uint64_t req;          /* current request */
    unsigned char *expect; /* owned: the current request's bytes */
    size_t sent, got;
    double t_req;
    bool checked; /* NAT check done */
    int err;
    size_t live_idx;     /* position in ctx->live */
    uint64_t tries;      /* UDP: resends of the current request */
    unsigned char *prev; /* owned: UDP: the previous request, to spot late duplicates */
    bool have_prev;
};

struct cl_ctx {
    const struct sim_clients_opts *o;
    struct ev_loop *loop; /* owned */
    struct sim_ctl ctl;
    bool have_ctl;
    ev_timer start_w, progress_w, deadline_w;
    ev_timer check_w;      /* runs the batched NAT checks on the next loop turn */
    struct flow **pending; /* owned array; flows borrowed: waiting in FS_CHECK */
    size_t n_pending, cap_pending;
    uint64_t total, started, done, active;
    uint64_t results[SIM_FLOW_RESULT_COUNT];
    uint64_t tcp_ok, udp_ok;
    uint64_t udp_resent, udp_duplicates;
    unsigned char udp_buf[65536 + 512]; /* one reply datagram */
    uint16_t *seq_port;                 /* owned: per source IP */
    struct sim_rng rng;
    struct strset tuples, nat_ports, client_ips, backends;
    uint64_t reused_across_backends;
    double *lat; /* owned: request round trips (ms), a sample of LAT_MAX at most */
    size_t n_lat, seen_lat;
    double lat_min, lat_max; /* over every request, not only the kept sample */
    uint64_t bytes;
    double t0, t_end;
    sim_flow_fn each;
    void *each_arg;
    struct flow **live; /* owned: the open flows, for the deadline */
    size_t n_live, cap_live;
    bool tty;
    int oom;
};

static void flow_finish(struct flow *f, enum sim_flow_result r);
static void start_more(struct cl_ctx *ctx);

/* The payload of request r of flow i: deterministic, never starts like HTTP. */
static void fill_payload(unsigned char *p, size_t n, uint64_t i, uint64_t r)
{
    uint64_t x = i * 0x9e3779b97f4a7c15ULL + r * 0xbf58476d1ce4e5b9ULL + 1;

    for (size_t k = 0; k < n; k++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[k] = (unsigned char)x;
    }
    if (n > 0)
        p[0] = 0x16;
}

/* Keeps ms in the percentile sample (a uniform reservoir past LAT_MAX requests)
 * and in the exact min and max. */
static void record_latency(struct cl_ctx *ctx, double ms)
{
    if (ctx->seen_lat == 0 || ms < ctx->lat_min)
        ctx->lat_min = ms;
    if (ctx->seen_lat == 0 || ms > ctx->lat_max)
        ctx->lat_max = ms;
    ctx->seen_lat++;
    if (ctx->n_lat < LAT_MAX) {
        ctx->lat[ctx->n_lat++] = ms;
    } else {
        uint64_t j = sim_rng_below(&ctx->rng, ctx->seen_lat);
        if (j < LAT_MAX)
            ctx->lat[j] = ms;
    }
}

/* ---- the NAT check -------------------------------------------------------------- */

/* Compares what the backend saw with the table's entry for the flow. */
static enum sim_flow_result nat_compare(struct flow *f, const char *nat_ip, unsigned nat_port)
{
    char want[SIM_ADDR_STRLEN];

    if (strchr(nat_ip, ':') != NULL)
        snprintf(want, sizeof(want), "[%s]:%u", nat_ip, nat_port);
    else
        snprintf(want, sizeof(want), "%s:%u", nat_ip, nat_port);
    if (strcmp(want, f->peer) != 0) {
        if (!f->ctx->o->quiet)
            fprintf(stderr, "gwsim clients: flow %s: backend saw %s, gwd's table says %s\n", f->src,
                    f->peer, want);
        return SIM_FLOW_NAT_MISMATCH;
    }
    return SIM_FLOW_OK;
}

/* One flow, one filtered show nat. */
static enum sim_flow_result nat_check_one(struct flow *f)
{
    struct sim_nat_entry e;
    char err[256];
    int rc = sim_ctl_find_session(&f->ctx->ctl, f->proto == 6 ? "tcp" : "udp", f->src_ip,
                                  f->src_port, &e, err, sizeof(err));

    if (rc < 0) {
        if (!f->ctx->o->quiet)
            fprintf(stderr, "gwsim clients: %s\n", err);
        return SIM_FLOW_CONTROL_ERROR;
    }
    if (rc == 0)
        return SIM_FLOW_NAT_MISSING;
    return nat_compare(f, e.nat_ip, e.nat_port);
}

static void flow_key(char *buf, size_t len, const char *proto, const char *ip, long long port)
{
    snprintf(buf, len, "%s %s %lld", proto, ip, port);
}

/*
 * Many flows: read the whole table once (paged show nat) into a map
 * "proto ip port" -> "nat_ip:nat_port", then check each flow against it.
 * Fills res[i] for flows[i]. Returns 0, or -1 (then every result is
 * control_error).
 */
static int nat_check_batch(struct cl_ctx *ctx, struct flow **flows, size_t n,
                           enum sim_flow_result *res)
{
    struct strset map = {0};
    json_int_t offset = 0, total = 0;
    char err[256], key[128];
    int rc = 0;

    do {
        json_t *args = json_pack("{s:i,s:I}", "limit", 10000, "offset", offset);
        json_t *r = sim_ctl_call(&ctx->ctl, "show nat", args, err, sizeof(err));
        json_t *rows, *row;
        size_t i;

        if (r == NULL) {
            if (!ctx->o->quiet)
                fprintf(stderr, "gwsim clients: %s\n", err);
            rc = -1;
            break;
        }
        rows = json_object_get(r, "sessions");
        total = json_integer_value(json_object_get(r, "total"));
        json_array_foreach(rows, i, row)
        {
            char val[SIM_ADDR_STRLEN];
            bool added;
            const char *ip = json_string_value(json_object_get(row, "nat_ip"));
            flow_key(key, sizeof(key), json_string_value(json_object_get(row, "proto")) ?: "",
                     json_string_value(json_object_get(row, "client_ip")) ?: "",
                     json_integer_value(json_object_get(row, "client_port")));
            snprintf(val, sizeof(val), ip && strchr(ip, ':') ? "[%s]:%lld" : "%s:%lld",
                     ip ? ip : "", json_integer_value(json_object_get(row, "nat_port")));
            if (strset_add(&map, key, val, &added) < 0)
                rc = -1;
        }
        offset += (json_int_t)json_array_size(rows);
        if (json_array_size(rows) == 0)
            offset = total;
        json_decref(r);
    } while (rc == 0 && offset < total);
    for (size_t i = 0; i < n; i++) {
        struct flow *f = flows[i];
        bool added = false;
        long slot;
        if (rc < 0) {
            res[i] = SIM_FLOW_CONTROL_ERROR;
            continue;
        }
        flow_key(key, sizeof(key), f->proto == 6 ? "tcp" : "udp", f->src_ip, f->src_port);
        /* look up without keeping: a miss adds a key with no value */
        slot = strset_add(&map, key, NULL, &added);
        if (slot < 0 || added || map.vals[slot] == NULL) {
            res[i] = slot < 0 ? SIM_FLOW_CONTROL_ERROR : SIM_FLOW_NAT_MISSING;
            continue;
        }
        if (strcmp(map.vals[slot], f->peer) != 0) {
            if (!ctx->o->quiet)
                fprintf(stderr, "gwsim clients: flow %s: backend saw %s, gwd's table says %s\n",
                        f->src, f->peer, map.vals[slot]);
            res[i] = SIM_FLOW_NAT_MISMATCH;
        } else {
            res[i] = SIM_FLOW_OK;
        }
    }
    strset_free(&map);
    return rc;
}

/* Parses "gwsim-backend NAME peer=ADDR" (no newline). */
static int parse_hello(struct flow *f, const char *line)
{
    const char *p = line + 14, *sp;

    if (strncmp(line, "gwsim-backend ", 14) != 0)
        return -1;
    sp = strchr(p, ' ');
    if (sp == NULL || sp == p || (size_t)(sp - p) >= sizeof(f->backend) ||
        strncmp(sp + 1, "peer=", 5) != 0 || strlen(sp + 6) >= sizeof(f->peer) || sp[6] == '\0')
        return -1;
    memcpy(f->backend, p, (size_t)(sp - p));
    f->backend[sp - p] = '\0';
    strcpy(f->peer, sp + 6);
    return 0;
}

/* ---- flow life ----------------------------------------------------------------------- */

static void arm_timer(struct flow *f, double ms)
{
    ev_timer_stop(f->ctx->loop, &f->tm);
    ev_timer_set(&f->tm, ms / 1000.0, 0.0);
    ev_timer_start(f->ctx->loop, &f->tm);
}

/* How long to wait for the current step: UDP requests wait one attempt's share. */
static double step_timeout(const struct flow *f)
{
    const struct sim_clients_opts *o = f->ctx->o;

    if (f->proto == 17 && f->state == FS_ECHO)
        return o->io_timeout_ms / (double)(o->udp_retries + 1);
    return o->io_timeout_ms;
}

static void flow_note_peer(struct flow *f)
{
    struct cl_ctx *ctx = f->ctx;
    char key[SIM_ADDR_STRLEN + 8];
    bool added;
    long slot;

    if (f->peer[0] == '\0')
        return;
    /* one NAT port per protocol: TCP and UDP port spaces are separate */
    snprintf(key, sizeof(key), "%s %s", f->proto == 6 ? "tcp" : "udp", f->peer);
    slot = strset_add(&ctx->nat_ports, key, f->backend, &added);
    if (slot < 0) {
        ctx->oom = 1;
        return;
    }
    if (!added && !ctx->nat_ports.flag[slot] && ctx->nat_ports.vals[slot] != NULL &&
        strcmp(ctx->nat_ports.vals[slot], f->backend) != 0) {
        ctx->nat_ports.flag[slot] = 1;
        ctx->reused_across_backends++;
    }
    if (strset_add(&ctx->backends, f->backend, NULL, &added) < 0)
        ctx->oom = 1;
}

static void flow_finish(struct flow *f, enum sim_flow_result r)
{
    struct cl_ctx *ctx = f->ctx;

    ev_io_stop(ctx->loop, &f->io);
    ev_timer_stop(ctx->loop, &f->tm);
    if (f->fd >= 0)
        close(f->fd);
    ctx->results[r]++;
    if (r == SIM_FLOW_OK) {
        if (f->proto == 6)
            ctx->tcp_ok++;
        else
            ctx->udp_ok++;
    }
    flow_note_peer(f);
    if (ctx->each != NULL) {
        struct sim_flow_report rep;
        memset(&rep, 0, sizeof(rep));
        rep.index = f->index;
        rep.proto = f->proto;
        snprintf(rep.src, sizeof(rep.src), "%s", f->src);
        snprintf(rep.peer, sizeof(rep.peer), "%s", f->peer);
        snprintf(rep.backend, sizeof(rep.backend), "%s", f->backend);
        rep.result = r;
        rep.err = f->err;
        ctx->each(ctx->each_arg, &rep);
    }
    for (size_t i = 0; i < ctx->n_pending; i++) {
        if (ctx->pending[i] == f) {
            ctx->pending[i] = ctx->pending[--ctx->n_pending];
            break;
        }
    }
    if (f->live_idx < ctx->n_live && ctx->live[f->live_idx] == f) {
        ctx->live[f->live_idx] = ctx->live[--ctx->n_live];
        ctx->live[f->live_idx]->live_idx = f->live_idx;
    }
    free(f->expect);
    free(f->prev);
    free(f);
    ctx->active--;
    ctx->done++;
    start_more(ctx);
}

/* Sends the current request (TCP: as much as fits). Returns a result or -1 to go on. */
static int send_request(struct flow *f)
{
    const struct sim_clients_opts *o = f->ctx->o;

    if (f->sent == 0 && f->got == 0) {
        fill_payload(f->expect, o->size, f->index, f->req);
        f->t_req = sim_now_ms();
        f->tries = 0;
    }
    if (f->proto == 17) {
        if (send(f->fd, f->expect, o->size, 0) < 0)
            return errno == ECONNREFUSED ? SIM_FLOW_CONNECT_REFUSED : SIM_FLOW_SOCKET_ERROR;
        f->sent = o->size;
        return -1;
    }
    while (f->sent < o->size) {
        ssize_t n = send(f->fd, f->expect + f->sent, o->size - f->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return -1;
            if (errno == EINTR)
                continue;
            return errno == ECONNRESET || errno == EPIPE ? SIM_FLOW_RESET : SIM_FLOW_SOCKET_ERROR;
        }
        f->sent += (size_t)n;
    }
    return -1;
}

static void update_events(struct flow *f)
{
    int ev = EV_READ;

    if (f->state == FS_CHECK) {
        ev_io_stop(f->ctx->loop, &f->io);
        return;
    }
    if (f->proto == 6 && f->state != FS_HOLD && f->sent < f->ctx->o->size)
        ev |= EV_WRITE;
    if (f->state == FS_HOLD)
        ev = EV_READ; /* to see a close while holding */
    ev_io_stop(f->ctx->loop, &f->io);
    ev_io_set(&f->io, f->fd, ev);
    ev_io_start(f->ctx->loop, &f->io);
}

/* After the request's echo and (for the first) the NAT check: next request,
 * or hold. Returns a result or -1 to go on. */
static int request_next(struct flow *f)
{
    struct cl_ctx *ctx = f->ctx;

    f->req++;
    f->sent = f->got = 0;
    if (f->req >= ctx->o->requests) {
        if (ctx->o->hold_ms <= 0)
            return SIM_FLOW_OK;
        f->state = FS_HOLD;
        arm_timer(f, ctx->o->hold_ms);
        return -1;
    }
    f->state = FS_ECHO;
    arm_timer(f, step_timeout(f));
    return send_request(f);
}

/* The current request's echo is complete. The first one of a flow waits for
 * the NAT check (batched with other flows' on the next loop turn, so one slow
 * query never stalls the flows in between). Returns a result or -1. */
static int request_done(struct flow *f)
{
    struct cl_ctx *ctx = f->ctx;

    record_latency(ctx, sim_now_ms() - f->t_req);
    ctx->bytes += 2 * ctx->o->size;
    if (f->prev != NULL) {
        memcpy(f->prev, f->expect, ctx->o->size);
        f->have_prev = true;
    }
    if (!f->checked && ctx->have_ctl) {
        if (ctx->n_pending == ctx->cap_pending) {
            size_t nc = ctx->cap_pending ? ctx->cap_pending * 2 : 64;
            struct flow **np = realloc(ctx->pending, nc * sizeof(*np));
            if (np == NULL)
                return SIM_FLOW_SOCKET_ERROR;
            ctx->pending = np;
            ctx->cap_pending = nc;
        }
        ctx->pending[ctx->n_pending++] = f;
        f->state = FS_CHECK;
        if (!ev_is_active(&ctx->check_w)) {
            ev_timer_set(&ctx->check_w, 0.0, 0.0);
            ev_timer_start(ctx->loop, &ctx->check_w);
        }
        return -1;
    }
    f->checked = true;
    return request_next(f);
}

static void update_events(struct flow *f);

static void check_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct cl_ctx *ctx = (struct cl_ctx *)((char *)w - offsetof(struct cl_ctx, check_w));
    struct flow **flows = ctx->pending;
    size_t n = ctx->n_pending;
    enum sim_flow_result *res;

    (void)loop;
    (void)revents;
    ctx->pending = NULL;
    ctx->n_pending = ctx->cap_pending = 0;
    if (n == 0) {
        free(flows);
        return;
    }
    res = calloc(n, sizeof(*res));
    if (res == NULL) {
        ctx->oom = 1;
        for (size_t i = 0; i < n; i++)
            flows[i]->checked = true;
    } else if (n <= 4) {
        for (size_t i = 0; i < n; i++)
            res[i] = nat_check_one(flows[i]);
    } else {
        nat_check_batch(ctx, flows, n, res);
    }
    /* Resume them. Finishing one may start others (they queue for the next turn);
     * it never ends another flow of this list. */
    for (size_t i = 0; i < n; i++) {
        struct flow *f = flows[i];
        int r = res != NULL ? (int)res[i] : SIM_FLOW_CONTROL_ERROR;
        f->checked = true;
        if (r == SIM_FLOW_OK)
            r = request_next(f);
        if (r >= 0)
            flow_finish(f, (enum sim_flow_result)r);
        else
            update_events(f);
    }
    free(res);
    free(flows);
}

static int on_tcp_readable(struct flow *f)
{
    const struct sim_clients_opts *o = f->ctx->o;
    unsigned char buf[65536];

    for (;;) {
        ssize_t n = recv(f->fd, buf, sizeof(buf), 0);
        size_t off = 0;

        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return -1;
            if (errno == EINTR)
                continue;
            if (f->state == FS_HELLO)
                return errno == ECONNRESET ? SIM_FLOW_RESET_BEFORE_HELLO : SIM_FLOW_SOCKET_ERROR;
            return errno == ECONNRESET ? SIM_FLOW_RESET : SIM_FLOW_SOCKET_ERROR;
        }
        if (n == 0) {
            if (f->state == FS_HELLO)
                return SIM_FLOW_CLOSED_BEFORE_HELLO;
            if (f->state == FS_HOLD)
                return SIM_FLOW_CLOSED_EARLY;
            return SIM_FLOW_CLOSED_EARLY;
        }
        if (f->state == FS_HOLD)
            return SIM_FLOW_REPLY_MISMATCH; /* nothing may come while holding */
        while (off < (size_t)n) {
            if (f->state == FS_HELLO) {
                unsigned char c = buf[off++];
                if (f->hello_len + 1 >= HELLO_MAX)
                    return SIM_FLOW_BAD_HELLO;
                if (c != '\n') {
                    f->hello[f->hello_len++] = (char)c;
                    continue;
                }
                f->hello[f->hello_len] = '\0';
                if (parse_hello(f, f->hello) < 0)
                    return SIM_FLOW_BAD_HELLO;
                f->state = FS_ECHO;
                continue;
            }
            {
                size_t k = (size_t)n - off;
                int r;
                if (k > o->size - f->got)
                    k = o->size - f->got;
                if (memcmp(buf + off, f->expect + f->got, k) != 0)
                    return SIM_FLOW_REPLY_MISMATCH;
                f->got += k;
                off += k;
                if (f->got < o->size)
                    continue;
                if (off < (size_t)n && f->req + 1 >= o->requests)
                    return SIM_FLOW_REPLY_MISMATCH; /* more than was sent */
                r = request_done(f);
                if (r >= 0)
                    return r;
                if ((f->state == FS_HOLD || f->state == FS_CHECK) && off < (size_t)n)
                    return SIM_FLOW_REPLY_MISMATCH;
                if (f->state == FS_CHECK)
                    return -1;
            }
        }
    }
}

static int on_udp_readable(struct flow *f)
{
    const struct sim_clients_opts *o = f->ctx->o;
    unsigned char *buf = f->ctx->udp_buf;
    ssize_t n = recv(f->fd, buf, sizeof(f->ctx->udp_buf), 0);
    unsigned char *nl;
    size_t hl;

    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return -1;
        return errno == ECONNREFUSED ? SIM_FLOW_CONNECT_REFUSED : SIM_FLOW_SOCKET_ERROR;
    }
    nl = memchr(buf, '\n', (size_t)n < HELLO_MAX ? (size_t)n : HELLO_MAX);
    if (nl != NULL && f->have_prev && (size_t)n - (size_t)(nl - buf) - 1 == o->size &&
        memcmp(nl + 1, f->prev, o->size) == 0) {
        f->ctx->udp_duplicates++; /* the late answer to a request we resent */
        return -1;
    }
    if (f->state == FS_HOLD)
        return SIM_FLOW_REPLY_MISMATCH;
    if (nl == NULL)
        return SIM_FLOW_BAD_HELLO;
    hl = (size_t)(nl - buf);
    memcpy(f->hello, buf, hl);
    f->hello[hl] = '\0';
    if (parse_hello(f, f->hello) < 0)
        return SIM_FLOW_BAD_HELLO;
    if ((size_t)n - hl - 1 != o->size || memcmp(nl + 1, f->expect, o->size) != 0)
        return SIM_FLOW_REPLY_MISMATCH;
    f->got = o->size;
    return request_done(f);
}

static void flow_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct flow *f = (struct flow *)((char *)w - offsetof(struct flow, io));
    int r = -1;

    (void)loop;
    if (f->state == FS_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof(err);
        getsockopt(f->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err != 0) {
            f->err = err;
            flow_finish(f, err == ECONNREFUSED    ? SIM_FLOW_CONNECT_REFUSED
                           : err == EADDRNOTAVAIL ? SIM_FLOW_CONNECT_EADDRNOTAVAIL
                           : err == ETIMEDOUT     ? SIM_FLOW_CONNECT_TIMEOUT
                           : err == ECONNRESET    ? SIM_FLOW_RESET_BEFORE_HELLO
                                                  : SIM_FLOW_CONNECT_ERROR);
            return;
        }
        f->state = FS_HELLO;
        arm_timer(f, f->ctx->o->io_timeout_ms);
        r = send_request(f);
    } else {
        if ((revents & EV_READ) != 0)
            r = f->proto == 6 ? on_tcp_readable(f) : on_udp_readable(f);
        if (r < 0 && (revents & EV_WRITE) != 0 && f->proto == 6 && f->state != FS_HOLD)
            r = send_request(f);
    }
    if (r >= 0) {
        flow_finish(f, (enum sim_flow_result)r);
        return;
    }
    update_events(f);
}

static void flow_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct flow *f = (struct flow *)((char *)w - offsetof(struct flow, tm));

    (void)loop;
    (void)revents;
    if (f->proto == 17 && f->state == FS_ECHO && f->tries < f->ctx->o->udp_retries) {
        f->tries++;
        f->ctx->udp_resent++;
        if (send(f->fd, f->expect, f->ctx->o->size, 0) < 0 && errno == ECONNREFUSED) {
            flow_finish(f, SIM_FLOW_CONNECT_REFUSED);
            return;
        }
        arm_timer(f, step_timeout(f));
        return;
    }
    if (f->state == FS_HOLD)
        flow_finish(f, SIM_FLOW_OK);
    else
        flow_finish(f, f->state == FS_CONNECTING ? SIM_FLOW_CONNECT_TIMEOUT : SIM_FLOW_TIMEOUT);
}

/* Binds fd to the flow's source address per the port mode. Returns 0 or a result. */
static int flow_bind(struct flow *f, size_t ipi, struct sockaddr_storage *ss, socklen_t sl)
{
    struct cl_ctx *ctx = f->ctx;
    const struct sim_clients_opts *o = ctx->o;
    int one = 1, tries = o->port_mode == SIM_PORT_FIXED || o->port_mode == SIM_PORT_OS ? 1 : 8;

    if (o->port_mode == SIM_PORT_OS && f->proto == 6)
        setsockopt(f->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    if (o->port_mode == SIM_PORT_FIXED || o->port_mode == SIM_PORT_SEQUENTIAL)
        setsockopt(f->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    for (int t = 0; t < tries; t++) {
        uint16_t port = 0;
        switch (o->port_mode) {
        case SIM_PORT_OS:
            port = 0;
            break;
        case SIM_PORT_SEQUENTIAL:
            port = ctx->seq_port[ipi];
            ctx->seq_port[ipi] = port >= 60999 ? 40000 : (uint16_t)(port + 1);
            break;
        case SIM_PORT_RANDOM:
            port = (uint16_t)(32768 + sim_rng_below(&ctx->rng, 60999 - 32768 + 1));
            break;
        case SIM_PORT_FIXED:
            port = o->fixed_port;
            break;
        }
        sim_sockaddr_set_port((struct sockaddr *)ss, port);
        if (bind(f->fd, (struct sockaddr *)ss, sl) == 0)
            return 0;
        f->err = errno;
        if (errno != EADDRINUSE)
            break;
    }
    return f->err == EADDRINUSE      ? SIM_FLOW_BIND_EADDRINUSE
           : f->err == EADDRNOTAVAIL ? SIM_FLOW_BIND_EADDRNOTAVAIL
                                     : SIM_FLOW_BIND_ERROR;
}

static void flow_start(struct cl_ctx *ctx, uint64_t index)
{
    const struct sim_clients_opts *o = ctx->o;
    uint64_t client = index % o->clients;
    size_t ipi = (size_t)(client % o->n_src);
    struct flow *f = calloc(1, sizeof(*f));
    struct sockaddr_storage ss;
    socklen_t sl;
    int r;

    ctx->started++;
    ctx->active++;
    if (f == NULL || (f->expect = malloc(o->size ? o->size : 1)) == NULL) {
        free(f);
        ctx->oom = 1;
        ctx->active--;
        ctx->done++;
        ctx->results[SIM_FLOW_SOCKET_ERROR]++;
        return;
    }
    f->ctx = ctx;
    f->index = index;
    f->fd = -1;
    f->proto = o->tcp && o->udp ? (index % 2 == 0 ? 6 : 17) : o->tcp ? 6 : 17;
    ev_init(&f->io, flow_io_cb);
    ev_init(&f->tm, flow_timer_cb);
    if (ctx->n_live == ctx->cap_live) {
        size_t nc = ctx->cap_live ? ctx->cap_live * 2 : 256;
        struct flow **nl = realloc(ctx->live, nc * sizeof(*nl));
        if (nl == NULL) {
            ctx->oom = 1;
            flow_finish(f, SIM_FLOW_SOCKET_ERROR);
            return;
        }
        ctx->live = nl;
        ctx->cap_live = nc;
    }
    f->live_idx = ctx->n_live;
    ctx->live[ctx->n_live++] = f;
    if (!o->src_auto && strset_add(&ctx->client_ips, o->src_ips[ipi], NULL, NULL) < 0)
        ctx->oom = 1;
    sim_parse_ip(o->src_ips[ipi], 0, &ss, &sl);
    f->fd = socket(ss.ss_family,
                   (f->proto == 6 ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (f->fd < 0) {
        f->err = errno;
        flow_finish(f, SIM_FLOW_SOCKET_ERROR);
        return;
    }
    r = flow_bind(f, ipi, &ss, sl);
    if (r != 0) {
        flow_finish(f, (enum sim_flow_result)r);
        return;
    }
    if (connect(f->fd, (const struct sockaddr *)&o->gateway, o->gateway_len) < 0 &&
        errno != EINPROGRESS) {
        f->err = errno;
        flow_finish(f, errno == EADDRNOTAVAIL  ? SIM_FLOW_CONNECT_EADDRNOTAVAIL
                       : errno == ECONNREFUSED ? SIM_FLOW_CONNECT_REFUSED
                                               : SIM_FLOW_CONNECT_ERROR);
        return;
    }
    {
        struct sockaddr_storage local;
        socklen_t ll = sizeof(local);
        getsockname(f->fd, (struct sockaddr *)&local, &ll);
        sim_sockaddr_ip((struct sockaddr *)&local, f->src_ip);
        f->src_port = sim_sockaddr_port((struct sockaddr *)&local);
        sim_sockaddr_format((struct sockaddr *)&local, f->src);
    }
    if (o->src_auto && strset_add(&ctx->client_ips, f->src_ip, NULL, NULL) < 0)
        ctx->oom = 1;
    if (strset_add(&ctx->tuples, f->src, NULL, NULL) < 0)
        ctx->oom = 1;
    if (f->proto == 6) {
        f->state = FS_CONNECTING;
        arm_timer(f, o->io_timeout_ms);
        ev_io_set(&f->io, f->fd, EV_WRITE);
        ev_io_start(ctx->loop, &f->io);
        return;
    }
    f->state = FS_ECHO;
    if (o->udp_retries > 0 && (f->prev = malloc(o->size)) == NULL) {
        flow_finish(f, SIM_FLOW_SOCKET_ERROR);
        return;
    }
    arm_timer(f, step_timeout(f));
    r = send_request(f);
    if (r >= 0) {
        flow_finish(f, (enum sim_flow_result)r);
        return;
    }
    ev_io_set(&f->io, f->fd, EV_READ);
    ev_io_start(ctx->loop, &f->io);
}

static void start_more(struct cl_ctx *ctx)
{
    const struct sim_clients_opts *o = ctx->o;
    double now = sim_now_ms() - ctx->t0;

    while (ctx->started < ctx->total && ctx->active < o->concurrency) {
        if (o->ramp_ms > 0) {
            double at = o->ramp_ms * (double)ctx->started / (double)ctx->total;
            if (at > now) {
                if (!ev_is_active(&ctx->start_w)) {
                    ev_timer_set(&ctx->start_w, (at - now) / 1000.0, 0.0);
                    ev_timer_start(ctx->loop, &ctx->start_w);
                }
                return;
            }
        }
        flow_start(ctx, ctx->started);
    }
    if (ctx->done == ctx->total)
        ev_break(ctx->loop, EVBREAK_ALL);
}

static void start_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct cl_ctx *ctx = (struct cl_ctx *)((char *)w - offsetof(struct cl_ctx, start_w));

    (void)loop;
    (void)revents;
    start_more(ctx);
}

static void progress_print(struct cl_ctx *ctx, bool final)
{
    uint64_t failed = ctx->done - ctx->results[SIM_FLOW_OK];

    if (ctx->tty) {
        int width = 30, fill = ctx->total ? (int)(width * ctx->done / ctx->total) : width;
        fprintf(stderr, "\r[%.*s%*s] %llu/%llu ok=%llu failed=%llu open=%llu%s", fill,
                "##############################", width - fill, "", (unsigned long long)ctx->done,
                (unsigned long long)ctx->total, (unsigned long long)ctx->results[SIM_FLOW_OK],
                (unsigned long long)failed, (unsigned long long)ctx->active, final ? "\n" : "");
    } else {
        fprintf(stderr, "gwsim clients: %llu/%llu done, ok=%llu failed=%llu open=%llu\n",
                (unsigned long long)ctx->done, (unsigned long long)ctx->total,
                (unsigned long long)ctx->results[SIM_FLOW_OK], (unsigned long long)failed,
                (unsigned long long)ctx->active);
    }
}

static void progress_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct cl_ctx *ctx = (struct cl_ctx *)((char *)w - offsetof(struct cl_ctx, progress_w));

    (void)loop;
    (void)revents;
    progress_print(ctx, false);
}

static void deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct cl_ctx *ctx = (struct cl_ctx *)((char *)w - offsetof(struct cl_ctx, deadline_w));

    (void)revents;
    /* no new flows; the open ones fail as timed out */
    ctx->results[SIM_FLOW_NOT_STARTED] += ctx->total - ctx->started;
    ctx->done += ctx->total - ctx->started;
    ctx->started = ctx->total;
    while (ctx->n_live > 0)
        flow_finish(ctx->live[ctx->n_live - 1], SIM_FLOW_TIMEOUT);
    ev_break(loop, EVBREAK_ALL);
}

/* ---- summary ----------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static double pct(const double *v, size_t n, double p)
{
    size_t i;

    if (n == 0)
        return 0;
    i = (size_t)ceil(p * (double)n) - 1;
    if (i >= n)
        i = n - 1;
    return v[i];
}

/* The gateway's refusal counters (show stats: mappings.refused), or NULL. */
static json_t *gateway_refusals(struct cl_ctx *ctx)
{
    char err[256];
    json_t *st, *ref;

    if (!ctx->have_ctl)
        return NULL;
    st = sim_ctl_call(&ctx->ctl, "show stats", NULL, err, sizeof(err));
    if (st == NULL)
        return NULL;
    ref = json_incref(json_object_get(json_object_get(st, "mappings"), "refused"));
    json_decref(st);
    return json_is_object(ref) ? ref : (json_decref(ref), NULL);
}

static json_t *build_summary(struct cl_ctx *ctx, json_t *ref_before, json_t *ref_after)
{
    const struct sim_clients_opts *o = ctx->o;
    json_t *s = json_object(), *fails = json_object(), *lat = json_object(), *gw = json_object();
    double secs = (ctx->t_end - ctx->t0) / 1000.0;
    uint64_t failed = 0;
    char gwtext[SIM_ADDR_STRLEN];

    qsort(ctx->lat, ctx->n_lat, sizeof(double), cmp_double);
    for (int r = 1; r < SIM_FLOW_RESULT_COUNT; r++) {
        failed += ctx->results[r];
        if (ctx->results[r])
            json_object_set_new(fails, result_names[r], json_integer((json_int_t)ctx->results[r]));
    }
    json_object_set_new(
        s, "gateway",
        json_string(sim_sockaddr_format((const struct sockaddr *)&o->gateway, gwtext)));
    json_object_set_new(s, "flows", json_integer((json_int_t)ctx->total));
    json_object_set_new(s, "ok", json_integer((json_int_t)ctx->results[SIM_FLOW_OK]));
    json_object_set_new(s, "ok_tcp", json_integer((json_int_t)ctx->tcp_ok));
    json_object_set_new(s, "ok_udp", json_integer((json_int_t)ctx->udp_ok));
    json_object_set_new(s, "failed", json_integer((json_int_t)failed));
    json_object_set_new(s, "failed_by_reason", fails);
    json_object_set_new(s, "client_ips", json_integer((json_int_t)ctx->client_ips.n));
    json_object_set_new(s, "client_tuples", json_integer((json_int_t)ctx->tuples.n));
    json_object_set_new(s, "nat_ports", json_integer((json_int_t)ctx->nat_ports.n));
    json_object_set_new(s, "backends", json_integer((json_int_t)ctx->backends.n));
    json_object_set_new(s, "nat_ports_reused_across_backends",
                        json_integer((json_int_t)ctx->reused_across_backends));
    json_object_set_new(s, "nat_checked", json_boolean(ctx->have_ctl));
    json_object_set_new(s, "udp_resent", json_integer((json_int_t)ctx->udp_resent));
    json_object_set_new(s, "udp_duplicates", json_integer((json_int_t)ctx->udp_duplicates));
    if (ref_after != NULL) {
        const char *k;
        json_t *v;
        json_object_foreach(ref_after, k, v)
        {
            json_int_t before = json_integer_value(json_object_get(ref_before, k));
            json_int_t d = json_integer_value(v) - before;
            if (d != 0)
                json_object_set_new(gw, k, json_integer(d));
        }
    }
    json_object_set_new(s, "refused_by_gateway", ref_after != NULL ? gw : json_null());
    if (ref_after == NULL)
        json_decref(gw);
    json_object_set_new(lat, "samples", json_integer((json_int_t)ctx->seen_lat));
    json_object_set_new(lat, "p50", json_real(pct(ctx->lat, ctx->n_lat, 0.50)));
    json_object_set_new(lat, "p99", json_real(pct(ctx->lat, ctx->n_lat, 0.99)));
    json_object_set_new(lat, "min", json_real(ctx->seen_lat ? ctx->lat_min : 0));
    json_object_set_new(lat, "max", json_real(ctx->seen_lat ? ctx->lat_max : 0));
    json_object_set_new(s, "latency_ms", lat);
    json_object_set_new(s, "seconds", json_real(secs));
    json_object_set_new(s, "flows_per_second", json_real(secs > 0 ? ctx->done / secs : 0));
    json_object_set_new(s, "bytes", json_integer((json_int_t)ctx->bytes));
    json_object_set_new(s, "mbit_per_second",
                        json_real(secs > 0 ? ctx->bytes * 8.0 / 1e6 / secs : 0));
    return s;
}

static void print_summary(FILE *out, json_t *s)
{
    const char *k;
    json_t *v, *lat = json_object_get(s, "latency_ms"),
               *gw = json_object_get(s, "refused_by_gateway");

#define JI(name) ((long long)json_integer_value(json_object_get(s, name)))
    fprintf(out, "gwsim clients -> %s\n", json_string_value(json_object_get(s, "gateway")));
    fprintf(out, "  %-34s %lld (tcp %lld, udp %lld)\n", "flows ok", JI("ok"), JI("ok_tcp"),
            JI("ok_udp"));
    fprintf(out, "  %-34s %lld\n", "flows failed", JI("failed"));
    json_object_foreach(json_object_get(s, "failed_by_reason"), k, v)
        fprintf(out, "    %-32s %lld\n", k, (long long)json_integer_value(v));
    fprintf(out, "  %-34s %lld\n", "distinct client IPs", JI("client_ips"));
    fprintf(out, "  %-34s %lld\n", "distinct client ip:port tuples", JI("client_tuples"));
    fprintf(out, "  %-34s %lld (seen by %lld backend%s)\n", "distinct NAT ip:port used",
            JI("nat_ports"), JI("backends"), JI("backends") == 1 ? "" : "s");
    fprintf(out, "  %-34s %lld\n", "NAT ports reused across backends",
            JI("nat_ports_reused_across_backends"));
    if (JI("udp_resent") || JI("udp_duplicates"))
        fprintf(out, "  %-34s %lld resent, %lld late duplicates ignored\n", "UDP requests",
                JI("udp_resent"), JI("udp_duplicates"));
    fprintf(out, "  %-34s %s\n", "backend peer == gwd NAT table",
            json_is_true(json_object_get(s, "nat_checked")) ? "checked for every flow"
                                                            : "not checked (no --control)");
    if (json_is_object(gw)) {
        fprintf(out, "  %-34s %s\n", "refused by the gateway", json_object_size(gw) ? "" : "none");
        json_object_foreach(gw, k, v)
            fprintf(out, "    %-32s %lld\n", k, (long long)json_integer_value(v));
    }
    fprintf(out, "  %-34s min %.3f  p50 %.3f  p99 %.3f  max %.3f\n", "request latency (ms)",
            json_real_value(json_object_get(lat, "min")),
            json_real_value(json_object_get(lat, "p50")),
            json_real_value(json_object_get(lat, "p99")),
            json_real_value(json_object_get(lat, "max")));
    fprintf(out, "  %-34s %.1f flows/s, %.2f Mbit/s over %.2f s\n", "throughput",
            json_real_value(json_object_get(s, "flows_per_second")),
            json_real_value(json_object_get(s, "mbit_per_second")),
            json_real_value(json_object_get(s, "seconds")));
#undef JI
}

/* ---- run ------------------------------------------------------------------------------------ */

void sim_clients_opts_default(struct sim_clients_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->clients = 10;
    o->flows = 1;
    o->tcp = true;
    o->concurrency = 100;
    o->timeout_ms = 30000;
    o->io_timeout_ms = 5000;
    o->size = 64;
    o->requests = 1;
    o->udp_retries = 2;
    o->seed = 1;
}

void sim_clients_opts_free(struct sim_clients_opts *o)
{
    for (size_t i = 0; i < o->n_src; i++)
        free(o->src_ips[i]);
    free(o->src_ips);
    o->src_ips = NULL;
    o->n_src = 0;
}

int sim_clients_run(const struct sim_clients_opts *o, sim_flow_fn each, void *arg, json_t **summary)
{
    struct cl_ctx *ctx;
    json_t *ref_before = NULL, *ref_after = NULL;
    char err[256];
    int rc = 0;

    if (o->timeout_ms <= 0 || o->io_timeout_ms <= 0)
        return -EINVAL; /* every flow would time out at once */
    ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return -ENOMEM;
    ctx->o = o;
    ctx->each = each;
    ctx->each_arg = arg;
    ctx->total = o->clients * o->flows;
    ctx->tty = o->progress && isatty(2);
    sim_rng_seed(&ctx->rng, o->seed);
    ctx->seq_port = malloc(o->n_src * sizeof(uint16_t));
    ctx->lat = malloc(LAT_MAX * sizeof(double));
    ctx->loop = ev_loop_new(EVFLAG_AUTO);
    if (ctx->seq_port == NULL || ctx->lat == NULL || ctx->loop == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < o->n_src; i++)
        ctx->seq_port[i] = 40000;
    if (o->control != NULL) {
        if (sim_ctl_open(&ctx->ctl, o->control, 5000, err, sizeof(err)) < 0) {
            fprintf(stderr, "gwsim clients: %s\n", err);
            rc = 3;
            goto out;
        }
        ctx->have_ctl = true;
        ref_before = gateway_refusals(ctx);
    }
    signal(SIGPIPE, SIG_IGN);
    ev_timer_init(&ctx->start_w, start_cb, 0.0, 0.0);
    ev_timer_init(&ctx->check_w, check_cb, 0.0, 0.0);
    ev_timer_init(&ctx->progress_w, progress_cb, ctx->tty ? 0.2 : 1.0, ctx->tty ? 0.2 : 1.0);
    ev_timer_init(&ctx->deadline_w, deadline_cb, o->timeout_ms / 1000.0, 0.0);
    if (o->progress && !o->quiet)
        ev_timer_start(ctx->loop, &ctx->progress_w);
    ev_timer_start(ctx->loop, &ctx->deadline_w);
    ctx->t0 = sim_now_ms();
    start_more(ctx);
    if (ctx->done < ctx->total)
        ev_run(ctx->loop, 0);
    ctx->t_end = sim_now_ms();
    if (o->progress && !o->quiet)
        progress_print(ctx, true);
    ref_after = gateway_refusals(ctx);
    if (summary != NULL)
        *summary = build_summary(ctx, ref_before, ref_after);
    rc = ctx->results[SIM_FLOW_OK] == ctx->total && !ctx->oom ? 0 : 1;
out:
    json_decref(ref_before);
    json_decref(ref_after);
    while (ctx->n_live > 0) { /* only on a setup failure */
        struct flow *f = ctx->live[--ctx->n_live];
        close(f->fd);
        free(f->expect);
        free(f);
    }
    free(ctx->live);
    free(ctx->pending);
    if (ctx->have_ctl)
        sim_ctl_close(&ctx->ctl);
    if (ctx->loop != NULL)
        ev_loop_destroy(ctx->loop);
    strset_free(&ctx->tuples);
    strset_free(&ctx->nat_ports);
    strset_free(&ctx->client_ips);
    strset_free(&ctx->backends);
    free(ctx->seq_port);
    free(ctx->lat);
    free(ctx);
    return rc;
}

/* ---- command line -------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gwsim clients --gateway HOST:PORT [OPTIONS]\n"
            "N clients from M source IPs, K flows each, to one gateway address; every reply is\n"
            "checked byte for byte; with --control, the peer each backend saw is checked against\n"
            "gwd's NAT table. Exit 0 when every flow passed, 1 when any failed, 2 usage, 3 when\n"
            "the control socket cannot be reached.\n"
            "  --gateway HOST:PORT   where to send (the only address gwsim sends to); HOST is\n"
            "                        an IPv4 address, [IPv6], or a name (resolved once, at start:\n"
            "                        its first IPv4 address, else its first IPv6 one)\n"
            "  --clients N           clients (default 10)\n"
            "  --ips M               source IPs used (default: min(N, 50); one with --src auto)\n"
            "  --src LIST|auto       source addresses: comma-separated IPs and/or IPv4 CIDRs,\n"
            "                        or auto: the kernel picks the address (by its routes),\n"
            "                        gwsim binds only the --src-port policy. Default:\n"
            "                        127.1.0.0/16 (127.1.0.1, 127.1.0.2, ...) toward an IPv4\n"
            "                        loopback gateway, auto toward any other\n"
            "  --flows K             flows per client (default 1)\n"
            "  --proto P             tcp (default) | udp | both (alternating)\n"
            "  --concurrency C       flows open at once at most (default 100)\n"
            "  --ramp-up T           spread flow starts over T (e.g. 2s)\n"
            "  --hold T              keep each flow open T after its last reply\n"
            "  --size BYTES          bytes per request (default 64, at most 65000 for udp)\n"
            "  --requests R          requests per flow (default 1)\n"
            "  --src-port MODE       os (default) | sequential | random | fixed:PORT\n"
            "  --control PATH        gwd's control socket: check the NAT table for every flow\n"
            "  --timeout T           the whole run (default 30s)\n"
            "  --io-timeout T        each connect/reply (default 5s)\n"
            "  --udp-retries N       resend an unanswered UDP request up to N times (default 2);\n"
            "                        each attempt waits io-timeout / (N + 1)\n"
            "  --seed S              for random source ports\n"
            "  --json                print the summary as JSON\n"
            "  --quiet               no progress, no per-flow complaints\n");
}

/* Adds the addresses of `item` (an IP or a CIDR) until `want` are listed. */
static int add_src(struct sim_clients_opts *o, const char *item, size_t want)
{
    char buf[64];
    char *slash;
    struct sockaddr_storage ss;
    socklen_t sl;
    uint64_t plen = 32;

    if (strlen(item) >= sizeof(buf))
        return -EINVAL;
    strcpy(buf, item);
    slash = strchr(buf, '/');
    if (slash != NULL) {
        *slash = '\0';
        if (sim_parse_u64(slash + 1, 8, 32, &plen) < 0)
            return -EINVAL;
    }
    if (sim_parse_ip(buf, 0, &ss, &sl) < 0)
        return -EINVAL;
    if (ss.ss_family != AF_INET || slash == NULL) {
        if (slash != NULL)
            return -EINVAL; /* IPv6 sources: list them one by one */
        char **n = realloc(o->src_ips, (o->n_src + 1) * sizeof(char *));
        if (n == NULL)
            return -ENOMEM;
        o->src_ips = n;
        o->src_ips[o->n_src++] = strdup(buf);
        return 0;
    }
    {
        uint32_t net = ntohl(((struct sockaddr_in *)(void *)&ss)->sin_addr.s_addr);
        uint64_t size = 1ULL << (32 - plen);
        uint32_t mask = plen == 32 ? 0xffffffffu : ~((1u << (32 - plen)) - 1);
        net &= mask;
        for (uint64_t h = size > 2 ? 1 : 0; h < size && o->n_src < want; h++) {
            struct in_addr a = {.s_addr = htonl(net + (uint32_t)h)};
            char ip[INET_ADDRSTRLEN];
            char **n;
            if (size > 2 && h == size - 1)
                break; /* broadcast */
            n = realloc(o->src_ips, (o->n_src + 1) * sizeof(char *));
            if (n == NULL)
                return -ENOMEM;
            o->src_ips = n;
            inet_ntop(AF_INET, &a, ip, sizeof(ip));
            o->src_ips[o->n_src++] = strdup(ip);
        }
    }
    return 0;
}

static int cbad(const char *opt, const char *val, const char *why)
{
    fprintf(stderr, "gwsim clients: %s%s: '%s': %s\n", opt[0] == '-' ? "" : "--", opt, val, why);
    return 2;
}

/* Fills o->src_ips from the comma-separated --src list (default 127.1.0.0/16),
 * at most `ips` addresses, all of one family. Returns 0 or the exit code 2. */
static int add_src_list(struct sim_clients_opts *o, const char *src, size_t ips)
{
    char *list = strdup(src != NULL ? src : "127.1.0.0/16"), *save = NULL;
    int rc = 0;

    if (list == NULL)
        return cbad("--src", src, strerror(ENOMEM));
    for (char *it = strtok_r(list, ",", &save); it != NULL && o->n_src < ips;
         it = strtok_r(NULL, ",", &save)) {
        if (add_src(o, it, ips) < 0) {
            rc = cbad("--src", it, "expected auto, or IPs and/or IPv4 CIDRs (/8 to /32)");
            break;
        }
    }
    free(list);
    if (rc == 0 && o->n_src == 0)
        rc = cbad("--src", src, "no address");
    for (size_t i = 1; rc == 0 && i < o->n_src; i++) {
        if ((strchr(o->src_ips[i], ':') != NULL) != (strchr(o->src_ips[0], ':') != NULL))
            rc = cbad("--src", src, "IPv4 and IPv6 sources cannot be mixed");
    }
    if (rc != 0)
        sim_clients_opts_free(o);
    return rc;
}

/*
 * Resolves --gateway into o->gateway: toward the family of the listed sources,
 * else any family (the first IPv4 answer first). With no source list
 * (o->n_src == 0), the sources become the kernel's choice (o->src_auto), except
 * when `src_default` and the gateway is an IPv4 loopback address: then the
 * default 127.1.0.0/16 list (`ips` addresses). Returns 0 or the exit code 2.
 */
static int resolve_gateway(struct sim_clients_opts *o, const char *gw, bool src_default,
                           size_t ips)
{
    int family = AF_UNSPEC, r;
    const char *why;
    char msg[160];
    struct sockaddr_storage ss;
    socklen_t sl;

    if (o->n_src > 0 && sim_parse_ip(o->src_ips[0], 0, &ss, &sl) == 0)
        family = ss.ss_family;
    r = sim_resolve_sockaddr(gw, family, &o->gateway, &o->gateway_len, &why);
    if (r == -ENOENT) {
        snprintf(msg, sizeof(msg), "cannot resolve the name: %s", why);
        return cbad("--gateway", gw, msg);
    }
    if (r < 0)
        return cbad("--gateway", gw, why);
    if (sim_sockaddr_port((struct sockaddr *)&o->gateway) == 0)
        return cbad("--gateway", gw, "the port must be 1-65535");
    if (o->n_src > 0)
        return 0;
    if (src_default && o->gateway.ss_family == AF_INET &&
        sim_sockaddr_is_loopback((struct sockaddr *)&o->gateway))
        return add_src_list(o, NULL, ips);
    o->src_ips = calloc(1, sizeof(char *));
    if (o->src_ips == NULL ||
        (o->src_ips[0] = strdup(o->gateway.ss_family == AF_INET6 ? "::" : "0.0.0.0")) == NULL)
        return cbad("--src", "auto", strerror(ENOMEM));
    o->n_src = 1;
    o->src_auto = true;
    return 0;
}

int sim_clients_main(int argc, char **argv)
{
    enum {
        O_GW = 256,
        O_CLIENTS,
        O_IPS,
        O_SRC,
        O_FLOWS,
        O_PROTO,
        O_CONC,
        O_RAMP,
        O_HOLD,
        O_SIZE,
        O_REQS,
        O_SPORT,
        O_CONTROL,
        O_TIMEOUT,
        O_IOTIMEOUT,
        O_SEED,
        O_JSON,
        O_QUIET,
        O_HELP,
        O_UDPRETRIES,
    };
    static const struct option lo[] = {
        {"gateway", 1, NULL, O_GW},
        {"clients", 1, NULL, O_CLIENTS},
        {"ips", 1, NULL, O_IPS},
        {"src", 1, NULL, O_SRC},
        {"flows", 1, NULL, O_FLOWS},
        {"proto", 1, NULL, O_PROTO},
        {"concurrency", 1, NULL, O_CONC},
        {"ramp-up", 1, NULL, O_RAMP},
        {"hold", 1, NULL, O_HOLD},
        {"size", 1, NULL, O_SIZE},
        {"requests", 1, NULL, O_REQS},
        {"src-port", 1, NULL, O_SPORT},
        {"control", 1, NULL, O_CONTROL},
        {"timeout", 1, NULL, O_TIMEOUT},
        {"io-timeout", 1, NULL, O_IOTIMEOUT},
        {"seed", 1, NULL, O_SEED},
        {"json", 0, NULL, O_JSON},
        {"udp-retries", 1, NULL, O_UDPRETRIES},
        {"quiet", 0, NULL, O_QUIET},
        {"help", 0, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    struct sim_clients_opts o;
    const char *src = NULL, *gw = NULL;
    bool src_auto = false;
    uint64_t ips = 0, v;
    json_t *summary = NULL;
    int ch, idx, rc;

    sim_clients_opts_default(&o);
    o.progress = true;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "h", lo, &idx)) != -1) {
        const char *name = ch >= 256 && ch != '?' ? lo[idx].name : "";
        double d;
        switch (ch) {
        case O_GW:
            gw = optarg;
            break;
        case O_CLIENTS:
        case O_IPS:
        case O_FLOWS:
        case O_CONC:
        case O_REQS:
        case O_SEED:
            if (sim_parse_u64(optarg, ch == O_SEED ? 0 : 1,
                              ch == O_CLIENTS ? 1000000
                              : ch == O_FLOWS ? 100000
                                              : UINT32_MAX,
                              &v) < 0)
                return cbad(name, optarg, "expected a positive whole number in range");
            if (ch == O_CLIENTS)
                o.clients = v;
            else if (ch == O_IPS)
                ips = v;
            else if (ch == O_FLOWS)
                o.flows = v;
            else if (ch == O_CONC)
                o.concurrency = v;
            else if (ch == O_REQS)
                o.requests = v;
            else
                o.seed = v;
            break;
        case O_UDPRETRIES:
            if (sim_parse_u64(optarg, 0, 10, &v) < 0)
                return cbad(name, optarg, "expected 0-10");
            o.udp_retries = v;
            break;
        case O_SIZE:
            if (sim_parse_u64(optarg, 1, 16u << 20, &v) < 0)
                return cbad(name, optarg, "expected 1 to 16777216 bytes");
            o.size = v;
            break;
        case O_SRC:
            src = optarg;
            src_auto = strcmp(optarg, "auto") == 0;
            break;
        case O_PROTO:
            if (strcmp(optarg, "tcp") == 0)
                o.tcp = true, o.udp = false;
            else if (strcmp(optarg, "udp") == 0)
                o.tcp = false, o.udp = true;
            else if (strcmp(optarg, "both") == 0)
                o.tcp = o.udp = true;
            else
                return cbad(name, optarg, "expected tcp, udp or both");
            break;
        case O_RAMP:
        case O_HOLD:
        case O_TIMEOUT:
        case O_IOTIMEOUT:
            if (sim_parse_duration_ms(optarg, &d) < 0 || d > 86400000.0)
                return cbad(name, optarg, "expected a duration up to 24h (e.g. 500ms, 2s)");
            /* a zero wait would fail every flow at once, not test anything */
            if ((ch == O_TIMEOUT || ch == O_IOTIMEOUT) && d < 1.0)
                return cbad(name, optarg, "expected a duration from 1ms up to 24h (e.g. 2s)");
            if (ch == O_RAMP)
                o.ramp_ms = d;
            else if (ch == O_HOLD)
                o.hold_ms = d;
            else if (ch == O_TIMEOUT)
                o.timeout_ms = d;
            else
                o.io_timeout_ms = d;
            break;
        case O_SPORT:
            if (strcmp(optarg, "os") == 0)
                o.port_mode = SIM_PORT_OS;
            else if (strcmp(optarg, "sequential") == 0)
                o.port_mode = SIM_PORT_SEQUENTIAL;
            else if (strcmp(optarg, "random") == 0)
                o.port_mode = SIM_PORT_RANDOM;
            else if (strncmp(optarg, "fixed:", 6) == 0 &&
                     sim_parse_u64(optarg + 6, 1, 65535, &v) == 0) {
                o.port_mode = SIM_PORT_FIXED;
                o.fixed_port = (uint16_t)v;
            } else
                return cbad(name, optarg, "expected os, sequential, random or fixed:PORT");
            break;
        case O_CONTROL:
            o.control = optarg;
            break;
        case O_JSON:
            o.json = true;
            break;
        case O_QUIET:
            o.quiet = true;
            break;
        case 'h':
        case O_HELP:
            return sim_usage_exit(usage, true);
        default:
            return sim_usage_exit(usage, false);
        }
    }
    if (sim_no_operands("clients", optind, argc, argv) != 0)
        return 2;
    if (gw == NULL) {
        fprintf(stderr, "gwsim clients: --gateway HOST:PORT is required\n");
        return 2;
    }
    if (o.udp && o.size > 65000)
        return cbad("--size", "udp", "a UDP request is at most 65000 bytes");
    if (o.clients * o.flows > 10000000)
        return cbad("--clients x --flows", "", "at most 10,000,000 flows per run");
    if (ips == 0)
        ips = o.clients < 50 ? o.clients : 50;
    rc = src == NULL || src_auto ? 0 : add_src_list(&o, src, (size_t)ips);
    if (rc != 0)
        return rc;
    rc = resolve_gateway(&o, gw, src == NULL, (size_t)ips);
    if (rc != 0) {
        sim_clients_opts_free(&o);
        return rc;
    }
    if (o.json || o.quiet)
        o.progress = !o.quiet && !o.json ? true : false;
    rc = sim_clients_run(&o, NULL, NULL, &summary);
    if (rc >= 0 && rc != 3 && summary != NULL) {
        if (o.json) {
            json_dumpf(summary, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
            printf("\n");
        } else {
            print_summary(stdout, summary);
        }
    }
    json_decref(summary);
    sim_clients_opts_free(&o);
    if (rc < 0) {
        fprintf(stderr, "gwsim clients: %s\n", strerror(-rc));
        return 1;
    }
    return rc;
}
