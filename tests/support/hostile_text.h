/* One table of hostile (and valid) text values for every test that feeds text
 * to certmapd: common/text's own tests, the LDAP entry checks and the LDIF
 * reader must all decide each row alike. <utf8> is what cm_utf8_valid answers
 * (certificate names), <dirtext> what cm_dirtext_valid answers (directory text). */
#ifndef CM_TEST_HOSTILE_TEXT_H
#define CM_TEST_HOSTILE_TEXT_H

#include <stdbool.h>
#include <stddef.h>

struct hostile_text {
    const char *name;
    const char *bytes;
    size_t len;
    bool utf8;
    bool dirtext;
};

#define HOSTILE(name, s, utf8, dirtext)                                                            \
    {                                                                                              \
        name, s, sizeof(s) - 1, utf8, dirtext                                                      \
    }

static const struct hostile_text hostile_texts[] = {
    HOSTILE("ascii", "alice@corp.example.test", true, true),
    HOSTILE("e acute U+00E9", "caf\xc3\xa9", true, true),
    HOSTILE("euro U+20AC", "\xe2\x82\xac", true, true),
    HOSTILE("G clef U+1D11E", "\xf0\x9d\x84\x9e", true, true),
    HOSTILE("NBSP U+00A0, first after C1", "\xc2\xa0", true, true),
    HOSTILE("U+07FF, last of two bytes", "\xdf\xbf", true, true),
    HOSTILE("U+D7FF, before the surrogates", "\xed\x9f\xbf", true, true),
    HOSTILE("U+E000, after the surrogates", "\xee\x80\x80", true, true),
    HOSTILE("U+FFFD", "\xef\xbf\xbd", true, true),
    HOSTILE("U+10000, first of four bytes", "\xf0\x90\x80\x80", true, true),
    HOSTILE("U+10FFFF, the last code point", "\xf4\x8f\xbf\xbf", true, true),

    HOSTILE("overlong NUL C0 80", "a\xc0\x80", false, false),
    HOSTILE("overlong '/' C0 AF", "\xc0\xaf", false, false),
    HOSTILE("overlong C1 BF", "\xc1\xbf", false, false),
    HOSTILE("overlong E0 80 80", "\xe0\x80\x80", false, false),
    HOSTILE("overlong E0 9F BF", "\xe0\x9f\xbf", false, false),
    HOSTILE("overlong F0 80 80 80", "\xf0\x80\x80\x80", false, false),
    HOSTILE("overlong F0 8F BF BF", "\xf0\x8f\xbf\xbf", false, false),
    HOSTILE("surrogate ED A0 80", "a\xed\xa0\x80", false, false),
    HOSTILE("surrogate ED BF BF", "\xed\xbf\xbf", false, false),
    HOSTILE("surrogate pair, CESU-8", "\xed\xa0\xb4\xed\xb4\x9e", false, false),
    HOSTILE("past U+10FFFF F4 90 80 80", "\xf4\x90\x80\x80", false, false),
    HOSTILE("F5 lead", "\xf5\x80\x80\x80", false, false),
    HOSTILE("five-byte F8 88 80 80 80", "\xf8\x88\x80\x80\x80", false, false),
    HOSTILE("FE", "\xfe", false, false),
    HOSTILE("FF", "\xff", false, false),
    HOSTILE("cut two-byte at the end", "a\xc3", false, false),
    HOSTILE("cut three-byte at the end", "\xe2\x82", false, false),
    HOSTILE("cut four-byte at the end", "\xf0\x9d\x84", false, false),
    HOSTILE("cut three-byte before ASCII", "\xe2\x82z", false, false),
    HOSTILE("lone continuation 80", "\x80", false, false),
    HOSTILE("lone continuation BF in a word", "a\xbf z", false, false),

    HOSTILE("NUL", "ali\0ce", false, false),
    HOSTILE("SOH 01", "a\x01", true, false),
    HOSTILE("TAB", "tab\there", true, false),
    HOSTILE("CR LF header injection", "alice\r\nX-Remote-User: admin", true, false),
    HOSTILE("ESC 1B", "\x1b[31m", true, false),
    HOSTILE("US 1F", "\x1f", true, false),
    HOSTILE("DEL 7F", "del\x7f", true, false),
    HOSTILE("C1 U+0080", "\xc2\x80", true, false),
    HOSTILE("NEL U+0085", "c1\xc2\x85", true, false),
    HOSTILE("C1 U+009F", "\xc2\x9f", true, false),
};

#define HOSTILE_TEXTS (sizeof(hostile_texts) / sizeof(hostile_texts[0]))

#endif
