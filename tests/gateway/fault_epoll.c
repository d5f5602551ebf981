/*
 * fault_epoll.c - a fault injector for gw_faults_test, loaded into gwd with
 * LD_PRELOAD. epoll_ctl(EPOLL_CTL_ADD) of an IPv4 or IPv6 socket whose local
 * port is in GW_FAULT_EPOLL_PORTS ("LO-HI") fails with ENOSPC, which is what
 * the kernel says past fs.epoll.max_user_watches. That limit is machine-wide
 * and a test cannot lower it without hurting every other process of the
 * user; gwd's upstream sockets are bound to NAT ports, so a range of them
 * picks exactly the flows to hurt. Every other call goes to libc.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>

typedef int (*epoll_ctl_fn)(int, int, int, struct epoll_event *);

static epoll_ctl_fn real_epoll_ctl;
static unsigned port_lo = 1, port_hi = 0; /* empty until parsed */
static int parsed;

static void parse_env(void)
{
    const char *s = getenv("GW_FAULT_EPOLL_PORTS");
    if (s == NULL || sscanf(s, "%u-%u", &port_lo, &port_hi) != 2) {
        port_lo = 1;
        port_hi = 0;
    }
    parsed = 1;
}

static int local_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *event)
{
    if (real_epoll_ctl == NULL)
        real_epoll_ctl = (epoll_ctl_fn)dlsym(RTLD_NEXT, "epoll_ctl");
    if (!parsed)
        parse_env();
    if (op == EPOLL_CTL_ADD) {
        int port = local_port(fd);
        if (port >= 0 && (unsigned)port >= port_lo && (unsigned)port <= port_hi) {
            errno = ENOSPC;
            return -1;
        }
    }
    return real_epoll_ctl(epfd, op, fd, event);
}
