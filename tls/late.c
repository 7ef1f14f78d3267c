/* Late client certificates: asking for a certificate after the handshake,
 * when only the requested path needs one (IIS's SslNegotiateCert). TLS 1.2
 * renegotiates (server-initiated; client-initiated stays refused); TLS 1.3
 * uses post-handshake authentication when the client offered it.
 *
 * The request messages are written here, synchronously, with
 * SSL_do_handshake; the client's answer is processed by OpenSSL inside the
 * connection's normal reads, and the end of that handshake is noticed by the
 * context's info callback, which calls the waiting connection back. */
#include <stdbool.h>
#include <stdlib.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/log.h"
#include "tls/internal.h"
#include "tls/tls.h"

struct late_wait {
    void (*done)(void *arg);
    void *arg;
};

static struct tls_ctx *ctx_of(const SSL *ssl)
{
    return SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
}

void tls_late_info_cb(const SSL *ssl, int where, int ret)
{
    /* The client's Finished is in: its certificate (or its refusal to send
     * one) has been processed. OpenSSL 3.0 reports no HANDSHAKE_DONE at the
     * end of TLS 1.3 post-handshake authentication, so the state is watched;
     * the waiter only schedules work, which runs after this read completes. */
    bool finished = (where & SSL_CB_HANDSHAKE_DONE) ||
                    ((where & SSL_CB_LOOP) && SSL_get_state(ssl) == TLS_ST_SR_FINISHED);
    if (!finished)
        return;
    struct tls_ctx *t = ctx_of(ssl);
    if (t == NULL)
        return;
    struct late_wait *w = SSL_get_ex_data(ssl, t->late_idx);
    if (w == NULL || w->done == NULL)
        return; /* the first handshake, a ticket, or our own request being written */
    void (*done)(void *) = w->done;
    w->done = NULL; /* once; <w> itself goes with the SSL (tls_late_free) */
    done(w->arg);
}

void tls_late_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    free(ptr);
}

bool tls_conn_cert_asked(struct tls_ctx *t, SSL *ssl)
{
    return t->cert_at_handshake || (SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER);
}

enum tls_late tls_conn_request_cert(struct tls_ctx *t, SSL *ssl, void (*done)(void *arg), void *arg)
{
    if (tls_conn_cert_asked(t, ssl))
        return TLS_LATE_ASKED_ALREADY;
    struct late_wait *w = malloc(sizeof *w);
    if (w == NULL)
        return TLS_LATE_FAILED;
    w->done = done;
    w->arg = arg;
    ERR_clear_error();
    SSL_set_verify(ssl, SSL_VERIFY_PEER, NULL);
    enum tls_late how;
    if (SSL_version(ssl) >= TLS1_3_VERSION) {
        if (SSL_verify_client_post_handshake(ssl) != 1) {
            /* The client did not send the post_handshake_auth extension. */
            ERR_clear_error();
            free(w);
            return TLS_LATE_NO_PHA;
        }
        how = TLS_LATE_PHA;
    } else {
        /* A renegotiation that resumes the session would skip the
         * CertificateRequest: the client must do a full handshake. */
        SSL_set_options(ssl, SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION);
        if (SSL_renegotiate(ssl) != 1) {
            log_info("cannot renegotiate: %s", ERR_reason_error_string(ERR_peek_last_error()));
            ERR_clear_error();
            free(w);
            return TLS_LATE_FAILED;
        }
        how = TLS_LATE_RENEGOTIATE;
    }
    /* Writes HelloRequest / CertificateRequest now. OpenSSL reports that
     * write as a finished handshake, which is why <w> is attached after. */
    int rc = SSL_do_handshake(ssl);
    if (rc != 1) {
        int e = SSL_get_error(ssl, rc);
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
            log_info("cannot ask for a client certificate: %s",
                     ERR_reason_error_string(ERR_peek_last_error()));
            ERR_clear_error();
            free(w);
            return TLS_LATE_FAILED;
        }
    }
    free(SSL_get_ex_data(ssl, t->late_idx));
    SSL_set_ex_data(ssl, t->late_idx, w);
    return how;
}

enum tls_late_end tls_late_failure(unsigned long e, bool eof)
{
    /* libevent keeps SSL_get_error's code (1..8: no library) below OpenSSL's
     * own errors and hands out the latest first. OpenSSL turns a
     * no_renegotiation warning alert into a fatal error of its own. */
    if (eof || ERR_GET_LIB(e) == 0 || ERR_GET_LIB(e) == ERR_LIB_SYS)
        return TLS_LATE_CLOSED; /* an end of stream, or a reset */
    if (ERR_GET_LIB(e) != ERR_LIB_SSL)
        return TLS_LATE_BROKEN;
    switch (ERR_GET_REASON(e)) {
    case SSL_R_NO_RENEGOTIATION:
        return TLS_LATE_NO_RENEGOTIATION;
    case SSL_R_UNEXPECTED_EOF_WHILE_READING:
        return TLS_LATE_CLOSED; /* a FIN without close_notify */
    default:
        return TLS_LATE_BROKEN;
    }
}
