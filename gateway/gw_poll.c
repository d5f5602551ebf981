/*
 * gw_poll.c - the flows' epoll set, served first-in first-out (see
 * gw_poll.h for why and for the rules).
 */
#include "gw_poll.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "gwd.h"

static uint32_t epoll_bits(int events)
{
    return ((events & EV_READ) ? EPOLLIN : 0u) | ((events & EV_WRITE) ? EPOLLOUT : 0u);
}

/*
 * Makes the set's interest in w->fd `events` (EV_*; 0 = out of the set).
 * Returns 0 or -errno: then w is out of the set (kernel = 0).
 */
static int set_interest(struct gw_poll *p, struct gw_io *w, int events)
{
    struct epoll_event ev = {.events = epoll_bits(events), .data.ptr = w};
    int op = events == 0 ? EPOLL_CTL_DEL : w->kernel ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;

    p->ctl++;
    if (epoll_ctl(p->epfd, op, w->fd, &ev) < 0) {
        /* What the set holds can only differ from w->kernel after a
         * misuse (a closed fd's number reused under a registered watcher):
         * ADD and MOD swap once. */
        if (op == EPOLL_CTL_ADD && errno == EEXIST)
            op = EPOLL_CTL_MOD;
        else if (op == EPOLL_CTL_MOD && errno == ENOENT)
            op = EPOLL_CTL_ADD;
        else
            op = -1;
        if (op < 0 || epoll_ctl(p->epfd, op, w->fd, &ev) < 0) {
            int e = errno;
            w->kernel = 0;
            return events == 0 && (e == ENOENT || e == EBADF) ? 0 : -e;
        }
    }
    w->kernel = (uint8_t)events;
    return 0;
}

void gw_io_set(struct gw_io *w, int fd, int events)
{
    if (w->fd != fd)
        w->kernel = 0; /* the old fd was closed: out of the set */
    w->fd = fd;
    w->events = (uint8_t)events;
}

/* Puts w on the failed list; the loop's next pass calls it with EV_ERROR. */
static void fail(struct gw_poll *p, struct gw_io *w, int err)
{
    uint64_t held;
    p->watch_errors++;
    if (gw_log_allow(p->rl, gw_loop_ms(p->loop), &held))
        gw_log(GW_LOG_WARN, "epoll_ctl on fd %d: %s: its flow is closed (%lu more not logged)",
               w->fd, strerror(err), (unsigned long)held);
    if (w->failed)
        return;
    w->failed = true;
    w->next_failed = p->failed;
    p->failed = w;
    ev_feed_event(p->loop, &p->io, EV_CUSTOM);
}

void gw_io_start(struct gw_poll *p, struct gw_io *w)
{
    w->active = true;
    if (w->fd < 0 || (w->events & ~w->kernel) == 0)
        return;
    int rc = set_interest(p, w, w->events);
    if (rc < 0)
        fail(p, w, -rc);
}

void gw_io_stop(struct gw_poll *p, struct gw_io *w)
{
    (void)p;
    w->active = false;
}

void gw_io_forget(struct gw_poll *p, struct gw_io *w)
{
    w->active = false;
    w->kernel = 0;
    if (w->failed) {
        struct gw_io **pp = &p->failed;
        while (*pp != w)
            pp = &(*pp)->next_failed;
        *pp = w->next_failed;
        w->failed = false;
    }
    for (int i = p->cur + 1; i < p->n; i++)
        if (p->ev[i].data.ptr == w)
            p->ev[i].data.ptr = NULL;
}

/* Calls each watcher that could not be put in the set with EV_ERROR, one
 * at a time off the list: a callback may forget others still on it. The
 * ones that fail meanwhile are served at the next pass (fail() fed one). */
static void serve_failed(struct gw_poll *p)
{
    size_t n = 0;

    for (struct gw_io *w = p->failed; w; w = w->next_failed)
        n++;
    while (n-- > 0 && p->failed) {
        struct gw_io *w = p->failed;
        p->failed = w->next_failed;
        w->failed = false;
        if (w->active)
            w->cb(w, EV_ERROR);
    }
}

static void poll_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct gw_poll *p = io->data;

    (void)loop;
    (void)revents;
    if (p->failed)
        serve_failed(p);
    int n = epoll_wait(p->epfd, p->ev, GW_POLL_BATCH, 0);
    if (n <= 0)
        return;
    p->passes++;
    p->reports += (uint64_t)n;
    p->n = n;
    for (p->cur = 0; p->cur < n; p->cur++) {
        struct gw_io *w = p->ev[p->cur].data.ptr;
        if (!w)
            continue; /* forgotten while this batch was served */
        uint32_t e = p->ev[p->cur].events;
        int got = ((e & (EPOLLIN | EPOLLERR | EPOLLHUP)) ? EV_READ : 0) |
                  ((e & (EPOLLOUT | EPOLLERR | EPOLLHUP)) ? EV_WRITE : 0);
        int want = w->active ? w->events : 0;
        if (got & want) {
            w->cb(w, got & want);
            continue;
        }
        /* Reported for what it no longer wants: narrow the set now (an
         * event outside the registered ones changes nothing). */
        if (want != 0 && w->kernel == want)
            continue;
        int rc = set_interest(p, w, want);
        if (rc < 0)
            fail(p, w, -rc);
    }
    p->n = 0;
    p->cur = 0;
}

int gw_poll_init(struct gw_poll *p, struct ev_loop *loop, struct gw_ratelimit *rl)
{
    memset(p, 0, sizeof(*p));
    p->rl = rl;
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (p->epfd < 0)
        return -errno;
    p->loop = loop;
    ev_io_init(&p->io, poll_cb, p->epfd, EV_READ);
    p->io.data = p;
    ev_io_start(loop, &p->io);
    return 0;
}

void gw_poll_destroy(struct gw_poll *p)
{
    if (p->epfd < 0)
        return;
    ev_io_stop(p->loop, &p->io);
    close(p->epfd);
    p->epfd = -1;
}
