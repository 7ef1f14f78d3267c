#!/usr/bin/env python3
"""A long poll held past 60 s is not cut (issue 3's requirement: EAS Ping and
Sync hold requests for up to 3540 s). The only long test; it takes ~65 s. The
default timeouts apply, so nothing shorter than read_timeout ends the wait."""
import time

from harness import Reader, check, eq, request_bytes, run, tls_connect


def test_long_poll_held_past_60s(env):
    b = env.backend()
    d = env.certmapd(b)
    s = tls_connect(d.port, timeout=90)
    t0 = time.time()
    s.sendall(request_bytes("POST", "/Microsoft-Server-ActiveSync?Cmd=Ping&delay=65",
                            [("Content-Length", "4")], b"ping"))
    rd = Reader(s)
    r = rd.response()
    took = time.time() - t0
    eq(r.status, 200, "status after the long poll")
    check(took >= 65, f"answered after {took:.1f}s")
    eq(r.json()["body_len"], 4, "the request body")
    # The connection is still good for the next request.
    s.sendall(request_bytes("GET", "/after"))
    eq(rd.response().status, 200, "the next request on the same connection")


if __name__ == "__main__":
    run([test_long_poll_held_past_60s])
