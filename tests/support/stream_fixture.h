/* The connection's side of a stream under test (proxy/stream.c against the
 * fake upstream, tests/support/fake_upstream.c, or the real one): a
 * transport (io/), plain or TLS, over one end of a socket pair, the other end
 * left to the test as the client; a conf with the request path's defaults;
 * an access log; and the struct stream_client that stream_new() takes, whose
 * ops record what the stream asked of its connection. Shared by
 * tests/unit/proxy/test_stream*.c, test_upstream_alloc.c and
 * tests/fuzz/fuzz_http_stream.c; link it as a source of the executable, like
 * fake_upstream.c. */
#ifndef CM_TESTS_STREAM_FIXTURE_H
#define CM_TESTS_STREAM_FIXTURE_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/event.h>

#include "conf/conf.h"
#include "io/io.h"
#include "proxy/accesslog.h"
#include "proxy/stream.h"
#include "proxy/upstream.h"

struct stream_fixture {
    struct event_base *base;
    struct io *io;    /* the stream's side of the socket pair */
    int peer_fd;      /* the client's side: what the stream wrote is read here */
    struct conf conf; /* the defaults of stream_fixture_open(); a test changes what it needs */
    struct upstream_pool pool;
    struct backend_set ba;
    struct accesslog *alog;
    char log_path[64]; /* the access log's file; "" when it is "off" */
    struct stream_client sc;
    /* What the stream asked through sc's ops. */
    int n_ask, n_more, n_done;
    enum stream_end end; /* how it ended, at the last done */
    bool grant_ask;      /* what ask_cert answers: a late certificate may be asked for */
};

/* Makes <sf>: the io's events go to <h> with <arg> (NULL: ignored), the
 * stream's calls to the counters above. With <log_name>, the access log is a new file
 * /tmp/<log_name>-XXXXXX (removed by stream_fixture_close()); with NULL it is
 * "off". Returns 0, or -1 with what failed in <err>, <sf> then holding
 * nothing. */
int stream_fixture_open(struct stream_fixture *sf, const struct io_handler *h, void *arg,
                        const char *log_name, char *err, size_t errlen);

/* The same over TLS: the io takes <ssl>, a server SSL (tls_conn_new), whose
 * handshake starts; the test plays the client on <sf>->peer_fd. <ssl> is
 * the fixture's (freed) also on failure. */
int stream_fixture_open_tls(struct stream_fixture *sf, const struct io_handler *h, void *arg,
                            const char *log_name, SSL *ssl, char *err, size_t errlen);

/* Frees what stream_fixture_open() made: the io, the client's end, the access
 * log and its file, the event base. */
void stream_fixture_close(struct stream_fixture *sf);

#endif
