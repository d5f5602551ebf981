/*
 * gw_route.c - picks the backend pool of a new flow. Routes are tried in
 * order; the first whose match accepts the flow wins. A match looks at the
 * protocol today; a first-bytes matcher (HTTP Host, TLS SNI, SSH banner,
 * DNS) becomes one more field of gw_route_conf.match and gw_route_input,
 * checked here, with the TCP path buffering the first bytes before routing.
 */
#include <string.h>

#include "gwd.h"

static bool route_matches(const struct gw_route_conf *r, const struct gw_route_input *in)
{
    return r->match.proto == 0 || r->match.proto == in->proto;
}

/* The pool for a new flow, or NULL when no route matches. */
struct gw_backend *gw_route_pick(struct gw_ctx *ctx, const struct gw_route_input *in)
{
    const struct gw_config *cfg = ctx->cfg;

    for (size_t i = 0; i < cfg->n_routes; i++) {
        const struct gw_route_conf *r = &cfg->routes[i];
        if (!route_matches(r, in))
            continue;
        struct gw_backend *b = gw_backend_find(ctx, r->backend);
        if (b && b->proto == in->proto)
            return b;
    }
    return NULL;
}
