/* Upstream connections to [backend] url: connecting (plain or TLS), relaying
 * responses to the client with llhttp, and the per-worker keep-alive pool. */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>

#include "common/log.h"
#include "proxy/proxy.h"
#include "tls/tls.h"

/* Response heads from the backend are bounded too. */
#define RESPONSE_HEAD_LIMIT (64 * 1024)
/* An idle pooled connection is closed after this long. */
#define POOL_IDLE_MS 60000
/* Towards the backend, queue at most this much before the client is paused. */
#define UP_LOW_MARK (128 * 1024)

static void addr_text(const struct sockaddr *sa, socklen_t len, char *out, size_t outlen)
{
    char host[INET6_ADDRSTRLEN], port[8];
    if (getnameinfo(sa, len, host, sizeof host, port, sizeof port,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        snprintf(out, outlen, "?");
        return;
    }
    snprintf(out, outlen, sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
}

int proxy_backend_resolve(const struct conf *c, struct backend_addr *out, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    char what[1024];
    int rc = getaddrinfo(c->backend.host, c->backend.port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "%s: cannot resolve \"%s\": %s",
                 conf_where(c, "backend", "url", what, sizeof what), c->backend.host,
                 gai_strerror(rc));
        return -1;
    }
    out->n = 0;
    for (struct addrinfo *ai = res; ai != NULL && out->n < BACKEND_MAX_ADDR; ai = ai->ai_next) {
        memcpy(&out->addr[out->n], ai->ai_addr, ai->ai_addrlen);
        out->len[out->n] = ai->ai_addrlen;
        addr_text(ai->ai_addr, ai->ai_addrlen, out->text[out->n], sizeof out->text[out->n]);
        out->n++;
    }
    freeaddrinfo(res);
    if (out->n == 0) {
        snprintf(err, errlen, "%s: \"%s\" has no address",
                 conf_where(c, "backend", "url", what, sizeof what), c->backend.host);
        return -1;
    }
    return 0;
}

void upstream_trail_add(struct upstream_trail *t, unsigned addr, enum upstream_outcome how)
{
    if (t == NULL || t->n >= UPSTREAM_TRAIL_MAX)
        return;
    t->addr[t->n] = (uint8_t)addr;
    t->how[t->n] = (uint8_t)how;
    t->n++;
}

/* ---- response parsing --------------------------------------------------------- */

static int on_status(llhttp_t *p, const char *at, size_t len)
{
    struct upstream *u = p->data;
    return proxy_head_url(&u->head, at, len);
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct upstream *u = p->data;
    return proxy_head_field(&u->head, at, len);
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct upstream *u = p->data;
    for (size_t i = 0; i < len; i++)
        if (at[i] == '\0' || at[i] == '\r' || at[i] == '\n')
            return -1;
    return proxy_head_value(&u->head, at, len);
}

static int on_headers_complete(llhttp_t *p)
{
    struct upstream *u = p->data;
    struct proxy_conn *c = u->client;
    int status = p->status_code;
    if (status >= 100 && status < 200) {
        /* Interim answers (100 Continue, 102, 103) stay between certmapd and the
         * backend: certmapd answers Expect itself. 101 would switch protocols. */
        if (status == 101)
            return -1;
        u->skip = true;
        return 0;
    }
    struct proxy_req *r = &c->req;
    r->status = status;
    bool bodyless = r->head_method || status == 204 || status == 304;
    bool client_11 = r->http_major == 1 && r->http_minor >= 1;
    char cl[32];
    const char *content_length = NULL;
    bool keep_alive = r->keep_alive && !u->w->draining;

    u->chunked_out = false;
    u->close_delimited = false;
    if ((p->flags & F_CONTENT_LENGTH) && !(p->flags & F_CHUNKED)) {
        snprintf(cl, sizeof cl, "%llu", (unsigned long long)p->content_length);
        content_length = cl;
    } else if (!bodyless) {
        /* Chunked or delimited by the close: re-chunked for an HTTP/1.1 client,
         * close-delimited for an HTTP/1.0 one. */
        u->close_delimited = !(p->flags & F_CHUNKED);
        if (client_11)
            u->chunked_out = true;
        else
            keep_alive = false;
    }
    if (!keep_alive)
        r->keep_alive = false;
    struct evbuffer *head = evbuffer_new();
    if (head == NULL)
        return -1;
    proxy_http_response_head(&u->head, status, u->chunked_out, keep_alive, content_length, head);
    u->resp_started = true;
    proxy_conn_response_head(c, head);
    evbuffer_free(head);
    proxy_head_purge(&u->head);
    return r->head_method ? 1 : 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct upstream *u = p->data;
    if (u->skip || len == 0)
        return 0; /* an empty piece, re-chunked, would end the body early */
    u->body_out += len;
    proxy_conn_response_body(u->client, at, len, u->chunked_out);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct upstream *u = p->data;
    if (u->skip) {
        u->skip = false;
        proxy_head_reset(&u->head, RESPONSE_HEAD_LIMIT);
        return 0;
    }
    if (u->chunked_out)
        proxy_conn_response_body(u->client, NULL, 0, true);
    u->resp_done = true;
    return HPE_PAUSED; /* anything after the response is not ours to read */
}

static const llhttp_settings_t response_settings = {
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- active connections ------------------------------------------------------- */

static void up_free(struct upstream *u)
{
    proxy_head_purge(&u->head);
    if (u->bev != NULL)
        bufferevent_free(u->bev);
    free(u);
}

/* Ends the exchange in progress. Never touches <u> after handing over. */
static void up_fail(struct upstream *u, enum reason r)
{
    struct proxy_conn *c = u->client;
    u->failed = true;
    proxy_conn_upstream_failed(c, r);
}

static void up_read_cb(struct bufferevent *bev, void *arg)
{
    struct upstream *u = arg;
    struct proxy_conn *c = u->client;
    struct evbuffer *in = bufferevent_get_input(bev);
    for (;;) {
        if (proxy_conn_output_full(c)) {
            /* Resumed by the client's write callback once it drained. */
            bufferevent_disable(bev, EV_READ);
            return;
        }
        struct evbuffer_iovec v = {.iov_base = NULL, .iov_len = 0};
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
            return;
        enum llhttp_errno err = llhttp_execute(&u->parser, v.iov_base, v.iov_len);
        size_t used = v.iov_len;
        if (err != HPE_OK)
            used = (size_t)(llhttp_get_error_pos(&u->parser) - (const char *)v.iov_base);
        evbuffer_drain(in, used);
        if (err == HPE_OK)
            continue;
        if (err == HPE_PAUSED && u->resp_done) {
            bool reusable = llhttp_should_keep_alive(&u->parser) && evbuffer_get_length(in) == 0;
            proxy_conn_response_done(c, reusable); /* may free u */
            return;
        }
        log_info("backend sent an invalid response: %s (%s)", llhttp_errno_name(err),
                 llhttp_get_error_reason(&u->parser));
        up_fail(u, R_BACKEND_UNAVAILABLE);
        return;
    }
}

/* Direct mode (see upstream_flush): EV_WRITE goes off again once the output is written. */
static void direct_mode(struct upstream *u)
{
    if (u->direct && u->connected && evbuffer_get_length(bufferevent_get_output(u->bev)) == 0)
        bufferevent_disable(u->bev, EV_WRITE);
}

void upstream_flush(struct upstream *u)
{
    struct evbuffer *out = bufferevent_get_output(u->bev);
    if (!u->direct || !u->connected || (bufferevent_get_enabled(u->bev) & EV_WRITE) ||
        evbuffer_get_length(out) == 0)
        return; /* libevent writes: TLS, still connecting, or a write already waits */
    /* Errors are not handled here: the bytes stay, and libevent's own write
     * meets the same error and reports it through up_event_cb. */
    evbuffer_unfreeze(out, 1); /* a bufferevent's output is drained by libevent only */
    (void)evbuffer_write(out, bufferevent_getfd(u->bev));
    evbuffer_freeze(out, 1);
    if (evbuffer_get_length(out) > 0)
        bufferevent_enable(u->bev, EV_WRITE);
}

static void up_write_cb(struct bufferevent *bev, void *arg)
{
    struct upstream *u = arg;
    direct_mode(u);
    if (u->client != NULL)
        proxy_conn_upstream_writable(u->client);
}

static bool up_dial_next(struct upstream *u, enum upstream_outcome how, const char *why);

static void up_event_cb(struct bufferevent *bev, short events, void *arg)
{
    struct upstream *u = arg;
    if (events & BEV_EVENT_CONNECTED) {
        u->connected = true;
        upstream_trail_add(u->trail, u->addr_idx, UP_USED);
        /* The connect timeout was a write timeout; from now on only reads are timed. */
        struct timeval rd = proxy_tv_ms(u->w->conf->backend_read_timeout_ms);
        bufferevent_set_timeouts(bev, &rd, NULL);
        int one = 1;
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        direct_mode(u);
        return;
    }
    if (!u->connected) {
        /* Nothing was sent yet: the next address of the backend may answer. */
        unsigned long e = bufferevent_get_openssl_error(bev);
        bool timeout = (events & BEV_EVENT_TIMEOUT) != 0;
        const char *why = timeout ? "connection timed out"
                          : e     ? tls_error_text(e)
                                  : evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR());
        if (up_dial_next(u, timeout ? UP_TIMEOUT : UP_ERROR, why))
            return;
        up_fail(u, timeout ? R_BACKEND_TIMEOUT : R_BACKEND_UNAVAILABLE);
        return;
    }
    if (events & BEV_EVENT_TIMEOUT) {
        log_info("backend %s: response timed out", u->w->backend->text[u->addr_idx]);
        up_fail(u, R_BACKEND_TIMEOUT);
        return;
    }
    if ((events & BEV_EVENT_EOF) && u->close_delimited && u->resp_started) {
        /* The close is the end of this response. */
        llhttp_finish(&u->parser);
        if (u->resp_done) {
            proxy_conn_response_done(u->client, false);
            return;
        }
    }
    if (!u->reused || u->resp_started)
        log_info("backend %s closed the connection before the response was complete",
                 u->w->backend->text[u->addr_idx]);
    up_fail(u, R_BACKEND_UNAVAILABLE);
}

/* A new, unconnected bufferevent for <w>'s backend, plain or TLS; NULL on
 * allocation failure. */
static struct bufferevent *up_bev_new(struct worker *w)
{
    int opts = BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS;
    if (w->backend_tls == NULL)
        return bufferevent_socket_new(w->base, -1, opts);
    SSL *ssl = tls_client_conn_new(w->backend_tls);
    if (ssl == NULL)
        return NULL;
    struct bufferevent *bev =
        bufferevent_openssl_socket_new(w->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING, opts);
    if (bev == NULL) {
        tls_conn_free(ssl);
        return NULL;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

/* Starts connecting <u> to backend address <idx> on a new bufferevent, which
 * takes over what was queued on the old one (nothing of it was sent: the old
 * one never connected). Returns 0, or -1 when it could not even start. */
static int up_dial(struct upstream *u, unsigned idx)
{
    struct worker *w = u->w;
    const struct backend_addr *ba = w->backend;
    struct bufferevent *bev = up_bev_new(w);
    if (bev == NULL) {
        log_warn("backend %s: out of memory for a connection", ba->text[idx]);
        return -1;
    }
    struct timeval ct = proxy_tv_ms(w->conf->backend_connect_timeout_ms);
    bufferevent_set_timeouts(bev, NULL, &ct);
    /* Connection refusals surface as an event, not here, except for local errors. */
    if (bufferevent_socket_connect(bev, (const struct sockaddr *)&ba->addr[idx], (int)ba->len[idx]) <
        0) {
        log_info("backend %s: cannot connect: %s", ba->text[idx],
                 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        bufferevent_free(bev);
        return -1;
    }
    if (u->bev != NULL) {
        struct evbuffer *old = bufferevent_get_output(u->bev);
        evbuffer_unfreeze(old, 1); /* a bufferevent's output is drained by libevent only */
        evbuffer_add_buffer(bufferevent_get_output(bev), old);
        bufferevent_free(u->bev);
        bufferevent_setcb(bev, up_read_cb, up_write_cb, up_event_cb, u);
        bufferevent_setwatermark(bev, EV_WRITE, UP_LOW_MARK, 0);
        bufferevent_enable(bev, EV_READ | EV_WRITE);
    }
    u->bev = bev;
    u->addr_idx = idx;
    return 0;
}

/* The connection to the current address failed before anything was sent
 * (<how>, <why>): records it and dials the next address that can be dialled.
 * false when none is left, after saying which addresses were tried. */
static bool up_dial_next(struct upstream *u, enum upstream_outcome how, const char *why)
{
    const struct backend_addr *ba = u->w->backend;
    unsigned idx = u->addr_idx;
    upstream_trail_add(u->trail, idx, how);
    while (idx + 1 < ba->n) {
        log_info("backend %s: %s; trying %s", ba->text[idx], why, ba->text[idx + 1]);
        idx++;
        if (up_dial(u, idx) == 0)
            return true;
        upstream_trail_add(u->trail, idx, UP_ERROR);
        why = "cannot connect";
    }
    log_info("backend %s: %s; %s", ba->text[idx], why,
             ba->n > 1 ? "no other address of the backend to try" : "the backend has no other address");
    return false;
}

static struct upstream *up_connect(struct worker *w, struct upstream_trail *trail)
{
    struct upstream *u = calloc(1, sizeof *u);
    if (u == NULL)
        return NULL;
    u->w = w;
    u->trail = trail;
    u->direct = w->backend_tls == NULL;
    for (unsigned idx = 0; idx < w->backend->n; idx++) {
        if (up_dial(u, idx) == 0)
            return u;
        upstream_trail_add(trail, idx, UP_ERROR);
    }
    up_free(u);
    return NULL;
}

struct upstream *upstream_acquire(struct worker *w, struct proxy_conn *c,
                                  struct upstream_trail *trail)
{
    struct upstream *u = TAILQ_FIRST(&w->pool);
    if (u != NULL) {
        TAILQ_REMOVE(&w->pool, u, link);
        w->pool_size--;
        u->reused = true;
        u->trail = trail;
        upstream_trail_add(trail, u->addr_idx, UP_USED);
    } else {
        u = up_connect(w, trail);
        if (u == NULL)
            return NULL;
        u->reused = false;
    }
    u->client = c;
    u->resp_started = u->resp_done = u->skip = u->failed = false;
    u->chunked_out = u->close_delimited = false;
    u->body_out = 0;
    llhttp_init(&u->parser, HTTP_RESPONSE, &response_settings);
    u->parser.data = u;
    proxy_head_reset(&u->head, RESPONSE_HEAD_LIMIT);
    bufferevent_setcb(u->bev, up_read_cb, up_write_cb, up_event_cb, u);
    bufferevent_setwatermark(u->bev, EV_WRITE, UP_LOW_MARK, 0);
    if (u->connected) {
        struct timeval rd = proxy_tv_ms(w->conf->backend_read_timeout_ms);
        bufferevent_set_timeouts(u->bev, &rd, NULL);
    }
    /* Until connected, libevent writes (the request waits for the connection). */
    bufferevent_enable(u->bev, u->direct && u->connected ? EV_READ : EV_READ | EV_WRITE);
    return u;
}

/* ---- the idle pool ---------------------------------------------------------------- */

static void pool_remove(struct upstream *u)
{
    TAILQ_REMOVE(&u->w->pool, u, link);
    u->w->pool_size--;
    up_free(u);
}

static void idle_read_cb(struct bufferevent *bev, void *arg)
{
    /* An idle backend connection has nothing to say: whatever it sends is a
     * protocol error (or a stray late response), and the connection is unusable. */
    pool_remove(arg);
}

static void idle_event_cb(struct bufferevent *bev, short events, void *arg)
{
    pool_remove(arg);
}

void upstream_release(struct upstream *u, bool reusable)
{
    struct worker *w = u->w;
    u->client = NULL;
    u->trail = NULL;
    if (!reusable || u->failed || !u->connected || w->draining ||
        w->pool_size >= w->conf->keepalive_connections ||
        evbuffer_get_length(bufferevent_get_output(u->bev)) > 0) {
        up_free(u);
        return;
    }
    proxy_head_purge(&u->head);
    bufferevent_setcb(u->bev, idle_read_cb, NULL, idle_event_cb, u);
    struct timeval idle = proxy_tv_ms(POOL_IDLE_MS);
    bufferevent_set_timeouts(u->bev, &idle, NULL);
    bufferevent_enable(u->bev, EV_READ);
    /* Most recently used first: it is the least likely to have been closed. */
    TAILQ_INSERT_HEAD(&w->pool, u, link);
    w->pool_size++;
}

void upstream_pool_purge(struct worker *w)
{
    struct upstream *u;
    while ((u = TAILQ_FIRST(&w->pool)) != NULL)
        pool_remove(u);
}
