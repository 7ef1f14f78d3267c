/* Allocation failure on every allocation site of one request. The stream
 * (proxy/stream.c, with proxy/http.c, io/ and the access log) runs a whole
 * request against the fake upstream (tests/support/fake_upstream.c) over a
 * real transport on a socket pair; every allocation it makes goes through the
 * hooks of tests/support/alloc_hooks.c: malloc, calloc, realloc, strdup,
 * strndup and free of the project's own code by -Wl,--wrap
 * (tests/CMakeLists.txt), libevent's through event_set_mem_functions. The
 * request path reaches no OpenSSL (a plain transport) and llhttp allocates
 * nothing; the real upstream and TLS are test_upstream_alloc.c's.
 *
 * Each scenario runs once to count its allocations, then once for every N in
 * 1..count with the Nth failing, and must then fail cleanly: no crash, no hang
 * (the stream ended, or the transport reported the error that closes the
 * connection), nothing half-formed reaching the backend or the client, and no
 * leak: every allocation made while the request ran is freed by the end (the
 * hooks' own count of live blocks; LeakSanitizer as well in the ASan build). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/event.h>

#include "conf/conf.h"
#include "io/io.h"
#include "proxy/accesslog.h"
#include "proxy/http.h"
#include "proxy/stream.h"
#include "proxy/upstream.h"
#include "tests/support/alloc_hooks.h"
#include "tests/support/fake_upstream.h"
#include "tests/support/stream_fixture.h"

/* ---- the connection's side ------------------------------------------------------- */

struct fixture {
    struct stream_fixture sf;
    struct cert_facts facts;
    struct proxy_head resp; /* the backend's answer head, made before the request */
    int n_io_errors;
};

static void io_nop_read(void *arg)
{
}

static void io_event(void *arg, enum io_event ev)
{
    struct fixture *fx = arg;
    if (ev == IO_EV_ERROR)
        fx->n_io_errors++; /* the connection would close now */
}

static const struct io_handler client_handler = {.read = io_nop_read, .event = io_event};

static struct fixture *fixture_new(void)
{
    struct fixture *fx = calloc(1, sizeof *fx);
    char err[256];
    assert_non_null(fx);
    if (stream_fixture_open(&fx->sf, &client_handler, fx, "certmapd-stream-alloc", err,
                            sizeof err) != 0)
        fail_msg("the stream's fixture: %s", err);
    fx->sf.grant_ask = true;
    fx->facts = (struct cert_facts){
        .subject = "CN=alice\x01", .issuer = "CN=CA", .serial_hex = "0A", .sha256 = "ab"};
    proxy_head_reset(&fx->resp, 4096);
    static const char *const hdrs[][2] = {{"Content-Type", "application/vnd.ms-sync"},
                                          {"X-Backend", "1"}};
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(proxy_head_field(&fx->resp, hdrs[i][0], strlen(hdrs[i][0])), 0);
        assert_int_equal(proxy_head_value(&fx->resp, hdrs[i][1], strlen(hdrs[i][1])), 0);
    }
    fake_upstream_reset();
    return fx;
}

static void fixture_free(struct fixture *fx)
{
    fake_upstream_reset();
    proxy_head_purge(&fx->resp);
    stream_fixture_close(&fx->sf);
    free(fx);
}

static void settle(struct fixture *fx)
{
    for (int i = 0; i < 10; i++)
        event_base_loop(fx->sf.base, EVLOOP_NONBLOCK);
}

/* What the client was sent (the loop runs until the transport wrote it). */
static size_t client_got(struct fixture *fx, char *buf, size_t cap)
{
    settle(fx);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(fx->sf.peer_fd, buf + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    buf[n] = '\0';
    return n;
}

/* A fake whose write found no memory reports it as the real upstream's
 * transport would, from the loop: an error. */
static void report_failed_upstreams(struct fixture *fx)
{
    for (int i = 0; i < fake_n_acquired && fx->sf.n_done == 0; i++)
        if (fake_ups[i].failed && !fake_ups[i].released)
            fake_ups[i].h->error(fake_ups[i].arg, R_BACKEND_UNAVAILABLE, false);
}

/* The backend answers on the last connection, unless the stream ended. */
static void respond(struct fixture *fx, bool chunked, const char *body)
{
    report_failed_upstreams(fx);
    if (fx->sf.n_done > 0 || fake_n_acquired == 0)
        return;
    struct upstream *u = &fake_ups[fake_n_acquired - 1];
    if (u->released)
        return;
    struct upstream_response r = {
        .status = 200, .head = &fx->resp, .has_length = !chunked, .content_length = strlen(body)};
    u->h->head(u->arg, &r);
    size_t len = strlen(body);
    for (size_t off = 0; off < len && fx->sf.n_done == 0 && !u->released; off += 5)
        u->h->body(u->arg, body + off, len - off < 5 ? len - off : 5);
    if (fx->sf.n_done == 0 && !u->released)
        u->h->done(u->arg, true);
}

/* ---- the scenarios ------------------------------------------------------------------ */

struct outcome {
    bool no_stream; /* stream_new failed: the connection closes */
    char client[8192];
    size_t client_len;
    char *backend; /* what the last fake upstream got, or NULL */
};

typedef void (*scenario_fn)(struct fixture *fx, struct outcome *o);

#define BODY "hello world, this is the answer"

static void scenario_get(struct fixture *fx, struct outcome *o)
{
    struct stream *st = stream_new(&fx->sf.sc);
    if (st == NULL) {
        o->no_stream = true;
        return;
    }
    const char *req = "GET /Microsoft-Server-ActiveSync?Cmd=Ping HTTP/1.1\r\nHost: x\r\n"
                      "User-Agent: t\r\nX-Remote-User: forged\r\n\r\n";
    stream_feed(st, req, strlen(req));
    respond(fx, false, BODY);
    stream_free(st);
}

static void scenario_chunked_post(struct fixture *fx, struct outcome *o)
{
    fx->sf.sc.facts = &fx->facts;
    fx->sf.conf.cert_mode = CERT_ACCEPT;
    struct stream *st = stream_new(&fx->sf.sc);
    if (st == NULL) {
        o->no_stream = true;
        return;
    }
    const char *req = "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    stream_feed(st, req, strlen(req));
    respond(fx, true, BODY);
    stream_free(st);
}

static void scenario_late_cert_readahead(struct fixture *fx, struct outcome *o)
{
    fx->sf.conf.cert_mode = CERT_REQUIRE;
    fx->sf.sc.cert_asked = false;
    struct stream *st = stream_new(&fx->sf.sc);
    if (st == NULL) {
        o->no_stream = true;
        return;
    }
    const char *req = "PUT /item HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789";
    stream_feed(st, req, strlen(req));
    if (fx->sf.n_done == 0 && stream_awaits_cert(st)) {
        fx->sf.sc.facts = &fx->facts;
        fx->sf.sc.cert_asked = true;
        stream_cert_answered(st);
    }
    respond(fx, false, BODY);
    stream_free(st);
}

static void scenario_refused(struct fixture *fx, struct outcome *o)
{
    fx->sf.conf.cert_mode = CERT_REQUIRE; /* none sent: 403 */
    struct stream *st = stream_new(&fx->sf.sc);
    if (st == NULL) {
        o->no_stream = true;
        return;
    }
    const char *req = "GET /x HTTP/1.1\r\nHost: x\r\n\r\n";
    stream_feed(st, req, strlen(req));
    stream_free(st);
}

/* Runs <fn> once with allocation <fail> failing (0: none); returns how many
 * allocations it made, after checking that it failed cleanly. */
/* The payload of a chunked body at <b>, into <out>; false when malformed or
 * unfinished. */
static bool dechunk(const char *b, char *out, size_t cap)
{
    size_t n = 0;
    for (;;) {
        char *end;
        unsigned long len = strtoul(b, &end, 16);
        if (end == b || strncmp(end, "\r\n", 2) != 0)
            return false;
        b = end + 2;
        if (len == 0)
            return strcmp(b, "\r\n") == 0 && (out[n] = '\0', true);
        if (strlen(b) < len + 2 || n + len >= cap || strncmp(b + len, "\r\n", 2) != 0)
            return false;
        memcpy(out + n, b, len);
        n += len;
        b += len + 2;
    }
}

static long run_once(scenario_fn fn, long fail, const char *expect_backend, bool expect_200)
{
    struct fixture *fx = fixture_new();
    struct outcome *o = calloc(1, sizeof *o);
    assert_non_null(o);
    alloc_hooks_arm(fail);
    fn(fx, o);
    settle(fx);
    alloc_hooks_pause();
    long count = alloc_hooks.n_allocs;

    o->client_len = client_got(fx, o->client, sizeof o->client);
    if (fake_n_acquired > 0)
        o->backend = fake_upstream_sent(&fake_ups[fake_n_acquired - 1]);
    bool io_failed = fx->n_io_errors > 0;
    bool upstream_failed = fake_n_acquired > 0 && fake_ups[fake_n_acquired - 1].failed;

    /* No hang: the stream ended, or there was none, or the transport failed
     * (its owner closes the connection). */
    if (!o->no_stream && fx->sf.n_done != 1 && !io_failed)
        fail_msg("allocation %ld of %ld failed: the stream neither ended (%d) nor failed its "
                 "transport",
                 fail, count, fx->sf.n_done);
    /* Nothing half-formed upstream: a head that went out is whole, with its
     * forwarding header and never the client's identity header. */
    if (o->backend != NULL && o->backend[0] != '\0' && !upstream_failed) {
        const char *end = strstr(o->backend, "\r\n\r\n");
        if (end == NULL || strstr(o->backend, "X-Forwarded-For: 127.0.0.9\r\n") == NULL ||
            strstr(o->backend, "forged") != NULL)
            fail_msg("allocation %ld failed: the backend got a broken head:\n%s", fail, o->backend);
        if (expect_backend != NULL && fx->sf.n_done == 1 && fx->sf.end == STREAM_KEEP_ALIVE &&
            strstr(o->backend, expect_backend) == NULL)
            fail_msg("allocation %ld failed: request completed but the backend got:\n%s", fail,
                     o->backend);
    }
    /* Nothing half-formed to the client: an answer is a whole HTTP response,
     * and a request that ended well got the whole body. */
    if (o->client_len > 0 && strncmp(o->client, "HTTP/1.1 ", 9) != 0)
        fail_msg("allocation %ld failed: the client got no status line first:\n%s", fail,
                 o->client);
    if (!io_failed && !o->no_stream && fx->sf.n_done == 1 && fx->sf.end == STREAM_KEEP_ALIVE) {
        if (!expect_200 || strstr(o->client, "HTTP/1.1 200 ") == NULL)
            fail_msg("allocation %ld failed: a kept-alive answer that is not the 200:\n%s", fail,
                     o->client);
        const char *b = strstr(o->client, "\r\n\r\n");
        char payload[256];
        bool whole = b != NULL &&
                     (strstr(o->client, "Transfer-Encoding: chunked\r\n") != NULL
                          ? dechunk(b + 4, payload, sizeof payload) && strcmp(payload, BODY) == 0
                          : strcmp(b + 4, BODY) == 0);
        if (!whole)
            fail_msg("allocation %ld failed: a 200 without its whole body:\n%s", fail, o->client);
    }
    if (fail == 0) {
        /* The count run is the request as it should go. */
        assert_int_equal(alloc_hooks.n_failed, 0);
        if (expect_200)
            assert_non_null(strstr(o->client, "HTTP/1.1 200 "));
        else
            assert_non_null(strstr(o->client, "HTTP/1.1 403 "));
    }
    free(o->backend);
    free(o);
    fixture_free(fx);
    /* Every block the request allocated is freed, by the request or by the
     * teardown of what it belonged to. */
    if (alloc_hooks.n_live != 0)
        fail_msg("allocation %ld of %ld failed: %ld block(s) allocated by the request leaked", fail,
                 count, alloc_hooks.n_live);
    return count;
}

static void run_scenario(scenario_fn fn, const char *name, const char *expect_backend,
                         bool expect_200)
{
    long count = run_once(fn, 0, expect_backend, expect_200);
    assert_true(count > 5); /* the hooks see the request's allocations */
    for (long n = 1; n <= count; n++)
        run_once(fn, n, expect_backend, expect_200);
    print_message("%s: %ld allocations, each failed in turn\n", name, count);
}

static void test_get_every_allocation_fails(void **state)
{
    run_scenario(scenario_get, "GET keep-alive", "GET /Microsoft-Server-ActiveSync?Cmd=Ping", true);
}

static void test_chunked_post_every_allocation_fails(void **state)
{
    run_scenario(scenario_chunked_post, "chunked POST, chunked answer",
                 "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", true);
}

static void test_late_cert_every_allocation_fails(void **state)
{
    run_scenario(scenario_late_cert_readahead, "late certificate, body read ahead",
                 "\r\n\r\n0123456789", true);
}

static void test_refusal_every_allocation_fails(void **state)
{
    run_scenario(scenario_refused, "403 refusal", NULL, false);
}

int main(void)
{
    /* Before libevent allocates anything: its memory goes through the hooks too. */
    alloc_hooks_install(false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_every_allocation_fails),
        cmocka_unit_test(test_chunked_post_every_allocation_fails),
        cmocka_unit_test(test_late_cert_every_allocation_fails),
        cmocka_unit_test(test_refusal_every_allocation_fails),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
