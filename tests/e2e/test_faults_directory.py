#!/usr/bin/env python3
"""Fault suite, directory side (fakedc.py, real LDAPS on loopback): a
directory that answers too slowly, one that goes down and comes back again
and again, one whose TLS fails (a peer that does not speak TLS, a
certificate that does not verify). Mapped requests fail closed (503
directory_unavailable, never 200 without an answer), in bounded time, and
are served again as soon as a directory answers; a TLS failure on the first
directory fails over to the second."""
import os
import socket
import threading
import time

import leaves
from fakedc import BASE, FakeDC, certmapd_for
from harness import check, curl, curl_until_recovered, eq, pki, run
from test_hostile_directory import PATH, account


def test_slow_directory(env):
    leaf = leaves.issue(env.dir, "slow")
    good = account(f"CN=slow,CN=Users,{BASE}", leaves.strong_altsecid(leaf))
    state = {"delay": 0.0}

    def answer(base, scope):
        # fakedc answers a connection's searches one after the other: a slow
        # answer still pending when the directory is fast again ends at once.
        end = time.time() + state["delay"]
        while time.time() < end and state["delay"] > 0:
            time.sleep(0.05)
        return [good]

    dc = FakeDC(pki("server-chain.pem"), pki("server.key"), BASE, answer)
    env.add_cleanup(dc.stop)
    b, d = certmapd_for(env, [dc.uri])
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, "a fast directory")
    state["delay"] = 4.0  # twice [ldap] timeout
    for _ in range(3):
        t0 = time.time()
        status = curl(d.base + PATH, args=leaf.curl_args(), timeout=20)[0]
        took = time.time() - t0
        eq(status, 503, "a directory slower than [ldap] timeout: fail closed")
        check(took < 8, f"the 503 took {took:.1f} s ([ldap] timeout = 2 s)")
    state["delay"] = 0.0
    eq(curl_until_recovered(d.base + PATH, leaf.curl_args(), 20, 0.5), 200,
       "served again once the directory is fast")
    # Each worker has its own directory connection, and one that timed out
    # reconnects in its own time: until then its requests still fail closed.
    streak, deadline = 0, time.time() + 20
    while streak < 5 and time.time() < deadline:
        status = curl(d.base + PATH, args=leaf.curl_args())[0]
        check(status in (200, 503), f"after recovery: status {status}")
        streak = streak + 1 if status == 200 else 0
    eq(streak, 5, "five requests in a row served once every worker has recovered")


def test_flapping_directory(env):
    leaf = leaves.issue(env.dir, "flap")
    good = account(f"CN=flap,CN=Users,{BASE}", leaves.strong_altsecid(leaf))
    dc = FakeDC(pki("server-chain.pem"), pki("server.key"), BASE, lambda b, s: [good])
    port = dc.port
    b, d = certmapd_for(env, [dc.uri])
    holder = {"dc": dc}
    env.add_cleanup(lambda: holder["dc"].stop())
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, "before the flapping")
    seen = {}
    for cycle in range(4):
        holder["dc"].stop()
        time.sleep(0.3)
        for _ in range(2):
            status = curl(d.base + PATH, args=leaf.curl_args(), timeout=20)[0]
            seen[status] = seen.get(status, 0) + 1
            eq(status, 503, f"cycle {cycle}: the directory is down")
        holder["dc"] = FakeDC(pki("server-chain.pem"), pki("server.key"), BASE,
                              lambda b, s: [good], port=port)
        eq(curl_until_recovered(d.base + PATH, leaf.curl_args(), 20, 0.3), 200,
           f"cycle {cycle}: served again once the directory is back")
    print(f"  4 down/up cycles: answers while down {seen}")
    check(d.proc.poll() is None, "certmapd is still running")


def not_tls_listener():
    """A port whose peer answers a ClientHello with garbage and closes."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)

    def serve():
        while True:
            try:
                c, _ = sock.accept()
            except OSError:
                return
            try:
                c.recv(4096)
                c.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n" + os.urandom(64))
            except OSError:
                pass
            c.close()

    threading.Thread(target=serve, daemon=True).start()
    return sock


def test_tls_failing_directory(env):
    leaf = leaves.issue(env.dir, "tlsf")
    good = account(f"CN=tlsf,CN=Users,{BASE}", leaves.strong_altsecid(leaf))
    bad = not_tls_listener()
    env.add_cleanup(bad.close)
    dc = FakeDC(pki("server-chain.pem"), pki("server.key"), BASE, lambda b, s: [good])
    env.add_cleanup(dc.stop)
    # The first directory's TLS fails: the second one answers.
    b, d = certmapd_for(env, [f"ldaps://127.0.0.1:{bad.getsockname()[1]}", dc.uri])
    for i in range(3):
        eq(curl(d.base + PATH, args=leaf.curl_args(), timeout=20)[0], 200,
           f"request {i} with the first directory's TLS failing")
    d.stop()
    # Only a directory whose certificate does not verify: never served, no crash.
    b2, d2 = None, None
    try:
        b2, d2 = certmapd_for(env, [dc.uri], ca=pki("other-root-ca.crt"))
    except RuntimeError:
        d2 = None  # refused at start-up: also a clean outcome
    if d2 is not None:
        for _ in range(2):
            eq(curl(d2.base + PATH, args=leaf.curl_args(), timeout=20)[0], 503,
               "a directory whose certificate does not verify: fail closed")
        check(d2.proc.poll() is None, "certmapd is still running")
    else:
        err = env.daemons[-1].stderr()
        check("certificate" in err or "TLS" in err or "ldap" in err.lower(),
              f"a refusal at start-up says why: {err[-500:]}")


if __name__ == "__main__":
    run([test_slow_directory, test_flapping_directory, test_tls_failing_directory])
