/*
 * sim_model_cli.h - `gwsim model`: the command line around the model engine
 * (sim_model.h): options, outputs (CSV, summary, SVG).
 */
#ifndef GW_SIM_MODEL_CLI_H
#define GW_SIM_MODEL_CLI_H

/* Runs `gwsim model ARGS...` (argv[0] is "model"). Returns the exit code:
 * 0 done, 1 runtime failure (file, memory), 2 bad usage or input. */
int sim_model_main(int argc, char **argv);

#endif /* GW_SIM_MODEL_CLI_H */
