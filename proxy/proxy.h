/* proxy/: workers, client connections, streams, upstream connections and the
 * access log. This header is what main.c sees: the workers' life. Inside
 * proxy/, each part has its own header, and their include graph is a DAG:
 * worker → conn → stream → {upstream, http, accesslog, mapping};
 * upstream → {http, io}; stream and conn → io. */
#ifndef CM_PROXY_H
#define CM_PROXY_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/time.h>

#include "conf/conf.h"
#include "proxy/accesslog.h"
#include "proxy/upstream.h"

struct tls_ctx;
struct tls_client_ctx;
struct map_cache;
struct worker;

/* One configuration generation: what every worker shares, read-only once
 * made (but the backend servers' health, which is atomic). The first is made
 * at start, one more by each reload; a generation lives until the last
 * connection that started on it has ended. */
struct proxy_shared {
    unsigned generation; /* 1, then one more per reload */
    const struct conf *conf;
    struct tls_ctx *tls;
    struct tls_client_ctx *backend_tls; /* NULL for an http:// backend */
    struct backend_set *backend;        /* the servers, their addresses and health */
    struct accesslog *alog;
    struct map_cache *cache; /* NULL without [mapping] */
    struct krb *krb;         /* NULL without [delegation] mode = kerberos */
    /* The workers' parts that still use it (proxy/worker.c); the main thread
     * frees a replaced generation once this is 0. */
    _Atomic unsigned refs;
    struct proxy_shared *older; /* main.c's list of the generations alive */
    struct conf *conf_owned;    /* <conf>, for main.c to free */
};

/* Allocates <n> workers and binds every listener for them with SO_REUSEPORT
 * (one socket per worker and address). NULL with a reason in <err>. */
struct worker *proxy_workers_bind(unsigned n, struct proxy_shared *sh, char *err, size_t errlen);

/* A reload, in two steps. First, each worker makes its part of generation
 * <sh> (its pool, its directory connection) on its own thread; 0 when every
 * one did, else -1 with the first reason in <err>, and none keeps it. */
int proxy_workers_offer(struct worker *ws, unsigned n, struct proxy_shared *sh, char *err,
                        size_t errlen);

/* Then, on success: new connections use the offered generation; connections
 * of the older ones close when idle (a request in flight, a held Ping,
 * finishes first), and each older part is freed when its last one ends.
 * <commit> false drops the offered parts instead. */
void proxy_workers_commit(struct worker *ws, unsigned n, bool commit);

/* The bound on client connections of <c> ([server] max_connections), for
 * every worker; connections over a lowered bound stay until they end. */
void proxy_workers_set_limit(struct worker *ws, const struct conf *c);

/* Starts the worker threads; each runs its own event_base until stopped. */
int proxy_workers_start(struct worker *ws, unsigned n);

/* Asks every worker to stop accepting and finish in-flight requests within
 * <grace_ms>, then waits for all of them. */
void proxy_workers_stop(struct worker *ws, unsigned n, uint64_t grace_ms);

/* Frees the workers (stopped, or never started), and <ws>; NULL is fine. */
void proxy_workers_free(struct worker *ws, unsigned n);

/* A timeval of <ms> milliseconds. */
struct timeval proxy_tv_ms(uint64_t ms);

#endif
