/*
 * ctl_config_test.c - the "control" section of gwd's JSON config: every key,
 * the defaults, errors naming the JSON path, unknown keys refused, the old
 * string form, show config's view of it (round trip), and the options
 * gw_control_start derives from it (config, then the environment on top).
 */
#include <criterion/criterion.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gateway/gw_control.h"
#include "gateway/gwd.h"

static char err[512];

#define BACKEND                                                                                    \
    "\"backends\":[{\"name\":\"web\",\"proto\":\"tcp\",\"servers\":[\"127.0.0.1:8080\"]}]"

static struct gw_config *parse_ok(const char *text)
{
    struct gw_config *cfg = NULL;
    int rc = gw_config_parse(text, &cfg, err, sizeof(err));

    cr_assert_eq(rc, 0, "parse failed: %s (%s)", err, text);
    cr_assert_not_null(cfg);
    return cfg;
}

/* `control` is the JSON text of the section. */
static void parse_bad(const char *control, const char *want)
{
    char text[1024];
    struct gw_config *cfg = NULL;

    snprintf(text, sizeof(text), "{" BACKEND ",\"control\":%s}", control);
    int rc = gw_config_parse(text, &cfg, err, sizeof(err));
    cr_assert_lt(rc, 0, "accepted: %s", text);
    cr_assert_null(cfg);
    cr_assert(strstr(err, want) != NULL, "error \"%s\" lacks \"%s\"", err, want);
}

static void unsetenv_all(void)
{
    static const char *const names[] = {"GW_CONTROL_MODE",    "GW_CONTROL_OWNER",
                                        "GW_CONTROL_GROUP",   "GW_CONTROL_MAX_CLIENTS",
                                        "GW_CONTROL_IDLE_MS", "GW_CONTROL_OUT_MAX"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        unsetenv(names[i]);
}

Test(ctl_config, defaults_without_a_section)
{
    struct gw_config *cfg = parse_ok("{" BACKEND "}");
    struct gw_control_opts o, d;

    cr_assert_null(cfg->control_path);
    cr_assert_eq(cfg->control_mode, 0660);
    cr_assert_null(cfg->control_owner);
    cr_assert_null(cfg->control_group);
    cr_assert_eq(cfg->control_max_clients, 64);
    cr_assert_eq(cfg->control_idle_ms, 60000);
    cr_assert_eq(cfg->control_max_output, 1024 * 1024);

    gw_control_opts_default(&d);
    gw_control_opts_default(&o);
    cr_assert_eq(gw_control_opts_from_config(&o, cfg), 0);
    cr_assert_eq(o.mode, d.mode);
    cr_assert_eq(o.owner, d.owner);
    cr_assert_eq(o.group, d.group);
    cr_assert_eq(o.max_clients, d.max_clients);
    cr_assert_eq(o.idle_ms, d.idle_ms);
    cr_assert_eq(o.out_max, d.out_max);
    gw_config_free(cfg);
}

Test(ctl_config, every_key)
{
    struct gw_config *cfg =
        parse_ok("{" BACKEND ",\"control\":{\"path\":\"/tmp/ctl-x.sock\",\"mode\":\"0600\","
                 "\"owner\":\"root\",\"group\":0,\"max_clients\":5,\"idle_timeout\":2.5,"
                 "\"max_output\":65536}}");
    struct gw_control_opts o;

    cr_assert_str_eq(cfg->control_path, "/tmp/ctl-x.sock");
    cr_assert_eq(cfg->control_mode, 0600);
    cr_assert_str_eq(cfg->control_owner, "root");
    cr_assert_str_eq(cfg->control_group, "0");
    cr_assert_eq(cfg->control_max_clients, 5);
    cr_assert_eq(cfg->control_idle_ms, 2500);
    cr_assert_eq(cfg->control_max_output, 65536);

    gw_control_opts_default(&o);
    cr_assert_eq(gw_control_opts_from_config(&o, cfg), 0);
    cr_assert_eq(o.mode, 0600);
    cr_assert_eq(o.owner, 0);
    cr_assert_eq(o.group, 0);
    cr_assert_eq(o.max_clients, 5);
    cr_assert_eq(o.idle_ms, 2500);
    cr_assert_eq(o.out_max, 65536);
    gw_config_free(cfg);
}

Test(ctl_config, mode_forms)
{
    struct gw_config *cfg = parse_ok("{" BACKEND ",\"control\":{\"mode\":\"640\"}}");
    cr_assert_eq(cfg->control_mode, 0640);
    gw_config_free(cfg);
    cfg = parse_ok("{" BACKEND ",\"control\":{\"mode\":\"0000\"}}");
    cr_assert_eq(cfg->control_mode, 0);
    gw_config_free(cfg);
    cfg = parse_ok("{" BACKEND ",\"control\":{\"mode\":\"0777\"}}");
    cr_assert_eq(cfg->control_mode, 0777);
    gw_config_free(cfg);
}

Test(ctl_config, null_owner_and_path_and_idle_zero)
{
    struct gw_config *cfg = parse_ok("{" BACKEND ",\"control\":{\"path\":null,\"owner\":null,"
                                     "\"group\":null,\"idle_timeout\":0}}");
    struct gw_control_opts o;

    cr_assert_null(cfg->control_path);
    cr_assert_null(cfg->control_owner);
    cr_assert_null(cfg->control_group);
    cr_assert_eq(cfg->control_idle_ms, 0, "0 = no idle timeout");
    gw_control_opts_default(&o);
    cr_assert_eq(gw_control_opts_from_config(&o, cfg), 0);
    cr_assert_eq(o.owner, (uid_t)-1);
    cr_assert_eq(o.group, (gid_t)-1);
    cr_assert_eq(o.idle_ms, 0);
    gw_config_free(cfg);
}

Test(ctl_config, the_string_form_is_the_path)
{
    struct gw_config *cfg = parse_ok("{" BACKEND ",\"control\":\"/tmp/ctl-y.sock\"}");

    cr_assert_str_eq(cfg->control_path, "/tmp/ctl-y.sock");
    cr_assert_eq(cfg->control_mode, 0660);
    gw_config_free(cfg);
    cfg = parse_ok("{" BACKEND ",\"control\":null}");
    cr_assert_null(cfg->control_path);
    gw_config_free(cfg);
}

Test(ctl_config, errors_name_the_json_path)
{
    parse_bad("{\"socket\":\"/x\"}", "control.socket: unknown key");
    parse_bad("{\"mode\":\"0668\"}", "control.mode: must be an octal mode");
    parse_bad("{\"mode\":\"01777\"}", "control.mode: must be an octal mode");
    parse_bad("{\"mode\":\"66\"}", "control.mode: must be an octal mode");
    parse_bad("{\"mode\":\"u+rw\"}", "control.mode: must be an octal mode");
    parse_bad("{\"mode\":432}", "control.mode: must be a string");
    parse_bad("{\"path\":\"\"}", "control.path: must be a non-empty string or null");
    parse_bad("{\"path\":7}", "control.path: must be a non-empty string or null");
    parse_bad("{\"owner\":\"no-such-user-gw\"}", "control.owner: no such user \"no-such-user-gw\"");
    parse_bad("{\"group\":\"no-such-group-gw\"}",
              "control.group: no such group \"no-such-group-gw\"");
    parse_bad("{\"owner\":-1}", "control.owner: must be a user name or a number");
    parse_bad("{\"group\":\"99999999999\"}", "control.group: must be a group name or a number");
    parse_bad("{\"owner\":true}", "control.owner: must be a user name, a number or null");
    parse_bad("{\"group\":\"\"}", "control.group: must be a group name, a number or null");
    parse_bad("{\"max_clients\":0}", "control.max_clients: must be between 1 and 100000");
    parse_bad("{\"max_clients\":100001}", "control.max_clients: must be between 1 and 100000");
    parse_bad("{\"max_clients\":\"5\"}", "control.max_clients: must be an integer");
    parse_bad("{\"idle_timeout\":-1}", "control.idle_timeout: must be between 0 and 86400");
    parse_bad("{\"idle_timeout\":\"60\"}", "control.idle_timeout: must be a number of seconds");
    parse_bad("{\"max_output\":100}", "control.max_output: must be between 4096 and");
    parse_bad("{\"max_output\":1.5}", "control.max_output: must be an integer");
    parse_bad("[1]", "control: must be a non-empty string or null");
    parse_bad("7", "control: must be a non-empty string or null");
}

Test(ctl_config, show_config_round_trip)
{
    struct gw_config *cfg =
        parse_ok("{" BACKEND ",\"control\":{\"path\":\"/tmp/ctl-z.sock\",\"mode\":\"0640\","
                 "\"owner\":0,\"group\":\"root\",\"max_clients\":7,\"idle_timeout\":1.5,"
                 "\"max_output\":8192}}");
    json_t *j = gw_config_to_json(cfg);
    json_t *c = json_incref(json_object_get(j, "control"));

    cr_assert(json_is_object(c), "show config has a control object");
    cr_assert_str_eq(json_string_value(json_object_get(c, "path")), "/tmp/ctl-z.sock");
    cr_assert_str_eq(json_string_value(json_object_get(c, "mode")), "0640");
    cr_assert_str_eq(json_string_value(json_object_get(c, "owner")), "0");
    cr_assert_str_eq(json_string_value(json_object_get(c, "group")), "root");
    cr_assert_eq(json_integer_value(json_object_get(c, "max_clients")), 7);
    cr_assert_eq(json_number_value(json_object_get(c, "idle_timeout")), 1.5);
    cr_assert_eq(json_integer_value(json_object_get(c, "max_output")), 8192);
    cr_assert_eq(json_object_size(c), 7);

    /* show config's output is a config that shows the same */
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    gw_config_free(cfg);
    cfg = parse_ok(text);
    free(text);
    j = gw_config_to_json(cfg);
    cr_assert(json_equal(c, json_object_get(j, "control")),
              "the section differs after a round trip");
    json_decref(c);
    json_decref(j);
    gw_config_free(cfg);

    /* the defaults, explicit */
    cfg = parse_ok("{" BACKEND "}");
    j = gw_config_to_json(cfg);
    c = json_object_get(j, "control");
    cr_assert(json_is_null(json_object_get(c, "path")));
    cr_assert_str_eq(json_string_value(json_object_get(c, "mode")), "0660");
    cr_assert(json_is_null(json_object_get(c, "owner")));
    cr_assert(json_is_null(json_object_get(c, "group")));
    cr_assert_eq(json_integer_value(json_object_get(c, "max_clients")), 64);
    cr_assert_eq(json_number_value(json_object_get(c, "idle_timeout")), 60);
    cr_assert_eq(json_integer_value(json_object_get(c, "max_output")), 1048576);
    json_decref(j);
    gw_config_free(cfg);
}

Test(ctl_config, the_environment_overrides_the_config, .init = unsetenv_all, .fini = unsetenv_all)
{
    struct gw_config *cfg = parse_ok(
        "{" BACKEND ",\"control\":{\"mode\":\"0640\",\"max_clients\":5,\"idle_timeout\":3}}");
    struct gw_control_opts o;

    setenv("GW_CONTROL_MODE", "0600", 1);
    setenv("GW_CONTROL_MAX_CLIENTS", "9", 1);
    gw_control_opts_default(&o);
    cr_assert_eq(gw_control_opts_from_config(&o, cfg), 0);
    gw_control_opts_from_env(&o);
    cr_assert_eq(o.mode, 0600);
    cr_assert_eq(o.max_clients, 9);
    cr_assert_eq(o.idle_ms, 3000, "not in the environment: the config's");
    gw_config_free(cfg);
}
