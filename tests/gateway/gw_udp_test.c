/*
 * gw_udp_test.c - gwd's UDP data path against real gwd and backend
 * processes on loopback: failover within a flow when its server dies
 * (ECONNREFUSED from ICMP port unreachable on the upstream socket) or is
 * marked down by the UDP health check; bursts of equal-sized datagrams (sent
 * by UDP GSO inside gwd) and mixed sizes arrive as the same datagrams, in
 * order, both ways, from IPv4 and IPv6 clients. NAT ports 23800-23999
 * (gateway suite range).
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "gw_harness.h"

static struct gwt_dir dir;
static struct gwd gwd;
static struct gwt_backend be[2];

static void setup(void)
{
    cr_assert_eq(gwt_dir_new(&dir), 0);
    memset(be, 0, sizeof(be));
    memset(&gwd, 0, sizeof(gwd));
}

static void teardown(void)
{
    gwt_teardown(&gwd, be, (int)(sizeof(be) / sizeof(be[0])), &dir);
}

TestSuite(gw_udp, .init = setup, .fini = teardown, .timeout = 120);

static void start_with_config(const char *json)
{
    cr_assert_eq(gwd_start_config(&gwd, &dir, json), 0);
}

/* A UDP client from src to gwd with a receive timeout of ms. */
static int udp_client(const char *src, int ms)
{
    int fd = gwt_udp_socket(src, gwd.port);
    cr_assert_geq(fd, 0);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
    return fd;
}

/* Sends msg and waits for its echo "PEER msg"; PEER into peer. Returns 0,
 * or -1 when no reply came within the socket's timeout. */
static int ask(int fd, const char *msg, char *peer, size_t len)
{
    char buf[512];
    cr_assert_eq(send(fd, msg, strlen(msg), 0), (ssize_t)strlen(msg));
    ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
    if (n < 0)
        return -1;
    buf[n] = '\0';
    char *sp = strchr(buf, ' ');
    cr_assert_not_null(sp, "reply without a peer: %s", buf);
    cr_assert_str_eq(sp + 1, msg);
    size_t plen = (size_t)(sp - buf);
    cr_assert_lt(plen, len);
    memcpy(peer, buf, plen);
    peer[plen] = '\0';
    return 0;
}

/* The counter `name` of `show stats` over the control socket, or -1. */
static long long stat_of(const char *name)
{
    char buf[8192], key[64];
    int n = gwd_ctl(&gwd, "{\"id\":1,\"cmd\":\"show stats\"}\n", buf, sizeof(buf));
    cr_assert_gt(n, 0, "no reply from the control socket");
    snprintf(key, sizeof(key), "\"%s\":", name);
    char *p = strstr(buf, key);
    if (!p)
        return -1;
    return strtoll(p + strlen(key), NULL, 10);
}

/* Live UDP sessions on the server at port (waits for the store). */
static long long live_on(uint16_t port, long long want)
{
    char sql[256];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM nat_sessions WHERE proto='udp' AND closed_at IS NULL AND "
             "backend_port=%u",
             port);
    return gwt_db_int(gwd.db, sql, want, 5000);
}

/* Two clients on two servers (round robin); the first server is killed: the
 * flow on it moves to the other at its next datagram (the one that met the
 * dead port is lost, ICMP tells gwd); the other flow is untouched. */
Test(gw_udp, failover_when_the_server_dies_mid_flow)
{
    char json[1024], peer[2][64], p2[64], sql[256], nat[64];

    cr_assert_eq(gwt_backend_start(&be[0], &dir, "a", 0), 0);
    cr_assert_eq(gwt_backend_start(&be[1], &dir, "b", 0), 0);
    snprintf(json, sizeof(json),
             "{\"nat\":{\"ports\":\"23800-23899\",\"timeouts\":{\"udp\":60}},\"backends\":[{"
             "\"name\":\"dns\",\"proto\":\"udp\",\"balance\":\"roundrobin\",\"servers\":["
             "\"127.0.0.1:%u\",\"127.0.0.1:%u\"]}]}",
             be[0].port, be[1].port);
    start_with_config(json);
    int fd[2] = {udp_client("127.0.0.21", 500), udp_client("127.0.0.22", 500)};
    cr_assert_eq(ask(fd[0], "one", peer[0], sizeof(peer[0])), 0);
    cr_assert_eq(ask(fd[1], "one", peer[1], sizeof(peer[1])), 0);
    cr_assert_eq(live_on(be[0].port, 1), 1, "round robin: one flow per server");
    cr_assert_eq(live_on(be[1].port, 1), 1);
    char on_a[64];
    snprintf(sql, sizeof(sql),
             "SELECT client_ip FROM nat_sessions WHERE closed_at IS NULL AND backend_port=%u",
             be[0].port);
    cr_assert_eq(gwt_db_text(gwd.db, sql, on_a, sizeof(on_a), 3000), 0);
    int a = strcmp(on_a, "127.0.0.21") == 0 ? 0 : 1;
    cr_assert_str_eq(on_a, a == 0 ? "127.0.0.21" : "127.0.0.22");

    gwt_backend_stop(&be[0], true);
    /* The flow on the live server answers at once and keeps its mapping. */
    cr_assert_eq(ask(fd[1 - a], "two", p2, sizeof(p2)), 0);
    cr_assert_str_eq(p2, peer[1 - a]);
    /* The flow on the dead one: the first datagram meets the closed port;
     * a later one (bounded tries) is answered by the other server. */
    int tries = 0, ok = -1;
    while (ok != 0 && tries < 8) {
        char msg[16];
        snprintf(msg, sizeof(msg), "try%d", tries++);
        ok = ask(fd[a], msg, p2, sizeof(p2));
    }
    cr_assert_eq(ok, 0, "the flow never moved");
    /* (2 unless the kernel's global ICMP rate limit ate the first error) */
    cr_assert_geq(tries, 2, "the datagram sent to the dead server was answered");
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE close_reason='backend_down'",
                            1, 5000),
                 1);
    cr_assert_eq(live_on(be[1].port, 2), 2, "both flows on the live server");
    cr_assert_eq(live_on(be[0].port, 0), 0);
    /* The backend saw the new session's nat_ip:nat_port. */
    snprintf(sql, sizeof(sql),
             "SELECT nat_ip || ':' || nat_port FROM nat_sessions WHERE closed_at IS NULL AND "
             "client_ip='%s'",
             on_a);
    cr_assert_eq(gwt_db_text(gwd.db, sql, nat, sizeof(nat), 3000), 0);
    cr_assert_str_eq(p2, nat);
    /* Endpoint-independent mapping (the default): the same external port. */
    cr_assert_str_eq(p2, peer[a], "the client's mapping changed: %s -> %s", peer[a], p2);
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions", 3, 3000), 3);
    cr_assert_eq(stat_of("failovers"), 1);
    close(fd[0]);
    close(fd[1]);
    cr_assert_eq(gwd_stop(&gwd), 0);
}

/* The health check marks the flow's server down: the next datagram goes to
 * the other server with no loss. */
Test(gw_udp, failover_when_the_health_check_marks_the_server_down)
{
    char json[1024], want[128], peer[64], p2[64];

    cr_assert_eq(gwt_backend_start(&be[0], &dir, "a", 0), 0);
    cr_assert_eq(gwt_backend_start(&be[1], &dir, "b", 0), 0);
    snprintf(json, sizeof(json),
             "{\"nat\":{\"ports\":\"23900-23949\",\"timeouts\":{\"udp\":60}},\"backends\":[{"
             "\"name\":\"dns\",\"proto\":\"udp\",\"balance\":\"roundrobin\",\"servers\":["
             "\"127.0.0.1:%u\",\"127.0.0.1:%u\"],\"health\":{\"interval\":0.1,\"timeout\":0.3,"
             "\"rise\":1,\"fall\":1,\"send\":\"ping\",\"expect\":\"127.0.0.1:\"}}]}",
             be[0].port, be[1].port);
    start_with_config(json);
    int fd = udp_client("127.0.0.23", 2000);
    cr_assert_eq(ask(fd, "one", peer, sizeof(peer)), 0);
    cr_assert_eq(live_on(be[0].port, 1), 1, "the first flow goes to the first server");
    gwt_backend_stop(&be[0], true);
    snprintf(want, sizeof(want), "server 127.0.0.1:%u: up -> down", be[0].port);
    cr_assert(gwd_log_wait(&gwd, want, 1, 10000), "a never went down");
    cr_assert_eq(ask(fd, "two", p2, sizeof(p2)), 0, "lost after the server went down");
    cr_assert_eq(live_on(be[1].port, 1), 1);
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE close_reason='backend_down'",
                            1, 5000),
                 1);
    cr_assert_eq(stat_of("failovers"), 1);
    close(fd);
    cr_assert_eq(gwd_stop(&gwd), 0);
}

#define BURST_MAX 32   /* datagrams in one burst at most */
#define BURST_SIZE 1400 /* bytes in one datagram at most */

/* Byte k of datagram i of a burst: differs per datagram, per byte and per seed. */
static char burst_byte(int i, size_t k, int seed)
{
    return (char)('a' + (i + (int)k + seed) % 26);
}

/* Sends n datagrams of sizes[i] bytes (burst_byte) in one sendmmsg. */
static void burst_send(int fd, const size_t *sizes, int n, int seed)
{
    static char out[BURST_MAX][BURST_SIZE];
    struct mmsghdr m[BURST_MAX];
    struct iovec iov[BURST_MAX];

    cr_assert_leq(n, BURST_MAX);
    memset(m, 0, sizeof(m));
    for (int i = 0; i < n; i++) {
        cr_assert_leq(sizes[i], BURST_SIZE);
        for (size_t k = 0; k < sizes[i]; k++)
            out[i][k] = burst_byte(i, k, seed);
        iov[i].iov_base = out[i];
        iov[i].iov_len = sizes[i];
        m[i].msg_hdr.msg_iov = &iov[i];
        m[i].msg_hdr.msg_iovlen = 1;
    }
    cr_assert_eq(sendmmsg(fd, m, (unsigned)n, 0), n);
}

/* Receives the echoes of burst_send(fd, sizes, n, seed): each "PEER payload",
 * alone, whole and in order. */
static void burst_check(int fd, const char *peer, const size_t *sizes, int n, int seed)
{
    char in[BURST_SIZE + 100];
    size_t h = strlen(peer) + 1;

    for (int i = 0; i < n; i++) {
        ssize_t got = recv(fd, in, sizeof(in), 0);
        cr_assert_eq(got, (ssize_t)(h + sizes[i]), "datagram %d: %zd bytes", i, got);
        cr_assert_eq(memcmp(in, peer, h - 1), 0);
        for (size_t k = 0; k < sizes[i]; k++)
            cr_assert_eq(in[h + k], burst_byte(i, k, seed), "datagram %d: wrong payload", i);
    }
}

/* Bursts: 16 equal datagrams then a shorter one (one GSO run in gwd), and
 * mixed sizes with an empty datagram, from two clients interleaved: every
 * datagram comes back alone, whole and in order. */
Test(gw_udp, bursts_keep_datagram_boundaries_both_ways)
{
    char json[1024];
    static const size_t sizes[] = {1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000,
                                   1000, 1000, 1000, 1000, 1000, 1000, 300,  7,    7,    0,
                                   1400, 1,    1400, 1400, 1400};
    enum { N = sizeof(sizes) / sizeof(sizes[0]) };

    cr_assert_eq(gwt_backend_start(&be[0], &dir, "a", 0), 0);
    snprintf(json, sizeof(json),
             "{\"nat\":{\"ports\":\"23950-23974\"},\"backends\":[{\"name\":\"dns\",\"proto\":"
             "\"udp\",\"servers\":[\"127.0.0.1:%u\"]}]}",
             be[0].port);
    start_with_config(json);
    int fd[2] = {udp_client("127.0.0.24", 2000), udp_client("127.0.0.25", 2000)};
    char peer[2][64];
    for (int c = 0; c < 2; c++)
        cr_assert_eq(ask(fd[c], "hello", peer[c], sizeof(peer[c])), 0);
    for (int round = 0; round < 3; round++) {
        /* Both clients' bursts are sent before either is read: gwd sees them
         * interleaved in its batches. */
        for (int c = 0; c < 2; c++)
            burst_send(fd[c], sizes, N, c + round);
        for (int c = 0; c < 2; c++)
            burst_check(fd[c], peer[c], sizes, N, c + round);
    }
    cr_assert_eq(stat_of("udp_dropped"), 0);
    close(fd[0]);
    close(fd[1]);
    cr_assert_eq(gwd_stop(&gwd), 0);
}

/* The same over IPv6 (replies carry IPV6_PKTINFO and the GSO size in one
 * control block): a client on ::1 sends a burst to a gwd bound to ::1. */
Test(gw_udp, ipv6_client_burst_comes_back_whole)
{
    char json[1024], cfgpath[256], peer[64];

    cr_assert_eq(gwt_backend_start(&be[0], &dir, "a", 0), 0);
    snprintf(json, sizeof(json),
             "{\"nat\":{\"ports\":\"23975-23999\"},\"backends\":[{\"name\":\"dns\",\"proto\":"
             "\"udp\",\"servers\":[\"127.0.0.1:%u\"]}]}",
             be[0].port);
    cr_assert_eq(gwt_write_file(&dir, "gwd.json", json), 0);
    const char *args[] = {"-c", gwt_path(&dir, "gwd.json", cfgpath, sizeof(cfgpath)), "-b", "::1",
                          NULL};
    cr_assert_eq(gwd_start(&gwd, &dir, args, 0), 0);
    int fd = socket(AF_INET6, SOCK_DGRAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in6 a;
    memset(&a, 0, sizeof(a));
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_loopback;
    a.sin6_port = htons(gwd.port);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    struct timeval tv = {2, 0};
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
    cr_assert_eq(ask(fd, "hello", peer, sizeof(peer)), 0);
    static const size_t sizes[12] = {400, 400, 400, 400, 400, 400, 400, 400, 400, 400, 400, 50};
    for (int round = 0; round < 3; round++) {
        burst_send(fd, sizes, 12, round);
        burst_check(fd, peer, sizes, 12, round);
    }
    cr_assert_eq(stat_of("udp_dropped"), 0);
    close(fd);
    cr_assert_eq(gwd_stop(&gwd), 0);
}
