#!/usr/bin/env python3
"""Limits and timeouts end to end: an oversize head is answered 431; a head
trickled byte by byte is cut at header_timeout; an idle keep-alive connection
is closed at keepalive_timeout; a stalled body is cut at body_timeout while a
slow but steady one is not. Each closure is timed with a raw TLS client."""
import time

from harness import Reader, check, eq, request_bytes, run, tls_connect


def closed_within(s, low, high, what):
    t0 = time.time()
    rd = Reader(s)
    check(rd.closed(high + 2), f"{what}: the connection was not closed")
    took = time.time() - t0
    check(low <= took <= high, f"{what}: closed after {took:.2f}s, expected {low}..{high}s")
    return rd


def test_oversize_head_431(env):
    b = env.backend()
    d = env.certmapd(b, {"server": {"max_request_head": "4K"}})
    s = tls_connect(d.port)
    s.sendall(request_bytes("GET", "/big", [("X-Big", "a" * 5000)]))
    rd = Reader(s)
    r = rd.response()
    eq(r.status, 431, "status")
    check(rd.closed(5), "closed after the 431")
    eq(d.wait_access(1)[0]["reason"], "head_too_large", "reason")
    eq(b.requests(), [], "nothing reached the backend")


def test_oversize_head_many_small_headers_431(env):
    b = env.backend()
    d = env.certmapd(b, {"server": {"max_request_head": "4K"}})
    s = tls_connect(d.port)
    s.sendall(request_bytes("GET", "/many", [(f"X-{i}", "v") for i in range(1000)]))
    eq(Reader(s).response().status, 431, "status")
    eq(b.requests(), [], "nothing reached the backend")


def test_oversize_request_line_431(env):
    b = env.backend()
    d = env.certmapd(b, {"server": {"max_request_head": "4K"}})
    s = tls_connect(d.port)
    s.sendall(request_bytes("GET", "/" + "u" * 8000))
    eq(Reader(s).response().status, 431, "status")
    eq(b.requests(), [], "nothing reached the backend")


def head_of(size):
    base = request_bytes("GET", "/fits", [("X-Pad", "")])
    return request_bytes("GET", "/fits", [("X-Pad", "p" * (size - len(base)))])


def test_head_at_the_limit_passes(env):
    b = env.backend()
    d = env.certmapd(b, {"server": {"max_request_head": "4K"}})
    s = tls_connect(d.port)
    rd = Reader(s)
    s.sendall(head_of(4096))
    eq(rd.response().status, 200, "a 4096-byte head with a 4K limit")
    s.sendall(head_of(4097))
    eq(rd.response().status, 431, "a 4097-byte head with a 4K limit")


def test_slow_head_closed_at_header_timeout(env):
    b = env.backend()
    d = env.certmapd(b, {"server": {"header_timeout": "1s"}})
    s = tls_connect(d.port)
    t0 = time.time()
    closed = False
    head = request_bytes("GET", "/slowloris", [("X-Pad", "x" * 200)])
    for i in range(len(head) - 2):  # never the final CRLF
        try:
            s.sendall(head[i:i + 1])
        except OSError:
            closed = True
            break
        s.settimeout(0.1)
        try:
            if s.recv(1) == b"":
                closed = True
                break
        except (TimeoutError, OSError) as e:
            if not isinstance(e, TimeoutError) and "timed out" not in str(e):
                closed = True
                break
        if time.time() - t0 > 4:
            break
    took = time.time() - t0
    check(closed, "a head trickled for 4 s was never cut")
    check(0.9 <= took <= 2.0, f"closed after {took:.2f}s with header_timeout = 1s")
    eq(b.requests(), [], "nothing reached the backend")


def test_idle_keepalive_closed(env):
    b = env.backend()
    d = env.certmapd(b, {"server": {"keepalive_timeout": "1s"}})
    s = tls_connect(d.port)
    s.sendall(request_bytes("GET", "/once"))
    eq(Reader(s).response().status, 200, "status")
    closed_within(s, 0.9, 2.0, "idle keep-alive connection")


def test_keepalive_outlives_header_timeout(env):
    # An idle connection is bounded by keepalive_timeout, not header_timeout.
    b = env.backend()
    d = env.certmapd(b, {"server": {"keepalive_timeout": "5s", "header_timeout": "1s"}})
    s = tls_connect(d.port)
    rd = Reader(s)
    s.sendall(request_bytes("GET", "/one"))
    eq(rd.response().status, 200, "first")
    time.sleep(2)
    s.sendall(request_bytes("GET", "/two"))
    eq(rd.response().status, 200, "second, after idling longer than header_timeout")


def test_stalled_body_closed_at_body_timeout(env):
    b = env.backend()
    d = env.certmapd(b, {"server": {"body_timeout": "1s", "header_timeout": "30s"}})
    s = tls_connect(d.port)
    s.sendall(request_bytes("POST", "/stall", [("Content-Length", "100")], b"x" * 10))
    closed_within(s, 0.9, 2.0, "stalled body")
    eq(b.requests(), [], "no complete request at the backend")
    check(b.wait_events(lambda e: e["how"] == "eof_in_body"),
          f"the backend connection was closed mid-body: {b.events()}")


def test_slow_steady_body_not_cut(env):
    # A body that keeps moving may take longer than body_timeout and header_timeout.
    b = env.backend()
    d = env.certmapd(b, {"server": {"body_timeout": "1s", "header_timeout": "1s"}})
    s = tls_connect(d.port)
    s.sendall(request_bytes("POST", "/steady", [("Content-Length", "6")]))
    for ch in b"steady":
        time.sleep(0.5)
        s.sendall(bytes([ch]))
    r = Reader(s).response()
    eq(r.status, 200, "status after a 3 s upload")
    eq(r.json()["body_len"], 6, "body length")


if __name__ == "__main__":
    run([v for k, v in sorted(globals().items()) if k.startswith("test_")])
