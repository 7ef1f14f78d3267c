/* loadgen: an HTTPS load generator that presents client certificates.
 *
 * One thread, one libevent loop, non-blocking sockets driven through OpenSSL
 * directly (no bufferevents: the client must cost as little as it can, the
 * server is what is measured). Modes:
 *   handshake  a new TLS connection per request (--resume: offer the newest
 *              session ticket, so the server does a resumed handshake)
 *   keepalive  --connections connections, requests back to back on each
 *   idle       --connections connections, one request on each, then all are
 *              held open for --hold seconds (the runner samples the server's RSS)
 *   held       --connections connections, each sends an EAS long poll (POST
 *              Cmd=Ping with a 16-byte WBXML body) that the backend holds; no
 *              answer is expected while they are held for --hold seconds
 * Every run is bounded: by --requests or --duration, and by --max-time.
 * Prints one JSON line on stdout and one human line on stderr. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define LG_BUF 16384
#define LG_MAX_HEAD 8192
#define LG_DEFAULT_MAX_TIME 600
#define LG_IDLE_RAMP 64

enum lg_mode { MODE_HANDSHAKE, MODE_KEEPALIVE, MODE_IDLE, MODE_HELD };

/* Held mode's request: what a device sends to wait for new mail. The body is
 * <Ping><HeartbeatInterval>3540</HeartbeatInterval></Ping> in WBXML (code page
 * 13), 16 bytes. */
#define LG_PING_PATH "/Microsoft-Server-ActiveSync?Cmd=Ping&User=u&DeviceId=d&DeviceType=t"
static const unsigned char lg_ping_body[16] = {0x03, 0x01, 0x6a, 0x00, 0x00, 0x0d, 0x45, 0x48,
                                               0x03, '3',  '5',  '4',  '0',  0x00, 0x01, 0x01};

/* Where a connection is in its life. */
enum lg_state { ST_CONNECT, ST_HANDSHAKE, ST_WRITE, ST_READ, ST_HOLD };

struct lg_opts {
    enum lg_mode mode;
    const char *host, *path, *cafile, *cert, *key, *cert_list, *ready_file;
    int port, connections, tls12, resume;
    long requests;
    double duration, hold, timeout, max_time;
};

/* One client identity: a leaf, its intermediates and its key. */
struct lg_ident {
    X509 *leaf;
    STACK_OF(X509) * chain;
    EVP_PKEY *key;
};

struct lg;

struct lg_conn {
    struct lg *lg;
    struct event *ev;
    SSL *ssl;
    int fd;
    enum lg_state state;
    uint64_t t_start;
    size_t wr_off;
    /* response parsing */
    char buf[LG_BUF];
    size_t len;
    int head_done, chunked, close_after;
    int status;          /* of the response being read */
    long long body_left; /* -1: until EOF */
    long long chunk_left;
    int chunk_state; /* 0 size line, 1 data, 2 CRLF after data, 3 trailers */
};

struct lg {
    struct lg_opts o;
    struct event_base *base;
    struct event *stop_ev;
    SSL_CTX *ctx;
    SSL_SESSION *session; /* newest ticket, for --resume */
    struct sockaddr_in addr;
    struct lg_ident *idents;
    size_t nident, next_ident;
    struct lg_conn *conns;
    char request[1024];
    size_t request_len;
    uint64_t t0, deadline;
    long started, done, errors, non2xx, resumed, handshakes, reconnects, timeouts;
    long connect_err, tls_err, http_err;
    long holding, in_ramp, opened;
    int stopping, ready_written;
    uint64_t t_ready; /* idle and held modes: when every connection was held */
    uint32_t *lat;
    size_t nlat, caplat;
    char first_err[256];
};

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void __attribute__((format(printf, 2, 3))) note_err(struct lg *lg, const char *fmt, ...)
{
    if (lg->first_err[0] != '\0')
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(lg->first_err, sizeof lg->first_err, fmt, ap);
    va_end(ap);
}

/* Idle and held modes open every connection once, hold them, and never retry. */
static int holds(const struct lg *lg)
{
    return lg->o.mode == MODE_IDLE || lg->o.mode == MODE_HELD;
}

static void conn_event(evutil_socket_t fd, short what, void *arg);
static void conn_start(struct lg_conn *c);
static void write_ready_file(struct lg *lg);
static void hold_done(evutil_socket_t fd, short what, void *arg);

/* Whether another request may begin: the count and the clock both allow it. */
static int may_start(struct lg *lg)
{
    if (lg->stopping)
        return 0;
    if (holds(lg))
        return lg->opened < lg->o.connections;
    if (lg->o.requests > 0 && lg->started >= lg->o.requests)
        return 0;
    return now_us() < lg->deadline;
}

static void maybe_finish(struct lg *lg)
{
    if (holds(lg))
        return; /* the hold timer ends an idle run */
    long active = lg->started - lg->done - lg->errors;
    if (active <= 0 && !may_start(lg))
        event_base_loopexit(lg->base, NULL);
}

static void record_latency(struct lg *lg, uint64_t us)
{
    if (lg->nlat == lg->caplat) {
        size_t cap = lg->caplat ? lg->caplat * 2 : 65536;
        uint32_t *p = realloc(lg->lat, cap * sizeof *p);
        if (p == NULL)
            return; /* the percentiles lose a sample, the counts stay right */
        lg->lat = p;
        lg->caplat = cap;
    }
    lg->lat[lg->nlat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

/* Closes the socket without TIME_WAIT (linger 0) and frees the SSL quietly:
 * marking it shut down keeps its session resumable. */
static void conn_close(struct lg_conn *c)
{
    if (c->ev != NULL)
        event_del(c->ev);
    if (c->ssl != NULL) {
        SSL_set_shutdown(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        struct linger l = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        close(c->fd);
        c->fd = -1;
    }
}

static void conn_wait(struct lg_conn *c, short what)
{
    struct timeval tv = {
        .tv_sec = (time_t)c->lg->o.timeout,
        .tv_usec = (suseconds_t)((c->lg->o.timeout - (double)(time_t)c->lg->o.timeout) * 1e6)};
    event_del(c->ev);
    event_assign(c->ev, c->lg->base, c->fd, what, conn_event, c);
    event_add(c->ev, c->state == ST_HOLD ? NULL : &tv);
}

static void deferred_start(evutil_socket_t fd, short what, void *arg);

/* Starts <c> again from the event loop, not from this stack: a server that
 * refuses at once must not turn the retries into a recursion. */
static void conn_defer_start(struct lg_conn *c)
{
    struct timeval zero = {0, 0};
    event_del(c->ev);
    event_assign(c->ev, c->lg->base, -1, 0, deferred_start, c);
    event_add(c->ev, &zero);
}

/* Idle and held modes: keep LG_IDLE_RAMP connections opening until all are
 * open (held: their requests sent), then arm the hold timer and write the
 * ready file. */
static void idle_progress(struct lg *lg)
{
    while (lg->in_ramp < LG_IDLE_RAMP && may_start(lg)) {
        struct lg_conn *next = &lg->conns[lg->opened];
        lg->opened++;
        lg->in_ramp++;
        conn_defer_start(next);
    }
    if (lg->opened == lg->o.connections && lg->in_ramp == 0 && lg->stop_ev == NULL) {
        struct timeval tv = {.tv_sec = (time_t)lg->o.hold,
                             .tv_usec =
                                 (suseconds_t)((lg->o.hold - (double)(time_t)lg->o.hold) * 1e6)};
        lg->t_ready = now_us();
        write_ready_file(lg);
        lg->stop_ev = evtimer_new(lg->base, hold_done, lg);
        if (lg->stop_ev == NULL || evtimer_add(lg->stop_ev, &tv) < 0)
            event_base_loopexit(lg->base, NULL);
    }
}

/* A request failed: count it, drop the connection, start over if allowed
 * (idle mode does not retry: each slot is one connection). */
static void conn_fail(struct lg_conn *c, long *counter)
{
    struct lg *lg = c->lg;
    conn_close(c);
    lg->errors++;
    (*counter)++;
    if (holds(lg)) {
        lg->in_ramp--;
        idle_progress(lg);
        return;
    }
    if (may_start(lg))
        conn_defer_start(c);
    maybe_finish(lg);
}

static void begin_request(struct lg_conn *c)
{
    c->state = ST_WRITE;
    c->wr_off = 0;
    c->len = 0;
    c->head_done = c->chunked = c->close_after = 0;
    c->status = 0;
    c->body_left = 0;
    c->chunk_left = 0;
    c->chunk_state = 0;
}

static void write_ready_file(struct lg *lg)
{
    if (lg->o.ready_file == NULL || lg->ready_written)
        return;
    lg->ready_written = 1;
    FILE *f = fopen(lg->o.ready_file, "w");
    if (f == NULL) {
        note_err(lg, "cannot write %s: %s", lg->o.ready_file, strerror(errno));
        return;
    }
    fprintf(f, "%ld\n", lg->holding);
    fclose(f);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct lg *lg = arg;
    (void)sig;
    (void)what;
    lg->stopping = 1;
    event_base_loopexit(lg->base, NULL);
}

static void hold_done(evutil_socket_t fd, short what, void *arg)
{
    struct lg *lg = arg;
    lg->stopping = 1;
    event_base_loopexit(lg->base, NULL);
}

/* A whole response arrived: record it, then go on as the mode says. */
static void response_done(struct lg_conn *c, int status)
{
    struct lg *lg = c->lg;
    lg->done++;
    if (status < 200 || status > 299) {
        lg->non2xx++;
        note_err(lg, "HTTP status %d", status);
    }
    record_latency(lg, now_us() - c->t_start);

    if (holds(lg)) {
        c->state = ST_HOLD;
        lg->holding++;
        lg->in_ramp--;
        /* still watch for reads: a server closing an idle connection is news */
        conn_wait(c, EV_READ);
        idle_progress(lg);
        return;
    }
    if (lg->o.mode == MODE_KEEPALIVE && !c->close_after) {
        if (may_start(lg)) {
            lg->started++;
            begin_request(c);
            c->t_start = now_us();
            conn_event(c->fd, EV_WRITE, c);
        } else {
            conn_close(c);
            maybe_finish(lg);
        }
        return;
    }
    if (lg->o.mode == MODE_KEEPALIVE)
        lg->reconnects++;
    conn_close(c);
    if (may_start(lg))
        conn_start(c);
    maybe_finish(lg);
}

/* Finds <name>: in the head (case-insensitive) and copies its value. */
static int head_value(const char *head, size_t len, const char *name, char *out, size_t outlen)
{
    size_t nl = strlen(name);
    const char *p = head, *end = head + len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL)
            break;
        if ((size_t)(eol - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            size_t vl = (size_t)(eol - v);
            while (vl > 0 && (v[vl - 1] == '\r' || v[vl - 1] == ' '))
                vl--;
            if (vl >= outlen)
                return -1;
            memcpy(out, v, vl);
            out[vl] = '\0';
            return 1;
        }
        p = eol + 1;
    }
    return 0;
}

/* Parses the head in c->buf. Returns the status (>0), 0 when more bytes are
 * needed, -1 when the response is malformed. Body bytes are moved to the front. */
static int parse_head(struct lg_conn *c, int *status)
{
    char *end = NULL;
    for (size_t i = 3; i < c->len; i++) {
        if (c->buf[i] == '\n' && c->buf[i - 1] == '\r' && c->buf[i - 2] == '\n' &&
            c->buf[i - 3] == '\r') {
            end = c->buf + i + 1;
            break;
        }
    }
    if (end == NULL)
        return c->len >= LG_MAX_HEAD ? -1 : 0;
    size_t hlen = (size_t)(end - c->buf);
    if (hlen < 12 || memcmp(c->buf, "HTTP/1.", 7) != 0 || c->buf[8] != ' ')
        return -1;
    int st = 0;
    for (int i = 9; i < 12; i++) {
        if (c->buf[i] < '0' || c->buf[i] > '9')
            return -1;
        st = st * 10 + (c->buf[i] - '0');
    }
    *status = st;
    char v[64];
    if (head_value(c->buf, hlen, "Connection", v, sizeof v) == 1 && strcasecmp(v, "close") == 0)
        c->close_after = 1;
    int te = head_value(c->buf, hlen, "Transfer-Encoding", v, sizeof v);
    if (te == 1 && strcasecmp(v, "chunked") == 0) {
        c->chunked = 1;
    } else if (te != 0) {
        return -1;
    } else if (head_value(c->buf, hlen, "Content-Length", v, sizeof v) == 1) {
        char *e;
        errno = 0;
        long long n = strtoll(v, &e, 10);
        if (errno != 0 || *e != '\0' || n < 0 || e == v)
            return -1;
        c->body_left = n;
    } else if (st == 204 || st == 304) {
        c->body_left = 0;
    } else {
        c->body_left = -1;
        c->close_after = 1;
    }
    memmove(c->buf, end, c->len - hlen);
    c->len -= hlen;
    c->head_done = 1;
    return st;
}

/* Consumes chunked body bytes from c->buf. Returns 1 when the body is
 * complete, 0 when more is needed, -1 when malformed. */
static int eat_chunked(struct lg_conn *c)
{
    size_t off = 0;
    int rc = 0;
    while (off < c->len) {
        if (c->chunk_state == 1) {
            size_t take =
                (size_t)c->chunk_left < c->len - off ? (size_t)c->chunk_left : c->len - off;
            off += take;
            c->chunk_left -= (long long)take;
            if (c->chunk_left == 0)
                c->chunk_state = 2;
            continue;
        }
        char *nl = memchr(c->buf + off, '\n', c->len - off);
        if (nl == NULL)
            break;
        size_t linelen = (size_t)(nl - (c->buf + off));
        const char *line = c->buf + off;
        off += linelen + 1;
        if (c->chunk_state == 0) {
            char *e;
            errno = 0;
            long long n = strtoll(line, &e, 16);
            if (errno != 0 || e == line || n < 0 || n > (1LL << 40))
                return -1;
            c->chunk_left = n;
            c->chunk_state = n == 0 ? 3 : 1;
        } else if (c->chunk_state == 2) {
            if (linelen > 1)
                return -1;
            c->chunk_state = 0;
        } else if (linelen <= 1) {
            rc = 1; /* empty line after the trailers */
            break;
        }
    }
    memmove(c->buf, c->buf + off, c->len - off);
    c->len -= off;
    if (rc == 0 && c->len >= LG_BUF)
        return -1; /* a line longer than the buffer */
    return rc;
}

static void conn_ssl_error(struct lg_conn *c, const char *what, int ret)
{
    struct lg *lg = c->lg;
    unsigned long e = ERR_peek_error();
    if (e != 0)
        note_err(lg, "%s: %s", what, ERR_reason_error_string(e));
    else
        note_err(lg, "%s: SSL error %d (%s)", what, SSL_get_error(c->ssl, ret),
                 errno ? strerror(errno) : "closed");
    ERR_clear_error();
    conn_fail(c, &lg->tls_err);
}

/* Drives the connection as far as it can go without blocking. */
static void conn_step(struct lg_conn *c)
{
    struct lg *lg = c->lg;
    for (;;) {
        switch (c->state) {
        case ST_CONNECT: {
            int err = 0;
            socklen_t el = sizeof err;
            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err != 0) {
                note_err(lg, "connect: %s", strerror(err ? err : errno));
                conn_fail(c, &lg->connect_err);
                return;
            }
            c->state = ST_HANDSHAKE;
            break;
        }
        case ST_HANDSHAKE: {
            ERR_clear_error();
            errno = 0;
            int r = SSL_connect(c->ssl);
            if (r == 1) {
                lg->handshakes++;
                if (SSL_session_reused(c->ssl))
                    lg->resumed++;
                begin_request(c);
                break;
            }
            int se = SSL_get_error(c->ssl, r);
            if (se == SSL_ERROR_WANT_READ || se == SSL_ERROR_WANT_WRITE) {
                conn_wait(c, se == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE);
                return;
            }
            conn_ssl_error(c, "handshake", r);
            return;
        }
        case ST_WRITE: {
            ERR_clear_error();
            errno = 0;
            int r = SSL_write(c->ssl, lg->request + c->wr_off, (int)(lg->request_len - c->wr_off));
            if (r > 0) {
                c->wr_off += (size_t)r;
                if (c->wr_off < lg->request_len)
                    break;
                if (lg->o.mode == MODE_HELD) {
                    /* the long poll is in flight: from now on, nothing may come */
                    c->state = ST_HOLD;
                    lg->holding++;
                    lg->in_ramp--;
                    conn_wait(c, EV_READ);
                    idle_progress(lg);
                    return;
                }
                c->state = ST_READ;
                break;
            }
            int se = SSL_get_error(c->ssl, r);
            if (se == SSL_ERROR_WANT_READ || se == SSL_ERROR_WANT_WRITE) {
                conn_wait(c, se == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE);
                return;
            }
            conn_ssl_error(c, "write", r);
            return;
        }
        case ST_READ: {
            if (c->len == LG_BUF) {
                note_err(lg, "response head larger than %d bytes", LG_MAX_HEAD);
                conn_fail(c, &lg->http_err);
                return;
            }
            ERR_clear_error();
            errno = 0;
            int r = SSL_read(c->ssl, c->buf + c->len, (int)(LG_BUF - c->len));
            if (r <= 0) {
                int se = SSL_get_error(c->ssl, r);
                if (se == SSL_ERROR_WANT_READ || se == SSL_ERROR_WANT_WRITE) {
                    conn_wait(c, se == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE);
                    return;
                }
                if ((se == SSL_ERROR_ZERO_RETURN || se == SSL_ERROR_SYSCALL) && c->head_done &&
                    c->body_left == -1) {
                    response_done(c, c->status);
                    return;
                }
                conn_ssl_error(c, c->head_done ? "reading the body" : "reading the response", r);
                return;
            }
            c->len += (size_t)r;
            if (!c->head_done) {
                int st = parse_head(c, &c->status);
                if (st < 0) {
                    note_err(lg, "malformed response head");
                    conn_fail(c, &lg->http_err);
                    return;
                }
                if (st == 0)
                    break;
            }
            if (c->chunked) {
                int d = eat_chunked(c);
                if (d < 0) {
                    note_err(lg, "malformed chunked body");
                    conn_fail(c, &lg->http_err);
                    return;
                }
                if (d == 1) {
                    response_done(c, c->status);
                    return;
                }
            } else if (c->body_left >= 0) {
                if ((long long)c->len > c->body_left) {
                    note_err(lg, "bytes after the response body");
                    conn_fail(c, &lg->http_err);
                    return;
                }
                c->body_left -= (long long)c->len;
                c->len = 0;
                if (c->body_left == 0) {
                    response_done(c, c->status);
                    return;
                }
            } else {
                c->len = 0;
            }
            break;
        }
        case ST_HOLD: {
            char b[256];
            int r = SSL_read(c->ssl, b, sizeof b);
            if (r <= 0 && SSL_get_error(c->ssl, r) == SSL_ERROR_WANT_READ)
                return;
            note_err(lg, lg->o.mode == MODE_HELD ? "server answered or closed a held request"
                                                 : "server closed or wrote on an idle connection");
            lg->holding--;
            conn_close(c);
            lg->errors++;
            lg->http_err++;
            return;
        }
        }
    }
}

static void conn_event(evutil_socket_t fd, short what, void *arg)
{
    struct lg_conn *c = arg;
    if (what & EV_TIMEOUT) {
        note_err(c->lg, "timed out after %.1f s", c->lg->o.timeout);
        conn_fail(c, &c->lg->timeouts);
        return;
    }
    conn_step(c);
}

static void conn_start(struct lg_conn *c)
{
    struct lg *lg = c->lg;
    lg->started++;
    c->t_start = now_us();
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        note_err(lg, "socket: %s", strerror(errno));
        conn_fail(c, &lg->connect_err);
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->ssl = SSL_new(lg->ctx);
    if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1) {
        note_err(lg, "SSL_new failed");
        conn_fail(c, &lg->tls_err);
        return;
    }
    SSL_set_app_data(c->ssl, lg);
    if (lg->nident > 0) {
        /* many identities: a different certificate on every new connection */
        struct lg_ident *id = &lg->idents[lg->next_ident++ % lg->nident];
        if (SSL_use_certificate(c->ssl, id->leaf) != 1 ||
            SSL_use_PrivateKey(c->ssl, id->key) != 1 || SSL_set1_chain(c->ssl, id->chain) != 1) {
            note_err(lg, "cannot use a client identity");
            conn_fail(c, &lg->tls_err);
            return;
        }
    }
    if (lg->o.resume && lg->session != NULL)
        SSL_set_session(c->ssl, lg->session);
    c->state = ST_CONNECT;
    if (connect(c->fd, (const struct sockaddr *)&lg->addr, sizeof lg->addr) < 0 &&
        errno != EINPROGRESS) {
        note_err(lg, "connect: %s", strerror(errno));
        conn_fail(c, &lg->connect_err);
        return;
    }
    conn_wait(c, EV_WRITE);
}

static void deferred_start(evutil_socket_t fd, short what, void *arg)
{
    struct lg_conn *c = arg;
    if (holds(c->lg) || may_start(c->lg))
        conn_start(c);
    else
        maybe_finish(c->lg);
}

/* Keeps the newest session (a TLS 1.3 ticket arrives after the handshake). */
static int new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct lg *lg = SSL_get_app_data(ssl);
    if (lg == NULL || !lg->o.resume)
        return 0;
    SSL_SESSION_free(lg->session);
    lg->session = sess;
    return 1; /* we keep the reference */
}

static int load_ident(const char *certfile, const char *keyfile, struct lg_ident *id, char *err,
                      size_t errlen)
{
    FILE *f = NULL;
    int rc = -1;
    memset(id, 0, sizeof *id);
    f = fopen(certfile, "r");
    if (f == NULL) {
        snprintf(err, errlen, "%.300s: %s", certfile, strerror(errno));
        goto fail;
    }
    id->chain = sk_X509_new_null();
    if (id->chain == NULL)
        goto fail;
    X509 *x;
    while ((x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL) {
        if (id->leaf == NULL)
            id->leaf = x;
        else if (!sk_X509_push(id->chain, x)) {
            X509_free(x);
            goto fail;
        }
    }
    ERR_clear_error();
    fclose(f);
    f = NULL;
    if (id->leaf == NULL) {
        snprintf(err, errlen, "%.300s: no certificate", certfile);
        goto fail;
    }
    f = fopen(keyfile, "r");
    if (f == NULL) {
        snprintf(err, errlen, "%.300s: %s", keyfile, strerror(errno));
        goto fail;
    }
    id->key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    if (id->key == NULL || X509_check_private_key(id->leaf, id->key) != 1) {
        snprintf(err, errlen, "%.200s: no private key matching %.200s", keyfile, certfile);
        goto fail;
    }
    rc = 0;
fail:
    if (f != NULL)
        fclose(f);
    ERR_clear_error();
    return rc;
}

static void free_ident(struct lg_ident *id)
{
    X509_free(id->leaf);
    sk_X509_pop_free(id->chain, X509_free);
    EVP_PKEY_free(id->key);
}

/* Reads --cert-list: one "CHAIN.pem KEY.pem" pair per line; a line with one
 * path names a file holding key and chain together. */
static int load_cert_list(struct lg *lg, char *err, size_t errlen)
{
    FILE *f = fopen(lg->o.cert_list, "r");
    char line[2 * PATH_MAX + 8];
    int rc = -1;
    size_t cap = 0;
    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", lg->o.cert_list, strerror(errno));
        return -1;
    }
    while (fgets(line, sizeof line, f) != NULL) {
        char a[PATH_MAX], b[PATH_MAX];
        int n = sscanf(line, "%4095s %4095s", a, b);
        if (n <= 0)
            continue;
        if (n == 1)
            memcpy(b, a, sizeof b);
        if (lg->nident == cap) {
            cap = cap ? cap * 2 : 256;
            struct lg_ident *p = realloc(lg->idents, cap * sizeof *p);
            if (p == NULL) {
                snprintf(err, errlen, "out of memory");
                goto fail;
            }
            lg->idents = p;
        }
        if (load_ident(a, b, &lg->idents[lg->nident], err, errlen) < 0) {
            free_ident(&lg->idents[lg->nident]);
            goto fail;
        }
        lg->nident++;
    }
    if (lg->nident == 0) {
        snprintf(err, errlen, "%s: no identities", lg->o.cert_list);
        goto fail;
    }
    rc = 0;
fail:
    fclose(f);
    return rc;
}

static int setup_ctx(struct lg *lg, char *err, size_t errlen)
{
    lg->ctx = SSL_CTX_new(TLS_client_method());
    if (lg->ctx == NULL)
        goto fail;
    SSL_CTX_set_min_proto_version(lg->ctx, TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(lg->ctx, lg->o.tls12 ? TLS1_2_VERSION : TLS1_3_VERSION);
    SSL_CTX_set_mode(lg->ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(lg->ctx,
                                   SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(lg->ctx, new_session);
    if (lg->o.cafile != NULL) {
        if (SSL_CTX_load_verify_locations(lg->ctx, lg->o.cafile, NULL) != 1) {
            snprintf(err, errlen, "%s: cannot load CA certificates", lg->o.cafile);
            goto fail;
        }
        SSL_CTX_set_verify(lg->ctx, SSL_VERIFY_PEER, NULL);
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_CTX_get0_param(lg->ctx), lg->o.host) != 1) {
            snprintf(err, errlen, "cannot check the server for %s", lg->o.host);
            goto fail;
        }
    }
    if (lg->o.cert_list != NULL)
        return load_cert_list(lg, err, errlen);
    if (lg->o.cert != NULL) {
        const char *key = lg->o.key != NULL ? lg->o.key : lg->o.cert;
        if (SSL_CTX_use_certificate_chain_file(lg->ctx, lg->o.cert) != 1 ||
            SSL_CTX_use_PrivateKey_file(lg->ctx, key, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(lg->ctx) != 1) {
            snprintf(err, errlen, "%s / %s: cannot load the client certificate and key", lg->o.cert,
                     key);
            goto fail;
        }
    }
    return 0;
fail:
    if (err[0] == '\0')
        snprintf(err, errlen, "cannot set up TLS");
    ERR_clear_error();
    return -1;
}

/* Raises RLIMIT_NOFILE to what <need> descriptors take (the hard limit too
 * when privileged). Returns -1 when the limit cannot be reached. */
static int raise_nofile(rlim_t need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -1;
    if (rl.rlim_cur >= need)
        return 0;
    if (rl.rlim_max < need) {
        struct rlimit want = {need, need};
        if (setrlimit(RLIMIT_NOFILE, &want) == 0)
            return 0;
    }
    if (rl.rlim_max < need)
        return -1;
    rl.rlim_cur = need;
    return setrlimit(RLIMIT_NOFILE, &rl);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static uint32_t pct(const uint32_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

static void report(struct lg *lg, double elapsed)
{
    static const char *const names[] = {"handshake", "keepalive", "idle", "held"};
    if (lg->nlat > 1)
        qsort(lg->lat, lg->nlat, sizeof *lg->lat, cmp_u32);
    double rps = elapsed > 0 ? (double)lg->done / elapsed : 0;
    uint32_t p50 = pct(lg->lat, lg->nlat, 0.50), p90 = pct(lg->lat, lg->nlat, 0.90),
             p99 = pct(lg->lat, lg->nlat, 0.99), mx = lg->nlat ? lg->lat[lg->nlat - 1] : 0;
    printf("{\"mode\":\"%s\",\"resume\":%d,\"connections\":%d,\"requests\":%ld,\"errors\":%ld,"
           "\"non2xx\":%ld,\"connect_errors\":%ld,\"tls_errors\":%ld,\"http_errors\":%ld,"
           "\"timeouts\":%ld,\"handshakes\":%ld,\"resumed\":%ld,\"reconnects\":%ld,"
           "\"held\":%ld,\"elapsed_s\":%.3f,\"rps\":%.1f,\"p50_us\":%u,\"p90_us\":%u,"
           "\"p99_us\":%u,\"max_us\":%u}\n",
           names[lg->o.mode], lg->o.resume, lg->o.connections, lg->done, lg->errors, lg->non2xx,
           lg->connect_err, lg->tls_err, lg->http_err, lg->timeouts, lg->handshakes, lg->resumed,
           lg->reconnects, holds(lg) ? lg->holding : 0, elapsed, rps, p50, p90, p99, mx);
    fflush(stdout);
    fprintf(stderr,
            "loadgen %s%s: %ld requests in %.2f s = %.0f req/s, latency p50 %.2f ms p90 %.2f ms "
            "p99 %.2f ms max %.2f ms, %ld errors (%ld non-2xx), %ld handshakes (%ld resumed)%s%s\n",
            names[lg->o.mode], lg->o.resume ? " --resume" : "", lg->done, elapsed, rps, p50 / 1e3,
            p90 / 1e3, p99 / 1e3, mx / 1e3, lg->errors, lg->non2xx, lg->handshakes, lg->resumed,
            lg->first_err[0] ? "; first error: " : "", lg->first_err);
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: loadgen handshake|keepalive|idle|held --port N [options]\n"
            "  --host ADDR          IPv4 address (default 127.0.0.1)\n"
            "  --port N             port (required)\n"
            "  --path PATH          request path (default /; held: " LG_PING_PATH ")\n"
            "  --cafile FILE        verify the server against these CAs (else no check)\n"
            "  --cert FILE          client certificate chain, PEM, leaf first\n"
            "  --key FILE           its private key (default: in --cert)\n"
            "  --cert-list FILE     lines of 'CHAIN KEY' (or one bundle path): a different\n"
            "                       identity for every new connection\n"
            "  --connections N      concurrent connections (default 1)\n"
            "  --requests N         stop after N requests\n"
            "  --duration S         stop starting requests after S seconds\n"
            "  --resume             handshake mode: resume with the newest session ticket\n"
            "  --hold S             idle, held: hold the connections S seconds (default 5)\n"
            "  --ready-file FILE    idle, held: written with the count when every\n"
            "                       connection is held (held: its request sent)\n"
            "  --timeout S          per-operation timeout (default 10)\n"
            "  --max-time S         hard limit on the whole run (default %d)\n"
            "  --tls12              offer TLS 1.2 only\n"
            "One JSON line on stdout, a human line on stderr; exit 1 when any request failed.\n",
            LG_DEFAULT_MAX_TIME);
}

static int parse_num(const char *s, double lo, double hi, double *out)
{
    char *e;
    errno = 0;
    double v = strtod(s, &e);
    if (errno != 0 || e == s || *e != '\0' || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv, struct lg_opts *o)
{
    static const struct option longopts[] = {
        {"host", 1, NULL, 'H'},       {"port", 1, NULL, 'p'},        {"path", 1, NULL, 'P'},
        {"cafile", 1, NULL, 'C'},     {"cert", 1, NULL, 'c'},        {"key", 1, NULL, 'k'},
        {"cert-list", 1, NULL, 'L'},  {"connections", 1, NULL, 'n'}, {"requests", 1, NULL, 'r'},
        {"duration", 1, NULL, 'd'},   {"resume", 0, NULL, 'R'},      {"hold", 1, NULL, 'h'},
        {"ready-file", 1, NULL, 'f'}, {"timeout", 1, NULL, 't'},     {"max-time", 1, NULL, 'm'},
        {"tls12", 0, NULL, '2'},      {"help", 0, NULL, '?'},        {NULL, 0, NULL, 0}};
    double v;
    int ch;
    *o = (struct lg_opts){.host = "127.0.0.1",
                          .connections = 1,
                          .hold = 5,
                          .timeout = 10,
                          .max_time = LG_DEFAULT_MAX_TIME};
    if (argc < 2) {
        usage(stderr);
        return -1;
    }
    if (strcmp(argv[1], "handshake") == 0)
        o->mode = MODE_HANDSHAKE;
    else if (strcmp(argv[1], "keepalive") == 0)
        o->mode = MODE_KEEPALIVE;
    else if (strcmp(argv[1], "idle") == 0)
        o->mode = MODE_IDLE;
    else if (strcmp(argv[1], "held") == 0)
        o->mode = MODE_HELD;
    else {
        usage(strcmp(argv[1], "--help") == 0 ? stdout : stderr);
        return -1;
    }
    optind = 2;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'H':
            o->host = optarg;
            break;
        case 'P':
            o->path = optarg;
            break;
        case 'C':
            o->cafile = optarg;
            break;
        case 'c':
            o->cert = optarg;
            break;
        case 'k':
            o->key = optarg;
            break;
        case 'L':
            o->cert_list = optarg;
            break;
        case 'f':
            o->ready_file = optarg;
            break;
        case 'R':
            o->resume = 1;
            break;
        case '2':
            o->tls12 = 1;
            break;
        case 'p':
            if (parse_num(optarg, 1, 65535, &v) < 0)
                goto bad;
            o->port = (int)v;
            break;
        case 'n':
            if (parse_num(optarg, 1, 1000000, &v) < 0)
                goto bad;
            o->connections = (int)v;
            break;
        case 'r':
            if (parse_num(optarg, 1, 1e12, &v) < 0)
                goto bad;
            o->requests = (long)v;
            break;
        case 'd':
            if (parse_num(optarg, 0.001, 86400, &v) < 0)
                goto bad;
            o->duration = v;
            break;
        case 'h':
            if (parse_num(optarg, 0, 86400, &v) < 0)
                goto bad;
            o->hold = v;
            break;
        case 't':
            if (parse_num(optarg, 0.001, 3600, &v) < 0)
                goto bad;
            o->timeout = v;
            break;
        case 'm':
            if (parse_num(optarg, 0.001, 86400, &v) < 0)
                goto bad;
            o->max_time = v;
            break;
        default:
            usage(stderr);
            return -1;
        }
    }
    if (optind != argc || o->port == 0) {
        fprintf(stderr, "loadgen: %s\n",
                optind != argc ? "unexpected argument" : "--port is required");
        return -1;
    }
    if (o->mode == MODE_HELD && o->path == NULL)
        o->path = LG_PING_PATH;
    else if (o->path == NULL)
        o->path = "/";
    if (o->mode != MODE_IDLE && o->mode != MODE_HELD && o->requests == 0 && o->duration == 0) {
        fprintf(stderr, "loadgen: give --requests or --duration (a run is never unbounded)\n");
        return -1;
    }
    return 0;
bad:
    fprintf(stderr, "loadgen: bad value \"%s\"\n", optarg);
    return -1;
}

int main(int argc, char **argv)
{
    struct lg lg;
    struct event *sigterm = NULL, *sigint = NULL;
    char err[512] = "";
    int rc = 2;
    memset(&lg, 0, sizeof lg);
    if (parse_args(argc, argv, &lg.o) < 0)
        return 2;
    int n;
    if (lg.o.mode == MODE_HELD)
        n = snprintf(lg.request, sizeof lg.request,
                     "POST %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: certmapd-loadgen\r\n"
                     "Content-Type: application/vnd.ms-sync.wbxml\r\nContent-Length: %zu\r\n\r\n",
                     lg.o.path, lg.o.host, lg.o.port, sizeof lg_ping_body);
    else
        n = snprintf(lg.request, sizeof lg.request,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: certmapd-loadgen\r\n\r\n",
                     lg.o.path, lg.o.host, lg.o.port);
    if (n >= 0 && lg.o.mode == MODE_HELD && (size_t)n + sizeof lg_ping_body < sizeof lg.request) {
        /* head and body in one SSL_write, one TLS record, as a device sends it */
        memcpy(lg.request + n, lg_ping_body, sizeof lg_ping_body);
        n += (int)sizeof lg_ping_body;
    } else if (lg.o.mode == MODE_HELD) {
        n = -1;
    }
    if (n < 0 || (size_t)n >= sizeof lg.request) {
        fprintf(stderr, "loadgen: --path too long\n");
        return 2;
    }
    lg.request_len = (size_t)n;
    lg.addr.sin_family = AF_INET;
    lg.addr.sin_port = htons((uint16_t)lg.o.port);
    if (inet_pton(AF_INET, lg.o.host, &lg.addr.sin_addr) != 1) {
        fprintf(stderr, "loadgen: --host must be an IPv4 address\n");
        return 2;
    }
    if (raise_nofile((rlim_t)lg.o.connections + 64) < 0) {
        fprintf(stderr, "loadgen: cannot raise the open-files limit to %d\n",
                lg.o.connections + 64);
        return 2;
    }
    if (setup_ctx(&lg, err, sizeof err) < 0) {
        fprintf(stderr, "loadgen: %s\n", err);
        goto out;
    }
    lg.base = event_base_new();
    lg.conns = calloc((size_t)lg.o.connections, sizeof *lg.conns);
    if (lg.base == NULL || lg.conns == NULL) {
        fprintf(stderr, "loadgen: out of memory\n");
        goto out;
    }
    for (int i = 0; i < lg.o.connections; i++) {
        lg.conns[i].lg = &lg;
        lg.conns[i].fd = -1;
        lg.conns[i].ev = event_new(lg.base, -1, 0, conn_event, &lg.conns[i]);
        if (lg.conns[i].ev == NULL) {
            fprintf(stderr, "loadgen: out of memory\n");
            goto out;
        }
    }
    lg.t0 = now_us();
    double limit = lg.o.max_time;
    if (lg.o.duration > 0 && lg.o.duration < limit)
        limit = lg.o.duration;
    lg.deadline = lg.t0 + (uint64_t)(limit * 1e6);
    /* the hard stop: whatever happens, the run ends by --max-time */
    struct timeval hard = {
        .tv_sec = (time_t)lg.o.max_time,
        .tv_usec = (suseconds_t)((lg.o.max_time - (double)(time_t)lg.o.max_time) * 1e6)};
    event_base_loopexit(lg.base, &hard);

    /* the runner ends a hold early with SIGTERM: close every connection (RST),
     * report, and exit like a hold that ran out */
    sigterm = evsignal_new(lg.base, SIGTERM, on_signal, &lg);
    sigint = evsignal_new(lg.base, SIGINT, on_signal, &lg);
    if (sigterm == NULL || sigint == NULL || event_add(sigterm, NULL) < 0 ||
        event_add(sigint, NULL) < 0) {
        fprintf(stderr, "loadgen: cannot catch signals\n");
        goto out;
    }
    if (holds(&lg)) {
        idle_progress(&lg);
    } else {
        for (int i = 0; i < lg.o.connections && may_start(&lg); i++)
            conn_defer_start(&lg.conns[i]);
    }
    event_base_dispatch(lg.base);
    double elapsed = (double)(now_us() - lg.t0) / 1e6;
    if (holds(&lg)) {
        /* the time it took to open (and, held, send) every connection */
        if (lg.t_ready != 0)
            elapsed = (double)(lg.t_ready - lg.t0) / 1e6;
        if (lg.holding < lg.o.connections && lg.first_err[0] == '\0')
            note_err(&lg, "only %ld of %d connections held", lg.holding, lg.o.connections);
    } else if (lg.o.requests > 0 && lg.done + lg.errors < lg.o.requests) {
        note_err(&lg, "stopped by --max-time after %ld of %ld requests", lg.done, lg.o.requests);
    }
    report(&lg, elapsed);
    rc = lg.errors == 0 && lg.non2xx == 0 && (!holds(&lg) || lg.holding == lg.o.connections) &&
                 (lg.o.requests == 0 || holds(&lg) || lg.done >= lg.o.requests)
             ? 0
             : 1;
out:
    if (lg.conns != NULL) {
        for (int i = 0; i < lg.o.connections; i++) {
            conn_close(&lg.conns[i]);
            if (lg.conns[i].ev != NULL)
                event_free(lg.conns[i].ev);
        }
        free(lg.conns);
    }
    if (lg.stop_ev != NULL)
        event_free(lg.stop_ev);
    if (sigterm != NULL)
        event_free(sigterm);
    if (sigint != NULL)
        event_free(sigint);
    if (lg.base != NULL)
        event_base_free(lg.base);
    SSL_SESSION_free(lg.session);
    SSL_CTX_free(lg.ctx);
    for (size_t i = 0; i < lg.nident; i++)
        free_ident(&lg.idents[i]);
    free(lg.idents);
    free(lg.lat);
    return rc;
}
