/* A TLS connection between two SSL objects in one process, over a BIO pair:
 * for unit tests (tests/unit/tls) and bench tools (bench/connmem) that need a
 * real handshake without sockets. */
#ifndef CM_TLSPAIR_H
#define CM_TLSPAIR_H

#include <openssl/ssl.h>

/* Runs a handshake between client <cl> and server <sv> over a new BIO pair
 * (each takes its end), then one message each way, which makes a TLS 1.3
 * client take its session tickets. 0, or -1 with OpenSSL's error queue set. */
int tlspair_handshake(SSL *cl, SSL *sv);

#endif
