/*
 * gw_control_stub.c - stands in for the control socket until gw_control.c
 * builds: gwd runs without one. Removed once the real files are in.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "gwd.h"

/* No control socket in this build: logs it and succeeds. */
int gw_control_start(struct gw_ctx *ctx, const char *path)
{
    (void)ctx;
    gw_log(GW_LOG_WARN, "built without the control socket: %s not served", path);
    return 0;
}

/* Nothing to stop. */
void gw_control_stop(struct gw_ctx *ctx)
{
    (void)ctx;
}

/* The default rule of the brief. */
const char *gw_default_socket_path(char *buf, size_t len)
{
    const char *env = getenv("GW_SOCKET"), *xdg = getenv("XDG_RUNTIME_DIR");

    if (env && *env)
        snprintf(buf, len, "%s", env);
    else if (geteuid() == 0)
        snprintf(buf, len, "/run/gwd.sock");
    else
        snprintf(buf, len, "%s/gwd-%u.sock", xdg && *xdg ? xdg : "/tmp", (unsigned)geteuid());
    return buf;
}
