/* conf/ private: the key table shared by the loader (conf.c) and the value
 * parsers and --help-config printer (keys.c). Nothing outside conf/ includes it. */
#ifndef CM_CONF_INTERNAL_H
#define CM_CONF_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "conf/conf.h"

enum conf_section {
    SEC_NONE = 0, /* before the first section header */
    SEC_SERVER,
    SEC_TLS,
    SEC_CLIENT_CERT,
    SEC_MAPPING,
    SEC_LDAP,
    SEC_BACKEND,
    SEC_BUFFERING,
    SEC_DELEGATION,
    SEC_METRICS,
    SEC_LOCATION, /* [location PATH]; its keys live in struct conf_location */
    SEC_MAX
};

/* Row flags. */
#define CK_REPEATABLE 0x1u /* may appear several times; each adds a value */
#define CK_REQUIRED 0x2u   /* must be set (checked after the whole file is read) */
#define CK_NO_APPLY 0x4u   /* <def> is only shown: the default is resolved later */

struct conf_enum {
    const char *name;
    int value;
};

struct conf_key;

/* Parses <val> (already trimmed) into the field <k> describes inside <base>
 * (a struct conf, or a struct conf_location for SEC_LOCATION keys). Returns 0,
 * or -1 with a reason (without the "FILE:LINE: [section] key: " prefix) in <msg>.
 * Replaces and frees any previous value, except for repeatable keys, which append. */
typedef int (*conf_parse_fn)(const struct conf_key *k, const char *val, void *base, char *msg,
                             size_t msglen);

struct conf_key {
    enum conf_section sec;
    const char *name;
    conf_parse_fn parse;
    size_t offset;                 /* of the field in struct conf / struct conf_location */
    size_t width;                  /* sizeof the field, for integer parsers */
    uint64_t min, max;             /* bounds, in the field's unit (bytes, ms, count) */
    const struct conf_enum *names; /* for enum parsers */
    const char *def;               /* default as written in a file; NULL: unset */
    unsigned flags;                /* CK_* */
    const char *help;              /* one line */
    const char *iis;               /* the IIS / Windows setting it corresponds to */
};

_Static_assert(SEC_MAX <= CONF_SECTION_SLOTS, "raise CONF_SECTION_SLOTS");

/* Enough for the table; keys.c checks it at compile time. */
#define CONF_KEYS_MAX CONF_KEY_SLOTS

extern const struct conf_key conf_keys[];
extern const size_t conf_n_keys;

/* conf/tlslists.c: checks a [tls] ciphers (TLS 1.2 and below), ciphersuites
 * (TLS 1.3) or groups value, in OpenSSL's syntax, with OpenSSL's own parsers.
 * Return 0, or -1 with a reason in <msg> (as for conf_parse_fn). */
int conf_check_ciphers(const char *val, char *msg, size_t n);
int conf_check_ciphersuites(const char *val, char *msg, size_t n);
int conf_check_groups(const char *val, char *msg, size_t n);

/* The bounds of <k> as --help-config shows them (" [1K..1M]", " [0..1024]"), or
 * "" for a key without bounds; in <out>, always NUL-terminated. */
void conf_key_range(const struct conf_key *k, char *out, size_t n);

/* Section name as written in brackets ("server", "location"); "" for SEC_NONE. */
const char *conf_section_name(enum conf_section s);

/* Writes <s> into <out> in double quotes, escaping bytes that are not printable
 * ASCII as \xNN so that hostile values cannot forge terminal output. <out>
 * always ends with a NUL; a value longer than <outlen> allows ends with "...". */
void conf_quote(const char *s, char *out, size_t outlen);

#endif
