/* proxy_http_policy_path against hostile request targets, and the location a
 * real configuration then picks for them (conf_location_for). The policy path
 * is what a location's policy is decided on: the target's path, %-decoded
 * once, backslashes as slashes, "." / ".." / empty segments removed; NULL
 * (answered 400) for whatever cannot be judged safely. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "conf/conf.h"
#include "proxy/http.h"
#include "tests/support/testpki.h"

#define REFUSED NULL

struct row {
    const char *target;
    const char *want; /* REFUSED: NULL */
};

static void check_rows(const struct row *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const char *in = rows[i].target;
        char *got = proxy_http_policy_path(in, strlen(in));
        if (rows[i].want == NULL && got != NULL)
            fail_msg("\"%s\": got \"%s\", want refused", in, got);
        if (rows[i].want != NULL && (got == NULL || strcmp(got, rows[i].want) != 0))
            fail_msg("\"%s\": got %s%s%s, want \"%s\"", in, got ? "\"" : "", got ? got : "refused",
                     got ? "\"" : "", rows[i].want);
        free(got);
    }
}

#define CHECK(rows) check_rows(rows, sizeof rows / sizeof rows[0])

static void test_dot_segments(void **state)
{
    static const struct row rows[] = {
        {"/", "/"},
        {"/a/b", "/a/b"},
        {"/a/./b", "/a/b"},
        {"/a/../b", "/b"},
        {"/a/b/../../../../c", "/c"}, /* never above the root */
        {"/..", "/"},
        {"/../../etc/passwd", "/etc/passwd"},
        {"/a/%2e%2e/b", "/b"}, /* decoded before the dot segments go */
        {"/a/%2E%2E/b", "/b"},
        {"/a/%2e%2E/b", "/b"},
        {"/a/.%2e/b", "/b"},
        {"/a/%2e/b", "/a/b"},
        {"/a/%2E%2E/", "/"},
        /* a target that ends in a dot segment names a folder, as a backend resolves it */
        {"/a/b/..", "/a/"},
        {"/a/b/%2e%2e", "/a/"},
        {"/a/.", "/a/"},
        {"/a/b/", "/a/b/"},
        /* "..." and names that only start or end with dots are names */
        {"/a/.../b", "/a/.../b"},
        {"/a/..b/c", "/a/..b/c"},
        {"/a/b../c", "/a/b../c"},
        {"/owa.", "/owa."},
        {"/owa./x", "/owa./x"},
        {"/a/..;/b", "/a/..;/b"}, /* a path parameter is not a dot segment here */
    };
    CHECK(rows);
}

static void test_slashes(void **state)
{
    static const struct row rows[] = {
        {"//a", "/a"},
        {"///a////b//", "/a/b/"},
        {"//..//a", "/a"},
        {"/a\\b", "/a/b"},   /* IIS reads a backslash as a slash */
        {"/a\\..\\b", "/b"}, /* so it separates dot segments too */
        {"\\a", REFUSED},    /* not an absolute path */
        {"/a%2fb", REFUSED}, /* an encoded slash would be another path to some backends */
        {"/a%2Fb", REFUSED},
        {"/a/..%2fb", REFUSED},
        {"/a%2f..%2fb", REFUSED},
        {"/a%5cb", REFUSED}, /* an encoded backslash likewise */
        {"/a%5C..%5Cb", REFUSED},
    };
    CHECK(rows);
}

static void test_escapes(void **state)
{
    static const struct row rows[] = {
        {"/%41%62c", "/Abc"},
        {"/a%20b", "/a b"},
        {"/a%3Fb", "/a?b"}, /* an encoded "?" is part of the path */
        {"/a%23b", "/a#b"},
        {"/a%00", REFUSED}, /* NUL */
        {"/a%00/../b", REFUSED},
        {"/%252e%252e/a", "/%2e%2e/a"}, /* decoded once: "%2e" is a name */
        {"/a/%252e%252e/b", "/a/%2e%2e/b"},
        {"/a%25", "/a%"},
        {"/a%g1", REFUSED}, /* not hex */
        {"/a%1g", REFUSED},
        {"/a%", REFUSED}, /* cut short */
        {"/a%4", REFUSED},
        {"/%%41", REFUSED},
        {"/a%-1", REFUSED},
        {"/a% 1", REFUSED},
    };
    CHECK(rows);
}

static void test_utf8(void **state)
{
    static const struct row rows[] = {
        {"/caf%C3%A9", "/caf\xC3\xA9"},
        {"/%E2%82%AC/%F0%9F%98%80", "/\xE2\x82\xAC/\xF0\x9F\x98\x80"},
        {"/%C0%AE%C0%AE/a", REFUSED},         /* overlong ".." */
        {"/a/%C0%AF../b", REFUSED},           /* overlong "/" */
        {"/a/%E0%80%AE%E0%80%AE/b", REFUSED}, /* overlong "." in three bytes */
        {"/%ED%A0%80", REFUSED},              /* a surrogate */
        {"/%F4%90%80%80", REFUSED},           /* past U+10FFFF */
        {"/%C3", REFUSED},                    /* cut short */
        {"/%C3/", REFUSED},
        {"/%E9t%E9", REFUSED}, /* Latin-1, not UTF-8 */
        {"/%FF", REFUSED},
        {"/%80", REFUSED},
    };
    CHECK(rows);
}

static void test_query_and_fragment(void **state)
{
    static const struct row rows[] = {
        {"/a?b", "/a"},   {"/a?b/../../c", "/a"}, {"/a/..?x", "/"},
        {"/a?%2f", "/a"}, /* the query is not decoded, so not refused */
        {"/a?%", "/a"},   {"/a#b", "/a"},         {"/a#b?c", "/a"},
        {"/a?b#c", "/a"}, {"/a/#/../..", "/a/"},  {"/?", "/"},
        {"?a", REFUSED},  {"#a", REFUSED},
    };
    CHECK(rows);
}

static void test_target_forms(void **state)
{
    static const struct row rows[] = {
        /* absolute-form: the path after the authority */
        {"http://host/a/b", "/a/b"},
        {"HTTP://host/a", "/a"},
        {"https://host/a/../b", "/b"},
        {"HtTpS://host:8443/a%2e%2e/x", "/a../x"},
        {"http://host", "/"},
        {"https://h", "/"},
        {"http://user@host/a", "/a"},
        {"http://[::1]:80/a", "/a"},
        {"http://host?/a", "/"}, /* "/a" is in the query: the path is empty */
        {"http://host?x=/../a", "/"},
        {"http://host#/a", "/"},
        {"http://host/a?b=/c", "/a"},
        {"http:///a/b", REFUSED}, /* an http URI without a host is invalid (RFC 9110 4.2.1) */
        {"https:///a", REFUSED},
        {"http://", REFUSED},
        {"https://", REFUSED},
        {"http://?/a", REFUSED},
        {"http:/a", REFUSED},
        {"ftp://host/a", REFUSED},
        {"host/a", REFUSED},
        /* asterisk-form: only "*" */
        {"*", "*"},
        {"**", REFUSED},
        {"*/a", REFUSED},
        /* nothing */
        {"", REFUSED},
    };
    CHECK(rows);
    /* the length bounds the target, not a NUL */
    char *p = proxy_http_policy_path("/a/b/c", 4);
    assert_string_equal(p, "/a/b");
    free(p);
    /* a raw NUL (llhttp refuses it before, but the length says it is there) */
    assert_null(proxy_http_policy_path("/a\0/../b", 8));
}

static void test_long_paths(void **state)
{
    size_t n = 1 << 20;
    char *in = malloc(n + 1);
    assert_non_null(in);

    /* 1 MiB of one name: kept whole */
    in[0] = '/';
    memset(in + 1, 'a', n - 1);
    in[n] = '\0';
    char *p = proxy_http_policy_path(in, n);
    assert_non_null(p);
    assert_int_equal(strlen(p), n);
    free(p);

    /* 1 MiB of "/..": the root */
    for (size_t i = 0; i + 3 <= n; i += 3)
        memcpy(in + i, "/..", 3);
    p = proxy_http_policy_path(in, n - n % 3);
    assert_string_equal(p, "/");
    free(p);

    /* deep, then all the way back up, then one name */
    size_t depth = (n - 2) / 5, o = 0; /* 2 bytes down and 3 up per level, then "/b" */
    for (size_t i = 0; i < depth; i++, o += 2)
        memcpy(in + o, "/a", 2);
    for (size_t i = 0; i < depth; i++, o += 3)
        memcpy(in + o, "/..", 3);
    memcpy(in + o, "/b", 2);
    o += 2;
    p = proxy_http_policy_path(in, o);
    assert_string_equal(p, "/b");
    free(p);

    /* 1 MiB of "%2e%2e/" is a long way to say "/" */
    in[0] = '/';
    o = 1;
    while (o + 7 <= n) {
        memcpy(in + o, "%2e%2e/", 7);
        o += 7;
    }
    p = proxy_http_policy_path(in, o);
    assert_string_equal(p, "/");
    free(p);
    free(in);
}

/* ---- the location a real configuration picks ------------------------------------- */

static struct conf *load_conf(void)
{
    char cert[4096], key[4096], ca[4096], path[] = "/tmp/test_http_policy.XXXXXX";
    assert_non_null(testpki_path(cert, sizeof cert, "server-chain.pem"));
    assert_non_null(testpki_path(key, sizeof key, "server.key"));
    assert_non_null(testpki_path(ca, sizeof ca, "root-ca.crt"));
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *fp = fdopen(fd, "w");
    assert_non_null(fp);
    fprintf(fp,
            "[tls]\ncertificate = %s\nprivate_key = %s\n"
            "[client_certificate]\nmode = require\ntrust_anchors = %s\n"
            "[backend]\nurl = http://127.0.0.1:8080\n"
            "[location /Microsoft-Server-ActiveSync]\nclient_certificate = require\n"
            "[location /public]\nclient_certificate = ignore\n"
            "[location /owa/]\nclient_certificate = accept\n",
            cert, key, ca);
    assert_int_equal(fclose(fp), 0);
    struct conf *c = NULL;
    char err[2048];
    if (conf_load(path, &c, err, sizeof err) < 0)
        fail_msg("configuration refused: %s", err);
    unlink(path);
    return c;
}

static void test_locations(void **state)
{
    static const struct {
        const char *target;
        const char *location; /* NULL: none, [client_certificate] mode */
    } rows[] = {
        {"/Microsoft-Server-ActiveSync?Cmd=Ping", "/Microsoft-Server-ActiveSync"},
        {"/Microsoft-Server-ActiveSync/../public", "/public"},
        {"/Microsoft-Server-ActiveSync/%2e%2e/public/x", "/public"},
        {"/public/../Microsoft-Server-ActiveSync", "/Microsoft-Server-ActiveSync"},
        {"/public/%2e%2e/Microsoft-Server-ActiveSync?Cmd=Sync", "/Microsoft-Server-ActiveSync"},
        {"/public/%2E%2E/microsoft-server-activesync", "/Microsoft-Server-ActiveSync"},
        {"/public\\..\\Microsoft-Server-ActiveSync", "/Microsoft-Server-ActiveSync"},
        {"/public/x/../../Microsoft-Server-ActiveSync", "/Microsoft-Server-ActiveSync"},
        {"/public/./../Microsoft-Server-ActiveSync", "/Microsoft-Server-ActiveSync"},
        {"//public//..//Microsoft-Server-ActiveSync", "/Microsoft-Server-ActiveSync"},
        {"/%4d%49%43%52%4f%53%4f%46%54-Server-ActiveSync", "/Microsoft-Server-ActiveSync"},
        {"/MICROSOFT-SERVER-ACTIVESYNC", "/Microsoft-Server-ActiveSync"},
        {"http://evil/public/../Microsoft-Server-ActiveSync", "/Microsoft-Server-ActiveSync"},
        {"http://host?/public", NULL}, /* the path is "/": not /public's */
        {"http://host/public?/Microsoft-Server-ActiveSync", "/public"},
        {"/public", "/public"},
        {"/PUBLIC/x", "/public"},
        {"/publicity", "/public"}, /* prefixes are plain bytes (docs/configuration.md) */
        {"/%252e%252e/public", NULL},
        {"/owa/", "/owa/"},
        {"/owa/x/..", "/owa/"}, /* the folder itself, as the backend resolves it */
        {"/owa/.", "/owa/"},
        {"/owa/x/%2e%2e", "/owa/"},
        {"/owa", NULL}, /* "/owa/" means the folder only */
        {"/owa/..", NULL},
        {"*", NULL},
    };
    struct conf *c = load_conf();
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        char *p = proxy_http_policy_path(rows[i].target, strlen(rows[i].target));
        if (p == NULL)
            fail_msg("\"%s\" refused", rows[i].target);
        const struct conf_location *l = conf_location_for(c, p, strlen(p));
        const char *got = l != NULL ? l->prefix : NULL;
        if ((got == NULL) != (rows[i].location == NULL) ||
            (got != NULL && strcmp(got, rows[i].location) != 0))
            fail_msg("\"%s\" (policy path \"%s\"): location %s, want %s", rows[i].target, p,
                     got ? got : "none", rows[i].location ? rows[i].location : "none");
        free(p);
    }
    const struct conf_location *l = conf_location_for(c, "/public", 7);
    assert_int_equal(l->client_certificate, CERT_IGNORE);
    conf_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dot_segments),
        cmocka_unit_test(test_slashes),
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_query_and_fragment),
        cmocka_unit_test(test_target_forms),
        cmocka_unit_test(test_long_paths),
        cmocka_unit_test(test_locations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
