/*
 * fuzz_nat_table.c - libFuzzer target for the session table: the input is a
 * configuration and a sequence of operations (open, close, touch, state,
 * expire, repick, flush, reconfigure). After each one the table must still be
 * consistent: every live session (tracked through events) is found by both
 * lookups, no two share an outside key, and the counters agree with the
 * events (block events included: a block freed was allocated, and as many
 * are held as the stats say). Small pools, so exhaustion, cooling and busy
 * ports are common.
 */
#include "nat/nat.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAXLIVE 512

struct state {
    struct nat_session *live[MAXLIVE];
    size_t n;
    uint64_t opens, ends;
    uint32_t held[3][16]; /* block events: blocks held, by nat ip and first port */
    uint64_t blocks;
};

static void check(int ok)
{
    if (!ok)
        abort();
}

static void on_event(void *arg, const struct nat_event *ev)
{
    struct state *st = arg;

    if (ev->type == NAT_EV_BLOCK_ALLOC || ev->type == NAT_EV_BLOCK_FREE) {
        uint32_t *h = &st->held[ev->s.ip_index % 3][(ev->s.ext.port - 40000) % 16];

        check(ev->s.id == 0 && ev->port_last >= ev->s.ext.port);
        check(ev->type == NAT_EV_BLOCK_ALLOC ? (*h)++ == 0 : (*h)-- == 1);
        st->blocks += ev->type == NAT_EV_BLOCK_ALLOC ? 1 : (uint64_t)-1;
        return;
    }
    if (ev->type == NAT_EV_OPEN) {
        check(st->n < MAXLIVE);
        st->opens++;
        return;
    }
    if (ev->type != NAT_EV_CLOSE && ev->type != NAT_EV_EXPIRE)
        return;
    st->ends++;
    for (size_t i = 0; i < st->n; i++) {
        if (st->live[i]->id == ev->s.id) {
            st->live[i] = st->live[--st->n];
            return;
        }
    }
    abort(); /* an end for a session never opened */
}

struct input {
    const uint8_t *p;
    size_t left;
};

static uint8_t byte(struct input *in)
{
    if (in->left == 0)
        return 0;
    in->left--;
    return *in->p++;
}

static struct nat_addr addr(unsigned i)
{
    static const char *const names[] = {"10.0.0.1",  "10.0.0.2",  "2001:db8::1",
                                        "192.0.2.1", "192.0.2.2", "2001:db8:ffff::2"};
    struct nat_addr a;

    check(nat_addr_parse(&a, names[i % 6]) == 0);
    return a;
}

/* What nat_blocks_each lists: each block once, held ones with no session. */
struct listed {
    struct nat_table *t;
    uint64_t blocks, held;
};

static int on_block(void *arg, const struct nat_block_info *b)
{
    struct listed *l = arg;
    const struct nat_config *c = nat_table_config(l->t);

    check(b->port_lo >= c->port_lo && b->port_last <= c->port_hi);
    check(b->port_last - b->port_lo + 1u == c->block_size);
    check((b->port_lo - c->port_lo) % c->block_size == 0);
    check(!b->held || b->sessions == 0);
    check(nat_client_sessions(l->t, &b->client) == b->sessions);
    l->blocks++;
    l->held += b->held;
    return 0;
}

static void verify(struct nat_table *t, struct state *st)
{
    struct nat_stats s;
    struct listed l = {t, 0, 0};

    nat_get_stats(t, &s);
    check(s.live == st->n);
    check(s.opened == st->opens);
    check(s.closed + s.expired == st->ends);
    check(s.ports_in_use <= 2 * s.ports_total);
    check(s.blocks_in_use == st->blocks);
    check(s.blocks_held <= s.blocks_in_use);
    check(nat_blocks_each(t, on_block, &l) == s.blocks_in_use);
    check(l.blocks == s.blocks_in_use && l.held == s.blocks_held);
    for (size_t i = 0; i < st->n; i++) {
        struct nat_session *x = st->live[i];

        check(nat_lookup_inside(t, &x->key) == x);
        check(nat_lookup_outside(t, x->key.proto, &x->ext, &x->key.dst) == x);
        check(x->ext.port >= nat_table_config(t)->port_lo);
        check(x->ext.port <= nat_table_config(t)->port_hi);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct input in = {data, size};
    struct nat_config c;
    struct nat_table *t;
    struct state st;
    uint64_t now = 0;
    uint8_t b;

    memset(&st, 0, sizeof(st));
    nat_config_default(&c);
    b = byte(&in);
    c.policy = b % 4;
    c.mapping = (b / 4) % 3;
    c.n_ips = 1 + (b / 12) % 3;
    c.ips[0] = addr(3);
    c.ips[1] = addr(5);
    c.ips[2] = addr(4);
    c.port_lo = 40000;
    c.port_hi = (uint16_t)(40000 + byte(&in) % 16);
    c.block_size = 1 + byte(&in) % 4;
    if (c.block_size > (unsigned)(c.port_hi - c.port_lo + 1))
        c.block_size = 1;
    c.max_blocks_per_client = byte(&in) % 3;
    c.reuse_delay_ms = (uint32_t)byte(&in) * 10;
    c.per_client_limit = byte(&in) % 6;
    c.max_sessions = byte(&in) % 40;
    c.timeout_ms[NAT_TIMEOUT_UDP] = 100 + byte(&in) * 10u;
    c.timeout_ms[NAT_TIMEOUT_TCP_ESTABLISHED] = 100 + byte(&in) * 20u;
    c.timeout_ms[NAT_TIMEOUT_TCP_TRANSITORY] = 50 + byte(&in) * 5u;
    c.seed = byte(&in);
    c.block_hold_ms = (uint32_t)(byte(&in) % 4) * 200;
    if (nat_table_new(&t, &c) != NAT_OK)
        return 0;
    nat_table_set_event_cb(t, on_event, &st);
    while (in.left > 0) {
        uint8_t op = byte(&in), arg = byte(&in);
        struct nat_session *x = st.n ? st.live[arg % st.n] : NULL;

        now += byte(&in);
        switch (op % 9) {
        case 0:
        case 1: {
            struct nat_key k;
            struct nat_session *s = NULL;

            memset(&k, 0, sizeof(k));
            k.proto = arg & 1 ? NAT_PROTO_TCP : NAT_PROTO_UDP;
            k.client.addr = addr((arg >> 1) % 3);
            k.client.port = (uint16_t)(40000 + (arg >> 3) % 4);
            k.dst.addr = addr(3 + (arg >> 5) % 3);
            k.dst.port = op & 0x10 ? 80 : 443;
            if (nat_session_open(t, &k, 0, now, &s) == NAT_OK) {
                check(s != NULL);
                st.live[st.n++] = s;
            } else {
                check(s == NULL);
            }
            break;
        }
        case 2:
            if (x != NULL)
                nat_session_close(t, x, now, "client_fin");
            break;
        case 3:
            if (x != NULL)
                nat_session_touch(t, x, now, op, arg);
            break;
        case 4:
            if (x != NULL)
                nat_session_set_state(t, x, op % 5, now);
            break;
        case 5:
            nat_expire(t, now, arg % 4);
            break;
        case 6:
            if (x != NULL)
                (void)nat_session_repick(t, x, now, arg * 10u);
            break;
        case 7: {
            struct nat_filter f;

            nat_filter_init(&f);
            f.proto = arg & 1 ? NAT_PROTO_UDP : 0;
            f.nat_port_lo = arg & 2 ? 40003 : 0;
            f.state = arg & 4 ? NAT_STATE_NEW : -1;
            (void)nat_flush(t, &f, now, "flush");
            break;
        }
        default:
            c.reuse_delay_ms = arg * 10u;
            c.per_client_limit = arg % 5;
            c.max_sessions = arg % 30;
            c.block_hold_ms = (arg % 3) * 100u;
            check(nat_table_reconfigure(t, &c) == NAT_OK);
            break;
        }
        verify(t, &st);
    }
    nat_table_free(t);
    return 0;
}
