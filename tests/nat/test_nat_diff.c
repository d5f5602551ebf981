/*
 * test_nat_diff.c - randomized differential test: long random sequences of
 * open/close/touch/set_state/expire/repick/flush/reconfigure/lookup run
 * against libnat and against a deliberately simple reference model (flat
 * arrays, linear scans) that knows the rules but none of the machinery. After
 * every operation the two must agree on the outcome and the events; every few
 * operations on the whole live set, both lookups, the uniqueness rules of the
 * mapping behaviour, and every counter. Fixed seeds, bounded op counts.
 *
 * Where the engine is free to choose (which port, which IP), the model checks
 * the choice is allowed (free, in range, paired IP, client port kept under
 * preserve, block rules) and then follows it.
 */
#include "tests/nat/nat_test_util.h"

#define M_MAXS 8192
#define M_MAXC 8192
#define M_MAXB 1024
#define M_MAXCL 64

struct msess {
    bool live;
    bool in_map; /* member of its client endpoint's registered mapping (eim/adm) */
    uint64_t id;
    struct nat_key key;
    unsigned ip;
    uint16_t port;
    uint8_t state;
    uint64_t last_seen, bytes_in, bytes_out;
    uint32_t backend;
    struct nat_session *real; /* borrowed */
};

struct mcool {
    uint8_t proto;
    struct nat_endpoint dst; /* scope: ignored for eim, addr for adm, endpoint for apdm */
    unsigned ip;
    uint16_t port;
    uint64_t at;
};

struct mbusy {
    uint8_t proto;
    unsigned ip;
    uint16_t port;
    uint64_t until;
};

struct mclient {
    bool used;
    struct nat_addr addr;
    uint32_t sessions;
    int ip[2];
    unsigned nblocks;
    unsigned bip[64], bno[64];
};

struct model {
    struct nat_config cfg;
    uint32_t nports, nblocks;
    struct msess s[M_MAXS];
    size_t n;
    struct mcool cool[M_MAXC];
    size_t ncool;
    struct mbusy busy[M_MAXB];
    size_t nbusy;
    struct mclient cl[M_MAXCL];
    uint64_t next_id;
    struct nat_stats st;
};

static uint64_t rs; /* test PRNG state */

static uint32_t rr(uint32_t n)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (uint32_t)(rs % n);
}

static bool addr_eq(const struct nat_addr *a, const struct nat_addr *b)
{
    return memcmp(a, b, sizeof(*a)) == 0;
}

static bool ep_eq(const struct nat_endpoint *a, const struct nat_endpoint *b)
{
    return a->port == b->port && addr_eq(&a->addr, &b->addr);
}

static bool key_eq(const struct nat_key *a, const struct nat_key *b)
{
    return a->proto == b->proto && ep_eq(&a->client, &b->client) && ep_eq(&a->dst, &b->dst);
}

static unsigned fam(const struct nat_addr *a)
{
    return nat_addr_is_v4(a) ? 0 : 1;
}

static bool dst_scope(const struct model *m, const struct nat_endpoint *a,
                      const struct nat_endpoint *b)
{
    switch (m->cfg.mapping) {
    case NAT_MAPPING_EIM:
        return true;
    case NAT_MAPPING_ADM:
        return addr_eq(&a->addr, &b->addr);
    default:
        return ep_eq(a, b);
    }
}

static bool same_mapping_key(const struct model *m, const struct nat_key *a,
                             const struct nat_key *b)
{
    if (a->proto != b->proto || !ep_eq(&a->client, &b->client))
        return false;
    if (m->cfg.mapping == NAT_MAPPING_EIM) /* the external address has dst's family */
        return fam(&a->dst.addr) == fam(&b->dst.addr);
    return addr_eq(&a->dst.addr, &b->dst.addr);
}

static struct mclient *mclient(struct model *m, const struct nat_addr *a, bool add)
{
    for (int i = 0; i < M_MAXCL; i++)
        if (m->cl[i].used && addr_eq(&m->cl[i].addr, a))
            return &m->cl[i];
    if (!add)
        return NULL;
    for (int i = 0; i < M_MAXCL; i++) {
        if (!m->cl[i].used) {
            m->cl[i] = (struct mclient){.used = true, .addr = *a, .ip = {-1, -1}};
            return &m->cl[i];
        }
    }
    cr_assert_fail("model: too many clients");
    return NULL;
}

static void maintain(struct model *m, uint64_t now)
{
    size_t j = 0;

    for (size_t i = 0; i < m->ncool; i++)
        if (m->cool[i].at + m->cfg.reuse_delay_ms > now)
            m->cool[j++] = m->cool[i];
    m->ncool = j;
    j = 0;
    for (size_t i = 0; i < m->nbusy; i++)
        if (m->busy[i].until > now)
            m->busy[j++] = m->busy[i];
    m->nbusy = j;
}

/* Is (proto, ip, port) free for a new mapping toward dst? */
static bool port_free(const struct model *m, uint8_t proto, unsigned ip, uint16_t port,
                      const struct nat_endpoint *dst)
{
    for (size_t i = 0; i < m->n; i++) {
        const struct msess *x = &m->s[i];

        if (x->live && x->key.proto == proto && x->ip == ip && x->port == port &&
            dst_scope(m, &x->key.dst, dst))
            return false;
    }
    for (size_t i = 0; i < m->ncool; i++) {
        const struct mcool *c = &m->cool[i];

        if (c->proto == proto && c->ip == ip && c->port == port && dst_scope(m, &c->dst, dst))
            return false;
    }
    for (size_t i = 0; i < m->nbusy; i++) {
        const struct mbusy *b = &m->busy[i];

        if (b->proto == proto && b->ip == ip && b->port == port)
            return false;
    }
    return true;
}

static bool any_free_in(const struct model *m, const struct nat_key *k, unsigned ip,
                        uint32_t off_lo, uint32_t off_hi)
{
    for (uint32_t o = off_lo; o < off_hi; o++)
        if (port_free(m, k->proto, ip, (uint16_t)(m->cfg.port_lo + o), &k->dst))
            return true;
    return false;
}

static bool block_owned(const struct model *m, unsigned ip, unsigned bn)
{
    for (int i = 0; i < M_MAXCL; i++)
        for (unsigned j = 0; m->cl[i].used && j < m->cl[i].nblocks; j++)
            if (m->cl[i].bip[j] == ip && m->cl[i].bno[j] == bn)
                return true;
    return false;
}

/* What the engine must answer for a new mapping of k from client c, on the
 * IPs allowed (the pairing, else every IP of the destination's family). */
static enum nat_err expect_pick(const struct model *m, const struct mclient *c,
                                const struct nat_key *k)
{
    unsigned f = fam(&k->dst.addr), bs = m->cfg.block_size;
    enum nat_err err = NAT_ERR_POOL_EXHAUSTED;

    for (unsigned ip = 0; ip < m->cfg.n_ips; ip++) {
        if (fam(&m->cfg.ips[ip]) != f)
            continue;
        if (c != NULL && c->ip[f] >= 0 && (unsigned)c->ip[f] != ip)
            continue;
        if (m->cfg.policy != NAT_POLICY_BLOCK) {
            if (any_free_in(m, k, ip, 0, m->nports))
                return NAT_OK;
            continue;
        }
        for (unsigned j = 0; c != NULL && j < c->nblocks; j++)
            if (c->bip[j] == ip && any_free_in(m, k, ip, c->bno[j] * bs, c->bno[j] * bs + bs))
                return NAT_OK;
        if (m->cfg.max_blocks_per_client != 0 && c != NULL &&
            c->nblocks >= m->cfg.max_blocks_per_client) {
            err = NAT_ERR_CLIENT_QUOTA;
            continue;
        }
        for (unsigned bn = 0; bn < m->nblocks; bn++)
            if (!block_owned(m, ip, bn) && any_free_in(m, k, ip, bn * bs, bn * bs + bs))
                return NAT_OK;
    }
    return err;
}

/* Checks the engine's choice (ip, port) for k is allowed, and records a new
 * block when it took one. */
static void check_pick(struct model *m, struct mclient *c, const struct nat_key *k, unsigned ip,
                       uint16_t port)
{
    unsigned f = fam(&k->dst.addr), bs = m->cfg.block_size, off;

    cr_assert(ip < m->cfg.n_ips);
    cr_assert_eq(fam(&m->cfg.ips[ip]), f, "external IP of another family");
    if (c->ip[f] >= 0)
        cr_assert_eq(ip, (unsigned)c->ip[f], "paired pooling broken");
    cr_assert(port >= m->cfg.port_lo && port <= m->cfg.port_hi);
    cr_assert(port_free(m, k->proto, ip, port, &k->dst), "port %u not free", port);
    off = port - m->cfg.port_lo;
    if (m->cfg.policy == NAT_POLICY_PRESERVE && k->client.port >= m->cfg.port_lo &&
        k->client.port <= m->cfg.port_hi && port_free(m, k->proto, ip, k->client.port, &k->dst))
        cr_assert_eq(port, k->client.port, "preserve did not keep a free client port");
    if (m->cfg.policy != NAT_POLICY_BLOCK)
        return;
    cr_assert(off / bs < m->nblocks, "port outside every block");
    /* an owned block with room comes first: the engine uses its first one */
    for (unsigned j = 0; j < c->nblocks; j++) {
        if (c->bip[j] != ip)
            continue;
        for (unsigned o = c->bno[j] * bs; o < c->bno[j] * bs + bs; o++) {
            if (port_free(m, k->proto, ip, (uint16_t)(m->cfg.port_lo + o), &k->dst)) {
                cr_assert_eq(off, o, "block policy: expected the first free port of own block");
                return;
            }
        }
    }
    cr_assert_not(block_owned(m, ip, off / bs), "took a port in someone else's block");
    for (unsigned o = (off / bs) * bs; o < off; o++)
        cr_assert_not(port_free(m, k->proto, ip, (uint16_t)(m->cfg.port_lo + o), &k->dst),
                      "new block: not its first free port");
    cr_assert(c->nblocks < 64);
    c->bip[c->nblocks] = ip;
    c->bno[c->nblocks] = off / bs;
    c->nblocks++;
    m->st.blocks_in_use++;
}

/* The last holder of (proto, ip, port) in its scope went: the port cools. */
static void release(struct model *m, const struct msess *x, uint64_t now)
{
    for (size_t i = 0; i < m->n; i++) {
        const struct msess *y = &m->s[i];

        if (y != x && y->live && y->key.proto == x->key.proto && y->ip == x->ip &&
            y->port == x->port && dst_scope(m, &y->key.dst, &x->key.dst))
            return;
    }
    if (m->cfg.reuse_delay_ms == 0)
        return;
    cr_assert(m->ncool < M_MAXC);
    m->cool[m->ncool++] = (struct mcool){
        .proto = x->key.proto, .dst = x->key.dst, .ip = x->ip, .port = x->port, .at = now};
}

static void client_leave(struct model *m, const struct nat_addr *a)
{
    struct mclient *c = mclient(m, a, false);

    cr_assert_not_null(c);
    if (--c->sessions == 0) {
        m->st.blocks_in_use -= c->nblocks;
        c->used = false;
    }
}

static void m_end(struct model *m, struct msess *x, uint64_t now)
{
    unsigned pi = x->key.proto == NAT_PROTO_UDP;

    x->live = false;
    release(m, x, now);
    client_leave(m, &x->key.client.addr);
    m->st.live--;
    m->st.live_by[pi][x->state]--;
}

static struct msess *m_find(struct model *m, const struct nat_key *k)
{
    for (size_t i = 0; i < m->n; i++)
        if (m->s[i].live && key_eq(&m->s[i].key, k))
            return &m->s[i];
    return NULL;
}

static struct msess *m_find_outside(struct model *m, const struct nat_outside_key *o)
{
    for (size_t i = 0; i < m->n; i++) {
        struct msess *x = &m->s[i];

        if (x->live && x->key.proto == o->proto && addr_eq(&m->cfg.ips[x->ip], &o->ext.addr) &&
            x->port == o->ext.port && ep_eq(&x->key.dst, &o->dst))
            return x;
    }
    return NULL;
}

static void compact(struct model *m)
{
    size_t j = 0;

    for (size_t i = 0; i < m->n; i++)
        if (m->s[i].live)
            m->s[j++] = m->s[i];
    m->n = j;
}

static int timeout_class(const struct msess *x)
{
    if (x->key.proto == NAT_PROTO_UDP)
        return NAT_TIMEOUT_UDP;
    return x->state == NAT_STATE_ESTABLISHED ? NAT_TIMEOUT_TCP_ESTABLISHED
                                             : NAT_TIMEOUT_TCP_TRANSITORY;
}

static uint64_t m_deadline(const struct model *m, const struct msess *x)
{
    return x->last_seen + m->cfg.timeout_ms[timeout_class(x)];
}

/* ---- the world the random ops draw from -------------------------------- */

struct world {
    const char *clients[6];
    const char *dsts[4];
    uint16_t cports[5];
    uint16_t dports[2];
};

static const struct world W = {
    .clients = {"10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::1", "2001:db8::2", "10.0.0.4"},
    .dsts = {"192.0.2.1", "192.0.2.2", "2001:db8:ffff::1", "192.0.2.3"},
    .cports = {1000, 1001, 30003, 30004, 30011},
    .dports = {80, 443},
};

static struct nat_key rand_key(void)
{
    return KEY(rr(2) ? NAT_PROTO_TCP : NAT_PROTO_UDP, W.clients[rr(6)], W.cports[rr(5)],
               W.dsts[rr(4)], W.dports[rr(2)]);
}

static struct msess *rand_live(struct model *m)
{
    if (m->st.live == 0)
        return NULL;
    for (int tries = 0; tries < 1000; tries++) {
        struct msess *x = &m->s[rr((uint32_t)m->n)];

        if (x->live)
            return x;
    }
    for (size_t i = 0; i < m->n; i++)
        if (m->s[i].live)
            return &m->s[i];
    return NULL;
}

/* ---- the ops ------------------------------------------------------------ */

static void op_open(struct model *m, struct nat_table *t, struct rec *r, uint64_t now)
{
    struct nat_key k = rand_key();
    uint32_t backend = rr(3);
    struct nat_session *s = NULL;
    size_t n0 = r->n;
    enum nat_err want = NAT_OK, got;
    struct msess *reuse = NULL;
    struct mclient *c;

    if (m_find(m, &k) != NULL) {
        want = NAT_ERR_EXISTS;
    } else {
        maintain(m, now);
        c = mclient(m, &k.client.addr, false);
        if (m->cfg.max_sessions != 0 && m->st.live >= m->cfg.max_sessions)
            want = NAT_ERR_TABLE_FULL;
        else if (m->cfg.per_client_limit != 0 && c != NULL &&
                 c->sessions >= m->cfg.per_client_limit)
            want = NAT_ERR_CLIENT_QUOTA;
        if (want == NAT_OK && m->cfg.mapping != NAT_MAPPING_APDM) {
            for (size_t i = 0; i < m->n && reuse == NULL; i++)
                if (m->s[i].live && m->s[i].in_map && same_mapping_key(m, &m->s[i].key, &k))
                    reuse = &m->s[i];
        }
        if (want == NAT_OK && reuse == NULL)
            want = expect_pick(m, c, &k);
    }
    got = nat_session_open(t, &k, backend, now, &s);
    cr_assert_eq(got, want, "open: engine %s, model %s", nat_err_name(got), nat_err_name(want));
    if (got != NAT_OK) {
        m->st.refused[got]++;
        cr_assert_null(s);
        if (got == NAT_ERR_EXISTS) {
            cr_assert_eq(r->n, n0);
            return;
        }
        cr_assert_eq(r->n, n0 + 1);
        cr_assert_eq(r->ev[n0 % REC_MAX].type, NAT_EV_REFUSE);
        cr_assert_str_eq(r->ev[n0 % REC_MAX].reason, nat_err_name(got));
        cr_assert(key_eq(&r->ev[n0 % REC_MAX].s.key, &k));
        return;
    }
    c = mclient(m, &k.client.addr, true);
    if (reuse != NULL) {
        cr_assert_eq(s->ip_index, reuse->ip, "eim/adm: mapping not reused");
        cr_assert_eq(s->ext.port, reuse->port, "eim/adm: mapping not reused");
    } else {
        check_pick(m, c, &k, s->ip_index, s->ext.port);
    }
    cr_assert(addr_eq(&s->ext.addr, &m->cfg.ips[s->ip_index]));
    c->sessions++;
    c->ip[fam(&k.dst.addr)] = s->ip_index;
    if (m->n == M_MAXS)
        compact(m);
    cr_assert(m->n < M_MAXS);
    m->s[m->n++] = (struct msess){.live = true,
                                  .in_map = true,
                                  .id = m->next_id++,
                                  .key = k,
                                  .ip = s->ip_index,
                                  .port = s->ext.port,
                                  .state = NAT_STATE_NEW,
                                  .last_seen = now,
                                  .backend = backend,
                                  .real = s};
    cr_assert_eq(s->id, m->s[m->n - 1].id);
    m->st.opened++;
    m->st.live++;
    m->st.live_by[k.proto == NAT_PROTO_UDP][NAT_STATE_NEW]++;
    cr_assert_eq(r->n, n0 + 1);
    cr_assert_eq(r->ev[n0 % REC_MAX].type, NAT_EV_OPEN);
    cr_assert_eq(r->ev[n0 % REC_MAX].s.id, s->id);
    cr_assert_eq(r->ev[n0 % REC_MAX].s.ext.port, s->ext.port);
}

static void op_close(struct model *m, struct nat_table *t, struct rec *r, uint64_t now)
{
    struct msess *x = rand_live(m);
    size_t n0 = r->n;
    uint64_t id;

    if (x == NULL)
        return;
    id = x->id;
    nat_session_close(t, x->real, now, "client_fin");
    m_end(m, x, now);
    m->st.closed++;
    cr_assert_eq(r->n, n0 + 1);
    cr_assert_eq(r->ev[n0 % REC_MAX].type, NAT_EV_CLOSE);
    cr_assert_eq(r->ev[n0 % REC_MAX].s.id, id);
    cr_assert_eq(r->ev[n0 % REC_MAX].s.state, NAT_STATE_CLOSED);
    cr_assert_str_eq(r->ev[n0 % REC_MAX].reason, "client_fin");
}

static void op_touch(struct model *m, struct nat_table *t, uint64_t now)
{
    struct msess *x = rand_live(m);
    uint64_t bi = rr(1000), bo = rr(1000);

    if (x == NULL)
        return;
    nat_session_touch(t, x->real, now, bi, bo);
    x->last_seen = now;
    x->bytes_in += bi;
    x->bytes_out += bo;
    m->st.bytes_in += bi;
    m->st.bytes_out += bo;
}

static void op_state(struct model *m, struct nat_table *t, uint64_t now)
{
    struct msess *x = rand_live(m);
    uint8_t st = (uint8_t)rr(3);
    unsigned pi;

    if (x == NULL)
        return;
    pi = x->key.proto == NAT_PROTO_UDP;
    nat_session_set_state(t, x->real, st, now);
    m->st.live_by[pi][x->state]--;
    x->state = st;
    m->st.live_by[pi][st]++;
    x->last_seen = now;
}

static void op_expire(struct model *m, struct nat_table *t, struct rec *r, uint64_t now)
{
    size_t budget = rr(3) == 0 ? 1 + rr(4) : 0, n0 = r->n, due = 0, got;
    uint64_t max_exp = 0;

    maintain(m, now);
    for (size_t i = 0; i < m->n; i++)
        if (m->s[i].live && m_deadline(m, &m->s[i]) <= now)
            due++;
    got = nat_expire(t, now, budget);
    cr_assert_eq(got, budget != 0 && due > budget ? budget : due, "expire count");
    cr_assert_eq(r->n, n0 + got);
    for (size_t i = 0; i < got; i++) {
        const struct nat_event *ev = &r->ev[(n0 + i) % REC_MAX];
        struct msess *x = NULL;

        cr_assert_eq(ev->type, NAT_EV_EXPIRE);
        cr_assert_str_eq(ev->reason, "timeout");
        for (size_t j = 0; j < m->n && x == NULL; j++)
            if (m->s[j].live && m->s[j].id == ev->s.id)
                x = &m->s[j];
        cr_assert_not_null(x, "expired an unknown session");
        cr_assert(m_deadline(m, x) <= now, "expired before its deadline");
        cr_assert(m_deadline(m, x) >= max_exp, "expiry out of deadline order");
        max_exp = m_deadline(m, x);
        m_end(m, x, now);
        m->st.expired++;
    }
    for (size_t i = 0; i < m->n; i++)
        if (m->s[i].live && m_deadline(m, &m->s[i]) <= now)
            cr_assert(m_deadline(m, &m->s[i]) >= max_exp, "an earlier deadline was skipped");
}

static void op_repick(struct model *m, struct nat_table *t, struct rec *r, uint64_t now)
{
    struct msess *x = rand_live(m);
    uint32_t busy_ms = (uint32_t[]){0, 100, 5000}[rr(3)];
    size_t n0 = r->n;
    struct mclient *c;
    enum nat_err want, got;
    struct msess old;
    bool others = false, found = false;

    if (x == NULL)
        return;
    maintain(m, now);
    m->st.repicks++;
    for (size_t i = 0; i < m->nbusy; i++) {
        struct mbusy *b = &m->busy[i];

        if (b->proto == x->key.proto && b->ip == x->ip && b->port == x->port) {
            if (now + busy_ms > b->until)
                b->until = now + busy_ms;
            found = true;
        }
    }
    if (!found) {
        cr_assert(m->nbusy < M_MAXB);
        m->busy[m->nbusy++] = (struct mbusy){
            .proto = x->key.proto, .ip = x->ip, .port = x->port, .until = now + busy_ms};
    }
    c = mclient(m, &x->key.client.addr, false);
    cr_assert_not_null(c);
    want = expect_pick(m, c, &x->key);
    got = nat_session_repick(t, x->real, now, busy_ms);
    cr_assert_eq(got, want, "repick: engine %s, model %s", nat_err_name(got), nat_err_name(want));
    if (got != NAT_OK) {
        cr_assert_eq(r->n, n0);
        cr_assert_eq(x->real->ext.port, x->port);
        return;
    }
    check_pick(m, c, &x->key, x->real->ip_index, x->real->ext.port);
    old = *x;
    x->ip = x->real->ip_index;
    x->port = x->real->ext.port;
    release(m, &old, now);
    for (size_t i = 0; i < m->n; i++)
        if (&m->s[i] != x && m->s[i].live && m->s[i].in_map &&
            same_mapping_key(m, &m->s[i].key, &x->key))
            others = true;
    x->in_map = !others;
    cr_assert_eq(r->n, n0 + 1);
    cr_assert_eq(r->ev[n0 % REC_MAX].type, NAT_EV_REPICK);
    cr_assert_eq(r->ev[n0 % REC_MAX].s.id, x->id);
    cr_assert_eq(r->ev[n0 % REC_MAX].s.ext.port, x->port);
}

static void op_flush(struct model *m, struct nat_table *t, struct rec *r, uint64_t now)
{
    struct nat_filter f;
    size_t n0 = r->n, want = 0, got, e = 0;

    nat_filter_init(&f);
    switch (rr(3)) {
    case 0:
        f.proto = NAT_PROTO_UDP;
        break;
    case 1:
        f.has_client = true;
        f.client = A(W.clients[rr(6)]);
        f.client_plen = 128;
        break;
    default:
        f.has_backend = true;
        f.backend = rr(3);
        break;
    }
    for (size_t i = 0; i < m->n; i++)
        if (m->s[i].live && nat_filter_match(&f, m->s[i].real))
            want++;
    got = nat_flush(t, &f, now, "flush");
    cr_assert_eq(got, want);
    cr_assert_eq(r->n, n0 + got);
    for (size_t i = 0; i < m->n; i++) {
        struct msess *x = &m->s[i];
        const struct nat_event *ev;

        if (!x->live || !nat_filter_match(&f, x->real))
            continue;
        ev = &r->ev[(n0 + e++) % REC_MAX];
        cr_assert_eq(ev->type, NAT_EV_CLOSE);
        cr_assert_eq(ev->s.id, x->id, "flush not in id order");
        cr_assert_str_eq(ev->reason, "flush");
        m_end(m, x, now);
        m->st.closed++;
    }
}

static void op_reconfigure(struct model *m, struct nat_table *t)
{
    struct nat_config c = m->cfg;

    c.reuse_delay_ms = (uint32_t[]){0, 500, 3000}[rr(3)];
    c.per_client_limit = (uint32_t[]){0, 3, 8}[rr(3)];
    c.max_sessions = (uint32_t[]){0, 20, 60}[rr(3)];
    c.timeout_ms[NAT_TIMEOUT_UDP] = 5000 + rr(20000);
    cr_assert_eq(nat_table_reconfigure(t, &c), NAT_OK);
    m->cfg = c;
}

static void op_lookup(struct model *m, struct nat_table *t)
{
    struct nat_key k = rand_key();
    struct msess *x = m_find(m, &k);
    struct nat_session *s = nat_lookup_inside(t, &k);

    if (x == NULL) {
        cr_assert_null(s);
    } else {
        cr_assert_eq(s, x->real);
        struct nat_endpoint ext = {.addr = m->cfg.ips[x->ip], .port = x->port};
        cr_assert_eq(nat_lookup_outside(t, k.proto, &ext, &k.dst), x->real);
    }
}

/* ---- whole-state comparison -------------------------------------------- */

struct collect {
    const struct nat_session *s[M_MAXS];
    size_t n;
};

static int collect_cb(void *arg, const struct nat_session *s)
{
    struct collect *c = arg;

    cr_assert(c->n < M_MAXS);
    c->s[c->n++] = s;
    return 0;
}

static struct collect col;

/* Block events, counted by diff_cb: what they say is held must be what the
 * model holds. */
static uint64_t blocks_taken, blocks_given;

static void compare_all(struct model *m, struct nat_table *t)
{
    struct nat_stats st;
    size_t j = 0, ports = 0;

    col.n = 0;
    cr_assert_eq(nat_foreach(t, NULL, 0, collect_cb, &col), m->st.live);
    for (size_t i = 0; i < m->n; i++) {
        const struct msess *x = &m->s[i];
        const struct nat_session *s;
        struct nat_endpoint ext;

        if (!x->live)
            continue;
        cr_assert(j < col.n);
        s = col.s[j++];
        cr_assert_eq(s->id, x->id, "live sets differ");
        cr_assert(key_eq(&s->key, &x->key));
        cr_assert_eq(s->ip_index, x->ip);
        cr_assert_eq(s->ext.port, x->port);
        cr_assert_eq(s->state, x->state);
        cr_assert_eq(s->last_seen, x->last_seen);
        cr_assert_eq(s->bytes_in, x->bytes_in);
        cr_assert_eq(s->bytes_out, x->bytes_out);
        cr_assert_eq(s->backend, x->backend);
        cr_assert_eq(nat_lookup_inside(t, &x->key), x->real);
        ext = (struct nat_endpoint){.addr = m->cfg.ips[x->ip], .port = x->port};
        cr_assert_eq(fam(&ext.addr), fam(&x->key.dst.addr), "external address of another family");
        cr_assert_eq(nat_lookup_outside(t, x->key.proto, &ext, &x->key.dst), x->real);
        /* uniqueness rules of the mapping behaviour */
        for (size_t k = i + 1; k < m->n; k++) {
            const struct msess *y = &m->s[k];

            if (!y->live || y->key.proto != x->key.proto || y->ip != x->ip || y->port != x->port)
                continue;
            if (m->cfg.mapping == NAT_MAPPING_EIM)
                cr_assert(ep_eq(&x->key.client, &y->key.client), "eim port shared");
            else if (m->cfg.mapping == NAT_MAPPING_ADM &&
                     addr_eq(&x->key.dst.addr, &y->key.dst.addr))
                cr_assert(ep_eq(&x->key.client, &y->key.client), "adm port overloaded");
            else
                cr_assert_not(ep_eq(&x->key.dst, &y->key.dst), "apdm port overloaded");
        }
    }
    cr_assert_eq(j, col.n);
    /* batched lookups agree with the model, hits and misses mixed (the keys of
     * ended sessions may belong to live ones now) */
    {
        static struct nat_key keys[M_MAXS];
        static struct nat_outside_key oks[M_MAXS];
        static struct nat_session *out[M_MAXS];
        size_t n = m->n, want_in = 0, want_out = 0;

        for (size_t i = 0; i < n; i++) {
            const struct msess *x = &m->s[i];

            keys[i] = x->key;
            oks[i] =
                (struct nat_outside_key){x->key.proto, {m->cfg.ips[x->ip], x->port}, x->key.dst};
            want_in += m_find(m, &keys[i]) != NULL;
            want_out += m_find_outside(m, &oks[i]) != NULL;
        }
        cr_assert_eq(nat_lookup_inside_many(t, keys, n, out), want_in);
        for (size_t i = 0; i < n; i++) {
            const struct msess *x = m_find(m, &keys[i]);

            cr_assert_eq(out[i], x != NULL ? x->real : NULL);
        }
        cr_assert_eq(nat_lookup_outside_many(t, oks, n, out), want_out);
        for (size_t i = 0; i < n; i++) {
            const struct msess *x = m_find_outside(m, &oks[i]);

            cr_assert_eq(out[i], x != NULL ? x->real : NULL);
            cr_assert_eq(nat_lookup_outside(t, oks[i].proto, &oks[i].ext, &oks[i].dst), out[i]);
        }
    }
    /* paging with after_id returns the tail */
    if (col.n > 2) {
        size_t mid = col.n / 2;
        struct collect *tail = malloc(sizeof(*tail));

        tail->n = 0;
        cr_assert_eq(nat_foreach(t, NULL, col.s[mid]->id, collect_cb, tail), col.n - mid - 1);
        cr_assert_eq(tail->s[0], col.s[mid + 1]);
        free(tail);
    }
    /* ports held: distinct (proto, ip, port) of live sessions */
    for (size_t i = 0; i < m->n; i++) {
        bool dup = false;

        if (!m->s[i].live)
            continue;
        for (size_t k = 0; k < i && !dup; k++)
            dup = m->s[k].live && m->s[k].key.proto == m->s[i].key.proto &&
                  m->s[k].ip == m->s[i].ip && m->s[k].port == m->s[i].port;
        ports += !dup;
    }
    nat_get_stats(t, &st);
    cr_assert_eq(st.opened, m->st.opened);
    cr_assert_eq(st.closed, m->st.closed);
    cr_assert_eq(st.expired, m->st.expired);
    for (int e = 0; e < NAT_ERR_COUNT; e++)
        cr_assert_eq(st.refused[e], m->st.refused[e], "refused[%s]", nat_err_name(e));
    cr_assert_eq(st.repicks, m->st.repicks);
    cr_assert_eq(st.live, m->st.live);
    for (int p = 0; p < 2; p++)
        for (int s = 0; s < NAT_STATE_COUNT; s++)
            cr_assert_eq(st.live_by[p][s], m->st.live_by[p][s]);
    cr_assert_eq(st.ports_in_use, ports);
    cr_assert_eq(st.ports_cooling, m->ncool);
    cr_assert_eq(st.blocks_in_use, m->st.blocks_in_use);
    cr_assert_eq(blocks_taken - blocks_given, m->st.blocks_in_use, "block events vs blocks held");
    cr_assert_eq(st.bytes_in, m->st.bytes_in);
    cr_assert_eq(st.bytes_out, m->st.bytes_out);
    cr_assert_eq(st.ports_total, (uint64_t)m->cfg.n_ips * m->nports);
    for (int i = 0; i < 6; i++) {
        struct nat_addr a = A(W.clients[i]);
        struct mclient *c = mclient(m, &a, false);

        cr_assert_eq(nat_client_sessions(t, &a), c != NULL ? c->sessions : 0);
    }
    compact(m); /* keeps the model's scans short */
}

/* The block events recorded by diff_cb, the others going to the op_* checks. */
static void diff_cb(void *arg, const struct nat_event *ev)
{
    if (ev->type == NAT_EV_BLOCK_ALLOC || ev->type == NAT_EV_BLOCK_FREE) {
        cr_assert_eq(ev->s.id, 0);
        *(ev->type == NAT_EV_BLOCK_ALLOC ? &blocks_taken : &blocks_given) += 1;
        return;
    }
    rec_cb(arg, ev);
}

static void run(enum nat_policy policy, enum nat_mapping mapping, bool v6, uint64_t seed, int ops)
{
    static struct model m;
    static struct rec r;
    struct nat_config c;
    struct nat_table *t;
    uint64_t now = 1000;

    nat_config_default(&c);
    c.policy = policy;
    c.mapping = mapping;
    c.n_ips = 2;
    c.ips[0] = A("198.51.100.1");
    c.ips[1] = A(v6 ? "2001:db8:1::1" : "198.51.100.2");
    c.port_lo = 30000;
    c.port_hi = 30011; /* 12 ports: exhaustion is common */
    c.block_size = 4;
    c.max_blocks_per_client = policy == NAT_POLICY_BLOCK ? 2 : 0;
    if (seed % 3 == 0) { /* a tiny pool: 4 ports, blocks of 2, one block per client */
        c.port_hi = 30003;
        c.block_size = 2;
        c.max_blocks_per_client = policy == NAT_POLICY_BLOCK ? 1 : 0;
    }
    c.timeout_ms[NAT_TIMEOUT_UDP] = 20000;
    c.timeout_ms[NAT_TIMEOUT_TCP_ESTABLISHED] = 60000;
    c.timeout_ms[NAT_TIMEOUT_TCP_TRANSITORY] = 5000;
    c.reuse_delay_ms = 500;
    c.seed = seed;
    memset(&m, 0, sizeof(m));
    m.cfg = c;
    m.nports = c.port_hi - c.port_lo + 1u;
    m.nblocks = m.nports / c.block_size;
    m.next_id = 1;
    m.st.ports_total = (uint64_t)c.n_ips * m.nports;
    rs = seed * 2654435761u + 1;
    t = mk(&c, &r);
    blocks_taken = blocks_given = 0;
    nat_table_set_event_cb(t, diff_cb, &r);
    for (int i = 0; i < ops; i++) {
        uint32_t op = rr(100);

        now += rr(400);
        if (op < 40)
            op_open(&m, t, &r, now);
        else if (op < 55)
            op_close(&m, t, &r, now);
        else if (op < 65)
            op_touch(&m, t, now);
        else if (op < 72)
            op_state(&m, t, now);
        else if (op < 82)
            op_expire(&m, t, &r, now);
        else if (op < 88)
            op_repick(&m, t, &r, now);
        else if (op < 89)
            op_flush(&m, t, &r, now);
        else if (op < 90)
            op_reconfigure(&m, t);
        else
            op_lookup(&m, t);
        if (i % 64 == 0)
            compare_all(&m, t);
    }
    compare_all(&m, t);
    if (getenv("NAT_DIFF_VERBOSE") != NULL)
        fprintf(stderr,
                "%s/%s seed %llu: opened %llu closed %llu expired %llu repicks %llu "
                "refused exhausted %llu quota %llu full %llu exists %llu, live %llu cooling %zu "
                "blocks %llu\n",
                nat_policy_name(policy), nat_mapping_name(mapping), (unsigned long long)seed,
                (unsigned long long)m.st.opened, (unsigned long long)m.st.closed,
                (unsigned long long)m.st.expired, (unsigned long long)m.st.repicks,
                (unsigned long long)m.st.refused[NAT_ERR_POOL_EXHAUSTED],
                (unsigned long long)m.st.refused[NAT_ERR_CLIENT_QUOTA],
                (unsigned long long)m.st.refused[NAT_ERR_TABLE_FULL],
                (unsigned long long)m.st.refused[NAT_ERR_EXISTS], (unsigned long long)m.st.live,
                m.ncool, (unsigned long long)m.st.blocks_in_use);
    nat_table_free(t);
}

#define DIFF_OPS 20000

#define DIFF_TEST(pol, map)                                                                        \
    Test(nat_diff, pol##_##map)                                                                    \
    {                                                                                              \
        for (uint64_t seed = 1; seed <= 6; seed++)                                                 \
            run(NAT_POLICY_##pol, NAT_MAPPING_##map, seed % 2 == 0, seed, DIFF_OPS);               \
    }

DIFF_TEST(SEQUENTIAL, EIM)
DIFF_TEST(SEQUENTIAL, ADM)
DIFF_TEST(SEQUENTIAL, APDM)
DIFF_TEST(RANDOM, EIM)
DIFF_TEST(RANDOM, ADM)
DIFF_TEST(RANDOM, APDM)
DIFF_TEST(PRESERVE, EIM)
DIFF_TEST(PRESERVE, ADM)
DIFF_TEST(PRESERVE, APDM)
DIFF_TEST(BLOCK, EIM)
DIFF_TEST(BLOCK, ADM)
DIFF_TEST(BLOCK, APDM)
