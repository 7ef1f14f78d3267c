/* The connection's side of a stream under test (stream_fixture.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/support/stream_fixture.h"

static void io_nop_read(void *arg)
{
}

static void io_nop_event(void *arg, enum io_event ev)
{
}

static const struct io_handler nop_handler = {.read = io_nop_read, .event = io_nop_event};

static bool ops_ask_cert(void *arg)
{
    struct stream_fixture *sf = arg;
    sf->n_ask++;
    return sf->grant_ask;
}

static void ops_more(void *arg)
{
    struct stream_fixture *sf = arg;
    sf->n_more++;
}

static void ops_done(void *arg, enum stream_end how)
{
    struct stream_fixture *sf = arg;
    sf->n_done++;
    sf->end = how;
}

static const struct stream_client_ops recording_ops = {
    .ask_cert = ops_ask_cert, .more = ops_more, .done = ops_done};

int stream_fixture_open(struct stream_fixture *sf, const struct io_handler *h, void *arg,
                        const char *log_name, char *err, size_t errlen)
{
    return stream_fixture_open_tls(sf, h, arg, log_name, NULL, err, errlen);
}

int stream_fixture_open_tls(struct stream_fixture *sf, const struct io_handler *h, void *arg,
                            const char *log_name, SSL *ssl, char *err, size_t errlen)
{
    int sv[2] = {-1, -1};
    *sf = (struct stream_fixture){.peer_fd = -1};
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) != 0) {
        snprintf(err, errlen, "socketpair: %s", strerror(errno));
        tls_conn_free(ssl);
        goto fail;
    }
    sf->base = event_base_new();
    if (sf->base == NULL) {
        snprintf(err, errlen, "event_base_new failed");
        tls_conn_free(ssl);
        goto fail;
    }
    sf->io = io_new(sf->base, h != NULL ? h : &nop_handler, arg);
    if (sf->io == NULL) {
        snprintf(err, errlen, "io_new failed");
        tls_conn_free(ssl);
        goto fail;
    }
    int fd = sv[0];
    sv[0] = -1; /* the io's from here on, also when io_accept fails, and so is <ssl> */
    if (io_accept(sf->io, fd, ssl) != 0) {
        snprintf(err, errlen, "io_accept failed");
        goto fail;
    }
    sf->peer_fd = sv[1];
    sv[1] = -1;

    sf->conf.max_request_head = 32 * 1024;
    sf->conf.header_timeout_ms = 30000;
    sf->conf.body_timeout_ms = 60000;
    sf->conf.upload_read_ahead_size = 48 * 1024;
    sf->conf.cert_mode = CERT_IGNORE;
    sf->conf.backend.host_header = "eas.test";
    sf->pool.backend = &sf->ba;

    if (log_name != NULL) {
        snprintf(sf->log_path, sizeof sf->log_path, "/tmp/%s-XXXXXX", log_name);
        fd = mkstemp(sf->log_path);
        if (fd < 0) {
            snprintf(err, errlen, "mkstemp %s: %s", sf->log_path, strerror(errno));
            sf->log_path[0] = '\0';
            goto fail;
        }
        close(fd);
    }
    sf->alog = accesslog_open(log_name != NULL ? sf->log_path : "off", err, errlen);
    if (sf->alog == NULL)
        goto fail;

    sf->sc = (struct stream_client){.io = sf->io,
                                    .conf = &sf->conf,
                                    .alog = sf->alog,
                                    .pool = &sf->pool,
                                    .peer = "127.0.0.9",
                                    .conn_id = 7,
                                    .n_requests = 1,
                                    .cert_asked = true,
                                    .ops = &recording_ops,
                                    .arg = sf};
    return 0;

fail:
    if (sv[0] >= 0)
        close(sv[0]);
    if (sv[1] >= 0)
        close(sv[1]);
    stream_fixture_close(sf);
    return -1;
}

void stream_fixture_close(struct stream_fixture *sf)
{
    io_free(sf->io);
    if (sf->peer_fd >= 0)
        close(sf->peer_fd);
    accesslog_close(sf->alog);
    if (sf->log_path[0] != '\0')
        unlink(sf->log_path);
    if (sf->base != NULL)
        event_base_free(sf->base);
    *sf = (struct stream_fixture){.peer_fd = -1};
}
