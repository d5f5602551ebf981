/*
 * sim_model_bench.c - how fast `gwsim model` simulates: one million Poisson
 * flows through libnat in virtual time for a few configurations, best of
 * three runs each, printed as flows simulated per second of the process's
 * CPU time (what the machine's other load cannot inflate) and of wall time.
 * usage: sim_model_bench [FLOWS]   (default 1000000)
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "sim/sim_model.h"
#include "sim/sim_util.h"

static double cpu_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1.0e6;
}

struct bench_case {
    const char *name;
    enum nat_policy policy;
    enum nat_mapping mapping;
    uint16_t lo, hi;
    double load;
    unsigned dests;
    double udp_share;
};

int main(int argc, char **argv)
{
    static const struct bench_case cases[] = {
        {"eim random, 100 ports, 110 Erl", NAT_POLICY_RANDOM, NAT_MAPPING_EIM, 26000, 26099, 110, 1,
         0},
        {"eim random, 64512 ports, 60000 Erl", NAT_POLICY_RANDOM, NAT_MAPPING_EIM, 1024, 65535,
         60000, 1, 0},
        {"eim sequential, 64512 ports, 60000 Erl", NAT_POLICY_SEQUENTIAL, NAT_MAPPING_EIM, 1024,
         65535, 60000, 1, 0},
        {"apdm random, 1000 ports, 16 dests, 20000 Erl", NAT_POLICY_RANDOM, NAT_MAPPING_APDM, 26000,
         26999, 20000, 16, 0},
        {"eim random, tcp+udp, 64512 ports, 60000 Erl", NAT_POLICY_RANDOM, NAT_MAPPING_EIM, 1024,
         65535, 60000, 1, 0.5},
    };
    uint64_t flows = argc > 1 ? strtoull(argv[1], NULL, 10) : 1000000;

    printf("%-46s %8s %8s %8s %8s %12s %12s\n", "case", "flows", "refused", "cpu s", "wall s",
           "flows/cpu-s", "flows/wall-s");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct bench_case *b = &cases[i];
        double best = 0, best_cpu = 0;
        struct sim_model_result r;

        for (int rep = 0; rep < 3; rep++) {
            struct sim_model_config c;
            char err[256];
            sim_model_config_default(&c);
            c.nat.policy = b->policy;
            c.nat.mapping = b->mapping;
            c.nat.port_lo = b->lo;
            c.nat.port_hi = b->hi;
            c.hold.mean_ms = 60000;
            c.rate = b->load / 60.0;
            c.dest_ports = b->dests;
            c.udp_share = b->udp_share;
            c.subscribers = 10000;
            c.max_flows = flows;
            c.sample_ms = 10000;
            double c0 = cpu_ms(), cpu;
            if (sim_model_run(&c, NULL, NULL, &r, NULL, NULL, err, sizeof(err)) < 0) {
                fprintf(stderr, "%s: %s\n", b->name, err);
                return 1;
            }
            cpu = cpu_ms() - c0;
            if (best == 0 || r.wall_ms < best)
                best = r.wall_ms;
            if (best_cpu == 0 || cpu < best_cpu)
                best_cpu = cpu;
        }
        printf("%-46s %8llu %8llu %8.3f %8.3f %12.0f %12.0f\n", b->name,
               (unsigned long long)r.arrivals, (unsigned long long)r.refused_total,
               best_cpu / 1000.0, best / 1000.0, (double)r.arrivals / (best_cpu / 1000.0),
               (double)r.arrivals / (best / 1000.0));
    }
    return 0;
}
