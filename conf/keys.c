/* The configuration key table and the value parsers it points at. One row per
 * (section, key): parser, bounds, default, description and the IIS setting the
 * key replaces. The loader (conf.c) and --help-config both read this table. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ldap.h>
#include <netdb.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "conf/internal.h"

#define KIB 1024ull
#define MIB (1024ull * KIB)
#define GIB (1024ull * MIB)
#define SEC 1000ull
#define MIN (60ull * SEC)
#define HOUR (60ull * MIN)

/* Values longer than this cannot come from a file (inih's line limit) and are
 * refused when they come from elsewhere. */
#define VAL_MAX 1024

/* ---- small helpers ---- */

static void *field(const struct conf_key *k, void *base)
{
    return (char *)base + k->offset;
}

/* Replaces the string field of <k> with a copy of <val> (NULL or "" unsets). */
static int set_str(const struct conf_key *k, void *base, const char *val, char *msg, size_t n)
{
    char **slot = field(k, base);
    char *copy = NULL;

    if (val != NULL && *val != '\0') {
        copy = strdup(val);
        if (copy == NULL) {
            snprintf(msg, n, "out of memory");
            return -1;
        }
    }
    free(*slot);
    *slot = copy;
    return 0;
}

static void store_uint(const struct conf_key *k, void *base, uint64_t v)
{
    if (k->width == sizeof(unsigned)) {
        unsigned u = (unsigned)v;
        memcpy(field(k, base), &u, sizeof(u));
    } else {
        memcpy(field(k, base), &v, sizeof(v));
    }
}

void conf_quote(const char *s, char *out, size_t outlen)
{
    size_t o = 0;

    if (outlen < 6) {
        if (outlen > 0)
            out[0] = '\0';
        return;
    }
    out[o++] = '"';
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;
        size_t need = (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\') ? 1 : 4;

        /* keep room for the escape, the closing quote, "..." and the NUL */
        if (o + need + 5 > outlen) {
            memcpy(out + o, "\"...", 5);
            return;
        }
        if (need == 1)
            out[o++] = (char)ch;
        else
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", ch);
    }
    out[o++] = '"';
    out[o] = '\0';
}

static void fmt_size(uint64_t v, char *out, size_t n)
{
    if (v != 0 && v % GIB == 0)
        snprintf(out, n, "%lluG", (unsigned long long)(v / GIB));
    else if (v != 0 && v % MIB == 0)
        snprintf(out, n, "%lluM", (unsigned long long)(v / MIB));
    else if (v != 0 && v % KIB == 0)
        snprintf(out, n, "%lluK", (unsigned long long)(v / KIB));
    else
        snprintf(out, n, "%llu", (unsigned long long)v);
}

static void fmt_duration(uint64_t ms, char *out, size_t n)
{
    if (ms != 0 && ms % HOUR == 0)
        snprintf(out, n, "%lluh", (unsigned long long)(ms / HOUR));
    else if (ms != 0 && ms % MIN == 0)
        snprintf(out, n, "%llum", (unsigned long long)(ms / MIN));
    else if (ms % SEC == 0)
        snprintf(out, n, "%llus", (unsigned long long)(ms / SEC));
    else
        snprintf(out, n, "%llums", (unsigned long long)ms);
}

/* Copies <s> without leading and trailing white space into <buf>. -1 if too long. */
static int trim_copy(const char *s, char *buf, size_t n)
{
    size_t len;

    while (isspace((unsigned char)*s))
        s++;
    len = strlen(s);
    while (len > 0 && isspace((unsigned char)s[len - 1]))
        len--;
    if (len >= n)
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    return 0;
}

/* Leading decimal digits of <s> into <*out>; <*end> past them. -1: none, or overflow. */
static int parse_digits(const char *s, uint64_t *out, const char **end, const char **why)
{
    uint64_t v = 0;

    if (!isdigit((unsigned char)*s)) {
        *why = "is not a number";
        return -1;
    }
    for (; isdigit((unsigned char)*s); s++) {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10) {
            *why = "is too large";
            return -1;
        }
        v = v * 10 + d;
    }
    *out = v;
    *end = s;
    return 0;
}

/* ---- public value parsers ---- */

/* Copies <s> trimmed into <buf> and reads its leading digits into <v>; <end>
 * points at what follows (a unit, or the end). 0, or -1 with <why>. */
static int parse_leading_number(const char *s, char *buf, size_t len, uint64_t *v,
                                const char **end, const char **why)
{
    if (trim_copy(s, buf, len) < 0) {
        *why = "is too long";
        return -1;
    }
    if (buf[0] == '\0') {
        *why = "is empty";
        return -1;
    }
    return parse_digits(buf, v, end, why);
}

int conf_parse_size(const char *s, size_t *out, const char **why)
{
    char buf[VAL_MAX];
    const char *end;
    uint64_t v, mult = 1;

    if (parse_leading_number(s, buf, sizeof(buf), &v, &end, why) < 0)
        return -1;
    if (*end != '\0') {
        switch (tolower((unsigned char)*end)) {
        case 'k':
            mult = KIB;
            break;
        case 'm':
            mult = MIB;
            break;
        case 'g':
            mult = GIB;
            break;
        default:
            mult = 0;
            break;
        }
        if (mult == 0 || end[1] != '\0') {
            *why = "has an unknown suffix: use K, M or G";
            return -1;
        }
    }
    if (v > SIZE_MAX / mult) {
        *why = "is too large";
        return -1;
    }
    *out = (size_t)(v * mult);
    return 0;
}

int conf_parse_duration_ms(const char *s, uint64_t *out, const char **why)
{
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {{"", SEC}, {"ms", 1}, {"s", SEC}, {"m", MIN}, {"h", HOUR}};
    char buf[VAL_MAX];
    const char *end;
    uint64_t v;

    if (parse_leading_number(s, buf, sizeof(buf), &v, &end, why) < 0)
        return -1;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcasecmp(end, units[i].unit) != 0)
            continue;
        if (v > UINT64_MAX / units[i].ms) {
            *why = "is too large";
            return -1;
        }
        *out = v * units[i].ms;
        return 0;
    }
    *why = "has an unknown unit: use ms, s, m or h";
    return -1;
}

/* ---- table parsers ---- */

static int kp_string(const struct conf_key *k, const char *val, void *base, char *msg, size_t n)
{
    return set_str(k, base, val, msg, n);
}

/* A file the daemon will read later: refuse now what it could not open then. */
static int kp_file(const struct conf_key *k, const char *val, void *base, char *msg, size_t n)
{
    char q[VAL_MAX * 4 + 8];
    struct stat st;
    int fd;

    if (*val == '\0')
        return set_str(k, base, NULL, msg, n);
    conf_quote(val, q, sizeof(q));
    /* O_NONBLOCK: a FIFO named here must not hang the configuration check */
    fd = open(val, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(msg, n, "cannot read %s: %s", q, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        snprintf(msg, n, "cannot read %s: not a regular file", q);
        return -1;
    }
    close(fd);
    return set_str(k, base, val, msg, n);
}

/* A file holding a secret (a password): readable now, and its content one
 * that start-up will accept (not empty, not too long, no NUL); its length in
 * <*len> (0 when unset). */
static int secret_file_check(const struct conf_key *k, const char *val, void *base, char *msg,
                             size_t n, size_t *len)
{
    char *secret;

    *len = 0;
    if (kp_file(k, val, base, msg, n) < 0 || *val == '\0')
        return *val == '\0' ? 0 : -1;
    secret = conf_secret_read(val, len, msg, n);
    if (secret == NULL)
        return -1;
    conf_secret_free(secret, *len);
    return 0;
}

static int kp_secret_file(const struct conf_key *k, const char *val, void *base, char *msg,
                          size_t n)
{
    size_t len;
    return secret_file_check(k, val, base, msg, n, &len);
}

static int kp_user(const struct conf_key *k, const char *val, void *base, char *msg, size_t n)
{
    char q[VAL_MAX * 4 + 8];

    if (*val != '\0' && getpwnam(val) == NULL) {
        conf_quote(val, q, sizeof(q));
        snprintf(msg, n, "no such user %s", q);
        return -1;
    }
    return set_str(k, base, val, msg, n);
}

static int kp_access_log(const struct conf_key *k, const char *val, void *base, char *msg, size_t n)
{
    if (*val == '\0') {
        snprintf(msg, n, "empty value (expected stderr, off or a file path)");
        return -1;
    }
    return set_str(k, base, val, msg, n);
}

static int kp_bool(const struct conf_key *k, const char *val, void *base, char *msg, size_t n)
{
    static const char *const yes[] = {"on", "yes", "true", "1"};
    static const char *const no[] = {"off", "no", "false", "0"};
    char q[VAL_MAX * 4 + 8];
    bool *b = field(k, base);

    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (strcasecmp(val, yes[i]) == 0) {
            *b = true;
            return 0;
        }
        if (strcasecmp(val, no[i]) == 0) {
            *b = false;
            return 0;
        }
    }
    conf_quote(val, q, sizeof(q));
    snprintf(msg, n, "%s is not a boolean (expected on/off, yes/no, true/false or 1/0)", q);
    return -1;
}

static int kp_enum(const struct conf_key *k, const char *val, void *base, char *msg, size_t n)
{
    char q[VAL_MAX * 4 + 8];
    char list[256] = "";
    size_t used = 0;

    for (const struct conf_enum *e = k->names; e->name != NULL; e++) {
        if (strcasecmp(val, e->name) == 0) {
            int v = e->value;
            memcpy(field(k, base), &v, sizeof(v));
            return 0;
        }
    }
    for (const struct conf_enum *e = k->names; e->name != NULL && used < sizeof(list); e++) {
        int w = snprintf(list + used, sizeof(list) - used, "%s%s", used ? ", " : "", e->name);
        if (w < 0)
            break;
        used += (size_t)w;
    }
    conf_quote(val, q, sizeof(q));
    snprintf(msg, n, "%s is not one of %s", q, list);
    return -1;
}

static int kp_uint(const struct conf_key *k, const char *val, void *base, char *msg, size_t n)
{
    char q[VAL_MAX * 4 + 8];
    const char *end, *why = "";
    uint64_t v;

    conf_quote(val, q, sizeof(q));
    if (parse_digits(val, &v, &end, &why) < 0 || *end != '\0') {
        snprintf(msg, n, "%s is not a number (expected %llu..%llu)", q, (unsigned long long)k->min,
                 (unsigned long long)k->max);
        return -1;
    }
    if (v < k->min || v > k->max) {
        snprintf(msg, n, "%s is out of range (expected %llu..%llu)", q, (unsigned long long)k->min,
                 (unsigned long long)k->max);
        return -1;
    }
    store_uint(k, base, v);
    return 0;
}

/* A quantity with units (a size or a duration): <parse> reads it, <fmt> writes
 * the bounds in the same units for the message. */
static int kp_units(const struct conf_key *k, const char *val, void *base, char *msg, size_t n,
                    int (*parse)(const char *, uint64_t *, const char **),
                    void (*fmt)(uint64_t, char *, size_t), const char *kind)
{
    char q[VAL_MAX * 4 + 8], lo[32], hi[32];
    const char *why = "";
    uint64_t v;

    conf_quote(val, q, sizeof(q));
    fmt(k->min, lo, sizeof(lo));
    fmt(k->max, hi, sizeof(hi));
    if (parse(val, &v, &why) < 0) {
        snprintf(msg, n, "%s %s (expected %s %s..%s)", q, why, kind, lo, hi);
        return -1;
    }
    if (v < k->min || v > k->max) {
        snprintf(msg, n, "%s is out of range (expected %s..%s)", q, lo, hi);
        return -1;
    }
    store_uint(k, base, v);
    return 0;
}

static int parse_size_u64(const char *s, uint64_t *out, const char **why)
{
    size_t v;
    if (conf_parse_size(s, &v, why) < 0)
        return -1;
    *out = v;
    return 0;
}

static int kp_size(const struct conf_key *k, const char *val, void *base, char *msg, size_t n)
{
    return kp_units(k, val, base, msg, n, parse_size_u64, fmt_size, "a size");
}

static int kp_duration(const struct conf_key *k, const char *val, void *base, char *msg, size_t n)
{
    return kp_units(k, val, base, msg, n, conf_parse_duration_ms, fmt_duration, "a duration");
}

/* Host name or IPv4 address characters only. */
static bool host_chars_ok(const char *h, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)h[i];
        if (!isalnum(ch) && ch != '.' && ch != '-' && ch != '_')
            return false;
    }
    return len > 0;
}

/* Port as decimal text, 1..65535. */
static int check_port(const char *p)
{
    const char *end, *why;
    uint64_t v;

    if (parse_digits(p, &v, &end, &why) < 0 || *end != '\0' || v < 1 || v > 65535)
        return -1;
    return 0;
}

/* "HOST:PORT" or "[V6]:PORT" resolved now (start-up may block) into <l>
 * (its text a heap copy of <val>). 0, or -1 with a reason in <msg>. */
static int listen_resolve(const char *val, struct conf_listen *l, char *msg, size_t n)
{
    struct addrinfo hints, *res = NULL;
    char q[VAL_MAX * 4 + 8], host[VAL_MAX];
    const char *port;
    int rc = -1, gai;

    conf_quote(val, q, sizeof(q));
    if (strlen(val) >= sizeof(host))
        goto bad;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
    if (val[0] == '[') {
        const char *close = strchr(val, ']');
        if (close == NULL || close[1] != ':')
            goto bad;
        memcpy(host, val + 1, (size_t)(close - val - 1));
        host[close - val - 1] = '\0';
        port = close + 2;
        hints.ai_family = AF_INET6;
        hints.ai_flags |= AI_NUMERICHOST;
    } else {
        const char *colon = strrchr(val, ':');
        if (colon == NULL)
            goto bad;
        memcpy(host, val, (size_t)(colon - val));
        host[colon - val] = '\0';
        port = colon + 1;
        if (strchr(host, ':') != NULL) {
            snprintf(msg, n, "%s: an IPv6 address must be in brackets, e.g. [::1]:443", q);
            goto fail;
        }
        hints.ai_family = AF_UNSPEC;
    }
    if (host[0] == '\0') {
        snprintf(msg, n, "%s has no host (use 0.0.0.0:PORT or [::]:PORT for all addresses)", q);
        goto fail;
    }
    /* junk never reaches the resolver */
    if (hints.ai_family == AF_UNSPEC && !host_chars_ok(host, strlen(host))) {
        snprintf(msg, n, "%s: not a valid host name or address", q);
        goto fail;
    }
    if (check_port(port) < 0) {
        snprintf(msg, n, "%s: port must be a number 1..65535", q);
        goto fail;
    }
    gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0 || res == NULL) {
        snprintf(msg, n, "cannot resolve %s: %s", q, gai != 0 ? gai_strerror(gai) : "no address");
        goto fail;
    }
    memset(l, 0, sizeof(*l));
    l->text = strdup(val);
    if (l->text == NULL) {
        snprintf(msg, n, "out of memory");
        goto fail;
    }
    memcpy(&l->addr, res->ai_addr, res->ai_addrlen);
    l->addrlen = (socklen_t)res->ai_addrlen;
    rc = 0;
    goto fail;
bad:
    snprintf(msg, n, "%s is not HOST:PORT or [IPv6]:PORT", q);
fail:
    if (res != NULL)
        freeaddrinfo(res);
    return rc;
}

/* The words after a listen address: only "proxy_protocol" so far. 0, or -1
 * with a reason in <msg>. */
static int listen_words(const char *w, bool *proxy_protocol, char *msg, size_t n)
{
    char word[VAL_MAX], q[VAL_MAX * 4 + 8];

    while (*w != '\0') {
        size_t len = strcspn(w, " \t");
        memcpy(word, w, len);
        word[len] = '\0';
        if (strcmp(word, "proxy_protocol") == 0) {
            if (*proxy_protocol) {
                snprintf(msg, n, "proxy_protocol is written twice");
                return -1;
            }
            *proxy_protocol = true;
        } else {
            conf_quote(word, q, sizeof(q));
            snprintf(msg, n, "unknown word %s after the address (known: proxy_protocol)", q);
            return -1;
        }
        w += len;
        w += strspn(w, " \t");
    }
    return 0;
}

/* [server] listen: "HOST:PORT" or "[V6]:PORT", then optional words
 * (listen_words); repeatable, each address once. */
static int kp_listen(const struct conf_key *k, const char *whole, void *base, char *msg, size_t n)
{
    struct conf *c = base;
    struct conf_listen l;
    char q[VAL_MAX * 4 + 8], val[VAL_MAX];
    bool proxy_protocol = false;

    size_t alen = strcspn(whole, " \t");
    if (alen >= sizeof(val)) {
        conf_quote(whole, q, sizeof(q));
        snprintf(msg, n, "%s is not HOST:PORT or [IPv6]:PORT", q);
        return -1;
    }
    memcpy(val, whole, alen);
    val[alen] = '\0';
    if (listen_words(whole + alen + strspn(whole + alen, " \t"), &proxy_protocol, msg, n) < 0)
        return -1;
    if (c->n_listen >= CONF_MAX_LISTEN) {
        snprintf(msg, n, "more than %d listen addresses", CONF_MAX_LISTEN);
        return -1;
    }
    if (listen_resolve(val, &l, msg, n) < 0)
        return -1;
    l.proxy_protocol = proxy_protocol;
    for (size_t i = 0; i < c->n_listen; i++) {
        if (c->listen[i].addrlen == l.addrlen &&
            memcmp(&c->listen[i].addr, &l.addr, l.addrlen) == 0) {
            conf_quote(val, q, sizeof(q));
            snprintf(msg, n, "%s is the same address as \"%s\"", q, c->listen[i].text);
            free(l.text);
            return -1;
        }
    }
    c->listen[c->n_listen++] = l;
    return 0;
}

/* One "ADDR" or "ADDR/BITS" of proxy_protocol_from into <out>. 0, or -1 with <msg>. */
static int parse_cidr(const char *one, struct conf_cidr *out, char *msg, size_t n)
{
    char addr[64], q[VAL_MAX * 4 + 8];
    const char *slash = strchr(one, '/');
    size_t alen = slash != NULL ? (size_t)(slash - one) : strlen(one);
    unsigned max;

    conf_quote(one, q, sizeof(q));
    memset(out, 0, sizeof(*out));
    if (alen == 0 || alen >= sizeof(addr))
        goto bad;
    memcpy(addr, one, alen);
    addr[alen] = '\0';
    if (inet_pton(AF_INET, addr, out->addr) == 1) {
        out->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, addr, out->addr) == 1) {
        out->family = AF_INET6;
        max = 128;
    } else {
        goto bad;
    }
    out->bits = max;
    if (slash != NULL) {
        uint64_t v;
        const char *end, *why;
        if (parse_digits(slash + 1, &v, &end, &why) < 0 || *end != '\0' || v > max ||
            (slash[1] == '0' && slash[2] != '\0'))
            goto bad;
        out->bits = (unsigned)v;
    }
    for (unsigned b = out->bits; b < max; b++) {
        if (out->addr[b / 8] & (0x80u >> (b % 8))) {
            snprintf(msg, n, "%s has bits set past its /%u prefix", q, out->bits);
            return -1;
        }
    }
    return 0;
bad:
    snprintf(msg, n, "%s is not ADDRESS or ADDRESS/BITS (IPv4 or IPv6)", q);
    return -1;
}

/* [server] proxy_protocol_from: CIDR networks, comma and/or space separated;
 * replaces an earlier value. */
static int kp_cidrs(const struct conf_key *k, const char *val, void *base, char *msg, size_t n)
{
    struct conf *c = base;
    struct conf_cidr got[CONF_MAX_PP_FROM];
    char one[VAL_MAX];
    size_t count = 0;
    const char *p = val;

    for (;;) {
        p += strspn(p, ", \t");
        if (*p == '\0')
            break;
        size_t len = strcspn(p, ", \t");
        if (len >= sizeof(one)) {
            snprintf(msg, n, "a network is too long");
            return -1;
        }
        if (count >= CONF_MAX_PP_FROM) {
            snprintf(msg, n, "more than %d networks", CONF_MAX_PP_FROM);
            return -1;
        }
        memcpy(one, p, len);
        one[len] = '\0';
        if (parse_cidr(one, &got[count], msg, n) < 0)
            return -1;
        count++;
        p += len;
    }
    if (count == 0) {
        snprintf(msg, n, "no network given (leave the key out to accept the header from anyone)");
        return -1;
    }
    memcpy(c->pp_from, got, count * sizeof(got[0]));
    c->n_pp_from = count;
    return 0;
}

/* [metrics] listen: one address (conf.c checks it against [server] listen). */
static int kp_metrics_listen(const struct conf_key *k, const char *val, void *base, char *msg,
                             size_t n)
{
    struct conf *c = base;
    struct conf_listen l;

    if (listen_resolve(val, &l, msg, n) < 0)
        return -1;
    free(c->metrics_listen.text);
    c->metrics_listen = l;
    c->has_metrics_listen = true;
    return 0;
}

/* [mapping] methods: comma and/or space separated, in order, no duplicates. */
static int kp_methods(const struct conf_key *k, const char *val, void *base, char *msg, size_t n)
{
    static const char *const names[METHOD_MAX] = {"sid", "altsecid", "upn", "dns"};
    struct conf *c = base;
    enum map_method got[METHOD_MAX];
    size_t count = 0;
    const char *p = val;
    char q[VAL_MAX * 4 + 8];

    conf_quote(val, q, sizeof(q));
    for (;;) {
        size_t len;
        int m = -1;

        while (isspace((unsigned char)*p))
            p++;
        len = strcspn(p, ", \t");
        if (len == 0) {
            snprintf(msg, n, "%s has an empty entry (expected a list of sid, altsecid, upn, dns)",
                     q);
            return -1;
        }
        for (int i = 0; i < METHOD_MAX; i++) {
            if (strlen(names[i]) == len && strncasecmp(p, names[i], len) == 0)
                m = i;
        }
        if (m < 0) {
            snprintf(msg, n, "%s: unknown method \"%.*s\" (expected sid, altsecid, upn, dns)", q,
                     (int)(len > 64 ? 64 : len), p);
            return -1;
        }
        for (size_t i = 0; i < count; i++) {
            if (got[i] == (enum map_method)m) {
                snprintf(msg, n, "%s names \"%s\" twice", q, names[m]);
                return -1;
            }
        }
        got[count++] = (enum map_method)m;
        p += len;
        while (isspace((unsigned char)*p))
            p++;
        if (*p == '\0')
            break;
        if (*p == ',')
            p++;
    }
    memcpy(c->methods, got, count * sizeof(got[0]));
    c->n_methods = count;
    return 0;
}

/* The next blank-separated word of *<p> into <one> (size <len>), *<p>
 * advanced past it. 1, 0 at the end, or -1 when the word does not fit. */
static int next_word(const char **p, char *one, size_t len)
{
    while (isspace((unsigned char)**p))
        (*p)++;
    if (**p == '\0')
        return 0;
    size_t n = strcspn(*p, " \t");
    if (n >= len)
        return -1;
    memcpy(one, *p, n);
    one[n] = '\0';
    *p += n;
    return 1;
}

/* [ldap] uri: space separated ldap:// or ldaps:// URIs; repeatable, appends. */
static int kp_uris(const struct conf_key *k, const char *val, void *base, char *msg, size_t n)
{
    struct conf *c = base;
    char one[VAL_MAX], q[VAL_MAX * 4 + 8];
    const char *p = val;

    for (;;) {
        LDAPURLDesc *lud = NULL;
        bool ok;
        int w = next_word(&p, one, sizeof(one));

        if (w == 0)
            break;
        if (w < 0) {
            snprintf(msg, n, "URI is too long");
            return -1;
        }
        conf_quote(one, q, sizeof(q));
        ok = ldap_url_parse(one, &lud) == LDAP_URL_SUCCESS;
        ok = ok && (strcasecmp(lud->lud_scheme, "ldap") == 0 ||
                    strcasecmp(lud->lud_scheme, "ldaps") == 0);
        ok = ok && lud->lud_host != NULL && lud->lud_host[0] != '\0';
        ok = ok && lud->lud_port > 0 && lud->lud_port <= 65535;
        ok = ok && (lud->lud_dn == NULL || lud->lud_dn[0] == '\0') && lud->lud_attrs == NULL &&
             lud->lud_filter == NULL && lud->lud_exts == NULL;
        if (lud != NULL)
            ldap_free_urldesc(lud);
        if (!ok) {
            snprintf(msg, n, "%s is not an ldap://HOST[:PORT] or ldaps://HOST[:PORT] URI", q);
            return -1;
        }
        if (c->n_ldap_uri >= CONF_MAX_URIS) {
            snprintf(msg, n, "more than %d URIs", CONF_MAX_URIS);
            return -1;
        }
        c->ldap_uri[c->n_ldap_uri] = strdup(one);
        if (c->ldap_uri[c->n_ldap_uri] == NULL) {
            snprintf(msg, n, "out of memory");
            return -1;
        }
        c->n_ldap_uri++;
    }
    return 0;
}

/* [tls] ciphers, ciphersuites, groups: OpenSSL lists, checked by OpenSSL (tlslists.c). */
static int kp_ciphers(const struct conf_key *k, const char *val, void *base, char *msg, size_t n)
{
    return conf_check_ciphers(val, msg, n) < 0 ? -1 : set_str(k, base, val, msg, n);
}

static int kp_ciphersuites(const struct conf_key *k, const char *val, void *base, char *msg,
                           size_t n)
{
    return conf_check_ciphersuites(val, msg, n) < 0 ? -1 : set_str(k, base, val, msg, n);
}

static int kp_groups(const struct conf_key *k, const char *val, void *base, char *msg, size_t n)
{
    return conf_check_groups(val, msg, n) < 0 ? -1 : set_str(k, base, val, msg, n);
}

/* An LDAPv3 DN, checked with libldap's own parser. */
static int kp_dn(const struct conf_key *k, const char *val, void *base, char *msg, size_t n)
{
    char q[VAL_MAX * 4 + 8];
    LDAPDN dn = NULL;

    if (*val != '\0') {
        if (ldap_str2dn(val, &dn, LDAP_DN_FORMAT_LDAPV3) != LDAP_SUCCESS) {
            conf_quote(val, q, sizeof(q));
            snprintf(msg, n, "%s is not a distinguished name (e.g. DC=corp,DC=example,DC=test)", q);
            return -1;
        }
        ldap_dnfree(dn);
    }
    return set_str(k, base, val, msg, n);
}

static void backend_url_purge(struct conf_backend_url *u)
{
    free(u->host);
    free(u->port);
    free(u->host_header);
    memset(u, 0, sizeof(*u));
}

/* One backend URL: http(s)://HOST[:PORT][/], HOST a name, IPv4 or [IPv6],
 * into <u>. Returns 0, or -1 with a reason in <msg>. */
static int backend_url_parse(const char *val, struct conf_backend_url *u, char *msg, size_t n)
{
    char q[VAL_MAX * 4 + 8], tmp[VAL_MAX];
    const char *p, *auth_end, *hs, *he, *port = NULL;
    size_t auth_len;
    struct in6_addr a6;

    memset(u, 0, sizeof(*u));
    conf_quote(val, q, sizeof(q));
    if (strlen(val) >= sizeof(tmp))
        goto bad;
    if (strncasecmp(val, "http://", 7) == 0) {
        p = val + 7;
    } else if (strncasecmp(val, "https://", 8) == 0) {
        p = val + 8;
        u->https = true;
    } else {
        snprintf(msg, n, "%s must start with http:// or https://", q);
        return -1;
    }
    auth_end = p + strcspn(p, "/?#");
    if (strcmp(auth_end, "") != 0 && strcmp(auth_end, "/") != 0) {
        snprintf(msg, n, "%s: only http(s)://HOST[:PORT] is allowed, without path or query", q);
        return -1;
    }
    auth_len = (size_t)(auth_end - p);
    if (memchr(p, '@', auth_len) != NULL) {
        snprintf(msg, n, "%s: user information is not allowed", q);
        return -1;
    }
    if (*p == '[') {
        const char *close = memchr(p, ']', auth_len);
        if (close == NULL)
            goto bad;
        hs = p + 1;
        he = close;
        memcpy(tmp, hs, (size_t)(he - hs));
        tmp[he - hs] = '\0';
        if (inet_pton(AF_INET6, tmp, &a6) != 1)
            goto bad;
        if (close + 1 < auth_end) {
            if (close[1] != ':')
                goto bad;
            port = close + 2;
        }
    } else {
        const char *colon = memchr(p, ':', auth_len);
        hs = p;
        he = colon != NULL ? colon : auth_end;
        if (!host_chars_ok(hs, (size_t)(he - hs)))
            goto bad;
        if (colon != NULL)
            port = colon + 1;
    }
    if (port != NULL) {
        memcpy(tmp, port, (size_t)(auth_end - port));
        tmp[auth_end - port] = '\0';
        if (check_port(tmp) < 0) {
            snprintf(msg, n, "%s: port must be a number 1..65535", q);
            return -1;
        }
        snprintf(tmp, sizeof(tmp), "%lu", strtoul(tmp, NULL, 10));
    } else {
        snprintf(tmp, sizeof(tmp), "%s", u->https ? "443" : "80");
    }
    u->port = strdup(tmp);
    u->host = strndup(hs, (size_t)(he - hs));
    u->host_header = strndup(p, auth_len);
    if (u->port == NULL || u->host == NULL || u->host_header == NULL) {
        backend_url_purge(u);
        snprintf(msg, n, "out of memory");
        return -1;
    }
    return 0;
bad:
    snprintf(msg, n, "%s is not a valid URL (expected http(s)://HOST[:PORT] or [IPv6])", q);
    return -1;
}

/* [backend] url: one or more backend servers, space separated; repeatable,
 * appends. All share one scheme (one TLS client context, one channel binding
 * rule); the same server twice is refused. */
static int kp_backend_url(const struct conf_key *k, const char *val, void *base, char *msg,
                          size_t n)
{
    struct conf *c = base;
    char one[VAL_MAX], q[VAL_MAX * 4 + 8];
    const char *p = val;
    bool any = false;

    for (;;) {
        struct conf_backend_url u;
        int w = next_word(&p, one, sizeof(one));

        if (w == 0)
            break;
        if (w < 0) {
            snprintf(msg, n, "URL is too long");
            return -1;
        }
        any = true;
        if (backend_url_parse(one, &u, msg, n) < 0)
            return -1;
        conf_quote(one, q, sizeof(q));
        if (c->n_backends >= CONF_MAX_BACKENDS) {
            snprintf(msg, n, "%s: more than %d backend servers", q, CONF_MAX_BACKENDS);
            backend_url_purge(&u);
            return -1;
        }
        for (size_t i = 0; i < c->n_backends; i++) {
            const struct conf_backend_url *o = &c->backends[i];
            if (o->https != u.https) {
                snprintf(msg, n, "%s: every backend server must use the same scheme as %s://%s "
                         "(line %d)", q, o->https ? "https" : "http", o->host_header, o->line);
                backend_url_purge(&u);
                return -1;
            }
            if (strcasecmp(o->host, u.host) == 0 && strcmp(o->port, u.port) == 0) {
                snprintf(msg, n, "%s: the same server is already listed (line %d)", q, o->line);
                backend_url_purge(&u);
                return -1;
            }
        }
        if (c->n_backends == 0 && set_str(k, base, one, msg, n) < 0) {
            backend_url_purge(&u);
            return -1;
        }
        u.line = c->parse_line;
        c->backends[c->n_backends++] = u;
    }
    if (!any) {
        snprintf(msg, n, "no URL given");
        return -1;
    }
    c->backend = c->backends[0];
    return 0;
}

/* [backend] health_check: METHOD PATH, METHOD GET or HEAD, PATH an origin-form
 * target of visible ASCII (it goes into a request line as it is). */
static int kp_health_check(const struct conf_key *k, const char *val, void *base, char *msg,
                           size_t n)
{
    char q[VAL_MAX * 4 + 8];
    const char *path;

    if (*val == '\0')
        return set_str(k, base, NULL, msg, n);
    conf_quote(val, q, sizeof(q));
    if (strncmp(val, "GET", 3) == 0 && (val[3] == ' ' || val[3] == '\t'))
        path = val + 3;
    else if (strncmp(val, "HEAD", 4) == 0 && (val[4] == ' ' || val[4] == '\t'))
        path = val + 4;
    else {
        snprintf(msg, n, "%s: expected GET /PATH or HEAD /PATH", q);
        return -1;
    }
    while (*path == ' ' || *path == '\t')
        path++;
    if (*path != '/') {
        snprintf(msg, n, "%s: the path must start with /", q);
        return -1;
    }
    for (const char *p = path; *p != '\0'; p++) {
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f) {
            snprintf(msg, n, "%s: the path may hold only visible ASCII, without blanks", q);
            return -1;
        }
    }
    /* Stored normalized, one blank between method and path. */
    char norm[VAL_MAX + 8];
    snprintf(norm, sizeof(norm), "%s %s", val[0] == 'G' ? "GET" : "HEAD", path);
    return set_str(k, base, norm, msg, n);
}

/* [mapping] shared_cache: redis://ADDRESS[:PORT][/DB], ADDRESS an IPv4 or
 * [IPv6] address. hiredis resolves names with a blocking getaddrinfo, which a
 * worker's loop must not wait on; and Debian 12's hiredis (0.14) has no TLS. */
static int kp_shared_cache(const struct conf_key *k, const char *val, void *base, char *msg,
                           size_t n)
{
    struct conf *c = base;
    char q[VAL_MAX * 4 + 8], host[VAL_MAX];
    const char *p, *hs, *he, *port = NULL, *db = NULL, *end, *why;
    unsigned char a[sizeof(struct in6_addr)];
    uint64_t v_port = 6379, v_db = 0;
    char *copy;

    conf_quote(val, q, sizeof(q));
    if (*val == '\0') {
        free(c->shared_cache_host);
        c->shared_cache_host = NULL;
        return set_str(k, base, NULL, msg, n);
    }
    if (strncasecmp(val, "rediss://", 9) == 0) {
        snprintf(msg, n,
                 "%s: rediss:// (TLS) is not available: the hiredis of this system (Debian 12's "
                 "0.14) has no TLS; use redis:// on loopback or a private network, or a local "
                 "TLS tunnel to Redis (docs/ops-shared-cache.md)",
                 q);
        return -1;
    }
    if (strncasecmp(val, "redis://", 8) != 0) {
        snprintf(msg, n, "%s must start with redis://", q);
        return -1;
    }
    p = val + 8;
    if (strlen(p) >= sizeof(host) || strchr(p, '@') != NULL || strpbrk(p, "?#") != NULL) {
        snprintf(msg, n, "%s: only redis://ADDRESS[:PORT][/DB] is allowed (the password goes in "
                         "shared_cache_password_file)", q);
        return -1;
    }
    if (*p == '[') {
        hs = p + 1;
        he = strchr(hs, ']');
        if (he == NULL)
            goto bad;
        end = he + 1;
    } else {
        hs = p;
        he = p + strcspn(p, ":/");
        end = he;
    }
    if (*end == ':') {
        port = end + 1;
        end = port + strcspn(port, "/");
    }
    if (*end == '/') {
        db = end + 1;
        if (*db == '\0')
            db = NULL;
    } else if (*end != '\0') {
        goto bad;
    }
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = '\0';
    if (inet_pton(*p == '[' ? AF_INET6 : AF_INET, host, a) != 1) {
        snprintf(msg, n, "%s: the host must be an IPv4 or [IPv6] address, not a name (a worker "
                         "must not wait for a DNS answer)", q);
        return -1;
    }
    if (port != NULL) {
        char tmp[16];
        size_t len = strcspn(port, "/");
        if (len == 0 || len >= sizeof(tmp))
            goto bad;
        memcpy(tmp, port, len);
        tmp[len] = '\0';
        if (check_port(tmp) < 0)
            goto bad;
        v_port = strtoul(tmp, NULL, 10);
    }
    if (db != NULL && (parse_digits(db, &v_db, &end, &why) < 0 || *end != '\0' || v_db > 255)) {
        snprintf(msg, n, "%s: the database must be a number 0..255", q);
        return -1;
    }
    copy = strdup(host);
    if (copy == NULL) {
        snprintf(msg, n, "out of memory");
        return -1;
    }
    if (set_str(k, base, val, msg, n) < 0) {
        free(copy);
        return -1;
    }
    free(c->shared_cache_host);
    c->shared_cache_host = copy;
    c->shared_cache_port = (unsigned)v_port;
    c->shared_cache_db = (unsigned)v_db;
    return 0;
bad:
    snprintf(msg, n, "%s is not redis://ADDRESS[:PORT][/DB] (ADDRESS IPv4 or [IPv6])", q);
    return -1;
}

/* A secret file holding a key: as kp_secret_file, and long enough to be one. */
static int kp_key_file(const struct conf_key *k, const char *val, void *base, char *msg, size_t n)
{
    size_t len;

    if (secret_file_check(k, val, base, msg, n, &len) < 0)
        return -1;
    if (*val != '\0' && len < 32) {
        snprintf(msg, n, "the key in \"%s\" is %zu bytes: at least 32 are needed "
                         "(e.g. openssl rand -hex 32)", val, len);
        return -1;
    }
    return 0;
}

/* ---- the table ---- */

static const struct conf_enum log_levels[] = {{"error", CM_LOG_ERROR},
                                              {"warn", CM_LOG_WARN},
                                              {"info", CM_LOG_INFO},
                                              {"debug", CM_LOG_DEBUG},
                                              {NULL, 0}};
static const struct conf_enum tls_versions[] = {
    {"TLSv1.2", 0x0303}, {"TLSv1.3", 0x0304}, {NULL, 0}};
static const struct conf_enum cert_modes[] = {
    {"ignore", CERT_IGNORE}, {"accept", CERT_ACCEPT}, {"require", CERT_REQUIRE}, {NULL, 0}};
static const struct conf_enum sources[] = {
    {"ldap", MAP_SOURCE_LDAP}, {"ldif", MAP_SOURCE_LDIF}, {NULL, 0}};
static const struct conf_enum enforcements[] = {{"full", ENFORCE_FULL},
                                                {"compatibility", ENFORCE_COMPATIBILITY},
                                                {"disabled", ENFORCE_DISABLED},
                                                {NULL, 0}};

static const struct conf_enum revocation_unknowns[] = {
    {"refuse", REVOCATION_REFUSE}, {"allow", REVOCATION_ALLOW}, {NULL, 0}};

static const struct conf_enum deleg_modes[] = {
    {"off", DELEG_OFF}, {"kerberos", DELEG_KERBEROS}, {NULL, 0}};
static const struct conf_enum deleg_imps[] = {
    {"sam", IMPERSONATE_SAM}, {"upn", IMPERSONATE_UPN}, {NULL, 0}};
static const struct conf_enum deleg_sends[] = {
    {"first", SEND_FIRST}, {"always", SEND_ALWAYS}, {NULL, 0}};
static const struct conf_enum deleg_bindings[] = {
    {"auto", BINDING_AUTO}, {"off", BINDING_OFF}, {NULL, 0}};

#define F(f) .offset = offsetof(struct conf, f), .width = sizeof(((struct conf *)0)->f)
#define L(f)                                                                                       \
    .offset = offsetof(struct conf_location, f), .width = sizeof(((struct conf_location *)0)->f)

const struct conf_key conf_keys[] = {
    /* [server] */
    {SEC_SERVER, "listen", kp_listen, F(listen), .def = "0.0.0.0:443", .flags = CK_REPEATABLE,
     .help = "HOST:PORT or [IPv6]:PORT to accept TLS on, then optionally proxy_protocol "
             "(a PROXY v1/v2 header precedes TLS); repeat for more (max 16)",
     .iis = "site bindings (https, IP address, port)"},
    {SEC_SERVER, "proxy_protocol_from", kp_cidrs, F(pp_from),
     .help = "networks (CIDR, comma separated) allowed to send a PROXY header on a "
             "proxy_protocol listener; unset: any peer",
     .iis = "none (IIS has no PROXY protocol)"},
    {SEC_SERVER, "workers", kp_uint, F(workers), .min = 0, .max = 1024, .def = "0",
     .help = "worker threads, one event loop each; 0 = one per CPU core",
     .iis = "http.sys / w3wp threads (automatic)"},
    {SEC_SERVER, "user", kp_user, F(user),
     .help = "user to switch to after binding and loading keys; unset: stay",
     .iis = "application pool identity"},
    {SEC_SERVER, "access_log", kp_access_log, F(access_log), .def = "stderr",
     .help = "stderr, off, or a file path", .iis = "site logging (W3C log file)"},
    {SEC_SERVER, "log_level", kp_enum, F(log_level), .names = log_levels, .def = "info",
     .help = "error, warn, info or debug (diagnostic log on stderr)",
     .iis = "none (Windows event log)"},
    {SEC_SERVER, "detailed_errors", kp_bool, F(detailed_errors), .def = "off",
     .help = "on: the reason code is also in 403/503 bodies (always in the access log)",
     .iis = "httpErrors errorMode=\"Detailed\""},
    {SEC_SERVER, "max_request_head", kp_size, F(max_request_head), .min = KIB, .max = MIB,
     .def = "32K", .help = "request line + headers; larger heads are answered 431",
     .iis = "http.sys MaxRequestBytes"},
    {SEC_SERVER, "header_timeout", kp_duration, F(header_timeout_ms), .min = 1, .max = HOUR,
     .def = "30s", .help = "time allowed to receive a whole request head",
     .iis = "http.sys HeaderWait timeout"},
    {SEC_SERVER, "keepalive_timeout", kp_duration, F(keepalive_timeout_ms), .min = 1,
     .max = 24 * HOUR, .def = "65m",
     .help = "idle time allowed between requests on a client connection",
     .iis = "connectionTimeout (site limits)"},
    {SEC_SERVER, "body_timeout", kp_duration, F(body_timeout_ms), .min = 1, .max = HOUR,
     .def = "60s", .help = "inactivity allowed while receiving a request body",
     .iis = "http.sys EntityBody timeout"},
    {SEC_SERVER, "max_connections", kp_uint, F(max_connections), .min = 0,
     .max = CONF_MAX_CONNECTIONS, .def = "0",
     .help = "client connections at once, all workers; at the bound new clients wait in the "
             "listen backlog; 0 = as many as the open-files limit holds (2 descriptors each)",
     .iis = "site limits maxConnections"},
    {SEC_SERVER, "reclaim_idle", kp_uint, F(reclaim_idle), .min = 0, .max = 1024, .def = "0",
     .help = "when a new client finds no room (max_connections reached or no descriptor left), "
             "close up to this many client connections idle between requests, the longest idle "
             "first, to make room; 0 = off: new clients wait",
     .iis = "none (http.sys drops idle connections under its own limits)"},

    /* [tls] */
    {SEC_TLS, "certificate", kp_file, F(certificate), .flags = CK_REQUIRED,
     .help = "PEM server certificate chain, leaf first",
     .iis = "SSL certificate of the https binding (netsh http sslcert certhash)"},
    {SEC_TLS, "private_key", kp_file, F(private_key), .flags = CK_REQUIRED,
     .help = "PEM private key of that certificate",
     .iis = "private key in the machine certificate store"},
    {SEC_TLS, "min_protocol", kp_enum, F(min_protocol), .names = tls_versions, .def = "TLSv1.2",
     .help = "TLSv1.2 or TLSv1.3", .iis = "SCHANNEL Protocols registry keys"},
    {SEC_TLS, "builtin_key_methods", kp_bool, F(builtin_key_methods), .def = "yes",
     .help = "RSA and EC certificate keys through OpenSSL's built-in methods, not providers "
             "(3x cheaper decoding on OpenSSL 3.0); no: providers only (FIPS)",
     .iis = "none (Schannel has no provider layer)"},
    {SEC_TLS, "ciphers", kp_ciphers, F(ciphers), .def = CONF_TLS_CIPHERS,
     .help = "TLS 1.2 ciphers, an OpenSSL cipher string, in the server's order of preference",
     .iis = "SCHANNEL cipher suite order (Group Policy SSL Cipher Suite Order)"},
    {SEC_TLS, "ciphersuites", kp_ciphersuites, F(ciphersuites), .def = CONF_TLS_CIPHERSUITES,
     .help = "TLS 1.3 cipher suites, colon separated, in the server's order of preference",
     .iis = "SCHANNEL cipher suite order (Group Policy SSL Cipher Suite Order)"},
    {SEC_TLS, "groups", kp_groups, F(groups), .def = CONF_TLS_GROUPS,
     .help = "key exchange groups (curves), colon separated, in the server's order of preference",
     .iis = "SCHANNEL ECC curve order (Group Policy ECC Curve Order)"},

    {SEC_TLS, "ticket_keys", kp_file, F(ticket_keys),
     .help = "file of session-ticket keys shared by a fleet, one per line (80 bytes in base64), "
             "the first encrypts, all decrypt; re-read when it changes; unset: random keys",
     .iis = "none (Schannel's per-machine session cache)"},
    {SEC_TLS, "ticket_key_lifetime", kp_duration, F(ticket_key_lifetime_ms), .min = MIN,
     .max = 7 * 24 * HOUR, .def = "12h",
     .help = "without ticket_keys: a new random key this often; the previous still decrypts",
     .iis = "none"},

    /* [client_certificate] */
    {SEC_CLIENT_CERT, "mode", kp_enum, F(cert_mode), .names = cert_modes, .def = "require",
     .help = "ignore, accept or require a client certificate (default for all paths)",
     .iis = "SSL Settings, Client certificates Ignore/Accept/Require "
            "(sslFlags Ssl / SslNegotiateCert / SslRequireCert)"},
    {SEC_CLIENT_CERT, "trust_anchors", kp_file, F(trust_anchors),
     .help = "PEM root CAs a client chain must end at; required unless mode is ignore everywhere",
     .iis = "Trusted Root Certification Authorities store"},
    {SEC_CLIENT_CERT, "trusted_issuers", kp_file, F(trusted_issuers),
     .help = "PEM CAs allowed to issue client certificates directly; unset: any under the anchors",
     .iis = "NTAuth store (NTAuthCertificates)"},
    {SEC_CLIENT_CERT, "crl_file", kp_file, F(crl_file),
     .help = "PEM file with one or more CRLs; unset: no revocation checking unless crl_fetch = on",
     .iis = "certificate revocation checking (CertCheckMode)"},
    {SEC_CLIENT_CERT, "crl_refresh", kp_duration, F(crl_refresh_ms), .min = 100, .max = 24 * HOUR,
     .def = "5m", .help = "how often crl_file is checked for a change (then re-read, no reload)",
     .iis = "none (CryptoAPI URL cache refresh)"},
    {SEC_CLIENT_CERT, "revocation_unknown", kp_enum, F(revocation_unknown),
     .names = revocation_unknowns, .def = "refuse",
     .help = "refuse or allow a certificate whose issuer has no current CRL (cert_untrusted)",
     .iis = "CertCheckMode / RevocationFreshnessTime (offline revocation is a failure)"},
    {SEC_CLIENT_CERT, "crl_fetch", kp_bool, F(crl_fetch), .def = "off",
     .help = "on: fetch CRLs (base and delta) from the http:// CRL distribution points of client "
             "certificates, cached and refreshed before nextUpdate",
     .iis = "CryptoAPI CDP retrieval (CertCheckMode 0)"},
    {SEC_CLIENT_CERT, "crl_fetch_timeout", kp_duration, F(crl_fetch_timeout_ms), .min = 100,
     .max = MIN, .def = "5s",
     .help = "limit for one CRL fetch, and longest a request waits for one (then "
             "revocation_unknown applies)",
     .iis = "ChainUrlRetrievalTimeoutMilliseconds"},
    {SEC_CLIENT_CERT, "crl_fetch_max_size", kp_size, F(crl_fetch_max_size), .min = KIB,
     .max = GIB, .def = "10M", .help = "largest CRL accepted from a distribution point",
     .iis = "none (CryptoAPI URL cache)"},
    {SEC_CLIENT_CERT, "ocsp", kp_bool, F(ocsp), .def = "off",
     .help = "on: ask the certificate's OCSP responder (AIA) when no current CRL covers it; "
             "answers cached until nextUpdate, no nonce",
     .iis = "CryptoAPI OCSP retrieval (AD CS Online Responder)"},
    {SEC_CLIENT_CERT, "verify_depth", kp_uint, F(verify_depth), .min = 1, .max = 16, .def = "4",
     .help = "longest accepted chain below the trust anchor",
     .iis = "none (CryptoAPI chain engine)"},
    {SEC_CLIENT_CERT, "require_client_auth_eku", kp_bool, F(require_client_auth_eku), .def = "yes",
     .help = "refuse certificates without the Client Authentication EKU",
     .iis = "Schannel client authentication EKU check"},
    {SEC_CLIENT_CERT, "negotiate_at_handshake", kp_bool, F(negotiate_at_handshake), .def = "no",
     .help = "yes: ask for a certificate in every handshake; no: ask late where a path needs one",
     .iis = "SSLAlwaysNegoClientCert / netsh http sslcert clientcertnegotiation=enable"},

    /* [mapping] */
    {SEC_MAPPING, "source", kp_enum, F(map_source), .names = sources, .def = "ldap",
     .help = "ldap (Active Directory) or ldif (a file of AD-shaped entries)",
     .iis = "Active Directory Client Certificate Authentication"},
    {SEC_MAPPING, "ldif_file", kp_file, F(ldif_file), .help = "the LDIF file for source = ldif",
     .iis = "none"},
    {SEC_MAPPING, "methods", kp_methods, F(methods), .def = "sid, altsecid, upn",
     .help = "mapping methods tried in order: sid, altsecid, upn, dns",
     .iis = "Schannel CertificateMappingMethods / KB5014754 mapping order"},
    {SEC_MAPPING, "enforcement", kp_enum, F(enforcement), .names = enforcements, .def = "full",
     .help = "full, compatibility or disabled (KB5014754 modes 2 / 1 / 0)",
     .iis = "StrongCertificateBindingEnforcement 2 / 1 / 0"},
    {SEC_MAPPING, "cache_ttl", kp_duration, F(cache_ttl_ms), .min = 0, .max = 24 * HOUR,
     .def = "5m", .help = "how long a successful mapping is reused; 0 = no cache",
     .iis = "UserTokenTTL (IIS user token cache)"},
    {SEC_MAPPING, "negative_cache_ttl", kp_duration, F(negative_cache_ttl_ms), .min = 0,
     .max = 24 * HOUR, .def = "30s", .help = "how long a refused mapping is remembered",
     .iis = "none"},
    {SEC_MAPPING, "cache_entries", kp_uint, F(cache_entries), .min = 1, .max = 100000000,
     .def = "100000", .help = "most identities kept in the cache", .iis = "none"},
    {SEC_MAPPING, "netbios_domain", kp_string, F(netbios_domain),
     .help = "NetBIOS domain for X-Remote-User-Sam (DOMAIN\\sam) when the source cannot tell",
     .iis = "none (the domain's NetBIOS name)"},
    {SEC_MAPPING, "shared_cache", kp_shared_cache, F(shared_cache),
     .help = "redis://ADDRESS[:PORT][/DB]: identities also shared through Redis with the other "
             "instances; unset: local cache only",
     .iis = "none (each IIS server has its own token cache)"},
    {SEC_MAPPING, "shared_cache_password_file", kp_secret_file, F(shared_cache_password_file),
     .help = "file holding the Redis password (AUTH); unset: no AUTH", .iis = "none"},
    {SEC_MAPPING, "shared_cache_key_file", kp_key_file, F(shared_cache_key_file),
     .help = "file holding the key (32+ bytes) that signs each shared value; required with "
             "shared_cache, the same on every instance",
     .iis = "none"},
    {SEC_MAPPING, "shared_cache_timeout", kp_duration, F(shared_cache_timeout_ms), .min = 1,
     .max = 10 * SEC, .def = "100ms",
     .help = "wait for a Redis answer; then the directory is asked", .iis = "none"},

    /* [ldap] */
    {SEC_LDAP, "uri", kp_uris, F(ldap_uri), .flags = CK_REPEATABLE,
     .help = "ldap:// or ldaps:// URIs of domain controllers, space separated, tried in order "
             "(max 8; the key may be repeated)",
     .iis = "none (DC locator)"},
    {SEC_LDAP, "base_dn", kp_dn, F(base_dn), .help = "search base, e.g. DC=corp,DC=example,DC=test",
     .iis = "none (domain naming context)"},
    {SEC_LDAP, "bind_dn", kp_string, F(bind_dn),
     .help = "account to bind as (DN or user@domain); required with source = ldap",
     .iis = "none (the server's machine account)"},
    {SEC_LDAP, "bind_password_file", kp_secret_file, F(bind_password_file),
     .help = "file holding the bind password", .iis = "none"},
    {SEC_LDAP, "ca_file", kp_file, F(ldap_ca_file),
     .help = "PEM CA for ldaps:// and StartTLS; unset: system store", .iis = "none"},
    {SEC_LDAP, "timeout", kp_duration, F(ldap_timeout_ms), .min = 1, .max = 5 * MIN, .def = "5s",
     .help = "limit for each directory operation (connect, bind, search)", .iis = "none"},

    /* [backend] */
    {SEC_BACKEND, "url", kp_backend_url, F(backend_url_text), .flags = CK_REQUIRED | CK_REPEATABLE,
     .help = "the EAS backend: http(s)://HOST[:PORT], HOST a name, IPv4 or [IPv6]; several "
             "(space separated or the key repeated, max 8, one scheme): round robin with failover",
     .iis = "none (the Exchange servers behind the SEG; ARR server farm)"},
    {SEC_BACKEND, "fail_timeout", kp_duration, F(backend_fail_timeout_ms), .min = 0,
     .max = HOUR, .def = "10s",
     .help = "a server that refused, timed out or failed TLS while connecting is skipped this "
             "long (0: never skipped)",
     .iis = "ARR server farm health test: failed server retry interval"},
    {SEC_BACKEND, "health_check", kp_health_check, F(backend_health_check),
     .help = "GET /PATH or HEAD /PATH: each server is asked every health_interval; an answer "
             "other than 2xx/3xx marks it down until one is; unset: no active checks",
     .iis = "ARR server farm health test URL"},
    {SEC_BACKEND, "health_interval", kp_duration, F(backend_health_interval_ms), .min = 100,
     .max = HOUR, .def = "10s", .help = "how often health_check asks each server",
     .iis = "ARR server farm health test interval"},
    {SEC_BACKEND, "health_timeout", kp_duration, F(backend_health_timeout_ms), .min = 1,
     .max = 5 * MIN, .def = "5s",
     .help = "limit for a health check's answer status line, connecting included",
     .iis = "ARR server farm health test time-out"},
    {SEC_BACKEND, "ca_file", kp_file, F(backend_ca_file),
     .help = "PEM CA to verify an https backend; unset: system store", .iis = "none"},
    {SEC_BACKEND, "connect_timeout", kp_duration, F(backend_connect_timeout_ms), .min = 1,
     .max = 5 * MIN, .def = "5s", .help = "limit for connecting to the backend",
     .iis = "ARR proxy timeout"},
    {SEC_BACKEND, "read_timeout", kp_duration, F(backend_read_timeout_ms), .min = 1,
     .max = 24 * HOUR, .def = "65m",
     .help = "limit for the backend's answer; above the longest EAS heartbeat (3540 s)",
     .iis = "ARR proxy timeout"},
    {SEC_BACKEND, "keepalive_connections", kp_uint, F(keepalive_connections), .min = 0,
     .max = 100000, .def = "64", .help = "idle backend connections kept per worker",
     .iis = "ARR / WinHTTP connection pooling"},

    /* [buffering] */
    {SEC_BUFFERING, "upload_read_ahead_size", kp_size, F(upload_read_ahead_size), .min = 0,
     .max = GIB, .def = "48K", .help = "request body held while a late certificate is obtained",
     .iis = "serverRuntime uploadReadAheadSize"},

    /* [delegation] */
    {SEC_DELEGATION, "mode", kp_enum, F(deleg_mode), .names = deleg_modes, .def = "off",
     .help = "off: identity headers only; kerberos: authenticate to the backend as the mapped "
             "user (S4U2Self + S4U2Proxy)",
     .iis = "Kerberos constrained delegation of the SEG service account"},
    {SEC_DELEGATION, "principal", kp_string, F(deleg_principal),
     .help = "the gateway's service account, e.g. svc-seg@CORP.EXAMPLE.TEST",
     .iis = "the SEG service account"},
    {SEC_DELEGATION, "keytab", kp_file, F(deleg_keytab),
     .help = "keytab holding the service account's keys", .iis = "none (ktpass / exportkeytab)"},
    {SEC_DELEGATION, "target_spn", kp_string, F(deleg_target_spn), .def = "HTTP/<backend host>",
     .flags = CK_NO_APPLY, .help = "the backend's service principal name",
     .iis = "Delegation tab: services to which this account can present delegated credentials"},
    {SEC_DELEGATION, "krb5_conf", kp_file, F(deleg_krb5_conf),
     .help = "krb5.conf to use; unset: the system's (KRB5_CONFIG or /etc/krb5.conf)",
     .iis = "none"},
    {SEC_DELEGATION, "impersonate", kp_enum, F(deleg_impersonate), .names = deleg_imps,
     .def = "sam",
     .help = "sam: sAMAccountName@REALM from the directory; upn: the userPrincipalName as an "
             "enterprise name",
     .iis = "none (protocol transition, S4U2Self)"},
    {SEC_DELEGATION, "send", kp_enum, F(deleg_send), .names = deleg_sends, .def = "first",
     .help = "first: Authorization on the first request of each backend connection; always: on "
             "every request",
     .iis = "windowsAuthentication authPersistNonNTLM"},
    {SEC_DELEGATION, "channel_binding", kp_enum, F(deleg_binding), .names = deleg_bindings,
     .def = "auto",
     .help = "auto: with an https backend, bind the token to its certificate (RFC 5929 "
             "tls-server-end-point); off: never",
     .iis = "Extended Protection for Authentication (tokenChecking)"},
    {SEC_DELEGATION, "timeout", kp_duration, F(deleg_timeout_ms), .min = 1, .max = 5 * MIN,
     .def = "5s", .help = "limit for obtaining a user's ticket from the KDC (then 503)",
     .iis = "none"},
    {SEC_DELEGATION, "cache_entries", kp_uint, F(deleg_cache_entries), .min = 1,
     .max = 10000000, .def = "10000",
     .help = "users whose delegated credentials are kept (until their end time less a margin)",
     .iis = "none (the Kerberos ticket cache)"},

    /* [metrics] */
    {SEC_METRICS, "listen", kp_metrics_listen, F(metrics_listen),
     .help = "HOST:PORT for Prometheus text at /metrics and /healthz for load balancers; unset: "
             "no listener",
     .iis = "none (Performance Monitor counters)"},
    {SEC_METRICS, "healthz_timeout", kp_duration, F(metrics_healthz_timeout_ms), .min = 1,
     .max = MIN, .def = "2s", .help = "/healthz: limit for each TCP connect to a backend address",
     .iis = "none (load balancer health probe)"},

    /* [location PATH] */
    {SEC_LOCATION, "client_certificate", kp_enum, L(client_certificate), .names = cert_modes,
     .def = "[client_certificate] mode", .flags = CK_NO_APPLY,
     .help = "ignore, accept or require for this path prefix (longest prefix wins)",
     .iis = "<location path=...> access sslFlags"},
    {SEC_LOCATION, "mapping", kp_bool, L(mapping), .def = "on",
     .help = "off: certificate checks only, no directory lookup, for this path",
     .iis = "<location path=...> clientCertificateMappingAuthentication enabled"},
};

const size_t conf_n_keys = sizeof(conf_keys) / sizeof(conf_keys[0]);

_Static_assert(sizeof(conf_keys) / sizeof(conf_keys[0]) <= CONF_KEYS_MAX, "raise CONF_KEYS_MAX");
_Static_assert(sizeof(enum cert_mode) == sizeof(int), "enum fields are written as int");
_Static_assert(sizeof(enum map_source_kind) == sizeof(int), "enum fields are written as int");
_Static_assert(sizeof(enum map_enforcement) == sizeof(int), "enum fields are written as int");
_Static_assert(sizeof(enum deleg_mode) == sizeof(int), "enum fields are written as int");
_Static_assert(sizeof(enum revocation_unknown) == sizeof(int), "enum fields are written as int");

const char *conf_section_name(enum conf_section s)
{
    static const char *const names[SEC_MAX] = {
        [SEC_NONE] = "",
        [SEC_SERVER] = "server",
        [SEC_TLS] = "tls",
        [SEC_CLIENT_CERT] = "client_certificate",
        [SEC_MAPPING] = "mapping",
        [SEC_LDAP] = "ldap",
        [SEC_BACKEND] = "backend",
        [SEC_BUFFERING] = "buffering",
        [SEC_DELEGATION] = "delegation",
        [SEC_METRICS] = "metrics",
        [SEC_LOCATION] = "location",
    };
    return (unsigned)s < SEC_MAX ? names[s] : "";
}

static void range_text(const struct conf_key *k, char *out, size_t n)
{
    char lo[32], hi[32];

    if (k->parse == kp_size) {
        fmt_size(k->min, lo, sizeof(lo));
        fmt_size(k->max, hi, sizeof(hi));
    } else {
        fmt_duration(k->min, lo, sizeof(lo));
        fmt_duration(k->max, hi, sizeof(hi));
    }
    snprintf(out, n, " [%s..%s]", lo, hi);
}

void conf_key_range(const struct conf_key *k, char *out, size_t n)
{
    if (k->parse == kp_uint)
        snprintf(out, n, " [%llu..%llu]", (unsigned long long)k->min, (unsigned long long)k->max);
    else if (k->parse == kp_size || k->parse == kp_duration)
        range_text(k, out, n);
    else if (n > 0)
        out[0] = '\0';
}

void conf_print_keys(void *fp)
{
    FILE *out = fp;

    for (size_t i = 0; i < conf_n_keys; i++) {
        const struct conf_key *k = &conf_keys[i];
        const char *sec = conf_section_name(k->sec);
        char range[80];

        const char *def = k->flags & CK_REQUIRED ? "(required)" : k->def;

        fprintf(out, "[%s%s] %s =%s%s%s\n", sec, k->sec == SEC_LOCATION ? " PATH" : "", k->name,
                def != NULL ? " " : "", def != NULL ? def : "",
                k->flags & CK_REPEATABLE ? "   (repeatable)" : "");
        conf_key_range(k, range, sizeof(range));
        fprintf(out, "    %s%s\n    IIS: %s\n", k->help, range, k->iis);
    }
}
