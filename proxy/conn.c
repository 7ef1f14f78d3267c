/* Client connections (conn.h): the transport, the TLS verdict, one stream at a
 * time, and the connection's own life: handshake, idle, active, closing.
 *
 * A stream never frees itself and is never freed under its own feet: when it
 * is over it says so (ops->done), and the connection frees it from a callback
 * of its own (<later>), with a clean stack, before it goes on with the next
 * request or closes. */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <netdb.h>
#include <event2/event_struct.h> /* struct event embedded, set up with event_assign() */

#include "common/log.h"
#include "conf/conf.h"
#include "io/io.h"
#include "metrics/metrics.h"
#include "proxy/conn.h"
#include "proxy/ppread.h"
#include "proxy/stream.h"
#include "tls/tls.h"

/* Most a client may have sent ahead of the parser (pipelined requests). */
#define IN_HIGH (64 * 1024)
/* A response is relayed to the client until this much waits to be written. */
#define OUT_LOW (128 * 1024)
/* A lingering close: once the last answer is out, close_notify and a TCP
 * half-close; then what the client still sends (the rest of a refused upload)
 * is read and dropped for a short while, so that its unread bytes do not turn
 * into a reset that destroys the answer before the client has read it. */
#define LINGER_MS 2000
/* A client that does not read its last answer is dropped after this long. */
#define FINAL_WRITE_MS 10000

enum conn_state {
    CONN_HANDSHAKE = 0, /* TLS handshake in progress */
    CONN_IDLE,          /* between requests */
    CONN_ACTIVE,        /* a stream runs */
    CONN_CLOSING,       /* the last answer is being written, then a lingering close */
    CONN_PROXY_HEADER,  /* a proxy_protocol listener's: the PROXY header, before TLS */
};

#define CF_FEED 0x1u        /* feed the stream again, from <later> */
#define CF_STREAM_OVER 0x2u /* the stream is over: free it from <later>, then <end> */
#define CF_CRL_WAIT 0x4u    /* a verdict waits for a CRL fetch or OCSP answer (crl_fetch, ocsp) */
#define CF_CRL_LATE 0x8u    /* ... the verdict on a late certificate */
/* How often a verdict waiting for a CRL fetch or OCSP answer looks again. */
#define CRL_POLL_MS 20

struct proxy_conn {
    struct conn_env *env;
    struct io *io;
    struct event timer; /* handshake, keep-alive and closing timeouts */
    struct event later; /* work deferred to a clean stack */
    struct stream *st;  /* the request in progress, or NULL */
    struct stream_client sc;
    struct cert_facts *facts; /* the verified client certificate, or NULL */
    enum conn_state state;
    unsigned flags;
    unsigned crl_polls; /* CF_CRL_WAIT: how often <later> looked */
    time_t checked;     /* when the accepted certificate was last judged (conn_recheck) */
    enum stream_end end;
    char peer[64];      /* the client: the L4 peer, or the PROXY header's source */
    char via[64];       /* the L4 peer when a PROXY header named the client, else "" */
    struct pp_read *pp; /* CONN_PROXY_HEADER: reading the header off <fd> */
    int fd;             /* CONN_PROXY_HEADER: the socket, not yet the transport's; else -1 */
    TAILQ_ENTRY(proxy_conn) link;
};

/* Connection ids, unique in the process, for log lines (relayd's se_id). */
static _Atomic uint64_t next_conn_id = 1;

static void conn_feed(struct proxy_conn *c);

static void timer_arm(struct proxy_conn *c, uint64_t ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(&c->timer, &tv);
}

/* The per-state gauge of <s>: waiting for a PROXY header counts as a handshake. */
static int gauge_of(enum conn_state s)
{
    return s == CONN_PROXY_HEADER ? MG_CONN_HANDSHAKE : MG_CONN_HANDSHAKE + (int)s;
}

/* Every change of state goes through here: the per-state gauges follow it.
 * A connection that becomes idle goes to the end of the list, so that the
 * idle ones stand in the order they became idle (proxy_conn_reclaim_idle). */
static void conn_state_set(struct proxy_conn *c, enum conn_state s)
{
    metrics_gauge_add(gauge_of(c->state), -1);
    metrics_gauge_add(gauge_of(s), 1);
    c->state = s;
    if (s == CONN_IDLE) {
        TAILQ_REMOVE(&c->env->conns, c, link);
        TAILQ_INSERT_TAIL(&c->env->conns, c, link);
    }
}

static void conn_close(struct proxy_conn *c)
{
    struct conn_env *env = c->env;
    metrics_gauge_add(gauge_of(c->state), -1);
    stream_free(c->st); /* a request still on its way is logged (499) */
    c->st = NULL;
    io_free(c->io);
    pp_read_free(c->pp);
    if (c->fd >= 0)
        close(c->fd);
    evtimer_del(&c->timer);
    event_del(&c->later);
    tls_facts_free(c->facts);
    TAILQ_REMOVE(&env->conns, c, link);
    env->n_conns--;
    free(c);
    env->gone(env->gone_arg);
}

/* Ends the connection once what is queued for the client is written. */
static void conn_close_after_flush(struct proxy_conn *c)
{
    if (!io_is_open(c->io)) {
        conn_close(c); /* the transport is dead: nothing more can be sent */
        return;
    }
    conn_state_set(c, CONN_CLOSING);
    io_close_write(c->io);
    timer_arm(c, io_output_length(c->io) > 0 ? FINAL_WRITE_MS : LINGER_MS);
}

/* ---- the certificate ----------------------------------------------------------- */

/* Judges the certificate the client sent in a handshake that just ended (the
 * first, or a late one), which then holds for the connection, and frees the
 * intermediates, which nothing needs afterwards. Returns what a log line says
 * of the certificate: its subject, the refusal, or <none>. */
static const char *conn_judge_certificate(struct proxy_conn *c, const char *none)
{
    SSL *ssl = io_ssl(c->io);
    tls_facts_free(c->facts);
    c->facts = NULL;
    c->sc.cert_reason = tls_conn_verdict(c->env->tls, ssl, CERT_ACCEPT, &c->facts);
    c->sc.facts = c->facts;
    c->checked = time(NULL);
    c->sc.cert_asked = tls_conn_cert_asked(c->env->tls, ssl);
    tls_conn_drop_chain(ssl);
    return c->facts        ? c->facts->subject
           : c->sc.cert_reason ? reason_name(c->sc.cert_reason)
                                : none;
}

/* Before a later request on the connection: the accepted certificate judged
 * again (at most once a second), so that a CRL or OCSP answer that revokes it,
 * or its expiry, refuses the connection's next request rather than only its
 * next connection (an EAS device keeps one for hours). A request in flight,
 * a held Ping, is not cut: it was admitted. */
static void conn_recheck(struct proxy_conn *c)
{
    time_t now = time(NULL);
    if (c->facts == NULL || now == c->checked)
        return;
    c->checked = now;
    enum reason r = tls_conn_recheck(c->env->tls, io_ssl(c->io));
    if (r == R_NONE)
        return;
    log_info("#%llu %s: the client certificate %s no longer holds (%s): refused from the "
             "connection's next request on",
             (unsigned long long)c->sc.conn_id, c->peer, c->facts->subject, reason_name(r));
    c->sc.cert_reason = r;
    c->sc.facts = NULL;
    tls_facts_free(c->facts);
    c->facts = NULL;
}

/* Whether the verdict on the certificate just received waits a little for
 * the CRL of its issuer or its OCSP answer (crl_fetch, ocsp): at most
 * crl_fetch_timeout, polled from <later>; <late>: CF_CRL_LATE for a late
 * certificate, 0 for the first handshake's. */
static bool conn_crl_wait(struct proxy_conn *c, unsigned late)
{
    if (c->crl_polls * (uint64_t)CRL_POLL_MS >= c->env->conf->crl_fetch_timeout_ms ||
        !tls_conn_crl_pending(c->env->tls, io_ssl(c->io)))
        return false;
    c->crl_polls++;
    c->flags |= CF_CRL_WAIT | late;
    struct timeval tv = {.tv_sec = 0, .tv_usec = CRL_POLL_MS * 1000};
    event_add(&c->later, &tv);
    return true;
}

/* The end of the first handshake. The verdict is computed once per connection
 * (verification itself ran in the handshake, or, for a resumed session, not
 * at all: tls_conn_verdict re-checks validity and revocation either way),
 * after the CRL of the certificate's issuer, when it is being fetched, has
 * come or crl_fetch_timeout has passed; meanwhile what the client sends waits
 * in the input (the state stays CONN_HANDSHAKE). */
static void conn_handshake_done(struct proxy_conn *c)
{
    if (conn_crl_wait(c, 0))
        return;
    const char *cert = conn_judge_certificate(c, "none");
    metrics_inc(tls_conn_resumed(io_ssl(c->io)) ? MT_HS_RESUMED_OK : MT_HS_FULL_OK);
    conn_state_set(c, CONN_IDLE);
    log_debug("#%llu %s: %s handshake done, certificate %s%s", (unsigned long long)c->sc.conn_id,
              c->peer, tls_conn_protocol(io_ssl(c->io)), cert,
              c->crl_polls > 0 ? " (after waiting for its CRL)" : "");
}

/* The end of a late certificate request: the same, for the stream that waits. */
static void conn_late_done(struct proxy_conn *c)
{
    if (conn_crl_wait(c, CF_CRL_LATE))
        return;
    const char *cert = conn_judge_certificate(c, "none sent");
    metrics_inc(MT_HS_LATE_OK);
    log_debug("#%llu %s: late certificate: %s", (unsigned long long)c->sc.conn_id, c->peer, cert);
    if (c->st != NULL)
        stream_cert_answered(c->st);
}

/* The stream's ops->ask_cert: a certificate, now, by renegotiation (TLS 1.2)
 * or post-handshake authentication (TLS 1.3). */
static bool conn_ask_cert(void *arg)
{
    struct proxy_conn *c = arg;
    enum tls_late how = io_request_cert(c->io, c->env->tls);
    c->sc.cert_asked = true;
    switch (how) {
    case TLS_LATE_RENEGOTIATE:
    case TLS_LATE_PHA:
        return true;
    case TLS_LATE_NO_PHA:
        log_info("#%llu %s: a client certificate is needed, but this TLS 1.3 client did not "
                 "offer post-handshake authentication (negotiate_at_handshake = yes asks for it "
                 "in the handshake)",
                 (unsigned long long)c->sc.conn_id, c->peer);
        return false;
    case TLS_LATE_ASKED_ALREADY:
        return false;
    case TLS_LATE_FAILED:
        log_info("#%llu %s: could not ask for a client certificate late",
                 (unsigned long long)c->sc.conn_id, c->peer);
        return false;
    }
    return false;
}

/* The transport ended while the stream waited for the client's certificate:
 * no answer can reach the client (OpenSSL has failed the connection), but the
 * request is logged, once, with the verdict: cert_required, with 499 when the
 * client closed the connection itself, 403 otherwise. */
static void conn_late_failed(struct proxy_conn *c, bool eof)
{
    unsigned long e = io_tls_error(c->io);
    int status = reason_status(R_CERT_REQUIRED);
    unsigned long long id = (unsigned long long)c->sc.conn_id;
    metrics_inc(MT_HS_LATE_FAILED);
    switch (tls_late_failure(e, eof)) {
    case TLS_LATE_NO_RENEGOTIATION:
        log_info("#%llu %s: a client certificate is needed, but this TLS 1.2 client refused "
                 "renegotiation (no_renegotiation alert); negotiate_at_handshake = yes asks "
                 "for it in the handshake",
                 id, c->peer);
        break;
    case TLS_LATE_CLOSED:
        log_info("#%llu %s: the client closed the connection instead of answering the request "
                 "for a client certificate",
                 id, c->peer);
        status = 499; /* gone, as any client that leaves mid-request */
        break;
    case TLS_LATE_BROKEN:
        log_info("#%llu %s: the client's answer to the request for a client certificate "
                 "failed: %s",
                 id, c->peer, tls_error_text(e));
        break;
    }
    stream_cert_lost(c->st, status);
}

/* ---- the stream's requests ---------------------------------------------------------- */

static void conn_more(void *arg)
{
    struct proxy_conn *c = arg;
    c->flags |= CF_FEED;
    event_active(&c->later, 0, 0);
}

static void conn_stream_done(void *arg, enum stream_end how)
{
    struct proxy_conn *c = arg;
    c->flags |= CF_STREAM_OVER;
    c->end = how;
    event_active(&c->later, 0, 0);
}

static const struct stream_client_ops conn_stream_ops = {
    .ask_cert = conn_ask_cert,
    .more = conn_more,
    .done = conn_stream_done,
};

static void later_cb(evutil_socket_t fd, short what, void *arg)
{
    struct proxy_conn *c = arg;
    if (c->flags & CF_CRL_WAIT) {
        bool late = c->flags & CF_CRL_LATE;
        c->flags &= ~(CF_CRL_WAIT | CF_CRL_LATE);
        if (!late) {
            conn_handshake_done(c);
            if (c->state == CONN_IDLE)
                conn_feed(c); /* what the client sent meanwhile */
            return;
        }
        if (!(c->flags & CF_STREAM_OVER)) {
            conn_late_done(c);
            return;
        }
        /* the stream ended while its late certificate waited: as below */
    }
    if (c->flags & CF_STREAM_OVER) {
        c->flags &= ~(CF_STREAM_OVER | CF_FEED);
        stream_free(c->st);
        c->st = NULL;
        if (c->end != STREAM_KEEP_ALIVE || c->env->draining) {
            conn_close_after_flush(c);
            return;
        }
        conn_state_set(c, CONN_IDLE);
        timer_arm(c, c->env->conf->keepalive_timeout_ms);
    }
    c->flags &= ~CF_FEED;
    conn_feed(c);
}

/* Hands what the client sent to the stream, starting one per request. */
static void conn_feed(struct proxy_conn *c)
{
    struct evbuffer *in = io_input(c->io);
    while (c->state == CONN_IDLE || c->state == CONN_ACTIVE) {
        if (c->flags & CF_STREAM_OVER)
            return; /* <later> goes on */
        if (c->st == NULL) {
            if (evbuffer_get_length(in) == 0)
                return;
            if (c->sc.n_requests > 0)
                conn_recheck(c);
            c->sc.n_requests++;
            c->st = stream_new(&c->sc);
            if (c->st == NULL) {
                log_warn("#%llu %s: out of memory for a request",
                         (unsigned long long)c->sc.conn_id, c->peer);
                conn_close(c);
                return;
            }
            conn_state_set(c, CONN_ACTIVE);
            evtimer_del(&c->timer); /* the stream times its own stages */
        }
        struct evbuffer_iovec v = {.iov_base = NULL, .iov_len = 0};
        evbuffer_peek(in, -1, NULL, &v, 1);
        size_t n = v.iov_len;
        size_t used = stream_feed(c->st, n > 0 ? v.iov_base : "", n);
        evbuffer_drain(in, used);
        if (used < n || n == 0 || evbuffer_get_length(in) == 0)
            return; /* the stream waits, is over, or has had everything */
    }
}

/* ---- the transport's callbacks ------------------------------------------------------- */

static void conn_read_cb(void *arg)
{
    struct proxy_conn *c = arg;
    if (c->state == CONN_CLOSING) {
        struct evbuffer *in = io_input(c->io);
        evbuffer_drain(in, evbuffer_get_length(in)); /* lingering: read and dropped */
        return;
    }
    conn_feed(c);
}

static void conn_drained_cb(void *arg)
{
    struct proxy_conn *c = arg;
    if (c->st != NULL)
        stream_client_writable(c->st); /* the backend may send more */
}

static void conn_event_cb(void *arg, enum io_event ev)
{
    struct proxy_conn *c = arg;
    char why[256];
    switch (ev) {
    case IO_EV_HANDSHAKE:
        conn_handshake_done(c);
        return;
    case IO_EV_LATE_DONE:
        c->crl_polls = 0;
        conn_late_done(c);
        return;
    case IO_EV_CONNECTED:
        return;
    case IO_EV_EOF:
    case IO_EV_ERROR:
        break;
    }
    if (c->state == CONN_CLOSING && ev == IO_EV_EOF) {
        /* After our close_notify OpenSSL reports what the client still sends
         * (the rest of a refused upload) as the end: closing now would turn
         * that unread data into a reset that destroys the answer before the
         * client has read it. The linger timer (conn_close_after_flush) ends it. */
        return;
    }
    if (c->state == CONN_HANDSHAKE)
        metrics_inc(io_tls_error(c->io) != 0 ? MT_HS_FULL_FAILED : MT_HS_FULL_CLOSED);
    if (c->state == CONN_HANDSHAKE && ev == IO_EV_ERROR)
        log_debug("#%llu %s: TLS handshake failed: %s", (unsigned long long)c->sc.conn_id,
                  c->peer, io_error_text(c->io, why, sizeof why));
    if (c->st != NULL && stream_awaits_cert(c->st))
        conn_late_failed(c, ev == IO_EV_EOF);
    conn_close(c);
}

static const struct io_handler conn_io_handler = {
    .read = conn_read_cb,
    .drained = conn_drained_cb,
    .event = conn_event_cb,
};

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct proxy_conn *c = arg;
    static const char *const what_timed_out[] = {
        [CONN_HANDSHAKE] = "handshake",
        [CONN_IDLE] = "keep-alive",
        [CONN_ACTIVE] = "request",
        [CONN_CLOSING] = "final write",
        [CONN_PROXY_HEADER] = "PROXY header",
    };
    if (c->state == CONN_PROXY_HEADER)
        log_info("#%llu %s: refused: no whole PROXY header within header_timeout",
                 (unsigned long long)c->sc.conn_id, c->peer);
    else
        log_debug("#%llu %s: %s timeout", (unsigned long long)c->sc.conn_id, c->peer,
              what_timed_out[c->state]);
    if (c->state == CONN_HANDSHAKE)
        metrics_inc(MT_HS_FULL_TIMEOUT);
    conn_close(c);
}

/* ---- life ----------------------------------------------------------------------------- */

/* Hands <fd> to a new transport with a TLS object: the handshake starts. */
static void conn_start_tls(struct proxy_conn *c, int fd)
{
    SSL *ssl = NULL;
    c->io = io_new(c->env->base, &conn_io_handler, c);
    ssl = tls_conn_new(c->env->tls);
    if (c->io == NULL || ssl == NULL) {
        tls_conn_free(ssl);
        close(fd);
        goto fail;
    }
    io_set_marks(c->io, IN_HIGH, OUT_LOW);
    c->sc.io = c->io;
    conn_state_set(c, CONN_HANDSHAKE);
    if (io_accept(c->io, fd, ssl) < 0) /* owns both from now on */
        goto fail;
    return;
fail:
    log_warn("cannot accept a connection: out of resources");
    conn_close(c);
}

/* ppread's verdict on the PROXY header: the client's address from it, then TLS. */
static void conn_pp_cb(void *arg, enum pp_read_end end, const struct pp_result *r,
                       const char *why)
{
    struct proxy_conn *c = arg;
    unsigned long long id = (unsigned long long)c->sc.conn_id;
    if (end != PPR_DONE) { /* <why> may live in c->pp: conn_close frees it after the log */
        if (end == PPR_BAD)
            log_info("#%llu %s: refused: %s (this listener expects a PROXY header)", id, c->peer,
                     why);
        else
            log_debug("#%llu %s: %s", id, c->peer, why);
        conn_close(c);
        return;
    }
    if (r->has_addr) {
        char client[sizeof c->peer];
        if (getnameinfo((const struct sockaddr *)&r->src, r->src_len, client, sizeof client, NULL,
                        0, NI_NUMERICHOST) == 0) {
            memcpy(c->via, c->peer, sizeof c->via);
            memcpy(c->peer, client, sizeof c->peer);
            c->sc.via = c->via;
        }
    }
    log_debug("#%llu %s: PROXY v%d header of %zu bytes%s%s", id, c->peer, r->version, r->len,
              c->sc.via != NULL ? " from " : " without a client address: kept ",
              c->sc.via != NULL ? c->via : "the L4 peer");
    pp_read_free(c->pp);
    c->pp = NULL;
    int fd = c->fd;
    c->fd = -1;
    conn_start_tls(c, fd);
}

bool proxy_conn_accept(struct conn_env *env, const struct conf_listen *l, int fd,
                       const struct sockaddr *sa, socklen_t salen)
{
    struct proxy_conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        log_warn("cannot accept a connection: out of resources");
        close(fd);
        return false;
    }
    c->env = env;
    c->fd = -1;
    if (getnameinfo(sa, salen, c->peer, sizeof c->peer, NULL, 0, NI_NUMERICHOST) != 0)
        snprintf(c->peer, sizeof c->peer, "?");
    evtimer_assign(&c->timer, env->base, conn_timer_cb, c);
    event_assign(&c->later, env->base, -1, 0, later_cb, c);
    c->sc = (struct stream_client){
        .conf = env->conf,
        .mapper = env->mapper,
        .alog = env->alog,
        .pool = env->pool,
        .krb = env->krb,
        .post = env->post,
        .post_arg = env->post_arg,
        .peer = c->peer,
        .conn_id = atomic_fetch_add_explicit(&next_conn_id, 1, memory_order_relaxed),
        .ops = &conn_stream_ops,
        .arg = c,
    };
    TAILQ_INSERT_TAIL(&env->conns, c, link);
    env->n_conns++;
    metrics_inc(MT_CONN_ACCEPTED);
    metrics_gauge_add(gauge_of(c->state), 1);   /* CONN_HANDSHAKE */
    timer_arm(c, env->conf->header_timeout_ms); /* PROXY header, handshake and first head */
    if (l == NULL || !l->proxy_protocol) {
        conn_start_tls(c, fd);
        return true;
    }
    conn_state_set(c, CONN_PROXY_HEADER);
    c->fd = fd;
    if (!pp_from_allowed(env->conf, sa)) {
        log_info("#%llu %s: refused: not in [server] proxy_protocol_from",
                 (unsigned long long)c->sc.conn_id, c->peer);
        conn_close(c);
        return true;
    }
    c->pp = pp_read_new(env->base, fd, conn_pp_cb, c);
    if (c->pp == NULL) {
        log_warn("cannot accept a connection: out of resources");
        conn_close(c);
    }
    return true;
}

void proxy_conn_drain(struct conn_env *env)
{
    struct proxy_conn *c, *next;
    for (c = TAILQ_FIRST(&env->conns); c != NULL; c = next) {
        next = TAILQ_NEXT(c, link);
        c->sc.draining = true;
        if (c->state == CONN_IDLE || c->state == CONN_HANDSHAKE ||
            c->state == CONN_PROXY_HEADER)
            conn_close(c);
    }
}

void proxy_conn_retire(struct conn_env *env)
{
    struct proxy_conn *c, *next;
    env->draining = true;
    for (c = TAILQ_FIRST(&env->conns); c != NULL; c = next) {
        next = TAILQ_NEXT(c, link);
        c->sc.draining = true;
        if (c->state == CONN_IDLE && c->sc.n_requests > 0 &&
            evbuffer_get_length(io_input(c->io)) == 0)
            conn_close(c);
    }
}

unsigned proxy_conn_reclaim_idle(struct conn_env *env, unsigned max)
{
    unsigned n = 0;
    struct proxy_conn *c, *next;
    for (c = TAILQ_FIRST(&env->conns); c != NULL && n < max; c = next) {
        next = TAILQ_NEXT(c, link);
        /* Idle after a request, nothing of the next one read: as a keep-alive
         * timeout would close it (one that has had no request yet is young). */
        if (c->state == CONN_IDLE && c->sc.n_requests > 0 && c->flags == 0 &&
            evbuffer_get_length(io_input(c->io)) == 0) {
            log_debug("#%llu %s: idle connection closed to make room",
                      (unsigned long long)c->sc.conn_id, c->peer);
            metrics_inc(MT_CONN_RECLAIMED);
            conn_close(c);
            n++;
        }
    }
    return n;
}

void proxy_conn_close_all(struct conn_env *env)
{
    struct proxy_conn *c;
    while ((c = TAILQ_FIRST(&env->conns)) != NULL)
        conn_close(c);
}
