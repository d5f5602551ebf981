/* db_time_test.c - the store's time form: format, parse, round trips. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "db/db.h"

Test(db_time, formats_fixed_width_utc_ms)
{
    char buf[DB_TIME_STRLEN];
    cr_assert_str_eq(db_time_format(0, buf), "1970-01-01T00:00:00.000Z");
    cr_assert_str_eq(db_time_format(1795795200000ULL, buf), "2026-11-27T16:00:00.000Z");
    cr_assert_str_eq(db_time_format(1795795200000ULL + 5485123, buf), "2026-11-27T17:31:25.123Z");
    cr_assert_str_eq(db_time_format(951782400000ULL, buf), "2000-02-29T00:00:00.000Z");
    cr_assert_str_eq(db_time_format(UINT64_MAX, buf), "9999-12-31T23:59:59.999Z");
    cr_assert_eq(strlen(db_time_format(1, buf)), DB_TIME_STRLEN - 1);
}

Test(db_time, parses_the_accepted_forms)
{
    uint64_t ms = 0;
    cr_assert_eq(db_time_parse("2026-11-27T17:31:25.123Z", &ms), 0);
    cr_assert_eq(ms, 1795795200000ULL + 5485123);
    cr_assert_eq(db_time_parse("2026-11-27 17:31:25", &ms), 0);
    cr_assert_eq(ms, 1795795200000ULL + 5485000);
    cr_assert_eq(db_time_parse("2026-11-27T17:31:25.1", &ms), 0);
    cr_assert_eq(ms, 1795795200000ULL + 5485100);
    cr_assert_eq(db_time_parse("2026-11-27", &ms), 0);
    cr_assert_eq(ms, 1795737600000ULL);
    cr_assert_eq(db_time_parse("1795795200", &ms), 0);
    cr_assert_eq(ms, 1795795200000ULL);
    cr_assert_eq(db_time_parse("0", &ms), 0);
    cr_assert_eq(ms, 0);
}

Test(db_time, rejects_bad_input_and_leaves_output)
{
    const char *bad[] = {"",
                         "2026-13-01",
                         "2026-02-30",
                         "2026-11-27T24:00:00",
                         "2026-11-27T17:61:00",
                         "2026-11-27X",
                         "2026-11-27T17:31:25.",
                         "12:00:00",
                         "-5",
                         "2026-11-27T17:31:25Zjunk",
                         "1e9",
                         "2026-1-1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t ms = 42;
        cr_assert_eq(db_time_parse(bad[i], &ms), -EINVAL, "accepted \"%s\"", bad[i]);
        cr_assert_eq(ms, 42);
    }
    uint64_t ms = 42;
    cr_assert_eq(db_time_parse(NULL, &ms), -EINVAL);
}

Test(db_time, round_trips_and_sorts_as_text)
{
    char a[DB_TIME_STRLEN], b[DB_TIME_STRLEN];
    uint64_t prev = 0;
    for (uint64_t ms = 0; ms < 300000000000000ULL; ms = ms * 3 + 7919) {
        uint64_t back = 0;
        db_time_format(ms, a);
        if (ms <= 253402300799999ULL) {
            cr_assert_eq(db_time_parse(a, &back), 0, "%s", a);
            cr_assert_eq(back, ms, "%s", a);
        }
        db_time_format(prev, b);
        cr_assert(strcmp(b, a) <= 0, "%s > %s", b, a);
        prev = ms;
    }
}
