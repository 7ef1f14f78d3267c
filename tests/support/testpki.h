/* The test PKI that tests/pki/mkpki.sh makes (ctest's pki fixture; its
 * directory in CERTMAPD_TEST_PKI), for unit tests and bench tools. */
#ifndef CM_TESTPKI_H
#define CM_TESTPKI_H

#include <stddef.h>

#include <openssl/x509.h>

/* "<CERTMAPD_TEST_PKI>/<file>" in <buf>; NULL when the variable is unset or
 * empty, or the path does not fit. */
char *testpki_path(char *buf, size_t len, const char *file);

/* The first certificate of the PEM file <file> of the test PKI; NULL when it
 * cannot be opened or OpenSSL cannot decode it. */
X509 *testpki_cert(const char *file);

#endif
