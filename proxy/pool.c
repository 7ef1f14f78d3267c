/* The idle backend connections of one worker, kept for reuse, each tied to
 * its server and (with delegation) its user: most recently used first (the
 * least likely to have been closed by the backend), each closed after a
 * minute unused, or at once when the backend says anything. */
#include <stdlib.h>
#include <string.h>

#include "metrics/metrics.h"
#include "proxy/upstream_int.h"

/* An idle pooled connection is closed after this long. */
#define POOL_IDLE_MS 60000

void upstream_pool_init(struct upstream_pool *p, struct event_base *base, const struct conf *c,
                        struct backend_set *backend, struct tls_client_ctx *tls)
{
    p->rr = 0;
    p->health = NULL;
    p->base = base;
    p->conf = c;
    p->backend = backend;
    p->tls = tls;
    TAILQ_INIT(&p->idle);
    p->n_idle = 0;
    p->closed = false;
}

void upstream_pool_drop(struct upstream *u)
{
    struct upstream_pool *p = u->pool;
    TAILQ_REMOVE(&p->idle, u, link);
    p->n_idle--;
    metrics_gauge_add(MG_BACKEND_POOLED, -1);
    upstream_free(u);
}

/* An idle backend connection has nothing to say: whatever it sends is a
 * protocol error (or a stray late response), and the connection is unusable. */
static void idle_read_cb(void *arg)
{
    upstream_pool_drop(arg);
}

static void idle_drained_cb(void *arg)
{
}

static void idle_event_cb(void *arg, enum io_event ev)
{
    upstream_pool_drop(arg);
}

static const struct io_handler idle_handler = {
    .read = idle_read_cb,
    .drained = idle_drained_cb,
    .event = idle_event_cb,
};

static void idle_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    upstream_pool_drop(arg);
}

bool upstream_pool_put(struct upstream_pool *p, struct upstream *u)
{
    if (p->closed || p->n_idle >= p->conf->keepalive_connections)
        return false;
    proxy_head_purge(&u->head);
    io_set_handler(u->io, &idle_handler, u);
    io_read_pause(u->io, false);
    event_del(&u->timer);
    evtimer_assign(&u->timer, p->base, idle_timer_cb, u);
    struct timeval idle = {.tv_sec = POOL_IDLE_MS / 1000, .tv_usec = 0};
    evtimer_add(&u->timer, &idle);
    TAILQ_INSERT_HEAD(&p->idle, u, link);
    p->n_idle++;
    metrics_gauge_add(MG_BACKEND_POOLED, 1);
    return true;
}

static bool same_identity(const char *a, const char *b)
{
    return a == NULL ? b == NULL : b != NULL && strcmp(a, b) == 0;
}

struct upstream *upstream_pool_take(struct upstream_pool *p, const char *identity, int srv)
{
    struct upstream *u;
    TAILQ_FOREACH(u, &p->idle, link) {
        unsigned of = p->backend->srv_of[u->addr_idx];
        if (!same_identity(u->identity, identity))
            continue;
        if (srv >= 0 ? of == (unsigned)srv : backend_server_usable(p->backend, of))
            break;
    }
    if (u == NULL)
        return NULL;
    TAILQ_REMOVE(&p->idle, u, link);
    p->n_idle--;
    metrics_gauge_add(MG_BACKEND_POOLED, -1);
    event_del(&u->timer);
    return u;
}

void upstream_pool_purge_server(struct upstream_pool *p, unsigned srv)
{
    struct upstream *u, *next;
    for (u = TAILQ_FIRST(&p->idle); u != NULL; u = next) {
        next = TAILQ_NEXT(u, link);
        if (p->backend->srv_of[u->addr_idx] == srv)
            upstream_pool_drop(u);
    }
}

int upstream_pool_health_start(struct upstream_pool *p, char *err, size_t errlen)
{
    if (p->conf->backend_health_check == NULL || p->health != NULL)
        return 0;
    p->health = backend_health_new(p->base, p->conf, p->backend, p->tls, err, errlen);
    return p->health != NULL ? 0 : -1;
}

void upstream_pool_purge(struct upstream_pool *p)
{
    backend_health_free(p->health);
    p->health = NULL;
    struct upstream *u;
    while ((u = TAILQ_FIRST(&p->idle)) != NULL)
        upstream_pool_drop(u);
}
