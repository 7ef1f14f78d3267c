#!/usr/bin/env python3
"""Request and response bodies end to end: 10 MB uploads (Content-Length and
chunked) and downloads (Content-Length, chunked, close-delimited) arrive
byte-exact, checked by SHA-256 on the backend and against backend.py's
pattern on the client; Expect: 100-continue sends 100 before the body and the
backend gets the body exactly once."""
import hashlib
import os
import socket

from backend import pattern
from harness import Reader, check, curl, eq, request_bytes, run, tls_connect

TEN_MB = 10 * 1024 * 1024


def upload_file(env, size):
    path = os.path.join(env.dir, "upload.bin")
    data = os.urandom(size)
    with open(path, "wb") as f:
        f.write(data)
    return path, hashlib.sha256(data).hexdigest()


def upload_10mb(env, curl_args):
    """POSTs 10 MB with curl <curl_args>; checks the status and that the backend got
    exactly those bytes once. Returns (certmapd, the backend's record of it)."""
    b = env.backend()
    d = env.certmapd(b)
    path, sha = upload_file(env, TEN_MB)
    status, _, _ = curl(d.base + "/upload", cert="good",
                        args=["--data-binary", "@" + path, "-H", "Expect:"] + curl_args)
    eq(status, 200, "status")
    reqs = b.requests()
    eq(len(reqs), 1, "requests at the backend")
    eq(reqs[0]["body_len"], TEN_MB, "body length at the backend")
    eq(reqs[0]["body_sha256"], sha, "body SHA-256 at the backend")
    return d, reqs[0]


def test_upload_content_length_10mb(env):
    d, req = upload_10mb(env, [])
    eq(req["chunked"], False, "forwarded with Content-Length")
    h = {k.lower(): v for k, v in req["headers"]}
    eq(h["content-length"], str(TEN_MB), "Content-Length forwarded")
    log = d.wait_access(1)
    check(int(log[0]["in"]) > TEN_MB, f"access log bytes in: {log[0]['in']}")


def test_upload_chunked_10mb(env):
    _, req = upload_10mb(env, ["-H", "Transfer-Encoding: chunked"])
    eq(req["chunked"], True, "forwarded chunked")


def test_upload_chunked_odd_chunks(env):
    # Chunk extensions, odd sizes and trailers from a raw client.
    b = env.backend()
    d = env.certmapd(b)
    s = tls_connect(d.port)
    parts = [os.urandom(n) for n in (1, 7, 4096, 65537, 3)]
    wire = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts)
    s.sendall(request_bytes("POST", "/chunks", [("Transfer-Encoding", "chunked")]) + wire +
              b"0\r\nX-Trailer: t\r\n\r\n")
    r = Reader(s).response()
    eq(r.status, 200, "status")
    got = r.json()
    eq(got["body_len"], sum(map(len, parts)), "body length")
    eq(got["body_sha256"], hashlib.sha256(b"".join(parts)).hexdigest(), "body SHA-256")


def download(env, query, want_chunked):
    b = env.backend()
    d = env.certmapd(b)
    status, body, headers = curl(d.base + "/download?size=%d%s" % (TEN_MB, query), cert="good")
    eq(status, 200, "status")
    eq(len(body), TEN_MB, "downloaded length")
    eq(hashlib.sha256(body).hexdigest(), hashlib.sha256(pattern(TEN_MB)).hexdigest(),
       "downloaded SHA-256")
    check(("transfer-encoding: chunked" in headers.lower()) == want_chunked,
          f"framing towards the client:\n{headers}")
    log = d.wait_access(1)
    check(int(log[0]["out"]) >= TEN_MB, f"access log bytes out: {log[0]['out']}")


def test_download_content_length_10mb(env):
    download(env, "", False)


def test_download_chunked_10mb(env):
    download(env, "&chunked=1", True)


def test_download_close_delimited_10mb(env):
    # The backend ends the body by closing: an HTTP/1.1 client gets it re-chunked.
    download(env, "&nolength=1", True)


def test_download_close_delimited_http10(env):
    b = env.backend()
    d = env.certmapd(b)
    s = tls_connect(d.port)
    s.sendall(b"GET /d?size=100000&nolength=1 HTTP/1.0\r\nHost: localhost\r\n\r\n")
    rd = Reader(s)
    r = rd.response()
    eq(r.status, 200, "status")
    eq(r.header("transfer-encoding"), None, "no chunking towards an HTTP/1.0 client")
    eq(r.body, pattern(100000), "close-delimited body")


def test_expect_100_continue(env):
    b = env.backend()
    d = env.certmapd(b)
    body = os.urandom(300000)
    s = tls_connect(d.port)
    s.sendall(request_bytes("POST", "/expect", [("Content-Length", str(len(body))),
                                                 ("Expect", "100-continue")]))
    rd = Reader(s)
    s.settimeout(5)
    try:
        interim = rd.line()
    except socket.timeout:
        raise AssertionError("no 100 Continue before the body was sent")
    eq(interim, b"HTTP/1.1 100 Continue", "interim status line")
    eq(rd.line(), b"", "end of the interim head")
    s.sendall(body)
    r = rd.response()
    eq(r.status, 200, "final status")
    reqs = b.requests()
    eq(len(reqs), 1, "requests at the backend")
    eq(reqs[0]["body_len"], len(body), "body length at the backend (once)")
    eq(reqs[0]["body_sha256"], hashlib.sha256(body).hexdigest(), "body SHA-256")
    names = [k.lower() for k, _ in reqs[0]["headers"]]
    check("expect" not in names, "Expect is answered by certmapd, not forwarded")
    # The connection stays usable.
    s.sendall(request_bytes("GET", "/after"))
    eq(rd.response().status, 200, "next request on the connection")


def test_expect_100_continue_with_curl(env):
    # curl sends Expect: 100-continue for large bodies and waits for the 100.
    b = env.backend()
    d = env.certmapd(b)
    path, sha = upload_file(env, 2 * 1024 * 1024)
    status, _, headers = curl(d.base + "/upload", cert="good",
                              args=["--data-binary", "@" + path, "--expect100-timeout", "10"])
    eq(status, 200, "status")
    check("HTTP/1.1 100 Continue" in headers, f"curl saw a 100 Continue:\n{headers}")
    reqs = b.requests()
    eq(len(reqs), 1, "requests at the backend")
    eq(reqs[0]["body_sha256"], sha, "body SHA-256")


if __name__ == "__main__":
    run([v for k, v in sorted(globals().items()) if k.startswith("test_")])
