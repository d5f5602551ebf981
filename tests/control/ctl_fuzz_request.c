/*
 * ctl_fuzz_request.c - libFuzzer target for the control protocol's pure
 * parsers: the input is cut into lines by ctl_linebuf (in pieces whose size
 * the first byte picks) and each line goes through ctl_request_parse; a
 * request that parses is also turned back into a reply line.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/gw_ctlproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void one_line(const char *line, size_t len)
{
    struct ctl_request req;
    struct ctl_error err;
    size_t n;
    char *reply;

    if (ctl_request_parse(&req, line, len, &err) == CTL_OK)
        reply = ctl_reply_ok(req.id, json_string(ctl_cmd_name(req.cmd)), &n);
    else
        reply = ctl_reply_error(req.id, err.code, err.message, &n);
    if (!reply || reply[n - 1] != '\n' || memchr(reply, '\n', n - 1))
        abort(); /* a reply is always exactly one line */
    free(reply);
    ctl_request_clear(&req);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ctl_linebuf lb;
    size_t step, off = 0;
    uint64_t ms;
    char tbuf[CTL_TIME_STRLEN];

    if (size == 0)
        return 0;
    step = (size_t)(data[0] % 64) + 1;
    data++;
    size--;
    /* the whole input as one request, as a time, and as lines */
    one_line((const char *)data, size);
    if (size < 64) {
        char s[64];
        memcpy(s, data, size);
        s[size] = '\0';
        if (ctl_time_parse(s, &ms) == 0)
            ctl_time_format(ms, tbuf);
    }
    ctl_linebuf_init(&lb, 512);
    while (off < size) {
        size_t avail, n;
        char *p = ctl_linebuf_space(&lb, step, &avail);
        char *line;
        size_t len;
        int r;
        if (!p)
            break;
        n = size - off < avail ? size - off : avail;
        memcpy(p, data + off, n);
        ctl_linebuf_commit(&lb, n);
        off += n;
        while ((r = ctl_linebuf_next(&lb, &line, &len)) == 1) {
            if (len > 512 || strlen(line) > len)
                abort();
            one_line(line, len);
        }
        if (r == -EMSGSIZE)
            break;
    }
    ctl_linebuf_free(&lb);
    return 0;
}
