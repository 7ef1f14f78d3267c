#!/usr/bin/env python3
"""Descriptor exhaustion: certmapd under a low open-files limit (prlimit, 64)
with more client connections than fit. It must not spin on accept (few
"accept" log lines, little CPU while connections wait in the backlog), and it
must serve again by itself once the extra connections are gone. The
descriptors run out only when [server] max_connections is set above what the
limit holds (here on purpose); with its default, derived from the limit,
certmapd stops accepting before (test_default_bound_keeps_descriptors)."""
import os
import re
import socket
import time

from harness import check, curl, eq, pki, run

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


if __name__ == "__main__":
    run([test_exhaustion_is_bounded_and_recovers, test_default_bound_keeps_descriptors])
