/* map_plan_build on the test PKI's good, sid and meta leaves: the lookups,
 * their values as AD stores them, and filters escaped by libldap. The SID's
 * binary form is checked against the base64 objectSid that Samba AD returned
 * for that SID (LAB.md §1), not against this code's own encoder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <openssl/evp.h>

#include "common/text.h"
#include "helpers.h"

/* Decodes the filter assertion value <v> (RFC 4515 escapes) into <out>; its length. */
static size_t unescape(const char *v, size_t n, unsigned char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] == '\\') {
            unsigned int b;
            assert_true(i + 2 < n + 1);
            assert_int_equal(sscanf(v + i + 1, "%2x", &b), 1);
            out[o++] = (unsigned char)b;
            i += 2;
        } else {
            out[o++] = (unsigned char)v[i];
        }
    }
    return o;
}

/* Every filter: no wildcard, parentheses balanced once escapes are set aside. */
static void assert_filter_sane(const char *f)
{
    int depth = 0;
    assert_null(strchr(f, '*'));
    for (const char *p = f; *p != '\0'; p++) {
        if (*p == '(')
            depth++;
        if (*p == ')')
            depth--;
        assert_true(depth >= 0);
    }
    assert_int_equal(depth, 0);
}

static void test_good(void **state)
{
    struct cert_facts *f = pki_facts("good");
    struct conf c;
    struct map_plan p;
    char want[4096];

    (void)state;
    test_conf(&c, ENFORCE_FULL, METHOD_SID, METHOD_ALTSECID, METHOD_UPN, METHOD_DNS);
    assert_int_equal(map_plan_build(&c, f, &p), 0);
    /* no SID extension and no DNS SAN: those lookups are left out */
    assert_int_equal(p.n, 2);

    const struct map_lookup *a = &p.lookups[0];
    assert_int_equal(a->method, METHOD_ALTSECID);
    assert_string_equal(a->attr, "altSecurityIdentities");
    assert_non_null(f->ski);
    assert_int_equal(a->n_values, 7);
    assert_string_equal(a->values[0], "X509:<I>" ISSUING_ASI "<SR>1200000000AC11000000002B");
    assert_int_equal(a->strength[0], MAP_STRONG);
    assert_string_equal(a->labels[0], "altsecid:issuer-serial");
    snprintf(want, sizeof(want), "X509:<SKI>%s", f->ski);
    assert_string_equal(a->values[1], want);
    assert_int_equal(a->strength[1], MAP_STRONG);
    snprintf(want, sizeof(want), "X509:<SHA1-PUKEY>%s", f->pubkey_sha1);
    assert_string_equal(a->values[2], want);
    assert_int_equal(a->strength[2], MAP_STRONG);
    assert_string_equal(a->labels[2], "altsecid:sha1-pukey");
    /* the same tag with the certificate's thumbprint (docs/mapping.md: which
     * of the two AD means is not settled, so both are looked up) */
    snprintf(want, sizeof(want), "X509:<SHA1-PUKEY>%s", f->sha1);
    assert_string_equal(a->values[3], want);
    assert_int_equal(a->strength[3], MAP_STRONG);
    assert_string_equal(a->labels[3], "altsecid:sha1-cert");
    assert_string_not_equal(f->sha1, f->pubkey_sha1);
    assert_string_equal(a->values[4],
                        "X509:<I>" ISSUING_ASI "<S>DC=test,DC=example,DC=corp,OU=Users,CN=alice");
    assert_int_equal(a->strength[4], MAP_WEAK);
    assert_string_equal(a->labels[4], "altsecid:issuer-subject");
    assert_string_equal(a->values[5], "X509:<S>DC=test,DC=example,DC=corp,OU=Users,CN=alice");
    assert_string_equal(a->labels[5], "altsecid:subject");
    assert_string_equal(a->values[6], "X509:<RFC822>alice@corp.example.test");
    assert_int_equal(a->strength[6], MAP_WEAK);

    /* the filter: accounts only, one assertion per value, in order */
    size_t len = (size_t)snprintf(want, sizeof(want), ACCOUNTS "(|");
    for (size_t i = 0; i < a->n_values; i++)
        len += (size_t)snprintf(want + len, sizeof(want) - len, "(altSecurityIdentities=%s)",
                                a->values[i]);
    snprintf(want + len, sizeof(want) - len, "))");
    assert_string_equal(a->filter, want);
    assert_filter_sane(a->filter);

    const struct map_lookup *u = &p.lookups[1];
    assert_int_equal(u->method, METHOD_UPN);
    assert_int_equal(u->n_values, 1);
    assert_string_equal(u->values[0], "alice@corp.example.test");
    assert_int_equal(u->strength[0], MAP_WEAK);
    assert_string_equal(u->filter, ACCOUNTS "(userPrincipalName=alice@corp.example.test))");
    map_plan_purge(&p);

    /* methods order is kept */
    test_conf(&c, ENFORCE_FULL, METHOD_UPN, METHOD_ALTSECID, METHOD_MAX, METHOD_MAX);
    assert_int_equal(map_plan_build(&c, f, &p), 0);
    assert_int_equal(p.n, 2);
    assert_string_equal(p.lookups[0].kind, "upn");
    assert_string_equal(p.lookups[1].kind, "altsecid");
    map_plan_purge(&p);
    tls_facts_free(f);
}

static void test_sid(void **state)
{
    struct cert_facts *f = pki_facts("sid");
    struct conf c;
    struct map_plan p;
    unsigned char got[128], want[128];
    int wn;

    (void)state;
    test_conf(&c, ENFORCE_FULL, METHOD_SID, METHOD_ALTSECID, METHOD_UPN, METHOD_MAX);
    assert_int_equal(map_plan_build(&c, f, &p), 0);
    assert_int_equal(p.n, 3);
    const struct map_lookup *s = &p.lookups[0];
    assert_string_equal(s->kind, "sid");
    assert_string_equal(s->attr, "objectSid");
    assert_int_equal(s->n_values, 1);
    assert_string_equal(s->values[0], SID_ALICE);
    assert_string_equal(s->labels[0], "sid");
    assert_int_equal(s->strength[0], MAP_STRONG);

    const char *head = ACCOUNTS "(objectSid=";
    assert_int_equal(strncmp(s->filter, head, strlen(head)), 0);
    const char *v = s->filter + strlen(head);
    size_t vlen = strlen(v) - 2; /* "))" */
    assert_string_equal(v + vlen, "))");
    size_t n = unescape(v, vlen, got);
    wn = EVP_DecodeBlock(want,
                         (const unsigned char *)"AQUAAAAAAAUVAAAAW0YKGosjgjEMwZSfTgQAAA==", 40);
    assert_int_equal(wn, 30); /* 28 bytes + 2 of base64 padding */
    assert_int_equal(n, 28);
    assert_memory_equal(got, want, 28);
    /* NUL bytes of the SID are escaped, never raw */
    assert_non_null(strstr(s->filter, "\\00"));
    assert_filter_sane(s->filter);

    /* the text <-> binary helpers agree with AD's bytes */
    char text[CM_SID_TEXT_MAX];
    size_t glen = sizeof got;
    assert_int_equal(cm_sid_from_binary(want, 28, text, sizeof text), 0);
    assert_string_equal(text, SID_ALICE);
    assert_int_equal(cm_sid_to_binary(SID_ALICE, strlen(SID_ALICE), got, &glen), 0);
    assert_int_equal(glen, 28);
    assert_memory_equal(got, want, 28);
#define REFUSED(s) (glen = sizeof got, cm_sid_to_binary(s, strlen(s), got, &glen) == -1)
    assert_true(REFUSED("S-1-5"));
    assert_true(REFUSED("S-1-5-21-x"));
    assert_true(REFUSED("S-1-5-4294967296"));
#undef REFUSED
    assert_int_equal(cm_sid_from_binary(want, 27, text, sizeof text), -1);
    want[0] = 2;
    assert_int_equal(cm_sid_from_binary(want, 28, text, sizeof text), -1);

    assert_string_equal(p.lookups[2].values[0], "sidalice@corp.example.test");

    /* altsecid: the issuer and SID form, strong, right after issuer-serial */
    const struct map_lookup *a = &p.lookups[1];
    assert_string_equal(a->labels[0], "altsecid:issuer-serial");
    assert_string_equal(a->values[1], "X509:<I>" ISSUING_ASI "<SID>" SID_ALICE);
    assert_string_equal(a->labels[1], "altsecid:issuer-sid");
    assert_int_equal(a->strength[1], MAP_STRONG);
    assert_non_null(
        strstr(a->filter, "(altSecurityIdentities=X509:<I>" ISSUING_ASI "<SID>" SID_ALICE ")"));
    map_plan_purge(&p);
    tls_facts_free(f);

    /* the SID of a SAN URL gives the same form, and the sid lookup as sid:url */
    f = pki_facts("good");
    assert_null(f->sid);
    f->san_sid = strdup(SID_ALICE);
    assert_non_null(f->san_sid);
    assert_int_equal(map_plan_build(&c, f, &p), 0);
    assert_int_equal(p.n, 3);
    assert_string_equal(p.lookups[0].labels[0], "sid:url");
    assert_string_equal(p.lookups[0].values[0], SID_ALICE);
    assert_string_equal(p.lookups[1].values[1], "X509:<I>" ISSUING_ASI "<SID>" SID_ALICE);
    map_plan_purge(&p);
    tls_facts_free(f);

    /* no SID: no issuer-sid form */
    f = pki_facts("good");
    assert_int_equal(map_plan_build(&c, f, &p), 0);
    for (size_t i = 0; i < p.lookups[0].n_values; i++)
        assert_null(strstr(p.lookups[0].values[i], "<SID>"));
    map_plan_purge(&p);
    tls_facts_free(f);
}

/* LDAP filter metacharacters from the certificate are escaped, not interpreted. */
static void test_meta(void **state)
{
    struct cert_facts *f = pki_facts("meta");
    struct conf c;
    struct map_plan p;

    (void)state;
    test_conf(&c, ENFORCE_FULL, METHOD_SID, METHOD_ALTSECID, METHOD_UPN, METHOD_DNS);
    assert_int_equal(map_plan_build(&c, f, &p), 0);
    assert_int_equal(p.n, 2);
    const struct map_lookup *a = &p.lookups[0], *u = &p.lookups[1];
    assert_string_equal(u->values[0], "*)(uid=*))(|(uid=*@corp.example.test");
    assert_string_equal(u->filter, ACCOUNTS "(userPrincipalName="
                                            "\\2A\\29\\28uid=\\2A\\29\\29\\28|\\28uid=\\2A"
                                            "@corp.example.test))");
    assert_string_equal(a->values[5], "X509:<S>DC=test,DC=example,DC=corp,OU=Users,CN=a*)(b\\");
    assert_non_null(strstr(a->filter, "(altSecurityIdentities=X509:<S>DC=test,DC=example,"
                                      "DC=corp,OU=Users,CN=a\\2A\\29\\28b\\5C)"));
    assert_non_null(strstr(a->filter, "(altSecurityIdentities=X509:<RFC822>a\\28b\\29\\2A"
                                      "@corp.example.test)"));
    assert_filter_sane(a->filter);
    assert_filter_sane(u->filter);
    map_plan_purge(&p);
    tls_facts_free(f);
}

/* A DNS SAN gives a computers-only lookup; nothing to look up gives an empty plan. */
static void test_dns_and_empty(void **state)
{
    struct cert_facts *f = pki_facts("server");
    struct conf c;
    struct map_plan p;

    (void)state;
    test_conf(&c, ENFORCE_FULL, METHOD_DNS, METHOD_SID, METHOD_UPN, METHOD_MAX);
    assert_int_equal(map_plan_build(&c, f, &p), 0);
    assert_int_equal(p.n, 1);
    assert_string_equal(p.lookups[0].attr, "dNSHostName");
    assert_string_equal(p.lookups[0].filter,
                        ACCOUNTS "(objectClass=computer)(dNSHostName=localhost))");
    map_plan_purge(&p);

    test_conf(&c, ENFORCE_FULL, METHOD_SID, METHOD_UPN, METHOD_MAX, METHOD_MAX);
    assert_int_equal(map_plan_build(&c, f, &p), 0);
    assert_int_equal(p.n, 0);
    map_plan_purge(&p);
    tls_facts_free(f);
}

/* A SID whose authority is 2^32 or more (MS-DTYP: written in hex, as objectSid
 * is printed) still becomes its binary form in the filter. */
static void test_sid_hex_authority(void **state)
{
    char sid[] = "S-1-0x000100000000-5";
    struct cert_facts f = {.sid = sid};
    static const unsigned char want[] = {1, 1, 0, 1, 0, 0, 0, 0, 5, 0, 0, 0};
    unsigned char got[128];
    struct conf c;
    struct map_plan p;

    (void)state;
    test_conf(&c, ENFORCE_FULL, METHOD_SID, METHOD_MAX, METHOD_MAX, METHOD_MAX);
    assert_int_equal(map_plan_build(&c, &f, &p), 0);
    assert_int_equal(p.n, 1);
    const char *head = ACCOUNTS "(objectSid=";
    const char *v = p.lookups[0].filter + strlen(head);
    assert_int_equal(strncmp(p.lookups[0].filter, head, strlen(head)), 0);
    assert_int_equal(unescape(v, strlen(v) - 2, got), sizeof want);
    assert_memory_equal(got, want, sizeof want);
    assert_filter_sane(p.lookups[0].filter);
    map_plan_purge(&p);

    /* The same SID in decimal is not objectSid's spelling: no filter is built. */
    char dec[] = "S-1-4294967296-5";
    f.sid = dec;
    assert_int_equal(map_plan_build(&c, &f, &p), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good),
        cmocka_unit_test(test_sid),
        cmocka_unit_test(test_sid_hex_authority),
        cmocka_unit_test(test_meta),
        cmocka_unit_test(test_dns_and_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
