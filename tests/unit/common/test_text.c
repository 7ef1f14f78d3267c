/* common/text: the one UTF-8 decoder (certificate names, directory text) and
 * the one SID codec (objectSid binary <-> "S-1-..." text, MS-DTYP 2.4.2), on
 * the hostile table every source is tested with. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/text.h"
#include "tests/support/hostile_text.h"

static void test_hostile_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < HOSTILE_TEXTS; i++) {
        const struct hostile_text *h = &hostile_texts[i];
        if (cm_utf8_valid(h->bytes, h->len) != h->utf8)
            fail_msg("cm_utf8_valid(%s) is not %d", h->name, h->utf8);
        if (cm_dirtext_valid(h->bytes, h->len) != h->dirtext)
            fail_msg("cm_dirtext_valid(%s) is not %d", h->name, h->dirtext);
        /* Directory text is a subset of certificate text. */
        assert_true(!h->dirtext || h->utf8);
    }
    assert_true(cm_utf8_valid("", 0));
    assert_true(cm_dirtext_valid("", 0));
    assert_true(cm_utf8_valid(NULL, 0));
    assert_true(cm_dirtext_valid(NULL, 0));
}

/* A sequence is judged by its own bytes: one cut short at the length given is
 * refused even when the bytes after it would complete it. */
static void test_length_is_the_end(void **state)
{
    const char euro[] = "\xe2\x82\xac";
    (void)state;
    assert_true(cm_utf8_valid(euro, 3));
    assert_false(cm_utf8_valid(euro, 2));
    assert_false(cm_utf8_valid(euro, 1));
    assert_false(cm_dirtext_valid(euro, 2));
}

/* Directory text has a bound; certificate text does not (facts.c has its own). */
static void test_dirtext_bound(void **state)
{
    char *s = malloc(CM_DIRTEXT_MAX + 1);
    (void)state;
    assert_non_null(s);
    memset(s, 'a', CM_DIRTEXT_MAX + 1);
    assert_true(cm_dirtext_valid(s, CM_DIRTEXT_MAX));
    assert_false(cm_dirtext_valid(s, CM_DIRTEXT_MAX + 1));
    assert_true(cm_utf8_valid(s, CM_DIRTEXT_MAX + 1));
    free(s);
}

/* alice's objectSid from LAB.md §4: AQUAAAAAAAUVAAAAW0YKGosjgjEMwZSfTgQAAA== */
static const unsigned char alice_sid[] = {
    0x01, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x15, 0x00, 0x00, 0x00, 0x5b, 0x46,
    0x0a, 0x1a, 0x8b, 0x23, 0x82, 0x31, 0x0c, 0xc1, 0x94, 0x9f, 0x4e, 0x04, 0x00, 0x00};
#define ALICE "S-1-5-21-436880987-830612363-2677326092-1102"

/* <text> parses, to <bin, n>, and prints back to itself. */
static void round_trip(const char *text, const unsigned char *bin, size_t n)
{
    unsigned char got[CM_SID_BIN_MAX];
    size_t len = sizeof got;
    char back[CM_SID_TEXT_MAX];

    if (cm_sid_to_binary(text, strlen(text), got, &len) != 0)
        fail_msg("\"%s\" refused", text);
    assert_int_equal(len, n);
    assert_memory_equal(got, bin, n);
    assert_int_equal(cm_sid_from_binary(got, len, back, sizeof back), 0);
    assert_string_equal(back, text);
}

/* A binary SID of <count> sub-authorities sub0, sub0+1, ... under <auth>. */
static size_t make_sid(unsigned char *b, uint64_t auth, size_t count, uint32_t sub0)
{
    b[0] = 1;
    b[1] = (unsigned char)count;
    for (int i = 7; i >= 2; i--, auth >>= 8)
        b[i] = (unsigned char)(auth & 0xFF);
    for (size_t i = 0; i < count; i++) {
        uint32_t v = sub0 + (uint32_t)i;
        for (size_t k = 0; k < 4; k++)
            b[8 + 4 * i + k] = (unsigned char)(v >> (8 * k));
    }
    return 8 + 4 * count;
}

static void test_sid_round_trip(void **state)
{
    unsigned char b[CM_SID_BIN_MAX + 8];
    char text[CM_SID_TEXT_MAX];
    size_t n;

    (void)state;
    round_trip(ALICE, alice_sid, sizeof alice_sid);
    n = make_sid(b, 5, 1, 18);
    round_trip("S-1-5-18", b, n); /* LocalSystem: one sub-authority */
    n = make_sid(b, 0, 1, 0);
    round_trip("S-1-0-0", b, n); /* Null SID: zeros are written "0" */
    n = make_sid(b, 0xFFFFFFFFull, 1, 0xFFFFFFFFu);
    round_trip("S-1-4294967295-4294967295", b, n); /* the largest decimal authority */

    /* MS-DTYP 2.4.2.1: from 2^32 on, the authority is "0x" and 12 hex digits. */
    n = make_sid(b, 1ull << 32, 1, 1);
    round_trip("S-1-0x000100000000-1", b, n);
    n = make_sid(b, (1ull << 48) - 1, 2, 7);
    round_trip("S-1-0xFFFFFFFFFFFF-7-8", b, n);
    n = make_sid(b, 0x123456789ABCull, 1, 1);
    round_trip("S-1-0x123456789ABC-1", b, n);

    /* Fifteen sub-authorities of 4294967295: the longest SID fits both buffers. */
    n = make_sid(b, (1ull << 48) - 1, 15, 0xFFFFFFFFu - 14);
    assert_int_equal(n, CM_SID_BIN_MAX);
    assert_int_equal(cm_sid_from_binary(b, n, text, sizeof text), 0);
    round_trip(text, b, n);
    memset(b + 8, 0xFF, 60);
    assert_int_equal(cm_sid_from_binary(b, n, text, sizeof text), 0);
    assert_int_equal(strlen(text), CM_SID_TEXT_MAX - 1);
    round_trip(text, b, n);
    /* ...but not into a buffer one byte short: refused, not truncated. */
    assert_int_equal(cm_sid_from_binary(b, n, text, CM_SID_TEXT_MAX - 1), -1);
    assert_string_equal(text, "");
    assert_int_equal(cm_sid_from_binary(b, n, text, 0), -1);

    /* Many SIDs, both directions. */
    uint64_t seed = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < 2000; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t auth = (seed >> 16) & ((1ull << 48) - 1);
        if (i % 2)
            auth &= 0xFFFFFFFFull >> (i % 32);
        n = make_sid(b, auth, 1 + (size_t)(i % 15), (uint32_t)(seed >> 7));
        assert_int_equal(cm_sid_from_binary(b, n, text, sizeof text), 0);
        round_trip(text, b, n);
    }
}

static void test_sid_binary_refused(void **state)
{
    unsigned char b[CM_SID_BIN_MAX + 8];
    char out[CM_SID_TEXT_MAX];
    size_t n;

    (void)state;
    assert_int_equal(cm_sid_from_binary(alice_sid, 0, out, sizeof out), -1);
    assert_int_equal(cm_sid_from_binary(alice_sid, 7, out, sizeof out), -1);
    assert_int_equal(cm_sid_from_binary(alice_sid, 8, out, sizeof out), -1); /* header only */
    assert_int_equal(cm_sid_from_binary(alice_sid, sizeof alice_sid - 1, out, sizeof out), -1);
    assert_int_equal(cm_sid_from_binary(NULL, 12, out, sizeof out), -1);
    memcpy(b, alice_sid, sizeof alice_sid);
    b[sizeof alice_sid] = 0;
    assert_int_equal(cm_sid_from_binary(b, sizeof alice_sid + 1, out, sizeof out), -1);
    b[1] = 6; /* says six sub-authorities, carries five */
    assert_int_equal(cm_sid_from_binary(b, sizeof alice_sid, out, sizeof out), -1);
    b[1] = 4; /* says four, carries five */
    assert_int_equal(cm_sid_from_binary(b, sizeof alice_sid, out, sizeof out), -1);
    b[0] = 2; /* revision */
    b[1] = 5;
    assert_int_equal(cm_sid_from_binary(b, sizeof alice_sid, out, sizeof out), -1);
    /* No sub-authority: a bare authority (S-1-5) is no account, and MS-DTYP's
     * text grammar asks for at least one. */
    n = make_sid(b, 5, 0, 0);
    assert_int_equal(cm_sid_from_binary(b, n, out, sizeof out), -1);
    /* Sixteen: one more than MS-DTYP allows. */
    memset(b, 0, sizeof b);
    b[0] = 1;
    b[1] = 16;
    assert_int_equal(cm_sid_from_binary(b, 8 + 64, out, sizeof out), -1);
    assert_string_equal(out, "");
}

static void test_sid_text_refused(void **state)
{
    static const char *const bad[] = {
        "",
        "S",
        "S-1-",
        "S-1-5", /* no sub-authority */
        "S-1-5-",
        "S-1-5--21",
        "S-1-5-21-",
        "S-1-5-21-x",
        "S-2-5-21",
        "S-01-5-21",
        "s-1-5-21", /* lower-case "s-": not the spelling objectSid is printed in */
        "S-1-5-21-1 ",
        " S-1-5-21",
        "S-1-5- 21",
        "S-1-5-+21",
        "S-1-+5-21",
        "S-1-5--1",
        "S-1-05-21", /* leading zeros */
        "S-1-5-021",
        "S-1-5-00",
        "S-1-5-4294967296",              /* sub-authority past 32 bits */
        "S-1-5-21-18446744073709551617", /* 2^64 + 1: must not wrap to 1 */
        "S-1-5-99999999999",
        "S-1-4294967296-1",      /* authority 2^32 in decimal: hex is its spelling */
        "S-1-281474976710656-1", /* past 48 bits */
        "S-1-0x00000000FFFF-1",  /* hex below 2^32: decimal is its spelling */
        "S-1-0x000100000000",    /* no sub-authority */
        "S-1-0x000100000000-",
        "S-1-0x00010000000-1",   /* 11 hex digits */
        "S-1-0x0001000000000-1", /* 13 */
        "S-1-0x00010000000a-1",  /* lower-case hex */
        "S-1-0X000100000000-1",
        "S-1-0x-1",
        "S-1-5-1-2-3-4-5-6-7-8-9-10-11-12-13-14-15-16", /* 16 sub-authorities */
        "S-1-5-21-1\n",
    };
    unsigned char out[CM_SID_BIN_MAX];
    size_t len;

    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        len = sizeof out;
        if (cm_sid_to_binary(bad[i], strlen(bad[i]), out, &len) != -1)
            fail_msg("\"%s\" accepted", bad[i]);
        assert_int_equal(len, sizeof out); /* untouched */
    }
    /* A NUL inside, and the length given is the end. */
    len = sizeof out;
    assert_int_equal(cm_sid_to_binary("S-1-5-21\0-1", 11, out, &len), -1);
    assert_int_equal(cm_sid_to_binary("S-1-5-21-1", 8, out, &len), 0);
    assert_int_equal(len, 12);
    assert_int_equal(out[8], 21);
    /* 15 sub-authorities are fine, in a buffer that holds them only. */
    const char *fifteen = "S-1-5-1-2-3-4-5-6-7-8-9-10-11-12-13-14-15";
    len = CM_SID_BIN_MAX - 1;
    assert_int_equal(cm_sid_to_binary(fifteen, strlen(fifteen), out, &len), -1);
    len = CM_SID_BIN_MAX;
    assert_int_equal(cm_sid_to_binary(fifteen, strlen(fifteen), out, &len), 0);
    assert_int_equal(len, CM_SID_BIN_MAX);
    assert_int_equal(cm_sid_to_binary(NULL, 0, out, &len), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hostile_table),      cmocka_unit_test(test_length_is_the_end),
        cmocka_unit_test(test_dirtext_bound),      cmocka_unit_test(test_sid_round_trip),
        cmocka_unit_test(test_sid_binary_refused), cmocka_unit_test(test_sid_text_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
