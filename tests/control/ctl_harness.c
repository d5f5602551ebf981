/*
 * ctl_harness.c - processes and sockets for the control integration tests.
 */
#include "ctl_harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

uint64_t ctl_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};

    nanosleep(&ts, NULL);
}

/* ---- echo backend ---------------------------------------------------------- */

static void echo_loop(int ufd, int tfd)
{
    struct pollfd pfd[66];
    int n = 2;
    char buf[65536];

    pfd[0] = (struct pollfd){.fd = ufd, .events = POLLIN};
    pfd[1] = (struct pollfd){.fd = tfd, .events = POLLIN};
    for (;;) {
        if (poll(pfd, (nfds_t)n, -1) < 0)
            continue;
        if (pfd[0].revents & POLLIN) {
            struct sockaddr_storage ss;
            socklen_t sl = sizeof(ss);
            ssize_t r = recvfrom(ufd, buf, sizeof(buf), 0, (struct sockaddr *)&ss, &sl);
            if (r >= 0)
                sendto(ufd, buf, (size_t)r, 0, (struct sockaddr *)&ss, sl);
        }
        if ((pfd[1].revents & POLLIN) && n < 66) {
            int c = accept(tfd, NULL, NULL);
            if (c >= 0)
                pfd[n++] = (struct pollfd){.fd = c, .events = POLLIN};
        }
        for (int i = 2; i < n; i++) {
            if (!pfd[i].revents)
                continue;
            ssize_t r = read(pfd[i].fd, buf, sizeof(buf));
            if (r <= 0 || write(pfd[i].fd, buf, (size_t)r) != r) {
                close(pfd[i].fd);
                pfd[i--] = pfd[--n];
            }
        }
    }
}

int ctl_echo_start(struct ctl_echo *e)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t sl = sizeof(sa);
    int ufd, tfd, one = 1;

    memset(e, 0, sizeof(*e));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ufd = socket(AF_INET, SOCK_DGRAM, 0);
    tfd = socket(AF_INET, SOCK_STREAM, 0);
    if (ufd < 0 || tfd < 0)
        return -1;
    setsockopt(tfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(ufd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        bind(tfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(tfd, 128) < 0)
        return -1;
    getsockname(ufd, (struct sockaddr *)&sa, &sl);
    e->udp_port = ntohs(sa.sin_port);
    sl = sizeof(sa);
    getsockname(tfd, (struct sockaddr *)&sa, &sl);
    e->tcp_port = ntohs(sa.sin_port);
    e->pid = fork();
    if (e->pid < 0)
        return -1;
    if (e->pid == 0) {
        echo_loop(ufd, tfd);
        _exit(0);
    }
    close(ufd);
    close(tfd);
    return 0;
}

void ctl_echo_stop(struct ctl_echo *e)
{
    if (e->pid > 0) {
        kill(e->pid, SIGKILL);
        waitpid(e->pid, NULL, 0);
    }
    e->pid = 0;
}

/* ---- gwd ------------------------------------------------------------------- */

static void print_log(const char *path)
{
    char buf[4096];
    FILE *f = fopen(path, "r");

    if (!f)
        return;
    fprintf(stderr, "---- %s ----\n", path);
    while (fgets(buf, sizeof(buf), f))
        fputs(buf, stderr);
    fclose(f);
}

int ctl_gwd_spawn(struct ctl_gwd *g, const char *sock, const char *const *args,
                  const char *const *env)
{
    const char *argv[160];
    int n = 0;

    if (!g->dir[0]) {
        snprintf(g->dir, sizeof(g->dir), "/tmp/ctl-test-XXXXXX");
        if (!mkdtemp(g->dir))
            return -1;
    }
    snprintf(g->sock, sizeof(g->sock), "%s", sock ? sock : "");
    if (!sock)
        snprintf(g->sock, sizeof(g->sock), "%s/gwd.sock", g->dir);
    snprintf(g->db, sizeof(g->db), "%s/gw.db", g->dir);
    snprintf(g->log, sizeof(g->log), "%s/gwd-%d.log", g->dir, (int)ctl_now_us() % 100000);
    argv[n++] = GWD_PATH;
    argv[n++] = "-b";
    argv[n++] = "127.0.0.1";
    argv[n++] = "-p";
    argv[n++] = "0";
    if (!g->no_control_flag) {
        argv[n++] = "--control";
        argv[n++] = g->sock;
    }
    argv[n++] = "--db";
    argv[n++] = g->db;
    for (int i = 0; args && args[i] && n < 158; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    g->pid = fork();
    if (g->pid < 0)
        return -1;
    if (g->pid == 0) {
        int fd = open(g->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
        }
        for (int i = 0; env && env[i]; i++)
            putenv((char *)(uintptr_t)env[i]);
        execv(GWD_PATH, (char *const *)(uintptr_t)argv);
        _exit(127);
    }
    return 0;
}

int ctl_gwd_start(struct ctl_gwd *g, const char *const *args, const char *const *env)
{
    memset(g, 0, sizeof(*g));
    if (ctl_gwd_spawn(g, NULL, args, env) < 0)
        return -1;
    /* bounded: 30 s (ASan start-up on a busy machine) */
    for (int i = 0; i < 600; i++) {
        int status;
        if (waitpid(g->pid, &status, WNOHANG) == g->pid) {
            fprintf(stderr, "gwd exited at start (status %d)\n", status);
            print_log(g->log);
            g->pid = 0;
            return -1;
        }
        json_t *r = ctl_call_path(g->sock, "{\"id\":0,\"cmd\":\"show stats\"}");
        if (r) {
            g->port = (uint16_t)ctl_jint(ctl_result(r), "port");
            json_decref(r);
            return 0;
        }
        sleep_ms(50);
    }
    print_log(g->log);
    kill(g->pid, SIGKILL);
    waitpid(g->pid, NULL, 0);
    g->pid = 0;
    return -1;
}

int ctl_gwd_wait(struct ctl_gwd *g, int timeout_ms)
{
    int status;

    for (int waited = 0; waited <= timeout_ms; waited += 20) {
        if (waitpid(g->pid, &status, WNOHANG) == g->pid) {
            g->pid = 0;
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        sleep_ms(20);
    }
    return -1;
}

static void rm_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[512];

    if (!d)
        return;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

int ctl_gwd_stop(struct ctl_gwd *g)
{
    int rc = 0;

    if (g->pid > 0) {
        kill(g->pid, SIGTERM);
        rc = ctl_gwd_wait(g, 20000);
        if (rc < 0) {
            kill(g->pid, SIGKILL);
            waitpid(g->pid, NULL, 0);
            g->pid = 0;
        }
        if (rc != 0)
            print_log(g->log);
    }
    if (g->dir[0])
        rm_dir(g->dir);
    g->dir[0] = '\0';
    return rc;
}

/* ---- control clients ------------------------------------------------------- */

int ctl_connect(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    if (strlen(path) >= sizeof(sa.sun_path)) {
        close(fd);
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int ctl_send_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

char *ctl_read_line(int fd, int timeout_ms, size_t max)
{
    size_t len = 0, cap = 65536;
    char *buf = malloc(cap);
    uint64_t deadline = ctl_now_us() + (uint64_t)timeout_ms * 1000;

    if (!buf)
        return NULL;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        uint64_t now = ctl_now_us();
        char *nl;
        ssize_t n;

        if (now >= deadline || poll(&p, 1, (int)((deadline - now) / 1000) + 1) <= 0)
            break;
        if (cap - len < 65536) {
            char *nb;
            if (cap > max + 65536)
                break;
            nb = realloc(buf, cap * 2);
            if (!nb)
                break;
            buf = nb;
            cap *= 2;
        }
        /* peek, then take exactly up to the newline: the rest stays for the next call */
        n = recv(fd, buf + len, cap - len - 1, MSG_PEEK);
        if (n <= 0)
            break;
        nl = memchr(buf + len, '\n', (size_t)n);
        if (nl)
            n = nl - (buf + len) + 1;
        n = recv(fd, buf + len, (size_t)n, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
        if (nl) {
            buf[len - 1] = '\0';
            return buf;
        }
    }
    free(buf);
    return NULL;
}

json_t *ctl_call_raw(int fd, const char *line)
{
    char *reply;
    json_t *j;

    if (ctl_send_all(fd, line, strlen(line)) < 0 || ctl_send_all(fd, "\n", 1) < 0)
        return NULL;
    reply = ctl_read_line(fd, 60000, 512u << 20);
    if (!reply)
        return NULL;
    j = json_loads(reply, 0, NULL);
    free(reply);
    return j;
}

json_t *ctl_call_path(const char *path, const char *line)
{
    int fd = ctl_connect(path);
    json_t *j;

    if (fd < 0)
        return NULL;
    j = ctl_call_raw(fd, line);
    close(fd);
    return j;
}

json_t *ctl_result(json_t *reply)
{
    if (!json_is_true(json_object_get(reply, "ok")))
        return NULL;
    return json_object_get(reply, "result");
}

const char *ctl_error_code(json_t *reply)
{
    const char *s = json_string_value(json_object_get(json_object_get(reply, "error"), "code"));

    return s ? s : "";
}

int64_t ctl_jint(const json_t *o, const char *path)
{
    char key[64];
    const char *dot;

    while ((dot = strchr(path, '.'))) {
        snprintf(key, sizeof(key), "%.*s", (int)(dot - path), path);
        o = json_object_get(o, key);
        path = dot + 1;
    }
    o = json_object_get(o, path);
    return json_is_integer(o) ? (int64_t)json_integer_value(o) : -1;
}

/* ---- gwctl ----------------------------------------------------------------- */

static char *slurp(int fd)
{
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    ssize_t n;

    while (buf && (n = read(fd, buf + len, cap - len - 1)) > 0) {
        len += (size_t)n;
        if (cap - len < 2) {
            char *nb = realloc(buf, cap * 2);
            if (!nb)
                break;
            buf = nb;
            cap *= 2;
        }
    }
    if (buf)
        buf[len] = '\0';
    return buf;
}

int ctl_run_gwctl(const char *const *args, const char *const *env, char **out, char **err)
{
    const char *argv[64];
    int po[2], pe[2], n = 0, status;
    char opath[] = "/tmp/ctl-out-XXXXXX", epath[] = "/tmp/ctl-err-XXXXXX";
    pid_t pid;

    (void)po;
    (void)pe;
    argv[n++] = GWCTL_PATH;
    for (int i = 0; args[i] && n < 63; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    /* files, not pipes: output of any size without a reader thread */
    int ofd = mkstemp(opath), efd = mkstemp(epath);
    if (ofd < 0 || efd < 0)
        return -1;
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(ofd, 1);
        dup2(efd, 2);
        for (int i = 0; env && env[i]; i++)
            putenv((char *)(uintptr_t)env[i]);
        execv(GWCTL_PATH, (char *const *)(uintptr_t)argv);
        _exit(127);
    }
    status = -1;
    for (int i = 0; i < 3000; i++) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            break;
        status = -1;
        sleep_ms(20);
    }
    if (status == -1) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    lseek(ofd, 0, SEEK_SET);
    lseek(efd, 0, SEEK_SET);
    if (out)
        *out = slurp(ofd);
    if (err)
        *err = slurp(efd);
    close(ofd);
    close(efd);
    unlink(opath);
    unlink(epath);
    if (status == -1)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* ---- UDP clients ----------------------------------------------------------- */

int ctl_udp_socket(const char *ip, uint16_t port, int timeout_ms)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    inet_pton(AF_INET, ip, &sa.sin_addr);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

int ctl_udp_roundtrip(int fd, uint16_t port, const char *msg)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    char buf[2048];
    size_t len = strlen(msg);

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (sendto(fd, msg, len, 0, (struct sockaddr *)&sa, sizeof(sa)) != (ssize_t)len)
        return -1;
    for (int tries = 0; tries < 4; tries++) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n < 0)
            return -1;
        if ((size_t)n == len && memcmp(buf, msg, len) == 0)
            return 0;
        /* a late echo of an earlier probe: read on */
    }
    return -1;
}
