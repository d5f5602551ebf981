/*
 * sim_ctl.h - a blocking client of gwd's control socket (one JSON object per
 * line each way; docs/control-protocol.md): call a command, find the NAT
 * session of one client endpoint, read the refusal counters.
 */
#ifndef GW_SIM_CTL_H
#define GW_SIM_CTL_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct sim_ctl {
    int fd; /* -1 when closed */
    uint64_t next_id;
    char *buf; /* owned: bytes read past the last line */
    size_t len, cap;
    int timeout_ms;
};

/* Connects to the Unix socket at `path`. Returns 0, or -errno with a sentence
 * naming the path in err. */
int sim_ctl_open(struct sim_ctl *c, const char *path, int timeout_ms, char *err, size_t errlen);

/* Closes the connection and frees the buffer. Safe twice. */
void sim_ctl_close(struct sim_ctl *c);

/*
 * Sends {"id":N,"cmd":cmd,"args":args} (args stolen; NULL = {}) and waits for
 * the reply with that id. Returns the "result" (a new reference the caller
 * decrefs), or NULL with err: the daemon's error code and message, or what
 * went wrong on the socket.
 */
json_t *sim_ctl_call(struct sim_ctl *c, const char *cmd, json_t *args, char *err, size_t errlen);

/* A live NAT session as show nat reports it (the fields gwsim checks). */
struct sim_nat_entry {
    char nat_ip[48];
    unsigned nat_port;
    char backend[64];
    char backend_ip[48];
    unsigned backend_port;
    char state[16];
};

/*
 * Finds the live session of client ip:port for proto ("tcp"/"udp") with
 * show nat (filtered by client and proto, paged). Returns 1 and *out, 0 when
 * none, or -1 with err.
 */
int sim_ctl_find_session(struct sim_ctl *c, const char *proto, const char *client_ip,
                         unsigned client_port, struct sim_nat_entry *out, char *err, size_t errlen);

#endif /* GW_SIM_CTL_H */
