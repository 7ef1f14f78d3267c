/* Text and SIDs as every source reads them: one UTF-8 decoder and one SID
 * codec, so that a certificate, an LDAP answer and an LDIF file are judged by
 * the same rules. Pure functions, no allocation, thread-safe. */
#ifndef CM_TEXT_H
#define CM_TEXT_H

#include <stdbool.h>
#include <stddef.h>

/* Longest directory text value (DN, UPN, sAMAccountName, ...), in bytes. */
#define CM_DIRTEXT_MAX 16384

/* Longest binary SID: revision, count, 6-byte authority, 15 sub-authorities. */
#define CM_SID_BIN_MAX 68
/* Longest SID text and its NUL: "S-1-0x" + 12 hex digits + 15 x "-4294967295". */
#define CM_SID_TEXT_MAX 184

/* True when <s, len> is UTF-8 as RFC 3629 has it (shortest forms only, no
 * surrogates D800-DFFF, nothing past U+10FFFF, no sequence cut short) and
 * holds no NUL, so that a C string carries it whole. <s> may be NULL when
 * <len> is 0. */
bool cm_utf8_valid(const char *s, size_t len);

/* True when <s, len> is directory text: cm_utf8_valid, at most CM_DIRTEXT_MAX
 * bytes, and no control character (C0, DEL, C1: U+0000-001F, U+007F-009F).
 * The one rule for values read from AD or an LDIF file: they reach HTTP
 * headers and logs. */
bool cm_dirtext_valid(const char *s, size_t len);

/* The binary SID <b, len> (MS-DTYP 2.4.2.2: revision 1, 1 to 15 sub-authorities,
 * nothing after them) as "S-1-5-21-..." in <out> (MS-DTYP 2.4.2.1: authority in
 * decimal below 2^32, else "0x" and 12 upper-case hex digits). 0, or -1 when
 * malformed or <outlen> is too small (<out> then holds "" if it has room). */
int cm_sid_from_binary(const unsigned char *b, size_t len, char *out, size_t outlen);

/* The SID text <text, textlen> in binary into <out>; <*len> is the room in <out>
 * (CM_SID_BIN_MAX suffices), then the SID's length. Only what cm_sid_from_binary
 * writes is accepted ("S-" upper-case, no sign, space or leading zero, hex only
 * from 2^32 on): equal texts are equal SIDs. 0, or -1 with <out>, <*len> untouched. */
int cm_sid_to_binary(const char *text, size_t textlen, unsigned char *out, size_t *len);

#endif
