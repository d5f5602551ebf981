/*
 * bench_keepalive - --conc keep-alive TCP connections, each doing
 * request/response of --msg bytes (send, read the whole echo, send again).
 * Latency per request goes into a histogram (p50/p99/p99.9). Bounded by
 * --seconds and --count. Prints a human line and one "RESULT ..." line.
 *
 * usage: bench_keepalive --target A:P [--conc N] [--seconds S] [--count N]
 *                        [--msg B] [--src-ips N]
 */
#include "bench_util.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

struct ka_conn {
    int fd;
    int got;
    uint64_t t0;
};

static int usage(void)
{
    fprintf(stderr, "usage: bench_keepalive --target A:P [--conc N] [--seconds S] [--count N]\n"
                    "                       [--msg B] [--src-ips N]\n");
    return 2;
}

/* Connect fd (non-blocking) and wait up to 3 s for it. Returns 0 or -errno. */
static int connect_wait(int fd, const struct sockaddr_in *to)
{
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int err = 0;
    socklen_t len = sizeof(err);

    if (connect(fd, (const struct sockaddr *)to, sizeof(*to)) == 0)
        return 0;
    if (errno != EINPROGRESS)
        return -errno;
    if (poll(&p, 1, 3000) != 1)
        return -ETIMEDOUT;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    return -err;
}

int main(int argc, char **argv)
{
    struct bu_opts o;
    struct ka_conn *k;
    struct bu_hist hist;
    struct epoll_event evs[256];
    char *msg, *rbuf;
    uint64_t t0, end, now, done = 0, sent = 0, errors = 0;
    int i, n, ep, live = 0;

    bu_opts_default(&o);
    o.conc = 50;
    for (i = 1; i < argc; i++) {
        int r = bu_parse_common(&o, argc, argv, &i);

        if (r != 1)
            return usage();
    }
    if (!o.have_target)
        return usage();
    bu_install_stop();
    k = calloc((size_t)o.conc, sizeof(*k));
    msg = malloc((size_t)o.msg);
    rbuf = malloc((size_t)o.msg);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (!k || !msg || !rbuf || ep < 0 || bu_hist_init(&hist) < 0)
        return 1;
    memset(msg, 'k', (size_t)o.msg);
    for (i = 0; i < o.conc; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        int fd = bu_tcp_socket(bu_src_ip((unsigned)i, o.src_ips), 0);

        k[i].fd = -1;
        if (fd < 0 || connect_wait(fd, &o.target) < 0 ||
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            fprintf(stderr, "bench_keepalive: connection %d failed\n", i);
            if (fd >= 0)
                close(fd);
            errors++;
            continue;
        }
        k[i].fd = fd;
        live++;
    }
    t0 = bu_now_ns();
    end = t0 + (uint64_t)(o.seconds * 1e9);
    for (i = 0; i < o.conc; i++) {
        if (k[i].fd < 0)
            continue;
        k[i].t0 = bu_now_ns();
        if (send(k[i].fd, msg, (size_t)o.msg, MSG_NOSIGNAL) != o.msg) {
            close(k[i].fd);
            k[i].fd = -1;
            errors++;
            live--;
            continue;
        }
        sent++;
    }
    /* Bounded: every iteration checks the deadline; a stalled run ends at end + 2 s. */
    while (live > 0) {
        now = bu_now_ns();
        if (bu_stop || now > end + 2000000000ull)
            break;
        n = epoll_wait(ep, evs, 256, 100);
        for (i = 0; i < n; i++) {
            struct ka_conn *c = &k[evs[i].data.u32];
            ssize_t r;

            if (c->fd < 0)
                continue;
            r = recv(c->fd, rbuf, (size_t)(o.msg - c->got), 0);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN)
                    continue;
                close(c->fd);
                c->fd = -1;
                errors++;
                live--;
                continue;
            }
            c->got += (int)r;
            if (c->got < o.msg)
                continue;
            now = bu_now_ns();
            bu_hist_add(&hist, now - c->t0);
            done++;
            c->got = 0;
            if (now >= end || bu_stop || (o.count && sent >= o.count)) {
                close(c->fd);
                c->fd = -1;
                live--;
                continue;
            }
            c->t0 = now;
            if (send(c->fd, msg, (size_t)o.msg, MSG_NOSIGNAL) != o.msg) {
                close(c->fd);
                c->fd = -1;
                errors++;
                live--;
                continue;
            }
            sent++;
        }
    }
    now = bu_now_ns();
    {
        double secs = (double)(now - t0) / 1e9;

        printf("keepalive: %llu requests on %d conns in %.2f s = %.0f req/s, errors %llu, "
               "latency p50 %.0f us p99 %.0f us p99.9 %.0f us max %llu us\n",
               (unsigned long long)done, o.conc, secs, (double)done / secs,
               (unsigned long long)errors, bu_hist_pct(&hist, 50), bu_hist_pct(&hist, 99),
               bu_hist_pct(&hist, 99.9), (unsigned long long)hist.max_us);
        printf("RESULT ops=%llu secs=%.3f rate=%.1f errors=%llu p50_us=%.1f p99_us=%.1f "
               "p999_us=%.1f\n",
               (unsigned long long)done, secs, (double)done / secs, (unsigned long long)errors,
               bu_hist_pct(&hist, 50), bu_hist_pct(&hist, 99), bu_hist_pct(&hist, 99.9));
    }
    for (i = 0; i < o.conc; i++)
        if (k[i].fd >= 0)
            close(k[i].fd);
    bu_hist_free(&hist);
    free(k);
    free(msg);
    free(rbuf);
    close(ep);
    return 0;
}
