/* The configuration parser: the input as a configuration file, through
 * conf_load (inih, the key table, every value's parser and the checks across
 * sections), then conf_free. Files a configuration names are opened if they
 * exist; none need to. */
#include <string.h>

#include "common/log.h"
#include "conf/conf.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool quiet;
    if (!quiet) {
        cm_log_set_level(CM_LOG_ERROR);
        quiet = true;
    }
    const char *path = fuzz_temp_file("conf", data, size);
    if (path == NULL)
        return 0;
    struct conf *c = NULL;
    char err[1024];
    err[0] = '\0';
    int rc = conf_load(path, &c, err, sizeof err);
    if (rc == 0)
        fuzz_assert(c != NULL, "conf_load succeeded without a snapshot");
    else
        fuzz_assert(c == NULL && err[0] != '\0', "conf_load failed without a reason");
    conf_free(c);
    return 0;
}
