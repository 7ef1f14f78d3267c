/* [server] max_connections (proxy/limit.c): the bound derived from the
 * open-files limit, and the shared count that takes and gives back slots. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "conf/conf.h"
#include "proxy/limit.h"

static struct conf conf_of(unsigned workers, unsigned keepalive, unsigned max)
{
    struct conf c = {.workers = workers,
                     .n_listen = 1,
                     .keepalive_connections = keepalive,
                     .max_connections = max};
    return c;
}

static void test_derived_from_the_open_files_limit(void **state)
{
    struct conf c = conf_of(4, 64, 0);
    bool fits;
    uint64_t fixed = conn_limit_fixed_fds(&c);
    assert_int_equal(fixed, 4 * (1 + 5 + 64) + 24);
    assert_int_equal(conn_limit_resolve(&c, 65536, &fits), (65536 - fixed) / 2);
    assert_true(fits);
    /* What it derives always fits, down to a small limit. */
    c = conf_of(1, 4, 0);
    unsigned m = conn_limit_resolve(&c, 64, &fits);
    assert_int_equal(m, (64 - conn_limit_fixed_fds(&c)) / 2);
    assert_true(fits);
}

static void test_fixed_part_too_large_still_an_eighth(void **state)
{
    struct conf c = conf_of(64, 64, 0); /* 64 pools of 64: more than 1024 files */
    bool fits = true;
    assert_int_equal(conn_limit_resolve(&c, 1024, &fits), 1024 / 8);
    assert_false(fits); /* warned about at start */
}

static void test_configured_bound_kept_and_judged(void **state)
{
    struct conf c = conf_of(2, 64, 5000);
    bool fits = true;
    assert_int_equal(conn_limit_resolve(&c, 1024, &fits), 5000);
    assert_false(fits);
    assert_int_equal(conn_limit_resolve(&c, 20000, &fits), 5000);
    assert_true(fits);
}

static void test_take_and_release(void **state)
{
    struct conn_limit *l = conn_limit_new(3, 2);
    assert_non_null(l);
    assert_true(conn_limit_take(l));
    assert_true(conn_limit_take(l));
    assert_false(conn_limit_full(l));
    assert_true(conn_limit_take(l));
    assert_true(conn_limit_full(l));
    assert_false(conn_limit_take(l)); /* at the bound: refused, count unchanged */
    assert_int_equal(conn_limit_count(l), 3);
    conn_limit_release(l);
    assert_false(conn_limit_full(l));
    assert_true(conn_limit_take(l));
    conn_limit_set_max(l, 2); /* a lower bound: connections over it stay */
    assert_true(conn_limit_full(l));
    assert_int_equal(conn_limit_count(l), 3);
    conn_limit_release(l);
    conn_limit_release(l);
    assert_false(conn_limit_full(l));
    conn_limit_release(l);
    assert_int_equal(conn_limit_count(l), 0);
    conn_limit_free(l);
    conn_limit_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_derived_from_the_open_files_limit),
        cmocka_unit_test(test_fixed_part_too_large_still_an_eighth),
        cmocka_unit_test(test_configured_bound_kept_and_judged),
        cmocka_unit_test(test_take_and_release),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
