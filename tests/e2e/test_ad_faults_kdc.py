#!/usr/bin/env python3
"""Fault suite, KDC side (issue 15): the real Samba KDC of the fixture behind a
TCP front this file runs (MIT krb5 on TCP only: udp_preference_limit = 1),
which can make every answer slow, refuse connections, or answer garbage in
place of the KDC. Accounts come from an LDIF file (no directory involved); the
ones that must succeed exist in the fixture's AD. A delegated request gets
its 503 kdc_unavailable + Retry-After within [delegation] timeout (never a 403
delegation_refused or a 502 for a KDC that is away or talks nonsense), others
are not held up, krb/'s threads are not used up, and delegation works again
as soon as the KDC does, without a restart."""
import os
import random
import re
import socket
import struct
import threading
import time

import leaves
from apache import Apache
from harness import check, curl, eq, run
from kdc import Kdc
from samba import Samba
from test_mapping_ldif import account

PATH = "/Microsoft-Server-ActiveSync?Cmd=Ping&User=x&DeviceId=D1&DeviceType=iPhone"
OPEN = "/public/ping"          # a location with mapping (so delegation) off
AD = Samba()
KDC = Kdc()
REALM = "corp.example.test"
TIMEOUT = 2.0                  # [delegation] timeout
MARGIN = 1.0                   # what a 503 may take beyond it on a busy machine
_rid = [2000]


def tasks(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


class KdcFront:
    """127.0.0.1:PORT in front of the KDC on 127.0.0.1:88, one Kerberos TCP
    message (4-byte length + body) each way per connection. Modes: "relay"
    (answers after <delay> seconds), "refuse" (nothing listens: ECONNREFUSED),
    and garbage in place of the answer: "random" (raw random bytes), "framed"
    (a right length prefix over random bytes), "truncated" (a prefix for more
    than is sent, then close), "oversize" (a 2 GiB prefix), "close" (closes
    without a byte)."""

    def __init__(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.mode, self.delay = "relay", 0.0
        self.lock = threading.Lock()
        self.listener = None
        self.stopping = False
        self.requests = 0
        self.set_mode("relay")

    def set_mode(self, mode, delay=0.0):
        with self.lock:
            self.mode, self.delay = mode, delay
            if mode == "refuse" and self.listener is not None:
                try:
                    self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(), stops listening
                except OSError:
                    pass
                self.listener.close()
                self.listener = None
            elif mode != "refuse" and self.listener is None and not self.stopping:
                ls = socket.socket()
                ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                ls.bind(("127.0.0.1", self.port))
                ls.listen(64)
                self.listener = ls
                threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def stop(self):
        self.stopping = True
        self.set_mode("refuse")

    def _accept(self, ls):
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _message(s):
        head = b""
        while len(head) < 4:
            b = s.recv(4 - len(head))
            if not b:
                return None
            head += b
        n = struct.unpack(">I", head)[0]
        body = b""
        while len(body) < n:
            b = s.recv(min(65536, n - len(body)))
            if not b:
                return None
            body += b
        return head + body

    def _serve(self, c):
        try:
            c.settimeout(30)
            req = self._message(c)
            if req is None:
                return
            with self.lock:
                self.requests += 1
                mode = self.mode
            if mode == "relay":
                with socket.create_connection(("127.0.0.1", 88), timeout=10) as k:
                    k.sendall(req)
                    ans = self._message(k)
                end = time.monotonic() + self.delay
                while time.monotonic() < end and self.delay > 0:   # fast again: at once
                    time.sleep(0.05)
                if ans is not None:
                    c.sendall(ans)
            elif mode == "random":
                c.sendall(random.randbytes(random.randint(1, 300)))
            elif mode == "framed":
                body = random.randbytes(random.randint(20, 300))
                c.sendall(struct.pack(">I", len(body)) + body)
            elif mode == "truncated":
                c.sendall(struct.pack(">I", 1000) + random.randbytes(10))
            elif mode == "oversize":
                c.sendall(struct.pack(">I", 0x7FFFFFF0) + random.randbytes(64))
            # "close": nothing
        except OSError:
            pass
        finally:
            c.close()


def krb5_conf(env, front):
    with open(KDC.krb5_conf) as f:
        text = f.read()
    text = re.sub(r"(?m)^(\s*)kdc = [^\n]+", rf"\1kdc = 127.0.0.1:{front.port}", text)
    text = re.sub(r"\[libdefaults\]", "[libdefaults]\n  udp_preference_limit = 1", text, count=1)
    path = os.path.join(env.dir, f"krb5-front-{front.port}.conf")
    with open(path, "w") as f:
        f.write(text)
    return path


class Users:
    """Certificates for accounts in an LDIF file: real ones (in the fixture's AD,
    so the KDC delegates for them) and made-up ones (the KDC would not know them:
    only for while it does not answer anyway)."""

    def __init__(self, env):
        self.env, self.entries, self.leaves = env, [], {}

    def add(self, name, real=False):
        if real:
            AD.user_create(name, upn=f"{name}@{REALM}")
        leaf = leaves.issue(self.env.dir, name, upn=f"{name}@{REALM}")
        _rid[0] += 1
        self.entries.append(account(name, _rid[0], upn=f"{name}@{REALM}",
                                    altsecids=[leaves.strong_altsecid(leaf)])[0])
        self.leaves[name] = leaf
        return leaf

    def ldif(self):
        path = os.path.join(self.env.dir, "accounts.ldif")
        with open(path, "w") as f:
            f.write("version: 1\n\n" + "".join(self.entries))
        return path


def start(env, users, front, delegation=None):
    a = Apache(env.dir, KDC).start()
    env.add_cleanup(a.stop)
    env.add_cleanup(front.stop)
    d = env.certmapd(sections={
        "mapping": {"source": "ldif", "ldif_file": users.ldif(), "netbios_domain": "CORP"},
        "location /public/": {"mapping": "off"},
        "delegation": {"mode": "kerberos", "principal": KDC.seg_principal,
                       "keytab": KDC.seg_keytab, "target_spn": KDC.eas_spn,
                       "krb5_conf": krb5_conf(env, front), "timeout": f"{TIMEOUT:g}s",
                       **(delegation or {})},
        # No pooled backend connection: every delegated request needs a token.
        "backend": {"url": a.url, "keepalive_connections": "0"},
    })
    return a, d


def timed(d, leaf, path=PATH):
    t0 = time.monotonic()
    status, _, hdrs = curl(d.base + path, args=leaf.curl_args(), timeout=20)
    return status, time.monotonic() - t0, hdrs


def reasons(d):
    """(status, reason) of the delegated requests (not the path without mapping,
    forwarded as nobody, with no token, which the backend answers itself)."""
    return [(l["status"], l["reason"]) for l in d.access() if not l["path"].startswith(OPEN)]


def until_200(d, leaf, within):
    """Requests until one is served; meanwhile every answer is 503."""
    deadline = time.monotonic() + within
    while True:
        status, took, _ = timed(d, leaf)
        if status == 200 or time.monotonic() > deadline:
            return status
        eq(status, 503, "fail closed while the KDC comes back")
        check(took < TIMEOUT + MARGIN, f"a 503 in {took:.2f} s")
        time.sleep(0.3)


def test_slow_kdc(env):
    users = Users(env)
    cached = users.add(f"kfc{os.getpid() % 10000}", real=True)
    new = users.add(f"kfn{os.getpid() % 10000}", real=True)
    front = KdcFront()
    a, d = start(env, users, front)
    eq(timed(d, cached)[0], 200, "a user's first request, the KDC fast")
    front.set_mode("relay", delay=TIMEOUT + 2)
    took = []
    for i in range(3):
        status, t, hdrs = timed(d, new)
        eq(status, 503, f"a new user, every KDC answer {TIMEOUT + 2:g} s late")
        check("retry-after:" in hdrs.lower(), "Retry-After")
        took.append(t)
    check(all(TIMEOUT - 0.1 <= t < TIMEOUT + MARGIN for t in took),
          f"each 503 at [delegation] timeout ({TIMEOUT:g} s): {[round(t, 2) for t in took]}")
    print(f"  503 after {', '.join(f'{t:.2f}' for t in took)} s ([delegation] timeout {TIMEOUT:g} s)")
    # While the new user's exchange hangs on the KDC: the cached user's token
    # comes from its credential, and a path without mapping needs no token.
    hold = threading.Thread(target=timed, args=(d, new))
    hold.start()
    time.sleep(0.3)
    status, t, _ = timed(d, cached)
    eq(status, 200, "a cached user while the KDC is slow")
    check(t < 1.0, f"the cached user's request took {t:.2f} s")
    status, t, _ = timed(d, cached, OPEN)
    check(status != 503 and t < 1.0, f"a path with mapping off: {status} in {t:.2f} s")
    print(f"  while a new user's exchange hangs: the cached user served, a path without "
          f"mapping answered ({status}) in {t:.2f} s")
    hold.join()
    front.set_mode("relay", delay=0)
    eq(until_200(d, new, 10), 200, "the new user served once the KDC is fast, no restart")
    got = reasons(d)
    bad = [r for r in got if r[1] not in ("-", "kdc_unavailable")]
    eq(bad, [], f"only 200 or 503 kdc_unavailable ({got})")
    check(("503", "kdc_unavailable") in got, f"reasons: {got}")


def test_flapping_kdc(env):
    users = Users(env)
    pid = os.getpid() % 10000
    real = [users.add(f"kff{pid}x{i}", real=True) for i in range(2)]
    front = KdcFront()
    # One cached credential for two users taking turns: every request asks the KDC.
    a, d = start(env, users, front, delegation={"cache_entries": "1"})
    eq(timed(d, real[0])[0], 200, "before the flapping")
    stop = threading.Event()

    def flap():
        up = True
        while not stop.wait(1.0):
            up = not up
            front.set_mode("relay" if up else "refuse")

    f = threading.Thread(target=flap)
    f.start()
    statuses, deadline = [], time.monotonic() + 12
    try:
        while time.monotonic() < deadline:
            for leaf in real:
                status, t, _ = timed(d, leaf)
                statuses.append(status)
                check(t < TIMEOUT + MARGIN, f"an answer in {t:.2f} s")
    finally:
        stop.set()
        f.join()
    front.set_mode("relay")
    check(d.proc.poll() is None, "certmapd still runs")
    got = reasons(d)
    bad = [r for r in got if r not in (("200", "-"), ("503", "kdc_unavailable"))]
    eq(bad, [], f"only 200 or 503 kdc_unavailable while the KDC flaps ({len(got)} answers)")
    print(f"  while flapping: {statuses.count(200)} x 200, {statuses.count(503)} x 503")
    for leaf in real:
        eq(until_200(d, leaf, 10), 200, "served once the KDC stays up")


def test_garbage_kdc(env):
    users = Users(env)
    pid = os.getpid() % 10000
    good = users.add(f"kfg{pid}", real=True)
    front = KdcFront()
    a, d = start(env, users, front)
    base = tasks(d.pid())
    n = 0
    for mode in ("random", "framed", "truncated", "oversize", "close"):
        front.set_mode(mode)
        for i in range(2):
            status, t, hdrs = timed(d, good)
            eq(status, 503, f"a KDC answering {mode}: status")
            check(t < TIMEOUT + MARGIN, f"{mode}: 503 in {t:.2f} s")
            check("retry-after:" in hdrs.lower(), f"{mode}: Retry-After")
        n += 2
        eq([l["reason"] for l in d.wait_access(n)[n - 2:n]], ["kdc_unavailable"] * 2,
           f"{mode}: reason")
    check(front.requests > 0, "the KDC front was asked")
    check(d.proc.poll() is None, "certmapd still runs")
    eq(tasks(d.pid()), base, "threads before and after the garbage")
    front.set_mode("relay")
    eq(until_200(d, good, 10), 200, "served once the real KDC answers")
    eq(tasks(d.pid()), base, "threads after recovery")


def test_pool_not_exhausted_by_a_slow_kdc(env):
    """More users at once than krb/ has threads for the KDC (2), every KDC answer
    late: each request has its 503 at the timeout (none waits behind the others'
    exchanges), paths without delegation and a user whose credential is cached
    are served meanwhile, and the queue that built up does not delay delegation
    once the KDC is fast."""
    users = Users(env)
    pid = os.getpid() % 10000
    crowd = [users.add(f"kfp{pid}x{i}") for i in range(8)]   # made up: never answered in time
    late = users.add(f"kfl{pid}", real=True)
    cached = users.add(f"kfc{pid}", real=True)
    front = KdcFront()
    a, d = start(env, users, front)
    base = tasks(d.pid())
    eq(timed(d, cached)[0], 200, "a user served while the KDC is fast: its credential cached")
    front.set_mode("relay", delay=6.0)
    results = [None] * len(crowd)

    def one(i):
        results[i] = timed(d, crowd[i])

    for rnd in range(2):
        ts = [threading.Thread(target=one, args=(i,)) for i in range(len(crowd))]
        t0 = time.monotonic()
        for t in ts:
            t.start()
        time.sleep(0.5)
        status, t_open, _ = timed(d, crowd[0], OPEN)
        check(status != 503 and t_open < 1.0,
              f"a path with mapping off meanwhile: {status} in {t_open:.2f} s")
        status, t_cached, _ = timed(d, cached)
        check(status == 200 and t_cached < 1.0,
              f"the cached user meanwhile: {status} in {t_cached:.2f} s")
        for t in ts:
            t.join()
        wall = time.monotonic() - t0
        eq([r[0] for r in results], [503] * len(crowd), f"round {rnd}: all 503")
        worst = max(r[1] for r in results)
        check(worst < TIMEOUT + MARGIN, f"round {rnd}: the slowest 503 took {worst:.2f} s")
        print(f"  round {rnd}: {len(crowd)} users at once, 503s after "
              f"{min(r[1] for r in results):.2f}..{worst:.2f} s, {wall:.2f} s in all")
    check(d.proc.poll() is None, "certmapd still runs")
    # The KDC fast again: a real user is served at once, not behind the
    # exchanges queued for the users who have long had their 503.
    front.set_mode("relay", delay=0)
    status, t, _ = timed(d, late)
    eq(status, 200, "a user after the slow spell")
    check(t < TIMEOUT, f"served in {t:.2f} s")
    deadline = time.monotonic() + 10
    while tasks(d.pid()) != base and time.monotonic() < deadline:
        time.sleep(0.2)
    eq(tasks(d.pid()), base, "threads")


if __name__ == "__main__":
    run([v for k, v in sorted(globals().items()) if k.startswith("test_")])
