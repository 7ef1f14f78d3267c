/* proxy/proxyproto: the PROXY protocol header (HAProxy's proxy-protocol.txt,
 * versions 1 and 2) that an L4 load balancer puts before the client's first
 * byte. Pure: bytes in, a verdict out; no I/O, no allocation. ppread.c reads
 * it off a socket with this parser. */
#ifndef CM_PROXY_PROXYPROTO_H
#define CM_PROXY_PROXYPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Version 1 is one text line of at most 107 bytes, CRLF included. */
#define PP_V1_MAX 107
/* Version 2: the 16-byte fixed part and an address block with TLVs. Longer
 * headers are refused: real senders (HAProxy, AWS, Azure, GCP) send well
 * under this, even with their TLVs. */
#define PP_V2_MAX 2048
/* The most bytes a header can have, either version. */
#define PP_MAX PP_V2_MAX

enum pp_status {
    PP_NEED_MORE = 0, /* a valid beginning: every byte given is part of the header */
    PP_DONE,          /* a whole header of <len> bytes; what follows is the client's */
    PP_BAD,           /* not a PROXY header, or a malformed one: <why> says what */
};

struct pp_result {
    int version;                 /* 1 or 2 (0 until known) */
    size_t len;                  /* PP_DONE: the header's length in bytes */
    bool has_addr;               /* false: LOCAL, UNKNOWN, AF_UNSPEC, AF_UNIX: the L4 peer stands */
    struct sockaddr_storage src; /* has_addr: the client's address and port */
    socklen_t src_len;
    struct sockaddr_storage dst; /* has_addr: the address the client connected to */
    socklen_t dst_len;
    const char *why; /* PP_BAD: a short reason, static text */
};

/* Parses the start of a connection's bytes, <buf> of <len>. PP_NEED_MORE while
 * <buf> is a strict, valid beginning of a header (so that a reader may consume
 * all of it), PP_DONE once a whole header is in (<r>->len of the bytes are
 * it), PP_BAD with <r>->why otherwise. <r> is always filled anew. */
enum pp_status pp_parse(const uint8_t *buf, size_t len, struct pp_result *r);

#endif
