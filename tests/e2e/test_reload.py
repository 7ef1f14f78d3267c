#!/usr/bin/env python3
"""Reload on SIGHUP (issue 14): the file is read and checked again; a sound one
is used by new connections while the connections in flight (held EAS Pings)
finish on theirs; a broken one changes nothing. No listening socket closes."""
import os
import shutil
import signal
import socket
import subprocess
import time

from harness import (BIN, Reader, check, curl, eq, free_port, pki, request_bytes, run,
                     tls_connect, wait_port)

HELD = 500


def rewrite(d, old, new):
    """Replaces line <old> of certmapd's configuration by <new>."""
    with open(d.conf_path) as f:
        text = f.read()
    check(old in text, f"{old!r} in the configuration")
    with open(d.conf_path, "w") as f:
        f.write(text.replace(old, new))


def test_held_polls_survive_a_reload(env):
    """500 held long polls survive a reload that changes the backend, the
    trusted issuers, the CRL and the access log; requests after it see each
    change; the held ones are answered in full by the old backend."""
    old_b, new_b = env.backend(), env.backend()
    d = env.certmapd(old_b)
    pid = d.pid()
    # Before: otherissuer's issuer is not allowed; good is fine.
    eq(curl(f"{d.base}/before", cert="otherissuer")[0], 403, "otherissuer before the reload")
    eq(curl(f"{d.base}/before", cert="good")[0], 200, "good before the reload")

    socks = [tls_connect(d.port, timeout=120) for _ in range(HELD)]
    release = time.time() + 25
    for i, s in enumerate(socks):
        delay = max(0.0, release - time.time())
        s.sendall(request_bytes(
            "POST", f"/Microsoft-Server-ActiveSync?Cmd=Ping&n={i}&delay={delay:.2f}",
            [("Content-Length", "4")], b"ping"))
    deadline = time.time() + 20
    while time.time() < deadline and len(old_b.requests()) < HELD + 1:
        time.sleep(0.1)
    eq(len(old_b.requests()), HELD + 1, "held polls that reached the old backend")
    fds_before = len(os.listdir(f"/proc/{pid}/fd"))

    issuers = os.path.join(env.dir, "issuers-both.pem")
    with open(issuers, "w") as f:
        for name in ("issuing-ca.crt", "other-issuing-ca.crt"):
            f.write(open(pki(name)).read())
    new_log = os.path.join(env.dir, "access-after.log")
    rewrite(d, f"url = {old_b.url}", f"url = {new_b.url}")
    rewrite(d, f"trusted_issuers = {pki('trusted-issuers.pem')}", f"trusted_issuers = {issuers}")
    # issuing-ca's CRL has expired in this file: its users are refused from now on.
    rewrite(d, f"crl_file = {pki('crl.pem')}", f"crl_file = {pki('crl-expired.pem')}")
    rewrite(d, f"access_log = {d.access_log}", f"access_log = {new_log}")
    t0 = time.time()
    d.reload(r"reload: .* loaded as generation 2")
    took = time.time() - t0
    check(time.time() < release - 2, "the reload was over before the held polls were answered")

    # New connections see every change.
    st, body, _ = curl(f"{d.base}/after", cert="otherissuer")
    eq(st, 200, "otherissuer after the reload (its issuer is trusted now)")
    check(any(r["target"] == "/after" for r in new_b.requests()), "the new backend got /after")
    check(not any(r["target"] == "/after" for r in old_b.requests()), "the old backend did not")
    st, body, _ = curl(f"{d.base}/after-good", cert="good")
    eq(st, 403, "good after the reload (its CRL in the new file has expired)")
    check(os.path.exists(new_log) and "/after" in open(new_log).read(),
          "the new access log has the requests made after the reload")

    # Every held poll is answered in full, by the old backend, and told to
    # reconnect (its generation is retired).
    for i, s in enumerate(socks):
        rd = Reader(s)
        r = rd.response()
        eq(r.status, 200, f"held poll {i}")
        eq(r.json()["body_len"], 4, f"held poll {i}'s body")
        check("n=%d&" % i in r.json()["target"], f"held poll {i} got its own answer")
        eq((r.header("Connection") or "").lower(), "close", f"held poll {i}'s Connection")
        check(rd.closed(), f"held poll {i}'s connection closed after its answer")
        s.close()
    held_new = [r for r in new_b.requests() if "Cmd=Ping" in r["target"]]
    eq(len(held_new), 0, "held polls replayed on the new backend")
    old_lines = [r for r in d.access() if "Cmd=Ping" in r.get("path", "") and r["status"] == "200"]
    eq(len(old_lines), HELD, "held polls logged 200 in the old access log")
    # The retired generation goes once its last connection has ended.
    deadline = time.time() + 10
    while time.time() < deadline and "generation 1: its last connection has ended" not in d.stderr():
        time.sleep(0.1)
    check("generation 1: its last connection has ended" in d.stderr(), "generation 1 freed")
    fds_after = len(os.listdir(f"/proc/{pid}/fd"))
    check(fds_after < fds_before - HELD, f"descriptors: {fds_before} held, {fds_after} after")
    print(f"  reload with {HELD} held polls: {took:.2f} s; descriptors {fds_before} -> {fds_after}")


def test_broken_file_changes_nothing(env):
    """A file that does not load leaves everything serving, with FILE:LINE in
    the log; the connections open at that moment are not touched."""
    b = env.backend()
    d = env.certmapd(b)
    s = tls_connect(d.port)
    rd = Reader(s)
    s.sendall(request_bytes("GET", "/one"))
    eq(rd.response().status, 200, "before")
    good = open(d.conf_path).read()

    with open(d.conf_path, "a") as f:
        f.write("[server]\nheader_timeout = soon\n")
    n_lines = good.count("\n") + 2
    text = d.reload(r"still serving generation 1")
    check(f"{d.conf_path}:{n_lines}:" in text, f"FILE:LINE in {text!r}")
    s.sendall(request_bytes("GET", "/two"))
    r = rd.response()
    eq(r.status, 200, "the open connection after a failed reload")
    check((r.header("Connection") or "").lower() != "close", "it is still kept alive")
    eq(curl(f"{d.base}/three", cert="good")[0], 200, "a new connection after a failed reload")

    # What a reload cannot change is refused by name, and nothing changes.
    with open(d.conf_path, "w") as f:
        f.write(good.replace("workers = 2", "workers = 3"))
    text = d.reload(r"still serving generation 1")
    check("[server] workers: changed, and a reload cannot change it" in text, text)
    # Nor [metrics] listen: its socket is made once (it was taken silently, and not applied).
    with open(d.conf_path, "w") as f:
        f.write(good + f"[metrics]\nlisten = 127.0.0.1:{free_port()}\n")
    text = d.reload(r"still serving generation 1")
    check("[metrics] listen: changed, and a reload cannot change it" in text, text)
    # A missing key file: refused as start-up refuses it.
    key = os.path.join(env.dir, "moved.key")
    shutil.copy(pki("server.key"), key)
    with open(d.conf_path, "w") as f:
        f.write(good.replace(f"private_key = {pki('server.key')}", f"private_key = {key}"))
    os.unlink(key)
    text = d.reload(r"still serving generation 1")
    check("private_key" in text, text)

    # Mended: the next reload takes it; the open idle connection is closed
    # cleanly (it was idle after a request), a new one works.
    with open(d.conf_path, "w") as f:
        f.write(good)
    d.reload(r"loaded as generation 2")
    check(rd.closed(), "the idle keep-alive connection of generation 1 closed")
    eq(curl(f"{d.base}/four", cert="good")[0], 200, "after the good reload")
    check(d.proc.poll() is None, "certmapd still runs")


def test_reload_during_handshakes(env):
    """Connections still in their handshake, or opened but without a request
    yet, when a reload lands get their request served on their generation."""
    b = env.backend()
    d = env.certmapd(b)
    fresh = [tls_connect(d.port) for _ in range(20)]
    d.reload(r"loaded as generation 2")
    for i, s in enumerate(fresh):
        rd = Reader(s)
        s.sendall(request_bytes("GET", f"/fresh{i}"))
        r = rd.response()
        eq(r.status, 200, f"fresh connection {i}")
        eq((r.header("Connection") or "").lower(), "close", f"fresh connection {i}'s Connection")
        s.close()
    # Reload again and again under load: nothing is refused.
    for k in range(3, 6):
        d.reload(rf"loaded as generation {k}")
        eq(curl(f"{d.base}/g{k}", cert="good")[0], 200, f"after reload {k}")


def test_signals_during_start_up_wait(env):
    """A SIGHUP or SIGUSR1 that comes while start-up still asks the directory
    (here: one that accepts connections and never answers, 2 s) waits for the
    main loop instead of killing certmapd (their default action)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # never accepted: connects, then no answer
    env.add_cleanup(silent.close)
    secret = os.path.join(env.dir, "secret")
    with open(secret, "w") as f:
        f.write("any-password")
    b = env.backend()
    d = env.certmapd(b, {
        "mapping": {"source": "ldap"},
        "ldap": {"uri": f"ldaps://127.0.0.1:{silent.getsockname()[1]}",
                 "base_dn": "DC=corp,DC=example,DC=test", "bind_dn": "svc@corp.example.test",
                 "bind_password_file": secret, "ca_file": pki("root-ca.crt"), "timeout": "2s"},
        "location /public": {"client_certificate": "ignore", "mapping": "off"},
    }, start=False)
    d.err = open(d.stderr_path, "w")
    d.proc = subprocess.Popen([BIN, "-c", d.conf_path], stderr=d.err, stdout=subprocess.DEVNULL)
    d.wait_log(r"info: ", 0)  # main() runs: its signals are blocked from here
    d.proc.send_signal(signal.SIGUSR1)
    d.proc.send_signal(signal.SIGHUP)
    wait_port(d.port, d.proc, timeout=30)
    d.wait_log(r"SIGHUP: reloading", 0, timeout=30)
    check(d.proc.poll() is None, "certmapd survived signals sent during start-up")
    eq(curl(f"{d.base}/public/x")[0], 200, "serving after it")


if __name__ == "__main__":
    run([test_held_polls_survive_a_reload, test_broken_file_changes_nothing,
         test_reload_during_handshakes, test_signals_during_start_up_wait])
