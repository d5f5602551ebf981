/*
 * gw_flow.c - what TCP and UDP flows share: the one teardown
 * gw_flow_close(flow, reason), live counts, state names.
 */
#include <stdlib.h>
#include <string.h>

#include "gwd.h"

/* "connecting", "relay", "half_closed", "closed". */
const char *gw_flow_state_name(enum gw_flow_state st)
{
    switch (st) {
    case GW_FLOW_CONNECTING:
        return "connecting";
    case GW_FLOW_RELAY:
        return "relay";
    case GW_FLOW_HALF_CLOSED:
        return "half_closed";
    case GW_FLOW_CLOSED:
        return "closed";
    }
    return "?";
}

/* Live flows. */
uint64_t gw_flows_live(const struct gw_ctx *ctx)
{
    return ctx->counters.tcp_live + ctx->counters.udp_live;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* The one teardown (see gwd.h). */
void gw_flow_close(struct gw_flow *flow, const char *reason)
{
    struct gw_ctx *ctx = flow->ctx;
    struct nat_session *s = flow->sess;

    if (flow->state == GW_FLOW_CLOSED)
        return;
    flow->state = GW_FLOW_CLOSED;
    flow->sess = NULL;
    if (s) {
        s->udata = NULL;
        nat_session_close(ctx->nat, s, (uint64_t)(ev_now(ctx->loop) * 1000.0), reason);
    }
    if (gw_log_level >= GW_LOG_DEBUG) {
        char ip[NAT_ADDR_STRLEN];
        gw_log(GW_LOG_DEBUG, "%s flow %s:%u via %s closed: %s", nat_proto_name(flow->proto),
               nat_addr_format(&flow->client.addr, ip), flow->client.port,
               flow->server ? flow->server->conf.name : "-", reason);
    }
    if (flow->proto == NAT_PROTO_TCP) {
        bool rst = ends_with(reason, "_rst");
        if (rst)
            ctx->counters.closed_by_reason_rst++;
        gw_tcp_release(flow, rst);
        ctx->counters.tcp_live--;
    } else {
        gw_udp_release(flow);
        ctx->counters.udp_live--;
    }
    if (flow->server)
        gw_server_release(flow->server);
    LIST_REMOVE(flow, link);
    free(flow);
    if (ctx->stopping && gw_flows_live(ctx) == 0)
        ev_break(ctx->loop, EVBREAK_ALL);
}
