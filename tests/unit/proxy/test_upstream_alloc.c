/* Allocation failure on every allocation site of one request, with the real
 * upstream and with TLS. The stream (proxy/stream.c) runs as in
 * test_stream_alloc.c, but its requests go through the real proxy/upstream.c
 * and the idle pool (pool.c, backends.c) to a backend that this test runs on
 * the same event base: a plain TCP listener on 127.0.0.1 (an ephemeral port)
 * that reads each request and answers it with one write. The client is the
 * test too, on the other end of the transport's socket pair: plain, or a TLS
 * client of a server SSL made by tls/ from the test PKI, so that OpenSSL's
 * record buffers (SSL_MODE_RELEASE_BUFFERS: allocated and freed per read and
 * write) are on the request path. A small connection's side feeds the stream
 * from the transport's input, as proxy/conn.c does.
 *
 * The hooks (tests/support/alloc_hooks.c) count the project's allocations,
 * libevent's and OpenSSL's, armed once the client's handshake is done and
 * paused inside the test's own backend and client callbacks. Each scenario
 * runs once to count its allocations, then once for every N in 1..count with
 * the Nth failing, and must then fail cleanly: no crash, no hang (the run is
 * bounded), nothing half-formed reaching the backend (each request it got
 * is whole, with the forwarding header and without the client's identity
 * header) or the client (each answer whole, or none), and no leak: every
 * block allocated while the request ran is freed once the connection, the
 * pool and the contexts are (and LeakSanitizer in the ASan build). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <llhttp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/log.h"
#include "conf/conf.h"
#include "io/io.h"
#include "proxy/stream.h"
#include "proxy/upstream.h"
#include "tests/support/alloc_hooks.h"
#include "tests/support/stream_fixture.h"
#include "tests/support/testpki.h"
#include "tls/tls.h"

#define BODY "hello world, this is the answer"
#define UPLOAD "0123456789abcdefghijklmnopqrstuvwxyz"
#define MAX_REQS 2
#define BACKEND_CONNS 4
/* A run that has not ended by then hangs. */
#define RUN_DEADLINE_MS 3000

struct scenario {
    const char *name;
    bool tls;                  /* the client speaks TLS */
    bool chunked;              /* the backend answers chunked */
    const char *req[MAX_REQS]; /* each sent once the previous one is answered */
    unsigned n_req;
    const char *upload; /* the body every request carries, or NULL */
};

/* ---- HTTP messages, as llhttp reads them ------------------------------------------ */

struct msg {
    bool complete;
    int status;
    char body[512];
    size_t body_len;
    bool too_long;
};

static int msg_body(llhttp_t *p, const char *at, size_t len)
{
    struct msg *m = p->data;
    if (m->body_len + len >= sizeof m->body) {
        m->too_long = true;
        return 0;
    }
    memcpy(m->body + m->body_len, at, len);
    m->body_len += len;
    m->body[m->body_len] = '\0';
    return 0;
}

static int msg_complete(llhttp_t *p)
{
    struct msg *m = p->data;
    m->complete = true;
    return HPE_PAUSED;
}

/* The length of the first whole HTTP message of <type> at <buf>, with its
 * status and decoded body in <m>; 0 while it is not whole, -1 when it is
 * malformed. */
static long msg_whole(llhttp_type_t type, const char *buf, size_t len, struct msg *m)
{
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_body = msg_body;
    s.on_message_complete = msg_complete;
    llhttp_t p;
    llhttp_init(&p, type, &s);
    *m = (struct msg){.complete = false};
    p.data = m;
    if (len == 0)
        return 0;
    enum llhttp_errno e = llhttp_execute(&p, buf, len);
    if (e == HPE_PAUSED && m->complete && !m->too_long) {
        m->status = p.status_code;
        return llhttp_get_error_pos(&p) - buf;
    }
    return e == HPE_OK ? 0 : -1;
}

/* ---- the backend ---------------------------------------------------------------------- */

struct backend_conn {
    int fd; /* -1: free */
    struct event *ev;
    char in[16384]; /* received, not yet a whole request */
    size_t len;
};

struct backend {
    const struct scenario *sc;
    struct event_base *base;
    int lfd;
    struct event *lev;
    char port[8];
    struct backend_conn c[BACKEND_CONNS];
    int n_accepted, n_requests;
    char broken[512];                 /* what was wrong with a request, "" when nothing */
    char partial[BACKEND_CONNS * 64]; /* a connection closed or left inside a request */
};

static void backend_answer(struct backend *b, int fd)
{
    char out[1024];
    int n;
    if (!b->sc->chunked) {
        n = snprintf(out, sizeof out,
                     "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n\r\n%s",
                     strlen(BODY), BODY);
    } else {
        n = snprintf(out, sizeof out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        for (size_t off = 0; off < strlen(BODY); off += 7) {
            size_t k = strlen(BODY) - off < 7 ? strlen(BODY) - off : 7;
            n +=
                snprintf(out + n, sizeof out - (size_t)n, "%zx\r\n%.*s\r\n", k, (int)k, BODY + off);
        }
        n += snprintf(out + n, sizeof out - (size_t)n, "0\r\n\r\n");
    }
    /* one write: the answer reaches certmapd whole, in one read */
    if (write(fd, out, (size_t)n) != n)
        snprintf(b->broken, sizeof b->broken, "the answer could not be written: %s",
                 strerror(errno));
}

/* A request is whole, forwarded as it should be. */
static void backend_check(struct backend *b, const char *req, size_t len, const struct msg *m)
{
    char head[8192];
    snprintf(head, sizeof head, "%.*s", (int)len, req);
    if (strstr(head, "\r\nX-Forwarded-For: 127.0.0.9\r\n") == NULL ||
        strstr(head, "forged") != NULL)
        snprintf(b->broken, sizeof b->broken, "a broken request head:\n%.400s", head);
    else if (b->sc->upload != NULL && strcmp(m->body, b->sc->upload) != 0)
        snprintf(b->broken, sizeof b->broken, "a request body that is not the client's:\n%.400s",
                 head);
}

static void backend_close(struct backend *b, struct backend_conn *c)
{
    if (c->len > 0 && strlen(b->partial) + 64 < sizeof b->partial)
        snprintf(b->partial + strlen(b->partial), 64, "[%zu bytes of a request] ", c->len);
    event_free(c->ev);
    close(c->fd);
    *c = (struct backend_conn){.fd = -1};
}

static void backend_read(evutil_socket_t fd, short what, void *arg)
{
    struct backend *b = arg;
    bool armed = alloc_hooks_pause();
    struct backend_conn *c = NULL;
    for (int i = 0; i < BACKEND_CONNS; i++)
        if (b->c[i].fd == fd)
            c = &b->c[i];
    ssize_t n = read(fd, c->in + c->len, sizeof c->in - c->len);
    if (n <= 0 && !(n < 0 && errno == EAGAIN)) {
        backend_close(b, c);
        alloc_hooks_resume(armed);
        return;
    }
    c->len += n > 0 ? (size_t)n : 0;
    long used;
    struct msg m;
    while ((used = msg_whole(HTTP_REQUEST, c->in, c->len, &m)) > 0) {
        b->n_requests++;
        backend_check(b, c->in, (size_t)used, &m);
        memmove(c->in, c->in + used, c->len - (size_t)used);
        c->len -= (size_t)used;
        backend_answer(b, fd);
    }
    if (used < 0)
        snprintf(b->broken, sizeof b->broken, "a malformed request:\n%.*s", (int)c->len, c->in);
    alloc_hooks_resume(armed);
}

static void backend_accept(evutil_socket_t lfd, short what, void *arg)
{
    struct backend *b = arg;
    bool armed = alloc_hooks_pause();
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    struct backend_conn *c = NULL;
    for (int i = 0; i < BACKEND_CONNS && c == NULL; i++)
        if (b->c[i].fd < 0)
            c = &b->c[i];
    if (fd >= 0 && c == NULL) {
        snprintf(b->broken, sizeof b->broken, "more than %d backend connections", BACKEND_CONNS);
        close(fd);
    } else if (fd >= 0) {
        b->n_accepted++;
        c->fd = fd;
        c->ev = event_new(b->base, fd, EV_READ | EV_PERSIST, backend_read, b);
        assert_non_null(c->ev);
        assert_int_equal(event_add(c->ev, NULL), 0);
    }
    alloc_hooks_resume(armed);
}

static void backend_open(struct backend *b, struct event_base *base, const struct scenario *sc)
{
    *b = (struct backend){.sc = sc, .base = base};
    for (int i = 0; i < BACKEND_CONNS; i++)
        b->c[i].fd = -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    b->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    assert_true(b->lfd >= 0);
    assert_int_equal(bind(b->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(b->lfd, 8), 0);
    assert_int_equal(getsockname(b->lfd, (struct sockaddr *)&sa, &len), 0);
    snprintf(b->port, sizeof b->port, "%u", ntohs(sa.sin_port));
    b->lev = event_new(base, b->lfd, EV_READ | EV_PERSIST, backend_accept, b);
    assert_non_null(b->lev);
    assert_int_equal(event_add(b->lev, NULL), 0);
}

static void backend_shut(struct backend *b)
{
    for (int i = 0; i < BACKEND_CONNS; i++)
        if (b->c[i].fd >= 0)
            backend_close(b, &b->c[i]);
    event_free(b->lev);
    close(b->lfd);
}

/* ---- the client and the connection's side ------------------------------------------ */

struct fixture {
    const struct scenario *sc;
    struct stream_fixture sf;
    struct backend be;
    char host_header[32];
    struct tls_ctx *tls; /* the server's; NULL: plain */
    SSL_CTX *cl_ctx;
    SSL *cl;             /* the client's end, over sf.peer_fd */
    bool handshaken;     /* the server's side reported it */
    struct event *cl_ev; /* the client reads what it is sent */
    char got[16384];     /* what the client read */
    size_t got_len, parsed;
    unsigned n_sent, n_answers;
    bool got_eof;
    char bad_answer[512];
    /* the connection's side */
    struct stream *st;
    struct event *later; /* the stream is freed, and fed, from here (a clean stack) */
    struct event *tick;  /* wakes the loop up, for the deadline */
    bool over, feed, closed, no_stream;
    bool io_failed; /* the client's transport failed: what it had queued is lost */
    enum stream_end end;
    unsigned n_over;
};

/* Sends request <fx>->n_sent as the client (not counted: the test's). */
static void client_send(struct fixture *fx)
{
    const char *req = fx->sc->req[fx->n_sent++];
    int n = fx->cl != NULL ? SSL_write(fx->cl, req, (int)strlen(req))
                           : (int)write(fx->sf.peer_fd, req, strlen(req));
    assert_int_equal(n, (int)strlen(req));
}

static void client_read(evutil_socket_t fd, short what, void *arg)
{
    struct fixture *fx = arg;
    bool armed = alloc_hooks_pause();
    for (;;) {
        size_t room = sizeof fx->got - 1 - fx->got_len;
        int n = fx->cl != NULL ? SSL_read(fx->cl, fx->got + fx->got_len, (int)room)
                               : (int)read(fd, fx->got + fx->got_len, room);
        if (n > 0) {
            fx->got_len += (size_t)n;
            continue;
        }
        bool again = fx->cl != NULL ? SSL_get_error(fx->cl, n) == SSL_ERROR_WANT_READ
                                    : n < 0 && errno == EAGAIN;
        if (!again) {
            fx->got_eof = true;
            event_del(fx->cl_ev);
        }
        ERR_clear_error();
        break;
    }
    fx->got[fx->got_len] = '\0';
    long used;
    struct msg m;
    while ((used = msg_whole(HTTP_RESPONSE, fx->got + fx->parsed, fx->got_len - fx->parsed, &m)) >
           0) {
        fx->parsed += (size_t)used;
        fx->n_answers++;
        if (m.status == 200 && strcmp(m.body, BODY) != 0)
            snprintf(fx->bad_answer, sizeof fx->bad_answer, "a 200 without its body:\n%.400s",
                     fx->got);
        if (m.status == 200 && fx->n_sent == fx->n_answers && fx->n_sent < fx->sc->n_req)
            client_send(fx); /* keep-alive: the next request once this one is answered */
    }
    if (used < 0)
        snprintf(fx->bad_answer, sizeof fx->bad_answer, "a malformed answer:\n%.400s", fx->got);
    alloc_hooks_resume(armed);
}

/* Hands the client's bytes to the stream, one stream per request (conn_feed). */
static void conn_feed(struct fixture *fx)
{
    struct evbuffer *in = io_input(fx->sf.io);
    while (!fx->closed && !fx->over) {
        if (fx->st == NULL) {
            if (evbuffer_get_length(in) == 0)
                return;
            fx->sf.sc.n_requests++;
            fx->st = stream_new(&fx->sf.sc);
            if (fx->st == NULL) {
                fx->closed = fx->no_stream = true; /* the connection closes */
                return;
            }
        }
        /* the first chain of the input; none ("") lets a stream go on */
        struct evbuffer_iovec v[1];
        bool some = evbuffer_peek(in, -1, NULL, v, 1) > 0 && v[0].iov_len > 0;
        size_t len = some ? v[0].iov_len : 0;
        size_t taken = stream_feed(fx->st, some ? (const char *)v[0].iov_base : "", len);
        evbuffer_drain(in, taken);
        if (!some || taken < len || evbuffer_get_length(in) == 0)
            return; /* the stream waits, is over, or has had everything */
    }
}

static void conn_close(struct fixture *fx)
{
    stream_free(fx->st); /* a request on its way is logged (499) */
    fx->st = NULL;
    fx->closed = true;
}

static void later_cb(evutil_socket_t fd, short what, void *arg)
{
    struct fixture *fx = arg;
    if (fx->over) {
        fx->over = false;
        stream_free(fx->st);
        fx->st = NULL;
        fx->n_over++;
        if (fx->end != STREAM_KEEP_ALIVE) {
            fx->closed = true; /* after its answer is written */
            return;
        }
    }
    fx->feed = false;
    conn_feed(fx);
}

static void ops_more(void *arg)
{
    struct fixture *fx = arg;
    fx->feed = true;
    event_active(fx->later, 0, 0);
}

static void ops_done(void *arg, enum stream_end how)
{
    struct fixture *fx = arg;
    fx->over = true;
    fx->end = how;
    event_active(fx->later, 0, 0);
}

static bool ops_ask_cert(void *arg)
{
    return false;
}

static const struct stream_client_ops conn_ops = {
    .ask_cert = ops_ask_cert, .more = ops_more, .done = ops_done};

static void io_read_cb(void *arg)
{
    struct fixture *fx = arg;
    if (!fx->closed)
        conn_feed(fx);
}

static void io_drained_cb(void *arg)
{
    struct fixture *fx = arg;
    if (fx->st != NULL)
        stream_client_writable(fx->st);
}

static void io_event_cb(void *arg, enum io_event ev)
{
    struct fixture *fx = arg;
    if (ev == IO_EV_HANDSHAKE)
        fx->handshaken = true;
    else if (ev == IO_EV_EOF || ev == IO_EV_ERROR) {
        fx->io_failed = ev == IO_EV_ERROR;
        conn_close(fx);
    }
}

static const struct io_handler conn_io = {
    .read = io_read_cb, .drained = io_drained_cb, .event = io_event_cb};

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
}

static struct tls_ctx *server_tls(void)
{
    static char cert[512], key[512];
    struct conf c;
    char err[512] = "";
    memset(&c, 0, sizeof c);
    c.certificate = testpki_path(cert, sizeof cert, "server-chain.pem");
    c.private_key = testpki_path(key, sizeof key, "server.key");
    if (c.certificate == NULL || c.private_key == NULL)
        fail_msg("CERTMAPD_TEST_PKI is not set (ctest sets it; or run tests/pki/mkpki.sh DIR)");
    c.min_protocol = TLS1_2_VERSION;
    c.cert_mode = CERT_IGNORE;
    struct tls_ctx *t = tls_ctx_new(&c, err, sizeof err);
    if (t == NULL)
        fail_msg("tls_ctx_new: %s", err);
    return t;
}

/* The client's handshake with the transport's server side, on the loop. */
static void client_handshake(struct fixture *fx)
{
    fx->cl_ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(fx->cl_ctx);
    fx->cl = SSL_new(fx->cl_ctx);
    assert_non_null(fx->cl);
    assert_int_equal(SSL_set_fd(fx->cl, fx->sf.peer_fd), 1);
    SSL_set_connect_state(fx->cl);
    bool done = false;
    for (int i = 0; i < 10000 && !(done && fx->handshaken); i++) {
        if (!done) {
            int r = SSL_do_handshake(fx->cl);
            done = r == 1;
            int e = done ? SSL_ERROR_NONE : SSL_get_error(fx->cl, r);
            if (e != SSL_ERROR_NONE && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                fail_msg("the client's handshake failed: %d", e);
        }
        event_base_loop(fx->sf.base, EVLOOP_NONBLOCK);
        if (!(done && fx->handshaken))
            usleep(100);
    }
    if (!done || !fx->handshaken)
        fail_msg("no TLS handshake");
}

static struct fixture *fixture_new(const struct scenario *sc)
{
    struct fixture *fx = calloc(1, sizeof *fx);
    char err[256];
    assert_non_null(fx);
    fx->sc = sc;
    SSL *ssl = NULL;
    if (sc->tls) {
        fx->tls = server_tls();
        ssl = tls_conn_new(fx->tls);
        assert_non_null(ssl);
    }
    if (stream_fixture_open_tls(&fx->sf, &conn_io, fx, "certmapd-upstream-alloc", ssl, err,
                                sizeof err) != 0)
        fail_msg("the stream's fixture: %s", err);
    io_set_marks(fx->sf.io, 64 * 1024, 128 * 1024); /* proxy/conn.c's */
    struct conf *c = &fx->sf.conf;
    /* Far past the run's deadline: on loopback, with a backend that answers
     * at once, a failure that only a timeout would end is a hang. */
    c->header_timeout_ms = c->body_timeout_ms = 60000;
    c->backend_connect_timeout_ms = c->backend_read_timeout_ms = 60000;
    c->keepalive_connections = 4;
    c->backend_fail_timeout_ms = 0; /* a failed connect does not hold the next run back */
    backend_open(&fx->be, fx->sf.base, sc);
    snprintf(fx->host_header, sizeof fx->host_header, "127.0.0.1:%s", fx->be.port);
    c->backends[0] = (struct conf_backend_url){
        .host = "127.0.0.1", .port = fx->be.port, .host_header = fx->host_header};
    c->n_backends = 1;
    c->backend = c->backends[0];
    struct backend_set *bs = backend_set_new(c, err, sizeof err);
    if (bs == NULL)
        fail_msg("backend_set_new: %s", err);
    upstream_pool_init(&fx->sf.pool, fx->sf.base, c, bs, NULL); /* as proxy/worker.c does */
    fx->sf.sc.ops = &conn_ops;
    fx->sf.sc.arg = fx;
    fx->sf.sc.n_requests = 0;
    fx->later = event_new(fx->sf.base, -1, 0, later_cb, fx);
    fx->tick = event_new(fx->sf.base, -1, EV_PERSIST, tick_cb, fx);
    fx->cl_ev = event_new(fx->sf.base, fx->sf.peer_fd, EV_READ | EV_PERSIST, client_read, fx);
    assert_non_null(fx->later);
    assert_non_null(fx->tick);
    assert_non_null(fx->cl_ev);
    struct timeval tv = {.tv_sec = 0, .tv_usec = 50000};
    assert_int_equal(event_add(fx->tick, &tv), 0);
    if (sc->tls)
        client_handshake(fx);
    assert_int_equal(event_add(fx->cl_ev, NULL), 0);
    return fx;
}

static void fixture_free(struct fixture *fx)
{
    conn_close(fx);
    struct backend_set *bs = fx->sf.pool.backend;
    upstream_pool_purge(&fx->sf.pool);
    backend_shut(&fx->be);
    event_free(fx->later);
    event_free(fx->tick);
    event_free(fx->cl_ev);
    SSL_free(fx->cl);
    SSL_CTX_free(fx->cl_ctx);
    stream_fixture_close(&fx->sf);
    backend_set_free(bs);
    tls_ctx_free(fx->tls);
    free(fx);
}

static bool finished(const struct fixture *fx)
{
    return fx->closed || fx->n_over == fx->sc->n_req;
}

static long ms_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

/* ---- the runs -------------------------------------------------------------------------- */

/* Runs <sc> once with allocation <fail> failing (0: none); returns how many
 * allocations it made (OpenSSL's in <n_openssl>), after checking that it
 * failed cleanly. */
static long run_once(const struct scenario *sc, long fail, long *n_openssl)
{
    struct fixture *fx = fixture_new(sc);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    alloc_hooks_arm(fail);
    bool armed = alloc_hooks_pause();
    client_send(fx);
    alloc_hooks_resume(armed);
    while (!finished(fx) && ms_since(&t0) < RUN_DEADLINE_MS)
        event_base_loop(fx->sf.base, EVLOOP_ONCE);
    for (int i = 0; i < 10; i++)
        event_base_loop(fx->sf.base, EVLOOP_NONBLOCK); /* the last answer out, and read */
    alloc_hooks_pause();
    long count = alloc_hooks.n_allocs;
    *n_openssl = alloc_hooks.n_openssl;

    if (!finished(fx))
        fail_msg("allocation %ld of %ld failed: the request hangs (%u of %u over, after %d ms)",
                 fail, count, fx->n_over, sc->n_req, RUN_DEADLINE_MS);
    if (fx->be.broken[0] != '\0')
        fail_msg("allocation %ld failed: the backend got %s", fail, fx->be.broken);
    if (fx->bad_answer[0] != '\0')
        fail_msg("allocation %ld failed: the client got %s", fail, fx->bad_answer);
    if (fx->parsed < fx->got_len)
        fail_msg("allocation %ld failed: the client got part of an answer:\n%s", fail,
                 fx->got + fx->parsed);
    /* A request the stream ended well was answered, whole, unless the
     * transport failed (the connection closes on it). */
    unsigned kept = fx->n_over - (fx->closed && fx->end != STREAM_KEEP_ALIVE ? 1 : 0);
    if (!fx->io_failed && fx->n_answers < kept)
        fail_msg("allocation %ld failed: %u request(s) ended well, %u answer(s):\n%s", fail, kept,
                 fx->n_answers, fx->got);
    if (fail == 0) {
        /* The count run is the scenario as it should go. */
        assert_int_equal(alloc_hooks.n_failed, 0);
        assert_int_equal(fx->n_answers, sc->n_req);
        assert_int_equal(fx->be.n_requests, (int)sc->n_req);
        assert_int_equal(fx->be.n_accepted, 1); /* a second request reuses the pooled one */
        assert_false(fx->closed);
        assert_non_null(strstr(fx->got, "HTTP/1.1 200 "));
    }
    /* A request that reached the backend reached it whole: no connection
     * ended, or stays, inside one. */
    for (int i = 0; i < BACKEND_CONNS; i++)
        if (fx->be.c[i].fd >= 0 && fx->be.c[i].len > 0)
            fail_msg("allocation %ld failed: the backend holds %zu bytes of a request:\n%.*s", fail,
                     fx->be.c[i].len, (int)fx->be.c[i].len, fx->be.c[i].in);
    if (fx->be.partial[0] != '\0')
        fail_msg("allocation %ld failed: a backend connection closed inside a request: %s", fail,
                 fx->be.partial);
    fixture_free(fx);
    /* Every block the request allocated is freed, by the request or by the
     * teardown of what it belonged to. */
    if (alloc_hooks.n_live != 0)
        fail_msg("allocation %ld of %ld failed: %ld block(s) allocated by the request leaked", fail,
                 count, alloc_hooks.n_live);
    return count;
}

static void run_scenario(const struct scenario *sc)
{
    long n_openssl = 0, ignored;
    long count = run_once(sc, 0, &n_openssl);
    assert_true(count > 5); /* the hooks see the request's allocations */
    if (sc->tls)
        assert_true(n_openssl > 0); /* ... and OpenSSL's */
    for (long n = 1; n <= count; n++)
        run_once(sc, n, &ignored);
    print_message("%s: %ld allocations (%ld of them OpenSSL's), each failed in turn\n", sc->name,
                  count, n_openssl);
}

#define GET_PING                                                                                   \
    "GET /Microsoft-Server-ActiveSync?Cmd=Ping HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n"           \
    "X-Remote-User: forged\r\n\r\n"
#define POST_SYNC                                                                                  \
    "POST /Microsoft-Server-ActiveSync?Cmd=Sync HTTP/1.1\r\nHost: x\r\n"                           \
    "Content-Type: application/vnd.ms-sync.wbxml\r\nContent-Length: 36\r\n\r\n" UPLOAD

static struct scenario scenarios[] = {
    {.name = "GET, Content-Length answer", .req = {GET_PING}, .n_req = 1},
    {.name = "GET, chunked answer", .chunked = true, .req = {GET_PING}, .n_req = 1},
    {.name = "POST with a body", .req = {POST_SYNC}, .n_req = 1, .upload = UPLOAD},
    {.name = "keep-alive, pooled backend connection", .req = {GET_PING, GET_PING}, .n_req = 2},
    {.name = "TLS: GET, Content-Length answer", .tls = true, .req = {GET_PING}, .n_req = 1},
    {.name = "TLS: POST with a body, chunked answer",
     .tls = true,
     .chunked = true,
     .req = {POST_SYNC},
     .n_req = 1,
     .upload = UPLOAD},
    {.name = "TLS: keep-alive, pooled backend connection",
     .tls = true,
     .req = {GET_PING, GET_PING},
     .n_req = 2},
};

static void test_every_allocation_fails(void **state)
{
    run_scenario(*state);
}

int main(void)
{
    /* Before OpenSSL or libevent allocates anything: theirs go through the hooks too. */
    if (alloc_hooks_install(true) != 0) {
        fprintf(stderr, "OpenSSL allocated before main: its allocations cannot be hooked\n");
        return 1;
    }
    cm_log_set_level(CM_LOG_ERROR); /* every failed run logs why, at warn or info */
    /* OpenSSL's per-thread error state, made before any run: not a leak of one. */
    ERR_clear_error();
    struct CMUnitTest tests[sizeof scenarios / sizeof scenarios[0]];
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
        tests[i] = (struct CMUnitTest){.name = scenarios[i].name,
                                       .test_func = test_every_allocation_fails,
                                       .initial_state = &scenarios[i]};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
