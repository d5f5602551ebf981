/*
 * gw_ctlproto.h - the control protocol shared by gwd and gwctl: line framing,
 * request parsing and validation with stable error codes, replies, a session
 * as a line of JSON, ISO-8601 times and the default socket path.
 * Pure: no sockets, no libev, no clock; docs/control-protocol.md is the spec.
 */
#ifndef GW_CTLPROTO_H
#define GW_CTLPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "nat/nat.h"

/* Bumped when a reply changes incompatibly; new fields and commands do not bump it. */
#define CTL_PROTOCOL_VERSION 1
/* Longest request line, newline excluded. */
#define CTL_MAX_LINE (64 * 1024)
/* Longest backend or server name. */
#define CTL_NAME_MAX 64
/* show nat: default and largest page. */
#define CTL_LIMIT_DEFAULT 100
#define CTL_LIMIT_MAX 1000000
/* show nat sorted by anything but id: offset + limit may not pass this. */
#define CTL_SORT_WINDOW_MAX 100000
/* Longest request id kept (a string id longer than this is a bad request). */
#define CTL_ID_MAX 64
/* ISO-8601 UTC with milliseconds: "2026-11-27T16:31:25.123Z" plus the NUL. */
#define CTL_TIME_STRLEN 25

/* ---- error codes ---------------------------------------------------------- */

enum ctl_err {
    CTL_OK = 0,
    CTL_ERR_BAD_JSON,        /* the line is not JSON */
    CTL_ERR_BAD_REQUEST,     /* JSON, but not {"id":..,"cmd":"..","args":{..}} */
    CTL_ERR_UNKNOWN_COMMAND, /* cmd names no command */
    CTL_ERR_BAD_ARGUMENT,    /* an argument unknown, of the wrong type or out of range */
    CTL_ERR_NOT_FOUND,       /* a named thing (backend, server) does not exist */
    CTL_ERR_LINE_TOO_LONG,   /* over CTL_MAX_LINE; the server then disconnects */
    CTL_ERR_BUSY,            /* too many clients, or this client has a command running */
    CTL_ERR_UNAVAILABLE,     /* the daemon lacks what the command needs (no store...) */
    CTL_ERR_INTERNAL,        /* the daemon failed (out of memory...) */
    CTL_ERR_COUNT
};

/* The stable snake_case code: "bad_json", "bad_request", ... "internal". */
const char *ctl_err_name(enum ctl_err e);
/* Reverse of ctl_err_name; -1 when unknown. */
int ctl_err_parse(const char *name);

/* An error: its code and a sentence for people naming what was wrong. */
struct ctl_error {
    enum ctl_err code;
    char message[256];
};

/* ---- commands ------------------------------------------------------------- */

enum ctl_cmd {
    CTL_CMD_VERSION = 0,
    CTL_CMD_SHOW_STATS,
    CTL_CMD_SHOW_NAT,
    CTL_CMD_SHOW_BACKENDS,
    CTL_CMD_SHOW_CONFIG,
    CTL_CMD_FLUSH_NAT,
    CTL_CMD_BACKEND_DRAIN,
    CTL_CMD_BACKEND_ENABLE,
    CTL_CMD_BACKEND_DISABLE,
    CTL_CMD_SUBSCRIBE,
    CTL_CMD_SHOW_CLIENTS,
    CTL_CMD_SHOW_BLOCKS,
    CTL_CMD_COUNT
};

/* The command's wire name ("show nat", "backend drain"...). */
const char *ctl_cmd_name(enum ctl_cmd c);
/* Reverse of ctl_cmd_name; -1 when unknown. */
int ctl_cmd_parse(const char *name);

/* show nat sort keys: ascending by the named field, then by id. */
enum ctl_sort {
    CTL_SORT_ID = 0,
    CTL_SORT_CLIENT,  /* client ip, client port */
    CTL_SORT_NAT,     /* nat ip, nat port */
    CTL_SORT_BACKEND, /* backend tag */
    CTL_SORT_STATE,
    CTL_SORT_OPENED_AT, /* oldest first */
    CTL_SORT_LAST_SEEN, /* most idle first */
    CTL_SORT_BYTES_IN,
    CTL_SORT_BYTES_OUT,
    CTL_SORT_BYTES, /* bytes_in + bytes_out */
    CTL_SORT_COUNT
};

/* "id", "client", "nat", "backend", "state", "opened_at", "last_seen",
 * "bytes_in", "bytes_out", "bytes". */
const char *ctl_sort_name(enum ctl_sort s);

/* Event kinds a subscriber may ask for (a bit each). */
enum ctl_event_kind {
    CTL_EVK_OPEN = 1u << 0,
    CTL_EVK_CLOSE = 1u << 1,
    CTL_EVK_EXPIRE = 1u << 2,
    CTL_EVK_REFUSE = 1u << 3,
    CTL_EVK_HEALTH = 1u << 4,
    CTL_EVK_BLOCK = 1u << 5, /* block_alloc and block_free (the block policy) */
    CTL_EVK_ALL = 0x3f,
};
#define CTL_EVK_COUNT 6

/* The name of event kind bit k (0 .. CTL_EVK_COUNT - 1), as subscribe takes
 * it: "open", "close", "expire", "refuse", "health", "block". */
const char *ctl_event_kind_name(unsigned k);

/* The arguments of show nat and flush nat. */
struct ctl_nat_query {
    struct nat_filter filter;   /* filter.backend is left for the daemon to resolve */
    char backend[CTL_NAME_MAX]; /* backend name filter; "" = any */
    enum ctl_sort sort;
    bool desc;         /* sort "-key": descending */
    uint32_t limit;    /* show nat: page size */
    uint64_t offset;   /* show nat: rows skipped */
    uint64_t after_id; /* show nat, sort id only: rows with id > after_id */
};

/* backend drain|enable|disable: {"name":"NAME[/SERVER]","server":"SERVER"}. */
struct ctl_backend_args {
    char name[CTL_NAME_MAX];
    char server[CTL_NAME_MAX]; /* "" = every server of the backend */
};

/* show clients: the top `limit` client IPs by live sessions (or bytes). */
struct ctl_clients_args {
    uint32_t limit; /* 1..CTL_CLIENTS_MAX, default 10 */
    bool by_bytes;  /* sort "bytes" (in + out) instead of "sessions" */
};

#define CTL_CLIENTS_MAX 1000

/* show blocks: the port blocks in use (block policy), filtered by client
 * (IP or prefix), nat_ip and nat_port (a block overlapping the range). */
struct ctl_blocks_args {
    struct nat_filter filter; /* has_client, has_nat_ip, nat_port_lo/hi only */
    uint32_t limit;           /* 1..CTL_SORT_WINDOW_MAX, default CTL_LIMIT_DEFAULT */
};

/* A parsed, validated request. */
struct ctl_request {
    json_t *id; /* owned: echoed in the reply; NULL when the request had none */
    enum ctl_cmd cmd;
    union {
        struct ctl_nat_query nat;        /* CTL_CMD_SHOW_NAT, CTL_CMD_FLUSH_NAT */
        struct ctl_backend_args backend; /* CTL_CMD_BACKEND_* */
        unsigned events;                 /* CTL_CMD_SUBSCRIBE: enum ctl_event_kind bits */
        struct ctl_clients_args clients; /* CTL_CMD_SHOW_CLIENTS */
        struct ctl_blocks_args blocks;   /* CTL_CMD_SHOW_BLOCKS */
    } u;
};

/*
 * Parses one request line (`len` bytes, no newline needed, need not be
 * NUL-terminated) into *req and validates every argument. Returns CTL_OK, or
 * the error code with *err filled. Either way req->id holds the request's id
 * when one could be read (so the error reply can echo it) and the caller must
 * call ctl_request_clear(req).
 */
enum ctl_err ctl_request_parse(struct ctl_request *req, const char *line, size_t len,
                               struct ctl_error *err);

/* Frees what *req owns and zeroes it. Safe on a zeroed request. */
void ctl_request_clear(struct ctl_request *req);

/* Parses an argument value the way show nat does: "LO-HI" or "N" port ranges.
 * Returns 0 and *lo, *hi, or -1. */
int ctl_port_range_parse(const char *s, uint16_t *lo, uint16_t *hi);

/* ---- replies -------------------------------------------------------------- */

/*
 * Builds the reply line {"id":..,"ok":true,"result":..}\n. Steals `result`
 * (NULL = null). Returns a malloc'd NUL-terminated line and its length in
 * *len, or NULL when out of memory.
 */
char *ctl_reply_ok(const json_t *id, json_t *result, size_t *len);

/* Builds {"id":..,"ok":false,"error":{"code":..,"message":..}}\n, as above. */
char *ctl_reply_error(const json_t *id, enum ctl_err code, const char *message, size_t *len);

/*
 * Writes the start of a reply whose result is streamed: `{"id":ID,"ok":true,
 * "result":{` into buf. Returns the length written, or -1 when it does not fit.
 */
int ctl_reply_stream_head(char *buf, size_t size, const json_t *id);

/* ---- sessions and times --------------------------------------------------- */

/* Longest line ctl_session_format writes, with room to spare. */
#define CTL_SESSION_JSON_MAX 1024

/*
 * Writes session `s` as one JSON object with the nat_sessions column names
 * (no newline) into buf (`size` bytes, CTL_SESSION_JSON_MAX is enough).
 * `backend` is the pool's name (NULL = null). `closed_at` 0 and
 * `close_reason` NULL write null (a live session). `state` < 0 uses
 * s->state. Returns the length, or -1 when it does not fit.
 */
int ctl_session_format(char *buf, size_t size, const struct nat_session *s, const char *backend,
                       int state, uint64_t closed_at, const char *close_reason);

/* Writes `ms` (milliseconds since the epoch) as "YYYY-MM-DDTHH:MM:SS.mmmZ"
 * into buf (CTL_TIME_STRLEN bytes). Returns buf. */
char *ctl_time_format(uint64_t ms, char *buf);

/*
 * Parses a time: "YYYY-MM-DDTHH:MM:SS[.mmm][Z]" (a space may replace the T;
 * always UTC), "YYYY-MM-DD", or "@SECONDS" since the epoch. Returns 0 and
 * *ms, or -1.
 */
int ctl_time_parse(const char *s, uint64_t *ms);

/*
 * Appends `s` to buf as a JSON string with its quotes, escaped. Returns the
 * length written, or -1 when it does not fit.
 */
int ctl_json_quote(char *buf, size_t size, const char *s);

/* ---- line framing --------------------------------------------------------- */

/*
 * An input buffer cut into lines. Bytes are read into the space it hands out;
 * complete lines come out of ctl_linebuf_next. A line longer than `max`
 * bytes (without its newline) is an error as soon as it is known, before the
 * newline arrives, so memory stays bounded by max + one read.
 */
struct ctl_linebuf {
    char *buf;   /* owned */
    size_t cap;  /* allocated */
    size_t head; /* first unconsumed byte */
    size_t len;  /* end of data */
    size_t scan; /* bytes from head already known to hold no newline */
    size_t max;  /* longest line */
};

/* Sets lb up for lines of at most `max` bytes. Allocates nothing yet. */
void ctl_linebuf_init(struct ctl_linebuf *lb, size_t max);

/* Frees the buffer. Safe twice. */
void ctl_linebuf_free(struct ctl_linebuf *lb);

/*
 * Hands out room for at least `want` more bytes (fewer when the line limit
 * leaves less): returns a pointer and its size in *avail, or NULL when out of
 * memory. Compacts consumed bytes away first.
 */
char *ctl_linebuf_space(struct ctl_linebuf *lb, size_t want, size_t *avail);

/* Records that n bytes were written into the space from ctl_linebuf_space. */
void ctl_linebuf_commit(struct ctl_linebuf *lb, size_t n);

/*
 * Takes the next complete line out: returns 1 with *line (NUL-terminated in
 * place, newline and a trailing \r removed; valid until the next call on lb)
 * and *len, 0 when no complete line is buffered, or -EMSGSIZE when the line
 * being received is over the limit (the buffer is then useless: disconnect).
 */
int ctl_linebuf_next(struct ctl_linebuf *lb, char **line, size_t *len);

/* Bytes buffered that are not yet a complete line. */
size_t ctl_linebuf_pending(const struct ctl_linebuf *lb);

/* ---- the socket path ------------------------------------------------------ */

/*
 * The default control socket path: $GW_SOCKET if set and not empty, else
 * /run/gwd.sock for root, else ${XDG_RUNTIME_DIR:-/tmp}/gwd-$UID.sock.
 * Writes it into buf and returns buf, or NULL when it does not fit.
 */
const char *gw_default_socket_path(char *buf, size_t len);

#endif /* GW_CTLPROTO_H */
