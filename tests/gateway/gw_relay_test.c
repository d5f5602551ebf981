/*
 * gw_relay_test.c - gwd relaying real flows on loopback: many clients from
 * many source IPs over TCP and UDP on one port, each translated to the
 * address the NAT table (store) says; 10 MB each way; half-close; RST both
 * ways; real clients (curl to an HTTP server, iperf3 in UDP mode).
 * NAT ports 20000-21999 (gateway suite range).
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gw_harness.h"

static struct gwt_dir dir;
static struct gwd gwd;
static struct gwt_backend be;

static void setup(void)
{
    cr_assert_eq(gwt_dir_new(&dir), 0);
}

/* Helper processes (http.server, iperf3 server) stopped even when a test fails. */
static pid_t helpers[4];
static int n_helpers;

static void teardown(void)
{
    for (int i = 0; i < n_helpers; i++) {
        if (helpers[i] > 0) {
            kill(helpers[i], SIGKILL);
            waitpid(helpers[i], NULL, 0);
        }
    }
    n_helpers = 0;
    gwt_teardown(&gwd, &be, 1, &dir);
}

TestSuite(gw_relay, .init = setup, .fini = teardown, .timeout = 180);

static void start_pair(const char *ports)
{
    char tb[64], ub[64];

    cr_assert_eq(gwt_backend_start(&be, &dir, "a", 0), 0);
    snprintf(tb, sizeof(tb), "web=127.0.0.1:%u", be.port);
    snprintf(ub, sizeof(ub), "dns=127.0.0.1:%u", be.port);
    const char *args[] = {"--tcp-backend", tb, "--udp-backend", ub, "--nat-ports", ports, NULL};
    cr_assert_eq(gwd_start(&gwd, &dir, args, 0), 0);
}

#define N_IPS 40
#define PER_IP 8
#define N_CLIENTS (N_IPS * PER_IP)

/* Hundreds of TCP and UDP clients from 40 source IPs at once on one port:
 * each backend-seen source equals the NAT table's nat_ip:nat_port. */
Test(gw_relay, many_clients_translated_as_the_table_says)
{
    static int tcp[N_CLIENTS], udp[N_CLIENTS];
    static char tcp_seen[N_CLIENTS][64], udp_seen[N_CLIENTS][64];
    char src[32], line[128], sql[512], want[64], local[64];

    start_pair("20000-20999");
    for (int i = 0; i < N_CLIENTS; i++) {
        snprintf(src, sizeof(src), "127.0.0.%d", 2 + i / PER_IP);
        tcp[i] = gwt_tcp_connect(src, gwd.port);
        cr_assert_geq(tcp[i], 0, "tcp connect %d", i);
        udp[i] = gwt_udp_socket(src, gwd.port);
        cr_assert_geq(udp[i], 0);
        char msg[32];
        int n = snprintf(msg, sizeof(msg), "hello %d", i);
        cr_assert_eq(send(udp[i], msg, (size_t)n, 0), n);
    }
    /* All flows are open at once now; read what the backend saw. */
    for (int i = 0; i < N_CLIENTS; i++) {
        cr_assert_gt(gwt_read_line(tcp[i], tcp_seen[i], sizeof(tcp_seen[i])), 0, "tcp %d", i);
        char buf[256];
        ssize_t n = recv(udp[i], buf, sizeof(buf) - 1, 0);
        cr_assert_gt(n, 0, "udp reply %d", i);
        buf[n] = '\0';
        char *sp = strchr(buf, ' ');
        cr_assert_not_null(sp);
        *sp = '\0';
        cr_assert_lt(strlen(buf), sizeof(udp_seen[i]));
        memcpy(udp_seen[i], buf, strlen(buf) + 1);
        char expect[32];
        snprintf(expect, sizeof(expect), "hello %d", i);
        cr_assert_str_eq(sp + 1, expect);
    }
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions WHERE closed_at IS NULL",
                            2 * N_CLIENTS, 5000),
                 2 * N_CLIENTS);
    for (int i = 0; i < N_CLIENTS; i++) {
        for (int k = 0; k < 2; k++) {
            int fd = k ? udp[i] : tcp[i];
            gwt_local(fd, local, sizeof(local));
            char *colon = strrchr(local, ':');
            *colon = '\0';
            snprintf(sql, sizeof(sql),
                     "SELECT nat_ip || ':' || nat_port FROM nat_sessions WHERE proto='%s' AND "
                     "client_ip='%s' AND client_port=%s AND closed_at IS NULL",
                     k ? "udp" : "tcp", local, colon + 1);
            cr_assert_eq(gwt_db_text(gwd.db, sql, want, sizeof(want), 3000), 0, "%s", sql);
            cr_assert_str_eq(k ? udp_seen[i] : tcp_seen[i], want, "client %d %s", i,
                             k ? "udp" : "tcp");
        }
    }
    /* Backends see one IP, told apart by port: the pairs are all distinct. */
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(DISTINCT proto || nat_ip || ':' || nat_port) FROM "
                            "nat_sessions WHERE closed_at IS NULL",
                            -1, 0),
                 2 * N_CLIENTS);
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(DISTINCT client_ip) FROM nat_sessions", -1, 0),
                 N_IPS);
    for (int i = 0; i < N_CLIENTS; i++) {
        /* A line after the greeting makes the echo visible too. */
        cr_assert_eq(gwt_write_full(tcp[i], "x\n", 2), 0);
        cr_assert_eq(gwt_read_line(tcp[i], line, sizeof(line)), 1);
        close(tcp[i]);
        close(udp[i]);
    }
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE proto='tcp' AND "
                            "close_reason='client_fin'",
                            N_CLIENTS, 5000),
                 N_CLIENTS);
    cr_assert_eq(gwd_stop(&gwd), 0);
}

/* 10 MB each way through one flow, intact, with both sides sending at once;
 * then a half-close after the bulk (the FIN follows the last byte). */
static void bulk_both_ways(void)
{
    const size_t total = 10u << 20;
    char line[128];
    unsigned char *out = malloc(total), *in = malloc(total);

    for (size_t i = 0; i < total; i++)
        out[i] = (unsigned char)((i * 2654435761u) >> 13);
    int fd = gwt_tcp_connect("127.0.0.2", gwd.port);
    cr_assert_geq(fd, 0);
    cr_assert_gt(gwt_read_line(fd, line, sizeof(line)), 0);
    size_t sent = 0, got = 0;
    uint64_t end = gwt_ms() + 120000;
    while (got < total && gwt_ms() < end) {
        struct pollfd p = {fd, (short)(POLLIN | (sent < total ? POLLOUT : 0)), 0};
        cr_assert_geq(poll(&p, 1, 1000), 0);
        if ((p.revents & POLLOUT) && sent < total) {
            ssize_t w = send(fd, out + sent, total - sent < 65536 ? total - sent : 65536,
                             MSG_DONTWAIT | MSG_NOSIGNAL);
            if (w > 0)
                sent += (size_t)w;
        }
        if (p.revents & POLLIN) {
            ssize_t r = recv(fd, in + got, total - got, MSG_DONTWAIT);
            cr_assert_neq(r, 0, "early EOF at %zu", got);
            if (r > 0)
                got += (size_t)r;
        }
    }
    cr_assert_eq(got, total);
    cr_assert_eq(memcmp(in, out, total), 0);
    shutdown(fd, SHUT_WR);
    cr_assert_eq(gwt_read_line(fd, line, sizeof(line)), 3);
    cr_assert_str_eq(line, "BYE");
    close(fd);
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT bytes_in FROM nat_sessions WHERE proto='tcp' AND "
                            "closed_at IS NOT NULL",
                            (long long)total, 5000),
                 (long long)total);
    /* out: the greeting line, the echo, "BYE\n". */
    long long bo =
        gwt_db_int(gwd.db, "SELECT bytes_out FROM nat_sessions WHERE proto='tcp'", -1, 0);
    cr_assert_eq(bo, (long long)(strlen("127.0.0.1:21000\n") + total + 4));
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT close_reason = 'client_fin' FROM nat_sessions", -1, 0),
                 1);
    free(out);
    free(in);
}

/* Bulk goes by splice(2) after the first MiB (the default). */
Test(gw_relay, ten_megabytes_each_way_intact)
{
    start_pair("21000-21000");
    bulk_both_ways();
}

/* The same with copying only (limits.splice_after 0) and a small buffer. */
Test(gw_relay, ten_megabytes_each_way_intact_copying)
{
    char json[512];

    cr_assert_eq(gwt_backend_start(&be, &dir, "a", 0), 0);
    snprintf(json, sizeof(json),
             "{\"nat\":{\"ports\":\"21000-21000\"},\"limits\":{\"buffer\":4096,"
             "\"splice_after\":0},\"backends\":[{\"name\":\"web\",\"proto\":\"tcp\","
             "\"servers\":[\"127.0.0.1:%u\"]}]}",
             be.port);
    cr_assert_eq(gwd_start_config(&gwd, &dir, json), 0);
    bulk_both_ways();
}

/* The client's FIN reaches the backend as a half-close: the backend can
 * still answer after it, then its FIN reaches the client. */
Test(gw_relay, half_close_both_directions)
{
    char line[128];

    start_pair("21100-21199");
    int fd = gwt_tcp_connect("127.0.0.3", gwd.port);
    cr_assert_geq(fd, 0);
    cr_assert_gt(gwt_read_line(fd, line, sizeof(line)), 0);
    cr_assert_eq(gwt_write_full(fd, "abc\n", 4), 0);
    cr_assert_eq(shutdown(fd, SHUT_WR), 0);
    cr_assert_eq(gwt_read_line(fd, line, sizeof(line)), 3);
    cr_assert_str_eq(line, "abc");
    cr_assert_eq(gwt_read_line(fd, line, sizeof(line)), 3);
    cr_assert_str_eq(line, "BYE"); /* sent by the backend after it saw our FIN */
    char c;
    cr_assert_eq(recv(fd, &c, 1, 0), 0); /* then its FIN */
    close(fd);
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE close_reason='client_fin'", 1,
                            5000),
                 1);
    cr_assert_eq(gwt_backend_count_nat(&be, "fin", 21100, 21199), 1);

    /* The backend closes first: backend_fin. */
    fd = gwt_tcp_connect("127.0.0.3", gwd.port);
    cr_assert_geq(fd, 0);
    cr_assert_gt(gwt_read_line(fd, line, sizeof(line)), 0);
    cr_assert_eq(gwt_write_full(fd, "!close", 6), 0);
    cr_assert_eq(recv(fd, &c, 1, 0), 0);
    close(fd);
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE close_reason='backend_fin'", 1,
                            5000),
                 1);
}

/* A client's RST reaches the backend as an RST, and a backend's RST the client. */
Test(gw_relay, rst_propagates_both_ways)
{
    char line[128];

    start_pair("21200-21299");
    int fd = gwt_tcp_connect("127.0.0.4", gwd.port);
    cr_assert_geq(fd, 0);
    cr_assert_gt(gwt_read_line(fd, line, sizeof(line)), 0);
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
    uint64_t end = gwt_ms() + 5000;
    while (gwt_backend_count_nat(&be, "rst", 21200, 21299) < 1 && gwt_ms() < end)
        gwt_sleep_ms(20);
    cr_assert_eq(gwt_backend_count_nat(&be, "rst", 21200, 21299), 1, "the backend saw a reset");
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE close_reason='client_rst'", 1,
                            5000),
                 1);

    fd = gwt_tcp_connect("127.0.0.4", gwd.port);
    cr_assert_geq(fd, 0);
    cr_assert_gt(gwt_read_line(fd, line, sizeof(line)), 0);
    cr_assert_eq(gwt_write_full(fd, "!rst", 4), 0);
    char c;
    errno = 0;
    ssize_t r = recv(fd, &c, 1, 0);
    cr_assert_eq(r, -1);
    cr_assert_eq(errno, ECONNRESET, "client got %s", strerror(errno));
    close(fd);
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE close_reason='backend_rst'", 1,
                            5000),
                 1);
}

/* ---- real clients: curl and iperf3 ------------------------------------------- */

static pid_t spawn_quiet(const char *const *argv, const char *out)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        for (int i = 3; i < 1024; i++)
            close(i);
        char *av[32];
        size_t n = 0;
        for (; argv[n] && n < 31; n++)
            av[n] = (char *)(uintptr_t)argv[n];
        av[n] = NULL;
        execvp(av[0], av);
        _exit(127);
    }
    return pid;
}

static int wait_exit(pid_t pid, int timeout_ms)
{
    uint64_t end = gwt_ms() + (uint64_t)timeout_ms;
    int st;
    while (gwt_ms() < end) {
        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        gwt_sleep_ms(20);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

Test(gw_relay, curl_through_gwd_to_an_http_server)
{
    char p[256], out[256], body[256], portarg[16], url[128], got[4096];

    uint16_t hp = gwt_free_port();
    cr_assert_neq(hp, 0);
    gwt_path(&dir, "www", p, sizeof(p));
    cr_assert_eq(mkdir(p, 0755), 0);
    cr_assert_eq(gwt_write_file(&dir, "www/hello.txt", "hello through the gateway\n"), 0);
    snprintf(portarg, sizeof(portarg), "%u", hp);
    const char *http[] = {"python3",     "-m", "http.server", portarg, "--bind", "127.0.0.1",
                          "--directory", p,    NULL};
    pid_t hpid = spawn_quiet(http, gwt_path(&dir, "http.log", out, sizeof(out)));
    cr_assert_gt(hpid, 0);
    helpers[n_helpers++] = hpid;
    /* Wait until it accepts. */
    int up = -1;
    for (int i = 0; i < 200 && up < 0; i++) {
        up = gwt_tcp_connect("127.0.0.1", hp);
        if (up < 0)
            gwt_sleep_ms(50);
    }
    cr_assert_geq(up, 0, "http.server did not start");
    close(up);

    snprintf(body, sizeof(body), "web=127.0.0.1:%u", hp);
    const char *args[] = {"--tcp-backend", body, "--nat-ports", "21300-21399", NULL};
    cr_assert_eq(gwd_start(&gwd, &dir, args, 0), 0);
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/hello.txt", gwd.port);
    for (int i = 0; i < 5; i++) {
        const char *curl[] = {"curl",        "-sS",       "--max-time", "10",
                              "--interface", "127.0.0.9", url,          NULL};
        pid_t cp = spawn_quiet(curl, gwt_path(&dir, "curl.out", out, sizeof(out)));
        cr_assert_eq(wait_exit(cp, 20000), 0, "curl failed");
        FILE *f = fopen(out, "r");
        size_t n = fread(got, 1, sizeof(got) - 1, f);
        fclose(f);
        got[n] = '\0';
        cr_assert_str_eq(got, "hello through the gateway\n");
    }
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE client_ip='127.0.0.9' AND "
                            "closed_at IS NOT NULL",
                            5, 5000),
                 5);
    kill(hpid, SIGTERM);
    wait_exit(hpid, 5000);
    n_helpers = 0;
}

Test(gw_relay, iperf3_udp_tcp_control_and_udp_data_on_one_port)
{
    char portarg[16], gp[16], out[256], cfg[512];
    static char json[1 << 16];

    uint16_t ip = gwt_free_port();
    cr_assert_neq(ip, 0);
    snprintf(portarg, sizeof(portarg), "%u", ip);
    const char *srv[] = {"iperf3", "-s", "-B", "127.0.0.1", "-p", portarg, NULL};
    pid_t spid = spawn_quiet(srv, gwt_path(&dir, "iperf-s.log", out, sizeof(out)));
    cr_assert_gt(spid, 0);
    helpers[n_helpers++] = spid;
    int up = -1;
    for (int i = 0; i < 200 && up < 0; i++) {
        up = gwt_tcp_connect("127.0.0.1", ip);
        if (up < 0)
            gwt_sleep_ms(50);
    }
    cr_assert_geq(up, 0, "iperf3 server did not start");
    close(up); /* the server shrugs this probe off and keeps listening */
    gwt_sleep_ms(100);

    /* No health checks here: iperf3's server takes every connection for a test. */
    snprintf(cfg, sizeof(cfg),
             "{\"nat\":{\"ports\":\"21400-21499\"},\"backends\":[{\"name\":\"t\",\"proto\":"
             "\"tcp\",\"health\":{\"enabled\":false},\"servers\":[\"127.0.0.1:%u\"]},{\"name\":"
             "\"u\",\"proto\":\"udp\",\"servers\":[\"127.0.0.1:%u\"]}]}",
             ip, ip);
    cr_assert_eq(gwd_start_config(&gwd, &dir, cfg), 0);
    snprintf(gp, sizeof(gp), "%u", gwd.port);
    const char *cli[] = {"iperf3", "-c", "127.0.0.1", "-p", gp,     "-u",     "-b",
                         "20M",    "-t", "2",         "-l", "1200", "--json", NULL};
    pid_t cpid = spawn_quiet(cli, gwt_path(&dir, "iperf-c.json", out, sizeof(out)));
    int rc = wait_exit(cpid, 60000);
    FILE *f = fopen(out, "r");
    size_t n = f ? fread(json, 1, sizeof(json) - 1, f) : 0;
    if (f)
        fclose(f);
    json[n] = '\0';
    cr_assert_eq(rc, 0, "iperf3 client: %s", json);
    /* The UDP data went through a UDP mapping, the control through a TCP one. */
    cr_assert_geq(
        gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions WHERE proto='udp'", 1, 3000), 1);
    cr_assert_geq(
        gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions WHERE proto='tcp'", 1, 3000), 1);
    /* 20 Mbit/s for 2 s is 5 MB; the live row's byte counts are final once closed. */
    cr_assert_eq(gwd_stop(&gwd), 0);
    cr_assert_gt(
        gwt_db_int(gwd.db, "SELECT max(bytes_in) FROM nat_sessions WHERE proto='udp'", -1, 0),
        1000000);
    char *lost = strstr(json, "\"lost_percent\"");
    cr_assert_not_null(lost, "no lost_percent in %s", json);
    kill(spid, SIGTERM);
    wait_exit(spid, 10000);
    n_helpers = 0;
}

/* ---- addresses: PROXY protocol, multi-homed replies, IPv6 ------------------- */

/* Two pools on one server, PROXY v1 and v2; the TCP route goes to `route`. */
static void proxy_config(char *json, size_t len, unsigned port, const char *route)
{
    snprintf(json, len,
             "{\"nat\":{\"ports\":\"21500-21599\"},\"backends\":[{\"name\":\"web\",\"proto\":"
             "\"tcp\",\"proxy_protocol\":\"v1\",\"servers\":[\"127.0.0.1:%u\"]},{\"name\":"
             "\"web2\",\"proto\":\"tcp\",\"proxy_protocol\":\"v2\",\"servers\":["
             "\"127.0.0.1:%u\"]}],\"routes\":[{\"proto\":\"tcp\",\"backend\":\"%s\"}]}",
             port, port, route);
}

/* The PROXY header reaches the backend first (the test backend echoes it). */
Test(gw_relay, proxy_protocol_v1_and_v2)
{
    char json[1024], line[256], seen[64], local[64];

    cr_assert_eq(gwt_backend_start(&be, &dir, "a", 0), 0);
    proxy_config(json, sizeof(json), be.port, "web");
    cr_assert_eq(gwd_start_config(&gwd, &dir, json), 0);
    int fd = gwt_tcp_connect("127.0.0.12", gwd.port);
    cr_assert_geq(fd, 0);
    cr_assert_gt(gwt_read_line(fd, seen, sizeof(seen)), 0);
    cr_assert_gt(gwt_read_line(fd, line, sizeof(line)), 0);
    gwt_local(fd, local, sizeof(local));
    char want[256];
    *strrchr(local, ':') = ' ';
    snprintf(want, sizeof(want), "PROXY TCP4 %.*s 127.0.0.1 %s %u\r", (int)strcspn(local, " "),
             local, strchr(local, ' ') + 1, gwd.port);
    cr_assert_str_eq(line, want);
    close(fd);
    cr_assert_eq(gwd_stop(&gwd), 0);

    /* v2: the route goes to the other pool. */
    proxy_config(json, sizeof(json), be.port, "web2");
    cr_assert_eq(gwd_start_config(&gwd, &dir, json), 0);
    fd = gwt_tcp_connect("127.0.0.12", gwd.port);
    cr_assert_geq(fd, 0);
    cr_assert_gt(gwt_read_line(fd, seen, sizeof(seen)), 0);
    unsigned char hdr[28];
    cr_assert_eq(gwt_read_full(fd, hdr, sizeof(hdr)), 0);
    cr_assert_eq(memcmp(hdr, "\r\n\r\n\0\r\nQUIT\n", 12), 0);
    cr_assert_eq(hdr[12], 0x21);
    cr_assert_eq(hdr[13], 0x11);
    cr_assert_eq(hdr[15], 12);
    cr_assert_eq(memcmp(hdr + 16, "\x7f\x00\x00\x0c", 4), 0); /* 127.0.0.12 */
    cr_assert_eq(memcmp(hdr + 20, "\x7f\x00\x00\x01", 4), 0);
    cr_assert_eq((hdr[26] << 8 | hdr[27]), gwd.port);
    close(fd);
    /* The second run continued the first one's session ids. */
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(DISTINCT id) FROM nat_sessions", 2, 5000), 2);
}

/* Bound to 0.0.0.0, a UDP reply leaves from the address the client wrote to
 * (a connected UDP client drops anything else); IPv6 clients work too. */
Test(gw_relay, udp_reply_from_the_address_written_to_and_ipv6)
{
    char tb[64], ub[64], buf[256];

    cr_assert_eq(gwt_backend_start(&be, &dir, "a", 0), 0);
    snprintf(tb, sizeof(tb), "127.0.0.1:%u", be.port);
    snprintf(ub, sizeof(ub), "127.0.0.1:%u", be.port);
    const char *args[] = {"-b", "0.0.0.0",       "-b", "::",          "--tcp-backend",
                          tb,   "--udp-backend", ub,   "--nat-ports", "21600-21699",
                          NULL};
    cr_assert_eq(gwd_start(&gwd, &dir, args, 0), 0);
    for (int i = 20; i < 24; i++) {
        char dst[32];
        snprintf(dst, sizeof(dst), "127.0.0.%d", i);
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        struct sockaddr_in a = {0};
        a.sin_family = AF_INET;
        a.sin_port = htons(gwd.port);
        inet_pton(AF_INET, dst, &a.sin_addr);
        struct timeval tv = {5, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
        cr_assert_eq(send(fd, "hi", 2, 0), 2);
        cr_assert_gt(recv(fd, buf, sizeof(buf), 0), 0, "no reply from %s", dst);
        close(fd);
    }
    int fd6 = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 a6 = {0};
    a6.sin6_family = AF_INET6;
    a6.sin6_port = htons(gwd.port);
    a6.sin6_addr = in6addr_loopback;
    if (connect(fd6, (struct sockaddr *)&a6, sizeof(a6)) != 0) {
        close(fd6);
        cr_log_warn("no IPv6 loopback here: IPv6 part skipped");
        return;
    }
    struct timeval tv = {5, 0};
    setsockopt(fd6, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    cr_assert_gt(gwt_read_line(fd6, buf, sizeof(buf)), 0);
    cr_assert(strncmp(buf, "127.0.0.1:216", 13) == 0, "%s", buf);
    close(fd6);
    int u6 = socket(AF_INET6, SOCK_DGRAM, 0);
    setsockopt(u6, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    cr_assert_eq(connect(u6, (struct sockaddr *)&a6, sizeof(a6)), 0);
    cr_assert_eq(send(u6, "v6", 2, 0), 2);
    ssize_t n = recv(u6, buf, sizeof(buf) - 1, 0);
    cr_assert_gt(n, 0);
    close(u6);
    cr_assert_eq(
        gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions WHERE client_ip='::1'", 2, 5000), 2);
}

/* One pool with an IPv4 and an IPv6 server: each is reached from the NAT
 * address of its own family (gwd derives 127.0.0.1 and ::1), round robin. */
Test(gw_relay, pool_mixing_ipv4_and_ipv6_servers)
{
    char json[512], line[128];
    int v4 = 0, v6 = 0;

    cr_assert_eq(gwt_backend_start(&be, &dir, "a", 0), 0);
    int l6 = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(l6, 0);
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    socklen_t al = sizeof(a6);
    if (bind(l6, (struct sockaddr *)&a6, sizeof(a6)) < 0) {
        close(l6);
        cr_skip_test("no IPv6 loopback here");
    }
    cr_assert_eq(listen(l6, 16), 0);
    cr_assert_eq(getsockname(l6, (struct sockaddr *)&a6, &al), 0);
    snprintf(json, sizeof(json),
             "{\"nat\":{\"ports\":\"21800-21899\"},\"backends\":[{\"name\":\"web\",\"proto\":"
             "\"tcp\",\"servers\":[\"127.0.0.1:%u\",\"[::1]:%u\"],\"health\":{\"enabled\":"
             "false}}]}",
             be.port, ntohs(a6.sin6_port));
    cr_assert_eq(gwd_start_config(&gwd, &dir, json), 0);
    for (int i = 0; i < 4; i++) {
        int fd = gwt_tcp_connect("127.0.0.30", gwd.port);
        cr_assert_geq(fd, 0);
        /* Either the IPv4 backend greets the client with the peer it saw, or
         * the IPv6 listener gets the connection (bounded wait: 5 s). */
        struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = l6, .events = POLLIN}};
        cr_assert_gt(poll(p, 2, 5000), 0, "flow %d reached no server", i);
        if (p[1].revents & POLLIN) {
            struct sockaddr_in6 peer;
            socklen_t pl = sizeof(peer);
            int c = accept(l6, (struct sockaddr *)&peer, &pl);
            cr_assert_geq(c, 0);
            cr_assert(IN6_IS_ADDR_LOOPBACK(&peer.sin6_addr), "IPv6 server saw a non-::1 peer");
            cr_assert(ntohs(peer.sin6_port) >= 21800 && ntohs(peer.sin6_port) <= 21899,
                      "IPv6 server saw port %u", ntohs(peer.sin6_port));
            close(c);
            v6++;
        } else {
            cr_assert_gt(gwt_read_line(fd, line, sizeof(line)), 0);
            cr_assert(strncmp(line, "127.0.0.1:218", 13) == 0, "IPv4 server saw %s", line);
            v4++;
        }
        close(fd);
    }
    close(l6);
    cr_assert_eq(v4, 2);
    cr_assert_eq(v6, 2);
}
