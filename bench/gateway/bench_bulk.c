/*
 * bench_bulk - stream bytes through --conc TCP connections for --seconds (or
 * --count bytes in all). Default mode "up": the client only sends, toward a
 * sink; at the end it half-closes and waits for the peer's EOF so that every
 * byte counted has reached the far end; it sends with sendfile(2) from a
 * memfd so that the load side copies nothing and the proxy is what limits.
 * --echo: the peer echoes, and the client counts what comes back. Prints Gbit/s and one "RESULT ..." line.
 *
 * usage: bench_bulk --target A:P [--conc N] [--seconds S] [--count BYTES]
 *                   [--msg CHUNK] [--echo]
 */
#include "bench_util.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

struct bk_conn {
    int fd;
    int wr_done; /* half-closed */
    uint64_t sent, recvd;
};

static int usage(void)
{
    fprintf(stderr, "usage: bench_bulk --target A:P [--conc N] [--seconds S] [--count BYTES]\n"
                    "                  [--msg CHUNK] [--echo]\n");
    return 2;
}

int main(int argc, char **argv)
{
    struct bu_opts o;
    struct bk_conn *b;
    struct epoll_event evs[64];
    char *buf;
    int echo = 0, msg_set = 0;
    uint64_t t0, end, now, sent = 0, recvd = 0, errors = 0;
    int i, n, ep, live = 0, mfd = -1;

    bu_opts_default(&o);
    o.conc = 1;
    for (i = 1; i < argc; i++) {
        int r;

        if (!strcmp(argv[i], "--echo")) {
            echo = 1;
            continue;
        }
        if (!strcmp(argv[i], "--msg"))
            msg_set = 1;
        r = bu_parse_common(&o, argc, argv, &i);
        if (r != 1)
            return usage();
    }
    if (!o.have_target)
        return usage();
    if (!msg_set)
        o.msg = 256 * 1024;
    bu_install_stop();
    b = calloc((size_t)o.conc, sizeof(*b));
    buf = malloc((size_t)o.msg);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (!b || !buf || ep < 0)
        return 1;
    memset(buf, 'b', (size_t)o.msg);
    if (!echo) {
        mfd = memfd_create("bench_bulk", MFD_CLOEXEC);
        if (mfd < 0 || write(mfd, buf, (size_t)o.msg) != o.msg)
            return 1;
    }
    for (i = 0; i < o.conc; i++) {
        struct epoll_event ev = {.events = EPOLLOUT | (echo ? EPOLLIN : 0),
                                 .data.u32 = (uint32_t)i};
        struct pollfd p;
        int fd = bu_tcp_socket(bu_src_ip((unsigned)i, o.src_ips), 0);

        b[i].fd = -1;
        if (fd < 0)
            return 1;
        p.fd = fd;
        p.events = POLLOUT;
        if ((connect(fd, (struct sockaddr *)&o.target, sizeof(o.target)) < 0 &&
             errno != EINPROGRESS) ||
            poll(&p, 1, 3000) != 1 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            fprintf(stderr, "bench_bulk: connection %d failed\n", i);
            close(fd);
            errors++;
            continue;
        }
        b[i].fd = fd;
        live++;
    }
    t0 = bu_now_ns();
    end = t0 + (uint64_t)(o.seconds * 1e9);
    /* Bounded: sending stops at end; draining gives up 10 s later. */
    while (live > 0) {
        now = bu_now_ns();
        if (now > end + 10000000000ull)
            break;
        n = epoll_wait(ep, evs, 64, 100);
        now = bu_now_ns();
        for (i = 0; i < n; i++) {
            struct bk_conn *c = &b[evs[i].data.u32];
            ssize_t r;

            if (c->fd < 0)
                continue;
            if (!c->wr_done && (evs[i].events & EPOLLOUT)) {
                if (now >= end || bu_stop || (o.count && sent >= o.count)) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = evs[i].data.u32};

                    shutdown(c->fd, SHUT_WR);
                    c->wr_done = 1;
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                } else {
                    off_t off = 0;

                    if (mfd >= 0)
                        r = sendfile(c->fd, mfd, &off, (size_t)o.msg);
                    else
                        r = send(c->fd, buf, (size_t)o.msg, MSG_NOSIGNAL);
                    if (r > 0) {
                        c->sent += (uint64_t)r;
                        sent += (uint64_t)r;
                    } else if (r < 0 && errno != EAGAIN) {
                        close(c->fd);
                        c->fd = -1;
                        errors++;
                        live--;
                        continue;
                    }
                }
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                r = recv(c->fd, buf, (size_t)o.msg, 0);
                if (r > 0) {
                    c->recvd += (uint64_t)r;
                    recvd += (uint64_t)r;
                } else if (r == 0 || errno != EAGAIN) {
                    if (r < 0 || !c->wr_done || (echo && c->recvd != c->sent))
                        errors++;
                    close(c->fd);
                    c->fd = -1;
                    live--;
                }
            }
        }
    }
    now = bu_now_ns();
    {
        double secs = (double)(now - t0) / 1e9;
        uint64_t bytes = echo ? recvd : sent;
        double gbps = (double)bytes * 8 / secs / 1e9;

        printf("bulk (%s): %llu bytes on %d conns in %.2f s = %.2f Gbit/s, errors %llu\n",
               echo ? "echo" : "up", (unsigned long long)bytes, o.conc, secs, gbps,
               (unsigned long long)errors);
        printf("RESULT ops=%llu secs=%.3f rate=%.1f gbps=%.3f errors=%llu\n",
               (unsigned long long)bytes, secs, (double)bytes / secs, gbps,
               (unsigned long long)(errors + (uint64_t)live));
    }
    for (i = 0; i < o.conc; i++)
        if (b[i].fd >= 0)
            close(b[i].fd);
    free(b);
    free(buf);
    if (mfd >= 0)
        close(mfd);
    close(ep);
    return 0;
}
