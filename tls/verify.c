/* Client-certificate policy: the chain check run in the handshake, and the
 * verdict given per request (which also covers resumed sessions, where no
 * chain check runs). */
#include "tls/internal.h"
#include "tls/tls.h"

#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "common/log.h"

void tls_name_for_log(const X509_NAME *name, char *buf, size_t len)
{
    if (len == 0)
        return;
    buf[0] = '\0';
    BIO *b = BIO_new(BIO_s_mem());
    /* XN_FLAG_RFC2253 escapes control and non-ASCII bytes, so a hostile name
     * cannot forge log lines. */
    if (b == NULL || name == NULL || X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253) < 0) {
        /* e.g. invalid UTF-8: X509_NAME_oneline escapes byte by byte */
        if (name == NULL || X509_NAME_oneline(name, buf, (int)len) == NULL)
            snprintf(buf, len, "(unprintable name)");
        goto done;
    }
    int n = BIO_read(b, buf, (int)len - 1);
    buf[n > 0 ? n : 0] = '\0';
    if (BIO_pending(b) > 0 && len > 4)
        memcpy(buf + len - 4, "...", 4);
done:
    BIO_free(b);
    ERR_clear_error();
}

enum reason tls_reason_from_verify(long code)
{
    switch (code) {
    case X509_V_OK:
        return R_NONE;
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CERT_NOT_YET_VALID:
        return R_CERT_EXPIRED;
    case X509_V_ERR_CERT_REVOKED:
        return R_CERT_REVOKED;
    case X509_V_ERR_INVALID_PURPOSE:
        return R_CERT_BAD_USAGE;
    case X509_V_ERR_APPLICATION_VERIFICATION:
        return R_ISSUER_NOT_ALLOWED;
    default:
        /* including UNABLE_TO_GET_CRL, CRL_HAS_EXPIRED, CRL_NOT_YET_VALID and
         * CRL_SIGNATURE_FAILURE: revocation status unknown is untrusted */
        return R_CERT_UNTRUSTED;
    }
}

static bool is_crl_problem(int code)
{
    return code == X509_V_ERR_UNABLE_TO_GET_CRL || code == X509_V_ERR_CRL_HAS_EXPIRED ||
           code == X509_V_ERR_CRL_NOT_YET_VALID || code == X509_V_ERR_CRL_SIGNATURE_FAILURE;
}

static void log_refusal(X509 *leaf, int code, const char *why)
{
    char subject[512], issuer[512];
    tls_name_for_log(X509_get_subject_name(leaf), subject, sizeof subject);
    tls_name_for_log(X509_get_issuer_name(leaf), issuer, sizeof issuer);
    if (is_crl_problem(code)) /* said once per CA by tls_rev_status() */
        log_debug("revocation status unknown for %s: no current CRL from %s (%s)", subject, issuer,
                  why);
    else
        log_info("client certificate refused (%s): subject %s, issuer %s: %s",
                 reason_name(tls_reason_from_verify(code)), subject, issuer, why);
}

/* RFC 5280 reads an absent EKU extension as "any purpose". We refuse it
 * anyway: certificates meant for logon carry clientAuth (Windows CAs' user
 * templates do), and IIS, which this replaces, refuses them too. */
static bool has_client_auth_eku(X509 *x)
{
    return (X509_get_extension_flags(x) & EXFLAG_XKUSAGE) != 0 &&
           (X509_get_extended_key_usage(x) & XKU_SSL_CLIENT) != 0;
}

static bool issuer_allowed(const struct tls_ctx *t, X509 *issuer)
{
    if (t->issuers == NULL)
        return true;
    /* By certificate, not by name: another CA may carry the same name. */
    for (int i = 0; issuer != NULL && i < sk_X509_num(t->issuers); i++)
        if (X509_cmp(issuer, sk_X509_value(t->issuers, i)) == 0)
            return true;
    return false;
}

int tls_verify_cb(X509_STORE_CTX *xs, void *arg)
{
    struct tls_ctx *t = arg;
    X509 *leaf = X509_STORE_CTX_get0_cert(xs);
    STACK_OF(X509) *peer = X509_STORE_CTX_get0_untrusted(xs);
    STACK_OF(X509) *untrusted = NULL;
    X509_STORE_CTX *v = NULL;
    int code = X509_V_ERR_UNSPECIFIED;
    const char *why = NULL;

    if (leaf == NULL)
        goto done;
    unsigned char key[32];
    time_t not_after = 0;
    bool keyed = tls_vcache_key(leaf, peer, key, &not_after) == 0;
    if (keyed && tls_vcache_hit(t->vcache, key)) {
        code = X509_V_OK; /* this very chain verified minutes ago (see tls/vcache.c) */
        goto done;
    }
    /* The peer's own chain first, so that the issuer it names is the one
     * tried first; then the trusted issuers, for clients sending only a leaf. */
    untrusted = peer != NULL ? sk_X509_dup(peer) : sk_X509_new_null();
    if (untrusted == NULL)
        goto done;
    for (int i = 0; t->issuers != NULL && i < sk_X509_num(t->issuers); i++)
        if (!sk_X509_push(untrusted, sk_X509_value(t->issuers, i)))
            goto done;
    v = X509_STORE_CTX_new();
    if (v == NULL || X509_STORE_CTX_init(v, t->store, leaf, untrusted) != 1)
        goto done;
    if (X509_verify_cert(v) != 1) {
        code = X509_STORE_CTX_get_error(v);
        if (code == X509_V_OK)
            code = X509_V_ERR_UNSPECIFIED;
        why = X509_verify_cert_error_string(code);
        goto done;
    }
    STACK_OF(X509) *chain = X509_STORE_CTX_get0_chain(v);
    /* A leaf that is itself an anchor has no issuer in the chain: refused. */
    X509 *issuer = sk_X509_num(chain) > 1 ? sk_X509_value(chain, 1) : NULL;
    if (!issuer_allowed(t, issuer)) {
        code = X509_V_ERR_APPLICATION_VERIFICATION;
        why = "the direct issuer is not one of trusted_issuers";
        goto done;
    }
    if (t->require_eku && !has_client_auth_eku(leaf)) {
        code = X509_V_ERR_INVALID_PURPOSE;
        why = "no Client Authentication extended key usage";
        goto done;
    }
    code = X509_V_OK;
    X509_STORE_CTX_set0_verified_chain(xs, X509_STORE_CTX_get1_chain(v));
    if (keyed)
        tls_vcache_put(t->vcache, key, not_after);
done:
    if (code != X509_V_OK && leaf != NULL)
        log_refusal(leaf, code, why != NULL ? why : "verification could not run");
    /* OpenSSL copies this into the SSL and its session: SSL_get_verify_result()
     * gives it back after resumption, when this callback does not run. */
    X509_STORE_CTX_set_error(xs, code);
    X509_STORE_CTX_free(v);
    sk_X509_free(untrusted);
    ERR_clear_error();
    return 1;
}

/* Validity against the clock now: a keep-alive connection or a resumed
 * session may outlive the certificate. */
static int check_validity_now(X509 *leaf)
{
    int nb = X509_cmp_current_time(X509_get0_notBefore(leaf));
    int na = X509_cmp_current_time(X509_get0_notAfter(leaf));
    if (nb == 0)
        return X509_V_ERR_ERROR_IN_CERT_NOT_BEFORE_FIELD;
    if (na == 0)
        return X509_V_ERR_ERROR_IN_CERT_NOT_AFTER_FIELD;
    if (nb > 0)
        return X509_V_ERR_CERT_NOT_YET_VALID;
    if (na < 0)
        return X509_V_ERR_CERT_HAS_EXPIRED;
    return X509_V_OK;
}

/* What holds now for a certificate whose chain verified: validity,
 * revocation, then its facts (names with NUL bytes or bad UTF-8 refused). */
static enum reason verdict_now(struct tls_ctx *t, X509 *leaf, struct cert_facts **facts)
{
    int code = check_validity_now(leaf);
    if (code == X509_V_OK && t->crl_check) {
        /* the revocation check of the CRLs in use now: the handshake's check
         * may be long past (keep-alive) or never ran here (resumption) */
        code = tls_rev_status(t, leaf);
        if (is_crl_problem(code) && t->revocation_allow) {
            log_debug("revocation status unknown (%s); accepted: revocation_unknown = allow",
                      X509_verify_cert_error_string(code));
            code = X509_V_OK;
        }
    }
    if (code != X509_V_OK) {
        log_refusal(leaf, code, X509_verify_cert_error_string(code));
        return tls_reason_from_verify(code);
    }
    enum reason r = tls_facts_from_x509(leaf, facts);
    if (r != R_NONE) {
        char subject[512];
        tls_name_for_log(X509_get_subject_name(leaf), subject, sizeof subject);
        log_info("client certificate refused (%s): subject %s: a name has an embedded NUL or "
                 "is not valid UTF-8",
                 reason_name(r), subject);
    }
    return r;
}

enum reason tls_conn_verdict(struct tls_ctx *t, SSL *ssl, enum cert_mode mode,
                             struct cert_facts **facts)
{
    *facts = NULL;
    if (mode == CERT_IGNORE)
        return R_NONE;
    X509 *leaf = SSL_get0_peer_certificate(ssl);
    if (leaf == NULL)
        return mode == CERT_REQUIRE ? R_CERT_REQUIRED : R_NONE;

    long stored = SSL_get_verify_result(ssl);
    if (stored != X509_V_OK) {
        /* Logged when the handshake verified it; a resumed session only
         * replays the outcome. */
        log_debug("client certificate refused in an earlier handshake: %s",
                  X509_verify_cert_error_string(stored));
        return tls_reason_from_verify(stored);
    }
    return verdict_now(t, leaf, facts);
}

enum reason tls_conn_recheck(struct tls_ctx *t, SSL *ssl)
{
    X509 *leaf = SSL_get0_peer_certificate(ssl);
    if (leaf == NULL)
        return R_NONE;
    int code = check_validity_now(leaf);
    if (code == X509_V_OK && t->crl_check) {
        code = tls_rev_status(t, leaf);
        if (is_crl_problem(code))
            code = X509_V_OK; /* admitted on a known status; said once per CA */
    }
    if (code == X509_V_OK)
        return R_NONE;
    log_refusal(leaf, code, X509_verify_cert_error_string(code));
    return tls_reason_from_verify(code);
}

void tls_conn_drop_chain(SSL *ssl)
{
    /* The server side's peer chain excludes the leaf (SSL_get_peer_cert_chain(3)).
     * It is the session's own stack: emptied in place, it stays valid for
     * OpenSSL, which never serialises it into a ticket or cache entry. */
    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(ssl);
    X509 *x;
    while (chain != NULL && (x = sk_X509_pop(chain)) != NULL)
        X509_free(x);
}

enum reason tls_check_cert(struct tls_ctx *t, X509 *leaf, STACK_OF(X509) *chain,
                           struct cert_facts **facts)
{
    *facts = NULL;
    X509_STORE_CTX *xs = X509_STORE_CTX_new();
    if (xs == NULL || X509_STORE_CTX_init(xs, t->store, leaf, chain) != 1) {
        X509_STORE_CTX_free(xs);
        return R_CERT_UNTRUSTED;
    }
    /* The same judgement as in a handshake, by the same callback. */
    tls_verify_cb(xs, t);
    long code = X509_STORE_CTX_get_error(xs);
    X509_STORE_CTX_free(xs);
    if (code != X509_V_OK)
        return tls_reason_from_verify(code);
    return verdict_now(t, leaf, facts);
}
