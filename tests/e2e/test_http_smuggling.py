#!/usr/bin/env python3
"""Request smuggling: every ambiguous or malformed request is refused with 400
and the connection closed, and the backend receives no request of it (not the
ambiguous one, not anything hidden behind it). One test per case, each over a
raw TLS socket so the bytes are exactly the attack's."""
import time

from harness import Reader, check, eq, run, tls_connect

# A request that must never reach the backend, appended behind each attack:
# a proxy that misjudged the framing would forward it as a second request.
HIDDEN = b"GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"


def refused(env, raw, what):
    b = env.backend()
    d = env.certmapd(b)
    s = tls_connect(d.port)
    s.sendall(raw)
    rd = Reader(s)
    r = rd.response()
    eq(r.status, 400, f"{what}: status")
    eq(r.header("connection"), "close", f"{what}: Connection header")
    check(rd.closed(5), f"{what}: certmapd must close the connection after the 400")
    s.close()
    log = d.wait_access(1)
    eq(len(log), 1, f"{what}: access log lines")
    eq(log[0]["reason"], "bad_request", f"{what}: reason")
    time.sleep(0.3)  # anything forwarded would have arrived by now
    eq(b.requests(), [], f"{what}: requests the backend received")


def test_content_length_with_transfer_encoding(env):
    refused(env, b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + HIDDEN, "CL+TE")


def test_transfer_encoding_with_content_length(env):
    refused(env, b"POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 44\r\n\r\n0\r\n\r\n" + HIDDEN, "TE+CL")


def test_differing_duplicate_content_length(env):
    refused(env, b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
            b"Content-Length: 49\r\n\r\nhello" + HIDDEN, "CL 5 and 49")


def test_content_length_list(env):
    refused(env, b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5, 49\r\n\r\nhello"
            + HIDDEN, "CL list")


def test_transfer_encoding_chunked_not_final(env):
    refused(env, b"POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
            b"0\r\n\r\n" + HIDDEN, "TE chunked, gzip")


def test_transfer_encoding_gzip_only(env):
    refused(env, b"POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n"
            + HIDDEN, "TE gzip")


def test_transfer_encoding_chunked_twice(env):
    refused(env, b"POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + HIDDEN, "TE chunked twice")


def test_transfer_encoding_unknown_coding(env):
    refused(env, b"POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n"
            b"0\r\n\r\n" + HIDDEN, "TE xchunked")


def test_space_before_colon(env):
    refused(env, b"POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding : chunked\r\n"
            b"Content-Length: 5\r\n\r\nhello" + HIDDEN, "space before colon")


def test_obs_fold(env):
    refused(env, b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-Folded: a\r\n b\r\n\r\n" + HIDDEN,
            "obs-fold")


def test_obs_fold_empty_first_line(env):
    refused(env, b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-Folded:\r\n\tb\r\n\r\n" + HIDDEN,
            "obs-fold after an empty value")


def test_obs_fold_split_across_reads(env):
    # The fold's line feed ends one TLS record and its space starts the next:
    # the parser sees them in two separate buffers.
    b = env.backend()
    d = env.certmapd(b)
    s = tls_connect(d.port)
    s.sendall(b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-Folded: a\r\n")
    time.sleep(0.3)
    s.sendall(b" b\r\n\r\n" + HIDDEN)
    rd = Reader(s)
    eq(rd.response().status, 400, "status")
    check(rd.closed(5), "connection closed after the 400")
    time.sleep(0.3)
    eq(b.requests(), [], "requests the backend received")


def test_obs_fold_transfer_encoding(env):
    refused(env, b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding:\r\n chunked\r\n\r\nhello" + HIDDEN, "folded TE")


def test_invalid_chunk_size(env):
    refused(env, b"POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\nhello\r\n0\r\n\r\n" + HIDDEN, "chunk size zz")


def test_chunk_size_overflow(env):
    refused(env, b"POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1000000000000000000000005\r\nhello\r\n0\r\n\r\n" + HIDDEN, "chunk size overflow")


def test_negative_content_length(env):
    refused(env, b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: -5\r\n\r\n" + HIDDEN,
            "CL -5")


def test_nul_in_header_value(env):
    refused(env, b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-A: a\x00b\r\n\r\n" + HIDDEN,
            "NUL in a value")


def test_nul_in_header_name(env):
    refused(env, b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-\x00A: b\r\n\r\n" + HIDDEN,
            "NUL in a name")


def test_bare_cr_in_header_value(env):
    refused(env, b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-A: a\rContent-Length: 5\r\n\r\n"
            + HIDDEN, "bare CR in a value")


def test_bare_lf_line_endings(env):
    refused(env, b"GET /x HTTP/1.1\nHost: localhost\nX-A: b\n\n" + HIDDEN, "bare LF")


def test_bare_lf_after_header(env):
    refused(env, b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-A: b\nContent-Length: 5\r\n\r\n"
            + HIDDEN, "bare LF inside the head")


def test_request_line_with_bare_cr(env):
    refused(env, b"GET /x\rHTTP/1.1 HTTP/1.1\r\nHost: localhost\r\n\r\n" + HIDDEN,
            "bare CR in the request line")


if __name__ == "__main__":
    run([v for k, v in sorted(globals().items()) if k.startswith("test_")])
