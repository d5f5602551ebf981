/*
 * nat.h - libnat, the NAT engine: flow keys, the session table and its two
 * indexes, port pools and allocation policies, mapping behaviours, timeouts,
 * quotas, events and counters. Pure C: no I/O, no sockets, no libev, no
 * globals, no clock (every call that needs the time takes `now`).
 *
 * Time is an opaque count of milliseconds chosen by the caller: gwd passes
 * wall-clock milliseconds since the Unix epoch (what it logs), gwsim passes
 * virtual milliseconds. The engine only adds and compares them, and never
 * goes back: a `now` earlier than the latest one seen counts as the latest.
 *
 * docs/nat.md describes the behaviour (policies, mappings, timeouts, reuse
 * delay, quotas, events, limits) with its RFC references.
 */
#ifndef GW_NAT_H
#define GW_NAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- addresses (nat_addr.c) -------------------------------------------- */

/*
 * An IPv4 or IPv6 address in 16 bytes, network byte order. IPv4 is stored
 * IPv4-mapped (::ffff:a.b.c.d), so one key type serves both families and
 * comparing two addresses is a memcmp.
 */
struct nat_addr {
    uint8_t b[16];
};

/* An address and a port (host byte order). */
struct nat_endpoint {
    struct nat_addr addr;
    uint16_t port;
};

/* Longest text form of a nat_addr, with the NUL (INET6_ADDRSTRLEN). */
#define NAT_ADDR_STRLEN 46

/* Parses dotted IPv4 or textual IPv6 into *out. Returns 0, or -1 when `s` is
 * not an address (then *out is untouched). */
int nat_addr_parse(struct nat_addr *out, const char *s);

/* Writes the canonical text of `a` (dotted quad for IPv4-mapped) into buf,
 * which holds at least NAT_ADDR_STRLEN bytes. Returns buf. */
char *nat_addr_format(const struct nat_addr *a, char *buf);

/* Builds an address from an IPv4 address in network byte order. */
struct nat_addr nat_addr_from_v4(uint32_t be_addr);

/* True when `a` is IPv4-mapped. */
bool nat_addr_is_v4(const struct nat_addr *a);

/* Parses "ADDR" or "ADDR/LEN" (LEN counted in the address's own family: /8 on
 * IPv4 means the first 8 bits of the IPv4 address). Returns 0 and writes *net
 * and *plen (as a 0..128 length over the 16-byte form), or -1. */
int nat_prefix_parse(struct nat_addr *net, uint8_t *plen, const char *s);

/* True when `a` lies in net/plen (plen over the 16-byte form, 0 = anything). */
bool nat_addr_in_prefix(const struct nat_addr *a, const struct nat_addr *net, uint8_t plen);

/* ---- flows and sessions ------------------------------------------------- */

enum nat_proto {
    NAT_PROTO_TCP = 6,
    NAT_PROTO_UDP = 17,
};

/* "tcp"/"udp"; NULL for anything else. */
const char *nat_proto_name(uint8_t proto);

/*
 * The inside flow key: who sends (the client endpoint) to whom (the
 * destination: in gwd, the backend server the flow was routed to).
 */
struct nat_key {
    struct nat_endpoint client;
    struct nat_endpoint dst;
    uint8_t proto; /* enum nat_proto */
};

/*
 * Session state. TCP sessions move NEW (connect in progress) ->
 * ESTABLISHED -> CLOSING (a FIN seen, half-closed) and are then closed by the
 * caller; UDP sessions are NEW until the first reply, then ESTABLISHED.
 * Timeouts: UDP uses the udp timeout in every state; TCP ESTABLISHED uses
 * tcp_established, NEW and CLOSING use tcp_transitory.
 */
enum nat_state {
    NAT_STATE_NEW = 0,
    NAT_STATE_ESTABLISHED,
    NAT_STATE_CLOSING,
    NAT_STATE_CLOSED, /* only seen in close/expire events and in the store */
    NAT_STATE_COUNT
};

/* "new", "established", "closing", "closed". */
const char *nat_state_name(enum nat_state st);
/* Reverse of nat_state_name; -1 when unknown. */
int nat_state_parse(const char *name);

/*
 * One translated flow. Callers read the fields; they change them only
 * through nat_* calls. The pointer stays valid until the session is closed or
 * expired (its close/expire event is the last time it is seen).
 */
struct nat_session {
    uint64_t id;              /* unique, increasing: nat_config.first_id, +1 ... */
    struct nat_key key;       /* inside key */
    struct nat_endpoint ext;  /* the translated source: nat ip and nat port */
    uint64_t opened_at;       /* ms */
    uint64_t last_seen;       /* ms, refreshed by nat_session_touch */
    uint64_t bytes_in;        /* client -> backend */
    uint64_t bytes_out;       /* backend -> client */
    void *udata;              /* borrowed: the caller's flow object, or NULL (the one
                                 field the caller sets directly) */
    uint32_t backend;         /* caller's tag for the backend pool/server */
    uint8_t state;            /* enum nat_state */
    uint8_t ip_index;         /* index of ext.addr in nat_config.ips */
};

/* ---- configuration ------------------------------------------------------ */

enum nat_policy {
    NAT_POLICY_SEQUENTIAL = 0, /* next free port after the last one given (Windows-like) */
    NAT_POLICY_RANDOM,         /* random start, probe onwards (Linux-like) */
    NAT_POLICY_PRESERVE,       /* the client's own port when in range and free, else random */
    NAT_POLICY_BLOCK,          /* per client IP, contiguous blocks of block_size ports (RFC 7422) */
};

enum nat_mapping {
    NAT_MAPPING_EIM = 0, /* endpoint-independent: a client endpoint has one ext port, for it alone */
    NAT_MAPPING_ADM,     /* address-dependent: ext port unique per destination address */
    NAT_MAPPING_APDM,    /* address-and-port-dependent: ext port unique per destination endpoint */
};

/* "sequential"/"random"/"preserve"/"block"; "eim"/"adm"/"apdm". Parsers
 * return -1 for unknown names. */
const char *nat_policy_name(enum nat_policy p);
int nat_policy_parse(const char *name);
const char *nat_mapping_name(enum nat_mapping m);
int nat_mapping_parse(const char *name);

enum nat_timeout {
    NAT_TIMEOUT_UDP = 0,
    NAT_TIMEOUT_TCP_ESTABLISHED,
    NAT_TIMEOUT_TCP_TRANSITORY,
    NAT_TIMEOUT_COUNT
};

#define NAT_MAX_IPS 64
#define NAT_MAX_BLOCK_HOLD_MS 86400000u /* a day */

struct nat_config {
    enum nat_policy policy;
    enum nat_mapping mapping;
    struct nat_addr ips[NAT_MAX_IPS]; /* external addresses; pool = ips x ports */
    unsigned n_ips;
    uint16_t port_lo, port_hi;        /* inclusive */
    uint32_t timeout_ms[NAT_TIMEOUT_COUNT];
    uint32_t per_client_limit;        /* live sessions per client IP; 0 = none */
    uint32_t block_size;              /* ports per block for NAT_POLICY_BLOCK */
    uint32_t max_blocks_per_client;   /* 0 = as many as the pool has */
    uint32_t block_hold_ms;           /* a client with no session left keeps its blocks
                                         this long (0: given back at once); taken back
                                         earlier when another client needs a block */
    uint32_t reuse_delay_ms;          /* a released port waits this long (RFC 6888 REQ-8) */
    uint32_t max_sessions;            /* live sessions in the table; 0 = no limit */
    uint64_t first_id;                /* id of the first session (gwd: one past the store's) */
    uint64_t seed;                    /* for the random policies; same seed, same choices */
};

/*
 * Fills *cfg with the defaults of ../shared/DESIGN.md: random, eim,
 * 127.0.0.1, ports 20000-32767, timeouts 300/7440/240 s, no quota, blocks of
 * 64, reuse delay (see nat.c for the value and why), no session limit,
 * first_id 1.
 */
void nat_config_default(struct nat_config *cfg);

/* ---- errors ------------------------------------------------------------- */

enum nat_err {
    NAT_OK = 0,
    NAT_ERR_POOL_EXHAUSTED, /* no free external port for this flow */
    NAT_ERR_CLIENT_QUOTA,   /* per_client_limit reached (or block limit reached) */
    NAT_ERR_TABLE_FULL,     /* max_sessions reached */
    NAT_ERR_EXISTS,         /* a live session already has this inside key */
    NAT_ERR_INVAL,          /* bad argument or configuration */
    NAT_ERR_NOMEM,
    NAT_ERR_COUNT
};

/* A stable snake_case token for logs, the store and JSON: "pool_exhausted",
 * "client_quota", "table_full", "exists", "invalid", "no_memory". */
const char *nat_err_name(enum nat_err e);
/* A sentence for people. */
const char *nat_strerror(enum nat_err e);

/* ---- events ------------------------------------------------------------- */

enum nat_event_type {
    NAT_EV_OPEN = 0,
    NAT_EV_CLOSE,  /* closed by the caller (nat_session_close, nat_flush) */
    NAT_EV_EXPIRE, /* timed out in nat_expire */
    NAT_EV_REFUSE, /* nat_session_open failed for want of a mapping */
    NAT_EV_REPICK, /* nat_session_repick gave the session another external port:
                      the event's s.ext is the new one; reason "eaddrinuse" */
    NAT_EV_BLOCK_ALLOC, /* NAT_POLICY_BLOCK: a client took a block of ports */
    NAT_EV_BLOCK_FREE,  /* ... and gave it back (its last session went) */
    NAT_EV_COUNT
};

/* "open", "close", "expire", "refuse", "repick", "block_alloc", "block_free". */
const char *nat_event_name(enum nat_event_type t);

/*
 * What an event carries: a copy of the session as it is at that moment (for
 * REFUSE only `key`, `backend` and `opened_at` are set, id 0). `reason` is the
 * close reason given by the caller (a string with static lifetime), "timeout"
 * for EXPIRE, nat_err_name() of the failure for REFUSE, NULL for OPEN.
 *
 * Block events (RFC 7422 / port-block allocation, where a carrier logs one
 * record per block instead of one per flow) are about a client, not a
 * session: only s.key.client.addr (the client), s.ext (the nat address and
 * the block's first port), s.ip_index and s.opened_at are set, s.id and
 * s.key.proto are 0 (a block serves both protocols), and port_last is the
 * block's last port. BLOCK_ALLOC comes before the OPEN (or REPICK) that took
 * the block, BLOCK_FREE after the CLOSE or EXPIRE of the client's last
 * session. port_last is 0 for the other events.
 */
struct nat_event {
    enum nat_event_type type;
    uint16_t port_last;
    uint64_t time;
    const char *reason;
    struct nat_session s;
};

/*
 * Called synchronously from inside nat_session_open/close, nat_expire and
 * nat_flush. It may read the table but must not open, close or flush sessions
 * (it may drop its own references: after an EXPIRE event the session is
 * gone). During a CLOSE or EXPIRE event the session's pointer is still valid
 * (lookups and listings no longer find it; touching it is ignored).
 */
typedef void (*nat_event_fn)(void *arg, const struct nat_event *ev);

/* ---- the table ---------------------------------------------------------- */

struct nat_table;

/*
 * Makes a table for `cfg` (copied). Returns 0 and *out, or NAT_ERR_INVAL
 * (bad range, no ips, block_size 0 with the block policy...) or
 * NAT_ERR_NOMEM.
 */
enum nat_err nat_table_new(struct nat_table **out, const struct nat_config *cfg);

/* Frees the table and every session in it, with no events. NULL is a no-op. */
void nat_table_free(struct nat_table *t);

/* The configuration in force (read-only). */
const struct nat_config *nat_table_config(const struct nat_table *t);

/*
 * Changes what can change under live sessions: timeouts, per_client_limit,
 * reuse_delay_ms, max_sessions. Other fields of `cfg` must equal the current
 * ones, or NAT_ERR_INVAL is returned and nothing changes (first_id and seed
 * are ignored: they only matter when a table is made). Lower limits refuse
 * new flows; they never evict.
 */
enum nat_err nat_table_reconfigure(struct nat_table *t, const struct nat_config *cfg);

/* Sets the event callback (NULL to stop). One subscriber; the caller fans out. */
void nat_table_set_event_cb(struct nat_table *t, nat_event_fn fn, void *arg);

/*
 * Opens a session for `key`: picks the external endpoint by policy and mapping
 * behaviour (EIM: the client endpoint's existing mapping is reused when it has
 * one; paired pooling: a client IP keeps one external IP), inserts it in both
 * indexes, arms its timer and emits OPEN. Returns NAT_OK and *out, or the
 * reason no mapping could be had (counted, and a REFUSE event emitted for
 * POOL_EXHAUSTED, CLIENT_QUOTA and TABLE_FULL). Never evicts a live session.
 */
enum nat_err nat_session_open(struct nat_table *t, const struct nat_key *key, uint32_t backend,
                              uint64_t now, struct nat_session **out);

/* The live session with this inside key, or NULL. O(1) on average. */
struct nat_session *nat_lookup_inside(const struct nat_table *t, const struct nat_key *key);

/*
 * The live session that owns external endpoint `ext` for protocol `proto`
 * toward destination `dst` (the reverse lookup a NAT does on a reply), or
 * NULL. O(1) on average.
 */
struct nat_session *nat_lookup_outside(const struct nat_table *t, uint8_t proto,
                                       const struct nat_endpoint *ext,
                                       const struct nat_endpoint *dst);

/* An outside key (the reverse lookup's arguments), for nat_lookup_outside_many. */
struct nat_outside_key {
    uint8_t proto;
    struct nat_endpoint ext;
    struct nat_endpoint dst;
};

/*
 * Batched lookups: out[i] = the live session for keys[i], or NULL; the same
 * answers as n single calls, but the memory accesses of up to 16 lookups
 * overlap (prefetch), which is several times faster when the table is larger
 * than the CPU caches (gwd can look up a recvmmsg batch at once). Return how
 * many were found.
 */
size_t nat_lookup_inside_many(const struct nat_table *t, const struct nat_key *keys, size_t n,
                              struct nat_session **out);
size_t nat_lookup_outside_many(const struct nat_table *t, const struct nat_outside_key *keys,
                               size_t n, struct nat_session **out);

/* Traffic seen: adds the byte counts, sets last_seen and re-arms the timer. */
void nat_session_touch(struct nat_table *t, struct nat_session *s, uint64_t now,
                       uint64_t bytes_in, uint64_t bytes_out);

/* Moves the session to `st` (re-arming its timer for the new state's timeout;
 * a state change counts as activity: last_seen = now). NAT_STATE_CLOSED and
 * unknown states are ignored: close with nat_session_close. */
void nat_session_set_state(struct nat_table *t, struct nat_session *s, enum nat_state st,
                           uint64_t now);

/*
 * The caller could not use the external port it was given (bind failed with
 * EADDRINUSE: another socket on the host holds it). Marks that port unusable
 * for `busy_ms` and gives the session another one, like a fresh open would.
 * Returns NAT_OK (s->ext changed, REPICK emitted), or the reason no other
 * port could be had (the session is then left as it was; the caller closes
 * it). Counted in nat_stats.repicks either way.
 */
enum nat_err nat_session_repick(struct nat_table *t, struct nat_session *s, uint64_t now,
                                uint32_t busy_ms);

/*
 * Closes the session: removes it from both indexes, releases its port (which
 * then waits reuse_delay_ms), emits CLOSE with `reason` (a string with static
 * lifetime, e.g. "client_fin", "backend_rst") and frees it.
 */
void nat_session_close(struct nat_table *t, struct nat_session *s, uint64_t now,
                       const char *reason);

/*
 * Expires sessions whose timeout has passed at `now`, at most `budget` of them
 * (0 = no limit), emitting EXPIRE for each. Returns how many expired. Cost is
 * proportional to the sessions expired, never to the table size: sessions of
 * one timeout class share one timeout, so one list per class kept in order
 * of last activity is already in deadline order.
 */
size_t nat_expire(struct nat_table *t, uint64_t now, size_t budget);

/* Ends every block hold at once (a BLOCK_FREE per block), e.g. at shutdown
 * after the last flush, so that the log shows no block held by nobody.
 * Returns how many clients were released. */
size_t nat_end_holds(struct nat_table *t, uint64_t now);

/* When the next session may expire (ms), or UINT64_MAX when the table is empty. */
uint64_t nat_next_expiry(const struct nat_table *t);

/* ---- listing and filters ------------------------------------------------ */

/* Which sessions a listing or flush is about. Zeroed = all. */
struct nat_filter {
    uint8_t proto;            /* 0 = any */
    bool has_client;
    struct nat_addr client;   /* with client_plen: a client IP or CIDR */
    uint8_t client_plen;
    bool has_nat_ip;
    struct nat_addr nat_ip;
    uint16_t nat_port_lo, nat_port_hi; /* 0,0 = any */
    bool has_backend;
    uint32_t backend;
    int state;                /* -1 or enum nat_state; note a zeroed filter means NEW: use nat_filter_init */
};

/* Sets *f to match everything. */
void nat_filter_init(struct nat_filter *f);

/* True when s passes f. */
bool nat_filter_match(const struct nat_filter *f, const struct nat_session *s);

/*
 * Calls fn for each live session that passes `f` (NULL = all) with id >
 * after_id, in increasing id order, until fn returns non-zero. fn must not
 * open or close sessions. Returns how many sessions fn was called for.
 */
size_t nat_foreach(const struct nat_table *t, const struct nat_filter *f, uint64_t after_id,
                   int (*fn)(void *arg, const struct nat_session *s), void *arg);

/*
 * Walks live sessions that pass `f` (NULL = all) in storage order, not id
 * order, resuming at *cursor (0 to start), calling fn until it returns
 * non-zero or `max` sessions were visited (0 = no limit). Writes to *cursor
 * where the next call resumes, or 0 when the walk is over. Returns how many
 * sessions fn was called for. Cost: O(slots looked at), so a whole walk is
 * one pass over the table however it is cut (nat_foreach in id order costs a
 * scan per call). A session that lives through the whole walk is seen
 * exactly once; one opened meanwhile may or may not be seen. fn must not
 * open or close sessions; between two calls anything may happen.
 */
size_t nat_walk(const struct nat_table *t, const struct nat_filter *f, uint32_t *cursor,
                size_t max, int (*fn)(void *arg, const struct nat_session *s), void *arg);

/*
 * Closes every live session that passes `f` with `reason`, emitting CLOSE for
 * each in id order (the callback learns which flows to tear down via
 * s.udata). Returns how many were closed.
 */
size_t nat_flush(struct nat_table *t, const struct nat_filter *f, uint64_t now,
                 const char *reason);

/* ---- counters ----------------------------------------------------------- */

struct nat_stats {
    uint64_t opened;
    uint64_t closed;
    uint64_t expired;
    uint64_t refused[NAT_ERR_COUNT];  /* by reason */
    uint64_t repicks;                 /* nat_session_repick calls (EADDRINUSE) */
    uint64_t live;                    /* live sessions */
    uint64_t live_by[2][NAT_STATE_COUNT]; /* [0] tcp, [1] udp; by state */
    uint64_t ports_total;             /* ips x ports (per protocol: tcp and udp each have it) */
    uint64_t ports_in_use;            /* (proto, ip, port) held by at least one session */
    uint64_t ports_cooling;           /* released, waiting out reuse_delay_ms (adm/apdm:
                                         per destination; counted out lazily) */
    uint64_t blocks_in_use;           /* NAT_POLICY_BLOCK only */
    uint64_t blocks_held;             /* of those, held by clients with no session
                                         (block_hold_ms) */
    uint64_t bytes_in, bytes_out;     /* of closed and live sessions */
    size_t memory_bytes;              /* what the table holds from the heap */
};

/* Fills *out with the counters. O(1). */
void nat_get_stats(const struct nat_table *t, struct nat_stats *out);

/* Ports of external address number `ip_index` held by at least one session. */
uint64_t nat_ip_ports_in_use(const struct nat_table *t, unsigned ip_index);

/* Live sessions of client IP `client`. O(1) on average. */
uint32_t nat_client_sessions(const struct nat_table *t, const struct nat_addr *client);

/* A port block in use (NAT_POLICY_BLOCK), as nat_blocks_each reports it. */
struct nat_block_info {
    struct nat_addr client;       /* its owner */
    struct nat_addr nat;          /* the external address */
    uint16_t port_lo, port_last;  /* its ports */
    uint32_t sessions;            /* the owner's live sessions (over all its blocks) */
    bool held;                    /* the owner has no session and keeps it (block_hold_ms) */
    uint64_t hold_until;          /* ... until then; 0 when not held */
};

/*
 * Calls fn for each port block in use, a client's blocks in the order it took
 * them, until fn returns non-zero. fn must not change the table. O(clients).
 * Returns how many blocks fn was called for (0 under other policies).
 */
size_t nat_blocks_each(const struct nat_table *t,
                       int (*fn)(void *arg, const struct nat_block_info *b), void *arg);

#endif /* GW_NAT_H */
