/* The backend servers: resolving every [backend] url at start-up, the order
 * in which a new connection tries them (round robin over those not down),
 * and their passive health: a server that refused, timed out or failed TLS
 * while connecting is skipped for [backend] fail_timeout, then tried again. */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "proxy/upstream.h"

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t now_ms(void)
{
    return now_ns() / 1000000;
}

static void addr_text(const struct sockaddr *sa, socklen_t len, char *out, size_t outlen)
{
    char host[INET6_ADDRSTRLEN], port[8];
    if (getnameinfo(sa, len, host, sizeof host, port, sizeof port,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        snprintf(out, outlen, "?");
        return;
    }
    snprintf(out, outlen, sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
}

static bool host_is_address(const char *host)
{
    unsigned char a[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

/* "FILE:LINE: [backend] url" for server <u>. */
static const char *url_where(const struct conf *c, const struct conf_backend_url *u, char *buf,
                             size_t len)
{
    if (u->line > 0 && c->path != NULL)
        snprintf(buf, len, "%s:%d: [backend] url", c->path, u->line);
    else
        conf_where(c, "backend", "url", buf, len);
    return buf;
}

/* Resolves server <i> into <bs>. Returns 0, or -1 with a reason in <err>. */
static int resolve_server(const struct conf *c, struct backend_set *bs, unsigned i, char *err,
                          size_t errlen)
{
    const struct conf_backend_url *u = &c->backends[i];
    struct backend_server *s = &bs->srv[i];
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    char what[1024], a[64];
    int rc = getaddrinfo(u->host, u->port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "%s: cannot resolve \"%s\": %s", url_where(c, u, what, sizeof what),
                 u->host, gai_strerror(rc));
        return -1;
    }
    s->host = u->host;
    s->name = u->host_header;
    s->first = bs->n;
    s->n = 0;
    /* With several servers, a name is kept beside its address in the logs. */
    bool named = c->n_backends > 1 && !host_is_address(u->host);
    for (struct addrinfo *ai = res; ai != NULL && s->n < BACKEND_MAX_ADDR; ai = ai->ai_next) {
        unsigned k = bs->n;
        memcpy(&bs->addr[k], ai->ai_addr, ai->ai_addrlen);
        bs->len[k] = ai->ai_addrlen;
        bs->srv_of[k] = (uint8_t)i;
        addr_text(ai->ai_addr, ai->ai_addrlen, a, sizeof a);
        if (named)
            snprintf(bs->text[k], sizeof bs->text[k], "%s=%s", u->host_header, a);
        else
            snprintf(bs->text[k], sizeof bs->text[k], "%s", a);
        bs->n++;
        s->n++;
    }
    freeaddrinfo(res);
    if (s->n == 0) {
        snprintf(err, errlen, "%s: \"%s\" has no address", url_where(c, u, what, sizeof what),
                 u->host);
        return -1;
    }
    atomic_init(&s->down, false);
    atomic_init(&s->retry_at_ms, 0);
    atomic_init(&s->failed_at_ns, 0);
    return 0;
}

struct backend_set *backend_set_new(const struct conf *c, char *err, size_t errlen)
{
    struct backend_set *bs = calloc(1, sizeof *bs);
    if (bs == NULL) {
        snprintf(err, errlen, "backend: out of memory");
        return NULL;
    }
    bs->fail_timeout_ms = c->backend_fail_timeout_ms;
    for (unsigned i = 0; i < c->n_backends && i < BACKEND_MAX_SERVERS; i++) {
        if (resolve_server(c, bs, i, err, errlen) < 0) {
            free(bs);
            return NULL;
        }
        bs->n_srv++;
    }
    if (bs->n_srv == 0) {
        snprintf(err, errlen, "[backend] url is required");
        free(bs);
        return NULL;
    }
    return bs;
}

void backend_set_free(struct backend_set *bs)
{
    free(bs);
}

static bool usable_at(struct backend_set *bs, unsigned srv, int64_t now)
{
    struct backend_server *s = &bs->srv[srv];
    return !atomic_load_explicit(&s->down, memory_order_relaxed) ||
           now >= atomic_load_explicit(&s->retry_at_ms, memory_order_relaxed);
}

bool backend_server_usable(struct backend_set *bs, unsigned srv)
{
    return usable_at(bs, srv, now_ms());
}

unsigned backend_order(struct backend_set *bs, unsigned *rr, uint8_t *order)
{
    unsigned n = 0, n_srv = bs->n_srv;
    int64_t now = now_ms();
    uint8_t down[BACKEND_MAX_SERVERS];
    unsigned n_down = 0;
    unsigned start = *rr % n_srv;
    for (unsigned k = 0; k < n_srv; k++) {
        unsigned srv = (start + k) % n_srv;
        if (usable_at(bs, srv, now))
            order[n++] = (uint8_t)srv;
        else
            down[n_down++] = (uint8_t)srv;
    }
    /* The next request starts after this one's server, so that a server down
     * does not hand its share to the one after it alone. */
    if (n > 0)
        *rr = (unsigned)order[0] + 1;
    else
        *rr = start + 1;
    /* Insertion sort of the few down ones: the least recently failed first. */
    for (unsigned i = 1; i < n_down; i++) {
        uint8_t v = down[i];
        int64_t fv = atomic_load_explicit(&bs->srv[v].failed_at_ns, memory_order_relaxed);
        unsigned j = i;
        while (j > 0 && atomic_load_explicit(&bs->srv[down[j - 1]].failed_at_ns,
                                             memory_order_relaxed) > fv) {
            down[j] = down[j - 1];
            j--;
        }
        down[j] = v;
    }
    memcpy(order + n, down, n_down);
    return n + n_down;
}

void backend_server_failed(struct backend_set *bs, unsigned srv, const char *why)
{
    struct backend_server *s = &bs->srv[srv];
    int64_t now = now_ms();
    /* In nanoseconds: two servers refused within one millisecond keep their order. */
    atomic_store_explicit(&s->failed_at_ns, now_ns(), memory_order_relaxed);
    if (bs->fail_timeout_ms == 0)
        return; /* never skipped */
    /* Never sooner than a failed health check said (until one passes). */
    int64_t until = now + (int64_t)bs->fail_timeout_ms;
    if (atomic_load_explicit(&s->retry_at_ms, memory_order_relaxed) < until)
        atomic_store_explicit(&s->retry_at_ms, until, memory_order_relaxed);
    if (!atomic_exchange(&s->down, true))
        log_warn("backend server %s is down (%s): skipped for %llu ms, then tried again", s->name,
                 why, (unsigned long long)bs->fail_timeout_ms);
}

void backend_server_ok(struct backend_set *bs, unsigned srv)
{
    struct backend_server *s = &bs->srv[srv];
    /* A load, then the exchange only on a transition: the hot path only reads. */
    if (atomic_load_explicit(&s->down, memory_order_relaxed) && atomic_exchange(&s->down, false)) {
        atomic_store_explicit(&s->retry_at_ms, 0, memory_order_relaxed);
        log_warn("backend server %s is up again", s->name);
    }
}

void backend_server_checked(struct backend_set *bs, unsigned srv, bool ok, const char *why)
{
    struct backend_server *s = &bs->srv[srv];
    if (ok) {
        atomic_store_explicit(&s->retry_at_ms, 0, memory_order_relaxed);
        if (atomic_load_explicit(&s->down, memory_order_relaxed) &&
            atomic_exchange(&s->down, false))
            log_warn("backend server %s is up again (%s)", s->name, why);
        return;
    }
    atomic_store_explicit(&s->failed_at_ns, now_ns(), memory_order_relaxed);
    atomic_store_explicit(&s->retry_at_ms, INT64_MAX, memory_order_relaxed);
    if (!atomic_exchange(&s->down, true))
        log_warn("backend server %s is down (%s): skipped until a health check passes", s->name,
                 why);
}
