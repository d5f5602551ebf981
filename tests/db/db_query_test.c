/*
 * db_query_test.c - the read side: session filters, sorting and paging with
 * totals, whois at boundary times (a port reused by another client), the
 * log query, CSV and JSON-lines export, and the query plans.
 */
#include <errno.h>

#include "db/db_int.h"
#include "tests/db/db_helpers.h"

static struct tdir td;
static struct db_reader *rd;

/*
 * The fixture (times in ms after T0):
 *   1 tcp 10.0.0.1:1000  -> 192.0.2.1:20000 web  [1000, 5000) client_fin
 *   2 tcp 10.0.0.2:2000  -> 192.0.2.1:20000 web  [5000, open)            (port reused)
 *   3 udp 10.0.0.9:53    -> 192.0.2.1:20000 dns  [2000, 3000) timeout    (udp, same port)
 *   4 tcp 10.0.0.10:4000 -> 192.0.2.2:20500 api  [6000, open) established, 10/20 bytes
 *   5 tcp 10.0.1.1:5000  -> 192.0.2.2:20500 web  [6500, open)            (APDM: same port)
 *   6 tcp 2001:db8::1:6000 -> 192.0.2.1:21000 web [7000, 9000) backend_rst
 *   refuse tcp 10.0.0.1:1001 at 8000 (pool_exhausted)
 */
static void put(struct db *db, enum nat_event_type type, uint64_t id, uint8_t proto,
                const char *cip, uint16_t cport, const char *nip, uint16_t nport, uint64_t open_t,
                uint64_t t, const char *reason, const char *backend)
{
    struct nat_event ev = tev(type, id, proto, cip, cport, nip, nport, T0 + t, reason);
    ev.s.opened_at = T0 + open_t;
    cr_assert_eq(db_submit(db, &ev, backend), 0);
}

static void setup(void)
{
    char err[512];
    tdir_make(&td);
    struct db_options o = topts(td.path);
    struct db *db = topen(&o);
    put(db, NAT_EV_OPEN, 1, NAT_PROTO_TCP, "10.0.0.1", 1000, "192.0.2.1", 20000, 1000, 1000, NULL,
        "web");
    put(db, NAT_EV_OPEN, 3, NAT_PROTO_UDP, "10.0.0.9", 53, "192.0.2.1", 20000, 2000, 2000, NULL,
        "dns");
    put(db, NAT_EV_EXPIRE, 3, NAT_PROTO_UDP, "10.0.0.9", 53, "192.0.2.1", 20000, 2000, 3000,
        "timeout", "dns");
    put(db, NAT_EV_CLOSE, 1, NAT_PROTO_TCP, "10.0.0.1", 1000, "192.0.2.1", 20000, 1000, 5000,
        "client_fin", "web");
    put(db, NAT_EV_OPEN, 2, NAT_PROTO_TCP, "10.0.0.2", 2000, "192.0.2.1", 20000, 5000, 5000, NULL,
        "web");
    put(db, NAT_EV_OPEN, 4, NAT_PROTO_TCP, "10.0.0.10", 4000, "192.0.2.2", 20500, 6000, 6000, NULL,
        "api");
    put(db, NAT_EV_OPEN, 5, NAT_PROTO_TCP, "10.0.1.1", 5000, "192.0.2.2", 20500, 6500, 6500, NULL,
        "web");
    put(db, NAT_EV_OPEN, 6, NAT_PROTO_TCP, "2001:db8::1", 6000, "192.0.2.1", 21000, 7000, 7000,
        NULL, "web");
    put(db, NAT_EV_REFUSE, 0, NAT_PROTO_TCP, "10.0.0.1", 1001, NULL, 0, 8000, 8000,
        "pool_exhausted", "web");
    put(db, NAT_EV_CLOSE, 6, NAT_PROTO_TCP, "2001:db8::1", 6000, "192.0.2.1", 21000, 7000, 9000,
        "backend_rst", "web");
    struct nat_session s;
    memset(&s, 0, sizeof(s));
    s.id = 4;
    s.key.proto = NAT_PROTO_TCP;
    s.ext.addr = taddr("192.0.2.2");
    s.ext.port = 20500;
    s.last_seen = T0 + 6100;
    s.bytes_in = 10;
    s.bytes_out = 20;
    s.state = NAT_STATE_ESTABLISHED;
    cr_assert_eq(db_submit_update(db, &s), 0);
    cr_assert_eq(db_flush(db), 0);
    /* The reader opens while the writer is still there. */
    cr_assert_eq(db_reader_open(&rd, td.path, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(db_close(db), 0);
}

static void teardown(void)
{
    db_reader_close(rd);
    tdir_remove(&td);
}

TestSuite(db_query, .init = setup, .fini = teardown, .timeout = 60);

struct ids {
    char s[256];
};

static int ids_cb(void *arg, const struct db_session_row *r)
{
    struct ids *x = arg;
    size_t n = strlen(x->s);
    snprintf(x->s + n, sizeof(x->s) - n, "%s%llu", n > 0 ? "," : "", (unsigned long long)r->id);
    return 0;
}

/* Runs q and returns "id,id,..."; checks the total too. */
static const char *run(struct db_session_query *q, uint64_t want_total)
{
    static struct ids x;
    uint64_t total = 0;
    x.s[0] = '\0';
    int n = db_query_sessions(rd, q, ids_cb, &x, &total);
    cr_assert_geq(n, 0, "query failed: %s", db_reader_error(rd));
    cr_assert_eq(total, want_total, "total %llu for %s", (unsigned long long)total, x.s);
    return x.s;
}

Test(db_query, filters_each_field)
{
    struct db_session_query q;
    db_session_query_init(&q);
    cr_assert_str_eq(run(&q, 6), "1,2,3,4,5,6");
    q.proto = NAT_PROTO_UDP;
    cr_assert_str_eq(run(&q, 1), "3");
    db_session_query_init(&q);
    q.has_client = true;
    q.client = taddr("10.0.0.1");
    cr_assert_str_eq(run(&q, 1), "1");
    q.client = taddr("10.0.0.0");
    q.client_plen = 96 + 24; /* 10.0.0.0/24 */
    cr_assert_str_eq(run(&q, 4), "1,2,3,4");
    q.client_plen = 96 + 16;
    cr_assert_str_eq(run(&q, 5), "1,2,3,4,5");
    q.client = taddr("2001:db8::");
    q.client_plen = 32;
    cr_assert_str_eq(run(&q, 1), "6");
    db_session_query_init(&q);
    q.has_nat_ip = true;
    q.nat_ip = taddr("192.0.2.2");
    cr_assert_str_eq(run(&q, 2), "4,5");
    db_session_query_init(&q);
    q.nat_port_lo = 20000;
    q.nat_port_hi = 20500;
    cr_assert_str_eq(run(&q, 5), "1,2,3,4,5");
    q.nat_port_lo = 20001;
    cr_assert_str_eq(run(&q, 2), "4,5");
    db_session_query_init(&q);
    q.backend = "web";
    cr_assert_str_eq(run(&q, 4), "1,2,5,6");
    db_session_query_init(&q);
    q.open = DB_SESSIONS_OPEN;
    cr_assert_str_eq(run(&q, 3), "2,4,5");
    q.open = DB_SESSIONS_CLOSED;
    cr_assert_str_eq(run(&q, 3), "1,3,6");
    db_session_query_init(&q);
    q.state = NAT_STATE_ESTABLISHED;
    cr_assert_str_eq(run(&q, 1), "4");
    /* Alive at some moment of [4000, 6200]. */
    db_session_query_init(&q);
    q.has_since = q.has_until = true;
    q.since_ms = T0 + 4000;
    q.until_ms = T0 + 6200;
    cr_assert_str_eq(run(&q, 3), "1,2,4");
    /* Alive at some moment from 8000 on. */
    q.has_until = false;
    q.since_ms = T0 + 8000;
    cr_assert_str_eq(run(&q, 4), "2,4,5,6");
    /* Alive at 5000 (--at): 1 closed then and is gone, 2 opened then and is there,
     * as whois has it ([opened_at, closed_at)). */
    q.has_until = true;
    q.since_ms = q.until_ms = T0 + 5000;
    cr_assert_str_eq(run(&q, 1), "2");
    /* The epoch is a time like any other, not "unbounded". */
    q.since_ms = q.until_ms = 0;
    cr_assert_str_eq(run(&q, 0), "");
    /* Several filters at once. */
    db_session_query_init(&q);
    q.proto = NAT_PROTO_TCP;
    q.backend = "web";
    q.open = DB_SESSIONS_OPEN;
    cr_assert_str_eq(run(&q, 2), "2,5");
    q.backend = "nothing";
    cr_assert_str_eq(run(&q, 0), "");
}

Test(db_query, sorts_and_pages_with_totals)
{
    struct db_session_query q;
    db_session_query_init(&q);
    q.sort = "-id";
    cr_assert_str_eq(run(&q, 6), "6,5,4,3,2,1");
    q.sort = "client"; /* numerically: 10.0.0.9 before 10.0.0.10, IPv4 before IPv6 */
    cr_assert_str_eq(run(&q, 6), "1,2,3,4,5,6");
    q.sort = "-client";
    cr_assert_str_eq(run(&q, 6), "6,5,4,3,2,1");
    q.sort = "bytes_out";
    cr_assert_str_eq(run(&q, 6), "1,2,3,5,6,4");
    q.sort = "nat";
    cr_assert_str_eq(run(&q, 6), "1,2,3,6,4,5");
    q.sort = "-opened_at";
    q.limit = 2;
    cr_assert_str_eq(run(&q, 6), "6,5");
    q.offset = 2;
    cr_assert_str_eq(run(&q, 6), "4,2");
    q.offset = 10;
    cr_assert_str_eq(run(&q, 6), "");
    q.sort = "-bytes"; /* in + out, as the daemon's show nat sorts */
    q.offset = 0;
    q.limit = 2;
    cr_assert_str_eq(run(&q, 6), "4,6");
    q.sort = "bogus";
    cr_assert_eq(db_query_sessions(rd, &q, ids_cb, &(struct ids){{0}}, NULL), -EINVAL);
    q.sort = "id; DROP TABLE nat_sessions";
    cr_assert_eq(db_query_sessions(rd, &q, ids_cb, &(struct ids){{0}}, NULL), -EINVAL);
    for (size_t i = 0; db_session_sort_keys[i] != NULL; i++) {
        q.sort = db_session_sort_keys[i];
        q.offset = 0;
        q.limit = 0;
        cr_assert_eq(db_query_sessions(rd, &q, ids_cb, &(struct ids){{0}}, NULL), 6, "%s", q.sort);
    }
}

static int stop_after_two(void *arg, const struct db_session_row *r)
{
    (void)r;
    return ++*(int *)arg == 2;
}

Test(db_query, callback_can_stop_early)
{
    int seen = 0;
    cr_assert_eq(db_query_sessions(rd, NULL, stop_after_two, &seen, NULL), 2);
    cr_assert_eq(seen, 2);
}

Test(db_query, rows_carry_every_field)
{
    struct db_session_row out[2];
    struct nat_addr nip = taddr("192.0.2.2");
    cr_assert_eq(db_whois(rd, NAT_PROTO_TCP, &nip, 20500, T0 + 6200, out, 2), 1);
    const struct db_session_row *r = &out[0];
    cr_assert_eq(r->id, 4);
    cr_assert_eq(r->proto, NAT_PROTO_TCP);
    cr_assert_str_eq(r->proto_name, "tcp");
    cr_assert_str_eq(r->client_ip, "10.0.0.10");
    cr_assert_eq(r->client_port, 4000);
    cr_assert_str_eq(r->nat_ip, "192.0.2.2");
    cr_assert_eq(r->nat_port, 20500);
    cr_assert_str_eq(r->backend, "api");
    cr_assert_str_eq(r->backend_ip, "10.9.0.1");
    cr_assert_eq(r->backend_port, 80);
    cr_assert_str_eq(r->state, "established");
    cr_assert_str_eq(r->opened_at, "2026-11-27T16:00:06.000Z");
    cr_assert_eq(r->opened_at_ms, T0 + 6000);
    cr_assert_str_eq(r->last_seen, "2026-11-27T16:00:06.100Z");
    cr_assert_eq(r->last_seen_ms, T0 + 6100);
    cr_assert_str_eq(r->closed_at, "");
    cr_assert_eq(r->closed_at_ms, 0);
    cr_assert_str_eq(r->close_reason, "");
    cr_assert(r->open);
    cr_assert_eq(r->bytes_in, 10);
    cr_assert_eq(r->bytes_out, 20);
}

/* whois → "id,id" of the holders (latest opened first). */
static const char *who(uint8_t proto, const char *ip, uint16_t port, uint64_t t)
{
    static char s[64];
    struct db_session_row out[4];
    struct nat_addr a = taddr(ip);
    int n = db_whois(rd, proto, &a, port, t, out, 4);
    cr_assert_geq(n, 0, "%s", db_reader_error(rd));
    s[0] = '\0';
    for (int i = 0; i < n && i < 4; i++) {
        size_t l = strlen(s);
        snprintf(s + l, sizeof(s) - l, "%s%llu", i > 0 ? "," : "", (unsigned long long)out[i].id);
    }
    return s;
}

Test(db_query, whois_at_boundary_times)
{
    /* 192.0.2.1:20000/tcp: client 1 in [1000, 5000), then client 2 from 5000 on. */
    cr_assert_str_eq(who(NAT_PROTO_TCP, "192.0.2.1", 20000, T0 + 999), "");
    cr_assert_str_eq(who(NAT_PROTO_TCP, "192.0.2.1", 20000, T0 + 1000), "1");
    cr_assert_str_eq(who(NAT_PROTO_TCP, "192.0.2.1", 20000, T0 + 4999), "1");
    cr_assert_str_eq(who(NAT_PROTO_TCP, "192.0.2.1", 20000, T0 + 5000), "2");
    cr_assert_str_eq(who(NAT_PROTO_TCP, "192.0.2.1", 20000, T0 + 86400000), "2");
    /* The same port number on UDP is another thing. */
    cr_assert_str_eq(who(NAT_PROTO_UDP, "192.0.2.1", 20000, T0 + 2500), "3");
    cr_assert_str_eq(who(NAT_PROTO_UDP, "192.0.2.1", 20000, T0 + 3000), "");
    cr_assert_str_eq(who(0, "192.0.2.1", 20000, T0 + 2500), "3,1");
    /* Two holders at once (address-and-port-dependent mapping). */
    cr_assert_str_eq(who(NAT_PROTO_TCP, "192.0.2.2", 20500, T0 + 6000), "4");
    cr_assert_str_eq(who(NAT_PROTO_TCP, "192.0.2.2", 20500, T0 + 6500), "5,4");
    /* Another address, another port. */
    cr_assert_str_eq(who(NAT_PROTO_TCP, "192.0.2.2", 20000, T0 + 5000), "");
    cr_assert_str_eq(who(NAT_PROTO_TCP, "192.0.2.1", 21000, T0 + 8999), "6");
    cr_assert_str_eq(who(NAT_PROTO_TCP, "192.0.2.1", 21000, T0 + 9000), "");

    struct db_session_row one;
    struct nat_addr a = taddr("192.0.2.2");
    cr_assert_eq(db_whois(rd, 0, &a, 20500, T0 + 7000, &one, 1), 2, "counts all holders");
    cr_assert_eq(one.id, 5);
    cr_assert_eq(db_whois(rd, 0, &a, 20500, T0 + 7000, NULL, 0), 2);
    cr_assert_str_eq(one.client_ip, "10.0.1.1");
}

/* The plan of `sql` (EXPLAIN QUERY PLAN on a raw connection), steps joined by ';'. */
static void plan_of(const char *sql, char *plan, size_t n)
{
    sqlite3 *c = NULL;
    sqlite3_stmt *st = NULL;
    char q[2048];
    snprintf(q, sizeof(q), "EXPLAIN QUERY PLAN %s", sql);
    plan[0] = '\0';
    cr_assert_eq(sqlite3_open_v2(td.path, &c, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_prepare_v2(c, q, -1, &st, NULL), SQLITE_OK, "%s", sqlite3_errmsg(c));
    while (sqlite3_step(st) == SQLITE_ROW) {
        size_t l = strlen(plan);
        snprintf(plan + l, n - l, "%s;", (const char *)sqlite3_column_text(st, 3));
    }
    sqlite3_finalize(st);
    sqlite3_close(c);
}

/* The plans use the indexes and never scan a table. */
static void assert_plan_uses(const char *sql, const char *index)
{
    char plan[4096];
    plan_of(sql, plan, sizeof(plan));
    cr_assert(strstr(plan, index) != NULL, "plan \"%s\" does not use %s", plan, index);
    cr_assert(strstr(plan, "SCAN nat_") == NULL, "plan \"%s\" scans a table", plan);
}

Test(db_query, whois_queries_are_indexed)
{
    char sql[1400], plan[4096];
    /* db_whois's own statement, with and without the protocol: both halves
     * (open sessions, then closed ones by close-time bucket) search
     * nat_sessions_whois on both its columns. */
    for (int proto = 0; proto < 2; proto++) {
        db__whois_sql(sql, sizeof(sql), proto != 0);
        plan_of(sql, plan, sizeof(plan));
        cr_assert(strstr(plan, "SCAN nat_") == NULL, "plan \"%s\" scans a table", plan);
        const char *a = strstr(plan, "USING INDEX nat_sessions_whois (whois_key=? AND nat_port=?)");
        cr_assert_not_null(a, "plan \"%s\"", plan);
        cr_assert_not_null(
            strstr(a + 1, "USING INDEX nat_sessions_whois (whois_key=? AND nat_port=?)"),
            "plan \"%s\" searches the index once", plan);
    }
    assert_plan_uses("SELECT * FROM nat_events WHERE time >= '2026-11-27T16:00:05.000Z'"
                     " ORDER BY time LIMIT 10",
                     "nat_events_time");
}

struct evs {
    char s[512];
};

static int evs_cb(void *arg, const struct db_event_row *r)
{
    struct evs *x = arg;
    size_t n = strlen(x->s);
    snprintf(x->s + n, sizeof(x->s) - n, "%s%s/%llu", n > 0 ? "," : "", r->event,
             (unsigned long long)r->session_id);
    return 0;
}

static const char *log_of(struct db_event_query *q, uint64_t want_total)
{
    static struct evs x;
    uint64_t total = 0;
    x.s[0] = '\0';
    cr_assert_geq(db_query_events(rd, q, evs_cb, &x, &total), 0, "%s", db_reader_error(rd));
    cr_assert_eq(total, want_total, "total %llu: %s", (unsigned long long)total, x.s);
    return x.s;
}

Test(db_query, log_query_filters_and_orders)
{
    struct db_event_query q;
    db_event_query_init(&q);
    cr_assert_str_eq(log_of(&q, 10), "open/1,open/3,expire/3,close/1,open/2,open/4,open/5,"
                                     "open/6,refuse/0,close/6");
    q.event = "refuse";
    cr_assert_str_eq(log_of(&q, 1), "refuse/0");
    db_event_query_init(&q);
    q.session_id = 1;
    cr_assert_str_eq(log_of(&q, 2), "open/1,close/1");
    db_event_query_init(&q);
    q.desc = true;
    q.limit = 3;
    cr_assert_str_eq(log_of(&q, 10), "close/6,refuse/0,open/6");
    db_event_query_init(&q);
    q.has_since = q.has_until = true;
    q.since_ms = T0 + 3000;
    q.until_ms = T0 + 5000;
    cr_assert_str_eq(log_of(&q, 3), "expire/3,close/1,open/2");
    q.since_ms = q.until_ms = 0;
    cr_assert_str_eq(log_of(&q, 0), "");
    db_event_query_init(&q);
    q.has_nat_ip = true;
    q.nat_ip = taddr("192.0.2.1");
    q.nat_port_lo = q.nat_port_hi = 20000;
    q.proto = NAT_PROTO_TCP;
    cr_assert_str_eq(log_of(&q, 3), "open/1,close/1,open/2");
    db_event_query_init(&q);
    q.has_client = true;
    q.client = taddr("10.0.0.1");
    cr_assert_str_eq(log_of(&q, 3), "open/1,close/1,refuse/0");
}

/* Exports into a memory buffer; returns it (static). */
static const char *export(bool events, enum db_format fmt, const void *q)
{
    static char buf[8192];
    memset(buf, 0, sizeof(buf));
    FILE *f = fmemopen(buf, sizeof(buf) - 1, "w");
    cr_assert_not_null(f);
    int n = events ? db_export_events(rd, q, f, fmt) : db_export_sessions(rd, q, f, fmt);
    cr_assert_geq(n, 0, "%s", db_reader_error(rd));
    fclose(f);
    return buf;
}

Test(db_query, exports_sessions_as_csv_and_json_lines)
{
    struct db_session_query q;
    db_session_query_init(&q);
    q.sort = "id";
    q.limit = 2;
    q.offset = 0;
    q.has_client = true;
    q.client = taddr("10.0.0.0");
    q.client_plen = 120;
    q.proto = NAT_PROTO_TCP;
    cr_assert_str_eq(export(false, DB_FORMAT_CSV, &q),
                     "id,proto,client_ip,client_port,nat_ip,nat_port,backend,backend_ip,"
                     "backend_port,state,opened_at,last_seen,closed_at,close_reason,bytes_in,"
                     "bytes_out\r\n"
                     "1,tcp,10.0.0.1,1000,192.0.2.1,20000,web,10.9.0.1,80,closed,"
                     "2026-11-27T16:00:01.000Z,2026-11-27T16:00:05.000Z,"
                     "2026-11-27T16:00:05.000Z,client_fin,0,0\r\n"
                     "2,tcp,10.0.0.2,2000,192.0.2.1,20000,web,10.9.0.1,80,new,"
                     "2026-11-27T16:00:05.000Z,2026-11-27T16:00:05.000Z,,,0,0\r\n");
    cr_assert_str_eq(export(false, DB_FORMAT_JSONL, &q),
                     "{\"id\":1,\"proto\":\"tcp\",\"client_ip\":\"10.0.0.1\",\"client_port\":1000,"
                     "\"nat_ip\":\"192.0.2.1\",\"nat_port\":20000,\"backend\":\"web\","
                     "\"backend_ip\":\"10.9.0.1\",\"backend_port\":80,\"state\":\"closed\","
                     "\"opened_at\":\"2026-11-27T16:00:01.000Z\","
                     "\"last_seen\":\"2026-11-27T16:00:05.000Z\","
                     "\"closed_at\":\"2026-11-27T16:00:05.000Z\",\"close_reason\":\"client_fin\","
                     "\"bytes_in\":0,\"bytes_out\":0}\n"
                     "{\"id\":2,\"proto\":\"tcp\",\"client_ip\":\"10.0.0.2\",\"client_port\":2000,"
                     "\"nat_ip\":\"192.0.2.1\",\"nat_port\":20000,\"backend\":\"web\","
                     "\"backend_ip\":\"10.9.0.1\",\"backend_port\":80,\"state\":\"new\","
                     "\"opened_at\":\"2026-11-27T16:00:05.000Z\","
                     "\"last_seen\":\"2026-11-27T16:00:05.000Z\","
                     "\"closed_at\":null,\"close_reason\":null,\"bytes_in\":0,\"bytes_out\":0}\n");
    /* Everything, and an empty result writes nothing at all (not even a header). */
    const char *all = export(false, DB_FORMAT_JSONL, NULL);
    int lines = 0;
    for (const char *p = all; *p != '\0'; p++)
        lines += *p == '\n';
    cr_assert_eq(lines, 6);
    q.backend = "none";
    cr_assert_str_eq(export(false, DB_FORMAT_CSV, &q), "");
}

Test(db_query, exports_events_with_nulls)
{
    struct db_event_query q;
    db_event_query_init(&q);
    q.event = "refuse";
    cr_assert_str_eq(export(true, DB_FORMAT_JSONL, &q),
                     "{\"id\":9,\"time\":\"2026-11-27T16:00:08.000Z\",\"event\":\"refuse\","
                     "\"proto\":\"tcp\",\"client_ip\":\"10.0.0.1\",\"client_port\":1001,"
                     "\"nat_ip\":null,\"nat_port\":null,\"backend\":\"web\","
                     "\"backend_ip\":\"10.9.0.1\",\"backend_port\":80,\"session_id\":null,"
                     "\"reason\":\"pool_exhausted\",\"bytes_in\":null,\"bytes_out\":null,"
                     "\"nat_port_last\":null}\n");
    q.event = "expire";
    cr_assert_str_eq(export(true, DB_FORMAT_CSV, &q),
                     "id,time,event,proto,client_ip,client_port,nat_ip,nat_port,backend,"
                     "backend_ip,backend_port,session_id,reason,bytes_in,bytes_out,nat_port_last\r\n"
                     "3,2026-11-27T16:00:03.000Z,expire,udp,10.0.0.9,53,192.0.2.1,20000,dns,"
                     "10.9.0.1,80,3,timeout,0,0,\r\n");
}

Test(db_query, export_quotes_and_escapes_text)
{
    /* A backend name with a comma, a quote and a control character. */
    struct tdir t2;
    tdir_make(&t2);
    struct db_options o = topts(t2.path);
    struct db *db = topen(&o);
    struct nat_event ev =
        tev(NAT_EV_OPEN, 1, NAT_PROTO_TCP, "10.0.0.1", 1, "192.0.2.1", 20000, T0, NULL);
    cr_assert_eq(db_submit(db, &ev, "a,\"b\"\x01"), 0);
    cr_assert_eq(db_close(db), 0);
    struct db_reader *r2 = NULL;
    char err[256];
    cr_assert_eq(db_reader_open(&r2, t2.path, err, sizeof(err)), 0);
    char buf[2048] = "";
    FILE *f = fmemopen(buf, sizeof(buf) - 1, "w");
    cr_assert_eq(db_export_sessions(r2, NULL, f, DB_FORMAT_CSV), 1);
    fclose(f);
    cr_assert(strstr(buf, ",\"a,\"\"b\"\"\x01\",") != NULL, "%s", buf);
    memset(buf, 0, sizeof(buf));
    f = fmemopen(buf, sizeof(buf) - 1, "w");
    cr_assert_eq(db_export_sessions(r2, NULL, f, DB_FORMAT_JSONL), 1);
    fclose(f);
    cr_assert(strstr(buf, "\"backend\":\"a,\\\"b\\\"\\u0001\"") != NULL, "%s", buf);
    db_reader_close(r2);
    tdir_remove(&t2);
}

static int backend_cb(void *arg, const struct db_session_row *r)
{
    struct ids *x = arg;
    size_t n = strlen(x->s);
    snprintf(x->s + n, sizeof(x->s) - n, "%s%s", n > 0 ? "|" : "", r->backend);
    return 0;
}

/* Text edited by hand into the store that is not UTF-8 reads back with '?'
 * for each bad byte (tables and JSON get valid text); valid UTF-8 is kept. */
Test(db_query, text_that_is_not_utf8_reads_as_question_marks)
{
    texec(td.path, "UPDATE nat_sessions SET backend = CAST(X'77FF62' AS TEXT) WHERE id = 1;"
                   "UPDATE nat_sessions SET backend = CAST(X'77C3A962' AS TEXT) WHERE id = 2;"
                   "UPDATE nat_sessions SET backend = CAST(X'77C3' AS TEXT) WHERE id = 3;"
                   "UPDATE nat_sessions SET backend = CAST(X'EDA080C0AF' AS TEXT) WHERE id = 4;");
    struct db_session_query q;
    db_session_query_init(&q);
    q.limit = 4;
    struct ids x = {{0}};
    cr_assert_eq(db_query_sessions(rd, &q, backend_cb, &x, NULL), 4);
    /* a stray byte; "wéb"; a cut sequence; a surrogate and an overlong '/' */
    cr_assert_str_eq(x.s, "w?b|w\xc3\xa9"
                          "b|w?|?????");
}

/*
 * Whois by the bucketed index gives exactly what a plain scan gives, for
 * sessions of every length (0 ms to 40 days, i.e. every level of whois_key),
 * sharing ports and addresses, at the edges of their lifetimes, still open,
 * and after a restart closed the open ones (whois_key set by SQL there).
 */
Test(db_query, whois_matches_a_plain_scan_for_every_session_length)
{
    static const uint64_t lens[] = {0,       1,       999,       1000,     1001,
                                    1999,    2000,    2001,      65535,    3600000,
                                    86400005ULL, 3 * 86400000ULL, 40 * 86400000ULL};
    const size_t nl = sizeof(lens) / sizeof(lens[0]);
    struct tdir t2;
    tdir_make(&t2);
    struct db_options o = topts(t2.path);
    struct db *db = topen(&o);
    uint64_t opened[64], closed[64];
    uint8_t protos[64];
    const char *ips[64];
    uint16_t ports[64];
    size_t n = 0;
    for (size_t i = 0; i < 2 * nl; i++, n++) {
        uint64_t id = n + 1;
        ips[n] = i % 3 == 0 ? "192.0.2.2" : "192.0.2.1";
        ports[n] = (uint16_t)(20000 + i % 2);
        protos[n] = i % 4 == 3 ? NAT_PROTO_UDP : NAT_PROTO_TCP;
        opened[n] = T0 + i * 1700 + (i % 3) * 333;
        closed[n] = opened[n] + lens[i % nl];
        struct nat_event ev = tev(NAT_EV_OPEN, id, protos[n], "10.0.0.1", (uint16_t)(1000 + i),
                                  ips[n], ports[n], opened[n], NULL);
        cr_assert_eq(db_submit(db, &ev, "web"), 0);
        if (i % 9 == 8) {
            closed[n] = 0; /* left open */
            continue;
        }
        ev.type = NAT_EV_CLOSE;
        ev.reason = "client_fin";
        ev.time = closed[n];
        ev.s.last_seen = closed[n];
        cr_assert_eq(db_submit(db, &ev, "web"), 0);
        if (i % 5 == 0)
            cr_assert_eq(db_flush(db), 0); /* some closes in a later batch than their open */
    }
    cr_assert_eq(db_flush(db), 0);

    char want[256], got[256];
    unsigned asked = 0, found = 0;
    for (int pass = 0; pass < 2; pass++) {
        struct db_reader *r = NULL;
        char err[512];
        cr_assert_eq(db_reader_open(&r, t2.path, err, sizeof(err)), 0, "%s", err);
        for (size_t s = 0; s < n; s++) {
            uint64_t end = closed[s] != 0 ? closed[s] : opened[s] + 500;
            uint64_t at[] = {opened[s] - 1, opened[s],         opened[s] + 1,
                             (opened[s] + end) / 2, end - 1,   end,
                             end + 1,       end / 1000 * 1000, end / 1000 * 1000 + 999};
            for (size_t k = 0; k < sizeof(at) / sizeof(at[0]); k++) {
                for (int p = 0; p < 2; p++) {
                    uint8_t proto = p == 0 ? 0 : protos[s];
                    tscan_whois(t2.path, proto, ips[s], ports[s], at[k], want, sizeof(want));
                    twhois(r, proto, ips[s], ports[s], at[k], got, sizeof(got));
                    cr_assert_str_eq(got, want, "session %zu, %s:%u proto %u at T0+%llu", s + 1,
                                     ips[s], ports[s], proto, (unsigned long long)(at[k] - T0));
                    asked++;
                    found += want[0] != '\0';
                }
            }
        }
        db_reader_close(r);
        if (pass == 0) {
            /* A restart closes the open sessions (at the latest time stored). */
            cr_assert_eq(db_close(db), 0);
            db = topen(&o);
            cr_assert_eq(db_restart_closed(db), 2);
        }
    }
    cr_assert_eq(db_close(db), 0);
    cr_assert_eq(tquery_int(t2.path, "SELECT count(*) FROM nat_sessions WHERE whois_key IS NULL"),
                 0);
    cr_assert_gt(found, asked / 3, "too few questions had an answer (%u of %u)", found, asked);
    tdir_remove(&t2);
}

/*
 * Whois by port block. The store (times in ms after T0, nat ip 192.0.2.7
 * unless said):
 *   20000-20063 10.1.0.1 [1000, 5000)      then 10.1.0.2 [5000, 9000)
 *   20064-20127 10.1.0.3 [2000, 9500)      freed by a restart ("restart")
 *   20000-20127 10.1.0.4 [10000, held)     the next run: 128-port blocks
 *   192.0.2.8: 20000-20063 10.2.0.1 [1000, held)
 *   a flow's open row at 500, before any block
 */
static void block_store(struct tdir *t)
{
    tdir_make(t);
    struct db_options o = topts(t->path);
    struct db *db = topen(&o);
    put(db, NAT_EV_OPEN, 1, NAT_PROTO_TCP, "10.0.0.1", 1000, "192.0.2.7", 25000, 500, 500, NULL,
        "web");
    struct nat_event ev[] = {
        block_ev(NAT_EV_BLOCK_ALLOC, "10.1.0.1", "192.0.2.7", 20000, T0 + 1000),
        block_ev(NAT_EV_BLOCK_ALLOC, "10.2.0.1", "192.0.2.8", 20000, T0 + 1000),
        block_ev(NAT_EV_BLOCK_ALLOC, "10.1.0.3", "192.0.2.7", 20064, T0 + 2000),
        block_ev(NAT_EV_BLOCK_FREE, "10.1.0.1", "192.0.2.7", 20000, T0 + 5000),
        block_ev(NAT_EV_BLOCK_ALLOC, "10.1.0.2", "192.0.2.7", 20000, T0 + 5000),
        block_ev(NAT_EV_BLOCK_FREE, "10.1.0.2", "192.0.2.7", 20000, T0 + 9000),
        block_ev(NAT_EV_BLOCK_FREE, "10.1.0.3", "192.0.2.7", 20064, T0 + 9500),
        block_ev(NAT_EV_BLOCK_ALLOC, "10.1.0.4", "192.0.2.7", 20000, T0 + 10000),
    };
    ev[6].reason = "restart";
    ev[7].port_last = 20127;
    for (size_t i = 0; i < sizeof(ev) / sizeof(ev[0]); i++)
        cr_assert_eq(db_submit(db, &ev[i], ""), 0);
    cr_assert_eq(db_close(db), 0);
}

/* "client,lo-last,freed_at,reason" of the block holding ip:port at T0 + t, or "-". */
static const char *twhois_block(struct db_reader *r, const char *ip, uint16_t port, uint64_t t,
                                char *buf, size_t len)
{
    struct db_block_hold b;
    struct nat_addr a = taddr(ip);
    int rc = db_whois_block(r, &a, port, T0 + t, &b);
    cr_assert_geq(rc, 0, "%s", db_reader_error(r));
    if (rc == 0)
        snprintf(buf, len, "-");
    else
        snprintf(buf, len, "%s,%u-%u,%s,%s", b.alloc.client_ip, (unsigned)b.alloc.nat_port,
                 (unsigned)b.alloc.nat_port_last, b.freed_at[0] ? b.freed_at : "held",
                 b.free_reason[0] ? b.free_reason : "-");
    return buf;
}

Test(db_query, whois_block_finds_the_block_held_at_a_time)
{
    struct tdir t;
    struct db_reader *r;
    char err[256], b[256];
    block_store(&t);
    cr_assert_eq(db_reader_open(&r, t.path, err, sizeof(err)), 0, "%s", err);
    static const struct {
        const char *ip;
        uint16_t port;
        uint64_t t;
        const char *want;
    } cases[] = {
        {"192.0.2.7", 20010, 500, "-"}, /* logged, but no block yet */
        {"192.0.2.7", 20010, 999, "-"},
        {"192.0.2.7", 20010, 1000, "10.1.0.1,20000-20063,2026-11-27T16:00:05.000Z,-"},
        {"192.0.2.7", 20063, 4999, "10.1.0.1,20000-20063,2026-11-27T16:00:05.000Z,-"},
        /* given back and taken by another at the same ms: the new holder */
        {"192.0.2.7", 20000, 5000, "10.1.0.2,20000-20063,2026-11-27T16:00:09.000Z,-"},
        {"192.0.2.7", 20010, 9000, "-"}, /* the hold is [alloc, free) */
        {"192.0.2.7", 20100, 3000, "10.1.0.3,20064-20127,2026-11-27T16:00:09.500Z,restart"},
        {"192.0.2.7", 20100, 9500, "-"},
        /* the next run's bigger block, found past the old layout's start 20064 */
        {"192.0.2.7", 20100, 10000, "10.1.0.4,20000-20127,held,-"},
        {"192.0.2.7", 20010, 99999, "10.1.0.4,20000-20127,held,-"},
        {"192.0.2.7", 20200, 10000, "-"}, /* in no block */
        {"192.0.2.7", 19999, 10000, "-"}, /* below every block */
        {"192.0.2.8", 20010, 2000, "10.2.0.1,20000-20063,held,-"},
        {"192.0.2.9", 20010, 2000, "-"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        cr_assert_str_eq(twhois_block(r, cases[i].ip, cases[i].port, cases[i].t, b, sizeof(b)),
                         cases[i].want, "%s:%u at T0+%llu", cases[i].ip, (unsigned)cases[i].port,
                         (unsigned long long)cases[i].t);
    db_reader_close(r);
    tdir_remove(&t);
}

Test(db_query, whois_block_queries_are_indexed)
{
    char sql[600];
    db__whois_block_sql(0, sql, sizeof(sql));
    assert_plan_uses(sql, "nat_events_time");
    for (int i = 1; i < 4; i++) {
        db__whois_block_sql(i, sql, sizeof(sql));
        assert_plan_uses(sql, "nat_events_blocks (nat_ip=? AND nat_port");
    }
}

/* "event:client:lo" of every log row q matches, in order. */
static int blk_cb(void *arg, const struct db_event_row *r)
{
    struct evs *x = arg;
    size_t n = strlen(x->s);
    snprintf(x->s + n, sizeof(x->s) - n, "%s%s:%s:%u", n > 0 ? "," : "", r->event, r->client_ip,
             (unsigned)r->nat_port);
    return 0;
}

/* In the log, a block row matches a NAT port filter its range overlaps, and
 * every protocol (it is 'any'). */
Test(db_query, log_filters_match_block_rows_by_their_range)
{
    struct tdir t;
    struct db_reader *r;
    char err[256];
    struct evs x;
    block_store(&t);
    cr_assert_eq(db_reader_open(&r, t.path, err, sizeof(err)), 0, "%s", err);
    struct db_event_query q;
    db_event_query_init(&q);
    q.has_nat_ip = true;
    q.nat_ip = taddr("192.0.2.7");
    q.nat_port_lo = q.nat_port_hi = 20100; /* in 20064-20127 and 20000-20127 */
    q.proto = NAT_PROTO_TCP;
    x.s[0] = '\0';
    uint64_t total = 0;
    cr_assert_geq(db_query_events(r, &q, blk_cb, &x, &total), 0, "%s", db_reader_error(r));
    cr_assert_str_eq(x.s, "block_alloc:10.1.0.3:20064,block_free:10.1.0.3:20064,"
                          "block_alloc:10.1.0.4:20000");
    cr_assert_eq(total, 3);
    /* a range that reaches into the blocks starting at 20000 only */
    q.nat_port_lo = 19000;
    q.nat_port_hi = 20000;
    x.s[0] = '\0';
    cr_assert_geq(db_query_events(r, &q, blk_cb, &x, &total), 0, "%s", db_reader_error(r));
    cr_assert_str_eq(x.s, "block_alloc:10.1.0.1:20000,block_free:10.1.0.1:20000,"
                          "block_alloc:10.1.0.2:20000,block_free:10.1.0.2:20000,"
                          "block_alloc:10.1.0.4:20000");
    q.nat_port_lo = q.nat_port_hi = 25000;
    q.proto = NAT_PROTO_UDP; /* the flow there is tcp */
    x.s[0] = '\0';
    cr_assert_geq(db_query_events(r, &q, blk_cb, &x, &total), 0, "%s", db_reader_error(r));
    cr_assert_str_eq(x.s, "");
    q.proto = NAT_PROTO_TCP;
    x.s[0] = '\0';
    cr_assert_geq(db_query_events(r, &q, blk_cb, &x, &total), 0, "%s", db_reader_error(r));
    cr_assert_str_eq(x.s, "open:10.0.0.1:25000");
    /* event "block": both block kinds, nothing else */
    db_event_query_init(&q);
    q.event = "block";
    q.has_client = true;
    q.client = taddr("10.1.0.1");
    q.client_plen = 128;
    x.s[0] = '\0';
    cr_assert_geq(db_query_events(r, &q, blk_cb, &x, &total), 0, "%s", db_reader_error(r));
    cr_assert_str_eq(x.s, "block_alloc:10.1.0.1:20000,block_free:10.1.0.1:20000");
    db_reader_close(r);
    tdir_remove(&t);
}
