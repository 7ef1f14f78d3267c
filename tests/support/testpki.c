#include "tests/support/testpki.h"

#include <stdio.h>
#include <stdlib.h>

#include <openssl/pem.h>

char *testpki_path(char *buf, size_t len, const char *file)
{
    const char *dir = getenv("CERTMAPD_TEST_PKI");
    if (dir == NULL || dir[0] == '\0')
        return NULL;
    int n = snprintf(buf, len, "%s/%s", dir, file);
    return n > 0 && (size_t)n < len ? buf : NULL;
}

X509 *testpki_cert(const char *file)
{
    char path[4096];
    FILE *fp = testpki_path(path, sizeof path, file) != NULL ? fopen(path, "r") : NULL;
    if (fp == NULL)
        return NULL;
    X509 *x = PEM_read_X509(fp, NULL, NULL, NULL);
    fclose(fp);
    return x;
}
