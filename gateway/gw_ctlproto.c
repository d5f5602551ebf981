/*
 * gw_ctlproto.c - the control protocol shared by gwd and gwctl: framing,
 * request validation, replies, sessions as JSON, times, the socket path.
 */
#include "gateway/gw_ctlproto.h"

#include "db/db.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *const err_names[CTL_ERR_COUNT] = {
    [CTL_OK] = "ok",
    [CTL_ERR_BAD_JSON] = "bad_json",
    [CTL_ERR_BAD_REQUEST] = "bad_request",
    [CTL_ERR_UNKNOWN_COMMAND] = "unknown_command",
    [CTL_ERR_BAD_ARGUMENT] = "bad_argument",
    [CTL_ERR_NOT_FOUND] = "not_found",
    [CTL_ERR_LINE_TOO_LONG] = "line_too_long",
    [CTL_ERR_BUSY] = "busy",
    [CTL_ERR_UNAVAILABLE] = "unavailable",
    [CTL_ERR_INTERNAL] = "internal",
};

static const char *const cmd_names[CTL_CMD_COUNT] = {
    [CTL_CMD_VERSION] = "version",
    [CTL_CMD_SHOW_STATS] = "show stats",
    [CTL_CMD_SHOW_NAT] = "show nat",
    [CTL_CMD_SHOW_BACKENDS] = "show backends",
    [CTL_CMD_SHOW_CONFIG] = "show config",
    [CTL_CMD_FLUSH_NAT] = "flush nat",
    [CTL_CMD_BACKEND_DRAIN] = "backend drain",
    [CTL_CMD_BACKEND_ENABLE] = "backend enable",
    [CTL_CMD_BACKEND_DISABLE] = "backend disable",
    [CTL_CMD_SUBSCRIBE] = "subscribe",
    [CTL_CMD_SHOW_CLIENTS] = "show clients",
    [CTL_CMD_SHOW_BLOCKS] = "show blocks",
};

static const char *const sort_names[CTL_SORT_COUNT] = {
    [CTL_SORT_ID] = "id",
    [CTL_SORT_CLIENT] = "client",
    [CTL_SORT_NAT] = "nat",
    [CTL_SORT_BACKEND] = "backend",
    [CTL_SORT_STATE] = "state",
    [CTL_SORT_OPENED_AT] = "opened_at",
    [CTL_SORT_LAST_SEEN] = "last_seen",
    [CTL_SORT_BYTES_IN] = "bytes_in",
    [CTL_SORT_BYTES_OUT] = "bytes_out",
    [CTL_SORT_BYTES] = "bytes",
};

static const char *const evk_names[CTL_EVK_COUNT] = {"open",   "close",  "expire",
                                                     "refuse", "health", "block"};

const char *ctl_event_kind_name(unsigned k)
{
    return k < CTL_EVK_COUNT ? evk_names[k] : "unknown";
}

/* The index of `name` among the n `names`, or -1. */
static int name_index(const char *const *names, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

const char *ctl_err_name(enum ctl_err e)
{
    return (unsigned)e < CTL_ERR_COUNT ? err_names[e] : "internal";
}

int ctl_err_parse(const char *name)
{
    return name_index(err_names, CTL_ERR_COUNT, name);
}

const char *ctl_cmd_name(enum ctl_cmd c)
{
    return (unsigned)c < CTL_CMD_COUNT ? cmd_names[c] : NULL;
}

int ctl_cmd_parse(const char *name)
{
    return name_index(cmd_names, CTL_CMD_COUNT, name);
}

const char *ctl_sort_name(enum ctl_sort s)
{
    return (unsigned)s < CTL_SORT_COUNT ? sort_names[s] : NULL;
}

/* ---- request parsing ------------------------------------------------------ */

static enum ctl_err fail(struct ctl_error *err, enum ctl_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static enum ctl_err fail(struct ctl_error *err, enum ctl_err code, const char *fmt, ...)
{
    va_list ap;

    err->code = code;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return code;
}

int ctl_port_range_parse(const char *s, uint16_t *lo, uint16_t *hi)
{
    unsigned long a, b;
    char *end;

    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    a = strtoul(s, &end, 10);
    if (errno || a < 1 || a > 65535)
        return -1;
    b = a;
    if (*end == '-') {
        s = end + 1;
        if (*s < '0' || *s > '9')
            return -1;
        b = strtoul(s, &end, 10);
        if (errno || b < a || b > 65535)
            return -1;
    }
    if (*end != '\0')
        return -1;
    *lo = (uint16_t)a;
    *hi = (uint16_t)b;
    return 0;
}

/* Copies a JSON string argument of 1..CTL_NAME_MAX-1 bytes into out. */
static enum ctl_err arg_name(struct ctl_error *err, const char *key, json_t *v, char *out)
{
    const char *s;
    size_t n;

    if (!json_is_string(v))
        return fail(err, CTL_ERR_BAD_ARGUMENT, "argument '%s' must be a string", key);
    s = json_string_value(v);
    n = json_string_length(v);
    if (n == 0 || n >= CTL_NAME_MAX || strlen(s) != n)
        return fail(err, CTL_ERR_BAD_ARGUMENT, "argument '%s' must be 1 to %d bytes", key,
                    CTL_NAME_MAX - 1);
    memcpy(out, s, n + 1);
    return CTL_OK;
}

/* Reads a non-negative JSON integer no larger than max. */
static enum ctl_err arg_uint(struct ctl_error *err, const char *key, json_t *v, uint64_t min,
                             uint64_t max, uint64_t *out)
{
    json_int_t i;

    if (!json_is_integer(v))
        return fail(err, CTL_ERR_BAD_ARGUMENT, "argument '%s' must be an integer", key);
    i = json_integer_value(v);
    if (i < 0 || (uint64_t)i < min || (uint64_t)i > max)
        return fail(err, CTL_ERR_BAD_ARGUMENT,
                    "argument '%s' must be between %" PRIu64 " and %" PRIu64, key, min, max);
    *out = (uint64_t)i;
    return CTL_OK;
}

static enum ctl_err parse_sort(struct ctl_error *err, json_t *v, struct ctl_nat_query *q)
{
    const char *s;

    if (!json_is_string(v))
        return fail(err, CTL_ERR_BAD_ARGUMENT, "argument 'sort' must be a string");
    s = json_string_value(v);
    q->desc = false;
    if (*s == '-') {
        q->desc = true;
        s++;
    }
    int i = name_index(sort_names, CTL_SORT_COUNT, s);
    if (i >= 0) {
        q->sort = (enum ctl_sort)i;
        return CTL_OK;
    }
    return fail(err, CTL_ERR_BAD_ARGUMENT,
                "argument 'sort' must be one of id, client, nat, backend, state, opened_at, "
                "last_seen, bytes_in, bytes_out, bytes (with '-' before for descending)");
}

/* One argument of show nat / flush nat. `paged` allows sort/limit/offset/after_id. */
static enum ctl_err parse_nat_arg(struct ctl_error *err, const char *key, json_t *v,
                                  struct ctl_nat_query *q, bool paged)
{
    struct nat_filter *f = &q->filter;
    uint64_t u = 0;
    enum ctl_err rc;

    if (strcmp(key, "proto") == 0) {
        const char *s = json_is_string(v) ? json_string_value(v) : "";
        if (strcmp(s, "tcp") == 0)
            f->proto = NAT_PROTO_TCP;
        else if (strcmp(s, "udp") == 0)
            f->proto = NAT_PROTO_UDP;
        else
            return fail(err, CTL_ERR_BAD_ARGUMENT, "argument 'proto' must be \"tcp\" or \"udp\"");
    } else if (strcmp(key, "client") == 0) {
        if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v) ||
            nat_prefix_parse(&f->client, &f->client_plen, json_string_value(v)) < 0)
            return fail(err, CTL_ERR_BAD_ARGUMENT,
                        "argument 'client' must be an IP address or CIDR prefix");
        f->has_client = true;
    } else if (strcmp(key, "nat_ip") == 0) {
        if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v) ||
            nat_addr_parse(&f->nat_ip, json_string_value(v)) < 0)
            return fail(err, CTL_ERR_BAD_ARGUMENT, "argument 'nat_ip' must be an IP address");
        f->has_nat_ip = true;
    } else if (strcmp(key, "nat_port") == 0) {
        if (json_is_integer(v)) {
            if ((rc = arg_uint(err, key, v, 1, 65535, &u)) != CTL_OK)
                return rc;
            f->nat_port_lo = f->nat_port_hi = (uint16_t)u;
        } else if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v) ||
                   ctl_port_range_parse(json_string_value(v), &f->nat_port_lo, &f->nat_port_hi) <
                       0) {
            return fail(err, CTL_ERR_BAD_ARGUMENT,
                        "argument 'nat_port' must be a port or a range \"LO-HI\" in 1-65535");
        }
    } else if (strcmp(key, "backend") == 0) {
        if ((rc = arg_name(err, key, v, q->backend)) != CTL_OK)
            return rc;
    } else if (strcmp(key, "state") == 0) {
        int st = json_is_string(v) ? nat_state_parse(json_string_value(v)) : -1;
        if (st < 0 || st == NAT_STATE_CLOSED)
            return fail(err, CTL_ERR_BAD_ARGUMENT,
                        "argument 'state' must be \"new\", \"established\" or \"closing\"");
        f->state = st;
    } else if (paged && strcmp(key, "sort") == 0) {
        return parse_sort(err, v, q);
    } else if (paged && strcmp(key, "limit") == 0) {
        if ((rc = arg_uint(err, key, v, 1, CTL_LIMIT_MAX, &u)) != CTL_OK)
            return rc;
        q->limit = (uint32_t)u;
    } else if (paged && strcmp(key, "offset") == 0) {
        return arg_uint(err, key, v, 0, INT64_MAX, &q->offset);
    } else if (paged && strcmp(key, "after_id") == 0) {
        return arg_uint(err, key, v, 0, INT64_MAX, &q->after_id);
    } else {
        return fail(err, CTL_ERR_BAD_ARGUMENT, "unknown argument '%s'", key);
    }
    return CTL_OK;
}

static enum ctl_err parse_nat_args(struct ctl_error *err, json_t *args, struct ctl_nat_query *q,
                                   bool paged)
{
    const char *key;
    json_t *v;
    enum ctl_err rc;

    memset(q, 0, sizeof(*q));
    nat_filter_init(&q->filter);
    q->sort = CTL_SORT_ID;
    q->limit = CTL_LIMIT_DEFAULT;
    json_object_foreach(args, key, v)
    {
        if ((rc = parse_nat_arg(err, key, v, q, paged)) != CTL_OK)
            return rc;
    }
    if (q->sort != CTL_SORT_ID || q->desc) {
        if (q->after_id)
            return fail(err, CTL_ERR_BAD_ARGUMENT,
                        "argument 'after_id' only goes with sort \"id\"");
        if (q->offset + q->limit > CTL_SORT_WINDOW_MAX)
            return fail(err, CTL_ERR_BAD_ARGUMENT,
                        "sorting by '%s' needs offset + limit <= %d; sort by id to page further",
                        sort_names[q->sort], CTL_SORT_WINDOW_MAX);
    }
    return CTL_OK;
}

static enum ctl_err parse_backend_args(struct ctl_error *err, json_t *args,
                                       struct ctl_backend_args *b)
{
    const char *key;
    json_t *v;
    enum ctl_err rc;
    char *slash;

    memset(b, 0, sizeof(*b));
    json_object_foreach(args, key, v)
    {
        if (strcmp(key, "name") == 0)
            rc = arg_name(err, key, v, b->name);
        else if (strcmp(key, "server") == 0)
            rc = arg_name(err, key, v, b->server);
        else
            rc = fail(err, CTL_ERR_BAD_ARGUMENT, "unknown argument '%s'", key);
        if (rc != CTL_OK)
            return rc;
    }
    if (!b->name[0])
        return fail(err, CTL_ERR_BAD_ARGUMENT, "argument 'name' is required");
    slash = strchr(b->name, '/');
    if (slash) {
        if (b->server[0] || slash == b->name || slash[1] == '\0')
            return fail(err, CTL_ERR_BAD_ARGUMENT,
                        "argument 'name' must be NAME or NAME/SERVER (and then no 'server')");
        *slash = '\0';
        memmove(b->server, slash + 1, strlen(slash + 1) + 1);
    }
    return CTL_OK;
}

static enum ctl_err parse_events(struct ctl_error *err, json_t *args, unsigned *events)
{
    const char *key;
    json_t *v, *e;
    size_t i;

    *events = CTL_EVK_ALL;
    json_object_foreach(args, key, v)
    {
        if (strcmp(key, "events") != 0)
            return fail(err, CTL_ERR_BAD_ARGUMENT, "unknown argument '%s'", key);
        if (!json_is_array(v) || json_array_size(v) == 0)
            return fail(err, CTL_ERR_BAD_ARGUMENT,
                        "argument 'events' must be a non-empty array of event names");
        *events = 0;
        json_array_foreach(v, i, e)
        {
            int k = json_is_string(e)
                        ? name_index(evk_names, (int)(sizeof(evk_names) / sizeof(evk_names[0])),
                                     json_string_value(e))
                        : -1;
            if (k < 0)
                return fail(err, CTL_ERR_BAD_ARGUMENT,
                            "argument 'events' may hold \"open\", \"close\", \"expire\", "
                            "\"refuse\", \"health\", \"block\"");
            *events |= 1u << k;
        }
    }
    return CTL_OK;
}

static enum ctl_err parse_clients_args(struct ctl_error *err, json_t *args,
                                       struct ctl_clients_args *a)
{
    const char *key;
    json_t *v;
    uint64_t u = 0;
    enum ctl_err rc;

    a->limit = 10;
    a->by_bytes = false;
    json_object_foreach(args, key, v)
    {
        if (strcmp(key, "limit") == 0) {
            if ((rc = arg_uint(err, key, v, 1, CTL_CLIENTS_MAX, &u)) != CTL_OK)
                return rc;
            a->limit = (uint32_t)u;
        } else if (strcmp(key, "sort") == 0) {
            const char *s = json_is_string(v) ? json_string_value(v) : "";
            if (strcmp(s, "bytes") == 0)
                a->by_bytes = true;
            else if (strcmp(s, "sessions") != 0)
                return fail(err, CTL_ERR_BAD_ARGUMENT,
                            "argument 'sort' must be \"sessions\" or \"bytes\"");
        } else {
            return fail(err, CTL_ERR_BAD_ARGUMENT, "unknown argument '%s'", key);
        }
    }
    return CTL_OK;
}

static enum ctl_err parse_blocks_args(struct ctl_error *err, json_t *args,
                                      struct ctl_blocks_args *a)
{
    struct ctl_nat_query q;
    const char *key;
    json_t *v;
    uint64_t u = 0;
    enum ctl_err rc;

    memset(&q, 0, sizeof(q));
    nat_filter_init(&q.filter);
    a->limit = CTL_LIMIT_DEFAULT;
    json_object_foreach(args, key, v)
    {
        if (strcmp(key, "client") == 0 || strcmp(key, "nat_ip") == 0 ||
            strcmp(key, "nat_port") == 0) {
            rc = parse_nat_arg(err, key, v, &q, false);
        } else if (strcmp(key, "limit") == 0) {
            rc = arg_uint(err, key, v, 1, CTL_SORT_WINDOW_MAX, &u);
            a->limit = (uint32_t)u;
        } else {
            rc = fail(err, CTL_ERR_BAD_ARGUMENT, "unknown argument '%s'", key);
        }
        if (rc != CTL_OK)
            return rc;
    }
    a->filter = q.filter;
    return CTL_OK;
}

static enum ctl_err parse_args(struct ctl_request *req, json_t *args, struct ctl_error *err)
{
    switch (req->cmd) {
    case CTL_CMD_SHOW_NAT:
        return parse_nat_args(err, args, &req->u.nat, true);
    case CTL_CMD_FLUSH_NAT:
        return parse_nat_args(err, args, &req->u.nat, false);
    case CTL_CMD_BACKEND_DRAIN:
    case CTL_CMD_BACKEND_ENABLE:
    case CTL_CMD_BACKEND_DISABLE:
        return parse_backend_args(err, args, &req->u.backend);
    case CTL_CMD_SUBSCRIBE:
        return parse_events(err, args, &req->u.events);
    case CTL_CMD_SHOW_CLIENTS:
        return parse_clients_args(err, args, &req->u.clients);
    case CTL_CMD_SHOW_BLOCKS:
        return parse_blocks_args(err, args, &req->u.blocks);
    default:
        if (json_object_size(args) != 0)
            return fail(err, CTL_ERR_BAD_ARGUMENT, "command '%s' takes no arguments",
                        cmd_names[req->cmd]);
        return CTL_OK;
    }
}

/* The id is any integer, a string of at most CTL_ID_MAX bytes, or null. */
static bool id_ok(json_t *id)
{
    return json_is_integer(id) || json_is_null(id) ||
           (json_is_string(id) && json_string_length(id) <= CTL_ID_MAX);
}

enum ctl_err ctl_request_parse(struct ctl_request *req, const char *line, size_t len,
                               struct ctl_error *err)
{
    json_error_t jerr;
    json_t *root, *id, *cmd, *args, *v;
    const char *key;
    enum ctl_err rc;
    int c;

    memset(req, 0, sizeof(*req));
    err->code = CTL_OK;
    err->message[0] = '\0';
    root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return fail(err, CTL_ERR_BAD_JSON, "not JSON: %s at column %d", jerr.text, jerr.column);
    if (!json_is_object(root)) {
        rc = fail(err, CTL_ERR_BAD_REQUEST, "a request is a JSON object");
        goto out;
    }
    id = json_object_get(root, "id");
    if (id && !json_is_null(id)) {
        if (!id_ok(id)) {
            rc = fail(err, CTL_ERR_BAD_REQUEST,
                      "'id' must be an integer or a string of at most %d bytes", CTL_ID_MAX);
            goto out;
        }
        req->id = json_incref(id);
    }
    json_object_foreach(root, key, v)
    {
        if (strcmp(key, "id") != 0 && strcmp(key, "cmd") != 0 && strcmp(key, "args") != 0) {
            rc =
                fail(err, CTL_ERR_BAD_REQUEST, "unknown field in request (allowed: id, cmd, args)");
            goto out;
        }
    }
    cmd = json_object_get(root, "cmd");
    if (!json_is_string(cmd)) {
        rc = fail(err, CTL_ERR_BAD_REQUEST, "'cmd' must be a string naming a command");
        goto out;
    }
    c = ctl_cmd_parse(json_string_value(cmd));
    if (c < 0 || strlen(json_string_value(cmd)) != json_string_length(cmd)) {
        rc = fail(err, CTL_ERR_UNKNOWN_COMMAND,
                  "unknown command (see 'version' and docs/control-protocol.md)");
        goto out;
    }
    req->cmd = (enum ctl_cmd)c;
    args = json_object_get(root, "args");
    if (args && json_is_null(args))
        args = NULL;
    if (args && !json_is_object(args)) {
        rc = fail(err, CTL_ERR_BAD_REQUEST, "'args' must be an object");
        goto out;
    }
    if (!args) {
        json_t *empty = json_object();
        if (!empty) {
            rc = fail(err, CTL_ERR_INTERNAL, "out of memory");
            goto out;
        }
        rc = parse_args(req, empty, err);
        json_decref(empty);
    } else {
        rc = parse_args(req, args, err);
    }
out:
    json_decref(root);
    return rc;
}

void ctl_request_clear(struct ctl_request *req)
{
    json_decref(req->id);
    memset(req, 0, sizeof(*req));
}

/* ---- replies -------------------------------------------------------------- */

/* Dumps obj (stolen) compactly with a newline. */
static char *dump_line(json_t *obj, size_t *len)
{
    char *s, *line;
    size_t n;

    if (!obj)
        return NULL;
    s = json_dumps(obj, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(obj);
    if (!s)
        return NULL;
    n = strlen(s);
    line = realloc(s, n + 2);
    if (!line) {
        free(s);
        return NULL;
    }
    line[n] = '\n';
    line[n + 1] = '\0';
    *len = n + 1;
    return line;
}

char *ctl_reply_ok(const json_t *id, json_t *result, size_t *len)
{
    json_t *o = json_object();

    if (!o) {
        json_decref(result);
        return NULL;
    }
    if (json_object_set_new(o, "id", id ? json_copy((json_t *)(uintptr_t)id) : json_null()) < 0 ||
        json_object_set_new(o, "ok", json_true()) < 0 ||
        json_object_set_new(o, "result", result ? result : json_null()) < 0) {
        json_decref(o);
        return NULL;
    }
    return dump_line(o, len);
}

/* The message as a JSON string. jansson's parse errors quote the input,
 * which need not be UTF-8 (json_string refuses it): such bytes become '?'. */
static json_t *message_json(const char *m)
{
    json_t *s = json_string(m);
    char buf[512];
    size_t i;

    if (s)
        return s;
    for (i = 0; m[i] != '\0' && i < sizeof(buf) - 1; i++)
        buf[i] = (unsigned char)m[i] < 0x80 ? m[i] : '?';
    buf[i] = '\0';
    return json_string(buf);
}

char *ctl_reply_error(const json_t *id, enum ctl_err code, const char *message, size_t *len)
{
    json_t *o = json_object(), *e = json_object();

    if (!o || !e)
        goto fail;
    if (json_object_set_new(e, "code", json_string(ctl_err_name(code))) < 0 ||
        json_object_set_new(e, "message", message_json(message ? message : "")) < 0)
        goto fail;
    if (json_object_set_new(o, "id", id ? json_copy((json_t *)(uintptr_t)id) : json_null()) < 0 ||
        json_object_set_new(o, "ok", json_false()) < 0 || json_object_set_new(o, "error", e) < 0) {
        e = NULL;
        goto fail;
    }
    return dump_line(o, len);
fail:
    json_decref(e);
    json_decref(o);
    return NULL;
}

int ctl_reply_stream_head(char *buf, size_t size, const json_t *id)
{
    char *ids = id ? json_dumps(id, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    int n;

    if (id && !ids)
        return -1;
    n = snprintf(buf, size, "{\"id\":%s,\"ok\":true,\"result\":{", ids ? ids : "null");
    free(ids);
    if (n < 0 || (size_t)n >= size)
        return -1;
    return n;
}

/* ---- sessions and times --------------------------------------------------- */

int ctl_json_quote(char *buf, size_t size, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;

    if (size < 2)
        return -1;
    buf[o++] = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (o + 7 >= size)
            return -1;
        if (c == '"' || c == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            buf[o++] = '\\';
            buf[o++] = 'u';
            buf[o++] = '0';
            buf[o++] = '0';
            buf[o++] = hex[c >> 4];
            buf[o++] = hex[c & 15];
        } else {
            buf[o++] = (char)c;
        }
    }
    if (o + 2 > size)
        return -1;
    buf[o++] = '"';
    buf[o] = '\0';
    return (int)o;
}

char *ctl_time_format(uint64_t ms, char *buf)
{
    return db_time_format(ms, buf); /* the store's form: one format everywhere */
}

/* Reads exactly n digits at *p into *out, advancing *p. */
static int digits(const char **p, int n, int *out)
{
    int v = 0;

    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return -1;
        v = v * 10 + (c - '0');
    }
    *p += n;
    *out = v;
    return 0;
}

int ctl_time_parse(const char *s, uint64_t *ms)
{
    int y, mo, d, h = 0, mi = 0, sec = 0, frac = 0;
    const char *p = s;
    struct tm tm;
    time_t t;

    if (*p == '@') {
        char *end;
        unsigned long long v;
        p++;
        if (*p < '0' || *p > '9')
            return -1;
        errno = 0;
        v = strtoull(p, &end, 10);
        if (errno || *end || v > DB_TIME_MAX_MS / 1000)
            return -1;
        *ms = (uint64_t)v * 1000;
        return 0;
    }
    if (digits(&p, 4, &y) || *p++ != '-' || digits(&p, 2, &mo) || *p++ != '-' || digits(&p, 2, &d))
        return -1;
    if (*p == 'T' || *p == ' ') {
        p++;
        if (digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &mi))
            return -1;
        if (*p == ':') {
            p++;
            if (digits(&p, 2, &sec))
                return -1;
            if (*p == '.') {
                int n = 0;
                p++;
                while (*p >= '0' && *p <= '9' && n < 9) {
                    if (n < 3)
                        frac = frac * 10 + (*p - '0');
                    n++;
                    p++;
                }
                if (n == 0)
                    return -1;
                for (; n < 3; n++)
                    frac *= 10;
            }
        }
        if (*p == 'Z')
            p++;
    }
    /* A date that does not exist is an error, not the next month's day
     * (timegm would roll 02-31 over to 03-03); no leap second either, as
     * the store's own parser has it. */
    static const unsigned char mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (*p != '\0' || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || sec > 59)
        return -1;
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (d > mdays[mo - 1] + (mo == 2 && leap))
        return -1;
    memset(&tm, 0, sizeof(tm));
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    t = timegm(&tm);
    if (t < 0)
        return -1;
    *ms = (uint64_t)t * 1000 + (uint64_t)frac;
    return 0;
}

int ctl_session_format(char *buf, size_t size, const struct nat_session *s, const char *backend,
                       int state, uint64_t closed_at, const char *close_reason)
{
    char cip[NAT_ADDR_STRLEN], nip[NAT_ADDR_STRLEN], bip[NAT_ADDR_STRLEN];
    char opened[CTL_TIME_STRLEN], seen[CTL_TIME_STRLEN], closed[CTL_TIME_STRLEN + 2];
    char bname[CTL_NAME_MAX * 6 + 3], reason[CTL_NAME_MAX * 6 + 3];
    const char *proto = nat_proto_name(s->key.proto);
    int n;

    if (state < 0 || state >= NAT_STATE_COUNT)
        state = s->state < NAT_STATE_COUNT ? s->state : NAT_STATE_NEW;
    if (!backend || ctl_json_quote(bname, sizeof(bname), backend) < 0)
        strcpy(bname, "null");
    if (!close_reason || ctl_json_quote(reason, sizeof(reason), close_reason) < 0)
        strcpy(reason, "null");
    if (closed_at) {
        closed[0] = '"';
        ctl_time_format(closed_at, closed + 1);
        strcat(closed, "\"");
    } else {
        strcpy(closed, "null");
    }
    n = snprintf(buf, size,
                 "{\"id\":%" PRIu64 ",\"proto\":\"%s\",\"client_ip\":\"%s\",\"client_port\":%u,"
                 "\"nat_ip\":\"%s\",\"nat_port\":%u,\"backend\":%s,\"backend_ip\":\"%s\","
                 "\"backend_port\":%u,\"state\":\"%s\",\"opened_at\":\"%s\",\"last_seen\":\"%s\","
                 "\"closed_at\":%s,\"close_reason\":%s,\"bytes_in\":%" PRIu64
                 ",\"bytes_out\":%" PRIu64 "}",
                 s->id, proto ? proto : "unknown", nat_addr_format(&s->key.client.addr, cip),
                 s->key.client.port, nat_addr_format(&s->ext.addr, nip), s->ext.port, bname,
                 nat_addr_format(&s->key.dst.addr, bip), s->key.dst.port,
                 nat_state_name((enum nat_state)state), ctl_time_format(s->opened_at, opened),
                 ctl_time_format(s->last_seen, seen), closed, reason, s->bytes_in, s->bytes_out);
    if (n < 0 || (size_t)n >= size)
        return -1;
    return n;
}

/* ---- line framing --------------------------------------------------------- */

void ctl_linebuf_init(struct ctl_linebuf *lb, size_t max)
{
    memset(lb, 0, sizeof(*lb));
    lb->max = max;
}

void ctl_linebuf_free(struct ctl_linebuf *lb)
{
    free(lb->buf);
    lb->buf = NULL;
    lb->cap = lb->head = lb->len = lb->scan = 0;
}

char *ctl_linebuf_space(struct ctl_linebuf *lb, size_t want, size_t *avail)
{
    if (want == 0)
        want = 1;
    if (lb->head > 0) {
        memmove(lb->buf, lb->buf + lb->head, lb->len - lb->head);
        lb->len -= lb->head;
        lb->head = 0;
    }
    if (lb->cap - lb->len < want) {
        size_t cap = lb->len + want;
        char *nb = realloc(lb->buf, cap);
        if (!nb)
            return NULL;
        lb->buf = nb;
        lb->cap = cap;
    }
    *avail = lb->cap - lb->len;
    return lb->buf + lb->len;
}

void ctl_linebuf_commit(struct ctl_linebuf *lb, size_t n)
{
    lb->len += n;
}

int ctl_linebuf_next(struct ctl_linebuf *lb, char **line, size_t *len)
{
    char *start = lb->buf + lb->head, *nl;
    size_t avail = lb->len - lb->head, n;

    if (avail == 0)
        return 0;
    nl = memchr(start + lb->scan, '\n', avail - lb->scan);
    if (!nl) {
        lb->scan = avail;
        return lb->scan > lb->max ? -EMSGSIZE : 0;
    }
    n = (size_t)(nl - start);
    if (n > lb->max)
        return -EMSGSIZE;
    *nl = '\0';
    lb->head += n + 1;
    lb->scan = 0;
    if (n > 0 && start[n - 1] == '\r')
        start[--n] = '\0';
    *line = start;
    *len = n;
    return 1;
}

size_t ctl_linebuf_pending(const struct ctl_linebuf *lb)
{
    return lb->len - lb->head;
}

/* ---- the socket path ------------------------------------------------------ */

const char *gw_default_socket_path(char *buf, size_t len)
{
    const char *env = getenv("GW_SOCKET"), *dir;
    int n;

    if (env && *env)
        n = snprintf(buf, len, "%s", env);
    else if (geteuid() == 0)
        n = snprintf(buf, len, "/run/gwd.sock");
    else {
        dir = getenv("XDG_RUNTIME_DIR");
        if (!dir || !*dir)
            dir = "/tmp";
        n = snprintf(buf, len, "%s/gwd-%u.sock", dir, (unsigned)geteuid());
    }
    if (n < 0 || (size_t)n >= len)
        return NULL;
    return buf;
}
