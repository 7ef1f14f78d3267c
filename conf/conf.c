/* Loading a configuration file: inih does the INI syntax, our own line reader
 * counts lines, tracks section headers and refuses what inih would silently
 * mangle (long lines, NUL bytes); the key table (keys.c) does the values; the
 * checks that need the whole file run last. */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "conf/internal.h"

#define MSG_MAX 2048

struct loader {
    const char *file;
    FILE *fp;
    char *buf; /* getline() buffer */
    size_t cap;
    int line;                    /* number of the line inih is handling */
    enum conf_section sec;       /* current section, SEC_NONE before the first */
    struct conf_location *loc;   /* current location when sec == SEC_LOCATION */
    int sec_line[SEC_MAX];       /* first header of each section kind, 0: none */
    int key_line[CONF_KEYS_MAX]; /* where each non-location key was set, 0: not set */
    int loc_key_line[CONF_MAX_LOCATIONS][CONF_KEYS_MAX];
    int err_line; /* line of the first error of ours, 0: none */
    bool failed;
    char err[MSG_MAX + 4096 + 32]; /* room for the file name and a message */
    struct conf *c;
};

static void fail_at(struct loader *ld, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records the first error only: later ones are often consequences of it. */
static void fail_at(struct loader *ld, int line, const char *fmt, ...)
{
    char msg[MSG_MAX];
    va_list ap;

    if (ld->failed)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (line > 0)
        snprintf(ld->err, sizeof(ld->err), "%s:%d: %s", ld->file, line, msg);
    else
        snprintf(ld->err, sizeof(ld->err), "%s: %s", ld->file, msg);
    ld->failed = true;
    ld->err_line = line > 0 ? line : 1;
}

/* "[server]" or "[location /x]", for messages. */
static void section_label(const struct loader *ld, char *out, size_t n)
{
    if (ld->sec == SEC_LOCATION && ld->loc != NULL)
        snprintf(out, n, "[location %s]", ld->loc->prefix);
    else
        snprintf(out, n, "[%s]", conf_section_name(ld->sec));
}

static const struct conf_key *key_find(enum conf_section sec, const char *name, size_t *idx)
{
    for (size_t i = 0; i < conf_n_keys; i++) {
        if (conf_keys[i].sec == sec && strcmp(conf_keys[i].name, name) == 0) {
            *idx = i;
            return &conf_keys[i];
        }
    }
    return NULL;
}

static int apply_default(struct loader *ld, const struct conf_key *k, void *base)
{
    char msg[MSG_MAX];

    if (k->def == NULL || (k->flags & CK_NO_APPLY))
        return 0;
    if (k->parse(k, k->def, base, msg, sizeof(msg)) < 0) {
        /* a broken default is our bug, but say so rather than crash */
        fail_at(ld, 0, "[%s] %s: default %s", conf_section_name(k->sec), k->name, msg);
        return -1;
    }
    return 0;
}

/* [location PATH]: PATH must start with "/", hold no blanks or controls, be unique. */
static void location_begin(struct loader *ld, const char *path)
{
    struct conf *c = ld->c;
    struct conf_location *l;
    char q[MSG_MAX / 2];

    conf_quote(path, q, sizeof(q));
    if (*path == '\0') {
        fail_at(ld, ld->line,
                "[location] needs a path, e.g. [location /Microsoft-Server-ActiveSync]");
        return;
    }
    if (path[0] != '/') {
        fail_at(ld, ld->line, "[location %s]: the path must start with \"/\"", q);
        return;
    }
    for (const char *p = path; *p != '\0'; p++) {
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p == 0x7f) {
            fail_at(ld, ld->line, "[location %s]: the path must not contain blanks or controls", q);
            return;
        }
    }
    for (size_t i = 0; i < c->n_locations; i++) {
        /* case-insensitive, as conf_location_for() matches */
        if (strcasecmp(c->locations[i].prefix, path) == 0) {
            fail_at(ld, ld->line, "[location %s]: duplicate location (first at line %d)", q,
                    c->locations[i].line);
            return;
        }
    }
    if (c->n_locations >= CONF_MAX_LOCATIONS) {
        fail_at(ld, ld->line, "more than %d [location] sections", CONF_MAX_LOCATIONS);
        return;
    }
    l = &c->locations[c->n_locations];
    memset(l, 0, sizeof(*l));
    l->prefix = strdup(path);
    if (l->prefix == NULL) {
        fail_at(ld, ld->line, "out of memory");
        return;
    }
    l->prefix_len = strlen(path);
    l->line = ld->line;
    c->n_locations++;
    ld->loc = l;
    for (size_t i = 0; i < conf_n_keys; i++) {
        if (conf_keys[i].sec == SEC_LOCATION && apply_default(ld, &conf_keys[i], l) < 0)
            return;
    }
}

/* A section header seen by the reader: <name> is what is inside the brackets. */
static void section_begin(struct loader *ld, char *name)
{
    size_t len = strlen(name);
    char q[MSG_MAX / 2];

    while (isspace((unsigned char)*name))
        name++, len--;
    while (len > 0 && isspace((unsigned char)name[len - 1]))
        name[--len] = '\0';
    ld->loc = NULL;
    if (strncmp(name, "location", 8) == 0 && (name[8] == '\0' || isspace((unsigned char)name[8]))) {
        char *path = name + 8;
        while (isspace((unsigned char)*path))
            path++;
        ld->sec = SEC_LOCATION;
        if (ld->sec_line[SEC_LOCATION] == 0)
            ld->sec_line[SEC_LOCATION] = ld->line;
        location_begin(ld, path);
        return;
    }
    for (int s = SEC_NONE + 1; s < SEC_MAX; s++) {
        if (s != SEC_LOCATION && strcmp(name, conf_section_name((enum conf_section)s)) == 0) {
            ld->sec = (enum conf_section)s;
            if (ld->sec_line[s] == 0)
                ld->sec_line[s] = ld->line;
            return;
        }
    }
    conf_quote(name, q, sizeof(q));
    fail_at(ld, ld->line,
            "unknown section %s (expected server, tls, client_certificate, mapping, ldap, "
            "backend, buffering, delegation, metrics or location PATH)",
            q);
}

/* Looks at a line the way inih will: a section header is "[" ... "]" where
 * the "]" comes before any inline comment (";" after a blank). Lines inih will
 * reject are left for inih to report. */
static void reader_look(struct loader *ld, char *p)
{
    bool was_space = false;
    char *s;

    if (*p != '[')
        return;
    for (s = p + 1; *s != '\0' && *s != ']'; s++) {
        if (was_space && *s == ';')
            return;
        was_space = isspace((unsigned char)*s);
    }
    if (*s != ']')
        return;
    for (char *t = s + 1; *t != '\0'; t++) {
        if (*t == ';' && isspace((unsigned char)t[-1]))
            break;
        if (!isspace((unsigned char)*t)) {
            fail_at(ld, ld->line, "unexpected text after the section header");
            return;
        }
    }
    *s = '\0';
    section_begin(ld, p + 1);
    *s = ']';
}

/* inih's fgets-style reader. Hands inih one line at a time, without leading
 * blanks: an indented line is then never taken as the continuation of the
 * previous value (inih's multi-line values), which would silently merge keys. */
static char *reader(char *str, int num, void *stream)
{
    struct loader *ld = stream;
    ssize_t n;
    char *p;
    size_t len;

    if (ld->failed)
        return NULL;
    errno = 0;
    n = getline(&ld->buf, &ld->cap, ld->fp);
    if (n < 0) {
        if (ferror(ld->fp))
            fail_at(ld, ld->line + 1, "read error: %s", strerror(errno ? errno : EIO));
        return NULL;
    }
    ld->line++;
    len = (size_t)n;
    if (memchr(ld->buf, '\0', len) != NULL) {
        fail_at(ld, ld->line, "the line contains a NUL byte");
        return NULL;
    }
    while (len > 0 && (ld->buf[len - 1] == '\n' || ld->buf[len - 1] == '\r'))
        ld->buf[--len] = '\0';
    p = ld->buf;
    if (ld->line == 1 && strncmp(p, "\xEF\xBB\xBF", 3) == 0)
        p += 3;
    while (isspace((unsigned char)*p))
        p++;
    len = strlen(p);
    if (num < 2 || len > (size_t)num - 1) {
        fail_at(ld, ld->line, "the line is longer than %d characters", num - 1);
        return NULL;
    }
    reader_look(ld, p);
    if (ld->failed)
        return NULL;
    memcpy(str, p, len + 1);
    return str;
}

/* inih's handler: <section> is ignored (inih truncates long ones); the
 * reader's own section state is used instead. Returns 0 on error. */
/* Appends "name=value\n" to the current section's text (conf_section_same). */
static int section_text_add(struct loader *ld, const char *name, const char *value)
{
    char **t = &ld->c->section_text[ld->sec];
    size_t old = *t != NULL ? strlen(*t) : 0, add = strlen(name) + strlen(value) + 2;
    char *n = realloc(*t, old + add + 1);
    if (n == NULL)
        return -1;
    snprintf(n + old, add + 1, "%s=%s\n", name, value);
    *t = n;
    return 0;
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
    struct loader *ld = user;
    const struct conf_key *k;
    char label[MSG_MAX / 2], q[MSG_MAX / 2], msg[MSG_MAX];
    size_t idx;
    int *seen;

    (void)section;
    if (ld->failed)
        return 0;
    if (ld->sec == SEC_NONE) {
        conf_quote(name, q, sizeof(q));
        fail_at(ld, ld->line, "key %s outside of any section", q);
        return 0;
    }
    if (ld->sec == SEC_LOCATION && ld->loc == NULL)
        return 0; /* the header was refused already */
    section_label(ld, label, sizeof(label));
    k = key_find(ld->sec, name, &idx);
    if (k == NULL) {
        conf_quote(name, q, sizeof(q));
        fail_at(ld, ld->line, "%s unknown key %s", label, q);
        return 0;
    }
    seen = ld->sec == SEC_LOCATION ? &ld->loc_key_line[ld->loc - ld->c->locations][idx]
                                   : &ld->key_line[idx];
    if (*seen != 0 && !(k->flags & CK_REPEATABLE)) {
        fail_at(ld, ld->line, "%s %s: duplicate key (first set at line %d)", label, name, *seen);
        return 0;
    }
    ld->c->parse_line = ld->line;
    if (k->parse(k, value, ld->sec == SEC_LOCATION ? (void *)ld->loc : (void *)ld->c, msg,
                 sizeof(msg)) < 0) {
        fail_at(ld, ld->line, "%s %s: %s", label, name, msg);
        return 0;
    }
    if (*seen == 0)
        *seen = ld->line;
    if (ld->sec != SEC_LOCATION && section_text_add(ld, name, value) < 0)
        fail_at(ld, ld->line, "out of memory");
    return 1;
}

/* Line of key <sec>/<name> if set, else of its section, else 0. */
static int where(const struct loader *ld, enum conf_section sec, const char *name)
{
    size_t idx;

    if (key_find(sec, name, &idx) != NULL && ld->key_line[idx] != 0)
        return ld->key_line[idx];
    return ld->sec_line[sec];
}

static bool is_set(const struct loader *ld, enum conf_section sec, const char *name)
{
    size_t idx;

    return key_find(sec, name, &idx) != NULL && ld->key_line[idx] != 0;
}

static const char *mode_name(enum cert_mode m)
{
    return m == CERT_IGNORE ? "ignore" : m == CERT_ACCEPT ? "accept" : "require";
}

/* Checks that need the whole file: defaults that depend on other keys, and
 * combinations that cannot work. Reports the first problem. */
static void finish(struct loader *ld)
{
    struct conf *c = ld->c;
    char msg[MSG_MAX];
    size_t idx = 0;

    c->parse_line = 0;
    for (size_t i = 0; i < conf_n_keys && !ld->failed; i++) {
        const struct conf_key *k = &conf_keys[i];
        if ((k->flags & CK_REPEATABLE) && ld->key_line[i] == 0 && k->def != NULL &&
            k->parse(k, k->def, c, msg, sizeof(msg)) < 0)
            fail_at(ld, 0, "[%s] %s: default %s", conf_section_name(k->sec), k->name, msg);
        if ((k->flags & CK_REQUIRED) && ld->key_line[i] == 0)
            fail_at(ld, ld->sec_line[k->sec], "[%s] %s is required", conf_section_name(k->sec),
                    k->name);
    }
    if (ld->failed)
        return;

    if (c->workers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        c->workers = n < 1 ? 1 : n > 1024 ? 1024 : (unsigned)n;
    }

    if (c->n_pp_from > 0) {
        bool any = false;
        for (size_t i = 0; i < c->n_listen; i++)
            any = any || c->listen[i].proxy_protocol;
        if (!any) {
            fail_at(ld, where(ld, SEC_SERVER, "proxy_protocol_from"),
                    "[server] proxy_protocol_from is set, but no listen has proxy_protocol");
            return;
        }
    }

    if (key_find(SEC_LOCATION, "client_certificate", &idx) == NULL)
        return;
    for (size_t i = 0; i < c->n_locations; i++) {
        struct conf_location *l = &c->locations[i];
        int line = ld->loc_key_line[i][idx];

        if (line == 0)
            l->client_certificate = c->cert_mode;
        if (l->client_certificate != CERT_IGNORE && c->trust_anchors == NULL) {
            line = line != 0 ? line : l->line;
            fail_at(ld, line,
                    "[location %s] client_certificate = %s needs [client_certificate] "
                    "trust_anchors",
                    l->prefix, mode_name(l->client_certificate));
            return;
        }
    }
    if (c->cert_mode != CERT_IGNORE && c->trust_anchors == NULL) {
        fail_at(ld, where(ld, SEC_CLIENT_CERT, "mode"),
                "[client_certificate] mode = %s%s needs trust_anchors", mode_name(c->cert_mode),
                is_set(ld, SEC_CLIENT_CERT, "mode") ? "" : " (the default)");
        return;
    }

    c->has_mapping_section = ld->sec_line[SEC_MAPPING] != 0;
    c->has_ldap_section = ld->sec_line[SEC_LDAP] != 0;
    if (c->has_mapping_section && c->map_source == MAP_SOURCE_LDAP) {
        if (c->n_ldap_uri == 0) {
            fail_at(ld, where(ld, SEC_MAPPING, "source"),
                    "[mapping] source = ldap needs [ldap] uri");
            return;
        }
        if (c->base_dn == NULL) {
            fail_at(ld, where(ld, SEC_MAPPING, "source"),
                    "[mapping] source = ldap needs [ldap] base_dn");
            return;
        }
    }
    if (c->has_mapping_section && c->map_source == MAP_SOURCE_LDIF && c->ldif_file == NULL) {
        fail_at(ld, where(ld, SEC_MAPPING, "source"), "[mapping] source = ldif needs ldif_file");
        return;
    }
    if (c->has_mapping_section && c->map_source == MAP_SOURCE_LDAP && c->bind_dn == NULL) {
        /* Active Directory answers no anonymous search for accounts. */
        fail_at(ld, where(ld, SEC_MAPPING, "source"),
                "[mapping] source = ldap needs [ldap] bind_dn and bind_password_file (Active "
                "Directory refuses anonymous searches)");
        return;
    }
    c->has_delegation_section = ld->sec_line[SEC_DELEGATION] != 0;
    if (c->deleg_mode == DELEG_KERBEROS) {
        int line = where(ld, SEC_DELEGATION, "mode");
        if (!c->has_mapping_section) {
            fail_at(ld, line, "[delegation] mode = kerberos needs a [mapping] section: the user "
                              "to delegate for is the certificate's mapped account");
            return;
        }
        if (c->deleg_principal == NULL || c->deleg_keytab == NULL) {
            fail_at(ld, line, "[delegation] mode = kerberos needs principal and keytab");
            return;
        }
        const char *at = strchr(c->deleg_principal, '@');
        if (at == NULL || at == c->deleg_principal || at[1] == '\0' || strchr(at + 1, '@')) {
            fail_at(ld, where(ld, SEC_DELEGATION, "principal"),
                    "[delegation] principal \"%s\" is not NAME@REALM", c->deleg_principal);
            return;
        }
        for (size_t i = 1; c->deleg_target_spn == NULL && i < c->n_backends; i++) {
            /* HTTP/<backend host> names one host: servers of several need the
             * shared SPN their service account holds (Exchange's ASA). */
            if (strcasecmp(c->backends[i].host, c->backend.host) != 0) {
                fail_at(ld, line,
                        "[delegation] target_spn is required: the [backend] servers %s (line %d) "
                        "and %s (line %d) are different hosts",
                        c->backend.host, c->backend.line, c->backends[i].host,
                        c->backends[i].line);
                return;
            }
        }
        if (c->deleg_target_spn == NULL) {
            size_t n = strlen(c->backend.host) + 6;
            c->deleg_target_spn = malloc(n);
            if (c->deleg_target_spn == NULL) {
                fail_at(ld, 0, "out of memory");
                return;
            }
            snprintf(c->deleg_target_spn, n, "HTTP/%s", c->backend.host);
        } else if (strncmp(c->deleg_target_spn, "HTTP/", 5) != 0 || c->deleg_target_spn[5] == '\0' ||
                   strchr(c->deleg_target_spn, '@') != NULL) {
            fail_at(ld, where(ld, SEC_DELEGATION, "target_spn"),
                    "[delegation] target_spn \"%s\" is not HTTP/HOST", c->deleg_target_spn);
            return;
        }
    }
    if (c->has_metrics_listen) {
        for (size_t i = 0; i < c->n_listen; i++) {
            if (c->listen[i].addrlen == c->metrics_listen.addrlen &&
                memcmp(&c->listen[i].addr, &c->metrics_listen.addr, c->metrics_listen.addrlen) ==
                    0) {
                fail_at(ld, where(ld, SEC_METRICS, "listen"),
                        "[metrics] listen \"%s\" is also a [server] listen address",
                        c->metrics_listen.text);
                return;
            }
        }
    }
    if (c->shared_cache != NULL && c->shared_cache_key_file == NULL) {
        /* Without it, whoever can write to Redis can map any certificate to any account. */
        fail_at(ld, where(ld, SEC_MAPPING, "shared_cache"),
                "[mapping] shared_cache needs shared_cache_key_file (the key that signs every "
                "value, so that a write to Redis alone cannot forge a mapping)");
        return;
    }
    if (c->bind_dn != NULL && c->bind_password_file == NULL) {
        fail_at(ld, where(ld, SEC_LDAP, "bind_dn"), "[ldap] bind_dn needs bind_password_file");
        return;
    }
    if (c->bind_password_file != NULL && c->bind_dn == NULL) {
        fail_at(ld, where(ld, SEC_LDAP, "bind_password_file"),
                "[ldap] bind_password_file needs bind_dn");
        return;
    }
}

int conf_load(const char *path, struct conf **out, char *err, size_t errlen)
{
    struct loader *ld = NULL;
    struct conf *c = NULL;
    int rc = -1, r;

    *out = NULL;
    ld = calloc(1, sizeof(*ld));
    c = calloc(1, sizeof(*c));
    if (ld == NULL || c == NULL) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    ld->file = path;
    ld->c = c;
    c->path = strdup(path);
    if (c->path == NULL) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    ld->fp = fopen(path, "re");
    if (ld->fp == NULL) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    for (size_t i = 0; i < conf_n_keys && !ld->failed; i++) {
        const struct conf_key *k = &conf_keys[i];
        if (k->sec != SEC_LOCATION && !(k->flags & CK_REPEATABLE))
            apply_default(ld, k, c);
    }
    if (!ld->failed) {
        r = ini_parse_stream(reader, ld, handler, ld);
        if (r == -2) {
            snprintf(err, errlen, "%s: out of memory", path);
            goto fail;
        }
        /* inih reports the first line it could not parse; ours may come later */
        if (r > 0 && (!ld->failed || r < ld->err_line)) {
            snprintf(err, errlen, "%s:%d: syntax error (expected [section] or key = value)", path,
                     r);
            goto fail;
        }
    }
    if (!ld->failed)
        finish(ld);
    memcpy(c->key_line, ld->key_line, sizeof c->key_line);
    if (ld->failed) {
        snprintf(err, errlen, "%s", ld->err);
        goto fail;
    }
    *out = c;
    c = NULL;
    rc = 0;
fail:
    if (ld != NULL) {
        if (ld->fp != NULL)
            fclose(ld->fp);
        free(ld->buf);
        free(ld);
    }
    conf_free(c);
    return rc;
}

bool conf_section_same(const struct conf *a, const struct conf *b, const char *section)
{
    for (int s = SEC_NONE + 1; s < SEC_MAX; s++) {
        if (strcmp(conf_section_name((enum conf_section)s), section) != 0)
            continue;
        const char *x = a->section_text[s], *y = b->section_text[s];
        return (x == NULL && y == NULL) || (x != NULL && y != NULL && strcmp(x, y) == 0);
    }
    return false;
}

const char *conf_section_text(const struct conf *c, const char *section)
{
    for (int s = SEC_NONE + 1; s < SEC_MAX; s++) {
        if (strcmp(conf_section_name((enum conf_section)s), section) == 0)
            return c->section_text[s] != NULL ? c->section_text[s] : "";
    }
    return "";
}

void conf_free(struct conf *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < CONF_SECTION_SLOTS; i++)
        free(c->section_text[i]);
    free(c->path);
    for (size_t i = 0; i < c->n_listen; i++)
        free(c->listen[i].text);
    free(c->metrics_listen.text);
    free(c->user);
    free(c->access_log);
    free(c->certificate);
    free(c->private_key);
    free(c->ciphers);
    free(c->ciphersuites);
    free(c->groups);
    free(c->ticket_keys);
    free(c->trust_anchors);
    free(c->trusted_issuers);
    free(c->crl_file);
    free(c->ldif_file);
    free(c->netbios_domain);
    free(c->shared_cache);
    free(c->shared_cache_host);
    free(c->shared_cache_password_file);
    free(c->shared_cache_key_file);
    for (size_t i = 0; i < c->n_ldap_uri; i++)
        free(c->ldap_uri[i]);
    free(c->base_dn);
    free(c->bind_dn);
    free(c->bind_password_file);
    free(c->ldap_ca_file);
    free(c->backend_url_text);
    for (size_t i = 0; i < c->n_backends; i++) {
        free(c->backends[i].host);
        free(c->backends[i].port);
        free(c->backends[i].host_header);
    }
    free(c->backend_ca_file);
    free(c->backend_health_check);
    free(c->deleg_principal);
    free(c->deleg_keytab);
    free(c->deleg_target_spn);
    free(c->deleg_krb5_conf);
    for (size_t i = 0; i < c->n_locations; i++)
        free(c->locations[i].prefix);
    free(c);
}

const char *conf_where(const struct conf *c, const char *section, const char *key, char *buf,
                       size_t len)
{
    int line = 0;

    for (size_t i = 0; i < conf_n_keys; i++) {
        if (strcmp(conf_keys[i].name, key) == 0 &&
            strcmp(conf_section_name(conf_keys[i].sec), section) == 0) {
            line = c->key_line[i];
            break;
        }
    }
    if (c->path == NULL) /* a configuration built in memory (unit tests) */
        snprintf(buf, len, "[%s] %s", section, key);
    else if (line > 0)
        snprintf(buf, len, "%s:%d: [%s] %s", c->path, line, section, key);
    else
        snprintf(buf, len, "%s: [%s] %s", c->path, section, key);
    return buf;
}

/* Case-insensitive: IIS and Exchange treat URL paths so, and a policy that a
 * client could dodge with "/microsoft-server-activesync" would be no policy. */
const struct conf_location *conf_location_for(const struct conf *c, const char *path, size_t len)
{
    const struct conf_location *best = NULL;

    if (c == NULL || path == NULL)
        return NULL;
    for (size_t i = 0; i < c->n_locations; i++) {
        const struct conf_location *l = &c->locations[i];
        if (l->prefix_len <= len && strncasecmp(l->prefix, path, l->prefix_len) == 0 &&
            (best == NULL || l->prefix_len > best->prefix_len))
            best = l;
    }
    return best;
}
