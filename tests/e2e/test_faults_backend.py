#!/usr/bin/env python3
"""Fault suite, backend side: a backend that sends oversize or malformed
response heads, broken or truncated chunked bodies, bodies shorter than their
Content-Length, both framings at once, or garbage. Before anything reached
the client the answer is 502 backend_unavailable; once the head has gone out
the client learns it by the connection closing before the end of the body
(never a response that looks complete). Each time, certmapd still serves the
next request, and holds no descriptor for it afterwards."""
import socket
import subprocess
import threading
import time

from harness import check, eq, fd_count, pki, run

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

# What the raw backend answers, by the request's path.
ANSWERS = {
    "/oversize-head": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200000 + b"\r\n\r\nok",
    "/many-headers": b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i
                                                        for i in range(20000)) + b"\r\n",
    "/bad-status": b"HTTP/1.1 abc Nope\r\nContent-Length: 0\r\n\r\n",
    "/not-http": b"SSH-2.0-OpenSSH_9.2\r\n",
    "/garbage": bytes(range(256)) * 4,
    "/cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n0\r\n\r\n",
    "/two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "/head-cut": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Le",
    "/nul-in-header": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "/bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",
    "/huge-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"ffffffffffffffffffff\r\nhello\r\n",
    "/chunk-cut": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc",
    "/chunk-no-crlf": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"3\r\nabcXY0\r\n\r\n",
    "/length-short": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b",
}
# Answers whose head is valid: it may reach the client before the fault.
HEAD_FIRST = {"/bad-chunk-size", "/huge-chunk-size", "/chunk-cut", "/chunk-no-crlf",
              "/length-short"}


class RawBackend:
    """Answers each request with ANSWERS[path] (then closes), or OK."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self):
        self.stopped = True
        self.sock.close()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        try:
            c.settimeout(10)
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = c.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                path = head.split(b" ")[1].decode().split("?")[0]
                if path in ANSWERS:
                    c.sendall(ANSWERS[path])
                    time.sleep(0.2)
                    return
                c.sendall(OK)
        except OSError:
            return
        finally:
            c.close()


def curl_exit(port, path):
    """(curl's exit status, HTTP status, body) of one request through certmapd."""
    p = subprocess.run(["curl", "-sS", "--cacert", pki("root-ca.crt"), "--cert",
                        pki("good.chain.pem"), "--key", pki("good.key"), "--max-time", "15",
                        "-o", "-", "-w", "\n%{http_code}", f"https://localhost:{port}{path}"],
                       capture_output=True, timeout=30)
    body, _, code = p.stdout.rpartition(b"\n")
    return p.returncode, int(code or 0), body


def test_malformed_backend_answers(env):
    raw = RawBackend()
    env.add_cleanup(raw.stop)
    d = env.certmapd(backend_url=f"http://127.0.0.1:{raw.port}",
                     sections={"server": {"log_level": "info"}})
    rc, status, body = curl_exit(d.port, "/ok")
    eq((rc, status, body), (0, 200, b"ok"), "a request before the faults")
    time.sleep(0.5)
    fds0 = fd_count(d.pid())
    for path in ANSWERS:
        rc, status, body = curl_exit(d.port, path)
        print(f"  {path}: curl exit {rc}, status {status}")
        if path in HEAD_FIRST:
            # Either refused before the head went out, or cut: never whole.
            check(status == 502 or rc != 0,
                  f"{path}: a broken body must not look complete (curl {rc}, {status})")
        else:
            eq(status, 502, f"{path}: status")
            eq(rc, 0, f"{path}: the 502 is a whole answer")
        rc, status, body = curl_exit(d.port, "/ok")
        eq((rc, status, body), (0, 200, b"ok"), f"the next request after {path}")
    time.sleep(3.0)  # past the lingering close of the 502s (2 s)
    fds = fd_count(d.pid())
    print(f"  descriptors: {fds0} before the faults, {fds} after")
    # Idle pooled backend connections (one or two per worker) may remain.
    check(fds <= fds0 + 4, f"descriptors: {fds0} before the faults, {fds} after")
    access = d.wait_access(2 * len(ANSWERS) + 1)
    reasons = {r.get("reason") for r in access}
    check("backend_unavailable" in reasons, f"reasons logged: {reasons}")


if __name__ == "__main__":
    run([test_malformed_backend_answers])
