/*
 * gw_poll.h - the flows' sockets (both sides of a TCP flow, a UDP flow's
 * upstream socket) in an epoll set of gwd's own, served in the order the
 * kernel reported them.
 *
 * libev invokes the watchers made ready by one epoll_wait last-in first-out:
 * the socket that became ready first is served last. Over a batch of tens of
 * relay sockets that puts the wait of a whole batch on the requests that
 * waited longest, which fattens the latency tail. gw_poll keeps the flows'
 * sockets in a second epoll set, registered in the libev loop as one ev_io;
 * when that set is readable it takes a batch with epoll_wait and serves it
 * first-in first-out. Everything else (listeners, timers, signals, the
 * control socket, health checks) stays on libev.
 *
 * A gw_io is used like an ev_io: init, set (while stopped), start, stop. As
 * in libev, stopping is lazy: the fd stays in the epoll set with its old
 * interest until it is reported again, and only then is the interest
 * narrowed (EPOLL_CTL_MOD) or the fd taken out (EPOLL_CTL_DEL). A socket
 * closed before that costs no epoll_ctl at all, since closing a socket takes
 * it out of every epoll set. Hence the one rule: call gw_io_forget before
 * closing a watched socket, never close it under an active or registered
 * watcher without it.
 */
#ifndef GW_POLL_H
#define GW_POLL_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/epoll.h>

/* Readiness reports taken per epoll_wait (more wait for the next pass). */
#define GW_POLL_BATCH 256

struct gw_io;
struct gw_ratelimit; /* gwd.h */
typedef void (*gw_io_cb)(struct gw_io *w, int revents);

struct gw_io {
    int fd;         /* the socket, or -1 */
    uint8_t events; /* EV_READ | EV_WRITE wanted while active */
    bool active;
    uint8_t kernel; /* the interest registered in the epoll set (EV_*), 0 = not in it */
    bool failed;    /* on the failed list (see gw_io_start) */
    gw_io_cb cb;    /* called with revents & events, or EV_ERROR */
    void *data;
    struct gw_io *next_failed;
};

struct gw_poll {
    int epfd;
    struct ev_loop *loop;    /* borrowed */
    ev_io io;                /* epfd in the libev loop */
    int cur, n;              /* the batch being served: ev[cur] now, n in all */
    uint64_t passes;         /* epoll_wait calls that returned reports */
    uint64_t reports;        /* readiness reports served or dropped */
    uint64_t ctl;            /* epoll_ctl calls */
    uint64_t watch_errors;   /* registrations the set refused (gw_io_start) */
    struct gw_io *failed;    /* watchers that could not be put in the set */
    struct gw_ratelimit *rl; /* borrowed: paces the warnings about them */
    struct epoll_event ev[GW_POLL_BATCH];
};

/* Makes the epoll set and starts its watcher on loop; warnings about
 * sockets the set refuses are paced by rl (gw_log_allow). Returns 0 or
 * -errno. */
int gw_poll_init(struct gw_poll *p, struct ev_loop *loop, struct gw_ratelimit *rl);
/* Stops the watcher and closes the set (the sockets are closed by then). */
void gw_poll_destroy(struct gw_poll *p);

static inline void gw_io_init(struct gw_io *w, gw_io_cb cb, int fd, int events)
{
    w->fd = fd;
    w->events = (uint8_t)events;
    w->active = false;
    w->kernel = 0;
    w->failed = false;
    w->cb = cb;
    w->next_failed = NULL;
}

/* Sets fd and events of a stopped watcher. A new fd: the old one must be
 * closed already (after gw_io_forget), so that it is out of the set. */
void gw_io_set(struct gw_io *w, int fd, int events);
/* Starts watching w->fd for w->events (one epoll_ctl only when the set's
 * interest lacks some of them). When the set cannot take the fd (ENOMEM,
 * ENOSPC: fs.epoll.max_user_watches), w->cb gets EV_ERROR on the next pass
 * of the loop, where its owner can close the socket. */
void gw_io_start(struct gw_poll *p, struct gw_io *w);
/* Stops calling w->cb; the set is narrowed lazily (see above). */
void gw_io_stop(struct gw_poll *p, struct gw_io *w);
/* w->fd is about to be closed: stops w, forgets its registration and drops
 * its reports still waiting in the batch being served. */
void gw_io_forget(struct gw_poll *p, struct gw_io *w);

static inline bool gw_io_active(const struct gw_io *w)
{
    return w->active;
}

#endif /* GW_POLL_H */
