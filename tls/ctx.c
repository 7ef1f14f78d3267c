/* The server SSL_CTX and the client-certificate trust material, built once
 * from configuration and then shared read-only by every worker thread. */
#include "tls/internal.h"
#include "tls/tls.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "common/log.h"
#include "metrics/metrics.h"

static const unsigned char session_id_ctx[] = "certmapd";

/* Writes "<fmt...>: <OpenSSL reasons>" to <err>, draining OpenSSL's error
 * queue oldest first: the oldest entry is the root cause ("No such file or
 * directory"), later ones only say which layer gave up ("system lib"). */
static void __attribute__((format(printf, 3, 4)))
set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0) {
        ERR_clear_error();
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    size_t used = n < 0 ? 0 : (size_t)n >= errlen ? errlen - 1 : (size_t)n;

    unsigned long e;
    while ((e = ERR_get_error()) != 0) {
        char code[128];
        const char *r = ERR_SYSTEM_ERROR(e) ? strerror_r(ERR_GET_REASON(e), code, sizeof code)
                                            : ERR_reason_error_string(e);
        if (r == NULL) {
            snprintf(code, sizeof code, "error:%08lX", e);
            r = code;
        }
        if (strstr(err, r) != NULL)
            continue;
        n = snprintf(err + used, errlen - used, ": %s", r);
        used = n < 0 ? used : used + (size_t)n >= errlen ? errlen - 1 : used + (size_t)n;
        if (ERR_SYSTEM_ERROR(e)) {
            /* errno says it all; what follows is "system lib", "no such file" */
            ERR_clear_error();
            break;
        }
    }
}

/* Reads every PEM object of <path>. Returns the X509_INFO stack (caller frees
 * with sk_X509_INFO_pop_free) or NULL with a reason naming <what> and <path>. */
static STACK_OF(X509_INFO) *read_pem(const char *what, const char *path, char *err, size_t errlen)
{
    STACK_OF(X509_INFO) *infos = NULL;
    BIO *in = BIO_new_file(path, "r");
    if (in == NULL) {
        set_err(err, errlen, "%s %s: cannot open", what, path);
        goto fail;
    }
    infos = PEM_X509_INFO_read_bio(in, NULL, NULL, NULL);
    if (infos == NULL) {
        set_err(err, errlen, "%s %s: cannot parse PEM", what, path);
        goto fail;
    }
fail:
    BIO_free(in);
    return infos;
}

/* Why <path> holds no PEM certificate, into <err>: it is DER (said, with the
 * command that converts it), a PEM of something else (a key), or not a
 * certificate at all (OpenSSL's reason for refusing it as DER). */
static void no_pem_why(const char *what, const char *path, char *err, size_t errlen)
{
    ERR_clear_error();
    BIO *in = BIO_new_file(path, "rb");
    X509 *x = in != NULL ? d2i_X509_bio(in, NULL) : NULL;
    if (x != NULL) {
        set_err(err, errlen,
                "%s %s: no PEM certificate: it is a DER certificate (convert it with "
                "openssl x509 -inform DER -in %s -out %s.pem)",
                what, path, path, path);
    } else {
        unsigned long e = ERR_peek_last_error();
        const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
        ERR_clear_error();
        set_err(err, errlen,
                "%s %s: no certificate found: no -----BEGIN CERTIFICATE----- block, and not a "
                "DER certificate either (%s)",
                what, path, r != NULL ? r : "empty or unreadable");
    }
    X509_free(x);
    BIO_free(in);
}

/* All certificates of <path> (at least one), with their extensions cached so
 * that later reads from several threads never write to them. NULL + <err>. */
static STACK_OF(X509) *load_certs(const char *what, const char *path, char *err, size_t errlen)
{
    STACK_OF(X509) *certs = NULL, *ret = NULL;
    STACK_OF(X509_INFO) *infos = read_pem(what, path, err, errlen);
    if (infos == NULL)
        goto fail;
    certs = sk_X509_new_null();
    if (certs == NULL) {
        set_err(err, errlen, "%s %s: out of memory", what, path);
        goto fail;
    }
    for (int i = 0; i < sk_X509_INFO_num(infos); i++) {
        X509_INFO *info = sk_X509_INFO_value(infos, i);
        if (info->x509 == NULL)
            continue;
        if (!sk_X509_push(certs, info->x509)) {
            set_err(err, errlen, "%s %s: out of memory", what, path);
            goto fail;
        }
        X509_check_purpose(info->x509, -1, 0);
        info->x509 = NULL;
    }
    if (sk_X509_num(certs) == 0) {
        no_pem_why(what, path, err, errlen);
        goto fail;
    }
    ret = certs;
    certs = NULL;
fail:
    sk_X509_INFO_pop_free(infos, X509_INFO_free);
    sk_X509_pop_free(certs, X509_free);
    return ret;
}

int tls_certs_build(struct tls_certs *out, const char *cert_path, const char *chain_path, char *err,
                    size_t errlen)
{
    STACK_OF(X509) *more = NULL;
    memset(out, 0, sizeof *out);
    out->chain = load_certs("certificate", cert_path, err, errlen);
    if (out->chain == NULL)
        goto fail;
    out->leaf = sk_X509_shift(out->chain);
    if (chain_path != NULL) {
        more = load_certs("chain", chain_path, err, errlen);
        if (more == NULL)
            goto fail;
        X509 *x;
        while ((x = sk_X509_shift(more)) != NULL) {
            if (!sk_X509_push(out->chain, x)) {
                X509_free(x);
                set_err(err, errlen, "chain %s: out of memory", chain_path);
                goto fail;
            }
        }
    }
    sk_X509_free(more);
    return 0;
fail:
    sk_X509_pop_free(more, X509_free);
    tls_certs_purge(out);
    return -1;
}

void tls_certs_purge(struct tls_certs *c)
{
    X509_free(c->leaf);
    sk_X509_pop_free(c->chain, X509_free);
    memset(c, 0, sizeof *c);
}

/* An issuer that does not chain to an anchor makes every certificate it
 * issued fail later with cert_untrusted; say so once, at start-up. */
static void check_issuers_chain(struct tls_ctx *t, const char *path)
{
    X509_STORE_CTX *xs = X509_STORE_CTX_new();
    for (int i = 0; xs != NULL && i < sk_X509_num(t->issuers); i++) {
        X509 *x = sk_X509_value(t->issuers, i);
        if (X509_STORE_CTX_init(xs, t->store, x, NULL) != 1)
            break;
        /* The issuer's own revocation is the root's business, and many sites
         * do not publish the root's CRL: check the chain only. */
        X509_VERIFY_PARAM_clear_flags(X509_STORE_CTX_get0_param(xs), X509_V_FLAG_CRL_CHECK);
        if (X509_verify_cert(xs) != 1) {
            char name[512];
            tls_name_for_log(X509_get_subject_name(x), name, sizeof name);
            log_warn("trusted_issuers %s: %s does not verify against the trust anchors: %s", path,
                     name, X509_verify_cert_error_string(X509_STORE_CTX_get_error(xs)));
        }
        X509_STORE_CTX_cleanup(xs);
    }
    X509_STORE_CTX_free(xs);
    ERR_clear_error();
}

/* Subject names sent in the CertificateRequest so that clients holding
 * several certificates pick one we can accept. */
static int set_client_ca_list(struct tls_ctx *t, char *err, size_t errlen)
{
    STACK_OF(X509) *from = t->issuers != NULL ? t->issuers : t->anchors;
    STACK_OF(X509_NAME) *names = sk_X509_NAME_new_null();
    if (names == NULL)
        goto fail;
    for (int i = 0; from != NULL && i < sk_X509_num(from); i++) {
        const X509_NAME *n = X509_get_subject_name(sk_X509_value(from, i));
        bool dup = false;
        for (int j = 0; j < sk_X509_NAME_num(names) && !dup; j++)
            dup = X509_NAME_cmp(sk_X509_NAME_value(names, j), n) == 0;
        if (dup)
            continue;
        X509_NAME *copy = X509_NAME_dup(n);
        if (copy == NULL || !sk_X509_NAME_push(names, copy)) {
            X509_NAME_free(copy);
            goto fail;
        }
    }
    SSL_CTX_set_client_CA_list(t->ssl, names);
    return 0;
fail:
    sk_X509_NAME_pop_free(names, X509_NAME_free);
    set_err(err, errlen, "client CA list: out of memory");
    return -1;
}

/* Whether the first handshake asks for a certificate: the global mode needs
 * one, or the operator asked for it everywhere (IIS SSLAlwaysNegoClientCert). */
static bool wants_cert_in_handshake(const struct conf *c)
{
    return c->cert_mode != CERT_IGNORE || c->negotiate_at_handshake;
}

/* Whether any request may need a certificate: then the trust set-up is made,
 * even when only a location asks for it (later, by renegotiation or
 * post-handshake authentication, see tls/late.c). */
static bool wants_cert_anywhere(const struct conf *c)
{
    if (wants_cert_in_handshake(c))
        return true;
    for (size_t i = 0; i < c->n_locations; i++)
        if (c->locations[i].client_certificate != CERT_IGNORE)
            return true;
    return false;
}

static int setup_trust(struct tls_ctx *t, const struct conf *c, char *err, size_t errlen)
{
    t->store = X509_STORE_new();
    if (t->store == NULL) {
        set_err(err, errlen, "certificate store: out of memory");
        return -1;
    }
    char what[1024];
    if (c->trust_anchors != NULL) {
        conf_where(c, "client_certificate", "trust_anchors", what, sizeof what);
        t->anchors = load_certs(what, c->trust_anchors, err, errlen);
        if (t->anchors == NULL)
            return -1;
        for (int i = 0; i < sk_X509_num(t->anchors); i++) {
            if (X509_STORE_add_cert(t->store, sk_X509_value(t->anchors, i)) != 1) {
                set_err(err, errlen, "%s %s: cannot add certificate", what, c->trust_anchors);
                return -1;
            }
        }
    }
    if (c->trusted_issuers != NULL) {
        conf_where(c, "client_certificate", "trusted_issuers", what, sizeof what);
        t->issuers = load_certs(what, c->trusted_issuers, err, errlen);
        if (t->issuers == NULL)
            return -1;
    } else {
        log_warn("client_certificate: no trusted_issuers set; a certificate from any CA under "
                 "the trust anchors is accepted");
    }
    if (c->verify_depth > 0)
        X509_STORE_set_depth(t->store, (int)c->verify_depth);
    if (c->crl_file != NULL || c->crl_fetch || c->ocsp) {
        /* Revocation is judged per connection against the CRLs in use then
         * (tls/revoke.c), not in the handshake's chain check: a handshake
         * verdict is kept in the session, and a CRL that is fetched, renewed
         * or replaced later must count for resumed sessions too. Only the
         * leaf's issuer must have a current CRL: CA certificates are covered
         * by trusted_issuers, which the operator controls. */
        t->rev = tls_rev_new(t, c, err, errlen);
        if (t->rev == NULL)
            return -1;
        t->crl_check = true;
        t->revocation_allow = c->revocation_unknown == REVOCATION_ALLOW;
    }
    if (t->issuers != NULL)
        check_issuers_chain(t, c->trusted_issuers);
    t->require_eku = c->require_client_auth_eku;
    return 0;
}

/* Ciphers, TLS 1.3 suites and groups of <c> (conf/ checked them), chosen in
 * the server's order: clients list theirs in any order, older ones with CBC
 * ciphers first, and the configured order is the one an operator reviews. */
static int set_algorithms(SSL_CTX *ssl, const struct conf *c, char *err, size_t errlen)
{
    const char *ciphers = c->ciphers != NULL ? c->ciphers : CONF_TLS_CIPHERS;
    const char *suites = c->ciphersuites != NULL ? c->ciphersuites : CONF_TLS_CIPHERSUITES;
    const char *groups = c->groups != NULL ? c->groups : CONF_TLS_GROUPS;

    char what[1024];
    SSL_CTX_set_options(ssl, SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_set_cipher_list(ssl, ciphers) != 1) {
        set_err(err, errlen, "%s \"%s\"", conf_where(c, "tls", "ciphers", what, sizeof what),
                ciphers);
        return -1;
    }
    if (SSL_CTX_set_ciphersuites(ssl, suites) != 1) {
        set_err(err, errlen, "%s \"%s\"", conf_where(c, "tls", "ciphersuites", what, sizeof what),
                suites);
        return -1;
    }
    if (SSL_CTX_set1_groups_list(ssl, groups) != 1) {
        set_err(err, errlen, "%s \"%s\"", conf_where(c, "tls", "groups", what, sizeof what),
                groups);
        return -1;
    }
    return 0;
}

static const char *key_type_name(const EVP_PKEY *key)
{
    const char *name = key != NULL ? EVP_PKEY_get0_type_name(key) : NULL;
    return name != NULL ? name : "unknown";
}

/* Whether a TLS 1.2 cipher of <ssl>'s list authenticates with the kind of its
 * certificate's key (ECDSA ciphers for EC and EdDSA keys, RSA ones for RSA):
 * OpenSSL would otherwise fail every TLS 1.2 handshake, and say so only then.
 * Ciphers that need no certificate (PSK, anonymous) count; so does any list
 * when the key is of another kind. */
static bool tls12_cipher_for_key(SSL_CTX *ssl)
{
    EVP_PKEY *key = SSL_CTX_get0_privatekey(ssl);
    int want = NID_undef;
    if (key != NULL &&
        (EVP_PKEY_is_a(key, "EC") || EVP_PKEY_is_a(key, "ED25519") || EVP_PKEY_is_a(key, "ED448")))
        want = NID_auth_ecdsa;
    else if (key != NULL && (EVP_PKEY_is_a(key, "RSA") || EVP_PKEY_is_a(key, "RSA-PSS")))
        want = NID_auth_rsa;
    if (want == NID_undef)
        return true;
    STACK_OF(SSL_CIPHER) *list = SSL_CTX_get_ciphers(ssl);
    for (int i = 0; i < sk_SSL_CIPHER_num(list); i++) {
        const SSL_CIPHER *ci = sk_SSL_CIPHER_value(list, i);
        int auth = SSL_CIPHER_get_auth_nid(ci);
        if (auth == NID_auth_any) /* TLS 1.3 */
            continue;
        if (auth == want ||
            (auth != NID_auth_ecdsa && auth != NID_auth_rsa && auth != NID_auth_dss))
            return true;
    }
    return false;
}

struct tls_ctx *tls_ctx_new(const struct conf *c, char *err, size_t errlen)
{
    ERR_clear_error();
    if (c->builtin_key_methods && tls_builtin_key_methods() < 0)
        log_warn("tls: could not install the built-in key methods; handshakes will cost more");
    struct tls_ctx *t = calloc(1, sizeof *t);
    if (t == NULL) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    if (c->certificate == NULL || c->private_key == NULL) {
        set_err(err, errlen, "tls: certificate and private_key are required");
        goto fail;
    }
    t->ssl = SSL_CTX_new(TLS_server_method());
    if (t->ssl == NULL) {
        set_err(err, errlen, "cannot create the TLS context");
        goto fail;
    }
    char what[1024];
    int min = c->min_protocol != 0 ? c->min_protocol : TLS1_2_VERSION;
    if (SSL_CTX_set_min_proto_version(t->ssl, min) != 1 ||
        SSL_CTX_set_max_proto_version(t->ssl, TLS1_3_VERSION) != 1) {
        set_err(err, errlen, "%s: unsupported protocol version 0x%x",
                conf_where(c, "tls", "min_protocol", what, sizeof what), min);
        goto fail;
    }
    if (set_algorithms(t->ssl, c, err, errlen) != 0)
        goto fail;
    if (SSL_CTX_use_certificate_chain_file(t->ssl, c->certificate) != 1) {
        set_err(err, errlen, "%s %s", conf_where(c, "tls", "certificate", what, sizeof what),
                c->certificate);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(t->ssl, c->private_key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(t->ssl) != 1) {
        set_err(err, errlen, "%s %s (for certificate %s)",
                conf_where(c, "tls", "private_key", what, sizeof what), c->private_key,
                c->certificate);
        goto fail;
    }
    if (min < TLS1_3_VERSION && !tls12_cipher_for_key(t->ssl)) {
        set_err(err, errlen,
                "%s: no TLS 1.2 cipher of the list can be used with the %s key of "
                "certificate %s; TLS 1.2 clients could not connect (min_protocol = TLSv1.3 "
                "if that is meant)",
                conf_where(c, "tls", "ciphers", what, sizeof what),
                key_type_name(SSL_CTX_get0_privatekey(t->ssl)), c->certificate);
        goto fail;
    }

    /* Idle keep-alive connections dominate a SEG's memory (EAS Ping holds
     * them for up to an hour): give the record buffers back between reads. */
    SSL_CTX_set_mode(t->ssl, SSL_MODE_RELEASE_BUFFERS);
    /* One read(2) per TLS record instead of two (header, then body). What
     * OpenSSL reads ahead is invisible to epoll: the transport (io/io.c)
     * reads until OpenSSL holds nothing, and when it resumes reading. */
    SSL_CTX_set_read_ahead(t->ssl, 1);
    /* Resumption (session cache for TLS 1.2 ids, tickets for 1.2 and 1.3) is
     * left on; a session id context is required once peers are verified. */
    if (SSL_CTX_set_session_id_context(t->ssl, session_id_ctx, sizeof session_id_ctx - 1) != 1) {
        set_err(err, errlen, "cannot set the session id context");
        goto fail;
    }
    SSL_CTX_clear_options(t->ssl, SSL_OP_NO_TICKET);
    /* One TLS 1.3 ticket per handshake, not OpenSSL's two: each carries (and
     * encrypts) the client's certificate, and a device resumes with one. */
    SSL_CTX_set_num_tickets(t->ssl, 1);
    if (tls_tickets_setup(t, c, err, errlen) != 0)
        goto fail;
    /* Client-initiated renegotiation stays refused (OpenSSL 3.0 refuses it
     * unless SSL_OP_ALLOW_CLIENT_RENEGOTIATION). SSL_OP_NO_RENEGOTIATION is
     * deliberately not set: asking for a certificate late on TLS 1.2 needs
     * server-initiated renegotiation. */
    SSL_CTX_clear_options(t->ssl, SSL_OP_ALLOW_CLIENT_RENEGOTIATION | SSL_OP_NO_RENEGOTIATION);

    bool want = wants_cert_anywhere(c);
    if (want && c->trust_anchors == NULL) {
        set_err(err, errlen,
                "client_certificate: trust_anchors is required when client "
                "certificates are requested");
        goto fail;
    }
    if (setup_trust(t, c, err, errlen) != 0)
        goto fail;
    if (want) {
        if (set_client_ca_list(t, err, errlen) != 0)
            goto fail;
        /* Never SSL_VERIFY_FAIL_IF_NO_PEER_CERT and a callback that always
         * accepts: refusals are HTTP 403 with a reason after the handshake,
         * not TLS alerts that a device cannot show to its user. The callback
         * also judges certificates obtained late (tls/late.c). */
        SSL_CTX_set_cert_verify_callback(t->ssl, tls_verify_cb, t);
        SSL_CTX_set_app_data(t->ssl, t);
        SSL_CTX_set_info_callback(t->ssl, tls_late_info_cb);
    }
    t->cert_at_handshake = wants_cert_in_handshake(c);
    SSL_CTX_set_verify(t->ssl, want && t->cert_at_handshake ? SSL_VERIFY_PEER : SSL_VERIFY_NONE,
                       NULL);
    t->vcache = tls_vcache_new();
    if (t->vcache == NULL) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    t->late_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, tls_late_free);
    if (t->late_idx < 0) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    return t;
fail:
    tls_ctx_free(t);
    return NULL;
}

void tls_ctx_free(struct tls_ctx *t)
{
    if (t == NULL)
        return;
    SSL_CTX_free(t->ssl);
    tls_tickets_free(t);
    tls_rev_free(t->rev); /* first: its thread reads the anchors and issuers */
    X509_STORE_free(t->store);
    sk_X509_pop_free(t->anchors, X509_free);
    sk_X509_pop_free(t->issuers, X509_free);
    tls_vcache_free(t->vcache);
    free(t);
}

SSL *tls_conn_new(struct tls_ctx *t)
{
    return SSL_new(t->ssl);
}

void tls_conn_close_notify(SSL *ssl)
{
    if (SSL_is_init_finished(ssl) && !(SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN))
        SSL_shutdown(ssl);
    ERR_clear_error();
}

void tls_conn_free(SSL *ssl)
{
    SSL_free(ssl);
}

const char *tls_error_text(unsigned long e)
{
    const char *s = ERR_reason_error_string(e);
    return s != NULL ? s : "unknown TLS error";
}

const char *tls_conn_protocol(SSL *ssl)
{
    return SSL_get_version(ssl);
}

bool tls_conn_resumed(SSL *ssl)
{
    return ssl != NULL && SSL_session_reused(ssl) == 1;
}
