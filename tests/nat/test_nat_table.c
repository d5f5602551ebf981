/* test_nat_table.c - the session table: open, lookups, close, events, the
 * first checks of policies and mapping behaviours. */
#include "tests/nat/nat_test_util.h"

Test(nat_table, config_default)
{
    struct nat_config c;
    char buf[NAT_ADDR_STRLEN];

    nat_config_default(&c);
    cr_assert_eq(c.policy, NAT_POLICY_RANDOM);
    cr_assert_eq(c.mapping, NAT_MAPPING_EIM);
    cr_assert_eq(c.n_ips, 1);
    cr_assert_str_eq(nat_addr_format(&c.ips[0], buf), "127.0.0.1");
    cr_assert_eq(c.port_lo, 20000);
    cr_assert_eq(c.port_hi, 32767);
    cr_assert_eq(c.timeout_ms[NAT_TIMEOUT_UDP], 300000);
    cr_assert_eq(c.timeout_ms[NAT_TIMEOUT_TCP_ESTABLISHED], 7440000);
    cr_assert_eq(c.timeout_ms[NAT_TIMEOUT_TCP_TRANSITORY], 240000);
    cr_assert_eq(c.per_client_limit, 0);
    cr_assert_eq(c.block_size, 64);
    cr_assert_eq(c.reuse_delay_ms, 2000);
    cr_assert_eq(c.max_sessions, 0);
    cr_assert_eq(c.first_id, 1);
}

Test(nat_table, new_rejects_bad_config)
{
    struct nat_config c;
    struct nat_table *t = (struct nat_table *)&c; /* must stay untouched */

    nat_config_default(&c);
    c.n_ips = 0;
    cr_assert_eq(nat_table_new(&t, &c), NAT_ERR_INVAL);
    nat_config_default(&c);
    c.n_ips = NAT_MAX_IPS + 1;
    cr_assert_eq(nat_table_new(&t, &c), NAT_ERR_INVAL);
    nat_config_default(&c);
    c.port_lo = 2000, c.port_hi = 1999;
    cr_assert_eq(nat_table_new(&t, &c), NAT_ERR_INVAL);
    nat_config_default(&c);
    c.port_lo = 0;
    cr_assert_eq(nat_table_new(&t, &c), NAT_ERR_INVAL);
    nat_config_default(&c);
    c.policy = NAT_POLICY_BLOCK, c.block_size = 0;
    cr_assert_eq(nat_table_new(&t, &c), NAT_ERR_INVAL);
    c.block_size = 20000; /* larger than the range */
    cr_assert_eq(nat_table_new(&t, &c), NAT_ERR_INVAL);
    nat_config_default(&c);
    c.policy = 9;
    cr_assert_eq(nat_table_new(&t, &c), NAT_ERR_INVAL);
    nat_config_default(&c);
    c.mapping = 9;
    cr_assert_eq(nat_table_new(&t, &c), NAT_ERR_INVAL);
    nat_config_default(&c);
    c.ips[1] = c.ips[0], c.n_ips = 2; /* duplicate external address */
    cr_assert_eq(nat_table_new(&t, &c), NAT_ERR_INVAL);
    cr_assert_eq(t, (struct nat_table *)&c);
    nat_table_free(NULL);
}

Test(nat_table, open_lookup_close_events)
{
    struct nat_config c = small_cfg(NAT_POLICY_SEQUENTIAL, NAT_MAPPING_EIM, 40000, 40009);
    struct rec r;
    struct nat_table *t;
    struct nat_key k = KEY(NAT_PROTO_TCP, "10.0.0.1", 5555, "192.0.2.1", 80);
    struct nat_session *s, *s2 = NULL;
    struct nat_endpoint dst = EP("192.0.2.1", 80), ext;
    struct nat_stats st;
    char buf[NAT_ADDR_STRLEN];

    c.first_id = 100;
    t = mk(&c, &r);
    s = open_ok(t, &k, 1000);
    cr_assert_eq(s->id, 100);
    cr_assert_str_eq(nat_addr_format(&s->ext.addr, buf), "127.0.0.1");
    cr_assert_eq(s->ext.port, 40000);
    cr_assert_eq(s->ip_index, 0);
    cr_assert_eq(s->state, NAT_STATE_NEW);
    cr_assert_eq(s->opened_at, 1000);
    cr_assert_eq(s->last_seen, 1000);
    cr_assert_eq(s->backend, 7);
    cr_assert_eq(r.n, 1);
    cr_assert_eq(r.ev[0].type, NAT_EV_OPEN);
    cr_assert_eq(r.ev[0].time, 1000);
    cr_assert_null(r.ev[0].reason);
    cr_assert_eq(r.ev[0].s.id, 100);
    cr_assert_eq(r.ev[0].s.ext.port, 40000);

    cr_assert_eq(nat_lookup_inside(t, &k), s);
    ext = s->ext;
    cr_assert_eq(nat_lookup_outside(t, NAT_PROTO_TCP, &ext, &dst), s);
    cr_assert_null(nat_lookup_outside(t, NAT_PROTO_UDP, &ext, &dst));
    dst.port = 81;
    cr_assert_null(nat_lookup_outside(t, NAT_PROTO_TCP, &ext, &dst));

    cr_assert_eq(nat_session_open(t, &k, 7, 1001, &s2), NAT_ERR_EXISTS);
    cr_assert_null(s2);
    cr_assert_eq(r.n, 1, "EXISTS emits no event");

    nat_session_touch(t, s, 1500, 10, 20);
    nat_session_set_state(t, s, NAT_STATE_ESTABLISHED, 1600);
    nat_get_stats(t, &st);
    cr_assert_eq(st.live, 1);
    cr_assert_eq(st.live_by[0][NAT_STATE_ESTABLISHED], 1);
    cr_assert_eq(st.live_by[0][NAT_STATE_NEW], 0);
    cr_assert_eq(st.ports_in_use, 1);
    cr_assert_eq(st.ports_total, 10);
    cr_assert_eq(st.bytes_in, 10);
    cr_assert_eq(st.bytes_out, 20);
    cr_assert_eq(st.refused[NAT_ERR_EXISTS], 1);
    cr_assert_eq(nat_client_sessions(t, &k.client.addr), 1);
    cr_assert_eq(nat_ip_ports_in_use(t, 0), 1);

    nat_session_close(t, s, 2000, "client_fin");
    cr_assert_eq(r.n, 2);
    cr_assert_eq(r.ev[1].type, NAT_EV_CLOSE);
    cr_assert_str_eq(r.ev[1].reason, "client_fin");
    cr_assert_eq(r.ev[1].time, 2000);
    cr_assert_eq(r.ev[1].s.id, 100);
    cr_assert_eq(r.ev[1].s.state, NAT_STATE_CLOSED);
    cr_assert_eq(r.ev[1].s.bytes_in, 10);
    cr_assert_eq(r.ev[1].s.bytes_out, 20);
    cr_assert_eq(r.ev[1].s.last_seen, 1600);
    cr_assert_null(nat_lookup_inside(t, &k));
    dst.port = 80;
    cr_assert_null(nat_lookup_outside(t, NAT_PROTO_TCP, &ext, &dst));
    nat_get_stats(t, &st);
    cr_assert_eq(st.live, 0);
    cr_assert_eq(st.opened, 1);
    cr_assert_eq(st.closed, 1);
    cr_assert_eq(st.ports_in_use, 0);
    cr_assert_eq(st.live_by[0][NAT_STATE_ESTABLISHED], 0);
    cr_assert_eq(nat_client_sessions(t, &k.client.addr), 0);
    cr_assert_eq(nat_next_expiry(t), UINT64_MAX);
    nat_table_free(t);
}

Test(nat_table, eim_one_port_per_client_endpoint)
{
    struct nat_config c = small_cfg(NAT_POLICY_RANDOM, NAT_MAPPING_EIM, 30000, 30099);
    struct nat_table *t = mk(&c, NULL);
    struct nat_key k1 = KEY(NAT_PROTO_UDP, "10.0.0.1", 4000, "192.0.2.1", 53);
    struct nat_key k2 = KEY(NAT_PROTO_UDP, "10.0.0.1", 4000, "192.0.2.2", 53);
    struct nat_key k3 = KEY(NAT_PROTO_UDP, "10.0.0.1", 4000, "192.0.2.1", 54);
    struct nat_key k4 = KEY(NAT_PROTO_UDP, "10.0.0.1", 4001, "192.0.2.1", 53);
    struct nat_session *s1 = open_ok(t, &k1, 0), *s2 = open_ok(t, &k2, 0);
    struct nat_session *s3 = open_ok(t, &k3, 0), *s4 = open_ok(t, &k4, 0);
    struct nat_stats st;

    cr_assert_eq(s1->ext.port, s2->ext.port);
    cr_assert_eq(s1->ext.port, s3->ext.port);
    cr_assert_neq(s1->ext.port, s4->ext.port);
    cr_assert_eq(nat_lookup_outside(t, NAT_PROTO_UDP, &s1->ext, &k2.dst), s2);
    cr_assert_eq(nat_lookup_outside(t, NAT_PROTO_UDP, &s1->ext, &k3.dst), s3);
    nat_get_stats(t, &st);
    cr_assert_eq(st.ports_in_use, 2);
    cr_assert_eq(st.live, 4);
    /* the mapping stays while any of its sessions lives */
    uint16_t p = s1->ext.port;
    nat_session_close(t, s1, 1, "flush");
    nat_session_close(t, s2, 1, "flush");
    nat_get_stats(t, &st);
    cr_assert_eq(st.ports_in_use, 2);
    struct nat_key k5 = KEY(NAT_PROTO_UDP, "10.0.0.1", 4000, "192.0.2.9", 9);
    cr_assert_eq(open_ok(t, &k5, 2)->ext.port, p);
    nat_table_free(t);
}

Test(nat_table, apdm_port_serves_several_destinations)
{
    struct nat_config c = small_cfg(NAT_POLICY_RANDOM, NAT_MAPPING_APDM, 30000, 30000);
    struct rec r;
    struct nat_table *t = mk(&c, &r);
    struct nat_session *s[3], *x = NULL;
    char dst[32];

    for (int i = 0; i < 3; i++) {
        struct nat_key k;

        snprintf(dst, sizeof(dst), "192.0.2.%d", i + 1);
        k = KEY(NAT_PROTO_TCP, "10.0.0.1", (uint16_t)(1000 + i), dst, 80);
        s[i] = open_ok(t, &k, 0);
        cr_assert_eq(s[i]->ext.port, 30000);
    }
    struct nat_key k = KEY(NAT_PROTO_TCP, "10.0.0.2", 1000, "192.0.2.1", 80);
    cr_assert_eq(nat_session_open(t, &k, 3, 5, &x), NAT_ERR_POOL_EXHAUSTED);
    cr_assert_null(x);
    cr_assert_eq(r.by_type[NAT_EV_REFUSE], 1);
    cr_assert_eq(r.ev[3].type, NAT_EV_REFUSE);
    cr_assert_str_eq(r.ev[3].reason, "pool_exhausted");
    cr_assert_eq(r.ev[3].s.id, 0);
    cr_assert_eq(r.ev[3].s.backend, 3);
    cr_assert_eq(r.ev[3].s.opened_at, 5);
    cr_assert_eq(r.ev[3].s.key.client.port, 1000);
    /* same destination address, other port: apdm allows it */
    k = KEY(NAT_PROTO_TCP, "10.0.0.2", 1000, "192.0.2.1", 81);
    cr_assert_eq(open_ok(t, &k, 6)->ext.port, 30000);
    struct nat_stats st;
    nat_get_stats(t, &st);
    cr_assert_eq(st.ports_in_use, 1);
    cr_assert_eq(st.refused[NAT_ERR_POOL_EXHAUSTED], 1);
    cr_assert_eq(st.live, 4);
    nat_table_free(t);
}

Test(nat_table, sequential_policy)
{
    struct nat_config c = small_cfg(NAT_POLICY_SEQUENTIAL, NAT_MAPPING_EIM, 50000, 50004);
    struct nat_table *t = mk(&c, NULL);
    struct nat_session *s[5];

    for (int i = 0; i < 5; i++) {
        struct nat_key k = KEY(NAT_PROTO_TCP, "10.0.0.1", (uint16_t)(100 + i), "192.0.2.1", 80);

        s[i] = open_ok(t, &k, 0);
        cr_assert_eq(s[i]->ext.port, 50000 + i);
    }
    nat_session_close(t, s[1], 1, "client_fin");
    /* next after the last one given wraps to the only free one */
    struct nat_key k = KEY(NAT_PROTO_TCP, "10.0.0.1", 200, "192.0.2.1", 80);
    cr_assert_eq(open_ok(t, &k, 2)->ext.port, 50001);
    nat_table_free(t);
}

Test(nat_table, udp_expiry_touch_budget)
{
    struct nat_config c = small_cfg(NAT_POLICY_RANDOM, NAT_MAPPING_EIM, 30000, 30099);
    struct rec r;
    struct nat_table *t;
    struct nat_session *s[3];

    c.timeout_ms[NAT_TIMEOUT_UDP] = 1000;
    t = mk(&c, &r);
    for (int i = 0; i < 3; i++) {
        struct nat_key k = KEY(NAT_PROTO_UDP, "10.0.0.1", (uint16_t)(100 + i), "192.0.2.1", 53);

        s[i] = open_ok(t, &k, 100 * (uint64_t)i);
    }
    cr_assert_eq(nat_next_expiry(t), 1000);
    nat_session_touch(t, s[0], 500, 1, 0);
    cr_assert_eq(nat_next_expiry(t), 1100);
    cr_assert_eq(nat_expire(t, 1099, 0), 0);
    cr_assert_eq(nat_expire(t, 5000, 1), 1);
    cr_assert_eq(r.ev[r.n - 1].type, NAT_EV_EXPIRE);
    cr_assert_str_eq(r.ev[r.n - 1].reason, "timeout");
    cr_assert_eq(r.ev[r.n - 1].s.key.client.port, 101);
    cr_assert_eq(nat_expire(t, 5000, 0), 2);
    cr_assert_eq(r.by_type[NAT_EV_EXPIRE], 3);
    cr_assert_eq(r.ev[r.n - 2].s.key.client.port, 102);
    cr_assert_eq(r.ev[r.n - 1].s.key.client.port, 100);
    struct nat_stats st;
    nat_get_stats(t, &st);
    cr_assert_eq(st.expired, 3);
    cr_assert_eq(st.live, 0);
    nat_table_free(t);
}

Test(nat_table, quota_and_table_full)
{
    struct nat_config c = small_cfg(NAT_POLICY_RANDOM, NAT_MAPPING_EIM, 30000, 30099);
    struct rec r;
    struct nat_table *t;
    struct nat_session *x = NULL;
    struct nat_key k;

    c.per_client_limit = 2;
    c.max_sessions = 3;
    t = mk(&c, &r);
    k = KEY(NAT_PROTO_TCP, "10.0.0.1", 1, "192.0.2.1", 80);
    open_ok(t, &k, 0);
    k.client.port = 2;
    open_ok(t, &k, 0);
    k.client.port = 3;
    cr_assert_eq(nat_session_open(t, &k, 0, 0, &x), NAT_ERR_CLIENT_QUOTA);
    cr_assert_str_eq(r.ev[r.n - 1].reason, "client_quota");
    k = KEY(NAT_PROTO_TCP, "10.0.0.2", 1, "192.0.2.1", 80);
    open_ok(t, &k, 0);
    k.client.port = 2;
    cr_assert_eq(nat_session_open(t, &k, 0, 0, &x), NAT_ERR_TABLE_FULL);
    cr_assert_str_eq(r.ev[r.n - 1].reason, "table_full");
    cr_assert_null(x);
    cr_assert_eq(r.by_type[NAT_EV_REFUSE], 2);
    cr_assert_eq(r.by_type[NAT_EV_OPEN], 3);
    struct nat_stats st;
    nat_get_stats(t, &st);
    cr_assert_eq(st.refused[NAT_ERR_CLIENT_QUOTA], 1);
    cr_assert_eq(st.refused[NAT_ERR_TABLE_FULL], 1);
    cr_assert_eq(st.live, 3);
    nat_table_free(t);
}

Test(nat_table, reuse_delay)
{
    struct nat_config c = small_cfg(NAT_POLICY_SEQUENTIAL, NAT_MAPPING_EIM, 30000, 30000);
    struct nat_table *t;
    struct nat_session *s, *x = NULL;
    struct nat_key k = KEY(NAT_PROTO_UDP, "10.0.0.1", 1, "192.0.2.1", 53);
    struct nat_stats st;

    c.reuse_delay_ms = 1000;
    t = mk(&c, NULL);
    s = open_ok(t, &k, 0);
    nat_session_close(t, s, 100, "flush");
    nat_get_stats(t, &st);
    cr_assert_eq(st.ports_cooling, 1);
    cr_assert_eq(st.ports_in_use, 0);
    k.client.port = 2;
    cr_assert_eq(nat_session_open(t, &k, 0, 1099, &x), NAT_ERR_POOL_EXHAUSTED);
    s = open_ok(t, &k, 1100);
    cr_assert_eq(s->ext.port, 30000);
    nat_get_stats(t, &st);
    cr_assert_eq(st.ports_cooling, 0);
    nat_table_free(t);
}
