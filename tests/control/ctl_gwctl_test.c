/*
 * ctl_gwctl_test.c - the gwctl program: exit codes, --help, finding gwd,
 * every daemon command against a real gwd, events and watch, and the --db
 * commands (show nat, log, whois) against a store whose NAT port was reused
 * over time. NAT pool ports 24500-24999.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ctl_harness.h"
#include "db/db.h"

static struct ctl_echo echo;
static struct ctl_gwd gwd;
static char ubackend[64];

static void start(bool default_path, const char *const *env)
{
    const char *args[] = {"--udp-backend", ubackend,      "--nat-ip", "127.0.0.1", "--nat-ports",
                          "24500-24999",   "--log-level", "warn",     NULL};

    cr_assert_eq(ctl_echo_start(&echo), 0);
    snprintf(ubackend, sizeof(ubackend), "u=127.0.0.1:%u", echo.udp_port);
    if (!default_path) {
        cr_assert_eq(ctl_gwd_start(&gwd, args, env), 0);
        return;
    }
    /* gwd without --control: its path comes from GW_SOCKET in env */
    memset(&gwd, 0, sizeof(gwd));
    gwd.no_control_flag = true;
    cr_assert_eq(ctl_gwd_spawn(&gwd, NULL, args, env), 0);
}

static void stop(void)
{
    ctl_gwd_stop(&gwd);
    ctl_echo_stop(&echo);
}

/* Runs gwctl --socket SOCK args...; output in *out (freed by the caller). */
static int gwctl(char **out, char **err, const char *a0, const char *a1, const char *a2,
                 const char *a3, const char *a4, const char *a5)
{
    const char *args[10] = {"--socket", gwd.sock, a0, a1, a2, a3, a4, a5, NULL};

    return ctl_run_gwctl(args, NULL, out, err);
}

static int count_lines(const char *s)
{
    int n = 0;

    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void flows(int *fds, int n, const char *ip)
{
    for (int i = 0; i < n; i++) {
        fds[i] = ctl_udp_socket(ip, 0, 3000);
        cr_assert_eq(ctl_udp_roundtrip(fds[i], gwd.port, "hello"), 0);
    }
}

Test(ctl_gwctl, cannot_reach_gwd_exits_3_naming_the_path)
{
    const char *args[] = {"--socket", "/tmp/ctl-no-such-dir/gwd.sock", "show", "stats", NULL};
    char *out, *err;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char path[] = "/tmp/ctl-stale-XXXXXX";
    int fd;

    cr_assert_eq(ctl_run_gwctl(args, NULL, &out, &err), 3);
    cr_assert_not_null(strstr(err, "/tmp/ctl-no-such-dir/gwd.sock"), "%s", err);
    cr_assert_not_null(strstr(err, "is gwd running"), "%s", err);
    free(out);
    free(err);

    /* a stale socket: connection refused */
    fd = mkstemp(path);
    close(fd);
    unlink(path);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    args[1] = path;
    cr_assert_eq(ctl_run_gwctl(args, NULL, &out, &err), 3);
    cr_assert_not_null(strstr(err, "stale"), "%s", err);
    free(out);
    free(err);
    unlink(path);

    /* GW_SOCKET is what it tries when no --socket is given */
    const char *env[] = {"GW_SOCKET=/tmp/ctl-no-such-dir/env.sock", NULL};
    const char *args2[] = {"version", NULL};
    cr_assert_eq(ctl_run_gwctl(args2, env, &out, &err), 3);
    cr_assert_not_null(strstr(err, "/tmp/ctl-no-such-dir/env.sock"), "%s", err);
    free(out);
    free(err);
}

Test(ctl_gwctl, usage_errors_exit_2)
{
    static const char *const cases[][6] = {
        {NULL},
        {"frobnicate", NULL},
        {"show", NULL},
        {"show", "nat", "--limit", NULL},
        {"show", "nat", "--limit", "0", NULL},
        {"show", "nat", "--colour", "red", NULL},
        {"show", "stats", "--proto", "tcp", NULL},
        {"backend", "drain", NULL},
        {"backend", "explode", "web", NULL},
        {"whois", "127.0.0.1:24001", NULL},
        {"watch", "--interval", "0", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *out, *err;
        int rc = ctl_run_gwctl(cases[i], NULL, &out, &err);
        cr_assert_eq(rc, 2, "case %zu (%s): rc %d, %s", i, cases[i][0] ? cases[i][0] : "", rc, err);
        free(out);
        free(err);
    }
}

Test(ctl_gwctl, help_for_every_command)
{
    static const char *const cases[][4] = {
        {"--help", NULL},
        {"show", "nat", "--help", NULL},
        {"show", "stats", "--help", NULL},
        {"show", "backends", "--help", NULL},
        {"show", "config", "--help", NULL},
        {"flush", "nat", "--help", NULL},
        {"backend", "--help", NULL},
        {"watch", "--help", NULL},
        {"events", "--help", NULL},
        {"version", "--help", NULL},
        {"log", "--help", NULL},
        {"whois", "--help", NULL},
        {"help", "show", "nat", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *out, *err;
        cr_assert_eq(ctl_run_gwctl(cases[i], NULL, &out, &err), 0, "case %zu", i);
        cr_assert_eq(strncmp(out, "usage: gwctl", 12), 0, "case %zu: %s", i, out);
        free(out);
        free(err);
    }
}

Test(ctl_gwctl, every_daemon_command, .fini = stop, .timeout = 120)
{
    int a[2], b;
    char *out, *err, cmd[64];
    json_t *j;

    start(false, NULL);
    flows(a, 2, "127.0.0.2");
    flows(&b, 1, "127.0.0.3");

    cr_assert_eq(gwctl(&out, &err, "show", "nat", NULL, NULL, NULL, NULL), 0, "%s", err);
    cr_assert_eq(count_lines(out), 5, "%s", out);
    cr_assert_eq(strncmp(out, "PROTO  CLIENT ", 14), 0, "%s", out);
    cr_assert_not_null(strstr(out, "u/127.0.0.1:"), "%s", out);
    cr_assert_not_null(strstr(out, "\n3 sessions\n"), "%s", out);
    free(out);
    free(err);

    cr_assert_eq(gwctl(&out, &err, "show", "nat", "--client", "127.0.0.2", "--limit", "1"), 0);
    cr_assert_eq(count_lines(out), 3, "%s", out);
    cr_assert_not_null(strstr(out, "\n1 of 2 sessions\n"), "%s", out);
    free(out);
    free(err);
    /* total counts every match, whatever the offset */
    cr_assert_eq(gwctl(&out, &err, "show", "nat", "--offset", "1", NULL, NULL), 0);
    cr_assert_eq(count_lines(out), 4, "%s", out);
    cr_assert_not_null(strstr(out, "\n2 of 3 sessions\n"), "%s", out);
    free(out);
    free(err);

    cr_assert_eq(gwctl(&out, &err, "--json", "show", "nat", NULL, NULL, NULL), 0);
    j = json_loads(out, 0, NULL);
    cr_assert_not_null(j, "--json prints JSON: %s", out);
    cr_assert_eq(ctl_jint(j, "total"), 3);
    cr_assert_eq(json_array_size(json_object_get(j, "sessions")), 3);
    json_decref(j);
    free(out);
    free(err);

    cr_assert_eq(gwctl(&out, &err, "show", "nat", "--sort=-client", "--proto", "udp", NULL), 0);
    cr_assert_not_null(strstr(out, "\nudp    127.0.0.3:"), "sorted first: %s", out);
    free(out);
    free(err);

    cr_assert_eq(gwctl(&out, &err, "show", "stats", NULL, NULL, NULL, NULL), 0);
    cr_assert_not_null(strstr(out, "flows      3 live"), "%s", out);
    cr_assert_not_null(strstr(out, "pool       random/eim ports 24500-24999: 3 of 500"), "%s", out);
    free(out);
    free(err);

    cr_assert_eq(gwctl(&out, &err, "show", "backends", NULL, NULL, NULL, NULL), 0);
    cr_assert_eq(strncmp(out, "BACKEND  PROTO", 14), 0, "%s", out);
    cr_assert_not_null(strstr(out, "\nu        udp"), "%s", out);
    free(out);
    free(err);

    cr_assert_eq(gwctl(&out, &err, "show", "config", NULL, NULL, NULL, NULL), 0);
    j = json_loads(out, 0, NULL);
    cr_assert(json_is_object(j), "show config prints JSON");
    json_decref(j);
    free(out);
    free(err);

    cr_assert_eq(gwctl(&out, &err, "version", NULL, NULL, NULL, NULL, NULL), 0);
    cr_assert_str_eq(out, "gwctl " GW_VERSION ", gwd " GW_VERSION " (protocol 1)\n");
    free(out);
    free(err);

    cr_assert_eq(gwctl(&out, &err, "flush", "nat", "--client", "127.0.0.3", NULL, NULL), 0);
    cr_assert_str_eq(out, "1 session closed\n");
    free(out);
    free(err);

    cr_assert_eq(gwctl(&out, &err, "backend", "drain", "nope", NULL, NULL, NULL), 1);
    cr_assert_not_null(strstr(err, "not_found"), "%s", err);
    free(out);
    free(err);
    cr_assert_eq(gwctl(&out, &err, "show", "nat", "--backend", "nope", NULL, NULL), 1);
    free(out);
    free(err);

    cr_assert_eq(gwctl(&out, &err, "backend", "drain", "u", NULL, NULL, NULL), 0);
    cr_assert_not_null(strstr(out, "draining"), "%s", out);
    free(out);
    free(err);
    snprintf(cmd, sizeof(cmd), "u/127.0.0.1:%u", echo.udp_port);
    cr_assert_eq(gwctl(&out, &err, "backend", "enable", cmd, NULL, NULL, NULL), 0);
    cr_assert_not_null(strstr(out, " up "), "%s", out);
    free(out);
    free(err);

    cr_assert_eq(gwctl(&out, &err, "flush", "nat", NULL, NULL, NULL, NULL), 0);
    cr_assert_str_eq(out, "2 sessions closed\n");
    free(out);
    free(err);
    cr_assert_eq(gwctl(&out, &err, "show", "nat", NULL, NULL, NULL, NULL), 0);
    cr_assert_not_null(strstr(out, "\n0 sessions\n"), "%s", out);
    free(out);
    free(err);
    close(a[0]);
    close(a[1]);
    close(b);
}

Test(ctl_gwctl, finds_gwd_by_GW_SOCKET_with_no_options, .fini = stop, .timeout = 60)
{
    char path[128], envs[160], *out, *err;
    const char *args[] = {"version", NULL};
    int rc = -1;

    snprintf(path, sizeof(path), "/tmp/ctl-env-%d.sock", (int)getpid());
    snprintf(envs, sizeof(envs), "GW_SOCKET=%s", path);
    const char *env[] = {envs, NULL};
    start(true, env);
    for (int i = 0; i < 300 && rc != 0; i++) {
        rc = ctl_run_gwctl(args, env, &out, &err);
        if (rc != 0) {
            free(out);
            free(err);
            usleep(50000);
        }
    }
    cr_assert_eq(rc, 0, "gwctl with no --socket found gwd started with no --control");
    cr_assert_not_null(strstr(out, "gwd " GW_VERSION), "%s", out);
    free(out);
    free(err);
}

Test(ctl_gwctl, events_prints_one_line_per_event, .fini = stop, .timeout = 60)
{
    char *out, *err;
    pid_t pid;
    int status;

    start(false, NULL);
    pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        /* after gwctl subscribed: one flow, then flush it */
        usleep(700000);
        int fd = ctl_udp_socket("127.0.0.7", 0, 3000);
        int rc = ctl_udp_roundtrip(fd, gwd.port, "hi");
        json_t *r = ctl_call_path(gwd.sock, "{\"cmd\":\"flush nat\"}");
        _exit(rc == 0 && r ? 0 : 1);
    }
    const char *args[] = {"--socket", gwd.sock, "events", "--count", "2", NULL};
    cr_assert_eq(ctl_run_gwctl(args, NULL, &out, &err), 0, "%s", err);
    waitpid(pid, &status, 0);
    cr_assert_eq(WEXITSTATUS(status), 0);
    cr_assert_eq(count_lines(out), 2, "%s", out);
    cr_assert_not_null(strstr(out, " open   udp 127.0.0.7:"), "%s", out);
    cr_assert_not_null(strstr(out, " close  udp 127.0.0.7:"), "%s", out);
    cr_assert_not_null(strstr(out, " flush in 2 out 2\n"), "%s", out);
    free(out);
    free(err);
}

Test(ctl_gwctl, watch_prints_periodic_blocks_when_not_a_tty, .fini = stop, .timeout = 60)
{
    char *out, *err;
    int a[3];

    start(false, NULL);
    flows(a, 3, "127.0.0.8");
    const char *args[] = {"--socket", gwd.sock, "watch", "--count", "2", "--interval", "0.2", NULL};
    cr_assert_eq(ctl_run_gwctl(args, NULL, &out, &err), 0, "%s", err);
    cr_assert_null(strchr(out, '\033'), "no terminal escapes when not a tty");
    cr_assert_eq(count_lines(out) > 10, 1, "%s", out);
    cr_assert_not_null(strstr(out, "flows/s   opened 0.0"), "%s", out);
    cr_assert_not_null(strstr(out, "top clients (of 1):\n  127.0.0.8 "), "%s", out);
    cr_assert_not_null(strstr(out, "3 sessions"), "%s", out);
    free(out);
    free(err);
    for (int i = 0; i < 3; i++)
        close(a[i]);
}

/* ---- the store ------------------------------------------------------------- */

#define T0 1795796400000ULL /* 2026-11-27T16:20:00.000Z */

static void ev(struct db *db, enum nat_event_type type, uint64_t t, const char *reason, uint64_t id,
               uint8_t proto, const char *client, uint16_t cport, uint64_t opened)
{
    struct nat_event e;

    memset(&e, 0, sizeof(e));
    e.type = type;
    e.time = t;
    e.reason = reason;
    e.s.id = id;
    e.s.key.proto = proto;
    nat_addr_parse(&e.s.key.client.addr, client);
    e.s.key.client.port = cport;
    nat_addr_parse(&e.s.key.dst.addr, "127.0.0.1");
    e.s.key.dst.port = 9000;
    nat_addr_parse(&e.s.ext.addr, "127.0.0.1");
    e.s.ext.port = 24001; /* the same NAT port, reused over time */
    e.s.opened_at = opened;
    e.s.last_seen = t;
    e.s.bytes_in = 10;
    e.s.bytes_out = 20;
    e.s.state = type == NAT_EV_OPEN ? NAT_STATE_NEW : NAT_STATE_CLOSED;
    cr_assert_eq(db_submit(db, &e, "u"), 0);
}

static char dbpath[64];

/* Opens a new store at a fresh dbpath. */
static struct db *open_store(void)
{
    struct db_options o;
    struct db *db;
    char err[256];
    int fd;

    snprintf(dbpath, sizeof(dbpath), "/tmp/ctl-store-XXXXXX");
    fd = mkstemp(dbpath);
    close(fd);
    unlink(dbpath);
    db_options_default(&o);
    o.path = dbpath;
    o.retention_ms = 0;
    cr_assert_eq(db_open(&db, &o, err, sizeof(err)), 0, "%s", err);
    return db;
}

static void make_store(void)
{
    struct db *db = open_store();
    /* udp 10.0.0.1:1000 holds 127.0.0.1:24001 from T0 to T0+60 s (expired) */
    ev(db, NAT_EV_OPEN, T0, NULL, 1, NAT_PROTO_UDP, "10.0.0.1", 1000, T0);
    /* tcp 10.0.0.3:3000 holds tcp 127.0.0.1:24001 from T0+30 s to T0+90 s */
    ev(db, NAT_EV_OPEN, T0 + 30000, NULL, 2, NAT_PROTO_TCP, "10.0.0.3", 3000, T0 + 30000);
    ev(db, NAT_EV_EXPIRE, T0 + 60000, "timeout", 1, NAT_PROTO_UDP, "10.0.0.1", 1000, T0);
    ev(db, NAT_EV_CLOSE, T0 + 90000, "client_fin", 2, NAT_PROTO_TCP, "10.0.0.3", 3000, T0 + 30000);
    /* udp 10.0.0.2:2000 gets the same port at T0+120 s and still holds it */
    ev(db, NAT_EV_OPEN, T0 + 120000, NULL, 3, NAT_PROTO_UDP, "10.0.0.2", 2000, T0 + 120000);
    cr_assert_eq(db_close(db), 0);
}

static void drop_store(void)
{
    char p[96];

    unlink(dbpath);
    snprintf(p, sizeof(p), "%s-wal", dbpath);
    unlink(p);
    snprintf(p, sizeof(p), "%s-shm", dbpath);
    unlink(p);
}

static int gwctl_db(char **out, const char *a0, const char *a1, const char *a2, const char *a3,
                    const char *a4, const char *a5)
{
    const char *args[10] = {"--db", dbpath, a0, a1, a2, a3, a4, a5, NULL};
    char *err;
    int rc = ctl_run_gwctl(args, NULL, out, &err);

    if (rc != 0 && rc != 1)
        fprintf(stderr, "gwctl --db: %s\n", err);
    free(err);
    return rc;
}

TestSuite(ctl_gwctl_db, .init = make_store, .fini = drop_store, .timeout = 60);

Test(ctl_gwctl_db, whois_follows_the_port_over_time)
{
    char *out;
    json_t *j;

    cr_assert_eq(gwctl_db(&out, "whois", "127.0.0.1:24001", "--at", "2026-11-27T16:20:10Z",
                          "--proto", "udp"),
                 0);
    cr_assert_not_null(strstr(out, "10.0.0.1:1000"), "%s", out);
    cr_assert_null(strstr(out, "10.0.0.2"), "%s", out);
    cr_assert_not_null(
        strstr(out, "\n1 session held 127.0.0.1:24001 at 2026-11-27T16:20:10.000Z\n"), "%s", out);
    free(out);
    /* both protocols at T0+45 s: the udp and the tcp session */
    cr_assert_eq(
        gwctl_db(&out, "whois", "127.0.0.1:24001", "--at", "2026-11-27T16:20:45Z", NULL, NULL), 0);
    cr_assert_not_null(strstr(out, "10.0.0.1:1000"), "%s", out);
    cr_assert_not_null(strstr(out, "10.0.0.3:3000"), "%s", out);
    cr_assert_not_null(strstr(out, "\n2 sessions held"), "%s", out);
    free(out);
    /* between the expiry and the reuse: nobody, exit 1 */
    cr_assert_eq(gwctl_db(&out, "whois", "127.0.0.1:24001", "--at", "2026-11-27T16:21:40Z",
                          "--proto", "udp"),
                 1);
    cr_assert_not_null(strstr(out, "nobody held 127.0.0.1:24001/udp"), "%s", out);
    free(out);
    /* after the reuse: the second client */
    cr_assert_eq(gwctl_db(&out, "--json", "whois", "127.0.0.1:24001", "--at",
                          "2026-11-27T16:22:30Z", "--proto=udp"),
                 0);
    j = json_loads(out, 0, NULL);
    cr_assert_not_null(j, "%s", out);
    cr_assert_eq(ctl_jint(j, "total"), 1);
    json_t *s = json_array_get(json_object_get(j, "sessions"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(s, "client_ip")), "10.0.0.2");
    cr_assert_eq(ctl_jint(s, "client_port"), 2000);
    cr_assert(json_is_null(json_object_get(s, "closed_at")));
    json_decref(j);
    free(out);
    /* the instant the first one closed is no longer its */
    cr_assert_eq(gwctl_db(&out, "whois", "127.0.0.1:24001", "--at", "2026-11-27T16:21:00.000Z",
                          "--proto", "udp"),
                 1);
    free(out);
    cr_assert_eq(gwctl_db(&out, "whois", "127.0.0.1", NULL, NULL, NULL, NULL), 2);
    free(out);
}

Test(ctl_gwctl_db, show_nat_and_log)
{
    char *out;

    cr_assert_eq(gwctl_db(&out, "show", "nat", NULL, NULL, NULL, NULL), 0);
    cr_assert_not_null(strstr(out, "10.0.0.2:2000"), "only the open one: %s", out);
    cr_assert_not_null(strstr(out, "\n1 session\n"), "%s", out);
    free(out);
    cr_assert_eq(gwctl_db(&out, "show", "nat", "--all", NULL, NULL, NULL), 0);
    cr_assert_not_null(strstr(out, "\n3 sessions\n"), "%s", out);
    cr_assert_not_null(strstr(out, "closed"), "%s", out);
    free(out);
    cr_assert_eq(gwctl_db(&out, "show", "nat", "--at", "2026-11-27T16:20:45Z", NULL, NULL), 0);
    cr_assert_not_null(strstr(out, "\n2 sessions\n"), "%s", out);
    free(out);
    /* At the very moment the udp session expired it is gone (as whois says). */
    cr_assert_eq(gwctl_db(&out, "show", "nat", "--at", "2026-11-27T16:21:00Z", NULL, NULL), 0);
    cr_assert_not_null(strstr(out, "10.0.0.3:3000"), "%s", out);
    cr_assert_not_null(strstr(out, "\n1 session\n"), "%s", out);
    free(out);
    cr_assert_eq(gwctl_db(&out, "show", "nat", "--at", "0", NULL, NULL), 0);
    cr_assert_not_null(strstr(out, "\n0 sessions\n"), "the epoch is a time: %s", out);
    free(out);
    cr_assert_eq(gwctl_db(&out, "show", "nat", "--state", "closed", NULL, NULL), 0);
    cr_assert_not_null(strstr(out, "\n2 sessions\n"), "--state closed lists them: %s", out);
    free(out);
    cr_assert_eq(gwctl_db(&out, "log", NULL, NULL, NULL, NULL, NULL), 0);
    cr_assert_eq(strncmp(out, "TIME ", 5), 0, "%s", out);
    cr_assert_not_null(strstr(out, "\n5 events\n"), "%s", out);
    cr_assert_not_null(strstr(out, "timeout"), "%s", out);
    free(out);
    cr_assert_eq(gwctl_db(&out, "show", "log", "--event", "open", "--proto", "udp"), 0);
    cr_assert_not_null(strstr(out, "\n2 events\n"), "%s", out);
    free(out);
    cr_assert_eq(gwctl_db(&out, "log", "--client", "10.0.0.3", "--limit", "1", NULL), 0);
    cr_assert_not_null(strstr(out, "\n1 of 2 events\n"), "%s", out);
    free(out);
}

Test(ctl_gwctl_db, a_file_that_is_not_a_store)
{
    const char *args[] = {"--db", "/etc/hostname", "show", "nat", NULL};
    char *out, *err;

    cr_assert_eq(ctl_run_gwctl(args, NULL, &out, &err), 1);
    cr_assert_not_null(strstr(err, "/etc/hostname"), "%s", err);
    free(out);
    free(err);
}

/* A store with port blocks: 10.0.0.5 holds 127.0.0.1:24000-24063 from T0 to
 * T0+20 s, and uses 24001 for one tcp session from T0 to T0+10 s. */
static void block(struct db *db, enum nat_event_type type, uint64_t t)
{
    struct nat_event e;

    memset(&e, 0, sizeof(e));
    e.type = type;
    e.time = t;
    nat_addr_parse(&e.s.key.client.addr, "10.0.0.5");
    nat_addr_parse(&e.s.ext.addr, "127.0.0.1");
    e.s.ext.port = 24000;
    e.port_last = 24063;
    cr_assert_eq(db_submit(db, &e, ""), 0);
}

static void make_block_store(void)
{
    struct db *db = open_store();
    block(db, NAT_EV_BLOCK_ALLOC, T0);
    ev(db, NAT_EV_OPEN, T0, NULL, 1, NAT_PROTO_TCP, "10.0.0.5", 5000, T0);
    ev(db, NAT_EV_CLOSE, T0 + 10000, "client_fin", 1, NAT_PROTO_TCP, "10.0.0.5", 5000, T0);
    block(db, NAT_EV_BLOCK_FREE, T0 + 20000);
    cr_assert_eq(db_close(db), 0);
}

TestSuite(ctl_gwctl_blocks, .init = make_block_store, .fini = drop_store, .timeout = 60);

/* whois names the port block that held the port, with or without a session. */
Test(ctl_gwctl_blocks, whois_names_the_port_block)
{
    char *out;
    static const char line[] = "block 127.0.0.1:24000-24063 of 10.0.0.5: taken "
                               "2026-11-27T16:20:00.000Z, given back 2026-11-27T16:20:20.000Z\n";

    cr_assert_eq(gwctl_db(&out, "whois", "127.0.0.1:24001", "--at", "2026-11-27T16:20:05Z", NULL,
                          NULL),
                 0);
    cr_assert_not_null(strstr(out, "10.0.0.5:5000"), "%s", out);
    cr_assert_not_null(strstr(out, line), "%s", out);
    cr_assert_not_null(strstr(out, "\n1 session held 127.0.0.1:24001 at"), "%s", out);
    free(out);
    /* a port of the block no session used, while the block was held */
    cr_assert_eq(gwctl_db(&out, "whois", "127.0.0.1:24030", "--at", "2026-11-27T16:20:15Z", NULL,
                          NULL),
                 0);
    cr_assert_not_null(strstr(out, line), "%s", out);
    cr_assert_not_null(strstr(out, "no session used 127.0.0.1:24030 at 2026-11-27T16:20:15.000Z;"
                                   " its port block was held\n"),
                       "%s", out);
    free(out);
    cr_assert_eq(gwctl_db(&out, "--json", "whois", "127.0.0.1:24030", "--at",
                          "2026-11-27T16:20:15Z", NULL),
                 0);
    json_t *j = json_loads(out, 0, NULL), *b;
    cr_assert_not_null(j, "%s", out);
    cr_assert_str_eq(json_string_value(json_object_get(j, "nat_ip")), "127.0.0.1");
    cr_assert_eq(ctl_jint(j, "total"), 0);
    b = json_object_get(j, "block");
    cr_assert_str_eq(json_string_value(json_object_get(b, "client_ip")), "10.0.0.5");
    cr_assert_eq(ctl_jint(b, "nat_port"), 24000);
    cr_assert_eq(ctl_jint(b, "nat_port_last"), 24063);
    cr_assert_str_eq(json_string_value(json_object_get(b, "allocated_at")),
                     "2026-11-27T16:20:00.000Z");
    cr_assert_str_eq(json_string_value(json_object_get(b, "freed_at")),
                     "2026-11-27T16:20:20.000Z");
    json_decref(j);
    free(out);
    /* the log: --event block keeps both block rows; an unknown kind is a usage error */
    cr_assert_eq(gwctl_db(&out, "log", "--event", "block", NULL, NULL, NULL), 0);
    cr_assert_not_null(strstr(out, "block_alloc"), "%s", out);
    cr_assert_not_null(strstr(out, "block_free"), "%s", out);
    cr_assert_null(strstr(out, "open"), "%s", out);
    cr_assert_not_null(strstr(out, "\n2 events\n"), "%s", out);
    free(out);
    cr_assert_eq(gwctl_db(&out, "log", "--event", "blocks", NULL, NULL, NULL), 2);
    free(out);
    /* once given back: nobody, and the JSON block is null */
    cr_assert_eq(gwctl_db(&out, "whois", "127.0.0.1:24030", "--at", "2026-11-27T16:20:20Z", NULL,
                          NULL),
                 1);
    cr_assert_not_null(strstr(out, "nobody held 127.0.0.1:24030"), "%s", out);
    free(out);
    cr_assert_eq(gwctl_db(&out, "--json", "whois", "127.0.0.1:24030", "--at",
                          "2026-11-27T16:20:20Z", NULL),
                 1);
    j = json_loads(out, 0, NULL);
    cr_assert(json_is_null(json_object_get(j, "block")), "%s", out);
    json_decref(j);
    free(out);
}
