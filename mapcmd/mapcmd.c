/* `certmapd map`: the certificate policy and the mapping for one certificate,
 * without serving, explained step by step. This is how an administrator tests
 * certificate mapping without IIS. Exit status: 0 mapped, 1 denied, 2 error. */
#include "mapcmd/mapcmd.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "common/log.h"
#include "conf/conf.h"
#include "krb/krb.h"
#include "ldap/dir.h"
#include "mapping/mapping.h"
#include "tls/tls.h"

struct mapcmd {
    struct event_base *base;
    struct map_result res;
    bool done;
    int step;
};

static void usage(FILE *out)
{
    fprintf(out, "usage: certmapd map [-c FILE] --cert CERT.pem [--chain CHAIN.pem] [--delegate]\n"
                 "  Runs the certificate policy and the mapping for one certificate, prints each\n"
                 "  step and the verdict. --delegate: then Kerberos delegation for the mapped\n"
                 "  account ([delegation] mode = kerberos): S4U2Self and S4U2Proxy, the tickets\n"
                 "  or the KDC's refusal. Exit status: 0 mapped (and delegated), 1 denied, 2 error.\n");
}

static void print_list(const char *label, char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        printf("  %-14s %s\n", label, v[i]);
}

static void print_time(const char *label, time_t t)
{
    char buf[64];
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    printf("  %-14s %s\n", label, buf);
}

static void print_facts(const struct cert_facts *f)
{
    printf("certificate\n");
    printf("  %-14s %s\n", "subject", f->subject);
    printf("  %-14s %s\n", "issuer", f->issuer);
    printf("  %-14s %s\n", "subject (ASI)", f->subject_asi);
    printf("  %-14s %s\n", "issuer (ASI)", f->issuer_asi);
    printf("  %-14s %s\n", "serial", f->serial_hex);
    printf("  %-14s %s\n", "serial <SR>", f->serial_rev);
    printf("  %-14s %s\n", "sha256", f->sha256);
    printf("  %-14s %s\n", "sha1", f->sha1);
    printf("  %-14s %s\n", "ski", f->ski ? f->ski : "(none)");
    printf("  %-14s %s\n", "sha1-pukey", f->pubkey_sha1);
    print_list("upn", f->upn, f->n_upn);
    print_list("rfc822", f->rfc822, f->n_rfc822);
    print_list("dns", f->dns, f->n_dns);
    printf("  %-14s %s\n", "sid extension", f->sid ? f->sid : "(none)");
    printf("  %-14s %s\n", "sid (SAN URL)", f->san_sid ? f->san_sid : "(none)");
    print_time("not before", f->not_before);
    print_time("not after", f->not_after);
}

static void print_entry(const struct map_entry *e)
{
    printf("       - %s\n", e->dn);
    printf("         upn %s, sam %s, sid %s, userAccountControl 0x%x", e->upn ? e->upn : "-",
           e->sam ? e->sam : "-", e->sid ? e->sid : "-", e->uac);
    if (e->has_uac_computed)
        printf(", computed 0x%x", e->uac_computed);
    printf("\n");
    for (size_t i = 0; i < e->n_altsecids; i++)
        printf("         altSecurityIdentities %s\n", e->altsecids[i]);
}

static void trace_cb(void *arg, const struct map_lookup *l, bool ok, const struct map_entry *entries,
                     size_t n)
{
    struct mapcmd *m = arg;
    printf("  %d. %s\n", ++m->step, l->kind);
    printf("     filter  %s\n", l->filter);
    for (size_t i = 0; i < l->n_values; i++)
        printf("     value   %s  (%s, %s)\n", l->values[i], l->labels[i],
               l->strength[i] == MAP_STRONG ? "strong" : "weak");
    if (!ok) {
        printf("     answer  directory unavailable or timed out\n");
        return;
    }
    printf("     answer  %zu entr%s\n", n, n == 1 ? "y" : "ies");
    for (size_t i = 0; i < n; i++)
        print_entry(&entries[i]);
}

static void done_cb(void *arg, const struct map_result *res)
{
    struct mapcmd *m = arg;
    map_result_copy(&m->res, res);
    m->done = true;
    event_base_loopbreak(m->base);
}

static const char *enforcement_name(enum map_enforcement e)
{
    return e == ENFORCE_FULL ? "full" : e == ENFORCE_COMPATIBILITY ? "compatibility" : "disabled";
}

int mapcmd_main(int argc, char **argv, const char *default_conf)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"cert", required_argument, NULL, 'x'},
        {"chain", required_argument, NULL, 'n'},  {"help", no_argument, NULL, 'h'},
        {"delegate", no_argument, NULL, 'd'},
        {NULL, 0, NULL, 0},
    };
    const char *path = default_conf, *cert_path = NULL, *chain_path = NULL;
    bool delegate = false;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': path = optarg; break;
        case 'x': cert_path = optarg; break;
        case 'n': chain_path = optarg; break;
        case 'd': delegate = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (cert_path == NULL || optind != argc) {
        usage(stderr);
        return 2;
    }

    char err[1024];
    int rc = 2;
    struct conf *c = NULL;
    struct tls_ctx *tls = NULL;
    struct tls_certs certs = {0};
    struct cert_facts *facts = NULL;
    struct mapcmd m = {0};
    struct map_source *src = NULL;
    struct mapper *mapper = NULL;

    if (conf_load(path, &c, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        goto out;
    }
    cm_log_set_level(CM_LOG_WARN); /* the steps are printed; logs only for problems */
    if (delegate && c->deleg_mode != DELEG_KERBEROS) {
        fprintf(stderr, "certmapd map --delegate: %s has no [delegation] mode = kerberos: "
                        "delegation needs a [delegation] section with mode = kerberos, "
                        "principal (the gateway's service account) and keytab (its keys), "
                        "and a [mapping] section\n",
                c->path);
        goto out;
    }
    if (delegate) {
        if (c->deleg_krb5_conf != NULL)
            setenv("KRB5_CONFIG", c->deleg_krb5_conf, 1);
        if (krb_check_keytab(c, err, sizeof err) < 0) {
            fprintf(stderr, "%s\n", err);
            goto out;
        }
    }
    tls = tls_ctx_new(c, err, sizeof err);
    if (tls == NULL) {
        fprintf(stderr, "%s: %s\n", path, err);
        goto out;
    }
    /* Further certificates of the --cert file are taken as its chain. */
    if (tls_certs_build(&certs, cert_path, chain_path, err, sizeof err) < 0) {
        fprintf(stderr, "certmapd map: %s\n", err);
        goto out;
    }

    enum reason why = tls_check_cert(tls, certs.leaf, certs.chain, &facts);
    if (facts == NULL && why == R_CERT_MALFORMED) {
        printf("certificate policy: refused: %s (a name has a NUL byte or invalid UTF-8)\n",
               reason_name(why));
        rc = 1;
        goto out;
    }
    if (facts == NULL) {
        /* Facts of a refused certificate still help the administrator. */
        if (tls_facts_from_x509(certs.leaf, &facts) == R_NONE)
            print_facts(facts);
        printf("certificate policy: refused: %s\n", reason_name(why));
        rc = 1;
        goto out;
    }
    print_facts(facts);
    printf("certificate policy: accepted (chain, trusted issuer, usage, validity, revocation)\n");
    if (!c->has_mapping_section) {
        printf("mapping: not configured (no [mapping] section): certificate checks only\n");
        rc = 0;
        goto out;
    }

    m.base = event_base_new();
    if (m.base == NULL)
        goto out;
    /* A directory that cannot be reached now is an error here: nothing would answer. */
    if (c->map_source == MAP_SOURCE_LDAP && dir_check(c, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        goto out;
    }
    src = dir_source_open(c, m.base, err, sizeof err);
    if (src == NULL) {
        fprintf(stderr, "%s\n", err);
        goto out;
    }
    if (c->map_source == MAP_SOURCE_LDIF)
        printf("directory: LDIF file %s\n", c->ldif_file);
    else
        printf("directory: %s (base %s)\n", c->ldap_uri[0], c->base_dn);
    mapper = mapper_new(c, src, NULL); /* no cache: every lookup is asked for real */
    if (mapper == NULL)
        goto out;
    printf("lookups (enforcement %s):\n", enforcement_name(c->enforcement));
    struct map_result now = {0};
    struct map_job *job = map_job_start(mapper, facts, done_cb, &m, trace_cb, &now);
    if (job == NULL) {
        map_result_copy(&m.res, &now);
        map_result_purge(&now);
    } else {
        /* Bounded: every search has [ldap] timeout, and the connection is
         * made by dir_check above. */
        uint64_t ms = c->ldap_timeout_ms * (c->n_methods + 1) + 15000;
        struct timeval limit = {.tv_sec = (time_t)(ms / 1000),
                                .tv_usec = (suseconds_t)(ms % 1000) * 1000};
        event_base_loopexit(m.base, &limit);
        event_base_dispatch(m.base);
        if (!m.done) {
            map_job_cancel(job);
            printf("verdict: no answer in time: %s\n", reason_name(R_DIRECTORY_UNAVAILABLE));
            rc = 1;
            goto out;
        }
    }
    if (m.res.reason == R_NONE) {
        printf("verdict: mapped\n");
        printf("  %-14s %s\n", "account", m.res.dn);
        printf("  %-14s %s\n", "upn", m.res.upn ? m.res.upn : "-");
        printf("  %-14s %s\n", "sam", m.res.sam ? m.res.sam : "-");
        printf("  %-14s %s\n", "sid", m.res.sid ? m.res.sid : "-");
        printf("  %-14s %s\n", "method", m.res.method);
        rc = 0;
        if (delegate) {
            bool enterprise;
            char *user = krb_user_name(c, m.res.sam, m.res.upn, &enterprise);
            struct krb *k = user != NULL ? krb_new(c, err, sizeof err) : NULL;
            if (user == NULL)
                printf("delegation: refused: %s: the account has no %s to impersonate\n",
                       reason_name(R_DELEGATION_REFUSED),
                       c->deleg_impersonate == IMPERSONATE_UPN ? "userPrincipalName"
                                                               : "sAMAccountName");
            else if (k == NULL)
                fprintf(stderr, "%s\n", err);
            rc = user == NULL ? 1 : k == NULL ? 2 : krb_explain(k, user, enterprise, stdout);
            krb_free(k);
            free(user);
        }
    } else {
        printf("verdict: denied: %s\n", reason_name(m.res.reason));
        rc = 1;
    }
    if (m.res.detail != NULL)
        printf("  %s\n", m.res.detail);
out:
    map_result_purge(&m.res);
    mapper_free(mapper);
    map_source_close(src);
    if (m.base != NULL)
        event_base_free(m.base);
    tls_facts_free(facts);
    tls_certs_purge(&certs);
    tls_ctx_free(tls);
    conf_free(c);
    return rc;
}
