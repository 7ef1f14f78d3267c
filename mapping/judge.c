/* The verdict from the directory's answers, by the rules the KDC applies since
 * KB5014754 (docs/mapping.md has them with their sources): the first lookup
 * with a strong match decides (a weak match of an account whose objectSid is
 * the certificate's SID counts as strong); weak matches count only as
 * enforcement allows; then the certificate's SID (extension or SAN URL) and
 * the account's state are checked. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mapping/internal.h"

/* 1601-01-01 to 1970-01-01 in seconds, and FILETIME ticks per second. */
#define FILETIME_UNIX_DIFF 11644473600ll
#define FILETIME_PER_S 10000000ll

#define UAC_ACCOUNTDISABLE 0x2u
#define UACC_LOCKOUT 0x10u
#define UACC_PASSWORD_EXPIRED 0x800000u

/* Longest detail line; the rest is cut with "..." (a log line, not data). */
#define DETAIL_MAX 2048

void map_entry_purge(struct map_entry *e)
{
    if (e == NULL)
        return;
    free(e->dn);
    free(e->upn);
    free(e->sam);
    free(e->sid);
    for (size_t i = 0; i < e->n_altsecids; i++)
        free(e->altsecids[i]);
    free(e->altsecids);
    free(e->dns_host_name);
    memset(e, 0, sizeof(*e));
}

static int dup_or_null(char **dst, const char *src)
{
    *dst = src ? strdup(src) : NULL;
    return src != NULL && *dst == NULL ? -1 : 0;
}

int map_entry_copy(struct map_entry *dst, const struct map_entry *src)
{
    *dst = *src;
    dst->dn = dst->upn = dst->sam = dst->sid = dst->dns_host_name = NULL;
    dst->altsecids = NULL;
    dst->n_altsecids = 0;
    if (dup_or_null(&dst->dn, src->dn) || dup_or_null(&dst->upn, src->upn) ||
        dup_or_null(&dst->sam, src->sam) || dup_or_null(&dst->sid, src->sid) ||
        dup_or_null(&dst->dns_host_name, src->dns_host_name))
        goto fail;
    if (src->n_altsecids > 0) {
        dst->altsecids = calloc(src->n_altsecids, sizeof(*dst->altsecids));
        if (dst->altsecids == NULL)
            goto fail;
        for (; dst->n_altsecids < src->n_altsecids; dst->n_altsecids++)
            if (dup_or_null(&dst->altsecids[dst->n_altsecids], src->altsecids[dst->n_altsecids]))
                goto fail;
    }
    return 0;
fail:
    map_entry_purge(dst);
    return -1;
}

void map_result_purge(struct map_result *r)
{
    if (r == NULL)
        return;
    free(r->upn);
    free(r->dn);
    free(r->sid);
    free(r->sam);
    free(r->method);
    free(r->detail);
    memset(r, 0, sizeof(*r));
}

int map_result_copy(struct map_result *dst, const struct map_result *src)
{
    memset(dst, 0, sizeof(*dst));
    dst->reason = src->reason;
    if (dup_or_null(&dst->upn, src->upn) || dup_or_null(&dst->dn, src->dn) ||
        dup_or_null(&dst->sid, src->sid) || dup_or_null(&dst->sam, src->sam) ||
        dup_or_null(&dst->method, src->method) || dup_or_null(&dst->detail, src->detail)) {
        map_result_purge(dst);
        return -1;
    }
    return 0;
}

/* Which of <l>'s values <v> equals, strongest first; -1 when none. */
static long value_index(const struct map_lookup *l, const char *v, long best)
{
    if (v == NULL)
        return best;
    for (size_t i = 0; i < l->n_values; i++) {
        if (strcasecmp(l->values[i], v) != 0)
            continue;
        if (best < 0 || l->strength[i] < l->strength[best])
            best = (long)i;
    }
    return best;
}

bool map_entry_matches(const struct map_lookup *l, const struct map_entry *e, size_t *strongest)
{
    long best = -1;

    switch (l->method) {
    case METHOD_SID:
        best = value_index(l, e->sid, best);
        break;
    case METHOD_ALTSECID:
        for (size_t i = 0; i < e->n_altsecids; i++)
            best = value_index(l, e->altsecids[i], best);
        break;
    case METHOD_UPN:
        best = value_index(l, e->upn, best);
        break;
    case METHOD_DNS:
        if (e->is_computer)
            best = value_index(l, e->dns_host_name, best);
        break;
    default:
        break;
    }
    if (best >= 0 && strongest != NULL)
        *strongest = (size_t)best;
    return best >= 0;
}

/* What one lookup's answer says. */
enum step { STEP_NOTHING, STEP_WEAK_REFUSED, STEP_AMBIGUOUS, STEP_MAPPED };

struct step_out {
    enum step step;
    const struct map_entry *account;
    const char *label;
    bool strong;
    bool by_sid; /* strong only because the account's objectSid is the certificate's SID */
};

/* Whether <e>'s objectSid is the certificate's SID (both in objectSid's one
 * spelling, so the texts compare as the SIDs do). */
static bool sid_matches(const struct cert_facts *f, const struct map_entry *e)
{
    const char *sid = map_cert_sid(f);
    return sid != NULL && e->sid != NULL && strcasecmp(e->sid, sid) == 0;
}

/* Judges lookup <l>'s <entries>. An entry that does not really hold one of
 * the values (a directory that matched more loosely) is not trusted. */
static void judge_lookup(const struct conf *c, const struct cert_facts *f,
                         const struct map_lookup *l, const struct map_entry *entries, size_t n,
                         struct step_out *out)
{
    const struct map_entry *strong = NULL, *weak = NULL;
    const char *strong_label = NULL, *weak_label = NULL;
    bool strong_many = false, weak_many = false, strong_by_sid = false;

    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < n; i++) {
        const struct map_entry *e = &entries[i];
        size_t k;
        if (e->dn == NULL || !map_entry_matches(l, e, &k))
            continue;
        /* KB5014754: a weak mapping of a certificate whose SID (extension or
         * SAN URL) is the account's objectSid is a strong one. */
        bool by_sid = l->strength[k] != MAP_STRONG && sid_matches(f, e);
        if (l->strength[k] == MAP_STRONG || by_sid) {
            if (strong != NULL && strcasecmp(strong->dn, e->dn) != 0)
                strong_many = true;
            if (strong == NULL) {
                strong = e;
                strong_label = l->labels[k];
                strong_by_sid = by_sid;
            }
        } else {
            if (weak != NULL && strcasecmp(weak->dn, e->dn) != 0)
                weak_many = true;
            if (weak == NULL) {
                weak = e;
                weak_label = l->labels[k];
            }
        }
    }
    if (strong != NULL) {
        out->step = strong_many ? STEP_AMBIGUOUS : STEP_MAPPED;
        out->account = strong;
        out->label = strong_label;
        out->strong = true;
        out->by_sid = strong_by_sid;
        return;
    }
    if (weak == NULL)
        return;
    out->account = weak;
    out->label = weak_label;
    if (c->enforcement == ENFORCE_FULL) {
        out->step = STEP_WEAK_REFUSED;
    } else if (weak_many) {
        out->step = STEP_AMBIGUOUS;
    } else if (c->enforcement == ENFORCE_DISABLED) {
        out->step = STEP_MAPPED;
    } else {
        /* Compatibility: only a certificate issued after the account was
         * created (less the backdating allowance); unknown creation time
         * cannot show that, so it is refused. */
        bool after = weak->when_created != 0 &&
                     f->not_before + MAP_BACKDATING_ALLOWANCE_S >= weak->when_created;
        out->step = after ? STEP_MAPPED : STEP_WEAK_REFUSED;
    }
}

bool map_judge_settles(const struct conf *c, const struct cert_facts *f, const struct map_plan *p,
                       size_t i, const struct map_entry *entries, size_t n, time_t now)
{
    struct step_out s;

    (void)now;
    if (i >= p->n)
        return true;
    judge_lookup(c, f, &p->lookups[i], entries, n, &s);
    return s.step == STEP_AMBIGUOUS || s.step == STEP_MAPPED;
}

/* Appends printf output to <buf> (DETAIL_MAX), control characters as \xNN so
 * that a certificate value cannot break the log line. */
static void detail_add(char *buf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void detail_add(char *buf, const char *fmt, ...)
{
    char tmp[DETAIL_MAX];
    size_t len = strlen(buf);
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    for (const unsigned char *s = (const unsigned char *)tmp; *s != '\0'; s++) {
        if (len + 5 >= DETAIL_MAX) {
            memcpy(buf + DETAIL_MAX - 4, "...", 4);
            return;
        }
        if (*s < 0x20 || *s == 0x7F)
            len += (size_t)snprintf(buf + len, DETAIL_MAX - len, "\\x%02X", *s);
        else
            buf[len++] = (char)*s;
        buf[len] = '\0';
    }
}

/* "no account has altSecurityIdentities X509:… or …, or userPrincipalName …" */
static void detail_tried(char *buf, const struct map_plan *p)
{
    if (p->n == 0) {
        detail_add(buf, "nothing in the certificate to look up by the configured methods");
        return;
    }
    detail_add(buf, "no account has");
    for (size_t i = 0; i < p->n; i++) {
        const struct map_lookup *l = &p->lookups[i];
        detail_add(buf, "%s %s", i == 0 ? "" : (i + 1 == p->n ? ", or" : ","), l->attr);
        for (size_t k = 0; k < l->n_values; k++)
            detail_add(buf, "%s %s", k == 0 ? "" : " or", l->values[k]);
    }
}

static bool account_expired(int64_t v, time_t now)
{
    if (v == 0 || v == INT64_MAX)
        return false;
    /* A negative or pre-1970 value is in the past: expired (fail closed). */
    return v / FILETIME_PER_S - FILETIME_UNIX_DIFF <= (int64_t)now;
}

/* Why the account <e> may not log on, or NULL. */
static const char *account_state(const struct map_entry *e, time_t now)
{
    if (e->uac & UAC_ACCOUNTDISABLE)
        return "is disabled";
    if (e->has_uac_computed && (e->uac_computed & UACC_LOCKOUT))
        return "is locked out";
    if (e->has_uac_computed && (e->uac_computed & UACC_PASSWORD_EXPIRED))
        return "has an expired password";
    if (account_expired(e->account_expires, now))
        return "has expired";
    return NULL;
}

static int fill_account(struct map_result *res, const struct map_entry *e, const char *label,
                        const char *netbios)
{
    if (dup_or_null(&res->dn, e->dn) || dup_or_null(&res->upn, e->upn) ||
        dup_or_null(&res->sid, e->sid) || dup_or_null(&res->method, label))
        return -1;
    if (e->sam != NULL && netbios != NULL && *netbios != '\0') {
        size_t n = strlen(netbios) + strlen(e->sam) + 2;
        res->sam = malloc(n);
        if (res->sam == NULL)
            return -1;
        snprintf(res->sam, n, "%s\\%s", netbios, e->sam);
    } else if (dup_or_null(&res->sam, e->sam)) {
        return -1;
    }
    return 0;
}

void map_judge(const struct conf *c, const struct cert_facts *f, const struct map_plan *p,
               struct map_entry *const *answers, const size_t *n_answers, const char *netbios,
               time_t now, struct map_result *res)
{
    char detail[DETAIL_MAX] = "";
    struct step_out s = {0}, refused = {0};
    const char *why;

    memset(res, 0, sizeof(*res));
    for (size_t i = 0; i < p->n; i++) {
        judge_lookup(c, f, &p->lookups[i], answers ? answers[i] : NULL,
                     answers && n_answers ? n_answers[i] : 0, &s);
        if (s.step == STEP_MAPPED || s.step == STEP_AMBIGUOUS)
            break;
        if (s.step == STEP_WEAK_REFUSED && refused.account == NULL)
            refused = s;
        s.step = STEP_NOTHING;
    }

    switch (s.step) {
    case STEP_AMBIGUOUS:
        res->reason = R_AMBIGUOUS_MAPPING;
        detail_add(detail, "several accounts match by %s (%s), e.g. %s", s.label,
                   s.strong ? "strong" : "weak", s.account->dn);
        goto done;
    case STEP_MAPPED:
        break;
    default:
        if (refused.account != NULL) {
            res->reason = R_WEAK_MAPPING;
            detail_add(detail, "%s matches only by %s (weak), refused by enforcement = %s",
                       refused.account->dn, refused.label,
                       c->enforcement == ENFORCE_FULL ? "full"
                                                      : "compatibility (certificate older "
                                                        "than the account)");
        } else {
            res->reason = R_NO_MAPPING;
            detail_tried(detail, p);
        }
        goto done;
    }

    if (map_cert_sid(f) != NULL && c->enforcement != ENFORCE_DISABLED &&
        !sid_matches(f, s.account)) {
        res->reason = R_SID_MISMATCH;
        detail_add(detail, "%s matches by %s, but its objectSid %s is not the certificate's %s%s",
                   s.account->dn, s.label, s.account->sid ? s.account->sid : "(none)",
                   map_cert_sid(f), f->sid != NULL ? "" : " (SAN URL)");
        goto done;
    }
    why = account_state(s.account, now);
    if (why != NULL) {
        res->reason = R_ACCOUNT_DISABLED;
        detail_add(detail, "%s matches by %s, but it %s", s.account->dn, s.label, why);
        goto done;
    }
    /* Only a mapped result names an account: nothing downstream can send a
     * refused account's identity by mistake. */
    if (fill_account(res, s.account, s.label, netbios) != 0) {
        map_result_purge(res);
        res->reason = R_DIRECTORY_UNAVAILABLE; /* out of memory: fail closed, not cached */
        detail_add(detail, "out of memory while mapping");
        goto done;
    }
    res->reason = R_NONE;
    detail_add(detail, "mapped %s by %s (%s)", s.account->dn, s.label,
               s.by_sid   ? "strong: the certificate's SID is the account's"
               : s.strong ? "strong"
                          : "weak");
done:
    res->detail = strdup(detail);
}
