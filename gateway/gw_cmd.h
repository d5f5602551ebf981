/*
 * gw_cmd.h - the control commands of gwd: each validated request of
 * gw_ctlproto becomes a reply (or a streamed reply, or a subscription)
 * through the client calls of gw_control.h.
 */
#ifndef GW_CMD_H
#define GW_CMD_H

#include "gateway/gw_ctlproto.h"

struct ctl_client;

/*
 * Runs the validated request `req` for client `c` and queues its reply (or
 * starts the job that streams it). req stays owned by the caller; what the
 * command keeps of it is copied.
 */
void gw_cmd_run(struct ctl_client *c, const struct ctl_request *req);

#endif /* GW_CMD_H */
