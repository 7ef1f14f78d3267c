/* The stream (proxy/stream.c) driven against a fake upstream
 * (tests/support/fake_upstream.c, linked in instead of proxy/upstream.c): the
 * test plays the backend by calling the stream's upstream callbacks. The
 * client side is a real transport (io/) over a socket pair, read from the
 * other end; the connection's side is a table of ops that records what the
 * stream asked of it (both in tests/support/stream_fixture.c). */
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
#include "proxy/stream.h"
#include "proxy/upstream.h"
#include "tests/support/fake_upstream.h"
#include "tests/support/stream_fixture.h"

/* ---- the connection's side ---------------------------------------------------- */

static int setup(void **state)
{
    struct stream_fixture *fx = calloc(1, sizeof *fx);
    char err[256];
    assert_non_null(fx);
    if (stream_fixture_open(fx, NULL, NULL, "certmapd-stream", err, sizeof err) != 0)
        fail_msg("the stream's fixture: %s", err);
    fake_upstream_reset();
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct stream_fixture *fx = *state;
    fake_upstream_reset();
    stream_fixture_close(fx);
    free(fx);
    return 0;
}

/* What the client has received so far (the loop runs until the io has written). */
static char *client_got(struct stream_fixture *fx)
{
    for (int i = 0; i < 10; i++)
        event_base_loop(fx->base, EVLOOP_NONBLOCK);
    static char buf[65536];
    ssize_t n = read(fx->peer_fd, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = '\0';
    return buf;
}

static char *access_line(struct stream_fixture *fx)
{
    static char buf[4096];
    FILE *f = fopen(fx->log_path, "r");
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

static size_t feed(struct stream *st, const char *s)
{
    return stream_feed(st, s, strlen(s));
}

static void respond(struct upstream *u, int status, const char *body)
{
    struct proxy_head head;
    memset(&head, 0, sizeof head);
    proxy_head_reset(&head, 4096);
    struct upstream_response r = {.status = status,
                                  .head = &head,
                                  .has_length = true,
                                  .content_length = strlen(body)};
    u->h->head(u->arg, &r);
    if (*body)
        u->h->body(u->arg, body, strlen(body));
    u->h->done(u->arg, true);
    proxy_head_purge(&head);
}

/* ---- the cases ---------------------------------------------------------------- */

static void test_get_keep_alive(void **state)
{
    struct stream_fixture *fx = *state;
    struct stream *st = stream_new(&fx->sc);
    const char *req = "GET /Microsoft-Server-ActiveSync?Cmd=Ping HTTP/1.1\r\nHost: x\r\n"
                      "X-Remote-User: forged\r\n\r\n";
    assert_int_equal(feed(st, req), strlen(req));
    assert_int_equal(fake_n_acquired, 1);
    char *up = fake_upstream_sent(&fake_ups[0]);
    assert_non_null(strstr(up, "GET /Microsoft-Server-ActiveSync?Cmd=Ping HTTP/1.1\r\n"));
    assert_non_null(strstr(up, "X-Forwarded-For: 127.0.0.9\r\n"));
    assert_null(strstr(up, "forged")); /* identity headers from the client never pass */
    free(up);
    respond(&fake_ups[0], 200, "ok");
    assert_int_equal(fx->n_done, 1);
    assert_int_equal(fx->end, STREAM_KEEP_ALIVE);
    assert_true(fake_ups[0].released && fake_ups[0].reusable);
    char *got = client_got(fx);
    assert_non_null(strstr(got, "HTTP/1.1 200 "));
    assert_non_null(strstr(got, "Content-Length: 2\r\n"));
    assert_non_null(strstr(got, "Connection: keep-alive\r\n\r\nok"));
    stream_free(st);
    char *line = access_line(fx);
    assert_non_null(strstr(line, " conn=7 req=1 "));
    assert_non_null(strstr(line, " status=200 "));
    assert_non_null(strstr(line, " upstream=fake*1 "));
}

static void test_pipelined_takes_one_request(void **state)
{
    struct stream_fixture *fx = *state;
    struct stream *st = stream_new(&fx->sc);
    const char *one = "GET /one HTTP/1.1\r\nHost: x\r\n\r\n";
    char two[256];
    snprintf(two, sizeof two, "%sGET /two HTTP/1.1\r\nHost: x\r\n\r\n", one);
    assert_int_equal(feed(st, two), strlen(one)); /* the second waits for its own stream */
    assert_int_equal(fake_n_acquired, 1);
    stream_free(st);
}

static void test_chunked_body_rechunked(void **state)
{
    struct stream_fixture *fx = *state;
    struct stream *st = stream_new(&fx->sc);
    const char *req = "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n";
    assert_int_equal(feed(st, req), strlen(req));
    char *up = fake_upstream_sent(&fake_ups[0]);
    assert_non_null(strstr(up, "Transfer-Encoding: chunked\r\n"));
    assert_non_null(strstr(up, "\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"));
    free(up);
    stream_free(st); /* the client went away while the response was awaited */
    assert_non_null(strstr(access_line(fx), " status=499 "));
}

static void test_stale_pooled_connection_retried(void **state)
{
    struct stream_fixture *fx = *state;
    fake_first_pooled = true;
    struct stream *st = stream_new(&fx->sc);
    feed(st, "GET /r HTTP/1.1\r\nHost: x\r\n\r\n");
    fake_ups[0].h->error(fake_ups[0].arg, R_BACKEND_UNAVAILABLE, true);
    assert_int_equal(fake_n_acquired, 2);
    assert_int_equal(fake_n_purged, 1); /* the stale connection's siblings go too */
    char *a = fake_upstream_sent(&fake_ups[0]), *b = fake_upstream_sent(&fake_ups[1]);
    assert_string_equal(a, b); /* the same head, once more */
    free(a);
    free(b);
    respond(&fake_ups[1], 200, "");
    assert_int_equal(fx->end, STREAM_KEEP_ALIVE);
    stream_free(st);
}

static void test_post_never_retried(void **state)
{
    struct stream_fixture *fx = *state;
    fake_first_pooled = true;
    struct stream *st = stream_new(&fx->sc);
    feed(st, "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
    fake_ups[0].h->error(fake_ups[0].arg, R_BACKEND_UNAVAILABLE, true);
    assert_int_equal(fake_n_acquired, 1);
    assert_int_equal(fx->end, STREAM_CLOSE);
    assert_non_null(strstr(client_got(fx), "HTTP/1.1 502 "));
    stream_free(st);
    assert_non_null(strstr(access_line(fx), " reason=backend_unavailable"));
}

static void test_backend_lost_mid_response(void **state)
{
    struct stream_fixture *fx = *state;
    struct stream *st = stream_new(&fx->sc);
    feed(st, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    struct proxy_head head;
    memset(&head, 0, sizeof head);
    struct upstream_response r = {.status = 200, .head = &head, .has_length = true,
                                  .content_length = 100};
    fake_ups[0].h->head(fake_ups[0].arg, &r);
    fake_ups[0].h->body(fake_ups[0].arg, "partial", 7);
    fake_ups[0].h->error(fake_ups[0].arg, R_BACKEND_UNAVAILABLE, false);
    assert_int_equal(fx->end, STREAM_ABORT); /* the client learns it by the close */
    assert_true(fake_ups[0].released && !fake_ups[0].reusable);
    stream_free(st);
}

static void test_no_backend_502(void **state)
{
    struct stream_fixture *fx = *state;
    fake_refuse_acquire = true;
    struct stream *st = stream_new(&fx->sc);
    feed(st, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(fx->n_done, 1);
    assert_int_equal(fx->end, STREAM_CLOSE);
    assert_non_null(strstr(client_got(fx), "HTTP/1.1 502 "));
    stream_free(st);
}

static void test_certificate_required(void **state)
{
    struct stream_fixture *fx = *state;
    fx->conf.cert_mode = CERT_REQUIRE;
    struct stream *st = stream_new(&fx->sc);
    feed(st, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(fake_n_acquired, 0); /* nothing denied reaches the backend */
    assert_int_equal(fx->n_ask, 0);  /* the handshake asked already */
    assert_non_null(strstr(client_got(fx), "HTTP/1.1 403 "));
    stream_free(st);
    assert_non_null(strstr(access_line(fx), " reason=cert_required"));
}

static void test_late_certificate(void **state)
{
    struct stream_fixture *fx = *state;
    fx->conf.cert_mode = CERT_REQUIRE;
    fx->sc.cert_asked = false;
    fx->grant_ask = true;
    struct stream *st = stream_new(&fx->sc);
    feed(st, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(fx->n_ask, 1);
    assert_true(stream_awaits_cert(st));
    assert_int_equal(fake_n_acquired, 0);
    struct cert_facts facts = {.subject = "CN=alice", .issuer = "CN=CA", .serial_hex = "0A"};
    fx->sc.facts = &facts;
    fx->sc.cert_asked = true;
    stream_cert_answered(st);
    assert_int_equal(fake_n_acquired, 1);
    char *up = fake_upstream_sent(&fake_ups[0]);
    assert_non_null(strstr(up, "X-Client-Cert-Subject: CN=alice\r\n"));
    free(up);
    assert_true(fx->n_more >= 1); /* fed again: the rest of the request may follow */
    stream_free(st);
}

static void test_backpressure_on_the_body(void **state)
{
    struct stream_fixture *fx = *state;
    struct stream *st = stream_new(&fx->sc);
    const char *head = "PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n";
    assert_int_equal(feed(st, head), strlen(head));
    fake_out_len = 1 << 20; /* the backend is not reading */
    assert_int_equal(feed(st, "01234"), 0);
    fake_out_len = 0;
    fake_ups[0].h->writable(fake_ups[0].arg);
    assert_int_equal(fx->n_more, 1);
    assert_int_equal(feed(st, "0123456789"), 10);
    stream_free(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_get_keep_alive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined_takes_one_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chunked_body_rechunked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_pooled_connection_retried, setup, teardown),
        cmocka_unit_test_setup_teardown(test_post_never_retried, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backend_lost_mid_response, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_backend_502, setup, teardown),
        cmocka_unit_test_setup_teardown(test_certificate_required, setup, teardown),
        cmocka_unit_test_setup_teardown(test_late_certificate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backpressure_on_the_body, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
