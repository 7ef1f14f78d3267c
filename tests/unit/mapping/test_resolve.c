/* The resolver end to end: PKI certificates, tests/data/ad-users.ldif through
 * the LDIF source on a real event loop, the shared cache; and a source that
 * fails, for fail-closed and no-caching of outages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <event2/event.h>

#include "helpers.h"

/* post hook for the tests: run fn on the loop, later, as the proxy would. */
struct posted {
    void (*fn)(void *);
    void *arg;
};

static void run_posted(evutil_socket_t fd, short what, void *arg)
{
    struct posted p = *(struct posted *)arg;
    (void)fd;
    (void)what;
    free(arg);
    p.fn(p.arg);
}

static void post(void *post_arg, void (*fn)(void *), void *fn_arg)
{
    struct posted *p = malloc(sizeof(*p));
    assert_non_null(p);
    p->fn = fn;
    p->arg = fn_arg;
    assert_int_equal(event_base_once(post_arg, -1, EV_TIMEOUT, run_posted, p, NULL), 0);
}

struct env {
    struct event_base *base;
    struct map_source *src;
    struct map_cache *mc;
    struct conf c;
    struct mapper *m;
};

static void env_open(struct env *v, enum map_enforcement e, enum map_method m0, enum map_method m1,
                     enum map_method m2)
{
    char err[512];
    memset(v, 0, sizeof(*v));
    v->base = event_base_new();
    v->src = map_ldif_open(data_path("ad-users.ldif"), "CORP", v->base, err, sizeof(err));
    assert_non_null(v->src);
    test_conf(&v->c, e, m0, m1, m2, METHOD_MAX);
    v->mc = map_cache_new(100, 60000, 60000);
    v->m = mapper_new(&v->c, v->src, v->mc);
    mapper_set_post(v->m, post, v->base);
}

static void env_close(struct env *v)
{
    mapper_free(v->m);
    map_cache_free(v->mc);
    map_source_close(v->src);
    event_base_free(v->base);
}

/* Maps the PKI leaf <leaf>; the reason (from the callback, never at once
 * unless <at_once>). */
static enum reason map_leaf(struct env *v, const char *leaf, bool at_once, struct done *d)
{
    struct cert_facts *f = pki_facts(leaf);
    struct map_result now;
    map_result_purge(&d->r);
    memset(d, 0, sizeof(*d));
    struct map_job *j = map_job_start(v->m, f, on_done, d, on_trace, &now);
    tls_facts_free(f); /* the job keeps what it needs */
    if (at_once) {
        assert_null(j);
        d->r = now;
        return now.reason;
    }
    assert_non_null(j);
    assert_int_equal(d->calls, 0);
    event_base_dispatch(v->base);
    assert_int_equal(d->calls, 1);
    return d->r.reason;
}

static void test_end_to_end(void **state)
{
    struct env v;
    struct done d = {0};

    (void)state;
    env_open(&v, ENFORCE_FULL, METHOD_SID, METHOD_ALTSECID, METHOD_UPN);
    assert_int_equal(map_leaf(&v, "good", false, &d), R_NONE);
    assert_string_equal(d.r.dn, "CN=alice,CN=Users,DC=corp,DC=example,DC=test");
    assert_string_equal(d.r.sam, "CORP\\alice");
    assert_string_equal(d.r.upn, "alice@corp.example.test");
    assert_string_equal(d.r.method, "altsecid:issuer-serial");
    assert_int_equal(d.traces, 1); /* strong match: the UPN lookup is not made */
    /* now from the cache, at once */
    assert_int_equal(map_leaf(&v, "good", true, &d), R_NONE);
    assert_string_equal(d.r.sam, "CORP\\alice");

    assert_int_equal(map_leaf(&v, "sid", false, &d), R_NONE);
    assert_string_equal(d.r.method, "sid");
    assert_string_equal(d.r.sam, "CORP\\sidowner");
    assert_int_equal(map_leaf(&v, "expired", false, &d), R_AMBIGUOUS_MAPPING);
    assert_int_equal(map_leaf(&v, "revoked", false, &d), R_WEAK_MAPPING);
    assert_int_equal(d.traces, 2); /* altsecid (nothing), upn (weak, refused) */
    assert_int_equal(map_leaf(&v, "meta", false, &d), R_NO_MAPPING);
    /* negative results are cached too */
    assert_int_equal(map_leaf(&v, "meta", true, &d), R_NO_MAPPING);
    env_close(&v);

    env_open(&v, ENFORCE_COMPATIBILITY, METHOD_UPN, METHOD_MAX, METHOD_MAX);
    assert_int_equal(map_leaf(&v, "sid", false, &d), R_SID_MISMATCH);
    assert_int_equal(map_leaf(&v, "revoked", false, &d), R_ACCOUNT_DISABLED);
    assert_int_equal(map_leaf(&v, "noeku", false, &d), R_ACCOUNT_DISABLED);
    assert_non_null(strstr(d.r.detail, "locked"));
    assert_int_equal(map_leaf(&v, "noekuext", false, &d), R_ACCOUNT_DISABLED);
    assert_int_equal(map_leaf(&v, "notyet", false, &d), R_ACCOUNT_DISABLED);
    assert_int_equal(map_leaf(&v, "otherissuer", false, &d), R_WEAK_MAPPING); /* created later */
    env_close(&v);

    env_open(&v, ENFORCE_DISABLED, METHOD_DNS, METHOD_UPN, METHOD_MAX);
    assert_int_equal(map_leaf(&v, "server", false, &d), R_NONE);
    assert_string_equal(d.r.sam, "CORP\\WS01$");
    assert_string_equal(d.r.method, "dns");
    assert_int_equal(map_leaf(&v, "otherissuer", false, &d), R_NONE);
    /* nothing in the certificate to look up: answered at once */
    env_close(&v);
    env_open(&v, ENFORCE_FULL, METHOD_SID, METHOD_MAX, METHOD_MAX);
    assert_int_equal(map_leaf(&v, "good", true, &d), R_NO_MAPPING);
    map_result_purge(&d.r);
    env_close(&v);
}

/* Two requests for one certificate: one directory walk, both answered; a
 * cancelled owner still fills the cache; a cancelled waiter is never called. */
static void test_single_flight_and_cancel(void **state)
{
    struct env v;
    struct done a = {0}, b = {0};
    struct map_result now;
    struct cert_facts *f = pki_facts("revoked");

    (void)state;
    env_open(&v, ENFORCE_FULL, METHOD_ALTSECID, METHOD_UPN, METHOD_MAX);
    struct map_job *ja = map_job_start(v.m, f, on_done, &a, on_trace, &now);
    struct map_job *jb = map_job_start(v.m, f, on_done, &b, on_trace, &now);
    assert_non_null(ja);
    assert_non_null(jb);
    event_base_dispatch(v.base);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 1);
    assert_int_equal(a.traces, 2);
    assert_int_equal(b.traces, 0); /* the waiter asked nobody */
    assert_int_equal(b.r.reason, R_WEAK_MAPPING);
    map_result_purge(&a.r);
    map_result_purge(&b.r);
    env_close(&v);

    env_open(&v, ENFORCE_FULL, METHOD_ALTSECID, METHOD_UPN, METHOD_MAX);
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    ja = map_job_start(v.m, f, on_done, &a, NULL, &now);
    jb = map_job_start(v.m, f, on_done, &b, NULL, &now);
    map_job_cancel(jb); /* waiter gives up */
    map_job_cancel(ja); /* owner's client goes away: lookup still finishes */
    event_base_dispatch(v.base);
    assert_int_equal(a.calls + b.calls, 0);
    assert_null(map_job_start(v.m, f, on_done, &a, NULL, &now)); /* cached */
    assert_int_equal(now.reason, R_WEAK_MAPPING);
    map_result_purge(&now);
    env_close(&v);
    tls_facts_free(f);
}

/* A worker that stops while a lookup is in flight (its client gone): the
 * mapper cancels it at the source and frees it, with no callback. Under
 * LeakSanitizer a job left behind is a failure. */
static void test_free_with_lookup_in_flight(void **state)
{
    struct env v;
    struct done a = {0};
    struct map_result now;
    struct cert_facts *f = pki_facts("good");

    (void)state;
    env_open(&v, ENFORCE_FULL, METHOD_ALTSECID, METHOD_UPN, METHOD_MAX);
    struct map_job *j = map_job_start(v.m, f, on_done, &a, on_trace, &now);
    assert_non_null(j);
    map_job_cancel(j);
    env_close(&v); /* no dispatch: the search never answered */
    assert_int_equal(a.calls, 0);
    assert_int_equal(a.traces, 0);
    tls_facts_free(f);
}

/* ---- a directory that fails ---- */

struct failing {
    struct event_base *base;
    int searches;
};

struct fail_call {
    map_search_cb cb;
    void *arg;
};

static void fail_fire(evutil_socket_t fd, short what, void *arg)
{
    struct fail_call *c = arg;
    (void)fd;
    (void)what;
    c->cb(c->arg, false, NULL, 0);
    free(c);
}

static void *fail_search(void *ctx, const struct map_lookup *l, map_search_cb cb, void *arg)
{
    struct failing *fs = ctx;
    struct fail_call *c = malloc(sizeof(*c));
    (void)l;
    assert_non_null(c);
    c->cb = cb;
    c->arg = arg;
    fs->searches++;
    assert_int_equal(event_base_once(fs->base, -1, EV_TIMEOUT, fail_fire, c, NULL), 0);
    return c;
}

static void test_directory_down(void **state)
{
    struct failing fs = {.base = event_base_new()};
    struct map_source src = {.ctx = &fs, .search = fail_search};
    struct conf c;
    struct map_cache *mc = map_cache_new(10, 60000, 60000);
    struct mapper *m;
    struct done d = {0};
    struct map_result now;
    struct cert_facts *f = pki_facts("good");

    (void)state;
    test_conf(&c, ENFORCE_FULL, METHOD_ALTSECID, METHOD_UPN, METHOD_MAX, METHOD_MAX);
    m = mapper_new(&c, &src, mc);
    for (int round = 1; round <= 2; round++) {
        assert_non_null(map_job_start(m, f, on_done, &d, NULL, &now));
        event_base_dispatch(fs.base);
        assert_int_equal(d.calls, round);
        assert_int_equal(d.r.reason, R_DIRECTORY_UNAVAILABLE);
        assert_null(d.r.dn);
        /* not cached: every request asks again */
        assert_int_equal(fs.searches, round);
    }
    map_result_purge(&d.r);
    mapper_free(m);
    map_cache_free(mc);
    tls_facts_free(f);
    event_base_free(fs.base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_end_to_end),
        cmocka_unit_test(test_single_flight_and_cancel),
        cmocka_unit_test(test_free_with_lookup_in_flight),
        cmocka_unit_test(test_directory_down),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
