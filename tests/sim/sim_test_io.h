/*
 * sim_test_io.h - socket reads the gwsim tests share.
 */
#ifndef GW_SIM_TEST_IO_H
#define GW_SIM_TEST_IO_H

#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

/* Reads one line (at most cap - 1 bytes, '\n' kept; each recv bounded by the
 * socket's SO_RCVTIMEO) into buf, NUL-terminated. Returns its length. */
static inline size_t read_line(int fd, char *buf, size_t cap)
{
    size_t got = 0;

    while (got + 1 < cap) {
        ssize_t r = recv(fd, buf + got, 1, 0);
        if (r <= 0)
            break;
        got++;
        if (buf[got - 1] == '\n')
            break;
    }
    buf[got] = '\0';
    return got;
}

#endif /* GW_SIM_TEST_IO_H */
