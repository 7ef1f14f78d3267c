/* conf/: value parsers, loading real files, defaults, location policy and
 * every class of error with its FILE:LINE. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "conf/conf.h"

/* A readable file that stands in for every certificate, key and CA file:
 * conf/ checks readability only, it does not parse PEM. */
struct fixture {
    char dummy[64];
};

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    int fd;

    if (fx == NULL)
        return -1;
    snprintf(fx->dummy, sizeof(fx->dummy), "/tmp/certmapd-conf-pem-XXXXXX");
    fd = mkstemp(fx->dummy);
    if (fd < 0 || write(fd, "dummy\n", 6) != 6) {
        if (fd >= 0)
            close(fd);
        free(fx);
        return -1;
    }
    close(fd);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;

    unlink(fx->dummy);
    free(fx);
    return 0;
}

/* Writes <text> with every "@F@" replaced by the dummy file to a new temp file;
 * its name goes to <path>. Returns 0 or -1. */
static int write_conf(const struct fixture *fx, const char *text, size_t textlen, char *path,
                      size_t pathlen)
{
    FILE *fp;
    int fd;

    snprintf(path, pathlen, "/tmp/certmapd-conf-XXXXXX");
    fd = mkstemp(path);
    if (fd < 0)
        return -1;
    fp = fdopen(fd, "w");
    if (fp == NULL) {
        close(fd);
        return -1;
    }
    for (size_t i = 0; i < textlen; i++) {
        if (i + 3 <= textlen && memcmp(text + i, "@F@", 3) == 0) {
            fputs(fx->dummy, fp);
            i += 2;
        } else {
            fputc(text[i], fp);
        }
    }
    return fclose(fp) == 0 ? 0 : -1;
}

/* Loads <text> (NUL-terminated); keeps the file's name in <path> for messages. */
static int load_text(void **state, const char *text, struct conf **c, char *err, size_t errlen,
                     char *path, size_t pathlen)
{
    int rc;

    assert_int_equal(write_conf(*state, text, strlen(text), path, pathlen), 0);
    err[0] = '\0';
    rc = conf_load(path, c, err, errlen);
    unlink(path);
    return rc;
}

#define BASE                                                                                       \
    "[tls]\n"                                                                                      \
    "certificate = @F@\n"                                                                          \
    "private_key = @F@\n"                                                                          \
    "[backend]\n"                                                                                  \
    "url = http://127.0.0.1:8080\n"                                                                \
    "[client_certificate]\n"                                                                       \
    "trust_anchors = @F@\n"
#define BASE_LINES 7

/* ---- value parsers ---- */

static void test_parse_size(void **state)
{
    static const struct {
        const char *in;
        size_t want;
    } good[] = {
        {"0", 0},
        {"1", 1},
        {"32K", 32 * 1024},
        {"32k", 32 * 1024},
        {" 48K ", 48 * 1024},
        {"1m", 1024 * 1024},
        {"100M", 100ull * 1024 * 1024},
        {"1G", 1024ull * 1024 * 1024},
        {"16383G", 16383ull * 1024 * 1024 * 1024},
        {"18446744073709551615", SIZE_MAX},
    };
    static const char *const bad[] = {
        "",
        "  ",
        "K",
        "12X",
        "12KB",
        "-1",
        "+1",
        "1.5K",
        "1 K",
        "0x10",
        "abc",
        "18446744073709551616", /* one more than SIZE_MAX */
        "17179869184G",         /* 2^34 G = 2^64 bytes */
        "18014398509481984K",   /* 2^54 K = 2^64 bytes */
    };
    const char *why;
    size_t v;

    (void)state;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        v = 12345;
        why = NULL;
        if (conf_parse_size(good[i].in, &v, &why) != 0)
            fail_msg("size \"%s\" refused: %s", good[i].in, why ? why : "?");
        assert_int_equal(v, good[i].want);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 12345;
        why = NULL;
        if (conf_parse_size(bad[i], &v, &why) != -1)
            fail_msg("size \"%s\" accepted as %zu", bad[i], v);
        assert_non_null(why);
        assert_int_equal(v, 12345);
    }
    assert_int_equal(conf_parse_size("18446744073709551616", &v, &why), -1);
    assert_string_equal(why, "is too large");
    assert_int_equal(conf_parse_size("12X", &v, &why), -1);
    assert_non_null(strstr(why, "suffix"));
}

static void test_parse_duration(void **state)
{
    static const struct {
        const char *in;
        uint64_t want;
    } good[] = {
        {"0", 0},
        {"5", 5000},
        {"30s", 30000},
        {"30S", 30000},
        {"250ms", 250},
        {"250MS", 250},
        {"65m", 3900000},
        {"1h", 3600000},
        {" 2h ", 7200000},
        {"0ms", 0},
        {"18446744073709551615ms", UINT64_MAX},
    };
    static const char *const bad[] = {
        "",
        "s",
        "5d",
        "1.5s",
        "-1s",
        "5 s",
        "5sec",
        "ms",
        "1hm",
        "18446744073709551615s", /* overflows once in ms */
        "18446744073709551616ms",
        "5124095576030432h",
    };
    const char *why;
    uint64_t v;

    (void)state;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        v = 777;
        why = NULL;
        if (conf_parse_duration_ms(good[i].in, &v, &why) != 0)
            fail_msg("duration \"%s\" refused: %s", good[i].in, why ? why : "?");
        assert_int_equal(v, good[i].want);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 777;
        why = NULL;
        if (conf_parse_duration_ms(bad[i], &v, &why) != -1)
            fail_msg("duration \"%s\" accepted as %llu", bad[i], (unsigned long long)v);
        assert_non_null(why);
        assert_int_equal(v, 777);
    }
}

/* ---- whole files ---- */

static const char full_conf[] = "; every key, none at its default\n"
                                "[server]\n"
                                "listen = 127.0.0.1:8443\n"
                                "listen = [::1]:8444\n"
                                "workers = 3\n"
                                "user = root\n"
                                "access_log = /var/log/certmapd/access.log\n"
                                "log_level = debug\n"
                                "detailed_errors = on\n"
                                "max_request_head = 64K\n"
                                "header_timeout = 10s\n"
                                "keepalive_timeout = 2m\n"
                                "\n"
                                "[tls]\n"
                                "certificate = @F@\n"
                                "private_key = @F@\n"
                                "min_protocol = TLSv1.3\n"
                                "ciphers = ECDHE+AESGCM:!aNULL:@STRENGTH\n"
                                "ciphersuites = TLS_AES_128_CCM_SHA256:TLS_AES_128_GCM_SHA256\n"
                                "groups = P-384:x25519:ffdhe2048\n"
                                "\n"
                                "[client_certificate]\n"
                                "mode = accept\n"
                                "trust_anchors = @F@\n"
                                "trusted_issuers = @F@\n"
                                "crl_file = @F@\n"
                                "verify_depth = 7\n"
                                "require_client_auth_eku = no\n"
                                "negotiate_at_handshake = yes\n"
                                "\n"
                                "[mapping]\n"
                                "source = ldap\n"
                                "ldif_file = @F@\n"
                                "methods = upn altsecid,sid , dns\n"
                                "enforcement = compatibility\n"
                                "cache_ttl = 10m\n"
                                "negative_cache_ttl = 1500ms\n"
                                "cache_entries = 500\n"
                                "\n"
                                "[ldap]\n"
                                "uri = ldaps://dc1.corp.example.test ldap://127.0.0.1:3389\n"
                                "uri = ldaps://[::1]\n"
                                "base_dn = DC=corp,DC=example,DC=test\n"
                                "bind_dn = svc-seg@corp.example.test\n"
                                "bind_password_file = @F@\n"
                                "ca_file = @F@\n"
                                "timeout = 2s\n"
                                "\n"
                                "[backend]\n"
                                "url = https://eas.corp.example.test:8443/\n"
                                "ca_file = @F@\n"
                                "connect_timeout = 3s\n"
                                "read_timeout = 1h\n"
                                "keepalive_connections = 0\n"
                                "\n"
                                "[buffering]\n"
                                "upload_read_ahead_size = 100M\n"
                                "\n"
                                "[location /Microsoft-Server-ActiveSync]\n"
                                "client_certificate = require\n"
                                "mapping = off\n";

static void test_full_config(void **state)
{
    const struct fixture *fx = *state;
    char err[4096], path[64];
    struct conf *c = NULL;
    const struct sockaddr_in *sin;
    const struct sockaddr_in6 *sin6;

    if (load_text(state, full_conf, &c, err, sizeof(err), path, sizeof(path)) != 0)
        fail_msg("full config refused: %s", err);
    assert_non_null(c);
    assert_string_equal(c->path, path);

    assert_int_equal(c->n_listen, 2);
    assert_string_equal(c->listen[0].text, "127.0.0.1:8443");
    sin = (const struct sockaddr_in *)&c->listen[0].addr;
    assert_int_equal(sin->sin_family, AF_INET);
    assert_int_equal(ntohs(sin->sin_port), 8443);
    assert_int_equal(ntohl(sin->sin_addr.s_addr), INADDR_LOOPBACK);
    assert_int_equal(c->listen[0].addrlen, sizeof(struct sockaddr_in));
    sin6 = (const struct sockaddr_in6 *)&c->listen[1].addr;
    assert_int_equal(sin6->sin6_family, AF_INET6);
    assert_int_equal(ntohs(sin6->sin6_port), 8444);
    assert_true(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));

    assert_int_equal(c->workers, 3);
    assert_string_equal(c->user, "root");
    assert_string_equal(c->access_log, "/var/log/certmapd/access.log");
    assert_int_equal(c->log_level, CM_LOG_DEBUG);
    assert_true(c->detailed_errors);
    assert_int_equal(c->max_request_head, 64 * 1024);
    assert_int_equal(c->header_timeout_ms, 10000);
    assert_int_equal(c->keepalive_timeout_ms, 120000);

    assert_string_equal(c->certificate, fx->dummy);
    assert_string_equal(c->private_key, fx->dummy);
    assert_int_equal(c->min_protocol, 0x0304);
    /* kept as written: OpenSSL reads them again in tls/ */
    assert_string_equal(c->ciphers, "ECDHE+AESGCM:!aNULL:@STRENGTH");
    assert_string_equal(c->ciphersuites, "TLS_AES_128_CCM_SHA256:TLS_AES_128_GCM_SHA256");
    assert_string_equal(c->groups, "P-384:x25519:ffdhe2048");

    assert_int_equal(c->cert_mode, CERT_ACCEPT);
    assert_string_equal(c->trust_anchors, fx->dummy);
    assert_string_equal(c->trusted_issuers, fx->dummy);
    assert_string_equal(c->crl_file, fx->dummy);
    assert_int_equal(c->verify_depth, 7);
    assert_false(c->require_client_auth_eku);
    assert_true(c->negotiate_at_handshake);

    assert_true(c->has_mapping_section);
    assert_true(c->has_ldap_section);
    assert_int_equal(c->map_source, MAP_SOURCE_LDAP);
    assert_string_equal(c->ldif_file, fx->dummy);
    assert_int_equal(c->n_methods, 4);
    assert_int_equal(c->methods[0], METHOD_UPN);
    assert_int_equal(c->methods[1], METHOD_ALTSECID);
    assert_int_equal(c->methods[2], METHOD_SID);
    assert_int_equal(c->methods[3], METHOD_DNS);
    assert_int_equal(c->enforcement, ENFORCE_COMPATIBILITY);
    assert_int_equal(c->cache_ttl_ms, 600000);
    assert_int_equal(c->negative_cache_ttl_ms, 1500);
    assert_int_equal(c->cache_entries, 500);

    assert_int_equal(c->n_ldap_uri, 3);
    assert_string_equal(c->ldap_uri[0], "ldaps://dc1.corp.example.test");
    assert_string_equal(c->ldap_uri[1], "ldap://127.0.0.1:3389");
    assert_string_equal(c->ldap_uri[2], "ldaps://[::1]");
    assert_string_equal(c->base_dn, "DC=corp,DC=example,DC=test");
    assert_string_equal(c->bind_dn, "svc-seg@corp.example.test");
    assert_string_equal(c->bind_password_file, fx->dummy);
    assert_string_equal(c->ldap_ca_file, fx->dummy);
    assert_int_equal(c->ldap_timeout_ms, 2000);

    assert_string_equal(c->backend_url_text, "https://eas.corp.example.test:8443/");
    assert_true(c->backend.https);
    assert_string_equal(c->backend.host, "eas.corp.example.test");
    assert_string_equal(c->backend.port, "8443");
    assert_string_equal(c->backend.host_header, "eas.corp.example.test:8443");
    assert_string_equal(c->backend_ca_file, fx->dummy);
    assert_int_equal(c->backend_connect_timeout_ms, 3000);
    assert_int_equal(c->backend_read_timeout_ms, 3600000);
    assert_int_equal(c->keepalive_connections, 0);

    assert_int_equal(c->upload_read_ahead_size, 100ull * 1024 * 1024);

    assert_int_equal(c->n_locations, 1);
    assert_string_equal(c->locations[0].prefix, "/Microsoft-Server-ActiveSync");
    assert_int_equal(c->locations[0].prefix_len, strlen("/Microsoft-Server-ActiveSync"));
    assert_int_equal(c->locations[0].client_certificate, CERT_REQUIRE);
    assert_false(c->locations[0].mapping);
    assert_int_equal(c->locations[0].line, 59);
    conf_free(c);
}

static void test_defaults(void **state)
{
    char err[4096], path[64];
    struct conf *c = NULL;
    const struct sockaddr_in *sin;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);

    if (load_text(state, BASE, &c, err, sizeof(err), path, sizeof(path)) != 0)
        fail_msg("minimal config refused: %s", err);
    assert_int_equal(c->n_listen, 1);
    assert_string_equal(c->listen[0].text, "0.0.0.0:443");
    sin = (const struct sockaddr_in *)&c->listen[0].addr;
    assert_int_equal(sin->sin_family, AF_INET);
    assert_int_equal(ntohs(sin->sin_port), 443);
    assert_int_equal(sin->sin_addr.s_addr, htonl(INADDR_ANY));
    /* workers = 0 is resolved to the number of cores */
    assert_int_equal(c->workers, cores < 1 ? 1 : cores);
    assert_null(c->user);
    assert_string_equal(c->access_log, "stderr");
    assert_int_equal(c->log_level, CM_LOG_INFO);
    assert_false(c->detailed_errors);
    assert_int_equal(c->max_request_head, 32 * 1024);
    assert_int_equal(c->header_timeout_ms, 30000);
    assert_int_equal(c->keepalive_timeout_ms, 65 * 60 * 1000);
    assert_int_equal(c->min_protocol, 0x0303);
    assert_string_equal(c->ciphers, CONF_TLS_CIPHERS);
    assert_string_equal(c->ciphersuites, CONF_TLS_CIPHERSUITES);
    assert_string_equal(c->groups, CONF_TLS_GROUPS);
    /* no CBC and no key exchange without forward secrecy by default */
    assert_null(strstr(c->ciphers, "-SHA:"));
    assert_null(strstr(c->ciphers, ":DHE-"));
    assert_int_not_equal(strncmp(c->ciphers, "DHE-", 4), 0);
    assert_int_equal(c->cert_mode, CERT_REQUIRE);
    assert_null(c->trusted_issuers);
    assert_null(c->crl_file);
    assert_int_equal(c->verify_depth, 4);
    assert_true(c->require_client_auth_eku);
    assert_false(c->negotiate_at_handshake);
    assert_false(c->has_mapping_section);
    assert_false(c->has_ldap_section);
    assert_int_equal(c->map_source, MAP_SOURCE_LDAP);
    assert_int_equal(c->n_methods, 3);
    assert_int_equal(c->methods[0], METHOD_SID);
    assert_int_equal(c->methods[1], METHOD_ALTSECID);
    assert_int_equal(c->methods[2], METHOD_UPN);
    assert_int_equal(c->enforcement, ENFORCE_FULL);
    assert_int_equal(c->cache_ttl_ms, 300000);
    assert_int_equal(c->negative_cache_ttl_ms, 30000);
    assert_int_equal(c->cache_entries, 100000);
    assert_int_equal(c->n_ldap_uri, 0);
    assert_null(c->base_dn);
    assert_int_equal(c->ldap_timeout_ms, 5000);
    assert_false(c->backend.https);
    assert_string_equal(c->backend.host, "127.0.0.1");
    assert_string_equal(c->backend.port, "8080");
    assert_null(c->backend_ca_file);
    assert_int_equal(c->backend_connect_timeout_ms, 5000);
    assert_int_equal(c->n_backends, 1);
    assert_int_equal(c->backend_fail_timeout_ms, 10000);
    assert_null(c->backend_health_check);
    assert_int_equal(c->backend_health_interval_ms, 10000);
    assert_int_equal(c->backend_health_timeout_ms, 5000);
    assert_int_equal(c->backend_read_timeout_ms, 65 * 60 * 1000);
    assert_int_equal(c->keepalive_connections, 64);
    assert_int_equal(c->upload_read_ahead_size, 48 * 1024);
    assert_int_equal(c->n_locations, 0);
    conf_free(c);
}

/* Sections come in any order: a location's default is the global mode as
 * finally set, even when [client_certificate] comes after it. */
static void test_location_default_resolved_late(void **state)
{
    static const char text[] = "[location /owa]\n"
                               "mapping = off\n"
                               "[location /Microsoft-Server-ActiveSync]\n"
                               "[location /public]\n"
                               "client_certificate = ignore\n"
                               "[tls]\n"
                               "certificate = @F@\n"
                               "private_key = @F@\n"
                               "[backend]\n"
                               "url = http://[::1]\n"
                               "[client_certificate]\n"
                               "mode = accept\n"
                               "trust_anchors = @F@\n";
    char err[4096], path[64];
    struct conf *c = NULL;

    if (load_text(state, text, &c, err, sizeof(err), path, sizeof(path)) != 0)
        fail_msg("refused: %s", err);
    assert_int_equal(c->n_locations, 3);
    assert_string_equal(c->locations[0].prefix, "/owa");
    assert_int_equal(c->locations[0].client_certificate, CERT_ACCEPT);
    assert_false(c->locations[0].mapping);
    assert_int_equal(c->locations[0].line, 1);
    assert_int_equal(c->locations[1].client_certificate, CERT_ACCEPT);
    assert_true(c->locations[1].mapping);
    assert_int_equal(c->locations[1].line, 3);
    assert_int_equal(c->locations[2].client_certificate, CERT_IGNORE);
    assert_string_equal(c->backend.host, "::1");
    assert_string_equal(c->backend.port, "80");
    assert_string_equal(c->backend.host_header, "[::1]");
    conf_free(c);
}

static void test_location_for(void **state)
{
    static const char text[] = BASE "[location /]\n"
                                    "client_certificate = ignore\n"
                                    "[location /Microsoft-Server-ActiveSync]\n"
                                    "client_certificate = require\n"
                                    "[location /Microsoft-Server-ActiveSync/Proxy]\n"
                                    "client_certificate = accept\n"
                                    "[location /owa]\n";
    char err[4096], path[64];
    struct conf *c = NULL;
    const struct conf_location *l;
    const char *p;

    if (load_text(state, text, &c, err, sizeof(err), path, sizeof(path)) != 0)
        fail_msg("refused: %s", err);
    p = "/Microsoft-Server-ActiveSync?Cmd=Ping";
    l = conf_location_for(c, p, strlen(p));
    assert_non_null(l);
    assert_string_equal(l->prefix, "/Microsoft-Server-ActiveSync");
    p = "/Microsoft-Server-ActiveSync/Proxy/x";
    l = conf_location_for(c, p, strlen(p));
    assert_string_equal(l->prefix, "/Microsoft-Server-ActiveSync/Proxy");
    /* IIS matches paths case-insensitively, so must the policy */
    p = "/microsoft-server-activesync";
    l = conf_location_for(c, p, strlen(p));
    assert_string_equal(l->prefix, "/Microsoft-Server-ActiveSync");
    assert_int_equal(l->client_certificate, CERT_REQUIRE);
    /* the length bounds the match, not the NUL */
    p = "/Microsoft-Server-ActiveSync";
    l = conf_location_for(c, p, 10);
    assert_string_equal(l->prefix, "/");
    p = "/owa/";
    l = conf_location_for(c, p, strlen(p));
    assert_string_equal(l->prefix, "/owa");
    assert_int_equal(l->client_certificate, CERT_REQUIRE); /* inherited default */
    p = "*";
    assert_null(conf_location_for(c, p, 1));
    assert_null(conf_location_for(c, "", 0));
    assert_null(conf_location_for(NULL, "/", 1));
    conf_free(c);

    /* without locations nothing matches */
    if (load_text(state, BASE, &c, err, sizeof(err), path, sizeof(path)) != 0)
        fail_msg("refused: %s", err);
    assert_null(conf_location_for(c, "/", 1));
    conf_free(c);
}

/* Syntax inih allows that must not change meaning: indentation (inih would
 * merge an indented line into the previous value), CRLF, BOM, inline comments,
 * "key: value", a location path longer than inih's section buffer. */
static void test_syntax_variants(void **state)
{
    static const char text[] =
        "\xEF\xBB\xBF; BOM first\r\n"
        "[server]\r\n"
        "    listen = 127.0.0.1:8443\r\n"
        "    workers = 2   ; inline comment\r\n"
        "detailed_errors: yes\r\n"
        "  [tls]  ; indented section\r\n"
        "certificate = @F@\n"
        "private_key = @F@\n"
        "[backend]\n"
        "url = HTTP://backend.example.test\n"
        "[client_certificate]\n"
        "mode = ignore\n"
        "[location /a/very/long/path/that/is/longer/than/fifty/characters/for/sure/yes]\n"
        "mapping = off\n";
    char err[4096], path[64];
    struct conf *c = NULL;

    if (load_text(state, text, &c, err, sizeof(err), path, sizeof(path)) != 0)
        fail_msg("refused: %s", err);
    assert_int_equal(c->n_listen, 1);
    assert_string_equal(c->listen[0].text, "127.0.0.1:8443");
    assert_int_equal(c->workers, 2);
    assert_true(c->detailed_errors);
    assert_false(c->backend.https);
    assert_string_equal(c->backend.port, "80");
    assert_string_equal(c->backend.host_header, "backend.example.test");
    assert_int_equal(c->cert_mode, CERT_IGNORE);
    assert_null(c->trust_anchors);
    assert_string_equal(c->locations[0].prefix,
                        "/a/very/long/path/that/is/longer/than/fifty/characters/for/sure/yes");
    assert_int_equal(c->locations[0].client_certificate, CERT_IGNORE);
    assert_false(c->locations[0].mapping);
    conf_free(c);
}

/* Several [backend] servers: a list on one line and the key repeated, each
 * with the line it came from; fail_timeout; the delegation SPN default only
 * when every server is the same host. */
static void test_several_backends(void **state)
{
    static const char text[] =
        "[tls]\n"
        "certificate = @F@\n"
        "private_key = @F@\n"
        "[backend]\n"
        "url = http://eas1.example.test http://[::1]:8080\n"
        "fail_timeout = 3s\n"
        "health_check = HEAD\t/probe?x=1\n"
        "url = http://127.0.0.1:81/\n"
        "[client_certificate]\n"
        "trust_anchors = @F@\n";
    static const char deleg[] =
        "[tls]\n"
        "certificate = @F@\n"
        "private_key = @F@\n"
        "[mapping]\n"
        "source = ldif\n"
        "ldif_file = @F@\n"
        "[delegation]\n"
        "mode = kerberos\n"
        "principal = svc@EXAMPLE.TEST\n"
        "keytab = @F@\n"
        "[backend]\n"
        "url = https://eas1.example.test https://eas2.example.test\n"
        "[client_certificate]\n"
        "trust_anchors = @F@\n";
    static const char deleg_same_host[] =
        "[tls]\n"
        "certificate = @F@\n"
        "private_key = @F@\n"
        "[mapping]\n"
        "source = ldif\n"
        "ldif_file = @F@\n"
        "[delegation]\n"
        "mode = kerberos\n"
        "principal = svc@EXAMPLE.TEST\n"
        "keytab = @F@\n"
        "[backend]\n"
        "url = https://eas.example.test:443 https://EAS.example.test:8443\n"
        "[client_certificate]\n"
        "trust_anchors = @F@\n";
    char err[4096], path[64];
    struct conf *c = NULL;

    if (load_text(state, text, &c, err, sizeof(err), path, sizeof(path)) != 0)
        fail_msg("refused: %s", err);
    assert_int_equal(c->n_backends, 3);
    assert_string_equal(c->backends[0].host, "eas1.example.test");
    assert_string_equal(c->backends[0].port, "80");
    assert_int_equal(c->backends[0].line, 5);
    assert_string_equal(c->backends[1].host, "::1");
    assert_string_equal(c->backends[1].host_header, "[::1]:8080");
    assert_int_equal(c->backends[1].line, 5);
    assert_string_equal(c->backends[2].host_header, "127.0.0.1:81");
    assert_int_equal(c->backends[2].line, 8);
    assert_string_equal(c->backend_health_check, "HEAD /probe?x=1");
    assert_string_equal(c->backend.host, "eas1.example.test"); /* the first */
    assert_string_equal(c->backend_url_text, "http://eas1.example.test");
    assert_int_equal(c->backend_fail_timeout_ms, 3000);
    conf_free(c);

    c = NULL;
    assert_int_equal(load_text(state, deleg, &c, err, sizeof(err), path, sizeof(path)), -1);
    assert_non_null(strstr(err, "target_spn is required"));
    assert_non_null(strstr(err, "eas2.example.test (line 12)"));

    c = NULL;
    if (load_text(state, deleg_same_host, &c, err, sizeof(err), path, sizeof(path)) != 0)
        fail_msg("refused: %s", err);
    assert_string_equal(c->deleg_target_spn, "HTTP/eas.example.test");
    conf_free(c);
}

static void test_mapping_ldif(void **state)
{
    static const char text[] = BASE "[mapping]\n"
                                    "source = ldif\n"
                                    "ldif_file = @F@\n"
                                    "methods = altsecid\n";
    char err[4096], path[64];
    struct conf *c = NULL;

    if (load_text(state, text, &c, err, sizeof(err), path, sizeof(path)) != 0)
        fail_msg("refused: %s", err);
    assert_true(c->has_mapping_section);
    assert_false(c->has_ldap_section);
    assert_int_equal(c->map_source, MAP_SOURCE_LDIF);
    assert_int_equal(c->n_methods, 1);
    assert_int_equal(c->methods[0], METHOD_ALTSECID);
    conf_free(c);
}

/* ---- errors ---- */

struct bad_case {
    const char *text;
    int line; /* 0: "FILE: reason" without a line */
    const char *phrase;
};

#define L(n) (BASE_LINES + (n))

static const struct bad_case bad_cases[] = {
    /* syntax */
    {BASE "[server\n", L(1), "syntax error"},
    {BASE "[server]\njust words\n", L(2), "syntax error"},
    {BASE "[server] junk\n", L(1), "unexpected text"},
    {"workers = 4\n" BASE, 1, "outside of any section"},
    {BASE "[server]\nlisten = 127.0.0.1:1\n\n; " /* long line */
          "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
          "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
          "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n",
     L(4), "longer than"},
    /* sections and keys */
    {BASE "[servr]\n", L(1), "unknown section \"servr\" (expected server, tls"},
    {BASE "[server]\nworkerz = 4\n", L(2), "[server] unknown key \"workerz\""},
    {BASE "[location /x]\nmode = require\n", L(2), "[location /x] unknown key \"mode\""},
    {BASE "[server]\nworkers = 4\n\n[server]\nworkers = 5\n", L(5),
     "workers: duplicate key (first set at line 9)"},
    {BASE "[location /x]\nmapping = on\nmapping = off\n", L(3), "duplicate key"},
    {BASE "[location]\n", L(1), "needs a path"},
    {BASE "[location x]\n", L(1), "must start with \"/\""},
    {BASE "[location /a b]\n", L(1), "blanks"},
    {BASE "[location /a]\n[location /A]\n", L(2), "duplicate location (first at line 8)"},
    /* values */
    {BASE "[server]\nworkers = abc\n", L(2),
     "[server] workers: \"abc\" is not a number (expected 0..1024)"},
    {BASE "[server]\nworkers = 1025\n", L(2), "\"1025\" is out of range (expected 0..1024)"},
    {BASE "[server]\nworkers = -1\n", L(2), "is not a number"},
    {BASE "[server]\nworkers =\n", L(2), "\"\" is not a number"},
    {BASE "[server]\nmax_request_head = 512\n", L(2), "out of range (expected 1K..1M)"},
    {BASE "[server]\nmax_request_head = 2M\n", L(2), "out of range"},
    {BASE "[server]\nmax_request_head = 99999999999999999999K\n", L(2), "too large"},
    {BASE "[server]\nheader_timeout = 5d\n", L(2), "unknown unit"},
    {BASE "[server]\nheader_timeout = 2h\n", L(2), "out of range (expected 1ms..1h)"},
    {BASE "[server]\ndetailed_errors = maybe\n", L(2), "not a boolean"},
    {BASE "[server]\nlog_level = verbose\n", L(2), "is not one of error, warn, info, debug"},
    {BASE "[server]\nlisten = 127.0.0.1\n", L(2), "not HOST:PORT"},
    {BASE "[server]\nlisten = ::1:443\n", L(2), "brackets"},
    {BASE "[server]\nlisten = 127.0.0.1:0\n", L(2), "port must be"},
    {BASE "[server]\nlisten = :443\n", L(2), "no host"},
    {BASE "[server]\nlisten = [::1:443\n", L(2), "not HOST:PORT"},
    {BASE "[server]\nlisten = 127.0.0.1:8443\nlisten = 127.0.0.1:8443\n", L(3), "same address"},
    /* no test resolves a name: that would leave loopback */
    {BASE "[server]\nlisten = [zz::1]:443\n", L(2), "cannot resolve"},
    {BASE "[server]\nlisten = bad!host:443\n", L(2), "not a valid host name"},
    {BASE "[server]\nuser = no-such-user-certmapd\n", L(2), "no such user"},
    {BASE "[server]\naccess_log =\n", L(2), "empty value"},
    {BASE "[tls]\nmin_protocol = TLSv1.1\n", L(2), "not one of TLSv1.2, TLSv1.3"},
    {BASE "[tls]\nciphers = NOPE\n", L(2),
     "[tls] ciphers: \"NOPE\" matches no cipher this OpenSSL knows"},
    /* OpenSSL itself would take this list and drop the misspelt entry */
    {BASE "[tls]\nciphers = ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA348\n", L(2),
     "\"ECDHE-ECDSA-AES256-GCM-SHA348\" matches no cipher"},
    {BASE "[tls]\nciphers = TLS_AES_128_GCM_SHA256\n", L(2),
     "\"TLS_AES_128_GCM_SHA256\" is a TLS 1.3 suite: those go in ciphersuites"},
    {BASE "[tls]\nciphers = AESGCM:!AESGCM\n", L(2), "leaves no TLS 1.2 cipher"},
    {BASE "[tls]\nciphers = HIGH:@SECLEVEL=high\n", L(2), "refused by OpenSSL"},
    {BASE "[tls]\nciphers =\n", L(2), "[tls] ciphers: an empty list is not allowed"},
    {BASE "[tls]\n\nciphersuites = TLS_AES_128_GCM_SHA256:TLS_AES_512_GCM_SHA384\n", L(3),
     "[tls] ciphersuites: \"TLS_AES_512_GCM_SHA384\" is not a TLS 1.3 suite"},
    {BASE "[tls]\nciphersuites = ECDHE-ECDSA-AES128-GCM-SHA256\n", L(2),
     "TLS 1.2 ciphers go in ciphers"},
    {BASE "[tls]\nciphersuites = TLS_AES_128_GCM_SHA256:\n", L(2), "empty entry"},
    {BASE "[tls]\nciphersuites =\n", L(2), "empty list"},
    {BASE "[tls]\ngroups = X25519:P-999\n", L(2),
     "[tls] groups: \"P-999\" is not a group this OpenSSL knows"},
    {BASE "[tls]\ngroups = P-256:X25519:prime256v1\n", L(2), "names a group twice"},
    {BASE "[tls]\ngroups = X25519::P-256\n", L(2), "empty entry"},
    {BASE "[tls]\ngroups =\n", L(2), "empty list"},
    {BASE "[client_certificate]\nverify_depth = 17\n", L(2), "out of range (expected 1..16)"},
    {BASE "[client_certificate]\ncrl_file = /nonexistent/crl.pem\n", L(2),
     "[client_certificate] crl_file: cannot read \"/nonexistent/crl.pem\": No such file or "
     "directory"},
    {BASE "[client_certificate]\ncrl_file = /tmp\n", L(2), "not a regular file"},
    {BASE "[client_certificate]\ncrl_file = /tmp/\x1b[31mred\n", L(2), "\\x1b[31mred"},
    {BASE "[mapping]\nmethods = sid, sid\n", L(2), "twice"},
    {BASE "[mapping]\nmethods = sid, kerberos\n", L(2), "unknown method \"kerberos\""},
    {BASE "[mapping]\nmethods = sid,,upn\n", L(2), "empty entry"},
    {BASE "[mapping]\nmethods =\n", L(2), "empty entry"},
    {BASE "[mapping]\ncache_entries = 0\n", L(2), "out of range (expected 1..100000000)"},
    {BASE "[mapping]\nenforcement = strict\n", L(2), "not one of full, compatibility, disabled"},
    {BASE "[ldap]\nuri = http://dc1\n", L(2), "not an ldap://"},
    {BASE "[ldap]\nuri = ldap://dc1/DC=x?cn\n", L(2), "not an ldap://"},
    {BASE "[ldap]\nuri = ldap://dc1:99999\n", L(2), "not an ldap://"},
    {BASE "[ldap]\nuri = ldap://a ldap://b ldap://c ldap://d ldap://e\n"
          "uri = ldap://f ldap://g ldap://h ldap://i\n",
     L(3), "more than 8 URIs"},
    {BASE "[ldap]\nbase_dn = not a dn\n", L(2), "not a distinguished name"},
    {"[backend]\nurl = ftp://x\n", 2, "must start with http:// or https://"},
    {"[backend]\nurl = http://x/owa\n", 2, "without path"},
    {"[backend]\nurl = http://x?a=b\n", 2, "without path"},
    {"[backend]\nurl = http://u@x\n", 2, "user information"},
    {"[backend]\nurl = http://x:0\n", 2, "port must be"},
    {"[backend]\nurl = http://x:\n", 2, "port must be"},
    {"[backend]\nurl = http://\n", 2, "not a valid URL"},
    {"[backend]\nurl = http://[zz]:80\n", 2, "not a valid URL"},
    {"[backend]\nurl = http://x y\n", 2, "must start with http"},
    {"[backend]\nurl = http://a https://b\n", 2, "the same scheme"},
    {"[backend]\nurl = https://a\n\nurl = http://b\n", 4, "the same scheme as https://a (line 2)"},
    {"[backend]\nurl = http://a:80 http://A\n", 2, "the same server is already listed"},
    {"[backend]\nurl = http://a1 http://a2 http://a3 http://a4 http://a5 http://a6 http://a7\n"
     "url = http://a8 http://a9\n", 3, "more than 8 backend servers"},
    {"[backend]\nurl = http://ok\nurl = http://x:0\n", 3, "port must be"},
    {BASE "[backend]\nhealth_check = GET\n", L(2), "expected GET /PATH"},
    {BASE "[backend]\nhealth_check = GET x\n", L(2), "must start with /"},
    {BASE "[backend]\nhealth_check = GET /\x01\n", L(2), "visible ASCII"},
    {BASE "[backend]\nhealth_interval = 10ms\n", L(2), "health_interval"},
    {BASE "[buffering]\nupload_read_ahead_size = 2G\n", L(2), "out of range (expected 0..1G)"},
    /* contradictions, found once the whole file is read */
    {"[tls]\nprivate_key = @F@\n[backend]\nurl = http://x\n[client_certificate]\nmode = "
     "ignore\n",
     1, "[tls] certificate is required"},
    {"[tls]\ncertificate = @F@\n[backend]\nurl = http://x\n[client_certificate]\nmode = "
     "ignore\n",
     1, "[tls] private_key is required"},
    {"[tls]\ncertificate = @F@\nprivate_key = @F@\n[client_certificate]\nmode = ignore\n", 0,
     "[backend] url is required"},
    {"[tls]\ncertificate = @F@\nprivate_key = @F@\n[backend]\nurl = http://x\n", 0,
     "mode = require (the default) needs trust_anchors"},
    {"[tls]\ncertificate = @F@\nprivate_key = @F@\n[backend]\nurl = http://x\n"
     "[client_certificate]\n\nmode = accept\n",
     8, "mode = accept needs trust_anchors"},
    {"[tls]\ncertificate = @F@\nprivate_key = @F@\n[backend]\nurl = http://x\n"
     "[client_certificate]\nmode = ignore\n[location /eas]\nclient_certificate = require\n",
     9, "[location /eas] client_certificate = require needs [client_certificate] trust_anchors"},
    {"[location /eas]\n[tls]\ncertificate = @F@\nprivate_key = @F@\n[backend]\nurl = http://x\n"
     "[client_certificate]\nmode = accept\n",
     1, "[location /eas] client_certificate = accept needs"},
    {BASE "[mapping]\n", L(1), "source = ldap needs [ldap] uri"},
    {BASE "[mapping]\nsource = ldap\n[ldap]\nuri = ldaps://dc1\n", L(2),
     "source = ldap needs [ldap] base_dn"},
    {BASE "[mapping]\n\nsource = ldif\n", L(3), "source = ldif needs ldif_file"},
    {BASE "[mapping]\nsource = ldap\n[ldap]\nuri = ldaps://dc1\nbase_dn = DC=corp\n", L(2),
     "source = ldap needs [ldap] bind_dn and bind_password_file"},
    {BASE "[ldap]\nbind_dn = svc@corp\n", L(2), "bind_dn needs bind_password_file"},
    {BASE "[ldap]\n\nbind_password_file = @F@\n", L(3), "bind_password_file needs bind_dn"},
};

static void check_bad(void **state, const char *text, size_t textlen, int line, const char *phrase)
{
    char err[4096], path[64], prefix[128];
    struct conf *c = (struct conf *)&err; /* must be reset to NULL */
    int rc;

    assert_int_equal(write_conf(*state, text, textlen, path, sizeof(path)), 0);
    err[0] = '\0';
    rc = conf_load(path, &c, err, sizeof(err));
    unlink(path);
    if (rc != -1 || c != NULL)
        fail_msg("accepted a bad config (want \"%s\"):\n%s", phrase, text);
    if (line > 0)
        snprintf(prefix, sizeof(prefix), "%s:%d: ", path, line);
    else
        snprintf(prefix, sizeof(prefix), "%s: ", path);
    if (strncmp(err, prefix, strlen(prefix)) != 0 || strstr(err, phrase) == NULL)
        fail_msg("error \"%s\"\nwant prefix \"%s\" and \"%s\"", err, prefix, phrase);
}

static void test_errors(void **state)
{
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const struct bad_case *b = &bad_cases[i];
        check_bad(state, b->text, strlen(b->text), b->line, b->phrase);
    }
}

/* conf_secret_read: what -t validates and start-up reads is one function. */
static void test_secret_file(void **state)
{
    static const struct {
        const char *content;
        size_t len;
        const char *want; /* NULL: refused */
        const char *why;
    } cases[] = {
        {"Passw0rd!\n", 10, "Passw0rd!", NULL},
        {"Passw0rd!\r\n", 11, "Passw0rd!", NULL},
        {"Passw0rd!", 9, "Passw0rd!", NULL},
        {" spaced \n\n", 10, " spaced \n", NULL}, /* one newline only; spaces are the secret's */
        {"", 0, NULL, "is empty"},
        {"\n", 1, NULL, "is empty"},
        {"pa\0ss\n", 6, NULL, "NUL byte"},
    };
    char path[] = "/tmp/certmapd-secret-XXXXXX", err[512];
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, cases[i].content, cases[i].len), (ssize_t)cases[i].len);
        close(fd);
        size_t len = 0;
        err[0] = '\0';
        char *got = conf_secret_read(path, &len, err, sizeof(err));
        unlink(path);
        memcpy(path + strlen(path) - 6, "XXXXXX", 6);
        if (cases[i].want == NULL) {
            assert_null(got);
            assert_non_null(strstr(err, cases[i].why));
            continue;
        }
        assert_non_null(got);
        assert_int_equal(len, strlen(cases[i].want));
        assert_memory_equal(got, cases[i].want, len);
        conf_secret_free(got, len);
    }
    char big[5000];
    memset(big, 'x', sizeof(big));
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, big, sizeof(big)), (ssize_t)sizeof(big));
    close(fd);
    size_t len;
    assert_null(conf_secret_read(path, &len, err, sizeof(err)));
    assert_non_null(strstr(err, "is longer than 4096 bytes"));
    unlink(path);
    assert_null(conf_secret_read("/nonexistent/secret", &len, err, sizeof(err)));
    assert_non_null(strstr(err, "No such file or directory"));
}

/* conf_where: the line of a key that was set, the file alone for one that was not. */
static void test_where(void **state)
{
    static const char text[] = "[tls]\ncertificate = @F@\nprivate_key = @F@\n[backend]\n"
                               "url = http://x\n[client_certificate]\nmode = ignore\n";
    char path[64], err[4096], want[128], buf[256];
    struct conf *c = NULL;

    assert_int_equal(write_conf(*state, text, sizeof(text) - 1, path, sizeof(path)), 0);
    assert_int_equal(conf_load(path, &c, err, sizeof(err)), 0);
    unlink(path);
    snprintf(want, sizeof(want), "%s:3: [tls] private_key", path);
    assert_string_equal(conf_where(c, "tls", "private_key", buf, sizeof(buf)), want);
    snprintf(want, sizeof(want), "%s:5: [backend] url", path);
    assert_string_equal(conf_where(c, "backend", "url", buf, sizeof(buf)), want);
    snprintf(want, sizeof(want), "%s: [backend] ca_file", path);
    assert_string_equal(conf_where(c, "backend", "ca_file", buf, sizeof(buf)), want);
    conf_free(c);
}

static void test_error_nul_byte(void **state)
{
    static const char text[] = BASE "[server]\nuser = ro\0ot\n";

    check_bad(state, text, sizeof(text) - 1, L(2), "NUL byte");
}

static void test_error_too_many_locations(void **state)
{
    char text[8192];
    size_t used = (size_t)snprintf(text, sizeof(text), "%s", BASE);

    for (int i = 0; i <= CONF_MAX_LOCATIONS; i++)
        used += (size_t)snprintf(text + used, sizeof(text) - used, "[location /l%d]\n", i);
    check_bad(state, text, used, L(CONF_MAX_LOCATIONS + 1), "more than 64 [location]");
}

static void test_error_too_many_listen(void **state)
{
    char text[8192];
    size_t used = (size_t)snprintf(text, sizeof(text), "%s[server]\n", BASE);

    for (int i = 0; i <= CONF_MAX_LISTEN; i++)
        used +=
            (size_t)snprintf(text + used, sizeof(text) - used, "listen = 127.0.0.1:%d\n", 9000 + i);
    check_bad(state, text, used, L(CONF_MAX_LISTEN + 2), "more than 16 listen");
}

static void test_error_unopenable(void **state)
{
    char err[4096];
    struct conf *c = NULL;

    (void)state;
    assert_int_equal(conf_load("/nonexistent/certmapd.conf", &c, err, sizeof(err)), -1);
    assert_null(c);
    assert_string_equal(err, "/nonexistent/certmapd.conf: cannot open: No such file or directory");
    /* a directory opens but cannot be read as a file */
    assert_int_equal(conf_load("/tmp", &c, err, sizeof(err)), -1);
    assert_null(c);
    assert_non_null(strstr(err, "/tmp"));
}

/* A small error buffer truncates the message, never overflows. */
static void test_error_small_buffer(void **state)
{
    char err[16];
    struct conf *c = NULL;

    (void)state;
    memset(err, 'x', sizeof(err));
    assert_int_equal(conf_load("/nonexistent/certmapd.conf", &c, err, 8), -1);
    assert_int_equal(strlen(err), 7);
    assert_int_equal(err[8], 'x');
}

/* ---- the key table ---- */

static char *slurp(const char *path)
{
    FILE *fp = fopen(path, "r");
    char *buf = NULL;
    long n;

    if (fp == NULL)
        return NULL;
    if (fseek(fp, 0, SEEK_END) == 0 && (n = ftell(fp)) >= 0 && fseek(fp, 0, SEEK_SET) == 0) {
        buf = calloc(1, (size_t)n + 1);
        if (buf != NULL && fread(buf, 1, (size_t)n, fp) != (size_t)n) {
            free(buf);
            buf = NULL;
        }
    }
    fclose(fp);
    return buf;
}

/* Every key of the table is in --help-config with its IIS note, in the example
 * configuration, and in the documentation. */
static void test_keys_documented(void **state)
{
    const char *src = getenv("CERTMAPD_SOURCE_DIR");
    char path[512], line[1024];
    char *example, *doc;
    FILE *fp = tmpfile();
    int keys = 0;

    (void)state;
    assert_non_null(fp);
    conf_print_keys(fp);
    rewind(fp);
    if (src == NULL)
        src = ".";
    snprintf(path, sizeof(path), "%s/conf/certmapd.example.conf", src);
    example = slurp(path);
    snprintf(path, sizeof(path), "%s/README.md", src);
    doc = slurp(path);
    assert_non_null(example);
    assert_non_null(doc);
    while (fgets(line, sizeof(line), fp) != NULL) {
        char want[256], sec[64], key[64];
        const char *close = strchr(line, ']');

        if (line[0] != '[')
            continue;
        /* "[server] listen = ..." and "[location PATH] mapping = ..." */
        assert_non_null(close);
        assert_int_equal(sscanf(line + 1, "%63[a-z_]", sec), 1);
        assert_int_equal(sscanf(close + 1, " %63[a-z0-9_]", key), 1);
        snprintf(want, sizeof(want), "\n%s =", key);
        if (strstr(example, want) == NULL) {
            snprintf(want, sizeof(want), "\n; %s =", key);
            if (strstr(example, want) == NULL)
                fail_msg("key %s/%s missing from certmapd.example.conf", sec, key);
        }
        snprintf(want, sizeof(want), "| `%s` |", key);
        if (strstr(doc, want) == NULL)
            fail_msg("key %s/%s missing from README.md's configuration reference", sec, key);
        assert_true(fgets(line, sizeof(line), fp) != NULL); /* description */
        assert_true(fgets(line, sizeof(line), fp) != NULL);
        assert_non_null(strstr(line, "IIS: "));
        keys++;
    }
    assert_true(keys >= 40);
    fclose(fp);
    free(example);
    free(doc);
}

/* conf_section_same: what a reload compares to keep the identity cache. */
static void test_section_same(void **state)
{
    char err[4096], path[64];
    struct conf *a = NULL, *b = NULL, *c = NULL, *d = NULL;
    if (load_text(state, BASE "[server]\nworkers = 2\nheader_timeout = 5s\n", &a, err,
                  sizeof(err), path, sizeof(path)) != 0 ||
        load_text(state, BASE "[server]\nworkers = 2\nheader_timeout = 5s\n", &b, err,
                  sizeof(err), path, sizeof(path)) != 0 ||
        load_text(state, BASE "[server]\nworkers = 2\nheader_timeout = 6s\n", &c, err,
                  sizeof(err), path, sizeof(path)) != 0 ||
        load_text(state, BASE, &d, err, sizeof(err), path, sizeof(path)) != 0)
        fail_msg("refused: %s", err);
    assert_true(conf_section_same(a, b, "server"));
    assert_false(conf_section_same(a, c, "server"));
    assert_false(conf_section_same(a, d, "server"));
    assert_true(conf_section_same(a, c, "backend"));
    assert_true(conf_section_same(a, d, "mapping")); /* absent from both */
    assert_false(conf_section_same(a, b, "no such section"));
    conf_free(a);
    conf_free(b);
    conf_free(c);
    conf_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_parse_duration),
        cmocka_unit_test(test_full_config),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_location_default_resolved_late),
        cmocka_unit_test(test_location_for),
        cmocka_unit_test(test_syntax_variants),
        cmocka_unit_test(test_several_backends),
        cmocka_unit_test(test_mapping_ldif),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_error_nul_byte),
        cmocka_unit_test(test_secret_file),
        cmocka_unit_test(test_where),
        cmocka_unit_test(test_error_too_many_locations),
        cmocka_unit_test(test_error_too_many_listen),
        cmocka_unit_test(test_error_unopenable),
        cmocka_unit_test(test_error_small_buffer),
        cmocka_unit_test(test_keys_documented),
        cmocka_unit_test(test_section_same),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
