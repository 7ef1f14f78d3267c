/* proxy/conn: client connections. A connection owns its transport (io/), its
 * TLS verdict and certificate facts, and at most one stream (the request in
 * progress); pipelined requests wait in its input and get a stream each, in
 * order. Its own states are only those of a connection: handshake, idle,
 * active (a stream runs), closing. */
#ifndef CM_PROXY_CONN_H
#define CM_PROXY_CONN_H

#include <stdbool.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/event.h>

struct conf;
struct conf_listen;
struct tls_ctx;
struct mapper;
struct accesslog;
struct upstream_pool;
struct krb;
struct proxy_conn;
TAILQ_HEAD(proxy_conn_list, proxy_conn);

/* What a worker shares with its connections. */
struct conn_env {
    struct event_base *base;
    const struct conf *conf;
    struct tls_ctx *tls;
    struct mapper *mapper;        /* NULL without [mapping] */
    struct accesslog *alog;
    struct upstream_pool *pool;
    struct krb *krb;              /* NULL without [delegation] mode = kerberos */
    void (*post)(void *post_arg, void (*fn)(void *), void *fn_arg); /* to this worker's loop */
    void *post_arg;
    bool draining;                /* shutting down: no keep-alive, no new connection */
    struct proxy_conn_list conns;
    unsigned n_conns;
    void (*gone)(void *arg);      /* called when a connection ended */
    void *gone_arg;
};

/* Accepts <fd> (from <sa>) on listener <l> (NULL: a plain one) into <env>:
 * the TLS handshake starts, after a PROXY header when <l> has proxy_protocol.
 * True when a connection was made: env->gone is called when it ends, which
 * may be before this returns (a peer refused at once). False when none could
 * be (out of memory): <fd> is closed and env->gone is not called. */
bool proxy_conn_accept(struct conn_env *env, const struct conf_listen *l, int fd,
                       const struct sockaddr *sa, socklen_t salen);

/* The first step of a shutdown (env->draining set): connections that are idle
 * or still in their handshake close now; those with a request in flight finish it. */
void proxy_conn_drain(struct conn_env *env);

/* <env> was replaced by a reload: no more keep-alive (answers say
 * "Connection: close"); connections idle after a request close now; those
 * in their handshake, or with a request in flight, go on until it ends. */
void proxy_conn_retire(struct conn_env *env);

/* Closes up to <max> of <env>'s client connections that are idle between
 * requests (keep-alive), the longest idle first, at once and without a word
 * (as a keep-alive timeout does): room for new clients ([server]
 * reclaim_idle). Returns how many were closed. */
unsigned proxy_conn_reclaim_idle(struct conn_env *env, unsigned max);

/* Closes every connection of <env> at once. */
void proxy_conn_close_all(struct conn_env *env);

#endif
