/*
 * sim_lab.c - the lab. Each experiment builds a small world (gwd + demo
 * backends in a temporary directory), acts on it with real sockets or a
 * `gwsim clients` child, reads gwd's NAT table over the control socket while
 * the flows are open, and checks that what it saw is what the answer says.
 */
#include "sim/sim_lab.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "sim/sim_ctl.h"
#include "sim/sim_proc.h"
#include "sim/sim_util.h"

#define LAB_MAX_BACKENDS 4
#define LAB_PATH_MAX 512

struct lab_env {
    const char *gwd_path;    /* borrowed */
    char self[LAB_PATH_MAX]; /* this gwsim binary */
    char dir[LAB_PATH_MAX];  /* owned temporary directory */
    char sock[LAB_PATH_MAX + 16], log[LAB_PATH_MAX + 16], db[LAB_PATH_MAX + 16];
    struct sim_proc backends[LAB_MAX_BACKENDS];
    unsigned be_port[LAB_MAX_BACKENDS];
    int n_backends;
    struct sim_proc gwd;
    unsigned gwd_port;
    struct sim_ctl ctl;
    bool have_ctl;
    uint16_t port_lo; /* this experiment's NAT port range start */
    /* the report */
    bool json;
    const char *last_key; /* the section printed last */
    json_t *rep;          /* owned: {name, question, done, seen, answer, ok} */
    json_t *seen;         /* borrowed from rep: array of strings */
    bool ok;
};

struct lab {
    const char *name;
    const char *question;
    int (*run)(struct lab_env *e);
};

/* ---- reporting ----------------------------------------------------------------- */

static void say(struct lab_env *e, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Adds a line to the report section `key` ("done", "seen", "answer"). */
static void say(struct lab_env *e, const char *key, const char *fmt, ...)
{
    char buf[2048];
    va_list ap;
    json_t *arr;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    arr = json_object_get(e->rep, key);
    if (arr == NULL) {
        arr = json_array();
        json_object_set_new(e->rep, key, arr);
    }
    if (!e->json && (e->last_key == NULL || strcmp(e->last_key, key) != 0))
        printf("%s:\n", key);
    e->last_key = key;
    json_array_append_new(arr, json_string(buf));
    if (!e->json)
        printf("  %s\n", buf);
}

/* Records an expectation; a false one fails the experiment. */
static bool expect(struct lab_env *e, bool cond, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static bool expect(struct lab_env *e, bool cond, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (!cond) {
        e->ok = false;
        say(e, "seen", "UNEXPECTED: %s", buf);
    }
    return cond;
}

/* ---- the world ---------------------------------------------------------------------- */

static int env_backend(struct lab_env *e, const char *name, const char *proto, unsigned port)
{
    char portbuf[16];
    char *argv[10];
    int n = 0, i = e->n_backends;
    unsigned t, u;
    char errlog[LAB_PATH_MAX + 32];

    if (i == LAB_MAX_BACKENDS)
        return -ENOSPC;
    snprintf(portbuf, sizeof(portbuf), "%u", port);
    snprintf(errlog, sizeof(errlog), "%s/backend-%s.log", e->dir, name);
    argv[n++] = e->self;
    argv[n++] = "backend";
    argv[n++] = "--name";
    argv[n++] = (char *)(uintptr_t)name;
    argv[n++] = "--port";
    argv[n++] = portbuf;
    if (proto != NULL)
        argv[n++] = (char *)(uintptr_t)proto;
    argv[n] = NULL;
    if (sim_proc_start(&e->backends[i], argv, errlog) < 0)
        return -errno;
    e->n_backends++;
    if (sim_proc_wait_line(&e->backends[i], "listening", 5000) < 0 ||
        sim_parse_listening(e->backends[i].ready, &t, &u) < 0) {
        say(e, "seen", "backend %s did not start (see %s)", name, errlog);
        return -EIO;
    }
    e->be_port[i] = t ? t : u;
    return (int)e->be_port[i];
}

/* Starts gwd with the given extra flags (NULL-terminated) and opens its control socket. */
static int env_gwd(struct lab_env *e, const char *const *extra)
{
    char *argv[40];
    char line[512], err[256];
    const char *p;
    int n = 0;

    argv[n++] = (char *)(uintptr_t)e->gwd_path;
    argv[n++] = "-p";
    argv[n++] = "0";
    argv[n++] = "-b";
    argv[n++] = "127.0.0.1";
    argv[n++] = "--db";
    argv[n++] = e->db;
    argv[n++] = "--control";
    argv[n++] = e->sock;
    argv[n++] = "--nat-ip";
    argv[n++] = "127.0.0.1";
    for (int i = 0; extra[i] != NULL && n < 38; i++)
        argv[n++] = (char *)(uintptr_t)extra[i];
    argv[n] = NULL;
    unlink(e->log);
    if (sim_proc_start(&e->gwd, argv, e->log) < 0)
        return -errno;
    if (sim_wait_file_line(e->log, "ready: port ", line, sizeof(line), 10000) < 0) {
        say(e, "seen", "gwd did not get ready within 10 s (log: %s)", e->log);
        return -ETIMEDOUT;
    }
    p = strstr(line, "ready: port ");
    e->gwd_port = (unsigned)strtoul(p + 12, NULL, 10);
    if (sim_ctl_open(&e->ctl, e->sock, 5000, err, sizeof(err)) < 0) {
        say(e, "seen", "%s", err);
        return -EIO;
    }
    e->have_ctl = true;
    return 0;
}

static void env_stop_gwd(struct lab_env *e)
{
    if (e->have_ctl)
        sim_ctl_close(&e->ctl);
    e->have_ctl = false;
    if (e->gwd.pid > 0)
        sim_proc_stop(&e->gwd, 10000);
}

static void env_teardown(struct lab_env *e)
{
    static const char *const leftovers[] = {
        "gwd.db", "gwd.db-wal", "gwd.db-shm", "gwd.db-journal", "gwd.sock", "gwd.log", NULL};
    char path[LAB_PATH_MAX + 64];

    env_stop_gwd(e);
    for (int i = 0; i < e->n_backends; i++)
        sim_proc_stop(&e->backends[i], 3000);
    e->n_backends = 0;
    for (int i = 0; leftovers[i] != NULL; i++) {
        snprintf(path, sizeof(path), "%s/%s", e->dir, leftovers[i]);
        unlink(path);
    }
    for (const char *n[] = {"a", "b", "tcp-proc", "udp-proc", "web", NULL}, **k = n; *k; k++) {
        snprintf(path, sizeof(path), "%s/backend-%s.log", e->dir, *k);
        unlink(path);
    }
    rmdir(e->dir);
}

/* ---- looking ------------------------------------------------------------------------------- */

/* Prints gwd's NAT table like `gwctl show nat` (at most `max` rows). Returns
 * the sessions array (new reference) or NULL. */
static json_t *snapshot(struct lab_env *e, const char *proto, size_t max)
{
    char err[256];
    json_t *args = json_pack("{s:i,s:s}", "limit", 1000, "sort", "nat");
    json_t *res, *rows, *row;
    size_t i;

    if (proto != NULL)
        json_object_set_new(args, "proto", json_string(proto));
    res = sim_ctl_call(&e->ctl, "show nat", args, err, sizeof(err));
    if (res == NULL) {
        say(e, "seen", "show nat failed: %s", err);
        return NULL;
    }
    rows = json_incref(json_object_get(res, "sessions"));
    say(e, "seen", "gwctl show nat (%lld sessions):",
        (long long)json_integer_value(json_object_get(res, "total")));
    say(e, "seen", "  %-5s %-22s %-22s %-26s %s", "PROTO", "CLIENT", "NAT", "BACKEND", "STATE");
    json_array_foreach(rows, i, row)
    {
        char c[64], n[64], b[96];
        if (i == max) {
            say(e, "seen", "  ... %zu more", json_array_size(rows) - max);
            break;
        }
        snprintf(c, sizeof(c), "%s:%lld", json_string_value(json_object_get(row, "client_ip")),
                 (long long)json_integer_value(json_object_get(row, "client_port")));
        snprintf(n, sizeof(n), "%s:%lld", json_string_value(json_object_get(row, "nat_ip")),
                 (long long)json_integer_value(json_object_get(row, "nat_port")));
        snprintf(b, sizeof(b), "%s %s:%lld", json_string_value(json_object_get(row, "backend")),
                 json_string_value(json_object_get(row, "backend_ip")),
                 (long long)json_integer_value(json_object_get(row, "backend_port")));
        say(e, "seen", "  %-5s %-22s %-22s %-26s %s",
            json_string_value(json_object_get(row, "proto")), c, n, b,
            json_string_value(json_object_get(row, "state")));
    }
    json_object_set(e->rep, "snapshot", rows);
    json_decref(res);
    return rows;
}

/* Live flows gwd reports (show stats flows.live), or -1. */
static long long live_flows(struct lab_env *e)
{
    char err[256];
    json_t *st = sim_ctl_call(&e->ctl, "show stats", NULL, err, sizeof(err));
    long long n;

    if (st == NULL)
        return -1;
    n = json_integer_value(json_object_get(json_object_get(st, "flows"), "live"));
    json_decref(st);
    return n;
}

/* gwd's refusal counter `reason` (show stats mappings.refused), or -1. */
static long long refused(struct lab_env *e, const char *reason)
{
    char err[256];
    json_t *st = sim_ctl_call(&e->ctl, "show stats", NULL, err, sizeof(err));
    json_t *v;
    long long n = -1;

    if (st == NULL)
        return -1;
    v = json_object_get(json_object_get(json_object_get(st, "mappings"), "refused"), reason);
    if (json_is_integer(v))
        n = json_integer_value(v);
    json_decref(st);
    return n;
}

/* Waits (bounded) until gwd holds at least `n` live flows. */
static long long wait_live(struct lab_env *e, long long n, int timeout_ms)
{
    double deadline = sim_now_ms() + timeout_ms;
    long long live = -1;

    while (sim_now_ms() < deadline) {
        live = live_flows(e);
        if (live >= n)
            break;
        usleep(20000);
    }
    return live;
}

/* Starts `gwsim clients` against gwd with the given extra args. */
static int clients_start(struct lab_env *e, struct sim_proc *p, const char *const *extra)
{
    char gw[64];
    char *argv[40];
    int n = 0;

    snprintf(gw, sizeof(gw), "127.0.0.1:%u", e->gwd_port);
    argv[n++] = e->self;
    argv[n++] = "clients";
    argv[n++] = "--gateway";
    argv[n++] = gw;
    argv[n++] = "--control";
    argv[n++] = e->sock;
    argv[n++] = "--json";
    argv[n++] = "--quiet";
    argv[n++] = "--io-timeout"; /* generous: the lab also runs under sanitizers */
    argv[n++] = "20s";
    for (int i = 0; extra[i] != NULL && n < 38; i++)
        argv[n++] = (char *)(uintptr_t)extra[i];
    argv[n] = NULL;
    return sim_proc_start(p, argv, NULL);
}

/* Waits for the clients child; returns its summary (new reference) or NULL. */
static json_t *clients_finish(struct lab_env *e, struct sim_proc *p)
{
    char *out = NULL;
    json_error_t je;
    json_t *s;
    int st = sim_proc_collect(p, &out, 1 << 20, 60000);

    s = out != NULL ? json_loads(out, 0, &je) : NULL;
    if (s == NULL)
        say(e, "seen", "gwsim clients gave no summary (status %d)", st);
    free(out);
    return s;
}

static long long jint(json_t *o, const char *k)
{
    return json_integer_value(json_object_get(o, k));
}

static long long jfail(json_t *s, const char *reason)
{
    return json_integer_value(json_object_get(json_object_get(s, "failed_by_reason"), reason));
}

static const char *range(struct lab_env *e, unsigned off, unsigned n, char *buf, size_t len)
{
    snprintf(buf, len, "%u-%u", e->port_lo + off, e->port_lo + off + n - 1);
    return buf;
}

/* Starts the backend 'web' (TCP) and gwd in front of it with the NAT pool
 * range(off, n), whose text goes to ports. Returns the backend's port, or < 0. */
static int web_behind_gwd(struct lab_env *e, unsigned off, unsigned n, char *ports, size_t plen)
{
    char be[64];
    int port = env_backend(e, "web", "--tcp", 0);

    if (port < 0)
        return port;
    snprintf(be, sizeof(be), "web=127.0.0.1:%d", port);
    if (env_gwd(e, (const char *const[]){"--tcp-backend", be, "--nat-ports",
                                         range(e, off, n, ports, plen), NULL}) < 0)
        return -1;
    return port;
}

/* Runs gwsim clients with `args` (flows held open), waits for `live` open
 * sessions, snapshots up to `show` TCP rows into *rows, then waits for the
 * end. Returns the summary, or NULL (and *rows NULL). */
static json_t *clients_held(struct lab_env *e, const char *const *args, long long live,
                            size_t show, json_t **rows)
{
    struct sim_proc cp;
    json_t *s;

    *rows = NULL;
    if (clients_start(e, &cp, args) < 0)
        return NULL;
    wait_live(e, live, 5000);
    *rows = snapshot(e, "tcp", show);
    s = clients_finish(e, &cp);
    if (s == NULL) {
        json_decref(*rows);
        *rows = NULL;
    }
    return s;
}

/* ---- the experiments ------------------------------------------------------------------------- */

static int lab_many_clients(struct lab_env *e)
{
    char ports[32];
    json_t *s, *rows;
    int port = web_behind_gwd(e, 0, 100, ports, sizeof(ports));

    if (port < 0)
        return port;
    say(e, "done", "one backend 'web' listening on TCP port %d, gwd on TCP port %u", port,
        e->gwd_port);
    say(e, "done",
        "20 clients from 10 source IPs (127.1.0.1-10) connect to gwd's one port, "
        "send 64 bytes, hold the connection 1.5 s");
    s = clients_held(
        e, (const char *const[]){"--clients", "20", "--ips", "10", "--hold", "1500ms", NULL}, 20,
        12, &rows);
    if (s == NULL)
        return -1;
    say(e, "seen",
        "%lld of 20 flows ok, %lld distinct client IPs, %lld distinct client "
        "tuples, %lld distinct NAT ports; every backend peer equals gwd's table",
        jint(s, "ok"), jint(s, "client_ips"), jint(s, "client_tuples"), jint(s, "nat_ports"));
    expect(e, jint(s, "ok") == 20, "all 20 flows served");
    expect(e, jint(s, "nat_ports") == 20, "20 NAT ports toward one backend port");
    expect(e, json_array_size(rows) == 20, "20 sessions in gwd's table while open");
    say(e, "answer",
        "No. A server listens on one port and tells connections apart by the "
        "whole 5-tuple (proto, client IP, client port, server IP, server port): "
        "20 clients shared server port %u (and the backend's one port %d).",
        e->gwd_port, port);
    json_decref(rows);
    json_decref(s);
    return 0;
}

static int lab_one_client(struct lab_env *e)
{
    char ports[32];
    json_t *s, *rows;
    int port = web_behind_gwd(e, 100, 100, ports, sizeof(ports));

    if (port < 0)
        return port;
    say(e, "done",
        "one client IP (127.1.0.1) opens 10 connections at once to gwd port %u "
        "and holds them 1.5 s",
        e->gwd_port);
    s = clients_held(
        e, (const char *const[]){"--clients", "10", "--ips", "1", "--hold", "1500ms", NULL}, 10,
        10, &rows);
    if (s == NULL)
        return -1;
    say(e, "seen", "%lld of 10 flows ok from %lld client IP, %lld distinct source ports",
        jint(s, "ok"), jint(s, "client_ips"), jint(s, "client_tuples"));
    expect(e, jint(s, "ok") == 10 && jint(s, "client_tuples") == 10,
           "10 connections, 10 source ports");
    say(e, "answer",
        "Yes, as many as it has source ports: each connection from one IP to "
        "the same server port differs by its source port, so each is its own "
        "5-tuple (and its own NAT mapping).");
    json_decref(rows);
    json_decref(s);
    return 0;
}

/* Sends msg on fd (to dst when not NULL), waits up to 3 s for the reply and
 * puts its first line in buf (NUL-terminated; "" when none). Returns what
 * recv() returned. */
static ssize_t ask_line(int fd, const char *msg, size_t len, const struct sockaddr_in *dst,
                        char *buf, size_t blen)
{
    struct timeval tv = {.tv_sec = 3};
    ssize_t n;

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    sendto(fd, msg, len, 0, (const struct sockaddr *)dst, dst != NULL ? sizeof(*dst) : 0);
    n = recv(fd, buf, blen - 1, 0);
    buf[n > 0 ? n : 0] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
    return n;
}

static int connect_from(const char *src_ip, uint16_t src_port, unsigned dst_port, int *err)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(src_port)};
    struct sockaddr_in d = {.sin_family = AF_INET, .sin_port = htons((uint16_t)dst_port)};
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    inet_pton(AF_INET, src_ip, &a.sin_addr);
    d.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        connect(fd, (struct sockaddr *)&d, sizeof(d)) < 0) {
        *err = errno;
        close(fd);
        return -1;
    }
    *err = 0;
    return fd;
}

static uint16_t free_port(const char *ip)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t sl = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    uint16_t p = 0;

    inet_pton(AF_INET, ip, &a.sin_addr);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &sl) == 0)
        p = ntohs(a.sin_port);
    close(fd);
    return p;
}

static int lab_same_tuple(struct lab_env *e)
{
    char ports[32], line[256];
    const char *ip = "127.1.0.77";
    int port = web_behind_gwd(e, 200, 100, ports, sizeof(ports)), fd1, fd2, fd3, err1, err2, err3;
    uint16_t sport;

    if (port < 0)
        return port;
    sport = free_port(ip);
    say(e, "done", "socket 1: bind %s:%u, connect to gwd 127.0.0.1:%u", ip, sport, e->gwd_port);
    fd1 = connect_from(ip, sport, e->gwd_port, &err1);
    say(e, "done",
        "socket 2: bind the same %s:%u (SO_REUSEADDR), connect to the same "
        "127.0.0.1:%u",
        ip, sport, e->gwd_port);
    fd2 = connect_from(ip, sport, e->gwd_port, &err2);
    say(e, "done",
        "socket 3: bind the same %s:%u, connect to another port, 127.0.0.1:%d "
        "(the backend itself)",
        ip, sport, port);
    fd3 = connect_from(ip, sport, (unsigned)port, &err3);
    say(e, "seen", "socket 1: %s", fd1 >= 0 ? "connected" : strerror(err1));
    say(e, "seen", "socket 2: %s%s", fd2 >= 0 ? "connected" : strerror(err2),
        err2 == EADDRNOTAVAIL ? " (EADDRNOTAVAIL: the 4-tuple is taken)" : "");
    say(e, "seen", "socket 3: %s", fd3 >= 0 ? "connected" : strerror(err3));
    if (fd1 >= 0) {
        ask_line(fd1, "\x16hi", 3, NULL, line, sizeof(line));
        say(e, "seen", "socket 1 got: %s", line);
    }
    json_decref(snapshot(e, "tcp", 5));
    expect(e, fd1 >= 0, "the first connection works");
    expect(e, fd2 < 0 && err2 == EADDRNOTAVAIL, "the same 4-tuple is refused with EADDRNOTAVAIL");
    expect(e, fd3 >= 0, "the same source to another port works");
    say(e, "answer",
        "A connection is its 4-tuple (plus the protocol). The same client IP and "
        "port can talk to many server ports at once, but only once to the same "
        "server IP and port: the kernel refuses the duplicate with EADDRNOTAVAIL "
        "before a packet leaves.");
    for (int *fd = (int[]){fd1, fd2, fd3}, i = 0; i < 3; i++)
        if (fd[i] >= 0)
            close(fd[i]);
    return 0;
}

static int lab_tcp_udp(struct lab_env *e)
{
    char ports[32], tb[64], ub[64], buf[512];
    int tport = env_backend(e, "tcp-proc", "--tcp", 0), uport, fd, err;
    struct sockaddr_in d = {.sin_family = AF_INET};
    ssize_t n;
    bool tcp_ok = false, udp_ok = false;

    if (tport < 0)
        return tport;
    uport = env_backend(e, "udp-proc", "--udp", (unsigned)tport);
    if (uport < 0)
        return uport;
    say(e, "done",
        "process %d ('tcp-proc') listens on TCP port %d; process %d ('udp-proc') "
        "binds UDP port %d: the same number, two processes",
        (int)e->backends[0].pid, tport, (int)e->backends[1].pid, uport);
    snprintf(tb, sizeof(tb), "127.0.0.1:%d", tport);
    snprintf(ub, sizeof(ub), "127.0.0.1:%d", uport);
    if (env_gwd(e, (const char *const[]){"--tcp-backend", tb, "--udp-backend", ub, "--nat-ports",
                                         range(e, 300, 100, ports, sizeof(ports)), NULL}) < 0)
        return -1;
    say(e, "done",
        "gwd itself serves TCP %u and UDP %u in one process; a TCP connection and a "
        "UDP datagram go to that one number",
        e->gwd_port, e->gwd_port);
    fd = connect_from("127.1.0.1", 0, e->gwd_port, &err);
    if (fd >= 0) {
        ask_line(fd, "\x16tcp", 4, NULL, buf, sizeof(buf));
        say(e, "seen", "TCP reply: %s", buf);
        tcp_ok = strncmp(buf, "gwsim-backend tcp-proc ", 23) == 0;
    }
    {
        int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET};
        inet_pton(AF_INET, "127.1.0.1", &a.sin_addr);
        bind(u, (struct sockaddr *)&a, sizeof(a));
        d.sin_port = htons((uint16_t)e->gwd_port);
        d.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        n = ask_line(u, "udp", 3, &d, buf, sizeof(buf));
        say(e, "seen", "UDP reply: %s", n > 0 ? buf : "(none)");
        udp_ok = strncmp(buf, "gwsim-backend udp-proc ", 23) == 0;
        json_decref(snapshot(e, NULL, 5));
        close(u);
    }
    if (fd >= 0)
        close(fd);
    expect(e, tcp_ok, "the TCP flow reached the TCP process");
    expect(e, udp_ok, "the UDP datagram reached the UDP process");
    say(e, "answer",
        "Yes. TCP port %d and UDP port %d are different things: the protocol is "
        "part of the 5-tuple and each protocol has its own port space, so two "
        "processes can hold the same number at once (and one process, like gwd, "
        "can hold both).",
        tport, uport);
    return 0;
}

static int lab_pool_exhaustion(struct lab_env *e)
{
    char ports[32];
    struct sim_proc cp;
    json_t *s;
    int port = web_behind_gwd(e, 400, 10, ports, sizeof(ports)), direct_ok = 0;
    int fds[15];

    if (port < 0)
        return port;
    say(e, "done",
        "gwd's NAT pool is 10 ports (%s) on 127.0.0.1; 15 clients connect through "
        "it and hold their flows 3 s",
        ports);
    if (clients_start(
            e, &cp, (const char *const[]){"--clients", "15", "--ips", "15", "--hold", "3s", NULL}) <
        0)
        return -1;
    wait_live(e, 10, 5000);
    json_decref(snapshot(e, "tcp", 4));
    say(e, "done", "meanwhile, 15 more clients connect straight to the backend's one port %d",
        port);
    for (int i = 0; i < 15; i++) {
        char ip[32];
        int err;
        snprintf(ip, sizeof(ip), "127.1.1.%d", i + 1);
        fds[i] = connect_from(ip, 0, (unsigned)port, &err);
        direct_ok += fds[i] >= 0;
    }
    s = clients_finish(e, &cp);
    for (int i = 0; i < 15; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    if (s == NULL)
        return -1;
    say(e, "seen",
        "through gwd: %lld ok, %lld refused (closed before the hello: %lld, "
        "reset: %lld); gwd counted pool_exhausted %lld",
        jint(s, "ok"), jint(s, "failed"), jfail(s, "closed_before_hello"),
        jfail(s, "reset_before_hello"), refused(e, "pool_exhausted"));
    say(e, "seen", "straight to the backend: %d of 15 connected", direct_ok);
    expect(e, jint(s, "ok") == 10, "exactly the pool's 10 flows are carried");
    expect(e, refused(e, "pool_exhausted") == 5, "5 refused for pool_exhausted");
    expect(e, direct_ok == 15, "the server's port takes every connection");
    say(e, "answer",
        "What runs out is the NAT's external ports (per external IP, protocol and "
        "-- with eim -- for every destination at once), not the server's port: "
        "the backend's single port kept accepting while the 10-port pool refused "
        "the 11th flow.");
    json_decref(s);
    return 0;
}

static int eim_apdm_run(struct lab_env *e, const char *mapping, unsigned off, long long *ok,
                        long long *reused)
{
    char ports[32], b1[64], b2[64];
    struct sim_proc cp;
    json_t *s;

    snprintf(b1, sizeof(b1), "web=127.0.0.1:%u", e->be_port[0]);
    snprintf(b2, sizeof(b2), "web=127.0.0.1:%u", e->be_port[1]);
    if (env_gwd(e, (const char *const[]){"--tcp-backend", b1, "--tcp-backend", b2, "--nat-mapping",
                                         mapping, "--nat-policy", "sequential", "--nat-ports",
                                         range(e, off, 10, ports, sizeof(ports)), NULL}) < 0)
        return -1;
    say(e, "done",
        "%s: gwd with the 10-port pool %s, pool 'web' = 2 servers (round robin); 30 "
        "clients hold their flows 3 s",
        mapping, ports);
    if (clients_start(e, &cp,
                      (const char *const[]){"--clients", "30", "--ips", "30", "--hold", "3s",
                                            "--concurrency", "30", NULL}) < 0)
        return -1;
    wait_live(e, 10, 5000);
    usleep(300000);
    json_decref(snapshot(e, "tcp", 6));
    s = clients_finish(e, &cp);
    env_stop_gwd(e);
    if (s == NULL)
        return -1;
    *ok = jint(s, "ok");
    *reused = jint(s, "nat_ports_reused_across_backends");
    say(e, "seen", "%s: %lld of 30 flows carried, %lld NAT ports used by both servers at once",
        mapping, *ok, *reused);
    json_decref(s);
    return 0;
}

static int lab_eim_apdm(struct lab_env *e)
{
    long long eim_ok = 0, apdm_ok = 0, eim_re = 0, apdm_re = 0;

    if (env_backend(e, "a", "--tcp", 0) < 0 || env_backend(e, "b", "--tcp", 0) < 0)
        return -1;
    if (eim_apdm_run(e, "eim", 500, &eim_ok, &eim_re) < 0 ||
        eim_apdm_run(e, "apdm", 600, &apdm_ok, &apdm_re) < 0)
        return -1;
    expect(e, eim_ok == 10, "eim carries one flow per port (10)");
    expect(e, apdm_ok == 20, "apdm carries one flow per port and destination (2 x 10)");
    say(e, "answer",
        "With endpoint-independent mapping a client endpoint's external port is "
        "its own toward every destination, so 10 ports carry 10 flows. With "
        "address-and-port-dependent mapping a port is only unique per destination: "
        "the same 10 ports carried %lld flows toward 2 servers (D destinations, D "
        "times the flows). `gwsim model` shows the same with --nat-mapping.",
        apdm_ok);
    return 0;
}

static const struct lab lab_list[] = {
    {"many-clients", "Does a server need one port per client?", lab_many_clients},
    {"one-client-many-conns", "Can one client open many connections to the same server port?",
     lab_one_client},
    {"same-4tuple", "Can a second connection reuse the same client IP and port?", lab_same_tuple},
    {"tcp-udp-same-port", "Can TCP port N and UDP port N be served by two processes at once?",
     lab_tcp_udp},
    {"pool-exhaustion", "What runs out first: the server's port or the NAT's pool?",
     lab_pool_exhaustion},
    {"eim-vs-apdm", "How many flows do EIM and APDM mapping carry on the same pool?", lab_eim_apdm},
};
#define N_LABS (sizeof(lab_list) / sizeof(lab_list[0]))

/* ---- command line ------------------------------------------------------------------------------
 */

static void usage(FILE *f)
{
    fprintf(f, "usage: gwsim lab [--gwd PATH] [--nat-ports LO-HI] [--json] NAME... | all\n"
               "       gwsim lab --list\n"
               "Each experiment starts its own gwd (port picked by the kernel, bound to\n"
               "127.0.0.1), demo backends and clients on loopback, in a temporary directory it\n"
               "removes afterwards, and uses NAT ports from --nat-ports (default 26000-26999;\n"
               "at least 700 ports).\n"
               "  --gwd PATH   the gwd binary (default: next to gwsim, or ../gateway/gwd)\n"
               "Exit 0 when every experiment saw what its answer says, 1 otherwise.\n");
}

static int find_gwd(char *buf, size_t len)
{
    char dir[LAB_PATH_MAX - 32];

    if (sim_self_dir(dir, sizeof(dir)) < 0)
        return -1;
    snprintf(buf, len, "%s/gwd", dir);
    if (access(buf, X_OK) == 0)
        return 0;
    snprintf(buf, len, "%s/../gateway/gwd", dir);
    if (access(buf, X_OK) == 0)
        return 0;
    return -1;
}

static int run_one(const struct lab *l, const char *gwd, uint16_t port_lo, bool json, json_t *all)
{
    struct lab_env e;
    char dir[LAB_PATH_MAX];
    int rc;

    memset(&e, 0, sizeof(e));
    e.gwd_path = gwd;
    e.json = json;
    e.port_lo = port_lo;
    e.ok = true;
    if (readlink("/proc/self/exe", e.self, sizeof(e.self) - 1) < 0)
        return -1;
    snprintf(dir, sizeof(dir), "%s/gwsim-lab.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(dir) == NULL) {
        fprintf(stderr, "gwsim lab: mkdtemp: %s\n", strerror(errno));
        return -1;
    }
    strcpy(e.dir, dir);
    snprintf(e.sock, sizeof(e.sock), "%s/gwd.sock", dir);
    snprintf(e.log, sizeof(e.log), "%s/gwd.log", dir);
    snprintf(e.db, sizeof(e.db), "%s/gwd.db", dir);
    e.rep = json_object();
    json_object_set_new(e.rep, "name", json_string(l->name));
    json_object_set_new(e.rep, "question", json_string(l->question));
    if (!json)
        printf("== %s: %s\n", l->name, l->question);
    fflush(stdout);
    rc = l->run(&e);
    if (rc < 0)
        e.ok = false;
    json_object_set_new(e.rep, "ok", json_boolean(e.ok));
    if (!json)
        printf("result: %s\n\n", e.ok ? "as answered" : "NOT as answered");
    fflush(stdout);
    json_array_append_new(all, e.rep);
    env_teardown(&e);
    return e.ok ? 0 : 1;
}

int sim_lab_main(int argc, char **argv)
{
    enum { O_GWD = 256, O_PORTS, O_JSON, O_LIST, O_HELP };
    static const struct option lo[] = {
        {"gwd", 1, NULL, O_GWD},   {"nat-ports", 1, NULL, O_PORTS}, {"json", 0, NULL, O_JSON},
        {"list", 0, NULL, O_LIST}, {"help", 0, NULL, O_HELP},       {NULL, 0, NULL, 0},
    };
    char gwd[LAB_PATH_MAX];
    const char *gwd_opt = NULL;
    uint16_t plo = 26000, phi = 26999;
    bool json = false, list = false;
    json_t *all;
    int ch, failed = 0, ran = 0;

    optind = 1;
    while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (ch) {
        case O_GWD:
            gwd_opt = optarg;
            break;
        case O_PORTS:
            if (sim_parse_port_range(optarg, &plo, &phi) < 0 || phi - plo + 1 < 700) {
                fprintf(stderr, "gwsim lab: --nat-ports: '%s': LO-HI with at least 700 ports\n",
                        optarg);
                return 2;
            }
            break;
        case O_JSON:
            json = true;
            break;
        case O_LIST:
            list = true;
            break;
        case 'h':
        case O_HELP:
            return sim_usage_exit(usage, true);
        default:
            return sim_usage_exit(usage, false);
        }
    }
    if (list) {
        for (size_t i = 0; i < N_LABS; i++)
            printf("%-24s %s\n", lab_list[i].name, lab_list[i].question);
        return 0;
    }
    if (optind == argc)
        return sim_usage_exit(usage, false);
    for (int i = optind; i < argc; i++) {
        bool known = strcmp(argv[i], "all") == 0;
        for (size_t k = 0; k < N_LABS && !known; k++)
            known = strcmp(argv[i], lab_list[k].name) == 0;
        if (!known) {
            fprintf(stderr, "gwsim lab: no experiment '%s' (gwsim lab --list)\n", argv[i]);
            return 2;
        }
    }
    if (gwd_opt != NULL)
        snprintf(gwd, sizeof(gwd), "%s", gwd_opt);
    else if (find_gwd(gwd, sizeof(gwd)) < 0) {
        fprintf(stderr, "gwsim lab: no gwd next to gwsim nor in ../gateway: give --gwd PATH\n");
        return 2;
    }
    if (access(gwd, X_OK) < 0) {
        fprintf(stderr, "gwsim lab: --gwd %s: %s\n", gwd, strerror(errno));
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    all = json_array();
    for (int i = optind; i < argc; i++) {
        for (size_t k = 0; k < N_LABS; k++) {
            if (strcmp(argv[i], "all") != 0 && strcmp(argv[i], lab_list[k].name) != 0)
                continue;
            ran++;
            if (run_one(&lab_list[k], gwd, plo, json, all) != 0)
                failed++;
        }
    }
    if (json) {
        json_dumpf(all, stdout, JSON_INDENT(2));
        printf("\n");
    } else {
        printf("%d experiment%s, %d as answered, %d not\n", ran, ran == 1 ? "" : "s", ran - failed,
               failed);
    }
    json_decref(all);
    return failed ? 1 : 0;
}
