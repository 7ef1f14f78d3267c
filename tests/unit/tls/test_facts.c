/* tls_facts_from_x509 against the test PKI (tests/pki/mkpki.sh) and against
 * certificates built here with the OpenSSL API for the LAB.md §4 vectors.
 * Expected digests, key identifiers and dates come from the openssl CLI run on
 * the same files, so they are computed independently of tls/facts.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include <cmocka.h>

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "tests/support/hostile_text.h"
#include "tests/support/testpki.h"
#include "tls/tls.h"

#define PKI_SUBJ_BASE "CN=Corp Issuing CA,DC=corp,DC=example,DC=test"
#define ISSUING_ASI "DC=test,DC=example,DC=corp,CN=Corp Issuing CA"
#define SID_ALICE "S-1-5-21-436880987-830612363-2677326092-1102"

static char *pki_path(const char *name)
{
    static char buf[4096];
    char file[256];
    snprintf(file, sizeof file, "%s.crt", name);
    char *path = testpki_path(buf, sizeof buf, file);
    assert_non_null(path);
    return path;
}

/* NULL when OpenSSL cannot decode the file. */
static X509 *try_load(const char *name)
{
    char file[256];
    snprintf(file, sizeof file, "%s.crt", name);
    assert_int_equal(access(pki_path(name), R_OK), 0); /* it is there: only decoding may fail */
    return testpki_cert(file);
}

static X509 *load(const char *name)
{
    X509 *x = try_load(name);
    assert_non_null(x);
    return x;
}

/* Runs a shell command on the certificate NAME (its path in $CERT); returns
 * its first output line, without the newline. */
static char *cli(const char *cmd, const char *name)
{
    static char out[4096];
    assert_int_equal(setenv("CERT", pki_path(name), 1), 0);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    if (fgets(out, sizeof(out), p) == NULL)
        out[0] = '\0';
    assert_int_equal(pclose(p), 0);
    out[strcspn(out, "\r\n")] = '\0';
    return out;
}

/* "AA:BB:..." after the first '=' or leading spaces, as upper-case hex without colons. */
static char *cli_hex(const char *cmd, const char *name)
{
    char *s = cli(cmd, name);
    char *src = strchr(s, '=') ? strchr(s, '=') + 1 : s;
    char *dst = s;
    for (; *src != '\0'; src++) {
        if (*src == ':' || *src == ' ' || *src == '*' || *src == '-')
            continue;
        *dst++ = (char)(*src >= 'a' && *src <= 'f' ? *src - 'a' + 'A' : *src);
    }
    *dst = '\0';
    return s;
}

static struct cert_facts *facts_ok(X509 *x)
{
    struct cert_facts *f = NULL;
    assert_int_equal(tls_facts_from_x509(x, &f), R_NONE);
    assert_non_null(f);
    return f;
}

/* Digests, key ids and dates of PKI certificate NAME against the openssl CLI. */
static void check_cli_facts(const char *name, const struct cert_facts *f)
{
    assert_string_equal(f->sha256,
                        cli_hex("openssl x509 -in \"$CERT\" -noout -fingerprint -sha256", name));
    assert_string_equal(f->sha1,
                        cli_hex("openssl x509 -in \"$CERT\" -noout -fingerprint -sha1", name));
    /* The subjectPublicKey BIT STRING of a P-256 key: the last 65 bytes of the SPKI. */
    assert_string_equal(f->pubkey_sha1,
                        cli_hex("openssl x509 -in \"$CERT\" -noout -pubkey | openssl pkey -pubin "
                                "-outform DER | tail -c 65 | openssl dgst -sha1 -r | cut -c1-40",
                                name));
    assert_non_null(f->ski);
    assert_string_equal(f->ski,
                        cli_hex("openssl x509 -in \"$CERT\" -noout -ext subjectKeyIdentifier "
                                "| sed -n 2p",
                                name));
    assert_int_equal((int64_t)f->not_before,
                     strtoll(cli("date -u +%s -d \"$(openssl x509 -in \"$CERT\" -noout -startdate "
                                 "| cut -d= -f2)\"",
                                 name),
                             NULL, 10));
    assert_int_equal((int64_t)f->not_after,
                     strtoll(cli("date -u +%s -d \"$(openssl x509 -in \"$CERT\" -noout -enddate "
                                 "| cut -d= -f2)\"",
                                 name),
                             NULL, 10));
}

static void test_good(void **state)
{
    X509 *x = load("good");
    struct cert_facts *f = facts_ok(x);

    assert_string_equal(f->subject, "CN=alice,OU=Users,DC=corp,DC=example,DC=test");
    assert_string_equal(f->issuer, PKI_SUBJ_BASE);
    assert_string_equal(f->subject_asi, "DC=test,DC=example,DC=corp,OU=Users,CN=alice");
    assert_string_equal(f->issuer_asi, ISSUING_ASI);
    assert_string_equal(f->serial_hex, "2B0000000011AC0000000012");
    assert_string_equal(f->serial_rev, "1200000000AC11000000002B");
    assert_int_equal(f->n_upn, 1);
    assert_string_equal(f->upn[0], "alice@corp.example.test");
    assert_int_equal(f->n_rfc822, 1);
    assert_string_equal(f->rfc822[0], "alice@corp.example.test");
    assert_int_equal(f->n_dns, 0);
    assert_null(f->sid);
    check_cli_facts("good", f);
    assert_true(f->not_before <= time(NULL) - 3000 && time(NULL) < f->not_after);

    tls_facts_free(f);
    X509_free(x);
}

static void test_issuing_ca(void **state)
{
    X509 *x = load("issuing-ca");
    struct cert_facts *f = facts_ok(x);

    assert_string_equal(f->subject, PKI_SUBJ_BASE);
    assert_string_equal(f->subject_asi, ISSUING_ASI);
    assert_string_equal(f->issuer_asi, "DC=test,DC=example,DC=corp,CN=Corp Root CA");
    assert_int_equal(f->n_upn + f->n_rfc822 + f->n_dns, 0);
    check_cli_facts("issuing-ca", f);

    tls_facts_free(f);
    X509_free(x);
}

static void test_server_dns(void **state)
{
    X509 *x = load("server");
    struct cert_facts *f = facts_ok(x);

    assert_string_equal(f->subject, "CN=localhost");
    assert_int_equal(f->n_dns, 1);
    assert_string_equal(f->dns[0], "localhost");
    assert_int_equal(f->n_upn, 0);

    tls_facts_free(f);
    X509_free(x);
}

static void test_sid(void **state)
{
    X509 *x = load("sid");
    struct cert_facts *f = facts_ok(x);

    assert_non_null(f->sid);
    assert_string_equal(f->sid, SID_ALICE);
    assert_int_equal(f->n_upn, 1);
    assert_string_equal(f->upn[0], "sidalice@corp.example.test");
    assert_string_equal(f->subject_asi, "DC=test,DC=example,DC=corp,OU=Users,CN=sidalice");
    check_cli_facts("sid", f);

    tls_facts_free(f);
    X509_free(x);
}

static void test_dates(void **state)
{
    X509 *x = load("expired");
    struct cert_facts *f = facts_ok(x);
    assert_true(f->not_after < time(NULL));
    check_cli_facts("expired", f);
    tls_facts_free(f);
    X509_free(x);

    x = load("notyet");
    f = facts_ok(x);
    assert_true(f->not_before > time(NULL) + 9 * 86400);
    tls_facts_free(f);
    X509_free(x);
}

/* LDAP and DN metacharacters are passed through as data, unaltered. */
static void test_meta(void **state)
{
    X509 *x = load("meta");
    struct cert_facts *f = facts_ok(x);

    assert_string_equal(f->subject, "CN=a*)(b\\\\,OU=Users,DC=corp,DC=example,DC=test");
    assert_string_equal(f->subject_asi, "DC=test,DC=example,DC=corp,OU=Users,CN=a*)(b\\");
    assert_int_equal(f->n_upn, 1);
    assert_string_equal(f->upn[0], "*)(uid=*))(|(uid=*@corp.example.test");
    assert_int_equal(f->n_rfc822, 1);
    assert_string_equal(f->rfc822[0], "a(b)*@corp.example.test");

    tls_facts_free(f);
    X509_free(x);
}

static void expect_malformed(X509 *x)
{
    struct cert_facts sentinel;
    struct cert_facts *f = &sentinel;
    assert_int_equal(tls_facts_from_x509(x, &f), R_CERT_MALFORMED);
    assert_ptr_equal(f, &sentinel); /* untouched on refusal */
}

static void test_nul_and_bad_utf8_refused(void **state)
{
    static const char *const names[] = {"nulcn", "nulupn", "badutf8upn"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        X509 *x = load(names[i]);
        expect_malformed(x);
        X509_free(x);
    }
    /* A subject UTF8String that is not UTF-8 never reaches facts: OpenSSL 3.0
     * refuses to decode the certificate at all (and so does a TLS handshake). */
    assert_null(try_load("badutf8"));
}

/* The 4 000-byte OU and all 20 RDNs come back whole. */
static void test_long(void **state)
{
    char ou[4001];
    char expect[8192];
    size_t n = 0;
    X509 *x = load("long");
    struct cert_facts *f = facts_ok(x);

    for (int i = 0; i < 400; i++)
        n += (size_t)snprintf(ou + n, sizeof(ou) - n, "ou%07d.", i);
    assert_int_equal(n, 4000);
    n = (size_t)snprintf(expect, sizeof(expect), "DC=test,DC=example,DC=corp");
    for (int i = 1; i <= 15; i++)
        n += (size_t)snprintf(expect + n, sizeof(expect) - n, ",OU=Unit %d", i);
    snprintf(expect + n, sizeof(expect) - n, ",OU=%s,CN=long", ou);
    assert_string_equal(f->subject_asi, expect);
    assert_int_equal(strlen(f->subject), strlen(expect));
    assert_non_null(strstr(f->subject, ou));
    assert_true(strncmp(f->subject, "CN=long,OU=ou0000000.", 21) == 0);

    tls_facts_free(f);
    X509_free(x);
}

/* ---- certificates built in memory -------------------------------------- */

struct rdn {
    const char *type;
    const char *value;
    int type_tag; /* MBSTRING_UTF8, or a V_ASN1_* type for raw bytes */
    int len;      /* -1: strlen */
    int join;     /* 1: same RDN as the previous attribute */
};

static X509_NAME *make_name(const struct rdn *r)
{
    X509_NAME *n = X509_NAME_new();
    assert_non_null(n);
    for (; r->type != NULL; r++)
        assert_true(X509_NAME_add_entry_by_txt(
            n, r->type, r->type_tag ? r->type_tag : MBSTRING_UTF8, (const unsigned char *)r->value,
            r->len ? r->len : -1, -1, r->join ? -1 : 0));
    return n;
}

/* A signed certificate with <issuer>, <subject>, serial <serial_hex> and the
 * extensions <ext>, <ext2> (taken; NULL: none), re-read from its DER as a TLS
 * peer's would be. */
static X509 *make_cert2(const struct rdn *issuer, const struct rdn *subject, const char *serial_hex,
                        X509_EXTENSION *ext, X509_EXTENSION *ext2)
{
    X509 *x = X509_new();
    EVP_PKEY *key = EVP_EC_gen("prime256v1");
    BIGNUM *bn = NULL;
    X509_NAME *in = make_name(issuer);
    X509_NAME *sn = make_name(subject);

    assert_non_null(x);
    assert_non_null(key);
    assert_true(X509_set_version(x, X509_VERSION_3));
    assert_true(BN_hex2bn(&bn, serial_hex) > 0);
    ASN1_INTEGER *serial = BN_to_ASN1_INTEGER(bn, NULL);
    assert_non_null(serial);
    assert_true(X509_set_serialNumber(x, serial));
    assert_true(X509_set_issuer_name(x, in));
    assert_true(X509_set_subject_name(x, sn));
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), 0));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 86400));
    assert_true(X509_set_pubkey(x, key));
    if (ext != NULL)
        assert_true(X509_add_ext(x, ext, -1));
    if (ext2 != NULL)
        assert_true(X509_add_ext(x, ext2, -1));
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);

    unsigned char *der = NULL;
    int len = i2d_X509(x, &der);
    const unsigned char *p = der;
    assert_true(len > 0);
    X509_free(x);
    x = d2i_X509(NULL, &p, len);
    assert_non_null(x);
    OPENSSL_free(der);
    X509_EXTENSION_free(ext);
    X509_EXTENSION_free(ext2);
    ASN1_INTEGER_free(serial);
    BN_free(bn);
    X509_NAME_free(in);
    X509_NAME_free(sn);
    EVP_PKEY_free(key);
    return x;
}

static X509 *make_cert(const struct rdn *issuer, const struct rdn *subject, const char *serial_hex,
                       X509_EXTENSION *ext)
{
    return make_cert2(issuer, subject, serial_hex, ext, NULL);
}

static const struct rdn contoso[] = {
    {"DC", "com", 0, 0, 0}, {"DC", "contoso", 0, 0, 0}, {"CN", "CONTOSO-DC-CA", 0, 0, 0}, {0}};
static const struct rdn plain_cn[] = {{"CN", "user", 0, 0, 0}, {0}};

/* LAB.md §4: Windows shows the issuer "CN=CONTOSO-DC-CA, DC=contoso, DC=com". */
static void test_lab_vectors(void **state)
{
    X509 *x = make_cert(contoso, plain_cn, "2B0000000011AC0000000012", NULL);
    struct cert_facts *f = facts_ok(x);

    assert_string_equal(f->issuer_asi, "DC=com,DC=contoso,CN=CONTOSO-DC-CA");
    assert_string_equal(f->issuer, "CN=CONTOSO-DC-CA,DC=contoso,DC=com");
    assert_string_equal(f->serial_hex, "2B0000000011AC0000000012");
    assert_string_equal(f->serial_rev, "1200000000AC11000000002B");
    assert_string_equal(f->subject_asi, "CN=user");
    assert_null(f->ski);
    assert_null(f->sid);
    assert_int_equal(f->n_upn + f->n_rfc822 + f->n_dns, 0);

    tls_facts_free(f);
    X509_free(x);
}

/* A serial with the top bit set keeps DER's 00 sign byte (as Windows shows it). */
static void test_serial_sign_byte(void **state)
{
    X509 *x = make_cert(contoso, plain_cn, "8001", NULL);
    struct cert_facts *f = facts_ok(x);
    assert_string_equal(f->serial_hex, "008001");
    assert_string_equal(f->serial_rev, "018000");
    tls_facts_free(f);
    X509_free(x);
}

/* Windows short names, multi-valued RDNs (in DER SET order), unknown OIDs, quoting. */
static void test_asi_names(void **state)
{
    static const struct rdn subject[] = {{"C", "US", 0, 0, 0},
                                         {"ST", "Washington", 0, 0, 0},
                                         {"L", "Redmond", 0, 0, 0},
                                         {"O", "Contoso, Ltd", 0, 0, 0},
                                         {"OU", "A", 0, 0, 0},
                                         {"CN", "B", 0, 0, 1},
                                         {"emailAddress", "b@contoso.com", 0, 0, 0},
                                         {"street", "1 Way", 0, 0, 0},
                                         {"serialNumber", "42", 0, 0, 0},
                                         {"title", "Dr", 0, 0, 0},
                                         {"GN", "Ann", 0, 0, 0},
                                         {"SN", "Lee", 0, 0, 0},
                                         {"initials", "AL", 0, 0, 0},
                                         {"1.2.3.4", "x", 0, 0, 0},
                                         {"CN", " say \"hi\" ", 0, 0, 0},
                                         {"CN", "caf\xc3\xa9", 0, 0, 0},
                                         {0}};
    X509 *x = make_cert(contoso, subject, "01", NULL);
    struct cert_facts *f = facts_ok(x);

    /* CN=B sorts before OU=A in the DER SET: its OID's last byte is smaller.
     * " + " inside an RDN and "OID." before an unnamed OID, as CertNameToStr
     * writes them (see test_windows_name_vectors). */
    assert_string_equal(
        f->subject_asi,
        "C=US,S=Washington,L=Redmond,O=\"Contoso, Ltd\",CN=B + OU=A,E=b@contoso.com,"
        "STREET=1 Way,SERIALNUMBER=42,T=Dr,G=Ann,SN=Lee,I=AL,OID.1.2.3.4=x,"
        "CN=\" say \"\"hi\"\" \",CN=caf\xc3\xa9");
    /* RFC 4514: UTF-8 stays UTF-8; specials escaped by OpenSSL. */
    assert_non_null(strstr(f->subject, "CN=caf\xc3\xa9,"));
    assert_non_null(strstr(f->subject, "O=Contoso\\, Ltd"));

    tls_facts_free(f);
    X509_free(x);
}

/* The altSecurityIdentities form against what Windows' CertNameToStr
 * (CERT_X500_NAME_STR) writes, one name per row, run through the real code.
 * Sources of the expectations (the vectors are written here, not copied):
 *  W: Wine crypt32 tests/str.c, test_CertNameToStrA (the encodedSimpleCN ...
 *     encodedNewlineCN blobs, encodedDummyCN, encodedFields and the test
 *     certificate's subject x500SubjectStr; ", " there is "," here);
 *  V: Wine str.c test_CertRDNValueToStrA values (abc"def, "abc, def", ...)
 *     as CertNameToStr quotes them;
 *  N: .NET X500DistinguishedNameTests (PrintMultiComponentRdn: "CN=James +
 *     O=Microsoft"; the T61String cases: UTF-8 bytes read as UTF-8, other
 *     bytes as Latin-1; "OID.<dotted>" for an unnamed attribute);
 *  R: the rest of the quoting rule of Wine str.c (white space at either end,
 *     an empty value, a CR inside) and the names of Wine crypt32 oid.c,
 *     as docs/mapping.md states them. */
static void test_windows_name_vectors(void **state)
{
    static const char *bmp_quote = "\0\"\0001\0\"";
    static const struct {
        const char *src;
        struct rdn name[4];
        const char *asi;
    } v[] = {
        {"W simpleCN", {{"CN", "1", V_ASN1_PRINTABLESTRING, 0, 0}, {0}}, "CN=1"},
        {"W singleQuotedCN", {{"CN", "'1'", V_ASN1_PRINTABLESTRING, 0, 0}, {0}}, "CN='1'"},
        {"W spacedCN", {{"CN", " 1 ", V_ASN1_PRINTABLESTRING, 0, 0}, {0}}, "CN=\" 1 \""},
        {"W quotedCN (BMPString)", {{"CN", NULL, V_ASN1_BMPSTRING, 6, 0}, {0}}, "CN=\"\"\"1\"\"\""},
        {"W multipleAttrCN", {{"CN", "1+2", V_ASN1_PRINTABLESTRING, 0, 0}, {0}}, "CN=\"1+2\""},
        {"W commaCN", {{"CN", "a,b", V_ASN1_PRINTABLESTRING, 0, 0}, {0}}, "CN=\"a,b\""},
        {"W equalCN", {{"CN", "a=b", V_ASN1_PRINTABLESTRING, 0, 0}, {0}}, "CN=\"a=b\""},
        {"W lessThanCN", {{"CN", "\0<", V_ASN1_BMPSTRING, 2, 0}, {0}}, "CN=\"<\""},
        {"W greaterThanCN", {{"CN", "\0>", V_ASN1_BMPSTRING, 2, 0}, {0}}, "CN=\">\""},
        {"W hashCN", {{"CN", "\0#", V_ASN1_BMPSTRING, 2, 0}, {0}}, "CN=\"#\""},
        {"W semiCN", {{"CN", "\0;", V_ASN1_BMPSTRING, 2, 0}, {0}}, "CN=\";\""},
        {"W newlineCN", {{"CN", "\0a\0\n\0b", V_ASN1_BMPSTRING, 6, 0}, {0}}, "CN=\"a\nb\""},
        {"W dummyCN",
         {{"CN", "dummy", V_ASN1_PRINTABLESTRING, 0, 0},
          {"2.5.4.12", "test", V_ASN1_PRINTABLESTRING, 0, 0},
          {0}},
         "CN=dummy,T=test"},
        {"W fields",
         {{"CN", "Wine Test", V_ASN1_PRINTABLESTRING, 0, 0},
          {"2.5.4.12", "123", V_ASN1_PRINTABLESTRING, 0, 0},
          {"C", "BR", V_ASN1_PRINTABLESTRING, 0, 0},
          {0}},
         "CN=Wine Test,T=123,C=BR"},
        {"V embedded double quote", {{"CN", "abc\"def", 0, 0, 0}, {0}}, "CN=\"abc\"\"def\""},
        {"V embedded single quote", {{"CN", "abc'def", 0, 0, 0}, {0}}, "CN=abc'def"},
        {"V embedded comma", {{"CN", "abc, def", 0, 0, 0}, {0}}, "CN=\"abc, def\""},
        {"V enclosing quotes", {{"CN", "\"def\"", 0, 0, 0}, {0}}, "CN=\"\"\"def\"\"\""},
        {"V embedded semicolon", {{"CN", "1;3", 0, 0, 0}, {0}}, "CN=\"1;3\""},
        {"N PrintMultiComponentRdn",
         {{"CN", "James", V_ASN1_PRINTABLESTRING, 0, 0},
          {"O", "Microsoft", V_ASN1_PRINTABLESTRING, 0, 1},
          {0}},
         "CN=James + O=Microsoft"},
        {"N three values in one RDN",
         {{"OU", "c", 0, 0, 0}, {"O", "b", 0, 0, 1}, {"CN", "a", 0, 0, 1}, {0}},
         "CN=a + O=b + OU=c"},
        {"N T61String of UTF-8 bytes",
         {{"CN", "caf\xc3\xa9", V_ASN1_T61STRING, 0, 0}, {0}},
         "CN=caf\xc3\xa9"},
        {"N T61String of Latin-1 bytes",
         {{"CN", "caf\xe9", V_ASN1_T61STRING, 0, 0}, {0}},
         "CN=caf\xc3\xa9"},
        {"N T61String, a cut UTF-8 sequence is Latin-1",
         {{"CN", "a\xc3", V_ASN1_T61STRING, 0, 0}, {0}},
         "CN=a\xc3\x83"},
        {"N unnamed OID",
         {{"1.3.6.1.4.1.311.60.2.1.3", "US", V_ASN1_PRINTABLESTRING, 0, 0}, {0}},
         "OID.1.3.6.1.4.1.311.60.2.1.3=US"},
        {"N businessCategory has no Windows name",
         {{"businessCategory", "x", 0, 0, 0}, {0}},
         "OID.2.5.4.15=x"},
        {"R empty value", {{"CN", "", V_ASN1_UTF8STRING, 0, 0}, {0}}, "CN=\"\""},
        {"R leading tab", {{"CN", "\ta", 0, 0, 0}, {0}}, "CN=\"\ta\""},
        {"R trailing CR", {{"CN", "a\r", 0, 0, 0}, {0}}, "CN=\"a\r\""},
        {"R leading LF", {{"CN", "\na", 0, 0, 0}, {0}}, "CN=\"\na\""},
        {"R leading VT, trailing FF", {{"CN", "\va\f", 0, 0, 0}, {0}}, "CN=\"\va\f\""},
        {"R inner CR does not quote", {{"CN", "a\rb", 0, 0, 0}, {0}}, "CN=a\rb"},
        {"R inner tab does not quote", {{"CN", "a\tb", 0, 0, 0}, {0}}, "CN=a\tb"},
        {"R > and < quote", {{"CN", "a>b", 0, 0, 0}, {0}}, "CN=\"a>b\""},
        {"R names: UID, Description, PostalCode",
         {{"UID", "jdoe", 0, 0, 0},
          {"description", "d", 0, 0, 0},
          {"postalCode", "98052", 0, 0, 0},
          {0}},
         "UID=jdoe,Description=d,PostalCode=98052"},
        {"R names: POBox, Phone (a + quotes), dnQualifier",
         {{"postOfficeBox", "7", 0, 0, 0},
          {"telephoneNumber", "+1 555", V_ASN1_PRINTABLESTRING, 0, 0},
          {"dnQualifier", "q", V_ASN1_PRINTABLESTRING, 0, 0},
          {0}},
         "POBox=7,Phone=\"+1 555\",dnQualifier=q"},
        {"R names: S, STREET, G",
         {{"ST", "WA", 0, 0, 0}, {"street", "1 Way", 0, 0, 0}, {"GN", "Ann", 0, 0, 0}, {0}},
         "S=WA,STREET=1 Way,G=Ann"},
        {"R names: I, SN, E",
         {{"initials", "AL", 0, 0, 0},
          {"SN", "Lee", 0, 0, 0},
          {"emailAddress", "a@x", V_ASN1_IA5STRING, 0, 0},
          {0}},
         "I=AL,SN=Lee,E=a@x"},
        {"R names: X21Address (2.5.4.24), DC, SERIALNUMBER",
         {{"x121Address", "1", V_ASN1_NUMERICSTRING, 0, 0},
          {"DC", "corp", V_ASN1_IA5STRING, 0, 0},
          {"serialNumber", "42", V_ASN1_PRINTABLESTRING, 0, 0},
          {0}},
         "X21Address=1,DC=corp,SERIALNUMBER=42"},
    };

    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        struct rdn name[4];
        memcpy(name, v[i].name, sizeof(name));
        if (name[0].value == NULL)
            name[0].value = bmp_quote;
        X509 *x = make_cert(contoso, name, "01", NULL);
        struct cert_facts *f = NULL;
        enum reason r = tls_facts_from_x509(x, &f);
        if (r != R_NONE)
            fail_msg("%s: reason %d", v[i].src, (int)r);
        if (strcmp(f->subject_asi, v[i].asi) != 0)
            fail_msg("%s: got [%s], want [%s]", v[i].src, f->subject_asi, v[i].asi);
        tls_facts_free(f);
        X509_free(x);
    }
}

static void test_bad_names_in_memory(void **state)
{
    /* A NUL inside a UTF8String, a BMPString holding U+0000, a PrintableString
     * with a byte past 0x7F: all three decode in OpenSSL, all are refused.
     * (A UTF8String that is not UTF-8 cannot even be encoded or decoded by
     * OpenSSL 3.0: see test_nul_and_bad_utf8_refused.) */
    static const struct rdn nul[] = {{"CN", "ab\0cd", V_ASN1_UTF8STRING, 5, 0}, {0}};
    static const struct rdn bmpnul[] = {{"CN", "\0a\0\0", V_ASN1_BMPSTRING, 4, 0}, {0}};
    static const struct rdn printable8[] = {{"CN", "caf\xe9", V_ASN1_PRINTABLESTRING, 4, 0}, {0}};
    const struct rdn *cases[] = {nul, bmpnul, printable8};

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        X509 *x = make_cert(plain_cn, cases[i], "01", NULL);
        expect_malformed(x);
        X509_free(x);
        x = make_cert(cases[i], plain_cn, "01", NULL); /* as issuer, too */
        expect_malformed(x);
        X509_free(x);
    }
}

/* subjectAltName with one name: a UPN (otherName, UTF8String) of raw bytes when
 * <type> is GEN_OTHERNAME, else an rfc822Name or dNSName of raw bytes. */
static X509_EXTENSION *san_ext(int type, const char *bytes, int len)
{
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    GENERAL_NAME *g = GENERAL_NAME_new();
    assert_true(gens && g);
    if (type == GEN_OTHERNAME) {
        ASN1_TYPE *v = ASN1_TYPE_new();
        ASN1_UTF8STRING *u = ASN1_UTF8STRING_new();
        assert_true(v && u);
        assert_true(ASN1_STRING_set(u, bytes, len));
        ASN1_TYPE_set(v, V_ASN1_UTF8STRING, u);
        assert_true(GENERAL_NAME_set0_othername(g, OBJ_nid2obj(NID_ms_upn), v));
    } else {
        ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
        assert_non_null(ia5);
        assert_true(ASN1_STRING_set(ia5, bytes, len));
        GENERAL_NAME_set0_value(g, type, ia5);
    }
    assert_true(sk_GENERAL_NAME_push(gens, g));
    X509_EXTENSION *ext = X509V3_EXT_i2d(NID_subject_alt_name, 0, gens);
    assert_non_null(ext);
    GENERAL_NAMES_free(gens);
    return ext;
}

static void test_bad_san_in_memory(void **state)
{
    static const struct {
        int type;
        const char *bytes;
        int len;
    } bad[] = {
        {GEN_OTHERNAME, "a\0b@x", 6},           /* NUL */
        {GEN_OTHERNAME, "a\xc0\xaf@x", 5},      /* overlong '/' */
        {GEN_OTHERNAME, "a\xed\xa0\x80@x", 6},  /* UTF-16 surrogate */
        {GEN_OTHERNAME, "\xf4\x90\x80\x80", 4}, /* past U+10FFFF */
        {GEN_OTHERNAME, "a\xc3", 2},            /* cut sequence */
        {GEN_EMAIL, "a\0b@x", 6},
        {GEN_EMAIL, "caf\xe9@x", 6}, /* IA5String is 7-bit */
        {GEN_DNS, "a\0.example", 10},
    };
    X509 *x = make_cert(contoso, plain_cn, "01", san_ext(GEN_OTHERNAME, "j\xc3\xb6rg@x", 7));
    struct cert_facts *f = facts_ok(x);
    assert_int_equal(f->n_upn, 1);
    assert_string_equal(f->upn[0], "j\xc3\xb6rg@x");
    tls_facts_free(f);
    X509_free(x);

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        x = make_cert(contoso, plain_cn, "01", san_ext(bad[i].type, bad[i].bytes, bad[i].len));
        expect_malformed(x);
        X509_free(x);
    }
    /* Two subjectAltName extensions: which one counts is ambiguous, so neither does. */
    x = make_cert2(contoso, plain_cn, "01", san_ext(GEN_EMAIL, "a@x", 3),
                   san_ext(GEN_EMAIL, "b@x", 3));
    expect_malformed(x);
    X509_free(x);
}

/* The SID extension built with the OpenSSL API: GeneralNames { otherName
 * 1.3.6.1.4.1.311.25.2.1 [0] OCTET STRING <sid> }. <extra> adds a second one. */
static X509_EXTENSION *sid_ext(const char *sid, int extra)
{
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    unsigned char *der = NULL;
    assert_non_null(gens);
    for (int i = 0; i <= extra; i++) {
        GENERAL_NAME *g = GENERAL_NAME_new();
        ASN1_TYPE *v = ASN1_TYPE_new();
        ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
        assert_true(g && v && os);
        assert_true(ASN1_OCTET_STRING_set(os, (const unsigned char *)sid, (int)strlen(sid)));
        ASN1_TYPE_set(v, V_ASN1_OCTET_STRING, os);
        assert_true(GENERAL_NAME_set0_othername(g, OBJ_txt2obj("1.3.6.1.4.1.311.25.2.1", 1), v));
        assert_true(sk_GENERAL_NAME_push(gens, g));
    }
    int len = i2d_GENERAL_NAMES(gens, &der);
    assert_true(len > 0);
    ASN1_OCTET_STRING *data = ASN1_OCTET_STRING_new();
    assert_true(ASN1_OCTET_STRING_set(data, der, len));
    ASN1_OBJECT *oid = OBJ_txt2obj("1.3.6.1.4.1.311.25.2", 1);
    X509_EXTENSION *ext = X509_EXTENSION_create_by_OBJ(NULL, oid, 0, data);
    assert_non_null(ext);
    ASN1_OBJECT_free(oid);
    ASN1_OCTET_STRING_free(data);
    OPENSSL_free(der);
    GENERAL_NAMES_free(gens);
    return ext;
}

static void test_sid_validation(void **state)
{
    static const char *const bad[] = {
        "S-1-5",
        "S-1-5-",
        "S-1-5-21-x",
        "S-2-5-21",
        "s-1-5-21",
        "S-1-5-21--1",
        "S-1-5-+21",
        "S-1-5-4294967296",
        "",
        "S-1-5-21-1 ",
        "S-1-5-1-2-3-4-5-6-7-8-9-10-11-12-13-14-15-16",
        "S-1-5-021",
        "S-1-5-21-18446744073709551617" /* 2^64 + 1: must not wrap to 1 */,
        "S-1-281474976710656-1" /* authority past 48 bits */,
        "S-1-4294967296-1" /* 2^32 in decimal: objectSid prints it in hex */,
        "S-1-0x00000000FFFF-1" /* hex below 2^32: printed in decimal */,
        "S-1-0x00010000000a-1" /* lower-case hex */};
    X509 *x = make_cert(contoso, plain_cn, "01", sid_ext("S-1-5-21-1-2-3-4294967295", 0));
    struct cert_facts *f = facts_ok(x);
    assert_string_equal(f->sid, "S-1-5-21-1-2-3-4294967295");
    tls_facts_free(f);
    X509_free(x);

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        x = make_cert(contoso, plain_cn, "01", sid_ext(bad[i], 0));
        expect_malformed(x);
        X509_free(x);
    }
    x = make_cert(contoso, plain_cn, "01", sid_ext(SID_ALICE, 1)); /* two SIDs */
    expect_malformed(x);
    X509_free(x);
    x = make_cert2(contoso, plain_cn, "01", sid_ext(SID_ALICE, 0), sid_ext(SID_ALICE, 0));
    expect_malformed(x); /* the extension twice */
    X509_free(x);
    x = make_cert(contoso, plain_cn, "01", sid_ext("S-1-0-0", 0)); /* smallest valid */
    f = facts_ok(x);
    assert_string_equal(f->sid, "S-1-0-0");
    tls_facts_free(f);
    X509_free(x);
    /* An authority of 2^32 or more, spelled as objectSid is (MS-DTYP 2.4.2.1). */
    x = make_cert(contoso, plain_cn, "01", sid_ext("S-1-0x000100000000-1", 0));
    f = facts_ok(x);
    assert_string_equal(f->sid, "S-1-0x000100000000-1");
    tls_facts_free(f);
    X509_free(x);
}

/* subjectAltName with the URIs <uris> (NULL-terminated), as IA5Strings. */
static X509_EXTENSION *san_uris(const char *const *uris)
{
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    assert_non_null(gens);
    for (; *uris != NULL; uris++) {
        GENERAL_NAME *g = GENERAL_NAME_new();
        ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
        assert_true(g && ia5);
        assert_true(ASN1_STRING_set(ia5, *uris, (int)strlen(*uris)));
        GENERAL_NAME_set0_value(g, GEN_URI, ia5);
        assert_true(sk_GENERAL_NAME_push(gens, g));
    }
    X509_EXTENSION *ext = X509V3_EXT_i2d(NID_subject_alt_name, 0, gens);
    assert_non_null(ext);
    GENERAL_NAMES_free(gens);
    return ext;
}

#define SID_URL "tag:microsoft.com,2022-09-14:sid:"

/* MS-PKCA 3.1.5.2.1.6: the SID in a SAN URL. */
static void test_san_url_sid(void **state)
{
    static const struct {
        const char *uris[3];
        const char *want; /* NULL: cert_malformed */
    } v[] = {
        {{SID_URL SID_ALICE, NULL}, SID_ALICE},
        {{"https://example.test/", SID_URL SID_ALICE, NULL}, SID_ALICE}, /* other URIs ignored */
        {{SID_URL SID_ALICE, SID_URL SID_ALICE, NULL}, SID_ALICE},       /* the same SID twice */
        {{"https://example.test/", NULL}, ""},                           /* no SID URL: none */
        {{"tag:microsoft.com,2022-09-14:sidx", NULL}, ""},               /* not the prefix */
        {{SID_URL "S-1-5-21-1-2-3-1104", SID_URL SID_ALICE, NULL}, NULL}, /* two SIDs */
        {{SID_URL, NULL}, NULL},                                          /* no SID */
        {{SID_URL "s-1-5-21-1", NULL}, NULL},     /* not objectSid's spelling */
        {{SID_URL "S-1-5-021", NULL}, NULL},
        {{SID_URL SID_ALICE " ", NULL}, NULL},
        {{SID_URL SID_ALICE "?x", NULL}, NULL},
        {{"TAG:Microsoft.com,2022-09-14:SID:S-1-5-x", NULL}, NULL}, /* the prefix in any case */
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        X509 *x = make_cert(contoso, plain_cn, "01", san_uris(v[i].uris));
        struct cert_facts *f = NULL;
        enum reason r = tls_facts_from_x509(x, &f);
        if (v[i].want == NULL) {
            if (r != R_CERT_MALFORMED)
                fail_msg("row %zu: reason %d, want cert_malformed", i, (int)r);
        } else {
            if (r != R_NONE)
                fail_msg("row %zu: reason %d", i, (int)r);
            if (v[i].want[0] == '\0')
                assert_null(f->san_sid);
            else
                assert_string_equal(f->san_sid, v[i].want);
            assert_null(f->sid);
        }
        tls_facts_free(f);
        X509_free(x);
    }

    /* With the SID extension: the same SID is fine, another is two accounts. */
    const char *same[] = {SID_URL SID_ALICE, NULL};
    const char *other[] = {SID_URL "S-1-5-21-1-2-3-1104", NULL};
    X509 *x = make_cert2(contoso, plain_cn, "01", sid_ext(SID_ALICE, 0), san_uris(same));
    struct cert_facts *f = facts_ok(x);
    assert_string_equal(f->sid, SID_ALICE);
    assert_string_equal(f->san_sid, SID_ALICE);
    tls_facts_free(f);
    X509_free(x);
    x = make_cert2(contoso, plain_cn, "01", sid_ext(SID_ALICE, 0), san_uris(other));
    expect_malformed(x);
    X509_free(x);
}

/* A UPN is certificate text: refused (cert_malformed) exactly when the shared
 * table says it is not UTF-8 (cm_utf8_valid); control characters other than
 * NUL are the header writer's business (written as \xHH), not refused here. */
static void test_hostile_upn(void **state)
{
    for (size_t i = 0; i < HOSTILE_TEXTS; i++) {
        const struct hostile_text *h = &hostile_texts[i];
        X509 *x = make_cert(contoso, plain_cn, "01", san_ext(GEN_OTHERNAME, h->bytes, (int)h->len));
        struct cert_facts *f = NULL;
        enum reason r = tls_facts_from_x509(x, &f);
        if ((r == R_NONE) != h->utf8)
            fail_msg("UPN %s: reason %d", h->name, (int)r);
        if (r == R_NONE) {
            assert_int_equal(f->n_upn, 1);
            assert_memory_equal(f->upn[0], h->bytes, h->len);
            assert_int_equal(strlen(f->upn[0]), h->len);
        }
        tls_facts_free(f);
        X509_free(x);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good),
        cmocka_unit_test(test_issuing_ca),
        cmocka_unit_test(test_server_dns),
        cmocka_unit_test(test_sid),
        cmocka_unit_test(test_dates),
        cmocka_unit_test(test_meta),
        cmocka_unit_test(test_nul_and_bad_utf8_refused),
        cmocka_unit_test(test_long),
        cmocka_unit_test(test_lab_vectors),
        cmocka_unit_test(test_serial_sign_byte),
        cmocka_unit_test(test_asi_names),
        cmocka_unit_test(test_windows_name_vectors),
        cmocka_unit_test(test_bad_names_in_memory),
        cmocka_unit_test(test_bad_san_in_memory),
        cmocka_unit_test(test_sid_validation),
        cmocka_unit_test(test_san_url_sid),
        cmocka_unit_test(test_hostile_upn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
