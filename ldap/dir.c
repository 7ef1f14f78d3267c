/* The asynchronous directory client of one worker.
 *
 * A connector thread (one per struct dir) connects, does TLS and binds with
 * libldap's synchronous API, trying each [ldap] uri in order and backing off
 * (1 s, 2 s, 4 s … 30 s) while none answers; it hands the bound LDAP* to the
 * worker's loop through an event it makes active. On the loop, searches go out
 * with ldap_search_ext and answers are read with ldap_result (zero timeout)
 * whenever the socket is readable; several searches share the connection and
 * are told apart by message id. Each search has one event: its timeout, and
 * the deferred call back, so that a callback never runs inside search() or
 * while answers are being read. Without a connection every search fails at
 * once (fail closed) and a lost connection fails what is pending, then the
 * thread reconnects. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include <event2/event.h>

#include "common/log.h"
#include "common/text.h"
#include "ldap/dir.h"
#include "ldap/internal.h"
#include "metrics/metrics.h"

/* More than one entry is all mapping needs to say "ambiguous". */
#define DIR_MAX_ENTRIES 16
#define BACKOFF_MIN_MS 1000u
#define BACKOFF_MAX_MS 30000u
/* Searches in a row that timed out with nothing heard from the DC: the
 * connection is presumed dead (a hung DC, a silent network) and replaced. */
#define TIMEOUTS_BEFORE_RECONNECT 3
#define NETBIOS_MAX 15

enum search_kind { K_LOOKUP, K_NETBIOS };

struct dir_search {
    struct dir *d;
    TAILQ_ENTRY(dir_search) link;
    enum search_kind kind;
    map_search_cb cb;
    void *arg;
    struct event *ev; /* timeout, then the deferred delivery */
    bool finished, ok;
    int msgid;                           /* the subtree search while unanswered, else -1 */
    int computed_msgid[DIR_MAX_ENTRIES]; /* base searches for the constructed UAC */
    size_t n_computed;                   /* of those, still unanswered */
    struct map_entry entries[DIR_MAX_ENTRIES];
    size_t n;
    char netbios[NETBIOS_MAX + 1];
    char *parked_filter; /* waiting for the first connection; sent on handoff */
    struct timespec t0;  /* asked for, for the latency histogram */
    bool timed_out;
};

TAILQ_HEAD(search_list, dir_search);

struct dir {
    struct event_base *base;
    const struct conf *conf;
    struct map_source source;
    char *password;
    size_t password_len;
    uint64_t timeout_ms;

    /* Loop side. */
    LDAP *ld;
    struct event *ev_read;
    struct event *ev_handoff;
    struct search_list searches;
    char *netbios;
    struct dir_search *netbios_search;
    unsigned timeouts_in_row;
    bool ever_connected; /* until then, searches wait for the first connection */

    /* Shared with the connector thread, under <mu>. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool thread_started;
    bool stopping;
    bool want_connect;
    LDAP *handoff;
    size_t handoff_uri;
    size_t uri; /* of <ld>, while connected: its metrics gauge */
};

/* ---- the connector thread ------------------------------------------------------ */

static void *connector_main(void *arg)
{
    struct dir *d = arg;
    unsigned backoff_ms = 0;
    char err[2048];

    pthread_mutex_lock(&d->mu);
    for (;;) {
        while (!d->stopping && !d->want_connect)
            pthread_cond_wait(&d->cv, &d->mu);
        if (d->stopping)
            break;
        pthread_mutex_unlock(&d->mu);
        size_t which = 0;
        LDAP *ld = dir_connect_any(d->conf, d->password, d->password_len, &which, NULL, err, sizeof err);
        pthread_mutex_lock(&d->mu);
        if (ld != NULL) {
            if (d->stopping) {
                pthread_mutex_unlock(&d->mu);
                ldap_unbind_ext(ld, NULL, NULL);
                pthread_mutex_lock(&d->mu);
                break;
            }
            d->handoff = ld;
            d->handoff_uri = which;
            d->want_connect = false;
            backoff_ms = 0;
            event_active(d->ev_handoff, EV_READ, 0);
            continue;
        }
        backoff_ms = backoff_ms == 0 ? BACKOFF_MIN_MS : backoff_ms * 2;
        if (backoff_ms > BACKOFF_MAX_MS)
            backoff_ms = BACKOFF_MAX_MS;
        log_warn("%s; retrying in %u s", err, backoff_ms / 1000);
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += backoff_ms / 1000;
        until.tv_nsec += (long)(backoff_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        while (!d->stopping && pthread_cond_timedwait(&d->cv, &d->mu, &until) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

static void request_connect(struct dir *d)
{
    pthread_mutex_lock(&d->mu);
    d->want_connect = true;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

/* ---- searches ------------------------------------------------------------------ */

static void search_event(evutil_socket_t fd, short what, void *arg);
static void start_netbios(struct dir *d);

static struct dir_search *search_new(struct dir *d, enum search_kind kind, map_search_cb cb,
                                     void *arg)
{
    struct dir_search *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->ev = evtimer_new(d->base, search_event, s);
    if (s->ev == NULL) {
        free(s);
        return NULL;
    }
    s->d = d;
    s->kind = kind;
    s->cb = cb;
    s->arg = arg;
    s->msgid = -1;
    for (size_t i = 0; i < DIR_MAX_ENTRIES; i++)
        s->computed_msgid[i] = -1;
    clock_gettime(CLOCK_MONOTONIC, &s->t0);
    TAILQ_INSERT_TAIL(&d->searches, s, link);
    return s;
}

/* Forgets every message id of <s>, telling the DC to stop when it can hear us. */
static void abandon_all(struct dir_search *s)
{
    LDAP *ld = s->d->ld;
    if (s->msgid >= 0 && ld != NULL)
        ldap_abandon_ext(ld, s->msgid, NULL, NULL);
    s->msgid = -1;
    for (size_t i = 0; i < DIR_MAX_ENTRIES; i++) {
        if (s->computed_msgid[i] >= 0 && ld != NULL)
            ldap_abandon_ext(ld, s->computed_msgid[i], NULL, NULL);
        s->computed_msgid[i] = -1;
    }
    s->n_computed = 0;
}

static void search_free(struct dir_search *s)
{
    struct dir *d = s->d;
    TAILQ_REMOVE(&d->searches, s, link);
    if (d->netbios_search == s)
        d->netbios_search = NULL;
    event_free(s->ev);
    for (size_t i = 0; i < s->n; i++)
        map_entry_purge(&s->entries[i]);
    free(s->parked_filter);
    free(s);
}

/* Ends <s> with <ok>; the callback runs from <s>'s event, on a later turn of the loop. */
static void finish(struct dir_search *s, bool ok)
{
    if (s->finished)
        return;
    if (!ok)
        abandon_all(s);
    s->finished = true;
    s->ok = ok;
    evtimer_del(s->ev);
    event_active(s->ev, EV_TIMEOUT, 0);
}

static void deliver(struct dir_search *s)
{
    struct dir *d = s->d;
    if (s->kind == K_NETBIOS) {
        if (s->ok && s->netbios[0] != '\0' && d->netbios == NULL) {
            d->netbios = strdup(s->netbios);
            if (d->netbios != NULL)
                log_debug("ldap: NetBIOS domain name %s", d->netbios);
        }
        search_free(s);
        return;
    }
    /* <s> stays listed but finished during the callback, which may start or
     * cancel other searches (or lose the connection); it is freed after. */
    map_search_cb cb = s->cb;
    void *arg = s->arg;
    bool ok = s->ok;
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    metrics_dir_search(s->timed_out ? MT_DIR_SEARCH_TIMEOUT
                       : ok         ? MT_DIR_SEARCH_OK
                                    : MT_DIR_SEARCH_FAILED,
                       (double)(t1.tv_sec - s->t0.tv_sec) + (t1.tv_nsec - s->t0.tv_nsec) / 1e9);
    size_t n = ok ? s->n : 0;
    cb(arg, ok, ok ? s->entries : NULL, n);
    search_free(s);
}

static void conn_lost(struct dir *d, const char *why);
static void send_lookup(struct dir *d, struct dir_search *s, const char *filter);

static void search_event(evutil_socket_t fd, short what, void *arg)
{
    struct dir_search *s = arg;
    struct dir *d = s->d;
    if (!s->finished) {
        log_warn("ldap: %s search timed out after %llu ms",
                 s->kind == K_NETBIOS ? "NetBIOS name" : "account",
                 (unsigned long long)d->timeout_ms);
        s->timed_out = true;
        finish(s, false);
        event_del(s->ev);
        if (++d->timeouts_in_row >= TIMEOUTS_BEFORE_RECONNECT)
            conn_lost(d, "no answer from the directory to several searches");
    }
    deliver(s);
}

static void arm_timeout(struct dir_search *s)
{
    uint64_t ms = s->d->timeout_ms;
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(s->ev, &tv);
}

/* The constructed UAC (lockout, password expiry) is not returned by every
 * subtree search (AD's GC, some DCs): ask for it on each entry that lacks it. */
static int fetch_computed(struct dir_search *s)
{
    struct dir *d = s->d;
    char *attrs[] = {"msDS-User-Account-Control-Computed", NULL};
    for (size_t i = 0; i < s->n; i++) {
        if (s->entries[i].has_uac_computed)
            continue;
        int rc = ldap_search_ext(d->ld, s->entries[i].dn, LDAP_SCOPE_BASE, "(objectClass=*)", attrs,
                                 0, NULL, NULL, NULL, 1, &s->computed_msgid[i]);
        if (rc != LDAP_SUCCESS) {
            log_warn("ldap: base search on \"%s\": %s (%d)", s->entries[i].dn, ldap_err2string(rc),
                     rc);
            return -1;
        }
        s->n_computed++;
    }
    return 0;
}

static void on_result(struct dir_search *s, LDAPMessage *msg, bool computed)
{
    struct dir *d = s->d;
    int rc = LDAP_OTHER;
    char *diag = NULL;
    if (ldap_parse_result(d->ld, msg, &rc, NULL, &diag, NULL, NULL, 0) != LDAP_SUCCESS)
        rc = LDAP_DECODING_ERROR;
    /* Size limit exceeded still returned the first entries: ambiguous is ambiguous. */
    if (rc != LDAP_SUCCESS && !(rc == LDAP_SIZELIMIT_EXCEEDED && !computed)) {
        log_warn("ldap: %s failed: %s (%d)%s%s", computed ? "base search" : "search",
                 ldap_err2string(rc), rc, diag && *diag ? "; " : "", diag ? diag : "");
        ldap_memfree(diag);
        finish(s, false);
        return;
    }
    ldap_memfree(diag);
    if (computed) {
        if (--s->n_computed == 0)
            finish(s, true);
        return;
    }
    s->msgid = -1;
    if (s->kind == K_LOOKUP && fetch_computed(s) != 0) {
        finish(s, false);
        return;
    }
    if (s->n_computed == 0)
        finish(s, true);
}

static void on_entry(struct dir_search *s, LDAPMessage *msg, int computed_index)
{
    struct dir *d = s->d;
    char err[512];
    if (s->kind == K_NETBIOS) {
        struct berval **v = ldap_get_values_len(d->ld, msg, "nETBIOSName");
        if (v != NULL && v[0] != NULL && v[1] == NULL && v[0]->bv_len > 0 &&
            v[0]->bv_len <= NETBIOS_MAX && cm_dirtext_valid(v[0]->bv_val, v[0]->bv_len) &&
            strcspn(v[0]->bv_val, "\\/:*?\"<>| ") >= v[0]->bv_len) {
            memcpy(s->netbios, v[0]->bv_val, v[0]->bv_len);
            s->netbios[v[0]->bv_len] = '\0';
        } else {
            log_warn("ldap: no usable nETBIOSName in the domain's crossRef");
        }
        ldap_value_free_len(v);
        return;
    }
    if (computed_index >= 0) {
        if (dir_entry_parse_computed(d->ld, msg, &s->entries[computed_index], err, sizeof err)) {
            log_warn("ldap: refusing a directory answer: %s", err);
            finish(s, false);
        }
        return;
    }
    if (s->n == DIR_MAX_ENTRIES)
        return;
    struct map_entry *e = &s->entries[s->n++];
    /* A hostile or broken answer fails the search: skipping the entry could turn
     * an ambiguous mapping into a unique one. */
    if (dir_entry_parse(d->ld, msg, e, err, sizeof err) != 0) {
        log_warn("ldap: refusing a directory answer: %s", err);
        finish(s, false);
    }
}

/* The search that sent <msgid>; <computed> says which base search, -1 for the main one. */
static struct dir_search *find_search(struct dir *d, int msgid, int *computed)
{
    struct dir_search *s;
    TAILQ_FOREACH(s, &d->searches, link)
    {
        if (s->finished)
            continue;
        if (s->msgid == msgid) {
            *computed = -1;
            return s;
        }
        for (int i = 0; i < DIR_MAX_ENTRIES; i++) {
            if (s->computed_msgid[i] == msgid) {
                *computed = i;
                return s;
            }
        }
    }
    return NULL;
}

static void dispatch(struct dir *d, LDAPMessage *msg)
{
    int type = ldap_msgtype(msg), id = ldap_msgid(msg), computed = -1;
    struct dir_search *s = find_search(d, id, &computed);
    if (s == NULL)
        return; /* abandoned or cancelled: late answers are dropped */
    switch (type) {
    case LDAP_RES_SEARCH_ENTRY:
        on_entry(s, msg, computed);
        break;
    case LDAP_RES_SEARCH_RESULT:
        if (computed >= 0)
            s->computed_msgid[computed] = -1;
        on_result(s, msg, computed >= 0);
        break;
    default:
        /* Continuation references (referrals) are not followed. */
        break;
    }
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    struct dir *d = arg;
    /* Drain: TLS may hold whole messages that the socket no longer signals. */
    while (d->ld != NULL) {
        LDAPMessage *msg = NULL;
        struct timeval zero = {0, 0};
        int t = ldap_result(d->ld, LDAP_RES_ANY, LDAP_MSG_ONE, &zero, &msg);
        if (t == 0)
            break;
        if (t < 0) {
            int rc = LDAP_SERVER_DOWN;
            ldap_get_option(d->ld, LDAP_OPT_RESULT_CODE, &rc);
            char why[256];
            snprintf(why, sizeof why, "%s (%d)", ldap_err2string(rc), rc);
            ldap_msgfree(msg);
            conn_lost(d, why);
            return;
        }
        d->timeouts_in_row = 0;
        /* Notice of Disconnection (RFC 4511 4.4.1): the DC is closing on us. */
        if (t == LDAP_RES_EXTENDED && ldap_msgid(msg) == 0) {
            ldap_msgfree(msg);
            conn_lost(d, "notice of disconnection from the server");
            return;
        }
        dispatch(d, msg);
        ldap_msgfree(msg);
    }
}

/* Drops the connection: pending searches fail (later, from their events) and the
 * connector thread starts over. */
static void conn_lost(struct dir *d, const char *why)
{
    struct dir_search *s;
    if (d->ld == NULL)
        return;
    log_warn("ldap: connection lost: %s; reconnecting", why);
    TAILQ_FOREACH(s, &d->searches, link)
    {
        if (!s->finished) {
            s->msgid = -1;
            for (size_t i = 0; i < DIR_MAX_ENTRIES; i++)
                s->computed_msgid[i] = -1;
            s->n_computed = 0;
            finish(s, false);
        }
    }
    /* Off the loop before libldap closes the socket, so the fd is never stale there. */
    event_free(d->ev_read);
    d->ev_read = NULL;
    ldap_unbind_ext(d->ld, NULL, NULL);
    d->ld = NULL;
    metrics_gauge_add(MG_DIR_UP0 + (int)d->uri, -1);
    d->timeouts_in_row = 0;
    request_connect(d);
}

static void on_handoff(evutil_socket_t fd_unused, short what, void *arg)
{
    struct dir *d = arg;
    pthread_mutex_lock(&d->mu);
    LDAP *ld = d->handoff;
    size_t which = d->handoff_uri;
    d->handoff = NULL;
    pthread_mutex_unlock(&d->mu);
    if (ld == NULL)
        return;
    int fd = -1;
    Sockbuf *sb = NULL;
    if (ldap_get_option(ld, LDAP_OPT_DESC, &fd) != LDAP_OPT_SUCCESS || fd < 0 ||
        ldap_get_option(ld, LDAP_OPT_SOCKBUF, &sb) != LDAP_OPT_SUCCESS || sb == NULL ||
        ber_sockbuf_ctrl(sb, LBER_SB_OPT_SET_NONBLOCK, (void *)1) != 1) {
        log_warn("ldap: cannot take over the connection to %s", d->conf->ldap_uri[which]);
        goto fail;
    }
    d->ev_read = event_new(d->base, fd, EV_READ | EV_PERSIST, on_readable, d);
    if (d->ev_read == NULL || event_add(d->ev_read, NULL) != 0) {
        log_warn("ldap: cannot watch the connection to %s", d->conf->ldap_uri[which]);
        goto fail;
    }
    d->ld = ld;
    d->uri = which < CONF_MAX_URIS ? which : CONF_MAX_URIS - 1;
    metrics_gauge_add(MG_DIR_UP0 + (int)d->uri, 1);
    d->timeouts_in_row = 0;
    d->ever_connected = true;
    log_info("ldap: connected to %s as %s", d->conf->ldap_uri[which], d->conf->bind_dn);
    start_netbios(d);
    /* Searches that waited for this first connection go now. */
    struct dir_search *s, *next;
    for (s = TAILQ_FIRST(&d->searches); s != NULL && d->ld != NULL; s = next) {
        next = TAILQ_NEXT(s, link);
        if (s->parked_filter == NULL || s->finished)
            continue;
        char *filter = s->parked_filter;
        s->parked_filter = NULL;
        evtimer_del(s->ev);
        send_lookup(d, s, filter);
        free(filter);
    }
    return;
fail:
    if (d->ev_read != NULL)
        event_free(d->ev_read);
    d->ev_read = NULL;
    ldap_unbind_ext(ld, NULL, NULL);
    request_connect(d);
}

/* The domain's NetBIOS name, from its crossRef in the configuration partition. */
static void start_netbios(struct dir *d)
{
    char base[1024], filter[1200];
    struct berval in = {0, NULL}, esc = {0, NULL};
    struct dir_search *s = NULL;

    if (d->netbios != NULL || d->netbios_search != NULL || d->ld == NULL)
        return;
    in.bv_val = d->conf->base_dn;
    in.bv_len = strlen(d->conf->base_dn);
    if (ldap_bv2escaped_filter_value(&in, &esc) != 0)
        goto fail;
    int nb = snprintf(base, sizeof base, "CN=Partitions,CN=Configuration,%s", d->conf->base_dn);
    int nf = snprintf(filter, sizeof filter, "(&(objectClass=crossRef)(nCName=%s))", esc.bv_val);
    if (nb < 0 || (size_t)nb >= sizeof base || nf < 0 || (size_t)nf >= sizeof filter)
        goto fail;
    s = search_new(d, K_NETBIOS, NULL, NULL);
    if (s == NULL)
        goto fail;
    char *attrs[] = {"nETBIOSName", NULL};
    int rc = ldap_search_ext(d->ld, base, LDAP_SCOPE_ONELEVEL, filter, attrs, 0, NULL, NULL, NULL,
                             2, &s->msgid);
    if (rc != LDAP_SUCCESS) {
        log_warn("ldap: NetBIOS name search: %s (%d)", ldap_err2string(rc), rc);
        s->msgid = -1;
        finish(s, false);
        goto fail;
    }
    d->netbios_search = s;
    arm_timeout(s);
fail:
    ber_memfree(esc.bv_val);
}

/* ---- the map_source view ------------------------------------------------------- */

/* Sends the account search <filter> of <s> on the connection. */
static void send_lookup(struct dir *d, struct dir_search *s, const char *filter)
{
    char *attrs[] = {"userPrincipalName",
                     "sAMAccountName",
                     "objectSid",
                     "userAccountControl",
                     "msDS-User-Account-Control-Computed",
                     "accountExpires",
                     "whenCreated",
                     "altSecurityIdentities",
                     "objectClass",
                     "dNSHostName",
                     NULL};
    int rc = ldap_search_ext(d->ld, d->conf->base_dn, LDAP_SCOPE_SUBTREE, filter, attrs, 0, NULL,
                             NULL, NULL, DIR_MAX_ENTRIES, &s->msgid);
    if (rc != LDAP_SUCCESS) {
        s->msgid = -1;
        finish(s, false);
        if (rc == LDAP_SERVER_DOWN || rc == LDAP_CONNECT_ERROR)
            conn_lost(d, ldap_err2string(rc));
        else
            log_warn("ldap: search %s: %s (%d)", filter, ldap_err2string(rc), rc);
        return;
    }
    arm_timeout(s);
    start_netbios(d);
}

static void *source_search(void *ctx, const struct map_lookup *l, map_search_cb cb, void *arg)
{
    struct dir *d = ctx;
    if (l == NULL || l->filter == NULL || cb == NULL)
        return NULL;
    struct dir_search *s = search_new(d, K_LOOKUP, cb, arg);
    if (s == NULL)
        return NULL;
    if (d->ld == NULL) {
        /* Before the first connection (start-up), a search waits for it, within
         * its timeout; once a connection has been lost, searches fail at once. */
        if (!d->ever_connected && (s->parked_filter = strdup(l->filter)) != NULL) {
            arm_timeout(s);
            return s;
        }
        finish(s, false);
        return s;
    }
    send_lookup(d, s, l->filter);
    return s;
}

static void source_cancel(void *ctx, void *handle)
{
    struct dir_search *s = handle;
    if (s == NULL)
        return;
    if (!s->finished)
        abandon_all(s);
    search_free(s);
}

static const char *source_netbios(void *ctx)
{
    struct dir *d = ctx;
    return d->netbios;
}

static void source_close(void *ctx)
{
    dir_free(ctx);
}

struct map_source *dir_source(struct dir *d)
{
    return &d->source;
}

/* ---- life cycle --------------------------------------------------------------- */

struct dir *dir_new(struct event_base *base, const struct conf *c, char *err, size_t errlen)
{
    struct dir *d = NULL;
    pthread_condattr_t ca;
    bool sync_made = false;
    int v;

    if (c->n_ldap_uri == 0 || c->base_dn == NULL || c->bind_dn == NULL) {
        snprintf(err, errlen, "ldap: [ldap] uri, base_dn and bind_dn are required");
        goto fail;
    }
    d = calloc(1, sizeof *d);
    if (d == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    TAILQ_INIT(&d->searches);
    d->base = base;
    d->conf = c;
    d->timeout_ms = c->ldap_timeout_ms ? c->ldap_timeout_ms : 5000;
    d->source = (struct map_source){.ctx = d,
                                    .search = source_search,
                                    .cancel = source_cancel,
                                    .netbios = source_netbios,
                                    .close = source_close};
    d->password = dir_password_read(c, &d->password_len, err, errlen);
    if (d->password == NULL)
        goto fail;
    d->ev_handoff = event_new(base, -1, 0, on_handoff, d);
    if (d->ev_handoff == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    /* libldap's global defaults are set up once here, not raced by two threads. */
    ldap_get_option(NULL, LDAP_OPT_PROTOCOL_VERSION, &v);
    if (pthread_condattr_init(&ca) != 0) {
        snprintf(err, errlen, "ldap: cannot create a condition variable");
        goto fail;
    }
    int rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(&d->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0) {
        snprintf(err, errlen, "ldap: cannot create a condition variable");
        goto fail;
    }
    pthread_mutex_init(&d->mu, NULL);
    sync_made = true;
    d->want_connect = true;
    if (pthread_create(&d->thread, NULL, connector_main, d) != 0) {
        snprintf(err, errlen, "ldap: cannot start the connector thread");
        goto fail;
    }
    d->thread_started = true;
    return d;
fail:
    if (d != NULL) {
        if (sync_made) {
            pthread_cond_destroy(&d->cv);
            pthread_mutex_destroy(&d->mu);
        }
        if (d->ev_handoff != NULL)
            event_free(d->ev_handoff);
        conf_secret_free(d->password, d->password_len);
        free(d);
    }
    return NULL;
}

void dir_free(struct dir *d)
{
    if (d == NULL)
        return;
    /* A connect in progress is waited for: at most [ldap] timeout per uri. */
    pthread_mutex_lock(&d->mu);
    d->stopping = true;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    pthread_join(d->thread, NULL);
    if (d->handoff != NULL)
        ldap_unbind_ext(d->handoff, NULL, NULL);
    while (!TAILQ_EMPTY(&d->searches))
        search_free(TAILQ_FIRST(&d->searches));
    if (d->ev_read != NULL)
        event_free(d->ev_read);
    if (d->ld != NULL) {
        ldap_unbind_ext(d->ld, NULL, NULL);
        metrics_gauge_add(MG_DIR_UP0 + (int)d->uri, -1);
    }
    event_free(d->ev_handoff);
    pthread_cond_destroy(&d->cv);
    pthread_mutex_destroy(&d->mu);
    conf_secret_free(d->password, d->password_len);
    free(d->netbios);
    free(d);
}
