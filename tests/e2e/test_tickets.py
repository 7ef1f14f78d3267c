#!/usr/bin/env python3
"""Session-ticket keys shared by a fleet ([tls] ticket_keys, issue 16): a
ticket one instance issued resumes on another; after a rotation an old ticket
resumes until its key is dropped; a bad file is a clear error, and leaves the
keys in use serving. Real clients: openssl s_client with -sess_out/-sess_in."""
import base64
import os
import re
import subprocess
import time

from harness import BIN, check, eq, pki, run

REQ = b"GET /t HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def new_key():
    return base64.b64encode(os.urandom(80)).decode()


def write_keys(path, keys, comment=True):
    """Replaces the file atomically (write, then rename), as a rotation should."""
    tmp = path + ".new"
    with open(tmp, "w") as f:
        if comment:
            f.write("# newest first\n")
        for k in keys:
            f.write(k + "\n")
    os.rename(tmp, path)


def s_client(port, proto, sess_in=None, sess_out=None):
    """One TLS connection with the good certificate and one request; returns
    (resumed, http status)."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
           "-CAfile", pki("root-ca.crt"), "-cert", pki("good.crt"), "-key", pki("good.key"),
           "-cert_chain", pki("issuing-ca.crt"), "-ign_eof", proto]
    if sess_in:
        cmd += ["-sess_in", sess_in]
    if sess_out:
        cmd += ["-sess_out", sess_out]
    p = subprocess.run(cmd, input=REQ, capture_output=True, timeout=30)
    out = p.stdout.decode(errors="replace")
    m = re.search(r"^(New|Reused), TLSv", out, re.M)
    check(m is not None, f"s_client said neither New nor Reused:\n{out[-2000:]}\n{p.stderr[-500:]}")
    st = re.search(r"HTTP/1.1 (\d{3}) ", out)
    return m.group(1) == "Reused", int(st.group(1)) if st else 0


def fleet(env, keyfile):
    b = env.backend()
    sec = {"tls": {"ticket_keys": keyfile}}
    return env.certmapd(b, sec), env.certmapd(b, sec)


def test_ticket_resumes_on_another_instance(env):
    keys = os.path.join(env.dir, "tickets.keys")
    write_keys(keys, [new_key(), new_key()])
    a, b = fleet(env, keys)
    for proto in ("-tls1_3", "-tls1_2"):
        sess = os.path.join(env.dir, f"sess{proto}")
        eq(s_client(a.port, proto, sess_out=sess), (False, 200), f"{proto}: first, on A")
        eq(s_client(b.port, proto, sess_in=sess), (True, 200), f"{proto}: resumed on B")
    # An instance with other keys cannot read A's tickets: a full handshake.
    other = os.path.join(env.dir, "other.keys")
    write_keys(other, [new_key()])
    c = env.certmapd(env.backend(), {"tls": {"ticket_keys": other}})
    eq(s_client(c.port, "-tls1_3", sess_in=os.path.join(env.dir, "sess-tls1_3")), (False, 200),
       "another fleet's instance")


def test_rotation(env):
    keys = os.path.join(env.dir, "tickets.keys")
    k1, k2 = new_key(), new_key()
    write_keys(keys, [k1])
    a, b = fleet(env, keys)
    old = os.path.join(env.dir, "old.sess")
    eq(s_client(a.port, "-tls1_3", sess_out=old), (False, 200), "a ticket under k1")
    # A new key first: it encrypts from now on, k1 still decrypts.
    since = len(a.stderr()), len(b.stderr())
    write_keys(keys, [k2, k1])
    for d, n in zip((a, b), since):
        d.wait_log(r"session-ticket keys re-read from .*: 2 keys", n)
    eq(s_client(b.port, "-tls1_3", sess_in=old), (True, 200), "k1's ticket after the rotation")
    new = os.path.join(env.dir, "new.sess")
    eq(s_client(a.port, "-tls1_3", sess_out=new), (False, 200), "a ticket under k2")
    # k1 dropped: its tickets give a full handshake; k2's still resume.
    since = len(a.stderr()), len(b.stderr())
    write_keys(keys, [k2])
    for d, n in zip((a, b), since):
        d.wait_log(r"session-ticket keys re-read from .*: 1 key,", n)
    eq(s_client(b.port, "-tls1_3", sess_in=old), (False, 200), "k1's ticket once k1 is dropped")
    eq(s_client(b.port, "-tls1_3", sess_in=new), (True, 200), "k2's ticket")


def test_bad_file(env):
    keys = os.path.join(env.dir, "tickets.keys")
    k1 = new_key()
    write_keys(keys, [k1])
    a, _ = fleet(env, keys)
    sess = os.path.join(env.dir, "s")
    eq(s_client(a.port, "-tls1_3", sess_out=sess), (False, 200), "a ticket")
    # Truncated by a copy gone wrong: logged once, the keys in use stay.
    since = len(a.stderr())
    with open(keys, "w") as f:
        f.write("# newest first\n" + k1[:60] + "\n")
    text = a.wait_log(r"session-ticket keys: .*tickets.keys:2: not a ticket key", since)
    time.sleep(2.5)
    eq(a.stderr()[since:].count("not a ticket key"), 1, "the bad file is reported once")
    eq(s_client(a.port, "-tls1_3", sess_in=sess), (True, 200), "resumption with the keys in use")
    # A reload with it is refused, with the file and line; the old keys serve.
    text = a.reload(r"still serving generation 1")
    check(re.search(r"\[tls\] ticket_keys: .*tickets.keys:2: not a ticket key", text), text)
    eq(s_client(a.port, "-tls1_3", sess_in=sess), (True, 200), "after the refused reload")
    # certmapd -t says the same.
    p = subprocess.run([BIN, "-t", "-c", a.conf_path], capture_output=True, text=True)
    eq(p.returncode, 1, "-t on the bad key file")
    check("tickets.keys:2: not a ticket key" in p.stderr, p.stderr)
    # Other hostile shapes, each refused by -t with its reason.
    for content, why in (("", "no key in it"), ("# only a comment\n", "no key in it"),
                         (k1 + "\n" + k1 + "\n", ":2: the same key name as key 1"),
                         (k1.replace("A", "*", 1) + "\n" if "A" in k1 else "*" * 107 + "=\n",
                          ":1: not a ticket key"),
                         ((new_key() + "\n") * 1 + "".join(new_key() + "\n" for _ in range(16)),
                          ":17: more than 16 keys")):
        with open(keys, "w") as f:
            f.write(content)
        p = subprocess.run([BIN, "-t", "-c", a.conf_path], capture_output=True, text=True)
        check(p.returncode == 1 and why in p.stderr, f"{content[:30]!r}: {p.stderr}")


def test_random_keys_survive_a_reload(env):
    """Without a file the keys are the process's own: a reload keeps them."""
    d = env.certmapd(env.backend())
    sess = os.path.join(env.dir, "s")
    eq(s_client(d.port, "-tls1_3", sess_out=sess), (False, 200), "a ticket")
    d.reload(r"loaded as generation 2")
    eq(s_client(d.port, "-tls1_3", sess_in=sess), (True, 200), "resumed after a reload")


if __name__ == "__main__":
    run([test_ticket_resumes_on_another_instance, test_rotation, test_bad_file,
         test_random_keys_survive_a_reload])
