/*
 * sim_svg.h - a hand-written SVG chart of a model run: two panels sharing
 * the time axis (live mappings, and TCP and UDP ports in use each against
 * the pool size; refusals per interval). A standalone file a browser shows as is.
 */
#ifndef GW_SIM_SVG_H
#define GW_SIM_SVG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "sim/sim_model.h"

struct sim_svg_info {
    const char *title;    /* borrowed; escaped on output */
    const char *subtitle; /* borrowed; may be NULL */
    uint64_t ports_total; /* drawn as a dashed capacity line; 0 = none */
};

/* Writes the chart of `n` samples (n may be 0) to f. Returns 0, or -EIO when
 * a write failed. */
int sim_svg_write(FILE *f, const struct sim_model_sample *s, size_t n,
                  const struct sim_svg_info *info);

#endif /* GW_SIM_SVG_H */
