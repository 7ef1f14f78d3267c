/* proxy/ppread: waits for the PROXY protocol header (proxyproto.h) on a newly
 * accepted socket of a `listen = ... proxy_protocol` listener, before any TLS:
 * it peeks at what has come and reads exactly the header's bytes, so the
 * first byte left in the socket is the client's own (its ClientHello). It
 * also judges [server] proxy_protocol_from. The wait's time limit is the
 * connection's (header_timeout); this object has no timer of its own. */
#ifndef CM_PROXY_PPREAD_H
#define CM_PROXY_PPREAD_H

#include <stdbool.h>
#include <sys/socket.h>

#include <event2/event.h>

#include "proxy/proxyproto.h"

struct conf;
struct pp_read;

enum pp_read_end {
    PPR_DONE,   /* a whole header was read: <r> says what it said */
    PPR_BAD,    /* not a header, or a malformed one: <why> */
    PPR_CLOSED, /* the peer closed (or reset) before a whole header came: <why> */
};

/* Reports the end of the wait, once. <r> is valid only inside the call;
 * <why> is static or lives as long as the pp_read. pp_read_free() is safe inside. */
typedef void (*pp_read_cb)(void *arg, enum pp_read_end end, const struct pp_result *r,
                           const char *why);

/* Starts reading a header off <fd> (not owned; non-blocking) on <base>,
 * reporting to <cb> with <arg>. NULL when memory is short. */
struct pp_read *pp_read_new(struct event_base *base, int fd, pp_read_cb cb, void *arg);

/* Stops the wait and frees <p>; NULL is fine. The socket stays open. */
void pp_read_free(struct pp_read *p);

/* Whether <sa> may send a PROXY header under <c>'s [server] proxy_protocol_from
 * (true when that list is empty: anyone may). */
bool pp_from_allowed(const struct conf *c, const struct sockaddr *sa);

#endif
