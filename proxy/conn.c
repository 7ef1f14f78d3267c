/* Client connections: TLS handshake, request parsing with llhttp, the
 * certificate policy per request, and the request/response state machine.
 *
 * One request is in progress per connection at a time: the parser pauses when
 * a request is complete and resumes when its response is done, so pipelined
 * requests are answered in order. A connection owns its upstream connection
 * for the duration of a request; proxy_conn_close() tears down both. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/bufferevent_struct.h> /* ev_write, for conn_write_soon() */
#include <event2/event.h>

#include "common/log.h"
#include "proxy/proxy.h"
#include "tls/tls.h"

/* Above this many bytes queued towards one side, stop reading the other. */
#define OUT_HIGH (256 * 1024)
/* Most a client may have read ahead of the parser (pipelined requests). */
#define IN_HIGH (64 * 1024)

static void conn_feed(struct proxy_conn *c);
static void conn_refuse(struct proxy_conn *c, enum reason r);
static void conn_read_soon(struct proxy_conn *c);

static void timer_arm(struct proxy_conn *c, uint64_t ms)
{
    struct timeval tv = proxy_tv_ms(ms);
    evtimer_add(c->timer, &tv);
}

static void req_reset(struct proxy_conn *c)
{
    struct proxy_req *r = &c->req;
    struct proxy_head head = r->head; /* keeps its buffers for reuse */
    if (r->upstream_head != NULL)
        evbuffer_free(r->upstream_head);
    if (r->readahead != NULL)
        evbuffer_free(r->readahead);
    map_result_purge(&r->ident);
    memset(r, 0, sizeof *r);
    r->head = head;
    proxy_head_reset(&r->head, c->w->conf->max_request_head);
}

static void conn_free(struct proxy_conn *c)
{
    struct worker *w = c->w;
    if (c->up != NULL) {
        upstream_release(c->up, false);
        c->up = NULL;
    }
    if (c->map_job != NULL)
        map_job_cancel(c->map_job); /* the lookup still completes and is cached */
    if (c->state == CS_BODY || c->state == CS_WAIT || c->state == CS_READAHEAD ||
        c->state == CS_LATE || c->state == CS_MAP) {
        /* The client went away mid-request: log it, as nginx's 499 does. */
        c->req.status = 499;
        accesslog_write(w->alog, c, &c->req);
    }
    if (c->req.upstream_head != NULL)
        evbuffer_free(c->req.upstream_head);
    if (c->req.readahead != NULL)
        evbuffer_free(c->req.readahead);
    map_result_purge(&c->req.ident);
    proxy_head_purge(&c->req.head);
    tls_facts_free(c->facts);
    if (c->timer != NULL)
        event_free(c->timer);
    if (c->late_ev != NULL)
        event_free(c->late_ev);
    if (c->bev != NULL)
        bufferevent_free(c->bev);
    TAILQ_REMOVE(&w->conns, c, link);
    w->n_conns--;
    free(c);
    proxy_worker_conn_gone(w);
}

void proxy_conn_close(struct proxy_conn *c)
{
    if (c->in_feed) {
        c->dead = true; /* conn_feed frees it once its stack unwinds */
        return;
    }
    conn_free(c);
}

bool proxy_conn_output_full(const struct proxy_conn *c)
{
    return evbuffer_get_length(bufferevent_get_output(c->bev)) > OUT_HIGH;
}

/* Stops after flushing what is queued for the client. */
/* A lingering close: once the last answer is out, close_notify and a TCP
 * half-close; then what the client still sends (the rest of a refused upload)
 * is read and dropped for a short while, so that its unread bytes do not turn
 * into a reset that destroys the answer before the client has read it. */
#define LINGER_MS 2000

static void conn_linger(struct proxy_conn *c)
{
    if (c->lingering)
        return;
    c->lingering = true;
    tls_conn_close_notify(bufferevent_openssl_get_ssl(c->bev));
    shutdown(bufferevent_getfd(c->bev), SHUT_WR);
    timer_arm(c, LINGER_MS);
}

static void conn_close_after_flush(struct proxy_conn *c)
{
    c->state = CS_CLOSING;
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        conn_linger(c);
    else
        timer_arm(c, 10000); /* a client that never reads its answer is dropped */
}

/* Answers the current request with the error for <r> and closes. */
static void conn_refuse(struct proxy_conn *c, enum reason r)
{
    struct proxy_req *req = &c->req;
    if (c->up != NULL) {
        upstream_release(c->up, false);
        c->up = NULL;
    }
    req->reason = r;
    req->status = reason_status(r);
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t before = evbuffer_get_length(out);
    proxy_http_error(out, r, c->w->conf->detailed_errors, req->head_method);
    req->bytes_out += evbuffer_get_length(out) - before;
    accesslog_write(c->w->alog, c, req);
    conn_close_after_flush(c); /* CS_CLOSING: conn_free will not log it again */
}

/* ---- llhttp callbacks ---------------------------------------------------- */

static int on_message_begin(llhttp_t *p)
{
    struct proxy_conn *c = p->data;
    req_reset(c);
    proxy_now(&c->req.t_start);
    c->state = CS_HEAD;
    c->head_bytes = 0;
    timer_arm(c, c->w->conf->header_timeout_ms);
    return 0;
}

static int head_fail(struct proxy_conn *c, enum reason r)
{
    c->req.reason = r;
    return -1;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct proxy_conn *c = p->data;
    return proxy_head_url(&c->req.head, at, len) < 0 ? head_fail(c, R_HEAD_TOO_LARGE) : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct proxy_conn *c = p->data;
    return proxy_head_field(&c->req.head, at, len) < 0 ? head_fail(c, R_HEAD_TOO_LARGE) : 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct proxy_conn *c = p->data;
    /* llhttp accepts obs-fold and hands the continuation line over as a second
     * piece of the value, starting at its leading whitespace: a piece right after
     * a line feed is one. Folding is refused (RFC 9112 5.2 lets a server answer it with 400). */
    const char *b = at;
    while (b > c->feed_start && (b[-1] == ' ' || b[-1] == '\t'))
        b--; /* after an empty first line, the piece starts past the fold's whitespace */
    char before = b > c->feed_start ? b[-1] : c->feed_prev;
    if (before == '\n')
        return head_fail(c, R_BAD_REQUEST);
    /* NUL, bare CR or LF inside a value: never forwarded, whatever the parser allows. */
    for (size_t i = 0; i < len; i++)
        if (at[i] == '\0' || at[i] == '\r' || at[i] == '\n')
            return head_fail(c, R_BAD_REQUEST);
    return proxy_head_value(&c->req.head, at, len) < 0 ? head_fail(c, R_HEAD_TOO_LARGE) : 0;
}

static bool header_value_is(const struct proxy_head *hd, size_t i, const char *v)
{
    size_t n = strlen(v);
    return hd->h[i].val_len == n && strncasecmp(hd->buf + hd->h[i].val_off, v, n) == 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct proxy_conn *c = p->data;
    struct proxy_req *r = &c->req;
    r->method = llhttp_get_method(p);
    r->http_major = llhttp_get_http_major(p);
    r->http_minor = llhttp_get_http_minor(p);
    r->keep_alive = llhttp_should_keep_alive(p);
    r->chunked = (p->flags & F_CHUNKED) != 0;
    r->has_body = r->chunked || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
    r->head_method = r->method == HTTP_HEAD;
    r->idempotent = r->method == HTTP_GET || r->method == HTTP_HEAD || r->method == HTTP_OPTIONS ||
                    r->method == HTTP_PUT || r->method == HTTP_DELETE;
    for (size_t i = 0; i < r->head.n; i++)
        if (proxy_head_name_is(&r->head, i, "expect") &&
            header_value_is(&r->head, i, "100-continue"))
            r->expect_continue = true;
    return HPE_PAUSED; /* decided in conn_proceed, outside the parser */
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct proxy_conn *c = p->data;
    /* llhttp may report an empty piece; re-chunked, it would end the body early. */
    if (len == 0)
        return 0;
    if (c->state == CS_READAHEAD) {
        /* IIS's uploadReadAheadSize: the body waits in memory for the certificate. */
        struct evbuffer *ra = c->req.readahead;
        if (evbuffer_get_length(ra) + len > c->w->conf->upload_read_ahead_size)
            return head_fail(c, R_READ_AHEAD_EXCEEDED);
        evbuffer_add(ra, at, len);
        return 0;
    }
    if (c->up == NULL)
        return 0;
    proxy_http_body(bufferevent_get_output(c->up->bev), at, len, c->req.chunked);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct proxy_conn *c = p->data;
    c->req.body_done = true;
    if (c->up != NULL && c->req.chunked)
        evbuffer_add(bufferevent_get_output(c->up->bev), "0\r\n\r\n", 5);
    if (c->state == CS_BODY) {
        c->state = CS_WAIT;
        evtimer_del(c->timer); /* a long poll may wait; the backend's read_timeout bounds it */
    }
    return HPE_PAUSED; /* nothing more is parsed until this response is done */
}

static const llhttp_settings_t request_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- from a complete head to the backend --------------------------------------
 *
 * conn_proceed() takes a request through what it needs before it may reach the
 * backend: the location's policy, a certificate (asked late if the handshake
 * did not ask), the mapping to an account, then conn_forward(). A step that
 * waits (read-ahead, the client's certificate, the directory) returns with the
 * parser paused, and its completion calls conn_proceed() again. */

static void conn_proceed(struct proxy_conn *c);

static void parser_resume(struct proxy_conn *c)
{
    llhttp_resume(&c->parser);
    c->parser_paused = false;
}

/* Continues <c> after an asynchronous step, outside any parser callback. */
static void conn_continue(struct proxy_conn *c)
{
    c->in_feed = true;
    conn_proceed(c);
    c->in_feed = false;
    if (c->dead)
        conn_free(c);
    else if (!c->parser_paused && c->state != CS_CLOSING)
        conn_feed(c);
}

/* Sends the request on: head, any body held in the read-ahead buffer, then
 * the rest of the body as it arrives. */
static void conn_forward(struct proxy_conn *c)
{
    struct proxy_req *r = &c->req;
    if (r->readahead != NULL) {
        /* The whole body is in memory: sent with its length, not re-chunked. */
        r->chunked = false;
        r->content_length = evbuffer_get_length(r->readahead);
        r->has_body = r->content_length > 0;
    }
    struct evbuffer *head = evbuffer_new();
    if (head == NULL) {
        proxy_conn_close(c);
        return;
    }
    proxy_http_request_head(c, head);
    c->up = upstream_acquire(c->w, c, &r->trail);
    if (c->up == NULL) {
        evbuffer_free(head);
        conn_refuse(c, R_BACKEND_UNAVAILABLE);
        return;
    }
    proxy_now(&r->t_upstream);
    if (r->idempotent && !r->has_body) {
        /* Kept until the response starts: a pooled connection that the backend
         * had closed gets this request once more on a new connection. */
        bufferevent_write(c->up->bev, evbuffer_pullup(head, -1), evbuffer_get_length(head));
        r->upstream_head = head;
    } else {
        bufferevent_write_buffer(c->up->bev, head);
        evbuffer_free(head);
    }
    if (r->readahead != NULL) {
        bufferevent_write_buffer(c->up->bev, r->readahead);
        evbuffer_free(r->readahead);
        r->readahead = NULL;
    }
    upstream_flush(c->up);
    if (r->body_done) {
        /* Read ahead whole: the parser stays paused at the message's end. */
        c->state = CS_WAIT;
        evtimer_del(c->timer);
        return;
    }
    if (r->has_body && r->expect_continue)
        evbuffer_add(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n", 25);
    c->state = CS_BODY;
    timer_arm(c, c->w->conf->body_timeout_ms); /* body progress */
    parser_resume(c);
}

/* The location's policy: certificate mode and whether to map. 0, or -1 when
 * the request was refused (its target cannot be judged safely). */
static int conn_policy(struct proxy_conn *c)
{
    struct proxy_req *r = &c->req;
    const struct conf *cf = c->w->conf;
    if (r->method == HTTP_CONNECT) {
        conn_refuse(c, R_BAD_REQUEST);
        return -1;
    }
    char *path = proxy_http_policy_path(r->head.buf + r->head.url_off, r->head.url_len);
    if (path == NULL) {
        conn_refuse(c, R_BAD_REQUEST);
        return -1;
    }
    const struct conf_location *loc = conf_location_for(cf, path, strlen(path));
    free(path);
    r->cert_mode = loc != NULL ? loc->client_certificate : cf->cert_mode;
    r->want_mapping = c->w->mapper != NULL && r->cert_mode != CERT_IGNORE &&
                      (loc == NULL || loc->mapping);
    if (!r->chunked && r->has_body)
        r->content_length = c->parser.content_length;
    r->policy_done = true;
    return 0;
}

static void late_answered(void *arg)
{
    /* Inside OpenSSL's read: only schedule the work. */
    struct proxy_conn *c = arg;
    event_active(c->late_ev, 0, 0);
}

/* Judges the certificate the client sent in a handshake that just ended (the
 * first, or a late one), which then holds for the connection; frees the
 * intermediates, which nothing needs afterwards; and has libevent read what
 * the client sent right behind its handshake. Returns what a log line says of
 * the certificate: its subject, the refusal, or <none>. */
static const char *conn_judge_certificate(struct proxy_conn *c, SSL *ssl, const char *none)
{
    tls_facts_free(c->facts);
    c->facts = NULL;
    c->cert_reason = tls_conn_verdict(c->w->tls, ssl, CERT_ACCEPT, &c->facts);
    tls_conn_drop_chain(ssl);
    conn_read_soon(c);
    return c->facts ? c->facts->subject : c->cert_reason ? reason_name(c->cert_reason) : none;
}

static void conn_late_cb(evutil_socket_t fd, short what, void *arg)
{
    struct proxy_conn *c = arg;
    const char *cert = conn_judge_certificate(c, bufferevent_openssl_get_ssl(c->bev), "none sent");
    log_debug("%s: late certificate: %s", c->peer, cert);
    conn_continue(c);
}

/* Asks the client for a certificate now. Returns true while waiting for it. */
static bool conn_ask_late(struct proxy_conn *c)
{
    struct proxy_req *r = &c->req;
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
    r->late_asked = true;
    if (c->late_ev == NULL) {
        c->late_ev = event_new(c->w->base, -1, 0, conn_late_cb, c);
        if (c->late_ev == NULL)
            return false;
    }
    switch (tls_conn_request_cert(c->w->tls, ssl, late_answered, c)) {
    case TLS_LATE_RENEGOTIATE:
    case TLS_LATE_PHA:
        c->state = CS_LATE;
        timer_arm(c, c->w->conf->header_timeout_ms);
        return true;
    case TLS_LATE_NO_PHA:
        log_info("%s: a client certificate is needed, but this TLS 1.3 client did not offer "
                 "post-handshake authentication (negotiate_at_handshake = yes asks for it in "
                 "the handshake)",
                 c->peer);
        return false;
    case TLS_LATE_ASKED_ALREADY:
        return false;
    case TLS_LATE_FAILED:
        log_info("%s: could not ask for a client certificate late", c->peer);
        return false;
    }
    return false;
}

/* The connection ends while its request waits for a late certificate: no
 * answer can reach the client (OpenSSL has failed the connection, or gave up
 * waiting), but the request is logged, once, with the verdict: cert_required,
 * with 499 when the client closed the connection itself, 403 otherwise. */
static void conn_late_lost(struct proxy_conn *c, int status)
{
    c->req.status = status;
    c->req.reason = R_CERT_REQUIRED;
    accesslog_write(c->w->alog, c, &c->req);
    c->state = CS_CLOSING; /* logged: conn_free must not log it again */
    proxy_conn_close(c);
}

/* libevent reported the end of a connection in CS_LATE (<events>). */
static void conn_late_failed(struct proxy_conn *c, short events)
{
    unsigned long e = bufferevent_get_openssl_error(c->bev);
    int status = reason_status(R_CERT_REQUIRED);
    switch (tls_late_failure(e, (events & BEV_EVENT_EOF) != 0)) {
    case TLS_LATE_NO_RENEGOTIATION:
        log_info("%s: a client certificate is needed, but this TLS 1.2 client refused "
                 "renegotiation (no_renegotiation alert); negotiate_at_handshake = yes asks "
                 "for it in the handshake",
                 c->peer);
        break;
    case TLS_LATE_CLOSED:
        log_info("%s: the client closed the connection instead of answering the request for a "
                 "client certificate",
                 c->peer);
        status = 499; /* gone, as any client that leaves mid-request */
        break;
    case TLS_LATE_BROKEN:
        log_info("%s: the client's answer to the request for a client certificate failed: %s",
                 c->peer, tls_error_text(e));
        break;
    }
    conn_late_lost(c, status);
}

static void map_done(void *arg, const struct map_result *res)
{
    struct proxy_conn *c = arg;
    struct proxy_req *r = &c->req;
    c->map_job = NULL;
    if (map_result_copy(&r->ident, res) < 0) {
        map_result_purge(&r->ident);
        r->ident.reason = R_DIRECTORY_UNAVAILABLE; /* out of memory: fail closed */
    }
    r->map_done = true;
    conn_continue(c);
}

static void conn_proceed(struct proxy_conn *c)
{
    struct proxy_req *r = &c->req;
    if (!r->policy_done && conn_policy(c) < 0)
        return;

    if (r->cert_mode != CERT_IGNORE) {
        if (c->cert_reason != R_NONE) {
            conn_refuse(c, c->cert_reason); /* a certificate was sent and is not acceptable */
            return;
        }
        if (c->facts == NULL && !r->late_asked &&
            !tls_conn_cert_asked(c->w->tls, bufferevent_openssl_get_ssl(c->bev))) {
            if (r->has_body && !r->expect_continue && !r->body_done) {
                /* The body first, into the read-ahead buffer: no application data
                 * may be in flight while TLS 1.2 renegotiates. Known too long: 413. */
                if (!r->chunked && r->content_length > c->w->conf->upload_read_ahead_size) {
                    conn_refuse(c, R_READ_AHEAD_EXCEEDED);
                    return;
                }
                r->readahead = evbuffer_new();
                if (r->readahead == NULL) {
                    proxy_conn_close(c);
                    return;
                }
                c->state = CS_READAHEAD;
                timer_arm(c, c->w->conf->body_timeout_ms);
                parser_resume(c);
                return;
            }
            if (conn_ask_late(c))
                return;
        }
        if (c->facts == NULL && r->cert_mode == CERT_REQUIRE) {
            conn_refuse(c, R_CERT_REQUIRED);
            return;
        }
    }

    if (r->want_mapping && c->facts != NULL && !r->map_done) {
        c->state = CS_MAP;
        evtimer_del(c->timer); /* the directory's own timeout bounds the wait */
        c->map_job = map_job_start(c->w->mapper, c->facts, map_done, c, NULL, &r->ident);
        if (c->map_job != NULL)
            return;
        r->map_done = true; /* answered from the cache */
    }
    if (r->map_done && r->ident.reason != R_NONE) {
        conn_refuse(c, r->ident.reason);
        return;
    }
    conn_forward(c);
}

/* Re-sends the kept request head on a new upstream connection, once. */
static bool conn_retry(struct proxy_conn *c)
{
    struct proxy_req *r = &c->req;
    if (r->upstream_head == NULL || r->retried || c->up == NULL || !c->up->reused ||
        c->up->resp_started)
        return false;
    r->retried = true;
    if (r->trail.n > 0)
        r->trail.how[r->trail.n - 1] = UP_STALE;
    upstream_release(c->up, false);
    c->up = NULL;
    upstream_pool_purge(c->w); /* its siblings are likely as stale */
    c->up = upstream_acquire(c->w, c, &r->trail);
    if (c->up == NULL)
        return false;
    bufferevent_write(c->up->bev, evbuffer_pullup(r->upstream_head, -1),
                      evbuffer_get_length(r->upstream_head));
    upstream_flush(c->up);
    log_debug("%s: retrying %s on a new backend connection", c->peer,
              llhttp_method_name((llhttp_method_t)r->method));
    return true;
}

/* ---- feeding the parser ----------------------------------------------------- */

/* With read-ahead (tls/ctx.c), OpenSSL may hold bytes it read from the socket
 * but not yet decrypted: SSL_has_pending(), invisible to epoll. libevent 2.1's
 * OpenSSL bufferevent reads only when epoll reports the socket readable, so
 * wherever it stopped reading with bytes held (the handshake ended with the
 * client's first request right behind its Finished; reading was disabled or
 * suspended at the input high-water mark; a late certificate's handshake),
 * its read event is made active so that it reads them now. Reading still
 * honours EV_READ and the watermark: if either holds, nothing happens. */
static void conn_read_soon(struct proxy_conn *c)
{
    if (!c->dead && SSL_has_pending(bufferevent_openssl_get_ssl(c->bev)))
        event_active(&c->bev->ev_read, EV_READ, 1);
}

static void conn_after_pause(struct proxy_conn *c)
{
    /* Paused at the end of a head, or at the end of a body held in the
     * read-ahead buffer: the request goes on. Paused at the end of a body being
     * forwarded: it stays paused until the response is done. */
    if (c->state == CS_HEAD || c->state == CS_READAHEAD)
        conn_proceed(c);
}

static void conn_feed(struct proxy_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    bool kick = true; /* run the parser even without input: it may owe a callback */
    c->in_feed = true;
    while (!c->dead && !c->parser_paused && !c->read_blocked && c->state != CS_CLOSING) {
        if (c->up != NULL)
            upstream_flush(c->up); /* what the last pass forwarded */
        if (c->up != NULL && evbuffer_get_length(bufferevent_get_output(c->up->bev)) > OUT_HIGH) {
            c->read_blocked = true; /* resumed by proxy_conn_upstream_writable() */
            bufferevent_disable(c->bev, EV_READ);
            break;
        }
        struct evbuffer_iovec v = {.iov_base = NULL, .iov_len = 0};
        evbuffer_peek(in, -1, NULL, &v, 1);
        if (v.iov_len == 0 && !kick)
            break;
        kick = false;
        const char *data = v.iov_len ? v.iov_base : "";
        c->feed_start = data;
        enum llhttp_errno err = llhttp_execute(&c->parser, data, v.iov_len);
        size_t used = v.iov_len;
        if (err != HPE_OK)
            used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
        if (used > v.iov_len)
            used = v.iov_len;
        for (size_t i = used; i > 0; i--) {
            if (data[i - 1] != ' ' && data[i - 1] != '\t') {
                c->feed_prev = data[i - 1]; /* last byte before any trailing whitespace */
                break;
            }
        }
        if (c->state == CS_HEAD || c->state == CS_IDLE) {
            c->head_bytes += (uint32_t)used;
            if (c->head_bytes > c->w->conf->max_request_head) {
                conn_refuse(c, R_HEAD_TOO_LARGE);
                break;
            }
        } else if ((c->state == CS_BODY || c->state == CS_READAHEAD) && used > 0) {
            timer_arm(c, c->w->conf->body_timeout_ms);
        }
        c->req.bytes_in += used;
        evbuffer_drain(in, used);
        if (err == HPE_OK)
            continue;
        if (err == HPE_PAUSED) {
            c->parser_paused = true;
            conn_after_pause(c);
            kick = true;
            continue;
        }
        if (err == HPE_PAUSED_UPGRADE) {
            /* Upgrade is never forwarded (hop-by-hop): carry on as plain HTTP. */
            llhttp_resume_after_upgrade(&c->parser);
            kick = true;
            continue;
        }
        enum reason why = c->req.reason != R_NONE ? c->req.reason : R_BAD_REQUEST;
        log_debug("%s: bad request: %s (%s)", c->peer, llhttp_errno_name(err),
                  llhttp_get_error_reason(&c->parser));
        if (c->state == CS_BODY || c->state == CS_WAIT) {
            /* Head already forwarded: the backend must not see the rest. */
            if (c->up != NULL) {
                upstream_release(c->up, false);
                c->up = NULL;
            }
        }
        conn_refuse(c, why);
        break;
    }
    c->in_feed = false;
    if (!c->dead && c->up != NULL)
        upstream_flush(c->up);
    if (c->dead)
        conn_free(c);
    else
        conn_read_soon(c); /* input drained below the watermark: what OpenSSL holds */
}

/* ---- upstream events --------------------------------------------------------- */

/* libevent 2.1's OpenSSL bufferevent writes only once epoll reports the socket
 * writable: per response an epoll_ctl to add EPOLLOUT, a loop turn, and another
 * epoll_ctl to remove it. A client socket is nearly always writable, so the
 * bufferevent's own write event is made active instead: libevent's write path
 * (SSL_write, its retry state, the write callback) runs later in this loop
 * turn, after everything this turn adds, and the EPOLLOUT add and remove
 * cancel out in the change list (worker.c). If the socket is full, SSL_write
 * says so and the event simply stays, as before. Not during a handshake,
 * where the same event drives SSL_do_handshake. (struct bufferevent's fields
 * are public in bufferevent_struct.h; ev_write is the only one used.) */
static void conn_write_soon(struct proxy_conn *c)
{
    if (c->state == CS_HANDSHAKE || c->state == CS_LATE)
        return;
    event_active(&c->bev->ev_write, EV_WRITE, 1);
}

void proxy_conn_response_head(struct proxy_conn *c, struct evbuffer *head)
{
    proxy_now(&c->req.t_upstream_done);
    size_t len = evbuffer_get_length(head);
    c->req.bytes_out += len;
    /* Copied, not moved: the body that follows then shares its buffer chain,
     * and head and body leave in one TLS record and one write(2). */
    bufferevent_write(c->bev, evbuffer_pullup(head, (ev_ssize_t)len), len);
    conn_write_soon(c);
    if (c->req.upstream_head != NULL) {
        evbuffer_free(c->req.upstream_head);
        c->req.upstream_head = NULL;
    }
}

void proxy_conn_response_body(struct proxy_conn *c, const char *data, size_t len, bool chunked)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t before = evbuffer_get_length(out);
    if (len > 0)
        proxy_http_body(out, data, len, chunked);
    else if (chunked)
        evbuffer_add(out, "0\r\n\r\n", 5); /* the last chunk */
    c->req.bytes_out += evbuffer_get_length(out) - before;
    conn_write_soon(c);
}

void proxy_conn_response_done(struct proxy_conn *c, bool upstream_reusable)
{
    struct proxy_req *r = &c->req;
    struct upstream *u = c->up;
    c->up = NULL;
    upstream_release(u, upstream_reusable && r->body_done);
    accesslog_write(c->w->alog, c, r);
    if (!r->body_done || !r->keep_alive || c->w->draining) {
        /* The backend answered before the whole body arrived, or the client or
         * a shutdown asked for the end of the connection. */
        c->state = CS_CLOSING;
        conn_close_after_flush(c);
        return;
    }
    c->state = CS_IDLE;
    if (r->upstream_head != NULL) {
        evbuffer_free(r->upstream_head);
        r->upstream_head = NULL;
    }
    /* An idle connection keeps no head buffers. */
    proxy_head_purge(&r->head);
    timer_arm(c, c->w->conf->keepalive_timeout_ms);
    llhttp_resume(&c->parser);
    c->parser_paused = false;
    conn_feed(c);
}

void proxy_conn_upstream_failed(struct proxy_conn *c, enum reason r)
{
    if (conn_retry(c))
        return;
    if (c->up != NULL && c->up->resp_started) {
        /* Part of the answer is out: the client can only learn of it by the close. */
        log_info("%s: backend connection lost mid-response", c->peer);
        upstream_release(c->up, false);
        c->up = NULL;
        c->req.reason = r;
        accesslog_write(c->w->alog, c, &c->req);
        c->state = CS_CLOSING;
        proxy_conn_close(c);
        return;
    }
    conn_refuse(c, r);
}

void proxy_conn_upstream_writable(struct proxy_conn *c)
{
    if (!c->read_blocked)
        return;
    c->read_blocked = false;
    bufferevent_enable(c->bev, EV_READ);
    conn_feed(c);
}

/* ---- libevent callbacks ----------------------------------------------------- */

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    struct proxy_conn *c = arg;
    if (c->state == CS_CLOSING) {
        struct evbuffer *in = bufferevent_get_input(bev);
        evbuffer_drain(in, evbuffer_get_length(in)); /* lingering: read and dropped */
        return;
    }
    conn_feed(c);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
    struct proxy_conn *c = arg;
    if (c->state == CS_CLOSING) {
        if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
            conn_linger(c);
        return;
    }
    /* The client drained its answer: let the backend send more. */
    if (c->up != NULL && !proxy_conn_output_full(c))
        bufferevent_enable(c->up->bev, EV_READ);
}

static void conn_handshake_done(struct proxy_conn *c)
{
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
    /* The certificate verdict is computed once per connection (verification
     * itself ran in the handshake, or, for a resumed session, not at all:
     * tls_conn_verdict re-checks validity and revocation either way). */
    const char *cert = conn_judge_certificate(c, ssl, "none");
    c->state = CS_IDLE;
    log_debug("%s: %s handshake done, certificate %s", c->peer, tls_conn_protocol(ssl), cert);
}

static void conn_event_cb(struct bufferevent *bev, short events, void *arg)
{
    struct proxy_conn *c = arg;
    if (events & BEV_EVENT_CONNECTED) {
        conn_handshake_done(c);
        return;
    }
    if (c->state == CS_LATE) {
        conn_late_failed(c, events);
        return;
    }
    if (c->state == CS_HANDSHAKE && (events & BEV_EVENT_ERROR)) {
        unsigned long e = bufferevent_get_openssl_error(bev);
        log_debug("%s: TLS handshake failed: %s", c->peer,
                  e ? tls_error_text(e) : strerror(EVUTIL_SOCKET_ERROR()));
    }
    proxy_conn_close(c);
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct proxy_conn *c = arg;
    static const char *const what_timed_out[] = {
        [CS_HANDSHAKE] = "handshake",       [CS_IDLE] = "keep-alive",
        [CS_HEAD] = "request head",         [CS_READAHEAD] = "read-ahead body",
        [CS_LATE] = "late certificate",     [CS_MAP] = "directory",
        [CS_BODY] = "request body",         [CS_WAIT] = "response",
        [CS_CLOSING] = "final write",
    };
    if (c->state == CS_LATE) {
        /* A TLS 1.2 client may ignore a HelloRequest (RFC 5246, 7.4.1.1). */
        log_info("%s: no answer to the request for a client certificate within %llu ms", c->peer,
                 (unsigned long long)c->w->conf->header_timeout_ms);
        conn_late_lost(c, reason_status(R_CERT_REQUIRED));
        return;
    }
    log_debug("%s: %s timeout", c->peer, what_timed_out[c->state]);
    proxy_conn_close(c);
}

void proxy_conn_accept(struct worker *w, int fd, const struct sockaddr *sa, int salen)
{
    struct proxy_conn *c = calloc(1, sizeof *c);
    SSL *ssl = NULL;
    if (c == NULL)
        goto fail;
    c->w = w;
    if (getnameinfo(sa, (socklen_t)salen, c->peer, sizeof c->peer, NULL, 0, NI_NUMERICHOST) != 0)
        snprintf(c->peer, sizeof c->peer, "?");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ssl = tls_conn_new(w->tls);
    if (ssl == NULL)
        goto fail;
    c->bev = bufferevent_openssl_socket_new(w->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                            BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (c->bev == NULL)
        goto fail;
    ssl = NULL; /* owned by the bufferevent now, and so is fd */
    fd = -1;
    bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
    c->timer = evtimer_new(w->base, conn_timer_cb, c);
    if (c->timer == NULL)
        goto fail;
    llhttp_init(&c->parser, HTTP_REQUEST, &request_settings);
    c->parser.data = c;
    proxy_head_reset(&c->req.head, w->conf->max_request_head);
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, IN_HIGH);
    bufferevent_setwatermark(c->bev, EV_WRITE, OUT_HIGH / 2, 0);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    TAILQ_INSERT_TAIL(&w->conns, c, link);
    w->n_conns++;
    timer_arm(c, w->conf->header_timeout_ms); /* handshake and first head */
    return;
fail:
    log_warn("cannot accept a connection: out of resources");
    if (c != NULL) {
        if (c->timer != NULL)
            event_free(c->timer);
        if (c->bev != NULL)
            bufferevent_free(c->bev);
        free(c);
    }
    tls_conn_free(ssl);
    if (fd >= 0)
        close(fd);
}
