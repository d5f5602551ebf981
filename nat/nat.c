/*
 * nat.c - libnat: the session table, its indexes, port pools, allocation
 * policies, mapping behaviours, timeouts, quotas, events and counters.
 *
 * Layout (docs/nat.md has the behaviour; this is the machinery):
 * - Sessions live in a slab of fixed 16384-slot chunks of 2 MiB (huge pages
 *   when the kernel gives them; pointers stay valid), 128 bytes each, with a
 *   free list. A slot number (uint32) names a session.
 * - Four open-addressing indexes (nat_hash.h, incremental growth): inside key
 *   -> session, outside key (proto, ext, dst) -> session, mapping key ->
 *   the mapping's first session (eim, adm), client IP -> client record; and
 *   a fifth, destination -> port set (adm, apdm).
 * - Expiry: one doubly linked list per timeout class (udp, tcp established,
 *   tcp transitory). All sessions of a class share one timeout, so a list
 *   kept in last-activity order is also in deadline order: arming and
 *   re-arming are O(1) (move to tail), expiring pops heads. This is a timer
 *   wheel with three exact slots.
 * - Port sets: per IP a bitmap of ports that are used or cooling (one set per
 *   protocol for eim; one per destination address or endpoint for adm/apdm),
 *   searched 64 ports per word from a start point, so allocation stays fast
 *   at 99% full. Released ports wait in a FIFO for the reuse delay. Ports
 *   refused by the host (EADDRINUSE) are marked in a per-protocol busy
 *   bitmap with a min-heap of release times.
 */
#include "nat/nat.h"

#include "nat/nat_hash.h"

#include <stdlib.h>
#include <string.h>

/*
 * Default reuse delay: 2 s, not RFC 6888 REQ-8's 120 s. gw is a test tool
 * whose pools are small (12768 ports per IP by default) and whose flows come
 * from load generators: with 120 s, a pool can hand out only ~106 new
 * mappings per second per IP and protocol before it runs dry on cooling
 * ports, which would make gwsim measure the delay instead of the gateway.
 * 2 s still outlasts late datagrams and FIN/ACK retransmissions on loopback
 * and LAN paths (RTO minimum 200 ms, a few retries). TCP's own TIME_WAIT
 * (60 s on Linux) is handled by the caller's repick on EADDRNOTAVAIL. Set
 * reuse_delay_ms = 120000 to follow RFC 6888 on real networks.
 */
#define NAT_DEFAULT_REUSE_DELAY_MS 2000u

#define NIL UINT32_MAX
#define CHUNK_SHIFT 14 /* 16384 sessions x 128 bytes = one 2 MiB huge page */
#define CHUNK_SLOTS (1u << CHUNK_SHIFT)
#define MAX_SLOTS (NIL - CHUNK_SLOTS)
#define NO_IP 0xffu
#define INITIAL_INDEX 1024u
#define MAX_PRESIZE (1u << 20)

struct nat_sess {
    struct nat_session pub;
    uint32_t lru_prev, lru_next; /* its timeout class's list; lru_next links the free list */
    uint32_t map_next;           /* next session of the same mapping (eim, adm) */
    uint32_t self;               /* its slot */
};

_Static_assert(sizeof(struct nat_sess) == 128, "a session is two cache lines");

struct nat_client {
    struct nat_addr addr;
    uint32_t sessions; /* live sessions */
    uint8_t ip[2];     /* paired external IP per family ([0] IPv4, [1] IPv6), NO_IP */
    uint32_t nblocks;  /* NAT_POLICY_BLOCK: blocks held */
    uint32_t cap_blocks;
    uint32_t *blocks; /* owned: (ip << 16) | block number */
    uint32_t next_free;
    /* block_hold_ms: a client with no session and blocks waits in the hold
     * list (oldest first) until hold_until, then its blocks go */
    uint32_t hold_prev, hold_next; /* NIL when not held */
    uint64_t hold_until;
};

struct nat_portset {
    uint8_t proto;
    struct nat_endpoint dst; /* adm: port 0; eim: unused */
    uint32_t refs;           /* bits set: ports used or cooling in this set */
    uint32_t self;
    uint64_t bits[]; /* n_ips x words */
};

struct nat_cool {
    uint64_t at; /* released at */
    uint32_t set;
    uint16_t off;
    uint8_t ip;
};

struct nat_busy {
    uint64_t until;
    uint32_t off;
    uint8_t ip;
    uint8_t pi;
};

struct nat_table {
    struct nat_config cfg;
    uint32_t nports, words;      /* ports per IP; 64-bit words per IP bitmap */
    uint32_t nblocks, blk_words; /* NAT_POLICY_BLOCK: blocks per IP */
    uint64_t rng;
    uint64_t hs[7]; /* hash secrets, from the seed */
    uint64_t clock; /* latest `now` seen: time never goes back inside */
    uint64_t next_id;
    nat_event_fn ev_fn;
    void *ev_arg; /* borrowed */

    struct nat_sess **chunks; /* owned, each owned */
    uint32_t n_chunks, cap_chunks;
    uint32_t hi;        /* slots ever handed out */
    uint32_t free_head; /* free slots below hi */
    uint32_t dying;     /* the session whose CLOSE/EXPIRE is being emitted, or NIL */
    uint32_t lru_head[NAT_TIMEOUT_COUNT], lru_tail[NAT_TIMEOUT_COUNT];

    struct nat_hash by_inside, by_outside, by_mapping, by_client, by_set;

    struct nat_client *clients; /* owned */
    uint32_t n_clients, cap_clients, client_free;
    uint32_t hold_head, hold_tail; /* clients keeping blocks with no session, FIFO */

    struct nat_portset **sets; /* owned, each owned; NULL = free */
    uint32_t *set_free;        /* owned: stack of free set numbers */
    uint32_t n_sets, cap_sets, n_set_free;
    size_t set_bytes, block_bytes;

    uint64_t *busy[2];  /* owned: per protocol, n_ips x words */
    uint32_t *users[2]; /* owned, adm/apdm: mappings per (ip, port) */
    uint64_t *blk;      /* owned, block policy: n_ips x blk_words */
    uint32_t ip_in_use[NAT_MAX_IPS];

    struct nat_cool *cool; /* owned ring */
    uint32_t cool_head, cool_n, cool_cap;
    struct nat_busy *bheap; /* owned min-heap by until */
    uint32_t bheap_n, bheap_cap;

    uint32_t seq_cursor[2];
    uint32_t ip_cursor;
    struct nat_stats st;
};

/* ---- small helpers ------------------------------------------------------ */

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* A number in [0, n): the high 32 random bits scaled (no division). */
static uint32_t rnd(struct nat_table *t, uint32_t n)
{
    return (uint32_t)(((splitmix(&t->rng) >> 32) * n) >> 32);
}

static uint64_t advance(struct nat_table *t, uint64_t now)
{
    if (now > t->clock)
        t->clock = now;
    return t->clock;
}

static inline struct nat_sess *sess(const struct nat_table *t, uint32_t slot)
{
    return &t->chunks[slot >> CHUNK_SHIFT][slot & (CHUNK_SLOTS - 1)];
}

/* Starts loading the cache line at p. An asm statement on x86: gcc 12
 * silently drops __builtin_prefetch of a session in the pipelined loops. */
static inline void prefetch_line(const void *p)
{
#if defined(__x86_64__) || defined(__i386__)
    __asm__ volatile("prefetcht0 %0" : : "m"(*(const char *)p));
#else
    __builtin_prefetch(p);
#endif
}

static inline struct nat_sess *sess_of(struct nat_session *s)
{
    return (struct nat_sess *)s;
}

static inline unsigned proto_index(uint8_t proto)
{
    return proto == NAT_PROTO_UDP;
}

static inline bool addr_eq(const struct nat_addr *a, const struct nat_addr *b)
{
    return memcmp(a->b, b->b, 16) == 0;
}

static inline bool ep_eq(const struct nat_endpoint *a, const struct nat_endpoint *b)
{
    return a->port == b->port && addr_eq(&a->addr, &b->addr);
}

/* 0 for IPv4-mapped, 1 for IPv6 (nat_addr_is_v4, inlined). */
static inline unsigned family(const struct nat_addr *a)
{
    static const uint8_t v4_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

    return memcmp(a->b, v4_prefix, 12) != 0;
}

static inline int timeout_class(const struct nat_session *s)
{
    if (s->key.proto == NAT_PROTO_UDP)
        return NAT_TIMEOUT_UDP;
    return s->state == NAT_STATE_ESTABLISHED ? NAT_TIMEOUT_TCP_ESTABLISHED
                                             : NAT_TIMEOUT_TCP_TRANSITORY;
}

/*
 * Hashing: each 16-byte address is folded by one 64x64->128-bit multiply
 * ("mum": low half xor high half, as in wyhash), the folds are combined and
 * folded once more with the ports and protocol. A few independent multiplies
 * instead of a chain of them. Keys come from the network: the per-table
 * secret t->hs[] (from the seed) keeps the bucket layout unpredictable to
 * anyone who does not know the seed.
 */
static inline uint64_t mum(uint64_t a, uint64_t b)
{
    __uint128_t r = (__uint128_t)a * b;

    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

static inline uint64_t fold_addr(const struct nat_addr *a, uint64_t s0, uint64_t s1)
{
    uint64_t w0, w1;

    memcpy(&w0, a->b, 8);
    memcpy(&w1, a->b + 8, 8);
    return mum(w0 ^ s0, w1 ^ s1);
}

/* ---- hashing and key comparison ----------------------------------------- */

static uint64_t hash_inside(const struct nat_table *t, const struct nat_key *k)
{
    uint64_t h = fold_addr(&k->client.addr, t->hs[0], t->hs[1]) ^
                 fold_addr(&k->dst.addr, t->hs[2], t->hs[3]);

    return mum(h ^ t->hs[4],
               ((uint64_t)k->client.port | (uint64_t)k->dst.port << 16 | (uint64_t)k->proto << 32) ^
                   t->hs[5]);
}

static uint64_t hash_outside(const struct nat_table *t, uint8_t proto,
                             const struct nat_endpoint *ext, const struct nat_endpoint *dst)
{
    uint64_t h =
        fold_addr(&ext->addr, t->hs[1], t->hs[0]) ^ fold_addr(&dst->addr, t->hs[3], t->hs[2]);

    return mum(h ^ t->hs[5],
               ((uint64_t)ext->port | (uint64_t)dst->port << 16 | (uint64_t)proto << 32) ^
                   t->hs[4]);
}

/* Mapping key: (proto, client endpoint, destination family) for eim, the
 * destination address instead of its family for adm. The family is part of
 * an eim key because a mapping's external address has the destination's
 * family: one client endpoint toward an IPv4 and an IPv6 destination has
 * two mappings. */
static uint64_t hash_mapping(const struct nat_table *t, const struct nat_key *k)
{
    uint64_t h = fold_addr(&k->client.addr, t->hs[2], t->hs[0]);

    if (t->cfg.mapping == NAT_MAPPING_ADM)
        h ^= fold_addr(&k->dst.addr, t->hs[1], t->hs[3]);
    return mum(h ^ t->hs[4], ((uint64_t)k->client.port | (uint64_t)k->proto << 32 |
                              (uint64_t)family(&k->dst.addr) << 40) ^
                                 t->hs[6]);
}

static uint64_t hash_client(const struct nat_table *t, const struct nat_addr *a)
{
    return mum(fold_addr(a, t->hs[3], t->hs[1]) ^ t->hs[6], t->hs[5]);
}

/* Port set key: the destination (port 0 for adm). */
static uint64_t hash_set(const struct nat_table *t, uint8_t proto, const struct nat_endpoint *d)
{
    uint64_t h = fold_addr(&d->addr, t->hs[0], t->hs[3]);

    return mum(h ^ t->hs[6], ((uint64_t)d->port | (uint64_t)proto << 32) ^ t->hs[2]);
}

/* The eq callbacks are always inlined into nh_find: a call per probe costs
 * the lookup loops a measurable share. */
__attribute__((always_inline)) static inline bool eq_inside(const void *ctx, uint32_t slot,
                                                            const void *key)
{
    const struct nat_key *a = &sess(ctx, slot)->pub.key;
    const struct nat_key *b = key;

    return a->proto == b->proto && ep_eq(&a->client, &b->client) && ep_eq(&a->dst, &b->dst);
}

struct outside_key {
    uint8_t proto;
    const struct nat_endpoint *ext, *dst;
};

__attribute__((always_inline)) static inline bool eq_outside(const void *ctx, uint32_t slot,
                                                             const void *key)
{
    const struct nat_session *s = &sess(ctx, slot)->pub;
    const struct outside_key *k = key;

    return s->key.proto == k->proto && ep_eq(&s->ext, k->ext) && ep_eq(&s->key.dst, k->dst);
}

static bool eq_mapping(const void *ctx, uint32_t slot, const void *key)
{
    const struct nat_table *t = ctx;
    const struct nat_key *a = &sess(t, slot)->pub.key;
    const struct nat_key *b = key;

    if (a->proto != b->proto || !ep_eq(&a->client, &b->client))
        return false;
    if (t->cfg.mapping == NAT_MAPPING_ADM)
        return addr_eq(&a->dst.addr, &b->dst.addr);
    return family(&a->dst.addr) == family(&b->dst.addr);
}

static bool eq_client(const void *ctx, uint32_t slot, const void *key)
{
    const struct nat_table *t = ctx;

    return addr_eq(&t->clients[slot].addr, key);
}

struct set_key {
    uint8_t proto;
    struct nat_endpoint dst;
};

static bool eq_set(const void *ctx, uint32_t slot, const void *key)
{
    const struct nat_table *t = ctx;
    const struct nat_portset *ps = t->sets[slot];
    const struct set_key *k = key;

    return ps->proto == k->proto && ep_eq(&ps->dst, &k->dst);
}

static uint32_t find_inside(const struct nat_table *t, const struct nat_key *k)
{
    return nh_find(&t->by_inside, hash_inside(t, k), eq_inside, t, k);
}

/* ---- events ------------------------------------------------------------- */

static void emit(struct nat_table *t, enum nat_event_type type, uint64_t now, const char *reason,
                 const struct nat_session *s)
{
    struct nat_event ev;

    if (t->ev_fn == NULL)
        return;
    ev.type = type;
    ev.port_last = 0;
    ev.time = now;
    ev.reason = reason;
    ev.s = *s;
    if (type == NAT_EV_CLOSE || type == NAT_EV_EXPIRE)
        ev.s.state = NAT_STATE_CLOSED;
    t->ev_fn(t->ev_arg, &ev);
}

/* The first port of block number bn (every address has the same layout). */
static uint16_t block_first_port(const struct nat_table *t, uint32_t bn)
{
    return (uint16_t)(t->cfg.port_lo + bn * t->cfg.block_size);
}

/* A block event: block `bn` of nat address `ip` taken by (ALLOC) or given
 * back from (FREE) client c. See struct nat_event for what it carries. */
static void emit_block(struct nat_table *t, enum nat_event_type type, uint64_t now,
                       const struct nat_client *c, unsigned ip, uint32_t bn)
{
    struct nat_event ev;

    if (t->ev_fn == NULL)
        return;
    memset(&ev, 0, sizeof(ev));
    ev.type = type;
    ev.time = now;
    ev.s.key.client.addr = c->addr;
    ev.s.ext.addr = t->cfg.ips[ip];
    ev.s.ext.port = block_first_port(t, bn);
    ev.port_last = (uint16_t)(ev.s.ext.port + t->cfg.block_size - 1);
    ev.s.ip_index = (uint8_t)ip;
    ev.s.opened_at = now;
    ev.s.last_seen = now;
    t->ev_fn(t->ev_arg, &ev);
}

/* ---- the slab ----------------------------------------------------------- */

static int slab_reserve(struct nat_table *t)
{
    struct nat_sess *chunk;

    if (t->free_head != NIL || t->hi < t->n_chunks * CHUNK_SLOTS)
        return 0;
    if (t->hi >= MAX_SLOTS)
        return -1;
    if (t->n_chunks == t->cap_chunks) {
        uint32_t cap = t->cap_chunks ? t->cap_chunks * 2 : 16;
        struct nat_sess **nc = realloc(t->chunks, cap * sizeof(*nc));

        if (nc == NULL)
            return -1;
        t->chunks = nc;
        t->cap_chunks = cap;
    }
    chunk = nh_huge_alloc(CHUNK_SLOTS * sizeof(*chunk));
    if (chunk == NULL)
        return -1;
    t->chunks[t->n_chunks++] = chunk;
    return 0;
}

static uint32_t slab_take(struct nat_table *t)
{
    uint32_t slot = t->free_head;

    if (slot != NIL)
        t->free_head = sess(t, slot)->lru_next;
    else
        slot = t->hi++;
    sess(t, slot)->self = slot;
    return slot;
}

static void slab_put(struct nat_table *t, uint32_t slot)
{
    struct nat_sess *s = sess(t, slot);

    s->pub.id = 0;
    s->lru_next = t->free_head;
    t->free_head = slot;
}

/* ---- expiry lists ------------------------------------------------------- */

static void lru_push(struct nat_table *t, struct nat_sess *s)
{
    int c = timeout_class(&s->pub);

    s->lru_next = NIL;
    s->lru_prev = t->lru_tail[c];
    if (s->lru_prev != NIL)
        sess(t, s->lru_prev)->lru_next = s->self;
    else
        t->lru_head[c] = s->self;
    t->lru_tail[c] = s->self;
}

static void lru_unlink(struct nat_table *t, struct nat_sess *s)
{
    int c = timeout_class(&s->pub);

    if (s->lru_prev != NIL)
        sess(t, s->lru_prev)->lru_next = s->lru_next;
    else
        t->lru_head[c] = s->lru_next;
    if (s->lru_next != NIL)
        sess(t, s->lru_next)->lru_prev = s->lru_prev;
    else
        t->lru_tail[c] = s->lru_prev;
}

/* ---- clients ------------------------------------------------------------ */

static uint32_t client_find_h(const struct nat_table *t, const struct nat_addr *a, uint64_t hc)
{
    return nh_find(&t->by_client, hc, eq_client, t, a);
}

static uint32_t client_find(const struct nat_table *t, const struct nat_addr *a)
{
    return client_find_h(t, a, hash_client(t, a));
}

/* Adds a record for `a` (not present; hc its hash). Returns its number or NIL. */
static uint32_t client_add(struct nat_table *t, const struct nat_addr *a, uint64_t hc)
{
    uint32_t ci;
    struct nat_client *c;

    if (nh_reserve(&t->by_client) != 0)
        return NIL;
    if (t->client_free != NIL) {
        ci = t->client_free;
        t->client_free = t->clients[ci].next_free;
    } else {
        if (t->n_clients == t->cap_clients) {
            uint32_t cap = t->cap_clients ? t->cap_clients * 2 : 64;
            struct nat_client *nc = realloc(t->clients, cap * sizeof(*nc));

            if (nc == NULL)
                return NIL;
            t->clients = nc;
            t->cap_clients = cap;
        }
        ci = t->n_clients++;
    }
    c = &t->clients[ci];
    *c = (struct nat_client){
        .addr = *a, .ip = {NO_IP, NO_IP}, .next_free = NIL, .hold_prev = NIL, .hold_next = NIL};
    nh_insert(&t->by_client, hc, ci);
    return ci;
}

/* Drops a record with no sessions left (hc: the hash of its address),
 * giving back its blocks (a BLOCK_FREE event each). */
static void client_drop(struct nat_table *t, uint32_t ci, uint64_t hc, uint64_t now)
{
    struct nat_client *c = &t->clients[ci];

    for (uint32_t i = 0; i < c->nblocks; i++) {
        uint32_t ip = c->blocks[i] >> 16, b = c->blocks[i] & 0xffff;

        t->blk[(size_t)ip * t->blk_words + b / 64] &= ~(1ULL << (b % 64));
        t->st.blocks_in_use--;
        emit_block(t, NAT_EV_BLOCK_FREE, now, c, ip, b);
    }
    t->block_bytes -= c->cap_blocks * sizeof(uint32_t);
    free(c->blocks);
    nh_delete(&t->by_client, hc, ci);
    *c = (struct nat_client){.next_free = t->client_free};
    t->client_free = ci;
}

/* Whether client ci is in the hold list. */
static bool client_held(const struct nat_table *t, uint32_t ci)
{
    return t->clients[ci].hold_prev != NIL || t->hold_head == ci;
}

/* Takes client ci out of the hold list (a new session came, or its hold ended). */
static void hold_unlink(struct nat_table *t, uint32_t ci)
{
    struct nat_client *c = &t->clients[ci];

    if (c->hold_prev != NIL)
        t->clients[c->hold_prev].hold_next = c->hold_next;
    else
        t->hold_head = c->hold_next;
    if (c->hold_next != NIL)
        t->clients[c->hold_next].hold_prev = c->hold_prev;
    else
        t->hold_tail = c->hold_prev;
    c->hold_prev = c->hold_next = NIL;
    t->st.blocks_held -= c->nblocks;
}

/* Client ci's last session went: keep its blocks until now + block_hold_ms
 * (at the tail: the list stays in deadline order while the hold is the same). */
static void hold_push(struct nat_table *t, uint32_t ci, uint64_t now)
{
    struct nat_client *c = &t->clients[ci];

    c->hold_until = now + t->cfg.block_hold_ms;
    c->hold_prev = t->hold_tail;
    c->hold_next = NIL;
    if (t->hold_tail != NIL)
        t->clients[t->hold_tail].hold_next = ci;
    else
        t->hold_head = ci;
    t->hold_tail = ci;
    t->st.blocks_held += c->nblocks;
}

/* Ends the hold of client ci: its blocks go (BLOCK_FREE). */
static void hold_release(struct nat_table *t, uint32_t ci, uint64_t now)
{
    hold_unlink(t, ci);
    client_drop(t, ci, hash_client(t, &t->clients[ci].addr), now);
}

/* A client with no session left: held with its blocks, or dropped. */
static void client_idle(struct nat_table *t, uint32_t ci, uint64_t hc, uint64_t now)
{
    if (t->cfg.block_hold_ms != 0 && t->clients[ci].nblocks != 0)
        hold_push(t, ci, now);
    else
        client_drop(t, ci, hc, now);
}

/* ---- port sets ---------------------------------------------------------- */

static inline uint64_t *set_bits(const struct nat_table *t, struct nat_portset *ps, unsigned ip)
{
    return ps->bits + (size_t)ip * t->words;
}

static inline uint64_t *busy_bits(const struct nat_table *t, unsigned pi, unsigned ip)
{
    return t->busy[pi] + (size_t)ip * t->words;
}

static size_t set_size(const struct nat_table *t)
{
    return sizeof(struct nat_portset) + (size_t)t->cfg.n_ips * t->words * sizeof(uint64_t);
}

static struct set_key set_key_of(const struct nat_table *t, const struct nat_key *k)
{
    struct set_key sk = {.proto = k->proto, .dst = k->dst};

    if (t->cfg.mapping == NAT_MAPPING_ADM)
        sk.dst.port = 0;
    return sk;
}

/* The port set a flow with key `k` allocates from, or NIL when it does not
 * exist yet (adm/apdm). */
static uint32_t set_find(const struct nat_table *t, const struct nat_key *k)
{
    struct set_key sk;

    if (t->cfg.mapping == NAT_MAPPING_EIM)
        return proto_index(k->proto);
    sk = set_key_of(t, k);
    return nh_find(&t->by_set, hash_set(t, sk.proto, &sk.dst), eq_set, t, &sk);
}

static uint32_t set_new(struct nat_table *t, uint8_t proto, const struct nat_endpoint *dst)
{
    struct nat_portset *ps;
    uint32_t si;

    if (nh_reserve(&t->by_set) != 0)
        return NIL;
    if (t->n_set_free == 0 && t->n_sets == t->cap_sets) {
        uint32_t cap = t->cap_sets ? t->cap_sets * 2 : 8;
        struct nat_portset **ns = realloc(t->sets, cap * sizeof(*ns));
        uint32_t *nf;

        if (ns == NULL)
            return NIL;
        t->sets = ns;
        nf = realloc(t->set_free, cap * sizeof(*nf));
        if (nf == NULL)
            return NIL;
        t->set_free = nf;
        t->cap_sets = cap;
    }
    ps = calloc(1, set_size(t));
    if (ps == NULL)
        return NIL;
    si = t->n_set_free > 0 ? t->set_free[--t->n_set_free] : t->n_sets++;
    ps->proto = proto;
    if (dst != NULL)
        ps->dst = *dst;
    ps->self = si;
    t->sets[si] = ps;
    t->set_bytes += set_size(t);
    if (dst != NULL)
        nh_insert(&t->by_set, hash_set(t, proto, dst), si);
    return si;
}

/* The set for `k`, made when missing. NIL when out of memory. */
static uint32_t set_get(struct nat_table *t, const struct nat_key *k)
{
    uint32_t si = set_find(t, k);
    struct set_key sk;

    if (si != NIL)
        return si;
    sk = set_key_of(t, k);
    return set_new(t, sk.proto, &sk.dst);
}

/* Frees an adm/apdm set that holds no port any more. */
static void set_maybe_free(struct nat_table *t, uint32_t si)
{
    struct nat_portset *ps = t->sets[si];

    if (ps->refs != 0 || t->cfg.mapping == NAT_MAPPING_EIM)
        return;
    nh_delete(&t->by_set, hash_set(t, ps->proto, &ps->dst), si);
    free(ps);
    t->sets[si] = NULL;
    t->set_bytes -= set_size(t);
    t->set_free[t->n_set_free++] = si;
}

static void set_clear_bit(struct nat_table *t, uint32_t si, unsigned ip, uint32_t off)
{
    struct nat_portset *ps = t->sets[si];

    set_bits(t, ps, ip)[off / 64] &= ~(1ULL << (off % 64));
    ps->refs--;
    set_maybe_free(t, si);
}

/* A new mapping holds (ip, off) in set si. */
static void port_take(struct nat_table *t, uint32_t si, unsigned ip, uint32_t off)
{
    struct nat_portset *ps = t->sets[si];
    unsigned pi = proto_index(ps->proto);

    set_bits(t, ps, ip)[off / 64] |= 1ULL << (off % 64);
    ps->refs++;
    if (t->users[pi] != NULL && t->users[pi][(size_t)ip * t->nports + off]++ != 0)
        return;
    t->st.ports_in_use++;
    t->ip_in_use[ip]++;
}

static int cool_push(struct nat_table *t, uint32_t si, unsigned ip, uint32_t off, uint64_t now)
{
    if (t->cool_n == t->cool_cap) {
        uint32_t cap = t->cool_cap ? t->cool_cap * 2 : 64;
        struct nat_cool *nc = malloc(cap * sizeof(*nc));

        if (nc == NULL)
            return -1;
        for (uint32_t i = 0; i < t->cool_n; i++)
            nc[i] = t->cool[(t->cool_head + i) & (t->cool_cap - 1)];
        free(t->cool);
        t->cool = nc;
        t->cool_cap = cap;
        t->cool_head = 0;
    }
    t->cool[(t->cool_head + t->cool_n) & (t->cool_cap - 1)] =
        (struct nat_cool){.at = now, .set = si, .off = (uint16_t)off, .ip = (uint8_t)ip};
    t->cool_n++;
    t->st.ports_cooling++;
    return 0;
}

/* The last user of (ip, off) in set si went: the port cools for the reuse
 * delay (or is free at once when the delay is 0 or the queue cannot grow). */
static void port_release(struct nat_table *t, uint32_t si, unsigned ip, uint32_t off, uint64_t now)
{
    unsigned pi = proto_index(t->sets[si]->proto);

    if (t->users[pi] == NULL || --t->users[pi][(size_t)ip * t->nports + off] == 0) {
        t->st.ports_in_use--;
        t->ip_in_use[ip]--;
    }
    if (t->cfg.reuse_delay_ms == 0 || cool_push(t, si, ip, off, now) != 0)
        set_clear_bit(t, si, ip, off);
}

static void busy_sift_down(struct nat_table *t, uint32_t i)
{
    struct nat_busy *h = t->bheap;

    for (;;) {
        uint32_t l = 2 * i + 1, m = i;
        struct nat_busy tmp;

        if (l < t->bheap_n && h[l].until < h[m].until)
            m = l;
        if (l + 1 < t->bheap_n && h[l + 1].until < h[m].until)
            m = l + 1;
        if (m == i)
            return;
        tmp = h[i];
        h[i] = h[m];
        h[m] = tmp;
        i = m;
    }
}

/* Marks (pi, ip, off) unusable until `until`. Returns 0 or -1 (no memory). */
static int busy_mark(struct nat_table *t, unsigned pi, unsigned ip, uint32_t off, uint64_t until)
{
    uint64_t *w = &busy_bits(t, pi, ip)[off / 64];
    uint32_t i;

    if (*w & (1ULL << (off % 64))) {
        /* already busy: extend its entry (rare path: linear search) */
        for (i = 0; i < t->bheap_n; i++) {
            struct nat_busy *b = &t->bheap[i];

            if (b->pi == pi && b->ip == ip && b->off == off) {
                if (until > b->until) {
                    b->until = until;
                    busy_sift_down(t, i);
                }
                return 0;
            }
        }
    }
    if (t->bheap_n == t->bheap_cap) {
        uint32_t cap = t->bheap_cap ? t->bheap_cap * 2 : 16;
        struct nat_busy *nh = realloc(t->bheap, cap * sizeof(*nh));

        if (nh == NULL)
            return -1;
        t->bheap = nh;
        t->bheap_cap = cap;
    }
    *w |= 1ULL << (off % 64);
    i = t->bheap_n++;
    t->bheap[i] =
        (struct nat_busy){.until = until, .off = off, .ip = (uint8_t)ip, .pi = (uint8_t)pi};
    while (i > 0 && t->bheap[(i - 1) / 2].until > t->bheap[i].until) {
        struct nat_busy tmp = t->bheap[i];

        t->bheap[i] = t->bheap[(i - 1) / 2];
        t->bheap[(i - 1) / 2] = tmp;
        i = (i - 1) / 2;
    }
    return 0;
}

/* Frees cooled ports and ports no longer busy. */
static void pool_maintain(struct nat_table *t, uint64_t now)
{
    uint64_t delay = t->cfg.reuse_delay_ms;

    while (t->cool_n > 0) {
        struct nat_cool *c = &t->cool[t->cool_head];

        if (c->at + delay > now)
            break;
        t->cool_head = (t->cool_head + 1) & (t->cool_cap - 1);
        t->cool_n--;
        t->st.ports_cooling--;
        set_clear_bit(t, c->set, c->ip, c->off);
    }
    while (t->bheap_n > 0 && t->bheap[0].until <= now) {
        struct nat_busy *b = &t->bheap[0];

        busy_bits(t, b->pi, b->ip)[b->off / 64] &= ~(1ULL << (b->off % 64));
        t->bheap[0] = t->bheap[--t->bheap_n];
        busy_sift_down(t, 0);
    }
}

/* First offset in [from, to) free in both bitmaps, or -1. */
static int find_free(const uint64_t *a, const uint64_t *b, uint32_t from, uint32_t to)
{
    while (from < to) {
        uint32_t w = from / 64, wend = (w + 1) * 64;
        uint64_t x = ~(a[w] | b[w]) & (~0ULL << (from % 64));

        if (to < wend)
            x &= (1ULL << (to % 64)) - 1;
        if (x != 0)
            return (int)(w * 64 + (uint32_t)__builtin_ctzll(x));
        from = wend;
    }
    return -1;
}

static int find_free_wrap(const uint64_t *a, const uint64_t *b, uint32_t start, uint32_t n)
{
    int r = find_free(a, b, start, n);

    return r >= 0 ? r : find_free(a, b, 0, start);
}

static bool port_free(const uint64_t *a, const uint64_t *b, uint32_t off)
{
    return ((a[off / 64] | b[off / 64]) & (1ULL << (off % 64))) == 0;
}

/* A free port of `ip` in set si by the table's policy (not block), or -1. */
static int port_pick(struct nat_table *t, uint32_t si, unsigned ip, uint16_t client_port)
{
    struct nat_portset *ps = t->sets[si];
    unsigned pi = proto_index(ps->proto);
    const uint64_t *a = set_bits(t, ps, ip), *b = busy_bits(t, pi, ip);
    uint32_t start;
    int off;

    switch (t->cfg.policy) {
    case NAT_POLICY_SEQUENTIAL:
        start = t->seq_cursor[pi] + 1 >= t->nports ? 0 : t->seq_cursor[pi] + 1;
        off = find_free_wrap(a, b, start, t->nports);
        if (off >= 0)
            t->seq_cursor[pi] = (uint32_t)off;
        return off;
    case NAT_POLICY_PRESERVE:
        if (client_port >= t->cfg.port_lo && client_port <= t->cfg.port_hi &&
            port_free(a, b, client_port - t->cfg.port_lo))
            return client_port - t->cfg.port_lo;
        return find_free_wrap(a, b, rnd(t, t->nports), t->nports);
    case NAT_POLICY_RANDOM:
    case NAT_POLICY_BLOCK:
    default:
        return find_free_wrap(a, b, rnd(t, t->nports), t->nports);
    }
}

/* The oldest held client other than `except` with a block on nat address
 * `ip` that has a port free in bitmaps a and b (the asking flow's port set
 * and the address's cooling ports), or NIL. Releasing any other hold would
 * not give this flow a port: a block elsewhere (another address, the other
 * family), or one whose ports all wait out their reuse delay. */
static uint32_t hold_oldest_on(const struct nat_table *t, unsigned ip, uint32_t except,
                               const uint64_t *a, const uint64_t *b)
{
    uint32_t bs = t->cfg.block_size;

    for (uint32_t h = t->hold_head; h != NIL; h = t->clients[h].hold_next) {
        const struct nat_client *c = &t->clients[h];

        if (h == except)
            continue;
        for (uint32_t i = 0; i < c->nblocks; i++) {
            uint32_t bn = c->blocks[i] & 0xffff;

            if (c->blocks[i] >> 16 == ip && find_free(a, b, bn * bs, bn * bs + bs) >= 0)
                return h;
        }
    }
    return NIL;
}

/* NAT_POLICY_BLOCK: a free port in one of the client's blocks on `ip`, taking
 * a new block (a BLOCK_ALLOC event) when they are full. -1 with *err set when
 * none. */
static int block_pick(struct nat_table *t, uint32_t ci, uint32_t si, unsigned ip, uint64_t now,
                      bool may_end_holds, enum nat_err *err)
{
    struct nat_client *c = &t->clients[ci];
    struct nat_portset *ps = t->sets[si];
    const uint64_t *a = set_bits(t, ps, ip), *b = busy_bits(t, proto_index(ps->proto), ip);
    uint64_t *blk = t->blk + (size_t)ip * t->blk_words;
    uint32_t bs = t->cfg.block_size, start;
    int off;

    for (uint32_t i = 0; i < c->nblocks; i++) {
        uint32_t bn = c->blocks[i] & 0xffff;

        if (c->blocks[i] >> 16 != ip)
            continue;
        off = find_free(a, b, bn * bs, bn * bs + bs);
        if (off >= 0)
            return off;
    }
    if (t->cfg.max_blocks_per_client != 0 && c->nblocks >= t->cfg.max_blocks_per_client) {
        *err = NAT_ERR_CLIENT_QUOTA;
        return -1;
    }
    if (c->nblocks == c->cap_blocks) {
        uint32_t cap = c->cap_blocks ? c->cap_blocks * 2 : 2;
        uint32_t *nb = realloc(c->blocks, cap * sizeof(*nb));

        if (nb == NULL) {
            *err = NAT_ERR_NOMEM;
            return -1;
        }
        t->block_bytes += (cap - c->cap_blocks) * sizeof(*nb);
        c->blocks = nb;
        c->cap_blocks = cap;
    }
    for (;;) {
        start = rnd(t, t->nblocks);
        for (int pass = 0; pass < 2; pass++) {
            uint32_t from = pass == 0 ? start : 0, to = pass == 0 ? t->nblocks : start;
            int bn;

            while ((bn = find_free(blk, blk, from, to)) >= 0) {
                off = find_free(a, b, (uint32_t)bn * bs, (uint32_t)bn * bs + bs);
                if (off >= 0) {
                    blk[bn / 64] |= 1ULL << (bn % 64);
                    c->blocks[c->nblocks++] = (uint32_t)ip << 16 | (uint32_t)bn;
                    t->st.blocks_in_use++;
                    if (client_held(t, ci))
                        t->st.blocks_held++;
                    emit_block(t, NAT_EV_BLOCK_ALLOC, now, c, ip, (uint32_t)bn);
                    return off;
                }
                from = (uint32_t)bn + 1;
            }
        }
        /* No free block: one held by a client with no session goes first
         * (oldest first; never the asking client's own), if it has one here. */
        uint32_t h = may_end_holds ? hold_oldest_on(t, ip, ci, a, b) : NIL;
        if (h == NIL)
            break;
        hold_release(t, h, now);
    }
    *err = NAT_ERR_POOL_EXHAUSTED;
    return -1;
}

struct pick {
    uint32_t set;
    unsigned ip;
    uint32_t off;
};

/* Finds a free external port for a new mapping of flow `k` from client ci:
 * on the client's paired IP of the destination's family when it has one,
 * else on the first IP of that family (from a policy-chosen start) that has
 * room. Takes nothing but blocks. */
static enum nat_err pool_pick(struct nat_table *t, uint32_t ci, const struct nat_key *k,
                              uint64_t now, struct pick *pk)
{
    unsigned fam = family(&k->dst.addr), n = t->cfg.n_ips, start;
    enum nat_err err = NAT_ERR_POOL_EXHAUSTED, e;
    uint32_t si = set_get(t, k);

    if (si == NIL)
        return NAT_ERR_NOMEM;
    if (t->clients[ci].ip[fam] != NO_IP)
        start = t->clients[ci].ip[fam], n = 1;
    else if (t->cfg.policy == NAT_POLICY_SEQUENTIAL)
        start = t->ip_cursor++ % n;
    else
        start = rnd(t, n);
    /* Under the block policy a free block anywhere comes before ending a
     * hold: a second round may end holds, only when the first found none. */
    for (int round = 0; round < 2; round++) {
        if (round == 1 && (t->cfg.policy != NAT_POLICY_BLOCK || t->hold_head == NIL))
            break;
        for (unsigned i = 0; i < n; i++) {
            unsigned ip = (start + i) % t->cfg.n_ips;
            int off;

            if (family(&t->cfg.ips[ip]) != fam)
                continue;
            e = NAT_ERR_POOL_EXHAUSTED;
            if (t->cfg.policy == NAT_POLICY_BLOCK)
                off = block_pick(t, ci, si, ip, now, round == 1, &e);
            else
                off = port_pick(t, si, ip, k->client.port);
            if (off >= 0) {
                pk->set = si;
                pk->ip = ip;
                pk->off = (uint32_t)off;
                return NAT_OK;
            }
            if (e != NAT_ERR_POOL_EXHAUSTED)
                err = e;
        }
    }
    set_maybe_free(t, si);
    return err;
}

/* ---- mappings ----------------------------------------------------------- */

/* Takes the session out of its mapping. Returns true when it was the
 * mapping's last session (the caller then releases the port). A session
 * moved by a repick off a shared mapping is a mapping of its own. */
static bool map_leave(struct nat_table *t, struct nat_sess *s, uint64_t hm)
{
    uint32_t head, p;

    if (t->cfg.mapping == NAT_MAPPING_APDM)
        return true;
    head = nh_find(&t->by_mapping, hm, eq_mapping, t, &s->pub.key);
    if (head == s->self) {
        if (s->map_next == NIL) {
            nh_delete(&t->by_mapping, hm, s->self);
            return true;
        }
        nh_replace(&t->by_mapping, hm, s->self, s->map_next);
        s->map_next = NIL;
        return false;
    }
    for (p = head; p != NIL; p = sess(t, p)->map_next) {
        if (sess(t, p)->map_next == s->self) {
            sess(t, p)->map_next = s->map_next;
            s->map_next = NIL;
            return false;
        }
    }
    return true;
}

/* ---- configuration ------------------------------------------------------ */

void nat_config_default(struct nat_config *cfg)
{
    *cfg = (struct nat_config){0};
    cfg->policy = NAT_POLICY_RANDOM;
    cfg->mapping = NAT_MAPPING_EIM;
    cfg->ips[0] = (struct nat_addr){{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1}};
    cfg->n_ips = 1;
    cfg->port_lo = 20000;
    cfg->port_hi = 32767;
    cfg->timeout_ms[NAT_TIMEOUT_UDP] = 300000;
    cfg->timeout_ms[NAT_TIMEOUT_TCP_ESTABLISHED] = 7440000;
    cfg->timeout_ms[NAT_TIMEOUT_TCP_TRANSITORY] = 240000;
    cfg->block_size = 64;
    cfg->reuse_delay_ms = NAT_DEFAULT_REUSE_DELAY_MS;
    cfg->first_id = 1;
}

static bool config_valid(const struct nat_config *c)
{
    uint32_t nports;

    if ((unsigned)c->policy > NAT_POLICY_BLOCK || (unsigned)c->mapping > NAT_MAPPING_APDM)
        return false;
    if (c->n_ips == 0 || c->n_ips > NAT_MAX_IPS)
        return false;
    if (c->port_lo == 0 || c->port_lo > c->port_hi)
        return false;
    nports = (uint32_t)c->port_hi - c->port_lo + 1;
    if (c->policy == NAT_POLICY_BLOCK && (c->block_size == 0 || c->block_size > nports))
        return false;
    if (c->block_hold_ms > NAT_MAX_BLOCK_HOLD_MS)
        return false;
    for (unsigned i = 0; i < c->n_ips; i++)
        for (unsigned j = i + 1; j < c->n_ips; j++)
            if (addr_eq(&c->ips[i], &c->ips[j]))
                return false;
    return true;
}

void nat_table_free(struct nat_table *t)
{
    if (t == NULL)
        return;
    for (uint32_t i = 0; i < t->n_chunks; i++)
        nh_huge_free(t->chunks[i], CHUNK_SLOTS * sizeof(struct nat_sess));
    free(t->chunks);
    nh_free(&t->by_inside);
    nh_free(&t->by_outside);
    nh_free(&t->by_mapping);
    nh_free(&t->by_client);
    nh_free(&t->by_set);
    for (uint32_t i = 0; i < t->n_clients; i++)
        free(t->clients[i].blocks);
    free(t->clients);
    for (uint32_t i = 0; i < t->n_sets; i++)
        free(t->sets[i]);
    free(t->sets);
    free(t->set_free);
    for (int i = 0; i < 2; i++) {
        free(t->busy[i]);
        free(t->users[i]);
    }
    free(t->blk);
    free(t->cool);
    free(t->bheap);
    free(t);
}

enum nat_err nat_table_new(struct nat_table **out, const struct nat_config *cfg)
{
    struct nat_table *t;
    uint32_t expect;
    size_t bits;

    if (out == NULL || cfg == NULL || !config_valid(cfg))
        return NAT_ERR_INVAL;
    t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NAT_ERR_NOMEM;
    t->cfg = *cfg;
    t->nports = (uint32_t)cfg->port_hi - cfg->port_lo + 1;
    t->words = (t->nports + 63) / 64;
    t->rng = cfg->seed;
    {
        uint64_t x = cfg->seed ^ 0x6e61746e6174ULL;

        for (int i = 0; i < 7; i++)
            t->hs[i] = splitmix(&x) | 1;
    }
    t->next_id = cfg->first_id ? cfg->first_id : 1;
    t->free_head = NIL;
    t->dying = NIL;
    t->client_free = NIL;
    t->hold_head = t->hold_tail = NIL;
    for (int c = 0; c < NAT_TIMEOUT_COUNT; c++)
        t->lru_head[c] = t->lru_tail[c] = NIL;
    t->st.ports_total = (uint64_t)cfg->n_ips * t->nports;
    t->seq_cursor[0] = t->seq_cursor[1] = t->nports - 1; /* the first port given is port_lo */

    /* Pre-size the indexes from max_sessions (capped: beyond it they grow
     * incrementally, without a pause). */
    expect = cfg->max_sessions ? cfg->max_sessions : INITIAL_INDEX;
    if (expect > MAX_PRESIZE)
        expect = MAX_PRESIZE;
    bits = (size_t)cfg->n_ips * t->words;
    if (nh_init(&t->by_inside, expect) || nh_init(&t->by_outside, expect) ||
        nh_init(&t->by_mapping, cfg->mapping == NAT_MAPPING_APDM ? 1 : expect) ||
        nh_init(&t->by_client, 64) || nh_init(&t->by_set, 8))
        goto out_free;
    for (int i = 0; i < 2; i++) {
        t->busy[i] = calloc(bits, sizeof(uint64_t));
        if (t->busy[i] == NULL)
            goto out_free;
        if (cfg->mapping != NAT_MAPPING_EIM) {
            t->users[i] = calloc((size_t)cfg->n_ips * t->nports, sizeof(uint32_t));
            if (t->users[i] == NULL)
                goto out_free;
        }
    }
    if (cfg->policy == NAT_POLICY_BLOCK) {
        t->nblocks = t->nports / cfg->block_size;
        t->blk_words = (t->nblocks + 63) / 64;
        t->blk = calloc((size_t)cfg->n_ips * t->blk_words, sizeof(uint64_t));
        if (t->blk == NULL)
            goto out_free;
    }
    if (cfg->mapping == NAT_MAPPING_EIM) {
        if (set_new(t, NAT_PROTO_TCP, NULL) != 0 || set_new(t, NAT_PROTO_UDP, NULL) != 1)
            goto out_free;
    }
    *out = t;
    return NAT_OK;

out_free:
    nat_table_free(t);
    return NAT_ERR_NOMEM;
}

const struct nat_config *nat_table_config(const struct nat_table *t)
{
    return &t->cfg;
}

enum nat_err nat_table_reconfigure(struct nat_table *t, const struct nat_config *cfg)
{
    const struct nat_config *c = &t->cfg;

    if (cfg == NULL || cfg->policy != c->policy || cfg->mapping != c->mapping ||
        cfg->n_ips != c->n_ips || cfg->port_lo != c->port_lo || cfg->port_hi != c->port_hi ||
        cfg->block_size != c->block_size ||
        cfg->max_blocks_per_client != c->max_blocks_per_client ||
        cfg->block_hold_ms > NAT_MAX_BLOCK_HOLD_MS)
        return NAT_ERR_INVAL;
    for (unsigned i = 0; i < c->n_ips; i++)
        if (!addr_eq(&cfg->ips[i], &c->ips[i]))
            return NAT_ERR_INVAL;
    memcpy(t->cfg.timeout_ms, cfg->timeout_ms, sizeof(t->cfg.timeout_ms));
    t->cfg.per_client_limit = cfg->per_client_limit;
    t->cfg.reuse_delay_ms = cfg->reuse_delay_ms;
    t->cfg.max_sessions = cfg->max_sessions;
    /* A shorter hold applies to the clients held now too (the list stays in
     * deadline order: each is clamped to the same bound). */
    t->cfg.block_hold_ms = cfg->block_hold_ms;
    for (uint32_t ci = t->hold_head; ci != NIL; ci = t->clients[ci].hold_next)
        if (t->clients[ci].hold_until > t->clock + cfg->block_hold_ms)
            t->clients[ci].hold_until = t->clock + cfg->block_hold_ms;
    return NAT_OK;
}

void nat_table_set_event_cb(struct nat_table *t, nat_event_fn fn, void *arg)
{
    t->ev_fn = fn;
    t->ev_arg = arg;
}

/* ---- sessions ----------------------------------------------------------- */

static enum nat_err refuse(struct nat_table *t, enum nat_err err, const struct nat_key *key,
                           uint32_t backend, uint64_t now)
{
    t->st.refused[err]++;
    if (err == NAT_ERR_POOL_EXHAUSTED || err == NAT_ERR_CLIENT_QUOTA || err == NAT_ERR_TABLE_FULL) {
        struct nat_session s = {.key = *key, .backend = backend, .opened_at = now};

        emit(t, NAT_EV_REFUSE, now, nat_err_name(err), &s);
    }
    return err;
}

static int reserve_indexes(struct nat_table *t)
{
    if (nh_reserve(&t->by_inside) || nh_reserve(&t->by_outside) || slab_reserve(t))
        return -1;
    if (t->cfg.mapping != NAT_MAPPING_APDM && nh_reserve(&t->by_mapping))
        return -1;
    return 0;
}

static void outside_insert(struct nat_table *t, struct nat_sess *s)
{
    nh_insert(&t->by_outside, hash_outside(t, s->pub.key.proto, &s->pub.ext, &s->pub.key.dst),
              s->self);
}

static void outside_delete(struct nat_table *t, struct nat_sess *s)
{
    nh_delete(&t->by_outside, hash_outside(t, s->pub.key.proto, &s->pub.ext, &s->pub.key.dst),
              s->self);
}

enum nat_err nat_session_open(struct nat_table *t, const struct nat_key *key, uint32_t backend,
                              uint64_t now, struct nat_session **out)
{
    uint32_t ci, head = NIL, slot;
    uint64_t hm = 0, hin, hc;
    bool new_client = false;
    struct pick pk = {0};
    struct nat_sess *s;
    enum nat_err err;

    now = advance(t, now);
    if (key == NULL || (key->proto != NAT_PROTO_TCP && key->proto != NAT_PROTO_UDP)) {
        t->st.refused[NAT_ERR_INVAL]++;
        return NAT_ERR_INVAL;
    }
    hin = hash_inside(t, key);
    hc = hash_client(t, &key->client.addr);
    nh_prefetch(&t->by_inside, hin); /* start the cache misses at once */
    nh_prefetch(&t->by_client, hc);
    if (t->cfg.mapping != NAT_MAPPING_APDM) {
        hm = hash_mapping(t, key);
        nh_prefetch(&t->by_mapping, hm);
    }
    if (nh_find(&t->by_inside, hin, eq_inside, t, key) != NH_NONE)
        return refuse(t, NAT_ERR_EXISTS, key, backend, now);
    pool_maintain(t, now);
    if (t->cfg.max_sessions != 0 && t->st.live >= t->cfg.max_sessions)
        return refuse(t, NAT_ERR_TABLE_FULL, key, backend, now);
    ci = client_find_h(t, &key->client.addr, hc);
    if (t->cfg.per_client_limit != 0 && ci != NIL &&
        t->clients[ci].sessions >= t->cfg.per_client_limit)
        return refuse(t, NAT_ERR_CLIENT_QUOTA, key, backend, now);
    if (reserve_indexes(t) != 0)
        return refuse(t, NAT_ERR_NOMEM, key, backend, now);
    if (ci == NIL) {
        ci = client_add(t, &key->client.addr, hc);
        if (ci == NIL)
            return refuse(t, NAT_ERR_NOMEM, key, backend, now);
        new_client = true;
    }
    if (t->cfg.mapping != NAT_MAPPING_APDM)
        head = nh_find(&t->by_mapping, hm, eq_mapping, t, key);
    if (head != NIL) {
        pk.ip = sess(t, head)->pub.ip_index;
        pk.off = sess(t, head)->pub.ext.port - t->cfg.port_lo;
    } else {
        err = pool_pick(t, ci, key, now, &pk);
        if (err != NAT_OK) {
            if (new_client)
                client_drop(t, ci, hc, now);
            return refuse(t, err, key, backend, now);
        }
        port_take(t, pk.set, pk.ip, pk.off);
    }

    slot = slab_take(t);
    s = sess(t, slot);
    /* field by field: a compound literal would zero the struct first */
    s->pub.id = t->next_id++;
    s->pub.key = *key;
    s->pub.ext.addr = t->cfg.ips[pk.ip];
    s->pub.ext.port = (uint16_t)(t->cfg.port_lo + pk.off);
    s->pub.opened_at = now;
    s->pub.last_seen = now;
    s->pub.bytes_in = 0;
    s->pub.bytes_out = 0;
    s->pub.udata = NULL;
    s->pub.backend = backend;
    s->pub.state = NAT_STATE_NEW;
    s->pub.ip_index = (uint8_t)pk.ip;
    s->map_next = NIL;
    nh_insert(&t->by_inside, hin, slot);
    outside_insert(t, s);
    if (head != NIL) {
        s->map_next = sess(t, head)->map_next;
        sess(t, head)->map_next = slot;
    } else if (t->cfg.mapping != NAT_MAPPING_APDM) {
        nh_insert(&t->by_mapping, hm, slot);
    }
    lru_push(t, s);
    if (t->clients[ci].sessions++ == 0 && client_held(t, ci))
        hold_unlink(t, ci); /* back before its hold ended: its blocks serve again */
    t->clients[ci].ip[family(&key->dst.addr)] = (uint8_t)pk.ip;
    t->st.opened++;
    t->st.live++;
    t->st.live_by[proto_index(key->proto)][NAT_STATE_NEW]++;
    emit(t, NAT_EV_OPEN, now, NULL, &s->pub);
    *out = &s->pub;
    return NAT_OK;
}

struct nat_session *nat_lookup_inside(const struct nat_table *t, const struct nat_key *key)
{
    uint32_t slot = find_inside(t, key);

    return slot == NH_NONE ? NULL : &sess(t, slot)->pub;
}

struct nat_session *nat_lookup_outside(const struct nat_table *t, uint8_t proto,
                                       const struct nat_endpoint *ext,
                                       const struct nat_endpoint *dst)
{
    struct outside_key k = {.proto = proto, .ext = ext, .dst = dst};
    uint32_t slot = nh_find(&t->by_outside, hash_outside(t, proto, ext, dst), eq_outside, t, &k);

    return slot == NH_NONE ? NULL : &sess(t, slot)->pub;
}

/*
 * Batched lookups, software-pipelined: while lookup i compares its
 * candidate, lookup i + LOOKAHEAD has its session line prefetched and lookup
 * i + 2 * LOOKAHEAD its bucket, so up to 2 * LOOKAHEAD cache misses are in
 * flight instead of one.
 */
#define LOOKAHEAD 8
#define RING 32 /* > 2 * LOOKAHEAD, a power of two */

/* The session first line a candidate lookup compares. */
static inline void prefetch_slot(const struct nat_table *t, uint32_t slot)
{
    if (slot != NH_NONE)
        prefetch_line(sess(t, slot));
}

size_t nat_lookup_inside_many(const struct nat_table *t, const struct nat_key *keys, size_t n,
                              struct nat_session **out)
{
    const struct nat_hash *hx = &t->by_inside;
    uint64_t h[RING];
    uint32_t cand[RING];
    size_t found = 0;

    for (size_t i = 0; i < n + 2 * LOOKAHEAD; i++) {
        if (i < n) {
            h[i % RING] = hash_inside(t, &keys[i]);
            nh_prefetch(hx, h[i % RING]);
        }
        if (i >= LOOKAHEAD && i - LOOKAHEAD < n) {
            size_t j = i - LOOKAHEAD;

            cand[j % RING] = nh_candidate(hx, h[j % RING]);
            prefetch_slot(t, cand[j % RING]);
        }
        if (i >= 2 * LOOKAHEAD) {
            size_t j = i - 2 * LOOKAHEAD;
            uint32_t slot = cand[j % RING];

            if (slot == NH_NONE ? hx->old != NULL : !eq_inside(t, slot, &keys[j]))
                slot = nh_find(hx, h[j % RING], eq_inside, t, &keys[j]);
            out[j] = slot == NH_NONE ? NULL : &sess(t, slot)->pub;
            found += slot != NH_NONE;
        }
    }
    return found;
}

size_t nat_lookup_outside_many(const struct nat_table *t, const struct nat_outside_key *keys,
                               size_t n, struct nat_session **out)
{
    const struct nat_hash *hx = &t->by_outside;
    uint64_t h[RING];
    uint32_t cand[RING];
    size_t found = 0;

    for (size_t i = 0; i < n + 2 * LOOKAHEAD; i++) {
        if (i < n) {
            h[i % RING] = hash_outside(t, keys[i].proto, &keys[i].ext, &keys[i].dst);
            nh_prefetch(hx, h[i % RING]);
        }
        if (i >= LOOKAHEAD && i - LOOKAHEAD < n) {
            size_t j = i - LOOKAHEAD;

            cand[j % RING] = nh_candidate(hx, h[j % RING]);
            prefetch_slot(t, cand[j % RING]);
        }
        if (i >= 2 * LOOKAHEAD) {
            size_t j = i - 2 * LOOKAHEAD;
            struct outside_key ok = {
                .proto = keys[j].proto, .ext = &keys[j].ext, .dst = &keys[j].dst};
            uint32_t slot = cand[j % RING];

            if (slot == NH_NONE ? hx->old != NULL : !eq_outside(t, slot, &ok))
                slot = nh_find(hx, h[j % RING], eq_outside, t, &ok);
            out[j] = slot == NH_NONE ? NULL : &sess(t, slot)->pub;
            found += slot != NH_NONE;
        }
    }
    return found;
}

void nat_session_touch(struct nat_table *t, struct nat_session *s, uint64_t now, uint64_t bytes_in,
                       uint64_t bytes_out)
{
    struct nat_sess *is = sess_of(s);

    if (is->self == t->dying) /* touched from its own CLOSE/EXPIRE event */
        return;
    now = advance(t, now);
    s->bytes_in += bytes_in;
    s->bytes_out += bytes_out;
    t->st.bytes_in += bytes_in;
    t->st.bytes_out += bytes_out;
    s->last_seen = now;
    lru_unlink(t, is);
    lru_push(t, is);
}

void nat_session_set_state(struct nat_table *t, struct nat_session *s, enum nat_state st,
                           uint64_t now)
{
    struct nat_sess *is = sess_of(s);
    unsigned pi = proto_index(s->key.proto);

    if ((unsigned)st >= NAT_STATE_CLOSED || is->self == t->dying)
        return;
    now = advance(t, now);
    lru_unlink(t, is);
    t->st.live_by[pi][s->state]--;
    s->state = (uint8_t)st;
    t->st.live_by[pi][st]++;
    s->last_seen = now;
    lru_push(t, is);
}

enum nat_err nat_session_repick(struct nat_table *t, struct nat_session *s, uint64_t now,
                                uint32_t busy_ms)
{
    struct nat_sess *is = sess_of(s);
    unsigned old_ip = s->ip_index;
    uint32_t old_off = s->ext.port - t->cfg.port_lo, old_set, ci;
    struct pick pk;
    enum nat_err err;
    bool last;

    if (is->self == t->dying)
        return NAT_ERR_INVAL;
    now = advance(t, now);
    pool_maintain(t, now);
    t->st.repicks++;
    if (busy_mark(t, proto_index(s->key.proto), old_ip, old_off, now + busy_ms) != 0)
        return NAT_ERR_NOMEM;
    if (nh_reserve(&t->by_outside) != 0 || nh_reserve(&t->by_mapping) != 0)
        return NAT_ERR_NOMEM;
    ci = client_find(t, &s->key.client.addr);
    err = pool_pick(t, ci, &s->key, now, &pk);
    if (err != NAT_OK)
        return err;
    /* take the new port before the old one goes, so its set stays alive */
    port_take(t, pk.set, pk.ip, pk.off);
    old_set = set_find(t, &s->key);
    last = map_leave(t, is, hash_mapping(t, &s->key));
    if (last)
        port_release(t, old_set, old_ip, old_off, now);
    outside_delete(t, is);
    s->ext.addr = t->cfg.ips[pk.ip];
    s->ext.port = (uint16_t)(t->cfg.port_lo + pk.off);
    s->ip_index = (uint8_t)pk.ip;
    outside_insert(t, is);
    if (t->cfg.mapping != NAT_MAPPING_APDM && last) {
        uint64_t hm = hash_mapping(t, &s->key);

        if (nh_find(&t->by_mapping, hm, eq_mapping, t, &s->key) == NH_NONE)
            nh_insert(&t->by_mapping, hm, is->self);
    }
    emit(t, NAT_EV_REPICK, now, "eaddrinuse", s);
    return NAT_OK;
}

/* Removes a session from everything, emits `type` and frees its slot. */
static void session_end(struct nat_table *t, struct nat_sess *is, uint64_t now,
                        enum nat_event_type type, const char *reason)
{
    struct nat_session copy = is->pub;
    unsigned pi = proto_index(copy.key.proto);
    uint64_t hc = hash_client(t, &copy.key.client.addr), hin = hash_inside(t, &copy.key);
    uint64_t hout = hash_outside(t, copy.key.proto, &copy.ext, &copy.key.dst), hm = 0;
    uint32_t ci;
    bool idle;

    /* start every cache miss this takes at once */
    nh_prefetch(&t->by_inside, hin);
    nh_prefetch(&t->by_outside, hout);
    nh_prefetch(&t->by_client, hc);
    if (t->cfg.mapping != NAT_MAPPING_APDM) {
        hm = hash_mapping(t, &copy.key);
        nh_prefetch(&t->by_mapping, hm);
    }
    if (is->lru_next != NIL)
        prefetch_line(sess(t, is->lru_next));
    nh_delete(&t->by_inside, hin, is->self);
    nh_delete(&t->by_outside, hout, is->self);
    if (map_leave(t, is, hm))
        port_release(t, set_find(t, &copy.key), copy.ip_index, copy.ext.port - t->cfg.port_lo, now);
    lru_unlink(t, is);
    ci = client_find_h(t, &copy.key.client.addr, hc);
    idle = ci != NIL && --t->clients[ci].sessions == 0;
    t->st.live--;
    t->st.live_by[pi][copy.state]--;
    /* the caller's pointer stays valid through its event; listings skip it */
    t->dying = is->self;
    emit(t, type, now, reason, &copy);
    t->dying = NIL;
    slab_put(t, is->self);
    /* after the CLOSE/EXPIRE: the log then reads close, block_free */
    if (idle)
        client_idle(t, ci, hc, now);
}

void nat_session_close(struct nat_table *t, struct nat_session *s, uint64_t now, const char *reason)
{
    now = advance(t, now);
    t->st.closed++;
    session_end(t, sess_of(s), now, NAT_EV_CLOSE, reason);
}

static uint64_t deadline(const struct nat_table *t, int c)
{
    uint32_t h = t->lru_head[c];

    if (h == NIL)
        return UINT64_MAX;
    return sess(t, h)->pub.last_seen + t->cfg.timeout_ms[c];
}

size_t nat_expire(struct nat_table *t, uint64_t now, size_t budget)
{
    size_t n = 0;

    now = advance(t, now);
    pool_maintain(t, now);
    while (budget == 0 || n < budget) {
        int best = -1;
        uint64_t bd = UINT64_MAX;

        for (int c = 0; c < NAT_TIMEOUT_COUNT; c++) {
            uint64_t d = deadline(t, c);

            if (d < bd) {
                bd = d;
                best = c;
            }
        }
        if (best < 0 || bd > now)
            break;
        t->st.expired++;
        session_end(t, sess(t, t->lru_head[best]), now, NAT_EV_EXPIRE, "timeout");
        n++;
    }
    /* then the holds that ended (each costs as much as an expiry) */
    while ((budget == 0 || n < budget) && t->hold_head != NIL &&
           t->clients[t->hold_head].hold_until <= now) {
        hold_release(t, t->hold_head, now);
        n++;
    }
    return n;
}

size_t nat_end_holds(struct nat_table *t, uint64_t now)
{
    size_t n = 0;

    now = advance(t, now);
    for (; t->hold_head != NIL; n++)
        hold_release(t, t->hold_head, now);
    return n;
}

uint64_t nat_next_expiry(const struct nat_table *t)
{
    uint64_t best = UINT64_MAX;

    for (int c = 0; c < NAT_TIMEOUT_COUNT; c++) {
        uint64_t d = deadline(t, c);

        if (d < best)
            best = d;
    }
    if (t->hold_head != NIL && t->clients[t->hold_head].hold_until < best)
        best = t->clients[t->hold_head].hold_until;
    return best;
}

/* ---- listing and filters ------------------------------------------------ */

void nat_filter_init(struct nat_filter *f)
{
    *f = (struct nat_filter){0};
    f->state = -1;
}

bool nat_filter_match(const struct nat_filter *f, const struct nat_session *s)
{
    if (f == NULL)
        return true;
    if (f->proto != 0 && s->key.proto != f->proto)
        return false;
    if (f->has_client && !nat_addr_in_prefix(&s->key.client.addr, &f->client, f->client_plen))
        return false;
    if (f->has_nat_ip && !addr_eq(&s->ext.addr, &f->nat_ip))
        return false;
    if (f->nat_port_lo != 0 || f->nat_port_hi != 0) {
        uint16_t hi = f->nat_port_hi != 0 ? f->nat_port_hi : UINT16_MAX;

        if (s->ext.port < f->nat_port_lo || s->ext.port > hi)
            return false;
    }
    if (f->has_backend && s->backend != f->backend)
        return false;
    if (f->state >= 0 && s->state != f->state)
        return false;
    return true;
}

struct id_slot {
    uint64_t id;
    uint32_t slot;
};

static void heap_down(struct id_slot *h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        struct id_slot tmp;

        if (l < n && h[l].id > h[m].id)
            m = l;
        if (l + 1 < n && h[l + 1].id > h[m].id)
            m = l + 1;
        if (m == i)
            return;
        tmp = h[i];
        h[i] = h[m];
        h[m] = tmp;
        i = m;
    }
}

static void heap_up(struct id_slot *h, size_t i)
{
    while (i > 0 && h[(i - 1) / 2].id < h[i].id) {
        struct id_slot tmp = h[i];

        h[i] = h[(i - 1) / 2];
        h[(i - 1) / 2] = tmp;
        i = (i - 1) / 2;
    }
}

/* Collects into h (max-heap, k entries at most) the k smallest ids > after
 * among the sessions passing f, then sorts them ascending. Returns how many. */
static size_t select_ids(const struct nat_table *t, const struct nat_filter *f, uint64_t after,
                         struct id_slot *h, size_t k)
{
    size_t n = 0;

    for (uint32_t slot = 0; slot < t->hi; slot++) {
        const struct nat_session *s = &sess(t, slot)->pub;

        if (s->id == 0 || s->id <= after || slot == t->dying || !nat_filter_match(f, s))
            continue;
        if (n < k) {
            h[n] = (struct id_slot){s->id, slot};
            heap_up(h, n++);
        } else if (s->id < h[0].id) {
            h[0] = (struct id_slot){s->id, slot};
            heap_down(h, n, 0);
        }
    }
    for (size_t m = n; m > 1; m--) { /* heap sort, ascending */
        struct id_slot tmp = h[0];

        h[0] = h[m - 1];
        h[m - 1] = tmp;
        heap_down(h, m - 1, 0);
    }
    return n;
}

/*
 * Ordered listing without an id index (which would cost 8 bytes a session):
 * each pass scans the slab for the next k smallest ids, k growing 4x a pass,
 * so a first page costs one scan and a full dump O(log n) scans.
 */
size_t nat_foreach(const struct nat_table *t, const struct nat_filter *f, uint64_t after_id,
                   int (*fn)(void *arg, const struct nat_session *s), void *arg)
{
    struct id_slot stack_buf[256], *h = stack_buf;
    size_t k = 256, called = 0;

    for (;;) {
        size_t n = select_ids(t, f, after_id, h, k);

        for (size_t i = 0; i < n; i++) {
            called++;
            if (fn(arg, &sess(t, h[i].slot)->pub) != 0)
                goto out;
        }
        if (n < k)
            break;
        after_id = h[n - 1].id;
        if (k < t->st.live) {
            size_t nk = k * 4;
            struct id_slot *nh = malloc(nk * sizeof(*nh));

            if (nh != NULL) {
                if (h != stack_buf)
                    free(h);
                h = nh;
                k = nk;
            }
        }
    }
out:
    if (h != stack_buf)
        free(h);
    return called;
}

size_t nat_walk(const struct nat_table *t, const struct nat_filter *f, uint32_t *cursor, size_t max,
                int (*fn)(void *arg, const struct nat_session *s), void *arg)
{
    size_t called = 0;
    uint32_t slot;

    for (slot = *cursor; slot < t->hi; slot++) {
        const struct nat_session *s = &sess(t, slot)->pub;

        if (s->id == 0 || slot == t->dying || !nat_filter_match(f, s))
            continue;
        called++;
        if (fn(arg, s) != 0 || (max != 0 && called >= max)) {
            slot++;
            break;
        }
    }
    *cursor = slot < t->hi ? slot : 0;
    return called;
}

size_t nat_flush(struct nat_table *t, const struct nat_filter *f, uint64_t now, const char *reason)
{
    struct id_slot *h;
    size_t n = 0, live = t->st.live;

    now = advance(t, now);
    if (live == 0)
        return 0;
    h = malloc(live * sizeof(*h));
    if (h != NULL) { /* in id order */
        size_t m = select_ids(t, f, 0, h, live);

        for (size_t i = 0; i < m; i++) {
            t->st.closed++;
            session_end(t, sess(t, h[i].slot), now, NAT_EV_CLOSE, reason);
        }
        free(h);
        return m;
    }
    for (uint32_t slot = 0; slot < t->hi; slot++) { /* no memory: slot order */
        struct nat_sess *is = sess(t, slot);

        if (is->pub.id == 0 || !nat_filter_match(f, &is->pub))
            continue;
        t->st.closed++;
        session_end(t, is, now, NAT_EV_CLOSE, reason);
        n++;
    }
    return n;
}

/* ---- counters ----------------------------------------------------------- */

void nat_get_stats(const struct nat_table *t, struct nat_stats *out)
{
    size_t mem = sizeof(*t);

    *out = t->st;
    mem += (size_t)t->n_chunks * CHUNK_SLOTS * sizeof(struct nat_sess);
    mem += (size_t)t->cap_chunks * sizeof(*t->chunks);
    mem += nh_bytes(&t->by_inside) + nh_bytes(&t->by_outside) + nh_bytes(&t->by_mapping) +
           nh_bytes(&t->by_client) + nh_bytes(&t->by_set);
    mem += (size_t)t->cap_clients * sizeof(*t->clients) + t->block_bytes;
    mem += (size_t)t->cap_sets * (sizeof(*t->sets) + sizeof(*t->set_free)) + t->set_bytes;
    mem += 2 * (size_t)t->cfg.n_ips * t->words * sizeof(uint64_t);
    if (t->users[0] != NULL)
        mem += 2 * (size_t)t->cfg.n_ips * t->nports * sizeof(uint32_t);
    mem += (size_t)t->cfg.n_ips * t->blk_words * sizeof(uint64_t);
    mem += (size_t)t->cool_cap * sizeof(*t->cool) + (size_t)t->bheap_cap * sizeof(*t->bheap);
    out->memory_bytes = mem;
}

uint64_t nat_ip_ports_in_use(const struct nat_table *t, unsigned ip_index)
{
    return ip_index < t->cfg.n_ips ? t->ip_in_use[ip_index] : 0;
}

uint32_t nat_client_sessions(const struct nat_table *t, const struct nat_addr *client)
{
    uint32_t ci = client_find(t, client);

    return ci == NIL ? 0 : t->clients[ci].sessions;
}

size_t nat_blocks_each(const struct nat_table *t,
                       int (*fn)(void *arg, const struct nat_block_info *b), void *arg)
{
    size_t n = 0;

    for (uint32_t ci = 0; ci < t->n_clients; ci++) {
        const struct nat_client *c = &t->clients[ci];
        struct nat_block_info b;

        if (c->nblocks == 0)
            continue; /* a free record, or a client without blocks */
        b.client = c->addr;
        b.sessions = c->sessions;
        b.held = client_held(t, ci);
        b.hold_until = b.held ? c->hold_until : 0;
        for (uint32_t i = 0; i < c->nblocks; i++) {
            unsigned ip = c->blocks[i] >> 16;
            uint32_t bn = c->blocks[i] & 0xffff;

            b.nat = t->cfg.ips[ip];
            b.port_lo = block_first_port(t, bn);
            b.port_last = (uint16_t)(b.port_lo + t->cfg.block_size - 1);
            n++;
            if (fn(arg, &b) != 0)
                return n;
        }
    }
    return n;
}
