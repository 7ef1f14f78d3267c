#!/usr/bin/env python3
"""Several backend servers ([backend] url repeated or listed): round robin
over real backends, a server that refuses or fails TLS skipped for
fail_timeout and tried again after (connection attempts counted at its port),
every server down (tried anyway, then 502), a request never replayed on
another server once it was sent (a POST or a GET the backend dropped), a
pooled connection reused only for its own server, and what -t refuses."""
import socket
import subprocess
import threading
import time

from harness import BIN, Reader, check, curl, eq, free_port, pki, request_bytes, run, tls_connect


def addr(b_or_port):
    port = b_or_port if isinstance(b_or_port, int) else b_or_port.port
    return f"127.0.0.1:{port}"


def servers_seen(backends):
    return [len(b.requests()) for b in backends]


def several(env, urls, workers="1", **backend):
    """certmapd with <workers> worker(s), [backend] url = each of <urls>, and the
    other [backend] keys <backend>."""
    return env.certmapd(sections={"server": {"workers": workers},
                                  "backend": {"url": urls, **backend}})


def all_ok(d, prefix, n, when=""):
    """<n> requests, /<prefix>0 to /<prefix>n-1, each on a new client connection:
    each must get 200 (<when>: what the failure message adds)."""
    for i in range(n):
        status, _, _ = curl(d.base + f"/{prefix}{i}", cert="good")
        eq(status, 200, f"request {i}" + (f" {when}" if when else ""))


class CountingListener:
    """Accepts TCP connections on 127.0.0.1 and closes each at once, counting
    them: to an https client, a server that fails every TLS handshake."""

    def __init__(self, port=0):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self.lock = threading.Lock()
        self.stopped = False
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.count += 1
            c.close()

    def attempts(self):
        with self.lock:
            return self.count

    def close(self):
        self.stopped = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


def tls_and_failing(env):
    """An https backend, and a CountingListener (closed when the test ends)."""
    good = env.backend(tls=True)
    bad = CountingListener()
    env.add_cleanup(bad.close)
    return good, bad


def test_round_robin_spreads(env):
    """Three servers, one worker: nine requests on separate client connections
    go three to each, in turn; on one client connection the pool keeps one
    backend connection per server and reuses each for its own server only."""
    bs = [env.backend() for _ in range(3)]
    d = several(env, [b.url for b in bs])
    all_ok(d, "rr", 9)
    eq(servers_seen(bs), [3, 3, 3], "requests per server")
    for k, b in enumerate(bs):
        eq([r["target"] for r in b.requests()], [f"/rr{i}" for i in range(k, 9, 3)],
           f"server {k}: its turns")
    log = d.wait_access(9)
    eq([l["upstream"] for l in log], [addr(bs[i % 3]) for i in range(9)], "upstream= trail")
    for b in bs:
        b.clear()
    s = tls_connect(d.port)
    rd = Reader(s)
    for i in range(6):
        s.sendall(request_bytes("GET", f"/ka{i}"))
        eq(rd.response().status, 200, f"keep-alive request {i}")
    eq(servers_seen(bs), [2, 2, 2], "keep-alive requests per server")
    for k, b in enumerate(bs):
        reqs = b.requests()
        # Each server's second request came on the backend connection it had
        # before (pooled for that server), not on another server's.
        eq(reqs[0]["conn_id"], reqs[1]["conn_id"], f"server {k}: one pooled connection")
        eq(reqs[1]["conn_requests"], reqs[0]["conn_requests"] + 1, f"server {k}: reused")


def test_refused_server_skipped_for_fail_timeout(env):
    """A stopped server (connection refused): every request still gets 200,
    from the other servers; the stopped one is tried once, then skipped for
    fail_timeout, then tried again; once it is back it serves again, and each
    transition is logged once."""
    a, b, c = env.backend(), env.backend(), env.backend()
    d = several(env, [a.url, b.url, c.url], fail_timeout="3s")
    port_b = b.port
    b.stop()
    all_ok(d, "x", 6, "with a server stopped")
    log = d.wait_access(6)
    trails = [l["upstream"] for l in log]
    # Request 0 goes to a; request 1 is b's turn: refused, then c. From then on
    # b is skipped: a and c alternate.
    eq(trails[:2], [addr(a), f"{addr(port_b)}(error),{addr(c)}"], "b tried once")
    check(all(addr(port_b) not in t for t in trails[2:]), f"b skipped afterwards: {trails}")
    eq(servers_seen([a, c]), [3, 3], "a and c share the load")
    eq(d.stderr().count(f"backend server {addr(port_b)} is down"), 1, "down logged once")

    time.sleep(3.2)  # fail_timeout is over: b is tried again, and is still down
    all_ok(d, "y", 3, "after fail_timeout")
    trails = [l["upstream"] for l in d.wait_access(9)[6:]]
    eq(sum(addr(port_b) + "(error)" in t for t in trails), 1, f"b retried once: {trails}")
    eq(d.stderr().count(f"backend server {addr(port_b)} is down"), 1,
       "still down: not logged again")

    b.start(port=port_b)
    time.sleep(3.2)
    all_ok(d, "z", 6, "with b back")
    eq(len(b.requests()), 2, "b serves its share again")
    eq(d.stderr().count(f"backend server {addr(port_b)} is up again"), 1, "up logged once")


def test_tls_failing_server_attempts_counted(env):
    """https servers: one is a listener that accepts and closes every
    connection (a failed TLS handshake, as a server whose TLS is broken).
    The attempts at its port are counted: one, then none during
    fail_timeout, then one more once it is over."""
    good, bad = tls_and_failing(env)
    d = several(env, [f"https://127.0.0.1:{bad.port}", f"https://127.0.0.1:{good.port}"],
                ca_file=pki("root-ca.crt"), fail_timeout="3s")
    t0 = time.time()
    all_ok(d, "t", 8)
    took = time.time() - t0
    check(took < 3, f"the requests took {took:.2f}s, more than fail_timeout")
    eq(bad.attempts(), 1, "connection attempts at the failing server within fail_timeout")
    eq(len(good.requests()), 8, "the good server served every request")
    eq(d.wait_access(8)[0]["upstream"], f"{addr(bad.port)}(error),{addr(good)}", "trail")
    time.sleep(3.2)
    all_ok(d, "u", 4, "after fail_timeout")
    eq(bad.attempts(), 2, "tried once more after fail_timeout, then skipped again")
    eq(d.stderr().count(f"backend server {addr(bad.port)} is down"), 1, "down logged once")


def test_every_server_down_tried_anyway(env):
    """Both servers refuse: each request still tries both (not a 502 without
    trying), the least recently failed first, then 502 backend_unavailable;
    a server that comes back within fail_timeout serves at once."""
    p1, p2 = free_port(), free_port()
    d = several(env, [f"http://127.0.0.1:{p1}", f"http://127.0.0.1:{p2}"], fail_timeout="1m")
    for i in range(3):
        status, _, _ = curl(d.base + f"/d{i}", cert="good")
        eq(status, 502, f"request {i}")
    log = d.wait_access(3)
    want = f"{addr(p1)}(error),{addr(p2)}(error)"
    eq([(l["reason"], l["upstream"]) for l in log], [("backend_unavailable", want)] * 3,
       "every server tried, p1 (the least recently failed) first")
    b = env.backend()
    b.stop()
    b.start(port=p2)
    status, _, _ = curl(d.base + "/back", cert="good")
    eq(status, 200, "a server back within fail_timeout serves")
    eq(d.wait_access(4)[3]["upstream"], f"{addr(p1)}(error),{addr(p2)}", "trail")
    eq(d.stderr().count(f"backend server {addr(p2)} is up again"), 1, "up logged")


def test_sent_request_never_replayed_elsewhere(env):
    """The first server accepts the request, then closes without answering.
    A POST (as an EAS Sync or Ping) gets 502 and never reaches the second
    server; nor does a GET sent on a new connection (only a request that was
    not sent, or a stale pooled connection's, goes again)."""
    a, b = env.backend(), env.backend()
    d = several(env, [a.url, b.url])
    s = tls_connect(d.port)
    s.sendall(request_bytes("POST", "/Microsoft-Server-ActiveSync?Cmd=Ping&abort=1",
                            [("Content-Length", "5")], b"hello"))
    r = Reader(s).response()
    eq(r.status, 502, "the POST the server dropped")
    s.close()
    eq([x["method"] for x in a.requests()], ["POST"], "the first server got it, once")
    eq(b.requests(), [], "the second server never saw the POST")
    eq(b.events(), [], "nor any connection for it")
    line = d.wait_access(1)[0]
    eq((line["reason"], line["upstream"]), ("backend_unavailable", addr(a)), "reason, trail")
    # Server a's turn again for the next new connection: b gets this one.
    status, _, _ = curl(d.base + "/between", cert="good")
    eq(status, 200, "the next request")
    status, _, _ = curl(d.base + "/get?abort=1", cert="good")
    eq(status, 502, "a GET the server dropped after it was sent")
    eq([x["target"] for x in a.requests()],
       ["/Microsoft-Server-ActiveSync?Cmd=Ping&abort=1", "/get?abort=1"], "at a")
    eq([x["target"] for x in b.requests()], ["/between"], "b never saw the GET")
    check("is down" not in d.stderr(), "a server that took the connection is not marked down")


def test_unsent_post_fails_over(env):
    """A POST whose first server refuses the connection was not sent: it goes
    to the next server, whole, once."""
    a = env.backend()
    dead = free_port()
    d = several(env, [f"http://127.0.0.1:{dead}", a.url])
    status, body, _ = curl(d.base + "/post", cert="good", args=["--data-binary", "@-"],
                          data=b"x" * 1000)
    eq(status, 200, "the POST")
    reqs = a.requests()
    eq([(x["method"], x["body_len"]) for x in reqs], [("POST", 1000)], "at the live server, once")
    eq(d.wait_access(1)[0]["upstream"], f"{addr(dead)}(error),{addr(a)}", "trail")


def test_stale_pooled_get_retried_with_several_servers(env):
    """The stale pooled connection retry keeps its semantics with several
    servers: a GET whose pooled connection the server had closed goes once
    more on a new connection; a POST does not."""
    a, b = env.backend(), env.backend()
    d = several(env, [a.url, b.url])
    s = tls_connect(d.port)
    rd = Reader(s)
    s.sendall(request_bytes("GET", "/first?dropnext=1"))  # a, pooled, drops its next
    eq(rd.response().status, 200, "first")
    s.sendall(request_bytes("GET", "/b1"))                 # b's turn
    eq(rd.response().status, 200, "second")
    s.sendall(request_bytes("GET", "/again"))              # a's turn: the stale one
    r = rd.response()
    eq(r.status, 200, "retried on a new connection")
    eq(r.json()["target"], "/again", "the retried request")
    total = [x["target"] for x in a.requests() + b.requests()]
    eq(sorted(total), sorted(["/first?dropnext=1", "/b1", "/again"]), "each request once")
    line = d.wait_access(3)[2]
    check(line["upstream"].startswith(f"{addr(a)}(stale),"), f"trail {line['upstream']}")


class FixedAnswer:
    """An HTTP server on 127.0.0.1 that answers every request with <status>
    and closes; records the request lines it got."""

    def __init__(self, status):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.status = status
        self.lines = []
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                c.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = c.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    self.lines.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                    c.sendall(f"HTTP/1.1 {self.status} No\r\nContent-Length: 0\r\n"
                              "Connection: close\r\n\r\n".encode())
                except OSError:
                    pass

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def test_health_checks_mark_down_and_up(env):
    """health_check = GET /health every 300 ms: a server answering 503 is
    marked down without any client request and gets none; a server that
    stops is marked down by the checks alone, and up again when it answers
    once more; the checks carry the server's Host."""
    a, b = env.backend(), env.backend()
    sick = FixedAnswer(503)
    env.add_cleanup(sick.close)
    d = several(env, [a.url, b.url, f"http://127.0.0.1:{sick.port}"], workers="2",
                health_check="GET /health", health_interval="300ms", health_timeout="1s",
                fail_timeout="0")
    down = f"backend server {addr(sick.port)} is down (health check answered 503)"
    wait_for(lambda: down in d.stderr(), 5, "the 503 server marked down")
    wait_for(lambda: any(r["target"] == "/health" for r in b.requests()), 5, "b checked")
    check(all(l == "GET /health HTTP/1.1" for l in sick.lines), f"checks: {sick.lines}")
    hdrs = dict(next(r for r in a.requests() if r["target"] == "/health")["headers"])
    eq(hdrs.get("Host"), addr(a), "the check's Host header")
    all_ok(d, "h", 6)
    check(all(l == "GET /health HTTP/1.1" for l in sick.lines), "the sick server got no request")
    traffic = lambda x: [r for r in x.requests() if r["target"] != "/health"]
    eq(len(traffic(a)) + len(traffic(b)), 6, "a and b served every request")
    check(all(addr(sick.port) not in l["upstream"] for l in d.wait_access(6)),
          "no request tried the sick server")
    eq(d.stderr().count(down), 1, "down logged once, however many checks failed")

    port_b = b.port
    b.stop()
    wait_for(lambda: f"backend server {addr(port_b)} is down (health check:" in d.stderr(), 5,
             "the stopped server marked down by the checks")
    a.clear()
    all_ok(d, "s", 4, "with b stopped")
    check(all(addr(port_b) not in l["upstream"] for l in d.wait_access(10)[6:]),
          "no request tried the stopped server")
    eq(len(traffic(a)), 4, "a served them")
    b.start(port=port_b)
    wait_for(lambda: f"backend server {addr(port_b)} is up again (health check answered 200)"
             in d.stderr(), 5, "b back up by the checks")
    all_ok(d, "t", 4, "with b back")
    check(len(traffic(b)) >= 1, "b serves again")


def test_health_checks_over_tls(env):
    """https servers with health checks: the verified one stays up and is
    checked over TLS; one whose TLS handshake fails is marked down by the
    checks and no client request is sent its way."""
    good, bad = tls_and_failing(env)
    d = several(env, [f"https://127.0.0.1:{bad.port}", f"https://localhost:{good.port}"],
                ca_file=pki("root-ca.crt"), health_check="HEAD /healthcheck.htm",
                health_interval="200ms")
    wait_for(lambda: f"backend server {addr(bad.port)} is down (health check:" in d.stderr(), 5,
             "the TLS-failing server marked down by a check")
    wait_for(lambda: any(r["method"] == "HEAD" for r in good.requests()), 5, "good checked")
    check(f"localhost:{good.port} is down" not in d.stderr(), "the good server stays up")
    before, t0 = bad.attempts(), time.time()
    all_ok(d, "c", 5)
    rounds = int((time.time() - t0) / 0.2) + 2
    check(all(addr(bad.port) not in l["upstream"] for l in d.wait_access(5)),
          "no request tried the server the checks found down")
    eq([r["target"] for r in good.requests() if r["method"] == "GET"],
       [f"/c{i}" for i in range(5)], "the good server served them")
    check(bad.attempts() - before <= rounds, "only the checks reach the bad server")


def check_config(env, text):
    path = f"{env.dir}/check.conf"
    with open(path, "w") as f:
        f.write(text)
    return path, subprocess.run([BIN, "-t", "-c", path], capture_output=True, text=True,
                                timeout=30)


def test_config_check_every_server(env):
    base = ("[tls]\ncertificate = {cert}\nprivate_key = {key}\n"
            "[client_certificate]\nmode = ignore\n[backend]\n").format(
        cert=pki("server-chain.pem"), key=pki("server.key"))
    path, r = check_config(env, base + "url = http://127.0.0.1:8080\n"
                                       "url = http://no-such-host.invalid:80\n")
    eq(r.returncode, 1, "an unresolvable second server")
    check(f"{path}:8: [backend] url: cannot resolve \"no-such-host.invalid\"" in r.stderr,
          f"FILE:LINE of the second url: {r.stderr}")
    path, r = check_config(env, base + "url = http://127.0.0.1:8080 https://127.0.0.1:8443\n")
    eq(r.returncode, 1, "mixed schemes")
    check(f"{path}:7: [backend] url:" in r.stderr and "same scheme" in r.stderr, r.stderr)
    path, r = check_config(env, base + "url = http://127.0.0.1:8080\nfail_timeout = 2h\n")
    eq(r.returncode, 1, "fail_timeout above 1h")
    check(f"{path}:8: [backend] fail_timeout" in r.stderr, r.stderr)
    path, r = check_config(env, base + "url = http://127.0.0.1:8080\nhealth_check = POST /x\n")
    eq(r.returncode, 1, "a health check that is not GET or HEAD")
    check(f"{path}:8: [backend] health_check" in r.stderr, r.stderr)
    path, r = check_config(env, base + "url = http://127.0.0.1:8080\nhealth_check = GET /a b\n")
    eq(r.returncode, 1, "a health check path with a blank")
    path, r = check_config(env, base + "url = http://127.0.0.1:8080 http://127.0.0.2:8080\n"
                                       "fail_timeout = 0\nhealth_check = HEAD  /ok\n")
    eq(r.returncode, 0, f"two servers: {r.stderr}")


if __name__ == "__main__":
    run([v for k, v in sorted(globals().items()) if k.startswith("test_")])
