#!/usr/bin/env python3
"""Which client stacks answer a late certificate request: each client that
Debian 12 packages (OpenSSL's s_client, curl, Python's ssl, GnuTLS's
gnutls-cli, wget; Java when installed) asks certmapd for a location that needs
a certificate only there, at TLS 1.2 (renegotiation) and TLS 1.3
(post-handshake authentication), with its default settings and with the
option that changes them; then, with negotiate_at_handshake = yes, those
that could not answer. The observed outcome is asserted, so that the table
in README.md ("Client certificates per path") cannot drift from it.

Outcomes:
  served       200, the certificate reached the backend
  no_pha       403 cert_required: a TLS 1.3 client that did not offer post-handshake auth
  declined     a TLS 1.2 client refused the renegotiation (no_renegotiation alert):
               no answer could be sent, the access log has 403 cert_required
  reneg_fails  the client sent its certificate, which certmapd accepted, then its own
               renegotiation failed: no answer reached it
"""
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time

from harness import check, curl, eq, pki, run
from test_late_cert import EAS, Conn, get, identity, late

GOOD_SERIAL = "2B0000000011AC0000000012"
GNUTLS12 = "NORMAL:-VERS-ALL:+VERS-TLS1.2"
GNUTLS13 = "NORMAL:-VERS-ALL:+VERS-TLS1.3"


def request(path):
    return get(path, extra="Connection: close\r\n")


def need(tool):
    """The path of a client the test depends on: scripts/install-deps.sh installs it."""
    path = shutil.which(tool)
    check(path is not None, f"{tool} is not installed (scripts/install-deps.sh installs it)")
    return path


def version(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    return (p.stdout or p.stderr).splitlines()[0].strip()


def http_status(text):
    m = re.findall(r"HTTP/1\.1 (\d{3})", text)
    return int(m[-1]) if m else 0


class Probe:
    """One certmapd with a late-certificate location; each client in turn, on
    a path of its own (a failed case's request may reach the backend late)."""

    def __init__(self, env, extra=None):
        self.b = env.backend()
        self.d = env.certmapd(self.b, late(extra))
        self.n = 0

    def lines(self, path, timeout=5.0):
        deadline = time.time() + timeout
        while True:
            got = [l for l in self.d.access() if l["path"] == path]
            if got or time.time() > deadline:
                return got
            time.sleep(0.02)

    def outcome(self, name, client):
        """Runs <client>(port, path) -> (status the client saw, 0 for none; its output)
        and says which outcome certmapd's logs and the backend show."""
        self.n += 1
        path = f"{EAS}?case={self.n}"
        e0 = len(self.d.stderr())
        status, out = client(self.d.port, path)
        log = self.lines(path)
        check(len(log) == 1, f"{name}: one access log line, got {log}; client: {out[-600:]}")
        line, err = log[0], self.d.stderr()[e0:]
        reqs = [r for r in self.b.requests() if r["target"] == path]
        proto = re.search(r"TLS 1\.[23]", name).group(0).replace(" 1", "v1")
        check(f"{proto} handshake done" in err, f"{name}: the client spoke {proto}: {err[-600:]}")
        what = (status, line["status"], line["reason"], line["serial"])
        if status == 200 and line["status"] == "200":
            eq([identity(r) for r in reqs], [GOOD_SERIAL], f"{name}: identity at the backend")
            got = "served"
        elif status == 403 and line["reason"] == "cert_required" and \
                "did not offer post-handshake" in err:
            got = "no_pha"
        elif status == 0 and (line["status"], line["reason"]) == ("403", "cert_required") and \
                "refused renegotiation (no_renegotiation alert)" in err:
            got = "declined"
        elif status == 0 and line["serial"] == GOOD_SERIAL:
            got = "reneg_fails"  # the request may have reached the backend: it was accepted
        else:
            raise AssertionError(f"{name}: unexpected outcome {what}; client: {out[-600:]}; "
                                 f"log: {err[-600:]}")
        if got in ("no_pha", "declined"):
            eq(reqs, [], f"{name}: backend requests")
        print(f"  {name}: {got}", flush=True)
        return got

    def expect(self, name, client, want):
        eq(self.outcome(name, client), want, name)


# ---- the clients ---------------------------------------------------------------

def s_client(*args):
    def client(port, path):
        cmd = [need("openssl"), "s_client", "-connect", f"127.0.0.1:{port}",
               "-servername", "localhost", "-CAfile", pki("root-ca.crt"),
               "-cert", pki("good.crt"), "-key", pki("good.key"),
               "-cert_chain", pki("issuing-ca.crt"), "-ign_eof", *args]
        p = subprocess.run(cmd, input=request(path), capture_output=True, timeout=30)
        out = p.stdout.decode("latin-1")
        return http_status(out), out + p.stderr.decode("latin-1")
    return client


def curl_client(*args):
    def client(port, path):
        need("curl")
        status, _, text = curl(f"https://localhost:{port}{path}", cert="good", args=args)
        return status, text
    return client


def python_ctx(version, pha=None, no_renegotiation=False):
    """create_default_context() with a certificate loaded; <pha> sets
    post_handshake_auth, None leaves it as Python has it."""
    ctx = ssl.create_default_context(cafile=pki("root-ca.crt"))
    ctx.minimum_version = ctx.maximum_version = version
    ctx.load_cert_chain(pki("good.chain.pem"), pki("good.key"))
    if pha is not None:
        ctx.post_handshake_auth = pha
    if no_renegotiation:
        ctx.options |= ssl.OP_NO_RENEGOTIATION
    return ctx


def python_client(version, pha=None, no_renegotiation=False):
    def client(port, path):
        c = Conn(port, python_ctx(version, pha, no_renegotiation))
        try:
            c.send(request(path))
            return c.response()[0], ""
        except (ssl.SSLError, ConnectionError, OSError) as e:
            return 0, repr(e)
        finally:
            c.close()
    return client


def gnutls_cli(priority, *args):
    def client(port, path):
        # stdin stays open until the server closes: at its end of input
        # gnutls-cli would end the session, in the middle of a late handshake.
        cmd = [need("gnutls-cli"), "-p", str(port), "--priority", priority,
               "--x509cafile", pki("root-ca.crt"), "--x509certfile", pki("good.chain.pem"),
               "--x509keyfile", pki("good.key"), *args, "localhost"]
        with tempfile.TemporaryFile() as f:
            p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=f, stderr=subprocess.STDOUT)
            try:
                p.stdin.write(request(path))
                p.stdin.flush()
                p.wait(30)  # it exits when certmapd closes (Connection: close) or fails
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            finally:
                p.stdin.close()
            f.seek(0)
            out = f.read().decode("latin-1")
        return http_status(out), out
    return client


def wget(*args):
    def client(port, path):
        cmd = [need("wget"), "-S", "-O", "/dev/null", "--tries=1", "--timeout=20",
               "--ca-certificate", pki("root-ca.crt"), "--certificate", pki("good.chain.pem"),
               "--private-key", pki("good.key"), *args, f"https://localhost:{port}{path}"]
        p = subprocess.run(cmd, capture_output=True, timeout=40)
        out = p.stderr.decode("latin-1")
        return http_status(out), out
    return client


JAVA_CLIENT = r"""
import java.io.*;
import java.security.KeyStore;
import javax.net.ssl.*;

/* args: port protocol keystore.p12 truststore.p12 path; prints the status line. */
public class LateCertClient {
    public static void main(String[] a) throws Exception {
        char[] pw = "changeit".toCharArray();
        KeyStore k = KeyStore.getInstance("PKCS12");
        try (InputStream in = new FileInputStream(a[2])) { k.load(in, pw); }
        KeyManagerFactory kmf = KeyManagerFactory.getInstance("PKIX");
        kmf.init(k, pw);
        KeyStore t = KeyStore.getInstance("PKCS12");
        try (InputStream in = new FileInputStream(a[3])) { t.load(in, pw); }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance("PKIX");
        tmf.init(t);
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(kmf.getKeyManagers(), tmf.getTrustManagers(), null);
        try (SSLSocket s = (SSLSocket) ctx.getSocketFactory().createSocket("127.0.0.1",
                Integer.parseInt(a[0]))) {
            s.setEnabledProtocols(new String[] {a[1]});
            SSLParameters p = s.getSSLParameters();
            p.setEndpointIdentificationAlgorithm("HTTPS");
            s.setSSLParameters(p);
            s.setSoTimeout(20000);
            OutputStream o = s.getOutputStream();
            o.write(("GET " + a[4] + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    .getBytes("ISO-8859-1"));
            o.flush();
            BufferedReader r = new BufferedReader(new InputStreamReader(s.getInputStream(),
                    "ISO-8859-1"));
            String status = r.readLine();
            /* The whole answer (Connection: close ends it): a client that left
             * after the status line would be logged as gone mid-response. */
            while (r.read() >= 0) {
            }
            System.out.println(status);
        }
    }
}
"""


def java_client(workdir, protocol):
    src = os.path.join(workdir, "LateCertClient.java")
    ks, ts = os.path.join(workdir, "good.p12"), os.path.join(workdir, "trust.p12")
    if not os.path.exists(src):
        with open(src, "w") as f:
            f.write(JAVA_CLIENT)
        subprocess.run(["openssl", "pkcs12", "-export", "-in", pki("good.chain.pem"),
                        "-inkey", pki("good.key"), "-out", ks, "-passout", "pass:changeit"],
                       check=True)
        subprocess.run(["keytool", "-importcert", "-noprompt", "-alias", "root",
                        "-file", pki("root-ca.crt"), "-keystore", ts, "-storetype", "PKCS12",
                        "-storepass", "changeit"], check=True, capture_output=True)

    def client(port, path):
        p = subprocess.run(["java", src, str(port), protocol, ks, ts, path],
                           capture_output=True, timeout=60)
        out = p.stdout.decode("latin-1") + p.stderr.decode("latin-1")
        return http_status(out), out
    return client


# ---- the measurements --------------------------------------------------------

def test_openssl_s_client(env):
    print(f"  ({version(['openssl', 'version'])})")
    p = Probe(env)
    p.expect("s_client TLS 1.2", s_client("-tls1_2"), "served")
    p.expect("s_client TLS 1.2 -no_renegotiation", s_client("-tls1_2", "-no_renegotiation"),
             "declined")
    p.expect("s_client TLS 1.3", s_client("-tls1_3"), "no_pha")
    p.expect("s_client TLS 1.3 -enable_pha", s_client("-tls1_3", "-enable_pha"), "served")


def test_curl(env):
    print(f"  ({version([need('curl'), '--version'])})")
    p = Probe(env)
    p.expect("curl TLS 1.2", curl_client("--tlsv1.2", "--tls-max", "1.2"), "served")
    p.expect("curl TLS 1.3", curl_client("--tlsv1.3"), "served")  # offers PHA by itself


def test_python_ssl(env):
    print(f"  (Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION})")
    check(python_ctx(ssl.TLSVersion.TLSv1_3).post_handshake_auth is False,
          "create_default_context() leaves post_handshake_auth off, a certificate loaded or not")
    p = Probe(env)
    v12, v13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
    p.expect("Python ssl TLS 1.2", python_client(v12), "served")
    p.expect("Python ssl TLS 1.2 OP_NO_RENEGOTIATION", python_client(v12, no_renegotiation=True),
             "declined")
    p.expect("Python ssl TLS 1.3 (create_default_context)", python_client(v13), "no_pha")
    p.expect("Python ssl TLS 1.3 post_handshake_auth = True", python_client(v13, pha=True),
             "served")


def test_gnutls_cli(env):
    print(f"  ({version([need('gnutls-cli'), '--version'])})")
    p = Probe(env)
    # GnuTLS 3.7.9 answers the HelloRequest and sends its certificate, then waits
    # for a NewSessionTicket that the renegotiation's ServerHello did not announce
    # (it had one in the first handshake) and fails; without tickets it completes.
    p.expect("gnutls-cli TLS 1.2", gnutls_cli(GNUTLS12), "reneg_fails")
    p.expect("gnutls-cli TLS 1.2 %NO_TICKETS", gnutls_cli(GNUTLS12 + ":%NO_TICKETS"), "served")
    p.expect("gnutls-cli TLS 1.3", gnutls_cli(GNUTLS13), "no_pha")
    p.expect("gnutls-cli TLS 1.3 --post-handshake-auth",
             gnutls_cli(GNUTLS13, "--post-handshake-auth"), "served")


def test_wget(env):
    print(f"  ({version([need('wget'), '--version'])}, GnuTLS)")
    p = Probe(env)
    p.expect("wget TLS 1.2", wget(f"--ciphers={GNUTLS12}"), "reneg_fails")
    p.expect("wget TLS 1.3", wget(f"--ciphers={GNUTLS13}"), "served")  # offers PHA by itself


def have_jdk():
    """Java is optional: not a Debian package the tests install (it is large)."""
    if all(shutil.which(t) for t in ("java", "javac", "keytool")):
        return True
    print("  SKIPPED: no JDK (java, javac, keytool) on this machine")
    return False


def test_java(env):
    if not have_jdk():
        return
    print(f"  ({version(['java', '-version'])})")
    p = Probe(env)
    p.expect("Java TLS 1.2", java_client(env.dir, "TLSv1.2"), "served")
    p.expect("Java TLS 1.3", java_client(env.dir, "TLSv1.3"), "no_pha")


def test_negotiate_at_handshake_serves_them_all(env):
    """With negotiate_at_handshake = yes the certificate is asked in the first
    handshake: the clients above that decline, fail or never offer a late
    request are served, with their default settings."""
    p = Probe(env, {"client_certificate": {"negotiate_at_handshake": "yes"}})
    v12, v13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
    p.expect("s_client TLS 1.2 -no_renegotiation", s_client("-tls1_2", "-no_renegotiation"),
             "served")
    p.expect("s_client TLS 1.3", s_client("-tls1_3"), "served")
    p.expect("Python ssl TLS 1.2 OP_NO_RENEGOTIATION", python_client(v12, no_renegotiation=True),
             "served")
    p.expect("Python ssl TLS 1.3 (create_default_context)", python_client(v13), "served")
    p.expect("gnutls-cli TLS 1.2", gnutls_cli(GNUTLS12), "served")
    p.expect("gnutls-cli TLS 1.3", gnutls_cli(GNUTLS13), "served")
    p.expect("wget TLS 1.2", wget(f"--ciphers={GNUTLS12}"), "served")
    if have_jdk():
        p.expect("Java TLS 1.3", java_client(env.dir, "TLSv1.3"), "served")


if __name__ == "__main__":
    run([
        test_openssl_s_client,
        test_curl,
        test_python_ssl,
        test_gnutls_cli,
        test_wget,
        test_java,
        test_negotiate_at_handshake_serves_them_all,
    ])
