/* `certmapd map`'s output: mapcmd_main run in-process on the input as the
 * --cert file (the input is DER, written as one PEM block), with a fixed
 * configuration over the test PKI ($CERTMAPD_TEST_PKI: tests/pki/mkpki.sh)
 * and a fixed LDIF directory. A certificate that the policy refuses has its
 * facts printed all the same; one it accepts (the PKI's own leaves, which
 * tests/fuzz/run.sh adds to the corpus) goes on to the LDIF lookups and the
 * verdict. stdout goes to /dev/null. */
#include <string.h>
#include <unistd.h>

#include <openssl/pem.h>

#include "mapcmd/mapcmd.h"
#include "tests/fuzz/fuzz.h"

static char conf_path[256], cert_path[256];

static const char ldif_text[] =
    "version: 1\n\n"
    "dn: CN=alice,CN=Users,DC=corp,DC=example,DC=test\n"
    "objectClass: user\n"
    "sAMAccountName: alice\n"
    "userPrincipalName: alice@corp.example.test\n"
    "objectSid:: AQUAAAAAAAUVAAAAxzU6Qo5rdIRVoa7GUAQAAA==\n"
    "whenCreated: 20200101000000.0Z\n"
    "userAccountControl: 512\n"
    "accountExpires: 9223372036854775807\n\n";

static void setup_once(void)
{
    const char *pki = getenv("CERTMAPD_TEST_PKI");
    if (pki == NULL) {
        fprintf(stderr, "fuzz_mapcmd: set CERTMAPD_TEST_PKI to a tests/pki/mkpki.sh directory\n");
        exit(2);
    }
    char ldif_path[256];
    long pid = (long)getpid();
    snprintf(ldif_path, sizeof ldif_path, "/tmp/certmapd-fuzz-mapcmd-%ld.ldif", pid);
    snprintf(conf_path, sizeof conf_path, "/tmp/certmapd-fuzz-mapcmd-%ld.conf", pid);
    snprintf(cert_path, sizeof cert_path, "/tmp/certmapd-fuzz-mapcmd-%ld.pem", pid);
    FILE *f = fopen(ldif_path, "w");
    if (f == NULL)
        abort();
    fputs(ldif_text, f);
    fclose(f);
    f = fopen(conf_path, "w");
    if (f == NULL)
        abort();
    fprintf(f,
            "[server]\nlisten = 127.0.0.1:1\n"
            "[tls]\ncertificate = %s/server-chain.pem\nprivate_key = %s/server.key\n"
            "[client_certificate]\nmode = require\ntrust_anchors = %s/trust-anchors.pem\n"
            "trusted_issuers = %s/trusted-issuers.pem\ncrl_file = %s/crl.pem\n"
            "[backend]\nurl = http://127.0.0.1:9\n"
            "[mapping]\nsource = ldif\nldif_file = %s\nnetbios_domain = CORP\n"
            "enforcement = compatibility\n",
            pki, pki, pki, pki, pki, ldif_path);
    fclose(f);
    if (freopen("/dev/null", "w", stdout) == NULL)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (conf_path[0] == '\0')
        setup_once();
    FILE *f = fopen(cert_path, "w");
    if (f == NULL)
        return 0;
    PEM_write(f, "CERTIFICATE", "", data, (long)size);
    fclose(f);
    char *argv[] = {"map", "-c", conf_path, "--cert", cert_path, NULL};
    int rc = mapcmd_main(5, argv, conf_path);
    fuzz_assert(rc >= 0 && rc <= 2, "exit status %d", rc);
    fflush(stdout);
    return 0;
}
