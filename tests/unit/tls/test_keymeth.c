/* tls/keymeth.c: once installed, certificate keys are decoded by OpenSSL's
 * built-in methods (no provider behind the key), and they still verify
 * signatures exactly: a genuine leaf verifies under its issuer, an altered
 * one does not. One process, in order: before, then after installing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "tests/support/testpki.h"
#include "tls/tls.h"

static X509 *load(const char *name)
{
    X509 *x = testpki_cert(name);
    assert_non_null(x);
    return x;
}

/* <x> decoded again from its DER, as libssl decodes what a client sends;
 * with <flip>, the last byte (in the signature) is altered first. */
static X509 *redecode(X509 *x, int flip)
{
    unsigned char *der = NULL;
    int len = i2d_X509(x, &der);
    assert_true(len > 0);
    der[len - 1] ^= (unsigned char)flip;
    const unsigned char *p = der;
    X509 *y = d2i_X509(NULL, &p, len);
    OPENSSL_free(der);
    assert_non_null(y);
    return y;
}

/* Decodes good.crt and issuing-ca.crt; checks where the keys come from and
 * that signatures verify as they must. */
static void check_decoding(int want_provider)
{
    X509 *leaf = load("good.crt"), *ica = load("issuing-ca.crt");
    X509 *again = redecode(leaf, 0), *altered = redecode(leaf, 1);
    EVP_PKEY *key = X509_get0_pubkey(again), *ikey = X509_get0_pubkey(ica);
    assert_non_null(key);
    assert_true(EVP_PKEY_is_a(key, "EC"));
    assert_int_equal(EVP_PKEY_get0_provider(key) != NULL, want_provider);
    assert_int_equal(EVP_PKEY_get0_provider(ikey) != NULL, want_provider);
    assert_int_equal(X509_verify(again, ikey), 1);
    assert_true(X509_verify(altered, ikey) <= 0);
    X509_free(altered);
    X509_free(again);
    X509_free(ica);
    X509_free(leaf);
}

static void test_providers_before_installing(void **state)
{
    (void)state;
    check_decoding(1);
}

static void test_builtin_after_installing(void **state)
{
    (void)state;
    assert_int_equal(tls_builtin_key_methods(), 1);
    assert_int_equal(tls_builtin_key_methods(), 1); /* idempotent */
    check_decoding(0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_providers_before_installing),
        cmocka_unit_test(test_builtin_after_installing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
