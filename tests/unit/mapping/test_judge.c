/* map_judge: every rule, on plans built from the test PKI's good and sid
 * leaves and on accounts written here as a directory would return them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "helpers.h"

#define GOOD_SR "X509:<I>" ISSUING_ASI "<SR>1200000000AC11000000002B"
#define NOW ((time_t)1900000000)

static struct map_entry account(const char *dn, const char *sam, const char *upn, const char *sid,
                                const char *altsecid, time_t created)
{
    struct map_entry e = {0};
    e.dn = (char *)(uintptr_t)dn;
    e.sam = (char *)(uintptr_t)sam;
    e.upn = (char *)(uintptr_t)upn;
    e.sid = (char *)(uintptr_t)sid;
    e.uac = 512;
    e.when_created = created;
    if (altsecid != NULL) {
        static char *one[8];
        static size_t next;
        one[next % 8] = (char *)(uintptr_t)altsecid;
        e.altsecids = &one[next++ % 8];
        e.n_altsecids = 1;
    }
    return e;
}

struct fixture {
    struct cert_facts *f;
    struct conf c;
    struct map_plan p;
    struct map_entry *answers[4];
    size_t n[4];
    struct map_result r;
};

/* Plans <leaf> with <methods> and judges <entries> answered to lookup <li>;
 * <san_sid> (may be NULL) is put in the facts as a SAN URL's SID. */
static enum reason judge_url(struct fixture *x, const char *leaf, const char *san_sid,
                             enum map_enforcement e, enum map_method m0, enum map_method m1,
                             struct map_entry *entries, size_t n, size_t li, const char *netbios)
{
    map_result_purge(&x->r);
    map_plan_purge(&x->p);
    tls_facts_free(x->f);
    x->f = pki_facts(leaf);
    if (san_sid != NULL)
        assert_non_null(x->f->san_sid = strdup(san_sid));
    test_conf(&x->c, e, m0, m1, METHOD_MAX, METHOD_MAX);
    assert_int_equal(map_plan_build(&x->c, x->f, &x->p), 0);
    memset(x->answers, 0, sizeof(x->answers));
    memset(x->n, 0, sizeof(x->n));
    assert_true(li < x->p.n);
    x->answers[li] = entries;
    x->n[li] = n;
    map_judge(&x->c, x->f, &x->p, x->answers, x->n, netbios, NOW, &x->r);
    assert_non_null(x->r.detail);
    assert_null(strchr(x->r.detail, '\n'));
    if (x->r.reason != R_NONE) {
        /* a refusal never names an account to send on */
        assert_null(x->r.dn);
        assert_null(x->r.upn);
        assert_null(x->r.sam);
    }
    return x->r.reason;
}

static enum reason judge(struct fixture *x, const char *leaf, enum map_enforcement e,
                         enum map_method m0, enum map_method m1, struct map_entry *entries,
                         size_t n, size_t li, const char *netbios)
{
    return judge_url(x, leaf, NULL, e, m0, m1, entries, n, li, netbios);
}

static int setup(void **state)
{
    *state = calloc(1, sizeof(struct fixture));
    return *state ? 0 : -1;
}

static int teardown(void **state)
{
    struct fixture *x = *state;
    map_result_purge(&x->r);
    map_plan_purge(&x->p);
    tls_facts_free(x->f);
    free(x);
    return 0;
}

static void test_strong(void **state)
{
    struct fixture *x = *state;
    struct map_entry a = account("CN=alice,CN=Users,DC=corp,DC=example,DC=test", "alice",
                                 "alice@corp.example.test", "S-1-5-21-1-2-3-1104", GOOD_SR, 0);

    assert_int_equal(judge(x, "good", ENFORCE_FULL, METHOD_ALTSECID, METHOD_UPN, &a, 1, 0, "CORP"),
                     R_NONE);
    assert_string_equal(x->r.dn, a.dn);
    assert_string_equal(x->r.upn, "alice@corp.example.test");
    assert_string_equal(x->r.sid, "S-1-5-21-1-2-3-1104");
    assert_string_equal(x->r.sam, "CORP\\alice");
    assert_string_equal(x->r.method, "altsecid:issuer-serial");
    assert_string_equal(x->r.detail, "mapped CN=alice,CN=Users,DC=corp,DC=example,DC=test by "
                                     "altsecid:issuer-serial (strong)");

    /* no NetBIOS name known: the bare sAMAccountName */
    assert_int_equal(judge(x, "good", ENFORCE_FULL, METHOD_ALTSECID, METHOD_UPN, &a, 1, 0, NULL),
                     R_NONE);
    assert_string_equal(x->r.sam, "alice");

    /* AD compares case-insensitively... */
    a.altsecids[0] =
        "x509:<i>dc=test,dc=example,dc=corp,cn=corp issuing ca<sr>1200000000ac11000000002b";
    assert_int_equal(judge(x, "good", ENFORCE_FULL, METHOD_ALTSECID, METHOD_UPN, &a, 1, 0, NULL),
                     R_NONE);
    /* ...but spaces count: an entry the directory returned that does not
     * really hold the value is not trusted */
    a.altsecids[0] =
        "X509:<I>DC=test, DC=example, DC=corp, CN=Corp Issuing CA<SR>1200000000AC11000000002B";
    assert_int_equal(judge(x, "good", ENFORCE_FULL, METHOD_ALTSECID, METHOD_UPN, &a, 1, 0, NULL),
                     R_NO_MAPPING);
    assert_non_null(strstr(x->r.detail, "no account has altSecurityIdentities X509:<I>"));
    assert_non_null(strstr(x->r.detail, "or userPrincipalName alice@corp.example.test"));
}

/* <SHA1-PUKEY> holding the key's SHA-1 or the certificate's: both strong,
 * each reported by its own label. */
static void test_sha1_pukey_forms(void **state)
{
    struct fixture *x = *state;
    char key[64] = "", cert[64] = "";
    struct map_entry a = account("CN=alice,CN=Users,DC=corp,DC=example,DC=test", "alice",
                                 "alice@corp.example.test", "S-1-5-21-1-2-3-1104", key, 0);

    x->f = pki_facts("good");
    snprintf(key, sizeof key, "X509:<SHA1-PUKEY>%s", x->f->pubkey_sha1);
    snprintf(cert, sizeof cert, "X509:<SHA1-PUKEY>%s", x->f->sha1);
    assert_int_equal(judge(x, "good", ENFORCE_FULL, METHOD_ALTSECID, METHOD_MAX, &a, 1, 0, NULL),
                     R_NONE);
    assert_string_equal(x->r.method, "altsecid:sha1-pukey");
    assert_non_null(strstr(x->r.detail, "by altsecid:sha1-pukey (strong)"));
    a.altsecids[0] = cert;
    assert_int_equal(judge(x, "good", ENFORCE_FULL, METHOD_ALTSECID, METHOD_MAX, &a, 1, 0, NULL),
                     R_NONE);
    assert_string_equal(x->r.method, "altsecid:sha1-cert");
    assert_non_null(strstr(x->r.detail, "by altsecid:sha1-cert (strong)"));
    /* lower case, as an administrator may paste it: AD compares case-insensitively */
    for (char *c = cert; *c != '\0'; c++)
        *c = (char)(*c >= 'A' && *c <= 'F' ? *c - 'A' + 'a' : *c);
    assert_int_equal(judge(x, "good", ENFORCE_FULL, METHOD_ALTSECID, METHOD_MAX, &a, 1, 0, NULL),
                     R_NONE);
    assert_string_equal(x->r.method, "altsecid:sha1-cert");
    /* any other SHA-1: nothing */
    a.altsecids[0] = "X509:<SHA1-PUKEY>0000000000000000000000000000000000000000";
    assert_int_equal(judge(x, "good", ENFORCE_FULL, METHOD_ALTSECID, METHOD_MAX, &a, 1, 0, NULL),
                     R_NO_MAPPING);
}

static void test_ambiguous(void **state)
{
    struct fixture *x = *state;
    struct map_entry two[2] = {
        account("CN=dup1,DC=corp", "dup1", NULL, NULL, GOOD_SR, 0),
        account("CN=dup2,DC=corp", "dup2", NULL, NULL, GOOD_SR, 0),
    };
    assert_int_equal(
        judge(x, "good", ENFORCE_DISABLED, METHOD_ALTSECID, METHOD_UPN, two, 2, 0, NULL),
        R_AMBIGUOUS_MAPPING);

    /* the same account twice (DN case differs) is one account */
    two[1].dn = "cn=DUP1,dc=CORP";
    assert_int_equal(judge(x, "good", ENFORCE_FULL, METHOD_ALTSECID, METHOD_UPN, two, 2, 0, NULL),
                     R_NONE);

    /* a strong match wins over a weak one for another account */
    struct map_entry mixed[2] = {
        account("CN=weak,DC=corp", "weak", NULL, NULL,
                "X509:<S>DC=test,DC=example,DC=corp,OU=Users,CN=alice", 0),
        account("CN=strong,DC=corp", "strong", NULL, NULL, GOOD_SR, 0),
    };
    assert_int_equal(
        judge(x, "good", ENFORCE_DISABLED, METHOD_ALTSECID, METHOD_UPN, mixed, 2, 0, NULL), R_NONE);
    assert_string_equal(x->r.dn, "CN=strong,DC=corp");

    /* two weak accounts, where weak ones count: ambiguous */
    struct map_entry weak2[2] = {
        account("CN=u1,DC=corp", "u1", "alice@corp.example.test", NULL, NULL, 1),
        account("CN=u2,DC=corp", "u2", "ALICE@corp.example.test", NULL, NULL, 1),
    };
    assert_int_equal(judge(x, "good", ENFORCE_DISABLED, METHOD_UPN, METHOD_MAX, weak2, 2, 0, NULL),
                     R_AMBIGUOUS_MAPPING);
    assert_int_equal(judge(x, "good", ENFORCE_FULL, METHOD_UPN, METHOD_MAX, weak2, 2, 0, NULL),
                     R_WEAK_MAPPING);
}

static void test_weak_by_enforcement(void **state)
{
    struct fixture *x = *state;
    struct map_entry u =
        account("CN=alice,DC=corp", "alice", "Alice@Corp.Example.Test", NULL, NULL, 1);

    assert_int_equal(judge(x, "good", ENFORCE_FULL, METHOD_ALTSECID, METHOD_UPN, &u, 1, 1, NULL),
                     R_WEAK_MAPPING);
    assert_non_null(strstr(x->r.detail, "upn (weak)"));
    assert_int_equal(
        judge(x, "good", ENFORCE_DISABLED, METHOD_ALTSECID, METHOD_UPN, &u, 1, 1, NULL), R_NONE);
    assert_string_equal(x->r.method, "upn");
    assert_non_null(strstr(x->r.detail, "(weak)"));

    /* compatibility: the certificate must not predate the account by more
     * than the 10-minute backdating allowance (KB5014754) */
    struct cert_facts *g = pki_facts("good");
    time_t nb = g->not_before;
    tls_facts_free(g);
    const struct {
        time_t created;
        enum reason want;
    } cases[] = {
        {nb - 86400, R_NONE},                      /* account older than the certificate */
        {nb, R_NONE},                              /* same second */
        {nb + MAP_BACKDATING_ALLOWANCE_S, R_NONE}, /* within the allowance */
        {nb + MAP_BACKDATING_ALLOWANCE_S + 1, R_WEAK_MAPPING}, /* certificate is older */
        {0, R_WEAK_MAPPING}, /* creation unknown: cannot show it */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        u.when_created = cases[i].created;
        assert_int_equal(
            judge(x, "good", ENFORCE_COMPATIBILITY, METHOD_UPN, METHOD_MAX, &u, 1, 0, NULL),
            cases[i].want);
    }
    /* the allowance matters only in compatibility mode */
    assert_int_equal(judge(x, "good", ENFORCE_DISABLED, METHOD_UPN, METHOD_MAX, &u, 1, 0, NULL),
                     R_NONE);
}

/* A refused weak match does not stop the walk: a later strong one maps. */
static void test_weak_then_strong(void **state)
{
    struct fixture *x = *state;
    struct map_entry u =
        account("CN=other,DC=corp", "other", "alice@corp.example.test", NULL, NULL, 1);
    struct map_entry a = account("CN=alice,DC=corp", "alice", NULL, NULL, GOOD_SR, 1);

    x->f = pki_facts("good");
    test_conf(&x->c, ENFORCE_FULL, METHOD_UPN, METHOD_ALTSECID, METHOD_MAX, METHOD_MAX);
    assert_int_equal(map_plan_build(&x->c, x->f, &x->p), 0);
    x->answers[0] = &u;
    x->n[0] = 1;
    x->answers[1] = &a;
    x->n[1] = 1;
    map_judge(&x->c, x->f, &x->p, x->answers, x->n, NULL, NOW, &x->r);
    assert_int_equal(x->r.reason, R_NONE);
    assert_string_equal(x->r.dn, "CN=alice,DC=corp");
    assert_true(map_judge_settles(&x->c, x->f, &x->p, 1, &a, 1, NOW));
    assert_false(map_judge_settles(&x->c, x->f, &x->p, 0, &u, 1, NOW));
    map_result_purge(&x->r);

    /* nothing strong later: the refusal is weak_mapping, not no_mapping */
    x->n[1] = 0;
    map_judge(&x->c, x->f, &x->p, x->answers, x->n, NULL, NOW, &x->r);
    assert_int_equal(x->r.reason, R_WEAK_MAPPING);
    assert_non_null(strstr(x->r.detail, "CN=other,DC=corp"));
}

static void test_sid_mismatch(void **state)
{
    struct fixture *x = *state;
    struct map_entry u = account("CN=sidalice,DC=corp", "sidalice", "sidalice@corp.example.test",
                                 "S-1-5-21-436880987-830612363-2677326092-1199", NULL, 1);

    assert_int_equal(judge(x, "sid", ENFORCE_COMPATIBILITY, METHOD_UPN, METHOD_MAX, &u, 1, 0, NULL),
                     R_SID_MISMATCH);
    assert_non_null(strstr(x->r.detail, "S-1-5-21-436880987-830612363-2677326092-1199"));
    /* enforcement disabled: the SID extension is not checked (KB5014754 mode 0) */
    assert_int_equal(judge(x, "sid", ENFORCE_DISABLED, METHOD_UPN, METHOD_MAX, &u, 1, 0, NULL),
                     R_NONE);
    /* an account without objectSid cannot show it is the SID's */
    u.sid = NULL;
    assert_int_equal(judge(x, "sid", ENFORCE_COMPATIBILITY, METHOD_UPN, METHOD_MAX, &u, 1, 0, NULL),
                     R_SID_MISMATCH);
    /* equal SID (any case): mapped, strongly by the SID lookup */
    u.sid = "s-1-5-21-436880987-830612363-2677326092-1102";
    assert_int_equal(judge(x, "sid", ENFORCE_FULL, METHOD_SID, METHOD_UPN, &u, 1, 0, NULL), R_NONE);
    assert_string_equal(x->r.method, "sid");
}

#define SID_ALICE "S-1-5-21-436880987-830612363-2677326092-1102"

/* KB5014754: a weak mapping of an account whose objectSid is the
 * certificate's SID (extension or SAN URL) is strong, even under full. */
static void test_sid_makes_weak_strong(void **state)
{
    struct fixture *x = *state;
    struct map_entry u = account("CN=sidalice,DC=corp", "sidalice", "sidalice@corp.example.test",
                                 SID_ALICE, NULL, 0);

    /* the SID extension (the PKI's sid leaf) */
    assert_int_equal(judge(x, "sid", ENFORCE_FULL, METHOD_UPN, METHOD_MAX, &u, 1, 0, NULL), R_NONE);
    assert_string_equal(x->r.method, "upn");
    assert_non_null(strstr(x->r.detail, "(strong: the certificate's SID is the account's)"));
    /* another objectSid: not upgraded, so refused as weak under full */
    u.sid = "S-1-5-21-436880987-830612363-2677326092-1199";
    assert_int_equal(judge(x, "sid", ENFORCE_FULL, METHOD_UPN, METHOD_MAX, &u, 1, 0, NULL),
                     R_WEAK_MAPPING);

    /* the SID of a SAN URL, on the good leaf (UPN alice@...) */
    struct map_entry a = account("CN=alice,CN=Users,DC=corp,DC=example,DC=test", "alice",
                                 "alice@corp.example.test", SID_ALICE, NULL, 0);
    assert_int_equal(
        judge_url(x, "good", SID_ALICE, ENFORCE_FULL, METHOD_UPN, METHOD_MAX, &a, 1, 0, NULL),
        R_NONE);
    assert_string_equal(x->r.method, "upn");
    assert_non_null(strstr(x->r.detail, "(strong: the certificate's SID is the account's)"));
    /* a SAN URL SID of another account: sid_mismatch, as for the extension */
    a.when_created = 1;
    assert_int_equal(judge_url(x, "good", "S-1-5-21-1-2-3-4", ENFORCE_COMPATIBILITY, METHOD_UPN,
                               METHOD_MAX, &a, 1, 0, NULL),
                     R_SID_MISMATCH);
    assert_non_null(strstr(x->r.detail, "S-1-5-21-1-2-3-4 (SAN URL)"));
    /* a strong explicit mapping with a SAN URL SID of another account: sid_mismatch */
    struct map_entry b = account("CN=alice,CN=Users,DC=corp,DC=example,DC=test", "alice",
                                 "alice@corp.example.test", SID_ALICE, GOOD_SR, 0);
    assert_int_equal(judge_url(x, "good", "S-1-5-21-1-2-3-4", ENFORCE_FULL, METHOD_ALTSECID,
                               METHOD_MAX, &b, 1, 0, NULL),
                     R_SID_MISMATCH);
    /* the sid method looks the SAN URL's SID up, labelled sid:url */
    assert_int_equal(
        judge_url(x, "good", SID_ALICE, ENFORCE_FULL, METHOD_SID, METHOD_MAX, &a, 1, 0, NULL),
        R_NONE);
    assert_string_equal(x->r.method, "sid:url");
    /* enforcement disabled: the SID is not checked */
    assert_int_equal(judge_url(x, "good", "S-1-5-21-1-2-3-4", ENFORCE_DISABLED, METHOD_UPN,
                               METHOD_MAX, &a, 1, 0, NULL),
                     R_NONE);
}

/* X509:<I>issuer<SID>sid: strong; the issuer and the SID must both be the certificate's. */
static void test_issuer_sid(void **state)
{
    struct fixture *x = *state;
    struct map_entry a = account("CN=sidalice,DC=corp", "sidalice", NULL, SID_ALICE,
                                 "X509:<I>" ISSUING_ASI "<SID>" SID_ALICE, 0);

    assert_int_equal(judge(x, "sid", ENFORCE_FULL, METHOD_ALTSECID, METHOD_MAX, &a, 1, 0, NULL),
                     R_NONE);
    assert_string_equal(x->r.method, "altsecid:issuer-sid");
    assert_non_null(strstr(x->r.detail, "by altsecid:issuer-sid (strong)"));
    /* from a SAN URL's SID */
    assert_int_equal(
        judge_url(x, "good", SID_ALICE, ENFORCE_FULL, METHOD_ALTSECID, METHOD_MAX, &a, 1, 0, NULL),
        R_NONE);
    assert_string_equal(x->r.method, "altsecid:issuer-sid");
    /* another issuer, or another SID: no match */
    a.altsecids[0] = "X509:<I>DC=test,DC=example,DC=corp,CN=Corp Root CA<SID>" SID_ALICE;
    assert_int_equal(judge(x, "sid", ENFORCE_FULL, METHOD_ALTSECID, METHOD_MAX, &a, 1, 0, NULL),
                     R_NO_MAPPING);
    a.altsecids[0] = "X509:<I>" ISSUING_ASI "<SID>S-1-5-21-436880987-830612363-2677326092-1103";
    assert_int_equal(judge(x, "sid", ENFORCE_FULL, METHOD_ALTSECID, METHOD_MAX, &a, 1, 0, NULL),
                     R_NO_MAPPING);
    /* a certificate without a SID never matches the form */
    a.altsecids[0] = "X509:<I>" ISSUING_ASI "<SID>" SID_ALICE;
    assert_int_equal(judge(x, "good", ENFORCE_FULL, METHOD_ALTSECID, METHOD_MAX, &a, 1, 0, NULL),
                     R_NO_MAPPING);
}

static void test_account_state(void **state)
{
    struct fixture *x = *state;
    const struct {
        uint32_t uac, computed;
        bool has_computed;
        int64_t expires;
        enum reason want;
        const char *why;
    } cases[] = {
        {512, 0, false, 0, R_NONE, NULL},
        {514, 0, false, 0, R_ACCOUNT_DISABLED, "is disabled"},
        {512, 0x10, true, 0, R_ACCOUNT_DISABLED, "locked out"},
        {512, 0x800000, true, 0, R_ACCOUNT_DISABLED, "expired password"},
        {512, 0x10, false, 0, R_NONE, NULL}, /* no computed flags read: nothing to say */
        {512, 0, false, INT64_MAX, R_NONE, NULL},
        /* 2021-01-01 */
        {512, 0, false, 132539328000000000ll, R_ACCOUNT_DISABLED, "has expired"},
        /* NOW + 1 day, as FILETIME */
        {512, 0, false, ((int64_t)NOW + 86400 + 11644473600ll) * 10000000ll, R_NONE, NULL},
        {512, 0, false, -5, R_ACCOUNT_DISABLED, "has expired"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct map_entry a = account("CN=alice,DC=corp", "alice", NULL, NULL, GOOD_SR, 1);
        a.uac = cases[i].uac;
        a.uac_computed = cases[i].computed;
        a.has_uac_computed = cases[i].has_computed;
        a.account_expires = cases[i].expires;
        assert_int_equal(
            judge(x, "good", ENFORCE_FULL, METHOD_ALTSECID, METHOD_MAX, &a, 1, 0, "CORP"),
            cases[i].want);
        if (cases[i].why != NULL)
            assert_non_null(strstr(x->r.detail, cases[i].why));
    }
}

/* Nothing found at all: no_mapping, whose detail names what was looked for. */
static void test_nothing(void **state)
{
    struct fixture *x = *state;
    assert_int_equal(judge(x, "good", ENFORCE_FULL, METHOD_ALTSECID, METHOD_UPN, NULL, 0, 0, NULL),
                     R_NO_MAPPING);
    assert_int_equal(strncmp(x->r.detail, "no account has altSecurityIdentities X509:<I>", 45), 0);
    assert_null(x->r.method);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_strong, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sha1_pukey_forms, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ambiguous, setup, teardown),
        cmocka_unit_test_setup_teardown(test_weak_by_enforcement, setup, teardown),
        cmocka_unit_test_setup_teardown(test_weak_then_strong, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sid_mismatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sid_makes_weak_strong, setup, teardown),
        cmocka_unit_test_setup_teardown(test_issuer_sid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_account_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nothing, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
