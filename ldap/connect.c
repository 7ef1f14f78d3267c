/* Connecting to a domain controller: TCP, TLS (LDAPS, or StartTLS on ldap://,
 * never a bind in clear), server certificate verified against [ldap] ca_file,
 * simple bind as the service account. Synchronous: runs in dir.c's connector
 * thread and in dir_check(), never on a worker's loop. */
#include <errno.h>
#include <pthread.h>
#include <time.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <netdb.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "common/log.h"
#include "ldap/dir.h"
#include "ldap/internal.h"

char *dir_password_read(const struct conf *c, size_t *len, char *err, size_t errlen)
{
    char why[1024];
    char *pw = conf_secret_read(c->bind_password_file, len, why, sizeof why);
    if (pw == NULL)
        snprintf(err, errlen, "[ldap] bind_password_file: %s", why);
    return pw;
}

void dir_ld_error(LDAP *ld, int rc, const char *what, char *err, size_t errlen)
{
    char *diag = NULL;
    if (ld != NULL)
        ldap_get_option(ld, LDAP_OPT_DIAGNOSTIC_MESSAGE, &diag);
    snprintf(err, errlen, "%s: %s (%d)%s%s", what, ldap_err2string(rc), rc,
             diag != NULL && *diag != '\0' ? "; " : "", diag != NULL ? diag : "");
    ldap_memfree(diag);
}

/* libldap (built with GnuTLS on Debian) reports a failed LDAPS handshake as
 * "Can't contact LDAP server; (unknown error code)". After such a failure, one
 * handshake of our own with OpenSSL, same CA file and name, says why. Blocking
 * with [ldap] timeout: connector thread and dir_check only. Writes "" when it
 * finds nothing wrong (then libldap's own words are all there is). */
static void tls_diagnose(const struct conf *c, const char *uri, char *buf, size_t len)
{
    LDAPURLDesc *lud = NULL;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    SSL_CTX *ctx = NULL;
    SSL *ssl = NULL;
    int fd = -1;
    char port[16], me[256];
    uint64_t ms = c->ldap_timeout_ms ? c->ldap_timeout_ms : 5000;
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};

    buf[0] = '\0';
    if (ldap_url_parse(uri, &lud) != LDAP_URL_SUCCESS || lud->lud_host == NULL ||
        strcasecmp(lud->lud_scheme, "ldaps") != 0)
        goto done;
    const char *host = *lud->lud_host ? lud->lud_host : "localhost";
    /* libldap checks the name "localhost" as the machine's own host name. */
    if (strcasecmp(host, "localhost") == 0) {
        if (gethostname(me, sizeof me) != 0)
            snprintf(me, sizeof me, "?");
        me[sizeof me - 1] = '\0';
        snprintf(buf, len,
                 "libldap checks the name \"localhost\" as this machine's host name \"%.64s\"; "
                 "use a name or address that the server's certificate carries",
                 me);
        goto done;
    }
    snprintf(port, sizeof port, "%d", lud->lud_port ? lud->lud_port : 636);
    if (getaddrinfo(host, port, &hints, &ai) != 0 || ai == NULL)
        goto done;
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0 ||
        connect(fd, ai->ai_addr, ai->ai_addrlen) != 0)
        goto done;
    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        goto done;
    if (c->ldap_ca_file != NULL ? SSL_CTX_load_verify_locations(ctx, c->ldap_ca_file, NULL) != 1
                                : SSL_CTX_set_default_verify_paths(ctx) != 1) {
        snprintf(buf, len, "[ldap] ca_file \"%s\" holds no usable certificate",
                 c->ldap_ca_file ? c->ldap_ca_file : "");
        goto done;
    }
    /* Verify without aborting, then read the verdict, name check included. */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    ssl = SSL_new(ctx);
    if (ssl == NULL || SSL_set_fd(ssl, fd) != 1)
        goto done;
    X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
    if (X509_VERIFY_PARAM_set1_ip_asc(vp, host) != 1) {
        X509_VERIFY_PARAM_set1_host(vp, host, 0);
        SSL_set_tlsext_host_name(ssl, host);
    }
    if (SSL_connect(ssl) != 1) {
        snprintf(buf, len, "TLS handshake failed: %s",
                 ERR_reason_error_string(ERR_peek_last_error()) ?: "no reason given");
        goto done;
    }
    long v = SSL_get_verify_result(ssl);
    if (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH)
        snprintf(buf, len, "the server's certificate does not name \"%s\"", host);
    else if (v != X509_V_OK)
        snprintf(buf, len, "the server's certificate is not trusted: %s (check [ldap] ca_file)",
                 X509_verify_cert_error_string(v));
done:
    if (ssl != NULL)
        SSL_free(ssl);
    SSL_CTX_free(ctx);
    if (fd >= 0)
        close(fd);
    if (ai != NULL)
        freeaddrinfo(ai);
    ldap_free_urldesc(lud);
    ERR_clear_error();
}

/* LDAP_OPT_NETWORK_TIMEOUT bounds connect() only. A server that accepts the
 * connection and then says nothing holds libldap's TLS handshake for ever
 * (with GnuTLS it retries the read in a loop), and start-up or the connector
 * thread with it. So each connection is watched: the TLS connect callback
 * tells the watchdog the socket, and if the handshake and the bind are not
 * over within [ldap] timeout, the watchdog shuts the socket down, which ends
 * whatever libldap is doing with an error. */
struct watchdog {
    pthread_mutex_t lock;
    pthread_cond_t over_cv;
    bool over;  /* connected and bound, or given up: the watchdog leaves */
    bool fired; /* it shut the socket down */
    int fd;     /* from the TLS connect callback; -1 until then */
    struct timespec deadline; /* CLOCK_MONOTONIC */
    pthread_t thread;
};

static void *watchdog_main(void *arg)
{
    struct watchdog *w = arg;
    pthread_mutex_lock(&w->lock);
    while (!w->over) {
        if (pthread_cond_timedwait(&w->over_cv, &w->lock, &w->deadline) == ETIMEDOUT) {
            if (!w->over && w->fd >= 0) {
                shutdown(w->fd, SHUT_RDWR);
                w->fired = true;
            }
            break;
        }
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

/* libldap's LDAP_TLS_CONNECT_CB, which ldap.h does not declare:
 * int (LDAP *, void *session, void *ctx, void *arg). */
static int tls_connect_cb(LDAP *ld, void *session, void *ctx, void *arg)
{
    (void)session, (void)ctx;
    struct watchdog *w = arg;
    int fd = -1;
    if (w != NULL && ldap_get_option(ld, LDAP_OPT_DESC, &fd) == LDAP_OPT_SUCCESS) {
        pthread_mutex_lock(&w->lock);
        w->fd = fd;
        pthread_mutex_unlock(&w->lock);
    }
    return 0;
}

static int watchdog_start(struct watchdog *w, uint64_t ms)
{
    pthread_condattr_t ca;
    *w = (struct watchdog){.fd = -1};
    pthread_mutex_init(&w->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->over_cv, &ca);
    pthread_condattr_destroy(&ca);
    clock_gettime(CLOCK_MONOTONIC, &w->deadline);
    w->deadline.tv_sec += (time_t)(ms / 1000);
    w->deadline.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (w->deadline.tv_nsec >= 1000000000L) {
        w->deadline.tv_sec++;
        w->deadline.tv_nsec -= 1000000000L;
    }
    if (pthread_create(&w->thread, NULL, watchdog_main, w) != 0) {
        pthread_cond_destroy(&w->over_cv);
        pthread_mutex_destroy(&w->lock);
        return -1;
    }
    return 0;
}

/* Whether it fired. */
static bool watchdog_stop(struct watchdog *w)
{
    pthread_mutex_lock(&w->lock);
    w->over = true;
    pthread_cond_signal(&w->over_cv);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->over_cv);
    pthread_mutex_destroy(&w->lock);
    return w->fired;
}

/* Options every connection gets; the TLS context is built from them last. */
static int set_options(LDAP *ld, const struct conf *c, const char *uri, char *err, size_t errlen)
{
    int v3 = LDAP_VERSION3, hard = LDAP_OPT_X_TLS_HARD, tls12 = LDAP_OPT_X_TLS_PROTOCOL_TLS1_2;
    int client = 0, idle = 60, probes = 3, interval = 10;
    uint64_t ms = c->ldap_timeout_ms ? c->ldap_timeout_ms : 5000;
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    const char *what = "";


    /* Referrals would make libldap bind anonymously to other servers, blocking. */
    if (ldap_set_option(ld, LDAP_OPT_PROTOCOL_VERSION, &v3) != LDAP_OPT_SUCCESS ||
        ldap_set_option(ld, LDAP_OPT_REFERRALS, LDAP_OPT_OFF) != LDAP_OPT_SUCCESS ||
        ldap_set_option(ld, LDAP_OPT_NETWORK_TIMEOUT, &tv) != LDAP_OPT_SUCCESS ||
        ldap_set_option(ld, LDAP_OPT_TIMEOUT, &tv) != LDAP_OPT_SUCCESS) {
        what = "protocol options";
        goto fail;
    }
    /* dir.c unregisters the socket from its loop before libldap closes it. */
    if (ldap_set_option(ld, LDAP_OPT_KEEPCONN, LDAP_OPT_ON) != LDAP_OPT_SUCCESS) {
        what = "keep connection option";
        goto fail;
    }
    /* A DC that vanished without a FIN is noticed within a few minutes of idleness. */
    ldap_set_option(ld, LDAP_OPT_X_KEEPALIVE_IDLE, &idle);
    ldap_set_option(ld, LDAP_OPT_X_KEEPALIVE_PROBES, &probes);
    ldap_set_option(ld, LDAP_OPT_X_KEEPALIVE_INTERVAL, &interval);
    if (c->ldap_ca_file != NULL &&
        ldap_set_option(ld, LDAP_OPT_X_TLS_CACERTFILE, c->ldap_ca_file) != LDAP_OPT_SUCCESS) {
        what = "ca_file";
        goto fail;
    }
    if (ldap_set_option(ld, LDAP_OPT_X_TLS_REQUIRE_CERT, &hard) != LDAP_OPT_SUCCESS ||
        ldap_set_option(ld, LDAP_OPT_X_TLS_PROTOCOL_MIN, &tls12) != LDAP_OPT_SUCCESS) {
        what = "TLS options";
        goto fail;
    }
    if (ldap_set_option(ld, LDAP_OPT_X_TLS_NEWCTX, &client) != LDAP_OPT_SUCCESS) {
        snprintf(err, errlen, "ldap: %s: cannot set up TLS (is [ldap] ca_file \"%s\" a PEM file?)",
                 uri, c->ldap_ca_file ? c->ldap_ca_file : "(libldap default)");
        return -1;
    }
    return 0;
fail:
    snprintf(err, errlen, "ldap: %s: cannot set %s", uri, what);
    return -1;
}

LDAP *dir_connect_bind(const struct conf *c, const char *uri, const char *pw, size_t pwlen,
                       bool *refused, char *err, size_t errlen)
{
    LDAP *ld = NULL;
    char what[512];
    int rc;
    struct watchdog wd;
    bool watching = false;

    if (strncasecmp(uri, "ldaps://", 8) != 0 && strncasecmp(uri, "ldap://", 7) != 0) {
        snprintf(err, errlen, "ldap: %s: not an ldaps:// or ldap:// URI", uri);
        goto fail;
    }
    rc = ldap_initialize(&ld, uri);
    if (rc != LDAP_SUCCESS) {
        snprintf(err, errlen, "ldap: %s: %s (%d)", uri, ldap_err2string(rc), rc);
        goto fail;
    }
    if (set_options(ld, c, uri, err, errlen) != 0)
        goto fail;
    if (ldap_set_option(ld, LDAP_OPT_X_TLS_CONNECT_CB, (void *)(uintptr_t)tls_connect_cb) !=
            LDAP_OPT_SUCCESS ||
        ldap_set_option(ld, LDAP_OPT_X_TLS_CONNECT_ARG, &wd) != LDAP_OPT_SUCCESS ||
        watchdog_start(&wd, c->ldap_timeout_ms ? c->ldap_timeout_ms : 5000) != 0) {
        snprintf(err, errlen, "ldap: %s: cannot watch the connection (out of resources)", uri);
        goto fail;
    }
    watching = true;
    /* Connects, and for ldaps:// completes the TLS handshake and name check. */
    rc = ldap_connect(ld);
    if (rc == LDAP_SUCCESS && strncasecmp(uri, "ldap://", 7) == 0)
        rc = ldap_start_tls_s(ld, NULL, NULL);
    if (rc != LDAP_SUCCESS) {
        watching = false;
        if (watchdog_stop(&wd)) {
            snprintf(err, errlen,
                     "ldap: cannot connect to %s: no TLS handshake within [ldap] timeout", uri);
            goto fail;
        }
        char tls[300];
        tls_diagnose(c, uri, tls, sizeof tls);
        snprintf(what, sizeof what, "ldap: cannot connect to %s", uri);
        if (tls[0] != '\0')
            snprintf(err, errlen, "%s: %s", what, tls);
        else
            dir_ld_error(ld, rc, what, err, errlen);
        goto fail;
    }
    struct berval cred = {.bv_len = pwlen, .bv_val = (char *)(uintptr_t)pw};
    rc = ldap_sasl_bind_s(ld, c->bind_dn, LDAP_SASL_SIMPLE, &cred, NULL, NULL, NULL);
    bool fired = watchdog_stop(&wd);
    watching = false;
    if (rc == LDAP_SUCCESS && fired)
        rc = LDAP_TIMEOUT; /* bound just as the watchdog shut the socket: not usable */
    if (rc != LDAP_SUCCESS) {
        /* An answer (invalid credentials) refuses us; a timeout or a lost
         * connection (libldap's negative codes) is only an absent server. */
        if (refused != NULL && rc > 0)
            *refused = true;
        snprintf(what, sizeof what, "ldap: bind as %s failed", c->bind_dn ? c->bind_dn : "");
        dir_ld_error(ld, rc, what, err, errlen);
        size_t used = strlen(err);
        if (used < errlen)
            snprintf(err + used, errlen - used, " (%s)", uri);
        goto fail;
    }
    return ld;
fail:
    if (watching)
        watchdog_stop(&wd);
    if (ld != NULL)
        ldap_unbind_ext(ld, NULL, NULL);
    return NULL;
}

LDAP *dir_connect_any(const struct conf *c, const char *pw, size_t pwlen, size_t *which,
                      bool *refused, char *err, size_t errlen)
{
    size_t used = 0;
    char one[1024];

    if (errlen > 0)
        err[0] = '\0';
    for (size_t i = 0; i < c->n_ldap_uri; i++) {
        LDAP *ld = dir_connect_bind(c, c->ldap_uri[i], pw, pwlen, refused, one, sizeof one);
        if (ld != NULL) {
            *which = i;
            return ld;
        }
        if (used < errlen) {
            int n = snprintf(err + used, errlen - used, "%s%s", used ? "; " : "", one);
            used += n > 0 ? (size_t)n : 0;
        }
    }
    if (c->n_ldap_uri == 0)
        snprintf(err, errlen, "ldap: no [ldap] uri");
    return NULL;
}

int dir_check(const struct conf *c, char *err, size_t errlen)
{
    char *pw = NULL;
    size_t pwlen = 0, which = 0;
    LDAP *ld = NULL;
    int ret = -1;
    bool refused = false;

    if (c->bind_dn == NULL || c->base_dn == NULL) {
        snprintf(err, errlen, "ldap: [ldap] bind_dn and base_dn are required");
        goto fail;
    }
    pw = dir_password_read(c, &pwlen, err, errlen);
    if (pw == NULL)
        goto fail;
    ld = dir_connect_any(c, pw, pwlen, &which, &refused, err, errlen);
    if (ld == NULL) {
        ret = refused ? -1 : -2;
        goto fail;
    }
    /* A wrong base_dn would otherwise show up later as "no mapping" for everyone. */
    char *attrs[] = {LDAP_NO_ATTRS, NULL};
    LDAPMessage *res = NULL;
    int rc = ldap_search_ext_s(ld, c->base_dn, LDAP_SCOPE_BASE, "(objectClass=*)", attrs, 0, NULL,
                               NULL, NULL, 1, &res);
    ldap_msgfree(res);
    if (rc != LDAP_SUCCESS) {
        char what[600];
        snprintf(what, sizeof what, "ldap: base_dn \"%s\" on %s", c->base_dn, c->ldap_uri[which]);
        dir_ld_error(ld, rc, what, err, errlen);
        if (rc < 0)
            ret = -2; /* no answer in time: not the configuration's fault */
        goto fail;
    }
    ret = 0;
fail:
    if (ld != NULL)
        ldap_unbind_ext(ld, NULL, NULL);
    conf_secret_free(pw, pwlen);
    return ret;
}
