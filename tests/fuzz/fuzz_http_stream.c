/* The client's bytes through the real request path: proxy/stream.c
 * (stream_new, stream_feed: llhttp with the stream's own settings, the head
 * checks, proxy_http_request_head) against a fake upstream, as
 * tests/unit/proxy/test_stream.c does (tests/support/fake_upstream.c, linked
 * in instead of proxy/upstream.c). Every request head that reaches "the
 * backend" is checked: no identity header from the client, never both
 * Content-Length and Transfer-Encoding, one X-Forwarded-For, and no CR, LF or
 * NUL inside a header line. Pipelined requests are answered 200 one after the
 * other. */
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "conf/conf.h"
#include "io/io.h"
#include "proxy/accesslog.h"
#include "proxy/http.h"
#include "proxy/stream.h"
#include "proxy/upstream.h"
#include "tests/fuzz/fuzz.h"
#include "tests/support/fake_upstream.h"
#include "tests/support/stream_fixture.h"

#define MAX_STREAMS 8

/* ---- the connection's side, made once ----------------------------------------- */

static struct stream_fixture sf;
static void setup_once(void)
{
    char err[256];
    if (stream_fixture_open(&sf, NULL, NULL, NULL, err, sizeof err) != 0)
        abort();
    sf.conf.max_request_head = 8 * 1024;
}

/* What the client was sent is read and dropped, so that the stream never
 * waits on a full socket. */
static void drain_client(void)
{
    for (int i = 0; i < 4; i++)
        event_base_loop(sf.base, EVLOOP_NONBLOCK);
    char buf[16384];
    while (read(sf.peer_fd, buf, sizeof buf) > 0)
        ;
}

static bool name_is(const char *line, size_t nlen, const char *name)
{
    return strlen(name) == nlen && strncasecmp(line, name, nlen) == 0;
}

static bool name_starts(const char *line, size_t nlen, const char *prefix)
{
    size_t p = strlen(prefix);
    return nlen >= p && strncasecmp(line, prefix, p) == 0;
}

/* The invariants of one request head as the backend got it. */
static void check_backend_head(struct upstream *u)
{
    size_t n = evbuffer_get_length(u->out);
    if (n == 0)
        return;
    char *s = malloc(n + 1);
    if (s == NULL)
        abort();
    evbuffer_copyout(u->out, s, n);
    s[n] = '\0';
    const char *end_head = memmem(s, n, "\r\n\r\n", 4);
    fuzz_assert(end_head != NULL, "a request head without its end went upstream");
    size_t head_len = (size_t)(end_head - s) + 2;
    int cl = 0, te = 0, xff = 0;
    const char *line = s;
    bool first = true;
    while (line < s + head_len) {
        const char *eol = memmem(line, (size_t)(s + head_len - line), "\r\n", 2);
        size_t len = (size_t)(eol - line);
        for (size_t i = 0; i < len; i++)
            fuzz_assert(line[i] != '\r' && line[i] != '\n' && line[i] != '\0',
                        "CR, LF or NUL inside a forwarded line: %.*s", (int)len, line);
        if (!first) {
            const char *colon = memchr(line, ':', len);
            fuzz_assert(colon != NULL && colon > line, "a header line without a name");
            size_t nlen = (size_t)(colon - line);
            fuzz_assert(!name_starts(line, nlen, "x-remote-user") &&
                            !name_starts(line, nlen, "x-client-cert-"),
                        "an identity header reached the backend: %.*s", (int)len, line);
            cl += name_is(line, nlen, "content-length");
            te += name_is(line, nlen, "transfer-encoding");
            xff += name_is(line, nlen, "x-forwarded-for");
        }
        first = false;
        line = eol + 2;
    }
    fuzz_assert(!(cl && te), "Content-Length and Transfer-Encoding both went upstream");
    fuzz_assert(cl <= 1 && te <= 1, "framing header twice");
    fuzz_assert(xff == 1, "%d X-Forwarded-For headers", xff);
    free(s);
}

static void respond_200(struct upstream *u)
{
    struct proxy_head head;
    memset(&head, 0, sizeof head);
    proxy_head_reset(&head, 4096);
    struct upstream_response r = {
        .status = 200, .head = &head, .has_length = true, .content_length = 2};
    u->h->head(u->arg, &r);
    if (sf.n_done == 0)
        u->h->body(u->arg, "ok", 2);
    if (sf.n_done == 0)
        u->h->done(u->arg, true);
    proxy_head_purge(&head);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (sf.base == NULL)
        setup_once();
    const char *p = (const char *)data;
    size_t left = size;
    for (int k = 0; k < MAX_STREAMS; k++) {
        fake_upstream_reset();
        sf.n_done = 0;
        struct stream *st = stream_new(&sf.sc);
        if (st == NULL)
            abort();
        /* The whole input may come in pieces: feed until nothing more is taken. */
        for (int guard = 0; guard < 64 && left > 0 && sf.n_done == 0; guard++) {
            size_t used = stream_feed(st, p, left);
            p += used;
            left -= used;
            drain_client();
            if (used == 0)
                break;
        }
        for (int i = 0; i < fake_n_acquired; i++)
            check_backend_head(&fake_ups[i]);
        if (sf.n_done == 0 && fake_n_acquired > 0 && !fake_ups[fake_n_acquired - 1].released)
            respond_200(&fake_ups[fake_n_acquired - 1]);
        drain_client();
        /* The answer may let the stream take the rest of a pipelined body. */
        if (sf.n_done == 0 && left > 0) {
            size_t used = stream_feed(st, p, left);
            p += used;
            left -= used;
            drain_client();
        }
        bool again = sf.n_done > 0 && sf.end == STREAM_KEEP_ALIVE && left > 0;
        stream_free(st);
        fake_upstream_reset();
        drain_client();
        if (!again)
            break;
        sf.sc.n_requests++;
    }
    sf.sc.n_requests = 1;
    return 0;
}
