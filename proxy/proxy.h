/* proxy/: workers, client connections, HTTP/1.1 request handling, the
 * upstream pool and the access log. Internal header of the proxy module. */
#ifndef CM_PROXY_H
#define CM_PROXY_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <llhttp.h>

#include "common/reason.h"
#include "conf/conf.h"
#include "mapping/mapping.h"
#include "tls/facts.h"

struct tls_ctx;
struct tls_client_ctx;
struct accesslog;

/* ---- request heads --------------------------------------------------- */

/* One header: offsets into the owning proxy_head's buffer. */
struct proxy_hdr {
    uint32_t name_off, name_len;
    uint32_t val_off, val_len;
};

/* A request or response head as received: start-line pieces and headers,
 * all bytes in one buffer bounded by <limit>. Allocated only while a head is
 * being received or forwarded; an idle connection holds none. */
struct proxy_head {
    char *buf;
    size_t len, cap, limit;
    struct proxy_hdr *h;
    size_t n, cap_h;
    uint32_t url_off, url_len; /* request target, or response reason phrase */
    bool in_value;             /* last piece appended was a header value */
};

/* Appends <len> bytes of the URL / header name / header value being parsed.
 * Returns 0, or -1 when the head would exceed its limit or memory is short. */
int proxy_head_url(struct proxy_head *hd, const char *at, size_t len);
int proxy_head_field(struct proxy_head *hd, const char *at, size_t len);
int proxy_head_value(struct proxy_head *hd, const char *at, size_t len);
void proxy_head_reset(struct proxy_head *hd, size_t limit);
void proxy_head_purge(struct proxy_head *hd);

/* Case-insensitive comparison of header <i>'s name with <name>. */
bool proxy_head_name_is(const struct proxy_head *hd, size_t i, const char *name);

/* ---- upstream ---------------------------------------------------------- */

struct proxy_conn;

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

struct upstream {
    struct worker *w;
    struct bufferevent *bev;
    struct proxy_conn *client; /* NULL while idle in the pool */
    struct upstream_trail *trail; /* the client request's record, NULL while idle */
    unsigned addr_idx;         /* the backend address this connection goes to */
    llhttp_t parser;
    struct proxy_head head; /* response head being received */
    uint64_t body_out;      /* response body bytes relayed */
    bool connected;
    bool direct;       /* plain TCP: written by upstream_flush(), see there */
    bool reused;       /* taken from the pool (may be stale) */
    bool resp_started; /* some response byte was relayed to the client */
    bool resp_done;
    bool chunked_out; /* re-chunking the body for the client */
    bool close_delimited;
    bool skip; /* inside an interim 1xx response */
    bool failed;
    enum reason fail_reason;
    TAILQ_ENTRY(upstream) link;
};
TAILQ_HEAD(upstream_list, upstream);

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

/* Binds an upstream connection to <c> for its current request: an idle pooled one
 * if there is one, else a new connection, which tries every backend address in
 * order until one connects. Each address it tries is appended to <trail>.
 * NULL on failure (resources). */
struct upstream *upstream_acquire(struct worker *w, struct proxy_conn *c,
                                  struct upstream_trail *trail);

/* Appends <addr> with outcome <how> to <t> (a full trail keeps its first entries). */
void upstream_trail_add(struct upstream_trail *t, unsigned addr, enum upstream_outcome how);

/* Writes what the client side has put in <u>'s output now, rather than on the
 * next loop turn. A backend socket is nearly always writable, and waiting for
 * epoll to say so costs two epoll_ctl calls and a loop turn per request. So a
 * connected plain-TCP upstream keeps EV_WRITE disabled; only what does not fit
 * (or a write error) enables it, and libevent then writes the rest, or reports
 * the error, as for any bufferevent. TLS upstreams are left to libevent. */
void upstream_flush(struct upstream *u);

/* Called by the client side when the request is complete or aborted. When
 * <reusable>, the connection goes back to the pool; otherwise it is closed. */
void upstream_release(struct upstream *u, bool reusable);

/* Closes every idle pooled connection of <w>. */
void upstream_pool_purge(struct worker *w);

/* ---- client connections -------------------------------------------------- */

enum conn_state {
    CS_HANDSHAKE = 0, /* TLS handshake in progress */
    CS_IDLE,          /* between requests */
    CS_HEAD,          /* receiving a request head */
    CS_READAHEAD,     /* holding the body in memory until a late certificate is asked */
    CS_LATE,          /* waiting for the client's answer to a late certificate request */
    CS_MAP,           /* waiting for the directory (certificate mapping) */
    CS_BODY,          /* head forwarded, receiving the body */
    CS_WAIT,          /* request complete, response in progress */
    CS_CLOSING,       /* flushing a last answer, then closing */
};

struct proxy_req {
    struct proxy_head head;
    int method; /* llhttp_method_t */
    uint8_t http_major, http_minor;
    bool keep_alive;
    bool has_body;
    bool chunked;
    bool expect_continue;
    bool body_done;
    bool idempotent;
    bool head_method;
    bool retried;
    bool policy_done;               /* location and certificate mode decided */
    bool late_asked;                /* a late certificate was asked for this request */
    bool want_mapping;              /* [mapping] is on for this location */
    bool map_done;                  /* <ident> holds the mapping's outcome */
    enum cert_mode cert_mode;       /* of the location */
    uint64_t content_length;        /* of the body as received (not chunked) */
    struct evbuffer *readahead;     /* body held while a late certificate is asked */
    struct map_result ident;        /* the mapped account, when map_done */
    struct evbuffer *upstream_head; /* kept until the response starts, for one retry */
    struct upstream_trail trail;    /* backend addresses tried */
    uint64_t bytes_in;              /* request bytes received (head + body) */
    uint64_t bytes_out;             /* response bytes sent */
    int status;
    enum reason reason;
    struct timespec t_start;
    struct timespec t_upstream;      /* when the upstream exchange began */
    struct timespec t_upstream_done; /* first response byte */
};

struct proxy_conn {
    struct worker *w;
    struct bufferevent *bev;
    struct event *timer; /* handshake / head / idle timeouts */
    llhttp_t parser;
    struct upstream *up;
    struct map_job *map_job;  /* directory lookup in flight, or NULL */
    struct event *late_ev;    /* fires when a late certificate request is answered */
    struct cert_facts *facts; /* verified client certificate, or NULL */
    enum reason cert_reason;  /* verdict on the certificate presented */
    struct proxy_req req;
    enum conn_state state;
    uint32_t head_bytes;    /* bytes of the current head fed to the parser */
    const char *feed_start; /* the buffer llhttp_execute is parsing */
    char feed_prev;         /* the byte parsed just before feed_start */
    bool parser_paused;
    bool lingering;         /* last answer sent, close_notify too: waiting for the client */
    bool read_blocked; /* backpressure: upstream output is full */
    bool in_feed;      /* inside conn_feed: defer frees */
    bool dead;         /* free once the stack unwinds */
    char peer[64];
    TAILQ_ENTRY(proxy_conn) link;
};
TAILQ_HEAD(proxy_conn_list, proxy_conn);

/* Accepts <fd> on <w>: starts the TLS handshake. Closes <fd> on failure. */
void proxy_conn_accept(struct worker *w, int fd, const struct sockaddr *sa, int salen);

/* Closes <c> and everything it owns (its upstream connection included). */
void proxy_conn_close(struct proxy_conn *c);

/* Upstream events for the client side (upstream.c → conn.c). */
void proxy_conn_response_head(struct proxy_conn *c, struct evbuffer *head);
/* Relays response body bytes to the client, as a chunk when <chunked>; with
 * <len> 0 and <chunked>, the last chunk. */
void proxy_conn_response_body(struct proxy_conn *c, const char *data, size_t len, bool chunked);
void proxy_conn_response_done(struct proxy_conn *c, bool upstream_reusable);
void proxy_conn_upstream_failed(struct proxy_conn *c, enum reason r);
/* Upstream output drained below the low mark: the client may be read again. */
void proxy_conn_upstream_writable(struct proxy_conn *c);

/* Whether the client can take more response data now (backpressure). */
bool proxy_conn_output_full(const struct proxy_conn *c);

/* ---- HTTP helpers (http.c) ----------------------------------------------- */

/* Writes the request head to send upstream into <out>: request line, the
 * client's end-to-end headers (hop-by-hop, identity and forwarding headers
 * removed), then X-Forwarded-For/-Proto and the identity headers. */
void proxy_http_request_head(const struct proxy_conn *c, struct evbuffer *out);

/* Writes the response head for the client: status line and end-to-end headers
 * of the upstream response <hd> with <status>, plus framing and Connection. */
void proxy_http_response_head(const struct proxy_head *hd, int status, bool chunked,
                              bool keep_alive, const char *content_length, struct evbuffer *out);

/* Writes a complete error response for <r> (status, reason phrase, body with the
 * reason code when <detailed>), always with Connection: close. */
void proxy_http_error(struct evbuffer *out, enum reason r, bool detailed, bool head_only);

/* The decoded, dot-segment-free path of request target <url> (length <len>), for
 * location matching. Returns a new string, or NULL for a target that cannot be
 * normalised safely (bad %-escape, encoded NUL or slash, absolute path missing). */
char *proxy_http_policy_path(const char *url, size_t len);

/* Appends <len> (> 0) body bytes to <out>, as one chunk when <chunked>. */
void proxy_http_body(struct evbuffer *out, const char *data, size_t len, bool chunked);

const char *proxy_http_status_text(int status);

/* ---- access log (accesslog.c) -------------------------------------------- */

/* Opens the access log named by [server] access_log ("stderr", "off", a path).
 * NULL with a reason in <err> when the file cannot be opened for appending. */
struct accesslog *accesslog_open(const char *spec, char *err, size_t errlen);
void accesslog_close(struct accesslog *l);

/* Writes one line for the finished request <r> of connection <c>. */
void accesslog_write(struct accesslog *l, const struct proxy_conn *c, const struct proxy_req *r);

/* ---- workers (worker.c) --------------------------------------------------- */

struct worker {
    unsigned id;
    const struct conf *conf;
    struct event_base *base;
    struct tls_ctx *tls;
    struct tls_client_ctx *backend_tls; /* NULL for an http:// backend */
    const struct backend_addr *backend;
    struct accesslog *alog;
    int listen_fds[CONF_MAX_LISTEN];
    struct evconnlistener *listeners[CONF_MAX_LISTEN];
    size_t n_listeners;
    struct upstream_list pool;
    unsigned pool_size;
    struct proxy_conn_list conns;
    unsigned n_conns;
    struct event *stop_ev;
    struct event *grace_ev;
    bool draining;
    pthread_t thread;
    /* Certificate mapping, when [mapping] is configured: this worker's source
     * (LDAP connection or LDIF view) and mapper over the shared cache. */
    struct map_source *source;
    struct mapper *mapper;
    /* Work handed over from other threads (a lookup finished elsewhere). */
    struct event *post_ev;
    pthread_mutex_t post_lock;
    struct worker_post *post_head, *post_tail;
};

struct proxy_shared {
    const struct conf *conf;
    struct tls_ctx *tls;
    struct tls_client_ctx *backend_tls;
    struct backend_addr backend;
    struct accesslog *alog;
    struct map_cache *cache; /* NULL without [mapping] */
};

/* Binds every listener for <n> workers with SO_REUSEPORT (one socket per
 * worker and address). Returns 0, or -1 with a reason in <err>. */
int proxy_workers_bind(struct worker *ws, unsigned n, const struct proxy_shared *sh, char *err,
                       size_t errlen);

/* Starts the worker threads; each runs its own event_base until stopped. */
int proxy_workers_start(struct worker *ws, unsigned n);

/* Asks every worker to stop accepting and finish in-flight requests within
 * <grace_ms>, then waits for all of them and frees them. */
void proxy_workers_stop(struct worker *ws, unsigned n, uint64_t grace_ms);

/* Called by a worker when a connection goes away, to finish a drain. */
void proxy_worker_conn_gone(struct worker *w);

/* Monotonic time helpers. */
void proxy_now(struct timespec *ts);
double proxy_ms_between(const struct timespec *a, const struct timespec *b);
struct timeval proxy_tv_ms(uint64_t ms);

#endif
