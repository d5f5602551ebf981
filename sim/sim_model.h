/*
 * sim_model.h - the NAT model: libnat driven in virtual time. Arrivals
 * (Poisson, bursts or a trace), holding times, destinations and subscribers
 * go in; a time series of samples and a summary come out. Event-driven: a
 * binary heap of departures, no sockets, no clock; the same seed gives the
 * same run.
 */
#ifndef GW_SIM_MODEL_H
#define GW_SIM_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "nat/nat.h"
#include "sim/sim_dist.h"
#include "sim/sim_trace.h"

enum sim_arrival {
    SIM_ARRIVAL_POISSON = 0, /* exponential gaps, mean 1/rate */
    SIM_ARRIVAL_BURST,       /* Poisson bursts of burst_size flows at one instant; same mean rate */
    SIM_ARRIVAL_TRACE,       /* rows of a trace file */
};

enum sim_close_mode {
    SIM_CLOSE_EXACT = 0, /* the session is closed at the flow's departure (pure loss system) */
    SIM_CLOSE_LINGER,    /* TCP: CLOSING at departure, freed by the transitory timeout;
                            UDP: last packet at departure, freed by the udp timeout */
};

enum sim_dest_pick {
    SIM_DEST_RANDOM = 0, /* uniform over the destinations */
    SIM_DEST_ROUND_ROBIN,
};

struct sim_model_config {
    struct nat_config nat;
    uint32_t subscribers; /* client IPs 100.64.0.0 + i (ignored with a trace) */
    enum sim_arrival arrival;
    double rate;                    /* flows per virtual second (Poisson, burst) */
    uint32_t burst_size;            /* flows per burst */
    struct sim_trace_reader *trace; /* borrowed: SIM_ARRIVAL_TRACE */
    struct sim_dist hold;           /* flow duration (ignored with a trace) */
    uint32_t dest_ips, dest_ports;  /* destinations 198.18.0.0 + i, ports 443 + j */
    enum sim_dest_pick dest_pick;
    double udp_share;      /* fraction of flows that are UDP, 0..1 */
    uint64_t max_flows;    /* stop after this many arrivals (0 = no limit) */
    double duration_ms;    /* stop at this virtual time (0 = no limit) */
    uint64_t warmup_flows; /* arrivals left out of the refusal statistics */
    double sample_ms;      /* time between samples */
    enum sim_close_mode close_mode;
    uint64_t seed;
};

/* Fills *c with the defaults: libnat's defaults with ports 1024-65535 and
 * reuse delay 0, 1000 subscribers, Poisson 100 flows/s, exp:60s holding, one
 * destination, all TCP, 100000 flows, sample every second, exact close. */
void sim_model_config_default(struct sim_model_config *c);

/* One point of the time series, at virtual time t_ms. */
struct sim_model_sample {
    double t_ms;
    uint64_t arrivals, opened, refused; /* cumulative */
    uint64_t refused_interval;          /* since the previous sample */
    uint64_t active;                    /* live mappings (sessions) */
    uint64_t ports_in_use;   /* external ports held, TCP and UDP together (libnat's count) */
    uint64_t tcp_ports_in_use, udp_ports_in_use; /* the same per protocol: each protocol
                                                    has its own pool of ports_total */
    uint64_t ports_cooling;
    double tcp_pool_use, udp_pool_use; /* {tcp,udp}_ports_in_use / ports_total, 0..1 */
    double pool_use;                   /* the fuller protocol's: max of the two, 0..1 */
    uint64_t clients_active; /* clients with at least one live mapping */
    uint64_t ports_per_client_max;
    double ports_per_client_mean; /* over clients_active */
};

/* Per client, reported when the run ends. */
struct sim_model_client {
    uint8_t ip[16];
    uint64_t opened, refused;
    uint32_t live, peak;
};

struct sim_model_result {
    uint64_t arrivals, opened, closed, expired;
    uint64_t refused[NAT_ERR_COUNT];
    uint64_t refused_total;
    uint64_t counted, counted_refused; /* after the warm-up */
    double p_refuse;                   /* counted_refused / counted; NAN when counted is 0 */
    uint64_t client_ports_busy; /* arrivals dropped before the NAT: their subscriber had
                                   every local port (32768-60999) in use; not offered */
    double ci95, ci99;                 /* batch-means half-widths (INFINITY when too few
                                          batches, or none refused) */
    double p_refuse_upper95;           /* none refused: 3 / counted (rule of three), else NAN */
    unsigned batches;
    double offered_load;      /* rate * mean holding (Erlangs), -1 with a trace */
    uint64_t servers;         /* ports per destination group for Erlang-B */
    unsigned groups;          /* destination groups sharing the load */
    double erlang_b;          /* B(servers, load/groups), -1 when not applicable */
    const char *erlang_b_why; /* why not applicable (NULL when it is) */
    uint64_t peak_active, peak_ports_in_use, peak_ports_per_client;
    uint64_t peak_tcp_ports_in_use, peak_udp_ports_in_use; /* per protocol, each <= ports_total */
    uint64_t ports_total; /* ips x ports: the pool of each protocol */
    uint64_t samples;
    uint64_t clients;
    double end_ms;   /* virtual time of the last event */
    double wall_ms;  /* real time the run took */
    uint64_t events; /* arrivals + departures + keep-alives */
    /* The translation log the run would write (gwd's nat.log): "flows" has a
     * row per open, close, expire, repick and refusal; "blocks" (the block
     * policy, RFC 7422) a row per block taken or given back and per refusal. */
    uint64_t log_rows_flows, log_rows_blocks;
    uint64_t block_allocs, peak_blocks_in_use;
};

/* A run takes at most this many samples; past it, it fails (-EINVAL) and asks
 * for a longer interval rather than run for hours. */
#define SIM_MODEL_MAX_SAMPLES 10000000

/* Called for each sample, in time order. */
typedef void (*sim_sample_fn)(void *arg, const struct sim_model_sample *s);

/*
 * Runs the model. `on_sample` (may be NULL) gets every sample. When
 * `clients` is not NULL, *clients receives a malloc'd array of *n_clients
 * per-client records (the caller frees it). Returns 0 and *res, -EINVAL with
 * err (a bad configuration or trace row), or -ENOMEM.
 */
int sim_model_run(const struct sim_model_config *c, sim_sample_fn on_sample, void *arg,
                  struct sim_model_result *res, struct sim_model_client **clients,
                  size_t *n_clients, char *err, size_t errlen);

#endif /* GW_SIM_MODEL_H */
