/*
 * ctl_proto_test.c - the control protocol's pure parts: request validation
 * and its stable error codes, replies, sessions as JSON, times, line framing
 * (whole and byte by byte), the default socket path.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gateway/gw_ctlproto.h"

static enum ctl_err parse(struct ctl_request *req, const char *line)
{
    struct ctl_error err;
    enum ctl_err rc = ctl_request_parse(req, line, strlen(line), &err);

    cr_assert_eq(err.code, rc);
    if (rc != CTL_OK)
        cr_assert(err.message[0] != '\0', "an error has a message");
    return rc;
}

/* Parses, checks the code, clears. */
static void expect(const char *line, enum ctl_err want)
{
    struct ctl_request req;
    enum ctl_err rc = parse(&req, line);

    cr_assert_eq(rc, want, "%s: got %s, want %s", line, ctl_err_name(rc), ctl_err_name(want));
    ctl_request_clear(&req);
}

Test(ctl_proto, error_names_are_stable)
{
    cr_assert_str_eq(ctl_err_name(CTL_ERR_BAD_JSON), "bad_json");
    cr_assert_str_eq(ctl_err_name(CTL_ERR_BAD_REQUEST), "bad_request");
    cr_assert_str_eq(ctl_err_name(CTL_ERR_UNKNOWN_COMMAND), "unknown_command");
    cr_assert_str_eq(ctl_err_name(CTL_ERR_BAD_ARGUMENT), "bad_argument");
    cr_assert_str_eq(ctl_err_name(CTL_ERR_NOT_FOUND), "not_found");
    cr_assert_str_eq(ctl_err_name(CTL_ERR_LINE_TOO_LONG), "line_too_long");
    cr_assert_str_eq(ctl_err_name(CTL_ERR_BUSY), "busy");
    cr_assert_str_eq(ctl_err_name(CTL_ERR_UNAVAILABLE), "unavailable");
    cr_assert_str_eq(ctl_err_name(CTL_ERR_INTERNAL), "internal");
    for (int i = 0; i < CTL_ERR_COUNT; i++)
        cr_assert_eq(ctl_err_parse(ctl_err_name((enum ctl_err)i)), i);
    for (int i = 0; i < CTL_CMD_COUNT; i++)
        cr_assert_eq(ctl_cmd_parse(ctl_cmd_name((enum ctl_cmd)i)), i);
    cr_assert_eq(ctl_cmd_parse("show  nat"), -1);
}

Test(ctl_proto, every_command_parses)
{
    expect("{\"id\":1,\"cmd\":\"version\"}", CTL_OK);
    expect("{\"cmd\":\"show stats\",\"args\":{}}", CTL_OK);
    expect("{\"cmd\":\"show nat\"}", CTL_OK);
    expect("{\"cmd\":\"show backends\",\"args\":null}", CTL_OK);
    expect("{\"cmd\":\"show config\"}", CTL_OK);
    expect("{\"cmd\":\"show clients\",\"args\":{\"limit\":3,\"sort\":\"bytes\"}}", CTL_OK);
    expect("{\"cmd\":\"show blocks\"}", CTL_OK);
    expect("{\"cmd\":\"show blocks\",\"args\":{\"client\":\"10.0.0.0/8\",\"nat_ip\":\"192.0.2.1\","
           "\"nat_port\":\"20000-20063\",\"limit\":5}}",
           CTL_OK);
    expect("{\"cmd\":\"flush nat\",\"args\":{\"proto\":\"udp\"}}", CTL_OK);
    expect("{\"cmd\":\"backend drain\",\"args\":{\"name\":\"web\"}}", CTL_OK);
    expect("{\"cmd\":\"backend enable\",\"args\":{\"name\":\"web/a\"}}", CTL_OK);
    expect("{\"cmd\":\"backend disable\",\"args\":{\"name\":\"web\",\"server\":\"a\"}}", CTL_OK);
    expect("{\"cmd\":\"subscribe\"}", CTL_OK);
    expect("{\"cmd\":\"subscribe\",\"args\":{\"events\":[\"open\",\"health\"]}}", CTL_OK);
}

Test(ctl_proto, malformed_requests)
{
    expect("", CTL_ERR_BAD_JSON);
    expect("{", CTL_ERR_BAD_JSON);
    expect("{\"cmd\":\"version\"} x", CTL_ERR_BAD_JSON);
    expect("{\"cmd\":\"version\",\"cmd\":\"version\"}", CTL_ERR_BAD_JSON); /* duplicate key */
    expect("{\"cmd\":\"version\\u0000\"}", CTL_ERR_BAD_JSON);              /* NUL in a string */
    expect("[1,2]", CTL_ERR_BAD_REQUEST);
    expect("\"version\"", CTL_ERR_BAD_JSON); /* jansson refuses a bare scalar at top level */
    expect("{}", CTL_ERR_BAD_REQUEST);
    expect("{\"cmd\":7}", CTL_ERR_BAD_REQUEST);
    expect("{\"cmd\":\"version\",\"extra\":1}", CTL_ERR_BAD_REQUEST);
    expect("{\"cmd\":\"version\",\"args\":[]}", CTL_ERR_BAD_REQUEST);
    expect("{\"cmd\":\"version\",\"id\":[1]}", CTL_ERR_BAD_REQUEST);
    expect("{\"cmd\":\"version\",\"id\":1.5}", CTL_ERR_BAD_REQUEST);
    expect("{\"cmd\":\"reboot\"}", CTL_ERR_UNKNOWN_COMMAND);
    expect("{\"cmd\":\"show\"}", CTL_ERR_UNKNOWN_COMMAND);
    expect("{\"cmd\":\"SHOW NAT\"}", CTL_ERR_UNKNOWN_COMMAND);
}

Test(ctl_proto, bad_arguments)
{
    static const char *const bad[] = {
        "{\"cmd\":\"version\",\"args\":{\"x\":1}}",
        "{\"cmd\":\"show nat\",\"args\":{\"nope\":1}}",
        "{\"cmd\":\"show nat\",\"args\":{\"proto\":\"icmp\"}}",
        "{\"cmd\":\"show nat\",\"args\":{\"proto\":6}}",
        "{\"cmd\":\"show nat\",\"args\":{\"client\":\"10.0.0.300\"}}",
        "{\"cmd\":\"show nat\",\"args\":{\"client\":\"10.0.0.0/33\"}}",
        "{\"cmd\":\"show nat\",\"args\":{\"nat_ip\":\"10.0.0.0/8\"}}",
        "{\"cmd\":\"show nat\",\"args\":{\"nat_port\":0}}",
        "{\"cmd\":\"show nat\",\"args\":{\"nat_port\":65536}}",
        "{\"cmd\":\"show nat\",\"args\":{\"nat_port\":\"5-3\"}}",
        "{\"cmd\":\"show nat\",\"args\":{\"nat_port\":\"1-\"}}",
        "{\"cmd\":\"show nat\",\"args\":{\"nat_port\":\"-1\"}}",
        "{\"cmd\":\"show nat\",\"args\":{\"nat_port\":\"80x\"}}",
        "{\"cmd\":\"show nat\",\"args\":{\"nat_port\":true}}",
        "{\"cmd\":\"show nat\",\"args\":{\"state\":\"closed\"}}",
        "{\"cmd\":\"show nat\",\"args\":{\"state\":\"up\"}}",
        "{\"cmd\":\"show nat\",\"args\":{\"limit\":0}}",
        "{\"cmd\":\"show nat\",\"args\":{\"limit\":1000001}}",
        "{\"cmd\":\"show nat\",\"args\":{\"limit\":\"10\"}}",
        "{\"cmd\":\"show nat\",\"args\":{\"limit\":10.0}}",
        "{\"cmd\":\"show nat\",\"args\":{\"offset\":-1}}",
        "{\"cmd\":\"show nat\",\"args\":{\"sort\":\"size\"}}",
        "{\"cmd\":\"show nat\",\"args\":{\"sort\":\"bytes\",\"limit\":100000,\"offset\":1}}",
        "{\"cmd\":\"show nat\",\"args\":{\"sort\":\"bytes\",\"after_id\":5}}",
        "{\"cmd\":\"show nat\",\"args\":{\"backend\":\"\"}}",
        "{\"cmd\":\"show nat\",\"args\":{\"backend\":7}}",
        "{\"cmd\":\"flush nat\",\"args\":{\"limit\":5}}",
        "{\"cmd\":\"flush nat\",\"args\":{\"sort\":\"id\"}}",
        "{\"cmd\":\"backend drain\"}",
        "{\"cmd\":\"backend drain\",\"args\":{\"name\":\"/x\"}}",
        "{\"cmd\":\"backend drain\",\"args\":{\"name\":\"web/\"}}",
        "{\"cmd\":\"backend drain\",\"args\":{\"name\":\"web/a\",\"server\":\"b\"}}",
        "{\"cmd\":\"backend drain\",\"args\":{\"name\":\"web\",\"weight\":2}}",
        "{\"cmd\":\"subscribe\",\"args\":{\"events\":[]}}",
        "{\"cmd\":\"subscribe\",\"args\":{\"events\":[\"boom\"]}}",
        "{\"cmd\":\"subscribe\",\"args\":{\"events\":\"open\"}}",
        "{\"cmd\":\"show clients\",\"args\":{\"limit\":1001}}",
        "{\"cmd\":\"show clients\",\"args\":{\"sort\":\"age\"}}",
        "{\"cmd\":\"show blocks\",\"args\":{\"proto\":\"tcp\"}}",
        "{\"cmd\":\"show blocks\",\"args\":{\"limit\":0}}",
        "{\"cmd\":\"show blocks\",\"args\":{\"client\":\"x\"}}",
        "{\"cmd\":\"show blocks\",\"args\":{\"nat_port\":\"9-1\"}}",
        "{\"cmd\":\"show blocks\",\"args\":{\"sort\":\"id\"}}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect(bad[i], CTL_ERR_BAD_ARGUMENT);
}

Test(ctl_proto, long_names_are_refused)
{
    char line[512];
    char name[CTL_NAME_MAX + 1];

    memset(name, 'a', CTL_NAME_MAX);
    name[CTL_NAME_MAX] = '\0';
    snprintf(line, sizeof(line), "{\"cmd\":\"backend drain\",\"args\":{\"name\":\"%s\"}}", name);
    expect(line, CTL_ERR_BAD_ARGUMENT);
    name[CTL_NAME_MAX - 1] = '\0';
    snprintf(line, sizeof(line), "{\"cmd\":\"backend drain\",\"args\":{\"name\":\"%s\"}}", name);
    expect(line, CTL_OK);
}

Test(ctl_proto, show_nat_arguments_are_read)
{
    struct ctl_request req;
    struct nat_addr a;

    cr_assert_eq(parse(&req, "{\"id\":\"q1\",\"cmd\":\"show nat\",\"args\":{\"proto\":\"tcp\","
                             "\"client\":\"127.0.0.0/24\",\"nat_ip\":\"127.0.0.1\","
                             "\"nat_port\":\"24000-24999\",\"backend\":\"web\","
                             "\"state\":\"established\",\"sort\":\"-bytes\",\"limit\":50,"
                             "\"offset\":10}}"),
                 CTL_OK);
    cr_assert_eq(req.cmd, CTL_CMD_SHOW_NAT);
    cr_assert_str_eq(json_string_value(req.id), "q1");
    cr_assert_eq(req.u.nat.filter.proto, NAT_PROTO_TCP);
    cr_assert(req.u.nat.filter.has_client);
    cr_assert_eq(req.u.nat.filter.client_plen, 96 + 24);
    nat_addr_parse(&a, "127.0.0.200");
    cr_assert(nat_addr_in_prefix(&a, &req.u.nat.filter.client, req.u.nat.filter.client_plen));
    nat_addr_parse(&a, "127.0.1.1");
    cr_assert_not(nat_addr_in_prefix(&a, &req.u.nat.filter.client, req.u.nat.filter.client_plen));
    cr_assert(req.u.nat.filter.has_nat_ip);
    cr_assert_eq(req.u.nat.filter.nat_port_lo, 24000);
    cr_assert_eq(req.u.nat.filter.nat_port_hi, 24999);
    cr_assert_str_eq(req.u.nat.backend, "web");
    cr_assert_not(req.u.nat.filter.has_backend, "the daemon resolves the name");
    cr_assert_eq(req.u.nat.filter.state, NAT_STATE_ESTABLISHED);
    cr_assert_eq(req.u.nat.sort, CTL_SORT_BYTES);
    cr_assert(req.u.nat.desc);
    cr_assert_eq(req.u.nat.limit, 50);
    cr_assert_eq(req.u.nat.offset, 10);
    ctl_request_clear(&req);

    cr_assert_eq(parse(&req, "{\"cmd\":\"show nat\",\"args\":{\"nat_port\":24001,"
                             "\"after_id\":99}}"),
                 CTL_OK);
    cr_assert_null(req.id);
    cr_assert_eq(req.u.nat.filter.nat_port_lo, 24001);
    cr_assert_eq(req.u.nat.filter.nat_port_hi, 24001);
    cr_assert_eq(req.u.nat.after_id, 99);
    cr_assert_eq(req.u.nat.limit, CTL_LIMIT_DEFAULT);
    cr_assert_eq(req.u.nat.sort, CTL_SORT_ID);
    cr_assert_eq(req.u.nat.filter.state, -1, "no state filter");
    cr_assert_eq(req.u.nat.filter.proto, 0);
    ctl_request_clear(&req);
}

Test(ctl_proto, backend_and_subscribe_arguments)
{
    struct ctl_request req;

    cr_assert_eq(
        parse(&req, "{\"cmd\":\"backend drain\",\"args\":{\"name\":\"web/127.0.0.1:80\"}}"),
        CTL_OK);
    cr_assert_str_eq(req.u.backend.name, "web");
    cr_assert_str_eq(req.u.backend.server, "127.0.0.1:80");
    ctl_request_clear(&req);
    cr_assert_eq(
        parse(&req, "{\"cmd\":\"subscribe\",\"args\":{\"events\":[\"close\",\"refuse\"]}}"),
        CTL_OK);
    cr_assert_eq(req.u.events, CTL_EVK_CLOSE | CTL_EVK_REFUSE);
    ctl_request_clear(&req);
    cr_assert_eq(parse(&req, "{\"cmd\":\"subscribe\"}"), CTL_OK);
    cr_assert_eq(req.u.events, CTL_EVK_ALL);
    ctl_request_clear(&req);
}

Test(ctl_proto, error_reply_echoes_the_id)
{
    struct ctl_request req;
    struct ctl_error err;
    const char *line = "{\"id\":42,\"cmd\":\"nope\"}";
    size_t len;
    char *reply;
    json_t *j;

    cr_assert_eq(ctl_request_parse(&req, line, strlen(line), &err), CTL_ERR_UNKNOWN_COMMAND);
    reply = ctl_reply_error(req.id, err.code, err.message, &len);
    cr_assert_not_null(reply);
    cr_assert_eq(reply[len - 1], '\n');
    cr_assert_null(memchr(reply, '\n', len - 1), "one line");
    j = json_loads(reply, 0, NULL);
    cr_assert_not_null(j);
    cr_assert_eq(json_integer_value(json_object_get(j, "id")), 42);
    cr_assert(json_is_false(json_object_get(j, "ok")));
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "error"), "code")),
                     "unknown_command");
    json_decref(j);
    free(reply);
    ctl_request_clear(&req);

    reply = ctl_reply_ok(NULL, json_pack("{s:i}", "closed", 3), &len);
    cr_assert_str_eq(reply, "{\"id\":null,\"ok\":true,\"result\":{\"closed\":3}}\n");
    free(reply);
}

Test(ctl_proto, stream_head)
{
    char buf[128];
    json_t *id = json_string("a\"b");

    cr_assert_eq(ctl_reply_stream_head(buf, sizeof(buf), id),
                 (int)strlen("{\"id\":\"a\\\"b\",\"ok\":true,\"result\":{"));
    cr_assert_str_eq(buf, "{\"id\":\"a\\\"b\",\"ok\":true,\"result\":{");
    cr_assert_eq(ctl_reply_stream_head(buf, 10, id), -1);
    json_decref(id);
    ctl_reply_stream_head(buf, sizeof(buf), NULL);
    cr_assert_str_eq(buf, "{\"id\":null,\"ok\":true,\"result\":{");
}

Test(ctl_proto, time_format_and_parse)
{
    char buf[CTL_TIME_STRLEN];
    uint64_t ms;

    cr_assert_str_eq(ctl_time_format(0, buf), "1970-01-01T00:00:00.000Z");
    cr_assert_str_eq(ctl_time_format(1795796485123ULL, buf), "2026-11-27T16:21:25.123Z");
    cr_assert_str_eq(ctl_time_format(UINT64_MAX, buf), "9999-12-31T23:59:59.999Z");
    cr_assert_eq(ctl_time_parse("2026-11-27T16:21:25.123Z", &ms), 0);
    cr_assert_eq(ms, 1795796485123ULL);
    cr_assert_eq(ctl_time_parse("2026-11-27 16:21:25", &ms), 0);
    cr_assert_eq(ms, 1795796485000ULL);
    cr_assert_eq(ctl_time_parse("2026-11-27T16:21", &ms), 0);
    cr_assert_eq(ms, 1795796460000ULL);
    cr_assert_eq(ctl_time_parse("2026-11-27", &ms), 0);
    cr_assert_eq(ms, 1795737600000ULL);
    cr_assert_eq(ctl_time_parse("2026-11-27T16:21:25.1Z", &ms), 0);
    cr_assert_eq(ms, 1795796485100ULL);
    cr_assert_eq(ctl_time_parse("@1795796485", &ms), 0);
    cr_assert_eq(ms, 1795796485000ULL);
    ms = 7;
    cr_assert_eq(ctl_time_parse("2026-13-01", &ms), -1);
    cr_assert_eq(ctl_time_parse("2026-11-27T25:00", &ms), -1);
    cr_assert_eq(ctl_time_parse("2026-11-27x", &ms), -1);
    /* dates that do not exist are refused, not rolled over */
    cr_assert_eq(ctl_time_parse("2026-02-31", &ms), -1);
    cr_assert_eq(ctl_time_parse("2026-02-29", &ms), -1);
    cr_assert_eq(ctl_time_parse("2026-04-31", &ms), -1);
    cr_assert_eq(ctl_time_parse("2026-11-27T12:43:60Z", &ms), -1);
    cr_assert_eq(ctl_time_parse("2100-02-29", &ms), -1);
    cr_assert_eq(ctl_time_parse("yesterday", &ms), -1);
    cr_assert_eq(ctl_time_parse("2026-11-27T16:21:25.", &ms), -1);
    cr_assert_eq(ms, 7, "untouched on failure");
    cr_assert_eq(ctl_time_parse("2028-02-29", &ms), 0); /* leap years */
    cr_assert_eq(ctl_time_parse("2000-02-29", &ms), 0);
    cr_assert_eq(ctl_time_parse("2026-12-31T23:59:59.999Z", &ms), 0);
    cr_assert_eq(ms, 1798761599999ULL);
}

static struct nat_session sample_session(void)
{
    struct nat_session s;

    memset(&s, 0, sizeof(s));
    s.id = 17;
    s.key.proto = NAT_PROTO_UDP;
    nat_addr_parse(&s.key.client.addr, "127.0.0.9");
    s.key.client.port = 40001;
    nat_addr_parse(&s.key.dst.addr, "::1");
    s.key.dst.port = 9000;
    nat_addr_parse(&s.ext.addr, "127.0.0.1");
    s.ext.port = 24007;
    s.opened_at = 1795796485123ULL;
    s.last_seen = 1795796486000ULL;
    s.bytes_in = 1234;
    s.bytes_out = 99;
    s.state = NAT_STATE_ESTABLISHED;
    return s;
}

Test(ctl_proto, session_json_has_the_store_columns)
{
    static const char *const cols[] = {"id",           "proto",        "client_ip", "client_port",
                                       "nat_ip",       "nat_port",     "backend",   "backend_ip",
                                       "backend_port", "state",        "opened_at", "last_seen",
                                       "closed_at",    "close_reason", "bytes_in",  "bytes_out"};
    struct nat_session s = sample_session();
    char buf[CTL_SESSION_JSON_MAX];
    json_t *j;
    int n;

    n = ctl_session_format(buf, sizeof(buf), &s, "we\"b", -1, 0, NULL);
    cr_assert_gt(n, 0);
    cr_assert_eq((size_t)n, strlen(buf));
    j = json_loads(buf, 0, NULL);
    cr_assert_not_null(j, "valid JSON: %s", buf);
    cr_assert_eq(json_object_size(j), 16);
    for (size_t i = 0; i < 16; i++)
        cr_assert_not_null(json_object_get(j, cols[i]), "has %s", cols[i]);
    cr_assert_eq(json_integer_value(json_object_get(j, "id")), 17);
    cr_assert_str_eq(json_string_value(json_object_get(j, "proto")), "udp");
    cr_assert_str_eq(json_string_value(json_object_get(j, "client_ip")), "127.0.0.9");
    cr_assert_eq(json_integer_value(json_object_get(j, "client_port")), 40001);
    cr_assert_str_eq(json_string_value(json_object_get(j, "nat_ip")), "127.0.0.1");
    cr_assert_eq(json_integer_value(json_object_get(j, "nat_port")), 24007);
    cr_assert_str_eq(json_string_value(json_object_get(j, "backend")), "we\"b");
    cr_assert_str_eq(json_string_value(json_object_get(j, "backend_ip")), "::1");
    cr_assert_str_eq(json_string_value(json_object_get(j, "state")), "established");
    cr_assert_str_eq(json_string_value(json_object_get(j, "opened_at")),
                     "2026-11-27T16:21:25.123Z");
    cr_assert(json_is_null(json_object_get(j, "closed_at")));
    cr_assert(json_is_null(json_object_get(j, "close_reason")));
    cr_assert_eq(json_integer_value(json_object_get(j, "bytes_in")), 1234);
    json_decref(j);

    n = ctl_session_format(buf, sizeof(buf), &s, NULL, NAT_STATE_CLOSED, 1795796487000ULL,
                           "idle_timeout");
    j = json_loads(buf, 0, NULL);
    cr_assert_not_null(j);
    cr_assert(json_is_null(json_object_get(j, "backend")));
    cr_assert_str_eq(json_string_value(json_object_get(j, "state")), "closed");
    cr_assert_str_eq(json_string_value(json_object_get(j, "closed_at")),
                     "2026-11-27T16:21:27.000Z");
    cr_assert_str_eq(json_string_value(json_object_get(j, "close_reason")), "idle_timeout");
    json_decref(j);
    cr_assert_eq(ctl_session_format(buf, 40, &s, NULL, -1, 0, NULL), -1);
}

Test(ctl_proto, json_quote_escapes)
{
    char buf[64];

    cr_assert_eq(ctl_json_quote(buf, sizeof(buf), "a\"\\\n\x01z"), 20);
    cr_assert_str_eq(buf, "\"a\\\"\\\\\\u000a\\u0001z\"");
    cr_assert_eq(ctl_json_quote(buf, 4, "abcdef"), -1);
}

/* Feeds `data` into lb in pieces of `step` bytes; collects lines joined by '|'. */
static int feed(struct ctl_linebuf *lb, const char *data, size_t step, char *out, size_t outlen)
{
    size_t off = 0, len = strlen(data);
    int lines = 0;

    out[0] = '\0';
    while (off < len) {
        size_t avail, n;
        char *p = ctl_linebuf_space(lb, step, &avail);
        cr_assert_not_null(p);
        n = len - off < step ? len - off : step;
        cr_assert_geq(avail, n);
        memcpy(p, data + off, n);
        ctl_linebuf_commit(lb, n);
        off += n;
        for (;;) {
            char *line;
            size_t ll;
            int r = ctl_linebuf_next(lb, &line, &ll);
            if (r < 0)
                return r;
            if (r == 0)
                break;
            cr_assert_eq(strlen(line), ll);
            strncat(out, line, outlen - strlen(out) - 1);
            strncat(out, "|", outlen - strlen(out) - 1);
            lines++;
        }
    }
    return lines;
}

Test(ctl_proto, linebuf_whole_and_byte_by_byte)
{
    const char *data = "{\"cmd\":\"version\"}\n\r\nsecond\r\nthird\npartial";
    char out[256];

    for (size_t step = 1; step <= 64; step++) {
        struct ctl_linebuf lb;
        ctl_linebuf_init(&lb, 100);
        cr_assert_eq(feed(&lb, data, step, out, sizeof(out)), 4, "step %zu", step);
        cr_assert_str_eq(out, "{\"cmd\":\"version\"}||second|third|");
        cr_assert_eq(ctl_linebuf_pending(&lb), strlen("partial"));
        ctl_linebuf_free(&lb);
        ctl_linebuf_free(&lb);
    }
}

Test(ctl_proto, linebuf_refuses_an_overlong_line_before_its_newline)
{
    struct ctl_linebuf lb;
    char out[64], big[300];

    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    /* exactly at the limit: fine */
    ctl_linebuf_init(&lb, 10);
    cr_assert_eq(feed(&lb, "0123456789\n", 3, out, sizeof(out)), 1);
    ctl_linebuf_free(&lb);
    /* one over, newline never sent: refused as soon as it is known */
    ctl_linebuf_init(&lb, 10);
    cr_assert_eq(feed(&lb, "01234567890", 1, out, sizeof(out)), -EMSGSIZE);
    ctl_linebuf_free(&lb);
    ctl_linebuf_init(&lb, 100);
    cr_assert_eq(feed(&lb, big, 7, out, sizeof(out)), -EMSGSIZE);
    cr_assert_leq(lb.cap, 100 + 7 + 7, "memory stays bounded: %zu", lb.cap);
    ctl_linebuf_free(&lb);
}

Test(ctl_proto, port_range)
{
    uint16_t lo, hi;

    cr_assert_eq(ctl_port_range_parse("24000-25999", &lo, &hi), 0);
    cr_assert_eq(lo, 24000);
    cr_assert_eq(hi, 25999);
    cr_assert_eq(ctl_port_range_parse("80", &lo, &hi), 0);
    cr_assert_eq(lo, 80);
    cr_assert_eq(hi, 80);
    cr_assert_eq(ctl_port_range_parse("0", &lo, &hi), -1);
    cr_assert_eq(ctl_port_range_parse("", &lo, &hi), -1);
    cr_assert_eq(ctl_port_range_parse("1-65536", &lo, &hi), -1);
    cr_assert_eq(ctl_port_range_parse("+5", &lo, &hi), -1);
    cr_assert_eq(ctl_port_range_parse("5- 6", &lo, &hi), -1);
}

Test(ctl_proto, default_socket_path_rule)
{
    char buf[256], want[256];

    setenv("GW_SOCKET", "/tmp/x.sock", 1);
    cr_assert_str_eq(gw_default_socket_path(buf, sizeof(buf)), "/tmp/x.sock");
    cr_assert_null(gw_default_socket_path(buf, 5), "too long is NULL");
    setenv("GW_SOCKET", "", 1);
    setenv("XDG_RUNTIME_DIR", "/run/user/1234", 1);
    if (geteuid() == 0) {
        cr_assert_str_eq(gw_default_socket_path(buf, sizeof(buf)), "/run/gwd.sock");
    } else {
        snprintf(want, sizeof(want), "/run/user/1234/gwd-%u.sock", (unsigned)geteuid());
        cr_assert_str_eq(gw_default_socket_path(buf, sizeof(buf)), want);
        unsetenv("XDG_RUNTIME_DIR");
        snprintf(want, sizeof(want), "/tmp/gwd-%u.sock", (unsigned)geteuid());
        cr_assert_str_eq(gw_default_socket_path(buf, sizeof(buf)), want);
    }
    unsetenv("GW_SOCKET");
}

/* Found by ctl_fuzz_request: jansson's parse error quotes the input, and a
 * message that is not UTF-8 made the reply NULL (no answer at all). */
Test(ctl_proto, error_reply_with_bytes_that_are_not_utf8)
{
    size_t len = 0;
    char *reply = ctl_reply_error(NULL, CTL_ERR_BAD_JSON, "near '\xff\xfe' at column 3", &len);

    cr_assert_not_null(reply);
    cr_assert_str_eq(reply, "{\"id\":null,\"ok\":false,\"error\":{\"code\":\"bad_json\","
                            "\"message\":\"near '?" "?' at column 3\"}}\n");
    cr_assert_eq(len, strlen(reply));
    free(reply);
}

Test(ctl_proto, show_blocks_arguments)
{
    struct ctl_request req;
    struct ctl_error err;
    const char *line = "{\"cmd\":\"show blocks\",\"args\":{\"client\":\"10.1.0.0/16\","
                       "\"nat_port\":\"20010\",\"limit\":7}}";

    cr_assert_eq(ctl_request_parse(&req, line, strlen(line), &err), CTL_OK, "%s", err.message);
    cr_assert_eq(req.cmd, CTL_CMD_SHOW_BLOCKS);
    cr_assert(req.u.blocks.filter.has_client);
    cr_assert_eq(req.u.blocks.filter.client_plen, 96 + 16); /* over the 16-byte form */
    cr_assert(!req.u.blocks.filter.has_nat_ip);
    cr_assert_eq(req.u.blocks.filter.nat_port_lo, 20010);
    cr_assert_eq(req.u.blocks.filter.nat_port_hi, 20010);
    cr_assert_eq(req.u.blocks.limit, 7);
    ctl_request_clear(&req);
    line = "{\"cmd\":\"show blocks\"}";
    cr_assert_eq(ctl_request_parse(&req, line, strlen(line), &err), CTL_OK);
    cr_assert_eq(req.u.blocks.limit, CTL_LIMIT_DEFAULT);
    cr_assert(!req.u.blocks.filter.has_client);
    ctl_request_clear(&req);
}
