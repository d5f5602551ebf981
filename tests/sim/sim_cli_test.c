/*
 * sim_cli_test.c - the gwsim command line as a user meets it: every
 * sub-command's --help, bad options and values (exit 2 with a message naming
 * the option), `gwsim model` end to end (JSON summary, CSV, SVG, a trace file
 * good and bad).
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "sim/sim_proc.h"

/* Runs gwsim with args (stderr into errbuf); returns the exit code, *out = stdout. */
static int run(char **args, char **out, char *errbuf, size_t errlen)
{
    char *argv[32];
    char errpath[] = "/tmp/sim_cli_test.XXXXXX";
    int n = 0, st, fd = mkstemp(errpath);
    struct sim_proc p;
    FILE *f;

    cr_assert_geq(fd, 0);
    close(fd);
    argv[n++] = GWSIM_PATH;
    for (int i = 0; args[i] != NULL; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    cr_assert_eq(sim_proc_start(&p, argv, errpath), 0);
    st = sim_proc_collect(&p, out, 8 << 20, 60000);
    f = fopen(errpath, "r");
    errbuf[0] = '\0';
    if (f != NULL) {
        size_t k = fread(errbuf, 1, errlen - 1, f);
        errbuf[k] = '\0';
        fclose(f);
    }
    unlink(errpath);
    cr_assert(WIFEXITED(st), "status %d", st);
    return WEXITSTATUS(st);
}

static void expect_exit(int want, const char *needle, char **args)
{
    char *out, err[4096];
    int rc = run(args, &out, err, sizeof(err));

    cr_assert_eq(rc, want, "gwsim %s %s -> %d (%s)", args[0], args[1] ? args[1] : "", rc, err);
    if (needle != NULL)
        cr_assert(strstr(err, needle) != NULL, "stderr lacks '%s': %s", needle, err);
    free(out);
}

Test(sim_cli, top_level)
{
    expect_exit(2, "usage", (char *[]){NULL});
    expect_exit(2, "unknown command", (char *[]){"bogus", NULL});
    expect_exit(0, NULL, (char *[]){"--version", NULL});
    expect_exit(0, NULL, (char *[]){"--help", NULL});
    expect_exit(0, NULL, (char *[]){"backend", "--help", NULL});
    expect_exit(0, NULL, (char *[]){"clients", "--help", NULL});
    expect_exit(0, NULL, (char *[]){"model", "--help", NULL});
    expect_exit(0, NULL, (char *[]){"lab", "--help", NULL});
}

Test(sim_cli, model_bad_options)
{
    expect_exit(2, "--hold", (char *[]){"model", "--hold", "gauss:1s", NULL});
    expect_exit(2, "--hold", (char *[]){"model", "--hold", "exp:-1", NULL});
    expect_exit(2, "--nat-ports", (char *[]){"model", "--nat-ports", "10-5", NULL});
    expect_exit(2, "--nat-policy", (char *[]){"model", "--nat-policy", "lifo", NULL});
    expect_exit(2, "--nat-mapping", (char *[]){"model", "--nat-mapping", "full-cone", NULL});
    expect_exit(2, "--udp-share", (char *[]){"model", "--udp-share", "2", NULL});
    expect_exit(2, "--rate", (char *[]){"model", "--rate", "0", NULL});
    expect_exit(2, "--arrival", (char *[]){"model", "--arrival", "burst:0", NULL});
    expect_exit(2, "--arrival", (char *[]){"model", "--arrival", "uniform", NULL});
    expect_exit(2, "--duration", (char *[]){"model", "--duration", "soon", NULL});
    expect_exit(2, "--sharing-ratio",
                (char *[]){"model", "--nat-ports", "1000-1099", "--sharing-ratio", "101", NULL});
    expect_exit(2, "flows", (char *[]){"model", "--flows", "0", NULL});
    expect_exit(2, NULL, (char *[]){"model", "--no-such-option", NULL});
    expect_exit(2, "unexpected", (char *[]){"model", "extra", NULL});
    expect_exit(1, "cannot read", (char *[]){"model", "--arrival", "trace:/nonexistent/t", NULL});
}

Test(sim_cli, model_runs)
{
    char *out, err[4096];
    json_t *j;
    json_error_t je;

    cr_assert_eq(run((char *[]){"model", "--nat-ports", "26000-26009", "--load", "8", "--hold",
                                "exp:1s", "--flows", "5000", "--json", NULL},
                     &out, err, sizeof(err)),
                 0, "%s", err);
    j = json_loads(out, 0, &je);
    cr_assert_not_null(j, "%s", out);
    cr_assert_eq(json_integer_value(json_object_get(j, "arrivals")), 5000);
    cr_assert_eq(json_integer_value(json_object_get(j, "servers")), 10);
    cr_assert(json_real_value(json_object_get(j, "erlang_b")) > 0.12);
    cr_assert(json_is_null(json_object_get(j, "erlang_b_not_applicable")));
    json_decref(j);
    free(out);

    cr_assert_eq(run((char *[]){"model", "--flows", "2000", "--csv", "-", "--interval", "1s", NULL},
                     &out, err, sizeof(err)),
                 0);
    cr_assert(strncmp(out, "time_s,arrivals,opened,refused,refused_interval,active,",
                      strlen("time_s,arrivals,opened,refused,refused_interval,active,")) == 0,
              "%.80s", out);
    cr_assert(strstr(err, "P(refuse)") != NULL, "the summary goes to stderr with --csv -");
    free(out);
}

/* A temporary file of the running test, removed by the .fini fixture even
 * when an assertion failed half-way. */
static char tmp_path[64];

static void remove_tmp(void)
{
    if (tmp_path[0] != '\0')
        unlink(tmp_path);
    tmp_path[0] = '\0';
}

Test(sim_cli, model_svg, .fini = remove_tmp)
{
    char *path = strcpy(tmp_path, "/tmp/sim_cli_svg.XXXXXX");
    char *out, err[4096], buf[256];
    int fd = mkstemp(path);
    FILE *f;
    long size;

    cr_assert_geq(fd, 0);
    close(fd);
    cr_assert_eq(run((char *[]){"model", "--nat-ports", "26000-26049", "--load", "60", "--flows",
                                "20000", "--svg", path, NULL},
                     &out, err, sizeof(err)),
                 0, "%s", err);
    free(out);
    f = fopen(path, "r");
    cr_assert_not_null(f);
    cr_assert_not_null(fgets(buf, sizeof(buf), f));
    cr_assert(strncmp(buf, "<?xml", 5) == 0);
    fseek(f, -7, SEEK_END);
    size = (long)fread(buf, 1, 7, f);
    buf[size] = '\0';
    cr_assert_str_eq(buf, "</svg>\n");
    fclose(f);
    unlink(path);
}

/* The whole of a file, NUL-terminated (caller frees). */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf;
    long size;

    cr_assert_not_null(f, "%s", path);
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    rewind(f);
    cr_assert_gt(size, 0);
    buf = malloc((size_t)size + 1);
    cr_assert_not_null(buf);
    cr_assert_eq(fread(buf, 1, (size_t)size, f), (size_t)size);
    buf[size] = '\0';
    fclose(f);
    return buf;
}

/* --udp-share: ports in use per protocol, each against the pool size, in the
 * CSV, the JSON summary and the SVG legend. */
Test(sim_cli, model_ports_per_protocol, .fini = remove_tmp)
{
    static const char hdr[] = "time_s,arrivals,opened,refused,refused_interval,active,ports_in_use,"
                              "tcp_ports_in_use,udp_ports_in_use,ports_cooling,pool_use,"
                              "tcp_pool_use,udp_pool_use,clients_active,ports_per_client_max,"
                              "ports_per_client_mean\n";
    char *path = strcpy(tmp_path, "/tmp/sim_cli_svg.XXXXXX");
    char *out, *line, *save = NULL, *svg, err[4096];
    int fd = mkstemp(path), rows = 0;
    json_t *j;
    json_error_t je;

    cr_assert_geq(fd, 0);
    close(fd);
    /* 30 Erlangs on 10 ports per protocol: both pools full most of the time */
    cr_assert_eq(run((char *[]){"model", "--nat-ports", "27000-27009", "--udp-share", "0.5",
                                "--rate", "10", "--hold", "exp:3s", "--flows", "3000", "--csv",
                                "-", "--interval", "1s", "--svg", path, NULL},
                     &out, err, sizeof(err)),
                 0, "%s", err);
    cr_assert(strncmp(out, hdr, strlen(hdr)) == 0, "%.200s", out);
    for (line = strtok_r(out + strlen(hdr), "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        unsigned long long in_use, tcp, udp;
        double pool, tpool, upool;
        cr_assert_eq(sscanf(line, "%*[^,],%*[^,],%*[^,],%*[^,],%*[^,],%*[^,],%llu,%llu,%llu,%*[^,],"
                                  "%lf,%lf,%lf,",
                            &in_use, &tcp, &udp, &pool, &tpool, &upool),
                     6, "%s", line);
        cr_assert_eq(tcp + udp, in_use, "%s", line);
        cr_assert(tcp <= 10 && udp <= 10 && pool <= 1.0, "%s", line);
        cr_assert_float_eq(tpool, tcp / 10.0, 1e-6, "%s", line);
        cr_assert_float_eq(upool, udp / 10.0, 1e-6, "%s", line);
        cr_assert_float_eq(pool, fmax(tpool, upool), 1e-6, "%s", line);
        rows++;
    }
    cr_assert_gt(rows, 100);
    free(out);
    svg = slurp(path);
    cr_assert(strstr(svg, ">TCP ports in use</text>") != NULL);
    cr_assert(strstr(svg, ">UDP ports in use</text>") != NULL);
    free(svg);
    cr_assert(strstr(err, "ports in use  tcp 10 of 10 (100.0%), udp 10 of 10 (100.0%)") != NULL,
              "%s", err);

    cr_assert_eq(run((char *[]){"model", "--nat-ports", "27000-27009", "--udp-share", "0.5",
                                "--rate", "10", "--hold", "exp:3s", "--flows", "3000", "--json",
                                NULL},
                     &out, err, sizeof(err)),
                 0, "%s", err);
    j = json_loads(out, 0, &je);
    free(out);
    cr_assert_not_null(j, "%s", je.text);
    cr_assert_eq(json_integer_value(json_object_get(j, "peak_tcp_ports_in_use")), 10);
    cr_assert_eq(json_integer_value(json_object_get(j, "peak_udp_ports_in_use")), 10);
    cr_assert_float_eq(json_real_value(json_object_get(j, "peak_tcp_pool_use")), 1.0, 1e-12);
    cr_assert_float_eq(json_real_value(json_object_get(j, "peak_udp_pool_use")), 1.0, 1e-12);
    cr_assert_gt(json_integer_value(json_object_get(j, "peak_ports_in_use")), 10);
    json_decref(j);
    /* TCP only: no UDP line in the chart */
    cr_assert_eq(run((char *[]){"model", "--nat-ports", "27000-27009", "--flows", "500", "--svg",
                                path, NULL},
                     &out, err, sizeof(err)),
                 0, "%s", err);
    free(out);
    svg = slurp(path);
    cr_assert(strstr(svg, ">TCP ports in use</text>") != NULL);
    cr_assert(strstr(svg, "UDP ports") == NULL);
    free(svg);
    unlink(path);
}

Test(sim_cli, model_trace, .fini = remove_tmp)
{
    char *path = strcpy(tmp_path, "/tmp/sim_cli_trace.XXXXXX");
    char *out, err[4096];
    int fd = mkstemp(path);
    const char good[] = "time,client,proto,destination,duration\n"
                        "0,1,tcp,198.51.100.1:443,5\n"
                        "0.5,2,udp,198.51.100.1:53,1\n"
                        "1,10.0.0.1,tcp,198.51.100.2:80,2\n";
    const char bad[] = "0,1,tcp,198.51.100.1:443,5\n1,1,icmp,198.51.100.1:443,5\n";
    json_t *j;
    json_error_t je;

    cr_assert_eq(write(fd, good, sizeof(good) - 1), (ssize_t)sizeof(good) - 1);
    close(fd);
    {
        char arg[64];
        snprintf(arg, sizeof(arg), "trace:%s", path);
        cr_assert_eq(
            run((char *[]){"model", "--arrival", arg, "--json", NULL}, &out, err, sizeof(err)), 0,
            "%s", err);
        j = json_loads(out, 0, &je);
        cr_assert_not_null(j);
        cr_assert_eq(json_integer_value(json_object_get(j, "arrivals")), 3);
        cr_assert_eq(json_integer_value(json_object_get(j, "opened")), 3);
        cr_assert_eq(json_integer_value(json_object_get(j, "clients")), 3);
        json_decref(j);
        free(out);

        fd = open(path, O_WRONLY | O_TRUNC);
        cr_assert_eq(write(fd, bad, sizeof(bad) - 1), (ssize_t)sizeof(bad) - 1);
        close(fd);
        expect_exit(2, "line 2: proto: 'icmp'", (char *[]){"model", "--arrival", arg, NULL});
    }
    unlink(path);
}

/* Bad --gateway and --src values: exit 2 with a message naming the option. */
Test(sim_cli, clients_bad_gateway)
{
    expect_exit(2, "--gateway HOST:PORT is required", (char *[]){"clients", NULL});
    expect_exit(2, "--gateway: 'no such host:80': cannot resolve the name: ",
                (char *[]){"clients", "--gateway", "no such host:80", NULL});
    expect_exit(2, "--gateway: 'localhost': expected HOST:PORT or [IPv6]:PORT",
                (char *[]){"clients", "--gateway", "localhost", NULL});
    expect_exit(2, "--gateway: 'localhost:0': the port must be 1-65535",
                (char *[]){"clients", "--gateway", "localhost:0", NULL});
    expect_exit(2, "--gateway: '[::1]:80': an IPv6 gateway needs IPv6 sources (--src)",
                (char *[]){"clients", "--gateway", "[::1]:80", "--src", "127.0.0.1", NULL});
    expect_exit(2, "--src: '127.0.0.1,::1': IPv4 and IPv6 sources cannot be mixed",
                (char *[]){"clients", "--gateway", "127.0.0.1:80", "--src", "127.0.0.1,::1",
                           NULL});
    expect_exit(2, "--src: 'kernel': expected auto, or IPs",
                (char *[]){"clients", "--gateway", "127.0.0.1:80", "--src", "kernel", NULL});
}

/* Runs `gwsim clients --json` with args; checks the exit code; returns the summary. */
static json_t *clients_json(int want_rc, char **args)
{
    char *out, err[4096];
    json_error_t je;
    json_t *j;
    int rc = run(args, &out, err, sizeof(err));

    cr_assert_eq(rc, want_rc, "gwsim clients -> %d (%s)", rc, err);
    j = json_loads(out, 0, &je);
    free(out);
    cr_assert_not_null(j, "%s", je.text);
    return j;
}

/* --gateway localhost:PORT straight at a backend: the name resolves to
 * 127.0.0.1, so the sources default to 127.1.0.1, ...; with --src auto the
 * kernel picks the one source address (127.0.0.1 toward 127.0.0.1). */
Test(sim_cli, clients_gateway_name_and_src_auto, .timeout = 60)
{
    char *bargv[] = {GWSIM_PATH, "backend", "--tcp", NULL};
    struct sim_proc be;
    unsigned t, u;
    char gw[32], want[32];
    json_t *j;

    cr_assert_eq(sim_proc_start(&be, bargv, "/dev/null"), 0);
    cr_assert_eq(sim_proc_wait_line(&be, "listening", 5000), 0);
    cr_assert_eq(sim_parse_listening(be.ready, &t, &u), 0);
    snprintf(gw, sizeof(gw), "localhost:%u", t);
    snprintf(want, sizeof(want), "127.0.0.1:%u", t);
    j = clients_json(0, (char *[]){"clients", "--gateway", gw, "--clients", "4", "--json", NULL});
    cr_assert_str_eq(json_string_value(json_object_get(j, "gateway")), want);
    cr_assert_eq(json_integer_value(json_object_get(j, "ok")), 4);
    cr_assert_eq(json_integer_value(json_object_get(j, "client_ips")), 4);
    cr_assert_eq(json_integer_value(json_object_get(j, "client_tuples")), 4);
    json_decref(j);
    j = clients_json(0, (char *[]){"clients", "--gateway", gw, "--src", "auto", "--clients", "4",
                                   "--flows", "2", "--src-port", "sequential", "--json", NULL});
    cr_assert_str_eq(json_string_value(json_object_get(j, "gateway")), want);
    cr_assert_eq(json_integer_value(json_object_get(j, "ok")), 8);
    cr_assert_eq(json_integer_value(json_object_get(j, "client_ips")), 1);
    cr_assert_eq(json_integer_value(json_object_get(j, "client_tuples")), 8);
    json_decref(j);
    cr_assert_eq(sim_proc_stop(&be, 3000), 0);
}

/* Toward a gateway that is not an IPv4 loopback address the sources default
 * to auto: here [::1] (skipped where the machine has no IPv6 loopback). */
Test(sim_cli, clients_src_auto_default_ipv6, .timeout = 60)
{
    char *bargv[] = {GWSIM_PATH, "backend", "--tcp", "--bind", "::1", NULL};
    struct sim_proc be;
    unsigned t, u;
    char gw[48];
    json_t *j;

    cr_assert_eq(sim_proc_start(&be, bargv, "/dev/null"), 0);
    if (sim_proc_wait_line(&be, "listening", 5000) < 0) {
        sim_proc_stop(&be, 3000);
        cr_skip_test("no IPv6 loopback here");
    }
    cr_assert_eq(sim_parse_listening(be.ready, &t, &u), 0);
    snprintf(gw, sizeof(gw), "[::1]:%u", t);
    j = clients_json(0, (char *[]){"clients", "--gateway", gw, "--clients", "3", "--json", NULL});
    cr_assert_str_eq(json_string_value(json_object_get(j, "gateway")), gw);
    cr_assert_eq(json_integer_value(json_object_get(j, "ok")), 3);
    cr_assert_eq(json_integer_value(json_object_get(j, "client_ips")), 1);
    cr_assert_eq(json_integer_value(json_object_get(j, "client_tuples")), 3);
    json_decref(j);
    cr_assert_eq(sim_proc_stop(&be, 3000), 0);
}

/* gwsim clients straight at a slow UDP backend (no gateway): resends are
 * answered, their late duplicates ignored; without resends the flows time out. */
Test(sim_cli, clients_udp_resend, .timeout = 60)
{
    char *bargv[] = {GWSIM_PATH, "backend", "--udp", "--delay-ms", "400", NULL};
    struct sim_proc be;
    unsigned t, u;
    char gw[32], *out, err[4096];
    json_t *j;
    json_error_t je;
    int rc;

    cr_assert_eq(sim_proc_start(&be, bargv, "/dev/null"), 0);
    cr_assert_eq(sim_proc_wait_line(&be, "listening", 5000), 0);
    cr_assert_eq(sim_parse_listening(be.ready, &t, &u), 0);
    snprintf(gw, sizeof(gw), "127.0.0.1:%u", u);
    rc = run((char *[]){"clients", "--gateway", gw, "--proto", "udp", "--clients", "5",
                        "--requests", "3", "--io-timeout", "1050ms", "--json", NULL},
             &out, err, sizeof(err));
    j = json_loads(out, 0, &je);
    free(out);
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert_eq(json_integer_value(json_object_get(j, "ok")), 5);
    /* each attempt waits 350 ms, the answer takes 400: every request is sent
     * at least twice, and the answers to requests 1 and 2 come twice (the
     * third's duplicate may come after the flow ended) */
    cr_assert_geq(json_integer_value(json_object_get(j, "udp_resent")), 15);
    cr_assert_geq(json_integer_value(json_object_get(j, "udp_duplicates")), 10);
    json_decref(j);
    rc = run((char *[]){"clients", "--gateway", gw, "--proto", "udp", "--clients", "5",
                        "--io-timeout", "300ms", "--udp-retries", "0", "--json", NULL},
             &out, err, sizeof(err));
    j = json_loads(out, 0, &je);
    free(out);
    cr_assert_eq(rc, 1);
    cr_assert_eq(
        json_integer_value(json_object_get(json_object_get(j, "failed_by_reason"), "timeout")), 5);
    json_decref(j);
    cr_assert_eq(sim_proc_stop(&be, 3000), 0);
}
