/*
 * nat_addr.c - libnat addresses: IPv4/IPv6 text forms, prefixes, and the
 * name tables of the enums in nat.h. Pure functions; inet_pton/inet_ntop
 * are the only libc parsers used.
 */
#include "nat/nat.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

struct nat_addr nat_addr_from_v4(uint32_t be_addr)
{
    struct nat_addr a;

    memcpy(a.b, v4_mapped_prefix, 12);
    memcpy(a.b + 12, &be_addr, 4);
    return a;
}

bool nat_addr_is_v4(const struct nat_addr *a)
{
    return memcmp(a->b, v4_mapped_prefix, 12) == 0;
}

int nat_addr_parse(struct nat_addr *out, const char *s)
{
    struct in_addr a4;
    struct nat_addr a;

    if (s == NULL)
        return -1;
    if (inet_pton(AF_INET, s, &a4) == 1) {
        *out = nat_addr_from_v4(a4.s_addr);
        return 0;
    }
    if (inet_pton(AF_INET6, s, a.b) == 1) {
        *out = a;
        return 0;
    }
    return -1;
}

char *nat_addr_format(const struct nat_addr *a, char *buf)
{
    if (nat_addr_is_v4(a)) {
        /* By hand: the store formats every address it writes, and this is
         * several times cheaper than inet_ntop. */
        char *p = buf;
        for (int i = 12; i < 16; i++) {
            unsigned v = a->b[i];
            if (v >= 100)
                *p++ = (char)('0' + v / 100);
            if (v >= 10)
                *p++ = (char)('0' + v / 10 % 10);
            *p++ = (char)('0' + v % 10);
            *p++ = i < 15 ? '.' : '\0';
        }
        return buf;
    }
    if (inet_ntop(AF_INET6, a->b, buf, NAT_ADDR_STRLEN) == NULL) /* cannot fail with this size */
        buf[0] = '\0';
    return buf;
}

/* Parses a decimal prefix length of 1..3 digits, no sign, no spaces. */
static int parse_len(const char *s, unsigned max, unsigned *out)
{
    unsigned v = 0;
    size_t n = strlen(s);

    if (n == 0 || n > 3)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

int nat_prefix_parse(struct nat_addr *net, uint8_t *plen, const char *s)
{
    char buf[NAT_ADDR_STRLEN + 8];
    const char *slash;
    struct nat_addr a;
    unsigned len;
    size_t alen;

    if (s == NULL)
        return -1;
    slash = strchr(s, '/');
    alen = slash != NULL ? (size_t)(slash - s) : strlen(s);
    if (alen == 0 || alen >= NAT_ADDR_STRLEN)
        return -1;
    memcpy(buf, s, alen);
    buf[alen] = '\0';
    if (nat_addr_parse(&a, buf) != 0)
        return -1;
    if (slash == NULL) {
        len = 128;
    } else {
        unsigned max = nat_addr_is_v4(&a) ? 32 : 128;

        if (parse_len(slash + 1, max, &len) != 0)
            return -1;
        if (nat_addr_is_v4(&a))
            len += 96;
    }
    /* clear the host bits so the network prints canonically */
    for (unsigned i = 0; i < 16; i++) {
        unsigned bit = i * 8;

        if (bit >= len)
            a.b[i] = 0;
        else if (bit + 8 > len)
            a.b[i] &= (uint8_t)(0xff00u >> (len - bit));
    }
    *net = a;
    *plen = (uint8_t)len;
    return 0;
}

bool nat_addr_in_prefix(const struct nat_addr *a, const struct nat_addr *net, uint8_t plen)
{
    unsigned full = plen / 8, rest = plen % 8;

    if (plen > 128)
        return false;
    if (memcmp(a->b, net->b, full) != 0)
        return false;
    if (rest == 0)
        return true;
    return ((a->b[full] ^ net->b[full]) & (uint8_t)(0xff00u >> rest)) == 0;
}

/* ---- names -------------------------------------------------------------- */

static int name_index(const char *const *names, int n, const char *name)
{
    if (name == NULL)
        return -1;
    for (int i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0)
            return i;
    return -1;
}

const char *nat_proto_name(uint8_t proto)
{
    switch (proto) {
    case NAT_PROTO_TCP:
        return "tcp";
    case NAT_PROTO_UDP:
        return "udp";
    default:
        return NULL;
    }
}

static const char *const state_names[NAT_STATE_COUNT] = {"new", "established", "closing", "closed"};

const char *nat_state_name(enum nat_state st)
{
    return (unsigned)st < NAT_STATE_COUNT ? state_names[st] : "unknown";
}

int nat_state_parse(const char *name)
{
    return name_index(state_names, NAT_STATE_COUNT, name);
}

static const char *const policy_names[] = {"sequential", "random", "preserve", "block"};
static const char *const mapping_names[] = {"eim", "adm", "apdm"};

const char *nat_policy_name(enum nat_policy p)
{
    return (unsigned)p < 4 ? policy_names[p] : "unknown";
}

int nat_policy_parse(const char *name)
{
    return name_index(policy_names, 4, name);
}

const char *nat_mapping_name(enum nat_mapping m)
{
    return (unsigned)m < 3 ? mapping_names[m] : "unknown";
}

int nat_mapping_parse(const char *name)
{
    return name_index(mapping_names, 3, name);
}

static const char *const err_names[NAT_ERR_COUNT] = {
    "ok", "pool_exhausted", "client_quota", "table_full", "exists", "invalid", "no_memory",
};
static const char *const err_texts[NAT_ERR_COUNT] = {
    "success",
    "no free external port for this flow",
    "the client has reached its limit of mappings",
    "the session table is full",
    "a session with this inside key already exists",
    "invalid argument or configuration",
    "out of memory",
};

const char *nat_err_name(enum nat_err e)
{
    return (unsigned)e < NAT_ERR_COUNT ? err_names[e] : "unknown";
}

const char *nat_strerror(enum nat_err e)
{
    return (unsigned)e < NAT_ERR_COUNT ? err_texts[e] : "unknown error";
}

static const char *const event_names[NAT_EV_COUNT] = {
    "open", "close", "expire", "refuse", "repick", "block_alloc", "block_free"};

const char *nat_event_name(enum nat_event_type t)
{
    return (unsigned)t < NAT_EV_COUNT ? event_names[t] : "unknown";
}
