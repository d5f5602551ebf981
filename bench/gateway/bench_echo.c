/*
 * bench_echo - the backend of the gateway benchmarks: one epoll loop serving
 * a TCP echo port, a TCP sink port (discards with MSG_TRUNC, no copy; closes
 * on EOF) and a
 * UDP echo port. Small and fast so that what is measured is the proxy.
 *
 * usage: bench_echo [--tcp A:P] [--sink A:P] [--udp A:P] [--seconds S]
 * Port 0 lets the kernel choose; each listener is announced on stdout as
 * "LISTEN tcp|sink|udp PORT". Runs until SIGTERM/SIGINT or S seconds (default
 * 3600), prints counters to stderr at exit.
 */
#include "bench_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

enum echo_kind { EK_FREE, EK_LISTEN_ECHO, EK_LISTEN_SINK, EK_UDP, EK_ECHO, EK_SINK };

struct echo_conn {
    enum echo_kind kind;
    int eof;     /* peer sent FIN; close once pending bytes are out */
    char *pend;  /* owned: bytes read but not yet written back */
    size_t plen; /* valid bytes in pend */
    size_t poff; /* bytes of pend already written */
};

struct echo_ctx {
    int ep;
    struct echo_conn *conns; /* owned: indexed by fd */
    int nconns;
    char *buf; /* owned: read buffer */
    size_t buflen;
    uint64_t accepted, closed, bytes, dgrams;
};

#define UDP_BATCH 64

static int listen_on(const struct sockaddr_in *a, int type)
{
    int one = 1;
    int fd = socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)a, sizeof(*a)) < 0 ||
        (type == SOCK_STREAM && listen(fd, 4096) < 0)) {
        int err = -errno;

        close(fd);
        return err;
    }
    return fd;
}

static int watch(struct echo_ctx *c, int fd, enum echo_kind kind)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};

    if (fd >= c->nconns)
        return -EMFILE;
    memset(&c->conns[fd], 0, sizeof(c->conns[fd]));
    c->conns[fd].kind = kind;
    return epoll_ctl(c->ep, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

static void conn_close(struct echo_ctx *c, int fd)
{
    free(c->conns[fd].pend);
    memset(&c->conns[fd], 0, sizeof(c->conns[fd]));
    close(fd);
    c->closed++;
}

static void do_accept(struct echo_ctx *c, int lfd, enum echo_kind kind)
{
    int one = 1;
    int i;

    for (i = 0; i < 256; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0)
            return;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (watch(c, fd, kind) < 0) {
            close(fd);
            continue;
        }
        c->accepted++;
    }
}

static void set_events(struct echo_ctx *c, int fd, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.fd = fd};

    epoll_ctl(c->ep, EPOLL_CTL_MOD, fd, &ev);
}

/* Write what is pending; returns 1 when all out, 0 when blocked, -1 on error. */
static int flush_pend(struct echo_conn *e, int fd)
{
    while (e->poff < e->plen) {
        ssize_t n = send(fd, e->pend + e->poff, e->plen - e->poff, MSG_NOSIGNAL);

        if (n < 0)
            return errno == EAGAIN ? 0 : -1;
        e->poff += (size_t)n;
    }
    free(e->pend);
    e->pend = NULL;
    e->plen = e->poff = 0;
    return 1;
}

static void on_echo(struct echo_ctx *c, int fd, uint32_t events)
{
    struct echo_conn *e = &c->conns[fd];
    ssize_t n, w;
    int r;

    if (e->pend) {
        r = flush_pend(e, fd);
        if (r < 0 || (r == 1 && e->eof)) {
            conn_close(c, fd);
        } else if (r == 1) {
            set_events(c, fd, EPOLLIN);
        }
        return;
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    n = recv(fd, c->buf, c->buflen, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN)) {
        conn_close(c, fd);
        return;
    }
    if (n < 0)
        return;
    c->bytes += (uint64_t)n;
    w = send(fd, c->buf, (size_t)n, MSG_NOSIGNAL);
    if (w < 0 && errno != EAGAIN) {
        conn_close(c, fd);
        return;
    }
    if (w < 0)
        w = 0;
    if (w < n) {
        e->pend = malloc((size_t)(n - w));
        if (e->pend == NULL) {
            conn_close(c, fd);
            return;
        }
        memcpy(e->pend, c->buf + w, (size_t)(n - w));
        e->plen = (size_t)(n - w);
        e->poff = 0;
        set_events(c, fd, EPOLLOUT);
    }
}

static void on_sink(struct echo_ctx *c, int fd)
{
    int i;

    for (i = 0; i < 4; i++) {
        /* MSG_TRUNC on TCP drops the bytes without copying them out. */
        ssize_t n = recv(fd, c->buf, c->buflen, MSG_TRUNC);

        if (n == 0 || (n < 0 && errno != EAGAIN)) {
            conn_close(c, fd);
            return;
        }
        if (n < 0)
            return;
        c->bytes += (uint64_t)n;
        if ((size_t)n < c->buflen)
            return;
    }
}

static void on_udp(struct echo_ctx *c, int fd)
{
    struct mmsghdr msgs[UDP_BATCH];
    struct iovec iov[UDP_BATCH];
    struct sockaddr_in from[UDP_BATCH];
    size_t slot = c->buflen / UDP_BATCH;
    int i, n;

    memset(msgs, 0, sizeof(msgs));
    for (i = 0; i < UDP_BATCH; i++) {
        iov[i].iov_base = c->buf + (size_t)i * slot;
        iov[i].iov_len = slot;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &from[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(from[i]);
    }
    n = recvmmsg(fd, msgs, UDP_BATCH, MSG_DONTWAIT, NULL);
    if (n <= 0)
        return;
    for (i = 0; i < n; i++)
        iov[i].iov_len = msgs[i].msg_len;
    c->dgrams += (uint64_t)n;
    sendmmsg(fd, msgs, (unsigned)n, MSG_DONTWAIT);
}

static int usage(void)
{
    fprintf(stderr, "usage: bench_echo [--tcp A:P] [--sink A:P] [--udp A:P] [--seconds S]\n");
    return 2;
}

int main(int argc, char **argv)
{
    struct echo_ctx c;
    struct sockaddr_in a;
    struct rlimit rl;
    struct epoll_event evs[256];
    double seconds = 3600;
    uint64_t deadline;
    socklen_t alen;
    int i, n, fd, any = 0;

    memset(&c, 0, sizeof(c));
    bu_install_stop();
    getrlimit(RLIMIT_NOFILE, &rl);
    c.nconns = rl.rlim_cur > 1048576 ? 1048576 : (int)rl.rlim_cur;
    c.conns = calloc((size_t)c.nconns, sizeof(*c.conns));
    c.buflen = 256 * 1024;
    c.buf = malloc(c.buflen);
    c.ep = epoll_create1(EPOLL_CLOEXEC);
    if (c.conns == NULL || c.buf == NULL || c.ep < 0)
        return 1;
    for (i = 1; i < argc; i++) {
        enum echo_kind kind;
        int type = SOCK_STREAM;

        if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
            seconds = atof(argv[++i]);
            if (seconds <= 0 || seconds > 86400)
                return usage();
            continue;
        }
        if (!strcmp(argv[i], "--tcp"))
            kind = EK_LISTEN_ECHO;
        else if (!strcmp(argv[i], "--sink"))
            kind = EK_LISTEN_SINK;
        else if (!strcmp(argv[i], "--udp"))
            kind = EK_UDP, type = SOCK_DGRAM;
        else
            return usage();
        if (i + 1 >= argc || bu_parse_addr(argv[++i], &a) < 0)
            return usage();
        fd = listen_on(&a, type);
        if (fd < 0 || watch(&c, fd, kind) < 0) {
            fprintf(stderr, "bench_echo: cannot listen on %s: %s\n", argv[i], strerror(-fd));
            return 1;
        }
        alen = sizeof(a);
        getsockname(fd, (struct sockaddr *)&a, &alen);
        printf("LISTEN %s %u\n", argv[i - 1] + 2, (unsigned)ntohs(a.sin_port));
        any = 1;
    }
    if (!any)
        return usage();
    fflush(stdout);
    deadline = bu_now_ns() + (uint64_t)(seconds * 1e9);
    while (!bu_stop && bu_now_ns() < deadline) {
        n = epoll_wait(c.ep, evs, 256, 200);
        for (i = 0; i < n; i++) {
            fd = evs[i].data.fd;
            switch (c.conns[fd].kind) {
            case EK_LISTEN_ECHO:
                do_accept(&c, fd, EK_ECHO);
                break;
            case EK_LISTEN_SINK:
                do_accept(&c, fd, EK_SINK);
                break;
            case EK_UDP:
                on_udp(&c, fd);
                break;
            case EK_ECHO:
                on_echo(&c, fd, evs[i].events);
                break;
            case EK_SINK:
                on_sink(&c, fd);
                break;
            case EK_FREE:
                break;
            }
        }
    }
    fprintf(stderr, "bench_echo: accepted=%llu closed=%llu bytes=%llu dgrams=%llu\n",
            (unsigned long long)c.accepted, (unsigned long long)c.closed,
            (unsigned long long)c.bytes, (unsigned long long)c.dgrams);
    for (fd = 0; fd < c.nconns; fd++)
        if (c.conns[fd].kind != EK_FREE)
            conn_close(&c, fd);
    free(c.conns);
    free(c.buf);
    close(c.ep);
    return 0;
}
