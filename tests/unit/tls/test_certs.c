/* tls_certs_build: the certificate and chain files of `certmapd map`, read
 * from the test PKI and from hostile files written here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/support/testpki.h"
#include "tls/tls.h"

static char *pki(const char *file)
{
    static char buf[4][4096];
    static int next;
    char *path = testpki_path(buf[next++ % 4], sizeof buf[0], file);
    assert_non_null(path);
    return path;
}

static char tmpdir[] = "/tmp/test_certs.XXXXXX";

/* A file in this run's temporary directory with <text> in it; its path. */
static char *write_file(const char *name, const char *text, size_t len)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(fwrite(text, 1, len, fp), len);
    fclose(fp);
    return path;
}

/* The whole file <path> (NUL-terminated); *len its size. */
static char *slurp(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    char *buf = malloc(65536);
    assert_non_null(buf);
    *len = fread(buf, 1, 65535, fp);
    buf[*len] = '\0';
    fclose(fp);
    return buf;
}

/* The subject's CN of <x>, for comparisons. */
static const char *cn(X509 *x)
{
    static char buf[256];
    assert_true(
        X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, buf, sizeof buf) > 0);
    return buf;
}

static void refused(const char *cert, const char *chain, const char *want)
{
    struct tls_certs c;
    char err[1024] = "";
    assert_int_equal(tls_certs_build(&c, cert, chain, err, sizeof err), -1);
    assert_null(c.leaf);
    assert_null(c.chain);
    if (strstr(err, want) == NULL)
        fail_msg("error \"%s\" lacks \"%s\"", err, want);
}

static void test_leaf_alone_and_with_chains(void **state)
{
    struct tls_certs c;
    char err[1024];
    assert_int_equal(tls_certs_build(&c, pki("good.crt"), NULL, err, sizeof err), 0);
    assert_string_equal(cn(c.leaf), "alice");
    assert_non_null(c.chain);
    assert_int_equal(sk_X509_num(c.chain), 0);
    tls_certs_purge(&c);
    assert_null(c.leaf);
    tls_certs_purge(&c); /* purging twice is fine */

    /* further certificates of the leaf's file are its intermediates; a key is skipped */
    assert_int_equal(tls_certs_build(&c, pki("good.bundle.pem"), NULL, err, sizeof err), 0);
    assert_string_equal(cn(c.leaf), "alice");
    assert_int_equal(sk_X509_num(c.chain), 1);
    assert_string_equal(cn(sk_X509_value(c.chain, 0)), "Corp Issuing CA");
    tls_certs_purge(&c);

    /* then every certificate of the chain file, in order */
    assert_int_equal(
        tls_certs_build(&c, pki("good.chain.pem"), pki("trust-anchors.pem"), err, sizeof err), 0);
    assert_int_equal(sk_X509_num(c.chain), 3);
    assert_string_equal(cn(sk_X509_value(c.chain, 0)), "Corp Issuing CA");
    assert_string_equal(cn(sk_X509_value(c.chain, 1)), "Corp Root CA");
    assert_string_equal(cn(sk_X509_value(c.chain, 2)), "Other Root CA");
    tls_certs_purge(&c);
}

static void test_unreadable_and_undecodable(void **state)
{
    refused("/nonexistent/x.pem", NULL, "certificate /nonexistent/x.pem: cannot open");
    refused("/nonexistent/x.pem", NULL, "No such file or directory");
    refused(pki("good.crt"), "/nonexistent/c.pem", "chain /nonexistent/c.pem: cannot open");
    refused(pki("good.key"), NULL, "no certificate found");
    refused(write_file("empty.pem", "", 0), NULL, "no certificate found");
    refused(write_file("text.pem", "garbage\n", 8), NULL, "no certificate found");
    refused(pki("good.crt"), write_file("c.pem", "garbage\n", 8), "chain ");

    /* DER is not PEM */
    size_t len;
    char *der = NULL;
    FILE *p = popen("openssl x509 -outform DER -in \"$CERTMAPD_TEST_PKI/good.crt\"", "r");
    assert_non_null(p);
    der = malloc(8192);
    assert_non_null(der);
    len = fread(der, 1, 8192, p);
    assert_int_equal(pclose(p), 0);
    assert_true(len > 100);
    refused(write_file("good.der", der, len), NULL, "certificate ");
    free(der);

    /* a broken block is an error, not a shorter chain */
    char *pem = slurp(pki("good.chain.pem"), &len);
    char *second = strstr(pem + 1, "-----BEGIN CERTIFICATE-----");
    assert_non_null(second);
    second[40] = second[40] == '!' ? '?' : '!';
    refused(write_file("broken2.pem", pem, len), NULL, "cannot parse PEM");
    free(pem);

    /* a truncated block too */
    pem = slurp(pki("good.crt"), &len);
    refused(write_file("cut.pem", pem, len / 2), NULL, "certificate ");
    free(pem);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_leaf_alone_and_with_chains),
        cmocka_unit_test(test_unreadable_and_undecodable),
    };
    if (mkdtemp(tmpdir) == NULL)
        return 1;
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? rc : 1;
}
