#!/usr/bin/env python3
"""[server] max_connections: at the bound certmapd stops accepting; the
clients past it wait in the listen backlog (their TLS handshake does not
progress), are served as soon as connections end, and the episode is logged
once. The bound holds across workers. A bound the open-files limit cannot hold
is warned about at start-up."""
import select
import socket
import ssl
import subprocess
import time

from harness import BIN, check, curl, eq, pki, request_bytes, run, Reader

MAX = 4


def client_ctx():
    ctx = ssl.create_default_context(cafile=pki("root-ca.crt"))
    ctx.load_cert_chain(pki("good.chain.pem"), pki("good.key"))
    return ctx


class Pending:
    """A TLS client driven by hand: connect, send the ClientHello, and see
    whether the server ever answers."""

    def __init__(self, ctx, port):
        self.raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.raw.setblocking(False)
        self.tls = ctx.wrap_socket(self.raw, server_hostname="localhost",
                                   do_handshake_on_connect=False)
        self.done = False
        self.closed = False
        self.step()

    def step(self):
        """One handshake step: True once done."""
        if self.done or self.closed:
            return self.done
        try:
            self.tls.do_handshake()
            self.done = True
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except (ssl.SSLError, OSError):
            self.closed = True  # refused: a close without TLS
        return self.done

    def fileno(self):
        return self.tls.fileno()

    def request(self, path):
        self.tls.setblocking(True)
        self.tls.settimeout(10)
        self.tls.sendall(request_bytes("GET", path, [("Host", "localhost")]))
        return Reader(self.tls).response()

    def close(self):
        try:
            self.tls.close()
        except OSError:
            pass


def drive(clients, seconds):
    """Runs the handshakes of <clients> for <seconds>; returns those done."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        live = [c for c in clients if not c.done and not c.closed]
        if not live:
            break
        r, _, _ = select.select(live, [], [], 0.1)
        for c in r:
            c.step()
    return [c for c in clients if c.done]


def reached_lines(d):
    return d.stderr().count("max_connections (%d) reached" % MAX)


def test_bound_waits_then_serves(env):
    b = env.backend()
    d = env.certmapd(b, {"server": {"workers": "1", "log_level": "info",
                                    "max_connections": str(MAX)}})
    check(f"max_connections: {MAX} (up to" in d.stderr(), "the bound is logged at start")
    ctx = client_ctx()
    first = [Pending(ctx, d.port) for _ in range(MAX)]
    eq(len(drive(first, 10)), MAX, "handshakes of the first max_connections clients")
    for i, c in enumerate(first):
        eq(c.request(f"/first{i}").status, 200, f"a request of client {i} within the bound")

    # (The harness's probe of the port may have held a slot a moment: the
    # bound may have been reached, left and reached again while they came in.)
    lines = reached_lines(d)
    check(lines >= 1, "the bound being reached is logged")
    extra = [Pending(ctx, d.port) for _ in range(3)]
    done = drive(extra, 2.0)
    eq(len(done), 0, "handshakes past the bound (they must wait in the backlog)")
    check(not any(c.closed for c in extra), "the clients past the bound wait, not refused")
    # More clients knocking during the same episode log nothing more.
    more = [Pending(ctx, d.port) for _ in range(3)]
    drive(more, 1.0)
    eq(reached_lines(d), lines, "log lines while the bound holds and clients keep coming")
    # The first ones still work.
    eq(first[0].request("/still").status, 200, "a request on a connection within the bound")

    for c in first[:3]:
        c.close()
    done = drive(extra, 10)
    eq(len(done), 3, "waiting clients served once three connections ended")
    for i, c in enumerate(extra):
        eq(c.request(f"/extra{i}").status, 200, f"a request of waiting client {i}")
    eq(len(drive(more, 1.0)), 0, "the later clients still wait: the bound is full again")

    for c in [first[3]] + extra:
        c.close()
    eq(len(drive(more, 10)), 3, "the last waiting clients, once everything else ended")
    for c in more:
        eq(c.request("/more").status, 200, "a request of a late client")
        c.close()
    time.sleep(0.3)
    check("below the bound again" in d.stderr(), "the end of the episode is logged")
    eq(curl(f"{d.base}/after", cert="good")[0], 200, "a request once everything is closed")
    seen = {r["target"] for r in b.requests()}
    check({"/first0", "/extra0", "/more", "/after"} <= seen, f"backend saw {sorted(seen)}")


def test_bound_is_global_across_workers(env):
    b = env.backend()
    d = env.certmapd(b, {"server": {"workers": "2", "log_level": "info",
                                    "max_connections": str(MAX)}})
    ctx = client_ctx()
    clients = [Pending(ctx, d.port) for _ in range(3 * MAX)]
    served = drive(clients, 3.0)
    refused = [c for c in clients if c.closed]
    print(f"  {len(served)} served, {len(refused)} closed at the bound, "
          f"{len(clients) - len(served) - len(refused)} waiting")
    check(len(served) <= MAX, f"{len(served)} handshakes done with max_connections = {MAX}")
    check(len(served) >= 1, "nothing served at all")
    for c in served:
        eq(c.request("/in").status, 200, "a request within the bound")
        c.close()
    waiting = [c for c in clients if not c.done and not c.closed]
    # Served in turns, never more than MAX at a time.
    deadline = time.time() + 20
    while waiting and time.time() < deadline:
        now = drive(waiting, 1.0)
        check(len(now) <= MAX, f"{len(now)} handshakes at once with max_connections = {MAX}")
        for c in now:
            eq(c.request("/later").status, 200, "a request of a waiting client")
            c.close()
        waiting = [c for c in waiting if not c.done and not c.closed]
    eq(len(waiting), 0, "clients still waiting after every other one ended")
    eq(curl(f"{d.base}/after", cert="good")[0], 200, "a request afterwards")


def test_warns_when_open_files_cannot_hold_it(env):
    b = env.backend()
    d = env.certmapd(b, {"server": {"workers": "1", "log_level": "info",
                                    "max_connections": "5000"}}, start=False)
    d.wrapper = ["prlimit", "--nofile=256:256", "--"]
    d.start()
    check("max_connections = 5000 needs up to" in d.stderr(), "the start-up warning")
    eq(curl(f"{d.base}/x", cert="good")[0], 200, "it serves anyway")


def test_bad_values_refused_by_check(env):
    d = env.certmapd(env.backend(), {"server": {"max_connections": "-1"}}, start=False)
    p = subprocess.run([BIN, "-t", "-c", d.conf_path], capture_output=True, text=True)
    eq(p.returncode, 1, "certmapd -t with max_connections = -1")
    check("max_connections" in p.stderr and ".conf:" in p.stderr, p.stderr)


def test_reload_raises_the_bound(env):
    """A reload that raises max_connections lets the waiting clients in; the
    connections of the old generation still count against it."""
    b = env.backend()
    d = env.certmapd(b, {"server": {"workers": "1", "log_level": "info",
                                    "max_connections": str(MAX)}})
    ctx = client_ctx()
    first = [Pending(ctx, d.port) for _ in range(MAX)]
    eq(len(drive(first, 10)), MAX, "handshakes within the bound")
    waiting = [Pending(ctx, d.port) for _ in range(2)]
    eq(len(drive(waiting, 1.5)), 0, "handshakes past the bound")
    with open(d.conf_path) as f:
        text = f.read()
    with open(d.conf_path, "w") as f:
        f.write(text.replace(f"max_connections = {MAX}", f"max_connections = {MAX + 2}"))
    d.reload()
    check(f"max_connections: now {MAX + 2} client connections" in d.stderr(), "the new bound logged")
    eq(len(drive(waiting, 10)), 2, "the waiting clients, once the bound is raised")
    for c in waiting:
        eq(c.request("/raised").status, 200, "a request of a client let in by the reload")
    late = [Pending(ctx, d.port)]
    eq(len(drive(late, 1.5)), 0, "one more: the old generation's connections still count")
    for c in first + waiting + late:
        c.close()


if __name__ == "__main__":
    run([test_bound_waits_then_serves, test_reload_raises_the_bound,
         test_bound_is_global_across_workers,
         test_warns_when_open_files_cannot_hold_it, test_bad_values_refused_by_check])
