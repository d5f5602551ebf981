/*
 * gw_backend.c - backend pools: servers, balance (smooth weighted round
 * robin, least connections, source hash), max connections, active health
 * checks (TCP connect; UDP request/expected reply), admin drain/enable/
 * disable, and carrying servers over a reload.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "db/db.h"
#include "gwd.h"

static void check_schedule(struct gw_server *s, uint32_t after_ms);

/* ---- names -------------------------------------------------------------- */

const char *gw_server_health_name(enum gw_server_health h)
{
    return h == GW_HEALTH_UP ? "up" : "down";
}

const char *gw_server_admin_name(enum gw_server_admin a)
{
    switch (a) {
    case GW_ADMIN_ENABLED:
        return "enabled";
    case GW_ADMIN_DRAINING:
        return "draining";
    case GW_ADMIN_DISABLED:
        return "disabled";
    }
    return "?";
}

const char *gw_balance_name(enum gw_balance b)
{
    switch (b) {
    case GW_BALANCE_ROUNDROBIN:
        return "roundrobin";
    case GW_BALANCE_LEASTCONN:
        return "leastconn";
    case GW_BALANCE_SOURCE:
        return "source";
    }
    return "?";
}

/* Balance name to enum; -1 when unknown. */
int gw_balance_parse(const char *name)
{
    if (strcmp(name, "roundrobin") == 0)
        return GW_BALANCE_ROUNDROBIN;
    if (strcmp(name, "leastconn") == 0)
        return GW_BALANCE_LEASTCONN;
    if (strcmp(name, "source") == 0)
        return GW_BALANCE_SOURCE;
    return -1;
}

/* One word for operators: admin state wins over health. */
const char *gw_server_state_name(const struct gw_server *s)
{
    if (s->admin != GW_ADMIN_ENABLED)
        return gw_server_admin_name(s->admin);
    return gw_server_health_name(s->health);
}

/* ---- tags ---------------------------------------------------------------- */

static uint32_t tag_for(struct gw_ctx *ctx, const char *name)
{
    for (uint32_t i = 0; i < ctx->n_tags; i++)
        if (strcmp(ctx->tag_names[i], name) == 0)
            return i + 1;
    char **nt = realloc(ctx->tag_names, (ctx->n_tags + 1) * sizeof(*nt));
    if (!nt)
        return 0;
    ctx->tag_names = nt;
    nt[ctx->n_tags] = strdup(name);
    if (!nt[ctx->n_tags])
        return 0;
    return ++ctx->n_tags;
}

/* The pool name of a tag, "" when unknown. */
const char *gw_backend_name(const struct gw_ctx *ctx, uint32_t tag)
{
    if (tag == 0 || tag > ctx->n_tags)
        return "";
    return ctx->tag_names[tag - 1];
}

/* ---- state changes ------------------------------------------------------- */

static void publish_change(struct gw_server *s, const char *old_state, const char *why)
{
    const char *now = gw_server_state_name(s);
    struct gw_event ev;

    if (strcmp(old_state, now) == 0)
        return;
    gw_log(GW_LOG_INFO, "backend %s server %s: %s -> %s (%s%s%s)",
           s->backend ? s->backend->name : "(retired)", s->conf.name, old_state, now, why,
           s->last_check_error[0] && strcmp(why, "health check") == 0 ? ": " : "",
           strcmp(why, "health check") == 0 ? s->last_check_error : "");
    memset(&ev, 0, sizeof(ev));
    ev.type = GW_EV_BACKEND;
    ev.time = gw_now_ms();
    ev.backend = s->backend ? s->backend->name : "";
    ev.server = s;
    ev.old_state = old_state;
    ev.new_state = now;
    ev.why = why;
    gw_publish(s->ctx, &ev);
}

/* ---- health checks -------------------------------------------------------- */

static void check_stop(struct gw_server *s)
{
    ev_io_stop(s->ctx->loop, &s->check_io);
    if (s->check_fd >= 0) {
        close(s->check_fd);
        s->check_fd = -1;
    }
    s->check_state = GW_CHECK_IDLE;
}

static void check_result(struct gw_server *s, bool ok, const char *error)
{
    const struct gw_health_conf *h = &s->backend->conf.health;
    const char *old = gw_server_state_name(s);

    check_stop(s);
    s->last_check_ms = gw_now_ms();
    snprintf(s->last_check_error, sizeof(s->last_check_error), "%s", ok ? "" : error);
    if (ok) {
        s->fall_count = 0;
        if (s->health == GW_HEALTH_DOWN && ++s->rise_count >= h->rise) {
            s->health = GW_HEALTH_UP;
            s->rise_count = 0;
            publish_change(s, old, "health check");
        }
    } else {
        s->rise_count = 0;
        if (s->health == GW_HEALTH_UP && ++s->fall_count >= h->fall) {
            s->health = GW_HEALTH_DOWN;
            s->fall_count = 0;
            publish_change(s, old, "health check");
        }
    }
    check_schedule(s, h->interval_ms);
}

static void check_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct gw_server *s = w->data;
    const struct gw_health_conf *h = &s->backend->conf.health;
    char buf[512];
    int err = 0;
    socklen_t el = sizeof(err);

    (void)loop;
    (void)revents;
    if (s->backend->proto == NAT_PROTO_TCP) {
        getsockopt(s->check_fd, SOL_SOCKET, SO_ERROR, &err, &el);
        check_result(s, err == 0, err ? strerror(err) : "");
        return;
    }
    ssize_t n = recv(s->check_fd, buf, sizeof(buf), 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n < 0) {
        check_result(s, false, strerror(errno));
        return;
    }
    if (h->expect && ((size_t)n < h->expect_len || memcmp(buf, h->expect, h->expect_len) != 0)) {
        check_result(s, false, "unexpected reply");
        return;
    }
    check_result(s, true, "");
}

static void check_start(struct gw_server *s)
{
    const struct gw_health_conf *h = &s->backend->conf.health;
    bool udp = s->backend->proto == NAT_PROTO_UDP;
    int fd = socket(s->conf.addr.ss.ss_family,
                    (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0) {
        /* Out of descriptors says nothing about the server: try later. */
        gw_log(GW_LOG_WARN, "health check of %s: socket: %s", s->conf.name, strerror(errno));
        check_schedule(s, h->interval_ms);
        return;
    }
    s->check_fd = fd;
    s->check_state = GW_CHECK_RUNNING;
    int rc = connect(fd, (const struct sockaddr *)&s->conf.addr.ss, s->conf.addr.len);
    if (rc < 0 && errno != EINPROGRESS) {
        check_result(s, false, strerror(errno));
        return;
    }
    if (udp) {
        if (send(fd, h->send, h->send_len, 0) < 0) {
            check_result(s, false, strerror(errno));
            return;
        }
        ev_io_set(&s->check_io, fd, EV_READ);
    } else {
        ev_io_set(&s->check_io, fd, EV_WRITE);
    }
    ev_io_start(s->ctx->loop, &s->check_io);
    ev_timer_stop(s->ctx->loop, &s->check_timer);
    ev_timer_set(&s->check_timer, h->timeout_ms / 1000.0, 0.);
    ev_timer_start(s->ctx->loop, &s->check_timer);
}

static void check_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct gw_server *s = w->data;

    (void)loop;
    (void)revents;
    if (s->check_state == GW_CHECK_RUNNING)
        check_result(s, false, "timeout");
    else
        check_start(s);
}

static void check_schedule(struct gw_server *s, uint32_t after_ms)
{
    ev_timer_stop(s->ctx->loop, &s->check_timer);
    if (!s->backend || !s->backend->conf.health.enabled || s->admin == GW_ADMIN_DISABLED)
        return;
    ev_timer_set(&s->check_timer, after_ms / 1000.0, 0.);
    ev_timer_start(s->ctx->loop, &s->check_timer);
}

/* ---- servers and pools -------------------------------------------------- */

static struct gw_server *server_new(struct gw_ctx *ctx, const struct gw_server_conf *sc)
{
    struct gw_server *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    s->ctx = ctx;
    s->conf = *sc;
    s->check_fd = -1;
    ev_io_init(&s->check_io, check_io_cb, -1, EV_READ);
    s->check_io.data = s;
    ev_timer_init(&s->check_timer, check_timer_cb, 0., 0.);
    s->check_timer.data = s;
    return s;
}

static void server_free(struct gw_server *s)
{
    if (!s)
        return;
    check_stop(s);
    ev_timer_stop(s->ctx->loop, &s->check_timer);
    free(s);
}

static void backend_free(struct gw_backend *b)
{
    struct gw_server *s;

    if (!b)
        return;
    while ((s = TAILQ_FIRST(&b->servers))) {
        TAILQ_REMOVE(&b->servers, s, link);
        server_free(s);
    }
    free(b);
}

static struct gw_backend *backend_new(struct gw_ctx *ctx, const struct gw_backend_conf *bc)
{
    struct gw_backend *b = calloc(1, sizeof(*b));

    if (!b)
        return NULL;
    TAILQ_INIT(&b->servers);
    memcpy(b->name, bc->name, sizeof(b->name));
    b->proto = bc->proto;
    b->conf = *bc;
    if (!b->conf.connect_timeout_ms)
        b->conf.connect_timeout_ms = ctx->cfg->connect_timeout_ms;
    b->tag = tag_for(ctx, bc->name);
    if (!b->tag) {
        free(b);
        return NULL;
    }
    for (size_t i = 0; i < bc->n_servers; i++) {
        struct gw_server *s = server_new(ctx, &bc->servers[i]);
        if (!s) {
            backend_free(b);
            return NULL;
        }
        s->backend = b;
        TAILQ_INSERT_TAIL(&b->servers, s, link);
        b->n_servers++;
    }
    return b;
}

static struct gw_server *find_server(struct gw_backend *b, const struct gw_server_conf *sc)
{
    struct gw_server *s;

    TAILQ_FOREACH(s, &b->servers, link)
    if (s->conf.addr.len == sc->addr.len &&
        memcmp(&s->conf.addr.ss, &sc->addr.ss, sc->addr.len) == 0)
        return s;
    return NULL;
}

/* Builds ctx->cfg's pools, carrying over servers with the same pool and address. */
int gw_backends_apply(struct gw_ctx *ctx)
{
    struct gw_backend_list fresh;
    struct gw_backend *b, *ob;
    struct gw_server *s, *os, *tmp;

    TAILQ_INIT(&fresh);
    for (size_t i = 0; i < ctx->cfg->n_backends; i++) {
        b = backend_new(ctx, &ctx->cfg->backends[i]);
        if (!b) {
            while ((b = TAILQ_FIRST(&fresh))) {
                TAILQ_REMOVE(&fresh, b, link);
                backend_free(b);
            }
            return -ENOMEM;
        }
        TAILQ_INSERT_TAIL(&fresh, b, link);
    }
    /* Nothing can fail from here: swap carried-over servers in. */
    TAILQ_FOREACH(b, &fresh, link)
    {
        ob = gw_backend_find(ctx, b->name);
        if (!ob || ob->proto != b->proto)
            continue;
        for (s = TAILQ_FIRST(&b->servers); s; s = tmp) {
            tmp = TAILQ_NEXT(s, link);
            os = find_server(ob, &s->conf);
            if (!os)
                continue;
            TAILQ_REMOVE(&ob->servers, os, link);
            check_stop(os);
            ev_timer_stop(ctx->loop, &os->check_timer);
            os->conf = s->conf;
            os->backend = b;
            TAILQ_INSERT_BEFORE(s, os, link);
            TAILQ_REMOVE(&b->servers, s, link);
            server_free(s);
        }
        b->no_server = ob->no_server;
    }
    /* Retire what is left of the old pools. */
    while ((ob = TAILQ_FIRST(&ctx->backends))) {
        TAILQ_REMOVE(&ctx->backends, ob, link);
        while ((os = TAILQ_FIRST(&ob->servers))) {
            TAILQ_REMOVE(&ob->servers, os, link);
            if (os->conns == 0) {
                server_free(os);
                continue;
            }
            check_stop(os);
            ev_timer_stop(ctx->loop, &os->check_timer);
            gw_log(GW_LOG_INFO, "backend %s server %s: removed by reload, %u flows left", ob->name,
                   os->conf.name, os->conns);
            os->backend = NULL;
            TAILQ_INSERT_TAIL(&ctx->retired, os, link);
        }
        free(ob);
    }
    TAILQ_CONCAT(&ctx->backends, &fresh, link);
    ctx->backends_gen++; /* positions in the pools may have moved */
    TAILQ_FOREACH(b, &ctx->backends, link)
    {
        TAILQ_FOREACH(s, &b->servers, link)
        {
            if (!b->conf.health.enabled && s->health == GW_HEALTH_DOWN) {
                const char *old = gw_server_state_name(s);
                s->health = GW_HEALTH_UP;
                publish_change(s, old, "health check disabled");
            }
            check_schedule(s, 10);
        }
    }
    return 0;
}

/* Frees all pools and retired servers. */
void gw_backends_free(struct gw_ctx *ctx)
{
    struct gw_backend *b;
    struct gw_server *s;

    while ((b = TAILQ_FIRST(&ctx->backends))) {
        TAILQ_REMOVE(&ctx->backends, b, link);
        backend_free(b);
    }
    while ((s = TAILQ_FIRST(&ctx->retired))) {
        TAILQ_REMOVE(&ctx->retired, s, link);
        server_free(s);
    }
    for (uint32_t i = 0; i < ctx->n_tags; i++)
        free(ctx->tag_names[i]);
    free(ctx->tag_names);
    ctx->tag_names = NULL;
    ctx->n_tags = 0;
}

/* The pool named `name`, or NULL. */
struct gw_backend *gw_backend_find(struct gw_ctx *ctx, const char *name)
{
    struct gw_backend *b;

    TAILQ_FOREACH(b, &ctx->backends, link)
    if (strcmp(b->name, name) == 0)
        return b;
    return NULL;
}

/* ---- balance -------------------------------------------------------------- */

/* Whether s, at position pos of its pool, may take a new flow that has
 * tried the servers of `tried`. */
static bool eligible(const struct gw_server *s, uint32_t pos, uint32_t tried)
{
    return !(tried & (1u << (pos % 32))) && s->health == GW_HEALTH_UP &&
           s->admin == GW_ADMIN_ENABLED && (s->conf.max_conns == 0 || s->conns < s->conf.max_conns);
}

uint32_t gw_server_bit(const struct gw_backend *b, const struct gw_server *s)
{
    const struct gw_server *x;
    uint32_t pos = 0;

    if (!b || !s)
        return 0;
    TAILQ_FOREACH(x, &b->servers, link)
    {
        if (x == s)
            return 1u << (pos % 32);
        pos++;
    }
    return 0;
}

static uint32_t addr_hash(const struct nat_addr *a)
{
    uint32_t h = 2166136261u;

    for (int i = 0; i < 16; i++)
        h = (h ^ a->b[i]) * 16777619u;
    return h;
}

/* Picks a server for a new flow (see gwd.h). */
struct gw_server *gw_backend_pick(struct gw_backend *b, const struct nat_addr *client,
                                  uint32_t tried, uint32_t *bit)
{
    struct gw_server *s, *best = NULL;
    uint32_t pos, best_pos = 0;
    int total = 0;

    switch (b->conf.balance) {
    case GW_BALANCE_ROUNDROBIN:
        pos = 0;
        TAILQ_FOREACH(s, &b->servers, link)
        {
            if (!eligible(s, pos++, tried))
                continue;
            s->smooth_current += (int)s->conf.weight;
            total += (int)s->conf.weight;
            if (!best || s->smooth_current > best->smooth_current) {
                best = s;
                best_pos = pos - 1;
            }
        }
        if (best)
            best->smooth_current -= total;
        break;
    case GW_BALANCE_LEASTCONN: {
        uint32_t start = b->n_servers ? b->rr_next++ % (uint32_t)b->n_servers : 0;
        /* Two passes from a rotating start so that ties spread. */
        for (int pass = 0; pass < 2; pass++) {
            pos = 0;
            TAILQ_FOREACH(s, &b->servers, link)
            {
                bool in = pass == 0 ? pos >= start : pos < start;
                pos++;
                if (!in || !eligible(s, pos - 1, tried))
                    continue;
                if (!best ||
                    (uint64_t)s->conns * best->conf.weight < (uint64_t)best->conns * s->conf.weight) {
                    best = s;
                    best_pos = pos - 1;
                }
            }
        }
        break;
    }
    case GW_BALANCE_SOURCE: {
        pos = 0;
        TAILQ_FOREACH(s, &b->servers, link)
        if (eligible(s, pos++, tried))
            total += (int)s->conf.weight;
        if (total == 0)
            break;
        int at = (int)(addr_hash(client) % (uint32_t)total);
        pos = 0;
        TAILQ_FOREACH(s, &b->servers, link)
        {
            if (!eligible(s, pos++, tried))
                continue;
            at -= (int)s->conf.weight;
            if (at < 0) {
                best = s;
                best_pos = pos - 1;
                break;
            }
        }
        break;
    }
    }
    if (!best && tried == 0)
        b->no_server++; /* (a flow that tried them all is not "no server") */
    else if (best && bit)
        *bit = 1u << (best_pos % 32);
    return best;
}

/* A flow starts on s. */
void gw_server_acquire(struct gw_server *s)
{
    s->conns++;
    s->total_conns++;
}

/* A flow ends on s; a retired server goes with its last flow. */
void gw_server_release(struct gw_server *s)
{
    if (!s)
        return;
    if (s->conns > 0)
        s->conns--;
    if (!s->backend && s->conns == 0) {
        TAILQ_REMOVE(&s->ctx->retired, s, link);
        server_free(s);
    }
}

/* ---- admin --------------------------------------------------------------- */

static int set_admin(struct gw_ctx *ctx, const char *spec, enum gw_server_admin admin,
                     const char *why)
{
    char name[GW_NAME_MAX];
    const char *slash = strchr(spec, '/');
    const char *sname = NULL;
    size_t nl = slash ? (size_t)(slash - spec) : strlen(spec);
    struct gw_backend *b;
    struct gw_server *s;
    int n = 0;

    if (nl == 0 || nl >= sizeof(name))
        return -ENOENT;
    memcpy(name, spec, nl);
    name[nl] = '\0';
    if (slash)
        sname = slash + 1;
    b = gw_backend_find(ctx, name);
    if (!b)
        return -ENOENT;
    TAILQ_FOREACH(s, &b->servers, link)
    {
        if (sname && *sname && strcmp(s->conf.name, sname) != 0)
            continue;
        const char *old = gw_server_state_name(s);
        enum gw_server_admin was = s->admin;
        s->admin = admin;
        if (admin == GW_ADMIN_DISABLED) {
            check_stop(s);
            ev_timer_stop(ctx->loop, &s->check_timer);
        } else if (was == GW_ADMIN_DISABLED) {
            check_schedule(s, 10);
        }
        publish_change(s, old, why);
        n++;
    }
    return n ? 0 : -ENOENT;
}

/* No new flows for NAME[/SERVER]; live ones stay. */
int gw_backend_drain(struct gw_ctx *ctx, const char *spec)
{
    return set_admin(ctx, spec, GW_ADMIN_DRAINING, "drain");
}

/* New flows again for NAME[/SERVER]. */
int gw_backend_enable(struct gw_ctx *ctx, const char *spec)
{
    return set_admin(ctx, spec, GW_ADMIN_ENABLED, "enable");
}

/* No new flows and no health checks for NAME[/SERVER]; live ones stay. */
int gw_backend_disable(struct gw_ctx *ctx, const char *spec)
{
    return set_admin(ctx, spec, GW_ADMIN_DISABLED, "disable");
}

/* A pool as JSON for show backends. */
json_t *gw_backend_to_json(const struct gw_backend *b)
{
    json_t *servers = json_array();
    const struct gw_server *s;
    char addr[80], ts[DB_TIME_STRLEN];

    TAILQ_FOREACH(s, &b->servers, link)
    {
        json_t *o = json_pack(
            "{s:s, s:s, s:i, s:I, s:s, s:s, s:s, s:I, s:I, s:I}", "name", s->conf.name, "address",
            gw_sockaddr_format(&s->conf.addr, addr, sizeof(addr)), "weight", (int)s->conf.weight,
            "max_conns", (json_int_t)s->conf.max_conns, "state", gw_server_state_name(s), "health",
            gw_server_health_name(s->health), "admin", gw_server_admin_name(s->admin), "conns",
            (json_int_t)s->conns, "total_conns", (json_int_t)s->total_conns, "connect_failures",
            (json_int_t)s->connect_failures);
        if (!o)
            continue;
        json_object_set_new(o, "last_check",
                            s->last_check_ms
                                ? json_string(db_time_format(s->last_check_ms, ts))
                                : json_null());
        json_object_set_new(o, "last_check_error",
                            s->last_check_error[0] ? json_string(s->last_check_error)
                                                   : json_null());
        json_array_append_new(servers, o);
    }
    return json_pack("{s:s, s:s, s:s, s:b, s:I, s:o}", "name", b->name, "proto",
                     nat_proto_name(b->proto), "balance", gw_balance_name(b->conf.balance),
                     "health_checks", b->conf.health.enabled, "no_server", (json_int_t)b->no_server,
                     "servers", servers);
}
