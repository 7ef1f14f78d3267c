/* Directory answers → struct map_entry. LDAP answers are as hostile as client
 * input: every string must be directory text (cm_dirtext_valid: bounded UTF-8
 * without control characters, the rule the LDIF source applies too), objectSid
 * a well-formed binary SID, single-valued attributes must have exactly one
 * value, numbers must parse whole. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/text.h"
#include "ldap/internal.h"

int dir_parse_int(const char *s, size_t len, int64_t min, int64_t max, int64_t *out)
{
    size_t i = 0;
    bool neg = false;
    uint64_t v = 0;

    if (len > 0 && s[0] == '-') {
        neg = true;
        i = 1;
    }
    if (i == len || len - i > 19)
        return -1;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    /* 19 digits fit in uint64_t; the int64_t range is checked before converting. */
    if (!neg && v > (uint64_t)INT64_MAX)
        return -1;
    if (neg && v > (uint64_t)INT64_MAX + 1)
        return -1;
    int64_t r = neg ? (v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v) : (int64_t)v;
    if (r < min || r > max)
        return -1;
    *out = r;
    return 0;
}

static int digits(const char *s, size_t n, int *out)
{
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

int dir_parse_gentime(const char *s, size_t len, time_t *out)
{
    int y, mo, d, h, mi, sec;
    size_t i = 14;
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

    if (len < 15 || digits(s, 4, &y) || digits(s + 4, 2, &mo) || digits(s + 6, 2, &d) ||
        digits(s + 8, 2, &h) || digits(s + 10, 2, &mi) || digits(s + 12, 2, &sec))
        return -1;
    /* A fraction of the second ("20231122001234.0Z") is allowed and dropped. */
    if (s[i] == '.' || s[i] == ',') {
        size_t start = ++i;
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == start)
            return -1;
    }
    if (i + 1 != len || s[i] != 'Z')
        return -1;
    if (y < 1601 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59 ||
        sec > 60)
        return -1;
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (mo == 2 && d == 29 && !leap)
        return -1;
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = mo - 1,
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = sec > 59 ? 59 : sec};
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return -1;
    *out = t;
    return 0;
}

char *dir_text_dup(const struct berval *bv)
{
    if (!cm_dirtext_valid(bv->bv_val, bv->bv_len))
        return NULL;
    char *s = malloc(bv->bv_len + 1);
    if (s != NULL) {
        memcpy(s, bv->bv_val, bv->bv_len);
        s[bv->bv_len] = '\0';
    }
    return s;
}

static int take_int32(const struct berval *bv, uint32_t *out)
{
    int64_t v;
    /* Integer syntax is signed 32-bit: AD writes flags above 0x7fffffff negative. */
    if (dir_parse_int(bv->bv_val, bv->bv_len, INT32_MIN, UINT32_MAX, &v) != 0)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

enum attr_id {
    A_UPN,
    A_SAM,
    A_SID,
    A_UAC,
    A_UAC_COMPUTED,
    A_EXPIRES,
    A_CREATED,
    A_ALTSECID,
    A_OBJECTCLASS,
    A_DNSHOSTNAME,
    A_OTHER
};

static enum attr_id attr_id(const char *a)
{
    static const struct {
        const char *name;
        enum attr_id id;
    } names[] = {
        {"userPrincipalName", A_UPN},
        {"sAMAccountName", A_SAM},
        {"objectSid", A_SID},
        {"userAccountControl", A_UAC},
        {"msDS-User-Account-Control-Computed", A_UAC_COMPUTED},
        {"accountExpires", A_EXPIRES},
        {"whenCreated", A_CREATED},
        {"altSecurityIdentities", A_ALTSECID},
        {"objectClass", A_OBJECTCLASS},
        {"dNSHostName", A_DNSHOSTNAME},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(a, names[i].name) == 0)
            return names[i].id;
    return A_OTHER;
}

/* One attribute's values into <e>; <seen> catches an attribute sent twice. */
static int take_attr(struct map_entry *e, enum attr_id id, struct berval **v, unsigned *seen,
                     const char **why)
{
    size_t n = 0;
    while (v != NULL && v[n] != NULL)
        n++;
    if (id == A_OTHER)
        return 0;
    if (*seen & (1u << id)) {
        *why = "attribute sent twice";
        return -1;
    }
    *seen |= 1u << id;
    bool multi = id == A_ALTSECID || id == A_OBJECTCLASS;
    if (n == 0 || (!multi && n != 1)) {
        *why = n == 0 ? "attribute without values" : "several values for a single-valued attribute";
        return -1;
    }
    int64_t i64;
    char **slot = NULL;
    switch (id) {
    case A_UPN:
        slot = &e->upn;
        break;
    case A_SAM:
        slot = &e->sam;
        break;
    case A_DNSHOSTNAME:
        slot = &e->dns_host_name;
        break;
    case A_SID: {
        char sid[CM_SID_TEXT_MAX];
        if (cm_sid_from_binary((const unsigned char *)v[0]->bv_val, v[0]->bv_len, sid,
                               sizeof sid) != 0) {
            *why = "malformed objectSid";
            return -1;
        }
        e->sid = strdup(sid);
        if (e->sid == NULL)
            goto oom;
        return 0;
    }
    case A_UAC:
    case A_UAC_COMPUTED: {
        uint32_t *out = id == A_UAC ? &e->uac : &e->uac_computed;
        if (take_int32(v[0], out) != 0) {
            *why = "not a 32-bit integer";
            return -1;
        }
        if (id == A_UAC_COMPUTED)
            e->has_uac_computed = true;
        return 0;
    }
    case A_EXPIRES:
        if (dir_parse_int(v[0]->bv_val, v[0]->bv_len, INT64_MIN, INT64_MAX, &i64) != 0) {
            *why = "not a 64-bit integer";
            return -1;
        }
        e->account_expires = i64;
        return 0;
    case A_CREATED:
        if (dir_parse_gentime(v[0]->bv_val, v[0]->bv_len, &e->when_created) != 0) {
            *why = "not a GeneralizedTime";
            return -1;
        }
        return 0;
    case A_OBJECTCLASS:
        for (size_t i = 0; i < n; i++)
            if (v[i]->bv_len == 8 && strncasecmp(v[i]->bv_val, "computer", 8) == 0)
                e->is_computer = true;
        return 0;
    case A_ALTSECID:
        if (n > DIR_MAX_ALTSECIDS) {
            *why = "too many values";
            return -1;
        }
        e->altsecids = calloc(n, sizeof *e->altsecids);
        if (e->altsecids == NULL)
            goto oom;
        for (size_t i = 0; i < n; i++) {
            e->altsecids[i] = dir_text_dup(v[i]);
            if (e->altsecids[i] == NULL) {
                *why = "value too long, not UTF-8 or with control characters";
                return -1;
            }
            e->n_altsecids = i + 1;
        }
        return 0;
    default:
        return 0;
    }
    *slot = dir_text_dup(v[0]);
    if (*slot == NULL) {
        *why = "value too long, not UTF-8 or with control characters";
        return -1;
    }
    return 0;
oom:
    *why = "out of memory";
    return -1;
}

/* Walks the attributes of <msg>; <only> restricts to one attribute (A_OTHER: all). */
static int parse_attrs(LDAP *ld, LDAPMessage *msg, struct map_entry *e, enum attr_id only,
                       char *err, size_t errlen)
{
    BerElement *ber = NULL;
    unsigned seen = 0;
    int ret = 0;

    for (char *a = ldap_first_attribute(ld, msg, &ber); a != NULL;
         a = ldap_next_attribute(ld, msg, ber)) {
        enum attr_id id = attr_id(a);
        const char *why = NULL;
        if (only == A_OTHER || id == only) {
            struct berval **v = ldap_get_values_len(ld, msg, a);
            ret = take_attr(e, id, v, &seen, &why);
            ldap_value_free_len(v);
        }
        if (ret != 0) {
            snprintf(err, errlen, "entry \"%s\": %.64s: %s", e->dn ? e->dn : "?", a, why);
            ldap_memfree(a);
            break;
        }
        ldap_memfree(a);
    }
    ber_free(ber, 0);
    return ret;
}

static int parse_dn(LDAP *ld, LDAPMessage *msg, struct map_entry *e, char *err, size_t errlen)
{
    BerElement *ber = NULL;
    struct berval dn = {0, NULL};
    int rc = ldap_get_dn_ber(ld, msg, &ber, &dn);
    int ret = -1;
    if (rc != LDAP_SUCCESS) {
        snprintf(err, errlen, "entry without a DN: %s", ldap_err2string(rc));
        goto fail;
    }
    e->dn = dn.bv_len > 0 ? dir_text_dup(&dn) : NULL;
    if (e->dn == NULL) {
        snprintf(err, errlen, "entry DN empty, too long, not UTF-8 or with control characters");
        goto fail;
    }
    ret = 0;
fail:
    ber_free(ber, 0);
    return ret;
}

int dir_entry_parse(LDAP *ld, LDAPMessage *msg, struct map_entry *e, char *err, size_t errlen)
{
    if (parse_dn(ld, msg, e, err, errlen) != 0)
        return -1;
    return parse_attrs(ld, msg, e, A_OTHER, err, errlen);
}

int dir_entry_parse_computed(LDAP *ld, LDAPMessage *msg, struct map_entry *e, char *err,
                             size_t errlen)
{
    return parse_attrs(ld, msg, e, A_UAC_COMPUTED, err, errlen);
}
