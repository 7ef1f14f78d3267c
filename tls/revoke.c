/* Revocation: the CRLs in use, as an immutable, reference-counted snapshot
 * (struct tls_crlset) that verdicts take and drop, and that one revocation
 * thread of the tls_ctx replaces whole when crl_file changes. A worker never
 * sees a half-made set, and no OpenSSL object a verdict reads is ever
 * modified: a new file makes new objects, and the old set is freed by
 * whoever drops its last reference.
 *
 * The thread has an event_base of its own: a timer every crl_refresh stats
 * crl_file (device, inode, size, mtime, ctime) and re-reads it when any of
 * them changed. A file that does not parse, holds a CRL that its CA did not
 * sign, or one older than the CRL in use for that CA, is not used: the
 * previous set stays, and that is logged once per change of the file. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "common/log.h"
#include "tls/internal.h"
#include "tls/tls.h"

#define REFRESH_DEFAULT_MS (5 * 60 * 1000)
/* A file seen changing while it was read is read again this much later. */
#define SETTLE_MS 200
/* CAs whose "revocation status unknown" was logged since the set changed. */
#define UNKNOWN_LOG_SLOTS 64
/* crl_fetch: distribution points followed at most, longest URL, largest answer head */
#define FETCH_MAX 64
#define URL_MAX 1024
#define HEAD_MAX (16 * 1024)
/* after a failed fetch, the next one waits 5 s, doubling up to 10 min */
#define FETCH_BACKOFF_MS 5000ull
#define FETCH_BACKOFF_MAX_MS (600 * 1000ull)
#define FETCH_TIMEOUT_DEFAULT_MS 5000
#define FETCH_MAX_SIZE_DEFAULT (10 * 1024 * 1024)
/* ocsp: certificates whose status is kept (the oldest idle one makes room) */
#define OCSP_MAX 1024
/* an OCSP answer without nextUpdate holds this long; thisUpdate may be this far ahead */
#define OCSP_DEFAULT_HOLD_S 300
#define OCSP_SKEW_S 300

struct fetch;

struct file_id {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime, ctime;
};

struct tls_rev {
    struct tls_ctx *t; /* anchors and issuers, to find each CRL's signer */
    pthread_mutex_t mu;
    struct tls_crlset *cur;                   /* under <mu> */
    unsigned long unknown[UNKNOWN_LOG_SLOTS]; /* under <mu>: CAs logged as unknown */
    size_t n_unknown;

    /* the revocation thread's own, after tls_rev_new() */
    char *path;
    struct file_id fid;      /* of the file the set was last read from (or refused) */
    struct tls_crlset *file; /* the file's CRLs in use (also in <cur>) */
    uint64_t refresh_ms;
    struct event_base *base;
    struct event *tick, *settle, *wake;
    int wake_fd[2];
    pthread_t thread;
    bool running;
    atomic_bool stopping;

    /* crl_fetch: the distribution points met in certificates (under <mu>) */
    bool fetch;
    uint64_t fetch_timeout_ms;
    size_t fetch_max;
    struct fetch *fetches[FETCH_MAX];
    size_t n_fetches;
    bool fetch_full_logged;

    /* ocsp: one query per certificate asked about (under <mu>) */
    bool ocsp;
    bool ocsp_fail_logged; /* the revocation thread's */
    struct fetch *queries[OCSP_MAX];
    size_t n_queries;
};

/* ---- entries and sets -------------------------------------------------------------- */

static time_t asn1_to_time(const ASN1_TIME *a)
{
    struct tm tm;
    if (a == NULL || ASN1_TIME_to_tm(a, &tm) != 1)
        return 0;
    return timegm(&tm);
}

static void ent_put(struct tls_crlent *e)
{
    if (e == NULL || atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) != 1)
        return;
    X509_CRL_free(e->crl);
    ASN1_OCTET_STRING_free(e->akid);
    ASN1_INTEGER_free(e->number);
    ASN1_INTEGER_free(e->base_number);
    free(e->source);
    free(e);
}

static struct tls_crlent *ent_get(struct tls_crlent *e)
{
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
    return e;
}

static struct tls_crlset *set_new(size_t cap)
{
    struct tls_crlset *s = calloc(1, sizeof *s + cap * sizeof s->e[0]);
    if (s != NULL)
        atomic_init(&s->refs, 1);
    return s;
}

void tls_crlset_put(struct tls_crlset *s)
{
    if (s == NULL || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < s->n; i++)
        ent_put(s->e[i]);
    free(s);
}

struct tls_crlset *tls_crlset_get(struct tls_ctx *t)
{
    struct tls_rev *r = t->rev;
    if (r == NULL)
        return NULL;
    pthread_mutex_lock(&r->mu);
    struct tls_crlset *s = r->cur;
    if (s != NULL)
        atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&r->mu);
    return s;
}

/* Makes <s> the set in use; the previous one goes when its last user drops it. */
static void publish(struct tls_rev *r, struct tls_crlset *s)
{
    pthread_mutex_lock(&r->mu);
    struct tls_crlset *old = r->cur;
    r->cur = s;
    r->n_unknown = 0; /* a new set: say again what is still unknown */
    pthread_mutex_unlock(&r->mu);
    tls_crlset_put(old);
}

/* ---- one CRL ----------------------------------------------------------------------------- */

/* The certificate among <certs> whose key signed <crl>; NULL when none. When
 * a certificate of that name whose key identifier is the CRL's authority key
 * identifier did not verify it, <*forged> is set: the CRL claims a CA it was
 * not signed by (a corrupt or forged file). */
static X509 *signer_in(STACK_OF(X509) * certs, X509_CRL *crl, const ASN1_OCTET_STRING *akid,
                       bool *forged)
{
    for (int i = 0; certs != NULL && i < sk_X509_num(certs); i++) {
        X509 *x = sk_X509_value(certs, i);
        EVP_PKEY *key = X509_get0_pubkey(x);
        if (X509_NAME_cmp(X509_get_subject_name(x), X509_CRL_get_issuer(crl)) != 0 || key == NULL)
            continue;
        if (X509_CRL_verify(crl, key) == 1)
            return x;
        const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(x);
        if (akid != NULL && ski != NULL && ASN1_OCTET_STRING_cmp(akid, ski) == 0)
            *forged = true;
    }
    ERR_clear_error();
    return NULL;
}

/* Whether <crl> has a critical extension this code does not act on: such a
 * CRL must not be used (RFC 5280 5.2), in whole or in one of its entries. */
static const char *unsupported_critical(X509_CRL *crl)
{
    for (int i = 0; i < X509_CRL_get_ext_count(crl); i++) {
        X509_EXTENSION *ext = X509_CRL_get_ext(crl, i);
        int nid = OBJ_obj2nid(X509_EXTENSION_get_object(ext));
        if (X509_EXTENSION_get_critical(ext) && nid != NID_delta_crl &&
            nid != NID_issuing_distribution_point)
            return "an unsupported critical extension";
    }
    STACK_OF(X509_REVOKED) *revs = X509_CRL_get_REVOKED(crl);
    for (int i = 0; i < sk_X509_REVOKED_num(revs); i++) {
        const STACK_OF(X509_EXTENSION) *exts =
            X509_REVOKED_get0_extensions(sk_X509_REVOKED_value(revs, i));
        for (int j = 0; j < sk_X509_EXTENSION_num(exts); j++)
            if (X509_EXTENSION_get_critical(sk_X509_EXTENSION_value(exts, j)))
                return "an entry with a critical extension (an indirect CRL)";
    }
    return NULL;
}

struct tls_crlent *tls_crlent_new(struct tls_ctx *t, X509_CRL *crl, const char *source, char *why,
                                  size_t whylen)
{
    struct tls_crlent *e = calloc(1, sizeof *e);
    if (e == NULL) {
        X509_CRL_free(crl);
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    atomic_init(&e->refs, 1);
    e->crl = crl;
    e->source = strdup(source);
    tls_name_for_log(X509_CRL_get_issuer(crl), e->issuer, sizeof e->issuer);
    AUTHORITY_KEYID *akid = X509_CRL_get_ext_d2i(crl, NID_authority_key_identifier, NULL, NULL);
    if (akid != NULL && akid->keyid != NULL)
        e->akid = ASN1_OCTET_STRING_dup(akid->keyid);
    AUTHORITY_KEYID_free(akid);
    e->number = X509_CRL_get_ext_d2i(crl, NID_crl_number, NULL, NULL);
    e->base_number = X509_CRL_get_ext_d2i(crl, NID_delta_crl, NULL, NULL);
    e->this_update = asn1_to_time(X509_CRL_get0_lastUpdate(crl));
    e->next_update = asn1_to_time(X509_CRL_get0_nextUpdate(crl));
    ERR_clear_error();
    if (e->source == NULL) {
        snprintf(why, whylen, "out of memory");
        goto fail;
    }
    const char *bad = unsupported_critical(crl);
    if (bad != NULL) {
        snprintf(why, whylen, "the CRL of %s has %s", e->issuer, bad);
        goto fail;
    }
    if (e->base_number != NULL && e->number == NULL) {
        snprintf(why, whylen, "the delta CRL of %s has no CRL number", e->issuer);
        goto fail;
    }
    /* OpenSSL sorts a CRL's entries at its first lookup (under a lock):
     * here, on the revocation thread, not in a worker's first verdict
     * (200 000 entries take tens of ms). */
    ASN1_INTEGER *zero = ASN1_INTEGER_new();
    X509_REVOKED *rev = NULL;
    if (zero != NULL)
        X509_CRL_get0_by_serial(crl, &rev, zero);
    ASN1_INTEGER_free(zero);
    bool forged = false;
    e->signer = signer_in(t->issuers, crl, e->akid, &forged);
    if (e->signer == NULL)
        e->signer = signer_in(t->anchors, crl, e->akid, &forged);
    if (e->signer == NULL && forged) {
        snprintf(why, whylen, "the CRL of %s is not signed by that CA (bad signature)", e->issuer);
        goto fail;
    }
    return e;
fail:
    ent_put(e);
    return NULL;
}

/* Whether <a> and <b> are CRLs of one CA, of one kind (base or delta). */
static bool same_series(const struct tls_crlent *a, const struct tls_crlent *b)
{
    if ((a->base_number == NULL) != (b->base_number == NULL))
        return false;
    if (a->signer != NULL || b->signer != NULL)
        return a->signer == b->signer;
    return a->akid != NULL && b->akid != NULL && ASN1_OCTET_STRING_cmp(a->akid, b->akid) == 0 &&
           X509_NAME_cmp(X509_CRL_get_issuer(a->crl), X509_CRL_get_issuer(b->crl)) == 0;
}

int tls_crlent_cmp(const struct tls_crlent *a, const struct tls_crlent *b)
{
    if (a->number != NULL && b->number != NULL) {
        int c = ASN1_INTEGER_cmp(a->number, b->number);
        if (c != 0)
            return c;
    }
    return a->this_update < b->this_update ? -1 : a->this_update > b->this_update;
}

/* ---- what covers a certificate ----------------------------------------------------------- */

/* Whether <crl>'s issuing distribution point (RFC 5280 5.2.5), if any, puts
 * <leaf> in its scope: a CRL limited to CA certificates, attribute
 * certificates or some reasons, or an indirect one, covers no client
 * certificate; one naming a distribution point covers the certificates that
 * name it among theirs. */
static bool idp_covers(X509_CRL *crl, X509 *leaf)
{
    int crit = -1;
    ISSUING_DIST_POINT *idp =
        X509_CRL_get_ext_d2i(crl, NID_issuing_distribution_point, &crit, NULL);
    if (idp == NULL) {
        ERR_clear_error();
        return crit == -1; /* absent; otherwise repeated or unreadable */
    }
    bool ok = !idp->onlyCA && !idp->onlyattr && idp->onlysomereasons == NULL && !idp->indirectCRL;
    if (ok && idp->distpoint != NULL) {
        ok = false;
        STACK_OF(DIST_POINT) *cdp = X509_get_ext_d2i(leaf, NID_crl_distribution_points, NULL, NULL);
        if (idp->distpoint->type == 0) {
            GENERAL_NAMES *want = idp->distpoint->name.fullname;
            for (int i = 0; !ok && i < sk_DIST_POINT_num(cdp); i++) {
                DIST_POINT *dp = sk_DIST_POINT_value(cdp, i);
                if (dp->distpoint == NULL || dp->distpoint->type != 0)
                    continue;
                GENERAL_NAMES *have = dp->distpoint->name.fullname;
                for (int j = 0; !ok && j < sk_GENERAL_NAME_num(have); j++)
                    for (int k = 0; !ok && k < sk_GENERAL_NAME_num(want); k++)
                        ok = GENERAL_NAME_cmp(sk_GENERAL_NAME_value(have, j),
                                              sk_GENERAL_NAME_value(want, k)) == 0;
            }
        }
        sk_DIST_POINT_pop_free(cdp, DIST_POINT_free);
    }
    ISSUING_DIST_POINT_free(idp);
    ERR_clear_error();
    return ok;
}

/* Whether <e> is a CRL of <leaf>'s issuer. Never by issuer name alone: two
 * CAs may share one. By the signer found at load time (its key identifier,
 * or its signature when the leaf has none); failing a known signer, by the
 * authority key identifiers of both. */
static bool crl_covers(const struct tls_crlent *e, X509 *leaf)
{
    const ASN1_OCTET_STRING *leaf_akid = X509_get0_authority_key_id(leaf);
    bool ours;
    if (e->signer != NULL)
        ours = X509_check_issued(e->signer, leaf) == X509_V_OK &&
               (leaf_akid != NULL || X509_verify(leaf, X509_get0_pubkey(e->signer)) == 1);
    else
        ours = e->akid != NULL && leaf_akid != NULL &&
               ASN1_OCTET_STRING_cmp(e->akid, leaf_akid) == 0 &&
               X509_NAME_cmp(X509_CRL_get_issuer(e->crl), X509_get_issuer_name(leaf)) == 0;
    return ours && idp_covers(e->crl, leaf);
}

static bool ent_current(const struct tls_crlent *e, time_t now)
{
    return e->this_update != 0 && e->this_update <= now &&
           (e->next_update == 0 || now < e->next_update);
}

/* Logs once per CA (until the set changes) that certificates it issued have
 * no known revocation status. */
static void log_unknown_once(struct tls_ctx *t, X509 *leaf, int code)
{
    struct tls_rev *r = t->rev;
    unsigned long h = X509_issuer_name_hash(leaf);
    const ASN1_OCTET_STRING *akid = X509_get0_authority_key_id(leaf);
    for (int i = 0; akid != NULL && i < akid->length; i++)
        h = h * 31 + akid->data[i];
    bool first = true;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n_unknown && first; i++)
        first = r->unknown[i] != h;
    if (first && r->n_unknown < UNKNOWN_LOG_SLOTS)
        r->unknown[r->n_unknown++] = h;
    pthread_mutex_unlock(&r->mu);
    if (!first)
        return;
    char issuer[512];
    tls_name_for_log(X509_get_issuer_name(leaf), issuer, sizeof issuer);
    log_warn("revocation status unknown for certificates of %s: %s; they are %s "
             "(revocation_unknown = %s); logged once until the CRLs in use change",
             issuer,
             code == X509_V_ERR_CRL_HAS_EXPIRED     ? "its CRL in use has expired"
             : code == X509_V_ERR_CRL_NOT_YET_VALID ? "its CRL in use is not valid yet"
                                                    : "no CRL of it is loaded",
             t->revocation_allow ? "accepted" : "refused",
             t->revocation_allow ? "allow" : "refuse");
}

static int ocsp_cached(struct tls_ctx *t, X509 *leaf, time_t now);

static int rev_status(struct tls_ctx *t, X509 *leaf, bool log)
{
    time_t now = time(NULL);
    struct tls_crlset *s = tls_crlset_get(t);
    const struct tls_crlent *base = NULL, *delta = NULL;
    bool stale = false, future = false;
    for (size_t i = 0; s != NULL && i < s->n; i++) {
        const struct tls_crlent *e = s->e[i];
        if (e->base_number != NULL || !crl_covers(e, leaf))
            continue;
        if (!ent_current(e, now)) {
            stale |= e->this_update <= now;
            future |= e->this_update > now;
            continue;
        }
        if (base == NULL || tls_crlent_cmp(e, base) > 0)
            base = e;
    }
    /* A delta extends a base whose number is at least its BaseCRLNumber
     * (RFC 5280 5.2.4) and is newer than that base. */
    for (size_t i = 0; base != NULL && base->number != NULL && i < s->n; i++) {
        const struct tls_crlent *e = s->e[i];
        if (e->base_number == NULL || !ent_current(e, now) || !crl_covers(e, leaf) ||
            ASN1_INTEGER_cmp(e->base_number, base->number) > 0 ||
            ASN1_INTEGER_cmp(e->number, base->number) <= 0)
            continue;
        if (delta == NULL || ASN1_INTEGER_cmp(e->number, delta->number) > 0)
            delta = e;
    }
    int code = X509_V_OK;
    X509_REVOKED *rev = NULL;
    if (base != NULL && base->wants_delta && delta == NULL) {
        /* a fetched base names a delta that could not be had: what the
         * delta says is unknown, so is the status */
        code = X509_V_ERR_UNABLE_TO_GET_CRL;
    } else if (base == NULL) {
        code = stale    ? X509_V_ERR_CRL_HAS_EXPIRED
               : future ? X509_V_ERR_CRL_NOT_YET_VALID
                        : X509_V_ERR_UNABLE_TO_GET_CRL;
    } else {
        /* get0_by_cert: 1 listed, 2 listed as removeFromCRL (a delta lifting a hold) */
        int in_delta = delta != NULL ? X509_CRL_get0_by_cert(delta->crl, &rev, leaf) : 0;
        if (in_delta == 1 || (in_delta == 0 && X509_CRL_get0_by_cert(base->crl, &rev, leaf) == 1))
            code = X509_V_ERR_CERT_REVOKED;
    }
    tls_crlset_put(s);
    ERR_clear_error();
    if (t->rev->ocsp && code != X509_V_OK && code != X509_V_ERR_CERT_REVOKED) {
        /* no current CRL says: the responder's answer, if one holds */
        int st = ocsp_cached(t, leaf, now);
        if (st == V_OCSP_CERTSTATUS_GOOD)
            code = X509_V_OK;
        else if (st == V_OCSP_CERTSTATUS_REVOKED)
            code = X509_V_ERR_CERT_REVOKED;
    }
    if (log && code != X509_V_OK && code != X509_V_ERR_CERT_REVOKED)
        log_unknown_once(t, leaf, code);
    return code;
}

int tls_rev_status(struct tls_ctx *t, X509 *leaf)
{
    return rev_status(t, leaf, true);
}

/* ---- crl_file -------------------------------------------------------------------------- */

static void file_id_of(const struct stat *st, struct file_id *id)
{
    memset(id, 0, sizeof *id);
    id->dev = st->st_dev;
    id->ino = st->st_ino;
    id->size = st->st_size;
    id->mtime = st->st_mtim;
    id->ctime = st->st_ctim;
}

static bool file_id_eq(const struct file_id *a, const struct file_id *b)
{
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
           a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec;
}

/* Start-up warnings on one CRL of the file (later files are checked by the
 * same rules, and their problems logged, by the revocation thread). */
static void warn_ent(const struct tls_crlent *e, const char *path, time_t now)
{
    char when[64];
    struct tm tm;
    if (e->signer == NULL && e->akid == NULL)
        log_warn("crl_file %s: the CRL of %s is signed by neither a trust anchor nor a trusted "
                 "issuer and has no authority key identifier; it cannot vouch for any certificate",
                 path, e->issuer);
    if (e->next_update != 0 && e->next_update <= now) {
        strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", gmtime_r(&e->next_update, &tm));
        log_warn("crl_file %s: the CRL of %s expired at %s; certificates from that issuer have no "
                 "known revocation status until a current CRL is loaded",
                 path, e->issuer, when);
    }
    if (e->this_update > now) {
        strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", gmtime_r(&e->this_update, &tm));
        log_warn("crl_file %s: the CRL of %s is not valid before %s", path, e->issuer, when);
    }
}

/* Reads every CRL of <path>. Returns a new set, or NULL with "<what> <path>:
 * reason" in <err>: unreadable, not PEM, no CRL, a CRL not signed by the CA
 * it names, or older than the CRL of that CA in <old> (NULL at start-up). */
static struct tls_crlset *file_read(struct tls_ctx *t, const char *what, const char *path,
                                    const struct tls_crlset *old, char *err, size_t errlen)
{
    struct tls_crlset *s = NULL;
    STACK_OF(X509_INFO) *infos = NULL;
    ERR_clear_error();
    BIO *in = BIO_new_file(path, "r");
    if (in == NULL) {
        snprintf(err, errlen, "%s %s: cannot open: %s", what, path, strerror(errno));
        goto fail;
    }
    infos = PEM_X509_INFO_read_bio(in, NULL, NULL, NULL);
    if (infos == NULL) {
        unsigned long e = ERR_peek_last_error();
        snprintf(err, errlen, "%s %s: cannot parse PEM: %s", what, path,
                 e != 0 && ERR_reason_error_string(e) != NULL ? ERR_reason_error_string(e)
                                                              : "unreadable");
        goto fail;
    }
    s = set_new((size_t)sk_X509_INFO_num(infos));
    if (s == NULL) {
        snprintf(err, errlen, "%s %s: out of memory", what, path);
        goto fail;
    }
    for (int i = 0; i < sk_X509_INFO_num(infos); i++) {
        X509_INFO *info = sk_X509_INFO_value(infos, i);
        if (info->crl == NULL)
            continue;
        char why[600];
        struct tls_crlent *e = tls_crlent_new(t, info->crl, path, why, sizeof why);
        info->crl = NULL;
        if (e == NULL) {
            snprintf(err, errlen, "%s %s: %s", what, path, why);
            goto fail;
        }
        s->e[s->n++] = e;
        for (size_t j = 0; old != NULL && j < old->n; j++) {
            if (same_series(e, old->e[j]) && tls_crlent_cmp(e, old->e[j]) < 0) {
                snprintf(err, errlen,
                         "%s %s: the CRL of %s is older than the one in use (CRL number, or "
                         "date, lower)",
                         what, path, e->issuer);
                goto fail;
            }
        }
    }
    if (s->n == 0) {
        snprintf(err, errlen, "%s %s: no CRL found", what, path);
        goto fail;
    }
    sk_X509_INFO_pop_free(infos, X509_INFO_free);
    BIO_free(in);
    ERR_clear_error();
    return s;
fail:
    tls_crlset_put(s);
    sk_X509_INFO_pop_free(infos, X509_INFO_free);
    BIO_free(in);
    ERR_clear_error();
    return NULL;
}

static void republish(struct tls_rev *r);

static void rev_check_file(struct tls_rev *r)
{
    struct stat st, after;
    struct file_id id, id_after;
    if (stat(r->path, &st) != 0) {
        struct file_id gone = {0};
        if (!file_id_eq(&r->fid, &gone))
            log_warn("crl_file %s: %s; keeping the CRLs in use", r->path, strerror(errno));
        r->fid = gone;
        return;
    }
    file_id_of(&st, &id);
    if (file_id_eq(&id, &r->fid))
        return;
    char err[1024];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct tls_crlset *s = file_read(r->t, "crl_file", r->path, r->file, err, sizeof err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (long)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
    if (stat(r->path, &after) != 0 ||
        (file_id_of(&after, &id_after), !file_id_eq(&id, &id_after))) {
        /* Still being written: read again once it has settled. */
        tls_crlset_put(s);
        struct timeval tv = {0, SETTLE_MS * 1000};
        evtimer_add(r->settle, &tv);
        return;
    }
    r->fid = id;
    if (s == NULL) {
        log_warn("%s; not used, the CRLs in use stay (logged once for this version of the file)",
                 err);
        return;
    }
    char line[1024];
    int used = snprintf(line, sizeof line, "crl_file %s: reloaded in %ld ms, %zu CRL%s", r->path,
                        ms, s->n, s->n == 1 ? "" : "s");
    time_t now = time(NULL);
    for (size_t i = 0; i < s->n && used > 0 && (size_t)used < sizeof line; i++) {
        const struct tls_crlent *e = s->e[i];
        long long num = -1;
        int64_t n64;
        if (e->number != NULL && ASN1_INTEGER_get_int64(&n64, e->number) == 1)
            num = (long long)n64;
        used += snprintf(line + used, sizeof line - (size_t)used, "%s %s%s #%lld%s",
                         i == 0 ? ":" : ";", e->base_number != NULL ? "delta " : "", e->issuer, num,
                         ent_current(e, now) ? "" : " (not current)");
    }
    log_info("%s", line);
    tls_crlset_put(r->file);
    r->file = s;
    republish(r);
}

/* ---- crl_fetch: CRLs from the certificates' distribution points ---------------------- */

enum fetch_state {
    FS_QUEUED = 0, /* asked for by a worker, not started yet */
    FS_BUSY,       /* a fetch runs (for a base with a delta: until the delta's ends too) */
    FS_IDLE,       /* done, well or not; the timer starts the next one */
    FS_IGNORED,    /* not an http:// URL this client can fetch */
};

struct fetch {
    struct tls_rev *r;
    char *url;
    enum fetch_state state; /* under <mu>, as <started> */
    time_t started;
    /* the revocation thread's own */
    char *host, *port, *path;
    struct tls_crlent *ent; /* the last good CRL from <url>, in the set in use */
    struct fetch *waiter;   /* a delta's: the base fetch that waits for it to end */
    bool delta;             /* met as a base CRL's Freshest CRL */
    unsigned failures;
    bool fail_logged;
    struct bufferevent *bev;
    struct event *timer; /* the running fetch's deadline, or the next refresh */

    /* an OCSP query (ocsp = on), one per certificate: <url> is the responder's */
    OCSP_CERTID *ocsp_id; /* NULL: a CRL fetch */
    ASN1_INTEGER *serial; /* of the certificate, with <issuer> its key */
    X509 *issuer;         /* borrowed from the anchors or trusted issuers */
    int ocsp_status;      /* under <mu>: V_OCSP_CERTSTATUS_*, -1: none known */
    time_t ocsp_until;    /* under <mu>: when that answer stops holding */
    time_t retry_at;      /* under <mu>: no new query before (after a failure) */
};

/* Splits an http:// URL into host, port and path. -1: another scheme, user
 * information, a query-less path that is not absolute, bytes that are not
 * printable ASCII. */
static int url_split(const char *url, char **host, char **port, char **path)
{
    if (strncasecmp(url, "http://", 7) != 0 || strlen(url) > URL_MAX)
        return -1;
    for (const char *p = url; *p != '\0'; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
            return -1;
    const char *h = url + 7, *slash = strchr(h, '/');
    if (slash == NULL)
        return -1;
    const char *hend = slash, *colon = NULL;
    if (*h == '[') {
        const char *close = memchr(h, ']', (size_t)(slash - h));
        if (close == NULL)
            return -1;
        colon = close[1] == ':' ? close + 1 : NULL;
        if (colon == NULL && close + 1 != slash)
            return -1;
        hend = close + 1;
    } else {
        colon = memchr(h, ':', (size_t)(slash - h));
        hend = colon != NULL ? colon : slash;
    }
    if (hend == h || memchr(h, '@', (size_t)(slash - h)) != NULL)
        return -1;
    if (colon != NULL) {
        size_t n = (size_t)(slash - colon - 1);
        if (n == 0 || n > 5 || strspn(colon + 1, "0123456789") < n)
            return -1;
    }
    bool v6 = *h == '[';
    *host = strndup(h + v6, (size_t)(hend - h) - 2 * v6);
    *port = colon != NULL ? strndup(colon + 1, (size_t)(slash - colon - 1)) : strdup("80");
    *path = strdup(slash);
    if (*host == NULL || *port == NULL || *path == NULL) {
        free(*host);
        free(*port);
        free(*path);
        return -1;
    }
    return 0;
}

static void fetch_timer_cb(evutil_socket_t fd, short what, void *arg);

static void fetch_free(struct fetch *f)
{
    if (f == NULL)
        return;
    if (f->bev != NULL)
        bufferevent_free(f->bev);
    if (f->timer != NULL)
        event_free(f->timer);
    ent_put(f->ent);
    OCSP_CERTID_free(f->ocsp_id);
    ASN1_INTEGER_free(f->serial);
    free(f->url);
    free(f->host);
    free(f->port);
    free(f->path);
    free(f);
}

/* The fetch of <url>, made (queued, or ignored) when first seen. Under <mu>. */
static struct fetch *fetch_find_locked(struct tls_rev *r, const char *url, bool make)
{
    for (size_t i = 0; i < r->n_fetches; i++)
        if (strcmp(r->fetches[i]->url, url) == 0)
            return r->fetches[i];
    if (!make)
        return NULL;
    if (r->n_fetches == FETCH_MAX) {
        if (!r->fetch_full_logged)
            log_warn("crl_fetch: more than %d distribution points seen; %s and later ones are "
                     "not fetched",
                     FETCH_MAX, url);
        r->fetch_full_logged = true;
        return NULL;
    }
    struct fetch *f = calloc(1, sizeof *f);
    if (f == NULL || (f->url = strdup(url)) == NULL) {
        free(f);
        return NULL;
    }
    f->r = r;
    if (url_split(url, &f->host, &f->port, &f->path) < 0) {
        f->state = FS_IGNORED;
        log_info("crl_fetch: distribution point %s ignored: only http://HOST[:PORT]/PATH is "
                 "fetched (logged once)",
                 url);
    } else {
        f->state = FS_QUEUED;
        f->started = time(NULL);
    }
    r->fetches[r->n_fetches++] = f;
    return f;
}

/* The URIs of the distribution points <dps> (a certificate's CRL
 * distribution points, a CRL's Freshest CRL), into <urls> (at most <max>, each
 * NUL-terminated, <= URL_MAX). A URI with a byte that is not printable ASCII
 * is left out: it could be neither fetched nor logged safely. Returns how many. */
static size_t dp_urls(STACK_OF(DIST_POINT) * dps, char urls[][URL_MAX + 1], size_t max)
{
    size_t n = 0;
    for (int i = 0; i < sk_DIST_POINT_num(dps) && n < max; i++) {
        DIST_POINT *dp = sk_DIST_POINT_value(dps, i);
        if (dp->distpoint == NULL || dp->distpoint->type != 0)
            continue;
        GENERAL_NAMES *names = dp->distpoint->name.fullname;
        for (int j = 0; j < sk_GENERAL_NAME_num(names) && n < max; j++) {
            GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, j);
            if (gn->type != GEN_URI)
                continue;
            const ASN1_IA5STRING *u = gn->d.uniformResourceIdentifier;
            bool printable = u->length > 0 && u->length <= URL_MAX;
            for (int k = 0; printable && k < u->length; k++)
                printable = u->data[k] > 0x20 && u->data[k] < 0x7f;
            if (!printable)
                continue;
            memcpy(urls[n], u->data, (size_t)u->length);
            urls[n++][u->length] = '\0';
        }
    }
    return n;
}

static void republish(struct tls_rev *r);
static void fetch_start(struct tls_rev *r, struct fetch *f);

static void timeval_ms(struct timeval *tv, uint64_t ms)
{
    tv->tv_sec = (time_t)(ms / 1000);
    tv->tv_usec = (suseconds_t)(ms % 1000) * 1000;
}

/* When to fetch again the CRL <e> of a fetch that worked: at 80 % of its
 * validity, at least a minute before nextUpdate, never sooner than 5 s. */
static uint64_t refresh_after_ms(const struct tls_rev *r, const struct tls_crlent *e)
{
    time_t now = time(NULL);
    if (e == NULL || e->next_update == 0)
        return r->refresh_ms;
    time_t at = e->this_update + (e->next_update - e->this_update) * 4 / 5;
    if (e->next_update - 60 < at)
        at = e->next_update - 60;
    return at - now < 5 ? 5000 : (uint64_t)(at - now) * 1000;
}

static void fetch_idle(struct tls_rev *r, struct fetch *f, uint64_t next_ms)
{
    pthread_mutex_lock(&r->mu);
    f->state = FS_IDLE;
    pthread_mutex_unlock(&r->mu);
    struct timeval tv;
    timeval_ms(&tv, next_ms);
    evtimer_add(f->timer, &tv);
}

/* Whether the CRL <e> fetched by <f> may be used; NULL, or why not. */
static const char *fetch_refusal(const struct fetch *f, const struct tls_crlent *e, char *why,
                                 size_t len)
{
    if (e->signer == NULL)
        snprintf(why, len, "the CRL of %s is signed by neither a trusted issuer nor a trust anchor",
                 e->issuer);
    else if (f->delta != (e->base_number != NULL))
        snprintf(why, len, "a %s CRL where a %s CRL was expected",
                 e->base_number != NULL ? "delta" : "base", f->delta ? "delta" : "base");
    else if (!ent_current(e, time(NULL)))
        snprintf(why, len, "the CRL of %s is not current (stale: its nextUpdate has passed)",
                 e->issuer);
    else if (f->ent != NULL && tls_crlent_cmp(e, f->ent) < 0)
        snprintf(why, len, "the CRL of %s is older than the one fetched before", e->issuer);
    else
        return NULL;
    return why;
}

/* A base CRL's first delta fetch, when it names one (Freshest CRL) that is
 * not being fetched already: NULL when none. */
static struct fetch *delta_of(struct tls_rev *r, struct fetch *f)
{
    if (f->delta)
        return NULL;
    STACK_OF(DIST_POINT) *fresh = X509_CRL_get_ext_d2i(f->ent->crl, NID_freshest_crl, NULL, NULL);
    char urls[4][URL_MAX + 1];
    size_t n = dp_urls(fresh, urls, 4);
    sk_DIST_POINT_pop_free(fresh, DIST_POINT_free);
    ERR_clear_error();
    f->ent->wants_delta = false;
    struct fetch *d = NULL;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < n && d == NULL; i++) {
        struct fetch *x = fetch_find_locked(r, urls[i], true);
        if (x == NULL || x->state == FS_IGNORED || x == f)
            continue;
        x->delta = true;
        f->ent->wants_delta = true;
        if (x->state != FS_BUSY && x->ent == NULL) {
            x->state = FS_BUSY;
            x->started = time(NULL);
            d = x;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return d;
}

/* A fetch of <f> ended: <crl> (taken; NULL on failure, with <why>). */
static void ocsp_done(struct fetch *f, const unsigned char *body, size_t len, const char *why);

static void fetch_done(struct fetch *f, X509_CRL *crl, const char *why)
{
    struct tls_rev *r = f->r;
    char whybuf[700];
    if (f->ocsp_id != NULL) { /* a failure on the way: what ocsp_done says */
        X509_CRL_free(crl);
        ocsp_done(f, NULL, 0, why);
        return;
    }
    if (f->bev != NULL) {
        bufferevent_free(f->bev);
        f->bev = NULL;
    }
    if (f->timer != NULL)
        evtimer_del(f->timer);
    struct tls_crlent *e = NULL;
    if (crl != NULL) {
        e = tls_crlent_new(r->t, crl, f->url, whybuf, sizeof whybuf);
        why = e == NULL ? whybuf : fetch_refusal(f, e, whybuf, sizeof whybuf);
        if (why != NULL) {
            ent_put(e);
            e = NULL;
        }
    }
    struct fetch *delta = NULL;
    if (e != NULL) {
        if (f->fail_logged)
            log_info("crl_fetch %s: works again", f->url);
        f->fail_logged = false;
        f->failures = 0;
        long long num = -1;
        int64_t n64;
        if (e->number != NULL && ASN1_INTEGER_get_int64(&n64, e->number) == 1)
            num = (long long)n64;
        log_info("crl_fetch %s: %sCRL of %s, number %lld, %d revoked, next update in %llds", f->url,
                 e->base_number != NULL ? "delta " : "", e->issuer, num,
                 sk_X509_REVOKED_num(X509_CRL_get_REVOKED(e->crl)),
                 e->next_update != 0 ? (long long)(e->next_update - time(NULL)) : -1LL);
        ent_put(f->ent);
        f->ent = e;
        delta = delta_of(r, f);
    } else {
        f->failures++;
        if (!f->fail_logged)
            log_warn("crl_fetch %s: %s; %s (logged once until a fetch works)", f->url, why,
                     f->ent != NULL && ent_current(f->ent, time(NULL))
                         ? "the CRL fetched before stays in use until its nextUpdate"
                         : "its CA's certificates have no known revocation status for now");
        f->fail_logged = true;
    }
    if (e != NULL)
        republish(r); /* a failure changes nothing in use */
    if (delta != NULL) {
        delta->waiter = f; /* <f> stays busy, so that requests wait for the delta too */
        fetch_start(r, delta);
        return;
    }
    uint64_t next;
    if (e != NULL) {
        next = refresh_after_ms(r, f->ent);
    } else {
        next = (uint64_t)FETCH_BACKOFF_MS << (f->failures < 8 ? f->failures - 1 : 7);
        if (next > FETCH_BACKOFF_MAX_MS)
            next = FETCH_BACKOFF_MAX_MS;
    }
    fetch_idle(r, f, next);
    if (f->waiter != NULL) {
        fetch_idle(r, f->waiter, refresh_after_ms(r, f->waiter->ent));
        f->waiter = NULL;
    }
}

/* What the server sent, when it closed: the status line, headers, body. */
static void fetch_parse(struct fetch *f)
{
    struct evbuffer *in = bufferevent_get_input(f->bev);
    size_t len = evbuffer_get_length(in);
    unsigned char *all = evbuffer_pullup(in, -1);
    char why[256];
    if (all == NULL || len < 12) {
        fetch_done(f, NULL, "the server closed the connection without an answer");
        return;
    }
    struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    if (end.pos < 0 || memcmp(all, "HTTP/1.", 7) != 0) {
        fetch_done(f, NULL, "not an HTTP answer");
        return;
    }
    int status = atoi((const char *)all + 9);
    if (status != 200) {
        snprintf(why, sizeof why, "HTTP status %d%s", status,
                 status >= 300 && status < 400 ? " (redirects are not followed)" : "");
        fetch_done(f, NULL, why);
        return;
    }
    /* HTTP/1.0 was asked: a chunked answer is a broken server. */
    char *head = strndup((const char *)all, (size_t)end.pos);
    bool chunked = false;
    long long clen = -1;
    for (char *line = head != NULL ? strchr(head, '\n') : NULL; line != NULL;
         line = strchr(line + 1, '\n')) {
        if (strncasecmp(line + 1, "transfer-encoding:", 18) == 0)
            chunked = true;
        if (strncasecmp(line + 1, "content-length:", 15) == 0)
            clen = atoll(line + 16);
    }
    free(head);
    const unsigned char *body = all + end.pos + 4;
    size_t blen = len - (size_t)end.pos - 4;
    if (chunked || (clen >= 0 && (size_t)clen != blen)) {
        fetch_done(f, NULL,
                   chunked ? "a chunked answer to HTTP/1.0"
                           : "the body is shorter or longer than its Content-Length");
        return;
    }
    if (f->ocsp_id != NULL) {
        ocsp_done(f, body, blen, NULL);
        return;
    }
    const unsigned char *p = body;
    X509_CRL *crl = d2i_X509_CRL(NULL, &p, (long)blen);
    if (crl == NULL) { /* some publish PEM */
        BIO *b = BIO_new_mem_buf(body, (int)blen);
        crl = b != NULL ? PEM_read_bio_X509_CRL(b, NULL, NULL, NULL) : NULL;
        BIO_free(b);
    }
    ERR_clear_error();
    fetch_done(f, crl, crl == NULL ? "the answer is not a CRL (neither DER nor PEM)" : NULL);
}

static void fetch_read_cb(struct bufferevent *bev, void *arg)
{
    struct fetch *f = arg;
    if (evbuffer_get_length(bufferevent_get_input(bev)) > f->r->fetch_max + HEAD_MAX) {
        char why[128];
        snprintf(why, sizeof why, "the CRL is larger than crl_fetch_max_size (%zu bytes)",
                 f->r->fetch_max);
        fetch_done(f, NULL, why);
    }
}

static void fetch_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct fetch *f = arg;
    if (what & BEV_EVENT_CONNECTED)
        return;
    if (what & BEV_EVENT_EOF) {
        fetch_parse(f);
        return;
    }
    char why[256];
    int e = EVUTIL_SOCKET_ERROR();
    snprintf(why, sizeof why, "cannot fetch from %s port %s: %s", f->host, f->port,
             e != 0 ? evutil_socket_error_to_string(e) : "connection failed");
    fetch_done(f, NULL, why);
}

static void fetch_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct fetch *f = arg;
    if (f->bev != NULL) {
        char why[128];
        snprintf(why, sizeof why, "no complete answer within crl_fetch_timeout (%llu ms)",
                 (unsigned long long)f->r->fetch_timeout_ms);
        fetch_done(f, NULL, why);
        return;
    }
    fetch_start(f->r, f); /* the refresh */
}

/* Starts fetching <f> (on the revocation thread). The name is resolved here,
 * blocking this thread only: workers never wait longer than
 * crl_fetch_timeout for it. */
static void fetch_start(struct tls_rev *r, struct fetch *f)
{
    pthread_mutex_lock(&r->mu);
    f->state = FS_BUSY;
    f->started = time(NULL);
    pthread_mutex_unlock(&r->mu);
    if (f->timer == NULL && (f->timer = evtimer_new(r->base, fetch_timer_cb, f)) == NULL) {
        log_warn("crl_fetch %s: out of memory", f->url);
        return; /* stays busy: requests stop waiting for it after crl_fetch_timeout */
    }
    struct timeval tv;
    timeval_ms(&tv, r->fetch_timeout_ms);
    evtimer_add(f->timer, &tv);

    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG}, *ai = NULL;
    int rc = getaddrinfo(f->host, f->port, &hints, &ai);
    if (rc != 0) {
        char why[300];
        snprintf(why, sizeof why, "cannot resolve %s: %s", f->host, gai_strerror(rc));
        fetch_done(f, NULL, why);
        return;
    }
    f->bev = bufferevent_socket_new(r->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (f->bev == NULL) {
        freeaddrinfo(ai);
        fetch_done(f, NULL, "out of memory");
        return;
    }
    bufferevent_setcb(f->bev, fetch_read_cb, NULL, fetch_event_cb, f);
    bufferevent_enable(f->bev, EV_READ);
    /* HTTP/1.0 and Connection: close: the answer ends when the server closes. */
    bool v6 = strchr(f->host, ':') != NULL;
    if (f->ocsp_id != NULL) {
        /* RFC 6960 A.1 POST; no nonce (AD CS's Online Responder ignores or refuses it) */
        OCSP_REQUEST *req = OCSP_REQUEST_new();
        OCSP_CERTID *id = OCSP_CERTID_dup(f->ocsp_id);
        unsigned char *der = NULL;
        int dlen = -1;
        if (req != NULL && id != NULL && OCSP_request_add0_id(req, id) != NULL)
            id = NULL;
        if (req != NULL && id == NULL)
            dlen = i2d_OCSP_REQUEST(req, &der);
        OCSP_CERTID_free(id);
        OCSP_REQUEST_free(req);
        if (dlen <= 0) {
            freeaddrinfo(ai);
            fetch_done(f, NULL, "cannot make the OCSP request");
            return;
        }
        evbuffer_add_printf(bufferevent_get_output(f->bev),
                            "POST %s HTTP/1.0\r\nHost: %s%s%s%s%s\r\nUser-Agent: certmapd\r\n"
                            "Content-Type: application/ocsp-request\r\nContent-Length: %d\r\n"
                            "Connection: close\r\n\r\n",
                            f->path, v6 ? "[" : "", f->host, v6 ? "]" : "",
                            strcmp(f->port, "80") != 0 ? ":" : "",
                            strcmp(f->port, "80") != 0 ? f->port : "", dlen);
        evbuffer_add(bufferevent_get_output(f->bev), der, (size_t)dlen);
        OPENSSL_free(der);
    } else {
        evbuffer_add_printf(bufferevent_get_output(f->bev),
                            "GET %s HTTP/1.0\r\nHost: %s%s%s%s%s\r\nUser-Agent: certmapd\r\n"
                            "Accept: application/pkix-crl, */*\r\nConnection: close\r\n\r\n",
                            f->path, v6 ? "[" : "", f->host, v6 ? "]" : "",
                            strcmp(f->port, "80") != 0 ? ":" : "",
                            strcmp(f->port, "80") != 0 ? f->port : "");
    }
    rc = bufferevent_socket_connect(f->bev, ai->ai_addr, (int)ai->ai_addrlen);
    freeaddrinfo(ai);
    if (rc < 0)
        fetch_event_cb(f->bev, BEV_EVENT_ERROR, f);
}

/* The set in use made anew: the file's CRLs and the last good one of each fetch. */
static void republish(struct tls_rev *r)
{
    size_t n = r->file != NULL ? r->file->n : 0;
    struct tls_crlset *s = set_new(n + FETCH_MAX);
    if (s == NULL) {
        log_warn("crl: out of memory; the CRLs in use stay as they were");
        return;
    }
    for (size_t i = 0; i < n; i++)
        s->e[s->n++] = ent_get(r->file->e[i]);
    /* Workers add fetches (never remove one); their <ent> is this thread's. */
    pthread_mutex_lock(&r->mu);
    size_t nf = r->n_fetches;
    pthread_mutex_unlock(&r->mu);
    for (size_t i = 0; i < nf; i++)
        if (r->fetches[i]->ent != NULL)
            s->e[s->n++] = ent_get(r->fetches[i]->ent);
    publish(r, s);
}

/* ---- ocsp: the certificate's status from its CA's responder ------------------------- */

/* An OCSP answer for <f> ended: the body of a 200 answer, or a failure <why>. */
static void ocsp_done(struct fetch *f, const unsigned char *body, size_t len, const char *why)
{
    struct tls_rev *r = f->r;
    struct tls_ctx *t = r->t;
    char whybuf[300];
    if (f->bev != NULL) {
        bufferevent_free(f->bev);
        f->bev = NULL;
    }
    if (f->timer != NULL)
        evtimer_del(f->timer);
    int status = -1, reason = 0, rs = 0;
    time_t until = 0;
    OCSP_RESPONSE *resp = NULL;
    OCSP_BASICRESP *bs = NULL;
    ASN1_GENERALIZEDTIME *thisupd = NULL, *nextupd = NULL, *revtime = NULL;
    if (why == NULL) {
        const unsigned char *p = body;
        resp = d2i_OCSP_RESPONSE(NULL, &p, (long)len);
        if (resp == NULL) {
            why = "the answer is not an OCSP response";
        } else if ((rs = OCSP_response_status(resp)) != OCSP_RESPONSE_STATUS_SUCCESSFUL) {
            snprintf(whybuf, sizeof whybuf, "the responder answered %s",
                     OCSP_response_status_str(rs));
            why = whybuf;
        } else if ((bs = OCSP_response_get1_basic(resp)) == NULL) {
            why = "no basic OCSP response";
        } else if (OCSP_basic_verify(bs, t->issuers, t->store, 0) <= 0) {
            why = "the OCSP response is signed by neither the CA nor a responder it delegated to";
        } else if (OCSP_resp_find_status(bs, f->ocsp_id, &status, &reason, &revtime, &thisupd,
                                         &nextupd) != 1 ||
                   status == V_OCSP_CERTSTATUS_UNKNOWN) {
            why = "the OCSP response gives no status for this certificate";
            status = -1;
        } else if (OCSP_check_validity(thisupd, nextupd, OCSP_SKEW_S, -1) != 1) {
            why = "the OCSP response is not current (stale)";
            status = -1;
        } else {
            until = nextupd != NULL ? asn1_to_time(nextupd) : time(NULL) + OCSP_DEFAULT_HOLD_S;
        }
    }
    OCSP_BASICRESP_free(bs);
    OCSP_RESPONSE_free(resp);
    ERR_clear_error();
    time_t now = time(NULL);
    if (why == NULL) {
        if (r->ocsp_fail_logged)
            log_info("ocsp %s: answers again", f->url);
        r->ocsp_fail_logged = false;
        f->failures = 0;
        log_debug("ocsp %s: %s, until %llds from now", f->url,
                  status == V_OCSP_CERTSTATUS_GOOD ? "good" : "revoked", (long long)(until - now));
    } else {
        f->failures++;
        if (!r->ocsp_fail_logged)
            log_warn("ocsp %s: %s; certificates whose CRL is not known either have no known "
                     "revocation status (logged once until a query works)",
                     f->url, why);
        r->ocsp_fail_logged = true;
    }
    uint64_t backoff = (uint64_t)FETCH_BACKOFF_MS << (f->failures < 8 ? f->failures : 7);
    if (backoff > FETCH_BACKOFF_MAX_MS)
        backoff = FETCH_BACKOFF_MAX_MS;
    pthread_mutex_lock(&r->mu);
    f->state = FS_IDLE;
    if (why == NULL) {
        f->ocsp_status = status;
        f->ocsp_until = until;
        f->retry_at = 0;
    } else {
        f->retry_at = now + (time_t)(backoff / 1000);
    }
    pthread_mutex_unlock(&r->mu);
}

/* The anchor or trusted issuer that issued <leaf>; NULL when none. */
static X509 *issuer_of(struct tls_ctx *t, X509 *leaf)
{
    STACK_OF(X509) * sets[2] = {t->issuers, t->anchors};
    for (int s = 0; s < 2; s++)
        for (int i = 0; sets[s] != NULL && i < sk_X509_num(sets[s]); i++)
            if (X509_check_issued(sk_X509_value(sets[s], i), leaf) == X509_V_OK)
                return sk_X509_value(sets[s], i);
    return NULL;
}

/* The query about <leaf> (issued by <issuer>). Under <mu>. */
static struct fetch *query_find_locked(struct tls_rev *r, X509 *leaf, X509 *issuer)
{
    const ASN1_INTEGER *serial = X509_get0_serialNumber(leaf);
    for (size_t i = 0; i < r->n_queries; i++) {
        struct fetch *q = r->queries[i];
        if (q->issuer == issuer && ASN1_INTEGER_cmp(q->serial, serial) == 0)
            return q;
    }
    return NULL;
}

/* The OCSP status of <leaf> now, from an answer that still holds: a
 * V_OCSP_CERTSTATUS_*, or -1. */
static int ocsp_cached(struct tls_ctx *t, X509 *leaf, time_t now)
{
    struct tls_rev *r = t->rev;
    X509 *issuer = issuer_of(t, leaf);
    if (issuer == NULL)
        return -1;
    pthread_mutex_lock(&r->mu);
    struct fetch *q = query_find_locked(r, leaf, issuer);
    int st = q != NULL && now < q->ocsp_until ? q->ocsp_status : -1;
    pthread_mutex_unlock(&r->mu);
    return st;
}

/* Whether the OCSP answer about <leaf> is awaited (a query is made or
 * renewed here when none holds); <*queued>: the thread must be woken. */
static bool ocsp_pending(struct tls_ctx *t, X509 *leaf, bool *queued)
{
    struct tls_rev *r = t->rev;
    X509 *issuer = issuer_of(t, leaf);
    if (issuer == NULL)
        return false;
    char url[URL_MAX + 1] = "";
    STACK_OF(OPENSSL_STRING) *urls = X509_get1_ocsp(leaf);
    for (int i = 0; i < sk_OPENSSL_STRING_num(urls) && url[0] == '\0'; i++) {
        const char *u = sk_OPENSSL_STRING_value(urls, i);
        char *h = NULL, *p = NULL, *path = NULL;
        if (strlen(u) <= URL_MAX && url_split(u, &h, &p, &path) == 0) {
            snprintf(url, sizeof url, "%s", u);
            free(h);
            free(p);
            free(path);
        }
    }
    X509_email_free(urls);
    if (url[0] == '\0')
        return false;
    time_t now = time(NULL);
    time_t limit = (time_t)(r->fetch_timeout_ms / 1000) + 1;
    bool pending = false;
    pthread_mutex_lock(&r->mu);
    struct fetch *q = query_find_locked(r, leaf, issuer);
    if (q == NULL) {
        /* a new one, or the slot of one whose answer no longer holds */
        for (size_t i = 0; r->n_queries == OCSP_MAX && q == NULL && i < r->n_queries; i++)
            if (r->queries[i]->state == FS_IDLE && r->queries[i]->ocsp_until <= now)
                q = r->queries[i];
        if (q == NULL && r->n_queries < OCSP_MAX && (q = calloc(1, sizeof *q)) != NULL) {
            q->r = r;
            r->queries[r->n_queries++] = q;
        }
        if (q != NULL) {
            OCSP_CERTID_free(q->ocsp_id);
            ASN1_INTEGER_free(q->serial);
            free(q->url);
            free(q->host);
            free(q->port);
            free(q->path);
            q->url = strdup(url);
            q->ocsp_id = OCSP_cert_to_id(NULL, leaf, issuer);
            q->serial = ASN1_INTEGER_dup(X509_get0_serialNumber(leaf));
            q->issuer = issuer;
            q->ocsp_status = -1;
            q->ocsp_until = 0;
            q->retry_at = 0;
            q->failures = 0;
            q->state = FS_IDLE;
            if (q->url == NULL || q->ocsp_id == NULL || q->serial == NULL ||
                url_split(url, &q->host, &q->port, &q->path) < 0) {
                q->host = q->port = q->path = NULL;
                q->ocsp_until = 0;
                q->retry_at = now + 60; /* out of memory: later */
            }
            ERR_clear_error();
        }
    }
    if (q != NULL && q->state == FS_IDLE && (q->ocsp_status < 0 || now >= q->ocsp_until) &&
        now >= q->retry_at) {
        q->state = FS_QUEUED;
        q->started = now;
        *queued = true;
    }
    if (q != NULL)
        pending = q->state == FS_QUEUED || (q->state == FS_BUSY && now - q->started <= limit);
    pthread_mutex_unlock(&r->mu);
    return pending;
}

/* Starts the fetches workers asked for. */
static void fetch_queued(struct tls_rev *r)
{
    for (;;) {
        struct fetch *f = NULL;
        pthread_mutex_lock(&r->mu);
        for (size_t i = 0; i < r->n_fetches && f == NULL; i++)
            if (r->fetches[i]->state == FS_QUEUED)
                f = r->fetches[i];
        for (size_t i = 0; i < r->n_queries && f == NULL; i++)
            if (r->queries[i]->state == FS_QUEUED)
                f = r->queries[i];
        pthread_mutex_unlock(&r->mu);
        if (f == NULL)
            return;
        fetch_start(r, f);
    }
}

bool tls_conn_crl_pending(struct tls_ctx *t, SSL *ssl)
{
    struct tls_rev *r = t->rev;
    X509 *leaf = SSL_get0_peer_certificate(ssl);
    if (r == NULL || !(r->fetch || r->ocsp) || leaf == NULL ||
        SSL_get_verify_result(ssl) != X509_V_OK)
        return false;
    int code = rev_status(t, leaf, false);
    if (code == X509_V_OK || code == X509_V_ERR_CERT_REVOKED)
        return false;
    bool pending = false, queued = false;
    if (r->ocsp)
        pending = ocsp_pending(t, leaf, &queued);
    STACK_OF(DIST_POINT) *cdp =
        r->fetch ? X509_get_ext_d2i(leaf, NID_crl_distribution_points, NULL, NULL) : NULL;
    char urls[4][URL_MAX + 1];
    size_t n = dp_urls(cdp, urls, 4);
    sk_DIST_POINT_pop_free(cdp, DIST_POINT_free);
    ERR_clear_error();
    time_t now = time(NULL);
    time_t limit = (time_t)(r->fetch_timeout_ms / 1000) + 1;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < n; i++) {
        struct fetch *f = fetch_find_locked(r, urls[i], true);
        if (f == NULL)
            continue;
        queued |= f->state == FS_QUEUED;
        pending |= f->state == FS_QUEUED || (f->state == FS_BUSY && now - f->started <= limit);
    }
    pthread_mutex_unlock(&r->mu);
    if (queued) {
        char b = 'f';
        if (write(r->wake_fd[1], &b, 1) < 0) {
            /* full: the thread has a wake-up pending already */
        }
    }
    return pending;
}

/* ---- the revocation thread ------------------------------------------------------------- */

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tls_rev *r = arg;
    if (r->path != NULL)
        rev_check_file(r);
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tls_rev *r = arg;
    char buf[64];
    while (read(fd, buf, sizeof buf) > 0)
        ;
    if (atomic_load(&r->stopping))
        event_base_loopbreak(r->base);
    else
        fetch_queued(r);
}

static void *rev_main(void *arg)
{
    struct tls_rev *r = arg;
    event_base_dispatch(r->base);
    return NULL;
}

void tls_rev_free(struct tls_rev *r)
{
    if (r == NULL)
        return;
    if (r->running) {
        atomic_store(&r->stopping, true);
        char b = 0;
        while (write(r->wake_fd[1], &b, 1) < 0 && errno == EINTR)
            ;
        pthread_join(r->thread, NULL);
    }
    for (size_t i = 0; i < r->n_fetches; i++)
        fetch_free(r->fetches[i]); /* before the base their events are on */
    for (size_t i = 0; i < r->n_queries; i++)
        fetch_free(r->queries[i]);
    if (r->tick != NULL)
        event_free(r->tick);
    if (r->settle != NULL)
        event_free(r->settle);
    if (r->wake != NULL)
        event_free(r->wake);
    if (r->base != NULL)
        event_base_free(r->base);
    for (int i = 0; i < 2; i++)
        if (r->wake_fd[i] >= 0)
            close(r->wake_fd[i]);
    tls_crlset_put(r->file);
    tls_crlset_put(r->cur);
    pthread_mutex_destroy(&r->mu);
    free(r->path);
    free(r);
}

struct tls_rev *tls_rev_new(struct tls_ctx *t, const struct conf *c, char *err, size_t errlen)
{
    char what[1024];
    struct stat st;
    struct tls_rev *r = calloc(1, sizeof *r);
    if (r == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->t = t;
    r->wake_fd[0] = r->wake_fd[1] = -1;
    pthread_mutex_init(&r->mu, NULL);
    r->refresh_ms = c->crl_refresh_ms != 0 ? c->crl_refresh_ms : REFRESH_DEFAULT_MS;
    r->fetch = c->crl_fetch;
    r->ocsp = c->ocsp;
    r->fetch_timeout_ms =
        c->crl_fetch_timeout_ms != 0 ? c->crl_fetch_timeout_ms : FETCH_TIMEOUT_DEFAULT_MS;
    r->fetch_max = c->crl_fetch_max_size != 0 ? c->crl_fetch_max_size : FETCH_MAX_SIZE_DEFAULT;
    if (c->crl_file != NULL) {
        conf_where(c, "client_certificate", "crl_file", what, sizeof what);
        r->path = strdup(c->crl_file);
        if (r->path == NULL) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        /* The identity first: a change made while the file is read is seen
         * by the first check, which reads it again. */
        if (stat(r->path, &st) == 0)
            file_id_of(&st, &r->fid);
        r->file = file_read(t, what, r->path, NULL, err, errlen);
        if (r->file == NULL)
            goto fail;
        time_t now = time(NULL);
        for (size_t i = 0; i < r->file->n; i++)
            warn_ent(r->file->e[i], r->path, now);
        r->cur = r->file;
        atomic_fetch_add_explicit(&r->file->refs, 1, memory_order_relaxed);
    } else {
        conf_where(c, "client_certificate", c->crl_fetch ? "crl_fetch" : "ocsp", what, sizeof what);
        r->cur = set_new(0);
        if (r->cur == NULL) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    }

    r->base = event_base_new();
    if (r->base == NULL || pipe2(r->wake_fd, O_NONBLOCK | O_CLOEXEC) < 0) {
        snprintf(err, errlen, "%s: cannot set up the revocation thread", what);
        goto fail;
    }
    r->tick = event_new(r->base, -1, EV_PERSIST, tick_cb, r);
    r->settle = evtimer_new(r->base, tick_cb, r);
    r->wake = event_new(r->base, r->wake_fd[0], EV_READ | EV_PERSIST, wake_cb, r);
    struct timeval tv = {.tv_sec = (time_t)(r->refresh_ms / 1000),
                         .tv_usec = (suseconds_t)(r->refresh_ms % 1000) * 1000};
    if (r->tick == NULL || r->settle == NULL || r->wake == NULL || event_add(r->tick, &tv) < 0 ||
        event_add(r->wake, NULL) < 0) {
        snprintf(err, errlen, "%s: cannot set up the revocation thread", what);
        goto fail;
    }
    /* Signals belong to the main thread's sigwait: none is delivered here. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&r->thread, NULL, rev_main, r);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(err, errlen, "%s: cannot start the revocation thread: %s", what, strerror(rc));
        goto fail;
    }
    r->running = true;
    return r;
fail:
    tls_rev_free(r);
    return NULL;
}

void tls_crl_ages(struct tls_ctx *t, void (*cb)(void *arg, const struct tls_crl_info *info),
                  void *arg)
{
    struct tls_crlset *s = tls_crlset_get(t);
    for (size_t i = 0; s != NULL && i < s->n; i++) {
        const struct tls_crlent *e = s->e[i];
        int64_t n64 = -1;
        if (e->number == NULL || ASN1_INTEGER_get_int64(&n64, e->number) != 1)
            n64 = -1;
        struct tls_crl_info info = {
            .issuer = e->issuer,
            .source = e->source,
            .delta = e->base_number != NULL,
            .number = n64,
            .this_update = e->this_update,
            .next_update = e->next_update,
        };
        cb(arg, &info);
    }
    tls_crlset_put(s);
}
