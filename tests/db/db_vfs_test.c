/*
 * db_vfs_test.c - the "gw-yield" VFS (db/db_vfs.c) is the default VFS as far
 * as SQLite and the other connections can tell: a WAL store written through
 * it is read, checkpointed and checked by connections on the default VFS,
 * concurrently, and it yields while it writes.
 */
#include "db/db_int.h"
#include "tests/db/db_helpers.h"

static void exec_ok(sqlite3 *c, const char *sql)
{
    char *err = NULL;
    int rc = sqlite3_exec(c, sql, NULL, NULL, &err);

    cr_assert_eq(rc, SQLITE_OK, "%s: %s", sql, err != NULL ? err : sqlite3_errstr(rc));
}

static long long count_rows(sqlite3 *c)
{
    sqlite3_stmt *st = NULL;
    long long n = -1;

    cr_assert_eq(sqlite3_prepare_v2(c, "SELECT count(*) FROM t", -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

Test(db_vfs, store_written_through_it_is_an_ordinary_wal_store)
{
    struct tdir d;
    sqlite3 *w = NULL, *r = NULL;
    char sql[128];

    tdir_make(&d);
    cr_assert_eq(db__yield_vfs(), SQLITE_OK);
    cr_assert_eq(db__yield_vfs(), SQLITE_OK, "registered once, usable again");
    cr_assert_not_null(sqlite3_vfs_find(DB_YIELD_VFS));
    cr_assert_neq(sqlite3_vfs_find(NULL), sqlite3_vfs_find(DB_YIELD_VFS),
                  "it must not become the default");
    cr_assert_eq(sqlite3_open_v2(d.path, &w, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                                 DB_YIELD_VFS),
                 SQLITE_OK);
    exec_ok(w, "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;"
               "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
    /* a reader on the default VFS, with a read transaction open across the
     * writer's commits: WAL locking goes through the same shared memory */
    cr_assert_eq(sqlite3_open_v2(d.path, &r, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    exec_ok(r, "BEGIN; SELECT count(*) FROM t");
    unsigned long before = db__yield_vfs_yields();
    for (int b = 0; b < 20; b++) {
        exec_ok(w, "BEGIN");
        for (int i = 0; i < 500; i++) {
            snprintf(sql, sizeof(sql), "INSERT INTO t(v) VALUES (printf('%%0500d', %d))",
                     b * 500 + i);
            exec_ok(w, sql);
        }
        exec_ok(w, "COMMIT");
    }
    unsigned long yields = db__yield_vfs_yields() - before;
    cr_assert_eq(count_rows(r), 0, "the reader's snapshot moved");
    exec_ok(r, "COMMIT");
    cr_assert_eq(count_rows(r), 10000);
    /* ~5 MB of rows, written as pages of 4 KiB into the WAL: one yield per
     * 16 page writes, so well over 50 */
    cr_assert_gt(yields, 50, "%lu yields", yields);
    /* a checkpoint by the default-VFS connection copies what the shim wrote */
    int log = -1, ckpt = -1;
    cr_assert_eq(sqlite3_wal_checkpoint_v2(r, NULL, SQLITE_CHECKPOINT_TRUNCATE, &log, &ckpt),
                 SQLITE_OK);
    cr_assert_eq(log, 0, "WAL not truncated");
    sqlite3_close(w);
    sqlite3_close(r);
    /* and the file is whole, read back by a fresh connection */
    cr_assert_eq(sqlite3_open_v2(d.path, &r, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    cr_assert_eq(count_rows(r), 10000);
    sqlite3_stmt *st = NULL;
    cr_assert_eq(sqlite3_prepare_v2(r, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    cr_assert_str_eq((const char *)sqlite3_column_text(st, 0), "ok");
    sqlite3_finalize(st);
    sqlite3_close(r);
    tdir_remove(&d);
}

/* A failed open through the shim (a directory that does not exist) fails as
 * the default VFS would, and leaves nothing half-made behind. */
Test(db_vfs, failed_open_is_the_default_vfs_failure)
{
    sqlite3 *c = NULL;

    cr_assert_eq(db__yield_vfs(), SQLITE_OK);
    int rc = sqlite3_open_v2("/nonexistent-gw-dir/x.db", &c,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, DB_YIELD_VFS);
    cr_assert_eq(rc, SQLITE_CANTOPEN);
    sqlite3_close(c);
}
