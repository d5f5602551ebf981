/*
 * gwd.h - the map of the gw daemon: its context, configuration, backends,
 * flows, counters and event subscribers, and every cross-file prototype,
 * grouped by the file that defines it (relayd.h style).
 *
 * One libev loop serves one TCP listener and one UDP socket per bound address,
 * all on the same port number. Each client flow is routed to a backend pool,
 * translated through the libnat table (nat_ip:nat_port becomes its source
 * toward the backend) and relayed; the table's events are written behind to
 * the SQLite store and fanned out to subscribers (the control socket).
 */
#ifndef GW_GWD_H
#define GW_GWD_H

#include <ev.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include "gw_poll.h"
#include "nat/nat.h"

struct db; /* db/db.h: the SQLite store (opaque here) */
struct gw_ctx;

/* ---- limits and defaults ------------------------------------------------ */

#define GW_NAME_MAX 64  /* backend and server names, with the NUL */
#define GW_MAX_BINDS 16 /* -b addresses */
#define GW_DEFAULT_PORT 80
#define GW_DEFAULT_BUFFER 65536 /* bytes a flow may hold pending per direction */
#define GW_DEFAULT_SPLICE_AFTER (1024 * 1024)
#define GW_PIPE_SIZE (256 * 1024) /* asked for a splice pipe; the kernel may give less */
#define GW_DEFAULT_CONNECT_TIMEOUT_MS 5000
#define GW_DEFAULT_DRAIN_TIMEOUT_MS 10000
/* listen(2) backlog: 0 = the kernel's maximum (net.core.somaxconn). A burst of
 * new connections larger than the accept queue gets its SYNs dropped and
 * retried by the clients after 1 s; a fixed 1024 overflowed at ~3,000 at once. */
#define GW_DEFAULT_BACKLOG 0
#define GW_FALLBACK_BACKLOG 4096 /* when somaxconn cannot be read */
#define GW_ACCEPT_BATCH 64              /* accepts per readable event */
#define GW_UDP_BATCH 32                 /* datagrams per recvmmsg */
#define GW_UDP_RCVBUF (4 * 1024 * 1024) /* receive buffer of the UDP listening sockets */
#define GW_BUSY_PORT_MS 60000           /* how long a port found busy (EADDRINUSE) stays out */
#define GW_EXPIRE_BUDGET 4096           /* nat_expire work per tick */

/* ---- configuration (gw_config.c) ---------------------------------------- */

enum gw_balance {
    GW_BALANCE_ROUNDROBIN = 0, /* smooth weighted round robin */
    GW_BALANCE_LEASTCONN,      /* fewest live flows per unit of weight */
    GW_BALANCE_SOURCE,         /* hash of the client IP over the servers up */
};

/* A socket address with its length (IPv4 or IPv6). */
struct gw_sockaddr {
    struct sockaddr_storage ss;
    socklen_t len;
};

struct gw_server_conf {
    char name[GW_NAME_MAX]; /* "HOST:PORT" unless named */
    struct gw_sockaddr addr;
    unsigned weight;    /* 1..256, default 1 */
    unsigned max_conns; /* 0 = no limit */
};

struct gw_health_conf {
    bool enabled;         /* default true for TCP; UDP only with `send` */
    uint32_t interval_ms; /* default 2000 */
    uint32_t timeout_ms;  /* default 1000 */
    unsigned rise, fall;  /* successes to go up, failures to go down: 2, 3 */
    char *send;           /* owned; UDP request payload, or NULL */
    size_t send_len;
    char *expect; /* owned; UDP reply must start with this, or NULL = any */
    size_t expect_len;
};

struct gw_backend_conf {
    char name[GW_NAME_MAX];
    uint8_t proto; /* NAT_PROTO_TCP or NAT_PROTO_UDP */
    enum gw_balance balance;
    struct gw_server_conf *servers; /* owned */
    size_t n_servers;
    struct gw_health_conf health;
    uint8_t proxy_protocol; /* 0 = off, 1 = v1 text, 2 = v2 binary (TCP only) */
    uint32_t connect_timeout_ms;
};

/* A route picks a pool. Today it matches on protocol only; a later first-bytes
 * matcher (HTTP Host, TLS SNI, SSH...) becomes another field of `match`. */
struct gw_route_conf {
    struct {
        uint8_t proto; /* 0 = any */
    } match;
    char backend[GW_NAME_MAX];
};

struct gw_config {
    /* listen: fixed at start (a reload that changes them is warned and ignored) */
    uint16_t port;
    struct gw_sockaddr binds[GW_MAX_BINDS];
    size_t n_binds;
    bool binds_default; /* no -b / listen.bind: 0.0.0.0 and ::, v6 optional */
    int backlog; /* 0 = the kernel's maximum (gw_listen_backlog) */

    struct nat_config nat;
    bool nat_ips_set; /* false: derived from the backends at validation */
    bool nat_log_blocks; /* nat.log "blocks": the log holds port blocks, not flows */

    struct gw_backend_conf *backends; /* owned */
    size_t n_backends;
    struct gw_route_conf *routes; /* owned */
    size_t n_routes;

    uint32_t connect_timeout_ms; /* default for pools that set none */
    uint32_t drain_timeout_ms;   /* SIGTERM: how long established flows may finish */
    size_t buffer_size;          /* per flow and direction */
    uint64_t splice_after;       /* bytes a direction moves before it goes by splice; 0 = never */
    uint32_t max_flows;          /* live flows (TCP + UDP); 0 = no limit */

    char *db_path;        /* owned; NULL = none ("none"), ":memory:" or a file */
    bool db_path_default; /* db_path is the default: its folders are made at start */
    char *control_path;   /* owned; NULL = the default rule (gw_default_socket_path) */
    /* "control" section: the socket file and its clients (gw_control.c) */
    uint32_t control_mode;        /* socket file mode, default 0660 */
    char *control_owner;          /* owned; user name or uid; NULL = leave as created */
    char *control_group;          /* owned; group name or gid; NULL = leave as created */
    uint32_t control_max_clients; /* connected at once, default 64 */
    uint32_t control_idle_ms;     /* idle/stalled client cut after this; 0 = never */
    uint64_t control_max_output;  /* pending output per client before it is cut off */

    char *user;           /* owned; NULL = keep the current user */
    int log_level;        /* enum gw_log_level */
    char *file;           /* owned; the -c file, for SIGHUP; NULL when none */
};

/*
 * The flags of the command line as parsed, kept so that a SIGHUP re-reads the
 * file and applies them again on top (flags override the file).
 */
struct gw_cli {
    const char *config_file;
    const char *port;
    const char *binds[GW_MAX_BINDS];
    size_t n_binds;
    const char *tcp_backends[64];
    size_t n_tcp_backends;
    const char *udp_backends[64];
    size_t n_udp_backends;
    const char *nat_ips[NAT_MAX_IPS];
    size_t n_nat_ips;
    const char *nat_ports, *nat_policy, *nat_mapping, *nat_log;
    const char *db, *control, *user, *log_level;
    bool check_config;
};

/* Frees a config and all it owns. NULL is a no-op. */
void gw_config_free(struct gw_config *cfg);

/*
 * Builds the configuration: defaults, then the JSON file of cli->config_file
 * (if any), then the flags; validates the whole. Returns 0 and *out (owned by
 * the caller), or -EINVAL with a message naming the JSON path of the first
 * error in err (e.g. "backends[1].servers[0].address: not HOST:PORT").
 */
int gw_config_load(const struct gw_cli *cli, struct gw_config **out, char *err, size_t errlen);

/*
 * Parses a JSON config text (no flags, no file) into *out, validated. For
 * tests and fuzzing: server addresses must be IP literals there (no name
 * lookups). Same returns as gw_config_load.
 */
int gw_config_parse(const char *text, struct gw_config **out, char *err, size_t errlen);

/* The configuration as JSON, in the schema of the config file (docs/gwd.md),
 * defaults made explicit. Returns a new reference, or NULL on no memory. */
json_t *gw_config_to_json(const struct gw_config *cfg);

/* The backend pool named `name` in cfg, or NULL. */
const struct gw_backend_conf *gw_config_backend(const struct gw_config *cfg, const char *name);

/* Formats an address as "IP:PORT" or "[IPv6]:PORT" into buf. Returns buf. */
char *gw_sockaddr_format(const struct gw_sockaddr *a, char *buf, size_t len);

/* Parses "IP:PORT", "[IPv6]:PORT" or "HOST:PORT" (resolved, first answer).
 * Returns 0, -EINVAL (malformed) or -ENOENT (name did not resolve). */
int gw_sockaddr_parse(struct gw_sockaddr *out, const char *s);

/* nat_endpoint <-> socket address (IPv4-mapped nat_addr become AF_INET). */
void gw_sockaddr_from_endpoint(struct gw_sockaddr *out, const struct nat_endpoint *ep);
void gw_endpoint_from_sockaddr(struct nat_endpoint *out, const struct sockaddr *sa);

/* ---- logging (gw_log.c) -------------------------------------------------- */

enum gw_log_level {
    GW_LOG_ERROR = 0,
    GW_LOG_WARN,
    GW_LOG_INFO,
    GW_LOG_DEBUG,
};

extern int gw_log_level; /* the one global besides the config: messages above it are dropped */

/* Writes one line "TIME LEVEL message" to stderr when `level` is enabled. */
void gw_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* At most one message a second for a repeating condition (refusals, socket
 * errors under load): gw_log_allow says whether to log now; `suppressed`
 * counts what was held back since, for the next message to report. */
struct gw_ratelimit {
    uint64_t last_ms;
    uint64_t suppressed;
};
/* True when a message may be logged at now_ms (then `suppressed` is the
 * number held back before it, and is reset by the next call). */
bool gw_log_allow(struct gw_ratelimit *rl, uint64_t now_ms, uint64_t *suppressed);
/* "error", "warn", "info", "debug" <-> enum gw_log_level (-1 when unknown). */
int gw_log_level_parse(const char *name);
const char *gw_log_level_name(int level);

/* Wall-clock milliseconds since the epoch (what libnat and the store get). */
uint64_t gw_now_ms(void);
/* The loop's cached wall clock in ms: what the data path passes to libnat. */
static inline uint64_t gw_loop_ms(struct ev_loop *loop)
{
    return (uint64_t)(ev_now(loop) * 1000.0);
}
/* Times are formatted with db_time_format() (db/db.h): one ISO-8601 form for
 * the log, the store and the control socket. */

/* ---- events for subscribers (gw_nat.c) ---------------------------------- */

enum gw_event_type {
    GW_EV_NAT = 0, /* a libnat event: open, close, expire, refuse */
    GW_EV_BACKEND, /* a server changed health or admin state */
};

struct gw_server;

struct gw_event {
    enum gw_event_type type;
    uint64_t time; /* ms */
    /* GW_EV_NAT */
    const struct nat_event *nat; /* borrowed for the call */
    const char *backend;         /* pool name of nat->s.backend, or "" */
    /* GW_EV_BACKEND */
    const struct gw_server *server;    /* borrowed for the call */
    const char *old_state, *new_state; /* gw_server_state_name() */
    const char *why;                   /* "health check", "drain", "enable", ... */
};

/* A subscriber. Called synchronously on the loop; must not close sessions or
 * flows, nor (un)subscribe, from inside the call. */
typedef void (*gw_event_fn)(void *arg, const struct gw_event *ev);

struct gw_subscriber {
    gw_event_fn fn;
    void *arg;
    LIST_ENTRY(gw_subscriber) link;
};

/* Adds fn(arg) to the event subscribers. Returns 0 or -ENOMEM. */
int gw_subscribe(struct gw_ctx *ctx, gw_event_fn fn, void *arg);
/* Removes the first subscriber with this fn and arg (no-op when none). */
void gw_unsubscribe(struct gw_ctx *ctx, gw_event_fn fn, void *arg);
/* Delivers ev to every subscriber. */
void gw_publish(struct gw_ctx *ctx, const struct gw_event *ev);

/* ---- backends (gw_backend.c) -------------------------------------------- */

enum gw_server_health {
    GW_HEALTH_UP = 0, /* also the start state: trusted until checks say otherwise */
    GW_HEALTH_DOWN,
};

enum gw_server_admin {
    GW_ADMIN_ENABLED = 0,
    GW_ADMIN_DRAINING, /* no new flows; live ones stay; checks go on */
    GW_ADMIN_DISABLED, /* no new flows; live ones stay; checks stopped */
};

enum gw_check_state {
    GW_CHECK_IDLE = 0,
    GW_CHECK_RUNNING,
};

struct gw_backend;

/* One server of a pool, with its health check. Survives a reload when the
 * new config has the same pool name and address (flows keep pointing at it). */
struct gw_server {
    struct gw_ctx *ctx;         /* borrowed */
    struct gw_backend *backend; /* borrowed; NULL once retired by a reload */
    struct gw_server_conf conf;
    enum gw_server_health health;
    enum gw_server_admin admin;
    unsigned rise_count, fall_count;
    uint32_t conns; /* live flows on this server */
    uint64_t total_conns, connect_failures;
    int smooth_current; /* smooth weighted round robin state */
    /* health check */
    enum gw_check_state check_state;
    int check_fd;
    ev_io check_io;
    ev_timer check_timer; /* interval, then per-check timeout */
    uint64_t last_check_ms;
    char last_check_error[64];
    TAILQ_ENTRY(gw_server) link; /* in backend->servers, or ctx->retired */
};

TAILQ_HEAD(gw_server_list, gw_server);

/* A named pool of servers, rebuilt from the config at start and on SIGHUP. */
struct gw_backend {
    char name[GW_NAME_MAX];
    uint32_t tag; /* stable id of the name: nat_session.backend */
    uint8_t proto;
    struct gw_backend_conf conf; /* copy; servers/health strings borrowed from ctx->cfg */
    struct gw_server_list servers;
    size_t n_servers;
    uint32_t rr_next;   /* hint for round robin */
    uint64_t no_server; /* flows refused: no server available */
    TAILQ_ENTRY(gw_backend) link;
};

TAILQ_HEAD(gw_backend_list, gw_backend);

/*
 * Builds the pools of ctx->cfg into ctx->backends, carrying over servers of
 * the old pools with the same pool name and address (their health, admin
 * state and live flow counts); old servers not carried over are retired and
 * freed when their last flow ends. Starts the health checks. Returns 0 or
 * -ENOMEM (then the old pools are untouched).
 */
int gw_backends_apply(struct gw_ctx *ctx);

/* Stops every health check and frees all pools and retired servers. */
void gw_backends_free(struct gw_ctx *ctx);

/* The pool named `name`, or NULL. */
struct gw_backend *gw_backend_find(struct gw_ctx *ctx, const char *name);

/* The pool name of a nat_session.backend tag, or "" (never NULL). Tags are
 * never reused, so names of pools removed by a reload are still known. */
const char *gw_backend_name(const struct gw_ctx *ctx, uint32_t tag);

/*
 * Picks a server of `b` for a new flow from client `client`: up, enabled,
 * under max_conns, by the pool's balance, and none of `tried` (a mask of the
 * servers this flow already tried, by gw_server_bit). Stores the picked
 * server's bit in *bit when bit is not NULL. Returns NULL when none is
 * available (counted in b).
 */
struct gw_server *gw_backend_pick(struct gw_backend *b, const struct nat_addr *client,
                                  uint32_t tried, uint32_t *bit);

/*
 * Server s's bit in a `tried` mask of pool b: its position in the pool,
 * modulo 32 (in a pool of more than 32 servers two positions share a bit,
 * so a flow may pass over a server it has not tried). 0 when s is not in b.
 */
uint32_t gw_server_bit(const struct gw_backend *b, const struct gw_server *s);

/* A flow starts/ends on s (live flow counts; frees a retired server at 0). */
void gw_server_acquire(struct gw_server *s);
void gw_server_release(struct gw_server *s);

/*
 * Admin commands on "NAME" (every server of the pool) or "NAME/SERVER" (the
 * server by its name, "HOST:PORT" by default). Return 0, -ENOENT when nothing
 * is named so. Logged and published as GW_EV_BACKEND.
 */
int gw_backend_drain(struct gw_ctx *ctx, const char *spec);
int gw_backend_enable(struct gw_ctx *ctx, const char *spec);
int gw_backend_disable(struct gw_ctx *ctx, const char *spec);

/* "up"/"down", "enabled"/"draining"/"disabled", "roundrobin"/"leastconn"/"source". */
const char *gw_server_health_name(enum gw_server_health h);
const char *gw_server_admin_name(enum gw_server_admin a);
const char *gw_balance_name(enum gw_balance b);
int gw_balance_parse(const char *name);
/* The server's state as one word: "up", "down", "draining" or "disabled". */
const char *gw_server_state_name(const struct gw_server *s);

/* A pool and its servers as JSON for `show backends`: name, proto, balance,
 * servers [{name, address, weight, max_conns, state, health, admin, conns,
 * total_conns, connect_failures, last_check, last_check_error}]. New ref. */
json_t *gw_backend_to_json(const struct gw_backend *b);

/* ---- routes (gw_route.c) ------------------------------------------------- */

/* What a route looks at. Later: the first bytes the client sent. */
struct gw_route_input {
    uint8_t proto;
    const struct nat_endpoint *client;
};

/* The pool for a new flow, or NULL when no route matches (refused: "no_route"). */
struct gw_backend *gw_route_pick(struct gw_ctx *ctx, const struct gw_route_input *in);

/* ---- listeners (gw_listen.c) --------------------------------------------- */

struct gw_listener {
    struct gw_ctx *ctx;      /* borrowed */
    struct gw_sockaddr addr; /* bound address (port filled in) */
    int tcp_fd, udp_fd;      /* -1 when closed */
    ev_io tcp_io, udp_io;
};

/*
 * Binds the TCP listener and UDP socket of every configured address on
 * cfg->port (0: the kernel picks the port of the first TCP bind, the rest use
 * it). Returns 0 or -errno (logged with the address). Does not start watchers.
 */
int gw_listen_open(struct gw_ctx *ctx);
/* Starts accepting/receiving. */
void gw_listen_start(struct gw_ctx *ctx);
/* Out of descriptors (EMFILE/ENFILE): stops accepting for 100 ms (counted). */
void gw_listen_pause(struct gw_ctx *ctx);
/* Stops accepting new TCP flows and closes the TCP listeners (drain). */
void gw_listen_stop_tcp(struct gw_ctx *ctx);
/* Closes everything gw_listen_open opened. */
void gw_listen_close(struct gw_ctx *ctx);
/* The backlog passed to listen(2) for cfg_backlog: itself when > 0, else
 * net.core.somaxconn (GW_FALLBACK_BACKLOG when it cannot be read). */
int gw_listen_backlog(int cfg_backlog);
/* The port actually bound (after gw_listen_open). */
uint16_t gw_listen_port(const struct gw_ctx *ctx);

/* ---- flows (gw_tcp.c, gw_udp.c, gw_flow.c) ------------------------------ */

enum gw_flow_state {
    GW_FLOW_CONNECTING = 0, /* TCP: connect to the backend in progress */
    GW_FLOW_RELAY,          /* bytes move both ways */
    GW_FLOW_HALF_CLOSED,    /* TCP: one side sent FIN, the other may still send */
    GW_FLOW_CLOSED,
};

/* Indexes into gw_flow.tcp arrays: the client side and the backend side. */
enum gw_side {
    GW_SIDE_CLIENT = 0,
    GW_SIDE_BACKEND = 1,
};

/* Bytes waiting to be written toward one side (allocated only while some are
 * pending, so an idle flow holds no buffer). */
struct gw_buf {
    size_t off, len, cap;
    char data[];
};

/* A pipe through which a bulk direction moves with splice(2), no copy to
 * user space; made once a direction has moved limits.splice_after bytes. */
struct gw_pipe {
    int rd, wr;
    size_t len; /* bytes in the pipe, not yet written out */
    size_t cap; /* the pipe's capacity */
};

/*
 * One translated flow. TCP: two fds and two io watchers; a direction that
 * cannot write all it read keeps the rest in pend[] and stops reading its
 * source (backpressure). UDP: the upstream socket bound to nat_ip:nat_port and
 * connected to the server; the client is answered from the listener socket
 * and local address it wrote to.
 */
struct gw_flow {
    struct gw_ctx *ctx;       /* borrowed */
    struct nat_session *sess; /* borrowed from the table; NULL once closed there */
    struct gw_server *server; /* acquired (gw_server_acquire); its pool: server->backend */
    uint32_t backend_tag;     /* the pool's tag (nat_session.backend) */
    uint8_t proto;
    uint8_t state;              /* enum gw_flow_state */
    uint8_t attempts;           /* servers tried */
    uint8_t flags;              /* GW_FLOW_F_* */
    LIST_ENTRY(gw_flow) link;   /* ctx->flows */
    struct nat_endpoint client; /* the client's address and port */
    uint8_t proxy_protocol;     /* TCP: PROXY header version for the server (0: none),
                                   fixed at the connect: a reload cannot change it midway */
    uint8_t tried_gen;          /* TCP: ctx->backends_gen when `tried` was last set */
    uint32_t tried;             /* TCP: servers of the pool tried (gw_server_bit) */
    union {
        struct {
            struct gw_io io[2];      /* [GW_SIDE_CLIENT], [GW_SIDE_BACKEND]; io[i].fd is
                                        side i's socket (-1 when none); in ctx->poll */
            ev_timer timer;          /* connect timeout */
            struct gw_buf *pend[2];  /* owned; bytes waiting to be written to side i */
            struct gw_pipe *pipe[2]; /* owned; bulk: bytes toward side i go by splice */
        } tcp;
        struct {
            int fd;          /* upstream socket */
            struct gw_io io; /* fd in ctx->poll */
            struct gw_listener *listener; /* borrowed: where replies go out */
            union {
                struct in_addr v4;
                struct in6_addr v6;
            } local;                /* the address the client wrote to (replies leave from it) */
            sa_family_t local_af;   /* AF_INET, AF_INET6, or 0 = not known */
            int ifindex;
            struct gw_flow *hnext; /* ctx->udp_hash chain */
            uint8_t uflags;        /* GW_UDP_F_* (gw_udp.c) */
        } udp;
    } u;
};

#define GW_FLOW_F_EOF_CLIENT 0x01        /* client sent FIN */
#define GW_FLOW_F_EOF_BACKEND 0x02       /* backend sent FIN */
#define GW_FLOW_F_SHUT_CLIENT 0x04       /* FIN forwarded to the client */
#define GW_FLOW_F_SHUT_BACKEND 0x08      /* FIN forwarded to the backend */
#define GW_FLOW_F_FIRST_FIN_BACKEND 0x10 /* the backend sent the first FIN */
#define GW_FLOW_F_ESTABLISHED 0x20       /* UDP: a reply was seen */
#define GW_FLOW_F_NO_SPLICE 0x40         /* TCP: a pipe could not be had, copy only */
#define GW_FLOW_F_EOF_KEPT 0x80          /* TCP: the first FIN's side still watched (gw_tcp.c) */

LIST_HEAD(gw_flow_list, gw_flow);

/*
 * The one teardown of a flow: stops its watchers, closes its sockets (with RST
 * when reason ends in "_rst"), frees its buffers, closes its NAT session with
 * `reason` (a static close-reason token) unless libnat already did, releases
 * its server, logs, frees the flow.
 */
void gw_flow_close(struct gw_flow *flow, const char *reason);

/* gw_tcp.c / gw_udp.c: the protocol part of gw_flow_close (watchers, fds,
 * buffers, index); `rst` closes the TCP sockets with a reset. */
void gw_tcp_release(struct gw_flow *flow, bool rst);
void gw_udp_release(struct gw_flow *flow);

/* gw_tcp.c: accepts a batch on a TCP listener (the ev_io callback's body). */
void gw_tcp_accept(struct gw_listener *l);
/* gw_tcp.c: the state name of a flow ("connecting", "relay", ...). */
const char *gw_flow_state_name(enum gw_flow_state st);

/* gw_udp.c: receives a batch on a UDP listener socket. */
void gw_udp_receive(struct gw_listener *l);
/* gw_udp.c: frees the UDP client index. */
void gw_udp_index_free(struct gw_ctx *ctx);

/* ---- NAT glue (gw_nat.c) ------------------------------------------------- */

/*
 * Makes the NAT table from ctx->cfg->nat (first_id from the store when there
 * is one), sets its event callback (store + subscribers + flow teardown) and
 * starts the periodic expiry. Returns 0 or -EINVAL/-ENOMEM (logged).
 */
int gw_nat_start(struct gw_ctx *ctx);
/* Stops the expiry timer and frees the table (sessions must be closed first). */
void gw_nat_stop(struct gw_ctx *ctx);

/*
 * Closes every live session that passes `f` with reason "flush" and tears
 * down their flows (sockets closed). Returns how many sessions were closed.
 */
size_t gw_nat_flush(struct gw_ctx *ctx, const struct nat_filter *f);

/* Records a live session's progress (state, bytes) in the store now, if
 * there is one (the periodic pass of gw_nat.c does it once a second). */
void gw_nat_update(struct gw_ctx *ctx, const struct nat_session *s);

/* Warns when the pool's ports overlap the kernel's ip_local_port_range. */
void gw_nat_check_port_range(const struct nat_config *nat);

/* ---- counters ------------------------------------------------------------ */

struct gw_counters {
    uint64_t tcp_accepted;
    uint64_t tcp_live;  /* live TCP flows */
    uint64_t udp_flows; /* UDP mappings created */
    uint64_t udp_live;
    uint64_t udp_datagrams_in;           /* client -> backend */
    uint64_t udp_datagrams_out;          /* backend -> client */
    uint64_t udp_dropped;                /* could not be forwarded */
    uint64_t bytes_in, bytes_out;        /* relayed, both protocols */
    uint64_t refused_repick[NAT_ERR_COUNT]; /* TCP flows whose port was busy on the host
                                              and no other could be had, by nat_err (libnat
                                              counts the refused opens) */
    uint64_t refused_no_route;
    uint64_t refused_no_server;
    uint64_t refused_max_flows;
    uint64_t refused_draining;
    uint64_t bind_busy;            /* EADDRINUSE on bind: port repicked */
    uint64_t connect_addrnotavail; /* EADDRNOTAVAIL on connect: port repicked */
    uint64_t connect_failed;       /* a server refused or errored */
    uint64_t connect_timeout;
    uint64_t failovers; /* next server tried after a failure */
    uint64_t accept_errors;
    uint64_t accept_paused; /* EMFILE/ENFILE pauses */
    uint64_t reloads, reload_failures;
    uint64_t closed_by_reason_rst; /* flows ended by a reset */
    uint64_t spliced;              /* TCP directions moved to splice(2) (bulk) */
};

/* Log rate limits of the data path (one message a second each). */
struct gw_ratelimits {
    struct gw_ratelimit refused; /* flows refused (no mapping, no server) */
    struct gw_ratelimit sockets; /* socket/bind errors toward backends */
    struct gw_ratelimit accept;  /* accept errors and pauses */
    struct gw_ratelimit poll;    /* sockets the flows' epoll set refused */
};

/* ---- the context --------------------------------------------------------- */

struct gw_ctx {
    struct ev_loop *loop;          /* borrowed */
    struct gw_poll poll;           /* the flows' sockets (gw_poll.h) */
    struct gw_config *cfg;         /* owned; replaced by a reload */
    struct gw_cli cli;             /* the flags, reapplied on reload */
    struct nat_table *nat;         /* owned */
    struct db *db;                 /* owned; NULL when no store */
    struct gw_listener *listeners; /* owned array */
    size_t n_listeners;
    uint16_t port; /* bound port */
    struct gw_backend_list backends;
    struct gw_server_list retired; /* servers removed by a reload, still with flows */
    uint8_t backends_gen;          /* + 1 at each gw_backends_apply (flow->tried_gen) */
    char **tag_names;              /* owned; pool names by tag */
    uint32_t n_tags;
    struct gw_flow_list flows;
    struct gw_flow **udp_hash; /* owned; client endpoint -> UDP flow */
    size_t udp_hash_size, udp_hash_count;
    LIST_HEAD(, gw_subscriber) subscribers;
    struct gw_counters counters;
    struct gw_ratelimits rl;
    uint64_t start_ms; /* wall clock at start */
    char *scratch;     /* owned; relay read buffer */
    size_t scratch_size;
    struct gw_udp_batch *udp_batch; /* owned by gw_udp.c: recvmmsg/sendmmsg arrays */
    uint64_t db_update_mark;        /* last periodic db_submit_update pass (ms) */
    ev_timer db_timer;              /* store status poll and periodic updates */
    ev_timer expire_timer;
    ev_timer accept_timer; /* resumes accepting after EMFILE */
    bool accept_paused;
    ev_timer drain_timer;
    ev_signal sig_term, sig_int, sig_hup;
    bool stopping; /* SIGTERM seen: draining */
    int exit_code;
    void *control; /* owned by gw_control.c */
};

/* ---- the daemon's life cycle (gw_daemon.c) ------------------------------- */

/*
 * Reloads the configuration (SIGHUP): re-reads the file and the flags; when
 * valid, applies backends, routes, timeouts and limits (established flows
 * stay); when not, logs the reason and keeps the old one. Returns 0 or -EINVAL.
 */
int gw_reload(struct gw_ctx *ctx);

/* Starts the graceful stop (SIGTERM): stop accepting, drain, then break the loop. */
void gw_shutdown(struct gw_ctx *ctx);

/* Closes every live flow of `proto` (0 = all, else NAT_PROTO_*) with `reason`. */
void gw_flows_close_all(struct gw_ctx *ctx, int proto, const char *reason);

/* Flows live now (TCP + UDP; gw_flow.c). */
uint64_t gw_flows_live(const struct gw_ctx *ctx);

/* ---- control socket (gw_control.c, by the control engineer) ------------- */

/* Starts serving the control socket at `path` on ctx->loop. Returns 0 or -errno. */
int gw_control_start(struct gw_ctx *ctx, const char *path);
/* Stops it and removes the socket file. */
void gw_control_stop(struct gw_ctx *ctx);
/* Writes the default control socket path into buf and returns buf (gw_ctlproto.c). */
const char *gw_default_socket_path(char *buf, size_t len);

#endif /* GW_GWD_H */
