/* crl_fetch and ocsp, on the revocation thread (tls/revoke.c): CRLs from the
 * http:// distribution points of client certificates, base and delta, cached
 * per URL and refreshed before nextUpdate; the certificate's OCSP responder
 * when no current CRL covers it. One small HTTP/1.0 client on the thread's
 * event_base, bounded in time and size, follows no redirect. Workers only
 * ask (tls_conn_crl_pending), under the revocation state's lock, and wake
 * the thread. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "common/log.h"
#include "tls/internal.h"
#include "tls/revoke.h"
#include "tls/tls.h"

/* ---- crl_fetch: CRLs from the certificates' distribution points ---------------------- */

/* Splits an http:// URL into host, port and path. -1: another scheme, user
 * information, a query-less path that is not absolute, bytes that are not
 * printable ASCII. */
static int url_split(const char *url, char **host, char **port, char **path)
{
    if (strncasecmp(url, "http://", 7) != 0 || strlen(url) > URL_MAX)
        return -1;
    for (const char *p = url; *p != '\0'; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
            return -1;
    const char *h = url + 7, *slash = strchr(h, '/');
    if (slash == NULL)
        return -1;
    const char *hend = slash, *colon = NULL;
    if (*h == '[') {
        const char *close = memchr(h, ']', (size_t)(slash - h));
        if (close == NULL)
            return -1;
        colon = close[1] == ':' ? close + 1 : NULL;
        if (colon == NULL && close + 1 != slash)
            return -1;
        hend = close + 1;
    } else {
        colon = memchr(h, ':', (size_t)(slash - h));
        hend = colon != NULL ? colon : slash;
    }
    if (hend == h || memchr(h, '@', (size_t)(slash - h)) != NULL)
        return -1;
    if (colon != NULL) {
        size_t n = (size_t)(slash - colon - 1);
        if (n == 0 || n > 5 || strspn(colon + 1, "0123456789") < n)
            return -1;
    }
    bool v6 = *h == '[';
    *host = strndup(h + v6, (size_t)(hend - h) - 2 * v6);
    *port = colon != NULL ? strndup(colon + 1, (size_t)(slash - colon - 1)) : strdup("80");
    *path = strdup(slash);
    if (*host == NULL || *port == NULL || *path == NULL) {
        free(*host);
        free(*port);
        free(*path);
        return -1;
    }
    return 0;
}

static void fetch_timer_cb(evutil_socket_t fd, short what, void *arg);

void tls_rev_fetch_free(struct fetch *f)
{
    if (f == NULL)
        return;
    if (f->bev != NULL)
        bufferevent_free(f->bev);
    if (f->timer != NULL)
        event_free(f->timer);
    tls_crlent_put(f->ent);
    OCSP_CERTID_free(f->ocsp_id);
    ASN1_INTEGER_free(f->serial);
    free(f->url);
    free(f->host);
    free(f->port);
    free(f->path);
    free(f);
}

/* The fetch of <url>, made (queued, or ignored) when first seen. Under <mu>. */
static struct fetch *fetch_find_locked(struct tls_rev *r, const char *url, bool make)
{
    for (size_t i = 0; i < r->n_fetches; i++)
        if (strcmp(r->fetches[i]->url, url) == 0)
            return r->fetches[i];
    if (!make)
        return NULL;
    if (r->n_fetches == FETCH_MAX) {
        if (!r->fetch_full_logged)
            log_warn("crl_fetch: more than %d distribution points seen; %s and later ones are "
                     "not fetched",
                     FETCH_MAX, url);
        r->fetch_full_logged = true;
        return NULL;
    }
    struct fetch *f = calloc(1, sizeof *f);
    if (f == NULL || (f->url = strdup(url)) == NULL) {
        free(f);
        return NULL;
    }
    f->r = r;
    if (url_split(url, &f->host, &f->port, &f->path) < 0) {
        f->state = FS_IGNORED;
        log_info("crl_fetch: distribution point %s ignored: only http://HOST[:PORT]/PATH is "
                 "fetched (logged once)",
                 url);
    } else {
        f->state = FS_QUEUED;
        f->started = time(NULL);
    }
    r->fetches[r->n_fetches++] = f;
    return f;
}

/* The URIs of the distribution points <dps> (a certificate's CRL
 * distribution points, a CRL's Freshest CRL), into <urls> (at most <max>, each
 * NUL-terminated, <= URL_MAX). A URI with a byte that is not printable ASCII
 * is left out: it could be neither fetched nor logged safely. Returns how many. */
static size_t dp_urls(STACK_OF(DIST_POINT) * dps, char urls[][URL_MAX + 1], size_t max)
{
    size_t n = 0;
    for (int i = 0; i < sk_DIST_POINT_num(dps) && n < max; i++) {
        DIST_POINT *dp = sk_DIST_POINT_value(dps, i);
        if (dp->distpoint == NULL || dp->distpoint->type != 0)
            continue;
        GENERAL_NAMES *names = dp->distpoint->name.fullname;
        for (int j = 0; j < sk_GENERAL_NAME_num(names) && n < max; j++) {
            GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, j);
            if (gn->type != GEN_URI)
                continue;
            const ASN1_IA5STRING *u = gn->d.uniformResourceIdentifier;
            bool printable = u->length > 0 && u->length <= URL_MAX;
            for (int k = 0; printable && k < u->length; k++)
                printable = u->data[k] > 0x20 && u->data[k] < 0x7f;
            if (!printable)
                continue;
            memcpy(urls[n], u->data, (size_t)u->length);
            urls[n++][u->length] = '\0';
        }
    }
    return n;
}

void tls_rev_republish(struct tls_rev *r);
static void fetch_start(struct tls_rev *r, struct fetch *f);

static void timeval_ms(struct timeval *tv, uint64_t ms)
{
    tv->tv_sec = (time_t)(ms / 1000);
    tv->tv_usec = (suseconds_t)(ms % 1000) * 1000;
}

/* When to fetch again the CRL <e> of a fetch that worked: at 80 % of its
 * validity, at least a minute before nextUpdate, never sooner than 5 s. */
static uint64_t refresh_after_ms(const struct tls_rev *r, const struct tls_crlent *e)
{
    time_t now = time(NULL);
    if (e == NULL || e->next_update == 0)
        return r->refresh_ms;
    time_t at = e->this_update + (e->next_update - e->this_update) * 4 / 5;
    if (e->next_update - 60 < at)
        at = e->next_update - 60;
    return at - now < 5 ? 5000 : (uint64_t)(at - now) * 1000;
}

static void fetch_idle(struct tls_rev *r, struct fetch *f, uint64_t next_ms)
{
    pthread_mutex_lock(&r->mu);
    f->state = FS_IDLE;
    pthread_mutex_unlock(&r->mu);
    struct timeval tv;
    timeval_ms(&tv, next_ms);
    evtimer_add(f->timer, &tv);
}

/* Whether the CRL <e> fetched by <f> may be used; NULL, or why not. */
static const char *fetch_refusal(const struct fetch *f, const struct tls_crlent *e, char *why,
                                 size_t len)
{
    if (e->signer == NULL)
        snprintf(why, len, "the CRL of %s is signed by neither a trusted issuer nor a trust anchor",
                 e->issuer);
    else if (f->delta != (e->base_number != NULL))
        snprintf(why, len, "a %s CRL where a %s CRL was expected",
                 e->base_number != NULL ? "delta" : "base", f->delta ? "delta" : "base");
    else if (!tls_crlent_current(e, time(NULL)))
        snprintf(why, len, "the CRL of %s is not current (stale: its nextUpdate has passed)",
                 e->issuer);
    else if (f->ent != NULL && tls_crlent_cmp(e, f->ent) < 0)
        snprintf(why, len, "the CRL of %s is older than the one fetched before", e->issuer);
    else
        return NULL;
    return why;
}

/* A base CRL's first delta fetch, when it names one (Freshest CRL) that is
 * not being fetched already: NULL when none. */
static struct fetch *delta_of(struct tls_rev *r, struct fetch *f)
{
    if (f->delta)
        return NULL;
    STACK_OF(DIST_POINT) *fresh = X509_CRL_get_ext_d2i(f->ent->crl, NID_freshest_crl, NULL, NULL);
    char urls[4][URL_MAX + 1];
    size_t n = dp_urls(fresh, urls, 4);
    sk_DIST_POINT_pop_free(fresh, DIST_POINT_free);
    ERR_clear_error();
    f->ent->wants_delta = false;
    struct fetch *d = NULL;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < n && d == NULL; i++) {
        struct fetch *x = fetch_find_locked(r, urls[i], true);
        if (x == NULL || x->state == FS_IGNORED || x == f)
            continue;
        x->delta = true;
        f->ent->wants_delta = true;
        if (x->state != FS_BUSY && x->ent == NULL) {
            x->state = FS_BUSY;
            x->started = time(NULL);
            d = x;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return d;
}

/* A fetch of <f> ended: <crl> (taken; NULL on failure, with <why>). */
static void ocsp_done(struct fetch *f, const unsigned char *body, size_t len, const char *why);

static void fetch_done(struct fetch *f, X509_CRL *crl, const char *why)
{
    struct tls_rev *r = f->r;
    char whybuf[700];
    if (f->ocsp_id != NULL) { /* a failure on the way: what ocsp_done says */
        X509_CRL_free(crl);
        ocsp_done(f, NULL, 0, why);
        return;
    }
    if (f->bev != NULL) {
        bufferevent_free(f->bev);
        f->bev = NULL;
    }
    if (f->timer != NULL)
        evtimer_del(f->timer);
    struct tls_crlent *e = NULL;
    if (crl != NULL) {
        e = tls_crlent_new(r->t, crl, f->url, whybuf, sizeof whybuf);
        why = e == NULL ? whybuf : fetch_refusal(f, e, whybuf, sizeof whybuf);
        if (why != NULL) {
            tls_crlent_put(e);
            e = NULL;
        }
    }
    struct fetch *delta = NULL;
    if (e != NULL) {
        if (f->fail_logged)
            log_info("crl_fetch %s: works again", f->url);
        f->fail_logged = false;
        f->failures = 0;
        long long num = -1;
        int64_t n64;
        if (e->number != NULL && ASN1_INTEGER_get_int64(&n64, e->number) == 1)
            num = (long long)n64;
        log_info("crl_fetch %s: %sCRL of %s, number %lld, %d revoked, next update in %llds", f->url,
                 e->base_number != NULL ? "delta " : "", e->issuer, num,
                 sk_X509_REVOKED_num(X509_CRL_get_REVOKED(e->crl)),
                 e->next_update != 0 ? (long long)(e->next_update - time(NULL)) : -1LL);
        tls_crlent_put(f->ent);
        f->ent = e;
        delta = delta_of(r, f);
    } else {
        f->failures++;
        if (!f->fail_logged)
            log_warn("crl_fetch %s: %s; %s (logged once until a fetch works)", f->url, why,
                     f->ent != NULL && tls_crlent_current(f->ent, time(NULL))
                         ? "the CRL fetched before stays in use until its nextUpdate"
                         : "its CA's certificates have no known revocation status for now");
        f->fail_logged = true;
    }
    if (e != NULL)
        tls_rev_republish(r); /* a failure changes nothing in use */
    if (delta != NULL) {
        delta->waiter = f; /* <f> stays busy, so that requests wait for the delta too */
        fetch_start(r, delta);
        return;
    }
    uint64_t next;
    if (e != NULL) {
        next = refresh_after_ms(r, f->ent);
    } else {
        next = (uint64_t)FETCH_BACKOFF_MS << (f->failures < 8 ? f->failures - 1 : 7);
        if (next > FETCH_BACKOFF_MAX_MS)
            next = FETCH_BACKOFF_MAX_MS;
    }
    fetch_idle(r, f, next);
    if (f->waiter != NULL) {
        fetch_idle(r, f->waiter, refresh_after_ms(r, f->waiter->ent));
        f->waiter = NULL;
    }
}

/* What the server sent, when it closed: the status line, headers, body. */
static void fetch_parse(struct fetch *f)
{
    struct evbuffer *in = bufferevent_get_input(f->bev);
    size_t len = evbuffer_get_length(in);
    unsigned char *all = evbuffer_pullup(in, -1);
    char why[256];
    if (all == NULL || len < 12) {
        fetch_done(f, NULL, "the server closed the connection without an answer");
        return;
    }
    struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    if (end.pos < 0 || memcmp(all, "HTTP/1.", 7) != 0) {
        fetch_done(f, NULL, "not an HTTP answer");
        return;
    }
    /* "HTTP/1.x NNN": three digits, read from the buffer, which has no NUL. */
    int status = 0;
    if (all[8] != ' ' || !isdigit(all[9]) || !isdigit(all[10]) || !isdigit(all[11])) {
        fetch_done(f, NULL, "not an HTTP status line");
        return;
    }
    status = (all[9] - '0') * 100 + (all[10] - '0') * 10 + (all[11] - '0');
    if (status != 200) {
        snprintf(why, sizeof why, "HTTP status %d%s", status,
                 status >= 300 && status < 400 ? " (redirects are not followed)" : "");
        fetch_done(f, NULL, why);
        return;
    }
    /* HTTP/1.0 was asked: a chunked answer is a broken server. */
    char *head = malloc((size_t)end.pos + 1);
    if (head != NULL) {
        memcpy(head, all, (size_t)end.pos);
        head[end.pos] = '\0';
    }
    bool chunked = false;
    long long clen = -1;
    for (char *line = head != NULL ? strchr(head, '\n') : NULL; line != NULL;
         line = strchr(line + 1, '\n')) {
        if (strncasecmp(line + 1, "transfer-encoding:", 18) == 0)
            chunked = true;
        if (strncasecmp(line + 1, "content-length:", 15) == 0) {
            /* Digits only (after blanks), at most 18 of them: else a broken server. */
            const char *v = line + 16;
            char *stop = NULL;
            v += strspn(v, " \t");
            errno = 0;
            clen = isdigit((unsigned char)*v) ? strtoll(v, &stop, 10) : -2;
            if (clen != -2 && (errno != 0 || strchr("\r\n \t", *stop) == NULL))
                clen = -2;
        }
    }
    free(head);
    const unsigned char *body = all + end.pos + 4;
    size_t blen = len - (size_t)end.pos - 4;
    if (clen == -2) {
        fetch_done(f, NULL, "a malformed Content-Length");
        return;
    }
    if (chunked || (clen >= 0 && (size_t)clen != blen)) {
        fetch_done(f, NULL,
                   chunked ? "a chunked answer to HTTP/1.0"
                           : "the body is shorter or longer than its Content-Length");
        return;
    }
    if (f->ocsp_id != NULL) {
        ocsp_done(f, body, blen, NULL);
        return;
    }
    const unsigned char *p = body;
    X509_CRL *crl = d2i_X509_CRL(NULL, &p, (long)blen);
    if (crl == NULL) { /* some tls_rev_publish PEM */
        BIO *b = BIO_new_mem_buf(body, (int)blen);
        crl = b != NULL ? PEM_read_bio_X509_CRL(b, NULL, NULL, NULL) : NULL;
        BIO_free(b);
    }
    ERR_clear_error();
    fetch_done(f, crl, crl == NULL ? "the answer is not a CRL (neither DER nor PEM)" : NULL);
}

static void fetch_read_cb(struct bufferevent *bev, void *arg)
{
    struct fetch *f = arg;
    if (evbuffer_get_length(bufferevent_get_input(bev)) > f->r->fetch_max + HEAD_MAX) {
        char why[128];
        snprintf(why, sizeof why, "the CRL is larger than crl_fetch_max_size (%zu bytes)",
                 f->r->fetch_max);
        fetch_done(f, NULL, why);
    }
}

static void fetch_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct fetch *f = arg;
    if (what & BEV_EVENT_CONNECTED)
        return;
    if (what & BEV_EVENT_EOF) {
        fetch_parse(f);
        return;
    }
    char why[256];
    int e = EVUTIL_SOCKET_ERROR();
    snprintf(why, sizeof why, "cannot fetch from %s port %s: %s", f->host, f->port,
             e != 0 ? evutil_socket_error_to_string(e) : "connection failed");
    fetch_done(f, NULL, why);
}

static void fetch_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct fetch *f = arg;
    if (f->bev != NULL) {
        char why[128];
        snprintf(why, sizeof why, "no complete answer within crl_fetch_timeout (%llu ms)",
                 (unsigned long long)f->r->fetch_timeout_ms);
        fetch_done(f, NULL, why);
        return;
    }
    fetch_start(f->r, f); /* the refresh */
}

/* Starts fetching <f> (on the revocation thread). The name is resolved here,
 * blocking this thread only: workers never wait longer than
 * crl_fetch_timeout for it. */
static void fetch_start(struct tls_rev *r, struct fetch *f)
{
    pthread_mutex_lock(&r->mu);
    f->state = FS_BUSY;
    f->started = time(NULL);
    pthread_mutex_unlock(&r->mu);
    if (f->timer == NULL && (f->timer = evtimer_new(r->base, fetch_timer_cb, f)) == NULL) {
        log_warn("crl_fetch %s: out of memory", f->url);
        return; /* stays busy: requests stop waiting for it after crl_fetch_timeout */
    }
    struct timeval tv;
    timeval_ms(&tv, r->fetch_timeout_ms);
    evtimer_add(f->timer, &tv);

    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG}, *ai = NULL;
    int rc = getaddrinfo(f->host, f->port, &hints, &ai);
    if (rc != 0) {
        char why[300];
        snprintf(why, sizeof why, "cannot resolve %s: %s", f->host, gai_strerror(rc));
        fetch_done(f, NULL, why);
        return;
    }
    f->bev = bufferevent_socket_new(r->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (f->bev == NULL) {
        freeaddrinfo(ai);
        fetch_done(f, NULL, "out of memory");
        return;
    }
    bufferevent_setcb(f->bev, fetch_read_cb, NULL, fetch_event_cb, f);
    bufferevent_enable(f->bev, EV_READ);
    /* HTTP/1.0 and Connection: close: the answer ends when the server closes. */
    bool v6 = strchr(f->host, ':') != NULL;
    if (f->ocsp_id != NULL) {
        /* RFC 6960 A.1 POST; no nonce (AD CS's Online Responder ignores or refuses it) */
        OCSP_REQUEST *req = OCSP_REQUEST_new();
        OCSP_CERTID *id = OCSP_CERTID_dup(f->ocsp_id);
        unsigned char *der = NULL;
        int dlen = -1;
        if (req != NULL && id != NULL && OCSP_request_add0_id(req, id) != NULL)
            id = NULL;
        if (req != NULL && id == NULL)
            dlen = i2d_OCSP_REQUEST(req, &der);
        OCSP_CERTID_free(id);
        OCSP_REQUEST_free(req);
        if (dlen <= 0) {
            freeaddrinfo(ai);
            fetch_done(f, NULL, "cannot make the OCSP request");
            return;
        }
        evbuffer_add_printf(bufferevent_get_output(f->bev),
                            "POST %s HTTP/1.0\r\nHost: %s%s%s%s%s\r\nUser-Agent: certmapd\r\n"
                            "Content-Type: application/ocsp-request\r\nContent-Length: %d\r\n"
                            "Connection: close\r\n\r\n",
                            f->path, v6 ? "[" : "", f->host, v6 ? "]" : "",
                            strcmp(f->port, "80") != 0 ? ":" : "",
                            strcmp(f->port, "80") != 0 ? f->port : "", dlen);
        evbuffer_add(bufferevent_get_output(f->bev), der, (size_t)dlen);
        OPENSSL_free(der);
    } else {
        evbuffer_add_printf(bufferevent_get_output(f->bev),
                            "GET %s HTTP/1.0\r\nHost: %s%s%s%s%s\r\nUser-Agent: certmapd\r\n"
                            "Accept: application/pkix-crl, */*\r\nConnection: close\r\n\r\n",
                            f->path, v6 ? "[" : "", f->host, v6 ? "]" : "",
                            strcmp(f->port, "80") != 0 ? ":" : "",
                            strcmp(f->port, "80") != 0 ? f->port : "");
    }
    rc = bufferevent_socket_connect(f->bev, ai->ai_addr, (int)ai->ai_addrlen);
    freeaddrinfo(ai);
    if (rc < 0)
        fetch_event_cb(f->bev, BEV_EVENT_ERROR, f);
}

/* The set in use made anew: the file's CRLs and the last good one of each fetch. */
void tls_rev_republish(struct tls_rev *r)
{
    size_t n = r->file != NULL ? r->file->n : 0;
    struct tls_crlset *s = tls_crlset_new(n + FETCH_MAX);
    if (s == NULL) {
        log_warn("crl: out of memory; the CRLs in use stay as they were");
        return;
    }
    for (size_t i = 0; i < n; i++)
        s->e[s->n++] = tls_crlent_get(r->file->e[i]);
    /* Workers add fetches (never remove one); their <ent> is this thread's. */
    pthread_mutex_lock(&r->mu);
    size_t nf = r->n_fetches;
    pthread_mutex_unlock(&r->mu);
    for (size_t i = 0; i < nf; i++)
        if (r->fetches[i]->ent != NULL)
            s->e[s->n++] = tls_crlent_get(r->fetches[i]->ent);
    tls_rev_publish(r, s);
}

/* ---- ocsp: the certificate's status from its CA's responder ------------------------- */

/* An OCSP answer for <f> ended: the body of a 200 answer, or a failure <why>. */
static void ocsp_done(struct fetch *f, const unsigned char *body, size_t len, const char *why)
{
    struct tls_rev *r = f->r;
    struct tls_ctx *t = r->t;
    char whybuf[300];
    if (f->bev != NULL) {
        bufferevent_free(f->bev);
        f->bev = NULL;
    }
    if (f->timer != NULL)
        evtimer_del(f->timer);
    int status = -1, reason = 0, rs = 0;
    time_t until = 0;
    OCSP_RESPONSE *resp = NULL;
    OCSP_BASICRESP *bs = NULL;
    ASN1_GENERALIZEDTIME *thisupd = NULL, *nextupd = NULL, *revtime = NULL;
    if (why == NULL) {
        const unsigned char *p = body;
        resp = d2i_OCSP_RESPONSE(NULL, &p, (long)len);
        if (resp == NULL) {
            why = "the answer is not an OCSP response";
        } else if ((rs = OCSP_response_status(resp)) != OCSP_RESPONSE_STATUS_SUCCESSFUL) {
            snprintf(whybuf, sizeof whybuf, "the responder answered %s",
                     OCSP_response_status_str(rs));
            why = whybuf;
        } else if ((bs = OCSP_response_get1_basic(resp)) == NULL) {
            why = "no basic OCSP response";
        } else if (OCSP_basic_verify(bs, t->issuers, t->store, 0) <= 0) {
            why = "the OCSP response is signed by neither the CA nor a responder it delegated to";
        } else if (OCSP_resp_find_status(bs, f->ocsp_id, &status, &reason, &revtime, &thisupd,
                                         &nextupd) != 1 ||
                   status == V_OCSP_CERTSTATUS_UNKNOWN) {
            why = "the OCSP response gives no status for this certificate";
            status = -1;
        } else if (OCSP_check_validity(thisupd, nextupd, OCSP_SKEW_S, -1) != 1) {
            why = "the OCSP response is not current (stale)";
            status = -1;
        } else {
            until = nextupd != NULL ? tls_asn1_time(nextupd) : time(NULL) + OCSP_DEFAULT_HOLD_S;
        }
    }
    OCSP_BASICRESP_free(bs);
    OCSP_RESPONSE_free(resp);
    ERR_clear_error();
    time_t now = time(NULL);
    if (why == NULL) {
        if (r->ocsp_fail_logged)
            log_info("ocsp %s: answers again", f->url);
        r->ocsp_fail_logged = false;
        f->failures = 0;
        log_debug("ocsp %s: %s, until %llds from now", f->url,
                  status == V_OCSP_CERTSTATUS_GOOD ? "good" : "revoked", (long long)(until - now));
    } else {
        f->failures++;
        if (!r->ocsp_fail_logged)
            log_warn("ocsp %s: %s; certificates whose CRL is not known either have no known "
                     "revocation status (logged once until a query works)",
                     f->url, why);
        r->ocsp_fail_logged = true;
    }
    uint64_t backoff = (uint64_t)FETCH_BACKOFF_MS << (f->failures < 8 ? f->failures : 7);
    if (backoff > FETCH_BACKOFF_MAX_MS)
        backoff = FETCH_BACKOFF_MAX_MS;
    pthread_mutex_lock(&r->mu);
    f->state = FS_IDLE;
    if (why == NULL) {
        f->ocsp_status = status;
        f->ocsp_until = until;
        f->retry_at = 0;
    } else {
        f->retry_at = now + (time_t)(backoff / 1000);
    }
    pthread_mutex_unlock(&r->mu);
}

/* The anchor or trusted issuer that issued <leaf>; NULL when none. */
static X509 *issuer_of(struct tls_ctx *t, X509 *leaf)
{
    STACK_OF(X509) * sets[2] = {t->issuers, t->anchors};
    for (int s = 0; s < 2; s++)
        for (int i = 0; sets[s] != NULL && i < sk_X509_num(sets[s]); i++)
            if (X509_check_issued(sk_X509_value(sets[s], i), leaf) == X509_V_OK)
                return sk_X509_value(sets[s], i);
    return NULL;
}

/* The query about <leaf> (issued by <issuer>). Under <mu>. */
static struct fetch *query_find_locked(struct tls_rev *r, X509 *leaf, X509 *issuer)
{
    const ASN1_INTEGER *serial = X509_get0_serialNumber(leaf);
    for (size_t i = 0; i < r->n_queries; i++) {
        struct fetch *q = r->queries[i];
        if (q->issuer == issuer && ASN1_INTEGER_cmp(q->serial, serial) == 0)
            return q;
    }
    return NULL;
}

/* The OCSP status of <leaf> now, from an answer that still holds: a
 * V_OCSP_CERTSTATUS_*, or -1. */
int tls_rev_ocsp_cached(struct tls_ctx *t, X509 *leaf, time_t now)
{
    struct tls_rev *r = t->rev;
    X509 *issuer = issuer_of(t, leaf);
    if (issuer == NULL)
        return -1;
    pthread_mutex_lock(&r->mu);
    struct fetch *q = query_find_locked(r, leaf, issuer);
    int st = q != NULL && now < q->ocsp_until ? q->ocsp_status : -1;
    pthread_mutex_unlock(&r->mu);
    return st;
}

/* Whether the OCSP answer about <leaf> is awaited (a query is made or
 * renewed here when none holds); <*queued>: the thread must be woken. */
static bool ocsp_pending(struct tls_ctx *t, X509 *leaf, bool *queued)
{
    struct tls_rev *r = t->rev;
    X509 *issuer = issuer_of(t, leaf);
    if (issuer == NULL)
        return false;
    char url[URL_MAX + 1] = "";
    STACK_OF(OPENSSL_STRING) *urls = X509_get1_ocsp(leaf);
    for (int i = 0; i < sk_OPENSSL_STRING_num(urls) && url[0] == '\0'; i++) {
        const char *u = sk_OPENSSL_STRING_value(urls, i);
        char *h = NULL, *p = NULL, *path = NULL;
        if (strlen(u) <= URL_MAX && url_split(u, &h, &p, &path) == 0) {
            snprintf(url, sizeof url, "%s", u);
            free(h);
            free(p);
            free(path);
        }
    }
    X509_email_free(urls);
    if (url[0] == '\0')
        return false;
    time_t now = time(NULL);
    time_t limit = (time_t)(r->fetch_timeout_ms / 1000) + 1;
    bool pending = false;
    pthread_mutex_lock(&r->mu);
    struct fetch *q = query_find_locked(r, leaf, issuer);
    if (q == NULL) {
        /* a new one, or the slot of one whose answer no longer holds */
        for (size_t i = 0; r->n_queries == OCSP_MAX && q == NULL && i < r->n_queries; i++)
            if (r->queries[i]->state == FS_IDLE && r->queries[i]->ocsp_until <= now)
                q = r->queries[i];
        if (q == NULL && r->n_queries < OCSP_MAX && (q = calloc(1, sizeof *q)) != NULL) {
            q->r = r;
            r->queries[r->n_queries++] = q;
        }
        if (q != NULL) {
            OCSP_CERTID_free(q->ocsp_id);
            ASN1_INTEGER_free(q->serial);
            free(q->url);
            free(q->host);
            free(q->port);
            free(q->path);
            q->url = strdup(url);
            q->ocsp_id = OCSP_cert_to_id(NULL, leaf, issuer);
            q->serial = ASN1_INTEGER_dup(X509_get0_serialNumber(leaf));
            q->issuer = issuer;
            q->ocsp_status = -1;
            q->ocsp_until = 0;
            q->retry_at = 0;
            q->failures = 0;
            q->state = FS_IDLE;
            if (q->url == NULL || q->ocsp_id == NULL || q->serial == NULL ||
                url_split(url, &q->host, &q->port, &q->path) < 0) {
                q->host = q->port = q->path = NULL;
                q->ocsp_until = 0;
                q->retry_at = now + 60; /* out of memory: later */
            }
            ERR_clear_error();
        }
    }
    if (q != NULL && q->state == FS_IDLE && (q->ocsp_status < 0 || now >= q->ocsp_until) &&
        now >= q->retry_at) {
        q->state = FS_QUEUED;
        q->started = now;
        *queued = true;
    }
    if (q != NULL)
        pending = q->state == FS_QUEUED || (q->state == FS_BUSY && now - q->started <= limit);
    pthread_mutex_unlock(&r->mu);
    return pending;
}

/* Starts the fetches workers asked for. */
void tls_rev_fetch_queued(struct tls_rev *r)
{
    for (;;) {
        struct fetch *f = NULL;
        pthread_mutex_lock(&r->mu);
        for (size_t i = 0; i < r->n_fetches && f == NULL; i++)
            if (r->fetches[i]->state == FS_QUEUED)
                f = r->fetches[i];
        for (size_t i = 0; i < r->n_queries && f == NULL; i++)
            if (r->queries[i]->state == FS_QUEUED)
                f = r->queries[i];
        pthread_mutex_unlock(&r->mu);
        if (f == NULL)
            return;
        fetch_start(r, f);
    }
}

bool tls_conn_crl_pending(struct tls_ctx *t, SSL *ssl)
{
    struct tls_rev *r = t->rev;
    X509 *leaf = SSL_get0_peer_certificate(ssl);
    if (r == NULL || !(r->fetch || r->ocsp) || leaf == NULL ||
        SSL_get_verify_result(ssl) != X509_V_OK)
        return false;
    int code = tls_rev_status_of(t, leaf, false);
    if (code == X509_V_OK || code == X509_V_ERR_CERT_REVOKED)
        return false;
    bool pending = false, queued = false;
    if (r->ocsp)
        pending = ocsp_pending(t, leaf, &queued);
    STACK_OF(DIST_POINT) *cdp =
        r->fetch ? X509_get_ext_d2i(leaf, NID_crl_distribution_points, NULL, NULL) : NULL;
    char urls[4][URL_MAX + 1];
    size_t n = dp_urls(cdp, urls, 4);
    sk_DIST_POINT_pop_free(cdp, DIST_POINT_free);
    ERR_clear_error();
    time_t now = time(NULL);
    time_t limit = (time_t)(r->fetch_timeout_ms / 1000) + 1;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < n; i++) {
        struct fetch *f = fetch_find_locked(r, urls[i], true);
        if (f == NULL)
            continue;
        queued |= f->state == FS_QUEUED;
        pending |= f->state == FS_QUEUED || (f->state == FS_BUSY && now - f->started <= limit);
    }
    pthread_mutex_unlock(&r->mu);
    if (queued) {
        char b = 'f';
        if (write(r->wake_fd[1], &b, 1) < 0) {
            /* full: the thread has a wake-up pending already */
        }
    }
    return pending;
}
