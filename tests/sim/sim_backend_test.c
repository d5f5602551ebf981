/*
 * sim_backend_test.c - `gwsim backend` as a real process on loopback: the
 * ready line, the hello line with the peer it saw, byte-exact echo (whole
 * and byte by byte), HTTP keep-alive JSON, UDP replies, TCP and UDP served
 * by two processes on one port number, the fault flags, SIGTERM.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sim/sim_proc.h"
#include "sim/sim_util.h"
#include "sim_test_io.h"

/* Processes of the running test, stopped by the .fini fixture even when an
 * assertion failed half-way (by PID, only those still running). */
static struct sim_proc procs[2];
static int n_procs;

static void teardown(void)
{
    for (int i = 0; i < n_procs; i++)
        if (procs[i].pid > 0)
            sim_proc_stop(&procs[i], 3000);
    n_procs = 0;
}

static struct sim_proc *start_backend(unsigned *tcp, unsigned *udp, char *a1, char *a2, char *a3,
                                      char *a4)
{
    char *argv[] = {GWSIM_PATH, "backend", "--name", "t1", a1, a2, a3, a4, NULL};
    struct sim_proc *p = &procs[n_procs++];

    cr_assert_eq(sim_proc_start(p, argv, NULL), 0);
    cr_assert_eq(sim_proc_wait_line(p, "listening", 5000), 0, "backend did not get ready");
    cr_assert_eq(sim_parse_listening(p->ready, tcp, udp), 0, "%s", p->ready);
    return p;
}

static int tcp_connect(unsigned port, struct sockaddr_in *local)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    socklen_t sl = sizeof(*local);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {.tv_sec = 5};

    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_geq(fd, 0);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    cr_assert_eq(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0, "connect: %s",
                 strerror(errno));
    if (local != NULL)
        getsockname(fd, (struct sockaddr *)local, &sl);
    return fd;
}

/* Reads exactly n bytes (or until EOF/error); returns the count. */
static size_t read_n(int fd, char *buf, size_t n)
{
    size_t got = 0;

    while (got < n) {
        ssize_t r = recv(fd, buf + got, n - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    return got;
}

Test(sim_backend, hello_and_echo, .fini = teardown)
{
    unsigned tcp, udp;
    struct sim_proc *p = start_backend(&tcp, &udp, NULL, NULL, NULL, NULL);
    struct sockaddr_in local;
    char want[128], line[128], data[100000], back[100000];
    int fd = tcp_connect(tcp, &local);

    cr_assert_gt(tcp, 0);
    cr_assert_eq(tcp, udp, "one port number for both protocols");
    snprintf(want, sizeof(want), "gwsim-backend t1 peer=127.0.0.1:%u\n", ntohs(local.sin_port));
    read_line(fd, line, sizeof(line));
    cr_assert_str_eq(line, want);
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (char)(i * 7 + 1);
    data[0] = 0x16; /* not an HTTP method */
    cr_assert_eq(send(fd, data, sizeof(data), 0), (ssize_t)sizeof(data));
    cr_assert_eq(read_n(fd, back, sizeof(back)), sizeof(back));
    cr_assert_arr_eq(back, data, sizeof(data));
    /* half-close: the echo ends with EOF */
    shutdown(fd, SHUT_WR);
    cr_assert_eq(recv(fd, back, 1, 0), 0);
    close(fd);
    cr_assert_eq(sim_proc_stop(p, 3000), 0, "SIGTERM exits 0");
}

Test(sim_backend, data_first_then_hello, .fini = teardown)
{
    /* A client that speaks first still gets the hello line before its echo. */
    unsigned tcp, udp;
    struct sim_proc *p = start_backend(&tcp, &udp, "--tcp", NULL, NULL, NULL);
    struct sockaddr_in local;
    char want[160], got[160];
    int fd = tcp_connect(tcp, &local);
    int n;

    cr_assert_eq(udp, 0);
    cr_assert_eq(send(fd, "x", 1, 0), 1);
    usleep(20000);
    cr_assert_eq(send(fd, "yz", 2, 0), 2);
    n = snprintf(want, sizeof(want), "gwsim-backend t1 peer=127.0.0.1:%u\nxyz",
                 ntohs(local.sin_port));
    cr_assert_eq(read_n(fd, got, (size_t)n), (size_t)n);
    cr_assert_arr_eq(got, want, (size_t)n);
    close(fd);
    sim_proc_stop(p, 3000);
}

Test(sim_backend, http_keep_alive, .fini = teardown)
{
    unsigned tcp, udp;
    struct sim_proc *p = start_backend(&tcp, &udp, NULL, NULL, NULL, NULL);
    struct sockaddr_in local;
    int fd = tcp_connect(tcp, &local);
    const char *req = "GET /a?b=\"c\" HTTP/1.1\r\nHost: x\r\n\r\n"
                      "POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
                      "HEAD /h HTTP/1.1\r\nConnection: close\r\n\r\n";
    char buf[4096], body[256];
    size_t got = 0;

    /* byte by byte: the parser must cope with any split */
    for (const char *c = req; *c; c++) {
        cr_assert_eq(send(fd, c, 1, 0), 1);
        if (c - req < 4)
            usleep(1000);
    }
    for (;;) {
        ssize_t r = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    buf[got] = '\0';
    snprintf(body, sizeof(body),
             "{\"backend\":\"t1\",\"peer\":\"127.0.0.1:%u\",\"method\":\"GET\",\"path\":\"/"
             "a?b=\\\"c\\\"\"}",
             ntohs(local.sin_port));
    cr_assert(strstr(buf, body) != NULL, "%s", buf);
    cr_assert(strstr(buf, "\"method\":\"POST\",\"path\":\"/p\"") != NULL, "%s", buf);
    cr_assert(strstr(buf, "\"method\":\"HEAD\"") == NULL, "HEAD has no body: %s", buf);
    cr_assert(strstr(buf, "Connection: close") != NULL, "%s", buf);
    cr_assert(strstr(buf, "gwsim-backend") == NULL, "no hello line in HTTP mode");
    {
        int n = 0;
        for (const char *s = buf; (s = strstr(s, "HTTP/1.1 200 OK")) != NULL; s++)
            n++;
        cr_assert_eq(n, 3, "three answers on one connection");
    }
    close(fd);
    sim_proc_stop(p, 3000);
}

Test(sim_backend, http_bad_request, .fini = teardown)
{
    unsigned tcp, udp;
    struct sim_proc *p = start_backend(&tcp, &udp, NULL, NULL, NULL, NULL);
    int fd = tcp_connect(tcp, NULL);
    char buf[1024];
    size_t n;

    send(fd, "GET nothing\r\n\r\n", 15, 0);
    n = read_n(fd, buf, sizeof(buf) - 1);
    buf[n] = '\0';
    cr_assert(strncmp(buf, "HTTP/1.1 400", 12) == 0, "%s", buf);
    close(fd);
    sim_proc_stop(p, 3000);
}

Test(sim_backend, udp_reply_format, .fini = teardown)
{
    unsigned tcp, udp;
    struct sim_proc *p = start_backend(&tcp, &udp, "--udp", NULL, NULL, NULL);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)udp)}, local;
    socklen_t sl = sizeof(local);
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {.tv_sec = 5};
    char want[256], buf[2048];
    const char payload[] = "\0binary\nGET / HTTP/1.1";
    int hl;
    ssize_t n;

    cr_assert_eq(tcp, 0);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    connect(fd, (struct sockaddr *)&sin, sizeof(sin));
    getsockname(fd, (struct sockaddr *)&local, &sl);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(send(fd, payload, sizeof(payload), 0), (ssize_t)sizeof(payload));
        n = recv(fd, buf, sizeof(buf), 0);
        hl = snprintf(want, sizeof(want), "gwsim-backend t1 peer=127.0.0.1:%u\n",
                      ntohs(local.sin_port));
        memcpy(want + hl, payload, sizeof(payload));
        cr_assert_eq(n, hl + (ssize_t)sizeof(payload));
        cr_assert_arr_eq(buf, want, (size_t)n);
    }
    close(fd);
    sim_proc_stop(p, 3000);
}

Test(sim_backend, tcp_and_udp_by_two_processes, .fini = teardown)
{
    unsigned t1, u1, t2, u2;
    char port[16];
    struct sim_proc *a = start_backend(&t1, &u1, "--tcp", NULL, NULL, NULL);
    struct sim_proc *b = &procs[n_procs++];
    char *argv[] = {GWSIM_PATH, "backend", "--name", "t2", "--udp", "--port", port, NULL};

    snprintf(port, sizeof(port), "%u", t1);
    cr_assert_eq(sim_proc_start(b, argv, NULL), 0);
    cr_assert_eq(sim_proc_wait_line(b, "listening", 5000), 0);
    cr_assert_eq(sim_parse_listening(b->ready, &t2, &u2), 0);
    cr_assert_eq(u2, t1, "UDP on the TCP process's port number");
    cr_assert_eq(t2, 0);
    cr_assert_eq(sim_proc_stop(b, 3000), 0);
    cr_assert_eq(sim_proc_stop(a, 3000), 0);
}

Test(sim_backend, close_after, .fini = teardown)
{
    unsigned tcp, udp;
    struct sim_proc *p = start_backend(&tcp, &udp, "--close-after", "10", NULL, NULL);
    int fd = tcp_connect(tcp, NULL);
    char line[128], buf[64];

    read_line(fd, line, sizeof(line));
    send(fd, "0123456789abcdef", 16, 0);
    cr_assert_eq(read_n(fd, buf, sizeof(buf)), 10, "echo stops at 10 bytes, then EOF");
    cr_assert_arr_eq(buf, "0123456789", 10);
    close(fd);
    sim_proc_stop(p, 3000);
}

Test(sim_backend, reset_after_and_max_conns, .fini = teardown)
{
    unsigned tcp, udp;
    struct sim_proc *p = start_backend(&tcp, &udp, "--reset-after", "4", "--max-conns", "1");
    int fd = tcp_connect(tcp, NULL), fd2;
    char line[128], buf[64];
    ssize_t r;

    read_line(fd, line, sizeof(line));
    cr_assert(strncmp(line, "gwsim-backend t1", 16) == 0);
    fd2 = tcp_connect(tcp, NULL);
    r = recv(fd2, buf, sizeof(buf), 0);
    cr_assert(r < 0 && errno == ECONNRESET, "over --max-conns: reset (r=%zd %s)", r,
              strerror(errno));
    close(fd2);
    send(fd, "abcdef", 6, 0);
    r = recv(fd, buf, sizeof(buf), 0);
    cr_assert(r < 0 && errno == ECONNRESET, "reset after 4 bytes (r=%zd)", r);
    close(fd);
    sim_proc_stop(p, 3000);
}

Test(sim_backend, delay, .fini = teardown)
{
    unsigned tcp, udp;
    struct sim_proc *p = start_backend(&tcp, &udp, "--delay-ms", "200", NULL, NULL);
    int fd = tcp_connect(tcp, NULL);
    char line[128];
    struct pollfd pf = {.fd = fd, .events = POLLIN};

    /* nothing within 100 ms (the probe wait is 100 ms, then 200 ms delay) */
    cr_assert_eq(poll(&pf, 1, 150), 0, "the hello is held back");
    read_line(fd, line, sizeof(line));
    cr_assert(strncmp(line, "gwsim-backend t1", 16) == 0);
    close(fd);
    sim_proc_stop(p, 3000);
}

Test(sim_backend, usage_errors, .fini = teardown)
{
    char *bad[][3] = {
        {"--port", "70000", NULL},  {"--bind", "localhost", NULL}, {"--name", "a b", NULL},
        {"--max-conns", "0", NULL}, {"--bogus", NULL, NULL},       {"extra", NULL, NULL},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *argv[] = {GWSIM_PATH, "backend", bad[i][0], bad[i][1], NULL};
        struct sim_proc p;
        int st;
        cr_assert_eq(sim_proc_start(&p, argv, "/dev/null"), 0);
        waitpid(p.pid, &st, 0);
        p.pid = 0;
        sim_proc_stop(&p, 0);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "%s -> status %d", bad[i][0], st);
    }
}
