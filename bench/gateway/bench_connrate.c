/*
 * bench_connrate - new TCP connection per request: connect, send --msg bytes,
 * read the echo back, close; --conc connections in flight, one epoll loop.
 * Bounded by --seconds and --count; a connection stuck for 5 s is counted as
 * a timeout. Prints a human line and one "RESULT key=value..." line.
 * --rate R paces the starts at R per second (an offered load below what the
 * proxy can take, so that its CPU per connection is not tied to how fast it
 * went): a start that finds all --conc slots busy waits for one (the loop
 * passes that found one due and no slot free are counted: 0 = the pace held).
 *
 * usage: bench_connrate --target A:P [--conc N] [--seconds S] [--count N]
 *                       [--msg B] [--src-ips N] [--rst] [--rate R]
 */
#include "bench_util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define CONN_TIMEOUT_NS 5000000000ull

struct cr_conn {
    int fd; /* -1 when the slot is free */
    int sent;
    int got;
    uint64_t t0;
};

struct cr_ctx {
    struct bu_opts o;
    int rst;
    double rate; /* starts per second; 0 = as fast as the slots allow */
    int ep;
    struct cr_conn *slot; /* owned: o.conc slots */
    char *msg;            /* owned */
    char *rbuf;           /* owned */
    uint64_t started, done, errors, timeouts, connect_errs, late;
    uint64_t t0;
    unsigned next_src;
    struct bu_hist hist;
};

static int cr_start(struct cr_ctx *c, int i)
{
    struct cr_conn *s = &c->slot[i];
    struct epoll_event ev;
    int fd = bu_tcp_socket(bu_src_ip(c->next_src++, c->o.src_ips), c->rst);

    if (fd < 0)
        return fd;
    s->t0 = bu_now_ns();
    if (connect(fd, (struct sockaddr *)&c->o.target, sizeof(c->o.target)) < 0 &&
        errno != EINPROGRESS) {
        int err = -errno;

        close(fd);
        return err;
    }
    ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
    ev.data.u32 = (uint32_t)i;
    if (epoll_ctl(c->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        close(fd);
        return -errno;
    }
    s->fd = fd;
    s->sent = 0;
    s->got = 0;
    c->started++;
    return 0;
}

static void cr_end(struct cr_ctx *c, int i, int ok)
{
    struct cr_conn *s = &c->slot[i];

    close(s->fd); /* also removes it from the epoll set */
    s->fd = -1;
    if (ok) {
        c->done++;
        bu_hist_add(&c->hist, bu_now_ns() - s->t0);
    } else {
        c->errors++;
    }
}

static void cr_event(struct cr_ctx *c, int i, uint32_t events)
{
    struct cr_conn *s = &c->slot[i];
    ssize_t n;

    if (s->fd < 0)
        return;
    if (!s->sent && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        n = send(s->fd, c->msg, (size_t)c->o.msg, MSG_NOSIGNAL);
        if (n != c->o.msg) {
            cr_end(c, i, 0);
            return;
        }
        s->sent = 1;
    }
    if (!s->sent || !(events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        return;
    for (;;) {
        n = recv(s->fd, c->rbuf, (size_t)c->o.msg, 0);
        if (n > 0) {
            s->got += (int)n;
            if (s->got >= c->o.msg) {
                cr_end(c, i, 1);
                return;
            }
            continue;
        }
        if (n < 0 && errno == EAGAIN)
            return;
        cr_end(c, i, 0); /* EOF before the whole echo, or an error */
        return;
    }
}

static int usage(void)
{
    fprintf(stderr, "usage: bench_connrate --target A:P [--conc N] [--seconds S] [--count N]\n"
                    "                      [--msg B] [--src-ips N] [--rst] [--rate R]\n");
    return 2;
}

static int want_more(const struct cr_ctx *c, uint64_t now, uint64_t end)
{
    return !bu_stop && now < end && (c->o.count == 0 || c->started < c->o.count);
}

/* With --rate: true when the schedule has a start due at `now`. */
static int start_due(const struct cr_ctx *c, uint64_t now)
{
    return c->rate <= 0 || (double)c->started < (double)(now - c->t0) * c->rate / 1e9;
}

int main(int argc, char **argv)
{
    struct cr_ctx c;
    struct epoll_event evs[256];
    uint64_t t0, end, now, last_sweep;
    int i, n, live;

    memset(&c, 0, sizeof(c));
    bu_opts_default(&c.o);
    for (i = 1; i < argc; i++) {
        int r = bu_parse_common(&c.o, argc, argv, &i);

        if (r < 0)
            return usage();
        if (r == 1)
            continue;
        if (!strcmp(argv[i], "--rst"))
            c.rst = 1;
        else if (!strcmp(argv[i], "--rate") && i + 1 < argc && (c.rate = atof(argv[++i])) > 0)
            continue;
        else
            return usage();
    }
    if (!c.o.have_target)
        return usage();
    bu_install_stop();
    c.slot = calloc((size_t)c.o.conc, sizeof(*c.slot));
    c.msg = malloc((size_t)c.o.msg);
    c.rbuf = malloc((size_t)c.o.msg);
    c.ep = epoll_create1(EPOLL_CLOEXEC);
    if (!c.slot || !c.msg || !c.rbuf || c.ep < 0 || bu_hist_init(&c.hist) < 0)
        return 1;
    memset(c.msg, 'c', (size_t)c.o.msg);
    t0 = bu_now_ns();
    c.t0 = t0;
    end = t0 + (uint64_t)(c.o.seconds * 1e9);
    last_sweep = t0;
    for (i = 0; i < c.o.conc; i++) {
        c.slot[i].fd = -1;
        if (want_more(&c, t0, end) && start_due(&c, t0) && cr_start(&c, i) < 0)
            c.connect_errs++;
    }
    /* Bounded: stops at end (plus at most one connection timeout to drain). */
    for (;;) {
        n = epoll_wait(c.ep, evs, 256, c.rate > 0 ? 1 : 100);
        for (i = 0; i < n; i++)
            cr_event(&c, (int)evs[i].data.u32, evs[i].events);
        now = bu_now_ns();
        live = 0;
        for (i = 0; i < c.o.conc; i++) {
            struct cr_conn *s = &c.slot[i];

            if (s->fd >= 0 && now - last_sweep > 100000000ull && now - s->t0 > CONN_TIMEOUT_NS) {
                c.timeouts++;
                cr_end(&c, i, 0);
            }
            if (s->fd < 0 && want_more(&c, now, end) && start_due(&c, now) && cr_start(&c, i) < 0)
                c.connect_errs++;
            live += s->fd >= 0;
        }
        /* Paced and every slot busy with a start due: the proxy lags. */
        if (c.rate > 0 && live == c.o.conc && want_more(&c, now, end) && start_due(&c, now))
            c.late++;
        if (now - last_sweep > 100000000ull)
            last_sweep = now;
        if (live == 0 && !want_more(&c, now, end))
            break;
        if (now > end + CONN_TIMEOUT_NS + 1000000000ull)
            break;
    }
    now = bu_now_ns();
    {
        double secs = (double)(now - t0) / 1e9;

        printf("connrate: %llu conns in %.2f s = %.0f conn/s, errors %llu (timeouts %llu, "
               "connect %llu), latency p50 %.0f us p99 %.0f us",
               (unsigned long long)c.done, secs, (double)c.done / secs,
               (unsigned long long)c.errors, (unsigned long long)c.timeouts,
               (unsigned long long)c.connect_errs, bu_hist_pct(&c.hist, 50),
               bu_hist_pct(&c.hist, 99));
        if (c.rate > 0)
            printf(", paced at %.0f/s (%llu passes found a start due and no free slot)",
                   c.rate, (unsigned long long)c.late);
        printf("\n");
        printf("RESULT ops=%llu secs=%.3f rate=%.1f errors=%llu p50_us=%.1f p99_us=%.1f\n",
               (unsigned long long)c.done, secs, (double)c.done / secs,
               (unsigned long long)(c.errors + c.connect_errs), bu_hist_pct(&c.hist, 50),
               bu_hist_pct(&c.hist, 99));
    }
    for (i = 0; i < c.o.conc; i++)
        if (c.slot[i].fd >= 0)
            close(c.slot[i].fd);
    bu_hist_free(&c.hist);
    free(c.slot);
    free(c.msg);
    free(c.rbuf);
    close(c.ep);
    return 0;
}
