/*
 * gwctl_fmt.c - gwctl's text output: units, tables, stats, backends, events.
 */
#include "gateway/gwctl_fmt.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/gw_ctlproto.h"

char *ctl_fmt_bytes(uint64_t v, char *buf, size_t len)
{
    static const char units[] = "KMGTPE";
    double d = (double)v;
    int u = -1;

    if (v < 1024) {
        snprintf(buf, len, "%" PRIu64, v);
        return buf;
    }
    while (d >= 1024 && u < 5) {
        d /= 1024;
        u++;
    }
    /* 9.96K would print as "10.0K": keep it to one form per magnitude */
    if (d < 9.95)
        snprintf(buf, len, "%.1f%c", d, units[u]);
    else
        snprintf(buf, len, "%.0f%c", d, units[u]);
    return buf;
}

char *ctl_fmt_duration(uint64_t ms, char *buf, size_t len)
{
    uint64_t s = ms / 1000;

    if (s < 60)
        snprintf(buf, len, "%" PRIu64 "s", s);
    else if (s < 3600)
        snprintf(buf, len, "%" PRIu64 "m%" PRIu64 "s", s / 60, s % 60);
    else if (s < 86400)
        snprintf(buf, len, "%" PRIu64 "h%" PRIu64 "m", s / 3600, s % 3600 / 60);
    else
        snprintf(buf, len, "%" PRIu64 "d%" PRIu64 "h", s / 86400, s % 86400 / 3600);
    return buf;
}

char *ctl_fmt_endpoint(const char *ip, unsigned port, char *buf, size_t len)
{
    if (strchr(ip, ':'))
        snprintf(buf, len, "[%s]:%u", ip, port);
    else
        snprintf(buf, len, "%s:%u", ip, port);
    return buf;
}

/* ---- tables --------------------------------------------------------------- */

void ctl_table_init(struct ctl_table *t, size_t ncols, const char *const *head, const bool *right)
{
    memset(t, 0, sizeof(*t));
    t->ncols = ncols;
    t->head = head;
    t->right = right;
}

int ctl_table_add(struct ctl_table *t, const char *const *cells)
{
    if (t->nrows == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        char **nc = realloc(t->cells, cap * t->ncols * sizeof(*nc));
        if (!nc)
            return -ENOMEM;
        t->cells = nc;
        t->cap = cap;
    }
    for (size_t i = 0; i < t->ncols; i++) {
        char *s = strdup(cells[i] ? cells[i] : "");
        if (!s) {
            for (size_t k = 0; k < i; k++)
                free(t->cells[t->nrows * t->ncols + k]);
            return -ENOMEM;
        }
        t->cells[t->nrows * t->ncols + i] = s;
    }
    t->nrows++;
    return 0;
}

static void print_cell(FILE *out, const char *s, size_t width, bool right, bool last)
{
    size_t n = strlen(s);

    if (right)
        fprintf(out, "%*s%s", (int)(width - n), "", s);
    else if (last)
        fputs(s, out);
    else
        fprintf(out, "%s%*s", s, (int)(width - n), "");
}

void ctl_table_print(const struct ctl_table *t, FILE *out)
{
    size_t w[32] = {0};
    size_t nc = t->ncols < 32 ? t->ncols : 32;

    for (size_t c = 0; c < nc; c++)
        w[c] = strlen(t->head[c]);
    for (size_t r = 0; r < t->nrows; r++)
        for (size_t c = 0; c < nc; c++) {
            size_t n = strlen(t->cells[r * t->ncols + c]);
            if (n > w[c])
                w[c] = n;
        }
    for (size_t c = 0; c < nc; c++) {
        if (c)
            fputs("  ", out);
        print_cell(out, t->head[c], w[c], t->right && t->right[c], c == nc - 1);
    }
    fputc('\n', out);
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t c = 0; c < nc; c++) {
            if (c)
                fputs("  ", out);
            print_cell(out, t->cells[r * t->ncols + c], w[c], t->right && t->right[c], c == nc - 1);
        }
        fputc('\n', out);
    }
}

void ctl_table_free(struct ctl_table *t)
{
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    t->cells = NULL;
    t->nrows = t->cap = 0;
}

/* ---- the NAT table -------------------------------------------------------- */

static const char *const nat_head[] = {"PROTO", "CLIENT", "NAT", "BACKEND", "STATE",
                                       "AGE",   "IDLE",   "IN",  "OUT"};
static const bool nat_right[] = {false, false, false, false, false, true, true, true, true};

void ctl_nat_table_init(struct ctl_table *t)
{
    ctl_table_init(t, 9, nat_head, nat_right);
}

int ctl_nat_table_add(struct ctl_table *t, const struct ctl_session_view *s, uint64_t now_ms)
{
    char client[80], nat[80], bend[160], ep[80], age[32], idle[32], in[16], out[16];
    const char *cells[9];
    uint64_t end = s->closed_ms ? s->closed_ms : now_ms;

    ctl_fmt_endpoint(s->client_ip, s->client_port, client, sizeof(client));
    ctl_fmt_endpoint(s->nat_ip, s->nat_port, nat, sizeof(nat));
    ctl_fmt_endpoint(s->backend_ip, s->backend_port, ep, sizeof(ep));
    if (s->backend && *s->backend)
        snprintf(bend, sizeof(bend), "%s/%s", s->backend, ep);
    else
        snprintf(bend, sizeof(bend), "%s", ep);
    ctl_fmt_duration(end > s->opened_ms ? end - s->opened_ms : 0, age, sizeof(age));
    if (s->closed_ms)
        strcpy(idle, "-");
    else
        ctl_fmt_duration(now_ms > s->last_ms ? now_ms - s->last_ms : 0, idle, sizeof(idle));
    cells[0] = s->proto;
    cells[1] = client;
    cells[2] = nat;
    cells[3] = bend;
    cells[4] = s->state;
    cells[5] = age;
    cells[6] = idle;
    cells[7] = ctl_fmt_bytes(s->bytes_in, in, sizeof(in));
    cells[8] = ctl_fmt_bytes(s->bytes_out, out, sizeof(out));
    return ctl_table_add(t, cells);
}

static const char *jstr(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);

    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int juint(const json_t *o, const char *key, uint64_t *out)
{
    const json_t *v = json_object_get(o, key);

    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

/* 0 for a missing/null/unparsable time. */
static uint64_t jtime(const json_t *o, const char *key)
{
    const char *s = jstr(o, key);
    uint64_t ms;

    if (!s || ctl_time_parse(s, &ms) < 0)
        return 0;
    return ms;
}

int ctl_session_view_from_json(struct ctl_session_view *v, const json_t *obj)
{
    uint64_t cp, np, bp;

    memset(v, 0, sizeof(*v));
    v->proto = jstr(obj, "proto");
    v->client_ip = jstr(obj, "client_ip");
    v->nat_ip = jstr(obj, "nat_ip");
    v->backend = jstr(obj, "backend");
    v->backend_ip = jstr(obj, "backend_ip");
    v->state = jstr(obj, "state");
    if (!v->proto || !v->client_ip || !v->nat_ip || !v->backend_ip || !v->state ||
        juint(obj, "client_port", &cp) || juint(obj, "nat_port", &np) ||
        juint(obj, "backend_port", &bp) || juint(obj, "bytes_in", &v->bytes_in) ||
        juint(obj, "bytes_out", &v->bytes_out))
        return -1;
    if (!v->backend)
        v->backend = "";
    v->client_port = (unsigned)cp;
    v->nat_port = (unsigned)np;
    v->backend_port = (unsigned)bp;
    v->opened_ms = jtime(obj, "opened_at");
    v->last_ms = jtime(obj, "last_seen");
    v->closed_ms = jtime(obj, "closed_at");
    return 0;
}

void ctl_nat_footer(FILE *out, uint64_t shown, uint64_t total)
{
    if (shown < total)
        fprintf(out, "%" PRIu64 " of %" PRIu64 " sessions\n", shown, total);
    else
        fprintf(out, "%" PRIu64 " session%s\n", shown, shown == 1 ? "" : "s");
}

/* ---- stats ---------------------------------------------------------------- */

static uint64_t jget(const json_t *o, const char *path)
{
    char key[64];
    const char *dot;
    const json_t *v = o;

    while ((dot = strchr(path, '.'))) {
        size_t n = (size_t)(dot - path);
        if (n >= sizeof(key))
            return 0;
        memcpy(key, path, n);
        key[n] = '\0';
        v = json_object_get(v, key);
        path = dot + 1;
    }
    v = json_object_get(v, path);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

static void print_states(FILE *out, const char *proto, const json_t *states)
{
    const char *key;
    json_t *v;
    uint64_t sum = 0;
    bool first = true;

    json_object_foreach((json_t *)(uintptr_t)states, key, v) sum +=
        json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
    fprintf(out, "%s %" PRIu64 " (", proto, sum);
    json_object_foreach((json_t *)(uintptr_t)states, key, v)
    {
        fprintf(out, "%s%s %" JSON_INTEGER_FORMAT, first ? "" : ", ", key,
                json_is_integer(v) ? json_integer_value(v) : 0);
        first = false;
    }
    fputc(')', out);
}

static void print_percent(FILE *out, uint64_t part, uint64_t whole)
{
    if (whole)
        fprintf(out, " (%.1f%%)", 100.0 * (double)part / (double)whole);
}

void ctl_print_stats(FILE *out, const json_t *st)
{
    const json_t *flows = json_object_get(st, "flows"), *map = json_object_get(st, "mappings");
    const json_t *pool = json_object_get(st, "pool"), *store = json_object_get(st, "store");
    const json_t *ref = json_object_get(map, "refused"), *v, *e;
    char b1[32], b2[32];
    const char *key;
    uint64_t refused = 0;
    size_t i;

    fprintf(out, "%-10s %s (since %s)\n", "uptime",
            ctl_fmt_duration(jget(st, "uptime_s") * 1000, b1, sizeof(b1)),
            jstr(st, "started_at") ? jstr(st, "started_at") : "?");
    fprintf(out, "%-10s %" PRIu64 " live: ", "flows", jget(flows, "live"));
    print_states(out, "tcp", json_object_get(flows, "tcp"));
    fputs(", ", out);
    print_states(out, "udp", json_object_get(flows, "udp"));
    fputc('\n', out);
    json_object_foreach((json_t *)(uintptr_t)ref, key, v) refused +=
        json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
    fprintf(out,
            "%-10s opened %" PRIu64 ", closed %" PRIu64 ", expired %" PRIu64 ", refused %" PRIu64,
            "mappings", jget(map, "opened"), jget(map, "closed"), jget(map, "expired"), refused);
    if (refused) {
        bool first = true;
        fputs(" (", out);
        json_object_foreach((json_t *)(uintptr_t)ref, key, v)
        {
            if (json_is_integer(v) && json_integer_value(v) > 0) {
                fprintf(out, "%s%s %" JSON_INTEGER_FORMAT, first ? "" : ", ", key,
                        json_integer_value(v));
                first = false;
            }
        }
        fputc(')', out);
    }
    fputc('\n', out);
    fprintf(out, "%-10s %s/%s ports %s: %" PRIu64 " of %" PRIu64 " in use", "pool",
            jstr(pool, "policy") ? jstr(pool, "policy") : "?",
            jstr(pool, "mapping") ? jstr(pool, "mapping") : "?",
            jstr(pool, "ports") ? jstr(pool, "ports") : "?", jget(pool, "ports_in_use"),
            jget(pool, "ports_total"));
    print_percent(out, jget(pool, "ports_in_use"), jget(pool, "ports_total"));
    fprintf(out, ", %" PRIu64 " cooling", jget(pool, "ports_cooling"));
    if (jstr(pool, "policy") && strcmp(jstr(pool, "policy"), "block") == 0)
        fprintf(out, "; %" PRIu64 " blocks taken, %" PRIu64 " of them held empty",
                jget(pool, "blocks_in_use"), jget(pool, "blocks_held"));
    fputc('\n', out);
    json_array_foreach(json_object_get(pool, "by_ip"), i, e)
    {
        fprintf(out, "%-10s %s: %" PRIu64 " of %" PRIu64, "", jstr(e, "ip") ? jstr(e, "ip") : "?",
                jget(e, "in_use"), jget(e, "ports"));
        print_percent(out, jget(e, "in_use"), jget(e, "ports"));
        fputc('\n', out);
    }
    fprintf(out,
            "%-10s in %s, out %s; udp datagrams in %" PRIu64 ", out %" PRIu64 ", dropped %" PRIu64
            "\n",
            "traffic", ctl_fmt_bytes(jget(st, "traffic.bytes_in"), b1, sizeof(b1)),
            ctl_fmt_bytes(jget(st, "traffic.bytes_out"), b2, sizeof(b2)),
            jget(st, "traffic.udp_datagrams_in"), jget(st, "traffic.udp_datagrams_out"),
            jget(st, "traffic.udp_dropped"));
    v = json_object_get(st, "loop");
    if (json_is_object(v)) {
        uint64_t passes = jget(v, "passes");
        fprintf(out, "%-10s %" PRIu64 " passes, %.1f readiness reports per pass, %" PRIu64
                " epoll_ctl, %" PRIu64 " watch errors\n",
                "loop", passes, passes ? (double)jget(v, "reports") / (double)passes : 0.0,
                jget(v, "epoll_ctl"), jget(v, "watch_errors"));
    }
    if (json_is_object(store)) {
        bool degraded = json_is_true(json_object_get(store, "degraded"));
        fprintf(out,
                "%-10s queue %" PRIu64 "/%" PRIu64 ", written %" PRIu64 ", dropped %" PRIu64 ", %s",
                "store", jget(store, "queue_depth"), jget(store, "queue_capacity"),
                jget(store, "written"), jget(store, "dropped"), degraded ? "DEGRADED" : "ok");
        if (degraded && jstr(store, "last_error"))
            fprintf(out, ": %s", jstr(store, "last_error"));
        fputc('\n', out);
    } else {
        fprintf(out, "%-10s none\n", "store");
    }
    json_array_foreach(json_object_get(st, "backends"), i, e)
    {
        fprintf(out,
                "%-10s %s %s: %" PRIu64 " of %" PRIu64 " servers available, %" PRIu64 " flows\n",
                i ? "" : "backends", jstr(e, "name") ? jstr(e, "name") : "?",
                jstr(e, "proto") ? jstr(e, "proto") : "?", jget(e, "servers_available"),
                jget(e, "servers"), jget(e, "flows"));
    }
    v = json_object_get(st, "control");
    if (json_is_object(v)) {
        uint64_t errs = 0;
        json_t *x;
        json_object_foreach(json_object_get(v, "errors"), key, x) errs +=
            json_is_integer(x) ? (uint64_t)json_integer_value(x) : 0;
        fprintf(out,
                "%-10s %" PRIu64 " clients, %" PRIu64 " subscribers, %" PRIu64 " requests, %" PRIu64
                " errors\n",
                "control", jget(v, "clients"), jget(v, "subscribers"), jget(v, "requests"), errs);
    }
}

/* ---- backends ------------------------------------------------------------- */

static const char *const be_head[] = {"BACKEND", "PROTO",  "BALANCE", "SERVER", "ADDRESS",
                                      "STATE",   "WEIGHT", "CONNS",   "TOTAL",  "FAILS"};
static const bool be_right[] = {false, false, false, false, false, false, true, true, true, true};

void ctl_print_backends(FILE *out, const json_t *result)
{
    struct ctl_table t;
    const json_t *b, *s;
    size_t i, k;

    ctl_table_init(&t, 10, be_head, be_right);
    json_array_foreach(json_object_get(result, "backends"), i, b)
    {
        json_array_foreach(json_object_get(b, "servers"), k, s)
        {
            char w[24], c[24], tot[24], f[24];
            const char *cells[10] = {jstr(b, "name"),
                                     jstr(b, "proto"),
                                     jstr(b, "balance"),
                                     jstr(s, "name"),
                                     jstr(s, "address"),
                                     jstr(s, "state"),
                                     w,
                                     c,
                                     tot,
                                     f};
            snprintf(w, sizeof(w), "%" PRIu64, jget(s, "weight"));
            snprintf(c, sizeof(c), "%" PRIu64, jget(s, "conns"));
            snprintf(tot, sizeof(tot), "%" PRIu64, jget(s, "total_conns"));
            snprintf(f, sizeof(f), "%" PRIu64, jget(s, "connect_failures"));
            if (ctl_table_add(&t, cells) < 0)
                break;
        }
    }
    ctl_table_print(&t, out);
    ctl_table_free(&t);
}

/* ---- show blocks ------------------------------------------------------------ */

static const char *const blk_head[] = {"CLIENT", "NAT", "SESSIONS", "HELD"};
static const bool blk_right[] = {false, false, true, false};

void ctl_print_blocks(FILE *out, const json_t *result)
{
    struct ctl_table t;
    const json_t *b;
    size_t i, shown = json_array_size(json_object_get(result, "blocks"));
    uint64_t total = jget(result, "total");
    const char *policy = jstr(result, "policy");

    ctl_table_init(&t, 4, blk_head, blk_right);
    json_array_foreach(json_object_get(result, "blocks"), i, b)
    {
        char nat[96], ses[24], held[48], d[24];
        const json_t *left = json_object_get(b, "hold_left_ms");
        ctl_fmt_endpoint(jstr(b, "nat_ip") ? jstr(b, "nat_ip") : "?", (uint16_t)jget(b, "nat_port"),
                         nat, sizeof(nat));
        size_t len = strlen(nat);
        snprintf(nat + len, sizeof(nat) - len, "-%" PRIu64, jget(b, "nat_port_last"));
        snprintf(ses, sizeof(ses), "%" PRIu64, jget(b, "sessions"));
        if (json_is_integer(left))
            snprintf(held, sizeof(held), "%s left",
                     ctl_fmt_duration((uint64_t)json_integer_value(left), d, sizeof(d)));
        else
            snprintf(held, sizeof(held), "-");
        const char *cells[4] = {jstr(b, "client_ip") ? jstr(b, "client_ip") : "?", nat, ses, held};
        if (ctl_table_add(&t, cells) < 0)
            break;
    }
    ctl_table_print(&t, out);
    ctl_table_free(&t);
    if (policy && strcmp(policy, "block") != 0)
        fprintf(out, "0 blocks: the NAT policy is %s, not block\n", policy);
    else if (shown < total)
        fprintf(out, "%zu of %" PRIu64 " blocks of %" PRIu64 " ports\n", shown, total,
                jget(result, "block_size"));
    else
        fprintf(out, "%" PRIu64 " block%s of %" PRIu64 " ports\n", total, total == 1 ? "" : "s",
                jget(result, "block_size"));
}

/* ---- events --------------------------------------------------------------- */

int ctl_print_event(FILE *out, const json_t *ev)
{
    const char *type = jstr(ev, "event"), *t = jstr(ev, "time"), *reason = jstr(ev, "reason");
    const json_t *s = json_object_get(ev, "session");
    const char *proto, *cip, *bip, *nip, *bname;
    char client[80], nat[80], bend[80], in[16], o[16];
    uint64_t cp = 0, np = 0, bp = 0, bi = 0, bo = 0;

    if (!type || !t)
        return -1;
    if (strcmp(type, "health") == 0) {
        fprintf(out, "%s health %s/%s %s -> %s (%s)\n", t,
                jstr(ev, "backend") ? jstr(ev, "backend") : "?",
                jstr(ev, "server") ? jstr(ev, "server") : "?",
                jstr(ev, "old_state") ? jstr(ev, "old_state") : "?",
                jstr(ev, "new_state") ? jstr(ev, "new_state") : "?",
                jstr(ev, "why") ? jstr(ev, "why") : "");
        return 0;
    }
    if (strncmp(type, "block_", 6) == 0) {
        const json_t *b = json_object_get(ev, "block");
        uint64_t lo = 0, hi = 0;

        cip = jstr(b, "client_ip");
        nip = jstr(b, "nat_ip");
        if (!cip || !nip || juint(b, "nat_port", &lo) < 0 || juint(b, "nat_port_last", &hi) < 0)
            return -1;
        fprintf(out, "%s %s %s -> %s-%u\n", t, type, cip,
                ctl_fmt_endpoint(nip, (unsigned)lo, nat, sizeof(nat)), (unsigned)hi);
        return 0;
    }
    proto = jstr(s, "proto");
    cip = jstr(s, "client_ip");
    bip = jstr(s, "backend_ip");
    nip = jstr(s, "nat_ip");
    bname = jstr(s, "backend");
    if (!proto || !cip || !bip)
        return -1;
    juint(s, "client_port", &cp);
    juint(s, "backend_port", &bp);
    ctl_fmt_endpoint(cip, (unsigned)cp, client, sizeof(client));
    ctl_fmt_endpoint(bip, (unsigned)bp, bend, sizeof(bend));
    fprintf(out, "%s %-6s %s %s -> ", t, type, proto, client);
    if (nip) {
        juint(s, "nat_port", &np);
        fprintf(out, "%s -> ", ctl_fmt_endpoint(nip, (unsigned)np, nat, sizeof(nat)));
    }
    if (bname && *bname)
        fprintf(out, "%s/", bname);
    fputs(bend, out);
    if (reason)
        fprintf(out, " %s", reason);
    if (strcmp(type, "close") == 0 || strcmp(type, "expire") == 0) {
        juint(s, "bytes_in", &bi);
        juint(s, "bytes_out", &bo);
        fprintf(out, " in %s out %s", ctl_fmt_bytes(bi, in, sizeof(in)),
                ctl_fmt_bytes(bo, o, sizeof(o)));
    }
    fputc('\n', out);
    return 0;
}
