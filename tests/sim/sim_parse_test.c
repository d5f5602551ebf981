/*
 * sim_parse_test.c - the gwsim parsers (numbers, durations, ranges,
 * addresses, distributions, trace lines and files) with good and bad input,
 * and the statistics helpers (Erlang-B, confidence intervals).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "sim/sim_dist.h"
#include "sim/sim_trace.h"
#include "sim/sim_util.h"

Test(sim_parse, u64)
{
    uint64_t v = 7;

    cr_assert_eq(sim_parse_u64("42", 0, 100, &v), 0);
    cr_assert_eq(v, 42);
    cr_assert_eq(sim_parse_u64("101", 0, 100, &v), -ERANGE);
    cr_assert_eq(sim_parse_u64("", 0, 100, &v), -EINVAL);
    cr_assert_eq(sim_parse_u64("-1", 0, 100, &v), -EINVAL);
    cr_assert_eq(sim_parse_u64("12x", 0, 100, &v), -EINVAL);
    cr_assert_eq(sim_parse_u64(" 1", 0, 100, &v), -EINVAL);
    cr_assert_eq(sim_parse_u64("99999999999999999999999", 0, UINT64_MAX, &v), -ERANGE);
    cr_assert_eq(v, 42, "out-parameter written only on success");
}

Test(sim_parse, duration)
{
    double ms = -1;

    cr_assert_eq(sim_parse_duration_ms("250ms", &ms), 0);
    cr_assert_float_eq(ms, 250.0, 1e-9);
    cr_assert_eq(sim_parse_duration_ms("1.5", &ms), 0);
    cr_assert_float_eq(ms, 1500.0, 1e-9);
    cr_assert_eq(sim_parse_duration_ms("2m", &ms), 0);
    cr_assert_float_eq(ms, 120000.0, 1e-9);
    cr_assert_eq(sim_parse_duration_ms("1h", &ms), 0);
    cr_assert_float_eq(ms, 3600000.0, 1e-9);
    cr_assert_eq(sim_parse_duration_ms("1e3ms", &ms), 0);
    cr_assert_float_eq(ms, 1000.0, 1e-9);
    cr_assert_lt(sim_parse_duration_ms("", &ms), 0);
    cr_assert_lt(sim_parse_duration_ms("s", &ms), 0);
    cr_assert_lt(sim_parse_duration_ms("-1s", &ms), 0);
    cr_assert_lt(sim_parse_duration_ms("3 s", &ms), 0);
    cr_assert_lt(sim_parse_duration_ms("3days", &ms), 0);
    cr_assert_lt(sim_parse_duration_ms("nan", &ms), 0);
    cr_assert_lt(sim_parse_duration_ms("1e300", &ms), 0);
}

Test(sim_parse, port_range)
{
    uint16_t lo = 0, hi = 0;

    cr_assert_eq(sim_parse_port_range("26000-26009", &lo, &hi), 0);
    cr_assert_eq(lo, 26000);
    cr_assert_eq(hi, 26009);
    cr_assert_eq(sim_parse_port_range("80", &lo, &hi), 0);
    cr_assert_eq(lo, 80);
    cr_assert_eq(hi, 80);
    cr_assert_lt(sim_parse_port_range("10-5", &lo, &hi), 0);
    cr_assert_lt(sim_parse_port_range("0-5", &lo, &hi), 0);
    cr_assert_lt(sim_parse_port_range("1-65536", &lo, &hi), 0);
    cr_assert_lt(sim_parse_port_range("1-", &lo, &hi), 0);
    cr_assert_lt(sim_parse_port_range("-", &lo, &hi), 0);
    cr_assert_lt(sim_parse_port_range("a-b", &lo, &hi), 0);
}

Test(sim_parse, sockaddr)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    char buf[SIM_ADDR_STRLEN];

    cr_assert_eq(sim_parse_sockaddr("127.0.0.1:8080", &ss, &sl), 0);
    cr_assert_str_eq(sim_sockaddr_format((struct sockaddr *)&ss, buf), "127.0.0.1:8080");
    cr_assert_eq(sim_parse_sockaddr("[::1]:53", &ss, &sl), 0);
    cr_assert_str_eq(sim_sockaddr_format((struct sockaddr *)&ss, buf), "[::1]:53");
    cr_assert_eq(sim_sockaddr_port((struct sockaddr *)&ss), 53);
    cr_assert_lt(sim_parse_sockaddr("::1:53", &ss, &sl), 0);
    cr_assert_lt(sim_parse_sockaddr("127.0.0.1", &ss, &sl), 0);
    cr_assert_lt(sim_parse_sockaddr("127.0.0.1:", &ss, &sl), 0);
    cr_assert_lt(sim_parse_sockaddr("127.0.0.1:65536", &ss, &sl), 0);
    cr_assert_lt(sim_parse_sockaddr("localhost:80", &ss, &sl), 0);
    cr_assert_lt(sim_parse_sockaddr("[::1]53", &ss, &sl), 0);
    cr_assert_lt(sim_parse_sockaddr(":80", &ss, &sl), 0);
}

/* Host names resolve (through /etc/hosts: "localhost"; no DNS query leaves the
 * machine: a name with spaces is refused by the resolver before any lookup). */
Test(sim_parse, resolve_sockaddr)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    char buf[SIM_ADDR_STRLEN];
    const char *why = NULL;

    cr_assert_eq(sim_resolve_sockaddr("localhost:8080", AF_UNSPEC, &ss, &sl, &why), 0);
    cr_assert_str_eq(sim_sockaddr_format((struct sockaddr *)&ss, buf), "127.0.0.1:8080");
    cr_assert_eq(sl, sizeof(struct sockaddr_in));
    cr_assert(sim_sockaddr_is_loopback((struct sockaddr *)&ss));
    cr_assert_eq(sim_resolve_sockaddr("localhost:53", AF_INET, &ss, &sl, &why), 0);
    cr_assert_str_eq(sim_sockaddr_format((struct sockaddr *)&ss, buf), "127.0.0.1:53");
    /* numeric first, never looked up */
    cr_assert_eq(sim_resolve_sockaddr("10.1.2.3:80", AF_UNSPEC, &ss, &sl, &why), 0);
    cr_assert_str_eq(sim_sockaddr_format((struct sockaddr *)&ss, buf), "10.1.2.3:80");
    cr_assert_not(sim_sockaddr_is_loopback((struct sockaddr *)&ss));
    cr_assert_eq(sim_resolve_sockaddr("[::1]:53", AF_INET6, &ss, &sl, &why), 0);
    cr_assert_str_eq(sim_sockaddr_format((struct sockaddr *)&ss, buf), "[::1]:53");
    cr_assert(sim_sockaddr_is_loopback((struct sockaddr *)&ss));
    /* errors, each with its reason */
    cr_assert_eq(sim_resolve_sockaddr("[::1]:53", AF_INET, &ss, &sl, &why), -EAFNOSUPPORT);
    cr_assert_str_eq(why, "an IPv6 gateway needs IPv6 sources (--src)");
    cr_assert_eq(sim_resolve_sockaddr("127.0.0.1:53", AF_INET6, &ss, &sl, &why), -EAFNOSUPPORT);
    cr_assert_str_eq(why, "an IPv4 gateway needs IPv4 sources (--src)");
    cr_assert_eq(sim_resolve_sockaddr("no such host:80", AF_UNSPEC, &ss, &sl, &why), -ENOENT);
    cr_assert(why != NULL && why[0] != '\0');
    cr_assert_eq(sim_resolve_sockaddr("[localhost]:80", AF_UNSPEC, &ss, &sl, &why), -EINVAL);
    cr_assert_str_eq(why, "not a numeric IPv6 address inside the brackets");
    cr_assert_eq(sim_resolve_sockaddr("localhost", AF_UNSPEC, &ss, &sl, &why), -EINVAL);
    cr_assert_str_eq(why, "expected HOST:PORT or [IPv6]:PORT");
    cr_assert_eq(sim_resolve_sockaddr("localhost:65536", AF_UNSPEC, &ss, &sl, &why), -EINVAL);
    cr_assert_eq(sim_resolve_sockaddr("::1:53", AF_UNSPEC, &ss, &sl, &why), -EINVAL);
    cr_assert_eq(sim_resolve_sockaddr(":80", AF_UNSPEC, &ss, &sl, &why), -EINVAL);
}

Test(sim_parse, dist)
{
    struct sim_dist d;
    char err[128];

    cr_assert_eq(sim_dist_parse("exp:60s", &d, err, sizeof(err)), 0);
    cr_assert_eq(d.kind, SIM_DIST_EXP);
    cr_assert_float_eq(d.mean_ms, 60000.0, 1e-9);
    cr_assert_eq(sim_dist_parse("pareto:2s:1.2", &d, err, sizeof(err)), 0);
    cr_assert_eq(d.kind, SIM_DIST_PARETO);
    cr_assert_float_eq(d.alpha, 1.2, 1e-12);
    cr_assert_eq(sim_dist_parse("fixed:100ms", &d, err, sizeof(err)), 0);
    cr_assert_eq(d.kind, SIM_DIST_FIXED);
    cr_assert_lt(sim_dist_parse("exp", &d, err, sizeof(err)), 0);
    cr_assert_lt(sim_dist_parse("gauss:1s", &d, err, sizeof(err)), 0);
    cr_assert(strstr(err, "gauss") != NULL, "error names the bad part: %s", err);
    cr_assert_lt(sim_dist_parse("exp:0", &d, err, sizeof(err)), 0);
    cr_assert_lt(sim_dist_parse("pareto:1s:1", &d, err, sizeof(err)), 0);
    cr_assert_lt(sim_dist_parse("exp:1s:2", &d, err, sizeof(err)), 0);
}

Test(sim_stats, dist_means)
{
    struct sim_rng r;
    struct sim_dist e = {SIM_DIST_EXP, 1000, 0}, p = {SIM_DIST_PARETO, 1000, 3.0};
    double se = 0, sp = 0, minp = INFINITY;
    const int n = 200000;

    sim_rng_seed(&r, 7);
    for (int i = 0; i < n; i++) {
        double x = sim_dist_sample(&p, &r);
        se += sim_dist_sample(&e, &r);
        sp += x;
        if (x < minp)
            minp = x;
    }
    /* sd/sqrt(n) = 1000/447 = 2.2 for exp; 5 sigma. Pareto(3) sd = 577, 5 sigma = 6.5 */
    cr_assert_float_eq(se / n, 1000.0, 12.0);
    cr_assert_float_eq(sp / n, 1000.0, 7.0);
    cr_assert_geq(minp, 1000.0 * 2.0 / 3.0, "Pareto never goes under its scale x_m");
}

Test(sim_stats, rng_is_deterministic)
{
    struct sim_rng a, b;

    sim_rng_seed(&a, 42);
    sim_rng_seed(&b, 42);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(sim_rng_next(&a), sim_rng_next(&b));
    for (int i = 0; i < 1000; i++)
        cr_assert_lt(sim_rng_below(&a, 7), 7);
}

Test(sim_stats, erlang_b_known_values)
{
    /* Values from the recursion, cross-checked with published tables. */
    cr_assert_float_eq(sim_erlang_b(1, 1.0), 0.5, 1e-12);
    cr_assert_float_eq(sim_erlang_b(2, 1.0), 0.2, 1e-12);
    cr_assert_float_eq(sim_erlang_b(10, 8.0), 0.1216610642, 1e-9);
    cr_assert_float_eq(sim_erlang_b(50, 45.0), 0.0541044722, 1e-9);
    cr_assert_float_eq(sim_erlang_b(100, 110.0), 0.1361148, 1e-6);
    cr_assert_float_eq(sim_erlang_b(0, 3.0), 1.0, 0);
    cr_assert_float_eq(sim_erlang_b(5, 0.0), 0.0, 0);
    /* 64512 servers at 60000 Erlangs: tiny but computable without overflow */
    cr_assert_lt(sim_erlang_b(64512, 60000.0), 1e-6);
    cr_assert(isfinite(sim_erlang_b(64512, 70000.0)));
}

Test(sim_stats, batch_ci)
{
    double v[4] = {1, 2, 3, 4}, mean, half;

    sim_batch_ci(v, 4, 0.95, &mean, &half);
    cr_assert_float_eq(mean, 2.5, 1e-12);
    /* sd = 1.2910, t(3) = 3.182, half = 3.182 * 1.2910 / 2 */
    cr_assert_float_eq(half, 3.182 * 1.2909944 / 2.0, 1e-4);
    cr_assert_float_eq(sim_t_quantile(0.99, 19), 2.861, 1e-9);
    cr_assert_float_eq(sim_t_quantile(0.95, 1000), 1.960, 1e-9);
}

/* ---- trace ---------------------------------------------------------------- */

Test(sim_trace, good_lines)
{
    struct sim_trace_row r;
    char err[256];
    static const uint8_t c5[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 100, 64, 0, 5};
    static const uint8_t d[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 51, 100, 7};

    cr_assert_eq(
        sim_trace_parse_line("1.5,5,tcp,198.51.100.7:443,30\n", false, &r, err, sizeof(err)),
        SIM_TRACE_ROW);
    cr_assert_float_eq(r.time_ms, 1500, 1e-9);
    cr_assert_arr_eq(r.client, c5, 16);
    cr_assert_arr_eq(r.dst, d, 16);
    cr_assert_eq(r.dst_port, 443);
    cr_assert_eq(r.proto, 6);
    cr_assert_float_eq(r.duration_ms, 30000, 1e-9);
    cr_assert_eq(sim_trace_parse_line("  250ms 10.0.0.1 udp [2001:db8::1]:53 100ms # dns", false,
                                      &r, err, sizeof(err)),
                 SIM_TRACE_ROW);
    cr_assert_eq(r.proto, 17);
    cr_assert_eq(r.client[15], 1);
    cr_assert_eq(r.dst[0], 0x20);
    cr_assert_eq(r.dst_port, 53);
    cr_assert_eq(sim_trace_parse_line("# comment", false, &r, err, sizeof(err)), SIM_TRACE_SKIP);
    cr_assert_eq(sim_trace_parse_line("   \r\n", false, &r, err, sizeof(err)), SIM_TRACE_SKIP);
    cr_assert_eq(
        sim_trace_parse_line("time,client,proto,destination,duration", true, &r, err, sizeof(err)),
        SIM_TRACE_SKIP);
}

Test(sim_trace, bad_lines)
{
    static const struct {
        const char *line;
        const char *want; /* a word the error must contain */
    } bad[] = {
        {"1,5,tcp,198.51.100.7:443", "fields"},
        {"1,5,tcp,198.51.100.7:443,30,9", "fields"},
        {"x,5,tcp,198.51.100.7:443,30", "time"},
        {"-1,5,tcp,198.51.100.7:443,30", "time"},
        {"1,host,tcp,198.51.100.7:443,30", "client"},
        {"1,99999999,tcp,198.51.100.7:443,30", "client"},
        {"1,5,sctp,198.51.100.7:443,30", "proto"},
        {"1,5,tcp,198.51.100.7,30", "destination"},
        {"1,5,tcp,198.51.100.7:0,30", "destination"},
        {"1,5,tcp,198.51.100.7:70000,30", "destination"},
        {"1,5,tcp,2001:db8::1:53,30", "destination"},
        {"1,5,tcp,198.51.100.7:443,forever", "duration"},
        {"time,client,proto,destination,duration", "time"}, /* header not on the first line */
    };
    struct sim_trace_row r;
    char err[256];

    memset(&r, 0xab, sizeof(r));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        cr_assert_eq(sim_trace_parse_line(bad[i].line, false, &r, err, sizeof(err)),
                     SIM_TRACE_ERROR, "accepted: %s", bad[i].line);
        cr_assert(strstr(err, bad[i].want) != NULL, "'%s' -> '%s' lacks '%s'", bad[i].line, err,
                  bad[i].want);
    }
    cr_assert_eq(r.proto, 0xab, "row untouched on error");
}

Test(sim_trace, long_line)
{
    char line[5000];
    struct sim_trace_row r;
    char err[256];

    memset(line, '1', sizeof(line) - 1);
    line[sizeof(line) - 1] = '\0';
    cr_assert_eq(sim_trace_parse_line(line, false, &r, err, sizeof(err)), SIM_TRACE_ERROR);
}

static int read_all(const char *text, unsigned *rows, char *err, size_t errlen)
{
    FILE *f = fmemopen((void *)(uintptr_t)text, strlen(text), "r");
    struct sim_trace_reader rd;
    struct sim_trace_row r;
    int rc;

    *rows = 0;
    sim_trace_reader_init(&rd, f);
    while ((rc = sim_trace_next(&rd, &r, err, errlen)) == 1)
        (*rows)++;
    sim_trace_reader_free(&rd);
    fclose(f);
    return rc;
}

Test(sim_trace, reader)
{
    unsigned rows;
    char err[256];

    cr_assert_eq(read_all("# a trace\ntime,client,proto,destination,duration\n"
                          "0,1,tcp,198.51.100.1:80,1\n\n0,2,udp,198.51.100.1:53,1\n"
                          "3.5,1,tcp,198.51.100.1:80,1",
                          &rows, err, sizeof(err)),
                 0);
    cr_assert_eq(rows, 3);
    cr_assert_eq(
        read_all("2,1,tcp,198.51.100.1:80,1\n1,1,tcp,198.51.100.1:80,1\n", &rows, err, sizeof(err)),
        -EINVAL);
    cr_assert_eq(rows, 1);
    cr_assert(strncmp(err, "line 2:", 7) == 0, "%s", err);
    cr_assert(strstr(err, "before") != NULL, "%s", err);
    cr_assert_eq(
        read_all("0,1,tcp,198.51.100.1:80,1\n\n# x\n0,1,tcp,nowhere,1\n", &rows, err, sizeof(err)),
        -EINVAL);
    cr_assert(strncmp(err, "line 4:", 7) == 0, "%s", err);
    cr_assert_eq(read_all("", &rows, err, sizeof(err)), 0);
    cr_assert_eq(rows, 0);
}
