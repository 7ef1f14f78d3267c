/* The LDIF source over tests/data/ad-users.ldif: what it reads, that it
 * matches as AD does, that it answers from the loop and never inside
 * search(), cancellation, and FILE:LINE errors for bad files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <unistd.h>

#include <event2/event.h>

#include <openssl/evp.h>

#include "common/text.h"
#include "helpers.h"
#include "tests/support/hostile_text.h"

struct answer {
    int calls;
    bool ok;
    char dns[8][128];
    size_t n;
    struct map_entry first; /* copy */
};

static void on_answer(void *arg, bool ok, struct map_entry *entries, size_t n)
{
    struct answer *a = arg;
    a->calls++;
    a->ok = ok;
    a->n = n;
    for (size_t i = 0; i < n && i < 8; i++)
        snprintf(a->dns[i], sizeof(a->dns[i]), "%s", entries[i].dn);
    if (n > 0)
        assert_int_equal(map_entry_copy(&a->first, &entries[0]), 0);
}

/* Looks up <value> in <attr> through <s>, running <base> until answered. */
static void lookup(struct map_source *s, struct event_base *base, enum map_method m,
                   const char *attr, const char *value, struct answer *a)
{
    char *values[1] = {(char *)(uintptr_t)value};
    enum map_strength st[1] = {MAP_WEAK};
    const char *labels[1] = {"x"};
    struct map_lookup l = {.method = m,
                           .kind = "x",
                           .attr = attr,
                           .values = values,
                           .strength = st,
                           .labels = labels,
                           .n_values = 1,
                           .filter = NULL};

    map_entry_purge(&a->first);
    memset(a, 0, sizeof(*a));
    assert_non_null(s->search(s->ctx, &l, on_answer, a));
    assert_int_equal(a->calls, 0); /* never from inside search() */
    assert_true(event_base_loop(base, EVLOOP_NONBLOCK) >= 0);
    assert_int_equal(a->calls, 1);
    assert_true(a->ok);
}

static void test_load_and_match(void **state)
{
    struct event_base *base = event_base_new();
    char err[512] = "";
    struct map_source *s =
        map_ldif_open(data_path("ad-users.ldif"), "CORP", base, err, sizeof(err));
    struct answer a = {0};

    (void)state;
    assert_non_null(s);
    assert_string_equal(s->netbios(s->ctx), "CORP");

    lookup(s, base, METHOD_ALTSECID, "altSecurityIdentities",
           "X509:<I>" ISSUING_ASI "<SR>1200000000AC11000000002B", &a);
    assert_int_equal(a.n, 1);
    assert_string_equal(a.dns[0], "CN=alice,CN=Users,DC=corp,DC=example,DC=test");
    /* every attribute as AD gives it */
    assert_string_equal(a.first.sam, "alice");
    assert_string_equal(a.first.upn, "alice@corp.example.test");
    assert_string_equal(a.first.sid, "S-1-5-21-436880987-830612363-2677326092-1104");
    assert_int_equal(a.first.when_created, 1577836800); /* 2020-01-01T00:00:00Z */
    assert_int_equal(a.first.uac, 512);
    assert_true(a.first.account_expires == INT64_MAX);
    assert_int_equal(a.first.n_altsecids, 2);
    assert_false(a.first.is_computer);

    /* case-insensitive, as AD */
    lookup(s, base, METHOD_ALTSECID, "altSecurityIdentities",
           "x509:<i>dc=test,dc=example,dc=corp,cn=corp issuing ca<sr>1200000000ac11000000002b", &a);
    assert_int_equal(a.n, 1);
    /* spaces significant, as AD: the spaced form finds only the spaced entry */
    lookup(s, base, METHOD_ALTSECID, "altSecurityIdentities",
           "X509:<I>DC=test, DC=example, DC=corp, CN=Corp Issuing CA<SR>1200000000AC11000000002B",
           &a);
    assert_int_equal(a.n, 0);
    lookup(s, base, METHOD_ALTSECID, "altSecurityIdentities",
           "X509:<I>" ISSUING_ASI "<S>DC=test,DC=example,DC=corp,OU=Users,CN=alice", &a);
    assert_int_equal(a.n, 0);

    /* one mapping on two accounts: both come back */
    lookup(s, base, METHOD_ALTSECID, "altSecurityIdentities",
           "X509:<I>" ISSUING_ASI "<SR>1500000000AC11000000002B", &a);
    assert_int_equal(a.n, 2);

    /* objectSid by value (read from base64 binary) */
    lookup(s, base, METHOD_SID, "objectSid", SID_ALICE, &a);
    assert_int_equal(a.n, 1);
    assert_string_equal(a.dns[0], "CN=sidowner,CN=Users,DC=corp,DC=example,DC=test");

    lookup(s, base, METHOD_UPN, "userPrincipalName", "noeku@corp.example.test", &a);
    assert_int_equal(a.n, 1);
    assert_true(a.first.has_uac_computed);
    assert_int_equal(a.first.uac_computed, 16);

    /* dNSHostName only on computers; contacts are never accounts */
    lookup(s, base, METHOD_DNS, "dNSHostName", "LOCALHOST", &a);
    assert_int_equal(a.n, 1);
    assert_true(a.first.is_computer);
    assert_string_equal(a.first.sam, "WS01$");
    lookup(s, base, METHOD_UPN, "userPrincipalName", "byroot@corp.example.test", &a);
    assert_int_equal(a.n, 0);

    map_entry_purge(&a.first);
    map_source_close(s);
    event_base_free(base);
}

static void test_cancel(void **state)
{
    struct event_base *base = event_base_new();
    char err[512];
    struct map_source *s = map_ldif_open(data_path("ad-users.ldif"), NULL, base, err, sizeof(err));
    struct answer a = {0}, b = {0};
    char *values[1] = {"alice@corp.example.test"};
    enum map_strength st[1] = {MAP_WEAK};
    const char *labels[1] = {"upn"};
    struct map_lookup l = {.method = METHOD_UPN,
                           .kind = "upn",
                           .attr = "userPrincipalName",
                           .values = values,
                           .strength = st,
                           .labels = labels,
                           .n_values = 1};

    (void)state;
    assert_non_null(s);
    assert_null(s->netbios(s->ctx));
    void *h1 = s->search(s->ctx, &l, on_answer, &a);
    void *h2 = s->search(s->ctx, &l, on_answer, &b);
    assert_non_null(h1);
    assert_non_null(h2);
    s->cancel(s->ctx, h1);
    event_base_loop(base, EVLOOP_NONBLOCK);
    assert_int_equal(a.calls, 0);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.n, 1);
    map_entry_purge(&b.first);
    /* pending at close: freed, never called */
    assert_non_null(s->search(s->ctx, &l, on_answer, &a));
    map_source_close(s);
    event_base_free(base);
    assert_int_equal(a.calls, 0);
}

/* Writes <text> to a temporary file and opens it; the error, or "" if it loaded. */
static const char *try_open(const char *text, char *path, size_t pathlen)
{
    static char err[512];
    struct event_base *base = event_base_new();
    snprintf(path, pathlen, "/tmp/certmapd-ldif-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *fp = fdopen(fd, "w");
    fputs(text, fp);
    fclose(fp);
    err[0] = '\0';
    struct map_source *s = map_ldif_open(path, NULL, base, err, sizeof(err));
    if (s != NULL) {
        map_source_close(s);
        err[0] = '\0';
    } else {
        assert_true(err[0] != '\0');
    }
    unlink(path);
    event_base_free(base);
    return err;
}

static void expect_error(const char *text, int line, const char *why)
{
    char path[64], want[128];
    const char *err = try_open(text, path, sizeof(path));
    snprintf(want, sizeof(want), "%s:%d: ", path, line);
    if (strncmp(err, want, strlen(want)) != 0 || strstr(err, why) == NULL)
        fail_msg("want \"%s...%s\", got \"%s\"", want, why, err);
}

static void test_bad_files(void **state)
{
    char path[64];
    (void)state;
    /* good minimal file loads */
    assert_string_equal(try_open("dn: CN=a,DC=x\nobjectClass: user\n", path, sizeof(path)), "");
    /* objectSid as text instead of binary: the record's first line */
    expect_error("# c\n\ndn: CN=a,DC=x\nobjectClass: user\n\n# two\ndn: CN=b,DC=x\n"
                 "objectSid: S-1-5-21-1-2\n",
                 7, "objectSid is not a binary SID");
    expect_error("dn: CN=a,DC=x\nuserAccountControl: abc\n", 1, "32-bit");
    expect_error("dn: CN=a,DC=x\nuserAccountControl: 4294967296\n", 1, "32-bit");
    expect_error("dn: CN=a,DC=x\nwhenCreated: yesterday\n", 1, "GeneralizedTime");
    expect_error("dn: CN=a,DC=x\naccountExpires: 1x\n", 1, "FILETIME");
    expect_error("dn: CN=a,DC=x\ncn: a\n\ndn: CN=b,DC=x\nchangetype: delete\n", 4, "only entries");
    expect_error("dn: CN=a,DC=x\nuserPrincipalName: a\nuserPrincipalName: b\n", 1, "single-valued");
    /* a NUL inside a text value (base64) */
    expect_error("dn: CN=a,DC=x\nuserPrincipalName:: YQBi\n", 1, "NUL");
    expect_error("\n\ndn: CN=a,DC=x\nthis is not ldif\n", 3, "not a valid LDIF record");

    /* a missing file: FILE: reason */
    char err[512];
    struct event_base *base = event_base_new();
    assert_null(map_ldif_open("/nonexistent/x.ldif", NULL, base, err, sizeof(err)));
    assert_non_null(strstr(err, "/nonexistent/x.ldif: cannot read"));
    event_base_free(base);
}

/* "<attr>:: <base64 of prefix, <s, len>, suffix>\n" appended to <out>. */
static void b64_line(char *out, size_t outlen, const char *attr, const char *prefix, const char *s,
                     size_t len, const char *suffix)
{
    size_t pl = strlen(prefix), sl = strlen(suffix), n = pl + len + sl;
    unsigned char *raw = malloc(n + 1);
    char *b64 = malloc(4 * (n / 3 + 1) + 1);
    size_t used = strlen(out);

    assert_true(raw != NULL && b64 != NULL);
    memcpy(raw, prefix, pl);
    memcpy(raw + pl, s, len);
    memcpy(raw + pl + len, suffix, sl);
    assert_true(EVP_EncodeBlock((unsigned char *)b64, raw, (int)n) >= 0);
    assert_true((size_t)snprintf(out + used, outlen - used, "%s:: %s\n", attr, b64) <
                outlen - used);
    free(raw);
    free(b64);
}

/* Whether the LDIF source takes <s, len> in <where> ("dn", or a text attribute). */
static bool ldif_takes(const char *where, const char *s, size_t len)
{
    size_t cap = 4 * CM_DIRTEXT_MAX + 1024;
    char *text = calloc(1, cap);
    char path[64];
    bool ok;

    assert_non_null(text);
    if (strcmp(where, "dn") == 0) {
        b64_line(text, cap, "dn", "CN=", s, len, ",DC=x");
    } else {
        snprintf(text, cap, "dn: CN=a,DC=x\n");
        b64_line(text, cap, where, "", s, len, "");
    }
    snprintf(text + strlen(text), cap - strlen(text), "objectClass: user\n");
    const char *err = try_open(text, path, sizeof(path));
    ok = err[0] == '\0';
    /* A refusal names the value's record and why, not an LDIF syntax error. */
    if (!ok && (strstr(err, ":1: ") == NULL || strstr(err, "control character") == NULL))
        fail_msg("%s: unexpected error \"%s\"", where, err);
    free(text);
    return ok;
}

/* The table test_dir_entry.c runs through the LDAP source: the LDIF source
 * decides every row as the LDAP source does, in a DN and in text attributes. */
static void test_hostile_values(void **state)
{
    static const char *const where[] = {"dn", "userPrincipalName", "sAMAccountName", "dNSHostName",
                                        "altSecurityIdentities"};
    char *big = malloc(CM_DIRTEXT_MAX + 1);

    (void)state;
    for (size_t i = 0; i < HOSTILE_TEXTS; i++) {
        const struct hostile_text *h = &hostile_texts[i];
        for (size_t w = 0; w < sizeof(where) / sizeof(where[0]); w++)
            if (ldif_takes(where[w], h->bytes, h->len) != h->dirtext)
                fail_msg("LDIF source, %s: %s %s", where[w], h->name,
                         h->dirtext ? "refused" : "taken");
    }
    /* The LDAP source's bound on a value, too. */
    assert_non_null(big);
    memset(big, 'a', CM_DIRTEXT_MAX + 1);
    assert_true(ldif_takes("userPrincipalName", big, CM_DIRTEXT_MAX));
    assert_false(ldif_takes("userPrincipalName", big, CM_DIRTEXT_MAX + 1));
    free(big);

    /* The three the LDIF source used to take, by name. */
    expect_error("dn: CN=a,DC=x\nuserPrincipalName:: YQFi\n", 1, "control character"); /* a^Ab */
    expect_error("dn: CN=a,DC=x\naltSecurityIdentities:: 7aCA\n", 1,
                 "invalid UTF-8");                               /* ED A0 80 */
    expect_error("dn:: Q049wK8sREM9eA==\n", 1, "invalid UTF-8"); /* CN=<C0 AF>,DC=x */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_and_match),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_hostile_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
