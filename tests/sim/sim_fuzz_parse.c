/*
 * sim_fuzz_parse.c - libFuzzer harness for gwsim's parsers: the trace reader
 * over the whole input (many lines), one trace line, durations, numbers,
 * port ranges, socket addresses and holding-time distributions. Any crash,
 * leak or sanitizer report is a bug.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim/sim_dist.h"
#include "sim/sim_trace.h"
#include "sim/sim_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    char err[256];
    struct sim_trace_row row;
    struct sim_dist d;
    struct sockaddr_storage ss;
    socklen_t sl;
    double ms;
    uint64_t u;
    uint16_t lo, hi;

    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    if (size > 0) {
        FILE *f = fmemopen(s, size, "r");
        if (f != NULL) {
            struct sim_trace_reader rd;
            int rc, rows = 0;
            sim_trace_reader_init(&rd, f);
            while ((rc = sim_trace_next(&rd, &row, err, sizeof(err))) == 1 && rows < 100000)
                rows++;
            sim_trace_reader_free(&rd);
            fclose(f);
        }
    }
    sim_trace_parse_line(s, true, &row, err, sizeof(err));
    sim_parse_duration_ms(s, &ms);
    sim_parse_u64(s, 0, UINT64_MAX, &u);
    sim_parse_double(s, -1e9, 1e9, &ms);
    sim_parse_port_range(s, &lo, &hi);
    if (sim_parse_sockaddr(s, &ss, &sl) == 0) {
        char buf[SIM_ADDR_STRLEN];
        sim_sockaddr_format((struct sockaddr *)&ss, buf);
    }
    if (sim_dist_parse(s, &d, err, sizeof(err)) == 0) {
        struct sim_rng r;
        sim_rng_seed(&r, size);
        for (int i = 0; i < 4; i++)
            (void)sim_dist_sample(&d, &r);
    }
    free(s);
    return 0;
}
