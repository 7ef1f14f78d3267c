#!/usr/bin/python3
"""A Kerberos-protected HTTP(S) test backend that checks channel bindings.

Debian's /usr/bin/python3 with python3-gssapi (its acceptor) and ssl. It plays
an IIS site with windowsAuthentication and Extended Protection: every request
must carry `Authorization: Negotiate <token>` (krb5 mechanism), accepted with
the keytab --keytab, and over TLS the acceptor passes RFC 5929
tls-server-end-point channel bindings: application data
b"tls-server-end-point:" + the hash of this server's own certificate (SHA-256 for
an ECDSA-SHA256 certificate; RFC 5929 4.1, see kdc.tls_server_end_point).

Answers:
  200  JSON {"principal", "conn", "channel_bound", "bindings", ...}: the token
       verified (and, when it carried bindings, they matched)
  401  WWW-Authenticate: Negotiate, JSON {"reason": ...}:
       "no_token"                 no Authorization: Negotiate header
       "channel_bindings_mismatch" the token's bindings are not this channel's
                                   (GSS_S_BAD_BINDINGS)
       "channel_bindings_absent"  with --require-bindings: the token had none
                                   (MIT accepts a token without bindings unless
                                   the acceptor checks GSS_C_CHANNEL_BOUND_FLAG)
       "gss_error"                any other GSSAPI failure (text in "error")
With --connection-bound, a connection whose request authenticated stays
authenticated for the next requests without Authorization (IIS's
authPersistNonNTLM); a new Authorization header authenticates again.

Each request is appended to --log as one JSON line: conn_id, conn (peer
"addr:port"), request (n-th on the connection), method, target, auth
("negotiate" | "connection" | "none" | "failed"), principal, channel_bound,
bindings ("match" | "mismatch" | "absent" | "not_checked"), status, reason,
error, headers. A test reads which principal each backend connection carried.
"""
import argparse
import base64
import itertools
import json
import os
import signal
import socketserver
import subprocess
import time
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CONN_IDS = itertools.count(1)
LOG_LOCK = threading.Lock()


class Conn:
    def __init__(self, peer):
        self.id = next(CONN_IDS)
        self.peer = peer
        self.requests = 0
        self.principal = None   # --connection-bound: who authenticated on it


class Handler(socketserver.StreamRequestHandler):
    rbufsize = 65536
    disable_nagle_algorithm = True

    def read_head(self):
        line = self.rfile.readline(65537)
        if not line:
            return None
        req = line.decode("latin-1").rstrip("\r\n").split(" ")
        if len(req) != 3:
            raise ValueError(f"bad request line {line!r}")
        headers = []
        while True:
            h = self.rfile.readline(65537)
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers.append((k.strip(), v.strip()))
        return req, headers

    def handle(self):
        srv = self.server
        peer = "%s:%d" % self.client_address[:2]
        conn = Conn(peer)
        try:
            while True:
                head = self.read_head()
                if head is None:
                    return
                (method, target, version), headers = head
                h = {k.lower(): v for k, v in headers}
                n = int(h.get("content-length", "0") or "0")
                if n:
                    self.rfile.read(n)
                conn.requests += 1
                try:
                    status, extra, body, rec = srv.authenticate(conn, h)
                except Exception as e:  # a bug here: answer, and say what it was
                    status, extra = 500, []
                    body = rec = {"auth": "failed", "reason": "backend_error", "error": repr(e)}
                rec.update(conn_id=conn.id, conn=peer, request=conn.requests, method=method,
                           target=target, status=status, headers=headers)
                srv.log(rec)
                payload = (json.dumps(body, indent=1) + "\n").encode()
                reason = {200: "OK", 401: "Unauthorized"}.get(status, "Error")
                out = [f"HTTP/1.1 {status} {reason}",
                       "Content-Type: application/json", f"Content-Length: {len(payload)}"]
                out += [f"{k}: {v}" for k, v in extra]
                close = h.get("connection", "").lower() == "close" or version == "HTTP/1.0"
                if close:
                    out.append("Connection: close")
                self.wfile.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + payload)
                self.wfile.flush()
                if close:
                    return
        except (ConnectionError, ValueError, OSError):
            return


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    tls = None

    def setup_gss(self, keytab, acceptor, require_bindings, connection_bound, cert_der):
        import gssapi
        self.gssapi = gssapi
        self.krb5 = gssapi.OID.from_int_seq("1.2.840.113554.1.2.2")
        name = gssapi.Name(acceptor, gssapi.NameType.hostbased_service) if acceptor else None
        self.creds = gssapi.Credentials(name=name, usage="accept", mechs=[self.krb5],
                                        store={b"keytab": keytab.encode()})
        self.require_bindings = require_bindings
        self.connection_bound = connection_bound
        self.cb_data = None
        if cert_der is not None:
            from kdc import channel_binding_data
            self.cb_data = channel_binding_data(cert_der)

    def log(self, rec):
        with LOG_LOCK, open(self.log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def authenticate(self, conn, h):
        """(status, extra headers, JSON body, log record) for one request."""
        gssapi = self.gssapi
        challenge = [("WWW-Authenticate", "Negotiate")]
        auth = h.get("authorization")
        if auth is None or not auth.lower().startswith("negotiate "):
            if self.connection_bound and conn.principal is not None:
                rec = {"auth": "connection", "principal": conn.principal}
                return 200, [], dict(rec, conn=conn.peer), rec
            rec = {"auth": "none", "reason": "no_token", "principal": None}
            return 401, challenge, {"reason": "no_token"}, rec
        conn.principal = None   # a new Authorization header authenticates anew
        try:
            token = base64.b64decode(auth.split(None, 1)[1], validate=True)
        except ValueError:
            rec = {"auth": "failed", "reason": "bad_base64", "principal": None}
            return 401, challenge, {"reason": "bad_base64"}, rec
        cb = None
        if self.cb_data is not None:
            cb = gssapi.raw.ChannelBindings(application_data=self.cb_data)
        # The raw call: SecurityContext.step() keeps an error that comes with an error
        # token (as GSS_S_BAD_BINDINGS does) for later instead of raising it.
        try:
            res = gssapi.raw.accept_sec_context(token, self.creds, channel_bindings=cb)
        except gssapi.exceptions.BadChannelBindingsError as e:
            rec = {"auth": "failed", "reason": "channel_bindings_mismatch",
                   "bindings": "mismatch", "error": str(e), "principal": None}
            return 401, challenge, {"reason": rec["reason"], "error": str(e)}, rec
        except gssapi.exceptions.GSSError as e:
            rec = {"auth": "failed", "reason": "gss_error", "error": str(e),
                   "minor": e.min_code, "major": e.maj_code, "principal": None}
            return 401, challenge, {"reason": "gss_error", "error": str(e)}, rec
        if res.more_steps:
            rec = {"auth": "failed", "reason": "incomplete", "principal": None}
            return 401, challenge, {"reason": "incomplete"}, rec
        out = res.token
        principal = str(gssapi.Name(base=res.initiator_name))
        bound = gssapi.RequirementFlag.channel_bound in res.flags
        if self.cb_data is None:
            bindings = "not_checked"
        else:
            bindings = "match" if bound else "absent"
        rec = {"auth": "negotiate", "principal": principal, "channel_bound": bound,
               "bindings": bindings}
        if self.require_bindings and not bound:
            rec.update(auth="failed", reason="channel_bindings_absent", principal=None,
                       initiator=principal)
            return 401, challenge, {"reason": "channel_bindings_absent"}, rec
        if self.connection_bound:
            conn.principal = principal
        extra = []
        if out:
            extra.append(("WWW-Authenticate", "Negotiate " + base64.b64encode(out).decode()))
        if self.connection_bound:
            extra.append(("Persistent-Auth", "true"))
        return 200, extra, dict(rec, conn=conn.peer), rec

    def finish_request(self, request, client_address):
        if self.tls is not None:
            request.settimeout(30)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ValueError):
                return
            request.settimeout(None)
        super().finish_request(request, client_address)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", help="written with the port once listening")
    p.add_argument("--log", required=True, help="JSON lines, one per request")
    p.add_argument("--keytab", required=True, help="the acceptor's keytab (eas.keytab)")
    p.add_argument("--krb5-conf", help="KRB5_CONFIG (the fixture's krb5.conf)")
    p.add_argument("--acceptor", help="accept only for this service (HTTP@host); "
                   "default: any key of the keytab")
    p.add_argument("--tls-cert", help="PEM: the server certificate first, then its chain")
    p.add_argument("--tls-key")
    p.add_argument("--require-bindings", action="store_true",
                   help="refuse a token without channel bindings (TLS only)")
    p.add_argument("--connection-bound", action="store_true",
                   help="authentication holds for the rest of the connection")
    p.add_argument("--expect-cert", help="PEM: expect the bindings of this certificate instead "
                   "of the served one (a client whose bindings are wrong, for tests)")
    a = p.parse_args()
    if a.krb5_conf:
        os.environ["KRB5_CONFIG"] = a.krb5_conf
    # A replay cache of this server's own, beside its log.
    os.environ.setdefault("KRB5RCACHEDIR", os.path.dirname(os.path.abspath(a.log)))
    if a.require_bindings and not a.tls_cert:
        p.error("--require-bindings needs --tls-cert: bindings are the TLS channel's")

    srv = Server((a.host, a.port), Handler, bind_and_activate=True)
    srv.log_path = a.log
    der = None
    if a.tls_cert:
        import ssl
        from kdc import pem_first_cert_der
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        srv.tls = ctx
        der = pem_first_cert_der(a.expect_cert or a.tls_cert)
    srv.setup_gss(a.keytab, a.acceptor, a.require_bindings, a.connection_bound, der)
    port = srv.server_address[1]
    if a.port_file:
        tmp = a.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.rename(tmp, a.port_file)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


class GssBackend:
    """This program in its own process, for a test (any Python: the child runs
    under /usr/bin/python3). <kdc> is a kdc.Kdc; tls=True serves HTTPS with the
    test PKI's server certificate (localhost, 127.0.0.1), whose
    tls-server-end-point hash is then `cb_data`."""

    PYTHON = "/usr/bin/python3"

    def __init__(self, workdir, kdc, tls=True, require_bindings=False,
                 connection_bound=False, cert=None, key=None, acceptor=None, expect_cert=None):
        self.workdir, self.kdc, self.tls = workdir, kdc, tls
        self.require_bindings, self.connection_bound = require_bindings, connection_bound
        self.acceptor = acceptor
        self.expect_cert = expect_cert
        if tls and cert is None:
            from harness import pki
            cert, key = pki("server-chain.pem"), pki("server.key")
        self.cert, self.key = cert, key
        self.dir = os.path.join(workdir, f"gssbackend-{id(self):x}")
        self.log = os.path.join(self.dir, "requests.jsonl")
        self.stderr_path = os.path.join(self.dir, "stderr")
        self.proc = None
        self.port = None
        self.cb_data = None

    def start(self, timeout=15.0):
        os.makedirs(self.dir, exist_ok=True)
        open(self.log, "w").close()
        port_file = os.path.join(self.dir, "port")
        args = [self.PYTHON, os.path.abspath(__file__), "--log", self.log,
                "--port-file", port_file, "--keytab", self.kdc.eas_keytab,
                "--krb5-conf", self.kdc.krb5_conf]
        if self.tls:
            from kdc import channel_binding_data, pem_first_cert_der
            args += ["--tls-cert", self.cert, "--tls-key", self.key]
            self.cb_data = channel_binding_data(pem_first_cert_der(self.cert))
        if self.require_bindings:
            args.append("--require-bindings")
        if self.connection_bound:
            args.append("--connection-bound")
        if self.acceptor:
            args += ["--acceptor", self.acceptor]
        if self.expect_cert:
            args += ["--expect-cert", self.expect_cert]
        self.err = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.err,
                                     env=self.kdc.env())
        deadline = time.monotonic() + timeout
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("gssbackend did not start: "
                                   + open(self.stderr_path).read()[-2000:])
            time.sleep(0.02)
        self.port = int(open(port_file).read())
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.err.close()

    def requests(self):
        """The log: one dict per request (see the module's docstring)."""
        with open(self.log) as f:
            return [json.loads(line) for line in f if line.strip()]

    def stderr(self):
        return open(self.stderr_path, errors="replace").read()

    @property
    def url(self):
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"


if __name__ == "__main__":
    main()
