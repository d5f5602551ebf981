/*
 * sim_lab.h - `gwsim lab`: the classic questions about ports, each an
 * experiment on real sockets through a gwd it starts itself (with its own
 * demo backends, control socket and store in a temporary directory),
 * printing the question, what was done, what was seen and the answer.
 */
#ifndef GW_SIM_LAB_H
#define GW_SIM_LAB_H

/* Runs `gwsim lab [--list | NAME... | all] [--gwd PATH] [--nat-ports LO-HI]
 * [--json]` (argv[0] "lab"). Returns 0 when every experiment saw what its
 * answer says, 1 when one did not, 2 on usage errors. */
int sim_lab_main(int argc, char **argv);

#endif /* GW_SIM_LAB_H */
