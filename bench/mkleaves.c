/* mkleaves: issues many distinct client certificates fast, for the mapping
 * benchmark (every certificate must be a cache miss in certmapd).
 *
 *   mkleaves CA.crt CA.key OUTDIR COUNT PREFIX
 *
 * Writes OUTDIR/leaf.key (one ECDSA P-256 key shared by all leaves: the key
 * does not matter to mapping, the certificate does), OUTDIR/PREFIXNNNNN.pem
 * (leaf + CA certificate), OUTDIR/list ("CHAIN KEY" lines for loadgen
 * --cert-list) and OUTDIR/serials ("PREFIXNNNNN HEX" lines: each leaf's serial
 * in hex, for altSecurityIdentities X509:<I>...<SR>... mappings). Leaf NNNNN has subject .../OU=Users/CN=PREFIXNNNNN, a random
 * serial, clientAuth and the UPN and e-mail PREFIXNNNNN@corp.example.test,
 * the shape tests/pki/mkpki.sh gives its user leaves. The openssl CLI takes
 * ~15 ms per leaf; this takes well under one. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#define UPN_DOMAIN "corp.example.test"

static X509 *read_cert(const char *path)
{
    FILE *f = fopen(path, "r");
    X509 *x = NULL;
    if (f != NULL) {
        x = PEM_read_X509(f, NULL, NULL, NULL);
        fclose(f);
    }
    return x;
}

static EVP_PKEY *read_key(const char *path)
{
    FILE *f = fopen(path, "r");
    EVP_PKEY *k = NULL;
    if (f != NULL) {
        k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
        fclose(f);
    }
    return k;
}

static int add_ext(X509 *leaf, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
    int ok = e != NULL && X509_add_ext(leaf, e, -1) == 1;
    X509_EXTENSION_free(e);
    return ok ? 0 : -1;
}

/* Builds and signs leaf <name>. Returns it (caller frees) or NULL. */
static X509 *issue(X509 *ca, EVP_PKEY *cakey, EVP_PKEY *key, const char *name)
{
    X509 *x = X509_new();
    X509_NAME *subj = NULL;
    ASN1_INTEGER *serial = NULL;
    BIGNUM *bn = BN_new();
    unsigned char rnd[16];
    char san[256];
    X509V3_CTX ctx;

    if (x == NULL || bn == NULL || RAND_bytes(rnd, sizeof rnd) != 1)
        goto fail;
    rnd[0] &= 0x7f; /* positive */
    rnd[0] |= 0x10; /* no leading zero byte */
    if (BN_bin2bn(rnd, sizeof rnd, bn) == NULL || (serial = BN_to_ASN1_INTEGER(bn, NULL)) == NULL)
        goto fail;
    subj = X509_NAME_new();
    if (subj == NULL ||
        !X509_NAME_add_entry_by_txt(subj, "DC", MBSTRING_UTF8, (const unsigned char *)"test", -1,
                                    -1, 0) ||
        !X509_NAME_add_entry_by_txt(subj, "DC", MBSTRING_UTF8, (const unsigned char *)"example", -1,
                                    -1, 0) ||
        !X509_NAME_add_entry_by_txt(subj, "DC", MBSTRING_UTF8, (const unsigned char *)"corp", -1,
                                    -1, 0) ||
        !X509_NAME_add_entry_by_txt(subj, "OU", MBSTRING_UTF8, (const unsigned char *)"Users", -1,
                                    -1, 0) ||
        !X509_NAME_add_entry_by_txt(subj, "CN", MBSTRING_UTF8, (const unsigned char *)name, -1, -1,
                                    0))
        goto fail;
    if (X509_set_version(x, X509_VERSION_3) != 1 || X509_set_serialNumber(x, serial) != 1 ||
        X509_set_subject_name(x, subj) != 1 ||
        X509_set_issuer_name(x, X509_get_subject_name(ca)) != 1 ||
        X509_gmtime_adj(X509_getm_notBefore(x), -3600) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), 7L * 24 * 3600) == NULL ||
        X509_set_pubkey(x, key) != 1)
        goto fail;
    X509V3_set_ctx(&ctx, ca, x, NULL, NULL, 0);
    snprintf(san, sizeof san, "otherName:1.3.6.1.4.1.311.20.2.3;UTF8:%s@%s,email:%s@%s", name,
             UPN_DOMAIN, name, UPN_DOMAIN);
    if (add_ext(x, &ctx, NID_basic_constraints, "critical,CA:false") < 0 ||
        add_ext(x, &ctx, NID_key_usage, "critical,digitalSignature") < 0 ||
        add_ext(x, &ctx, NID_ext_key_usage, "clientAuth") < 0 ||
        add_ext(x, &ctx, NID_subject_alt_name, san) < 0 ||
        add_ext(x, &ctx, NID_subject_key_identifier, "hash") < 0 ||
        add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always") < 0)
        goto fail;
    if (X509_sign(x, cakey, EVP_sha256()) <= 0)
        goto fail;
    X509_NAME_free(subj);
    ASN1_INTEGER_free(serial);
    BN_free(bn);
    return x;
fail:
    X509_free(x);
    X509_NAME_free(subj);
    ASN1_INTEGER_free(serial);
    BN_free(bn);
    return NULL;
}

static int write_pem(const char *path, X509 *leaf, X509 *ca, EVP_PKEY *key)
{
    FILE *f = fopen(path, "w");
    int ok;
    if (f == NULL)
        return -1;
    if (key != NULL)
        ok = PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) == 1;
    else
        ok = PEM_write_X509(f, leaf) == 1 && PEM_write_X509(f, ca) == 1;
    return fclose(f) == 0 && ok ? 0 : -1;
}

int main(int argc, char **argv)
{
    X509 *ca = NULL;
    EVP_PKEY *cakey = NULL, *key = NULL;
    FILE *list = NULL, *serials = NULL;
    char path[4096], keypath[4096], name[64];
    int rc = 1;
    long count;
    char *end;

    if (argc != 6) {
        fprintf(stderr, "usage: mkleaves CA.crt CA.key OUTDIR COUNT PREFIX\n");
        return 2;
    }
    errno = 0;
    count = strtol(argv[4], &end, 10);
    if (errno != 0 || *end != '\0' || count < 1 || count > 99999 || strlen(argv[5]) > 40 ||
        strlen(argv[3]) > 3000) {
        fprintf(stderr, "mkleaves: COUNT must be 1..99999, PREFIX at most 40 bytes\n");
        return 2;
    }
    ca = read_cert(argv[1]);
    cakey = read_key(argv[2]);
    if (ca == NULL || cakey == NULL || X509_check_private_key(ca, cakey) != 1) {
        fprintf(stderr, "mkleaves: cannot read the CA certificate %s and its key %s\n", argv[1],
                argv[2]);
        goto fail;
    }
    key = EVP_EC_gen("P-256");
    snprintf(keypath, sizeof keypath, "%s/leaf.key", argv[3]);
    snprintf(path, sizeof path, "%s/list", argv[3]);
    if (key == NULL || write_pem(keypath, NULL, NULL, key) < 0 ||
        (list = fopen(path, "w")) == NULL) {
        fprintf(stderr, "mkleaves: cannot write in %s\n", argv[3]);
        goto fail;
    }
    snprintf(path, sizeof path, "%s/serials", argv[3]);
    if ((serials = fopen(path, "w")) == NULL) {
        fprintf(stderr, "mkleaves: cannot write in %s\n", argv[3]);
        goto fail;
    }
    for (long i = 0; i < count; i++) {
        snprintf(name, sizeof name, "%s%05ld", argv[5], i);
        X509 *leaf = issue(ca, cakey, key, name);
        snprintf(path, sizeof path, "%s/%s.pem", argv[3], name);
        int bad = leaf == NULL || write_pem(path, leaf, ca, NULL) < 0;
        BIGNUM *sn = bad ? NULL : ASN1_INTEGER_to_BN(X509_get0_serialNumber(leaf), NULL);
        char *hex = sn != NULL ? BN_bn2hex(sn) : NULL;
        bad = bad || hex == NULL || fprintf(serials, "%s %s\n", name, hex) < 0;
        OPENSSL_free(hex);
        BN_free(sn);
        X509_free(leaf);
        if (bad) {
            fprintf(stderr, "mkleaves: cannot issue %s\n", path);
            goto fail;
        }
        fprintf(list, "%s %s\n", path, keypath);
    }
    rc = 0;
fail:
    if (list != NULL && fclose(list) != 0)
        rc = 1;
    if (serials != NULL && fclose(serials) != 0)
        rc = 1;
    ERR_print_errors_fp(stderr);
    X509_free(ca);
    EVP_PKEY_free(cakey);
    EVP_PKEY_free(key);
    return rc;
}
