#!/usr/bin/env python3
"""Request handling end to end: 1 000 keep-alive requests on one connection,
pipelined requests answered in order, HEAD, OPTIONS, both EAS query forms
passed through byte-exact, hop-by-hop headers dropped both ways and
X-Forwarded-For / -Proto set."""
import hashlib

from backend import pattern
from harness import Reader, check, curl, eq, request_bytes, run, tls_connect

EAS_PLAIN = "/Microsoft-Server-ActiveSync?Cmd=Sync&User=alice&DeviceId=ABC&DeviceType=iPhone"
EAS_BASE64 = "/Microsoft-Server-ActiveSync?jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25l"


def test_thousand_keepalive_requests_one_connection(env):
    b = env.backend()
    d = env.certmapd(b, {"server": {"workers": "1"}})
    s = tls_connect(d.port)
    rd = Reader(s)
    for i in range(1000):
        s.sendall(request_bytes("GET", f"/ka?i={i}"))
        r = rd.response()
        eq(r.status, 200, f"request {i}: status")
        eq(r.json()["target"], f"/ka?i={i}", f"request {i}: target")
        check(r.header("connection") != "close", f"request {i}: connection kept")
    s.close()
    reqs = b.requests()
    eq(len(reqs), 1000, "requests at the backend")
    # The upstream pool keeps one backend connection for a sequential client.
    eq(len({r["conn_id"] for r in reqs}), 1, "backend connections used")
    log = d.wait_access(1000)
    eq(len(log), 1000, "access log lines")


def test_pipelined_requests_answered_in_order(env):
    b = env.backend()
    d = env.certmapd(b)
    s = tls_connect(d.port)
    # Different delays: a proxy answering out of order would put /p1 (slow) last.
    wire = b"".join([
        request_bytes("GET", "/p1?delay=0.3"),
        request_bytes("POST", "/p2", [("Content-Length", "5")], b"hello"),
        request_bytes("GET", "/p3?size=70000"),
        request_bytes("POST", "/p4", [("Transfer-Encoding", "chunked")], b"3\r\nabc\r\n0\r\n\r\n"),
        request_bytes("HEAD", "/p5?size=1000"),
        request_bytes("GET", "/p6"),
    ])
    s.sendall(wire)
    rd = Reader(s)
    eq(rd.response().json()["target"], "/p1?delay=0.3", "first answer")
    r2 = rd.response().json()
    eq((r2["target"], r2["body_len"]), ("/p2", 5), "second answer")
    eq(rd.response().body, pattern(70000), "third answer")
    r4 = rd.response().json()
    eq((r4["target"], r4["body_sha256"]), ("/p4", hashlib.sha256(b"abc").hexdigest()),
       "fourth answer")
    r5 = rd.response(head_request=True)
    eq((r5.status, r5.header("content-length")), (200, "1000"), "fifth answer (HEAD)")
    eq(rd.response().json()["target"], "/p6", "sixth answer")
    eq([r["target"] for r in b.requests()],
       ["/p1?delay=0.3", "/p2", "/p3?size=70000", "/p4", "/p5?size=1000", "/p6"],
       "order at the backend")


def test_head(env):
    b = env.backend()
    d = env.certmapd(b)
    s = tls_connect(d.port)
    rd = Reader(s)
    s.sendall(request_bytes("HEAD", "/h?size=123456"))
    r = rd.response(head_request=True)
    eq(r.status, 200, "status")
    eq(r.header("content-length"), "123456", "Content-Length of the GET it stands for")
    # No body bytes may follow: the next answer must start right here.
    s.sendall(request_bytes("HEAD", "/h?size=10&chunked=1"))
    r = rd.response(head_request=True)
    eq(r.status, 200, "status of a HEAD whose GET would be chunked")
    s.sendall(request_bytes("GET", "/after"))
    eq(rd.response().json()["target"], "/after", "the answer after the HEADs")
    eq([r["method"] for r in b.requests()], ["HEAD", "HEAD", "GET"], "methods at the backend")


def test_options(env):
    b = env.backend()
    d = env.certmapd(b)
    for target in ("/Microsoft-Server-ActiveSync", "*"):
        status, body, _ = curl(d.base + "/Microsoft-Server-ActiveSync", cert="good",
                               args=["-X", "OPTIONS", "--request-target", target])
        eq(status, 200, f"OPTIONS {target}: status")
    eq([(r["method"], r["target"]) for r in b.requests()],
       [("OPTIONS", "/Microsoft-Server-ActiveSync"), ("OPTIONS", "*")], "at the backend")


def test_eas_query_forms_byte_exact(env):
    b = env.backend()
    d = env.certmapd(b)
    s = tls_connect(d.port)
    rd = Reader(s)
    targets = [EAS_PLAIN, EAS_BASE64,
               "/Microsoft-Server-ActiveSync?Cmd=Ping&User=CORP%5Calice&DeviceId=X%2FY+Z",
               "/Microsoft-Server-ActiveSync/default.eas?a=%41&b=%%&c=;d"]
    for t in targets:
        body = b"\x03\x01\x6a\x00"  # a WBXML preamble
        s.sendall(request_bytes("POST", t, [("Content-Type", "application/vnd.ms-sync.wbxml"),
                                            ("MS-ASProtocolVersion", "14.1"),
                                            ("Content-Length", str(len(body)))], body))
        eq(rd.response().status, 200, f"{t}: status")
    eq([r["target"] for r in b.requests()], targets, "targets at the backend, byte for byte")


def test_hop_by_hop_dropped_both_ways(env):
    b = env.backend()
    d = env.certmapd(b)
    s = tls_connect(d.port)
    s.sendall(request_bytes("GET", "/hop?hop=1", [
        ("Connection", "keep-alive, X-Client-Hop"), ("X-Client-Hop", "secret"),
        ("Keep-Alive", "timeout=5"), ("Proxy-Connection", "keep-alive"), ("TE", "trailers"),
        ("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ("Trailer", "X-T"), ("Proxy-Authorization", "Basic eDp5"),
        ("X-Forwarded-For", "10.6.6.6"), ("X-Forwarded-Proto", "http"),
        ("X-End-To-End", "kept")]))
    r = Reader(s).response()
    eq(r.status, 200, "status")
    got = {k.lower(): v for k, v in r.json()["headers"]}
    for h in ("connection", "x-client-hop", "keep-alive", "proxy-connection", "te", "upgrade",
              "http2-settings", "trailer", "proxy-authorization"):
        check(h not in got, f"request header {h} reached the backend")
    eq(got.get("x-end-to-end"), "kept", "end-to-end request header")
    eq(got.get("x-forwarded-for"), "127.0.0.1", "X-Forwarded-For replaced")
    eq(got.get("x-forwarded-proto"), "https", "X-Forwarded-Proto replaced")
    names = [k.lower() for k, _ in r.headers]
    for h in ("keep-alive", "proxy-connection", "x-hop-secret"):
        check(h not in names, f"response header {h} reached the client")
    eq(r.header("x-end-to-end"), "1", "end-to-end response header")
    eq(names.count("connection"), 1, "one Connection header, certmapd's own")


def test_http10_client_keepalive_off(env):
    b = env.backend()
    d = env.certmapd(b)
    s = tls_connect(d.port)
    s.sendall(b"GET /ten HTTP/1.0\r\nHost: localhost\r\n\r\n")
    rd = Reader(s)
    r = rd.response()
    eq(r.status, 200, "status")
    eq(r.header("connection"), "close", "an HTTP/1.0 request without keep-alive ends it")
    check(rd.closed(5), "connection closed")
    eq(b.requests()[0]["version"], "HTTP/1.1", "the backend is spoken to in HTTP/1.1")


if __name__ == "__main__":
    run([v for k, v in sorted(globals().items()) if k.startswith("test_")])
