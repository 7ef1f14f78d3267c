#!/usr/bin/env python3
"""[metrics]: the Prometheus text at /metrics and the load balancer's /healthz,
scraped from a real certmapd with real clients (curl), a real backend, an
LDIF mapping source or a directory (fakedc.py, real LDAPS). Every scrape is
parsed whole by a strict parser of the text format; counters are checked by
their exact deltas across the requests a test makes."""
import math
import os
import re
import socket
import subprocess
import time

import leaves
from fakedc import FakeDC, entry
from harness import BIN, check, curl, eq, free_port, pki, run, wait_port
from samba import sid_to_bytes

DOMAIN_SID = "S-1-5-21-1111111111-2222222222-3333333333"
BASE = "DC=corp,DC=example,DC=test"
PATH = "/Microsoft-Server-ActiveSync?Cmd=Ping"

# ---- a strict reader of the Prometheus text format (0.0.4) -----------------------------

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
SAMPLE = re.compile(rf"^({NAME})(?:\{{(.*)\}})? (\S+)$")
LABEL_PAIR = re.compile(rf'({LABEL})="((?:[^"\\\n]|\\[\\"n])*)"')
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


def parse_labels(text, line):
    labels, pos = {}, 0
    while pos < len(text):
        m = LABEL_PAIR.match(text, pos)
        if not m:
            raise AssertionError(f"malformed labels at {pos}: {line!r}")
        name = m.group(1)
        if name in labels:
            raise AssertionError(f"label {name} twice: {line!r}")
        labels[name] = re.sub(r"\\(.)", lambda x: "\n" if x.group(1) == "n" else x.group(1),
                              m.group(2))
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise AssertionError(f"expected ',' at {pos}: {line!r}")
            pos += 1
            if pos == len(text):
                raise AssertionError(f"trailing comma: {line!r}")
    return labels


def parse_value(s, line):
    if s in ("+Inf", "-Inf", "NaN"):
        return float(s.replace("Inf", "inf").replace("NaN", "nan"))
    if not re.fullmatch(r"-?\d+(\.\d+)?([eE][+-]?\d+)?", s):
        raise AssertionError(f"malformed value {s!r}: {line!r}")
    return float(s)


def family_of(name, types):
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and types.get(name[:-len(suffix)]) == "histogram":
            return name[:-len(suffix)]
    return name


def parse(text):
    """{(name, frozenset(labels.items())): value}; raises on any line that is not
    the text format, on a family's samples that are not together, on a sample
    before its TYPE, on duplicate series and on a histogram that does not add up."""
    check(text.endswith("\n"), "the exposition ends with a newline")
    types, helps, samples, seen_families, current = {}, {}, {}, [], None
    for line in text.split("\n")[:-1]:
        if line.startswith("#"):
            m = re.fullmatch(rf"# (HELP|TYPE) ({NAME}) (.+)", line)
            if not m:
                raise AssertionError(f"malformed comment line {line!r}")
            kind, name, rest = m.groups()
            table = helps if kind == "HELP" else types
            if name in table:
                raise AssertionError(f"{kind} for {name} twice")
            if kind == "TYPE":
                if rest not in TYPES:
                    raise AssertionError(f"unknown type {rest!r}")
                if name in seen_families:
                    raise AssertionError(f"TYPE of {name} after its samples")
            table[name] = rest
            check(name.startswith("certmapd_"), f"{name}: certmapd_ prefix")
            continue
        m = SAMPLE.match(line)
        if not m:
            raise AssertionError(f"malformed sample line {line!r}")
        name, labels, value = m.group(1), parse_labels(m.group(2) or "", line), m.group(3)
        fam = family_of(name, types)
        if fam not in types:
            raise AssertionError(f"sample of {name} without a TYPE before it")
        if fam != current:
            if fam in seen_families:
                raise AssertionError(f"samples of {fam} are not together")
            seen_families.append(fam)
            current = fam
        if types[fam] == "counter":
            check(name.endswith("_total"), f"counter {name} ends with _total")
        key = (name, frozenset(labels.items()))
        if key in samples:
            raise AssertionError(f"series {line!r} twice")
        v = parse_value(value, line)
        if types[fam] in ("counter",) or name.endswith(("_bucket", "_count")):
            check(v >= 0 and v == int(v), f"{line!r}: a count")
        samples[key] = v
    for fam, t in types.items():
        check(fam in helps, f"{fam} has HELP")
        if t != "histogram":
            continue
        buckets = sorted(((float(dict(k[1])["le"].replace("+Inf", "inf")), v)
                          for k, v in samples.items() if k[0] == fam + "_bucket"))
        check(buckets and math.isinf(buckets[-1][0]), f"{fam}: a +Inf bucket")
        check(all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), f"{fam}: cumulative")
        eq(buckets[-1][1], samples[(fam + "_count", frozenset())], f"{fam}: +Inf = _count")
    return samples


def get(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0)


# ---- HTTP on the metrics port ------------------------------------------------------------

def http(port, raw, timeout=10):
    """Sends <raw> bytes; returns (status, headers dict, body) of the answer, which
    must be a whole HTTP/1.1 response followed by the connection's close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, sep, body = data.partition(b"\r\n\r\n")
    check(sep, f"a whole response head: {data[:200]!r}")
    lines = head.decode("latin-1").split("\r\n")
    m = re.fullmatch(r"HTTP/1\.1 (\d{3}) [A-Za-z ]+", lines[0])
    check(m, f"status line {lines[0]!r}")
    headers = {}
    for h in lines[1:]:
        k, _, v = h.partition(":")
        headers[k.strip().lower()] = v.strip()
    eq(int(headers["content-length"]), len(body), "Content-Length")
    eq(headers.get("connection"), "close", "Connection")
    return int(m.group(1)), headers, body.decode()


def scrape(port):
    status, headers, body = http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    eq(status, 200, "/metrics status")
    check(headers["content-type"].startswith("text/plain; version=0.0.4"), "content type")
    return parse(body)


def healthz(port):
    status, _, body = http(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    return status, body


def wait_for(pred, what, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# ---- set-ups -----------------------------------------------------------------------------

def ldif_account(name, rid, altsecid):
    import base64
    sid = f"{DOMAIN_SID}-{rid}"
    return "\n".join([
        f"dn: CN={name},CN=Users,{BASE}", "objectClass: top", "objectClass: person",
        "objectClass: user", f"sAMAccountName: {name}",
        "objectSid:: " + base64.b64encode(sid_to_bytes(sid)).decode(),
        "whenCreated: 20200101000000.0Z", "userAccountControl: 512",
        "accountExpires: 9223372036854775807", f"userPrincipalName: {name}@corp.example.test",
        f"altSecurityIdentities: {altsecid}"]) + "\n\n"


def start_ldif(env, accounts):
    ldif = os.path.join(env.dir, "accounts.ldif")
    with open(ldif, "w") as f:
        f.write("version: 1\n\n" + "".join(accounts))
    b = env.backend()
    mport = free_port()
    d = env.certmapd(b, {
        "mapping": {"source": "ldif", "ldif_file": ldif, "netbios_domain": "CORP"},
        "metrics": {"listen": f"127.0.0.1:{mport}", "healthz_timeout": "500ms"},
    })
    wait_port(mport, d.proc)
    settled(mport)
    return b, d, mport


def open_connections(s):
    return sum(get(s, "certmapd_connections", state=st)
               for st in ("handshake", "idle", "active", "closing"))


def settled(port):
    """A scrape once the harness's probe of the TLS port (wait_port: a TCP connect,
    no handshake) has been accepted and closed, so that it falls before a test's
    first scrape, not inside its deltas."""
    return wait_for(lambda: (lambda s: s if get(s, "certmapd_connections_accepted_total") >= 1
                             and open_connections(s) == 0 else None)(scrape(port)),
                    "the harness's probe to be counted")


# ---- tests -------------------------------------------------------------------------------

def test_counts_by_status_and_reason(env):
    alice = leaves.issue(env.dir, "alice")
    bob = leaves.issue(env.dir, "bob")  # no account: no_mapping
    b, d, mport = start_ldif(env, [ldif_account("alice", 1104, leaves.strong_altsecid(alice))])
    before = scrape(mport)

    eq(curl(d.base + PATH, args=alice.curl_args())[0], 200, "alice")
    eq(curl(d.base + PATH, args=alice.curl_args())[0], 200, "alice again (cached)")
    eq(curl(d.base + PATH, args=bob.curl_args())[0], 403, "bob")
    eq(curl(d.base + PATH)[0], 403, "no certificate")
    eq(curl(d.base + PATH, cert="revoked")[0], 403, "revoked")
    eq([r["reason"] for r in d.wait_access(5)],
       ["-", "-", "no_mapping", "cert_required", "cert_revoked"], "access log reasons")

    after = wait_for(lambda: (lambda s: s if open_connections(s) == 0 else None)(scrape(mport)),
                     "every client connection to be counted closed")

    def delta(name, **labels):
        return get(after, name, **labels) - get(before, name, **labels)

    eq(delta("certmapd_requests_total", status="200", reason=""), 2, "200")
    eq(delta("certmapd_requests_total", status="403", reason="no_mapping"), 1, "no_mapping")
    eq(delta("certmapd_requests_total", status="403", reason="cert_required"), 1,
       "cert_required")
    eq(delta("certmapd_requests_total", status="403", reason="cert_revoked"), 1, "cert_revoked")
    eq(sum(v for (n, _), v in after.items() if n == "certmapd_requests_total")
       - sum(v for (n, _), v in before.items() if n == "certmapd_requests_total"), 5,
       "no other request counted")
    eq(delta("certmapd_connections_accepted_total"), 5, "connections accepted")
    eq(delta("certmapd_tls_handshakes_total", kind="full", result="ok"), 5, "full handshakes")
    eq(delta("certmapd_tls_handshakes_total", kind="full", result="failed"), 0, "failed")
    eq(delta("certmapd_identity_cache_lookups_total", result="miss"), 2, "cache misses")
    eq(delta("certmapd_identity_cache_lookups_total", result="hit"), 1, "cache hits")
    # alice (positive) and bob (negative) are held
    eq(get(after, "certmapd_identity_cache_entries"), 2, "cache entries")
    # each 200 went on a new backend connection or a pooled one
    # (a pooled one the backend had closed is retried on a new one: stale)
    eq(delta("certmapd_backend_connects_total", result="ok")
       + delta("certmapd_backend_pool_total", result="reused")
       - delta("certmapd_backend_pool_total", result="stale"), 2, "backend connections used")
    eq(delta("certmapd_backend_connects_total", result="error"), 0, "backend errors")
    check(get(after, "certmapd_backend_connections", state="pooled")
          <= get(after, "certmapd_backend_connections", state="open"), "pooled <= open")
    # the test PKI's crl.pem is the issuing CA's CRL
    ages = [(dict(k[1])["issuer"], v) for k, v in after.items()
            if k[0] == "certmapd_crl_age_seconds"]
    check(len(ages) >= 1 and all(0 <= v < 10 * 365 * 86400 for _, v in ages), f"CRL ages {ages}")
    check(any("Issuing CA" in issuer for issuer, _ in ages), f"the issuing CA's CRL: {ages}")
    eq(delta("certmapd_reloads_total", result="ok"), 0, "no reload")


def test_healthz_follows_the_backend(env):
    alice = leaves.issue(env.dir, "alice")
    b, d, mport = start_ldif(env, [ldif_account("alice", 1104, leaves.strong_altsecid(alice))])
    status, body = healthz(mport)
    eq(status, 200, f"healthz with the backend up: {body}")
    check(f"backend ok: 127.0.0.1:{b.port}" in body, body)
    check("directory not checked" in body, body)
    eq(curl(d.base + PATH, args=alice.curl_args())[0], 200, "alice")

    before = scrape(mport)
    port = b.port
    b.stop()
    status, body = healthz(mport)
    eq(status, 503, f"healthz with the backend down: {body}")
    check(f"backend down: 127.0.0.1:{port}: Connection refused" in body, body)
    eq(curl(d.base + PATH, args=alice.curl_args())[0], 502, "backend down")
    after = scrape(mport)
    eq(get(after, "certmapd_requests_total", status="502", reason="backend_unavailable")
       - get(before, "certmapd_requests_total", status="502", reason="backend_unavailable"), 1,
       "502 backend_unavailable")
    check(get(after, "certmapd_backend_connects_total", result="error")
          > get(before, "certmapd_backend_connects_total", result="error"), "connect errors")

    b.start(port=port)
    status, body = healthz(mport)
    eq(status, 200, f"healthz with the backend back: {body}")
    eq(curl(d.base + PATH, args=alice.curl_args())[0], 200, "alice, backend back")


def test_strict_http(env):
    b, d, mport = start_ldif(env, [])
    cases = [
        (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
        (b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"GET /metrics/ HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET / HTTP/1.1\r\n\r\n", 404),
        (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
        (b"GET /metrics HTTP/1.1 x\r\n\r\n", 400),
        (b"GET  /metrics HTTP/1.1\r\n\r\n", 400),
        (b"GET /metrics\r\n\r\n", 400),
        (b"\r\nGET /metrics HTTP/1.1\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\nHost: x\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nHost: x\rY\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nNo colon\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\n: empty\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nBad Name: v\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400),
        (b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET /healthz HTTP/1.0\r\n\r\n", 200),
        (b"GET /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 200),
    ]
    for raw, want in cases:
        status, _, _ = http(mport, raw)
        eq(status, want, f"answer to {raw[:60]!r}")

    # Clients that send nothing are dropped by the deadline; meanwhile, even with
    # more of them than the listener serves at once (64), scrapes and checks go on.
    idle = [socket.create_connection(("127.0.0.1", mport)) for _ in range(80)]
    t0 = time.time()
    scrape(mport)
    eq(healthz(mport)[0], 200, "healthz beside idle clients")
    idle[-1].settimeout(20)
    eq(idle[-1].recv(1), b"", "an idle client is closed")
    check(time.time() - t0 < 8, "within the 5 s head deadline")
    for s in idle:
        s.close()
    # certmapd itself is unaffected
    eq(curl(d.base + PATH, cert="good")[0], 403, "the TLS listener still answers (no_mapping)")


def s_client(port, sess_in=None, sess_out=None):
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
           "-CAfile", pki("root-ca.crt"), "-tls1_2", "-ign_eof", "-cert", pki("good.crt"),
           "-key", pki("good.key"), "-cert_chain", pki("issuing-ca.crt")]
    cmd += ["-sess_in", sess_in] if sess_in else ["-sess_out", sess_out]
    req = b"GET /public HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    return subprocess.run(cmd, input=req, capture_output=True, timeout=20).stdout.decode("latin-1")


def test_resumed_and_late_handshakes(env):
    b = env.backend()
    mport = free_port()
    d = env.certmapd(b, {"client_certificate": {"mode": "ignore"},
                         "location /Microsoft-Server-ActiveSync": {"client_certificate": "require"},
                         "metrics": {"listen": f"127.0.0.1:{mport}"}})
    wait_port(mport, d.proc)
    # the harness's probe of the TLS port (a TCP connect, no handshake) is counted once done
    before = wait_for(lambda: (lambda x: x if get(
        x, "certmapd_tls_handshakes_total", kind="full", result="closed") >= 1 else None)(
        scrape(mport)), "the harness's TCP probe counted as closed")
    sess = os.path.join(env.dir, "sess")
    out = s_client(d.port, sess_out=sess)
    check("HTTP/1.1 200" in out, out[-500:])
    out = s_client(d.port, sess_in=sess)
    check("Reused" in out and "HTTP/1.1 200" in out, out[-500:])
    # curl offers post-handshake auth: the certificate is asked for late, and given
    eq(curl(d.base + PATH, cert="good")[0], 200, "late certificate")
    # a client without one: the late request is answered with no certificate (403)
    eq(curl(d.base + PATH)[0], 403, "late, no certificate")
    # a TCP connection that sends nothing and closes
    socket.create_connection(("127.0.0.1", d.port)).close()
    after = wait_for(lambda: (lambda x: x if get(
        x, "certmapd_tls_handshakes_total", kind="full", result="closed") >= get(
        before, "certmapd_tls_handshakes_total", kind="full", result="closed") + 1 else None)(
        scrape(mport)), "the TCP probe counted")

    def delta(**labels):
        return get(after, "certmapd_tls_handshakes_total", **labels) - get(
            before, "certmapd_tls_handshakes_total", **labels)

    eq(delta(kind="full", result="ok"), 3, "full: s_client, two curls")
    eq(delta(kind="resumed", result="ok"), 1, "resumed: s_client -sess_in")
    eq(delta(kind="late", result="ok"), 2, "late: both curls answered the request")
    eq(delta(kind="late", result="failed"), 0, "late failures")
    eq(delta(kind="full", result="failed"), 0, "TLS failures")
    eq(delta(kind="full", result="closed"), 1, "closed before any handshake")
    # not TLS at all
    with socket.create_connection(("127.0.0.1", d.port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        s.recv(100)
    wait_for(lambda: get(scrape(mport), "certmapd_tls_handshakes_total", kind="full",
                         result="failed") == 1, "plain HTTP on the TLS port: a failed handshake")
    eq(get(scrape(mport), "certmapd_requests_total", status="403", reason="cert_required")
       - get(before, "certmapd_requests_total", status="403", reason="cert_required"), 1,
       "cert_required")


def test_directory_health_and_searches(env):
    leaf = leaves.issue(env.dir, "dirk")
    attrs = [("objectClass", ["top", "person", "user"]), ("sAMAccountName", ["dirk"]),
             ("userPrincipalName", ["dirk@corp.example.test"]),
             ("objectSid", [sid_to_bytes(DOMAIN_SID + "-1600")]),
             ("userAccountControl", ["512"]), ("whenCreated", ["20200101000000.0Z"]),
             ("altSecurityIdentities", [leaves.strong_altsecid(leaf)])]
    dc = FakeDC(pki("server-chain.pem"), pki("server.key"), BASE,
                lambda base, scope: [lambda m: entry(m, f"CN=dirk,CN=Users,{BASE}", attrs)])
    env.add_cleanup(dc.stop)
    secret = os.path.join(env.dir, "secret")
    with open(secret, "w") as f:
        f.write("any-password")
    dead = free_port()  # nothing listens: the first uri is down
    b = env.backend()
    mport = free_port()
    ldap = {"uri": f"ldaps://127.0.0.1:{dead} {dc.uri}", "base_dn": BASE,
            "bind_dn": "svc-seg@corp.example.test", "bind_password_file": secret,
            "ca_file": pki("root-ca.crt"), "timeout": "2s"}
    d = env.certmapd(b, {
        "server": {"workers": "2"},
        "mapping": {"source": "ldap", "methods": "altsecid"},
        "ldap": ldap,
        "metrics": {"listen": f"127.0.0.1:{mport}"},
    })
    wait_port(mport, d.proc)
    s = wait_for(lambda: (lambda x: x if get(x, "certmapd_directory_connections",
                                                uri=dc.uri) == 2 else None)(scrape(mport)),
                 "both workers connected to the second uri")
    eq(get(s, "certmapd_directory_connections", uri=f"ldaps://127.0.0.1:{dead}"), 0,
       "none to the dead uri")
    status, body = healthz(mport)
    eq(status, 200, body)
    check("directory ok: 2 worker connection(s) bound" in body, body)

    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, "mapped through the directory")
    after = scrape(mport)
    eq(get(after, "certmapd_directory_searches_total", result="ok")
       - get(s, "certmapd_directory_searches_total", result="ok"), 1, "one search")
    eq(get(after, "certmapd_directory_search_duration_seconds_count")
       - get(s, "certmapd_directory_search_duration_seconds_count"), 1, "histogram count")
    check(get(after, "certmapd_directory_search_duration_seconds_bucket", le="+Inf")
          == get(after, "certmapd_directory_search_duration_seconds_count"), "+Inf bucket")


def test_directory_down(env):
    secret = os.path.join(env.dir, "secret")
    with open(secret, "w") as f:
        f.write("any-password")
    dead = free_port()
    b = env.backend()
    mport = free_port()
    d = env.certmapd(b, {
        "mapping": {"source": "ldap", "methods": "altsecid"},
        "ldap": {"uri": f"ldaps://127.0.0.1:{dead}", "base_dn": BASE,
                 "bind_dn": "svc-seg@corp.example.test", "bind_password_file": secret,
                 "ca_file": pki("root-ca.crt"), "timeout": "1s"},
        "metrics": {"listen": f"127.0.0.1:{mport}"},
    })
    wait_port(mport, d.proc)
    status, body = healthz(mport)
    eq(status, 503, body)
    check(f"backend ok: 127.0.0.1:{b.port}" in body, body)
    check("directory down: no worker is connected to any [ldap] uri" in body, body)
    leaf = leaves.issue(env.dir, "nobody")
    before = scrape(mport)
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 503, "directory_unavailable")
    after = scrape(mport)
    eq(get(after, "certmapd_requests_total", status="503", reason="directory_unavailable")
       - get(before, "certmapd_requests_total", status="503", reason="directory_unavailable"), 1,
       "503 counted")
    searches = sum(get(after, "certmapd_directory_searches_total", result=r)
                   - get(before, "certmapd_directory_searches_total", result=r)
                   for r in ("failed", "timeout"))
    check(searches >= 1, "the failed searches are counted")
    eq(get(after, "certmapd_directory_connections", uri=f"ldaps://127.0.0.1:{dead}"), 0, "down")


def check_conf(env, metrics, want_line=None, want_text=None):
    path = os.path.join(env.dir, "check.conf")
    port = free_port()
    with open(path, "w") as f:
        f.write(f"[server]\nlisten = 127.0.0.1:{port}\n\n"
                f"[tls]\ncertificate = {pki('server-chain.pem')}\n"
                f"private_key = {pki('server.key')}\n\n"
                f"[client_certificate]\nmode = ignore\n\n"
                "[backend]\nurl = http://127.0.0.1:9\n\n"
                "[metrics]\n" + metrics.format(port=port))
    p = subprocess.run([BIN, "-t", "-c", path], capture_output=True, text=True, timeout=30)
    if want_text is None:
        eq(p.returncode, 0, f"-t accepts {metrics!r}: {p.stderr}")
        return
    eq(p.returncode, 1, f"-t refuses {metrics!r}")
    check(p.stderr.startswith(f"{path}:{want_line}: "), f"FILE:LINE in {p.stderr!r}")
    check(want_text in p.stderr, f"{want_text!r} in {p.stderr!r}")


def test_config_check(env):
    check_conf(env, "listen = 127.0.0.1:9101\nhealthz_timeout = 250ms\n")
    check_conf(env, "listen = [::1]:9101\n")
    check_conf(env, "listen = 9101\n", 15, "is not HOST:PORT")
    check_conf(env, "listen = 127.0.0.1:0\n", 15, "port must be a number 1..65535")
    check_conf(env, "listen = 127.0.0.1:{port}\n", 15, "is also a [server] listen address")
    check_conf(env, "listen = bad host:1\n", 15, "not a valid host name")
    check_conf(env, "listen = 127.0.0.1:9101\nlisten = 127.0.0.1:9102\n", 16, "duplicate key")
    check_conf(env, "healthz_timeout = 0\n", 15, "healthz_timeout")
    check_conf(env, "healthz_timeout = 2m\n", 15, "healthz_timeout")
    check_conf(env, "path = /metrics\n", 15, "unknown key")


def test_listen_taken_fails_startup(env):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    d = env.certmapd(None, {"metrics": {"listen": f"127.0.0.1:{port}"}}, start=False)
    p = subprocess.run([BIN, "-c", d.conf_path], capture_output=True, text=True, timeout=30)
    busy.close()
    eq(p.returncode, 1, "start-up fails")
    check("[metrics] listen" in p.stderr and "Address already in use" in p.stderr, p.stderr)


def test_reloads(env):
    """Reloads are counted by result, and /healthz follows the backend of the
    newest generation."""
    alice = leaves.issue(env.dir, "alice")
    b, d, mport = start_ldif(env, [ldif_account("alice", 1104, leaves.strong_altsecid(alice))])
    b2 = env.backend()
    before = scrape(mport)
    with open(d.conf_path) as f:
        good = f.read()
    with open(d.conf_path, "w") as f:
        f.write(good.replace(f"url = {b.url}", f"url = {b2.url}"))
    d.reload()
    with open(d.conf_path, "w") as f:
        f.write(good + "[server]\nbody_timeout = later\n")
    d.reload(r"still serving generation 2")
    after = scrape(mport)
    eq(get(after, "certmapd_reloads_total", result="ok")
       - get(before, "certmapd_reloads_total", result="ok"), 1, "reloads ok")
    eq(get(after, "certmapd_reloads_total", result="failed")
       - get(before, "certmapd_reloads_total", result="failed"), 1, "reloads failed")
    check(get(after, "certmapd_last_reload_success_timestamp_seconds") > time.time() - 60,
          "the last good reload's time")
    status, body = healthz(mport)
    eq(status, 200, body)
    check(f"backend ok: 127.0.0.1:{b2.port}" in body, f"healthz checks the new backend: {body}")
    b.stop()  # the old backend going does not matter any more
    eq(healthz(mport)[0], 200, "the old backend stopped")


if __name__ == "__main__":
    run([test_counts_by_status_and_reason, test_healthz_follows_the_backend, test_strict_http,
         test_resumed_and_late_handshakes,
         test_directory_health_and_searches, test_directory_down, test_config_check,
         test_listen_taken_fails_startup, test_reloads])
