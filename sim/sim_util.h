/*
 * sim_util.h - small helpers shared by the gwsim sub-commands: strict number,
 * duration and range parsers, socket address parsing and formatting, clocks.
 * No I/O beyond what each function says.
 */
#ifndef GW_SIM_UTIL_H
#define GW_SIM_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

/* Longest "[v6addr]:port" text, with the NUL. */
#define SIM_ADDR_STRLEN 64
/* Longest bare address text, with the NUL (INET6_ADDRSTRLEN rounded up). */
#define SIM_IP_STRLEN 48

/*
 * Parses a whole decimal unsigned integer in [lo, hi]. Returns 0 and *out, or
 * -EINVAL (not a number, trailing garbage, empty) or -ERANGE.
 */
int sim_parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out);

/* Parses a finite decimal number (strtod syntax, whole string) in [lo, hi].
 * Returns 0 and *out, or -EINVAL / -ERANGE. */
int sim_parse_double(const char *s, double lo, double hi, double *out);

/*
 * Parses a duration into milliseconds: a number followed by "ms", "s", "m" or
 * "h"; a bare number is in seconds. Fractions allowed ("1.5s", "0.2").
 * Returns 0 and *ms, or -EINVAL / -ERANGE (negative, or over 2^53 ms).
 */
int sim_parse_duration_ms(const char *s, double *ms);

/* Parses "LO-HI" (or "N", meaning N-N) with 1 <= LO <= HI <= 65535.
 * Returns 0 and *lo, *hi, or -EINVAL. */
int sim_parse_port_range(const char *s, uint16_t *lo, uint16_t *hi);

/*
 * Parses "HOST:PORT", "[V6]:PORT" or (with allow_no_port and def_port) a bare
 * address, numeric only (no DNS), into *ss and *len. Port 0 is allowed.
 * Returns 0, or -EINVAL.
 */
int sim_parse_sockaddr(const char *s, struct sockaddr_storage *ss, socklen_t *len);

/*
 * Like sim_parse_sockaddr, but HOST may also be a name: a numeric address is
 * taken as is (no lookup); otherwise getaddrinfo() resolves it, restricted to
 * `family` (AF_INET, AF_INET6 or AF_UNSPEC), and the first IPv4 answer is
 * taken, else the first IPv6 one. A numeric address of another family than a
 * given `family` is refused. Returns 0, or -EINVAL (syntax), -EAFNOSUPPORT
 * (family), -ENOENT (the name does not resolve), with *why set to a short
 * static or resolver message saying why. Blocks while the resolver runs.
 */
int sim_resolve_sockaddr(const char *s, int family, struct sockaddr_storage *ss, socklen_t *len,
                         const char **why);

/* Writes the IPv4 address host_order (host byte order) as 16 bytes, IPv4-mapped
 * (::ffff:a.b.c.d, network byte order): libnat's address layout. */
void sim_addr16_v4(uint8_t out[16], uint32_t host_order);

/* True when sa is a loopback address (127.0.0.0/8 or ::1). */
bool sim_sockaddr_is_loopback(const struct sockaddr *sa);

/* Parses a bare numeric IPv4/IPv6 address with the given port. Returns 0 or -EINVAL. */
int sim_parse_ip(const char *s, uint16_t port, struct sockaddr_storage *ss, socklen_t *len);

/* Writes "IP:PORT" (IPv4) or "[IP]:PORT" (IPv6) into buf (SIM_ADDR_STRLEN). Returns buf. */
char *sim_sockaddr_format(const struct sockaddr *sa, char *buf);

/* Writes the bare address text of sa into buf (SIM_IP_STRLEN). Returns buf. */
char *sim_sockaddr_ip(const struct sockaddr *sa, char *buf);

/* The port of sa in host order (0 for unknown families). */
uint16_t sim_sockaddr_port(const struct sockaddr *sa);

/* Sets the port of sa (host order). */
void sim_sockaddr_set_port(struct sockaddr *sa, uint16_t port);

/* The length of a sockaddr of sa's family. */
socklen_t sim_sockaddr_len(const struct sockaddr *sa);

/* Prints a sub-command's usage with `usage`: on stdout when `help` (returns 0,
 * the exit code of --help), else on stderr (returns 2, a usage error). */
int sim_usage_exit(void (*usage)(FILE *f), bool help);

/* After option parsing: when argv[first] exists (first < argc), says
 * "gwsim CMD: unexpected argument 'X'" on stderr and returns 2; else 0. */
int sim_no_operands(const char *cmd, int first, int argc, char **argv);

/* Monotonic clock in milliseconds (CLOCK_MONOTONIC). */
double sim_now_ms(void);

/* Sets O_NONBLOCK and FD_CLOEXEC on fd. Returns 0 or -errno. */
int sim_set_nonblock(int fd);

/*
 * A small deterministic PRNG (xoshiro256**), seeded with splitmix64. The
 * same seed gives the same sequence on every platform.
 */
struct sim_rng {
    uint64_t s[4];
};

/* Seeds *r from `seed`. */
void sim_rng_seed(struct sim_rng *r, uint64_t seed);
/* The next 64 random bits. */
uint64_t sim_rng_next(struct sim_rng *r);
/* A uniform double in (0, 1): never 0, never 1. */
double sim_rng_unit(struct sim_rng *r);
/* A uniform integer in [0, n) for n > 0 (Lemire's method, unbiased). */
uint64_t sim_rng_below(struct sim_rng *r, uint64_t n);

#endif /* GW_SIM_UTIL_H */
