/*
 * gwctl_fmt.h - how gwctl shows things to people: readable units, aligned
 * tables, the NAT table, stats, backends and event lines. Pure: it turns
 * JSON results (or store rows) into text on a FILE, with `now` passed in so
 * the output is reproducible (golden tests).
 */
#ifndef GW_GWCTL_FMT_H
#define GW_GWCTL_FMT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

/* "512", "1.2K", "34K", "3.4M", "5.0G" (powers of 1024; one decimal below 10). */
char *ctl_fmt_bytes(uint64_t v, char *buf, size_t len);

/* "0s", "5s", "3m12s", "2h4m", "3d4h" (ms truncated to seconds). */
char *ctl_fmt_duration(uint64_t ms, char *buf, size_t len);

/* "IP:PORT", or "[IPv6]:PORT" when ip holds a ':'. */
char *ctl_fmt_endpoint(const char *ip, unsigned port, char *buf, size_t len);

/*
 * An aligned table: a header, rows of cells, columns separated by two spaces,
 * numeric columns right-aligned, the last column not padded.
 */
struct ctl_table {
    size_t ncols;
    const char *const *head; /* borrowed: ncols names */
    const bool *right;       /* borrowed: ncols flags, or NULL */
    char **cells;            /* owned: nrows * ncols strings */
    size_t nrows, cap;
};

/* Sets up an empty table. */
void ctl_table_init(struct ctl_table *t, size_t ncols, const char *const *head, const bool *right);
/* Adds a row of ncols cells (copied). Returns 0 or -ENOMEM. */
int ctl_table_add(struct ctl_table *t, const char *const *cells);
/* Prints the header and rows. */
void ctl_table_print(const struct ctl_table *t, FILE *out);
/* Frees the rows. Safe twice. */
void ctl_table_free(struct ctl_table *t);

/* One session, whatever its source (a control reply or a store row). */
struct ctl_session_view {
    const char *proto;
    const char *client_ip;
    unsigned client_port;
    const char *nat_ip;
    unsigned nat_port;
    const char *backend; /* pool name ("" when unknown) */
    const char *backend_ip;
    unsigned backend_port;
    const char *state;
    uint64_t opened_ms, last_ms, closed_ms; /* closed_ms 0 while open */
    uint64_t bytes_in, bytes_out;
};

/* The columns of `show nat`: PROTO CLIENT NAT BACKEND STATE AGE IDLE IN OUT. */
void ctl_nat_table_init(struct ctl_table *t);

/* Adds one session as a row; AGE and IDLE are counted to now_ms (a closed
 * session shows its lifetime as AGE and "-" as IDLE). Returns 0 or -ENOMEM. */
int ctl_nat_table_add(struct ctl_table *t, const struct ctl_session_view *s, uint64_t now_ms);

/* Reads a session JSON object (control protocol) into *v (strings borrowed
 * from obj). Returns 0, or -1 when a field is missing or of the wrong type. */
int ctl_session_view_from_json(struct ctl_session_view *v, const json_t *obj);

/* Prints the footer: "N sessions", or "N of TOTAL sessions" when fewer shown. */
void ctl_nat_footer(FILE *out, uint64_t shown, uint64_t total);

/* Prints a `show stats` result for people. */
void ctl_print_stats(FILE *out, const json_t *stats);

/* Prints a `show backends` result as a table of servers. */
void ctl_print_backends(FILE *out, const json_t *result);

/* Prints a `show blocks` result: CLIENT NAT SESSIONS HELD and a footer. */
void ctl_print_blocks(FILE *out, const json_t *result);

/* Prints one subscribe event as one line. Returns 0, or -1 when it is not an event. */
int ctl_print_event(FILE *out, const json_t *ev);

#endif /* GW_GWCTL_FMT_H */
