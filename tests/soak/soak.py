#!/usr/bin/env python3
"""The soak (tests/soak.sh MINUTES): certmapd under a mixed load for MINUTES
minutes, then checks that it went back to where it started.

Real processes as in tests/e2e/: certmapd (CERTMAPD_BIN: the ASan build when
tests/soak.sh finds one), tests/e2e/backend.py, the LDIF mapping source (no
Samba) with one account mapped strongly to a leaf issued for the run. The load,
one thread per client, until the time is up:
  held      long-poll Pings (the backend holds each 2-15 s) on kept-alive
            connections to the protected path
  keepalive bursts of requests on one connection
  handshake a new TLS connection (full handshake) per request
  upload    bodies of 0-256 KiB, half of them chunked, whose SHA-256 the
            backend echoes: compared with the client's own
  abort     clients that leave at every stage: before/mid handshake, mid
            head, mid body, while a Ping is held
  anonymous no certificate: the protected path must answer 403, the public
            one 200
and SIGHUP every minute (a configuration reload where it exists; either way
certmapd must go on). RSS, descriptors and threads are sampled every 10 s.
Clients reuse a connection as HTTP clients do: not after "Connection: close",
not once certmapd has closed it while idle.

It fails on: certmapd dying, any sanitizer report, a non-zero exit at the end,
any exception in a client thread (but EOF on a request sent within 2 s of a
reload: the keep-alive race, counted apart),
any request that reached the backend on the protected path without the
verified certificate's headers and the mapped user, any checksum mismatch,
any unexpected answer, and growth that does not go back after the load
(descriptors and threads back to the baseline; RSS within a margin of what it
was after the first minute of load). Prints a table of figures."""
import hashlib
import os
import random
import select
import signal
import socket
import ssl
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))

import leaves  # noqa: E402
from harness import Env, Reader, ensure_pki, pki, request_bytes  # noqa: E402
from test_mapping_ldif import account  # noqa: E402

PROTECTED = "/Microsoft-Server-ActiveSync"
PUBLIC = "/public/"
USER = "alice@corp.example.test"


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.errors = []

    def add(self, what, n=1):
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + n

    def error(self, msg):
        with self.lock:
            self.counts["errors"] = self.counts.get("errors", 0) + 1
            if len(self.errors) < 20:
                self.errors.append(msg)


def proc_sample(pid):
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return {"t": time.time(), "rss_kib": rss, "fds": fds, "threads": threads}


class Soak:
    def __init__(self, env, minutes):
        self.env = env
        self.minutes = minutes
        self.stats = Stats()
        self.stop = threading.Event()
        self.last_hup = 0.0
        self.leaf = leaves.issue(env.dir, "alice", upn=USER)
        entry, _ = account("alice", 1104, upn=USER,
                           altsecids=[leaves.strong_altsecid(self.leaf)])
        ldif = os.path.join(env.dir, "accounts.ldif")
        with open(ldif, "w") as f:
            f.write("version: 1\n\n" + entry)
        self.backend = env.backend()
        self.d = env.certmapd(self.backend, {
            "server": {"workers": "2", "log_level": "info", "access_log": "off"},
            "mapping": {"source": "ldif", "ldif_file": ldif, "netbios_domain": "CORP"},
            f"location {PROTECTED}": {"client_certificate": "require", "mapping": "on"},
            f"location {PUBLIC}": {"client_certificate": "ignore", "mapping": "off"},
            "client_certificate": {"mode": "accept"},
            "buffering": {"upload_read_ahead_size": "512K"},
        })
        self.ctx = ssl.create_default_context(cafile=pki("root-ca.crt"))
        self.ctx.load_cert_chain(self.leaf.chain, self.leaf.key)
        self.anon_ctx = ssl.create_default_context(cafile=pki("root-ca.crt"))

    # ---- a client connection ------------------------------------------------------

    def connect(self, ctx=None, timeout=30):
        raw = socket.create_connection(("127.0.0.1", self.d.port), timeout=timeout)
        return (ctx or self.ctx).wrap_socket(raw, server_hostname="localhost")

    def exchange(self, s, reader, method, target, body=b"", chunked=False):
        headers = [("Host", "localhost")]
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
            wire = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7000]), body[i:i + 7000])
                            for i in range(0, len(body), 7000)) + b"0\r\n\r\n"
            s.sendall(request_bytes(method, target, headers) + wire)
        else:
            if body or method in ("POST", "PUT"):
                headers.append(("Content-Length", str(len(body))))
            s.sendall(request_bytes(method, target, headers, body))
        return reader.response()

    def check_mapped(self, r, what):
        if r.status != 200:
            self.stats.error(f"{what}: status {r.status}")
            return None
        try:
            rec = r.json()
        except ValueError:
            self.stats.error(f"{what}: not the backend's answer")
            return None
        h = {k.lower(): v for k, v in rec["headers"]}
        if h.get("x-remote-user") != USER or "x-client-cert-sha256" not in h:
            self.stats.error(f"{what}: the backend did not get the mapped identity")
        return rec

    def reusable(self, s, r):
        """Whether the connection <s>, whose last answer was <r>, may carry the
        next request, as an HTTP client decides: not after "Connection: close"
        (connections of a generation a reload replaced), nor once certmapd
        has closed it while idle (a reload closes those). Counted."""
        if (r.header("Connection") or "").lower() == "close":
            self.stats.add("connections ended by Connection: close")
            return False
        if s.pending() == 0 and select.select([s], [], [], 0)[0]:
            self.stats.add("idle connections closed by certmapd")
            return False
        return True

    def guard(self, what, fn):
        while not self.stop.is_set():
            try:
                fn()
            except Exception as e:  # noqa: BLE001: a client thread never dies silently
                if self.stop.is_set():
                    break
                if isinstance(e, EOFError) and time.time() - self.last_hup < 2:
                    # certmapd closed an idle kept-alive connection at the reload
                    # just as this request went out: the keep-alive race any
                    # HTTP client retries on a new connection
                    self.stats.add("requests met by a reload's idle close")
                    continue
                self.stats.error(f"{what}: {type(e).__name__}: {e}")
                time.sleep(0.2)

    # ---- the clients --------------------------------------------------------------

    def held(self):
        with self.connect() as s:
            reader = Reader(s)
            for _ in range(random.randint(1, 4)):
                if self.stop.is_set():
                    return
                delay = random.uniform(2, 15)
                r = self.exchange(s, reader, "POST", f"{PROTECTED}?Cmd=Ping&delay={delay:.1f}",
                                  b"<Ping/>")
                self.check_mapped(r, "held Ping")
                self.stats.add("held pings")
                if not self.reusable(s, r):
                    return

    def keepalive(self):
        with self.connect() as s:
            reader = Reader(s)
            for i in range(random.randint(5, 50)):
                path = f"{PROTECTED}?Cmd=Sync&i={i}" if i % 3 else f"{PUBLIC}item{i}"
                r = self.exchange(s, reader, "GET", path)
                if path.startswith(PROTECTED):
                    self.check_mapped(r, "keep-alive")
                elif r.status != 200:
                    self.stats.error(f"keep-alive public: {r.status}")
                self.stats.add("keep-alive requests")
                if not self.reusable(s, r):
                    break
        time.sleep(0.05)

    def handshake(self):
        with self.connect() as s:
            r = self.exchange(s, Reader(s), "GET", f"{PROTECTED}?Cmd=FolderSync")
            self.check_mapped(r, "handshake")
            self.stats.add("handshakes")

    def upload(self):
        with self.connect() as s:
            reader = Reader(s)
            for _ in range(random.randint(1, 5)):
                body = os.urandom(random.choice([0, 1, 100, 4096, 65536, 200000, 262144]))
                chunked = random.random() < 0.5 and len(body) > 0
                r = self.exchange(s, reader, "POST", f"{PROTECTED}?Cmd=SendMail", body, chunked)
                rec = self.check_mapped(r, "upload")
                if rec is not None and (rec["body_sha256"] != hashlib.sha256(body).hexdigest()
                                        or rec["body_len"] != len(body)):
                    self.stats.add("checksum mismatches")
                    self.stats.error(f"upload of {len(body)} bytes: checksum mismatch")
                self.stats.add("uploads")
                self.stats.add("upload bytes", len(body))
                if not self.reusable(s, r):
                    return

    def abort(self):
        stage = random.choice(["tcp", "mid-handshake", "after-handshake", "mid-head",
                               "mid-body", "mid-ping"])
        raw = socket.create_connection(("127.0.0.1", self.d.port), timeout=10)
        try:
            if stage == "tcp":
                return
            if stage == "mid-handshake":
                raw.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(40))
                return
            s = self.ctx.wrap_socket(raw, server_hostname="localhost")
            raw = s
            if stage == "mid-head":
                s.sendall(b"GET " + PROTECTED.encode() + b"?Cmd=Ping HTTP/1.1\r\nHost: loc")
            elif stage == "mid-body":
                s.sendall(request_bytes("POST", f"{PROTECTED}?Cmd=SendMail",
                                        [("Content-Length", "100000")], os.urandom(30000)))
            elif stage == "mid-ping":
                s.sendall(request_bytes("POST", f"{PROTECTED}?Cmd=Ping&delay=30",
                                        [("Content-Length", "7")], b"<Ping/>"))
                time.sleep(random.uniform(0.1, 1.0))
        finally:
            self.stats.add(f"aborts {stage}")
            try:
                raw.close()
            except OSError:
                pass
            time.sleep(0.05)

    def anonymous(self):
        with self.connect(self.anon_ctx) as s:
            reader = Reader(s)
            r = self.exchange(s, reader, "GET", f"{PUBLIC}anon")
            if r.status != 200:
                self.stats.error(f"anonymous public: {r.status}")
        try:
            with self.connect(self.anon_ctx) as s:
                r = self.exchange(s, Reader(s), "GET", f"{PROTECTED}?Cmd=Sync")
                if r.status != 403:
                    self.stats.error(f"anonymous protected: {r.status}, not 403")
        except (OSError, ssl.SSLError, ValueError):
            pass  # a late certificate request refused by the client: also fine
        self.stats.add("anonymous requests", 2)
        time.sleep(0.1)

    # ---- the run ------------------------------------------------------------------

    def run(self):
        pid = self.d.pid()
        samples = [proc_sample(pid)]
        baseline = samples[0]
        mix = ([("held", self.held)] * 20 + [("keepalive", self.keepalive)] * 3 +
               [("handshake", self.handshake)] * 2 + [("upload", self.upload)] * 2 +
               [("abort", self.abort)] * 2 + [("anonymous", self.anonymous)])
        threads = [threading.Thread(target=self.guard, args=m, daemon=True) for m in mix]
        for t in threads:
            t.start()
        start = time.time()
        end = start + self.minutes * 60
        next_hup = start + 60
        next_sample = start + 10
        warm = None
        while time.time() < end:
            time.sleep(0.5)
            if self.d.proc.poll() is not None:
                self.stats.error(f"certmapd exited with {self.d.proc.returncode} under load")
                break
            now = time.time()
            if now >= next_sample:
                samples.append(proc_sample(pid))
                next_sample += 10
                if warm is None and now - start >= 60:
                    warm = samples[-1]
            if now >= next_hup:
                self.last_hup = time.time()
                self.d.proc.send_signal(signal.SIGHUP)
                self.stats.add("reloads (SIGHUP)")
                next_hup += 60
        self.stop.set()
        for t in threads:
            t.join(40)
        # The load is over: idle connections go, pooled backend connections
        # may stay (at most keepalive_connections per worker).
        time.sleep(5)
        after = proc_sample(pid) if self.d.proc.poll() is None else None
        if after is not None:
            samples.append(after)
        return baseline, warm or samples[-1], after, samples, time.time() - start

    def verify(self, baseline, warm, after):
        problems = []
        if after is None:
            problems.append("certmapd died")
            return problems
        if after["fds"] > baseline["fds"] + 2 * 64:
            problems.append(f"descriptors: {after['fds']} after the load, {baseline['fds']} "
                            "before (more than the pooled backend connections can explain)")
        if after["threads"] != baseline["threads"]:
            problems.append(f"threads: {after['threads']} after the load, "
                            f"{baseline['threads']} before")
        if after["rss_kib"] > warm["rss_kib"] * 1.5 + 16 * 1024:
            problems.append(f"RSS: {after['rss_kib']} KiB after the load, {warm['rss_kib']} KiB "
                            "after its first minute")
        protected = [r for r in self.backend.requests() if r["target"].startswith(PROTECTED)]
        bad = [r for r in protected
               if {k.lower(): v for k, v in r["headers"]}.get("x-remote-user") != USER
               or not any(k.lower() == "x-client-cert-sha256" for k, _ in r["headers"])]
        self.stats.add("backend requests (protected)", len(protected))
        if bad:
            problems.append(f"{len(bad)} request(s) reached the backend on {PROTECTED} without "
                            f"the verified certificate and mapped user, e.g. {bad[0]['target']}")
        if self.stats.counts.get("checksum mismatches"):
            problems.append(f"{self.stats.counts['checksum mismatches']} checksum mismatch(es)")
        if self.stats.counts.get("errors"):
            problems.append(f"{self.stats.counts['errors']} unexpected answer(s) or failure(s): "
                            + "; ".join(self.stats.errors[:5]))
        return problems


def table(samples, counts, seconds):
    def col(key):
        v = [s[key] for s in samples]
        return min(v), max(v), v[-1]
    counts = dict(counts)
    counts.setdefault("errors", 0)
    counts.setdefault("checksum mismatches", 0)
    counts["requests answered (all kinds)"] = sum(
        counts.get(k, 0) for k in ("held pings", "keep-alive requests", "handshakes", "uploads",
                                   "anonymous requests"))
    lines = [f"soak: {seconds / 60:.1f} min, {len(samples)} samples", "",
             "| figure | value |", "|---|---:|"]
    for k in sorted(counts):
        lines.append(f"| {k} | {counts[k]} |")
    lines += ["", "| sample | min | max | end |", "|---|---:|---:|---:|"]
    for key, name in (("rss_kib", "RSS (KiB)"), ("fds", "descriptors"), ("threads", "threads")):
        lo, hi, end = col(key)
        lines.append(f"| {name} | {lo} | {hi} | {end} |")
    return "\n".join(lines)


def main():
    minutes = float(sys.argv[1]) if len(sys.argv) > 1 else 5
    ensure_pki()
    env = Env()
    ok = False
    try:
        soak = Soak(env, minutes)
        baseline, warm, after, samples, seconds = soak.run()
        problems = soak.verify(baseline, warm, after)
        rc = soak.d.stop()  # raises on a sanitizer report
        if rc not in (0, None):
            problems.append(f"certmapd exited with {rc}")
        soak.d.proc = None
        print(table(samples, soak.stats.counts, seconds))
        if "ERROR: AddressSanitizer" in soak.d.stderr() or "runtime error:" in soak.d.stderr():
            problems.append("sanitizer report")
        for p in problems:
            print(f"SOAK FAIL: {p}")
        ok = not problems
    except AssertionError as e:
        print(f"SOAK FAIL: {e}")
    finally:
        try:
            env.close(ok)
        except AssertionError as e:
            print(f"SOAK FAIL: {e}")
            ok = False
    print("soak: PASS" if ok else "soak: FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
