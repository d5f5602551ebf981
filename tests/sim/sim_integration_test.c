/*
 * sim_integration_test.c - `gwsim clients` and `gwsim lab` against a real
 * gwd and real `gwsim backend` processes on loopback. NAT ports: clients
 * 27000-27999, lab 26000-26999 (the gwsim share, 26000-28999).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "sim/sim_proc.h"

struct world {
    char dir[256], sock[300], log[300], db[300];
    struct sim_proc be[2];
    unsigned be_port[2];
    struct sim_proc gwd;
    unsigned port;
};

static void start_backend(struct world *w, int i, char *name)
{
    char *argv[] = {GWSIM_PATH, "backend", "--name", name, NULL};
    unsigned t, u;

    cr_assert_eq(sim_proc_start(&w->be[i], argv, NULL), 0);
    cr_assert_eq(sim_proc_wait_line(&w->be[i], "listening", 5000), 0);
    cr_assert_eq(sim_parse_listening(w->be[i].ready, &t, &u), 0);
    cr_assert_eq(t, u);
    w->be_port[i] = t;
}

/* gwd with two backends (TCP pool web, UDP pool dns) and the given NAT ports. */
static void world_up(struct world *w, char *ports)
{
    char b1[64], b2[64], u1[64], line[512];

    memset(w, 0, sizeof(*w));
    w->gwd.out_fd = w->be[0].out_fd = w->be[1].out_fd = -1;
    strcpy(w->dir, "/tmp/sim_integration.XXXXXX");
    cr_assert_not_null(mkdtemp(w->dir));
    snprintf(w->sock, sizeof(w->sock), "%s/gwd.sock", w->dir);
    snprintf(w->log, sizeof(w->log), "%s/gwd.log", w->dir);
    snprintf(w->db, sizeof(w->db), "%s/gwd.db", w->dir);
    start_backend(w, 0, "b1");
    start_backend(w, 1, "b2");
    snprintf(b1, sizeof(b1), "web=127.0.0.1:%u", w->be_port[0]);
    snprintf(b2, sizeof(b2), "web=127.0.0.1:%u", w->be_port[1]);
    snprintf(u1, sizeof(u1), "dns=127.0.0.1:%u", w->be_port[0]);
    {
        char *argv[] = {GWD_PATH,    "-p",
                        "0",         "-b",
                        "127.0.0.1", "--tcp-backend",
                        b1,          "--tcp-backend",
                        b2,          "--udp-backend",
                        u1,          "--nat-ports",
                        ports,       "--nat-ip",
                        "127.0.0.1", "--db",
                        w->db,       "--control",
                        w->sock,     NULL};
        cr_assert_eq(sim_proc_start(&w->gwd, argv, w->log), 0);
    }
    cr_assert_eq(sim_wait_file_line(w->log, "ready: port ", line, sizeof(line), 10000), 0,
                 "gwd not ready (log %s)", w->log);
    w->port = (unsigned)strtoul(strstr(line, "ready: port ") + 12, NULL, 10);
    cr_assert_gt(w->port, 0);
}

/* The world of the running test and its summary, torn down by the .fini
 * fixture even when an assertion failed half-way. */
static struct world W;
static json_t *S;

static int world_clean(struct world *w)
{
    static const char *const files[] = {"gwd.sock",   "gwd.log",    "gwd.db",
                                        "gwd.db-wal", "gwd.db-shm", NULL};
    char path[400];

    if (w->dir[0] == '\0')
        return 0; /* never set up, or already cleaned */
    sim_proc_stop(&w->gwd, 10000);
    sim_proc_stop(&w->be[0], 3000);
    sim_proc_stop(&w->be[1], 3000);
    for (int i = 0; files[i] != NULL; i++) {
        snprintf(path, sizeof(path), "%s/%s", w->dir, files[i]);
        unlink(path);
    }
    if (rmdir(w->dir) < 0)
        return -errno;
    w->dir[0] = '\0';
    return 0;
}

static void teardown(void)
{
    json_decref(S);
    S = NULL;
    world_clean(&W);
}

static void world_down(struct world *w)
{
    int rc;

    cr_assert_eq(sim_proc_stop(&w->gwd, 10000), 0, "gwd exits 0 on SIGTERM");
    rc = world_clean(w);
    cr_assert_eq(rc, 0, "temp dir left clean: %s", strerror(-rc));
}

/* Runs gwsim clients with args; returns its exit status and *summary. */
static int run_clients(struct world *w, char **extra, json_t **summary)
{
    char gw[64];
    char *argv[40];
    int n = 0, st;
    char *out = NULL;
    json_error_t je;
    struct sim_proc p;

    snprintf(gw, sizeof(gw), "127.0.0.1:%u", w->port);
    argv[n++] = GWSIM_PATH;
    argv[n++] = "clients";
    argv[n++] = "--gateway";
    argv[n++] = gw;
    argv[n++] = "--control";
    argv[n++] = w->sock;
    argv[n++] = "--json";
    for (int i = 0; extra[i] != NULL; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    cr_assert_eq(sim_proc_start(&p, argv, NULL), 0);
    st = sim_proc_collect(&p, &out, 1 << 20, 150000);
    *summary = json_loads(out, 0, &je);
    cr_assert_not_null(*summary, "no JSON from gwsim clients: %s", out);
    free(out);
    cr_assert(WIFEXITED(st), "status %d", st);
    return WEXITSTATUS(st);
}

static long long ji(json_t *o, const char *k)
{
    return json_integer_value(json_object_get(o, k));
}

/* generous per-step bounds: these also run under ASan on a loaded machine */
#define SLOW "--io-timeout", "30s", "--timeout", "120s"

Test(sim_integration, clients_tcp_udp_checked, .timeout = 240, .fini = teardown)
{
    struct world *w = &W;
    json_t *s;
    /* UDP has no retransmission: keep bursts well inside the default socket
     * buffers (a slow sanitized gwd must not drop a datagram). */
    char *args[] = {"--clients",     "200", "--ips",  "20",   "--proto", "both",
                    "--requests",    "3",   "--size", "1000", "--hold",  "50ms",
                    "--concurrency", "40",  SLOW,     NULL};

    world_up(w, "27000-27999");
    cr_assert_eq(run_clients(w, args, &S), 0, "failed: %s",
                 json_dumps(json_object_get(S, "failed_by_reason"), 0));
    s = S;
    cr_assert_eq(ji(s, "flows"), 200);
    cr_assert_eq(ji(s, "ok"), 200);
    cr_assert_eq(ji(s, "ok_tcp"), 100);
    cr_assert_eq(ji(s, "ok_udp"), 100);
    cr_assert_eq(ji(s, "failed"), 0);
    cr_assert_eq(ji(s, "client_ips"), 20);
    cr_assert_eq(ji(s, "client_tuples"), 200);
    cr_assert(json_is_true(json_object_get(s, "nat_checked")));
    cr_assert_eq(ji(s, "backends"), 2, "TCP round robin over b1 and b2");
    cr_assert_eq(ji(s, "bytes"), 200LL * 3 * 1000 * 2);
    cr_assert_eq(json_object_size(json_object_get(s, "refused_by_gateway")), 0);
    world_down(w);
}

Test(sim_integration, clients_pool_exhausted, .timeout = 240, .fini = teardown)
{
    struct world *w = &W;
    json_t *s, *gw;
    char *args[] = {"--clients",     "8", "--ips", "8", "--hold", "3s",
                    "--concurrency", "8", SLOW,    NULL};

    world_up(w, "27100-27104");
    cr_assert_eq(run_clients(w, args, &S), 1, "failed flows make exit 1");
    s = S;
    cr_assert_eq(ji(s, "ok"), 5, "a 5-port pool carries 5 held flows");
    cr_assert_eq(ji(s, "failed"), 3);
    gw = json_object_get(s, "refused_by_gateway");
    cr_assert_eq(ji(gw, "pool_exhausted"), 3, "gwd says why");
    cr_assert_eq(ji(s, "nat_ports"), 5);
    world_down(w);
}

Test(sim_integration, clients_fixed_port_collides, .timeout = 240, .fini = teardown)
{
    struct world *w = &W;
    json_t *s, *f;
    char *args[] = {"--clients",  "3",           "--ips",  "1",  "--src", "127.1.9.9",
                    "--src-port", "fixed:47123", "--hold", "3s", SLOW,    NULL};

    world_up(w, "27200-27299");
    cr_assert_eq(run_clients(w, args, &S), 1);
    s = S;
    f = json_object_get(s, "failed_by_reason");
    cr_assert_eq(ji(s, "ok"), 1, "one flow owns the 4-tuple");
    cr_assert_eq(ji(f, "connect_eaddrnotavail"), 2, "the others are told the 4-tuple is taken");
    cr_assert_eq(ji(s, "client_tuples"), 1);
    world_down(w);
}

Test(sim_integration, clients_usage_and_unreachable, .timeout = 120, .fini = teardown)
{
    struct world *w = &W;
    int st;
    char *bad[][3] = {{"--gateway", "no where:80", NULL}, /* refused before any DNS query */
                      {"--src-port", "fixed:0", NULL},
                      {"--proto", "sctp", NULL},
                      {"--clients", "0", NULL}};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *argv[] = {GWSIM_PATH, "clients", "--gateway", "127.0.0.1:9",
                        bad[i][0],  bad[i][1], NULL};
        struct sim_proc p;
        char *out;
        cr_assert_eq(sim_proc_start(&p, argv, "/dev/null"), 0);
        st = sim_proc_collect(&p, &out, 4096, 10000);
        free(out);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "%s %s -> %d", bad[i][0], bad[i][1], st);
    }
    world_up(w, "27300-27309");
    strcat(w->sock, ".missing");
    {
        char *args[] = {"--clients", "1", NULL};
        char gw[64];
        char *argv[] = {GWSIM_PATH, "clients", "--gateway", gw,  "--control",
                        w->sock,    args[0],   args[1],     NULL};
        struct sim_proc p;
        char *out;
        snprintf(gw, sizeof(gw), "127.0.0.1:%u", w->port);
        cr_assert_eq(sim_proc_start(&p, argv, "/dev/null"), 0);
        st = sim_proc_collect(&p, &out, 4096, 10000);
        free(out);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 3, "unreachable control socket -> 3");
    }
    w->sock[strlen(w->sock) - 8] = '\0';
    world_down(w);
}

Test(sim_integration, lab_all, .timeout = 400)
{
    char *argv[] = {GWSIM_PATH,    "lab",    "--gwd", GWD_PATH, "--nat-ports",
                    "26000-26999", "--json", "all",   NULL};
    struct sim_proc p;
    char *out;
    json_t *all, *e;
    json_error_t je;
    size_t i;
    int st;

    cr_assert_eq(sim_proc_start(&p, argv, NULL), 0);
    st = sim_proc_collect(&p, &out, 4 << 20, 240000);
    all = json_loads(out, 0, &je);
    cr_assert_not_null(all, "lab JSON: %s", je.text);
    cr_assert_eq(json_array_size(all), 6);
    json_array_foreach(all, i, e)
    {
        cr_assert(json_is_true(json_object_get(e, "ok")), "lab %s: %s",
                  json_string_value(json_object_get(e, "name")),
                  json_dumps(json_object_get(e, "seen"), 0));
        cr_assert(json_array_size(json_object_get(e, "answer")) >= 1);
    }
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    json_decref(all);
    free(out);
}

Test(sim_integration, lab_usage)
{
    char *cases[][4] = {{"lab", "--list", NULL, NULL},
                        {"lab", "no-such-lab", NULL, NULL},
                        {"lab", "--gwd", "/nonexistent/gwd", "all"},
                        {"lab", NULL, NULL, NULL}};
    int want[] = {0, 2, 2, 2};

    for (size_t i = 0; i < 4; i++) {
        char *argv[] = {GWSIM_PATH, cases[i][0], cases[i][1], cases[i][2], cases[i][3], NULL};
        struct sim_proc p;
        char *out;
        int st;
        cr_assert_eq(sim_proc_start(&p, argv, "/dev/null"), 0);
        st = sim_proc_collect(&p, &out, 65536, 10000);
        if (i == 0)
            cr_assert(strstr(out, "eim-vs-apdm") != NULL && strstr(out, "same-4tuple") != NULL);
        free(out);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == want[i], "case %zu -> %d", i, st);
    }
}
