/*
 * sim_dist.h - the statistics of the model: holding-time distributions,
 * the Erlang-B loss formula, batch-means confidence intervals. Pure maths,
 * no I/O.
 */
#ifndef GW_SIM_DIST_H
#define GW_SIM_DIST_H

#include <stddef.h>
#include <stdint.h>

#include "sim/sim_util.h"

enum sim_dist_kind {
    SIM_DIST_EXP = 0, /* exponential with the given mean */
    SIM_DIST_FIXED,   /* always the mean */
    SIM_DIST_PARETO,  /* Pareto (heavy tail) with the given mean and shape alpha > 1 */
};

/* A distribution of durations in milliseconds. */
struct sim_dist {
    enum sim_dist_kind kind;
    double mean_ms;
    double alpha; /* Pareto shape; unused otherwise */
};

/*
 * Parses "exp:MEAN", "fixed:MEAN" or "pareto:MEAN[:ALPHA]" (MEAN a duration
 * as sim_parse_duration_ms reads it, > 0; ALPHA > 1, default 1.5). Returns 0
 * and *d, or -EINVAL with a sentence in err (errlen bytes).
 */
int sim_dist_parse(const char *s, struct sim_dist *d, char *err, size_t errlen);

/* Draws one duration (ms, > 0) from d. */
double sim_dist_sample(const struct sim_dist *d, struct sim_rng *r);

/* An exponential draw with mean `mean` (same unit back). */
double sim_exp_sample(double mean, struct sim_rng *r);

/* "exp", "fixed", "pareto". */
const char *sim_dist_name(enum sim_dist_kind k);

/*
 * Erlang-B: the probability that an arrival finds all `n` servers busy when
 * the offered load is `a` Erlangs (Poisson arrivals, any holding-time
 * distribution with that mean). Uses the stable recursion
 * B(0)=1, B(k)=a*B(k-1)/(k+a*B(k-1)). n = 0 gives 1; a <= 0 gives 0.
 */
double sim_erlang_b(uint64_t n, double a);

/* The two-sided Student t quantile for confidence `conf` (0.95 or 0.99) with
 * `df` degrees of freedom (>= 1; large df gives the normal quantile). */
double sim_t_quantile(double conf, unsigned df);

/*
 * Batch means: the mean of `n` batch values and the half-width of its
 * two-sided confidence interval at `conf` (0.95 or 0.99). n >= 2.
 */
void sim_batch_ci(const double *v, size_t n, double conf, double *mean, double *half);

#endif /* GW_SIM_DIST_H */
