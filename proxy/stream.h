/* proxy/stream: one request and its response. The connection (proxy/conn.c)
 * feeds it the bytes the client sends; it parses the request with llhttp,
 * applies the location's policy, has the connection ask for a certificate
 * late when it needs one (holding the body meanwhile), maps the certificate
 * to an account, forwards the request to an upstream connection and relays
 * the response to the client, then writes the access log line. Its stages
 * are one enum, advanced by one function (stream_run). It never sees the
 * connection's struct: what it needs of the client is in struct stream_client. */
#ifndef CM_PROXY_STREAM_H
#define CM_PROXY_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/reason.h"
#include "tls/facts.h"

struct io;
struct conf;
struct mapper;
struct accesslog;
struct upstream_pool;
struct krb;
typedef void (*stream_post_fn)(void *post_arg, void (*fn)(void *), void *fn_arg);

/* How a stream ended, for its connection. */
enum stream_end {
    STREAM_KEEP_ALIVE, /* answered; the connection may carry another request */
    STREAM_CLOSE,      /* answered; close once the answer is written (lingering) */
    STREAM_ABORT,      /* close now: part of an answer is out and the rest is lost */
};

/* What a stream may ask of its connection. */
struct stream_client_ops {
    /* Ask the client for a certificate now (renegotiation / post-handshake
     * auth). true: asked, stream_cert_answered() follows; false: not possible
     * (said why in the error log); the stream goes on with what it has. */
    bool (*ask_cert)(void *arg);
    /* Feed the stream again: it can take more of the client's bytes. */
    void (*more)(void *arg);
    /* The stream is over (logged); the connection frees it, later, and goes on as <how> says. */
    void (*done)(void *arg, enum stream_end how);
};

/* The client side as a stream sees it; owned and kept up to date by the connection. */
struct stream_client {
    struct io *io;               /* the client's transport: responses are written to it */
    const struct conf *conf;
    struct mapper *mapper;       /* NULL without [mapping] */
    struct accesslog *alog;
    struct upstream_pool *pool;
    struct krb *krb;             /* Kerberos delegation; NULL: identity headers only */
    stream_post_fn post;         /* hands work back to this worker's loop (from krb/'s threads) */
    void *post_arg;
    const char *peer;            /* the client's address, as text */
    const char *via;             /* the L4 peer that sent a PROXY header naming <peer>, or NULL */
    uint64_t conn_id;
    unsigned n_requests;         /* requests begun on the connection, this one included */
    const struct cert_facts *facts; /* the verified certificate, or NULL */
    enum reason cert_reason;     /* the verdict on a certificate that was sent, R_NONE: none or fine */
    bool cert_asked;             /* the client was asked for a certificate (handshake or late) */
    bool draining;               /* the worker is shutting down: no keep-alive */
    const struct stream_client_ops *ops;
    void *arg;
};

struct stream;

/* A new stream for the next request on <sc>'s connection; NULL when memory is short. */
struct stream *stream_new(struct stream_client *sc);

/* Frees <st>; if it was not over, it is logged as abandoned first (499: the
 * client went away) and its upstream connection closed. */
void stream_free(struct stream *st);

/* Parses up to <len> bytes the client sent. Returns how many were taken;
 * fewer when the stream waits (for the policy, a certificate, the directory,
 * the backend) or its request is complete: it calls ops->more when it can take
 * more. Never calls ops->done from inside this call without returning right after. */
size_t stream_feed(struct stream *st, const char *data, size_t len);

/* The connection's answer to ops->ask_cert: the client answered and
 * <sc>->facts / cert_reason hold the verdict. */
void stream_cert_answered(struct stream *st);

/* The connection failed while the client was asked for a certificate:
 * logged as cert_required with <status> (403, or 499 when the client went
 * away), and over. */
void stream_cert_lost(struct stream *st, int status);

/* The client may take more of the response now (its output drained). */
void stream_client_writable(struct stream *st);

/* Whether <st> is waiting for the backend's answer after its whole request
 * (an EAS long poll): such a stream is not cut by a shutdown's first step. */
bool stream_in_flight(const struct stream *st);

/* Whether <st> waits for the client's answer to a late certificate request. */
bool stream_awaits_cert(const struct stream *st);

/* Whether <st> has begun: its first byte of a request was taken. */
bool stream_started(const struct stream *st);

/* Text for debug lines: the stage <st> is in. */
const char *stream_stage_name(const struct stream *st);

#endif
