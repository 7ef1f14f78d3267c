/* ldap/ internals shared by dir.c (the loop side), connect.c (synchronous
 * connect + TLS + bind, run off the loop) and entry.c (hostile LDAP answers →
 * struct map_entry). Not for other modules. */
#ifndef CM_LDAP_INTERNAL_H
#define CM_LDAP_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <ldap.h>

#include "conf/conf.h"
#include "mapping/mapping.h"

/* Most altSecurityIdentities per entry (a value's length: CM_DIRTEXT_MAX). */
#define DIR_MAX_ALTSECIDS 256

/* ---- connect.c ---------------------------------------------------------------- */

/* The service account's password from [ldap] bind_password_file
 * (conf_secret_read), or NULL with a reason naming the key in <err>. The
 * caller wipes it with conf_secret_free. */
char *dir_password_read(const struct conf *c, size_t *len, char *err, size_t errlen);

/* Connects to <uri> (LDAPS, or StartTLS for ldap://), verifies the server
 * against [ldap] ca_file and binds as [ldap] bind_dn, synchronously (off the
 * loop only). Returns the bound handle, or NULL with a reason in <err>. */
LDAP *dir_connect_bind(const struct conf *c, const char *uri, const char *pw, size_t pwlen,
                       bool *refused /* set when a server refused the bind; may be NULL */,
                       char *err, size_t errlen);

/* dir_connect_bind on each [ldap] uri in order; the first that binds wins and
 * its index goes to <which>. NULL when none does, every reason in <err>. */
LDAP *dir_connect_any(const struct conf *c, const char *pw, size_t pwlen, size_t *which,
                      bool *refused, char *err, size_t errlen);

/* "what: Text (code): server's diagnostic" from the last operation on <ld>. */
void dir_ld_error(LDAP *ld, int rc, const char *what, char *err, size_t errlen);

/* ---- entry.c ------------------------------------------------------------------ */

/* Fills <e> (zeroed by the caller) from a LDAP_RES_SEARCH_ENTRY. Every value is
 * checked (single-valued attributes once, strings by dir_text_dup, numbers in
 * range, objectSid by cm_sid_from_binary). Returns 0, or -1 with a
 * reason in <err>; <e> then holds what was taken so far (caller purges). */
int dir_entry_parse(LDAP *ld, LDAPMessage *msg, struct map_entry *e, char *err, size_t errlen);

/* Takes only msDS-User-Account-Control-Computed from an entry into <e>. */
int dir_entry_parse_computed(LDAP *ld, LDAPMessage *msg, struct map_entry *e, char *err,
                             size_t errlen);

/* LDAP GeneralizedTime in UTC as AD writes it ("20231122001234.0Z"): 0, or -1. */
int dir_parse_gentime(const char *s, size_t len, time_t *out);

/* A decimal integer with nothing around it, in [<min>, <max>]: 0, or -1. */
int dir_parse_int(const char *s, size_t len, int64_t min, int64_t max, int64_t *out);

/* A malloc'ed NUL-terminated copy of the value <bv>, or NULL when it is not
 * directory text (cm_dirtext_valid) or memory runs out. Every string of an
 * entry, its DN included, goes through it. */
char *dir_text_dup(const struct berval *bv);

#endif
