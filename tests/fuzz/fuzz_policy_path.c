/* proxy_http_policy_path: the request target a location's policy is judged
 * on. A result is an absolute path, without NUL, without "." or ".."
 * segments, without empty segments or backslashes, and without the query;
 * or "*" for the target "*" alone. */
#include <string.h>

#include "proxy/http.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *p = proxy_http_policy_path((const char *)data, size);
    if (p == NULL)
        return 0;
    size_t n = strlen(p);
    if (strcmp(p, "*") == 0) { /* OPTIONS * */
        fuzz_assert(size == 1 && data[0] == '*', "\"*\" from another target");
        free(p);
        return 0;
    }
    fuzz_assert(strchr(p, '\\') == NULL, "a backslash survived: \"%s\"", p);
    fuzz_assert(strstr(p, "//") == NULL, "an empty segment survived: \"%s\"", p);
    fuzz_assert(n > 0 && p[0] == '/', "not absolute: \"%s\"", p);
    fuzz_assert(n <= size, "longer than the target: \"%s\"", p);
    const char *seg = p + 1;
    for (;;) {
        const char *slash = strchr(seg, '/');
        size_t len = slash ? (size_t)(slash - seg) : strlen(seg);
        fuzz_assert(!(len == 1 && seg[0] == '.') && !(len == 2 && seg[0] == '.' && seg[1] == '.'),
                    "a dot segment survived: \"%s\"", p);
        if (slash == NULL)
            break;
        seg = slash + 1;
    }
    free(p);
    return 0;
}
