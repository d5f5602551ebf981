/*
 * db_schema.c - the store's schema, how a file is recognised as a gw store
 * (PRAGMA application_id + user_version), the migrations, and the small
 * helpers (addresses, names) the other files of libgwdb share.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "db/db_int.h"

/* ---- helpers ------------------------------------------------------------ */

/* Addresses and names: libnat's, on the 16-byte arrays the store keeps. */

char *db__addr_format(const uint8_t a[16], char *buf)
{
    struct nat_addr x;
    memcpy(x.b, a, 16);
    return nat_addr_format(&x, buf);
}

int db__addr_parse(const char *s, uint8_t out[16])
{
    struct nat_addr x;
    if (s == NULL || nat_addr_parse(&x, s) != 0)
        return -1;
    memcpy(out, x.b, 16);
    return 0;
}

bool db__addr_in_prefix(const uint8_t a[16], const uint8_t net[16], unsigned plen)
{
    struct nat_addr x, n;
    memcpy(x.b, a, 16);
    memcpy(n.b, net, 16);
    return nat_addr_in_prefix(&x, &n, (uint8_t)(plen > 128 ? 128 : plen));
}

const char *db__proto_name(uint8_t proto)
{
    const char *name = nat_proto_name(proto);
    return name ? name : "";
}

uint8_t db__proto_parse(const char *s)
{
    if (s == NULL)
        return 0;
    if (strcmp(s, "tcp") == 0)
        return NAT_PROTO_TCP;
    if (strcmp(s, "udp") == 0)
        return NAT_PROTO_UDP;
    return 0;
}

const char *db__state_name(int st)
{
    return st < 0 || st >= NAT_STATE_COUNT ? "" : nat_state_name((enum nat_state)st);
}

void db__err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void db__strlcpy(char *dst, const char *s, size_t n)
{
    size_t len = 0;
    if (s != NULL) {
        len = strnlen(s, n - 1);
        memcpy(dst, s, len);
    }
    dst[len] = '\0';
}

uint64_t db__wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int64_t db__whois_key(uint64_t opened_ms, uint64_t closed_ms)
{
    uint64_t o = db_time_clamp(opened_ms) / 1000;
    uint64_t c = db_time_clamp(closed_ms) / 1000;
    uint64_t d = c > o ? c - o : 0;
    unsigned level = d == 0 ? 0 : 64u - (unsigned)__builtin_clzll(d);
    return (int64_t)(((uint64_t)level << DB_WHOIS_SHIFT) | (c >> level));
}

static void sqlite_setup_once(void)
{
    /* SQLITE_MISUSE when SQLite is already initialised: then it stays on. */
    (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}

void db__sqlite_setup(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, sqlite_setup_once);
}

int db__errno_of(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
        return 0;
    case SQLITE_FULL:
        return -ENOSPC;
    case SQLITE_READONLY:
        return -EROFS;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return -EBUSY;
    case SQLITE_NOMEM:
        return -ENOMEM;
    case SQLITE_NOTADB:
        return -EBADMSG;
    case SQLITE_CANTOPEN:
        return -ENOENT;
    case SQLITE_PERM:
    case SQLITE_AUTH:
        return -EACCES;
    default:
        return -EIO;
    }
}

/* ---- SQL functions for the readers -------------------------------------- */

/* gw_in_prefix(ip_text, net_blob16, plen): 1 when ip is in net/plen. */
static void fn_in_prefix(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    uint8_t a[16];
    (void)argc;
    const char *ip = (const char *)sqlite3_value_text(argv[0]);
    const void *net = sqlite3_value_blob(argv[1]);
    int plen = sqlite3_value_int(argv[2]);
    if (ip == NULL || net == NULL || sqlite3_value_bytes(argv[1]) != 16 ||
        db__addr_parse(ip, a) < 0) {
        sqlite3_result_int(ctx, 0);
        return;
    }
    sqlite3_result_int(ctx, db__addr_in_prefix(a, net, (unsigned)plen));
}

/* gw_ip_key(ip_text): the 16-byte form, so addresses sort numerically. */
static void fn_ip_key(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    uint8_t a[16];
    (void)argc;
    const char *ip = (const char *)sqlite3_value_text(argv[0]);
    if (ip == NULL || db__addr_parse(ip, a) < 0) {
        sqlite3_result_null(ctx);
        return;
    }
    sqlite3_result_blob(ctx, a, 16, SQLITE_TRANSIENT);
}

/* gw_whois_key(opened_at, closed_at): nat_sessions.whois_key of those two
 * times (text), NULL when closed_at is NULL or either is not a time. */
static void fn_whois_key(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    uint64_t o, c;
    (void)argc;
    const char *opened = (const char *)sqlite3_value_text(argv[0]);
    const char *closed = (const char *)sqlite3_value_text(argv[1]);
    if (opened == NULL || closed == NULL || db_time_parse(opened, &o) < 0 ||
        db_time_parse(closed, &c) < 0) {
        sqlite3_result_null(ctx);
        return;
    }
    sqlite3_result_int64(ctx, db__whois_key(o, c));
}

int db__register_functions(sqlite3 *conn)
{
    int flags = SQLITE_UTF8 | SQLITE_DETERMINISTIC;
    if (sqlite3_create_function(conn, "gw_in_prefix", 3, flags, NULL, fn_in_prefix, NULL, NULL) !=
            SQLITE_OK ||
        sqlite3_create_function(conn, "gw_ip_key", 1, flags, NULL, fn_ip_key, NULL, NULL) !=
            SQLITE_OK ||
        sqlite3_create_function(conn, "gw_whois_key", 2, flags, NULL, fn_whois_key, NULL, NULL) !=
            SQLITE_OK)
        return -EIO;
    return 0;
}

/* ---- recognising a store ------------------------------------------------ */

/* Runs a one-integer query. Returns the SQLite result code. */
static int query_int(sqlite3 *conn, const char *sql, int64_t *v)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(conn, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *v = sqlite3_column_int64(st, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

/* The refusal for a failed read of the file's header or schema. */
static int read_failure(sqlite3 *conn, int rc, const char *path, char *err, size_t errlen)
{
    switch (rc & 0xff) {
    case SQLITE_NOTADB:
        db__err(err, errlen,
                "%s is not an SQLite database (another kind of file, or garbage): refusing to "
                "touch it; give --db a new path or move the file away",
                path);
        return -EBADMSG;
    case SQLITE_CORRUPT:
        db__err(err, errlen,
                "%s is a corrupt SQLite database (%s): refusing to touch it; check it with "
                "sqlite3 '%s' 'PRAGMA integrity_check', recover it (.recover) or move it away",
                path, sqlite3_errmsg(conn), path);
        return -EIO;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        db__err(err, errlen, "%s is locked by another process (%s); try again later", path,
                sqlite3_errmsg(conn));
        return -EBUSY;
    default:
        db__err(err, errlen, "cannot read %s: %s", path, sqlite3_errmsg(conn));
        return db__errno_of(rc) == -EIO ? -EIO : db__errno_of(rc);
    }
}

int db__schema_check(sqlite3 *conn, const char *path, int *version, char *err, size_t errlen)
{
    int64_t app = 0, uv = 0, objects = 0, tables = 0;
    int rc;

    if ((rc = query_int(conn, "PRAGMA application_id", &app)) != SQLITE_OK ||
        (rc = query_int(conn, "PRAGMA user_version", &uv)) != SQLITE_OK ||
        (rc = query_int(conn, "SELECT count(*) FROM sqlite_master", &objects)) != SQLITE_OK)
        return read_failure(conn, rc, path, err, errlen);

    if (app == 0 && uv == 0 && objects == 0) {
        *version = 0;
        return 0;
    }
    if (app != DB_APPLICATION_ID) {
        db__err(err, errlen,
                "%s is an SQLite database but not a gw store (application_id %lld, "
                "user_version %lld, %lld schema objects): refusing to touch it; give --db "
                "another path",
                path, (long long)app, (long long)uv, (long long)objects);
        return -EINVAL;
    }
    if (uv > DB_SCHEMA_VERSION) {
        db__err(err, errlen,
                "%s is a gw store of schema version %lld, made by a newer gw; this gw knows "
                "versions up to %d: refusing to touch it; use a newer gw or another path",
                path, (long long)uv, DB_SCHEMA_VERSION);
        return -ENOTSUP;
    }
    rc = query_int(conn,
                   "SELECT count(*) FROM sqlite_master WHERE type='table' AND name IN "
                   "('nat_sessions','nat_events')",
                   &tables);
    if (rc != SQLITE_OK)
        return read_failure(conn, rc, path, err, errlen);
    if (uv < 1 || tables != 2) {
        db__err(err, errlen,
                "%s is a damaged gw store (version %lld, %lld of its 2 tables): refusing to "
                "touch it; move it away",
                path, (long long)uv, (long long)tables);
        return -EIO;
    }
    *version = (int)uv;
    return 0;
}

/* ---- migrations --------------------------------------------------------- */

/*
 * migrations[v - 1] brings a store from version v - 1 to v. Append only:
 * never edit a released step, add a new one and bump DB_SCHEMA_VERSION.
 * docs/store.md documents the resulting schema.
 */
static const char *const migrations[DB_SCHEMA_VERSION] = {
    /* 1: the two tables. */
    "CREATE TABLE nat_sessions ("
    " id INTEGER PRIMARY KEY,"
    " proto TEXT NOT NULL,"
    " client_ip TEXT NOT NULL,"
    " client_port INTEGER NOT NULL,"
    " nat_ip TEXT NOT NULL,"
    " nat_port INTEGER NOT NULL,"
    " backend TEXT NOT NULL DEFAULT '',"
    " backend_ip TEXT NOT NULL,"
    " backend_port INTEGER NOT NULL,"
    " state TEXT NOT NULL,"
    " opened_at TEXT NOT NULL,"
    " last_seen TEXT NOT NULL,"
    " closed_at TEXT,"
    " close_reason TEXT,"
    " bytes_in INTEGER NOT NULL DEFAULT 0,"
    " bytes_out INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX nat_sessions_port ON nat_sessions(nat_port);"
    "CREATE INDEX nat_sessions_opened ON nat_sessions(opened_at);"
    "CREATE INDEX nat_sessions_closed ON nat_sessions(closed_at) WHERE closed_at IS NOT NULL;"
    "CREATE INDEX nat_sessions_live ON nat_sessions(id) WHERE closed_at IS NULL;"
    "CREATE TABLE nat_events ("
    " id INTEGER PRIMARY KEY,"
    " time TEXT NOT NULL,"
    " event TEXT NOT NULL,"
    " proto TEXT NOT NULL,"
    " client_ip TEXT NOT NULL,"
    " client_port INTEGER NOT NULL,"
    " nat_ip TEXT,"
    " nat_port INTEGER,"
    " backend TEXT NOT NULL DEFAULT '',"
    " backend_ip TEXT,"
    " backend_port INTEGER,"
    " session_id INTEGER,"
    " reason TEXT);"
    "CREATE INDEX nat_events_time ON nat_events(time);",
    /* 2: byte counts on close/expire events. */
    "ALTER TABLE nat_events ADD COLUMN bytes_in INTEGER;"
    "ALTER TABLE nat_events ADD COLUMN bytes_out INTEGER;",
    /* 3: whois by an append-mostly index (close time bucketed by how long the
     * session was held, then port) instead of the port alone, whose entries
     * landed all over its tree. Needs gw_whois_key() on the connection. */
    "ALTER TABLE nat_sessions ADD COLUMN whois_key INTEGER;"
    "UPDATE nat_sessions SET whois_key = gw_whois_key(opened_at, closed_at)"
    " WHERE closed_at IS NOT NULL;"
    "DROP INDEX nat_sessions_port;"
    "CREATE INDEX nat_sessions_whois ON nat_sessions(whois_key, nat_port);",
    /* 4: block_alloc / block_free rows (the block policy) name a range of
     * ports: nat_port .. nat_port_last. Their index finds the blocks still
     * held (a restart frees them) without reading the per-flow rows. */
    "ALTER TABLE nat_events ADD COLUMN nat_port_last INTEGER;"
    "CREATE INDEX nat_events_blocks ON nat_events(nat_ip, nat_port, id)"
    " WHERE event IN ('block_alloc', 'block_free');",
};

int db__schema_migrate(sqlite3 *conn, int from, char *err, size_t errlen)
{
    char *msg = NULL;
    char sql[96];
    int v = from + 1;

    /* All the steps in one transaction: a crash leaves the file as it was
     * (a new store empty), never between two versions. */
    if (sqlite3_exec(conn, "BEGIN IMMEDIATE", NULL, NULL, &msg) != SQLITE_OK)
        goto fail;
    for (; v <= DB_SCHEMA_VERSION; v++) {
        if (sqlite3_exec(conn, migrations[v - 1], NULL, NULL, &msg) != SQLITE_OK)
            goto fail_rollback;
        snprintf(sql, sizeof(sql), "PRAGMA application_id=%d; PRAGMA user_version=%d",
                 DB_APPLICATION_ID, v);
        if (sqlite3_exec(conn, sql, NULL, NULL, &msg) != SQLITE_OK)
            goto fail_rollback;
    }
    v = DB_SCHEMA_VERSION;
    if (sqlite3_exec(conn, "COMMIT", NULL, NULL, &msg) != SQLITE_OK)
        goto fail_rollback;
    return 0;
fail_rollback:
    sqlite3_exec(conn, "ROLLBACK", NULL, NULL, NULL);
fail:
    db__err(err, errlen, "cannot migrate the store to schema version %d: %s", v,
            msg != NULL ? msg : sqlite3_errmsg(conn));
    sqlite3_free(msg);
    return -EIO;
}
