/*
 * gw_control.h - the control server inside gwd: the Unix socket, line
 * framing, per-client bounded buffers, streamed replies, subscribers, limits
 * and counters. gw_cmd.c runs the commands through the calls below.
 * gw_control_start/stop are declared in gwd.h.
 */
#ifndef GW_CONTROL_H
#define GW_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#include "gateway/gw_ctlproto.h"

struct gw_ctx;
struct gw_config;
struct gw_control;
struct ctl_client;

/* Defaults of struct gw_control_opts. */
#define CTL_DEFAULT_MODE 0660
#define CTL_DEFAULT_MAX_CLIENTS 64
#define CTL_DEFAULT_IDLE_MS 60000
#define CTL_DEFAULT_OUT_MAX (1024 * 1024) /* a client's pending output before it is cut off */
#define CTL_OUT_HIGH (64 * 1024)          /* a streamed reply pauses above this */

/* What the socket file and its clients are allowed. */
struct gw_control_opts {
    mode_t mode;          /* socket file mode, default 0660 */
    uid_t owner;          /* (uid_t)-1 = leave as created */
    gid_t group;          /* (gid_t)-1 = leave as created */
    unsigned max_clients; /* connected at once; more get "busy" and are closed */
    uint32_t idle_ms;     /* a client silent this long (and not subscribed) is closed;
                             a client whose pending output does not move this long too */
    size_t out_max;       /* pending output per client before it is disconnected */
};

/* Fills *o with the defaults above. */
void gw_control_opts_default(struct gw_control_opts *o);

/*
 * Sets *o from the config's "control" section (mode, owner, group,
 * max_clients, idle_timeout, max_output); owner and group names are looked
 * up here. Returns 0, or -ENOENT (logged) when a name is not known.
 */
int gw_control_opts_from_config(struct gw_control_opts *o, const struct gw_config *cfg);

/*
 * Overrides *o from the environment: GW_CONTROL_MODE (octal, e.g. 0600),
 * GW_CONTROL_OWNER and GW_CONTROL_GROUP (name or number),
 * GW_CONTROL_MAX_CLIENTS, GW_CONTROL_IDLE_MS (0 = no idle timeout),
 * GW_CONTROL_OUT_MAX (bytes). gw_control_start applies the defaults, then the
 * config, then these (the environment wins). Malformed values are ignored
 * with a warning.
 */
void gw_control_opts_from_env(struct gw_control_opts *o);

/*
 * Like gw_control_start with explicit options. Refuses to steal a socket a
 * live process answers on (-EADDRINUSE), or a path that is not a socket
 * (-EEXIST); replaces a stale one. Returns 0 or -errno (logged once here with
 * the path and what to check).
 */
int gw_control_start_opts(struct gw_ctx *ctx, const char *path, const struct gw_control_opts *o);

/* Counters of the control server (for show stats). */
struct gw_control_stats {
    uint64_t accepted;              /* connections accepted */
    uint64_t clients;               /* connected now */
    uint64_t subscribers;           /* subscribed now */
    uint64_t requests;              /* lines parsed */
    uint64_t errors[CTL_ERR_COUNT]; /* error replies, by code */
    uint64_t refused_busy;          /* turned away at max_clients */
    uint64_t cut_overflow;          /* disconnected: output over out_max */
    uint64_t cut_idle;              /* disconnected: idle or stalled */
    uint64_t cut_line;              /* disconnected: line over CTL_MAX_LINE */
    uint64_t events_sent;           /* event lines queued to subscribers */
};

/* Fills *out (zeroes when the control server is not running). */
void gw_control_get_stats(const struct gw_ctx *ctx, struct gw_control_stats *out);

/* ---- for gw_cmd.c --------------------------------------------------------- */

/* The daemon context a client belongs to. */
struct gw_ctx *ctl_client_ctx(const struct ctl_client *c);

/*
 * Queues a reply line (newline included) for the client. The line is copied.
 * Returns 0, or -ENOBUFS when the client's output went over out_max (the
 * client is then being disconnected: stop producing for it).
 */
int ctl_client_write(struct ctl_client *c, const char *data, size_t len);

/* Replies ok with `result` (stolen). Returns as ctl_client_write, or -ENOMEM. */
int ctl_client_reply(struct ctl_client *c, const json_t *id, json_t *result);

/* Replies with an error (counted by code). Returns as ctl_client_write. */
int ctl_client_fail(struct ctl_client *c, const json_t *id, enum ctl_err code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Bytes queued and not yet written to the client. */
size_t ctl_client_pending(const struct ctl_client *c);

/*
 * A reply produced in steps (show nat): step() is called when the client's
 * pending output is below CTL_OUT_HIGH, once per loop iteration at most,
 * until it returns 1 (done) or a negative errno (the client is closed).
 * done() frees the state (also when the client leaves first). While a job
 * runs, the client's further requests wait.
 */
struct ctl_job_ops {
    int (*step)(struct ctl_client *c, void *state);
    void (*done)(void *state);
};

/* Starts a job for the client (one at a time). Returns 0 or -EBUSY. */
int ctl_client_start_job(struct ctl_client *c, const struct ctl_job_ops *ops, void *state);

/* True when the client subscribed to events. */
bool ctl_client_subscribed(const struct ctl_client *c);

/* Makes the client a subscriber of the event kinds `events` (CTL_EVK_* bits)
 * until it leaves. Returns 0 or -ENOMEM. */
int ctl_client_subscribe(struct ctl_client *c, unsigned events);

/* The config's "control" section the running socket was started with
 * (borrowed; NULL when not started by gw_control_start): show config shows
 * it, since a reload does not change the socket. */
json_t *gw_control_conf_json(const struct gw_ctx *ctx);

/* Fills control-server fields of show stats into obj (adds "control"). */
void gw_control_stats_json(const struct gw_ctx *ctx, json_t *obj);

#endif /* GW_CONTROL_H */
