/* certmapd: command line, start-up sequence, signals.
 *
 * Start-up order matters: the configuration is validated and every file
 * loaded before anything listens; sockets are bound and keys loaded as root,
 * then privileges are dropped, then the workers start. */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "common/log.h"
#include "common/notify.h"
#include "conf/conf.h"
#include "krb/krb.h"
#include "ldap/dir.h"
#include "mapcmd/mapcmd.h"
#include "mapping/mapping.h"
#include "metrics/metrics.h"
#include "proxy/proxy.h"
#include "tls/tls.h"

#define DEFAULT_CONF "/etc/certmapd/certmapd.conf"
#define SHUTDOWN_GRACE_MS 30000

static void usage(FILE *out)
{
    fprintf(out, "usage: certmapd [-c FILE]            serve\n"
                 "       certmapd -t [-c FILE]         check the configuration and exit\n"
                 "       certmapd --help-config[=man]  every configuration key (=man: roff)\n"
                 "       certmapd --version | --help\n"
                 "\n"
                 "  -c, --config FILE   configuration file (default " DEFAULT_CONF ")\n"
                 "  -t, --test          validate the configuration and its files, then exit:\n"
                 "                      0 when valid, 1 with FILE:LINE: reason otherwise\n");
}

static int drop_privileges(const char *user)
{
    struct passwd *pw = getpwnam(user);
    if (pw == NULL) {
        log_error("[server] user: no such user \"%s\"", user);
        return -1;
    }
    if (setgroups(0, NULL) < 0 || setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) < 0 ||
        setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) < 0) {
        log_error("cannot drop privileges to \"%s\": %s", user, strerror(errno));
        return -1;
    }
    if (setuid(0) == 0 && pw->pw_uid != 0) {
        log_error("privileges could be regained after dropping them: refusing to run");
        return -1;
    }
    return 0;
}

/* What start-up opens and checks from the configuration before anything
 * listens, besides the TLS context: the access log, the backend's TLS context
 * and its addresses. `certmapd -t` runs it too, so that it refuses whatever
 * start-up would. Returns 0, or -1 with "FILE:LINE: [section] key: reason" in
 * <err>; what was made stays in <sh> for proxy_shared_purge(). */
static int prepare(const struct conf *c, struct proxy_shared *sh, char *err, size_t errlen)
{
    char why[768], where[512];
    if (c->deleg_mode == DELEG_KERBEROS) {
        /* Before any Kerberos call, and before any thread: the library reads it once. */
        if (c->deleg_krb5_conf != NULL)
            setenv("KRB5_CONFIG", c->deleg_krb5_conf, 1);
        if (krb_check_keytab(c, err, errlen) < 0)
            return -1;
    }
    sh->alog = accesslog_open(c->access_log, why, sizeof why);
    if (sh->alog == NULL) {
        snprintf(err, errlen, "%s: %s", conf_where(c, "server", "access_log", where, sizeof where),
                 why);
        return -1;
    }
    if (c->backend.https) {
        sh->backend_tls = tls_client_ctx_new(c, err, errlen);
        if (sh->backend_tls == NULL)
            return -1;
    }
    sh->backend = backend_set_new(c, err, errlen);
    return sh->backend == NULL ? -1 : 0;
}

static void proxy_shared_purge(struct proxy_shared *sh)
{
    krb_free(sh->krb);
    accesslog_close(sh->alog);
    tls_client_ctx_free(sh->backend_tls);
    backend_set_free(sh->backend);
    map_cache_free(sh->cache);
}

/* Every client holds a descriptor (two with its backend): the soft open-files
 * limit, often 1024, is raised to the hard one, and both are logged. */
static void raise_nofile_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    unsigned long long soft = (unsigned long long)rl.rlim_cur;
    if (rl.rlim_cur != rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
            log_warn("open files: cannot raise the soft limit %llu to the hard limit %llu: %s",
                     soft, (unsigned long long)rl.rlim_max, strerror(errno));
            return;
        }
    }
    log_info("open files: soft limit %llu (was %llu), hard limit %llu",
             (unsigned long long)rl.rlim_cur, soft, (unsigned long long)rl.rlim_max);
}

/* What /healthz checks for <c>: every backend server's resolved addresses,
 * and a directory connection when mapping goes to LDAP. */
static void metrics_targets_of(const struct conf *c, const struct backend_set *bs,
                               struct metrics_targets *t)
{
    memset(t, 0, sizeof *t);
    for (size_t i = 0; i < bs->n && i < METRICS_MAX_BACKEND; i++) {
        t->backend[i] = bs->addr[i];
        t->backend_len[i] = bs->len[i];
        snprintf(t->backend_text[i], sizeof t->backend_text[i], "%s", bs->text[i]);
        t->n_backend++;
    }
    t->need_directory = c->has_mapping_section && c->map_source == MAP_SOURCE_LDAP;
    t->timeout_ms = c->metrics_healthz_timeout_ms;
    t->conf = c;
}

/* The base CRLs in use, for certmapd_crl_* (a delta's issuer has its base). */
struct crl_gauges {
    const char *issuer[METRICS_CRL_MAX];
    int64_t last[METRICS_CRL_MAX], next[METRICS_CRL_MAX];
    char names[METRICS_CRL_MAX][256];
    size_t n;
};

static void crl_gauge_one(void *arg, const struct tls_crl_info *info)
{
    struct crl_gauges *g = arg;
    if (info->delta || g->n == METRICS_CRL_MAX)
        return;
    snprintf(g->names[g->n], sizeof g->names[g->n], "%s", info->issuer);
    g->issuer[g->n] = g->names[g->n];
    g->last[g->n] = (int64_t)info->this_update;
    g->next[g->n] = (int64_t)info->next_update;
    g->n++;
}

/* Once a second: the CRL gauges follow the current generation's CRLs, which
 * change without a reload (crl_refresh, crl_fetch). */
static void crl_gauges_update(struct tls_ctx *tls)
{
    struct crl_gauges g = {.n = 0};
    tls_crl_ages(tls, crl_gauge_one, &g);
    metrics_crl_replace(g.issuer, g.last, g.next, g.n);
}

/* ---- generations ---- */

static bool same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* What a reload cannot change: the listening sockets and the threads are
 * made once, privileges are dropped once, and the Kerberos library reads its
 * configuration once. 0, or -1 with "FILE:LINE: [section] key: ..." in <err>. */
static bool same_addr(const struct conf_listen *a, const struct conf_listen *b)
{
    return a->addrlen == b->addrlen && memcmp(&a->addr, &b->addr, a->addrlen) == 0;
}

static int reload_keeps(const struct conf *now, const struct conf *c, char *err, size_t errlen)
{
    const char *sec = NULL, *key = NULL;
    bool same_listen = now->n_listen == c->n_listen;
    for (size_t i = 0; same_listen && i < c->n_listen; i++)
        same_listen = same_addr(&now->listen[i], &c->listen[i]);
    if (!same_listen)
        sec = "server", key = "listen";
    else if (now->workers != c->workers)
        sec = "server", key = "workers";
    else if (!same_str(now->user, c->user))
        sec = "server", key = "user";
    else if (!same_str(now->deleg_krb5_conf, c->deleg_krb5_conf))
        sec = "delegation", key = "krb5_conf";
    else if (now->has_metrics_listen != c->has_metrics_listen ||
             (c->has_metrics_listen && !same_addr(&now->metrics_listen, &c->metrics_listen)))
        sec = "metrics", key = "listen"; /* its socket is made once, as the server's */
    if (sec == NULL)
        return 0;
    char where[512];
    snprintf(err, errlen, "%s: changed, and a reload cannot change it: restart to apply",
             conf_where(c, sec, key, where, sizeof where));
    return -1;
}

static void gen_free(struct proxy_shared *sh)
{
    if (sh == NULL)
        return;
    /* krb/'s threads post to the workers: stopped before anything else goes. */
    krb_stop(sh->krb);
    proxy_shared_purge(sh);
    tls_ctx_free(sh->tls);
    conf_free(sh->conf_owned);
    free(sh);
}

/* A new generation from configuration file <path>: the snapshot, the TLS
 * contexts, the access log, the backend's addresses, the identity cache and
 * the delegation pool, each checked as start-up checks it. <now> is the
 * running configuration on a reload (NULL at start). NULL with a reason in
 * <err> ("FILE:LINE: ..." when a line is to blame). */
static struct proxy_shared *gen_make(const char *path, const struct proxy_shared *prev, char *err,
                                     size_t errlen)
{
    const struct conf *now = prev != NULL ? prev->conf : NULL;
    struct conf *c = NULL;
    if (conf_load(path, &c, err, errlen) < 0)
        return NULL;
    if (now != NULL && reload_keeps(now, c, err, errlen) < 0) {
        conf_free(c);
        return NULL;
    }
    struct proxy_shared *sh = calloc(1, sizeof *sh);
    if (sh == NULL) {
        snprintf(err, errlen, "out of memory");
        conf_free(c);
        return NULL;
    }
    sh->conf = sh->conf_owned = c;
    sh->tls = tls_ctx_new(c, err, errlen);
    if (sh->tls == NULL || prepare(c, sh, err, errlen) < 0)
        goto fail;
    if (c->has_mapping_section) {
        if (c->map_source == MAP_SOURCE_LDAP) {
            /* A directory that refuses us is a configuration error; one that
             * cannot be reached now is not: requests get 503 until it answers. */
            int rc_dir = dir_check(c, err, errlen);
            if (rc_dir == -1)
                goto fail;
            if (rc_dir == -2)
                log_error("%s; going on: mapped requests get 503 until a directory answers", err);
        }
        /* What the directory answered still holds when neither the mapping
         * nor the directory changed: 100 000 devices need not be looked up
         * again after each reload. (An LDIF file may have changed; looking
         * it up again costs nothing.) */
        if (prev != NULL && prev->cache != NULL && c->map_source == MAP_SOURCE_LDAP &&
            now->map_source == MAP_SOURCE_LDAP && conf_section_same(now, c, "mapping") &&
            conf_section_same(now, c, "ldap")) {
            sh->cache = map_cache_hold(prev->cache);
            log_info("reload: [mapping] and [ldap] unchanged: the identity cache is kept");
        } else {
            sh->cache = map_cache_new(c->cache_entries, c->cache_ttl_ms, c->negative_cache_ttl_ms);
        }
        if (sh->cache == NULL) {
            snprintf(err, errlen, "out of memory for the identity cache");
            goto fail;
        }
    }
    if (c->deleg_mode == DELEG_KERBEROS) {
        sh->krb = krb_new(c, err, errlen);
        if (sh->krb == NULL)
            goto fail;
        /* No delegation right is a configuration error; no KDC now is not:
         * requests get 503 kdc_unavailable until one answers. */
        int rc_krb = krb_probe(sh->krb, err, errlen);
        if (rc_krb == -1)
            goto fail;
        if (rc_krb == -2)
            log_error("%s; going on: delegated requests get 503 until a KDC answers", err);
    }
    return sh;
fail:
    gen_free(sh);
    return NULL;
}

/* SIGHUP: the file is read and checked again; when it is sound, new
 * connections use it and the others keep theirs until they end. When it is
 * not, nothing changes. Returns the current generation. */
static struct proxy_shared *reload(struct worker *ws, struct proxy_shared *cur,
                                   struct metrics_server *ms)
{
    char err[2048];
    const struct conf *now = cur->conf;
    log_info("SIGHUP: reloading %s", now->path);
    notify_reloading();
    struct proxy_shared *sh = gen_make(now->path, cur, err, sizeof err);
    if (sh == NULL) {
        log_error("reload: %s; still serving generation %u", err, cur->generation);
        metrics_reload(false);
        notify_ready();
        return cur;
    }
    sh->generation = cur->generation + 1;
    if (proxy_workers_offer(ws, now->workers, sh, err, sizeof err) < 0) {
        log_error("reload: %s; still serving generation %u", err, cur->generation);
        gen_free(sh);
        metrics_reload(false);
        notify_ready();
        return cur;
    }
    cm_log_set_level((enum log_level)sh->conf->log_level);
    proxy_workers_commit(ws, now->workers, true);
    proxy_workers_set_limit(ws, sh->conf);
    sh->older = cur;
    struct metrics_targets mt;
    metrics_targets_of(sh->conf, sh->backend, &mt);
    if (ms != NULL && metrics_server_update(ms, &mt) < 0)
        log_warn("reload: /healthz still checks the previous backend and directory (out of memory)");
    metrics_reload(true);
    log_info("reload: %s loaded as generation %u; connections of earlier generations finish "
             "on theirs", sh->conf->path, sh->generation);
    notify_status("serving generation %u", sh->generation);
    notify_ready();
    return sh;
}

/* Frees the replaced generations no worker uses any more. */
static void reap(struct proxy_shared *cur)
{
    for (struct proxy_shared **pp = &cur->older; *pp != NULL;) {
        struct proxy_shared *g = *pp;
        if (atomic_load_explicit(&g->refs, memory_order_acquire) == 0) {
            *pp = g->older;
            log_info("generation %u: its last connection has ended", g->generation);
            gen_free(g);
        } else {
            pp = &g->older;
        }
    }
}

/* The signals the main thread takes with sigtimedwait. */
static void signal_set(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
    sigaddset(set, SIGUSR1);
}

static int serve(struct proxy_shared *sh)
{
    const struct conf *c = sh->conf;
    unsigned n_workers = c->workers;
    struct worker *ws = NULL;
    char err[2048];

    raise_nofile_limit();
    ws = proxy_workers_bind(n_workers, sh, err, sizeof err);
    if (ws == NULL) {
        log_error("%s", err);
        gen_free(sh);
        return 1;
    }
    /* Bound before privileges go, like the listeners. */
    struct metrics_targets mt;
    metrics_targets_of(c, sh->backend, &mt);
    err[0] = '\0';
    struct metrics_server *ms = metrics_server_new(c, &mt, err, sizeof err);
    if (ms == NULL && err[0] != '\0') {
        log_error("%s", err);
        proxy_workers_free(ws, n_workers);
        gen_free(sh);
        return 1;
    }
    if (c->user != NULL && drop_privileges(c->user) < 0) {
        metrics_server_free(ms);
        proxy_workers_free(ws, n_workers);
        gen_free(sh);
        return 1;
    }

    sigset_t set;
    signal_set(&set);
    if (proxy_workers_start(ws, n_workers) < 0)
        return 1; /* the started ones are stopped with the process, and <ws> with them */
    if (ms != NULL && metrics_server_start(ms, err, sizeof err) < 0) {
        log_error("%s", err);
        return 1;
    }
    for (size_t i = 0; i < c->n_listen; i++)
        log_info("listening on %s%s (%u workers)", c->listen[i].text,
                 c->listen[i].proxy_protocol ? " with PROXY protocol" : "", n_workers);
    /* Listeners bound, first directory bind done (gen_make), workers running. */
    notify_status("serving on %s (%u workers)", c->n_listen > 0 ? c->listen[0].text : "-",
                  n_workers);
    notify_ready();
    int sig = 0;
    for (;;) {
        /* Woken each second to free what reloads replaced, once unused. */
        struct timespec tick = {.tv_sec = 1};
        sig = sigtimedwait(&set, NULL, &tick);
        reap(sh);
        tls_ctx_tick(sh->tls, time(NULL));
        crl_gauges_update(sh->tls);
        if (sig < 0)
            continue;
        if (sig == SIGHUP) {
            sh = reload(ws, sh, ms);
            continue;
        }
        if (sig == SIGUSR1) {
            /* logrotate renamed the access log: a new file under its name,
             * for every generation still writing. */
            int bad = 0;
            for (struct proxy_shared *g = sh; g != NULL; g = g->older)
                if (accesslog_reopen(g->alog, err, sizeof err) < 0) {
                    log_error("SIGUSR1: %s; still writing to the old file", err);
                    bad++;
                }
            if (bad == 0)
                log_info("SIGUSR1: access log reopened");
            continue;
        }
        break;
    }
    log_info("%s: no longer accepting; finishing requests in flight", strsignal(sig));
    notify_stopping();
    notify_status("draining: finishing requests in flight");
    /* A load balancer's check fails from now on: it stops sending clients. */
    metrics_server_free(ms);
    proxy_workers_stop(ws, n_workers, SHUTDOWN_GRACE_MS);
    /* krb/'s threads post to the workers: stopped before the workers go. */
    for (struct proxy_shared *g = sh; g != NULL; g = g->older)
        krb_stop(g->krb);
    proxy_workers_free(ws, n_workers);
    metrics_shutdown(); /* every counting thread is gone */
    while (sh->older != NULL) {
        struct proxy_shared *g = sh->older;
        sh->older = g->older;
        gen_free(g);
    }
    gen_free(sh);
    log_info("stopped");
    return 0;
}

/* `certmapd -t` beyond the TLS context: what prepare() opens, and the LDIF
 * file of source = ldif (a bad entry is a configuration error). The directory
 * itself is not contacted. 0, or 1 with the reason in <err>. */
static int check_only(const struct conf *c, char *err, size_t errlen)
{
    struct proxy_shared sh = {.conf = c};
    int rc = prepare(c, &sh, err, errlen) < 0 ? 1 : 0;
    proxy_shared_purge(&sh);
    if (rc == 0 && c->has_mapping_section && c->map_source == MAP_SOURCE_LDIF) {
        struct event_base *base = event_base_new();
        struct map_source *src = base ? dir_source_open(c, base, err, errlen) : NULL;
        if (base == NULL)
            snprintf(err, errlen, "out of memory");
        rc = src == NULL ? 1 : 0;
        map_source_close(src);
        if (base != NULL)
            event_base_free(base);
    }
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"test", no_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {"help-config", optional_argument, NULL, 'K'},
        {NULL, 0, NULL, 0},
    };
    if (argc > 1 && strcmp(argv[1], "map") == 0)
        return mapcmd_main(argc - 1, argv + 1, DEFAULT_CONF);
    const char *path = DEFAULT_CONF;
    bool test_only = false;
    int ch;
    while ((ch = getopt_long(argc, argv, "c:thV", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            path = optarg;
            break;
        case 't':
            test_only = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("certmapd %s\n", CERTMAPD_VERSION);
            return 0;
        case 'K':
            if (optarg != NULL && strcmp(optarg, "man") != 0) {
                fprintf(stderr, "certmapd: --help-config=%s: only \"man\" is known\n", optarg);
                return 2;
            }
            if (optarg != NULL)
                conf_print_keys_man(stdout);
            else
                conf_print_keys(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "certmapd: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }

    char err[2048];
    if (test_only) {
        struct conf *c = NULL;
        if (conf_load(path, &c, err, sizeof err) < 0) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        /* The TLS context too: keys, certificates and CRLs are part of what
         * a configuration check must prove. */
        struct tls_ctx *tls = tls_ctx_new(c, err, sizeof err);
        int rc = tls == NULL ? 1 : check_only(c, err, sizeof err);
        if (rc == 0)
            printf("%s: configuration OK\n", path);
        else
            fprintf(stderr, "%s\n", err);
        tls_ctx_free(tls);
        conf_free(c);
        return rc;
    }
    signal(SIGPIPE, SIG_IGN);
    /* Blocked from the start, before any thread (workers, krb/, ldap/) is
     * made, so that every thread inherits the mask and a SIGHUP or SIGUSR1
     * that comes while start-up binds or asks the directory waits for the
     * main loop instead of killing the process (their default action). */
    sigset_t set;
    signal_set(&set);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (evthread_use_pthreads() < 0) {
        log_error("libevent has no pthreads support");
        return 1;
    }
    struct proxy_shared *sh = gen_make(path, NULL, err, sizeof err);
    if (sh == NULL) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    sh->generation = 1;
    cm_log_set_level((enum log_level)sh->conf->log_level);
    int rc = serve(sh);
    return rc;
}
