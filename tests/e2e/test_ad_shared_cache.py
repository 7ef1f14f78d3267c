#!/usr/bin/env python3
"""The identity cache shared through a real redis-server between two certmapd
instances in front of the real Samba AD DC (the ctest fixture `samba`):
what A looked up in the directory, B answers with no directory search
(counted from B's debug log), for a mapping and for a refusal; with Redis
stopped both go on through the directory; restarted, sharing resumes."""
import os
import time

import leaves
from harness import check, eq
from redis_server import Redis
from test_ad_mapping import AD, REALM, ad_sections, uniq
from test_shared_cache import (PASSWORD, get, searches, shared_hits, wait_connected, wait_keys,
                               write)


def two(env, redis):
    key = write(env, "shared.key", os.urandom(32).hex())
    pw = write(env, "redis.pass", PASSWORD)
    b = env.backend()
    ds = []
    for _ in range(2):
        sections = ad_sections({"shared_cache": redis.url, "shared_cache_key_file": key,
                                "shared_cache_password_file": pw,
                                "shared_cache_timeout": "200ms"})
        ds.append(env.certmapd(b, sections))
    for d in ds:
        wait_connected(d)
    return b, ds


def test_ad_mapping_shared(env):
    redis = Redis(env.dir, password=PASSWORD).start()
    env.add_cleanup(redis.stop)
    name, nobody = uniq("shared"), uniq("nobody")
    upn = f"{name}@{REALM}"
    AD.user_create(name, upn=upn)
    leaf = leaves.issue(env.dir, name, upn=upn)
    AD.set_altsecids(name, [leaves.strong_altsecid(leaf)])
    stranger = leaves.issue(env.dir, nobody, upn=f"{nobody}@{REALM}")
    b, (a, bb) = two(env, redis)

    status, ta = get(a, leaf)
    eq(status, 200, "A maps through the directory")
    eq(get(a, stranger)[0], 403, "A refuses a certificate with no account")
    check(searches(a) >= 2, f"A searched AD: {searches(a)}")
    wait_keys(redis, 2)
    status, tb = get(bb, leaf)
    eq(status, 200, "B maps the same certificate")
    eq(get(bb, stranger)[0], 403, "B refuses the stranger")
    eq(searches(bb), 0, "B made no directory search")
    eq(shared_hits(bb), 2, "B's two answers came from the shared cache")
    h = {k.lower(): v for k, v in b.requests()[-1]["headers"]}
    eq(h["x-remote-user"], upn, "X-Remote-User from the shared entry")
    eq(h["x-remote-user-sid"], AD.user_sid(name), "X-Remote-User-SID from the shared entry")
    eq(h["x-remote-user-sam"], f"CORP\\{name}", "the NetBIOS name A read from the DC")
    eq(bb.wait_access(2)[1]["reason"], "no_mapping", "B's reason")

    # Redis stopped: B maps a new device through AD, at once.
    port = redis.port
    redis.stop()
    other = uniq("later")
    AD.user_create(other, upn=f"{other}@{REALM}")
    leaf2 = leaves.issue(env.dir, other, upn=f"{other}@{REALM}")
    AD.set_altsecids(other, [leaves.strong_altsecid(leaf2)])
    before = searches(bb)
    status, took = get(bb, leaf2)
    eq(status, 200, "B with Redis stopped")
    check(searches(bb) > before, "B asked AD")
    check(took < 3.0, f"no wait for a dead Redis: {took:.2f}s")
    print(f"  request (curl, new TLS connection): A via AD {ta * 1000:.0f} ms, B via Redis "
          f"{tb * 1000:.0f} ms, B via AD with Redis stopped {took * 1000:.0f} ms")

    # Restarted: A's next mapping reaches B again.
    redis = Redis(env.dir, password=PASSWORD)
    redis.port = port
    redis.start()
    env.add_cleanup(redis.stop)
    third = uniq("again")
    AD.user_create(third, upn=f"{third}@{REALM}")
    leaf3 = leaves.issue(env.dir, third, upn=f"{third}@{REALM}")
    AD.set_altsecids(third, [leaves.strong_altsecid(leaf3)])
    deadline = time.time() + 15
    while time.time() < deadline and (a.stderr().count("answers again") < 2 or
                                      bb.stderr().count("answers again") < 2):
        time.sleep(0.1)
    eq(get(a, leaf3)[0], 200, "A after the restart")
    wait_keys(redis, 1)
    before = searches(bb)
    eq(get(bb, leaf3)[0], 200, "B after the restart")
    eq(searches(bb), before, "sharing resumed: B made no search")
    for n in (name, nobody, other, third):
        if AD.user_exists(n):
            AD.user_delete(n)


if __name__ == "__main__":
    from harness import run
    run([test_ad_mapping_shared])
