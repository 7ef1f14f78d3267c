/* Certificate facts: what the rest of certmapd knows about a verified client
 * certificate, as a plain struct without OpenSSL types. Filled by tls/;
 * read by mapping/ (to build directory lookups) and proxy/ (headers, log). */
#ifndef CM_TLS_FACTS_H
#define CM_TLS_FACTS_H

#include <stddef.h>
#include <time.h>

struct cert_facts {
    char *subject;      /* RFC 4514, most significant RDN last: "CN=alice,O=Corp,C=US" */
    char *issuer;       /* RFC 4514 */
    char *subject_asi;  /* altSecurityIdentities form: encoded RDN order, "," no spaces, " + " in an RDN, S= for ST */
    char *issuer_asi;   /* same, for the issuer: "DC=test,DC=example,DC=corp,CN=Corp Issuing CA" */
    char *serial_hex;   /* upper-case hex of the serial's bytes, big-endian: "2B0000000011AC0000000012" */
    char *serial_rev;   /* the same bytes reversed, for <SR>: "1200000000AC11000000002B" */
    char sha256[65];    /* upper-case hex SHA-256 of the DER */
    char sha1[41];      /* upper-case hex SHA-1 of the DER (the "thumbprint") */
    char *ski;          /* upper-case hex of the subjectKeyIdentifier extension; NULL if absent */
    char pubkey_sha1[41]; /* upper-case hex SHA-1 of the subjectPublicKey BIT STRING contents (<SHA1-PUKEY>) */
    char **upn;         /* SAN otherName 1.3.6.1.4.1.311.20.2.3 values, UTF-8 */
    size_t n_upn;
    char **rfc822;      /* SAN rfc822Name values */
    size_t n_rfc822;
    char **dns;         /* SAN dNSName values */
    size_t n_dns;
    char *sid;          /* "S-1-5-21-..." from extension 1.3.6.1.4.1.311.25.2; NULL if absent */
    char *san_sid;      /* "S-1-5-21-..." from a SAN URI tag:microsoft.com,2022-09-14:sid:<SID>
                         * (MS-PKCA 3.1.5.2.1.6); NULL if none. Equal to <sid> when both are there */
    time_t not_before;
    time_t not_after;
};

/* Frees <f> and everything it points to; NULL is fine. */
void tls_facts_free(struct cert_facts *f);

#endif
