/* Workers: one thread and one event_base each, with their own listening
 * sockets (SO_REUSEPORT: the kernel spreads connections), their own upstream
 * pool and their own connections. Nothing is shared between workers but the
 * read-only configuration, TLS contexts and the access log descriptor. */
#include <dirent.h>
#include <errno.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "common/log.h"
#include "ldap/dir.h"
#include "mapping/mapping.h"
#include "metrics/metrics.h"
#include "proxy/conn.h"
#include "proxy/limit.h"
#include "proxy/proxy.h"
#include "shcache/shcache.h"

struct worker_post;

/* A worker's part of one configuration generation: its upstream pool, its
 * mapping source and mapper, and the environment its connections share. New
 * connections join the current one; after a reload the previous one is
 * retired and freed (from <reap_ev>) once its last connection has ended. */
struct wgen {
    struct worker *w;
    struct proxy_shared *sh; /* holds one of sh->refs */
    struct upstream_pool pool;
    struct map_source *source;
    struct mapper *mapper;
    struct shc *shared; /* [mapping] shared_cache: this worker's Redis connection */
    struct conn_env env;
    struct wgen *next; /* in w->retired */
};

struct worker {
    unsigned id;
    struct event_base *base;
    int listen_fds[CONF_MAX_LISTEN];
    struct evconnlistener *listeners[CONF_MAX_LISTEN];
    size_t n_listeners;
    bool draining;        /* shutting down: no new connection */
    struct wgen *cur;     /* what new connections use */
    struct wgen *retired; /* older generations with connections still open */
    struct event *reap_ev;
    /* A reload in two steps (proxy_workers_offer, then _commit): <offered>
     * is made on this thread from <offer>, then made current or dropped. */
    struct event *offer_ev, *commit_ev;
    struct proxy_shared *offer;
    struct wgen *offered;
    bool commit;
    char offer_err[512];
    struct worker_sync *sync;
    struct event *stop_ev;
    struct event *grace_ev;
    /* Out of descriptors (or socket memory): the listeners are off for
     * <pause_ms> (100 ms doubling to 2 s, 0 again after an accept), so that
     * accept is not retried at once forever; <spare_fd> (/dev/null) is given
     * up for a moment to accept and close one waiting client. */
    struct event *resume_ev;
    uint32_t pause_ms;
    int spare_fd;
    /* [server] reclaim_idle: connections closed since the last log line, and when that was. */
    unsigned reclaimed;
    time_t reclaim_logged;
    /* [server] max_connections, shared by all workers (limit.h): <limit_ev>
     * wakes this worker when the bound is reached or has room again. */
    struct conn_limit *limit;
    struct event *limit_ev;
    pthread_t thread;
    /* Work handed over from other threads (a lookup finished elsewhere). */
    struct event *post_ev;
    pthread_mutex_t post_lock;
    bool post_lock_made;
    struct worker_post *post_head, *post_tail;
};

/* The main thread waits on it for every worker's answer to an offer. */
struct worker_sync {
    pthread_mutex_t lock;
    pthread_cond_t answered;
    unsigned pending;
};

struct timeval proxy_tv_ms(uint64_t ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

static int listen_socket(const struct conf_listen *l, char *err, size_t errlen)
{
    int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto fail;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        goto fail;
    if (l->addr.ss_family == AF_INET6 &&
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) < 0)
        goto fail;
    if (bind(fd, (const struct sockaddr *)&l->addr, l->addrlen) < 0 || listen(fd, 1024) < 0)
        goto fail;
    return fd;
fail:
    snprintf(err, errlen, "[server] listen %s: %s", l->text, strerror(errno));
    if (fd >= 0)
        close(fd);
    return -1;
}

static void listeners_enable(struct worker *w, bool on)
{
    for (size_t i = 0; i < w->n_listeners; i++)
        if (w->listeners[i] != NULL) {
            if (on)
                evconnlistener_enable(w->listeners[i]);
            else
                evconnlistener_disable(w->listeners[i]);
        }
}

/* [server] reclaim_idle: up to that many of this worker's client connections
 * idle between requests closed, the longest idle first, to make room. <why>
 * for the log line, said at most once a second (with the count since). */
static unsigned worker_reclaim(struct worker *w, const char *why)
{
    unsigned max = w->cur != NULL ? w->cur->env.conf->reclaim_idle : 0;
    if (max == 0 || w->cur == NULL)
        return 0;
    unsigned n = proxy_conn_reclaim_idle(&w->cur->env, max);
    w->reclaimed += n;
    time_t now = time(NULL);
    if (w->reclaimed > 0 && now != w->reclaim_logged) {
        log_warn("worker %u: %s: closed %u idle keep-alive connection(s) to make room "
                 "(reclaim_idle = %u)",
                 w->id, why, w->reclaimed, max);
        w->reclaimed = 0;
        w->reclaim_logged = now;
    }
    return n;
}

static void accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    struct worker *w = arg;
    w->pause_ms = 0;
    if (w->draining) {
        close(fd);
        return;
    }
    bool taken = conn_limit_take(w->limit);
    if (conn_limit_full(w->limit))
        worker_reclaim(w, "max_connections reached"); /* room for the next client */
    if (conn_limit_full(w->limit))
        listeners_enable(w, false); /* now: libevent's accept loop stops here */
    if (!taken) {
        close(fd); /* another worker took the last slot meanwhile (limit.c) */
        return;
    }
    const struct conf_listen *l = NULL; /* the one <lev> was made from */
    for (size_t k = 0; k < w->n_listeners; k++)
        if (w->listeners[k] == lev)
            l = &w->cur->env.conf->listen[k];
    /* Once a connection exists, its end (worker_conn_gone) gives the slot
     * back, even when that end comes before proxy_conn_accept returns. */
    if (!proxy_conn_accept(&w->cur->env, l, fd, sa, (socklen_t)salen))
        conn_limit_release(w->limit); /* none was made */
}

/* The limit is full, or has room again: listeners off or on (unless a pause
 * for want of descriptors is running: its timer turns them on). */
static void limit_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    bool on = !conn_limit_full(w->limit) && !evtimer_pending(w->resume_ev, NULL);
    log_debug("worker %u: listeners %s (%u of %u connections)", w->id, on ? "on" : "off",
              conn_limit_count(w->limit), conn_limit_max(w->limit));
    listeners_enable(w, on);
}

#define ACCEPT_PAUSE_MIN_MS 100
#define ACCEPT_PAUSE_MAX_MS 2000

/* Descriptors this process has open, or -1; needs one free descriptor. */
static long open_fd_count(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    long n = -1; /* the directory's own descriptor */
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n - 2; /* "." and ".." */
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    if (!conn_limit_full(w->limit))
        listeners_enable(w, true);
}

static void accept_error_cb(struct evconnlistener *lev, void *arg)
{
    struct worker *w = arg;
    int e = EVUTIL_SOCKET_ERROR();
    if (e != EMFILE && e != ENFILE && e != ENOBUFS && e != ENOMEM) {
        log_warn("accept failed: %s", evutil_socket_error_to_string(e));
        return;
    }
    /* Idle connections given up make room: accepting goes on. */
    if (worker_reclaim(w, "out of descriptors") > 0)
        return;
    /* The listener would be readable again at once: retrying now spins. */
    long open_fds = -1;
    if (w->spare_fd >= 0) {
        close(w->spare_fd);
        open_fds = open_fd_count();
        /* One waiting client gets a clean close rather than a hang. */
        int fd = accept4(evconnlistener_get_fd(lev), NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0)
            close(fd);
        w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    w->pause_ms = w->pause_ms == 0 ? ACCEPT_PAUSE_MIN_MS
                  : w->pause_ms * 2 > ACCEPT_PAUSE_MAX_MS ? ACCEPT_PAUSE_MAX_MS
                                                          : w->pause_ms * 2;
    struct rlimit rl = {0};
    getrlimit(RLIMIT_NOFILE, &rl);
    log_warn("worker %u: accept failed: %s, %ld descriptors open (limit %llu): not accepting "
             "for %u ms", w->id, strerror(e), open_fds, (unsigned long long)rl.rlim_cur,
             w->pause_ms);
    for (size_t i = 0; i < w->n_listeners; i++)
        if (w->listeners[i] != NULL)
            evconnlistener_disable(w->listeners[i]);
    struct timeval tv = proxy_tv_ms(w->pause_ms);
    evtimer_add(w->resume_ev, &tv);
}

/* Connections of every generation of <w>. */
static unsigned worker_n_conns(const struct worker *w)
{
    unsigned n = w->cur != NULL ? w->cur->env.n_conns : 0;
    for (const struct wgen *g = w->retired; g != NULL; g = g->next)
        n += g->env.n_conns;
    return n;
}

static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    log_warn("worker %u: %u connection(s) still busy at the end of the shutdown grace time", w->id,
             worker_n_conns(w));
    event_base_loopbreak(w->base);
}

/* The first step of a shutdown, for one generation: nothing goes back to its
 * pool, idle connections and handshakes close, requests in flight finish. */
static void wgen_drain(struct wgen *g)
{
    g->env.draining = true;
    g->pool.closed = true;
    upstream_pool_purge(&g->pool);
    proxy_conn_drain(&g->env);
}

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    w->draining = true;
    for (size_t i = 0; i < w->n_listeners; i++) {
        evconnlistener_free(w->listeners[i]);
        w->listeners[i] = NULL;
    }
    w->n_listeners = 0;
    evtimer_del(w->resume_ev);
    wgen_drain(w->cur);
    for (struct wgen *g = w->retired; g != NULL; g = g->next)
        wgen_drain(g);
    if (worker_n_conns(w) == 0)
        event_base_loopexit(w->base, NULL);
}

/* A connection of generation <arg> went away: the end of a drain, when it was
 * the worker's last one; or the end of a retired generation, freed from
 * <reap_ev> (not here: the caller may still be walking its connections). */
static void worker_conn_gone(void *arg)
{
    struct wgen *g = arg;
    struct worker *w = g->w;
    conn_limit_release(w->limit);
    if (w->draining && worker_n_conns(w) == 0)
        event_base_loopexit(w->base, NULL);
    else if (g != w->cur && g->env.n_conns == 0)
        event_active(w->reap_ev, 0, 0);
}

/* Work another thread hands to this worker (mapping/'s post hook). */
struct worker_post {
    void (*fn)(void *);
    void *arg;
    struct worker_post *next;
};

static void post_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    pthread_mutex_lock(&w->post_lock);
    struct worker_post *p = w->post_head;
    w->post_head = w->post_tail = NULL;
    pthread_mutex_unlock(&w->post_lock);
    while (p != NULL) {
        struct worker_post *next = p->next;
        p->fn(p->arg);
        free(p);
        p = next;
    }
}

/* Runs fn(fn_arg) on <post_arg>'s worker thread soon; callable from any thread. */
static void worker_post(void *post_arg, void (*fn)(void *), void *fn_arg)
{
    struct worker *w = post_arg;
    struct worker_post *p = malloc(sizeof *p);
    if (p == NULL) {
        /* Nowhere to queue it: the waiting request would hang; abort loudly instead. */
        cm_fatal("out of memory handing a directory answer to worker %u", w->id);
    }
    p->fn = fn;
    p->arg = fn_arg;
    p->next = NULL;
    pthread_mutex_lock(&w->post_lock);
    if (w->post_tail != NULL)
        w->post_tail->next = p;
    else
        w->post_head = p;
    w->post_tail = p;
    pthread_mutex_unlock(&w->post_lock);
    event_active(w->post_ev, 0, 0); /* thread-safe: evthread locking is on */
}

static void wgen_free(struct wgen *g)
{
    if (g == NULL)
        return;
    if (g->env.gone != NULL)
        proxy_conn_close_all(&g->env);
    upstream_pool_purge(&g->pool);
    /* Connections first (their lookups are cancelled), then what other
     * threads handed over (cancelled jobs: it only frees), then the mapping. */
    post_cb(-1, 0, g->w);
    mapper_free(g->mapper);
    shc_free(g->shared);
    map_source_close(g->source);
    if (g->sh != NULL)
        atomic_fetch_sub_explicit(&g->sh->refs, 1, memory_order_acq_rel);
    free(g);
}

/* This worker's part of generation <sh>: its pool, its directory source and
 * mapper (with [mapping]), its connections' environment. Runs on the
 * worker's thread once it runs (a reload), or before it starts. */
static struct wgen *wgen_new(struct worker *w, struct proxy_shared *sh, char *err, size_t errlen)
{
    const struct conf *c = sh->conf;
    struct wgen *g = calloc(1, sizeof *g);
    if (g == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    g->w = w;
    upstream_pool_init(&g->pool, w->base, c, sh->backend, sh->backend_tls);
    /* Active health checks, when configured: worker 0 runs them for all. */
    if (w->id == 0 && upstream_pool_health_start(&g->pool, err, errlen) < 0)
        goto fail;
    if (c->has_mapping_section) {
        g->source = dir_source_open(c, w->base, err, errlen);
        if (g->source == NULL)
            goto fail;
        g->mapper = mapper_new(c, g->source, sh->cache);
        if (g->mapper == NULL) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        mapper_set_post(g->mapper, worker_post, w);
        if (c->shared_cache != NULL) {
            g->shared = shc_open(c, w->base, err, errlen);
            if (g->shared == NULL)
                goto fail;
            mapper_set_shared(g->mapper, shc_shared(g->shared));
        }
    }
    g->env = (struct conn_env){
        .base = w->base,
        .conf = c,
        .tls = sh->tls,
        .mapper = g->mapper,
        .alog = sh->alog,
        .pool = &g->pool,
        .krb = sh->krb,
        .post = worker_post,
        .post_arg = w,
        .gone = worker_conn_gone,
        .gone_arg = g,
    };
    TAILQ_INIT(&g->env.conns);
    atomic_fetch_add_explicit(&sh->refs, 1, memory_order_relaxed);
    g->sh = sh;
    return g;
fail:
    wgen_free(g);
    return NULL;
}

/* Frees the retired generations whose last connection has ended. */
static void reap_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    for (struct wgen **pp = &w->retired; *pp != NULL;) {
        struct wgen *g = *pp;
        if (g->env.n_conns == 0) {
            *pp = g->next;
            log_debug("worker %u: generation %u released", w->id, g->sh->generation);
            wgen_free(g);
        } else {
            pp = &g->next;
        }
    }
}

/* ---- reload ---- */

static void offer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    struct worker_sync *sync = w->sync;
    w->offer_err[0] = '\0';
    w->offered = w->draining ? NULL : wgen_new(w, w->offer, w->offer_err, sizeof w->offer_err);
    if (w->offered == NULL && w->offer_err[0] == '\0')
        snprintf(w->offer_err, sizeof w->offer_err, "shutting down");
    pthread_mutex_lock(&sync->lock);
    sync->pending--;
    pthread_cond_signal(&sync->answered);
    pthread_mutex_unlock(&sync->lock);
}

static void commit_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    struct wgen *g = w->offered;
    w->offered = NULL;
    if (g == NULL)
        return;
    if (!w->commit || w->draining) {
        wgen_free(g);
        return;
    }
    struct wgen *old = w->cur;
    w->cur = g;
    old->next = w->retired;
    w->retired = old;
    /* Idle pooled backend connections go now; those in use are closed when
     * their request ends. Idle client connections close; requests in flight
     * (a held Ping) finish on the generation they started on. */
    old->pool.closed = true;
    upstream_pool_purge(&old->pool);
    proxy_conn_retire(&old->env);
    if (old->env.n_conns == 0)
        event_active(w->reap_ev, 0, 0);
}

int proxy_workers_offer(struct worker *ws, unsigned n, struct proxy_shared *sh, char *err,
                        size_t errlen)
{
    struct worker_sync sync = {.pending = n};
    pthread_mutex_init(&sync.lock, NULL);
    pthread_cond_init(&sync.answered, NULL);
    for (unsigned i = 0; i < n; i++) {
        ws[i].sync = &sync;
        ws[i].offer = sh;
        event_active(ws[i].offer_ev, 0, 0); /* thread-safe: evthread locking is on */
    }
    /* A worker's loop never blocks for long: each answers soon. */
    pthread_mutex_lock(&sync.lock);
    while (sync.pending > 0)
        pthread_cond_wait(&sync.answered, &sync.lock);
    pthread_mutex_unlock(&sync.lock);
    pthread_cond_destroy(&sync.answered);
    pthread_mutex_destroy(&sync.lock);
    int rc = 0;
    for (unsigned i = 0; i < n; i++) {
        ws[i].sync = NULL;
        if (ws[i].offered == NULL && rc == 0) {
            snprintf(err, errlen, "worker %u: %s", i, ws[i].offer_err);
            rc = -1;
        }
    }
    if (rc < 0)
        proxy_workers_commit(ws, n, false);
    return rc;
}

void proxy_workers_set_limit(struct worker *ws, const struct conf *c)
{
    struct rlimit rl = {0};
    bool fits = true;
    getrlimit(RLIMIT_NOFILE, &rl);
    unsigned max = conn_limit_resolve(c, (uint64_t)rl.rlim_cur, &fits);
    if (max == conn_limit_max(ws[0].limit))
        return;
    conn_limit_set_max(ws[0].limit, max);
    log_info("[server] max_connections: now %u client connections%s", max,
             fits ? "" : " (more than the open-files limit can hold)");
}

void proxy_workers_commit(struct worker *ws, unsigned n, bool commit)
{
    for (unsigned i = 0; i < n; i++) {
        ws[i].commit = commit;
        event_active(ws[i].commit_ev, 0, 0);
    }
}

static void worker_purge(struct worker *w);

struct worker *proxy_workers_bind(unsigned n, struct proxy_shared *sh, char *err, size_t errlen)
{
    const struct conf *c = sh->conf;
    struct worker *ws = calloc(n, sizeof *ws);
    struct conn_limit *limit = ws != NULL ? conn_limit_new_for(c, n) : NULL;
    if (limit == NULL) {
        free(ws);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (unsigned i = 0; i < n; i++) {
        struct worker *w = &ws[i];
        w->id = i;
        w->spare_fd = -1;
        w->limit = limit;
        /* The change list batches the EV_WRITE adds and deletes that a
         * write which found the socket full causes, into one epoll_ctl per
         * descriptor and loop turn. */
        struct event_config *cfg = event_config_new();
        if (cfg != NULL)
            event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
        w->base = cfg != NULL ? event_base_new_with_config(cfg) : NULL;
        event_config_free(cfg);
        if (w->base == NULL) {
            snprintf(err, errlen, "cannot create an event base");
            goto fail;
        }
        w->stop_ev = event_new(w->base, -1, 0, stop_cb, w);
        w->grace_ev = evtimer_new(w->base, grace_cb, w);
        w->post_ev = event_new(w->base, -1, 0, post_cb, w);
        w->resume_ev = evtimer_new(w->base, resume_cb, w);
        w->reap_ev = event_new(w->base, -1, 0, reap_cb, w);
        w->offer_ev = event_new(w->base, -1, 0, offer_cb, w);
        w->commit_ev = event_new(w->base, -1, 0, commit_cb, w);
        w->limit_ev = event_new(w->base, -1, 0, limit_cb, w);
        conn_limit_set_waker(limit, i, w->limit_ev);
        w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        pthread_mutex_init(&w->post_lock, NULL);
        w->post_lock_made = true;
        if (w->stop_ev == NULL || w->grace_ev == NULL || w->post_ev == NULL ||
            w->resume_ev == NULL || w->reap_ev == NULL || w->offer_ev == NULL ||
            w->commit_ev == NULL || w->limit_ev == NULL) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        if (w->spare_fd < 0) {
            snprintf(err, errlen, "/dev/null: %s", strerror(errno));
            goto fail;
        }
        w->cur = wgen_new(w, sh, err, errlen);
        if (w->cur == NULL)
            goto fail;
        for (size_t k = 0; k < c->n_listen; k++) {
            int fd = listen_socket(&c->listen[k], err, errlen);
            if (fd < 0)
                goto fail;
            /* backlog 0: the socket already listens */
            w->listeners[k] =
                evconnlistener_new(w->base, accept_cb, w, LEV_OPT_CLOSE_ON_FREE, 0, fd);
            if (w->listeners[k] == NULL) {
                close(fd);
                snprintf(err, errlen, "cannot create a listener");
                goto fail;
            }
            evconnlistener_set_error_cb(w->listeners[k], accept_error_cb);
            w->n_listeners++;
        }
    }
    return ws;
fail:
    proxy_workers_free(ws, n);
    return NULL;
}

void proxy_workers_free(struct worker *ws, unsigned n)
{
    if (ws == NULL)
        return;
    /* A connection closed below must not wake a worker already purged. */
    for (unsigned i = 0; i < n; i++)
        conn_limit_set_waker(ws[0].limit, i, NULL);
    for (unsigned i = 0; i < n; i++)
        worker_purge(&ws[i]);
    conn_limit_free(ws[0].limit);
    free(ws);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    if (metrics_thread_attach() < 0)
        log_warn("worker %u: out of memory for its counters: counting globally", w->id);
    /* Not event_base_dispatch: a worker whose listeners are off at
     * max_connections, with no connection of its own, has no event pending,
     * and dispatch would return and end the thread; stop_cb, grace_cb and
     * worker_conn_gone end the loop. */
    event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

int proxy_workers_start(struct worker *ws, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        int rc = pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]);
        if (rc != 0) {
            log_error("cannot start worker %u: %s", i, strerror(rc));
            return -1;
        }
    }
    return 0;
}

static void worker_purge(struct worker *w)
{
    if (w->base == NULL)
        return;
    for (size_t i = 0; i < w->n_listeners; i++)
        if (w->listeners[i] != NULL)
            evconnlistener_free(w->listeners[i]);
    /* Every connection first, so that no lookup of one is still delivered. */
    if (w->cur != NULL)
        proxy_conn_close_all(&w->cur->env);
    for (struct wgen *g = w->retired; g != NULL; g = g->next)
        proxy_conn_close_all(&g->env);
    wgen_free(w->cur);
    wgen_free(w->offered);
    while (w->retired != NULL) {
        struct wgen *g = w->retired;
        w->retired = g->next;
        wgen_free(g);
    }
    if (w->post_ev != NULL) {
        post_cb(-1, 0, w);
        event_free(w->post_ev);
    }
    if (w->post_lock_made)
        pthread_mutex_destroy(&w->post_lock);
    struct event *evs[] = {w->stop_ev, w->grace_ev,  w->resume_ev, w->reap_ev,
                           w->offer_ev, w->commit_ev, w->limit_ev};
    for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++)
        if (evs[i] != NULL)
            event_free(evs[i]);
    if (w->spare_fd >= 0)
        close(w->spare_fd);
    event_base_free(w->base);
    w->base = NULL;
}

void proxy_workers_stop(struct worker *ws, unsigned n, uint64_t grace_ms)
{
    struct timeval grace = proxy_tv_ms(grace_ms);
    for (unsigned i = 0; i < n; i++) {
        /* Both calls are safe from this thread: evthread locking is on. */
        evtimer_add(ws[i].grace_ev, &grace);
        event_active(ws[i].stop_ev, 0, 0);
    }
    for (unsigned i = 0; i < n; i++)
        pthread_join(ws[i].thread, NULL);
}
