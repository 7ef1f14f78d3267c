/* holdback: a plain-HTTP backend that holds EAS long polls.
 *
 *   holdback --port N [--host 127.0.0.1] [--count-file F] [--max-time S]
 *
 * What an Exchange server does with a `Cmd=Ping` it has nothing to report for:
 * takes the request and says nothing until the heartbeat ends. Here the
 * heartbeat never ends: a request whose request line holds `Cmd=Ping` is read
 * (head and body) and never answered; the connection is held until the front
 * closes it. Any other request gets `200 ok` at once, keep-alive, so a front can
 * be checked before the held phase. One thread, one libevent loop, a few hundred
 * bytes per held connection (the front's memory is what is measured).
 *
 * --count-file is rewritten (write + rename) at most every 100 ms when the
 * count changed: "held H\nconnections C\n", so the runner can wait until every
 * Ping really reached the backend. Stops on SIGTERM / SIGINT or after
 * --max-time (default 3600 s), so it is never left behind. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#define HB_HEAD_MAX 8192

static const char hb_ok[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                            "Content-Length: 3\r\n\r\nok\n";

struct hb {
    struct event_base *base;
    const char *count_file;
    long held, conns;
    long written_held, written_conns;
};

struct hb_conn {
    struct hb *hb;
    struct event *ev;
    int fd;
    int holding;
    long long skip; /* body bytes of an answered request still to discard */
    size_t len;
    char *head; /* NULL once held: a held connection only discards */
};

static void conn_free(struct hb_conn *c)
{
    if (c->holding)
        c->hb->held--;
    c->hb->conns--;
    event_free(c->ev);
    close(c->fd);
    free(c->head);
    free(c);
}

/* The value of Content-Length in the head <h> of <len> bytes, 0 when absent. */
static long long content_length(const char *h, size_t len)
{
    static const char name[] = "\ncontent-length:";
    size_t nl = sizeof name - 1;
    for (size_t i = 0; i + nl < len; i++) {
        if (strncasecmp(h + i, name, nl) == 0)
            return strtoll(h + i + nl, NULL, 10);
    }
    return 0;
}

/* Answers or holds every complete head in c->head. Returns -1 to close. */
static int conn_heads(struct hb_conn *c)
{
    for (;;) {
        if (c->skip > 0) {
            size_t n = (long long)c->len < c->skip ? c->len : (size_t)c->skip;
            memmove(c->head, c->head + n, c->len - n);
            c->len -= n;
            c->skip -= (long long)n;
            if (c->skip > 0)
                return 0;
        }
        char *end = memmem(c->head, c->len, "\r\n\r\n", 4);
        if (end == NULL)
            return c->len >= HB_HEAD_MAX ? -1 : 0;
        size_t hlen = (size_t)(end + 4 - c->head);
        char *eol = memchr(c->head, '\n', hlen);
        if (memmem(c->head, (size_t)(eol - c->head), "Cmd=Ping", 8) != NULL) {
            /* the long poll: from now on, read and discard until the front closes */
            c->holding = 1;
            c->hb->held++;
            free(c->head);
            c->head = NULL;
            c->len = 0;
            return 0;
        }
        c->skip = content_length(c->head, hlen);
        memmove(c->head, c->head + hlen, c->len - hlen);
        c->len -= hlen;
        if (send(c->fd, hb_ok, sizeof hb_ok - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof hb_ok - 1))
            return -1; /* a 76-byte answer that does not fit: the front is gone */
    }
}

static void conn_read(evutil_socket_t fd, short what, void *arg)
{
    struct hb_conn *c = arg;
    char scratch[4096];
    (void)what;
    for (;;) {
        char *dst = c->head != NULL ? c->head + c->len : scratch;
        size_t room = c->head != NULL ? HB_HEAD_MAX - c->len : sizeof scratch;
        ssize_t n = recv(fd, dst, room, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            conn_free(c);
            return;
        }
        if (n < 0)
            return;
        if (c->head != NULL) {
            c->len += (size_t)n;
            if (conn_heads(c) < 0) {
                conn_free(c);
                return;
            }
        }
    }
}

static void on_accept(evutil_socket_t lfd, short what, void *arg)
{
    struct hb *hb = arg;
    (void)what;
    for (int i = 0; i < 256; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or out of descriptors: the front will see it */
        struct hb_conn *c = calloc(1, sizeof *c);
        if (c != NULL)
            c->head = malloc(HB_HEAD_MAX);
        if (c != NULL)
            c->ev = event_new(hb->base, fd, EV_READ | EV_PERSIST, conn_read, c);
        if (c == NULL || c->head == NULL || c->ev == NULL || event_add(c->ev, NULL) < 0) {
            if (c != NULL) {
                if (c->ev != NULL)
                    event_free(c->ev);
                free(c->head);
                free(c);
            }
            close(fd);
            continue;
        }
        c->hb = hb;
        c->fd = fd;
        hb->conns++;
    }
}

static void write_count(struct hb *hb)
{
    char tmp[4096];
    if (hb->count_file == NULL || (hb->held == hb->written_held && hb->conns == hb->written_conns))
        return;
    snprintf(tmp, sizeof tmp, "%s.tmp", hb->count_file);
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return;
    fprintf(f, "held %ld\nconnections %ld\n", hb->held, hb->conns);
    if (fclose(f) == 0 && rename(tmp, hb->count_file) == 0) {
        hb->written_held = hb->held;
        hb->written_conns = hb->conns;
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    write_count(arg);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopexit(arg, NULL);
}

static void usage(void)
{
    fprintf(stderr, "usage: holdback --port N [--host ADDR] [--count-file F] [--max-time S]\n");
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {{"host", 1, NULL, 'H'},
                                             {"port", 1, NULL, 'p'},
                                             {"count-file", 1, NULL, 'f'},
                                             {"max-time", 1, NULL, 'm'},
                                             {NULL, 0, NULL, 0}};
    struct hb hb = {.written_held = -1, .written_conns = -1};
    const char *host = "127.0.0.1";
    int port = 0, ch, lfd = -1, rc = 1;
    long max_time = 3600;
    struct event *lev = NULL, *tick = NULL, *sigterm = NULL, *sigint = NULL;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'H':
            host = optarg;
            break;
        case 'p':
            port = atoi(optarg);
            break;
        case 'f':
            hb.count_file = optarg;
            break;
        case 'm':
            max_time = atol(optarg);
            break;
        default:
            usage();
            return 2;
        }
    }
    if (optind != argc || port <= 0 || port > 65535 || max_time <= 0) {
        usage();
        return 2;
    }
    /* one descriptor per held connection: take all the hard limit allows */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "holdback: --host must be an IPv4 address\n");
        return 2;
    }
    int one = 1;
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 4096) < 0) {
        fprintf(stderr, "holdback: %s:%d: %s\n", host, port, strerror(errno));
        goto out;
    }
    hb.base = event_base_new();
    if (hb.base == NULL)
        goto out;
    struct timeval tv_tick = {0, 100000}, tv_max = {max_time, 0};
    lev = event_new(hb.base, lfd, EV_READ | EV_PERSIST, on_accept, &hb);
    tick = event_new(hb.base, -1, EV_PERSIST, on_tick, &hb);
    sigterm = evsignal_new(hb.base, SIGTERM, on_signal, hb.base);
    sigint = evsignal_new(hb.base, SIGINT, on_signal, hb.base);
    if (lev == NULL || tick == NULL || sigterm == NULL || sigint == NULL ||
        event_add(lev, NULL) < 0 || event_add(tick, &tv_tick) < 0 || event_add(sigterm, NULL) < 0 ||
        event_add(sigint, NULL) < 0) {
        fprintf(stderr, "holdback: cannot set up the event loop\n");
        goto out;
    }
    write_count(&hb);
    event_base_loopexit(hb.base, &tv_max);
    event_base_dispatch(hb.base);
    rc = 0;
out:
    /* held connections are closed by exit; only the loop's own objects here */
    if (lev != NULL)
        event_free(lev);
    if (tick != NULL)
        event_free(tick);
    if (sigterm != NULL)
        event_free(sigterm);
    if (sigint != NULL)
        event_free(sigint);
    if (hb.base != NULL)
        event_base_free(hb.base);
    if (lfd >= 0)
        close(lfd);
    return rc;
}
