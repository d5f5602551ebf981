/*
 * sim_model_test.c - the model checked against theory: Erlang-B loss with
 * Poisson arrivals on N ports, APDM carrying D times EIM's flows, port-block
 * allocation giving 64512/R ports per client, determinism, bad configs.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim/sim_dist.h"
#include "sim/sim_model.h"
#include "sim/sim_util.h"

/* Pure loss system: exact close at departure, no reuse delay, timeouts far
 * longer than any flow, one external IP, one destination. */
static void erlang_config(struct sim_model_config *c, unsigned n, double load, uint64_t flows)
{
    sim_model_config_default(c);
    c->nat.port_lo = 26000;
    c->nat.port_hi = (uint16_t)(26000 + n - 1);
    c->nat.reuse_delay_ms = 0;
    c->close_mode = SIM_CLOSE_EXACT;
    c->hold.kind = SIM_DIST_EXP;
    c->hold.mean_ms = 1000;
    c->rate = load; /* per second with a 1 s mean hold: A = rate */
    c->max_flows = flows;
    c->warmup_flows = 2000;
    c->sample_ms = 60000;
    c->subscribers = 500;
    c->seed = 12345;
}

static void check_erlang(unsigned n, double load)
{
    struct sim_model_config c;
    struct sim_model_result r;
    char err[256];
    double b = sim_erlang_b(n, load), tol;

    erlang_config(&c, n, load, 400000);
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &r, NULL, NULL, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(r.arrivals, 400000);
    cr_assert_eq(r.opened + r.refused_total, r.arrivals);
    cr_assert_eq(r.refused_total, r.refused[NAT_ERR_POOL_EXHAUSTED], "only pool exhaustion");
    cr_assert_eq(r.peak_ports_in_use, n, "the pool fills up");
    cr_assert_eq(r.batches, 20);
    cr_assert(r.erlang_b >= 0, "Erlang-B applies: %s", r.erlang_b_why ? r.erlang_b_why : "");
    cr_assert_float_eq(r.erlang_b, b, 1e-12);
    /* The 99% batch-means bound, floored at a 1% relative error so a lucky
     * tight interval cannot make a correct model fail on rounding. */
    tol = fmax(r.ci99, 0.01 * b);
    cr_assert_lt(r.ci99, 0.1 * b, "enough samples for a meaningful bound (ci99 %.5f)", r.ci99);
    cr_assert_float_eq(r.p_refuse, b, tol, "N=%u A=%.0f: measured %.5f, Erlang-B %.5f, +-%.5f", n,
                       load, r.p_refuse, b, tol);
}

Test(sim_model, erlang_b_n10_a8, .timeout = 120)
{
    check_erlang(10, 8);
}

Test(sim_model, erlang_b_n50_a45, .timeout = 120)
{
    check_erlang(50, 45);
}

Test(sim_model, erlang_b_n100_a110, .timeout = 120)
{
    check_erlang(100, 110);
}

Test(sim_model, erlang_b_holds_for_fixed_holding_times, .timeout = 120)
{
    /* Erlang-B is insensitive to the holding-time distribution beyond its mean. */
    struct sim_model_config c;
    struct sim_model_result r;
    char err[256];

    erlang_config(&c, 20, 18, 300000);
    c.hold.kind = SIM_DIST_FIXED;
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &r, NULL, NULL, err, sizeof(err)), 0, "%s", err);
    cr_assert_float_eq(r.p_refuse, sim_erlang_b(20, 18), fmax(r.ci99, 0.01 * r.erlang_b));
}

Test(sim_model, reuse_delay_breaks_erlang)
{
    /* With a reuse delay, ports are held longer than the flows: more refusals,
     * and the summary says Erlang-B does not apply. */
    struct sim_model_config c;
    struct sim_model_result r;
    char err[256];

    erlang_config(&c, 10, 8, 50000);
    c.nat.reuse_delay_ms = 1000;
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &r, NULL, NULL, err, sizeof(err)), 0, "%s", err);
    cr_assert_lt(r.erlang_b, 0);
    cr_assert_not_null(r.erlang_b_why);
    cr_assert_gt(r.p_refuse, sim_erlang_b(10, 8) + 0.05);
}

/* Flows that never end, sent round-robin to dest_ips x dest_ports
 * destinations: how many are carried before the first refusal. */
static uint64_t carried(enum nat_mapping m, unsigned dips, unsigned dports, enum nat_policy p)
{
    struct sim_model_config c;
    struct sim_model_result r;
    char err[256];

    sim_model_config_default(&c);
    c.nat.port_lo = 26100;
    c.nat.port_hi = 26131; /* 32 ports */
    c.nat.mapping = m;
    c.nat.policy = p;
    c.dest_ips = dips;
    c.dest_ports = dports;
    c.dest_pick = SIM_DEST_ROUND_ROBIN;
    c.hold.kind = SIM_DIST_FIXED;
    c.hold.mean_ms = 1e9;
    c.rate = 100;
    c.max_flows = 1000;
    c.subscribers = 10;
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &r, NULL, NULL, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(r.opened + r.refused[NAT_ERR_POOL_EXHAUSTED], 1000);
    cr_assert_eq(r.peak_ports_in_use, 32);
    return r.opened;
}

Test(sim_model, apdm_carries_d_times_eim)
{
    static const enum nat_policy pol[] = {NAT_POLICY_RANDOM, NAT_POLICY_SEQUENTIAL,
                                          NAT_POLICY_PRESERVE};
    for (size_t i = 0; i < 3; i++) {
        cr_assert_eq(carried(NAT_MAPPING_EIM, 1, 1, pol[i]), 32);
        cr_assert_eq(carried(NAT_MAPPING_EIM, 2, 3, pol[i]), 32, "EIM: one port per flow");
        cr_assert_eq(carried(NAT_MAPPING_APDM, 1, 1, pol[i]), 32);
        cr_assert_eq(carried(NAT_MAPPING_APDM, 1, 4, pol[i]), 4 * 32);
        cr_assert_eq(carried(NAT_MAPPING_APDM, 2, 3, pol[i]), 6 * 32);
        cr_assert_eq(carried(NAT_MAPPING_ADM, 2, 3, pol[i]), 2 * 32, "ADM: per address");
    }
}

/* Port-block allocation: R subscribers, one block each of 64512/R ports. */
static void check_blocks(unsigned ratio, unsigned want)
{
    struct sim_model_config c;
    struct sim_model_result r;
    struct sim_model_client *cl = NULL;
    size_t n = 0;
    char err[256];

    sim_model_config_default(&c);
    c.nat.port_lo = 1024;
    c.nat.port_hi = 65535; /* 64512 usable ports */
    c.nat.policy = NAT_POLICY_BLOCK;
    c.nat.block_size = 64512 / ratio;
    c.nat.max_blocks_per_client = 1;
    c.subscribers = ratio;
    c.hold.kind = SIM_DIST_FIXED;
    c.hold.mean_ms = 1e9;
    c.rate = 1000;
    c.max_flows = 64512 + 20000;
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &r, &cl, &n, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(n, ratio);
    cr_assert_eq(r.opened, 64512, "the whole pool is handed out");
    cr_assert_eq(r.peak_ports_per_client, want);
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(cl[i].peak, want, "client %zu got %u ports", i, cl[i].peak);
        cr_assert_eq(cl[i].opened, want);
        cr_assert_gt(cl[i].refused, 0, "client %zu was refused past its block", i);
    }
    cr_assert_eq(r.refused[NAT_ERR_CLIENT_QUOTA] + r.refused[NAT_ERR_POOL_EXHAUSTED], 20000);
    free(cl);
}

Test(sim_model, block_ratio_16_gives_4032)
{
    check_blocks(16, 4032);
}

Test(sim_model, block_ratio_64_gives_1008)
{
    check_blocks(64, 1008);
}

/* The log a run would write: every flow's open and end (and refusals), or
 * per block; a block hold longer than the gaps between a subscriber's flows
 * leaves one block per subscriber, taken once. */
Test(sim_model, log_rows_per_flow_and_per_block)
{
    struct sim_model_config c;
    struct sim_model_result r, held;
    char err[256];

    sim_model_config_default(&c);
    c.subscribers = 50;
    c.rate = 100; /* 2 flows/s per subscriber */
    c.hold.kind = SIM_DIST_EXP;
    c.hold.mean_ms = 100; /* mostly no flow live: blocks come and go */
    c.max_flows = 20000;
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &r, NULL, NULL, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(r.log_rows_flows, r.opened + r.closed + r.expired + r.refused_total);
    cr_assert_eq(r.block_allocs, 0);
    cr_assert_eq(r.log_rows_blocks, r.refused_total);

    c.nat.policy = NAT_POLICY_BLOCK;
    c.nat.block_size = 64;
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &r, NULL, NULL, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(r.log_rows_flows, r.opened + r.closed + r.expired + r.refused_total);
    /* each block taken is given back unless its client is live at the end */
    cr_assert_geq(r.log_rows_blocks, r.block_allocs + r.refused_total);
    cr_assert_leq(r.log_rows_blocks, 2 * r.block_allocs + r.refused_total);
    cr_assert_gt(r.block_allocs, 1000, "a block per burst of a subscriber's flows");
    cr_assert_leq(r.peak_blocks_in_use, 50);

    c.nat.block_hold_ms = 60000; /* far longer than a subscriber's gaps */
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &held, NULL, NULL, err, sizeof(err)), 0, "%s",
                 err);
    cr_assert_eq(held.opened, r.opened, "the hold changes the log, not what is carried");
    cr_assert_eq(held.block_allocs, 50, "one block per subscriber, kept");
    cr_assert_eq(held.log_rows_blocks, 50);
    cr_assert_eq(held.peak_blocks_in_use, 50);
}

static void count_sample(void *arg, const struct sim_model_sample *s)
{
    uint64_t *n = arg;

    (*n)++;
    cr_assert_leq(s->ports_in_use, 20, "10 TCP + 10 UDP ports: one pool per protocol");
    cr_assert_eq(s->tcp_ports_in_use + s->udp_ports_in_use, s->ports_in_use,
                 "the per-protocol counts add up to libnat's");
    cr_assert_leq(s->tcp_ports_in_use, 10);
    cr_assert_leq(s->udp_ports_in_use, 10);
    cr_assert_float_eq(s->tcp_pool_use, s->tcp_ports_in_use / 10.0, 1e-12);
    cr_assert_float_eq(s->udp_pool_use, s->udp_ports_in_use / 10.0, 1e-12);
    cr_assert_float_eq(s->pool_use, fmax(s->tcp_pool_use, s->udp_pool_use), 1e-12);
    cr_assert_leq(s->pool_use, 1.0, "each protocol against its own pool");
    cr_assert_leq(s->refused_interval, s->refused);
}

Test(sim_model, deterministic_and_sampled)
{
    struct sim_model_config c;
    struct sim_model_result a, b;
    uint64_t na = 0, nb = 0;
    char err[256];

    erlang_config(&c, 10, 8, 20000);
    c.sample_ms = 1000;
    c.udp_share = 0.5;
    c.hold.kind = SIM_DIST_PARETO;
    c.hold.alpha = 1.5;
    cr_assert_eq(sim_model_run(&c, count_sample, &na, &a, NULL, NULL, err, sizeof(err)), 0);
    cr_assert_eq(sim_model_run(&c, count_sample, &nb, &b, NULL, NULL, err, sizeof(err)), 0);
    cr_assert_eq(a.opened, b.opened);
    cr_assert_eq(a.refused_total, b.refused_total);
    cr_assert_eq(na, nb);
    cr_assert_eq(na, a.samples);
    /* 8 Erlangs, half TCP and half UDP, heavy-tailed holds, 10 ports per protocol:
     * in this seeded run each pool is full at some sample, and together they hold
     * more ports than one pool has */
    cr_assert_eq(a.peak_tcp_ports_in_use, 10);
    cr_assert_eq(a.peak_udp_ports_in_use, 10);
    cr_assert_gt(a.peak_ports_in_use, 10);
    /* one sample per virtual second from 0, plus the final one */
    cr_assert_eq(a.samples, (uint64_t)floor(a.end_ms / 1000.0) + 2);
    c.seed++;
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &b, NULL, NULL, err, sizeof(err)), 0);
    cr_assert_neq(a.opened, b.opened, "another seed, another run");
}

static struct sim_model_result run_short_flows(enum sim_close_mode mode)
{
    struct sim_model_config c;
    struct sim_model_result r;
    char err[256];

    /* 40 flows, about one a second, 100 ms each, on 5 ports: never more than
     * a couple at once. */
    erlang_config(&c, 5, 1, 40);
    c.warmup_flows = 0;
    c.close_mode = mode;
    c.hold.kind = SIM_DIST_FIXED;
    c.hold.mean_ms = 100;
    c.rate = 1;
    c.nat.timeout_ms[NAT_TIMEOUT_TCP_TRANSITORY] = 20000;
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &r, NULL, NULL, err, sizeof(err)), 0, "%s", err);
    return r;
}

Test(sim_model, linger_holds_ports_until_timeout)
{
    /* exact: the port goes back at the flow's end, nothing is refused.
     * linger: each port stays 20 s in CLOSING after its 100 ms flow, so 5
     * ports run out and sessions expire by the timer. */
    struct sim_model_result e = run_short_flows(SIM_CLOSE_EXACT);
    struct sim_model_result l = run_short_flows(SIM_CLOSE_LINGER);

    cr_assert_eq(e.refused_total, 0);
    cr_assert_eq(e.expired, 0);
    cr_assert_gt(l.refused[NAT_ERR_POOL_EXHAUSTED], 0);
    cr_assert_gt(l.expired, 0);
    cr_assert_eq(l.closed, 0, "linger never closes, the timer does");
    cr_assert_eq(l.peak_ports_in_use, 5);
}

Test(sim_model, trace_drives_arrivals)
{
    static const char trace[] = "time,client,proto,destination,duration\n"
                                "0,1,tcp,198.51.100.1:80,10\n"
                                "0.1,1,tcp,198.51.100.1:80,10\n"
                                "0.2,2,tcp,198.51.100.2:53,10\n"
                                "0.3,10.1.1.1,tcp,198.51.100.1:80,10\n"
                                "20,3,tcp,198.51.100.1:80,1\n";
    FILE *f = fmemopen((void *)(uintptr_t)trace, strlen(trace), "r");
    struct sim_trace_reader rd;
    struct sim_model_config c;
    struct sim_model_result r;
    char err[256];

    sim_model_config_default(&c);
    c.nat.port_lo = 26200;
    c.nat.port_hi = 26202; /* 3 ports: the 4th flow at 0.3 s is refused */
    c.arrival = SIM_ARRIVAL_TRACE;
    sim_trace_reader_init(&rd, f);
    c.trace = &rd;
    c.max_flows = 0;
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &r, NULL, NULL, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(r.arrivals, 5);
    cr_assert_eq(r.clients, 4);
    cr_assert_eq(r.refused[NAT_ERR_POOL_EXHAUSTED], 1);
    cr_assert_eq(r.opened, 4, "the last flow comes after the first three left");
    sim_trace_reader_free(&rd);
    fclose(f);
}

Test(sim_model, bad_trace_reports_line)
{
    static const char trace[] = "0,1,tcp,198.51.100.1:80,10\n0,1,icmp,198.51.100.1:80,10\n";
    FILE *f = fmemopen((void *)(uintptr_t)trace, strlen(trace), "r");
    struct sim_trace_reader rd;
    struct sim_model_config c;
    struct sim_model_result r;
    char err[256];

    sim_model_config_default(&c);
    c.arrival = SIM_ARRIVAL_TRACE;
    sim_trace_reader_init(&rd, f);
    c.trace = &rd;
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &r, NULL, NULL, err, sizeof(err)), -EINVAL);
    cr_assert(strncmp(err, "line 2:", 7) == 0, "%s", err);
    sim_trace_reader_free(&rd);
    fclose(f);
}

Test(sim_model, bad_config)
{
    struct sim_model_config c;
    struct sim_model_result r;
    char err[256];

    sim_model_config_default(&c);
    c.rate = 0;
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &r, NULL, NULL, err, sizeof(err)), -EINVAL);
    sim_model_config_default(&c);
    c.max_flows = 0;
    c.duration_ms = 0;
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &r, NULL, NULL, err, sizeof(err)), -EINVAL);
    sim_model_config_default(&c);
    c.nat.port_lo = 100;
    c.nat.port_hi = 50;
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &r, NULL, NULL, err, sizeof(err)), -EINVAL);
    sim_model_config_default(&c);
    c.arrival = SIM_ARRIVAL_TRACE;
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &r, NULL, NULL, err, sizeof(err)), -EINVAL);
}

Test(sim_model, bursts_refuse_more_than_poisson, .timeout = 120)
{
    /* Same mean rate, same pool: arrivals in bursts of 10 at one instant
     * overflow the pool far more often than Poisson arrivals do. */
    struct sim_model_config c;
    struct sim_model_result p, b;
    char err[256];

    erlang_config(&c, 20, 10, 100000);
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &p, NULL, NULL, err, sizeof(err)), 0, "%s", err);
    c.arrival = SIM_ARRIVAL_BURST;
    c.burst_size = 10;
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &b, NULL, NULL, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(b.arrivals, 100000);
    cr_assert_lt(b.erlang_b, 0, "Erlang-B does not apply to bursts");
    cr_assert_gt(b.p_refuse, 3 * p.p_refuse, "bursts %.4f vs Poisson %.4f", b.p_refuse, p.p_refuse);
    /* the mean rate is kept: the same number of arrivals takes about as long */
    cr_assert_float_eq(b.end_ms, p.end_ms, 0.05 * p.end_ms);
}

Test(sim_model, per_client_quota)
{
    /* 4 subscribers, a quota of 3 live mappings each, flows that never end:
     * 12 carried, the rest refused for client_quota while the pool has room. */
    struct sim_model_config c;
    struct sim_model_result r;
    struct sim_model_client *cl = NULL;
    size_t n = 0;
    char err[256];

    sim_model_config_default(&c);
    c.nat.port_lo = 26300;
    c.nat.port_hi = 26399;
    c.nat.per_client_limit = 3;
    c.subscribers = 4;
    c.hold.kind = SIM_DIST_FIXED;
    c.hold.mean_ms = 1e9;
    c.max_flows = 200;
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &r, &cl, &n, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(r.opened, 12);
    cr_assert_eq(r.refused[NAT_ERR_CLIENT_QUOTA], 188);
    cr_assert_eq(r.peak_ports_per_client, 3);
    cr_assert_lt(r.erlang_b, 0);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(cl[i].peak, 3);
    free(cl);
}

/* A burst that fills the pool between two samples is the peak: the peaks
 * are kept at every open, not read at sample times (one sample at 0 and one
 * at the end here, when the pool is empty both times). */
Test(sim_model, peak_between_samples_is_seen)
{
    struct sim_model_config c;
    struct sim_model_result r;
    char err[256];

    erlang_config(&c, 500, 1, 0);
    c.arrival = SIM_ARRIVAL_BURST;
    c.burst_size = 1000;
    c.rate = 100;
    c.hold.kind = SIM_DIST_FIXED;
    c.hold.mean_ms = 100;
    c.warmup_flows = 0;
    c.duration_ms = 60000;
    c.sample_ms = 5000;
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &r, NULL, NULL, err, sizeof(err)), 0, "%s", err);
    cr_assert_gt(r.refused[NAT_ERR_POOL_EXHAUSTED], 0);
    cr_assert_eq(r.peak_ports_in_use, 500, "the pool was full");
    cr_assert_eq(r.peak_tcp_ports_in_use + r.peak_udp_ports_in_use >= 500, true);
    cr_assert_eq(r.peak_active, 500);
}

/* A run that would take more than SIM_MODEL_MAX_SAMPLES samples fails at
 * once with a clear message, and a sub-millisecond interval is refused: no
 * run can loop for hours on its samples. */
Test(sim_model, samples_are_bounded)
{
    struct sim_model_config c;
    struct sim_model_result r;
    char err[256];

    erlang_config(&c, 100, 10, 0);
    c.rate = 1e-6;        /* an arrival every 11 virtual days: time jumps, */
    c.sample_ms = 1;      /* and 1 ms samples would be a billion per jump */
    c.duration_ms = 1e12;
    c.max_flows = 0;
    double t0 = sim_now_ms();
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &r, NULL, NULL, err, sizeof(err)), -EINVAL);
    cr_assert_not_null(strstr(err, "give a longer interval"), "%s", err);
    cr_assert_lt(sim_now_ms() - t0, 20000.0);
    erlang_config(&c, 100, 10, 1000);
    c.sample_ms = 0.5;
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &r, NULL, NULL, err, sizeof(err)), -EINVAL);
    cr_assert_not_null(strstr(err, "at least 1 ms"), "%s", err);
}

/* One subscriber near its 28,232 local ports: a busy local port is skipped
 * over the whole range, and an arrival that finds none is counted as not
 * offered, never as a NAT refusal (the pool here has room for all). */
Test(sim_model, client_port_collisions_are_not_nat_refusals, .timeout = 120)
{
    struct sim_model_config c;
    struct sim_model_result r;
    char err[256];

    erlang_config(&c, 64512, 27000, 200000);
    c.nat.port_lo = 1024;
    c.nat.port_hi = 65535;
    c.subscribers = 1;
    c.warmup_flows = 50000;
    cr_assert_eq(sim_model_run(&c, NULL, NULL, &r, NULL, NULL, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(r.refused_total, 0, "%llu refused (exists %llu)",
                 (unsigned long long)r.refused_total,
                 (unsigned long long)r.refused[NAT_ERR_EXISTS]);
    cr_assert_eq(r.opened + r.client_ports_busy, r.arrivals);
    /* none refused: the rule of three instead of a zero-width interval */
    cr_assert_eq(r.p_refuse, 0.0);
    cr_assert(!isfinite(r.ci95));
    cr_assert_float_eq(r.p_refuse_upper95, 3.0 / (double)r.counted, 1e-12);
}
