/* proxy/accesslog: one line per request, from a plain record. */
#ifndef CM_PROXY_ACCESSLOG_H
#define CM_PROXY_ACCESSLOG_H

#include <stddef.h>
#include <stdint.h>

#include "common/reason.h"

struct accesslog;

/* What one line says of one request. Strings may be NULL (written "-"). */
struct access_record {
    uint64_t conn_id;
    unsigned req_no;             /* 1 for the connection's first request */
    const char *client;          /* the client's address */
    const char *via;             /* the L4 peer that named <client> in a PROXY header; NULL: none */
    const char *method;
    const char *path;            /* the request target as received */
    size_t path_len;
    int status;
    uint64_t bytes_in, bytes_out;
    double ms;                   /* the whole request */
    double upstream_ms;          /* to the backend's response head; < 0: none */
    const char *upstream;        /* backend addresses tried ("-": none) */
    const char *serial;          /* of the client certificate */
    const char *user;            /* the mapped account */
    enum reason reason;
};

/* Opens the access log named by [server] access_log ("stderr", "off", a path).
 * NULL with a reason in <err> when the file cannot be opened for appending. */
struct accesslog *accesslog_open(const char *spec, char *err, size_t errlen);
void accesslog_close(struct accesslog *l);

/* Reopens the access log file by its name (logrotate renamed it: SIGUSR1), as
 * one atomic switch of the descriptor the workers write to. 0 (also for
 * stderr and off), or -1 with a reason in <err>: the old file stays in use. */
int accesslog_reopen(struct accesslog *l, char *err, size_t errlen);

/* Writes one line for <r>, with one write(2) (lines of several workers never mix). */
void accesslog_write(struct accesslog *l, const struct access_record *r);

#endif
