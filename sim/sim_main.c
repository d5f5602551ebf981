/*
 * sim_main.c - gwsim: dispatches to the sub-commands backend, clients, model
 * and lab.
 */
#include <stdio.h>
#include <string.h>

#include "sim/sim_backend.h"
#include "sim/sim_clients.h"
#include "sim/sim_lab.h"
#include "sim/sim_model_cli.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gwsim COMMAND [OPTIONS]\n"
            "\n"
            "  backend   a demo backend on TCP and/or UDP that tells each client the peer it saw\n"
            "  clients   many clients from many source IPs through a gateway, every reply checked\n"
            "  model     the NAT engine in virtual time: CSV, summary and an SVG chart\n"
            "  lab       the classic port questions, each an experiment through a real gwd\n"
            "\n"
            "gwsim COMMAND --help for the options of each; gwsim --version.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("gwsim %s\n", GW_VERSION);
        return 0;
    }
    if (strcmp(argv[1], "backend") == 0)
        return sim_backend_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "clients") == 0)
        return sim_clients_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "model") == 0)
        return sim_model_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "lab") == 0)
        return sim_lab_main(argc - 1, argv + 1);
    fprintf(stderr, "gwsim: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
