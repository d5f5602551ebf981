/*
 * ctl_load_test.c - the control socket under load, against a real gwd: many
 * thousands of live UDP sessions listed with paging (by gwctl and by raw
 * clients, many at once), while the latency of forwarded traffic is measured
 * against the same measure with an idle control socket.
 *
 * Why not 100,000 sessions: every UDP session in gwd holds its own upstream
 * socket, and this machine's open-files limit is 20,000 (hard; DESIGN.md),
 * so one gwd holds at most about 19,000 live UDP sessions. The test uses as
 * many as the limit allows, up to CTL_LOAD_MAX (10,000 under ASan, 18,000
 * otherwise). The listing code itself is exercised with 100,000 sessions in
 * ctl_bignat (in-process NAT table).
 *
 * NAT pool: ports 25000-25999 on 40 addresses (127.0.0.1, 127.0.4.1-39). A
 * client IP keeps one external IP (paired pooling) chosen at random among
 * those with room, so the load comes from 20 ports on each of 900 client
 * addresses (127.0.5.1 and up): no external IP can fill up by chance.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ctl_harness.h"

/*
 * Under ASan (gcc defines __SANITIZE_ADDRESS__, clang has the feature test)
 * every step of gwd and of this test costs several times more, and listing
 * by id pages costs O(n) per page: fewer sessions keep the test within a
 * minute there (still thousands, every check the same).
 */
#if defined(__SANITIZE_ADDRESS__)
#define CTL_LOAD_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CTL_LOAD_ASAN 1
#endif
#endif
#ifdef CTL_LOAD_ASAN
#define CTL_LOAD_MAX 10000
#else
#define CTL_LOAD_MAX 18000
#endif
#define PROBES 400

static struct ctl_echo echo;
static struct ctl_gwd gwd;
static char ubackend[64];

static void stop(void)
{
    ctl_gwd_stop(&gwd);
    ctl_echo_stop(&echo);
}

/* Prints how long the phase that ends here took (for the log: where the
 * test's time goes). */
static void phase_done(const char *what)
{
    static uint64_t last;
    uint64_t now = ctl_now_us();

    if (last)
        fprintf(stderr, "ctl_load: %s: %.1f s\n", what, (double)(now - last) / 1e6);
    last = now;
}

static int64_t live_sessions(void)
{
    json_t *r = ctl_call_path(gwd.sock, "{\"cmd\":\"show stats\"}");
    int64_t n = ctl_jint(ctl_result(r), "flows.live");

    json_decref(r);
    return n;
}

#define PER_CLIENT 20

/* Sends one datagram from client endpoint number i to gwd. */
static int send_from(int i)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(gwd.port)};
    int c = i / PER_CLIENT;
    char ip[32];
    int fd, rc;

    snprintf(ip, sizeof(ip), "127.0.%d.%d", 5 + c / 250, 1 + c % 250);
    fd = ctl_udp_socket(ip, (uint16_t)(40000 + i % PER_CLIENT), 100);
    if (fd < 0)
        return -1;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    rc = sendto(fd, "x", 1, 0, (struct sockaddr *)&sa, sizeof(sa)) == 1 ? 0 : -1;
    close(fd);
    return rc;
}

/* Opens n sessions in batches, each batch re-sent until gwd has it (bounded). */
static int64_t open_sessions(int n)
{
    int64_t have = live_sessions();

    for (int start = 0; start < n; start += 500) {
        int end = start + 500 < n ? start + 500 : n;
        for (int attempt = 0; attempt < 5; attempt++) {
            int64_t before = have;
            for (int i = start; i < end; i++)
                send_from(i);
            for (int w = 0; w < 50 && (have = live_sessions()) < end + 1; w++)
                usleep(20000);
            if (have >= end + 1 || have == before)
                break;
        }
    }
    return have;
}

/* Pages through show nat (after_id, `page` rows) on fd. Returns rows seen, or
 * -1; checks ids increase and each page's total. */
static int64_t list_all(int fd, int page, int64_t *total_out)
{
    int64_t after = 0, rows = 0, total = -1;

    for (int pages = 0; pages < 100000; pages++) {
        char line[160];
        json_t *r, *arr, *s;
        size_t i;

        snprintf(line, sizeof(line),
                 "{\"id\":%d,\"cmd\":\"show nat\",\"args\":{\"limit\":%d,\"after_id\":%lld}}",
                 pages, page, (long long)after);
        r = ctl_call_raw(fd, line);
        if (!ctl_result(r)) {
            json_decref(r);
            return -1;
        }
        if (total < 0)
            total = ctl_jint(ctl_result(r), "total");
        arr = json_object_get(ctl_result(r), "sessions");
        json_array_foreach(arr, i, s)
        {
            int64_t id = ctl_jint(s, "id");
            if (id <= after) {
                json_decref(r);
                return -1;
            }
            after = id;
            rows++;
        }
        size_t got = json_array_size(arr);
        json_decref(r);
        if (got < (size_t)page)
            break;
    }
    if (total_out)
        *total_out = total;
    return rows;
}

/* Like list_all, without parsing the JSON (the lister must cost little CPU
 * itself: the machine has two cores): rows are counted by their "{"id":". */
static int64_t list_all_light(int fd, int page, int pause_us)
{
    int64_t after = 0, rows = 0;

    for (int pages = 0; pages < 100000; pages++) {
        char req[160], *line, *p, *last = NULL;
        int64_t got = 0;

        snprintf(req, sizeof(req),
                 "{\"cmd\":\"show nat\",\"args\":{\"limit\":%d,\"after_id\":%lld}}\n", page,
                 (long long)after);
        if (ctl_send_all(fd, req, strlen(req)) < 0)
            return -1;
        line = ctl_read_line(fd, 60000, 64u << 20);
        if (!line || !strstr(line, "\"ok\":true"))
            return -1;
        p = strstr(line, "\"sessions\":[");
        for (; p && (p = strstr(p, "{\"id\":")); p += 6) {
            last = p;
            got++;
        }
        if (last)
            after = strtoll(last + 6, NULL, 10);
        free(line);
        rows += got;
        if (got < page)
            break;
        if (pause_us)
            usleep((useconds_t)pause_us);
    }
    return rows;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return (x > y) - (x < y);
}

/* Round trips through gwd from the probe socket; fills rtt[] (µs), sorted. */
static void probe(int fd, uint64_t *rtt, int n)
{
    for (int i = 0; i < n; i++) {
        uint64_t t0 = ctl_now_us();
        cr_assert_eq(ctl_udp_roundtrip(fd, gwd.port, "probe"), 0, "probe %d", i);
        rtt[i] = ctl_now_us() - t0;
        usleep(2000);
    }
    qsort(rtt, (size_t)n, sizeof(*rtt), cmp_u64);
}

Test(ctl_load, many_sessions_listed_while_traffic_flows, .fini = stop, .timeout = 900)
{
    struct rlimit rl;
    const char *args[100];
    char ipargs[40][16], conf[64];
    int na = 0, n, pfd;
    int64_t have, total, rows;
    uint64_t idle[PROBES], busy[PROBES];
    pid_t lister;

    getrlimit(RLIMIT_NOFILE, &rl);
    n = (int)rl.rlim_cur - 1500;
    if (n > CTL_LOAD_MAX)
        n = CTL_LOAD_MAX;
    cr_assert_gt(n, 1000, "open-files limit %llu too low", (unsigned long long)rl.rlim_cur);

    phase_done("start");
    cr_assert_eq(ctl_echo_start(&echo), 0);
    snprintf(ubackend, sizeof(ubackend), "u=127.0.0.1:%u", echo.udp_port);
    /* sessions must outlive the test, also under ASan: a UDP timeout of an hour */
    snprintf(conf, sizeof(conf), "/tmp/ctl-load-%d.json", (int)getpid());
    FILE *cf = fopen(conf, "w");
    cr_assert_not_null(cf);
    fputs("{\"nat\":{\"timeouts\":{\"udp\":3600}}}\n", cf);
    fclose(cf);
    args[na++] = "-c";
    args[na++] = conf;
    args[na++] = "--udp-backend";
    args[na++] = ubackend;
    args[na++] = "--nat-ports";
    args[na++] = "25000-25999";
    args[na++] = "--log-level";
    args[na++] = "warn";
    args[na++] = "--nat-ip";
    args[na++] = "127.0.0.1";
    for (int i = 1; i < 40; i++) {
        snprintf(ipargs[i], sizeof(ipargs[i]), "127.0.4.%d", i);
        args[na++] = "--nat-ip";
        args[na++] = ipargs[i];
    }
    args[na] = NULL;
    cr_assert_eq(ctl_gwd_start(&gwd, args, NULL), 0);
    unlink(conf);
    phase_done("gwd started");

    /* the probe's own session first, then the load */
    pfd = ctl_udp_socket("127.0.0.9", 0, 5000);
    cr_assert_eq(ctl_udp_roundtrip(pfd, gwd.port, "probe"), 0);
    have = open_sessions(n);
    {
        json_t *st = ctl_call_path(gwd.sock, "{\"cmd\":\"show stats\"}");
        char *refused = json_dumps(
            json_object_get(json_object_get(ctl_result(st), "mappings"), "refused"), JSON_COMPACT);
        fprintf(stderr, "ctl_load: %lld live UDP sessions of %d sent (+1 probe); refused %s\n",
                (long long)have - 1, n, refused);
        free(refused);
        json_decref(st);
    }
    /* a few datagrams may be lost on the way in (socket buffers): what matters is
     * that the listing below shows exactly what is live */
    cr_assert_geq(have, n + 1 - n / 100, "%lld live sessions, wanted %d", (long long)have, n + 1);
    int sent = n;
    n = (int)have - 1;
    phase_done("sessions opened");

    /* every session listed once, in id order, 1000 per page */
    int fd = ctl_connect(gwd.sock);
    rows = list_all(fd, 1000, &total);
    cr_assert_eq(total, n + 1);
    cr_assert_eq(rows, n + 1);
    close(fd);
    phase_done("listed by pages");

    /* gwctl's table: header, a row per session, the footer */
    {
        const char *gargs[] = {"--socket", gwd.sock, "show", "nat", NULL};
        char *out, *err, want[64];
        int lines = 0;
        uint64_t t0 = ctl_now_us();
        cr_assert_eq(ctl_run_gwctl(gargs, NULL, &out, &err), 0, "%s", err);
        fprintf(stderr, "ctl_load: gwctl show nat of %d sessions took %.2f s\n", n + 1,
                (double)(ctl_now_us() - t0) / 1e6);
        for (char *p = out; *p; p++)
            lines += *p == '\n';
        cr_assert_eq(lines, n + 1 + 2);
        snprintf(want, sizeof(want), "\n%d sessions\n", n + 1);
        cr_assert_not_null(strstr(out, want));
        free(out);
        free(err);
    }
    phase_done("gwctl show nat");

    /* sorted window and top clients */
    {
        json_t *r =
            ctl_call_path(gwd.sock, "{\"cmd\":\"show nat\",\"args\":{\"sort\":\"-last_seen\","
                                    "\"limit\":100}}");
        cr_assert_eq(json_array_size(json_object_get(ctl_result(r), "sessions")), 100);
        cr_assert_eq(ctl_jint(ctl_result(r), "total"), n + 1);
        json_decref(r);
        r = ctl_call_path(gwd.sock, "{\"cmd\":\"show clients\",\"args\":{\"limit\":3}}");
        cr_assert_eq(ctl_jint(ctl_result(r), "sessions"), n + 1);
        cr_assert_eq(ctl_jint(ctl_result(r), "total"), (sent + PER_CLIENT - 1) / PER_CLIENT + 1);
        cr_assert_eq(json_array_size(json_object_get(ctl_result(r), "clients")), 3);
        json_decref(r);
    }
    phase_done("sorted window, top clients");

    /* many control clients listing everything at once */
    {
        enum { K = 12 };
        pid_t kids[K];
        for (int k = 0; k < K; k++) {
            kids[k] = fork();
            cr_assert_geq(kids[k], 0);
            if (kids[k] == 0) {
                int cfd = ctl_connect(gwd.sock);
                int64_t t = 0, r = list_all(cfd, 500 + 100 * k, &t);
                _exit(r == n + 1 && t == n + 1 ? 0 : 1);
            }
        }
        for (int k = 0; k < K; k++) {
            int status;
            waitpid(kids[k], &status, 0);
            cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "lister %d", k);
        }
    }
    phase_done("12 listers at once");

    /* forwarded-traffic latency: idle control socket, then while a client lists all */
    probe(pfd, idle, PROBES);
    phase_done("idle probes");
    lister = fork();
    cr_assert_geq(lister, 0);
    if (lister == 0) {
        int cfd = ctl_connect(gwd.sock);
        uint64_t t0 = ctl_now_us();
        while (ctl_now_us() - t0 < 300000000) {
            if (list_all_light(cfd, 1000, 0) != n + 1)
                _exit(1);
        }
        _exit(0);
    }
    usleep(200000);
    probe(pfd, busy, PROBES);
    cr_assert_eq(waitpid(lister, NULL, WNOHANG), 0, "the lister listed all along");
    kill(lister, SIGKILL);
    waitpid(lister, NULL, 0);
    phase_done("busy probes");
    double r50 = (double)busy[PROBES / 2] / (double)idle[PROBES / 2];
    double r90 = (double)busy[PROBES * 9 / 10] / (double)idle[PROBES * 9 / 10];
    fprintf(stderr,
            "ctl_load: forwarded UDP round trip, idle control: p50 %llu us p90 %llu us; "
            "while listing %d sessions nonstop: p50 %llu us p90 %llu us (ratio p50 %.2f, "
            "p90 %.2f)\n",
            (unsigned long long)idle[PROBES / 2], (unsigned long long)idle[PROBES * 9 / 10], n + 1,
            (unsigned long long)busy[PROBES / 2], (unsigned long long)busy[PROBES * 9 / 10], r50,
            r90);
    /* generous: a listing runs in steps of at most 256 rows between packets, but
     * the lister runs nonstop and the machine has two cores shared with the echo
     * server, this test and whatever else runs: the figure is noisy (1.5 to 17
     * seen in release builds, 13 under ASan). A design that built a whole
     * listing in one loop turn would stall ~20 ms per listing here and fail it. */
    cr_assert_lt(r50, 30.0, "p50 latency ratio %.2f", r50);
    close(pfd);
}
