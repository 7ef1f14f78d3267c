#!/usr/bin/env python3
"""PROXY protocol v1/v2 on a listener (`listen = ADDR proxy_protocol`), end to end:
curl's --haproxy-protocol (v1) and a real HAProxy in TCP mode with send-proxy-v2
in front of certmapd, mutual TLS through the L4 hop; hand-made v1/v2 headers
naming other addresses (the backend's X-Forwarded-For and the access log's
client are the header's, via= the balancer's); absent, malformed, split and
stalled headers; proxy_protocol_from; a plain listener beside a PROXY one; and
-t refusing unknown words after the address."""
import os
import socket
import ssl
import struct
import subprocess
import time

from harness import (BIN, Certmapd, Reader, check, curl, eq, free_port, pki, request_bytes, run,
                     wait_port)

SIG2 = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_header(src, dst, sport, dport, command=0x21, tlvs=b""):
    """A v2 header for IPv4 or IPv6 addresses <src> -> <dst>."""
    if ":" in src:
        fam, block = 0x21, socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(
            socket.AF_INET6, dst)
    else:
        fam, block = 0x11, socket.inet_aton(src) + socket.inet_aton(dst)
    body = block + struct.pack(">HH", sport, dport) + tlvs
    return SIG2 + bytes([command, fam]) + struct.pack(">H", len(body)) + body


def start(env, sections=None):
    """certmapd with a proxy_protocol listener (d.pp) and a plain one (d.port)."""
    b = env.backend()
    pp = free_port()
    plain = free_port()
    server = {"listen": [f"127.0.0.1:{pp} proxy_protocol", f"127.0.0.1:{plain}"]}
    server.update((sections or {}).pop("server", {}))
    d = Certmapd(env.dir, b.url, dict(sections or {}, server=server), listen_port=plain)
    env.daemons.append(d)
    d.start()
    d.pp = pp
    wait_port(pp, d.proc)
    return b, d


def raw(port, source="127.0.0.1", timeout=10.0):
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def tls_over(s, cert="good"):
    ctx = ssl.create_default_context(cafile=pki("root-ca.crt"))
    if cert:
        ctx.load_cert_chain(pki(f"{cert}.chain.pem"), pki(f"{cert}.key"))
    return ctx.wrap_socket(s, server_hostname="localhost")


def get(t, target="/pp", headers=()):
    t.sendall(request_bytes("GET", target, list(headers)))
    return Reader(t).response()


def forwarded_for(b):
    """The X-Forwarded-For values of the backend's last request (all of them)."""
    reqs = b.requests()
    check(reqs, "nothing reached the backend")
    return [v for k, v in reqs[-1]["headers"] if k.lower() == "x-forwarded-for"]


def wait_log(d, text, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in d.stderr():
            return True
        time.sleep(0.05)
    return False


def refused_without_tls(s):
    """The server closes <s> without sending a byte (no TLS ever started)."""
    try:
        data = s.recv(100)
    except ConnectionResetError:
        data = b""
    eq(data, b"", "bytes from the server on a refused connection")


def test_curl_v1_and_plain_listener_beside(env):
    b, d = start(env)
    url = f"https://localhost:{d.pp}/v1"
    status, _, _ = curl(url, "good", ["--haproxy-protocol", "--resolve", f"localhost:{d.pp}:127.0.0.1"])
    eq(status, 200, "curl --haproxy-protocol through the proxy_protocol listener")
    eq(forwarded_for(b), ["127.0.0.1"], "X-Forwarded-For")
    check(wait_log(d, "PROXY v1 header of"), "the header is logged (debug)")
    # The plain listener beside it: no header expected, none accepted.
    status, _, _ = curl(f"https://localhost:{d.port}/plain", "good",
                        ["--resolve", f"localhost:{d.port}:127.0.0.1"])
    eq(status, 200, "the plain listener")
    status, _, _ = curl(f"https://localhost:{d.port}/plain", "good",
                        ["--haproxy-protocol", "--resolve", f"localhost:{d.port}:127.0.0.1"])
    eq(status, 0, "a PROXY header on the plain listener is no TLS")
    # And plain TLS on the PROXY listener is refused.
    status, _, _ = curl(url, "good", ["--resolve", f"localhost:{d.pp}:127.0.0.1"])
    eq(status, 0, "no header on the proxy_protocol listener")
    lines = d.wait_access(2)
    eq(len(lines), 2, "access log lines")
    eq((lines[0]["path"], lines[0]["client"], lines[0].get("via")), ("/v1", "127.0.0.1", "127.0.0.1"),
       "PROXY listener's line")
    eq((lines[1]["path"], lines[1].get("via")), ("/plain", None), "plain listener's line: no via")


def test_header_addresses_become_the_client(env):
    b, d = start(env)
    cases = [
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 443\r\n", "203.0.113.7"),
        (b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n", "2001:db8::7"),
        (v2_header("198.51.100.9", "192.0.2.1", 51000, 443), "198.51.100.9"),
        (v2_header("2001:db8:1::9", "2001:db8::1", 51000, 443), "2001:db8:1::9"),
        # TLVs (AWS's VPC endpoint id, a NOOP) are skipped.
        (v2_header("192.0.2.77", "192.0.2.1", 1, 443,
                   tlvs=b"\xea\x00\x0d\x01vpce-0123abc" + b"\x04\x00\x02\x00\x00"), "192.0.2.77"),
    ]
    for i, (hdr, want) in enumerate(cases):
        s = raw(d.pp)
        s.sendall(hdr)
        t = tls_over(s)
        # A client's own X-Forwarded-For does not survive: only the header's address.
        r = get(t, f"/case{i}", [("X-Forwarded-For", "6.6.6.6")])
        eq(r.status, 200, f"case {i}")
        eq(forwarded_for(b), [want], f"case {i}: X-Forwarded-For")
        t.close()
    lines = d.wait_access(len(cases))
    eq([(x["client"], x.get("via")) for x in lines], [(w, "127.0.0.1") for _, w in cases],
       "access log client and via")
    # LOCAL (a balancer's health check) and UNKNOWN: the TCP peer stands, no via.
    for i, hdr in enumerate([SIG2 + b"\x20\x00\x00\x00", b"PROXY UNKNOWN\r\n"]):
        s = raw(d.pp, source="127.0.0.3")
        s.sendall(hdr)
        t = tls_over(s)
        eq(get(t, f"/local{i}").status, 200, f"local {i}")
        eq(forwarded_for(b), ["127.0.0.3"], f"local {i}: X-Forwarded-For is the TCP peer")
        t.close()
    lines = d.wait_access(len(cases) + 2)[len(cases):]
    eq([(x["client"], x.get("via")) for x in lines], [("127.0.0.3", None)] * 2, "LOCAL lines")


def test_refused_headers(env):
    b, d = start(env)
    cases = [
        ("absent (a TLS ClientHello)", None, "no PROXY header"),
        ("HTTP instead", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "no PROXY header"),
        ("v1 bad port", b"PROXY TCP4 1.2.3.4 5.6.7.8 01 443\r\n", "port"),
        ("v1 double space", b"PROXY TCP4  1.2.3.4 5.6.7.8 1 443\r\n", "single spaces"),
        ("v1 too long", b"PROXY UNKNOWN " + b"x" * 120 + b"\r\n", "107"),
        ("v2 version 1", SIG2 + b"\x11\x11\x00\x0c" + bytes(12), "version"),
        ("v2 UDP", SIG2 + b"\x21\x12\x00\x0c" + bytes(12), "datagram"),
        ("v2 short block", SIG2 + b"\x21\x21\x00\x0c" + bytes(12), "shorter"),
        ("v2 bad TLV", v2_header("1.2.3.4", "5.6.7.8", 1, 2, tlvs=b"\x04\x00\x09\x01"), "TLV"),
        ("v2 over 2048", SIG2 + b"\x21\x11\xff\xff", "2048"),
    ]
    for n, (name, hdr, why) in enumerate(cases, 1):
        s = raw(d.pp, source="127.0.0.4")
        if hdr is None:
            # A real client's TLS straight to the PROXY listener.
            ctx = ssl.create_default_context(cafile=pki("root-ca.crt"))
            try:
                ctx.wrap_socket(s, server_hostname="localhost").close()
                raise AssertionError("a TLS handshake succeeded without a PROXY header")
            except (ssl.SSLError, OSError):
                pass
        else:
            s.sendall(hdr)
            refused_without_tls(s)
        s.close()
        check(wait_log(d, f"127.0.0.4: refused: "), f"{name}: refusal logged")
        text = d.stderr()
        line = [x for x in text.splitlines() if "127.0.0.4: refused" in x][-1]
        check(why in line, f"{name}: the log line {line!r} does not say {why!r}")
        eq(text.count("127.0.0.4: refused"), n, f"{name}: one log line per refusal")
    eq(b.requests(), [], "nothing reached the backend")
    eq(d.access(), [], "no request was logged")
    # Others are served meanwhile and afterwards.
    s = raw(d.pp)
    s.sendall(b"PROXY TCP4 192.0.2.5 192.0.2.1 1000 443\r\n")
    eq(get(tls_over(s)).status, 200, "a good header after the refusals")


def test_split_and_delayed_headers(env):
    b, d = start(env)
    v1 = b"PROXY TCP4 192.0.2.21 192.0.2.1 1000 443\r\n"
    v2 = v2_header("192.0.2.22", "192.0.2.1", 1000, 443, tlvs=b"\x04\x00\x03abc")
    for hdr, cuts, want in [(v1, [1, 6, 11, 30, len(v1) - 1], "192.0.2.21"),
                            (v2, [1, 12, 13, 15, 16, 20, len(v2) - 1], "192.0.2.22")]:
        s = raw(d.pp)
        prev = 0
        for c in cuts + [len(hdr)]:
            s.sendall(hdr[prev:c])
            prev = c
            time.sleep(0.15)
        eq(get(tls_over(s)).status, 200, f"{want}: split header")
        eq(forwarded_for(b), [want], "X-Forwarded-For")
    # The header and the ClientHello in one segment: the TLS bytes stay for TLS.
    s = raw(d.pp)
    ctx = ssl.create_default_context(cafile=pki("root-ca.crt"))
    ctx.load_cert_chain(pki("good.chain.pem"), pki("good.key"))
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    s.sendall(v1 + out.read())  # one write: header + ClientHello
    while True:
        data = s.recv(65536)
        check(data, "closed during the handshake")
        inc.write(data)
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            s.sendall(out.read())
    s.sendall(out.read())
    obj.write(request_bytes("GET", "/coalesced"))
    s.sendall(out.read())
    got = b""
    while b"\r\n\r\n" not in got:
        data = s.recv(65536)
        check(data, "closed before the answer")
        inc.write(data)
        try:
            got += obj.read(65536)
        except ssl.SSLWantReadError:
            pass
    check(got.startswith(b"HTTP/1.1 200"), f"header + ClientHello in one segment: {got[:40]!r}")


def test_stalled_headers_time_out(env):
    b, d = start(env, {"server": {"header_timeout": "1s"}})
    t0 = time.time()
    silent = raw(d.pp, source="127.0.0.5")          # nothing at all
    partial = raw(d.pp, source="127.0.0.6")
    partial.sendall(b"PROXY TCP4 192.0.2.1")        # half a header, then nothing
    whole = raw(d.pp, source="127.0.0.8")
    whole.sendall(b"PROXY TCP4 192.0.2.31 192.0.2.1 1000 443\r\n")  # then no TLS
    # Meanwhile another client is served at once.
    s = raw(d.pp)
    s.sendall(b"PROXY TCP4 192.0.2.32 192.0.2.1 1000 443\r\n")
    eq(get(tls_over(s)).status, 200, "another client while three stall")
    check(time.time() - t0 < 0.9, "the other client was not held up")
    for sock, name in [(silent, "silent"), (partial, "partial"), (whole, "whole header")]:
        refused_without_tls(sock)
        took = time.time() - t0
        check(0.8 <= took <= 3.0, f"{name}: closed after {took:.2f}s, want about header_timeout 1s")
    check(wait_log(d, "127.0.0.5: refused: no whole PROXY header within header_timeout"),
          "silent: logged")
    check(wait_log(d, "127.0.0.6: refused: no whole PROXY header within header_timeout"),
          "partial: logged")
    # The whole header named its client: the handshake timeout is logged with it.
    check(wait_log(d, "192.0.2.31: handshake timeout"), "whole header: handshake timeout")


def test_peer_closes_mid_header(env):
    b, d = start(env)
    s = raw(d.pp, source="127.0.0.9")
    s.sendall(b"PROXY TCP6 2001:db8::")
    time.sleep(0.2)
    s.close()
    check(wait_log(d, "127.0.0.9: closed after 21 bytes of a PROXY header"), "logged (debug)")
    check("127.0.0.9: refused" not in d.stderr(), "a balancer's probe is no refusal")


def test_shutdown_while_waiting(env):
    b, d = start(env)
    s = raw(d.pp)
    s.sendall(b"PROXY TCP4 192.0.2.")  # a connection stuck in its header
    time.sleep(0.3)  # the worker has taken it
    t0 = time.time()
    eq(d.stop(), 0, "exit status on SIGTERM")  # also: no sanitizer report (leaks included)
    check(time.time() - t0 < 5, f"stopped after {time.time() - t0:.1f}s")
    refused_without_tls(s)


def test_proxy_protocol_from(env):
    b, d = start(env, {"server": {"proxy_protocol_from": "127.0.0.2/32, 2001:db8::/32"}})
    s = raw(d.pp, source="127.0.0.1")
    s.sendall(b"PROXY TCP4 192.0.2.41 192.0.2.1 1000 443\r\n")
    refused_without_tls(s)
    check(wait_log(d, "127.0.0.1: refused: not in [server] proxy_protocol_from"), "logged")
    s = raw(d.pp, source="127.0.0.2")
    s.sendall(b"PROXY TCP4 192.0.2.42 192.0.2.1 1000 443\r\n")
    eq(get(tls_over(s)).status, 200, "from an allowed balancer")
    eq(forwarded_for(b), ["192.0.2.42"], "X-Forwarded-For")
    # The plain listener is not concerned.
    eq(get(tls_over(raw(d.port, source="127.0.0.1"))).status, 200, "plain listener")


HAPROXY_CFG = """global
    log stderr format short local0 info
defaults
    mode tcp
    log global
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:{front}
    default_backend be
backend be
    server certmapd 127.0.0.1:{pp} send-proxy-v2 check inter 300ms
"""


def test_haproxy_send_proxy_v2_mtls(env):
    b, d = start(env)
    front = free_port()
    cfg = os.path.join(env.dir, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(HAPROXY_CFG.format(front=front, pp=d.pp))
    log = open(os.path.join(env.dir, "haproxy.log"), "w")
    hp = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=log, stderr=subprocess.STDOUT)

    def stop():
        hp.terminate()
        hp.wait(5)
        log.close()
    env.add_cleanup(stop)
    wait_port(front, hp)
    resolve = ["--resolve", f"localhost:{front}:127.0.0.1", "--interface", "127.0.0.7"]
    url = f"https://localhost:{front}/through-haproxy"
    status, body, _ = curl(url, "good", resolve)
    eq(status, 200, "mTLS through HAProxy (TCP mode, send-proxy-v2)")
    req = b.requests()[-1]
    hdrs = {k.lower(): v for k, v in req["headers"]}
    eq(hdrs.get("x-forwarded-for"), "127.0.0.7", "the original client's address")
    check(hdrs.get("x-client-cert-serial"), "the client certificate reached certmapd")
    # Without a certificate: refused by certmapd, as without the hop.
    status, _, _ = curl(url, None, resolve)
    eq(status, 403, "no client certificate through the hop")
    lines = d.wait_access(2)
    eq([(x["client"], x.get("via"), x["status"]) for x in lines],
       [("127.0.0.7", "127.0.0.1", "200"), ("127.0.0.7", "127.0.0.1", "403")],
       "access log: client from the header, via the balancer")
    eq(lines[1]["reason"], "cert_required", "reason")
    # HAProxy's health checks send a LOCAL header: the TCP peer stands, nothing is refused.
    check(wait_log(d, "127.0.0.1: PROXY v2 header of 16 bytes without a client address"),
          "a health check's LOCAL header")
    check(": refused" not in d.stderr(), "no refusal")


def test_config_check(env):
    base = Certmapd(env.dir, "http://127.0.0.1:9",
                    {"server": {"listen": ["127.0.0.1:1 proxy_protocol", "127.0.0.1:2"]}})
    text = open(base.conf_path).read()

    def check_conf(body):
        path = os.path.join(env.dir, "check.conf")
        with open(path, "w") as f:
            f.write(body)
        p = subprocess.run([BIN, "-t", "-c", path], capture_output=True, text=True)
        return p.returncode, (p.stdout + p.stderr).strip(), path

    rc, out, _ = check_conf(text)
    eq(rc, 0, f"listen ... proxy_protocol is valid: {out}")
    # (line replaced, its replacement, the line the error must name, the reason)
    bad = [
        ("listen = 127.0.0.1:2\n", "listen = 127.0.0.1:2 proxy\n", "listen = 127.0.0.1:2 proxy",
         'listen: unknown word "proxy" after the address (known: proxy_protocol)'),
        ("listen = 127.0.0.1:2\n", "listen = 127.0.0.1:2 proxy_protocol proxy_protocol\n",
         "listen = 127.0.0.1:2 proxy_protocol", "proxy_protocol is written twice"),
        ("listen = 127.0.0.1:1 proxy_protocol\n",
         "listen = 127.0.0.1:1\nproxy_protocol_from = 10.0.0.0/8\n", "proxy_protocol_from",
         "proxy_protocol_from is set, but no listen has proxy_protocol"),
        ("[server]\n", "[server]\nproxy_protocol_from = 10.1.0.0/8\n", "proxy_protocol_from",
         "bits set past its /8"),
        ("[server]\n", "[server]\nproxy_protocol_from = 10.0.0.0/33\n", "proxy_protocol_from",
         "is not ADDRESS"),
        ("[server]\n", "[server]\nproxy_protocol_from = ,\n", "proxy_protocol_from",
         "no network given"),
    ]
    for old, new, at, want in bad:
        body = text.replace(old, new, 1)
        check(body != text, f"test setup: {old!r} not in the file")
        rc, out, path = check_conf(body)
        eq(rc, 1, f"{new!r}: -t exit status")
        lineno = [i for i, x in enumerate(body.splitlines(), 1) if x.startswith(at)][0]
        check(out.startswith(f"{path}:{lineno}: "), f"{new!r}: not at line {lineno}: {out!r}")
        check(want in out, f"{new!r}: {out!r} does not say {want!r}")


if __name__ == "__main__":
    run([test_curl_v1_and_plain_listener_beside, test_header_addresses_become_the_client,
         test_refused_headers, test_split_and_delayed_headers, test_stalled_headers_time_out,
         test_peer_closes_mid_header, test_shutdown_while_waiting, test_proxy_protocol_from, test_haproxy_send_proxy_v2_mtls,
         test_config_check])
