/* proxy/backends.c: the order in which a new connection tries the servers
 * (round robin over those not down, then the down ones, least recently
 * failed first), passive and active health, and resolution with the line of
 * each server's url in errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "proxy/upstream.h"

static struct backend_set *three_servers(uint64_t fail_timeout_ms)
{
    static const char *const names[] = {"a:80", "b:80", "c:80"};
    struct backend_set *bs = calloc(1, sizeof *bs);
    assert_non_null(bs);
    bs->n_srv = 3;
    bs->n = 3;
    bs->fail_timeout_ms = fail_timeout_ms;
    for (unsigned i = 0; i < 3; i++) {
        bs->srv[i].name = names[i];
        bs->srv[i].first = i;
        bs->srv[i].n = 1;
        bs->srv_of[i] = (uint8_t)i;
    }
    return bs;
}

/* The first server of the next new connection's order, and the whole order as digits. */
static unsigned next(struct backend_set *bs, unsigned *rr, char *out)
{
    uint8_t order[BACKEND_MAX_SERVERS];
    unsigned n = backend_order(bs, rr, order);
    for (unsigned i = 0; i < n; i++)
        out[i] = (char)('0' + order[i]);
    out[n] = '\0';
    return order[0];
}

/* The next new connection's order is <want> (digits). A macro: a failure
 * names the case's line. */
#define assert_next_order(bs, rr, want)                                                            \
    do {                                                                                           \
        char o_[BACKEND_MAX_SERVERS + 1];                                                          \
        next((bs), (rr), o_);                                                                      \
        assert_string_equal(o_, (want));                                                           \
    } while (0)

static void test_round_robin(void **state)
{
    struct backend_set *bs = three_servers(10000);
    unsigned rr = 0;
    assert_next_order(bs, &rr, "012");
    assert_next_order(bs, &rr, "120");
    assert_next_order(bs, &rr, "201");
    assert_next_order(bs, &rr, "012");
    free(bs);
}

static void test_down_skipped_share_even(void **state)
{
    struct backend_set *bs = three_servers(10000);
    unsigned rr = 0;
    char o[16];
    backend_server_failed(bs, 1, "Connection refused");
    assert_false(backend_server_usable(bs, 1));
    assert_true(backend_server_usable(bs, 0));
    /* 1 is last in every order; 0 and 2 alternate (1's turn does not go to 2 alone). */
    unsigned firsts[6];
    for (unsigned i = 0; i < 6; i++) {
        firsts[i] = next(bs, &rr, o);
        assert_int_equal(o[2], '1');
    }
    unsigned n0 = 0;
    for (unsigned i = 0; i < 6; i++) {
        assert_int_not_equal(firsts[i], 1);
        n0 += firsts[i] == 0;
        if (i > 0)
            assert_int_not_equal(firsts[i], firsts[i - 1]);
    }
    assert_int_equal(n0, 3);
    /* A connection succeeded: usable again, in its turn. */
    backend_server_ok(bs, 1);
    assert_true(backend_server_usable(bs, 1));
    free(bs);
}

static void test_all_down_least_recently_failed_first(void **state)
{
    struct backend_set *bs = three_servers(60000);
    unsigned rr = 0;
    backend_server_failed(bs, 2, "x");
    backend_server_failed(bs, 0, "x");
    backend_server_failed(bs, 1, "x");
    assert_next_order(bs, &rr, "201");
    backend_server_failed(bs, 2, "x"); /* tried again and failed: now the most recent */
    assert_next_order(bs, &rr, "012");
    free(bs);
}

static void test_fail_timeout_zero_never_skips(void **state)
{
    struct backend_set *bs = three_servers(0);
    unsigned rr = 0;
    backend_server_failed(bs, 0, "x");
    assert_true(backend_server_usable(bs, 0));
    assert_next_order(bs, &rr, "012");
    free(bs);
}

static void test_fail_timeout_expires(void **state)
{
    struct backend_set *bs = three_servers(1);
    backend_server_failed(bs, 0, "x");
    struct timespec ts = {.tv_sec = 0, .tv_nsec = 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
    assert_true(backend_server_usable(bs, 0)); /* tried again; still marked down until it works */
    assert_true(atomic_load(&bs->srv[0].down));
    free(bs);
}

static void test_health_checks(void **state)
{
    struct backend_set *bs = three_servers(1);
    backend_server_checked(bs, 2, false, "health check answered 503");
    struct timespec ts = {.tv_sec = 0, .tv_nsec = 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
    /* Not fail_timeout: down until a check passes, even after a passive failure. */
    assert_false(backend_server_usable(bs, 2));
    backend_server_failed(bs, 2, "Connection refused");
    nanosleep(&ts, NULL);
    assert_false(backend_server_usable(bs, 2));
    backend_server_checked(bs, 2, true, "health check answered 200");
    assert_true(backend_server_usable(bs, 2));
    assert_false(atomic_load(&bs->srv[2].down));
    free(bs);
}

static void test_resolve(void **state)
{
    struct conf c = {0};
    char err[1024];
    c.path = "certmapd.conf";
    c.n_backends = 2;
    c.backends[0] = (struct conf_backend_url){
        .host = "127.0.0.1", .port = "8080", .host_header = "127.0.0.1:8080", .line = 4};
    c.backends[1] = (struct conf_backend_url){
        .host = "::1", .port = "80", .host_header = "[::1]", .line = 5};
    c.backend_fail_timeout_ms = 2000;
    struct backend_set *bs = backend_set_new(&c, err, sizeof err);
    if (bs == NULL)
        fail_msg("%s", err);
    assert_int_equal(bs->n_srv, 2);
    assert_int_equal(bs->n, 2);
    assert_string_equal(bs->text[0], "127.0.0.1:8080");
    assert_string_equal(bs->text[1], "[::1]:80");
    assert_int_equal(bs->srv_of[1], 1);
    assert_string_equal(bs->srv[1].name, "[::1]");
    assert_int_equal(bs->fail_timeout_ms, 2000);
    backend_set_free(bs);

    c.backends[1] = (struct conf_backend_url){.host = "no-such-host.invalid",
                                              .port = "80",
                                              .host_header = "no-such-host.invalid",
                                              .line = 7};
    assert_null(backend_set_new(&c, err, sizeof err));
    assert_non_null(strstr(err, "certmapd.conf:7: [backend] url: cannot resolve "
                                "\"no-such-host.invalid\""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_robin),
        cmocka_unit_test(test_down_skipped_share_even),
        cmocka_unit_test(test_all_down_least_recently_failed_first),
        cmocka_unit_test(test_fail_timeout_zero_never_skips),
        cmocka_unit_test(test_fail_timeout_expires),
        cmocka_unit_test(test_health_checks),
        cmocka_unit_test(test_resolve),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
