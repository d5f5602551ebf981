/*
 * db_time.c - the store's time form: ISO-8601 UTC with milliseconds, fixed
 * width, so that times sort and compare as text in SQLite.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "db/db.h"

#define MS_PER_DAY 86400000ULL

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's method). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, unsigned *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (unsigned)(yoe + era * 400) + (*m <= 2);
}

static void put_digits(char *p, unsigned v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        p[i] = (char)('0' + v % 10);
        v /= 10;
    }
}

char *db_time_format(uint64_t ms, char buf[DB_TIME_STRLEN])
{
    ms = db_time_clamp(ms);
    uint64_t days = ms / MS_PER_DAY;
    uint64_t rem = ms % MS_PER_DAY;
    unsigned y, mo, d;
    civil_from_days((int64_t)days, &y, &mo, &d);
    /* "YYYY-MM-DDTHH:MM:SS.mmmZ" */
    put_digits(buf, y, 4);
    buf[4] = '-';
    put_digits(buf + 5, mo, 2);
    buf[7] = '-';
    put_digits(buf + 8, d, 2);
    buf[10] = 'T';
    put_digits(buf + 11, (unsigned)(rem / 3600000), 2);
    buf[13] = ':';
    put_digits(buf + 14, (unsigned)(rem / 60000 % 60), 2);
    buf[16] = ':';
    put_digits(buf + 17, (unsigned)(rem / 1000 % 60), 2);
    buf[19] = '.';
    put_digits(buf + 20, (unsigned)(rem % 1000), 3);
    buf[23] = 'Z';
    buf[24] = '\0';
    return buf;
}

/* Reads exactly n digits at *p into *v; advances *p. */
static int get_digits(const char **p, int n, unsigned *v)
{
    unsigned x = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return -1;
        x = x * 10 + (unsigned)(c - '0');
    }
    *p += n;
    *v = x;
    return 0;
}

static int expect(const char **p, char c)
{
    if (**p != c)
        return -1;
    (*p)++;
    return 0;
}

static unsigned days_in_month(unsigned y, unsigned m)
{
    static const unsigned char dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : dim[m - 1];
}

static int parse_epoch_seconds(const char *s, uint64_t *ms)
{
    uint64_t v = 0;
    size_t n = strlen(s);
    if (n == 0 || n > 12)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v * 1000 > DB_TIME_MAX_MS)
        return -EINVAL;
    *ms = v * 1000;
    return 0;
}

int db_time_parse(const char *s, uint64_t *ms)
{
    const char *p = s;
    unsigned y, mo, d, h = 0, mi = 0, sec = 0, frac = 0;

    if (s == NULL)
        return -EINVAL;
    if (strchr(s, '-') == NULL)
        return parse_epoch_seconds(s, ms);
    if (get_digits(&p, 4, &y) < 0 || expect(&p, '-') < 0 || get_digits(&p, 2, &mo) < 0 ||
        expect(&p, '-') < 0 || get_digits(&p, 2, &d) < 0)
        return -EINVAL;
    if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo))
        return -EINVAL;
    if (*p == 'T' || *p == ' ') {
        p++;
        if (get_digits(&p, 2, &h) < 0 || expect(&p, ':') < 0 || get_digits(&p, 2, &mi) < 0 ||
            expect(&p, ':') < 0 || get_digits(&p, 2, &sec) < 0)
            return -EINVAL;
        if (h > 23 || mi > 59 || sec > 59)
            return -EINVAL;
        if (*p == '.') {
            int n = 0;
            p++;
            while (*p >= '0' && *p <= '9' && n < 9) {
                if (n < 3)
                    frac = frac * 10 + (unsigned)(*p - '0');
                n++;
                p++;
            }
            if (n == 0)
                return -EINVAL;
            for (; n < 3; n++)
                frac *= 10;
        }
        if (*p == 'Z')
            p++;
    }
    if (*p != '\0')
        return -EINVAL;
    int64_t days = days_from_civil(y, mo, d);
    if (days < 0)
        return -EINVAL;
    *ms = (uint64_t)days * MS_PER_DAY + h * 3600000ULL + mi * 60000ULL + sec * 1000ULL + frac;
    return 0;
}
