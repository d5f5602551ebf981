/*
 * sim_clients.h - `gwsim clients`: N clients from M source IPs, K flows each,
 * TCP and/or UDP to one gateway address; every reply checked byte for byte
 * and the backend's view of the peer checked against gwd's NAT table.
 * The run is also callable from the lab (sim_clients_run).
 */
#ifndef GW_SIM_CLIENTS_H
#define GW_SIM_CLIENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <jansson.h>

enum sim_port_mode {
    SIM_PORT_OS = 0,     /* the kernel's choice (IP_BIND_ADDRESS_NO_PORT, then connect) */
    SIM_PORT_SEQUENTIAL, /* per source IP, 40000, 40001, ... 60999, wrapping */
    SIM_PORT_RANDOM,     /* uniform in 32768-60999, up to 8 tries on EADDRINUSE */
    SIM_PORT_FIXED,      /* always the given port (SO_REUSEADDR): shows 4-tuple collisions */
};

/* Why a flow failed; "ok" when it did not. */
enum sim_flow_result {
    SIM_FLOW_OK = 0,
    SIM_FLOW_BIND_EADDRINUSE,
    SIM_FLOW_BIND_EADDRNOTAVAIL,
    SIM_FLOW_BIND_ERROR,
    SIM_FLOW_CONNECT_EADDRNOTAVAIL, /* the 4-tuple is taken */
    SIM_FLOW_CONNECT_REFUSED,
    SIM_FLOW_CONNECT_TIMEOUT,
    SIM_FLOW_CONNECT_ERROR,
    SIM_FLOW_CLOSED_BEFORE_HELLO, /* the gateway closed it: typically refused (no mapping) */
    SIM_FLOW_RESET_BEFORE_HELLO,
    SIM_FLOW_BAD_HELLO,
    SIM_FLOW_CLOSED_EARLY,
    SIM_FLOW_RESET,
    SIM_FLOW_REPLY_MISMATCH,
    SIM_FLOW_TIMEOUT,
    SIM_FLOW_NAT_MISSING,  /* gwd's table has no session for this client endpoint */
    SIM_FLOW_NAT_MISMATCH, /* the backend saw another address than the table holds */
    SIM_FLOW_CONTROL_ERROR,
    SIM_FLOW_SOCKET_ERROR,
    SIM_FLOW_NOT_STARTED, /* the run's --timeout came first */
    SIM_FLOW_RESULT_COUNT
};

/* The snake_case name of a result ("ok", "bind_eaddrinuse", ...). */
const char *sim_flow_result_name(enum sim_flow_result r);

struct sim_clients_opts {
    struct sockaddr_storage gateway;
    socklen_t gateway_len;
    char **src_ips; /* owned: the source addresses, n_src of them */
    size_t n_src;
    bool src_auto; /* the kernel picks the source address: src_ips is the one wildcard
                      address of the gateway's family; only the port mode is bound */
    uint64_t clients; /* N */
    uint64_t flows;   /* K per client */
    bool tcp, udp;    /* both: flows alternate tcp, udp */
    uint64_t concurrency;
    double ramp_ms, hold_ms, timeout_ms, io_timeout_ms;
    uint64_t size;        /* bytes per request */
    uint64_t requests;    /* requests per flow */
    uint64_t udp_retries; /* resends of an unanswered UDP request; each attempt waits
                             io_timeout_ms / (udp_retries + 1) */
    enum sim_port_mode port_mode;
    uint16_t fixed_port;
    const char *control; /* borrowed: gwd's control socket, NULL = no NAT check */
    bool json, quiet, progress;
    uint64_t seed;
};

/* Per-flow outcome, for callers that want to see each one (the lab). */
struct sim_flow_report {
    uint64_t index;
    int proto;        /* 6/17 */
    char src[64];     /* client ip:port as bound */
    char peer[64];    /* what the backend saw ("" if no hello) */
    char backend[64]; /* the backend's name from its hello */
    enum sim_flow_result result;
    int err; /* errno behind a bind/connect failure, 0 otherwise */
};

typedef void (*sim_flow_fn)(void *arg, const struct sim_flow_report *r);

/* Fills *o with defaults: 10 clients from 127.1.0.1-127.1.0.10, one TCP flow
 * each, concurrency 100, 64-byte request, 1 request, os ports, 30 s run
 * timeout, 5 s I/O timeout. The gateway must still be set. */
void sim_clients_opts_default(struct sim_clients_opts *o);

/* Frees what *o owns. */
void sim_clients_opts_free(struct sim_clients_opts *o);

/*
 * Runs the clients. Calls `each` (may be NULL) when each flow ends, while
 * the other flows may still be open. Fills *summary with the summary object
 * (the same as --json prints; caller decrefs). Returns 0 when every flow
 * passed every check, 1 when any failed, 3 when the control socket cannot be
 * reached, -EINVAL when a timeout is not positive, -errno on a setup failure.
 */
int sim_clients_run(const struct sim_clients_opts *o, sim_flow_fn each, void *arg,
                    json_t **summary);

/* Runs `gwsim clients ARGS...` (argv[0] "clients"). Returns the exit code:
 * 0 all ok, 1 a check failed, 2 usage, 3 control socket unreachable. */
int sim_clients_main(int argc, char **argv);

#endif /* GW_SIM_CLIENTS_H */
