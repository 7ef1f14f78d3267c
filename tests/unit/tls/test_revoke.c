/* tls/revoke.c: the CRLs in use. CRLs made here with OpenSSL and signed by
 * the test PKI's issuing CA (base and delta, numbers, reasons, dates) are
 * written to a crl_file, and tls_rev_status() is asked about the PKI's
 * leaves; a file replaced under a running tls_ctx is taken up by the
 * revocation thread while a set taken before stays valid for its holder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "tests/support/testpki.h"
#include "tls/internal.h"
#include "tls/tls.h"

struct fixture {
    char dir[256], crl[300];
    char cert[512], key[512], anchors[512], issuers[512];
    EVP_PKEY *ca_key;
    X509 *ca, *good, *revoked;
};

static char *pki(char *buf, size_t len, const char *file)
{
    char *p = testpki_path(buf, len, file);
    if (p == NULL)
        fail_msg("CERTMAPD_TEST_PKI is not set (ctest sets it; or run tests/pki/mkpki.sh DIR)");
    return p;
}

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    snprintf(fx->dir, sizeof fx->dir, "/tmp/test_revoke.XXXXXX");
    assert_non_null(mkdtemp(fx->dir));
    snprintf(fx->crl, sizeof fx->crl, "%s/crl.pem", fx->dir);
    char path[512];
    FILE *f = fopen(pki(path, sizeof path, "issuing-ca.key"), "r");
    assert_non_null(f);
    fx->ca_key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(fx->ca_key);
    fx->ca = testpki_cert("issuing-ca.crt");
    fx->good = testpki_cert("good.crt");
    fx->revoked = testpki_cert("revoked.crt");
    assert_non_null(fx->ca);
    assert_non_null(fx->good);
    assert_non_null(fx->revoked);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    unlink(fx->crl);
    rmdir(fx->dir);
    EVP_PKEY_free(fx->ca_key);
    X509_free(fx->ca);
    X509_free(fx->good);
    X509_free(fx->revoked);
    free(fx);
    return 0;
}

struct entry {
    X509 *cert;
    int reason; /* CRL_REASON_* */
};

/* A CRL of issuing-ca, number <number>, a delta of <base> when >= 0, valid
 * from now+<from> to now+<to> seconds, listing <n> entries. */
static X509_CRL *make_crl(struct fixture *fx, long number, long base, long from, long to,
                          const struct entry *ents, size_t n)
{
    X509_CRL *crl = X509_CRL_new();
    assert_non_null(crl);
    assert_int_equal(X509_CRL_set_version(crl, X509_CRL_VERSION_2), 1);
    assert_int_equal(X509_CRL_set_issuer_name(crl, X509_get_subject_name(fx->ca)), 1);
    ASN1_TIME *t = ASN1_TIME_adj(NULL, time(NULL), 0, from);
    assert_int_equal(X509_CRL_set1_lastUpdate(crl, t), 1);
    ASN1_TIME_adj(t, time(NULL), 0, to);
    assert_int_equal(X509_CRL_set1_nextUpdate(crl, t), 1);
    for (size_t i = 0; i < n; i++) {
        X509_REVOKED *r = X509_REVOKED_new();
        assert_non_null(r);
        X509_REVOKED_set_serialNumber(r, X509_get_serialNumber(ents[i].cert));
        ASN1_TIME_adj(t, time(NULL), 0, from);
        X509_REVOKED_set_revocationDate(r, t);
        ASN1_ENUMERATED *e = ASN1_ENUMERATED_new();
        ASN1_ENUMERATED_set(e, ents[i].reason);
        assert_int_equal(X509_REVOKED_add1_ext_i2d(r, NID_crl_reason, e, 0, 0), 1);
        ASN1_ENUMERATED_free(e);
        assert_int_equal(X509_CRL_add0_revoked(crl, r), 1);
    }
    ASN1_TIME_free(t);
    ASN1_INTEGER *num = ASN1_INTEGER_new();
    ASN1_INTEGER_set(num, number);
    assert_int_equal(X509_CRL_add1_ext_i2d(crl, NID_crl_number, num, 0, 0), 1);
    if (base >= 0) {
        ASN1_INTEGER_set(num, base);
        assert_int_equal(X509_CRL_add1_ext_i2d(crl, NID_delta_crl, num, 1, 0), 1);
    }
    ASN1_INTEGER_free(num);
    AUTHORITY_KEYID *akid = AUTHORITY_KEYID_new();
    akid->keyid = ASN1_OCTET_STRING_dup(X509_get0_subject_key_id(fx->ca));
    assert_int_equal(X509_CRL_add1_ext_i2d(crl, NID_authority_key_identifier, akid, 0, 0), 1);
    AUTHORITY_KEYID_free(akid);
    X509_CRL_sort(crl);
    assert_true(X509_CRL_sign(crl, fx->ca_key, EVP_sha256()) > 0);
    return crl;
}

/* Writes <crls> (taken) to the fixture's crl_file, by rename. */
static void write_crls(struct fixture *fx, X509_CRL **crls, size_t n)
{
    char tmp[320];
    snprintf(tmp, sizeof tmp, "%s.new", fx->crl);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(PEM_write_X509_CRL(f, crls[i]), 1);
        X509_CRL_free(crls[i]);
    }
    assert_int_equal(fclose(f), 0);
    assert_int_equal(rename(tmp, fx->crl), 0);
}

static struct tls_ctx *ctx_for(struct fixture *fx, uint64_t refresh_ms, char *err, size_t errlen)
{
    struct conf c;
    memset(&c, 0, sizeof c);
    c.certificate = pki(fx->cert, sizeof fx->cert, "server-chain.pem");
    c.private_key = pki(fx->key, sizeof fx->key, "server.key");
    c.min_protocol = TLS1_2_VERSION;
    c.cert_mode = CERT_REQUIRE;
    c.trust_anchors = pki(fx->anchors, sizeof fx->anchors, "trust-anchors.pem");
    c.trusted_issuers = pki(fx->issuers, sizeof fx->issuers, "trusted-issuers.pem");
    c.crl_file = fx->crl;
    c.crl_refresh_ms = refresh_ms;
    c.verify_depth = 4;
    c.require_client_auth_eku = true;
    return tls_ctx_new(&c, err, errlen);
}

static struct tls_ctx *ctx_ok(struct fixture *fx)
{
    char err[1024] = "";
    struct tls_ctx *t = ctx_for(fx, 3600 * 1000, err, sizeof err);
    if (t == NULL)
        fail_msg("tls_ctx_new: %s", err);
    return t;
}

static void test_base_only(void **state)
{
    struct fixture *fx = *state;
    struct entry e[] = {{fx->revoked, CRL_REASON_KEY_COMPROMISE}};
    X509_CRL *crls[] = {make_crl(fx, 10, -1, -60, 3600, e, 1)};
    write_crls(fx, crls, 1);
    struct tls_ctx *t = ctx_ok(fx);
    assert_int_equal(tls_rev_status(t, fx->good), X509_V_OK);
    assert_int_equal(tls_rev_status(t, fx->revoked), X509_V_ERR_CERT_REVOKED);
    tls_ctx_free(t);
}

static void test_newest_base_wins(void **state)
{
    struct fixture *fx = *state;
    struct entry e[] = {{fx->good, CRL_REASON_KEY_COMPROMISE}};
    /* #11 revokes good; #10, listed after it, does not: the higher number counts */
    X509_CRL *crls[] = {make_crl(fx, 11, -1, -30, 3600, e, 1),
                        make_crl(fx, 10, -1, -60, 3600, NULL, 0)};
    write_crls(fx, crls, 2);
    struct tls_ctx *t = ctx_ok(fx);
    assert_int_equal(tls_rev_status(t, fx->good), X509_V_ERR_CERT_REVOKED);
    tls_ctx_free(t);
}

static void test_delta(void **state)
{
    struct fixture *fx = *state;
    struct entry base_e[] = {{fx->revoked, CRL_REASON_CERTIFICATE_HOLD}};
    /* the delta revokes good and lifts the hold on revoked */
    struct entry delta_e[] = {{fx->good, CRL_REASON_KEY_COMPROMISE},
                              {fx->revoked, CRL_REASON_REMOVE_FROM_CRL}};
    X509_CRL *crls[] = {make_crl(fx, 10, -1, -60, 3600, base_e, 1),
                        make_crl(fx, 11, 10, -30, 3600, delta_e, 2)};
    write_crls(fx, crls, 2);
    struct tls_ctx *t = ctx_ok(fx);
    assert_int_equal(tls_rev_status(t, fx->good), X509_V_ERR_CERT_REVOKED);
    assert_int_equal(tls_rev_status(t, fx->revoked), X509_V_OK);
    tls_ctx_free(t);
}

static void test_delta_not_for_this_base(void **state)
{
    struct fixture *fx = *state;
    struct entry delta_e[] = {{fx->good, CRL_REASON_KEY_COMPROMISE}};
    /* a delta of base #12 does not extend base #10; an expired delta counts for nothing */
    X509_CRL *crls[] = {make_crl(fx, 10, -1, -60, 3600, NULL, 0),
                        make_crl(fx, 13, 12, -30, 3600, delta_e, 1),
                        make_crl(fx, 11, 10, -7200, -3600, delta_e, 1)};
    write_crls(fx, crls, 3);
    struct tls_ctx *t = ctx_ok(fx);
    assert_int_equal(tls_rev_status(t, fx->good), X509_V_OK);
    tls_ctx_free(t);
}

static void test_unknown(void **state)
{
    struct fixture *fx = *state;
    X509_CRL *expired[] = {make_crl(fx, 10, -1, -7200, -60, NULL, 0)};
    write_crls(fx, expired, 1);
    struct tls_ctx *t = ctx_ok(fx);
    assert_int_equal(tls_rev_status(t, fx->good), X509_V_ERR_CRL_HAS_EXPIRED);
    tls_ctx_free(t);

    X509_CRL *future[] = {make_crl(fx, 10, -1, 3600, 7200, NULL, 0)};
    write_crls(fx, future, 1);
    t = ctx_ok(fx);
    assert_int_equal(tls_rev_status(t, fx->good), X509_V_ERR_CRL_NOT_YET_VALID);
    tls_ctx_free(t);

    /* only a delta: no base to extend */
    X509_CRL *delta[] = {make_crl(fx, 11, 10, -60, 3600, NULL, 0)};
    write_crls(fx, delta, 1);
    t = ctx_ok(fx);
    assert_int_equal(tls_rev_status(t, fx->good), X509_V_ERR_UNABLE_TO_GET_CRL);
    tls_ctx_free(t);
}

static void test_bad_signature_refused_at_start(void **state)
{
    struct fixture *fx = *state;
    X509_CRL *crl = make_crl(fx, 10, -1, -60, 3600, NULL, 0);
    /* a signature by another key, the authority key id still naming issuing-ca */
    EVP_PKEY *other = EVP_EC_gen("prime256v1");
    assert_non_null(other);
    assert_true(X509_CRL_sign(crl, other, EVP_sha256()) > 0);
    EVP_PKEY_free(other);
    X509_CRL *crls[] = {crl};
    write_crls(fx, crls, 1);
    char err[1024] = "";
    struct tls_ctx *t = ctx_for(fx, 3600 * 1000, err, sizeof err);
    assert_null(t);
    assert_non_null(strstr(err, "is not signed by that CA"));
}

struct ages {
    int n;
    long long number;
    bool delta;
};

static void age_cb(void *arg, const struct tls_crl_info *info)
{
    struct ages *a = arg;
    a->n++;
    a->number = info->number;
    a->delta = info->delta;
    assert_true(info->next_update > info->this_update);
    assert_non_null(strstr(info->issuer, "Corp Issuing CA"));
}

/* The revocation thread replaces the set; a set taken before stays valid for
 * its holder; an older file is not taken up. */
static void test_replaced_while_held(void **state)
{
    struct fixture *fx = *state;
    X509_CRL *first[] = {make_crl(fx, 10, -1, -60, 3600, NULL, 0)};
    write_crls(fx, first, 1);
    char err[1024] = "";
    struct tls_ctx *t = ctx_for(fx, 100, err, sizeof err);
    if (t == NULL)
        fail_msg("tls_ctx_new: %s", err);
    struct tls_crlset *held = tls_crlset_get(t);
    assert_non_null(held);
    assert_int_equal(tls_rev_status(t, fx->good), X509_V_OK);

    struct entry e[] = {{fx->good, CRL_REASON_KEY_COMPROMISE}};
    X509_CRL *second[] = {make_crl(fx, 11, -1, -30, 3600, e, 1)};
    write_crls(fx, second, 1);
    int waited = 0;
    while (tls_rev_status(t, fx->good) != X509_V_ERR_CERT_REVOKED && waited < 3000) {
        usleep(20 * 1000);
        waited += 20;
    }
    assert_int_equal(tls_rev_status(t, fx->good), X509_V_ERR_CERT_REVOKED);
    /* the old set, still held, is intact (ASan would see a use after free) */
    assert_int_equal(held->n, 1);
    X509_REVOKED *rev = NULL;
    assert_int_equal(X509_CRL_get0_by_cert(held->e[0]->crl, &rev, fx->good), 0);
    tls_crlset_put(held);

    struct ages a = {0};
    tls_crl_ages(t, age_cb, &a);
    assert_int_equal(a.n, 1);
    assert_int_equal(a.number, 11);
    assert_false(a.delta);

    /* #10 again: older than the one in use, not taken up */
    X509_CRL *older[] = {make_crl(fx, 10, -1, -60, 3600, NULL, 0)};
    write_crls(fx, older, 1);
    usleep(500 * 1000);
    assert_int_equal(tls_rev_status(t, fx->good), X509_V_ERR_CERT_REVOKED);
    memset(&a, 0, sizeof a);
    tls_crl_ages(t, age_cb, &a);
    assert_int_equal(a.number, 11);
    tls_ctx_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_base_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_newest_base_wins, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delta, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delta_not_for_this_base, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_signature_refused_at_start, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replaced_while_held, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
