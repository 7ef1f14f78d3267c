/* The transport: one socket, plain or TLS, its events and buffers (io.h). */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <event2/event_struct.h> /* struct event embedded, set up with event_assign() */

#include "io/io.h"

/* One read(2) or SSL_read at most this much at a time: a TLS record's worth. */
#define READ_CHUNK 16384

enum io_state {
    IO_NEW = 0,
    IO_CONNECTING, /* TCP connect in progress */
    IO_HANDSHAKE,  /* TLS handshake in progress (either side) */
    IO_OPEN,
    IO_DEAD, /* error or EOF reported; nothing more happens */
};

struct io {
    struct event_base *base;
    const struct io_handler *h;
    void *arg;
    int fd;
    SSL *ssl; /* NULL: plain TCP */
    struct event rev, wev;
    struct evbuffer *in, *out;
    size_t in_high, out_low;
    enum io_state state;
    bool server;           /* accepted: IO_EV_HANDSHAKE, else IO_EV_CONNECTED */
    bool rev_added, wev_added;
    bool paused;           /* io_read_pause */
    bool eof;              /* nothing more to read */
    bool read_wants_write; /* SSL_read needs the socket writable (renegotiation) */
    bool write_wants_read; /* SSL_write needs the socket readable */
    bool hs_write;         /* a late handshake message is still to be written */
    bool late_done;        /* the client answered a late certificate request */
    bool above_low;        /* the output went above out_low since the last `drained` */
    bool closing;          /* io_close_write: half-close once the output is written */
    bool write_closed;
    unsigned busy;         /* io's own frames on the stack */
    bool freed;            /* io_free() was called while busy */
    bool assigned;         /* rev and wev are set up (a socket was taken) */
    bool poked;            /* report the input again even without new bytes */
    bool oom;              /* output could not be queued: failed, reported from on_write */
    int sys_errno;         /* of the last error, 0: none */
    unsigned long ssl_err; /* of the last error, 0: none */
};

static void on_read(evutil_socket_t fd, short what, void *arg);
static void on_write(evutil_socket_t fd, short what, void *arg);

/* ---- life --------------------------------------------------------------------- */

static void really_free(struct io *io)
{
    if (io->assigned) {
        /* Also takes an activated, not added event out of the loop's active queue. */
        event_del(&io->rev);
        event_del(&io->wev);
    }
    tls_conn_free(io->ssl);
    if (io->fd >= 0)
        close(io->fd);
    evbuffer_free(io->in);
    evbuffer_free(io->out);
    free(io);
}

/* Ends a frame of io's own; false when <io> is gone (freed inside a callback). */
static bool leave(struct io *io)
{
    if (--io->busy == 0 && io->freed) {
        really_free(io);
        return false;
    }
    return !io->freed;
}

void io_free(struct io *io)
{
    if (io == NULL)
        return;
    if (io->busy > 0) {
        io->freed = true;
        io->state = IO_DEAD;
        if (io->assigned) {
            event_del(&io->rev);
            event_del(&io->wev);
        }
        io->rev_added = io->wev_added = false;
        return;
    }
    really_free(io);
}

static void in_drained_cb(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg);

struct io *io_new(struct event_base *base, const struct io_handler *h, void *arg)
{
    struct io *io = calloc(1, sizeof *io);
    if (io == NULL)
        return NULL;
    io->base = base;
    io->h = h;
    io->arg = arg;
    io->fd = -1;
    io->in = evbuffer_new();
    io->out = evbuffer_new();
    if (io->in == NULL || io->out == NULL || evbuffer_add_cb(io->in, in_drained_cb, io) == NULL) {
        /* evbuffer_free() does not take NULL */
        if (io->in != NULL)
            evbuffer_free(io->in);
        if (io->out != NULL)
            evbuffer_free(io->out);
        free(io);
        return NULL;
    }
    return io;
}

void io_set_handler(struct io *io, const struct io_handler *h, void *arg)
{
    io->h = h;
    io->arg = arg;
}

static int io_take_fd(struct io *io, int fd)
{
    io->fd = fd;
    event_assign(&io->rev, io->base, fd, EV_READ | EV_PERSIST, on_read, io);
    event_assign(&io->wev, io->base, fd, EV_WRITE | EV_PERSIST, on_write, io);
    io->assigned = true;
    int one = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* ---- events on and off ------------------------------------------------------- */

static void want_write(struct io *io, bool on)
{
    if (on && !io->wev_added) {
        event_add(&io->wev, NULL);
        io->wev_added = true;
    } else if (!on && io->wev_added) {
        event_del(&io->wev);
        io->wev_added = false;
    }
}

/* Whether the socket should be watched for input now. */
static bool should_read(const struct io *io)
{
    if (io->state == IO_HANDSHAKE)
        return !SSL_want_write(io->ssl);
    if (io->state != IO_OPEN)
        return false;
    if (io->write_wants_read)
        return true; /* a write waits for the peer's handshake message */
    if (io->eof || io->paused || io->read_wants_write)
        return false;
    return io->in_high == 0 || evbuffer_get_length(io->in) < io->in_high;
}

/* Brings the read event in line with should_read(). When reading resumes
 * while OpenSSL holds bytes it read ahead, no epoll event will come for
 * them: the read event is made active instead. */
static void update_read(struct io *io)
{
    bool on = should_read(io);
    if (on && !io->rev_added) {
        event_add(&io->rev, NULL);
        io->rev_added = true;
        if (io->ssl != NULL && io->state == IO_OPEN && SSL_has_pending(io->ssl))
            event_active(&io->rev, EV_READ, 1);
    } else if (!on && io->rev_added) {
        event_del(&io->rev);
        io->rev_added = false;
    }
}

/* Writes the output later in this loop turn (the write event made active),
 * unless a write already waits for the socket. */
static void flush_soon(struct io *io)
{
    if (io->state == IO_OPEN && !io->wev_added)
        event_active(&io->wev, EV_WRITE, 1);
}

static void in_drained_cb(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg)
{
    struct io *io = arg;
    if (info->n_deleted > 0 && !io->rev_added && io->state == IO_OPEN)
        update_read(io);
}

/* ---- errors ---------------------------------------------------------------- */

/* Reports <ev> (EOF or ERROR) once; the io is dead afterwards. */
static void die(struct io *io, enum io_event ev)
{
    if (io->state == IO_DEAD)
        return;
    io->state = IO_DEAD;
    want_write(io, false);
    update_read(io);
    io->h->event(io->arg, ev);
}

static void fail_sys(struct io *io, int err)
{
    io->sys_errno = err != 0 ? err : EIO;
    io->ssl_err = 0;
    die(io, IO_EV_ERROR);
}

/* After an SSL call returned <rc>: 0 for "try again when <*wants> says"
 * (EV_READ / EV_WRITE), 1 for a clean close by the peer, -1 for an error
 * (recorded). Clears OpenSSL's error queue either way. */
static int ssl_outcome(struct io *io, int rc, short *wants)
{
    int e = SSL_get_error(io->ssl, rc);
    int saved = errno;
    switch (e) {
    case SSL_ERROR_WANT_READ:
        *wants = EV_READ;
        return 0;
    case SSL_ERROR_WANT_WRITE:
        *wants = EV_WRITE;
        return 0;
    case SSL_ERROR_ZERO_RETURN:
        ERR_clear_error();
        return 1;
    case SSL_ERROR_SYSCALL: {
        unsigned long q = ERR_get_error();
        ERR_clear_error();
        if (q == 0 && saved == 0)
            return 1; /* the TCP connection ended without close_notify: a dirty close */
        if (q != 0) {
            io->ssl_err = q;
            io->sys_errno = 0;
        } else {
            io->sys_errno = saved != 0 ? saved : EIO;
            io->ssl_err = 0;
        }
        return -1;
    }
    default: {
        /* The oldest entry is the cause; the rest only say which layer gave up. */
        unsigned long q = ERR_get_error();
        ERR_clear_error();
        if (ERR_GET_REASON(q) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
            return 1; /* OpenSSL 3.0's name for the same dirty close */
        io->ssl_err = q != 0 ? q : ERR_PACK(ERR_LIB_SSL, 0, SSL_R_UNKNOWN_PROTOCOL);
        io->sys_errno = 0;
        return -1;
    }
    }
}

const char *io_error_text(const struct io *io, char *buf, size_t len)
{
    if (io->ssl_err != 0)
        snprintf(buf, len, "%s", tls_error_text(io->ssl_err));
    else if (io->sys_errno != 0)
        snprintf(buf, len, "%s", strerror(io->sys_errno));
    else
        snprintf(buf, len, "closed");
    return buf;
}

unsigned long io_tls_error(const struct io *io)
{
    return io->ssl_err;
}

/* ---- handshakes ------------------------------------------------------------- */

static void read_pass(struct io *io);
static void write_pass(struct io *io);

/* Drives the first handshake; when it is done, reports it and goes on with
 * what the peer sent behind it and what was queued meanwhile. */
static void handshake(struct io *io)
{
    ERR_clear_error();
    int rc = io->server ? SSL_accept(io->ssl) : SSL_connect(io->ssl);
    if (rc != 1) {
        short wants = 0;
        int r = ssl_outcome(io, rc, &wants);
        if (r != 0) {
            if (r > 0)
                io->sys_errno = ECONNRESET;
            die(io, IO_EV_ERROR);
            return;
        }
        want_write(io, wants == EV_WRITE);
        update_read(io);
        return;
    }
    io->state = IO_OPEN;
    want_write(io, false);
    update_read(io);
    io->h->event(io->arg, io->server ? IO_EV_HANDSHAKE : IO_EV_CONNECTED);
    if (io->freed || io->state != IO_OPEN)
        return;
    if (io->server && SSL_has_pending(io->ssl))
        read_pass(io); /* a request right behind the client's Finished */
    if (!io->freed && io->state == IO_OPEN && evbuffer_get_length(io->out) > 0)
        write_pass(io);
}

static void connected(struct io *io)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (io->sys_errno != 0)
        err = io->sys_errno; /* connect(2) failed at once */
    if (err != 0) {
        fail_sys(io, err);
        return;
    }
    if (io->ssl != NULL) {
        io->state = IO_HANDSHAKE;
        if (SSL_set_fd(io->ssl, io->fd) != 1) {
            ERR_clear_error();
            fail_sys(io, ENOMEM);
            return;
        }
        handshake(io);
        return;
    }
    io->state = IO_OPEN;
    want_write(io, false);
    update_read(io);
    io->h->event(io->arg, IO_EV_CONNECTED);
    if (!io->freed && io->state == IO_OPEN && evbuffer_get_length(io->out) > 0)
        write_pass(io);
}

int io_accept(struct io *io, int fd, SSL *ssl)
{
    io->server = true;
    io->ssl = ssl;
    if (io_take_fd(io, fd) < 0) {
        /* TCP_NODELAY is a matter of speed only */
    }
    if (ssl == NULL) {
        io->state = IO_OPEN;
        update_read(io);
        return 0;
    }
    if (SSL_set_fd(ssl, fd) != 1) {
        ERR_clear_error();
        return -1;
    }
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_set_accept_state(ssl);
    io->state = IO_HANDSHAKE;
    update_read(io); /* the ClientHello */
    return 0;
}

int io_connect(struct io *io, const struct sockaddr *sa, socklen_t len, SSL *ssl)
{
    io->ssl = ssl;
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    (void)io_take_fd(io, fd);
    if (ssl != NULL) {
        SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        SSL_set_connect_state(ssl);
    }
    io->state = IO_CONNECTING;
    if (connect(fd, sa, len) < 0 && errno != EINPROGRESS) {
        /* Refused at once: reported from the loop, as any other outcome. */
        io->sys_errno = errno;
        event_active(&io->wev, EV_WRITE, 1);
        return 0;
    }
    /* The loop's record of a new descriptor is allocated here; without it
     * no outcome would ever come, and the connect would time out instead of
     * failing now. */
    if (event_add(&io->wev, NULL) != 0) {
        errno = ENOMEM;
        return -1;
    }
    io->wev_added = true;
    return 0;
}

/* tls/late.c's callback, from inside OpenSSL's processing of the client's
 * answer (in read_pass): noted, and reported once the read is done. */
static void late_answered(void *arg)
{
    struct io *io = arg;
    io->late_done = true;
}

enum tls_late io_request_cert(struct io *io, struct tls_ctx *t)
{
    if (io->ssl == NULL || io->state != IO_OPEN)
        return TLS_LATE_FAILED;
    enum tls_late how = tls_conn_request_cert(t, io->ssl, late_answered, io);
    if ((how == TLS_LATE_RENEGOTIATE || how == TLS_LATE_PHA) && SSL_want_write(io->ssl)) {
        io->hs_write = true; /* the request message did not fit in the socket */
        want_write(io, true);
    }
    return how;
}


/* ---- reading ----------------------------------------------------------------- */

static void read_pass(struct io *io)
{
    size_t added = 0;
    bool closed = false, failed = false;
    io->busy++;
    if (io->write_wants_read) {
        io->write_wants_read = false;
        write_pass(io);
        if (io->freed || io->state != IO_OPEN)
            goto out;
    }
    while (!io->paused && !io->eof && !io->read_wants_write &&
           (io->in_high == 0 || evbuffer_get_length(io->in) < io->in_high)) {
        struct evbuffer_iovec v;
        if (evbuffer_reserve_space(io->in, READ_CHUNK, &v, 1) < 1) {
            io->sys_errno = ENOMEM;
            failed = true;
            break;
        }
        size_t room = v.iov_len > READ_CHUNK ? READ_CHUNK : v.iov_len;
        ssize_t n;
        if (io->ssl != NULL) {
            ERR_clear_error();
            int rc = SSL_read(io->ssl, v.iov_base, (int)room);
            n = rc > 0 ? rc : 0;
            v.iov_len = (size_t)n;
            evbuffer_commit_space(io->in, &v, 1);
            if (rc > 0) {
                added += (size_t)n;
                if (!SSL_has_pending(io->ssl))
                    break; /* the kernel's buffer is epoll's business */
                continue;
            }
            short wants = 0;
            int r = ssl_outcome(io, rc, &wants);
            if (r == 0 && wants == EV_WRITE) {
                io->read_wants_write = true; /* a renegotiation's answer is to be written */
                want_write(io, true);
            }
            closed = r > 0;
            failed = r < 0;
            break;
        }
        n = read(io->fd, v.iov_base, room);
        v.iov_len = n > 0 ? (size_t)n : 0;
        evbuffer_commit_space(io->in, &v, 1);
        if (n > 0) {
            added += (size_t)n;
            if ((size_t)n < room)
                break; /* the socket is most likely empty: no read to learn it */
            continue;
        }
        if (n == 0)
            closed = true;
        else if (errno == EINTR)
            continue;
        else if (errno != EAGAIN && errno != EWOULDBLOCK) {
            io->sys_errno = errno;
            failed = true;
        }
        break;
    }
    if (closed)
        io->eof = true;
    update_read(io);
    if (io->late_done) {
        io->late_done = false;
        io->h->event(io->arg, IO_EV_LATE_DONE);
        if (io->freed || io->state != IO_OPEN)
            goto out;
    }
    bool poked = io->poked;
    io->poked = false;
    if (added > 0 || (poked && evbuffer_get_length(io->in) > 0)) {
        io->h->read(io->arg);
        if (io->freed || io->state != IO_OPEN)
            goto out;
    }
    if (failed)
        die(io, IO_EV_ERROR);
    else if (closed)
        die(io, IO_EV_EOF);
out:
    leave(io);
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    struct io *io = arg;
    if (io->state == IO_HANDSHAKE) {
        io->busy++;
        handshake(io);
        leave(io);
        return;
    }
    if (io->state == IO_OPEN)
        read_pass(io);
}

/* ---- writing ------------------------------------------------------------------ */

/* Writes what is queued until done or the socket is full. */
static void write_pass(struct io *io)
{
    io->busy++;
    if (io->hs_write) {
        ERR_clear_error();
        int rc = SSL_do_handshake(io->ssl);
        short wants = 0;
        if (rc == 1 || ssl_outcome(io, rc, &wants) != 0 || wants != EV_WRITE)
            io->hs_write = false;
        ERR_clear_error();
    }
    if (io->read_wants_write) {
        io->read_wants_write = false;
        update_read(io);
        read_pass(io);
        if (io->freed || io->state != IO_OPEN)
            goto out;
    }
    bool blocked = io->hs_write;
    while (!blocked && evbuffer_get_length(io->out) > 0) {
        if (io->ssl == NULL) {
            int n = evbuffer_write(io->out, io->fd);
            if (n > 0)
                continue;
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                blocked = true;
                break;
            }
            fail_sys(io, n < 0 ? errno : EPIPE);
            goto out;
        }
        struct evbuffer_iovec v;
        if (evbuffer_peek(io->out, -1, NULL, &v, 1) < 1)
            break;
        size_t len = v.iov_len > READ_CHUNK ? READ_CHUNK : v.iov_len;
        ERR_clear_error();
        int rc = SSL_write(io->ssl, v.iov_base, (int)len);
        if (rc > 0) {
            evbuffer_drain(io->out, (size_t)rc);
            continue;
        }
        short wants = 0;
        int r = ssl_outcome(io, rc, &wants);
        if (r != 0) {
            if (r > 0)
                io->sys_errno = EPIPE;
            die(io, IO_EV_ERROR);
            goto out;
        }
        if (wants == EV_READ) {
            io->write_wants_read = true; /* inside a renegotiation */
            update_read(io);
            break;
        }
        blocked = true;
    }
    want_write(io, blocked);
    if (io->above_low && evbuffer_get_length(io->out) <= io->out_low) {
        io->above_low = false;
        if (io->h->drained != NULL) {
            io->h->drained(io->arg);
            if (io->freed || io->state != IO_OPEN)
                goto out;
        }
    }
    if (io->closing && !io->write_closed && evbuffer_get_length(io->out) == 0 && !blocked) {
        io->write_closed = true;
        if (io->ssl != NULL)
            tls_conn_close_notify(io->ssl);
        shutdown(io->fd, SHUT_WR);
    }
out:
    leave(io);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    struct io *io = arg;
    io->busy++;
    if (io->oom)
        die(io, IO_EV_ERROR); /* io_write could not queue: what follows would be corrupt */
    else if (io->state == IO_CONNECTING)
        connected(io);
    else if (io->state == IO_HANDSHAKE)
        handshake(io);
    else if (io->state == IO_OPEN)
        write_pass(io);
    leave(io);
}

/* ---- the caller's side -------------------------------------------------------- */

void io_set_marks(struct io *io, size_t in_high, size_t out_low)
{
    io->in_high = in_high;
    io->out_low = out_low;
}

struct evbuffer *io_input(struct io *io)
{
    return io->in;
}

size_t io_output_length(const struct io *io)
{
    return evbuffer_get_length(io->out);
}

static void queued(struct io *io)
{
    if (evbuffer_get_length(io->out) > io->out_low)
        io->above_low = true;
    flush_soon(io);
}

/* Output that cannot be queued (out of memory) must not leave a gap in the
 * stream: nothing more is written, and the failure is reported as an error
 * from the write event, on a clean stack (the caller is inside a callback). */
static void fail_output(struct io *io)
{
    if (io->oom)
        return;
    io->oom = true;
    io->sys_errno = ENOMEM;
    io->ssl_err = 0;
    if (io->assigned)
        event_active(&io->wev, EV_WRITE, 1);
}

void io_write(struct io *io, const void *data, size_t len)
{
    if (io->state == IO_DEAD || io->write_closed || io->oom || len == 0)
        return;
    if (data == NULL || evbuffer_add(io->out, data, len) < 0) {
        fail_output(io); /* NULL: a caller's evbuffer_pullup found no memory */
        return;
    }
    queued(io);
}

void io_write_buffer(struct io *io, struct evbuffer *buf)
{
    if (io->state == IO_DEAD || io->write_closed || io->oom) {
        evbuffer_drain(buf, evbuffer_get_length(buf));
        return;
    }
    if (evbuffer_add_buffer(io->out, buf) < 0) {
        evbuffer_drain(buf, evbuffer_get_length(buf));
        fail_output(io);
        return;
    }
    queued(io);
}

int io_move_output(struct io *from, struct io *to)
{
    if (from->oom || evbuffer_add_buffer(to->out, from->out) < 0)
        return -1;
    if (evbuffer_get_length(to->out) > to->out_low)
        to->above_low = true;
    return 0;
}

void io_read_pause(struct io *io, bool paused)
{
    if (io->paused == paused)
        return;
    io->paused = paused;
    update_read(io);
    if (!paused && io->state == IO_OPEN && evbuffer_get_length(io->in) > 0) {
        io->poked = true;
        event_active(&io->rev, EV_READ, 1);
    }
}

void io_close_write(struct io *io)
{
    if (io->closing || io->state == IO_DEAD)
        return;
    io->closing = true;
    if (io->state == IO_OPEN) {
        if (io->wev_added)
            return; /* the pending write half-closes when it is done */
        event_active(&io->wev, EV_WRITE, 1);
    }
}

SSL *io_ssl(const struct io *io)
{
    return io->ssl;
}

bool io_is_open(const struct io *io)
{
    return io->state == IO_OPEN;
}

struct event_base *io_event_base(const struct io *io)
{
    return io->base;
}
