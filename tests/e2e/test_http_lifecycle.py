#!/usr/bin/env python3
"""Connection and process lifecycle end to end: a client that vanishes
mid-upload or mid-long-poll leaves no descriptor behind and its backend
connection is closed; SIGTERM and SIGINT stop accepting, let a request in
flight finish and exit 0; workers = 0 starts one worker per core. Also prints
the resident memory per idle mutual-TLS keep-alive connection (not asserted)."""
import os
import re
import signal
import socket
import threading
import time

from harness import (Reader, check, curl, eq, fd_count, request_bytes, rss_kib, run,
                     tls_connect)


def settle_fds(pid, want, timeout=5.0):
    deadline = time.time() + timeout
    n = fd_count(pid)
    while time.time() < deadline and n != want:
        time.sleep(0.05)
        n = fd_count(pid)
    return n


def baseline(d):
    # One finished request first, so that lazily opened descriptors exist.
    eq(curl(d.base + "/warm", cert="good")[0], 200, "warm-up")
    time.sleep(0.3)
    return fd_count(d.pid())


def test_client_aborts_mid_upload(env):
    b = env.backend()
    d = env.certmapd(b, {"backend": {"keepalive_connections": "0"}})
    before = baseline(d)
    s = tls_connect(d.port)
    s.sendall(request_bytes("POST", "/upload", [("Content-Length", str(10 * 1024 * 1024))]))
    s.sendall(os.urandom(1024 * 1024))
    time.sleep(0.5)
    check(fd_count(d.pid()) >= before + 2, "client and backend connections are open")
    s.close()
    after = settle_fds(d.pid(), before)
    eq(after, before, "descriptors after the client vanished mid-upload")
    check(b.wait_events(lambda e: e["how"] == "eof_in_body"),
          f"the backend saw its connection closed mid-body: {b.events()}")
    eq([r["target"] for r in b.requests()], ["/warm"], "the upload never completed upstream")
    log = d.wait_access(2)
    eq(log[-1]["status"], "499", "the abandoned request is logged")


def test_client_aborts_mid_long_poll(env):
    b = env.backend()
    d = env.certmapd(b, {"backend": {"keepalive_connections": "0"}})
    before = baseline(d)
    s = tls_connect(d.port)
    s.sendall(request_bytes("POST", "/Microsoft-Server-ActiveSync?Cmd=Ping&delay=3",
                            [("Content-Length", "4")], b"ping"))
    time.sleep(0.5)
    check(fd_count(d.pid()) >= before + 2, "client and backend connections are open")
    s.close()
    after = settle_fds(d.pid(), before, timeout=2.0)
    eq(after, before, "descriptors right after the client vanished mid-long-poll")
    ping = [r for r in b.requests() if "Cmd=Ping" in r["target"]]
    eq(len(ping), 1, "the long poll reached the backend")
    # The backend learns of it when it next reads from that connection.
    check(b.wait_events(lambda e: e["conn_id"] == ping[0]["conn_id"], timeout=6),
          f"the long poll's backend connection was closed: {b.events()}")


def stop_with_request_in_flight(env, sig):
    b = env.backend()
    d = env.certmapd(b)
    s = tls_connect(d.port)
    s.sendall(request_bytes("GET", "/inflight?delay=2"))
    time.sleep(0.5)
    idle = tls_connect(d.port)  # an idle connection goes at once
    time.sleep(0.2)
    t0 = time.time()
    d.proc.send_signal(sig)
    time.sleep(0.3)
    try:
        with socket.create_connection(("127.0.0.1", d.port), timeout=1):
            refused = False
    except OSError:
        refused = True
    check(refused, "certmapd still accepts connections after the signal")
    check(Reader(idle).closed(2), "an idle connection is closed at the signal")
    r = Reader(s).response()
    eq(r.status, 200, "the request in flight completed")
    eq(r.header("connection"), "close", "and it said it closes")
    rc = d.proc.wait(10)
    took = time.time() - t0
    eq(rc, 0, "exit status")
    check(took < 5, f"exited {took:.1f}s after the signal")
    d.stop()


def test_sigterm_drains(env):
    stop_with_request_in_flight(env, signal.SIGTERM)


def test_sigint_drains(env):
    stop_with_request_in_flight(env, signal.SIGINT)


def test_sigusr1_reopens_the_access_log(env):
    """logrotate renames the access log and sends SIGUSR1: the next lines go to
    a new file under the configured name, none is lost, and certmapd (which
    SIGUSR1's default action would kill) goes on serving."""
    b = env.backend()
    d = env.certmapd(b)
    eq(curl(d.base + "/before", cert="good")[0], 200, "before")
    eq(len(d.wait_access(1)), 1, "first line")
    rotated = d.access_log + ".1"
    os.rename(d.access_log, rotated)
    d.proc.send_signal(signal.SIGUSR1)
    deadline = time.time() + 5
    while not os.path.exists(d.access_log) and time.time() < deadline:
        time.sleep(0.02)
    check(os.path.exists(d.access_log), "a new access log under the configured name")
    eq(curl(d.base + "/after", cert="good")[0], 200, "after")
    lines = d.wait_access(1)
    eq([l["path"] for l in lines], ["/after"], "the new file has the line after the reopen")
    with open(rotated) as f:
        old = f.read()
    check("path=/before" in old and "path=/after" not in old, f"the rotated file: {old!r}")
    check("SIGUSR1: access log reopened" in d.stderr(), "logged")
    eq(d.proc.poll(), None, "still running")


def test_workers_zero_one_per_core(env):
    b = env.backend()
    d = env.certmapd(b, {"server": {"workers": "0"}})
    cores = os.sysconf("SC_NPROCESSORS_ONLN")
    m = re.search(r"\((\d+) workers\)", d.stderr())
    check(m is not None, "the start-up line names the number of workers")
    eq(int(m.group(1)), cores, "workers with workers = 0")
    threads = len(os.listdir(f"/proc/{d.pid()}/task"))
    check(threads >= cores + 1, f"{threads} threads for {cores} workers and the main thread")
    # Each worker answers: enough connections that SO_REUSEPORT spreads them.
    results = []

    def one():
        results.append(curl(d.base + "/w", cert="good")[0])
    ts = [threading.Thread(target=one) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    eq(results, [200] * 8, "answers")


def test_memory_per_idle_connection(env):
    """Prints KiB of RSS per idle mutual-TLS keep-alive connection (one request
    each); asserts only that every connection worked and all are freed."""
    n = int(os.environ.get("CERTMAPD_IDLE_CONNS", "2000"))
    b = env.backend()
    d = env.certmapd(b, {"server": {"workers": "1"}})
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 200), hard))
    eq(curl(d.base + "/warm", cert="good")[0], 200, "warm-up")
    socks = []
    for i in range(50):  # allocator warm-up: the first connections grow arenas
        s = tls_connect(d.port)
        s.sendall(request_bytes("GET", "/w"))
        Reader(s).response()
        socks.append(s)
    time.sleep(0.5)
    rss0 = rss_kib(d.pid())
    fds0 = fd_count(d.pid())
    for i in range(n):
        s = tls_connect(d.port)
        s.sendall(request_bytes("GET", "/i"))
        eq(Reader(s).response().status, 200, f"connection {i}")
        socks.append(s)
    time.sleep(1)
    rss1 = rss_kib(d.pid())
    eq(fd_count(d.pid()) - fds0, n, "one descriptor per idle connection (no upstream held)")
    print(f"  idle mTLS connections: {n}, RSS {rss0} -> {rss1} KiB, "
          f"{(rss1 - rss0) / n:.1f} KiB per connection", flush=True)
    for s in socks:
        s.close()
    time.sleep(0.5)
    eq(settle_fds(d.pid(), fds0 - 50), fds0 - 50, "descriptors after the clients left")


if __name__ == "__main__":
    run([v for k, v in sorted(globals().items()) if k.startswith("test_")])
