/* HTTP/1.1 message pieces: received heads, the heads certmapd writes towards
 * the backend and the client, error answers, and the path used for policy. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include <llhttp.h>

#include "common/text.h"
#include "proxy/http.h"

/* ---- received heads ---------------------------------------------------- */

void proxy_head_reset(struct proxy_head *hd, size_t limit)
{
    hd->len = 0;
    hd->n = 0;
    hd->url_off = hd->url_len = 0;
    hd->in_value = false;
    hd->limit = limit;
}

void proxy_head_shrink_to_url(struct proxy_head *hd)
{
    free(hd->h);
    hd->h = NULL;
    hd->n = hd->cap_h = 0;
    if (hd->buf == NULL)
        return;
    memmove(hd->buf, hd->buf + hd->url_off, hd->url_len);
    hd->url_off = 0;
    hd->len = hd->url_len;
    char *b = realloc(hd->buf, hd->url_len > 0 ? hd->url_len : 1);
    if (b != NULL) {
        hd->buf = b;
        hd->cap = hd->url_len > 0 ? hd->url_len : 1;
    }
}

void proxy_head_purge(struct proxy_head *hd)
{
    free(hd->buf);
    free(hd->h);
    memset(hd, 0, sizeof *hd);
}

static int head_append(struct proxy_head *hd, const char *at, size_t len)
{
    /* Each header also costs its ": " and CRLF on the wire: count them against the limit. */
    if (len > hd->limit || hd->len + len + 4 * hd->n > hd->limit)
        return -1;
    if (hd->len + len > hd->cap) {
        size_t cap = hd->cap ? hd->cap : 512;
        while (cap < hd->len + len)
            cap *= 2;
        if (cap > hd->limit)
            cap = hd->limit;
        char *b = realloc(hd->buf, cap);
        if (b == NULL)
            return -1;
        hd->buf = b;
        hd->cap = cap;
    }
    memcpy(hd->buf + hd->len, at, len);
    hd->len += len;
    return 0;
}

int proxy_head_url(struct proxy_head *hd, const char *at, size_t len)
{
    if (hd->url_len == 0)
        hd->url_off = (uint32_t)hd->len;
    if (head_append(hd, at, len) < 0)
        return -1;
    hd->url_len += (uint32_t)len;
    return 0;
}

int proxy_head_field(struct proxy_head *hd, const char *at, size_t len)
{
    if (hd->n == 0 || hd->in_value) {
        if (hd->n == hd->cap_h) {
            size_t cap = hd->cap_h ? hd->cap_h * 2 : 16;
            struct proxy_hdr *h = realloc(hd->h, cap * sizeof *h);
            if (h == NULL)
                return -1;
            hd->h = h;
            hd->cap_h = cap;
        }
        hd->h[hd->n++] = (struct proxy_hdr){.name_off = (uint32_t)hd->len};
        hd->in_value = false;
    }
    if (head_append(hd, at, len) < 0)
        return -1;
    hd->h[hd->n - 1].name_len += (uint32_t)len;
    return 0;
}

int proxy_head_value(struct proxy_head *hd, const char *at, size_t len)
{
    if (hd->n == 0)
        return -1;
    struct proxy_hdr *h = &hd->h[hd->n - 1];
    if (!hd->in_value) {
        h->val_off = (uint32_t)hd->len;
        hd->in_value = true;
    }
    if (head_append(hd, at, len) < 0)
        return -1;
    h->val_len += (uint32_t)len;
    return 0;
}

bool proxy_head_name_is(const struct proxy_head *hd, size_t i, const char *name)
{
    size_t n = strlen(name);
    return hd->h[i].name_len == n && strncasecmp(hd->buf + hd->h[i].name_off, name, n) == 0;
}

bool proxy_head_value_is(const struct proxy_head *hd, size_t i, const char *v)
{
    size_t n = strlen(v);
    return hd->h[i].val_len == n && strncasecmp(hd->buf + hd->h[i].val_off, v, n) == 0;
}

static bool name_has_prefix(const struct proxy_head *hd, size_t i, const char *prefix)
{
    size_t n = strlen(prefix);
    return hd->h[i].name_len >= n && strncasecmp(hd->buf + hd->h[i].name_off, prefix, n) == 0;
}

/* Whether header <i>'s name is one of the comma-separated tokens of any
 * Connection header in <hd> (those are hop-by-hop too, RFC 9110 7.6.1). */
static bool named_by_connection(const struct proxy_head *hd, size_t i)
{
    const char *name = hd->buf + hd->h[i].name_off;
    size_t nlen = hd->h[i].name_len;
    for (size_t j = 0; j < hd->n; j++) {
        if (!proxy_head_name_is(hd, j, "connection"))
            continue;
        const char *v = hd->buf + hd->h[j].val_off, *end = v + hd->h[j].val_len;
        while (v < end) {
            while (v < end && (*v == ',' || *v == ' ' || *v == '\t'))
                v++;
            const char *tok = v;
            while (v < end && *v != ',' && *v != ' ' && *v != '\t')
                v++;
            if ((size_t)(v - tok) == nlen && strncasecmp(tok, name, nlen) == 0)
                return true;
        }
    }
    return false;
}

/* Headers that describe one hop, or that certmapd itself sets. A client can
 * never pass any of them through: identity headers in particular. */
static bool request_header_dropped(const struct proxy_head *hd, size_t i)
{
    static const char *const names[] = {
        "connection",      "keep-alive",        "proxy-connection", "te",     "trailer",
        "upgrade",         "transfer-encoding", "content-length",   "expect", "proxy-authorization",
        "x-forwarded-for", "x-forwarded-proto", "http2-settings",
    };
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
        if (proxy_head_name_is(hd, i, names[k]))
            return true;
    if (name_has_prefix(hd, i, "x-client-cert-") || name_has_prefix(hd, i, "x-remote-user"))
        return true;
    if (proxy_head_name_is(hd, i, "host"))
        return false;
    return named_by_connection(hd, i);
}

static bool response_header_dropped(const struct proxy_head *hd, size_t i)
{
    static const char *const names[] = {
        "connection",        "keep-alive",     "proxy-connection",   "te", "trailer", "upgrade",
        "transfer-encoding", "content-length", "proxy-authenticate",
    };
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
        if (proxy_head_name_is(hd, i, names[k]))
            return true;
    return named_by_connection(hd, i);
}

/* The builders below append with evbuffer_add, which fails only for want of
 * memory; each returns 0, or -1 when any append failed (a head with a piece
 * missing must not be sent: the caller drops the whole buffer). The results
 * are or-ed: 0 | -1 is -1. */

/* Appends a string literal (its length known at compile time). */
#define add_lit(out, lit) evbuffer_add((out), "" lit, sizeof(lit) - 1)

static int add_header_line(struct evbuffer *out, const struct proxy_head *hd, size_t i)
{
    return evbuffer_add(out, hd->buf + hd->h[i].name_off, hd->h[i].name_len) | add_lit(out, ": ") |
           evbuffer_add(out, hd->buf + hd->h[i].val_off, hd->h[i].val_len) | add_lit(out, "\r\n");
}

/* The request and response heads are built on every proxied request: plain
 * appends, not evbuffer_add_printf (whose vfprintf was ~3 % of a keep-alive
 * request's CPU). */
static int add_str(struct evbuffer *out, const char *s)
{
    return evbuffer_add(out, s, strlen(s));
}

/* Appends <v> in decimal (<hex>: lower-case hexadecimal). */
static int add_uint(struct evbuffer *out, unsigned long long v, bool hex)
{
    char buf[24];
    char *p = buf + sizeof buf;
    unsigned base = hex ? 16 : 10;
    do {
        *--p = "0123456789abcdef"[v % base];
        v /= base;
    } while (v != 0);
    return evbuffer_add(out, p, (size_t)(buf + sizeof buf - p));
}

/* Adds "Name: value" where <value> comes from a certificate or the directory:
 * control bytes are written as \xHH so a value can never end the header early. */
static int add_identity_header(struct evbuffer *out, const char *name, const char *value)
{
    if (value == NULL)
        return 0;
    int rc = add_str(out, name) | add_lit(out, ": ");
    const char *run = value;
    for (const char *p = value; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch < 0x20 || ch == 0x7f) {
            char esc[5] = {'\\', 'x', "0123456789ABCDEF"[ch >> 4], "0123456789ABCDEF"[ch & 15]};
            rc |= evbuffer_add(out, run, (size_t)(p - run)) | evbuffer_add(out, esc, 4);
            run = p + 1;
        }
    }
    return rc | evbuffer_add(out, run, strlen(run)) | add_lit(out, "\r\n");
}

int proxy_http_request_head(const struct http_forward *f, struct evbuffer *out)
{
    const struct proxy_head *hd = f->head;
    bool has_host = false;
    int rc = add_str(out, llhttp_method_name((llhttp_method_t)f->method)) | add_lit(out, " ") |
             evbuffer_add(out, hd->buf + hd->url_off, hd->url_len) | add_lit(out, " HTTP/1.1\r\n");

    for (size_t i = 0; i < hd->n; i++) {
        if (request_header_dropped(hd, i))
            continue;
        if (f->drop_authorization && proxy_head_name_is(hd, i, "authorization"))
            continue;
        if (proxy_head_name_is(hd, i, "host"))
            has_host = true;
        rc |= add_header_line(out, hd, i);
    }
    if (!has_host)
        rc |= add_lit(out, "Host: ") | add_str(out, f->host_header) | add_lit(out, "\r\n");
    if (f->chunked)
        rc |= add_lit(out, "Transfer-Encoding: chunked\r\n");
    else if (f->has_body)
        rc |= add_lit(out, "Content-Length: ") | add_uint(out, f->content_length, false) |
              add_lit(out, "\r\n");
    if (f->authorization != NULL)
        rc |=
            add_lit(out, "Authorization: ") | add_str(out, f->authorization) | add_lit(out, "\r\n");
    rc |= add_lit(out, "X-Forwarded-For: ") | add_str(out, f->peer) |
          add_lit(out, "\r\nX-Forwarded-Proto: https\r\n");
    if (f->facts != NULL) {
        rc |= add_identity_header(out, "X-Client-Cert-Subject", f->facts->subject) |
              add_identity_header(out, "X-Client-Cert-Issuer", f->facts->issuer) |
              add_identity_header(out, "X-Client-Cert-Serial", f->facts->serial_hex) |
              add_identity_header(out, "X-Client-Cert-SHA256", f->facts->sha256);
    }
    if (f->ident != NULL) {
        const struct map_result *id = f->ident;
        rc |= add_identity_header(out, "X-Remote-User", id->upn != NULL ? id->upn : id->sam) |
              add_identity_header(out, "X-Remote-User-DN", id->dn) |
              add_identity_header(out, "X-Remote-User-SID", id->sid) |
              add_identity_header(out, "X-Remote-User-Sam", id->sam) |
              add_identity_header(out, "X-Client-Cert-Mapping", id->method);
    }
    return rc | add_lit(out, "\r\n");
}

int proxy_http_response_head(const struct proxy_head *hd, int status, bool chunked, bool keep_alive,
                             const char *content_length, struct evbuffer *out)
{
    int rc = add_lit(out, "HTTP/1.1 ") | add_uint(out, (unsigned)status, false) | add_lit(out, " ");
    if (hd->url_len > 0)
        rc |= evbuffer_add(out, hd->buf + hd->url_off, hd->url_len);
    else
        rc |= add_str(out, proxy_http_status_text(status));
    rc |= add_lit(out, "\r\n");
    for (size_t i = 0; i < hd->n; i++)
        if (!response_header_dropped(hd, i))
            rc |= add_header_line(out, hd, i);
    if (chunked)
        rc |= add_lit(out, "Transfer-Encoding: chunked\r\n");
    else if (content_length != NULL)
        rc |=
            add_lit(out, "Content-Length: ") | add_str(out, content_length) | add_lit(out, "\r\n");
    return rc | add_str(out, keep_alive ? "Connection: keep-alive\r\n\r\n"
                                        : "Connection: close\r\n\r\n");
}

size_t proxy_http_chunk_header(char buf[24], size_t len)
{
    char tmp[20];
    char *p = tmp + sizeof tmp;
    do {
        *--p = "0123456789abcdef"[len % 16];
        len /= 16;
    } while (len != 0);
    size_t n = (size_t)(tmp + sizeof tmp - p);
    memcpy(buf, p, n);
    memcpy(buf + n, "\r\n", 2);
    return n + 2;
}

const char *proxy_http_status_text(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 408:
        return "Request Timeout";
    case 413:
        return "Payload Too Large";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return status < 400 ? "OK" : "Error";
    }
}

int proxy_http_error(struct evbuffer *out, enum reason r, bool detailed, bool head_only)
{
    int status = reason_status(r);
    const char *text = proxy_http_status_text(status);
    char body[160];
    int blen = detailed ? snprintf(body, sizeof body, "%d %s: %s\n", status, text, reason_name(r))
                        : snprintf(body, sizeof body, "%d %s\n", status, text);
    int rc = evbuffer_add_printf(out,
                                 "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: "
                                 "%d\r\nCache-Control: no-store\r\n%sConnection: close\r\n\r\n",
                                 status, text, blen, status == 503 ? "Retry-After: 30\r\n" : "") < 0
                 ? -1
                 : 0;
    if (!head_only)
        rc |= evbuffer_add(out, body, (size_t)blen);
    return rc;
}

/* ---- the path a location policy is decided on ----------------------------- */

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch = (char)tolower((unsigned char)ch);
    return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

char *proxy_http_policy_path(const char *url, size_t len)
{
    /* absolute-form ("http://host/path"): the policy applies to its path. The
     * authority ends at the first "/", "?" or "#" (RFC 3986 3.2): a "/" in the
     * query of "http://host?/a" is not the path. An http(s) URI without a host
     * is invalid (RFC 9110 4.2.1). */
    size_t a = 0;
    if (len >= 7 && strncasecmp(url, "http://", 7) == 0)
        a = 7;
    else if (len >= 8 && strncasecmp(url, "https://", 8) == 0)
        a = 8;
    if (a > 0) {
        size_t host = a;
        while (a < len && url[a] != '/' && url[a] != '?' && url[a] != '#')
            a++;
        if (a == host)
            return NULL;
        if (a == len || url[a] != '/')
            return strdup("/");
        url += a;
        len -= a;
    }
    if (len == 1 && url[0] == '*')
        return strdup("*");
    if (len == 0 || url[0] != '/')
        return NULL;
    const char *q = memchr(url, '?', len);
    if (q != NULL)
        len = (size_t)(q - url);
    const char *hash = memchr(url, '#', len);
    if (hash != NULL)
        len = (size_t)(hash - url);

    char *out = malloc(len + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = url[i];
        if (ch == '%') {
            int hi = i + 2 < len ? hexval(url[i + 1]) : -1;
            int lo = i + 2 < len ? hexval(url[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                free(out);
                return NULL;
            }
            ch = (char)(hi * 16 + lo);
            i += 2;
            /* An encoded NUL or slash could make the backend see another path. */
            if (ch == '\0' || ch == '/' || ch == '\\') {
                free(out);
                return NULL;
            }
        } else if (ch == '\\') {
            ch = '/'; /* IIS treats a backslash as a slash */
        }
        out[o++] = ch;
    }
    out[o] = '\0';
    /* Invalid UTF-8 (overlong "%C0%AE" for ".", Latin-1, a raw NUL) is read
     * differently by different backends: no one path to judge. */
    if (!cm_utf8_valid(out, o)) {
        free(out);
        return NULL;
    }

    /* Remove dot segments and empty segments (RFC 3986 5.2.4, plus "//"). A
     * path whose last segment is empty, "." or ".." names a folder and keeps
     * its trailing "/", as a backend resolves it: "/owa/x/.." is "/owa/". */
    size_t w = 0;
    bool folder = false;
    for (size_t r = 0; r < o;) {
        /* out[r] == '/' here */
        size_t s = r + 1;
        while (s < o && out[s] != '/')
            s++;
        size_t seg = s - r - 1;
        const char *sp = out + r + 1;
        folder = true;
        if (seg == 0 || (seg == 1 && sp[0] == '.')) {
            /* skip */
        } else if (seg == 2 && sp[0] == '.' && sp[1] == '.') {
            while (w > 0 && out[--w] != '/')
                ;
        } else {
            memmove(out + w, out + r, s - r);
            w += s - r;
            folder = false;
        }
        r = s;
    }
    if (w == 0 || folder)
        out[w++] = '/';
    out[w] = '\0';
    return out;
}
