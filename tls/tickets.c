/* Session-ticket keys (RFC 5077 tickets, TLS 1.2 and 1.3).
 *
 * With [tls] ticket_keys = FILE, the keys come from a file that every
 * instance of a fleet has a copy of, so that a device resumes on whichever
 * instance the load balancer picks. The file's first key encrypts new
 * tickets; every key in it decrypts, and a ticket under an older key is
 * renewed under the first. The file is re-read when it changes, and on a
 * reload (a new tls_ctx reads it).
 *
 * Without a file, the keys are random, made in this process and shared by
 * every generation of it (so a reload does not cost every device a full
 * handshake). A new key is made every [tls] ticket_key_lifetime; the
 * previous one still decrypts for one more lifetime.
 *
 * A set of keys is immutable once made. Handshakes take a reference to the
 * current set under a short lock, and a new file swaps in a new set. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#include "common/log.h"
#include "tls/internal.h"
#include "tls/tls.h"

#define NAME_LEN 16
#define HMAC_LEN 32
#define AES_LEN 32
#define KEY_LEN (NAME_LEN + HMAC_LEN + AES_LEN) /* 80 bytes, as in nginx's and HAProxy's files */
#define KEY_B64_LEN 108                         /* base64 of 80 bytes, with one '=' */
#define KEYS_MAX 16
#define FILE_MAX (64 * 1024)

struct ticket_key {
    unsigned char name[NAME_LEN];
    unsigned char hmac[HMAC_LEN];
    unsigned char aes[AES_LEN];
};

struct ticket_keyset {
    _Atomic unsigned refs;
    size_t n; /* >= 1; k[0] encrypts */
    struct ticket_key k[KEYS_MAX];
};

struct tls_tickets {
    pthread_mutex_t lock;
    struct ticket_keyset *set; /* under <lock> */
    char *path;                /* NULL: random keys */
    struct stat seen;          /* the file as last read (or last refused) */
    uint64_t lifetime_s;       /* random keys: a new one this often */
    time_t made;               /* random keys: when set->k[0] was made */
};

static void keyset_drop(struct ticket_keyset *ks)
{
    if (ks != NULL && atomic_fetch_sub_explicit(&ks->refs, 1, memory_order_acq_rel) == 1) {
        OPENSSL_cleanse(ks, sizeof *ks);
        free(ks);
    }
}

static struct ticket_keyset *keyset_take(struct tls_tickets *tk)
{
    pthread_mutex_lock(&tk->lock);
    struct ticket_keyset *ks = tk->set;
    atomic_fetch_add_explicit(&ks->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&tk->lock);
    return ks;
}

static void keyset_swap(struct tls_tickets *tk, struct ticket_keyset *ks)
{
    pthread_mutex_lock(&tk->lock);
    struct ticket_keyset *old = tk->set;
    tk->set = ks;
    pthread_mutex_unlock(&tk->lock);
    keyset_drop(old);
}

/* ---- the file ---- */

static bool same_file(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* One line: 80 bytes in base64 (`openssl rand 80 | base64 -w0`). */
static int parse_key(const char *line, size_t len, struct ticket_key *out)
{
    unsigned char raw[KEY_B64_LEN / 4 * 3];
    if (len != KEY_B64_LEN || line[len - 1] != '=' || line[len - 2] == '=')
        return -1;
    for (size_t i = 0; i < len - 1; i++) {
        unsigned char ch = (unsigned char)line[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '+' || ch == '/'))
            return -1;
    }
    if (EVP_DecodeBlock(raw, (const unsigned char *)line, (int)len) != (int)sizeof raw)
        return -1;
    memcpy(out->name, raw, NAME_LEN);
    memcpy(out->hmac, raw + NAME_LEN, HMAC_LEN);
    memcpy(out->aes, raw + NAME_LEN + HMAC_LEN, AES_LEN);
    OPENSSL_cleanse(raw, sizeof raw);
    return 0;
}

/* Reads <path>: one key per line, newest first; blank lines and lines
 * starting with '#' are skipped. A new set, or NULL with "PATH:LINE: reason"
 * (or "PATH: reason") in <err>; <st> receives the file's stat either way
 * when it could be opened. */
static struct ticket_keyset *keyset_read(const char *path, struct stat *st, char *err,
                                         size_t errlen)
{
    struct ticket_keyset *ks = NULL;
    char *text = NULL;
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    if (fstat(fileno(f), st) < 0 || !S_ISREG(st->st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        goto out;
    }
    if (st->st_size > FILE_MAX) {
        snprintf(err, errlen, "%s: larger than %d bytes", path, FILE_MAX);
        goto out;
    }
    text = malloc((size_t)st->st_size + 1);
    ks = calloc(1, sizeof *ks);
    if (text == NULL || ks == NULL) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    size_t len = fread(text, 1, (size_t)st->st_size, f);
    if (ferror(f) || len != (size_t)st->st_size) {
        snprintf(err, errlen, "%s: cannot read it", path);
        goto fail;
    }
    text[len] = '\0';
    int line = 0;
    for (char *p = text; p < text + len;) {
        char *nl = memchr(p, '\n', (size_t)(text + len - p));
        char *end = nl != NULL ? nl : text + len;
        line++;
        size_t n = (size_t)(end - p);
        while (n > 0 && (p[n - 1] == '\r' || p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        while (n > 0 && (*p == ' ' || *p == '\t'))
            p++, n--;
        if (n > 0 && *p != '#') {
            if (memchr(p, '\0', n) != NULL || ks->n == KEYS_MAX) {
                snprintf(err, errlen, "%s:%d: %s", path, line,
                         ks->n == KEYS_MAX ? "more than 16 keys" : "a NUL byte");
                goto fail;
            }
            if (parse_key(p, n, &ks->k[ks->n]) < 0) {
                snprintf(err, errlen,
                         "%s:%d: not a ticket key: each line is 80 random bytes in base64 "
                         "(108 characters; make one with: openssl rand 80 | base64 -w0)",
                         path, line);
                goto fail;
            }
            for (size_t i = 0; i < ks->n; i++)
                if (memcmp(ks->k[i].name, ks->k[ks->n].name, NAME_LEN) == 0) {
                    snprintf(err, errlen, "%s:%d: the same key name as key %zu", path, line,
                             i + 1);
                    goto fail;
                }
            ks->n++;
        }
        p = nl != NULL ? nl + 1 : end;
    }
    if (ks->n == 0) {
        snprintf(err, errlen, "%s: no key in it (one per line, the first encrypts)", path);
        goto fail;
    }
    atomic_init(&ks->refs, 1);
    goto out;
fail:
    if (ks != NULL) {
        OPENSSL_cleanse(ks, sizeof *ks);
        free(ks);
    }
    ks = NULL;
out:
    if (text != NULL) {
        OPENSSL_cleanse(text, (size_t)st->st_size);
        free(text);
    }
    fclose(f);
    return ks;
}

/* ---- random keys ---- */

/* A new random set: a fresh first key, and the previous first key, if any,
 * kept to decrypt for one more lifetime. */
static struct ticket_keyset *keyset_random(const struct ticket_keyset *prev)
{
    struct ticket_keyset *ks = calloc(1, sizeof *ks);
    if (ks == NULL)
        return NULL;
    if (RAND_bytes((unsigned char *)&ks->k[0], (int)sizeof ks->k[0]) != 1) {
        free(ks);
        return NULL;
    }
    ks->n = 1;
    if (prev != NULL)
        ks->k[ks->n++] = prev->k[0];
    atomic_init(&ks->refs, 1);
    return ks;
}

/* The process's random keys, for every tls_ctx without a file: a reload
 * (a new tls_ctx) keeps them, so devices keep resuming. */
static pthread_once_t random_once = PTHREAD_ONCE_INIT;
static struct tls_tickets random_tickets;
static bool random_ok;

static void random_init(void)
{
    pthread_mutex_init(&random_tickets.lock, NULL);
    random_tickets.set = keyset_random(NULL);
    random_tickets.made = time(NULL);
    random_ok = random_tickets.set != NULL;
}

/* ---- OpenSSL's callback ---- */

static int ticket_cb(SSL *ssl, unsigned char key_name[16], unsigned char iv[16],
                     EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
    struct tls_ctx *t = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), tls_tickets_ctx_index());
    if (t == NULL || t->tickets == NULL)
        return -1;
    struct ticket_keyset *ks = keyset_take(t->tickets);
    const struct ticket_key *k = NULL;
    int rc = -1;
    size_t i = 0;
    if (enc) {
        k = &ks->k[0];
        if (RAND_bytes(iv, EVP_MAX_IV_LENGTH) != 1)
            goto out;
        memcpy(key_name, k->name, NAME_LEN);
        if (EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) != 1)
            goto out;
    } else {
        for (i = 0; i < ks->n && memcmp(key_name, ks->k[i].name, NAME_LEN) != 0; i++)
            ;
        if (i == ks->n) {
            rc = 0; /* a key no longer in the set: a full handshake */
            goto out;
        }
        k = &ks->k[i];
        if (EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) != 1)
            goto out;
    }
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)(uintptr_t)k->hmac,
                                          HMAC_LEN),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)(uintptr_t) "SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (EVP_MAC_CTX_set_params(hctx, params) != 1)
        goto out;
    /* Decrypted under an older key: good, and renewed under the newest. */
    rc = enc || i == 0 ? 1 : 2;
out:
    keyset_drop(ks);
    return rc;
}

static int ctx_index = -1;
static pthread_once_t index_once = PTHREAD_ONCE_INIT;

static void index_init(void)
{
    ctx_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

int tls_tickets_ctx_index(void)
{
    pthread_once(&index_once, index_init);
    return ctx_index;
}

/* ---- life ---- */

int tls_tickets_setup(struct tls_ctx *t, const struct conf *c, char *err, size_t errlen)
{
    char where[512], why[1024];
    if (tls_tickets_ctx_index() < 0 ||
        SSL_CTX_set_ex_data(t->ssl, tls_tickets_ctx_index(), t) != 1) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (c->ticket_keys == NULL) {
        pthread_once(&random_once, random_init);
        if (!random_ok) {
            snprintf(err, errlen, "cannot make random session-ticket keys");
            return -1;
        }
        pthread_mutex_lock(&random_tickets.lock);
        random_tickets.lifetime_s = c->ticket_key_lifetime_ms / 1000;
        pthread_mutex_unlock(&random_tickets.lock);
        t->tickets = &random_tickets;
    } else {
        struct tls_tickets *tk = calloc(1, sizeof *tk);
        if (tk == NULL) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        pthread_mutex_init(&tk->lock, NULL);
        tk->path = strdup(c->ticket_keys);
        tk->set = tk->path != NULL ? keyset_read(tk->path, &tk->seen, why, sizeof why) : NULL;
        t->tickets = tk;
        t->tickets_owned = true;
        if (tk->set == NULL) {
            snprintf(err, errlen, "%s: %s",
                     conf_where(c, "tls", "ticket_keys", where, sizeof where),
                     tk->path != NULL ? why : "out of memory");
            return -1;
        }
    }
    if (SSL_CTX_set_tlsext_ticket_key_evp_cb(t->ssl, ticket_cb) != 1) {
        snprintf(err, errlen, "cannot set the session-ticket callback");
        return -1;
    }
    return 0;
}

void tls_tickets_free(struct tls_ctx *t)
{
    if (t == NULL || !t->tickets_owned || t->tickets == NULL)
        return;
    struct tls_tickets *tk = t->tickets;
    keyset_drop(tk->set);
    pthread_mutex_destroy(&tk->lock);
    free(tk->path);
    free(tk);
    t->tickets = NULL;
}

void tls_ctx_tick(struct tls_ctx *t, time_t now)
{
    struct tls_tickets *tk = t->tickets;
    if (tk == NULL)
        return;
    if (tk->path == NULL) {
        /* Random keys: a new one each lifetime, the last one kept to decrypt. */
        if (tk->lifetime_s == 0 || now - tk->made < (time_t)tk->lifetime_s)
            return;
        struct ticket_keyset *cur = keyset_take(tk);
        struct ticket_keyset *ks = keyset_random(cur);
        keyset_drop(cur);
        if (ks == NULL) {
            log_warn("tls: cannot make a new session-ticket key; keeping the current one");
            return;
        }
        keyset_swap(tk, ks);
        tk->made = now;
        log_info("tls: new session-ticket key; the previous one still decrypts for %llu s",
                 (unsigned long long)tk->lifetime_s);
        return;
    }
    struct stat st;
    if (stat(tk->path, &st) < 0 || same_file(&st, &tk->seen))
        return; /* gone (being replaced?) or unchanged: the keys in use stay */
    char why[1024];
    struct ticket_keyset *ks = keyset_read(tk->path, &st, why, sizeof why);
    tk->seen = st; /* a bad file is reported once, not every second */
    if (ks == NULL) {
        log_error("tls: session-ticket keys: %s; the keys in use stay", why);
        return;
    }
    size_t n = ks->n;
    keyset_swap(tk, ks);
    log_info("tls: session-ticket keys re-read from %s: %zu key%s, the first encrypts", tk->path,
             n, n == 1 ? "" : "s");
}
