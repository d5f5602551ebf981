/*
 * gw_main.c - gwd's entry point: flags (DESIGN.md's synopsis), start-up in
 * order (config, bind, store and NAT table, control socket, drop privileges,
 * loop), signals (TERM/INT drain and stop, HUP reload, PIPE ignored) and the
 * orderly shutdown.
 */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gwd.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: gwd [-c|--config FILE] [-p|--port PORT] [-b|--bind ADDR]...\n"
            "           [--tcp-backend [NAME=]HOST:PORT]... [--udp-backend [NAME=]HOST:PORT]...\n"
            "           [--nat-ip ADDR]... [--nat-ports LO-HI] [--nat-policy P] [--nat-mapping M]\n"
            "           [--nat-log flows|blocks]\n"
            "           [--db PATH|:memory:|none] [--control PATH] [--user USER]\n"
            "           [--log-level LEVEL] [--check-config] [--version] [--help]\n"
            "\n"
            "One TCP and one UDP port with the same number (default 80); every client flow\n"
            "is translated through the NAT table and relayed to a backend.\n"
            "  -c, --config FILE      JSON configuration (see docs/gwd.md); flags override it\n"
            "  -p, --port PORT        the TCP and UDP port (0: let the kernel pick, logged)\n"
            "  -b, --bind ADDR        listen address, repeatable (default: 0.0.0.0 and ::)\n"
            "  --tcp-backend [NAME=]HOST:PORT   a TCP server of pool NAME (default \"tcp\")\n"
            "  --udp-backend [NAME=]HOST:PORT   a UDP server of pool NAME (default \"udp\")\n"
            "  --nat-ip ADDR          translated source address, repeatable\n"
            "  --nat-ports LO-HI      translated source ports (default 20000-32767)\n"
            "  --nat-policy P         sequential|random|preserve|block (default random)\n"
            "  --nat-mapping M        eim|adm|apdm (default eim)\n"
            "  --nat-log L            what the store's log (nat_events) records: flows (every\n"
            "                         open and close, the default) or blocks (the port blocks\n"
            "                         of --nat-policy block, as carriers log; the flows are\n"
            "                         still in nat_sessions)\n"
            "  --db PATH              SQLite store, :memory:, or none (default /var/lib/gw/gwd.db\n"
            "                         for root, else $XDG_STATE_HOME/gwd.db or\n"
            "                         ~/.local/state/gwd.db)\n"
            "  --control PATH         control socket (default $GW_SOCKET, /run/gwd.sock for\n"
            "                         root, else ${XDG_RUNTIME_DIR:-/tmp}/gwd-$UID.sock)\n"
            "  --user USER            drop to USER after binding\n"
            "  --log-level LEVEL      error|warn|info|debug (default info)\n"
            "  --check-config         validate the configuration, print it, and exit\n"
            "  --version, --help\n"
            "Signals: TERM/INT drain and exit 0, HUP reloads the configuration.\n");
}

enum {
    OPT_TCP_BACKEND = 256,
    OPT_UDP_BACKEND,
    OPT_NAT_IP,
    OPT_NAT_PORTS,
    OPT_NAT_POLICY,
    OPT_NAT_MAPPING,
    OPT_NAT_LOG,
    OPT_DB,
    OPT_CONTROL,
    OPT_USER,
    OPT_LOG_LEVEL,
    OPT_CHECK_CONFIG,
    OPT_VERSION,
    OPT_HELP,
};

static const struct option long_options[] = {
    {"config", required_argument, NULL, 'c'},
    {"port", required_argument, NULL, 'p'},
    {"bind", required_argument, NULL, 'b'},
    {"tcp-backend", required_argument, NULL, OPT_TCP_BACKEND},
    {"udp-backend", required_argument, NULL, OPT_UDP_BACKEND},
    {"nat-ip", required_argument, NULL, OPT_NAT_IP},
    {"nat-ports", required_argument, NULL, OPT_NAT_PORTS},
    {"nat-policy", required_argument, NULL, OPT_NAT_POLICY},
    {"nat-mapping", required_argument, NULL, OPT_NAT_MAPPING},
    {"nat-log", required_argument, NULL, OPT_NAT_LOG},
    {"db", required_argument, NULL, OPT_DB},
    {"control", required_argument, NULL, OPT_CONTROL},
    {"user", required_argument, NULL, OPT_USER},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"check-config", no_argument, NULL, OPT_CHECK_CONFIG},
    {"version", no_argument, NULL, OPT_VERSION},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

/* Appends v to a repeatable flag's list of `max`. Returns -1 (go on), or 2
 * (usage error) when the list is full. */
static int push_flag(const char **list, size_t *n, size_t max, const char *v, const char *flag)
{
    if (*n == max) {
        fprintf(stderr, "gwd: too many %s\n", flag);
        return 2;
    }
    list[(*n)++] = v;
    return -1;
}

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

/* Parses argv into *cli. Returns -1 to go on, else the exit code. */
static int parse_args(int argc, char **argv, struct gw_cli *cli)
{
    int c, rc;

    while ((c = getopt_long(argc, argv, "c:p:b:h", long_options, NULL)) != -1) {
        switch (c) {
        case 'c':
            cli->config_file = optarg;
            break;
        case 'p':
            cli->port = optarg;
            break;
        case 'b':
            rc = push_flag(cli->binds, &cli->n_binds, COUNT_OF(cli->binds), optarg, "--bind");
            if (rc >= 0)
                return rc;
            break;
        case OPT_TCP_BACKEND:
            rc = push_flag(cli->tcp_backends, &cli->n_tcp_backends, COUNT_OF(cli->tcp_backends), optarg, "--tcp-backend");
            if (rc >= 0)
                return rc;
            break;
        case OPT_UDP_BACKEND:
            rc = push_flag(cli->udp_backends, &cli->n_udp_backends, COUNT_OF(cli->udp_backends), optarg, "--udp-backend");
            if (rc >= 0)
                return rc;
            break;
        case OPT_NAT_IP:
            rc = push_flag(cli->nat_ips, &cli->n_nat_ips, COUNT_OF(cli->nat_ips), optarg, "--nat-ip");
            if (rc >= 0)
                return rc;
            break;
        case OPT_NAT_PORTS:
            cli->nat_ports = optarg;
            break;
        case OPT_NAT_POLICY:
            cli->nat_policy = optarg;
            break;
        case OPT_NAT_MAPPING:
            cli->nat_mapping = optarg;
            break;
        case OPT_NAT_LOG:
            cli->nat_log = optarg;
            break;
        case OPT_DB:
            cli->db = optarg;
            break;
        case OPT_CONTROL:
            cli->control = optarg;
            break;
        case OPT_USER:
            cli->user = optarg;
            break;
        case OPT_LOG_LEVEL:
            cli->log_level = optarg;
            break;
        case OPT_CHECK_CONFIG:
            cli->check_config = true;
            break;
        case OPT_VERSION:
            printf("gwd %s\n", GW_VERSION);
            return 0;
        case 'h':
        case OPT_HELP:
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "gwd: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    return -1;
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    struct gw_ctx *ctx = w->data;

    (void)loop;
    (void)revents;
    if (w->signum == SIGHUP) {
        gw_log(GW_LOG_INFO, "SIGHUP: reloading");
        gw_reload(ctx);
        return;
    }
    gw_log(GW_LOG_INFO, "%s: stopping", w->signum == SIGTERM ? "SIGTERM" : "SIGINT");
    gw_shutdown(ctx);
}

/* ---- privileges ------------------------------------------------------------- */

static int drop_privileges(const char *user)
{
    struct passwd *pw = getpwnam(user);

    if (!pw) {
        gw_log(GW_LOG_ERROR, "--user %s: no such user", user);
        return -ENOENT;
    }
    if (getuid() == pw->pw_uid)
        return 0;
    if (initgroups(pw->pw_name, pw->pw_gid) < 0 || setgid(pw->pw_gid) < 0 ||
        setuid(pw->pw_uid) < 0) {
        gw_log(GW_LOG_ERROR, "--user %s: %s", user, strerror(errno));
        return -errno;
    }
    if (setuid(0) == 0) {
        gw_log(GW_LOG_ERROR, "--user %s: root could be regained", user);
        return -EPERM;
    }
    gw_log(GW_LOG_INFO, "running as %s (uid %u)", user, (unsigned)pw->pw_uid);
    return 0;
}

/* ---- main ------------------------------------------------------------------- */

static void ctx_free(struct gw_ctx *ctx)
{
    gw_nat_stop(ctx);
    gw_backends_free(ctx);
    gw_listen_close(ctx);
    gw_udp_index_free(ctx);
    free(ctx->scratch);
    gw_config_free(ctx->cfg);
}

int main(int argc, char **argv)
{
    struct gw_ctx ctx;
    char err[512], sockbuf[256];
    int rc;

    memset(&ctx, 0, sizeof(ctx));
    rc = parse_args(argc, argv, &ctx.cli);
    if (rc >= 0)
        return rc;
    if (gw_config_load(&ctx.cli, &ctx.cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "gwd: bad configuration: %s\n", err);
        return 1;
    }
    if (ctx.cli.check_config) {
        json_t *j = gw_config_to_json(ctx.cfg);
        char *text = j ? json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
        printf("%s\n", text ? text : "{}");
        fprintf(stderr, "gwd: configuration ok\n");
        free(text);
        json_decref(j);
        gw_config_free(ctx.cfg);
        return 0;
    }
    gw_log_level = ctx.cfg->log_level;
    signal(SIGPIPE, SIG_IGN);

    ctx.loop = ev_default_loop(EVFLAG_AUTO);
    if (!ctx.loop) {
        fprintf(stderr, "gwd: cannot make the event loop\n");
        gw_config_free(ctx.cfg);
        return 1;
    }
    if ((rc = gw_poll_init(&ctx.poll, ctx.loop, &ctx.rl.poll)) < 0) {
        fprintf(stderr, "gwd: cannot make the epoll set: %s\n", strerror(-rc));
        ev_loop_destroy(ctx.loop);
        gw_config_free(ctx.cfg);
        return 1;
    }
    ctx.start_ms = gw_now_ms();
    ctx.exit_code = 0;
    TAILQ_INIT(&ctx.backends);
    TAILQ_INIT(&ctx.retired);
    LIST_INIT(&ctx.flows);
    LIST_INIT(&ctx.subscribers);
    ctx.scratch_size = ctx.cfg->buffer_size > 65536 ? ctx.cfg->buffer_size : 65536;
    ctx.scratch = malloc(ctx.scratch_size);
    if (!ctx.scratch) {
        fprintf(stderr, "gwd: out of memory for the relay buffer\n");
        gw_poll_destroy(&ctx.poll);
        ev_loop_destroy(ctx.loop);
        gw_config_free(ctx.cfg);
        return 1;
    }
    gw_log(GW_LOG_INFO, "gwd %s starting", GW_VERSION);
    gw_nat_check_port_range(&ctx.cfg->nat);

    rc = gw_listen_open(&ctx);
    if (rc == 0)
        rc = gw_nat_start(&ctx);
    if (rc == 0)
        rc = gw_backends_apply(&ctx);
    const char *ctl_path = ctx.cfg->control_path;
    if (rc == 0 && !ctl_path)
        ctl_path = gw_default_socket_path(sockbuf, sizeof(sockbuf));
    if (rc == 0 && ctl_path && strcmp(ctl_path, "none") != 0) {
        rc = gw_control_start(&ctx, ctl_path);
        if (rc < 0)
            gw_log(GW_LOG_ERROR, "control socket %s: %s", ctl_path, strerror(-rc));
    }
    if (rc == 0 && ctx.cfg->user)
        rc = drop_privileges(ctx.cfg->user);
    if (rc < 0) {
        gw_control_stop(&ctx);
        ctx_free(&ctx);
        gw_poll_destroy(&ctx.poll);
        ev_loop_destroy(ctx.loop);
        return 1;
    }

    ev_signal_init(&ctx.sig_term, signal_cb, SIGTERM);
    ev_signal_init(&ctx.sig_int, signal_cb, SIGINT);
    ev_signal_init(&ctx.sig_hup, signal_cb, SIGHUP);
    ctx.sig_term.data = ctx.sig_int.data = ctx.sig_hup.data = &ctx;
    ev_signal_start(ctx.loop, &ctx.sig_term);
    ev_signal_start(ctx.loop, &ctx.sig_int);
    ev_signal_start(ctx.loop, &ctx.sig_hup);
    gw_listen_start(&ctx);
    gw_log(GW_LOG_INFO, "ready: port %u, %zu backends, nat ports %u-%u", ctx.port,
           ctx.cfg->n_backends, ctx.cfg->nat.port_lo, ctx.cfg->nat.port_hi);

    ev_run(ctx.loop, 0);

    ev_timer_stop(ctx.loop, &ctx.drain_timer);
    gw_flows_close_all(&ctx, 0, "shutdown");
    gw_control_stop(&ctx);
    ev_signal_stop(ctx.loop, &ctx.sig_term);
    ev_signal_stop(ctx.loop, &ctx.sig_int);
    ev_signal_stop(ctx.loop, &ctx.sig_hup);
    ctx_free(&ctx);
    gw_poll_destroy(&ctx.poll);
    ev_loop_destroy(ctx.loop);
    gw_log(GW_LOG_INFO, "stopped");
    return ctx.exit_code;
}
