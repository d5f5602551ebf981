/*
 * sim_backend.h - `gwsim backend`: a demo backend on TCP and/or UDP on one
 * port number. Tells each client its name and the peer address it saw,
 * answers HTTP with a small JSON body, otherwise echoes; fault flags make it
 * slow, close early, reset or refuse. docs/gwsim.md has the wire format.
 */
#ifndef GW_SIM_BACKEND_H
#define GW_SIM_BACKEND_H

/* Runs `gwsim backend ARGS...` (argv[0] is "backend"). Returns the process
 * exit code: 0 after SIGTERM/SIGINT, 1 on a runtime failure, 2 on bad usage. */
int sim_backend_main(int argc, char **argv);

#endif /* GW_SIM_BACKEND_H */
