/* proxy/http: HTTP/1.1 message pieces: received heads, the heads certmapd
 * writes towards the backend and the client, error answers, and the path a
 * location's policy is judged on. No state of its own, no I/O. */
#ifndef CM_PROXY_HTTP_H
#define CM_PROXY_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>

#include "common/reason.h"
#include "mapping/mapping.h"
#include "tls/facts.h"

/* One header: offsets into the owning proxy_head's buffer. */
struct proxy_hdr {
    uint32_t name_off, name_len;
    uint32_t val_off, val_len;
};

/* A request or response head as received: start-line pieces and headers,
 * all bytes in one buffer bounded by <limit>. Allocated only while a head is
 * being received or forwarded. */
struct proxy_head {
    char *buf;
    size_t len, cap, limit;
    struct proxy_hdr *h;
    size_t n, cap_h;
    uint32_t url_off, url_len; /* request target, or response reason phrase */
    bool in_value;             /* last piece appended was a header value */
};

/* Appends <len> bytes of the URL / header name / header value being parsed.
 * Returns 0, or -1 when the head would exceed its limit or memory is short. */
int proxy_head_url(struct proxy_head *hd, const char *at, size_t len);
int proxy_head_field(struct proxy_head *hd, const char *at, size_t len);
int proxy_head_value(struct proxy_head *hd, const char *at, size_t len);
void proxy_head_reset(struct proxy_head *hd, size_t limit);
/* Keeps only the request target of <hd> (what the access log needs) and gives
 * the rest back: a request forwarded and waiting for its answer (an EAS long
 * poll, for up to an hour) holds no headers. */
void proxy_head_shrink_to_url(struct proxy_head *hd);
void proxy_head_purge(struct proxy_head *hd);

/* Case-insensitive comparison of header <i>'s name with <name>. */
bool proxy_head_name_is(const struct proxy_head *hd, size_t i, const char *name);
/* Case-insensitive comparison of header <i>'s whole value with <v>. */
bool proxy_head_value_is(const struct proxy_head *hd, size_t i, const char *v);

/* What the backend is told of one request besides its own head. */
struct http_forward {
    const struct proxy_head *head; /* the client's request head */
    int method;                    /* llhttp_method_t */
    bool chunked;                  /* body re-chunked */
    bool has_body;                 /* else: Content-Length <content_length> */
    uint64_t content_length;
    const char *peer;              /* X-Forwarded-For */
    const char *host_header;       /* Host when the client sent none */
    const struct cert_facts *facts; /* X-Client-Cert-*; NULL: none */
    const struct map_result *ident; /* X-Remote-User*; NULL: not mapped */
    const char *authorization;     /* "Negotiate ..." to send; NULL: none */
    bool drop_authorization;       /* the client's own Authorization is not forwarded */
};

/* Writes the request head to send upstream into <out>: request line, the
 * client's end-to-end headers (hop-by-hop, identity and forwarding headers
 * removed), then X-Forwarded-For/-Proto and the identity headers. 0, or -1
 * when memory ran out (<out> then holds part of it: not to be sent). */
int proxy_http_request_head(const struct http_forward *f, struct evbuffer *out);

/* Writes the response head for the client: status line and end-to-end headers
 * of the upstream response <hd> with <status>, plus framing and Connection.
 * 0, or -1 when memory ran out (<out> then holds part of it). */
int proxy_http_response_head(const struct proxy_head *hd, int status, bool chunked, bool keep_alive,
                             const char *content_length, struct evbuffer *out);

/* Writes a complete error response for <r> (status, reason phrase, body with the
 * reason code when <detailed>), always with Connection: close. 0, or -1 when
 * memory ran out (<out> then holds part of it). */
int proxy_http_error(struct evbuffer *out, enum reason r, bool detailed, bool head_only);

/* The decoded, dot-segment-free path of request target <url> (length <len>), for
 * location matching. Returns a new string, or NULL for a target that cannot be
 * normalised safely (bad %-escape, encoded NUL or slash, absolute path missing). */
char *proxy_http_policy_path(const char *url, size_t len);

/* Writes the chunk-size line of a chunk of <len> (> 0) bytes ("1f4\r\n") into
 * <buf>; returns its length. The chunk's data and a CRLF follow it. */
size_t proxy_http_chunk_header(char buf[24], size_t len);

const char *proxy_http_status_text(int status);

#endif
