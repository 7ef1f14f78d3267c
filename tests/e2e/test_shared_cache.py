#!/usr/bin/env python3
"""The identity cache shared through a real redis-server, between two
certmapd instances with `[mapping] source = ldif`: directory searches are
counted from each instance's debug log ("directory search"). Cases: a
mapping and a refusal made by A used by B without a search; Redis stopped,
hung and restarted mid-run; an entry of another configuration not used; a
garbage value, and a signed value moved to another certificate's key, not
believed. (test_ad_shared_cache.py does the first case against Samba AD.)"""
import hashlib
import os
import re
import signal
import subprocess
import time

import leaves
from harness import BIN, check, curl, eq
from redis_server import Redis
from test_mapping_ldif import account

PATH = "/Microsoft-Server-ActiveSync?Cmd=Ping"
PASSWORD = "redis-pass-for-the-test"
TIMEOUT_MS = 400


def searches(d):
    return len(re.findall(r"directory search", d.stderr()))


def shared_hits(d):
    return len(re.findall(r"from the shared cache", d.stderr()))


def write(env, name, text):
    path = os.path.join(env.dir, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


def cert_sha256(leaf):
    der = subprocess.run(["openssl", "x509", "-in", leaf.crt, "-outform", "DER"],
                         capture_output=True, check=True).stdout
    return hashlib.sha256(der).hexdigest().upper()


def setup(env, accounts, redis, n=2, mapping=None, per_instance=None, start=True):
    """<n> instances with the same [mapping] (plus <per_instance>[i] for each)."""
    ldif = write(env, "accounts.ldif", "version: 1\n\n" + "".join(accounts))
    key = write(env, "shared.key", "k" * 16 + os.urandom(16).hex() + "\n")
    pw = write(env, "redis.pass", PASSWORD + "\n")
    b = env.backend()
    ds = []
    for i in range(n):
        m = {"source": "ldif", "ldif_file": ldif, "netbios_domain": "CORP",
             "enforcement": "disabled", "shared_cache": redis.url,
             "shared_cache_password_file": pw, "shared_cache_key_file": key,
             "shared_cache_timeout": f"{TIMEOUT_MS}ms", **(mapping or {})}
        if per_instance and per_instance[i]:
            m.update(per_instance[i])
        ds.append(env.certmapd(b, {"mapping": m}, start=start))
    return b, ds


def wait_connected(d, timeout=10):
    """The first connection is made in the background: until then a lookup goes
    to the directory (fail fast), which would blur the counts."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if d.stderr().count("shared cache: connected to redis") >= 2:  # both workers
            return
        time.sleep(0.05)
    raise AssertionError(f"certmapd never connected to redis:\n{d.stderr()[-3000:]}")


def wait_keys(redis, n, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        ks = redis.keys()
        if len(ks) >= n:
            return ks
        time.sleep(0.02)
    raise AssertionError(f"redis holds {redis.keys()}, want {n} keys")


def get(d, leaf):
    t0 = time.time()
    status = curl(d.base + PATH, args=leaf.curl_args())[0]
    return status, time.time() - t0


def test_mapping_and_refusal_shared(env):
    """A maps alice and refuses mallory; B answers both alike without a search."""
    redis = Redis(env.dir, password=PASSWORD).start()
    env.add_cleanup(redis.stop)
    alice = leaves.issue(env.dir, "alice", upn="alice@corp.example.test")
    mallory = leaves.issue(env.dir, "mallory", upn="mallory@corp.example.test")
    entry, sid = account("alice", 1104, upn="alice@corp.example.test")
    b, (a, bb) = setup(env, [entry], redis)
    wait_connected(a)
    wait_connected(bb)

    eq(get(a, alice)[0], 200, "A maps alice")
    eq(get(a, mallory)[0], 403, "A refuses mallory")
    check(searches(a) >= 2, f"A searched the directory: {searches(a)}")
    ks = wait_keys(redis, 2)
    check(any(k.endswith(":" + cert_sha256(alice)) for k in ks), f"alice's key in {ks}")
    value = redis.raw("GET", [k for k in ks if k.endswith(cert_sha256(alice))][0])
    check(value.startswith(b"cm1 ") and b"alice@corp.example.test" in value, value)
    print(f"  a mapped entry: key {len(ks[0])} bytes, value {len(value.rstrip())} bytes")
    ttl = int(redis.raw("PTTL", ks[0]).strip())
    check(0 < ttl <= 5 * 60 * 1000, f"PX is the TTL: {ttl}")

    eq(get(bb, alice)[0], 200, "B maps alice")
    eq(get(bb, mallory)[0], 403, "B refuses mallory")
    eq(searches(bb), 0, "B made no directory search")
    eq(shared_hits(bb), 2, "both answers from the shared cache")
    reqs = b.requests()
    eq(len(reqs), 2, "only the mapped requests reached the backend")
    for r in reqs:
        h = {k.lower(): v for k, v in r["headers"]}
        eq(h["x-remote-user"], "alice@corp.example.test", "X-Remote-User")
        eq(h["x-remote-user-sid"], sid, "X-Remote-User-SID")
        eq(h["x-remote-user-sam"], "CORP\\alice", "X-Remote-User-Sam")
    log = bb.wait_access(2)
    eq(log[1].get("reason"), "no_mapping", "B's reason for mallory")
    eq(log[0].get("user"), "alice@corp.example.test", "B's user for alice")


def test_redis_stopped_hung_and_restarted(env):
    redis = Redis(env.dir, password=PASSWORD).start()
    env.add_cleanup(redis.stop)
    names = [f"user{i}" for i in range(16)]
    certs = {n: leaves.issue(env.dir, n, upn=f"{n}@corp.example.test") for n in names}
    entries = [account(n, 2000 + i, upn=f"{n}@corp.example.test")[0] for i, n in enumerate(names)]
    b, (a, bb) = setup(env, entries, redis)
    wait_connected(a)
    wait_connected(bb)
    eq(get(a, certs["user0"])[0], 200, "A, redis up")
    wait_keys(redis, 1)

    port = redis.port
    # Stopped: the connection closes; both instances go on through the directory at once.
    redis.stop()
    for d, n in ((a, "user1"), (bb, "user1"), (bb, "user2")):
        status, took = get(d, certs[n])
        eq(status, 200, f"{n} with redis stopped")
        check(took < 2.0, f"no wait for a dead redis: {took:.2f}s")
    check("shared cache: redis at 127.0.0.1" in a.stderr(), "the outage is logged")
    eq(a.stderr().count("mapping goes on with the local cache"), 2, "once per outage, per worker")

    # Restarted on the same port: sharing resumes once the backoff retries.
    redis = Redis(env.dir, password=PASSWORD)
    redis.port = port
    redis.start()
    env.add_cleanup(redis.stop)
    deadline = time.time() + 15
    while time.time() < deadline and (a.stderr().count("answers again") < 2 or
                                      bb.stderr().count("answers again") < 2):
        time.sleep(0.1)
    check(a.stderr().count("answers again") >= 2, f"A reconnected:\n{a.stderr()[-2000:]}")
    check(bb.stderr().count("answers again") >= 2, "B reconnected")
    eq(get(a, certs["user3"])[0], 200, "A after the restart")
    wait_keys(redis, 1)
    before = searches(bb)
    eq(get(bb, certs["user3"])[0], 200, "B after the restart")
    eq(searches(bb), before, "B used A's entry: sharing resumed")

    # Hung (SIGSTOP: connected, silent): a lookup waits the timeout, not more;
    # after 3 unanswered lookups a worker drops the connection, and the next
    # lookups fail fast (2 workers: at most 6 lookups wait).
    redis.pause()
    waited = []
    for i in range(4, 16):
        status, took = get(bb, certs[f"user{i}"])
        eq(status, 200, f"user{i} with redis hung")
        check(took < TIMEOUT_MS / 1000 + 1.5, f"waited {took:.2f}s, timeout {TIMEOUT_MS} ms")
        waited.append(took)
    slow = [t for t in waited if t >= TIMEOUT_MS / 1000]
    check(len(slow) <= 6, f"lookups that waited the timeout: {len(slow)} of {len(waited)}: "
                          f"{['%.3f' % t for t in waited]}")
    check(len(slow) >= 1, "a hung redis is waited for, up to the timeout")
    check("no answer in time to several requests" in bb.stderr(), "the hung connection dropped")
    print(f"  redis hung: {len(slow)} of {len(waited)} lookups waited {TIMEOUT_MS} ms, the "
          f"others failed fast ({min(waited) * 1000:.0f} ms fastest)")
    redis.resume()


def test_other_configuration_not_used(env):
    """B's [mapping] differs (enforcement): A's entry is not B's, B searches."""
    redis = Redis(env.dir, password=PASSWORD).start()
    env.add_cleanup(redis.stop)
    alice = leaves.issue(env.dir, "alice", upn="alice@corp.example.test")
    entry, _ = account("alice", 1104, upn="alice@corp.example.test")
    b, (a, bb) = setup(env, [entry], redis,
                       per_instance=[None, {"enforcement": "full"}])
    wait_connected(a)
    wait_connected(bb)
    eq(get(a, alice)[0], 200, "A, enforcement disabled: a UPN mapping is accepted")
    wait_keys(redis, 1)
    eq(get(bb, alice)[0], 403, "B, enforcement full: the weak mapping is refused")
    check(searches(bb) >= 1, "B searched the directory")
    eq(shared_hits(bb), 0, "nothing from the shared cache")
    ks = wait_keys(redis, 2)
    prefixes = {k.rsplit(":", 1)[0] for k in ks}
    eq(len(prefixes), 2, f"two configuration fingerprints: {ks}")


def test_hostile_values(env):
    """A garbage value, and alice's signed value moved under mallory's key: both
    are misses, and mallory stays refused."""
    redis = Redis(env.dir, password=PASSWORD).start()
    env.add_cleanup(redis.stop)
    alice = leaves.issue(env.dir, "alice", upn="alice@corp.example.test")
    mallory = leaves.issue(env.dir, "mallory", upn="mallory@corp.example.test")
    carol = leaves.issue(env.dir, "carol", upn="carol@corp.example.test")
    entries = [account("alice", 1104, upn="alice@corp.example.test")[0],
               account("carol", 1105, upn="carol@corp.example.test")[0]]
    b, (a, bb) = setup(env, entries, redis)
    wait_connected(a)
    wait_connected(bb)
    eq(get(a, alice)[0], 200, "A maps alice")
    (akey,) = wait_keys(redis, 1)
    prefix = akey.rsplit(":", 1)[0]
    signed = redis.raw("GET", akey).rstrip(b"\n")

    # alice's value under mallory's key: the signature covers the key.
    redis.cli("SET", f"{prefix}:{cert_sha256(mallory)}", stdin=signed)
    eq(get(bb, mallory)[0], 403, "a moved value maps nothing")
    check("value ignored: signature does not verify" in bb.stderr(), bb.stderr()[-2000:])
    # Garbage under carol's key: a miss, carol mapped by the directory.
    for i, junk in enumerate([b"\x00\xff garbage \r\n", b"cm1 99999999999999 ok - - - - - - x",
                              signed.replace(b"alice", b"carol"), b"cm1 " + b"9" * 4_000_000]):
        redis.cli("SET", f"{prefix}:{cert_sha256(carol)}", stdin=junk)
        bb.stop()
        bb.start()
        wait_connected(bb)
        before = searches(bb)
        eq(get(bb, carol)[0], 200, f"carol with garbage #{i} in redis")
        check(searches(bb) > before, f"garbage #{i}: the directory was asked")
        if i == 3:
            check("value ignored: too long" in bb.stderr(), "4 MB read as 64 KiB + 1, refused")
    h = {k.lower(): v for k, v in b.requests()[-1]["headers"]}
    eq(h["x-remote-user"], "carol@corp.example.test", "carol is carol")


def test_reload(env):
    """SIGHUP with [mapping] changed: the new generation's workers connect on
    their own, under the new fingerprint; the old connections are closed."""
    redis = Redis(env.dir, password=PASSWORD).start()
    env.add_cleanup(redis.stop)
    alice = leaves.issue(env.dir, "alice", upn="alice@corp.example.test")
    bob = leaves.issue(env.dir, "bob", upn="bob@corp.example.test")
    entries = [account("alice", 1104, upn="alice@corp.example.test")[0],
               account("bob", 1106, upn="bob@corp.example.test")[0]]
    b, (a,) = setup(env, entries, redis, n=1)
    wait_connected(a)
    eq(get(a, alice)[0], 200, "alice before the reload")
    wait_keys(redis, 1)
    with open(a.conf_path) as f:
        text = f.read()
    with open(a.conf_path, "w") as f:
        f.write(text.replace("enforcement = disabled", "enforcement = compatibility"))
    before = len(a.stderr())
    a.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 20
    while time.time() < deadline and a.stderr()[before:].count("connected to redis") < 2:
        time.sleep(0.05)
    check("loaded as generation 2" in a.stderr()[before:], a.stderr()[before:][-2000:])
    eq(a.stderr()[before:].count("connected to redis"), 2, "the new workers' connections")
    eq(get(a, bob)[0], 200, "bob after the reload")
    ks = wait_keys(redis, 2)
    eq(len({k.rsplit(":", 1)[0] for k in ks}), 2, "a new fingerprint for the new [mapping]")
    clients = [l for l in redis.raw("CLIENT", "LIST").decode().split("\n") if "cmd=" in l
               and "cmd=client" not in l]
    eq(len(clients), 2, f"the old generation's connections are closed: {clients}")


def test_wrong_password(env):
    """AUTH refused: logged with Redis's reason, mapping goes on through the directory."""
    redis = Redis(env.dir, password="not-the-one-certmapd-has").start()
    env.add_cleanup(redis.stop)
    alice = leaves.issue(env.dir, "alice", upn="alice@corp.example.test")
    b, (a,) = setup(env, [account("alice", 1104, upn="alice@corp.example.test")[0]], redis, n=1)
    deadline = time.time() + 10
    while time.time() < deadline and "AUTH refused" not in a.stderr():
        time.sleep(0.05)
    check("AUTH refused: WRONGPASS" in a.stderr(), a.stderr()[-2000:])
    status, took = get(a, alice)
    eq(status, 200, "mapped through the directory")
    check(took < 2.0, f"no wait: {took:.2f}s")
    eq(redis.keys(), [], "nothing written without AUTH")


def test_config_check(env):
    key = write(env, "k", "x" * 40)
    short = write(env, "short", "x" * 10)
    base = {"source": "ldif", "ldif_file": write(env, "a.ldif", "version: 1\n\n")}
    cases = [
        ({"shared_cache": "rediss://127.0.0.1:6380", "shared_cache_key_file": key},
         "rediss:// (TLS) is not available"),
        ({"shared_cache": "redis://cache.example.test:6379", "shared_cache_key_file": key},
         "must be an IPv4 or [IPv6] address"),
        ({"shared_cache": "redis://127.0.0.1:6379"}, "needs shared_cache_key_file"),
        ({"shared_cache": "redis://127.0.0.1:6379", "shared_cache_key_file": short},
         "at least 32 are needed"),
        ({"shared_cache": "redis://user:pw@127.0.0.1:6379", "shared_cache_key_file": key},
         "shared_cache_password_file"),
        ({"shared_cache": "redis://127.0.0.1:6379/999", "shared_cache_key_file": key},
         "0..255"),
    ]
    for keys, want in cases:
        d = env.certmapd(sections={"mapping": {**base, **keys}}, start=False)
        p = subprocess.run([BIN, "-t", "-c", d.conf_path], capture_output=True, text=True,
                           timeout=30)
        eq(p.returncode, 1, f"{keys}: {p.stdout}{p.stderr}")
        check(want in p.stderr and re.search(r"\.conf:\d+: ", p.stderr), f"{want}: {p.stderr}")
    d = env.certmapd(sections={"mapping": {**base, "shared_cache": "redis://[::1]:6379/3",
                                           "shared_cache_key_file": key}}, start=False)
    p = subprocess.run([BIN, "-t", "-c", d.conf_path], capture_output=True, text=True, timeout=30)
    eq(p.returncode, 0, f"a good one: {p.stderr}")


if __name__ == "__main__":
    from harness import run
    run([
        test_mapping_and_refusal_shared,
        test_redis_stopped_hung_and_restarted,
        test_other_configuration_not_used,
        test_hostile_values,
        test_reload,
        test_wrong_password,
        test_config_check,
    ])
