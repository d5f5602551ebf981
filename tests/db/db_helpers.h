/*
 * db_helpers.h - what the store's tests share: temp directories, libnat
 * events built by hand, raw SQLite peeks. Header-only (static inline).
 */
#ifndef GW_TESTS_DB_HELPERS_H
#define GW_TESTS_DB_HELPERS_H

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "db/db.h"

/* A temp directory per test, holding the store file "gw.db". */
struct tdir {
    char dir[64];
    char path[96];
};

static inline void tdir_make(struct tdir *t)
{
    snprintf(t->dir, sizeof(t->dir), "/tmp/gw-dbtest-XXXXXX");
    cr_assert_not_null(mkdtemp(t->dir));
    snprintf(t->path, sizeof(t->path), "%s/gw.db", t->dir);
}

/* Removes every file in the directory (the db, -wal, -shm) and the directory. */
static inline void tdir_remove(struct tdir *t)
{
    DIR *d = opendir(t->dir);
    struct dirent *e;
    char p[384];
    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof(p), "%s/%s", t->dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(t->dir);
}

static inline struct nat_addr taddr(const char *s)
{
    struct nat_addr a;
    memset(&a, 0, sizeof(a));
    if (inet_pton(AF_INET, s, a.b + 12) == 1) {
        a.b[10] = 0xff;
        a.b[11] = 0xff;
    } else {
        cr_assert_eq(inet_pton(AF_INET6, s, a.b), 1, "bad test address %s", s);
    }
    return a;
}

/* An event for session `id`: client cip:cport -> backend 10.9.0.1:80,
 * translated to nip:nport. */
static inline struct nat_event tev(enum nat_event_type type, uint64_t id, uint8_t proto,
                                   const char *cip, uint16_t cport, const char *nip, uint16_t nport,
                                   uint64_t time, const char *reason)
{
    struct nat_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.type = type;
    ev.time = time;
    ev.reason = reason;
    ev.s.id = type == NAT_EV_REFUSE ? 0 : id;
    ev.s.key.proto = proto;
    ev.s.key.client.addr = taddr(cip);
    ev.s.key.client.port = cport;
    ev.s.key.dst.addr = taddr("10.9.0.1");
    ev.s.key.dst.port = 80;
    if (type != NAT_EV_REFUSE) {
        ev.s.ext.addr = taddr(nip);
        ev.s.ext.port = nport;
    }
    ev.s.opened_at = time;
    ev.s.last_seen = time;
    ev.s.state = type == NAT_EV_OPEN ? NAT_STATE_NEW : NAT_STATE_CLOSED;
    return ev;
}

/* A block event: client cip took (or gave back) nip:lo .. lo + 63. */
static inline struct nat_event block_ev(enum nat_event_type type, const char *cip, const char *nip,
                                        uint16_t lo, uint64_t time)
{
    struct nat_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.type = type;
    ev.time = time;
    ev.s.key.client.addr = taddr(cip);
    ev.s.ext.addr = taddr(nip);
    ev.s.ext.port = lo;
    ev.s.opened_at = ev.s.last_seen = time;
    ev.port_last = (uint16_t)(lo + 63);
    return ev;
}

/* Default options for tests: the path, a short flush. */
static inline struct db_options topts(const char *path)
{
    struct db_options o;
    db_options_default(&o);
    o.path = path;
    o.flush_ms = 5;
    o.retention_ms = 0;
    return o;
}

static inline struct db *topen(const struct db_options *o)
{
    struct db *db = NULL;
    char err[512] = "";
    int rc = db_open(&db, o, err, sizeof(err));
    cr_assert_eq(rc, 0, "db_open: %d %s", rc, err);
    return db;
}

/* A one-integer query on its own connection. */
static inline int64_t tquery_int(const char *path, const char *sql)
{
    sqlite3 *c = NULL;
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    cr_assert_eq(sqlite3_open_v2(path, &c, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_busy_timeout(c, 5000);
    cr_assert_eq(sqlite3_prepare_v2(c, sql, -1, &st, NULL), SQLITE_OK, "%s: %s", sql,
                 sqlite3_errmsg(c));
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(c);
    return v;
}

/* A one-text query (into buf; "" for none). */
static inline char *tquery_text(const char *path, const char *sql, char *buf, size_t n)
{
    sqlite3 *c = NULL;
    sqlite3_stmt *st = NULL;
    buf[0] = '\0';
    cr_assert_eq(sqlite3_open_v2(path, &c, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_busy_timeout(c, 5000);
    cr_assert_eq(sqlite3_prepare_v2(c, sql, -1, &st, NULL), SQLITE_OK, "%s: %s", sql,
                 sqlite3_errmsg(c));
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) != NULL)
        snprintf(buf, n, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(c);
    return buf;
}

/* Runs SQL on a fresh read-write connection. */
static inline void texec(const char *path, const char *sql)
{
    sqlite3 *c = NULL;
    char *msg = NULL;
    cr_assert_eq(sqlite3_open(path, &c), SQLITE_OK);
    sqlite3_busy_timeout(c, 5000);
    int rc = sqlite3_exec(c, sql, NULL, NULL, &msg);
    cr_assert_eq(rc, SQLITE_OK, "%s: %s", sql, msg ? msg : "");
    sqlite3_free(msg);
    sqlite3_close(c);
}

/* Reads a whole file into a malloc'd buffer (*len bytes). */
static inline unsigned char *tslurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    cr_assert_not_null(b);
    cr_assert_eq(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

static inline void twrite_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(data, 1, len, f), len);
    fclose(f);
}

/*
 * Who held ip:port (proto 0 = any) at `at`: the ids, latest opened first,
 * comma-joined into buf, found by the plain query of schema version 2 (no
 * whois index needed: a reference to check db_whois against).
 */
static inline char *tscan_whois(const char *path, uint8_t proto, const char *ip, uint16_t port,
                                uint64_t at, char *buf, size_t n)
{
    char sql[512], t[DB_TIME_STRLEN];
    sqlite3 *c = NULL;
    sqlite3_stmt *st = NULL;
    snprintf(sql, sizeof(sql),
             "SELECT id FROM nat_sessions WHERE nat_ip = ?1 AND nat_port = ?2 AND opened_at <= ?3"
             " AND (closed_at IS NULL OR closed_at > ?3)%s ORDER BY opened_at DESC, id DESC",
             proto == 0               ? ""
             : proto == NAT_PROTO_TCP ? " AND proto = 'tcp'"
                                      : " AND proto = 'udp'");
    cr_assert_eq(sqlite3_open_v2(path, &c, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_prepare_v2(c, sql, -1, &st, NULL), SQLITE_OK, "%s", sqlite3_errmsg(c));
    sqlite3_bind_text(st, 1, ip, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 2, port);
    sqlite3_bind_text(st, 3, db_time_format(at, t), -1, SQLITE_TRANSIENT);
    buf[0] = '\0';
    while (sqlite3_step(st) == SQLITE_ROW) {
        size_t l = strlen(buf);
        snprintf(buf + l, n - l, "%s%lld", l > 0 ? "," : "",
                 (long long)sqlite3_column_int64(st, 0));
    }
    sqlite3_finalize(st);
    sqlite3_close(c);
    return buf;
}

/* The same question asked with db_whois. */
static inline char *twhois(struct db_reader *r, uint8_t proto, const char *ip, uint16_t port,
                           uint64_t at, char *buf, size_t n)
{
    struct db_session_row rows[16];
    struct nat_addr a = taddr(ip);
    int k = db_whois(r, proto, &a, port, at, rows, 16);
    cr_assert_geq(k, 0, "db_whois: %s", db_reader_error(r));
    cr_assert_leq(k, 16);
    buf[0] = '\0';
    for (int i = 0; i < k; i++) {
        size_t l = strlen(buf);
        snprintf(buf + l, n - l, "%s%llu", l > 0 ? "," : "", (unsigned long long)rows[i].id);
    }
    return buf;
}

/* 2026-11-27T16:00:00.000Z, a base time for tests. */
#define T0 1795795200000ULL

#endif /* GW_TESTS_DB_HELPERS_H */
