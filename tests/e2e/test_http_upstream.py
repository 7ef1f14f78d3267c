#!/usr/bin/env python3
"""The upstream side end to end: backend down (502), backend too slow (504 on
time), a pooled connection the backend closed (retried once for an idempotent
request, never for a POST), a backend that answers early or resets the
connection while the body is still being written to it, an https backend
verified against [backend] ca_file and its name, and a backend name with
several addresses, tried in order (a hosts file the test controls)."""
import socket
import time

from harness import BytesSock, Reader, check, curl, eq, free_port, pki, request_bytes, run, send_while_reading, tls_connect

# What a new Debian machine's /etc/hosts says of localhost: ::1 as well as
# 127.0.0.1, and the resolver puts ::1 first.
DEBIAN_HOSTS = "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"


def nothing_on_v6(port):
    """Checks that nothing listens on [::1]:<port>, so that connecting there is refused."""
    with socket.socket(socket.AF_INET6) as s:
        s.settimeout(2)
        check(s.connect_ex(("::1", port)) != 0, f"something listens on [::1]:{port}")


def test_backend_down_502(env):
    d = env.certmapd(backend_url=f"http://127.0.0.1:{free_port()}")
    status, body, _ = curl(d.base + "/x", cert="good")
    eq(status, 502, "status")
    log = d.wait_access(1)
    eq(log[0]["reason"], "backend_unavailable", "reason")
    eq(log[0]["status"], "502", "access log status")


def test_read_timeout_504_on_time(env):
    b = env.backend()
    d = env.certmapd(b, {"backend": {"read_timeout": "1s"}})
    t0 = time.time()
    status, _, _ = curl(d.base + "/slow?delay=3", cert="good")
    took = time.time() - t0
    eq(status, 504, "status")
    check(0.9 <= took < 2.5, f"504 after {took:.2f}s with read_timeout = 1s")
    log = d.wait_access(1)
    eq(log[0]["reason"], "backend_timeout", "reason")
    # The timed-out backend connection is not reused: the next request gets a fresh one.
    status, body, _ = curl(d.base + "/fast", cert="good")
    eq(status, 200, "a request after the timeout")


def upload_to_failing_backend(env, target):
    """POSTs 8 MB to <target> (a backend.py early=1 case) while reading the answer,
    then checks that exactly one access log line was written and that certmapd
    still serves. Returns (answer, access log line)."""
    b = env.backend()
    d = env.certmapd(b, {"server": {"workers": "1"}})
    body = b"u" * (8 * 1024 * 1024)
    s = tls_connect(d.port, timeout=20)
    head = request_bytes("POST", target, [("Content-Length", str(len(body)))])
    got, _ = send_while_reading(s, head + body)
    s.close()
    r = Reader(BytesSock(got)).response()
    log = d.wait_access(1)
    eq(len(log), 1, "access log lines")
    eq(log[0]["status"], str(r.status), "access log status")
    status, _, _ = curl(d.base + "/after", cert="good")
    eq(status, 200, "a request afterwards")
    return r, log[0]


def test_backend_answers_early_and_resets_mid_upload(env):
    """The backend answers after the head and resets the connection while certmapd
    still writes the body to it (the write error surfaces from upstream_flush's
    fallback to libevent). The client gets one well-formed answer: the backend's
    403 if it arrived first, else 502; certmapd goes on serving."""
    r, _ = upload_to_failing_backend(env, "/up?early=1&status=403")
    check(r.status in (403, 502), f"status {r.status}")


def test_backend_resets_mid_upload_502(env):
    """The backend resets the connection after the head, before any answer, while
    certmapd writes the body: the write fails, and the client gets 502 (a POST
    is never retried)."""
    r, line = upload_to_failing_backend(env, "/up?early=1&status=reset")
    eq((r.status, line["reason"]), (502, "backend_unavailable"), "status and reason")


def with_stale_pooled_connection(env):
    """One request whose backend connection, back in the pool, will drop the
    next request it gets without an answer. Returns (backend, certmapd, socket, reader)."""
    b = env.backend()
    d = env.certmapd(b, {"server": {"workers": "1"}})
    s = tls_connect(d.port)
    rd = Reader(s)
    s.sendall(request_bytes("GET", "/first?dropnext=1"))
    eq(rd.response().status, 200, "first request")
    return b, d, s, rd


def test_stale_pooled_connection_retried(env):
    b, d, s, rd = with_stale_pooled_connection(env)
    s.sendall(request_bytes("GET", "/second"))
    r = rd.response()
    eq(r.status, 200, "the request sent on the stale connection, retried")
    eq(r.json()["target"], "/second", "retried request")
    reqs = b.requests()
    eq([x["target"] for x in reqs], ["/first?dropnext=1", "/second"], "at the backend, once each")
    check(reqs[0]["conn_id"] != reqs[1]["conn_id"], "retried on a new backend connection")
    log = d.wait_access(2)
    eq(len(log), 2, "access log lines")
    addr = f"127.0.0.1:{b.port}"
    eq(log[1]["upstream"], f"{addr}(stale),{addr}", "the stale pooled connection, then a new one")


def test_stale_pooled_connection_post_not_retried(env):
    b, _, s, rd = with_stale_pooled_connection(env)
    s.sendall(request_bytes("POST", "/second", [("Content-Length", "3")], b"abc"))
    eq(rd.response().status, 502, "a POST is never sent twice")
    eq([x["target"] for x in b.requests()], ["/first?dropnext=1"], "at the backend")


def test_backend_restart_pool_recovers(env):
    b = env.backend()
    d = env.certmapd(b, {"server": {"workers": "1"}})
    s = tls_connect(d.port)
    rd = Reader(s)
    s.sendall(request_bytes("GET", "/one"))
    eq(rd.response().status, 200, "before the restart")
    port = b.port
    b.stop()  # closes the pooled connection
    time.sleep(0.2)
    b.start(port=port)
    s.sendall(request_bytes("GET", "/two"))
    eq(rd.response().status, 200, "after the restart")
    eq([x["target"] for x in b.requests()], ["/two"], "at the restarted backend")


def test_https_backend(env):
    b = env.backend(tls=True)
    d = env.certmapd(backend_url=f"https://localhost:{b.port}",
                     sections={"backend": {"ca_file": pki("root-ca.crt")}})
    s = tls_connect(d.port)
    rd = Reader(s)
    for i in range(3):
        s.sendall(request_bytes("POST", f"/tls{i}", [("Content-Length", "4")], b"data"))
        r = rd.response()
        eq(r.status, 200, f"request {i}")
        eq(r.json()["body_len"], 4, f"request {i}: body")
    eq(len({x["conn_id"] for x in b.requests()}), 1, "one pooled TLS connection")
    status, body, _ = curl(d.base + "/big?size=3000000", cert="good")
    eq((status, len(body)), (200, 3000000), "a large answer over TLS both ways")


def test_https_backend_wrong_ca_502(env):
    b = env.backend(tls=True)
    d = env.certmapd(backend_url=f"https://localhost:{b.port}",
                     sections={"backend": {"ca_file": pki("other-root-ca.crt")}})
    status, _, _ = curl(d.base + "/x", cert="good")
    eq(status, 502, "status with a backend certificate from another CA")
    check("certificate verify failed" in d.stderr(), "refused for its certificate")
    eq(d.wait_access(1)[0]["reason"], "backend_unavailable", "reason")
    eq(b.requests(), [], "nothing reached the backend")


def test_https_backend_wrong_name_502(env):
    # The certificate is for localhost and 127.0.0.1, not for 127.0.0.2 (loopback too).
    b = env.backend(tls=True, host="127.0.0.2")
    d = env.certmapd(backend_url=f"https://127.0.0.2:{b.port}",
                     sections={"backend": {"ca_file": pki("root-ca.crt")}})
    status, _, _ = curl(d.base + "/x", cert="good")
    eq(status, 502, "status with a backend certificate for another name")
    check("certificate verify failed" in d.stderr(), "refused for its certificate")
    eq(b.requests(), [], "nothing reached the backend")


def test_second_address_after_refusal(env):
    """backend.test is ::1 first, then 127.0.0.1; the backend listens on
    127.0.0.1 only. The refused first address is logged, the second serves,
    and both are in the access log, in order."""
    b = env.backend()
    nothing_on_v6(b.port)
    d = env.certmapd(backend_url=f"http://backend.test:{b.port}",
                     hosts="::1 backend.test\n127.0.0.1 backend.test\n")
    status, body, _ = curl(d.base + "/x", cert="good")
    eq(status, 200, "served by the second address")
    eq([x["target"] for x in b.requests()], ["/x"], "at the backend, once")
    line = d.wait_access(1)[0]
    eq(line["upstream"], f"[::1]:{b.port}(error),127.0.0.1:{b.port}", "addresses tried")
    check(f"backend [::1]:{b.port}: Connection refused; trying 127.0.0.1:{b.port}" in d.stderr(),
          "the error log says which address failed and which comes next")
    # A pooled connection is reused as it is: no address is tried again.
    status, _, _ = curl(d.base + "/y", cert="good")
    eq(status, 200, "second request")


def test_second_address_after_connect_timeout(env):
    """The first address accepts no connection at all (a listener whose backlog
    is full: the kernel drops the SYN), so connecting there times out after
    connect_timeout; the second address then serves the request."""
    b = env.backend()
    hold = socket.socket(socket.AF_INET6)
    hold.bind(("::1", b.port))
    hold.listen(0)
    fillers = []
    try:
        # Fill the accept queue: a further SYN to [::1]:port goes unanswered.
        for _ in range(4):
            f = socket.socket(socket.AF_INET6)
            f.setblocking(False)
            f.connect_ex(("::1", b.port))
            fillers.append(f)
        time.sleep(0.2)
        d = env.certmapd(backend_url=f"http://backend.test:{b.port}",
                         sections={"backend": {"connect_timeout": "500ms"}},
                         hosts="::1 backend.test\n127.0.0.1 backend.test\n")
        t0 = time.time()
        status, _, _ = curl(d.base + "/x", cert="good")
        took = time.time() - t0
        eq(status, 200, "served by the second address")
        check(0.4 <= took < 3, f"answered after {took:.2f}s with connect_timeout = 500ms")
        eq(d.wait_access(1)[0]["upstream"], f"[::1]:{b.port}(timeout),127.0.0.1:{b.port}",
           "addresses tried")
        check(f"backend [::1]:{b.port}: connection timed out; trying 127.0.0.1:{b.port}"
              in d.stderr(), "the error log says the first address timed out")
    finally:
        for f in fillers:
            f.close()
        hold.close()


def test_every_address_refused_502(env):
    port = free_port()
    nothing_on_v6(port)
    d = env.certmapd(backend_url=f"http://backend.test:{port}",
                     hosts="::1 backend.test\n127.0.0.1 backend.test\n")
    status, _, _ = curl(d.base + "/x", cert="good")
    eq(status, 502, "status")
    line = d.wait_access(1)[0]
    eq((line["reason"], line["upstream"]),
       ("backend_unavailable", f"[::1]:{port}(error),127.0.0.1:{port}(error)"),
       "reason and addresses tried")
    check(f"backend 127.0.0.1:{port}: Connection refused; no other address of the backend to try"
          in d.stderr(), "the error log says the last address failed too")


def test_https_backend_localhost_as_on_debian(env):
    """https://localhost with /etc/hosts as a new Debian machine has it: the
    backend listens on 127.0.0.1 only, ::1 is refused, and the request still
    reaches the backend over verified TLS."""
    b = env.backend(tls=True)
    nothing_on_v6(b.port)
    d = env.certmapd(backend_url=f"https://localhost:{b.port}",
                     sections={"backend": {"ca_file": pki("root-ca.crt")}}, hosts=DEBIAN_HOSTS)
    status, body, _ = curl(d.base + "/x", cert="good")
    eq(status, 200, "status")
    eq(d.wait_access(1)[0]["upstream"], f"[::1]:{b.port}(error),127.0.0.1:{b.port}",
       "addresses tried")


if __name__ == "__main__":
    run([v for k, v in sorted(globals().items()) if k.startswith("test_")])
