/* Active health checks of the backend servers ([backend] health_check): every
 * health_interval, each server is asked "GET /path" (or HEAD) on a new
 * connection (its addresses in order, TLS as for requests) with Connection:
 * close; a status line of 2xx or 3xx within health_timeout keeps it up (or
 * brings it back), anything else marks it down until a check passes. One
 * worker runs them for its configuration; the verdicts are the servers'
 * shared, atomic health (proxy/backends.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "common/log.h"
#include "io/io.h"
#include "proxy/upstream.h"
#include "tls/tls.h"

/* A status line longer than this is not an HTTP answer. */
#define STATUS_LINE_MAX 1024

struct health_probe {
    struct backend_health *h;
    unsigned srv;
    unsigned addr;       /* the address being tried (struct backend_set) */
    struct io *io;       /* NULL: no check in flight */
    struct event *timer; /* health_timeout of the check in flight */
    bool connected;
};

struct backend_health {
    struct event_base *base;
    const struct conf *conf;
    struct backend_set *bs;
    struct tls_client_ctx *tls;
    struct event *tick;
    char *request_line; /* "GET /path HTTP/1.1" */
    struct health_probe probe[BACKEND_MAX_SERVERS];
};

static struct timeval tv_ms(uint64_t ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

static void probe_end(struct health_probe *pr, bool ok, const char *why)
{
    struct backend_health *h = pr->h;
    io_free(pr->io); /* safe inside its callbacks */
    pr->io = NULL;
    evtimer_del(pr->timer);
    backend_server_checked(h->bs, pr->srv, ok, why);
}

static int probe_dial(struct health_probe *pr, unsigned idx);

/* The address being tried did not connect: the server's next one, if any. */
static void probe_next(struct health_probe *pr, const char *why)
{
    const struct backend_server *s = &pr->h->bs->srv[pr->srv];
    while (pr->addr + 1 < s->first + s->n) {
        if (probe_dial(pr, pr->addr + 1) == 0)
            return;
        pr->addr++;
    }
    probe_end(pr, false, why);
}

static void probe_read_cb(void *arg)
{
    struct health_probe *pr = arg;
    struct evbuffer *in = io_input(pr->io);
    struct evbuffer_ptr eol = evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_CRLF);
    if (eol.pos < 0) {
        if (evbuffer_get_length(in) > STATUS_LINE_MAX)
            probe_end(pr, false, "an answer that is not HTTP");
        return;
    }
    char line[STATUS_LINE_MAX + 1];
    size_t len = (size_t)eol.pos < STATUS_LINE_MAX ? (size_t)eol.pos : STATUS_LINE_MAX;
    evbuffer_copyout(in, line, len);
    line[len] = '\0';
    int status = 0;
    char why[64];
    if (sscanf(line, "HTTP/1.%*1[01] %3d", &status) != 1 || status < 100 || status > 599) {
        probe_end(pr, false, "an answer that is not HTTP");
        return;
    }
    snprintf(why, sizeof why, "health check answered %d", status);
    probe_end(pr, status >= 200 && status < 400, why);
}

static void probe_drained_cb(void *arg)
{
}

static void probe_event_cb(void *arg, enum io_event ev)
{
    struct health_probe *pr = arg;
    char why[256], text[300];
    if (ev == IO_EV_CONNECTED) {
        pr->connected = true;
        return;
    }
    snprintf(text, sizeof text, "health check: %s",
             ev == IO_EV_EOF ? "closed without an answer" : io_error_text(pr->io, why, sizeof why));
    if (!pr->connected)
        probe_next(pr, text);
    else
        probe_end(pr, false, text);
}

static const struct io_handler probe_handler = {
    .read = probe_read_cb,
    .drained = probe_drained_cb,
    .event = probe_event_cb,
};

/* Connects <pr> to address <idx> with the check request queued. 0, or -1. */
static int probe_dial(struct health_probe *pr, unsigned idx)
{
    struct backend_health *h = pr->h;
    const struct backend_server *s = &h->bs->srv[pr->srv];
    SSL *ssl = NULL;
    struct io *io = io_new(h->base, &probe_handler, pr);
    if (io == NULL || (h->tls != NULL && (ssl = tls_client_conn_new(h->tls, s->host)) == NULL)) {
        io_free(io);
        return -1;
    }
    if (io_connect(io, (const struct sockaddr *)&h->bs->addr[idx], h->bs->len[idx], ssl) < 0) {
        io_free(io);
        return -1;
    }
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: certmapd-health-check\r\n"
                     "Connection: close\r\n\r\n",
                     h->request_line, s->name);
    io_write(io, req, n > 0 && (size_t)n < sizeof req ? (size_t)n : 0);
    io_free(pr->io);
    pr->io = io;
    pr->addr = idx;
    pr->connected = false;
    return 0;
}

static void probe_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    probe_end(arg, false, "health check timed out");
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct backend_health *h = arg;
    struct timeval limit = tv_ms(h->conf->backend_health_timeout_ms);
    for (unsigned i = 0; i < h->bs->n_srv; i++) {
        struct health_probe *pr = &h->probe[i];
        if (pr->io != NULL)
            continue; /* the last one is still running: its timeout ends it */
        evtimer_add(pr->timer, &limit);
        unsigned first = h->bs->srv[i].first;
        pr->addr = first;
        if (probe_dial(pr, first) < 0)
            probe_next(pr, "health check: cannot connect");
    }
}

struct backend_health *backend_health_new(struct event_base *base, const struct conf *c,
                                          struct backend_set *bs, struct tls_client_ctx *tls,
                                          char *err, size_t errlen)
{
    struct backend_health *h = calloc(1, sizeof *h);
    if (h == NULL)
        goto oom;
    h->base = base;
    h->conf = c;
    h->bs = bs;
    h->tls = tls;
    size_t n = strlen(c->backend_health_check) + 10;
    h->request_line = malloc(n);
    h->tick = event_new(base, -1, EV_PERSIST, tick_cb, h);
    if (h->request_line == NULL || h->tick == NULL)
        goto oom;
    snprintf(h->request_line, n, "%s", c->backend_health_check);
    for (unsigned i = 0; i < bs->n_srv; i++) {
        h->probe[i].h = h;
        h->probe[i].srv = i;
        h->probe[i].timer = evtimer_new(base, probe_timer_cb, &h->probe[i]);
        if (h->probe[i].timer == NULL)
            goto oom;
    }
    struct timeval every = tv_ms(c->backend_health_interval_ms);
    event_add(h->tick, &every);
    event_active(h->tick, EV_TIMEOUT, 0); /* a first verdict at start */
    return h;
oom:
    snprintf(err, errlen, "backend health checks: out of memory");
    backend_health_free(h);
    return NULL;
}

void backend_health_free(struct backend_health *h)
{
    if (h == NULL)
        return;
    for (unsigned i = 0; i < BACKEND_MAX_SERVERS; i++) {
        io_free(h->probe[i].io);
        if (h->probe[i].timer != NULL)
            event_free(h->probe[i].timer);
    }
    if (h->tick != NULL)
        event_free(h->tick);
    free(h->request_line);
    free(h);
}
