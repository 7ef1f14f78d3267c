/* proxy/limit: [server] max_connections, one bound on client connections for
 * the whole process (all workers, every configuration generation: the
 * descriptors it protects are the process's). At the bound the workers stop
 * accepting (HAProxy's maxconn: listeners off, new clients wait in the
 * kernel's backlog) and resume as soon as a connection ends; each episode is
 * logged once when it starts and once when it is over. */
#ifndef CM_PROXY_LIMIT_H
#define CM_PROXY_LIMIT_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>

struct conf;
struct conn_limit;

/* Descriptors certmapd needs besides one per client connection and one per
 * active backend connection: listeners, event loops, idle pooled backend
 * connections, LDAP, logs and a spare, for <c> (workers resolved). */
uint64_t conn_limit_fixed_fds(const struct conf *c);

/* The bound for <c> under an open-files limit of <nofile>: [server]
 * max_connections, or, when it is 0, what <nofile> can hold (at least 1).
 * Sets <*fits> to whether <nofile> holds that many. */
unsigned conn_limit_resolve(const struct conf *c, uint64_t nofile, bool *fits);

/* A limit of <max> (>= 1) connections shared by <n_workers> workers; NULL
 * when out of memory. */
struct conn_limit *conn_limit_new(unsigned max, unsigned n_workers);

/* The limit for <c> and <n_workers> under the process's open-files limit now
 * (conn_limit_resolve); logs the bound, and warns when the open-files limit
 * cannot hold it. NULL when out of memory. */
struct conn_limit *conn_limit_new_for(const struct conf *c, unsigned n_workers);

/* Frees <l>; NULL is fine. No worker may run. */
void conn_limit_free(struct conn_limit *l);

/* Worker <i>'s wake-up event, made active (from any thread) whenever the
 * limit becomes full or has room again; NULL stops the wake-ups (shutdown). */
void conn_limit_set_waker(struct conn_limit *l, unsigned i, struct event *ev);

/* A new bound, e.g. from a reloaded configuration; connections over it stay. */
void conn_limit_set_max(struct conn_limit *l, unsigned max);

/* Takes a slot for a connection just accepted: true, or false at the bound
 * (the caller closes it: another worker filled the last slot meanwhile). */
bool conn_limit_take(struct conn_limit *l);

/* Gives back a slot taken by conn_limit_take(). */
void conn_limit_release(struct conn_limit *l);

/* True while no slot is free: the listeners stay off. */
bool conn_limit_full(const struct conn_limit *l);

/* The bound, and the connections now counted. */
unsigned conn_limit_max(const struct conn_limit *l);
unsigned conn_limit_count(const struct conn_limit *l);

#endif
