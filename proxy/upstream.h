/* proxy/upstream: connections to [backend] url, over the transport (io/):
 * connecting (every resolved address in order, plain or TLS), writing a
 * request, parsing the response with llhttp and handing it to whoever holds
 * the connection through callbacks. The idle connections kept for reuse are
 * in proxy/pool.c. Knows nothing of the client side. */
#ifndef CM_PROXY_UPSTREAM_H
#define CM_PROXY_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "common/reason.h"
#include "conf/conf.h"
#include "proxy/http.h"

struct tls_client_ctx;

/* Resolved backend addresses, in the resolver's order, shared read-only by
 * all workers. A new connection tries them in that order. */
#define BACKEND_MAX_ADDR 8
struct backend_addr {
    struct sockaddr_storage addr[BACKEND_MAX_ADDR];
    socklen_t len[BACKEND_MAX_ADDR];
    char text[BACKEND_MAX_ADDR][64]; /* "127.0.0.1:8080", "[::1]:443", for logs */
    size_t n;
};

/* Resolves [backend] url at start-up (the only blocking resolution). */
int proxy_backend_resolve(const struct conf *c, struct backend_addr *out, char *err, size_t errlen);

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
    uint8_t addr[UPSTREAM_TRAIL_MAX]; /* index into struct backend_addr */
    uint8_t how[UPSTREAM_TRAIL_MAX];  /* enum upstream_outcome */
    uint8_t n;
};

/* Appends <addr> with outcome <how> to <t> (a full trail keeps its first entries). */
void upstream_trail_add(struct upstream_trail *t, unsigned addr, enum upstream_outcome how);
/* <t> as "ADDR(how),ADDR" into <buf>; "-" when empty. Returns <buf>. */
const char *upstream_trail_text(const struct upstream_trail *t, const struct backend_addr *ba,
                                char *buf, size_t len);

/* One worker's backend connections: where to connect, how, and the idle ones. */
struct upstream;
TAILQ_HEAD(upstream_list, upstream);
struct upstream_pool {
    struct event_base *base;
    const struct conf *conf;
    const struct backend_addr *backend;
    struct tls_client_ctx *tls; /* NULL for an http:// backend */
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
 * whole life), else a new connection, which tries every backend address in
 * order until one connects (each attempt appended to <trail>). NULL when out
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

/* Hands <u> back: to the pool when <reusable> and it is sound, else closed. */
void upstream_release(struct upstream *u, bool reusable);

/* ---- the pool (proxy/pool.c) ---- */

void upstream_pool_init(struct upstream_pool *p, struct event_base *base, const struct conf *c,
                        const struct backend_addr *backend, struct tls_client_ctx *tls);
/* Closes every idle connection. */
void upstream_pool_purge(struct upstream_pool *p);

/* pool.c <-> upstream.c: an idle connection parked, or taken back. */
struct upstream *upstream_pool_take(struct upstream_pool *p, const char *identity);
bool upstream_pool_put(struct upstream_pool *p, struct upstream *u);
/* The idle connection <u> became unusable: out of the pool and freed. */
void upstream_pool_drop(struct upstream *u);

#endif
