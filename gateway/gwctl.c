/*
 * gwctl.c - the operator CLI of gw: talks to gwd over its control socket
 * (docs/control-protocol.md), or reads the SQLite store directly with --db.
 * docs/gwctl.md is its manual. Exit codes: 0 ok, 1 the daemon (or store)
 * said no, 2 usage, 3 cannot reach the daemon.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "db/db.h"
#include "gateway/gw_ctlproto.h"
#include "gateway/gwctl_fmt.h"

enum {
    EXIT_OK = 0,
    EXIT_NO = 1,
    EXIT_USAGE = 2,
    EXIT_UNREACHABLE = 3,
};

/* Largest reply line gwctl accepts (a big --limit page in --json mode). */
#define GWCTL_MAX_REPLY (256u * 1024 * 1024)
/* Rows per request when gwctl pages through show nat itself. */
#define GWCTL_PAGE 1000

/* ---- options -------------------------------------------------------------- */

struct opts {
    const char *socket;
    const char *db;
    bool json;
    bool help;
    int timeout_ms;
    /* filters */
    const char *proto, *client, *nat_ip, *port, *backend, *state, *sort, *event;
    const char *at, *since, *until;
    bool all;
    long limit;  /* -1 = not given */
    long offset; /* -1 = not given */
    long count;  /* watch/events: stop after this many; -1 = forever */
    double interval;
    long top;
    unsigned long long used; /* bit per enum opt_id given on the command line */
    /* positional words */
    const char *words[8];
    int nwords;
};

/* An option: its name, whether it takes a value, where it goes. */
enum opt_id {
    O_SOCKET,
    O_DB,
    O_JSON,
    O_HELP,
    O_TIMEOUT,
    O_PROTO,
    O_CLIENT,
    O_NAT_IP,
    O_PORT,
    O_BACKEND,
    O_STATE,
    O_SORT,
    O_EVENT,
    O_AT,
    O_SINCE,
    O_UNTIL,
    O_ALL,
    O_LIMIT,
    O_OFFSET,
    O_COUNT,
    O_INTERVAL,
    O_TOP,
    O_COUNT_
};

static const struct {
    const char *name;
    bool value;
} optdefs[O_COUNT_] = {
    [O_SOCKET] = {"--socket", true},     [O_DB] = {"--db", true},
    [O_JSON] = {"--json", false},        [O_HELP] = {"--help", false},
    [O_TIMEOUT] = {"--timeout", true},   [O_PROTO] = {"--proto", true},
    [O_CLIENT] = {"--client", true},     [O_NAT_IP] = {"--nat-ip", true},
    [O_PORT] = {"--port", true},         [O_BACKEND] = {"--backend", true},
    [O_STATE] = {"--state", true},       [O_SORT] = {"--sort", true},
    [O_EVENT] = {"--event", true},       [O_AT] = {"--at", true},
    [O_SINCE] = {"--since", true},       [O_UNTIL] = {"--until", true},
    [O_ALL] = {"--all", false},          [O_LIMIT] = {"--limit", true},
    [O_OFFSET] = {"--offset", true},     [O_COUNT] = {"--count", true},
    [O_INTERVAL] = {"--interval", true}, [O_TOP] = {"--top", true},
};

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    va_list ap;

    fputs("gwctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\n(see gwctl --help)\n", stderr);
    return EXIT_USAGE;
}

static int parse_long(const char *name, const char *s, long min, long max, long *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return usage_error("%s must be a number from %ld to %ld, not '%s'", name, min, max, s);
    *out = v;
    return 0;
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
    memset(o, 0, sizeof(*o));
    o->limit = o->offset = o->count = -1;
    o->interval = 1.0;
    o->top = 5;
    o->timeout_ms = 30000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = NULL, *eq;
        char name[32];
        int id = -1;

        if (strcmp(a, "-h") == 0)
            a = "--help";
        if (strcmp(a, "-j") == 0)
            a = "--json";
        if (strcmp(a, "-s") == 0)
            a = "--socket";
        if (strncmp(a, "--", 2) != 0 || strcmp(a, "--") == 0) {
            if (o->nwords == (int)(sizeof(o->words) / sizeof(o->words[0])))
                return usage_error("too many words: '%s'", a);
            o->words[o->nwords++] = a;
            continue;
        }
        eq = strchr(a, '=');
        snprintf(name, sizeof(name), "%.*s", eq ? (int)(eq - a) : (int)strlen(a), a);
        for (int k = 0; k < O_COUNT_; k++)
            if (strcmp(name, optdefs[k].name) == 0)
                id = k;
        if (id < 0)
            return usage_error("unknown option '%s'", name);
        if (optdefs[id].value) {
            if (eq)
                val = eq + 1;
            else if (i + 1 < argc)
                val = argv[++i];
            else
                return usage_error("option %s needs a value", name);
        } else if (eq) {
            return usage_error("option %s takes no value", name);
        }
        o->used |= 1ull << id;
        switch (id) {
        case O_SOCKET:
            o->socket = val;
            break;
        case O_DB:
            o->db = val;
            break;
        case O_JSON:
            o->json = true;
            break;
        case O_HELP:
            o->help = true;
            break;
        case O_TIMEOUT: {
            long v;
            if (parse_long(name, val, 1, 3600, &v))
                return EXIT_USAGE;
            o->timeout_ms = (int)v * 1000;
            break;
        }
        case O_PROTO:
            o->proto = val;
            break;
        case O_CLIENT:
            o->client = val;
            break;
        case O_NAT_IP:
            o->nat_ip = val;
            break;
        case O_PORT:
            o->port = val;
            break;
        case O_BACKEND:
            o->backend = val;
            break;
        case O_STATE:
            o->state = val;
            break;
        case O_SORT:
            o->sort = val;
            break;
        case O_EVENT:
            o->event = val;
            break;
        case O_AT:
            o->at = val;
            break;
        case O_SINCE:
            o->since = val;
            break;
        case O_UNTIL:
            o->until = val;
            break;
        case O_ALL:
            o->all = true;
            break;
        case O_LIMIT:
            if (parse_long(name, val, 1, CTL_LIMIT_MAX, &o->limit))
                return EXIT_USAGE;
            break;
        case O_OFFSET:
            if (parse_long(name, val, 0, INT32_MAX, &o->offset))
                return EXIT_USAGE;
            break;
        case O_COUNT:
            if (parse_long(name, val, 1, INT32_MAX, &o->count))
                return EXIT_USAGE;
            break;
        case O_INTERVAL: {
            char *end;
            o->interval = strtod(val, &end);
            if (end == val || *end || !(o->interval >= 0.05 && o->interval <= 3600))
                return usage_error("--interval must be seconds from 0.05 to 3600");
            break;
        }
        case O_TOP:
            if (parse_long(name, val, 0, 100, &o->top))
                return EXIT_USAGE;
            break;
        default:
            break;
        }
    }
    return 0;
}

/* Refuses options the command does not take. `allowed` is a mask of opt_id bits. */
static int check_allowed(const struct opts *o, const char *cmd, unsigned long long allowed)
{
    allowed |=
        1ull << O_SOCKET | 1ull << O_JSON | 1ull << O_HELP | 1ull << O_TIMEOUT | 1ull << O_DB;
    for (int k = 0; k < O_COUNT_; k++)
        if ((o->used & (1ull << k)) && !(allowed & (1ull << k)))
            return usage_error("'%s' takes no option %s", cmd, optdefs[k].name);
    return 0;
}

#define B(x) (1ull << (x))
#define FILTER_OPTS (B(O_PROTO) | B(O_CLIENT) | B(O_NAT_IP) | B(O_PORT) | B(O_BACKEND) | B(O_STATE))

/* ---- help ----------------------------------------------------------------- */

static const char help_main[] =
    "usage: gwctl [--socket PATH] [--json] [--timeout S] COMMAND [ARGS]\n"
    "       gwctl --db FILE show nat|log | whois IP:PORT [--at TIME]\n"
    "\n"
    "Talks to gwd over its control socket, or reads gw's SQLite store with --db.\n"
    "\n"
    "commands:\n"
    "  show nat [filters] [--sort KEY] [--limit N]   the NAT table (like conntrack -L)\n"
    "  show stats                                    counters, pool use, store, health\n"
    "  show backends                                 pools, servers, health, flows\n"
    "  show blocks [--client C] [--nat-ip IP] [--port P] [--limit N]\n"
    "                                                the port blocks in use (block policy)\n"
    "  show config                                   the configuration in force (JSON)\n"
    "  flush nat [filters]                           close the matching flows\n"
    "  backend drain|enable|disable NAME[/SERVER]    change a pool or server's admin state\n"
    "  watch [--interval S] [--count N] [--top N]    live view: flows/s, pool use, top clients\n"
    "  events [--count N]                            follow open/close/expire/refuse/health/block\n"
    "  version                                       gwctl's and gwd's versions\n"
    "  --db FILE show nat [filters] [--all] [--at TIME]   sessions in the store\n"
    "  --db FILE log [filters] [--event E] [--since T] [--until T] [--limit N]\n"
    "  --db FILE whois IP:PORT [--proto P] [--at TIME]    who held this NAT port then\n"
    "\n"
    "filters: --proto tcp|udp  --client IP|CIDR  --nat-ip IP  --port N|LO-HI (NAT port)\n"
    "         --backend NAME  --state new|established|closing\n"
    "\n"
    "The socket: --socket PATH, else $GW_SOCKET, else /run/gwd.sock for root, else\n"
    "${XDG_RUNTIME_DIR:-/tmp}/gwd-$UID.sock (what gwd uses with no --control).\n"
    "Exit codes: 0 ok, 1 the daemon or store said no, 2 usage, 3 cannot reach gwd.\n"
    "'gwctl COMMAND --help' describes one command; docs/gwctl.md is the manual.\n";

static const struct {
    const char *cmd;
    const char *text;
} helps[] = {
    {"show nat",
     "usage: gwctl show nat [--proto tcp|udp] [--client IP|CIDR] [--nat-ip IP]\n"
     "                      [--port N|LO-HI] [--backend NAME] [--state S]\n"
     "                      [--sort KEY] [--limit N] [--offset N] [--json]\n"
     "Lists the live NAT sessions as a table PROTO CLIENT NAT BACKEND STATE AGE IDLE IN\n"
     "OUT, oldest first, with a footer count. --port filters the NAT (external) port.\n"
     "--sort: id client nat backend state opened_at last_seen bytes_in bytes_out bytes,\n"
     "'-' before it for descending (--sort=-bytes). Without --limit every session is\n"
     "listed (fetched in pages). --json prints the daemon's result object as is.\n"
     "With --db FILE: the sessions in the store (open ones; --all for closed too;\n"
     "--at TIME for those alive at TIME).\n"},
    {"show stats",
     "usage: gwctl show stats [--json]\n"
     "Uptime, flows by protocol and state, mappings opened/closed/expired/refused by\n"
     "reason, pool use per external IP, traffic, store queue and health, backends.\n"},
    {"show backends", "usage: gwctl show backends [--json]\n"
                      "One row per server: pool, protocol, balance, name, address, state, weight,\n"
                      "live flows, total flows, connect failures.\n"},
    {"show blocks",
     "usage: gwctl show blocks [--client IP|CIDR] [--nat-ip IP] [--port N|LO-HI] [--limit N]\n"
     "                         [--json]\n"
     "The port blocks in use under the block policy (RFC 7422), by external address\n"
     "and port: CLIENT NAT (ip:lo-hi) SESSIONS HELD (how long a client with no session\n"
     "keeps it, nat.block_hold). --port picks the blocks that overlap the range.\n"},
    {"show config", "usage: gwctl show config\nPrints the configuration in force as JSON.\n"},
    {"flush nat",
     "usage: gwctl flush nat [--proto P] [--client IP|CIDR] [--nat-ip IP] [--port N|LO-HI]\n"
     "                       [--backend NAME] [--state S]\n"
     "Closes every live flow that matches (all of them without filters) and prints\n"
     "how many.\n"},
    {"backend", "usage: gwctl backend drain|enable|disable NAME[/SERVER]\n"
                "drain: no new flows, live ones stay, checks go on; disable: the same with\n"
                "checks stopped; enable: back in service. NAME alone acts on every server of\n"
                "the pool; a server is named by its name (HOST:PORT by default).\n"},
    {"watch", "usage: gwctl watch [--interval S] [--count N] [--top N]\n"
              "A live view refreshed every S seconds (default 1): flows, flows/s, refusals,\n"
              "pool use, traffic, the top N clients by live sessions. On a terminal the\n"
              "screen is redrawn; otherwise one block per refresh. --count stops after N.\n"},
    {"events",
     "usage: gwctl events [--event open,close,expire,refuse,health,block] [--count N] [--json]\n"
     "Follows gwd's events, one line each (JSON lines with --json), until\n"
     "interrupted or N events were printed.\n"},
    {"version", "usage: gwctl version\nPrints gwctl's version and gwd's version and protocol.\n"},
    {"log", "usage: gwctl --db FILE log [filters] [--event E] [--since TIME] [--until TIME]\n"
            "                          [--limit N]\n"
            "Prints the translation log (open, close, expire, refuse) from the store, oldest\n"
            "first. TIME: 2026-11-27T16:31:25.123Z, '2026-11-27 16:31', 2026-11-27, or\n"
            "seconds since the epoch.\n"},
    {"whois", "usage: gwctl --db FILE whois IP:PORT [--proto tcp|udp] [--at TIME]\n"
              "Who held the NAT endpoint IP:PORT at TIME (default now), from the store's\n"
              "translation log: the client, its session and when it held it, and under\n"
              "the block policy the client's port block that held it. Exit 1 when nobody\n"
              "did.\n"},
};

static int print_help(const struct opts *o)
{
    char cmd[64] = "";

    if (o->nwords >= 1 && strcmp(o->words[0], "show") == 0 && o->nwords >= 2) {
        snprintf(cmd, sizeof(cmd), "show %s", o->words[1]);
        if (strcmp(o->words[1], "log") == 0 || strcmp(o->words[1], "whois") == 0)
            snprintf(cmd, sizeof(cmd), "%s", o->words[1]);
    } else if (o->nwords >= 2 && strcmp(o->words[0], "flush") == 0) {
        snprintf(cmd, sizeof(cmd), "flush %s", o->words[1]);
    } else if (o->nwords >= 1 && strcmp(o->words[0], "help") == 0 && o->nwords >= 2) {
        struct opts sub = *o;
        memmove(sub.words, sub.words + 1, sizeof(sub.words) - sizeof(sub.words[0]));
        sub.nwords--;
        return print_help(&sub);
    } else if (o->nwords >= 1) {
        snprintf(cmd, sizeof(cmd), "%s", o->words[0]);
    }
    for (size_t i = 0; i < sizeof(helps) / sizeof(helps[0]); i++) {
        if (strcmp(cmd, helps[i].cmd) == 0) {
            fputs(helps[i].text, stdout);
            return EXIT_OK;
        }
    }
    fputs(help_main, stdout);
    return EXIT_OK;
}

/* ---- the connection ------------------------------------------------------- */

struct conn {
    int fd;
    const char *path;
    struct ctl_linebuf in;
    int timeout_ms;
    int64_t next_id;
};

static int conn_open(struct conn *c, const struct opts *o, char *pathbuf, size_t pathlen)
{
    struct sockaddr_un sa;
    const char *path = o->socket;
    int err;

    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->timeout_ms = o->timeout_ms;
    c->next_id = 1;
    if (!path) {
        path = gw_default_socket_path(pathbuf, pathlen);
        if (!path) {
            fprintf(stderr, "gwctl: the default socket path is too long (check GW_SOCKET and "
                            "XDG_RUNTIME_DIR)\n");
            return EXIT_USAGE;
        }
    }
    c->path = path;
    if (strlen(path) >= sizeof(sa.sun_path)) {
        fprintf(stderr, "gwctl: socket path too long (max %zu bytes): %s\n",
                sizeof(sa.sun_path) - 1, path);
        return EXIT_USAGE;
    }
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        fprintf(stderr, "gwctl: socket: %s\n", strerror(errno));
        return EXIT_UNREACHABLE;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
        ctl_linebuf_init(&c->in, GWCTL_MAX_REPLY);
        return EXIT_OK;
    }
    err = errno;
    close(c->fd);
    c->fd = -1;
    fprintf(stderr, "gwctl: cannot reach gwd at %s: %s\n", path, strerror(err));
    if (err == ENOENT)
        fprintf(stderr, "gwctl: no socket there: is gwd running, and with this control path? "
                        "(gwd --control PATH; here: --socket PATH or GW_SOCKET)\n");
    else if (err == ECONNREFUSED)
        fprintf(stderr, "gwctl: the socket is stale: gwd is not running (start it, or point "
                        "--socket/GW_SOCKET at the running one)\n");
    else if (err == EACCES || err == EPERM)
        fprintf(stderr, "gwctl: permission denied: the socket is mode 0660 by default; run as "
                        "its owner or group (or root)\n");
    return EXIT_UNREACHABLE;
}

static void conn_close(struct conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    ctl_linebuf_free(&c->in);
}

static int conn_send(struct conn *c, const char *cmd, json_t *args)
{
    json_t *req = json_pack("{s:I,s:s}", "id", (json_int_t)c->next_id++, "cmd", cmd);
    char *line;
    size_t len, off = 0;

    if (!req) {
        json_decref(args);
        return -ENOMEM;
    }
    if (args)
        json_object_set_new(req, "args", args);
    line = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    if (!line)
        return -ENOMEM;
    len = strlen(line);
    line[len++] = '\n'; /* json_dumps leaves the NUL: room for the newline, no NUL needed */
    while (off < len) {
        ssize_t n = send(c->fd, line + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int err = errno;
            free(line);
            return -err;
        }
        off += (size_t)n;
    }
    free(line);
    return 0;
}

/*
 * Reads the next line from gwd. timeout_ms < 0 waits forever. Returns a new
 * JSON object, or NULL with *rc set (EXIT_UNREACHABLE on a lost connection or
 * timeout, EXIT_NO on garbage).
 */
static json_t *conn_read(struct conn *c, int timeout_ms, int *rc)
{
    char *line, *p;
    size_t len, avail;
    json_error_t jerr;
    json_t *j;

    for (;;) {
        int r = ctl_linebuf_next(&c->in, &line, &len);
        if (r > 0) {
            if (len == 0)
                continue;
            j = json_loadb(line, len, 0, &jerr);
            if (!j || !json_is_object(j)) {
                json_decref(j);
                fprintf(stderr, "gwctl: gwd sent something that is not a JSON object: %s\n",
                        jerr.text);
                *rc = EXIT_NO;
                return NULL;
            }
            return j;
        }
        if (r < 0) {
            fprintf(stderr, "gwctl: reply from gwd over %u bytes\n", GWCTL_MAX_REPLY);
            *rc = EXIT_NO;
            return NULL;
        }
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        r = poll(&pfd, 1, timeout_ms);
        if (r < 0 && errno == EINTR) {
            *rc = EXIT_OK; /* interrupted: the caller decides */
            return NULL;
        }
        if (r == 0) {
            fprintf(stderr, "gwctl: gwd at %s did not answer within %d s\n", c->path,
                    timeout_ms / 1000);
            *rc = EXIT_UNREACHABLE;
            return NULL;
        }
        p = ctl_linebuf_space(&c->in, 65536, &avail);
        if (!p) {
            *rc = EXIT_NO;
            return NULL;
        }
        ssize_t n = recv(c->fd, p, avail, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "gwctl: gwd at %s closed the connection%s%s\n", c->path,
                    n < 0 ? ": " : "", n < 0 ? strerror(errno) : "");
            *rc = EXIT_UNREACHABLE;
            return NULL;
        }
        ctl_linebuf_commit(&c->in, (size_t)n);
    }
}

/*
 * Sends one request and waits for its reply. Returns the result (new
 * reference) or NULL with *rc: EXIT_NO after printing the daemon's error,
 * EXIT_UNREACHABLE when the connection failed.
 */
static json_t *conn_call(struct conn *c, const char *cmd, json_t *args, int *rc)
{
    json_t *reply, *res;
    int64_t id = c->next_id;

    if (conn_send(c, cmd, args) < 0) {
        fprintf(stderr, "gwctl: cannot send to gwd at %s: %s\n", c->path, strerror(errno));
        *rc = EXIT_UNREACHABLE;
        return NULL;
    }
    for (;;) {
        reply = conn_read(c, c->timeout_ms, rc);
        if (!reply) {
            if (*rc == EXIT_OK)
                *rc = EXIT_UNREACHABLE;
            return NULL;
        }
        if (json_object_get(reply, "event")) { /* an event for a subscriber: not ours */
            json_decref(reply);
            continue;
        }
        json_t *rid = json_object_get(reply, "id");
        if (json_is_integer(rid) && json_integer_value(rid) != id) {
            json_decref(reply);
            continue;
        }
        break;
    }
    if (!json_is_true(json_object_get(reply, "ok"))) {
        json_t *e = json_object_get(reply, "error");
        const char *code = json_string_value(json_object_get(e, "code"));
        const char *msg = json_string_value(json_object_get(e, "message"));
        fprintf(stderr, "gwctl: %s: %s\n", code ? code : "error", msg ? msg : "(no message)");
        json_decref(reply);
        *rc = EXIT_NO;
        return NULL;
    }
    res = json_incref(json_object_get(reply, "result"));
    json_decref(reply);
    if (!res)
        res = json_null();
    *rc = EXIT_OK;
    return res;
}

static void print_json(const json_t *j, bool pretty)
{
    char *s = json_dumps(j, JSON_ENCODE_ANY | (pretty ? JSON_INDENT(2) : JSON_COMPACT));

    if (s) {
        puts(s);
        free(s);
    }
}

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- daemon commands ------------------------------------------------------ */

/* The filter arguments of show nat / flush nat from the flags. */
static json_t *filter_args(const struct opts *o)
{
    json_t *a = json_object();

    if (o->proto)
        json_object_set_new(a, "proto", json_string(o->proto));
    if (o->client)
        json_object_set_new(a, "client", json_string(o->client));
    if (o->nat_ip)
        json_object_set_new(a, "nat_ip", json_string(o->nat_ip));
    if (o->port)
        json_object_set_new(a, "nat_port", json_string(o->port));
    if (o->backend)
        json_object_set_new(a, "backend", json_string(o->backend));
    if (o->state)
        json_object_set_new(a, "state", json_string(o->state));
    return a;
}

static int cmd_show_nat(struct conn *c, const struct opts *o)
{
    struct ctl_table t;
    uint64_t total = 0, shown = 0, after = 0, want;
    bool sorted = o->sort && strcmp(o->sort, "id") != 0;
    uint64_t now;
    int rc = EXIT_OK;

    if (o->json || sorted || o->offset >= 0) {
        /* one request, the daemon's result as is (or one sorted window) */
        json_t *args = filter_args(o), *res;
        if (o->sort)
            json_object_set_new(args, "sort", json_string(o->sort));
        if (o->limit > 0)
            json_object_set_new(args, "limit", json_integer(o->limit));
        else if (!o->json && sorted)
            json_object_set_new(
                args, "limit",
                json_integer(o->offset > CTL_SORT_WINDOW_MAX - GWCTL_PAGE
                                 ? GWCTL_PAGE
                                 : CTL_SORT_WINDOW_MAX - (o->offset > 0 ? o->offset : 0)));
        else if (!o->json)
            json_object_set_new(args, "limit", json_integer(GWCTL_PAGE));
        if (o->offset >= 0)
            json_object_set_new(args, "offset", json_integer(o->offset));
        res = conn_call(c, "show nat", args, &rc);
        if (!res)
            return rc;
        if (o->json) {
            print_json(res, false);
        } else {
            json_t *s;
            size_t i;
            now = now_ms();
            ctl_nat_table_init(&t);
            json_array_foreach(json_object_get(res, "sessions"), i, s)
            {
                struct ctl_session_view v;
                if (ctl_session_view_from_json(&v, s) == 0 && ctl_nat_table_add(&t, &v, now) == 0)
                    shown++;
            }
            ctl_table_print(&t, stdout);
            ctl_table_free(&t);
            total = (uint64_t)json_integer_value(json_object_get(res, "total"));
            ctl_nat_footer(stdout, shown, total); /* total ignores offset and limit */
        }
        json_decref(res);
        return EXIT_OK;
    }
    /* the table: page through by id so any number of sessions can be listed */
    want = o->limit > 0 ? (uint64_t)o->limit : UINT64_MAX;
    ctl_nat_table_init(&t);
    now = now_ms();
    for (bool first = true;; first = false) {
        json_t *args = filter_args(o), *res, *s, *arr;
        uint64_t page = want - shown < GWCTL_PAGE ? want - shown : GWCTL_PAGE;
        size_t i;

        json_object_set_new(args, "limit", json_integer((json_int_t)page));
        json_object_set_new(args, "after_id", json_integer((json_int_t)after));
        res = conn_call(c, "show nat", args, &rc);
        if (!res) {
            ctl_table_free(&t);
            return rc;
        }
        if (first)
            total = (uint64_t)json_integer_value(json_object_get(res, "total"));
        arr = json_object_get(res, "sessions");
        json_array_foreach(arr, i, s)
        {
            struct ctl_session_view v;
            json_t *id = json_object_get(s, "id");
            if (json_is_integer(id))
                after = (uint64_t)json_integer_value(id);
            if (ctl_session_view_from_json(&v, s) == 0 && ctl_nat_table_add(&t, &v, now) == 0)
                shown++;
        }
        bool more = json_array_size(arr) == page &&
                    (uint64_t)json_integer_value(json_object_get(res, "total")) > page;
        json_decref(res);
        if (!more || shown >= want)
            break;
    }
    ctl_table_print(&t, stdout);
    ctl_table_free(&t);
    /* sessions opened during the listing may push shown past the first total */
    ctl_nat_footer(stdout, shown, total > shown ? total : shown);
    return EXIT_OK;
}

static int cmd_simple(struct conn *c, const struct opts *o, const char *cmd, json_t *args)
{
    int rc;
    json_t *res = conn_call(c, cmd, args, &rc);

    if (!res)
        return rc;
    if (o->json) {
        print_json(res, false);
    } else if (strcmp(cmd, "show stats") == 0) {
        ctl_print_stats(stdout, res);
    } else if (strcmp(cmd, "show backends") == 0) {
        ctl_print_backends(stdout, res);
    } else if (strcmp(cmd, "show blocks") == 0) {
        ctl_print_blocks(stdout, res);
    } else if (strcmp(cmd, "show config") == 0) {
        print_json(res, true);
    } else if (strcmp(cmd, "flush nat") == 0) {
        json_int_t n = json_integer_value(json_object_get(res, "closed"));
        printf("%" JSON_INTEGER_FORMAT " session%s closed\n", n, n == 1 ? "" : "s");
    } else if (strcmp(cmd, "version") == 0) {
        printf("gwctl %s, gwd %s (protocol %" JSON_INTEGER_FORMAT ")\n", GW_VERSION,
               json_string_value(json_object_get(res, "version")),
               json_integer_value(json_object_get(res, "protocol")));
    } else {
        /* backend drain|enable|disable: the pool afterwards */
        json_t *wrap = json_pack("{s:[O]}", "backends", res);
        ctl_print_backends(stdout, wrap);
        json_decref(wrap);
    }
    json_decref(res);
    return EXIT_OK;
}

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static int cmd_events(struct conn *c, const struct opts *o)
{
    json_t *args = NULL, *res, *ev;
    long n = 0;
    int rc;

    if (o->event) {
        char buf[128], *save = NULL, *tok;
        json_t *a = json_array();
        snprintf(buf, sizeof(buf), "%s", o->event);
        for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
            json_array_append_new(a, json_string(tok));
        args = json_pack("{s:o}", "events", a);
    }
    res = conn_call(c, "subscribe", args, &rc);
    if (!res)
        return rc;
    json_decref(res);
    fflush(stdout);
    while (!interrupted && (o->count < 0 || n < o->count)) {
        ev = conn_read(c, -1, &rc);
        if (!ev)
            return interrupted ? EXIT_OK : rc;
        if (!json_object_get(ev, "event")) {
            json_decref(ev);
            continue;
        }
        if (o->json)
            print_json(ev, false);
        else
            ctl_print_event(stdout, ev);
        fflush(stdout);
        json_decref(ev);
        n++;
    }
    return EXIT_OK;
}

static uint64_t jpath(const json_t *o, const char *a, const char *b)
{
    const json_t *v = json_object_get(o, a);

    if (b)
        v = json_object_get(v, b);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

static uint64_t refused_sum(const json_t *st)
{
    const json_t *r = json_object_get(json_object_get(st, "mappings"), "refused");
    const char *k;
    json_t *v;
    uint64_t sum = 0;

    json_object_foreach((json_t *)(uintptr_t)r, k, v) sum +=
        json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
    return sum;
}

static int cmd_watch(struct conn *c, const struct opts *o)
{
    bool tty = isatty(STDOUT_FILENO);
    json_t *prev = NULL;
    uint64_t prev_ms = 0;
    long n = 0;
    int rc = EXIT_OK;

    while (!interrupted && (o->count < 0 || n < o->count)) {
        json_t *st, *top = NULL;
        uint64_t t = now_ms();
        double dt;
        char b1[32], b2[32], when[CTL_TIME_STRLEN];

        st = conn_call(c, "show stats", NULL, &rc);
        if (!st)
            break;
        if (o->top > 0)
            top =
                conn_call(c, "show clients", json_pack("{s:I}", "limit", (json_int_t)o->top), &rc);
        dt = prev ? (double)(t - prev_ms) / 1000.0 : 0;
        if (tty)
            fputs("\033[H\033[2J", stdout);
        printf("gwd %s  %s\n", ctl_time_format(t, when), c->path);
        if (prev && dt > 0) {
            printf(
                "flows/s   opened %.1f, closed %.1f, expired %.1f, refused %.1f\n",
                (double)(jpath(st, "mappings", "opened") - jpath(prev, "mappings", "opened")) / dt,
                (double)(jpath(st, "mappings", "closed") - jpath(prev, "mappings", "closed")) / dt,
                (double)(jpath(st, "mappings", "expired") - jpath(prev, "mappings", "expired")) /
                    dt,
                (double)(refused_sum(st) - refused_sum(prev)) / dt);
            printf("traffic/s in %s, out %s\n",
                   ctl_fmt_bytes((uint64_t)((double)(jpath(st, "traffic", "bytes_in") -
                                                     jpath(prev, "traffic", "bytes_in")) /
                                            dt),
                                 b1, sizeof(b1)),
                   ctl_fmt_bytes((uint64_t)((double)(jpath(st, "traffic", "bytes_out") -
                                                     jpath(prev, "traffic", "bytes_out")) /
                                            dt),
                                 b2, sizeof(b2)));
        } else {
            printf("flows/s   (measuring)\n");
        }
        ctl_print_stats(stdout, st);
        if (top) {
            json_t *e;
            size_t i;
            printf("top clients (of %" PRIu64 "):\n", jpath(top, "total", NULL));
            json_array_foreach(json_object_get(top, "clients"), i, e)
            {
                printf("  %-40s %8" PRIu64 " sessions  in %s out %s\n",
                       json_string_value(json_object_get(e, "client_ip")),
                       jpath(e, "sessions", NULL),
                       ctl_fmt_bytes(jpath(e, "bytes_in", NULL), b1, sizeof(b1)),
                       ctl_fmt_bytes(jpath(e, "bytes_out", NULL), b2, sizeof(b2)));
            }
            json_decref(top);
        } else if (rc == EXIT_UNREACHABLE) {
            json_decref(st);
            break;
        }
        if (!tty)
            puts("--");
        fflush(stdout);
        json_decref(prev);
        prev = st;
        prev_ms = t;
        rc = EXIT_OK;
        if (++n == o->count)
            break;
        struct timespec ts = {(time_t)o->interval,
                              (long)((o->interval - (double)(time_t)o->interval) * 1e9)};
        nanosleep(&ts, NULL);
    }
    json_decref(prev);
    return rc;
}

static int run_daemon(const struct opts *o)
{
    char pathbuf[256];
    struct conn c;
    const char *w0 = o->nwords > 0 ? o->words[0] : "";
    const char *w1 = o->nwords > 1 ? o->words[1] : "";
    int rc;

    /* validate the command line before touching the socket */
    if (strcmp(w0, "show") == 0 && strcmp(w1, "nat") == 0 && o->nwords == 2)
        rc = check_allowed(o, "show nat", FILTER_OPTS | B(O_SORT) | B(O_LIMIT) | B(O_OFFSET));
    else if (strcmp(w0, "show") == 0 && o->nwords == 2 &&
             (strcmp(w1, "stats") == 0 || strcmp(w1, "backends") == 0 || strcmp(w1, "config") == 0))
        rc = check_allowed(o, "show", 0);
    else if (strcmp(w0, "show") == 0 && strcmp(w1, "blocks") == 0 && o->nwords == 2)
        rc = check_allowed(o, "show blocks", B(O_CLIENT) | B(O_NAT_IP) | B(O_PORT) | B(O_LIMIT));
    else if (strcmp(w0, "flush") == 0 && strcmp(w1, "nat") == 0 && o->nwords == 2)
        rc = check_allowed(o, "flush nat", FILTER_OPTS);
    else if (strcmp(w0, "backend") == 0 && o->nwords == 3 &&
             (strcmp(w1, "drain") == 0 || strcmp(w1, "enable") == 0 || strcmp(w1, "disable") == 0))
        rc = check_allowed(o, "backend", 0);
    else if (strcmp(w0, "watch") == 0 && o->nwords == 1)
        rc = check_allowed(o, "watch", B(O_INTERVAL) | B(O_COUNT) | B(O_TOP));
    else if (strcmp(w0, "events") == 0 && o->nwords == 1)
        rc = check_allowed(o, "events", B(O_COUNT) | B(O_EVENT));
    else if (strcmp(w0, "version") == 0 && o->nwords == 1)
        rc = check_allowed(o, "version", 0);
    else if (o->nwords == 0)
        return usage_error("no command given");
    else if ((strcmp(w0, "show") == 0 && (strcmp(w1, "log") == 0 || strcmp(w1, "whois") == 0)) ||
             strcmp(w0, "log") == 0 || strcmp(w0, "whois") == 0)
        return usage_error("'%s' reads the store: give it --db FILE", w0);
    else
        return usage_error("unknown command '%s%s%s'", w0, *w1 ? " " : "", w1);
    if (rc)
        return rc;

    rc = conn_open(&c, o, pathbuf, sizeof(pathbuf));
    if (rc)
        return rc;
    if (strcmp(w0, "show") == 0 && strcmp(w1, "nat") == 0)
        rc = cmd_show_nat(&c, o);
    else if (strcmp(w0, "show") == 0 && strcmp(w1, "blocks") == 0) {
        json_t *args = filter_args(o);
        if (o->limit > 0)
            json_object_set_new(args, "limit", json_integer(o->limit));
        rc = cmd_simple(&c, o, "show blocks", args);
    } else if (strcmp(w0, "show") == 0) {
        char cmd[32];
        snprintf(cmd, sizeof(cmd), "show %s", w1);
        rc = cmd_simple(&c, o, cmd, NULL);
    } else if (strcmp(w0, "flush") == 0)
        rc = cmd_simple(&c, o, "flush nat", filter_args(o));
    else if (strcmp(w0, "backend") == 0) {
        char cmd[32];
        snprintf(cmd, sizeof(cmd), "backend %s", w1);
        rc = cmd_simple(&c, o, cmd, json_pack("{s:s}", "name", o->words[2]));
    } else if (strcmp(w0, "watch") == 0)
        rc = cmd_watch(&c, o);
    else if (strcmp(w0, "events") == 0)
        rc = cmd_events(&c, o);
    else
        rc = cmd_simple(&c, o, "version", NULL);
    conn_close(&c);
    return rc;
}

/* ---- the store (--db) ----------------------------------------------------- */

static int parse_time_opt(const char *name, const char *s, uint64_t *ms)
{
    if (ctl_time_parse(s, ms) == 0 || db_time_parse(s, ms) == 0)
        return 0;
    return usage_error("%s: not a time: '%s' (e.g. 2026-11-27T16:31:25Z, 2026-11-27, or "
                       "seconds since the epoch)",
                       name, s);
}

static int parse_proto(const char *s, uint8_t *out)
{
    if (!s)
        *out = 0;
    else if (strcmp(s, "tcp") == 0)
        *out = NAT_PROTO_TCP;
    else if (strcmp(s, "udp") == 0)
        *out = NAT_PROTO_UDP;
    else
        return usage_error("--proto must be tcp or udp, not '%s'", s);
    return 0;
}

/* The common filters of the store queries; returns 0 or EXIT_USAGE. */
static int db_filters(const struct opts *o, uint8_t *proto, bool *has_client,
                      struct nat_addr *client, uint8_t *plen, bool *has_nat,
                      struct nat_addr *nat_ip, uint16_t *lo, uint16_t *hi)
{
    if (parse_proto(o->proto, proto))
        return EXIT_USAGE;
    if (o->client) {
        if (nat_prefix_parse(client, plen, o->client) < 0)
            return usage_error("--client must be an IP address or CIDR prefix");
        *has_client = true;
    }
    if (o->nat_ip) {
        if (nat_addr_parse(nat_ip, o->nat_ip) < 0)
            return usage_error("--nat-ip must be an IP address");
        *has_nat = true;
    }
    if (o->port && ctl_port_range_parse(o->port, lo, hi) < 0)
        return usage_error("--port must be a port or LO-HI");
    return 0;
}

static json_t *session_row_json(const struct db_session_row *r)
{
    return json_pack("{s:I,s:s,s:s,s:i,s:s,s:i,s:s,s:s,s:i,s:s,s:s,s:s,s:s?,s:s?,s:I,s:I}", "id",
                     (json_int_t)r->id, "proto", r->proto_name, "client_ip", r->client_ip,
                     "client_port", r->client_port, "nat_ip", r->nat_ip, "nat_port", r->nat_port,
                     "backend", r->backend, "backend_ip", r->backend_ip, "backend_port",
                     r->backend_port, "state", r->state, "opened_at", r->opened_at, "last_seen",
                     r->last_seen, "closed_at", r->closed_at[0] ? r->closed_at : NULL,
                     "close_reason", r->close_reason[0] ? r->close_reason : NULL, "bytes_in",
                     (json_int_t)r->bytes_in, "bytes_out", (json_int_t)r->bytes_out);
}

static void view_from_row(struct ctl_session_view *v, const struct db_session_row *r)
{
    v->proto = r->proto_name;
    v->client_ip = r->client_ip;
    v->client_port = r->client_port;
    v->nat_ip = r->nat_ip;
    v->nat_port = r->nat_port;
    v->backend = r->backend;
    v->backend_ip = r->backend_ip;
    v->backend_port = r->backend_port;
    v->state = r->state;
    v->opened_ms = r->opened_at_ms;
    v->last_ms = r->last_seen_ms;
    v->closed_ms = r->closed_at_ms;
    v->bytes_in = r->bytes_in;
    v->bytes_out = r->bytes_out;
}

struct db_print {
    const struct opts *o;
    struct ctl_table t;
    json_t *arr;
    uint64_t now;
    uint64_t rows;
    bool bad_row; /* a row json_pack refused (out of memory): the listing fails */
};

/* --limit and --offset for a store query (0 = no limit / from the start). */
static void db_paging(const struct opts *o, uint32_t *limit, uint32_t *offset)
{
    *limit = o->limit > 0 ? (uint32_t)o->limit : 0;
    *offset = o->offset > 0 ? (uint32_t)o->offset : 0;
}

/*
 * Ends a store listing: with --json prints the object json_pack(fmt, ...)
 * builds (it takes p->arr) and returns false; else prints the table, frees
 * it and returns true (the caller prints its footer).
 */
static bool db_print_finish(struct db_print *p, const char *fmt, ...)
{
    va_list ap;
    json_t *res;

    if (!p->o->json) {
        ctl_table_print(&p->t, stdout);
        ctl_table_free(&p->t);
        return true;
    }
    va_start(ap, fmt);
    res = json_vpack_ex(NULL, 0, fmt, ap);
    va_end(ap);
    print_json(res, false);
    json_decref(res);
    return false;
}

static int db_session_cb(void *arg, const struct db_session_row *r)
{
    struct db_print *p = arg;
    struct ctl_session_view v;

    p->rows++;
    if (p->o->json)
        return (p->bad_row = json_array_append_new(p->arr, session_row_json(r)) != 0);
    view_from_row(&v, r);
    return ctl_nat_table_add(&p->t, &v, p->now) < 0;
}

static int db_show_nat(struct db_reader *r, const struct opts *o)
{
    struct db_session_query q;
    struct db_print p = {.o = o, .now = now_ms()};
    uint64_t total = 0, at;
    int n;

    db_session_query_init(&q);
    if (db_filters(o, &q.proto, &q.has_client, &q.client, &q.client_plen, &q.has_nat_ip, &q.nat_ip,
                   &q.nat_port_lo, &q.nat_port_hi))
        return EXIT_USAGE;
    q.backend = o->backend;
    if (o->state && (q.state = nat_state_parse(o->state)) < 0)
        return usage_error("--state must be new, established, closing or closed");
    if (o->at) {
        if (parse_time_opt("--at", o->at, &at))
            return EXIT_USAGE;
        q.has_since = q.has_until = true;
        q.since_ms = q.until_ms = at;
        p.now = at;
    } else if (!o->all && q.state != NAT_STATE_CLOSED) { /* --state closed: closed ones */
        q.open = DB_SESSIONS_OPEN;
    }
    q.sort = o->sort;
    db_paging(o, &q.limit, &q.offset);
    if (o->json)
        p.arr = json_array();
    else
        ctl_nat_table_init(&p.t);
    n = db_query_sessions(r, &q, db_session_cb, &p, &total);
    if (n >= 0 && p.bad_row) {
        fprintf(stderr, "gwctl: cannot print session %" PRIu64 " as JSON\n", p.rows);
        json_decref(p.arr);
        return EXIT_NO;
    }
    if (n < 0) {
        fprintf(stderr, "gwctl: query failed: %s\n",
                n == -EINVAL ? "bad sort key or query" : db_reader_error(r));
        json_decref(p.arr);
        ctl_table_free(&p.t);
        return n == -EINVAL ? EXIT_USAGE : EXIT_NO;
    }
    if (db_print_finish(&p, "{s:I,s:I,s:o}", "total", (json_int_t)total, "offset",
                        (json_int_t)q.offset, "sessions", p.arr))
        ctl_nat_footer(stdout, p.rows, total);
    return EXIT_OK;
}

static const char *const log_head[] = {"TIME",    "EVENT",  "PROTO", "CLIENT", "NAT",
                                       "BACKEND", "REASON", "IN",    "OUT"};
static const bool log_right[] = {false, false, false, false, false, false, false, true, true};

static int db_event_cb(void *arg, const struct db_event_row *r)
{
    struct db_print *p = arg;
    char client[80], nat[80], ep[80], bend[160], in[16], out[16];
    const char *cells[9];

    p->rows++;
    if (p->o->json) {
        p->bad_row = json_array_append_new(
            p->arr,
            json_pack("{s:I,s:s,s:s,s:s,s:s,s:i,s:s?,s:i,s:s,s:s,s:i,s:I,s:s?,s:I,s:I,s:o}", "id",
                      (json_int_t)r->id, "time", r->time, "event", r->event, "proto", r->proto_name,
                      "client_ip", r->client_ip, "client_port", r->client_port, "nat_ip",
                      r->nat_ip[0] ? r->nat_ip : NULL, "nat_port", r->nat_port, "backend",
                      r->backend, "backend_ip", r->backend_ip, "backend_port", r->backend_port,
                      "session_id", (json_int_t)r->session_id, "reason",
                      r->reason[0] ? r->reason : NULL, "bytes_in", (json_int_t)r->bytes_in,
                      "bytes_out", (json_int_t)r->bytes_out, "nat_port_last",
                      r->nat_port_last ? json_integer(r->nat_port_last) : json_null())) != 0;
        return p->bad_row;
    }
    bool block = r->nat_port_last != 0; /* block_alloc/free: a client's range of ports */
    if (block)
        snprintf(client, sizeof(client), "%s", r->client_ip);
    else
        ctl_fmt_endpoint(r->client_ip, r->client_port, client, sizeof(client));
    if (r->nat_ip[0])
        ctl_fmt_endpoint(r->nat_ip, r->nat_port, nat, sizeof(nat));
    else
        strcpy(nat, "-");
    if (block) {
        size_t len = strlen(nat);
        snprintf(nat + len, sizeof(nat) - len, "-%u", r->nat_port_last);
        strcpy(bend, "-");
    } else {
        ctl_fmt_endpoint(r->backend_ip, r->backend_port, ep, sizeof(ep));
        snprintf(bend, sizeof(bend), "%s%s%s", r->backend, r->backend[0] ? "/" : "", ep);
    }
    bool closing = strcmp(r->event, "close") == 0 || strcmp(r->event, "expire") == 0;
    cells[0] = r->time;
    cells[1] = r->event;
    cells[2] = r->proto_name;
    cells[3] = client;
    cells[4] = nat;
    cells[5] = bend;
    cells[6] = r->reason[0] ? r->reason : "-";
    cells[7] = closing ? ctl_fmt_bytes(r->bytes_in, in, sizeof(in)) : "-";
    cells[8] = closing ? ctl_fmt_bytes(r->bytes_out, out, sizeof(out)) : "-";
    return ctl_table_add(&p->t, cells) < 0;
}

static int db_log(struct db_reader *r, const struct opts *o)
{
    struct db_event_query q;
    struct db_print p = {.o = o};
    uint64_t total = 0;
    int n;

    db_event_query_init(&q);
    if (db_filters(o, &q.proto, &q.has_client, &q.client, &q.client_plen, &q.has_nat_ip, &q.nat_ip,
                   &q.nat_port_lo, &q.nat_port_hi))
        return EXIT_USAGE;
    q.backend = o->backend;
    q.event = o->event;
    if (o->event) {
        static const char *const known[] = {"open",   "close",       "expire",     "refuse",
                                            "repick", "block_alloc", "block_free", "block"};
        bool ok = false;
        for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
            ok = ok || strcmp(o->event, known[i]) == 0;
        if (!ok)
            return usage_error("--event must be open, close, expire, refuse, repick, "
                               "block_alloc, block_free or block (both), not '%s'",
                               o->event);
    }
    if (o->since && parse_time_opt("--since", o->since, &q.since_ms))
        return EXIT_USAGE;
    if (o->until && parse_time_opt("--until", o->until, &q.until_ms))
        return EXIT_USAGE;
    q.has_since = o->since != NULL;
    q.has_until = o->until != NULL;
    db_paging(o, &q.limit, &q.offset);
    if (o->json)
        p.arr = json_array();
    else
        ctl_table_init(&p.t, 9, log_head, log_right);
    n = db_query_events(r, &q, db_event_cb, &p, &total);
    if (n >= 0 && p.bad_row) {
        fprintf(stderr, "gwctl: cannot print event %" PRIu64 " as JSON\n", p.rows);
        json_decref(p.arr);
        return EXIT_NO;
    }
    if (n < 0) {
        fprintf(stderr, "gwctl: query failed: %s\n", db_reader_error(r));
        json_decref(p.arr);
        ctl_table_free(&p.t);
        return EXIT_NO;
    }
    if (db_print_finish(&p, "{s:I,s:o}", "total", (json_int_t)total, "events", p.arr)) {
        if ((uint64_t)p.rows < total)
            printf("%" PRIu64 " of %" PRIu64 " events\n", p.rows, total);
        else
            printf("%" PRIu64 " event%s\n", p.rows, p.rows == 1 ? "" : "s");
    }
    return EXIT_OK;
}

/* Splits "IP:PORT" or "[IPv6]:PORT". Returns 0 or -1. */
static int parse_ip_port(const char *s, struct nat_addr *ip, uint16_t *port)
{
    char buf[NAT_ADDR_STRLEN + 2];
    const char *colon;
    uint16_t lo, hi;
    size_t n;

    if (*s == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':')
            return -1;
        n = (size_t)(end - s - 1);
        colon = end + 1;
        s++;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return -1;
        n = (size_t)(colon - s);
    }
    if (n == 0 || n >= sizeof(buf))
        return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    if (nat_addr_parse(ip, buf) < 0 || ctl_port_range_parse(colon + 1, &lo, &hi) < 0 || lo != hi)
        return -1;
    *port = lo;
    return 0;
}

static const char *const whois_head[] = {"ID",      "PROTO",  "CLIENT", "NAT",
                                         "BACKEND", "OPENED", "CLOSED", "REASON"};

/* The port block that held a whois port (db_whois_block), for --json. */
static json_t *block_hold_json(const struct db_block_hold *b)
{
    return json_pack("{s:s,s:s,s:i,s:i,s:s,s:o,s:o}", "client_ip", b->alloc.client_ip, "nat_ip",
                     b->alloc.nat_ip, "nat_port", b->alloc.nat_port, "nat_port_last",
                     b->alloc.nat_port_last, "allocated_at", b->alloc.time, "freed_at",
                     b->freed_at[0] ? json_string(b->freed_at) : json_null(), "free_reason",
                     b->free_reason[0] ? json_string(b->free_reason) : json_null());
}

/* "block 192.0.2.1:20000-20063 of 10.1.0.1: taken T1, given back T2 (reason)" */
static void print_block_hold(const struct db_block_hold *b)
{
    char nat[80];
    ctl_fmt_endpoint(b->alloc.nat_ip, b->alloc.nat_port, nat, sizeof(nat));
    printf("block %s-%u of %s: taken %s, ", nat, (unsigned)b->alloc.nat_port_last,
           b->alloc.client_ip, b->alloc.time);
    if (b->freed_at[0] == '\0')
        printf("still held\n");
    else if (b->free_reason[0] != '\0')
        printf("given back %s (%s)\n", b->freed_at, b->free_reason);
    else
        printf("given back %s\n", b->freed_at);
}

static int db_whois_cmd(struct db_reader *r, const struct opts *o, const char *target)
{
    struct db_session_row rows[32];
    struct db_block_hold block;
    struct nat_addr ip;
    uint16_t port;
    uint8_t proto;
    uint64_t at = now_ms();
    char when[CTL_TIME_STRLEN];
    int n;

    if (parse_ip_port(target, &ip, &port) < 0)
        return usage_error("whois needs the NAT endpoint as IP:PORT, not '%s'", target);
    if (parse_proto(o->proto, &proto))
        return EXIT_USAGE;
    if (o->at && parse_time_opt("--at", o->at, &at))
        return EXIT_USAGE;
    n = db_whois(r, proto, &ip, port, at, rows, sizeof(rows) / sizeof(rows[0]));
    int held = n < 0 ? n : db_whois_block(r, &ip, port, at, &block);
    if (n < 0 || held < 0) {
        fprintf(stderr, "gwctl: query failed: %s\n", db_reader_error(r));
        return EXIT_NO;
    }
    if (o->json) {
        json_t *arr = json_array(), *res;
        for (int i = 0; i < n && i < (int)(sizeof(rows) / sizeof(rows[0])); i++)
            json_array_append_new(arr, session_row_json(&rows[i]));
        char ipbuf[NAT_ADDR_STRLEN];
        res = json_pack("{s:s,s:s,s:i,s:I,s:o,s:o}", "at", ctl_time_format(at, when), "nat_ip",
                        nat_addr_format(&ip, ipbuf), "nat_port", port, "total", (json_int_t)n,
                        "sessions", arr, "block", held ? block_hold_json(&block) : json_null());
        print_json(res, false);
        json_decref(res);
        return n > 0 || held ? EXIT_OK : EXIT_NO;
    }
    if (n == 0 && held) {
        print_block_hold(&block);
        printf("no session used %s%s%s at %s; its port block was held\n", target,
               o->proto ? "/" : "", o->proto ? o->proto : "", ctl_time_format(at, when));
    } else if (n == 0) {
        printf("nobody held %s%s%s at %s\n", target, o->proto ? "/" : "", o->proto ? o->proto : "",
               ctl_time_format(at, when));
    } else {
        struct ctl_table t;
        ctl_table_init(&t, 8, whois_head, NULL);
        for (int i = 0; i < n && i < (int)(sizeof(rows) / sizeof(rows[0])); i++) {
            const struct db_session_row *w = &rows[i];
            char id[24], client[80], nat[80], ep[80], bend[160];
            snprintf(id, sizeof(id), "%" PRIu64, w->id);
            ctl_fmt_endpoint(w->client_ip, w->client_port, client, sizeof(client));
            ctl_fmt_endpoint(w->nat_ip, w->nat_port, nat, sizeof(nat));
            ctl_fmt_endpoint(w->backend_ip, w->backend_port, ep, sizeof(ep));
            snprintf(bend, sizeof(bend), "%s%s%s", w->backend, w->backend[0] ? "/" : "", ep);
            const char *cells[8] = {id,
                                    w->proto_name,
                                    client,
                                    nat,
                                    bend,
                                    w->opened_at,
                                    w->closed_at[0] ? w->closed_at : "-",
                                    w->close_reason[0] ? w->close_reason : "-"};
            ctl_table_add(&t, cells);
        }
        ctl_table_print(&t, stdout);
        ctl_table_free(&t);
        if (held)
            print_block_hold(&block);
        printf("%d session%s held %s at %s\n", n, n == 1 ? "" : "s", target,
               ctl_time_format(at, when));
    }
    return n > 0 || held ? EXIT_OK : EXIT_NO;
}

static int run_db(const struct opts *o)
{
    struct db_reader *r;
    char err[512];
    const char *w0 = o->nwords > 0 ? o->words[0] : "";
    const char *w1 = o->nwords > 1 ? o->words[1] : "";
    int kind, rc;

    /* show nat | show log | log | whois IP:PORT | show whois IP:PORT */
    if (strcmp(w0, "show") == 0 && o->nwords >= 2) {
        w0 = w1;
        w1 = o->nwords > 2 ? o->words[2] : "";
        kind = o->nwords;
        kind--;
    } else {
        kind = o->nwords;
    }
    if (strcmp(w0, "nat") == 0 && kind == 1)
        rc = check_allowed(o, "show nat",
                           FILTER_OPTS | B(O_SORT) | B(O_LIMIT) | B(O_OFFSET) | B(O_ALL) | B(O_AT));
    else if (strcmp(w0, "log") == 0 && kind == 1)
        rc = check_allowed(o, "log",
                           FILTER_OPTS | B(O_EVENT) | B(O_SINCE) | B(O_UNTIL) | B(O_LIMIT) |
                               B(O_OFFSET));
    else if (strcmp(w0, "whois") == 0 && kind == 2)
        rc = check_allowed(o, "whois", B(O_PROTO) | B(O_AT));
    else if (strcmp(w0, "whois") == 0)
        return usage_error("usage: gwctl --db FILE whois IP:PORT [--at TIME]");
    else
        return usage_error("with --db: show nat, log (or show log), whois IP:PORT");
    if (rc)
        return rc;
    if (o->state && strcmp(w0, "nat") != 0)
        return usage_error("--state goes with show nat");
    if (db_reader_open(&r, o->db, err, sizeof(err)) < 0) {
        fprintf(stderr, "gwctl: cannot read the store %s: %s\n", o->db, err);
        return EXIT_NO;
    }
    if (strcmp(w0, "nat") == 0)
        rc = db_show_nat(r, o);
    else if (strcmp(w0, "log") == 0)
        rc = db_log(r, o);
    else
        rc = db_whois_cmd(r, o, w1);
    db_reader_close(r);
    return rc;
}

int main(int argc, char **argv)
{
    struct opts o;
    struct sigaction sa;
    int rc;

    rc = parse_opts(argc, argv, &o);
    if (rc)
        return rc;
    if (o.help || (o.nwords > 0 && strcmp(o.words[0], "help") == 0) || argc == 1)
        return print_help(&o) == EXIT_OK && argc == 1 ? EXIT_USAGE : EXIT_OK;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (o.db)
        return run_db(&o);
    return run_daemon(&o);
}
