/*
 * bench_db - the store's two numbers:
 *   1. hand-over: ns per db_submit() on the data path (target < 200 ns),
 *      timed over bursts that fit in the queue while the writer runs;
 *   2. persisted: events per second from the first db_submit() until
 *      db_flush() returns, i.e. committed to the file (target >= 200,000/s).
 * The workload is gwd's: each session is an open event then a close event.
 *
 * usage: bench_db [-n EVENTS] [-q QUEUE] [-b BATCH] [-c CACHE_KIB] [-d DIR] [-k]
 *   -k keeps the second store (to time queries on it) and prints its path.
 */
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
    if (db_open(&db, &o, err, sizeof(err)) != 0) {
        fprintf(stderr, "bench_db: %s\n", err);
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
    bool keep = false;
    int c;

    while ((c = getopt(argc, argv, "n:q:b:c:d:kh")) != -1) {
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
        default:
            fprintf(stderr,
                    "usage: bench_db [-n EVENTS] [-q QUEUE] [-b BATCH] [-c CACHE_KIB] [-d DIR] "
                    "[-k]\n");
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
