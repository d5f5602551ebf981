/*
 * gw_fuzz_config.c - libFuzzer target for gwd's configuration parser: any
 * input is refused with a message or accepted; an accepted configuration
 * goes back to JSON and must parse again to the same JSON.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/gwd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    struct gw_config *cfg = NULL, *again = NULL;
    char *text = malloc(size + 1);

    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    gw_log_level = GW_LOG_ERROR;
    if (gw_config_parse(text, &cfg, err, sizeof(err)) != 0) {
        if (cfg || err[0] == '\0')
            abort(); /* refused: no config, and a reason */
        free(text);
        return 0;
    }
    json_t *j = gw_config_to_json(cfg);
    char *dump = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (!dump || gw_config_parse(dump, &again, err, sizeof(err)) != 0)
        abort(); /* what gwd prints as its configuration must load again */
    json_t *j2 = gw_config_to_json(again);
    if (!json_equal(j, j2))
        abort();
    json_decref(j2);
    json_decref(j);
    free(dump);
    gw_config_free(again);
    gw_config_free(cfg);
    free(text);
    return 0;
}
