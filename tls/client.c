/* TLS towards the backend: certificate and host name verification. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tls/tls.h"

struct tls_client_ctx {
    SSL_CTX *ctx;
};

struct tls_client_ctx *tls_client_ctx_new(const struct conf *c, char *err, size_t errlen)
{
    struct tls_client_ctx *t = calloc(1, sizeof *t);
    if (t == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    t->ctx = SSL_CTX_new(TLS_client_method());
    if (t->ctx == NULL) {
        snprintf(err, errlen, "backend TLS: out of memory");
        goto fail;
    }
    SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(t->ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
    int ok = c->backend_ca_file != NULL
                 ? SSL_CTX_load_verify_locations(t->ctx, c->backend_ca_file, NULL)
                 : SSL_CTX_set_default_verify_paths(t->ctx);
    if (ok != 1) {
        char what[1024];
        snprintf(err, errlen, "%s: cannot load \"%s\": %s",
                 conf_where(c, "backend", "ca_file", what, sizeof what),
                 c->backend_ca_file ? c->backend_ca_file : "(system store)",
                 ERR_reason_error_string(ERR_peek_last_error()));
        goto fail;
    }
    return t;
fail:
    tls_client_ctx_free(t);
    return NULL;
}

void tls_client_ctx_free(struct tls_client_ctx *t)
{
    if (t == NULL)
        return;
    SSL_CTX_free(t->ctx);
    free(t);
}

SSL *tls_client_conn_new(struct tls_client_ctx *t, const char *host)
{
    SSL *ssl = SSL_new(t->ctx);
    if (ssl == NULL)
        return NULL;
    ASN1_OCTET_STRING *ip = a2i_IPADDRESS(host);
    bool host_is_ip = ip != NULL;
    ASN1_OCTET_STRING_free(ip);
    ERR_clear_error();
    if (host_is_ip) {
        /* SNI must not carry an address; check the address against the SAN instead. */
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) != 1)
            goto fail;
    } else if (SSL_set_tlsext_host_name(ssl, host) != 1 || SSL_set1_host(ssl, host) != 1) {
        goto fail;
    }
    return ssl;
fail:
    SSL_free(ssl);
    return NULL;
}

int tls_server_end_point(SSL *ssl, unsigned char *out, size_t outlen, size_t *len)
{
    static const char prefix[] = "tls-server-end-point:";
    X509 *peer = SSL_get0_peer_certificate(ssl);
    if (peer == NULL || outlen < sizeof prefix - 1 + EVP_MAX_MD_SIZE)
        return -1;
    /* RFC 5929 4.1: the certificate's signature hash, SHA-256 in place of MD5 or SHA-1. */
    int md_nid = NID_undef, pk_nid = NID_undef;
    const EVP_MD *md = NULL;
    if (OBJ_find_sigid_algs(X509_get_signature_nid(peer), &md_nid, &pk_nid) == 1 &&
        md_nid != NID_md5 && md_nid != NID_sha1 && md_nid != NID_undef)
        md = EVP_get_digestbynid(md_nid);
    if (md == NULL)
        md = EVP_sha256();
    unsigned int n = 0;
    memcpy(out, prefix, sizeof prefix - 1);
    if (X509_digest(peer, md, out + sizeof prefix - 1, &n) != 1) {
        ERR_clear_error();
        return -1;
    }
    *len = sizeof prefix - 1 + n;
    return 0;
}
