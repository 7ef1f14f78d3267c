/* tls/ctx.c + tls/verify.c: real TLS handshakes in memory (a BIO pair, one
 * thread) between an OpenSSL client presenting a test-PKI leaf and a server
 * SSL from tls_conn_new(), then the verdict tls_conn_verdict() gives. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "tests/support/testpki.h"
#include "tests/support/tlspair.h"
#include "tls/tls.h"

#define ALICE "alice@corp.example.test"
#define MAX_CASES 64

/* A client identity: a leaf of the test PKI, a generated self-signed one, or none. */
enum leaf_kind { LEAF_PKI = 0, LEAF_NONE, LEAF_SELF };

struct vcase {
    char name[64];
    enum leaf_kind kind;
    const char *leaf;     /* PKI name: good, expired, ... */
    bool leaf_only;       /* the client sends no chain */
    const char *crl;      /* crl file of the PKI, or NULL */
    bool no_eku_required; /* require_client_auth_eku = no */
    bool any_issuer;      /* trusted_issuers unset */
    enum cert_mode mode;
    int version; /* TLS1_2_VERSION or TLS1_3_VERSION */
    enum reason want;
    const char *want_upn; /* with R_NONE: the facts' first UPN; NULL: no facts expected */
};

static char *pki(char *buf, size_t len, const char *file)
{
    char *path = testpki_path(buf, len, file);
    if (path == NULL)
        fail_msg("CERTMAPD_TEST_PKI is not set (ctest sets it; or run tests/pki/mkpki.sh DIR)");
    return path;
}

/* The configuration an operator would write for the test PKI. Strings point
 * into <paths>, which must outlive the conf. */
struct paths {
    char cert[512], key[512], anchors[512], issuers[512], crl[512];
};

static void base_conf(struct conf *c, struct paths *p, const char *crl)
{
    memset(c, 0, sizeof *c);
    c->certificate = pki(p->cert, sizeof p->cert, "server-chain.pem");
    c->private_key = pki(p->key, sizeof p->key, "server.key");
    c->min_protocol = TLS1_2_VERSION;
    c->cert_mode = CERT_REQUIRE;
    c->trust_anchors = pki(p->anchors, sizeof p->anchors, "trust-anchors.pem");
    c->trusted_issuers = pki(p->issuers, sizeof p->issuers, "trusted-issuers.pem");
    c->crl_file = crl != NULL ? pki(p->crl, sizeof p->crl, crl) : NULL;
    c->verify_depth = 4;
    c->require_client_auth_eku = true;
}

static struct tls_ctx *server_for(const struct vcase *k)
{
    struct conf c;
    struct paths p;
    char err[512] = "";
    base_conf(&c, &p, k->crl);
    c.require_client_auth_eku = !k->no_eku_required;
    if (k->any_issuer)
        c.trusted_issuers = NULL;
    c.cert_mode = k->mode;
    struct tls_ctx *t = tls_ctx_new(&c, err, sizeof err);
    if (t == NULL)
        fail_msg("tls_ctx_new: %s", err);
    return t;
}

/* A self-signed leaf with the right shape (clientAuth, UPN) under no anchor. */
static void make_self_signed(X509 **out_x, EVP_PKEY **out_key)
{
    /* "prime256v1", not "P-256": with tls/keymeth.c installed, EC key generation
     * goes through the built-in method, which knows curves by OID name only. */
    EVP_PKEY *key = EVP_EC_gen("prime256v1");
    X509 *x = X509_new();
    assert_non_null(key);
    assert_non_null(x);
    assert_int_equal(X509_set_version(x, X509_VERSION_3), 1);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 4242);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"alice", -1, -1, 0);
    X509_set_issuer_name(x, n);
    X509_set_pubkey(x, key);
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *eku = X509V3_EXT_conf_nid(NULL, &v3, NID_ext_key_usage, "clientAuth");
    assert_non_null(eku);
    X509_add_ext(x, eku, -1);
    X509_EXTENSION_free(eku);
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);
    *out_x = x;
    *out_key = key;
}

static SSL_CTX *client_for(const struct vcase *k)
{
    char path[512];
    SSL_CTX *c = SSL_CTX_new(TLS_client_method());
    assert_non_null(c);
    assert_int_equal(SSL_CTX_set_min_proto_version(c, k->version), 1);
    assert_int_equal(SSL_CTX_set_max_proto_version(c, k->version), 1);
    /* The client checks the server too: a wrong server chain fails here. */
    assert_int_equal(SSL_CTX_load_verify_locations(c, pki(path, sizeof path, "root-ca.crt"), NULL),
                     1);
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
    if (k->kind == LEAF_PKI) {
        char file[128];
        snprintf(file, sizeof file, "%s.%s", k->leaf, k->leaf_only ? "crt" : "chain.pem");
        assert_int_equal(SSL_CTX_use_certificate_chain_file(c, pki(path, sizeof path, file)), 1);
        snprintf(file, sizeof file, "%s.key", k->leaf);
        assert_int_equal(
            SSL_CTX_use_PrivateKey_file(c, pki(path, sizeof path, file), SSL_FILETYPE_PEM), 1);
    } else if (k->kind == LEAF_SELF) {
        X509 *x;
        EVP_PKEY *key;
        make_self_signed(&x, &key);
        assert_int_equal(SSL_CTX_use_certificate(c, x), 1);
        assert_int_equal(SSL_CTX_use_PrivateKey(c, key), 1);
        X509_free(x);
        EVP_PKEY_free(key);
    }
    return c;
}

/* A handshake over a BIO pair (tests/support/tlspair.c), with OpenSSL's
 * errors printed when it fails. */
static int handshake(SSL *cl, SSL *sv)
{
    if (tlspair_handshake(cl, sv) == 0)
        return 0;
    ERR_print_errors_fp(stderr);
    return -1;
}

/* One connection of <k> against <t>, resuming <resume> when not NULL.
 * Returns the verdict; *facts as tls_conn_verdict() gives it; *session (if
 * not NULL) the client's session for a later resumption; *reused whether
 * the server resumed. */
static enum reason connect_once(struct tls_ctx *t, SSL_CTX *cctx, const struct vcase *k,
                                SSL_SESSION *resume, SSL_SESSION **session, bool *reused,
                                struct cert_facts **facts)
{
    SSL *cl = SSL_new(cctx);
    SSL *sv = tls_conn_new(t);
    assert_non_null(cl);
    assert_non_null(sv);
    if (resume != NULL)
        assert_int_equal(SSL_set_session(cl, resume), 1);
    if (handshake(cl, sv) != 0)
        fail_msg("%s: handshake failed", k->name);
    assert_string_equal(tls_conn_protocol(sv),
                        k->version == TLS1_3_VERSION ? "TLSv1.3" : "TLSv1.2");
    enum reason r = tls_conn_verdict(t, sv, k->mode, facts);
    /* As proxy/conn.c does after every verdict: the intermediates go, the
     * leaf stays, and (run_resume) the session still resumes, from a ticket
     * or from the server's session-id cache that shares this session. */
    X509 *leaf = SSL_get0_peer_certificate(sv);
    tls_conn_drop_chain(sv);
    assert_ptr_equal(SSL_get0_peer_certificate(sv), leaf);
    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(sv);
    assert_int_equal(chain != NULL ? sk_X509_num(chain) : 0, 0);
    if (reused != NULL)
        *reused = SSL_session_reused(sv) == 1;
    if (session != NULL)
        *session = SSL_get1_session(cl);
    /* A connection freed without close_notify marks its session unusable. */
    SSL_shutdown(cl);
    SSL_shutdown(sv);
    SSL_free(cl);
    SSL_free(sv);
    return r;
}

static void check_verdict(const struct vcase *k, enum reason got, struct cert_facts *f)
{
    if (got != k->want)
        fail_msg("%s: verdict %s, want %s", k->name, got == R_NONE ? "accepted" : reason_name(got),
                 k->want == R_NONE ? "accepted" : reason_name(k->want));
    if (k->want_upn == NULL) {
        assert_null(f);
        return;
    }
    assert_non_null(f);
    assert_true(f->n_upn >= 1);
    assert_string_equal(f->upn[0], k->want_upn);
}

static void run_case(void **state)
{
    const struct vcase *k = *state;
    struct tls_ctx *t = server_for(k);
    SSL_CTX *cctx = client_for(k);
    struct cert_facts *f = NULL;
    enum reason r = connect_once(t, cctx, k, NULL, NULL, NULL, &f);
    check_verdict(k, r, f);
    tls_facts_free(f);
    SSL_CTX_free(cctx);
    tls_ctx_free(t);
}

/* The verdict of a fresh handshake, then of a resumed one: the same, and the
 * server really resumed (no verification ran the second time). <no_ticket>
 * makes TLS 1.2 resume by session id from the server's cache instead. */
static void run_resume(void **state)
{
    const struct vcase *k = *state;
    bool no_ticket = strstr(k->name, "session-id") != NULL;
    struct tls_ctx *t = server_for(k);
    SSL_CTX *cctx = client_for(k);
    if (no_ticket)
        SSL_CTX_set_options(cctx, SSL_OP_NO_TICKET);
    struct cert_facts *f = NULL;
    SSL_SESSION *sess = NULL;
    bool reused = true;
    enum reason r = connect_once(t, cctx, k, NULL, &sess, &reused, &f);
    check_verdict(k, r, f);
    assert_false(reused);
    assert_non_null(sess);
    tls_facts_free(f);
    f = NULL;
    r = connect_once(t, cctx, k, sess, NULL, &reused, &f);
    check_verdict(k, r, f);
    if (!reused)
        fail_msg("%s: the server did not resume the session", k->name);
    tls_facts_free(f);
    SSL_SESSION_free(sess);
    SSL_CTX_free(cctx);
    tls_ctx_free(t);
}

/* The verdict's own checks on a resumed session, where no chain check runs:
 * a session made under one crl_file is resumed by a server with another
 * crl_file (same ticket keys), where only tls_conn_verdict() can see it. */
static void recheck_after_resume(const char *leaf, const char *crl_first, const char *crl_then,
                                 enum reason want)
{
    static const int versions[] = {TLS1_2_VERSION, TLS1_3_VERSION};
    for (size_t v = 0; v < 2; v++) {
        struct vcase k1 = {.kind = LEAF_PKI,
                           .leaf = leaf,
                           .crl = crl_first,
                           .mode = CERT_REQUIRE,
                           .version = versions[v],
                           .want = R_NONE};
        snprintf(k1.name, sizeof k1.name, "%s, first connection", leaf);
        struct vcase k2 = k1;
        k2.crl = crl_then;
        snprintf(k2.name, sizeof k2.name, "%s, resumed with %s", leaf,
                 crl_then != NULL ? crl_then : "no crl_file");
        k2.want = want;
        k2.want_upn = want == R_NONE ? ALICE : NULL;
        struct tls_ctx *a = server_for(&k1), *b = server_for(&k2);
        SSL *pa = tls_conn_new(a), *pb = tls_conn_new(b);
        unsigned char keys[80];
        assert_int_equal(SSL_CTX_get_tlsext_ticket_keys(SSL_get_SSL_CTX(pa), keys, sizeof keys), 1);
        assert_int_equal(SSL_CTX_set_tlsext_ticket_keys(SSL_get_SSL_CTX(pb), keys, sizeof keys), 1);
        SSL_free(pa);
        SSL_free(pb);

        SSL_CTX *cctx = client_for(&k1);
        struct cert_facts *f = NULL;
        SSL_SESSION *sess = NULL;
        bool reused = true;
        enum reason r = connect_once(a, cctx, &k1, NULL, &sess, &reused, &f);
        assert_int_equal(r, R_NONE);
        assert_false(reused);
        tls_facts_free(f);
        f = NULL;
        r = connect_once(b, cctx, &k2, sess, NULL, &reused, &f);
        if (!reused)
            fail_msg("%s: the server did not resume the session", k2.name);
        check_verdict(&k2, r, f);
        tls_facts_free(f);
        SSL_SESSION_free(sess);
        SSL_CTX_free(cctx);
        tls_ctx_free(a);
        tls_ctx_free(b);
    }
}

static void test_recheck_control(void **state)
{
    recheck_after_resume("good", "crl.pem", "crl.pem", R_NONE);
}

static void test_recheck_crl_expired(void **state)
{
    recheck_after_resume("good", "crl.pem", "crl-expired.pem", R_CERT_UNTRUSTED);
}

static void test_recheck_crl_missing(void **state)
{
    recheck_after_resume("good", "crl.pem", "crl-missing.pem", R_CERT_UNTRUSTED);
}

static void test_recheck_revoked(void **state)
{
    recheck_after_resume("revoked", NULL, "crl.pem", R_CERT_REVOKED);
}

/* Without trusted_issuers any CA under an anchor may issue, and the CRL of
 * an intermediate that is neither anchor nor trusted issuer (the look-alike)
 * is tied to its leaves by authority key identifier. */
static void test_any_issuer(void **state)
{
    static const int versions[] = {TLS1_2_VERSION, TLS1_3_VERSION};
    static const char *const leaves[] = {"byroot", "otherissuer", "good", "revoked"};
    for (size_t v = 0; v < 2; v++) {
        for (size_t i = 0; i < sizeof leaves / sizeof leaves[0]; i++) {
            struct vcase k = {.kind = LEAF_PKI,
                              .leaf = leaves[i],
                              .crl = "crl.pem",
                              .any_issuer = true,
                              .mode = CERT_REQUIRE,
                              .version = versions[v]};
            char upn[64];
            snprintf(upn, sizeof upn, "%s@corp.example.test",
                     strcmp(k.leaf, "good") == 0 ? "alice" : k.leaf);
            snprintf(k.name, sizeof k.name, "%s, no trusted_issuers", k.leaf);
            bool revoked = strcmp(k.leaf, "revoked") == 0;
            k.want = revoked ? R_CERT_REVOKED : R_NONE;
            k.want_upn = revoked ? NULL : upn;
            struct tls_ctx *t = server_for(&k);
            SSL_CTX *cctx = client_for(&k);
            struct cert_facts *f = NULL;
            enum reason r = connect_once(t, cctx, &k, NULL, NULL, NULL, &f);
            check_verdict(&k, r, f);
            tls_facts_free(f);
            SSL_CTX_free(cctx);
            tls_ctx_free(t);
        }
    }
}

/* One tls_ctx shared by several threads, as the workers share it: accepted
 * and refused certificates at once must each get their own verdict. */
struct worker {
    pthread_t id;
    struct tls_ctx *t;
    SSL_CTX *cctx;
    const struct vcase *k;
    int failures;
};

static void *worker_run(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < 20; i++) {
        SSL *cl = SSL_new(w->cctx);
        SSL *sv = tls_conn_new(w->t);
        struct cert_facts *f = NULL;
        if (cl == NULL || sv == NULL || handshake(cl, sv) != 0 ||
            tls_conn_verdict(w->t, sv, CERT_REQUIRE, &f) != w->k->want ||
            (w->k->want_upn != NULL) != (f != NULL) ||
            (f != NULL && (f->n_upn < 1 || strcmp(f->upn[0], w->k->want_upn) != 0)))
            w->failures++;
        tls_facts_free(f);
        SSL_free(cl);
        SSL_free(sv);
    }
    return NULL;
}

static void test_threads(void **state)
{
    struct vcase kinds[2] = {
        {.name = "good",
         .kind = LEAF_PKI,
         .leaf = "good",
         .crl = "crl.pem",
         .mode = CERT_REQUIRE,
         .version = TLS1_3_VERSION,
         .want = R_NONE,
         .want_upn = ALICE},
        {.name = "otherissuer",
         .kind = LEAF_PKI,
         .leaf = "otherissuer",
         .crl = "crl.pem",
         .mode = CERT_REQUIRE,
         .version = TLS1_2_VERSION,
         .want = R_ISSUER_NOT_ALLOWED},
    };
    struct tls_ctx *t = server_for(&kinds[0]);
    SSL_CTX *cctx[2] = {client_for(&kinds[0]), client_for(&kinds[1])};
    struct worker w[4];
    for (size_t i = 0; i < 4; i++) {
        w[i] = (struct worker){.t = t, .cctx = cctx[i % 2], .k = &kinds[i % 2]};
        assert_int_equal(pthread_create(&w[i].id, NULL, worker_run, &w[i]), 0);
    }
    int failures = 0;
    for (size_t i = 0; i < 4; i++) {
        pthread_join(w[i].id, NULL);
        failures += w[i].failures;
    }
    assert_int_equal(failures, 0);
    SSL_CTX_free(cctx[0]);
    SSL_CTX_free(cctx[1]);
    tls_ctx_free(t);
}

struct spec {
    const char *label;
    enum leaf_kind kind;
    const char *leaf;
    bool leaf_only;
    const char *crl;
    bool no_eku_required;
    enum cert_mode mode;
    enum reason want;
    const char *want_upn;
};

static const struct spec verdicts[] = {
    {"good", LEAF_PKI, "good", false, NULL, false, CERT_REQUIRE, R_NONE, ALICE},
    {"good with crl", LEAF_PKI, "good", false, "crl.pem", false, CERT_REQUIRE, R_NONE, ALICE},
    {"good, leaf only", LEAF_PKI, "good", true, "crl.pem", false, CERT_REQUIRE, R_NONE, ALICE},
    {"good, mode accept", LEAF_PKI, "good", false, NULL, false, CERT_ACCEPT, R_NONE, ALICE},
    {"good, mode ignore", LEAF_PKI, "good", false, NULL, false, CERT_IGNORE, R_NONE, NULL},
    {"expired", LEAF_PKI, "expired", false, "crl.pem", false, CERT_REQUIRE, R_CERT_EXPIRED, NULL},
    {"notyet", LEAF_PKI, "notyet", false, "crl.pem", false, CERT_REQUIRE, R_CERT_EXPIRED, NULL},
    {"revoked", LEAF_PKI, "revoked", false, "crl.pem", false, CERT_REQUIRE, R_CERT_REVOKED, NULL},
    {"revoked, no crl_file", LEAF_PKI, "revoked", false, NULL, false, CERT_REQUIRE, R_NONE,
     "revoked@corp.example.test"},
    {"revoked, mode ignore", LEAF_PKI, "revoked", false, "crl.pem", false, CERT_IGNORE, R_NONE,
     NULL},
    {"good, crl expired", LEAF_PKI, "good", false, "crl-expired.pem", false, CERT_REQUIRE,
     R_CERT_UNTRUSTED, NULL},
    {"good, crl missing", LEAF_PKI, "good", false, "crl-missing.pem", false, CERT_REQUIRE,
     R_CERT_UNTRUSTED, NULL},
    {"noeku", LEAF_PKI, "noeku", false, "crl.pem", false, CERT_REQUIRE, R_CERT_BAD_USAGE, NULL},
    {"noekuext", LEAF_PKI, "noekuext", false, NULL, false, CERT_REQUIRE, R_CERT_BAD_USAGE, NULL},
    {"noeku, eku not required", LEAF_PKI, "noeku", false, "crl.pem", true, CERT_REQUIRE, R_NONE,
     "noeku@corp.example.test"},
    {"byroot", LEAF_PKI, "byroot", false, "crl.pem", false, CERT_REQUIRE, R_ISSUER_NOT_ALLOWED,
     NULL},
    {"otherissuer", LEAF_PKI, "otherissuer", false, "crl.pem", false, CERT_REQUIRE,
     R_ISSUER_NOT_ALLOWED, NULL},
    {"otherissuer, no crl", LEAF_PKI, "otherissuer", false, NULL, false, CERT_REQUIRE,
     R_ISSUER_NOT_ALLOWED, NULL},
    /* Sent alone, the look-alike's leaf meets only the real issuing CA of that
     * name, whose key did not sign it. */
    {"otherissuer, leaf only", LEAF_PKI, "otherissuer", true, NULL, false, CERT_REQUIRE,
     R_CERT_UNTRUSTED, NULL},
    {"self-signed", LEAF_SELF, NULL, false, NULL, false, CERT_REQUIRE, R_CERT_UNTRUSTED, NULL},
    {"nulcn", LEAF_PKI, "nulcn", false, "crl.pem", false, CERT_REQUIRE, R_CERT_MALFORMED, NULL},
    {"nulupn", LEAF_PKI, "nulupn", false, "crl.pem", false, CERT_REQUIRE, R_CERT_MALFORMED, NULL},
    {"badutf8upn", LEAF_PKI, "badutf8upn", false, "crl.pem", false, CERT_REQUIRE, R_CERT_MALFORMED,
     NULL},
    {"long subject", LEAF_PKI, "long", false, "crl.pem", false, CERT_REQUIRE, R_NONE,
     "long@corp.example.test"},
    {"none, mode require", LEAF_NONE, NULL, false, "crl.pem", false, CERT_REQUIRE, R_CERT_REQUIRED,
     NULL},
    {"none, mode accept", LEAF_NONE, NULL, false, "crl.pem", false, CERT_ACCEPT, R_NONE, NULL},
};

static const struct spec resumptions[] = {
    {"resume good", LEAF_PKI, "good", false, "crl.pem", false, CERT_REQUIRE, R_NONE, ALICE},
    {"resume good session-id", LEAF_PKI, "good", false, "crl.pem", false, CERT_REQUIRE, R_NONE,
     ALICE},
    {"resume noeku", LEAF_PKI, "noeku", false, "crl.pem", false, CERT_REQUIRE, R_CERT_BAD_USAGE,
     NULL},
    {"resume otherissuer", LEAF_PKI, "otherissuer", false, "crl.pem", false, CERT_REQUIRE,
     R_ISSUER_NOT_ALLOWED, NULL},
    {"resume revoked", LEAF_PKI, "revoked", false, "crl.pem", false, CERT_REQUIRE, R_CERT_REVOKED,
     NULL},
    {"resume expired session-id", LEAF_PKI, "expired", false, "crl.pem", false, CERT_REQUIRE,
     R_CERT_EXPIRED, NULL},
    {"resume crl missing", LEAF_PKI, "good", false, "crl-missing.pem", false, CERT_REQUIRE,
     R_CERT_UNTRUSTED, NULL},
};

static size_t add_cases(struct vcase *cases, size_t n, const struct spec *specs, size_t n_specs)
{
    static const int versions[] = {TLS1_2_VERSION, TLS1_3_VERSION};
    for (size_t i = 0; i < n_specs; i++) {
        for (size_t v = 0; v < 2; v++) {
            if (n >= MAX_CASES)
                return n;
            struct vcase *k = &cases[n++];
            const struct spec *s = &specs[i];
            snprintf(k->name, sizeof k->name, "%s, %s", s->label,
                     versions[v] == TLS1_3_VERSION ? "TLS 1.3" : "TLS 1.2");
            k->kind = s->kind;
            k->leaf = s->leaf;
            k->leaf_only = s->leaf_only;
            k->crl = s->crl;
            k->no_eku_required = s->no_eku_required;
            k->mode = s->mode;
            k->version = versions[v];
            k->want = s->want;
            k->want_upn = s->want_upn;
        }
    }
    return n;
}

/* ---- tls_ctx_new failures ---- */

static void ctx_fails(struct conf *c, const char *want1, const char *want2)
{
    char err[512] = "";
    struct tls_ctx *t = tls_ctx_new(c, err, sizeof err);
    if (t != NULL)
        fail_msg("tls_ctx_new succeeded, want an error with \"%s\"", want1);
    print_message("tls_ctx_new: %s\n", err);
    if (strstr(err, want1) == NULL || (want2 != NULL && strstr(err, want2) == NULL))
        fail_msg("error \"%s\" does not contain \"%s\" / \"%s\"", err, want1,
                 want2 != NULL ? want2 : "");
}

static void test_missing_certificate(void **state)
{
    struct conf c;
    struct paths p;
    base_conf(&c, &p, NULL);
    char missing[600];
    pki(missing, sizeof missing, "no-such-server.pem");
    c.certificate = missing;
    ctx_fails(&c, missing, "No such file");
}

static void test_missing_trust_files(void **state)
{
    struct conf c;
    struct paths p;
    char missing[600];
    pki(missing, sizeof missing, "no-such-file.pem");
    base_conf(&c, &p, NULL);
    c.trust_anchors = missing;
    ctx_fails(&c, "trust_anchors", "No such file");
    base_conf(&c, &p, NULL);
    c.trusted_issuers = missing;
    ctx_fails(&c, "trusted_issuers", "No such file");
    base_conf(&c, &p, NULL);
    c.crl_file = missing;
    ctx_fails(&c, "crl_file", missing);
}

static void test_key_mismatch(void **state)
{
    struct conf c;
    struct paths p;
    base_conf(&c, &p, NULL);
    char other[512];
    c.private_key = pki(other, sizeof other, "good.key");
    ctx_fails(&c, "good.key", "mismatch");
}

static void test_wrong_content(void **state)
{
    struct conf c;
    struct paths p;
    char f[512];
    /* A CRL file without CRLs, a trust anchor file without certificates. */
    base_conf(&c, &p, NULL);
    c.crl_file = pki(f, sizeof f, "trusted-issuers.pem");
    ctx_fails(&c, "crl_file", "no CRL found");
    base_conf(&c, &p, NULL);
    c.trust_anchors = pki(f, sizeof f, "crl.pem");
    ctx_fails(&c, "trust_anchors", "no certificate found");
}

/* mkpki's badutf8 (CN with invalid UTF-8) cannot even be decoded by OpenSSL
 * 3.0, so no handshake can present it; badutf8upn covers the case. Should a
 * later OpenSSL decode it, this fails as a reminder to add it above. */
static void test_badutf8_undecodable(void **state)
{
    char path[512];
    assert_int_equal(access(pki(path, sizeof path, "badutf8.crt"), R_OK), 0);
    X509 *x = testpki_cert("badutf8.crt");
    ERR_clear_error();
    assert_null(x);
}

/* A cipher list with nothing for the certificate's key type would fail every
 * TLS 1.2 handshake: refused at start-up, unless TLS 1.2 is off anyway. */
static void test_ciphers_for_key(void **state)
{
    struct conf c;
    struct paths p;
    char err[512] = "";
    base_conf(&c, &p, NULL);
    c.ciphers = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305";
    ctx_fails(&c, "[tls] ciphers", "EC key of certificate");
    c.min_protocol = TLS1_3_VERSION;
    struct tls_ctx *t = tls_ctx_new(&c, err, sizeof err);
    if (t == NULL)
        fail_msg("tls_ctx_new with TLS 1.3 only: %s", err);
    tls_ctx_free(t);
    base_conf(&c, &p, NULL);
    c.ciphers = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384";
    t = tls_ctx_new(&c, err, sizeof err);
    if (t == NULL)
        fail_msg("tls_ctx_new with one ECDSA cipher: %s", err);
    tls_ctx_free(t);
}

/* Without any need for a certificate the server does not ask for one, so a
 * client's certificate is never even seen. */
static void test_no_request_when_ignored(void **state)
{
    struct conf c;
    struct paths p;
    char err[512] = "";
    base_conf(&c, &p, NULL);
    c.cert_mode = CERT_IGNORE;
    struct tls_ctx *t = tls_ctx_new(&c, err, sizeof err);
    if (t == NULL)
        fail_msg("tls_ctx_new: %s", err);
    struct vcase k = {.name = "ignore",
                      .kind = LEAF_PKI,
                      .leaf = "good",
                      .mode = CERT_REQUIRE,
                      .version = TLS1_3_VERSION};
    SSL_CTX *cctx = client_for(&k);
    struct cert_facts *f = NULL;
    assert_int_equal(connect_once(t, cctx, &k, NULL, NULL, NULL, &f), R_CERT_REQUIRED);
    assert_null(f);
    SSL_CTX_free(cctx);
    tls_ctx_free(t);
}

int main(void)
{
    struct vcase *cases = calloc(MAX_CASES, sizeof *cases);
    struct CMUnitTest tests[MAX_CASES + 16];
    size_t n = add_cases(cases, 0, verdicts, sizeof verdicts / sizeof verdicts[0]);
    size_t n_verdicts = n;
    n = add_cases(cases, n, resumptions, sizeof resumptions / sizeof resumptions[0]);
    size_t t = 0;
    for (size_t i = 0; i < n; i++) {
        tests[t++] = (struct CMUnitTest){
            .name = cases[i].name,
            .test_func = i < n_verdicts ? run_case : run_resume,
            .initial_state = &cases[i],
        };
    }
    const struct CMUnitTest fixed[] = {
        cmocka_unit_test(test_missing_certificate), cmocka_unit_test(test_missing_trust_files),
        cmocka_unit_test(test_key_mismatch),        cmocka_unit_test(test_wrong_content),
        cmocka_unit_test(test_badutf8_undecodable), cmocka_unit_test(test_no_request_when_ignored),
        cmocka_unit_test(test_recheck_control),     cmocka_unit_test(test_recheck_crl_expired),
        cmocka_unit_test(test_recheck_crl_missing), cmocka_unit_test(test_recheck_revoked),
        cmocka_unit_test(test_any_issuer),          cmocka_unit_test(test_threads),
        cmocka_unit_test(test_ciphers_for_key),
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        tests[t++] = fixed[i];
    int rc = _cmocka_run_group_tests("tls_verify", tests, t, NULL, NULL);
    free(cases);
    return rc;
}
