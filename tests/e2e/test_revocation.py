#!/usr/bin/env python3
"""Revocation that stays fresh, end to end: crl_file replaced (by rename) and
rewritten in place while certmapd runs, without any reload: a certificate the
new CRL revokes is refused within crl_refresh, on new connections and at the
next request of open ones, while a request in flight is not cut;
a new file that does not parse, is not signed by its CA or is older than the
one in use is not used (the old one stays) and that is logged once; a CRL
that expires while in use makes its CA's certificates "revocation unknown",
refused or allowed by revocation_unknown, logged once per CA.

The CA is a copy of the test PKI's issuing CA (its `openssl ca` database,
key and certificate) in the test's directory, so that revoking a certificate
and issuing CRLs here leaves the shared PKI alone."""
import http.server
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time

from harness import (Reader, check, curl, eq, free_port, pki, request_bytes, run,
                     tls_connect)

REFRESH = "300ms"
OTHER_CRLS = ["crl-root-ca.pem", "crl-other-root-ca.pem", "crl-other-issuing-ca.pem"]


def utc(delta_s):
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(time.time() + delta_s))


class CA:
    """A private copy of issuing-ca: revoke leaves, issue CRLs with `openssl ca`."""

    def __init__(self, workdir):
        self.dir = tempfile.mkdtemp(prefix="ca-", dir=workdir)
        shutil.copytree(pki("db/issuing-ca"), os.path.join(self.dir, "db"))
        shutil.copy(pki("cnf/ca.cnf"), self.dir)
        self.env = dict(os.environ, CM_DB=os.path.join(self.dir, "db"),
                        CM_CACERT=pki("issuing-ca.crt"), CM_CAKEY=pki("issuing-ca.key"))

    def ca(self, *args):
        p = subprocess.run(["openssl", "ca", "-config", os.path.join(self.dir, "ca.cnf"), "-batch",
                            "-notext"] + list(args), env=self.env, capture_output=True, text=True)
        check(p.returncode == 0, f"openssl ca {args}: {p.stderr}")

    def revoke(self, leaf):
        crt = leaf if leaf.startswith("/") else pki(f"{leaf}.crt")
        self.ca("-revoke", crt, "-crl_reason", "keyCompromise")

    def crl(self, last=-60, nxt=30 * 86400, exts=None):
        """A new CRL (PEM text) of this CA, valid from now+<last> to now+<nxt> seconds;
        <exts>: the lines of its crl_extensions (default: the key identifier only)."""
        out = os.path.join(self.dir, "new.crl")
        args = ["-gencrl", "-crl_lastupdate", utc(last), "-crl_nextupdate", utc(nxt), "-out", out]
        if exts is not None:
            self.n = getattr(self, "n", 0) + 1
            with open(os.path.join(self.dir, "ca.cnf"), "a") as f:
                f.write(f"\n[crlx{self.n}]\nauthorityKeyIdentifier = keyid:always\n"
                        + "".join(line + "\n" for line in exts))
            args += ["-crlexts", f"crlx{self.n}"]
        self.ca(*args)
        return open(out).read()

    def crl_number(self):
        """The number the next CRL will have (the database's crlnumber, hex)."""
        return int(open(os.path.join(self.dir, "db", "crlnumber")).read(), 16)

    def issue(self, name, cdp=None, aia=None, lifetime=None):
        """A client leaf NAME (key, cert, chain in this CA's directory) naming the
        distribution point <cdp> (URI:... entries, comma separated) and the OCSP
        responder URL <aia>, valid for <lifetime> seconds more (default: the CA's days)."""
        d = self.dir
        key, csr, crt = (os.path.join(d, f"{name}.{x}") for x in ("key", "csr", "crt"))
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-out", key], check=True, capture_output=True)
        subprocess.run(["openssl", "req", "-new", "-key", key, "-subj",
                        f"/DC=test/DC=example/DC=corp/OU=Users/CN={name}", "-out", csr],
                       check=True, capture_output=True)
        ext = os.path.join(d, f"{name}.ext")
        with open(ext, "w") as f:
            f.write("[leaf]\nbasicConstraints = critical,CA:false\n"
                    "keyUsage = critical,digitalSignature\nextendedKeyUsage = clientAuth\n"
                    f"subjectAltName = email:{name}@corp.example.test\n"
                    "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n"
                    + (f"crlDistributionPoints = {cdp}\n" if cdp else "")
                    + (f"authorityInfoAccess = OCSP;URI:{aia}\n" if aia else ""))
        self.ca("-preserveDN", "-in", csr, "-out", crt, "-extfile", ext, "-extensions", "leaf",
                "-startdate", utc(-3600), *(["-enddate", utc(lifetime)] if lifetime else []))
        with open(os.path.join(d, f"{name}.chain.pem"), "w") as f:
            f.write(open(crt).read() + open(pki("issuing-ca.crt")).read())
        return crt


def crl_file_text(issuing_crl):
    """A crl_file: <issuing_crl> and the current CRLs of the PKI's other CAs."""
    return issuing_crl + "".join(open(pki(n)).read() for n in OTHER_CRLS)


def replace_by_rename(path, text):
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def rewrite_in_place(path, text):
    with open(path, "r+") as f:
        f.truncate(0)
        f.write(text)


def start(env, crl_text, extra=None):
    b = env.backend()
    path = os.path.join(env.dir, "crl-live.pem")
    with open(path, "w") as f:
        f.write(crl_text)
    cc = {"crl_file": path, "crl_refresh": REFRESH}
    cc.update(extra or {})
    d = env.certmapd(b, {"client_certificate": cc})
    return b, d, path


def status_of(d, cert, ca=None):
    if ca is None or not os.path.exists(os.path.join(ca.dir, f"{cert}.key")):
        return curl(d.base + "/x", cert=cert)[0]
    key = os.path.join(ca.dir, f"{cert}.key")
    chain = os.path.join(ca.dir, f"{cert}.chain.pem")
    return curl(d.base + "/x", args=["--cert", chain, "--key", key])[0]


def wait_status(d, cert, want, timeout, ca=None):
    """Polls until <cert> gets <want>; returns the seconds it took (or fails)."""
    t0 = time.time()
    while True:
        got = status_of(d, cert, ca)
        if got == want:
            return time.time() - t0
        check(time.time() - t0 < timeout, f"{cert}: still {got} after {timeout}s, want {want}")
        time.sleep(0.05)


def held_connection(d, cert):
    """A keep-alive connection that has had one good answer."""
    s = tls_connect(d.port, cert=cert)
    r = Reader(s)
    s.sendall(request_bytes("GET", "/held"))
    eq(r.response().status, 200, "first request on the held connection")
    return s, r


def count(text, needle):
    return text.count(needle)


def rotated(env, write):
    ca = CA(env.dir)
    b, d, path = start(env, crl_file_text(open(pki("crl-issuing-ca.pem")).read()))
    eq(status_of(d, "sid"), 200, "sid before its revocation")
    eq(status_of(d, "revoked"), 403, "revoked before")
    s, r = held_connection(d, "sid")
    # A long poll in flight on that connection while the CRL changes.
    s.sendall(request_bytes("GET", "/held-poll?delay=1.5"))
    t_poll = time.time()
    ca.revoke("sid")
    write(path, crl_file_text(ca.crl()))
    took = wait_status(d, "sid", 403, timeout=5)
    print(f"  sid refused {took * 1000:.0f} ms after the new CRL was written "
          f"(crl_refresh {REFRESH})")
    check(took < 2.0, f"refused only after {took:.1f}s (crl_refresh {REFRESH})")
    log = d.access()
    eq(log[-1]["reason"], "cert_revoked", "reason once the new CRL is in use")
    eq(status_of(d, "good"), 200, "good, not in the new CRL")
    eq(status_of(d, "revoked"), 403, "revoked stays revoked")
    # The request in flight was admitted before: it is not cut.
    eq(r.response().status, 200, "the long poll in flight when the CRL changed")
    check(time.time() - t_poll >= 1.4, "the long poll was held to its end")
    # The connection's next request is judged with the new CRL, and the
    # connection stays usable for the answer.
    s.sendall(request_bytes("GET", "/held-again"))
    resp = r.response()
    eq(resp.status, 403, "the next request on the connection made before the CRL changed")
    s.close()
    log = d.wait_access(len(log) + 4)
    eq([(x["path"], x["status"], x["reason"]) for x in log if x["path"].startswith("/held")],
       [("/held", "200", "-"), ("/held-poll?delay=1.5", "200", "-"),
        ("/held-again", "403", "cert_revoked")], "the held connection's requests")
    check(b.requests()[-1]["target"] != "/held-again", "the refused request never reached the backend")
    err = d.stderr()
    eq(count(err, ", 4 CRLs:"), 1, "reload log lines")
    eq(count(err, "no longer holds (cert_revoked)"), 1, "the connection's refusal, logged once")
    if write is replace_by_rename:
        # (in place, a check may see the file empty between truncate and write)
        eq(count(err, "not used"), 0, "refused files")


def test_crl_file_replaced_by_rename(env):
    rotated(env, replace_by_rename)


def test_crl_file_rewritten_in_place(env):
    rotated(env, rewrite_in_place)


def test_certificate_expiring_on_an_open_connection(env):
    """A certificate that expires while its keep-alive connection is open: the
    connection's next request is refused (cert_expired), not served on the
    verdict of the handshake."""
    ca = CA(env.dir)
    ca.issue("brief", lifetime=4)
    b, d, path = start(env, crl_file_text(ca.crl()))
    s, r = held_connection_ca(d, ca, "brief")  # one 200 while the certificate is valid
    notafter = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in",
                               os.path.join(ca.dir, "brief.crt")],
                              capture_output=True, text=True, check=True).stdout
    end = ssl.cert_time_to_seconds(notafter.strip().split("=", 1)[1])
    time.sleep(max(0.0, end - time.time()) + 1.2)
    s.sendall(request_bytes("GET", "/held-after-expiry"))
    eq(r.response().status, 403, "the same connection once the certificate expired")
    s.close()
    eq(d.wait_access(2)[-1]["reason"], "cert_expired", "reason")
    eq([x["target"] for x in b.requests()], ["/held"], "what reached the backend")


def test_bad_new_files_keep_the_old_crl(env):
    ca = CA(env.dir)
    ca.revoke("sid")
    current = ca.crl()
    b, d, path = start(env, crl_file_text(current))
    eq(status_of(d, "sid"), 403, "sid revoked by the CRL in use")

    def unchanged(what):
        time.sleep(1.2)  # four refresh periods
        eq(status_of(d, "sid"), 403, f"{what}: sid still revoked (old CRL in use)")
        eq(status_of(d, "good"), 200, f"{what}: good still accepted")

    # Garbage: not PEM at all.
    replace_by_rename(path, "this is not a CRL\n" * 100)
    unchanged("garbage")
    eq(count(d.stderr(), "not used"), 1, "garbage: logged once")

    # A CRL whose signature is broken (one byte of it flipped): not signed by its CA.
    der = subprocess.run(["openssl", "crl", "-outform", "DER"], input=current.encode(),
                         capture_output=True, check=True).stdout
    bad = bytearray(der)
    bad[-5] ^= 0x01
    forged = subprocess.run(["openssl", "crl", "-inform", "DER"], input=bytes(bad),
                            capture_output=True, check=True).stdout.decode()
    replace_by_rename(path, crl_file_text(forged))
    unchanged("bad signature")
    err = d.stderr()
    check("is not signed by that CA" in err, f"bad signature not said: {err[-2000:]}")
    eq(count(err, "not used"), 2, "bad signature: logged once")

    # An older CRL of the same CA (lower CRL number): the PKI's, which does not list sid.
    replace_by_rename(path, crl_file_text(open(pki("crl-issuing-ca.pem")).read()))
    unchanged("older CRL")
    err = d.stderr()
    check("older than the one in use" in err, f"older CRL not said: {err[-2000:]}")
    eq(count(err, "not used"), 3, "older CRL: logged once")

    # An empty file, then the file removed: still the old CRL.
    replace_by_rename(path, "")
    unchanged("empty file")
    os.unlink(path)
    unchanged("file removed")
    eq(count(d.stderr(), "No such file"), 1, "removed file: logged once")

    # And a good new one is used again (it revokes good as well).
    ca.revoke("good")
    replace_by_rename(path, crl_file_text(ca.crl()))
    wait_status(d, "good", 403, 3)
    eq(count(d.stderr(), ", 4 CRLs:"), 1, "the good file is used")
    eq(status_of(d, "sid"), 403, "sid still revoked")


def test_crl_expiring_in_use_is_unknown(env):
    """A CRL that expires while in use: its CA's certificates are refused
    (cert_untrusted) from then on, without any file change; logged once."""
    ca = CA(env.dir)
    b, d, path = start(env, crl_file_text(ca.crl(nxt=3)))
    eq(status_of(d, "good"), 200, "good while the CRL is current")
    took = wait_status(d, "good", 403, timeout=8)
    check(took > 1.0, "refused before the CRL expired")
    for _ in range(4):
        eq(status_of(d, "good"), 403, "good once the CRL expired")
    log = d.access()
    eq(log[-1]["reason"], "cert_untrusted", "reason for revocation unknown")
    err = d.stderr()
    eq(count(err, "revocation status unknown for certificates of"), 1,
       "logged once per CA, not per request")
    check("its CRL in use has expired" in err, "the log says why")
    # A fresh CRL ends it, without a reload.
    replace_by_rename(path, crl_file_text(ca.crl()))
    wait_status(d, "good", 200, 3)


def test_revocation_unknown_allow(env):
    b, d, path = start(env, crl_file_text(open(pki("crl-issuing-ca-expired.pem")).read()),
                       {"revocation_unknown": "allow"})
    for _ in range(3):
        eq(status_of(d, "good"), 200, "good with an expired CRL and revocation_unknown = allow")
    # A revoked certificate of a CA whose CRL is current is still refused.
    eq(status_of(d, "otherissuer"), 403, "other issuer: not a trusted issuer")
    err = d.stderr()
    eq(count(err, "revocation status unknown for certificates of"), 1, "logged once")
    check("are accepted (revocation_unknown = allow)" in err, "the log says they are accepted")
    eq(len(b.requests()), 3, "requests forwarded")


def test_revocation_unknown_refuse_missing(env):
    """No CRL of the issuer at all (default refuse): refused, logged once."""
    b, d, path = start(env, "".join(open(pki(n)).read() for n in OTHER_CRLS))
    for _ in range(3):
        eq(status_of(d, "good"), 403, "good without its CA's CRL")
    eq(d.access()[-1]["reason"], "cert_untrusted", "reason")
    err = d.stderr()
    eq(count(err, "revocation status unknown for certificates of"), 1, "logged once")
    check("no CRL of it is loaded" in err, "the log says why")
    eq(b.requests(), [], "nothing reached the backend")


# ---- crl_fetch: CRLs from the certificates' distribution points ----------------------------

class LocalServer:
    """An HTTP/1.0 server on 127.0.0.1, in this process, that can be stopped and
    started again on its port: a subclass answers requests of its <method> in
    answer(handler)."""

    method = "GET"

    def __init__(self):
        self.port = free_port()
        self.httpd = None

    def start(self):
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *a):
                pass

        setattr(Handler, "do_" + self.method, lambda handler: srv.answer(handler))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


def send_ok(handler, content_type, body):
    """A 200 with <body> (bytes) of <content_type> through <handler>."""
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class CrlServer(LocalServer):
    """A local HTTP server publishing CRLs (as AD CS does under /CertEnroll/):
    <files> maps a path to the bytes served; <mode> makes it misbehave
    ("garbage", "slow", "redirect", "big"). Counts the requests per path."""

    def __init__(self):
        super().__init__()
        self.files = {}
        self.mode = "ok"
        self.hits = {}

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, h):
        self.hits[h.path] = self.hits.get(h.path, 0) + 1
        if self.mode == "slow":
            time.sleep(4)
            h.close_connection = True
            return
        if self.mode == "redirect":
            h.send_response(302)
            h.send_header("Location", "http://127.0.0.1:9/x.crl")
            h.end_headers()
            return
        body = self.files.get(h.path)
        if body is None:
            h.send_error(404)
            return
        if self.mode == "garbage":
            body = b"<html>this is not a CRL</html>" * 10
        if self.mode == "big":
            body = body + b"\0" * (2 * 1024 * 1024)
        send_ok(h, "application/pkix-crl", body)


def der(pem_text):
    return subprocess.run(["openssl", "crl", "-outform", "DER"], input=pem_text.encode(),
                          capture_output=True, check=True).stdout


def ca_with(env, server):
    """A CA copy, and <server> (a LocalServer, not started), stopped when the test ends."""
    env.add_cleanup(server.stop)
    return CA(env.dir), server


def without_crl_file(env, cc, extra=None, sections=None):
    """A backend, and certmapd with no crl_file, the [client_certificate] keys
    <cc> and then <extra>, and the other <sections>. Returns both."""
    b = env.backend()
    cc = {"crl_file": None, **cc, **(extra or {})}
    return b, env.certmapd(b, dict(sections or {}, client_certificate=cc))


def fetching(env, extra=None, serve=True, sections=None):
    """A CA copy, a CRL server publishing its CRL at /CertEnroll/ca.crl (DER),
    leaves "cdpgood" and "cdprevoked" (revoked) naming it, and certmapd with
    crl_fetch = on and no crl_file."""
    ca, srv = ca_with(env, CrlServer())
    ca.issue("cdpgood", "URI:" + srv.url("/CertEnroll/ca.crl"))
    ca.revoke(ca.issue("cdprevoked", "URI:" + srv.url("/CertEnroll/ca.crl")))
    srv.files["/CertEnroll/ca.crl"] = der(ca.crl())
    if serve:
        srv.start()
    b, d = without_crl_file(env, {"crl_fetch": "on", "crl_fetch_timeout": "1500ms"}, extra,
                            sections)
    return ca, srv, b, d


def timed(fn):
    t0 = time.time()
    got = fn()
    return got, time.time() - t0


def test_fetch_on_first_use_then_cached(env):
    ca, srv, b, d = fetching(env)
    got, took = timed(lambda: status_of(d, "cdpgood", ca))
    eq(got, 200, "first request: waits for the fetch, then is judged with it")
    print(f"  first request with its CRL fetched: {took * 1000:.0f} ms")
    eq(status_of(d, "cdprevoked", ca), 403, "revoked in the fetched CRL")
    eq(d.access()[-1]["reason"], "cert_revoked", "reason")
    for _ in range(3):
        eq(status_of(d, "cdpgood", ca), 200, "cached")
    eq(srv.hits.get("/CertEnroll/ca.crl"), 1, "the CRL was fetched once")
    # Certificates without a distribution point, of the same CA: judged by its
    # CRL fetched for another certificate.
    eq(status_of(d, "good"), 200, "no CDP, same CA's CRL known")
    eq(status_of(d, "revoked"), 403, "no CDP, revoked in that CRL")
    # A restart of the server does not matter: nothing is fetched again.
    eq(srv.hits.get("/CertEnroll/ca.crl"), 1, "still fetched once")
    err = d.stderr()
    check("crl_fetch " + srv.url("/CertEnroll/ca.crl") + ": CRL of" in err, "the fetch is logged")


def test_fetch_server_down(env):
    ca, srv, b, d = fetching(env, serve=False)
    for i in range(3):
        got, took = timed(lambda: status_of(d, "cdpgood", ca))
        eq(got, 403, f"request {i}: no CRL can be had: refused")
        check(took < 3.0, f"request {i} took {took:.1f}s (crl_fetch_timeout 1.5s)")
    eq(d.access()[-1]["reason"], "cert_untrusted", "reason")
    err = d.stderr()
    eq(err.count("crl_fetch " + srv.url("/CertEnroll/ca.crl") + ": cannot fetch"), 1,
       "the failure is logged once, not per request")
    eq(err.count("revocation status unknown for certificates of"), 1, "unknown: logged once")
    eq(b.requests(), [], "nothing reached the backend")
    # The server comes up: after the back-off (5 s) the CRL is fetched and used.
    srv.start()
    wait_status(d, "cdpgood", 200, timeout=12, ca=ca)
    eq(status_of(d, "cdprevoked", ca), 403, "revoked once the CRL is in")
    check("works again" in d.stderr(), "the recovery is logged")


def test_fetch_server_down_allow(env):
    ca, srv, b, d = fetching(env, {"revocation_unknown": "allow"}, serve=False)
    eq(status_of(d, "cdpgood", ca), 200, "revocation_unknown = allow")
    eq(status_of(d, "cdprevoked", ca), 200, "allow: a revoked one too, since nobody can tell")
    eq(len(b.requests()), 2, "forwarded")


def misbehaving(env, mode, want_log):
    ca, srv, b, d = fetching(env, serve=False)
    srv.mode = mode
    srv.start()
    for i in range(3):
        got, took = timed(lambda: status_of(d, "cdpgood", ca))
        eq(got, 403, f"{mode}: request {i}")
        check(took < 3.0, f"{mode}: request {i} took {took:.1f}s (crl_fetch_timeout 1.5s)")
    err = d.stderr()
    eq(err.count(want_log), 1, f"{mode}: logged once ({want_log!r}): {err[-1500:]}")
    return ca, srv, b, d


def test_fetch_garbage(env):
    misbehaving(env, "garbage", "the answer is not a CRL")


def test_fetch_redirect_not_followed(env):
    misbehaving(env, "redirect", "HTTP status 302 (redirects are not followed)")


def test_fetch_too_large(env):
    ca, srv, b, d = fetching(env, {"crl_fetch_max_size": "1M"}, serve=False)
    srv.mode = "big"
    srv.start()
    eq(status_of(d, "cdpgood", ca), 403, "a CRL over crl_fetch_max_size")
    check("larger than crl_fetch_max_size" in d.stderr(), "said why")


def test_fetch_slow_server_bounded_by_timeout(env):
    ca, srv, b, d = misbehaving(env, "slow", "no complete answer within crl_fetch_timeout")


def test_fetch_stale_crl(env):
    ca, srv, b, d = fetching(env, serve=False)
    srv.files["/CertEnroll/ca.crl"] = der(ca.crl(last=-86400, nxt=-3600))
    srv.start()
    eq(status_of(d, "cdpgood", ca), 403, "a stale CRL is not used")
    eq(d.stderr().count("is not current (stale"), 1, "logged once")


def test_fetch_crl_of_another_ca_ignored(env):
    """A CRL that does not verify against a trusted issuer or anchor (here: the
    look-alike issuing CA of the other hierarchy, same name) is ignored."""
    ca, srv, b, d = fetching(env, serve=False)
    srv.files["/CertEnroll/ca.crl"] = der(open(pki("crl-other-issuing-ca.pem")).read())
    srv.start()
    eq(status_of(d, "cdpgood", ca), 403, "no CRL of the right CA")
    err = d.stderr()
    eq(err.count("signed by neither a trusted issuer nor a trust anchor"), 1, f"logged once: {err[-1500:]}")


def test_fetch_refreshed_before_next_update(env):
    """A CRL valid for 80 s, 60 s of it gone: refreshed about 5 s later, and
    the rotated CRL (revoking cdpgood) is in use from then on, without any
    request waiting for it."""
    ca, srv, b, d = fetching(env, serve=False)
    srv.files["/CertEnroll/ca.crl"] = der(ca.crl(last=-60, nxt=20))
    srv.start()
    eq(status_of(d, "cdpgood", ca), 200, "before the rotation")
    s, r = held_connection_ca(d, ca, "cdpgood")
    ca.revoke(os.path.join(ca.dir, "cdpgood.crt"))
    srv.files["/CertEnroll/ca.crl"] = der(ca.crl())
    took = wait_status(d, "cdpgood", 403, timeout=15, ca=ca)
    print(f"  rotated CRL in use {took:.1f} s after it was published")
    eq(srv.hits.get("/CertEnroll/ca.crl"), 2, "fetched twice: first use, then the refresh")
    s.sendall(request_bytes("GET", "/held-again"))
    eq(r.response().status, 403, "the next request on the connection made before")
    s.close()


def held_connection_ca(d, ca, name):
    ctx = ssl.create_default_context(cafile=pki("root-ca.crt"))
    ctx.load_cert_chain(os.path.join(ca.dir, f"{name}.chain.pem"), os.path.join(ca.dir, f"{name}.key"))
    import socket
    raw = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    r = Reader(s)
    s.sendall(request_bytes("GET", "/held"))
    eq(r.response().status, 200, "first request on the held connection")
    return s, r


def test_fetch_delta_crl(env):
    """A base CRL naming its delta (Freshest CRL, as AD CS publishes them): the
    delta is fetched with the base, and a certificate revoked since the base
    (listed only in the delta) is refused; ldap:// points are ignored, logged once."""
    ca, srv = ca_with(env, CrlServer())
    cdp = ("URI:ldap:///CN=Corp%20Issuing%20CA%2CCN=CDP?certificateRevocationList?base,"
           "URI:" + srv.url("/CertEnroll/ca.crl"))
    ca.issue("cdpgood", cdp)
    ca.issue("cdplate", cdp)
    base_no = ca.crl_number()
    srv.files["/CertEnroll/ca.crl"] = der(ca.crl(exts=[
        "freshestCRL = URI:" + srv.url("/CertEnroll/ca+.crl")]))
    ca.revoke(os.path.join(ca.dir, "cdplate.crt"))
    srv.files["/CertEnroll/ca+.crl"] = der(ca.crl(exts=[
        f"2.5.29.27 = critical,ASN1:INTEGER:{base_no}"]))
    srv.start()
    b, d = without_crl_file(env, {"crl_fetch": "on"})
    eq(status_of(d, "cdplate", ca), 403, "revoked in the delta only")
    eq(d.access()[-1]["reason"], "cert_revoked", "reason")
    eq(status_of(d, "cdpgood", ca), 200, "in neither")
    eq(status_of(d, "cdpgood", ca), 200, "again")
    eq(srv.hits, {"/CertEnroll/ca.crl": 1, "/CertEnroll/ca+.crl": 1}, "fetched once each")
    err = d.stderr()
    eq(err.count("ignored: only http://"), 1, "the ldap:// point: logged once")
    check("delta CRL of" in err, "the delta's fetch is logged")


def test_fetch_delta_missing_is_unknown(env):
    """A base that names a delta which cannot be had: status unknown (what the
    delta would say is not known)."""
    ca, srv = ca_with(env, CrlServer())
    ca.issue("cdpgood", "URI:" + srv.url("/CertEnroll/ca.crl"))
    srv.files["/CertEnroll/ca.crl"] = der(ca.crl(exts=[
        "freshestCRL = URI:" + srv.url("/CertEnroll/ca+.crl")]))
    srv.start()
    b, d = without_crl_file(env, {"crl_fetch": "on"})
    eq(status_of(d, "cdpgood", ca), 403, "no delta")
    check("HTTP status 404" in d.stderr(), "the delta's 404 is logged")


def test_fetch_server_stopped_after_fetch(env):
    """The server goes away after the first fetch: its refresh fails (logged
    once), and the CRL fetched before stays in use until its nextUpdate."""
    ca, srv, b, d = fetching(env, serve=False)
    srv.files["/CertEnroll/ca.crl"] = der(ca.crl(last=-60, nxt=25))
    srv.start()
    eq(status_of(d, "cdpgood", ca), 200, "fetched")
    srv.stop()
    time.sleep(6.5)  # the refresh, due 5 s after the fetch, fails
    err = d.stderr()
    check("the CRL fetched before stays in use until its nextUpdate" in err,
          f"the failed refresh is logged: {err[-1500:]}")
    for _ in range(3):
        got, took = timed(lambda: status_of(d, "cdpgood", ca))
        eq(got, 200, "the cached CRL is still current")
        check(took < 1.0, f"no request waits for a refresh ({took:.1f}s)")
    eq(status_of(d, "cdprevoked", ca), 403, "and still says who is revoked")
    eq(d.stderr().count("cannot fetch"), 1, "logged once")


def test_fetch_for_late_certificate(env):
    """A certificate asked for late (TLS 1.3 post-handshake authentication, only
    the location needs one) waits for its CRL's fetch as well."""
    ca, srv, b, d = fetching(env, {"mode": "ignore"},
                             sections={"location /eas": {"client_certificate": "require"}})
    for name, want in (("cdpgood", 200), ("cdprevoked", 403)):
        ctx = ssl.create_default_context(cafile=pki("root-ca.crt"))
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.post_handshake_auth = True
        ctx.load_cert_chain(os.path.join(ca.dir, f"{name}.chain.pem"),
                            os.path.join(ca.dir, f"{name}.key"))
        import socket
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", d.port), timeout=10),
                            server_hostname="localhost")
        r = Reader(s)
        s.sendall(request_bytes("GET", "/free"))
        eq(r.response().status, 200, f"{name}: no certificate needed")
        s.sendall(request_bytes("GET", "/eas/x"))
        eq(r.response().status, want, f"{name}: late certificate judged with its fetched CRL")
        s.close()
    eq(srv.hits.get("/CertEnroll/ca.crl"), 1, "fetched once, for the first late certificate")
    eq(d.access()[-1]["reason"], "cert_revoked", "reason")


# ---- ocsp: the AD CS Online Responder's part ---------------------------------------------

class OcspResponder(LocalServer):
    """An OCSP responder for the CA copy, in this process (Python's cryptography):
    answers good, or revoked for the serials in <revoked>, signed by the issuing
    CA, valid <valid_s> seconds; mode "down" (not started), "garbage", "stale"."""

    method = "POST"

    def __init__(self):
        super().__init__()
        self.revoked = set()
        self.mode = "ok"
        self.hits = 0
        self.valid_s = 300

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/ocsp"

    def start(self):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        self.key = serialization.load_pem_private_key(open(pki("issuing-ca.key"), "rb").read(),
                                                      None)
        self.cacert = x509.load_pem_x509_certificate(open(pki("issuing-ca.crt"), "rb").read())
        return super().start()

    def answer(self, h):
        import datetime
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.x509 import ocsp
        key, cacert = self.key, self.cacert
        self.hits += 1
        body = h.rfile.read(int(h.headers.get("Content-Length", "0")))
        if self.mode == "garbage":
            send_ok(h, "application/ocsp-response", b"not an OCSP response")
            return
        req = ocsp.load_der_ocsp_request(body)
        now = datetime.datetime.utcnow()
        if self.mode == "stale":
            now -= datetime.timedelta(days=2)
        revoked = req.serial_number in self.revoked
        # the builder wants a certificate: one with the asked serial and issuer
        fake = (x509.CertificateBuilder().subject_name(cacert.subject)
                .issuer_name(cacert.subject).public_key(key.public_key())
                .serial_number(req.serial_number)
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .sign(key, hashes.SHA256()))
        signer, signer_cert = key, cacert
        if self.mode == "wrongkey":
            # a look-alike responder: the CA's name, another key
            from cryptography.hazmat.primitives.asymmetric import ec
            signer = ec.generate_private_key(ec.SECP256R1())
            signer_cert = (x509.CertificateBuilder().subject_name(cacert.subject)
                           .issuer_name(cacert.subject)
                           .public_key(signer.public_key()).serial_number(7)
                           .not_valid_before(now - datetime.timedelta(days=1))
                           .not_valid_after(now + datetime.timedelta(days=1))
                           .sign(signer, hashes.SHA256()))
        b = ocsp.OCSPResponseBuilder().add_response(
            cert=fake, issuer=cacert, algorithm=hashes.SHA1(),
            cert_status=ocsp.OCSPCertStatus.REVOKED if revoked
            else ocsp.OCSPCertStatus.GOOD,
            this_update=now - datetime.timedelta(seconds=60),
            next_update=now + datetime.timedelta(seconds=self.valid_s),
            revocation_time=now - datetime.timedelta(seconds=30) if revoked else None,
            revocation_reason=None).responder_id(
            ocsp.OCSPResponderEncoding.HASH, signer_cert).certificates([signer_cert])
        send_ok(h, "application/ocsp-response",
                b.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.DER))


def serial_of(path):
    out = subprocess.run(["openssl", "x509", "-in", path, "-noout", "-serial"],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip().split("=", 1)[1], 16)


def with_ocsp(env, mode="ok", extra=None):
    """A CA copy, an OCSP responder in <mode> (see OcspResponder), leaves
    "ocspgood" and "ocsprevoked" (revoked) naming it, and certmapd with
    ocsp = on and no crl_file."""
    ca, o = ca_with(env, OcspResponder())
    ca.issue("ocspgood", aia=o.url)
    o.revoked.add(serial_of(ca.issue("ocsprevoked", aia=o.url)))
    o.mode = mode
    if mode != "down":
        o.start()
    b, d = without_crl_file(env, {"ocsp": "on", "crl_fetch_timeout": "1500ms"}, extra)
    return ca, o, b, d


def test_ocsp_good_and_revoked_cached(env):
    ca, o, b, d = with_ocsp(env)
    got, took = timed(lambda: status_of(d, "ocspgood", ca))
    eq(got, 200, "good by OCSP, no CRL at all")
    print(f"  first request with its OCSP answer: {took * 1000:.0f} ms")
    eq(status_of(d, "ocsprevoked", ca), 403, "revoked by OCSP")
    eq(d.access()[-1]["reason"], "cert_revoked", "reason")
    for _ in range(3):
        eq(status_of(d, "ocspgood", ca), 200, "cached")
        eq(status_of(d, "ocsprevoked", ca), 403, "cached")
    eq(o.hits, 2, "one query per certificate, then the cache until nextUpdate")
    eq(status_of(d, "good"), 403, "no AIA and no CRL: unknown")


def test_ocsp_responder_down(env):
    ca, o, b, d = with_ocsp(env, "down")
    for i in range(3):
        got, took = timed(lambda: status_of(d, "ocspgood", ca))
        eq(got, 403, f"request {i}: no answer, no CRL: refused")
        check(took < 3.0, f"request {i} took {took:.1f}s")
    err = d.stderr()
    eq(err.count("ocsp " + o.url + ": cannot fetch"), 1, f"logged once: {err[-1500:]}")


def test_ocsp_garbage_stale_forged(env):
    for mode, log in (("garbage", "not an OCSP response"), ("stale", "is not current (stale)"),
                      ("wrongkey", "signed by neither the CA nor a responder it delegated to")):
        ca, o, b, d = with_ocsp(env, mode)
        eq(status_of(d, "ocspgood", ca), 403, f"{mode}: refused")
        eq(status_of(d, "ocspgood", ca), 403, f"{mode}: refused again")
        eq(d.stderr().count(log), 1, f"{mode}: logged once")
        d.stop()
        o.stop()


if __name__ == "__main__":
    run([
        test_crl_file_replaced_by_rename,
        test_crl_file_rewritten_in_place,
        test_certificate_expiring_on_an_open_connection,
        test_bad_new_files_keep_the_old_crl,
        test_crl_expiring_in_use_is_unknown,
        test_revocation_unknown_allow,
        test_revocation_unknown_refuse_missing,
        test_fetch_on_first_use_then_cached,
        test_fetch_server_down,
        test_fetch_server_down_allow,
        test_fetch_garbage,
        test_fetch_redirect_not_followed,
        test_fetch_too_large,
        test_fetch_slow_server_bounded_by_timeout,
        test_fetch_stale_crl,
        test_fetch_crl_of_another_ca_ignored,
        test_fetch_refreshed_before_next_update,
        test_fetch_delta_crl,
        test_fetch_delta_missing_is_unknown,
        test_fetch_server_stopped_after_fetch,
        test_fetch_for_late_certificate,
        test_ocsp_good_and_revoked_cached,
        test_ocsp_responder_down,
        test_ocsp_garbage_stale_forged,
    ])
