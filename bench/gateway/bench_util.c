/*
 * bench_util.c - clock, parsing, client sources and latency histogram for the
 * gateway load tools.
 */
#include "bench_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

volatile int bu_stop;

uint64_t bu_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int bu_parse_addr(const char *s, struct sockaddr_in *out)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    char *end;
    long port;
    struct sockaddr_in sin;

    if (colon == NULL || (size_t)(colon - s) >= sizeof(host))
        return -EINVAL;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    errno = 0;
    port = strtol(colon + 1, &end, 10);
    if (errno != 0 || *end != '\0' || port < 0 || port > 65535)
        return -EINVAL;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sin.sin_addr) != 1)
        return -EINVAL;
    *out = sin;
    return 0;
}

void bu_opts_default(struct bu_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->seconds = 5.0;
    o->msg = 64;
    o->conc = 64;
}

static int parse_num(const char *s, double lo, double hi, double *out)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
        return -EINVAL;
    *out = v;
    return 0;
}

int bu_parse_common(struct bu_opts *o, int argc, char **argv, int *i)
{
    const char *name = argv[*i];
    const char *val;
    double v;

    if (strcmp(name, "--target") && strcmp(name, "--seconds") && strcmp(name, "--count") &&
        strcmp(name, "--src-ips") && strcmp(name, "--msg") && strcmp(name, "--conc"))
        return 0;
    if (*i + 1 >= argc)
        return -EINVAL;
    val = argv[++*i];
    if (!strcmp(name, "--target")) {
        if (bu_parse_addr(val, &o->target) < 0)
            return -EINVAL;
        o->have_target = 1;
        return 1;
    }
    if (!strcmp(name, "--seconds")) {
        if (parse_num(val, 0.01, 3600, &v) < 0)
            return -EINVAL;
        o->seconds = v;
    } else if (!strcmp(name, "--count")) {
        if (parse_num(val, 0, 1e12, &v) < 0)
            return -EINVAL;
        o->count = (uint64_t)v;
    } else if (!strcmp(name, "--src-ips")) {
        if (parse_num(val, 0, 65000, &v) < 0)
            return -EINVAL;
        o->src_ips = (int)v;
    } else if (!strcmp(name, "--msg")) {
        if (parse_num(val, 1, 1 << 20, &v) < 0)
            return -EINVAL;
        o->msg = (int)v;
    } else {
        if (parse_num(val, 1, 60000, &v) < 0)
            return -EINVAL;
        o->conc = (int)v;
    }
    return 1;
}

struct in_addr bu_src_ip(unsigned i, int n)
{
    struct in_addr a;
    unsigned k;

    if (n <= 0) {
        a.s_addr = htonl(INADDR_ANY);
        return a;
    }
    k = 1 + i % (unsigned)n; /* 1..n */
    a.s_addr = htonl((127u << 24) | (1u << 16) | ((k >> 8) << 8) | (k & 0xff));
    return a;
}

int bu_set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    return 0;
}

int bu_tcp_socket(struct in_addr src, int linger0)
{
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int err;

    if (fd < 0)
        return -errno;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (linger0) {
        struct linger l = {.l_onoff = 1, .l_linger = 0};

        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    }
    if (src.s_addr != htonl(INADDR_ANY)) {
        struct sockaddr_in sin;

        memset(&sin, 0, sizeof(sin));
        sin.sin_family = AF_INET;
        sin.sin_addr = src;
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0) {
            err = -errno;
            close(fd);
            return err;
        }
    }
    return fd;
}

int bu_hist_init(struct bu_hist *h)
{
    memset(h, 0, sizeof(*h));
    h->bucket = calloc(BU_HIST_LINEAR_US + 1, sizeof(*h->bucket));
    return h->bucket ? 0 : -ENOMEM;
}

void bu_hist_free(struct bu_hist *h)
{
    free(h->bucket);
    h->bucket = NULL;
}

void bu_hist_add(struct bu_hist *h, uint64_t ns)
{
    uint64_t us = ns / 1000;

    h->bucket[us < BU_HIST_LINEAR_US ? us : BU_HIST_LINEAR_US]++;
    h->count++;
    h->sum_us += (double)ns / 1000.0;
    if (us > h->max_us)
        h->max_us = us;
}

double bu_hist_pct(const struct bu_hist *h, double p)
{
    uint64_t want, seen = 0;
    size_t i;

    if (h->count == 0)
        return 0;
    want = (uint64_t)((double)h->count * p / 100.0 + 0.5);
    if (want == 0)
        want = 1;
    for (i = 0; i < BU_HIST_LINEAR_US; i++) {
        seen += h->bucket[i];
        if (seen >= want)
            return (double)i + 0.5;
    }
    return (double)h->max_us;
}

static void on_stop(int sig)
{
    (void)sig;
    bu_stop = 1;
}

void bu_install_stop(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}
