/*
 * gw_cmd.c - the control commands: version, show
 * stats|nat|backends|config|clients|blocks, flush nat, backend
 * drain|enable|disable, subscribe.
 *
 * `show nat` never builds its whole result: it walks the table in id order
 * with nat_foreach(after_id) in small steps, formatting rows straight into
 * the client's output while the client drains it. Once the page is written,
 * the rest of the table is only counted (for `total`), by nat_walk in
 * storage order. Sorting by another key keeps only the offset+limit best
 * rows (a bounded heap of copies) during a stepped nat_walk of the whole
 * table. The walk sees the table as it is at each step: sessions opened
 * behind the cursor or closed before it is reached are not listed (a
 * session opened during a storage-order walk may or may not be), `total`
 * counts what the walk matched.
 */
#include "gateway/gw_cmd.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db/db.h"
#include "gateway/gw_control.h"
#include "gateway/gwd.h"

/*
 * Sessions visited per step. nat_foreach (id order) finds the next ids with
 * a scan of the whole table that keeps the smallest 256 (then 1024...) in a
 * heap: a budget of 256 rows keeps a step to one scan (about a millisecond
 * at 100,000 sessions), so writing rows in id order costs a scan per 256
 * rows. What needs no order (counting the rest of a page's total, sorted
 * listings, show clients) goes by nat_walk, which resumes at a slot: O(n)
 * for the whole table, NAT_STEP_SCAN sessions per step.
 */
#define NAT_STEP_ROWS 256
#define NAT_STEP_SCAN 1024
/* A step also ends once its rows took this long (checked every 16 sessions;
 * counted from the first row, so the scan that found them is always used:
 * cutting rows shorter than a scan would only multiply the scans). */
#define NAT_STEP_NS 2000000

/* Monotonic nanoseconds, for the step time limit. */
static uint64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Counts one visit against the step's budget; true when the step must end.
 * *deadline 0 is set on the first visit. */
static bool step_spent(unsigned *budget, unsigned *visits, uint64_t *deadline)
{
    if (*deadline == 0)
        *deadline = mono_ns() + NAT_STEP_NS;
    if (--*budget == 0)
        return true;
    if ((++*visits & 15) == 0 && mono_ns() > *deadline) {
        *budget = 0;
        return true;
    }
    return false;
}

/* ---- helpers -------------------------------------------------------------- */

static json_t *jint(uint64_t v)
{
    return json_integer(v > INT64_MAX ? INT64_MAX : (json_int_t)v);
}

/*
 * Resolves a pool name to its tag: a live pool, or one a reload removed
 * (its sessions still carry the tag). Returns 0 and *tag, or -ENOENT.
 */
static int backend_tag(struct gw_ctx *ctx, const char *name, uint32_t *tag)
{
    struct gw_backend *b = gw_backend_find(ctx, name);

    if (b) {
        *tag = b->tag;
        return 0;
    }
    for (uint32_t i = 0; i < ctx->n_tags; i++) {
        if (ctx->tag_names && ctx->tag_names[i] && strcmp(ctx->tag_names[i], name) == 0) {
            *tag = i + 1; /* tags count from 1 (gw_backend_name) */
            return 0;
        }
    }
    return -ENOENT;
}

/* Fills the filter's backend tag from q->backend. Replies not_found itself. */
static int resolve_filter(struct ctl_client *c, const json_t *id, struct ctl_nat_query *q)
{
    if (!q->backend[0])
        return 0;
    if (backend_tag(ctl_client_ctx(c), q->backend, &q->filter.backend) < 0) {
        ctl_client_fail(c, id, CTL_ERR_NOT_FOUND, "no backend named '%s'", q->backend);
        return -ENOENT;
    }
    q->filter.has_backend = true;
    return 0;
}

/* ---- version -------------------------------------------------------------- */

static void cmd_version(struct ctl_client *c, const struct ctl_request *req)
{
    json_t *r = json_object(), *cmds = json_array();

    if (!r || !cmds) {
        json_decref(r);
        json_decref(cmds);
        ctl_client_fail(c, req->id, CTL_ERR_INTERNAL, "out of memory");
        return;
    }
    for (int i = 0; i < CTL_CMD_COUNT; i++)
        json_array_append_new(cmds, json_string(ctl_cmd_name((enum ctl_cmd)i)));
    json_object_set_new(r, "name", json_string("gwd"));
    json_object_set_new(r, "version", json_string(GW_VERSION));
    json_object_set_new(r, "protocol", json_integer(CTL_PROTOCOL_VERSION));
    json_object_set_new(r, "commands", cmds);
    ctl_client_reply(c, req->id, r);
}

/* ---- show stats ----------------------------------------------------------- */

static json_t *states_json(const uint64_t *by_state)
{
    json_t *o = json_object();

    for (int st = 0; st < NAT_STATE_CLOSED; st++)
        json_object_set_new(o, nat_state_name((enum nat_state)st), jint(by_state[st]));
    return o;
}

static json_t *stats_flows(const struct nat_stats *ns)
{
    json_t *o = json_object();

    json_object_set_new(o, "live", jint(ns->live));
    json_object_set_new(o, "tcp", states_json(ns->live_by[0]));
    json_object_set_new(o, "udp", states_json(ns->live_by[1]));
    return o;
}

static json_t *stats_mappings(const struct gw_ctx *ctx, const struct nat_stats *ns)
{
    const struct gw_counters *k = &ctx->counters;
    json_t *o = json_object(), *ref = json_object();

    json_object_set_new(o, "opened", jint(ns->opened));
    json_object_set_new(o, "closed", jint(ns->closed));
    json_object_set_new(o, "expired", jint(ns->expired));
    for (int e = NAT_ERR_POOL_EXHAUSTED; e <= NAT_ERR_TABLE_FULL; e++)
        json_object_set_new(ref, nat_err_name((enum nat_err)e),
                            jint(ns->refused[e] + k->refused_repick[e]));
    json_object_set_new(ref, "no_route", jint(k->refused_no_route));
    json_object_set_new(ref, "no_server", jint(k->refused_no_server));
    json_object_set_new(ref, "max_flows", jint(k->refused_max_flows));
    json_object_set_new(ref, "draining", jint(k->refused_draining));
    json_object_set_new(o, "refused", ref);
    json_object_set_new(o, "repicks", jint(ns->repicks));
    json_object_set_new(o, "bind_busy", jint(k->bind_busy));
    json_object_set_new(o, "connect_addrnotavail", jint(k->connect_addrnotavail));
    return o;
}

static json_t *stats_pool(const struct gw_ctx *ctx, const struct nat_stats *ns)
{
    const struct nat_config *nc = nat_table_config(ctx->nat);
    json_t *o = json_object(), *ips = json_array();
    uint64_t per_ip = (uint64_t)nc->port_hi - nc->port_lo + 1;
    char ip[NAT_ADDR_STRLEN], range[16];

    snprintf(range, sizeof(range), "%u-%u", nc->port_lo, nc->port_hi);
    json_object_set_new(o, "policy", json_string(nat_policy_name(nc->policy)));
    json_object_set_new(o, "mapping", json_string(nat_mapping_name(nc->mapping)));
    json_object_set_new(o, "ports", json_string(range));
    json_object_set_new(o, "ports_total", jint(ns->ports_total));
    json_object_set_new(o, "ports_in_use", jint(ns->ports_in_use));
    json_object_set_new(o, "ports_cooling", jint(ns->ports_cooling));
    json_object_set_new(o, "blocks_in_use", jint(ns->blocks_in_use));
    json_object_set_new(o, "blocks_held", jint(ns->blocks_held));
    for (unsigned i = 0; i < nc->n_ips; i++) {
        json_t *e = json_object();
        json_object_set_new(e, "ip", json_string(nat_addr_format(&nc->ips[i], ip)));
        json_object_set_new(e, "ports", jint(per_ip));
        json_object_set_new(e, "in_use", jint(nat_ip_ports_in_use(ctx->nat, i)));
        json_array_append_new(ips, e);
    }
    json_object_set_new(o, "by_ip", ips);
    return o;
}

static json_t *stats_traffic(const struct gw_ctx *ctx)
{
    const struct gw_counters *k = &ctx->counters;
    json_t *o = json_object();

    json_object_set_new(o, "bytes_in", jint(k->bytes_in));
    json_object_set_new(o, "bytes_out", jint(k->bytes_out));
    json_object_set_new(o, "tcp_accepted", jint(k->tcp_accepted));
    json_object_set_new(o, "tcp_live", jint(k->tcp_live));
    json_object_set_new(o, "udp_flows", jint(k->udp_flows));
    json_object_set_new(o, "udp_live", jint(k->udp_live));
    json_object_set_new(o, "udp_datagrams_in", jint(k->udp_datagrams_in));
    json_object_set_new(o, "udp_datagrams_out", jint(k->udp_datagrams_out));
    json_object_set_new(o, "udp_dropped", jint(k->udp_dropped));
    json_object_set_new(o, "connect_failed", jint(k->connect_failed));
    json_object_set_new(o, "connect_timeout", jint(k->connect_timeout));
    json_object_set_new(o, "failovers", jint(k->failovers));
    json_object_set_new(o, "accept_errors", jint(k->accept_errors));
    json_object_set_new(o, "accept_paused", jint(k->accept_paused));
    json_object_set_new(o, "reloads", jint(k->reloads));
    json_object_set_new(o, "reload_failures", jint(k->reload_failures));
    return o;
}

/* The flows' epoll set (gw_poll.h): how the loop batches readiness reports. */
static json_t *stats_loop(const struct gw_ctx *ctx)
{
    const struct gw_poll *p = &ctx->poll;
    json_t *o = json_object();

    json_object_set_new(o, "passes", jint(p->passes));
    json_object_set_new(o, "reports", jint(p->reports));
    json_object_set_new(o, "epoll_ctl", jint(p->ctl));
    json_object_set_new(o, "watch_errors", jint(p->watch_errors));
    return o;
}

static json_t *stats_store(struct gw_ctx *ctx)
{
    struct db_stats ds;
    json_t *o;

    if (!ctx->db)
        return json_null();
    db_get_stats(ctx->db, &ds);
    o = json_object();
    json_object_set_new(o, "queue_depth", jint(ds.queue_depth));
    json_object_set_new(o, "queue_capacity", jint(ds.queue_capacity));
    json_object_set_new(o, "submitted", jint(ds.submitted));
    json_object_set_new(o, "written", jint(ds.written));
    json_object_set_new(o, "dropped", jint(ds.dropped));
    json_object_set_new(o, "errors", jint(ds.errors));
    json_object_set_new(o, "degraded", json_boolean(ds.degraded));
    json_object_set_new(o, "last_error", json_string(ds.last_error));
    return o;
}

static json_t *stats_health(struct gw_ctx *ctx)
{
    json_t *a = json_array();
    struct gw_backend *b;
    struct gw_server *s;

    TAILQ_FOREACH(b, &ctx->backends, link)
    {
        json_t *o = json_object();
        uint64_t up = 0, total = 0, conns = 0;
        TAILQ_FOREACH(s, &b->servers, link)
        {
            total++;
            conns += s->conns;
            if (s->health == GW_HEALTH_UP && s->admin == GW_ADMIN_ENABLED)
                up++;
        }
        json_object_set_new(o, "name", json_string(b->name));
        json_object_set_new(o, "proto", json_string(nat_proto_name(b->proto)));
        json_object_set_new(o, "servers", jint(total));
        json_object_set_new(o, "servers_available", jint(up));
        json_object_set_new(o, "flows", jint(conns));
        json_object_set_new(o, "no_server", jint(b->no_server));
        json_array_append_new(a, o);
    }
    return a;
}

static void cmd_show_stats(struct ctl_client *c, const struct ctl_request *req)
{
    struct gw_ctx *ctx = ctl_client_ctx(c);
    struct nat_stats ns;
    json_t *r = json_object();
    uint64_t now = gw_now_ms();
    char t[CTL_TIME_STRLEN];

    if (!r || !ctx->nat) {
        json_decref(r);
        ctl_client_fail(c, req->id, CTL_ERR_UNAVAILABLE, "the NAT table is not running");
        return;
    }
    nat_get_stats(ctx->nat, &ns);
    json_object_set_new(r, "time", json_string(ctl_time_format(now, t)));
    json_object_set_new(r, "started_at", json_string(ctl_time_format(ctx->start_ms, t)));
    json_object_set_new(r, "port", jint(ctx->port));
    json_object_set_new(r, "uptime_s",
                        jint(now > ctx->start_ms ? (now - ctx->start_ms) / 1000 : 0));
    json_object_set_new(r, "flows", stats_flows(&ns));
    json_object_set_new(r, "mappings", stats_mappings(ctx, &ns));
    json_object_set_new(r, "pool", stats_pool(ctx, &ns));
    json_object_set_new(r, "traffic", stats_traffic(ctx));
    json_object_set_new(r, "loop", stats_loop(ctx));
    json_object_set_new(r, "nat_memory_bytes", jint(ns.memory_bytes));
    json_object_set_new(r, "store", stats_store(ctx));
    json_object_set_new(r, "backends", stats_health(ctx));
    gw_control_stats_json(ctx, r);
    ctl_client_reply(c, req->id, r);
}

/* ---- show backends, show config ------------------------------------------ */

static void cmd_show_backends(struct ctl_client *c, const struct ctl_request *req)
{
    struct gw_ctx *ctx = ctl_client_ctx(c);
    json_t *r = json_object(), *a = json_array();
    struct gw_backend *b;

    if (!r || !a) {
        json_decref(r);
        json_decref(a);
        ctl_client_fail(c, req->id, CTL_ERR_INTERNAL, "out of memory");
        return;
    }
    TAILQ_FOREACH(b, &ctx->backends, link)
    json_array_append_new(a, gw_backend_to_json(b));
    json_object_set_new(r, "backends", a);
    ctl_client_reply(c, req->id, r);
}

static void cmd_show_config(struct ctl_client *c, const struct ctl_request *req)
{
    struct gw_ctx *ctx = ctl_client_ctx(c);
    json_t *r = ctx->cfg ? gw_config_to_json(ctx->cfg) : NULL;
    json_t *conf = gw_control_conf_json(ctx);

    if (!r) {
        ctl_client_fail(c, req->id, CTL_ERR_INTERNAL, "cannot render the configuration");
        return;
    }
    /* the socket's section as it was started (a reload keeps the socket) */
    if (conf)
        json_object_set(r, "control", conf);
    ctl_client_reply(c, req->id, r);
}

/* ---- flush nat, backend commands, subscribe ------------------------------- */

static void cmd_flush_nat(struct ctl_client *c, const struct ctl_request *req)
{
    struct gw_ctx *ctx = ctl_client_ctx(c);
    struct ctl_nat_query q = req->u.nat;
    size_t n;

    if (resolve_filter(c, req->id, &q) < 0)
        return;
    n = gw_nat_flush(ctx, &q.filter);
    ctl_client_reply(c, req->id, json_pack("{s:I}", "closed", (json_int_t)n));
}

static void cmd_backend(struct ctl_client *c, const struct ctl_request *req)
{
    struct gw_ctx *ctx = ctl_client_ctx(c);
    const struct ctl_backend_args *a = &req->u.backend;
    char spec[CTL_NAME_MAX * 2];
    struct gw_backend *b;
    int rc;

    if (a->server[0])
        snprintf(spec, sizeof(spec), "%s/%s", a->name, a->server);
    else
        snprintf(spec, sizeof(spec), "%s", a->name);
    switch (req->cmd) {
    case CTL_CMD_BACKEND_DRAIN:
        rc = gw_backend_drain(ctx, spec);
        break;
    case CTL_CMD_BACKEND_ENABLE:
        rc = gw_backend_enable(ctx, spec);
        break;
    default:
        rc = gw_backend_disable(ctx, spec);
        break;
    }
    if (rc == -ENOENT) {
        ctl_client_fail(c, req->id, CTL_ERR_NOT_FOUND, "no backend or server named '%s'", spec);
        return;
    }
    if (rc < 0) {
        ctl_client_fail(c, req->id, CTL_ERR_INTERNAL, "%s: %s", spec, strerror(-rc));
        return;
    }
    b = gw_backend_find(ctx, a->name);
    ctl_client_reply(c, req->id, b ? gw_backend_to_json(b) : json_object());
}

static void cmd_subscribe(struct ctl_client *c, const struct ctl_request *req)
{
    json_t *ev = json_array();

    if (!ev || ctl_client_subscribe(c, req->u.events) < 0) {
        json_decref(ev);
        ctl_client_fail(c, req->id, CTL_ERR_INTERNAL, "out of memory");
        return;
    }
    for (unsigned k = 0; k < CTL_EVK_COUNT; k++)
        if (req->u.events & (1u << k))
            json_array_append_new(ev, json_string(ctl_event_kind_name(k)));
    ctl_client_reply(c, req->id, json_pack("{s:o}", "events", ev));
}

/* ---- stepped jobs over the NAT table (show nat, show clients) ------------- */

/* What every job starts with. */
struct cmd_job {
    struct gw_ctx *ctx; /* borrowed */
    json_t *id;         /* owned */
};

/*
 * Allocates a zeroed job of `size` bytes (struct cmd_job first) for a command
 * that walks the NAT table, with ctx set (id not yet). Replies the error
 * itself and returns NULL when the table is not running or memory is short.
 */
static void *cmd_job_new(struct ctl_client *c, const struct ctl_request *req, size_t size)
{
    struct gw_ctx *ctx = ctl_client_ctx(c);
    struct cmd_job *j;

    if (!ctx->nat) {
        ctl_client_fail(c, req->id, CTL_ERR_UNAVAILABLE, "the NAT table is not running");
        return NULL;
    }
    j = calloc(1, size);
    if (!j) {
        ctl_client_fail(c, req->id, CTL_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    j->ctx = ctx;
    return j;
}

/* Takes a reference to the request id and starts job j; when the client
 * runs one already, frees j (ops->done) and replies busy. */
static void cmd_job_start(struct ctl_client *c, const struct ctl_request *req,
                          const struct ctl_job_ops *ops, struct cmd_job *j)
{
    j->id = req->id ? json_incref(req->id) : NULL;
    if (ctl_client_start_job(c, ops, j) < 0) {
        ops->done(j);
        ctl_client_fail(c, req->id, CTL_ERR_BUSY, "a command is already running");
    }
}

/* ---- show nat ------------------------------------------------------------- */

struct nat_job {
    struct cmd_job base; /* first */
    struct ctl_nat_query q;
    uint64_t cursor;  /* id of the last session the id-order walk saw */
    uint64_t skip_to; /* storage-order walk: sessions with ids up to this were seen */
    uint32_t slot;    /* nat_walk's cursor (0 = from the start) */
    uint64_t matched; /* sessions that passed the filter */
    uint64_t emitted; /* rows written */
    bool head_sent;
    bool walked; /* the walk reached the end of the table */
    /* sorted listings */
    struct nat_session *keep; /* owned; the best offset+limit rows, a heap while walking */
    size_t n_keep, max_keep;
    size_t next_out; /* after sorting: next index of keep to write */
    /* per step */
    struct ctl_client *c; /* borrowed, during a step */
    unsigned budget, visits;
    uint64_t deadline; /* mono_ns() when the step must end */
    int err;
};

static int addr_cmp(const struct nat_endpoint *a, const struct nat_endpoint *b)
{
    int r = memcmp(a->addr.b, b->addr.b, sizeof(a->addr.b));

    if (r)
        return r;
    return (a->port > b->port) - (a->port < b->port);
}

#define CMP3(a, b) (((a) > (b)) - ((a) < (b)))

/* Order of rows for the job's sort: negative when a comes first. */
static int job_cmp(const struct nat_job *j, const struct nat_session *a,
                   const struct nat_session *b)
{
    int r = 0;

    switch (j->q.sort) {
    case CTL_SORT_ID:
        break;
    case CTL_SORT_CLIENT:
        r = addr_cmp(&a->key.client, &b->key.client);
        break;
    case CTL_SORT_NAT:
        r = addr_cmp(&a->ext, &b->ext);
        break;
    case CTL_SORT_BACKEND:
        r = strcmp(gw_backend_name(j->base.ctx, a->backend),
                   gw_backend_name(j->base.ctx, b->backend));
        break;
    case CTL_SORT_STATE:
        r = CMP3(a->state, b->state);
        break;
    case CTL_SORT_OPENED_AT:
        r = CMP3(a->opened_at, b->opened_at);
        break;
    case CTL_SORT_LAST_SEEN:
        r = CMP3(a->last_seen, b->last_seen);
        break;
    case CTL_SORT_BYTES_IN:
        r = CMP3(a->bytes_in, b->bytes_in);
        break;
    case CTL_SORT_BYTES_OUT:
        r = CMP3(a->bytes_out, b->bytes_out);
        break;
    case CTL_SORT_BYTES:
        r = CMP3(a->bytes_in + a->bytes_out, b->bytes_in + b->bytes_out);
        break;
    default:
        break;
    }
    if (r == 0)
        r = CMP3(a->id, b->id);
    return j->q.desc ? -r : r;
}

/* The heap's root is the row that comes last of those kept. */
static void heap_sift_down(struct nat_job *j, size_t i)
{
    struct nat_session *h = j->keep, tmp;

    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < j->n_keep && job_cmp(j, &h[l], &h[m]) > 0)
            m = l;
        if (r < j->n_keep && job_cmp(j, &h[r], &h[m]) > 0)
            m = r;
        if (m == i)
            return;
        tmp = h[i];
        h[i] = h[m];
        h[m] = tmp;
        i = m;
    }
}

static void heap_push(struct nat_job *j, const struct nat_session *s)
{
    struct nat_session *h = j->keep, tmp;
    size_t i = j->n_keep++;

    h[i] = *s;
    h[i].udata = NULL;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (job_cmp(j, &h[p], &h[i]) >= 0)
            break;
        tmp = h[i];
        h[i] = h[p];
        h[p] = tmp;
        i = p;
    }
}

static int qsort_cmp(const void *a, const void *b, void *arg)
{
    return job_cmp(arg, a, b);
}

static bool job_sorted(const struct nat_job *j)
{
    return j->q.sort != CTL_SORT_ID || j->q.desc;
}

static int job_write_row(struct nat_job *j, const struct nat_session *s)
{
    char row[CTL_SESSION_JSON_MAX + 1];
    int n;

    if (j->emitted > 0)
        row[0] = ',';
    n = ctl_session_format(row + (j->emitted > 0), sizeof(row) - 1, s,
                           gw_backend_name(j->base.ctx, s->backend), -1, 0, NULL);
    if (n < 0)
        return -EINVAL;
    j->emitted++;
    return ctl_client_write(j->c, row, (size_t)n + (j->emitted > 1));
}

static int nat_job_visit(void *arg, const struct nat_session *s)
{
    struct nat_job *j = arg;

    if (s->id <= j->skip_to)
        return 0; /* storage-order walk: counted before, or before after_id */
    j->cursor = s->id;
    j->matched++;
    if (job_sorted(j)) {
        if (j->n_keep < j->max_keep) {
            heap_push(j, s);
        } else if (j->max_keep > 0 && job_cmp(j, s, &j->keep[0]) < 0) {
            j->keep[0] = *s;
            j->keep[0].udata = NULL;
            heap_sift_down(j, 0);
        }
    } else if (j->matched > j->q.offset && j->emitted < j->q.limit) {
        int rc = job_write_row(j, s);
        if (rc < 0) {
            j->err = rc;
            return 1;
        }
        if (ctl_client_pending(j->c) >= CTL_OUT_HIGH)
            j->budget = 1;
    }
    return step_spent(&j->budget, &j->visits, &j->deadline);
}

/* True when q's filter lets every session through. */
static bool filter_is_empty(const struct ctl_nat_query *q)
{
    const struct nat_filter *f = &q->filter;

    return !f->proto && !f->has_client && !f->has_nat_ip && !f->nat_port_lo && !f->nat_port_hi &&
           !f->has_backend && f->state < 0;
}

static int nat_job_step(struct ctl_client *c, void *state)
{
    struct nat_job *j = state;
    char buf[256];
    int n, rc;

    j->c = c;
    if (!j->head_sent) {
        n = ctl_reply_stream_head(buf, sizeof(buf), j->base.id);
        if (n < 0)
            return -EINVAL;
        n += snprintf(buf + n, sizeof(buf) - (size_t)n,
                      "\"offset\":%" PRIu64 ",\"limit\":%u,\"sort\":\"%s%s\",\"sessions\":[",
                      j->q.offset, j->q.limit, j->q.desc ? "-" : "", ctl_sort_name(j->q.sort));
        if ((rc = ctl_client_write(c, buf, (size_t)n)) < 0)
            return rc;
        j->head_sent = true;
    }
    if (!j->walked && !job_sorted(j) && j->emitted >= j->q.limit && filter_is_empty(&j->q) &&
        j->q.after_id == 0) {
        /* nothing left to write and nothing filtered: total is the live count */
        struct nat_stats ns;
        nat_get_stats(j->base.ctx->nat, &ns);
        if (ns.live > j->matched)
            j->matched = ns.live;
        j->walked = true;
    }
    if (!j->walked) {
        bool emitting = !job_sorted(j) && j->emitted < j->q.limit;
        j->budget = emitting ? NAT_STEP_ROWS : NAT_STEP_SCAN;
        j->deadline = 0;
        if (emitting) {
            nat_foreach(j->base.ctx->nat, &j->q.filter, j->cursor, nat_job_visit, j);
            /* the walk stopped on its own, not on the step's budget: it is done */
            if (j->budget > 0)
                j->walked = true;
        } else {
            /* order does not matter: sorted listings, or counting the rest
             * of the table once the page is written (ids past the cursor) */
            if (!job_sorted(j) && j->slot == 0)
                j->skip_to = j->cursor;
            nat_walk(j->base.ctx->nat, &j->q.filter, &j->slot, 0, nat_job_visit, j);
            /* nat_walk sets the cursor to 0 at the end of the table */
            if (j->slot == 0)
                j->walked = true;
        }
        if (j->err)
            return j->err;
        if (j->walked && job_sorted(j)) {
            qsort_r(j->keep, j->n_keep, sizeof(*j->keep), qsort_cmp, j);
            j->next_out = (size_t)j->q.offset;
        }
        if (!j->walked)
            return 0;
    }
    if (job_sorted(j)) {
        for (unsigned k = 0; k < NAT_STEP_ROWS && j->next_out < j->n_keep; k++) {
            if ((rc = job_write_row(j, &j->keep[j->next_out++])) < 0)
                return rc;
        }
        if (j->next_out < j->n_keep)
            return 0;
    }
    n = snprintf(buf, sizeof(buf), "],\"total\":%" PRIu64 "}}\n", j->matched);
    if ((rc = ctl_client_write(c, buf, (size_t)n)) < 0)
        return rc;
    return 1;
}

static void nat_job_done(void *state)
{
    struct nat_job *j = state;

    json_decref(j->base.id);
    free(j->keep);
    free(j);
}

static const struct ctl_job_ops nat_job_ops = {
    .step = nat_job_step,
    .done = nat_job_done,
};

static void cmd_show_nat(struct ctl_client *c, const struct ctl_request *req)
{
    struct nat_job *j = cmd_job_new(c, req, sizeof(*j));

    if (!j)
        return;
    j->q = req->u.nat;
    j->cursor = j->q.after_id;
    j->skip_to = j->q.after_id;
    if (resolve_filter(c, req->id, &j->q) < 0) {
        free(j);
        return;
    }
    if (job_sorted(j)) {
        j->max_keep = (size_t)(j->q.offset + j->q.limit);
        j->keep = malloc(j->max_keep * sizeof(*j->keep));
        if (!j->keep) {
            free(j);
            ctl_client_fail(c, req->id, CTL_ERR_INTERNAL, "out of memory");
            return;
        }
    }
    cmd_job_start(c, req, &nat_job_ops, &j->base);
}

/* ---- show clients --------------------------------------------------------- */

/* Distinct client IPs counted at most; more are left out (and said so). */
#define CLIENTS_TRACK_MAX (1u << 20)

struct client_count {
    struct nat_addr ip;
    bool used;
    uint64_t sessions, bytes_in, bytes_out;
};

struct clients_job {
    struct cmd_job base; /* first */
    struct ctl_clients_args a;
    struct client_count *tab; /* owned; open addressing, size a power of 2 */
    size_t size, n;
    uint32_t slot; /* nat_walk's cursor */
    uint64_t sessions;
    bool truncated;
    unsigned budget, visits;
    uint64_t deadline;
};

static size_t addr_hash(const struct nat_addr *a)
{
    uint64_t h = 1469598103934665603ULL;

    for (size_t i = 0; i < sizeof(a->b); i++)
        h = (h ^ a->b[i]) * 1099511628211ULL;
    return (size_t)h;
}

static int clients_grow(struct clients_job *j)
{
    size_t size = j->size ? j->size * 2 : 1024;
    struct client_count *tab = calloc(size, sizeof(*tab));

    if (!tab)
        return -ENOMEM;
    for (size_t i = 0; i < j->size; i++) {
        if (!j->tab[i].used)
            continue;
        size_t k = addr_hash(&j->tab[i].ip) & (size - 1);
        while (tab[k].used)
            k = (k + 1) & (size - 1);
        tab[k] = j->tab[i];
    }
    free(j->tab);
    j->tab = tab;
    j->size = size;
    return 0;
}

static int clients_visit(void *arg, const struct nat_session *s)
{
    struct clients_job *j = arg;
    struct client_count *e;
    size_t k;

    j->sessions++;
    if (j->n * 2 >= j->size && j->n < CLIENTS_TRACK_MAX && clients_grow(j) < 0)
        j->truncated = true;
    k = addr_hash(&s->key.client.addr) & (j->size - 1);
    while (j->tab[k].used && memcmp(&j->tab[k].ip, &s->key.client.addr, sizeof(s->key.client.addr)))
        k = (k + 1) & (j->size - 1);
    e = &j->tab[k];
    if (!e->used) {
        if (j->n >= CLIENTS_TRACK_MAX || j->n * 2 >= j->size) {
            j->truncated = true;
            return step_spent(&j->budget, &j->visits, &j->deadline);
        }
        e->used = true;
        e->ip = s->key.client.addr;
        j->n++;
    }
    e->sessions++;
    e->bytes_in += s->bytes_in;
    e->bytes_out += s->bytes_out;
    return step_spent(&j->budget, &j->visits, &j->deadline);
}

static int clients_cmp(const void *pa, const void *pb, void *arg)
{
    const struct client_count *a = pa, *b = pb;
    const struct clients_job *j = arg;
    uint64_t ka = j->a.by_bytes ? a->bytes_in + a->bytes_out : a->sessions;
    uint64_t kb = j->a.by_bytes ? b->bytes_in + b->bytes_out : b->sessions;

    if (ka != kb)
        return ka > kb ? -1 : 1;
    return memcmp(&a->ip, &b->ip, sizeof(a->ip));
}

static int clients_job_step(struct ctl_client *c, void *state)
{
    struct clients_job *j = state;
    json_t *r, *arr;
    size_t n = 0;
    char ip[NAT_ADDR_STRLEN];

    if (!j->tab && clients_grow(j) < 0)
        return -ENOMEM;
    j->budget = NAT_STEP_SCAN;
    j->deadline = 0;
    nat_walk(j->base.ctx->nat, NULL, &j->slot, 0, clients_visit, j);
    if (j->slot != 0)
        return 0;
    /* walked: compact, sort, reply */
    for (size_t i = 0; i < j->size; i++)
        if (j->tab[i].used)
            j->tab[n++] = j->tab[i];
    qsort_r(j->tab, n, sizeof(*j->tab), clients_cmp, j);
    r = json_object();
    arr = json_array();
    for (size_t i = 0; i < n && i < j->a.limit; i++) {
        json_t *e = json_object();
        json_object_set_new(e, "client_ip", json_string(nat_addr_format(&j->tab[i].ip, ip)));
        json_object_set_new(e, "sessions", jint(j->tab[i].sessions));
        json_object_set_new(e, "bytes_in", jint(j->tab[i].bytes_in));
        json_object_set_new(e, "bytes_out", jint(j->tab[i].bytes_out));
        json_array_append_new(arr, e);
    }
    json_object_set_new(r, "total", jint(n));
    json_object_set_new(r, "sessions", jint(j->sessions));
    json_object_set_new(r, "truncated", json_boolean(j->truncated));
    json_object_set_new(r, "clients", arr);
    ctl_client_reply(c, j->base.id, r);
    return 1;
}

static void clients_job_done(void *state)
{
    struct clients_job *j = state;

    json_decref(j->base.id);
    free(j->tab);
    free(j);
}

static const struct ctl_job_ops clients_job_ops = {
    .step = clients_job_step,
    .done = clients_job_done,
};

static void cmd_show_clients(struct ctl_client *c, const struct ctl_request *req)
{
    struct clients_job *j = cmd_job_new(c, req, sizeof(*j));

    if (!j)
        return;
    j->a = req->u.clients;
    cmd_job_start(c, req, &clients_job_ops, &j->base);
}

/* ---- show blocks ---------------------------------------------------------- */

/*
 * The first `limit` blocks that pass the filter in (nat address, port) order:
 * a max-heap of at most `limit` copies over one walk of libnat's clients, so
 * memory stays bounded by the page, not by the pool (a pool of one-port
 * blocks over 64 addresses has millions), and the time is one pass,
 * O(blocks x log limit), with no copy or sort of every block.
 */
struct blocks_acc {
    const struct nat_filter *f;
    struct nat_block_info *heap; /* owned; max-heap by block_cmp */
    size_t n, limit;
    uint64_t total;
};

/* By external address (as bytes), then port. */
static int block_cmp(const void *pa, const void *pb)
{
    const struct nat_block_info *a = pa, *b = pb;
    int c = memcmp(&a->nat, &b->nat, sizeof(a->nat));

    return c != 0 ? c : (a->port_lo > b->port_lo) - (a->port_lo < b->port_lo);
}

static void block_heap_down(struct nat_block_info *h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && block_cmp(&h[l], &h[m]) > 0)
            m = l;
        if (r < n && block_cmp(&h[r], &h[m]) > 0)
            m = r;
        if (m == i)
            return;
        struct nat_block_info tmp = h[i];
        h[i] = h[m];
        h[m] = tmp;
        i = m;
    }
}

static int blocks_visit(void *arg, const struct nat_block_info *b)
{
    struct blocks_acc *a = arg;
    const struct nat_filter *f = a->f;
    uint16_t hi = f->nat_port_hi != 0 ? f->nat_port_hi : UINT16_MAX;

    if (f->has_client && !nat_addr_in_prefix(&b->client, &f->client, f->client_plen))
        return 0;
    if (f->has_nat_ip && memcmp(&b->nat, &f->nat_ip, sizeof(b->nat)) != 0)
        return 0;
    if ((f->nat_port_lo != 0 || f->nat_port_hi != 0) &&
        (b->port_last < f->nat_port_lo || b->port_lo > hi))
        return 0;
    a->total++;
    if (a->n < a->limit) {
        size_t i = a->n++;
        a->heap[i] = *b;
        while (i > 0 && block_cmp(&a->heap[(i - 1) / 2], &a->heap[i]) < 0) {
            struct nat_block_info tmp = a->heap[i];
            a->heap[i] = a->heap[(i - 1) / 2];
            a->heap[(i - 1) / 2] = tmp;
            i = (i - 1) / 2;
        }
    } else if (block_cmp(b, &a->heap[0]) < 0) {
        a->heap[0] = *b; /* replaces the greatest kept */
        block_heap_down(a->heap, a->n, 0);
    }
    return 0;
}

static void cmd_show_blocks(struct ctl_client *c, const struct ctl_request *req)
{
    struct gw_ctx *ctx = ctl_client_ctx(c);
    struct blocks_acc a = {.f = &req->u.blocks.filter, .limit = req->u.blocks.limit};
    char ip[NAT_ADDR_STRLEN], t[CTL_TIME_STRLEN];

    if (!ctx->nat) {
        ctl_client_fail(c, req->id, CTL_ERR_UNAVAILABLE, "the NAT table is not running");
        return;
    }
    a.heap = malloc(a.limit * sizeof(*a.heap));
    if (!a.heap) {
        ctl_client_fail(c, req->id, CTL_ERR_INTERNAL, "out of memory");
        return;
    }
    nat_blocks_each(ctx->nat, blocks_visit, &a);
    qsort(a.heap, a.n, sizeof(*a.heap), block_cmp);
    uint64_t now = gw_now_ms();
    json_t *arr = json_array();
    for (size_t i = 0; i < a.n; i++) {
        const struct nat_block_info *b = &a.heap[i];
        json_t *o = json_object();
        json_object_set_new(o, "client_ip", json_string(nat_addr_format(&b->client, ip)));
        json_object_set_new(o, "nat_ip", json_string(nat_addr_format(&b->nat, ip)));
        json_object_set_new(o, "nat_port", json_integer(b->port_lo));
        json_object_set_new(o, "nat_port_last", json_integer(b->port_last));
        json_object_set_new(o, "sessions", json_integer(b->sessions));
        json_object_set_new(o, "hold_until",
                            b->held ? json_string(ctl_time_format(b->hold_until, t)) : json_null());
        json_object_set_new(o, "hold_left_ms",
                            b->held ? jint(b->hold_until > now ? b->hold_until - now : 0)
                                    : json_null());
        json_array_append_new(arr, o);
    }
    const struct nat_config *nc = nat_table_config(ctx->nat);
    ctl_client_reply(c, req->id,
                     json_pack("{s:s,s:i,s:I,s:o}", "policy", nat_policy_name(nc->policy),
                               "block_size", nc->policy == NAT_POLICY_BLOCK ? nc->block_size : 0,
                               "total", (json_int_t)a.total, "blocks", arr));
    free(a.heap);
}

/* ---- dispatch ------------------------------------------------------------- */

void gw_cmd_run(struct ctl_client *c, const struct ctl_request *req)
{
    /* a streamed reply is one long line: events must not land inside it */
    if (ctl_client_subscribed(c) &&
        (req->cmd == CTL_CMD_SHOW_NAT || req->cmd == CTL_CMD_SHOW_CLIENTS)) {
        ctl_client_fail(c, req->id, CTL_ERR_BUSY,
                        "this connection is subscribed to events: send '%s' on another one",
                        ctl_cmd_name(req->cmd));
        return;
    }
    switch (req->cmd) {
    case CTL_CMD_VERSION:
        cmd_version(c, req);
        break;
    case CTL_CMD_SHOW_STATS:
        cmd_show_stats(c, req);
        break;
    case CTL_CMD_SHOW_NAT:
        cmd_show_nat(c, req);
        break;
    case CTL_CMD_SHOW_BACKENDS:
        cmd_show_backends(c, req);
        break;
    case CTL_CMD_SHOW_CONFIG:
        cmd_show_config(c, req);
        break;
    case CTL_CMD_FLUSH_NAT:
        cmd_flush_nat(c, req);
        break;
    case CTL_CMD_BACKEND_DRAIN:
    case CTL_CMD_BACKEND_ENABLE:
    case CTL_CMD_BACKEND_DISABLE:
        cmd_backend(c, req);
        break;
    case CTL_CMD_SUBSCRIBE:
        cmd_subscribe(c, req);
        break;
    case CTL_CMD_SHOW_CLIENTS:
        cmd_show_clients(c, req);
        break;
    case CTL_CMD_SHOW_BLOCKS:
        cmd_show_blocks(c, req);
        break;
    default:
        ctl_client_fail(c, req->id, CTL_ERR_UNKNOWN_COMMAND, "unknown command");
        break;
    }
}
