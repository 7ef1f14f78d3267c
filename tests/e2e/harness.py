"""End-to-end test harness: real certmapd, real backend, real curl/openssl.

Each test script imports this, defines test functions and calls run(). The
PKI comes from tests/pki/mkpki.sh (the ctest fixture `pki` made it; the path
is in CERTMAPD_TEST_PKI). Everything listens on 127.0.0.1 only.
"""
import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import traceback

SRC = os.environ.get("CERTMAPD_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "../..")))
BIN = os.environ.get("CERTMAPD_BIN", os.path.join(SRC, "build", "certmapd"))
PKI = os.environ.get("CERTMAPD_TEST_PKI", os.path.join(SRC, "build", "test-pki"))
BACKEND = os.path.join(SRC, "tests", "e2e", "backend.py")
PYTHON = sys.executable


def ensure_pki():
    if not os.path.exists(os.path.join(PKI, ".complete")):
        subprocess.run([os.path.join(SRC, "tests", "pki", "mkpki.sh"), PKI], check=True,
                       stdout=subprocess.DEVNULL)


def pki(name):
    return os.path.join(PKI, name)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc=None, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Backend:
    """tests/e2e/backend.py in its own process, logging every request it gets."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.log = os.path.join(workdir, f"backend-{id(self)}.jsonl")
        self.port_file = self.log + ".port"
        self.proc = None
        self.port = None

    def start(self, port=None, tls=False, host=None):
        """tls=True serves HTTPS with the PKI's server certificate (localhost, 127.0.0.1);
        <host> is another loopback address to listen on (default 127.0.0.1)."""
        open(self.log, "w").close()
        self.events_path = self.log + ".events"
        open(self.events_path, "w").close()
        self.tls = tls
        args = [PYTHON, BACKEND, "--log", self.log, "--port-file", self.port_file,
                "--events", self.events_path]
        if port:
            args += ["--port", str(port)]
        if host:
            args += ["--host", host]
        if tls:
            args += ["--tls-cert", pki("server-chain.pem"), "--tls-key", pki("server.key")]
        self.proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while not os.path.exists(self.port_file):
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("backend did not start")
            time.sleep(0.02)
        self.port = int(open(self.port_file).read())
        os.unlink(self.port_file)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)

    def requests(self):
        with open(self.log) as f:
            return [json.loads(line) for line in f if line.strip()]

    def clear(self):
        open(self.log, "w").close()

    def events(self):
        """Connections the backend saw end: dicts with conn_id, requests, how."""
        with open(self.events_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def wait_events(self, pred, timeout=5.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = [e for e in self.events() if pred(e)]
            if got:
                return got
            time.sleep(0.05)
        return []

    @property
    def url(self):
        return f"{'https' if getattr(self, 'tls', False) else 'http'}://127.0.0.1:{self.port}"


def private_hosts(hosts, workdir, nsswitch=None):
    """A command prefix that runs a program with <hosts> as its /etc/hosts (and,
    with <nsswitch>, that as its /etc/nsswitch.conf), so that a test controls what
    a name resolves to, and in which order, without touching the machine's files:
    a private mount namespace (unshare) with the files bind-mounted over them."""
    d = tempfile.mkdtemp(prefix="hosts-", dir=workdir)
    binds = [("hosts", hosts, "/etc/hosts")]
    if nsswitch is not None:
        binds.append(("nsswitch.conf", nsswitch, "/etc/nsswitch.conf"))
    script = []
    for name, text, target in binds:
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
        script.append(f'mount --bind "$0/{name}" {target}')
    # unshare -m makes every mount of the new namespace private first, which
    # fails where "/" is no mount point (a chroot such as a new Debian root made
    # by mmdebstrap). There the copy is left as it is: safe only when no mount
    # is shared, or the bind mounts would show through to the machine.
    prop = []
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        with open("/proc/self/mountinfo") as f:
            if any(" shared:" in line for line in f):
                raise RuntimeError("cannot give a test its own /etc/hosts here: unshare -m fails "
                                   "and mounts are shared")
        prop = ["--propagation", "unchanged"]
    # exec: the process a test signals is the program itself.
    return ["unshare", "-m"] + prop + ["sh", "-c", " && ".join(script) + ' && exec "$@"', d]


class Certmapd:
    """certmapd with a generated configuration; access log to a file."""

    def __init__(self, workdir, backend_url, sections=None, listen_port=None):
        self.workdir = workdir
        self.port = listen_port or free_port()
        self.access_log = os.path.join(workdir, f"access-{self.port}.log")
        self.stderr_path = os.path.join(workdir, f"certmapd-{self.port}.err")
        conf = {
            "server": {"listen": f"127.0.0.1:{self.port}", "workers": "2",
                       "access_log": self.access_log, "log_level": "debug"},
            "tls": {"certificate": pki("server-chain.pem"), "private_key": pki("server.key")},
            "client_certificate": {"mode": "require", "trust_anchors": pki("trust-anchors.pem"),
                                   "trusted_issuers": pki("trusted-issuers.pem"),
                                   "crl_file": pki("crl.pem")},
            "backend": {"url": backend_url},
        }
        for sec, keys in (sections or {}).items():
            if keys is None:
                conf.pop(sec, None)
                continue
            conf.setdefault(sec, {})
            for k, v in keys.items():
                if v is None:
                    conf[sec].pop(k, None)
                else:
                    conf[sec][k] = v
        self.conf_path = os.path.join(workdir, f"certmapd-{self.port}.conf")
        with open(self.conf_path, "w") as f:
            for sec, keys in conf.items():
                f.write(f"[{sec}]\n")
                for k, v in keys.items():
                    for item in (v if isinstance(v, list) else [v]):
                        f.write(f"{k} = {item}\n")
                f.write("\n")
        self.proc = None
        self.wrapper = []

    def use_hosts(self, text):
        """Runs certmapd with <text> as its /etc/hosts (see private_hosts)."""
        self.wrapper = private_hosts(text, self.workdir)

    def start(self):
        self.err = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(self.wrapper + [BIN, "-c", self.conf_path], stderr=self.err,
                                     stdout=subprocess.DEVNULL)
        wait_port(self.port, self.proc)
        return self

    def stop(self, sig=signal.SIGTERM, timeout=40):
        """Stops certmapd; returns its exit status. Sanitizer reports fail the test."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("certmapd did not stop on SIGTERM")
        self.err.close()
        rc = self.proc.returncode
        self.proc = None
        text = open(self.stderr_path, errors="replace").read()
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if marker in text:
                raise AssertionError(f"sanitizer report in certmapd's stderr:\n{text[-6000:]}")
        return rc

    def stderr(self):
        return open(self.stderr_path, errors="replace").read()

    def wait_log(self, pattern, since=0, timeout=10.0):
        """Waits for a line matching <pattern> in stderr after offset <since>;
        returns the text after <since>."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.stderr()[since:]
            if re.search(pattern, text):
                return text
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in certmapd's log:\n{self.stderr()[since:][-3000:]}")

    def reload(self, pattern=r"loaded as generation \d+", timeout=30.0):
        """SIGHUP; waits for the log line matching <pattern> after it; returns
        what was logged since."""
        since = len(self.stderr())
        self.proc.send_signal(signal.SIGHUP)
        return self.wait_log(pattern, since, timeout)

    def access(self):
        """Parsed access log lines: dicts of key=value."""
        out = []
        if not os.path.exists(self.access_log):
            return out
        with open(self.access_log) as f:
            for line in f:
                rec = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
                out.append(rec)
        return out

    def wait_access(self, n, timeout=5.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            lines = self.access()
            if len(lines) >= n:
                return lines
            time.sleep(0.02)
        return self.access()

    @property
    def base(self):
        return f"https://localhost:{self.port}"

    def pid(self):
        return self.proc.pid


def curl(url, cert=None, args=(), data=None, timeout=30):
    """Runs curl; returns (status, body bytes, headers text). status 0 = no answer."""
    cmd = ["curl", "-sS", "--cacert", pki("root-ca.crt"), "-o", "-", "-D", "/dev/stderr",
           "--max-time", str(timeout), "-w", "", url]
    if cert:
        cmd += ["--cert", pki(f"{cert}.chain.pem"), "--key", pki(f"{cert}.key")]
    cmd += list(args)
    p = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout + 10)
    m = re.findall(rb"^HTTP/[\d.]+ (\d{3})", p.stderr, re.M)
    status = int(m[-1]) if m else 0
    return status, p.stdout, p.stderr.decode("latin-1")


def curl_until_recovered(url, args, timeout, interval):
    """Repeats curl <url> <args> until it gets 200, for at most <timeout> seconds;
    every other answer meanwhile must be 503 (fail closed). Returns the last status."""
    deadline = time.time() + timeout
    status = 0
    while time.time() < deadline:
        status = curl(url, args=args)[0]
        if status == 200:
            break
        eq(status, 503, "while the directory recovers: fail closed")
        time.sleep(interval)
    return status


def tls_connect(port, cert="good", timeout=10.0):
    """A Python TLS client connection to certmapd, with client certificate <cert> (or None)."""
    ctx = ssl.create_default_context(cafile=pki("root-ca.crt"))
    if cert:
        ctx.load_cert_chain(pki(f"{cert}.chain.pem"), pki(f"{cert}.key"))
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname="localhost")


class Response:
    def __init__(self, status, reason, headers, body):
        self.status, self.reason, self.headers, self.body = status, reason, headers, body

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self):
        return json.loads(self.body)


class Reader:
    """Reads HTTP/1.1 responses from a socket, strictly: any framing error raises."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.eof = False

    def _fill(self):
        try:
            data = self.sock.recv(65536)
        except (ssl.SSLEOFError, ConnectionResetError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def line(self):
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise EOFError("connection closed")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exactly(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError("connection closed in a body")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self, head_request=False, interim=None):
        """The next final response; 1xx interim responses are appended to <interim>."""
        while True:
            status_line = self.line().decode("latin-1")
            m = re.match(r"HTTP/1\.[01] (\d{3}) ?(.*)$", status_line)
            if not m:
                raise ValueError(f"bad status line {status_line!r}")
            headers = []
            while True:
                h = self.line()
                if not h:
                    break
                k, _, v = h.decode("latin-1").partition(":")
                headers.append((k.strip(), v.strip()))
            status = int(m.group(1))
            if 100 <= status < 200:
                if interim is not None:
                    interim.append(status)
                continue
            r = Response(status, m.group(2), headers, b"")
            break
        if head_request or status in (204, 304):
            return r
        te = r.header("transfer-encoding")
        cl = r.header("content-length")
        if te is not None:
            if te.lower() != "chunked":
                raise ValueError(f"unexpected Transfer-Encoding {te!r}")
            parts = []
            while True:
                size = int(self.line().split(b";")[0], 16)
                if size == 0:
                    while self.line():
                        pass
                    break
                parts.append(self.exactly(size))
                if self.exactly(2) != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
            r.body = b"".join(parts)
        elif cl is not None:
            r.body = self.exactly(int(cl))
        else:
            while self._fill():
                pass
            r.body, self.buf = self.buf, b""
        return r

    def closed(self, timeout=5.0):
        """True when the peer closes the connection (with nothing more sent) within <timeout>."""
        self.sock.settimeout(timeout)
        try:
            while self._fill():
                pass
        except (socket.timeout, TimeoutError):
            return False
        except OSError:
            return True
        return True


def request_bytes(method, target, headers=(), body=b""):
    """A request in wire form: Host is added first unless <headers> has one."""
    lines = [f"{method} {target} HTTP/1.1"]
    if not any(k.lower() == "host" for k, _ in headers):
        lines.append("Host: localhost")
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def send_while_reading(sock, data, timeout=20.0):
    """Writes <data> to the TLS socket <sock> while reading what comes back, in
    one thread (OpenSSL forbids reading and writing one connection from two at
    once), until the peer ends the connection or stops reading (a refused
    upload). Returns (what was read, bytes written)."""
    sock.setblocking(False)
    got, sent, end = bytearray(), 0, time.time() + timeout
    writing = True
    while time.time() < end:
        want_w = writing and sent < len(data)
        r, w, _ = select.select([sock], [sock] if want_w else [], [], 0.5)
        if r or sock.pending():
            try:
                chunk = sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                chunk = None
            except (ssl.SSLEOFError, ConnectionResetError):
                chunk = b""
            if chunk == b"":
                break
            if chunk:
                got += chunk
        if w and want_w:
            try:
                sent += sock.send(data[sent:sent + 256 * 1024])
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except OSError:
                writing = False  # the peer closed after answering: expected
    else:
        raise AssertionError(f"no end of the connection within {timeout}s ({len(got)} bytes read)")
    sock.setblocking(True)
    return bytes(got), sent


class BytesSock:
    """What Reader reads from when the bytes were already received."""

    def __init__(self, data):
        self.data = data

    def recv(self, n):
        out, self.data = self.data[:n], self.data[n:]
        return out


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def eq(got, want, what=""):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


class Env:
    """A temporary directory, a backend and certmapd instances, stopped at the end."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="certmapd-e2e-")
        self.backends = []
        self.daemons = []
        self.cleanups = []

    def add_cleanup(self, fn):
        """Calls <fn>() at close, after certmapd stopped (for backends a test starts
        itself, such as apache.Apache or gssbackend.GssBackend: an httpd left
        running would outlive the test); the last added is called first."""
        self.cleanups.append(fn)
        return fn

    def backend(self, tls=False, host=None):
        b = Backend(self.dir).start(tls=tls, host=host)
        self.backends.append(b)
        return b

    def certmapd(self, backend=None, sections=None, start=True, backend_url=None, hosts=None):
        """<hosts>: the text of the /etc/hosts certmapd sees (see Certmapd.use_hosts)."""
        url = backend_url or (backend.url if backend else "http://127.0.0.1:9")
        d = Certmapd(self.dir, url, sections)
        if hosts is not None:
            d.use_hosts(hosts)
        self.daemons.append(d)
        return d.start() if start else d

    def close(self, ok):
        errors = []
        for d in self.daemons:
            try:
                rc = d.stop()
                if rc not in (None, 0):
                    errors.append(f"certmapd exited with {rc}")
            except AssertionError as e:
                errors.append(str(e))
        for b in self.backends:
            b.stop()
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:
                errors.append(f"cleanup {fn}: {e}")
        if ok and not errors:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print(f"  (kept {self.dir})")
        if errors:
            raise AssertionError("; ".join(errors))


def run(tests):
    """Runs each test(env) with a fresh Env; prints a ctest-readable summary."""
    ensure_pki()
    main = sys.modules["__main__"]
    unlisted = sorted(n for n, f in vars(main).items()
                      if n.startswith("test_") and callable(f) and f not in tests)
    if unlisted:
        print(f"defined but not in run([...]): {', '.join(unlisted)}")
        sys.exit(1)
    only = sys.argv[1:]
    passed = failed = 0
    for t in tests:
        if only and t.__name__ not in only:
            continue
        env = Env()
        ok = False
        t0 = time.time()
        try:
            t(env)
            ok = True
        except Exception:
            traceback.print_exc()
        try:
            env.close(ok)
        except Exception as e:
            print(f"  teardown: {e}")
            ok = False
        print(f"{'PASS' if ok else 'FAIL'} {t.__name__} ({time.time() - t0:.1f}s)", flush=True)
        passed += ok
        failed += not ok
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not passed else 0)
