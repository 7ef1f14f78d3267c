/* Certificate facts → the directory lookups AD would make (KB5014754,
 * MS-PKCA 3.1.5.2.1): one lookup per configured method, in order, each a list
 * of values for one attribute and an LDAP filter that libldap escaped. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ldap.h>

#include "common/text.h"
#include "mapping/internal.h"

/* Only user and computer objects are accounts a certificate may log on as. */
#define ACCOUNTS "(|(objectClass=user)(objectClass=computer))"

static void lookup_purge(struct map_lookup *l)
{
    for (size_t i = 0; i < l->n_values; i++)
        free(l->values[i]);
    free(l->values);
    free(l->strength);
    free(l->labels);
    free(l->filter);
    memset(l, 0, sizeof(*l));
}

void map_plan_purge(struct map_plan *p)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->n; i++)
        lookup_purge(&p->lookups[i]);
    free(p->lookups);
    p->lookups = NULL;
    p->n = 0;
}

/* Adds the concatenation of <a> <b> <c> <d> (NULL: nothing) to <l> unless an
 * equal value (AD's comparison) is already there. Returns -1 when out of memory. */
static int add_value(struct map_lookup *l, enum map_strength strength, const char *label,
                     const char *a, const char *b, const char *c, const char *d)
{
    const char *parts[4] = {a, b, c, d};
    size_t n = 1, k = l->n_values;
    char *v;

    for (int i = 0; i < 4; i++)
        n += parts[i] ? strlen(parts[i]) : 0;
    v = malloc(n);
    if (v == NULL)
        return -1;
    v[0] = '\0';
    for (int i = 0; i < 4; i++)
        if (parts[i] != NULL)
            strcat(v, parts[i]);
    for (size_t i = 0; i < k; i++) {
        if (strcasecmp(l->values[i], v) == 0) {
            free(v);
            return 0;
        }
    }
    char **values = realloc(l->values, (k + 1) * sizeof(*values));
    if (values != NULL)
        l->values = values;
    enum map_strength *st = realloc(l->strength, (k + 1) * sizeof(*st));
    if (st != NULL)
        l->strength = st;
    const char **labels = realloc(l->labels, (k + 1) * sizeof(*labels));
    if (labels != NULL)
        l->labels = labels;
    if (values == NULL || st == NULL || labels == NULL) {
        free(v);
        return -1;
    }
    l->values[k] = v;
    l->strength[k] = strength;
    l->labels[k] = label;
    l->n_values = k + 1;
    return 0;
}

/* Appends <s> (length <n>) to the growing string <*buf>. */
static int append(char **buf, size_t *len, const char *s, size_t n)
{
    char *p = realloc(*buf, *len + n + 1);
    if (p == NULL)
        return -1;
    memcpy(p + *len, s, n);
    *len += n;
    p[*len] = '\0';
    *buf = p;
    return 0;
}

/* "(<attr>=<escaped value>)" for the raw bytes <v, n>, appended to <*buf>. */
static int append_assertion(char **buf, size_t *len, const char *attr, const void *v, size_t n)
{
    struct berval in = {.bv_len = n, .bv_val = (char *)(uintptr_t)v};
    struct berval out = {0};
    int rc = -1;

    if (ldap_bv2escaped_filter_value(&in, &out) != 0 || out.bv_val == NULL)
        return -1;
    if (append(buf, len, "(", 1) == 0 && append(buf, len, attr, strlen(attr)) == 0 &&
        append(buf, len, "=", 1) == 0 && append(buf, len, out.bv_val, out.bv_len) == 0 &&
        append(buf, len, ")", 1) == 0)
        rc = 0;
    ber_memfree(out.bv_val);
    return rc;
}

/* The filter of <l>: accounts only, computers only for dNSHostName, and any
 * of the values; objectSid values are written in their binary form. */
static int build_filter(struct map_lookup *l)
{
    char *f = NULL;
    size_t len = 0;
    int rc = -1;
    const char *head =
        l->method == METHOD_DNS ? "(&" ACCOUNTS "(objectClass=computer)" : "(&" ACCOUNTS;

    if (append(&f, &len, head, strlen(head)) != 0)
        goto fail;
    if (l->n_values > 1 && append(&f, &len, "(|", 2) != 0)
        goto fail;
    for (size_t i = 0; i < l->n_values; i++) {
        unsigned char sid[CM_SID_BIN_MAX];
        const void *v = l->values[i];
        size_t n = strlen(l->values[i]);
        if (l->method == METHOD_SID) {
            size_t text_len = n;
            n = sizeof sid;
            v = sid;
            if (cm_sid_to_binary(l->values[i], text_len, sid, &n) != 0)
                goto fail;
        }
        if (append_assertion(&f, &len, l->attr, v, n) != 0)
            goto fail;
    }
    if (l->n_values > 1 && append(&f, &len, ")", 1) != 0)
        goto fail;
    if (append(&f, &len, ")", 1) != 0)
        goto fail;
    l->filter = f;
    f = NULL;
    rc = 0;
fail:
    free(f);
    return rc;
}

/* Fills <l> for <method>; a lookup with no values is left empty (n_values 0). */
static int plan_method(enum map_method method, const struct cert_facts *f, struct map_lookup *l)
{
    const enum map_strength S = MAP_STRONG, W = MAP_WEAK;
    int rc = 0;

    l->method = method;
    switch (method) {
    case METHOD_SID:
        l->kind = "sid";
        l->attr = "objectSid";
        if (map_cert_sid(f) != NULL)
            rc = add_value(l, S, f->sid != NULL ? "sid" : "sid:url", map_cert_sid(f), NULL, NULL,
                           NULL);
        break;
    case METHOD_ALTSECID:
        l->kind = "altsecid";
        l->attr = "altSecurityIdentities";
        if (f->issuer_asi == NULL || f->serial_rev == NULL || f->subject_asi == NULL)
            break;
        rc |= add_value(l, S, "altsecid:issuer-serial", "X509:<I>", f->issuer_asi, "<SR>",
                        f->serial_rev);
        /* Issuer and SID: strong, for a certificate that carries a SID
         * (extension or SAN URL); the issuer binds it to one CA. */
        if (map_cert_sid(f) != NULL)
            rc |= add_value(l, S, "altsecid:issuer-sid", "X509:<I>", f->issuer_asi, "<SID>",
                            map_cert_sid(f));
        if (f->ski != NULL)
            rc |= add_value(l, S, "altsecid:ski", "X509:<SKI>", f->ski, NULL, NULL);
        /* <SHA1-PUKEY>: Microsoft documents the SHA-1 of the public key; field
         * reports (ESC14) see AD match the certificate's SHA-1 thumbprint. Both
         * are looked up, each strong, each with its own label
         * (docs/mapping.md). */
        rc |=
            add_value(l, S, "altsecid:sha1-pukey", "X509:<SHA1-PUKEY>", f->pubkey_sha1, NULL, NULL);
        rc |= add_value(l, S, "altsecid:sha1-cert", "X509:<SHA1-PUKEY>", f->sha1, NULL, NULL);
        /* An empty subject names nobody: no subject forms for it. */
        if (f->subject_asi[0] != '\0') {
            rc |= add_value(l, W, "altsecid:issuer-subject", "X509:<I>", f->issuer_asi, "<S>",
                            f->subject_asi);
            rc |= add_value(l, W, "altsecid:subject", "X509:<S>", f->subject_asi, NULL, NULL);
        }
        for (size_t i = 0; i < f->n_rfc822; i++)
            rc |= add_value(l, W, "altsecid:rfc822", "X509:<RFC822>", f->rfc822[i], NULL, NULL);
        break;
    case METHOD_UPN:
        l->kind = "upn";
        l->attr = "userPrincipalName";
        for (size_t i = 0; i < f->n_upn; i++)
            rc |= add_value(l, W, "upn", f->upn[i], NULL, NULL, NULL);
        break;
    case METHOD_DNS:
        l->kind = "dns";
        l->attr = "dNSHostName";
        for (size_t i = 0; i < f->n_dns; i++)
            rc |= add_value(l, W, "dns", f->dns[i], NULL, NULL, NULL);
        break;
    default:
        rc = -1;
    }
    return rc == 0 ? 0 : -1;
}

int map_plan_build(const struct conf *c, const struct cert_facts *f, struct map_plan *out)
{
    struct map_plan p = {0};

    memset(out, 0, sizeof(*out));
    if (c->n_methods == 0)
        return 0;
    p.lookups = calloc(c->n_methods, sizeof(*p.lookups));
    if (p.lookups == NULL)
        goto fail;
    for (size_t i = 0; i < c->n_methods; i++) {
        struct map_lookup *l = &p.lookups[p.n];
        if (plan_method(c->methods[i], f, l) != 0) {
            lookup_purge(l);
            goto fail;
        }
        if (l->n_values == 0) {
            lookup_purge(l); /* nothing in the certificate for this method */
            continue;
        }
        p.n++;
        if (build_filter(l) != 0)
            goto fail;
    }
    *out = p;
    return 0;
fail:
    map_plan_purge(&p);
    return -1;
}
