/* The PROXY protocol header parser (proxyproto.h). Strict: what the
 * specification does not allow is refused, since whatever comes in through a
 * proxy_protocol listener decides which client address the backend sees. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "proxy/proxyproto.h"

static const uint8_t v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
static const char v1_sig[] = "PROXY ";
#define V1_SIG_LEN 6
#define V2_FIXED 16

static enum pp_status bad(struct pp_result *r, const char *why)
{
    r->why = why;
    return PP_BAD;
}

/* ---- version 1 ------------------------------------------------------------------- */

/* The next space-separated word of <*p> (up to <end>) into <out> (size <n>,
 * NUL-terminated), <*p> past it and one space. -1: empty, or too long. */
static int v1_word(const char **p, const char *end, char *out, size_t n)
{
    const char *s = *p;
    const char *sp = memchr(s, ' ', (size_t)(end - s));
    const char *e = sp != NULL ? sp : end;
    size_t len = (size_t)(e - s);
    if (len == 0 || len >= n)
        return -1;
    memcpy(out, s, len);
    out[len] = '\0';
    *p = sp != NULL ? sp + 1 : end;
    return sp != NULL ? 1 : 0; /* 1: a space followed */
}

/* A port as the specification writes it: decimal 0..65535, no leading zero. */
static int v1_port(const char *s, uint16_t *port)
{
    size_t n = strlen(s);
    unsigned v = 0;
    if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *port = (uint16_t)v;
    return 0;
}

/* Fills <ss> from text address <a> of family <af> and port <port>. */
static int v1_addr(int af, const char *a, uint16_t port, struct sockaddr_storage *ss,
                   socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    if (af == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        *len = sizeof *in;
        return inet_pton(AF_INET, a, &in->sin_addr) == 1 ? 0 : -1;
    }
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    *len = sizeof *in6;
    return inet_pton(AF_INET6, a, &in6->sin6_addr) == 1 ? 0 : -1;
}

/* The line without its CRLF: "PROXY " already checked. */
static enum pp_status v1_line(const char *line, size_t n, struct pp_result *r)
{
    const char *p = line + V1_SIG_LEN, *end = line + n;
    char proto[16], src[48], dst[48], sport[8], dport[8];
    uint16_t sp, dp;
    int more = v1_word(&p, end, proto, sizeof proto);
    if (more < 0)
        return bad(r, "v1: no protocol after PROXY");
    if (strcmp(proto, "UNKNOWN") == 0) {
        r->has_addr = false; /* whatever follows is to be ignored */
        return PP_DONE;
    }
    int af = strcmp(proto, "TCP4") == 0 ? AF_INET : strcmp(proto, "TCP6") == 0 ? AF_INET6 : 0;
    if (af == 0)
        return bad(r, "v1: protocol is not TCP4, TCP6 or UNKNOWN");
    if (more == 0 || v1_word(&p, end, src, sizeof src) != 1 ||
        v1_word(&p, end, dst, sizeof dst) != 1 || v1_word(&p, end, sport, sizeof sport) != 1 ||
        v1_word(&p, end, dport, sizeof dport) != 0)
        return bad(r, "v1: not \"PROXY TCPx SRC DST SPORT DPORT\" with single spaces");
    if (v1_port(sport, &sp) < 0 || v1_port(dport, &dp) < 0)
        return bad(r, "v1: a port is not a number 0..65535");
    if (v1_addr(af, src, sp, &r->src, &r->src_len) < 0 ||
        v1_addr(af, dst, dp, &r->dst, &r->dst_len) < 0)
        return bad(r, af == AF_INET ? "v1: an address is not dotted IPv4"
                                    : "v1: an address is not IPv6");
    r->has_addr = true;
    return PP_DONE;
}

static enum pp_status v1_parse(const uint8_t *buf, size_t len, struct pp_result *r)
{
    r->version = 1;
    size_t sig = len < V1_SIG_LEN ? len : V1_SIG_LEN;
    if (memcmp(buf, v1_sig, sig) != 0)
        return bad(r, "no PROXY header");
    size_t lim = len < PP_V1_MAX ? len : PP_V1_MAX;
    for (size_t i = 0; i < lim; i++) {
        uint8_t ch = buf[i];
        if (ch == '\r') {
            if (i + 2 > PP_V1_MAX)
                return bad(r, "v1: no CRLF within 107 bytes"); /* the LF would be the 108th */
            if (i + 1 == len)
                return PP_NEED_MORE;
            if (buf[i + 1] != '\n')
                return bad(r, "v1: a CR not followed by LF");
            if (i < V1_SIG_LEN)
                return bad(r, "no PROXY header");
            r->len = i + 2;
            return v1_line((const char *)buf, i, r);
        }
        if (ch == '\n')
            return bad(r, "v1: an LF without a CR before it");
        if (ch < 0x20 || ch > 0x7e)
            return bad(r, "v1: a byte that is not printable ASCII in the line");
    }
    if (len >= PP_V1_MAX)
        return bad(r, "v1: no CRLF within 107 bytes");
    return PP_NEED_MORE;
}

/* ---- version 2 ------------------------------------------------------------------- */

/* The TLVs of <p> (<n> bytes): each a type, a 16-bit length and that many
 * bytes, exactly filling <n>. Their contents are not used. */
static int v2_tlvs(const uint8_t *p, size_t n)
{
    while (n > 0) {
        if (n < 3)
            return -1;
        size_t vlen = (size_t)p[1] << 8 | p[2];
        if (vlen > n - 3)
            return -1;
        p += 3 + vlen;
        n -= 3 + vlen;
    }
    return 0;
}

static enum pp_status v2_parse(const uint8_t *buf, size_t len, struct pp_result *r)
{
    r->version = 2;
    size_t sig = len < sizeof v2_sig ? len : sizeof v2_sig;
    if (memcmp(buf, v2_sig, sig) != 0)
        return bad(r, "no PROXY header");
    if (len > 12 && (buf[12] >> 4) != 2)
        return bad(r, "v2: version is not 2");
    if (len > 12 && (buf[12] & 0xF) > 1)
        return bad(r, "v2: command is neither LOCAL nor PROXY");
    if (len < V2_FIXED)
        return PP_NEED_MORE;
    size_t block = (size_t)buf[14] << 8 | buf[15];
    size_t total = V2_FIXED + block;
    if (total > PP_V2_MAX)
        return bad(r, "v2: header longer than 2048 bytes");
    bool local = (buf[12] & 0xF) == 0;
    unsigned fam = buf[13] >> 4, proto = buf[13] & 0xF;
    if (!local && (fam > 3 || proto > 2))
        return bad(r, "v2: unknown address family or protocol");
    if (!local && proto == 2)
        return bad(r, "v2: a datagram (UDP) header on a TCP listener");
    static const size_t need[4] = {0, 12, 36, 216}; /* UNSPEC, INET, INET6, UNIX */
    if (!local && block < need[fam])
        return bad(r, "v2: address block shorter than its family needs");
    if (len < total)
        return PP_NEED_MORE;
    r->len = total;
    r->has_addr = false;
    if (local)
        return PP_DONE; /* the sender's own connection (health check): block discarded */
    if (v2_tlvs(buf + V2_FIXED + need[fam], block - need[fam]) < 0)
        return bad(r, "v2: a TLV runs past the header");
    if (proto != 1 || (fam != 1 && fam != 2))
        return PP_DONE; /* UNSPEC or AF_UNIX: nothing to use, the L4 peer stands */
    const uint8_t *a = buf + V2_FIXED;
    memset(&r->src, 0, sizeof r->src);
    memset(&r->dst, 0, sizeof r->dst);
    if (fam == 1) {
        struct sockaddr_in *s = (struct sockaddr_in *)&r->src, *d = (struct sockaddr_in *)&r->dst;
        s->sin_family = d->sin_family = AF_INET;
        memcpy(&s->sin_addr, a, 4);
        memcpy(&d->sin_addr, a + 4, 4);
        memcpy(&s->sin_port, a + 8, 2); /* both in network order */
        memcpy(&d->sin_port, a + 10, 2);
        r->src_len = r->dst_len = sizeof *s;
    } else {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&r->src,
                            *d = (struct sockaddr_in6 *)&r->dst;
        s->sin6_family = d->sin6_family = AF_INET6;
        memcpy(&s->sin6_addr, a, 16);
        memcpy(&d->sin6_addr, a + 16, 16);
        memcpy(&s->sin6_port, a + 32, 2);
        memcpy(&d->sin6_port, a + 34, 2);
        r->src_len = r->dst_len = sizeof *s;
    }
    r->has_addr = true;
    return PP_DONE;
}

enum pp_status pp_parse(const uint8_t *buf, size_t len, struct pp_result *r)
{
    memset(r, 0, sizeof *r);
    if (len == 0)
        return PP_NEED_MORE;
    if (buf[0] == v1_sig[0])
        return v1_parse(buf, len, r);
    if (buf[0] == v2_sig[0])
        return v2_parse(buf, len, r);
    return bad(r, "no PROXY header");
}
