/* The shared cache's value format (mapping/shared.c) as hostile input: round
 * trips, every byte flipped and every cut refused, values bound to their key
 * and signing key, expiry, signed values whose content is still refused; the
 * fingerprint; and the resolver's use of a shared tier (a fake one): a hit
 * answers without the directory, a miss or a tier that cannot answer goes to
 * the directory and the answer is put, an outage is never put. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <event2/event.h>

#include "helpers.h"

#define RKEY "certmapd:v1:00ff:ABCDEF"
#define NOW 1700000000000ull

static const unsigned char KEY[] = "0123456789abcdef0123456789abcdef";
#define KEYLEN (sizeof(KEY) - 1)

static void mapped(struct map_result *r)
{
    memset(r, 0, sizeof(*r));
    r->reason = R_NONE;
    r->upn = strdup("alice@corp.example.test");
    r->dn = strdup("CN=alice smith,CN=Users,DC=corp,DC=example,DC=test");
    r->sid = strdup("S-1-5-21-436880987-830612363-2677326092-1102");
    r->sam = strdup("CORP\\alice");
    r->method = strdup("altsecid:issuer-serial");
    r->detail = strdup("mapped by altsecid: 1 account");
}

static void refused(struct map_result *r, enum reason why)
{
    memset(r, 0, sizeof(*r));
    r->reason = why;
    r->detail = strdup("no account");
}

static int decode(const char *v, size_t len, const char *rkey, struct map_result *out,
                  uint64_t *ttl, const char **why)
{
    return map_shared_decode(v, len, rkey, KEY, KEYLEN, NOW, out, ttl, why);
}

static void test_round_trip(void **state)
{
    struct map_result r, out;
    size_t len;
    uint64_t ttl = 0;
    const char *why = NULL;

    (void)state;
    mapped(&r);
    char *v = map_shared_encode(&r, NOW + 5000, RKEY, KEY, KEYLEN, &len);
    assert_non_null(v);
    assert_int_equal(strlen(v), len);
    assert_memory_equal(v, "cm1 ", 4);
    assert_int_equal(decode(v, len, RKEY, &out, &ttl, &why), 0);
    assert_int_equal(ttl, 5000);
    assert_int_equal(out.reason, R_NONE);
    assert_string_equal(out.upn, r.upn);
    assert_string_equal(out.dn, r.dn); /* spaces inside a field */
    assert_string_equal(out.sid, r.sid);
    assert_string_equal(out.sam, r.sam);
    assert_string_equal(out.method, r.method);
    assert_string_equal(out.detail, r.detail);
    map_result_purge(&out);
    free(v);
    /* absent fields stay absent */
    free(r.upn);
    r.upn = NULL;
    v = map_shared_encode(&r, NOW + 1, RKEY, KEY, KEYLEN, &len);
    assert_int_equal(decode(v, len, RKEY, &out, &ttl, &why), 0);
    assert_null(out.upn);
    assert_int_equal(ttl, 1);
    map_result_purge(&out);
    free(v);
    map_result_purge(&r);

    enum reason shared[] = {R_NO_MAPPING, R_AMBIGUOUS_MAPPING, R_WEAK_MAPPING, R_SID_MISMATCH,
                            R_ACCOUNT_DISABLED};
    for (size_t i = 0; i < sizeof shared / sizeof shared[0]; i++) {
        refused(&r, shared[i]);
        v = map_shared_encode(&r, NOW + 30000, RKEY, KEY, KEYLEN, &len);
        assert_non_null(v);
        assert_int_equal(decode(v, len, RKEY, &out, &ttl, &why), 0);
        assert_int_equal(out.reason, shared[i]);
        assert_null(out.dn);
        map_result_purge(&out);
        free(v);
        map_result_purge(&r);
    }
    /* an outage, or a refusal that is not mapping's, is never shared */
    enum reason unshared[] = {R_DIRECTORY_UNAVAILABLE, R_CERT_REVOKED, R_BACKEND_TIMEOUT};
    for (size_t i = 0; i < sizeof unshared / sizeof unshared[0]; i++) {
        refused(&r, unshared[i]);
        assert_null(map_shared_encode(&r, NOW + 30000, RKEY, KEY, KEYLEN, &len));
        map_result_purge(&r);
    }
    /* no signing key, no value */
    mapped(&r);
    assert_null(map_shared_encode(&r, NOW + 1, RKEY, NULL, 0, &len));
    map_result_purge(&r);
}

/* Every single-bit change and every cut of a value is refused, never read. */
static void test_tampering(void **state)
{
    struct map_result r, out;
    size_t len;
    uint64_t ttl;
    const char *why;

    (void)state;
    mapped(&r);
    char *v = map_shared_encode(&r, NOW + 5000, RKEY, KEY, KEYLEN, &len);
    map_result_purge(&r);
    char *t = malloc(len + 1);
    for (size_t i = 0; i < len; i++) {
        for (int bit = 0; bit < 8; bit++) {
            memcpy(t, v, len + 1);
            t[i] = (char)(t[i] ^ (1 << bit));
            why = NULL;
            assert_int_not_equal(decode(t, len, RKEY, &out, &ttl, &why), 0);
            assert_non_null(why);
            assert_null(out.dn);
        }
    }
    for (size_t cut = 0; cut < len; cut++)
        assert_int_not_equal(decode(v, cut, RKEY, &out, &ttl, &why), 0);
    /* one byte more */
    memcpy(t, v, len);
    char *longer = malloc(len + 2);
    memcpy(longer, v, len);
    longer[len] = '0';
    assert_int_not_equal(decode(longer, len + 1, RKEY, &out, &ttl, &why), 0);
    /* another certificate's or configuration's key: the signature covers it */
    assert_int_not_equal(decode(v, len, "certmapd:v1:00ff:ABCDEE", &out, &ttl, &why), 0);
    assert_string_equal(why, "signature does not verify (another key, or forged)");
    /* another signing key */
    static const unsigned char other[] = "1123456789abcdef0123456789abcdef";
    assert_int_not_equal(
        map_shared_decode(v, len, RKEY, other, sizeof(other) - 1, NOW, &out, &ttl, &why), 0);
    /* expired, at the very millisecond and after */
    assert_int_not_equal(map_shared_decode(v, len, RKEY, KEY, KEYLEN, NOW + 5000, &out, &ttl, &why),
                         0);
    assert_string_equal(why, "expired");
    assert_int_equal(map_shared_decode(v, len, RKEY, KEY, KEYLEN, NOW + 4999, &out, &ttl, &why), 0);
    assert_int_equal(ttl, 1);
    map_result_purge(&out);
    free(longer);
    free(t);
    free(v);
}

/* <r>, encoded with the right key to expire <ahead_ms> after NOW, is refused
 * when read back; with <want>, for that reason. */
static void assert_signed_refused(const struct map_result *r, uint64_t ahead_ms, const char *want)
{
    struct map_result out;
    size_t len;
    uint64_t ttl;
    const char *why = NULL;
    char *v = map_shared_encode(r, NOW + ahead_ms, RKEY, KEY, KEYLEN, &len);
    assert_int_not_equal(decode(v, len, RKEY, &out, &ttl, &why), 0);
    if (want != NULL)
        assert_string_equal(why, want);
    free(v);
}

/* Values signed with the right key whose content is still not believed: what
 * the directory would not be believed for either. */
static void test_signed_but_refused(void **state)
{
    struct map_result r;

    (void)state;
    mapped(&r);
    free(r.upn);
    r.upn = strdup("alice@corp.example.test\r\nX-Remote-User: admin"); /* header injection */
    assert_signed_refused(&r, 5000, "a field is not directory text");
    map_result_purge(&r);

    mapped(&r);
    free(r.sid);
    r.sid = strdup("S-1-5-21-01");
    assert_signed_refused(&r, 5000, "bad SID");
    map_result_purge(&r);

    mapped(&r);
    free(r.dn);
    r.dn = NULL;
    assert_signed_refused(&r, 5000, "a mapping without its account");
    map_result_purge(&r);

    refused(&r, R_NO_MAPPING);
    r.dn = strdup("CN=admin");
    assert_signed_refused(&r, 5000, "a refusal with an account");

    /* an expiry a day and more ahead is not one an instance wrote */
    assert_signed_refused(&r, 26ull * 3600 * 1000, NULL);
    map_result_purge(&r);
}

static void test_garbage(void **state)
{
    static const char *const junk[] = {
        "",
        "cm1",
        "cm1 ",
        "cm1 1",
        "cm1 1 ok",
        "cm2 1 ok - - - - - - ",
        "CM1 1 ok",
        "cm1 01 ok - - - - - - 0000000000000000000000000000000000000000000000000000000000000000",
        "cm1 1 ok 99999:x - - - - - 0",
        "cm1 1 ok 1:x - - - - - 000000000000000000000000000000000000000000000000000000000000000",
        "cm1 1 directory_unavailable - - - - - - "
        "0000000000000000000000000000000000000000000000000000000000000000",
        "cm1 1 ok - - - - - - ZZ00000000000000000000000000000000000000000000000000000000000000",
        "cm1 18446744073709551615 ok - - - - - - x",
        "cm1 1 ok 4294967297:x - - - - - x",
    };
    struct map_result out;
    uint64_t ttl;
    const char *why;

    (void)state;
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
        why = NULL;
        assert_int_not_equal(decode(junk[i], strlen(junk[i]), RKEY, &out, &ttl, &why), 0);
        assert_non_null(why);
    }
    /* a NUL inside */
    assert_int_not_equal(decode("cm1 \0 ok", 8, RKEY, &out, &ttl, &why), 0);
    assert_int_not_equal(decode(NULL, 0, RKEY, &out, &ttl, &why), 0);
}

static void test_fingerprint(void **state)
{
    struct conf a, b;
    char fa[65], fb[65], err[256];
    (void)state;
    test_conf(&a, ENFORCE_FULL, METHOD_SID, METHOD_MAX, METHOD_MAX, METHOD_MAX);
    test_conf(&b, ENFORCE_FULL, METHOD_SID, METHOD_MAX, METHOD_MAX, METHOD_MAX);
    assert_int_equal(map_shared_fingerprint(&a, fa, err, sizeof err), 0);
    assert_int_equal(strlen(fa), 64);
    assert_int_equal(map_shared_fingerprint(&b, fb, err, sizeof err), 0);
    assert_string_equal(fa, fb);
    /* what a section sets is part of it */
    for (size_t i = 0; i < CONF_SECTION_SLOTS; i++)
        b.section_text[i] = (char *)"enforcement=compatibility\n";
    assert_int_equal(map_shared_fingerprint(&b, fb, err, sizeof err), 0);
    assert_string_not_equal(fa, fb);
    /* ... but not where the answers are shared */
    char fc[65];
    for (size_t i = 0; i < CONF_SECTION_SLOTS; i++) {
        static char line[] = "enforcement=compatibility\n";
        b.section_text[i] = line;
        if (conf_section_text(&b, "mapping") == line)
            b.section_text[i] = (char *)"enforcement=compatibility\nshared_cache_timeout=1s\n";
    }
    assert_int_equal(map_shared_fingerprint(&b, fc, err, sizeof err), 0);
    assert_string_equal(fb, fc);
    memset(b.section_text, 0, sizeof b.section_text);
    /* the LDIF file's content is part of it */
    b.map_source = MAP_SOURCE_LDIF;
    static char ldif[4096];
    snprintf(ldif, sizeof ldif, "%s", data_path("ad-users.ldif"));
    b.ldif_file = ldif;
    assert_int_equal(map_shared_fingerprint(&b, fb, err, sizeof err), 0);
    assert_string_not_equal(fa, fb);
    snprintf(ldif, sizeof ldif, "/nonexistent/x.ldif");
    assert_int_equal(map_shared_fingerprint(&b, fb, err, sizeof err), -1);
}

/* ---- the resolver with a fake shared tier ---- */

struct fake {
    struct event_base *base;
    int gets, puts;
    bool connected;
    bool have; /* a hit for the next get */
    struct map_result stored;
    uint64_t put_ttl;
    struct event *ev;
    map_shared_cb cb;
    void *arg;
};

static void fake_answer(evutil_socket_t fd, short what, void *p)
{
    struct fake *f = p;
    (void)fd;
    (void)what;
    f->cb(f->arg, f->have ? &f->stored : NULL, 1234);
}

static void *fake_get(void *ctx, const char *sha256, map_shared_cb cb, void *arg)
{
    struct fake *f = ctx;
    (void)sha256;
    f->gets++;
    if (!f->connected)
        return NULL;
    f->cb = cb;
    f->arg = arg;
    event_active(f->ev, EV_TIMEOUT, 0); /* later, from the loop: never inside get */
    return f;
}

static void fake_cancel(void *ctx, void *handle)
{
    struct fake *f = ctx;
    (void)handle;
    event_del(f->ev);
}

static void fake_put(void *ctx, const char *sha256, const struct map_result *r, uint64_t ttl)
{
    struct fake *f = ctx;
    (void)sha256;
    f->puts++;
    f->put_ttl = ttl;
    map_result_purge(&f->stored);
    assert_int_equal(map_result_copy(&f->stored, r), 0);
}

/* <f>'s loop and event, and the LDIF directory on that loop with conf <c>
 * (SID, altSecurityIdentities, UPN, full enforcement). */
static struct map_source *fake_open(struct fake *f, struct conf *c)
{
    char err[512];
    f->base = event_base_new();
    f->ev = event_new(f->base, -1, 0, fake_answer, f);
    struct map_source *src =
        map_ldif_open(data_path("ad-users.ldif"), "CORP", f->base, err, sizeof err);
    assert_non_null(src);
    test_conf(c, ENFORCE_FULL, METHOD_SID, METHOD_ALTSECID, METHOD_UPN, METHOD_MAX);
    return src;
}

/* Frees what fake_open() made and what <f> stored. */
static void fake_close(struct fake *f, struct map_source *src)
{
    map_result_purge(&f->stored);
    map_source_close(src);
    event_free(f->ev);
    event_base_free(f->base);
}

/* Maps PKI leaf <leaf> through a fresh mapper (an empty local cache, as on
 * another instance) and tier <f>. */
static enum reason map_once(struct conf *c, struct map_source *src, struct fake *f,
                            const char *leaf, struct done *d)
{
    struct map_cache *mc = map_cache_new(100, 60000, 60000);
    struct mapper *m = mapper_new(c, src, mc);
    struct map_shared sh = {.ctx = f, .get = fake_get, .cancel = fake_cancel, .put = fake_put};
    struct cert_facts *facts = pki_facts(leaf);
    struct map_result now;

    mapper_set_shared(m, &sh);
    map_result_purge(&d->r);
    memset(d, 0, sizeof(*d));
    struct map_job *j = map_job_start(m, facts, on_done, d, on_trace, &now);
    tls_facts_free(facts);
    assert_non_null(j);
    event_base_dispatch(f->base);
    assert_int_equal(d->calls, 1);
    /* and then from the local cache, the tier not asked again */
    int gets = f->gets;
    facts = pki_facts(leaf);
    assert_null(map_job_start(m, facts, on_done, d, NULL, &now));
    tls_facts_free(facts);
    assert_int_equal(now.reason, d->r.reason);
    assert_int_equal(f->gets, gets);
    map_result_purge(&now);
    mapper_free(m);
    map_cache_free(mc);
    return d->r.reason;
}

static void test_resolver_tier(void **state)
{
    struct fake f = {0};
    struct conf c;
    struct done d = {0};

    (void)state;
    struct map_source *src = fake_open(&f, &c);

    /* not connected: straight to the directory; the answer is offered
     * (the tier drops it while it is not connected) */
    assert_int_equal(map_once(&c, src, &f, "good", &d), R_NONE);
    assert_int_equal(f.gets, 1);
    assert_int_equal(f.puts, 1);
    assert_int_equal(d.traces, 1);
    /* connected, a miss: the directory, then put with the positive TTL */
    f.connected = true;
    f.puts = 0;
    assert_int_equal(map_once(&c, src, &f, "good", &d), R_NONE);
    assert_int_equal(f.gets, 2);
    assert_int_equal(f.puts, 1);
    assert_int_equal(f.put_ttl, c.cache_ttl_ms);
    assert_int_equal(d.traces, 1);
    assert_string_equal(f.stored.sam, "CORP\\alice");
    /* a hit: no directory search, not put again */
    f.have = true;
    assert_int_equal(map_once(&c, src, &f, "good", &d), R_NONE);
    assert_int_equal(d.traces, 0);
    assert_int_equal(f.puts, 1);
    assert_string_equal(d.r.sam, "CORP\\alice");
    /* a refusal: put with the negative TTL */
    f.have = false;
    assert_int_equal(map_once(&c, src, &f, "meta", &d), R_NO_MAPPING);
    assert_int_equal(f.puts, 2);
    assert_int_equal(f.put_ttl, c.negative_cache_ttl_ms);

    map_result_purge(&d.r);
    fake_close(&f, src);
}

/* A client gone while its lookup waits for the shared tier: its callback is
 * never called, the answer still lands in the local cache; a mapper freed
 * with a get in flight cancels it at the tier. */
static void test_resolver_tier_cancel(void **state)
{
    struct fake f = {0};
    struct conf c;
    struct done d = {0};
    struct map_result now;

    (void)state;
    struct map_source *src = fake_open(&f, &c);
    struct map_shared sh = {.ctx = &f, .get = fake_get, .cancel = fake_cancel, .put = fake_put};
    struct map_cache *mc = map_cache_new(100, 60000, 60000);
    struct mapper *m = mapper_new(&c, src, mc);
    mapper_set_shared(m, &sh);
    f.connected = true;

    /* cancelled owner, then a hit from the tier: cached, callback suppressed */
    mapped(&f.stored);
    f.have = true;
    struct cert_facts *facts = pki_facts("good");
    struct map_job *j = map_job_start(m, facts, on_done, &d, on_trace, &now);
    assert_non_null(j);
    map_job_cancel(j);
    event_base_dispatch(f.base);
    assert_int_equal(d.calls, 0);
    assert_null(map_job_start(m, facts, on_done, &d, NULL, &now));
    assert_int_equal(now.reason, R_NONE);
    assert_string_equal(now.sam, "CORP\\alice");
    map_result_purge(&now);
    tls_facts_free(facts);

    /* freed with the get in flight: cancelled, never answered */
    facts = pki_facts("sid");
    j = map_job_start(m, facts, on_done, &d, on_trace, &now);
    tls_facts_free(facts);
    assert_non_null(j);
    mapper_free(m);
    event_base_dispatch(f.base); /* fake_cancel removed the answer: nothing runs */
    assert_int_equal(d.calls, 0);

    map_cache_free(mc);
    fake_close(&f, src);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),           cmocka_unit_test(test_tampering),
        cmocka_unit_test(test_signed_but_refused),   cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_fingerprint),          cmocka_unit_test(test_resolver_tier),
        cmocka_unit_test(test_resolver_tier_cancel),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
