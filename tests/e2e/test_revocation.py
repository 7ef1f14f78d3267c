#!/usr/bin/env python3
"""Revocation that stays fresh, end to end: crl_file replaced (by rename) and
rewritten in place while certmapd runs, without any reload: a certificate the
new CRL revokes is refused within crl_refresh, open connections are not cut;
a new file that does not parse, is not signed by its CA or is older than the
one in use is not used (the old one stays) and that is logged once; a CRL
that expires while in use makes its CA's certificates "revocation unknown",
refused or allowed by revocation_unknown, logged once per CA.

The CA is a copy of the test PKI's issuing CA (its `openssl ca` database,
key and certificate) in the test's directory, so that revoking a certificate
and issuing CRLs here leaves the shared PKI alone."""
import os
import shutil
import subprocess
import time

from harness import Reader, check, curl, eq, pki, request_bytes, run, tls_connect

REFRESH = "300ms"
OTHER_CRLS = ["crl-root-ca.pem", "crl-other-root-ca.pem", "crl-other-issuing-ca.pem"]


def utc(delta_s):
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(time.time() + delta_s))


class CA:
    """A private copy of issuing-ca: revoke leaves, issue CRLs with `openssl ca`."""

    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "ca")
        shutil.copytree(pki("db/issuing-ca"), os.path.join(self.dir, "db"))
        shutil.copy(pki("cnf/ca.cnf"), self.dir)
        self.env = dict(os.environ, CM_DB=os.path.join(self.dir, "db"),
                        CM_CACERT=pki("issuing-ca.crt"), CM_CAKEY=pki("issuing-ca.key"))

    def ca(self, *args):
        p = subprocess.run(["openssl", "ca", "-config", os.path.join(self.dir, "ca.cnf"), "-batch",
                            "-notext"] + list(args), env=self.env, capture_output=True, text=True)
        check(p.returncode == 0, f"openssl ca {args}: {p.stderr}")

    def revoke(self, leaf):
        self.ca("-revoke", pki(f"{leaf}.crt"), "-crl_reason", "keyCompromise")

    def crl(self, last=-60, nxt=30 * 86400):
        """A new CRL (PEM text) of this CA, valid from now+<last> to now+<nxt> seconds."""
        out = os.path.join(self.dir, "new.crl")
        self.ca("-gencrl", "-crl_lastupdate", utc(last), "-crl_nextupdate", utc(nxt), "-out", out)
        return open(out).read()


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


def status_of(d, cert):
    return curl(d.base + "/x", cert=cert)[0]


def wait_status(d, cert, want, timeout):
    """Polls until <cert> gets <want>; returns the seconds it took (or fails)."""
    t0 = time.time()
    while True:
        got = status_of(d, cert)
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
    # The connection made before: not cut, and its verdict was made then.
    s.sendall(request_bytes("GET", "/held-again"))
    eq(r.response().status, 200, "held connection after the CRL changed")
    s.close()
    err = d.stderr()
    eq(count(err, "reloaded, 4 CRLs"), 1, "reload log lines")
    if write is replace_by_rename:
        # (in place, a check may see the file empty between truncate and write)
        eq(count(err, "not used"), 0, "refused files")


def test_crl_file_replaced_by_rename(env):
    rotated(env, replace_by_rename)


def test_crl_file_rewritten_in_place(env):
    rotated(env, rewrite_in_place)


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

    # And a good new one is used again.
    replace_by_rename(path, crl_file_text(ca.crl()))
    wait_status(d, "good", 200, 3)
    eq(count(d.stderr(), "reloaded, 4 CRLs"), 1, "the good file is used")
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


if __name__ == "__main__":
    run([
        test_crl_file_replaced_by_rename,
        test_crl_file_rewritten_in_place,
        test_bad_new_files_keep_the_old_crl,
        test_crl_expiring_in_use_is_unknown,
        test_revocation_unknown_allow,
        test_revocation_unknown_refuse_missing,
    ])
