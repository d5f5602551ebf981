/*
 * ctl_harness.h - what the control integration tests share: a real gwd
 * process in a temp dir, an echo backend process (UDP and TCP), control
 * socket clients and running gwctl. Every process started is stopped by PID,
 * every wait is bounded.
 */
#ifndef CTL_HARNESS_H
#define CTL_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

/* An echo server on 127.0.0.1: UDP and TCP on kernel-chosen ports. */
struct ctl_echo {
    pid_t pid;
    uint16_t udp_port, tcp_port;
};

/* Starts the echo server in a child process. Returns 0 or -1. */
int ctl_echo_start(struct ctl_echo *e);
/* Kills and reaps it. */
void ctl_echo_stop(struct ctl_echo *e);

struct ctl_gwd {
    pid_t pid;
    char dir[64]; /* temp dir holding the socket, store and log */
    char sock[128];
    char db[128];
    char log[128];
    uint16_t port;        /* gwd's TCP+UDP port (from show stats) */
    bool no_control_flag; /* spawn without --control: gwd finds its path by the default rule */
};

/*
 * Starts gwd with `-b 127.0.0.1 -p 0 --control DIR/gwd.sock --db DIR/gw.db`,
 * the NULL-ended `args` after them, and the NULL-ended "NAME=VALUE" `env`
 * added to the environment. Waits (bounded) until the control socket
 * answers. Returns 0, or -1 (g->pid is then 0 and the log printed).
 */
int ctl_gwd_start(struct ctl_gwd *g, const char *const *args, const char *const *env);

/* Like ctl_gwd_start with a given socket path; does not wait for it. */
int ctl_gwd_spawn(struct ctl_gwd *g, const char *sock, const char *const *args,
                  const char *const *env);

/* Waits up to timeout_ms for gwd to exit; returns its exit status or -1. */
int ctl_gwd_wait(struct ctl_gwd *g, int timeout_ms);

/* SIGTERM, bounded wait (then SIGKILL), removes the temp dir. Returns the
 * exit status (0 = clean) or -1. */
int ctl_gwd_stop(struct ctl_gwd *g);

/* Connects to a Unix socket (blocking fd). Returns the fd or -1. */
int ctl_connect(const char *path);

/* Sends all of buf. Returns 0 or -1. */
int ctl_send_all(int fd, const char *buf, size_t len);

/* Reads one line (up to max bytes) within timeout_ms. Returns a malloc'd
 * NUL-terminated line without the newline, or NULL (EOF, timeout, error). */
char *ctl_read_line(int fd, int timeout_ms, size_t max);

/* Sends `line` (a newline is added) and parses the next line read. NULL on failure. */
json_t *ctl_call_raw(int fd, const char *line);

/* Like ctl_call_raw with a fresh connection to `path`. */
json_t *ctl_call_path(const char *path, const char *line);

/* The result object of an ok reply (borrowed from reply), or NULL. */
json_t *ctl_result(json_t *reply);

/* The error code of a failed reply ("" when it is not one). */
const char *ctl_error_code(json_t *reply);

/*
 * Runs gwctl with the NULL-ended args (argv[0] added) and extra env, output
 * captured. Returns the exit code (-1 if it did not exit within 60 s); *out
 * and *err are malloc'd (may be NULL when not wanted).
 */
int ctl_run_gwctl(const char *const *args, const char *const *env, char **out, char **err);

/* A UDP socket bound to ip:port (port 0 = any), with a receive timeout. -1 on failure. */
int ctl_udp_socket(const char *ip, uint16_t port, int timeout_ms);

/* Sends `msg` to 127.0.0.1:port from fd and waits for the echo. Returns 0 or -1. */
int ctl_udp_roundtrip(int fd, uint16_t port, const char *msg);

/* Monotonic microseconds. */
uint64_t ctl_now_us(void);

/* Integer field by path "a.b.c" of a JSON object; -1 when missing. */
int64_t ctl_jint(const json_t *o, const char *path);

#endif /* CTL_HARNESS_H */
