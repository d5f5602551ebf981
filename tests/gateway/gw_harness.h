/*
 * gw_harness.h - what the gwd integration tests share: a real gwd process
 * (fork/exec of the built binary, its port read from its log), in-test
 * backend processes (TCP echo that first tells the peer address it saw, UDP
 * echo prefixed with it, RST/close on command, a log of how each connection
 * ended), loopback clients from chosen source IPs, and reads of the store.
 * Every wait is bounded; every process is stopped by its pid.
 */
#ifndef GW_HARNESS_H
#define GW_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* A temporary directory for one test (removed by gwt_dir_free). */
struct gwt_dir {
    char path[128];
};
int gwt_dir_new(struct gwt_dir *d);
void gwt_dir_free(struct gwt_dir *d);
/* dir/name into buf. */
char *gwt_path(const struct gwt_dir *d, const char *name, char *buf, size_t len);
/* Writes text to dir/name. Returns 0 or -1. */
int gwt_write_file(const struct gwt_dir *d, const char *name, const char *text);

/* A running gwd. */
struct gwd {
    pid_t pid;
    uint16_t port;
    char log[160];
    char db[160];
    char sock[160];
};

/*
 * Starts gwd with -p 0 -b 127.0.0.1 --db DIR/gw.db --control DIR/gwd.sock
 * and `args` (NULL-terminated) after them (-b 127.0.0.1 is left out when
 * args has a -b of its own); `nofile` > 0 sets RLIMIT_NOFILE in
 * the child. Waits (<= 15 s) for its "ready: port N" log line. Returns 0, or
 * -1 (the process, if any, is killed).
 */
int gwd_start(struct gwd *g, const struct gwt_dir *d, const char *const *args, long nofile);
/* Writes `json` to DIR/gwd.json and starts gwd with `-c` it (as gwd_start). */
int gwd_start_config(struct gwd *g, const struct gwt_dir *d, const char *json);
/* SIGTERM, then waits (<= 20 s; then SIGKILL). Returns the exit status, or -1. */
int gwd_stop(struct gwd *g);
/* Waits (<= timeout_ms, then SIGKILL) for gwd to exit by itself. Returns
 * the exit status, or -1. */
int gwd_wait(struct gwd *g, int timeout_ms);
/* Sends a signal. */
void gwd_signal(const struct gwd *g, int sig);
/* Counts log lines containing `needle`. */
int gwd_log_count(const struct gwd *g, const char *needle);
/* Waits (<= timeout_ms) until the log has at least `n` lines with needle. */
bool gwd_log_wait(const struct gwd *g, const char *needle, int n, int timeout_ms);
/* True while the process runs. */
bool gwd_alive(const struct gwd *g);
/* Sends one request line (with its newline) to gwd's control socket and reads
 * the reply line into buf (5 s at most). Returns its length, or -1. */
int gwd_ctl(const struct gwd *g, const char *req, char *buf, size_t len);

/* Runs gwd with argv (NULL-terminated, argv[0] excluded) to completion,
 * capturing stderr+stdout into out. Returns the exit status or -1. */
int gwd_run(const char *const *args, char *out, size_t outlen);

/* An in-test backend process on 127.0.0.1, TCP and UDP on one port. */
struct gwt_backend {
    pid_t pid;
    uint16_t port;
    char log[160]; /* lines "fin PEER" / "rst PEER" / "accept PEER" */
};

/* Starts one (port 0 = any free port for both protocols). Returns 0 or -1. */
int gwt_backend_start(struct gwt_backend *b, const struct gwt_dir *d, const char *name,
                      uint16_t port);
/* Stops it (SIGKILL when `kill_hard`, else SIGTERM) and reaps it. */
void gwt_backend_stop(struct gwt_backend *b, bool kill_hard);
/* Counts log lines beginning with `prefix`. */
int gwt_backend_count(const struct gwt_backend *b, const char *prefix);
/* A suite's teardown: stops gwd (when it runs), the `n` backends of `be`
 * (SIGTERM), and removes the test directory. */
void gwt_teardown(struct gwd *g, struct gwt_backend *be, int n, struct gwt_dir *d);

/* Counts "WHAT IP:PORT" lines whose PORT is in [lo, hi]: flows that came
 * through the NAT pool lo-hi (health checks come from elsewhere). */
int gwt_backend_count_nat(const struct gwt_backend *b, const char *what, unsigned lo, unsigned hi);
/* A free port on 127.0.0.1 for both TCP and UDP (bound then released). */
uint16_t gwt_free_port(void);

/* TCP client: bound to src (port 0), connected to 127.0.0.1:port, 10 s
 * send/receive timeouts. Returns the fd or -1. */
int gwt_tcp_connect(const char *src, uint16_t port);
/* A TCP socket listening on 127.0.0.1, a port the kernel picks, with this
 * backlog (it never accepts unless the caller does). Returns the fd and the
 * port in *port, or -1. */
int gwt_tcp_listen(int backlog, uint16_t *port);
/* UDP client bound to src, connected to 127.0.0.1:port, 5 s timeout. */
int gwt_udp_socket(const char *src, uint16_t port);
/* Reads one line (without the newline) into buf. Returns its length or -1. */
int gwt_read_line(int fd, char *buf, size_t len);
/* Reads exactly len bytes. Returns 0 or -1 (EOF, error, timeout). */
int gwt_read_full(int fd, void *buf, size_t len);
/* Writes all. Returns 0 or -1. */
int gwt_write_full(int fd, const void *buf, size_t len);
/* The local endpoint of fd as "IP:PORT". */
char *gwt_local(int fd, char *buf, size_t len);

/*
 * Store queries on a read-only connection; each retried for up to
 * timeout_ms while the answer is not the expected one (write-behind).
 * gwt_db_int returns the first column of the first row of `sql` as an
 * integer (-1 on error), waiting until it equals `want` (want < 0: no wait).
 */
long long gwt_db_int(const char *db, const char *sql, long long want, int timeout_ms);
/* The first column of the first row as text into buf ("" when no row). */
int gwt_db_text(const char *db, const char *sql, char *buf, size_t len, int timeout_ms);

/* Milliseconds of a monotonic clock. */
uint64_t gwt_ms(void);
/* Sleeps ms. */
void gwt_sleep_ms(int ms);

#endif /* GW_HARNESS_H */
