/* Public keys of certificates through OpenSSL's built-in RSA and EC methods.
 *
 * Why: with OpenSSL 3.0, d2i_X509() decodes a certificate's public key by
 * building an OSSL_DECODER context for it: every decoder of every provider is
 * enumerated and matched by name, under read-write locks, for each key. On
 * this project's bench machine that is ~90 µs of a ~95 µs d2i_X509(), and
 * libssl runs it on every certificate a client sends (twice per full
 * handshake for leaf + issuing CA, once more when a ticket is resumed).
 *
 * x509_pubkey_decode() in OpenSSL 3.0 takes the old direct path (the key
 * type's ASN.1 method: parse the point or the modulus, ~25 µs) when an ENGINE
 * is registered as the EVP_PKEY_METHOD implementation for the key type. So
 * one is registered here, and it implements nothing of its own: it hands out
 * OpenSSL's own built-in RSA and EC methods (EVP_PKEY_meth_find). The same
 * mathematics runs for signatures and key exchange; only the provider
 * dispatch (a fetch per operation) is skipped for those key types.
 *
 * Not done when a FIPS or other non-default provider is wanted: keys must
 * then go through providers, and `[tls] builtin_key_methods = no` says so.
 * The ENGINE API is deprecated in OpenSSL 3 but present in its builds; where
 * it is not (OPENSSL_NO_ENGINE, or OpenSSL 4) this file does nothing. */
/* The one file that uses deprecated OpenSSL API (the build hides it elsewhere). */
#undef OPENSSL_NO_DEPRECATED
#undef OPENSSL_API_COMPAT
#define OPENSSL_API_COMPAT 30000
#define OPENSSL_SUPPRESS_DEPRECATED 1

#include "tls/tls.h"

#include <pthread.h>
#include <stdbool.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>

#if !defined(OPENSSL_NO_ENGINE) && OPENSSL_VERSION_MAJOR == 3
#include <openssl/engine.h>
#define CM_KEYMETH 1
#endif

#ifdef CM_KEYMETH
static const int key_nids[] = {EVP_PKEY_RSA, EVP_PKEY_EC};
#define N_KEYS (sizeof key_nids / sizeof key_nids[0])
static EVP_PKEY_METHOD *key_meths[N_KEYS]; /* copies of the built-in methods */

/* ENGINE_PKEY_METHS_PTR: lists <key_nids>, or gives the method for <nid>. */
static int builtin_pkey_meths(ENGINE *e, EVP_PKEY_METHOD **pmeth, const int **nids, int nid)
{
    (void)e;
    if (pmeth == NULL) {
        *nids = key_nids;
        return (int)N_KEYS;
    }
    for (size_t i = 0; i < N_KEYS; i++) {
        if (key_nids[i] == nid) {
            *pmeth = key_meths[i];
            return 1;
        }
    }
    *pmeth = NULL;
    return 0;
}

/* key_meths[]: OpenSSL's built-in method of each key type, copied with its flags. */
static bool copy_builtin_meths(void)
{
    for (size_t i = 0; i < N_KEYS; i++) {
        const EVP_PKEY_METHOD *src = EVP_PKEY_meth_find(key_nids[i]);
        int id = 0, flags = 0;
        if (src == NULL)
            return false;
        EVP_PKEY_meth_get0_info(&id, &flags, src);
        key_meths[i] = EVP_PKEY_meth_new(key_nids[i], flags);
        if (key_meths[i] == NULL)
            return false;
        EVP_PKEY_meth_copy(key_meths[i], src);
    }
    return true;
}

static int installed; /* 1 registered, -1 failed */
static ENGINE *engine;  /* kept (and reachable) for the process's life */

static void install(void)
{
    ENGINE *e = copy_builtin_meths() ? ENGINE_new() : NULL;
    if (e == NULL)
        goto fail;
    /* The structural reference from ENGINE_new() is kept for the process's
     * life, and so is the functional one from ENGINE_init(): the tables hold
     * the engine only while it is initialised. */
    if (!ENGINE_set_id(e, "certmapd-builtin-keys") ||
        !ENGINE_set_name(e, "certmapd: OpenSSL's built-in RSA and EC key methods") ||
        !ENGINE_set_pkey_meths(e, builtin_pkey_meths) || !ENGINE_init(e)) {
        ENGINE_free(e);
        goto fail;
    }
    if (!ENGINE_register_pkey_meths(e)) {
        ENGINE_finish(e);
        ENGINE_free(e);
        goto fail;
    }
    engine = e;
    installed = 1;
    return;
fail:
    ERR_clear_error();
    installed = -1;
}
#endif

int tls_builtin_key_methods(void)
{
#ifdef CM_KEYMETH
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, install);
    return installed > 0 ? 1 : -1;
#else
    return 0;
#endif
}
