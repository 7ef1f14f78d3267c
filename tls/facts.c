/* Certificate facts: the plain-struct view of an X.509 certificate that
 * mapping/ and proxy/ work from. Every string is checked here, once: a name
 * with an embedded NUL or bytes that are not UTF-8 (cm_utf8_valid: RFC 3629,
 * no overlong form, surrogate or code point past U+10FFFF) refuses the whole
 * certificate (R_CERT_MALFORMED), so no later strcmp, LDAP filter or header
 * can see a value cut short or re-interpreted. The SID extension must be
 * spelled as objectSid is printed (cm_sid_to_binary).
 *
 * altSecurityIdentities form (subject_asi / issuer_asi), as Windows writes
 * X509:<I>...<S>... strings (MS-PKCA 3.1.5.2.1; CertNameToStr with
 * CERT_X500_NAME_STR; docs/mapping.md has the rules and their sources): RDNs
 * in encoded order, joined with "," and no space; values of a multi-valued
 * RDN joined with " + ", in encoded (DER SET) order; Windows' names for the
 * attributes it knows (asi_names[] below), "OID.<dotted>" for every other;
 * values quoted as CertRDNValueToStr quotes them (asi_needs_quotes); a
 * T61String read as UTF-8 when its bytes are UTF-8, else as Latin-1, as
 * CryptoAPI decodes it. Choice where Windows gives no vector: a value that is
 * not a character string (a SEQUENCE, ...) is written as "#" and the hex of
 * its DER, as RFC 4514 does.
 *
 * serial_hex is the DER content of the serial INTEGER, sign byte included when
 * DER has one (serial 0x8001 is "008001"): the bytes Windows shows. OpenSSL's
 * ASN1_INTEGER holds the magnitude without that byte, so the DER is used.
 *
 * Running out of memory also answers R_CERT_MALFORMED: there is no better code,
 * and a certificate that cannot be examined is refused (fail closed). */
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/text.h"
#include "tls/internal.h"
#include "tls/tls.h"

/* No certificate a TLS peer can send comes near this (OpenSSL's default
 * max_cert_list is 100 KiB); anything longer is refused, never cut. */
#define FACTS_MAX_STR (1024 * 1024)

/* The SID in a SAN URL (MS-PKCA 3.1.5.2.1.6): this prefix, then the SID. */
#define SAN_SID_PREFIX "tag:microsoft.com,2022-09-14:sid:"

#define OID_SID_EXT "1.3.6.1.4.1.311.25.2"
#define OID_SID_NAME "1.3.6.1.4.1.311.25.2.1"

struct sbuf {
    char *p;
    size_t len;
    size_t cap;
};

/* Appends <n> bytes; false on allocation failure or past FACTS_MAX_STR. */
static bool sb_add(struct sbuf *b, const void *data, size_t n)
{
    if (n > FACTS_MAX_STR - b->len)
        return false;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 128;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL)
            return false;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return true;
}

static bool sb_str(struct sbuf *b, const char *s)
{
    return sb_add(b, s, strlen(s));
}

/* The built string (never NULL: "" when nothing was added); <b> is emptied. */
static char *sb_take(struct sbuf *b)
{
    char *p = b->p ? b->p : strdup("");
    b->p = NULL;
    b->len = b->cap = 0;
    return p;
}

static void hex_into(char *dst, const unsigned char *p, size_t n, bool reverse)
{
    static const char digits[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = reverse ? p[n - 1 - i] : p[i];
        dst[2 * i] = digits[c >> 4];
        dst[2 * i + 1] = digits[c & 0xF];
    }
    dst[2 * n] = '\0';
}

static char *hex_dup(const unsigned char *p, size_t n, bool reverse)
{
    if (n > FACTS_MAX_STR / 2)
        return NULL;
    char *s = malloc(2 * n + 1);
    if (s != NULL)
        hex_into(s, p, n, reverse);
    return s;
}

/* Types whose content is one byte per character from a 7-bit repertoire: a
 * byte past 0x7F is not a character of theirs, whatever OpenSSL converts it to. */
static bool is_ascii_type(int type)
{
    return type == V_ASN1_PRINTABLESTRING || type == V_ASN1_IA5STRING ||
           type == V_ASN1_VISIBLESTRING || type == V_ASN1_NUMERICSTRING;
}

/* Character-string types: the ones ASN1_STRING_to_UTF8 can convert. */
static bool is_char_type(int type)
{
    return is_ascii_type(type) || type == V_ASN1_UTF8STRING || type == V_ASN1_T61STRING ||
           type == V_ASN1_BMPSTRING || type == V_ASN1_UNIVERSALSTRING;
}

/* <s> as a new NUL-terminated UTF-8 string in <*out> (malloc). False, with
 * <*out> NULL, for a NUL, bytes that are not text of the string's type, a type
 * that is not a character string, or no memory. */
static bool string_utf8(const ASN1_STRING *s, char **out)
{
    const unsigned char *raw = ASN1_STRING_get0_data(s);
    int rawlen = ASN1_STRING_length(s);
    int type = ASN1_STRING_type(s);
    unsigned char *u = NULL;
    int n;

    *out = NULL;
    if (rawlen < 0 || rawlen > FACTS_MAX_STR)
        return false;
    /* Look at the bytes as sent before OpenSSL maps them: a UTF8String must
     * already be clean UTF-8, an ASCII type plain ASCII. */
    if (type == V_ASN1_UTF8STRING && !cm_utf8_valid((const char *)raw, (size_t)rawlen))
        return false;
    if (is_ascii_type(type)) {
        for (int i = 0; i < rawlen; i++)
            if (raw[i] == 0 || raw[i] > 0x7F)
                return false;
    }
    /* CryptoAPI reads a T61String as UTF-8 when its bytes are UTF-8 and as
     * Latin-1 otherwise (which is how OpenSSL converts every T61String). */
    if (type == V_ASN1_T61STRING && cm_utf8_valid((const char *)raw, (size_t)rawlen)) {
        *out = malloc((size_t)rawlen + 1);
        if (*out == NULL)
            return false;
        memcpy(*out, raw, (size_t)rawlen);
        (*out)[rawlen] = '\0';
        return true;
    }
    n = ASN1_STRING_to_UTF8(&u, s);
    if (n < 0)
        return false;
    if (cm_utf8_valid((const char *)u, (size_t)n)) {
        *out = malloc((size_t)n + 1);
        if (*out != NULL) {
            memcpy(*out, u, (size_t)n);
            (*out)[n] = '\0';
        }
    }
    OPENSSL_free(u);
    return *out != NULL;
}

/* Windows' names for RDN attributes: the first name CryptFindOIDInfo gives
 * for each OID of CRYPT_RDN_ATTR_OID_GROUP_ID (Wine crypt32 oid.c, the table
 * CertNameToStr takes its names from), plus SERIALNUMBER and UID, which
 * Windows also names. By dotted OID: OpenSSL's NIDs are not Windows' table. */
static const struct {
    const char *oid;
    const char *name;
} asi_names[] = {
    {"2.5.4.3", "CN"},
    {"2.5.4.7", "L"},
    {"2.5.4.10", "O"},
    {"2.5.4.11", "OU"},
    {"1.2.840.113549.1.9.1", "E"},
    {"2.5.4.6", "C"},
    {"2.5.4.8", "S"},
    {"2.5.4.9", "STREET"},
    {"2.5.4.12", "T"},
    {"2.5.4.42", "G"},
    {"2.5.4.43", "I"},
    {"2.5.4.4", "SN"},
    {"0.9.2342.19200300.100.1.25", "DC"},
    {"2.5.4.5", "SERIALNUMBER"},
    {"2.5.4.13", "Description"},
    {"2.5.4.17", "PostalCode"},
    {"2.5.4.18", "POBox"},
    {"2.5.4.20", "Phone"},
    {"2.5.4.24", "X21Address"},
    {"2.5.4.46", "dnQualifier"},
    {"0.9.2342.19200300.100.1.1", "UID"},
};

/* Appends Windows' name for <obj>, or "OID." and its dotted form. */
static bool asi_add_type(struct sbuf *b, const ASN1_OBJECT *obj)
{
    char oid[128];
    int n = OBJ_obj2txt(oid, sizeof(oid), obj, 1);

    if (n <= 0 || (size_t)n >= sizeof(oid))
        return false;
    for (size_t i = 0; i < sizeof(asi_names) / sizeof(asi_names[0]); i++)
        if (strcmp(asi_names[i].oid, oid) == 0)
            return sb_str(b, asi_names[i].name);
    return sb_str(b, "OID.") && sb_str(b, oid);
}

/* CertRDNValueToStr's rule (Wine crypt32 str.c): quotes around an empty
 * value, one that starts or ends with white space (space, TAB, LF, VT, FF,
 * CR), or one that holds , + = " < > # ; or LF anywhere. A CR inside does
 * not by itself call for quotes. */
static bool asi_needs_quotes(const char *v)
{
    static const char space[] = " \t\n\v\f\r";
    size_t n = strlen(v);

    if (n == 0 || strchr(space, v[0]) != NULL || strchr(space, v[n - 1]) != NULL)
        return true;
    return strpbrk(v, ",+=\"<>#;\n") != NULL;
}

/* Appends "<type>=<value>" for one attribute. R_CERT_MALFORMED for a value
 * with a NUL or bad text. */
static enum reason asi_add_entry(struct sbuf *b, const X509_NAME_ENTRY *e)
{
    const ASN1_OBJECT *obj = X509_NAME_ENTRY_get_object(e);
    ASN1_STRING *val = X509_NAME_ENTRY_get_data(e);
    char *text = NULL;
    unsigned char *der = NULL;
    enum reason r = R_CERT_MALFORMED;

    if (!asi_add_type(b, obj) || !sb_add(b, "=", 1))
        goto fail;

    if (is_char_type(ASN1_STRING_type(val))) {
        if (!string_utf8(val, &text))
            goto fail;
        if (asi_needs_quotes(text)) {
            if (!sb_add(b, "\"", 1))
                goto fail;
            for (const char *c = text; *c != '\0'; c++)
                if (!sb_add(b, c, 1) || (*c == '"' && !sb_add(b, "\"", 1)))
                    goto fail;
            if (!sb_add(b, "\"", 1))
                goto fail;
        } else if (!sb_str(b, text)) {
            goto fail;
        }
    } else {
        /* Not a character string: its DER, as RFC 4514 "#hex". The ASN1_TYPE
         * wrapper is how OpenSSL itself re-encodes a name value. */
        ASN1_TYPE t = {.type = ASN1_STRING_type(val), .value.asn1_string = val};
        int n = i2d_ASN1_TYPE(&t, &der);
        char *h = n > 0 ? hex_dup(der, (size_t)n, false) : NULL;
        bool ok = h != NULL && sb_add(b, "#", 1) && sb_str(b, h);
        free(h);
        if (!ok)
            goto fail;
    }
    r = R_NONE;
fail:
    free(text);
    OPENSSL_free(der);
    return r;
}

/* The altSecurityIdentities form of <name> (see the top of this file). */
static enum reason name_asi(const X509_NAME *name, char **out)
{
    struct sbuf b = {0};
    int count = X509_NAME_entry_count(name);
    int prev_set = -1;
    enum reason r = R_CERT_MALFORMED;

    for (int i = 0; i < count; i++) {
        const X509_NAME_ENTRY *e = X509_NAME_get_entry(name, i);
        int set = X509_NAME_ENTRY_set(e);
        if (i > 0 && !sb_str(&b, set == prev_set ? " + " : ","))
            goto fail;
        prev_set = set;
        r = asi_add_entry(&b, e);
        if (r != R_NONE)
            goto fail;
    }
    *out = sb_take(&b);
    return *out != NULL ? R_NONE : R_CERT_MALFORMED;
fail:
    free(b.p);
    return R_CERT_MALFORMED;
}

/* RFC 4514 form of <name>, UTF-8 kept as UTF-8 (not escaped byte by byte).
 * Every value is checked first: OpenSSL's printer would escape a NUL as \00,
 * but such a name is refused, not displayed. */
static enum reason name_rfc4514(const X509_NAME *name, char **out)
{
    BIO *bio = NULL;
    char *data;
    long n;
    enum reason r = R_CERT_MALFORMED;

    *out = NULL;
    for (int i = 0; i < X509_NAME_entry_count(name); i++) {
        ASN1_STRING *v = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
        char *text;
        if (!is_char_type(ASN1_STRING_type(v)))
            continue; /* printed as #hex: nothing to misread */
        if (!string_utf8(v, &text))
            goto fail;
        free(text);
    }
    bio = BIO_new(BIO_s_mem());
    if (bio == NULL ||
        X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) < 0)
        goto fail;
    n = BIO_get_mem_data(bio, &data);
    if (n < 0 || n > FACTS_MAX_STR || memchr(data, 0, (size_t)n) != NULL)
        goto fail;
    *out = malloc((size_t)n + 1);
    if (*out == NULL)
        goto fail;
    memcpy(*out, data, (size_t)n);
    (*out)[n] = '\0';
    r = R_NONE;
fail:
    BIO_free(bio);
    return r;
}

/* Appends a copy of <s> to the list <*list, *n>. */
static bool list_add(char ***list, size_t *n, char *s)
{
    char **l = realloc(*list, (*n + 1) * sizeof(*l));
    if (l == NULL)
        return false;
    l[(*n)++] = s;
    *list = l;
    return true;
}

/* The SID of a SAN URI <uri> that starts with SAN_SID_PREFIX (compared
 * without regard to case, so that no spelling of it passes for another URI)
 * into <f->san_sid>. Not such a URI: R_NONE, nothing kept. A SID spelled
 * otherwise than objectSid is printed, or a second, different one:
 * R_CERT_MALFORMED. */
static enum reason san_uri_sid(const ASN1_IA5STRING *uri, struct cert_facts *f)
{
    const char *p = (const char *)ASN1_STRING_get0_data(uri);
    int n = ASN1_STRING_length(uri);
    size_t plen = strlen(SAN_SID_PREFIX);
    unsigned char bin[CM_SID_BIN_MAX];
    size_t binlen = sizeof bin;

    if (n < 0 || (size_t)n < plen || strncasecmp(p, SAN_SID_PREFIX, plen) != 0)
        return R_NONE;
    if (ASN1_STRING_type(uri) != V_ASN1_IA5STRING || memchr(p, 0, (size_t)n) != NULL)
        return R_CERT_MALFORMED;
    p += plen;
    n -= (int)plen;
    if (cm_sid_to_binary(p, (size_t)n, bin, &binlen) != 0)
        return R_CERT_MALFORMED;
    if (f->san_sid != NULL)
        return strlen(f->san_sid) == (size_t)n && memcmp(f->san_sid, p, (size_t)n) == 0
                   ? R_NONE
                   : R_CERT_MALFORMED; /* two SIDs: which account is meant? */
    f->san_sid = strndup(p, (size_t)n);
    return f->san_sid != NULL ? R_NONE : R_CERT_MALFORMED;
}

/* UPN, rfc822Name and dNSName values of the subjectAltName extension, and
 * the SID of a SAN URL. */
static enum reason facts_san(X509 *x, struct cert_facts *f)
{
    int crit = -1;
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, &crit, NULL);
    enum reason r = R_CERT_MALFORMED;

    if (gens == NULL)
        return crit == -1 ? R_NONE : R_CERT_MALFORMED; /* -2: twice; >= 0: undecodable */

    for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        ASN1_OBJECT *oid;
        ASN1_TYPE *val;
        char *s = NULL;
        char ***list;
        size_t *count;

        if (g->type == GEN_OTHERNAME) {
            GENERAL_NAME_get0_otherName(g, &oid, &val);
            /* Only a UTF8String is a UPN (as AD CS writes it); anything else
             * under that OID is not one and is not used. */
            if (OBJ_obj2nid(oid) != NID_ms_upn || val->type != V_ASN1_UTF8STRING)
                continue;
            if (!string_utf8(val->value.utf8string, &s))
                goto fail;
            list = &f->upn;
            count = &f->n_upn;
        } else if (g->type == GEN_EMAIL || g->type == GEN_DNS) {
            const ASN1_IA5STRING *ia5 = g->type == GEN_EMAIL ? g->d.rfc822Name : g->d.dNSName;
            if (ASN1_STRING_type(ia5) != V_ASN1_IA5STRING || !string_utf8(ia5, &s))
                goto fail;
            list = g->type == GEN_EMAIL ? &f->rfc822 : &f->dns;
            count = g->type == GEN_EMAIL ? &f->n_rfc822 : &f->n_dns;
        } else if (g->type == GEN_URI) {
            if (san_uri_sid(g->d.uniformResourceIdentifier, f) != R_NONE)
                goto fail;
            continue;
        } else {
            continue;
        }
        if (!list_add(list, count, s)) {
            free(s);
            goto fail;
        }
    }
    r = R_NONE;
fail:
    GENERAL_NAMES_free(gens);
    return r;
}

/* The SID from extension 1.3.6.1.4.1.311.25.2: GeneralNames holding an
 * otherName 1.3.6.1.4.1.311.25.2.1 whose value is the SID as an OCTET STRING
 * of ASCII. OpenSSL has no type for it. Absent: R_NONE, <sid> NULL. Present but
 * unreadable, repeated, or without a valid SID: R_CERT_MALFORMED. */
static enum reason facts_sid(X509 *x, struct cert_facts *f)
{
    ASN1_OBJECT *ext_oid = OBJ_txt2obj(OID_SID_EXT, 1);
    ASN1_OBJECT *name_oid = OBJ_txt2obj(OID_SID_NAME, 1);
    GENERAL_NAMES *gens = NULL;
    const ASN1_OCTET_STRING *os;
    const unsigned char *p;
    long len;
    int pos;
    enum reason r = R_CERT_MALFORMED;

    if (ext_oid == NULL || name_oid == NULL)
        goto fail;
    pos = X509_get_ext_by_OBJ(x, ext_oid, -1);
    if (pos < 0) {
        r = R_NONE;
        goto fail;
    }
    if (X509_get_ext_by_OBJ(x, ext_oid, pos) >= 0)
        goto fail;

    os = X509_EXTENSION_get_data(X509_get_ext(x, pos));
    p = ASN1_STRING_get0_data(os);
    len = ASN1_STRING_length(os);
    gens = d2i_GENERAL_NAMES(NULL, &p, len);
    if (gens == NULL || p != ASN1_STRING_get0_data(os) + len)
        goto fail; /* undecodable, or bytes after the GeneralNames */

    for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
        ASN1_OBJECT *oid;
        ASN1_TYPE *val;
        if (!GENERAL_NAME_get0_otherName(sk_GENERAL_NAME_value(gens, i), &oid, &val) ||
            OBJ_cmp(oid, name_oid) != 0)
            continue;
        if (f->sid != NULL || val->type != V_ASN1_OCTET_STRING)
            goto fail; /* two SIDs, or one that is not an OCTET STRING */
        const char *s = (const char *)ASN1_STRING_get0_data(val->value.octet_string);
        size_t n = (size_t)ASN1_STRING_length(val->value.octet_string);
        unsigned char bin[CM_SID_BIN_MAX];
        size_t binlen = sizeof bin;
        /* Only the spelling objectSid is printed in (cm_sid_from_binary), so
         * that comparing the texts compares the SIDs. */
        if (cm_sid_to_binary(s, n, bin, &binlen) != 0)
            goto fail;
        f->sid = strndup(s, n);
        if (f->sid == NULL)
            goto fail;
    }
    if (f->sid != NULL)
        r = R_NONE;
fail:
    GENERAL_NAMES_free(gens);
    ASN1_OBJECT_free(ext_oid);
    ASN1_OBJECT_free(name_oid);
    return r;
}

/* serial_hex and serial_rev from the serial's DER content bytes. */
static enum reason facts_serial(X509 *x, struct cert_facts *f)
{
    unsigned char *der = NULL;
    const unsigned char *p;
    long len;
    int tag, cls;
    int n = i2d_ASN1_INTEGER(X509_get0_serialNumber(x), &der);
    enum reason r = R_CERT_MALFORMED;

    if (n <= 0)
        goto fail;
    p = der;
    if (ASN1_get_object(&p, &len, &tag, &cls, n) & 0x80 || tag != V_ASN1_INTEGER || len <= 0)
        goto fail;
    f->serial_hex = hex_dup(p, (size_t)len, false);
    f->serial_rev = hex_dup(p, (size_t)len, true);
    if (f->serial_hex != NULL && f->serial_rev != NULL)
        r = R_NONE;
fail:
    OPENSSL_free(der);
    return r;
}

static bool time_of(const ASN1_TIME *t, time_t *out)
{
    struct tm tm;
    if (t == NULL || !ASN1_TIME_to_tm(t, &tm))
        return false;
    *out = timegm(&tm);
    return true;
}

/* SHA-256 and SHA-1 fetched from the provider once. Passing EVP_sha256() to a
 * digest function makes OpenSSL 3.0 fetch the implementation again, name-map
 * lookup and read-write locks included, on every call; a fetched EVP_MD skips
 * that. Should a fetch fail, the built-in handles still work (just slower). */
static EVP_MD *fetched_sha256, *fetched_sha1;

static void fetch_digests(void)
{
    fetched_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    fetched_sha1 = EVP_MD_fetch(NULL, "SHA1", NULL);
}

static pthread_once_t digests_once = PTHREAD_ONCE_INIT;

const EVP_MD *tls_sha256(void)
{
    pthread_once(&digests_once, fetch_digests);
    return fetched_sha256 != NULL ? fetched_sha256 : EVP_sha256();
}

static const EVP_MD *tls_sha1(void)
{
    pthread_once(&digests_once, fetch_digests);
    return fetched_sha1 != NULL ? fetched_sha1 : EVP_sha1();
}

/* Digests and key identifiers: fixed-size hex fields, and the SKI. */
static enum reason facts_digests(X509 *x, struct cert_facts *f)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n;
    const ASN1_OCTET_STRING *ski;

    if (!X509_digest(x, tls_sha256(), md, &n) || n != 32)
        return R_CERT_MALFORMED;
    hex_into(f->sha256, md, n, false);
    if (!X509_digest(x, tls_sha1(), md, &n) || n != 20)
        return R_CERT_MALFORMED;
    hex_into(f->sha1, md, n, false);
    if (!X509_pubkey_digest(x, tls_sha1(), md, &n) || n != 20)
        return R_CERT_MALFORMED;
    hex_into(f->pubkey_sha1, md, n, false);
    ski = X509_get0_subject_key_id(x);
    if (ski != NULL) {
        f->ski = hex_dup(ASN1_STRING_get0_data(ski), (size_t)ASN1_STRING_length(ski), false);
        if (f->ski == NULL)
            return R_CERT_MALFORMED;
    }
    return R_NONE;
}

enum reason tls_facts_from_x509(X509 *x, struct cert_facts **out)
{
    struct cert_facts *f = NULL;
    enum reason r = R_CERT_MALFORMED;

    if (x == NULL || out == NULL)
        goto fail;
    f = calloc(1, sizeof(*f));
    if (f == NULL)
        goto fail;
    if ((r = name_rfc4514(X509_get_subject_name(x), &f->subject)) != R_NONE ||
        (r = name_rfc4514(X509_get_issuer_name(x), &f->issuer)) != R_NONE ||
        (r = name_asi(X509_get_subject_name(x), &f->subject_asi)) != R_NONE ||
        (r = name_asi(X509_get_issuer_name(x), &f->issuer_asi)) != R_NONE ||
        (r = facts_serial(x, f)) != R_NONE || (r = facts_digests(x, f)) != R_NONE ||
        (r = facts_san(x, f)) != R_NONE || (r = facts_sid(x, f)) != R_NONE)
        goto fail;
    r = R_CERT_MALFORMED;
    /* The SID extension and a SAN URL naming two SIDs name two accounts. */
    if (f->sid != NULL && f->san_sid != NULL && strcmp(f->sid, f->san_sid) != 0)
        goto fail;
    if (!time_of(X509_get0_notBefore(x), &f->not_before) ||
        !time_of(X509_get0_notAfter(x), &f->not_after))
        goto fail;
    *out = f;
    return R_NONE;
fail:
    tls_facts_free(f);
    return r;
}

static void list_free(char **list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

void tls_facts_free(struct cert_facts *f)
{
    if (f == NULL)
        return;
    free(f->subject);
    free(f->issuer);
    free(f->subject_asi);
    free(f->issuer_asi);
    free(f->serial_hex);
    free(f->serial_rev);
    free(f->ski);
    list_free(f->upn, f->n_upn);
    list_free(f->rfc822, f->n_rfc822);
    list_free(f->dns, f->n_dns);
    free(f->sid);
    free(f->san_sid);
    free(f);
}
