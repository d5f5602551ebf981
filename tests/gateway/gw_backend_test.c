/*
 * gw_backend_test.c - backend pools without sockets: balance algorithms with
 * weights, max_conns, admin drain/enable/disable by NAME[/SERVER], servers
 * carried over (and retired) by a reload, stable tags, routes by protocol.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "gateway/gwd.h"

static struct gw_ctx ctx;
static int events;

static void count_event(void *arg, const struct gw_event *ev)
{
    (void)arg;
    if (ev->type == GW_EV_BACKEND)
        events++;
}

static void load(const char *json)
{
    char err[256];
    struct gw_config *cfg = NULL;
    cr_assert_eq(gw_config_parse(json, &cfg, err, sizeof(err)), 0, "%s", err);
    gw_config_free(ctx.cfg);
    ctx.cfg = cfg;
    cr_assert_eq(gw_backends_apply(&ctx), 0);
}

static void setup(void)
{
    memset(&ctx, 0, sizeof(ctx));
    ctx.loop = ev_loop_new(EVFLAG_AUTO);
    TAILQ_INIT(&ctx.backends);
    TAILQ_INIT(&ctx.retired);
    LIST_INIT(&ctx.flows);
    LIST_INIT(&ctx.subscribers);
    events = 0;
    cr_assert_eq(gw_subscribe(&ctx, count_event, NULL), 0);
}

static void teardown(void)
{
    gw_unsubscribe(&ctx, count_event, NULL);
    cr_assert(LIST_EMPTY(&ctx.subscribers));
    gw_backends_free(&ctx);
    gw_config_free(ctx.cfg);
    ev_loop_destroy(ctx.loop);
}

TestSuite(gw_backend, .init = setup, .fini = teardown);

#define POOL(balance, servers)                                                                     \
    "{\"backends\":[{\"name\":\"web\",\"proto\":\"tcp\",\"balance\":\"" balance                    \
    "\",\"health\":{\"enabled\":false},\"servers\":[" servers "]},{\"name\":\"dns\",\"proto\":"    \
    "\"udp\",\"servers\":[\"127.0.0.1:53\"]}]}"

static struct nat_addr ip(const char *s)
{
    struct nat_addr a;
    cr_assert_eq(nat_addr_parse(&a, s), 0);
    return a;
}

Test(gw_backend, weighted_round_robin_is_smooth)
{
    load(POOL("roundrobin", "{\"address\":\"127.0.0.1:1\",\"name\":\"a\",\"weight\":3},"
                            "{\"address\":\"127.0.0.1:2\",\"name\":\"b\",\"weight\":1}"));
    struct gw_backend *b = gw_backend_find(&ctx, "web");
    struct nat_addr c = ip("10.0.0.1");
    char order[9] = {0};
    for (int i = 0; i < 8; i++)
        order[i] = gw_backend_pick(b, &c, 0, NULL)->conf.name[0];
    cr_assert_str_eq(order, "aabaaaba");
    /* tried: the other server even when it is not its turn. */
    uint32_t bit = 0;
    struct gw_server *a = gw_backend_pick(b, &c, 0, &bit);
    cr_assert_eq(bit, gw_server_bit(b, a));
    cr_assert_str_eq(gw_backend_pick(b, &c, bit, NULL)->conf.name, "b");
}

/* A flow that tried some servers gets one it has not tried, under every
 * balance: with A and B tried, C, whatever the client (source hashing would
 * otherwise send two clients in three back to A or B). */
Test(gw_backend, pick_skips_every_server_already_tried)
{
    static const char *const balances[] = {"roundrobin", "leastconn", "source"};
    for (int k = 0; k < 3; k++) {
        char pool[512];
        snprintf(pool, sizeof(pool),
                 "{\"listen\":{\"port\":8080},\"backends\":[{\"name\":\"web\",\"proto\":"
                 "\"tcp\",\"balance\":\"%s\",\"servers\":[{\"address\":\"127.0.0.1:1\","
                 "\"name\":\"a\"},{\"address\":\"127.0.0.1:2\",\"name\":\"b\"},"
                 "{\"address\":\"127.0.0.1:3\",\"name\":\"c\"}]}]}",
                 balances[k]);
        load(pool);
        struct gw_backend *b = gw_backend_find(&ctx, "web");
        struct gw_server *a = TAILQ_FIRST(&b->servers), *bb = TAILQ_NEXT(a, link);
        uint32_t tried = gw_server_bit(b, a) | gw_server_bit(b, bb);
        cr_assert_eq(tried, 3u);
        for (int i = 0; i < 50; i++) {
            char s[32];
            snprintf(s, sizeof(s), "10.1.%d.%d", i / 9, i);
            struct nat_addr c = ip(s);
            uint32_t bit = 0;
            struct gw_server *got = gw_backend_pick(b, &c, tried, &bit);
            cr_assert_not_null(got);
            cr_assert_str_eq(got->conf.name, "c", "%s, client %s", balances[k], s);
            cr_assert_eq(bit, 4u);
        }
        struct nat_addr c = ip("10.1.0.1");
        cr_assert_null(gw_backend_pick(b, &c, 7u, NULL), "all tried");
        cr_assert_eq(gw_server_bit(b, NULL), 0u);
    }
}

Test(gw_backend, leastconn_and_max_conns)
{
    load(POOL("leastconn", "{\"address\":\"127.0.0.1:1\",\"name\":\"a\",\"max_conns\":2},"
                           "{\"address\":\"127.0.0.1:2\",\"name\":\"b\",\"weight\":2}"));
    struct gw_backend *b = gw_backend_find(&ctx, "web");
    struct nat_addr c = ip("10.0.0.1");
    struct gw_server *got[6];
    for (int i = 0; i < 6; i++) {
        got[i] = gw_backend_pick(b, &c, 0, NULL);
        cr_assert_not_null(got[i]);
        gw_server_acquire(got[i]);
    }
    struct gw_server *a = TAILQ_FIRST(&b->servers), *bb = TAILQ_NEXT(a, link);
    cr_assert_eq(a->conns, 2); /* capped by max_conns */
    cr_assert_eq(bb->conns, 4);
    for (int i = 0; i < 6; i++)
        gw_server_release(got[i]);
    cr_assert_eq(a->conns + bb->conns, 0);
    cr_assert_eq(a->total_conns, 2);
}

Test(gw_backend, source_hash_is_sticky)
{
    load(POOL("source", "\"127.0.0.1:1\",\"127.0.0.1:2\",\"127.0.0.1:3\""));
    struct gw_backend *b = gw_backend_find(&ctx, "web");
    int used[3] = {0};
    for (int i = 0; i < 60; i++) {
        char s[32];
        snprintf(s, sizeof(s), "10.0.%d.%d", i / 7, i);
        struct nat_addr c = ip(s);
        struct gw_server *first = gw_backend_pick(b, &c, 0, NULL);
        for (int k = 0; k < 3; k++)
            cr_assert_eq(gw_backend_pick(b, &c, 0, NULL), first);
        used[first->conf.name[10] - '1']++;
    }
    cr_assert(used[0] > 0 && used[1] > 0 && used[2] > 0);
}

Test(gw_backend, drain_enable_disable_by_name)
{
    load(POOL("roundrobin", "{\"address\":\"127.0.0.1:1\",\"name\":\"a\"},"
                            "{\"address\":\"127.0.0.1:2\",\"name\":\"b\"}"));
    struct gw_backend *b = gw_backend_find(&ctx, "web");
    struct nat_addr c = ip("10.0.0.1");
    cr_assert_eq(gw_backend_drain(&ctx, "web/a"), 0);
    cr_assert_eq(events, 1);
    for (int i = 0; i < 4; i++)
        cr_assert_str_eq(gw_backend_pick(b, &c, 0, NULL)->conf.name, "b");
    cr_assert_str_eq(gw_server_state_name(TAILQ_FIRST(&b->servers)), "draining");
    cr_assert_eq(gw_backend_disable(&ctx, "web"), 0);
    cr_assert_null(gw_backend_pick(b, &c, 0, NULL));
    cr_assert_eq(b->no_server, 1);
    cr_assert_eq(gw_backend_enable(&ctx, "web/b"), 0);
    cr_assert_str_eq(gw_backend_pick(b, &c, 0, NULL)->conf.name, "b");
    cr_assert_eq(gw_backend_drain(&ctx, "nope"), -ENOENT);
    cr_assert_eq(gw_backend_drain(&ctx, "web/nope"), -ENOENT);
    cr_assert_eq(gw_backend_drain(&ctx, ""), -ENOENT);
    json_t *j = gw_backend_to_json(b);
    cr_assert_not_null(j);
    cr_assert_str_eq(json_string_value(json_object_get(j, "name")), "web");
    json_t *s0 = json_array_get(json_object_get(j, "servers"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(s0, "state")), "disabled");
    json_decref(j);
}

Test(gw_backend, reload_carries_servers_over_and_retires_the_rest)
{
    load(POOL("roundrobin", "{\"address\":\"127.0.0.1:1\",\"name\":\"a\"},"
                            "{\"address\":\"127.0.0.1:2\",\"name\":\"b\"}"));
    struct gw_backend *b = gw_backend_find(&ctx, "web");
    uint32_t tag = b->tag;
    struct gw_server *a = TAILQ_FIRST(&b->servers), *bb = TAILQ_NEXT(a, link);
    gw_server_acquire(a);
    gw_server_acquire(bb);
    cr_assert_eq(gw_backend_drain(&ctx, "web/a"), 0);
    load(POOL("leastconn", "{\"address\":\"127.0.0.1:1\",\"name\":\"a\",\"weight\":5},"
                           "{\"address\":\"127.0.0.1:3\",\"name\":\"c\"}"));
    b = gw_backend_find(&ctx, "web");
    cr_assert_eq(b->tag, tag, "a pool keeps its tag");
    cr_assert_eq(TAILQ_FIRST(&b->servers), a, "same server object");
    cr_assert_eq(a->conns, 1);
    cr_assert_eq(a->admin, GW_ADMIN_DRAINING);
    cr_assert_eq(a->conf.weight, 5);
    cr_assert_eq(TAILQ_FIRST(&ctx.retired), bb, "b keeps living for its flow");
    cr_assert_null(bb->backend);
    gw_server_release(bb); /* its last flow: freed */
    cr_assert(TAILQ_EMPTY(&ctx.retired));
    gw_server_release(a);
    cr_assert_str_eq(gw_backend_name(&ctx, tag), "web");
    cr_assert_str_eq(gw_backend_name(&ctx, 0), "");
    cr_assert_str_eq(gw_backend_name(&ctx, 999), "");

    /* A pool removed by a reload: its name stays known by tag. */
    uint32_t dns = gw_backend_find(&ctx, "dns")->tag;
    load("{\"backends\":[{\"name\":\"web\",\"proto\":\"tcp\",\"servers\":[\"127.0.0.1:1\"]}]}");
    cr_assert_null(gw_backend_find(&ctx, "dns"));
    cr_assert_str_eq(gw_backend_name(&ctx, dns), "dns");
}

Test(gw_backend, routes_by_protocol)
{
    load(POOL("roundrobin", "\"127.0.0.1:1\""));
    struct nat_endpoint ep = {0};
    struct gw_route_input tcp = {NAT_PROTO_TCP, &ep}, udp = {NAT_PROTO_UDP, &ep};
    cr_assert_str_eq(gw_route_pick(&ctx, &tcp)->name, "web");
    cr_assert_str_eq(gw_route_pick(&ctx, &udp)->name, "dns");
    load("{\"backends\":[{\"name\":\"web\",\"proto\":\"tcp\",\"servers\":[\"127.0.0.1:1\"]}]}");
    cr_assert_null(gw_route_pick(&ctx, &udp));
}
