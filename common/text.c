/* One UTF-8 decoder and one SID codec for every source (see text.h). Indices,
 * not pointers, walk the input: a NULL with length 0 is never offset. */
#include "common/text.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* The code point starting at <p> (<n> bytes left, n > 0) into <*cp>: its length
 * in bytes, or 0 when <p> does not start a well-formed RFC 3629 sequence. */
static size_t utf8_next(const unsigned char *p, size_t n, uint32_t *cp)
{
    unsigned c = p[0];
    size_t k;
    uint32_t v, min;

    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if ((c & 0xE0) == 0xC0) {
        k = 2, v = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        k = 3, v = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        k = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 0; /* a continuation byte, or F8..FF */
    }
    if (n < k)
        return 0;
    for (size_t i = 1; i < k; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        v = v << 6 | (p[i] & 0x3F);
    }
    /* Overlong forms, UTF-16 surrogates and code points past Unicode. */
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    *cp = v;
    return k;
}

/* The walk both rules share: <controls> false also refuses C0, DEL and C1. */
static bool text_valid(const char *s, size_t len, bool controls)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;

    while (i < len) {
        uint32_t cp;
        size_t k = utf8_next(p + i, len - i, &cp);
        if (k == 0 || cp == 0)
            return false;
        if (!controls && (cp < 0x20 || (cp >= 0x7F && cp < 0xA0)))
            return false;
        i += k;
    }
    return true;
}

bool cm_utf8_valid(const char *s, size_t len)
{
    return text_valid(s, len, true);
}

bool cm_dirtext_valid(const char *s, size_t len)
{
    return len <= CM_DIRTEXT_MAX && text_valid(s, len, false);
}

int cm_sid_from_binary(const unsigned char *b, size_t len, char *out, size_t outlen)
{
    uint64_t auth = 0;
    size_t used;
    int n;

    if (out != NULL && outlen > 0)
        out[0] = '\0';
    if (b == NULL || out == NULL || len < 8 || b[0] != 1 || b[1] == 0 || b[1] > 15 ||
        len != 8 + 4 * (size_t)b[1])
        return -1;
    for (int i = 2; i < 8; i++)
        auth = auth << 8 | b[i];
    if (auth >= 1ULL << 32)
        n = snprintf(out, outlen, "S-1-0x%012llX", (unsigned long long)auth);
    else
        n = snprintf(out, outlen, "S-1-%llu", (unsigned long long)auth);
    if (n < 0 || (size_t)n >= outlen)
        goto fail;
    used = (size_t)n;
    for (size_t i = 0; i < b[1]; i++) {
        const unsigned char *p = b + 8 + 4 * i;
        uint32_t sub =
            (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        n = snprintf(out + used, outlen - used, "-%lu", (unsigned long)sub);
        if (n < 0 || (size_t)n >= outlen - used)
            goto fail;
        used += (size_t)n;
    }
    return 0;
fail:
    if (outlen > 0)
        out[0] = '\0'; /* refused, not truncated */
    return -1;
}

/* 1 to 10 decimal digits at s[*i] without a leading zero, at most <max>; advances <*i>. */
static bool sid_decimal(const char *s, size_t n, size_t *i, uint64_t max, uint64_t *v)
{
    size_t start = *i;

    *v = 0;
    while (*i < n && s[*i] >= '0' && s[*i] <= '9') {
        if (*i - start == 10)
            return false;
        *v = *v * 10 + (uint64_t)(s[*i] - '0');
        (*i)++;
    }
    if (*i == start || (s[start] == '0' && *i - start > 1))
        return false;
    return *v <= max;
}

/* "0x" and exactly 12 upper-case hex digits at s[*i] (MS-DTYP's padded form). */
static bool sid_hex(const char *s, size_t n, size_t *i, uint64_t *v)
{
    static const char digits[] = "0123456789ABCDEF";

    if (n - *i < 14 || s[*i] != '0' || s[*i + 1] != 'x')
        return false;
    *v = 0;
    for (size_t j = *i + 2; j < *i + 14; j++) {
        const char *d = s[j] != '\0' ? strchr(digits, s[j]) : NULL;
        if (d == NULL)
            return false;
        *v = *v << 4 | (uint64_t)(d - digits);
    }
    *i += 14;
    return true;
}

int cm_sid_to_binary(const char *text, size_t textlen, unsigned char *out, size_t *len)
{
    unsigned char b[CM_SID_BIN_MAX];
    size_t i = 4, count = 0, n;
    uint64_t auth, v;

    if (text == NULL || out == NULL || len == NULL || textlen < 4 || memcmp(text, "S-1-", 4) != 0)
        return -1;
    if (textlen > 5 && text[4] == '0' && text[5] == 'x') {
        /* Hex is the spelling of 2^32 and above only. */
        if (!sid_hex(text, textlen, &i, &auth) || auth < 1ULL << 32)
            return -1;
    } else if (!sid_decimal(text, textlen, &i, UINT32_MAX, &auth)) {
        return -1;
    }
    while (i < textlen) {
        if (text[i] != '-' || count == 15)
            return -1;
        i++;
        if (!sid_decimal(text, textlen, &i, UINT32_MAX, &v))
            return -1;
        for (size_t k = 0; k < 4; k++)
            b[8 + 4 * count + k] = (unsigned char)(v >> (8 * k));
        count++;
    }
    n = 8 + 4 * count;
    if (count == 0 || *len < n)
        return -1;
    b[0] = 1;
    b[1] = (unsigned char)count;
    for (int k = 7; k >= 2; k--, auth >>= 8)
        b[k] = (unsigned char)(auth & 0xFF);
    memcpy(out, b, n);
    *len = n;
    return 0;
}
