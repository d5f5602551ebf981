/*
 * sim_backend_faults_test.c - `gwsim backend` and `gwsim clients` where they
 * meet limits: the backend out of file descriptors (accepts pause instead of
 * spinning, and resume), HTTP paths as long as the head allows and in UTF-8
 * (returned byte for byte), and `gwsim clients` refusing zero timeouts.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "sim/sim_clients.h"
#include "sim/sim_proc.h"
#include "sim/sim_util.h"
#include "sim_test_io.h"

#define HELD 20 /* connections held open against a backend that can take a few */

/* The backend of the running test and its stderr file, stopped and removed by
 * the .fini fixture even when an assertion failed half-way (by PID). */
static struct sim_proc proc;
static char errpath[64];

static void teardown(void)
{
    if (proc.pid > 0)
        sim_proc_stop(&proc, 3000);
    if (errpath[0] != '\0')
        unlink(errpath);
    errpath[0] = '\0';
}

/* Starts `gwsim backend --name t1 --tcp` on the first free port of 42100-42199
 * with stderr into errpath; returns the port. */
static unsigned start_backend(void)
{
    char port[16];
    char *argv[] = {GWSIM_PATH, "backend", "--name", "t1", "--tcp", "--port", port, NULL};
    unsigned tcp = 0, udp;
    int fd;

    snprintf(errpath, sizeof(errpath), "/tmp/sim_backend_faults.XXXXXX");
    fd = mkstemp(errpath);
    cr_assert_geq(fd, 0);
    close(fd);
    for (unsigned p = 42100; p < 42200 && tcp == 0; p++) {
        snprintf(port, sizeof(port), "%u", p);
        cr_assert_eq(sim_proc_start(&proc, argv, errpath), 0);
        if (sim_proc_wait_line(&proc, "listening", 5000) == 0) {
            cr_assert_eq(sim_parse_listening(proc.ready, &tcp, &udp), 0, "%s", proc.ready);
            break;
        }
        sim_proc_stop(&proc, 3000); /* the port is taken: it exited 1 */
    }
    cr_assert_gt(tcp, 0, "no free port in 42100-42199 for the backend");
    cr_assert_eq(truncate(errpath, 0), 0); /* only this backend's lines */
    return tcp;
}

static int tcp_connect(unsigned port)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {.tv_sec = 5};

    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_geq(fd, 0);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    cr_assert_eq(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0, "connect: %s",
                 strerror(errno));
    return fd;
}

/* Open fds of process pid (from /proc/PID/fd). */
static int count_fds(pid_t pid)
{
    char path[64];
    struct dirent *d;
    DIR *dir;
    int n = 0;

    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    dir = opendir(path);
    cr_assert_not_null(dir, "%s: %s", path, strerror(errno));
    while ((d = readdir(dir)) != NULL)
        if (d->d_name[0] != '.')
            n++;
    closedir(dir);
    return n;
}

/* CPU time of process pid so far, user + system, in seconds (/proc/PID/stat). */
static double cpu_seconds(pid_t pid)
{
    char path[64], buf[1024], *p;
    unsigned long long ut, st;
    FILE *f;
    size_t n;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    f = fopen(path, "r");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* after "(comm) ": state is field 3, utime and stime fields 14 and 15 */
    p = strrchr(buf, ')');
    cr_assert_not_null(p);
    cr_assert_eq(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st),
                 2, "%s", buf);
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* Lines in the backend's stderr so far; the text (up to cap) into buf. */
static int err_lines(char *buf, size_t cap)
{
    FILE *f = fopen(errpath, "r");
    size_t n;
    int lines = 0;
    int ch;

    cr_assert_not_null(f);
    while ((ch = fgetc(f)) != EOF)
        lines += ch == '\n';
    rewind(f);
    n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
    return lines;
}

/* Hello lines waiting on the held connections within wait_ms. */
static int count_hellos(const int *fds, int n, int wait_ms)
{
    struct pollfd pf[HELD];
    int got = 0;

    for (int i = 0; i < n; i++)
        pf[i] = (struct pollfd){.fd = fds[i], .events = POLLIN};
    poll(pf, (nfds_t)n, wait_ms);
    for (int i = 0; i < n; i++)
        got += (pf[i].revents & POLLIN) != 0;
    return got;
}

/*
 * Out of fds, accept() keeps failing while the listener stays readable: the
 * backend must stop watching it (not spin and log in a loop), say so once, and
 * take the waiting connections once fds are free again.
 */
Test(sim_backend_faults, accept_out_of_fds_pauses, .fini = teardown, .timeout = 60)
{
    unsigned port = start_backend();
    struct rlimit rl;
    int fds[HELD], hellos = 0, lines, fd;
    double cpu0, cpu1, t0, deadline;
    char text[4096], line[128];

    /* room for 3 connections beyond what it holds now */
    cr_assert_eq(prlimit(proc.pid, RLIMIT_NOFILE, NULL, &rl), 0, "prlimit: %s", strerror(errno));
    rl.rlim_cur = (rlim_t)count_fds(proc.pid) + 3;
    cr_assert_eq(prlimit(proc.pid, RLIMIT_NOFILE, &rl, NULL), 0, "prlimit: %s", strerror(errno));
    for (int i = 0; i < HELD; i++)
        fds[i] = tcp_connect(port); /* the kernel completes them: the listen queue holds 1024 */
    /* the accepted ones get their hello after the 100 ms probe */
    deadline = sim_now_ms() + 3000;
    while (hellos == 0 && sim_now_ms() < deadline)
        hellos = count_hellos(fds, HELD, 100);
    cr_assert_gt(hellos, 0, "no connection was served");

    cpu0 = cpu_seconds(proc.pid);
    t0 = sim_now_ms();
    usleep(1000000);
    cpu1 = cpu_seconds(proc.pid);
    cr_log_info("backend CPU %.3f s over %.0f ms while out of fds", cpu1 - cpu0,
                sim_now_ms() - t0);
    cr_assert_lt(cpu1 - cpu0, 0.25, "the backend spins: %.2f s CPU in %.0f ms", cpu1 - cpu0,
                 sim_now_ms() - t0);
    hellos = count_hellos(fds, HELD, 0);
    cr_assert(hellos > 0 && hellos < HELD, "%d of %d served: the fd limit did not bite", hellos,
              HELD);
    lines = err_lines(text, sizeof(text));
    cr_assert(lines >= 1 && lines <= 3, "%d lines on stderr: %.500s", lines, text);
    cr_assert(strstr(text, "accept: Too many open files") != NULL, "%s", text);

    for (int i = 0; i < HELD; i++)
        close(fds[i]);
    /* fds are free again: a new connection is served (within the 5 s SO_RCVTIMEO) */
    fd = tcp_connect(port);
    read_line(fd, line, sizeof(line));
    cr_assert(strncmp(line, "gwsim-backend t1 peer=127.0.0.1:", 32) == 0, "got '%s'", line);
    close(fd);
    cr_assert_eq(sim_proc_stop(&proc, 3000), 0, "SIGTERM exits 0");
    lines = err_lines(text, sizeof(text));
    cr_assert_leq(lines, 10, "%d lines on stderr: %.1000s", lines, text);
    cr_assert(strstr(text, "accept_pauses=") != NULL, "%s", text);
}

/* Sends "GET path HTTP/1.1" with a Host header, at most `cut` bytes of it
 * (0 = all), and reads one answer; returns its status code, *body the decoded
 * JSON (caller decrefs), raw the whole answer. */
static int http_get(int fd, const char *path, size_t n, size_t cut, json_t **body, char *raw,
                    size_t rawcap)
{
    size_t reqlen = n + 64, got = 0, head = 0, clen = 0, len;
    char *req = malloc(reqlen);
    const char *cl, *end;
    json_error_t je;
    int status = 0;

    cr_assert_not_null(req);
    memcpy(req, "GET ", 4);
    memcpy(req + 4, path, n);
    len = 4 + n + (size_t)snprintf(req + 4 + n, reqlen - 4 - n, " HTTP/1.1\r\nHost: x\r\n\r\n");
    if (cut > 0 && cut < len)
        len = cut;
    cr_assert_eq(send(fd, req, len, MSG_NOSIGNAL), (ssize_t)len);
    free(req);
    /* the head, then Content-Length bytes; each recv bounded by SO_RCVTIMEO */
    while (got + 1 < rawcap) {
        ssize_t r = recv(fd, raw + got, rawcap - 1 - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
        raw[got] = '\0';
        end = strstr(raw, "\r\n\r\n");
        if (end == NULL)
            continue;
        head = (size_t)(end - raw) + 4;
        cl = strstr(raw, "Content-Length: ");
        cr_assert(cl != NULL && cl < end, "%s", raw);
        clen = strtoul(cl + 16, NULL, 10);
        if (got >= head + clen)
            break;
    }
    raw[got] = '\0';
    cr_assert(head > 0 && got == head + clen, "incomplete answer (%zu bytes): %.300s", got, raw);
    sscanf(raw, "HTTP/1.1 %d", &status);
    *body = json_loadb(raw + head, clen, 0, &je);
    cr_assert_not_null(*body, "not JSON (%s): %.300s", je.text, raw + head);
    return status;
}

/* GETs path and checks that the answer's "path" decodes to want (wlen bytes). */
static void expect_path(int fd, const char *path, size_t n, const char *want, size_t wlen,
                        char *raw, size_t rawcap)
{
    json_t *j;
    json_t *p;

    cr_assert_eq(http_get(fd, path, n, 0, &j, raw, rawcap), 200, "%.300s", raw);
    p = json_object_get(j, "path");
    cr_assert(json_is_string(p), "%.300s", raw);
    cr_assert_eq(json_string_length(p), wlen, "path of %zu bytes came back as %zu", wlen,
                 json_string_length(p));
    cr_assert_arr_eq(json_string_value(p), want, wlen);
    json_decref(j);
}

/*
 * The path comes back whole up to the head limit (16 KiB, then 431), and in
 * UTF-8: valid sequences unchanged, control characters and quotes escaped,
 * each invalid byte U+FFFD.
 */
Test(sim_backend_faults, http_path_long_and_utf8, .fini = teardown, .timeout = 60)
{
    /* the longest request line that fits: "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n" */
    enum { HEAD_MAX = 16384, LONGEST = HEAD_MAX - 4 - 22 };
    unsigned port = start_backend();
    int fd = tcp_connect(port);
    size_t rawcap = 8 * HEAD_MAX;
    char *raw = malloc(rawcap), *path = malloc(HEAD_MAX + 1);
    json_t *j;

    cr_assert(raw != NULL && path != NULL);
    path[0] = '/';
    for (size_t i = 1; i <= HEAD_MAX; i++)
        path[i] = (char)('a' + i % 26);
    expect_path(fd, path, 3000, path, 3000, raw, rawcap);
    expect_path(fd, path, LONGEST, path, LONGEST, raw, rawcap);
    /* valid UTF-8 (2, 3 and 4 bytes) passes unchanged: "/é", "/€", "/😀" */
    expect_path(fd, "/\xc3\xa9", 3, "/\xc3\xa9", 3, raw, rawcap);
    cr_assert(strstr(raw, "\"path\":\"/\xc3\xa9\"") != NULL, "not raw UTF-8: %s", raw);
    expect_path(fd, "/\xe2\x82\xac\xf0\x9f\x98\x80", 8, "/\xe2\x82\xac\xf0\x9f\x98\x80", 8, raw,
                rawcap);
    /* quotes, backslashes and control characters are escaped */
    expect_path(fd, "/\"\\\x01\x7f", 5, "/\"\\\x01\x7f", 5, raw, rawcap);
    cr_assert(strstr(raw, "\"path\":\"/\\\"\\\\\\u0001\\u007f\"") != NULL, "%s", raw);
    /* invalid UTF-8, a byte at a time: a lone 0xff, a cut-short é, an overlong '/',
     * a surrogate, a sequence above U+10FFFF */
    expect_path(fd, "/\xff" "a\xc3", 4, "/\xef\xbf\xbd" "a\xef\xbf\xbd", 8, raw, rawcap);
    cr_assert(strstr(raw, "\"path\":\"/\\ufffda\\ufffd\"") != NULL, "%s", raw);
    expect_path(fd, "/\xc0\xaf\xed\xa0\x80", 6,
                "/\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 16, raw, rawcap);
    expect_path(fd, "/\xf4\x90\x80\x80", 5,
                "/\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 13, raw, rawcap);
    /* one byte more than fits: the 16 KiB read lack the head's last '\n': 431, then a
     * close (that byte is not sent, or the close would be a reset racing the answer) */
    cr_assert_eq(http_get(fd, path, LONGEST + 1, HEAD_MAX, &j, raw, rawcap), 431, "%.300s", raw);
    cr_assert(strstr(raw, "Connection: close") != NULL, "%.300s", raw);
    json_decref(j);
    cr_assert_eq(recv(fd, raw, 1, 0), 0, "closed after the 431");
    close(fd);
    free(raw);
    free(path);
    cr_assert_eq(sim_proc_stop(&proc, 3000), 0);
}

/* Runs gwsim with args, stderr into errbuf; returns the exit code. */
static int run(char **args, char *errbuf, size_t errlen)
{
    char *argv[16], *out = NULL;
    char path[] = "/tmp/sim_backend_faults.XXXXXX";
    int n = 0, st, fd = mkstemp(path);
    struct sim_proc p;
    FILE *f;

    cr_assert_geq(fd, 0);
    close(fd);
    argv[n++] = GWSIM_PATH;
    for (int i = 0; args[i] != NULL && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    cr_assert_eq(sim_proc_start(&p, argv, path), 0);
    st = sim_proc_collect(&p, &out, 1 << 20, 10000);
    free(out);
    errbuf[0] = '\0';
    f = fopen(path, "r");
    if (f != NULL) {
        size_t k = fread(errbuf, 1, errlen - 1, f);
        errbuf[k] = '\0';
        fclose(f);
    }
    unlink(path);
    cr_assert(WIFEXITED(st), "status %d", st);
    return WEXITSTATUS(st);
}

/* A zero --timeout or --io-timeout would fail every flow: a usage error. */
Test(sim_backend_faults, clients_zero_timeouts, .timeout = 60)
{
    char *opts[] = {"--timeout", "--io-timeout"};
    char *vals[] = {"0", "0ms", "0s", "0.5ms"};
    struct sim_clients_opts o;
    char err[1024], want[64];

    for (size_t i = 0; i < 2; i++) {
        for (size_t k = 0; k < sizeof(vals) / sizeof(vals[0]); k++) {
            char *args[] = {"clients", "--gateway", "127.0.0.1:42111", opts[i], vals[k], NULL};
            int rc = run(args, err, sizeof(err));
            snprintf(want, sizeof(want), "%s: '%s': expected a duration from 1ms", opts[i],
                     vals[k]);
            cr_assert_eq(rc, 2, "%s %s -> %d (%s)", opts[i], vals[k], rc, err);
            cr_assert(strstr(err, want) != NULL, "stderr lacks '%s': %s", want, err);
        }
    }
    /* the library call refuses them too (the lab builds its options itself) */
    sim_clients_opts_default(&o);
    o.timeout_ms = 0;
    cr_assert_eq(sim_clients_run(&o, NULL, NULL, NULL), -EINVAL);
    o.timeout_ms = 1000;
    o.io_timeout_ms = 0;
    cr_assert_eq(sim_clients_run(&o, NULL, NULL, NULL), -EINVAL);
}
