/* io/: the transport. One struct io per socket, plain TCP or TLS: it owns the
 * descriptor, its read and write events, an input and an output buffer and,
 * for TLS, the SSL. It is the only caller of SSL_read and SSL_write.
 *
 * Reading: when the socket is readable, it reads until the kernel and OpenSSL
 * have nothing more (OpenSSL may hold a whole record it read ahead, which no
 * epoll event would announce), up to a high mark of input. Writing: io_write()
 * queues, and the queue is written in the same loop turn (after the current
 * callbacks, so that a response head and its body leave as one TLS record);
 * only when the socket is full does it wait for writability. It drives the
 * first TLS handshake, both ways, and a late one (renegotiation or TLS 1.3
 * post-handshake authentication) that tls/ asks for; tls/ judges the result.
 * Knows nothing of HTTP. Reports through the callbacks of struct io_handler;
 * io_free() is safe inside them. */
#ifndef CM_IO_H
#define CM_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#include "tls/tls.h"

struct io;

enum io_event {
    IO_EV_CONNECTED, /* io_connect(): connected, and for TLS the handshake is done */
    IO_EV_HANDSHAKE, /* io_accept() with TLS: the client's first handshake is done */
    IO_EV_LATE_DONE, /* the client answered io_request_cert() (with or without a certificate) */
    IO_EV_EOF,       /* the peer closed its side; nothing more will be read */
    IO_EV_ERROR,     /* a socket or TLS error (io_error_text() says what); the io is dead */
};

struct io_handler {
    /* Bytes were added to io_input(). */
    void (*read)(void *arg);
    /* The output fell to the low mark (io_set_marks) after having been above it. */
    void (*drained)(void *arg);
    void (*event)(void *arg, enum io_event ev);
};

/* A new transport on <base> reporting to <h> with <arg>; no socket yet. NULL
 * when memory is short. */
struct io *io_new(struct event_base *base, const struct io_handler *h, void *arg);

/* Frees <io>: closes its socket, frees its SSL and buffers. Safe inside its
 * own callbacks (the memory goes once they return); NULL is fine. */
void io_free(struct io *io);

/* Reports to <h> with <arg> from now on (an idle pooled connection changes hands). */
void io_set_handler(struct io *io, const struct io_handler *h, void *arg);

/* Takes over accepted socket <fd> and, for TLS, <ssl> (NULL: plain TCP): the
 * server handshake starts, IO_EV_HANDSHAKE follows. Both are owned by <io> from
 * now on, also on failure. 0, or -1 (memory). */
int io_accept(struct io *io, int fd, SSL *ssl);

/* Connects to <sa>, then, with <ssl> (NULL: plain TCP, owned by <io> from now
 * on), makes the client handshake. IO_EV_CONNECTED or IO_EV_ERROR follows,
 * never from inside this call. -1 with errno when no socket could be made or
 * watched (the socket is then closed by io_free). */
int io_connect(struct io *io, const struct sockaddr *sa, socklen_t len, SSL *ssl);

/* Stops reading above <in_high> bytes of input (0: no limit) until the input
 * is consumed below it; reports `drained` when the output falls to <out_low>. */
void io_set_marks(struct io *io, size_t in_high, size_t out_low);

/* What was read and not yet consumed: the caller drains it. */
struct evbuffer *io_input(struct io *io);
size_t io_output_length(const struct io *io);

/* Queues <len> bytes (copied) / all of <buf> (moved) for writing. */
void io_write(struct io *io, const void *data, size_t len);
void io_write_buffer(struct io *io, struct evbuffer *buf);

/* Moves what <from> has queued to <to>, when <from> never connected (so
 * nothing of it was sent): a connection retried on another address. 0, or -1
 * (nothing moved) when <from> lost output for want of memory: what it holds
 * has a gap and must not be sent anywhere. */
int io_move_output(struct io *from, struct io *to);

/* Stops (true) or resumes (false) reading: back-pressure from the other side.
 * Resuming reports what is already in the input again (a `read` soon), since
 * no new byte may come to announce it. */
void io_read_pause(struct io *io, bool paused);

/* Once the output is written: close_notify (TLS) and a TCP half-close. What
 * the peer still sends can be read until it closes (a lingering close). */
void io_close_write(struct io *io);

/* Asks the client of an established TLS server connection for a certificate
 * now (tls_conn_request_cert); with TLS_LATE_RENEGOTIATE or TLS_LATE_PHA,
 * IO_EV_LATE_DONE follows when the client has answered. */
enum tls_late io_request_cert(struct io *io, struct tls_ctx *t);

/* The event loop <io> runs on. */
struct event_base *io_event_base(const struct io *io);

/* The SSL of a TLS io (for tls/'s judgement of the peer); NULL for plain TCP. */
SSL *io_ssl(const struct io *io);

/* Whether the io has been connected / handshaken and is not dead. */
bool io_is_open(const struct io *io);

/* What the last IO_EV_ERROR was: "Connection refused", an OpenSSL reason... */
const char *io_error_text(const struct io *io, char *buf, size_t len);

/* The OpenSSL error code of the last IO_EV_ERROR, 0 when it was not TLS's. */
unsigned long io_tls_error(const struct io *io);

#endif
