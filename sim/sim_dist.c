/*
 * sim_dist.c - distributions, Erlang-B and confidence intervals.
 */
#include "sim/sim_dist.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

const char *sim_dist_name(enum sim_dist_kind k)
{
    switch (k) {
    case SIM_DIST_EXP:
        return "exp";
    case SIM_DIST_FIXED:
        return "fixed";
    case SIM_DIST_PARETO:
        return "pareto";
    }
    return "?";
}

int sim_dist_parse(const char *s, struct sim_dist *d, char *err, size_t errlen)
{
    char buf[128];
    char *mean, *alpha;
    struct sim_dist out = {.alpha = 1.5};

    if (s == NULL || strlen(s) >= sizeof(buf)) {
        snprintf(err, errlen, "expected exp:MEAN, fixed:MEAN or pareto:MEAN[:ALPHA]");
        return -EINVAL;
    }
    strcpy(buf, s);
    mean = strchr(buf, ':');
    if (mean == NULL) {
        snprintf(err, errlen, "'%s': expected exp:MEAN, fixed:MEAN or pareto:MEAN[:ALPHA]", s);
        return -EINVAL;
    }
    *mean++ = '\0';
    alpha = strchr(mean, ':');
    if (alpha != NULL)
        *alpha++ = '\0';
    if (strcmp(buf, "exp") == 0)
        out.kind = SIM_DIST_EXP;
    else if (strcmp(buf, "fixed") == 0)
        out.kind = SIM_DIST_FIXED;
    else if (strcmp(buf, "pareto") == 0)
        out.kind = SIM_DIST_PARETO;
    else {
        snprintf(err, errlen, "'%s': unknown distribution (exp, fixed, pareto)", buf);
        return -EINVAL;
    }
    if (sim_parse_duration_ms(mean, &out.mean_ms) < 0 || out.mean_ms <= 0) {
        snprintf(err, errlen, "'%s': the mean must be a positive duration (e.g. 60s, 250ms)", mean);
        return -EINVAL;
    }
    if (alpha != NULL) {
        if (out.kind != SIM_DIST_PARETO) {
            snprintf(err, errlen, "only pareto takes a shape (pareto:MEAN:ALPHA)");
            return -EINVAL;
        }
        if (sim_parse_double(alpha, 1.0001, 100.0, &out.alpha) < 0) {
            snprintf(err, errlen, "'%s': the Pareto shape must be a number in (1, 100]", alpha);
            return -EINVAL;
        }
    }
    *d = out;
    return 0;
}

double sim_exp_sample(double mean, struct sim_rng *r)
{
    return -mean * log(sim_rng_unit(r));
}

double sim_dist_sample(const struct sim_dist *d, struct sim_rng *r)
{
    switch (d->kind) {
    case SIM_DIST_EXP:
        return sim_exp_sample(d->mean_ms, r);
    case SIM_DIST_FIXED:
        return d->mean_ms;
    case SIM_DIST_PARETO: {
        double xm = d->mean_ms * (d->alpha - 1.0) / d->alpha;
        return xm / pow(sim_rng_unit(r), 1.0 / d->alpha);
    }
    }
    return d->mean_ms;
}

double sim_erlang_b(uint64_t n, double a)
{
    double b = 1.0;

    if (a <= 0)
        return n == 0 ? 1.0 : 0.0;
    for (uint64_t k = 1; k <= n; k++)
        b = a * b / ((double)k + a * b);
    return b;
}

double sim_t_quantile(double conf, unsigned df)
{
    /* Two-sided quantiles t_{1-(1-conf)/2, df}. */
    static const double t95[] = {0,     12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365,
                                 2.306, 2.262,  2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
                                 2.120, 2.110,  2.101, 2.093, 2.086, 2.080, 2.074, 2.069,
                                 2.064, 2.060,  2.056, 2.052, 2.048, 2.045, 2.042};
    static const double t99[] = {0,     63.657, 9.925, 5.841, 4.604, 4.032, 3.707, 3.499,
                                 3.355, 3.250,  3.169, 3.106, 3.055, 3.012, 2.977, 2.947,
                                 2.921, 2.898,  2.878, 2.861, 2.845, 2.831, 2.819, 2.807,
                                 2.797, 2.787,  2.779, 2.771, 2.763, 2.756, 2.750};
    if (df == 0)
        df = 1;
    if (conf >= 0.99)
        return df <= 30 ? t99[df] : df <= 60 ? 2.660 : 2.576;
    return df <= 30 ? t95[df] : df <= 60 ? 2.000 : 1.960;
}

void sim_batch_ci(const double *v, size_t n, double conf, double *mean, double *half)
{
    double m = 0, ss = 0;

    for (size_t i = 0; i < n; i++)
        m += v[i];
    m /= (double)n;
    for (size_t i = 0; i < n; i++)
        ss += (v[i] - m) * (v[i] - m);
    *mean = m;
    *half = n < 2 ? INFINITY
                  : sim_t_quantile(conf, (unsigned)(n - 1)) * sqrt(ss / (double)(n - 1)) /
                        sqrt((double)n);
}
