/* The shared cache's values (mapping/shared.c), as Redis hands them back:
 * hostile bytes. The first byte chooses how the rest is read: even, as is
 * (the signature then almost never verifies: this fuzzes the framing); odd,
 * re-signed with the harness's key after its last space, as if whoever wrote
 * it held the key, so that every check after the signature is reached too.
 * A value that is accepted must be one certmapd could have written. */
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "common/log.h"
#include "common/text.h"
#include "mapping/mapping.h"
#include "tests/fuzz/fuzz.h"

#define RKEY "certmapd:v1:0123:ABCD"
#define NOW 1700000000000ull

static const unsigned char key[] = "fuzz-key-fuzz-key-fuzz-key-fuzz-key";

static void resign(char *v, size_t len)
{
    char *sp = NULL;
    for (size_t i = len; i > 0; i--) {
        if (v[i - 1] == ' ') {
            sp = v + i - 1;
            break;
        }
    }
    if (sp == NULL || (size_t)(v + len - sp) != 65)
        return;
    size_t body = (size_t)(sp - v), rlen = strlen(RKEY);
    unsigned char *msg = malloc(rlen + 1 + body), mac[32];
    unsigned int n = 0;
    if (msg == NULL)
        return;
    memcpy(msg, RKEY, rlen);
    msg[rlen] = '\n';
    memcpy(msg + rlen + 1, v, body);
    if (HMAC(EVP_sha256(), key, (int)(sizeof key - 1), msg, rlen + 1 + body, mac, &n) != NULL) {
        for (size_t i = 0; i < 32; i++)
            snprintf(sp + 1 + 2 * i, 3, "%02x", mac[i]);
    }
    free(msg);
}

static void field_ok(const char *s)
{
    fuzz_assert(s == NULL || cm_dirtext_valid(s, strlen(s)), "a field that is not directory text");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool quiet;
    if (!quiet) {
        cm_log_set_level(CM_LOG_ERROR);
        quiet = true;
    }
    if (size == 0)
        return 0;
    size_t len = size - 1;
    char *v = malloc(len + 1);
    if (v == NULL)
        return 0;
    memcpy(v, data + 1, len);
    v[len] = '\0';
    if (data[0] & 1)
        resign(v, len);
    struct map_result r;
    uint64_t ttl = 0;
    const char *why = NULL;
    if (map_shared_decode(v, len, RKEY, key, sizeof key - 1, NOW, &r, &ttl, &why) == 0) {
        fuzz_assert(ttl > 0 && ttl <= 25ull * 3600 * 1000, "ttl %llu", (unsigned long long)ttl);
        fuzz_assert(r.reason != R_DIRECTORY_UNAVAILABLE, "an outage accepted");
        fuzz_assert(r.reason != R_NONE || (r.dn != NULL && r.method != NULL),
                    "a mapping without its account");
        fuzz_assert(r.reason == R_NONE || (r.dn == NULL && r.upn == NULL && r.sid == NULL &&
                                           r.sam == NULL && r.method == NULL),
                    "a refusal with an account");
        field_ok(r.upn);
        field_ok(r.dn);
        field_ok(r.sid);
        field_ok(r.sam);
        field_ok(r.method);
        field_ok(r.detail);
        /* what is accepted encodes back to the very same bytes */
        size_t n2 = 0;
        char *again = map_shared_encode(&r, NOW + ttl, RKEY, key, sizeof key - 1, &n2);
        fuzz_assert(again != NULL && n2 == len && memcmp(again, v, len) == 0,
                    "an accepted value that certmapd would not have written");
        free(again);
        map_result_purge(&r);
    } else {
        fuzz_assert(why != NULL, "a refusal without a reason");
        fuzz_assert(r.dn == NULL && r.upn == NULL && r.detail == NULL, "a refusal with fields");
    }
    free(v);
    return 0;
}
