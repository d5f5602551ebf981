/*
 * nat_test_util.h - helpers shared by the libnat tests: address and key
 * builders, and an event recorder that keeps every event it is given.
 */
#ifndef GW_TESTS_NAT_TEST_UTIL_H
#define GW_TESTS_NAT_TEST_UTIL_H

#include "nat/nat.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline struct nat_addr A(const char *s) {
    struct nat_addr a;

    cr_assert_eq(nat_addr_parse(&a, s), 0, "bad address %s", s);
    return a;
}

static inline struct nat_endpoint
EP(const char *s, uint16_t port) {
    struct nat_endpoint e;

    memset(&e, 0, sizeof(e));
    e.addr = A(s);
    e.port = port;
    return e;
}

static inline struct nat_key
KEY(uint8_t proto, const char *c, uint16_t cport, const char *d, uint16_t dport) {
    struct nat_key k;

    memset(&k, 0, sizeof(k));
    k.proto = proto;
    k.client = EP(c, cport);
    k.dst = EP(d, dport);
    return k;
}

#define REC_MAX 4096

struct rec {
    size_t n;
    size_t by_type[NAT_EV_COUNT];
    struct nat_event ev[REC_MAX];
};

static inline void rec_cb(void *arg, const struct nat_event *ev)
{
    struct rec *r = arg;

    r->by_type[ev->type]++;
    r->ev[r->n % REC_MAX] = *ev; /* a ring: the last REC_MAX events */
    r->n++;
}

/* A table on `cfg` with a recorder attached (r may be NULL). */
static inline struct nat_table *mk(const struct nat_config *cfg, struct rec *r)
{
    struct nat_table *t = NULL;

    cr_assert_eq(nat_table_new(&t, cfg), NAT_OK);
    if (r != NULL) {
        memset(r, 0, sizeof(*r));
        nat_table_set_event_cb(t, rec_cb, r);
    }
    return t;
}

/* A small one-IP config: ports lo..hi, given policy and mapping, no delay. */
static inline struct nat_config small_cfg(enum nat_policy p, enum nat_mapping m, uint16_t lo,
                                          uint16_t hi)
{
    struct nat_config c;

    nat_config_default(&c);
    c.policy = p;
    c.mapping = m;
    c.port_lo = lo;
    c.port_hi = hi;
    c.reuse_delay_ms = 0;
    c.seed = 42;
    return c;
}

static inline struct nat_session *open_ok(struct nat_table *t, const struct nat_key *k,
                                          uint64_t now)
{
    struct nat_session *s = NULL;
    enum nat_err e = nat_session_open(t, k, 7, now, &s);

    cr_assert_eq(e, NAT_OK, "open failed: %s", nat_err_name(e));
    cr_assert_not_null(s);
    return s;
}

#endif
