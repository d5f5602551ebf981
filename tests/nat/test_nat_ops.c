/* test_nat_ops.c - timeouts and expiry, repick, reconfigure, listing and
 * filters, flush, events, counters, index growth, batched lookups. */
#include "tests/nat/nat_test_util.h"

static struct nat_config cfg_timeouts(void)
{
    struct nat_config c = small_cfg(NAT_POLICY_SEQUENTIAL, NAT_MAPPING_EIM, 30000, 30999);

    c.timeout_ms[NAT_TIMEOUT_UDP] = 300;
    c.timeout_ms[NAT_TIMEOUT_TCP_ESTABLISHED] = 7000;
    c.timeout_ms[NAT_TIMEOUT_TCP_TRANSITORY] = 2000;
    return c;
}

Test(nat_ops, timeouts_per_protocol_and_state)
{
    struct nat_config c = cfg_timeouts();
    struct rec r;
    struct nat_table *t = mk(&c, &r);
    struct nat_key ku = KEY(NAT_PROTO_UDP, "10.0.0.1", 1, "192.0.2.1", 53);
    struct nat_key kn = KEY(NAT_PROTO_TCP, "10.0.0.1", 2, "192.0.2.1", 80);
    struct nat_key ke = KEY(NAT_PROTO_TCP, "10.0.0.1", 3, "192.0.2.1", 80);
    struct nat_key kc = KEY(NAT_PROTO_TCP, "10.0.0.1", 4, "192.0.2.1", 80);
    struct nat_session *su = open_ok(t, &ku, 0), *sn = open_ok(t, &kn, 0);
    struct nat_session *se = open_ok(t, &ke, 0), *sc = open_ok(t, &kc, 0);
    uint64_t id_u = su->id, id_n = sn->id, id_e = se->id, id_c = sc->id;

    /* UDP established uses the udp timeout too */
    nat_session_set_state(t, su, NAT_STATE_ESTABLISHED, 0);
    nat_session_set_state(t, se, NAT_STATE_ESTABLISHED, 0);
    nat_session_set_state(t, sc, NAT_STATE_ESTABLISHED, 0);
    cr_assert_eq(nat_next_expiry(t), 300);
    cr_assert_eq(nat_expire(t, 299, 0), 0);
    cr_assert_eq(nat_expire(t, 300, 0), 1);
    cr_assert_eq(r.ev[(r.n - 1) % REC_MAX].s.id, id_u);
    nat_session_set_state(t, sc, NAT_STATE_CLOSING, 1000); /* re-armed: transitory from 1000 */
    cr_assert_eq(nat_next_expiry(t), 2000);
    cr_assert_eq(nat_expire(t, 2000, 0), 1);
    cr_assert_eq(r.ev[(r.n - 1) % REC_MAX].s.id, id_n);
    cr_assert_eq(nat_next_expiry(t), 3000);
    cr_assert_eq(nat_expire(t, 3000, 0), 1);
    cr_assert_eq(r.ev[(r.n - 1) % REC_MAX].s.id, id_c);
    cr_assert_eq(nat_next_expiry(t), 7000);
    cr_assert_eq(nat_expire(t, 6999, 0), 0);
    cr_assert_eq(nat_expire(t, 7000, 0), 1);
    cr_assert_eq(r.ev[(r.n - 1) % REC_MAX].s.id, id_e);
    cr_assert_eq(nat_next_expiry(t), UINT64_MAX);
    cr_assert_eq(r.by_type[NAT_EV_EXPIRE], 4);
    nat_table_free(t);
}

Test(nat_ops, touch_refreshes)
{
    struct nat_config c = cfg_timeouts();
    struct nat_table *t = mk(&c, NULL);
    struct nat_key k = KEY(NAT_PROTO_UDP, "10.0.0.1", 1, "192.0.2.1", 53);
    struct nat_session *s = open_ok(t, &k, 0);

    for (uint64_t now = 100; now <= 10000; now += 250) {
        nat_session_touch(t, s, now, 1, 2);
        cr_assert_eq(nat_expire(t, now + 249, 0), 0);
    }
    cr_assert_eq(s->last_seen, 9850);
    cr_assert_eq(s->bytes_in, 40);
    cr_assert_eq(s->bytes_out, 80);
    cr_assert_eq(nat_expire(t, 10150, 0), 1);
    nat_table_free(t);
}

Test(nat_ops, expire_budget_and_order)
{
    struct nat_config c = cfg_timeouts();
    struct rec r;
    struct nat_table *t = mk(&c, &r);

    for (uint16_t i = 0; i < 100; i++) {
        struct nat_key k = KEY(NAT_PROTO_UDP, "10.0.0.1", (uint16_t)(1000 + i), "192.0.2.1", 53);

        open_ok(t, &k, i);
    }
    cr_assert_eq(nat_expire(t, 10000, 30), 30);
    cr_assert_eq(nat_expire(t, 10000, 30), 30);
    cr_assert_eq(nat_expire(t, 10000, 0), 40);
    cr_assert_eq(nat_expire(t, 10000, 0), 0);
    cr_assert_eq(r.by_type[NAT_EV_EXPIRE], 100);
    for (size_t i = 0; i < 100; i++) /* oldest first */
        cr_assert_eq(r.ev[(100 + i) % REC_MAX].s.key.client.port, 1000 + i);
    nat_table_free(t);
}

Test(nat_ops, time_never_goes_back)
{
    struct nat_config c = cfg_timeouts();
    struct nat_table *t = mk(&c, NULL);
    struct nat_key k = KEY(NAT_PROTO_UDP, "10.0.0.1", 1, "192.0.2.1", 53);
    struct nat_session *s = open_ok(t, &k, 5000);

    nat_session_touch(t, s, 1000, 0, 0); /* earlier: taken as the latest time seen */
    cr_assert_eq(s->last_seen, 5000);
    cr_assert_eq(nat_next_expiry(t), 5300);
    nat_table_free(t);
}

Test(nat_ops, reuse_delay_reconfigured)
{
    struct nat_config c = small_cfg(NAT_POLICY_SEQUENTIAL, NAT_MAPPING_EIM, 30000, 30000);
    struct nat_table *t;
    struct nat_session *s, *x = NULL;
    struct nat_key k1 = KEY(NAT_PROTO_TCP, "10.0.0.1", 1, "192.0.2.1", 80);
    struct nat_key k2 = KEY(NAT_PROTO_TCP, "10.0.0.1", 2, "192.0.2.1", 80);
    struct nat_stats st;

    c.reuse_delay_ms = 120000;
    t = mk(&c, NULL);
    s = open_ok(t, &k1, 0);
    nat_session_close(t, s, 10, "backend_rst");
    cr_assert_eq(nat_session_open(t, &k2, 0, 20000, &x), NAT_ERR_POOL_EXHAUSTED);
    c.reuse_delay_ms = 30000;
    cr_assert_eq(nat_table_reconfigure(t, &c), NAT_OK);
    cr_assert_eq(nat_session_open(t, &k2, 0, 30009, &x), NAT_ERR_POOL_EXHAUSTED);
    s = open_ok(t, &k2, 30010);
    cr_assert_eq(s->ext.port, 30000);
    nat_session_close(t, s, 40000, "flush");
    nat_get_stats(t, &st);
    cr_assert_eq(st.ports_cooling, 1);
    c.reuse_delay_ms = 0;
    cr_assert_eq(nat_table_reconfigure(t, &c), NAT_OK);
    open_ok(t, &k1, 40000);
    nat_get_stats(t, &st);
    cr_assert_eq(st.ports_cooling, 0);
    nat_table_free(t);
}

Test(nat_ops, reuse_delay_eim_waits_for_last_user)
{
    struct nat_config c = small_cfg(NAT_POLICY_SEQUENTIAL, NAT_MAPPING_EIM, 30000, 30000);
    struct nat_table *t;
    struct nat_session *a, *b, *x = NULL;
    struct nat_key k1 = KEY(NAT_PROTO_UDP, "10.0.0.1", 1, "192.0.2.1", 53);
    struct nat_key k2 = KEY(NAT_PROTO_UDP, "10.0.0.1", 1, "192.0.2.2", 53);
    struct nat_key k3 = KEY(NAT_PROTO_UDP, "10.0.0.2", 1, "192.0.2.1", 53);
    struct nat_stats st;

    c.reuse_delay_ms = 1000;
    t = mk(&c, NULL);
    a = open_ok(t, &k1, 0);
    b = open_ok(t, &k2, 0);
    nat_session_close(t, a, 100, "flush");
    nat_get_stats(t, &st);
    cr_assert_eq(st.ports_cooling, 0, "the mapping still has a user");
    cr_assert_eq(st.ports_in_use, 1);
    nat_session_close(t, b, 500, "flush");
    nat_get_stats(t, &st);
    cr_assert_eq(st.ports_cooling, 1);
    cr_assert_eq(nat_session_open(t, &k3, 0, 1499, &x), NAT_ERR_POOL_EXHAUSTED);
    open_ok(t, &k3, 1500);
    nat_table_free(t);
}

Test(nat_ops, repick_skips_busy_port)
{
    struct nat_config c = small_cfg(NAT_POLICY_SEQUENTIAL, NAT_MAPPING_APDM, 30000, 30002);
    struct rec r;
    struct nat_table *t = mk(&c, &r);
    struct nat_key k1 = KEY(NAT_PROTO_TCP, "10.0.0.1", 1, "192.0.2.1", 80);
    struct nat_key k2 = KEY(NAT_PROTO_TCP, "10.0.0.1", 2, "192.0.2.2", 80);
    struct nat_key k3 = KEY(NAT_PROTO_TCP, "10.0.0.1", 3, "192.0.2.3", 80);
    struct nat_session *s1 = open_ok(t, &k1, 0), *s, *x = NULL;
    struct nat_endpoint old;
    struct nat_stats st;

    cr_assert_eq(s1->ext.port, 30000);
    old = s1->ext;
    cr_assert_eq(nat_session_repick(t, s1, 10, 5000), NAT_OK);
    cr_assert_eq(s1->ext.port, 30001);
    cr_assert_eq(r.ev[(r.n - 1) % REC_MAX].type, NAT_EV_REPICK);
    cr_assert_str_eq(r.ev[(r.n - 1) % REC_MAX].reason, "eaddrinuse");
    cr_assert_eq(r.ev[(r.n - 1) % REC_MAX].s.ext.port, 30001);
    cr_assert_eq(r.ev[(r.n - 1) % REC_MAX].s.id, s1->id);
    cr_assert_null(nat_lookup_outside(t, NAT_PROTO_TCP, &old, &k1.dst));
    cr_assert_eq(nat_lookup_outside(t, NAT_PROTO_TCP, &s1->ext, &k1.dst), s1);
    /* 30000 is busy for every destination until 5010 */
    s = open_ok(t, &k2, 20);
    cr_assert_eq(s->ext.port, 30002);
    s = open_ok(t, &k3, 30);
    cr_assert_eq(s->ext.port, 30001);
    struct nat_key k4 = KEY(NAT_PROTO_TCP, "10.0.0.1", 4, "192.0.2.4", 80);
    s = open_ok(t, &k4, 40);
    cr_assert_eq(s->ext.port, 30002);
    struct nat_key k5 = KEY(NAT_PROTO_TCP, "10.0.0.1", 5, "192.0.2.5", 80);
    s = open_ok(t, &k5, 5010);
    cr_assert_eq(s->ext.port, 30000, "busy mark over");
    nat_get_stats(t, &st);
    cr_assert_eq(st.repicks, 1);
    nat_table_free(t);

    /* no other port: repick fails and leaves the session as it was */
    c.port_hi = 30000;
    t = mk(&c, &r);
    x = open_ok(t, &k4, 0);
    cr_assert_eq(nat_session_repick(t, x, 10, 100), NAT_ERR_POOL_EXHAUSTED);
    cr_assert_eq(x->ext.port, 30000);
    cr_assert_eq(nat_lookup_outside(t, NAT_PROTO_TCP, &x->ext, &k4.dst), x);
    cr_assert_eq(r.by_type[NAT_EV_REPICK], 0);
    nat_get_stats(t, &st);
    cr_assert_eq(st.repicks, 1);
    cr_assert_eq(st.ports_in_use, 1);
    /* and the busy mark holds for other flows until it ends */
    cr_assert_eq(nat_session_open(t, &k5, 0, 20, &x), NAT_ERR_POOL_EXHAUSTED);
    x = open_ok(t, &k5, 110);
    cr_assert_eq(x->ext.port, 30000);
    nat_table_free(t);
}

Test(nat_ops, repick_eim_shared_mapping)
{
    struct nat_config c = small_cfg(NAT_POLICY_SEQUENTIAL, NAT_MAPPING_EIM, 30000, 30009);
    struct nat_table *t = mk(&c, NULL);
    struct nat_key k1 = KEY(NAT_PROTO_UDP, "10.0.0.1", 1, "192.0.2.1", 53);
    struct nat_key k2 = KEY(NAT_PROTO_UDP, "10.0.0.1", 1, "192.0.2.2", 53);
    struct nat_key k3 = KEY(NAT_PROTO_UDP, "10.0.0.1", 1, "192.0.2.3", 53);
    struct nat_session *a = open_ok(t, &k1, 0), *b = open_ok(t, &k2, 0), *d;
    struct nat_stats st;

    cr_assert_eq(a->ext.port, b->ext.port);
    cr_assert_eq(nat_session_repick(t, b, 1, 1000), NAT_OK);
    cr_assert_neq(a->ext.port, b->ext.port);
    nat_get_stats(t, &st);
    cr_assert_eq(st.ports_in_use, 2);
    /* new flows of the endpoint keep using the mapping it had */
    d = open_ok(t, &k3, 2);
    cr_assert_eq(d->ext.port, a->ext.port);
    nat_session_close(t, b, 3, "flush");
    nat_session_close(t, a, 3, "flush");
    nat_session_close(t, d, 3, "flush");
    nat_get_stats(t, &st);
    cr_assert_eq(st.ports_in_use, 0);
    cr_assert_eq(st.live, 0);
    nat_table_free(t);
}

Test(nat_ops, reconfigure)
{
    struct nat_config c = small_cfg(NAT_POLICY_RANDOM, NAT_MAPPING_EIM, 30000, 30099), d;
    struct nat_table *t = mk(&c, NULL);
    struct nat_session *x = NULL;

    d = c;
    d.port_hi = 30100;
    cr_assert_eq(nat_table_reconfigure(t, &d), NAT_ERR_INVAL);
    d = c;
    d.policy = NAT_POLICY_SEQUENTIAL;
    cr_assert_eq(nat_table_reconfigure(t, &d), NAT_ERR_INVAL);
    d = c;
    d.mapping = NAT_MAPPING_APDM;
    cr_assert_eq(nat_table_reconfigure(t, &d), NAT_ERR_INVAL);
    d = c;
    d.ips[0] = A("127.0.0.2");
    cr_assert_eq(nat_table_reconfigure(t, &d), NAT_ERR_INVAL);
    cr_assert_eq(nat_table_reconfigure(t, NULL), NAT_ERR_INVAL);
    cr_assert_eq(nat_table_config(t)->port_hi, 30099);

    for (uint16_t i = 0; i < 5; i++) {
        struct nat_key k = KEY(NAT_PROTO_TCP, "10.0.0.1", (uint16_t)(1 + i), "192.0.2.1", 80);

        open_ok(t, &k, 0);
    }
    d = c;
    d.per_client_limit = 3; /* below the live count: nothing is evicted */
    d.max_sessions = 100;
    d.timeout_ms[NAT_TIMEOUT_TCP_TRANSITORY] = 50;
    d.reuse_delay_ms = 7;
    cr_assert_eq(nat_table_reconfigure(t, &d), NAT_OK);
    cr_assert_eq(nat_table_config(t)->per_client_limit, 3);
    cr_assert_eq(nat_table_config(t)->reuse_delay_ms, 7);
    cr_assert_eq(nat_client_sessions(t, &d.ips[0]), 0);
    struct nat_addr cl = A("10.0.0.1");
    cr_assert_eq(nat_client_sessions(t, &cl), 5);
    struct nat_key k = KEY(NAT_PROTO_TCP, "10.0.0.1", 9, "192.0.2.1", 80);
    cr_assert_eq(nat_session_open(t, &k, 0, 0, &x), NAT_ERR_CLIENT_QUOTA);
    cr_assert_eq(nat_next_expiry(t), 50, "new timeout applies to live sessions");
    cr_assert_eq(nat_expire(t, 50, 0), 5);
    nat_table_free(t);
}

struct ids {
    uint64_t id[256];
    size_t n;
    size_t stop_after;
};

static int ids_cb(void *arg, const struct nat_session *s)
{
    struct ids *v = arg;

    v->id[v->n++] = s->id;
    return v->stop_after != 0 && v->n >= v->stop_after;
}

Test(nat_ops, foreach_filters_order_paging)
{
    struct nat_config c = small_cfg(NAT_POLICY_SEQUENTIAL, NAT_MAPPING_APDM, 30000, 30999);
    struct nat_table *t;
    struct nat_session *s[60];
    struct nat_filter f;
    struct ids v;

    c.n_ips = 2;
    c.ips[0] = A("198.51.100.1");
    c.ips[1] = A("2001:db8::1");
    t = mk(&c, NULL);
    for (int i = 0; i < 60; i++) {
        char client[48];
        struct nat_key k;

        if (i % 3 == 2)
            snprintf(client, sizeof(client), "2001:db8:c::%d", i);
        else
            snprintf(client, sizeof(client), "10.%d.0.%d", i % 2, i);
        k = KEY(i % 4 == 0 ? NAT_PROTO_UDP : NAT_PROTO_TCP, client, 5000,
                i % 5 == 0 ? "2001:db8:b::1" : "192.0.2.1", 80);
        cr_assert_eq(nat_session_open(t, &k, (uint32_t)(i % 3), 0, &s[i]), NAT_OK);
        if (i % 6 == 0)
            nat_session_set_state(t, s[i], NAT_STATE_ESTABLISHED, 0);
    }
    /* close a few so slots get reused out of id order */
    for (int i = 0; i < 60; i += 7)
        nat_session_close(t, s[i], 1, "flush");
    for (int i = 0; i < 5; i++) {
        struct nat_key k = KEY(NAT_PROTO_TCP, "10.9.9.9", (uint16_t)(7000 + i), "192.0.2.1", 80);

        open_ok(t, &k, 2);
    }

    /* all: ids ascending */
    memset(&v, 0, sizeof(v));
    cr_assert_eq(nat_foreach(t, NULL, 0, ids_cb, &v), 60 - 9 + 5);
    for (size_t i = 1; i < v.n; i++)
        cr_assert_lt(v.id[i - 1], v.id[i]);
    /* paging: after_id, and stopping early */
    struct ids p = {.stop_after = 10};
    cr_assert_eq(nat_foreach(t, NULL, 0, ids_cb, &p), 10);
    uint64_t last = p.id[9];
    p.n = 0;
    p.stop_after = 0;
    cr_assert_eq(nat_foreach(t, NULL, last, ids_cb, &p), v.n - 10);
    cr_assert_eq(p.id[0], v.id[10]);

    /* each filter field, checked against nat_filter_match over the full list */
    for (int which = 0; which < 8; which++) {
        size_t want = 0;

        nat_filter_init(&f);
        switch (which) {
        case 0:
            f.proto = NAT_PROTO_UDP;
            break;
        case 1:
            f.has_client = true;
            cr_assert_eq(nat_prefix_parse(&f.client, &f.client_plen, "10.1.0.0/16"), 0);
            break;
        case 2:
            f.has_client = true;
            cr_assert_eq(nat_prefix_parse(&f.client, &f.client_plen, "2001:db8:c::/48"), 0);
            break;
        case 3:
            f.has_nat_ip = true;
            f.nat_ip = A("2001:db8::1");
            break;
        case 4:
            f.nat_port_lo = 30002;
            f.nat_port_hi = 30005;
            break;
        case 5:
            f.has_backend = true;
            f.backend = 2;
            break;
        case 6:
            f.state = NAT_STATE_ESTABLISHED;
            break;
        default:
            f.proto = NAT_PROTO_TCP;
            f.state = NAT_STATE_NEW;
            f.has_backend = true;
            f.backend = 0;
            break;
        }
        for (int i = 0; i < 60; i++)
            if (i % 7 != 0 && nat_filter_match(&f, s[i]))
                want++;
        /* the 5 late tcp sessions (ids > 60) may match some filters too */
        memset(&v, 0, sizeof(v));
        size_t got = nat_foreach(t, &f, 0, ids_cb, &v);
        size_t late = 0;
        for (size_t i = 0; i < v.n; i++)
            late += v.id[i] > 60;
        cr_assert_eq(got - late, want, "filter %d", which);
        cr_assert_gt(got, 0, "filter %d matches something", which);
    }
    /* zeroed filter with init: matches all; a zeroed one means state NEW */
    nat_filter_init(&f);
    memset(&v, 0, sizeof(v));
    cr_assert_eq(nat_foreach(t, &f, 0, ids_cb, &v), 56);
    nat_table_free(t);
}

Test(nat_ops, filter_match_fields)
{
    struct nat_session s;
    struct nat_filter f;

    memset(&s, 0, sizeof(s));
    s.key = KEY(NAT_PROTO_TCP, "10.1.2.3", 1000, "192.0.2.1", 80);
    s.ext = EP("198.51.100.1", 30005);
    s.backend = 4;
    s.state = NAT_STATE_CLOSING;
    nat_filter_init(&f);
    cr_assert(nat_filter_match(&f, &s));
    cr_assert(nat_filter_match(NULL, &s));
    f.proto = NAT_PROTO_UDP;
    cr_assert_not(nat_filter_match(&f, &s));
    nat_filter_init(&f);
    f.nat_port_lo = 30005;
    cr_assert(nat_filter_match(&f, &s), "lo only: lo..65535");
    f.nat_port_lo = 30006;
    cr_assert_not(nat_filter_match(&f, &s));
    f.nat_port_lo = 30000;
    f.nat_port_hi = 30004;
    cr_assert_not(nat_filter_match(&f, &s));
    f.nat_port_hi = 30005;
    cr_assert(nat_filter_match(&f, &s));
    nat_filter_init(&f);
    f.has_nat_ip = true;
    f.nat_ip = A("198.51.100.2");
    cr_assert_not(nat_filter_match(&f, &s));
    f.nat_ip = A("198.51.100.1");
    cr_assert(nat_filter_match(&f, &s));
    nat_filter_init(&f);
    f.has_backend = true;
    f.backend = 3;
    cr_assert_not(nat_filter_match(&f, &s));
    f.backend = 4;
    cr_assert(nat_filter_match(&f, &s));
    nat_filter_init(&f);
    f.state = NAT_STATE_NEW;
    cr_assert_not(nat_filter_match(&f, &s));
    f.state = NAT_STATE_CLOSING;
    cr_assert(nat_filter_match(&f, &s));
    nat_filter_init(&f);
    f.has_client = true;
    cr_assert_eq(nat_prefix_parse(&f.client, &f.client_plen, "10.1.2.0/24"), 0);
    cr_assert(nat_filter_match(&f, &s));
    cr_assert_eq(nat_prefix_parse(&f.client, &f.client_plen, "10.1.3.0/24"), 0);
    cr_assert_not(nat_filter_match(&f, &s));
}

static struct nat_table *cb_table;

static int count_cb(void *arg, const struct nat_session *s)
{
    (void)arg;
    (void)s;
    return 0;
}
static size_t cb_seen_live;

static void reading_cb(void *arg, const struct nat_event *ev)
{
    struct nat_stats st;

    rec_cb(arg, ev);
    nat_get_stats(cb_table, &st); /* a callback may read the table */
    cb_seen_live = st.live;
    cr_assert_eq(nat_foreach(cb_table, NULL, 0, count_cb, NULL), st.live,
                 "a listing in a callback sees the live sessions only");
    uint32_t cur = 0;
    cr_assert_eq(nat_walk(cb_table, NULL, &cur, 0, count_cb, NULL), st.live);
    if (ev->type == NAT_EV_CLOSE) {
        struct nat_session *self = ev->s.udata != NULL ? *(struct nat_session **)ev->s.udata : NULL;

        cr_assert_null(nat_lookup_inside(cb_table, &ev->s.key), "gone before its event");
        if (self != NULL && self->id == ev->s.id) {
            /* the caller's pointer is still valid in its own CLOSE event;
             * touching it there is ignored */
            nat_session_touch(cb_table, self, 999999, 5, 5);
            nat_session_set_state(cb_table, self, NAT_STATE_ESTABLISHED, 999999);
            cr_assert_eq(nat_session_repick(cb_table, self, 999999, 1), NAT_ERR_INVAL);
            cr_assert_eq(self->bytes_in, ev->s.bytes_in);
        }
    }
}

Test(nat_ops, flush_and_events)
{
    struct nat_config c = small_cfg(NAT_POLICY_SEQUENTIAL, NAT_MAPPING_EIM, 30000, 30099);
    static struct rec r;
    struct nat_table *t = mk(&c, NULL);
    struct nat_filter f;
    struct nat_stats st;
    static struct nat_session *selfs[10];

    memset(&r, 0, sizeof(r));
    cb_table = t;
    nat_table_set_event_cb(t, reading_cb, &r);
    for (uint16_t i = 0; i < 10; i++) {
        struct nat_key k = KEY(i < 4 ? NAT_PROTO_UDP : NAT_PROTO_TCP, "10.0.0.1", (uint16_t)(1 + i),
                               "192.0.2.1", 80);
        struct nat_session *s = NULL;

        cr_assert_eq(nat_session_open(t, &k, i % 2, 100 + i, &s), NAT_OK);
        selfs[i] = s;
        s->udata = &selfs[i];
    }
    for (uint16_t i = 0; i < 10; i++) {
        struct nat_key k = KEY(i < 4 ? NAT_PROTO_UDP : NAT_PROTO_TCP, "10.0.0.1", (uint16_t)(1 + i),
                               "192.0.2.1", 80);

        nat_session_touch(t, nat_lookup_inside(t, &k), 200, 10, 1);
    }
    cr_assert_eq(r.by_type[NAT_EV_OPEN], 10);
    cr_assert_eq(cb_seen_live, 10, "OPEN comes after the insert");
    nat_filter_init(&f);
    f.proto = NAT_PROTO_UDP;
    cr_assert_eq(nat_flush(t, &f, 300, "flush"), 4);
    cr_assert_eq(r.by_type[NAT_EV_CLOSE], 4);
    for (size_t i = 10; i < 14; i++) {
        cr_assert_eq(r.ev[i].type, NAT_EV_CLOSE);
        cr_assert_eq(r.ev[i].s.id, i - 9, "flush in id order");
        cr_assert_eq(r.ev[i].time, 300);
        cr_assert_str_eq(r.ev[i].reason, "flush");
        cr_assert_eq(r.ev[i].s.udata, &selfs[i - 10]);
        cr_assert_eq(r.ev[i].s.bytes_in, 10);
        cr_assert_eq(r.ev[i].s.opened_at, 100 + i - 10);
        cr_assert_eq(r.ev[i].s.key.proto, NAT_PROTO_UDP);
    }
    cr_assert_eq(nat_flush(t, NULL, 400, "shutdown"), 6);
    cr_assert_eq(r.n, 20);
    cr_assert_str_eq(r.ev[19].reason, "shutdown");
    cr_assert_eq(cb_seen_live, 0);
    cr_assert_eq(nat_flush(t, NULL, 500, "shutdown"), 0);
    nat_get_stats(t, &st);
    cr_assert_eq(st.closed, 10);
    cr_assert_eq(st.bytes_in, 100);
    cr_assert_eq(st.bytes_out, 10);
    cr_assert_eq(st.live, 0);
    nat_table_set_event_cb(t, NULL, NULL);
    struct nat_key k = KEY(NAT_PROTO_TCP, "10.0.0.1", 99, "192.0.2.1", 80);
    cr_assert_eq(open_ok(t, &k, 600)->opened_at, 600, "the ignored touches moved no clock");
    cr_assert_eq(r.n, 20, "no callback after it was removed");
    nat_table_free(t);
}

Test(nat_ops, stats_by_state)
{
    struct nat_config c = small_cfg(NAT_POLICY_SEQUENTIAL, NAT_MAPPING_EIM, 30000, 30099);
    struct nat_table *t = mk(&c, NULL);
    struct nat_session *s[6];
    struct nat_stats st;

    for (uint16_t i = 0; i < 6; i++) {
        struct nat_key k = KEY(i < 2 ? NAT_PROTO_UDP : NAT_PROTO_TCP, "10.0.0.1", (uint16_t)(1 + i),
                               "192.0.2.1", 80);

        s[i] = open_ok(t, &k, 0);
    }
    nat_session_set_state(t, s[0], NAT_STATE_ESTABLISHED, 1);
    nat_session_set_state(t, s[2], NAT_STATE_ESTABLISHED, 1);
    nat_session_set_state(t, s[3], NAT_STATE_ESTABLISHED, 1);
    nat_session_set_state(t, s[3], NAT_STATE_CLOSING, 2);
    nat_session_set_state(t, s[4], NAT_STATE_CLOSED, 2); /* ignored */
    nat_get_stats(t, &st);
    cr_assert_eq(st.live, 6);
    cr_assert_eq(st.live_by[0][NAT_STATE_NEW], 2);
    cr_assert_eq(st.live_by[0][NAT_STATE_ESTABLISHED], 1);
    cr_assert_eq(st.live_by[0][NAT_STATE_CLOSING], 1);
    cr_assert_eq(st.live_by[0][NAT_STATE_CLOSED], 0);
    cr_assert_eq(st.live_by[1][NAT_STATE_NEW], 1);
    cr_assert_eq(st.live_by[1][NAT_STATE_ESTABLISHED], 1);
    cr_assert_eq(st.ports_total, 100);
    cr_assert_eq(st.ports_in_use, 6);
    cr_assert_eq(st.blocks_in_use, 0);
    cr_assert_gt(st.memory_bytes, 0);
    nat_table_free(t);
}

/* Many sessions: the indexes grow several times (incrementally: lookups run
 * while a migration is half done) and batched lookups agree with single ones. */
Test(nat_ops, growth_and_batched_lookups, .timeout = 120)
{
    enum { N = 60000 };
    struct nat_config c = small_cfg(NAT_POLICY_RANDOM, NAT_MAPPING_APDM, 1024, 65535);
    struct nat_table *t;
    struct nat_session **s = calloc(N, sizeof(*s)), **out = calloc(N, sizeof(*out));
    struct nat_key *keys = calloc(N, sizeof(*keys));
    struct nat_outside_key *ok = calloc(N, sizeof(*ok));
    struct nat_stats st;
    size_t live = 0;

    c.n_ips = 2;
    c.ips[1] = A("::1");
    t = mk(&c, NULL);
    for (uint32_t i = 0; i < N; i++) {
        char client[48];

        if (i % 2)
            snprintf(client, sizeof(client), "10.%u.%u.%u", (i >> 16) & 255, (i >> 8) & 255,
                     i & 255);
        else
            snprintf(client, sizeof(client), "fd00::%x:%x", i >> 16, i & 0xffff);
        keys[i] = KEY(i % 3 ? NAT_PROTO_TCP : NAT_PROTO_UDP, client, (uint16_t)(i % 60000 + 1),
                      i % 4 == 0 ? "::1" : "127.0.0.1", (uint16_t)(80 + i % 7));
        s[i] = open_ok(t, &keys[i], i);
        live++;
        /* a session from long ago and the one just made are found */
        uint32_t j = (uint32_t)(((uint64_t)i * 2654435761u) % (i + 1));
        if (s[j] != NULL) {
            cr_assert_eq(nat_lookup_inside(t, &keys[j]), s[j]);
            cr_assert_eq(nat_lookup_outside(t, keys[j].proto, &s[j]->ext, &keys[j].dst), s[j]);
        }
        if (i % 3 == 1) { /* close some as it grows */
            uint32_t v = (uint32_t)(((uint64_t)i * 40503u) % i);

            if (s[v] != NULL) {
                nat_session_close(t, s[v], i, "flush");
                s[v] = NULL;
                live--;
            }
        }
    }
    nat_get_stats(t, &st);
    cr_assert_eq(st.live, live);
    for (uint32_t i = 0; i < N; i++) {
        if (s[i] != NULL)
            ok[i] = (struct nat_outside_key){keys[i].proto, s[i]->ext, keys[i].dst};
        else
            ok[i] = (struct nat_outside_key){keys[i].proto, EP("127.0.0.1", 1), keys[i].dst};
    }
    cr_assert_eq(nat_lookup_inside_many(t, keys, N, out), live);
    for (uint32_t i = 0; i < N; i++) {
        cr_assert_eq(out[i], s[i]);
        cr_assert_eq(nat_lookup_inside(t, &keys[i]), s[i]);
    }
    cr_assert_eq(nat_lookup_outside_many(t, ok, N, out), live);
    for (uint32_t i = 0; i < N; i++)
        cr_assert_eq(out[i], s[i]);
    cr_assert_eq(nat_lookup_inside_many(t, keys, 5, out), (size_t)(s[0] != NULL) + (s[1] != NULL) +
                                                              (s[2] != NULL) + (s[3] != NULL) +
                                                              (s[4] != NULL));
    cr_assert_eq(nat_lookup_inside_many(t, keys, 0, out), 0);
    /* everything goes; memory stays bounded and counters return to zero */
    cr_assert_eq(nat_flush(t, NULL, N, "shutdown"), live);
    nat_get_stats(t, &st);
    cr_assert_eq(st.live, 0);
    cr_assert_eq(st.ports_in_use, 0);
    cr_assert_eq(nat_ip_ports_in_use(t, 0), 0);
    cr_assert_eq(nat_ip_ports_in_use(t, 1), 0);
    cr_assert_eq(nat_ip_ports_in_use(t, 2), 0);
    nat_table_free(t);
    free(s);
    free(out);
    free(keys);
    free(ok);
}

Test(nat_ops, bad_arguments)
{
    struct nat_config c = small_cfg(NAT_POLICY_RANDOM, NAT_MAPPING_EIM, 30000, 30099);
    struct nat_table *t = mk(&c, NULL);
    struct nat_session *x = NULL;
    struct nat_key k = KEY(1, "10.0.0.1", 1, "192.0.2.1", 80); /* ICMP: not handled */
    struct nat_stats st;

    cr_assert_eq(nat_session_open(t, &k, 0, 0, &x), NAT_ERR_INVAL);
    cr_assert_eq(nat_session_open(t, NULL, 0, 0, &x), NAT_ERR_INVAL);
    cr_assert_null(x);
    nat_get_stats(t, &st);
    cr_assert_eq(st.refused[NAT_ERR_INVAL], 2);
    cr_assert_eq(nat_ip_ports_in_use(t, 7), 0);
    cr_assert_eq(nat_table_new(NULL, &c), NAT_ERR_INVAL);
    cr_assert_eq(nat_table_new(&t, NULL), NAT_ERR_INVAL);
    nat_table_free(t);
}

struct seen {
    uint8_t count[2048];
    size_t calls;
};

static int seen_cb(void *arg, const struct nat_session *s)
{
    struct seen *v = arg;

    cr_assert_lt(s->id, 2048);
    v->count[s->id]++;
    v->calls++;
    return 0;
}

Test(nat_ops, walk_in_steps)
{
    struct nat_config c = small_cfg(NAT_POLICY_RANDOM, NAT_MAPPING_APDM, 30000, 30999);
    struct nat_table *t = mk(&c, NULL);
    struct nat_session *s[1000];
    static struct seen v;
    struct nat_filter f;
    uint32_t cur = 0;
    size_t steps = 0, n;

    memset(&v, 0, sizeof(v));
    cr_assert_eq(nat_walk(t, NULL, &cur, 10, seen_cb, &v), 0, "empty table");
    cr_assert_eq(cur, 0);
    for (uint16_t i = 0; i < 1000; i++) {
        struct nat_key k = KEY(i % 2 ? NAT_PROTO_TCP : NAT_PROTO_UDP, "10.0.0.1",
                               (uint16_t)(1000 + i), "192.0.2.1", 80);

        s[i] = open_ok(t, &k, 0);
    }
    /* walk 37 at a time; between steps close some sessions and open others */
    do {
        n = nat_walk(t, NULL, &cur, 37, seen_cb, &v);
        cr_assert_leq(n, 37);
        steps++;
        if (steps % 3 == 0) {
            uint16_t i = (uint16_t)(steps * 7 % 1000);

            if (s[i] != NULL) {
                nat_session_close(t, s[i], 1, "flush");
                s[i] = NULL;
            }
            struct nat_key k =
                KEY(NAT_PROTO_TCP, "10.0.0.2", (uint16_t)(3000 + steps), "192.0.2.1", 80);
            open_ok(t, &k, 1);
        }
    } while (cur != 0);
    cr_assert_gt(steps, 27);
    for (uint16_t i = 0; i < 1000; i++) {
        if (s[i] != NULL) /* lived through the walk: seen exactly once */
            cr_assert_eq(v.count[s[i]->id], 1, "id %llu", (unsigned long long)s[i]->id);
        else
            cr_assert_leq(v.count[i + 1], 1);
    }
    for (size_t id = 0; id < 2048; id++)
        cr_assert_leq(v.count[id], 1);
    /* a filter, no limit, and a callback that stops the walk */
    memset(&v, 0, sizeof(v));
    nat_filter_init(&f);
    f.proto = NAT_PROTO_UDP;
    cur = 0;
    n = nat_walk(t, &f, &cur, 0, seen_cb, &v);
    cr_assert_eq(cur, 0);
    size_t udp = 0;
    for (uint16_t i = 0; i < 1000; i++)
        udp += s[i] != NULL && s[i]->key.proto == NAT_PROTO_UDP;
    cr_assert_eq(n, udp);
    struct ids stop = {.stop_after = 5};
    cur = 0;
    cr_assert_eq(nat_walk(t, NULL, &cur, 0, ids_cb, &stop), 5);
    cr_assert_neq(cur, 0);
    nat_table_free(t);
}
