/* [server] max_connections (limit.h).
 *
 * Why listeners off rather than accept-and-close: that is HAProxy's maxconn
 * (a listener over its bound is paused and resumed when a connection ends), so
 * a burst waits a moment in the kernel's backlog and is then served, where
 * nginx's "worker_connections are not enough" closes the new connection, which
 * a client sees as a failure. A client that waits too long gives up on its own
 * side; the backlog (listen(2)'s 1024) bounds what waits. Only a connection
 * that a worker accepted in the instant another worker took the last slot is
 * closed at once (no TLS: nothing to say yet), and counted in the episode's
 * closing log line.
 *
 * The count is one atomic for all workers; a worker that fills the bound or
 * frees a slot wakes every worker (event_active is thread-safe), and each
 * turns its own listeners off or on. */
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/resource.h>

#include "common/log.h"
#include "conf/conf.h"
#include "proxy/limit.h"

struct conn_limit {
    _Atomic unsigned n;       /* client connections open, all workers */
    _Atomic unsigned max;     /* the bound, >= 1 */
    _Atomic bool episode;     /* the bound was reached and the count has not fallen back yet */
    _Atomic uint64_t refused; /* accepted in a race at the bound and closed, this episode */
    _Atomic uint64_t episodes;
    unsigned n_workers;
    struct waker {
        struct event *_Atomic ev;
    } * wake; /* one per worker */
};

uint64_t conn_limit_fixed_fds(const struct conf *c)
{
    uint64_t w = c->workers;
    /* Per worker: its listeners, the epoll descriptor and libevent's
     * notification pair, the spare descriptor for the fd-exhaustion path, an
     * LDAP connection, and its idle pooled backend connections. */
    uint64_t per_worker = c->n_listen + 3 + 1 + 1 + c->keepalive_connections;
    /* Process: stdin/out/err, the access log, the Kerberos threads' KDC
     * sockets, and a spare for what libraries open (resolver, CRL, keytab). */
    return w * per_worker + 3 + 1 + 4 + 16;
}

unsigned conn_limit_resolve(const struct conf *c, uint64_t nofile, bool *fits)
{
    uint64_t fixed = conn_limit_fixed_fds(c);
    uint64_t max = c->max_connections;

    if (max == 0) {
        /* Two descriptors per client: its own and its backend connection.
         * When the fixed part alone (many workers, large pools) leaves less
         * than an eighth of the limit, an eighth: a bound of a handful of
         * clients would be a worse surprise than the warning that follows. */
        max = nofile > fixed + 2 ? (nofile - fixed) / 2 : 0;
        if (max < nofile / 8)
            max = nofile / 8;
        if (max == 0)
            max = 1;
        if (max > CONF_MAX_CONNECTIONS)
            max = CONF_MAX_CONNECTIONS;
    }
    *fits = fixed + 2 * max <= nofile;
    return (unsigned)max;
}

struct conn_limit *conn_limit_new(unsigned max, unsigned n_workers)
{
    struct conn_limit *l = calloc(1, sizeof *l);
    if (l == NULL)
        return NULL;
    l->wake = calloc(n_workers ? n_workers : 1, sizeof *l->wake);
    if (l->wake == NULL) {
        free(l);
        return NULL;
    }
    l->n_workers = n_workers;
    atomic_init(&l->max, max ? max : 1);
    return l;
}

struct conn_limit *conn_limit_new_for(const struct conf *c, unsigned n_workers)
{
    struct rlimit rl = {.rlim_cur = RLIM_INFINITY};
    getrlimit(RLIMIT_NOFILE, &rl);
    uint64_t nofile = rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX / 4 : (uint64_t)rl.rlim_cur;
    bool fits;
    unsigned max = conn_limit_resolve(c, nofile, &fits);
    uint64_t need = conn_limit_fixed_fds(c) + 2 * (uint64_t)max;

    if (!fits)
        log_warn("[server] max_connections = %u needs up to %llu open files (2 per client, "
                 "%llu for listeners, pooled backend connections, LDAP and logs), but the "
                 "open-files limit is %llu: connections past it will fail to be accepted; "
                 "raise the limit (LimitNOFILE=, ulimit -n) or lower max_connections",
                 max, (unsigned long long)need, (unsigned long long)conn_limit_fixed_fds(c),
                 (unsigned long long)nofile);
    else
        log_info("max_connections: %u%s (up to %llu descriptors; open-files limit %llu)", max,
                 c->max_connections == 0 ? ", from the open-files limit" : "",
                 (unsigned long long)need, (unsigned long long)nofile);
    return conn_limit_new(max, n_workers);
}

void conn_limit_free(struct conn_limit *l)
{
    if (l == NULL)
        return;
    free(l->wake);
    free(l);
}

void conn_limit_set_waker(struct conn_limit *l, unsigned i, struct event *ev)
{
    if (i < l->n_workers)
        atomic_store(&l->wake[i].ev, ev);
}

static void wake_all(struct conn_limit *l)
{
    for (unsigned i = 0; i < l->n_workers; i++) {
        struct event *ev = atomic_load(&l->wake[i].ev);
        if (ev != NULL)
            event_active(ev, 0, 0);
    }
}

void conn_limit_set_max(struct conn_limit *l, unsigned max)
{
    atomic_store(&l->max, max ? max : 1);
    wake_all(l); /* each worker turns its listeners on or off for the new bound */
}

bool conn_limit_take(struct conn_limit *l)
{
    unsigned max = atomic_load(&l->max);
    unsigned n = atomic_load(&l->n);
    do {
        if (n >= max) {
            atomic_fetch_add(&l->refused, 1);
            return false;
        }
    } while (!atomic_compare_exchange_weak(&l->n, &n, n + 1));
    if (n + 1 >= max) {
        if (!atomic_exchange(&l->episode, true)) {
            atomic_fetch_add(&l->episodes, 1);
            log_warn("max_connections (%u) reached: not accepting until connections end; new "
                     "clients wait in the listen backlog",
                     max);
        }
        wake_all(l);
    }
    return true;
}

void conn_limit_release(struct conn_limit *l)
{
    unsigned max = atomic_load(&l->max);
    unsigned n = atomic_fetch_sub(&l->n, 1) - 1;
    if (n + 1 == max)
        wake_all(l); /* room again: listeners on */
    /* The episode is over once a tenth of the bound is free (at least one
     * slot), so that a bound held under steady pressure logs once. */
    if (n + 1 + max / 10 <= max && atomic_load(&l->episode) && atomic_exchange(&l->episode, false))
        log_info("max_connections: below the bound again (%u of %u open); %llu connection(s) "
                 "accepted at the bound in the meantime were closed",
                 n, max, (unsigned long long)atomic_exchange(&l->refused, 0));
}

bool conn_limit_full(const struct conn_limit *l)
{
    return atomic_load(&l->n) >= atomic_load(&l->max);
}

unsigned conn_limit_max(const struct conn_limit *l)
{
    return atomic_load(&l->max);
}

unsigned conn_limit_count(const struct conn_limit *l)
{
    return atomic_load(&l->n);
}
