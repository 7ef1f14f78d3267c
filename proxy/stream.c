/* One request and its response (stream.h): parsing, the location's policy,
 * a late certificate, mapping, forwarding, relaying, the access log line.
 *
 * The stages, in order; stream_run() takes a stream from the one it is in to
 * the next until one has to wait:
 *   HEAD       the request head arrives (llhttp pauses at its end)
 *   POLICY     the location decides: certificate mode, mapping
 *   READAHEAD  the body is held in memory until a late certificate is asked
 *   LATE       the client is asked for a certificate (renegotiation / PHA)
 *   MAP        the directory is asked who the certificate is
 *   AUTH       with delegation: a backend connection of that user, and when
 *              it needs one, a Kerberos token for it (krb/'s threads)
 *   BODY       the head went to the backend; the body follows as it arrives
 *   WAIT       the request is complete; the response is relayed
 *   DONE       logged and handed back to the connection
 * A refusal goes straight to DONE with its error answer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h> /* struct event embedded, set up with event_assign() */
#include <llhttp.h>

#include "common/log.h"
#include "conf/conf.h"
#include "io/io.h"
#include "krb/krb.h"
#include "mapping/mapping.h"
#include "metrics/metrics.h"
#include "proxy/accesslog.h"
#include "proxy/http.h"
#include "proxy/stream.h"
#include "proxy/upstream.h"

/* Above this many bytes queued towards one side, stop reading the other. */
#define OUT_HIGH (256 * 1024)

enum stream_stage {
    SS_HEAD = 0,
    SS_POLICY,
    SS_READAHEAD,
    SS_LATE,
    SS_MAP,
    SS_AUTH,
    SS_BODY,
    SS_WAIT,
    SS_DONE,
};

/* Flags: what is known of the request, and what has been done. */
#define SF_BEGUN 0x00001u          /* a request's first byte was parsed */
#define SF_KEEP_ALIVE 0x00002u     /* the client wants the connection kept */
#define SF_HAS_BODY 0x00004u
#define SF_CHUNKED 0x00008u        /* the request body is chunked (re-chunked upstream) */
#define SF_EXPECT 0x00010u         /* Expect: 100-continue */
#define SF_BODY_DONE 0x00020u      /* the whole request was received */
#define SF_IDEMPOTENT 0x00040u
#define SF_HEAD_METHOD 0x00080u
#define SF_RETRIED 0x00100u        /* sent once more after a stale pooled connection */
#define SF_LATE_ASKED 0x00200u     /* a late certificate was asked for this request */
#define SF_WANT_MAPPING 0x00400u   /* [mapping] applies to this location */
#define SF_MAPPED 0x00800u         /* <ident> holds the mapping's outcome */
#define SF_CHUNKED_OUT 0x01000u    /* the response is re-chunked for the client */
#define SF_RESP_STARTED 0x02000u   /* some of the response went to the client */
#define SF_RESP_KEEP 0x04000u      /* the response head said keep-alive */
#define SF_LOGGED 0x08000u         /* the access log line is written */
#define SF_PAUSED 0x10000u         /* llhttp paused: nothing is parsed until resumed */
#define SF_BLOCKED 0x20000u        /* the backend's output is full: not consuming */
#define SF_POLICY 0x40000u         /* the location's policy is decided */
#define SF_TOKEN_SENT 0x80000u     /* this request carries a fresh Kerberos token */
#define SF_AUTH_RETRIED 0x100000u  /* sent once more with a fresh token after a 401 */
#define SF_DISCARD 0x200000u       /* the backend's answer is not relayed (refused token) */
#define SF_OOM 0x400000u           /* memory ran out in a parser callback */

struct stream {
    struct stream_client *sc;
    enum stream_stage stage;
    unsigned flags;
    unsigned req_no;
    llhttp_t parser;
    struct proxy_head head;
    int method; /* llhttp_method_t */
    uint8_t http_major, http_minor;
    enum cert_mode cert_mode;       /* of the location */
    uint64_t content_length;        /* of the body as received (not chunked) */
    struct evbuffer *readahead;     /* body held while a late certificate is asked */
    struct map_job *map_job;        /* directory lookup in flight */
    struct map_result ident;        /* the mapping's outcome, with SF_MAPPED */
    struct upstream *up;
    struct upstream_trail trail;    /* backend addresses tried */
    struct evbuffer *upstream_head; /* kept until the response starts, for one retry */
    uint64_t bytes_in, bytes_out;
    uint32_t head_bytes;            /* of the head, as parsed */
    int status;
    enum reason reason;
    struct timespec t_start, t_upstream, t_upstream_done;
    struct event timer;             /* head, body, late certificate and KDC timeouts */
    char *deleg_user;               /* delegation: whom the backend connection is for */
    bool deleg_enterprise;
    struct krb_job *krb_job;        /* a token being made */
    struct krb_token *token;        /* the token this request carries, until the answer */
    bool retry_auth;                /* a discarded 401 is retried with a fresh token */
    const char *feed_start;         /* the buffer llhttp_execute is parsing */
    char feed_prev;                 /* the byte parsed just before feed_start */
};

static void stream_run(struct stream *st);

static const char *const stage_names[] = {
    [SS_HEAD] = "request head",     [SS_POLICY] = "policy", [SS_READAHEAD] = "read-ahead body",
    [SS_LATE] = "late certificate", [SS_MAP] = "directory", [SS_AUTH] = "Kerberos ticket",
    [SS_BODY] = "request body",
    [SS_WAIT] = "response",         [SS_DONE] = "done",
};

const char *stream_stage_name(const struct stream *st)
{
    return stage_names[st->stage];
}

static void now(struct timespec *ts)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
}

static double ms_between(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) * 1e3 + (double)(b->tv_nsec - a->tv_nsec) / 1e6;
}

static void timer_arm(struct stream *st, uint64_t ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(&st->timer, &tv);
}

/* ---- the end: the access log, handing back ------------------------------------ */

static void stream_log(struct stream *st)
{
    if (st->flags & SF_LOGGED)
        return;
    st->flags |= SF_LOGGED;
    struct stream_client *sc = st->sc;
    struct timespec t;
    char trail[512];
    now(&t);
    const struct cert_facts *f = sc->facts;
    const char *user = NULL;
    if ((st->flags & SF_MAPPED) && st->ident.reason == R_NONE)
        user = st->ident.upn != NULL ? st->ident.upn : st->ident.sam;
    bool has_head = st->head.url_len > 0 && st->head.buf != NULL;
    struct access_record r = {
        .conn_id = sc->conn_id,
        .req_no = st->req_no,
        .client = sc->peer,
        .via = sc->via,
        .method = has_head ? llhttp_method_name((llhttp_method_t)st->method) : NULL,
        .path = has_head ? st->head.buf + st->head.url_off : NULL,
        .path_len = has_head ? st->head.url_len : 0,
        .status = st->status,
        .bytes_in = st->bytes_in,
        .bytes_out = st->bytes_out,
        .ms = st->t_start.tv_sec ? ms_between(&st->t_start, &t) : 0,
        .upstream_ms = st->t_upstream.tv_sec && st->t_upstream_done.tv_sec
                           ? ms_between(&st->t_upstream, &st->t_upstream_done)
                           : -1,
        .upstream = upstream_trail_text(&st->trail, st->sc->pool->backend, trail, sizeof trail),
        .serial = f != NULL ? f->serial_hex : NULL,
        .user = user,
        .reason = st->reason,
    };
    accesslog_write(sc->alog, &r);
    metrics_request(r.status, r.reason);
}

/* Drops the upstream connection, reusable or not. */
static void stream_unbind(struct stream *st, bool reusable)
{
    if (st->up != NULL) {
        upstream_release(st->up, reusable);
        st->up = NULL;
    }
}

/* Over: logged (unless <log> is false: nothing of a request arrived to log),
 * and the connection told how to go on. Callers return at once. */
static void stream_end(struct stream *st, enum stream_end how, bool log)
{
    krb_job_cancel(st->krb_job);
    st->krb_job = NULL;
    if (log)
        stream_log(st);
    st->stage = SS_DONE;
    evtimer_del(&st->timer);
    st->sc->ops->done(st->sc->arg, how);
}

/* Answers the request with the error for <r>; the connection closes after it
 * (at once, without an answer, when there is no memory for one). */
static void stream_refuse(struct stream *st, enum reason r)
{
    struct stream_client *sc = st->sc;
    stream_unbind(st, false);
    st->reason = r;
    st->status = reason_status(r);
    struct evbuffer *out = evbuffer_new();
    if (out != NULL &&
        proxy_http_error(out, r, sc->conf->detailed_errors, st->flags & SF_HEAD_METHOD) == 0) {
        st->bytes_out += evbuffer_get_length(out);
        io_write_buffer(sc->io, out);
    }
    if (out != NULL)
        evbuffer_free(out);
    stream_end(st, STREAM_CLOSE, true);
}

/* Memory ran out in the middle of <what>: no answer can be trusted to be
 * whole, so the request ends with its connection (logged as 500). Inside an
 * upstream callback the upstream connection may not be released (the
 * upstream is still on the stack): it stays bound, unheard (the callbacks
 * check SS_DONE), until stream_free(). */
static void stream_oom(struct stream *st, const char *what)
{
    log_warn("#%llu.%u %s: out of memory (%s): connection closed",
             (unsigned long long)st->sc->conn_id, st->req_no, st->sc->peer, what);
    st->status = 500;
    stream_end(st, STREAM_ABORT, true);
}

void stream_free(struct stream *st)
{
    if (st == NULL)
        return;
    if (st->map_job != NULL)
        map_job_cancel(st->map_job); /* the lookup still completes and is cached */
    krb_job_cancel(st->krb_job);      /* likewise the user's credential */
    krb_token_free(st->token);
    free(st->deleg_user);
    if (st->stage != SS_DONE && st->stage != SS_HEAD && st->stage != SS_POLICY) {
        /* The client went away mid-request: logged, as nginx's 499. */
        st->status = 499;
        stream_log(st);
    }
    stream_unbind(st, false);
    evtimer_del(&st->timer);
    if (st->upstream_head != NULL)
        evbuffer_free(st->upstream_head);
    if (st->readahead != NULL)
        evbuffer_free(st->readahead);
    map_result_purge(&st->ident);
    proxy_head_purge(&st->head);
    free(st);
}

static void stream_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct stream *st = arg;
    if (st->stage == SS_LATE) {
        /* A TLS 1.2 client may ignore a HelloRequest (RFC 5246, 7.4.1.1). */
        log_info("#%llu %s: no answer to the request for a client certificate within %llu ms",
                 (unsigned long long)st->sc->conn_id, st->sc->peer,
                 (unsigned long long)st->sc->conf->header_timeout_ms);
        stream_cert_lost(st, reason_status(R_CERT_REQUIRED));
        return;
    }
    if (st->stage == SS_AUTH) {
        log_info("#%llu.%u %s: no Kerberos ticket for %s from the KDC within %llu ms",
                 (unsigned long long)st->sc->conn_id, st->req_no, st->sc->peer,
                 st->deleg_user != NULL ? st->deleg_user : "?",
                 (unsigned long long)st->sc->conf->deleg_timeout_ms);
        stream_refuse(st, R_KDC_UNAVAILABLE); /* fail closed: never forwarded without it */
        return;
    }
    log_debug("#%llu.%u %s: %s timeout", (unsigned long long)st->sc->conn_id, st->req_no,
              st->sc->peer, stage_names[st->stage]);
    /* A request that was on its way is logged as one its client gave up (499). */
    bool log = st->stage != SS_HEAD && st->stage != SS_POLICY;
    st->status = 499;
    stream_end(st, STREAM_ABORT, log);
}

/* ---- llhttp callbacks: the request ---------------------------------------------- */

static int head_fail(struct stream *st, enum reason r)
{
    st->reason = r;
    return -1;
}

static int on_message_begin(llhttp_t *p)
{
    struct stream *st = p->data;
    st->flags |= SF_BEGUN;
    now(&st->t_start);
    st->head_bytes = 0;
    timer_arm(st, st->sc->conf->header_timeout_ms);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct stream *st = p->data;
    return proxy_head_url(&st->head, at, len) < 0 ? head_fail(st, R_HEAD_TOO_LARGE) : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct stream *st = p->data;
    return proxy_head_field(&st->head, at, len) < 0 ? head_fail(st, R_HEAD_TOO_LARGE) : 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct stream *st = p->data;
    /* llhttp accepts obs-fold and hands the continuation line over as a second
     * piece of the value, starting at its leading whitespace: a piece right after
     * a line feed is one. Folding is refused (RFC 9112 5.2 lets a server answer it with 400). */
    const char *b = at;
    while (b > st->feed_start && (b[-1] == ' ' || b[-1] == '\t'))
        b--; /* after an empty first line, the piece starts past the fold's whitespace */
    char before = b > st->feed_start ? b[-1] : st->feed_prev;
    if (before == '\n')
        return head_fail(st, R_BAD_REQUEST);
    /* llhttp takes ": v" as a header with an empty name (RFC 9110 5.1: a token,
     * one character at least): never forwarded (tests/fuzz/regressions/). */
    if (st->head.n > 0 && st->head.h[st->head.n - 1].name_len == 0)
        return head_fail(st, R_BAD_REQUEST);
    /* NUL, bare CR or LF inside a value: never forwarded, whatever the parser allows. */
    for (size_t i = 0; i < len; i++)
        if (at[i] == '\0' || at[i] == '\r' || at[i] == '\n')
            return head_fail(st, R_BAD_REQUEST);
    return proxy_head_value(&st->head, at, len) < 0 ? head_fail(st, R_HEAD_TOO_LARGE) : 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct stream *st = p->data;
    st->method = llhttp_get_method(p);
    st->http_major = llhttp_get_http_major(p);
    st->http_minor = llhttp_get_http_minor(p);
    if (llhttp_should_keep_alive(p))
        st->flags |= SF_KEEP_ALIVE;
    if (p->flags & F_CHUNKED)
        st->flags |= SF_CHUNKED | SF_HAS_BODY;
    else if ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0)
        st->flags |= SF_HAS_BODY;
    if (st->method == HTTP_HEAD)
        st->flags |= SF_HEAD_METHOD;
    if (st->method == HTTP_GET || st->method == HTTP_HEAD || st->method == HTTP_OPTIONS ||
        st->method == HTTP_PUT || st->method == HTTP_DELETE)
        st->flags |= SF_IDEMPOTENT;
    for (size_t i = 0; i < st->head.n; i++)
        if (proxy_head_name_is(&st->head, i, "expect") &&
            proxy_head_value_is(&st->head, i, "100-continue"))
            st->flags |= SF_EXPECT;
    if ((st->flags & SF_HAS_BODY) && !(st->flags & SF_CHUNKED))
        st->content_length = p->content_length;
    st->stage = SS_POLICY;
    return HPE_PAUSED; /* decided in stream_run, outside the parser */
}

/* Writes <len> request body bytes upstream, as one chunk when re-chunking. */
static void upstream_body(struct stream *st, const char *data, size_t len)
{
    if (st->flags & SF_CHUNKED) {
        char hdr[24];
        upstream_write(st->up, hdr, proxy_http_chunk_header(hdr, len));
        upstream_write(st->up, data, len);
        upstream_write(st->up, "\r\n", 2);
    } else {
        upstream_write(st->up, data, len);
    }
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct stream *st = p->data;
    /* llhttp may report an empty piece; re-chunked, it would end the body early. */
    if (len == 0)
        return 0;
    if (st->stage == SS_READAHEAD) {
        /* IIS's uploadReadAheadSize: the body waits in memory for the certificate. */
        if (evbuffer_get_length(st->readahead) + len > st->sc->conf->upload_read_ahead_size)
            return head_fail(st, R_READ_AHEAD_EXCEEDED);
        if (evbuffer_add(st->readahead, at, len) < 0) {
            st->flags |= SF_OOM;
            return -1;
        }
        return 0;
    }
    if (st->up != NULL)
        upstream_body(st, at, len);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct stream *st = p->data;
    st->flags |= SF_BODY_DONE;
    if (st->up != NULL && (st->flags & SF_CHUNKED))
        upstream_write(st->up, "0\r\n\r\n", 5);
    if (st->stage == SS_BODY) {
        st->stage = SS_WAIT;
        evtimer_del(&st->timer); /* a long poll may wait; the backend's read_timeout bounds it */
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

struct stream *stream_new(struct stream_client *sc)
{
    struct stream *st = calloc(1, sizeof *st);
    if (st == NULL)
        return NULL;
    st->sc = sc;
    st->req_no = sc->n_requests;
    llhttp_init(&st->parser, HTTP_REQUEST, &request_settings);
    st->parser.data = st;
    proxy_head_reset(&st->head, sc->conf->max_request_head);
    evtimer_assign(&st->timer, io_event_base(sc->io), stream_timer_cb, st);
    return st;
}

bool stream_in_flight(const struct stream *st)
{
    return st->stage != SS_HEAD;
}

bool stream_awaits_cert(const struct stream *st)
{
    return st->stage == SS_LATE;
}

bool stream_started(const struct stream *st)
{
    return (st->flags & SF_BEGUN) != 0;
}

/* ---- the response: upstream callbacks ---------------------------------------------- */

static void client_write(struct stream *st, const void *data, size_t len)
{
    io_write(st->sc->io, data, len);
    st->bytes_out += len;
}

static void stream_delegate(struct stream *st, bool fresh);

/* The value of the backend's WWW-Authenticate: Negotiate header in <hd>, after
 * "Negotiate" (with its length in <len>: 0 for a bare challenge); NULL: none. */
static const char *negotiate_of(const struct proxy_head *hd, size_t *len)
{
    for (size_t i = 0; i < hd->n; i++) {
        if (!proxy_head_name_is(hd, i, "www-authenticate"))
            continue;
        const char *v = hd->buf + hd->h[i].val_off;
        size_t n = hd->h[i].val_len;
        if (n >= 9 && strncasecmp(v, "Negotiate", 9) == 0 && (n == 9 || v[9] == ' ')) {
            v += 9, n -= 9;
            while (n > 0 && *v == ' ')
                v++, n--;
            *len = n;
            return v;
        }
    }
    return NULL;
}

/* With delegation, what the backend's answer says of the token: true when the
 * answer is to be relayed; false when it refused the token (or its mutual
 * answer does not verify), and the answer is then drained and not relayed. */
static bool delegation_answer(struct stream *st, const struct upstream_response *r)
{
    size_t len = 0;
    const char *neg = negotiate_of(r->head, &len);
    unsigned long long id = (unsigned long long)st->sc->conn_id;
    if (r->status == 401 && neg != NULL) {
        /* A connection authenticated earlier that the backend no longer takes as
         * such is retried once with a fresh token; a fresh token refused is final. */
        st->retry_auth = !(st->flags & (SF_TOKEN_SENT | SF_AUTH_RETRIED)) &&
                         (st->flags & SF_IDEMPOTENT) && !(st->flags & SF_HAS_BODY);
        if (!st->retry_auth)
            log_info("#%llu.%u %s: the backend refused the delegated token for %s (401)", id,
                     st->req_no, st->sc->peer, st->deleg_user);
        st->flags |= SF_DISCARD;
        return false;
    }
    if (st->token != NULL && neg != NULL && len > 0 &&
        krb_token_verify(st->token, neg, len) != 0) {
        log_info("#%llu.%u %s: the backend's mutual authentication answer for %s does not verify",
                 id, st->req_no, st->sc->peer, st->deleg_user);
        st->retry_auth = false;
        st->flags |= SF_DISCARD;
        return false;
    }
    return true;
}

static void up_head(void *arg, const struct upstream_response *r)
{
    struct stream *st = arg;
    struct stream_client *sc = st->sc;
    if (st->stage == SS_DONE)
        return;
    now(&st->t_upstream_done);
    if (st->deleg_user != NULL && !delegation_answer(st, r))
        return;
    st->status = r->status;
    bool client_11 = st->http_major == 1 && st->http_minor >= 1;
    bool keep_alive = (st->flags & SF_KEEP_ALIVE) && !sc->draining;
    char cl[32];
    const char *content_length = NULL;
    if (r->has_length) {
        snprintf(cl, sizeof cl, "%llu", (unsigned long long)r->content_length);
        content_length = cl;
    } else if (!r->bodyless) {
        /* Chunked or delimited by the close: re-chunked for an HTTP/1.1 client,
         * close-delimited for an HTTP/1.0 one. */
        if (client_11)
            st->flags |= SF_CHUNKED_OUT;
        else
            keep_alive = false;
    }
    if (keep_alive)
        st->flags |= SF_RESP_KEEP;
    struct evbuffer *head = evbuffer_new();
    const unsigned char *bytes = NULL;
    size_t len = 0;
    if (head != NULL && proxy_http_response_head(r->head, r->status, st->flags & SF_CHUNKED_OUT,
                                                 keep_alive, content_length, head) == 0) {
        len = evbuffer_get_length(head);
        bytes = evbuffer_pullup(head, (ev_ssize_t)len);
    }
    if (bytes == NULL) {
        if (head != NULL)
            evbuffer_free(head);
        stream_oom(st, "response head"); /* no head: the body must not go out alone */
        return;
    }
    /* Copied, not moved: the body that follows then shares its buffer chain,
     * and head and body leave in one TLS record and one write(2). */
    client_write(st, bytes, len);
    evbuffer_free(head);
    st->flags |= SF_RESP_STARTED;
    if (st->upstream_head != NULL) {
        evbuffer_free(st->upstream_head);
        st->upstream_head = NULL;
    }
}

static void up_body(void *arg, const char *data, size_t len)
{
    struct stream *st = arg;
    if ((st->flags & SF_DISCARD) || st->stage == SS_DONE)
        return;
    if (st->flags & SF_CHUNKED_OUT) {
        char hdr[24];
        client_write(st, hdr, proxy_http_chunk_header(hdr, len));
        client_write(st, data, len);
        client_write(st, "\r\n", 2);
    } else {
        client_write(st, data, len);
    }
    /* Resumed by stream_client_writable() once the client has read. */
    if (io_output_length(st->sc->io) > OUT_HIGH)
        upstream_read_pause(st->up, true);
}

static void up_done(void *arg, bool reusable)
{
    struct stream *st = arg;
    if (st->stage == SS_DONE)
        return; /* ended already (out of memory for the head) */
    if (st->flags & SF_DISCARD) {
        /* The token was refused: the connection proved nothing, and is not kept. */
        stream_unbind(st, false);
        st->flags &= ~SF_DISCARD;
        if (st->retry_auth) {
            st->flags |= SF_AUTH_RETRIED;
            stream_delegate(st, true);
            return;
        }
        stream_refuse(st, R_BACKEND_AUTH_FAILED);
        return;
    }
    if (st->flags & SF_CHUNKED_OUT)
        client_write(st, "0\r\n\r\n", 5);
    stream_unbind(st, reusable && (st->flags & SF_BODY_DONE));
    /* The backend answered before the whole body arrived, or the client or a
     * shutdown asked for the end of the connection. */
    bool keep = (st->flags & SF_BODY_DONE) && (st->flags & SF_RESP_KEEP) && !st->sc->draining;
    stream_end(st, keep ? STREAM_KEEP_ALIVE : STREAM_CLOSE, true);
}

static void stream_send_head(struct stream *st, struct evbuffer *head);

/* Re-sends the kept request head on a new upstream connection, once: the
 * pooled connection it went to had been closed by the backend. */
static bool stream_retry(struct stream *st)
{
    if (st->upstream_head == NULL || (st->flags & SF_RETRIED))
        return false;
    st->flags |= SF_RETRIED;
    if (st->trail.n > 0)
        st->trail.how[st->trail.n - 1] = UP_STALE;
    upstream_purge_siblings(st->up); /* likely as stale, at that server */
    stream_unbind(st, false);
    log_debug("#%llu.%u %s: retrying %s on a new backend connection",
              (unsigned long long)st->sc->conn_id, st->req_no, st->sc->peer,
              llhttp_method_name((llhttp_method_t)st->method));
    if (st->deleg_user != NULL) {
        /* A new connection needs a token of its own (one is never replayed). */
        evbuffer_free(st->upstream_head);
        st->upstream_head = NULL;
        stream_delegate(st, true);
        return true;
    }
    stream_send_head(st, NULL);
    return true;
}

static void up_error(void *arg, enum reason r, bool stale)
{
    struct stream *st = arg;
    if (st->stage == SS_DONE)
        return; /* ended already (stream_oom): released by stream_free() */
    if (stale && stream_retry(st))
        return;
    if (st->flags & SF_RESP_STARTED) {
        /* Part of the answer is out: the client can only learn of it by the close. */
        log_info("#%llu.%u %s: backend connection lost mid-response",
                 (unsigned long long)st->sc->conn_id, st->req_no, st->sc->peer);
        stream_unbind(st, false);
        st->reason = r;
        stream_end(st, STREAM_ABORT, true);
        return;
    }
    stream_refuse(st, (st->flags & SF_DISCARD) ? R_BACKEND_AUTH_FAILED : r);
}

static void up_writable(void *arg)
{
    struct stream *st = arg;
    if (!(st->flags & SF_BLOCKED) || st->stage == SS_DONE)
        return;
    st->flags &= ~SF_BLOCKED;
    st->sc->ops->more(st->sc->arg);
}

static void stream_token_start(struct stream *st);

static void up_connected(void *arg)
{
    struct stream *st = arg;
    if (st->stage == SS_AUTH && st->token == NULL && st->krb_job == NULL)
        stream_token_start(st); /* waited for the backend's certificate (channel binding) */
}

static const struct upstream_handler up_handler = {
    .head = up_head,
    .body = up_body,
    .done = up_done,
    .error = up_error,
    .writable = up_writable,
    .connected = up_connected,
};

void stream_client_writable(struct stream *st)
{
    if (st->up != NULL && (st->flags & SF_RESP_STARTED))
        upstream_read_pause(st->up, false);
}

/* ---- from a complete head to the backend -------------------------------------- */

static void parser_resume(struct stream *st)
{
    llhttp_resume(&st->parser);
    st->flags &= ~SF_PAUSED;
}

static bool stream_acquire(struct stream *st, unsigned flags)
{
    if (st->flags & SF_HEAD_METHOD)
        flags |= UPSTREAM_HEAD_REQUEST;
    st->up = upstream_acquire(st->sc->pool, &up_handler, st, flags, st->deleg_user, &st->trail);
    if (st->up == NULL) {
        stream_refuse(st, R_BACKEND_UNAVAILABLE);
        return false;
    }
    return true;
}

/* Writes the request head (built now, or the kept one with <head> NULL on a
 * retry) on the upstream connection, acquiring one when there is none. */
static void stream_send_head(struct stream *st, struct evbuffer *head)
{
    if (st->up == NULL && !stream_acquire(st, 0)) {
        if (head != NULL)
            evbuffer_free(head);
        return;
    }
    if (head == NULL) {
        /* A retry: the kept head once more. */
        const unsigned char *kept = evbuffer_pullup(st->upstream_head, -1);
        if (kept == NULL) {
            stream_oom(st, "request head");
            return;
        }
        upstream_write(st->up, kept, evbuffer_get_length(st->upstream_head));
        return;
    }
    if ((st->flags & SF_IDEMPOTENT) && !(st->flags & SF_HAS_BODY) && st->deleg_user == NULL) {
        /* Kept until the response starts: a pooled connection that the backend
         * had closed gets this request once more on a new connection. With
         * delegation, a new connection gets a new token instead. */
        const unsigned char *bytes = evbuffer_pullup(head, -1);
        if (bytes == NULL) {
            evbuffer_free(head);
            stream_oom(st, "request head");
            return;
        }
        upstream_write(st->up, bytes, evbuffer_get_length(head));
        st->upstream_head = head;
    } else {
        if ((st->flags & SF_IDEMPOTENT) && !(st->flags & SF_HAS_BODY) &&
            st->upstream_head == NULL && upstream_reused(st->up))
            st->upstream_head = evbuffer_new(); /* marks the request as retryable */
        upstream_write_buffer(st->up, head);
        evbuffer_free(head);
    }
}

/* Sends the request on: head (with the token, under delegation), any body held
 * in the read-ahead buffer, then the rest of the body as it arrives. */
static void stream_send(struct stream *st)
{
    struct stream_client *sc = st->sc;
    /* The connection first: the head's Host (when the client sent none) is
     * that of the server it goes to. */
    if (st->up == NULL && !stream_acquire(st, 0))
        return;
    struct evbuffer *head = evbuffer_new();
    if (head == NULL) {
        stream_refuse(st, R_BACKEND_UNAVAILABLE);
        return;
    }
    bool certs = sc->facts != NULL && st->cert_mode != CERT_IGNORE;
    bool mapped = (st->flags & SF_MAPPED) && st->ident.reason == R_NONE;
    struct http_forward f = {
        .head = &st->head,
        .method = st->method,
        .chunked = (st->flags & SF_CHUNKED) != 0,
        .has_body = (st->flags & SF_HAS_BODY) != 0,
        .content_length = st->content_length,
        .peer = sc->peer,
        .host_header = upstream_host_header(st->up),
        .facts = certs ? sc->facts : NULL,
        .ident = mapped ? &st->ident : NULL,
        .authorization = st->token != NULL && (st->flags & SF_TOKEN_SENT) ? st->token->header
                                                                          : NULL,
        .drop_authorization = sc->krb != NULL,
    };
    if (proxy_http_request_head(&f, head) < 0) {
        evbuffer_free(head); /* a head with a piece missing is never sent */
        stream_oom(st, "request head");
        return;
    }
    stream_send_head(st, head);
    if (st->stage == SS_DONE)
        return; /* refused: no backend connection */
    if (st->readahead != NULL) {
        upstream_write_buffer(st->up, st->readahead);
        evbuffer_free(st->readahead);
        st->readahead = NULL;
    }
    /* Sent: only the target stays, for the access log (with delegation the
     * whole head stays: a refused token is retried with a head built anew). */
    if (st->deleg_user == NULL)
        proxy_head_shrink_to_url(&st->head);
    if (st->flags & SF_BODY_DONE) {
        /* Read ahead whole: the parser stays paused at the message's end. */
        st->stage = SS_WAIT;
        evtimer_del(&st->timer);
        return;
    }
    if ((st->flags & SF_HAS_BODY) && (st->flags & SF_EXPECT))
        client_write(st, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    st->stage = SS_BODY;
    timer_arm(st, sc->conf->body_timeout_ms); /* body progress */
    parser_resume(st);
}

static void token_done(void *arg, struct krb_token *t)
{
    struct stream *st = arg;
    st->krb_job = NULL;
    unsigned long long id = (unsigned long long)st->sc->conn_id;
    if (t->reason != R_NONE) {
        log_info("#%llu.%u %s: delegation for %s: %s (%s)", id, st->req_no, st->sc->peer,
                 st->deleg_user, t->detail != NULL ? t->detail : "?", reason_name(t->reason));
        enum reason r = t->reason;
        krb_token_free(t);
        stream_refuse(st, r);
        return;
    }
    log_debug("#%llu.%u %s: delegated as %s (%s)", id, st->req_no, st->sc->peer,
              t->client != NULL ? t->client : st->deleg_user,
              t->cached ? "cached credential" : "KDC exchange");
    krb_token_free(st->token);
    st->token = t;
    st->flags |= SF_TOKEN_SENT;
    stream_send(st);
    if (st->stage != SS_DONE)
        st->sc->ops->more(st->sc->arg);
}

static void stream_token_start(struct stream *st)
{
    struct stream_client *sc = st->sc;
    size_t len = 0;
    const unsigned char *binding = NULL;
    if (sc->conf->deleg_binding == BINDING_AUTO && sc->conf->backend.https)
        binding = upstream_binding(st->up, &len);
    st->krb_job = krb_token_start(sc->krb, st->deleg_user, st->deleg_enterprise, binding, len,
                                  sc->post, sc->post_arg, token_done, st);
    if (st->krb_job == NULL)
        stream_refuse(st, R_KDC_UNAVAILABLE);
}

/* With delegation: a backend connection of the mapped user's own, and a token
 * when it needs one (a new connection, or send = always). <fresh>: a new
 * connection in any case (a retry). */
static void stream_delegate(struct stream *st, bool fresh)
{
    struct stream_client *sc = st->sc;
    if (st->deleg_user == NULL) {
        st->deleg_user =
            krb_user_name(sc->conf, st->ident.sam, st->ident.upn, &st->deleg_enterprise);
        if (st->deleg_user == NULL) {
            log_info("#%llu.%u %s: delegation: the account %s has no %s to impersonate",
                     (unsigned long long)sc->conn_id, st->req_no, sc->peer,
                     st->ident.dn != NULL ? st->ident.dn : "?",
                     sc->conf->deleg_impersonate == IMPERSONATE_UPN ? "userPrincipalName"
                                                                    : "sAMAccountName");
            stream_refuse(st, R_DELEGATION_REFUSED);
            return;
        }
    }
    if (!stream_acquire(st, fresh ? UPSTREAM_FRESH : 0))
        return;
    st->flags &= ~SF_TOKEN_SENT;
    if (upstream_reused(st->up) && sc->conf->deleg_send == SEND_FIRST) {
        stream_send(st); /* authenticated on its first request */
        return;
    }
    st->stage = SS_AUTH;
    timer_arm(st, sc->conf->deleg_timeout_ms);
    bool binding = sc->conf->deleg_binding == BINDING_AUTO && sc->conf->backend.https;
    if (binding && !upstream_connected(st->up))
        return; /* up_connected() starts the token once the certificate is known */
    stream_token_start(st);
}

/* The request is allowed: to the backend. */
static void stream_forward(struct stream *st)
{
    if (st->readahead != NULL) {
        /* The whole body is in memory: sent with its length, not re-chunked. */
        st->flags &= ~SF_CHUNKED;
        st->content_length = evbuffer_get_length(st->readahead);
        if (st->content_length > 0)
            st->flags |= SF_HAS_BODY;
        else
            st->flags &= ~SF_HAS_BODY;
    }
    now(&st->t_upstream);
    if (st->sc->krb != NULL && (st->flags & SF_MAPPED)) {
        if (st->ident.reason != R_NONE) {
            stream_refuse(st, R_DELEGATION_REFUSED); /* never reached: refused when mapped */
            return;
        }
        stream_delegate(st, false);
        return;
    }
    /* No account (a location with mapping = off, or no certificate where one
     * is optional): forwarded as nobody, as without delegation, on backend
     * connections of nobody's own (a connection a user's token authenticated
     * is never shared) and with no Authorization; the backend decides. */
    stream_send(st);
}

/* The location's policy: certificate mode and whether to map. false when the
 * request was refused (its target cannot be judged safely). */
static bool stream_policy(struct stream *st)
{
    const struct conf *cf = st->sc->conf;
    if (st->method == HTTP_CONNECT) {
        stream_refuse(st, R_BAD_REQUEST);
        return false;
    }
    char *path = proxy_http_policy_path(st->head.buf + st->head.url_off, st->head.url_len);
    if (path == NULL) {
        stream_refuse(st, R_BAD_REQUEST);
        return false;
    }
    const struct conf_location *loc = conf_location_for(cf, path, strlen(path));
    free(path);
    st->cert_mode = loc != NULL ? loc->client_certificate : cf->cert_mode;
    if (st->sc->mapper != NULL && st->cert_mode != CERT_IGNORE && (loc == NULL || loc->mapping))
        st->flags |= SF_WANT_MAPPING;
    st->flags |= SF_POLICY;
    return true;
}

static void stream_continue(struct stream *st)
{
    stream_run(st);
    if (st->stage != SS_DONE)
        st->sc->ops->more(st->sc->arg);
}

static void map_done(void *arg, const struct map_result *res)
{
    struct stream *st = arg;
    st->map_job = NULL;
    if (map_result_copy(&st->ident, res) < 0) {
        map_result_purge(&st->ident);
        st->ident.reason = R_DIRECTORY_UNAVAILABLE; /* out of memory: fail closed */
    }
    st->flags |= SF_MAPPED;
    stream_continue(st);
}

void stream_cert_answered(struct stream *st)
{
    if (st->stage != SS_LATE)
        return;
    st->stage = SS_POLICY;
    stream_continue(st);
}

void stream_cert_lost(struct stream *st, int status)
{
    if (st->stage == SS_DONE)
        return;
    st->status = status;
    st->reason = R_CERT_REQUIRED;
    stream_end(st, STREAM_ABORT, true);
}

/* Whether the request needs a certificate that was not asked for yet, and
 * the stream has started getting one: the body into the read-ahead buffer
 * first, or the question itself. */
static bool stream_get_cert(struct stream *st)
{
    struct stream_client *sc = st->sc;
    if (sc->facts != NULL || (st->flags & SF_LATE_ASKED) || sc->cert_asked)
        return false;
    bool body_pending = (st->flags & SF_HAS_BODY) && !(st->flags & SF_EXPECT) &&
                        !(st->flags & SF_BODY_DONE);
    if (body_pending && st->stage != SS_READAHEAD) {
        /* The body first, into the read-ahead buffer: no application data may
         * be in flight while TLS 1.2 renegotiates. Known too long: 413. */
        if (!(st->flags & SF_CHUNKED) && st->content_length > sc->conf->upload_read_ahead_size) {
            stream_refuse(st, R_READ_AHEAD_EXCEEDED);
            return true;
        }
        st->readahead = evbuffer_new();
        if (st->readahead == NULL) {
            stream_end(st, STREAM_ABORT, false); /* out of memory: the connection goes */
            return true;
        }
        st->stage = SS_READAHEAD;
        timer_arm(st, sc->conf->body_timeout_ms);
        parser_resume(st);
        return true;
    }
    st->flags |= SF_LATE_ASKED;
    if (!sc->ops->ask_cert(sc->arg))
        return false;
    st->stage = SS_LATE;
    timer_arm(st, sc->conf->header_timeout_ms);
    return true;
}

/* Takes <st> as far as it can go now. */
static void stream_run(struct stream *st)
{
    struct stream_client *sc = st->sc;
    if (st->stage == SS_POLICY && !(st->flags & SF_POLICY) && !stream_policy(st))
        return;
    if (st->stage == SS_POLICY || st->stage == SS_READAHEAD) {
        if (st->cert_mode != CERT_IGNORE) {
            if (sc->cert_reason != R_NONE) {
                stream_refuse(st, sc->cert_reason); /* a certificate was sent and is not acceptable */
                return;
            }
            if (stream_get_cert(st))
                return;
            if (sc->facts == NULL && st->cert_mode == CERT_REQUIRE) {
                stream_refuse(st, R_CERT_REQUIRED);
                return;
            }
        }
        if ((st->flags & SF_WANT_MAPPING) && sc->facts != NULL && !(st->flags & SF_MAPPED)) {
            st->stage = SS_MAP;
            evtimer_del(&st->timer); /* the directory's own timeout bounds the wait */
            st->map_job = map_job_start(sc->mapper, sc->facts, map_done, st, NULL, &st->ident);
            if (st->map_job != NULL)
                return;
            st->flags |= SF_MAPPED; /* answered from the cache */
        }
    }
    if (st->stage == SS_MAP && !(st->flags & SF_MAPPED))
        return;
    if (st->stage == SS_POLICY || st->stage == SS_READAHEAD || st->stage == SS_MAP) {
        if ((st->flags & SF_MAPPED) && st->ident.reason != R_NONE) {
            stream_refuse(st, st->ident.reason);
            return;
        }
        stream_forward(st);
    }
}

/* ---- feeding the parser -------------------------------------------------------- */

/* The parser paused: at the end of a head, or at the end of a body held in the
 * read-ahead buffer, the request goes on; at the end of a body being forwarded,
 * it stays paused until the response is done. */
static void after_pause(struct stream *st)
{
    if (st->stage == SS_POLICY || (st->stage == SS_READAHEAD && (st->flags & SF_BODY_DONE)))
        stream_run(st);
}

size_t stream_feed(struct stream *st, const char *data, size_t len)
{
    const struct conf *cf = st->sc->conf;
    size_t total = 0;
    bool kick = true; /* run the parser even without input: it may owe a callback */
    while (st->stage != SS_DONE && !(st->flags & (SF_PAUSED | SF_BLOCKED))) {
        if (st->up != NULL && upstream_output_length(st->up) > OUT_HIGH) {
            st->flags |= SF_BLOCKED; /* resumed by up_writable() */
            break;
        }
        size_t n = len - total;
        if (n == 0 && !kick)
            break;
        kick = false;
        const char *p = n > 0 ? data + total : "";
        st->feed_start = p;
        enum llhttp_errno err = llhttp_execute(&st->parser, p, n);
        size_t used = n;
        if (err != HPE_OK)
            used = (size_t)(llhttp_get_error_pos(&st->parser) - p);
        if (used > n)
            used = n;
        for (size_t i = used; i > 0; i--) {
            if (p[i - 1] != ' ' && p[i - 1] != '\t') {
                st->feed_prev = p[i - 1]; /* last byte before any trailing whitespace */
                break;
            }
        }
        if (st->stage == SS_HEAD || st->stage == SS_POLICY) {
            st->head_bytes += (uint32_t)used;
            if (st->head_bytes > cf->max_request_head) {
                st->bytes_in += used;
                total += used;
                stream_refuse(st, R_HEAD_TOO_LARGE);
                break;
            }
        } else if ((st->stage == SS_BODY || st->stage == SS_READAHEAD) && used > 0) {
            timer_arm(st, cf->body_timeout_ms);
        }
        st->bytes_in += used;
        total += used;
        if (err == HPE_OK)
            continue;
        if (err == HPE_PAUSED) {
            st->flags |= SF_PAUSED;
            after_pause(st);
            kick = true;
            continue;
        }
        if (err == HPE_PAUSED_UPGRADE) {
            /* Upgrade is never forwarded (hop-by-hop): carry on as plain HTTP. */
            llhttp_resume_after_upgrade(&st->parser);
            kick = true;
            continue;
        }
        if (st->flags & SF_OOM) {
            stream_oom(st, "request body");
            break;
        }
        enum reason why = st->reason != R_NONE ? st->reason : R_BAD_REQUEST;
        log_debug("#%llu.%u %s: bad request: %s (%s)", (unsigned long long)st->sc->conn_id,
                  st->req_no, st->sc->peer, llhttp_errno_name(err),
                  llhttp_get_error_reason(&st->parser));
        /* Head already forwarded: the backend must not see the rest. */
        stream_refuse(st, why);
        break;
    }
    return total;
}
