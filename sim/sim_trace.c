/*
 * sim_trace.c - the trace file parser.
 */
#include "sim/sim_trace.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "sim/sim_util.h"

#define TRACE_LINE_MAX 4096

/* Subscriber number N means 100.64.0.0 + N (RFC 6598 shared address space). */
#define TRACE_SUBSCRIBER_BASE 0x64400000u
#define TRACE_SUBSCRIBER_MAX (1u << 22)

static int parse_addr16(const char *s, uint8_t out[16])
{
    struct sockaddr_storage ss;
    socklen_t sl;

    if (sim_parse_ip(s, 0, &ss, &sl) < 0)
        return -1;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)(const void *)&ss;
        sim_addr16_v4(out, ntohl(sin->sin_addr.s_addr));
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)(const void *)&ss;
        memcpy(out, &sin6->sin6_addr, 16);
    }
    return 0;
}

enum sim_trace_rc sim_trace_parse_line(const char *line, bool first, struct sim_trace_row *row,
                                       char *err, size_t errlen)
{
    static const char *const names[5] = {"time", "client", "proto", "destination", "duration"};
    char buf[TRACE_LINE_MAX + 1];
    char *f[6];
    char *p, *hash;
    size_t n, nf = 0;
    struct sim_trace_row out;
    struct sockaddr_storage ss;
    socklen_t sl;
    uint64_t num;

    n = strlen(line);
    if (n > TRACE_LINE_MAX) {
        snprintf(err, errlen, "line longer than %d bytes", TRACE_LINE_MAX);
        return SIM_TRACE_ERROR;
    }
    memcpy(buf, line, n + 1);
    hash = strchr(buf, '#');
    if (hash != NULL)
        *hash = '\0';
    for (p = strtok(buf, ", \t\r\n"); p != NULL; p = strtok(NULL, ", \t\r\n")) {
        if (nf == 6)
            break;
        f[nf++] = p;
    }
    if (nf == 0)
        return SIM_TRACE_SKIP;
    if (first && strcmp(f[0], "time") == 0)
        return SIM_TRACE_SKIP;
    if (nf != 5) {
        snprintf(err, errlen, "%s %zu fields, expected 5 (time,client,proto,destination,duration)",
                 nf > 5 ? "more than" : "only", nf > 5 ? (size_t)5 : nf);
        return SIM_TRACE_ERROR;
    }
    memset(&out, 0, sizeof(out));
    if (sim_parse_duration_ms(f[0], &out.time_ms) < 0) {
        snprintf(err, errlen, "%s: '%.64s' is not a time (seconds, or with ms/s/m/h)", names[0],
                 f[0]);
        return SIM_TRACE_ERROR;
    }
    if (sim_parse_u64(f[1], 0, TRACE_SUBSCRIBER_MAX - 1, &num) == 0) {
        sim_addr16_v4(out.client, TRACE_SUBSCRIBER_BASE + (uint32_t)num);
    } else if (parse_addr16(f[1], out.client) < 0) {
        snprintf(err, errlen, "%s: '%.64s' is not an IP address or a subscriber number (0-%u)",
                 names[1], f[1], TRACE_SUBSCRIBER_MAX - 1);
        return SIM_TRACE_ERROR;
    }
    if (strcmp(f[2], "tcp") == 0)
        out.proto = 6;
    else if (strcmp(f[2], "udp") == 0)
        out.proto = 17;
    else {
        snprintf(err, errlen, "%s: '%.64s' is not tcp or udp", names[2], f[2]);
        return SIM_TRACE_ERROR;
    }
    if (sim_parse_sockaddr(f[3], &ss, &sl) < 0 || sim_sockaddr_port((struct sockaddr *)&ss) == 0) {
        snprintf(err, errlen, "%s: '%.64s' is not IP:PORT or [IPv6]:PORT with a port 1-65535",
                 names[3], f[3]);
        return SIM_TRACE_ERROR;
    }
    out.dst_port = sim_sockaddr_port((struct sockaddr *)&ss);
    if (ss.ss_family == AF_INET)
        sim_addr16_v4(out.dst, ntohl(((struct sockaddr_in *)(void *)&ss)->sin_addr.s_addr));
    else
        memcpy(out.dst, &((struct sockaddr_in6 *)(void *)&ss)->sin6_addr, 16);
    if (sim_parse_duration_ms(f[4], &out.duration_ms) < 0) {
        snprintf(err, errlen, "%s: '%.64s' is not a duration (seconds, or with ms/s/m/h)", names[4],
                 f[4]);
        return SIM_TRACE_ERROR;
    }
    *row = out;
    return SIM_TRACE_ROW;
}

void sim_trace_reader_init(struct sim_trace_reader *r, FILE *f)
{
    memset(r, 0, sizeof(*r));
    r->f = f;
}

int sim_trace_next(struct sim_trace_reader *r, struct sim_trace_row *row, char *err, size_t errlen)
{
    char msg[256];

    for (;;) {
        ssize_t n = getline(&r->buf, &r->cap, r->f);
        enum sim_trace_rc rc;

        if (n < 0) {
            if (ferror(r->f)) {
                snprintf(err, errlen, "line %lu: read error: %s", r->line + 1, strerror(errno));
                return -EIO;
            }
            return 0;
        }
        r->line++;
        if (n > TRACE_LINE_MAX) {
            snprintf(err, errlen, "line %lu: longer than %d bytes", r->line, TRACE_LINE_MAX);
            return -EINVAL;
        }
        rc = sim_trace_parse_line(r->buf, !r->seen_row, row, msg, sizeof(msg));
        if (rc == SIM_TRACE_ERROR) {
            snprintf(err, errlen, "line %lu: %s", r->line, msg);
            return -EINVAL;
        }
        if (rc == SIM_TRACE_SKIP) {
            /* a header counts as the first line */
            char *p = r->buf + strspn(r->buf, " \t");
            if (strncmp(p, "time", 4) == 0)
                r->seen_row = true;
            continue;
        }
        if (r->seen_row && row->time_ms < r->last_time_ms) {
            snprintf(err, errlen, "line %lu: time %.3f s is before the previous row's %.3f s",
                     r->line, row->time_ms / 1000.0, r->last_time_ms / 1000.0);
            return -EINVAL;
        }
        r->seen_row = true;
        r->last_time_ms = row->time_ms;
        return 1;
    }
}

void sim_trace_reader_free(struct sim_trace_reader *r)
{
    free(r->buf);
    r->buf = NULL;
    r->cap = 0;
}
