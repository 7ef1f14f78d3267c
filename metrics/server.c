/* The [metrics] listener: its own thread and event_base, so that a busy
 * worker never delays a load balancer's health check. Plain HTTP/1.1, one
 * request per connection (answered with Connection: close), GET /metrics and
 * GET /healthz only; the head is parsed strictly and bounded, every
 * connection has a deadline, and at most MAX_CLIENTS are served at once. */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "common/log.h"
#include "metrics/metrics.h"

#define HEAD_MAX 8192
#define MAX_CLIENTS 64
/* To send the whole request head; then, for the answer: 5 s more than the
 * /healthz probe may take (every backend address timing out). */
#define HEAD_DEADLINE_MS 5000
#define LINGER_MS 2000

struct mclient;
TAILQ_HEAD(mclient_list, mclient);

struct metrics_server {
    struct event_base *base;
    struct evconnlistener *lev;
    struct event *stop_ev;
    pthread_t thread;
    bool started;
    char listen_text[256];
    pthread_mutex_t lock; /* <t> and <uri>: replaced by metrics_server_update */
    struct metrics_targets t;
    char *uri[CONF_MAX_URIS];
    size_t n_uri;
    struct mclient_list clients;
    unsigned n_clients;
};

struct mclient {
    struct metrics_server *s;
    struct bufferevent *bev;
    struct event *deadline;
    /* /healthz: the backend probe */
    struct metrics_targets t;
    size_t probe_idx;
    int probe_fd;
    struct event *probe_ev;
    char why[1024];
    bool has_head; /* its request arrived: it is being answered */
    TAILQ_ENTRY(mclient) link;
};

/* ---- the request head ----------------------------------------------------------- */

static bool is_tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

int metrics_http_route(const char *head, size_t len, int *route)
{
    *route = METRICS_ROUTE_NONE;
    /* Every line ends with CRLF; no NUL, bare CR, bare LF or other control byte. */
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)head[i];
        if (ch == '\r') {
            if (i + 1 >= len || head[i + 1] != '\n')
                return 400;
            i++;
            continue;
        }
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return 400;
    }
    if (len < 4 || memcmp(head + len - 4, "\r\n\r\n", 4) != 0)
        return 400;
    const char *line = head, *end = head + len;
    const char *eol = memchr(line, '\r', (size_t)(end - line));
    /* request line: METHOD SP TARGET SP HTTP/1.x */
    const char *sp1 = memchr(line, ' ', (size_t)(eol - line));
    if (sp1 == NULL || sp1 == line)
        return 400;
    for (const char *p = line; p < sp1; p++)
        if (!is_tchar((unsigned char)*p))
            return 400;
    const char *sp2 = memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1));
    if (sp2 == NULL || sp2 == sp1 + 1 || memchr(sp2 + 1, ' ', (size_t)(eol - sp2 - 1)) != NULL)
        return 400;
    for (const char *p = sp1 + 1; p < sp2; p++)
        if (*p == '\t')
            return 400;
    size_t vlen = (size_t)(eol - sp2 - 1);
    if (!(vlen == 8 &&
          (memcmp(sp2 + 1, "HTTP/1.1", 8) == 0 || memcmp(sp2 + 1, "HTTP/1.0", 8) == 0)))
        return vlen == 8 && memcmp(sp2 + 1, "HTTP/", 5) == 0 ? 505 : 400;
    /* header fields: NAME ":" value; no obs-fold; no body */
    for (line = eol + 2; line < end - 2; line = eol + 2) {
        eol = memchr(line, '\r', (size_t)(end - line));
        if (line[0] == ' ' || line[0] == '\t')
            return 400;
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon == NULL || colon == line)
            return 400;
        for (const char *p = line; p < colon; p++)
            if (!is_tchar((unsigned char)*p))
                return 400;
        size_t nlen = (size_t)(colon - line);
        const char *v = colon + 1, *ve = eol;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        if (nlen == 17 && strncasecmp(line, "transfer-encoding", 17) == 0)
            return 400;
        if (nlen == 14 && strncasecmp(line, "content-length", 14) == 0 &&
            !(ve - v == 1 && *v == '0'))
            return 400;
    }
    size_t mlen = (size_t)(sp1 - head), tlen = (size_t)(sp2 - sp1 - 1);
    if (!(mlen == 3 && memcmp(head, "GET", 3) == 0))
        return 405;
    if (tlen == 8 && memcmp(sp1 + 1, "/metrics", 8) == 0)
        *route = METRICS_ROUTE_METRICS;
    else if (tlen == 8 && memcmp(sp1 + 1, "/healthz", 8) == 0)
        *route = METRICS_ROUTE_HEALTHZ;
    else
        return 404;
    return 200;
}

/* ---- connections ------------------------------------------------------------------ */

static void client_free(struct mclient *c)
{
    struct metrics_server *s = c->s;
    if (c->probe_ev != NULL)
        event_free(c->probe_ev);
    if (c->probe_fd >= 0)
        close(c->probe_fd);
    if (c->deadline != NULL)
        event_free(c->deadline);
    if (c->bev != NULL)
        bufferevent_free(c->bev);
    TAILQ_REMOVE(&s->clients, c, link);
    s->n_clients--;
    free(c);
}

static void event_cb(struct bufferevent *bev, short what, void *arg);

static void discard_cb(struct bufferevent *bev, void *arg)
{
    struct evbuffer *in = bufferevent_get_input(bev);
    evbuffer_drain(in, evbuffer_get_length(in));
}

/* The answer is out: a half-close, then what the client still sends is read
 * and dropped until it closes (or LINGER_MS), so that unread bytes (a head
 * that was too large) do not turn into a reset that destroys the answer. */
static void written_cb(struct bufferevent *bev, void *arg)
{
    struct mclient *c = arg;
    if (evbuffer_get_length(bufferevent_get_output(bev)) != 0)
        return;
    if (shutdown(bufferevent_getfd(bev), SHUT_WR) < 0) {
        client_free(c);
        return;
    }
    struct evbuffer *in = bufferevent_get_input(bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    bufferevent_setwatermark(bev, EV_READ, 0, 0);
    bufferevent_setcb(bev, discard_cb, NULL, event_cb, c);
    bufferevent_enable(bev, EV_READ);
    struct timeval tv = {.tv_sec = LINGER_MS / 1000, .tv_usec = (LINGER_MS % 1000) * 1000};
    evtimer_add(c->deadline, &tv);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    client_free(arg); /* EOF, error or timeout: nothing more to do for it */
}

static const char *status_text(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 431:
        return "Request Header Fields Too Large";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Internal Server Error";
    }
}

/* Queues the whole answer; the connection ends once it is written. */
static void respond(struct mclient *c, int status, const char *type, const char *body, size_t len)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    bufferevent_disable(c->bev, EV_READ);
    bufferevent_setcb(c->bev, NULL, written_cb, event_cb, c);
    evbuffer_add_printf(out,
                        "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                        "Cache-Control: no-store\r\n%sConnection: close\r\n\r\n",
                        status, status_text(status), type, len,
                        status == 405 ? "Allow: GET\r\n" : "");
    evbuffer_add(out, body, len);
    bufferevent_enable(c->bev, EV_WRITE);
}

static void respond_text(struct mclient *c, int status, const char *text)
{
    respond(c, status, "text/plain; charset=utf-8", text, strlen(text));
}

static void serve_metrics(struct mclient *c)
{
    struct metrics_server *s = c->s;
    struct metrics_labels l;
    pthread_mutex_lock(&s->lock);
    l.ldap_uri = (const char *const *)s->uri;
    l.n_ldap_uri = s->n_uri;
    size_t len = 0;
    char *text = metrics_render(&l, &len);
    pthread_mutex_unlock(&s->lock);
    if (text == NULL) {
        respond_text(c, 500, "out of memory\n");
        return;
    }
    respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
}

/* ---- /healthz ---------------------------------------------------------------------- */

static void health_answer(struct mclient *c, bool backend_ok)
{
    char body[2048];
    bool dir_ok = true;
    int n;
    if (backend_ok)
        n = snprintf(body, sizeof body, "backend ok: %s\n", c->why);
    else
        n = snprintf(body, sizeof body, "backend down: %s\n", c->why);
    if (c->t.need_directory) {
        int64_t up = metrics_directory_up();
        dir_ok = up > 0;
        if (dir_ok)
            snprintf(body + n, sizeof body - (size_t)n,
                     "directory ok: %lld worker connection(s) bound\n", (long long)up);
        else
            snprintf(body + n, sizeof body - (size_t)n,
                     "directory down: no worker is connected to any [ldap] uri\n");
    } else {
        snprintf(body + n, sizeof body - (size_t)n,
                 "directory not checked: no [mapping] with source = ldap\n");
    }
    respond_text(c, backend_ok && dir_ok ? 200 : 503, body);
}

/* Adds "<addr>: <why>" to the reasons the backend is down. */
static void why_add(struct mclient *c, const char *addr, const char *why)
{
    size_t n = strlen(c->why);
    snprintf(c->why + n, sizeof c->why - n, "%s%s: %s", n > 0 ? "; " : "", addr, why);
}

static void probe_next(struct mclient *c);

static void probe_cb(evutil_socket_t fd, short what, void *arg)
{
    struct mclient *c = arg;
    const char *addr = c->t.backend_text[c->probe_idx];
    int e = 0;
    socklen_t elen = sizeof e;
    if (what & EV_TIMEOUT)
        e = ETIMEDOUT;
    else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &elen) < 0)
        e = errno;
    event_free(c->probe_ev);
    c->probe_ev = NULL;
    close(c->probe_fd);
    c->probe_fd = -1;
    if (e == 0) {
        snprintf(c->why, sizeof c->why, "%s accepts connections", addr);
        health_answer(c, true);
        return;
    }
    why_add(c, addr, e == ETIMEDOUT ? "connection timed out" : strerror(e));
    c->probe_idx++;
    probe_next(c);
}

/* A fresh TCP connection to each backend address in turn: the first that is
 * accepted makes the backend reachable. */
static void probe_next(struct mclient *c)
{
    for (; c->probe_idx < c->t.n_backend; c->probe_idx++) {
        size_t i = c->probe_idx;
        const struct sockaddr *sa = (const struct sockaddr *)&c->t.backend[i];
        int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            why_add(c, c->t.backend_text[i], strerror(errno));
            continue;
        }
        if (connect(fd, sa, c->t.backend_len[i]) == 0) {
            close(fd);
            snprintf(c->why, sizeof c->why, "%s accepts connections", c->t.backend_text[i]);
            health_answer(c, true);
            return;
        }
        if (errno != EINPROGRESS) {
            why_add(c, c->t.backend_text[i], strerror(errno));
            close(fd);
            continue;
        }
        c->probe_fd = fd;
        c->probe_ev = event_new(c->s->base, fd, EV_WRITE, probe_cb, c);
        uint64_t ms = c->t.timeout_ms;
        struct timeval tv = {.tv_sec = (time_t)(ms / 1000),
                             .tv_usec = (suseconds_t)(ms % 1000) * 1000};
        if (c->probe_ev == NULL || event_add(c->probe_ev, &tv) < 0) {
            respond_text(c, 500, "out of memory\n");
            return;
        }
        return;
    }
    if (c->t.n_backend == 0)
        snprintf(c->why, sizeof c->why, "no backend address");
    health_answer(c, false);
}

static void serve_healthz(struct mclient *c)
{
    pthread_mutex_lock(&c->s->lock);
    c->t = c->s->t;
    pthread_mutex_unlock(&c->s->lock);
    uint64_t ms = HEAD_DEADLINE_MS + c->t.timeout_ms * (c->t.n_backend > 0 ? c->t.n_backend : 1);
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(c->deadline, &tv);
    c->why[0] = '\0';
    c->probe_idx = 0;
    probe_next(c);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    struct mclient *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer_ptr p = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    size_t have = evbuffer_get_length(in);
    if (p.pos < 0) {
        if (have > HEAD_MAX)
            respond_text(c, 431, "request head too large\n");
        return;
    }
    size_t len = (size_t)p.pos + 4;
    if (len > HEAD_MAX) {
        respond_text(c, 431, "request head too large\n");
        return;
    }
    char head[HEAD_MAX];
    evbuffer_copyout(in, head, len);
    evbuffer_drain(in, have);
    int route, status = metrics_http_route(head, len, &route);
    if (status != 200) {
        char text[64];
        snprintf(text, sizeof text, "%s\n", status_text(status));
        respond_text(c, status, text);
        return;
    }
    bufferevent_disable(bev, EV_READ);
    c->has_head = true;
    if (route == METRICS_ROUTE_METRICS)
        serve_metrics(c);
    else
        serve_healthz(c);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    client_free(arg);
}

static void accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    struct metrics_server *s = arg;
    if (s->n_clients >= MAX_CLIENTS) {
        /* Room is made by dropping the oldest client that has not sent its
         * request yet: idle connections cannot lock a balancer out. */
        struct mclient *old;
        TAILQ_FOREACH(old, &s->clients, link)
        if (!old->has_head)
            break;
        if (old == NULL) {
            close(fd); /* all are being answered: a scraper or balancer retries */
            return;
        }
        client_free(old);
    }
    struct mclient *c = calloc(1, sizeof *c);
    if (c == NULL) {
        close(fd);
        return;
    }
    c->s = s;
    c->probe_fd = -1;
    TAILQ_INSERT_TAIL(&s->clients, c, link);
    s->n_clients++;
    c->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->deadline = evtimer_new(s->base, deadline_cb, c);
    if (c->bev == NULL || c->deadline == NULL) {
        if (c->bev == NULL)
            close(fd);
        client_free(c);
        return;
    }
    struct timeval tv = {.tv_sec = HEAD_DEADLINE_MS / 1000, .tv_usec = 0};
    evtimer_add(c->deadline, &tv);
    bufferevent_setwatermark(c->bev, EV_READ, 0, HEAD_MAX + 1);
    bufferevent_setcb(c->bev, read_cb, NULL, event_cb, c);
    bufferevent_enable(c->bev, EV_READ);
}

static void accept_error_cb(struct evconnlistener *lev, void *arg)
{
    int e = EVUTIL_SOCKET_ERROR();
    log_warn("metrics: accept failed: %s", evutil_socket_error_to_string(e));
}

/* ---- life ------------------------------------------------------------------------------ */

static void targets_set(struct metrics_server *s, const struct metrics_targets *t, char **uri,
                        size_t n_uri)
{
    for (size_t i = 0; i < s->n_uri; i++)
        free(s->uri[i]);
    s->t = *t;
    s->t.conf = NULL;
    for (size_t i = 0; i < n_uri; i++)
        s->uri[i] = uri[i];
    s->n_uri = n_uri;
}

/* Copies of <t>'s [ldap] uri list into <uri>: the count, or -1 out of memory. */
static int uris_copy(const struct metrics_targets *t, char **uri)
{
    size_t n = 0;
    if (t->conf != NULL && t->conf->has_mapping_section && t->conf->map_source == MAP_SOURCE_LDAP) {
        for (; n < t->conf->n_ldap_uri && n < CONF_MAX_URIS; n++) {
            uri[n] = strdup(t->conf->ldap_uri[n]);
            if (uri[n] == NULL) {
                while (n > 0)
                    free(uri[--n]);
                return -1;
            }
        }
    }
    return (int)n;
}

int metrics_server_update(struct metrics_server *s, const struct metrics_targets *t)
{
    char *uri[CONF_MAX_URIS];
    int n = uris_copy(t, uri);
    if (n < 0)
        return -1;
    pthread_mutex_lock(&s->lock);
    targets_set(s, t, uri, (size_t)n);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
    struct metrics_server *s = arg;
    event_base_loopbreak(s->base);
}

struct metrics_server *metrics_server_new(const struct conf *c, const struct metrics_targets *t,
                                          char *err, size_t errlen)
{
    err[0] = '\0';
    if (!c->has_metrics_listen)
        return NULL;
    const struct conf_listen *l = &c->metrics_listen;
    struct metrics_server *s = calloc(1, sizeof *s);
    int fd = -1;
    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    TAILQ_INIT(&s->clients);
    pthread_mutex_init(&s->lock, NULL);
    snprintf(s->listen_text, sizeof s->listen_text, "%s", l->text);
    char *uri[CONF_MAX_URIS];
    int n = uris_copy(t, uri);
    if (n < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    targets_set(s, t, uri, (size_t)n);
    s->base = event_base_new();
    if (s->base == NULL) {
        snprintf(err, errlen, "cannot create an event base");
        goto fail;
    }
    fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        (l->addr.ss_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) < 0) ||
        bind(fd, (const struct sockaddr *)&l->addr, l->addrlen) < 0 || listen(fd, 64) < 0) {
        char where[512];
        snprintf(err, errlen, "%s %s: %s", conf_where(c, "metrics", "listen", where, sizeof where),
                 l->text, strerror(errno));
        goto fail;
    }
    s->lev = evconnlistener_new(s->base, accept_cb, s, LEV_OPT_CLOSE_ON_FREE, 0, fd);
    if (s->lev == NULL) {
        snprintf(err, errlen, "cannot create the metrics listener");
        goto fail;
    }
    fd = -1;
    evconnlistener_set_error_cb(s->lev, accept_error_cb);
    s->stop_ev = event_new(s->base, -1, 0, stop_cb, s);
    if (s->stop_ev == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    return s;
fail:
    if (fd >= 0)
        close(fd);
    metrics_server_free(s);
    return NULL;
}

static void *server_main(void *arg)
{
    struct metrics_server *s = arg;
    event_base_dispatch(s->base);
    return NULL;
}

int metrics_server_start(struct metrics_server *s, char *err, size_t errlen)
{
    int rc = pthread_create(&s->thread, NULL, server_main, s);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the metrics thread: %s", strerror(rc));
        return -1;
    }
    s->started = true;
    log_info("metrics: listening on %s (/metrics, /healthz)", s->listen_text);
    return 0;
}

void metrics_server_free(struct metrics_server *s)
{
    if (s == NULL)
        return;
    if (s->started) {
        event_active(s->stop_ev, 0, 0); /* evthread locking is on */
        pthread_join(s->thread, NULL);
    }
    while (!TAILQ_EMPTY(&s->clients))
        client_free(TAILQ_FIRST(&s->clients));
    if (s->lev != NULL)
        evconnlistener_free(s->lev);
    if (s->stop_ev != NULL)
        event_free(s->stop_ev);
    if (s->base != NULL)
        event_base_free(s->base);
    for (size_t i = 0; i < s->n_uri; i++)
        free(s->uri[i]);
    pthread_mutex_destroy(&s->lock);
    free(s);
}
