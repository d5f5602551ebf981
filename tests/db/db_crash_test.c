/*
 * db_crash_test.c - kill -9 under load. A child process writes sessions as
 * fast as the store takes them; the test kills it at random moments, six
 * times, reopening the same file each time. After every kill the file must
 * pass PRAGMA integrity_check, every row must be whole, and what is there
 * must be a prefix of what was submitted (whole batches, in order: no gaps).
 */
#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
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

TestSuite(db_crash, .init = setup, .fini = teardown, .timeout = 240);

static void nap_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* The child: opens the store and writes until killed (or 2 M sessions). */
static void child_main(const char *path)
{
    struct db_options o;
    struct db *db = NULL;
    char err[256];
    db_options_default(&o);
    o.path = path;
    o.retention_ms = 0;
    o.queue_capacity = 8192;
    if (db_open(&db, &o, err, sizeof(err)) != 0)
        _exit(3);
    uint64_t id = db_max_session_id(db) + 1;
    for (uint64_t n = 0; n < 2000000; n++, id++) {
        char cip[32];
        snprintf(cip, sizeof(cip), "10.%u.%u.%u", (unsigned)(id >> 16 & 255),
                 (unsigned)(id >> 8 & 255), (unsigned)(id & 255));
        uint16_t port = (uint16_t)(20000 + id % 12000);
        struct nat_event ev = tev(NAT_EV_OPEN, id, id % 2 ? NAT_PROTO_TCP : NAT_PROTO_UDP, cip,
                                  (uint16_t)(1024 + id % 60000), "192.0.2.1", port, T0 + id, NULL);
        while (db_submit(db, &ev, "web") == -ENOBUFS)
            nap_us(100);
        if (id % 3 != 0) {
            ev.type = id % 3 == 1 ? NAT_EV_CLOSE : NAT_EV_EXPIRE;
            ev.reason = id % 3 == 1 ? "client_fin" : "timeout";
            ev.time = T0 + id + 50;
            ev.s.bytes_in = id;
            ev.s.bytes_out = id * 2;
            while (db_submit(db, &ev, "web") == -ENOBUFS)
                nap_us(100);
        }
    }
    db_close(db);
    _exit(0);
}

static int64_t q1(sqlite3 *c, const char *sql)
{
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    cr_assert_eq(sqlite3_prepare_v2(c, sql, -1, &st, NULL), SQLITE_OK, "%s: %s", sql,
                 sqlite3_errmsg(c));
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* Every row whole, the whole file consistent. Returns the sessions present. */
static int64_t check_store(const char *path)
{
    sqlite3 *c = NULL;
    char b[64];
    if (access(path, F_OK) != 0)
        return 0; /* killed before it made the file */
    /* Read-write: the first open after a crash may have to roll back a hot
     * journal (a kill during creation) or rebuild the WAL index. */
    cr_assert_eq(sqlite3_open_v2(path, &c, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(c, 5000);
    sqlite3_stmt *st = NULL;
    cr_assert_eq(sqlite3_prepare_v2(c, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK, "%s",
                 sqlite3_errmsg(c));
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW, "%s", sqlite3_errmsg(c));
    snprintf(b, sizeof(b), "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    cr_assert_str_eq(b, "ok");
    if (q1(c, "PRAGMA user_version") == 0) {
        /* Killed before the schema's transaction committed: still empty. */
        cr_assert_eq(q1(c, "SELECT count(*) FROM sqlite_master"), 0);
        sqlite3_close(c);
        return 0;
    }
    cr_assert_eq(q1(c, "PRAGMA user_version"), DB_SCHEMA_VERSION);
    int64_t sessions = q1(c, "SELECT count(*) FROM nat_sessions");
    int64_t max_id = q1(c, "SELECT coalesce(max(id), 0) FROM nat_sessions");
    /* A prefix: ids 1..max with no gaps, each with its open event. */
    cr_assert_eq(sessions, max_id, "%lld sessions but max id %lld", (long long)sessions,
                 (long long)max_id);
    cr_assert_eq(q1(c, "SELECT count(*) FROM nat_events WHERE event = 'open'"), sessions);
    /* Whole session rows. */
    cr_assert_eq(q1(c, "SELECT count(*) FROM nat_sessions WHERE proto NOT IN ('tcp','udp')"
                       " OR client_ip NOT LIKE '10.%' OR nat_ip != '192.0.2.1'"
                       " OR nat_port NOT BETWEEN 20000 AND 31999 OR backend != 'web'"
                       " OR backend_ip != '10.9.0.1' OR backend_port != 80"
                       " OR length(opened_at) != 24 OR length(last_seen) != 24"
                       " OR state NOT IN ('new','closed')"
                       " OR (closed_at IS NULL) != (close_reason IS NULL)"
                       " OR (closed_at IS NULL) != (state = 'new')"
                       " OR (closed_at IS NOT NULL AND length(closed_at) != 24)"),
                 0, "broken session rows");
    /* Sessions closed by the child carry its counts; restart closes carry theirs. */
    cr_assert_eq(q1(c, "SELECT count(*) FROM nat_sessions WHERE close_reason IN"
                       " ('client_fin','timeout') AND (bytes_in != id OR bytes_out != 2 * id"
                       " OR id % 3 = 0)"),
                 0);
    /* Whole events: each closed session has exactly one ending event. */
    cr_assert_eq(q1(c, "SELECT count(*) FROM nat_events WHERE length(time) != 24"
                       " OR event NOT IN ('open','close','expire') OR session_id IS NULL"
                       " OR nat_port IS NULL OR client_ip NOT LIKE '10.%'"),
                 0, "broken event rows");
    cr_assert_eq(q1(c, "SELECT count(*) FROM nat_events WHERE event IN ('close','expire')"),
                 q1(c, "SELECT count(*) FROM nat_sessions WHERE closed_at IS NOT NULL"));
    cr_assert_eq(q1(c, "SELECT count(*) FROM (SELECT session_id FROM nat_events WHERE event IN"
                       " ('close','expire') GROUP BY session_id HAVING count(*) != 1)"),
                 0, "a session ended twice");
    cr_assert_eq(q1(c, "SELECT count(*) FROM nat_events e JOIN nat_sessions s ON"
                       " s.id = e.session_id WHERE e.event IN ('close','expire') AND"
                       " s.closed_at IS NULL"),
                 0, "an ending event for a session still open");
    sqlite3_close(c);
    return sessions;
}

Test(db_crash, kill_9_at_random_points_keeps_the_file_whole, .description = "integration")
{
    unsigned seed = (unsigned)time(NULL);
    srand(seed);
    int64_t prev = 0;
    for (int round = 0; round < 6; round++) {
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0)
            child_main(td.path);
        /* 1..400 ms: some kills land in db_open (schema, restart), most under load. */
        long wait_us = 1000 + rand() % 400000;
        nap_us(wait_us);
        cr_assert_eq(kill(pid, SIGKILL), 0);
        int status = 0;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                  "the child ended on its own (status %d): seed %u", status, seed);
        int64_t now = check_store(td.path);
        cr_log_info("round %d: killed after %ld ms, %lld sessions", round, wait_us / 1000,
                    (long long)now);
        cr_assert_geq(now, prev, "sessions were lost (seed %u)", seed);
        prev = now;
    }
    /* A clean open after all that closes the leftovers and still checks out. */
    struct db_options o = topts(td.path);
    struct db *db = topen(&o);
    cr_assert_eq((int64_t)db_max_session_id(db), prev);
    cr_assert_eq(db_close(db), 0);
    check_store(td.path);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_sessions WHERE closed_at IS NULL"),
                 0);
    cr_assert_gt(prev, 0, "the child never wrote anything");
}
