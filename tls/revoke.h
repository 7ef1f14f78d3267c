/* tls/ private: the revocation state of a tls_ctx, shared by revoke.c (the
 * CRLs in use, crl_file, the revocation thread) and fetch.c (crl_fetch and
 * ocsp on that thread). Not for use outside those two files. */
#ifndef CM_TLS_REVOKE_H
#define CM_TLS_REVOKE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include <event2/event.h>
#include <openssl/ocsp.h>
#include <openssl/x509.h>

#include "tls/internal.h"

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

/* ---- revoke.c ---- */
time_t tls_asn1_time(const ASN1_TIME *a);
void tls_crlent_put(struct tls_crlent *e);
struct tls_crlent *tls_crlent_get(struct tls_crlent *e);
/* An empty set with room for <cap> entries, one reference. */
struct tls_crlset *tls_crlset_new(size_t cap);
/* Makes <s> (its reference taken) the set in use. */
void tls_rev_publish(struct tls_rev *r, struct tls_crlset *s);
bool tls_crlent_current(const struct tls_crlent *e, time_t now);
/* tls_rev_status(), logging the unknown once per CA only when <log>. */
int tls_rev_status_of(struct tls_ctx *t, X509 *leaf, bool log);

/* ---- fetch.c ---- */
/* The set in use made anew: the file's CRLs and the last good one of each fetch. */
void tls_rev_republish(struct tls_rev *r);
/* Starts the fetches and queries that workers asked for. */
void tls_rev_fetch_queued(struct tls_rev *r);
void tls_rev_fetch_free(struct fetch *f);
/* The OCSP status of <leaf> from an answer that still holds at <now>: a
 * V_OCSP_CERTSTATUS_*, or -1. */
int tls_rev_ocsp_cached(struct tls_ctx *t, X509 *leaf, time_t now);

#endif
