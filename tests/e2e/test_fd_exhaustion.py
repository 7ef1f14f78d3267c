#!/usr/bin/env python3
"""Descriptor exhaustion: certmapd under a low open-files limit (prlimit, 64)
with more client connections than fit. It must not spin on accept (few
"accept" log lines, little CPU while connections wait in the backlog), and it
must serve again by itself once the extra connections are gone. The
descriptors run out only when [server] max_connections is set above what the
limit holds (here on purpose); with its default, derived from the limit,
certmapd stops accepting before (test_default_bound_keeps_descriptors). With
[server] reclaim_idle, connections idle between requests are closed, the
longest idle first, to make room instead (at the bound and out of descriptors)."""
import os
import re
import socket
import time

from harness import Reader, check, curl, eq, pki, request_bytes, run, tls_connect

LIMIT = 64


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime: fields 14 and 15 of stat(5), 12 and 13 after "(comm)"
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def accept_lines(d):
    return sum(1 for line in d.stderr().splitlines() if "accept" in line)


def limited(env, sections):
    """certmapd with <sections> and a backend, started under an open-files
    limit of LIMIT."""
    d = env.certmapd(env.backend(), sections, start=False)
    d.wrapper = ["prlimit", f"--nofile={LIMIT}:{LIMIT}", "--"]
    return d.start()


def status_once_closed(d, socks):
    """Closes <socks>, then asks again for up to 10 s: the last request's status."""
    for s in socks:
        s.close()
    deadline = time.time() + 10
    status = None
    while time.time() < deadline:
        status, _, _ = curl(f"{d.base}/after", cert="good", timeout=5)
        if status == 200:
            break
        time.sleep(0.2)
    return status


def test_exhaustion_is_bounded_and_recovers(env):
    d = limited(env, {"server": {"workers": "1", "log_level": "info",
                                 "max_connections": "1000"}})
    check("max_connections = 1000 needs up to" in d.stderr(), "the start-up warning")
    status, _, _ = curl(f"{d.base}/before", cert="good")
    eq(status, 200, "a request before the exhaustion")

    # Plain TCP connections are enough to take descriptors: certmapd accepts
    # them and waits for a TLS handshake that never comes.
    socks = []
    for _ in range(LIMIT + 40):
        s = socket.create_connection(("127.0.0.1", d.port))
        socks.append(s)
    time.sleep(1.0)  # certmapd fills its table; the rest wait in the backlog
    lines0, cpu0 = accept_lines(d), cpu_seconds(d.pid())
    time.sleep(3.0)
    lines, cpu = accept_lines(d) - lines0, cpu_seconds(d.pid()) - cpu0
    print(f"  over 3 s at the limit: {lines} accept log lines, {cpu:.2f} s of CPU")
    check(lines < 50, f"{lines} accept log lines in 3 s at the descriptor limit")
    check(cpu < 0.5, f"{cpu:.2f} s of CPU in 3 s at the descriptor limit")
    check("descriptors open" in d.stderr(), "the exhaustion is logged with the count")

    eq(status_once_closed(d, socks), 200, "a request once the extra connections are closed")


def test_default_bound_keeps_descriptors(env):
    """max_connections = 0: the bound is what the limit holds (2 descriptors
    per client beside the fixed ones), so accept never fails for want of one."""
    d = limited(env, {"server": {"workers": "1", "log_level": "info"},
                      "backend": {"keepalive_connections": "4"}})
    m = re.search(r"max_connections: (\d+), from the open-files limit", d.stderr())
    check(m is not None, "the derived bound is logged")
    bound = int(m.group(1))
    check(2 <= bound < LIMIT // 2, f"derived bound {bound} for {LIMIT} open files")
    socks = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(LIMIT + 40)]
    time.sleep(1.5)
    err = d.stderr()
    check("descriptors open" not in err, "no descriptor exhaustion under the derived bound")
    check(f"max_connections ({bound}) reached" in err, "the bound is reached and logged")
    eq(status_once_closed(d, socks), 200, "a request once the extra connections are closed")


def idle_connection(d):
    """A keep-alive connection that has had one answer: idle between requests."""
    s = tls_connect(d.port, timeout=5)
    r = Reader(s)
    s.sendall(request_bytes("GET", "/idle"))
    eq(r.response().status, 200, "the request before idling")
    return s, r


def test_reclaim_idle_at_the_bound(env):
    """max_connections = 6, reclaim_idle = 2: the connection that takes the last
    slot has the two longest idle closed, so the next client is served at once
    rather than waiting in the backlog; the others stay usable."""
    d = env.certmapd(env.backend(), {"server": {"workers": "1", "max_connections": "6",
                                                "reclaim_idle": "2"}})
    conns = [idle_connection(d) for _ in range(6)]
    t0 = time.time()
    status, _, _ = curl(f"{d.base}/new", cert="good", timeout=5)
    eq(status, 200, "a new client at the bound")
    check(time.time() - t0 < 2.0, f"served in {time.time() - t0:.2f} s, not after a wait")
    eq([r.closed(timeout=2) for _, r in conns[:2]], [True, True], "the two longest idle, closed")
    for i, (s, r) in enumerate(conns[2:]):
        s.sendall(request_bytes("GET", f"/again{i}"))
        eq(r.response().status, 200, f"idle connection {i + 2}, still usable")
    check("max_connections reached: closed 2 idle keep-alive connection(s) to make room"
          in d.stderr(), "logged")


def test_reclaim_idle_out_of_descriptors(env):
    """Descriptors run out (max_connections above what the limit holds) with
    reclaim_idle = 8: each time accept finds no descriptor, idle keep-alive
    connections are closed and accepting goes on, so more clients than fit are
    each served in turn, with no accept spin and no pause."""
    d = limited(env, {"server": {"workers": "1", "log_level": "info", "max_connections": "1000",
                                 "reclaim_idle": "8"},
                      "backend": {"keepalive_connections": "0"}})
    conns = []
    t0 = time.time()
    for i in range(LIMIT + 20):
        conns.append(idle_connection(d))  # fails (a timeout) when a client is left waiting
    took = time.time() - t0
    print(f"  {len(conns)} clients under an open-files limit of {LIMIT}: {took:.2f} s")
    check(took < 15, f"{len(conns)} clients took {took:.1f} s")
    closed = sum(1 for _, r in conns[:LIMIT] if r.closed(timeout=0.2))
    check(closed >= 8, f"{closed} of the first {LIMIT} connections closed to make room")
    err = d.stderr()
    check("out of descriptors: closed" in err, "the reclaim is logged")
    check("descriptors open" not in err, "no pause: the reclaimed descriptors were enough")
    eq(curl(f"{d.base}/after", cert="good", timeout=5)[0], 200, "a request afterwards")


if __name__ == "__main__":
    run([test_exhaustion_is_bounded_and_recovers, test_default_bound_keeps_descriptors,
         test_reclaim_idle_at_the_bound, test_reclaim_idle_out_of_descriptors])
