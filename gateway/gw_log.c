/*
 * gw_log.c - leveled log lines to stderr, wall-clock time helpers.
 */
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "db/db.h"
#include "gwd.h"

int gw_log_level = GW_LOG_INFO;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

/* Wall-clock milliseconds since the epoch. */
uint64_t gw_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Level name to enum; -1 when unknown. */
int gw_log_level_parse(const char *name)
{
    for (int i = 0; i < (int)(sizeof(level_names) / sizeof(level_names[0])); i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    if (strcmp(name, "warning") == 0)
        return GW_LOG_WARN;
    return -1;
}

/* Enum to level name ("info" when out of range). */
const char *gw_log_level_name(int level)
{
    if (level < 0 || level > GW_LOG_DEBUG)
        return "info";
    return level_names[level];
}

/* One line to stderr, written with a single write so lines do not interleave. */
void gw_log(int level, const char *fmt, ...)
{
    char line[1024], ts[DB_TIME_STRLEN];
    va_list ap;
    int n;

    if (level > gw_log_level)
        return;
    n = snprintf(line, sizeof(line), "%s gwd[%s] ", db_time_format(gw_now_ms(), ts),
                 gw_log_level_name(level));
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof(line) - 2)
        n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    fwrite(line, 1, (size_t)n, stderr);
}

/* One message a second per limiter. */
bool gw_log_allow(struct gw_ratelimit *rl, uint64_t now_ms, uint64_t *suppressed)
{
    if (rl->last_ms && now_ms - rl->last_ms < 1000) {
        rl->suppressed++;
        return false;
    }
    *suppressed = rl->suppressed;
    rl->suppressed = 0;
    rl->last_ms = now_ms;
    return true;
}
