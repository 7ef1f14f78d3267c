/* Upstream connections to the [backend] servers: connecting over the
 * transport (the servers in backend_order(), each one's resolved addresses in
 * order, plain or TLS), writing a request, and parsing the response with
 * llhttp for whoever holds the connection. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "metrics/metrics.h"
#include "proxy/upstream_int.h"
#include "tls/tls.h"

/* Response heads from the backend are bounded too. */
#define RESPONSE_HEAD_LIMIT (64 * 1024)
/* Towards the backend, the holder is told it may write more below this. */
#define UP_LOW_MARK (128 * 1024)
/* Response bytes read ahead of the client at most. */
#define UP_IN_HIGH (64 * 1024)

void upstream_trail_add(struct upstream_trail *t, unsigned addr, enum upstream_outcome how)
{
    /* every failed connection attempt passes here: count it, trail or not */
    if (how == UP_ERROR || how == UP_TIMEOUT)
        metrics_inc(how == UP_ERROR ? MT_BACKEND_CONNECT_ERROR : MT_BACKEND_CONNECT_TIMEOUT);
    if (t == NULL || t->n >= UPSTREAM_TRAIL_MAX)
        return;
    t->addr[t->n] = (uint8_t)addr;
    t->how[t->n] = (uint8_t)how;
    t->n++;
}

const char *upstream_trail_text(const struct upstream_trail *t, const struct backend_set *ba,
                                char *buf, size_t len)
{
    static const char *const how[] = {[UP_USED] = "", [UP_ERROR] = "(error)",
                                      [UP_TIMEOUT] = "(timeout)", [UP_STALE] = "(stale)"};
    size_t used = 0;
    snprintf(buf, len, "-");
    for (size_t i = 0; i < t->n && ba != NULL; i++) {
        int n = snprintf(buf + used, len - used, "%s%s%s", i ? "," : "", ba->text[t->addr[i]],
                         how[t->how[i]]);
        if (n < 0 || (size_t)n >= len - used)
            break;
        used += (size_t)n;
    }
    return buf;
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
    int status = p->status_code;
    if (status >= 100 && status < 200) {
        /* Interim answers (100 Continue, 102, 103) stay between certmapd and the
         * backend: certmapd answers Expect itself. 101 would switch protocols. */
        if (status == 101)
            return -1;
        u->skip = true;
        return 0;
    }
    struct upstream_response r = {
        .status = status,
        .head = &u->head,
        .has_length = (p->flags & F_CONTENT_LENGTH) && !(p->flags & F_CHUNKED),
        .content_length = p->content_length,
        .bodyless = u->head_request || status == 204 || status == 304,
    };
    u->close_delimited = !r.bodyless && !r.has_length && !(p->flags & F_CHUNKED);
    u->resp_started = true;
    u->h->head(u->arg, &r);
    proxy_head_purge(&u->head);
    return u->head_request ? 1 : 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct upstream *u = p->data;
    if (u->skip || len == 0)
        return 0;
    u->h->body(u->arg, at, len);
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

/* ---- life ----------------------------------------------------------------------- */

void upstream_free(struct upstream *u)
{
    metrics_gauge_add(MG_BACKEND_OPEN, -1);
    free(u->identity);
    proxy_head_purge(&u->head);
    event_del(&u->timer);
    io_free(u->io);
    free(u);
}

static void arm(struct upstream *u, uint64_t ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    event_add(&u->timer, &tv);
}

/* Ends the exchange: the holder learns it and releases <u>. */
static void up_fail(struct upstream *u, enum reason r, bool stale)
{
    u->failed = true;
    event_del(&u->timer);
    u->h->error(u->arg, r, stale);
}

/* Parses what the backend sent; stops while the holder paused reading. */
static void up_parse(struct upstream *u)
{
    struct evbuffer *in = io_input(u->io);
    for (;;) {
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
            event_del(&u->timer);
            bool reusable = llhttp_should_keep_alive(&u->parser) && evbuffer_get_length(in) == 0;
            u->h->done(u->arg, reusable);
            return;
        }
        if (err == HPE_PAUSED)
            return; /* the holder paused reading inside a callback: resumed by upstream_read_pause */
        log_info("backend %s sent an invalid response: %s (%s)", u->pool->backend->text[u->addr_idx],
                 llhttp_errno_name(err), llhttp_get_error_reason(&u->parser));
        up_fail(u, R_BACKEND_UNAVAILABLE, false);
        return;
    }
}

static void up_read_cb(void *arg)
{
    struct upstream *u = arg;
    if (u->failed || u->resp_done)
        return;
    arm(u, u->pool->conf->backend_read_timeout_ms); /* inactivity, as long polls need */
    up_parse(u);
}

static void up_drained_cb(void *arg)
{
    struct upstream *u = arg;
    if (!u->failed && u->h->writable != NULL)
        u->h->writable(u->arg);
}

static bool up_dial_next(struct upstream *u, enum upstream_outcome how, const char *why);

static void up_event_cb(void *arg, enum io_event ev)
{
    struct upstream *u = arg;
    char why[256];
    if (u->failed)
        return;
    if (ev == IO_EV_CONNECTED) {
        metrics_inc(MT_BACKEND_CONNECT_OK);
        u->connected = true;
        backend_server_ok(u->pool->backend, u->pool->backend->srv_of[u->addr_idx]);
        upstream_trail_add(u->trail, u->addr_idx, UP_USED);
        arm(u, u->pool->conf->backend_read_timeout_ms);
        SSL *ssl = io_ssl(u->io);
        if (ssl == NULL ||
            tls_server_end_point(ssl, u->binding, sizeof u->binding, &u->binding_len) < 0)
            u->binding_len = 0;
        if (u->h->connected != NULL)
            u->h->connected(u->arg);
        return;
    }
    if (!u->connected) {
        /* Nothing was sent yet: the next address of the backend may answer. */
        if (!up_dial_next(u, UP_ERROR, io_error_text(u->io, why, sizeof why)))
            up_fail(u, R_BACKEND_UNAVAILABLE, false);
        return;
    }
    if (ev == IO_EV_EOF && u->close_delimited && u->resp_started) {
        /* The close is the end of this response. */
        llhttp_finish(&u->parser);
        event_del(&u->timer);
        u->h->done(u->arg, false);
        return;
    }
    bool stale = u->reused && !u->resp_started;
    if (stale)
        metrics_inc(MT_BACKEND_STALE);
    if (!stale)
        log_info("backend %s %s before the response was complete",
                 u->pool->backend->text[u->addr_idx],
                 ev == IO_EV_EOF ? "closed the connection" : io_error_text(u->io, why, sizeof why));
    up_fail(u, R_BACKEND_UNAVAILABLE, stale);
}

static void up_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upstream *u = arg;
    if (!u->connected) {
        if (!up_dial_next(u, UP_TIMEOUT, "connection timed out"))
            up_fail(u, R_BACKEND_TIMEOUT, false);
        return;
    }
    log_info("backend %s: response timed out", u->pool->backend->text[u->addr_idx]);
    up_fail(u, R_BACKEND_TIMEOUT, false);
}

static const struct io_handler up_io_handler = {
    .read = up_read_cb,
    .drained = up_drained_cb,
    .event = up_event_cb,
};

/* Starts connecting <u> to backend address <idx> on a new transport, which
 * takes over what was queued on the old one (nothing of it was sent: the old
 * one never connected). Returns 0, or -1 when it could not even start. */
static int up_dial(struct upstream *u, unsigned idx)
{
    struct upstream_pool *p = u->pool;
    const struct backend_set *ba = p->backend;
    SSL *ssl = NULL;
    struct io *io = io_new(p->base, &up_io_handler, u);
    if (io == NULL ||
        (p->tls != NULL &&
         (ssl = tls_client_conn_new(p->tls, ba->srv[ba->srv_of[idx]].host)) == NULL)) {
        log_warn("backend %s: out of memory for a connection", ba->text[idx]);
        io_free(io);
        return -1;
    }
    io_set_marks(io, UP_IN_HIGH, UP_LOW_MARK);
    if (io_connect(io, (const struct sockaddr *)&ba->addr[idx], ba->len[idx], ssl) < 0) {
        log_info("backend %s: cannot connect: %s", ba->text[idx], strerror(errno));
        io_free(io);
        return -1;
    }
    if (u->io != NULL) {
        /* It never connected: nothing of it was sent. Unless it lost some of
         * it for want of memory: then the request cannot go anywhere. */
        if (io_move_output(u->io, io) < 0) {
            log_warn("backend %s: out of memory for the request", ba->text[idx]);
            io_free(io);
            return -1;
        }
        io_free(u->io);
    }
    u->io = io;
    u->addr_idx = idx;
    arm(u, p->conf->backend_connect_timeout_ms);
    return 0;
}

/* The connection to the current address failed before anything was sent
 * (<how>, <why>): records it and dials the next address that can be dialled:
 * the server's next one, else (the server marked down) the first of the next
 * server in the request's order. false when none is left, after saying what
 * was tried. */
static bool up_dial_next(struct upstream *u, enum upstream_outcome how, const char *why)
{
    struct backend_set *ba = u->pool->backend;
    unsigned idx = u->addr_idx;
    upstream_trail_add(u->trail, idx, how);
    for (;;) {
        const struct backend_server *s = &ba->srv[ba->srv_of[idx]];
        if (idx + 1 < s->first + s->n) {
            log_info("backend %s: %s; trying %s", ba->text[idx], why, ba->text[idx + 1]);
            idx++;
        } else {
            backend_server_failed(ba, ba->srv_of[idx], why);
            if ((unsigned)u->at + 1 >= u->n_order) {
                log_info("backend %s: %s; %s", ba->text[idx], why,
                         ba->n_srv > 1 ? "no other backend server to try"
                         : s->n > 1    ? "no other address of the backend to try"
                                       : "the backend has no other address");
                return false;
            }
            u->at++;
            unsigned next = ba->srv[u->order[u->at]].first;
            log_info("backend %s: %s; trying the server %s at %s", ba->text[idx], why,
                     ba->srv[u->order[u->at]].name, ba->text[next]);
            idx = next;
        }
        if (up_dial(u, idx) == 0)
            return true;
        u->addr_idx = idx;
        upstream_trail_add(u->trail, idx, UP_ERROR);
        why = "cannot connect";
    }
}

/* A new connection for a request, to the servers in <order> (<n> of them). */
static struct upstream *up_connect(struct upstream_pool *p, struct upstream_trail *trail,
                                   const uint8_t *order, unsigned n)
{
    struct upstream *u = calloc(1, sizeof *u);
    if (u == NULL)
        return NULL;
    metrics_gauge_add(MG_BACKEND_OPEN, 1); /* until upstream_free */
    u->pool = p;
    u->trail = trail;
    memcpy(u->order, order, n);
    u->n_order = (uint8_t)n;
    u->at = 0;
    evtimer_assign(&u->timer, p->base, up_timer_cb, u);
    unsigned idx = p->backend->srv[order[0]].first;
    if (up_dial(u, idx) == 0)
        return u;
    u->addr_idx = idx;
    if (up_dial_next(u, UP_ERROR, "cannot connect"))
        return u;
    upstream_free(u);
    return NULL;
}

struct upstream *upstream_acquire(struct upstream_pool *p, const struct upstream_handler *h,
                                  void *arg, unsigned flags, const char *identity,
                                  struct upstream_trail *trail)
{
    uint8_t order[BACKEND_MAX_SERVERS];
    unsigned n = backend_order(p->backend, &p->rr, order);
    struct upstream *u = NULL;
    if (!(flags & UPSTREAM_FRESH))
        u = upstream_pool_take(p, identity, identity != NULL ? -1 : (int)order[0]);
    if (u != NULL) {
        metrics_inc(MT_BACKEND_REUSED);
        u->reused = true;
        u->trail = trail;
        upstream_trail_add(trail, u->addr_idx, UP_USED);
        io_set_handler(u->io, &up_io_handler, u);
        evtimer_assign(&u->timer, p->base, up_timer_cb, u);
        arm(u, p->conf->backend_read_timeout_ms);
    } else {
        u = up_connect(p, trail, order, n);
        if (u == NULL)
            return NULL;
        if (identity != NULL && (u->identity = strdup(identity)) == NULL) {
            upstream_free(u);
            return NULL;
        }
    }
    u->h = h;
    u->arg = arg;
    u->head_request = (flags & UPSTREAM_HEAD_REQUEST) != 0;
    u->resp_started = u->resp_done = u->skip = u->failed = u->close_delimited = false;
    llhttp_init(&u->parser, HTTP_RESPONSE, &response_settings);
    u->parser.data = u;
    proxy_head_reset(&u->head, RESPONSE_HEAD_LIMIT);
    return u;
}

void upstream_write(struct upstream *u, const void *data, size_t len)
{
    io_write(u->io, data, len);
}

void upstream_write_buffer(struct upstream *u, struct evbuffer *buf)
{
    io_write_buffer(u->io, buf);
}

size_t upstream_output_length(const struct upstream *u)
{
    return io_output_length(u->io);
}

void upstream_read_pause(struct upstream *u, bool paused)
{
    io_read_pause(u->io, paused);
}

bool upstream_connected(const struct upstream *u)
{
    return u->connected;
}

const unsigned char *upstream_binding(const struct upstream *u, size_t *len)
{
    *len = u->binding_len;
    return u->binding_len > 0 ? u->binding : NULL;
}

bool upstream_reused(const struct upstream *u)
{
    return u->reused;
}

const char *upstream_host_header(const struct upstream *u)
{
    const struct backend_set *ba = u->pool->backend;
    return ba->srv[ba->srv_of[u->addr_idx]].name;
}

void upstream_purge_siblings(struct upstream *u)
{
    upstream_pool_purge_server(u->pool, u->pool->backend->srv_of[u->addr_idx]);
}

void upstream_release(struct upstream *u, bool reusable)
{
    u->h = NULL;
    u->arg = NULL;
    u->trail = NULL;
    event_del(&u->timer);
    if (!reusable || u->failed || !u->connected || !io_is_open(u->io) ||
        io_output_length(u->io) > 0 || !upstream_pool_put(u->pool, u)) {
        upstream_free(u);
        return;
    }
}
