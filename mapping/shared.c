/* What the identity cache shares with other instances (through Redis,
 * shcache/): the configuration's fingerprint that keys are made of, and the
 * value format, written here and read back as hostile input. Whoever can
 * write to Redis must not be able to map a certificate to an account: each
 * value carries an HMAC-SHA256, under a key only the instances hold, over
 * the Redis key and the value, so that a value can neither be forged nor
 * moved to another certificate or configuration. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "common/text.h"
#include "mapping/internal.h"

#define VALUE_MAGIC "cm1 "
#define VALUE_MAX MAP_SHARED_VALUE_MAX
#define FIELD_DIGITS 5 /* a field's length: CM_DIRTEXT_MAX fits */
#define N_FIELDS 6
/* A value that claims to live longer than this is not one we wrote (the
 * longest TTL is 24 h): refused rather than kept that long. */
#define EXPIRES_AHEAD_MAX_MS (25ull * 3600 * 1000)

static const char hexd[] = "0123456789abcdef";

static void hex_of(const unsigned char *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hexd[b[i] >> 4];
        out[2 * i + 1] = hexd[b[i] & 15];
    }
    out[2 * n] = '\0';
}

static int hash_file(EVP_MD_CTX *md, const char *path)
{
    unsigned char buf[8192];
    size_t n;
    FILE *fp = fopen(path, "rbe");
    if (fp == NULL)
        return -1;
    while ((n = fread(buf, 1, sizeof buf, fp)) > 0) {
        if (EVP_DigestUpdate(md, buf, n) != 1) {
            fclose(fp);
            return -1;
        }
    }
    int rc = ferror(fp) ? -1 : 0;
    fclose(fp);
    return rc;
}

int map_shared_fingerprint(const struct conf *c, char out[65], char *err, size_t errlen)
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    const char *mapping = conf_section_text(c, "mapping"), *ldap = conf_section_text(c, "ldap");
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md != NULL && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1;

    /* The format's version first: a change of what a value means changes every key. */
    ok = ok && EVP_DigestUpdate(md, "certmapd shared cache 1\n[mapping]\n", 35) == 1;
    /* The shared_cache keys say where answers are kept, not what they are:
     * instances that differ only there still share. */
    for (const char *l = mapping; ok && *l != '\0';) {
        size_t n = strcspn(l, "\n");
        if (strncmp(l, "shared_cache", 12) != 0)
            ok = EVP_DigestUpdate(md, l, n) == 1 && EVP_DigestUpdate(md, "\n", 1) == 1;
        l += n + (l[n] == '\n');
    }
    ok = ok && EVP_DigestUpdate(md, "[ldap]\n", 7) == 1;
    ok = ok && EVP_DigestUpdate(md, ldap, strlen(ldap)) == 1;
    if (ok && c->map_source == MAP_SOURCE_LDIF && c->ldif_file != NULL) {
        ok = EVP_DigestUpdate(md, "[ldif]\n", 7) == 1;
        if (ok && hash_file(md, c->ldif_file) < 0) {
            snprintf(err, errlen, "cannot read \"%s\" for the shared cache's keys", c->ldif_file);
            EVP_MD_CTX_free(md);
            return -1;
        }
    }
    ok = ok && EVP_DigestFinal_ex(md, d, &dlen) == 1 && dlen == 32;
    EVP_MD_CTX_free(md);
    if (!ok) {
        snprintf(err, errlen, "SHA-256 failed");
        return -1;
    }
    hex_of(d, 32, out);
    return 0;
}

/* ---- values ---- */

struct buf {
    char *p;
    size_t len, cap;
    bool failed;
};

static void buf_add(struct buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_str(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static int mac_of(const unsigned char *key, size_t key_len, const char *rkey, const char *body,
                  size_t body_len, unsigned char out[32])
{
    unsigned int n = 0;
    size_t rlen = strlen(rkey);
    char *msg = malloc(rlen + 1 + body_len);
    if (msg == NULL)
        return -1;
    memcpy(msg, rkey, rlen);
    msg[rlen] = '\n';
    memcpy(msg + rlen + 1, body, body_len);
    unsigned char *r = HMAC(EVP_sha256(), key, (int)key_len, (const unsigned char *)msg,
                            rlen + 1 + body_len, out, &n);
    free(msg);
    return r != NULL && n == 32 ? 0 : -1;
}

/* The refusals that mapping decides, and so may be shared. */
static bool shareable_refusal(enum reason r)
{
    return r == R_NO_MAPPING || r == R_AMBIGUOUS_MAPPING || r == R_WEAK_MAPPING ||
           r == R_SID_MISMATCH || r == R_ACCOUNT_DISABLED;
}

char *map_shared_encode(const struct map_result *r, uint64_t expires_ms, const char *rkey,
                        const unsigned char *mac_key, size_t mac_key_len, size_t *len)
{
    const char *fields[N_FIELDS] = {r->upn, r->dn, r->sid, r->sam, r->method, r->detail};
    struct buf b = {0};
    char num[32];
    unsigned char mac[32];
    char mac_hex[65];

    if (mac_key == NULL || mac_key_len == 0 ||
        (r->reason != R_NONE && !shareable_refusal(r->reason)))
        return NULL;
    buf_str(&b, VALUE_MAGIC);
    snprintf(num, sizeof num, "%llu ", (unsigned long long)expires_ms);
    buf_str(&b, num);
    buf_str(&b, r->reason == R_NONE ? "ok" : reason_name(r->reason));
    for (size_t i = 0; i < N_FIELDS; i++) {
        if (fields[i] == NULL) {
            buf_str(&b, " -");
            continue;
        }
        size_t flen = strlen(fields[i]);
        if (flen > CM_DIRTEXT_MAX)
            b.failed = true;
        snprintf(num, sizeof num, " %zu:", flen);
        buf_str(&b, num);
        buf_add(&b, fields[i], flen);
    }
    if (!b.failed &&
        (b.len > VALUE_MAX - 66 || mac_of(mac_key, mac_key_len, rkey, b.p, b.len, mac) < 0))
        b.failed = true;
    if (!b.failed) {
        hex_of(mac, 32, mac_hex);
        buf_str(&b, " ");
        buf_str(&b, mac_hex);
    }
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

/* Decimal digits at <*p> (1..<max_digits> of them, no leading zero but "0")
 * before <end>; advances <*p>. -1 when there are none, too many, or a leading zero. */
static int read_num(const char **p, const char *end, int max_digits, uint64_t *out)
{
    const char *s = *p;
    uint64_t v = 0;
    int n = 0;
    while (s < end && *s >= '0' && *s <= '9') {
        if (++n > max_digits)
            return -1;
        v = v * 10 + (uint64_t)(*s - '0');
        s++;
    }
    if (n == 0 || (n > 1 && **p == '0'))
        return -1;
    *p = s;
    *out = v;
    return 0;
}

static int fail_why(const char **why, const char *text)
{
    *why = text;
    return -1;
}

int map_shared_decode(const char *val, size_t len, const char *rkey, const unsigned char *mac_key,
                      size_t mac_key_len, uint64_t now_ms, struct map_result *out, uint64_t *ttl_ms,
                      const char **why)
{
    const char *p = val, *end = val + len, *tok;
    const char *fptr[N_FIELDS] = {0};
    size_t flen[N_FIELDS] = {0};
    uint64_t expires, v;
    enum reason reason = R_MAX;
    unsigned char mac[32], want[32];
    size_t signed_len;

    memset(out, 0, sizeof *out);
    if (mac_key == NULL || mac_key_len == 0)
        return fail_why(why, "no key to check the value with");
    if (val == NULL || len > VALUE_MAX)
        return fail_why(why, "too long");
    if (len < 4 || memcmp(p, VALUE_MAGIC, 4) != 0)
        return fail_why(why, "not a certmapd value of version 1");
    p += 4;
    if (read_num(&p, end, 15, &expires) < 0 || p == end || *p++ != ' ')
        return fail_why(why, "bad expiry");
    tok = p;
    while (p < end && ((*p >= 'a' && *p <= 'z') || *p == '_'))
        p++;
    if (p == end || *p != ' ' || p == tok)
        return fail_why(why, "bad reason");
    if ((size_t)(p - tok) == 2 && memcmp(tok, "ok", 2) == 0) {
        reason = R_NONE;
    } else {
        for (int r = R_NONE + 1; r < R_MAX; r++) {
            const char *name = reason_name((enum reason)r);
            if (shareable_refusal((enum reason)r) && strlen(name) == (size_t)(p - tok) &&
                memcmp(name, tok, (size_t)(p - tok)) == 0)
                reason = (enum reason)r;
        }
    }
    if (reason == R_MAX)
        return fail_why(why, "a reason that is not shared");
    for (size_t i = 0; i < N_FIELDS; i++) {
        if (p == end || *p++ != ' ')
            return fail_why(why, "truncated");
        if (p < end && *p == '-') {
            p++;
            continue;
        }
        if (read_num(&p, end, FIELD_DIGITS, &v) < 0 || p == end || *p++ != ':')
            return fail_why(why, "bad field length");
        if (v > CM_DIRTEXT_MAX || v > (uint64_t)(end - p))
            return fail_why(why, "field longer than the value");
        fptr[i] = p;
        flen[i] = (size_t)v;
        p += v;
    }
    signed_len = (size_t)(p - val);
    if ((size_t)(end - p) != 65 || *p != ' ')
        return fail_why(why, "no signature");
    p++;
    for (size_t i = 0; i < 32; i++) {
        const char *hi = memchr(hexd, p[2 * i], 16), *lo = memchr(hexd, p[2 * i + 1], 16);
        if (hi == NULL || lo == NULL) /* lower-case only: one spelling per value */
            return fail_why(why, "bad signature");
        mac[i] = (unsigned char)(((hi - hexd) << 4) | (lo - hexd));
    }
    if (mac_of(mac_key, mac_key_len, rkey, val, signed_len, want) < 0)
        return fail_why(why, "out of memory");
    if (CRYPTO_memcmp(mac, want, 32) != 0)
        return fail_why(why, "signature does not verify (another key, or forged)");

    /* Signed by an instance: still checked, as a directory answer would be. */
    if (expires <= now_ms)
        return fail_why(why, "expired");
    if (expires - now_ms > EXPIRES_AHEAD_MAX_MS)
        return fail_why(why, "expires too far ahead");
    for (size_t i = 0; i < N_FIELDS; i++) {
        if (fptr[i] != NULL && !cm_dirtext_valid(fptr[i], flen[i]))
            return fail_why(why, "a field is not directory text");
    }
    if (fptr[2] != NULL) {
        unsigned char sid[CM_SID_BIN_MAX];
        size_t sidlen = sizeof sid;
        if (cm_sid_to_binary(fptr[2], flen[2], sid, &sidlen) < 0)
            return fail_why(why, "bad SID");
    }
    if (reason == R_NONE && (fptr[1] == NULL || fptr[4] == NULL))
        return fail_why(why, "a mapping without its account");
    if (reason != R_NONE && (fptr[0] || fptr[1] || fptr[2] || fptr[3] || fptr[4]))
        return fail_why(why, "a refusal with an account");

    char **dst[N_FIELDS] = {&out->upn, &out->dn, &out->sid, &out->sam, &out->method, &out->detail};
    for (size_t i = 0; i < N_FIELDS; i++) {
        if (fptr[i] == NULL)
            continue;
        *dst[i] = strndup(fptr[i], flen[i]);
        if (*dst[i] == NULL) {
            map_result_purge(out);
            return fail_why(why, "out of memory");
        }
    }
    out->reason = reason;
    *ttl_ms = expires - now_ms;
    return 0;
}
