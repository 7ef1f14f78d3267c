/* dir_source_open: the one factory for the configured mapping source, and
 * map_source_close on what it returns. No directory is needed: the LDAP
 * client is opened towards a closed port and closed again. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <event2/event.h>

#include "ldap/dir.h"

static char *data_path(const char *name)
{
    static char buf[4096];
    const char *src = getenv("CERTMAPD_SOURCE_DIR");
    assert_non_null(src);
    snprintf(buf, sizeof buf, "%s/tests/data/%s", src, name);
    return buf;
}

static struct conf *ldif_conf(const char *path)
{
    struct conf *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->has_mapping_section = true;
    c->map_source = MAP_SOURCE_LDIF;
    c->ldif_file = strdup(path);
    c->netbios_domain = strdup("CORP");
    return c;
}

static struct conf *ldap_conf(const char *secret)
{
    struct conf *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->has_mapping_section = true;
    c->map_source = MAP_SOURCE_LDAP;
    c->ldap_uri[c->n_ldap_uri++] = strdup("ldap://127.0.0.1:1"); /* nothing listens */
    c->base_dn = strdup("DC=corp,DC=example,DC=test");
    c->bind_dn = strdup("svc-seg@corp.example.test");
    c->bind_password_file = strdup(secret);
    c->ldap_timeout_ms = 1000;
    return c;
}

static void test_ldif(void **state)
{
    struct event_base *base = event_base_new();
    char err[1024];
    struct conf *c = ldif_conf(data_path("ad-users.ldif"));
    struct map_source *s = dir_source_open(c, base, err, sizeof err);
    assert_non_null(s);
    assert_non_null(s->close);
    assert_string_equal(s->netbios(s->ctx), "CORP");
    map_source_close(s);
    conf_free(c);

    c = ldif_conf("/nonexistent/users.ldif");
    err[0] = '\0';
    assert_null(dir_source_open(c, base, err, sizeof err));
    assert_non_null(strstr(err, "/nonexistent/users.ldif: cannot read"));
    conf_free(c);
    map_source_close(NULL);
    event_base_free(base);
}

static void test_ldap(void **state)
{
    struct event_base *base = event_base_new();
    char err[1024], secret[] = "/tmp/test_source.XXXXXX";
    int fd = mkstemp(secret);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "pw\n", 3), 3);
    close(fd);

    struct conf *c = ldap_conf(secret);
    struct map_source *s = dir_source_open(c, base, err, sizeof err);
    assert_non_null(s);
    assert_non_null(s->close);
    assert_null(s->netbios(s->ctx)); /* never connected */
    map_source_close(s);             /* stops the connector thread: no leak, no hang */
    conf_free(c);

    c = ldap_conf("/nonexistent/secret");
    err[0] = '\0';
    assert_null(dir_source_open(c, base, err, sizeof err));
    assert_non_null(strstr(err, "bind_password_file"));
    conf_free(c);

    c = ldap_conf(secret);
    free(c->base_dn);
    c->base_dn = NULL;
    assert_null(dir_source_open(c, base, err, sizeof err));
    assert_non_null(strstr(err, "base_dn"));
    conf_free(c);
    unlink(secret);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ldif),
        cmocka_unit_test(test_ldap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
