/* The access log: one line per request, written with a single write(2) so
 * lines from several workers never interleave. Fields are key=value, values
 * never contain spaces (the path is %-escaped where needed). */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "proxy/accesslog.h"

struct accesslog {
    int fd;     /* -1: off */
    bool owned; /* opened here, closed by accesslog_close */
    char *path; /* of an owned file, for accesslog_reopen */
};

struct accesslog *accesslog_open(const char *spec, char *err, size_t errlen)
{
    struct accesslog *l = calloc(1, sizeof *l);
    if (l == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (spec == NULL || strcmp(spec, "stderr") == 0) {
        l->fd = STDERR_FILENO;
    } else if (strcmp(spec, "off") == 0) {
        l->fd = -1;
    } else {
        l->fd = open(spec, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (l->fd < 0) {
            snprintf(err, errlen, "cannot open \"%s\": %s", spec, strerror(errno));
            free(l);
            return NULL;
        }
        l->owned = true;
        l->path = strdup(spec);
        if (l->path == NULL) {
            snprintf(err, errlen, "out of memory");
            close(l->fd);
            free(l);
            return NULL;
        }
    }
    return l;
}

int accesslog_reopen(struct accesslog *l, char *err, size_t errlen)
{
    if (l == NULL || !l->owned)
        return 0;
    int fd = open(l->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        snprintf(err, errlen, "[server] access_log: cannot reopen \"%s\": %s", l->path,
                 strerror(errno));
        return -1;
    }
    /* dup2 swaps the file under the descriptor at once: a worker's write goes
     * whole to the old file or whole to the new one, never lost. */
    if (dup2(fd, l->fd) < 0) {
        snprintf(err, errlen, "[server] access_log: cannot reopen \"%s\": %s", l->path,
                 strerror(errno));
        close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

void accesslog_close(struct accesslog *l)
{
    if (l == NULL)
        return;
    if (l->owned)
        close(l->fd);
    free(l->path);
    free(l);
}

/* Appends <s> (length <n>) to <p> with bytes that could break the line
 * format written as %XX. Returns the new end; never writes past <end>. */
static char *put_escaped(char *p, char *end, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n && p + 3 < end; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == '"' || ch == '%') {
            *p++ = '%';
            *p++ = hex[ch >> 4];
            *p++ = hex[ch & 15];
        } else {
            *p++ = (char)ch;
        }
    }
    return p;
}

/* snprintf that never moves <p> past <end>. */
static char *put(char *p, char *end, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static char *put(char *p, char *end, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(p, (size_t)(end - p), fmt, ap);
    va_end(ap);
    if (n < 0)
        return p;
    return (size_t)n >= (size_t)(end - p) ? end - 1 : p + n;
}

void accesslog_write(struct accesslog *l, const struct access_record *r)
{
    if (l == NULL || l->fd < 0)
        return;
    char line[4096];
    char *p = line;
    char *end = line + sizeof line - 1; /* room for the newline */
    struct timespec now_real;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now_real);
    gmtime_r(&now_real.tv_sec, &tm);
    p += strftime(p, (size_t)(end - p), "%Y-%m-%dT%H:%M:%S", &tm);
    p = put(p, end, ".%03ldZ conn=%llu req=%u client=%s method=%s path=",
            now_real.tv_nsec / 1000000, (unsigned long long)r->conn_id, r->req_no,
            r->client != NULL ? r->client : "-", r->method != NULL ? r->method : "-");
    if (r->path != NULL && r->path_len > 0)
        p = put_escaped(p, end, r->path, r->path_len);
    else
        p = put(p, end, "-");
    p = put(p, end, " status=%d in=%llu out=%llu ms=%.3f", r->status,
            (unsigned long long)r->bytes_in, (unsigned long long)r->bytes_out, r->ms);
    if (r->upstream_ms >= 0)
        p = put(p, end, " upstream_ms=%.3f", r->upstream_ms);
    else
        p = put(p, end, " upstream_ms=-");
    p = put(p, end, " upstream=%s serial=%s user=", r->upstream != NULL ? r->upstream : "-",
            r->serial != NULL ? r->serial : "-");
    const char *user = r->user != NULL ? r->user : "-";
    p = put_escaped(p, end, user, strlen(user));
    p = put(p, end, " reason=%s", r->reason != R_NONE ? reason_name(r->reason) : "-");
    if (r->via != NULL)
        p = put(p, end, " via=%s", r->via);
    *p++ = '\n';
    if (write(l->fd, line, (size_t)(p - line)) < 0) {
        /* a full disk must not stop the proxy */
    }
}
