"""End-to-end test harness: real certmapd, real backend, real curl/openssl.

Each test script imports this, defines test functions and calls run(). The
PKI comes from tests/pki/mkpki.sh (the ctest fixture `pki` made it; the path
is in CERTMAPD_TEST_PKI). Everything listens on 127.0.0.1 only.
"""
import json
import os
import re
import shutil
import signal
import socket
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

    def start(self, port=None):
        open(self.log, "w").close()
        args = [PYTHON, BACKEND, "--log", self.log, "--port-file", self.port_file]
        if port:
            args += ["--port", str(port)]
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

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"


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

    def start(self):
        self.err = open(self.stderr_path, "w")
        self.proc = subprocess.Popen([BIN, "-c", self.conf_path], stderr=self.err,
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

    def backend(self):
        b = Backend(self.dir).start()
        self.backends.append(b)
        return b

    def certmapd(self, backend=None, sections=None, start=True, backend_url=None):
        url = backend_url or (backend.url if backend else "http://127.0.0.1:9")
        d = Certmapd(self.dir, url, sections)
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
        if ok and not errors:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print(f"  (kept {self.dir})")
        if errors:
            raise AssertionError("; ".join(errors))


def run(tests):
    """Runs each test(env) with a fresh Env; prints a ctest-readable summary."""
    ensure_pki()
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
