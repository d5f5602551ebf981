/*
 * db_writer.c - the write-behind half of the store: struct db, the bounded
 * queue the data path hands records to, the writer thread that commits them
 * in batches, retries when the store cannot write, and prunes, and the
 * checkpoint thread beside it.
 *
 * The queue is a bounded multi-producer single-consumer ring of fixed-size
 * cells, each with a sequence number (D. Vyukov's bounded queue): a producer
 * claims a slot with one compare-and-swap on the enqueue position, copies the
 * record in and publishes it with a release store. No lock on the data path,
 * so a producer never waits for the writer, whatever the writer is doing
 * (even a 100 ms fsync or a busy timeout). The writer sleeps on a semaphore
 * when the ring is empty; the first producer after that posts it (one futex
 * wake, no lock: see db_wake_writer), every other hand-over is one CAS.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "db/db_int.h"

#define DB_STR_(x) #x
#define DB_STR(x) DB_STR_(x)

enum db_rec_kind {
    DB_REC_EVENT = 0,
    DB_REC_UPDATE,
};

/* One queued record: what the writer needs, copied out of the caller's structs. */
struct db_rec {
    uint8_t kind; /* enum db_rec_kind */
    uint8_t type; /* enum nat_event_type */
    uint8_t proto;
    uint8_t state;
    uint16_t client_port, dst_port, nat_port, nat_port_last; /* last: block events */
    uint64_t time, id, opened_at, last_seen, bytes_in, bytes_out;
    uint8_t client[16], dst[16], nat[16];
    char reason[DB_TOKEN_MAX];
    char backend[DB_NAME_MAX];
    /* Writer-side only (set after the record leaves the ring): */
    uint32_t end;    /* OPEN: 1 + batch index of its CLOSE/EXPIRE in this batch, or 0 */
    uint32_t moved;  /* OPEN: 1 + batch index of the latest record in this batch with its
                        current nat address (REPICK, UPDATE), or 0 */
    bool no_session; /* the session row is written by an earlier OPEN of this batch */
};

/* Batch index by session id, to write a session once per batch (see coalesce). */
struct db_slot {
    uint64_t id;
    uint32_t idx;
    uint32_t gen;
};

struct db_cell {
    _Atomic uint64_t seq;
    struct db_rec rec;
};

/*
 * Log rows and new session rows are inserted EV_GROUP at a time by one
 * multi-row INSERT: a statement's fixed cost (VDBE start and halt, opening
 * and closing the table's and index's cursors) is then paid once per
 * EV_GROUP rows. 64 measured about 8% less CPU per event than 16 in a burst
 * and the same at gwd's steady rates (bench/RESULTS.md).
 */
#define EV_GROUP 64
#define EV_COLS 15

/* The text of one staged log row (SQLITE_STATIC binds point into it). */
struct db_ev_text {
    char t[DB_TIME_STRLEN];
    char client[NAT_ADDR_STRLEN], dst[NAT_ADDR_STRLEN], nat[NAT_ADDR_STRLEN];
};

#define SE_COLS 17

/* The text of one staged session row. */
struct db_se_text {
    char t[DB_TIME_STRLEN], t_open[DB_TIME_STRLEN], t_seen[DB_TIME_STRLEN];
    char client[NAT_ADDR_STRLEN], dst[NAT_ADDR_STRLEN], nat[NAT_ADDR_STRLEN];
};

/* SQL the writer prepares once. */
enum {
    STMT_BEGIN = 0,
    STMT_COMMIT,
    STMT_ROLLBACK,
    STMT_INSERT_EVENT,
    STMT_INSERT_EVENTS, /* EV_GROUP rows at once (built in open_connection) */
    STMT_UPSERT_SESSION,
    STMT_INSERT_SESSIONS, /* EV_GROUP new rows at once, OR IGNORE (built in open_connection) */
    STMT_UPDATE_SESSION,
    STMT_PRUNE_EVENTS,
    STMT_PRUNE_SESSIONS,
    STMT_COUNT
};

static const char *const stmt_sql[STMT_COUNT] = {
    [STMT_BEGIN] = "BEGIN IMMEDIATE",
    [STMT_COMMIT] = "COMMIT",
    [STMT_ROLLBACK] = "ROLLBACK",
    [STMT_INSERT_EVENT] =
        "INSERT INTO nat_events(time, event, proto, client_ip, client_port, nat_ip, nat_port,"
        " backend, backend_ip, backend_port, session_id, reason, bytes_in, bytes_out,"
        " nat_port_last)"
        " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    [STMT_INSERT_EVENTS] = NULL,
    [STMT_UPSERT_SESSION] =
        "INSERT INTO nat_sessions(id, proto, client_ip, client_port, nat_ip, nat_port, backend,"
        " backend_ip, backend_port, state, opened_at, last_seen, closed_at, close_reason,"
        " bytes_in, bytes_out, whois_key)"
        " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
        " ON CONFLICT(id) DO UPDATE SET state = excluded.state, last_seen = excluded.last_seen,"
        " closed_at = excluded.closed_at, close_reason = excluded.close_reason,"
        " bytes_in = excluded.bytes_in, bytes_out = excluded.bytes_out,"
        " nat_ip = excluded.nat_ip, nat_port = excluded.nat_port," /* a REPICK moves the port */
        " whois_key = excluded.whois_key",
    [STMT_INSERT_SESSIONS] = NULL,
    [STMT_UPDATE_SESSION] =
        "UPDATE nat_sessions SET state = ?2, last_seen = ?3, bytes_in = ?4, bytes_out = ?5,"
        " nat_ip = ?6, nat_port = ?7 WHERE id = ?1 AND closed_at IS NULL",
    /* A block_alloc row stays while its block was still held at the cutoff
     * (its next row, the free, is missing or newer): it is the only record of
     * who held those ports, and "who held port X at T" for any T inside the
     * retention needs it. The IN term lets the subquery use nat_events_blocks. */
    [STMT_PRUNE_EVENTS] =
        "DELETE FROM nat_events WHERE id IN (SELECT e.id FROM nat_events e"
        " WHERE e.time < ?1 AND CASE WHEN e.event = 'block_alloc' THEN coalesce((SELECT f.time"
        " FROM nat_events f WHERE f.event IN ('block_alloc', 'block_free')"
        " AND f.nat_ip = e.nat_ip AND f.nat_port = e.nat_port AND f.id > e.id"
        " ORDER BY f.id LIMIT 1), ?1) < ?1 ELSE 1 END ORDER BY e.time LIMIT ?2)",
    /* The newest session row stays whatever its age: the next run starts its
     * ids above the largest one stored, so ids never repeat (read_max_id). */
    [STMT_PRUNE_SESSIONS] = "DELETE FROM nat_sessions WHERE id IN (SELECT id FROM nat_sessions"
                            " WHERE closed_at < ?1 AND id < (SELECT max(id) FROM nat_sessions)"
                            " ORDER BY closed_at LIMIT ?2)",
};

struct db {
    /* The ring: written by producers, read by the writer. */
    struct db_cell *ring; /* owned */
    uint64_t mask;
    _Alignas(64) _Atomic uint64_t enq_pos;
    _Alignas(64) _Atomic uint64_t deq_pos; /* written by the writer only */
    _Alignas(64) _Atomic uint64_t dropped; /* refused by a full ring */
    _Atomic int writer_idle;               /* the writer sleeps until woken */

    /* Fixed after db_open. */
    _Alignas(64) struct db_options opt;
    char *path;    /* owned */
    sqlite3 *conn; /* owned; used by the writer thread only once it runs */
    sqlite3_stmt *stmt[STMT_COUNT];
    uint64_t max_session_id;
    uint64_t restart_closed;
    int ckpt_pages, wal_max_pages; /* CKPT_BYTES, WAL_MAX_BYTES in this file's pages */
    pthread_t thread;

    /* Writer-thread state. */
    struct db_rec *batch; /* owned, batch_max records */
    uint32_t batch_n;
    uint32_t batch_cap;    /* records per transaction now (adapt_batch), <= batch_max */
    struct db_slot *slots; /* owned, open addressing over session ids */
    uint32_t slot_mask;
    uint32_t slot_gen;
    uint64_t batch_end;                        /* ring position after the batch's last record */
    const struct db_rec *ev_pending[EV_GROUP]; /* log rows staged for flush_events */
    struct db_ev_text ev_text[EV_GROUP];       /* their text, alive until inserted */
    uint32_t ev_n;
    const struct db_rec *se_pending[EV_GROUP]; /* session rows staged for flush_sessions */
    struct db_se_text se_text[EV_GROUP];
    uint32_t se_n;
    bool pruning; /* a pruning pass is under way */
    uint64_t prune_cutoff;
    uint64_t next_prune; /* clock ms */
    uint64_t busy_ms;    /* monotonic ms of the last write (batch or pruning step) */
    bool released;       /* memory given back since then (release_idle_memory) */

    /* Shared, under mu. */
    pthread_mutex_t mu;
    sem_t wake_sem; /* the writer waits here; anyone posts, never blocking */
    /* The checkpointer: its own thread and connection (see ckpt_main). */
    sqlite3 *ckpt_conn; /* owned; NULL for :memory: */
    pthread_t ckpt_thread;
    bool ckpt_running;
    sem_t ckpt_sem;
    _Atomic int ckpt_stop;
    _Atomic int ckpt_asked;
    _Atomic int wake;       /* a producer's wake-up is pending */
    pthread_cond_t cv_done; /* db_flush / db_writer_exec wait here */
    bool stop;
    unsigned flush_waiters;
    uint64_t committed_pos; /* ring position everything before which is settled */
    uint64_t fail_count;
    int last_errno;
    const char *exec_sql; /* borrowed: a db_writer_exec request */
    char *exec_err;
    size_t exec_errlen;
    int exec_rc;
    bool exec_done;
    bool degraded;
    uint64_t episodes_begun, episodes_ended;
    uint64_t episodes_reported_begun, episodes_reported_ended;
    uint64_t dropped_at_episode_start;
    uint64_t dropped_in_last_episode;
    uint64_t written, skipped, batches, errors, lost_at_close;
    uint64_t pruned_events, pruned_sessions;
    uint32_t max_txn_ms;
    char last_error[DB_ERR_MAX];
};

void db_options_default(struct db_options *o)
{
    memset(o, 0, sizeof(*o));
    o->queue_capacity = 32768;
    o->flush_ms = 50; /* one commit per 50 ms under a steady load: docs/store.md */
    o->batch_max = 16384;
    o->retention_ms = 7ULL * 24 * 3600 * 1000;
    o->prune_interval_ms = 10000;
    o->prune_step = 2000;
    o->retry_ms = 200;
    o->close_timeout_ms = 5000;
    o->busy_timeout_ms = 100;
    o->cache_kib = 8192;
    o->thread_nice = 10;
    o->log_flows = true;
}

static uint64_t db_clock(const struct db *db)
{
    return db->opt.clock != NULL ? db->opt.clock(db->opt.clock_arg) : db__wall_ms();
}

/* ---- the data path ------------------------------------------------------ */

/*
 * The slow path of a hand-over: the writer sleeps; wake it. sem_post takes
 * no lock (a futex wake at most), so even this path never waits for the
 * writer thread, whatever it is doing.
 */
static void db_wake_writer(struct db *db)
{
    atomic_store_explicit(&db->wake, 1, memory_order_release);
    sem_post(&db->wake_sem);
}

/* Claims a cell. Returns it, or NULL when the ring is full. */
static struct db_cell *ring_claim(struct db *db, uint64_t *pos_out)
{
    uint64_t pos = atomic_load_explicit(&db->enq_pos, memory_order_relaxed);
    for (;;) {
        struct db_cell *c = &db->ring[pos & db->mask];
        uint64_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
        int64_t dif = (int64_t)(seq - pos);
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&db->enq_pos, &pos, pos + 1,
                                                      memory_order_seq_cst, memory_order_relaxed)) {
                *pos_out = pos;
                return c;
            }
        } else if (dif < 0) {
            return NULL;
        } else {
            pos = atomic_load_explicit(&db->enq_pos, memory_order_relaxed);
        }
    }
}

/* Publishes a filled cell and wakes the writer when it sleeps. */
static void ring_publish(struct db *db, struct db_cell *c, uint64_t pos)
{
    atomic_store_explicit(&c->seq, pos + 1, memory_order_release);
    /* The CAS in ring_claim is seq_cst: either the writer sees our enq_pos
     * before it sleeps, or we see writer_idle set. */
    if (atomic_load_explicit(&db->writer_idle, memory_order_seq_cst) &&
        atomic_exchange_explicit(&db->writer_idle, 0, memory_order_seq_cst))
        db_wake_writer(db);
}

static void rec_fill_session(struct db_rec *r, const struct nat_session *s)
{
    r->proto = s->key.proto;
    r->state = s->state;
    r->client_port = s->key.client.port;
    r->dst_port = s->key.dst.port;
    r->nat_port = s->ext.port;
    r->id = s->id;
    r->opened_at = s->opened_at;
    r->last_seen = s->last_seen;
    r->bytes_in = s->bytes_in;
    r->bytes_out = s->bytes_out;
    memcpy(r->client, s->key.client.addr.b, 16);
    memcpy(r->dst, s->key.dst.addr.b, 16);
    memcpy(r->nat, s->ext.addr.b, 16);
}

int db_submit(struct db *db, const struct nat_event *ev, const char *backend_name)
{
    uint64_t pos;
    struct db_cell *c = ring_claim(db, &pos);
    if (c == NULL) {
        atomic_fetch_add_explicit(&db->dropped, 1, memory_order_relaxed);
        return -ENOBUFS;
    }
    struct db_rec *r = &c->rec;
    r->kind = DB_REC_EVENT;
    r->type = (uint8_t)ev->type;
    r->time = ev->time;
    rec_fill_session(r, &ev->s);
    r->nat_port_last = ev->port_last;
    db__strlcpy(r->reason, ev->reason, sizeof(r->reason));
    db__strlcpy(r->backend, backend_name, sizeof(r->backend));
    ring_publish(db, c, pos);
    return 0;
}

int db_submit_update(struct db *db, const struct nat_session *s)
{
    uint64_t pos;
    struct db_cell *c = ring_claim(db, &pos);
    if (c == NULL) {
        atomic_fetch_add_explicit(&db->dropped, 1, memory_order_relaxed);
        return -ENOBUFS;
    }
    struct db_rec *r = &c->rec;
    r->kind = DB_REC_UPDATE;
    r->time = s->last_seen;
    rec_fill_session(r, s);
    ring_publish(db, c, pos);
    return 0;
}

/* ---- the writer: applying records --------------------------------------- */

/* Moves up to `max` published records from the ring into the batch. */
static uint32_t ring_drain(struct db *db, uint32_t max)
{
    uint64_t pos = atomic_load_explicit(&db->deq_pos, memory_order_relaxed);
    uint32_t n = 0;
    while (n < max) {
        struct db_cell *c = &db->ring[pos & db->mask];
        uint64_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
        if (seq != pos + 1)
            break; /* empty, or a producer is still copying into it */
        db->batch[db->batch_n + n] = c->rec;
        db->batch[db->batch_n + n].end = 0;
        db->batch[db->batch_n + n].moved = 0;
        db->batch[db->batch_n + n].no_session = false;
        atomic_store_explicit(&c->seq, pos + db->mask + 1, memory_order_release);
        pos++;
        n++;
    }
    atomic_store_explicit(&db->deq_pos, pos, memory_order_release);
    return n;
}

static bool ring_empty(struct db *db)
{
    return atomic_load_explicit(&db->enq_pos, memory_order_seq_cst) ==
           atomic_load_explicit(&db->deq_pos, memory_order_relaxed);
}

static const char *event_name(uint8_t type)
{
    return type < NAT_EV_COUNT ? nat_event_name((enum nat_event_type)type) : "unknown";
}

/* Block events are about a client's range of ports, not a session. */
static bool is_block(const struct db_rec *r)
{
    return r->kind == DB_REC_EVENT &&
           (r->type == NAT_EV_BLOCK_ALLOC || r->type == NAT_EV_BLOCK_FREE);
}

/* Whether event record r gets a log row: every event with log "flows"; with
 * log "blocks" (db_options.log_flows false) the refusals and the block events
 * only, the flows themselves being in nat_sessions. */
static bool is_logged(const struct db *db, const struct db_rec *r)
{
    return db->opt.log_flows || r->type == NAT_EV_REFUSE || is_block(r);
}

/* Formats a 16-byte address into buf (NAT_ADDR_STRLEN); returns its length. */
static int addr_text(const uint8_t a[16], char *buf)
{
    return (int)strlen(db__addr_format(a, buf));
}

/* True for failures of one record's data (skip it) rather than of the store. */
static bool is_data_error(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH:
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
        return true;
    default:
        return false;
    }
}

static int step_reset(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

/* Binds record r's log row to parameters base+1 .. base+EV_COLS of st. The
 * text is formatted into e, which must live until the statement has run. */
static void bind_event(sqlite3_stmt *st, int base, struct db_ev_text *e, const struct db_rec *r)
{
    bool ends = r->type == NAT_EV_CLOSE || r->type == NAT_EV_EXPIRE;
    bool block = is_block(r);
    const char *proto = block ? "any" : db__proto_name(r->proto);

    db_time_format(r->time, e->t);
    sqlite3_bind_text(st, base + 1, e->t, DB_TIME_STRLEN - 1, SQLITE_STATIC);
    sqlite3_bind_text(st, base + 2, event_name(r->type), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, base + 3, proto, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, base + 4, e->client, addr_text(r->client, e->client), SQLITE_STATIC);
    sqlite3_bind_int(st, base + 5, r->client_port);
    if (r->type == NAT_EV_REFUSE) {
        sqlite3_bind_null(st, base + 6);
        sqlite3_bind_null(st, base + 7);
        sqlite3_bind_null(st, base + 11);
    } else {
        sqlite3_bind_text(st, base + 6, e->nat, addr_text(r->nat, e->nat), SQLITE_STATIC);
        sqlite3_bind_int(st, base + 7, r->nat_port);
        if (block)
            sqlite3_bind_null(st, base + 11);
        else
            sqlite3_bind_int64(st, base + 11, (sqlite3_int64)r->id);
    }
    sqlite3_bind_text(st, base + 8, r->backend, -1, SQLITE_STATIC);
    if (block) {
        sqlite3_bind_null(st, base + 9);
        sqlite3_bind_null(st, base + 10);
        sqlite3_bind_int(st, base + 15, r->nat_port_last);
    } else {
        sqlite3_bind_text(st, base + 9, e->dst, addr_text(r->dst, e->dst), SQLITE_STATIC);
        sqlite3_bind_int(st, base + 10, r->dst_port);
        sqlite3_bind_null(st, base + 15);
    }
    if (r->reason[0] != '\0')
        sqlite3_bind_text(st, base + 12, r->reason, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, base + 12);
    if (ends) {
        sqlite3_bind_int64(st, base + 13, (sqlite3_int64)r->bytes_in);
        sqlite3_bind_int64(st, base + 14, (sqlite3_int64)r->bytes_out);
    } else {
        sqlite3_bind_null(st, base + 13);
        sqlite3_bind_null(st, base + 14);
    }
}

/*
 * Inserts the log rows staged in db->ev_pending: EV_GROUP of them with one
 * multi-row INSERT OR IGNORE (one statement's fixed cost for EV_GROUP rows;
 * a row SQLite rejects is left out and counted), fewer one by one. When the
 * group fails anyway (a trigger's RAISE), its rows are retried one by one so
 * that only the bad one is skipped (and counted).
 */
static int flush_events(struct db *db, uint64_t *skipped)
{
    uint32_t n = db->ev_n;
    int rc;

    db->ev_n = 0;
    if (n == EV_GROUP) {
        sqlite3_stmt *st = db->stmt[STMT_INSERT_EVENTS];
        for (uint32_t i = 0; i < n; i++)
            bind_event(st, (int)i * EV_COLS, &db->ev_text[i], db->ev_pending[i]);
        rc = step_reset(st);
        if (rc == SQLITE_OK) {
            *skipped += n - (uint32_t)sqlite3_changes(db->conn);
            return rc;
        }
        if (!is_data_error(rc))
            return rc;
    }
    for (uint32_t i = 0; i < n; i++) {
        sqlite3_stmt *st = db->stmt[STMT_INSERT_EVENT];
        bind_event(st, 0, &db->ev_text[0], db->ev_pending[i]);
        rc = step_reset(st);
        if (rc == SQLITE_OK)
            continue;
        if (!is_data_error(rc))
            return rc;
        (*skipped)++;
    }
    return SQLITE_OK;
}

/* Binds the session row of an OPEN, CLOSE or EXPIRE record r (an OPEN whose
 * end is in the same batch gives the finished row) to parameters base+1 ..
 * base+SE_COLS of the upsert st; its text goes into e, as in bind_event. */
static void bind_session(const struct db *db, sqlite3_stmt *st, int base, struct db_se_text *e,
                         const struct db_rec *r)
{
    bool ends = r->type == NAT_EV_CLOSE || r->type == NAT_EV_EXPIRE;
    const char *reason = r->reason;
    uint64_t end_time = r->time;
    uint64_t last_seen = ends && r->last_seen < r->time ? r->time : r->last_seen;
    uint64_t bytes_in = r->bytes_in, bytes_out = r->bytes_out;

    if (r->end != 0) {
        const struct db_rec *x = &db->batch[r->end - 1];
        end_time = x->time;
        ends = true;
        reason = x->reason;
        last_seen = x->last_seen < x->time ? x->time : x->last_seen;
        bytes_in = x->bytes_in;
        bytes_out = x->bytes_out;
    }
    sqlite3_bind_int64(st, base + 1, (sqlite3_int64)r->id);
    sqlite3_bind_text(st, base + 2, db__proto_name(r->proto), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, base + 3, e->client, addr_text(r->client, e->client), SQLITE_STATIC);
    sqlite3_bind_int(st, base + 4, r->client_port);
    const struct db_rec *at = r->moved != 0 ? &db->batch[r->moved - 1] : r;
    sqlite3_bind_text(st, base + 5, e->nat, addr_text(at->nat, e->nat), SQLITE_STATIC);
    sqlite3_bind_int(st, base + 6, at->nat_port);
    sqlite3_bind_text(st, base + 7, r->backend, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, base + 8, e->dst, addr_text(r->dst, e->dst), SQLITE_STATIC);
    sqlite3_bind_int(st, base + 9, r->dst_port);
    sqlite3_bind_text(st, base + 10, ends ? "closed" : db__state_name(r->state), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, base + 11, db_time_format(r->opened_at, e->t_open), DB_TIME_STRLEN - 1,
                      SQLITE_STATIC);
    sqlite3_bind_text(st, base + 12, db_time_format(last_seen, e->t_seen), DB_TIME_STRLEN - 1,
                      SQLITE_STATIC);
    if (ends) {
        sqlite3_bind_text(st, base + 13, db_time_format(end_time, e->t), DB_TIME_STRLEN - 1,
                          SQLITE_STATIC);
        sqlite3_bind_text(st, base + 14, reason[0] != '\0' ? reason : "error", -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, base + 17, db__whois_key(r->opened_at, end_time));
    } else {
        sqlite3_bind_null(st, base + 13);
        sqlite3_bind_null(st, base + 14);
        sqlite3_bind_null(st, base + 17);
    }
    sqlite3_bind_int64(st, base + 15, (sqlite3_int64)bytes_in);
    sqlite3_bind_int64(st, base + 16, (sqlite3_int64)bytes_out);
}

/* Writes record r's session row with the single-row upsert (no statement
 * journal: one row). A row SQLite rejects is skipped and counted. */
static int upsert_session(struct db *db, const struct db_rec *r, uint64_t *skipped)
{
    struct db_se_text e;
    sqlite3_stmt *st = db->stmt[STMT_UPSERT_SESSION];
    bind_session(db, st, 0, &e, r);
    int rc = step_reset(st);
    if (rc == SQLITE_OK || !is_data_error(rc))
        return rc;
    (*skipped)++;
    return SQLITE_OK;
}

/*
 * Writes the session rows staged in db->se_pending (new sessions: OPEN
 * records): EV_GROUP of them with one multi-row INSERT OR IGNORE, fewer one
 * by one with the single-row upsert. When the group inserted fewer rows than
 * it had (a row whose id exists already, a row SQLite rejects), all its rows
 * go again through the upsert, which rewrites the ones just inserted with the
 * same values, updates an existing row, and skips (counts) a bad one.
 */
static int flush_sessions(struct db *db, uint64_t *skipped)
{
    uint32_t n = db->se_n;
    int rc;

    db->se_n = 0;
    if (n == EV_GROUP) {
        sqlite3_stmt *st = db->stmt[STMT_INSERT_SESSIONS];
        for (uint32_t i = 0; i < n; i++)
            bind_session(db, st, (int)i * SE_COLS, &db->se_text[i], db->se_pending[i]);
        rc = step_reset(st);
        if (rc == SQLITE_OK && (uint32_t)sqlite3_changes(db->conn) == n)
            return rc;
        if (rc != SQLITE_OK && !is_data_error(rc))
            return rc;
    }
    for (uint32_t i = 0; i < n; i++)
        if ((rc = upsert_session(db, db->se_pending[i], skipped)) != SQLITE_OK)
            return rc;
    return SQLITE_OK;
}

static int apply_update(struct db *db, const struct db_rec *r)
{
    char t_seen[DB_TIME_STRLEN], nat[NAT_ADDR_STRLEN];
    sqlite3_stmt *st = db->stmt[STMT_UPDATE_SESSION];

    sqlite3_bind_int64(st, 1, (sqlite3_int64)r->id);
    sqlite3_bind_text(st, 2, db__state_name(r->state), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, db_time_format(r->last_seen, t_seen), DB_TIME_STRLEN - 1,
                      SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)r->bytes_in);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)r->bytes_out);
    sqlite3_bind_text(st, 6, nat, addr_text(r->nat, nat), SQLITE_STATIC);
    sqlite3_bind_int(st, 7, r->nat_port);
    return step_reset(st);
}

/* The slot of session `id` in this batch's index (gen marks the live ones). */
static struct db_slot *slot_find(struct db *db, uint64_t id)
{
    uint32_t h = (uint32_t)((id * 0x9e3779b97f4a7c15ULL) >> 32) & db->slot_mask;
    for (;;) {
        struct db_slot *sl = &db->slots[h];
        if (sl->gen != db->slot_gen || sl->id == id)
            return sl;
        h = (h + 1) & db->slot_mask;
    }
}

/*
 * Writes each session row once per batch where it can: an OPEN followed in
 * the same batch by updates and its CLOSE/EXPIRE inserts the finished row,
 * and the later records only log their events. Short flows (most of them)
 * then cost one session row write instead of two or more.
 */
static void coalesce(struct db *db)
{
    if (++db->slot_gen == 0) {
        memset(db->slots, 0, sizeof(*db->slots) * (db->slot_mask + 1));
        db->slot_gen = 1;
    }
    for (uint32_t i = 0; i < db->batch_n; i++) {
        struct db_rec *r = &db->batch[i];
        bool is_open = r->kind == DB_REC_EVENT && r->type == NAT_EV_OPEN;
        if ((r->kind == DB_REC_EVENT && r->type == NAT_EV_REFUSE) || is_block(r))
            continue;
        struct db_slot *sl = slot_find(db, r->id);
        if (is_open) {
            sl->gen = db->slot_gen;
            sl->id = r->id;
            sl->idx = i;
            continue;
        }
        if (sl->gen != db->slot_gen)
            continue; /* its OPEN is in an earlier batch */
        struct db_rec *o = &db->batch[sl->idx];
        if (o->end != 0) {
            r->no_session = true; /* already closed in this batch */
            continue;
        }
        if (r->kind == DB_REC_UPDATE) {
            o->state = r->state;
            o->last_seen = r->last_seen;
            o->bytes_in = r->bytes_in;
            o->bytes_out = r->bytes_out;
            o->moved = i + 1;
            r->no_session = true;
        } else if (r->type == NAT_EV_CLOSE || r->type == NAT_EV_EXPIRE) {
            o->end = i + 1;
            r->no_session = true;
        } else if (r->type == NAT_EV_REPICK) {
            /* The session moved to another port before its row was written:
             * the row gets the new port; the log keeps both. */
            o->moved = i + 1;
            r->no_session = true;
        }
    }
}

/* True when a write of session `id` is staged in db->se_pending. */
static bool session_staged(const struct db *db, uint64_t id)
{
    for (uint32_t i = 0; i < db->se_n; i++)
        if (db->se_pending[i]->id == id)
            return true;
    return false;
}

/* After each group of EV_GROUP rows (~0.2-0.3 ms of work), a nicer writer
 * lets a data path waiting for this core have it (see thread_be_nicer); a
 * no-op when no other thread wants the core. */
static void yield_core(const struct db *db)
{
    if (db->opt.thread_nice > 0)
        sched_yield();
}

/* Writes the batch in one transaction. Returns SQLITE_OK or the failure
 * (the transaction is then rolled back and the batch kept). */
static int write_batch(struct db *db, uint64_t *skipped)
{
    int rc = step_reset(db->stmt[STMT_BEGIN]);
    if (rc != SQLITE_OK)
        return rc;
    *skipped = 0;
    db->ev_n = 0;
    db->se_n = 0;
    for (uint32_t i = 0; i < db->batch_n; i++) {
        const struct db_rec *r = &db->batch[i];
        if (r->kind == DB_REC_EVENT) {
            /* Log rows and session rows are staged and written EV_GROUP at
             * a time, each table in batch order. */
            if (is_logged(db, r))
                db->ev_pending[db->ev_n++] = r;
            if (db->ev_n == EV_GROUP) {
                if ((rc = flush_events(db, skipped)) != SQLITE_OK)
                    goto out_rollback;
                yield_core(db);
            }
            if (r->type == NAT_EV_REFUSE || is_block(r) || r->no_session)
                continue;
            if (r->type != NAT_EV_OPEN) {
                /* The end (or repick) of a session whose row an earlier
                 * batch wrote: one upsert now (its row is not staged). */
                if ((rc = upsert_session(db, r, skipped)) != SQLITE_OK)
                    goto out_rollback;
                continue;
            }
            db->se_pending[db->se_n++] = r;
            if (db->se_n == EV_GROUP) {
                if ((rc = flush_sessions(db, skipped)) != SQLITE_OK)
                    goto out_rollback;
                yield_core(db);
            }
            continue;
        }
        if (r->no_session)
            continue;
        /* An update applies after a staged write of its own session. */
        if (session_staged(db, r->id) && (rc = flush_sessions(db, skipped)) != SQLITE_OK)
            goto out_rollback;
        rc = apply_update(db, r);
        if (rc == SQLITE_OK)
            continue;
        if (!is_data_error(rc))
            goto out_rollback;
        (*skipped)++;
    }
    if ((rc = flush_events(db, skipped)) != SQLITE_OK ||
        (rc = flush_sessions(db, skipped)) != SQLITE_OK)
        goto out_rollback;
    rc = step_reset(db->stmt[STMT_COMMIT]);
    if (rc == SQLITE_OK)
        return SQLITE_OK;
out_rollback:
    if (!sqlite3_get_autocommit(db->conn))
        step_reset(db->stmt[STMT_ROLLBACK]);
    return rc;
}

/* Records a failed attempt; starts an episode when the store was writing. */
static void note_failure(struct db *db, int rc, const char *what)
{
    pthread_mutex_lock(&db->mu);
    db->errors++;
    db->fail_count++;
    db->last_errno = db__errno_of(rc);
    snprintf(db->last_error, sizeof(db->last_error), "%s %s: %s", what, db->path,
             sqlite3_errstr(rc));
    if (!db->degraded) {
        db->degraded = true;
        db->episodes_begun++;
        db->dropped_at_episode_start = atomic_load(&db->dropped);
    }
    pthread_cond_broadcast(&db->cv_done);
    pthread_mutex_unlock(&db->mu);
}

/* A write went through: ends a failure episode. Called with mu held. */
static void end_episode_locked(struct db *db)
{
    if (db->degraded) {
        db->degraded = false;
        db->episodes_ended++;
        db->dropped_in_last_episode = atomic_load(&db->dropped) - db->dropped_at_episode_start;
    }
}

static void note_success(struct db *db, uint64_t n, uint64_t skipped, uint64_t end_pos)
{
    pthread_mutex_lock(&db->mu);
    db->written += n - skipped;
    db->skipped += skipped;
    db->batches++;
    db->committed_pos = end_pos;
    end_episode_locked(db);
    pthread_cond_broadcast(&db->cv_done);
    pthread_mutex_unlock(&db->mu);
}

/* One pruning step. Returns SQLITE_OK or the failure. */
static int prune_step(struct db *db)
{
    char cutoff[DB_TIME_STRLEN];
    int n_ev = 0, n_se = 0, rc;

    db_time_format(db->prune_cutoff, cutoff);
    rc = step_reset(db->stmt[STMT_BEGIN]);
    if (rc != SQLITE_OK)
        return rc;
    for (int i = STMT_PRUNE_EVENTS; i <= STMT_PRUNE_SESSIONS; i++) {
        sqlite3_stmt *st = db->stmt[i];
        sqlite3_bind_text(st, 1, cutoff, DB_TIME_STRLEN - 1, SQLITE_STATIC);
        sqlite3_bind_int(st, 2, (int)db->opt.prune_step);
        rc = step_reset(st);
        if (rc != SQLITE_OK)
            goto out_rollback;
        if (i == STMT_PRUNE_EVENTS)
            n_ev = sqlite3_changes(db->conn);
        else
            n_se = sqlite3_changes(db->conn);
    }
    rc = step_reset(db->stmt[STMT_COMMIT]);
    if (rc != SQLITE_OK)
        goto out_rollback;
    pthread_mutex_lock(&db->mu);
    db->pruned_events += (uint64_t)n_ev;
    db->pruned_sessions += (uint64_t)n_se;
    end_episode_locked(db);
    pthread_mutex_unlock(&db->mu);
    if ((uint32_t)n_ev < db->opt.prune_step && (uint32_t)n_se < db->opt.prune_step) {
        db->pruning = false;
        db->next_prune = db_clock(db) + db->opt.prune_interval_ms;
    }
    return SQLITE_OK;
out_rollback:
    if (!sqlite3_get_autocommit(db->conn))
        step_reset(db->stmt[STMT_ROLLBACK]);
    return rc;
}

/* Runs a pruning step when one is due. Returns true when it ran one. */
static bool maybe_prune(struct db *db)
{
    if (db->opt.retention_ms == 0)
        return false;
    if (!db->pruning) {
        uint64_t now = db_clock(db);
        if (now < db->next_prune)
            return false;
        if (now <= db->opt.retention_ms) {
            db->next_prune = now + db->opt.prune_interval_ms;
            return false;
        }
        db->pruning = true;
        db->prune_cutoff = now - db->opt.retention_ms;
    }
    int rc = prune_step(db);
    if (rc != SQLITE_OK) {
        note_failure(db, rc, "cannot prune");
        db->pruning = false;
        db->next_prune = db_clock(db) + db->opt.prune_interval_ms;
    }
    return true;
}

/* ---- the writer: the loop ----------------------------------------------- */

/*
 * How long the writer stays idle (nothing to write, no pruning) before it
 * gives its memory back (release_idle_memory). gwd's memory then follows
 * its load: a burst of flows fills the page cache and the batch arrays, an
 * idle store holds neither.
 */
#define IDLE_RELEASE_MS 500

/* Gives the pages of [p, p + len) back to the kernel (they read as zeros
 * afterwards); the partial pages at either end stay. */
static void pages_release(void *p, size_t len)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + page - 1) & ~(page - 1);
    uintptr_t b = ((uintptr_t)p + len) & ~(page - 1);
    if (b > a)
        madvise((void *)a, b - a, MADV_DONTNEED);
}

/*
 * The writer went idle: frees SQLite's cached pages of its connection (a
 * later batch reads back the few it needs: the tails of the tables and
 * indexes) and the pages of the batch and its session-id index, which only
 * the writer thread touches and which hold nothing between batches (zeroed
 * slots read as unused: slot_gen is never 0).
 */
static void release_idle_memory(struct db *db)
{
    sqlite3_db_release_memory(db->conn);
    pages_release(db->batch, sizeof(*db->batch) * db->opt.batch_max);
    pages_release(db->slots, sizeof(*db->slots) * ((size_t)db->slot_mask + 1));
    db->released = true;
}

static void abs_deadline(struct timespec *ts, uint64_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += (time_t)(ms / 1000);
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/*
 * Sizes the next batch so that one transaction takes about TXN_TARGET_US:
 * large batches write each hot index page once for many records (the
 * port-keyed index dirties pages all over the tree), but under load a commit
 * must come at least every 100 ms. Shrinks in proportion when a transaction
 * took too long, doubles when a full one was quick.
 */
#define TXN_TARGET_US 60000
#define BATCH_MIN 256

static void adapt_batch(struct db *db, uint32_t n, uint64_t took_us)
{
    uint64_t cap = db->batch_cap;
    if (took_us > TXN_TARGET_US) {
        cap = (uint64_t)n * TXN_TARGET_US / took_us;
    } else if (n == db->batch_cap && took_us < TXN_TARGET_US / 2) {
        cap *= 2;
    }
    if (cap > db->opt.batch_max)
        cap = db->opt.batch_max;
    if (cap < BATCH_MIN)
        cap = BATCH_MIN < db->opt.batch_max ? BATCH_MIN : db->opt.batch_max;
    db->batch_cap = (uint32_t)cap;
}

static void note_txn_time(struct db *db, uint64_t took_us)
{
    pthread_mutex_lock(&db->mu);
    if (took_us / 1000 > db->max_txn_ms)
        db->max_txn_ms = (uint32_t)(took_us / 1000);
    pthread_mutex_unlock(&db->mu);
}

/* Runs a pending db_writer_exec request. Called with mu held. */
static void run_exec_locked(struct db *db)
{
    char *msg = NULL;
    const char *sql = db->exec_sql;
    db->exec_sql = NULL;
    pthread_mutex_unlock(&db->mu);
    int rc = sqlite3_exec(db->conn, sql, NULL, NULL, &msg);
    pthread_mutex_lock(&db->mu);
    db->exec_rc = rc == SQLITE_OK ? 0 : -EIO;
    if (rc != SQLITE_OK)
        db__err(db->exec_err, db->exec_errlen, "%s", msg != NULL ? msg : sqlite3_errstr(rc));
    sqlite3_free(msg);
    db->exec_done = true;
    pthread_cond_broadcast(&db->cv_done);
}

enum {
    WAKE_STOP = 1,  /* db_close */
    WAKE_FLUSH = 2, /* a db_flush waiter */
    WAKE_DATA = 4,  /* a producer's wake-up */
};

/*
 * Waits up to `ms`, or until one of the `wake_on` reasons holds. Runs
 * db_writer_exec requests that arrive meanwhile.
 */
static void writer_wait(struct db *db, uint64_t ms, int wake_on)
{
    struct timespec ts;
    abs_deadline(&ts, ms);
    for (;;) {
        pthread_mutex_lock(&db->mu);
        if (db->exec_sql != NULL)
            run_exec_locked(db);
        bool go = ((wake_on & WAKE_STOP) && db->stop) ||
                  ((wake_on & WAKE_FLUSH) && db->flush_waiters > 0) ||
                  ((wake_on & WAKE_DATA) && atomic_load(&db->wake));
        pthread_mutex_unlock(&db->mu);
        if (go)
            break;
        /* Posts that found nothing to do are spurious: loop and re-check. */
        if (sem_clockwait(&db->wake_sem, CLOCK_MONOTONIC, &ts) != 0 && errno == ETIMEDOUT)
            break;
    }
    atomic_store(&db->wake, 0);
}

static bool writer_stopping(struct db *db, bool *flushing)
{
    pthread_mutex_lock(&db->mu);
    bool stop = db->stop;
    *flushing = db->flush_waiters > 0;
    if (db->exec_sql != NULL)
        run_exec_locked(db);
    pthread_mutex_unlock(&db->mu);
    return stop;
}

/* At close, after close_timeout_ms of failures: give up what is left. */
static void give_up(struct db *db)
{
    uint64_t lost = db->batch_n;
    db->batch_n = 0;
    while ((db->batch_n = ring_drain(db, db->opt.batch_max)) > 0) {
        lost += db->batch_n;
        db->batch_n = 0;
    }
    atomic_fetch_add(&db->dropped, lost);
    pthread_mutex_lock(&db->mu);
    db->lost_at_close += lost;
    db->committed_pos = atomic_load(&db->deq_pos);
    pthread_cond_broadcast(&db->cv_done);
    pthread_mutex_unlock(&db->mu);
}

/*
 * Lowers the calling thread's priority by db->opt.thread_nice steps (Linux
 * keeps a nice value per thread). Why: on a core shared with the data path
 * (gwd pinned, or a busy machine) the writer, woken for its batch every
 * flush_ms, preempted the loop and kept the core until the next scheduler
 * tick (4 ms at HZ=250) with the loop's connections waiting: the connection
 * rate p99 showed it (bench/RESULTS.md, "Store threads at nice +10"). At +10
 * (CFS weight 110 against 1024) the writer still has ~10% of a saturated
 * core, about twice what it needs at 8,000 connections/s; SCHED_IDLE let it
 * fall behind until records were dropped. Failure is harmless.
 */
static void thread_be_nicer(const struct db *db)
{
    if (db->opt.thread_nice <= 0)
        return;
    id_t tid = (id_t)gettid();
    errno = 0;
    int cur = getpriority(PRIO_PROCESS, tid);
    if (cur == -1 && errno != 0)
        return;
    int want = cur + db->opt.thread_nice;
    (void)setpriority(PRIO_PROCESS, tid, want > 19 ? 19 : want);
}

static void *writer_main(void *arg)
{
    struct db *db = arg;
    uint64_t close_deadline = 0;

    thread_be_nicer(db);

    for (;;) {
        bool flushing;
        bool stop = writer_stopping(db, &flushing);
        if (stop && close_deadline == 0)
            close_deadline = mono_ms() + db->opt.close_timeout_ms;

        if (db->batch_n == 0) {
            db->batch_n = ring_drain(db, db->batch_cap);
            db->batch_end = atomic_load_explicit(&db->deq_pos, memory_order_relaxed);
            if (db->batch_n > 0)
                coalesce(db);
        }
        bool full = false, wrote = false;
        uint64_t began = mono_us();
        if (db->batch_n > 0) {
            uint64_t skipped = 0;
            uint32_t n = db->batch_n;
            int rc = write_batch(db, &skipped);
            if (rc != SQLITE_OK) {
                note_failure(db, rc, "cannot write to");
                if (stop && mono_ms() >= close_deadline) {
                    give_up(db);
                    break;
                }
                writer_wait(db, db->opt.retry_ms, 0);
                continue;
            }
            db->batch_n = 0;
            wrote = true;
            note_success(db, n, skipped, db->batch_end);
            full = n == db->batch_cap;
            uint64_t took = mono_us() - began;
            adapt_batch(db, n, took);
            note_txn_time(db, took);
        }
        /* Here no failed batch is pending (that path retried above). Pruning
         * steps interleave with batches, also under sustained load. */
        if (!stop && maybe_prune(db))
            wrote = true;
        if (wrote) {
            db->released = false;
            db->busy_ms = mono_ms();
        }
        if (full)
            continue; /* more is waiting: no pause under load */

        if (!ring_empty(db)) {
            /* A partial batch went out, or a producer is mid-copy: let the
             * next batch gather unless someone waits for it. The wait counts
             * from this batch's start, so that under a steady load commits
             * come every flush_ms, not every flush_ms plus a batch's time. */
            uint64_t spent_ms = (mono_us() - began) / 1000;
            if (!stop && !flushing && db->opt.flush_ms > spent_ms)
                writer_wait(db, db->opt.flush_ms - spent_ms, WAKE_STOP | WAKE_FLUSH);
            else
                sched_yield();
            continue;
        }
        if (stop)
            break;
        /* Idle: sleep until a producer wakes us (or the next pruning pass). */
        atomic_store_explicit(&db->writer_idle, 1, memory_order_seq_cst);
        if (!ring_empty(db)) {
            atomic_store_explicit(&db->writer_idle, 0, memory_order_seq_cst);
            continue;
        }
        uint64_t sleep_ms = 1000;
        if (db->opt.retention_ms != 0 && !db->pruning) {
            uint64_t now = db_clock(db);
            sleep_ms = db->next_prune > now ? db->next_prune - now : 0;
            if (sleep_ms > 1000)
                sleep_ms = 1000;
        }
        if (!db->released && !db->pruning && db->batch_n == 0) {
            uint64_t idle = mono_ms() - db->busy_ms;
            if (idle >= IDLE_RELEASE_MS)
                release_idle_memory(db);
            else if (sleep_ms > IDLE_RELEASE_MS - idle)
                sleep_ms = IDLE_RELEASE_MS - idle;
        }
        if (db->pruning)
            sleep_ms = 0;
        writer_wait(db, sleep_ms, WAKE_STOP | WAKE_FLUSH | WAKE_DATA);
        bool woken = !atomic_exchange_explicit(&db->writer_idle, 0, memory_order_seq_cst);
        /* Woken by data: give the batch flush_ms to gather. */
        if (woken && db->opt.flush_ms > 0)
            writer_wait(db, db->opt.flush_ms, WAKE_STOP | WAKE_FLUSH);
    }
    pthread_mutex_lock(&db->mu);
    pthread_cond_broadcast(&db->cv_done);
    pthread_mutex_unlock(&db->mu);
    return NULL;
}

/* ---- open and close ----------------------------------------------------- */

/* Closes the sessions a previous run left open and frees the port blocks it
 * left held (reason "restart"). */
static int close_leftovers(struct db *db, char *err, size_t errlen)
{
    static const char *const sql_last =
        "SELECT max(t) FROM (SELECT max(time) AS t FROM nat_events"
        " UNION ALL SELECT max(last_seen) FROM nat_sessions WHERE closed_at IS NULL"
        " UNION ALL SELECT max(opened_at) FROM nat_sessions WHERE closed_at IS NULL)";
    static const char *const sql_log =
        "INSERT INTO nat_events(time, event, proto, client_ip, client_port, nat_ip, nat_port,"
        " backend, backend_ip, backend_port, session_id, reason, bytes_in, bytes_out)"
        " SELECT ?1, 'close', proto, client_ip, client_port, nat_ip, nat_port, backend,"
        " backend_ip, backend_port, id, 'restart', bytes_in, bytes_out"
        " FROM nat_sessions WHERE closed_at IS NULL ORDER BY id";
    static const char *const sql_close =
        "UPDATE nat_sessions SET state = 'closed', closed_at = ?1, close_reason = 'restart',"
        " whois_key = gw_whois_key(opened_at, ?1) WHERE closed_at IS NULL";
    /* a block whose latest row is its block_alloc is still held */
    static const char *const sql_blocks =
        "INSERT INTO nat_events(time, event, proto, client_ip, client_port, nat_ip, nat_port,"
        " backend, reason, nat_port_last)"
        " SELECT ?1, 'block_free', 'any', client_ip, client_port, nat_ip, nat_port, '',"
        " 'restart', nat_port_last FROM nat_events WHERE event = 'block_alloc' AND id IN"
        " (SELECT max(id) FROM nat_events WHERE event IN ('block_alloc', 'block_free')"
        " GROUP BY nat_ip, nat_port) ORDER BY id";
    /* the session rows last: restart_closed counts them */
    const char *steps[3] = {sql_blocks, db->opt.log_flows ? sql_log : NULL, sql_close};
    char t[DB_TIME_STRLEN];
    sqlite3_stmt *st = NULL;
    int rc;

    if ((rc = sqlite3_exec(db->conn, "BEGIN IMMEDIATE", NULL, NULL, NULL)) != SQLITE_OK)
        goto out_err;
    if ((rc = sqlite3_prepare_v2(db->conn, sql_last, -1, &st, NULL)) != SQLITE_OK)
        goto out_rollback;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) == SQLITE_TEXT)
        db__strlcpy(t, (const char *)sqlite3_column_text(st, 0), sizeof(t));
    else
        db_time_format(db_clock(db), t);
    sqlite3_finalize(st);
    st = NULL;
    for (int i = 0; i < 3; i++) {
        if (steps[i] == NULL)
            continue;
        rc = sqlite3_prepare_v2(db->conn, steps[i], -1, &st, NULL);
        if (rc != SQLITE_OK)
            goto out_rollback;
        sqlite3_bind_text(st, 1, t, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        sqlite3_finalize(st);
        st = NULL;
        if (rc != SQLITE_DONE)
            goto out_rollback;
    }
    db->restart_closed = (uint64_t)sqlite3_changes(db->conn);
    if ((rc = sqlite3_exec(db->conn, "COMMIT", NULL, NULL, NULL)) != SQLITE_OK)
        goto out_rollback;
    return 0;
out_rollback:
    db__err(err, errlen, "cannot close the sessions left open in %s: %s", db->path,
            sqlite3_errmsg(db->conn));
    sqlite3_exec(db->conn, "ROLLBACK", NULL, NULL, NULL);
    return db__errno_of(rc);
out_err:
    db__err(err, errlen, "cannot close the sessions left open in %s: %s", db->path,
            sqlite3_errmsg(db->conn));
    return db__errno_of(rc);
}

/*
 * The largest session id the store knows, so that a new run numbers its
 * sessions above it. nat_sessions.id is the primary key (one seek). The log
 * can name a higher id only when that session's row is gone (deleted by hand,
 * or skipped as bad) while its events stay; those events are the newest ones,
 * since ids grow with time, so only the last DB_MAX_ID_TAIL rows of the log
 * are read (by rowid, from the end): a start-up costs the same with 10 or
 * 100 million logged events, where a max() over the column read them all.
 */
#define DB_MAX_ID_TAIL 65536
static int read_max_id(struct db *db)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db->conn,
                                "SELECT max(coalesce((SELECT max(id) FROM nat_sessions), 0),"
                                " coalesce((SELECT max(session_id) FROM (SELECT session_id FROM"
                                " nat_events ORDER BY id DESC LIMIT " DB_STR(DB_MAX_ID_TAIL) ")),"
                                " 0))",
                                -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        db->max_session_id = (uint64_t)sqlite3_column_int64(st, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

/* Refuses files and directories this process cannot write, before SQLite
 * quietly opens them read-only. */
static int check_writable(const char *path, char *err, size_t errlen)
{
    struct stat sb;
    char *dir, *slash;
    int rc = 0;

    if (stat(path, &sb) == 0) {
        if (!S_ISREG(sb.st_mode)) {
            db__err(err, errlen, "%s is not a regular file", path);
            return -EINVAL;
        }
        if (access(path, W_OK) != 0) {
            db__err(err, errlen,
                    "%s is read-only for this user: make it writable or give "
                    "--db another path",
                    path);
            return -EROFS;
        }
    }
    dir = strdup(path);
    if (dir == NULL)
        return -ENOMEM;
    slash = strrchr(dir, '/');
    if (slash == NULL)
        strcpy(dir, ".");
    else if (slash == dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    if (access(dir, W_OK | X_OK) != 0) {
        db__err(err, errlen,
                "directory %s is not writable for this user (the store needs its -wal and "
                "-shm files there)",
                dir);
        rc = -EROFS;
    }
    free(dir);
    return rc;
}

/*
 * Statement `one` (an INSERT of one row of `cols` values, "?1" .. "?cols",
 * maybe an upsert clause after them, which is dropped) made to insert
 * EV_GROUP rows, as INSERT OR IGNORE. Why OR IGNORE and no upsert: inside a
 * transaction, SQLite gives a statement that writes several rows and may
 * abort halfway (a NOT NULL check with the default ABORT, an upsert's
 * UPDATE) a statement journal, a copy of every page the statement touches
 * (a temp file once past 64 KiB): that doubled the writer's page writes.
 * With OR IGNORE no check can abort the statement, so it needs none; the
 * caller counts the rows it did not insert (sqlite3_changes). Returns an
 * sqlite3_malloc'ed string or NULL.
 */
static char *multi_row_sql(const char *one, int cols)
{
    sqlite3_str *q = sqlite3_str_new(NULL);
    const char *into = strstr(one, "INSERT INTO ");
    const char *values = strstr(one, " VALUES(");
    sqlite3_str_appendf(q, "INSERT OR IGNORE INTO %.*s", (int)(values - into - 12), into + 12);
    for (int i = 0; i < EV_GROUP; i++) {
        sqlite3_str_appendall(q, i == 0 ? " VALUES(" : ", (");
        for (int c = 1; c <= cols; c++)
            sqlite3_str_appendf(q, c < cols ? "?%d, " : "?%d)", i * cols + c);
    }
    return sqlite3_str_finish(q);
}

/*
 * Page size of a new store. 8 KiB pages cost the writer about 15% less CPU
 * per event than SQLite's 4 KiB default (fewer page splits, fewer pages per
 * commit in the WAL and in checkpoints, shallower indexes); 16 KiB measured
 * no better. Existing stores keep the size they were made with.
 */
#define DB_PAGE_SIZE 8192

static int open_connection(struct db *db, char *err, size_t errlen)
{
    char sql[160];
    int version = 0, rc;
    bool memory = strcmp(db->path, ":memory:") == 0;

    if (!memory && (rc = check_writable(db->path, err, errlen)) < 0)
        return rc;
    db__sqlite_setup();
    /* A nicer writer also yields inside its COMMIT (db_vfs.c). */
    rc = sqlite3_open_v2(db->path, &db->conn,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                         !memory && db->opt.thread_nice > 0 && db__yield_vfs() == SQLITE_OK
                             ? DB_YIELD_VFS
                             : NULL);
    if (rc != SQLITE_OK) {
        db__err(err, errlen, "cannot open %s: %s", db->path,
                db->conn != NULL ? sqlite3_errmsg(db->conn) : sqlite3_errstr(rc));
        return db__errno_of(rc);
    }
    if (sqlite3_db_readonly(db->conn, "main") == 1) {
        db__err(err, errlen, "%s can only be opened read-only", db->path);
        return -EROFS;
    }
    sqlite3_extended_result_codes(db->conn, 1);
    sqlite3_busy_timeout(db->conn, (int)db->opt.busy_timeout_ms);
    if ((rc = db__schema_check(db->conn, db->path, &version, err, errlen)) < 0)
        return rc;
    /* Only now that the file is known to be ours (or empty) do we write.
     * A new store gets DB_PAGE_SIZE pages (before the WAL switch, which
     * fixes the page size); an existing one keeps its own. */
    if (version == 0) {
        snprintf(sql, sizeof(sql), "PRAGMA page_size=%d", DB_PAGE_SIZE);
        sqlite3_exec(db->conn, sql, NULL, NULL, NULL);
    }
    if (!memory &&
        sqlite3_exec(db->conn, "PRAGMA journal_mode=WAL", NULL, NULL, NULL) != SQLITE_OK) {
        db__err(err, errlen, "cannot switch %s to WAL mode: %s", db->path,
                sqlite3_errmsg(db->conn));
        return -EIO;
    }
    /* NORMAL in WAL mode: a commit is a write() into the -wal, fsync only at
     * checkpoints; a kill -9 loses nothing committed, a power cut at most the
     * last commits, never consistency. A larger page cache keeps the indexes'
     * hot pages in memory between batches. */
    snprintf(sql, sizeof(sql), "PRAGMA synchronous=NORMAL; PRAGMA cache_size=-%u",
             db->opt.cache_kib);
    sqlite3_exec(db->conn, sql, NULL, NULL, NULL);
    /* gw_whois_key() serves the migration to version 3 and close_leftovers. */
    if (db__register_functions(db->conn) < 0) {
        db__err(err, errlen, "cannot register SQL functions: %s", sqlite3_errmsg(db->conn));
        return -EIO;
    }
    if (version < DB_SCHEMA_VERSION &&
        (rc = db__schema_migrate(db->conn, version, err, errlen)) < 0)
        return rc;
    if ((rc = read_max_id(db)) != SQLITE_OK) {
        db__err(err, errlen, "cannot read %s: %s", db->path, sqlite3_errmsg(db->conn));
        return db__errno_of(rc);
    }
    if ((rc = close_leftovers(db, err, errlen)) < 0)
        return rc;
    for (int i = 0; i < STMT_COUNT; i++) {
        const char *text = stmt_sql[i];
        char *multi = NULL;
        if (i == STMT_INSERT_EVENTS || i == STMT_INSERT_SESSIONS) {
            multi = i == STMT_INSERT_EVENTS ? multi_row_sql(stmt_sql[STMT_INSERT_EVENT], EV_COLS)
                                            : multi_row_sql(stmt_sql[STMT_UPSERT_SESSION], SE_COLS);
            text = multi;
        }
        if (text == NULL) {
            db__err(err, errlen, "out of memory for the store's statements");
            return -ENOMEM;
        }
        rc = sqlite3_prepare_v3(db->conn, text, -1, SQLITE_PREPARE_PERSISTENT, &db->stmt[i], NULL);
        sqlite3_free(multi);
        if (rc != SQLITE_OK) {
            db__err(err, errlen, "cannot prepare the store's statements on %s: %s", db->path,
                    sqlite3_errmsg(db->conn));
            return db__errno_of(rc);
        }
    }
    return 0;
}

/*
 * Checkpoints run on a thread and connection of their own: copying WAL pages
 * back into the database and the fsync that ends it can take hundreds of
 * milliseconds on a busy disk, and inside the writer's COMMIT (SQLite's
 * auto-checkpoint) they would hold up the next batch. A PASSIVE checkpoint
 * runs beside the writer's transactions; the WAL restarts from its start once
 * a checkpoint has caught up. The writer's WAL hook asks for one every
 * CKPT_BYTES of WAL (2000 pages of 4 KiB, 1000 of 8 KiB).
 */
#define CKPT_BYTES (2000 * 4096)
/*
 * Under sustained load the background checkpoint never quite catches up
 * (the writer appends while it copies), and the WAL only restarts from its
 * beginning after a checkpoint has copied every frame. Past WAL_MAX_BYTES
 * the writer checkpoints itself, right after its commit: nobody appends
 * meanwhile, so it completes, and what is left to copy is only what the
 * background one has not copied yet.
 */
#define WAL_MAX_BYTES (64 * 1024 * 1024)

static int wal_hook(void *arg, sqlite3 *conn, const char *name, int pages)
{
    struct db *db = arg;
    if (pages >= db->wal_max_pages)
        sqlite3_wal_checkpoint_v2(conn, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    else if (pages >= db->ckpt_pages && !atomic_exchange(&db->ckpt_asked, 1))
        sem_post(&db->ckpt_sem);
    return SQLITE_OK;
}

static void *ckpt_main(void *arg)
{
    struct db *db = arg;

    thread_be_nicer(db);
    while (!atomic_load(&db->ckpt_stop)) {
        sem_wait(&db->ckpt_sem);
        if (atomic_load(&db->ckpt_stop))
            break;
        atomic_store(&db->ckpt_asked, 0);
        /* Failures (busy, I/O) only let the WAL grow; the next one retries. */
        sqlite3_wal_checkpoint_v2(db->ckpt_conn, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    }
    return NULL;
}

/* Starts the checkpointer for a file store. Returns 0 or a negative errno. */
static int ckpt_start(struct db *db, char *err, size_t errlen)
{
    if (strcmp(db->path, ":memory:") == 0)
        return 0;
    int page = 4096;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db->conn, "PRAGMA page_size", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) >= 512)
        page = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    db->ckpt_pages = CKPT_BYTES / page;
    db->wal_max_pages = WAL_MAX_BYTES / page;
    /* A nicer checkpointer yields every few pages too (db_vfs.c): one
     * checkpoint call copies up to CKPT_BYTES and held the loop's core for
     * up to 3.7 ms without. */
    bool yield = db->opt.thread_nice > 0 && db__yield_vfs() == SQLITE_OK;
    int rc = sqlite3_open_v2(db->path, &db->ckpt_conn, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                             yield ? DB_YIELD_VFS : NULL);
    if (rc != SQLITE_OK) {
        db__err(err, errlen, "cannot open %s for checkpoints: %s", db->path, sqlite3_errstr(rc));
        return db__errno_of(rc);
    }
    sqlite3_busy_timeout(db->ckpt_conn, 1000);
    /* A connection learns the file is in WAL mode on its first read; until
     * then a checkpoint on it is a silent no-op. */
    rc = sqlite3_exec(db->ckpt_conn, "SELECT count(*) FROM sqlite_master", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        db__err(err, errlen, "cannot read %s for checkpoints: %s", db->path,
                sqlite3_errmsg(db->ckpt_conn));
        return db__errno_of(rc);
    }
    if (pthread_create(&db->ckpt_thread, NULL, ckpt_main, db) != 0) {
        db__err(err, errlen, "cannot start the store's checkpoint thread");
        return -EAGAIN;
    }
    pthread_setname_np(db->ckpt_thread, "gwdb-ckpt"); /* for top -H, perf */
    db->ckpt_running = true;
    sqlite3_wal_hook(db->conn, wal_hook, db);
    return 0;
}

/* Stops the checkpointer (before the writer's connection closes). */
static void ckpt_stop(struct db *db)
{
    if (db->ckpt_running) {
        atomic_store(&db->ckpt_stop, 1);
        sem_post(&db->ckpt_sem);
        pthread_join(db->ckpt_thread, NULL);
        db->ckpt_running = false;
    }
    if (db->conn != NULL)
        sqlite3_wal_hook(db->conn, NULL, NULL);
    sqlite3_close(db->ckpt_conn);
    db->ckpt_conn = NULL;
}

static void db_free(struct db *db)
{
    if (db == NULL)
        return;
    ckpt_stop(db);
    for (int i = 0; i < STMT_COUNT; i++)
        sqlite3_finalize(db->stmt[i]);
    if (db->conn != NULL)
        sqlite3_close(db->conn);
    pthread_cond_destroy(&db->cv_done);
    sem_destroy(&db->wake_sem);
    sem_destroy(&db->ckpt_sem);
    pthread_mutex_destroy(&db->mu);
    free(db->slots);
    free(db->batch);
    free(db->ring);
    free(db->path);
    free(db);
}

static int init_sync(struct db *db)
{
    pthread_condattr_t ca;
    if (pthread_mutex_init(&db->mu, NULL) != 0)
        return -ENOMEM;
    if (sem_init(&db->wake_sem, 0, 0) != 0 || sem_init(&db->ckpt_sem, 0, 0) != 0)
        return -ENOMEM;
    if (pthread_condattr_init(&ca) != 0)
        return -ENOMEM;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&db->cv_done, &ca) == 0 ? 0 : -ENOMEM;
    pthread_condattr_destroy(&ca);
    return rc;
}

int db_open(struct db **out, const struct db_options *o, char *err, size_t errlen)
{
    struct db *db;
    uint64_t cap = 1;
    int rc;

    if (o == NULL || o->path == NULL || o->path[0] == '\0' || o->queue_capacity == 0 ||
        o->batch_max == 0 || o->batch_max > (1u << 20) || o->flush_ms > 100 ||
        o->queue_capacity > (1u << 30) || o->thread_nice < 0 || o->thread_nice > 19 ||
        (o->retention_ms != 0 && (o->prune_step == 0 || o->prune_interval_ms == 0))) {
        db__err(err, errlen,
                "invalid store options (need a path, a queue, a batch size, "
                "flush_ms <= 100, thread_nice 0..19, a prune step and interval when "
                "retention is set)");
        return -EINVAL;
    }
    while (cap < o->queue_capacity)
        cap <<= 1;
    /* struct db has 64-byte aligned members (the ring positions, each on
     * its own cache line): calloc() only aligns to 16. */
    size_t dbsize = (sizeof(*db) + 63) & ~(size_t)63;
    db = aligned_alloc(64, dbsize);
    if (db == NULL)
        return -ENOMEM;
    memset(db, 0, dbsize);
    db->opt = *o;
    db->opt.path = NULL;
    db->mask = cap - 1;
    db->batch_cap = o->batch_max < 1024 ? o->batch_max : 1024; /* grows when quick */
    db->path = strdup(o->path);
    db->ring = calloc(cap, sizeof(*db->ring));
    db->batch = calloc(o->batch_max, sizeof(*db->batch));
    uint64_t slots = 2;
    while (slots < 2ULL * o->batch_max)
        slots <<= 1;
    db->slot_mask = (uint32_t)(slots - 1);
    db->slots = calloc(slots, sizeof(*db->slots));
    if (db->path == NULL || db->ring == NULL || db->batch == NULL || db->slots == NULL ||
        init_sync(db) < 0) {
        db__err(err, errlen, "out of memory for the store's queue");
        free(db->slots);
        free(db->batch);
        free(db->ring);
        free(db->path);
        free(db);
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < cap; i++)
        atomic_init(&db->ring[i].seq, i);
    if ((rc = open_connection(db, err, errlen)) < 0)
        goto out_free;
    db->next_prune = db_clock(db); /* first pass soon after start */
    if ((rc = ckpt_start(db, err, errlen)) < 0)
        goto out_free;
    if (pthread_create(&db->thread, NULL, writer_main, db) != 0) {
        db__err(err, errlen, "cannot start the store's writer thread");
        rc = -EAGAIN;
        goto out_free;
    }
    pthread_setname_np(db->thread, "gwdb-writer");
    *out = db;
    return 0;
out_free:
    db_free(db);
    return rc;
}

int db_flush(struct db *db)
{
    uint64_t target = atomic_load(&db->enq_pos);
    int rc = 0;

    pthread_mutex_lock(&db->mu);
    uint64_t fails = db->fail_count;
    db->flush_waiters++;
    sem_post(&db->wake_sem);
    while (db->committed_pos < target) {
        if (db->fail_count != fails) {
            rc = db->last_errno != 0 ? db->last_errno : -EIO;
            break;
        }
        pthread_cond_wait(&db->cv_done, &db->mu);
    }
    db->flush_waiters--;
    pthread_mutex_unlock(&db->mu);
    return rc;
}

int db_writer_exec(struct db *db, const char *sql, char *err, size_t errlen)
{
    pthread_mutex_lock(&db->mu);
    while (db->exec_sql != NULL && !db->stop) /* one request at a time */
        pthread_cond_wait(&db->cv_done, &db->mu);
    if (db->stop) {
        pthread_mutex_unlock(&db->mu);
        return -ESHUTDOWN;
    }
    db->exec_sql = sql;
    db->exec_err = err;
    db->exec_errlen = errlen;
    db->exec_done = false;
    sem_post(&db->wake_sem);
    while (!db->exec_done)
        pthread_cond_wait(&db->cv_done, &db->mu);
    int rc = db->exec_rc;
    pthread_mutex_unlock(&db->mu);
    return rc;
}

int db_close(struct db *db)
{
    if (db == NULL)
        return 0;
    pthread_mutex_lock(&db->mu);
    db->stop = true;
    sem_post(&db->wake_sem);
    pthread_mutex_unlock(&db->mu);
    pthread_join(db->thread, NULL);
    int rc = db->lost_at_close > 0 ? (db->last_errno != 0 ? db->last_errno : -EIO) : 0;
    db_free(db);
    return rc;
}

uint64_t db_max_session_id(const struct db *db)
{
    return db->max_session_id;
}

uint64_t db_restart_closed(const struct db *db)
{
    return db->restart_closed;
}

void db_get_stats(struct db *db, struct db_stats *out)
{
    uint64_t enq = atomic_load(&db->enq_pos);
    pthread_mutex_lock(&db->mu);
    out->submitted = enq;
    out->written = db->written;
    out->dropped = atomic_load(&db->dropped);
    out->skipped = db->skipped;
    out->batches = db->batches;
    out->errors = db->errors;
    out->episodes = db->episodes_begun;
    out->pruned_events = db->pruned_events;
    out->pruned_sessions = db->pruned_sessions;
    out->max_txn_ms = db->max_txn_ms;
    /* Records in the writer's failed batch still count as waiting. */
    out->queue_depth = (uint32_t)(enq - db->committed_pos);
    out->queue_capacity = (uint32_t)(db->mask + 1);
    out->degraded = db->degraded;
    memcpy(out->last_error, db->last_error, sizeof(out->last_error));
    pthread_mutex_unlock(&db->mu);
}

enum db_status db_status_poll(struct db *db, char *msg, size_t msglen)
{
    enum db_status st = DB_STATUS_SAME;
    pthread_mutex_lock(&db->mu);
    if (db->episodes_reported_begun < db->episodes_begun) {
        db->episodes_reported_begun = db->episodes_begun;
        db__err(msg, msglen, "store failing, events are queued then dropped: %s", db->last_error);
        st = DB_STATUS_FAILING;
    } else if (db->episodes_reported_ended < db->episodes_ended) {
        db->episodes_reported_ended = db->episodes_ended;
        db__err(msg, msglen, "store writing again; %llu records dropped while it failed",
                (unsigned long long)db->dropped_in_last_episode);
        st = DB_STATUS_RECOVERED;
    }
    pthread_mutex_unlock(&db->mu);
    return st;
}
