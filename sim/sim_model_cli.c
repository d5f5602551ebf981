/*
 * sim_model_cli.c - `gwsim model`: options into a sim_model_config, the run,
 * then the CSV time series, the per-client CSV, the SVG and the summary.
 */
#include "sim/sim_model_cli.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "nat/nat.h"
#include "sim/sim_model.h"
#include "sim/sim_svg.h"
#include "sim/sim_util.h"

#define SVG_MAX_POINTS 20000 /* samples the chart keeps at most (then thinned) */

struct cli {
    struct sim_model_config c;
    const char *csv_path, *clients_csv_path, *svg_path, *trace_path;
    bool json, quiet;
    bool interval_set, flows_set;
    bool summary_to_stderr; /* an output file is stdout */
    size_t svg_stride, n_seen; /* the chart keeps one sample in svg_stride */
    double load; /* Erlangs; 0 = use the rate */
    FILE *csv;
    struct sim_model_sample *samples; /* owned, for the SVG */
    size_t n_samples, cap_samples;
    int oom;
};

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: gwsim model [OPTIONS]\n"
        "The NAT engine (libnat) in virtual time: no sockets, deterministic for a --seed.\n"
        "Traffic:\n"
        "  --subscribers N       client IPs 100.64.0.0+i (default 1000)\n"
        "  --arrival KIND        poisson (default) | burst:SIZE | trace:FILE\n"
        "  --rate R              mean arrivals per virtual second (default 100)\n"
        "  --load A              offered load in Erlangs instead of --rate (rate = A / mean hold)\n"
        "  --hold DIST           exp:MEAN (default exp:60s) | fixed:MEAN | pareto:MEAN[:ALPHA]\n"
        "  --dest-ips N          destination addresses 198.18.0.0+i (default 1)\n"
        "  --dest-ports N        destination ports 443+j per address (default 1)\n"
        "  --dest-pick P         random (default) | rr\n"
        "  --udp-share F         fraction of flows that are UDP, 0..1 (default 0)\n"
        "  --flows N             stop after N arrivals (default 100000; 0 = no limit)\n"
        "  --duration T          stop at virtual time T (e.g. 1h; default none)\n"
        "  --warmup N            leave the first N arrivals out of the refusal statistics\n"
        "NAT (libnat):\n"
        "  --nat-ips N           external IPs 203.0.113.1.. (default 1); pool = ips x ports\n"
        "  --nat-ports LO-HI     external port range (default 1024-65535)\n"
        "  --nat-policy P        sequential | random (default) | preserve | block\n"
        "  --nat-mapping M       eim (default) | adm | apdm\n"
        "  --block-size N        ports per block for block (default 64)\n"
        "  --max-blocks N        blocks per client for block (default 0 = any)\n"
        "  --block-hold T        a client with no mapping left keeps its blocks T (default 0)\n"
        "  --sharing-ratio R     block with block-size = pool ports / R and one block each\n"
        "  --per-client-limit N  live mappings per client IP (default 0 = none)\n"
        "  --max-sessions N      live mappings in the table (default 0 = none)\n"
        "  --reuse-delay T       a released port waits T (default 0)\n"
        "  --timeout-udp T, --timeout-tcp-est T, --timeout-tcp-trans T  (default 300s/7440s/240s)\n"
        "  --close MODE          exact (default: the mapping goes at the flow's end) |\n"
        "                        linger (TCP waits the transitory timeout, UDP the udp timeout)\n"
        "Output:\n"
        "  --seed S              random seed (default 1)\n"
        "  --interval T          time between samples (default: 1s, or the expected run / 1000)\n"
        "  --csv FILE            time series as CSV ('-' = stdout)\n"
        "  --clients-csv FILE    per-client ports and refusals as CSV\n"
        "  --svg FILE            the chart, a standalone SVG\n"
        "  --json                summary as JSON instead of text\n"
        "Erlang-B applies with Poisson arrivals, --close exact, --reuse-delay 0, one NAT IP,\n"
        "no quotas, not block: then refusals ~= B(ports, load / destination groups).\n");
}

static void on_sample(void *arg, const struct sim_model_sample *s)
{
    struct cli *cli = arg;

    if (cli->csv != NULL)
        fprintf(cli->csv,
                "%.3f,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%.6f,%.6f,%.6f,%llu,%llu,%.3f\n",
                s->t_ms / 1000.0, (unsigned long long)s->arrivals, (unsigned long long)s->opened,
                (unsigned long long)s->refused, (unsigned long long)s->refused_interval,
                (unsigned long long)s->active, (unsigned long long)s->ports_in_use,
                (unsigned long long)s->tcp_ports_in_use, (unsigned long long)s->udp_ports_in_use,
                (unsigned long long)s->ports_cooling, s->pool_use, s->tcp_pool_use, s->udp_pool_use,
                (unsigned long long)s->clients_active, (unsigned long long)s->ports_per_client_max,
                s->ports_per_client_mean);
    if (cli->svg_path != NULL && !cli->oom && cli->n_seen++ % cli->svg_stride == 0) {
        if (cli->n_samples == SVG_MAX_POINTS) {
            /* A long run: keep every other point, and from now on one in
             * twice as many. The chart's memory stays bounded. */
            for (size_t i = 0; i < SVG_MAX_POINTS / 2; i++)
                cli->samples[i] = cli->samples[2 * i];
            cli->n_samples = SVG_MAX_POINTS / 2;
            cli->svg_stride *= 2;
            if ((cli->n_seen - 1) % cli->svg_stride != 0)
                return;
        }
        if (cli->n_samples == cli->cap_samples) {
            size_t nc = cli->cap_samples ? cli->cap_samples * 2 : 1024;
            struct sim_model_sample *ns = realloc(cli->samples, nc * sizeof(*ns));
            if (ns == NULL) {
                cli->oom = 1;
                return;
            }
            cli->samples = ns;
            cli->cap_samples = nc;
        }
        cli->samples[cli->n_samples++] = *s;
    }
}

static int bad(const char *opt, const char *val, const char *why)
{
    fprintf(stderr, "gwsim model: %s%s: '%s': %s\n", opt[0] == '-' ? "" : "--", opt, val, why);
    return 2;
}

static int parse_args(struct cli *cli, int argc, char **argv)
{
    enum {
        O_SUBS = 256,
        O_ARRIVAL,
        O_RATE,
        O_LOAD,
        O_HOLD,
        O_DIPS,
        O_DPORTS,
        O_DPICK,
        O_UDP,
        O_FLOWS,
        O_DURATION,
        O_WARMUP,
        O_NIPS,
        O_NPORTS,
        O_POLICY,
        O_MAPPING,
        O_BLOCK,
        O_MAXBLOCKS,
        O_BHOLD,
        O_RATIO,
        O_PCL,
        O_MAXSESS,
        O_REUSE,
        O_TUDP,
        O_TEST,
        O_TTRANS,
        O_CLOSE,
        O_SEED,
        O_INTERVAL,
        O_CSV,
        O_CCSV,
        O_SVG,
        O_JSON,
        O_HELP,
    };
    static const struct option lo[] = {
        {"subscribers", 1, NULL, O_SUBS},
        {"arrival", 1, NULL, O_ARRIVAL},
        {"rate", 1, NULL, O_RATE},
        {"load", 1, NULL, O_LOAD},
        {"hold", 1, NULL, O_HOLD},
        {"dest-ips", 1, NULL, O_DIPS},
        {"dest-ports", 1, NULL, O_DPORTS},
        {"dest-pick", 1, NULL, O_DPICK},
        {"udp-share", 1, NULL, O_UDP},
        {"flows", 1, NULL, O_FLOWS},
        {"duration", 1, NULL, O_DURATION},
        {"warmup", 1, NULL, O_WARMUP},
        {"nat-ips", 1, NULL, O_NIPS},
        {"nat-ports", 1, NULL, O_NPORTS},
        {"nat-policy", 1, NULL, O_POLICY},
        {"nat-mapping", 1, NULL, O_MAPPING},
        {"block-size", 1, NULL, O_BLOCK},
        {"max-blocks", 1, NULL, O_MAXBLOCKS},
        {"block-hold", 1, NULL, O_BHOLD},
        {"sharing-ratio", 1, NULL, O_RATIO},
        {"per-client-limit", 1, NULL, O_PCL},
        {"max-sessions", 1, NULL, O_MAXSESS},
        {"reuse-delay", 1, NULL, O_REUSE},
        {"timeout-udp", 1, NULL, O_TUDP},
        {"timeout-tcp-est", 1, NULL, O_TEST},
        {"timeout-tcp-trans", 1, NULL, O_TTRANS},
        {"close", 1, NULL, O_CLOSE},
        {"seed", 1, NULL, O_SEED},
        {"interval", 1, NULL, O_INTERVAL},
        {"csv", 1, NULL, O_CSV},
        {"clients-csv", 1, NULL, O_CCSV},
        {"svg", 1, NULL, O_SVG},
        {"json", 0, NULL, O_JSON},
        {"help", 0, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    struct sim_model_config *c = &cli->c;
    uint64_t ratio = 0, v;
    double d;
    char err[256];
    int ch, idx;

    optind = 1;
    while ((ch = getopt_long(argc, argv, "h", lo, &idx)) != -1) {
        const char *name = ch >= 256 && ch != '?' ? lo[idx].name : "";
        switch (ch) {
        case O_SUBS:
            if (sim_parse_u64(optarg, 1, 1u << 22, &v) < 0)
                return bad("--subscribers", optarg, "expected 1-4194304");
            c->subscribers = (uint32_t)v;
            break;
        case O_ARRIVAL:
            if (strcmp(optarg, "poisson") == 0) {
                c->arrival = SIM_ARRIVAL_POISSON;
            } else if (strncmp(optarg, "burst:", 6) == 0) {
                if (sim_parse_u64(optarg + 6, 1, 1000000, &v) < 0)
                    return bad("--arrival", optarg, "burst:SIZE with SIZE 1-1000000");
                c->arrival = SIM_ARRIVAL_BURST;
                c->burst_size = (uint32_t)v;
            } else if (strncmp(optarg, "trace:", 6) == 0 && optarg[6] != '\0') {
                c->arrival = SIM_ARRIVAL_TRACE;
                cli->trace_path = optarg + 6;
            } else {
                return bad("--arrival", optarg, "expected poisson, burst:SIZE or trace:FILE");
            }
            break;
        case O_RATE:
            if (sim_parse_double(optarg, 1e-9, 1e12, &c->rate) < 0)
                return bad("--rate", optarg, "expected a positive number of flows per second");
            break;
        case O_LOAD:
            if (sim_parse_double(optarg, 1e-9, 1e12, &cli->load) < 0)
                return bad("--load", optarg, "expected a positive number of Erlangs");
            break;
        case O_HOLD:
            if (sim_dist_parse(optarg, &c->hold, err, sizeof(err)) < 0) {
                fprintf(stderr, "gwsim model: --hold: %s\n", err);
                return 2;
            }
            break;
        case O_DIPS:
        case O_DPORTS:
            if (sim_parse_u64(optarg, 1, ch == O_DIPS ? 65536 : 65000, &v) < 0)
                return bad(name, optarg, "out of range");
            if (ch == O_DIPS)
                c->dest_ips = (uint32_t)v;
            else
                c->dest_ports = (uint32_t)v;
            break;
        case O_DPICK:
            if (strcmp(optarg, "random") == 0)
                c->dest_pick = SIM_DEST_RANDOM;
            else if (strcmp(optarg, "rr") == 0)
                c->dest_pick = SIM_DEST_ROUND_ROBIN;
            else
                return bad("--dest-pick", optarg, "expected random or rr");
            break;
        case O_UDP:
            if (sim_parse_double(optarg, 0, 1, &c->udp_share) < 0)
                return bad("--udp-share", optarg, "expected a number within 0..1");
            break;
        case O_FLOWS:
        case O_WARMUP:
        case O_PCL:
        case O_MAXSESS:
        case O_BLOCK:
        case O_MAXBLOCKS:
        case O_RATIO:
        case O_SEED:
            if (sim_parse_u64(optarg, 0,
                              ch == O_FLOWS || ch == O_WARMUP || ch == O_SEED ? UINT64_MAX
                                                                              : UINT32_MAX,
                              &v) < 0)
                return bad(name, optarg, "expected a whole number in range");
            if (ch == O_FLOWS) {
                c->max_flows = v;
                cli->flows_set = true;
            }
            else if (ch == O_WARMUP)
                c->warmup_flows = v;
            else if (ch == O_PCL)
                c->nat.per_client_limit = (uint32_t)v;
            else if (ch == O_MAXSESS)
                c->nat.max_sessions = (uint32_t)v;
            else if (ch == O_BLOCK)
                c->nat.block_size = (uint32_t)v;
            else if (ch == O_MAXBLOCKS)
                c->nat.max_blocks_per_client = (uint32_t)v;
            else if (ch == O_RATIO)
                ratio = v;
            else
                c->seed = v;
            break;
        case O_DURATION:
        case O_BHOLD:
        case O_REUSE:
        case O_TUDP:
        case O_TEST:
        case O_TTRANS:
        case O_INTERVAL:
            if (sim_parse_duration_ms(optarg, &d) < 0)
                return bad(name, optarg, "expected a duration (e.g. 250ms, 30s, 2h)");
            if (ch != O_DURATION && ch != O_INTERVAL && d > UINT32_MAX)
                return bad(name, optarg, "at most 49 days");
            if (ch == O_DURATION)
                c->duration_ms = d;
            else if (ch == O_INTERVAL) {
                if (d < 1)
                    return bad(name, optarg, "at least 1ms");
                c->sample_ms = d;
                cli->interval_set = true;
            } else if (ch == O_REUSE) {
                c->nat.reuse_delay_ms = (uint32_t)d;
            } else if (ch == O_BHOLD) {
                if (d > NAT_MAX_BLOCK_HOLD_MS)
                    return bad(name, optarg, "at most a day");
                c->nat.block_hold_ms = (uint32_t)d;
            } else {
                c->nat.timeout_ms[ch == O_TUDP   ? NAT_TIMEOUT_UDP
                                  : ch == O_TEST ? NAT_TIMEOUT_TCP_ESTABLISHED
                                                 : NAT_TIMEOUT_TCP_TRANSITORY] = (uint32_t)d;
            }
            break;
        case O_NIPS:
            if (sim_parse_u64(optarg, 1, NAT_MAX_IPS, &v) < 0)
                return bad("--nat-ips", optarg, "expected 1-64");
            c->nat.n_ips = (unsigned)v;
            for (unsigned i = 0; i < c->nat.n_ips; i++) {
                char ip[32];
                snprintf(ip, sizeof(ip), "203.0.113.%u", i + 1);
                nat_addr_parse(&c->nat.ips[i], ip);
            }
            break;
        case O_NPORTS:
            if (sim_parse_port_range(optarg, &c->nat.port_lo, &c->nat.port_hi) < 0)
                return bad("--nat-ports", optarg, "expected LO-HI within 1-65535");
            break;
        case O_POLICY:
            if (nat_policy_parse(optarg) < 0)
                return bad("--nat-policy", optarg,
                           "expected sequential, random, preserve or block");
            c->nat.policy = (enum nat_policy)nat_policy_parse(optarg);
            break;
        case O_MAPPING:
            if (nat_mapping_parse(optarg) < 0)
                return bad("--nat-mapping", optarg, "expected eim, adm or apdm");
            c->nat.mapping = (enum nat_mapping)nat_mapping_parse(optarg);
            break;
        case O_CLOSE:
            if (strcmp(optarg, "exact") == 0)
                c->close_mode = SIM_CLOSE_EXACT;
            else if (strcmp(optarg, "linger") == 0)
                c->close_mode = SIM_CLOSE_LINGER;
            else
                return bad("--close", optarg, "expected exact or linger");
            break;
        case O_CSV:
            cli->csv_path = optarg;
            break;
        case O_CCSV:
            cli->clients_csv_path = optarg;
            break;
        case O_SVG:
            cli->svg_path = optarg;
            break;
        case O_JSON:
            cli->json = true;
            break;
        case 'h':
        case O_HELP:
            return sim_usage_exit(usage, true);
        default:
            return sim_usage_exit(usage, false);
        }
    }
    if (sim_no_operands("model", optind, argc, argv) != 0)
        return 2;
    if (c->max_flows != 0 && c->warmup_flows >= c->max_flows) {
        fprintf(stderr,
                "gwsim model: --warmup %llu leaves nothing of --flows %llu to count: give fewer "
                "warm-up arrivals\n",
                (unsigned long long)c->warmup_flows, (unsigned long long)c->max_flows);
        return 2;
    }
    /* One output at most on stdout, and then the summary goes to stderr. */
    int on_stdout = 0;
    const char *outs[] = {cli->csv_path, cli->clients_csv_path, cli->svg_path};
    for (size_t i = 0; i < sizeof(outs) / sizeof(outs[0]); i++)
        on_stdout += outs[i] != NULL && strcmp(outs[i], "-") == 0;
    if (on_stdout > 1) {
        fprintf(stderr, "gwsim model: only one of --csv, --clients-csv and --svg can be '-' "
                        "(stdout)\n");
        return 2;
    }
    cli->summary_to_stderr = on_stdout == 1;
    if (cli->load > 0)
        c->rate = cli->load * 1000.0 / c->hold.mean_ms;
    if (!cli->interval_set && c->arrival != SIM_ARRIVAL_TRACE) {
        /* about 1000 samples over the expected run, at least one a second */
        double span = c->duration_ms > 0 ? c->duration_ms : 1000.0 * (double)c->max_flows / c->rate;
        if (span / 1000.0 > c->sample_ms)
            c->sample_ms = span / 1000.0;
    }
    if (ratio > 0) {
        uint64_t ports = (uint64_t)c->nat.port_hi - c->nat.port_lo + 1;
        if (ratio > ports) {
            fprintf(stderr, "gwsim model: --sharing-ratio %llu is more than the %llu ports\n",
                    (unsigned long long)ratio, (unsigned long long)ports);
            return 2;
        }
        c->nat.policy = NAT_POLICY_BLOCK;
        c->nat.block_size = (uint32_t)(ports / ratio);
        c->nat.max_blocks_per_client = 1;
    }
    return -1;
}

/* n ports against one protocol's pool (ports_total), 0..1. */
static double pool_share(uint64_t n, const struct sim_model_result *r)
{
    return r->ports_total ? (double)n / (double)r->ports_total : 0.0;
}

static json_t *summary_json(const struct cli *cli, const struct sim_model_result *r)
{
    const struct sim_model_config *c = &cli->c;
    json_t *o = json_object(), *ref = json_object();

    for (int e = 1; e < NAT_ERR_COUNT; e++)
        if (r->refused[e])
            json_object_set_new(ref, nat_err_name((enum nat_err)e),
                                json_integer((json_int_t)r->refused[e]));
    json_object_set_new(o, "arrivals", json_integer((json_int_t)r->arrivals));
    json_object_set_new(o, "opened", json_integer((json_int_t)r->opened));
    json_object_set_new(o, "closed", json_integer((json_int_t)r->closed));
    json_object_set_new(o, "expired", json_integer((json_int_t)r->expired));
    json_object_set_new(o, "refused", json_integer((json_int_t)r->refused_total));
    json_object_set_new(o, "refused_by_reason", ref);
    json_object_set_new(o, "counted", json_integer((json_int_t)r->counted));
    json_object_set_new(o, "counted_refused", json_integer((json_int_t)r->counted_refused));
    json_object_set_new(o, "refusal_probability",
                        isfinite(r->p_refuse) ? json_real(r->p_refuse) : json_null());
    json_object_set_new(o, "refusal_upper95", isfinite(r->p_refuse_upper95)
                                                  ? json_real(r->p_refuse_upper95)
                                                  : json_null());
    json_object_set_new(o, "client_ports_busy", json_integer((json_int_t)r->client_ports_busy));
    json_object_set_new(o, "ci95", isfinite(r->ci95) ? json_real(r->ci95) : json_null());
    json_object_set_new(o, "ci99", isfinite(r->ci99) ? json_real(r->ci99) : json_null());
    json_object_set_new(o, "batches", json_integer(r->batches));
    json_object_set_new(o, "offered_load",
                        r->offered_load >= 0 ? json_real(r->offered_load) : json_null());
    json_object_set_new(o, "servers", json_integer((json_int_t)r->servers));
    json_object_set_new(o, "groups", json_integer(r->groups));
    json_object_set_new(o, "erlang_b", r->erlang_b >= 0 ? json_real(r->erlang_b) : json_null());
    json_object_set_new(o, "erlang_b_not_applicable",
                        r->erlang_b_why ? json_string(r->erlang_b_why) : json_null());
    json_object_set_new(o, "peak_active", json_integer((json_int_t)r->peak_active));
    json_object_set_new(o, "peak_ports_in_use", json_integer((json_int_t)r->peak_ports_in_use));
    json_object_set_new(o, "peak_tcp_ports_in_use",
                        json_integer((json_int_t)r->peak_tcp_ports_in_use));
    json_object_set_new(o, "peak_udp_ports_in_use",
                        json_integer((json_int_t)r->peak_udp_ports_in_use));
    json_object_set_new(o, "peak_tcp_pool_use", json_real(pool_share(r->peak_tcp_ports_in_use, r)));
    json_object_set_new(o, "peak_udp_pool_use", json_real(pool_share(r->peak_udp_ports_in_use, r)));
    json_object_set_new(o, "peak_ports_per_client",
                        json_integer((json_int_t)r->peak_ports_per_client));
    json_object_set_new(o, "ports_total", json_integer((json_int_t)r->ports_total));
    json_object_set_new(o, "clients", json_integer((json_int_t)r->clients));
    json_object_set_new(o, "virtual_seconds", json_real(r->end_ms / 1000.0));
    json_object_set_new(o, "wall_seconds", json_real(r->wall_ms / 1000.0));
    json_object_set_new(o, "flows_per_second",
                        json_real(r->wall_ms > 0 ? r->arrivals / (r->wall_ms / 1000.0) : 0));
    json_object_set_new(o, "log_rows_flows", json_integer((json_int_t)r->log_rows_flows));
    json_object_set_new(o, "log_rows_blocks", json_integer((json_int_t)r->log_rows_blocks));
    json_object_set_new(o, "block_allocs", json_integer((json_int_t)r->block_allocs));
    json_object_set_new(o, "peak_blocks_in_use", json_integer((json_int_t)r->peak_blocks_in_use));
    json_object_set_new(o, "policy", json_string(nat_policy_name(c->nat.policy)));
    json_object_set_new(o, "mapping", json_string(nat_mapping_name(c->nat.mapping)));
    json_object_set_new(o, "seed", json_integer((json_int_t)c->seed));
    return o;
}

static void summary_text(FILE *out, const struct cli *cli, const struct sim_model_result *r)
{
    const struct sim_model_config *c = &cli->c;

    fprintf(out, "gwsim model: %s/%s, pool %u ip x %u ports = %llu, %s arrivals, ",
            nat_policy_name(c->nat.policy), nat_mapping_name(c->nat.mapping), c->nat.n_ips,
            c->nat.port_hi - c->nat.port_lo + 1, (unsigned long long)r->ports_total,
            c->arrival == SIM_ARRIVAL_POISSON ? "poisson"
            : c->arrival == SIM_ARRIVAL_BURST ? "burst"
                                              : "trace");
    if (c->arrival == SIM_ARRIVAL_TRACE)
        fprintf(out, "durations from the trace\n");
    else
        fprintf(out, "hold %s mean %.3gs\n", sim_dist_name(c->hold.kind), c->hold.mean_ms / 1000.0);
    fprintf(out, "  arrivals      %llu (%llu clients, %.1f virtual s)\n",
            (unsigned long long)r->arrivals, (unsigned long long)r->clients, r->end_ms / 1000.0);
    fprintf(out, "  opened        %llu   closed %llu   expired %llu\n",
            (unsigned long long)r->opened, (unsigned long long)r->closed,
            (unsigned long long)r->expired);
    fprintf(out, "  refused       %llu", (unsigned long long)r->refused_total);
    for (int e = 1; e < NAT_ERR_COUNT; e++)
        if (r->refused[e])
            fprintf(out, "   %s %llu", nat_err_name((enum nat_err)e),
                    (unsigned long long)r->refused[e]);
    fprintf(out, "\n");
    if (r->client_ports_busy)
        fprintf(out,
                "  not offered   %llu (the subscriber had every local port in use; not NAT "
                "refusals)\n",
                (unsigned long long)r->client_ports_busy);
    if (!isfinite(r->p_refuse))
        fprintf(out, "  P(refuse)     n/a (no arrival counted)");
    else
        fprintf(out, "  P(refuse)     %.6f", r->p_refuse);
    if (isfinite(r->ci95))
        fprintf(out, " +- %.6f (95%%, %u batches)", r->ci95, r->batches);
    else if (isfinite(r->p_refuse_upper95))
        fprintf(out, " (none refused: < %.2g at 95%%)", r->p_refuse_upper95);
    fprintf(out, " over %llu arrivals after %llu warm-up\n", (unsigned long long)r->counted,
            (unsigned long long)c->warmup_flows);
    if (r->offered_load >= 0)
        fprintf(out, "  offered load  %.4g Erlangs\n", r->offered_load);
    if (r->erlang_b >= 0)
        fprintf(out, "  Erlang-B      B(%llu, %.4g) = %.6f  (%u destination group%s)\n",
                (unsigned long long)r->servers, r->offered_load / r->groups, r->erlang_b, r->groups,
                r->groups == 1 ? "" : "s");
    else
        fprintf(out, "  Erlang-B      not applicable: %s\n", r->erlang_b_why);
    fprintf(out, "  peak          %llu live mappings, %llu ports per client\n",
            (unsigned long long)r->peak_active, (unsigned long long)r->peak_ports_per_client);
    fprintf(out,
            "  ports in use  tcp %llu of %llu (%.1f%%), udp %llu of %llu (%.1f%%) at the peak\n",
            (unsigned long long)r->peak_tcp_ports_in_use, (unsigned long long)r->ports_total,
            100.0 * pool_share(r->peak_tcp_ports_in_use, r),
            (unsigned long long)r->peak_udp_ports_in_use, (unsigned long long)r->ports_total,
            100.0 * pool_share(r->peak_udp_ports_in_use, r));
    if (c->nat.policy == NAT_POLICY_BLOCK) {
        fprintf(out, "  blocks        %llu taken, %llu at once at the peak (%u ports each",
                (unsigned long long)r->block_allocs, (unsigned long long)r->peak_blocks_in_use,
                c->nat.block_size);
        if (c->nat.block_hold_ms)
            fprintf(out, ", held %gs after a client's last mapping", c->nat.block_hold_ms / 1000.0);
        fprintf(out, ")\n");
        fprintf(out, "  log rows      %llu logging every flow, %llu logging blocks (%.1fx fewer)\n",
                (unsigned long long)r->log_rows_flows, (unsigned long long)r->log_rows_blocks,
                r->log_rows_blocks ? (double)r->log_rows_flows / (double)r->log_rows_blocks : 0.0);
    } else {
        fprintf(out, "  log rows      %llu logging every flow\n",
                (unsigned long long)r->log_rows_flows);
    }
    fprintf(out, "  speed         %.0f flows/s (%.3f s wall)\n",
            r->wall_ms > 0 ? r->arrivals / (r->wall_ms / 1000.0) : 0, r->wall_ms / 1000.0);
}

static FILE *open_out(const char *path)
{
    FILE *f = strcmp(path, "-") == 0 ? stdout : fopen(path, "w");

    if (f == NULL)
        fprintf(stderr, "gwsim model: cannot write %s: %s\n", path, strerror(errno));
    return f;
}

static int close_out(FILE *f, const char *path)
{
    int bad_write = ferror(f);

    if (f == stdout)
        return fflush(f) != 0 || bad_write ? -1 : 0;
    if (fclose(f) != 0 || bad_write) {
        fprintf(stderr, "gwsim model: writing %s failed\n", path);
        return -1;
    }
    return 0;
}

int sim_model_main(int argc, char **argv)
{
    struct cli cli;
    struct sim_model_result r;
    struct sim_model_client *clients = NULL;
    struct sim_trace_reader tr;
    FILE *trace = NULL;
    size_t n_clients = 0;
    char err[512];
    int rc, ret = 1;

    memset(&cli, 0, sizeof(cli));
    cli.svg_stride = 1;
    sim_model_config_default(&cli.c);
    rc = parse_args(&cli, argc, argv);
    if (rc >= 0)
        return rc;
    if (cli.trace_path != NULL) {
        trace = fopen(cli.trace_path, "r");
        if (trace == NULL) {
            fprintf(stderr, "gwsim model: cannot read %s: %s\n", cli.trace_path, strerror(errno));
            return 1;
        }
        sim_trace_reader_init(&tr, trace);
        cli.c.trace = &tr;
        if (!cli.flows_set)
            cli.c.max_flows = 0; /* a trace runs to its end unless told otherwise */
    }
    if (cli.csv_path != NULL) {
        cli.csv = open_out(cli.csv_path);
        if (cli.csv == NULL)
            goto out;
        fprintf(cli.csv, "time_s,arrivals,opened,refused,refused_interval,active,ports_in_use,"
                         "tcp_ports_in_use,udp_ports_in_use,ports_cooling,pool_use,tcp_pool_use,"
                         "udp_pool_use,clients_active,ports_per_client_max,"
                         "ports_per_client_mean\n");
    }
    rc = sim_model_run(&cli.c, on_sample, &cli, &r, &clients, &n_clients, err, sizeof(err));
    if (rc < 0) {
        if (cli.trace_path != NULL && strncmp(err, "line ", 5) == 0)
            fprintf(stderr, "gwsim model: %s: %s\n", cli.trace_path, err);
        else
            fprintf(stderr, "gwsim model: %s\n", err);
        ret = rc == -EINVAL ? 2 : 1;
        goto out;
    }
    if (cli.csv != NULL) {
        FILE *f = cli.csv;
        cli.csv = NULL;
        if (close_out(f, cli.csv_path) < 0)
            goto out;
    }
    if (cli.clients_csv_path != NULL) {
        FILE *f = open_out(cli.clients_csv_path);
        if (f == NULL)
            goto out;
        fprintf(f, "client,opened,refused,peak_ports\n");
        for (size_t i = 0; i < n_clients; i++) {
            struct nat_addr a;
            char ip[NAT_ADDR_STRLEN];
            memcpy(a.b, clients[i].ip, 16);
            fprintf(f, "%s,%llu,%llu,%u\n", nat_addr_format(&a, ip),
                    (unsigned long long)clients[i].opened, (unsigned long long)clients[i].refused,
                    clients[i].peak);
        }
        if (close_out(f, cli.clients_csv_path) < 0)
            goto out;
    }
    if (cli.svg_path != NULL) {
        char title[160], sub[256];
        struct sim_svg_info info = {title, sub, r.ports_total};
        FILE *f;
        if (cli.oom) {
            fprintf(stderr, "gwsim model: out of memory for the chart\n");
            goto out;
        }
        f = open_out(cli.svg_path);
        if (f == NULL)
            goto out;
        int tl = snprintf(title, sizeof(title), "gwsim model: %s / %s, %llu ports",
                          nat_policy_name(cli.c.nat.policy), nat_mapping_name(cli.c.nat.mapping),
                          (unsigned long long)r.ports_total);
        if (r.offered_load >= 0 && tl > 0 && (size_t)tl < sizeof(title))
            snprintf(title + tl, sizeof(title) - (size_t)tl, ", %.4g Erlangs offered",
                     r.offered_load);
        snprintf(sub, sizeof(sub), "%llu arrivals, %llu refused (P=%.4f)%s%.4f, seed %llu",
                 (unsigned long long)r.arrivals, (unsigned long long)r.refused_total, r.p_refuse,
                 r.erlang_b >= 0 ? ", Erlang-B " : "", r.erlang_b >= 0 ? r.erlang_b : 0.0,
                 (unsigned long long)cli.c.seed);
        if (r.erlang_b < 0)
            snprintf(sub, sizeof(sub), "%llu arrivals, %llu refused (P=%.4f), seed %llu",
                     (unsigned long long)r.arrivals, (unsigned long long)r.refused_total,
                     r.p_refuse, (unsigned long long)cli.c.seed);
        sim_svg_write(f, cli.samples, cli.n_samples, &info);
        if (close_out(f, cli.svg_path) < 0)
            goto out;
    }
    FILE *sum = cli.summary_to_stderr ? stderr : stdout;
    if (cli.json) {
        json_t *o = summary_json(&cli, &r);
        json_dumpf(o, sum, JSON_INDENT(2) | JSON_REAL_PRECISION(8));
        fputc('\n', sum);
        json_decref(o);
    } else {
        summary_text(sum, &cli, &r);
    }
    ret = 0;
out:
    if (cli.csv != NULL && cli.csv != stdout)
        fclose(cli.csv);
    free(clients);
    free(cli.samples);
    if (trace != NULL) {
        sim_trace_reader_free(&tr);
        fclose(trace);
    }
    return ret;
}
