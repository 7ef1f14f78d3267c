/* Workers: one thread and one event_base each, with their own listening
 * sockets (SO_REUSEPORT: the kernel spreads connections), their own upstream
 * pool and their own connections. Nothing is shared between workers but the
 * read-only configuration, TLS contexts and the access log descriptor. */
#include <dirent.h>
#include <errno.h>
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
#include "proxy/conn.h"
#include "proxy/limit.h"
#include "proxy/proxy.h"

struct worker_post;

struct worker {
    unsigned id;
    const struct conf *conf;
    struct event_base *base;
    int listen_fds[CONF_MAX_LISTEN];
    struct evconnlistener *listeners[CONF_MAX_LISTEN];
    size_t n_listeners;
    struct upstream_pool pool;
    struct conn_env env; /* what its connections share */
    struct event *stop_ev;
    struct event *grace_ev;
    /* Out of descriptors (or socket memory): the listeners are off for
     * <pause_ms> (100 ms doubling to 2 s, 0 again after an accept), so that
     * accept is not retried at once forever; <spare_fd> (/dev/null) is given
     * up for a moment to accept and close one waiting client. */
    struct event *resume_ev;
    uint32_t pause_ms;
    int spare_fd;
    /* [server] max_connections, shared by all workers (limit.h): <limit_ev>
     * wakes this worker when the bound is reached or has room again. */
    struct conn_limit *limit;
    struct event *limit_ev;
    pthread_t thread;
    /* Certificate mapping, when [mapping] is configured: this worker's source
     * (LDAP connection or LDIF view) and mapper over the shared cache. */
    struct map_source *source;
    struct mapper *mapper;
    /* Work handed over from other threads (a lookup finished elsewhere). */
    struct event *post_ev;
    pthread_mutex_t post_lock;
    bool post_lock_made;
    struct worker_post *post_head, *post_tail;
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

static void accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    struct worker *w = arg;
    w->pause_ms = 0;
    if (w->env.draining) {
        close(fd);
        return;
    }
    bool taken = conn_limit_take(w->limit);
    if (conn_limit_full(w->limit))
        listeners_enable(w, false); /* now: libevent's accept loop stops here */
    if (!taken) {
        close(fd); /* another worker took the last slot meanwhile (limit.c) */
        return;
    }
    unsigned before = w->env.n_conns;
    proxy_conn_accept(&w->env, fd, sa, (socklen_t)salen);
    if (w->env.n_conns == before)
        conn_limit_release(w->limit); /* not accepted after all */
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

static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    log_warn("worker %u: %u connection(s) still busy at the end of the shutdown grace time", w->id,
             w->env.n_conns);
    event_base_loopbreak(w->base);
}

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    w->env.draining = true;
    w->pool.closed = true;
    for (size_t i = 0; i < w->n_listeners; i++) {
        evconnlistener_free(w->listeners[i]);
        w->listeners[i] = NULL;
    }
    w->n_listeners = 0;
    evtimer_del(w->resume_ev);
    upstream_pool_purge(&w->pool);
    /* Idle connections and handshakes go now; requests in flight may finish. */
    proxy_conn_drain(&w->env);
    if (w->env.n_conns == 0)
        event_base_loopexit(w->base, NULL);
}

/* A connection went away: the end of a drain, when it was the last one. */
static void worker_conn_gone(void *arg)
{
    struct worker *w = arg;
    conn_limit_release(w->limit);
    if (w->env.draining && w->env.n_conns == 0)
        event_base_loopexit(w->base, NULL);
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

/* This worker's directory source and mapper, when [mapping] is configured. */
static int worker_mapping_init(struct worker *w, const struct proxy_shared *sh, char *err,
                               size_t errlen)
{
    const struct conf *c = w->conf;
    w->source = dir_source_open(c, w->base, err, errlen);
    if (w->source == NULL)
        return -1;
    w->mapper = mapper_new(c, w->source, sh->cache);
    if (w->mapper == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    mapper_set_post(w->mapper, worker_post, w);
    return 0;
}

static void worker_purge(struct worker *w);

struct worker *proxy_workers_bind(unsigned n, const struct proxy_shared *sh, char *err,
                                  size_t errlen)
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
        w->conf = c;
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
        upstream_pool_init(&w->pool, w->base, c, &sh->backend, sh->backend_tls);
        w->stop_ev = event_new(w->base, -1, 0, stop_cb, w);
        w->grace_ev = evtimer_new(w->base, grace_cb, w);
        w->post_ev = event_new(w->base, -1, 0, post_cb, w);
        w->resume_ev = evtimer_new(w->base, resume_cb, w);
        w->limit_ev = event_new(w->base, -1, 0, limit_cb, w);
        conn_limit_set_waker(limit, i, w->limit_ev);
        w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        pthread_mutex_init(&w->post_lock, NULL);
        w->post_lock_made = true;
        if (w->stop_ev == NULL || w->grace_ev == NULL || w->post_ev == NULL ||
            w->resume_ev == NULL || w->limit_ev == NULL) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        if (w->spare_fd < 0) {
            snprintf(err, errlen, "/dev/null: %s", strerror(errno));
            goto fail;
        }
        if (c->has_mapping_section && worker_mapping_init(w, sh, err, errlen) < 0)
            goto fail;
        w->env = (struct conn_env){
            .base = w->base,
            .conf = c,
            .tls = sh->tls,
            .mapper = w->mapper,
            .alog = sh->alog,
            .pool = &w->pool,
            .krb = sh->krb,
            .post = worker_post,
            .post_arg = w,
            .gone = worker_conn_gone,
            .gone_arg = w,
        };
        TAILQ_INIT(&w->env.conns);
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
    if (w->env.gone != NULL)
        proxy_conn_close_all(&w->env);
    upstream_pool_purge(&w->pool);
    for (size_t i = 0; i < w->n_listeners; i++)
        if (w->listeners[i] != NULL)
            evconnlistener_free(w->listeners[i]);
    /* Connections first (their lookups are cancelled), then what other
     * threads handed over (cancelled jobs: it only frees), then the mapping. */
    if (w->post_ev != NULL) {
        post_cb(-1, 0, w);
        event_free(w->post_ev);
    }
    if (w->post_lock_made)
        pthread_mutex_destroy(&w->post_lock);
    mapper_free(w->mapper);
    map_source_close(w->source);
    if (w->stop_ev != NULL)
        event_free(w->stop_ev);
    if (w->grace_ev != NULL)
        event_free(w->grace_ev);
    if (w->resume_ev != NULL)
        event_free(w->resume_ev);
    if (w->limit_ev != NULL)
        event_free(w->limit_ev);
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
