/* The value checks of ldap/entry.c, which every directory answer goes through:
 * objectSid decoding (cm_sid_from_binary: LAB.md §4 vector, hostile lengths),
 * GeneralizedTime, integers, text that may end up in HTTP headers (dir_text_dup,
 * on the hostile table the LDIF source is tested with too). No directory needed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/text.h"
#include "ldap/internal.h"
#include "tests/support/hostile_text.h"

/* alice's objectSid from LAB.md §4: AQUAAAAAAAUVAAAAW0YKGosjgjEMwZSfTgQAAA== */
static const unsigned char alice_sid[] = {
    0x01, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x15, 0x00, 0x00, 0x00, 0x5b, 0x46,
    0x0a, 0x1a, 0x8b, 0x23, 0x82, 0x31, 0x0c, 0xc1, 0x94, 0x9f, 0x4e, 0x04, 0x00, 0x00};

static void test_sid(void **state)
{
    char out[CM_SID_TEXT_MAX];
    unsigned char b[80];

    assert_int_equal(cm_sid_from_binary(alice_sid, sizeof alice_sid, out, sizeof out), 0);
    assert_string_equal(out, "S-1-5-21-436880987-830612363-2677326092-1102");

    /* Well-known S-1-5-18 (LocalSystem): one sub-authority. */
    const unsigned char system[] = {1, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0};
    assert_int_equal(cm_sid_from_binary(system, sizeof system, out, sizeof out), 0);
    assert_string_equal(out, "S-1-5-18");

    /* Authorities of 2^32 and more are written in hex, as Windows does. */
    const unsigned char big[] = {1, 1, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 1, 0, 0, 0};
    assert_int_equal(cm_sid_from_binary(big, sizeof big, out, sizeof out), 0);
    assert_string_equal(out, "S-1-0x123456789ABC-1");

    /* Fifteen sub-authorities of 0xffffffff: the longest SID fits. */
    memset(b, 0xff, sizeof b);
    b[0] = 1;
    b[1] = 15;
    memset(b + 2, 0, 5);
    b[7] = 5;
    assert_int_equal(cm_sid_from_binary(b, 8 + 60, out, sizeof out), 0);
    assert_int_equal(strncmp(out, "S-1-5-4294967295-", 17), 0);
    /* …but not into a buffer that is too small: refused, not truncated. */
    assert_int_equal(cm_sid_from_binary(b, 8 + 60, out, 40), -1);

    /* Hostile shapes. */
    assert_int_equal(cm_sid_from_binary(alice_sid, 0, out, sizeof out), -1);
    assert_int_equal(cm_sid_from_binary(alice_sid, 7, out, sizeof out), -1);
    assert_int_equal(cm_sid_from_binary(alice_sid, sizeof alice_sid - 1, out, sizeof out), -1);
    memcpy(b, alice_sid, sizeof alice_sid);
    b[sizeof alice_sid] = 0;
    assert_int_equal(cm_sid_from_binary(b, sizeof alice_sid + 1, out, sizeof out), -1);
    b[1] = 6; /* says six sub-authorities, carries five */
    assert_int_equal(cm_sid_from_binary(b, sizeof alice_sid, out, sizeof out), -1);
    b[1] = 16;
    assert_int_equal(cm_sid_from_binary(b, 8 + 64, out, sizeof out), -1);
    b[1] = 0;
    assert_int_equal(cm_sid_from_binary(b, 8, out, sizeof out), -1);
    memcpy(b, alice_sid, sizeof alice_sid);
    b[0] = 2; /* revision */
    assert_int_equal(cm_sid_from_binary(b, sizeof alice_sid, out, sizeof out), -1);
}

static void test_gentime(void **state)
{
    time_t t = 0;
#define GT(s) dir_parse_gentime(s, strlen(s), &t)
    assert_int_equal(GT("20231122001234.0Z"), 0);
    assert_int_equal(t, 1700611954); /* date -u -d '2023-11-22 00:12:34' +%s */
    assert_int_equal(GT("19700101000000Z"), 0);
    assert_int_equal(t, 0);
    assert_int_equal(GT("20240229235959.123Z"), 0);
    assert_int_equal(t, 1709251199);

    assert_int_equal(GT(""), -1);
    assert_int_equal(GT("2023112200123.0Z"), -1);
    assert_int_equal(GT("20231122001234.0"), -1);      /* no zone */
    assert_int_equal(GT("20231122001234.0+0100"), -1); /* AD writes UTC only */
    assert_int_equal(GT("20231122001234.Z"), -1);
    assert_int_equal(GT("20231322001234.0Z"), -1); /* month 13 */
    assert_int_equal(GT("20230229001234.0Z"), -1); /* not a leap year */
    assert_int_equal(GT("20231122241234.0Z"), -1);
    assert_int_equal(GT("2023112200123x.0Z"), -1);
    assert_int_equal(GT("20231122001234.0Zjunk"), -1);
    assert_int_equal(dir_parse_gentime("20231122001234.0Z\0", 18, &t), -1);
#undef GT
}

static void test_int(void **state)
{
    int64_t v = 0;
#define PI(s, lo, hi) dir_parse_int(s, strlen(s), lo, hi, &v)
    assert_int_equal(PI("512", INT32_MIN, UINT32_MAX), 0);
    assert_int_equal(v, 512);
    assert_int_equal(PI("-2147483648", INT32_MIN, UINT32_MAX), 0);
    assert_int_equal(v, INT32_MIN);
    assert_int_equal(PI("9223372036854775807", INT64_MIN, INT64_MAX), 0);
    assert_true(v == INT64_MAX);
    assert_int_equal(PI("-9223372036854775808", INT64_MIN, INT64_MAX), 0);
    assert_true(v == INT64_MIN);

    assert_int_equal(PI("9223372036854775808", INT64_MIN, INT64_MAX), -1);
    assert_int_equal(PI("99999999999999999999", INT64_MIN, INT64_MAX), -1);
    assert_int_equal(PI("4294967296", INT32_MIN, UINT32_MAX), -1);
    assert_int_equal(PI("", 0, 10), -1);
    assert_int_equal(PI("-", 0, 10), -1);
    assert_int_equal(PI("+5", 0, 10), -1);
    assert_int_equal(PI(" 5", 0, 10), -1);
    assert_int_equal(PI("5 ", 0, 10), -1);
    assert_int_equal(PI("0x10", 0, 100), -1);
    assert_int_equal(dir_parse_int("5\0"
                                   "1",
                                   3, 0, 100, &v),
                     -1);
#undef PI
}

/* Whether the LDAP source takes <s, len> as a text value (DN, UPN, sAMAccountName,
 * altSecurityIdentities, dNSHostName): dir_text_dup, whole or not at all. */
static bool ldap_takes(const char *s, size_t len)
{
    struct berval bv = {.bv_len = len, .bv_val = (char *)(uintptr_t)s};
    char *copy = dir_text_dup(&bv);
    bool ok = copy != NULL;

    if (copy != NULL) {
        assert_memory_equal(copy, s, len);
        assert_int_equal(copy[len], '\0');
    }
    free(copy);
    return ok;
}

static void test_text(void **state)
{
#define OK(s) ldap_takes(s, sizeof(s) - 1)
    assert_true(OK("alice@corp.example.test"));
    assert_true(OK("X509:<I>DC=test,DC=example,DC=corp,CN=Corp Issuing CA<SR>0A1B"));
    assert_true(OK("J\xc3\xb6rg \xe2\x82\xac \xf0\x9f\x94\x91"));
    assert_true(OK(""));

    assert_false(OK("alice\r\nX-Remote-User: admin")); /* header injection */
    assert_false(OK("ali\0ce"));
    assert_false(OK("tab\there"));
    assert_false(OK("del\x7f"));
    assert_false(OK("c1\xc2\x85"));       /* NEL, a C1 control */
    assert_false(OK("\xc0\xaf"));         /* overlong '/' */
    assert_false(OK("\xe0\x80\xaf"));     /* overlong */
    assert_false(OK("\xed\xa0\x80"));     /* UTF-16 surrogate */
    assert_false(OK("\xf4\x90\x80\x80")); /* above U+10FFFF */
    assert_false(OK("\xe2\x82"));         /* cut short */
    assert_false(OK("\x80"));
    assert_false(OK("\xff"));
#undef OK
}

/* The LDAP source on the table test_ldif.c runs through the LDIF source: both
 * must refuse the same control characters, surrogates and overlong forms. */
static void test_hostile_table(void **state)
{
    char *big = malloc(CM_DIRTEXT_MAX + 1);

    for (size_t i = 0; i < HOSTILE_TEXTS; i++) {
        const struct hostile_text *h = &hostile_texts[i];
        if (ldap_takes(h->bytes, h->len) != h->dirtext)
            fail_msg("LDAP source: %s %s", h->name, h->dirtext ? "refused" : "taken");
    }
    assert_non_null(big);
    memset(big, 'a', CM_DIRTEXT_MAX + 1);
    assert_true(ldap_takes(big, CM_DIRTEXT_MAX));
    assert_false(ldap_takes(big, CM_DIRTEXT_MAX + 1));
    free(big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sid),           cmocka_unit_test(test_gentime),
        cmocka_unit_test(test_int),           cmocka_unit_test(test_text),
        cmocka_unit_test(test_hostile_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
