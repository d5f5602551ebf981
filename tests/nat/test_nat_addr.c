/* test_nat_addr.c - addresses, prefixes and the enum name tables. */
#include "tests/nat/nat_test_util.h"

Test(nat_addr, parse_format_v4)
{
    struct nat_addr a;
    char buf[NAT_ADDR_STRLEN];

    cr_assert_eq(nat_addr_parse(&a, "10.1.2.3"), 0);
    cr_assert(nat_addr_is_v4(&a));
    cr_assert_str_eq(nat_addr_format(&a, buf), "10.1.2.3");
    cr_assert_eq(a.b[10], 0xff);
    cr_assert_eq(a.b[11], 0xff);
    cr_assert_eq(a.b[12], 10);
    cr_assert_eq(a.b[15], 3);
}

Test(nat_addr, parse_format_v6)
{
    struct nat_addr a;
    char buf[NAT_ADDR_STRLEN];

    cr_assert_eq(nat_addr_parse(&a, "2001:DB8::1"), 0);
    cr_assert_not(nat_addr_is_v4(&a));
    cr_assert_str_eq(nat_addr_format(&a, buf), "2001:db8::1");
    cr_assert_eq(nat_addr_parse(&a, "::1"), 0);
    cr_assert_str_eq(nat_addr_format(&a, buf), "::1");
    /* an IPv4-mapped IPv6 text is the same key as the IPv4 address */
    cr_assert_eq(nat_addr_parse(&a, "::ffff:192.0.2.9"), 0);
    cr_assert(nat_addr_is_v4(&a));
    cr_assert_str_eq(nat_addr_format(&a, buf), "192.0.2.9");
    cr_assert_eq(nat_addr_parse(&a, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), 0);
    cr_assert_str_eq(nat_addr_format(&a, buf), "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
}

Test(nat_addr, from_v4)
{
    struct nat_addr a = nat_addr_from_v4(__builtin_bswap32(0x7f000001)), b = A("127.0.0.1");

    cr_assert_eq(memcmp(&a, &b, sizeof(a)), 0);
}

Test(nat_addr, parse_bad_input_leaves_out_untouched)
{
    static const char *bad[] = {"",          "1.2.3",      "1.2.3.4.5", "256.1.1.1", "1.2.3.4 ",
                                " 1.2.3.4",  "1.2.3.-4",   "::1::2",    "gggg::1",   "1.2.3.4/8",
                                "localhost", "0x7f.0.0.1", "12345::",   ":::"};
    struct nat_addr a, keep;

    memset(&keep, 0xab, sizeof(keep));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        a = keep;
        cr_assert_eq(nat_addr_parse(&a, bad[i]), -1, "accepted '%s'", bad[i]);
        cr_assert_eq(memcmp(&a, &keep, sizeof(a)), 0);
    }
    cr_assert_eq(nat_addr_parse(&a, NULL), -1);
}

Test(nat_addr, prefix_parse)
{
    struct nat_addr net;
    uint8_t plen;
    char buf[NAT_ADDR_STRLEN];

    cr_assert_eq(nat_prefix_parse(&net, &plen, "10.1.2.3/8"), 0);
    cr_assert_eq(plen, 96 + 8);
    cr_assert_str_eq(nat_addr_format(&net, buf), "10.0.0.0");
    cr_assert_eq(nat_prefix_parse(&net, &plen, "192.0.2.7"), 0);
    cr_assert_eq(plen, 128);
    cr_assert_eq(nat_prefix_parse(&net, &plen, "192.0.2.7/32"), 0);
    cr_assert_eq(plen, 128);
    cr_assert_eq(nat_prefix_parse(&net, &plen, "0.0.0.0/0"), 0);
    cr_assert_eq(plen, 96);
    cr_assert_eq(nat_prefix_parse(&net, &plen, "2001:db8:ff00::/32"), 0);
    cr_assert_eq(plen, 32);
    cr_assert_str_eq(nat_addr_format(&net, buf), "2001:db8::");
    cr_assert_eq(nat_prefix_parse(&net, &plen, "::/0"), 0);
    cr_assert_eq(plen, 0);
    cr_assert_eq(nat_prefix_parse(&net, &plen, "10.0.0.0/13"), 0);
    cr_assert_eq(plen, 109);
}

Test(nat_addr, prefix_parse_bad)
{
    static const char *bad[] = {"10.0.0.0/33", "10.0.0.0/", "/8",      "10.0.0.0/-1",
                                "10.0.0.0/8x", "::/129",    "::/1000", "10.0.0/8",
                                "10.0.0.0/ 8", "",          "a/8",     "10.0.0.0/8/8"};
    struct nat_addr net;
    uint8_t plen;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(nat_prefix_parse(&net, &plen, bad[i]), -1, "accepted '%s'", bad[i]);
    cr_assert_eq(nat_prefix_parse(&net, &plen, NULL), -1);
}

Test(nat_addr, in_prefix)
{
    struct nat_addr net, a = A("10.9.8.7"), b = A("11.0.0.1"), v6 = A("2001:db8::5");
    uint8_t plen;

    cr_assert_eq(nat_prefix_parse(&net, &plen, "10.0.0.0/8"), 0);
    cr_assert(nat_addr_in_prefix(&a, &net, plen));
    cr_assert_not(nat_addr_in_prefix(&b, &net, plen));
    cr_assert_not(nat_addr_in_prefix(&v6, &net, plen));
    cr_assert(nat_addr_in_prefix(&v6, &net, 0));
    cr_assert_eq(nat_prefix_parse(&net, &plen, "10.9.8.0/29"), 0);
    cr_assert(nat_addr_in_prefix(&a, &net, plen));
    b = A("10.9.8.8");
    cr_assert_not(nat_addr_in_prefix(&b, &net, plen));
    cr_assert_eq(nat_prefix_parse(&net, &plen, "0.0.0.0/0"), 0);
    cr_assert(nat_addr_in_prefix(&a, &net, plen));
    cr_assert_not(nat_addr_in_prefix(&v6, &net, plen));
    cr_assert_eq(nat_prefix_parse(&net, &plen, "2001:db8::/32"), 0);
    cr_assert(nat_addr_in_prefix(&v6, &net, plen));
    cr_assert_not(nat_addr_in_prefix(&a, &net, plen));
    cr_assert(nat_addr_in_prefix(&v6, &v6, 128));
}

Test(nat_names, round_trips)
{
    cr_assert_str_eq(nat_proto_name(NAT_PROTO_TCP), "tcp");
    cr_assert_str_eq(nat_proto_name(NAT_PROTO_UDP), "udp");
    cr_assert_null(nat_proto_name(1));
    for (int i = 0; i < NAT_STATE_COUNT; i++)
        cr_assert_eq(nat_state_parse(nat_state_name(i)), i);
    cr_assert_str_eq(nat_state_name(NAT_STATE_ESTABLISHED), "established");
    cr_assert_eq(nat_state_parse("bogus"), -1);
    cr_assert_eq(nat_state_parse(NULL), -1);
    for (int i = 0; i <= NAT_POLICY_BLOCK; i++)
        cr_assert_eq(nat_policy_parse(nat_policy_name(i)), i);
    cr_assert_eq(nat_policy_parse("Random"), -1);
    for (int i = 0; i <= NAT_MAPPING_APDM; i++)
        cr_assert_eq(nat_mapping_parse(nat_mapping_name(i)), i);
    cr_assert_eq(nat_mapping_parse("eif"), -1);
    cr_assert_str_eq(nat_err_name(NAT_ERR_POOL_EXHAUSTED), "pool_exhausted");
    cr_assert_str_eq(nat_err_name(NAT_ERR_CLIENT_QUOTA), "client_quota");
    cr_assert_str_eq(nat_err_name(NAT_ERR_TABLE_FULL), "table_full");
    cr_assert_str_eq(nat_err_name(NAT_ERR_EXISTS), "exists");
    cr_assert_str_eq(nat_err_name(NAT_ERR_INVAL), "invalid");
    cr_assert_str_eq(nat_err_name(NAT_ERR_NOMEM), "no_memory");
    for (int i = 0; i < NAT_ERR_COUNT; i++)
        cr_assert(strlen(nat_strerror(i)) > 0);
    cr_assert_str_eq(nat_event_name(NAT_EV_OPEN), "open");
    cr_assert_str_eq(nat_event_name(NAT_EV_CLOSE), "close");
    cr_assert_str_eq(nat_event_name(NAT_EV_EXPIRE), "expire");
    cr_assert_str_eq(nat_event_name(NAT_EV_REFUSE), "refuse");
    cr_assert_str_eq(nat_event_name(NAT_EV_REPICK), "repick");
}
