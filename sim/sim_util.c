/*
 * sim_util.c - parsers, address helpers, clocks and the PRNG of gwsim.
 */
#include "sim/sim_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int sim_parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    unsigned long long v;

    if (s == NULL || *s < '0' || *s > '9')
        return -EINVAL;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (*end != '\0')
        return -EINVAL;
    if (errno == ERANGE || v < lo || v > hi)
        return -ERANGE;
    *out = v;
    return 0;
}

int sim_parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    double v;

    if (s == NULL || *s == '\0' || *s == ' ')
        return -EINVAL;
    errno = 0;
    v = strtod(s, &end);
    if (*end != '\0' || end == s)
        return -EINVAL;
    if (errno == ERANGE || !isfinite(v) || v < lo || v > hi)
        return -ERANGE;
    *out = v;
    return 0;
}

int sim_parse_duration_ms(const char *s, double *ms)
{
    char num[64];
    const char *unit;
    size_t n;
    double v, mul;
    int rc;

    if (s == NULL)
        return -EINVAL;
    n = strspn(s, "0123456789.eE+-");
    /* "e" may be a unit-less exponent; units never start with e. */
    if (n == 0 || n >= sizeof(num))
        return -EINVAL;
    memcpy(num, s, n);
    num[n] = '\0';
    unit = s + n;
    if (*unit == '\0' || strcmp(unit, "s") == 0)
        mul = 1000.0;
    else if (strcmp(unit, "ms") == 0)
        mul = 1.0;
    else if (strcmp(unit, "m") == 0 || strcmp(unit, "min") == 0)
        mul = 60000.0;
    else if (strcmp(unit, "h") == 0)
        mul = 3600000.0;
    else
        return -EINVAL;
    rc = sim_parse_double(num, 0.0, 9.0e15, &v);
    if (rc < 0)
        return rc;
    v *= mul;
    if (v > 9.0e15)
        return -ERANGE;
    *ms = v;
    return 0;
}

int sim_parse_port_range(const char *s, uint16_t *lo, uint16_t *hi)
{
    char buf[32];
    char *dash;
    uint64_t a, b;

    if (s == NULL || strlen(s) >= sizeof(buf))
        return -EINVAL;
    strcpy(buf, s);
    dash = strchr(buf, '-');
    if (dash != NULL)
        *dash = '\0';
    if (sim_parse_u64(buf, 1, 65535, &a) < 0)
        return -EINVAL;
    b = a;
    if (dash != NULL && sim_parse_u64(dash + 1, 1, 65535, &b) < 0)
        return -EINVAL;
    if (b < a)
        return -EINVAL;
    *lo = (uint16_t)a;
    *hi = (uint16_t)b;
    return 0;
}

int sim_parse_ip(const char *s, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
    struct sockaddr_in sin;
    struct sockaddr_in6 sin6;

    memset(&sin, 0, sizeof(sin));
    memset(&sin6, 0, sizeof(sin6));
    if (inet_pton(AF_INET, s, &sin.sin_addr) == 1) {
        sin.sin_family = AF_INET;
        sin.sin_port = htons(port);
        memset(ss, 0, sizeof(*ss));
        memcpy(ss, &sin, sizeof(sin));
        *len = sizeof(sin);
        return 0;
    }
    if (inet_pton(AF_INET6, s, &sin6.sin6_addr) == 1) {
        sin6.sin6_family = AF_INET6;
        sin6.sin6_port = htons(port);
        memset(ss, 0, sizeof(*ss));
        memcpy(ss, &sin6, sizeof(sin6));
        *len = sizeof(sin6);
        return 0;
    }
    return -EINVAL;
}

/* Splits "HOST:PORT" or "[V6]:PORT" into host (SIM_ADDR_STRLEN) and *port
 * (0-65535). A bare IPv6 address needs brackets. Returns 0 or -EINVAL. */
static int split_hostport(const char *s, char *host, uint16_t *port)
{
    const char *colon, *hs;
    size_t hl;
    uint64_t p;

    if (s == NULL)
        return -EINVAL;
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (rb == NULL || rb[1] != ':')
            return -EINVAL;
        hs = s + 1;
        hl = (size_t)(rb - hs);
        colon = rb + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL || strchr(s, ':') != colon)
            return -EINVAL; /* bare IPv6 needs brackets */
        hs = s;
        hl = (size_t)(colon - s);
    }
    if (hl == 0 || hl >= SIM_ADDR_STRLEN)
        return -EINVAL;
    memcpy(host, hs, hl);
    host[hl] = '\0';
    if (sim_parse_u64(colon + 1, 0, 65535, &p) < 0)
        return -EINVAL;
    *port = (uint16_t)p;
    return 0;
}

int sim_parse_sockaddr(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[SIM_ADDR_STRLEN];
    uint16_t port;

    if (split_hostport(s, host, &port) < 0)
        return -EINVAL;
    return sim_parse_ip(host, port, ss, len);
}

int sim_resolve_sockaddr(const char *s, int family, struct sockaddr_storage *ss, socklen_t *len,
                         const char **why)
{
    char host[SIM_ADDR_STRLEN];
    struct addrinfo hints, *res = NULL, *pick = NULL;
    uint16_t port;
    int r;

    *why = "expected HOST:PORT or [IPv6]:PORT";
    if (split_hostport(s, host, &port) < 0)
        return -EINVAL;
    if (sim_parse_ip(host, port, ss, len) == 0) {
        if (family != AF_UNSPEC && ss->ss_family != family) {
            *why = family == AF_INET ? "an IPv6 gateway needs IPv6 sources (--src)"
                                     : "an IPv4 gateway needs IPv4 sources (--src)";
            return -EAFNOSUPPORT;
        }
        return 0;
    }
    if (s[0] == '[') {
        *why = "not a numeric IPv6 address inside the brackets";
        return -EINVAL;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = family;
    hints.ai_socktype = SOCK_STREAM; /* one entry per address */
    r = getaddrinfo(host, NULL, &hints, &res);
    if (r != 0) {
        *why = r == EAI_SYSTEM ? strerror(errno) : gai_strerror(r);
        if (family != AF_UNSPEC && (r == EAI_NONAME || r == EAI_NODATA || r == EAI_ADDRFAMILY))
            *why = family == AF_INET ? "no IPv4 address for this name (the sources are IPv4)"
                                     : "no IPv6 address for this name (the sources are IPv6)";
        return -ENOENT;
    }
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        if (pick == NULL || (pick->ai_family != AF_INET && ai->ai_family == AF_INET))
            pick = ai;
    }
    if (pick == NULL || pick->ai_addrlen > sizeof(*ss)) {
        freeaddrinfo(res);
        *why = "the name has no IPv4 or IPv6 address";
        return -ENOENT;
    }
    memset(ss, 0, sizeof(*ss));
    memcpy(ss, pick->ai_addr, pick->ai_addrlen);
    *len = (socklen_t)pick->ai_addrlen;
    sim_sockaddr_set_port((struct sockaddr *)ss, port);
    freeaddrinfo(res);
    return 0;
}

void sim_addr16_v4(uint8_t out[16], uint32_t host_order)
{
    memset(out, 0, 10);
    out[10] = 0xff;
    out[11] = 0xff;
    out[12] = (uint8_t)(host_order >> 24);
    out[13] = (uint8_t)(host_order >> 16);
    out[14] = (uint8_t)(host_order >> 8);
    out[15] = (uint8_t)host_order;
}

bool sim_sockaddr_is_loopback(const struct sockaddr *sa)
{
    const struct sockaddr_in *sin = (const struct sockaddr_in *)(const void *)sa;
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)(const void *)sa;

    if (sa->sa_family == AF_INET)
        return (ntohl(sin->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr);
    return false;
}

char *sim_sockaddr_ip(const struct sockaddr *sa, char *buf)
{
    const struct sockaddr_in *sin = (const struct sockaddr_in *)(const void *)sa;
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)(const void *)sa;

    buf[0] = '\0';
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &sin->sin_addr, buf, SIM_IP_STRLEN);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &sin6->sin6_addr, buf, SIM_IP_STRLEN);
    else
        strcpy(buf, "?");
    return buf;
}

char *sim_sockaddr_format(const struct sockaddr *sa, char *buf)
{
    char ip[SIM_IP_STRLEN];

    sim_sockaddr_ip(sa, ip);
    if (sa->sa_family == AF_INET6)
        snprintf(buf, SIM_ADDR_STRLEN, "[%s]:%u", ip, sim_sockaddr_port(sa));
    else
        snprintf(buf, SIM_ADDR_STRLEN, "%s:%u", ip, sim_sockaddr_port(sa));
    return buf;
}

uint16_t sim_sockaddr_port(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)(const void *)sa)->sin_port);
    if (sa->sa_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)(const void *)sa)->sin6_port);
    return 0;
}

void sim_sockaddr_set_port(struct sockaddr *sa, uint16_t port)
{
    if (sa->sa_family == AF_INET)
        ((struct sockaddr_in *)(void *)sa)->sin_port = htons(port);
    else if (sa->sa_family == AF_INET6)
        ((struct sockaddr_in6 *)(void *)sa)->sin6_port = htons(port);
}

socklen_t sim_sockaddr_len(const struct sockaddr *sa)
{
    return sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

int sim_usage_exit(void (*usage)(FILE *f), bool help)
{
    usage(help ? stdout : stderr);
    return help ? 0 : 2;
}

int sim_no_operands(const char *cmd, int first, int argc, char **argv)
{
    if (first >= argc)
        return 0;
    fprintf(stderr, "gwsim %s: unexpected argument '%s'\n", cmd, argv[first]);
    return 2;
}

double sim_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1.0e6;
}

int sim_set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
        return -errno;
    return 0;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void sim_rng_seed(struct sim_rng *r, uint64_t seed)
{
    uint64_t x = seed;

    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t sim_rng_next(struct sim_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double sim_rng_unit(struct sim_rng *r)
{
    /* 53 random bits, shifted off zero by half a step. */
    return ((double)(sim_rng_next(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

uint64_t sim_rng_below(struct sim_rng *r, uint64_t n)
{
    unsigned __int128 m = (unsigned __int128)sim_rng_next(r) * n;
    uint64_t l = (uint64_t)m;

    if (l < n) {
        uint64_t t = -n % n;
        while (l < t) {
            m = (unsigned __int128)sim_rng_next(r) * n;
            l = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}
