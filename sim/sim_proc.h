/*
 * sim_proc.h - child processes for the lab and the tests: start a program
 * with its stdout on a pipe, wait for a line that says it is ready, stop it
 * by PID with SIGTERM (then SIGKILL) and reap it.
 */
#ifndef GW_SIM_PROC_H
#define GW_SIM_PROC_H

#include <stddef.h>
#include <sys/types.h>

struct sim_proc {
    pid_t pid;       /* 0 when not running */
    int out_fd;      /* read end of the child's stdout, -1 when closed */
    char ready[256]; /* the ready line, without its newline */
};

/*
 * Starts argv[0] (a path) with argv, stdout on a pipe, stderr to `err_path`
 * (NULL = inherited), stdin from /dev/null. Returns 0, or -errno.
 */
int sim_proc_start(struct sim_proc *p, char *const argv[], const char *err_path);

/*
 * Waits up to timeout_ms for a stdout line starting with `prefix` and keeps
 * it in p->ready. Returns 0, -ETIMEDOUT, or -ECHILD when the child ended or
 * closed stdout first.
 */
int sim_proc_wait_line(struct sim_proc *p, const char *prefix, int timeout_ms);

/*
 * Stops the child: SIGTERM, up to timeout_ms for it to exit, then SIGKILL.
 * Reaps it. Returns its exit status as waitpid reports it (or -1 when it was
 * not running). Closes the pipe. Safe to call twice.
 */
int sim_proc_stop(struct sim_proc *p, int timeout_ms);

/*
 * Reads the child's stdout to EOF (at most `max` bytes kept, NUL-terminated
 * into a malloc'd *out) and reaps it, both within timeout_ms (then it is
 * stopped with sim_proc_stop). Returns the exit status as waitpid reports
 * it, or -1.
 */
int sim_proc_collect(struct sim_proc *p, char **out, size_t max, int timeout_ms);

/*
 * Waits up to timeout_ms for a line containing `needle` to appear in the text
 * file at `path` (a log another process writes); copies that line into
 * line (len bytes). Returns 0, or -ETIMEDOUT.
 */
int sim_wait_file_line(const char *path, const char *needle, char *line, size_t len,
                       int timeout_ms);

/* Parses "listening tcp=P udp=P" (either part optional): writes the ports
 * found (0 when absent). Returns 0, or -1 when the line is not one. */
int sim_parse_listening(const char *line, unsigned *tcp, unsigned *udp);

/* The directory of the running executable (from /proc/self/exe) into buf.
 * Returns 0 or -1. */
int sim_self_dir(char *buf, size_t len);

#endif /* GW_SIM_PROC_H */
