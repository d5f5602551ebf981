/*
 * netprobe.c - one client flow for the integration suites, seen from the client.
 *
 * Opens one TCP connection (or one connected UDP socket) to a gwsim backend,
 * directly or through a NAT (gwd, or the kernel's), reads the backend's hello
 * "gwsim-backend NAME peer=IP:PORT", checks that an echo comes back unchanged,
 * and prints one JSON line: what the client used and what the backend saw.
 *
 *   netprobe [-b ADDR[:PORT]] [-t SECONDS] [-H SECONDS] tcp|udp IP PORT
 *   -> {"proto":"tcp","local":"10.201.1.11:40512","backend":"b1","seen":"10.202.0.1:29007","tries":1}
 *
 * A UDP probe sends its datagram again each second without a reply; "tries"
 * says how many it sent (the suites accept more than one only where a lost
 * datagram has another explanation).
 *
 * -H keeps the flow open that many seconds after printing, so the NAT tables can be
 * read while it is live. Exit 0 on success, 1 on any failed step (reason on stderr),
 * 2 on bad usage. Every wait is bounded by -t (default 5 s).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PROBE_BUF 2048
#define PROBE_ECHO "netprobe-echo\n"

struct probe {
    bool udp;
    int tries; /* UDP: datagrams sent until the reply came */
    int timeout_ms;
    int hold_s;
    const char *bind_ip; /* borrowed, may be NULL */
    struct sockaddr_in dst;
    int fd;
};

static void usage(void)
{
    fprintf(stderr, "usage: netprobe [-b ADDR[:PORT]] [-t SECONDS] [-H SECONDS] tcp|udp IP PORT\n");
    exit(2);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until fd has `events` or the deadline passes. 0, or -ETIMEDOUT / -errno. */
static int wait_fd(int fd, short events, long long deadline)
{
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, (int)left);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -errno;
    }
}

static int probe_connect(struct probe *p, long long deadline)
{
    p->fd = socket(AF_INET, (p->udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK, 0);
    if (p->fd < 0)
        return -errno;
    if (p->bind_ip) {
        /* ADDR or ADDR:PORT; a fixed port may be reused right after an earlier run. */
        char ip[INET_ADDRSTRLEN];
        const char *colon = strchr(p->bind_ip, ':');
        size_t il = colon ? (size_t)(colon - p->bind_ip) : strlen(p->bind_ip);
        struct sockaddr_in b = {.sin_family = AF_INET};
        int one = 1, port = colon ? atoi(colon + 1) : 0;
        if (il >= sizeof(ip) || port < 0 || port > 65535)
            return -EINVAL;
        memcpy(ip, p->bind_ip, il);
        ip[il] = '\0';
        if (inet_pton(AF_INET, ip, &b.sin_addr) != 1)
            return -EINVAL;
        b.sin_port = htons((uint16_t)port);
        if (setsockopt(p->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
            bind(p->fd, (struct sockaddr *)&b, sizeof(b)) < 0)
            return -errno;
    }
    if (connect(p->fd, (struct sockaddr *)&p->dst, sizeof(p->dst)) == 0)
        return 0;
    if (errno != EINPROGRESS)
        return -errno;
    int r = wait_fd(p->fd, POLLOUT, deadline);
    if (r < 0)
        return r;
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return -errno;
    return -err;
}

/* Reads until buf holds `want` bytes (TCP), or one datagram (UDP). Returns length. */
static ssize_t probe_read(struct probe *p, char *buf, size_t cap, size_t want, long long deadline)
{
    size_t have = 0;
    while (have < want && have < cap - 1) {
        int r = wait_fd(p->fd, POLLIN, deadline);
        if (r < 0)
            return r;
        ssize_t n = recv(p->fd, buf + have, cap - 1 - have, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return -ECONNRESET; /* the peer closed before saying everything */
        have += (size_t)n;
        if (p->udp)
            break;
    }
    buf[have] = '\0';
    return (ssize_t)have;
}

/* Reads a TCP stream up to and including the first newline. */
static ssize_t probe_read_line(struct probe *p, char *buf, size_t cap, long long deadline)
{
    size_t have = 0;
    while (have < cap - 1) {
        ssize_t n = probe_read(p, buf + have, cap - have, 1, deadline);
        if (n < 0)
            return n;
        have += (size_t)n;
        if (memchr(buf, '\n', have))
            break;
    }
    buf[have] = '\0';
    return (ssize_t)have;
}

static int send_all(int fd, const char *s, size_t len, long long deadline)
{
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(fd, s + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            int r = wait_fd(fd, POLLOUT, deadline);
            if (r < 0)
                return r;
            continue;
        }
        if (n < 0)
            return -errno;
        off += (size_t)n;
    }
    return 0;
}

/* Splits "gwsim-backend NAME peer=IP:PORT\n" into name and seen. 0 or -EPROTO. */
static int parse_hello(const char *line, char *name, size_t nlen, char *seen, size_t slen)
{
    const char *pfx = "gwsim-backend ";
    if (strncmp(line, pfx, strlen(pfx)) != 0)
        return -EPROTO;
    const char *n = line + strlen(pfx);
    const char *sp = strchr(n, ' ');
    if (!sp || strncmp(sp, " peer=", 6) != 0 || (size_t)(sp - n) >= nlen)
        return -EPROTO;
    memcpy(name, n, (size_t)(sp - n));
    name[sp - n] = '\0';
    const char *s = sp + 6;
    size_t sl = strcspn(s, "\r\n");
    if (sl == 0 || sl >= slen)
        return -EPROTO;
    memcpy(seen, s, sl);
    seen[sl] = '\0';
    for (size_t i = 0; name[i]; i++)
        if (name[i] == '"' || name[i] == '\\' || (unsigned char)name[i] < 0x20)
            return -EPROTO;
    for (size_t i = 0; seen[i]; i++)
        if (seen[i] == '"' || seen[i] == '\\' || (unsigned char)seen[i] < 0x20)
            return -EPROTO;
    return 0;
}

static int fail(const char *step, int err)
{
    fprintf(stderr, "netprobe: %s: %s\n", step, strerror(-err));
    return 1;
}

static int run(struct probe *p)
{
    long long deadline = now_ms() + p->timeout_ms;
    char buf[PROBE_BUF], name[64], seen[64], local[64];
    ssize_t n;
    int r = probe_connect(p, deadline);
    if (r < 0)
        return fail("connect", r);
    if (p->udp) {
        /* One datagram: the reply is the hello line followed by our datagram.
         * Sent again each second without a reply, as a UDP client does (DNS):
         * a first datagram can be lost on its way, e.g. by the inner NAT's
         * conntrack when c3 and c4 start flows from the same port at once
         * (two new entries clash at insertion and the kernel drops one). */
        do {
            p->tries++;
            r = send_all(p->fd, PROBE_ECHO, strlen(PROBE_ECHO), deadline);
            if (r < 0)
                return fail("send", r);
            long long retry = now_ms() + 1000;
            n = probe_read(p, buf, sizeof(buf), 1, retry < deadline ? retry : deadline);
        } while (n == -ETIMEDOUT && now_ms() < deadline);
        if (n < 0)
            return fail("recv", (int)n);
        const char *nl = strchr(buf, '\n');
        if (!nl || strcmp(nl + 1, PROBE_ECHO) != 0)
            return fail("echo", -EPROTO);
    } else {
        /* The backend says hello on its own after a short probe delay. */
        n = probe_read_line(p, buf, sizeof(buf), deadline);
        if (n < 0)
            return fail("hello", (int)n);
        size_t hl = (size_t)(strchr(buf, '\n') - buf) + 1;
        r = send_all(p->fd, PROBE_ECHO, strlen(PROBE_ECHO), deadline);
        if (r < 0)
            return fail("send", r);
        char echo[PROBE_BUF];
        size_t extra = (size_t)n - hl;
        memcpy(echo, buf + hl, extra);
        if (extra < strlen(PROBE_ECHO)) {
            n = probe_read(p, echo + extra, sizeof(echo) - extra, strlen(PROBE_ECHO) - extra,
                           deadline);
            if (n < 0)
                return fail("echo", (int)n);
            extra += (size_t)n;
        }
        echo[extra] = '\0';
        if (strcmp(echo, PROBE_ECHO) != 0)
            return fail("echo", -EPROTO);
        buf[hl] = '\0';
    }
    if (parse_hello(buf, name, sizeof(name), seen, sizeof(seen)) < 0) {
        fprintf(stderr, "netprobe: unexpected reply: %.100s\n", buf);
        return 1;
    }
    struct sockaddr_in me;
    socklen_t ml = sizeof(me);
    if (getsockname(p->fd, (struct sockaddr *)&me, &ml) < 0)
        return fail("getsockname", -errno);
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &me.sin_addr, ip, sizeof(ip));
    snprintf(local, sizeof(local), "%s:%u", ip, ntohs(me.sin_port));
    printf("{\"proto\":\"%s\",\"local\":\"%s\",\"backend\":\"%s\",\"seen\":\"%s\","
           "\"tries\":%d}\n",
           p->udp ? "udp" : "tcp", local, name, seen, p->udp ? p->tries : 1);
    fflush(stdout);
    if (p->hold_s > 0) {
        /* Keep the flow open; a TCP peer that closes ends the hold early. */
        long long until = now_ms() + (long long)p->hold_s * 1000;
        while (now_ms() < until) {
            if (!p->udp && wait_fd(p->fd, POLLIN, until) == 0) {
                n = recv(p->fd, buf, sizeof(buf), 0);
                if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
                    break;
            } else if (p->udp) {
                usleep(100000);
            }
        }
    }
    close(p->fd);
    return 0;
}

int main(int argc, char **argv)
{
    struct probe p = {.timeout_ms = 5000, .fd = -1};
    int c;
    while ((c = getopt(argc, argv, "b:t:H:")) != -1) {
        switch (c) {
        case 'b':
            p.bind_ip = optarg;
            break;
        case 't':
            p.timeout_ms = atoi(optarg) * 1000;
            break;
        case 'H':
            p.hold_s = atoi(optarg);
            break;
        default:
            usage();
        }
    }
    if (argc - optind != 3 || p.timeout_ms <= 0 || p.hold_s < 0)
        usage();
    if (strcmp(argv[optind], "udp") == 0)
        p.udp = true;
    else if (strcmp(argv[optind], "tcp") != 0)
        usage();
    p.dst.sin_family = AF_INET;
    if (inet_pton(AF_INET, argv[optind + 1], &p.dst.sin_addr) != 1)
        usage();
    int port = atoi(argv[optind + 2]);
    if (port <= 0 || port > 65535)
        usage();
    p.dst.sin_port = htons((uint16_t)port);
    return run(&p);
}
