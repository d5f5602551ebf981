/*
 * db_query.c - the read side of the store: read-only connections, session
 * and log queries with filters and paging, whois, and CSV / JSON-lines
 * export. Used by gwctl --db and by gwd for its own reads.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "db/db_int.h"

struct db_reader {
    sqlite3 *conn; /* owned, read-only */
    char err[DB_ERR_MAX];
};

static const char session_cols[] =
    "id, proto, client_ip, client_port, nat_ip, nat_port, backend, backend_ip, backend_port,"
    " state, opened_at, last_seen, closed_at, close_reason, bytes_in, bytes_out";

static const char event_cols[] =
    "id, time, event, proto, client_ip, client_port, nat_ip, nat_port, backend, backend_ip,"
    " backend_port, session_id, reason, bytes_in, bytes_out, nat_port_last";

const char *const db_session_sort_keys[] = {
    "id",        "proto",     "client_ip",  "client_port",  "nat_ip",
    "nat_port",  "backend",   "backend_ip", "backend_port", "state",
    "opened_at", "last_seen", "closed_at",  "close_reason", "bytes_in",
    "bytes_out", "bytes",     "client",     "nat",          NULL,
};

int db_reader_open(struct db_reader **out, const char *path, char *err, size_t errlen)
{
    struct db_reader *r;
    struct stat sb;
    int version = 0, rc;

    if (path == NULL || strcmp(path, ":memory:") == 0) {
        db__err(err, errlen, "a reader needs a store file (not :memory:)");
        return -EINVAL;
    }
    if (stat(path, &sb) != 0) {
        rc = -errno;
        db__err(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return rc;
    }
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -ENOMEM;
    db__sqlite_setup();
    rc = sqlite3_open_v2(path, &r->conn, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        db__err(err, errlen, "cannot open %s: %s", path,
                r->conn != NULL ? sqlite3_errmsg(r->conn) : sqlite3_errstr(rc));
        rc = db__errno_of(rc);
        goto out_free;
    }
    sqlite3_busy_timeout(r->conn, 2000);
    if ((rc = db__schema_check(r->conn, path, &version, err, errlen)) < 0)
        goto out_free;
    if (version == 0) {
        db__err(err, errlen, "%s is empty: not a gw store yet", path);
        rc = -ENOENT;
        goto out_free;
    }
    if (version != DB_SCHEMA_VERSION) {
        db__err(err, errlen,
                "%s is a gw store of schema version %d, this gw reads version %d: open it once "
                "with gwd --db to migrate it",
                path, version, DB_SCHEMA_VERSION);
        rc = -ENOTSUP;
        goto out_free;
    }
    if (db__register_functions(r->conn) < 0) {
        db__err(err, errlen, "cannot register SQL functions: %s", sqlite3_errmsg(r->conn));
        rc = -EIO;
        goto out_free;
    }
    *out = r;
    return 0;
out_free:
    sqlite3_close(r->conn);
    free(r);
    return rc;
}

void db_reader_close(struct db_reader *r)
{
    if (r == NULL)
        return;
    sqlite3_close(r->conn);
    free(r);
}

const char *db_reader_error(const struct db_reader *r)
{
    return r->err;
}

void db_session_query_init(struct db_session_query *q)
{
    memset(q, 0, sizeof(*q));
    q->state = -1;
    q->client_plen = 128;
}

void db_event_query_init(struct db_event_query *q)
{
    memset(q, 0, sizeof(*q));
    q->client_plen = 128;
}

/* ---- building SQL ------------------------------------------------------- */

enum bind_kind { BIND_TEXT, BIND_INT, BIND_BLOB16 };

struct bind {
    enum bind_kind kind;
    char text[DB_NAME_MAX > NAT_ADDR_STRLEN ? DB_NAME_MAX : NAT_ADDR_STRLEN];
    int64_t i;
    uint8_t blob[16];
};

#define MAX_BINDS 16

/* A WHERE clause under construction, with its bound values. */
struct where {
    char sql[1024];
    size_t len;
    struct bind b[MAX_BINDS];
    int n;
    bool overflow;
};

static void where_add(struct where *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void where_add(struct where *w, const char *fmt, ...)
{
    va_list ap;
    const char *glue = w->len == 0 ? " WHERE " : " AND ";
    int n = snprintf(w->sql + w->len, sizeof(w->sql) - w->len, "%s", glue);
    if (n < 0 || (size_t)n >= sizeof(w->sql) - w->len) {
        w->overflow = true;
        return;
    }
    w->len += (size_t)n;
    va_start(ap, fmt);
    n = vsnprintf(w->sql + w->len, sizeof(w->sql) - w->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(w->sql) - w->len) {
        w->overflow = true;
        return;
    }
    w->len += (size_t)n;
}

/* Reserves the next parameter; returns its number (?N) or 0 when full. */
static int bind_text(struct where *w, const char *s)
{
    if (w->n >= MAX_BINDS) {
        w->overflow = true;
        return 0;
    }
    w->b[w->n].kind = BIND_TEXT;
    db__strlcpy(w->b[w->n].text, s, sizeof(w->b[w->n].text));
    return ++w->n;
}

static int bind_int(struct where *w, int64_t v)
{
    if (w->n >= MAX_BINDS) {
        w->overflow = true;
        return 0;
    }
    w->b[w->n].kind = BIND_INT;
    w->b[w->n].i = v;
    return ++w->n;
}

static int bind_blob(struct where *w, const uint8_t a[16])
{
    if (w->n >= MAX_BINDS) {
        w->overflow = true;
        return 0;
    }
    w->b[w->n].kind = BIND_BLOB16;
    memcpy(w->b[w->n].blob, a, 16);
    return ++w->n;
}

static void bind_all(sqlite3_stmt *st, const struct where *w)
{
    for (int i = 0; i < w->n; i++) {
        const struct bind *b = &w->b[i];
        switch (b->kind) {
        case BIND_TEXT:
            sqlite3_bind_text(st, i + 1, b->text, -1, SQLITE_STATIC);
            break;
        case BIND_INT:
            sqlite3_bind_int64(st, i + 1, b->i);
            break;
        case BIND_BLOB16:
            sqlite3_bind_blob(st, i + 1, b->blob, 16, SQLITE_STATIC);
            break;
        }
    }
}

static void time_text(uint64_t ms, char *buf)
{
    db_time_format(ms, buf);
}

/* The filters both tables share (their columns have the same names). In the
 * log (`blocks`), a block row (proto 'any', ports nat_port .. nat_port_last)
 * matches every protocol and a port range it overlaps. */
static void where_common(struct where *w, uint8_t proto, bool has_client,
                         const struct nat_addr *client, uint8_t plen, bool has_nat_ip,
                         const struct nat_addr *nat_ip, uint16_t lo, uint16_t hi,
                         const char *backend, bool blocks)
{
    char buf[NAT_ADDR_STRLEN];
    if (proto != 0 && blocks)
        where_add(w, "proto IN (?%d, 'any')", bind_text(w, db__proto_name(proto)));
    else if (proto != 0)
        where_add(w, "proto = ?%d", bind_text(w, db__proto_name(proto)));
    if (has_client) {
        if (plen >= 128) {
            where_add(w, "client_ip = ?%d", bind_text(w, db__addr_format(client->b, buf)));
        } else {
            int a = bind_blob(w, client->b);
            where_add(w, "gw_in_prefix(client_ip, ?%d, ?%d)", a, bind_int(w, plen));
        }
    }
    if (has_nat_ip)
        where_add(w, "nat_ip = ?%d", bind_text(w, db__addr_format(nat_ip->b, buf)));
    if ((lo != 0 || hi != 0) && blocks) {
        int a = bind_int(w, lo), b = bind_int(w, hi != 0 ? hi : 65535);
        where_add(w, "(nat_port BETWEEN ?%d AND ?%d OR (nat_port_last IS NOT NULL"
                     " AND nat_port <= ?%d AND nat_port_last >= ?%d))", a, b, b, a);
    } else if (lo != 0 || hi != 0) {
        int a = bind_int(w, lo);
        where_add(w, "nat_port BETWEEN ?%d AND ?%d", a, bind_int(w, hi != 0 ? hi : 65535));
    }
    if (backend != NULL)
        where_add(w, "backend = ?%d", bind_text(w, backend));
}

static int session_where(struct where *w, const struct db_session_query *q)
{
    char t[DB_TIME_STRLEN];
    memset(w, 0, sizeof(*w));
    if (q == NULL)
        return 0;
    where_common(w, q->proto, q->has_client, &q->client, q->client_plen, q->has_nat_ip, &q->nat_ip,
                 q->nat_port_lo, q->nat_port_hi, q->backend, false);
    if (q->state >= 0) {
        const char *name = db__state_name(q->state);
        if (name[0] == '\0')
            return -EINVAL;
        where_add(w, "state = ?%d", bind_text(w, name));
    }
    if (q->open == DB_SESSIONS_OPEN)
        where_add(w, "closed_at IS NULL");
    else if (q->open == DB_SESSIONS_CLOSED)
        where_add(w, "closed_at IS NOT NULL");
    /* Alive over [opened_at, closed_at): closed at `since` is gone by then. */
    if (q->has_since) {
        time_text(q->since_ms, t);
        where_add(w, "(closed_at IS NULL OR closed_at > ?%d)", bind_text(w, t));
    }
    if (q->has_until) {
        time_text(q->until_ms, t);
        where_add(w, "opened_at <= ?%d", bind_text(w, t));
    }
    return w->overflow ? -EINVAL : 0;
}

/*
 * Writes " ORDER BY ..." for a sort key ("-" prefix = descending) into buf:
 * the key's columns, then id as the tie-breaker. Addresses sort as numbers.
 */
static int session_order_by(const char *sort, char *buf, size_t len)
{
    static const struct {
        const char *key, *first, *second;
    } map[] = {
        {"client", "gw_ip_key(client_ip)", "client_port"}, {"nat", "gw_ip_key(nat_ip)", "nat_port"},
        {"client_ip", "gw_ip_key(client_ip)", NULL},       {"nat_ip", "gw_ip_key(nat_ip)", NULL},
        {"backend_ip", "gw_ip_key(backend_ip)", NULL},     {"bytes", "bytes_in + bytes_out", NULL},
    };
    const char *first = NULL, *second = NULL;
    const char *d = "ASC";

    if (sort == NULL || sort[0] == '\0')
        sort = "id";
    if (sort[0] == '-') {
        d = "DESC";
        sort++;
    }
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]) && first == NULL; i++) {
        if (strcmp(sort, map[i].key) == 0) {
            first = map[i].first;
            second = map[i].second;
        }
    }
    for (size_t i = 0; db_session_sort_keys[i] != NULL && first == NULL; i++)
        if (strcmp(sort, db_session_sort_keys[i]) == 0)
            first = db_session_sort_keys[i];
    if (first == NULL)
        return -EINVAL;
    if (strcmp(first, "id") == 0)
        snprintf(buf, len, " ORDER BY id %s", d);
    else if (second == NULL)
        snprintf(buf, len, " ORDER BY %s %s, id %s", first, d, d);
    else
        snprintf(buf, len, " ORDER BY %s %s, %s %s, id %s", first, d, second, d, d);
    return 0;
}

/* ---- rows --------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (1 to 4), or 0 when it is not one
 * (a stray byte, overlong, a surrogate, past U+10FFFF, or cut short). */
static size_t utf8_seq(const unsigned char *s)
{
    unsigned c = s[0];
    size_t len;
    unsigned cp;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0; /* also stops at the terminating NUL */
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/*
 * A text column into dst. The store's text is UTF-8 when gwd wrote it, but a
 * row edited by hand (or cut by the copy) may not be; each byte of a bad
 * sequence becomes '?', so that tables and JSON always get valid text.
 */
static void col_text(sqlite3_stmt *st, int i, char *dst, size_t n)
{
    db__strlcpy(dst, (const char *)sqlite3_column_text(st, i), n);
    for (unsigned char *p = (unsigned char *)dst; *p != '\0';) {
        size_t k = utf8_seq(p);
        if (k == 0)
            *p++ = '?';
        else
            p += k;
    }
}

static uint64_t time_ms_of(const char *t)
{
    uint64_t ms = 0;
    if (t[0] != '\0')
        db_time_parse(t, &ms);
    return ms;
}

static void read_session_row(sqlite3_stmt *st, struct db_session_row *r)
{
    memset(r, 0, sizeof(*r));
    r->id = (uint64_t)sqlite3_column_int64(st, 0);
    col_text(st, 1, r->proto_name, sizeof(r->proto_name));
    r->proto = db__proto_parse(r->proto_name);
    col_text(st, 2, r->client_ip, sizeof(r->client_ip));
    r->client_port = (uint16_t)sqlite3_column_int(st, 3);
    col_text(st, 4, r->nat_ip, sizeof(r->nat_ip));
    r->nat_port = (uint16_t)sqlite3_column_int(st, 5);
    col_text(st, 6, r->backend, sizeof(r->backend));
    col_text(st, 7, r->backend_ip, sizeof(r->backend_ip));
    r->backend_port = (uint16_t)sqlite3_column_int(st, 8);
    col_text(st, 9, r->state, sizeof(r->state));
    col_text(st, 10, r->opened_at, sizeof(r->opened_at));
    col_text(st, 11, r->last_seen, sizeof(r->last_seen));
    col_text(st, 12, r->closed_at, sizeof(r->closed_at));
    col_text(st, 13, r->close_reason, sizeof(r->close_reason));
    r->bytes_in = (uint64_t)sqlite3_column_int64(st, 14);
    r->bytes_out = (uint64_t)sqlite3_column_int64(st, 15);
    r->open = sqlite3_column_type(st, 12) == SQLITE_NULL;
    r->opened_at_ms = time_ms_of(r->opened_at);
    r->last_seen_ms = time_ms_of(r->last_seen);
    r->closed_at_ms = time_ms_of(r->closed_at);
}

static void read_event_row(sqlite3_stmt *st, struct db_event_row *r)
{
    memset(r, 0, sizeof(*r));
    r->id = (uint64_t)sqlite3_column_int64(st, 0);
    col_text(st, 1, r->time, sizeof(r->time));
    r->time_ms = time_ms_of(r->time);
    col_text(st, 2, r->event, sizeof(r->event));
    col_text(st, 3, r->proto_name, sizeof(r->proto_name));
    r->proto = db__proto_parse(r->proto_name);
    col_text(st, 4, r->client_ip, sizeof(r->client_ip));
    r->client_port = (uint16_t)sqlite3_column_int(st, 5);
    col_text(st, 6, r->nat_ip, sizeof(r->nat_ip));
    r->nat_port = (uint16_t)sqlite3_column_int(st, 7);
    col_text(st, 8, r->backend, sizeof(r->backend));
    col_text(st, 9, r->backend_ip, sizeof(r->backend_ip));
    r->backend_port = (uint16_t)sqlite3_column_int(st, 10);
    r->session_id = (uint64_t)sqlite3_column_int64(st, 11);
    col_text(st, 12, r->reason, sizeof(r->reason));
    r->bytes_in = (uint64_t)sqlite3_column_int64(st, 13);
    r->bytes_out = (uint64_t)sqlite3_column_int64(st, 14);
    r->nat_port_last = (uint16_t)sqlite3_column_int(st, 15);
}

/* Prepares sql, binds w. Returns the statement or NULL (r->err set). */
static sqlite3_stmt *prepare(struct db_reader *r, const char *sql, const struct where *w)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->conn, sql, -1, &st, NULL) != SQLITE_OK) {
        db__strlcpy(r->err, sqlite3_errmsg(r->conn), sizeof(r->err));
        return NULL;
    }
    bind_all(st, w);
    return st;
}

static int count_rows(struct db_reader *r, const char *table, const struct where *w,
                      uint64_t *total)
{
    char sql[1200];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s%s", table, w->sql);
    sqlite3_stmt *st = prepare(r, sql, w);
    if (st == NULL)
        return -EIO;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *total = (uint64_t)sqlite3_column_int64(st, 0);
    else
        db__strlcpy(r->err, sqlite3_errmsg(r->conn), sizeof(r->err));
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : -EIO;
}

/* Steps st to the end, handing rows to row_fn. Returns rows handed, or -EIO. */
static int run_rows(struct db_reader *r, sqlite3_stmt *st,
                    int (*row_fn)(sqlite3_stmt *st, void *ctx), void *ctx)
{
    int n = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        n++;
        if (row_fn(st, ctx) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    if (rc != SQLITE_DONE) {
        db__strlcpy(r->err, sqlite3_errmsg(r->conn), sizeof(r->err));
        n = -EIO;
    }
    sqlite3_finalize(st);
    return n;
}

/*
 * A read transaction around a count and its rows (when `on`), so that both
 * see the same committed state while gwd writes (WAL: a reader keeps its
 * snapshot until the transaction ends). read_end passes `rc` through.
 */
static void read_begin(struct db_reader *r, bool on)
{
    if (on)
        sqlite3_exec(r->conn, "BEGIN", NULL, NULL, NULL);
}

static int read_end(struct db_reader *r, bool on, int rc)
{
    if (on && !sqlite3_get_autocommit(r->conn))
        sqlite3_exec(r->conn, "COMMIT", NULL, NULL, NULL);
    return rc;
}

struct session_ctx {
    db_session_fn fn;
    void *arg;
};

static int session_row_cb(sqlite3_stmt *st, void *p)
{
    struct session_ctx *c = p;
    struct db_session_row row;
    read_session_row(st, &row);
    return c->fn(c->arg, &row);
}

int db_query_sessions(struct db_reader *r, const struct db_session_query *q, db_session_fn fn,
                      void *arg, uint64_t *total)
{
    struct where w;
    char order[160], sql[1600];
    struct session_ctx ctx = {fn, arg};
    int rc;

    r->err[0] = '\0';
    if ((rc = session_where(&w, q)) < 0 ||
        (rc = session_order_by(q != NULL ? q->sort : NULL, order, sizeof(order))) < 0) {
        db__strlcpy(r->err, "bad session query (unknown sort key or state)", sizeof(r->err));
        return rc;
    }
    /* The count and the rows from one snapshot, while gwd writes. */
    read_begin(r, total != NULL);
    if (total != NULL && (rc = count_rows(r, "nat_sessions", &w, total)) < 0)
        return read_end(r, total != NULL, rc);
    int64_t limit = q != NULL && q->limit != 0 ? (int64_t)q->limit : -1;
    int64_t offset = q != NULL ? (int64_t)q->offset : 0;
    snprintf(sql, sizeof(sql), "SELECT %s FROM nat_sessions%s%s LIMIT %" PRId64 " OFFSET %" PRId64,
             session_cols, w.sql, order, limit, offset);
    sqlite3_stmt *st = prepare(r, sql, &w);
    if (st == NULL)
        return read_end(r, total != NULL, -EIO);
    return read_end(r, total != NULL, run_rows(r, st, session_row_cb, &ctx));
}

/*
 * Whois is one statement over the index nat_sessions_whois (whois_key,
 * nat_port): the sessions still open (whois_key NULL) with that port, then,
 * for each level L of whois_key (see db__whois_key), the closed sessions
 * with that port in the one or two close-time buckets that can hold a
 * session of that level alive at T. At most 2 * DB_WHOIS_LEVELS seeks,
 * however many sessions the store keeps; the time and address checks are
 * then the same as a plain scan would make, so the answer is exact.
 */
void db__whois_sql(char *buf, size_t len, bool proto)
{
    const char *p = proto ? " AND proto = ?4" : "";
    snprintf(buf, len,
             "WITH RECURSIVE lv(l) AS (SELECT 0 UNION ALL SELECT l + 1 FROM lv WHERE l < %d),"
             " k(key) AS (SELECT (l << %d) | (?5 >> l) FROM lv"
             " UNION SELECT (l << %d) | ((?5 + (1 << l) - 1) >> l) FROM lv)"
             " SELECT %s FROM nat_sessions WHERE whois_key IS NULL AND nat_port = ?2"
             " AND nat_ip = ?1 AND opened_at <= ?3 AND (closed_at IS NULL OR closed_at > ?3)%s"
             " UNION ALL"
             " SELECT %s FROM nat_sessions WHERE whois_key IN k AND nat_port = ?2"
             " AND nat_ip = ?1 AND opened_at <= ?3 AND (closed_at IS NULL OR closed_at > ?3)%s"
             " ORDER BY opened_at DESC, id DESC",
             DB_WHOIS_LEVELS - 1, DB_WHOIS_SHIFT, DB_WHOIS_SHIFT, session_cols, p, session_cols, p);
}

int db_whois(struct db_reader *r, uint8_t proto, const struct nat_addr *nat_ip, uint16_t nat_port,
             uint64_t at_ms, struct db_session_row *out, size_t max)
{
    char sql[1400], ip[NAT_ADDR_STRLEN], t[DB_TIME_STRLEN];
    sqlite3_stmt *st;
    int n = 0, rc;

    r->err[0] = '\0';
    db__whois_sql(sql, sizeof(sql), proto != 0);
    if (sqlite3_prepare_v2(r->conn, sql, -1, &st, NULL) != SQLITE_OK) {
        db__strlcpy(r->err, sqlite3_errmsg(r->conn), sizeof(r->err));
        return -EIO;
    }
    /* The time as stored: clamped like the text. */
    uint64_t at_s = db_time_clamp(at_ms) / 1000;
    sqlite3_bind_text(st, 1, db__addr_format(nat_ip->b, ip), -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, nat_port);
    sqlite3_bind_text(st, 3, db_time_format(at_ms, t), -1, SQLITE_STATIC);
    if (proto != 0)
        sqlite3_bind_text(st, 4, db__proto_name(proto), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)at_s);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if ((size_t)n < max)
            read_session_row(st, &out[n]);
        n++;
    }
    if (rc != SQLITE_DONE) {
        db__strlcpy(r->err, sqlite3_errmsg(r->conn), sizeof(r->err));
        n = -EIO;
    }
    sqlite3_finalize(st);
    return n;
}

/*
 * Whois by port block. The log's block rows are in the partial index
 * nat_events_blocks (nat_ip, nat_port, id); every statement below names the
 * index's own condition (BLOCK_ROWS) so that the planner may use it. Per
 * candidate block start, descending from the port: the start's last block row
 * at T (one seek); when that is an alloc whose range holds the port, the
 * block was held then, and the start's next row (one seek) is its free. One
 * layout of blocks holds the port in the first start at or below it; a store
 * written with several layouts over time (block_size or the port range
 * changed between runs) needs a few starts more, up to WHOIS_BLOCK_STARTS.
 */
#define BLOCK_ROWS "event IN ('block_alloc', 'block_free')"
#define WHOIS_BLOCK_STARTS 64

enum { WB_LAST_ID, WB_START, WB_AT, WB_NEXT, WB_COUNT };

void db__whois_block_sql(int which, char *buf, size_t len)
{
    switch (which) {
    case WB_LAST_ID: /* the last log row written at or before T */
        snprintf(buf, len, "SELECT id FROM nat_events WHERE time <= ?1"
                           " ORDER BY time DESC, id DESC LIMIT 1");
        break;
    case WB_START: /* the next block start at or below a port */
        snprintf(buf, len,
                 "SELECT nat_port FROM nat_events WHERE " BLOCK_ROWS
                 " AND nat_ip = ?1 AND nat_port <= ?2 ORDER BY nat_port DESC LIMIT 1");
        break;
    case WB_AT: /* a start's last block row at T */
        snprintf(buf, len,
                 "SELECT %s FROM nat_events WHERE " BLOCK_ROWS " AND nat_ip = ?1 AND nat_port = ?2"
                 " AND id <= ?3 AND time <= ?4 ORDER BY id DESC LIMIT 1",
                 event_cols);
        break;
    default: /* the row after it: the free that ended the hold */
        snprintf(buf, len,
                 "SELECT time, reason FROM nat_events WHERE " BLOCK_ROWS
                 " AND nat_ip = ?1 AND nat_port = ?2 AND id > ?3 ORDER BY id LIMIT 1");
        break;
    }
}

/* Steps st once: 1 with a row, 0 without, -EIO (r->err set). */
static int step_one(struct db_reader *r, sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        return 1;
    if (rc == SQLITE_DONE)
        return 0;
    db__strlcpy(r->err, sqlite3_errmsg(r->conn), sizeof(r->err));
    return -EIO;
}

static int whois_block_run(struct db_reader *r, sqlite3_stmt **st, const char *ip,
                           uint16_t nat_port, const char *t, struct db_block_hold *out)
{
    int rc;

    sqlite3_bind_text(st[WB_LAST_ID], 1, t, -1, SQLITE_STATIC);
    if ((rc = step_one(r, st[WB_LAST_ID])) <= 0)
        return rc; /* nothing logged by then */
    sqlite3_int64 last_id = sqlite3_column_int64(st[WB_LAST_ID], 0);

    int below = nat_port;
    for (int n = 0; n < WHOIS_BLOCK_STARTS && below >= 0; n++) {
        sqlite3_reset(st[WB_START]);
        sqlite3_bind_text(st[WB_START], 1, ip, -1, SQLITE_STATIC);
        sqlite3_bind_int(st[WB_START], 2, below);
        if ((rc = step_one(r, st[WB_START])) <= 0)
            return rc; /* no block starts at or below: nobody */
        int start = sqlite3_column_int(st[WB_START], 0);
        below = start - 1;

        sqlite3_stmt *at = st[WB_AT];
        sqlite3_reset(at);
        sqlite3_bind_text(at, 1, ip, -1, SQLITE_STATIC);
        sqlite3_bind_int(at, 2, start);
        sqlite3_bind_int64(at, 3, last_id);
        sqlite3_bind_text(at, 4, t, -1, SQLITE_STATIC);
        if ((rc = step_one(r, at)) < 0)
            return rc;
        if (rc == 0)
            continue; /* first taken after T */
        struct db_event_row row;
        read_event_row(at, &row);
        if (strcmp(row.event, "block_alloc") != 0 || row.nat_port_last < nat_port)
            continue; /* free at T, or a block of another layout */

        memset(out, 0, sizeof(*out));
        out->alloc = row;
        sqlite3_stmt *next = st[WB_NEXT];
        sqlite3_bind_text(next, 1, ip, -1, SQLITE_STATIC);
        sqlite3_bind_int(next, 2, start);
        sqlite3_bind_int64(next, 3, (sqlite3_int64)row.id);
        if ((rc = step_one(r, next)) < 0)
            return rc;
        if (rc == 1) {
            col_text(next, 0, out->freed_at, sizeof(out->freed_at));
            col_text(next, 1, out->free_reason, sizeof(out->free_reason));
        }
        return 1;
    }
    return 0;
}

int db_whois_block(struct db_reader *r, const struct nat_addr *nat_ip, uint16_t nat_port,
                   uint64_t at_ms, struct db_block_hold *out)
{
    sqlite3_stmt *st[WB_COUNT] = {NULL};
    char sql[600], ip[NAT_ADDR_STRLEN], t[DB_TIME_STRLEN];
    int rc = 0;

    r->err[0] = '\0';
    for (int i = 0; i < WB_COUNT && rc == 0; i++) {
        db__whois_block_sql(i, sql, sizeof(sql));
        if (sqlite3_prepare_v2(r->conn, sql, -1, &st[i], NULL) != SQLITE_OK) {
            db__strlcpy(r->err, sqlite3_errmsg(r->conn), sizeof(r->err));
            rc = -EIO;
        }
    }
    if (rc == 0) {
        /* One snapshot for the several statements, while gwd writes. */
        read_begin(r, true);
        rc = whois_block_run(r, st, db__addr_format(nat_ip->b, ip), nat_port,
                             db_time_format(at_ms, t), out);
        for (int i = 0; i < WB_COUNT; i++)
            sqlite3_reset(st[i]);
        read_end(r, true, 0);
    }
    for (int i = 0; i < WB_COUNT; i++)
        sqlite3_finalize(st[i]);
    return rc;
}

static int event_where(struct where *w, const struct db_event_query *q)
{
    char t[DB_TIME_STRLEN];
    memset(w, 0, sizeof(*w));
    if (q == NULL)
        return 0;
    where_common(w, q->proto, q->has_client, &q->client, q->client_plen, q->has_nat_ip, &q->nat_ip,
                 q->nat_port_lo, q->nat_port_hi, q->backend, true);
    if (q->event != NULL && strcmp(q->event, "block") == 0)
        where_add(w, BLOCK_ROWS); /* both block events */
    else if (q->event != NULL)
        where_add(w, "event = ?%d", bind_text(w, q->event));
    if (q->session_id != 0)
        where_add(w, "session_id = ?%d", bind_int(w, (int64_t)q->session_id));
    if (q->has_since) {
        time_text(q->since_ms, t);
        where_add(w, "time >= ?%d", bind_text(w, t));
    }
    if (q->has_until) {
        time_text(q->until_ms, t);
        where_add(w, "time <= ?%d", bind_text(w, t));
    }
    return w->overflow ? -EINVAL : 0;
}

struct event_ctx {
    db_event_fn fn;
    void *arg;
};

static int event_row_cb(sqlite3_stmt *st, void *p)
{
    struct event_ctx *c = p;
    struct db_event_row row;
    read_event_row(st, &row);
    return c->fn(c->arg, &row);
}

int db_query_events(struct db_reader *r, const struct db_event_query *q, db_event_fn fn, void *arg,
                    uint64_t *total)
{
    struct where w;
    char sql[1600];
    struct event_ctx ctx = {fn, arg};
    int rc;

    r->err[0] = '\0';
    if ((rc = event_where(&w, q)) < 0) {
        db__strlcpy(r->err, "bad event query", sizeof(r->err));
        return rc;
    }
    read_begin(r, total != NULL);
    if (total != NULL && (rc = count_rows(r, "nat_events", &w, total)) < 0)
        return read_end(r, total != NULL, rc);
    const char *d = q != NULL && q->desc ? "DESC" : "ASC";
    int64_t limit = q != NULL && q->limit != 0 ? (int64_t)q->limit : -1;
    int64_t offset = q != NULL ? (int64_t)q->offset : 0;
    snprintf(sql, sizeof(sql),
             "SELECT %s FROM nat_events%s ORDER BY time %s, id %s LIMIT %" PRId64
             " OFFSET %" PRId64,
             event_cols, w.sql, d, d, limit, offset);
    sqlite3_stmt *st = prepare(r, sql, &w);
    if (st == NULL)
        return read_end(r, total != NULL, -EIO);
    return read_end(r, total != NULL, run_rows(r, st, event_row_cb, &ctx));
}

/* ---- export ------------------------------------------------------------- */

struct export_ctx {
    FILE *out;
    enum db_format fmt;
    bool first;
};

static void csv_text(FILE *f, const char *s)
{
    if (strpbrk(s, ",\"\r\n") == NULL) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s != '\0'; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void json_text(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        switch (*p) {
        case '"':
            fputs("\\\"", f);
            break;
        case '\\':
            fputs("\\\\", f);
            break;
        case '\n':
            fputs("\\n", f);
            break;
        case '\r':
            fputs("\\r", f);
            break;
        case '\t':
            fputs("\\t", f);
            break;
        default:
            if (*p < 0x20)
                fprintf(f, "\\u%04x", *p);
            else
                fputc(*p, f);
        }
    }
    fputc('"', f);
}

/* One field of a row; `null` writes SQL NULL (empty in CSV, null in JSON). */
struct field {
    const char *name;
    const char *text; /* NULL = integer */
    uint64_t num;
    bool null;
};

static void put_header(struct export_ctx *c, const struct field *f, size_t n)
{
    if (c->fmt != DB_FORMAT_CSV || !c->first)
        return;
    for (size_t i = 0; i < n; i++)
        fprintf(c->out, "%s%s", i > 0 ? "," : "", f[i].name);
    fputs("\r\n", c->out);
}

static void put_row(struct export_ctx *c, const struct field *f, size_t n)
{
    put_header(c, f, n);
    c->first = false;
    if (c->fmt == DB_FORMAT_JSONL)
        fputc('{', c->out);
    for (size_t i = 0; i < n; i++) {
        if (c->fmt == DB_FORMAT_CSV) {
            if (i > 0)
                fputc(',', c->out);
            if (f[i].null)
                continue;
            if (f[i].text != NULL)
                csv_text(c->out, f[i].text);
            else
                fprintf(c->out, "%" PRIu64, f[i].num);
        } else {
            fprintf(c->out, "%s\"%s\":", i > 0 ? "," : "", f[i].name);
            if (f[i].null)
                fputs("null", c->out);
            else if (f[i].text != NULL)
                json_text(c->out, f[i].text);
            else
                fprintf(c->out, "%" PRIu64, f[i].num);
        }
    }
    fputs(c->fmt == DB_FORMAT_CSV ? "\r\n" : "}\n", c->out);
}

#define TEXT(n, v)                                                                                 \
    {                                                                                              \
        (n), (v), 0, false                                                                         \
    }
#define NUM(n, v)                                                                                  \
    {                                                                                              \
        (n), NULL, (v), false                                                                      \
    }

static int export_session(void *arg, const struct db_session_row *r)
{
    struct field f[] = {
        NUM("id", r->id),
        TEXT("proto", r->proto_name),
        TEXT("client_ip", r->client_ip),
        NUM("client_port", r->client_port),
        TEXT("nat_ip", r->nat_ip),
        NUM("nat_port", r->nat_port),
        TEXT("backend", r->backend),
        TEXT("backend_ip", r->backend_ip),
        NUM("backend_port", r->backend_port),
        TEXT("state", r->state),
        TEXT("opened_at", r->opened_at),
        TEXT("last_seen", r->last_seen),
        {"closed_at", r->closed_at, 0, r->open},
        {"close_reason", r->close_reason, 0, r->open},
        NUM("bytes_in", r->bytes_in),
        NUM("bytes_out", r->bytes_out),
    };
    put_row(arg, f, sizeof(f) / sizeof(f[0]));
    return 0;
}

static int export_event(void *arg, const struct db_event_row *r)
{
    bool refuse = r->nat_ip[0] == '\0';
    bool ends = strcmp(r->event, "close") == 0 || strcmp(r->event, "expire") == 0;
    bool block = r->nat_port_last != 0;
    struct field f[] = {
        NUM("id", r->id),
        TEXT("time", r->time),
        TEXT("event", r->event),
        TEXT("proto", r->proto_name),
        TEXT("client_ip", r->client_ip),
        NUM("client_port", r->client_port),
        {"nat_ip", r->nat_ip, 0, refuse},
        {"nat_port", NULL, r->nat_port, refuse},
        TEXT("backend", r->backend),
        {"backend_ip", r->backend_ip, 0, block},
        {"backend_port", NULL, r->backend_port, block},
        {"session_id", NULL, r->session_id, r->session_id == 0},
        {"reason", r->reason, 0, r->reason[0] == '\0'},
        {"bytes_in", NULL, r->bytes_in, !ends},
        {"bytes_out", NULL, r->bytes_out, !ends},
        {"nat_port_last", NULL, r->nat_port_last, !block},
    };
    put_row(arg, f, sizeof(f) / sizeof(f[0]));
    return 0;
}

static int export_done(struct export_ctx *c, int n)
{
    if (n < 0)
        return n;
    if (fflush(c->out) != 0 || ferror(c->out))
        return -EIO;
    return n;
}

int db_export_sessions(struct db_reader *r, const struct db_session_query *q, FILE *out,
                       enum db_format fmt)
{
    struct export_ctx c = {out, fmt, true};
    return export_done(&c, db_query_sessions(r, q, export_session, &c, NULL));
}

int db_export_events(struct db_reader *r, const struct db_event_query *q, FILE *out,
                     enum db_format fmt)
{
    struct export_ctx c = {out, fmt, true};
    return export_done(&c, db_query_events(r, q, export_event, &c, NULL));
}
