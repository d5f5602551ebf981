/*
 * sim_trace.h - the model's trace file: one flow per line,
 *   TIME,CLIENT,PROTO,DESTINATION,DURATION
 * TIME and DURATION are durations (a bare number is seconds; ms/s/m/h
 * suffixes allowed), TIME counted from the start of the trace and never
 * decreasing; CLIENT an IPv4/IPv6 address or a subscriber number N
 * (= 100.64.0.0 + N); PROTO tcp|udp; DESTINATION IP:PORT or [IPv6]:PORT.
 * Fields are separated by commas or blanks; '#' starts a comment; blank
 * lines and a first line starting with "time" (a header) are skipped.
 * Pure parser plus a line reader over a FILE.
 */
#ifndef GW_SIM_TRACE_H
#define GW_SIM_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* One flow of a trace. Addresses are 16 bytes, IPv4-mapped for IPv4 (the
 * layout of struct nat_addr). */
struct sim_trace_row {
    double time_ms;
    uint8_t client[16];
    uint8_t proto; /* 6 tcp, 17 udp */
    uint8_t dst[16];
    uint16_t dst_port;
    double duration_ms;
};

/* Result of sim_trace_parse_line. */
enum sim_trace_rc {
    SIM_TRACE_ROW = 0, /* *row filled */
    SIM_TRACE_SKIP,    /* blank, comment or header: nothing to do */
    SIM_TRACE_ERROR,   /* malformed: err says which field and why */
};

/*
 * Parses one line (NUL-terminated, with or without its newline). `first`
 * says whether it is the first line that is not blank or a comment (where a
 * header may be). Writes *row only for SIM_TRACE_ROW; err (errlen bytes)
 * only for SIM_TRACE_ERROR.
 */
enum sim_trace_rc sim_trace_parse_line(const char *line, bool first, struct sim_trace_row *row,
                                       char *err, size_t errlen);

/* Reads a trace file row by row and checks that time never goes back. */
struct sim_trace_reader {
    FILE *f;            /* borrowed */
    unsigned long line; /* number of the last line read */
    bool seen_row;      /* a row or header has been read */
    double last_time_ms;
    char *buf; /* owned: getline buffer */
    size_t cap;
};

/* Starts reading f. */
void sim_trace_reader_init(struct sim_trace_reader *r, FILE *f);

/*
 * The next row: returns 1 and *row, 0 at the end of the file, or -EINVAL
 * with "line N: ..." in err (malformed line, time going back, a line over
 * 4096 bytes) or -EIO.
 */
int sim_trace_next(struct sim_trace_reader *r, struct sim_trace_row *row, char *err, size_t errlen);

/* Frees the reader's buffer (not the FILE). */
void sim_trace_reader_free(struct sim_trace_reader *r);

#endif /* GW_SIM_TRACE_H */
