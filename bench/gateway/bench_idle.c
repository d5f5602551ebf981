/*
 * bench_idle - open --conc TCP flows (at most 256 connecting at once), make
 * each exchange one --msg byte echo so that both legs of a proxied flow are
 * established, then hold them all idle. Prints "READY flows=N failed=M" on
 * stdout when every flow is up (or has failed), then holds until SIGTERM/
 * SIGINT or --seconds, and prints a "RESULT ..." line. Opening gives up
 * after 60 s.
 *
 * usage: bench_idle --target A:P [--conc FLOWS] [--seconds HOLD] [--msg B]
 *                   [--src-ips N]
 */
#include "bench_util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define IDLE_INFLIGHT 256

enum idle_state { IS_NONE, IS_CONNECTING, IS_WAIT_ECHO, IS_UP, IS_FAILED };

struct idle_flow {
    int fd;
    enum idle_state st;
    int got;
};

static int usage(void)
{
    fprintf(stderr, "usage: bench_idle --target A:P [--conc FLOWS] [--seconds HOLD] [--msg B]\n"
                    "                  [--src-ips N]\n");
    return 2;
}

int main(int argc, char **argv)
{
    struct bu_opts o;
    struct idle_flow *f;
    struct epoll_event evs[256];
    char *msg, *rbuf;
    uint64_t t0, now;
    int i, n, ep, next = 0, inflight = 0, up = 0, failed = 0;

    bu_opts_default(&o);
    o.conc = 1000;
    o.msg = 16;
    o.seconds = 30;
    for (i = 1; i < argc; i++) {
        if (bu_parse_common(&o, argc, argv, &i) != 1)
            return usage();
    }
    if (!o.have_target)
        return usage();
    bu_install_stop();
    f = calloc((size_t)o.conc, sizeof(*f));
    msg = malloc((size_t)o.msg);
    rbuf = malloc((size_t)o.msg);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (!f || !msg || !rbuf || ep < 0)
        return 1;
    memset(msg, 'i', (size_t)o.msg);
    t0 = bu_now_ns();
    /* Opening: bounded by 60 s. */
    while (up + failed < o.conc && !bu_stop && bu_now_ns() - t0 < 60000000000ull) {
        while (inflight < IDLE_INFLIGHT && next < o.conc) {
            struct idle_flow *x = &f[next];
            struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)next};
            int fd = bu_tcp_socket(bu_src_ip((unsigned)next, o.src_ips), 0);

            next++;
            if (fd < 0 || (connect(fd, (struct sockaddr *)&o.target, sizeof(o.target)) < 0 &&
                           errno != EINPROGRESS) ||
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
                if (fd >= 0)
                    close(fd);
                x->st = IS_FAILED;
                failed++;
                continue;
            }
            x->fd = fd;
            x->st = IS_CONNECTING;
            inflight++;
        }
        n = epoll_wait(ep, evs, 256, 100);
        for (i = 0; i < n; i++) {
            struct idle_flow *x = &f[evs[i].data.u32];
            ssize_t r;

            if (x->st == IS_CONNECTING) {
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = evs[i].data.u32};

                if (send(x->fd, msg, (size_t)o.msg, MSG_NOSIGNAL) != o.msg ||
                    epoll_ctl(ep, EPOLL_CTL_MOD, x->fd, &ev) < 0) {
                    close(x->fd);
                    x->st = IS_FAILED;
                    failed++;
                    inflight--;
                    continue;
                }
                x->st = IS_WAIT_ECHO;
            } else if (x->st == IS_WAIT_ECHO) {
                r = recv(x->fd, rbuf, (size_t)(o.msg - x->got), 0);
                if (r < 0 && errno == EAGAIN)
                    continue;
                if (r <= 0) {
                    close(x->fd);
                    x->st = IS_FAILED;
                    failed++;
                    inflight--;
                    continue;
                }
                x->got += (int)r;
                if (x->got < o.msg)
                    continue;
                epoll_ctl(ep, EPOLL_CTL_DEL, x->fd, NULL);
                x->st = IS_UP;
                up++;
                inflight--;
            }
        }
    }
    now = bu_now_ns();
    printf("READY flows=%d failed=%d open_secs=%.3f\n", up, o.conc - up,
           (double)(now - t0) / 1e9);
    fflush(stdout);
    /* Holding: bounded by --seconds. */
    t0 = bu_now_ns();
    while (!bu_stop && bu_now_ns() - t0 < (uint64_t)(o.seconds * 1e9))
        usleep(50000);
    printf("RESULT ops=%d secs=%.3f rate=0 errors=%d\n", up,
           (double)(bu_now_ns() - t0) / 1e9, o.conc - up);
    for (i = 0; i < o.conc; i++)
        if (f[i].st == IS_CONNECTING || f[i].st == IS_WAIT_ECHO || f[i].st == IS_UP)
            close(f[i].fd);
    free(f);
    free(msg);
    free(rbuf);
    close(ep);
    return 0;
}
