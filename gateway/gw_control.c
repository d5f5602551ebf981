/*
 * gw_control.c - the control server: a Unix stream socket on gwd's loop, one
 * JSON request per line in, one reply (or event) per line out.
 *
 * Nothing here blocks or grows without bound: sockets are non-blocking, a
 * request line is capped at CTL_MAX_LINE, a client's pending output at
 * out_max (past it the client is cut off), a long reply is produced in steps
 * only while the client drains it, the number of clients is capped and idle
 * or stalled clients are closed. Closing a client always happens from its own
 * watcher callback, never from inside gwd's event fan-out.
 */
#include "gateway/gw_control.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "gateway/gw_cmd.h"
#include "gateway/gwd.h"

#define CTL_READ_CHUNK 16384
#define CTL_ACCEPT_BATCH 16

struct ctl_client {
    struct gw_control *ctl; /* borrowed */
    int fd;
    ev_io rio, wio;
    ev_timer timer; /* idle / stall check */
    struct ctl_linebuf in;
    char *out; /* owned; pending output is out[out_off..out_len) */
    size_t out_off, out_len, out_cap;
    const struct ctl_job_ops *job_ops;
    void *job;               /* owned through job_ops->done */
    unsigned events;         /* subscribed kinds; 0 = not a subscriber */
    bool eof;                /* the client shut its side: finish replies, then close */
    bool closing;            /* no more requests: flush the output, then close */
    bool dead;               /* close at the next callback (output overflow) */
    ev_tstamp last_progress; /* last byte read or written */
    LIST_ENTRY(ctl_client) link;
};

struct gw_control {
    struct gw_ctx *ctx; /* borrowed */
    struct gw_control_opts opts;
    int fd;
    ev_io io;
    ev_timer accept_retry; /* accepting paused after EMFILE/ENFILE */
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    dev_t dev;
    ino_t ino;
    LIST_HEAD(, ctl_client) clients;
    unsigned n_clients;
    unsigned n_subscribers;
    struct gw_control_stats st;
    json_t *conf; /* owned; the config's "control" section at start (in force) */
};

static void client_close(struct ctl_client *c, const char *why);
static void client_process(struct ctl_client *c);
static void client_flush(struct ctl_client *c);
static void control_on_event(void *arg, const struct gw_event *ev);

void gw_control_opts_default(struct gw_control_opts *o)
{
    o->mode = CTL_DEFAULT_MODE;
    o->owner = (uid_t)-1;
    o->group = (gid_t)-1;
    o->max_clients = CTL_DEFAULT_MAX_CLIENTS;
    o->idle_ms = CTL_DEFAULT_IDLE_MS;
    o->out_max = CTL_DEFAULT_OUT_MAX;
}

struct gw_ctx *ctl_client_ctx(const struct ctl_client *c)
{
    return c->ctl->ctx;
}

size_t ctl_client_pending(const struct ctl_client *c)
{
    return c->out_len - c->out_off;
}

/* Marks the client for closing from its write watcher's next callback. */
static void client_kill(struct ctl_client *c)
{
    if (c->dead)
        return;
    c->dead = true;
    ev_io_stop(c->ctl->ctx->loop, &c->rio);
    ev_feed_event(c->ctl->ctx->loop, &c->wio, EV_WRITE);
}

int ctl_client_write(struct ctl_client *c, const char *data, size_t len)
{
    size_t pending = c->out_len - c->out_off;

    if (c->dead)
        return -ENOBUFS;
    if (pending + len > c->ctl->opts.out_max) {
        c->ctl->st.cut_overflow++;
        gw_log(GW_LOG_WARN,
               "control: client fd %d does not read its replies (%zu bytes "
               "pending): disconnected",
               c->fd, pending);
        client_kill(c);
        return -ENOBUFS;
    }
    if (c->out_off > 0 && c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_cap - c->out_len < len) {
        size_t cap;
        char *nb;
        if (c->out_off > 0) {
            memmove(c->out, c->out + c->out_off, pending);
            c->out_len = pending;
            c->out_off = 0;
        }
        cap = c->out_cap ? c->out_cap : 4096;
        while (cap - c->out_len < len)
            cap *= 2;
        if (cap != c->out_cap) {
            nb = realloc(c->out, cap);
            if (!nb) {
                client_kill(c);
                return -ENOBUFS;
            }
            c->out = nb;
            c->out_cap = cap;
        }
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    if (!ev_is_active(&c->wio))
        ev_io_start(c->ctl->ctx->loop, &c->wio);
    return 0;
}

int ctl_client_reply(struct ctl_client *c, const json_t *id, json_t *result)
{
    size_t len;
    char *line = ctl_reply_ok(id, result, &len);
    int rc;

    if (!line)
        return ctl_client_fail(c, id, CTL_ERR_INTERNAL, "out of memory");
    rc = ctl_client_write(c, line, len);
    free(line);
    return rc;
}

int ctl_client_fail(struct ctl_client *c, const json_t *id, enum ctl_err code, const char *fmt, ...)
{
    char msg[512];
    size_t len;
    char *line;
    va_list ap;
    int rc;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if ((unsigned)code < CTL_ERR_COUNT)
        c->ctl->st.errors[code]++;
    line = ctl_reply_error(id, code, msg, &len);
    if (!line) {
        client_kill(c);
        return -ENOMEM;
    }
    rc = ctl_client_write(c, line, len);
    free(line);
    return rc;
}

int ctl_client_start_job(struct ctl_client *c, const struct ctl_job_ops *ops, void *state)
{
    if (c->job_ops)
        return -EBUSY;
    c->job_ops = ops;
    c->job = state;
    /* requests behind this one wait; the write watcher drives the job */
    ev_io_stop(c->ctl->ctx->loop, &c->rio);
    if (!ev_is_active(&c->wio))
        ev_io_start(c->ctl->ctx->loop, &c->wio);
    return 0;
}

bool ctl_client_subscribed(const struct ctl_client *c)
{
    return c->events != 0;
}

int ctl_client_subscribe(struct ctl_client *c, unsigned events)
{
    struct gw_control *ctl = c->ctl;

    if (c->events) {
        c->events = events;
        return 0;
    }
    if (ctl->n_subscribers == 0 && gw_subscribe(ctl->ctx, control_on_event, ctl) < 0)
        return -ENOMEM;
    ctl->n_subscribers++;
    c->events = events;
    return 0;
}

static void job_end(struct ctl_client *c)
{
    const struct ctl_job_ops *ops = c->job_ops;
    void *job = c->job;

    c->job_ops = NULL;
    c->job = NULL;
    if (ops && ops->done)
        ops->done(job);
}

static void client_close(struct ctl_client *c, const char *why)
{
    struct gw_control *ctl = c->ctl;
    struct ev_loop *loop = ctl->ctx->loop;

    gw_log(GW_LOG_DEBUG, "control: client fd %d closed: %s", c->fd, why);
    ev_io_stop(loop, &c->rio);
    ev_io_stop(loop, &c->wio);
    ev_timer_stop(loop, &c->timer);
    job_end(c);
    if (c->events) {
        c->events = 0;
        if (--ctl->n_subscribers == 0)
            gw_unsubscribe(ctl->ctx, control_on_event, ctl);
    }
    close(c->fd);
    ctl_linebuf_free(&c->in);
    free(c->out);
    LIST_REMOVE(c, link);
    ctl->n_clients--;
    free(c);
}

/* Runs one request line. */
static void client_handle_line(struct ctl_client *c, const char *line, size_t len)
{
    struct ctl_request req;
    struct ctl_error err;

    c->ctl->st.requests++;
    if (ctl_request_parse(&req, line, len, &err) != CTL_OK)
        ctl_client_fail(c, req.id, err.code, "%s", err.message);
    else
        gw_cmd_run(c, &req);
    ctl_request_clear(&req);
}

/* Runs the complete lines buffered, until a job starts or the client goes. */
static void client_process(struct ctl_client *c)
{
    char *line;
    size_t len;
    int r;

    while (!c->job_ops && !c->closing && !c->dead) {
        r = ctl_linebuf_next(&c->in, &line, &len);
        if (r == 0)
            break;
        if (r < 0) {
            c->ctl->st.cut_line++;
            ctl_client_fail(c, NULL, CTL_ERR_LINE_TOO_LONG,
                            "request line over %d bytes: closing the connection", CTL_MAX_LINE);
            c->closing = true;
            ev_io_stop(c->ctl->ctx->loop, &c->rio);
            break;
        }
        if (len == 0)
            continue;
        client_handle_line(c, line, len);
    }
}

/* Closes the client when it has nothing left to do; returns true then. */
static bool client_maybe_done(struct ctl_client *c)
{
    if (c->dead) {
        client_close(c, "cut off");
        return true;
    }
    /* end of input ends a subscription too: a subscriber keeps its side open */
    if ((c->eof || c->closing) && !c->job_ops && ctl_client_pending(c) == 0) {
        client_close(c, c->closing ? "closing" : "end of input");
        return true;
    }
    return false;
}

/* Writes what is pending; stops the write watcher when nothing is left. */
static void client_flush(struct ctl_client *c)
{
    ssize_t n;

    while (c->out_off < c->out_len) {
        n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            c->last_progress = ev_now(c->ctl->ctx->loop);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        /* the peer is gone */
        c->out_off = c->out_len = 0;
        c->dead = true;
        return;
    }
    c->out_off = c->out_len = 0;
    if (!c->job_ops)
        ev_io_stop(c->ctl->ctx->loop, &c->wio);
}

static void client_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct ctl_client *c = w->data;
    int r;

    (void)loop;
    (void)revents;
    if (c->dead) {
        client_close(c, "cut off");
        return;
    }
    client_flush(c);
    if (c->job_ops && !c->dead && ctl_client_pending(c) < CTL_OUT_HIGH) {
        r = c->job_ops->step(c, c->job);
        if (r != 0)
            job_end(c);
        if (r < 0)
            c->dead = true;
        if (r != 0 && !c->dead) {
            client_process(c);
            if (!c->job_ops && !c->eof && !c->closing && !c->dead)
                ev_io_start(c->ctl->ctx->loop, &c->rio);
        }
        client_flush(c);
    }
    client_maybe_done(c);
}

static void client_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct ctl_client *c = w->data;
    size_t avail;
    ssize_t n;
    char *p;

    (void)revents;
    p = ctl_linebuf_space(&c->in, CTL_READ_CHUNK, &avail);
    if (!p) {
        client_close(c, "out of memory");
        return;
    }
    n = recv(c->fd, p, avail, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        client_close(c, "read error");
        return;
    }
    if (n == 0) {
        /* end of input: a last line without its newline still counts */
        c->eof = true;
        ev_io_stop(loop, &c->rio);
        if (ctl_linebuf_pending(&c->in) > 0) {
            p[0] = '\n';
            ctl_linebuf_commit(&c->in, 1);
        }
    } else {
        ctl_linebuf_commit(&c->in, (size_t)n);
        c->last_progress = ev_now(loop);
    }
    client_process(c);
    client_flush(c);
    client_maybe_done(c);
}

static void client_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct ctl_client *c = w->data;
    ev_tstamp idle = c->ctl->opts.idle_ms / 1000.0;

    (void)revents;
    if (c->dead) {
        client_close(c, "cut off");
        return;
    }
    if (ev_now(loop) - c->last_progress < idle)
        return;
    /* a subscriber with nothing pending is waiting for events, not idle */
    if (c->events && ctl_client_pending(c) == 0) {
        c->last_progress = ev_now(loop);
        return;
    }
    c->ctl->st.cut_idle++;
    gw_log(GW_LOG_INFO, "control: client fd %d idle or stalled for %u ms: disconnected", c->fd,
           c->ctl->opts.idle_ms);
    client_close(c, "idle");
}

/* Turns a client away at max_clients: one best-effort error line, then close. */
static void control_refuse(struct gw_control *ctl, int fd)
{
    char msg[128];
    size_t len;
    char *line;

    snprintf(msg, sizeof(msg), "too many control clients (%u): try again later",
             ctl->opts.max_clients);
    line = ctl_reply_error(NULL, CTL_ERR_BUSY, msg, &len);
    if (line) {
        ssize_t n = send(fd, line, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)n;
        free(line);
    }
    ctl->st.refused_busy++;
    ctl->st.errors[CTL_ERR_BUSY]++;
    close(fd);
}

static void control_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct gw_control *ctl = w->data;
    struct ctl_client *c;
    ev_tstamp idle = ctl->opts.idle_ms / 1000.0;

    (void)revents;
    for (int i = 0; i < CTL_ACCEPT_BATCH; i++) {
        int fd = accept4(ctl->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* the socket stays readable: pause rather than spin */
                gw_log(GW_LOG_WARN, "control: accept: %s: pausing for 1 s", strerror(errno));
                ev_io_stop(loop, &ctl->io);
                ev_timer_start(loop, &ctl->accept_retry);
            } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                       errno != ECONNABORTED) {
                gw_log(GW_LOG_WARN, "control: accept: %s", strerror(errno));
            }
            return;
        }
        if (ctl->n_clients >= ctl->opts.max_clients) {
            control_refuse(ctl, fd);
            continue;
        }
        c = calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        c->ctl = ctl;
        c->fd = fd;
        ctl_linebuf_init(&c->in, CTL_MAX_LINE);
        ev_io_init(&c->rio, client_read_cb, fd, EV_READ);
        ev_io_init(&c->wio, client_write_cb, fd, EV_WRITE);
        ev_timer_init(&c->timer, client_timer_cb, idle / 2, idle / 2);
        c->rio.data = c->wio.data = c->timer.data = c;
        c->last_progress = ev_now(loop);
        LIST_INSERT_HEAD(&ctl->clients, c, link);
        ctl->n_clients++;
        ctl->st.accepted++;
        ev_io_start(loop, &c->rio);
        if (ctl->opts.idle_ms)
            ev_timer_start(loop, &c->timer);
    }
}

static void control_accept_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct gw_control *ctl = w->data;

    (void)revents;
    ev_io_start(loop, &ctl->io);
}

/* ---- events to subscribers ------------------------------------------------ */

static unsigned nat_event_kind(enum nat_event_type t)
{
    switch (t) {
    case NAT_EV_OPEN:
        return CTL_EVK_OPEN;
    case NAT_EV_CLOSE:
        return CTL_EVK_CLOSE;
    case NAT_EV_EXPIRE:
        return CTL_EVK_EXPIRE;
    case NAT_EV_REFUSE:
        return CTL_EVK_REFUSE;
    case NAT_EV_BLOCK_ALLOC:
    case NAT_EV_BLOCK_FREE:
        return CTL_EVK_BLOCK;
    default:
        return 0;
    }
}

/* Formats a libnat event as one line. Returns its length or -1. */
static int format_nat_event(char *buf, size_t size, const struct gw_event *ev)
{
    const struct nat_event *ne = ev->nat;
    char t[CTL_TIME_STRLEN], reason[96], sess[CTL_SESSION_JSON_MAX];
    char cip[NAT_ADDR_STRLEN], bip[NAT_ADDR_STRLEN], bname[CTL_NAME_MAX * 6 + 3];
    bool closed = ne->type == NAT_EV_CLOSE || ne->type == NAT_EV_EXPIRE;
    const char *proto = nat_proto_name(ne->s.key.proto);
    int n;

    ctl_time_format(ev->time ? ev->time : ne->time, t);
    if (!ne->reason || ctl_json_quote(reason, sizeof(reason), ne->reason) < 0)
        strcpy(reason, "null");
    if (ctl_json_quote(bname, sizeof(bname), ev->backend ? ev->backend : "") < 0)
        strcpy(bname, "\"\"");
    if (ne->type == NAT_EV_BLOCK_ALLOC || ne->type == NAT_EV_BLOCK_FREE) {
        n = snprintf(buf, size,
                     "{\"event\":\"%s\",\"time\":\"%s\",\"block\":{\"client_ip\":\"%s\","
                     "\"nat_ip\":\"%s\",\"nat_port\":%u,\"nat_port_last\":%u}}\n",
                     nat_event_name(ne->type), t, nat_addr_format(&ne->s.key.client.addr, cip),
                     nat_addr_format(&ne->s.ext.addr, bip), ne->s.ext.port, ne->port_last);
    } else if (ne->type == NAT_EV_REFUSE) {
        n = snprintf(buf, size,
                     "{\"event\":\"refuse\",\"time\":\"%s\",\"reason\":%s,\"session\":{"
                     "\"proto\":\"%s\",\"client_ip\":\"%s\",\"client_port\":%u,\"backend\":%s,"
                     "\"backend_ip\":\"%s\",\"backend_port\":%u}}\n",
                     t, reason, proto ? proto : "unknown",
                     nat_addr_format(&ne->s.key.client.addr, cip), ne->s.key.client.port, bname,
                     nat_addr_format(&ne->s.key.dst.addr, bip), ne->s.key.dst.port);
    } else {
        if (ctl_session_format(sess, sizeof(sess), &ne->s, ev->backend,
                               closed ? NAT_STATE_CLOSED : -1, closed ? ne->time : 0,
                               closed ? ne->reason : NULL) < 0)
            return -1;
        n = snprintf(buf, size, "{\"event\":\"%s\",\"time\":\"%s\",\"reason\":%s,\"session\":%s}\n",
                     nat_event_name(ne->type), t, reason, sess);
    }
    if (n < 0 || (size_t)n >= size)
        return -1;
    return n;
}

static int format_health_event(char *buf, size_t size, const struct gw_event *ev)
{
    const struct gw_server *s = ev->server;
    char t[CTL_TIME_STRLEN], b[CTL_NAME_MAX * 6 + 3], sv[CTL_NAME_MAX * 6 + 3];
    char os[64], ns[64], why[128];
    int n;

    ctl_time_format(ev->time, t);
    if (ctl_json_quote(b, sizeof(b), s && s->backend ? s->backend->name : "") < 0 ||
        ctl_json_quote(sv, sizeof(sv), s ? s->conf.name : "") < 0 ||
        ctl_json_quote(os, sizeof(os), ev->old_state ? ev->old_state : "") < 0 ||
        ctl_json_quote(ns, sizeof(ns), ev->new_state ? ev->new_state : "") < 0 ||
        ctl_json_quote(why, sizeof(why), ev->why ? ev->why : "") < 0)
        return -1;
    n = snprintf(buf, size,
                 "{\"event\":\"health\",\"time\":\"%s\",\"backend\":%s,\"server\":%s,"
                 "\"old_state\":%s,\"new_state\":%s,\"why\":%s}\n",
                 t, b, sv, os, ns, why);
    if (n < 0 || (size_t)n >= size)
        return -1;
    return n;
}

/* gwd's event fan-out calls this: queue the event for each subscriber that
 * wants it. Never closes a client here (client_kill defers it). */
static void control_on_event(void *arg, const struct gw_event *ev)
{
    struct gw_control *ctl = arg;
    struct ctl_client *c;
    char line[CTL_SESSION_JSON_MAX + 512];
    unsigned kind;
    int n;

    if (ev->type == GW_EV_NAT) {
        kind = nat_event_kind(ev->nat->type);
        n = kind ? format_nat_event(line, sizeof(line), ev) : -1;
    } else {
        kind = CTL_EVK_HEALTH;
        n = format_health_event(line, sizeof(line), ev);
    }
    if (n < 0)
        return;
    LIST_FOREACH(c, &ctl->clients, link)
    {
        if ((c->events & kind) && !c->dead) {
            if (ctl_client_write(c, line, (size_t)n) == 0)
                ctl->st.events_sent++;
        }
    }
}

/* ---- the socket ----------------------------------------------------------- */

/* Fills *sa with the Unix address `path` (shorter than sun_path: checked at start). */
static void unix_addr(struct sockaddr_un *sa, const char *path)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    memcpy(sa->sun_path, path, strlen(path) + 1);
}

/* Checks what is at `path` now: nothing, a stale socket (removed), or a live
 * one or another kind of file (refused). Returns 0 or -errno. */
static int control_claim_path(const char *path)
{
    struct sockaddr_un sa;
    struct stat st;
    int fd, rc;

    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode)) {
        gw_log(GW_LOG_ERROR,
               "control: %s exists and is not a socket: not touching it "
               "(remove it or choose another --control path)",
               path);
        return -EEXIST;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    unix_addr(&sa, path);
    rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    if (rc == 0) {
        close(fd);
        gw_log(GW_LOG_ERROR,
               "control: %s is in use by a running process (another gwd?): "
               "not stealing it; stop that one or choose another --control path",
               path);
        return -EADDRINUSE;
    }
    rc = errno;
    close(fd);
    if (rc != ECONNREFUSED) {
        gw_log(GW_LOG_ERROR, "control: cannot check %s: %s", path, strerror(rc));
        return -rc;
    }
    if (unlink(path) < 0 && errno != ENOENT) {
        rc = errno;
        gw_log(GW_LOG_ERROR, "control: cannot remove the stale socket %s: %s", path, strerror(rc));
        return -rc;
    }
    gw_log(GW_LOG_INFO, "control: replaced the stale socket %s", path);
    return 0;
}

static int control_bind(struct gw_control *ctl)
{
    struct sockaddr_un sa;
    struct stat st;
    mode_t old;
    int fd, rc;

    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    unix_addr(&sa, ctl->path);
    old = umask(0777 & ~ctl->opts.mode);
    rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (rc < 0) {
        rc = -errno;
        gw_log(GW_LOG_ERROR, "control: bind %s: %s", ctl->path, strerror(-rc));
        goto out_close;
    }
    if (chmod(ctl->path, ctl->opts.mode) < 0 ||
        ((ctl->opts.owner != (uid_t)-1 || ctl->opts.group != (gid_t)-1) &&
         chown(ctl->path, ctl->opts.owner, ctl->opts.group) < 0)) {
        rc = -errno;
        gw_log(GW_LOG_ERROR, "control: setting mode/owner of %s: %s", ctl->path, strerror(-rc));
        goto out_unlink;
    }
    if (listen(fd, 64) < 0 || stat(ctl->path, &st) < 0) {
        rc = -errno;
        gw_log(GW_LOG_ERROR, "control: listen %s: %s", ctl->path, strerror(-rc));
        goto out_unlink;
    }
    ctl->dev = st.st_dev;
    ctl->ino = st.st_ino;
    ctl->fd = fd;
    return 0;
out_unlink:
    unlink(ctl->path);
out_close:
    close(fd);
    return rc;
}

int gw_control_start_opts(struct gw_ctx *ctx, const char *path, const struct gw_control_opts *o)
{
    struct gw_control *ctl;
    char def[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int rc;

    if (ctx->control)
        return -EALREADY;
    if (!path || !*path) {
        path = gw_default_socket_path(def, sizeof(def));
        if (!path) {
            gw_log(GW_LOG_ERROR, "control: the default socket path is too long "
                                 "(check GW_SOCKET and XDG_RUNTIME_DIR)");
            return -ENAMETOOLONG;
        }
    }
    if (strlen(path) >= sizeof(def)) {
        gw_log(GW_LOG_ERROR, "control: socket path too long (max %zu bytes): %s", sizeof(def) - 1,
               path);
        return -ENAMETOOLONG;
    }
    ctl = calloc(1, sizeof(*ctl));
    if (!ctl)
        return -ENOMEM;
    ctl->ctx = ctx;
    ctl->opts = *o;
    if (ctl->opts.max_clients == 0)
        ctl->opts.max_clients = CTL_DEFAULT_MAX_CLIENTS;
    if (ctl->opts.out_max < CTL_OUT_HIGH * 2)
        ctl->opts.out_max = CTL_OUT_HIGH * 2;
    ctl->fd = -1;
    LIST_INIT(&ctl->clients);
    memcpy(ctl->path, path, strlen(path) + 1);
    rc = control_claim_path(ctl->path);
    if (rc == 0)
        rc = control_bind(ctl);
    if (rc < 0) {
        free(ctl);
        return rc;
    }
    ev_io_init(&ctl->io, control_accept_cb, ctl->fd, EV_READ);
    ctl->io.data = ctl;
    ev_timer_init(&ctl->accept_retry, control_accept_retry_cb, 1.0, 0.0);
    ctl->accept_retry.data = ctl;
    ev_io_start(ctx->loop, &ctl->io);
    ctx->control = ctl;
    gw_log(GW_LOG_INFO, "control: listening on %s (mode %04o)", ctl->path,
           (unsigned)ctl->opts.mode);
    return 0;
}

/* A user (or group) name known here, else a number: the id, or -1. */
static long id_lookup(const char *s, bool user)
{
    if (user) {
        struct passwd *pw = getpwnam(s);
        if (pw)
            return (long)pw->pw_uid;
    } else {
        struct group *gr = getgrnam(s);
        if (gr)
            return (long)gr->gr_gid;
    }
    if (*s && strspn(s, "0123456789") == strlen(s))
        return (long)strtoul(s, NULL, 10);
    return -1;
}

/* Reads an unsigned number from the environment variable `name` (base 0:
 * 0660 is octal). Returns 0 and *out, or -1 when unset or not a number. */
static int env_number(const char *name, unsigned long *out)
{
    const char *s = getenv(name);
    char *end;
    unsigned long v;

    if (!s || !*s)
        return -1;
    errno = 0;
    v = strtoul(s, &end, 0);
    if (errno || *end) {
        gw_log(GW_LOG_WARN, "control: ignoring %s=%s: not a number", name, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* A user (or group) from the environment variable `name`: the id, or -1 when
 * unset or unknown (with a warning). */
static long env_id(const char *name, bool user)
{
    const char *s = getenv(name);
    long id;

    if (!s || !*s)
        return -1;
    if ((id = id_lookup(s, user)) < 0)
        gw_log(GW_LOG_WARN, "control: ignoring %s=%s: no such %s", name, s,
               user ? "user" : "group");
    return id;
}

void gw_control_opts_from_env(struct gw_control_opts *o)
{
    unsigned long v;
    long id;

    if (env_number("GW_CONTROL_MODE", &v) == 0 && v <= 07777)
        o->mode = (mode_t)v;
    if (env_number("GW_CONTROL_MAX_CLIENTS", &v) == 0 && v > 0 && v <= 100000)
        o->max_clients = (unsigned)v;
    if (env_number("GW_CONTROL_IDLE_MS", &v) == 0 && v <= UINT32_MAX)
        o->idle_ms = (uint32_t)v;
    if (env_number("GW_CONTROL_OUT_MAX", &v) == 0)
        o->out_max = v;
    if ((id = env_id("GW_CONTROL_OWNER", true)) >= 0)
        o->owner = (uid_t)id;
    if ((id = env_id("GW_CONTROL_GROUP", false)) >= 0)
        o->group = (gid_t)id;
}

/* The config's owner (user) or group `s`: 0 and *id (-1 when s is NULL), or
 * -ENOENT (logged) when it is not known here. */
static int config_id(const char *s, bool user, long *id)
{
    *id = -1;
    if (s && (*id = id_lookup(s, user)) < 0) {
        gw_log(GW_LOG_ERROR, "control.%s: no such %s \"%s\"", user ? "owner" : "group",
               user ? "user" : "group", s);
        return -ENOENT;
    }
    return 0;
}

int gw_control_opts_from_config(struct gw_control_opts *o, const struct gw_config *cfg)
{
    long uid, gid;

    if (config_id(cfg->control_owner, true, &uid) < 0 ||
        config_id(cfg->control_group, false, &gid) < 0)
        return -ENOENT;
    o->mode = (mode_t)cfg->control_mode;
    o->max_clients = cfg->control_max_clients;
    o->idle_ms = cfg->control_idle_ms;
    o->out_max = (size_t)cfg->control_max_output;
    if (uid >= 0)
        o->owner = (uid_t)uid;
    if (gid >= 0)
        o->group = (gid_t)gid;
    return 0;
}

int gw_control_start(struct gw_ctx *ctx, const char *path)
{
    struct gw_control_opts o;
    int rc;

    gw_control_opts_default(&o);
    if (ctx->cfg && (rc = gw_control_opts_from_config(&o, ctx->cfg)) < 0)
        return rc;
    gw_control_opts_from_env(&o);
    if ((rc = gw_control_start_opts(ctx, path, &o)) < 0)
        return rc;
    /* what show config says of the socket: a reload does not change it */
    if (ctx->cfg) {
        struct gw_control *ctl = ctx->control;
        json_t *j = gw_config_to_json(ctx->cfg);
        ctl->conf = json_incref(json_object_get(j, "control"));
        json_decref(j);
    }
    return 0;
}

json_t *gw_control_conf_json(const struct gw_ctx *ctx)
{
    const struct gw_control *ctl = ctx->control;

    return ctl ? ctl->conf : NULL;
}

void gw_control_stop(struct gw_ctx *ctx)
{
    struct gw_control *ctl = ctx->control;
    struct stat st;

    if (!ctl)
        return;
    while (!LIST_EMPTY(&ctl->clients))
        client_close(LIST_FIRST(&ctl->clients), "shutdown");
    ev_io_stop(ctx->loop, &ctl->io);
    ev_timer_stop(ctx->loop, &ctl->accept_retry);
    close(ctl->fd);
    /* remove the file only if it is still ours */
    if (stat(ctl->path, &st) == 0 && st.st_dev == ctl->dev && st.st_ino == ctl->ino)
        unlink(ctl->path);
    json_decref(ctl->conf);
    free(ctl);
    ctx->control = NULL;
}

void gw_control_get_stats(const struct gw_ctx *ctx, struct gw_control_stats *out)
{
    const struct gw_control *ctl = ctx->control;

    memset(out, 0, sizeof(*out));
    if (!ctl)
        return;
    *out = ctl->st;
    out->clients = ctl->n_clients;
    out->subscribers = ctl->n_subscribers;
}

void gw_control_stats_json(const struct gw_ctx *ctx, json_t *obj)
{
    struct gw_control_stats st;
    json_t *c, *errs;

    gw_control_get_stats(ctx, &st);
    c = json_object();
    errs = json_object();
    if (!c || !errs) {
        json_decref(c);
        json_decref(errs);
        return;
    }
    for (int i = 1; i < CTL_ERR_COUNT; i++)
        json_object_set_new(errs, ctl_err_name((enum ctl_err)i),
                            json_integer((json_int_t)st.errors[i]));
    json_object_set_new(c, "clients", json_integer((json_int_t)st.clients));
    json_object_set_new(c, "subscribers", json_integer((json_int_t)st.subscribers));
    json_object_set_new(c, "accepted", json_integer((json_int_t)st.accepted));
    json_object_set_new(c, "requests", json_integer((json_int_t)st.requests));
    json_object_set_new(c, "errors", errs);
    json_object_set_new(c, "refused_busy", json_integer((json_int_t)st.refused_busy));
    json_object_set_new(c, "cut_overflow", json_integer((json_int_t)st.cut_overflow));
    json_object_set_new(c, "cut_idle", json_integer((json_int_t)st.cut_idle));
    json_object_set_new(c, "cut_line_too_long", json_integer((json_int_t)st.cut_line));
    json_object_set_new(c, "events_sent", json_integer((json_int_t)st.events_sent));
    json_object_set_new(obj, "control", c);
}
