/*
 * bench_util.h - shared pieces of the gateway load tools: clock, address
 * parsing, client source addresses on 127.0.0.0/8, a latency histogram and
 * the one-line RESULT record that bench/gateway/run.sh parses.
 */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>

/* Histogram: 1 us buckets up to BU_HIST_LINEAR_US, then one overflow bucket. */
#define BU_HIST_LINEAR_US 200000

struct bu_hist {
    uint64_t *bucket; /* owned: BU_HIST_LINEAR_US + 1 counters */
    uint64_t count;
    uint64_t max_us;
    double sum_us;
};

/* Options every tool shares (parsed by bu_parse_common). */
struct bu_opts {
    struct sockaddr_in target; /* where the load goes (proxy or backend) */
    int have_target;
    double seconds; /* stop after this long (bounded; default 5) */
    uint64_t count; /* stop after this many operations (0 = no count bound) */
    int src_ips;    /* use 127.1.0.1 .. 127.1.0.N as client sources (0 = kernel's) */
    int msg;        /* message size in bytes */
    int conc;       /* concurrency: connections or sockets */
};

/* Monotonic clock in nanoseconds. */
uint64_t bu_now_ns(void);

/* Parse "A.B.C.D:PORT" into *out. Returns 0 or -EINVAL; *out written only on success. */
int bu_parse_addr(const char *s, struct sockaddr_in *out);

/*
 * Parse the option at argv[*i] if it is one of the common ones (--target,
 * --seconds, --count, --src-ips, --msg, --conc), advancing *i past its value.
 * Returns 1 when consumed, 0 when not a common option, -EINVAL on a bad value.
 */
int bu_parse_common(struct bu_opts *o, int argc, char **argv, int *i);

/* Fill *o with the defaults: 5 s, no count bound, kernel sources, 64 B, conc 64. */
void bu_opts_default(struct bu_opts *o);

/*
 * Source address number i (0-based) of the client set: 127.1.0.1 + (i % n),
 * spread over the last two bytes. Returns INADDR_ANY when n == 0.
 */
struct in_addr bu_src_ip(unsigned i, int n);

/*
 * Make a non-blocking TCP socket bound to src (port chosen at connect time,
 * IP_BIND_ADDRESS_NO_PORT) unless src is INADDR_ANY. linger0 sets SO_LINGER 0
 * (close sends RST, leaves no TIME_WAIT). Returns the fd or -errno.
 */
int bu_tcp_socket(struct in_addr src, int linger0);

/* Set O_NONBLOCK on fd. Returns 0 or -errno. */
int bu_set_nonblock(int fd);

/* Allocate the histogram buckets. Returns 0 or -ENOMEM. */
int bu_hist_init(struct bu_hist *h);
/* Free the buckets; h may be zeroed or freed already. */
void bu_hist_free(struct bu_hist *h);
/* Record one latency in nanoseconds. */
void bu_hist_add(struct bu_hist *h, uint64_t ns);
/* The p-th percentile (0 < p <= 100) in microseconds; 0 when empty. */
double bu_hist_pct(const struct bu_hist *h, double p);

/* Install SIGINT/SIGTERM handlers that set the flag bu_stop. */
void bu_install_stop(void);
extern volatile int bu_stop;

#endif
