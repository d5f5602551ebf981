/* sim_model_stub.c - `gwsim model` when libnat is not built yet. */
#include "sim/sim_model_cli.h"

#include <stdio.h>

int sim_model_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "gwsim model: this gwsim was built without libnat\n");
    return 2;
}
