/*
 * db_schema_test.c - recognising files: a new store, migrating an older one,
 * and refusing (with distinct errors and messages, touching nothing) a file
 * that is garbage, corrupt, foreign, newer, damaged or read-only.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>

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

TestSuite(db_schema, .init = setup, .fini = teardown, .timeout = 60);

/* db_open must fail with `want` and a message containing `words`, and leave
 * the file byte for byte as it was, with no -wal beside it. */
static void assert_refused(int want, const char *words)
{
    size_t len0, len1;
    unsigned char *before = tslurp(td.path, &len0);
    struct db_options o = topts(td.path);
    struct db *db = NULL;
    char err[512] = "";
    char wal[128];

    int rc = db_open(&db, &o, err, sizeof(err));
    cr_assert_eq(rc, want, "db_open gave %d (%s), wanted %d", rc, err, want);
    cr_assert_null(db);
    cr_assert(strstr(err, words) != NULL, "message \"%s\" lacks \"%s\"", err, words);
    cr_assert(strstr(err, td.path) != NULL, "message \"%s\" does not name the file", err);
    unsigned char *after = tslurp(td.path, &len1);
    cr_assert_eq(len1, len0, "the refused file changed size");
    cr_assert_eq(memcmp(before, after, len0), 0, "the refused file changed");
    snprintf(wal, sizeof(wal), "%s-wal", td.path);
    struct stat sb;
    cr_assert(stat(wal, &sb) != 0 || sb.st_size == 0, "a -wal was written");
    free(before);
    free(after);

    /* The reader refuses it the same way. */
    struct db_reader *r = NULL;
    rc = db_reader_open(&r, td.path, err, sizeof(err));
    cr_assert_eq(rc, want, "db_reader_open gave %d (%s)", rc, err);
    cr_assert_null(r);
    cr_assert(strstr(err, words) != NULL, "reader message \"%s\" lacks \"%s\"", err, words);
}

Test(db_schema, refuses_garbage)
{
    unsigned char junk[8192];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (unsigned char)(i * 7919 + 13);
    twrite_file(td.path, junk, sizeof(junk));
    assert_refused(-EBADMSG, "not an SQLite database");
}

Test(db_schema, refuses_a_short_text_file)
{
    twrite_file(td.path, "hello, world\n", 13);
    assert_refused(-EBADMSG, "not an SQLite database");
}

Test(db_schema, refuses_a_foreign_sqlite_file)
{
    texec(td.path, "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT);"
                   "INSERT INTO customers VALUES (1, 'ann');");
    assert_refused(-EINVAL, "not a gw store");
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM customers"), 1);
}

Test(db_schema, refuses_a_foreign_versioned_sqlite_file)
{
    texec(td.path, "CREATE TABLE t(x); PRAGMA user_version = 2;");
    assert_refused(-EINVAL, "not a gw store");
}

/* Makes a current store with one session and closes it, checkpointed. */
static void make_store(void)
{
    struct db_options o = topts(td.path);
    struct db *db = topen(&o);
    struct nat_event ev =
        tev(NAT_EV_OPEN, 1, NAT_PROTO_TCP, "10.0.0.1", 1000, "192.0.2.1", 20001, T0, NULL);
    cr_assert_eq(db_submit(db, &ev, "web"), 0);
    ev.type = NAT_EV_CLOSE;
    ev.reason = "client_fin";
    cr_assert_eq(db_submit(db, &ev, "web"), 0);
    cr_assert_eq(db_close(db), 0);
    texec(td.path, "PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode=DELETE;");
}

Test(db_schema, refuses_a_newer_store)
{
    make_store();
    texec(td.path, "PRAGMA user_version = 99");
    assert_refused(-ENOTSUP, "newer gw");
}

Test(db_schema, refuses_a_corrupt_store)
{
    make_store();
    /* Page 1 holds the header (kept) and the schema table (smashed). */
    int fd = open(td.path, O_WRONLY);
    cr_assert_geq(fd, 0);
    unsigned char junk[1000];
    memset(junk, 0xa5, sizeof(junk));
    cr_assert_eq(pwrite(fd, junk, sizeof(junk), 100), (ssize_t)sizeof(junk));
    close(fd);
    assert_refused(-EIO, "corrupt");
}

Test(db_schema, refuses_a_damaged_store)
{
    make_store();
    texec(td.path, "DROP TABLE nat_events");
    assert_refused(-EIO, "damaged");
}

Test(db_schema, accepts_an_empty_file_as_new)
{
    twrite_file(td.path, "", 0);
    struct db_options o = topts(td.path);
    struct db *db = topen(&o);
    cr_assert_eq(db_close(db), 0);
    cr_assert_eq(tquery_int(td.path, "PRAGMA user_version"), DB_SCHEMA_VERSION);
}

/* Version 1 of the schema, as gw 0.1 shipped it (kept here as a fixture). */
static const char v1_schema[] =
    "CREATE TABLE nat_sessions (id INTEGER PRIMARY KEY, proto TEXT NOT NULL,"
    " client_ip TEXT NOT NULL, client_port INTEGER NOT NULL, nat_ip TEXT NOT NULL,"
    " nat_port INTEGER NOT NULL, backend TEXT NOT NULL DEFAULT '', backend_ip TEXT NOT NULL,"
    " backend_port INTEGER NOT NULL, state TEXT NOT NULL, opened_at TEXT NOT NULL,"
    " last_seen TEXT NOT NULL, closed_at TEXT, close_reason TEXT,"
    " bytes_in INTEGER NOT NULL DEFAULT 0, bytes_out INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX nat_sessions_port ON nat_sessions(nat_port);"
    "CREATE INDEX nat_sessions_opened ON nat_sessions(opened_at);"
    "CREATE INDEX nat_sessions_closed ON nat_sessions(closed_at) WHERE closed_at IS NOT NULL;"
    "CREATE INDEX nat_sessions_live ON nat_sessions(id) WHERE closed_at IS NULL;"
    "CREATE TABLE nat_events (id INTEGER PRIMARY KEY, time TEXT NOT NULL, event TEXT NOT NULL,"
    " proto TEXT NOT NULL, client_ip TEXT NOT NULL, client_port INTEGER NOT NULL, nat_ip TEXT,"
    " nat_port INTEGER, backend TEXT NOT NULL DEFAULT '', backend_ip TEXT, backend_port INTEGER,"
    " session_id INTEGER, reason TEXT);"
    "CREATE INDEX nat_events_time ON nat_events(time);"
    "PRAGMA application_id = 1735869506; PRAGMA user_version = 1;"
    "INSERT INTO nat_sessions VALUES (41, 'tcp', '10.0.0.1', 1000, '192.0.2.1', 20001, 'web',"
    " '10.9.0.1', 80, 'closed', '2026-11-27T16:00:00.000Z', '2026-11-27T16:00:01.000Z',"
    " '2026-11-27T16:00:02.000Z', 'client_fin', 5, 6);"
    "INSERT INTO nat_sessions VALUES (42, 'udp', '10.0.0.2', 53, '192.0.2.1', 20002, 'dns',"
    " '10.9.0.2', 53, 'established', '2026-11-27T16:00:03.000Z', '2026-11-27T16:00:04.000Z',"
    " NULL, NULL, 7, 8);"
    "INSERT INTO nat_events VALUES (1, '2026-11-27T16:00:00.000Z', 'open', 'tcp', '10.0.0.1',"
    " 1000, '192.0.2.1', 20001, 'web', '10.9.0.1', 80, 41, NULL);"
    "INSERT INTO nat_events VALUES (2, '2026-11-27T16:00:02.000Z', 'close', 'tcp', '10.0.0.1',"
    " 1000, '192.0.2.1', 20001, 'web', '10.9.0.1', 80, 41, 'client_fin');"
    "INSERT INTO nat_events VALUES (3, '2026-11-27T16:00:03.000Z', 'open', 'udp', '10.0.0.2',"
    " 53, '192.0.2.1', 20002, 'dns', '10.9.0.2', 53, 42, NULL);";

Test(db_schema, migrates_version_1_keeping_rows)
{
    cr_assert_eq(DB_APPLICATION_ID, 1735869506);
    texec(td.path, v1_schema);
    struct db_reader *r = NULL;
    char err[512];
    cr_assert_eq(db_reader_open(&r, td.path, err, sizeof(err)), -ENOTSUP);
    cr_assert(strstr(err, "migrate") != NULL, "%s", err);

    struct db_options o = topts(td.path);
    struct db *db = topen(&o);
    cr_assert_eq(db_max_session_id(db), 42);
    cr_assert_eq(db_restart_closed(db), 1); /* 42 was left open */
    struct nat_event ev =
        tev(NAT_EV_OPEN, 43, NAT_PROTO_TCP, "10.0.0.3", 1000, "192.0.2.1", 20003, T0 + 10000, NULL);
    cr_assert_eq(db_submit(db, &ev, "web"), 0);
    ev.type = NAT_EV_CLOSE;
    ev.reason = "backend_fin";
    ev.s.bytes_in = 77;
    cr_assert_eq(db_submit(db, &ev, "web"), 0);
    cr_assert_eq(db_close(db), 0);

    cr_assert_eq(tquery_int(td.path, "PRAGMA user_version"), DB_SCHEMA_VERSION);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_sessions"), 3);
    cr_assert_eq(tquery_int(td.path, "SELECT bytes_out FROM nat_sessions WHERE id = 41"), 6);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_events"), 3 + 1 + 2);
    /* Version 2's column and index. */
    cr_assert_eq(tquery_int(td.path, "SELECT bytes_in FROM nat_events WHERE session_id = 43"
                                     " AND event = 'close'"),
                 77);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_events WHERE bytes_in IS NULL"), 4);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM sqlite_master"), 8);
    char b[32];
    cr_assert_str_eq(tquery_text(td.path, "PRAGMA integrity_check", b, sizeof(b)), "ok");

    cr_assert_eq(db_reader_open(&r, td.path, err, sizeof(err)), 0, "%s", err);
    db_reader_close(r);
}

Test(db_schema, migrating_twice_is_a_no_op)
{
    struct db_options o = topts(td.path);
    for (int i = 0; i < 3; i++) {
        struct db *db = topen(&o);
        cr_assert_eq(db_close(db), 0);
    }
    cr_assert_eq(tquery_int(td.path, "PRAGMA user_version"), DB_SCHEMA_VERSION);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM sqlite_master"), 8);
}

Test(db_schema, reader_refuses_missing_empty_and_memory)
{
    struct db_reader *r = NULL;
    char err[512];
    cr_assert_eq(db_reader_open(&r, td.path, err, sizeof(err)), -ENOENT);
    cr_assert(strstr(err, td.path) != NULL);
    twrite_file(td.path, "", 0);
    cr_assert_eq(db_reader_open(&r, td.path, err, sizeof(err)), -ENOENT);
    cr_assert(strstr(err, "empty") != NULL, "%s", err);
    cr_assert_eq(db_reader_open(&r, ":memory:", err, sizeof(err)), -EINVAL);
    cr_assert_null(r);
    db_reader_close(NULL);
}

Test(db_schema, memory_store_works)
{
    struct db_options o = topts(":memory:");
    struct db *db = topen(&o);
    struct nat_event ev =
        tev(NAT_EV_OPEN, 1, NAT_PROTO_TCP, "10.0.0.1", 1000, "192.0.2.1", 20001, T0, NULL);
    cr_assert_eq(db_submit(db, &ev, "web"), 0);
    cr_assert_eq(db_flush(db), 0);
    struct db_stats st;
    db_get_stats(db, &st);
    cr_assert_eq(st.written, 1);
    cr_assert_eq(db_close(db), 0);
}

/*
 * A read-only file and a read-only directory. Root writes anyway, so the
 * check runs in a child that drops to nobody first.
 */
static int child_open_as_nobody(const char *path, char *err, size_t errlen)
{
    if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0))
        return 100;
    struct db_options o = topts(path);
    struct db *db = NULL;
    int rc = db_open(&db, &o, err, errlen);
    if (rc == 0)
        db_close(db);
    return -rc;
}

static int run_child(const char *path, const char *words)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        char err[512] = "";
        int code = child_open_as_nobody(path, err, sizeof(err));
        if (code == EROFS && strstr(err, words) == NULL)
            code = 101;
        _exit(code);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status));
    return WEXITSTATUS(status);
}

Test(db_schema, refuses_a_read_only_file_and_directory)
{
    chmod(td.dir, 0777);
    make_store();
    size_t len0, len1;
    cr_assert_eq(chmod(td.path, 0444), 0);
    unsigned char *before = tslurp(td.path, &len0);
    cr_assert_eq(run_child(td.path, "read-only"), EROFS);
    unsigned char *after = tslurp(td.path, &len1);
    cr_assert_eq(len0, len1);
    cr_assert_eq(memcmp(before, after, len0), 0);
    free(before);
    free(after);

    /* A writable file in a directory where -wal/-shm cannot be made. */
    cr_assert_eq(chmod(td.path, 0666), 0);
    cr_assert_eq(chmod(td.dir, 0555), 0);
    int code = run_child(td.path, "not writable");
    chmod(td.dir, 0700);
    cr_assert_eq(code, EROFS);
}

/* Version 2's step, as released (the fixture above plus this is a v2 store). */
static const char v2_step[] = "ALTER TABLE nat_events ADD COLUMN bytes_in INTEGER;"
                              "ALTER TABLE nat_events ADD COLUMN bytes_out INTEGER;"
                              "PRAGMA user_version = 2;";

/* Every column of the closed sessions, as text, in id order. */
static void closed_rows(char *b, size_t n)
{
    tquery_text(td.path,
                "SELECT group_concat(x, ';') FROM (SELECT id||','||proto||','||client_ip||','||"
                "client_port||','||nat_ip||','||nat_port||','||backend||','||backend_ip||','||"
                "backend_port||','||state||','||opened_at||','||last_seen||','||closed_at||','||"
                "close_reason||','||bytes_in||','||bytes_out AS x FROM nat_sessions"
                " WHERE closed_at IS NOT NULL ORDER BY id)",
                b, n);
}

/*
 * A version 2 store with sessions of many lengths on a few ports: migrated to
 * version 3 (whois_key filled in, nat_sessions_port replaced by
 * nat_sessions_whois), it keeps every row and answers whois as the v2 file
 * did with its plain query.
 */
Test(db_schema, migrates_version_2_with_data_and_whois_answers_the_same)
{
    static const uint64_t lens[] = {0, 1, 999, 1000, 2500, 61000, 3600000, 5 * 86400000ULL};
    const size_t nl = sizeof(lens) / sizeof(lens[0]);
    texec(td.path, v1_schema);
    texec(td.path, v2_step);
    sqlite3 *c = NULL;
    cr_assert_eq(sqlite3_open(td.path, &c), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(c, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    uint64_t opened[80], closed[80];
    uint16_t ports[80];
    const char *ips[80];
    const size_t n = 80;
    for (size_t i = 0; i < n; i++) {
        char sql[768], to[DB_TIME_STRLEN], tc[DB_TIME_STRLEN];
        ips[i] = i % 4 == 0 ? "192.0.2.9" : "192.0.2.1";
        ports[i] = (uint16_t)(20001 + i % 3);
        opened[i] = T0 + 10000 + i * 900;
        closed[i] = i % 11 == 10 ? 0 : opened[i] + lens[i % nl];
        db_time_format(opened[i], to);
        db_time_format(closed[i] != 0 ? closed[i] : opened[i], tc);
        snprintf(sql, sizeof(sql),
                 "INSERT INTO nat_sessions VALUES (%zu, '%s', '10.1.0.%zu', %zu, '%s', %u, 'web',"
                 " '10.9.0.1', 80, '%s', '%s', '%s', %s%s%s, %s, %zu, %zu)",
                 100 + i, i % 2 ? "udp" : "tcp", i % 200, 3000 + i, ips[i], ports[i],
                 closed[i] != 0 ? "closed" : "established", to, tc, closed[i] != 0 ? "'" : "",
                 closed[i] != 0 ? tc : "NULL", closed[i] != 0 ? "'" : "",
                 closed[i] != 0 ? "'client_fin'" : "NULL", i, 2 * i);
        cr_assert_eq(sqlite3_exec(c, sql, NULL, NULL, NULL), SQLITE_OK, "%s", sqlite3_errmsg(c));
    }
    /* The latest time stored, where the restart will close the open ones. */
    cr_assert_eq(
        sqlite3_exec(c,
                     "INSERT INTO nat_events(time, event, proto, client_ip, client_port)"
                     " VALUES ('2027-06-01T00:00:00.000Z', 'refuse', 'tcp', '10.0.0.1', 1)",
                     NULL, NULL, NULL),
        SQLITE_OK);
    cr_assert_eq(sqlite3_exec(c, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(c);
    cr_assert_eq(tquery_int(td.path, "PRAGMA user_version"), 2);

    /* The answers of the v2 file, by its plain query. */
    static char want[80][9][2][64];
    char before[8192], after[8192];
    closed_rows(before, sizeof(before));
    for (size_t s = 0; s < n; s++) {
        uint64_t end = closed[s] != 0 ? closed[s] : opened[s] + 700;
        uint64_t at[9] = {opened[s] - 1, opened[s], opened[s] + 1, (opened[s] + end) / 2,
                          end - 1,       end,       end + 1,       end / 1000 * 1000,
                          end + 86400000};
        for (int k = 0; k < 9; k++)
            for (int p = 0; p < 2; p++)
                tscan_whois(td.path, p == 0 ? 0 : s % 2 ? NAT_PROTO_UDP : NAT_PROTO_TCP, ips[s],
                            ports[s], at[k], want[s][k][p], sizeof(want[s][k][p]));
    }

    struct db_options o = topts(td.path);
    struct db *db = topen(&o);
    cr_assert_eq(db_max_session_id(db), 179);
    cr_assert_eq(db_restart_closed(db), 1 + 7); /* 42 of the fixture, and 7 here */
    cr_assert_eq(db_close(db), 0);
    cr_assert_eq(tquery_int(td.path, "PRAGMA user_version"), DB_SCHEMA_VERSION);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM sqlite_master WHERE name ="
                                     " 'nat_sessions_port'"),
                 0);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM sqlite_master WHERE name ="
                                     " 'nat_sessions_whois'"),
                 1);
    cr_assert_eq(tquery_int(td.path, "SELECT count(*) FROM nat_sessions WHERE whois_key IS NULL"),
                 0);
    char b[32];
    cr_assert_str_eq(tquery_text(td.path, "PRAGMA integrity_check", b, sizeof(b)), "ok");
    /* The sessions closed before the migration are the same, column by column. */
    tquery_text(td.path,
                "SELECT group_concat(x, ';') FROM (SELECT id||','||proto||','||client_ip||','||"
                "client_port||','||nat_ip||','||nat_port||','||backend||','||backend_ip||','||"
                "backend_port||','||state||','||opened_at||','||last_seen||','||closed_at||','||"
                "close_reason||','||bytes_in||','||bytes_out AS x FROM nat_sessions"
                " WHERE closed_at IS NOT NULL AND close_reason <> 'restart' ORDER BY id)",
                after, sizeof(after));
    cr_assert_str_eq(after, before);

    struct db_reader *r = NULL;
    char err[512], got[64];
    cr_assert_eq(db_reader_open(&r, td.path, err, sizeof(err)), 0, "%s", err);
    unsigned answered = 0;
    for (size_t s = 0; s < n; s++) {
        uint64_t end = closed[s] != 0 ? closed[s] : opened[s] + 700;
        uint64_t at[9] = {opened[s] - 1, opened[s], opened[s] + 1, (opened[s] + end) / 2,
                          end - 1,       end,       end + 1,       end / 1000 * 1000,
                          end + 86400000};
        for (int k = 0; k < 9; k++) {
            for (int p = 0; p < 2; p++) {
                uint8_t proto = p == 0 ? 0 : s % 2 ? NAT_PROTO_UDP : NAT_PROTO_TCP;
                twhois(r, proto, ips[s], ports[s], at[k], got, sizeof(got));
                cr_assert_str_eq(got, want[s][k][p], "session %zu at T0+%llu proto %u", 100 + s,
                                 (unsigned long long)(at[k] - T0), proto);
                answered += got[0] != '\0';
            }
        }
    }
    cr_assert_gt(answered, 300, "only %u answers", answered);
    db_reader_close(r);
}
