/* Reading the PROXY protocol header off a socket (ppread.h). */
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/event_struct.h> /* struct event embedded, set up with event_assign() */

#include "conf/conf.h"
#include "proxy/ppread.h"

struct pp_read {
    int fd;
    struct event ev;
    pp_read_cb cb;
    void *arg;
    size_t have; /* header bytes read off the socket so far */
    char why[96];
    uint8_t buf[PP_MAX];
};

/* A recv(2) that goes on after a signal. */
static ssize_t recv_more(int fd, void *buf, size_t len, int flags)
{
    ssize_t n;
    do
        n = recv(fd, buf, len, flags);
    while (n < 0 && errno == EINTR);
    return n;
}

/* Ends the wait with <end>: the read event is off first, so <cb> may free <p>. */
static void finish(struct pp_read *p, enum pp_read_end end, const struct pp_result *r,
                   const char *why)
{
    event_del(&p->ev);
    p->cb(p->arg, end, r, why);
}

/* What came so far is looked at in place (MSG_PEEK); then exactly the bytes
 * that belong to the header are taken: all of them while it is incomplete
 * (pp_parse guarantees they are header), only its rest once it is whole. */
static void on_read(evutil_socket_t fd, short what, void *arg)
{
    struct pp_read *p = arg;
    struct pp_result r;
    ssize_t n = recv_more(p->fd, p->buf + p->have, sizeof p->buf - p->have, MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    if (n <= 0) {
        snprintf(p->why, sizeof p->why, "%s after %zu bytes of a PROXY header",
                 n == 0 ? "closed" : strerror(errno), p->have);
        finish(p, PPR_CLOSED, NULL, p->why);
        return;
    }
    enum pp_status st = pp_parse(p->buf, p->have + (size_t)n, &r);
    if (st == PP_BAD) {
        finish(p, PPR_BAD, NULL, r.why);
        return;
    }
    size_t take = st == PP_DONE ? r.len - p->have : (size_t)n;
    ssize_t got = recv_more(p->fd, p->buf + p->have, take, 0);
    if (got != (ssize_t)take) {
        /* The kernel had these bytes a moment ago: only an error takes them. */
        snprintf(p->why, sizeof p->why, "reading a PROXY header: %s",
                 got < 0 ? strerror(errno) : "short read");
        finish(p, PPR_CLOSED, NULL, p->why);
        return;
    }
    p->have += take;
    if (st == PP_DONE)
        finish(p, PPR_DONE, &r, NULL);
}

struct pp_read *pp_read_new(struct event_base *base, int fd, pp_read_cb cb, void *arg)
{
    struct pp_read *p = malloc(sizeof *p);
    if (p == NULL)
        return NULL;
    p->fd = fd;
    p->cb = cb;
    p->arg = arg;
    p->have = 0;
    p->why[0] = '\0';
    if (event_assign(&p->ev, base, fd, EV_READ | EV_PERSIST, on_read, p) < 0 ||
        event_add(&p->ev, NULL) < 0) {
        free(p);
        return NULL;
    }
    return p;
}

void pp_read_free(struct pp_read *p)
{
    if (p == NULL)
        return;
    event_del(&p->ev);
    free(p);
}

bool pp_from_allowed(const struct conf *c, const struct sockaddr *sa)
{
    if (c->n_pp_from == 0)
        return true;
    const uint8_t *a;
    if (sa->sa_family == AF_INET)
        a = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
    else if (sa->sa_family == AF_INET6)
        a = (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
    else
        return false;
    for (size_t i = 0; i < c->n_pp_from; i++) {
        const struct conf_cidr *n = &c->pp_from[i];
        if (n->family != sa->sa_family)
            continue;
        unsigned full = n->bits / 8, rest = n->bits % 8;
        if (memcmp(a, n->addr, full) != 0)
            continue;
        if (rest != 0 && ((a[full] ^ n->addr[full]) & (uint8_t)(0xFF << (8 - rest))) != 0)
            continue;
        return true;
    }
    return false;
}
