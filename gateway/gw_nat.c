/*
 * gw_nat.c - the glue between the NAT table and the rest of gwd: the table's
 * event callback fans out to the SQLite store (write-behind), to the event
 * subscribers, and tears down the flows libnat closed (flush) or expired;
 * the periodic expiry with a budget; store status and progress updates.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/random.h>
#include <unistd.h>

#include "gwd.h"
#ifdef GW_HAVE_DB
#include "db/db.h"
#endif

#define EXPIRE_TICK 0.25 /* seconds between expiry passes */
#define DB_TICK 1.0      /* seconds between store polls */
/* ms between progress updates (state, last_seen, bytes) of the sessions that
 * moved since the last pass. The data path itself submits only OPEN and
 * CLOSE/EXPIRE: a short connection costs the store two records, and a live
 * row is at most this late. */
#define DB_UPDATE_EVERY 1000

/* ---- subscribers -------------------------------------------------------- */

/* Adds a subscriber. */
int gw_subscribe(struct gw_ctx *ctx, gw_event_fn fn, void *arg)
{
    struct gw_subscriber *s = calloc(1, sizeof(*s));

    if (!s)
        return -ENOMEM;
    s->fn = fn;
    s->arg = arg;
    LIST_INSERT_HEAD(&ctx->subscribers, s, link);
    return 0;
}

/* Removes a subscriber. */
void gw_unsubscribe(struct gw_ctx *ctx, gw_event_fn fn, void *arg)
{
    struct gw_subscriber *s;

    LIST_FOREACH(s, &ctx->subscribers, link)
    {
        if (s->fn == fn && s->arg == arg) {
            LIST_REMOVE(s, link);
            free(s);
            return;
        }
    }
}

/* Delivers ev to every subscriber. */
void gw_publish(struct gw_ctx *ctx, const struct gw_event *ev)
{
    struct gw_subscriber *s, *next;

    for (s = LIST_FIRST(&ctx->subscribers); s; s = next) {
        next = LIST_NEXT(s, link);
        s->fn(s->arg, ev);
    }
}

static void subscribers_free(struct gw_ctx *ctx)
{
    struct gw_subscriber *s;

    while ((s = LIST_FIRST(&ctx->subscribers))) {
        LIST_REMOVE(s, link);
        free(s);
    }
}

/* ---- the table's events -------------------------------------------------- */

static void nat_event_cb(void *arg, const struct nat_event *ev)
{
    struct gw_ctx *ctx = arg;
    const char *backend = gw_backend_name(ctx, ev->s.backend);
    struct gw_event gev;

#ifdef GW_HAVE_DB
    if (ctx->db)
        db_submit(ctx->db, ev, backend);
#endif
    if (!LIST_EMPTY(&ctx->subscribers)) {
        memset(&gev, 0, sizeof(gev));
        gev.type = GW_EV_NAT;
        gev.time = ev->time;
        gev.nat = ev;
        gev.backend = backend;
        gw_publish(ctx, &gev);
    }
    if (ev->type == NAT_EV_CLOSE || ev->type == NAT_EV_EXPIRE) {
        /* libnat closed it (flush, expiry): tear the flow down. Flows that
         * close themselves clear udata first, so this is not re-entered. */
        struct gw_flow *flow = ev->s.udata;
        if (flow && flow->state != GW_FLOW_CLOSED) {
            flow->sess = NULL;
            gw_flow_close(flow, ev->type == NAT_EV_EXPIRE ? "timeout" : ev->reason);
        }
    }
}

/* Records a live session's progress in the store. */
void gw_nat_update(struct gw_ctx *ctx, const struct nat_session *s)
{
#ifdef GW_HAVE_DB
    if (ctx->db && s)
        db_submit_update(ctx->db, s);
#else
    (void)ctx;
    (void)s;
#endif
}

static void expire_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct gw_ctx *ctx = w->data;

    (void)revents;
    size_t n = nat_expire(ctx->nat, gw_loop_ms(loop), GW_EXPIRE_BUDGET);
    /* Budget used up: come back at once rather than at the next tick. */
    w->repeat = n >= GW_EXPIRE_BUDGET ? 0.001 : EXPIRE_TICK;
    ev_timer_again(loop, w);
}

#ifdef GW_HAVE_DB
static int update_one(void *arg, const struct nat_session *s)
{
    struct gw_ctx *ctx = arg;

    if (s->last_seen >= ctx->db_update_mark)
        db_submit_update(ctx->db, s);
    return 0;
}
#endif

static void db_tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct gw_ctx *ctx = w->data;

    (void)revents;
#ifdef GW_HAVE_DB
    char msg[512];
    if (!ctx->db)
        return;
    switch (db_status_poll(ctx->db, msg, sizeof(msg))) {
    case DB_STATUS_FAILING:
        gw_log(GW_LOG_ERROR, "store degraded (forwarding goes on): %s", msg);
        break;
    case DB_STATUS_RECOVERED:
        gw_log(GW_LOG_WARN, "store recovered: %s", msg);
        break;
    case DB_STATUS_SAME:
        break;
    }
    uint64_t now = gw_loop_ms(loop);
    if (now - ctx->db_update_mark >= DB_UPDATE_EVERY) {
        /* Order does not matter here: one pass in storage order. */
        uint32_t cursor = 0;
        nat_walk(ctx->nat, NULL, &cursor, 0, update_one, ctx);
        ctx->db_update_mark = now;
    }
#else
    (void)loop;
    (void)ctx;
#endif
}

#ifdef GW_HAVE_DB
/* mkdir -p of the folder holding `path` (the default store's folders may
 * not exist yet: /var/lib/gw, ~/.local/state). Failures show at db_open. */
static void make_parents(const char *path)
{
    char dir[512];
    size_t n = strlen(path);

    if (n >= sizeof(dir))
        return;
    memcpy(dir, path, n + 1);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return;
    *slash = '\0';
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        mkdir(dir, 0755);
        *p = '/';
    }
    mkdir(dir, 0755);
}

static int store_open(struct gw_ctx *ctx)
{
    struct db_options o;
    char err[512];
    const char *path = ctx->cfg->db_path;

    if (!path)
        return 0;
    if (ctx->cfg->db_path_default)
        make_parents(path);
    db_options_default(&o);
    o.path = path;
    o.log_flows = !ctx->cfg->nat_log_blocks;
    int rc = db_open(&ctx->db, &o, err, sizeof(err));
    if (rc < 0) {
        gw_log(GW_LOG_ERROR, "store %s: %s", path, err);
        ctx->db = NULL;
        return rc;
    }
    if (db_restart_closed(ctx->db))
        gw_log(GW_LOG_INFO, "store %s: %lu sessions of a previous run closed (restart)", path,
               (unsigned long)db_restart_closed(ctx->db));
    gw_log(GW_LOG_INFO, "store %s opened", path);
    return 0;
}
#endif

/* Makes the table (and opens the store) and starts the expiry. */
int gw_nat_start(struct gw_ctx *ctx)
{
    struct nat_config nc = ctx->cfg->nat;
    enum nat_err err;

#ifdef GW_HAVE_DB
    int rc = store_open(ctx);
    if (rc < 0)
        return rc;
    if (ctx->db)
        nc.first_id = db_max_session_id(ctx->db) + 1;
#else
    if (ctx->cfg->db_path)
        gw_log(GW_LOG_WARN, "built without the store: --db %s ignored", ctx->cfg->db_path);
#endif
    /* The seed also keys libnat's hash indexes: unless the operator pins
     * it, take it from the kernel so clients cannot aim at one bucket. */
    if (nc.seed == 0 && getrandom(&nc.seed, sizeof(nc.seed), GRND_NONBLOCK) != sizeof(nc.seed))
        nc.seed = gw_now_ms() ^ ((uint64_t)getpid() << 32);
    err = nat_table_new(&ctx->nat, &nc);
    if (err != NAT_OK) {
        gw_log(GW_LOG_ERROR, "nat table: %s", nat_strerror(err));
        return err == NAT_ERR_NOMEM ? -ENOMEM : -EINVAL;
    }
    ctx->cfg->nat.first_id = nc.first_id;
    nat_table_set_event_cb(ctx->nat, nat_event_cb, ctx);
    ev_timer_init(&ctx->expire_timer, expire_cb, 0., EXPIRE_TICK);
    ctx->expire_timer.data = ctx;
    ev_timer_again(ctx->loop, &ctx->expire_timer);
    ev_timer_init(&ctx->db_timer, db_tick_cb, DB_TICK, DB_TICK);
    ctx->db_timer.data = ctx;
    ev_timer_start(ctx->loop, &ctx->db_timer);
    ctx->db_update_mark = gw_now_ms();
    return 0;
}

/* Stops the timers, closes the store (flushing it) and frees the table. */
void gw_nat_stop(struct gw_ctx *ctx)
{
    ev_timer_stop(ctx->loop, &ctx->expire_timer);
    ev_timer_stop(ctx->loop, &ctx->db_timer);
    if (ctx->nat) {
        struct nat_filter all;
        nat_filter_init(&all);
        nat_flush(ctx->nat, &all, gw_now_ms(), "shutdown");
        nat_end_holds(ctx->nat, gw_now_ms()); /* block_hold: the log frees every block */
    }
#ifdef GW_HAVE_DB
    if (ctx->db) {
        int rc = db_close(ctx->db);
        if (rc < 0)
            gw_log(GW_LOG_ERROR, "store: events lost at close: %s", strerror(-rc));
        ctx->db = NULL;
    }
#endif
    nat_table_free(ctx->nat);
    ctx->nat = NULL;
    subscribers_free(ctx);
}

/* Closes the matching sessions (reason "flush") and their flows. */
size_t gw_nat_flush(struct gw_ctx *ctx, const struct nat_filter *f)
{
    return nat_flush(ctx->nat, f, gw_loop_ms(ctx->loop), "flush");
}

/* Warns when the pool overlaps the kernel's ephemeral ports. */
void gw_nat_check_port_range(const struct nat_config *nat)
{
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    unsigned lo, hi;

    if (!f)
        return;
    if (fscanf(f, "%u %u", &lo, &hi) == 2 && nat->port_lo <= hi && lo <= nat->port_hi)
        gw_log(GW_LOG_WARN,
               "nat ports %u-%u overlap the kernel's ephemeral ports %u-%u "
               "(net.ipv4.ip_local_port_range): busy ports will be skipped (counted)",
               nat->port_lo, nat->port_hi, lo, hi);
    fclose(f);
}
