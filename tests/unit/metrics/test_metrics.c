/* metrics/: per-thread blocks summed exactly, the exposition's series and
 * escaping, the histogram's buckets, and the listener's strict request head. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics/metrics.h"

#define THREADS 4
#define PER_THREAD 100000

static void *counting_thread(void *arg)
{
    bool attach = (intptr_t)arg != 0;
    if (attach)
        assert_int_equal(metrics_thread_attach(), 0);
    for (int i = 0; i < PER_THREAD; i++) {
        metrics_inc(MT_CONN_ACCEPTED);
        metrics_gauge_add(MG_CONN_ACTIVE, 1);
        metrics_request(200, R_NONE);
        metrics_gauge_add(MG_CONN_ACTIVE, -1);
    }
    metrics_gauge_add(MG_CACHE_ENTRIES, 3);
    return NULL;
}

/* Threads with blocks and threads without (the global block) sum exactly. */
static void test_sums_over_threads(void **state)
{
    (void)state;
    uint64_t c0 = metrics_counter_value(MT_CONN_ACCEPTED);
    int64_t g0 = metrics_gauge_value(MG_CACHE_ENTRIES);
    pthread_t t[THREADS];
    for (intptr_t i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, counting_thread, (void *)(i % 2)), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(metrics_counter_value(MT_CONN_ACCEPTED) - c0, THREADS * PER_THREAD);
    assert_int_equal(metrics_gauge_value(MG_CACHE_ENTRIES) - g0, THREADS * 3);
    assert_int_equal(metrics_gauge_value(MG_CONN_ACTIVE), 0);
    /* a gauge raised by one thread and lowered by another still sums */
    metrics_gauge_add(MG_CACHE_ENTRIES, -THREADS * 3);
    assert_int_equal(metrics_gauge_value(MG_CACHE_ENTRIES), g0);
}

/* The series line <prefix> of <text> and its value, or -1 when absent. */
static long long series(const char *text, const char *prefix)
{
    size_t n = strlen(prefix);
    for (const char *p = text; p != NULL && *p != '\0'; p = strchr(p, '\n'), p = p ? p + 1 : p) {
        if (strncmp(p, prefix, n) == 0 && p[n] == ' ')
            return strtoll(p + n + 1, NULL, 10);
    }
    return -1;
}

static void test_requests_and_escaping(void **state)
{
    (void)state;
    metrics_request(403, R_CERT_REQUIRED);
    metrics_request(403, R_CERT_REQUIRED);
    metrics_request(499, R_CERT_REQUIRED);
    metrics_request(502, R_BACKEND_UNAVAILABLE);
    metrics_request(7, R_NONE);            /* not an HTTP status: "other" */
    metrics_request(200, (enum reason)99); /* not a reason: "internal" */
    metrics_crl_clear();
    metrics_crl_set("CN=A \"quoted\" \\ CA\nx", 1000, 2000);
    metrics_crl_set("CN=B", 0, 0);
    metrics_crl_set("CN=B", 5, 6); /* replaced, not added */
    const char *uris[] = {"ldaps://dc1", "ldaps://dc\"2"};
    metrics_gauge_add(MG_DIR_UP0 + 1, 2);
    struct metrics_labels l = {.ldap_uri = uris, .n_ldap_uri = 2};
    size_t len = 0;
    char *text = metrics_render(&l, &len);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    assert_int_equal(
        series(text, "certmapd_requests_total{status=\"403\",reason=\"cert_required\"}"), 2);
    assert_int_equal(
        series(text, "certmapd_requests_total{status=\"499\",reason=\"cert_required\"}"), 1);
    assert_int_equal(
        series(text, "certmapd_requests_total{status=\"502\",reason=\"backend_unavailable\"}"), 1);
    assert_int_equal(series(text, "certmapd_requests_total{status=\"other\",reason=\"\"}"), 1);
    assert_int_equal(series(text, "certmapd_requests_total{status=\"200\",reason=\"internal\"}"),
                     1);
    assert_non_null(strstr(text, "certmapd_crl_next_update_timestamp_seconds{issuer=\"CN=A "
                                 "\\\"quoted\\\" \\\\ CA\\nx\"} 2000\n"));
    assert_int_equal(series(text, "certmapd_crl_next_update_timestamp_seconds{issuer=\"CN=B\"}"),
                     6);
    assert_int_equal(series(text, "certmapd_directory_connections{uri=\"ldaps://dc1\"}"), 0);
    assert_int_equal(series(text, "certmapd_directory_connections{uri=\"ldaps://dc\\\"2\"}"), 2);
    /* every family once, HELP before TYPE */
    assert_non_null(strstr(text, "# HELP certmapd_requests_total "));
    assert_null(strstr(strstr(text, "# TYPE certmapd_requests_total counter\n") + 1,
                       "# TYPE certmapd_requests_total"));
    assert_int_equal(text[len - 1], '\n');
    free(text);
    metrics_gauge_add(MG_DIR_UP0 + 1, -2);

    char out[16];
    metrics_label_escape("a\"b\\c\nd\x01", out, sizeof out);
    assert_string_equal(out, "a\\\"b\\\\c\\nd?");
    metrics_label_escape("\"\"\"\"\"\"\"\"\"\"", out, 8); /* never half an escape */
    assert_string_equal(out, "\\\"\\\"\\\"");
}

static void test_histogram(void **state)
{
    (void)state;
    metrics_dir_search(MT_DIR_SEARCH_OK, 0.001); /* on a bound: in it (le) */
    metrics_dir_search(MT_DIR_SEARCH_OK, 0.0011);
    metrics_dir_search(MT_DIR_SEARCH_TIMEOUT, 99);
    metrics_dir_search(MT_DIR_SEARCH_FAILED, -1); /* a clock step: 0 */
    metrics_dir_search(MT_CONN_ACCEPTED, 1);      /* not a search result: ignored */
    size_t len;
    char *text = metrics_render(NULL, &len);
    assert_non_null(text);
    const char *h = "certmapd_directory_search_duration_seconds";
    char name[128];
    snprintf(name, sizeof name, "%s_bucket{le=\"0.001\"}", h);
    assert_int_equal(series(text, name), 2);
    snprintf(name, sizeof name, "%s_bucket{le=\"0.0025\"}", h);
    assert_int_equal(series(text, name), 3);
    snprintf(name, sizeof name, "%s_bucket{le=\"10\"}", h);
    assert_int_equal(series(text, name), 3);
    snprintf(name, sizeof name, "%s_bucket{le=\"+Inf\"}", h);
    assert_int_equal(series(text, name), 4);
    snprintf(name, sizeof name, "%s_count", h);
    assert_int_equal(series(text, name), 4);
    assert_non_null(strstr(text, "certmapd_directory_search_duration_seconds_sum 99.002100\n"));
    assert_int_equal(series(text, "certmapd_directory_searches_total{result=\"ok\"}"), 2);
    assert_int_equal(series(text, "certmapd_directory_searches_total{result=\"timeout\"}"), 1);
    free(text);
}

static int route(const char *head, int *r)
{
    return metrics_http_route(head, strlen(head), r);
}

static void test_http_route(void **state)
{
    (void)state;
    int r;
    assert_int_equal(route("GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n", &r), 200);
    assert_int_equal(r, METRICS_ROUTE_METRICS);
    assert_int_equal(route("GET /healthz HTTP/1.0\r\n\r\n", &r), 200);
    assert_int_equal(r, METRICS_ROUTE_HEALTHZ);
    assert_int_equal(route("GET /healthz HTTP/1.1\r\nContent-Length:  0 \r\n\r\n", &r), 200);
    assert_int_equal(route("get /metrics HTTP/1.1\r\n\r\n", &r), 405);
    assert_int_equal(route("GET /Metrics HTTP/1.1\r\n\r\n", &r), 404);
    assert_int_equal(r, METRICS_ROUTE_NONE);
    assert_int_equal(route("GET /metrics HTTP/1.2\r\n\r\n", &r), 505);
    assert_int_equal(route("GET /metrics HTTP/1.1\r\n", &r), 400); /* no blank line */
    assert_int_equal(route("GET /metrics HTTP/1.1\r\n\r", &r), 400);
    assert_int_equal(route("GET\t/metrics HTTP/1.1\r\n\r\n", &r), 400);
    assert_int_equal(route("GET /met\trics HTTP/1.1\r\n\r\n", &r), 400);
    assert_int_equal(route("GET /metrics HTTP/1.1\r\nA:\x7f\r\n\r\n", &r), 400);
    assert_int_equal(route("GET /metrics HTTP/1.1\r\n\tx: y\r\n\r\n", &r), 400);
    assert_int_equal(route("GET /metrics HTTP/1.1\r\nContent-Length: 00\r\n\r\n", &r), 400);
    assert_int_equal(route("GET /metrics HTTP/1.1\r\ntransfer-encoding: x\r\n\r\n", &r), 400);
    assert_int_equal(route("\r\n\r\n", &r), 400);
    assert_int_equal(route("", &r), 400);
    /* a NUL inside, which strlen would hide */
    static const char nul[] = "GET /metrics HTTP/1.1\r\nA: \0b\r\n\r\n";
    assert_int_equal(metrics_http_route(nul, sizeof nul - 1, &r), 400);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sums_over_threads),
        cmocka_unit_test(test_requests_and_escaping),
        cmocka_unit_test(test_histogram),
        cmocka_unit_test(test_http_route),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    metrics_shutdown();
    return rc;
}
