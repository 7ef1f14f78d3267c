/* Shared by the mapping unit tests: certificate facts from the test PKI and a
 * hand-made [mapping] configuration. Not a test itself (no test_ prefix). */
#ifndef CM_TEST_MAPPING_HELPERS_H
#define CM_TEST_MAPPING_HELPERS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "conf/conf.h"
#include "mapping/internal.h"
#include "tls/tls.h"

#define ISSUING_ASI "DC=test,DC=example,DC=corp,CN=Corp Issuing CA"
#define SID_ALICE "S-1-5-21-436880987-830612363-2677326092-1102"
#define ACCOUNTS "(&(|(objectClass=user)(objectClass=computer))"

/* tls_facts_from_x509 of the PKI leaf <name>. */
static inline struct cert_facts *pki_facts(const char *name)
{
    const char *dir = getenv("CERTMAPD_TEST_PKI");
    char path[4096];
    struct cert_facts *f = NULL;

    assert_non_null(dir);
    snprintf(path, sizeof(path), "%s/%s.crt", dir, name);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    X509 *x = PEM_read_X509(fp, NULL, NULL, NULL);
    fclose(fp);
    assert_non_null(x);
    assert_int_equal(tls_facts_from_x509(x, &f), R_NONE);
    X509_free(x);
    return f;
}

/* A [mapping] configuration: <methods> in order, METHOD_MAX ends the list. */
static inline void test_conf(struct conf *c, enum map_enforcement e, enum map_method m0,
                             enum map_method m1, enum map_method m2, enum map_method m3)
{
    enum map_method ms[4] = {m0, m1, m2, m3};
    memset(c, 0, sizeof(*c));
    c->enforcement = e;
    for (size_t i = 0; i < 4 && ms[i] != METHOD_MAX; i++)
        c->methods[c->n_methods++] = ms[i];
    c->cache_entries = 100;
    c->cache_ttl_ms = 300000;
    c->negative_cache_ttl_ms = 30000;
}

/* tests/data/<name> in the source tree. */
static inline const char *data_path(const char *name)
{
    static char buf[4096];
    const char *src = getenv("CERTMAPD_SOURCE_DIR");
    snprintf(buf, sizeof(buf), "%s/tests/data/%s", src ? src : ".", name);
    return buf;
}

/* What a map_job_start callback received: how often, and the last result. */
struct done {
    int calls, traces;
    struct map_result r;
};

static inline void on_done(void *arg, const struct map_result *res)
{
    struct done *d = arg;
    d->calls++;
    map_result_purge(&d->r);
    assert_int_equal(map_result_copy(&d->r, res), 0);
}

static inline void on_trace(void *arg, const struct map_lookup *l, bool ok, const struct map_entry *e,
                     size_t n)
{
    struct done *d = arg;
    (void)l;
    (void)ok;
    (void)e;
    (void)n;
    d->traces++;
}

#endif
