/*
 * gw_config_test.c - the JSON config: defaults, every section, errors that
 * name the JSON path, unknown keys refused, flags over the file, and the
 * config back as JSON parsing to the same thing.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "gateway/gwd.h"

static char err[512];

static struct gw_config *parse_ok(const char *text)
{
    struct gw_config *cfg = NULL;
    int rc = gw_config_parse(text, &cfg, err, sizeof(err));
    cr_assert_eq(rc, 0, "parse failed: %s", err);
    return cfg;
}

static void parse_bad(const char *text, const char *want)
{
    struct gw_config *cfg = NULL;
    int rc = gw_config_parse(text, &cfg, err, sizeof(err));
    cr_assert_lt(rc, 0, "accepted: %s", text);
    cr_assert_null(cfg);
    cr_assert(strstr(err, want) != NULL, "error \"%s\" lacks \"%s\"", err, want);
}

#define MIN_BACKEND                                                                                \
    "\"backends\":[{\"name\":\"web\",\"proto\":\"tcp\",\"servers\":[\"127.0.0.1:8080\"]}]"

Test(gw_config, minimal_gets_the_defaults)
{
    struct gw_config *cfg = parse_ok("{" MIN_BACKEND "}");
    char ip[NAT_ADDR_STRLEN];

    cr_assert_eq(cfg->port, 80);
    cr_assert_eq(cfg->n_binds, 2); /* 0.0.0.0 and :: */
    cr_assert_eq(cfg->nat.port_lo, 20000);
    cr_assert_eq(cfg->nat.port_hi, 32767);
    cr_assert_eq(cfg->nat.policy, NAT_POLICY_RANDOM);
    cr_assert_eq(cfg->nat.mapping, NAT_MAPPING_EIM);
    cr_assert_eq(cfg->nat.timeout_ms[NAT_TIMEOUT_UDP], 300000);
    cr_assert_eq(cfg->nat.timeout_ms[NAT_TIMEOUT_TCP_ESTABLISHED], 7440000);
    cr_assert_eq(cfg->nat.timeout_ms[NAT_TIMEOUT_TCP_TRANSITORY], 240000);
    cr_assert_eq(cfg->nat.n_ips, 1);
    cr_assert_str_eq(nat_addr_format(&cfg->nat.ips[0], ip), "127.0.0.1"); /* loopback backends */
    cr_assert_eq(cfg->n_routes, 1);
    cr_assert_eq(cfg->routes[0].match.proto, NAT_PROTO_TCP);
    cr_assert_str_eq(cfg->routes[0].backend, "web");
    cr_assert_eq(cfg->backends[0].n_servers, 1);
    cr_assert_str_eq(cfg->backends[0].servers[0].name, "127.0.0.1:8080");
    cr_assert_eq(cfg->backends[0].health.enabled, true);
    cr_assert_eq(cfg->backends[0].servers[0].weight, 1);
    gw_config_free(cfg);
}

Test(gw_config, full_file)
{
    struct gw_config *cfg = parse_ok(
        "{\"listen\":{\"port\":8080,\"bind\":[\"127.0.0.1\",\"::1\"],\"backlog\":64},"
        "\"nat\":{\"policy\":\"block\",\"log\":\"blocks\",\"block_hold\":2.5,"
        "\"mapping\":\"apdm\",\"ips\":[\"127.0.0.1\",\"127.0.0.2\"],"
        "\"ports\":\"20000-20999\",\"timeouts\":{\"udp\":30,\"tcp_established\":600,"
        "\"tcp_transitory\":0.5},\"per_client_limit\":10,\"block_size\":32,"
        "\"max_blocks_per_client\":2,\"reuse_delay\":0,\"max_sessions\":1000,\"seed\":7},"
        "\"backends\":[{\"name\":\"web\",\"proto\":\"tcp\",\"balance\":\"leastconn\","
        "\"servers\":[{\"address\":\"127.0.0.1:8080\",\"name\":\"a\",\"weight\":3,\"max_conns\":5},"
        "\"127.0.0.1:8081\"],\"health\":{\"interval\":0.5,\"timeout\":0.2,\"rise\":1,\"fall\":2},"
        "\"proxy_protocol\":\"v2\",\"connect_timeout\":1.5},"
        "{\"name\":\"dns\",\"proto\":\"udp\",\"balance\":\"source\",\"servers\":[\"127.0.0.1:"
        "5353\"],"
        "\"health\":{\"send\":\"ping\",\"expect\":\"pong\"}}],"
        "\"routes\":[{\"proto\":\"udp\",\"backend\":\"dns\"},{\"proto\":\"tcp\",\"backend\":"
        "\"web\"}],"
        "\"timeouts\":{\"connect\":2,\"drain\":3},\"limits\":{\"max_flows\":100,\"buffer\":4096},"
        "\"db\":\":memory:\",\"control\":\"/tmp/"
        "x.sock\",\"user\":\"nobody\",\"log_level\":\"debug\"}");
    cr_assert_eq(cfg->port, 8080);
    cr_assert_eq(cfg->n_binds, 2);
    cr_assert_eq(cfg->backlog, 64);
    cr_assert_eq(cfg->nat.policy, NAT_POLICY_BLOCK);
    cr_assert(cfg->nat_log_blocks);
    cr_assert_eq(cfg->nat.block_hold_ms, 2500);
    cr_assert_eq(cfg->nat.mapping, NAT_MAPPING_APDM);
    cr_assert_eq(cfg->nat.n_ips, 2);
    cr_assert_eq(cfg->nat.timeout_ms[NAT_TIMEOUT_TCP_TRANSITORY], 500);
    cr_assert_eq(cfg->nat.block_size, 32);
    cr_assert_eq(cfg->nat.max_sessions, 1000);
    cr_assert_eq(cfg->nat.seed, 7);
    cr_assert_eq(cfg->backends[0].balance, GW_BALANCE_LEASTCONN);
    cr_assert_str_eq(cfg->backends[0].servers[0].name, "a");
    cr_assert_eq(cfg->backends[0].servers[0].weight, 3);
    cr_assert_eq(cfg->backends[0].servers[0].max_conns, 5);
    cr_assert_eq(cfg->backends[0].health.interval_ms, 500);
    cr_assert_eq(cfg->backends[0].proxy_protocol, 2);
    cr_assert_eq(cfg->backends[0].connect_timeout_ms, 1500);
    cr_assert_eq(cfg->backends[1].health.enabled, true);
    cr_assert_eq(cfg->backends[1].health.send_len, 4);
    cr_assert_str_eq(cfg->backends[1].health.expect, "pong");
    cr_assert_eq(cfg->n_routes, 2);
    cr_assert_eq(cfg->connect_timeout_ms, 2000);
    cr_assert_eq(cfg->drain_timeout_ms, 3000);
    cr_assert_eq(cfg->max_flows, 100);
    cr_assert_eq(cfg->buffer_size, 4096);
    cr_assert_str_eq(cfg->db_path, ":memory:");
    cr_assert_str_eq(cfg->user, "nobody");
    cr_assert_eq(cfg->log_level, GW_LOG_DEBUG);

    /* Back to JSON and parsed again: the same configuration. */
    json_t *j = gw_config_to_json(cfg);
    cr_assert_not_null(j);
    char *text = json_dumps(j, JSON_COMPACT);
    struct gw_config *again = parse_ok(text);
    json_t *j2 = gw_config_to_json(again);
    cr_assert(json_equal(j, j2), "round trip differs: %s", text);
    free(text);
    json_decref(j);
    json_decref(j2);
    gw_config_free(again);
    gw_config_free(cfg);
}

Test(gw_config, errors_name_the_json_path)
{
    parse_bad("{\"backends\":[{\"name\":\"web\",\"proto\":\"tcp\",\"servers\":[\"nope\"]}]}",
              "backends[0].servers[0]: \"nope\" is not HOST:PORT");
    parse_bad("{\"backends\":[{\"name\":\"web\",\"proto\":\"tcp\",\"servers\":[{\"address\":"
              "\"127.0.0.1:1\",\"weight\":0}]}]}",
              "backends[0].servers[0].weight: must be between 1 and 256");
    parse_bad("{" MIN_BACKEND ",\"nat\":{\"ports\":\"30000-20000\"}}", "nat.ports:");
    parse_bad("{" MIN_BACKEND ",\"nat\":{\"policy\":\"fastest\"}}",
              "nat.policy: unknown policy \"fastest\"");
    parse_bad("{" MIN_BACKEND ",\"nat\":{\"log\":\"sessions\"}}",
              "nat.log: unknown log \"sessions\" (flows, blocks)");
    parse_bad("{" MIN_BACKEND ",\"nat\":{\"log\":\"blocks\"}}",
              "nat.log: \"blocks\" needs nat.policy \"block\" (policy is \"random\")");
    parse_bad("{" MIN_BACKEND ",\"nat\":{\"timeouts\":{\"udp\":-1}}}", "nat.timeouts.udp:");
    parse_bad("{" MIN_BACKEND ",\"routes\":[{\"proto\":\"tcp\",\"backend\":\"nope\"}]}",
              "routes[0].backend: no backend named \"nope\"");
    parse_bad("{" MIN_BACKEND ",\"routes\":[{\"proto\":\"udp\",\"backend\":\"web\"}]}",
              "routes[0].backend: backend \"web\" is tcp, the route is udp");
    parse_bad("{\"backends\":[{\"name\":\"a\",\"proto\":\"sctp\",\"servers\":[\"127.0.0.1:1\"]}]}",
              "backends[0].proto: must be \"tcp\" or \"udp\"");
    parse_bad("{\"backends\":[{\"name\":\"a\",\"proto\":\"tcp\",\"servers\":[]}]}",
              "backends[0].servers: must be a non-empty array");
    parse_bad("{\"backends\":[{\"name\":\"a\",\"proto\":\"tcp\",\"servers\":[\"127.0.0.1:1\"]},"
              "{\"name\":\"a\",\"proto\":\"udp\",\"servers\":[\"127.0.0.1:1\"]}]}",
              "backends[1]: a second backend named \"a\"");
    parse_bad("{}", "backends: no backend");
    parse_bad("[]", "must be a JSON object");
    parse_bad("{" MIN_BACKEND ",\"listen\":{\"port\":70000}}",
              "listen.port: must be between 0 and 65535");
    parse_bad("{" MIN_BACKEND ",\"listen\":{\"port\":20500}}", "holds the listening port 20500");
    parse_bad("{" MIN_BACKEND ",\"log_level\":\"loud\"}", "log_level:");
    parse_bad("{\"backends\":[{\"name\":\"u\",\"proto\":\"udp\",\"servers\":[\"127.0.0.1:1\"],"
              "\"proxy_protocol\":\"v1\"}]}",
              "backends[0].proxy_protocol: only TCP pools");
    parse_bad("{\"backends\":", "(config):1:");
    parse_bad("{\"a\":1,\"a\":2}", "(config):1:"); /* duplicate keys */
}

Test(gw_config, unknown_keys_are_errors)
{
    parse_bad("{" MIN_BACKEND ",\"colour\":\"blue\"}", "colour: unknown key");
    parse_bad("{" MIN_BACKEND ",\"nat\":{\"port\":\"1-2\"}}", "nat.port: unknown key");
    parse_bad("{" MIN_BACKEND ",\"nat\":{\"timeouts\":{\"tcp\":1}}}",
              "nat.timeouts.tcp: unknown key");
    parse_bad("{\"backends\":[{\"name\":\"web\",\"proto\":\"tcp\",\"server\":[]}]}",
              "backends[0].server: unknown key");
    parse_bad("{\"backends\":[{\"name\":\"web\",\"proto\":\"tcp\",\"servers\":[{\"address\":"
              "\"127.0.0.1:1\",\"wieght\":2}]}]}",
              "backends[0].servers[0].wieght: unknown key");
}

Test(gw_config, flags_override_and_add_pools)
{
    struct gw_cli cli;
    struct gw_config *cfg = NULL;
    char path[] = "/tmp/gw_config_test-XXXXXX";
    int fd = mkstemp(path);
    const char *text =
        "{\"listen\":{\"port\":8080}," MIN_BACKEND ",\"nat\":{\"ports\":\"20000-20099\"}}";

    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    memset(&cli, 0, sizeof(cli));
    cli.config_file = path;
    cli.port = "9090";
    cli.tcp_backends[cli.n_tcp_backends++] = "web=127.0.0.1:9001";
    cli.tcp_backends[cli.n_tcp_backends++] = "web=127.0.0.1:9002";
    cli.udp_backends[cli.n_udp_backends++] = "127.0.0.1:5353";
    cli.nat_ports = "21000-21099";
    cli.nat_policy = "sequential";
    cli.db = "none";
    int rc = gw_config_load(&cli, &cfg, err, sizeof(err));
    unlink(path);
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert_eq(cfg->port, 9090);
    cr_assert_eq(cfg->nat.port_lo, 21000);
    cr_assert_eq(cfg->nat.policy, NAT_POLICY_SEQUENTIAL);
    cr_assert_null(cfg->db_path);
    const struct gw_backend_conf *web = gw_config_backend(cfg, "web");
    cr_assert_not_null(web);
    cr_assert_eq(web->n_servers, 2); /* the flags replaced the file's server */
    cr_assert_str_eq(web->servers[0].name, "127.0.0.1:9001");
    const struct gw_backend_conf *udp = gw_config_backend(cfg, "udp");
    cr_assert_not_null(udp);
    cr_assert_eq(udp->proto, NAT_PROTO_UDP);
    cr_assert_eq(cfg->n_routes, 2);
    gw_config_free(cfg);

    memset(&cli, 0, sizeof(cli));
    cli.tcp_backends[cli.n_tcp_backends++] = "127.0.0.1";
    cr_assert_lt(gw_config_load(&cli, &cfg, err, sizeof(err)), 0);
    cr_assert(strstr(err, "--tcp-backend") != NULL, "%s", err);
    cli.tcp_backends[0] = "127.0.0.1:80";
    cli.nat_ports = "5-1";
    cr_assert_lt(gw_config_load(&cli, &cfg, err, sizeof(err)), 0);
    cr_assert(strstr(err, "--nat-ports") != NULL, "%s", err);

    /* A pool name from a flag goes into JSON replies and the store: UTF-8
     * only, as the file's names (which jansson checks) are. */
    memset(&cli, 0, sizeof(cli));
    cli.db = "none";
    cli.tcp_backends[cli.n_tcp_backends++] = "w\xff"
                                             "b=127.0.0.1:80";
    cr_assert_lt(gw_config_load(&cli, &cfg, err, sizeof(err)), 0);
    cr_assert(strstr(err, "bad pool name") != NULL, "%s", err);
    cli.tcp_backends[0] = "w\x7f"
                          "b=127.0.0.1:80";
    cr_assert_lt(gw_config_load(&cli, &cfg, err, sizeof(err)), 0);
    cli.tcp_backends[0] = "w\xc3\xa9" /* "wéb" */
                          "b=127.0.0.1:80";
    cr_assert_eq(gw_config_load(&cli, &cfg, err, sizeof(err)), 0, "%s", err);
    cr_assert_not_null(gw_config_backend(cfg, "w\xc3\xa9"
                                              "b"));
    gw_config_free(cfg);
}

Test(gw_config, addresses)
{
    struct gw_sockaddr a;
    char buf[80];

    cr_assert_eq(gw_sockaddr_parse(&a, "127.0.0.1:80"), 0);
    cr_assert_str_eq(gw_sockaddr_format(&a, buf, sizeof(buf)), "127.0.0.1:80");
    cr_assert_eq(gw_sockaddr_parse(&a, "[::1]:8080"), 0);
    cr_assert_str_eq(gw_sockaddr_format(&a, buf, sizeof(buf)), "[::1]:8080");
    cr_assert_eq(gw_sockaddr_parse(&a, "localhost:1"), 0);
    cr_assert_eq(gw_sockaddr_parse(&a, "::1:80"), -EINVAL);
    cr_assert_eq(gw_sockaddr_parse(&a, "1.2.3.4:"), -EINVAL);
    cr_assert_eq(gw_sockaddr_parse(&a, "1.2.3.4:65536"), -EINVAL);
    cr_assert_eq(gw_sockaddr_parse(&a, "1.2.3.4:-1"), -EINVAL);
    cr_assert_eq(gw_sockaddr_parse(&a, "[::1]80"), -EINVAL);

    struct nat_endpoint ep;
    cr_assert_eq(gw_sockaddr_parse(&a, "10.1.2.3:4567"), 0);
    gw_endpoint_from_sockaddr(&ep, (struct sockaddr *)&a.ss);
    cr_assert_eq(ep.port, 4567);
    cr_assert(nat_addr_is_v4(&ep.addr));
    struct gw_sockaddr back;
    gw_sockaddr_from_endpoint(&back, &ep);
    cr_assert_str_eq(gw_sockaddr_format(&back, buf, sizeof(buf)), "10.1.2.3:4567");
}

/* Every prefix of a valid config and every one-byte corruption of it is
 * either refused with a message or accepted; nothing crashes or leaks. */
Test(gw_config, partial_and_corrupted_input)
{
    const char *good =
        "{\"listen\":{\"port\":8080,\"bind\":[\"127.0.0.1\"]},\"nat\":{\"ports\":\"20000-20999\","
        "\"timeouts\":{\"udp\":30}},\"backends\":[{\"name\":\"web\",\"proto\":\"tcp\",\"servers\":"
        "[{\"address\":\"127.0.0.1:8080\",\"weight\":2}],\"health\":{\"interval\":1}}],"
        "\"routes\":[{\"proto\":\"tcp\",\"backend\":\"web\"}],\"limits\":{\"buffer\":4096}}";
    size_t len = strlen(good);
    char buf[1024];
    struct gw_config *cfg;
    int accepted = 0;

    for (size_t n = 0; n < len; n++) {
        memcpy(buf, good, n);
        buf[n] = '\0';
        cfg = NULL;
        cr_assert_lt(gw_config_parse(buf, &cfg, err, sizeof(err)), 0, "prefix %zu accepted", n);
        cr_assert_null(cfg);
        cr_assert_neq(err[0], '\0');
    }
    static const char junk[] = "{}[]\",:0-9a\\ \x01\xff";
    for (size_t i = 0; i < len; i++) {
        for (size_t j = 0; j < sizeof(junk) - 1; j++) {
            memcpy(buf, good, len + 1);
            buf[i] = junk[j];
            cfg = NULL;
            if (gw_config_parse(buf, &cfg, err, sizeof(err)) == 0) {
                accepted++;
                gw_config_free(cfg);
            } else {
                cr_assert_neq(err[0], '\0');
            }
        }
    }
    cr_assert_gt(accepted, 0); /* e.g. a digit changed in a port */
    cfg = NULL;
    cr_assert_eq(gw_config_parse(good, &cfg, err, sizeof(err)), 0, "%s", err);
    gw_config_free(cfg);
}

/* Pools may mix IPv4 and IPv6 servers: the default NAT addresses are one per
 * family present, and an explicit nat.ips must cover every server's family. */
Test(gw_config, mixed_families)
{
    char ip[NAT_ADDR_STRLEN];
    struct gw_config *cfg = parse_ok(
        "{\"backends\":[{\"name\":\"web\",\"proto\":\"tcp\",\"servers\":[\"[::1]:8080\","
        "\"127.0.0.1:8081\"]},{\"name\":\"dns\",\"proto\":\"udp\",\"servers\":[\"[::1]:53\"]}]}");
    cr_assert_eq(cfg->nat.n_ips, 2);
    cr_assert_str_eq(nat_addr_format(&cfg->nat.ips[0], ip), "127.0.0.1");
    cr_assert_str_eq(nat_addr_format(&cfg->nat.ips[1], ip), "::1");
    gw_config_free(cfg);

    cfg = parse_ok("{\"backends\":[{\"name\":\"web\",\"proto\":\"tcp\",\"servers\":["
                   "\"[::1]:8080\"]}]}");
    cr_assert_eq(cfg->nat.n_ips, 1);
    cr_assert_str_eq(nat_addr_format(&cfg->nat.ips[0], ip), "::1");
    gw_config_free(cfg);

    cfg = parse_ok("{\"nat\":{\"ips\":[\"::1\",\"127.0.0.2\",\"127.0.0.1\"]},\"backends\":[{"
                   "\"name\":\"web\",\"proto\":\"tcp\",\"servers\":[\"[::1]:8080\","
                   "\"127.0.0.1:8081\"]}]}");
    cr_assert_eq(cfg->nat.n_ips, 3);
    gw_config_free(cfg);

    parse_bad("{\"nat\":{\"ips\":[\"127.0.0.1\"]},\"backends\":[{\"name\":\"web\",\"proto\":"
              "\"tcp\",\"servers\":[\"127.0.0.1:8081\",\"[::1]:8080\"]}]}",
              "backends[0].servers[1]: [::1]:8080 is IPv6 and nat.ips has no IPv6 address");
    parse_bad("{\"nat\":{\"ips\":[\"::1\"]},\"backends\":[{\"name\":\"web\",\"proto\":"
              "\"tcp\",\"servers\":[\"[::1]:8080\"]},{\"name\":\"d\",\"proto\":\"udp\","
              "\"servers\":[\"127.0.0.1:53\"]}]}",
              "backends[1].servers[0]: 127.0.0.1:53 is IPv4 and nat.ips has no IPv4 address");
}
