/*
 * db.h - libgwdb, the SQLite NAT store: schema and migrations, the
 * write-behind queue and its writer thread, the translation log, retention,
 * and the queries gwd and gwctl share. Depends on libnat's types only; no
 * sockets, no libev, no logging (it reports, the caller logs).
 *
 * Two halves:
 *   - struct db: the writer. gwd opens one, hands events over with
 *     db_submit() (O(1), never blocks, never touches SQLite) and a thread of
 *     its own writes them in batches (a second one runs the checkpoints).
 *     See docs/store.md for the design.
 *   - struct db_reader: a read-only connection for queries (gwctl --db, gwd's
 *     own reads). Works while another process writes (WAL mode).
 *
 * Times in the store are ISO-8601 UTC text with milliseconds, fixed width
 * ("2026-11-27T16:31:25.123Z"), so they sort and compare as text; in the API
 * they are milliseconds since the Unix epoch (uint64_t).
 *
 * Errors: functions return 0 or a negative errno; those taking `err, errlen`
 * also write a sentence for people there (it may be NULL).
 */
#ifndef GW_DB_H
#define GW_DB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "nat/nat.h"

/* The schema version this build writes (PRAGMA user_version). */
#define DB_SCHEMA_VERSION 4
/* PRAGMA application_id of a gw store ("gwDB"): how a gw file is told apart. */
#define DB_APPLICATION_ID 0x67774442

/* "2026-11-27T16:31:25.123Z" + NUL. */
#define DB_TIME_STRLEN 25
/* Longest backend (pool) name kept, with the NUL; longer names are cut. */
#define DB_NAME_MAX 64
/* Longest reason / event / state token kept, with the NUL. */
#define DB_TOKEN_MAX 24
/* Longest error text in struct db_stats and db_status_poll(), with the NUL. */
#define DB_ERR_MAX 256

/* ---- time helpers (used by everyone) ------------------------------------ */

/* The last time the fixed-width form can write: 9999-12-31T23:59:59.999Z. */
#define DB_TIME_MAX_MS 253402300799999ULL

/* ms, or DB_TIME_MAX_MS when later: the time as the fixed-width form stores it. */
static inline uint64_t db_time_clamp(uint64_t ms)
{
    return ms < DB_TIME_MAX_MS ? ms : DB_TIME_MAX_MS;
}

/*
 * Writes `ms` (milliseconds since the epoch) as ISO-8601 UTC with
 * milliseconds, always 24 characters ("2026-11-27T16:31:25.123Z"), into buf.
 * Times past 9999-12-31T23:59:59.999Z are written as that. Returns buf.
 */
char *db_time_format(uint64_t ms, char buf[DB_TIME_STRLEN]);

/*
 * Parses a time: "YYYY-MM-DDTHH:MM:SS[.mmm][Z]", the same with a space
 * instead of the T, "YYYY-MM-DD" (midnight), all taken as UTC, or a plain
 * integer of seconds since the epoch. Returns 0 and *ms, or -EINVAL (then
 * *ms is untouched).
 */
int db_time_parse(const char *s, uint64_t *ms);

/* ---- the writer --------------------------------------------------------- */

struct db;

/* A clock for retention; NULL in db_options means CLOCK_REALTIME in ms. */
typedef uint64_t (*db_clock_fn)(void *arg);

struct db_options {
    const char *path;           /* borrowed: a file, or ":memory:" (no readers then) */
    uint32_t queue_capacity;    /* records the queue holds; rounded up to a power of 2 */
    uint32_t flush_ms;          /* how long the writer lets a batch gather (<= 100) */
    uint32_t batch_max;         /* records per transaction at most (fewer when slow) */
    uint64_t retention_ms;      /* prune events and closed sessions older than this; 0 = keep */
    uint32_t prune_interval_ms; /* how often a pruning pass starts */
    uint32_t prune_step;        /* rows deleted per pruning transaction */
    uint32_t retry_ms;          /* wait between attempts while the store cannot write */
    uint32_t close_timeout_ms;  /* how long db_close keeps retrying a failing store */
    uint32_t busy_timeout_ms;   /* SQLite busy timeout of the writer's connection */
    uint32_t cache_kib;         /* SQLite page cache of the writer's connection */
    int thread_nice;            /* the store's threads run this much nicer than the
                                 * opener (0..19): the data path keeps its core */
    bool log_flows;             /* true: every event gets a nat_events row; false
                                 * (log "blocks"): only refusals and block events do,
                                 * the flows are in nat_sessions alone */
    db_clock_fn clock;          /* NULL = wall clock; tests pass their own */
    void *clock_arg;
};

/*
 * Fills *o with the defaults: path NULL (caller sets it), queue 32768
 * records (about 6.5 MiB), flush 50 ms, batch up to 16384, retention 7 days, prune
 * every 10 s in steps of 2000 rows, retry 200 ms, close timeout 5 s, busy
 * timeout 100 ms, an 8 MiB page cache, threads 10 nice steps below the caller.
 */
void db_options_default(struct db_options *o);

/*
 * Opens (creating when missing or empty) the store at o->path and starts its
 * writer thread. Migrates an older gw store to DB_SCHEMA_VERSION. Refuses,
 * writing nothing, with a sentence in err saying which and what to do:
 *   -EBADMSG  not an SQLite database at all (garbage, another kind of file)
 *   -EIO      an SQLite database that is corrupt (or an I/O error reading it)
 *   -EINVAL   an SQLite database that is not a gw store (foreign tables)
 *   -ENOTSUP  a gw store made by a newer gw (schema version above ours)
 *   -EROFS    a file (or directory) this process cannot write
 *   -ENOMEM, -EAGAIN (thread), -EINVAL (bad options)
 *   -EBUSY    locked by another process
 * Sessions a previous run left open are closed with reason "restart" (and
 * logged as close events), closed_at = the latest time found in the store.
 * Returns 0 and *out, or a negative errno.
 */
int db_open(struct db **out, const struct db_options *o, char *err, size_t errlen);

/*
 * Flushes everything submitted (db_flush), stops and joins the writer,
 * closes the file. Returns 0, or a negative errno when records had to be
 * given up because the store still could not write after close_timeout_ms
 * (they are counted as dropped). NULL is a no-op returning 0.
 */
int db_close(struct db *db);

/* The largest session id in the store when it was opened (0 when none): gwd
 * sets nat_config.first_id to this + 1. */
uint64_t db_max_session_id(const struct db *db);

/* How many sessions db_open closed with reason "restart". */
uint64_t db_restart_closed(const struct db *db);

/*
 * Data path. Hands a libnat event over to the writer: O(1) (a copy of about
 * 200 bytes and one compare-and-swap), never blocks, never touches SQLite,
 * safe from any thread (a lock-free bounded multi-producer queue). The event
 * is copied: `ev` and `backend_name` (may be NULL = "", cut at DB_NAME_MAX-1
 * bytes) need not outlive the call. OPEN inserts the session and
 * logs it; CLOSE/EXPIRE log it and close the session row (creating it when
 * its OPEN was lost); REFUSE is logged only. Returns 0, or -ENOBUFS when the
 * queue is full (the event is dropped and counted).
 */
int db_submit(struct db *db, const struct nat_event *ev, const char *backend_name);

/*
 * Data path. Records the progress of a live session (state, last_seen,
 * bytes_in, bytes_out, and nat ip/port: call it after nat_session_repick)
 * for its row, if the row exists and is still open. Not logged as an event.
 * gwd calls it on state changes, after a repick, and now and then for busy
 * sessions. Same cost and return values as db_submit().
 */
int db_submit_update(struct db *db, const struct nat_session *s);

/*
 * Waits until everything submitted before the call is written. Returns 0, or
 * the negative errno of the failure when the writer tried and could not
 * write (the records stay queued and are retried). Not for the data path.
 */
int db_flush(struct db *db);

/*
 * Runs `sql` on the writer's own connection, in the writer thread, between
 * two batches, and waits for it. For maintenance and tests (e.g. "PRAGMA
 * max_page_count=100", "PRAGMA query_only=1", "PRAGMA
 * wal_checkpoint(TRUNCATE)"). Not for the data path. Returns 0 or -EIO (and
 * the SQLite message in err).
 */
int db_writer_exec(struct db *db, const char *sql, char *err, size_t errlen);

struct db_stats {
    uint64_t submitted;       /* records accepted by db_submit/db_submit_update */
    uint64_t written;         /* records committed */
    uint64_t dropped;         /* records refused (queue full) or given up at close */
    uint64_t skipped;         /* records SQLite rejected as data (should stay 0) */
    uint64_t batches;         /* transactions committed */
    uint64_t errors;          /* failed write attempts */
    uint64_t episodes;        /* times the store went from writing to failing */
    uint64_t pruned_events;   /* nat_events rows removed by retention */
    uint64_t pruned_sessions; /* nat_sessions rows removed by retention */
    uint32_t max_txn_ms;      /* longest write transaction so far (commit included) */
    uint32_t queue_depth;     /* records waiting now */
    uint32_t queue_capacity;
    bool degraded;               /* the store is failing to write right now */
    char last_error[DB_ERR_MAX]; /* the latest failure, "" when none ever */
};

/* Fills *out with the counters. Cheap (a mutex held briefly); not for the
 * data path. */
void db_get_stats(struct db *db, struct db_stats *out);

enum db_status {
    DB_STATUS_SAME = 0,  /* nothing new since the last poll */
    DB_STATUS_FAILING,   /* an episode of failures began: msg says why */
    DB_STATUS_RECOVERED, /* writing works again: msg says how much was dropped */
};

/*
 * Reports failure episodes once each: returns DB_STATUS_FAILING once when
 * the store starts failing, DB_STATUS_RECOVERED once when it writes again,
 * else DB_STATUS_SAME, with a sentence in msg for the first two. gwd polls it
 * (e.g. once a second) and logs what it returns. One poller per db.
 */
enum db_status db_status_poll(struct db *db, char *msg, size_t msglen);

/* ---- readers and queries ------------------------------------------------ */

struct db_reader;

/*
 * Opens the store at `path` read-only (no write, no migration; works while
 * gwd writes). Refuses what db_open refuses, and a store of another schema
 * version. Returns 0 and *out, or a negative errno and a sentence in err.
 */
int db_reader_open(struct db_reader **out, const char *path, char *err, size_t errlen);

/* Closes the reader. NULL is a no-op. */
void db_reader_close(struct db_reader *r);

/* The last SQLite error text of the reader ("" when none). */
const char *db_reader_error(const struct db_reader *r);

enum db_open_filter {
    DB_SESSIONS_ANY = 0,
    DB_SESSIONS_OPEN,   /* closed_at IS NULL */
    DB_SESSIONS_CLOSED, /* closed_at IS NOT NULL */
};

/* Which sessions a query is about; db_session_query_init() = all. */
struct db_session_query {
    uint8_t proto; /* 0 = any, else NAT_PROTO_TCP/UDP */
    bool has_client;
    struct nat_addr client; /* with client_plen (over the 16-byte form): IP or CIDR */
    uint8_t client_plen;    /* 128 = that address only */
    bool has_nat_ip;
    struct nat_addr nat_ip;
    uint16_t nat_port_lo, nat_port_hi; /* inclusive; 0,0 = any; hi 0 = up to 65535 */
    const char *backend;               /* borrowed; NULL = any */
    int state;                         /* -1 = any, else enum nat_state */
    enum db_open_filter open;
    /* Sessions alive at some moment of [since, until] (a session is alive
     * over [opened_at, closed_at)); each bound only when its has_ flag is set
     * (0 is a time like any other: the epoch). */
    bool has_since, has_until;
    uint64_t since_ms, until_ms;
    const char *sort;  /* NULL = "id"; a column name, '-' prefix = descending */
    uint32_t limit;    /* 0 = no limit */
    uint32_t offset;
};

/* Sets *q to match every session, sorted by id, unlimited. */
void db_session_query_init(struct db_session_query *q);

/* Sort keys accepted in db_session_query.sort (without the '-'). NULL-ended. */
extern const char *const db_session_sort_keys[];

/* One nat_sessions row. Text fields are NUL-terminated; "" for SQL NULL. */
struct db_session_row {
    uint64_t id;
    uint8_t proto; /* NAT_PROTO_TCP/UDP */
    char proto_name[8];
    char client_ip[NAT_ADDR_STRLEN];
    uint16_t client_port;
    char nat_ip[NAT_ADDR_STRLEN];
    uint16_t nat_port;
    char backend[DB_NAME_MAX];
    char backend_ip[NAT_ADDR_STRLEN];
    uint16_t backend_port;
    char state[DB_TOKEN_MAX];
    char opened_at[DB_TIME_STRLEN];
    char last_seen[DB_TIME_STRLEN];
    char closed_at[DB_TIME_STRLEN];                    /* "" while open */
    char close_reason[DB_TOKEN_MAX];                   /* "" while open */
    uint64_t opened_at_ms, last_seen_ms, closed_at_ms; /* closed_at_ms 0 while open */
    bool open;                                         /* closed_at IS NULL */
    uint64_t bytes_in;                                 /* client -> backend */
    uint64_t bytes_out;                                /* backend -> client */
};

/* Called once per row; return non-zero to stop early. The row is valid only
 * during the call. */
typedef int (*db_session_fn)(void *arg, const struct db_session_row *r);

/*
 * Calls fn for each session matching q, in q->sort order, limit/offset
 * applied. When total is not NULL it receives the count of matches without
 * limit/offset. Returns the number of rows fn was called for (>= 0), or
 * -EINVAL (bad sort key, bad query) or -EIO (db_reader_error says why).
 */
int db_query_sessions(struct db_reader *r, const struct db_session_query *q, db_session_fn fn,
                      void *arg, uint64_t *total);

/*
 * Who held nat_ip:nat_port at time at_ms: the sessions of protocol `proto`
 * (0 = any) with that external endpoint whose lifetime [opened_at, closed_at)
 * contains at_ms (an open session holds it from opened_at on). Several can
 * match with ADM/APDM mappings or EIM reuse toward different backends. Writes
 * up to `max` of them into out, latest opened first, and returns how many
 * matched (possibly more than max; 0 = nobody), or -EIO. One indexed query.
 */
int db_whois(struct db_reader *r, uint8_t proto, const struct nat_addr *nat_ip, uint16_t nat_port,
             uint64_t at_ms, struct db_session_row *out, size_t max);

/* Which log events a query is about; db_event_query_init() = all. */
struct db_event_query {
    uint8_t proto; /* 0 = any */
    bool has_client;
    struct nat_addr client;
    uint8_t client_plen;
    bool has_nat_ip;
    struct nat_addr nat_ip;
    uint16_t nat_port_lo, nat_port_hi; /* 0,0 = any */
    const char *backend;               /* NULL = any */
    const char *event;                 /* NULL = any; "open", "close", "expire", "refuse",
                                          "repick", "block_alloc", "block_free", or "block"
                                          (both block events) */
    uint64_t session_id;               /* 0 = any */
    bool has_since, has_until;         /* which bounds of the window are set */
    uint64_t since_ms, until_ms;       /* time window, inclusive */
    bool desc;                         /* newest first (default oldest first) */
    uint32_t limit;                    /* 0 = no limit */
    uint32_t offset;
};

/* Sets *q to match every event, oldest first, unlimited. */
void db_event_query_init(struct db_event_query *q);

/* One nat_events row. "" / 0 for SQL NULL (a refuse has no nat ip, port, session). */
struct db_event_row {
    uint64_t id;
    char time[DB_TIME_STRLEN];
    uint64_t time_ms;
    char event[DB_TOKEN_MAX]; /* "open", "close", "expire", "refuse", "repick",
                                 "block_alloc", "block_free" */
    uint8_t proto;
    char proto_name[8];
    char client_ip[NAT_ADDR_STRLEN];
    uint16_t client_port;
    char nat_ip[NAT_ADDR_STRLEN];
    uint16_t nat_port;
    char backend[DB_NAME_MAX];
    char backend_ip[NAT_ADDR_STRLEN];
    uint16_t backend_port;
    uint64_t session_id;
    char reason[DB_TOKEN_MAX];    /* "" for open */
    uint64_t bytes_in, bytes_out; /* close/expire only */
    uint16_t nat_port_last;       /* block events: the block's last port; else 0 */
};

typedef int (*db_event_fn)(void *arg, const struct db_event_row *r);

/* Like db_query_sessions, for the log (gwctl --db log). */
int db_query_events(struct db_reader *r, const struct db_event_query *q, db_event_fn fn, void *arg,
                    uint64_t *total);

/*
 * Who held nat_ip:nat_port at time at_ms by port block (the block policy,
 * RFC 7422): the block_alloc row of the block containing the port that was
 * held at at_ms, from the log's block rows. Blocks belong to a client IP, not
 * to a protocol. *alloc gets that row; freed_at the time of the block_free
 * that ended the hold ("" while the log shows it still held) and free_reason
 * its reason. Returns 1 when a block held the port, 0 when none did (or the
 * store has no block rows), -EIO. A few index seeks, however long the log.
 */
struct db_block_hold {
    struct db_event_row alloc;
    char freed_at[DB_TIME_STRLEN];
    char free_reason[DB_TOKEN_MAX];
};

int db_whois_block(struct db_reader *r, const struct nat_addr *nat_ip, uint16_t nat_port,
                   uint64_t at_ms, struct db_block_hold *out);

enum db_format {
    DB_FORMAT_CSV = 0, /* RFC 4180, a header line with the column names */
    DB_FORMAT_JSONL,   /* one JSON object per line, the column names as keys */
};

/* Writes the sessions matching q (NULL = all) to out. Returns the number of
 * rows written, or -EIO (SQLite or write error). */
int db_export_sessions(struct db_reader *r, const struct db_session_query *q, FILE *out,
                       enum db_format fmt);

/* Writes the log events matching q (NULL = all) to out; as above. */
int db_export_events(struct db_reader *r, const struct db_event_query *q, FILE *out,
                     enum db_format fmt);

#endif /* GW_DB_H */
