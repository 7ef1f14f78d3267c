/* The PROXY protocol header parser (proxy/proxyproto.c) on a table of valid
 * and invalid v1 and v2 headers, each also cut at every byte boundary; and
 * its socket reader (proxy/ppread.c) on a real socket pair: the header split
 * over several writes, and exactly its bytes taken off the socket. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "conf/conf.h"
#include "proxy/ppread.h"
#include "proxy/proxyproto.h"

/* What a client sends after the header: the start of a TLS ClientHello. */
static const uint8_t hello[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01};

static const uint8_t sig2[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

struct hdr {
    uint8_t b[PP_MAX + 64];
    size_t n;
};

static void put(struct hdr *h, const void *p, size_t n)
{
    assert_true(h->n + n <= sizeof h->b);
    if (n == 0)
        return;
    memcpy(h->b + h->n, p, n);
    h->n += n;
}

static struct hdr v1(const char *line)
{
    struct hdr h = {.n = 0};
    put(&h, line, strlen(line));
    return h;
}

/* A v2 header: version/command byte <vc>, family/protocol byte <fp>, then
 * <body> (address block and TLVs) of <n> bytes; <len> is the length field
 * written (-1: the true one). */
static struct hdr v2(uint8_t vc, uint8_t fp, const void *body, size_t n, long len)
{
    struct hdr h = {.n = 0};
    put(&h, sig2, sizeof sig2);
    uint16_t l = (uint16_t)(len < 0 ? (long)n : len);
    uint8_t fixed[4] = {vc, fp, (uint8_t)(l >> 8), (uint8_t)l};
    put(&h, fixed, 4);
    put(&h, body, n);
    return h;
}

/* 10.1.2.3:51000 -> 192.0.2.7:443 */
static const uint8_t inet_block[12] = {10, 1, 2, 3, 192, 0, 2, 7, 0xC7, 0x38, 0x01, 0xBB};

static struct hdr v2_inet_tlvs(const uint8_t *tlvs, size_t n)
{
    uint8_t body[PP_MAX];
    assert_true(sizeof inet_block + n <= sizeof body);
    memcpy(body, inet_block, sizeof inet_block);
    memcpy(body + sizeof inet_block, tlvs, n);
    return v2(0x21, 0x11, body, sizeof inet_block + n, -1);
}

static const char *src_text(const struct pp_result *r, char *buf, size_t n)
{
    const void *a = r->src.ss_family == AF_INET
                        ? (const void *)&((const struct sockaddr_in *)&r->src)->sin_addr
                        : (const void *)&((const struct sockaddr_in6 *)&r->src)->sin6_addr;
    unsigned port =
        ntohs(r->src.ss_family == AF_INET ? ((const struct sockaddr_in *)&r->src)->sin_port
                                          : ((const struct sockaddr_in6 *)&r->src)->sin6_port);
    char ip[INET6_ADDRSTRLEN];
    inet_ntop(r->src.ss_family, a, ip, sizeof ip);
    snprintf(buf, n, "%s %u", ip, port);
    return buf;
}

/* A valid header <h>: every strict prefix is PP_NEED_MORE, the whole is
 * PP_DONE with its own length, also with client bytes behind it; the client
 * address is <want> ("ADDR PORT"), or NULL when the L4 peer stands. */
static void check_good(const char *name, const struct hdr *h, int version, const char *want)
{
    struct pp_result r;
    for (size_t k = 0; k < h->n; k++) {
        enum pp_status st = pp_parse(h->b, k, &r);
        if (st != PP_NEED_MORE)
            fail_msg("%s: prefix of %zu/%zu bytes: got %d (%s), want need-more", name, k, h->n, st,
                     r.why ? r.why : "");
    }
    struct hdr full = *h;
    for (int tail = 0; tail < 2; tail++) {
        if (tail)
            put(&full, hello, sizeof hello);
        enum pp_status st = pp_parse(full.b, full.n, &r);
        if (st != PP_DONE)
            fail_msg("%s%s: got %d (%s), want done", name, tail ? " + ClientHello" : "", st,
                     r.why ? r.why : "");
        if (r.len != h->n)
            fail_msg("%s: length %zu, want %zu", name, r.len, h->n);
        if (r.version != version)
            fail_msg("%s: version %d, want %d", name, r.version, version);
        char got[80];
        if (want == NULL && r.has_addr)
            fail_msg("%s: an address (%s), want none", name, src_text(&r, got, sizeof got));
        if (want != NULL && (!r.has_addr || strcmp(src_text(&r, got, sizeof got), want) != 0))
            fail_msg("%s: address %s, want %s", name, r.has_addr ? got : "none", want);
    }
}

/* An invalid header <h>: no prefix is PP_DONE, the whole (and the whole with
 * more bytes) is PP_BAD, and the reason contains <why>. */
static void check_bad(const char *name, const struct hdr *h, const char *why)
{
    struct pp_result r;
    bool seen_bad = false;
    for (size_t k = 0; k <= h->n; k++) {
        enum pp_status st = pp_parse(h->b, k, &r);
        if (st == PP_DONE)
            fail_msg("%s: prefix of %zu/%zu bytes accepted", name, k, h->n);
        if (seen_bad && st != PP_BAD)
            fail_msg("%s: refused at a shorter prefix, not at %zu", name, k);
        seen_bad = seen_bad || st == PP_BAD;
    }
    struct hdr more = *h;
    put(&more, hello, sizeof hello);
    for (int i = 0; i < 2; i++) {
        const struct hdr *x = i ? &more : h;
        enum pp_status st = pp_parse(x->b, x->n, &r);
        if (st == PP_NEED_MORE && x->n < PP_V1_MAX && x->b[0] == 'P' && !memchr(x->b, '\n', x->n))
            continue; /* a v1 line without its end yet: its fault shows at the CRLF */
        if (st != PP_BAD)
            fail_msg("%s%s: got %d, want refused", name, i ? " + bytes" : "", st);
        if (why != NULL && (r.why == NULL || strstr(r.why, why) == NULL))
            fail_msg("%s: reason \"%s\", want one with \"%s\"", name, r.why ? r.why : "", why);
    }
}

static void test_v1_good(void **state)
{
    (void)state;
    struct hdr h;
    h = v1("PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n");
    check_good("tcp4", &h, 1, "192.0.2.10 56324");
    h = v1("PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n");
    check_good("tcp6", &h, 1, "2001:db8::1 1");
    h = v1("PROXY TCP6 ::ffff:10.0.0.1 ::1 0 443\r\n");
    check_good("tcp6 mapped, port 0", &h, 1, "::ffff:10.0.0.1 0");
    h = v1("PROXY UNKNOWN\r\n");
    check_good("unknown", &h, 1, NULL);
    h = v1("PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n");
    check_good("unknown with junk", &h, 1, NULL);
    h = v1("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
           "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n");
    check_good("longest TCP6", &h, 1, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535");
    /* The longest line the specification allows: 107 bytes. */
    h = v1("PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
           "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n");
    assert_int_equal(h.n, PP_V1_MAX);
    check_good("107 bytes", &h, 1, NULL);
}

static void test_v1_bad(void **state)
{
    (void)state;
    /* Lengths from sizeof: some lines hold a NUL. */
    /* clang-format off */
#define ROW(s, w) {s, sizeof(s) - 1, w}
    /* clang-format on */
    static const struct {
        const char *line;
        size_t len;
        const char *why;
    } rows[] = {
        ROW("GET / HTTP/1.1\r\n", "no PROXY header"),
        ROW("PROXY\r\n", "no PROXY header"),
        ROW("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "no PROXY header"),
        ROW("PROXY \r\n", "no protocol"),
        ROW("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "TCP4, TCP6 or UNKNOWN"),
        ROW("PROXY UNKNOWNX\r\n", "TCP4, TCP6 or UNKNOWN"),
        ROW("PROXY TCP4\r\n", "single spaces"),
        ROW("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "single spaces"),
        ROW("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "single spaces"),
        ROW("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "single spaces"),
        ROW("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "single spaces"),
        ROW("PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", "printable"),
        ROW("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "port"),
        ROW("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "port"),
        ROW("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "port"),
        ROW("PROXY TCP4 1.2.3.4 5.6.7.8 1 +2\r\n", "port"),
        ROW("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "IPv4"),
        ROW("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "IPv4"),
        ROW("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "IPv4"),
        ROW("PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "IPv4"),
        ROW("PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "IPv6"),
        ROW("PROXY TCP6 [::1] ::1 1 2\r\n", "IPv6"),
        ROW("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CR"),
        ROW("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\n", "CR not followed by LF"),
        ROW("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\x80\r\n", "printable"),
        ROW("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\0\r\n", "printable"),
        ROW("PROXY UNKNOWN "
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
            "xxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n",
            "107"),
    };
#undef ROW
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        struct hdr h = {.n = 0};
        put(&h, rows[i].line, rows[i].len);
        check_bad(rows[i].line, &h, rows[i].why);
    }
    /* 108 bytes, the CR being the 107th (found by fuzz_proxyproto). */
    struct hdr l108 = v1("PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                         "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 655355\r\n");
    assert_int_equal(l108.n, PP_V1_MAX + 1);
    check_bad("108 bytes", &l108, "107");
    /* A line that never ends is refused at 107 bytes, not later. */
    struct hdr h = v1("PROXY TCP4 ");
    while (h.n < 200)
        put(&h, "1", 1);
    struct pp_result r;
    assert_int_equal(pp_parse(h.b, PP_V1_MAX - 1, &r), PP_NEED_MORE);
    assert_int_equal(pp_parse(h.b, PP_V1_MAX, &r), PP_BAD);
    assert_non_null(strstr(r.why, "107"));
    /* Not a header at all: a TLS ClientHello, a blank line before a request. */
    struct hdr tls = {.n = 0};
    put(&tls, hello, sizeof hello);
    check_bad("TLS ClientHello", &tls, "no PROXY header");
    h = v1("\r\nGET / HTTP/1.1\r\n"); /* "\r\n" alone may begin a v2 signature */
    check_bad("CRLF", &h, "no PROXY header");
}

static void test_v2_good(void **state)
{
    (void)state;
    struct hdr h;
    h = v2(0x21, 0x11, inet_block, sizeof inet_block, -1);
    check_good("proxy inet", &h, 2, "10.1.2.3 51000");
    uint8_t in6[36] = {0x20, 0x01, 0x0d,     0xb8,        [15] = 1, [16] = 0x20, 0x01,
                       0x0d, 0xb8, [31] = 2, [32] = 0x12, 0x34,     0x01,        0xBB};
    h = v2(0x21, 0x21, in6, sizeof in6, -1);
    check_good("proxy inet6", &h, 2, "2001:db8::1 4660");
    /* TLVs: skipped, whatever their types (AWS VPC endpoint id, NOOP, SSL). */
    static const uint8_t tlvs[] = {0xEA, 0x00, 0x05, 0x01, 'v', 'p', 'c', 'e',
                                   0x04, 0x00, 0x00, /* NOOP, empty */
                                   0x20, 0x00, 0x05, 0x01, 0,   0,   0,   0};
    h = v2_inet_tlvs(tlvs, sizeof tlvs);
    check_good("proxy inet + TLVs", &h, 2, "10.1.2.3 51000");
    /* LOCAL (a health check of the balancer): the L4 peer stands, block discarded. */
    h = v2(0x20, 0x00, NULL, 0, -1);
    check_good("local", &h, 2, NULL);
    h = v2(0x20, 0x11, inet_block, sizeof inet_block, -1);
    check_good("local with an address", &h, 2, NULL);
    static const uint8_t junk[5] = {1, 2, 3, 4, 5};
    h = v2(0x20, 0xFF, junk, sizeof junk, -1);
    check_good("local with junk", &h, 2, NULL);
    /* UNSPEC, AF_UNIX and UNSPEC protocol: no usable address. */
    h = v2(0x21, 0x00, NULL, 0, -1);
    check_good("proxy unspec", &h, 2, NULL);
    uint8_t un[216] = {'/', 't', 'm', 'p'};
    h = v2(0x21, 0x31, un, sizeof un, -1);
    check_good("proxy unix", &h, 2, NULL);
    h = v2(0x21, 0x10, inet_block, sizeof inet_block, -1);
    check_good("proxy inet, protocol unspec", &h, 2, NULL);
    /* The largest allowed: 2048 bytes in all. */
    uint8_t big[PP_V2_MAX - 16 - 12];
    memset(big, 0, sizeof big);
    big[0] = 0x04;
    big[1] = (uint8_t)((sizeof big - 3) >> 8);
    big[2] = (uint8_t)(sizeof big - 3);
    h = v2_inet_tlvs(big, sizeof big);
    assert_int_equal(h.n, PP_V2_MAX);
    check_good("2048 bytes", &h, 2, "10.1.2.3 51000");
}

static void test_v2_bad(void **state)
{
    (void)state;
    struct hdr h;
    /* A good inet header but for its version/command and family/protocol bytes. */
    static const struct {
        uint8_t vc, fp;
        const char *name, *want;
    } fixed[] = {
        {0x11, 0x11, "version 1 byte", "version"},
        {0x31, 0x11, "version 3", "version"},
        {0x22, 0x11, "command 2", "command"},
        {0x21, 0x41, "family 4", "family"},
        {0x21, 0x13, "protocol 3", "family or protocol"},
        {0x21, 0x12, "UDP", "datagram"},
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        h = v2(fixed[i].vc, fixed[i].fp, inet_block, sizeof inet_block, -1);
        check_bad(fixed[i].name, &h, fixed[i].want);
    }
    h = v2(0x21, 0x11, inet_block, 11, -1);
    check_bad("inet block 11 bytes", &h, "shorter");
    uint8_t in6[36] = {0};
    h = v2(0x21, 0x21, in6, 35, -1);
    check_bad("inet6 block 35 bytes", &h, "shorter");
    uint8_t un[215] = {0};
    h = v2(0x21, 0x31, un, sizeof un, -1);
    check_bad("unix block 215 bytes", &h, "shorter");
    h = v2(0x21, 0x11, NULL, 0, 0xFFFF);
    check_bad("length 65535", &h, "2048");
    h = v2(0x21, 0x11, NULL, 0, PP_V2_MAX - 16 + 1);
    check_bad("length one past the bound", &h, "2048");
    static const uint8_t t1[] = {0x04};
    h = v2_inet_tlvs(t1, sizeof t1);
    check_bad("TLV of 1 byte", &h, "TLV");
    static const uint8_t t2[] = {0x04, 0x00};
    h = v2_inet_tlvs(t2, sizeof t2);
    check_bad("TLV of 2 bytes", &h, "TLV");
    static const uint8_t t3[] = {0x04, 0x00, 0x02, 0xAA};
    h = v2_inet_tlvs(t3, sizeof t3);
    check_bad("TLV past the end", &h, "TLV");
    static const uint8_t t4[] = {0x04, 0x00, 0x00, 0x01, 0xFF, 0xFF};
    h = v2_inet_tlvs(t4, sizeof t4);
    check_bad("second TLV past the end", &h, "TLV");
    /* A broken signature, at each of its bytes. */
    for (size_t i = 1; i < sizeof sig2; i++) {
        h = v2(0x21, 0x11, inet_block, sizeof inet_block, -1);
        h.b[i] ^= 0x20;
        check_bad("signature", &h, "no PROXY header");
    }
}

/* ---- the socket reader ----------------------------------------------------------- */

struct outcome {
    int calls;
    enum pp_read_end end;
    struct pp_result r;
    char why[128];
    struct pp_read *p;
};

static void on_end(void *arg, enum pp_read_end end, const struct pp_result *r, const char *why)
{
    struct outcome *o = arg;
    o->calls++;
    o->end = end;
    if (r != NULL)
        o->r = *r;
    snprintf(o->why, sizeof o->why, "%s", why ? why : "");
    pp_read_free(o->p); /* allowed inside */
    o->p = NULL;
}

/* Sends <h> in pieces of <piece> bytes (a loop turn between them), the
 * ClientHello right behind its last piece when <hello_after>, and closes
 * when <close_after>; returns what the reader said. <rest> gets what the socket still
 * held for the TLS layer. */
static struct outcome read_split(const struct hdr *h, size_t piece, bool close_after,
                                 bool hello_after, uint8_t *rest, size_t *rest_len)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    struct event_base *base = event_base_new();
    struct outcome o = {.calls = 0};
    o.p = pp_read_new(base, sv[0], on_end, &o);
    assert_non_null(o.p);
    for (size_t off = 0; off < h->n && o.calls == 0; off += piece) {
        size_t n = h->n - off < piece ? h->n - off : piece;
        assert_int_equal(write(sv[1], h->b + off, n), (ssize_t)n);
        if (off + n == h->n && hello_after)
            assert_int_equal(write(sv[1], hello, sizeof hello), (ssize_t)sizeof hello);
        event_base_loop(base, EVLOOP_NONBLOCK);
        event_base_loop(base, EVLOOP_NONBLOCK);
    }
    if (close_after && o.calls == 0) {
        close(sv[1]);
        sv[1] = -1;
        event_base_loop(base, EVLOOP_NONBLOCK);
    }
    ssize_t got = read(sv[0], rest, 64);
    *rest_len = got > 0 ? (size_t)got : 0;
    pp_read_free(o.p);
    event_base_free(base);
    close(sv[0]);
    if (sv[1] >= 0)
        close(sv[1]);
    return o;
}

static void test_reader_takes_only_the_header(void **state)
{
    (void)state;
    struct hdr hs[2] = {v1("PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n"),
                        v2(0x21, 0x11, inet_block, sizeof inet_block, -1)};
    for (int i = 0; i < 2; i++) {
        for (size_t piece = 1; piece <= hs[i].n; piece++) {
            uint8_t rest[64];
            size_t rest_len;
            struct outcome o = read_split(&hs[i], piece, false, true, rest, &rest_len);
            if (o.calls != 1 || o.end != PPR_DONE)
                fail_msg("v%d in pieces of %zu: %d calls, end %d (%s)", i + 1, piece, o.calls,
                         o.end, o.why);
            assert_int_equal(o.r.len, hs[i].n);
            /* the ClientHello is still in the socket, whole, for TLS */
            if (rest_len != sizeof hello || memcmp(rest, hello, sizeof hello) != 0)
                fail_msg("v%d in pieces of %zu: %zu bytes left, want the %zu of the hello", i + 1,
                         piece, rest_len, sizeof hello);
        }
    }
}

static void test_reader_refusals(void **state)
{
    (void)state;
    uint8_t rest[64];
    size_t rest_len;
    struct hdr tls = {.n = 0};
    put(&tls, hello, sizeof hello);
    struct outcome o = read_split(&tls, sizeof hello, false, false, rest, &rest_len);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.end, PPR_BAD);
    assert_non_null(strstr(o.why, "no PROXY header"));
    /* half a header, then the peer closes */
    struct hdr half = v1("PROXY TCP4 192.0.2.10");
    o = read_split(&half, 4, true, false, rest, &rest_len);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.end, PPR_CLOSED);
    assert_non_null(strstr(o.why, "closed after 21 bytes"));
}

static void test_from_allowed(void **state)
{
    (void)state;
    static struct conf c; /* large: not on the stack */
    memset(&c, 0, sizeof c);
    struct sockaddr_in a4 = {.sin_family = AF_INET};
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6};
    inet_pton(AF_INET, "10.20.30.40", &a4.sin_addr);
    inet_pton(AF_INET6, "2001:db8::5", &a6.sin6_addr);
    assert_true(pp_from_allowed(&c, (struct sockaddr *)&a4)); /* no list: anyone */
    c.n_pp_from = 2;
    c.pp_from[0] = (struct conf_cidr){.family = AF_INET, .bits = 12};
    inet_pton(AF_INET, "10.16.0.0", c.pp_from[0].addr);
    c.pp_from[1] = (struct conf_cidr){.family = AF_INET6, .bits = 127};
    inet_pton(AF_INET6, "2001:db8::4", c.pp_from[1].addr);
    assert_true(pp_from_allowed(&c, (struct sockaddr *)&a4));
    assert_true(pp_from_allowed(&c, (struct sockaddr *)&a6));
    inet_pton(AF_INET, "10.32.0.1", &a4.sin_addr);
    assert_false(pp_from_allowed(&c, (struct sockaddr *)&a4));
    inet_pton(AF_INET6, "2001:db8::6", &a6.sin6_addr);
    assert_false(pp_from_allowed(&c, (struct sockaddr *)&a6));
    c.pp_from[0].bits = 0; /* 0.0.0.0/0: every IPv4 address, still no IPv6 */
    memset(c.pp_from[0].addr, 0, 4);
    assert_true(pp_from_allowed(&c, (struct sockaddr *)&a4));
    assert_false(pp_from_allowed(&c, (struct sockaddr *)&a6));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1_good),
        cmocka_unit_test(test_v1_bad),
        cmocka_unit_test(test_v2_good),
        cmocka_unit_test(test_v2_bad),
        cmocka_unit_test(test_reader_takes_only_the_header),
        cmocka_unit_test(test_reader_refusals),
        cmocka_unit_test(test_from_allowed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
