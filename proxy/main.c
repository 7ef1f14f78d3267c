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
#include <string.h>
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
    return proxy_backend_resolve(c, &sh->backend, err, errlen);
}

static void proxy_shared_purge(struct proxy_shared *sh)
{
    krb_free(sh->krb);
    accesslog_close(sh->alog);
    tls_client_ctx_free(sh->backend_tls);
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

static int serve(const struct conf *c, struct tls_ctx *tls)
{
    struct proxy_shared sh = {.conf = c, .tls = tls};
    struct worker *ws = NULL;
    char err[2048];
    int rc = 1;

    if (prepare(c, &sh, err, sizeof err) < 0) {
        log_error("%s", err);
        goto out;
    }
    if (c->has_mapping_section) {
        if (c->map_source == MAP_SOURCE_LDAP) {
            /* A directory that refuses us is a configuration error; one that
             * cannot be reached now is not: requests get 503 until it answers. */
            int rc_dir = dir_check(c, err, sizeof err);
            if (rc_dir == -1) {
                log_error("%s", err);
                goto out;
            }
            if (rc_dir == -2)
                log_error("%s; starting anyway: mapped requests get 503 until a directory "
                          "answers", err);
        }
        sh.cache = map_cache_new(c->cache_entries, c->cache_ttl_ms, c->negative_cache_ttl_ms);
        if (sh.cache == NULL) {
            log_error("out of memory for the identity cache");
            goto out;
        }
    }
    if (c->deleg_mode == DELEG_KERBEROS) {
        sh.krb = krb_new(c, err, sizeof err);
        if (sh.krb == NULL) {
            log_error("%s", err);
            goto out;
        }
        /* No delegation right is a configuration error; no KDC now is not:
         * requests get 503 kdc_unavailable until one answers. */
        int rc_krb = krb_probe(sh.krb, err, sizeof err);
        if (rc_krb == -1) {
            log_error("%s", err);
            goto out;
        }
        if (rc_krb == -2)
            log_error("%s; starting anyway: delegated requests get 503 until a KDC answers", err);
    }
    raise_nofile_limit();
    ws = proxy_workers_bind(c->workers, &sh, err, sizeof err);
    if (ws == NULL) {
        log_error("%s", err);
        goto out;
    }
    if (c->user != NULL && drop_privileges(c->user) < 0) {
        proxy_workers_free(ws, c->workers);
        goto out;
    }

    /* Signals are taken by this thread alone, with sigwait; workers inherit the mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (proxy_workers_start(ws, c->workers) < 0)
        goto out; /* the started ones are stopped with the process, and <ws> with them */
    for (size_t i = 0; i < c->n_listen; i++)
        log_info("listening on %s (%u workers)", c->listen[i].text, c->workers);
    /* Listeners bound, first directory bind done (dir_check), workers running. */
    notify_status("serving on %s (%u workers)", c->n_listen > 0 ? c->listen[0].text : "-",
                  c->workers);
    notify_ready();
    int sig = 0;
    for (;;) {
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            log_info("SIGHUP: configuration reload is not supported; restart to apply changes");
            continue;
        }
        if (sig == SIGUSR1) {
            /* logrotate renamed the access log: a new file under its name. */
            if (accesslog_reopen(sh.alog, err, sizeof err) < 0)
                log_error("SIGUSR1: %s; still writing to the old file", err);
            else
                log_info("SIGUSR1: access log reopened");
            continue;
        }
        break;
    }
    log_info("%s: no longer accepting; finishing requests in flight", strsignal(sig));
    notify_stopping();
    notify_status("draining: finishing requests in flight");
    proxy_workers_stop(ws, c->workers, SHUTDOWN_GRACE_MS);
    /* krb/'s threads post to the workers: stopped before the workers go. */
    krb_stop(sh.krb);
    proxy_workers_free(ws, c->workers);
    log_info("stopped");
    rc = 0;
out:
    proxy_shared_purge(&sh);
    return rc;
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
    struct conf *c = NULL;
    if (conf_load(path, &c, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    cm_log_set_level((enum log_level)c->log_level);
    /* Build the TLS context now, in -t too: keys, certificates and CRLs are
     * part of what a configuration check must prove. */
    struct tls_ctx *tls = tls_ctx_new(c, err, sizeof err);
    if (tls == NULL) {
        fprintf(stderr, "%s\n", err);
        conf_free(c);
        return 1;
    }
    if (test_only) {
        int rc = check_only(c, err, sizeof err);
        if (rc == 0)
            printf("%s: configuration OK\n", path);
        else
            fprintf(stderr, "%s\n", err);
        tls_ctx_free(tls);
        conf_free(c);
        return rc;
    }
    signal(SIGPIPE, SIG_IGN);
    if (evthread_use_pthreads() < 0) {
        log_error("libevent has no pthreads support");
        return 1;
    }
    int rc = serve(c, tls);
    tls_ctx_free(tls);
    conf_free(c);
    return rc;
}
