/* The identity cache: hits and misses, positive and negative TTLs on a test
 * clock, LRU eviction and the total bound, no caching of directory outages,
 * and single flight with 8 real threads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "helpers.h"

static uint64_t fake_clock(void *arg)
{
    return *(uint64_t *)arg;
}

static void result(struct map_result *r, enum reason why, const char *dn)
{
    memset(r, 0, sizeof(*r));
    r->reason = why;
    r->dn = dn ? strdup(dn) : NULL;
    r->detail = strdup("detail");
}

/* Resolves <key> as an owner would: must be a miss, then puts <why>. */
static void fill(struct map_cache *mc, const char *key, enum reason why, const char *dn)
{
    struct map_result out, r;
    struct map_waiter w = {0};
    assert_int_equal(map_cache_get(mc, key, &out, &w), MC_MISS_OWNER);
    result(&r, why, dn);
    map_cache_put(mc, key, &r);
    map_result_purge(&r);
}

static enum map_cache_state probe(struct map_cache *mc, const char *key, struct map_result *out)
{
    struct map_waiter w = {0};
    return map_cache_get(mc, key, out, &w);
}

static void test_hit_miss_ttl(void **state)
{
    uint64_t now = 1000;
    struct map_cache *mc = map_cache_new_custom(10, 5000, 1000, 4, fake_clock, &now);
    struct map_result out;

    (void)state;
    assert_non_null(mc);
    fill(mc, "AA", R_NONE, "CN=alice");
    assert_int_equal(probe(mc, "AA", &out), MC_HIT);
    assert_int_equal(out.reason, R_NONE);
    assert_string_equal(out.dn, "CN=alice");
    map_result_purge(&out);

    /* negative entries live negative_ttl */
    fill(mc, "BB", R_NO_MAPPING, NULL);
    now += 999;
    assert_int_equal(probe(mc, "BB", &out), MC_HIT);
    assert_int_equal(out.reason, R_NO_MAPPING);
    map_result_purge(&out);
    now += 1;
    fill(mc, "BB", R_NO_MAPPING, NULL); /* expired: a miss again */

    /* positive ones live ttl */
    now = 1000 + 4999;
    assert_int_equal(probe(mc, "AA", &out), MC_HIT);
    map_result_purge(&out);
    now = 1000 + 5000;
    fill(mc, "AA", R_NONE, "CN=alice2");
    assert_int_equal(probe(mc, "AA", &out), MC_HIT);
    assert_string_equal(out.dn, "CN=alice2");
    map_result_purge(&out);

    /* a directory outage is never cached */
    fill(mc, "CC", R_DIRECTORY_UNAVAILABLE, NULL);
    fill(mc, "CC", R_DIRECTORY_UNAVAILABLE, NULL);
    map_cache_free(mc);

    /* ttl 0: nothing kept */
    mc = map_cache_new_custom(10, 0, 0, 1, fake_clock, &now);
    fill(mc, "AA", R_NONE, "CN=alice");
    fill(mc, "AA", R_NONE, "CN=alice");
    assert_int_equal(map_cache_count(mc), 0);
    map_cache_free(mc);
}

static void test_lru(void **state)
{
    uint64_t now = 0;
    struct map_cache *mc = map_cache_new_custom(3, 60000, 60000, 1, fake_clock, &now);
    struct map_result out;
    char key[65];

    (void)state;
    fill(mc, "K1", R_NONE, "CN=1");
    fill(mc, "K2", R_NONE, "CN=2");
    fill(mc, "K3", R_NONE, "CN=3");
    assert_int_equal(probe(mc, "K1", &out), MC_HIT); /* K1 used: K2 is now the oldest */
    map_result_purge(&out);
    fill(mc, "K4", R_NONE, "CN=4");
    assert_int_equal(map_cache_count(mc), 3);
    assert_int_equal(probe(mc, "K1", &out), MC_HIT);
    map_result_purge(&out);
    assert_int_equal(probe(mc, "K3", &out), MC_HIT);
    map_result_purge(&out);
    fill(mc, "K2", R_NONE, "CN=2"); /* evicted: a miss (and K4 goes now) */
    assert_int_equal(probe(mc, "K3", &out), MC_HIT);
    map_result_purge(&out);
    map_cache_free(mc);

    /* the default 16 shards never hold more than the bound in total */
    mc = map_cache_new(20, 60000, 60000);
    for (int i = 0; i < 500; i++) {
        snprintf(key, sizeof(key), "%064d", i);
        fill(mc, key, R_NONE, "CN=x");
    }
    assert_true(map_cache_count(mc) <= 20);
    assert_true(map_cache_count(mc) >= 10);
    map_cache_free(mc);
}

/* ---- single flight ---- */

#define THREADS 8

struct waiter {
    struct map_waiter w; /* first: the wake callback casts back */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool woken;
};

static void wake(struct map_waiter *w)
{
    struct waiter *x = (struct waiter *)w;
    pthread_mutex_lock(&x->lock);
    x->woken = true;
    pthread_cond_signal(&x->cond);
    pthread_mutex_unlock(&x->lock);
}

struct flight {
    struct map_cache *mc;
    pthread_barrier_t start;
    atomic_int owners, waiting, hits, got;
};

static void *flight_thread(void *arg)
{
    struct flight *fl = arg;
    struct waiter x = {.w.wake = wake, .woken = false};
    struct map_result out, r;

    pthread_mutex_init(&x.lock, NULL);
    pthread_cond_init(&x.cond, NULL);
    pthread_barrier_wait(&fl->start);
    switch (map_cache_get(fl->mc, "FLIGHT", &out, &x.w)) {
    case MC_MISS_OWNER:
        atomic_fetch_add(&fl->owners, 1);
        /* let the others queue up behind this lookup (a hit is fine too) */
        for (int i = 0;
             i < 2000 && atomic_load(&fl->waiting) + atomic_load(&fl->hits) < THREADS - 1; i++)
            usleep(1000);
        result(&r, R_NONE, "CN=flight");
        map_cache_put(fl->mc, "FLIGHT", &r);
        map_result_purge(&r);
        atomic_fetch_add(&fl->got, 1);
        break;
    case MC_WAIT:
        atomic_fetch_add(&fl->waiting, 1);
        pthread_mutex_lock(&x.lock);
        while (!x.woken)
            pthread_cond_wait(&x.cond, &x.lock);
        pthread_mutex_unlock(&x.lock);
        if (x.w.result.reason == R_NONE && x.w.result.dn && strcmp(x.w.result.dn, "CN=flight") == 0)
            atomic_fetch_add(&fl->got, 1);
        map_result_purge(&x.w.result);
        break;
    case MC_HIT:
        atomic_fetch_add(&fl->hits, 1);
        if (out.reason == R_NONE && out.dn && strcmp(out.dn, "CN=flight") == 0)
            atomic_fetch_add(&fl->got, 1);
        map_result_purge(&out);
        break;
    }
    pthread_mutex_destroy(&x.lock);
    pthread_cond_destroy(&x.cond);
    return NULL;
}

static void test_single_flight(void **state)
{
    struct flight fl = {.mc = map_cache_new(1000, 60000, 60000)};
    pthread_t t[THREADS];

    (void)state;
    pthread_barrier_init(&fl.start, NULL, THREADS);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, flight_thread, &fl), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(atomic_load(&fl.owners), 1);
    assert_int_equal(atomic_load(&fl.got), THREADS);
    assert_int_equal(atomic_load(&fl.waiting) + atomic_load(&fl.hits), THREADS - 1);
    assert_true(atomic_load(&fl.waiting) >= 1);
    pthread_barrier_destroy(&fl.start);
    map_cache_free(fl.mc);
}

static void count_wake(struct map_waiter *w)
{
    w->next = (struct map_waiter *)w; /* mark: woken */
}

/* A waiter that gave up is not woken; a woken one cannot be unwaited. Waiters
 * of an outage get the outage, and the next request resolves again. */
static void test_unwait(void **state)
{
    struct map_cache *mc = map_cache_new(100, 60000, 60000);
    struct map_waiter a = {.wake = count_wake}, b = {.wake = count_wake};
    struct map_result out, r;

    (void)state;
    assert_int_equal(map_cache_get(mc, "K", &out, &a), MC_MISS_OWNER);
    assert_int_equal(map_cache_get(mc, "K", &out, &a), MC_WAIT);
    assert_int_equal(map_cache_get(mc, "K", &out, &b), MC_WAIT);
    assert_true(map_cache_unwait(mc, "K", &a));
    assert_false(map_cache_unwait(mc, "K", &a));
    result(&r, R_DIRECTORY_UNAVAILABLE, NULL);
    map_cache_put(mc, "K", &r);
    map_result_purge(&r);
    assert_ptr_equal(b.next, &b); /* woken */
    assert_ptr_not_equal(a.next, &a);
    assert_int_equal(b.result.reason, R_DIRECTORY_UNAVAILABLE);
    map_result_purge(&b.result);
    assert_false(map_cache_unwait(mc, "K", &b));
    assert_int_equal(map_cache_get(mc, "K", &out, &a), MC_MISS_OWNER);
    result(&r, R_NONE, "CN=k");
    map_cache_put(mc, "K", &r);
    map_result_purge(&r);
    map_cache_free(mc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hit_miss_ttl),
        cmocka_unit_test(test_lru),
        cmocka_unit_test(test_single_flight),
        cmocka_unit_test(test_unwait),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
