/* A map_source over an LDIF file of AD-shaped entries, read once with
 * libldap's LDIF reader: `certmapd map` and tests without a domain
 * controller. It matches as AD does (case-insensitive, spaces significant,
 * objectSid by value) and answers from the worker's loop, never from inside
 * search(), so that the resolver sees the same order of events as with LDAP.
 * The file is the administrator's (like the configuration): libldap's
 * "include:" lines and "attr:< file://" values are honoured as ldapadd does. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <ldap.h>
#include <ldif.h>

#include <event2/event.h>

#include "common/text.h"
#include "mapping/internal.h"

struct ldif_entry {
    struct map_entry e;
    bool is_account; /* objectClass user or computer */
};

struct pending {
    struct pending *prev, *next;
    map_search_cb cb;
    void *arg;
    struct map_entry *matches; /* shallow copies: strings belong to the entries */
    size_t n;
};

struct ldif_src {
    struct map_source src;
    struct ldif_entry *entries;
    size_t n;
    char *netbios;
    struct event *ev;
    struct pending *head, *tail;
};

static void fail_at(char *err, size_t errlen, const char *path, unsigned long line, const char *fmt,
                    ...) __attribute__((format(printf, 5, 6)));
static void fail_at(char *err, size_t errlen, const char *path, unsigned long line, const char *fmt,
                    ...)
{
    va_list ap;
    int n =
        line ? snprintf(err, errlen, "%s:%lu: ", path, line) : snprintf(err, errlen, "%s: ", path);

    if (n < 0 || (size_t)n >= errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

/* A text value: directory text, the rule the LDAP source applies (libldap's
 * LDIF reader checks nothing of it). */
static bool text_ok(const struct berval *v)
{
    return cm_dirtext_valid(v->bv_val, v->bv_len);
}

/* A signed decimal in [min, max]. */
static bool number(const struct berval *v, long long min, long long max, long long *out)
{
    char buf[32], *end;

    if (v->bv_len == 0 || v->bv_len >= sizeof(buf))
        return false;
    memcpy(buf, v->bv_val, v->bv_len);
    buf[v->bv_len] = '\0';
    errno = 0;
    *out = strtoll(buf, &end, 10);
    return errno == 0 && *end == '\0' && buf[0] != ' ' && *out >= min && *out <= max;
}

/* GeneralizedTime as AD writes whenCreated: "YYYYMMDDHHMMSS.0Z". */
static bool gentime(const struct berval *v, time_t *out)
{
    struct tm tm = {0};
    char buf[32];
    const char *end;

    if (v->bv_len < 15 || v->bv_len >= sizeof(buf))
        return false;
    memcpy(buf, v->bv_val, v->bv_len);
    buf[v->bv_len] = '\0';
    end = strptime(buf, "%Y%m%d%H%M%S", &tm);
    if (end == NULL || (strcmp(end, "Z") != 0 && strcmp(end, ".0Z") != 0))
        return false;
    *out = timegm(&tm);
    return *out != (time_t)-1;
}

static char *bvdup(const struct berval *v)
{
    return strndup(v->bv_val, v->bv_len);
}

/* Fills <le> from one attribute; a reason, or NULL. */
static const char *take_attr(struct ldif_entry *le, const LDAPMod *m)
{
    struct map_entry *e = &le->e;
    struct berval **vals = m->mod_bvalues;
    const char *t = m->mod_type;
    size_t n = 0;
    long long num;

    while (vals != NULL && vals[n] != NULL)
        n++;
    if (strcasecmp(t, "objectSid") == 0) {
        if (n != 1 || e->sid != NULL)
            return "objectSid must have one value";
        char sid[CM_SID_TEXT_MAX];
        if (cm_sid_from_binary((const unsigned char *)vals[0]->bv_val, vals[0]->bv_len, sid,
                               sizeof sid) != 0)
            return "objectSid is not a binary SID (base64, \"objectSid::\")";
        e->sid = strdup(sid);
        return e->sid ? NULL : "out of memory";
    }
    if (strcasecmp(t, "objectClass") == 0) {
        for (size_t i = 0; i < n; i++) {
            const struct berval *v = vals[i];
            if (v->bv_len == 8 && strncasecmp(v->bv_val, "computer", 8) == 0)
                le->is_account = e->is_computer = true;
            if (v->bv_len == 4 && strncasecmp(v->bv_val, "user", 4) == 0)
                le->is_account = true;
        }
        return NULL;
    }
    if (strcasecmp(t, "altSecurityIdentities") == 0) {
        /* The attribute may come back later in the record (libldap gives it
         * as a second mod): its values are added to the first ones. */
        size_t have = e->n_altsecids;
        char **a = realloc(e->altsecids, (have + n + 1) * sizeof(*a));
        if (a == NULL)
            return "out of memory";
        e->altsecids = a;
        for (size_t i = 0; i < n; i++) {
            if (!text_ok(vals[i]))
                return "altSecurityIdentities holds a NUL, a control character, invalid UTF-8 or "
                       "too many bytes";
            e->altsecids[have + i] = bvdup(vals[i]);
            if (e->altsecids[have + i] == NULL)
                return "out of memory";
            e->n_altsecids = have + i + 1;
        }
        return NULL;
    }
    static const struct {
        const char *name;
        size_t off;
    } strs[] = {
        {"userPrincipalName", offsetof(struct map_entry, upn)},
        {"sAMAccountName", offsetof(struct map_entry, sam)},
        {"dNSHostName", offsetof(struct map_entry, dns_host_name)},
    };
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
        char **slot = (char **)((char *)e + strs[i].off);
        if (strcasecmp(t, strs[i].name) != 0)
            continue;
        if (n != 1 || *slot != NULL || !text_ok(vals[0]))
            return "a single-valued text attribute has several values, or one with a NUL, a "
                   "control character, invalid UTF-8 or too many bytes";
        *slot = bvdup(vals[0]);
        return *slot ? NULL : "out of memory";
    }
    if (strcasecmp(t, "userAccountControl") == 0 ||
        strcasecmp(t, "msDS-User-Account-Control-Computed") == 0) {
        /* AD shows these 32-bit flag words as signed or unsigned decimal. */
        if (n != 1 || !number(vals[0], INT32_MIN, UINT32_MAX, &num))
            return "a flags attribute must be one 32-bit decimal number";
        if (strcasecmp(t, "userAccountControl") == 0) {
            e->uac = (uint32_t)num;
        } else {
            e->uac_computed = (uint32_t)num;
            e->has_uac_computed = true;
        }
        return NULL;
    }
    if (strcasecmp(t, "accountExpires") == 0) {
        if (n != 1 || !number(vals[0], INT64_MIN, INT64_MAX, &num))
            return "accountExpires must be one decimal FILETIME";
        e->account_expires = num;
        return NULL;
    }
    if (strcasecmp(t, "whenCreated") == 0) {
        if (n != 1 || !gentime(vals[0], &e->when_created))
            return "whenCreated must be one GeneralizedTime, e.g. 20240101120000.0Z";
        return NULL;
    }
    return NULL; /* other attributes are not used for mapping */
}

/* The line a record starts on: <end> is the line number libldap reached, <buf>
 * holds the record's lines (leading comments included), a blank line ends it
 * unless the file did. */
static unsigned long record_line(unsigned long end, const char *buf, bool at_eof)
{
    unsigned long lines = 0, comments = 0;
    bool leading = true;

    for (const char *p = buf; *p != '\0'; p++) {
        if (p == buf || p[-1] == '\n') {
            leading = leading && *p == '#';
            comments += leading;
        }
        lines += *p == '\n';
    }
    if (buf[0] != '\0' && buf[strlen(buf) - 1] != '\n')
        lines++;
    end -= at_eof ? 0 : 1;
    return end + 1 > lines ? end + 1 - lines + comments : 1;
}

/* Parses the record <buf> into <le>; a reason, or NULL. */
static const char *parse_record(char *buf, unsigned long line, struct ldif_entry *le)
{
    struct berval bv = {.bv_len = strlen(buf), .bv_val = buf};
    LDIFRecord lr;
    const char *why = NULL;

    memset(&lr, 0, sizeof(lr));
    /* A line without an attribute name (": v", "-") right after the DN
     * crashes libldap 2.5's reader (strcasecmp on NULL); an entry has none
     * anywhere (RFC 2849). Continuation lines start with a space; any white
     * space after another first byte (a tab or CR: "\t: v", "\r :") libldap
     * skips before the name, so it is skipped here too before looking for one. */
    for (const char *p = buf; p != NULL; p = strchr(p, '\n'), p = p != NULL ? p + 1 : NULL) {
        const char *eol = strchr(p, '\n');
        size_t len = eol != NULL ? (size_t)(eol - p) : strlen(p);
        if (len == 0 || *p == ' ' || *p == '#')
            continue;
        size_t lead = 0;
        while (lead < len && (p[lead] == ' ' || p[lead] == '\t' || p[lead] == '\r' ||
                              p[lead] == '\v' || p[lead] == '\f'))
            lead++;
        const char *name = p + lead;
        const char *colon = memchr(name, ':', len - lead);
        if (colon == NULL || colon == name)
            return "not a valid LDIF record (a line without an attribute name)";
    }
    if (ldap_parse_ldif_record(&bv, line, &lr, "certmapd", LDIF_DEFAULT_ADD | LDIF_NO_CONTROLS) !=
        LDAP_SUCCESS)
        return "not a valid LDIF record";
    if (lr.lr_op != LDAP_REQ_ADD) {
        why = "only entries (no changetype other than add) are read";
        goto done;
    }
    if (lr.lr_dn.bv_len == 0 || !text_ok(&lr.lr_dn)) {
        why = "the entry has no DN, or one with a NUL, a control character, invalid UTF-8 "
              "or too many bytes";
        goto done;
    }
    le->e.dn = bvdup(&lr.lr_dn);
    if (le->e.dn == NULL) {
        why = "out of memory";
        goto done;
    }
    for (LDAPMod **m = lr.lrop_mods; m != NULL && *m != NULL && why == NULL; m++)
        why = take_attr(le, *m);
done:
    ldap_ldif_record_done(&lr);
    return why;
}

static void src_free(struct ldif_src *s)
{
    if (s == NULL)
        return;
    while (s->head != NULL) {
        struct pending *p = s->head;
        s->head = p->next;
        free(p->matches);
        free(p);
    }
    for (size_t i = 0; i < s->n; i++)
        map_entry_purge(&s->entries[i].e);
    free(s->entries);
    free(s->netbios);
    if (s->ev != NULL)
        event_free(s->ev);
    free(s);
}

/* Answers every pending search, oldest first. A callback may start or cancel
 * searches: each is unlinked before its callback runs. */
static void drain(evutil_socket_t fd, short what, void *arg)
{
    struct ldif_src *s = arg;

    (void)fd;
    (void)what;
    while (s->head != NULL) {
        struct pending *p = s->head;
        s->head = p->next;
        if (s->head)
            s->head->prev = NULL;
        else
            s->tail = NULL;
        p->cb(p->arg, true, p->matches, p->n);
        free(p->matches);
        free(p);
    }
}

static void *src_search(void *ctx, const struct map_lookup *l, map_search_cb cb, void *arg)
{
    struct ldif_src *s = ctx;
    struct pending *p = calloc(1, sizeof(*p));

    if (p == NULL)
        return NULL;
    for (size_t i = 0; i < s->n; i++) {
        if (!s->entries[i].is_account || !map_entry_matches(l, &s->entries[i].e, NULL))
            continue;
        struct map_entry *m = realloc(p->matches, (p->n + 1) * sizeof(*m));
        if (m == NULL) {
            free(p->matches);
            free(p);
            return NULL;
        }
        p->matches = m;
        p->matches[p->n++] = s->entries[i].e;
    }
    p->cb = cb;
    p->arg = arg;
    p->prev = s->tail;
    if (s->tail)
        s->tail->next = p;
    else
        s->head = p;
    s->tail = p;
    event_active(s->ev, EV_TIMEOUT, 0);
    return p;
}

static void src_cancel(void *ctx, void *handle)
{
    struct ldif_src *s = ctx;
    struct pending *p = handle;

    if (p->prev)
        p->prev->next = p->next;
    else
        s->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        s->tail = p->prev;
    free(p->matches);
    free(p);
}

static const char *src_netbios(void *ctx)
{
    return ((struct ldif_src *)ctx)->netbios;
}

static void src_close(void *ctx)
{
    src_free(ctx);
}

struct map_source *map_ldif_open(const char *path, const char *netbios, struct event_base *base,
                                 char *err, size_t errlen)
{
    struct ldif_src *s = calloc(1, sizeof(*s));
    LDIFFP *fp = NULL;
    char *buf = NULL;
    int buflen = 0;
    unsigned long line = 0;
    size_t cap = 0;
    int rc;

    if (s == NULL) {
        fail_at(err, errlen, path, 0, "out of memory");
        goto fail;
    }
    s->ev = base ? event_new(base, -1, 0, drain, s) : NULL;
    if (s->ev == NULL || (netbios != NULL && (s->netbios = strdup(netbios)) == NULL)) {
        fail_at(err, errlen, path, 0, "out of memory (or no event base)");
        goto fail;
    }
    fp = ldif_open(path, "r");
    if (fp == NULL) {
        fail_at(err, errlen, path, 0, "cannot read: %s", strerror(errno));
        goto fail;
    }
    bool first = true;
    while ((rc = ldif_read_record(fp, &line, &buf, &buflen)) > 0) {
        if (buf == NULL) {
            /* libldap 2.5 says "a record" without one for some bytes (fuzz_ldif). */
            fail_at(err, errlen, path, line, "not a valid LDIF record");
            goto fail;
        }
        unsigned long start = record_line(line, buf, feof(fp->fp) != 0);
        const char *why;
        if (first && strncasecmp(buf, "version:", 8) == 0) {
            /* RFC 2849's optional "version: 1" line opens the file. */
            first = false;
            const char *rest = strchr(buf, '\n');
            if (strtol(buf + 8, NULL, 10) != 1) {
                fail_at(err, errlen, path, start, "unsupported LDIF version");
                goto fail;
            }
            if (rest == NULL || rest[strspn(rest, "\r\n")] == '\0')
                continue; /* alone in its record */
            memmove(buf, rest + 1, strlen(rest + 1) + 1);
        }
        first = false;
        if (s->n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            struct ldif_entry *ne = realloc(s->entries, ncap * sizeof(*ne));
            if (ne == NULL) {
                fail_at(err, errlen, path, start, "out of memory");
                goto fail;
            }
            s->entries = ne;
            cap = ncap;
        }
        memset(&s->entries[s->n], 0, sizeof(s->entries[s->n]));
        why = parse_record(buf, start, &s->entries[s->n]);
        s->n++; /* counted even when bad, so that it is freed */
        if (why != NULL) {
            fail_at(err, errlen, path, start, "%s", why);
            goto fail;
        }
    }
    if (rc < 0) {
        fail_at(err, errlen, path, line, "cannot read the LDIF");
        goto fail;
    }
    ber_memfree(buf);
    ldif_close(fp);
    s->src.ctx = s;
    s->src.search = src_search;
    s->src.cancel = src_cancel;
    s->src.netbios = src_netbios;
    s->src.close = src_close;
    return &s->src;
fail:
    ber_memfree(buf);
    if (fp != NULL)
        ldif_close(fp);
    src_free(s);
    return NULL;
}
