/*
 * sim_proc.c - starting and stopping child processes.
 */
#include "sim/sim_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sim/sim_util.h"

int sim_proc_start(struct sim_proc *p, char *const argv[], const char *err_path)
{
    int pfd[2];
    pid_t pid;

    memset(p, 0, sizeof(*p));
    p->out_fd = -1;
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return -errno;
    pid = fork();
    if (pid < 0) {
        int e = -errno;
        close(pfd[0]);
        close(pfd[1]);
        return e;
    }
    if (pid == 0) {
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0)
            dup2(nul, 0);
        dup2(pfd[1], 1);
        if (err_path != NULL) {
            int ef = open(err_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (ef >= 0)
                dup2(ef, 2);
        }
        execv(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(pfd[1]);
    p->pid = pid;
    p->out_fd = pfd[0];
    return 0;
}

int sim_proc_wait_line(struct sim_proc *p, const char *prefix, int timeout_ms)
{
    char buf[1024];
    size_t len = 0;
    double deadline = sim_now_ms() + timeout_ms;

    for (;;) {
        struct pollfd pf = {.fd = p->out_fd, .events = POLLIN};
        double left = deadline - sim_now_ms();
        char *nl;
        ssize_t n;

        if (left <= 0)
            return -ETIMEDOUT;
        if (poll(&pf, 1, (int)left + 1) <= 0)
            continue;
        /* read byte by byte: what follows the line stays in the pipe */
        n = read(p->out_fd, buf + len, 1);
        if (n <= 0)
            return -ECHILD;
        len += (size_t)n;
        buf[len] = '\0';
        nl = strchr(buf, '\n');
        if (nl != NULL) {
            *nl = '\0';
            if (strncmp(buf, prefix, strlen(prefix)) == 0) {
                size_t l = strlen(buf) < sizeof(p->ready) - 1 ? strlen(buf) : sizeof(p->ready) - 1;
                memcpy(p->ready, buf, l);
                p->ready[l] = '\0';
                return 0;
            }
            len = 0;
        } else if (len == sizeof(buf) - 1) {
            len = 0;
        }
    }
}

int sim_proc_stop(struct sim_proc *p, int timeout_ms)
{
    int status = -1;
    double deadline = sim_now_ms() + timeout_ms;

    if (p->pid > 0) {
        kill(p->pid, SIGTERM);
        for (;;) {
            pid_t r = waitpid(p->pid, &status, WNOHANG);
            if (r == p->pid || (r < 0 && errno != EINTR))
                break;
            if (sim_now_ms() > deadline) {
                kill(p->pid, SIGKILL);
                waitpid(p->pid, &status, 0);
                break;
            }
            usleep(5000);
        }
        p->pid = 0;
    }
    if (p->out_fd >= 0) {
        close(p->out_fd);
        p->out_fd = -1;
    }
    return status;
}

int sim_parse_listening(const char *line, unsigned *tcp, unsigned *udp)
{
    const char *t, *u;

    if (strncmp(line, "listening", 9) != 0)
        return -1;
    t = strstr(line, "tcp=");
    u = strstr(line, "udp=");
    *tcp = t ? (unsigned)strtoul(t + 4, NULL, 10) : 0;
    *udp = u ? (unsigned)strtoul(u + 4, NULL, 10) : 0;
    return t || u ? 0 : -1;
}

int sim_self_dir(char *buf, size_t len)
{
    ssize_t n = readlink("/proc/self/exe", buf, len - 1);
    char *slash;

    if (n <= 0)
        return -1;
    buf[n] = '\0';
    slash = strrchr(buf, '/');
    if (slash == NULL)
        return -1;
    *slash = '\0';
    return 0;
}

int sim_proc_collect(struct sim_proc *p, char **out, size_t max, int timeout_ms)
{
    double deadline = sim_now_ms() + timeout_ms;
    size_t len = 0;
    char *buf = malloc(max + 1);
    int status = -1;

    *out = NULL;
    if (buf == NULL)
        return -1;
    while (p->out_fd >= 0) {
        struct pollfd pf = {.fd = p->out_fd, .events = POLLIN};
        double left = deadline - sim_now_ms();
        char tmp[4096];
        ssize_t n;

        if (left <= 0)
            break;
        if (poll(&pf, 1, (int)left + 1) <= 0)
            continue;
        n = read(p->out_fd, tmp, sizeof(tmp));
        if (n <= 0) {
            close(p->out_fd);
            p->out_fd = -1;
            break;
        }
        if (len < max) {
            size_t k = (size_t)n < max - len ? (size_t)n : max - len;
            memcpy(buf + len, tmp, k);
            len += k;
        }
    }
    buf[len] = '\0';
    *out = buf;
    while (p->pid > 0 && sim_now_ms() < deadline) {
        pid_t r = waitpid(p->pid, &status, WNOHANG);
        if (r == p->pid) {
            p->pid = 0;
            break;
        }
        usleep(5000);
    }
    if (p->pid > 0)
        status = sim_proc_stop(p, 1000);
    else
        sim_proc_stop(p, 0);
    return status;
}

int sim_wait_file_line(const char *path, const char *needle, char *line, size_t len, int timeout_ms)
{
    double deadline = sim_now_ms() + timeout_ms;

    while (sim_now_ms() < deadline) {
        FILE *f = fopen(path, "r");
        if (f != NULL) {
            char buf[1024];
            while (fgets(buf, sizeof(buf), f) != NULL) {
                if (strstr(buf, needle) != NULL) {
                    size_t l = strcspn(buf, "\n");
                    if (l >= len)
                        l = len - 1;
                    memcpy(line, buf, l);
                    line[l] = '\0';
                    fclose(f);
                    return 0;
                }
            }
            fclose(f);
        }
        usleep(10000);
    }
    return -ETIMEDOUT;
}
