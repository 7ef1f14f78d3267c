/* The cache of verified chains (tls/vcache.c): keyed by every certificate
 * sent, bounded by time and by the chain's own validity. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <openssl/pem.h>

#include "tests/support/testpki.h"
#include "tls/internal.h"

static X509 *load(const char *name)
{
    X509 *x = testpki_cert(name);
    assert_non_null(x);
    return x;
}

static STACK_OF(X509) *chain_of(X509 *issuer)
{
    STACK_OF(X509) *sk = sk_X509_new_null();
    assert_non_null(sk);
    assert_true(sk_X509_push(sk, issuer) > 0);
    return sk;
}

static void test_keys(void **state)
{
    (void)state;
    X509 *good = load("good.crt"), *other = load("otherissuer.crt");
    X509 *ica = load("issuing-ca.crt"), *oica = load("other-issuing-ca.crt");
    STACK_OF(X509) *real = chain_of(ica), *lookalike = chain_of(oica);
    unsigned char k1[32], k2[32], k3[32], k4[32];
    time_t na1, na2, na3, na4;

    assert_int_equal(tls_vcache_key(good, real, k1, &na1), 0);
    assert_int_equal(tls_vcache_key(good, real, k2, &na2), 0);
    assert_memory_equal(k1, k2, 32); /* the same chain, the same key */
    /* The same leaf with a look-alike intermediate (same subject name): another key. */
    assert_int_equal(tls_vcache_key(good, lookalike, k3, &na3), 0);
    assert_memory_not_equal(k1, k3, 32);
    /* The leaf alone: another key. */
    assert_int_equal(tls_vcache_key(good, NULL, k4, &na4), 0);
    assert_memory_not_equal(k1, k4, 32);
    assert_int_equal(tls_vcache_key(other, lookalike, k4, &na4), 0);
    assert_memory_not_equal(k3, k4, 32);

    /* The earliest notAfter of the chain: the leaf's, here. */
    struct tm tm;
    assert_int_equal(ASN1_TIME_to_tm(X509_get0_notAfter(good), &tm), 1);
    assert_int_equal(na1, timegm(&tm));

    sk_X509_free(real);
    sk_X509_free(lookalike);
    X509_free(good);
    X509_free(other);
    X509_free(ica);
    X509_free(oica);
}

static void test_hits(void **state)
{
    (void)state;
    struct tls_vcache *vc = tls_vcache_new();
    assert_non_null(vc);
    unsigned char a[32], b[32];
    memset(a, 0x11, sizeof a);
    memset(b, 0x11, sizeof b);
    b[31] = 0x12;
    assert_false(tls_vcache_hit(vc, a));
    tls_vcache_put(vc, a, time(NULL) + 3600);
    assert_true(tls_vcache_hit(vc, a));
    assert_false(tls_vcache_hit(vc, b)); /* same slot, another key */
    /* A chain whose validity has ended is never a hit, whatever the TTL. */
    tls_vcache_put(vc, b, time(NULL) - 1);
    assert_false(tls_vcache_hit(vc, b));
    tls_vcache_free(vc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_hits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
