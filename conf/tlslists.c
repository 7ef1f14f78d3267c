/* [tls] ciphers, ciphersuites and groups: lists in OpenSSL's own syntax,
 * checked by OpenSSL's own parsers on a throwaway SSL_CTX (as [ldap] values
 * are checked by libldap's), so that `certmapd -t` reports with its line what
 * tls_ctx_new() would refuse, and also what OpenSSL would silently drop: each
 * setter accepts a list in which only some entries mean anything. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "conf/internal.h"

/* Room for a quoted value (conf_quote() ends longer ones with "..."). */
#define Q_MAX 512

enum list_kind { LIST_CIPHERS, LIST_CIPHERSUITES, LIST_GROUPS };

/* Whether OpenSSL's setter for <kind> takes <s> on <ctx> (1), or not (0). */
static int openssl_takes(SSL_CTX *ctx, enum list_kind kind, const char *s)
{
    int ok = kind == LIST_CIPHERS        ? SSL_CTX_set_cipher_list(ctx, s)
             : kind == LIST_CIPHERSUITES ? SSL_CTX_set_ciphersuites(ctx, s)
                                         : SSL_CTX_set1_groups_list(ctx, s);
    return ok == 1;
}

/* The reason of OpenSSL's last error, or "invalid list"; clears the queue. */
static const char *openssl_reason(void)
{
    const char *r = ERR_reason_error_string(ERR_peek_last_error());
    ERR_clear_error();
    return r != NULL ? r : "invalid list";
}

/* Checks each entry of <val> alone, then the whole list. Entries are split at
 * <seps>; with <skip_ops>, entries that remove, move or order ciphers (!, -,
 * +, @) are not checked alone: removing what is not there is harmless. */
static int check_list(enum list_kind kind, const char *val, const char *seps, bool skip_ops,
                      char *msg, size_t n)
{
    static const char *const what[] = {
        [LIST_CIPHERS] = "matches no cipher",
        [LIST_CIPHERSUITES] = "is not a TLS 1.3 suite",
        [LIST_GROUPS] = "is not a group",
    };
    static const char *const hint[] = {
        [LIST_CIPHERS] = "TLS 1.2 ciphers take OpenSSL's names, such as "
                         "ECDHE-ECDSA-AES128-GCM-SHA256; TLS 1.3 suites go in ciphersuites",
        [LIST_CIPHERSUITES] = "expected TLS 1.3 suites such as TLS_AES_128_GCM_SHA256; "
                              "TLS 1.2 ciphers go in ciphers",
        [LIST_GROUPS] = "expected groups such as X25519, prime256v1 (P-256), secp384r1 (P-384)",
    };
    char q[Q_MAX], entry[256];
    int rc = -1;
    SSL_CTX *ctx = NULL;

    conf_quote(val, q, sizeof(q));
    if (*val == '\0') {
        snprintf(msg, n, "an empty list is not allowed (leave the key out for the default)");
        goto done;
    }
    ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        snprintf(msg, n, "cannot create a TLS context to check the list: out of memory");
        goto done;
    }
    for (const char *p = val;; p++) {
        size_t len = strcspn(p, seps);
        const char *e = p;
        size_t elen = len;

        while (elen > 0 && *e == ' ')
            e++, elen--;
        while (elen > 0 && e[elen - 1] == ' ')
            elen--;
        if (elen == 0 && kind != LIST_CIPHERS) {
            snprintf(msg, n, "%s has an empty entry", q);
            goto done;
        }
        if (elen >= sizeof(entry)) {
            snprintf(msg, n, "%s has an entry that is too long", q);
            goto done;
        }
        memcpy(entry, e, elen);
        entry[elen] = '\0';
        if (elen > 0 && !(skip_ops && strchr("!-+@", entry[0]) != NULL) &&
            !openssl_takes(ctx, kind, entry)) {
            ERR_clear_error();
            conf_quote(entry, q, sizeof(q));
            if (kind == LIST_CIPHERS && openssl_takes(ctx, LIST_CIPHERSUITES, entry))
                snprintf(msg, n, "%s is a TLS 1.3 suite: those go in ciphersuites", q);
            else
                snprintf(msg, n, "%s %s this OpenSSL knows (%s)", q, what[kind], hint[kind]);
            goto done;
        }
        p += len;
        if (*p == '\0')
            break;
    }
    /* Every entry means something; the list as a whole can still fail. */
    if (!openssl_takes(ctx, kind, val)) {
        if (kind == LIST_CIPHERS && ERR_GET_REASON(ERR_peek_last_error()) == SSL_R_NO_CIPHER_MATCH)
            snprintf(msg, n,
                     "%s leaves no TLS 1.2 cipher (OpenSSL needs one, even with min_protocol = "
                     "TLSv1.3)",
                     q);
        else if (kind == LIST_GROUPS)
            /* the one way single groups pass and the list fails; OpenSSL says nothing */
            snprintf(msg, n, "%s names a group twice (P-256, prime256v1 and secp256r1 are one)", q);
        else
            snprintf(msg, n, "%s is refused by OpenSSL: %s", q, openssl_reason());
        goto done;
    }
    rc = 0;
done:
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return rc;
}

int conf_check_ciphers(const char *val, char *msg, size_t n)
{
    /* the separators of OpenSSL's cipher strings (ssl/ssl_ciph.c ITEM_SEP) */
    return check_list(LIST_CIPHERS, val, ": ;,", true, msg, n);
}

int conf_check_ciphersuites(const char *val, char *msg, size_t n)
{
    return check_list(LIST_CIPHERSUITES, val, ":", false, msg, n);
}

int conf_check_groups(const char *val, char *msg, size_t n)
{
    return check_list(LIST_GROUPS, val, ":", false, msg, n);
}
