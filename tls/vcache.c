/* A cache of client chains that verified: keyed by the SHA-256 of every
 * certificate the client sent, so a device that reconnects with the same
 * chain skips X509_verify_cert (path building, signatures, CRL lookup: the
 * largest part of a mutual-TLS handshake after the key exchange).
 *
 * Only successes are kept, for at most VCACHE_TTL seconds and never past the
 * earliest notAfter of the chain. What depends on the moment is checked on
 * every connection anyway (tls_conn_verdict: the leaf's validity and its
 * revocation against the loaded CRLs), and the client's CertificateVerify
 * signature is checked by the handshake itself, so a cached chain proves
 * nothing about key possession: the client must still hold the key. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "tls/internal.h"

#define VCACHE_SHARDS 16
#define VCACHE_SLOTS 512 /* per shard, direct-mapped: 8 192 chains in all */
#define VCACHE_TTL 300

struct vslot {
    unsigned char key[32];
    time_t until; /* 0: empty */
};

struct vshard {
    pthread_mutex_t mu;
    struct vslot slot[VCACHE_SLOTS];
};

struct tls_vcache {
    struct vshard shard[VCACHE_SHARDS];
};

struct tls_vcache *tls_vcache_new(void)
{
    struct tls_vcache *vc = calloc(1, sizeof *vc);
    if (vc == NULL)
        return NULL;
    for (size_t i = 0; i < VCACHE_SHARDS; i++)
        pthread_mutex_init(&vc->shard[i].mu, NULL);
    return vc;
}

void tls_vcache_free(struct tls_vcache *vc)
{
    if (vc == NULL)
        return;
    for (size_t i = 0; i < VCACHE_SHARDS; i++)
        pthread_mutex_destroy(&vc->shard[i].mu);
    free(vc);
}

int tls_vcache_key(X509 *leaf, STACK_OF(X509) *peer, unsigned char key[32], time_t *not_after)
{
    int ok = 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char *der = NULL;
    if (md == NULL || EVP_DigestInit_ex(md, tls_sha256(), NULL) != 1)
        goto done;
    *not_after = 0;
    int n = peer != NULL ? sk_X509_num(peer) : 0;
    for (int i = -1; i < n; i++) {
        X509 *x = i < 0 ? leaf : sk_X509_value(peer, i);
        int len = i2d_X509(x, &der); /* the received encoding, kept by OpenSSL */
        if (len <= 0 || EVP_DigestUpdate(md, der, (size_t)len) != 1)
            goto done;
        OPENSSL_free(der);
        der = NULL;
        struct tm tm;
        if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) != 1)
            goto done;
        time_t t = timegm(&tm);
        if (*not_after == 0 || t < *not_after)
            *not_after = t;
    }
    ok = EVP_DigestFinal_ex(md, key, NULL) == 1;
done:
    OPENSSL_free(der);
    EVP_MD_CTX_free(md);
    return ok ? 0 : -1;
}

static struct vshard *shard_of(struct tls_vcache *vc, const unsigned char key[32], size_t *slot)
{
    size_t h;
    memcpy(&h, key, sizeof h);
    *slot = (h / VCACHE_SHARDS) % VCACHE_SLOTS;
    return &vc->shard[h % VCACHE_SHARDS];
}

bool tls_vcache_hit(struct tls_vcache *vc, const unsigned char key[32])
{
    size_t i;
    struct vshard *s = shard_of(vc, key, &i);
    time_t now = time(NULL);
    pthread_mutex_lock(&s->mu);
    bool hit = s->slot[i].until > now && memcmp(s->slot[i].key, key, 32) == 0;
    pthread_mutex_unlock(&s->mu);
    return hit;
}

void tls_vcache_put(struct tls_vcache *vc, const unsigned char key[32], time_t not_after)
{
    size_t i;
    struct vshard *s = shard_of(vc, key, &i);
    time_t until = time(NULL) + VCACHE_TTL;
    if (not_after < until)
        until = not_after;
    pthread_mutex_lock(&s->mu);
    memcpy(s->slot[i].key, key, 32);
    s->slot[i].until = until;
    pthread_mutex_unlock(&s->mu);
}
