/*
 * gw_faults_test.c - gwd under faults and operations: failover when a server
 * refuses, never answers (connect timeout) or dies mid-stream; health checks
 * (TCP connect, UDP request/reply) taking a server out and back; a tiny pool
 * exhausted (refused, counted, served again); pool ports busy on the host
 * skipped; UDP expiry; SIGHUP under load without dropping a flow; SIGTERM
 * draining live flows and closing every session in the store; a locked store
 * (forwarding goes on); a store on a full disk (forwarding goes on, then
 * every session written once space is back); bad configurations refused with their JSON path;
 * EMFILE pausing accept; and sockets the flows' epoll set refuses (injected
 * by fault_epoll.c) closing only their flows. NAT ports 22000-23999 (gateway
 * suite range).
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gw_harness.h"

static struct gwt_dir dir;
static struct gwd gwd;
static struct gwt_backend be[3];
static char disk[128]; /* a tmpfs mounted by the test, unmounted at teardown */

static void setup(void)
{
    cr_assert_eq(gwt_dir_new(&dir), 0);
    memset(be, 0, sizeof(be));
    memset(&gwd, 0, sizeof(gwd));
}

static void teardown(void)
{
    if (disk[0] != '\0') {
        if (gwd.pid > 0)
            kill(gwd.pid, SIGKILL); /* gwt_teardown reaps it */
        umount2(disk, MNT_DETACH);
        disk[0] = '\0';
    }
    gwt_teardown(&gwd, be, (int)(sizeof(be) / sizeof(be[0])), &dir);
}

TestSuite(gw_faults, .init = setup, .fini = teardown, .timeout = 180);

/* Connects, reads the backend's greeting (the peer it saw). Returns the fd. */
static int hello(const char *src, char *seen, size_t len)
{
    int fd = gwt_tcp_connect(src, gwd.port);
    cr_assert_geq(fd, 0);
    cr_assert_gt(gwt_read_line(fd, seen, len), 0, "no greeting from a backend");
    return fd;
}

static void start_with_config(const char *json)
{
    cr_assert_eq(gwd_start_config(&gwd, &dir, json), 0);
}

/* The configuration {TOP, "backends": one TCP pool "web" of 127.0.0.1:port}
 * into json; TOP holds the other top-level keys ("nat":{...}, ...). */
static void web_config(char *json, size_t len, const char *top, unsigned port)
{
    int n = snprintf(json, len,
                     "{%s,\"backends\":[{\"name\":\"web\",\"proto\":\"tcp\",\"servers\":["
                     "\"127.0.0.1:%u\"]}]}",
                     top, port);
    cr_assert(n > 0 && (size_t)n < len);
}

/* Starts backend be[0] and gwd with web_config(top) in front of it. */
static void start_web(const char *top)
{
    char json[1024];
    cr_assert_eq(gwt_backend_start(&be[0], &dir, "a", 0), 0);
    web_config(json, sizeof(json), top, be[0].port);
    start_with_config(json);
}

/* A listening socket on ip:port, so that gwd finds that pool port busy. */
static int hold_port(const char *ip, uint16_t port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    cr_assert_eq(inet_pton(AF_INET, ip, &a.sin_addr), 1);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0, "port %u taken", port);
    cr_assert_eq(listen(fd, 1), 0);
    return fd;
}

/* A listener whose accept queue is full (its backlog is 0 and three connects
 * wait in it): a SYN to it is dropped, so a connect to it stays in progress
 * until the test accepts those three. */
static int stuck_listener(uint16_t *port, int fill[3])
{
    int fd = gwt_tcp_listen(0, port);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(*port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; i < 3; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fill[i], (struct sockaddr *)&a, sizeof(a)); /* queue full after these */
    }
    gwt_sleep_ms(100);
    return fd;
}

/* A pool whose first server refuses: every flow fails over to the second. */
Test(gw_faults, failover_when_a_server_refuses)
{
    char seen[64], json[1024];

    cr_assert_eq(gwt_backend_start(&be[0], &dir, "a", 0), 0);
    uint16_t dead = gwt_free_port(); /* nothing listens there */
    snprintf(json, sizeof(json),
             "{\"nat\":{\"ports\":\"22000-22099\"},\"backends\":[{\"name\":\"web\",\"proto\":"
             "\"tcp\",\"servers\":[\"127.0.0.1:%u\",\"127.0.0.1:%u\"],\"health\":{\"enabled\":"
             "false}}]}",
             dead, be[0].port);
    start_with_config(json);
    for (int i = 0; i < 6; i++) {
        int fd = hello("127.0.0.2", seen, sizeof(seen));
        close(fd);
    }
    cr_assert_eq(gwt_backend_count_nat(&be[0], "accept", 22000, 22099), 6);
    /* Round robin sends half the first attempts to the dead one: each shows
     * up as a session closed connect_failed, then a served one. */
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE close_reason="
                            "'connect_failed'",
                            3, 5000),
                 3);
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE close_reason='client_fin'", 6,
                            5000),
                 6);
    cr_assert_eq(gwd_stop(&gwd), 0);
}

/* A server that dies mid-stream: its clients are closed promptly. */
Test(gw_faults, server_dies_mid_stream)
{
    char seen[64], tb[64], line[64];

    cr_assert_eq(gwt_backend_start(&be[0], &dir, "a", 0), 0);
    snprintf(tb, sizeof(tb), "127.0.0.1:%u", be[0].port);
    const char *args[] = {"--tcp-backend", tb, "--nat-ports", "22100-22199", NULL};
    cr_assert_eq(gwd_start(&gwd, &dir, args, 0), 0);
    int fds[10];
    for (int i = 0; i < 10; i++)
        fds[i] = hello("127.0.0.3", seen, sizeof(seen));
    gwt_backend_stop(&be[0], true);
    for (int i = 0; i < 10; i++) {
        /* EOF or reset, well within the 10 s receive timeout. */
        ssize_t r = recv(fds[i], line, sizeof(line), 0);
        cr_assert_leq(r, 0, "client %d still served", i);
        cr_assert(r == 0 || errno == ECONNRESET, "client %d: %s", i, strerror(errno));
        close(fds[i]);
    }
    /* Wait for the closes to be written (the store is written behind). */
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions WHERE closed_at IS NOT NULL",
                            10, 5000),
                 10);
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions", -1, 0), 10);
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE close_reason IN "
                            "('backend_fin','backend_rst')",
                            -1, 0),
                 10);
}

/* Health checks take a dead server out (no flow tries it) and put it back. */
Test(gw_faults, health_check_out_and_back)
{
    char seen[64], json[1024], want_b[64];

    cr_assert_eq(gwt_backend_start(&be[0], &dir, "a", 0), 0);
    cr_assert_eq(gwt_backend_start(&be[1], &dir, "b", 0), 0);
    uint16_t bport = be[1].port;
    snprintf(json, sizeof(json),
             "{\"nat\":{\"ports\":\"22200-22299\"},\"backends\":[{\"name\":\"web\",\"proto\":"
             "\"tcp\",\"servers\":[\"127.0.0.1:%u\",\"127.0.0.1:%u\"],\"health\":{\"interval\":"
             "0.1,\"timeout\":0.5,\"rise\":2,\"fall\":2}}]}",
             be[0].port, bport);
    start_with_config(json);
    snprintf(want_b, sizeof(want_b), "server 127.0.0.1:%u: up -> down", bport);
    gwt_backend_stop(&be[1], true);
    cr_assert(gwd_log_wait(&gwd, want_b, 1, 10000), "b never went down");
    long long failed_before = gwt_db_int(
        gwd.db, "SELECT count(*) FROM nat_sessions WHERE close_reason='connect_failed'", -1, 0);
    for (int i = 0; i < 8; i++)
        close(hello("127.0.0.4", seen, sizeof(seen)));
    cr_assert_eq(gwt_backend_count_nat(&be[0], "accept", 22200, 22299), 8);
    /* Down means not tried: no connect failure for those 8 flows. */
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE close_reason="
                            "'connect_failed'",
                            -1, 0),
                 failed_before);

    cr_assert_eq(gwt_backend_start(&be[1], &dir, "b2", bport), 0);
    snprintf(want_b, sizeof(want_b), "server 127.0.0.1:%u: down -> up", bport);
    cr_assert(gwd_log_wait(&gwd, want_b, 1, 10000), "b never came back");
    for (int i = 0; i < 8; i++)
        close(hello("127.0.0.4", seen, sizeof(seen)));
    cr_assert_eq(gwt_backend_count_nat(&be[1], "accept", 22200, 22299), 4,
                 "round robin over both again");
}

/* A pool of 4 ports: the 5th flow is refused and counted, existing flows go
 * on, and once a port is free new flows are served again. */
Test(gw_faults, pool_exhaustion_refused_counted_then_served)
{
    char seen[64], line[64];
    int fds[4];

    start_web("\"nat\":{\"ports\":\"22300-22303\",\"reuse_delay\":0}");
    for (int i = 0; i < 4; i++)
        fds[i] = hello("127.0.0.5", seen, sizeof(seen));
    int extra = gwt_tcp_connect("127.0.0.5", gwd.port);
    cr_assert_geq(extra, 0);
    char c;
    cr_assert_eq(recv(extra, &c, 1, 0), 0, "the 5th flow must be closed, not served");
    close(extra);
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_events WHERE event='refuse' AND "
                            "reason='pool_exhausted'",
                            1, 5000),
                 1);
    cr_assert(gwd_log_wait(&gwd, "refused: pool_exhausted", 1, 2000));
    /* The established flows are untouched. */
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(gwt_write_full(fds[i], "ok\n", 3), 0);
        cr_assert_eq(gwt_read_line(fds[i], line, sizeof(line)), 2);
    }
    /* The backend closes one first (no TIME_WAIT on the gateway's side of
     * that port), then a new flow gets the freed port. */
    cr_assert_eq(gwt_write_full(fds[0], "!close", 6), 0);
    cr_assert_eq(recv(fds[0], &c, 1, 0), 0);
    close(fds[0]);
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions WHERE closed_at IS NOT NULL",
                            1, 5000),
                 1);
    int again = -1;
    uint64_t end = gwt_ms() + 10000;
    while (again < 0 && gwt_ms() < end) {
        int fd = gwt_tcp_connect("127.0.0.5", gwd.port);
        cr_assert_geq(fd, 0);
        if (gwt_read_line(fd, seen, sizeof(seen)) > 0)
            again = fd;
        else {
            close(fd);
            gwt_sleep_ms(200);
        }
    }
    cr_assert_geq(again, 0, "never served again");
    close(again);
    for (int i = 1; i < 4; i++)
        close(fds[i]);
    cr_assert_eq(gwd_stop(&gwd), 0);
}

/* A UDP mapping expires on its timeout; the next datagram makes a new one. */
Test(gw_faults, udp_mapping_expires)
{
    char json[1024], buf[256];

    cr_assert_eq(gwt_backend_start(&be[0], &dir, "a", 0), 0);
    snprintf(json, sizeof(json),
             "{\"nat\":{\"ports\":\"22400-22499\",\"timeouts\":{\"udp\":1}},\"backends\":[{"
             "\"name\":\"dns\",\"proto\":\"udp\",\"servers\":[\"127.0.0.1:%u\"]}]}",
             be[0].port);
    start_with_config(json);
    int fd = gwt_udp_socket("127.0.0.6", gwd.port);
    cr_assert_geq(fd, 0);
    cr_assert_eq(send(fd, "a", 1, 0), 1);
    cr_assert_gt(recv(fd, buf, sizeof(buf), 0), 0);
    cr_assert_eq(send(fd, "b", 1, 0), 1);
    cr_assert_gt(recv(fd, buf, sizeof(buf), 0), 0);
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions WHERE proto='udp'", 1, 3000),
                 1);
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE close_reason='timeout'", 1,
                            6000),
                 1);
    cr_assert_eq(
        gwt_db_int(gwd.db, "SELECT count(*) FROM nat_events WHERE event='expire'", 1, 3000), 1);
    cr_assert_eq(send(fd, "c", 1, 0), 1);
    cr_assert_gt(recv(fd, buf, sizeof(buf), 0), 0);
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE proto='udp' AND closed_at "
                            "IS NULL",
                            1, 3000),
                 1);
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions", -1, 0), 2);
    close(fd);
}

/* SIGHUP while 50 flows move data: none is dropped; new servers are used. */
Test(gw_faults, sighup_under_load_keeps_every_flow)
{
    char json[1024], seen[64], line[64];
    enum { N = 50 };
    int fds[N];

    cr_assert_eq(gwt_backend_start(&be[0], &dir, "a", 0), 0);
    cr_assert_eq(gwt_backend_start(&be[1], &dir, "b", 0), 0);
    snprintf(json, sizeof(json),
             "{\"nat\":{\"ports\":\"22500-22999\"},\"backends\":[{\"name\":\"web\",\"proto\":"
             "\"tcp\",\"servers\":[\"127.0.0.1:%u\"]}]}",
             be[0].port);
    start_with_config(json);
    for (int i = 0; i < N; i++)
        fds[i] = hello("127.0.0.7", seen, sizeof(seen));
    web_config(json, sizeof(json), "\"nat\":{\"ports\":\"22500-22999\",\"timeouts\":{\"udp\":60}}",
               be[1].port);
    cr_assert_eq(gwt_write_file(&dir, "gwd.json", json), 0);
    for (int round = 0; round < 20; round++) {
        if (round == 5)
            gwd_signal(&gwd, SIGHUP);
        for (int i = 0; i < N; i++) {
            char msg[32];
            int n = snprintf(msg, sizeof(msg), "r%d-%d\n", round, i);
            cr_assert_eq(gwt_write_full(fds[i], msg, (size_t)n), 0);
            cr_assert_eq(gwt_read_line(fds[i], line, sizeof(line)), n - 1, "flow %d round %d", i,
                         round);
            msg[n - 1] = '\0';
            cr_assert_str_eq(line, msg);
        }
    }
    cr_assert(gwd_log_wait(&gwd, "reloaded:", 1, 5000));
    cr_assert_eq(gwd_log_count(&gwd, "50 flows kept"), 1);
    /* New flows go to the new server. */
    close(hello("127.0.0.7", seen, sizeof(seen)));
    cr_assert_eq(gwt_backend_count_nat(&be[1], "accept", 22500, 22999), 1);
    /* A bad config is refused and the running one stays. */
    cr_assert_eq(gwt_write_file(&dir, "gwd.json", "{\"backends\":[{\"name\":\"web\"}]}"), 0);
    gwd_signal(&gwd, SIGHUP);
    cr_assert(gwd_log_wait(&gwd, "reload refused", 1, 5000));
    cr_assert(gwd_log_count(&gwd, "backends[0]: missing \"proto\"") >= 1);
    close(hello("127.0.0.7", seen, sizeof(seen)));
    cr_assert_eq(gwt_backend_count_nat(&be[1], "accept", 22500, 22999), 2);
    for (int i = 0; i < N; i++)
        close(fds[i]);
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE close_reason='client_fin'",
                            N + 2, 5000),
                 N + 2);
    cr_assert_eq(gwd_stop(&gwd), 0);
}

/* SIGTERM with open TCP and UDP flows: exit 0, every session closed in the store. */
Test(gw_faults, sigterm_closes_every_session_in_the_store)
{
    char json[1024], seen[64], buf[128];
    int t[20], u[20];

    cr_assert_eq(gwt_backend_start(&be[0], &dir, "a", 0), 0);
    snprintf(json, sizeof(json),
             "{\"nat\":{\"ports\":\"23000-23099\"},\"timeouts\":{\"drain\":0.5},\"backends\":[{"
             "\"name\":\"web\",\"proto\":\"tcp\",\"servers\":[\"127.0.0.1:%u\"]},{\"name\":"
             "\"dns\",\"proto\":\"udp\",\"servers\":[\"127.0.0.1:%u\"]}]}",
             be[0].port, be[0].port);
    start_with_config(json);
    for (int i = 0; i < 20; i++) {
        t[i] = hello("127.0.0.8", seen, sizeof(seen));
        u[i] = gwt_udp_socket("127.0.0.8", gwd.port);
        cr_assert_eq(send(u[i], "x", 1, 0), 1);
        cr_assert_gt(recv(u[i], buf, sizeof(buf), 0), 0);
    }
    cr_assert_eq(
        gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions WHERE closed_at IS NULL", 40, 5000),
        40);
    cr_assert_eq(gwd_stop(&gwd), 0);
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions", -1, 0), 40);
    cr_assert_eq(
        gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions WHERE closed_at IS NULL", -1, 0), 0);
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE close_reason='shutdown'", -1,
                            0),
                 40);
    for (int i = 0; i < 20; i++) {
        char c;
        cr_assert_eq(recv(t[i], &c, 1, 0), 0); /* the client saw the close */
        close(t[i]);
        close(u[i]);
    }
}

/* Bad configurations: --check-config names the JSON path, exit 1. */
Test(gw_faults, bad_config_refused_with_json_path)
{
    char out[4096], path[256];

    cr_assert_eq(gwt_write_file(&dir, "bad.json",
                                "{\"backends\":[{\"name\":\"web\",\"proto\":\"tcp\",\"servers\":"
                                "[\"127.0.0.1:80\"],\"healthcheck\":{}}]}"),
                 0);
    const char *a1[] = {"--check-config", "-c", gwt_path(&dir, "bad.json", path, sizeof(path)),
                        NULL};
    cr_assert_eq(gwd_run(a1, out, sizeof(out)), 1);
    cr_assert(strstr(out, "backends[0].healthcheck: unknown key") != NULL, "%s", out);

    cr_assert_eq(gwt_write_file(&dir, "good.json",
                                "{\"backends\":[{\"name\":\"web\",\"proto\":\"tcp\",\"servers\":"
                                "[\"127.0.0.1:80\"]}]}"),
                 0);
    const char *a2[] = {"--check-config", "-c", gwt_path(&dir, "good.json", path, sizeof(path)),
                        NULL};
    cr_assert_eq(gwd_run(a2, out, sizeof(out)), 0, "%s", out);
    cr_assert(strstr(out, "\"tcp_established\": 7440") != NULL, "%s", out);

    const char *a3[] = {"--tcp-backend", "127.0.0.1:80", "--nat-policy", "fastest", NULL};
    cr_assert_eq(gwd_run(a3, out, sizeof(out)), 1);
    cr_assert(strstr(out, "--nat-policy") != NULL, "%s", out);
    const char *a4[] = {"--bogus", NULL};
    cr_assert_eq(gwd_run(a4, out, sizeof(out)), 2);
    const char *a5[] = {"--version", NULL};
    cr_assert_eq(gwd_run(a5, out, sizeof(out)), 0);
    cr_assert(strncmp(out, "gwd ", 4) == 0, "%s", out);
    const char *a6[] = {"-c", "/nonexistent/gwd.json", NULL};
    cr_assert_eq(gwd_run(a6, out, sizeof(out)), 1);
    cr_assert(strstr(out, "/nonexistent/gwd.json") != NULL, "%s", out);
}

/* Out of descriptors: accepting pauses (no busy loop), nothing crashes, and
 * flows are served again when descriptors come back. */
Test(gw_faults, emfile_pauses_accept_then_resumes)
{
    char tb[64], seen[64];
    enum { N = 40 };
    int fds[N];

    cr_assert_eq(gwt_backend_start(&be[0], &dir, "a", 0), 0);
    snprintf(tb, sizeof(tb), "127.0.0.1:%u", be[0].port);
    const char *args[] = {"--tcp-backend", tb, "--nat-ports", "23100-23199", NULL};
    /* About 20 descriptors are gwd's own (listeners, store, epoll...). */
    cr_assert_eq(gwd_start(&gwd, &dir, args, 48), 0);
    int served = 0;
    for (int i = 0; i < N; i++) {
        fds[i] = gwt_tcp_connect("127.0.0.9", gwd.port);
        cr_assert_geq(fds[i], 0);
    }
    for (int i = 0; i < N; i++) {
        struct timeval tv = {0, 300000};
        setsockopt(fds[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        if (gwt_read_line(fds[i], seen, sizeof(seen)) > 0)
            served++;
    }
    cr_assert_lt(served, N, "the limit never bit");
    cr_assert_gt(served, 0);
    cr_assert(gwd_log_wait(&gwd, "accepting paused", 1, 3000));
    /* Paused, not spinning: the log shows at most ~10 pauses a second. */
    int before = gwd_log_count(&gwd, "accepting paused");
    gwt_sleep_ms(1000);
    cr_assert_leq(gwd_log_count(&gwd, "accepting paused") - before, 15);
    cr_assert(gwd_alive(&gwd));
    for (int i = 0; i < N; i++)
        close(fds[i]);
    /* Served again. */
    int ok = 0;
    uint64_t end = gwt_ms() + 10000;
    while (!ok && gwt_ms() < end) {
        int fd = gwt_tcp_connect("127.0.0.9", gwd.port);
        if (fd >= 0 && gwt_read_line(fd, seen, sizeof(seen)) > 0)
            ok = 1;
        if (fd >= 0)
            close(fd);
        if (!ok)
            gwt_sleep_ms(100);
    }
    cr_assert(ok, "not served after descriptors came back");
    cr_assert_eq(gwd_stop(&gwd), 0);
}

/* Pool ports held by other sockets on the host are skipped (EADDRINUSE ->
 * another pool port), not failing the flow. */
Test(gw_faults, busy_pool_ports_are_skipped)
{
    char seen[64];
    int hold[2];

    for (int i = 0; i < 2; i++)
        hold[i] = hold_port("127.0.0.1", (uint16_t)(23200 + i));
    start_web("\"nat\":{\"ports\":\"23200-23203\",\"policy\":\"sequential\"}");
    int fds[2];
    for (int i = 0; i < 2; i++) {
        fds[i] = hello("127.0.0.10", seen, sizeof(seen));
        cr_assert(strcmp(seen, "127.0.0.1:23202") == 0 || strcmp(seen, "127.0.0.1:23203") == 0,
                  "got %s", seen);
    }
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(DISTINCT nat_port) FROM nat_sessions WHERE nat_port IN "
                            "(23202, 23203) AND closed_at IS NULL",
                            2, 5000),
                 2);
    for (int i = 0; i < 2; i++) {
        close(fds[i]);
        close(hold[i]);
    }
}

/* UDP health checks (request/expected reply) take a dead server out and back. */
Test(gw_faults, udp_health_check_request_reply)
{
    char json[1024], want[128], buf[256];

    cr_assert_eq(gwt_backend_start(&be[0], &dir, "a", 0), 0);
    cr_assert_eq(gwt_backend_start(&be[1], &dir, "b", 0), 0);
    uint16_t bport = be[1].port;
    /* The test backend answers "PEER payload": the check comes from 127.0.0.1. */
    snprintf(json, sizeof(json),
             "{\"nat\":{\"ports\":\"23300-23399\"},\"backends\":[{\"name\":\"dns\",\"proto\":"
             "\"udp\",\"servers\":[\"127.0.0.1:%u\",\"127.0.0.1:%u\"],\"health\":{\"interval\":"
             "0.1,\"timeout\":0.3,\"rise\":1,\"fall\":1,\"send\":\"ping\",\"expect\":"
             "\"127.0.0.1:\"}}]}",
             be[0].port, bport);
    start_with_config(json);
    gwt_backend_stop(&be[1], true);
    snprintf(want, sizeof(want), "server 127.0.0.1:%u: up -> down", bport);
    cr_assert(gwd_log_wait(&gwd, want, 1, 10000), "b never went down");
    for (int i = 0; i < 6; i++) {
        int fd = gwt_udp_socket("127.0.0.11", gwd.port);
        cr_assert_eq(send(fd, "q", 1, 0), 1);
        cr_assert_gt(recv(fd, buf, sizeof(buf), 0), 0, "flow %d sent to the dead server", i);
        close(fd);
    }
    cr_assert_eq(gwt_backend_start(&be[1], &dir, "b2", bport), 0);
    snprintf(want, sizeof(want), "server 127.0.0.1:%u: down -> up", bport);
    cr_assert(gwd_log_wait(&gwd, want, 1, 10000), "b never came back");
}

/* SIGTERM drains: no new flow is accepted, a live one keeps working until it
 * ends by itself, then gwd exits 0 before the drain time is up. */
Test(gw_faults, sigterm_drains_live_flows)
{
    char seen[64], line[64];

    start_web("\"nat\":{\"ports\":\"23400-23499\"},\"timeouts\":{\"drain\":30}");
    int fd = hello("127.0.0.12", seen, sizeof(seen));
    gwd_signal(&gwd, SIGTERM);
    cr_assert(gwd_log_wait(&gwd, "stopping: 1 TCP flows may finish", 1, 5000));
    cr_assert_eq(gwt_tcp_connect("127.0.0.12", gwd.port), -1, "a new flow was accepted");
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(gwt_write_full(fd, "still here\n", 11), 0);
        cr_assert_eq(gwt_read_line(fd, line, sizeof(line)), 10);
    }
    cr_assert(gwd_alive(&gwd));
    uint64_t t0 = gwt_ms();
    close(fd);
    cr_assert_eq(gwd_wait(&gwd, 20000), 0, "gwd did not exit after its last flow");
    cr_assert_lt(gwt_ms() - t0, 20000, "gwd waited for the drain time, not for the flow");
    char reason[32];
    cr_assert_eq(
        gwt_db_text(gwd.db, "SELECT close_reason FROM nat_sessions", reason, sizeof(reason), 1000),
        0);
    cr_assert_str_eq(reason, "client_fin");
}

/* The store cannot write (another process holds its write lock): flows are
 * still served, the degraded state is logged once, and when the lock goes
 * the store catches up with every session. */
Test(gw_faults, store_locked_forwarding_goes_on)
{
    char tb[64], seen[64];
    sqlite3 *h = NULL;

    cr_assert_eq(gwt_backend_start(&be[0], &dir, "a", 0), 0);
    snprintf(tb, sizeof(tb), "127.0.0.1:%u", be[0].port);
    const char *args[] = {"--tcp-backend", tb, "--nat-ports", "23500-23599", NULL};
    cr_assert_eq(gwd_start(&gwd, &dir, args, 0), 0);
    cr_assert_eq(sqlite3_open(gwd.db, &h), SQLITE_OK);
    sqlite3_busy_timeout(h, 5000);
    cr_assert_eq(sqlite3_exec(h, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK, "%s",
                 sqlite3_errmsg(h));
    for (int i = 0; i < 20; i++)
        close(hello("127.0.0.13", seen, sizeof(seen)));
    cr_assert(gwd_log_wait(&gwd, "store degraded (forwarding goes on)", 1, 10000));
    for (int i = 0; i < 20; i++)
        close(hello("127.0.0.13", seen, sizeof(seen)));
    cr_assert_eq(gwd_log_count(&gwd, "store degraded"), 1, "logged once per episode");
    cr_assert_eq(sqlite3_exec(h, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(h);
    cr_assert(gwd_log_wait(&gwd, "store recovered", 1, 10000));
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE client_ip='127.0.0.13' AND "
                            "closed_at IS NOT NULL",
                            40, 10000),
                 40);
    cr_assert_eq(gwd_stop(&gwd), 0);
}

/* A server that never answers (its accept queue is full, so SYNs are
 * dropped): the connect times out and the flow goes to the next server. */
Test(gw_faults, connect_timeout_then_failover)
{
    char json[1024], seen[64];
    uint16_t port;

    int fill[3];
    int stuck = stuck_listener(&port, fill);
    cr_assert_eq(gwt_backend_start(&be[0], &dir, "a", 0), 0);
    snprintf(json, sizeof(json),
             "{\"nat\":{\"ports\":\"23600-23699\"},\"backends\":[{\"name\":\"web\",\"proto\":"
             "\"tcp\",\"connect_timeout\":0.5,\"health\":{\"enabled\":false},\"servers\":["
             "\"127.0.0.1:%u\",\"127.0.0.1:%u\"]}]}",
             port, be[0].port);
    start_with_config(json);
    for (int i = 0; i < 4; i++)
        close(hello("127.0.0.14", seen, sizeof(seen)));
    cr_assert_eq(gwt_backend_count_nat(&be[0], "accept", 23600, 23699), 4);
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE close_reason="
                            "'connect_timeout'",
                            2, 5000),
                 2);
    for (int i = 0; i < 3; i++)
        close(fill[i]);
    close(stuck);
}

/* Started as root with --user: binds first, then runs as that user and still
 * serves (the store and control socket were opened before the switch). */
Test(gw_faults, user_drops_privileges_after_binding)
{
    char tb[64], seen[64], status[4096], want[64];
    struct passwd *pw = getpwnam("nobody");

    if (geteuid() != 0 || !pw) {
        cr_skip_test("needs root and a user named nobody");
        return;
    }
    cr_assert_eq(gwt_backend_start(&be[0], &dir, "a", 0), 0);
    snprintf(tb, sizeof(tb), "127.0.0.1:%u", be[0].port);
    const char *args[] = {"--tcp-backend", tb,       "--nat-ports", "23700-23799",
                          "--user",        "nobody", NULL};
    cr_assert_eq(gwd_start(&gwd, &dir, args, 0), 0);
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)gwd.pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    size_t n = fread(status, 1, sizeof(status) - 1, f);
    fclose(f);
    status[n] = '\0';
    snprintf(want, sizeof(want), "Uid:\t%u\t%u\t%u\t%u", (unsigned)pw->pw_uid, (unsigned)pw->pw_uid,
             (unsigned)pw->pw_uid, (unsigned)pw->pw_uid);
    cr_assert(strstr(status, want) != NULL, "%s", status);
    for (int i = 0; i < 3; i++)
        close(hello("127.0.0.15", seen, sizeof(seen)));
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions WHERE closed_at IS NOT NULL",
                            3, 5000),
                 3);
    cr_assert_eq(gwd_stop(&gwd), 0);
}

/* Runs `json` in a gwd whose epoll_ctl refuses to add sockets bound to the
 * NAT ports `ports` (fault_epoll.c, LD_PRELOAD). */
static void start_with_epoll_fault(const char *json, const char *ports)
{
    const char *asan = getenv("ASAN_OPTIONS");
    char *old = asan ? strdup(asan) : NULL, opts[512];
    snprintf(opts, sizeof(opts), "%s%sverify_asan_link_order=0", old ? old : "", old ? ":" : "");
    setenv("ASAN_OPTIONS", opts, 1);
    setenv("LD_PRELOAD", FAULT_EPOLL_PATH, 1);
    setenv("GW_FAULT_EPOLL_PORTS", ports, 1);
    int rc = gwd_start_config(&gwd, &dir, json);
    unsetenv("LD_PRELOAD");
    unsetenv("GW_FAULT_EPOLL_PORTS");
    if (old)
        setenv("ASAN_OPTIONS", old, 1);
    else
        unsetenv("ASAN_OPTIONS");
    free(old);
    cr_assert_eq(rc, 0);
}

/* A socket the flows' epoll set refuses (ENOSPC, as past
 * fs.epoll.max_user_watches): its flow, TCP or UDP, is closed at once with
 * reason "error", logged; gwd and the other flows go on. Under the
 * sequential policy the first two flows of each protocol get the refused
 * ports 23800 and 23801, the third 23802. */
Test(gw_faults, unwatchable_socket_closes_its_flow_only)
{
    char json[1024], seen[64], buf[64];

    cr_assert_eq(gwt_backend_start(&be[0], &dir, "a", 0), 0);
    snprintf(json, sizeof(json),
             "{\"nat\":{\"ports\":\"23800-23809\",\"policy\":\"sequential\"},\"backends\":["
             "{\"name\":\"web\",\"proto\":\"tcp\",\"servers\":[\"127.0.0.1:%u\"]},"
             "{\"name\":\"dns\",\"proto\":\"udp\",\"servers\":[\"127.0.0.1:%u\"]}]}",
             be[0].port, be[0].port);
    start_with_epoll_fault(json, "23800-23801");

    for (int i = 0; i < 2; i++) {
        char src[32];
        snprintf(src, sizeof(src), "127.0.0.%d", 16 + i);
        int fd = gwt_tcp_connect(src, gwd.port);
        cr_assert_geq(fd, 0);
        struct timeval tv = {3, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        int e = errno;
        cr_assert(n == 0 || (n < 0 && e == ECONNRESET), "flow %d not closed: %zd, %s", i, n,
                  n < 0 ? strerror(e) : "data");
        close(fd);
    }
    int tcp_ok = hello("127.0.0.18", seen, sizeof(seen));
    cr_assert_str_eq(seen, "127.0.0.1:23802");

    for (int i = 0; i < 3; i++) {
        char src[32];
        snprintf(src, sizeof(src), "127.0.0.%d", 19 + i);
        int fd = gwt_udp_socket(src, gwd.port);
        cr_assert_geq(fd, 0);
        struct timeval tv = {0, i < 2 ? 300000 : 3000000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        cr_assert_eq(send(fd, "q", 1, 0), 1);
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (i < 2)
            cr_assert_lt(n, 0, "a reply through a flow that could not be watched");
        else
            cr_assert_gt(n, 0, "no reply once the ports are good");
        close(fd);
    }

    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE close_reason = 'error'"
                            " AND nat_port IN (23800, 23801)",
                            4, 5000),
                 4);
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE closed_at IS NULL"
                            " AND nat_port = 23802",
                            2, 5000),
                 2);
    cr_assert(gwd_log_wait(&gwd, "epoll_ctl on fd", 1, 3000));
    /* The working TCP flow still relays. */
    cr_assert_eq(gwt_write_full(tcp_ok, "ping\n", 5), 0);
    cr_assert_gt(gwt_read_line(tcp_ok, buf, sizeof(buf)), 0);
    close(tcp_ok);
    cr_assert(gwd_alive(&gwd));
    cr_assert_eq(gwd_stop(&gwd), 0);
}

/* Writes `path` until the file system is full. Returns the bytes written. */
static long long fill_up(const char *path)
{
    static char block[64 * 1024];
    long long total = 0;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
    memset(block, 'x', sizeof(block));
    for (size_t chunk = sizeof(block); chunk >= 512;) {
        ssize_t n = write(fd, block, chunk);
        if (n > 0)
            total += n;
        else if (n < 0 && errno == ENOSPC)
            chunk /= 2; /* the last blocks of the disk */
        else
            cr_assert_fail("filling %s: %s", path, strerror(errno));
    }
    close(fd);
    return total;
}

/* The store on a disk that fills up (a 2 MiB tmpfs mounted for the test):
 * SQLite's writes fail with "database or disk is full"; gwd logs the degraded
 * store once, shows it in `show stats` with the reason, and goes on
 * forwarding every flow; when space comes back the store recovers by itself
 * and every session of the episode is in the file, closed. */
Test(gw_faults, full_disk_forwarding_goes_on_then_the_store_catches_up)
{
    char json[512], conf[160], seen[64], db[sizeof(gwd.db)], filler[200], reply[8192];

    if (geteuid() != 0)
        cr_skip_test("mounting a small tmpfs needs root");
    gwt_path(&dir, "disk", disk, sizeof(disk));
    cr_assert_eq(mkdir(disk, 0700), 0);
    if (mount("gwtest", disk, "tmpfs", MS_NOSUID | MS_NODEV, "size=2m,mode=0700") != 0) {
        int e = errno;
        disk[0] = '\0';
        cr_skip_test("cannot mount a tmpfs here: %s", strerror(e));
    }
    snprintf(db, sizeof(db), "%s/gw.db", disk);
    snprintf(filler, sizeof(filler), "%s/filler", disk);

    /* Ports free again at once (no reuse delay): the test needs a few
     * hundred flows from one client through 90 ports. */
    cr_assert_eq(gwt_backend_start(&be[0], &dir, "a", 0), 0);
    web_config(json, sizeof(json), "\"nat\":{\"ports\":\"22310-22399\",\"reuse_delay\":0}",
               be[0].port);
    cr_assert_eq(gwt_write_file(&dir, "gwd.json", json), 0);
    gwt_path(&dir, "gwd.json", conf, sizeof(conf));
    const char *args[] = {"-c", conf, "--db", db, NULL};
    cr_assert_eq(gwd_start(&gwd, &dir, args, 0), 0);
    snprintf(gwd.db, sizeof(gwd.db), "%s", db); /* the later --db wins */
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions", 0, 5000), 0);
    cr_assert_gt(fill_up(filler), 0);

    /* Flows until the store gives up on a commit; each one is served. */
    int flows = 0;
    uint64_t end = gwt_ms() + 30000;
    while (gwd_log_count(&gwd, "store degraded") == 0) {
        cr_assert_lt(gwt_ms(), end, "the store never failed on a full disk (%d flows)", flows);
        close(hello("127.0.0.31", seen, sizeof(seen)));
        flows++;
        if (flows % 20 == 0)
            gwt_sleep_ms(100); /* let the writer commit what it has */
    }
    cr_assert(gwd_log_wait(&gwd, "store degraded (forwarding goes on)", 1, 1000));
    int n = gwd_ctl(&gwd, "{\"id\":1,\"cmd\":\"show stats\"}\n", reply, sizeof(reply));
    cr_assert_gt(n, 0, "no reply from the control socket");
    cr_assert(strstr(reply, "\"degraded\":true") != NULL, "%s", reply);
    cr_assert(strstr(reply, "disk is full") != NULL, "the reason is not shown: %s", reply);
    for (int i = 0; i < 30; i++, flows++)
        close(hello("127.0.0.32", seen, sizeof(seen)));
    cr_assert_eq(gwd_log_count(&gwd, "store degraded"), 1, "logged once per episode");

    cr_assert_eq(unlink(filler), 0);
    cr_assert(gwd_log_wait(&gwd, "store recovered", 1, 10000));
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE closed_at IS NOT NULL"
                            " AND client_ip IN ('127.0.0.31', '127.0.0.32')",
                            flows, 10000),
                 flows, "every session of the episode written once space is back");
    n = gwd_ctl(&gwd, "{\"id\":2,\"cmd\":\"show stats\"}\n", reply, sizeof(reply));
    cr_assert_gt(n, 0);
    cr_assert(strstr(reply, "\"degraded\":false") != NULL, "%s", reply);
    cr_assert_eq(gwd_stop(&gwd), 0);
}

/* Source hashing with two of three servers refusing (health checks off): a
 * flow tries each server at most once, so every client reaches the live one.
 * (Skipping only the last failed server sent a third of the clients back to
 * the first one, and they were closed with all tries spent.) NAT address
 * 127.0.0.60, apart from the other tests' 127.0.0.1. */
Test(gw_faults, failover_tries_each_server_once_and_reaches_the_live_one)
{
    char json[1024], seen[64];
    uint16_t dead1 = gwt_free_port(), dead2 = gwt_free_port();

    cr_assert(dead1 != 0 && dead2 != 0 && dead1 != dead2);
    cr_assert_eq(gwt_backend_start(&be[0], &dir, "c", 0), 0);
    snprintf(json, sizeof(json),
             "{\"nat\":{\"ips\":[\"127.0.0.60\"],\"ports\":\"22000-22099\",\"reuse_delay\":0},"
             "\"backends\":[{\"name\":\"web\",\"proto\":\"tcp\",\"balance\":\"source\","
             "\"health\":{\"enabled\":false},\"servers\":[\"127.0.0.1:%u\",\"127.0.0.1:%u\","
             "\"127.0.0.1:%u\"]}]}",
             dead1, dead2, be[0].port);
    start_with_config(json);
    for (int i = 0; i < 30; i++) {
        char src[32];
        snprintf(src, sizeof(src), "127.0.%d.%d", 70 + i / 10, 1 + i % 10);
        close(hello(src, seen, sizeof(seen)));
        cr_assert_eq(strncmp(seen, "127.0.0.60:", 11), 0, "%s", seen);
    }
    cr_assert_eq(gwt_backend_count(&be[0], "accept"), 30);
    cr_assert_eq(gwd_stop(&gwd), 0); /* the store flushed */
    /* Each refused try is one session closed connect_failed: at most two per
     * client (one per dead server). */
    long long failed = gwt_db_int(gwd.db,
                                  "SELECT count(*) FROM nat_sessions WHERE close_reason ="
                                  " 'connect_failed'",
                                  -1, 0);
    cr_assert(failed > 0 && failed <= 60, "%lld failed tries", failed);
}

/* The pool "web" of the reload tests: one server, health checks off, `extra`
 * pool keys (each followed by a comma). */
static void mid_connect_config(char *json, size_t len, const char *extra, unsigned port)
{
    int n = snprintf(json, len,
                     "{\"nat\":{\"ips\":[\"127.0.0.61\"],\"ports\":\"22000-22099\"},\"backends\":"
                     "[{\"name\":\"web\",\"proto\":\"tcp\",%s\"health\":{\"enabled\":false},"
                     "\"servers\":[\"127.0.0.1:%u\"]}]}",
                     extra, port);
    cr_assert(n > 0 && (size_t)n < len);
}

/* Writes json as gwd's configuration and reloads it (waits for the log). */
static void reload_to(const char *json)
{
    int before = gwd_log_count(&gwd, "reloaded:");
    cr_assert_eq(gwt_write_file(&dir, "gwd.json", json), 0);
    gwd_signal(&gwd, SIGHUP);
    cr_assert(gwd_log_wait(&gwd, "reloaded:", before + 1, 5000));
}

/*
 * A reload replaces the server a flow is still connecting to (its SYN waits
 * behind a full accept queue). The flow keeps what its pool said when the
 * connect began: when the connect completes on the retired server, the PROXY
 * header still goes first; when it fails there, the flow fails over to the
 * pool of the same name as reloaded, not closed for want of a pool.
 */
Test(gw_faults, reload_mid_connect_keeps_the_proxy_header_and_the_pool)
{
    char json[1024], line[256];
    uint16_t port;
    int fill[3];

    cr_assert_eq(gwt_backend_start(&be[0], &dir, "c", 0), 0);
    int stuck = stuck_listener(&port, fill);
    /* 1. The connect completes on the retired server: header first. */
    mid_connect_config(json, sizeof(json), "\"proxy_protocol\":\"v1\",\"connect_timeout\":8,",
                       port);
    start_with_config(json);
    int c1 = gwt_tcp_connect("127.0.0.62", gwd.port);
    cr_assert_geq(c1, 0);
    cr_assert_eq(gwt_write_full(c1, "HELLO\r\n", 7), 0);
    gwt_sleep_ms(200);
    mid_connect_config(json, sizeof(json), "\"connect_timeout\":8,", be[0].port);
    reload_to(json);
    for (int i = 0; i < 3; i++) { /* make room: gwd's next SYN gets through */
        int a = accept(stuck, NULL, NULL);
        cr_assert_geq(a, 0);
        close(a);
        close(fill[i]);
    }
    struct timeval tv = {6, 0};
    setsockopt(stuck, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    int s1 = accept(stuck, NULL, NULL);
    cr_assert_geq(s1, 0, "gwd's connect never reached the old server");
    setsockopt(s1, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    cr_assert_gt(gwt_read_line(s1, line, sizeof(line)), 0);
    cr_assert_eq(strncmp(line, "PROXY TCP4 127.0.0.62 ", 22), 0,
                 "the PROXY header did not come first: '%s'", line);
    cr_assert_gt(gwt_read_line(s1, line, sizeof(line)), 0);
    cr_assert_str_eq(line, "HELLO\r");
    close(s1);
    close(c1);
    close(stuck);

    /* 2. The connect fails on the retired server: the flow goes to the
     * reloaded pool's server (no PROXY header there now). */
    stuck = stuck_listener(&port, fill);
    mid_connect_config(json, sizeof(json), "\"connect_timeout\":1,", port);
    reload_to(json);
    int c2 = gwt_tcp_connect("127.0.0.63", gwd.port);
    cr_assert_geq(c2, 0);
    gwt_sleep_ms(200);
    mid_connect_config(json, sizeof(json), "", be[0].port);
    reload_to(json);
    /* the connect times out (1 s) on the retired server, then fails over */
    struct timeval tv2 = {5, 0};
    setsockopt(c2, SOL_SOCKET, SO_RCVTIMEO, &tv2, sizeof(tv2));
    char seen[64];
    cr_assert_gt(gwt_read_line(c2, seen, sizeof(seen)), 0, "no failover after the reload");
    cr_assert_eq(strncmp(seen, "127.0.0.61:", 11), 0, "%s", seen);
    close(c2);
    for (int i = 0; i < 3; i++)
        close(fill[i]);
    close(stuck);
    cr_assert_eq(gwd_stop(&gwd), 0);
}

/* Both pool ports held by other sockets of the host: the flow's port is
 * busy, the repick's too, and then none is left. The flow is refused like
 * one that found no port at the open: counted under pool_exhausted in show
 * stats and logged; it is not the server's failure (its connect_failures
 * stay 0). NAT address 127.0.0.64. */
Test(gw_faults, no_port_left_after_busy_ones_is_a_counted_refusal)
{
    char reply[8192], buf[16];
    int hold[2];

    for (int i = 0; i < 2; i++)
        hold[i] = hold_port("127.0.0.64", (uint16_t)(22000 + i));
    start_web("\"nat\":{\"ips\":[\"127.0.0.64\"],\"ports\":\"22000-22001\"}");
    int fd = gwt_tcp_connect("127.0.0.65", gwd.port);
    cr_assert_geq(fd, 0);
    struct timeval tv = {3, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    cr_assert_leq(recv(fd, buf, sizeof(buf), 0), 0, "a refused flow is closed");
    close(fd);
    cr_assert(gwd_log_wait(&gwd, "refused: pool_exhausted, no free port after a busy one", 1,
                           3000));
    cr_assert_gt(gwd_ctl(&gwd, "{\"id\":1,\"cmd\":\"show stats\"}\n", reply, sizeof(reply)), 0);
    cr_assert_not_null(strstr(reply, "\"pool_exhausted\":1"), "%s", reply);
    cr_assert_not_null(strstr(reply, "\"bind_busy\":2"), "%s", reply);
    cr_assert_gt(gwd_ctl(&gwd, "{\"id\":2,\"cmd\":\"show backends\"}\n", reply, sizeof(reply)), 0);
    cr_assert_not_null(strstr(reply, "\"connect_failures\":0"), "%s", reply);
    for (int i = 0; i < 2; i++)
        close(hold[i]);
    cr_assert_eq(gwd_stop(&gwd), 0);
}
