/* tls/: the server SSL_CTX built from configuration, the client-certificate
 * policy, and extraction of certificate facts. Knows nothing of HTTP or LDAP.
 * Callers hold SSL objects only to hand them to the transport (io/); every
 * decision about a certificate is made here. */
#ifndef CM_TLS_H
#define CM_TLS_H

#include <stdbool.h>
#include <time.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "common/reason.h"
#include "conf/conf.h"
#include "tls/facts.h"

struct tls_ctx; /* opaque; immutable after tls_ctx_new(), shared by all workers */

/* Builds the server context from <c>: certificate chain and key, protocol
 * floor, trust anchors, trusted issuers, CRLs, depth. Returns NULL and a
 * reason in <err> on failure (unreadable file, key mismatch, expired CRL...). */
struct tls_ctx *tls_ctx_new(const struct conf *c, char *err, size_t errlen);
void tls_ctx_free(struct tls_ctx *t);

/* Once a second, from one thread (the main one): re-reads [tls] ticket_keys
 * when the file changed (a bad file is logged once and the keys in use
 * stay), or makes a new random ticket key each ticket_key_lifetime. */
void tls_ctx_tick(struct tls_ctx *t, time_t now);

/* A new server-side SSL for one accepted connection. The certificate is
 * requested in the handshake when the configuration needs it there
 * (mode accept/require, or negotiate_at_handshake). NULL on allocation failure. */
SSL *tls_conn_new(struct tls_ctx *t);

/* After the handshake completes: the verdict on the client certificate for a
 * request that needs certificate mode <mode>. R_NONE when the certificate is
 * acceptable, or when none was sent and <mode> allows it. Runs on every
 * connection, resumed ones included: validity and revocation are checked
 * again against the current time and CRLs. On R_NONE with a certificate,
 * <*facts> receives a new facts struct (caller frees); otherwise NULL. */
enum reason tls_conn_verdict(struct tls_ctx *t, SSL *ssl, enum cert_mode mode,
                             struct cert_facts **facts);

/* Before each later request on a connection whose certificate was accepted:
 * whether it still holds. R_NONE, or the refusal (cert_expired, cert_revoked)
 * when it has expired since, or a CRL or OCSP answer that came since revokes
 * it. A status that has become unknown (a CRL that lapsed) does not undo
 * the verdict made on a known one: revocation_unknown governs admission. */
enum reason tls_conn_recheck(struct tls_ctx *t, SSL *ssl);

/* ---- revocation (tls/revoke.c) ---- */

/* One CRL in use, as tls_crl_ages() reports it. Strings live for the call only. */
struct tls_crl_info {
    const char *issuer;  /* the CA's name, RFC 4514, escaped for logs */
    const char *source;  /* the crl_file path, or the URL it was fetched from */
    bool delta;          /* a delta CRL */
    long long number;    /* CRL number; -1: none or too large */
    time_t this_update;  /* when the CA issued it */
    time_t next_update;  /* when it expires; 0: never said */
};

/* Calls <cb>(<arg>, info) for each CRL in use now, for metrics (CRL age per
 * CA: now - this_update; time left: next_update - now). Thread-safe, from any
 * thread; nothing when no crl_file is set. <cb> must not call into tls/. */
void tls_crl_ages(struct tls_ctx *t, void (*cb)(void *arg, const struct tls_crl_info *info),
                  void *arg);

/* With crl_fetch or ocsp = on: whether the verdict on <ssl>'s certificate
 * (whose chain verified) should wait because no current CRL covers it and
 * one is being fetched from its distribution point, or its OCSP responder
 * asked (a fetch or query starts here when none was). Ask again a little later; the caller stops asking after
 * crl_fetch_timeout, and tls_conn_verdict then judges (revocation_unknown
 * applies). Thread-safe; cheap when the status is known. */
bool tls_conn_crl_pending(struct tls_ctx *t, SSL *ssl);

/* Makes d2i_X509() decode RSA and EC public keys through OpenSSL's built-in
 * methods instead of a provider decoder search (tls/keymeth.c says why).
 * tls_ctx_new() calls it when [tls] builtin_key_methods = yes. Process-wide
 * and idempotent. 1 installed, 0 not available in this OpenSSL, -1 could not
 * be installed (everything still works, only slower). */
int tls_builtin_key_methods(void);

/* Frees the intermediates the client of <ssl> sent, once its verdict is
 * known: nothing reads them afterwards (a resumed session never had them,
 * and a later certificate request replaces them), and on an idle connection
 * they are ~6 KiB of decoded certificates per CA. The leaf stays: a TLS 1.2
 * session may be resumed from OpenSSL's session cache, which shares it. */
void tls_conn_drop_chain(SSL *ssl);

/* The whole certificate policy for <leaf> with the intermediates <chain>
 * (may be NULL), outside any handshake (`certmapd map`): chain, trusted
 * issuer, EKU, validity, revocation, names. On R_NONE <*facts> is set. */
enum reason tls_check_cert(struct tls_ctx *t, X509 *leaf, STACK_OF(X509) *chain,
                           struct cert_facts **facts);

/* Facts of <x> alone, without any policy. R_NONE, or R_CERT_MALFORMED for a
 * name with an embedded NUL or invalid UTF-8. <*out> is set only on R_NONE. */
enum reason tls_facts_from_x509(X509 *x, struct cert_facts **out);

/* A certificate and the intermediates that came with it, read from files. */
struct tls_certs {
    X509 *leaf;
    STACK_OF(X509) *chain; /* never NULL after tls_certs_build(); may be empty */
};

/* Reads the first PEM certificate of <cert_path> as <out>'s leaf and, as its
 * intermediates, the further certificates of that file, then every one of
 * <chain_path> (may be NULL). 0, or -1 with "certificate|chain FILE: reason"
 * in <err> (unreadable, bad PEM, no certificate). The caller purges <out>. */
int tls_certs_build(struct tls_certs *out, const char *cert_path, const char *chain_path, char *err,
                    size_t errlen);
void tls_certs_purge(struct tls_certs *c);

/* Sends close_notify on an established <ssl> whose output is flushed (no
 * waiting for the peer's). Keeps the session resumable. */
void tls_conn_close_notify(SSL *ssl);

/* Frees an SSL that was never handed to libevent; NULL is fine. */
void tls_conn_free(SSL *ssl);

/* OpenSSL's text for error code <e> (as from io_tls_error). */
const char *tls_error_text(unsigned long e);

/* Protocol name of an established connection ("TLSv1.3"). */
const char *tls_conn_protocol(SSL *ssl);

/* Whether <ssl>'s handshake resumed a session (no certificate exchanged). */
bool tls_conn_resumed(SSL *ssl);

/* ---- late client certificates (tls/late.c) ---- */

enum tls_late {
    TLS_LATE_RENEGOTIATE,  /* TLS 1.2: HelloRequest sent */
    TLS_LATE_PHA,          /* TLS 1.3: CertificateRequest sent */
    TLS_LATE_ASKED_ALREADY, /* the handshake asked already: asking again is pointless */
    TLS_LATE_NO_PHA,       /* TLS 1.3 client that did not offer post-handshake auth */
    TLS_LATE_FAILED,
};

/* Whether <ssl>'s client has been asked for a certificate (in the handshake or later). */
bool tls_conn_cert_asked(struct tls_ctx *t, SSL *ssl);

/* Asks the client of an established <ssl> for a certificate now. On
 * TLS_LATE_RENEGOTIATE / TLS_LATE_PHA, <done>(<arg>) is called exactly once,
 * from inside OpenSSL's processing of the client's answer on the connection's
 * read path (so it must only schedule work); the pending request goes with
 * the SSL. tls_conn_verdict() then judges what the client sent. */
enum tls_late tls_conn_request_cert(struct tls_ctx *t, SSL *ssl, void (*done)(void *arg),
                                    void *arg);

enum tls_late_end {
    TLS_LATE_CLOSED,           /* the client closed the connection (close_notify, FIN, reset) */
    TLS_LATE_NO_RENEGOTIATION, /* TLS 1.2: it answered the HelloRequest with no_renegotiation */
    TLS_LATE_BROKEN,           /* another alert, or bytes that are not the TLS expected */
};

/* Why a connection ended while its late certificate request was pending,
 * from what the transport reported: the error <e> (io_tls_error, 0 for
 * none; tls_error_text says more) and whether it saw an end of stream, <eof>. OpenSSL has failed such a connection: nothing can be sent. */
enum tls_late_end tls_late_failure(unsigned long e, bool eof);

/* ---- backend side (tls/client.c) ---- */

struct tls_client_ctx; /* opaque; for an https:// backend, shared by all workers */

/* Client context for the backend servers: verifies a server's certificate
 * against [backend] ca_file (the system store when unset) and, per connection
 * (tls_client_conn_new), that server's name. NULL + <err>. */
struct tls_client_ctx *tls_client_ctx_new(const struct conf *c, char *err, size_t errlen);
void tls_client_ctx_free(struct tls_client_ctx *t);

/* RFC 5929 tls-server-end-point channel binding data of the established
 * backend connection <ssl>: "tls-server-end-point:" and the hash of the
 * server's certificate (its signature's hash, SHA-256 for MD5 and SHA-1), into
 * <out> (at least 96 bytes). 0 with its length in <len>, or -1. */
int tls_server_end_point(SSL *ssl, unsigned char *out, size_t outlen, size_t *len);

/* A new client SSL for one backend connection, with SNI and host name checks
 * set to <host>, the name or address of the backend server it goes to. NULL
 * on allocation failure. */
SSL *tls_client_conn_new(struct tls_client_ctx *t, const char *host);

#endif
