/*
 * bench_nat.c - libnat speed and memory: allocate+release per second,
 * lookups per second (inside and outside) with 1 M live sessions, bytes per
 * session with both indexes, and allocation speed when the pool is 99% full.
 * Prints one line per figure; see bench/RESULTS.md for recorded numbers.
 *
 * usage: bench_nat [-n LIVE] [-s CPU_SECONDS_PER_FIGURE] [-o churn|full|live]
 */
#include "nat/nat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/*
 * Rates are per second of this process's CPU time (CLOCK_PROCESS_CPUTIME_ID):
 * the machine is shared, and wall time would count the time other processes
 * held the core. Loops run until `secs` of CPU time have passed.
 */
static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rng = 88172645463325252ULL;

static uint64_t xr(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Resident set size in bytes (/proc/self/statm), 0 when unknown. */
static size_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, res = 0;

    if (f == NULL)
        return 0;
    if (fscanf(f, "%lu %lu", &size, &res) != 2)
        res = 0;
    fclose(f);
    return res * (size_t)sysconf(_SC_PAGESIZE);
}

/* Flow number i: client 10.a.b.c (64 ports per client IP), one of 8 backends. */
static struct nat_key flow_key(uint32_t i, uint8_t proto)
{
    struct nat_key k;
    uint32_t cip = 0x0a000000u + (i >> 6);

    memset(&k, 0, sizeof(k));
    k.proto = proto;
    k.client.addr = nat_addr_from_v4(__builtin_bswap32(cip));
    k.client.port = (uint16_t)(10000 + (i & 63));
    k.dst.addr = nat_addr_from_v4(__builtin_bswap32(0xc0000200u + (i % 8)));
    k.dst.port = 80;
    return k;
}

static void die(const char *what, enum nat_err e)
{
    fprintf(stderr, "bench_nat: %s: %s\n", what, nat_strerror(e));
    exit(1);
}

static struct nat_table *make(enum nat_policy p, enum nat_mapping m, unsigned n_ips, uint16_t lo,
                              uint16_t hi, uint32_t max_sessions)
{
    struct nat_config c;
    struct nat_table *t;
    enum nat_err e;

    nat_config_default(&c);
    c.policy = p;
    c.mapping = m;
    c.n_ips = n_ips;
    for (unsigned i = 0; i < n_ips; i++)
        c.ips[i] = nat_addr_from_v4(__builtin_bswap32(0xc6336401u + i)); /* 198.51.100.1+ */
    c.port_lo = lo;
    c.port_hi = hi;
    c.reuse_delay_ms = 0;
    c.max_sessions = max_sessions;
    c.seed = 1;
    e = nat_table_new(&t, &c);
    if (e != NAT_OK)
        die("nat_table_new", e);
    return t;
}

/* Steady churn: `window` live sessions, each step closes the oldest and opens
 * a new one, over 4 x window distinct keys (made beforehand). Returns pairs
 * per second of CPU time. */
static double churn(struct nat_table *t, uint32_t base, uint32_t window, double secs)
{
    struct nat_session **ring = calloc(window, sizeof(*ring));
    uint32_t nkeys = 4 * window;
    struct nat_key *keys = malloc(nkeys * sizeof(*keys));
    uint64_t pairs = 0, i = 0, clock_ms = 1;
    double t0, el;

    for (uint32_t j = 0; j < nkeys; j++)
        keys[j] = flow_key(base + j, NAT_PROTO_TCP);
    for (uint32_t w = 0; w < window; w++) {
        enum nat_err e = nat_session_open(t, &keys[i++ % nkeys], 0, clock_ms, &ring[w]);

        if (e != NAT_OK)
            die("churn fill", e);
    }
    t0 = now_s();
    do {
        for (int b = 0; b < 4096; b++) {
            uint32_t w = (uint32_t)(i % window);
            enum nat_err e;

            nat_session_close(t, ring[w], clock_ms, "client_fin");
            e = nat_session_open(t, &keys[i % nkeys], 0, clock_ms, &ring[w]);
            if (e != NAT_OK)
                die("churn open", e);
            i++;
            pairs++;
        }
        el = now_s() - t0;
    } while (el < secs);
    for (uint32_t w = 0; w < window; w++)
        nat_session_close(t, ring[w], clock_ms, "flush");
    free(ring);
    free(keys);
    return (double)pairs / el;
}

/* Runs `body` over all `live` inputs until `secs` of CPU time have passed;
 * prints the rate. */
#define TIMED(label, mapping, live, secs, body)                                                    \
    do {                                                                                           \
        uint64_t n_ = 0;                                                                           \
        double t0_ = now_s(), el_;                                                                 \
        found = 0;                                                                                 \
        do {                                                                                       \
            body;                                                                                  \
            n_ += (live);                                                                          \
            el_ = now_s() - t0_;                                                                   \
        } while (el_ < (secs));                                                                    \
        printf("%s: %s (%u live): %.2f M lookups/s (%llu of %llu found)\n",                        \
               nat_mapping_name(mapping), label, (live), n_ / el_ / 1e6,                           \
               (unsigned long long)found, (unsigned long long)n_);                                 \
    } while (0)

static void bench_live(uint32_t live, double secs, enum nat_mapping mapping)
{
    /* eim: 19 IPs x 64512 ports = 1.2 M external ports for 1 M flows (the
     * flows of a client IP arrive in random order and all go to its paired
     * IP, so each IP needs some headroom); apdm: 16 IPs x the default 12768
     * ports, each port reused toward the 8 backends (1.6 M flows of room). */
    unsigned n_ips = mapping == NAT_MAPPING_EIM ? live / 55000 + 1 : 16;
    uint16_t lo = mapping == NAT_MAPPING_EIM ? 1024 : 20000;
    uint16_t hi = mapping == NAT_MAPPING_EIM ? 65535 : 32767;
    /* inputs, in a random order but laid out in the order they are used, so
     * the benchmark's own reads are sequential */
    struct nat_key *keys = calloc(live, sizeof(*keys)), *miss = calloc(live, sizeof(*miss));
    struct nat_outside_key *outs = calloc(live, sizeof(*outs));
    struct nat_session **res = calloc(live, sizeof(*res));
    uint32_t *order = calloc(live, sizeof(*order));
    size_t rss0, rss1;
    struct nat_table *t;
    struct nat_stats st;
    double t0, fill_rate;
    uint64_t found;

    if (n_ips > NAT_MAX_IPS)
        n_ips = NAT_MAX_IPS;
    for (uint32_t i = 0; i < live; i++)
        order[i] = i;
    for (uint32_t i = live - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(xr() % (i + 1)), x = order[i];

        order[i] = order[j];
        order[j] = x;
    }
    for (uint32_t i = 0; i < live; i++) {
        keys[i] = flow_key(order[i], NAT_PROTO_TCP);
        miss[i] = keys[i];
        miss[i].client.port ^= 0x8000;
        res[i] = NULL;
    }
    memset(outs, 0, live * sizeof(*outs));
    t = make(NAT_POLICY_RANDOM, mapping, n_ips, lo, hi, 0);
    rss0 = rss_bytes();
    t0 = now_s();
    for (uint32_t i = 0; i < live; i++) {
        struct nat_session *s;
        enum nat_err e = nat_session_open(t, &keys[i], 0, 1, &s);

        if (e != NAT_OK)
            die("fill", e);
        outs[i] = (struct nat_outside_key){NAT_PROTO_TCP, s->ext, s->key.dst};
    }
    fill_rate = live / (now_s() - t0);
    rss1 = rss_bytes();
    nat_get_stats(t, &st);
    printf("%s: %u live sessions on %u IPs x %u ports (%.1f%% of ports in use), filled at "
           "%.2f M opens/s\n",
           nat_mapping_name(mapping), live, n_ips, hi - lo + 1u,
           100.0 * (double)st.ports_in_use / (double)st.ports_total, fill_rate / 1e6);
    printf("%s: memory: nat_stats.memory_bytes %.1f bytes/session; resident set grew by "
           "%.1f bytes/session\n",
           nat_mapping_name(mapping), (double)st.memory_bytes / live, (double)(rss1 - rss0) / live);
    /* keys were opened in this order: look them up in another one */
    for (uint32_t i = live - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(xr() % (i + 1));
        struct nat_key k = keys[i];
        struct nat_outside_key o = outs[i];

        keys[i] = keys[j];
        keys[j] = k;
        outs[i] = outs[j];
        outs[j] = o;
    }

    TIMED("lookup inside, one call each", mapping, live, secs, {
        for (uint32_t i = 0; i < live; i++)
            found += nat_lookup_inside(t, &keys[i]) != NULL;
    });
    TIMED("lookup outside, one call each", mapping, live, secs, {
        for (uint32_t i = 0; i < live; i++)
            found += nat_lookup_outside(t, outs[i].proto, &outs[i].ext, &outs[i].dst) != NULL;
    });
    TIMED("lookup inside, misses, one call each", mapping, live, secs, {
        for (uint32_t i = 0; i < live; i++)
            found += nat_lookup_inside(t, &miss[i]) != NULL;
    });
    TIMED("lookup inside, nat_lookup_inside_many by 256", mapping, live, secs, {
        for (uint32_t i = 0; i < live; i += 256)
            found += nat_lookup_inside_many(t, keys + i, live - i < 256 ? live - i : 256, res + i);
    });
    TIMED("lookup outside, nat_lookup_outside_many by 256", mapping, live, secs, {
        for (uint32_t i = 0; i < live; i += 256)
            found += nat_lookup_outside_many(t, outs + i, live - i < 256 ? live - i : 256, res + i);
    });
    printf("%s: alloc+release with %u live (tcp, other keys): %.2f M pairs/s\n",
           nat_mapping_name(mapping), live, churn(t, 0x40000000u, 4096, secs) / 1e6);
    t0 = now_s();
    nat_table_free(t);
    printf("%s: nat_table_free of %u sessions: %.0f ms of CPU\n", nat_mapping_name(mapping), live,
           (now_s() - t0) * 1e3);
    free(keys);
    free(miss);
    free(outs);
    free(res);
    free(order);
}

/* Allocation when `full` of the pool is held: close a random live one, open a
 * new one. 1 IP x the default 12768 ports, eim. Keys are made beforehand. */
static void bench_full(double full, double secs, enum nat_policy p)
{
    struct nat_table *t = make(p, NAT_MAPPING_EIM, 1, 20000, 32767, 0);
    uint32_t cap = 32767 - 20000 + 1, live = (uint32_t)(cap * full), nkeys = 16 * live;
    struct nat_session **s = calloc(live, sizeof(*s));
    struct nat_key *keys = malloc(nkeys * sizeof(*keys));
    uint32_t *victim = malloc(65536 * sizeof(*victim));
    uint64_t pairs = 0, next = live;
    double t0, el;

    for (uint32_t i = 0; i < nkeys; i++)
        keys[i] = flow_key(i, NAT_PROTO_UDP);
    for (uint32_t i = 0; i < 65536; i++)
        victim[i] = (uint32_t)(xr() % live);
    for (uint32_t i = 0; i < live; i++) {
        enum nat_err e = nat_session_open(t, &keys[i], 0, 1, &s[i]);

        if (e != NAT_OK)
            die("fill", e);
    }
    t0 = now_s();
    do {
        for (int b = 0; b < 4096; b++) {
            uint32_t v = victim[pairs & 65535];
            enum nat_err e;

            nat_session_close(t, s[v], 1, "client_fin");
            do /* a key still live from long ago: take the next one */
                e = nat_session_open(t, &keys[next++ % nkeys], 0, 1, &s[v]);
            while (e == NAT_ERR_EXISTS);
            if (e != NAT_OK)
                die("open at full", e);
            pairs++;
        }
        el = now_s() - t0;
    } while (el < secs);
    printf("pool %.0f%% full (%u of %u ports, %s): %.2f M alloc+release/s\n", full * 100, live, cap,
           nat_policy_name(p), pairs / el / 1e6);
    nat_table_free(t);
    free(s);
    free(keys);
    free(victim);
}

int main(int argc, char **argv)
{
    uint32_t live = 1000000;
    double secs = 1.0;
    const char *only = "";
    int opt;

    while ((opt = getopt(argc, argv, "n:s:o:")) != -1) {
        switch (opt) {
        case 'o':
            only = optarg;
            break;
        case 'n':
            live = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 's':
            secs = strtod(optarg, NULL);
            break;
        default:
            fprintf(stderr, "usage: bench_nat [-n LIVE] [-s SECONDS] [-o churn|full|live]\n");
            return 2;
        }
    }
    if (live < 1000 || live > 4000000) {
        fprintf(stderr, "bench_nat: -n between 1000 and 4000000\n");
        return 2;
    }
    if (only[0] == '\0' || strcmp(only, "churn") == 0) {
        struct nat_table *t = make(NAT_POLICY_RANDOM, NAT_MAPPING_EIM, 1, 20000, 32767, 0);

        printf("alloc+release, small table (4096 live, eim, random): %.2f M pairs/s\n",
               churn(t, 0, 4096, secs) / 1e6);
        nat_table_free(t);
    }
    if (only[0] == '\0' || strcmp(only, "full") == 0) {
        bench_full(0.99, secs, NAT_POLICY_RANDOM);
        bench_full(0.99, secs, NAT_POLICY_SEQUENTIAL);
        bench_full(0.99, secs, NAT_POLICY_PRESERVE);
    }
    if (only[0] == '\0' || strcmp(only, "live") == 0) {
        bench_live(live, secs, NAT_MAPPING_EIM);
        bench_live(live, secs, NAT_MAPPING_APDM);
    }
    return 0;
}
