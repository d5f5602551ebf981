/* test_nat_policy.c - allocation policies, mapping behaviours, paired
 * pooling, blocks, pool exhaustion without eviction, IPv6 pools. */
#include "tests/nat/nat_test_util.h"

static struct nat_key kn(uint8_t proto, const char *client, uint16_t cport, const char *dst,
                         uint16_t dport)
{
    return KEY(proto, client, cport, dst, dport);
}

/* A pool of one IPv4 and one IPv6 external address. */
static void dual_stack(struct nat_config *c)
{
    c->n_ips = 2;
    c->ips[0] = A("198.51.100.1");
    c->ips[1] = A("2001:db8:1::1");
}

Test(nat_policy, random_is_seeded_and_in_range)
{
    struct nat_config c = small_cfg(NAT_POLICY_RANDOM, NAT_MAPPING_EIM, 40000, 40999);
    struct nat_table *a = mk(&c, NULL), *b = mk(&c, NULL), *d;
    uint16_t pa[50], pb[50];
    int differ = 0, seq = 0;

    c.seed = 43;
    d = mk(&c, NULL);
    for (int i = 0; i < 50; i++) {
        struct nat_key k = kn(NAT_PROTO_UDP, "10.0.0.1", (uint16_t)(1000 + i), "192.0.2.1", 53);

        pa[i] = open_ok(a, &k, 0)->ext.port;
        pb[i] = open_ok(b, &k, 0)->ext.port;
        cr_assert_eq(pa[i], pb[i], "same seed, same choices");
        cr_assert(pa[i] >= 40000 && pa[i] <= 40999);
        differ += open_ok(d, &k, 0)->ext.port != pa[i];
        seq += i > 0 && pa[i] == pa[i - 1] + 1;
    }
    cr_assert_gt(differ, 40, "another seed, other choices");
    cr_assert_lt(seq, 10, "random is not sequential");
    nat_table_free(a);
    nat_table_free(b);
    nat_table_free(d);
}

Test(nat_policy, sequential_wraps_and_skips_used)
{
    struct nat_config c = small_cfg(NAT_POLICY_SEQUENTIAL, NAT_MAPPING_EIM, 100, 103);
    struct nat_table *t = mk(&c, NULL);
    struct nat_session *s[4], *x = NULL;

    for (int i = 0; i < 4; i++) {
        struct nat_key k = kn(NAT_PROTO_TCP, "10.0.0.1", (uint16_t)(1 + i), "192.0.2.1", 80);

        s[i] = open_ok(t, &k, 0);
        cr_assert_eq(s[i]->ext.port, 100 + i);
    }
    struct nat_key k = kn(NAT_PROTO_TCP, "10.0.0.1", 9, "192.0.2.1", 80);
    cr_assert_eq(nat_session_open(t, &k, 0, 0, &x), NAT_ERR_POOL_EXHAUSTED);
    nat_session_close(t, s[2], 0, "client_fin");
    nat_session_close(t, s[0], 0, "client_fin");
    /* after 103 comes 100 (wrap), then 102 */
    cr_assert_eq(open_ok(t, &k, 0)->ext.port, 100);
    k.client.port = 10;
    cr_assert_eq(open_ok(t, &k, 0)->ext.port, 102);
    /* tcp and udp have separate pools: udp starts at 100 too */
    k.proto = NAT_PROTO_UDP;
    cr_assert_eq(open_ok(t, &k, 0)->ext.port, 100);
    nat_table_free(t);
}

Test(nat_policy, preserve_keeps_client_port_when_free_and_in_range)
{
    struct nat_config c = small_cfg(NAT_POLICY_PRESERVE, NAT_MAPPING_EIM, 40000, 40099);
    struct nat_table *t = mk(&c, NULL);
    struct nat_key k1 = kn(NAT_PROTO_TCP, "10.0.0.1", 40050, "192.0.2.1", 80);
    struct nat_key k2 = kn(NAT_PROTO_TCP, "10.0.0.2", 40050, "192.0.2.1", 80);
    struct nat_key k3 = kn(NAT_PROTO_TCP, "10.0.0.3", 5000, "192.0.2.1", 80);
    struct nat_key k4 = kn(NAT_PROTO_UDP, "10.0.0.2", 40050, "192.0.2.1", 80);
    struct nat_session *s2, *s3;

    cr_assert_eq(open_ok(t, &k1, 0)->ext.port, 40050);
    s2 = open_ok(t, &k2, 0); /* taken: another one */
    cr_assert_neq(s2->ext.port, 40050);
    cr_assert(s2->ext.port >= 40000 && s2->ext.port <= 40099);
    s3 = open_ok(t, &k3, 0); /* out of range: not kept (RFC 4787 REQ-3a not applied) */
    cr_assert(s3->ext.port >= 40000 && s3->ext.port <= 40099);
    cr_assert_eq(open_ok(t, &k4, 0)->ext.port, 40050, "udp pool is separate");
    nat_table_free(t);
}

Test(nat_policy, preserve_keeps_port_under_apdm_toward_other_destinations)
{
    struct nat_config c = small_cfg(NAT_POLICY_PRESERVE, NAT_MAPPING_APDM, 40000, 40099);
    struct nat_table *t = mk(&c, NULL);
    struct nat_key k1 = kn(NAT_PROTO_TCP, "10.0.0.1", 40050, "192.0.2.1", 80);
    struct nat_key k2 = kn(NAT_PROTO_TCP, "10.0.0.2", 40050, "192.0.2.2", 80);
    struct nat_key k3 = kn(NAT_PROTO_TCP, "10.0.0.3", 40050, "192.0.2.1", 80);

    cr_assert_eq(open_ok(t, &k1, 0)->ext.port, 40050);
    cr_assert_eq(open_ok(t, &k2, 0)->ext.port, 40050);
    cr_assert_neq(open_ok(t, &k3, 0)->ext.port, 40050);
    nat_table_free(t);
}

Test(nat_policy, block_contiguous_blocks_per_client)
{
    struct nat_config c = small_cfg(NAT_POLICY_BLOCK, NAT_MAPPING_EIM, 1000, 1015);
    struct rec r;
    struct nat_table *t;
    struct nat_session *x = NULL;
    struct nat_stats st;
    uint16_t first, base_b;

    c.block_size = 4;
    c.max_blocks_per_client = 2;
    t = mk(&c, &r);
    /* client A: 4 flows fill one block of 4 contiguous ports */
    struct nat_key k = kn(NAT_PROTO_UDP, "10.0.0.1", 1, "192.0.2.1", 53);
    first = open_ok(t, &k, 0)->ext.port;
    cr_assert_eq((first - 1000) % 4, 0, "a block starts on a block boundary");
    for (uint16_t i = 1; i < 4; i++) {
        k.client.port = (uint16_t)(1 + i);
        cr_assert_eq(open_ok(t, &k, 0)->ext.port, first + i);
    }
    nat_get_stats(t, &st);
    cr_assert_eq(st.blocks_in_use, 1);
    /* client B gets another block */
    struct nat_key kb = kn(NAT_PROTO_UDP, "10.0.0.2", 1, "192.0.2.1", 53);
    base_b = open_ok(t, &kb, 0)->ext.port;
    cr_assert(base_b < first || base_b >= first + 4);
    cr_assert_eq((base_b - 1000) % 4, 0);
    /* A's 5th flow takes a second block, its 9th hits the block limit */
    for (uint16_t i = 4; i < 8; i++) {
        k.client.port = (uint16_t)(1 + i);
        x = open_ok(t, &k, 0);
        cr_assert(x->ext.port < base_b || x->ext.port >= base_b + 4, "in B's block");
    }
    nat_get_stats(t, &st);
    cr_assert_eq(st.blocks_in_use, 3);
    k.client.port = 99;
    x = NULL;
    cr_assert_eq(nat_session_open(t, &k, 0, 0, &x), NAT_ERR_CLIENT_QUOTA);
    cr_assert_null(x);
    cr_assert_str_eq(r.ev[(r.n - 1) % REC_MAX].reason, "client_quota");
    /* C gets the last block, D finds none: pool exhausted */
    struct nat_key kc = kn(NAT_PROTO_UDP, "10.0.0.3", 1, "192.0.2.1", 53);
    open_ok(t, &kc, 0);
    struct nat_key kd = kn(NAT_PROTO_UDP, "10.0.0.4", 1, "192.0.2.1", 53);
    cr_assert_eq(nat_session_open(t, &kd, 0, 0, &x), NAT_ERR_POOL_EXHAUSTED);
    nat_get_stats(t, &st);
    cr_assert_eq(st.blocks_in_use, 4);
    /* when B's last flow goes, its block is free for D */
    nat_session_close(t, nat_lookup_inside(t, &kb), 1, "client_fin");
    nat_get_stats(t, &st);
    cr_assert_eq(st.blocks_in_use, 3);
    cr_assert_eq(open_ok(t, &kd, 2)->ext.port, base_b);
    nat_table_free(t);
}

/* RFC 7422 / port-block allocation logging: one event when a client takes a
 * block, one when it gives it back, with the block's range; none per flow. */
Test(nat_policy, block_events_per_block_not_per_flow)
{
    struct nat_config c = small_cfg(NAT_POLICY_BLOCK, NAT_MAPPING_EIM, 1000, 1015);
    struct rec r;
    struct nat_table *t;
    struct nat_session *s[6];
    char ip[NAT_ADDR_STRLEN];

    c.block_size = 4;
    t = mk(&c, &r);
    struct nat_key k = kn(NAT_PROTO_TCP, "10.0.0.1", 1, "192.0.2.1", 80);
    for (uint16_t i = 0; i < 6; i++) { /* 6 flows: two blocks */
        k.client.port = (uint16_t)(100 + i);
        s[i] = open_ok(t, &k, 10 + i);
    }
    cr_assert_eq(r.by_type[NAT_EV_OPEN], 6);
    cr_assert_eq(r.by_type[NAT_EV_BLOCK_ALLOC], 2);
    /* the first event is the first block, before the first open */
    cr_assert_eq(r.ev[0].type, NAT_EV_BLOCK_ALLOC);
    cr_assert_eq(r.ev[1].type, NAT_EV_OPEN);
    cr_assert_eq(r.ev[0].time, 10);
    cr_assert_eq(r.ev[0].s.id, 0);
    cr_assert_eq(r.ev[0].s.key.proto, 0, "a block serves both protocols");
    cr_assert_str_eq(nat_addr_format(&r.ev[0].s.key.client.addr, ip), "10.0.0.1");
    cr_assert_eq(r.ev[0].s.ext.port, s[0]->ext.port);
    cr_assert_eq(r.ev[0].port_last, s[0]->ext.port + 3);
    cr_assert_eq(r.ev[1].port_last, 0, "flow events carry no range");
    /* the 5th open took the second block */
    cr_assert_eq(r.ev[5].type, NAT_EV_BLOCK_ALLOC);
    cr_assert_eq(r.ev[5].s.ext.port, s[4]->ext.port);
    uint16_t b0 = r.ev[0].s.ext.port, b1 = r.ev[5].s.ext.port;
    /* closing all but the last flow frees nothing */
    for (int i = 0; i < 5; i++)
        nat_session_close(t, s[i], 20, "client_fin");
    cr_assert_eq(r.by_type[NAT_EV_BLOCK_FREE], 0);
    /* the last close comes first, then both blocks go */
    nat_session_close(t, s[5], 30, "client_fin");
    cr_assert_eq(r.by_type[NAT_EV_BLOCK_FREE], 2);
    cr_assert_eq(r.ev[r.n - 3].type, NAT_EV_CLOSE);
    struct nat_event *f1 = &r.ev[r.n - 2], *f2 = &r.ev[r.n - 1];
    cr_assert_eq(f1->type, NAT_EV_BLOCK_FREE);
    cr_assert_eq(f1->time, 30);
    cr_assert(f1->s.ext.port == b0 || f1->s.ext.port == b1);
    cr_assert(f2->s.ext.port == b0 || f2->s.ext.port == b1);
    cr_assert_neq(f1->s.ext.port, f2->s.ext.port);
    cr_assert_eq(f2->port_last, f2->s.ext.port + 3);
    cr_assert_str_eq(nat_event_name(NAT_EV_BLOCK_ALLOC), "block_alloc");
    cr_assert_str_eq(nat_event_name(NAT_EV_BLOCK_FREE), "block_free");
    /* another policy makes no block events */
    nat_table_free(t);
    c.policy = NAT_POLICY_RANDOM;
    t = mk(&c, &r);
    open_ok(t, &k, 1);
    cr_assert_eq(r.by_type[NAT_EV_BLOCK_ALLOC], 0);
    nat_table_free(t);
}

/* The open recorded from r->ev[n0] on took the block held by `holder`:
 * block_free (holder's), block_alloc, open, and nothing else. */
static void assert_took_hold_of(const struct rec *r, size_t n0, const char *holder)
{
    char ip[NAT_ADDR_STRLEN];

    cr_assert_eq(r->n, n0 + 3);
    cr_assert_eq(r->ev[n0 % REC_MAX].type, NAT_EV_BLOCK_FREE);
    cr_assert_str_eq(nat_addr_format(&r->ev[n0 % REC_MAX].s.key.client.addr, ip), holder);
    cr_assert_eq(r->ev[(n0 + 1) % REC_MAX].type, NAT_EV_BLOCK_ALLOC);
    cr_assert_eq(r->ev[(n0 + 2) % REC_MAX].type, NAT_EV_OPEN);
}

/* block_hold_ms: a client whose last session went keeps its blocks for a
 * while (a client with one short flow at a time then logs one block, not a
 * block per flow); the hold ends at its deadline (nat_expire) or earlier when
 * another client needs a block. */
Test(nat_policy, block_hold_keeps_blocks_then_gives_them_back)
{
    struct nat_config c = small_cfg(NAT_POLICY_BLOCK, NAT_MAPPING_EIM, 1000, 1015);
    struct rec r;
    struct nat_table *t;
    struct nat_stats st;
    struct nat_session *s;

    c.block_size = 4;
    c.block_hold_ms = 1000;
    t = mk(&c, &r);
    struct nat_key k = kn(NAT_PROTO_TCP, "10.0.0.1", 1, "192.0.2.1", 80);
    s = open_ok(t, &k, 0);
    uint16_t base = s->ext.port;
    nat_session_close(t, s, 10, "client_fin");
    nat_get_stats(t, &st);
    cr_assert_eq(st.blocks_in_use, 1);
    cr_assert_eq(st.blocks_held, 1);
    cr_assert_eq(r.by_type[NAT_EV_BLOCK_FREE], 0, "held, not given back");
    cr_assert_eq(nat_next_expiry(t), 1010);
    /* the client comes back within the hold: its block serves, nothing logged */
    k.client.port = 2;
    s = open_ok(t, &k, 20);
    cr_assert(s->ext.port >= base && s->ext.port < base + 4);
    cr_assert_eq(r.by_type[NAT_EV_BLOCK_ALLOC], 1);
    nat_get_stats(t, &st);
    cr_assert_eq(st.blocks_held, 0);
    nat_session_close(t, s, 30, "client_fin");
    cr_assert_eq(nat_expire(t, 1029, 0), 0);
    cr_assert_eq(r.by_type[NAT_EV_BLOCK_FREE], 0);
    cr_assert_eq(nat_expire(t, 1030, 0), 1);
    cr_assert_eq(r.by_type[NAT_EV_BLOCK_FREE], 1);
    cr_assert_eq(r.ev[(r.n - 1) % REC_MAX].time, 1030);
    nat_get_stats(t, &st);
    cr_assert_eq(st.blocks_in_use, 0);
    cr_assert_eq(st.blocks_held, 0);
    cr_assert_eq(nat_client_sessions(t, &k.client.addr), 0);

    /* four clients hold the four blocks; a fifth takes the oldest hold's */
    const char *who[4] = {"10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.4"};
    for (int i = 0; i < 4; i++) {
        struct nat_key ki = kn(NAT_PROTO_UDP, who[i], 5, "192.0.2.1", 53);
        nat_session_close(t, open_ok(t, &ki, 2000 + (uint64_t)i), 2100 + (uint64_t)i, "x");
    }
    nat_get_stats(t, &st);
    cr_assert_eq(st.blocks_held, 4);
    size_t n0 = r.n;
    struct nat_key kf = kn(NAT_PROTO_UDP, "10.0.1.9", 5, "192.0.2.1", 53);
    open_ok(t, &kf, 2200);
    assert_took_hold_of(&r, n0, "10.0.1.1");
    nat_get_stats(t, &st);
    cr_assert_eq(st.blocks_in_use, 4);
    cr_assert_eq(st.blocks_held, 3);
    /* a shorter hold (reload) applies to the clients held now */
    c.block_hold_ms = 50;
    cr_assert_eq(nat_table_reconfigure(t, &c), NAT_OK);
    cr_assert_eq(nat_expire(t, 2250, 0), 3);
    nat_get_stats(t, &st);
    cr_assert_eq(st.blocks_in_use, 1);
    cr_assert_eq(st.blocks_held, 0);
    c.block_hold_ms = NAT_MAX_BLOCK_HOLD_MS + 1;
    cr_assert_eq(nat_table_reconfigure(t, &c), NAT_ERR_INVAL);
    /* the end of every hold at once (gwd's shutdown, after its flush) */
    struct nat_filter all;
    nat_filter_init(&all);
    cr_assert_eq(nat_flush(t, &all, 2300, "shutdown"), 1);
    nat_get_stats(t, &st);
    cr_assert_eq(st.blocks_held, 1);
    cr_assert_eq(nat_end_holds(t, 2300), 1);
    nat_get_stats(t, &st);
    cr_assert_eq(st.blocks_in_use, 0);
    cr_assert_eq(r.ev[(r.n - 1) % REC_MAX].type, NAT_EV_BLOCK_FREE);
    nat_table_free(t);
}

/* A client that needs a block takes a hold's only where that frees a block
 * it can use: a hold on the other address (here the IPv6 one, and the
 * oldest) stays. */
Test(nat_policy, block_hold_yields_only_on_the_address_that_needs_a_block)
{
    struct nat_config c = small_cfg(NAT_POLICY_BLOCK, NAT_MAPPING_EIM, 1000, 1007);
    struct rec r;
    struct nat_table *t;
    struct nat_stats st;

    dual_stack(&c);
    c.block_size = 4; /* two blocks per address */
    c.block_hold_ms = 10000;
    t = mk(&c, &r);
    /* the oldest hold: an IPv6 client's block on 2001:db8:1::1 */
    struct nat_key k6 = kn(NAT_PROTO_TCP, "2001:db8::10", 1, "2001:db8:2::80", 80);
    nat_session_close(t, open_ok(t, &k6, 0), 1, "x");
    /* both IPv4 blocks: one held by 10.0.0.1, one in use by 10.0.0.2 */
    struct nat_key k1 = kn(NAT_PROTO_TCP, "10.0.0.1", 1, "192.0.2.1", 80);
    nat_session_close(t, open_ok(t, &k1, 2), 3, "x");
    struct nat_key k2 = kn(NAT_PROTO_TCP, "10.0.0.2", 1, "192.0.2.1", 80);
    open_ok(t, &k2, 4);
    nat_get_stats(t, &st);
    cr_assert_eq(st.blocks_in_use, 3);
    cr_assert_eq(st.blocks_held, 2);
    /* 10.0.0.3 needs an IPv4 block: 10.0.0.1's goes, the IPv6 hold stays */
    size_t n0 = r.n;
    struct nat_key k3 = kn(NAT_PROTO_TCP, "10.0.0.3", 1, "192.0.2.1", 80);
    open_ok(t, &k3, 5);
    assert_took_hold_of(&r, n0, "10.0.0.1");
    nat_get_stats(t, &st);
    cr_assert_eq(st.blocks_in_use, 3);
    cr_assert_eq(st.blocks_held, 1, "the IPv6 client's hold was given up for nothing");
    /* no IPv4 hold left to give: refused, and the IPv6 hold still stays */
    struct nat_key k4 = kn(NAT_PROTO_TCP, "10.0.0.4", 1, "192.0.2.1", 80);
    struct nat_session *x = NULL;
    cr_assert_eq(nat_session_open(t, &k4, 0, 6, &x), NAT_ERR_POOL_EXHAUSTED);
    nat_get_stats(t, &st);
    cr_assert_eq(st.blocks_held, 1);
    nat_table_free(t);
}

/* Ending a hold must free a port the asking client can use: a held block
 * whose ports all wait out their reuse delay gives nothing, so the hold
 * stays and the open is refused. Once the delay has passed, the hold goes. */
Test(nat_policy, block_hold_kept_when_its_block_has_no_usable_port)
{
    struct nat_config c = small_cfg(NAT_POLICY_BLOCK, NAT_MAPPING_EIM, 30000, 30003);
    struct rec r;
    struct nat_table *t;
    struct nat_stats st;
    struct nat_session *a1, *a2, *x = NULL;

    c.block_size = 2; /* two blocks */
    c.block_hold_ms = 60000;
    c.reuse_delay_ms = 2000;
    t = mk(&c, &r);
    struct nat_key ka = kn(NAT_PROTO_TCP, "10.0.0.1", 1, "192.0.2.1", 80);
    a1 = open_ok(t, &ka, 0);
    ka.client.port = 2;
    a2 = open_ok(t, &ka, 0);
    struct nat_key kb = kn(NAT_PROTO_TCP, "10.0.0.2", 1, "192.0.2.1", 80);
    open_ok(t, &kb, 0);
    nat_session_close(t, a1, 100, "client_fin");
    nat_session_close(t, a2, 100, "client_fin");
    nat_get_stats(t, &st);
    cr_assert_eq(st.blocks_held, 1);
    /* 10.0.0.3 at t=500: A's block is both ports cooling until t=2100 */
    size_t n0 = r.n;
    struct nat_key kc = kn(NAT_PROTO_TCP, "10.0.0.3", 1, "192.0.2.1", 80);
    cr_assert_eq(nat_session_open(t, &kc, 0, 500, &x), NAT_ERR_POOL_EXHAUSTED);
    nat_get_stats(t, &st);
    cr_assert_eq(st.blocks_held, 1, "a hold was given up for a block with no usable port");
    cr_assert_eq(st.blocks_in_use, 2);
    cr_assert_eq(r.by_type[NAT_EV_BLOCK_FREE], 0);
    cr_assert_eq(r.n, n0 + 1); /* the refusal only */
    /* A itself, back while its own ports cool, is refused too; its hold stays */
    ka.client.port = 3;
    cr_assert_eq(nat_session_open(t, &ka, 0, 600, &x), NAT_ERR_POOL_EXHAUSTED);
    nat_get_stats(t, &st);
    cr_assert_eq(st.blocks_held, 1);
    /* after the delay, 10.0.0.3 takes A's block */
    n0 = r.n;
    open_ok(t, &kc, 2200);
    assert_took_hold_of(&r, n0, "10.0.0.1");
    nat_table_free(t);
}

/* A free block on any address comes before ending a hold: with three of
 * four blocks held, a new client takes the fourth, whichever address the
 * policy tries first (so over many seeds). */
Test(nat_policy, block_free_block_anywhere_comes_before_ending_a_hold)
{
    for (uint64_t seed = 1; seed <= 32; seed++) {
        struct nat_config c = small_cfg(NAT_POLICY_BLOCK, NAT_MAPPING_EIM, 1000, 1007);
        struct rec r;
        struct nat_stats st;

        c.n_ips = 2;
        c.ips[0] = A("198.51.100.1");
        c.ips[1] = A("198.51.100.2");
        c.block_size = 4; /* two blocks per address */
        c.block_hold_ms = 10000;
        c.seed = seed;
        struct nat_table *t = mk(&c, &r);
        const char *who[3] = {"10.0.0.1", "10.0.0.2", "10.0.0.3"};
        for (int i = 0; i < 3; i++) {
            struct nat_key k = kn(NAT_PROTO_TCP, who[i], 1, "192.0.2.1", 80);
            nat_session_close(t, open_ok(t, &k, (uint64_t)i), (uint64_t)i, "x");
        }
        struct nat_key k = kn(NAT_PROTO_TCP, "10.0.0.9", 1, "192.0.2.1", 80);
        open_ok(t, &k, 10);
        nat_get_stats(t, &st);
        cr_assert_eq(st.blocks_in_use, 4, "seed %llu", (unsigned long long)seed);
        cr_assert_eq(st.blocks_held, 3, "seed %llu: a hold ended with a block free",
                     (unsigned long long)seed);
        cr_assert_eq(r.by_type[NAT_EV_BLOCK_FREE], 0, "seed %llu", (unsigned long long)seed);
        nat_table_free(t);
    }
}

struct blocks_seen {
    char s[256];
    size_t n;
};

static int blocks_cb(void *arg, const struct nat_block_info *b)
{
    struct blocks_seen *x = arg;
    char c[NAT_ADDR_STRLEN], n[NAT_ADDR_STRLEN];
    size_t len = strlen(x->s);
    snprintf(x->s + len, sizeof(x->s) - len, "%s%s>%s:%u-%u/%u/%llu", len ? " " : "",
             nat_addr_format(&b->client, c), nat_addr_format(&b->nat, n), (unsigned)b->port_lo,
             (unsigned)b->port_last, (unsigned)b->sessions, (unsigned long long)b->hold_until);
    return ++x->n == 3; /* stops after three */
}

/* nat_blocks_each lists the blocks in use: owner, range, the owner's
 * sessions, and the end of its hold. */
Test(nat_policy, block_listing_names_owner_range_sessions_and_hold)
{
    struct nat_config c = small_cfg(NAT_POLICY_BLOCK, NAT_MAPPING_EIM, 1000, 1015);
    struct blocks_seen x = {.s = ""};

    c.block_size = 4;
    c.block_hold_ms = 500;
    c.policy = NAT_POLICY_SEQUENTIAL;
    struct nat_table *t = mk(&c, NULL);
    struct nat_key k = kn(NAT_PROTO_TCP, "10.0.0.1", 1, "192.0.2.1", 80);
    open_ok(t, &k, 0);
    cr_assert_eq(nat_blocks_each(t, blocks_cb, &x), 0, "no blocks under another policy");
    nat_table_free(t);

    c.policy = NAT_POLICY_BLOCK;
    t = mk(&c, NULL);
    for (uint16_t p = 1; p <= 5; p++) { /* five sessions: a second block */
        k.client.port = p;
        open_ok(t, &k, 0);
    }
    struct nat_key k2 = kn(NAT_PROTO_UDP, "10.0.0.2", 1, "192.0.2.1", 53);
    nat_session_close(t, open_ok(t, &k2, 10), 20, "x"); /* held until 520 */
    cr_assert_eq(nat_blocks_each(t, blocks_cb, &x), 3);
    /* the block numbers are random: check the shape, then the port ranges */
    unsigned lo[3], last[3], ses[3];
    unsigned long long until[3];
    char who[3][16];
    cr_assert_eq(sscanf(x.s, "%15[^>]>127.0.0.1:%u-%u/%u/%llu %15[^>]>127.0.0.1:%u-%u/%u/%llu "
                             "%15[^>]>127.0.0.1:%u-%u/%u/%llu",
                        who[0], &lo[0], &last[0], &ses[0], &until[0], who[1], &lo[1], &last[1],
                        &ses[1], &until[1], who[2], &lo[2], &last[2], &ses[2], &until[2]),
                 15, "%s", x.s);
    cr_assert_str_eq(who[0], "10.0.0.1");
    cr_assert_str_eq(who[1], "10.0.0.1");
    cr_assert_str_eq(who[2], "10.0.0.2");
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(last[i], lo[i] + 3);
        cr_assert_eq((lo[i] - 1000) % 4, 0);
    }
    cr_assert_eq(ses[0], 5);
    cr_assert_eq(until[0], 0);
    cr_assert_eq(ses[2], 0);
    cr_assert_eq(until[2], 520);
    /* fn's non-zero return stops the walk */
    x.n = 2;
    x.s[0] = '\0';
    cr_assert_eq(nat_blocks_each(t, blocks_cb, &x), 1);
    nat_table_free(t);
}

Test(nat_policy, block_blocks_serve_both_protocols)
{
    struct nat_config c = small_cfg(NAT_POLICY_BLOCK, NAT_MAPPING_EIM, 1000, 1007);
    struct nat_table *t;
    struct nat_stats st;

    c.block_size = 4;
    t = mk(&c, NULL);
    struct nat_key k = kn(NAT_PROTO_UDP, "10.0.0.1", 1, "192.0.2.1", 53);
    uint16_t p = open_ok(t, &k, 0)->ext.port;
    k.proto = NAT_PROTO_TCP;
    cr_assert_eq(open_ok(t, &k, 0)->ext.port, p, "same block, tcp pool");
    nat_get_stats(t, &st);
    cr_assert_eq(st.blocks_in_use, 1);
    nat_table_free(t);
}

Test(nat_policy, adm_port_unique_per_destination_address)
{
    struct nat_config c = small_cfg(NAT_POLICY_SEQUENTIAL, NAT_MAPPING_ADM, 30000, 30001);
    struct nat_table *t = mk(&c, NULL);
    struct nat_session *x = NULL;
    /* client endpoint A toward D1 port 80 and D1 port 81: one mapping */
    struct nat_key a1 = kn(NAT_PROTO_TCP, "10.0.0.1", 1, "192.0.2.1", 80);
    struct nat_key a2 = kn(NAT_PROTO_TCP, "10.0.0.1", 1, "192.0.2.1", 81);
    struct nat_key a3 = kn(NAT_PROTO_TCP, "10.0.0.1", 1, "192.0.2.2", 80);
    struct nat_session *s1 = open_ok(t, &a1, 0), *s2 = open_ok(t, &a2, 0);
    struct nat_session *s3 = open_ok(t, &a3, 0);

    cr_assert_eq(s1->ext.port, s2->ext.port, "adm: same destination address, same port");
    cr_assert_eq(s3->ext.port, 30001, "sequential goes on after the last port given");
    /* B toward D1 needs another port; C toward D1 finds none */
    struct nat_key b1 = kn(NAT_PROTO_TCP, "10.0.0.2", 1, "192.0.2.1", 80);
    cr_assert_eq(open_ok(t, &b1, 0)->ext.port, 30001);
    struct nat_key c1 = kn(NAT_PROTO_TCP, "10.0.0.3", 1, "192.0.2.1", 443);
    cr_assert_eq(nat_session_open(t, &c1, 0, 0, &x), NAT_ERR_POOL_EXHAUSTED);
    /* but toward D2, C gets 30000, which A holds toward D1 */
    struct nat_key c2 = kn(NAT_PROTO_TCP, "10.0.0.3", 1, "192.0.2.2", 443);
    cr_assert_eq(open_ok(t, &c2, 0)->ext.port, 30000);
    struct nat_stats st;
    nat_get_stats(t, &st);
    cr_assert_eq(st.ports_in_use, 2);
    cr_assert_eq(st.live, 5);
    nat_table_free(t);
}

/* apdm capacity is ips x ports x destinations (the seed question's answer) */
Test(nat_policy, apdm_capacity_ips_ports_destinations)
{
    struct nat_config c = small_cfg(NAT_POLICY_RANDOM, NAT_MAPPING_APDM, 30000, 30009);
    struct nat_table *t;
    struct nat_session *x = NULL;
    char client[32], dst[32];
    int opened = 0;

    c.n_ips = 2;
    c.ips[0] = A("198.51.100.1");
    c.ips[1] = A("198.51.100.2");
    t = mk(&c, NULL);
    /* 2 ips x 10 ports x 3 destinations = 60 flows, from 60 client IPs, so
     * pooling pairs them evenly only by chance: use one client per ip */
    for (int d = 0; d < 3; d++) {
        for (int i = 0; i < 20; i++) {
            struct nat_key k;

            snprintf(client, sizeof(client), "10.0.%d.%d", i % 2, d * 20 + i);
            snprintf(dst, sizeof(dst), "192.0.2.%d", d + 1);
            k = kn(NAT_PROTO_TCP, client, 5000, dst, 80);
            if (nat_session_open(t, &k, 0, 0, &x) == NAT_OK)
                opened++;
        }
    }
    struct nat_stats st;
    nat_get_stats(t, &st);
    /* a new client goes to the other IP when its random first choice is full */
    cr_assert_eq(opened, 60);
    cr_assert_eq(st.live, 60);
    cr_assert_eq(st.ports_in_use, 20);
    x = NULL;
    struct nat_key k9 = kn(NAT_PROTO_TCP, "10.9.9.9", 5000, "192.0.2.1", 80);
    cr_assert_eq(nat_session_open(t, &k9, 0, 0, &x), NAT_ERR_POOL_EXHAUSTED);
    nat_table_free(t);

    /* exact: one client IP per external IP (pairing fixed by the first flow) */
    c.policy = NAT_POLICY_SEQUENTIAL;
    t = mk(&c, NULL);
    opened = 0;
    for (int ci = 0; ci < 2; ci++) {
        for (int d = 0; d < 3; d++) {
            for (int p = 0; p < 11; p++) {
                struct nat_key k;

                snprintf(client, sizeof(client), "10.1.0.%d", ci + 1);
                snprintf(dst, sizeof(dst), "192.0.2.%d", d + 1);
                k = kn(NAT_PROTO_TCP, client, (uint16_t)(5000 + p), dst, 80);
                if (nat_session_open(t, &k, 0, 0, &x) == NAT_OK)
                    opened++;
            }
        }
    }
    cr_assert_eq(opened, 60, "2 ips x 10 ports x 3 destinations");
    nat_get_stats(t, &st);
    cr_assert_eq(st.refused[NAT_ERR_POOL_EXHAUSTED], 6);
    cr_assert_eq(st.ports_in_use, 20);
    cr_assert_eq(nat_ip_ports_in_use(t, 0), 10);
    cr_assert_eq(nat_ip_ports_in_use(t, 1), 10);
    nat_table_free(t);
}

Test(nat_policy, eim_port_serves_nobody_else)
{
    struct nat_config c = small_cfg(NAT_POLICY_RANDOM, NAT_MAPPING_EIM, 30000, 30001);
    struct nat_table *t = mk(&c, NULL);
    struct nat_session *x = NULL;
    struct nat_key a = kn(NAT_PROTO_UDP, "10.0.0.1", 1, "192.0.2.1", 53);
    struct nat_key b = kn(NAT_PROTO_UDP, "10.0.0.2", 1, "192.0.2.2", 53);
    struct nat_key cc = kn(NAT_PROTO_UDP, "10.0.0.3", 1, "192.0.2.3", 53);

    open_ok(t, &a, 0);
    open_ok(t, &b, 0);
    /* two ports, two client endpoints: a third one toward a new destination
     * still finds nothing under eim */
    cr_assert_eq(nat_session_open(t, &cc, 0, 0, &x), NAT_ERR_POOL_EXHAUSTED);
    nat_table_free(t);
}

/* eim with a dual-stack pool: one client endpoint toward an IPv4 and then an
 * IPv6 destination has two mappings, each on an external address of its
 * destination's family, and the client's later IPv6 flows pair with the IPv6
 * address (the IPv4 mapping must not be reused for the IPv6 destination). */
Test(nat_policy, eim_mapping_per_destination_family)
{
    struct nat_config c = small_cfg(NAT_POLICY_SEQUENTIAL, NAT_MAPPING_EIM, 30000, 30009);
    struct nat_table *t;
    struct nat_session *s4, *s6, *s4b, *s6b;
    char buf[NAT_ADDR_STRLEN];

    dual_stack(&c);
    t = mk(&c, NULL);
    struct nat_key k4 = kn(NAT_PROTO_UDP, "2001:db8::10", 4000, "192.0.2.1", 53);
    struct nat_key k6 = kn(NAT_PROTO_UDP, "2001:db8::10", 4000, "2001:db8:2::53", 53);
    s4 = open_ok(t, &k4, 0);
    cr_assert_str_eq(nat_addr_format(&s4->ext.addr, buf), "198.51.100.1");
    s6 = open_ok(t, &k6, 0);
    cr_assert_str_eq(nat_addr_format(&s6->ext.addr, buf), "2001:db8:1::1",
                     "IPv6 destination mapped from %s", buf);
    cr_assert_eq(s6->ip_index, 1);
    cr_assert_eq(nat_lookup_outside(t, NAT_PROTO_UDP, &s6->ext, &k6.dst), s6);
    /* each family's mapping is reused by that family's later destinations */
    struct nat_key k4b = kn(NAT_PROTO_UDP, "2001:db8::10", 4000, "192.0.2.2", 53);
    struct nat_key k6b = kn(NAT_PROTO_UDP, "2001:db8::10", 4000, "2001:db8:2::54", 53);
    s4b = open_ok(t, &k4b, 1);
    s6b = open_ok(t, &k6b, 1);
    cr_assert(s4b->ip_index == s4->ip_index && s4b->ext.port == s4->ext.port);
    cr_assert(s6b->ip_index == s6->ip_index && s6b->ext.port == s6->ext.port);
    /* another endpoint of the client toward IPv6 pairs with the IPv6 address */
    struct nat_key k6c = kn(NAT_PROTO_UDP, "2001:db8::10", 4001, "2001:db8:2::53", 53);
    cr_assert_eq(open_ok(t, &k6c, 2)->ip_index, 1);
    /* closing the IPv4 mapping's sessions leaves the IPv6 one whole */
    nat_session_close(t, s4, 3, "x");
    nat_session_close(t, s4b, 3, "x");
    cr_assert_eq(nat_lookup_inside(t, &k6), s6);
    cr_assert_eq(nat_lookup_inside(t, &k6b), s6b);
    nat_table_free(t);
}

Test(nat_policy, paired_pooling_one_external_ip_per_client)
{
    struct nat_config c = small_cfg(NAT_POLICY_SEQUENTIAL, NAT_MAPPING_EIM, 30000, 30009);
    struct nat_table *t;
    struct nat_session *x = NULL, *first;
    char client[32];
    int refused = 0;

    c.n_ips = 4;
    for (int i = 0; i < 4; i++) {
        snprintf(client, sizeof(client), "198.51.100.%d", i + 1);
        c.ips[i] = A(client);
    }
    t = mk(&c, NULL);
    for (int ci = 0; ci < 4; ci++) {
        struct nat_key k;

        snprintf(client, sizeof(client), "10.0.0.%d", ci + 1);
        k = kn(NAT_PROTO_TCP, client, 1, "192.0.2.1", 80);
        first = open_ok(t, &k, 0);
        cr_assert_eq(first->ip_index, ci, "sequential: new clients go round the IPs");
        for (uint16_t p = 2; p <= 3; p++) {
            k.client.port = p;
            k.dst.port = (uint16_t)(80 + p);
            x = open_ok(t, &k, 0);
            cr_assert_eq(x->ip_index, first->ip_index, "client IP changed external IP");
        }
    }
    /* once its paired IP is full, the client is refused though others have room */
    for (uint16_t p = 10; p < 30; p++) {
        struct nat_key k = kn(NAT_PROTO_TCP, "10.0.0.1", p, "192.0.2.1", 80);

        if (nat_session_open(t, &k, 0, 0, &x) != NAT_OK)
            refused++;
        else
            cr_assert_eq(x->ip_index, 0);
    }
    cr_assert_eq(refused, 13);
    cr_assert_eq(nat_ip_ports_in_use(t, 0), 10);
    cr_assert_eq(nat_ip_ports_in_use(t, 1), 3);
    struct nat_stats st;
    nat_get_stats(t, &st);
    cr_assert_eq(st.ports_in_use, 19);
    /* with every flow of the client gone, it may pair again elsewhere */
    struct nat_filter f;
    nat_filter_init(&f);
    f.has_client = true;
    f.client = A("10.0.0.1");
    f.client_plen = 128;
    cr_assert_eq(nat_flush(t, &f, 1, "flush"), 10);
    cr_assert_eq(nat_client_sessions(t, &f.client), 0);
    nat_table_free(t);
}

Test(nat_policy, exhausted_pool_never_evicts)
{
    struct nat_config c = small_cfg(NAT_POLICY_RANDOM, NAT_MAPPING_EIM, 30000, 30009);
    struct rec r;
    struct nat_table *t = mk(&c, &r);
    struct nat_session *s[10], *x = NULL;

    for (int i = 0; i < 10; i++) {
        struct nat_key k = kn(NAT_PROTO_TCP, "10.0.0.1", (uint16_t)(1 + i), "192.0.2.1", 80);

        s[i] = open_ok(t, &k, 0);
    }
    for (int i = 0; i < 100; i++) {
        struct nat_key k = kn(NAT_PROTO_TCP, "10.0.0.2", (uint16_t)(1 + i), "192.0.2.1", 80);

        cr_assert_eq(nat_session_open(t, &k, 0, (uint64_t)i, &x), NAT_ERR_POOL_EXHAUSTED);
    }
    for (int i = 0; i < 10; i++)
        cr_assert_eq(nat_lookup_inside(t, &s[i]->key), s[i]);
    cr_assert_eq(r.by_type[NAT_EV_OPEN], 10);
    cr_assert_eq(r.by_type[NAT_EV_REFUSE], 100);
    cr_assert_eq(r.by_type[NAT_EV_CLOSE] + r.by_type[NAT_EV_EXPIRE], 0);
    struct nat_stats st;
    nat_get_stats(t, &st);
    cr_assert_eq(st.live, 10);
    cr_assert_eq(st.refused[NAT_ERR_POOL_EXHAUSTED], 100);
    nat_table_free(t);
}

Test(nat_policy, ipv6_pool_and_families)
{
    struct nat_config c = small_cfg(NAT_POLICY_SEQUENTIAL, NAT_MAPPING_EIM, 30000, 30009);
    struct nat_table *t;
    struct nat_session *s, *x = NULL;
    char buf[NAT_ADDR_STRLEN];

    dual_stack(&c);
    t = mk(&c, NULL);
    struct nat_key k6 = kn(NAT_PROTO_TCP, "2001:db8::10", 4000, "2001:db8:2::80", 80);
    s = open_ok(t, &k6, 0);
    cr_assert_str_eq(nat_addr_format(&s->ext.addr, buf), "2001:db8:1::1");
    cr_assert_eq(s->ip_index, 1);
    cr_assert_eq(nat_lookup_inside(t, &k6), s);
    cr_assert_eq(nat_lookup_outside(t, NAT_PROTO_TCP, &s->ext, &k6.dst), s);
    /* an IPv6 client toward an IPv4 backend gets the IPv4 address */
    struct nat_key k64 = kn(NAT_PROTO_TCP, "2001:db8::10", 4001, "192.0.2.1", 80);
    s = open_ok(t, &k64, 0);
    cr_assert_str_eq(nat_addr_format(&s->ext.addr, buf), "198.51.100.1");
    nat_table_free(t);

    /* no external address of the destination's family: refused */
    c.n_ips = 1;
    t = mk(&c, NULL);
    cr_assert_eq(nat_session_open(t, &k6, 0, 0, &x), NAT_ERR_POOL_EXHAUSTED);
    nat_table_free(t);
}
