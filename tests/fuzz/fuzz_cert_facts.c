/* Certificate facts from DER: d2i_X509 then tls_facts_from_x509 (names in
 * RFC 4514 and altSecurityIdentities forms, SAN otherNames, rfc822 and DNS
 * names, the SID extension, serial forward and reversed, hashes). Checks:
 * serial_rev is serial_hex with its bytes reversed, hashes are hex of their
 * length, every name is a NUL-terminated string. */
#include <string.h>

#include <openssl/x509.h>

#include "tls/tls.h"
#include "tests/fuzz/fuzz.h"

static void check_hex(const char *s, size_t len, const char *what)
{
    fuzz_assert(strlen(s) == len, "%s: %zu hex digits, want %zu", what, strlen(s), len);
    for (size_t i = 0; i < len; i++)
        fuzz_assert((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'A' && s[i] <= 'F'),
                    "%s: not upper-case hex: %s", what, s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const unsigned char *p = data;
    X509 *x = d2i_X509(NULL, &p, (long)size);
    if (x == NULL)
        return 0;
    struct cert_facts *f = NULL;
    enum reason r = tls_facts_from_x509(x, &f);
    if (r == R_NONE) {
        fuzz_assert(f != NULL, "R_NONE without facts");
        fuzz_assert(f->subject && f->issuer && f->subject_asi && f->issuer_asi, "a name is NULL");
        fuzz_assert(f->serial_hex && f->serial_rev, "a serial is NULL");
        size_t n = strlen(f->serial_hex);
        fuzz_assert(n % 2 == 0 && n == strlen(f->serial_rev), "serial lengths %s / %s",
                    f->serial_hex, f->serial_rev);
        for (size_t i = 0; i < n; i += 2)
            fuzz_assert(f->serial_hex[i] == f->serial_rev[n - 2 - i] &&
                            f->serial_hex[i + 1] == f->serial_rev[n - 1 - i],
                        "serial_rev %s is not %s reversed", f->serial_rev, f->serial_hex);
        check_hex(f->sha256, 64, "sha256");
        check_hex(f->sha1, 40, "sha1");
        check_hex(f->pubkey_sha1, 40, "pubkey_sha1");
        if (f->ski != NULL)
            check_hex(f->ski, strlen(f->ski), "ski");
        for (size_t i = 0; i < f->n_upn; i++)
            fuzz_assert(f->upn[i] != NULL, "upn %zu NULL", i);
        for (size_t i = 0; i < f->n_rfc822; i++)
            fuzz_assert(f->rfc822[i] != NULL, "rfc822 %zu NULL", i);
        for (size_t i = 0; i < f->n_dns; i++)
            fuzz_assert(f->dns[i] != NULL, "dns %zu NULL", i);
        if (f->sid != NULL)
            fuzz_assert(strncmp(f->sid, "S-1-", 4) == 0, "sid %s", f->sid);
    } else {
        fuzz_assert(f == NULL, "facts with a refusal");
    }
    tls_facts_free(f);
    X509_free(x);
    return 0;
}
