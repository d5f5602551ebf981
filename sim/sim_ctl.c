/*
 * sim_ctl.c - the control socket client.
 */
#include "sim/sim_ctl.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "sim/sim_util.h"

#define CTL_LINE_MAX (64u << 20) /* a show nat page can be long */

int sim_ctl_open(struct sim_ctl *c, const char *path, int timeout_ms, char *err, size_t errlen)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    int fd;

    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->next_id = 1;
    c->timeout_ms = timeout_ms;
    if (strlen(path) >= sizeof(sun.sun_path)) {
        snprintf(err, errlen, "control socket path too long: %s", path);
        return -ENAMETOOLONG;
    }
    strcpy(sun.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
        int e = errno;
        snprintf(err, errlen, "cannot reach gwd's control socket %s: %s", path, strerror(e));
        if (fd >= 0)
            close(fd);
        return -e;
    }
    c->fd = fd;
    return 0;
}

void sim_ctl_close(struct sim_ctl *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
    c->len = c->cap = 0;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads one line into a malloc'd string; NULL with err. */
static char *read_line(struct sim_ctl *c, char *err, size_t errlen)
{
    double deadline = sim_now_ms() + c->timeout_ms;

    for (;;) {
        char *nl = c->len ? memchr(c->buf, '\n', c->len) : NULL;
        if (nl != NULL) {
            size_t l = (size_t)(nl - c->buf);
            char *line = malloc(l + 1);
            if (line == NULL) {
                snprintf(err, errlen, "out of memory");
                return NULL;
            }
            memcpy(line, c->buf, l);
            line[l] = '\0';
            memmove(c->buf, nl + 1, c->len - l - 1);
            c->len -= l + 1;
            return line;
        }
        if (c->len + 65536 > c->cap) {
            size_t nc = c->cap ? c->cap * 2 : 131072;
            char *nb;
            if (nc > CTL_LINE_MAX) {
                snprintf(err, errlen, "control reply longer than %u bytes", CTL_LINE_MAX);
                return NULL;
            }
            nb = realloc(c->buf, nc);
            if (nb == NULL) {
                snprintf(err, errlen, "out of memory");
                return NULL;
            }
            c->buf = nb;
            c->cap = nc;
        }
        {
            struct pollfd pf = {.fd = c->fd, .events = POLLIN};
            double left = deadline - sim_now_ms();
            ssize_t n;
            if (left <= 0 || poll(&pf, 1, (int)left + 1) == 0) {
                snprintf(err, errlen, "no reply from gwd within %d ms", c->timeout_ms);
                return NULL;
            }
            n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
            if (n == 0) {
                snprintf(err, errlen, "gwd closed the control connection");
                return NULL;
            }
            if (n < 0) {
                if (errno == EINTR || errno == EAGAIN)
                    continue;
                snprintf(err, errlen, "control socket: %s", strerror(errno));
                return NULL;
            }
            c->len += (size_t)n;
        }
    }
}

json_t *sim_ctl_call(struct sim_ctl *c, const char *cmd, json_t *args, char *err, size_t errlen)
{
    json_t *req = json_object(), *reply = NULL, *result = NULL;
    uint64_t id = c->next_id++;
    char *text, *line = NULL;
    int rc;

    if (c->fd < 0) {
        json_decref(args);
        json_decref(req);
        snprintf(err, errlen, "control socket not open");
        return NULL;
    }
    json_object_set_new(req, "id", json_integer((json_int_t)id));
    json_object_set_new(req, "cmd", json_string(cmd));
    json_object_set_new(req, "args", args != NULL ? args : json_object());
    text = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    if (text == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    rc = send_all(c->fd, text, strlen(text));
    if (rc == 0)
        rc = send_all(c->fd, "\n", 1);
    free(text);
    if (rc < 0) {
        snprintf(err, errlen, "control socket: %s", strerror(-rc));
        return NULL;
    }
    for (int skipped = 0; skipped < 1000; skipped++) {
        json_error_t je;
        json_t *jid;
        free(line);
        line = read_line(c, err, errlen);
        if (line == NULL)
            return NULL;
        json_decref(reply);
        reply = json_loads(line, 0, &je);
        if (reply == NULL) {
            snprintf(err, errlen, "gwd sent a line that is not JSON: %s", je.text);
            goto out;
        }
        jid = json_object_get(reply, "id");
        if (json_is_integer(jid) && (uint64_t)json_integer_value(jid) == id)
            break; /* else an event or a stale reply: skip it */
    }
    if (json_is_true(json_object_get(reply, "ok"))) {
        result = json_incref(json_object_get(reply, "result"));
        if (result == NULL)
            result = json_null();
    } else {
        json_t *e = json_object_get(reply, "error");
        snprintf(err, errlen, "gwd: %s: %s",
                 json_string_value(json_object_get(e, "code")) ?: "error",
                 json_string_value(json_object_get(e, "message")) ?: "(no message)");
    }
out:
    free(line);
    json_decref(reply);
    return result;
}

static void copy_str(char *dst, size_t size, json_t *v)
{
    const char *s = json_string_value(v);

    snprintf(dst, size, "%s", s != NULL ? s : "");
}

int sim_ctl_find_session(struct sim_ctl *c, const char *proto, const char *client_ip,
                         unsigned client_port, struct sim_nat_entry *out, char *err, size_t errlen)
{
    json_int_t offset = 0;

    for (int page = 0; page < 100; page++) {
        json_t *args = json_pack("{s:s,s:s,s:i,s:I}", "proto", proto, "client", client_ip, "limit",
                                 1000, "offset", offset);
        json_t *res = sim_ctl_call(c, "show nat", args, err, errlen);
        json_t *rows, *row;
        size_t i, n;

        if (res == NULL)
            return -1;
        rows = json_object_get(res, "sessions");
        if (!json_is_array(rows)) {
            snprintf(err, errlen, "show nat: no sessions array in the reply");
            json_decref(res);
            return -1;
        }
        n = json_array_size(rows);
        json_array_foreach(rows, i, row)
        {
            if (json_integer_value(json_object_get(row, "client_port")) != (json_int_t)client_port)
                continue;
            memset(out, 0, sizeof(*out));
            copy_str(out->nat_ip, sizeof(out->nat_ip), json_object_get(row, "nat_ip"));
            out->nat_port = (unsigned)json_integer_value(json_object_get(row, "nat_port"));
            copy_str(out->backend, sizeof(out->backend), json_object_get(row, "backend"));
            copy_str(out->backend_ip, sizeof(out->backend_ip), json_object_get(row, "backend_ip"));
            out->backend_port = (unsigned)json_integer_value(json_object_get(row, "backend_port"));
            copy_str(out->state, sizeof(out->state), json_object_get(row, "state"));
            json_decref(res);
            return 1;
        }
        offset += (json_int_t)n;
        if (n == 0 || offset >= json_integer_value(json_object_get(res, "total"))) {
            json_decref(res);
            return 0;
        }
        json_decref(res);
    }
    return 0;
}
