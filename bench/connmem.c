/* connmem: what OpenSSL holds for one idle mutual-TLS connection of certmapd.
 *
 *   connmem PKI_DIR [N]
 *
 * Builds certmapd's own server context (tls_ctx_new, from a configuration like
 * bench/run's), runs N TLS 1.3 handshakes over memory BIOs with the client
 * certificate good.chain.pem (leaf + issuing CA; tests/support/tlspair.c), does what proxy/conn.c does
 * after a handshake (verdict, tls_conn_drop_chain), gives each server SSL a
 * null BIO (so no transport buffer is counted) and keeps all N. The heap in use
 * (glibc mallinfo2) before and after, divided by N, is the SSL object with its
 * session. The same for N decoded copies of the leaf and of the issuing CA
 * gives what one decoded certificate costs. One JSON line on stdout:
 *   {"n":N,"ssl_bytes":B,"leaf_bytes":L,"ca_bytes":C}
 * glibc's allocator, not jemalloc (certmapd's): sizes, not RSS. */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "conf/conf.h"
#include "tests/support/tlspair.h"
#include "tls/tls.h"

static size_t heap_used(void)
{
    return mallinfo2().uordblks;
}

static int die(const char *what)
{
    fprintf(stderr, "connmem: %s\n", what);
    ERR_print_errors_fp(stderr);
    return 1;
}

/* Bytes of heap per decoded copy of the first certificate in <path>. */
static long cert_bytes(const char *path, int n)
{
    FILE *f = fopen(path, "r");
    X509 *x = f != NULL ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f != NULL)
        fclose(f);
    unsigned char *der = NULL;
    int len = x != NULL ? i2d_X509(x, &der) : -1;
    X509_free(x);
    if (len <= 0)
        return -1;
    X509 **v = calloc((size_t)n, sizeof *v);
    if (v == NULL)
        return -1;
    size_t before = heap_used();
    for (int i = 0; i < n; i++) {
        const unsigned char *p = der;
        v[i] = d2i_X509(NULL, &p, len);
        /* libssl's verification caches the extensions, as in a handshake. */
        if (v[i] != NULL)
            X509_check_purpose(v[i], -1, 0);
    }
    long per = (long)((heap_used() - before) / (size_t)n);
    for (int i = 0; i < n; i++)
        X509_free(v[i]);
    free(v);
    OPENSSL_free(der);
    return per;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: connmem PKI_DIR [N]\n");
        return 2;
    }
    const char *pki = argv[1];
    int n = argc > 2 ? atoi(argv[2]) : 200;
    if (n < 1 || n > 100000)
        return die("N must be 1..100000");

    char conf_path[] = "/tmp/connmem-XXXXXX";
    int fd = mkstemp(conf_path);
    FILE *cf = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (cf == NULL)
        return die("cannot write a temporary configuration");
    fprintf(cf,
            "[server]\nlisten = 127.0.0.1:1\nlog_level = error\n"
            "[tls]\ncertificate = %s/server-chain.pem\nprivate_key = %s/server.key\n"
            "[client_certificate]\nmode = require\ntrust_anchors = %s/root-ca.crt\n"
            "negotiate_at_handshake = yes\n"
            "[backend]\nurl = http://127.0.0.1:1\n",
            pki, pki, pki);
    fclose(cf);
    char err[1024];
    struct conf *c = NULL;
    int rc = conf_load(conf_path, &c, err, sizeof err);
    unlink(conf_path);
    if (rc < 0) {
        fprintf(stderr, "connmem: %s\n", err);
        return 1;
    }
    struct tls_ctx *t = tls_ctx_new(c, err, sizeof err);
    if (t == NULL) {
        fprintf(stderr, "connmem: %s\n", err);
        return 1;
    }

    char chain[1024], key[1024], root[1024], leaf[1024], ca[1024];
    snprintf(chain, sizeof chain, "%s/good.chain.pem", pki);
    snprintf(key, sizeof key, "%s/good.key", pki);
    snprintf(root, sizeof root, "%s/root-ca.crt", pki);
    snprintf(leaf, sizeof leaf, "%s/good.crt", pki);
    snprintf(ca, sizeof ca, "%s/issuing-ca.crt", pki);
    SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
    if (cctx == NULL || SSL_CTX_set_min_proto_version(cctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_use_certificate_chain_file(cctx, chain) != 1 ||
        SSL_CTX_use_PrivateKey_file(cctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_load_verify_locations(cctx, root, NULL) != 1)
        return die("client context");

    SSL **held = calloc((size_t)n, sizeof *held);
    if (held == NULL)
        return die("out of memory");
    /* One connection first, outside the count: one-time caches (the chain
     * verification cache, OpenSSL's lazily built tables) are not per connection. */
    for (int i = -1; i < n; i++) {
        static size_t before;
        if (i == 0)
            before = heap_used();
        SSL *cl = SSL_new(cctx), *sv = tls_conn_new(t);
        if (cl == NULL || sv == NULL || tlspair_handshake(cl, sv) != 0)
            return die("handshake failed");
        struct cert_facts *facts = NULL;
        if (tls_conn_verdict(t, sv, CERT_REQUIRE, &facts) != R_NONE)
            return die("client certificate refused");
        tls_facts_free(facts);
        tls_conn_drop_chain(sv);
        BIO *null = BIO_new(BIO_s_null());
        if (null == NULL)
            return die("out of memory");
        SSL_set_bio(sv, null, null); /* frees the BIO pair's server half */
        SSL_free(cl);
        if (i < 0) {
            SSL_free(sv);
            continue;
        }
        held[i] = sv;
        if (i == n - 1)
            printf("{\"n\":%d,\"ssl_bytes\":%ld,\"leaf_bytes\":%ld,\"ca_bytes\":%ld}\n", n,
                   (long)((heap_used() - before) / (size_t)n), cert_bytes(leaf, n),
                   cert_bytes(ca, n));
    }
    for (int i = 0; i < n; i++)
        SSL_free(held[i]);
    free(held);
    SSL_CTX_free(cctx);
    tls_ctx_free(t);
    conf_free(c);
    return 0;
}
