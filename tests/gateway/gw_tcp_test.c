/*
 * gw_tcp_test.c - the TCP flow's life in gwd, around how a connect is seen
 * complete (at once after connect(), or on writability) and how it ends: a
 * server that speaks first, a connect that succeeds with no byte either way,
 * a client that closes before sending anything, every server refusing, and
 * many short flows (connect, echo, FIN) whose store rows are exact.
 * Port-block logging: gwd with the block policy and nat.log "blocks" logs
 * one row per block (not per flow) while every flow keeps its session row.
 * NAT ports 21400-21599 and 21700-21739 (gateway suite range).
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gw_harness.h"

static struct gwt_dir dir;
static struct gwd gwd;
static struct gwt_backend be;

static void setup(void)
{
    cr_assert_eq(gwt_dir_new(&dir), 0);
    memset(&be, 0, sizeof(be));
    memset(&gwd, 0, sizeof(gwd));
}

static void teardown(void)
{
    gwt_teardown(&gwd, &be, 1, &dir);
}

TestSuite(gw_tcp, .init = setup, .fini = teardown, .timeout = 120);

static void start_with_config(const char *json)
{
    cr_assert_eq(gwd_start_config(&gwd, &dir, json), 0);
}

/* gwd with the in-test backend (it greets first, echoes, answers FIN with "BYE"). */
static void start_pair(const char *ports)
{
    char tb[64];

    cr_assert_eq(gwt_backend_start(&be, &dir, "a", 0), 0);
    snprintf(tb, sizeof(tb), "web=127.0.0.1:%u", be.port);
    const char *args[] = {"--tcp-backend", tb, "--nat-ports", ports, NULL};
    cr_assert_eq(gwd_start(&gwd, &dir, args, 0), 0);
}

/* After the client's FIN: the backend's "BYE" then its FIN reach the client,
 * and the store holds one session ended by client_fin with bytes_in as sent;
 * the backend saw the FIN from a NAT port in [lo, hi]. Closes fd. */
static void expect_bye_and_end(int fd, unsigned bytes_in, unsigned lo, unsigned hi)
{
    char line[128], c, sql[160];

    cr_assert_eq(gwt_read_line(fd, line, sizeof(line)), 3);
    cr_assert_str_eq(line, "BYE");
    cr_assert_eq(recv(fd, &c, 1, 0), 0);
    close(fd);
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM nat_sessions WHERE close_reason='client_fin' AND bytes_in=%u",
             bytes_in);
    cr_assert_eq(gwt_db_int(gwd.db, sql, 1, 5000), 1);
    cr_assert_eq(gwt_backend_count_nat(&be, "fin", lo, hi), 1);
}

/* A server-speaks-first protocol (SSH, SMTP): the banner reaches the client
 * before the client has sent a byte, then the flow relays and ends as usual. */
Test(gw_tcp, server_speaks_first)
{
    char line[128];

    start_pair("21700-21709");
    int fd = gwt_tcp_connect("127.0.0.20", gwd.port);
    cr_assert_geq(fd, 0);
    struct pollfd p = {fd, POLLIN, 0};
    cr_assert_eq(poll(&p, 1, 5000), 1, "no banner while the client is silent");
    int n = gwt_read_line(fd, line, sizeof(line));
    cr_assert_gt(n, 0);
    cr_assert(strncmp(line, "127.0.0.1:217", 13) == 0, "banner %s: not from the pool", line);
    size_t banner = (size_t)n + 1;
    cr_assert_eq(gwt_write_full(fd, "ping\n", 5), 0);
    cr_assert_eq(gwt_read_line(fd, line, sizeof(line)), 4);
    cr_assert_str_eq(line, "ping");
    cr_assert_eq(shutdown(fd, SHUT_WR), 0);
    expect_bye_and_end(fd, 5, 21700, 21709);
    /* bytes_out: the banner, the echo, "BYE\n". */
    cr_assert_eq(
        gwt_db_int(gwd.db, "SELECT bytes_out FROM nat_sessions", (long long)(banner + 5 + 4), 5000),
        (long long)(banner + 5 + 4));
}

/* A connect that completes while neither side ever sends: the session is
 * established all the same (not left "new"), and ends with the client's FIN. */
Test(gw_tcp, silent_flow_is_established)
{
    char json[1024];
    uint16_t port;

    /* A server that never accepts nor sends: the kernel completes the
     * handshake from the listen queue. */
    int srv = gwt_tcp_listen(16, &port);
    cr_assert_geq(srv, 0);
    snprintf(json, sizeof(json),
             "{\"nat\":{\"ports\":\"21710-21719\"},\"backends\":[{\"name\":\"quiet\",\"proto\":"
             "\"tcp\",\"health\":{\"enabled\":false},\"servers\":[\"127.0.0.1:%u\"]}]}",
             port);
    start_with_config(json);
    int fd = gwt_tcp_connect("127.0.0.21", gwd.port);
    cr_assert_geq(fd, 0);
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE state='established' AND "
                            "closed_at IS NULL AND bytes_in=0 AND bytes_out=0",
                            1, 5000),
                 1);
    close(fd);
    close(srv); /* the queued connection is reset: the flow ends either way */
    cr_assert_eq(
        gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions WHERE closed_at IS NULL", 0, 5000),
        0);
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions", -1, 0), 1);
}

/* The client's FIN comes first, before any byte: forwarded as a FIN, the
 * server's answer still reaches the client, then the server's FIN. */
Test(gw_tcp, client_fin_before_any_byte)
{
    char line[128];

    start_pair("21720-21729");
    int fd = gwt_tcp_connect("127.0.0.22", gwd.port);
    cr_assert_geq(fd, 0);
    cr_assert_eq(shutdown(fd, SHUT_WR), 0);
    cr_assert_gt(gwt_read_line(fd, line, sizeof(line)), 0); /* the banner */
    expect_bye_and_end(fd, 0, 21720, 21729);
}

/* Every server refuses: each attempt is a session closed connect_failed, and
 * the client is closed. */
Test(gw_tcp, every_server_refuses)
{
    char json[1024], c;
    uint16_t d1 = gwt_free_port(), d2 = gwt_free_port();

    snprintf(json, sizeof(json),
             "{\"nat\":{\"ports\":\"21730-21739\"},\"backends\":[{\"name\":\"dead\",\"proto\":"
             "\"tcp\",\"health\":{\"enabled\":false},\"servers\":[\"127.0.0.1:%u\","
             "\"127.0.0.1:%u\"]}]}",
             d1, d2);
    start_with_config(json);
    int fd = gwt_tcp_connect("127.0.0.23", gwd.port);
    cr_assert_geq(fd, 0);
    cr_assert_leq(recv(fd, &c, 1, 0), 0, "the client must be closed");
    close(fd);
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE close_reason="
                            "'connect_failed'",
                            2, 5000),
                 2);
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions", -1, 0), 2);
}

#define SHORT_CONC 25
#define SHORT_ROUNDS 4

/* Many short flows, 25 at a time (the connection-rate benchmark's shape): each
 * greeted, echoed, half-closed by the client; every store row exact. */
Test(gw_tcp, many_short_flows_exact)
{
    char line[128], msg[65], c;
    int fds[SHORT_CONC];

    memset(msg, 'x', 63);
    msg[63] = '\n';
    msg[64] = 0;
    start_pair("21400-21567");
    for (int r = 0; r < SHORT_ROUNDS; r++) {
        for (int i = 0; i < SHORT_CONC; i++) {
            char src[32];
            snprintf(src, sizeof(src), "127.0.1.%d", 1 + i % 5);
            fds[i] = gwt_tcp_connect(src, gwd.port);
            cr_assert_geq(fds[i], 0);
        }
        for (int i = 0; i < SHORT_CONC; i++)
            cr_assert_eq(gwt_write_full(fds[i], msg, 64), 0);
        for (int i = 0; i < SHORT_CONC; i++) {
            cr_assert_gt(gwt_read_line(fds[i], line, sizeof(line)), 0); /* banner */
            cr_assert_eq(gwt_read_line(fds[i], line, sizeof(line)), 63);
            cr_assert_eq(shutdown(fds[i], SHUT_WR), 0);
            cr_assert_eq(gwt_read_line(fds[i], line, sizeof(line)), 3);
            cr_assert_str_eq(line, "BYE");
            cr_assert_eq(recv(fds[i], &c, 1, 0), 0);
            close(fds[i]);
        }
    }
    int total = SHORT_CONC * SHORT_ROUNDS;
    cr_assert_eq(gwt_db_int(gwd.db,
                            "SELECT count(*) FROM nat_sessions WHERE close_reason='client_fin' "
                            "AND bytes_in=64",
                            total, 10000),
                 total);
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions", -1, 0), total);
    cr_assert_eq(gwt_backend_count_nat(&be, "fin", 21400, 21567), total);
}

/* The in-test backend and gwd with the nat section's fields `nat` (JSON). */
static void start_with_nat(const char *nat)
{
    char json[1024];

    cr_assert_eq(gwt_backend_start(&be, &dir, "a", 0), 0);
    snprintf(json, sizeof(json),
             "{\"nat\":{%s},\"backends\":[{\"name\":\"web\",\"proto\":\"tcp\","
             "\"servers\":[\"127.0.0.1:%u\"]}]}",
             nat, be.port);
    start_with_config(json);
}

/* The client's FIN on fd: the backend answers "BYE" and closes; fd is closed. */
static void fin_bye(int fd)
{
    char line[128], c;

    cr_assert_eq(shutdown(fd, SHUT_WR), 0);
    cr_assert_eq(gwt_read_line(fd, line, sizeof(line)), 3);
    cr_assert_eq(recv(fd, &c, 1, 0), 0);
    close(fd);
}

/* Two clients with 3 flows open at once each, then closed: per client one
 * block_alloc (all its flows in its block of 8) and one block_free after its
 * last close; 6 session rows; no per-flow log row. */
Test(gw_tcp, block_policy_logs_blocks_not_flows)
{
    char line[128], got[512];
    int fds[6];

    start_with_nat("\"ports\":\"21568-21583\",\"policy\":\"block\",\"block_size\":8,"
                   "\"log\":\"blocks\"");
    for (int i = 0; i < 6; i++) {
        fds[i] = gwt_tcp_connect(i < 3 ? "127.0.2.1" : "127.0.2.2", gwd.port);
        cr_assert_geq(fds[i], 0);
        cr_assert_gt(gwt_read_line(fds[i], line, sizeof(line)), 0); /* banner: mapped */
    }
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_events WHERE event='block_alloc'", 2,
                            5000),
                 2);
    for (int i = 0; i < 6; i++)
        fin_bye(fds[i]);
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions WHERE closed_at IS NOT NULL",
                            6, 10000),
                 6);
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_events WHERE event='block_free'", 2,
                            5000),
                 2);
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_events", -1, 0), 4);
    /* each client's sessions sit in its own block, as the log says */
    cr_assert_eq(gwt_db_text(gwd.db,
                             "SELECT group_concat(client_ip || ':' || n, ' ') FROM (SELECT"
                             " s.client_ip, count(*) AS n FROM nat_sessions s JOIN nat_events b"
                             " ON b.event = 'block_alloc' AND b.client_ip = s.client_ip AND"
                             " s.nat_port BETWEEN b.nat_port AND b.nat_port_last AND"
                             " b.nat_port_last = b.nat_port + 7 GROUP BY s.client_ip"
                             " ORDER BY s.client_ip)",
                             got, sizeof(got), 0),
                 0);
    cr_assert_str_eq(got, "127.0.2.1:3 127.0.2.2:3");
}

/* nat.block_hold: one client's sequential flows share one block (one
 * block_alloc), held between them; the block_free comes at shutdown. */
Test(gw_tcp, block_hold_keeps_one_block_for_sequential_flows)
{
    char line[128];

    start_with_nat("\"ports\":\"21584-21599\",\"policy\":\"block\",\"block_size\":8,"
                   "\"block_hold\":30,\"log\":\"blocks\"");
    for (int i = 0; i < 5; i++) {
        int fd = gwt_tcp_connect("127.0.2.3", gwd.port);
        cr_assert_geq(fd, 0);
        cr_assert_gt(gwt_read_line(fd, line, sizeof(line)), 0);
        fin_bye(fd);
        cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions WHERE closed_at IS"
                                        " NOT NULL",
                                i + 1, 5000),
                     i + 1);
    }
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_events", -1, 0), 1);
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_events WHERE event='block_alloc'"
                                    " AND client_ip='127.0.2.3'",
                            -1, 0),
                 1);
    cr_assert_eq(gwd_stop(&gwd), 0);
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_events WHERE event='block_free'"
                                    " AND client_ip='127.0.2.3' AND reason IS NULL",
                            -1, 0),
                 1);
    cr_assert_eq(gwt_db_int(gwd.db, "SELECT count(*) FROM nat_sessions", -1, 0), 5);
}
