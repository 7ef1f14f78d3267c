/* proxy/upstream.c and proxy/pool.c only: the layout of a backend connection. */
#ifndef CM_PROXY_UPSTREAM_INT_H
#define CM_PROXY_UPSTREAM_INT_H

#include <llhttp.h>
#include <event2/event_struct.h> /* struct event embedded, set up with event_assign() */

#include "io/io.h"
#include "proxy/upstream.h"

struct upstream {
    struct upstream_pool *pool;
    struct io *io;
    struct event timer;       /* connect timeout, then read timeout; in the pool, idle timeout */
    const struct upstream_handler *h; /* NULL while idle in the pool */
    void *arg;
    struct upstream_trail *trail; /* the holder's record, NULL while idle */
    unsigned addr_idx;        /* the backend address this connection goes to (struct backend_set) */
    uint8_t order[BACKEND_MAX_SERVERS]; /* while connecting: the servers to try, in order */
    uint8_t n_order, at;      /* how many, and which one is being tried */
    char *identity;           /* whose connection this is (delegation), NULL: anyone's */
    unsigned char binding[96]; /* tls-server-end-point of an https backend, once connected */
    size_t binding_len;
    llhttp_t parser;
    struct proxy_head head;   /* response head being received */
    bool connected;
    bool reused;              /* taken from the pool (may be stale) */
    bool head_request;
    bool resp_started;        /* the head was handed over */
    bool resp_done;
    bool close_delimited;
    bool skip;                /* inside an interim 1xx response */
    bool failed;
    TAILQ_ENTRY(upstream) link;
};

/* Frees <u> and its connection at once (not while its io is on the stack: see io_free). */
void upstream_free(struct upstream *u);

#endif
