/*
 * ctl_bignat_test.c - the real control server and commands (gw_control.c,
 * gw_cmd.c) over a NAT table of 100,000 live sessions, in-process: gwd
 * itself cannot hold that many live UDP flows under this machine's 20,000
 * open-files limit (one socket each), but the table can, and the listing
 * must page through it without stalling the loop. A child process is the
 * client; the parent runs the loop and records its longest turn.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ctl_harness.h"
#include "gateway/gw_control.h"
#include "gateway/gwd.h"

#define SESSIONS 100000

/* Sessions opened from 10.0.0.0/24 (set before the client is forked). */
static int64_t n_in_24;

struct loop_watch {
    ev_prepare prepare;
    ev_check check;
    ev_timer poll_child;
    uint64_t woke_us;    /* when the last poll returned */
    uint64_t longest_us; /* longest turn of callbacks (wall clock) */
    uint64_t woke_cpu_us;
    uint64_t longest_cpu_us; /* longest turn of callbacks (CPU time of this thread) */
    pid_t child;
    int status;
};

static uint64_t cpu_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static void check_cb(struct ev_loop *loop, ev_check *w, int revents)
{
    struct loop_watch *lw = w->data;

    (void)loop;
    (void)revents;
    lw->woke_us = ctl_now_us();
    lw->woke_cpu_us = cpu_us();
}

static void prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct loop_watch *lw = w->data;
    uint64_t now = ctl_now_us();

    (void)loop;
    (void)revents;
    uint64_t cpu = cpu_us();

    if (lw->woke_us && now - lw->woke_us > lw->longest_us)
        lw->longest_us = now - lw->woke_us;
    if (lw->woke_cpu_us && cpu - lw->woke_cpu_us > lw->longest_cpu_us)
        lw->longest_cpu_us = cpu - lw->woke_cpu_us;
}

static void child_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct loop_watch *lw = w->data;

    (void)revents;
    if (waitpid(lw->child, &lw->status, WNOHANG) == lw->child) {
        lw->child = 0;
        ev_break(loop, EVBREAK_ALL);
    }
}

/* The client: pages through everything, then a sorted window and top clients. */
static int client(const char *path)
{
    int fd = ctl_connect(path);
    int64_t after = 0, rows = 0;
    json_t *r;

    if (fd < 0)
        return 10;
    for (int page = 0; page < 1000; page++) {
        char line[160];
        json_t *s, *arr;
        size_t i;

        snprintf(line, sizeof(line),
                 "{\"id\":%d,\"cmd\":\"show nat\",\"args\":{\"limit\":1000,\"after_id\":%lld}}",
                 page, (long long)after);
        r = ctl_call_raw(fd, line);
        if (!ctl_result(r))
            return 11;
        if (page == 0 && ctl_jint(ctl_result(r), "total") != SESSIONS)
            return 12;
        arr = json_object_get(ctl_result(r), "sessions");
        json_array_foreach(arr, i, s)
        {
            if (ctl_jint(s, "id") <= after)
                return 13;
            after = ctl_jint(s, "id");
            rows++;
        }
        size_t got = json_array_size(arr);
        json_decref(r);
        if (got < 1000)
            break;
    }
    if (rows != SESSIONS)
        return 14;
    /* one request for everything: streamed, 100,000 rows in one reply line */
    r = ctl_call_raw(fd, "{\"cmd\":\"show nat\",\"args\":{\"limit\":1000000}}");
    if (json_array_size(json_object_get(ctl_result(r), "sessions")) != SESSIONS)
        return 15;
    json_decref(r);
    /* sorted: 10 sessions per client IP, the highest is 10.0.39.15 (client 9999):
     * rows 50-149 are the 6th to the 15th IP from the top */
    r = ctl_call_raw(fd, "{\"cmd\":\"show nat\",\"args\":{\"sort\":\"-client\",\"offset\":50,"
                         "\"limit\":100,\"proto\":\"udp\"}}");
    json_t *arr = json_object_get(ctl_result(r), "sessions");
    if (json_array_size(arr) != 100 || ctl_jint(ctl_result(r), "total") != SESSIONS)
        return 16;
    if (strcmp(json_string_value(json_object_get(json_array_get(arr, 0), "client_ip")),
               "10.0.39.10") != 0 ||
        strcmp(json_string_value(json_object_get(json_array_get(arr, 99), "client_ip")),
               "10.0.39.1") != 0)
        return 19;
    json_decref(r);
    /* filtered, a short page: the rest of the table is only counted */
    r = ctl_call_raw(fd, "{\"cmd\":\"show nat\",\"args\":{\"client\":\"10.0.0.0/24\","
                         "\"limit\":10}}");
    if (ctl_jint(ctl_result(r), "total") != n_in_24 ||
        json_array_size(json_object_get(ctl_result(r), "sessions")) != 10)
        return 17;
    json_decref(r);
    r = ctl_call_raw(fd, "{\"cmd\":\"show clients\",\"args\":{\"limit\":5}}");
    if (ctl_jint(ctl_result(r), "sessions") != SESSIONS ||
        json_array_size(json_object_get(ctl_result(r), "clients")) != 5)
        return 18;
    json_decref(r);
    close(fd);
    return 0;
}

Test(ctl_bignat, page_through_100k_sessions_without_stalling_the_loop, .timeout = 600)
{
    struct gw_ctx ctx;
    struct nat_config cfg;
    struct gw_control_opts o;
    struct loop_watch lw;
    char dir[] = "/tmp/ctl-big-XXXXXX", path[64];
    uint64_t t0;
    uint32_t made = 0;

    memset(&ctx, 0, sizeof(ctx));
    TAILQ_INIT(&ctx.backends);
    TAILQ_INIT(&ctx.retired);
    LIST_INIT(&ctx.flows);
    LIST_INIT(&ctx.subscribers);
    ctx.loop = ev_loop_new(EVFLAG_AUTO);
    cr_assert_not_null(ctx.loop);

    /* 64 external addresses x 2000 ports (24000-25999): room for 128,000 */
    nat_config_default(&cfg);
    cfg.n_ips = NAT_MAX_IPS;
    for (unsigned i = 0; i < cfg.n_ips; i++)
        cfg.ips[i] = nat_addr_from_v4(htonl(0x7f000601u + i)); /* 127.0.6.1... */
    cfg.port_lo = 24000;
    cfg.port_hi = 25999;
    cfg.timeout_ms[NAT_TIMEOUT_UDP] = 3600000;
    cr_assert_eq(nat_table_new(&ctx.nat, &cfg), NAT_OK);
    t0 = ctl_now_us();
    for (uint32_t c = 0; made < SESSIONS && c < 2 * SESSIONS; c++) {
        struct nat_key k;
        struct nat_session *s;
        memset(&k, 0, sizeof(k));
        k.proto = NAT_PROTO_UDP;
        k.client.addr = nat_addr_from_v4(htonl(0x0a000000u + c / 10)); /* 10 per client IP */
        k.client.port = (uint16_t)(30000 + c % 10);
        k.dst.addr = nat_addr_from_v4(htonl(0x7f000001u));
        k.dst.port = 9000;
        if (nat_session_open(ctx.nat, &k, 0, 1795796400000ULL + c, &s) == NAT_OK) {
            nat_session_touch(ctx.nat, s, 1795796400000ULL + c, c % 977, c % 1013);
            made++;
            n_in_24 += c / 10 < 256;
        }
        cr_assert_eq(made, c + 1, "session %u opened", c);
    }
    cr_assert_eq(made, SESSIONS);
    cr_assert_eq(n_in_24, 2560);
    fprintf(stderr, "ctl_bignat: %u sessions opened in %.2f s\n", made,
            (double)(ctl_now_us() - t0) / 1e6);

    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/c.sock", dir);
    gw_control_opts_default(&o);
    cr_assert_eq(gw_control_start_opts(&ctx, path, &o), 0);

    memset(&lw, 0, sizeof(lw));
    lw.child = fork();
    cr_assert_geq(lw.child, 0);
    if (lw.child == 0)
        _exit(client(path));
    ev_prepare_init(&lw.prepare, prepare_cb);
    ev_check_init(&lw.check, check_cb);
    ev_timer_init(&lw.poll_child, child_cb, 0.05, 0.05);
    lw.prepare.data = lw.check.data = lw.poll_child.data = &lw;
    ev_prepare_start(ctx.loop, &lw.prepare);
    ev_check_start(ctx.loop, &lw.check);
    ev_timer_start(ctx.loop, &lw.poll_child);
    t0 = ctl_now_us();
    uint64_t cpu0 = cpu_us();
    ev_run(ctx.loop, 0);
    fprintf(stderr,
            "ctl_bignat: client done in %.2f s (gwd loop CPU %.2f s); longest loop turn "
            "%.1f ms CPU, %.1f ms wall (paging 100,000 sessions, one 100,000-row reply, a "
            "sorted window, top clients)\n",
            (double)(ctl_now_us() - t0) / 1e6, (double)(cpu_us() - cpu0) / 1e6,
            (double)lw.longest_cpu_us / 1000.0, (double)lw.longest_us / 1000.0);
    cr_assert(WIFEXITED(lw.status), "the client exited");
    cr_assert_eq(WEXITSTATUS(lw.status), 0, "client check %d failed", WEXITSTATUS(lw.status));
    /* generous (CPU time, so a busy machine does not count): a step is one scan */
    cr_assert_lt(lw.longest_cpu_us, 250000, "longest loop turn %llu us CPU",
                 (unsigned long long)lw.longest_cpu_us);

    ev_prepare_stop(ctx.loop, &lw.prepare);
    ev_check_stop(ctx.loop, &lw.check);
    ev_timer_stop(ctx.loop, &lw.poll_child);
    gw_control_stop(&ctx);
    nat_table_free(ctx.nat);
    ev_loop_destroy(ctx.loop);
    rmdir(dir);
}
