"""systemd's readiness protocol (Type=notify), with a real datagram socket in
the place of systemd's: READY=1 only once the port accepts, sent by the main
process (NotifyAccess=main), STOPPING=1 when the drain starts; nothing from
`certmapd -t`; a notification socket that is not there changes nothing else."""
import os
import signal
import socket
import subprocess
import time

from harness import BIN, check, curl, eq, run


class NotifySocket:
    """An AF_UNIX datagram socket like systemd's: each datagram with the
    sender's credentials (SO_PASSCRED), as systemd checks them."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.env = address if isinstance(address, str) else "@" + address[1:].decode()
        self.got = []  # (pid, {key: value})

    def recv(self, timeout):
        """One datagram as (sender pid, assignments), or None after <timeout>."""
        self.sock.settimeout(timeout)
        try:
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            return None
        pid = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = int.from_bytes(payload[0:4], "little")
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
        self.got.append((pid, fields))
        return pid, fields

    def wait_for(self, key, timeout=15.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = self.recv(max(0.05, deadline - time.time()))
            if r is not None and key in r[1]:
                return r
        raise AssertionError(f"no {key} within {timeout}s; got {self.got}")

    def close(self):
        self.sock.close()


def spawn(d, notify_env):
    """Starts certmapd <d> with NOTIFY_SOCKET=<notify_env>, without waiting for its port."""
    env = dict(os.environ, NOTIFY_SOCKET=notify_env)
    d.err = open(d.stderr_path, "w")
    d.proc = subprocess.Popen([BIN, "-c", d.conf_path], stderr=d.err, stdout=subprocess.DEVNULL,
                              env=env)


def port_accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_ready_after_listening_and_stopping_on_drain(env):
    ns = NotifySocket(os.path.join(env.dir, "notify.sock"))
    env.add_cleanup(ns.close)
    b = env.backend()
    d = env.certmapd(b, start=False)
    spawn(d, ns.env)
    pid, fields = ns.wait_for("READY")
    # The very moment systemd would start ordering dependants: the port must accept.
    check(port_accepts(d.port), "READY=1 was sent before the port accepted connections")
    eq(fields["READY"], "1", "READY value")
    eq(pid, d.proc.pid, "READY=1 sender (NotifyAccess=main accepts the main PID only)")
    statuses = [f["STATUS"] for _, f in ns.got if "STATUS" in f]
    check(any(f"127.0.0.1:{d.port}" in s for s in statuses),
          f"no STATUS naming the listener before READY: {ns.got}")
    eq(curl(d.base + "/")[0], 403, "a request without a certificate once ready")
    d.proc.send_signal(signal.SIGTERM)
    pid, fields = ns.wait_for("STOPPING", timeout=10)
    eq(pid, d.proc.pid, "STOPPING=1 sender")
    eq(d.stop(), 0, "exit status after SIGTERM")
    check(not any("READY" in f for _, f in ns.got[ns.got.index((pid, fields)):]),
          "READY=1 sent again after STOPPING=1")


def test_abstract_notify_socket(env):
    name = f"\0certmapd-notify-{os.getpid()}-{time.time_ns()}".encode()
    ns = NotifySocket(name)
    env.add_cleanup(ns.close)
    d = env.certmapd(env.backend(), start=False)
    spawn(d, ns.env)
    ns.wait_for("READY")
    check(port_accepts(d.port), "READY=1 before the port accepted (abstract socket)")


def test_check_mode_sends_nothing(env):
    """ExecStartPre=certmapd -t runs with NOTIFY_SOCKET set too: it must stay silent,
    or systemd would log a notification from a process that is not the main one."""
    ns = NotifySocket(os.path.join(env.dir, "notify.sock"))
    env.add_cleanup(ns.close)
    d = env.certmapd(env.backend(), start=False)
    p = subprocess.run([BIN, "-t", "-c", d.conf_path], capture_output=True, text=True,
                       env=dict(os.environ, NOTIFY_SOCKET=ns.env), timeout=30)
    eq(p.returncode, 0, f"certmapd -t ({p.stderr.strip()})")
    eq(ns.recv(0.5), None, "a notification from certmapd -t")


def test_missing_notify_socket_changes_nothing(env):
    b = env.backend()
    d = env.certmapd(b, start=False)
    spawn(d, os.path.join(env.dir, "no-such-dir", "notify.sock"))
    deadline = time.time() + 15
    while not port_accepts(d.port):
        check(d.proc.poll() is None, f"certmapd exited ({d.proc.returncode}): {d.stderr()}")
        check(time.time() < deadline, "certmapd never listened")
        time.sleep(0.05)
    eq(curl(d.base + "/", cert="good")[0], 200, "a request with a certificate")
    eq(curl(d.base + "/")[0], 403, "a request without one")
    eq(d.stop(), 0, "exit status")
    check("sd_notify" in d.stderr(), "the failed notification is not logged")


def test_reloading_then_ready(env):
    """Around a reload: RELOADING=1 with MONOTONIC_USEC (systemd's Type=notify
    reload protocol), then READY=1 once the new generation serves, or the old
    one still does after a refused file."""
    ns = NotifySocket(os.path.join(env.dir, "notify.sock"))
    env.add_cleanup(ns.close)
    d = env.certmapd(env.backend(), start=False)
    spawn(d, ns.env)
    ns.wait_for("READY")
    for broken in (False, True):
        if broken:
            with open(d.conf_path, "a") as f:
                f.write("[server]\nkeepalive_timeout = never\n")
        d.proc.send_signal(signal.SIGHUP)
        pid, fields = ns.wait_for("RELOADING")
        eq(pid, d.proc.pid, "RELOADING=1 sender")
        check(int(fields.get("MONOTONIC_USEC", "0")) > 0, f"MONOTONIC_USEC with it: {fields}")
        pid, fields = ns.wait_for("READY")
        eq(pid, d.proc.pid, "READY=1 after the reload")
        want = "still serving generation 2" if broken else "loaded as generation 2"
        check(want in d.stderr(), f"{want!r} in the log")


if __name__ == "__main__":
    run([test_ready_after_listening_and_stopping_on_drain, test_reloading_then_ready,
         test_abstract_notify_socket,
         test_check_mode_sends_nothing, test_missing_notify_socket_changes_nothing])
