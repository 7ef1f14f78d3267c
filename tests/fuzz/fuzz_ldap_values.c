/* ldap/entry.c's per-value checks and common/text.c's SID forms, as every
 * value of a directory entry meets them. The first byte picks the function,
 * the rest is the value: 0 dir_parse_int, 1 dir_parse_gentime,
 * 2 dir_text_dup, 3 cm_sid_from_binary (objectSid) and back, 4 cm_sid_to_binary
 * and back. Round trips must give the input again. */
#include <inttypes.h>
#include <lber.h>
#include <string.h>

#include "common/text.h"
#include "ldap/internal.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *v = (const char *)data + 1;
    size_t len = size - 1;
    switch (data[0] % 5) {
    case 0: {
        int64_t x;
        if (dir_parse_int(v, len, INT64_MIN, INT64_MAX, &x) == 0) {
            char buf[32];
            int n = snprintf(buf, sizeof buf, "%" PRId64, x);
            int64_t y;
            fuzz_assert(dir_parse_int(buf, (size_t)n, INT64_MIN, INT64_MAX, &y) == 0 && y == x,
                        "%s does not parse back", buf);
        }
        break;
    }
    case 1: {
        time_t t;
        (void)dir_parse_gentime(v, len, &t);
        break;
    }
    case 2: {
        struct berval bv = {.bv_len = len, .bv_val = (char *)(uintptr_t)v};
        char *s = dir_text_dup(&bv);
        if (s != NULL) {
            fuzz_assert(strlen(s) == len && memcmp(s, v, len) == 0, "dir_text_dup changed the value");
            fuzz_assert(cm_dirtext_valid(s, len), "dir_text_dup took invalid text");
        }
        free(s);
        break;
    }
    case 3: {
        char text[CM_SID_TEXT_MAX];
        if (cm_sid_from_binary((const unsigned char *)v, len, text, sizeof text) == 0) {
            fuzz_assert(strncmp(text, "S-1-", 4) == 0, "SID text %s", text);
            unsigned char bin[CM_SID_BIN_MAX];
            size_t blen = sizeof bin;
            fuzz_assert(cm_sid_to_binary(text, strlen(text), bin, &blen) == 0, "%s: no way back",
                        text);
            fuzz_assert(blen == len && memcmp(bin, v, len) == 0, "%s: another SID back", text);
        }
        break;
    }
    case 4: {
        unsigned char bin[CM_SID_BIN_MAX];
        size_t blen = sizeof bin;
        if (cm_sid_to_binary(v, len, bin, &blen) == 0) {
            char text[CM_SID_TEXT_MAX];
            fuzz_assert(cm_sid_from_binary(bin, blen, text, sizeof text) == 0, "no text back");
            fuzz_assert(strlen(text) == len && memcmp(text, v, len) == 0,
                        "another SID text back: %s", text);
        }
        break;
    }
    }
    return 0;
}
