/* ldap/dir.c against the real Samba AD DC of the ctest fixture `samba`
 * (tests/samba/samba-ad.sh; CERTMAPD_SAMBA_DIR). Accounts are written by
 * tests/unit/ldap/ad_users.py; their SIDs come from that script (decoded in
 * Python), so the C decoding is checked independently. Everything runs on a
 * real event_base; slowness and cut connections come from tests/e2e/slowproxy.py.
 * The last test stops and restarts Samba. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <ldap.h>

#include "common/log.h"
#include "ldap/dir.h"

#define ISSUER "DC=test,DC=example,DC=corp,CN=Corp Issuing CA"
#define MAX_ENTRIES 16

struct ad {
    char samba[1024];
    char src[1024];
    char ca[1200];
    char secret[1200];
    char sid_alice[200], sid_bob[200], sid_ws1[200];
    char uri[64];
};

static struct ad *g; /* set once by the group setup; read-only afterwards */

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v != NULL && *v != '\0' ? v : dflt;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof cmd);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static struct conf *conf_for(const char *uri1, const char *uri2, const char *secret,
                             uint64_t timeout_ms)
{
    struct conf *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->ldap_uri[c->n_ldap_uri++] = strdup(uri1);
    if (uri2 != NULL)
        c->ldap_uri[c->n_ldap_uri++] = strdup(uri2);
    c->base_dn = strdup("DC=corp,DC=example,DC=test");
    c->bind_dn = strdup("svc-seg@corp.example.test");
    c->bind_password_file = strdup(secret);
    c->ldap_ca_file = strdup(g->ca);
    c->ldap_timeout_ms = timeout_ms;
    return c;
}

/* ---- one search, copied out of the callback ------------------------------------- */

struct answer {
    bool done, ok;
    size_t n;
    char dn[MAX_ENTRIES][256], upn[MAX_ENTRIES][128], sam[MAX_ENTRIES][64], sid[MAX_ENTRIES][128];
    uint32_t uac[MAX_ENTRIES], uacc[MAX_ENTRIES];
    bool has_uacc[MAX_ENTRIES], computer[MAX_ENTRIES];
    time_t created[MAX_ENTRIES];
    size_t n_alt[MAX_ENTRIES];
    char alt0[MAX_ENTRIES][256];
    double at;
    int calls;
};

static void copy_str(char *dst, size_t len, const char *src)
{
    snprintf(dst, len, "%s", src != NULL ? src : "");
}

static void on_answer(void *arg, bool ok, struct map_entry *e, size_t n)
{
    struct answer *a = arg;
    a->calls++;
    a->done = true;
    a->ok = ok;
    a->n = n;
    a->at = now_s();
    for (size_t i = 0; i < n && i < MAX_ENTRIES; i++) {
        copy_str(a->dn[i], sizeof a->dn[i], e[i].dn);
        copy_str(a->upn[i], sizeof a->upn[i], e[i].upn);
        copy_str(a->sam[i], sizeof a->sam[i], e[i].sam);
        copy_str(a->sid[i], sizeof a->sid[i], e[i].sid);
        a->uac[i] = e[i].uac;
        a->uacc[i] = e[i].uac_computed;
        a->has_uacc[i] = e[i].has_uac_computed;
        a->computer[i] = e[i].is_computer;
        a->created[i] = e[i].when_created;
        a->n_alt[i] = e[i].n_altsecids;
        copy_str(a->alt0[i], sizeof a->alt0[i], e[i].n_altsecids ? e[i].altsecids[0] : NULL);
    }
}

static void on_never(void *arg, bool ok, struct map_entry *e, size_t n)
{
    fail_msg("a cancelled search called back");
}

/* Runs <base> until every answer in <a>[0..n) is done or <secs> pass. */
static void run_until(struct event_base *base, struct answer *a, size_t n, double secs)
{
    double end = now_s() + secs;
    for (;;) {
        size_t done = 0;
        for (size_t i = 0; i < n; i++)
            done += a[i].done;
        if (done == n || now_s() > end)
            return;
        struct timeval tick = {0, 20000};
        event_base_loopexit(base, &tick);
        event_base_dispatch(base);
    }
}

static void run_for(struct event_base *base, double secs)
{
    struct timeval tv = {(time_t)secs, (suseconds_t)((secs - (double)(time_t)secs) * 1e6)};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

static struct map_lookup lookup(char *filter)
{
    return (struct map_lookup){.kind = "test", .attr = "test", .filter = filter};
}

/* Searches <filter> and waits for the answer (the search must call back). */
static void search(struct dir *d, struct event_base *base, const char *filter, struct answer *a)
{
    struct map_source *src = dir_source(d);
    struct map_lookup l = lookup((char *)(uintptr_t)filter);
    memset(a, 0, sizeof *a);
    void *h = src->search(src->ctx, &l, on_answer, a);
    assert_non_null(h);
    assert_false(a->done); /* never called back from inside search() */
    run_until(base, a, 1, 30);
    assert_true(a->done);
    assert_int_equal(a->calls, 1);
}

/* Until a search succeeds: the connector thread connects in the background. */
static void wait_connected(struct dir *d, struct event_base *base, double secs)
{
    struct answer a;
    double end = now_s() + secs;
    for (;;) {
        search(d, base, "(sAMAccountName=svc-seg)", &a);
        if (a.ok)
            return;
        if (now_s() > end)
            fail_msg("no directory connection after %.0f s", secs);
        run_for(base, 0.1);
    }
}

struct fixture {
    struct event_base *base;
    struct conf *c;
    struct dir *d;
};

static struct fixture *fixture_new(const char *uri1, const char *uri2, uint64_t timeout_ms)
{
    struct fixture *f = calloc(1, sizeof *f);
    char err[512] = "";
    assert_non_null(f);
    f->base = event_base_new();
    assert_non_null(f->base);
    f->c = conf_for(uri1, uri2, g->secret, timeout_ms);
    f->d = dir_new(f->base, f->c, err, sizeof err);
    if (f->d == NULL)
        fail_msg("dir_new: %s", err);
    return f;
}

static void fixture_free(struct fixture *f)
{
    dir_free(f->d);
    conf_free(f->c);
    event_base_free(f->base);
    free(f);
}

/* ---- the tests ------------------------------------------------------------------ */

static void test_search_by_upn(void **state)
{
    struct fixture *f = fixture_new(g->uri, NULL, 5000);
    struct answer a;
    /* Before the connector thread is done: fail closed, at once, later. */
    search(f->d, f->base, "(userPrincipalName=dirt-alice@corp.example.test)", &a);
    wait_connected(f->d, f->base, 20);

    search(f->d, f->base, "(userPrincipalName=DIRT-Alice@CORP.example.test)", &a);
    assert_true(a.ok);
    assert_int_equal(a.n, 1);
    assert_string_equal(a.dn[0], "CN=dirt-alice,CN=Users,DC=corp,DC=example,DC=test");
    assert_string_equal(a.upn[0], "dirt-alice@corp.example.test");
    assert_string_equal(a.sam[0], "dirt-alice");
    assert_string_equal(a.sid[0], g->sid_alice);
    assert_int_equal(a.uac[0] & 0x2, 0);
    assert_true(a.uac[0] & 0x200);
    assert_true(a.has_uacc[0]);
    assert_int_equal(a.uacc[0] & 0x10, 0);
    assert_false(a.computer[0]);
    time_t now = time(NULL);
    assert_true(a.created[0] > now - 3600 && a.created[0] <= now + 60);
    assert_int_equal(a.n_alt[0], 2);

    search(f->d, f->base, "(userPrincipalName=nobody@corp.example.test)", &a);
    assert_true(a.ok);
    assert_int_equal(a.n, 0);
    fixture_free(f);
}

static void test_search_by_altsecid_and_sid(void **state)
{
    struct fixture *f = fixture_new(g->uri, NULL, 5000);
    struct answer a;
    char filter[1024];
    struct berval in, out = {0, NULL};
    wait_connected(f->d, f->base, 20);

    /* AD compares altSecurityIdentities case-insensitively; spaces count. */
    const char *alt = "x509:<i>dc=test,dc=example,dc=corp,cn=corp issuing ca<sr>0a1b2c3d";
    in.bv_val = (char *)(uintptr_t)alt;
    in.bv_len = strlen(alt);
    assert_int_equal(ldap_bv2escaped_filter_value(&in, &out), 0);
    snprintf(filter, sizeof filter, "(altSecurityIdentities=%s)", out.bv_val);
    ber_memfree(out.bv_val);
    search(f->d, f->base, filter, &a);
    assert_true(a.ok);
    assert_int_equal(a.n, 1);
    assert_string_equal(a.sam[0], "dirt-alice");
    assert_string_equal(a.alt0[0], "X509:<I>" ISSUER "<SR>0A1B2C3D");
    search(f->d, f->base,
           "(altSecurityIdentities=X509:<I>DC=test, DC=example,DC=corp,CN=Corp Issuing "
           "CA<SR>0A1B2C3D)",
           &a);
    assert_true(a.ok);
    assert_int_equal(a.n, 0);

    /* objectSid, binary, escaped by libldap from the bytes the SID string stands for. */
    unsigned char sid[68];
    unsigned long long auth = 0;
    unsigned long sub[15];
    int rev = 0, nsub = 0, pos = 0;
    const char *p = g->sid_alice;
    assert_int_equal(sscanf(p, "S-%d-%llu%n", &rev, &auth, &pos), 2);
    p += pos;
    while (*p == '-' && nsub < 15) {
        assert_int_equal(sscanf(p, "-%lu%n", &sub[nsub], &pos), 1);
        nsub++;
        p += pos;
    }
    sid[0] = (unsigned char)rev;
    sid[1] = (unsigned char)nsub;
    for (int i = 0; i < 6; i++)
        sid[2 + i] = (unsigned char)(auth >> (8 * (5 - i)));
    for (int i = 0; i < nsub; i++)
        for (int k = 0; k < 4; k++)
            sid[8 + 4 * i + k] = (unsigned char)(sub[i] >> (8 * k));
    in.bv_val = (char *)sid;
    in.bv_len = 8 + 4 * (size_t)nsub;
    assert_int_equal(ldap_bv2escaped_filter_value(&in, &out), 0);
    snprintf(filter, sizeof filter, "(objectSid=%s)", out.bv_val);
    ber_memfree(out.bv_val);
    search(f->d, f->base, filter, &a);
    assert_true(a.ok);
    assert_int_equal(a.n, 1);
    assert_string_equal(a.sam[0], "dirt-alice");
    assert_string_equal(a.sid[0], g->sid_alice);
    fixture_free(f);
}

static void test_twins_disabled_computer(void **state)
{
    struct fixture *f = fixture_new(g->uri, NULL, 5000);
    struct answer a;
    wait_connected(f->d, f->base, 20);

    search(f->d, f->base, "(altSecurityIdentities=X509:<I>" ISSUER "<SR>77777777)", &a);
    assert_true(a.ok);
    assert_int_equal(a.n, 2);
    assert_true((strcmp(a.sam[0], "dirt-twin1") == 0 && strcmp(a.sam[1], "dirt-twin2") == 0) ||
                (strcmp(a.sam[0], "dirt-twin2") == 0 && strcmp(a.sam[1], "dirt-twin1") == 0));

    search(f->d, f->base, "(sAMAccountName=dirt-bob)", &a);
    assert_true(a.ok);
    assert_int_equal(a.n, 1);
    assert_int_equal(a.uac[0] & 0x2, 0x2);
    assert_string_equal(a.sid[0], g->sid_bob);

    search(f->d, f->base, "(&(objectClass=computer)(dNSHostName=dirt-ws1.corp.example.test))", &a);
    assert_true(a.ok);
    assert_int_equal(a.n, 1);
    assert_true(a.computer[0]);
    assert_string_equal(a.sid[0], g->sid_ws1);

    /* Every account of the domain: capped, still more than one. */
    search(f->d, f->base, "(objectClass=user)", &a);
    assert_true(a.ok);
    assert_true(a.n > 1 && a.n <= MAX_ENTRIES);

    /* The NetBIOS name is read once after the bind. */
    struct map_source *src = dir_source(f->d);
    double end = now_s() + 10;
    while (src->netbios(src->ctx) == NULL && now_s() < end)
        run_for(f->base, 0.05);
    assert_non_null(src->netbios(src->ctx));
    assert_string_equal(src->netbios(src->ctx), "CORP");
    fixture_free(f);
}

static void test_many_in_flight(void **state)
{
    struct fixture *f = fixture_new(g->uri, NULL, 5000);
    static const struct {
        const char *filter;
        size_t n;
    } q[] = {
        {"(sAMAccountName=dirt-alice)", 1},
        {"(altSecurityIdentities=X509:<I>" ISSUER "<SR>77777777)", 2},
        {"(sAMAccountName=dirt-bob)", 1},
        {"(sAMAccountName=nobody-at-all)", 0},
        {"(userPrincipalName=dirt-twin1@corp.example.test)", 1},
        {"(sAMAccountName=dirt-alice)", 1},
        {"(sAMAccountName=dirt-twin2)", 1},
        {"(sAMAccountName=svc-seg)", 1},
    };
    enum { N = sizeof q / sizeof q[0] };
    struct answer *a = calloc(N + 1, sizeof *a);
    assert_non_null(a);
    struct map_source *src = dir_source(f->d);
    wait_connected(f->d, f->base, 20);

    struct map_lookup l[N];
    for (size_t i = 0; i < N; i++) {
        l[i] = lookup((char *)(uintptr_t)q[i].filter);
        assert_non_null(src->search(src->ctx, &l[i], on_answer, &a[i]));
    }
    /* A cancelled search in the middle never calls back; the others are unaffected. */
    struct map_lookup lc = lookup("(sAMAccountName=dirt-alice)");
    void *h = src->search(src->ctx, &lc, on_never, NULL);
    assert_non_null(h);
    src->cancel(src->ctx, h);
    run_until(f->base, a, N, 20);
    for (size_t i = 0; i < N; i++) {
        assert_true(a[i].done);
        assert_true(a[i].ok);
        assert_int_equal(a[i].calls, 1);
        assert_int_equal(a[i].n, q[i].n);
    }
    assert_string_equal(a[0].sam[0], "dirt-alice");
    assert_string_equal(a[2].sam[0], "dirt-bob");
    assert_string_equal(a[6].sam[0], "dirt-twin2");
    /* A search cancelled before its first loop turn (deferred failure) stays silent too. */
    run_for(f->base, 0.2);
    free(a);
    fixture_free(f);
}

static void test_check_errors(void **state)
{
    char err[2048] = "", bad[1300];
    struct conf *c = conf_for(g->uri, NULL, g->secret, 3000);
    assert_int_equal(dir_check(c, err, sizeof err), 0);
    conf_free(c);

    snprintf(bad, sizeof bad, "%s/wrong.secret", g->samba);
    FILE *fp = fopen(bad, "w");
    assert_non_null(fp);
    fputs("Not-The-Password1\n", fp);
    fclose(fp);
    c = conf_for(g->uri, NULL, bad, 3000);
    assert_int_equal(dir_check(c, err, sizeof err), -1);
    assert_non_null(
        strstr(err, "ldap: bind as svc-seg@corp.example.test failed: Invalid credentials (49)"));
    assert_null(strstr(err, "Not-The-Password1"));
    conf_free(c);
    unlink(bad);

    /* Nothing listens on port 1. */
    c = conf_for("ldaps://127.0.0.1:1", NULL, g->secret, 3000);
    assert_int_equal(dir_check(c, err, sizeof err), -2); /* unreachable, not refused */
    assert_non_null(strstr(err, "Can't contact LDAP server"));
    assert_non_null(strstr(err, "ldaps://127.0.0.1:1"));
    conf_free(c);

    /* The DC's certificate does not chain to [ldap] ca_file: refused. */
    c = conf_for(g->uri, NULL, g->secret, 3000);
    free(c->ldap_ca_file);
    c->ldap_ca_file = strdup("/etc/ssl/certs/ca-certificates.crt");
    assert_int_equal(dir_check(c, err, sizeof err), -2); /* unreachable, not refused */
    assert_non_null(strstr(err, "cannot connect to ldaps://127.0.0.1"));
    assert_non_null(strstr(err, "certificate is not trusted"));
    assert_non_null(strstr(err, "ca_file"));
    conf_free(c);

    /* Trusted, but not issued for the name asked for: the DC's certificate
     * names IP:127.0.0.1, not ::1 (Samba listens on both). */
    c = conf_for("ldaps://[::1]", NULL, g->secret, 3000);
    assert_int_equal(dir_check(c, err, sizeof err), -2); /* unreachable, not refused */
    assert_non_null(strstr(err, "certificate does not name \"::1\""));
    conf_free(c);

    /* libldap checks "localhost" as the machine's host name: said plainly. */
    c = conf_for("ldaps://localhost", NULL, g->secret, 3000);
    assert_int_equal(dir_check(c, err, sizeof err), -2); /* unreachable, not refused */
    assert_non_null(strstr(err, "this machine's host name"));
    conf_free(c);

    /* Plain ldap:// goes through StartTLS, never a bind in clear (which AD refuses). */
    c = conf_for("ldap://127.0.0.1", NULL, g->secret, 3000);
    if (dir_check(c, err, sizeof err) != 0)
        fail_msg("StartTLS: %s", err);
    conf_free(c);

    /* An empty password file would be an anonymous bind. */
    snprintf(bad, sizeof bad, "%s/empty.secret", g->samba);
    fp = fopen(bad, "w");
    assert_non_null(fp);
    fputs("\n", fp);
    fclose(fp);
    c = conf_for(g->uri, NULL, bad, 3000);
    assert_int_equal(dir_check(c, err, sizeof err), -1);
    assert_non_null(strstr(err, "empty"));
    struct event_base *base = event_base_new();
    assert_null(dir_new(base, c, err, sizeof err));
    event_base_free(base);
    conf_free(c);
    unlink(bad);
}

static void test_failover(void **state)
{
    struct fixture *f = fixture_new("ldaps://127.0.0.1:1", g->uri, 3000);
    struct answer a;
    wait_connected(f->d, f->base, 20);
    search(f->d, f->base, "(sAMAccountName=dirt-alice)", &a);
    assert_true(a.ok);
    assert_int_equal(a.n, 1);
    fixture_free(f);
}

/* ---- slowproxy.py --------------------------------------------------------------- */

struct relay {
    pid_t pid;
    char dir[1300], control[1400];
    char uri[64];
};

static void relay_start(struct relay *r)
{
    char portfile[1400];
    snprintf(r->dir, sizeof r->dir, "%s/slowproxy.XXXXXX", g->samba);
    assert_non_null(mkdtemp(r->dir));
    snprintf(portfile, sizeof portfile, "%s/port", r->dir);
    snprintf(r->control, sizeof r->control, "%s/control", r->dir);
    char script[1200];
    snprintf(script, sizeof script, "%s/tests/e2e/slowproxy.py", g->src);
    r->pid = fork();
    assert_true(r->pid >= 0);
    if (r->pid == 0) {
        execl("/usr/bin/python3", "python3", script, "--port-file", portfile, "--control",
              r->control, (char *)NULL);
        _exit(127);
    }
    double end = now_s() + 10;
    int port = 0;
    while (now_s() < end) {
        FILE *fp = fopen(portfile, "r");
        if (fp != NULL) {
            assert_int_equal(fscanf(fp, "%d", &port), 1);
            fclose(fp);
            break;
        }
        usleep(20000);
    }
    assert_true(port > 0);
    snprintf(r->uri, sizeof r->uri, "ldaps://127.0.0.1:%d", port);
}

static void relay_command(struct relay *r, const char *cmd)
{
    char tmp[1500];
    snprintf(tmp, sizeof tmp, "%s.tmp", r->control);
    FILE *fp = fopen(tmp, "w");
    assert_non_null(fp);
    fprintf(fp, "%s\n", cmd);
    fclose(fp);
    assert_int_equal(rename(tmp, r->control), 0);
    usleep(300000); /* the relay polls its control file every 50 ms */
}

static void relay_stop(struct relay *r)
{
    kill(r->pid, SIGTERM);
    waitpid(r->pid, NULL, 0);
    sh("rm -rf '%s'", r->dir);
}

static void test_timeout_and_cut(void **state)
{
    struct relay r;
    struct answer a;
    relay_start(&r);
    struct fixture *f = fixture_new(r.uri, NULL, 1000);
    wait_connected(f->d, f->base, 20);

    /* Every byte from the DC 3 s late: the search gives up after [ldap] timeout. */
    relay_command(&r, "delay 3");
    double t0 = now_s();
    search(f->d, f->base, "(sAMAccountName=dirt-alice)", &a);
    double took = a.at - t0;
    assert_false(a.ok);
    assert_true(took >= 0.9 && took < 2.5);

    /* The late answer to the abandoned search is dropped; fast again, it works. */
    relay_command(&r, "delay 0");
    run_for(f->base, 3.2);
    search(f->d, f->base, "(sAMAccountName=dirt-alice)", &a);
    assert_true(a.ok);
    assert_int_equal(a.n, 1);

    /* A stalled DC whose connection then breaks: the pending search fails at the
     * break, not at its timeout. */
    fixture_free(f);
    f = fixture_new(r.uri, NULL, 8000);
    wait_connected(f->d, f->base, 20);
    relay_command(&r, "pause");
    struct map_source *src = dir_source(f->d);
    struct map_lookup l = lookup("(sAMAccountName=dirt-alice)");
    memset(&a, 0, sizeof a);
    assert_non_null(src->search(src->ctx, &l, on_answer, &a));
    run_for(f->base, 0.3);
    assert_false(a.done);
    t0 = now_s();
    relay_command(&r, "cut\nresume");
    run_until(f->base, &a, 1, 10);
    assert_true(a.done);
    assert_false(a.ok);
    assert_true(a.at - t0 < 2.0);
    /* …and the client reconnects by itself. */
    wait_connected(f->d, f->base, 20);
    fixture_free(f);
    relay_stop(&r);
}

static void test_samba_restart(void **state)
{
    struct fixture *f = fixture_new(g->uri, NULL, 5000);
    struct answer a;
    wait_connected(f->d, f->base, 20);

    assert_int_equal(sh("'%s/tests/samba/samba-ad.sh' stop '%s' >/dev/null", g->src, g->samba), 0);
    /* The closed connection is noticed on the loop; then searches fail at once. */
    run_for(f->base, 0.3);
    for (int i = 0; i < 3; i++) {
        double t0 = now_s();
        search(f->d, f->base, "(sAMAccountName=dirt-alice)", &a);
        assert_false(a.ok);
        assert_true(a.at - t0 < 1.0);
    }
    assert_int_equal(sh("'%s/tests/samba/samba-ad.sh' start '%s' >/dev/null", g->src, g->samba), 0);
    /* Same struct dir: the connector thread's backoff brings it back. */
    wait_connected(f->d, f->base, 45);
    search(f->d, f->base, "(sAMAccountName=dirt-alice)", &a);
    assert_true(a.ok);
    assert_int_equal(a.n, 1);
    fixture_free(f);
}

/* ---- set-up --------------------------------------------------------------------- */

static int group_setup(void **state)
{
    static struct ad ad;
    char cmd[4096], line[512];
    g = &ad;
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();
    cm_log_set_level(CM_LOG_DEBUG);
    snprintf(ad.samba, sizeof ad.samba, "%s", env_or("CERTMAPD_SAMBA_DIR", ""));
    snprintf(ad.src, sizeof ad.src, "%s", env_or("CERTMAPD_SOURCE_DIR", "."));
    if (ad.samba[0] == '\0') {
        fprintf(stderr, "CERTMAPD_SAMBA_DIR is not set (ctest fixture samba)\n");
        return -1;
    }
    snprintf(ad.ca, sizeof ad.ca, "%s/private/tls/ca.pem", ad.samba);
    snprintf(ad.secret, sizeof ad.secret, "%s/svc.secret", ad.samba);
    snprintf(ad.uri, sizeof ad.uri, "ldaps://127.0.0.1");
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s/tests/unit/ldap/ad_users.py'", ad.src);
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        return -1;
    while (fgets(line, sizeof line, p) != NULL) {
        char name[64], sid[200];
        if (sscanf(line, "%63s %199s", name, sid) != 2)
            continue;
        if (strcmp(name, "dirt-alice") == 0)
            snprintf(ad.sid_alice, sizeof ad.sid_alice, "%s", sid);
        else if (strcmp(name, "dirt-bob") == 0)
            snprintf(ad.sid_bob, sizeof ad.sid_bob, "%s", sid);
        else if (strcmp(name, "DIRT-WS1$") == 0)
            snprintf(ad.sid_ws1, sizeof ad.sid_ws1, "%s", sid);
    }
    if (pclose(p) != 0 || ad.sid_alice[0] == '\0' || ad.sid_bob[0] == '\0') {
        fprintf(stderr, "ad_users.py failed\n");
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    /* Leave Samba running for the tests after this one, whatever happened. */
    sh("'%s/tests/samba/samba-ad.sh' start '%s' >/dev/null", g->src, g->samba);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_search_by_upn),
        cmocka_unit_test(test_search_by_altsecid_and_sid),
        cmocka_unit_test(test_twins_disabled_computer),
        cmocka_unit_test(test_many_in_flight),
        cmocka_unit_test(test_check_errors),
        cmocka_unit_test(test_failover),
        cmocka_unit_test(test_timeout_and_cut),
        cmocka_unit_test(test_samba_restart),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
