/*
 * db_writer_test.c - the write-behind path: what gets written, batching, the
 * bound and drop counting, failures (locked, full, read-only, file size
 * limit) and recovery, restart, updates, pruning, a reader during writes.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "tests/db/db_helpers.h"

static struct tdir td;

static void setup(void)
{
    tdir_make(&td);
}

static void teardown(void)
{
    tdir_remove(&td);
}

TestSuite(db_writer, .init = setup, .fini = teardown, .timeout = 120);

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static uint64_t refusals; /* -ENOBUFS seen by submit_retry */

/* Submits, retrying (bounded) while the queue is full. */
static void submit_retry(struct db *db, const struct nat_event *ev, const char *backend)
{
    for (int i = 0; i < 100000; i++) {
        int rc = db_submit(db, ev, backend);
        if (rc == 0)
            return;
        cr_assert_eq(rc, -ENOBUFS);
        __atomic_add_fetch(&refusals, 1, __ATOMIC_RELAXED);
        sleep_ms(1);
    }
    cr_assert_fail("queue never drained");
}

/* Opens and closes session i (client 10.1.x.y, nat port 20000 + i % 10000). */
static void open_close(struct db *db, uint64_t id, bool close)
{
    char cip[32];
    snprintf(cip, sizeof(cip), "10.1.%u.%u", (unsigned)(id / 250 % 250), (unsigned)(id % 250));
    uint16_t nport = (uint16_t)(20000 + id % 10000);
    struct nat_event ev =
        tev(NAT_EV_OPEN, id, NAT_PROTO_TCP, cip, 40000, "192.0.2.1", nport, T0 + id, NULL);
    submit_retry(db, &ev, "web");
    if (close) {
        ev = tev(NAT_EV_CLOSE, id, NAT_PROTO_TCP, cip, 40000, "192.0.2.1", nport, T0 + id + 500,
                 "client_fin");
        ev.s.opened_at = T0 + id;
        ev.s.bytes_in = id;
        ev.s.bytes_out = 2 * id;
        submit_retry(db, &ev, "web");
    }
}

Test(db_writer, fresh_store_has_schema_version_and_wal)
{
    struct db_options o = topts(td.path);
    struct db *db = topen(&o);
    cr_assert_eq(db_max_session_id(db), 0);
    cr_assert_eq(db_restart_closed(db), 0);
    cr_assert_eq(db_close(db), 0);
    char buf[64];
    cr_assert_eq(tquery_int(td.path, "PRAGMA user_version"), DB_SCHEMA_VERSION);
    cr_assert_eq(tquery_int(td.path, "PRAGMA application_id"), DB_APPLICATION_ID);
    cr_assert_str_eq(tquery_text(td.path, "PRAGMA journal_mode", buf, sizeof(buf)), "wal");
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM sqlite_master WHERE type='table'"
                                     " AND name IN ('nat_sessions','nat_events')"),
                 2);
    cr_assert_eq(db_close(NULL), 0);
}

Test(db_writer, rejects_bad_options)
{
    struct db_options o = topts(td.path);
    struct db *db = NULL;
    char err[256] = "";
    o.queue_capacity = 0;
    cr_assert_eq(db_open(&db, &o, err, sizeof(err)), -EINVAL);
    cr_assert_null(db);
    o = topts(NULL);
    cr_assert_eq(db_open(&db, &o, err, sizeof(err)), -EINVAL);
    o = topts(td.path);
    o.flush_ms = 101;
    cr_assert_eq(db_open(&db, &o, err, sizeof(err)), -EINVAL);
    o = topts(td.path);
    o.thread_nice = 20;
    cr_assert_eq(db_open(&db, &o, err, sizeof(err)), -EINVAL);
    cr_assert_eq(access(td.path, F_OK), -1, "a refused open created the file");
}

Test(db_writer, writes_every_column_of_open_close_refuse)
{
    struct db_options o = topts(td.path);
    struct db *db = topen(&o);
    struct nat_event ev =
        tev(NAT_EV_OPEN, 7, NAT_PROTO_UDP, "10.0.0.5", 5353, "192.0.2.9", 20007, T0 + 1, NULL);
    cr_assert_eq(db_submit(db, &ev, "dns"), 0);
    ev.type = NAT_EV_EXPIRE;
    ev.time = T0 + 300001;
    ev.reason = "timeout";
    ev.s.last_seen = T0 + 1001;
    ev.s.bytes_in = 120;
    ev.s.bytes_out = 4800;
    ev.s.state = NAT_STATE_ESTABLISHED;
    cr_assert_eq(db_submit(db, &ev, "dns"), 0);
    ev = tev(NAT_EV_REFUSE, 0, NAT_PROTO_TCP, "2001:db8::1", 1234, NULL, 0, T0 + 2,
             "pool_exhausted");
    cr_assert_eq(db_submit(db, &ev, "web"), 0);
    cr_assert_eq(db_flush(db), 0);
    cr_assert_eq(db_close(db), 0);

    char b[512];
    tquery_text(td.path,
                "SELECT id||'|'||proto||'|'||client_ip||'|'||client_port||'|'||nat_ip||'|'||"
                "nat_port||'|'||backend||'|'||backend_ip||'|'||backend_port||'|'||state||'|'||"
                "opened_at||'|'||last_seen||'|'||closed_at||'|'||close_reason||'|'||bytes_in||"
                "'|'||bytes_out FROM nat_sessions",
                b, sizeof(b));
    cr_assert_str_eq(b, "7|udp|10.0.0.5|5353|192.0.2.9|20007|dns|10.9.0.1|80|closed|"
                        "2026-11-27T16:00:00.001Z|2026-11-27T16:05:00.001Z|"
                        "2026-11-27T16:05:00.001Z|timeout|120|4800");
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_sessions"), 1);
    tquery_text(td.path,
                "SELECT group_concat(event||','||time||','||coalesce(reason,'-')||','||"
                "coalesce(session_id,'-')||','||coalesce(nat_ip,'-')||','||"
                "coalesce(nat_port,'-')||','||client_ip||','||backend||','||"
                "coalesce(bytes_in,'-')||','||coalesce(bytes_out,'-'), ';') FROM "
                "(SELECT * FROM nat_events ORDER BY id)",
                b, sizeof(b));
    cr_assert_str_eq(b, "open,2026-11-27T16:00:00.001Z,-,7,192.0.2.9,20007,10.0.0.5,dns,-,-;"
                        "expire,2026-11-27T16:05:00.001Z,timeout,7,192.0.2.9,20007,10.0.0.5,"
                        "dns,120,4800;"
                        "refuse,2026-11-27T16:00:00.002Z,pool_exhausted,-,-,-,2001:db8::1,web,"
                        "-,-");
}

Test(db_writer, clean_shutdown_loses_nothing)
{
    struct db_options o = topts(td.path);
    o.queue_capacity = 4096;
    struct db *db = topen(&o);
    const uint64_t n = 30000;
    for (uint64_t id = 1; id <= n; id++)
        open_close(db, id, id % 3 != 0);
    struct db_stats st;
    db_get_stats(db, &st);
    cr_assert_eq(st.dropped, refusals, "each refusal is counted once");
    cr_assert_eq(st.submitted, n + n - n / 3);
    cr_assert_eq(db_close(db), 0); /* no db_flush: close must flush */
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_events"), (int64_t)(2 * n - n / 3));
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_sessions"), (int64_t)n);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_sessions WHERE closed_at IS NULL"),
                 (int64_t)(n / 3));
    cr_assert_eq(tquery_int(td.path, "SELECT sum(bytes_out) FROM nat_sessions"),
                 (int64_t)(2 * (n * (n + 1) / 2 - 3 * (n / 3) * (n / 3 + 1) / 2)));
}

Test(db_writer, commits_in_batches_and_flushes_when_idle)
{
    struct db_options o = topts(td.path);
    o.batch_max = 1000;
    o.flush_ms = 20;
    struct db *db = topen(&o);
    for (uint64_t id = 1; id <= 10000; id++)
        open_close(db, id, false);
    cr_assert_eq(db_flush(db), 0);
    struct db_stats st;
    db_get_stats(db, &st);
    cr_assert_eq(st.written, 10000);
    cr_assert_geq(st.batches, 10, "a batch holds at most batch_max records");
    cr_assert_leq(st.batches, 1000, "%llu transactions for 10000 records",
                  (unsigned long long)st.batches);

    /* Idle: one more event reaches the file without db_flush. */
    uint64_t before = st.batches;
    open_close(db, 10001, false);
    int64_t rows = 0;
    for (int i = 0; i < 500 && rows != 10001; i++) {
        sleep_ms(10);
        rows = tquery_int(td.path, "SELECT count(*) FROM nat_sessions");
    }
    cr_assert_eq(rows, 10001, "the last event was not written while idle");
    db_get_stats(db, &st);
    cr_assert_eq(st.batches, before + 1);
    cr_assert_eq(db_close(db), 0);
}

/* Holds the write lock from another connection. */
static sqlite3 *lock_store(const char *path)
{
    sqlite3 *c = NULL;
    cr_assert_eq(sqlite3_open(path, &c), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(c, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    return c;
}

static void wait_errors(struct db *db, uint64_t n)
{
    struct db_stats st;
    for (int i = 0; i < 1000; i++) {
        db_get_stats(db, &st);
        if (st.errors >= n)
            return;
        sleep_ms(5);
    }
    cr_assert_fail("the writer never failed");
}

/* Flushes until it succeeds (the writer retries on its own). */
static void flush_until_ok(struct db *db)
{
    for (int i = 0; i < 200; i++)
        if (db_flush(db) == 0)
            return;
    cr_assert_fail("the store never recovered");
}

Test(db_writer, bound_drops_and_counts_then_recovers_when_unlocked)
{
    struct db_options o = topts(td.path);
    o.queue_capacity = 1024;
    o.busy_timeout_ms = 5;
    o.retry_ms = 20;
    struct db *db = topen(&o);
    char msg[DB_ERR_MAX];
    sqlite3 *locker = lock_store(td.path);

    open_close(db, 1, false);
    wait_errors(db, 1); /* the writer holds record 1 and retries */
    int refused = 0;
    for (uint64_t id = 2; id <= 1 + 1024 + 500; id++) {
        struct nat_event ev = tev(NAT_EV_OPEN, id, NAT_PROTO_TCP, "10.0.0.1", 1000, "192.0.2.1",
                                  (uint16_t)(20000 + id), T0 + id, NULL);
        int rc = db_submit(db, &ev, "web");
        cr_assert(rc == 0 || rc == -ENOBUFS);
        refused += rc == -ENOBUFS;
    }
    cr_assert_eq(refused, 500);
    struct db_stats st;
    db_get_stats(db, &st);
    cr_assert_eq(st.dropped, 500);
    cr_assert_eq(st.submitted, 1025);
    cr_assert_eq(st.queue_depth, 1025);
    cr_assert_eq(st.queue_capacity, 1024);
    cr_assert(st.degraded);
    cr_assert_eq(st.episodes, 1);
    cr_assert_eq(db_flush(db), -EBUSY);

    cr_assert_eq(db_status_poll(db, msg, sizeof(msg)), DB_STATUS_FAILING);
    cr_assert(strstr(msg, "locked") != NULL, "%s", msg);
    wait_errors(db, st.errors + 3);
    cr_assert_eq(db_status_poll(db, msg, sizeof(msg)), DB_STATUS_SAME, "reported twice");

    sqlite3_exec(locker, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(locker);
    flush_until_ok(db);
    db_get_stats(db, &st);
    cr_assert_eq(st.written, 1025);
    cr_assert_eq(st.queue_depth, 0);
    cr_assert_not(st.degraded);
    cr_assert_eq(st.episodes, 1);
    cr_assert_eq(db_status_poll(db, msg, sizeof(msg)), DB_STATUS_RECOVERED);
    cr_assert(strstr(msg, "500 records dropped") != NULL, "%s", msg);
    cr_assert_eq(db_status_poll(db, msg, sizeof(msg)), DB_STATUS_SAME);

    /* Writing goes on normally afterwards. */
    open_close(db, 5000, true);
    cr_assert_eq(db_flush(db), 0);
    cr_assert_eq(db_close(db), 0);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_sessions"), 1026);
    cr_assert_eq(tquery_int(td.path, "SELECT max(id) FROM nat_sessions WHERE id < 5000"), 1025);
}

Test(db_writer, full_disk_via_max_page_count_then_recovers)
{
    struct db_options o = topts(td.path);
    o.retry_ms = 20;
    struct db *db = topen(&o);
    char err[256], msg[DB_ERR_MAX], sql[128];
    for (uint64_t id = 1; id <= 100; id++)
        open_close(db, id, true);
    cr_assert_eq(db_flush(db), 0);
    int64_t pages = tquery_int(td.path, "PRAGMA page_count");
    snprintf(sql, sizeof(sql), "PRAGMA max_page_count = %lld", (long long)pages);
    cr_assert_eq(db_writer_exec(db, sql, err, sizeof(err)), 0, "%s", err);

    for (uint64_t id = 101; id <= 5100; id++)
        open_close(db, id, true);
    cr_assert_eq(db_flush(db), -ENOSPC);
    cr_assert_eq(db_status_poll(db, msg, sizeof(msg)), DB_STATUS_FAILING);
    cr_assert(strstr(msg, "full") != NULL, "%s", msg);
    struct db_stats st;
    db_get_stats(db, &st);
    cr_assert(st.degraded);
    cr_assert(strstr(st.last_error, "full") != NULL, "%s", st.last_error);

    cr_assert_eq(db_writer_exec(db, "PRAGMA max_page_count = 1073741823", err, sizeof(err)), 0);
    flush_until_ok(db);
    cr_assert_eq(db_status_poll(db, msg, sizeof(msg)), DB_STATUS_RECOVERED);
    db_get_stats(db, &st);
    cr_assert_eq(st.dropped, 0);
    cr_assert_eq(st.written, 2 * 5100);
    cr_assert_eq(db_close(db), 0);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_events"), 2 * 5100);
}

Test(db_writer, read_only_store_then_recovers)
{
    struct db_options o = topts(td.path);
    o.retry_ms = 20;
    struct db *db = topen(&o);
    char err[256], msg[DB_ERR_MAX];
    cr_assert_eq(db_writer_exec(db, "PRAGMA query_only = 1", err, sizeof(err)), 0);
    for (uint64_t id = 1; id <= 50; id++)
        open_close(db, id, true);
    cr_assert_eq(db_flush(db), -EROFS);
    cr_assert_eq(db_status_poll(db, msg, sizeof(msg)), DB_STATUS_FAILING);
    cr_assert(strstr(msg, "readonly") != NULL || strstr(msg, "read-only") != NULL, "%s", msg);
    cr_assert_eq(db_writer_exec(db, "PRAGMA query_only = 0", err, sizeof(err)), 0);
    flush_until_ok(db);
    cr_assert_eq(db_status_poll(db, msg, sizeof(msg)), DB_STATUS_RECOVERED);
    cr_assert_eq(db_close(db), 0);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_events"), 100);
}

Test(db_writer, file_size_limit_io_error_then_recovers)
{
    struct db_options o = topts(td.path);
    o.retry_ms = 20;
    struct db *db = topen(&o);
    char err[256], msg[DB_ERR_MAX];
    struct rlimit old, lim;
    struct stat sb;

    open_close(db, 1, true);
    cr_assert_eq(db_flush(db), 0);
    cr_assert_eq(db_writer_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", err, sizeof(err)), 0);
    cr_assert_eq(stat(td.path, &sb), 0);
    signal(SIGXFSZ, SIG_IGN);
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = (rlim_t)sb.st_size; /* no file may grow past the store's size now */
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);

    for (uint64_t id = 2; id <= 3000; id++)
        open_close(db, id, true);
    int rc = db_flush(db);
    cr_assert(rc == -EIO || rc == -ENOSPC, "flush gave %d", rc);
    cr_assert_eq(db_status_poll(db, msg, sizeof(msg)), DB_STATUS_FAILING);

    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    flush_until_ok(db);
    cr_assert_eq(db_status_poll(db, msg, sizeof(msg)), DB_STATUS_RECOVERED);
    cr_assert_eq(db_close(db), 0);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_events"), 6000);
    char b[32];
    cr_assert_str_eq(tquery_text(td.path, "PRAGMA integrity_check", b, sizeof(b)), "ok");
}

Test(db_writer, close_gives_up_after_timeout_and_counts)
{
    struct db_options o = topts(td.path);
    o.retry_ms = 10;
    o.close_timeout_ms = 200;
    o.busy_timeout_ms = 5;
    struct db *db = topen(&o);
    sqlite3 *locker = lock_store(td.path);
    for (uint64_t id = 1; id <= 10; id++)
        open_close(db, id, false);
    cr_assert_eq(db_close(db), -EBUSY);
    sqlite3_exec(locker, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(locker);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_events"), 0);
}

Test(db_writer, restart_closes_leftovers_and_reports_max_id)
{
    struct db_options o = topts(td.path);
    struct db *db = topen(&o);
    open_close(db, 1, false);
    open_close(db, 2, true); /* closed at T0 + 502 */
    open_close(db, 3, false);
    struct nat_session s;
    memset(&s, 0, sizeof(s));
    s.id = 3;
    s.key.proto = NAT_PROTO_TCP;
    s.ext.addr = taddr("192.0.2.1");
    s.ext.port = 20003;
    s.last_seen = T0 + 9000;
    s.bytes_in = 11;
    s.bytes_out = 22;
    s.state = NAT_STATE_ESTABLISHED;
    cr_assert_eq(db_submit_update(db, &s), 0);
    cr_assert_eq(db_close(db), 0); /* the daemon died without closing 1 and 3 */

    db = topen(&o);
    cr_assert_eq(db_restart_closed(db), 2);
    cr_assert_eq(db_max_session_id(db), 3);
    cr_assert_eq(db_close(db), 0);
    char b[256];
    tquery_text(td.path,
                "SELECT group_concat(id||','||state||','||closed_at||','||close_reason, ';') FROM "
                "(SELECT * FROM nat_sessions ORDER BY id)",
                b, sizeof(b));
    /* Closed at the last moment the previous run is known to be alive: session 3's
     * last_seen (T0 + 9 s). */
    cr_assert_str_eq(b, "1,closed,2026-11-27T16:00:09.000Z,restart;"
                        "2,closed,2026-11-27T16:00:00.502Z,client_fin;"
                        "3,closed,2026-11-27T16:00:09.000Z,restart");
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_events WHERE event='close' AND "
                                     "reason='restart' AND session_id IN (1,3) AND "
                                     "time='2026-11-27T16:00:09.000Z'"),
                 2);
    /* A second restart finds nothing left open. */
    db = topen(&o);
    cr_assert_eq(db_restart_closed(db), 0);
    cr_assert_eq(db_close(db), 0);
}

/* A session row deleted by hand: its id still counts (from the log), so a new
 * run does not number a session the log already names. */
Test(db_writer, max_id_counts_the_log_of_a_deleted_session_row)
{
    struct db_options o = topts(td.path);
    struct db *db = topen(&o);
    for (uint64_t id = 1; id <= 5; id++)
        open_close(db, id, true);
    cr_assert_eq(db_close(db), 0);
    sqlite3 *c = NULL;
    cr_assert_eq(sqlite3_open(td.path, &c), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(c, "DELETE FROM nat_sessions WHERE id >= 4", NULL, NULL, NULL),
                 SQLITE_OK);
    sqlite3_close(c);

    db = topen(&o);
    cr_assert_eq(db_max_session_id(db), 5);
    cr_assert_eq(db_close(db), 0);
}

Test(db_writer, updates_progress_of_open_sessions_only)
{
    struct db_options o = topts(td.path);
    struct db *db = topen(&o);
    open_close(db, 1, false);
    struct nat_session s;
    memset(&s, 0, sizeof(s));
    s.id = 1;
    s.key.proto = NAT_PROTO_TCP;
    s.ext.addr = taddr("192.0.2.1");
    s.ext.port = 20777; /* repicked */
    s.last_seen = T0 + 1234;
    s.bytes_in = 100;
    s.bytes_out = 200;
    s.state = NAT_STATE_ESTABLISHED;
    cr_assert_eq(db_submit_update(db, &s), 0);
    cr_assert_eq(db_flush(db), 0);
    char b[256];
    tquery_text(td.path,
                "SELECT state||','||last_seen||','||bytes_in||','||bytes_out||','||nat_port "
                "FROM nat_sessions WHERE id=1",
                b, sizeof(b));
    cr_assert_str_eq(b, "established,2026-11-27T16:00:01.234Z,100,200,20777");
    /* An update for an unknown session, or after the close, changes nothing. */
    s.id = 99;
    cr_assert_eq(db_submit_update(db, &s), 0);
    struct nat_event ev = tev(NAT_EV_CLOSE, 1, NAT_PROTO_TCP, "10.1.0.1", 40000, "192.0.2.1", 20777,
                              T0 + 2000, "backend_rst");
    ev.s.bytes_in = 150;
    cr_assert_eq(db_submit(db, &ev, "web"), 0);
    s.id = 1;
    s.bytes_in = 999;
    s.state = NAT_STATE_CLOSING;
    cr_assert_eq(db_submit_update(db, &s), 0);
    cr_assert_eq(db_close(db), 0);
    tquery_text(td.path,
                "SELECT state||','||bytes_in||','||close_reason||','||closed_at FROM "
                "nat_sessions WHERE id=1",
                b, sizeof(b));
    cr_assert_str_eq(b, "closed,150,backend_rst,2026-11-27T16:00:02.000Z");
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_sessions"), 1);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_events"), 2);
}

Test(db_writer, close_without_its_open_still_makes_the_row)
{
    struct db_options o = topts(td.path);
    struct db *db = topen(&o);
    struct nat_event ev = tev(NAT_EV_CLOSE, 42, NAT_PROTO_TCP, "10.0.0.4", 4444, "192.0.2.1", 20042,
                              T0 + 5000, "client_fin");
    ev.s.opened_at = T0 + 1000;
    char longname[100];
    memset(longname, 'b', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    cr_assert_eq(db_submit(db, &ev, longname), 0);
    cr_assert_eq(db_close(db), 0);
    char b[256];
    tquery_text(td.path, "SELECT opened_at||','||closed_at||','||length(backend) FROM nat_sessions",
                b, sizeof(b));
    cr_assert_str_eq(b, "2026-11-27T16:00:01.000Z,2026-11-27T16:00:05.000Z,63");
}

/* gwd's bind found the port busy (EADDRINUSE) and libnat gave the session
 * another: the log keeps both, the session row ends with the new port. */
Test(db_writer, repick_moves_the_session_port_and_is_logged)
{
    struct db_options o = topts(td.path);
    struct db *db = topen(&o);
    struct nat_event op = tev(NAT_EV_OPEN, 7, NAT_PROTO_TCP, "10.0.0.7", 7777, "192.0.2.1", 20007,
                              T0 + 1000, NULL);
    struct nat_event rp = tev(NAT_EV_REPICK, 7, NAT_PROTO_TCP, "10.0.0.7", 7777, "192.0.2.1",
                              20008, T0 + 1001, "eaddrinuse");
    rp.s.state = NAT_STATE_NEW;
    rp.s.opened_at = T0 + 1000;
    struct nat_event cl = tev(NAT_EV_CLOSE, 7, NAT_PROTO_TCP, "10.0.0.7", 7777, "192.0.2.1",
                              20008, T0 + 3000, "client_fin");
    cr_assert_eq(db_submit(db, &op, "web"), 0);
    cr_assert_eq(db_submit(db, &rp, "web"), 0);
    cr_assert_eq(db_flush(db), 0); /* the row is written with the new port */
    cr_assert_eq(db_submit(db, &cl, "web"), 0);
    cr_assert_eq(db_close(db), 0);
    char b[256];
    tquery_text(td.path, "SELECT nat_port||','||state FROM nat_sessions WHERE id = 7", b, sizeof(b));
    cr_assert_str_eq(b, "20008,closed");
    tquery_text(td.path,
                "SELECT group_concat(event||':'||nat_port, ' ') FROM "
                "(SELECT event, nat_port FROM nat_events WHERE session_id = 7 ORDER BY id)",
                b, sizeof(b));
    cr_assert_str_eq(b, "open:20007 repick:20008 close:20008");
}

static uint64_t fake_now;

static uint64_t fake_clock(void *arg)
{
    (void)arg;
    return __atomic_load_n(&fake_now, __ATOMIC_SEQ_CST);
}

/* A store at td.path on the fake clock (from T0), keeping an hour, pruning
 * every 10 ms in steps of 100 rows. */
static struct db_options prune_opts(void)
{
    struct db_options o = topts(td.path);
    o.retention_ms = 3600 * 1000;
    o.prune_interval_ms = 10;
    o.prune_step = 100;
    o.clock = fake_clock;
    fake_now = T0;
    return o;
}

/* Lets the fake clock run with real time for `ms` (in 5 ms steps), or until
 * the store has pruned `events` events and `sessions` sessions when events
 * is not 0. Returns the stats. */
static struct db_stats run_clock(struct db *db, int ms, uint64_t events, uint64_t sessions)
{
    struct db_stats st;
    for (int i = 0; i < ms / 5; i++) {
        db_get_stats(db, &st);
        if (events != 0 && st.pruned_events == events && st.pruned_sessions == sessions)
            break;
        sleep_ms(5);
        __atomic_add_fetch(&fake_now, 5, __ATOMIC_SEQ_CST);
    }
    db_get_stats(db, &st);
    return st;
}

Test(db_writer, prunes_old_events_and_closed_sessions_in_steps)
{
    struct db_options o = prune_opts(); /* nothing is old yet */
    struct db *db = topen(&o);
    for (uint64_t id = 1; id <= 500; id++)
        open_close(db, id, true); /* 1000 events at T0 .. T0 + 1 s */
    open_close(db, 501, false);   /* open at T0 + 501 ms, never closed */
    for (uint64_t id = 1000; id < 1010; id++) {
        struct nat_event ev = tev(NAT_EV_OPEN, id, NAT_PROTO_UDP, "10.2.0.1", (uint16_t)id,
                                  "192.0.2.1", (uint16_t)(30000 + id), T0 + 7200000, NULL);
        cr_assert_eq(db_submit(db, &ev, "dns"), 0);
    }
    cr_assert_eq(db_flush(db), 0);
    struct db_stats st;
    db_get_stats(db, &st);
    cr_assert_eq(st.pruned_events, 0);

    __atomic_store_n(&fake_now, T0 + 7200000, __ATOMIC_SEQ_CST); /* cutoff T0 + 1 h */
    st = run_clock(db, 5000, 1001, 500);
    cr_assert_eq(st.pruned_events, 1001, "pruned %llu events, %llu sessions, errors %llu: %s",
                 (unsigned long long)st.pruned_events, (unsigned long long)st.pruned_sessions,
                 (unsigned long long)st.errors, st.last_error);
    cr_assert_eq(st.pruned_sessions, 500);
    cr_assert_eq(db_close(db), 0);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_events"), 10);
    /* The old but still open session stays. */
    cr_assert_eq(tquery_int(td.path, "SELECT group_concat(id) FROM nat_sessions WHERE "
                                     "id < 1000"),
                 501);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_sessions"), 11);
}

struct producer {
    struct db *db;
    uint64_t n;
};

static void *produce(void *arg)
{
    struct producer *p = arg;
    for (uint64_t id = 1; id <= p->n; id++)
        open_close(p->db, id, true);
    return NULL;
}

static int count_cb(void *arg, const struct db_session_row *r)
{
    (void)r;
    (*(uint64_t *)arg)++;
    return 0;
}

Test(db_writer, reader_reads_while_the_writer_writes)
{
    struct db_options o = topts(td.path);
    struct db *db = topen(&o);
    struct producer p = {db, 60000};
    pthread_t th;
    struct db_reader *r = NULL;
    char err[256];

    cr_assert_eq(db_reader_open(&r, td.path, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(pthread_create(&th, NULL, produce, &p), 0);
    uint64_t last = 0;
    int reads = 0;
    for (int i = 0; i < 2000 && last < p.n; i++) {
        struct db_session_query q;
        uint64_t total = 0, rows = 0;
        db_session_query_init(&q);
        q.open = DB_SESSIONS_CLOSED;
        q.limit = 5;
        q.sort = "-id";
        int n = db_query_sessions(r, &q, count_cb, &rows, &total);
        cr_assert_geq(n, 0, "query failed during writes: %s", db_reader_error(r));
        cr_assert_geq(total, last, "the count went backwards");
        cr_assert_eq(rows, total < 5 ? total : 5);
        last = total;
        reads++;
        sleep_ms(2);
    }
    pthread_join(th, NULL);
    cr_assert_eq(db_flush(db), 0);
    uint64_t total = 0;
    cr_assert_geq(
        db_query_sessions(r, NULL, NULL == NULL ? count_cb : NULL, &(uint64_t){0}, &total), 0);
    cr_assert_eq(total, p.n);
    cr_assert_gt(reads, 1);
    db_reader_close(r);
    cr_assert_eq(db_close(db), 0);
}

struct flood {
    struct db *db;
    uint64_t base;
    uint64_t ok, refused;
};

static void *flood_main(void *arg)
{
    struct flood *f = arg;
    for (uint64_t i = 0; i < 20000; i++) {
        struct nat_event ev = tev(NAT_EV_OPEN, f->base + i, NAT_PROTO_UDP, "10.3.0.1", 1,
                                  "192.0.2.1", 20000, T0 + i, NULL);
        if (db_submit(f->db, &ev, "x") == 0)
            f->ok++;
        else
            f->refused++;
    }
    return NULL;
}

Test(db_writer, many_producers_count_exactly)
{
    struct db_options o = topts(td.path);
    o.queue_capacity = 2048;
    struct db *db = topen(&o);
    struct flood f[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        f[i] = (struct flood){db, (uint64_t)(i + 1) * 1000000, 0, 0};
        cr_assert_eq(pthread_create(&th[i], NULL, flood_main, &f[i]), 0);
    }
    uint64_t ok = 0, refused = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ok += f[i].ok;
        refused += f[i].refused;
    }
    cr_assert_eq(db_flush(db), 0);
    struct db_stats st;
    db_get_stats(db, &st);
    cr_assert_eq(ok + refused, 80000);
    cr_assert_eq(st.submitted, ok);
    cr_assert_eq(st.dropped, refused);
    cr_assert_eq(st.written, ok);
    cr_assert_eq(db_close(db), 0);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_sessions"), (int64_t)ok);
}

/* Open, update, close of one session in one batch, or one record per batch:
 * the same rows either way. */
static void one_flow(struct db *db, uint64_t id, bool close)
{
    struct nat_event ev =
        tev(NAT_EV_OPEN, id, NAT_PROTO_TCP, "10.0.0.1", 1000, "192.0.2.1", 20000, T0, NULL);
    cr_assert_eq(db_submit(db, &ev, "web"), 0);
    struct nat_session s = ev.s;
    s.last_seen = T0 + 10;
    s.bytes_in = 5;
    s.bytes_out = 6;
    s.state = NAT_STATE_ESTABLISHED;
    s.ext.port = 20001; /* repicked */
    cr_assert_eq(db_submit_update(db, &s), 0);
    if (!close)
        return;
    ev.type = NAT_EV_CLOSE;
    ev.time = T0 + 20;
    ev.reason = "client_fin";
    ev.s = s;
    ev.s.bytes_in = 7;
    cr_assert_eq(db_submit(db, &ev, "web"), 0);
    s.bytes_in = 99; /* late update: ignored */
    cr_assert_eq(db_submit_update(db, &s), 0);
}

static void rows_of(const char *path, char *b, size_t n)
{
    tquery_text(path,
                "SELECT group_concat(x, ';') FROM (SELECT id||','||state||','||nat_port||','||"
                "last_seen||','||coalesce(closed_at,'-')||','||coalesce(close_reason,'-')||','||"
                "bytes_in||','||bytes_out AS x FROM nat_sessions ORDER BY id)",
                b, n);
}

Test(db_writer, coalescing_in_a_batch_writes_the_same_rows)
{
    char one[512], many[512];
    struct tdir t2;
    for (int pass = 0; pass < 2; pass++) {
        tdir_make(&t2);
        struct db_options o = topts(t2.path);
        o.batch_max = pass == 0 ? 4096 : 1;
        o.flush_ms = 50;
        struct db *db = topen(&o);
        one_flow(db, 1, true);
        one_flow(db, 2, false);
        cr_assert_eq(db_close(db), 0);
        rows_of(t2.path, pass == 0 ? one : many, sizeof(one));
        cr_assert_eq(tquery_int(t2.path, "SELECT count(*) FROM nat_events"), 3);
        tdir_remove(&t2);
    }
    cr_assert_str_eq(one, "1,closed,20001,2026-11-27T16:00:00.020Z,2026-11-27T16:00:00.020Z,"
                          "client_fin,7,6;"
                          "2,established,20001,2026-11-27T16:00:00.010Z,-,-,5,6");
    cr_assert_str_eq(many, one);
}

/* Log rows go in by groups (one multi-row INSERT for several rows): they
 * keep batch order, and a row SQLite rejects is skipped alone, counted, while
 * the rest of its group is written. */
Test(db_writer, grouped_log_rows_keep_order_and_skip_only_a_bad_row)
{
    struct db_options o = topts(td.path);
    o.flush_ms = 50;
    struct db *db = topen(&o);
    char err[256] = "";
    /* A data error on one row: a trigger refusing session 20's close (in the first group of rows). */
    cr_assert_eq(db_writer_exec(db,
                                "CREATE TEMP TRIGGER refuse_20 BEFORE INSERT ON main.nat_events"
                                " WHEN new.session_id = 20 AND new.event = 'close'"
                                " BEGIN SELECT RAISE(ABORT, 'test'); END",
                                err, sizeof(err)),
                 0, "%s", err);
    for (uint64_t id = 1; id <= 50; id++)
        open_close(db, id, true);
    cr_assert_eq(db_flush(db), 0);
    struct db_stats st;
    db_get_stats(db, &st);
    cr_assert_eq(st.submitted, 100);
    cr_assert_eq(st.skipped, 1);
    cr_assert_eq(st.written, 99);
    cr_assert_eq(db_close(db), 0);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_events"), 99);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_events WHERE session_id = 20"), 1);
    /* Rows are in submission order: ids follow session ids, open before close. */
    cr_assert_eq(tquery_int(td.path,
                            "SELECT count(*) FROM nat_events a JOIN nat_events b ON b.id = a.id + 1"
                            " WHERE b.session_id < a.session_id OR (b.session_id = a.session_id"
                            " AND a.event <> 'open')"),
                 0);
    cr_assert_eq(
        tquery_int(td.path, "SELECT count(*) FROM nat_sessions WHERE closed_at IS NOT NULL"), 50);
    cr_assert_eq(tquery_int(td.path, "SELECT sum(bytes_in) FROM nat_events WHERE event = 'close'"),
                 50 * 51 / 2 - 20);
}

/* Staged session writes and updates keep their order: an update that comes
 * after its session's close (in the same batch) changes nothing. */
Test(db_writer, update_after_close_in_a_batch_changes_nothing)
{
    struct db_options o = topts(td.path);
    o.flush_ms = 50;
    struct db *db = topen(&o);
    for (uint64_t id = 1; id <= 40; id++)
        open_close(db, id, false);
    cr_assert_eq(db_flush(db), 0);
    for (uint64_t id = 1; id <= 40; id++) {
        char cip[32];
        snprintf(cip, sizeof(cip), "10.1.%u.%u", (unsigned)(id / 250 % 250), (unsigned)(id % 250));
        struct nat_event ev = tev(NAT_EV_CLOSE, id, NAT_PROTO_TCP, cip, 40000, "192.0.2.1",
                                  (uint16_t)(20000 + id), T0 + id + 500, "client_fin");
        ev.s.opened_at = T0 + id;
        ev.s.bytes_in = id;
        submit_retry(db, &ev, "web");
        struct nat_session s = ev.s;
        s.state = NAT_STATE_ESTABLISHED;
        s.ext.port = 30000;
        s.bytes_in = 999;
        s.last_seen = T0 + id + 900;
        cr_assert_eq(db_submit_update(db, &s), 0);
    }
    cr_assert_eq(db_close(db), 0);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_sessions WHERE state = 'closed'"
                                     " AND close_reason = 'client_fin' AND nat_port = 20000 + id"
                                     " AND bytes_in = id"),
                 40);
}

/* After 500 ms idle the writer gives its page cache, batch and session-id
 * index back; what it writes next (coalesced flows, closes of flows opened
 * before the pause, updates) is still whole and right. */
Test(db_writer, writes_right_after_giving_memory_back)
{
    struct db_options o = topts(td.path);
    o.flush_ms = 50;
    struct db *db = topen(&o);
    for (uint64_t id = 1; id <= 300; id++)
        open_close(db, id, id % 2 == 0);
    cr_assert_eq(db_flush(db), 0);
    sleep_ms(800); /* idle: the memory goes back */
    for (uint64_t id = 301; id <= 600; id++)
        open_close(db, id, true);
    for (uint64_t id = 1; id <= 300; id += 2) {
        char cip[32];
        snprintf(cip, sizeof(cip), "10.1.%u.%u", (unsigned)(id / 250 % 250), (unsigned)(id % 250));
        struct nat_event ev = tev(NAT_EV_CLOSE, id, NAT_PROTO_TCP, cip, 40000, "192.0.2.1",
                                  (uint16_t)(20000 + id % 10000), T0 + id + 900, "backend_fin");
        ev.s.opened_at = T0 + id;
        ev.s.bytes_in = id;
        ev.s.bytes_out = 2 * id;
        submit_retry(db, &ev, "web");
    }
    sleep_ms(800);
    for (uint64_t id = 601; id <= 700; id++)
        open_close(db, id, true);
    cr_assert_eq(db_close(db), 0);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_sessions"), 700);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_sessions WHERE state = 'closed'"
                                     " AND bytes_in = id AND bytes_out = 2 * id"
                                     " AND whois_key IS NOT NULL"),
                 700);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_sessions WHERE"
                                     " close_reason = 'backend_fin'"),
                 150);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_events"), 1400);
    char b[32];
    cr_assert_str_eq(tquery_text(td.path, "PRAGMA integrity_check", b, sizeof(b)), "ok");
}

/* The nice value of this process's thread named `name` (from /proc), or
 * INT_MIN when there is no such thread. */
static int thread_nice_of(const char *name)
{
    char path[320], buf[512];
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    int nice = INT_MIN;

    cr_assert_not_null(d);
    while (nice == INT_MIN && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        bool match = fgets(buf, sizeof(buf), f) != NULL && strncmp(buf, name, strlen(name)) == 0 &&
                     buf[strlen(name)] == '\n';
        fclose(f);
        if (!match)
            continue;
        snprintf(path, sizeof(path), "/proc/self/task/%s/stat", e->d_name);
        f = fopen(path, "r");
        cr_assert_not_null(f);
        cr_assert_not_null(fgets(buf, sizeof(buf), f));
        fclose(f);
        /* nice is field 19; count the fields after the ")" that ends comm. */
        char *p = strrchr(buf, ')');
        cr_assert_not_null(p);
        int field = 2;
        for (p++; *p != '\0' && field < 19; p++)
            if (*p == ' ')
                field++;
        nice = atoi(p);
    }
    closedir(d);
    return nice;
}

/* The writer and checkpoint threads run thread_nice steps below the thread
 * that opened the store, which keeps its own priority. */
Test(db_writer, store_threads_run_nicer_than_the_opener)
{
    errno = 0;
    int base = getpriority(PRIO_PROCESS, (id_t)gettid());
    cr_assert(!(base == -1 && errno != 0));
    if (base > 9)
        cr_skip_test("this test runs at nice %d already", base);

    struct db_options o = topts(td.path);
    cr_assert_eq(o.thread_nice, 10, "the default changed: update docs/store.md");
    struct db *db = topen(&o);
    int w = INT_MIN, c = INT_MIN;
    for (int i = 0; i < 200 && (w != base + 10 || c != base + 10); i++) {
        sleep_ms(5); /* the names are set right after the threads start */
        w = thread_nice_of("gwdb-writer");
        c = thread_nice_of("gwdb-ckpt");
    }
    cr_assert_eq(w, base + 10, "writer thread at nice %d, opener at %d", w, base);
    cr_assert_eq(c, base + 10, "checkpoint thread at nice %d, opener at %d", c, base);
    cr_assert_eq(getpriority(PRIO_PROCESS, (id_t)gettid()), base, "the opener's own nice changed");
    for (uint64_t id = 1; id <= 200; id++)
        open_close(db, id, true);
    cr_assert_eq(db_close(db), 0);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_events"), 400);

    /* 0 leaves them where the opener is. */
    o.thread_nice = 0;
    db = topen(&o);
    for (int i = 0; i < 200 && thread_nice_of("gwdb-writer") == INT_MIN; i++)
        sleep_ms(5);
    sleep_ms(20);
    cr_assert_eq(thread_nice_of("gwdb-writer"), base);
    cr_assert_eq(db_close(db), 0);
}

/* Port-block logging: block rows carry the range, log "blocks" keeps the
 * flows out of the log (but in nat_sessions), and a restart frees the blocks
 * a previous run left held. */
Test(db_writer, block_rows_log_blocks_mode_and_restart_frees_held_blocks)
{
    struct db_options o = topts(td.path);
    o.log_flows = false;
    struct db *db = topen(&o);
    struct nat_event a = block_ev(NAT_EV_BLOCK_ALLOC, "10.1.0.1", "192.0.2.1", 20000, T0);
    submit_retry(db, &a, "");
    open_close(db, 1, true); /* one flow: a session row, no log rows */
    struct nat_event r =
        tev(NAT_EV_REFUSE, 0, NAT_PROTO_UDP, "10.1.0.9", 5353, NULL, 0, T0 + 3, "client_quota");
    submit_retry(db, &r, "web"); /* refusals stay in the log */
    struct nat_event f = block_ev(NAT_EV_BLOCK_FREE, "10.1.0.1", "192.0.2.1", 20000, T0 + 600);
    submit_retry(db, &f, "");
    /* a second block, of another client, still held when the run ends */
    struct nat_event b = block_ev(NAT_EV_BLOCK_ALLOC, "10.1.0.2", "192.0.2.1", 20064, T0 + 700);
    submit_retry(db, &b, "");
    open_close(db, 2, false);
    cr_assert_eq(db_close(db), 0);

    char buf[1024];
    tquery_text(td.path,
                "SELECT group_concat(event||','||proto||','||client_ip||','||client_port||','||"
                "nat_ip||','||nat_port||','||coalesce(nat_port_last,'-')||','||"
                "coalesce(backend_ip,'-')||','||coalesce(session_id,'-'), ';')"
                " FROM (SELECT * FROM nat_events ORDER BY id)",
                buf, sizeof(buf));
    cr_assert_str_eq(buf, "block_alloc,any,10.1.0.1,0,192.0.2.1,20000,20063,-,-;"
                          "block_free,any,10.1.0.1,0,192.0.2.1,20000,20063,-,-;"
                          "block_alloc,any,10.1.0.2,0,192.0.2.1,20064,20127,-,-");
    /* (the refusal, with no nat address, is left out of that concatenation) */
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_events WHERE event = 'refuse'"
                                     " AND client_ip = '10.1.0.9' AND nat_port_last IS NULL"),
                 1);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_events"), 4);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_sessions"), 2);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_sessions WHERE id = 1 AND"
                                     " state = 'closed' AND close_reason = 'client_fin'"),
                 1);

    /* The restart closes session 2 (no log row in this mode) and frees the
     * block of 10.1.0.2, not the one already freed. */
    db = topen(&o);
    cr_assert_eq(db_restart_closed(db), 1);
    cr_assert_eq(db_close(db), 0);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_events WHERE event = 'close'"), 0);
    tquery_text(td.path,
                "SELECT group_concat(client_ip||','||nat_port||','||nat_port_last||','||reason, ';')"
                " FROM nat_events WHERE event = 'block_free' AND reason IS NOT NULL",
                buf, sizeof(buf));
    cr_assert_str_eq(buf, "10.1.0.2,20064,20127,restart");
    /* A second restart frees nothing more. */
    db = topen(&o);
    cr_assert_eq(db_close(db), 0);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_events WHERE event = 'block_free'"),
                 2);
}

/* Retention keeps the alloc row of a block that was still held at the
 * cutoff: without it no one could tell who held those ports inside the
 * retention window. Blocks given back before the cutoff go entirely. */
Test(db_writer, prune_keeps_the_alloc_of_a_block_held_past_the_cutoff)
{
    struct db_options o = prune_opts();
    o.log_flows = false;
    o.prune_step = 2; /* several steps, past the rows it must keep */
    struct db *db = topen(&o);
    const uint64_t h = 3600 * 1000;
    struct nat_event ev[] = {
        /* 20000: taken and given back before the cutoff (T0 + 1 h): both go */
        block_ev(NAT_EV_BLOCK_ALLOC, "10.1.0.1", "192.0.2.1", 20000, T0),
        block_ev(NAT_EV_BLOCK_FREE, "10.1.0.1", "192.0.2.1", 20000, T0 + 10),
        /* 20064: taken before, given back after the cutoff: both stay */
        block_ev(NAT_EV_BLOCK_ALLOC, "10.1.0.2", "192.0.2.1", 20064, T0 + 20),
        /* 20128: taken before, never given back: its alloc stays */
        block_ev(NAT_EV_BLOCK_ALLOC, "10.1.0.3", "192.0.2.1", 20128, T0 + 30),
        /* 20000 again, by another client, before the cutoff: still held */
        block_ev(NAT_EV_BLOCK_ALLOC, "10.1.0.4", "192.0.2.1", 20000, T0 + 40),
        tev(NAT_EV_REFUSE, 0, NAT_PROTO_UDP, "10.1.0.9", 5353, NULL, 0, T0 + 50, "client_quota"),
        block_ev(NAT_EV_BLOCK_FREE, "10.1.0.2", "192.0.2.1", 20064, T0 + 2 * h),
    };
    for (size_t i = 0; i < sizeof(ev) / sizeof(ev[0]); i++)
        submit_retry(db, &ev[i], "");
    cr_assert_eq(db_flush(db), 0);

    __atomic_store_n(&fake_now, T0 + 2 * h + 100, __ATOMIC_SEQ_CST); /* cutoff T0 + 1 h */
    run_clock(db, 5000, 3, 0);
    struct db_stats st = run_clock(db, 50, 0, 0); /* more passes: nothing else goes */
    cr_assert_eq(st.pruned_events, 3, "pruned %llu, errors %llu: %s",
                 (unsigned long long)st.pruned_events, (unsigned long long)st.errors,
                 st.last_error);
    cr_assert_eq(db_close(db), 0);
    char buf[512];
    tquery_text(td.path,
                "SELECT group_concat(event||','||client_ip||','||nat_port, ';')"
                " FROM (SELECT * FROM nat_events ORDER BY id)",
                buf, sizeof(buf));
    cr_assert_str_eq(buf, "block_alloc,10.1.0.2,20064;block_alloc,10.1.0.3,20128;"
                          "block_alloc,10.1.0.4,20000;block_free,10.1.0.2,20064");
}

/* Retention that prunes every session must not let the next run reuse ids:
 * the newest session row stays, and a reopened store reports its id. */
Test(db_writer, prune_keeps_the_newest_session_so_ids_never_repeat)
{
    struct db_options o = prune_opts();
    struct db *db = topen(&o);
    for (uint64_t id = 1; id <= 5; id++)
        open_close(db, id, true);
    cr_assert_eq(db_flush(db), 0);

    __atomic_store_n(&fake_now, T0 + 7200000, __ATOMIC_SEQ_CST); /* all of them old */
    struct db_stats st = run_clock(db, 5000, 10, 4);
    cr_assert_eq(st.pruned_events, 10, "pruned %llu events, %llu sessions, errors %llu: %s",
                 (unsigned long long)st.pruned_events, (unsigned long long)st.pruned_sessions,
                 (unsigned long long)st.errors, st.last_error);
    st = run_clock(db, 100, 0, 0); /* more passes: the newest row still stays */
    cr_assert_eq(st.pruned_sessions, 4);
    cr_assert_eq(db_close(db), 0);
    cr_assert_eq(tquery_int(td.path, "SELECT group_concat(id) FROM nat_sessions"), 5);

    db = topen(&o);
    cr_assert_eq(db_max_session_id(db), 5, "the next run must start above the pruned ids");
    cr_assert_eq(db_close(db), 0);
}
