#!/usr/bin/env python3
"""Per-path client certificates: a certificate asked for only when the request
reaches a protected location, by TLS 1.2 renegotiation or TLS 1.3
post-handshake authentication, with the body held in the read-ahead buffer
meanwhile (IIS uploadReadAheadSize). Real clients: Python's ssl module and
openssl s_client."""
import hashlib
import os
import select
import socket
import ssl
import subprocess
import time

from harness import check, eq, pki, run

EAS = "/Microsoft-Server-ActiveSync"
LATE = {"client_certificate": {"mode": "ignore"},
        f"location {EAS}": {"client_certificate": "require"}}


def late(extra=None):
    sections = {k: dict(v) for k, v in LATE.items()}
    for sec, keys in (extra or {}).items():
        sections.setdefault(sec, {}).update(keys)
    return sections


def client_ctx(version, pha=True, cert="good"):
    ctx = ssl.create_default_context(cafile=pki("root-ca.crt"))
    ctx.minimum_version = version
    ctx.maximum_version = version
    if cert:
        ctx.load_cert_chain(pki(f"{cert}.chain.pem"), pki(f"{cert}.key"))
    ctx.post_handshake_auth = pha
    return ctx


class Conn:
    """One TLS connection with a minimal HTTP/1.1 response reader."""

    def __init__(self, port, ctx):
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.s = ctx.wrap_socket(raw, server_hostname="localhost")
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def _fill(self):
        chunk = self.s.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        self.buf += chunk

    def response(self):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
        if status == 100:
            return status, headers, b""
        n = int(headers.get("content-length", "0"))
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    self._fill()
                size_line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(size_line, 16)
                while len(self.buf) < size + 2:
                    self._fill()
                body += self.buf[:size]
                self.buf = self.buf[size + 2:]
                if size == 0:
                    break
            return status, headers, body
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def close(self):
        self.s.close()


def get(path, body=None, extra=""):
    method = "POST" if body is not None else "GET"
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}"
    if body is not None:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


def identity(req):
    return {k.lower(): v for k, v in req["headers"]}.get("x-client-cert-serial")


def test_tls13_post_handshake_auth_python(env):
    b = env.backend()
    d = env.certmapd(b, late())
    c = Conn(d.port, client_ctx(ssl.TLSVersion.TLSv1_3))
    c.send(get("/public"))
    eq(c.response()[0], 200, "open path without a certificate")
    c.send(get(EAS + "?Cmd=Ping"))
    eq(c.response()[0], 200, "protected path after post-handshake auth")
    c.send(get(EAS + "?Cmd=Sync"))
    eq(c.response()[0], 200, "the certificate stays for the connection")
    c.close()
    reqs = b.requests()
    eq([identity(r) for r in reqs], [None, "2B0000000011AC0000000012", "2B0000000011AC0000000012"],
       "identity per request")


def test_tls12_renegotiation_python(env):
    b = env.backend()
    d = env.certmapd(b, late())
    c = Conn(d.port, client_ctx(ssl.TLSVersion.TLSv1_2, pha=False))
    c.send(get("/public"))
    eq(c.response()[0], 200, "open path")
    c.send(get(EAS + "?Cmd=Ping"))
    eq(c.response()[0], 200, "protected path after renegotiation")
    c.close()
    eq(identity(b.requests()[1]), "2B0000000011AC0000000012", "identity after renegotiation")


def s_client(port, args, request):
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
           "-CAfile", pki("root-ca.crt"), "-cert", pki("good.crt"), "-key", pki("good.key"),
           "-cert_chain", pki("issuing-ca.crt"), "-ign_eof"] + args
    p = subprocess.run(cmd, input=request, capture_output=True, timeout=30)
    return p.stdout.decode("latin-1")


def test_tls13_post_handshake_auth_s_client(env):
    b = env.backend()
    d = env.certmapd(b, late())
    out = s_client(d.port, ["-tls1_3", "-enable_pha"],
                   get(EAS, extra="Connection: close\r\n"))
    check("HTTP/1.1 200" in out, f"s_client -enable_pha: {out[-800:]}")
    eq(identity(b.requests()[0]), "2B0000000011AC0000000012", "identity")


def test_tls12_renegotiation_s_client(env):
    b = env.backend()
    d = env.certmapd(b, late())
    out = s_client(d.port, ["-tls1_2"], get(EAS, extra="Connection: close\r\n"))
    check("HTTP/1.1 200" in out, f"s_client renegotiation: {out[-800:]}")
    eq(identity(b.requests()[0]), "2B0000000011AC0000000012", "identity")


def test_tls13_without_pha_gets_403(env):
    b = env.backend()
    d = env.certmapd(b, late())
    c = Conn(d.port, client_ctx(ssl.TLSVersion.TLSv1_3, pha=False))
    c.send(get(EAS))
    eq(c.response()[0], 403, "status")
    c.close()
    log = d.wait_access(1)
    eq(log[0]["reason"], "cert_required", "reason")
    check("post-handshake" in d.stderr(), "a log line says the client cannot do post-handshake auth")
    eq(b.requests(), [], "backend requests")


def test_client_declines_late_certificate(env):
    b = env.backend()
    d = env.certmapd(b, late())
    c = Conn(d.port, client_ctx(ssl.TLSVersion.TLSv1_3, cert=None))
    c.send(get(EAS))
    eq(c.response()[0], 403, "status")
    eq(d.wait_access(1)[0]["reason"], "cert_required", "reason")
    eq(b.requests(), [], "backend requests")


def test_late_bad_certificate_refused(env):
    b = env.backend()
    d = env.certmapd(b, late())
    c = Conn(d.port, client_ctx(ssl.TLSVersion.TLSv1_3, cert="revoked"))
    c.send(get(EAS))
    eq(c.response()[0], 403, "status")
    eq(d.wait_access(1)[0]["reason"], "cert_revoked", "reason")
    eq(b.requests(), [], "backend requests")


def chunked_post(path, body, piece=10000):
    out = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    for i in range(0, len(body), piece):
        part = body[i:i + piece]
        out += b"%x\r\n%s\r\n" % (len(part), part)
    return out + b"0\r\n\r\n"


def read_ahead_case(env, version, size, limit, want, chunked=False):
    b = env.backend()
    d = env.certmapd(b, late({"buffering": {"upload_read_ahead_size": str(limit)}}))
    body = bytes((i * 7) & 0xFF for i in range(size))
    c = Conn(d.port, client_ctx(version))
    if chunked:
        c.send(chunked_post(EAS + "?Cmd=SendMail", body))
    else:
        c.send(get(EAS + "?Cmd=SendMail", body))
    status = c.response()[0]
    c.close()
    eq(status, want, f"{size} bytes with read-ahead {limit} over {version.name}")
    reqs = b.requests()
    if want == 200:
        eq(len(reqs), 1, "requests")
        eq(reqs[0]["body_len"], size, "body length")
        eq(reqs[0]["body_sha256"], hashlib.sha256(body).hexdigest(), "body, exactly once")
    else:
        eq(reqs, [], "nothing reaches the backend")
        eq(d.wait_access(1)[0]["reason"], "read_ahead_exceeded", "reason")


def test_read_ahead_limits_tls13(env):
    for size, want in ((49151, 200), (49152, 200), (49153, 413)):
        read_ahead_case(env, ssl.TLSVersion.TLSv1_3, size, 49152, want)


def test_read_ahead_limits_tls12(env):
    for size, want in ((49151, 200), (49152, 200), (49153, 413)):
        read_ahead_case(env, ssl.TLSVersion.TLSv1_2, size, 49152, want)


def test_read_ahead_limits_chunked(env):
    """A chunked body's size is only known as it arrives: the buffer itself
    enforces the limit."""
    for size, want in ((49151, 200), (49152, 200), (49153, 413)):
        read_ahead_case(env, ssl.TLSVersion.TLSv1_3, size, 49152, want, chunked=True)


def test_read_ahead_default_is_48k(env):
    read_ahead_case(env, ssl.TLSVersion.TLSv1_3, 48 * 1024 + 1, "48K", 413)


def test_ten_megabytes_with_10m_read_ahead(env):
    read_ahead_case(env, ssl.TLSVersion.TLSv1_3, 10 * 1024 * 1024, "10M", 200)


def test_expect_continue_waits_for_certificate(env):
    b = env.backend()
    d = env.certmapd(b, late())
    body = b"x" * 100000  # larger than the read-ahead: not buffered with Expect
    c = Conn(d.port, client_ctx(ssl.TLSVersion.TLSv1_3))
    c.send(f"POST {EAS}?Cmd=SendMail HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
           f"Content-Length: {len(body)}\r\n\r\n".encode())
    status, _, _ = c.response()
    eq(status, 100, "100 Continue once the certificate is in")
    c.send(body)
    eq(c.response()[0], 200, "final status")
    c.close()
    r = b.requests()[0]
    eq(r["body_len"], len(body), "body length")
    eq(identity(r), "2B0000000011AC0000000012", "identity")


def test_negotiate_at_handshake(env):
    """negotiate_at_handshake = yes asks in the first handshake: a TLS 1.3
    client without post-handshake auth is then served."""
    b = env.backend()
    d = env.certmapd(b, late({"client_certificate": {"negotiate_at_handshake": "yes"}}))
    c = Conn(d.port, client_ctx(ssl.TLSVersion.TLSv1_3, pha=False))
    c.send(get(EAS))
    eq(c.response()[0], 200, "status")
    c.close()
    eq(identity(b.requests()[0]), "2B0000000011AC0000000012", "identity")


def late_request_lost(env, conf=None):
    """certmapd, and a TLS 1.2 client whose GET to a protected path has been
    answered with the HelloRequest, not yet read. Returns (backend, certmapd, conn)."""
    b = env.backend()
    d = env.certmapd(b, late(conf))
    c = Conn(d.port, client_ctx(ssl.TLSVersion.TLSv1_2))
    c.send(get(EAS))
    # Nothing else is due after a TLS 1.2 handshake: what arrives is the HelloRequest.
    check(select.select([c.s], [], [], 10)[0], "certmapd asks for a certificate")
    return b, d, c


def logged_once(d, status, reason):
    """The request's only access log line (after a while: no second one comes)."""
    log = d.wait_access(1)
    time.sleep(0.3)
    eq(len(d.access()), 1, "access log lines for the request")
    eq((log[0]["status"], log[0]["reason"]), (status, reason), "status and reason")


def still_serves(d, b):
    c = Conn(d.port, client_ctx(ssl.TLSVersion.TLSv1_2))
    c.send(get(EAS + "?Cmd=Ping"))
    eq(c.response()[0], 200, "certmapd still serves")
    c.close()
    eq(len(b.requests()), 1, "backend requests: only the one after")


def test_tls12_client_refuses_renegotiation(env):
    """A TLS 1.2 client that answers the HelloRequest with a no_renegotiation
    alert: OpenSSL ends the connection, so no 403 can be sent, but the access
    log has the verdict and the error log says why."""
    b = env.backend()
    d = env.certmapd(b, late())
    ctx = client_ctx(ssl.TLSVersion.TLSv1_2)
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    c = Conn(d.port, ctx)
    c.send(get(EAS))
    try:
        got = c.response()
        raise AssertionError(f"an answer over a connection OpenSSL has failed: {got[:2]}")
    except (ssl.SSLError, ConnectionError, OSError):
        pass
    c.close()
    logged_once(d, "403", "cert_required")
    check("127.0.0.1: a client certificate is needed, but this TLS 1.2 client refused "
          "renegotiation (no_renegotiation alert)" in d.stderr(),
          f"the error log says the client refused renegotiation:\n{d.stderr()[-2000:]}")
    check("negotiate_at_handshake = yes" in d.stderr(), "the error log names the remedy")
    eq(b.requests(), [], "backend requests")
    still_serves(d, b)


def test_client_closes_instead_of_answering(env):
    """The client goes away (FIN) rather than answer the certificate request:
    499, as any client gone mid-request, with the reason it was waiting for."""
    b, d, c = late_request_lost(env)
    c.s.shutdown(socket.SHUT_WR)
    c.close()
    logged_once(d, "499", "cert_required")
    check("closed the connection instead of answering the request for a client certificate"
          in d.stderr(), "the error log says so")
    eq(b.requests(), [], "backend requests")
    still_serves(d, b)


def test_client_answers_with_garbage(env):
    """Bytes that are not TLS where the answer to the HelloRequest belongs."""
    b, d, c = late_request_lost(env)
    os.write(c.s.fileno(), b"GARBAGE GARBAGE GARBAGE\r\n")
    c.close()
    logged_once(d, "403", "cert_required")
    check("the client's answer to the request for a client certificate failed: wrong version number"
          in d.stderr(), f"the error log has OpenSSL's reason:\n{d.stderr()[-2000:]}")
    eq(b.requests(), [], "backend requests")
    still_serves(d, b)


def test_client_never_answers(env):
    """A TLS 1.2 client may ignore a HelloRequest (RFC 5246, 7.4.1.1): after
    header_timeout the request is refused, though no 403 can be sent."""
    b, d, c = late_request_lost(env, {"server": {"header_timeout": "1s"}})
    logged_once(d, "403", "cert_required")
    c.close()
    check("no answer to the request for a client certificate within 1000 ms" in d.stderr(),
          "the error log says so")
    eq(b.requests(), [], "backend requests")
    still_serves(d, b)


if __name__ == "__main__":
    run([
        test_tls13_post_handshake_auth_python,
        test_tls12_renegotiation_python,
        test_tls13_post_handshake_auth_s_client,
        test_tls12_renegotiation_s_client,
        test_tls13_without_pha_gets_403,
        test_client_declines_late_certificate,
        test_late_bad_certificate_refused,
        test_tls12_client_refuses_renegotiation,
        test_client_closes_instead_of_answering,
        test_client_answers_with_garbage,
        test_client_never_answers,
        test_read_ahead_limits_tls13,
        test_read_ahead_limits_tls12,
        test_read_ahead_limits_chunked,
        test_read_ahead_default_is_48k,
        test_ten_megabytes_with_10m_read_ahead,
        test_expect_continue_waits_for_certificate,
        test_negotiate_at_handshake,
    ])
