/*
 * sim_model.c - the model's event loop. Events are arrivals (generated one
 * ahead, or read from the trace), departures and keep-alives (a binary heap
 * keyed by virtual time) and samples (every sample_ms). libnat sees the
 * virtual time in whole milliseconds.
 */
#include "sim/sim_model.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim/sim_util.h"

#define MODEL_SUBSCRIBER_BASE 0x64400000u /* 100.64.0.0 */
#define MODEL_DEST_BASE 0xc6120000u       /* 198.18.0.0 */
#define MODEL_DEST_PORT 443
#define MODEL_BLOCK 100 /* arrivals per statistics block */
#define MODEL_CLIENT_PORTS 28232 /* a subscriber's local ports, 32768-60999 */
#define MODEL_BATCHES 20

enum ev_kind {
    EV_DEPART = 0,
    EV_KEEPALIVE,
};

struct heap_ent {
    double t;     /* when */
    double end;   /* the flow's departure */
    uint64_t sid; /* libnat session id */
    struct nat_key key;
    uint8_t kind;
};

struct model {
    const struct sim_model_config *c;
    struct nat_table *nat;
    struct sim_rng rng;
    struct heap_ent *heap; /* owned */
    size_t heap_len, heap_cap;
    struct sim_model_client *cl; /* owned */
    uint16_t *next_port;         /* owned, per client */
    size_t n_cl, cap_cl;
    uint32_t *map; /* owned: open addressing, client index + 1 */
    size_t map_cap;
    uint64_t *hist; /* owned: hist[k] = clients with k live mappings */
    size_t hist_cap;
    uint64_t live_max, clients_active, live_total;
    uint32_t *blocks; /* owned: refusals per block of MODEL_BLOCK counted arrivals */
    size_t n_blocks, cap_blocks;
    uint64_t rr;
    uint32_t *port_refs;    /* owned: live sessions per [proto][nat ip][nat port - port_lo],
                               proto 0 tcp, 1 udp */
    uint64_t ports_used[2]; /* entries of port_refs above 0, per protocol */
    struct sim_model_result *res;
    uint64_t blocks_in_use; /* from the block events */
    int oom;
};

/* ---- small containers ------------------------------------------------------- */

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    size_t nc = *cap ? *cap : 64;
    void *np;

    if (need <= *cap)
        return 0;
    while (nc < need)
        nc *= 2;
    np = realloc(*p, nc * elem);
    if (np == NULL)
        return -ENOMEM;
    *p = np;
    *cap = nc;
    return 0;
}

static void heap_up(struct heap_ent *h, size_t i)
{
    struct heap_ent e = h[i];

    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p].t <= e.t)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static void heap_down(struct heap_ent *h, size_t n, size_t i)
{
    struct heap_ent e = h[i];

    for (;;) {
        size_t l = 2 * i + 1, m;
        if (l >= n)
            break;
        m = (l + 1 < n && h[l + 1].t < h[l].t) ? l + 1 : l;
        if (h[m].t >= e.t)
            break;
        h[i] = h[m];
        i = m;
    }
    h[i] = e;
}

static int heap_push(struct model *m, const struct heap_ent *e)
{
    if (grow((void **)&m->heap, &m->heap_cap, m->heap_len + 1, sizeof(*m->heap)) < 0)
        return -ENOMEM;
    m->heap[m->heap_len] = *e;
    heap_up(m->heap, m->heap_len++);
    return 0;
}

static void heap_pop(struct model *m, struct heap_ent *out)
{
    *out = m->heap[0];
    m->heap[0] = m->heap[--m->heap_len];
    if (m->heap_len > 0)
        heap_down(m->heap, m->heap_len, 0);
}

static uint64_t hash16(const uint8_t *b)
{
    uint64_t x, y;

    memcpy(&x, b, 8);
    memcpy(&y, b + 8, 8);
    x ^= y * 0x9e3779b97f4a7c15ULL;
    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ULL;
    return x ^ (x >> 29);
}

/* The index of client `ip`, adding it when new; -1 when out of memory. */
static long client_index(struct model *m, const uint8_t *ip, bool add)
{
    size_t mask, i;

    if (m->map_cap == 0 || (add && (m->n_cl + 1) * 2 > m->map_cap)) {
        size_t nc = m->map_cap ? m->map_cap * 2 : 1024;
        uint32_t *nm = calloc(nc, sizeof(*nm));
        if (nm == NULL)
            return -1;
        for (size_t k = 0; k < m->n_cl; k++) {
            size_t j = hash16(m->cl[k].ip) & (nc - 1);
            while (nm[j] != 0)
                j = (j + 1) & (nc - 1);
            nm[j] = (uint32_t)k + 1;
        }
        free(m->map);
        m->map = nm;
        m->map_cap = nc;
    }
    mask = m->map_cap - 1;
    for (i = hash16(ip) & mask; m->map[i] != 0; i = (i + 1) & mask)
        if (memcmp(m->cl[m->map[i] - 1].ip, ip, 16) == 0)
            return (long)m->map[i] - 1;
    if (!add)
        return -2;
    if (grow((void **)&m->cl, &m->cap_cl, m->n_cl + 1, sizeof(*m->cl)) < 0)
        return -1;
    {
        size_t cap2 = m->cap_cl;
        uint16_t *np = realloc(m->next_port, cap2 * sizeof(*np));
        if (np == NULL)
            return -1;
        m->next_port = np;
    }
    memset(&m->cl[m->n_cl], 0, sizeof(m->cl[0]));
    memcpy(m->cl[m->n_cl].ip, ip, 16);
    m->next_port[m->n_cl] = (uint16_t)(32768 + sim_rng_below(&m->rng, 28232));
    m->map[i] = (uint32_t)m->n_cl + 1;
    return (long)m->n_cl++;
}

/* ---- per-client live counts (for the max without a scan) ---------------------- */

static void live_change(struct model *m, long idx, int delta)
{
    struct sim_model_client *c;
    uint32_t old;

    if (idx < 0)
        return;
    c = &m->cl[idx];
    old = c->live;
    if (delta < 0 && old == 0)
        return;
    c->live = delta > 0 ? old + 1 : old - 1;
    if ((size_t)c->live + 2 > m->hist_cap) {
        size_t oldcap = m->hist_cap;
        if (grow((void **)&m->hist, &m->hist_cap, (size_t)c->live + 2, sizeof(*m->hist)) < 0) {
            m->oom = 1;
            return;
        }
        memset(m->hist + oldcap, 0, (m->hist_cap - oldcap) * sizeof(*m->hist));
    }
    if (old > 0)
        m->hist[old]--;
    if (c->live > 0)
        m->hist[c->live]++;
    if (old == 0 && c->live == 1)
        m->clients_active++;
    if (old == 1 && c->live == 0)
        m->clients_active--;
    if (c->live > m->live_max)
        m->live_max = c->live;
    while (m->live_max > 0 && m->hist[m->live_max] == 0)
        m->live_max--;
    if (c->live > c->peak)
        c->peak = c->live;
    if (c->peak > m->res->peak_ports_per_client)
        m->res->peak_ports_per_client = c->peak;
    m->live_total = m->live_total + (uint64_t)(delta > 0 ? 1 : -1);
}

/* Counts a session into (delta +1) or out of (-1) its protocol's external
 * port. The model never repicks, so a session keeps the port it opened with. */
static void port_ref(struct model *m, const struct nat_session *s, int delta)
{
    const struct nat_config *nc = &m->c->nat;
    size_t nports = (size_t)nc->port_hi - nc->port_lo + 1, p = s->key.proto == NAT_PROTO_UDP;
    uint32_t *ref;

    if (s->ip_index >= nc->n_ips || s->ext.port < nc->port_lo || s->ext.port > nc->port_hi)
        return;
    ref = &m->port_refs[(p * nc->n_ips + s->ip_index) * nports + (s->ext.port - nc->port_lo)];
    if (delta > 0 && (*ref)++ == 0)
        m->ports_used[p]++;
    else if (delta < 0 && *ref > 0 && --(*ref) == 0)
        m->ports_used[p]--;
}

static void on_nat_event(void *arg, const struct nat_event *ev)
{
    struct model *m = arg;
    long idx;

    switch (ev->type) {
    case NAT_EV_BLOCK_ALLOC:
        m->res->log_rows_blocks++;
        m->res->block_allocs++;
        if (++m->blocks_in_use > m->res->peak_blocks_in_use)
            m->res->peak_blocks_in_use = m->blocks_in_use;
        return;
    case NAT_EV_BLOCK_FREE:
        m->res->log_rows_blocks++;
        m->blocks_in_use--;
        return;
    case NAT_EV_REFUSE:
        m->res->log_rows_flows++;
        m->res->log_rows_blocks++;
        return;
    case NAT_EV_REPICK:
        m->res->log_rows_flows++;
        return;
    default:
        m->res->log_rows_flows++; /* open, close, expire */
        break;
    }
    port_ref(m, &ev->s, ev->type == NAT_EV_OPEN ? +1 : -1);
    idx = client_index(m, ev->s.key.client.addr.b, false);
    if (idx < 0)
        return;
    if (ev->type == NAT_EV_OPEN)
        live_change(m, idx, +1);
    else
        live_change(m, idx, -1);
    if (ev->type == NAT_EV_EXPIRE)
        m->res->expired++;
    else if (ev->type == NAT_EV_CLOSE)
        m->res->closed++;
}

/* ---- samples --------------------------------------------------------------------- */

/* The peaks, from the table's counts now. Called at every open, not only at
 * samples: a burst that fills the pool between two samples is a peak too. */
static void note_peaks(struct model *m, const struct nat_stats *st)
{
    struct sim_model_result *r = m->res;

    if (st->live > r->peak_active)
        r->peak_active = st->live;
    if (st->ports_in_use > r->peak_ports_in_use)
        r->peak_ports_in_use = st->ports_in_use;
    if (m->ports_used[0] > r->peak_tcp_ports_in_use)
        r->peak_tcp_ports_in_use = m->ports_used[0];
    if (m->ports_used[1] > r->peak_udp_ports_in_use)
        r->peak_udp_ports_in_use = m->ports_used[1];
}

static void take_sample(struct model *m, double t, uint64_t *last_refused, sim_sample_fn fn,
                        void *arg)
{
    struct sim_model_sample s;
    struct nat_stats st;

    nat_get_stats(m->nat, &st);
    memset(&s, 0, sizeof(s));
    s.t_ms = t;
    s.arrivals = m->res->arrivals;
    s.opened = m->res->opened;
    s.refused = m->res->refused_total;
    s.refused_interval = s.refused - *last_refused;
    *last_refused = s.refused;
    s.active = st.live;
    s.ports_in_use = st.ports_in_use;
    s.tcp_ports_in_use = m->ports_used[0];
    s.udp_ports_in_use = m->ports_used[1];
    s.ports_cooling = st.ports_cooling;
    s.tcp_pool_use = st.ports_total ? (double)s.tcp_ports_in_use / (double)st.ports_total : 0;
    s.udp_pool_use = st.ports_total ? (double)s.udp_ports_in_use / (double)st.ports_total : 0;
    s.pool_use = s.tcp_pool_use > s.udp_pool_use ? s.tcp_pool_use : s.udp_pool_use;
    s.clients_active = m->clients_active;
    s.ports_per_client_max = m->live_max;
    s.ports_per_client_mean =
        m->clients_active ? (double)m->live_total / (double)m->clients_active : 0.0;
    note_peaks(m, &st);
    m->res->samples++;
    if (fn != NULL)
        fn(arg, &s);
}

/* ---- flows ------------------------------------------------------------------------- */

static uint32_t idle_timeout(const struct sim_model_config *c, uint8_t proto)
{
    return proto == NAT_PROTO_UDP ? c->nat.timeout_ms[NAT_TIMEOUT_UDP]
                                  : c->nat.timeout_ms[NAT_TIMEOUT_TCP_ESTABLISHED];
}

static void count_arrival(struct model *m, bool refused)
{
    struct sim_model_result *r = m->res;

    r->arrivals++;
    if (r->arrivals <= m->c->warmup_flows)
        return;
    if (r->counted % MODEL_BLOCK == 0) {
        if (grow((void **)&m->blocks, &m->cap_blocks, m->n_blocks + 1, sizeof(*m->blocks)) < 0) {
            m->oom = 1;
            return;
        }
        m->blocks[m->n_blocks++] = 0;
    }
    r->counted++;
    if (refused) {
        r->counted_refused++;
        m->blocks[m->n_blocks - 1]++;
    }
}

/* One flow arrives at virtual time t. */
static int arrive(struct model *m, double t, long ci, const uint8_t *dst, uint16_t dport,
                  uint8_t proto, double hold)
{
    struct nat_key key;
    struct nat_session *s = NULL;
    enum nat_err rc = NAT_ERR_EXISTS;
    uint64_t now = (uint64_t)t;
    struct heap_ent e;

    memset(&key, 0, sizeof(key));
    memcpy(key.client.addr.b, m->cl[ci].ip, 16);
    memcpy(key.dst.addr.b, dst, 16);
    key.dst.port = dport;
    key.proto = proto;
    /* The client's own port: the OS-like next port, skipping ones in use,
     * over the whole range when it must (a subscriber near 28,232 flows). */
    for (int tries = 0; tries < MODEL_CLIENT_PORTS && rc == NAT_ERR_EXISTS; tries++) {
        uint16_t p = m->next_port[ci];
        m->next_port[ci] = p >= 60999 ? 32768 : (uint16_t)(p + 1);
        key.client.port = p;
        if (nat_lookup_inside(m->nat, &key) != NULL)
            continue;
        rc = nat_session_open(m->nat, &key, 0, now, &s);
    }
    if (rc == NAT_ERR_EXISTS) {
        /* Every local port of the subscriber is taken: its own stack would
         * fail the connect (EADDRNOTAVAIL); the NAT never sees the flow. */
        m->res->client_ports_busy++;
        return 0;
    }
    if (rc != NAT_OK) {
        if (rc == NAT_ERR_NOMEM)
            return -ENOMEM;
        m->res->refused[rc]++;
        m->res->refused_total++;
        m->cl[ci].refused++;
        count_arrival(m, true);
        return 0;
    }
    m->res->opened++;
    m->cl[ci].opened++;
    count_arrival(m, false);
    {
        struct nat_stats st;
        nat_get_stats(m->nat, &st);
        note_peaks(m, &st);
    }
    if (proto == NAT_PROTO_TCP)
        nat_session_set_state(m->nat, s, NAT_STATE_ESTABLISHED, now);
    e.end = t + hold;
    e.sid = s->id;
    e.key = key;
    {
        double ka = idle_timeout(m->c, proto) / 2.0;
        if (ka < 1)
            ka = 1;
        if (hold > ka) {
            e.t = t + ka;
            e.kind = EV_KEEPALIVE;
        } else {
            e.t = e.end;
            e.kind = EV_DEPART;
        }
    }
    return heap_push(m, &e);
}

static int depart(struct model *m, const struct heap_ent *e)
{
    struct nat_session *s = nat_lookup_inside(m->nat, &e->key);
    uint64_t now = (uint64_t)e->t;

    if (s == NULL || s->id != e->sid)
        return 0; /* already expired */
    if (e->kind == EV_KEEPALIVE) {
        struct heap_ent n = *e;
        double ka = idle_timeout(m->c, e->key.proto) / 2.0;
        nat_session_touch(m->nat, s, now, 0, 0);
        if (ka < 1)
            ka = 1;
        n.t = e->t + ka;
        if (n.t >= e->end) {
            n.t = e->end;
            n.kind = EV_DEPART;
        }
        return heap_push(m, &n);
    }
    if (m->c->close_mode == SIM_CLOSE_EXACT) {
        nat_session_close(m->nat, s, now, "client_fin");
    } else if (e->key.proto == NAT_PROTO_TCP) {
        nat_session_set_state(m->nat, s, NAT_STATE_CLOSING, now);
    } else {
        nat_session_touch(m->nat, s, now, 0, 0);
    }
    return 0;
}

/* ---- arrivals --------------------------------------------------------------------- */

struct arrival {
    double t;
    long client;
    uint8_t dst[16];
    uint16_t dport;
    uint8_t proto;
    double hold;
};

static void pick_dest(struct model *m, struct arrival *a)
{
    const struct sim_model_config *c = m->c;
    uint64_t n = (uint64_t)c->dest_ips * c->dest_ports;
    uint64_t i = c->dest_pick == SIM_DEST_ROUND_ROBIN ? m->rr++ % n : sim_rng_below(&m->rng, n);

    sim_addr16_v4(a->dst, MODEL_DEST_BASE + (uint32_t)(i / c->dest_ports));
    a->dport = (uint16_t)(MODEL_DEST_PORT + i % c->dest_ports);
}

/* The next arrival: 1 and *a, 0 when there are no more, or -EINVAL / -ENOMEM. */
static int next_arrival(struct model *m, double prev_t, uint32_t *burst_left, struct arrival *a,
                        char *err, size_t errlen)
{
    const struct sim_model_config *c = m->c;

    if (c->max_flows && m->res->arrivals >= c->max_flows)
        return 0;
    if (c->arrival == SIM_ARRIVAL_TRACE) {
        struct sim_trace_row row;
        int rc = sim_trace_next(c->trace, &row, err, errlen);
        if (rc <= 0)
            return rc;
        a->t = row.time_ms;
        a->client = client_index(m, row.client, true);
        if (a->client < 0)
            return -ENOMEM;
        memcpy(a->dst, row.dst, 16);
        a->dport = row.dst_port;
        a->proto = row.proto;
        a->hold = row.duration_ms;
        return 1;
    }
    if (c->arrival == SIM_ARRIVAL_BURST && *burst_left > 0) {
        (*burst_left)--;
        a->t = prev_t;
    } else {
        double mean_gap = 1000.0 / c->rate;
        if (c->arrival == SIM_ARRIVAL_BURST) {
            mean_gap *= c->burst_size;
            *burst_left = c->burst_size - 1;
        }
        a->t = prev_t + sim_exp_sample(mean_gap, &m->rng);
    }
    a->client = (long)sim_rng_below(&m->rng, c->subscribers);
    pick_dest(m, a);
    a->proto =
        (c->udp_share > 0 && sim_rng_unit(&m->rng) < c->udp_share) ? NAT_PROTO_UDP : NAT_PROTO_TCP;
    a->hold = sim_dist_sample(&c->hold, &m->rng);
    return 1;
}

/* ---- the summary's theory ------------------------------------------------------------ */

static void erlang_reference(const struct sim_model_config *c, struct sim_model_result *r)
{
    r->offered_load = c->arrival == SIM_ARRIVAL_TRACE ? -1 : c->rate * c->hold.mean_ms / 1000.0;
    r->servers = (uint64_t)c->nat.port_hi - c->nat.port_lo + 1;
    r->groups = c->nat.mapping == NAT_MAPPING_EIM   ? 1
                : c->nat.mapping == NAT_MAPPING_ADM ? c->dest_ips
                                                    : c->dest_ips * c->dest_ports;
    r->erlang_b = -1;
    r->erlang_b_why = NULL;
    if (c->arrival != SIM_ARRIVAL_POISSON)
        r->erlang_b_why = "arrivals are not Poisson";
    else if (c->close_mode != SIM_CLOSE_EXACT)
        r->erlang_b_why = "sessions linger after departure (--close linger)";
    else if (c->nat.reuse_delay_ms != 0)
        r->erlang_b_why = "released ports wait out a reuse delay";
    else if (c->nat.policy == NAT_POLICY_BLOCK)
        r->erlang_b_why = "port-block allocation";
    else if (c->nat.per_client_limit != 0 || c->nat.max_sessions != 0)
        r->erlang_b_why = "a quota or table limit";
    else if (c->nat.n_ips != 1)
        r->erlang_b_why = "more than one external IP (paired pooling)";
    else if (c->udp_share > 0 && c->udp_share < 1)
        r->erlang_b_why = "TCP and UDP mixed (two pools)";
    else if (r->groups > 1 && c->dest_pick != SIM_DEST_RANDOM)
        r->erlang_b_why = "round-robin destinations (arrivals per destination not Poisson)";
    if (r->erlang_b_why == NULL)
        r->erlang_b = sim_erlang_b(r->servers, r->offered_load / r->groups);
}

static void batch_stats(struct model *m)
{
    struct sim_model_result *r = m->res;
    size_t full = r->counted / MODEL_BLOCK; /* complete blocks */
    size_t per, b;
    double v[MODEL_BATCHES], mean;

    r->ci95 = r->ci99 = INFINITY;
    r->batches = 0;
    r->p_refuse = r->counted ? (double)r->counted_refused / (double)r->counted : NAN;
    r->p_refuse_upper95 = NAN;
    if (r->counted > 0 && r->counted_refused == 0) {
        /* Batch means of all zeros give an interval of width 0, which claims
         * too much: with none refused out of n, P < 3/n at 95% (the rule of
         * three) is what the run shows. */
        r->p_refuse_upper95 = 3.0 / (double)r->counted;
        return;
    }
    if (full < 2)
        return;
    b = full < MODEL_BATCHES ? full : MODEL_BATCHES;
    per = full / b;
    for (size_t i = 0; i < b; i++) {
        uint64_t sum = 0;
        for (size_t j = 0; j < per; j++)
            sum += m->blocks[i * per + j];
        v[i] = (double)sum / (double)(per * MODEL_BLOCK);
    }
    sim_batch_ci(v, b, 0.95, &mean, &r->ci95);
    sim_batch_ci(v, b, 0.99, &mean, &r->ci99);
    r->batches = (unsigned)b;
}

/* ---- the run ---------------------------------------------------------------------- */

void sim_model_config_default(struct sim_model_config *c)
{
    memset(c, 0, sizeof(*c));
    nat_config_default(&c->nat);
    c->nat.port_lo = 1024;
    c->nat.port_hi = 65535;
    c->nat.reuse_delay_ms = 0;
    c->nat.n_ips = 1;
    nat_addr_parse(&c->nat.ips[0], "203.0.113.1");
    c->subscribers = 1000;
    c->arrival = SIM_ARRIVAL_POISSON;
    c->rate = 100;
    c->burst_size = 10;
    c->hold.kind = SIM_DIST_EXP;
    c->hold.mean_ms = 60000;
    c->hold.alpha = 1.5;
    c->dest_ips = 1;
    c->dest_ports = 1;
    c->max_flows = 100000;
    c->sample_ms = 1000;
    c->seed = 1;
}

static int check_config(const struct sim_model_config *c, char *err, size_t errlen)
{
    if (c->arrival != SIM_ARRIVAL_TRACE) {
        if (!(c->rate > 0)) {
            snprintf(err, errlen, "the arrival rate must be > 0");
            return -EINVAL;
        }
        if (c->subscribers == 0 || c->subscribers > (1u << 22)) {
            snprintf(err, errlen, "subscribers must be 1-%u", 1u << 22);
            return -EINVAL;
        }
        if (c->arrival == SIM_ARRIVAL_BURST && c->burst_size == 0) {
            snprintf(err, errlen, "the burst size must be >= 1");
            return -EINVAL;
        }
    } else if (c->trace == NULL) {
        snprintf(err, errlen, "no trace to read");
        return -EINVAL;
    }
    if (c->dest_ips == 0 || c->dest_ports == 0 || c->dest_ips > 65536 ||
        c->dest_ports > 65535 - MODEL_DEST_PORT) {
        snprintf(err, errlen, "destinations: 1-65536 IPs and 1-%u ports", 65535 - MODEL_DEST_PORT);
        return -EINVAL;
    }
    if (c->arrival != SIM_ARRIVAL_TRACE && c->max_flows == 0 && c->duration_ms <= 0) {
        snprintf(err, errlen, "give a number of flows or a duration, or both");
        return -EINVAL;
    }
    if (!(c->sample_ms >= 1)) {
        snprintf(err, errlen, "the sample interval must be at least 1 ms");
        return -EINVAL;
    }
    if (c->udp_share < 0 || c->udp_share > 1) {
        snprintf(err, errlen, "the UDP share must be within 0..1");
        return -EINVAL;
    }
    return 0;
}

static void model_free(struct model *m)
{
    nat_table_free(m->nat);
    free(m->heap);
    free(m->cl);
    free(m->next_port);
    free(m->map);
    free(m->hist);
    free(m->blocks);
    free(m->port_refs);
}

int sim_model_run(const struct sim_model_config *c, sim_sample_fn on_sample, void *arg,
                  struct sim_model_result *res, struct sim_model_client **clients,
                  size_t *n_clients, char *err, size_t errlen)
{
    struct model m;
    struct sim_model_result r;
    struct arrival a;
    uint32_t burst_left = 0;
    uint64_t last_refused = 0;
    double next_sample = 0, t_end = 0, wall0 = sim_now_ms();
    uint64_t n_sampled = 0;
    int more, rc = 0;
    enum nat_err nrc;

    rc = check_config(c, err, errlen);
    if (rc < 0)
        return rc;
    memset(&m, 0, sizeof(m));
    memset(&r, 0, sizeof(r));
    m.c = c;
    m.res = &r;
    sim_rng_seed(&m.rng, c->seed);
    nrc = nat_table_new(&m.nat, &c->nat);
    if (nrc != NAT_OK) {
        snprintf(err, errlen, "libnat refused the configuration: %s", nat_strerror(nrc));
        return nrc == NAT_ERR_NOMEM ? -ENOMEM : -EINVAL;
    }
    m.port_refs = calloc(2 * (size_t)c->nat.n_ips * ((size_t)c->nat.port_hi - c->nat.port_lo + 1),
                         sizeof(*m.port_refs));
    if (m.port_refs == NULL) {
        rc = -ENOMEM;
        snprintf(err, errlen, "out of memory");
        goto out_free;
    }
    nat_table_set_event_cb(m.nat, on_nat_event, &m);
    if (c->arrival != SIM_ARRIVAL_TRACE) {
        for (uint32_t i = 0; i < c->subscribers; i++) {
            uint8_t ip[16];
            sim_addr16_v4(ip, MODEL_SUBSCRIBER_BASE + i);
            if (client_index(&m, ip, true) < 0) {
                rc = -ENOMEM;
                goto out_free;
            }
        }
    }
    more = next_arrival(&m, 0, &burst_left, &a, err, errlen);
    for (;;) {
        double t_dep = m.heap_len ? m.heap[0].t : INFINITY;
        double t;

        if (more < 0) {
            rc = more;
            goto out_free;
        }
        if (more == 0)
            break;
        t = a.t < t_dep ? a.t : t_dep;
        if (c->duration_ms > 0 && t > c->duration_ms)
            break;
        while (next_sample <= t) {
            if (n_sampled >= SIM_MODEL_MAX_SAMPLES) {
                snprintf(err, errlen,
                         "more than %d samples at one per %g ms (events go on to %.0f s): "
                         "give a longer interval",
                         SIM_MODEL_MAX_SAMPLES, c->sample_ms, t / 1000.0);
                rc = -EINVAL;
                goto out_free;
            }
            take_sample(&m, next_sample, &last_refused, on_sample, arg);
            next_sample = (double)++n_sampled * c->sample_ms; /* no drift, no stall */
        }
        if (nat_next_expiry(m.nat) <= (uint64_t)t)
            nat_expire(m.nat, (uint64_t)t, 0);
        r.events++;
        t_end = t;
        if (t_dep <= a.t) {
            struct heap_ent e;
            heap_pop(&m, &e);
            rc = depart(&m, &e);
        } else {
            rc = arrive(&m, a.t, a.client, a.dst, a.dport, a.proto, a.hold);
            if (rc == 0)
                more = next_arrival(&m, a.t, &burst_left, &a, err, errlen);
        }
        if (rc < 0 || m.oom) {
            rc = -ENOMEM;
            snprintf(err, errlen, "out of memory");
            goto out_free;
        }
    }
    if (c->duration_ms > 0 && more != 0)
        t_end = c->duration_ms;
    take_sample(&m, t_end, &last_refused, on_sample, arg);
    r.end_ms = t_end;
    r.ports_total = (uint64_t)c->nat.n_ips * ((uint64_t)c->nat.port_hi - c->nat.port_lo + 1);
    r.clients = m.n_cl;
    erlang_reference(c, &r);
    batch_stats(&m);
    r.wall_ms = sim_now_ms() - wall0;
    if (clients != NULL) {
        *clients = m.cl;
        *n_clients = m.n_cl;
        m.cl = NULL;
    }
    *res = r;
out_free:
    model_free(&m);
    return rc;
}
