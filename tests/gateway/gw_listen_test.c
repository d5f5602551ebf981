/*
 * gw_listen_test.c - gwd's TCP accept queue holds a burst of new connections.
 *
 * gwd is stopped (SIGSTOP), so nothing is accepted, and N clients connect at
 * once: the kernel completes the handshake of a connection only while the
 * listener's accept queue (the listen(2) backlog) has room; the SYNs of the
 * rest are dropped (TcpExtListenOverflows) and would be retried by the
 * clients after 1 s. With the default backlog (the kernel's maximum) all N
 * complete; with a configured backlog of 16, at most 17 do. No timing is
 * asserted: each client gets a bounded wait to complete, and the counts are
 * what is checked. NAT ports 21700-21799 (gateway suite range).
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gw_harness.h"

#define BURST 1500

static struct gwt_dir dir;
static struct gwd gwd;
static int fds[BURST];
static bool stopped;

static void setup(void)
{
    cr_assert_eq(gwt_dir_new(&dir), 0);
    memset(&gwd, 0, sizeof(gwd));
    for (int i = 0; i < BURST; i++)
        fds[i] = -1;
    stopped = false;
}

static void teardown(void)
{
    for (int i = 0; i < BURST; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    if (gwd.pid > 0) {
        if (stopped)
            gwd_signal(&gwd, SIGCONT);
        gwd_stop(&gwd);
    }
    gwt_dir_free(&dir);
}

TestSuite(gw_listen, .init = setup, .fini = teardown, .timeout = 120);

static int somaxconn(void)
{
    FILE *f = fopen("/proc/sys/net/core/somaxconn", "r");
    int v = 0;

    if (f) {
        if (fscanf(f, "%d", &v) != 1)
            v = 0;
        fclose(f);
    }
    return v;
}

/* Starts gwd (its one server: a port where nothing listens) and stops it. */
static void start_stopped(const char *backlog_json)
{
    char json[512];
    uint16_t dead = gwt_free_port();

    snprintf(json, sizeof(json),
             "{%s\"nat\":{\"ports\":\"21700-21799\"},\"backends\":[{\"name\":\"web\",\"proto\":"
             "\"tcp\",\"servers\":[\"127.0.0.1:%u\"],\"health\":{\"enabled\":false}}]}",
             backlog_json, dead);
    cr_assert_eq(gwd_start_config(&gwd, &dir, json), 0);
    gwd_signal(&gwd, SIGSTOP);
    stopped = true;
}

/*
 * Opens n non-blocking connects to gwd, then gives them up to 3 s in all to
 * complete. Returns how many completed the handshake (writable, no error).
 */
static int burst(int n)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(gwd.port)};
    struct pollfd *pfd = calloc((size_t)n, sizeof(*pfd));
    int done = 0;

    cr_assert_not_null(pfd);
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    for (int i = 0; i < n; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        cr_assert_geq(fds[i], 0, "socket: %s", strerror(errno));
        int rc = connect(fds[i], (struct sockaddr *)&sa, sizeof(sa));
        cr_assert(rc == 0 || errno == EINPROGRESS, "connect: %s", strerror(errno));
        pfd[i] = (struct pollfd){.fd = fds[i], .events = POLLOUT};
    }
    /* A completed handshake on loopback is immediate; a dropped SYN is
     * retried after 1 s into the same full queue. 3 s bounds the wait. */
    uint64_t end = gwt_ms() + 3000;
    int pending = n;
    while (pending > 0 && gwt_ms() < end) {
        int r = poll(pfd, (nfds_t)n, 100);
        if (r <= 0)
            continue;
        for (int i = 0; i < n; i++) {
            if (pfd[i].fd < 0 || !pfd[i].revents)
                continue;
            int err = 0;
            socklen_t el = sizeof(err);
            getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &err, &el);
            if (err == 0 && (pfd[i].revents & POLLOUT))
                done++;
            pfd[i].fd = -1;
            pending--;
        }
    }
    free(pfd);
    return done;
}

static void raise_nofile(void)
{
    struct rlimit rl;

    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < BURST + 64) {
        if (rl.rlim_max < BURST + 64)
            cr_skip_test("open-files hard limit %lu < %d", (unsigned long)rl.rlim_max, BURST + 64);
        rl.rlim_cur = BURST + 64;
        cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
}

/* The default backlog is the kernel's maximum: a burst of 1,500 new
 * connections (over the former fixed 1024) is held while gwd is busy. */
Test(gw_listen, default_backlog_holds_a_burst)
{
    if (somaxconn() <= BURST)
        cr_skip_test("net.core.somaxconn %d <= %d", somaxconn(), BURST);
    raise_nofile();
    start_stopped("");
    cr_assert_eq(burst(BURST), BURST, "SYNs were dropped: the accept queue is too short");
    char want[64];
    snprintf(want, sizeof(want), "(backlog %d)", somaxconn());
    cr_assert_eq(gwd_log_count(&gwd, want), 1);
}

/* A configured backlog is the one passed to listen(2): with 16, the queue
 * holds 17 handshakes (the kernel's "backlog + 1") and drops the rest. */
Test(gw_listen, configured_backlog_is_used)
{
    raise_nofile();
    start_stopped("\"listen\":{\"backlog\":16},");
    int done = burst(100);
    cr_assert_geq(done, 16);
    cr_assert_leq(done, 17);
    cr_assert_eq(gwd_log_count(&gwd, "(backlog 16)"), 1);
}
