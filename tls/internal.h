/* tls/ private: the server context's layout, shared by ctx.c (building it)
 * and verify.c (judging client certificates). Not for use outside tls/. */
#ifndef CM_TLS_INTERNAL_H
#define CM_TLS_INTERNAL_H

#include <stdbool.h>
#include <time.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "common/reason.h"
#include "conf/conf.h"

/* A CRL together with the certificate whose key verified its signature at
 * load time. Two CAs may share a subject name (a re-keyed or rogue CA), so a
 * CRL is tied to its signer by key, never by name alone. */
struct tls_crl {
    X509_CRL *crl;
    X509 *signer; /* borrowed from tls_ctx.anchors or tls_ctx.issuers; NULL: no known signer */
    ASN1_OCTET_STRING *akid; /* the CRL's authority key id; with no known signer (an
                              * intermediate when trusted_issuers is unset), the only tie */
};

struct tls_ctx {
    SSL_CTX *ssl;
    X509_STORE *store;        /* trust anchors + CRLs + flags + depth; shared, read-only */
    STACK_OF(X509) *anchors; /* the trust anchors, as loaded */
    STACK_OF(X509) *issuers; /* trusted_issuers; NULL: any issuer under an anchor */
    struct tls_crl *crls;     /* NULL when no crl_file */
    size_t n_crls;
    bool crl_check;
    bool require_eku;
    bool cert_at_handshake;  /* the first handshake asks for a certificate */
    int late_idx;            /* SSL ex_data index of a pending late request (tls/late.c) */
    struct tls_vcache *vcache; /* chains that verified (tls/vcache.c) */
    struct tls_tickets *tickets; /* session-ticket keys (tls/tickets.c) */
    bool tickets_owned;          /* from a file: this context's own; else the process's */
};

/* ---- tls/tickets.c: session-ticket keys ---- */
struct tls_tickets;
/* The keys of [tls] ticket_keys, or the process's random ones, and OpenSSL's
 * ticket callback on <t>. 0, or -1 with "FILE:LINE: [tls] ticket_keys: ..." in <err>. */
int tls_tickets_setup(struct tls_ctx *t, const struct conf *c, char *err, size_t errlen);
void tls_tickets_free(struct tls_ctx *t);
/* The SSL_CTX ex_data index where the owning tls_ctx is kept. */
int tls_tickets_ctx_index(void);

/* ---- tls/vcache.c: chains that verified ---- */
struct tls_vcache;
struct tls_vcache *tls_vcache_new(void);
void tls_vcache_free(struct tls_vcache *vc);
/* The cache key of the chain <leaf> + <peer> (SHA-256 over every DER) and the
 * earliest notAfter among them. 0, or -1 when it cannot be computed. */
int tls_vcache_key(X509 *leaf, STACK_OF(X509) *peer, unsigned char key[32], time_t *not_after);
/* Whether the chain with <key> verified within the last minutes. */
bool tls_vcache_hit(struct tls_vcache *vc, const unsigned char key[32]);
/* Records that the chain with <key> verified (kept until <not_after> at most). */
void tls_vcache_put(struct tls_vcache *vc, const unsigned char key[32], time_t not_after);

/* The info callback of the server SSL_CTX: notices the end of a handshake
 * that a late certificate request started (tls/late.c). */
void tls_late_info_cb(const SSL *ssl, int where, int ret);

/* ex_data free function of late_idx: a pending request goes with its SSL. */
void tls_late_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp);

/* The cert_verify_callback installed on the server SSL_CTX; <arg> is the
 * struct tls_ctx. Always returns 1 (the handshake completes) and leaves the
 * outcome as an X509_V_* code in <xs>, which OpenSSL keeps in the SSL and its
 * session, so the verdict survives resumption. */
int tls_verify_cb(X509_STORE_CTX *xs, void *arg);

/* The reason code for an X509_V_* verify result (X509_V_OK gives R_NONE). */
enum reason tls_reason_from_verify(long code);

/* Writes <name> as an RFC 4514 string with control and non-ASCII bytes
 * escaped, for log lines only (cut with "..." when longer than <len>). */
void tls_name_for_log(const X509_NAME *name, char *buf, size_t len);

/* ---- tls/facts.c ---- */
/* SHA-256, fetched once for the process (never freed). */
const EVP_MD *tls_sha256(void);

#endif
