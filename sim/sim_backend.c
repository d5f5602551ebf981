/*
 * sim_backend.c - the demo backend: one libev loop, a TCP listener and a UDP
 * socket on the same port number, per-connection state machine
 * PROBE -> ECHO | HTTP. See docs/gwsim.md for the exact replies.
 */
#include "sim/sim_backend.h"

#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ev.h>

#include "sim/sim_util.h"

#define BE_NAME_MAX 64
#define BE_INBUF 16384        /* HTTP head limit and probe buffer */
#define BE_OUT_HIGH (1 << 20) /* stop reading above this many queued bytes */
#define BE_PROBE_MS 100.0     /* how long to wait for first bytes before the hello */
#define BE_UDP_MAX 65507
#define BE_UDP_QUEUE 4096 /* delayed datagrams held at most */
#define BE_HTTP_BODY_MAX (1 << 20)
#define BE_ACCEPT_RETRY_MS 100.0 /* out of fds: try accept() again this often */

enum be_state {
    BE_PROBE = 0, /* connected, waiting for first bytes or the probe timer */
    BE_ECHO,      /* hello sent, echoing */
    BE_HTTP,      /* answering HTTP requests */
    BE_DRAINING,  /* writing what is left, then close */
};

struct be_opts {
    char name[BE_NAME_MAX];
    bool tcp, udp;
    uint16_t port;
    struct sockaddr_storage bind;
    socklen_t bind_len;
    double delay_ms;
    uint64_t close_after; /* 0 = never */
    uint64_t reset_after; /* 0 = never */
    uint64_t max_conns;   /* 0 = no limit */
    bool verbose;
};

/* A chunk of output waiting for its delay to pass. */
struct be_chunk {
    struct be_chunk *next; /* owned */
    double ready_at;       /* ev_now() time in ms */
    size_t len;
    char data[];
};

struct be_ctx;

struct be_conn {
    struct be_conn *prev, *next; /* borrowed: the context's list */
    struct be_ctx *ctx;          /* borrowed */
    ev_io rw, ww;
    ev_timer probe;
    ev_timer delay;
    int fd;
    enum be_state state;
    char peer[SIM_ADDR_STRLEN];
    char in[BE_INBUF];
    size_t in_len;
    char *out; /* owned: bytes ready to write */
    size_t out_len, out_cap;
    struct be_chunk *pend_head, *pend_tail; /* owned: delayed output */
    size_t pend_bytes;
    uint64_t rx_total;  /* bytes received from the client */
    uint64_t body_left; /* HTTP body bytes still to skip */
    bool http_close;    /* close after the current HTTP response */
    bool eof;           /* client sent FIN */
    bool reading;
};

struct be_udp_item {
    double ready_at;
    struct sockaddr_storage peer;
    socklen_t peer_len;
    size_t len;
    char *data; /* owned */
};

struct be_ctx {
    struct ev_loop *loop; /* borrowed */
    struct be_opts o;
    int tcp_fd, udp_fd;
    ev_io accept_w, udp_w;
    ev_timer accept_retry;       /* re-arms accept_w while accepting is blocked */
    bool accept_blocked;         /* accept() ran out of fds/memory; the queue not yet empty */
    double accept_blocked_since; /* ev_now() in ms when it began */
    ev_timer udp_timer;
    ev_signal sigterm_w, sigint_w;
    struct be_conn *conns; /* owned list */
    uint64_t n_conns;
    struct be_udp_item udpq[BE_UDP_QUEUE];
    char udp_in[65536], udp_out[65536 + 256]; /* one datagram in, its reply out */
    size_t udpq_head, udpq_len;
    /* counters, printed at exit */
    uint64_t accepted, refused_max, http_requests, echo_bytes, datagrams, udp_dropped, resets,
        early_closes, accept_pauses;
};

static void be_conn_close(struct be_conn *c, bool reset);
static void be_conn_flush(struct be_conn *c);
static void be_accept_resume(struct be_ctx *ctx);

static void be_usage(FILE *f)
{
    fprintf(f,
            "usage: gwsim backend [--tcp] [--udp] [--port PORT] [--bind ADDR] [--name NAME]\n"
            "                     [--delay-ms MS] [--close-after BYTES] [--reset-after BYTES]\n"
            "                     [--max-conns N] [--verbose]\n"
            "\n"
            "A demo backend on TCP and/or UDP (both when neither flag is given) on one port\n"
            "number. Prints 'listening tcp=PORT udp=PORT' on stdout when ready.\n"
            "  --port PORT        port number for both protocols; 0 (default) = pick a free one\n"
            "  --bind ADDR        address to listen on (default 127.0.0.1; :: for all)\n"
            "  --name NAME        name told to clients (default gwsim)\n"
            "TCP: sends 'gwsim-backend NAME peer=IP:PORT\\n', then echoes bytes unchanged;\n"
            "     when the first bytes are an HTTP request, answers each request with\n"
            "     {\"backend\":NAME,\"peer\":\"IP:PORT\",\"method\":M,\"path\":P} (keep-alive).\n"
            "UDP: each datagram gets 'gwsim-backend NAME peer=IP:PORT\\n' + the datagram.\n"
            "Faults:\n"
            "  --delay-ms MS        hold every reply (hello, echo, HTTP, datagram) MS ms\n"
            "  --close-after BYTES  TCP: after BYTES received, echo up to them and close (FIN)\n"
            "  --reset-after BYTES  TCP: after BYTES received, reset the connection (RST)\n"
            "  --max-conns N        TCP: over N open connections, accept and reset at once\n"
            "SIGTERM or SIGINT: close everything and exit 0.\n");
}

static int be_parse(struct be_ctx *ctx, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"tcp", no_argument, NULL, 't'},
        {"udp", no_argument, NULL, 'u'},
        {"port", required_argument, NULL, 'p'},
        {"bind", required_argument, NULL, 'b'},
        {"name", required_argument, NULL, 'n'},
        {"delay-ms", required_argument, NULL, 'd'},
        {"close-after", required_argument, NULL, 'C'},
        {"reset-after", required_argument, NULL, 'R'},
        {"max-conns", required_argument, NULL, 'M'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct be_opts *o = &ctx->o;
    const char *bind_s = "127.0.0.1";
    uint64_t v;
    int ch;

    memset(o, 0, sizeof(*o));
    strcpy(o->name, "gwsim");
    optind = 1;
    while ((ch = getopt_long(argc, argv, "p:b:n:vh", longopts, NULL)) != -1) {
        switch (ch) {
        case 't':
            o->tcp = true;
            break;
        case 'u':
            o->udp = true;
            break;
        case 'p':
            if (sim_parse_u64(optarg, 0, 65535, &v) < 0) {
                fprintf(stderr, "gwsim backend: --port: '%s' is not a port (0-65535)\n", optarg);
                return 2;
            }
            o->port = (uint16_t)v;
            break;
        case 'b':
            bind_s = optarg;
            break;
        case 'n':
            if (strlen(optarg) == 0 || strlen(optarg) >= BE_NAME_MAX ||
                strpbrk(optarg, " \t\r\n\"\\") != NULL) {
                fprintf(stderr,
                        "gwsim backend: --name: 1-%d characters, no spaces, quotes or "
                        "backslashes\n",
                        BE_NAME_MAX - 1);
                return 2;
            }
            strcpy(o->name, optarg);
            break;
        case 'd':
            if (sim_parse_double(optarg, 0, 3600000, &o->delay_ms) < 0) {
                fprintf(stderr, "gwsim backend: --delay-ms: '%s' is not 0-3600000\n", optarg);
                return 2;
            }
            break;
        case 'C':
        case 'R':
        case 'M':
            if (sim_parse_u64(optarg, 1, UINT64_MAX / 2, &v) < 0) {
                fprintf(stderr, "gwsim backend: '%s' is not a positive number\n", optarg);
                return 2;
            }
            if (ch == 'C')
                o->close_after = v;
            else if (ch == 'R')
                o->reset_after = v;
            else
                o->max_conns = v;
            break;
        case 'v':
            o->verbose = true;
            break;
        case 'h':
            return sim_usage_exit(be_usage, true);
        default:
            return sim_usage_exit(be_usage, false);
        }
    }
    if (sim_no_operands("backend", optind, argc, argv) != 0)
        return 2;
    if (!o->tcp && !o->udp)
        o->tcp = o->udp = true;
    if (sim_parse_ip(bind_s, 0, &o->bind, &o->bind_len) < 0) {
        fprintf(stderr, "gwsim backend: --bind: '%s' is not a numeric address\n", bind_s);
        return 2;
    }
    return -1;
}

/* ---- output ---------------------------------------------------------------- */

static int be_out_append(struct be_conn *c, const char *p, size_t n)
{
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        char *nb;
        while (cap < c->out_len + n)
            cap *= 2;
        nb = realloc(c->out, cap);
        if (nb == NULL)
            return -ENOMEM;
        c->out = nb;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    return 0;
}

/* Queues n bytes for the client, after the configured delay. */
static int be_send(struct be_conn *c, const char *p, size_t n)
{
    struct be_chunk *ch;
    double now;

    if (n == 0)
        return 0;
    if (c->ctx->o.delay_ms <= 0)
        return be_out_append(c, p, n);
    ch = malloc(sizeof(*ch) + n);
    if (ch == NULL)
        return -ENOMEM;
    now = ev_now(c->ctx->loop) * 1000.0;
    ch->next = NULL;
    ch->ready_at = now + c->ctx->o.delay_ms;
    ch->len = n;
    memcpy(ch->data, p, n);
    if (c->pend_tail != NULL)
        c->pend_tail->next = ch;
    else
        c->pend_head = ch;
    c->pend_tail = ch;
    c->pend_bytes += n;
    if (!ev_is_active(&c->delay)) {
        ev_timer_set(&c->delay, c->ctx->o.delay_ms / 1000.0, 0.0);
        ev_timer_start(c->ctx->loop, &c->delay);
    }
    return 0;
}

static void be_update_reading(struct be_conn *c)
{
    bool want = !c->eof && c->state != BE_DRAINING && c->out_len + c->pend_bytes < BE_OUT_HIGH;

    if (want && !c->reading)
        ev_io_start(c->ctx->loop, &c->rw);
    else if (!want && c->reading)
        ev_io_stop(c->ctx->loop, &c->rw);
    c->reading = want;
}

/* Closes when everything is written and nothing more will come. */
static void be_maybe_finish(struct be_conn *c)
{
    if (c->out_len != 0 || c->pend_head != NULL)
        return;
    if (c->eof || c->state == BE_DRAINING)
        be_conn_close(c, false);
}

static void be_conn_flush(struct be_conn *c)
{
    while (c->out_len > 0) {
        ssize_t n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                ev_io_start(c->ctx->loop, &c->ww);
                be_update_reading(c);
                return;
            }
            be_conn_close(c, false);
            return;
        }
        memmove(c->out, c->out + n, c->out_len - (size_t)n);
        c->out_len -= (size_t)n;
    }
    ev_io_stop(c->ctx->loop, &c->ww);
    be_update_reading(c);
    be_maybe_finish(c);
}

static void be_delay_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct be_conn *c = (struct be_conn *)((char *)w - offsetof(struct be_conn, delay));
    double now = ev_now(loop) * 1000.0;

    (void)revents;
    while (c->pend_head != NULL && c->pend_head->ready_at <= now + 0.5) {
        struct be_chunk *ch = c->pend_head;
        c->pend_head = ch->next;
        if (c->pend_head == NULL)
            c->pend_tail = NULL;
        c->pend_bytes -= ch->len;
        if (be_out_append(c, ch->data, ch->len) < 0) {
            free(ch);
            be_conn_close(c, false);
            return;
        }
        free(ch);
    }
    if (c->pend_head != NULL) {
        ev_timer_set(w, (c->pend_head->ready_at - now) / 1000.0, 0.0);
        ev_timer_start(loop, w);
    }
    be_conn_flush(c);
}

/* ---- protocol ----------------------------------------------------------------- */

static const char *const be_methods[] = {"GET ",     "POST ",  "HEAD ",  "PUT ",     "DELETE ",
                                         "OPTIONS ", "PATCH ", "TRACE ", "CONNECT ", NULL};

/* 1: looks like HTTP; 0: cannot be; -1: a prefix of a method, need more. */
static int be_http_probe(const char *p, size_t n)
{
    for (int i = 0; be_methods[i] != NULL; i++) {
        size_t ml = strlen(be_methods[i]);
        size_t k = n < ml ? n : ml;
        if (memcmp(p, be_methods[i], k) == 0)
            return n >= ml ? 1 : -1;
    }
    return 0;
}

static int be_send_hello(struct be_conn *c)
{
    char line[BE_NAME_MAX + SIM_ADDR_STRLEN + 32];
    int n = snprintf(line, sizeof(line), "gwsim-backend %s peer=%s\n", c->ctx->o.name, c->peer);

    return be_send(c, line, (size_t)n);
}

/* Echo `n` received bytes, applying close-after / reset-after. Returns -1 when
 * the connection was closed. */
static int be_echo(struct be_conn *c, const char *p, size_t n)
{
    const struct be_opts *o = &c->ctx->o;
    uint64_t before = c->rx_total;

    c->rx_total += n;
    if (o->reset_after && c->rx_total >= o->reset_after) {
        c->ctx->resets++;
        be_conn_close(c, true);
        return -1;
    }
    if (o->close_after && c->rx_total >= o->close_after) {
        n = (size_t)(o->close_after - before);
        c->state = BE_DRAINING;
        c->ctx->early_closes++;
    }
    c->ctx->echo_bytes += n;
    if (be_send(c, p, n) < 0) {
        be_conn_close(c, false);
        return -1;
    }
    return 0;
}

/*
 * Length of the valid UTF-8 sequence that starts p (n bytes available), or 0
 * when p[0] starts none: a stray continuation byte, an overlong form, a
 * surrogate, a code point above U+10FFFF, or a sequence cut short.
 */
static size_t be_utf8_len(const unsigned char *p, size_t n)
{
    unsigned char lo = 0x80, hi = 0xbf; /* the range allowed for the second byte */
    size_t len;

    if (p[0] < 0x80)
        return 1;
    if (p[0] < 0xc2)
        return 0;
    if (p[0] < 0xe0) {
        len = 2;
    } else if (p[0] < 0xf0) {
        len = 3;
        if (p[0] == 0xe0)
            lo = 0xa0; /* overlong */
        else if (p[0] == 0xed)
            hi = 0x9f; /* surrogates */
    } else if (p[0] < 0xf5) {
        len = 4;
        if (p[0] == 0xf0)
            lo = 0x90; /* overlong */
        else if (p[0] == 0xf4)
            hi = 0x8f; /* above U+10FFFF */
    } else {
        return 0;
    }
    if (n < len || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    return len;
}

/*
 * Writes s (n bytes, any bytes) as the inside of a JSON string into dst, or
 * only measures when dst is NULL; returns the length (no NUL is written, at
 * most 6 * n). Valid UTF-8 passes unchanged, so a client gets back the bytes it
 * sent; '"' and '\\' are escaped, control characters (0x00-0x1f, 0x7f) become
 * \u00XX, and each byte that is not part of valid UTF-8 becomes \ufffd (U+FFFD):
 * the result is always valid JSON in valid UTF-8.
 */
static size_t be_json_str(char *dst, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0;

    for (size_t i = 0; i < n;) {
        size_t k = be_utf8_len(p + i, n - i);
        char esc[8];
        const char *out = esc;
        size_t ol;

        if (k == 0) {
            out = "\\ufffd";
            ol = 6;
            k = 1;
        } else if (k > 1) {
            out = s + i;
            ol = k;
        } else if (p[i] == '"' || p[i] == '\\') {
            esc[0] = '\\';
            esc[1] = (char)p[i];
            ol = 2;
        } else if (p[i] < 0x20 || p[i] == 0x7f) {
            ol = (size_t)snprintf(esc, sizeof(esc), "\\u%04x", p[i]);
        } else {
            out = s + i;
            ol = 1;
        }
        if (dst != NULL)
            memcpy(dst + o, out, ol);
        o += ol;
        i += k;
    }
    return o;
}

/*
 * Queues one answer: headers, then (not for HEAD) the JSON body. Method and
 * path may be as long as the request head allows (BE_INBUF); the body is sized
 * from them. Returns 0 or -ENOMEM.
 */
static int be_http_respond(struct be_conn *c, int status, const char *method, size_t mlen,
                           const char *path, size_t plen, bool head)
{
    const char *reason = status == 200   ? "OK"
                         : status == 431 ? "Request Header Fields Too Large"
                                         : "Bad Request";
    /* 128: the body's fixed text and the error reason */
    size_t cap = 128 + BE_NAME_MAX + SIM_ADDR_STRLEN + be_json_str(NULL, method, mlen) +
                 be_json_str(NULL, path, plen);
    char hdr[256];
    char *body = malloc(cap);
    size_t bl;
    int hl, rc;

    if (body == NULL)
        return -ENOMEM;
    if (status == 200) {
        bl = (size_t)snprintf(body, cap, "{\"backend\":\"%s\",\"peer\":\"%s\",\"method\":\"",
                              c->ctx->o.name, c->peer);
        bl += be_json_str(body + bl, method, mlen);
        memcpy(body + bl, "\",\"path\":\"", 10);
        bl += 10;
        bl += be_json_str(body + bl, path, plen);
        memcpy(body + bl, "\"}\n", 3);
        bl += 3;
    } else {
        bl = (size_t)snprintf(body, cap, "{\"backend\":\"%s\",\"error\":\"%s\"}\n",
                              c->ctx->o.name, reason);
    }
    hl = snprintf(hdr, sizeof(hdr),
                  "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                  "Connection: %s\r\n\r\n",
                  status, reason, bl, c->http_close ? "close" : "keep-alive");
    c->ctx->http_requests++;
    rc = be_send(c, hdr, (size_t)hl);
    if (rc == 0 && !head)
        rc = be_send(c, body, bl);
    free(body);
    return rc;
}

static bool be_hdr_is(const char *line, size_t len, const char *name, const char **val,
                      size_t *vlen)
{
    size_t nl = strlen(name);

    if (len <= nl || line[nl] != ':' || strncasecmp(line, name, nl) != 0)
        return false;
    *val = line + nl + 1;
    *vlen = len - nl - 1;
    while (*vlen > 0 && (**val == ' ' || **val == '\t')) {
        (*val)++;
        (*vlen)--;
    }
    while (*vlen > 0 && ((*val)[*vlen - 1] == ' ' || (*val)[*vlen - 1] == '\r'))
        (*vlen)--;
    return true;
}

/*
 * Answers every complete request in c->in. Returns 0, or -1 when the
 * connection was closed or is draining.
 */
static int be_http_process(struct be_conn *c)
{
    for (;;) {
        const char *end, *sp1, *sp2, *eol, *line;
        const char *val;
        size_t vlen, head_len, reqline_len;
        bool http10, keep = false, close_hdr = false;
        uint64_t clen = 0;

        if (c->body_left > 0) {
            size_t k = c->in_len < c->body_left ? c->in_len : (size_t)c->body_left;
            memmove(c->in, c->in + k, c->in_len - k);
            c->in_len -= k;
            c->body_left -= k;
            if (c->body_left > 0)
                return 0;
        }
        if (c->in_len == 0)
            return 0;
        end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
        if (end == NULL) {
            if (c->in_len >= sizeof(c->in)) {
                c->http_close = true;
                be_http_respond(c, 431, "", 0, "", 0, false);
                c->state = BE_DRAINING;
                return -1;
            }
            return 0;
        }
        head_len = (size_t)(end - c->in) + 4;
        eol = memchr(c->in, '\r', head_len);
        reqline_len = (size_t)(eol - c->in);
        sp1 = memchr(c->in, ' ', reqline_len);
        sp2 = sp1 ? memchr(sp1 + 1, ' ', reqline_len - (size_t)(sp1 + 1 - c->in)) : NULL;
        if (sp1 == NULL || sp2 == NULL || sp2 == sp1 + 1 ||
            reqline_len - (size_t)(sp2 + 1 - c->in) != 8 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0) {
            c->http_close = true;
            be_http_respond(c, 400, "", 0, "", 0, false);
            c->state = BE_DRAINING;
            return -1;
        }
        http10 = sp2[8] == '0';
        line = eol + 2;
        while (line < end + 2) {
            const char *le = memmem(line, (size_t)(end + 2 - line), "\r\n", 2);
            size_t ll = (size_t)(le - line);
            if (be_hdr_is(line, ll, "Content-Length", &val, &vlen)) {
                char num[24];
                if (vlen == 0 || vlen >= sizeof(num)) {
                    clen = UINT64_MAX;
                } else {
                    memcpy(num, val, vlen);
                    num[vlen] = '\0';
                    if (sim_parse_u64(num, 0, BE_HTTP_BODY_MAX, &clen) < 0)
                        clen = UINT64_MAX;
                }
            } else if (be_hdr_is(line, ll, "Transfer-Encoding", &val, &vlen)) {
                clen = UINT64_MAX; /* chunked bodies are not supported */
            } else if (be_hdr_is(line, ll, "Connection", &val, &vlen)) {
                if (vlen == 5 && strncasecmp(val, "close", 5) == 0)
                    close_hdr = true;
                if (vlen == 10 && strncasecmp(val, "keep-alive", 10) == 0)
                    keep = true;
            }
            line = le + 2;
        }
        if (clen == UINT64_MAX) {
            c->http_close = true;
            be_http_respond(c, 400, "", 0, "", 0, false);
            c->state = BE_DRAINING;
            return -1;
        }
        c->http_close = close_hdr || (http10 && !keep);
        if (be_http_respond(c, 200, c->in, (size_t)(sp1 - c->in), sp1 + 1, (size_t)(sp2 - sp1 - 1),
                            (size_t)(sp1 - c->in) == 4 && memcmp(c->in, "HEAD", 4) == 0) < 0) {
            c->state = BE_DRAINING; /* out of memory: stop here */
            return -1;
        }
        memmove(c->in, c->in + head_len, c->in_len - head_len);
        c->in_len -= head_len;
        c->body_left = clen;
        if (c->http_close) {
            c->state = BE_DRAINING;
            return -1;
        }
    }
}

/* Leaves PROBE for ECHO: hello, then whatever was buffered. */
static int be_start_echo(struct be_conn *c)
{
    size_t n = c->in_len;

    c->state = BE_ECHO;
    ev_timer_stop(c->ctx->loop, &c->probe);
    if (be_send_hello(c) < 0) {
        be_conn_close(c, false);
        return -1;
    }
    c->in_len = 0;
    if (n > 0 && be_echo(c, c->in, n) < 0)
        return -1;
    return 0;
}

static void be_probe_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct be_conn *c = (struct be_conn *)((char *)w - offsetof(struct be_conn, probe));

    (void)loop;
    (void)revents;
    if (c->state == BE_PROBE && be_start_echo(c) == 0)
        be_conn_flush(c);
}

static void be_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct be_conn *c = (struct be_conn *)((char *)w - offsetof(struct be_conn, rw));
    char buf[65536];
    char *dst;
    size_t room;
    ssize_t n;

    (void)loop;
    (void)revents;
    if (c->state == BE_DRAINING) {
        be_update_reading(c);
        return;
    }
    if (c->state == BE_PROBE || c->state == BE_HTTP) {
        dst = c->in + c->in_len;
        room = sizeof(c->in) - c->in_len;
        if (room == 0) { /* HTTP head full: be_http_process answered 431 */
            be_update_reading(c);
            return;
        }
    } else {
        dst = buf;
        room = sizeof(buf);
    }
    n = recv(c->fd, dst, room, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        be_conn_close(c, false);
        return;
    }
    if (n == 0) {
        c->eof = true;
        if (c->state == BE_PROBE && be_start_echo(c) < 0)
            return;
        be_update_reading(c);
        be_conn_flush(c);
        return;
    }
    if (c->state == BE_ECHO) {
        if (be_echo(c, buf, (size_t)n) < 0)
            return;
        be_conn_flush(c);
        return;
    }
    c->in_len += (size_t)n;
    if (c->state == BE_PROBE) {
        int h = be_http_probe(c->in, c->in_len);
        if (h == -1)
            return; /* the probe timer decides if no more comes */
        if (h == 0) {
            if (be_start_echo(c) == 0)
                be_conn_flush(c);
            return;
        }
        c->state = BE_HTTP;
        ev_timer_stop(c->ctx->loop, &c->probe);
    }
    /* HTTP: request bytes count for the reset/close faults too. */
    c->rx_total += (size_t)n;
    if (c->ctx->o.reset_after && c->rx_total >= c->ctx->o.reset_after) {
        c->ctx->resets++;
        be_conn_close(c, true);
        return;
    }
    be_http_process(c);
    be_conn_flush(c);
}

static void be_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct be_conn *c = (struct be_conn *)((char *)w - offsetof(struct be_conn, ww));

    (void)loop;
    (void)revents;
    be_conn_flush(c);
}

static void be_conn_close(struct be_conn *c, bool reset)
{
    struct be_ctx *ctx = c->ctx;

    ev_io_stop(ctx->loop, &c->rw);
    ev_io_stop(ctx->loop, &c->ww);
    ev_timer_stop(ctx->loop, &c->probe);
    ev_timer_stop(ctx->loop, &c->delay);
    if (reset) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    if (ctx->o.verbose)
        fprintf(stderr, "gwsim backend %s: close %s%s rx=%llu\n", ctx->o.name, c->peer,
                reset ? " (reset)" : "", (unsigned long long)c->rx_total);
    close(c->fd);
    while (c->pend_head != NULL) {
        struct be_chunk *ch = c->pend_head;
        c->pend_head = ch->next;
        free(ch);
    }
    free(c->out);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        ctx->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    ctx->n_conns--;
    free(c);
    /* an fd is free again: the connections waiting in the listen queue can come in */
    if (ctx->accept_blocked)
        be_accept_resume(ctx);
}

/* ---- accepting ------------------------------------------------------------------ */

/*
 * accept() failed for want of fds or socket memory: the connection stays in the
 * listen queue, so the listener stays readable and libev would call us again at
 * once, forever. Stop watching it until one of our connections closes or
 * BE_ACCEPT_RETRY_MS pass (another process may free fds); one line per episode.
 */
static void be_accept_block(struct be_ctx *ctx, int err)
{
    ev_io_stop(ctx->loop, &ctx->accept_w);
    ev_timer_stop(ctx->loop, &ctx->accept_retry);
    ev_timer_set(&ctx->accept_retry, BE_ACCEPT_RETRY_MS / 1000.0, 0.0);
    ev_timer_start(ctx->loop, &ctx->accept_retry);
    if (ctx->accept_blocked)
        return;
    ctx->accept_blocked = true;
    ctx->accept_blocked_since = ev_now(ctx->loop) * 1000.0;
    ctx->accept_pauses++;
    fprintf(stderr,
            "gwsim backend %s: accept: %s (%llu connections open); new connections wait in "
            "the listen queue until one closes (retrying every %.0f ms)\n",
            ctx->o.name, strerror(err), (unsigned long long)ctx->n_conns, BE_ACCEPT_RETRY_MS);
}

/* Watches the listener again; the episode ends when accept() finds the queue empty. */
static void be_accept_resume(struct be_ctx *ctx)
{
    ev_timer_stop(ctx->loop, &ctx->accept_retry);
    ev_io_start(ctx->loop, &ctx->accept_w);
}

static void be_accept_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct be_ctx *ctx = (struct be_ctx *)((char *)w - offsetof(struct be_ctx, accept_retry));

    (void)loop;
    (void)revents;
    be_accept_resume(ctx);
}

static void be_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct be_ctx *ctx = (struct be_ctx *)((char *)w - offsetof(struct be_ctx, accept_w));

    (void)revents;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        struct be_conn *c;
        int fd = accept4(ctx->tcp_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                be_accept_block(ctx, errno);
                return;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (ctx->accept_blocked) {
                    /* the queue is empty: the episode is over */
                    ctx->accept_blocked = false;
                    fprintf(stderr,
                            "gwsim backend %s: accept: listen queue drained after %.0f ms\n",
                            ctx->o.name, ev_now(loop) * 1000.0 - ctx->accept_blocked_since);
                }
                return;
            }
            continue; /* EINTR, or an error of that one connection (ECONNABORTED, ...) */
        }
        ctx->accepted++;
        if (ctx->o.max_conns && ctx->n_conns >= ctx->o.max_conns) {
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
            close(fd);
            ctx->refused_max++;
            continue;
        }
        c = calloc(1, sizeof(*c));
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->ctx = ctx;
        c->fd = fd;
        c->state = BE_PROBE;
        sim_sockaddr_format((struct sockaddr *)&ss, c->peer);
        ev_io_init(&c->rw, be_read_cb, fd, EV_READ);
        ev_io_init(&c->ww, be_write_cb, fd, EV_WRITE);
        ev_timer_init(&c->probe, be_probe_cb, BE_PROBE_MS / 1000.0, 0.0);
        ev_timer_init(&c->delay, be_delay_cb, 0.0, 0.0);
        c->next = ctx->conns;
        if (ctx->conns != NULL)
            ctx->conns->prev = c;
        ctx->conns = c;
        ctx->n_conns++;
        ev_timer_start(loop, &c->probe);
        be_update_reading(c);
        if (ctx->o.verbose)
            fprintf(stderr, "gwsim backend %s: tcp connect from %s\n", ctx->o.name, c->peer);
    }
}

/* ---- UDP ---------------------------------------------------------------------- */

static void be_udp_reply(struct be_ctx *ctx, const struct sockaddr *peer, socklen_t plen,
                         const char *data, size_t len)
{
    if (sendto(ctx->udp_fd, data, len, MSG_NOSIGNAL, peer, plen) < 0)
        ctx->udp_dropped++;
}

static void be_udp_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct be_ctx *ctx = (struct be_ctx *)((char *)w - offsetof(struct be_ctx, udp_timer));
    double now = ev_now(loop) * 1000.0;

    (void)revents;
    while (ctx->udpq_len > 0) {
        struct be_udp_item *it = &ctx->udpq[ctx->udpq_head];
        if (it->ready_at > now + 0.5) {
            ev_timer_set(w, (it->ready_at - now) / 1000.0, 0.0);
            ev_timer_start(loop, w);
            return;
        }
        be_udp_reply(ctx, (struct sockaddr *)&it->peer, it->peer_len, it->data, it->len);
        free(it->data);
        it->data = NULL;
        ctx->udpq_head = (ctx->udpq_head + 1) % BE_UDP_QUEUE;
        ctx->udpq_len--;
    }
}

static void be_udp_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct be_ctx *ctx = (struct be_ctx *)((char *)w - offsetof(struct be_ctx, udp_w));
    char *in = ctx->udp_in, *out = ctx->udp_out;

    (void)revents;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        char peer[SIM_ADDR_STRLEN];
        ssize_t n = recvfrom(ctx->udp_fd, in, sizeof(ctx->udp_in), 0, (struct sockaddr *)&ss, &sl);
        int hl;
        size_t pl;

        if (n < 0)
            return;
        ctx->datagrams++;
        sim_sockaddr_format((struct sockaddr *)&ss, peer);
        hl = snprintf(out, sizeof(ctx->udp_out), "gwsim-backend %s peer=%s\n", ctx->o.name, peer);
        pl = (size_t)n;
        if ((size_t)hl + pl > BE_UDP_MAX)
            pl = BE_UDP_MAX - (size_t)hl; /* documented: the echo is cut to fit */
        memcpy(out + hl, in, pl);
        if (ctx->o.delay_ms <= 0) {
            be_udp_reply(ctx, (struct sockaddr *)&ss, sl, out, (size_t)hl + pl);
            continue;
        }
        if (ctx->udpq_len == BE_UDP_QUEUE) {
            ctx->udp_dropped++;
            continue;
        }
        {
            struct be_udp_item *it = &ctx->udpq[(ctx->udpq_head + ctx->udpq_len) % BE_UDP_QUEUE];
            it->data = malloc((size_t)hl + pl);
            if (it->data == NULL) {
                ctx->udp_dropped++;
                continue;
            }
            memcpy(it->data, out, (size_t)hl + pl);
            it->len = (size_t)hl + pl;
            it->peer = ss;
            it->peer_len = sl;
            it->ready_at = ev_now(loop) * 1000.0 + ctx->o.delay_ms;
            ctx->udpq_len++;
            if (!ev_is_active(&ctx->udp_timer)) {
                ev_timer_set(&ctx->udp_timer, ctx->o.delay_ms / 1000.0, 0.0);
                ev_timer_start(loop, &ctx->udp_timer);
            }
        }
    }
}

/* ---- setup ------------------------------------------------------------------------ */

static int be_socket(const struct be_opts *o, int type, uint16_t port)
{
    struct sockaddr_storage ss = o->bind;
    int one = 1;
    int fd = socket(ss.ss_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -errno;
    sim_sockaddr_set_port((struct sockaddr *)&ss, port);
    if (type == SOCK_STREAM)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, o->bind_len) < 0 ||
        (type == SOCK_STREAM && listen(fd, 1024) < 0)) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

static uint16_t be_bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);

    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
        return 0;
    return sim_sockaddr_port((struct sockaddr *)&ss);
}

/* Opens the sockets on one port number; with port 0, retries until the
 * kernel's TCP pick is also free for UDP. */
static int be_open(struct be_ctx *ctx)
{
    const struct be_opts *o = &ctx->o;
    int tries = o->port == 0 ? 50 : 1;
    int rc = 0;

    for (int i = 0; i < tries; i++) {
        uint16_t port = o->port;
        ctx->tcp_fd = ctx->udp_fd = -1;
        if (o->tcp) {
            rc = be_socket(o, SOCK_STREAM, port);
            if (rc < 0)
                return rc;
            ctx->tcp_fd = rc;
            port = be_bound_port(ctx->tcp_fd);
        }
        if (o->udp) {
            rc = be_socket(o, SOCK_DGRAM, port);
            if (rc < 0) {
                if (ctx->tcp_fd >= 0)
                    close(ctx->tcp_fd);
                ctx->tcp_fd = -1;
                if (rc == -EADDRINUSE && o->port == 0)
                    continue;
                return rc;
            }
            ctx->udp_fd = rc;
        }
        return 0;
    }
    return rc;
}

static void be_signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

int sim_backend_main(int argc, char **argv)
{
    struct be_ctx *ctx = calloc(1, sizeof(*ctx));
    int rc;

    if (ctx == NULL)
        return 1;
    rc = be_parse(ctx, argc, argv);
    if (rc >= 0) {
        free(ctx);
        return rc;
    }
    signal(SIGPIPE, SIG_IGN);
    rc = be_open(ctx);
    if (rc < 0) {
        fprintf(stderr, "gwsim backend: cannot listen on port %u: %s\n", ctx->o.port,
                strerror(-rc));
        free(ctx);
        return 1;
    }
    ctx->loop = ev_default_loop(EVFLAG_AUTO);
    if (ctx->tcp_fd >= 0) {
        ev_io_init(&ctx->accept_w, be_accept_cb, ctx->tcp_fd, EV_READ);
        ev_io_start(ctx->loop, &ctx->accept_w);
    }
    if (ctx->udp_fd >= 0) {
        ev_io_init(&ctx->udp_w, be_udp_cb, ctx->udp_fd, EV_READ);
        ev_io_start(ctx->loop, &ctx->udp_w);
    }
    ev_timer_init(&ctx->accept_retry, be_accept_retry_cb, 0.0, 0.0);
    ev_timer_init(&ctx->udp_timer, be_udp_timer_cb, 0.0, 0.0);
    ev_signal_init(&ctx->sigterm_w, be_signal_cb, SIGTERM);
    ev_signal_init(&ctx->sigint_w, be_signal_cb, SIGINT);
    ev_signal_start(ctx->loop, &ctx->sigterm_w);
    ev_signal_start(ctx->loop, &ctx->sigint_w);

    printf("listening");
    if (ctx->tcp_fd >= 0)
        printf(" tcp=%u", be_bound_port(ctx->tcp_fd));
    if (ctx->udp_fd >= 0)
        printf(" udp=%u", be_bound_port(ctx->udp_fd));
    printf("\n");
    fflush(stdout);

    ev_run(ctx->loop, 0);

    ctx->accept_blocked = false; /* closing everything below must not re-arm accepts */
    while (ctx->conns != NULL)
        be_conn_close(ctx->conns, false);
    for (size_t i = 0; i < ctx->udpq_len; i++)
        free(ctx->udpq[(ctx->udpq_head + i) % BE_UDP_QUEUE].data);
    if (ctx->tcp_fd >= 0)
        close(ctx->tcp_fd);
    if (ctx->udp_fd >= 0)
        close(ctx->udp_fd);
    fprintf(stderr,
            "gwsim backend %s: exit: tcp accepted=%llu refused_max_conns=%llu resets=%llu "
            "early_closes=%llu accept_pauses=%llu http_requests=%llu echo_bytes=%llu "
            "udp datagrams=%llu dropped=%llu\n",
            ctx->o.name, (unsigned long long)ctx->accepted, (unsigned long long)ctx->refused_max,
            (unsigned long long)ctx->resets, (unsigned long long)ctx->early_closes,
            (unsigned long long)ctx->accept_pauses,
            (unsigned long long)ctx->http_requests, (unsigned long long)ctx->echo_bytes,
            (unsigned long long)ctx->datagrams, (unsigned long long)ctx->udp_dropped);
    ev_loop_destroy(ctx->loop);
    free(ctx);
    return 0;
}
