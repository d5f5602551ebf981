/*
 * ctl_fmt_test.c - gwctl's text formats against golden output: units,
 * durations, the NAT table and its footer, stats, backends, event lines.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/gw_ctlproto.h"
#include "gateway/gwctl_fmt.h"

/* 2026-11-27T16:21:25.123Z */
#define NOW 1795796485123ULL

struct capture {
    FILE *f;
    char *buf;
    size_t len;
};

static void cap_open(struct capture *c)
{
    c->buf = NULL;
    c->len = 0;
    c->f = open_memstream(&c->buf, &c->len);
    cr_assert_not_null(c->f);
}

static void cap_check(struct capture *c, const char *want)
{
    fclose(c->f);
    cr_assert_str_eq(c->buf, want, "got:\n%s\nwant:\n%s", c->buf, want);
    free(c->buf);
}

Test(ctl_fmt, bytes)
{
    char b[16];

    cr_assert_str_eq(ctl_fmt_bytes(0, b, sizeof(b)), "0");
    cr_assert_str_eq(ctl_fmt_bytes(1023, b, sizeof(b)), "1023");
    cr_assert_str_eq(ctl_fmt_bytes(1024, b, sizeof(b)), "1.0K");
    cr_assert_str_eq(ctl_fmt_bytes(1229, b, sizeof(b)), "1.2K");
    cr_assert_str_eq(ctl_fmt_bytes(10189, b, sizeof(b)), "10K"); /* 9.95K rounds up: no "10.0K" */
    cr_assert_str_eq(ctl_fmt_bytes(35000, b, sizeof(b)), "34K");
    cr_assert_str_eq(ctl_fmt_bytes(3565158, b, sizeof(b)), "3.4M");
    cr_assert_str_eq(ctl_fmt_bytes(5ULL << 30, b, sizeof(b)), "5.0G");
    cr_assert_str_eq(ctl_fmt_bytes(UINT64_MAX, b, sizeof(b)), "16E");
}

Test(ctl_fmt, durations)
{
    char b[16];

    cr_assert_str_eq(ctl_fmt_duration(0, b, sizeof(b)), "0s");
    cr_assert_str_eq(ctl_fmt_duration(5999, b, sizeof(b)), "5s");
    cr_assert_str_eq(ctl_fmt_duration(59999, b, sizeof(b)), "59s");
    cr_assert_str_eq(ctl_fmt_duration(60000, b, sizeof(b)), "1m0s");
    cr_assert_str_eq(ctl_fmt_duration(192000, b, sizeof(b)), "3m12s");
    cr_assert_str_eq(ctl_fmt_duration(7440000, b, sizeof(b)), "2h4m");
    cr_assert_str_eq(ctl_fmt_duration(86400000ULL * 3 + 3600000 * 4, b, sizeof(b)), "3d4h");
}

Test(ctl_fmt, endpoints)
{
    char b[64];

    cr_assert_str_eq(ctl_fmt_endpoint("127.0.0.1", 80, b, sizeof(b)), "127.0.0.1:80");
    cr_assert_str_eq(ctl_fmt_endpoint("::1", 80, b, sizeof(b)), "[::1]:80");
}

static const char *const sessions_json =
    "[{\"id\":1,\"proto\":\"tcp\",\"client_ip\":\"127.0.0.2\",\"client_port\":40000,"
    "\"nat_ip\":\"127.0.0.1\",\"nat_port\":24001,\"backend\":\"web\",\"backend_ip\":\"127.0.0.1\","
    "\"backend_port\":9000,\"state\":\"established\",\"opened_at\":\"2026-11-27T16:18:13.000Z\","
    "\"last_seen\":\"2026-11-27T16:21:20.000Z\",\"closed_at\":null,\"close_reason\":null,"
    "\"bytes_in\":1229,\"bytes_out\":3565158},"
    "{\"id\":2,\"proto\":\"udp\",\"client_ip\":\"::1\",\"client_port\":5353,"
    "\"nat_ip\":\"::1\",\"nat_port\":25999,\"backend\":\"dns\",\"backend_ip\":\"::1\","
    "\"backend_port\":53,\"state\":\"new\",\"opened_at\":\"2026-11-27T14:17:00.000Z\","
    "\"last_seen\":\"2026-11-27T16:21:25.000Z\",\"closed_at\":null,\"close_reason\":null,"
    "\"bytes_in\":0,\"bytes_out\":512}]";

Test(ctl_fmt, nat_table_golden)
{
    struct ctl_table t;
    struct capture c;
    json_t *arr = json_loads(sessions_json, 0, NULL), *s;
    size_t i;

    cr_assert_not_null(arr);
    ctl_nat_table_init(&t);
    json_array_foreach(arr, i, s)
    {
        struct ctl_session_view v;
        cr_assert_eq(ctl_session_view_from_json(&v, s), 0);
        cr_assert_eq(ctl_nat_table_add(&t, &v, NOW), 0);
    }
    cap_open(&c);
    ctl_table_print(&t, c.f);
    ctl_nat_footer(c.f, t.nrows, 2);
    cap_check(&c, "PROTO  CLIENT           NAT              BACKEND             STATE          AGE "
                  " IDLE    IN   OUT\n"
                  "tcp    127.0.0.2:40000  127.0.0.1:24001  web/127.0.0.1:9000  established  3m12s "
                  "   5s  1.2K  3.4M\n"
                  "udp    [::1]:5353       [::1]:25999      dns/[::1]:53        new           2h4m "
                  "   0s     0   512\n"
                  "2 sessions\n");
    ctl_table_free(&t);
    ctl_table_free(&t);
    json_decref(arr);
}

Test(ctl_fmt, nat_table_empty_and_footers)
{
    struct ctl_table t;
    struct capture c;

    ctl_nat_table_init(&t);
    cap_open(&c);
    ctl_table_print(&t, c.f);
    ctl_nat_footer(c.f, 0, 0);
    ctl_nat_footer(c.f, 1, 1);
    ctl_nat_footer(c.f, 100, 100000);
    cap_check(&c, "PROTO  CLIENT  NAT  BACKEND  STATE  AGE  IDLE  IN  OUT\n"
                  "0 sessions\n"
                  "1 session\n"
                  "100 of 100000 sessions\n");
    ctl_table_free(&t);
}

Test(ctl_fmt, closed_session_shows_its_lifetime)
{
    struct ctl_table t;
    struct capture c;
    struct ctl_session_view v = {.proto = "tcp",
                                 .client_ip = "10.0.0.1",
                                 .client_port = 1,
                                 .nat_ip = "10.0.0.2",
                                 .nat_port = 2,
                                 .backend = "",
                                 .backend_ip = "10.0.0.3",
                                 .backend_port = 3,
                                 .state = "closed",
                                 .opened_ms = NOW - 65000,
                                 .last_ms = NOW - 1000,
                                 .closed_ms = NOW - 5000,
                                 .bytes_in = 1,
                                 .bytes_out = 2};

    ctl_nat_table_init(&t);
    cr_assert_eq(ctl_nat_table_add(&t, &v, NOW), 0);
    cap_open(&c);
    ctl_table_print(&t, c.f);
    cap_check(&c, "PROTO  CLIENT      NAT         BACKEND     STATE    AGE  IDLE  IN  OUT\n"
                  "tcp    10.0.0.1:1  10.0.0.2:2  10.0.0.3:3  closed  1m0s     -   1    2\n");
    ctl_table_free(&t);
}

Test(ctl_fmt, session_view_refuses_missing_fields)
{
    struct ctl_session_view v;
    json_t *j = json_loads("{\"proto\":\"tcp\",\"client_ip\":\"1.2.3.4\"}", 0, NULL);

    cr_assert_eq(ctl_session_view_from_json(&v, j), -1);
    json_decref(j);
}

Test(ctl_fmt, the_daemon_session_format_reads_back)
{
    struct nat_session s;
    struct ctl_session_view v;
    char buf[CTL_SESSION_JSON_MAX];
    json_t *j;

    memset(&s, 0, sizeof(s));
    s.id = 5;
    s.key.proto = NAT_PROTO_TCP;
    nat_addr_parse(&s.key.client.addr, "127.0.0.5");
    s.key.client.port = 1000;
    nat_addr_parse(&s.key.dst.addr, "127.0.0.1");
    s.key.dst.port = 80;
    nat_addr_parse(&s.ext.addr, "127.0.0.1");
    s.ext.port = 24500;
    s.opened_at = NOW - 10000;
    s.last_seen = NOW - 2000;
    s.bytes_in = 10;
    s.bytes_out = 2048;
    s.state = NAT_STATE_CLOSING;
    cr_assert_gt(ctl_session_format(buf, sizeof(buf), &s, "web", -1, 0, NULL), 0);
    j = json_loads(buf, 0, NULL);
    cr_assert_eq(ctl_session_view_from_json(&v, j), 0);
    cr_assert_eq(v.opened_ms, NOW - 10000);
    cr_assert_eq(v.last_ms, NOW - 2000);
    cr_assert_eq(v.closed_ms, 0);
    cr_assert_eq(v.nat_port, 24500);
    cr_assert_str_eq(v.state, "closing");
    json_decref(j);
}

Test(ctl_fmt, stats_golden)
{
    struct capture c;
    json_t *st = json_loads(
        "{\"time\":\"2026-11-27T16:21:25.123Z\",\"started_at\":\"2026-11-27T14:17:25.123Z\","
        "\"uptime_s\":7440,"
        "\"flows\":{\"live\":3,\"tcp\":{\"new\":0,\"established\":2,\"closing\":0},"
        "\"udp\":{\"new\":1,\"established\":0,\"closing\":0}},"
        "\"mappings\":{\"opened\":10,\"closed\":6,\"expired\":1,\"refused\":{\"pool_exhausted\":2,"
        "\"client_quota\":0,\"table_full\":0,\"no_route\":0,\"no_server\":1}},"
        "\"pool\":{\"policy\":\"random\",\"mapping\":\"eim\",\"ports\":\"24000-25999\","
        "\"ports_total\":4000,\"ports_in_use\":3,\"ports_cooling\":1,"
        "\"by_ip\":[{\"ip\":\"127.0.0.1\",\"ports\":2000,\"in_use\":2},"
        "{\"ip\":\"127.0.0.2\",\"ports\":2000,\"in_use\":1}]},"
        "\"traffic\":{\"bytes_in\":1229,\"bytes_out\":3565158,\"udp_datagrams_in\":4,"
        "\"udp_datagrams_out\":3,\"udp_dropped\":0},"
        "\"store\":{\"queue_depth\":0,\"queue_capacity\":32768,\"written\":17,\"dropped\":0,"
        "\"degraded\":false,\"last_error\":\"\"},"
        "\"backends\":[{\"name\":\"web\",\"proto\":\"tcp\",\"servers\":2,"
        "\"servers_available\":1,\"flows\":2}],"
        "\"control\":{\"clients\":1,\"subscribers\":0,\"requests\":5,"
        "\"errors\":{\"bad_json\":1,\"busy\":0}}}",
        0, NULL);

    cr_assert_not_null(st);
    cap_open(&c);
    ctl_print_stats(c.f, st);
    cap_check(
        &c, "uptime     2h4m (since 2026-11-27T14:17:25.123Z)\n"
            "flows      3 live: tcp 2 (new 0, established 2, closing 0), udp 1 (new 1, "
            "established 0, closing 0)\n"
            "mappings   opened 10, closed 6, expired 1, refused 3 (pool_exhausted 2, no_server 1)\n"
            "pool       random/eim ports 24000-25999: 3 of 4000 in use (0.1%), 1 cooling\n"
            "           127.0.0.1: 2 of 2000 (0.1%)\n"
            "           127.0.0.2: 1 of 2000 (0.1%)\n"
            "traffic    in 1.2K, out 3.4M; udp datagrams in 4, out 3, dropped 0\n"
            "store      queue 0/32768, written 17, dropped 0, ok\n"
            "backends   web tcp: 1 of 2 servers available, 2 flows\n"
            "control    1 clients, 0 subscribers, 5 requests, 1 errors\n");
    json_decref(st);
}

/* Under the block policy the pool line counts the blocks too. */
Test(ctl_fmt, stats_pool_line_counts_blocks)
{
    struct capture c;
    json_t *st = json_loads(
        "{\"pool\":{\"policy\":\"block\",\"mapping\":\"eim\",\"ports\":\"20000-32767\","
        "\"ports_total\":12768,\"ports_in_use\":5,\"ports_cooling\":0,\"blocks_in_use\":3,"
        "\"blocks_held\":1,\"by_ip\":[]}}",
        0, NULL);

    cr_assert_not_null(st);
    cap_open(&c);
    ctl_print_stats(c.f, st);
    fclose(c.f);
    cr_assert_not_null(strstr(c.buf, "pool       block/eim ports 20000-32767: 5 of 12768 in use "
                                     "(0.0%), 0 cooling; 3 blocks taken, 1 of them held empty\n"),
                       "%s", c.buf);
    free(c.buf);
    json_decref(st);
}

Test(ctl_fmt, blocks_golden)
{
    struct capture c;
    json_t *r = json_loads(
        "{\"policy\":\"block\",\"block_size\":64,\"total\":3,\"blocks\":["
        "{\"client_ip\":\"10.0.0.1\",\"nat_ip\":\"192.0.2.1\",\"nat_port\":20000,"
        "\"nat_port_last\":20063,\"sessions\":12,\"hold_until\":null,\"hold_left_ms\":null},"
        "{\"client_ip\":\"2001:db8::7\",\"nat_ip\":\"2001:db8:1::1\",\"nat_port\":20064,"
        "\"nat_port_last\":20127,\"sessions\":0,\"hold_until\":\"2026-11-27T16:00:09.000Z\","
        "\"hold_left_ms\":9500}]}",
        0, NULL);

    cr_assert_not_null(r);
    cap_open(&c);
    ctl_print_blocks(c.f, r);
    cap_check(&c, "CLIENT       NAT                          SESSIONS  HELD\n"
                  "10.0.0.1     192.0.2.1:20000-20063              12  -\n"
                  "2001:db8::7  [2001:db8:1::1]:20064-20127         0  9s left\n"
                  "2 of 3 blocks of 64 ports\n");
    json_decref(r);
    r = json_loads("{\"policy\":\"random\",\"block_size\":0,\"total\":0,\"blocks\":[]}", 0, NULL);
    cap_open(&c);
    ctl_print_blocks(c.f, r);
    cap_check(&c, "CLIENT  NAT  SESSIONS  HELD\n0 blocks: the NAT policy is random, not block\n");
    json_decref(r);
}

Test(ctl_fmt, backends_golden)
{
    struct capture c;
    json_t *r = json_loads(
        "{\"backends\":[{\"name\":\"web\",\"proto\":\"tcp\",\"balance\":\"roundrobin\","
        "\"servers\":[{\"name\":\"a\",\"address\":\"127.0.0.1:9000\",\"weight\":1,"
        "\"state\":\"up\",\"conns\":2,\"total_conns\":10,\"connect_failures\":0},"
        "{\"name\":\"127.0.0.1:9001\",\"address\":\"127.0.0.1:9001\",\"weight\":20,"
        "\"state\":\"draining\",\"conns\":0,\"total_conns\":3,\"connect_failures\":1}]}]}",
        0, NULL);

    cap_open(&c);
    ctl_print_backends(c.f, r);
    cap_check(&c, "BACKEND  PROTO  BALANCE     SERVER          ADDRESS         STATE     WEIGHT  "
                  "CONNS  TOTAL  FAILS\n"
                  "web      tcp    roundrobin  a               127.0.0.1:9000  up             1    "
                  "  2     10      0\n"
                  "web      tcp    roundrobin  127.0.0.1:9001  127.0.0.1:9001  draining      20    "
                  "  0      3      1\n");
    json_decref(r);
}

Test(ctl_fmt, events_golden)
{
    struct capture c;
    json_t *open = json_loads(
        "{\"event\":\"open\",\"time\":\"2026-11-27T16:21:25.123Z\",\"reason\":null,\"session\":"
        "{\"id\":1,\"proto\":\"tcp\",\"client_ip\":\"127.0.0.2\",\"client_port\":40000,"
        "\"nat_ip\":\"127.0.0.1\",\"nat_port\":24001,\"backend\":\"web\",\"backend_ip\":\"127.0.0."
        "1\","
        "\"backend_port\":9000,\"bytes_in\":0,\"bytes_out\":0}}",
        0, NULL);
    json_t *close = json_loads(
        "{\"event\":\"close\",\"time\":\"2026-11-27T16:21:26.000Z\",\"reason\":\"client_fin\","
        "\"session\":{\"id\":1,\"proto\":\"tcp\",\"client_ip\":\"127.0.0.2\",\"client_port\":40000,"
        "\"nat_ip\":\"127.0.0.1\",\"nat_port\":24001,\"backend\":\"web\",\"backend_ip\":\"127.0.0."
        "1\","
        "\"backend_port\":9000,\"bytes_in\":1229,\"bytes_out\":3565158}}",
        0, NULL);
    json_t *refuse = json_loads(
        "{\"event\":\"refuse\",\"time\":\"2026-11-27T16:21:27.000Z\",\"reason\":\"pool_exhausted\","
        "\"session\":{\"proto\":\"udp\",\"client_ip\":\"::1\",\"client_port\":5353,"
        "\"backend\":\"dns\",\"backend_ip\":\"::1\",\"backend_port\":53}}",
        0, NULL);
    json_t *health = json_loads(
        "{\"event\":\"health\",\"time\":\"2026-11-27T16:21:28.000Z\",\"backend\":\"web\","
        "\"server\":\"a\",\"old_state\":\"up\",\"new_state\":\"down\",\"why\":\"health check\"}",
        0, NULL);
    json_t *block = json_loads(
        "{\"event\":\"block_alloc\",\"time\":\"2026-11-27T16:21:29.000Z\",\"block\":{"
        "\"client_ip\":\"127.0.0.2\",\"nat_ip\":\"127.0.0.1\",\"nat_port\":20064,"
        "\"nat_port_last\":20127}}",
        0, NULL);
    json_t *junk = json_loads("{\"id\":1,\"ok\":true}", 0, NULL);

    cap_open(&c);
    cr_assert_eq(ctl_print_event(c.f, open), 0);
    cr_assert_eq(ctl_print_event(c.f, close), 0);
    cr_assert_eq(ctl_print_event(c.f, refuse), 0);
    cr_assert_eq(ctl_print_event(c.f, health), 0);
    cr_assert_eq(ctl_print_event(c.f, block), 0);
    cr_assert_eq(ctl_print_event(c.f, junk), -1);
    cap_check(&c, "2026-11-27T16:21:25.123Z open   tcp 127.0.0.2:40000 -> 127.0.0.1:24001 -> "
                  "web/127.0.0.1:9000\n"
                  "2026-11-27T16:21:26.000Z close  tcp 127.0.0.2:40000 -> 127.0.0.1:24001 -> "
                  "web/127.0.0.1:9000 client_fin in 1.2K out 3.4M\n"
                  "2026-11-27T16:21:27.000Z refuse udp [::1]:5353 -> dns/[::1]:53 pool_exhausted\n"
                  "2026-11-27T16:21:28.000Z health web/a up -> down (health check)\n"
                  "2026-11-27T16:21:29.000Z block_alloc 127.0.0.2 -> 127.0.0.1:20064-20127\n");
    json_decref(open);
    json_decref(close);
    json_decref(refuse);
    json_decref(health);
    json_decref(block);
    json_decref(junk);
}
