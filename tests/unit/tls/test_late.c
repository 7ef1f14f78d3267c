/* Late certificate requests (tls/late.c): what a server SSL reports when a
 * TLS 1.2 client declines the renegotiation, over a BIO pair, and how
 * tls_late_failure() reads what libevent hands on. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tests/support/testpki.h"
#include "tests/support/tlspair.h"
#include "tls/tls.h"

static char *pki(char *buf, size_t len, const char *file)
{
    char *path = testpki_path(buf, len, file);
    if (path == NULL)
        fail_msg("CERTMAPD_TEST_PKI is not set (ctest sets it; or run tests/pki/mkpki.sh DIR)");
    return path;
}

/* No certificate in the handshake; one location requires it, so it is asked late. */
static struct tls_ctx *late_server(void)
{
    static char cert[512], key[512], anchors[512], issuers[512];
    static char prefix[] = "/protected";
    struct conf c;
    char err[512] = "";
    memset(&c, 0, sizeof c);
    c.certificate = pki(cert, sizeof cert, "server-chain.pem");
    c.private_key = pki(key, sizeof key, "server.key");
    c.min_protocol = TLS1_2_VERSION;
    c.cert_mode = CERT_IGNORE;
    c.trust_anchors = pki(anchors, sizeof anchors, "trust-anchors.pem");
    c.trusted_issuers = pki(issuers, sizeof issuers, "trusted-issuers.pem");
    c.verify_depth = 4;
    c.require_client_auth_eku = true;
    c.locations[0].prefix = prefix;
    c.locations[0].prefix_len = strlen(prefix);
    c.locations[0].client_certificate = CERT_REQUIRE;
    c.n_locations = 1;
    struct tls_ctx *t = tls_ctx_new(&c, err, sizeof err);
    if (t == NULL)
        fail_msg("tls_ctx_new: %s", err);
    return t;
}

static void answered(void *arg)
{
    *(int *)arg += 1;
}

static void test_client_declines_renegotiation(void **state)
{
    (void)state;
    struct tls_ctx *t = late_server();
    SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(cctx);
    assert_int_equal(SSL_CTX_set_max_proto_version(cctx, TLS1_2_VERSION), 1);
    SSL_CTX_set_options(cctx, SSL_OP_NO_RENEGOTIATION); /* as Python's ssl.OP_NO_RENEGOTIATION */
    SSL *cl = SSL_new(cctx);
    SSL *sv = tls_conn_new(t);
    assert_non_null(cl);
    assert_non_null(sv);
    assert_int_equal(tlspair_handshake(cl, sv), 0);

    int calls = 0;
    assert_int_equal(tls_conn_request_cert(t, sv, answered, &calls), TLS_LATE_RENEGOTIATE);
    char buf[64];
    /* The client reads the HelloRequest and answers with a no_renegotiation alert. */
    int r = SSL_read(cl, buf, sizeof buf);
    assert_int_equal(SSL_get_error(cl, r), SSL_ERROR_WANT_READ);
    /* The server fails the connection itself: nothing more can be sent. */
    ERR_clear_error();
    r = SSL_read(sv, buf, sizeof buf);
    assert_int_equal(SSL_get_error(sv, r), SSL_ERROR_SSL);
    unsigned long e = ERR_peek_last_error();
    assert_int_equal(tls_late_failure(e, false), TLS_LATE_NO_RENEGOTIATION);
    assert_int_equal(calls, 0); /* no answer to wait for any more */
    ERR_clear_error();

    SSL_free(cl);
    SSL_free(sv);
    SSL_CTX_free(cctx);
    tls_ctx_free(t);
}

/* What libevent hands on: SSL_get_error's code when OpenSSL queued nothing,
 * else OpenSSL's latest error. */
static void test_failure_kinds(void **state)
{
    (void)state;
    assert_int_equal(tls_late_failure(0, true), TLS_LATE_CLOSED);
    assert_int_equal(tls_late_failure(SSL_ERROR_SYSCALL, true), TLS_LATE_CLOSED);
    assert_int_equal(tls_late_failure(SSL_ERROR_SYSCALL, false), TLS_LATE_CLOSED); /* a reset */
    assert_int_equal(
        tls_late_failure(ERR_PACK(ERR_LIB_SSL, 0, SSL_R_UNEXPECTED_EOF_WHILE_READING), false),
        TLS_LATE_CLOSED);
    assert_int_equal(tls_late_failure(ERR_PACK(ERR_LIB_SSL, 0, SSL_R_NO_RENEGOTIATION), false),
                     TLS_LATE_NO_RENEGOTIATION);
    assert_int_equal(tls_late_failure(ERR_PACK(ERR_LIB_SSL, 0, SSL_R_WRONG_VERSION_NUMBER), false),
                     TLS_LATE_BROKEN);
    assert_int_equal(
        tls_late_failure(ERR_PACK(ERR_LIB_SSL, 0, SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE), false),
        TLS_LATE_BROKEN); /* a fatal alert from the client */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_client_declines_renegotiation),
        cmocka_unit_test(test_failure_kinds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
