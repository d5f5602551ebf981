/*
 * bench_db - the store's two numbers:
 *   1. hand-over: ns per db_submit() on the data path (target < 200 ns),
 *      timed over bursts that fit in the queue while the writer runs;
 *   2. persisted: events per second from the first db_submit() until
 *      db_flush() returns, i.e. committed to the file (target >= 200,000/s).
 * The workload is gwd's: each session is an open event then a close event.
 *
 * usage: bench_db [-n EVENTS] [-q QUEUE] [-b BATCH] [-c CACHE_KIB] [-d DIR] [-k] [-w]
 *                 [-r EVENTS_PER_S [-t SECONDS] [-p PREFILL] [-H HOLD_MS]]
 *                 [-m FLOWS]
 *   -k keeps the second store (to time queries on it) and prints its path.
 *   -w times db_whois() on the second store (random ports and times).
 *   -r paced mode: a store pre-filled with PREFILL events (default 1000000)
 *      at full speed, then EVENTS_PER_S submitted evenly (1 ms ticks, times
 *      from the wall clock, each session closed HOLD_MS after its open, as
 *      gwd's short connections) for SECONDS (default 10); reports the CPU of
 *      the store's own threads (writer + checkpointer) per event and the
 *      bytes they wrote, i.e. the steady-state cost gwd pays.
 *   -f sets db_options.flush_ms (how long the writer lets a batch gather).
 *   -x runs SQL on the writer's connection before the workload (ablations,
 *      e.g. -x 'DROP INDEX nat_sessions_opened').
 *   -L the log of gwd's nat.log "blocks": sessions rows only, no per-flow
 *      log rows (the events are still submitted, as gwd does).
 *   -m idle memory: FLOWS sessions opened (at -r events/s, default at once),
 *      then held; private memory (smaps_rollup) before, after the writer
 *      committed them, and after 2 s idle, per flow.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "db/db.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct nat_addr v4(uint32_t host_order)
{
    struct nat_addr a;
    memset(&a, 0, sizeof(a));
    a.b[10] = 0xff;
    a.b[11] = 0xff;
    a.b[12] = (uint8_t)(host_order >> 24);
    a.b[13] = (uint8_t)(host_order >> 16);
    a.b[14] = (uint8_t)(host_order >> 8);
    a.b[15] = (uint8_t)host_order;
    return a;
}

/* Event i of the workload: session i/2, open then close. */
static void make_event(struct nat_event *ev, uint64_t i, uint64_t t0)
{
    uint64_t id = i / 2 + 1;
    memset(ev, 0, sizeof(*ev));
    ev->type = i % 2 == 0 ? NAT_EV_OPEN : NAT_EV_CLOSE;
    ev->time = t0 + i;
    ev->reason = i % 2 == 0 ? NULL : "client_fin";
    ev->s.id = id;
    ev->s.key.proto = id % 4 == 0 ? NAT_PROTO_UDP : NAT_PROTO_TCP;
    ev->s.key.client.addr = v4(0x0a000000u + (uint32_t)(id % 65000));
    ev->s.key.client.port = (uint16_t)(1024 + id % 60000);
    ev->s.key.dst.addr = v4(0x0a090001u);
    ev->s.key.dst.port = 80;
    ev->s.ext.addr = v4(0xc0000201u);
    ev->s.ext.port = (uint16_t)(20000 + id % 12768);
    ev->s.opened_at = t0 + i - i % 2;
    ev->s.last_seen = t0 + i;
    ev->s.bytes_in = id;
    ev->s.bytes_out = id * 3;
    ev->s.state = i % 2 == 0 ? NAT_STATE_NEW : NAT_STATE_CLOSED;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void nap_us(long us)
{
    struct timespec ts = {0, us * 1000};
    nanosleep(&ts, NULL);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void print_machine(void)
{
    struct utsname u;
    char line[256], model[256] = "?";
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "model name", 10) == 0) {
            char *p = strchr(line, ':');
            snprintf(model, sizeof(model), "%s", p != NULL ? p + 2 : line);
            model[strcspn(model, "\n")] = '\0';
            break;
        }
    }
    if (f != NULL)
        fclose(f);
    uname(&u);
    printf("machine: %s %s, %ld cpus, %s, sqlite %s\n", u.sysname, u.release,
           sysconf(_SC_NPROCESSORS_ONLN), model, sqlite3_libversion());
}

/* CPU time (ns) of every thread of this process but the calling (main)
 * one: the store's writer and checkpointer. From /proc/self/task/TID/schedstat
 * (ns), or 0 when not readable. */
static uint64_t store_threads_cpu_ns(void)
{
    uint64_t sum = 0;
    char p[300];
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    long self = (long)getpid();
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || strtol(e->d_name, NULL, 10) == self)
            continue;
        snprintf(p, sizeof(p), "/proc/self/task/%s/schedstat", e->d_name);
        FILE *f = fopen(p, "r");
        unsigned long long run = 0;
        if (f != NULL && fscanf(f, "%llu", &run) == 1)
            sum += run;
        if (f != NULL)
            fclose(f);
    }
    if (d != NULL)
        closedir(d);
    return sum;
}

/* Bytes this process handed to write()/pwrite() so far (/proc/self/io wchar). */
static uint64_t io_wchar(void)
{
    char line[128];
    unsigned long long v = 0;
    FILE *f = fopen("/proc/self/io", "r");
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "wchar: %llu", &v) == 1)
            break;
    if (f != NULL)
        fclose(f);
    return v;
}

/* Private memory (Private_Clean + Private_Dirty of smaps_rollup), KiB. */
static long private_kib(void)
{
    char line[128];
    long sum = 0, v;
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "Private_Clean: %ld", &v) == 1 ||
            sscanf(line, "Private_Dirty: %ld", &v) == 1)
            sum += v;
    if (f != NULL)
        fclose(f);
    return sum;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Session `id` as gwd's short TCP connections: open or close at time t. */
static void make_session_event(struct nat_event *ev, uint64_t id, bool open, uint64_t opened,
                               uint64_t t)
{
    make_event(ev, (id - 1) * 2 + (open ? 0 : 1), 0);
    ev->time = t;
    ev->s.opened_at = opened;
    ev->s.last_seen = t;
}

static void submit_retry(struct db *db, const struct nat_event *ev, uint64_t *full)
{
    while (db_submit(db, ev, "web") == -ENOBUFS) {
        (*full)++;
        nap_us(200);
    }
}

/* Sleeps until CLOCK_MONOTONIC reaches `at` seconds. */
static void sleep_until(double at)
{
    struct timespec ts;
    ts.tv_sec = (time_t)at;
    ts.tv_nsec = (long)((at - (double)ts.tv_sec) * 1e9);
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

/* -r: the steady cost at gwd's rates. */
static void run_paced(struct db *db, uint64_t prefill, double rate, double secs, unsigned hold)
{
    struct nat_event ev;
    uint64_t full = 0;
    const uint64_t t0 = wall_ms() - prefill - 1000;
    double a = now_s();
    for (uint64_t i = 0; i < prefill; i++) {
        make_event(&ev, i, t0);
        submit_retry(db, &ev, &full);
    }
    db_flush(db);
    printf("prefill: %llu events in %.2f s\n", (unsigned long long)prefill, now_s() - a);
    sleep_until(now_s() + 2.0); /* let the checkpointer settle */

    /* Sessions opened at tick j: [first[j % H], first[j % H] + count[j % H]). */
    unsigned slots = hold + 1;
    uint64_t *first = calloc(slots, sizeof(*first));
    uint64_t *count = calloc(slots, sizeof(*count));
    uint64_t id = prefill / 2 + 1, events = 0;
    double acc = 0;
    struct db_stats s0, s1;
    db_get_stats(db, &s0);
    uint64_t cpu0 = store_threads_cpu_ns(), io0 = io_wchar();
    double start = now_s(), pcpu0 = cpu_s();
    uint64_t ticks = (uint64_t)(secs * 1000);
    for (uint64_t j = 0; j < ticks; j++) {
        sleep_until(start + (double)j / 1000.0);
        uint64_t t = wall_ms();
        /* Close the sessions opened `hold` ticks ago (in this slot). */
        unsigned k = (unsigned)(j % slots);
        for (uint64_t x = 0; x < count[k]; x++) {
            make_session_event(&ev, first[k] + x, false, t - hold, t);
            submit_retry(db, &ev, &full);
            events++;
        }
        acc += rate / 2000.0; /* sessions per tick */
        count[k] = (uint64_t)acc;
        acc -= (double)count[k];
        first[k] = id;
        for (uint64_t x = 0; x < count[k]; x++) {
            make_session_event(&ev, id++, true, t, t);
            submit_retry(db, &ev, &full);
            events++;
        }
    }
    double took = now_s() - start;
    db_flush(db);
    sleep_until(now_s() + 0.5); /* the checkpointer's share */
    uint64_t cpu1 = store_threads_cpu_ns(), io1 = io_wchar();
    double pcpu = cpu_s() - pcpu0;
    db_get_stats(db, &s1);
    uint64_t written = s1.written - s0.written;
    printf("paced: %.0f events/s asked, %llu events in %.2f s (%.0f/s), %llu written, %llu "
           "transactions (%.0f/s), %llu full-queue retries, hold %u ms\n",
           rate, (unsigned long long)events, took, (double)events / took,
           (unsigned long long)written, (unsigned long long)(s1.batches - s0.batches),
           (double)(s1.batches - s0.batches) / took, (unsigned long long)full, hold);
    printf("paced cost: store threads %.3f s CPU = %.2f us/event = %.2f us/session (%.1f%% of a "
           "core); written to files %.0f bytes/event; whole process %.2f us/event\n",
           (double)(cpu1 - cpu0) / 1e9, (double)(cpu1 - cpu0) / 1e3 / (double)written,
           2.0 * (double)(cpu1 - cpu0) / 1e3 / (double)written,
           100.0 * (double)(cpu1 - cpu0) / 1e9 / took, (double)(io1 - io0) / (double)written,
           pcpu * 1e6 / (double)written);
    free(first);
    free(count);
}

/* -m: the store's memory per idle flow. */
static void run_memory(struct db *db, uint64_t flows, double rate)
{
    struct nat_event ev;
    uint64_t full = 0;
    long m0 = private_kib();
    uint64_t t = wall_ms();
    double start = now_s();
    for (uint64_t i = 0; i < flows; i++) {
        if (rate > 0)
            sleep_until(start + (double)i / rate);
        make_session_event(&ev, i + 1, true, t + i, t + i);
        submit_retry(db, &ev, &full);
    }
    db_flush(db);
    long m1 = private_kib();
    sleep_until(now_s() + 2.0);
    long m2 = private_kib();
    printf("memory: %llu flows opened; private %ld KiB before, %ld after the commit (%+.0f "
           "bytes/flow), %ld after 2 s idle (%+.0f bytes/flow)\n",
           (unsigned long long)flows, m0, m1, (double)(m1 - m0) * 1024 / (double)flows, m2,
           (double)(m2 - m0) * 1024 / (double)flows);
}

/* -w: db_whois() on a store of n events (made by make_event). */
static void run_whois(const char *path, uint64_t n, uint64_t t0)
{
    struct db_reader *r = NULL;
    char err[512];
    struct db_session_row rows[8];
    double us[2000];
    uint64_t found = 0;
    if (db_reader_open(&r, path, err, sizeof(err)) != 0) {
        fprintf(stderr, "bench_db: %s\n", err);
        return;
    }
    struct nat_addr ip = v4(0xc0000201u);
    srand(7);
    int q = (int)(sizeof(us) / sizeof(us[0]));
    for (int i = 0; i < q; i++) {
        uint64_t ev = ((uint64_t)rand() * RAND_MAX + (uint64_t)rand()) % n;
        uint64_t id = ev / 2 + 1;
        uint16_t port = (uint16_t)(20000 + id % 12768);
        double a = now_s();
        int k = db_whois(r, 0, &ip, port, t0 + ev, rows, 8);
        us[i] = (now_s() - a) * 1e6;
        found += k > 0 ? (uint64_t)k : 0;
    }
    qsort(us, (size_t)q, sizeof(us[0]), cmp_double);
    printf("whois: %d queries on %llu sessions, median %.0f us, p90 %.0f, p99 %.0f, max %.0f; "
           "%llu holders found\n",
           q, (unsigned long long)(n / 2), us[q / 2], us[q * 9 / 10], us[q * 99 / 100], us[q - 1],
           (unsigned long long)found);
    db_reader_close(r);
}

static int flush_ms = -1;            /* -f: db_options.flush_ms; -1 = the default */
static bool log_blocks = false;      /* -L: log "blocks" (no per-flow log rows) */
static const char *setup_sql = NULL; /* -x: SQL run on the writer's connection first */

static struct db *open_store(const char *path, uint32_t queue, uint32_t batch, uint32_t cache)
{
    struct db_options o;
    struct db *db = NULL;
    char err[512];
    db_options_default(&o);
    o.path = path;
    o.queue_capacity = queue;
    o.batch_max = batch;
    o.cache_kib = cache;
    o.retention_ms = 0;
    if (flush_ms >= 0)
        o.flush_ms = (uint32_t)flush_ms;
    o.log_flows = !log_blocks;
    if (db_open(&db, &o, err, sizeof(err)) != 0) {
        fprintf(stderr, "bench_db: %s\n", err);
        exit(1);
    }
    if (setup_sql != NULL && db_writer_exec(db, setup_sql, err, sizeof(err)) != 0) {
        fprintf(stderr, "bench_db: -x: %s\n", err);
        exit(1);
    }
    return db;
}

int main(int argc, char **argv)
{
    uint64_t n = 1000000;
    struct db_options defaults;
    db_options_default(&defaults);
    uint32_t queue = defaults.queue_capacity, batch = defaults.batch_max;
    uint32_t cache = defaults.cache_kib;
    const char *dir_arg = NULL;
    bool keep = false, whois = false;
    double rate = 0, secs = 10;
    uint64_t prefill = 1000000, flows = 0;
    unsigned hold = 1;
    int c;

    while ((c = getopt(argc, argv, "n:q:b:c:d:kwr:t:p:H:m:f:x:Lh")) != -1) {
        switch (c) {
        case 'n':
            n = strtoull(optarg, NULL, 10);
            break;
        case 'q':
            queue = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'b':
            batch = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'c':
            cache = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'd':
            dir_arg = optarg;
            break;
        case 'k':
            keep = true;
            break;
        case 'w':
            whois = true;
            break;
        case 'r':
            rate = strtod(optarg, NULL);
            break;
        case 't':
            secs = strtod(optarg, NULL);
            break;
        case 'p':
            prefill = strtoull(optarg, NULL, 10) & ~1ULL;
            break;
        case 'H':
            hold = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'm':
            flows = strtoull(optarg, NULL, 10);
            break;
        case 'f':
            flush_ms = atoi(optarg);
            break;
        case 'x':
            setup_sql = optarg;
            break;
        case 'L':
            log_blocks = true;
            break;
        default:
            fprintf(stderr,
                    "usage: bench_db [-n EVENTS] [-q QUEUE] [-b BATCH] [-c CACHE_KIB] [-d DIR] "
                    "[-k] [-w]\n"
                    "                [-r EVENTS_PER_S [-t SECONDS] [-p PREFILL] [-H HOLD_MS]] "
                    "[-m FLOWS] [-f FLUSH_MS] [-x SQL] [-L]\n");
            return 2;
        }
    }
    char dir[256], path[300];
    snprintf(dir, sizeof(dir), "%s/bench_db-XXXXXX", dir_arg != NULL ? dir_arg : "/tmp");
    if (mkdtemp(dir) == NULL) {
        perror("bench_db: mkdtemp");
        return 1;
    }
    snprintf(path, sizeof(path), "%s/gw.db", dir);
    print_machine();
    printf("store: %s, queue %u, batch %u, cache %u KiB, %llu events (open+close pairs)\n", path,
           queue, batch, cache, (unsigned long long)n);

    if (flows > 0 || rate > 0) {
        struct db *pdb = open_store(path, queue, batch, cache);
        if (flows > 0)
            run_memory(pdb, flows, rate);
        else
            run_paced(pdb, prefill, rate, secs, hold);
        db_close(pdb);
        static const char *const sfx[] = {"-wal", "-shm", ""};
        for (int i = 0; i < 3; i++) {
            char p[320];
            snprintf(p, sizeof(p), "%s%s", path, sfx[i]);
            unlink(p);
        }
        rmdir(dir);
        return 0;
    }

    const uint64_t t0 = 1795795200000ULL;
    struct nat_event *evs = malloc(sizeof(*evs) * 4096);
    if (evs == NULL)
        return 1;
    for (uint64_t i = 0; i < 4096; i++)
        make_event(&evs[i], i, t0);

    /* 1. Hand-over cost: bursts of half the queue, flushed between bursts;
     * the median burst is reported (this machine is shared: outliers are
     * preemptions, not the queue). */
    struct db *db = open_store(path, queue, batch, cache);
    uint64_t burst = queue / 2, done = 0, refused = 0;
    double per[20];
    int rounds = 0;
    for (; rounds < 20 && done < n; rounds++) {
        double a = now_s();
        for (uint64_t i = 0; i < burst; i++) {
            struct nat_event *ev = &evs[(done + i) & 4095];
            refused += db_submit(db, ev, "web") != 0;
        }
        per[rounds] = (now_s() - a) * 1e9 / (double)burst;
        done += burst;
        db_flush(db);
    }
    qsort(per, (size_t)rounds, sizeof(per[0]), cmp_double);
    printf("hand-over: median %.1f ns/event, best %.1f, worst %.1f, over %d bursts of %llu "
           "db_submit calls (%llu refused)\n",
           per[rounds / 2], per[0], per[rounds - 1], rounds, (unsigned long long)burst,
           (unsigned long long)refused);
    db_close(db);
    unlink(path);
    snprintf(path + strlen(path), sizeof(path) - strlen(path), "-wal");
    unlink(path);
    path[strlen(path) - 4] = '\0';

    /* 2. Persisted events per second, into a fresh file. */
    db = open_store(path, queue, batch, cache);
    struct nat_event ev;
    uint64_t full = 0;
    double a = now_s(), cpu_a = cpu_s();
    for (uint64_t i = 0; i < n; i++) {
        make_event(&ev, i, t0);
        while (db_submit(db, &ev, "web") == -ENOBUFS) {
            full++;
            nap_us(200); /* leave the CPU to the writer */
        }
    }
    double submitted = now_s() - a;
    int rc = db_flush(db);
    double total = now_s() - a;
    double cpu = cpu_s() - cpu_a;
    struct db_stats st;
    db_get_stats(db, &st);
    printf("persisted: %.0f events/s (%llu events committed in %.2f s, %llu transactions, "
           "flush %d; producer done after %.2f s, %llu full-queue retries)\n",
           (double)st.written / total, (unsigned long long)st.written, total,
           (unsigned long long)st.batches, rc, submitted, (unsigned long long)full);
    printf("transactions: longest %u ms (the writer sizes batches to keep commits < 100 ms "
           "apart under load)\n",
           st.max_txn_ms);
    printf("cpu: %.2f s for producer + writer + checkpointer, %.2f us/event, i.e. %.0f events "
           "per CPU-second\n",
           cpu, cpu * 1e6 / (double)st.written, (double)st.written / cpu);
    db_close(db);
    if (whois)
        run_whois(path, n, t0);
    if (keep) {
        printf("kept: %s\n", path);
        free(evs);
        return 0;
    }

    snprintf(path + strlen(path), sizeof(path) - strlen(path), "-wal");
    unlink(path);
    path[strlen(path) - 4] = '\0';
    snprintf(path + strlen(path), sizeof(path) - strlen(path), "-shm");
    unlink(path);
    path[strlen(path) - 4] = '\0';
    unlink(path);
    rmdir(dir);
    free(evs);
    return 0;
}
