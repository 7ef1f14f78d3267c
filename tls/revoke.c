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
#include "tls/revoke.h"
#include "tls/tls.h"

/* ---- entries and sets -------------------------------------------------------------- */

time_t tls_asn1_time(const ASN1_TIME *a)
{
    struct tm tm;
    if (a == NULL || ASN1_TIME_to_tm(a, &tm) != 1)
        return 0;
    return timegm(&tm);
}

void tls_crlent_put(struct tls_crlent *e)
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

struct tls_crlent *tls_crlent_get(struct tls_crlent *e)
{
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
    return e;
}

struct tls_crlset *tls_crlset_new(size_t cap)
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
        tls_crlent_put(s->e[i]);
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
void tls_rev_publish(struct tls_rev *r, struct tls_crlset *s)
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
    e->this_update = tls_asn1_time(X509_CRL_get0_lastUpdate(crl));
    e->next_update = tls_asn1_time(X509_CRL_get0_nextUpdate(crl));
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
    tls_crlent_put(e);
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

bool tls_crlent_current(const struct tls_crlent *e, time_t now)
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

int tls_rev_status_of(struct tls_ctx *t, X509 *leaf, bool log)
{
    time_t now = time(NULL);
    struct tls_crlset *s = tls_crlset_get(t);
    const struct tls_crlent *base = NULL, *delta = NULL;
    bool stale = false, future = false;
    for (size_t i = 0; s != NULL && i < s->n; i++) {
        const struct tls_crlent *e = s->e[i];
        if (e->base_number != NULL || !crl_covers(e, leaf))
            continue;
        if (!tls_crlent_current(e, now)) {
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
        if (e->base_number == NULL || !tls_crlent_current(e, now) || !crl_covers(e, leaf) ||
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
        int st = tls_rev_ocsp_cached(t, leaf, now);
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
    return tls_rev_status_of(t, leaf, true);
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
    s = tls_crlset_new((size_t)sk_X509_INFO_num(infos));
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
                         tls_crlent_current(e, now) ? "" : " (not current)");
    }
    log_info("%s", line);
    tls_crlset_put(r->file);
    r->file = s;
    tls_rev_republish(r);
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
        tls_rev_fetch_queued(r);
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
        tls_rev_fetch_free(r->fetches[i]); /* before the base their events are on */
    for (size_t i = 0; i < r->n_queries; i++)
        tls_rev_fetch_free(r->queries[i]);
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
        r->cur = tls_crlset_new(0);
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
