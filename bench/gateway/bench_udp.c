/*
 * bench_udp - datagram request/response: --conc connected UDP sockets (one
 * client endpoint each), each keeping --window datagrams of --msg bytes in
 * flight; every reply is counted, timed (the send time rides in the payload)
 * and answered with a new datagram. A socket with no reply for 200 ms counts
 * its outstanding datagrams as lost and starts over. Bounded by --seconds and
 * --count (requests). Prints a human line and one "RESULT ..." line; dgrams=
 * is requests sent plus replies received (what crossed a proxy).
 *
 * usage: bench_udp --target A:P [--conc N] [--window W] [--seconds S]
 *                  [--count N] [--msg B] [--src-ips N]
 */
#include "bench_util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define UDP_BATCH 32
#define LOSS_NS 200000000ull

struct ud_sock {
    int fd;
    int outstanding;
    uint64_t last; /* last reply or restart */
};

struct ud_ctx {
    struct bu_opts o;
    int window;
    char *buf; /* owned: UDP_BATCH * msg bytes */
    uint64_t sent, replies, lost, errors;
    int sending;
    struct bu_hist hist;
};

/* Send up to n datagrams on s stamped with now. Returns how many went. */
static int ud_send(struct ud_ctx *c, struct ud_sock *s, int n, uint64_t now)
{
    struct mmsghdr m[UDP_BATCH];
    struct iovec iov[UDP_BATCH];
    int i, r;

    if (n > UDP_BATCH)
        n = UDP_BATCH;
    if (c->o.count && c->sent + (uint64_t)n > c->o.count)
        n = (int)(c->o.count - c->sent);
    if (n <= 0)
        return 0;
    memset(m, 0, sizeof(m[0]) * (size_t)n);
    for (i = 0; i < n; i++) {
        char *p = c->buf + (size_t)i * (size_t)c->o.msg;

        memcpy(p, &now, sizeof(now));
        iov[i].iov_base = p;
        iov[i].iov_len = (size_t)c->o.msg;
        m[i].msg_hdr.msg_iov = &iov[i];
        m[i].msg_hdr.msg_iovlen = 1;
    }
    r = sendmmsg(s->fd, m, (unsigned)n, MSG_DONTWAIT);
    if (r < 0) {
        c->errors++;
        return 0;
    }
    s->outstanding += r;
    c->sent += (uint64_t)r;
    return r;
}

static void ud_read(struct ud_ctx *c, struct ud_sock *s)
{
    struct mmsghdr m[UDP_BATCH];
    struct iovec iov[UDP_BATCH];
    uint64_t now, t;
    int i, n;

    memset(m, 0, sizeof(m));
    for (i = 0; i < UDP_BATCH; i++) {
        iov[i].iov_base = c->buf + (size_t)i * (size_t)c->o.msg;
        iov[i].iov_len = (size_t)c->o.msg;
        m[i].msg_hdr.msg_iov = &iov[i];
        m[i].msg_hdr.msg_iovlen = 1;
    }
    n = recvmmsg(s->fd, m, UDP_BATCH, MSG_DONTWAIT, NULL);
    if (n <= 0)
        return;
    now = bu_now_ns();
    for (i = 0; i < n; i++) {
        if (m[i].msg_len < sizeof(t))
            continue;
        memcpy(&t, iov[i].iov_base, sizeof(t));
        if (t <= now)
            bu_hist_add(&c->hist, now - t);
    }
    c->replies += (uint64_t)n;
    s->outstanding -= n;
    if (s->outstanding < 0)
        s->outstanding = 0; /* a late reply to a datagram counted lost */
    s->last = now;
    if (c->sending)
        ud_send(c, s, c->window - s->outstanding, now);
}

static int usage(void)
{
    fprintf(stderr, "usage: bench_udp --target A:P [--conc N] [--window W] [--seconds S]\n"
                    "                 [--count N] [--msg B] [--src-ips N]\n");
    return 2;
}

int main(int argc, char **argv)
{
    struct ud_ctx c;
    struct ud_sock *s;
    struct epoll_event evs[256];
    uint64_t t0, end, now, last_sweep, stop_at = 0;
    int i, n, ep;

    memset(&c, 0, sizeof(c));
    bu_opts_default(&c.o);
    c.o.conc = 16;
    c.window = 4;
    for (i = 1; i < argc; i++) {
        int r;

        if (!strcmp(argv[i], "--window") && i + 1 < argc) {
            c.window = atoi(argv[++i]);
            if (c.window < 1 || c.window > UDP_BATCH)
                return usage();
            continue;
        }
        r = bu_parse_common(&c.o, argc, argv, &i);
        if (r != 1)
            return usage();
    }
    if (!c.o.have_target || c.o.msg < 16 || c.o.msg > 65000)
        return usage();
    bu_install_stop();
    s = calloc((size_t)c.o.conc, sizeof(*s));
    c.buf = calloc(UDP_BATCH, (size_t)c.o.msg);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (!s || !c.buf || ep < 0 || bu_hist_init(&c.hist) < 0)
        return 1;
    for (i = 0; i < c.o.conc; i++) {
        struct sockaddr_in src;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

        s[i].fd = fd;
        if (fd < 0)
            return 1;
        memset(&src, 0, sizeof(src));
        src.sin_family = AF_INET;
        src.sin_addr = bu_src_ip((unsigned)i, c.o.src_ips);
        if (bind(fd, (struct sockaddr *)&src, sizeof(src)) < 0 ||
            connect(fd, (struct sockaddr *)&c.o.target, sizeof(c.o.target)) < 0 ||
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            perror("bench_udp: socket");
            return 1;
        }
    }
    t0 = bu_now_ns();
    end = t0 + (uint64_t)(c.o.seconds * 1e9);
    last_sweep = t0;
    c.sending = 1;
    for (i = 0; i < c.o.conc; i++) {
        s[i].last = t0;
        ud_send(&c, &s[i], c.window, t0);
    }
    /* Bounded: sending stops at end; stragglers get 300 ms. */
    for (;;) {
        n = epoll_wait(ep, evs, 256, 50);
        for (i = 0; i < n; i++)
            ud_read(&c, &s[evs[i].data.u32]);
        now = bu_now_ns();
        if (c.sending && (now >= end || bu_stop || (c.o.count && c.sent >= c.o.count))) {
            c.sending = 0;
            stop_at = now;
        }
        if (!c.sending) {
            int out = 0;

            for (i = 0; i < c.o.conc; i++)
                out += s[i].outstanding;
            if (out == 0 || now - stop_at > 300000000ull) {
                c.lost += (uint64_t)out;
                break;
            }
            continue;
        }
        if (now - last_sweep < 100000000ull)
            continue;
        last_sweep = now;
        for (i = 0; i < c.o.conc; i++) {
            if (s[i].outstanding > 0 && now - s[i].last > LOSS_NS) {
                c.lost += (uint64_t)s[i].outstanding;
                s[i].outstanding = 0;
                s[i].last = now;
            }
            if (s[i].outstanding == 0)
                ud_send(&c, &s[i], c.window, now);
        }
    }
    now = stop_at ? stop_at : bu_now_ns();
    {
        double secs = (double)(now - t0) / 1e9;

        printf("udp: %llu requests, %llu replies (%llu lost) on %d sockets in %.2f s = %.0f "
               "replies/s, latency p50 %.0f us p99 %.0f us\n",
               (unsigned long long)c.sent, (unsigned long long)c.replies,
               (unsigned long long)c.lost, c.o.conc, secs, (double)c.replies / secs,
               bu_hist_pct(&c.hist, 50), bu_hist_pct(&c.hist, 99));
        printf("RESULT ops=%llu secs=%.3f rate=%.1f dgrams=%llu lost=%llu errors=%llu "
               "p50_us=%.1f p99_us=%.1f\n",
               (unsigned long long)c.replies, secs, (double)c.replies / secs,
               (unsigned long long)(c.sent + c.replies), (unsigned long long)c.lost,
               (unsigned long long)c.errors, bu_hist_pct(&c.hist, 50), bu_hist_pct(&c.hist, 99));
    }
    for (i = 0; i < c.o.conc; i++)
        close(s[i].fd);
    bu_hist_free(&c.hist);
    free(s);
    free(c.buf);
    close(ep);
    return 0;
}
