#!/usr/bin/env python3
"""TLS read-ahead (tls/ctx.c) without stalls: bytes that OpenSSL has read from
the socket but not yet decrypted are invisible to epoll, so certmapd must
drain them itself (proxy/conn.c, conn_read_soon). Each case puts several TLS
records into one TCP segment, the way a real client can, and expects every
request answered at once: a stall shows as a timeout here."""
import socket
import ssl

from harness import Reader, eq, pki, request_bytes, run, tls_connect

TIMEOUT = 10.0


def test_many_records_in_one_segment(env):
    """Forty pipelined requests, each its own TLS record, corked into one segment."""
    b = env.backend()
    d = env.certmapd(b, {"server": {"workers": "1"}})
    s = tls_connect(d.port, timeout=TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    for i in range(40):
        s.sendall(request_bytes("GET", f"/rec?i={i}"))  # one SSL_write: one record
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
    rd = Reader(s)
    for i in range(40):
        eq(rd.response().json()["target"], f"/rec?i={i}", f"answer {i}")
    eq(len(b.requests()), 40, "requests at the backend")


def test_records_spread_over_segments_and_a_large_one(env):
    """Records split across segments and a record larger than one read: the
    read-ahead buffer ends mid-record, and the rest must still be read."""
    b = env.backend()
    d = env.certmapd(b, {"server": {"workers": "1"}})
    s = tls_connect(d.port, timeout=TIMEOUT)
    body = bytes(range(256)) * 200  # 51 200 bytes: four TLS records
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    s.sendall(request_bytes("GET", "/small1"))
    s.sendall(request_bytes("POST", "/big", [("Content-Length", str(len(body)))], body))
    s.sendall(request_bytes("GET", "/small2"))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
    rd = Reader(s)
    eq(rd.response().json()["target"], "/small1", "first answer")
    big = rd.response().json()
    eq((big["target"], big["body_len"]), ("/big", len(body)), "second answer")
    eq(rd.response().json()["target"], "/small2", "third answer")


class MemoryClient:
    """A TLS 1.3 client over memory BIOs, so that the test decides what leaves in
    which send(2). recv() gives plaintext, for harness.Reader."""

    def __init__(self, port, cert="good"):
        ctx = ssl.create_default_context(cafile=pki("root-ca.crt"))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(pki(f"{cert}.chain.pem"), pki(f"{cert}.key"))
        self.raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost")

    def handshake_keeping_last_flight(self):
        """Runs the handshake; the client's last flight (Certificate,
        CertificateVerify, Finished) is left unsent in the outgoing BIO."""
        while True:
            try:
                self.obj.do_handshake()
                return
            except ssl.SSLWantReadError:
                pending = self.out.read()
                if pending:
                    self.raw.sendall(pending)
                data = self.raw.recv(65536)
                if not data:
                    raise EOFError("server closed during the handshake")
                self.inc.write(data)

    def recv(self, n):
        while True:
            try:
                return self.obj.read(n)
            except ssl.SSLWantReadError:
                data = self.raw.recv(65536)
                if not data:
                    return b""
                self.inc.write(data)


def test_request_right_behind_the_finished(env):
    """TLS 1.3: the client's Finished and its first request in one segment. The
    handshake ends with the request already read ahead inside OpenSSL."""
    b = env.backend()
    d = env.certmapd(b, {"server": {"workers": "1"}})
    c = MemoryClient(d.port)
    c.handshake_keeping_last_flight()
    c.obj.write(request_bytes("GET", "/behind-finished"))
    c.raw.sendall(c.out.read())  # Certificate, CertificateVerify, Finished, request
    r = Reader(c).response()
    eq(r.status, 200, "status")
    eq(r.json()["target"], "/behind-finished", "answer")
    eq(d.wait_access(1)[0]["status"], "200", "access log")


if __name__ == "__main__":
    run([test_many_records_in_one_segment, test_records_spread_over_segments_and_a_large_one,
         test_request_right_behind_the_finished])
