/* proxy/upstream: connections to [backend] url, over the transport (io/):
 * connecting (every resolved address in order, plain or TLS), writing a
 * request, parsing the response with llhttp and handing it to whoever holds
 * the connection through callbacks. The idle connections kept for reuse are
 * in proxy/pool.c. Knows nothing of the client side. */
#ifndef CM_PROXY_UPSTREAM_H
#define CM_PROXY_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "common/reason.h"
#include "conf/conf.h"
#include "proxy/http.h"

struct tls_client_ctx;

/* The backend servers ([backend] url, one or more) and every address each
 * resolved to, made at start-up (the only blocking resolution) and shared by
 * all workers for the life of one configuration. Addresses are read-only;
 * each server's health (passive: a failed connect marks it down for
 * [backend] fail_timeout) is atomic, so that what one worker learns the
 * others skip, without a lock. Requests go round robin over the servers not
 * down (the cursor is each worker's own), a server's addresses in order. */
#define BACKEND_MAX_ADDR 8 /* per server */
#define BACKEND_MAX_SERVERS CONF_MAX_BACKENDS
#define BACKEND_ADDR_TOTAL (BACKEND_MAX_ADDR * BACKEND_MAX_SERVERS)
struct backend_server {
    const char *host;             /* the URL's host, for the TLS name check (the conf's string) */
    const char *name;             /* "host:port" as in the URL, for logs and Host */
    unsigned first, n;            /* its addresses: addr[first .. first + n) of the set */
    _Atomic bool down;            /* a connect failed, or a check, and none succeeded since */
    _Atomic int64_t retry_at_ms;  /* while down: skipped until then (monotonic clock) */
    _Atomic int64_t failed_at_ns; /* the last failure (monotonic clock) */
};
struct backend_set {
    struct backend_server srv[BACKEND_MAX_SERVERS];
    unsigned n_srv;
    struct sockaddr_storage addr[BACKEND_ADDR_TOTAL];
    socklen_t len[BACKEND_ADDR_TOTAL];
    uint8_t srv_of[BACKEND_ADDR_TOTAL]; /* the server of each address */
    char text[BACKEND_ADDR_TOTAL][320]; /* "127.0.0.1:8080", "[::1]:443", with several
                                          servers named ones as "eas1:443=10.0.0.1:443" */
    unsigned n;
    uint64_t fail_timeout_ms;
};

/* Resolves every [backend] url. NULL with "FILE:LINE: [backend] url: reason" in <err>. */
struct backend_set *backend_set_new(const struct conf *c, char *err, size_t errlen);
void backend_set_free(struct backend_set *bs);

/* The servers one new connection should try, in order, into <order> (room for
 * BACKEND_MAX_SERVERS): those not down, round robin from <*rr> (advanced past
 * the first), then those down, the least recently failed first, so that a
 * request is tried somewhere even when all are down. Returns how many. */
unsigned backend_order(struct backend_set *bs, unsigned *rr, uint8_t *order);
/* Whether server <srv> is to be used now (not down, or its fail_timeout is over). */
bool backend_server_usable(struct backend_set *bs, unsigned srv);
/* Connecting to server <srv> failed at every address (<why>): down for
 * fail_timeout, logged when it was not down already. */
void backend_server_failed(struct backend_set *bs, unsigned srv, const char *why);
/* A connection to server <srv> was established: up again, logged when it was down. */
void backend_server_ok(struct backend_set *bs, unsigned srv);
/* An active health check of server <srv> passed (<ok>) or failed (<why>):
 * up, or down until a check passes; transitions logged. */
void backend_server_checked(struct backend_set *bs, unsigned srv, bool ok, const char *why);

/* Active health checks ([backend] health_check) of the servers of <bs>, on
 * <base> (proxy/health.c): a first round at once, then every health_interval.
 * NULL with a reason in <err>. */
struct backend_health;
struct backend_health *backend_health_new(struct event_base *base, const struct conf *c,
                                          struct backend_set *bs, struct tls_client_ctx *tls,
                                          char *err, size_t errlen);
/* Stops the checks (those in flight are dropped); NULL is fine. */
void backend_health_free(struct backend_health *h);

/* The backend addresses one request tried, in order, and how each attempt
 * ended: the access log's upstream= field. */
enum upstream_outcome {
    UP_USED = 0, /* the request went (or was going) to this address */
    UP_ERROR,    /* connecting failed (refused, unreachable, TLS handshake) */
    UP_TIMEOUT,  /* connecting took longer than [backend] connect_timeout */
    UP_STALE,    /* a pooled connection the backend had closed */
};
#define UPSTREAM_TRAIL_MAX 16
struct upstream_trail {
    uint8_t addr[UPSTREAM_TRAIL_MAX]; /* index into struct backend_set's addresses */
    uint8_t how[UPSTREAM_TRAIL_MAX];  /* enum upstream_outcome */
    uint8_t n;
};

/* Appends <addr> with outcome <how> to <t> (a full trail keeps its first entries). */
void upstream_trail_add(struct upstream_trail *t, unsigned addr, enum upstream_outcome how);
/* <t> as "ADDR(how),ADDR" into <buf>; "-" when empty. Returns <buf>. */
const char *upstream_trail_text(const struct upstream_trail *t, const struct backend_set *ba,
                                char *buf, size_t len);

/* One worker's backend connections: where to connect, how, and the idle ones. */
struct upstream;
TAILQ_HEAD(upstream_list, upstream);
struct upstream_pool {
    struct event_base *base;
    const struct conf *conf;
    struct backend_set *backend;   /* shared by the workers: its health is atomic */
    struct tls_client_ctx *tls;    /* NULL for an http:// backend */
    unsigned rr;                   /* this worker's round robin cursor over the servers */
    struct backend_health *health; /* the active checks, when this worker runs them */
    struct upstream_list idle;  /* most recently used first */
    unsigned n_idle;
    bool closed;                /* draining: nothing goes back to the pool */
};

/* A response head as the backend sent it, for the holder to frame for its client. */
struct upstream_response {
    int status;
    const struct proxy_head *head;
    bool has_length;          /* Content-Length, and not chunked */
    uint64_t content_length;
    bool bodyless;            /* a HEAD request's answer, 204, 304 */
};

/* What an upstream connection reports to its holder. After done or error the
 * holder must release it (upstream_release), and nothing more is reported. */
struct upstream_handler {
    void (*head)(void *arg, const struct upstream_response *r);
    /* Decoded body bytes (never empty). */
    void (*body)(void *arg, const char *data, size_t len);
    /* The response is complete; <reusable>: the connection may serve another request. */
    void (*done)(void *arg, bool reusable);
    /* The exchange failed (R_BACKEND_UNAVAILABLE, R_BACKEND_TIMEOUT); <stale>:
     * a pooled connection that turned out closed before any answer. */
    void (*error)(void *arg, enum reason r, bool stale);
    /* The request's output fell to the low mark: the holder may write more. */
    void (*writable)(void *arg);
    /* A new connection is established (TCP, and TLS for https); may be NULL. */
    void (*connected)(void *arg);
};

/* Flags of upstream_acquire(). */
#define UPSTREAM_HEAD_REQUEST 0x1u /* the request is HEAD: no body in the answer */
#define UPSTREAM_FRESH 0x2u        /* a new connection, never a pooled one */

/* An upstream connection for one request: an idle pooled one of <identity>
 * if there is one (NULL: a connection of nobody in particular; with
 * delegation, a connection belongs to the user it authenticated, for its
 * whole life), else a new connection, which tries the servers in
 * backend_order(), each server's addresses in order, until one connects
 * (each attempt appended to <trail>). Without an identity, the pooled
 * connection must go to the server round robin picked; with one, any server
 * not down will do (a new connection would need a new token). NULL when out
 * of resources. */
struct upstream *upstream_acquire(struct upstream_pool *p, const struct upstream_handler *h,
                                  void *arg, unsigned flags, const char *identity,
                                  struct upstream_trail *trail);

/* Whether <u> is established; its RFC 5929 tls-server-end-point binding data
 * (NULL: a plain backend, or not connected yet) and its length in <len>. */
bool upstream_connected(const struct upstream *u);
const unsigned char *upstream_binding(const struct upstream *u, size_t *len);

/* Queues request bytes (copied / moved). */
void upstream_write(struct upstream *u, const void *data, size_t len);
void upstream_write_buffer(struct upstream *u, struct evbuffer *buf);
size_t upstream_output_length(const struct upstream *u);

/* Stops / resumes reading the response (the client cannot take more now). */
void upstream_read_pause(struct upstream *u, bool paused);

/* Whether <u> came from the pool (it may have been closed by the backend). */
bool upstream_reused(const struct upstream *u);

/* The Host value for a client that sent none: that of the server <u> is
 * connecting to now (after a failover while connecting, the request head
 * keeps the first server's). */
const char *upstream_host_header(const struct upstream *u);

/* Closes the idle pooled connections to the server of <u>: one of them
 * turned out closed by that server, and its siblings are likely as stale. */
void upstream_purge_siblings(struct upstream *u);

/* Hands <u> back: to the pool when <reusable> and it is sound, else closed. */
void upstream_release(struct upstream *u, bool reusable);

/* ---- the pool (proxy/pool.c) ---- */

void upstream_pool_init(struct upstream_pool *p, struct event_base *base, const struct conf *c,
                        struct backend_set *backend, struct tls_client_ctx *tls);
/* Closes every idle connection (or only those to server <srv>); the first
 * also stops the pool's health checks (a worker draining or ending). */
void upstream_pool_purge(struct upstream_pool *p);
void upstream_pool_purge_server(struct upstream_pool *p, unsigned srv);

/* Runs the active health checks of the pool's servers on its event base, when
 * [backend] health_check is set (one worker per configuration does). 0, or
 * -1 with a reason in <err>. */
int upstream_pool_health_start(struct upstream_pool *p, char *err, size_t errlen);

/* pool.c <-> upstream.c: an idle connection parked, or taken back. */
/* <srv>: that server's only; -1: any server usable now. */
struct upstream *upstream_pool_take(struct upstream_pool *p, const char *identity, int srv);
bool upstream_pool_put(struct upstream_pool *p, struct upstream *u);
/* The idle connection <u> became unusable: out of the pool and freed. */
void upstream_pool_drop(struct upstream *u);

#endif
