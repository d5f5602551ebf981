/*
 * gw_config.c - gwd's configuration: defaults, the JSON file (jansson), the
 * command-line flags on top, validation that names the JSON path of each
 * error, and the configuration back as JSON (show config).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <grp.h>
#include <netdb.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gateway/gw_control.h"
#include "gwd.h"

/* Parse state: the first error wins and is kept in err. */
struct pctx {
    char *err;
    size_t errlen;
    bool failed;
    bool resolve; /* host names allowed (files and flags); not in gw_config_parse */
};

static int fail(struct pctx *p, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct pctx *p, const char *path, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (p->failed)
        return -EINVAL;
    p->failed = true;
    n = snprintf(p->err, p->errlen, "%s: ", path);
    if (n < 0 || (size_t)n >= p->errlen)
        return -EINVAL;
    va_start(ap, fmt);
    vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static void pathf(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* snprintf for JSON paths: a path cut short is still a useful message. */
static void pathf(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

/* ---- addresses ---------------------------------------------------------- */

/* Formats an address as IP:PORT / [IPv6]:PORT. */
char *gw_sockaddr_format(const struct gw_sockaddr *a, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";

    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)&a->ss;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
        pathf(buf, len, "%s:%u", ip, ntohs(s4->sin_port));
    } else if (a->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&a->ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
        pathf(buf, len, "[%s]:%u", ip, ntohs(s6->sin6_port));
    } else {
        pathf(buf, len, "?");
    }
    return buf;
}

/* Parses an IP literal (no port) with `port` into out. Returns 0 or -EINVAL. */
static int sockaddr_from_ip(struct gw_sockaddr *out, const char *ip, uint16_t port)
{
    struct gw_sockaddr a;

    memset(&a, 0, sizeof(a));
    struct sockaddr_in *s4 = (struct sockaddr_in *)&a.ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&a.ss;
    if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        a.len = sizeof(*s4);
    } else if (inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        a.len = sizeof(*s6);
    } else {
        return -EINVAL;
    }
    *out = a;
    return 0;
}

static int sockaddr_parse(struct gw_sockaddr *out, const char *s, bool resolve);

/* Parses "IP:PORT", "[IPv6]:PORT" or "HOST:PORT". */
int gw_sockaddr_parse(struct gw_sockaddr *out, const char *s)
{
    return sockaddr_parse(out, s, true);
}

static int sockaddr_parse(struct gw_sockaddr *out, const char *s, bool resolve)
{
    char host[256];
    const char *colon, *portstr;
    size_t hl;
    char *end;
    unsigned long port;

    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':')
            return -EINVAL;
        hl = (size_t)(rb - s - 1);
        if (hl == 0 || hl >= sizeof(host))
            return -EINVAL;
        memcpy(host, s + 1, hl);
        host[hl] = '\0';
        portstr = rb + 2;
    } else {
        colon = strrchr(s, ':');
        if (!colon || strchr(s, ':') != colon)
            return -EINVAL;
        hl = (size_t)(colon - s);
        if (hl == 0 || hl >= sizeof(host))
            return -EINVAL;
        memcpy(host, s, hl);
        host[hl] = '\0';
        portstr = colon + 1;
    }
    if (!*portstr)
        return -EINVAL;
    errno = 0;
    port = strtoul(portstr, &end, 10);
    if (errno || *end || port > 65535 || portstr[0] == '-' || portstr[0] == '+')
        return -EINVAL;
    if (sockaddr_from_ip(out, host, (uint16_t)port) == 0)
        return 0;
    if (s[0] == '[')
        return -EINVAL;
    if (!resolve)
        return -ENOENT;

    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res)
        return -ENOENT;
    memset(out, 0, sizeof(*out));
    memcpy(&out->ss, res->ai_addr, res->ai_addrlen);
    out->len = res->ai_addrlen;
    if (out->ss.ss_family == AF_INET)
        ((struct sockaddr_in *)&out->ss)->sin_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in6 *)&out->ss)->sin6_port = htons((uint16_t)port);
    freeaddrinfo(res);
    return 0;
}

/* nat_endpoint -> socket address. */
void gw_sockaddr_from_endpoint(struct gw_sockaddr *out, const struct nat_endpoint *ep)
{
    memset(out, 0, sizeof(*out));
    if (nat_addr_is_v4(&ep->addr)) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&out->ss;
        s4->sin_family = AF_INET;
        memcpy(&s4->sin_addr, ep->addr.b + 12, 4);
        s4->sin_port = htons(ep->port);
        out->len = sizeof(*s4);
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&out->ss;
        s6->sin6_family = AF_INET6;
        memcpy(&s6->sin6_addr, ep->addr.b, 16);
        s6->sin6_port = htons(ep->port);
        out->len = sizeof(*s6);
    }
}

/* socket address -> nat_endpoint (v4-mapped IPv6 stays v4-mapped, i.e. v4). */
void gw_endpoint_from_sockaddr(struct nat_endpoint *out, const struct sockaddr *sa)
{
    memset(out, 0, sizeof(*out));
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)sa;
        out->addr = nat_addr_from_v4(s4->sin_addr.s_addr);
        out->port = ntohs(s4->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)sa;
        memcpy(out->addr.b, &s6->sin6_addr, 16);
        out->port = ntohs(s6->sin6_port);
    }
}

static bool sockaddr_is_loopback(const struct gw_sockaddr *a)
{
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)&a->ss;
        return (ntohl(s4->sin_addr.s_addr) >> 24) == 127;
    }
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&a->ss;
    if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
        return s6->sin6_addr.s6_addr[12] == 127;
    return IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr);
}

/* True when a server is reached over IPv6 (IPv4-mapped addresses are IPv4,
 * as libnat counts them). */
static bool server_is_v6(const struct gw_server_conf *sv)
{
    struct nat_endpoint ep;

    gw_endpoint_from_sockaddr(&ep, (const struct sockaddr *)&sv->addr.ss);
    return !nat_addr_is_v4(&ep.addr);
}

/* ---- defaults and freeing ---------------------------------------------- */

static void health_conf_free(struct gw_health_conf *h)
{
    free(h->send);
    free(h->expect);
    h->send = h->expect = NULL;
}

static void backend_conf_free(struct gw_backend_conf *b)
{
    free(b->servers);
    b->servers = NULL;
    health_conf_free(&b->health);
}

/* Frees a config and all it owns. */
void gw_config_free(struct gw_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < cfg->n_backends; i++)
        backend_conf_free(&cfg->backends[i]);
    free(cfg->backends);
    free(cfg->routes);
    free(cfg->db_path);
    free(cfg->control_path);
    free(cfg->control_owner);
    free(cfg->control_group);
    free(cfg->user);
    free(cfg->file);
    free(cfg);
}

static char *default_db_path(void)
{
    char buf[512];
    const char *state = getenv("XDG_STATE_HOME");
    const char *home = getenv("HOME");

    if (geteuid() == 0)
        return strdup("/var/lib/gw/gwd.db");
    if (state && *state)
        pathf(buf, sizeof(buf), "%s/gwd.db", state);
    else if (home && *home)
        pathf(buf, sizeof(buf), "%s/.local/state/gwd.db", home);
    else
        pathf(buf, sizeof(buf), "/tmp/gwd-%u.db", (unsigned)geteuid());
    return strdup(buf);
}

static struct gw_config *config_new_default(void)
{
    struct gw_config *cfg = calloc(1, sizeof(*cfg));

    if (!cfg)
        return NULL;
    cfg->port = GW_DEFAULT_PORT;
    cfg->binds_default = true;
    cfg->backlog = GW_DEFAULT_BACKLOG;
    nat_config_default(&cfg->nat);
    cfg->connect_timeout_ms = GW_DEFAULT_CONNECT_TIMEOUT_MS;
    cfg->drain_timeout_ms = GW_DEFAULT_DRAIN_TIMEOUT_MS;
    cfg->buffer_size = GW_DEFAULT_BUFFER;
    cfg->splice_after = GW_DEFAULT_SPLICE_AFTER;
    cfg->log_level = GW_LOG_INFO;
    cfg->control_mode = CTL_DEFAULT_MODE;
    cfg->control_max_clients = CTL_DEFAULT_MAX_CLIENTS;
    cfg->control_idle_ms = CTL_DEFAULT_IDLE_MS;
    cfg->control_max_output = CTL_DEFAULT_OUT_MAX;
    cfg->db_path = default_db_path();
    cfg->db_path_default = true;
    if (!cfg->db_path) {
        free(cfg);
        return NULL;
    }
    return cfg;
}

static void health_conf_default(struct gw_health_conf *h, uint8_t proto)
{
    memset(h, 0, sizeof(*h));
    h->enabled = proto == NAT_PROTO_TCP;
    h->interval_ms = 2000;
    h->timeout_ms = 1000;
    h->rise = 2;
    h->fall = 3;
}

/* ---- JSON helpers ------------------------------------------------------- */

/* Errors on any key of obj not in `allowed` (NULL-terminated). */
static int check_keys(struct pctx *p, json_t *obj, const char *path, const char *const *allowed)
{
    const char *key;
    json_t *v;

    json_object_foreach(obj, key, v)
    {
        bool ok = false;
        for (size_t i = 0; allowed[i]; i++)
            if (strcmp(key, allowed[i]) == 0)
                ok = true;
        if (!ok) {
            char kp[256];
            pathf(kp, sizeof(kp), "%s%s%s", path, *path ? "." : "", key);
            return fail(p, kp, "unknown key");
        }
    }
    return 0;
}

static void subpath(char *buf, size_t len, const char *path, const char *key)
{
    pathf(buf, len, "%s%s%s", path, *path ? "." : "", key);
}

/* An integer member in [min, max]; absent leaves *out. */
static int get_int(struct pctx *p, json_t *obj, const char *path, const char *key, long long min,
                   long long max, long long *out)
{
    json_t *v = json_object_get(obj, key);
    char kp[256];

    if (!v)
        return 0;
    subpath(kp, sizeof(kp), path, key);
    if (!json_is_integer(v))
        return fail(p, kp, "must be an integer");
    long long x = json_integer_value(v);
    if (x < min || x > max)
        return fail(p, kp, "must be between %lld and %lld", min, max);
    *out = x;
    return 0;
}

/* A duration in seconds (integer or real, >= 0, <= max_s) into ms. */
static int get_seconds(struct pctx *p, json_t *obj, const char *path, const char *key, double max_s,
                       uint32_t *out_ms)
{
    json_t *v = json_object_get(obj, key);
    char kp[256];

    if (!v)
        return 0;
    subpath(kp, sizeof(kp), path, key);
    if (!json_is_number(v))
        return fail(p, kp, "must be a number of seconds");
    double x = json_number_value(v);
    if (!(x >= 0 && x <= max_s))
        return fail(p, kp, "must be between 0 and %g seconds", max_s);
    *out_ms = (uint32_t)(x * 1000.0 + 0.5);
    return 0;
}

/* A string member; absent leaves *out. *out borrowed from the JSON. */
static int get_string(struct pctx *p, json_t *obj, const char *path, const char *key,
                      const char **out)
{
    json_t *v = json_object_get(obj, key);
    char kp[256];

    if (!v)
        return 0;
    subpath(kp, sizeof(kp), path, key);
    if (!json_is_string(v))
        return fail(p, kp, "must be a string");
    *out = json_string_value(v);
    return 0;
}

/* Replaces *dst with a copy of a string member (null: NULL) when present. */
static int get_owned_string(struct pctx *p, json_t *obj, const char *path, const char *key,
                            char **dst, bool null_ok)
{
    json_t *v = json_object_get(obj, key);
    char kp[256];

    if (!v)
        return 0;
    subpath(kp, sizeof(kp), path, key);
    if (json_is_null(v) && null_ok) {
        free(*dst);
        *dst = NULL;
        return 0;
    }
    if (!json_is_string(v) || json_string_length(v) == 0)
        return fail(p, kp,
                    null_ok ? "must be a non-empty string or null" : "must be a non-empty string");
    char *s = strdup(json_string_value(v));
    if (!s)
        return fail(p, kp, "out of memory");
    free(*dst);
    *dst = s;
    return 0;
}

static int parse_port_range(const char *s, uint16_t *lo, uint16_t *hi)
{
    char *end;
    unsigned long a, b;

    errno = 0;
    a = strtoul(s, &end, 10);
    if (errno || end == s || *s == '-' || *s == '+')
        return -1;
    if (*end == '\0') {
        b = a;
    } else if (*end == '-') {
        const char *t = end + 1;
        if (!*t || *t == '-' || *t == '+')
            return -1;
        b = strtoul(t, &end, 10);
        if (errno || *end)
            return -1;
    } else {
        return -1;
    }
    if (a < 1 || b > 65535 || a > b)
        return -1;
    *lo = (uint16_t)a;
    *hi = (uint16_t)b;
    return 0;
}

/* ---- sections ----------------------------------------------------------- */

static int parse_listen(struct pctx *p, struct gw_config *cfg, json_t *o)
{
    static const char *const keys[] = {"port", "bind", "backlog", NULL};
    long long x;

    if (!json_is_object(o))
        return fail(p, "listen", "must be an object");
    if (check_keys(p, o, "listen", keys))
        return -EINVAL;
    x = cfg->port;
    if (get_int(p, o, "listen", "port", 0, 65535, &x))
        return -EINVAL;
    cfg->port = (uint16_t)x;
    x = cfg->backlog;
    if (get_int(p, o, "listen", "backlog", 0, 65535, &x))
        return -EINVAL;
    cfg->backlog = (int)x;
    json_t *b = json_object_get(o, "bind");
    if (b) {
        size_t i;
        json_t *v;
        if (!json_is_array(b) || json_array_size(b) == 0 || json_array_size(b) > GW_MAX_BINDS)
            return fail(p, "listen.bind", "must be an array of 1 to %d addresses", GW_MAX_BINDS);
        cfg->n_binds = 0;
        json_array_foreach(b, i, v)
        {
            char kp[64];
            pathf(kp, sizeof(kp), "listen.bind[%zu]", i);
            if (!json_is_string(v) || sockaddr_from_ip(&cfg->binds[i], json_string_value(v), 0))
                return fail(p, kp, "not an IPv4 or IPv6 address");
            cfg->n_binds++;
        }
        cfg->binds_default = false;
    }
    return 0;
}

static int parse_nat_ips(struct pctx *p, struct gw_config *cfg, json_t *a)
{
    size_t i;
    json_t *v;

    if (!json_is_array(a) || json_array_size(a) == 0 || json_array_size(a) > NAT_MAX_IPS)
        return fail(p, "nat.ips", "must be an array of 1 to %d addresses", NAT_MAX_IPS);
    cfg->nat.n_ips = 0;
    json_array_foreach(a, i, v)
    {
        char kp[64];
        pathf(kp, sizeof(kp), "nat.ips[%zu]", i);
        if (!json_is_string(v) || nat_addr_parse(&cfg->nat.ips[i], json_string_value(v)))
            return fail(p, kp, "not an IPv4 or IPv6 address");
        cfg->nat.n_ips++;
    }
    cfg->nat_ips_set = true;
    return 0;
}

/* "flows": a log row per flow event; "blocks": per port block (the block
 * policy), the flows being in nat_sessions alone. */
static int parse_nat_log(const char *s, bool *blocks)
{
    if (strcmp(s, "flows") != 0 && strcmp(s, "blocks") != 0)
        return -1;
    *blocks = strcmp(s, "blocks") == 0;
    return 0;
}

static int parse_nat(struct pctx *p, struct gw_config *cfg, json_t *o)
{
    static const char *const keys[] = {
        "policy",      "mapping",          "ips",        "ports",
        "timeouts",    "per_client_limit", "block_size", "max_blocks_per_client",
        "reuse_delay", "max_sessions",     "seed",       "log",
        "block_hold", NULL};
    static const char *const tkeys[] = {"udp", "tcp_established", "tcp_transitory", NULL};
    struct nat_config *n = &cfg->nat;
    const char *s = NULL;
    long long x;

    if (!json_is_object(o))
        return fail(p, "nat", "must be an object");
    if (check_keys(p, o, "nat", keys))
        return -EINVAL;
    if (get_string(p, o, "nat", "policy", &s))
        return -EINVAL;
    if (s) {
        int v = nat_policy_parse(s);
        if (v < 0)
            return fail(p, "nat.policy",
                        "unknown policy \"%s\" (sequential, random, preserve, block)", s);
        n->policy = (enum nat_policy)v;
    }
    s = NULL;
    if (get_string(p, o, "nat", "mapping", &s))
        return -EINVAL;
    if (s) {
        int v = nat_mapping_parse(s);
        if (v < 0)
            return fail(p, "nat.mapping", "unknown mapping \"%s\" (eim, adm, apdm)", s);
        n->mapping = (enum nat_mapping)v;
    }
    s = NULL;
    if (get_string(p, o, "nat", "log", &s))
        return -EINVAL;
    if (s && parse_nat_log(s, &cfg->nat_log_blocks) < 0)
        return fail(p, "nat.log", "unknown log \"%s\" (flows, blocks)", s);
    json_t *ips = json_object_get(o, "ips");
    if (ips && parse_nat_ips(p, cfg, ips))
        return -EINVAL;
    json_t *ports = json_object_get(o, "ports");
    if (ports) {
        if (!json_is_string(ports) ||
            parse_port_range(json_string_value(ports), &n->port_lo, &n->port_hi))
            return fail(p, "nat.ports", "must be a string \"LO-HI\" with 1 <= LO <= HI <= 65535");
    }
    json_t *t = json_object_get(o, "timeouts");
    if (t) {
        if (!json_is_object(t))
            return fail(p, "nat.timeouts", "must be an object");
        if (check_keys(p, t, "nat.timeouts", tkeys) ||
            get_seconds(p, t, "nat.timeouts", "udp", 4e6, &n->timeout_ms[NAT_TIMEOUT_UDP]) ||
            get_seconds(p, t, "nat.timeouts", "tcp_established", 4e6,
                        &n->timeout_ms[NAT_TIMEOUT_TCP_ESTABLISHED]) ||
            get_seconds(p, t, "nat.timeouts", "tcp_transitory", 4e6,
                        &n->timeout_ms[NAT_TIMEOUT_TCP_TRANSITORY]))
            return -EINVAL;
    }
    x = n->per_client_limit;
    if (get_int(p, o, "nat", "per_client_limit", 0, UINT32_MAX, &x))
        return -EINVAL;
    n->per_client_limit = (uint32_t)x;
    x = n->block_size;
    if (get_int(p, o, "nat", "block_size", 1, 65535, &x))
        return -EINVAL;
    n->block_size = (uint32_t)x;
    x = n->max_blocks_per_client;
    if (get_int(p, o, "nat", "max_blocks_per_client", 0, 65535, &x))
        return -EINVAL;
    n->max_blocks_per_client = (uint32_t)x;
    x = n->max_sessions;
    if (get_int(p, o, "nat", "max_sessions", 0, UINT32_MAX, &x))
        return -EINVAL;
    n->max_sessions = (uint32_t)x;
    x = (long long)n->seed;
    if (get_int(p, o, "nat", "seed", 0, INT64_MAX, &x))
        return -EINVAL;
    n->seed = (uint64_t)x;
    if (get_seconds(p, o, "nat", "reuse_delay", 86400, &n->reuse_delay_ms) ||
        get_seconds(p, o, "nat", "block_hold", NAT_MAX_BLOCK_HOLD_MS / 1000, &n->block_hold_ms))
        return -EINVAL;
    return 0;
}

static int parse_proto(const char *s)
{
    if (strcmp(s, "tcp") == 0)
        return NAT_PROTO_TCP;
    if (strcmp(s, "udp") == 0)
        return NAT_PROTO_UDP;
    return -1;
}

/* A pool or server name: 1 to GW_NAME_MAX - 1 bytes of UTF-8 (it goes into
 * JSON replies and the store), no '/', space or control character. Names
 * from flags are checked here too; jansson's own check settles the UTF-8. */
static int copy_name(char *dst, const char *src)
{
    size_t n = strlen(src);

    if (n == 0 || n >= GW_NAME_MAX)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (src[i] == '/' || src[i] == ' ' || (unsigned char)src[i] < 0x20 || src[i] == 0x7f)
            return -1;
    json_t *utf8 = json_stringn(src, n);
    if (utf8 == NULL)
        return -1;
    json_decref(utf8);
    memmove(dst, src, n + 1);
    return 0;
}

static int parse_server(struct pctx *p, struct gw_server_conf *sc, json_t *v, const char *path)
{
    static const char *const keys[] = {"address", "name", "weight", "max_conns", NULL};
    const char *addr = NULL, *name = NULL;
    char kp[256];
    long long x;

    memset(sc, 0, sizeof(*sc));
    sc->weight = 1;
    if (json_is_string(v)) {
        addr = json_string_value(v);
    } else if (json_is_object(v)) {
        if (check_keys(p, v, path, keys) || get_string(p, v, path, "address", &addr) ||
            get_string(p, v, path, "name", &name))
            return -EINVAL;
        x = 1;
        if (get_int(p, v, path, "weight", 1, 256, &x))
            return -EINVAL;
        sc->weight = (unsigned)x;
        x = 0;
        if (get_int(p, v, path, "max_conns", 0, UINT32_MAX, &x))
            return -EINVAL;
        sc->max_conns = (unsigned)x;
        if (!addr)
            return fail(p, path, "missing \"address\"");
    } else {
        return fail(p, path, "must be \"HOST:PORT\" or an object");
    }
    pathf(kp, sizeof(kp), json_is_string(v) ? "%s" : "%s.address", path);
    int rc = sockaddr_parse(&sc->addr, addr, p->resolve);
    if (rc == -ENOENT)
        return fail(p, kp, "host of \"%s\" does not resolve", addr);
    if (rc)
        return fail(p, kp, "\"%s\" is not HOST:PORT", addr);
    struct sockaddr_in *s4 = (struct sockaddr_in *)&sc->addr.ss;
    if (s4->sin_port == 0)
        return fail(p, kp, "port 0 is not a server port");
    if (name) {
        pathf(kp, sizeof(kp), "%s.name", path);
        if (copy_name(sc->name, name))
            return fail(p, kp, "must be 1 to %d bytes of UTF-8, no '/', spaces or control characters",
                        GW_NAME_MAX - 1);
    } else {
        gw_sockaddr_format(&sc->addr, sc->name, sizeof(sc->name));
    }
    return 0;
}

static int parse_health(struct pctx *p, struct gw_health_conf *h, json_t *o, const char *path)
{
    static const char *const keys[] = {"enabled", "interval", "timeout", "rise",
                                       "fall",    "send",     "expect",  NULL};
    char kp[256];
    long long x;

    if (!json_is_object(o))
        return fail(p, path, "must be an object");
    if (check_keys(p, o, path, keys))
        return -EINVAL;
    json_t *en = json_object_get(o, "enabled");
    if (en) {
        if (!json_is_boolean(en)) {
            subpath(kp, sizeof(kp), path, "enabled");
            return fail(p, kp, "must be true or false");
        }
        h->enabled = json_is_true(en);
    }
    if (get_seconds(p, o, path, "interval", 86400, &h->interval_ms) ||
        get_seconds(p, o, path, "timeout", 86400, &h->timeout_ms))
        return -EINVAL;
    if (h->interval_ms < 10) {
        subpath(kp, sizeof(kp), path, "interval");
        return fail(p, kp, "must be at least 0.01 seconds");
    }
    if (h->timeout_ms < 1) {
        subpath(kp, sizeof(kp), path, "timeout");
        return fail(p, kp, "must be more than 0");
    }
    x = h->rise;
    if (get_int(p, o, path, "rise", 1, 1000, &x))
        return -EINVAL;
    h->rise = (unsigned)x;
    x = h->fall;
    if (get_int(p, o, path, "fall", 1, 1000, &x))
        return -EINVAL;
    h->fall = (unsigned)x;
    json_t *send = json_object_get(o, "send");
    json_t *expect = json_object_get(o, "expect");
    if (send) {
        subpath(kp, sizeof(kp), path, "send");
        if (!json_is_string(send) || json_string_length(send) == 0)
            return fail(p, kp, "must be a non-empty string");
        h->send_len = json_string_length(send);
        h->send = malloc(h->send_len + 1);
        if (!h->send)
            return fail(p, kp, "out of memory");
        memcpy(h->send, json_string_value(send), h->send_len + 1);
        if (!en)
            h->enabled = true;
    }
    if (expect) {
        subpath(kp, sizeof(kp), path, "expect");
        if (!json_is_string(expect))
            return fail(p, kp, "must be a string");
        h->expect_len = json_string_length(expect);
        h->expect = malloc(h->expect_len + 1);
        if (!h->expect)
            return fail(p, kp, "out of memory");
        memcpy(h->expect, json_string_value(expect), h->expect_len + 1);
    }
    return 0;
}

static int parse_backend(struct pctx *p, struct gw_config *cfg, struct gw_backend_conf *b,
                         json_t *o, const char *path)
{
    static const char *const keys[] = {"name",   "proto",          "balance",         "servers",
                                       "health", "proxy_protocol", "connect_timeout", NULL};
    const char *name = NULL, *proto = NULL, *bal = NULL;
    char kp[256];

    if (!json_is_object(o))
        return fail(p, path, "must be an object");
    if (check_keys(p, o, path, keys) || get_string(p, o, path, "name", &name) ||
        get_string(p, o, path, "proto", &proto) || get_string(p, o, path, "balance", &bal))
        return -EINVAL;
    if (!name)
        return fail(p, path, "missing \"name\"");
    subpath(kp, sizeof(kp), path, "name");
    if (copy_name(b->name, name))
        return fail(p, kp, "must be 1 to %d bytes of UTF-8, no '/', spaces or control characters",
                        GW_NAME_MAX - 1);
    if (!proto)
        return fail(p, path, "missing \"proto\" (\"tcp\" or \"udp\")");
    subpath(kp, sizeof(kp), path, "proto");
    int pr = parse_proto(proto);
    if (pr < 0)
        return fail(p, kp, "must be \"tcp\" or \"udp\"");
    b->proto = (uint8_t)pr;
    health_conf_default(&b->health, b->proto);
    b->balance = GW_BALANCE_ROUNDROBIN;
    if (bal) {
        int v = gw_balance_parse(bal);
        subpath(kp, sizeof(kp), path, "balance");
        if (v < 0)
            return fail(p, kp, "unknown balance \"%s\" (roundrobin, leastconn, source)", bal);
        b->balance = (enum gw_balance)v;
    }
    b->connect_timeout_ms = 0;
    if (get_seconds(p, o, path, "connect_timeout", 3600, &b->connect_timeout_ms))
        return -EINVAL;
    json_t *pp = json_object_get(o, "proxy_protocol");
    if (pp) {
        subpath(kp, sizeof(kp), path, "proxy_protocol");
        const char *v = json_is_string(pp) ? json_string_value(pp) : "";
        if (strcmp(v, "off") == 0)
            b->proxy_protocol = 0;
        else if (strcmp(v, "v1") == 0)
            b->proxy_protocol = 1;
        else if (strcmp(v, "v2") == 0)
            b->proxy_protocol = 2;
        else
            return fail(p, kp, "must be \"off\", \"v1\" or \"v2\"");
        if (b->proxy_protocol && b->proto != NAT_PROTO_TCP)
            return fail(p, kp, "only TCP pools speak the PROXY protocol");
    }
    json_t *h = json_object_get(o, "health");
    if (h) {
        subpath(kp, sizeof(kp), path, "health");
        if (parse_health(p, &b->health, h, kp))
            return -EINVAL;
    }
    json_t *srv = json_object_get(o, "servers");
    subpath(kp, sizeof(kp), path, "servers");
    if (!srv)
        return fail(p, path, "missing \"servers\"");
    if (!json_is_array(srv) || json_array_size(srv) == 0)
        return fail(p, kp, "must be a non-empty array");
    b->servers = calloc(json_array_size(srv), sizeof(*b->servers));
    if (!b->servers)
        return fail(p, kp, "out of memory");
    size_t i;
    json_t *v;
    json_array_foreach(srv, i, v)
    {
        char sp[256];
        pathf(sp, sizeof(sp), "%s[%zu]", kp, i);
        if (parse_server(p, &b->servers[i], v, sp))
            return -EINVAL;
        for (size_t j = 0; j < i; j++)
            if (strcmp(b->servers[j].name, b->servers[i].name) == 0)
                return fail(p, sp, "a second server named \"%s\"", b->servers[i].name);
        b->n_servers++;
    }
    (void)cfg;
    return 0;
}

static int parse_backends(struct pctx *p, struct gw_config *cfg, json_t *a)
{
    size_t i;
    json_t *v;

    if (!json_is_array(a))
        return fail(p, "backends", "must be an array");
    cfg->backends = calloc(json_array_size(a) + 1, sizeof(*cfg->backends));
    if (!cfg->backends)
        return fail(p, "backends", "out of memory");
    json_array_foreach(a, i, v)
    {
        char path[64];
        pathf(path, sizeof(path), "backends[%zu]", i);
        cfg->n_backends++;
        if (parse_backend(p, cfg, &cfg->backends[i], v, path))
            return -EINVAL;
        for (size_t j = 0; j < i; j++)
            if (strcmp(cfg->backends[j].name, cfg->backends[i].name) == 0)
                return fail(p, path, "a second backend named \"%s\"", cfg->backends[i].name);
    }
    return 0;
}

static int parse_routes(struct pctx *p, struct gw_config *cfg, json_t *a)
{
    static const char *const keys[] = {"proto", "backend", NULL};
    size_t i;
    json_t *v;

    if (!json_is_array(a))
        return fail(p, "routes", "must be an array");
    cfg->routes = calloc(json_array_size(a) + 1, sizeof(*cfg->routes));
    if (!cfg->routes)
        return fail(p, "routes", "out of memory");
    json_array_foreach(a, i, v)
    {
        char path[64], kp[96];
        const char *proto = NULL, *backend = NULL;
        struct gw_route_conf *r = &cfg->routes[i];
        pathf(path, sizeof(path), "routes[%zu]", i);
        if (!json_is_object(v))
            return fail(p, path, "must be an object");
        if (check_keys(p, v, path, keys) || get_string(p, v, path, "proto", &proto) ||
            get_string(p, v, path, "backend", &backend))
            return -EINVAL;
        if (proto) {
            int pr = parse_proto(proto);
            subpath(kp, sizeof(kp), path, "proto");
            if (pr < 0)
                return fail(p, kp, "must be \"tcp\" or \"udp\"");
            r->match.proto = (uint8_t)pr;
        }
        if (!backend)
            return fail(p, path, "missing \"backend\"");
        subpath(kp, sizeof(kp), path, "backend");
        if (copy_name(r->backend, backend))
            return fail(p, kp, "not a backend name");
        cfg->n_routes++;
    }
    return 0;
}

/* control.owner / control.group: a name that exists here, or a number
 * (integer or digits); null = leave as created. *dst gets the text. */
static int parse_control_id(struct pctx *p, json_t *o, const char *key, bool user, char **dst)
{
    json_t *v = json_object_get(o, key);
    char kp[64], num[24];
    const char *s;

    if (!v)
        return 0;
    subpath(kp, sizeof(kp), "control", key);
    if (json_is_null(v)) {
        free(*dst);
        *dst = NULL;
        return 0;
    }
    if (json_is_integer(v)) {
        if (json_integer_value(v) < 0 || json_integer_value(v) >= UINT32_MAX)
            return fail(p, kp, "must be a %s name or a number below 4294967295",
                        user ? "user" : "group");
        snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(v));
        s = num;
    } else if (json_is_string(v) && json_string_length(v) > 0) {
        s = json_string_value(v);
        bool digits = strspn(s, "0123456789") == strlen(s);
        bool known = user ? getpwnam(s) != NULL : getgrnam(s) != NULL;
        if (!digits && !known)
            return fail(p, kp, "no such %s \"%s\"", user ? "user" : "group", s);
        if (digits && (strlen(s) > 10 || strtoull(s, NULL, 10) >= UINT32_MAX))
            return fail(p, kp, "must be a %s name or a number below 4294967295",
                        user ? "user" : "group");
    } else {
        return fail(p, kp, "must be a %s name, a number or null", user ? "user" : "group");
    }
    char *c = strdup(s);
    if (!c)
        return fail(p, kp, "out of memory");
    free(*dst);
    *dst = c;
    return 0;
}

/* "control": "PATH" (the path alone), null, or an object with path, mode,
 * owner, group, max_clients, idle_timeout, max_output. */
static int parse_control(struct pctx *p, struct gw_config *cfg, json_t *root)
{
    static const char *const keys[] = {"path",        "mode",         "owner",      "group",
                                       "max_clients", "idle_timeout", "max_output", NULL};
    json_t *o = json_object_get(root, "control");
    const char *mode = NULL;
    long long x;

    if (!o || !json_is_object(o))
        return get_owned_string(p, root, "", "control", &cfg->control_path, true);
    if (check_keys(p, o, "control", keys) ||
        get_owned_string(p, o, "control", "path", &cfg->control_path, true) ||
        get_string(p, o, "control", "mode", &mode) ||
        parse_control_id(p, o, "owner", true, &cfg->control_owner) ||
        parse_control_id(p, o, "group", false, &cfg->control_group) ||
        get_seconds(p, o, "control", "idle_timeout", 86400, &cfg->control_idle_ms))
        return -EINVAL;
    if (mode) {
        size_t n = strlen(mode);
        if (n < 3 || n > 4 || strspn(mode, "01234567") != n || (n == 4 && mode[0] != '0'))
            return fail(p, "control.mode", "must be an octal mode like \"0660\" (0000-0777)");
        cfg->control_mode = (uint32_t)strtoul(mode, NULL, 8);
    }
    x = cfg->control_max_clients;
    if (get_int(p, o, "control", "max_clients", 1, 100000, &x))
        return -EINVAL;
    cfg->control_max_clients = (uint32_t)x;
    x = (long long)cfg->control_max_output;
    if (get_int(p, o, "control", "max_output", 4096, 1LL << 32, &x))
        return -EINVAL;
    cfg->control_max_output = (uint64_t)x;
    return 0;
}

static int parse_root(struct pctx *p, struct gw_config *cfg, json_t *root)
{
    static const char *const keys[] = {"listen",   "nat",       "backends", "routes",
                                       "timeouts", "limits",    "db",       "control",
                                       "user",     "log_level", NULL};
    static const char *const tkeys[] = {"connect", "drain", NULL};
    static const char *const lkeys[] = {"max_flows", "buffer", "splice_after", NULL};
    json_t *v;

    if (!json_is_object(root))
        return fail(p, "(top)", "the configuration must be a JSON object");
    if (check_keys(p, root, "", keys))
        return -EINVAL;
    if ((v = json_object_get(root, "listen")) && parse_listen(p, cfg, v))
        return -EINVAL;
    if ((v = json_object_get(root, "nat")) && parse_nat(p, cfg, v))
        return -EINVAL;
    if ((v = json_object_get(root, "backends")) && parse_backends(p, cfg, v))
        return -EINVAL;
    if ((v = json_object_get(root, "routes")) && parse_routes(p, cfg, v))
        return -EINVAL;
    if ((v = json_object_get(root, "timeouts"))) {
        if (!json_is_object(v))
            return fail(p, "timeouts", "must be an object");
        if (check_keys(p, v, "timeouts", tkeys) ||
            get_seconds(p, v, "timeouts", "connect", 3600, &cfg->connect_timeout_ms) ||
            get_seconds(p, v, "timeouts", "drain", 86400, &cfg->drain_timeout_ms))
            return -EINVAL;
        if (cfg->connect_timeout_ms == 0)
            return fail(p, "timeouts.connect", "must be more than 0");
    }
    if ((v = json_object_get(root, "limits"))) {
        long long x;
        if (!json_is_object(v))
            return fail(p, "limits", "must be an object");
        if (check_keys(p, v, "limits", lkeys))
            return -EINVAL;
        x = cfg->max_flows;
        if (get_int(p, v, "limits", "max_flows", 0, UINT32_MAX, &x))
            return -EINVAL;
        cfg->max_flows = (uint32_t)x;
        x = (long long)cfg->buffer_size;
        if (get_int(p, v, "limits", "buffer", 1024, 64 * 1024 * 1024, &x))
            return -EINVAL;
        cfg->buffer_size = (size_t)x;
        x = (long long)cfg->splice_after;
        if (get_int(p, v, "limits", "splice_after", 0, INT64_MAX, &x))
            return -EINVAL;
        cfg->splice_after = (uint64_t)x;
    }
    if (json_object_get(root, "db"))
        cfg->db_path_default = false;
    if (get_owned_string(p, root, "", "db", &cfg->db_path, true) || parse_control(p, cfg, root) ||
        get_owned_string(p, root, "", "user", &cfg->user, true))
        return -EINVAL;
    const char *lvl = NULL;
    if (get_string(p, root, "", "log_level", &lvl))
        return -EINVAL;
    if (lvl) {
        int l = gw_log_level_parse(lvl);
        if (l < 0)
            return fail(p, "log_level", "must be \"error\", \"warn\", \"info\" or \"debug\"");
        cfg->log_level = l;
    }
    return 0;
}

/* ---- flags -------------------------------------------------------------- */

static struct gw_backend_conf *add_backend(struct gw_config *cfg, const char *name, uint8_t proto)
{
    struct gw_backend_conf *nb = realloc(cfg->backends, (cfg->n_backends + 1) * sizeof(*nb));

    if (!nb)
        return NULL;
    cfg->backends = nb;
    struct gw_backend_conf *b = &cfg->backends[cfg->n_backends++];
    memset(b, 0, sizeof(*b));
    snprintf(b->name, sizeof(b->name), "%s", name);
    b->proto = proto;
    b->balance = GW_BALANCE_ROUNDROBIN;
    health_conf_default(&b->health, proto);
    return b;
}

/* --tcp-backend/--udp-backend [NAME=]HOST:PORT. The first flag naming a pool
 * that the file has replaces that pool's servers. */
static int apply_backend_flags(struct pctx *p, struct gw_config *cfg, const char *const *specs,
                               size_t n, uint8_t proto)
{
    const char *flag = proto == NAT_PROTO_TCP ? "--tcp-backend" : "--udp-backend";
    bool *replaced = calloc(cfg->n_backends + n + 1, sizeof(bool));

    if (!replaced)
        return fail(p, flag, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const char *spec = specs[i], *eq = strchr(spec, '=');
        char name[GW_NAME_MAX];
        const char *addr = spec;
        if (eq) {
            size_t l = (size_t)(eq - spec);
            if (l == 0 || l >= sizeof(name)) {
                free(replaced);
                return fail(p, flag, "\"%s\": bad pool name", spec);
            }
            memcpy(name, spec, l);
            name[l] = '\0';
            addr = eq + 1;
        } else {
            snprintf(name, sizeof(name), "%s", nat_proto_name(proto));
        }
        if (copy_name(name, name)) {
            free(replaced);
            return fail(p, flag,
                        "\"%s\": bad pool name (1 to %d bytes of UTF-8, no '/', spaces or "
                        "control characters)",
                        spec, GW_NAME_MAX - 1);
        }
        size_t bi;
        for (bi = 0; bi < cfg->n_backends; bi++)
            if (strcmp(cfg->backends[bi].name, name) == 0)
                break;
        struct gw_backend_conf *b;
        if (bi == cfg->n_backends) {
            b = add_backend(cfg, name, proto);
            if (!b) {
                free(replaced);
                return fail(p, flag, "out of memory");
            }
            replaced[bi] = true;
        } else {
            b = &cfg->backends[bi];
            if (b->proto != proto) {
                free(replaced);
                return fail(p, flag, "\"%s\": pool \"%s\" is %s in the config", spec, name,
                            nat_proto_name(b->proto));
            }
            if (!replaced[bi]) {
                b->n_servers = 0;
                replaced[bi] = true;
            }
        }
        struct gw_server_conf *ns = realloc(b->servers, (b->n_servers + 1) * sizeof(*ns));
        if (!ns) {
            free(replaced);
            return fail(p, flag, "out of memory");
        }
        b->servers = ns;
        struct gw_server_conf *sc = &b->servers[b->n_servers];
        memset(sc, 0, sizeof(*sc));
        sc->weight = 1;
        int rc = gw_sockaddr_parse(&sc->addr, addr);
        if (rc || ((struct sockaddr_in *)&sc->addr.ss)->sin_port == 0) {
            free(replaced);
            return fail(p, flag, "\"%s\": %s", spec,
                        rc == -ENOENT ? "host does not resolve" : "not [NAME=]HOST:PORT");
        }
        gw_sockaddr_format(&sc->addr, sc->name, sizeof(sc->name));
        b->n_servers++;
    }
    free(replaced);
    return 0;
}

static int apply_flags(struct pctx *p, struct gw_config *cfg, const struct gw_cli *cli)
{
    if (cli->port) {
        char *end;
        errno = 0;
        unsigned long port = strtoul(cli->port, &end, 10);
        if (errno || *end || !*cli->port || port > 65535 || cli->port[0] == '-')
            return fail(p, "--port", "\"%s\" is not a port number (0-65535)", cli->port);
        cfg->port = (uint16_t)port;
    }
    if (cli->n_binds) {
        cfg->n_binds = 0;
        for (size_t i = 0; i < cli->n_binds; i++) {
            if (sockaddr_from_ip(&cfg->binds[i], cli->binds[i], 0))
                return fail(p, "--bind", "\"%s\" is not an IPv4 or IPv6 address", cli->binds[i]);
            cfg->n_binds++;
        }
        cfg->binds_default = false;
    }
    if (apply_backend_flags(p, cfg, cli->tcp_backends, cli->n_tcp_backends, NAT_PROTO_TCP) ||
        apply_backend_flags(p, cfg, cli->udp_backends, cli->n_udp_backends, NAT_PROTO_UDP))
        return -EINVAL;
    if (cli->n_nat_ips) {
        cfg->nat.n_ips = 0;
        for (size_t i = 0; i < cli->n_nat_ips; i++) {
            if (nat_addr_parse(&cfg->nat.ips[i], cli->nat_ips[i]))
                return fail(p, "--nat-ip", "\"%s\" is not an IPv4 or IPv6 address",
                            cli->nat_ips[i]);
            cfg->nat.n_ips++;
        }
        cfg->nat_ips_set = true;
    }
    if (cli->nat_ports && parse_port_range(cli->nat_ports, &cfg->nat.port_lo, &cfg->nat.port_hi))
        return fail(p, "--nat-ports", "\"%s\" is not LO-HI with 1 <= LO <= HI <= 65535",
                    cli->nat_ports);
    if (cli->nat_policy) {
        int v = nat_policy_parse(cli->nat_policy);
        if (v < 0)
            return fail(p, "--nat-policy",
                        "unknown policy \"%s\" (sequential, random, preserve, block)",
                        cli->nat_policy);
        cfg->nat.policy = (enum nat_policy)v;
    }
    if (cli->nat_mapping) {
        int v = nat_mapping_parse(cli->nat_mapping);
        if (v < 0)
            return fail(p, "--nat-mapping", "unknown mapping \"%s\" (eim, adm, apdm)",
                        cli->nat_mapping);
        cfg->nat.mapping = (enum nat_mapping)v;
    }
    if (cli->nat_log && parse_nat_log(cli->nat_log, &cfg->nat_log_blocks) < 0)
        return fail(p, "--nat-log", "unknown log \"%s\" (flows, blocks)", cli->nat_log);
    if (cli->db) {
        cfg->db_path_default = false;
        free(cfg->db_path);
        cfg->db_path = strcmp(cli->db, "none") == 0 ? NULL : strdup(cli->db);
        if (strcmp(cli->db, "none") != 0 && !cfg->db_path)
            return fail(p, "--db", "out of memory");
    }
    if (cli->control) {
        free(cfg->control_path);
        cfg->control_path = strdup(cli->control);
        if (!cfg->control_path)
            return fail(p, "--control", "out of memory");
    }
    if (cli->user) {
        free(cfg->user);
        cfg->user = strdup(cli->user);
        if (!cfg->user)
            return fail(p, "--user", "out of memory");
    }
    if (cli->log_level) {
        int l = gw_log_level_parse(cli->log_level);
        if (l < 0)
            return fail(p, "--log-level", "\"%s\" is not error, warn, info or debug",
                        cli->log_level);
        cfg->log_level = l;
    }
    return 0;
}

/* ---- validation ---------------------------------------------------------- */

/* The source address the kernel would use toward `dst`. */
static int route_source(const struct gw_sockaddr *dst, struct nat_addr *out)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int fd = socket(dst->ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -errno;
    if (connect(fd, (const struct sockaddr *)&dst->ss, dst->len) < 0 ||
        getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    close(fd);
    struct nat_endpoint ep;
    gw_endpoint_from_sockaddr(&ep, (struct sockaddr *)&ss);
    *out = ep.addr;
    return 0;
}

static int validate(struct pctx *p, struct gw_config *cfg)
{
    if (cfg->n_backends == 0)
        return fail(p, "backends",
                    "no backend: give --tcp-backend/--udp-backend or a "
                    "\"backends\" list");
    for (size_t i = 0; i < cfg->n_backends; i++) {
        char path[64];
        pathf(path, sizeof(path), "backends[%zu].servers", i);
        if (cfg->backends[i].n_servers == 0)
            return fail(p, path, "must be a non-empty array");
    }
    for (size_t i = 0; i < cfg->n_routes; i++) {
        char path[64];
        struct gw_route_conf *r = &cfg->routes[i];
        const struct gw_backend_conf *b = gw_config_backend(cfg, r->backend);
        pathf(path, sizeof(path), "routes[%zu].backend", i);
        if (!b)
            return fail(p, path, "no backend named \"%s\"", r->backend);
        if (r->match.proto && r->match.proto != b->proto)
            return fail(p, path, "backend \"%s\" is %s, the route is %s", r->backend,
                        nat_proto_name(b->proto), nat_proto_name(r->match.proto));
        if (!r->match.proto)
            r->match.proto = b->proto;
    }
    /* Each protocol without a route goes to its first pool. */
    for (int k = 0; k < 2; k++) {
        uint8_t proto = k == 0 ? NAT_PROTO_TCP : NAT_PROTO_UDP;
        bool routed = false;
        for (size_t i = 0; i < cfg->n_routes; i++)
            if (cfg->routes[i].match.proto == proto)
                routed = true;
        if (routed)
            continue;
        for (size_t i = 0; i < cfg->n_backends; i++) {
            if (cfg->backends[i].proto != proto)
                continue;
            struct gw_route_conf *nr = realloc(cfg->routes, (cfg->n_routes + 1) * sizeof(*nr));
            if (!nr)
                return fail(p, "routes", "out of memory");
            cfg->routes = nr;
            memset(&nr[cfg->n_routes], 0, sizeof(*nr));
            nr[cfg->n_routes].match.proto = proto;
            memcpy(nr[cfg->n_routes].backend, cfg->backends[i].name, GW_NAME_MAX);
            cfg->n_routes++;
            break;
        }
    }
    if (cfg->binds_default) {
        sockaddr_from_ip(&cfg->binds[0], "0.0.0.0", 0);
        sockaddr_from_ip(&cfg->binds[1], "::", 0);
        cfg->n_binds = 2;
    }
    if (!cfg->nat_ips_set) {
        /* One address per family of the servers: 127.0.0.1 (::1) when that
         * family's servers are all on loopback, else the source address of
         * the route to the first of them elsewhere. */
        cfg->nat.n_ips = 0;
        for (int v6 = 0; v6 < 2; v6++) {
            const struct gw_server_conf *any = NULL, *far = NULL;
            for (size_t i = 0; i < cfg->n_backends; i++)
                for (size_t j = 0; j < cfg->backends[i].n_servers; j++) {
                    const struct gw_server_conf *sv = &cfg->backends[i].servers[j];
                    if (server_is_v6(sv) != (bool)v6)
                        continue;
                    if (!any)
                        any = sv;
                    if (!far && !sockaddr_is_loopback(&sv->addr))
                        far = sv;
                }
            if (!any)
                continue;
            struct nat_addr *ip = &cfg->nat.ips[cfg->nat.n_ips++];
            if (far) {
                if (route_source(&far->addr, ip))
                    return fail(p, "nat.ips",
                                "no route to backend %s to take a source address "
                                "from; set nat.ips or --nat-ip",
                                far->name);
            } else {
                nat_addr_parse(ip, v6 ? "::1" : "127.0.0.1");
            }
        }
    }
    /* libnat translates toward a server from a NAT address of the server's
     * family: each server needs one. */
    for (size_t i = 0; i < cfg->n_backends; i++)
        for (size_t j = 0; j < cfg->backends[i].n_servers; j++) {
            const struct gw_server_conf *sv = &cfg->backends[i].servers[j];
            bool have = false;
            for (unsigned k = 0; k < cfg->nat.n_ips && !have; k++)
                have = !nat_addr_is_v4(&cfg->nat.ips[k]) == server_is_v6(sv);
            if (!have) {
                char path[80];
                pathf(path, sizeof(path), "backends[%zu].servers[%zu]", i, j);
                return fail(p, path, "%s is IPv%d and nat.ips has no IPv%d address", sv->name,
                            server_is_v6(sv) ? 6 : 4, server_is_v6(sv) ? 6 : 4);
            }
        }
    if (cfg->nat.policy == NAT_POLICY_BLOCK &&
        cfg->nat.block_size > (uint32_t)(cfg->nat.port_hi - cfg->nat.port_lo + 1))
        return fail(p, "nat.block_size", "%u is larger than the port range %u-%u",
                    cfg->nat.block_size, cfg->nat.port_lo, cfg->nat.port_hi);
    if (cfg->nat_log_blocks && cfg->nat.policy != NAT_POLICY_BLOCK)
        return fail(p, "nat.log", "\"blocks\" needs nat.policy \"block\" (policy is \"%s\")",
                    nat_policy_name(cfg->nat.policy));
    if (cfg->port != 0 && cfg->port >= cfg->nat.port_lo && cfg->port <= cfg->nat.port_hi)
        return fail(p, "nat.ports", "%u-%u holds the listening port %u", cfg->nat.port_lo,
                    cfg->nat.port_hi, cfg->port);
    return 0;
}

/* ---- entry points -------------------------------------------------------- */

static int load(const char *text, const char *file, const struct gw_cli *cli,
                struct gw_config **out, char *err, size_t errlen)
{
    struct pctx p = {err, errlen, false, text == NULL};
    struct gw_config *cfg = config_new_default();
    json_t *root = NULL;
    json_error_t jerr;

    if (errlen)
        err[0] = '\0';
    if (!cfg) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    if (text || file) {
        root = text ? json_loads(text, JSON_REJECT_DUPLICATES, &jerr)
                    : json_load_file(file, JSON_REJECT_DUPLICATES, &jerr);
        if (!root) {
            snprintf(err, errlen, "%s:%d:%d: %s", file ? file : "(config)", jerr.line, jerr.column,
                     jerr.text);
            gw_config_free(cfg);
            return -EINVAL;
        }
        if (parse_root(&p, cfg, root))
            goto out_fail;
    }
    if (file && !(cfg->file = strdup(file))) {
        fail(&p, "(config)", "out of memory");
        goto out_fail;
    }
    if ((cli && apply_flags(&p, cfg, cli)) || validate(&p, cfg))
        goto out_fail;
    json_decref(root);
    *out = cfg;
    return 0;

out_fail:
    json_decref(root);
    gw_config_free(cfg);
    return -EINVAL;
}

/* Defaults, then the file, then the flags; validated. */
int gw_config_load(const struct gw_cli *cli, struct gw_config **out, char *err, size_t errlen)
{
    return load(NULL, cli->config_file, cli, out, err, errlen);
}

/* A JSON text alone, validated. */
int gw_config_parse(const char *text, struct gw_config **out, char *err, size_t errlen)
{
    return load(text, NULL, NULL, out, err, errlen);
}

/* The pool named `name`, or NULL. */
const struct gw_backend_conf *gw_config_backend(const struct gw_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->n_backends; i++)
        if (strcmp(cfg->backends[i].name, name) == 0)
            return &cfg->backends[i];
    return NULL;
}

/* ---- back to JSON --------------------------------------------------------- */

static json_t *ip_json(const struct gw_sockaddr *a)
{
    char buf[INET6_ADDRSTRLEN];
    const void *src = a->ss.ss_family == AF_INET
                          ? (const void *)&((const struct sockaddr_in *)&a->ss)->sin_addr
                          : (const void *)&((const struct sockaddr_in6 *)&a->ss)->sin6_addr;

    inet_ntop(a->ss.ss_family, src, buf, sizeof(buf));
    return json_string(buf);
}

static json_t *seconds_json(uint32_t ms)
{
    if (ms % 1000 == 0)
        return json_integer(ms / 1000);
    return json_real(ms / 1000.0);
}

static json_t *backend_conf_json(const struct gw_backend_conf *b)
{
    static const char *const pp[] = {"off", "v1", "v2"};
    json_t *servers = json_array(), *o;
    char addr[80];

    for (size_t i = 0; i < b->n_servers; i++) {
        const struct gw_server_conf *s = &b->servers[i];
        json_array_append_new(servers,
                              json_pack("{s:s, s:s, s:i, s:I}", "name", s->name, "address",
                                        gw_sockaddr_format(&s->addr, addr, sizeof(addr)), "weight",
                                        (int)s->weight, "max_conns", (json_int_t)s->max_conns));
    }
    json_t *h = json_pack("{s:b, s:o, s:o, s:i, s:i}", "enabled", b->health.enabled, "interval",
                          seconds_json(b->health.interval_ms), "timeout",
                          seconds_json(b->health.timeout_ms), "rise", (int)b->health.rise, "fall",
                          (int)b->health.fall);
    if (h && b->health.send)
        json_object_set_new(h, "send", json_stringn(b->health.send, b->health.send_len));
    if (h && b->health.expect)
        json_object_set_new(h, "expect", json_stringn(b->health.expect, b->health.expect_len));
    o = json_pack("{s:s, s:s, s:s, s:o, s:o, s:s}", "name", b->name, "proto",
                  nat_proto_name(b->proto), "balance", gw_balance_name(b->balance), "servers",
                  servers, "health", h, "proxy_protocol", pp[b->proxy_protocol % 3]);
    if (o && b->connect_timeout_ms)
        json_object_set_new(o, "connect_timeout", seconds_json(b->connect_timeout_ms));
    return o;
}

/* The configuration as JSON, in the file's schema, defaults explicit. */
json_t *gw_config_to_json(const struct gw_config *cfg)
{
    char buf[NAT_ADDR_STRLEN];
    json_t *root, *binds = json_array(), *ips = json_array(), *backends = json_array(),
                  *routes = json_array();

    for (size_t i = 0; i < cfg->n_binds; i++)
        json_array_append_new(binds, ip_json(&cfg->binds[i]));
    for (unsigned i = 0; i < cfg->nat.n_ips; i++)
        json_array_append_new(ips, json_string(nat_addr_format(&cfg->nat.ips[i], buf)));
    for (size_t i = 0; i < cfg->n_backends; i++)
        json_array_append_new(backends, backend_conf_json(&cfg->backends[i]));
    for (size_t i = 0; i < cfg->n_routes; i++)
        json_array_append_new(routes, json_pack("{s:s, s:s}", "proto",
                                                nat_proto_name(cfg->routes[i].match.proto),
                                                "backend", cfg->routes[i].backend));
    char ports[16];
    snprintf(ports, sizeof(ports), "%u-%u", cfg->nat.port_lo, cfg->nat.port_hi);
    const uint32_t *t = cfg->nat.timeout_ms;
    root = json_pack(
        "{s:{s:i, s:o, s:i},"
        " s:{s:s, s:s, s:o, s:s, s:{s:o, s:o, s:o}, s:I, s:I, s:I, s:o, s:I, s:I, s:s, s:o},"
        " s:o, s:o, s:{s:o, s:o}, s:{s:I, s:I, s:I}, s:s}",
        "listen", "port", (int)cfg->port, "bind", binds, "backlog", cfg->backlog, "nat", "policy",
        nat_policy_name(cfg->nat.policy), "mapping", nat_mapping_name(cfg->nat.mapping), "ips", ips,
        "ports", ports, "timeouts", "udp", seconds_json(t[NAT_TIMEOUT_UDP]), "tcp_established",
        seconds_json(t[NAT_TIMEOUT_TCP_ESTABLISHED]), "tcp_transitory",
        seconds_json(t[NAT_TIMEOUT_TCP_TRANSITORY]), "per_client_limit",
        (json_int_t)cfg->nat.per_client_limit, "block_size", (json_int_t)cfg->nat.block_size,
        "max_blocks_per_client", (json_int_t)cfg->nat.max_blocks_per_client, "reuse_delay",
        seconds_json(cfg->nat.reuse_delay_ms), "max_sessions", (json_int_t)cfg->nat.max_sessions,
        "seed", (json_int_t)cfg->nat.seed, "log", cfg->nat_log_blocks ? "blocks" : "flows",
        "block_hold", seconds_json(cfg->nat.block_hold_ms),
        "backends", backends, "routes", routes, "timeouts",
        "connect", seconds_json(cfg->connect_timeout_ms), "drain",
        seconds_json(cfg->drain_timeout_ms), "limits", "max_flows", (json_int_t)cfg->max_flows,
        "buffer", (json_int_t)cfg->buffer_size, "splice_after", (json_int_t)cfg->splice_after,
        "log_level", gw_log_level_name(cfg->log_level));
    if (!root)
        return NULL;
    json_object_set_new(root, "db", cfg->db_path ? json_string(cfg->db_path) : json_null());
    char mode[8];
    snprintf(mode, sizeof(mode), "%04o", (unsigned)cfg->control_mode);
    json_object_set_new(
        root, "control",
        json_pack("{s:o, s:s, s:o, s:o, s:I, s:o, s:I}", "path",
                  cfg->control_path ? json_string(cfg->control_path) : json_null(), "mode", mode,
                  "owner", cfg->control_owner ? json_string(cfg->control_owner) : json_null(),
                  "group", cfg->control_group ? json_string(cfg->control_group) : json_null(),
                  "max_clients", (json_int_t)cfg->control_max_clients, "idle_timeout",
                  seconds_json(cfg->control_idle_ms), "max_output",
                  (json_int_t)cfg->control_max_output));
    json_object_set_new(root, "user", cfg->user ? json_string(cfg->user) : json_null());
    return root;
}
