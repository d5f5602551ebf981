/*
 * gw_harness.c - processes, sockets and store reads for the gwd integration
 * tests (see gw_harness.h).
 */
#include "gw_harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef GWD_PATH
#define GWD_PATH "gwd"
#endif

uint64_t gwt_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void gwt_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ---- temp dirs -------------------------------------------------------------- */

int gwt_dir_new(struct gwt_dir *d)
{
    snprintf(d->path, sizeof(d->path), "/tmp/gwtest-XXXXXX");
    return mkdtemp(d->path) ? 0 : -1;
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

void gwt_dir_free(struct gwt_dir *d)
{
    if (d->path[0])
        nftw(d->path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    d->path[0] = '\0';
}

char *gwt_path(const struct gwt_dir *d, const char *name, char *buf, size_t len)
{
    int n = snprintf(buf, len, "%s/%s", d->path, name);
    if (n < 0 || (size_t)n >= len)
        buf[0] = '\0'; /* too long: an empty path fails loudly where it is used */
    return buf;
}

int gwt_write_file(const struct gwt_dir *d, const char *name, const char *text)
{
    char p[256];
    FILE *f = fopen(gwt_path(d, name, p, sizeof(p)), "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f) == 0 ? 0 : -1;
}

/* ---- gwd --------------------------------------------------------------------- */

static int read_file(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t n = 0;
    if (fd < 0) {
        buf[0] = '\0';
        return -1;
    }
    while (n + 1 < len) {
        ssize_t r = read(fd, buf + n, len - n - 1);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    close(fd);
    return (int)n;
}

static int count_in_file(const char *path, const char *needle, bool at_line_start)
{
    static char buf[4 << 20];
    int n = 0;
    read_file(path, buf, sizeof(buf));
    for (char *line = buf; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        if (at_line_start ? strncmp(line, needle, strlen(needle)) == 0
                          : strstr(line, needle) != NULL)
            n++;
        line = nl ? nl + 1 : NULL;
    }
    return n;
}

int gwd_log_count(const struct gwd *g, const char *needle)
{
    return count_in_file(g->log, needle, false);
}

bool gwd_log_wait(const struct gwd *g, const char *needle, int n, int timeout_ms)
{
    uint64_t end = gwt_ms() + (uint64_t)timeout_ms;
    do {
        if (gwd_log_count(g, needle) >= n)
            return true;
        gwt_sleep_ms(20);
    } while (gwt_ms() < end);
    return false;
}

bool gwd_alive(const struct gwd *g)
{
    int st;
    return g->pid > 0 && waitpid(g->pid, &st, WNOHANG) == 0;
}

int gwd_ctl(const struct gwd *g, const char *req, char *buf, size_t len)
{
    struct sockaddr_un a;
    memset(&a, 0, sizeof(a));
    a.sun_family = AF_UNIX;
    if (strlen(g->sock) >= sizeof(a.sun_path))
        return -1;
    memcpy(a.sun_path, g->sock, strlen(g->sock) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    int n = -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        gwt_write_full(fd, req, strlen(req)) == 0)
        n = gwt_read_line(fd, buf, len);
    close(fd);
    return n;
}

static pid_t spawn(const char *const *argv, const char *out_path, long nofile)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
    }
    if (nofile > 0) {
        struct rlimit rl = {(rlim_t)nofile, (rlim_t)nofile};
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    /* Criterion's fds and signal state must not leak into the child. */
    for (int i = 3; i < 1024; i++)
        close(i);
    signal(SIGPIPE, SIG_DFL);
    char *av[64];
    size_t n = 0;
    for (; argv[n] && n < 63; n++)
        av[n] = (char *)(uintptr_t)argv[n]; /* execv's prototype predates const */
    av[n] = NULL;
    execv(av[0], av);
    _exit(127);
}

int gwd_start_config(struct gwd *g, const struct gwt_dir *d, const char *json)
{
    char cfgpath[256];

    if (gwt_write_file(d, "gwd.json", json) != 0)
        return -1;
    const char *args[] = {"-c", gwt_path(d, "gwd.json", cfgpath, sizeof(cfgpath)), NULL};
    return gwd_start(g, d, args, 0);
}

int gwd_start(struct gwd *g, const struct gwt_dir *d, const char *const *args, long nofile)
{
    const char *argv[64];
    size_t n = 0;

    memset(g, 0, sizeof(*g));
    gwt_path(d, "gwd.log", g->log, sizeof(g->log));
    gwt_path(d, "gw.db", g->db, sizeof(g->db));
    gwt_path(d, "gwd.sock", g->sock, sizeof(g->sock));
    bool has_bind = false;
    for (size_t i = 0; args && args[i]; i++)
        if (strcmp(args[i], "-b") == 0)
            has_bind = true;
    argv[n++] = GWD_PATH;
    argv[n++] = "-p";
    argv[n++] = "0";
    if (!has_bind) {
        argv[n++] = "-b";
        argv[n++] = "127.0.0.1";
    }
    argv[n++] = "--db";
    argv[n++] = g->db;
    argv[n++] = "--control";
    argv[n++] = g->sock;
    for (size_t i = 0; args && args[i] && n < 62; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    unlink(g->log); /* a previous run's "ready" line must not be read as this one's */
    g->pid = spawn(argv, g->log, nofile);
    if (g->pid < 0)
        return -1;
    uint64_t end = gwt_ms() + 15000;
    static char buf[1 << 16];
    while (gwt_ms() < end) {
        read_file(g->log, buf, sizeof(buf));
        char *r = strstr(buf, "ready: port ");
        if (r) {
            g->port = (uint16_t)atoi(r + strlen("ready: port "));
            return 0;
        }
        if (!gwd_alive(g)) {
            fprintf(stderr, "gwd exited early:\n%s\n", buf);
            g->pid = 0;
            return -1;
        }
        gwt_sleep_ms(20);
    }
    fprintf(stderr, "gwd not ready:\n%s\n", buf);
    kill(g->pid, SIGKILL);
    waitpid(g->pid, NULL, 0);
    g->pid = 0;
    return -1;
}

void gwd_signal(const struct gwd *g, int sig)
{
    if (g->pid > 0)
        kill(g->pid, sig);
}

static int reap(pid_t pid, int timeout_ms)
{
    uint64_t end = gwt_ms() + (uint64_t)timeout_ms;
    int st;
    do {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (r < 0)
            return -1;
        gwt_sleep_ms(10);
    } while (gwt_ms() < end);
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

int gwd_wait(struct gwd *g, int timeout_ms)
{
    if (g->pid <= 0)
        return -1;
    int rc = reap(g->pid, timeout_ms);
    g->pid = 0;
    return rc;
}

int gwd_stop(struct gwd *g)
{
    if (g->pid <= 0)
        return -1;
    kill(g->pid, SIGTERM);
    int rc = reap(g->pid, 20000);
    g->pid = 0;
    return rc;
}

int gwd_run(const char *const *args, char *out, size_t outlen)
{
    char path[] = "/tmp/gwtest-run-XXXXXX";
    int fd = mkstemp(path);
    const char *argv[64];
    size_t n = 0;

    if (fd < 0)
        return -1;
    close(fd);
    argv[n++] = GWD_PATH;
    for (size_t i = 0; args[i] && n < 62; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    pid_t pid = spawn(argv, path, 0);
    int rc = pid > 0 ? reap(pid, 20000) : -1;
    read_file(path, out, outlen);
    unlink(path);
    return rc;
}

/* ---- the backend --------------------------------------------------------------- */

struct tb_conn {
    ev_io io;
    int fd;
    bool first;
    bool eof;
    char *pend;
    size_t off, len;
    char peer[64];
    struct tb *tb;
};

struct tb {
    struct ev_loop *loop;
    int tcp_fd, udp_fd, log_fd;
    ev_io tcp_io, udp_io;
    ev_signal sig;
};

static void tb_log(struct tb *tb, const char *what, const char *peer)
{
    char line[128];
    int n = snprintf(line, sizeof(line), "%s %s\n", what, peer);
    if (write(tb->log_fd, line, (size_t)n) < 0)
        return;
}

static void peer_str(const struct sockaddr_storage *ss, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN];
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
    snprintf(buf, len, "%s:%u", ip, ntohs(s4->sin_port));
}

static void conn_free(struct tb_conn *c, const char *why, bool rst)
{
    if (why)
        tb_log(c->tb, why, c->peer);
    ev_io_stop(c->tb->loop, &c->io);
    if (rst) {
        struct linger lg = {1, 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    close(c->fd);
    free(c->pend);
    free(c);
}

static void conn_watch(struct tb_conn *c)
{
    int ev = c->pend ? EV_WRITE : (c->eof ? 0 : EV_READ);
    ev_io_stop(c->tb->loop, &c->io);
    if (ev) {
        ev_io_set(&c->io, c->fd, ev);
        ev_io_start(c->tb->loop, &c->io);
    }
}

static void conn_finish(struct tb_conn *c)
{
    /* The peer sent FIN: answer after it (proves half-close), then FIN back. */
    if (send(c->fd, "BYE\n", 4, MSG_NOSIGNAL) < 0) {
        conn_free(c, "rst", false);
        return;
    }
    shutdown(c->fd, SHUT_WR);
    conn_free(c, "fin", false);
}

static void conn_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct tb_conn *c = w->data;
    static char buf[65536];
    (void)loop;

    if ((revents & EV_WRITE) && c->pend) {
        ssize_t n = send(c->fd, c->pend + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN) {
            conn_free(c, "rst", false);
            return;
        }
        if (n > 0)
            c->off += (size_t)n;
        if (c->off == c->len) {
            free(c->pend);
            c->pend = NULL;
            if (c->eof) {
                conn_finish(c);
                return;
            }
        }
        conn_watch(c);
        return;
    }
    ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
    if (n < 0) {
        if (errno == EAGAIN)
            return;
        conn_free(c, errno == ECONNRESET ? "rst" : "err", false);
        return;
    }
    if (n == 0) {
        c->eof = true;
        conn_finish(c);
        return;
    }
    /* Commands are whole reads of their own: "!rst" resets, "!close" closes. */
    if (n == 4 && memcmp(buf, "!rst", 4) == 0) {
        conn_free(c, "rst-sent", true);
        return;
    }
    if (n == 6 && memcmp(buf, "!close", 6) == 0) {
        conn_free(c, "close-sent", false);
        return;
    }
    c->first = false;
    ssize_t w2 = send(c->fd, buf, (size_t)n, MSG_NOSIGNAL);
    if (w2 < 0) {
        if (errno != EAGAIN) {
            conn_free(c, "rst", false);
            return;
        }
        w2 = 0;
    }
    if (w2 < n) {
        c->pend = malloc((size_t)(n - w2));
        memcpy(c->pend, buf + w2, (size_t)(n - w2));
        c->off = 0;
        c->len = (size_t)(n - w2);
    }
    conn_watch(c);
}

static void tb_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct tb *tb = w->data;
    (void)revents;
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(tb->tcp_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK);
        if (fd < 0)
            return;
        struct tb_conn *c = calloc(1, sizeof(*c));
        c->fd = fd;
        c->tb = tb;
        c->first = true;
        peer_str(&ss, c->peer, sizeof(c->peer));
        tb_log(tb, "accept", c->peer);
        char line[80];
        int n = snprintf(line, sizeof(line), "%s\n", c->peer);
        if (send(fd, line, (size_t)n, MSG_NOSIGNAL) < 0) {
            conn_free(c, "err", false);
            continue;
        }
        ev_io_init(&c->io, conn_cb, fd, EV_READ);
        c->io.data = c;
        ev_io_start(loop, &c->io);
    }
}

static void tb_udp_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct tb *tb = w->data;
    static char buf[65536 + 80];
    (void)loop;
    (void)revents;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        char peer[64];
        char data[65536];
        ssize_t n =
            recvfrom(tb->udp_fd, data, sizeof(data), MSG_DONTWAIT, (struct sockaddr *)&ss, &sl);
        if (n < 0)
            return;
        peer_str(&ss, peer, sizeof(peer));
        int h = snprintf(buf, sizeof(buf), "%s ", peer);
        memcpy(buf + h, data, (size_t)n);
        sendto(tb->udp_fd, buf, (size_t)h + (size_t)n, 0, (struct sockaddr *)&ss, sl);
    }
}

static void tb_sig_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

static int bind_pair(uint16_t port, int *tcp_fd, int *udp_fd, uint16_t *out)
{
    for (int attempt = 0; attempt < 50; attempt++) {
        struct sockaddr_in a = {0};
        socklen_t al = sizeof(a);
        int one = 1;
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(port);
        int t = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        setsockopt(t, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(t, (struct sockaddr *)&a, sizeof(a)) < 0) {
            close(t);
            if (port)
                return -1;
            continue;
        }
        getsockname(t, (struct sockaddr *)&a, &al);
        int u = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (bind(u, (struct sockaddr *)&a, sizeof(a)) < 0) {
            close(t);
            close(u);
            if (port)
                return -1;
            continue;
        }
        *tcp_fd = t;
        *udp_fd = u;
        *out = ntohs(a.sin_port);
        return 0;
    }
    return -1;
}

uint16_t gwt_free_port(void)
{
    int t, u;
    uint16_t p = 0;
    if (bind_pair(0, &t, &u, &p) < 0)
        return 0;
    close(t);
    close(u);
    return p;
}

int gwt_backend_start(struct gwt_backend *b, const struct gwt_dir *d, const char *name,
                      uint16_t port)
{
    int tcp_fd, udp_fd, pfd[2];
    char logname[64];

    memset(b, 0, sizeof(*b));
    snprintf(logname, sizeof(logname), "backend-%s.log", name);
    gwt_path(d, logname, b->log, sizeof(b->log));
    /* Several tries: a port just freed by a killed backend may linger. */
    int rc = -1;
    for (int i = 0; i < 100 && rc < 0; i++) {
        rc = bind_pair(port, &tcp_fd, &udp_fd, &b->port);
        if (rc < 0)
            gwt_sleep_ms(50);
    }
    if (rc < 0)
        return -1;
    if (listen(tcp_fd, 1024) < 0 || pipe(pfd) < 0)
        return -1;
    b->pid = fork();
    if (b->pid < 0)
        return -1;
    if (b->pid == 0) {
        struct tb tb;
        close(pfd[0]);
        memset(&tb, 0, sizeof(tb));
        tb.tcp_fd = tcp_fd;
        tb.udp_fd = udp_fd;
        tb.log_fd = open(b->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        signal(SIGPIPE, SIG_IGN);
        tb.loop = ev_loop_new(EVFLAG_AUTO);
        ev_io_init(&tb.tcp_io, tb_accept_cb, tcp_fd, EV_READ);
        tb.tcp_io.data = &tb;
        ev_io_start(tb.loop, &tb.tcp_io);
        ev_io_init(&tb.udp_io, tb_udp_cb, udp_fd, EV_READ);
        tb.udp_io.data = &tb;
        ev_io_start(tb.loop, &tb.udp_io);
        ev_signal_init(&tb.sig, tb_sig_cb, SIGTERM);
        ev_signal_start(tb.loop, &tb.sig);
        if (write(pfd[1], "r", 1) < 0)
            _exit(1);
        close(pfd[1]);
        ev_run(tb.loop, 0);
        _exit(0);
    }
    close(tcp_fd);
    close(udp_fd);
    close(pfd[1]);
    char c;
    ssize_t r = read(pfd[0], &c, 1);
    close(pfd[0]);
    return r == 1 ? 0 : -1;
}

void gwt_backend_stop(struct gwt_backend *b, bool kill_hard)
{
    if (b->pid <= 0)
        return;
    kill(b->pid, kill_hard ? SIGKILL : SIGTERM);
    reap(b->pid, 10000);
    b->pid = 0;
}

void gwt_teardown(struct gwd *g, struct gwt_backend *be, int n, struct gwt_dir *d)
{
    if (g->pid > 0)
        gwd_stop(g);
    for (int i = 0; i < n; i++)
        gwt_backend_stop(&be[i], false);
    gwt_dir_free(d);
}

int gwt_backend_count(const struct gwt_backend *b, const char *prefix)
{
    return count_in_file(b->log, prefix, true);
}

int gwt_backend_count_nat(const struct gwt_backend *b, const char *what, unsigned lo, unsigned hi)
{
    static char buf[1 << 20];
    size_t wl = strlen(what);
    int n = 0;

    read_file(b->log, buf, sizeof(buf));
    for (char *line = buf; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        if (strncmp(line, what, wl) == 0 && line[wl] == ' ') {
            char *colon = strrchr(line, ':');
            unsigned port = colon ? (unsigned)atoi(colon + 1) : 0;
            if (port >= lo && port <= hi)
                n++;
        }
        line = nl ? nl + 1 : NULL;
    }
    return n;
}

/* ---- clients ------------------------------------------------------------------ */

static void set_timeouts(int fd, int sec)
{
    struct timeval tv = {sec, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static int client(const char *src, uint16_t port, int type)
{
    struct sockaddr_in a = {0}, d = {0};
    int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    a.sin_family = AF_INET;
    inet_pton(AF_INET, src, &a.sin_addr);
    d.sin_family = AF_INET;
    d.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    d.sin_port = htons(port);
    set_timeouts(fd, type == SOCK_STREAM ? 10 : 5);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        connect(fd, (struct sockaddr *)&d, sizeof(d)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int gwt_tcp_connect(const char *src, uint16_t port)
{
    return client(src, port, SOCK_STREAM);
}

int gwt_tcp_listen(int backlog, uint16_t *port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, backlog) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &al) < 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

int gwt_udp_socket(const char *src, uint16_t port)
{
    return client(src, port, SOCK_DGRAM);
}

int gwt_read_line(int fd, char *buf, size_t len)
{
    size_t n = 0;
    while (n + 1 < len) {
        char c;
        ssize_t r = recv(fd, &c, 1, 0);
        if (r <= 0)
            return -1;
        if (c == '\n')
            break;
        buf[n++] = c;
    }
    buf[n] = '\0';
    return (int)n;
}

int gwt_read_full(int fd, void *buf, size_t len)
{
    size_t n = 0;
    while (n < len) {
        ssize_t r = recv(fd, (char *)buf + n, len - n, 0);
        if (r <= 0)
            return -1;
        n += (size_t)r;
    }
    return 0;
}

int gwt_write_full(int fd, const void *buf, size_t len)
{
    size_t n = 0;
    while (n < len) {
        ssize_t w = send(fd, (const char *)buf + n, len - n, MSG_NOSIGNAL);
        if (w <= 0)
            return -1;
        n += (size_t)w;
    }
    return 0;
}

char *gwt_local(int fd, char *buf, size_t len)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    peer_str(&ss, buf, len);
    return buf;
}

/* ---- the store ------------------------------------------------------------------ */

static int db_query(const char *db, const char *sql, char *buf, size_t len)
{
    sqlite3 *h = NULL;
    sqlite3_stmt *st = NULL;
    int rc = -1;

    buf[0] = '\0';
    if (sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        goto out;
    sqlite3_busy_timeout(h, 1000);
    if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "sql error: %s: %s\n", sql, sqlite3_errmsg(h));
        goto out;
    }
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(buf, len, "%s", t ? (const char *)t : "");
        rc = 1;
    } else if (s == SQLITE_DONE) {
        rc = 0;
    }
out:
    sqlite3_finalize(st);
    sqlite3_close(h);
    return rc;
}

long long gwt_db_int(const char *db, const char *sql, long long want, int timeout_ms)
{
    uint64_t end = gwt_ms() + (uint64_t)timeout_ms;
    long long v = -1;
    char buf[64];
    do {
        if (db_query(db, sql, buf, sizeof(buf)) == 1)
            v = strtoll(buf, NULL, 10);
        else
            v = -1;
        if (want < 0 || v == want)
            return v;
        gwt_sleep_ms(50);
    } while (gwt_ms() < end);
    return v;
}

int gwt_db_text(const char *db, const char *sql, char *buf, size_t len, int timeout_ms)
{
    uint64_t end = gwt_ms() + (uint64_t)timeout_ms;
    do {
        int rc = db_query(db, sql, buf, len);
        if (rc == 1)
            return 0;
        gwt_sleep_ms(50);
    } while (gwt_ms() < end);
    return -1;
}
