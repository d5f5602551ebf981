/*
 * ctl_daemon_test.c - gwd's control socket end to end, against a real gwd:
 * every command and its errors, subscribe, every kind of bad input, many
 * clients, the client cap, the socket file's mode, stale and live sockets.
 * NAT pool ports 24000-24499 (the control suite's range is 24000-25999).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "ctl_harness.h"
#include "gateway/gw_ctlproto.h"

static struct ctl_echo echo;
static struct ctl_gwd gwd;
static char ubackend[64], tbackend[64];

/* Starts the echo backend and a gwd with pools "u" (UDP) and "t" (TCP). */
static void start(const char *const *env)
{
    const char *args[] = {
        "--udp-backend", ubackend,      "--tcp-backend", tbackend, "--nat-ip", "127.0.0.1",
        "--nat-ports",   "24000-24499", "--log-level",   "warn",   NULL};

    cr_assert_eq(ctl_echo_start(&echo), 0);
    snprintf(ubackend, sizeof(ubackend), "u=127.0.0.1:%u", echo.udp_port);
    snprintf(tbackend, sizeof(tbackend), "t=127.0.0.1:%u", echo.tcp_port);
    cr_assert_eq(ctl_gwd_start(&gwd, args, env), 0, "gwd starts");
    cr_assert_gt(gwd.port, 0);
}

static void setup(void)
{
    start(NULL);
}

static void teardown(void)
{
    int rc = ctl_gwd_stop(&gwd);

    ctl_echo_stop(&echo);
    cr_expect_eq(rc, 0, "gwd exits 0 on SIGTERM");
}

static json_t *call(const char *line)
{
    json_t *r = ctl_call_path(gwd.sock, line);

    cr_assert_not_null(r, "a reply to %s", line);
    return r;
}

/* Sends `line`, returns the integer at `path` of the result (-1 when missing). */
static int64_t call_int(const char *line, const char *path)
{
    json_t *r = call(line);
    int64_t v = ctl_jint(ctl_result(r), path);

    json_decref(r);
    return v;
}

/* Checks that reply r (consumed) is an error with `code`. */
static void expect_code(json_t *r, const char *code)
{
    cr_assert_not_null(r);
    cr_assert_str_eq(ctl_error_code(r), code);
    json_decref(r);
}

/* Reads the next event line on subscriber fd (within timeout_ms) and checks
 * its kind. Returns the event (the caller frees it). */
static json_t *read_event(int fd, int timeout_ms, const char *kind)
{
    char *line = ctl_read_line(fd, timeout_ms, 1 << 20);
    json_t *ev;

    cr_assert_not_null(line, "a \"%s\" event", kind);
    ev = json_loads(line, 0, NULL);
    free(line);
    cr_assert_not_null(ev);
    cr_assert_str_eq(json_string_value(json_object_get(ev, "event")), kind);
    return ev;
}

/* Polls show stats (bounded: 5 s) until the counter at `path` is `want`;
 * returns its last value. */
static int64_t wait_stat(const char *path, int64_t want)
{
    int64_t n = -1;

    for (int i = 0; i < 250; i++) {
        n = call_int("{\"cmd\":\"show stats\"}", path);
        if (n == want)
            break;
        usleep(20000);
    }
    return n;
}

/* Opens n UDP flows from 127.0.0.<ip>, ports chosen by the kernel; fds kept in fds. */
static void udp_flows(int *fds, int n, const char *ip)
{
    for (int i = 0; i < n; i++) {
        fds[i] = ctl_udp_socket(ip, 0, 3000);
        cr_assert_geq(fds[i], 0);
        cr_assert_eq(ctl_udp_roundtrip(fds[i], gwd.port, "ping"), 0, "echo through gwd");
    }
}

static void close_fds(int *fds, int n)
{
    for (int i = 0; i < n; i++)
        close(fds[i]);
}

TestSuite(ctl_daemon, .init = setup, .fini = teardown, .timeout = 120);

Test(ctl_daemon, version)
{
    json_t *r = call("{\"id\":7,\"cmd\":\"version\"}"), *res = ctl_result(r);

    cr_assert_eq(json_integer_value(json_object_get(r, "id")), 7);
    cr_assert_str_eq(json_string_value(json_object_get(res, "name")), "gwd");
    cr_assert_str_eq(json_string_value(json_object_get(res, "version")), GW_VERSION);
    cr_assert_eq(ctl_jint(res, "protocol"), 1);
    cr_assert_eq(json_array_size(json_object_get(res, "commands")), CTL_CMD_COUNT);
    json_decref(r);
}

Test(ctl_daemon, show_stats_counts_flows_and_pool_use)
{
    int fds[3];
    json_t *r, *res, *ip0;

    udp_flows(fds, 3, "127.0.0.2");
    r = call("{\"id\":1,\"cmd\":\"show stats\"}");
    res = ctl_result(r);
    cr_assert_not_null(res);
    cr_assert_eq(ctl_jint(res, "flows.live"), 3);
    cr_assert_eq(ctl_jint(res, "flows.udp.established"), 3);
    cr_assert_eq(ctl_jint(res, "flows.tcp.established"), 0);
    cr_assert_eq(ctl_jint(res, "mappings.opened"), 3);
    cr_assert_eq(ctl_jint(res, "mappings.refused.pool_exhausted"), 0);
    cr_assert_eq(ctl_jint(res, "pool.ports_total"), 500);
    cr_assert_eq(ctl_jint(res, "pool.ports_in_use"), 3);
    ip0 = json_array_get(json_object_get(json_object_get(res, "pool"), "by_ip"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(ip0, "ip")), "127.0.0.1");
    cr_assert_eq(ctl_jint(ip0, "in_use"), 3);
    cr_assert_eq(ctl_jint(res, "traffic.udp_datagrams_in"), 3);
    cr_assert_eq(ctl_jint(res, "traffic.bytes_in"), 12);
    /* each echo came back on an upstream socket of the flows' epoll set */
    cr_assert_geq(ctl_jint(res, "loop.reports"), 3);
    cr_assert_geq(ctl_jint(res, "loop.passes"), 1);
    cr_assert_geq(ctl_jint(res, "loop.reports"), ctl_jint(res, "loop.passes"));
    cr_assert_geq(ctl_jint(res, "loop.epoll_ctl"), 3, "one registration per upstream socket");
    cr_assert_eq(ctl_jint(res, "loop.watch_errors"), 0);
    cr_assert(json_is_object(json_object_get(res, "store")), "the store is on");
    cr_assert_geq(ctl_jint(res, "store.queue_capacity"), 1);
    cr_assert_eq(json_array_size(json_object_get(res, "backends")), 2);
    cr_assert_geq(ctl_jint(res, "uptime_s"), 0);
    cr_assert_eq(ctl_jint(res, "control.clients"), 1);
    json_decref(r);
    close_fds(fds, 3);
}

/* The sessions of a show nat result, checked against what the test knows. */
static json_t *show_nat(const char *args)
{
    char line[512];

    snprintf(line, sizeof(line), "{\"id\":2,\"cmd\":\"show nat\",\"args\":%s}", args);
    return call(line);
}

static int64_t total_of(const char *args)
{
    json_t *r = show_nat(args);
    int64_t t = ctl_jint(ctl_result(r), "total");

    cr_assert(json_is_true(json_object_get(r, "ok")), "%s: ok", args);
    json_decref(r);
    return t;
}

Test(ctl_daemon, show_nat_lists_and_filters)
{
    int a[2], b[3];
    json_t *r, *res, *s;
    size_t i;
    char args[128];

    udp_flows(a, 2, "127.0.0.2");
    udp_flows(b, 3, "127.0.0.3");
    r = show_nat("{}");
    res = ctl_result(r);
    cr_assert_eq(ctl_jint(res, "total"), 5);
    cr_assert_eq(ctl_jint(res, "offset"), 0);
    cr_assert_eq(json_array_size(json_object_get(res, "sessions")), 5);
    int64_t last = 0;
    json_array_foreach(json_object_get(res, "sessions"), i, s)
    {
        cr_assert_gt(ctl_jint(s, "id"), last, "id order");
        last = ctl_jint(s, "id");
        cr_assert_str_eq(json_string_value(json_object_get(s, "proto")), "udp");
        cr_assert_str_eq(json_string_value(json_object_get(s, "nat_ip")), "127.0.0.1");
        cr_assert(ctl_jint(s, "nat_port") >= 24000 && ctl_jint(s, "nat_port") <= 24499);
        cr_assert_str_eq(json_string_value(json_object_get(s, "backend")), "u");
        cr_assert_str_eq(json_string_value(json_object_get(s, "backend_ip")), "127.0.0.1");
        cr_assert_eq(ctl_jint(s, "backend_port"), echo.udp_port);
        cr_assert(json_is_null(json_object_get(s, "closed_at")));
        cr_assert_eq(ctl_jint(s, "bytes_in"), 4);
        cr_assert_eq(ctl_jint(s, "bytes_out"), 4);
        cr_assert_eq(json_object_size(s), 16);
    }
    json_decref(r);

    cr_assert_eq(total_of("{\"client\":\"127.0.0.2\"}"), 2);
    cr_assert_eq(total_of("{\"client\":\"127.0.0.0/24\"}"), 5);
    cr_assert_eq(total_of("{\"client\":\"10.0.0.0/8\"}"), 0);
    cr_assert_eq(total_of("{\"proto\":\"udp\"}"), 5);
    cr_assert_eq(total_of("{\"proto\":\"tcp\"}"), 0);
    cr_assert_eq(total_of("{\"backend\":\"u\"}"), 5);
    cr_assert_eq(total_of("{\"backend\":\"t\"}"), 0);
    cr_assert_eq(total_of("{\"state\":\"established\"}"), 5);
    cr_assert_eq(total_of("{\"state\":\"new\"}"), 0);
    cr_assert_eq(total_of("{\"nat_ip\":\"127.0.0.1\",\"nat_port\":\"24000-24499\"}"), 5);
    cr_assert_eq(total_of("{\"nat_ip\":\"127.0.0.9\"}"), 0);

    /* one session by its exact nat port */
    r = show_nat("{\"limit\":1}");
    s = json_array_get(json_object_get(ctl_result(r), "sessions"), 0);
    cr_assert_eq(ctl_jint(ctl_result(r), "total"), 5, "total ignores the limit");
    snprintf(args, sizeof(args), "{\"nat_port\":%lld}", (long long)ctl_jint(s, "nat_port"));
    cr_assert_eq(total_of(args), 1);
    json_decref(r);

    /* paging: offset, after_id */
    r = show_nat("{\"limit\":2,\"offset\":4}");
    cr_assert_eq(json_array_size(json_object_get(ctl_result(r), "sessions")), 1);
    cr_assert_eq(ctl_jint(ctl_result(r), "offset"), 4);
    json_decref(r);
    r = show_nat("{\"limit\":2}");
    s = json_array_get(json_object_get(ctl_result(r), "sessions"), 1);
    snprintf(args, sizeof(args), "{\"after_id\":%lld}", (long long)ctl_jint(s, "id"));
    json_decref(r);
    cr_assert_eq(total_of(args), 3, "after_id counts what follows");

    /* sorted: by client descending puts 127.0.0.3 first */
    r = show_nat("{\"sort\":\"-client\",\"limit\":3}");
    res = ctl_result(r);
    cr_assert_eq(ctl_jint(res, "total"), 5);
    cr_assert_eq(json_array_size(json_object_get(res, "sessions")), 3);
    json_array_foreach(json_object_get(res, "sessions"), i, s)
        cr_assert_str_eq(json_string_value(json_object_get(s, "client_ip")), "127.0.0.3");
    json_decref(r);
    r = show_nat("{\"sort\":\"client\",\"offset\":2,\"limit\":1}");
    s = json_array_get(json_object_get(ctl_result(r), "sessions"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(s, "client_ip")), "127.0.0.3");
    json_decref(r);

    /* an unknown backend is not_found, a bad argument is bad_argument */
    expect_code(show_nat("{\"backend\":\"nope\"}"), "not_found");
    expect_code(show_nat("{\"limit\":\"ten\"}"), "bad_argument");
    close_fds(a, 2);
    close_fds(b, 3);
}

Test(ctl_daemon, show_backends_and_config)
{
    json_t *r = call("{\"cmd\":\"show backends\"}"), *res = ctl_result(r), *b;
    size_t i;
    int seen = 0;

    cr_assert_eq(json_array_size(json_object_get(res, "backends")), 2);
    json_array_foreach(json_object_get(res, "backends"), i, b)
    {
        const char *name = json_string_value(json_object_get(b, "name"));
        json_t *srv = json_array_get(json_object_get(b, "servers"), 0);
        cr_assert_not_null(srv);
        if (strcmp(name, "u") == 0) {
            seen |= 1;
            cr_assert_str_eq(json_string_value(json_object_get(b, "proto")), "udp");
        } else if (strcmp(name, "t") == 0) {
            seen |= 2;
            cr_assert_str_eq(json_string_value(json_object_get(b, "proto")), "tcp");
        }
    }
    cr_assert_eq(seen, 3);
    json_decref(r);
    r = call("{\"cmd\":\"show config\"}");
    res = ctl_result(r);
    cr_assert(json_is_object(res), "show config is the config object");
    cr_assert_gt(json_object_size(res), 0);
    json_decref(r);
}

Test(ctl_daemon, flush_nat_closes_what_matches)
{
    int a[2], b[3];

    udp_flows(a, 2, "127.0.0.2");
    udp_flows(b, 3, "127.0.0.3");
    cr_assert_eq(call_int("{\"cmd\":\"flush nat\",\"args\":{\"client\":\"127.0.0.2\"}}", "closed"),
                 2);
    cr_assert_eq(total_of("{}"), 3);
    cr_assert_eq(call_int("{\"cmd\":\"flush nat\",\"args\":{\"proto\":\"tcp\"}}", "closed"), 0);
    expect_code(call("{\"cmd\":\"flush nat\",\"args\":{\"backend\":\"zz\"}}"), "not_found");
    cr_assert_eq(call_int("{\"cmd\":\"flush nat\"}", "closed"), 3);
    cr_assert_eq(total_of("{}"), 0);
    cr_assert_eq(call_int("{\"cmd\":\"show stats\"}", "mappings.closed"), 5);
    close_fds(a, 2);
    close_fds(b, 3);
}

static const char *server_state(json_t *backend_obj)
{
    json_t *srv = json_array_get(json_object_get(backend_obj, "servers"), 0);

    return json_string_value(json_object_get(srv, "state"));
}

Test(ctl_daemon, backend_drain_enable_disable)
{
    char line[256];
    json_t *r;

    r = call("{\"cmd\":\"backend drain\",\"args\":{\"name\":\"u\"}}");
    cr_assert_str_eq(server_state(ctl_result(r)), "draining");
    json_decref(r);
    /* a draining pool takes no new UDP flow */
    int fd = ctl_udp_socket("127.0.0.4", 0, 500);
    cr_assert_neq(ctl_udp_roundtrip(fd, gwd.port, "x"), 0);
    close(fd);
    r = call("{\"cmd\":\"backend enable\",\"args\":{\"name\":\"u\"}}");
    cr_assert_str_eq(server_state(ctl_result(r)), "up");
    json_decref(r);
    snprintf(line, sizeof(line),
             "{\"cmd\":\"backend disable\",\"args\":{\"name\":\"u/127.0.0.1:%u\"}}", echo.udp_port);
    r = call(line);
    cr_assert_str_eq(server_state(ctl_result(r)), "disabled");
    json_decref(r);
    expect_code(call("{\"cmd\":\"backend enable\",\"args\":{\"name\":\"u\",\"server\":\"nope\"}}"),
                "not_found");
    expect_code(call("{\"cmd\":\"backend drain\",\"args\":{\"name\":\"nope\"}}"), "not_found");
}

Test(ctl_daemon, subscribe_streams_open_close_and_health)
{
    int sub = ctl_connect(gwd.sock), fd;
    json_t *r, *ev, *s;

    cr_assert_geq(sub, 0);
    r = ctl_call_raw(sub, "{\"id\":\"s\",\"cmd\":\"subscribe\"}");
    cr_assert_eq(json_array_size(json_object_get(ctl_result(r), "events")), 6); /* every kind */
    json_decref(r);
    udp_flows(&fd, 1, "127.0.0.5");
    ev = read_event(sub, 5000, "open");
    s = json_object_get(ev, "session");
    cr_assert_str_eq(json_string_value(json_object_get(s, "client_ip")), "127.0.0.5");
    cr_assert_str_eq(json_string_value(json_object_get(s, "backend")), "u");
    cr_assert(json_is_null(json_object_get(s, "closed_at")));
    json_decref(ev);

    r = call("{\"cmd\":\"flush nat\",\"args\":{\"client\":\"127.0.0.5\"}}");
    json_decref(r);
    ev = read_event(sub, 5000, "close");
    cr_assert_str_eq(json_string_value(json_object_get(ev, "reason")), "flush");
    s = json_object_get(ev, "session");
    cr_assert_str_eq(json_string_value(json_object_get(s, "state")), "closed");
    cr_assert_str_eq(json_string_value(json_object_get(s, "close_reason")), "flush");
    cr_assert(json_is_string(json_object_get(s, "closed_at")));
    cr_assert_eq(ctl_jint(s, "bytes_in"), 4);
    json_decref(ev);

    r = call("{\"cmd\":\"backend drain\",\"args\":{\"name\":\"u\"}}");
    json_decref(r);
    ev = read_event(sub, 5000, "health");
    cr_assert_str_eq(json_string_value(json_object_get(ev, "backend")), "u");
    cr_assert_str_eq(json_string_value(json_object_get(ev, "new_state")), "draining");
    json_decref(ev);

    /* a draining pool refuses the next flow: a refuse event? (no_server is not a NAT
     * refusal; only the counters say it) -- then the subscriber leaves */
    cr_assert_eq(call_int("{\"cmd\":\"show stats\"}", "control.subscribers"), 1);
    close(sub);
    close(fd);
    cr_assert_eq(wait_stat("control.subscribers", 0), 0,
                 "the subscriber that left is still counted");
}

Test(ctl_daemon, subscribe_to_some_events_only)
{
    int sub = ctl_connect(gwd.sock), fd;
    json_t *r, *ev;
    char *line;

    r = ctl_call_raw(sub, "{\"cmd\":\"subscribe\",\"args\":{\"events\":[\"close\"]}}");
    cr_assert(json_is_true(json_object_get(r, "ok")));
    json_decref(r);
    /* a streamed reply is refused on a subscribed connection; a one-line one is fine */
    expect_code(ctl_call_raw(sub, "{\"cmd\":\"show nat\"}"), "busy");
    r = ctl_call_raw(sub, "{\"cmd\":\"version\"}");
    cr_assert(json_is_true(json_object_get(r, "ok")));
    json_decref(r);
    udp_flows(&fd, 1, "127.0.0.6");
    json_decref(call("{\"cmd\":\"flush nat\"}"));
    line = ctl_read_line(sub, 5000, 1 << 20);
    ev = json_loads(line, 0, NULL);
    free(line);
    cr_assert_str_eq(json_string_value(json_object_get(ev, "event")), "close", "open skipped");
    json_decref(ev);
    close(sub);
    close(fd);
}

/* Sends a raw line and expects an error reply with this code; the connection stays usable. */
static void expect_error(int fd, const char *line, const char *code)
{
    json_t *r = ctl_call_raw(fd, line), *v;

    cr_assert_not_null(r, "a reply to %s", line);
    cr_assert(json_is_false(json_object_get(r, "ok")), "%s is refused", line);
    cr_assert_str_eq(ctl_error_code(r), code, "%s", line);
    cr_assert(json_is_string(json_object_get(json_object_get(r, "error"), "message")));
    json_decref(r);
    v = ctl_call_raw(fd, "{\"id\":99,\"cmd\":\"version\"}");
    cr_assert(json_is_true(json_object_get(v, "ok")), "still usable after %s", line);
    json_decref(v);
}

Test(ctl_daemon, bad_input_gets_stable_error_codes)
{
    int fd = ctl_connect(gwd.sock);
    json_t *r;

    expect_error(fd, "this is not json", "bad_json");
    expect_error(fd, "{\"cmd\":\"version\"", "bad_json");
    expect_error(fd, "[\"version\"]", "bad_request");
    expect_error(fd, "{\"id\":1}", "bad_request");
    expect_error(fd, "{\"cmd\":42}", "bad_request");
    expect_error(fd, "{\"cmd\":\"version\",\"args\":5}", "bad_request");
    expect_error(fd, "{\"cmd\":\"version\",\"bogus\":1}", "bad_request");
    expect_error(fd, "{\"cmd\":\"format disk\"}", "unknown_command");
    expect_error(fd, "{\"cmd\":\"show nat\",\"args\":{\"colour\":\"red\"}}", "bad_argument");
    expect_error(fd, "{\"cmd\":\"show nat\",\"args\":{\"limit\":-5}}", "bad_argument");
    expect_error(fd, "{\"cmd\":\"show nat\",\"args\":{\"proto\":17}}", "bad_argument");
    expect_error(fd, "{\"cmd\":\"backend drain\",\"args\":{}}", "bad_argument");
    expect_error(fd, "{\"cmd\":\"backend drain\",\"args\":{\"name\":\"ghost\"}}", "not_found");
    /* the id comes back in the error */
    r = ctl_call_raw(fd, "{\"id\":\"abc\",\"cmd\":\"nope\"}");
    cr_assert_str_eq(json_string_value(json_object_get(r, "id")), "abc");
    json_decref(r);
    /* empty lines are ignored; several requests in one write are answered in order */
    const char *two = "\n\n{\"id\":1,\"cmd\":\"version\"}\n{\"id\":2,\"cmd\":\"x\"}\n";
    cr_assert_eq(ctl_send_all(fd, two, strlen(two)), 0);
    for (int i = 1; i <= 2; i++) {
        char *line = ctl_read_line(fd, 5000, 1 << 20);
        r = json_loads(line, 0, NULL);
        free(line);
        cr_assert_eq(ctl_jint(r, "id"), i);
        json_decref(r);
    }
    close(fd);
    r = call("{\"cmd\":\"show stats\"}");
    cr_assert_eq(ctl_jint(ctl_result(r), "control.errors.bad_json"), 2);
    cr_assert_eq(ctl_jint(ctl_result(r), "control.errors.bad_request"), 5);
    cr_assert_eq(ctl_jint(ctl_result(r), "control.errors.unknown_command"), 3);
    cr_assert_eq(ctl_jint(ctl_result(r), "control.errors.bad_argument"), 4);
    cr_assert_eq(ctl_jint(ctl_result(r), "control.errors.not_found"), 1);
    json_decref(r);
}

Test(ctl_daemon, overlong_line_is_refused_and_cut)
{
    int fd = ctl_connect(gwd.sock);
    size_t n = 70 * 1024;
    char *big = malloc(n), *line;
    json_t *r;

    memset(big, 'x', n);
    /* no newline at all: the daemon knows at 64 KiB */
    cr_assert_eq(ctl_send_all(fd, big, n), 0);
    line = ctl_read_line(fd, 10000, 1 << 20);
    cr_assert_not_null(line);
    r = json_loads(line, 0, NULL);
    free(line);
    cr_assert_str_eq(ctl_error_code(r), "line_too_long");
    json_decref(r);
    cr_assert_null(ctl_read_line(fd, 10000, 1 << 20), "then the connection is closed");
    close(fd);
    free(big);
    cr_assert_eq(call_int("{\"cmd\":\"show stats\"}", "control.cut_line_too_long"), 1);
}

Test(ctl_daemon, a_line_of_exactly_the_limit_is_read)
{
    int fd = ctl_connect(gwd.sock);
    size_t n = 64 * 1024;
    char *big = malloc(n + 1);
    json_t *r;

    /* {"cmd":"version","args":{}} padded with spaces to exactly 64 KiB */
    memset(big, ' ', n);
    memcpy(big, "{\"cmd\":\"version\"", 16);
    big[n - 1] = '}';
    big[n] = '\n';
    cr_assert_eq(ctl_send_all(fd, big, n + 1), 0);
    char *line = ctl_read_line(fd, 10000, 1 << 20);
    r = json_loads(line, 0, NULL);
    cr_assert(json_is_true(json_object_get(r, "ok")));
    json_decref(r);
    free(line);
    free(big);
    close(fd);
}

Test(ctl_daemon, many_clients_at_once)
{
    enum { N = 40 };
    int fds[N];
    json_t *r;
    int64_t most = 0;

    for (int i = 0; i < N; i++) {
        fds[i] = ctl_connect(gwd.sock);
        cr_assert_geq(fds[i], 0);
    }
    /* every client sends before any reads */
    for (int i = 0; i < N; i++) {
        char line[128];
        int n = snprintf(line, sizeof(line), "{\"id\":%d,\"cmd\":\"show stats\"}\n", i);
        cr_assert_eq(ctl_send_all(fds[i], line, (size_t)n), 0);
    }
    for (int i = 0; i < N; i++) {
        char *line = ctl_read_line(fds[i], 10000, 1 << 20);
        cr_assert_not_null(line);
        r = json_loads(line, 0, NULL);
        free(line);
        cr_assert_eq(ctl_jint(r, "id"), i);
        if (ctl_jint(ctl_result(r), "control.clients") > most)
            most = ctl_jint(ctl_result(r), "control.clients");
        json_decref(r);
    }
    /* the last one is accepted after all the others (FIFO), so it saw them all */
    cr_assert_eq(most, N);
    close_fds(fds, N);
}

/* The remaining tests need their own gwd with different control limits. */

static void no_setup(void)
{
}

static void no_teardown(void)
{
    teardown();
}

/* Connects n clients (each answers version; fds gets them) to a gwd whose
 * max_clients is n, and checks that one more is told "busy" and closed. */
static void fill_client_slots(int *fds, int n)
{
    char *line;
    json_t *r;
    int extra;

    for (int i = 0; i < n; i++) {
        fds[i] = ctl_connect(gwd.sock);
        cr_assert_geq(fds[i], 0);
        r = ctl_call_raw(fds[i], "{\"cmd\":\"version\"}");
        cr_assert(json_is_true(json_object_get(r, "ok")));
        json_decref(r);
    }
    extra = ctl_connect(gwd.sock);
    cr_assert_geq(extra, 0);
    line = ctl_read_line(extra, 5000, 1 << 20);
    cr_assert_not_null(line, "client %d (over the cap) is told why", n + 1);
    r = json_loads(line, 0, NULL);
    free(line);
    cr_assert_str_eq(ctl_error_code(r), "busy");
    json_decref(r);
    cr_assert_null(ctl_read_line(extra, 5000, 1 << 20), "and closed");
    close(extra);
}

Test(ctl_limits, client_cap_turns_the_next_one_away, .init = no_setup, .fini = no_teardown,
     .timeout = 60)
{
    const char *env[] = {"GW_CONTROL_MAX_CLIENTS=4", NULL};
    int fds[4];
    json_t *r;

    start(env);
    fill_client_slots(fds, 4);
    close(fds[0]);
    /* a slot is free again (bounded retry: the close is seen on the next loop turn) */
    int busy_seen = 0, no_reply = 0;
    for (int i = 0; i < 100; i++) {
        r = ctl_call_path(gwd.sock, "{\"cmd\":\"show stats\"}");
        if (r == NULL)
            no_reply++; /* refused, but closed before we read the reply */
        else if (strcmp(ctl_error_code(r), "busy") == 0)
            busy_seen++; /* came before gwd saw the close */
        if (r && json_is_true(json_object_get(r, "ok"))) {
            long long refused = ctl_jint(ctl_result(r), "control.refused_busy");
            json_decref(r);
            close_fds(fds + 1, 3);
            /* Every refusal is counted: the one of fill_client_slots, each
             * busy reply, and at most each attempt that saw no reply. */
            cr_assert(refused >= 1 + busy_seen && refused <= 1 + busy_seen + no_reply,
                      "refused_busy %lld, busy replies %d, no reply %d", refused, busy_seen,
                      no_reply);
            return;
        }
        json_decref(r);
        usleep(20000);
    }
    cr_assert_fail("no slot after a client left");
}

Test(ctl_limits, half_a_line_then_silence_is_cut, .init = no_setup, .fini = no_teardown,
     .timeout = 60)
{
    const char *env[] = {"GW_CONTROL_IDLE_MS=1000", NULL};
    int fd, other;
    json_t *r;
    uint64_t t0;

    start(env);
    fd = ctl_connect(gwd.sock);
    cr_assert_eq(ctl_send_all(fd, "{\"cmd\":\"ver", 11), 0);
    t0 = ctl_now_us();
    cr_assert_null(ctl_read_line(fd, 10000, 1 << 20), "closed without a reply");
    cr_assert_lt(ctl_now_us() - t0, 9000000, "cut by the idle timeout, not by the test's");
    close(fd);
    /* meanwhile another client is fine, and the cut was counted */
    other = ctl_connect(gwd.sock);
    r = ctl_call_raw(other, "{\"cmd\":\"show stats\"}");
    cr_assert_eq(ctl_jint(ctl_result(r), "control.cut_idle"), 1);
    json_decref(r);
    close(other);
}

Test(ctl_limits, a_client_that_never_reads_is_cut, .init = no_setup, .fini = no_teardown,
     .timeout = 120)
{
    const char *env[] = {"GW_CONTROL_OUT_MAX=131072", NULL};
    int fd, flags;
    const char *req = "{\"cmd\":\"show config\"}\n{\"cmd\":\"show stats\"}\n";
    size_t sent = 0;
    uint64_t t0;

    start(env);
    fd = ctl_connect(gwd.sock);
    flags = 1;
    /* keep sending requests, never read: the replies pile up in gwd until it cuts us */
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &flags, sizeof(flags));
    t0 = ctl_now_us();
    while (ctl_now_us() - t0 < 60000000) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, 1000) <= 0)
            continue;
        if (p.revents & (POLLERR | POLLHUP))
            break;
        ssize_t n = send(fd, req, strlen(req), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno != EAGAIN)
            break;
        if (n > 0)
            sent += (size_t)n;
    }
    cr_assert_lt(ctl_now_us() - t0, 60000000, "gwd cut the client off");
    close(fd);
    cr_assert_eq(call_int("{\"cmd\":\"show stats\"}", "control.cut_overflow"), 1);
    (void)sent;
}

Test(ctl_limits, socket_mode_default_and_configured, .init = no_setup, .fini = no_teardown,
     .timeout = 60)
{
    const char *env[] = {"GW_CONTROL_MODE=0600", NULL};
    struct stat st;

    start(NULL);
    cr_assert_eq(stat(gwd.sock, &st), 0);
    cr_assert(S_ISSOCK(st.st_mode));
    cr_assert_eq(st.st_mode & 07777, 0660);
    teardown();
    cr_assert_neq(stat(gwd.sock, &st), 0, "the socket file is removed at exit");
    start(env);
    cr_assert_eq(stat(gwd.sock, &st), 0);
    cr_assert_eq(st.st_mode & 07777, 0600);
}

static char section_conf[64]; /* the config file of the test below */

static void section_teardown(void)
{
    teardown();
    unlink(section_conf);
}

/* The "control" section of the config file: mode, owner and group of the
 * socket file, and max_clients, applied; show config shows them, also after
 * a reload that changed them (the socket stays as it was started). */
Test(ctl_limits, control_section_of_the_config_applied, .init = no_setup, .fini = section_teardown,
     .timeout = 60)
{
    char *conf = section_conf, owner[32], group[32];
    const char *args[] = {"-c",        conf,          "--udp-backend", ubackend,      "--nat-ip",
                          "127.0.0.1", "--nat-ports", "24530-24539",   "--log-level", "warn",
                          NULL};
    uid_t want_uid = geteuid();
    gid_t want_gid = getegid();
    struct stat st;
    int fds[2];
    json_t *r, *c;
    FILE *f;

    /* root: hand the file to another user and group; else to ourselves and,
     * when we have one, a supplementary group */
    if (want_uid == 0) {
        struct passwd *pw = getpwnam("nobody");
        want_uid = pw ? pw->pw_uid : 65534;
        want_gid = pw ? pw->pw_gid : 65534;
    } else {
        gid_t groups[64];
        int n = getgroups(64, groups);
        for (int i = 0; i < n; i++)
            if (groups[i] != want_gid) {
                want_gid = groups[i];
                break;
            }
    }
    snprintf(owner, sizeof(owner), "%u", (unsigned)want_uid);
    snprintf(group, sizeof(group), "%u", (unsigned)want_gid);
    cr_assert_eq(ctl_echo_start(&echo), 0);
    snprintf(ubackend, sizeof(ubackend), "u=127.0.0.1:%u", echo.udp_port);
    snprintf(section_conf, sizeof(section_conf), "/tmp/ctl-section-%d.json", (int)getpid());
    f = fopen(conf, "w");
    cr_assert_not_null(f);
    fprintf(f,
            "{\"control\":{\"mode\":\"0640\",\"owner\":%s,\"group\":\"%s\","
            "\"max_clients\":2,\"idle_timeout\":30,\"max_output\":262144}}\n",
            owner, group);
    fclose(f);
    cr_assert_eq(ctl_gwd_start(&gwd, args, NULL), 0);

    cr_assert_eq(stat(gwd.sock, &st), 0);
    cr_assert(S_ISSOCK(st.st_mode));
    cr_assert_eq(st.st_mode & 07777, 0640);
    cr_assert_eq(st.st_uid, want_uid, "owner %u, want %u", (unsigned)st.st_uid, (unsigned)want_uid);
    cr_assert_eq(st.st_gid, want_gid, "group %u, want %u", (unsigned)st.st_gid, (unsigned)want_gid);

    r = call("{\"cmd\":\"show config\"}");
    c = json_object_get(ctl_result(r), "control");
    cr_assert(json_is_object(c), "show config shows the control section");
    cr_assert_str_eq(json_string_value(json_object_get(c, "path")), gwd.sock);
    cr_assert_str_eq(json_string_value(json_object_get(c, "mode")), "0640");
    cr_assert_str_eq(json_string_value(json_object_get(c, "owner")), owner);
    cr_assert_str_eq(json_string_value(json_object_get(c, "group")), group);
    cr_assert_eq(ctl_jint(c, "max_clients"), 2);
    cr_assert_eq(ctl_jint(c, "idle_timeout"), 30);
    cr_assert_eq(ctl_jint(c, "max_output"), 262144);
    json_decref(r);

    /* max_clients 2: the third is turned away */
    fill_client_slots(fds, 2);
    close_fds(fds, 2);

    /* a reload with another section: the running socket's stays in show config */
    f = fopen(conf, "w");
    cr_assert_not_null(f);
    fputs("{\"control\":{\"mode\":\"0600\",\"max_clients\":9}}\n", f);
    fclose(f);
    cr_assert_eq(kill(gwd.pid, SIGHUP), 0);
    cr_assert_eq(wait_stat("traffic.reloads", 1), 1, "the reload was applied");
    r = call("{\"cmd\":\"show config\"}");
    c = json_object_get(ctl_result(r), "control");
    cr_assert_str_eq(json_string_value(json_object_get(c, "mode")), "0640");
    cr_assert_eq(ctl_jint(c, "max_clients"), 2);
    json_decref(r);
    cr_assert_eq(stat(gwd.sock, &st), 0);
    cr_assert_eq(st.st_mode & 07777, 0640);
}

Test(ctl_limits, stale_socket_replaced_live_one_not_stolen, .init = no_setup, .fini = no_teardown,
     .timeout = 60)
{
    struct ctl_gwd second;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char path[100], buf[4096];
    const char *args[] = {"--nat-ip", "127.0.0.1",     "--nat-ports", "24500-24509", "--db",
                          "none",     "--udp-backend", ubackend,      NULL};
    int fd, rc;
    FILE *f;

    start(NULL);
    /* a stale socket: bound, nobody listening */
    snprintf(path, sizeof(path), "%s/stale.sock", gwd.dir);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    memset(&second, 0, sizeof(second));
    snprintf(second.dir, sizeof(second.dir), "%s", gwd.dir);
    cr_assert_eq(ctl_gwd_spawn(&second, path, args, NULL), 0);
    for (int i = 0; i < 200; i++) {
        json_t *r = ctl_call_path(path, "{\"cmd\":\"version\"}");
        if (r) {
            json_decref(r);
            break;
        }
        usleep(50000);
    }
    json_t *r = ctl_call_path(path, "{\"cmd\":\"version\"}");
    cr_assert_not_null(r, "the stale socket was replaced");
    json_decref(r);
    kill(second.pid, SIGTERM);
    cr_assert_eq(ctl_gwd_wait(&second, 20000), 0);

    /* a live socket: the first gwd's. The second refuses to start and says so. */
    memset(&second, 0, sizeof(second));
    snprintf(second.dir, sizeof(second.dir), "%s", gwd.dir);
    cr_assert_eq(ctl_gwd_spawn(&second, gwd.sock, args, NULL), 0);
    rc = ctl_gwd_wait(&second, 30000);
    cr_assert_neq(rc, 0, "a second gwd on a live socket exits non-zero");
    cr_assert_neq(rc, -1, "and exits at all");
    f = fopen(second.log, "r");
    cr_assert_not_null(f);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    cr_assert_not_null(strstr(buf, "in use"), "says why: %s", buf);
    r = ctl_call_path(gwd.sock, "{\"cmd\":\"version\"}");
    cr_assert_not_null(r, "the first gwd still answers");
    json_decref(r);
}

Test(ctl_limits, a_file_that_is_not_a_socket_is_left_alone, .init = no_setup, .fini = no_teardown,
     .timeout = 60)
{
    struct ctl_gwd second;
    char path[100];
    const char *args[] = {"--nat-ip", "127.0.0.1",     "--nat-ports", "24510-24519", "--db",
                          "none",     "--udp-backend", ubackend,      NULL};
    struct stat st;
    FILE *f;

    start(NULL);
    snprintf(path, sizeof(path), "%s/plain-file", gwd.dir);
    f = fopen(path, "w");
    fputs("keep me", f);
    fclose(f);
    memset(&second, 0, sizeof(second));
    snprintf(second.dir, sizeof(second.dir), "%s", gwd.dir);
    cr_assert_eq(ctl_gwd_spawn(&second, path, args, NULL), 0);
    cr_assert_gt(ctl_gwd_wait(&second, 30000), 0);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert(S_ISREG(st.st_mode), "still the file it was");
}

Test(ctl_limits, refuse_and_expire_events, .init = no_setup, .fini = no_teardown, .timeout = 60)
{
    char conf[64];
    const char *args[] = {"-c",        conf,          "--udp-backend", ubackend,      "--nat-ip",
                          "127.0.0.1", "--nat-ports", "24520-24521",   "--log-level", "warn",
                          NULL};
    int sub, fds[3];
    json_t *r, *ev;
    FILE *f;

    cr_assert_eq(ctl_echo_start(&echo), 0);
    snprintf(ubackend, sizeof(ubackend), "u=127.0.0.1:%u", echo.udp_port);
    /* a pool of two ports, UDP mappings that expire after a second */
    snprintf(conf, sizeof(conf), "/tmp/ctl-refuse-%d.json", (int)getpid());
    f = fopen(conf, "w");
    cr_assert_not_null(f);
    fputs("{\"nat\":{\"timeouts\":{\"udp\":1}}}\n", f);
    fclose(f);
    cr_assert_eq(ctl_gwd_start(&gwd, args, NULL), 0);
    unlink(conf);
    sub = ctl_connect(gwd.sock);
    r = ctl_call_raw(sub, "{\"cmd\":\"subscribe\",\"args\":{\"events\":[\"refuse\",\"expire\"]}}");
    cr_assert(json_is_true(json_object_get(r, "ok")));
    json_decref(r);
    for (int i = 0; i < 3; i++) {
        fds[i] = ctl_udp_socket("127.0.0.11", 0, 500);
        cr_assert_eq(ctl_udp_roundtrip(fds[i], gwd.port, "x") == 0, i < 2, "flow %d", i);
    }
    ev = read_event(sub, 5000, "refuse");
    cr_assert_str_eq(json_string_value(json_object_get(ev, "reason")), "pool_exhausted");
    cr_assert_str_eq(
        json_string_value(json_object_get(json_object_get(ev, "session"), "client_ip")),
        "127.0.0.11");
    json_decref(ev);
    r = call("{\"cmd\":\"show stats\"}");
    cr_assert_eq(ctl_jint(ctl_result(r), "mappings.refused.pool_exhausted"), 1);
    cr_assert_eq(ctl_jint(ctl_result(r), "pool.ports_in_use"), 2);
    json_decref(r);
    /* the two live mappings time out: two expire events */
    for (int i = 0; i < 2; i++) {
        ev = read_event(sub, 10000, "expire");
        cr_assert_str_eq(json_string_value(json_object_get(ev, "reason")), "timeout");
        json_decref(ev);
    }
    close(sub);
    close_fds(fds, 3);
}

/* The block policy's block_alloc and block_free reach a subscriber that asked
 * for "block", with the block's range. */
Test(ctl_limits, subscribe_streams_block_events, .init = no_setup, .fini = no_teardown,
     .timeout = 60)
{
    const char *args[] = {"--udp-backend", ubackend,     "--nat-ip",     "127.0.0.1",
                          "--nat-ports",   "24540-24603", "--nat-policy", "block",
                          "--log-level",   "warn",        NULL};
    json_t *r, *ev, *b;
    int sub, fd;

    cr_assert_eq(ctl_echo_start(&echo), 0);
    snprintf(ubackend, sizeof(ubackend), "u=127.0.0.1:%u", echo.udp_port);
    cr_assert_eq(ctl_gwd_start(&gwd, args, NULL), 0, "gwd starts");
    sub = ctl_connect(gwd.sock);
    cr_assert_geq(sub, 0);
    r = ctl_call_raw(sub, "{\"cmd\":\"subscribe\",\"args\":{\"events\":[\"block\"]}}");
    cr_assert_str_eq(json_string_value(json_array_get(json_object_get(ctl_result(r), "events"), 0)),
                     "block");
    json_decref(r);
    udp_flows(&fd, 1, "127.0.0.7");
    ev = read_event(sub, 5000, "block_alloc"); /* the open itself is not asked for */
    b = json_object_get(ev, "block");
    cr_assert_str_eq(json_string_value(json_object_get(b, "client_ip")), "127.0.0.7");
    cr_assert_str_eq(json_string_value(json_object_get(b, "nat_ip")), "127.0.0.1");
    cr_assert_eq(json_integer_value(json_object_get(b, "nat_port")), 24540); /* one block of 64 */
    cr_assert_eq(json_integer_value(json_object_get(b, "nat_port_last")), 24603);
    json_decref(ev);
    /* show blocks lists it, with its client's session; filters apply */
    r = call("{\"cmd\":\"show blocks\"}");
    json_t *res = ctl_result(r);
    cr_assert_str_eq(json_string_value(json_object_get(res, "policy")), "block");
    cr_assert_eq(ctl_jint(res, "block_size"), 64);
    cr_assert_eq(ctl_jint(res, "total"), 1);
    b = json_array_get(json_object_get(res, "blocks"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(b, "client_ip")), "127.0.0.7");
    cr_assert_eq(ctl_jint(b, "nat_port"), 24540);
    cr_assert_eq(ctl_jint(b, "sessions"), 1);
    cr_assert(json_is_null(json_object_get(b, "hold_until")));
    json_decref(r);
    r = call("{\"cmd\":\"show blocks\",\"args\":{\"client\":\"127.0.0.8/32\"}}");
    cr_assert_eq(ctl_jint(ctl_result(r), "total"), 0);
    json_decref(r);
    r = call("{\"cmd\":\"show blocks\",\"args\":{\"nat_port\":\"24600-24700\"}}");
    cr_assert_eq(ctl_jint(ctl_result(r), "total"), 1);
    json_decref(r);
    json_decref(call("{\"cmd\":\"flush nat\"}"));
    ev = read_event(sub, 5000, "block_free");
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(ev, "block"), "nat_port")),
                 24540);
    json_decref(ev);
    r = call("{\"cmd\":\"show blocks\"}");
    cr_assert_eq(ctl_jint(ctl_result(r), "total"), 0, "given back");
    json_decref(r);
    close(sub);
    close(fd);
}

/* show blocks: ten blocks of four ports, one per client; `limit` keeps the
 * lowest by address and port, and `total` counts them all. */
Test(ctl_limits, show_blocks_sorted_and_limited, .init = no_setup, .fini = no_teardown,
     .timeout = 60)
{
    char conf[64];
    const char *args[] = {"-c",        conf,          "--udp-backend", ubackend,      "--nat-ip",
                          "127.0.0.1", "--nat-ports", "24604-24643",   "--log-level", "warn",
                          NULL};
    int fds[10];
    json_t *r, *res, *b;
    size_t i;
    FILE *f;

    cr_assert_eq(ctl_echo_start(&echo), 0);
    snprintf(ubackend, sizeof(ubackend), "u=127.0.0.1:%u", echo.udp_port);
    snprintf(conf, sizeof(conf), "/tmp/ctl-blocks-%d.json", (int)getpid());
    f = fopen(conf, "w");
    cr_assert_not_null(f);
    fputs("{\"nat\":{\"policy\":\"block\",\"block_size\":4}}\n", f);
    fclose(f);
    cr_assert_eq(ctl_gwd_start(&gwd, args, NULL), 0);
    unlink(conf);
    for (int k = 0; k < 10; k++) {
        char ip[32];
        snprintf(ip, sizeof(ip), "127.0.3.%d", k + 1);
        udp_flows(&fds[k], 1, ip);
    }
    r = call("{\"cmd\":\"show blocks\"}");
    res = ctl_result(r);
    cr_assert_eq(ctl_jint(res, "total"), 10);
    cr_assert_eq(json_array_size(json_object_get(res, "blocks")), 10);
    json_array_foreach(json_object_get(res, "blocks"), i, b)
    {
        cr_assert_eq(ctl_jint(b, "nat_port"), 24604 + 4 * (int64_t)i, "in port order");
        cr_assert_eq(ctl_jint(b, "nat_port_last"), 24607 + 4 * (int64_t)i);
        cr_assert_eq(ctl_jint(b, "sessions"), 1);
    }
    json_decref(r);
    r = call("{\"cmd\":\"show blocks\",\"args\":{\"limit\":3}}");
    res = ctl_result(r);
    cr_assert_eq(ctl_jint(res, "total"), 10);
    cr_assert_eq(json_array_size(json_object_get(res, "blocks")), 3);
    json_array_foreach(json_object_get(res, "blocks"), i, b)
        cr_assert_eq(ctl_jint(b, "nat_port"), 24604 + 4 * (int64_t)i, "the lowest three");
    json_decref(r);
    r = call("{\"cmd\":\"show blocks\",\"args\":{\"limit\":100001}}");
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(r, "error"), "code")),
                     "bad_argument");
    json_decref(r);
    close_fds(fds, 10);
}
