/* Kerberos constrained delegation on MIT krb5's GSSAPI (krb.h). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <gssapi/gssapi.h>
#include <gssapi/gssapi_ext.h>
#include <gssapi/gssapi_krb5.h>
#include <krb5.h>
#include <openssl/evp.h>

#include "common/log.h"
#include "krb/krb.h"
#include "metrics/metrics.h"

/* Pool threads for jobs that may reach the KDC: exchanges are rare (cached
 * per user) and short, but a slow KDC holds these for as long as it takes. */
#define KRB_THREADS 2
/* ... and one more for the tokens of users whose credential is cached, which
 * need no KDC (S4U2Proxy's ticket is in the credential): a slow KDC that
 * holds the others up does not hold these. */
#define KRB_FAST_THREADS 1
/* A cached credential is not used this close to its end time. */
#define KRB_MARGIN_S 300

static gss_OID_desc krb5_oid = {9, (void *)"\x2a\x86\x48\x86\xf7\x12\x01\x02\x02"};
static gss_OID_set_desc krb5_set = {1, &krb5_oid};

/* One user's delegated (impersonation) credential. */
struct cred {
    char *user;
    bool enterprise;
    gss_cred_id_t gss;   /* GSS_C_NO_CREDENTIAL while being acquired */
    time_t expires;
    bool acquiring;      /* a pool thread is asking the KDC for it (S4U2Self, then the
                          * first token's S4U2Proxy: GSSAPI locks the credential
                          * while it does, so others wait as jobs, not as threads) */
    struct krb_job *waiters; /* jobs for the same user, queued again once it is done */
    unsigned refs;       /* pool threads using <gss> now */
    struct cred *prev, *next; /* least recently used first */
};

struct krb_job {
    struct krb *k;
    char *user;
    bool enterprise;
    unsigned char *binding;
    size_t binding_len;
    krb_post_fn post;
    void *post_arg;
    krb_done_cb cb;
    void *arg;
    _Atomic bool cancelled; /* set on the asking worker's thread, read by the pool too */
    struct krb_token *result;
    struct krb_job *qnext;
};

struct krb {
    const struct conf *conf;
    gss_cred_id_t svc;   /* the service account's credential (keytab, TGT as needed) */
    gss_name_t target;
    char realm[256];
    char ccache[96];     /* the service's own memory ccache */
    pthread_mutex_t lock; /* taken by the workers' event loops: never held across a KDC exchange */
    pthread_mutex_t svc_lock; /* pool threads only: one acquires the service credential */
    pthread_cond_t work;
    struct krb_job *qhead, *qtail; /* jobs that may need the KDC */
    struct krb_job *fhead, *ftail; /* jobs whose user's credential was cached when queued */
    bool stopping;
    pthread_t threads[KRB_THREADS + KRB_FAST_THREADS];
    unsigned n_threads;
    struct cred *lru_head, *lru_tail; /* head: least recently used */
    size_t n_creds;
    _Atomic uint64_t exchanges, hits;
    gss_cred_id_t retired[64];   /* service credentials given up while the KDC was away */
    unsigned n_retired;
    time_t retired_at;
};

/* A GSSAPI buffer over the string <s>, which GSSAPI only reads (its buffers
 * have no const). */
static gss_buffer_desc text_buffer(const char *s)
{
    gss_buffer_desc b = {strlen(s), (void *)(uintptr_t)s};
    return b;
}

/* ---- errors ---------------------------------------------------------------------- */

/* "major: minor" texts of a GSSAPI status, into <buf>. */
static void gss_text(OM_uint32 major, OM_uint32 minor, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    OM_uint32 ctx = 0, min;
    gss_buffer_desc msg;
    do {
        if (GSS_ERROR(gss_display_status(&min, major, GSS_C_GSS_CODE, GSS_C_NO_OID, &ctx, &msg)))
            break;
        int n = snprintf(buf + used, len - used, "%s%.*s", used ? "; " : "", (int)msg.length,
                         (const char *)msg.value);
        gss_release_buffer(&min, &msg);
        if (n < 0 || (size_t)n >= len - used)
            return;
        used += (size_t)n;
    } while (ctx != 0);
    ctx = 0;
    do {
        if (GSS_ERROR(gss_display_status(&min, minor, GSS_C_MECH_CODE, &krb5_oid, &ctx, &msg)))
            break;
        int n = snprintf(buf + used, len - used, ": %.*s", (int)msg.length, (const char *)msg.value);
        gss_release_buffer(&min, &msg);
        if (n < 0 || (size_t)n >= len - used)
            return;
        used += (size_t)n;
    } while (ctx != 0);
}

/* What a failed exchange means for the request: the KDC did not answer, or
 * sent what is no Kerberos answer (503, retried later), or it answered no
 * (403). */
static enum reason reason_of(OM_uint32 minor)
{
    krb5_error_code e = (krb5_error_code)minor;
    /* Bytes that do not decode as a Kerberos message (a proxy or a broken
     * server on the KDC's address): no answer from a KDC, not a refusal. */
    if (e >= ERROR_TABLE_BASE_asn1 && e < ERROR_TABLE_BASE_asn1 + 256)
        return R_KDC_UNAVAILABLE;
    switch (e) {
    case KRB5KRB_AP_ERR_MSG_TYPE:
    case KRB5_BADMSGTYPE:
    case KRB5_KDCREP_MODIFIED:
    case KRB5_BAD_MSIZE:
    case KRB5_KDC_UNREACH:
    case KRB5_REALM_CANT_RESOLVE:
    case KRB5_REALM_UNKNOWN:
    case KRB5KRB_ERR_RESPONSE_TOO_BIG:
    case ETIMEDOUT:
    case ECONNREFUSED:
    case ECONNRESET:
    case EHOSTUNREACH:
    case ENETUNREACH:
        return R_KDC_UNAVAILABLE;
    default:
        return R_DELEGATION_REFUSED;
    }
}

/* ---- the keytab (-t) ------------------------------------------------------------- */

int krb_check_keytab(const struct conf *c, char *err, size_t errlen)
{
    char where[512], why[512] = "";
    krb5_context ctx = NULL;
    krb5_keytab kt = NULL;
    krb5_principal p = NULL;
    krb5_keytab_entry entry;
    int rc = -1;
    char ktname[1100];

    if (c->deleg_mode != DELEG_KERBEROS)
        return 0;
    conf_where(c, "delegation", "keytab", where, sizeof where);
    if (krb5_init_context(&ctx) != 0) {
        snprintf(err, errlen, "%s: cannot initialise Kerberos", where);
        return -1;
    }
    snprintf(ktname, sizeof ktname, "FILE:%s", c->deleg_keytab);
    krb5_error_code e = krb5_kt_resolve(ctx, ktname, &kt);
    if (e == 0)
        e = krb5_parse_name(ctx, c->deleg_principal, &p);
    if (e == 0)
        e = krb5_kt_get_entry(ctx, kt, p, 0, 0, &entry);
    if (e != 0) {
        const char *m = krb5_get_error_message(ctx, e);
        snprintf(why, sizeof why, "%s", m);
        krb5_free_error_message(ctx, m);
        snprintf(err, errlen, "%s: \"%s\" holds no key for [delegation] principal %s: %s", where,
                 c->deleg_keytab, c->deleg_principal, why);
        goto out;
    }
    krb5_free_keytab_entry_contents(ctx, &entry);
    rc = 0;
out:
    if (p != NULL)
        krb5_free_principal(ctx, p);
    if (kt != NULL)
        krb5_kt_close(ctx, kt);
    krb5_free_context(ctx);
    return rc;
}

/* ---- tokens ---------------------------------------------------------------------- */

void krb_token_free(struct krb_token *t)
{
    if (t == NULL)
        return;
    if (t->gss_ctx != NULL) {
        OM_uint32 min;
        gss_ctx_id_t ctx = t->gss_ctx;
        gss_delete_sec_context(&min, &ctx, GSS_C_NO_BUFFER);
    }
    free(t->header);
    free(t->detail);
    free(t->client);
    free(t);
}

static char *b64_encode(const void *data, size_t len)
{
    size_t n = 4 * ((len + 2) / 3) + 1;
    char *out = malloc(n);
    if (out != NULL)
        EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

int krb_token_verify(struct krb_token *t, const char *b64, size_t len)
{
    if (t == NULL || t->gss_ctx == NULL)
        return -1;
    unsigned char *bin = malloc(len + 4);
    if (bin == NULL)
        return -1;
    int n = EVP_DecodeBlock(bin, (const unsigned char *)b64, (int)len);
    if (n < 0) {
        free(bin);
        return -1;
    }
    while (len > 0 && b64[len - 1] == '=') { /* EVP_DecodeBlock counts padding as bytes */
        n--;
        len--;
    }
    OM_uint32 maj, min;
    gss_buffer_desc in = {(size_t)n, bin}, out = GSS_C_EMPTY_BUFFER;
    gss_ctx_id_t ctx = t->gss_ctx;
    /* The same target, mechanism and flags as the first call: the krb5
     * mechanism checks the AP-REP against the context it made then. */
    maj = gss_init_sec_context(&min, GSS_C_NO_CREDENTIAL, &ctx, t->target, &krb5_oid,
                               GSS_C_MUTUAL_FLAG, 0, GSS_C_NO_CHANNEL_BINDINGS, &in, NULL, &out,
                               NULL, NULL);
    t->gss_ctx = ctx;
    gss_release_buffer(&min, &out);
    free(bin);
    return maj == GSS_S_COMPLETE ? 0 : -1;
}

/* ---- the credential cache --------------------------------------------------------- */

static void lru_unlink(struct krb *k, struct cred *c)
{
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        k->lru_head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    else
        k->lru_tail = c->prev;
    c->prev = c->next = NULL;
}

static void lru_append(struct krb *k, struct cred *c)
{
    c->prev = k->lru_tail;
    c->next = NULL;
    if (k->lru_tail != NULL)
        k->lru_tail->next = c;
    else
        k->lru_head = c;
    k->lru_tail = c;
}

static void cred_free(struct cred *c)
{
    OM_uint32 min;
    if (c->gss != GSS_C_NO_CREDENTIAL)
        gss_release_cred(&min, &c->gss);
    free(c->user);
    free(c);
}

/* Drops <c> from the cache (lock held); freed now unless in use. */
static void cred_drop(struct krb *k, struct cred *c)
{
    lru_unlink(k, c);
    k->n_creds--;
    metrics_gauge_add(MG_DELEG_CACHE_ENTRIES, -1);
    if (c->refs == 0)
        cred_free(c);
    else
        c->acquiring = false, c->expires = 0; /* the last user frees it (cred_put) */
}

static struct cred *cred_find(struct krb *k, const char *user, bool enterprise)
{
    for (struct cred *c = k->lru_tail; c != NULL; c = c->prev)
        if (c->enterprise == enterprise && strcmp(c->user, user) == 0)
            return c;
    return NULL;
}

/* Releases a pool thread's use of <c> (lock held). */
static void cred_put(struct krb *k, struct cred *c, bool in_cache)
{
    c->refs--;
    if (!in_cache && c->refs == 0)
        cred_free(c);
}

/* The service account's credential, acquired the first time it is needed
 * (a KDC that does not answer at start-up does not stop certmapd) and kept:
 * GSSAPI refreshes its TGT from the keytab before it expires. Acquiring it
 * may ask the KDC for that TGT: under svc_lock, not k->lock, which the
 * workers' event loops take to queue a job. */
static OM_uint32 service_cred(struct krb *k, gss_cred_id_t *out, OM_uint32 *minor)
{
    OM_uint32 maj = GSS_S_COMPLETE, min;
    pthread_mutex_lock(&k->svc_lock);
    pthread_mutex_lock(&k->lock);
    gss_cred_id_t svc = k->svc; /* only set here, under svc_lock; retired ones are kept */
    pthread_mutex_unlock(&k->lock);
    if (svc == GSS_C_NO_CREDENTIAL) {
        gss_name_t name = GSS_C_NO_NAME;
        gss_buffer_desc nb = text_buffer(k->conf->deleg_principal);
        maj = gss_import_name(minor, &nb, GSS_KRB5_NT_PRINCIPAL_NAME, &name);
        if (!GSS_ERROR(maj)) {
            gss_key_value_element_desc el[] = {{"client_keytab", k->conf->deleg_keytab},
                                               {"ccache", k->ccache}};
            gss_key_value_set_desc store = {2, el};
            maj = gss_acquire_cred_from(minor, name, GSS_C_INDEFINITE, &krb5_set,
                                        GSS_C_INITIATE, &store, &svc, NULL, NULL);
        }
        gss_release_name(&min, &name);
        if (!GSS_ERROR(maj)) {
            pthread_mutex_lock(&k->lock);
            k->svc = svc;
            pthread_mutex_unlock(&k->lock);
        }
    }
    *out = svc;
    pthread_mutex_unlock(&k->svc_lock);
    return maj;
}

/* No KDC answered: GSSAPI would not try again for the service account's TGT
 * for a while; a new credential (the next exchange) tries at once. The old
 * one may still be in another thread's hands: kept until krb_free, a few. */
static void service_cred_retire(struct krb *k)
{
    pthread_mutex_lock(&k->lock);
    time_t now = time(NULL);
    if (k->svc != GSS_C_NO_CREDENTIAL && k->n_retired < 64 && now - k->retired_at >= 2) {
        k->retired[k->n_retired++] = k->svc;
        k->svc = GSS_C_NO_CREDENTIAL;
        k->retired_at = now;
    }
    pthread_mutex_unlock(&k->lock);
}

/* S4U2Self for <user>, on a pool thread, without the lock. */
static OM_uint32 impersonate(struct krb *k, const char *user, bool enterprise, gss_cred_id_t *out,
                             time_t *expires, OM_uint32 *minor)
{
    OM_uint32 maj, min, life = 0;
    gss_name_t name = GSS_C_NO_NAME;
    gss_buffer_desc nb = text_buffer(user);
    maj = gss_import_name(minor, &nb,
                          enterprise ? GSS_KRB5_NT_ENTERPRISE_NAME : GSS_KRB5_NT_PRINCIPAL_NAME,
                          &name);
    if (GSS_ERROR(maj))
        return maj;
    gss_cred_id_t svc;
    maj = service_cred(k, &svc, minor);
    if (GSS_ERROR(maj)) {
        gss_release_name(&min, &name);
        return maj;
    }
    atomic_fetch_add(&k->exchanges, 1);
    maj = gss_acquire_cred_impersonate_name(minor, svc, name, GSS_C_INDEFINITE, &krb5_set,
                                            GSS_C_INITIATE, out, NULL, &life);
    gss_release_name(&min, &name);
    if (!GSS_ERROR(maj))
        *expires = time(NULL) + (life == GSS_C_INDEFINITE ? 36000 : (time_t)life);
    return maj;
}

/* The exchange for <c> is over (lock held): the jobs that waited for it go
 * first in the queue. They find the credential cached, or (it failed) ask
 * again; cancelled ones are not run. */
static void cred_acquired(struct krb *k, struct cred *c)
{
    c->acquiring = false;
    while (c->waiters != NULL) {
        struct krb_job *w = c->waiters;
        c->waiters = w->qnext;
        w->qnext = k->qhead;
        k->qhead = w;
        if (k->qtail == NULL)
            k->qtail = w;
        pthread_cond_broadcast(&k->work);
    }
}

static void queue_push(struct krb_job **head, struct krb_job **tail, struct krb_job *j)
{
    j->qnext = NULL;
    if (*tail != NULL)
        (*tail)->qnext = j;
    else
        *head = j;
    *tail = j;
}

static struct krb_job *queue_pop(struct krb_job **head, struct krb_job **tail)
{
    struct krb_job *j = *head;
    if (j != NULL) {
        *head = j->qnext;
        if (*head == NULL)
            *tail = NULL;
    }
    return j;
}

/* Whether <c> (a cached credential, or NULL) gives a token now without the
 * KDC: acquired, and not within the margin of its end. Under k->lock. */
static bool cred_fresh(const struct cred *c, time_t now)
{
    return c != NULL && !c->acquiring && c->expires - KRB_MARGIN_S > now;
}

/* The user's credential, from the cache or the KDC (one exchange however many
 * threads ask at once). On success, a reference the caller puts back. */
static struct cred *cred_get(struct krb *k, struct krb_job *j, bool fast, bool *cached,
                             bool *parked, OM_uint32 *major, OM_uint32 *minor)
{
    const char *user = j->user;
    bool enterprise = j->enterprise;
    time_t now = time(NULL);
    pthread_mutex_lock(&k->lock);
    struct cred *c = cred_find(k, user, enterprise);
    if (fast && !cred_fresh(c, now)) {
        /* dropped or expired since it was queued: to the threads that may
         * wait for the KDC, never this one */
        queue_push(&k->qhead, &k->qtail, j);
        pthread_cond_broadcast(&k->work);
        pthread_mutex_unlock(&k->lock);
        *parked = true;
        return NULL;
    }
    if (c != NULL && c->acquiring) {
        /* Another thread asks the KDC for this user: the job waits with the
         * credential, not on this thread, which a slow KDC would otherwise
         * hold from every other user's job (a cached one's too). */
        j->qnext = c->waiters;
        c->waiters = j;
        pthread_mutex_unlock(&k->lock);
        *parked = true;
        return NULL;
    }
    if (cred_fresh(c, now)) {
        lru_unlink(k, c);
        lru_append(k, c);
        c->refs++;
        pthread_mutex_unlock(&k->lock);
        *cached = true;
        atomic_fetch_add(&k->hits, 1);
        metrics_inc(MT_DELEG_CACHE_HIT);
        return c;
    }
    if (c != NULL)
        cred_drop(k, c); /* too close to its end */
    c = calloc(1, sizeof *c);
    if (c == NULL || (c->user = strdup(user)) == NULL) {
        free(c);
        pthread_mutex_unlock(&k->lock);
        *major = GSS_S_FAILURE;
        *minor = ENOMEM;
        return NULL;
    }
    c->enterprise = enterprise;
    c->gss = GSS_C_NO_CREDENTIAL;
    c->acquiring = true;
    c->refs = 1;
    lru_append(k, c);
    k->n_creds++;
    metrics_inc(MT_DELEG_CACHE_MISS);
    metrics_gauge_add(MG_DELEG_CACHE_ENTRIES, 1);
    while (k->n_creds > k->conf->deleg_cache_entries && k->lru_head != c) {
        struct cred *old = k->lru_head;
        if (old->acquiring)
            break;
        cred_drop(k, old);
    }
    pthread_mutex_unlock(&k->lock);

    gss_cred_id_t g = GSS_C_NO_CREDENTIAL;
    time_t expires = 0;
    *major = impersonate(k, user, enterprise, &g, &expires, minor);
    metrics_inc(!GSS_ERROR(*major)                       ? MT_KDC_OK
                : reason_of(*minor) == R_KDC_UNAVAILABLE ? MT_KDC_UNAVAILABLE
                                                         : MT_KDC_REFUSED);

    pthread_mutex_lock(&k->lock);
    bool in_cache = c->prev != NULL || c->next != NULL || k->lru_head == c;
    if (GSS_ERROR(*major)) {
        cred_acquired(k, c);
        if (in_cache)
            cred_drop(k, c); /* refused ones are not cached: the next request asks again */
        cred_put(k, c, false);
        c = NULL;
    } else {
        c->gss = g;
        c->expires = expires; /* still acquiring: make_token ends that */
    }
    pthread_mutex_unlock(&k->lock);
    *cached = false;
    return c;
}

/* One token for <j>'s user, on a pool thread (<fast>: one that must not wait
 * for the KDC). NULL with <parked> set: <j> waits for another thread's
 * exchange for the same user, or was handed to the KDC lane (cred_get). */
static struct krb_token *make_token(struct krb *k, struct krb_job *j, bool fast, bool *parked)
{
    struct krb_token *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    OM_uint32 maj = GSS_S_COMPLETE, min = 0, m2;
    char why[1024];
    struct cred *c = cred_get(k, j, fast, &t->cached, parked, &maj, &min);
    if (c == NULL && *parked) {
        free(t);
        return NULL;
    }
    if (c == NULL) {
        gss_text(maj, min, why, sizeof why);
        t->reason = reason_of(min);
        t->detail = strdup(why);
        if (t->reason == R_KDC_UNAVAILABLE)
            service_cred_retire(k);
        return t;
    }
    struct gss_channel_bindings_struct cb = {0};
    cb.initiator_addrtype = GSS_C_AF_UNSPEC;
    cb.acceptor_addrtype = GSS_C_AF_UNSPEC;
    cb.application_data.length = j->binding_len;
    cb.application_data.value = j->binding;
    gss_ctx_id_t ctx = GSS_C_NO_CONTEXT;
    gss_buffer_desc out = GSS_C_EMPTY_BUFFER;
    /* S4U2Proxy happens here, the first time for this user and service. */
    maj = gss_init_sec_context(&min, c->gss, &ctx, k->target, &krb5_oid, GSS_C_MUTUAL_FLAG, 0,
                               j->binding != NULL ? &cb : GSS_C_NO_CHANNEL_BINDINGS,
                               GSS_C_NO_BUFFER, NULL, &out, NULL, NULL);
    if (GSS_ERROR(maj)) {
        gss_text(maj, min, why, sizeof why);
        t->reason = reason_of(min);
        t->detail = strdup(why);
    } else {
        char *b64 = b64_encode(out.value, out.length);
        size_t n = b64 != NULL ? strlen(b64) + 11 : 0;
        t->header = b64 != NULL ? malloc(n) : NULL;
        if (t->header != NULL) {
            snprintf(t->header, n, "Negotiate %s", b64);
            t->reason = R_NONE;
            t->gss_ctx = ctx;
            t->target = k->target;
            ctx = GSS_C_NO_CONTEXT;
        } else {
            t->reason = R_KDC_UNAVAILABLE; /* out of memory: fail closed, retried later */
            t->detail = strdup("out of memory");
        }
        free(b64);
        gss_name_t client = GSS_C_NO_NAME;
        gss_buffer_desc cn = GSS_C_EMPTY_BUFFER;
        if (!GSS_ERROR(gss_inquire_cred(&m2, c->gss, &client, NULL, NULL, NULL)) &&
            !GSS_ERROR(gss_display_name(&m2, client, &cn, NULL)))
            t->client = strndup(cn.value, cn.length);
        gss_release_buffer(&m2, &cn);
        gss_release_name(&m2, &client);
    }
    gss_release_buffer(&m2, &out);
    if (ctx != GSS_C_NO_CONTEXT)
        gss_delete_sec_context(&m2, &ctx, GSS_C_NO_BUFFER);
    pthread_mutex_lock(&k->lock);
    if (!t->cached)
        cred_acquired(k, c); /* its first S4U2Proxy is done */
    bool in_cache = c->prev != NULL || c->next != NULL || k->lru_head == c;
    if (t->reason != R_NONE && in_cache)
        cred_drop(k, c); /* a credential that cannot delegate is not kept */
    cred_put(k, c, in_cache && t->reason == R_NONE);
    pthread_mutex_unlock(&k->lock);
    return t;
}

/* ---- the pool ---------------------------------------------------------------------- */

static void job_free(struct krb_job *j)
{
    free(j->user);
    free(j->binding);
    krb_token_free(j->result);
    free(j);
}

/* On the asking worker's loop. */
static void job_complete(void *arg)
{
    struct krb_job *j = arg;
    if (!j->cancelled) {
        struct krb_token *t = j->result;
        j->result = NULL;
        if (t == NULL) {
            t = calloc(1, sizeof *t);
            if (t != NULL)
                t->reason = R_KDC_UNAVAILABLE; /* out of memory: fail closed */
        }
        if (t != NULL)
            j->cb(j->arg, t);
    }
    job_free(j);
}

/* A pool thread. The KDC lane's threads take cached users' jobs first (they
 * are quick), then the others; the fast lane's thread takes only those. */
static void pool_loop(struct krb *k, bool fast)
{
    pthread_mutex_lock(&k->lock);
    for (;;) {
        while (k->fhead == NULL && (fast || k->qhead == NULL) && !k->stopping)
            pthread_cond_wait(&k->work, &k->lock);
        if (k->stopping)
            break;
        bool from_fast = k->fhead != NULL;
        struct krb_job *j = from_fast ? queue_pop(&k->fhead, &k->ftail)
                                      : queue_pop(&k->qhead, &k->qtail);
        pthread_mutex_unlock(&k->lock);
        /* A job whose request already had its answer (the timeout) is not
         * run: the queue a slow KDC built up is not worked through after. */
        bool parked = false;
        if (!atomic_load(&j->cancelled))
            j->result = make_token(k, j, fast, &parked);
        if (!parked)
            j->post(j->post_arg, job_complete, j);
        pthread_mutex_lock(&k->lock);
    }
    pthread_mutex_unlock(&k->lock);
}

static void *pool_main(void *arg)
{
    pool_loop(arg, false);
    return NULL;
}

static void *fast_main(void *arg)
{
    pool_loop(arg, true);
    return NULL;
}

struct krb_job *krb_token_start(struct krb *k, const char *user, bool enterprise,
                                const unsigned char *binding, size_t binding_len,
                                krb_post_fn post, void *post_arg, krb_done_cb cb, void *arg)
{
    struct krb_job *j = calloc(1, sizeof *j);
    if (j == NULL)
        return NULL;
    j->k = k;
    j->user = strdup(user);
    j->enterprise = enterprise;
    if (binding != NULL) {
        j->binding = malloc(binding_len);
        if (j->binding != NULL)
            memcpy(j->binding, binding, binding_len);
        j->binding_len = binding_len;
    }
    if (j->user == NULL || (binding != NULL && j->binding == NULL)) {
        job_free(j);
        return NULL;
    }
    j->post = post;
    j->post_arg = post_arg;
    j->cb = cb;
    j->arg = arg;
    pthread_mutex_lock(&k->lock);
    if (cred_fresh(cred_find(k, j->user, j->enterprise), time(NULL)))
        queue_push(&k->fhead, &k->ftail, j);
    else
        queue_push(&k->qhead, &k->qtail, j);
    pthread_cond_broadcast(&k->work); /* either lane's thread may be the one to take it */
    pthread_mutex_unlock(&k->lock);
    return j;
}

void krb_job_cancel(struct krb_job *j)
{
    if (j == NULL)
        return;
    atomic_store(&j->cancelled, true);
}

void krb_counters(struct krb *k, uint64_t *exchanges, uint64_t *cache_hits)
{
    *exchanges = atomic_load(&k->exchanges);
    *cache_hits = atomic_load(&k->hits);
}

/* ---- life ----------------------------------------------------------------------- */

struct krb *krb_new(const struct conf *c, char *err, size_t errlen)
{
    char where[512], why[1024];
    OM_uint32 maj, min;
    struct krb *k = calloc(1, sizeof *k);
    if (k == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    k->conf = c;
    k->svc = GSS_C_NO_CREDENTIAL;
    k->target = GSS_C_NO_NAME;
    pthread_mutex_init(&k->lock, NULL);
    pthread_mutex_init(&k->svc_lock, NULL);
    pthread_cond_init(&k->work, NULL);
    const char *at = strrchr(c->deleg_principal, '@');
    snprintf(k->realm, sizeof k->realm, "%s", at != NULL ? at + 1 : "");
    snprintf(k->ccache, sizeof k->ccache, "MEMORY:certmapd-svc-%ld", (long)getpid());

    gss_buffer_desc nb;
    /* "HTTP/host" as a Kerberos principal in the service account's realm:
     * no DNS canonicalisation of the backend's name. */
    char spn[1024];
    snprintf(spn, sizeof spn, "%s@%s", c->deleg_target_spn, k->realm);
    nb = text_buffer(spn);
    maj = gss_import_name(&min, &nb, GSS_KRB5_NT_PRINCIPAL_NAME, &k->target);
    if (GSS_ERROR(maj)) {
        gss_text(maj, min, why, sizeof why);
        snprintf(err, errlen, "%s: %s",
                 conf_where(c, "delegation", "target_spn", where, sizeof where), why);
        goto fail;
    }
    for (unsigned i = 0; i < KRB_THREADS + KRB_FAST_THREADS; i++) {
        if (pthread_create(&k->threads[i], NULL, i < KRB_THREADS ? pool_main : fast_main, k) != 0) {
            snprintf(err, errlen, "delegation: cannot start a thread");
            goto fail;
        }
        k->n_threads++;
    }
    return k;
fail:
    krb_free(k);
    return NULL;
}

void krb_stop(struct krb *k)
{
    if (k == NULL)
        return;
    pthread_mutex_lock(&k->lock);
    k->stopping = true;
    pthread_cond_broadcast(&k->work);
    pthread_mutex_unlock(&k->lock);
    for (unsigned i = 0; i < k->n_threads; i++)
        pthread_join(k->threads[i], NULL);
    k->n_threads = 0;
}

void krb_free(struct krb *k)
{
    if (k == NULL)
        return;
    krb_stop(k);
    /* Jobs still queued were never run: their workers are gone too. */
    struct krb_job *j;
    while ((j = queue_pop(&k->qhead, &k->qtail)) != NULL ||
           (j = queue_pop(&k->fhead, &k->ftail)) != NULL)
        job_free(j);
    while (k->lru_head != NULL)
        cred_drop(k, k->lru_head);
    OM_uint32 min;
    if (k->svc != GSS_C_NO_CREDENTIAL)
        gss_release_cred(&min, &k->svc);
    for (unsigned i = 0; i < k->n_retired; i++)
        gss_release_cred(&min, &k->retired[i]);
    if (k->target != GSS_C_NO_NAME)
        gss_release_name(&min, &k->target);
    pthread_cond_destroy(&k->work);
    pthread_mutex_destroy(&k->lock);
    pthread_mutex_destroy(&k->svc_lock);
    free(k);
}

/* The start-up probe's own state: shared by the waiting thread and the one
 * asking the KDC, freed by whichever of them is last. */
struct probe {
    pthread_mutex_t lock;
    pthread_cond_t done_cv;
    bool done;
    unsigned refs;
    int rc;
    char *principal, *keytab;
    char err[1024];
};

static void probe_put(struct probe *p)
{
    pthread_mutex_lock(&p->lock);
    bool last = --p->refs == 0;
    pthread_mutex_unlock(&p->lock);
    if (!last)
        return;
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->done_cv);
    free(p->principal);
    free(p->keytab);
    free(p);
}

/* The service account's initial ticket from its keytab, synchronously. */
static void *probe_main(void *arg)
{
    struct probe *pr = arg;
    krb5_context kc = NULL;
    krb5_keytab kt = NULL;
    krb5_principal p = NULL;
    krb5_creds cr;
    krb5_get_init_creds_opt *opt = NULL;
    char ktname[1100];
    int rc = -1;
    char err[1024] = "";
    memset(&cr, 0, sizeof cr);
    krb5_error_code e = krb5_init_context(&kc);
    snprintf(ktname, sizeof ktname, "FILE:%s", pr->keytab);
    if (e == 0)
        e = krb5_kt_resolve(kc, ktname, &kt);
    if (e == 0)
        e = krb5_parse_name(kc, pr->principal, &p);
    if (e == 0)
        e = krb5_get_init_creds_opt_alloc(kc, &opt);
    if (e == 0) {
        krb5_get_init_creds_opt_set_forwardable(opt, 1);
        e = krb5_get_init_creds_keytab(kc, &cr, p, kt, 0, NULL, opt);
    }
    if (e != 0) {
        const char *m = kc != NULL ? krb5_get_error_message(kc, e) : NULL;
        bool unreachable = reason_of((OM_uint32)e) == R_KDC_UNAVAILABLE;
        snprintf(err, sizeof err, "delegation: %s %s: %s", pr->principal,
                 unreachable ? "cannot reach a KDC" : "is refused its ticket by the KDC",
                 m != NULL ? m : "cannot initialise Kerberos");
        if (m != NULL)
            krb5_free_error_message(kc, m);
        rc = unreachable ? -2 : -1;
    } else {
        rc = 0;
        krb5_free_cred_contents(kc, &cr);
    }
    if (opt != NULL)
        krb5_get_init_creds_opt_free(kc, opt);
    if (p != NULL)
        krb5_free_principal(kc, p);
    if (kt != NULL)
        krb5_kt_close(kc, kt);
    if (kc != NULL)
        krb5_free_context(kc);
    pthread_mutex_lock(&pr->lock);
    pr->rc = rc;
    snprintf(pr->err, sizeof pr->err, "%s", err);
    pr->done = true;
    pthread_cond_signal(&pr->done_cv);
    pthread_mutex_unlock(&pr->lock);
    probe_put(pr);
    return NULL;
}

int krb_probe(struct krb *k, char *err, size_t errlen)
{
    /* The service account's own initial ticket from its keytab: the keys are
     * the KDC's, and a KDC answers. (Whether it may delegate to target_spn
     * shows with the first user: a KDC does not do S4U2Self for the service
     * account itself, and no user is known yet.) Waited for [delegation]
     * timeout at most: a KDC that does not answer does not hold start-up. */
    struct probe *pr = calloc(1, sizeof *pr);
    pthread_t th;
    if (pr == NULL || (pr->principal = strdup(k->conf->deleg_principal)) == NULL ||
        (pr->keytab = strdup(k->conf->deleg_keytab)) == NULL) {
        if (pr != NULL)
            free(pr->principal);
        free(pr);
        snprintf(err, errlen, "delegation: out of memory");
        return -1;
    }
    pthread_mutex_init(&pr->lock, NULL);
    pthread_cond_init(&pr->done_cv, NULL);
    pr->refs = 2;
    if (pthread_create(&th, NULL, probe_main, pr) != 0) {
        pr->refs = 1;
        probe_put(pr);
        snprintf(err, errlen, "delegation: cannot start a thread");
        return -1;
    }
    pthread_detach(th);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    uint64_t ms = k->conf->deleg_timeout_ms;
    until.tv_sec += (time_t)(ms / 1000);
    until.tv_nsec += (long)(ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    int rc;
    pthread_mutex_lock(&pr->lock);
    while (!pr->done && pthread_cond_timedwait(&pr->done_cv, &pr->lock, &until) == 0)
        ;
    if (pr->done) {
        rc = pr->rc;
        snprintf(err, errlen, "%s", pr->err);
    } else {
        rc = -2;
        snprintf(err, errlen, "delegation: no KDC answered for %s within %llu ms",
                 k->conf->deleg_principal, (unsigned long long)ms);
    }
    pthread_mutex_unlock(&pr->lock);
    probe_put(pr);
    return rc;
}

char *krb_user_name(const struct conf *c, const char *sam, const char *upn, bool *enterprise)
{
    *enterprise = c->deleg_impersonate == IMPERSONATE_UPN;
    if (*enterprise)
        return upn != NULL ? strdup(upn) : NULL;
    if (sam == NULL)
        return NULL;
    const char *bs = strrchr(sam, '\\'); /* "CORP\alice": the NetBIOS domain is not the realm */
    const char *name = bs != NULL ? bs + 1 : sam;
    const char *at = strrchr(c->deleg_principal, '@');
    size_t n = strlen(name) + (at != NULL ? strlen(at) : 0) + 1;
    char *out = malloc(n);
    if (out != NULL)
        snprintf(out, n, "%s%s", name, at != NULL ? at : "");
    return out;
}

/* klist's letters for ticket flags. */
static void flags_text(krb5_flags f, char *buf, size_t len)
{
    static const struct {
        krb5_flags bit;
        char letter;
    } letters[] = {
        {TKT_FLG_FORWARDABLE, 'F'}, {TKT_FLG_FORWARDED, 'f'},   {TKT_FLG_PROXIABLE, 'P'},
        {TKT_FLG_PROXY, 'p'},       {TKT_FLG_MAY_POSTDATE, 'D'}, {TKT_FLG_POSTDATED, 'd'},
        {TKT_FLG_INVALID, 'i'},     {TKT_FLG_RENEWABLE, 'R'},   {TKT_FLG_INITIAL, 'I'},
        {TKT_FLG_HW_AUTH, 'H'},     {TKT_FLG_PRE_AUTH, 'A'},    {TKT_FLG_TRANSIT_POLICY_CHECKED, 'T'},
        {TKT_FLG_OK_AS_DELEGATE, 'O'}, {TKT_FLG_ANONYMOUS, 'a'},
    };
    size_t n = 0;
    for (size_t i = 0; i < sizeof letters / sizeof letters[0] && n + 1 < len; i++)
        if (f & letters[i].bit)
            buf[n++] = letters[i].letter;
    buf[n] = '\0';
}

int krb_explain(struct krb *k, const char *user, bool enterprise, FILE *out)
{
    OM_uint32 maj, min, m2;
    char why[1024], cc[128];
    gss_cred_id_t imp = GSS_C_NO_CREDENTIAL;
    gss_ctx_id_t ctx = GSS_C_NO_CONTEXT;
    gss_buffer_desc tok = GSS_C_EMPTY_BUFFER;
    time_t expires = 0;
    int rc = 1;

    fprintf(out, "delegation: %s impersonates %s%s (S4U2Self), then to %s (S4U2Proxy)\n",
            k->conf->deleg_principal, user, enterprise ? " as an enterprise name" : "",
            k->conf->deleg_target_spn);
    maj = impersonate(k, user, enterprise, &imp, &expires, &min);
    if (!GSS_ERROR(maj))
        maj = gss_init_sec_context(&min, imp, &ctx, k->target, &krb5_oid, GSS_C_MUTUAL_FLAG, 0,
                                   GSS_C_NO_CHANNEL_BINDINGS, GSS_C_NO_BUFFER, NULL, &tok, NULL,
                                   NULL);
    if (GSS_ERROR(maj)) {
        gss_text(maj, min, why, sizeof why);
        enum reason r = reason_of(min);
        fprintf(out, "verdict: %s: %s\n", reason_name(r), why);
        rc = r == R_KDC_UNAVAILABLE ? 2 : 1;
        goto out;
    }
    /* The tickets the exchange left in the credential, as klist shows them. */
    snprintf(cc, sizeof cc, "MEMORY:certmapd-explain-%ld", (long)getpid());
    gss_key_value_element_desc el = {"ccache", cc};
    gss_key_value_set_desc store = {1, &el};
    krb5_context kc = NULL;
    krb5_ccache ccache = NULL;
    krb5_cc_cursor cur;
    krb5_creds cr;
    if (!GSS_ERROR(gss_store_cred_into(&m2, imp, GSS_C_INITIATE, &krb5_oid, 1, 1, &store, NULL,
                                       NULL)) &&
        krb5_init_context(&kc) == 0 && krb5_cc_resolve(kc, cc, &ccache) == 0 &&
        krb5_cc_start_seq_get(kc, ccache, &cur) == 0) {
        while (krb5_cc_next_cred(kc, ccache, &cur, &cr) == 0) {
            char *client = NULL, *server = NULL, flags[32], end[64];
            krb5_unparse_name(kc, cr.client, &client);
            krb5_unparse_name(kc, cr.server, &server);
            flags_text(cr.ticket_flags, flags, sizeof flags);
            time_t t = (time_t)cr.times.endtime;
            struct tm tm;
            strftime(end, sizeof end, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
            if (server != NULL && strncmp(server, "krbtgt/", 7) != 0)
                fprintf(out, "ticket\n  %-14s %s\n  %-14s %s\n  %-14s %s\n  %-14s %s\n",
                        "client", client ? client : "?", "service", server, "flags", flags,
                        "ends", end);
            krb5_free_unparsed_name(kc, client);
            krb5_free_unparsed_name(kc, server);
            krb5_free_cred_contents(kc, &cr);
        }
        krb5_cc_end_seq_get(kc, ccache, &cur);
    }
    if (ccache != NULL)
        krb5_cc_destroy(kc, ccache);
    if (kc != NULL)
        krb5_free_context(kc);
    fprintf(out, "verdict: delegated (a %zu-byte Negotiate token for %s)\n", tok.length,
            k->conf->deleg_target_spn);
    rc = 0;
out:
    gss_release_buffer(&m2, &tok);
    if (ctx != GSS_C_NO_CONTEXT)
        gss_delete_sec_context(&m2, &ctx, GSS_C_NO_BUFFER);
    if (imp != GSS_C_NO_CREDENTIAL)
        gss_release_cred(&m2, &imp);
    return rc;
}
