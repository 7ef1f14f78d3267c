/* metrics/: counters for Prometheus (prefix metrics_), and the [metrics]
 * listener that serves them with /healthz (metrics/server.c).
 *
 * Counting costs the hot path no shared cache line: a thread that calls
 * metrics_thread_attach() (every worker) counts into a block of its own,
 * with plain relaxed loads and stores; the blocks are summed when scraped.
 * Any other thread (krb/'s pool, LDAP connectors, tests) counts into one
 * global block with relaxed atomic additions. Gauges are signed counters
 * summed the same way: a gauge raised on one thread and lowered on another
 * still sums right. Nothing here needs a configuration: per-configuration
 * state (the listener, its targets) lives in struct metrics_server. */
#ifndef CM_METRICS_H
#define CM_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common/reason.h"
#include "conf/conf.h"

/* Counters, each one series (family and labels: the table in metrics.c). */
enum metrics_counter { /* MT_: not MC_, which mapping.h uses */
                       MT_CONN_ACCEPTED = 0,
                       MT_CONN_RECLAIMED, /* idle connections closed to make room (reclaim_idle) */
                       MT_HS_FULL_OK, /* TLS handshakes: full (a failed first handshake counts as
                                         full) */
                       MT_HS_FULL_FAILED, /* a TLS error: alert, protocol, bytes that are not TLS */
                       MT_HS_FULL_CLOSED, /* closed or reset before any TLS error (a TCP health
                                             check) */
                       MT_HS_FULL_TIMEOUT, /* no handshake within header_timeout */
                       MT_HS_RESUMED_OK,
                       MT_HS_LATE_OK, /* late certificate: renegotiation or post-handshake auth
                                         answered */
                       MT_HS_LATE_FAILED,
                       MT_CACHE_HIT, /* identity cache */
                       MT_CACHE_MISS,
                       MT_CACHE_WAIT,    /* waited behind a search already under way for the same
                                            certificate */
                       MT_DIR_SEARCH_OK, /* directory account searches */
                       MT_DIR_SEARCH_FAILED,
                       MT_DIR_SEARCH_TIMEOUT,
                       MT_BACKEND_CONNECT_OK, /* backend connection attempts, by outcome */
                       MT_BACKEND_CONNECT_ERROR,
                       MT_BACKEND_CONNECT_TIMEOUT,
                       MT_BACKEND_STALE,   /* pooled connections found closed by the backend */
                       MT_BACKEND_REUSED,  /* requests sent on a pooled connection */
                       MT_DELEG_CACHE_HIT, /* delegated credentials */
                       MT_DELEG_CACHE_MISS,
                       MT_KDC_OK, /* S4U2Self exchanges with the KDC */
                       MT_KDC_REFUSED,
                       MT_KDC_UNAVAILABLE,
                       MT_RELOAD_OK,
                       MT_RELOAD_FAILED,
                       MT_REQ_OVERFLOW, /* requests whose (status, reason) found no slot:
                                           status="other" */
                       MT_MAX
};

/* Gauges. */
enum metrics_gauge {
    MG_CONN_HANDSHAKE = 0, /* client connections, by state */
    MG_CONN_IDLE,
    MG_CONN_ACTIVE,
    MG_CONN_CLOSING,
    MG_CACHE_ENTRIES,  /* identity cache, ready entries */
    MG_BACKEND_OPEN,   /* backend connections (connecting, busy or pooled) */
    MG_BACKEND_POOLED, /* of those, idle in a pool */
    MG_DELEG_CACHE_ENTRIES,
    MG_DIR_UP0, /* worker LDAP connections bound to [ldap] uri number i */
    MG_DIR_UP_LAST = MG_DIR_UP0 + CONF_MAX_URIS - 1,
    MG_MAX
};

/* Gives the calling thread its own counter block (idempotent). A worker calls
 * it first thing. 0, or -1 when out of memory (it then counts globally). */
int metrics_thread_attach(void);

void metrics_inc(enum metrics_counter c);
void metrics_gauge_add(enum metrics_gauge g, int64_t delta);

/* One answered request: its HTTP status and reason code (the access log's). */
void metrics_request(int status, enum reason r);

/* One directory account search that ended: <result> MT_DIR_SEARCH_*,
 * after <seconds> (histogram certmapd_directory_search_duration_seconds). */
void metrics_dir_search(enum metrics_counter result, double seconds);

/* A configuration reload was attempted (the SIGHUP path calls it). */
void metrics_reload(bool ok);

/* CRL freshness per issuing CA, for certmapd_crl_*: tls/ sets one entry per
 * CRL it loaded (<issuer> a display name, <last_update>/<next_update> Unix
 * times, 0 when absent); metrics_crl_clear() before a new set is loaded.
 * At most METRICS_CRL_MAX issuers; a known issuer is replaced. */
#define METRICS_CRL_MAX 64
void metrics_crl_clear(void);
void metrics_crl_set(const char *issuer, int64_t last_update, int64_t next_update);
/* The whole set at once (<n> issuers), so that a scrape never sees it half made. */
void metrics_crl_replace(const char *const *issuer, const int64_t *last_update,
                         const int64_t *next_update, size_t n);

/* Sum of MG_DIR_UP0.. gauges: directory connections bound right now. */
int64_t metrics_directory_up(void);

/* The current value of a counter or gauge, summed over every block (tests,
 * /healthz). */
uint64_t metrics_counter_value(enum metrics_counter c);
int64_t metrics_gauge_value(enum metrics_gauge g);

/* What a scrape adds to the counters: names for labels that come from the
 * configuration. */
struct metrics_labels {
    const char *const *ldap_uri; /* [ldap] uri i labels MG_DIR_UP0 + i */
    size_t n_ldap_uri;
};

/* The whole exposition (Prometheus text format 0.0.4) into a new string of
 * length <*len>, or NULL when out of memory. The caller frees it. */
char *metrics_render(const struct metrics_labels *labels, size_t *len);

/* <s> as a Prometheus label value (backslash, double quote and newline
 * escaped; other control bytes written as \xHH would not parse, so they
 * become '?') into <out>, always NUL-terminated, cut at <outlen>. */
void metrics_label_escape(const char *s, char *out, size_t outlen);

/* Frees every thread's block (at exit, after the threads are gone). */
void metrics_shutdown(void);

/* ---- the listener (metrics/server.c) -------------------------------------------- */

#define METRICS_MAX_BACKEND 8

/* What /healthz checks and /metrics labels with, copied from a configuration
 * (so that a reload can replace it while old configurations go away). */
struct metrics_targets {
    struct sockaddr_storage backend[METRICS_MAX_BACKEND]; /* tried in order */
    socklen_t backend_len[METRICS_MAX_BACKEND];
    char backend_text[METRICS_MAX_BACKEND][320]; /* as the backend set writes them */
    size_t n_backend;
    bool need_directory;     /* [mapping] with source = ldap */
    uint64_t timeout_ms;     /* for each backend connect */
    const struct conf *conf; /* for the [ldap] uri labels; copied, not kept */
};

struct metrics_server;

/* Binds [metrics] listen of <c> (call as root, before dropping privileges)
 * with the targets <t>. NULL when [metrics] listen is unset (then <err> is
 * ""), or NULL with a reason in <err>. */
struct metrics_server *metrics_server_new(const struct conf *c, const struct metrics_targets *t,
                                          char *err, size_t errlen);

/* Starts the listener's thread (its own event_base). 0, or -1 with <err>. */
int metrics_server_start(struct metrics_server *s, char *err, size_t errlen);

/* Replaces what /healthz checks (a reload with a new configuration). 0 or -1. */
int metrics_server_update(struct metrics_server *s, const struct metrics_targets *t);

/* Stops the thread, closes everything and frees <s>; NULL is fine. */
void metrics_server_free(struct metrics_server *s);

/* The listener's strict reading of one request head <head> (<len> bytes, up to
 * and including its blank line): 200 with <*route> set, else the status to
 * answer (400 malformed, 404 unknown target, 405 not GET, 505 version). */
enum { METRICS_ROUTE_NONE = 0, METRICS_ROUTE_METRICS, METRICS_ROUTE_HEALTHZ };
int metrics_http_route(const char *head, size_t len, int *route);

#endif
