/*
 * db_int.h - what the files of libgwdb share and callers never see: the
 * schema (db_schema.c) and the address helpers. Not installed, not included
 * outside db/.
 */
#ifndef GW_DB_INT_H
#define GW_DB_INT_H

#include <sqlite3.h>
#include <stdarg.h>

#include "db/db.h"

/* Formats a 16-byte address like nat_addr_format (dotted quad for
 * IPv4-mapped) into buf (NAT_ADDR_STRLEN). Returns buf. */
char *db__addr_format(const uint8_t a[16], char *buf);

/* Parses text into the 16-byte form (IPv4 becomes IPv4-mapped). 0 or -1. */
int db__addr_parse(const char *s, uint8_t out[16]);

/* True when `a` lies in net/plen (plen over the 16-byte form). */
bool db__addr_in_prefix(const uint8_t a[16], const uint8_t net[16], unsigned plen);

/* "tcp"/"udp" or "" for another protocol number; and back (0 when unknown). */
const char *db__proto_name(uint8_t proto);
uint8_t db__proto_parse(const char *s);

/* "new" ... "closed", "" when out of range. */
const char *db__state_name(int st);

/* snprintf into err (which may be NULL). */
void db__err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Copies at most n-1 bytes of s (NULL = "") into dst and terminates it. */
void db__strlcpy(char *dst, const char *s, size_t n);

/* Milliseconds since the epoch, CLOCK_REALTIME. */
uint64_t db__wall_ms(void);

/*
 * Checks that `conn` (just opened on `path`) holds a gw store this build can
 * use, or nothing yet. Reads only. Returns 0 and *version (0 = empty file, a
 * new store), or the negative errno of db_open's list with err filled.
 */
int db__schema_check(sqlite3 *conn, const char *path, int *version, char *err, size_t errlen);

/* Brings an empty or older store to DB_SCHEMA_VERSION, all steps in one
 * transaction. Needs db__register_functions() on conn (step 3 calls
 * gw_whois_key). Returns 0 or -EIO with err filled. */
int db__schema_migrate(sqlite3 *conn, int from, char *err, size_t errlen);

/* Registers gw_in_prefix(ip_text, net_blob, plen) and gw_ip_key(ip_text) on
 * conn. Returns 0 or -EIO. */
int db__register_functions(sqlite3 *conn);

/*
 * Once per process, before the first connection: turns off SQLite's memory
 * statistics (SQLITE_CONFIG_MEMSTATUS), which take a global mutex on every
 * allocation (about 15% of the writer's CPU). A no-op when SQLite was
 * already initialised by someone else.
 */
void db__sqlite_setup(void);

/*
 * "gw-yield" (db_vfs.c): the default VFS, except that a file opened through
 * it calls sched_yield() every few page writes, so that a long COMMIT on the
 * writer thread gives a waiting data path the core. Registered (not as the
 * default) on the first call; returns SQLITE_OK when it can be used.
 */
#define DB_YIELD_VFS "gw-yield"
int db__yield_vfs(void);
/* How many times files opened through it have yielded (tests). */
unsigned long db__yield_vfs_yields(void);

/*
 * nat_sessions.whois_key of a session held from opened_ms to closed_ms (see
 * docs/store.md, "Indexes"): with o and c the two times in whole seconds
 * (clamped like db_time_format) and L the bit length of c - o (0 when
 * c <= o), the key is (L << DB_WHOIS_SHIFT) | (c >> L). A session closed at
 * c that covered time t (o <= t < c, in seconds o <= t <= c) has level L and
 * c >> L in [t >> L, (t + 2^L - 1) >> L]: whois seeks at most two keys per
 * level. Keys of one level grow with the close time, so new entries land at
 * the end of each level's part of the index.
 */
#define DB_WHOIS_SHIFT 38 /* seconds up to 9999-12-31 fit in 38 bits */
#define DB_WHOIS_LEVELS 39
int64_t db__whois_key(uint64_t opened_ms, uint64_t closed_ms);

/*
 * The statement db_whois() runs (one, over nat_sessions_whois), into buf
 * (1400 bytes are enough): ?1 nat_ip text, ?2 nat_port, ?3 the time as
 * text, ?4 the protocol (only when `proto`), ?5 the time in whole seconds.
 * Exposed for the query-plan test.
 */
void db__whois_sql(char *buf, size_t len, bool proto);

/* The statements of db_whois_block (0 .. 3), for the test of their plans. */
void db__whois_block_sql(int which, char *buf, size_t len);

/* Maps an SQLite result code to a negative errno. */
int db__errno_of(int rc);

#endif /* GW_DB_INT_H */
