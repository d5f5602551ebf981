/*
 * gw_daemon.c - the daemon's life cycle that is not main(): reload (SIGHUP)
 * keeping what cannot change while running, and the graceful stop (drain).
 * In gwcore so that the control socket can call them too.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gwd.h"

static bool same_binds(const struct gw_config *a, const struct gw_config *b)
{
    if (a->n_binds != b->n_binds)
        return false;
    for (size_t i = 0; i < a->n_binds; i++)
        if (a->binds[i].len != b->binds[i].len ||
            memcmp(&a->binds[i].ss, &b->binds[i].ss, a->binds[i].len) != 0)
            return false;
    return true;
}

static bool str_eq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void keep_str(char **dst, char **src, const char *what)
{
    if (str_eq(*dst, *src))
        return;
    gw_log(GW_LOG_WARN, "reload: %s changes only with a restart; kept %s", what,
           *src ? *src : "(none)");
    free(*dst);
    *dst = *src;
    *src = NULL;
}

/* Keeps in `next` what cannot change while running, warning about each. */
static void keep_fixed(struct gw_ctx *ctx, struct gw_config *next)
{
    struct gw_config *cur = ctx->cfg;
    const struct nat_config *running = nat_table_config(ctx->nat);
    struct nat_config n = *running;

    if (next->port != cur->port || !same_binds(cur, next)) {
        gw_log(GW_LOG_WARN, "reload: listen port and addresses change only with a restart");
        next->port = cur->port;
        memcpy(next->binds, cur->binds, sizeof(cur->binds));
        next->n_binds = cur->n_binds;
        next->binds_default = cur->binds_default;
    }
    if (next->nat.policy != running->policy || next->nat.mapping != running->mapping ||
        next->nat.n_ips != running->n_ips ||
        memcmp(next->nat.ips, running->ips, sizeof(running->ips[0]) * running->n_ips) != 0 ||
        next->nat.port_lo != running->port_lo || next->nat.port_hi != running->port_hi ||
        next->nat.block_size != running->block_size ||
        next->nat.max_blocks_per_client != running->max_blocks_per_client ||
        next->nat_log_blocks != cur->nat_log_blocks)
        gw_log(GW_LOG_WARN, "reload: nat policy, mapping, ips, ports, blocks and log change "
                            "only with a restart; the running ones are kept");
    next->nat_log_blocks = cur->nat_log_blocks;
    memcpy(n.timeout_ms, next->nat.timeout_ms, sizeof(n.timeout_ms));
    n.per_client_limit = next->nat.per_client_limit;
    n.reuse_delay_ms = next->nat.reuse_delay_ms;
    n.block_hold_ms = next->nat.block_hold_ms;
    n.max_sessions = next->nat.max_sessions;
    next->nat = n;
    keep_str(&next->db_path, &cur->db_path, "db");
    keep_str(&next->control_path, &cur->control_path, "control");
    keep_str(&next->user, &cur->user, "user");
}

/* Re-reads the configuration; applies it or keeps the old one (see gwd.h). */
int gw_reload(struct gw_ctx *ctx)
{
    struct gw_config *next = NULL, *old;
    char err[512];
    int rc;

    rc = gw_config_load(&ctx->cli, &next, err, sizeof(err));
    if (rc < 0) {
        ctx->counters.reload_failures++;
        gw_log(GW_LOG_ERROR, "reload refused, the running configuration stays: %s", err);
        return -EINVAL;
    }
    keep_fixed(ctx, next);
    if (nat_table_reconfigure(ctx->nat, &next->nat) != NAT_OK) {
        ctx->counters.reload_failures++;
        gw_log(GW_LOG_ERROR, "reload refused: the nat table rejected the new timeouts/limits");
        gw_config_free(next);
        return -EINVAL;
    }
    if (next->buffer_size > ctx->scratch_size) {
        char *s = realloc(ctx->scratch, next->buffer_size);
        if (s) {
            ctx->scratch = s;
            ctx->scratch_size = next->buffer_size;
        }
    }
    old = ctx->cfg;
    ctx->cfg = next;
    rc = gw_backends_apply(ctx);
    if (rc < 0) {
        ctx->cfg = old;
        nat_table_reconfigure(ctx->nat, &old->nat);
        gw_config_free(next);
        ctx->counters.reload_failures++;
        gw_log(GW_LOG_ERROR, "reload refused: %s", strerror(-rc));
        return rc;
    }
    gw_config_free(old);
    gw_log_level = next->log_level;
    ctx->counters.reloads++;
    gw_log(GW_LOG_INFO, "reloaded: %zu backends, %zu routes, %lu flows kept", next->n_backends,
           next->n_routes, (unsigned long)gw_flows_live(ctx));
    return 0;
}

/* Closes every live flow of `proto` (0 = all) with `reason`. */
void gw_flows_close_all(struct gw_ctx *ctx, int proto, const char *reason)
{
    struct gw_flow *f, *next;

    for (f = LIST_FIRST(&ctx->flows); f; f = next) {
        next = LIST_NEXT(f, link);
        if (proto == 0 || f->proto == proto)
            gw_flow_close(f, reason);
    }
}

static void drain_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct gw_ctx *ctx = w->data;

    (void)revents;
    gw_log(GW_LOG_WARN, "drain time over: closing %lu flows", (unsigned long)gw_flows_live(ctx));
    gw_flows_close_all(ctx, 0, "shutdown");
    ev_break(loop, EVBREAK_ALL);
}

/* Stop accepting, close UDP mappings, let TCP flows finish up to the drain time. */
void gw_shutdown(struct gw_ctx *ctx)
{
    if (ctx->stopping) {
        gw_log(GW_LOG_WARN, "second stop signal: closing %lu flows now",
               (unsigned long)gw_flows_live(ctx));
        gw_flows_close_all(ctx, 0, "shutdown");
        ev_break(ctx->loop, EVBREAK_ALL);
        return;
    }
    ctx->stopping = true;
    gw_listen_stop_tcp(ctx);
    gw_flows_close_all(ctx, NAT_PROTO_UDP, "shutdown");
    gw_log(GW_LOG_INFO, "stopping: %lu TCP flows may finish within %.1f s",
           (unsigned long)ctx->counters.tcp_live, ctx->cfg->drain_timeout_ms / 1000.0);
    if (gw_flows_live(ctx) == 0) {
        ev_break(ctx->loop, EVBREAK_ALL);
        return;
    }
    ev_timer_init(&ctx->drain_timer, drain_timeout_cb, ctx->cfg->drain_timeout_ms / 1000.0, 0.);
    ctx->drain_timer.data = ctx;
    ev_timer_start(ctx->loop, &ctx->drain_timer);
}
