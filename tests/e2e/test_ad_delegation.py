#!/usr/bin/env python3
"""Kerberos constrained delegation end to end, against the real Samba AD the
suite runs (its KDC too): certificates mapped to accounts, then S4U2Self and
S4U2Proxy by certmapd's krb/, sent as Authorization: Negotiate to real
Kerberos backends: Apache httpd with mod_auth_gssapi, and gssbackend.py,
which checks RFC 5929 channel bindings (mod_auth_gssapi cannot)."""
import os
import re
import subprocess
import time

import leaves
from apache import Apache
from gssbackend import GssBackend
from harness import check, curl, eq, pki, run, BIN
from kdc import Kdc
from samba import Samba
from slowproxy import SlowProxy

PATH = "/Microsoft-Server-ActiveSync?Cmd=Ping&User=x&DeviceId=D1&DeviceType=iPhone"
AD = Samba()
KDC = Kdc()
REALM = "corp.example.test"
_n = [0]


def uniq(base):
    _n[0] += 1
    return f"{base}{os.getpid() % 10000}d{_n[0]}"


def mapped_user(env, base="deleg", sensitive=False):
    """A new account with a strong altSecurityIdentities mapping, and its leaf."""
    name = uniq(base)
    upn = f"{name}@{REALM}"
    AD.user_create(name, upn=upn)
    leaf = leaves.issue(env.dir, name, upn=upn)
    AD.set_altsecids(name, [leaves.strong_altsecid(leaf)])
    if sensitive:
        subprocess.run(["samba-tool", "user", "sensitive", name, "on", "-s",
                        os.path.join(AD.dir, "etc", "smb.conf")], check=True,
                       capture_output=True)
    return name, leaf


def sections(backend_url, delegation=None, backend=None, krb5_conf=None):
    s = {
        "mapping": {"source": "ldap"},
        "ldap": {"uri": AD.ldaps_uri, "base_dn": AD.base_dn, "bind_dn": AD.bind_dn,
                 "bind_password_file": AD.password_file, "ca_file": AD.ca_file, "timeout": "2s"},
        "delegation": {"mode": "kerberos", "principal": KDC.seg_principal,
                       "keytab": KDC.seg_keytab, "target_spn": KDC.eas_spn,
                       "krb5_conf": krb5_conf or KDC.krb5_conf, "timeout": "3s",
                       **(delegation or {})},
        "backend": {"url": backend_url, **(backend or {})},
        # One worker: one pool of backend connections, so that reuse shows.
        "server": {"workers": "1"},
    }
    return s


def apache(env, **kw):
    a = Apache(env.dir, KDC, **kw).start()
    env.add_cleanup(a.stop)
    return a


def authed(a, n, timeout=5.0):
    """The backend's authenticated requests, once there are <n> of them (httpd
    writes a request's log line after its answer: it may come a moment late)."""
    deadline = time.time() + timeout
    while True:
        got = [r for r in a.access() if r.get("user") not in (None, "-")]
        if len(got) >= n or time.time() > deadline:
            return got
        time.sleep(0.05)  # a.wait_access counts every line; here only authenticated ones


def exchanges(d):
    err = d.stderr()
    return err.count("(KDC exchange)"), err.count("(cached credential)")


def test_delegated_to_apache_as_the_mapped_user(env):
    name, leaf = mapped_user(env)
    a = apache(env)
    d = env.certmapd(sections=sections(a.url))
    status, body, _ = curl(d.base + PATH, args=leaf.curl_args())
    eq(status, 200, f"status ({body[:200]!r})")
    got = authed(a, 1)
    eq([r["user"] for r in got], [f"{name}@{REALM.upper()}"], "REMOTE_USER at the backend")
    eq(d.wait_access(1)[0]["reason"], "-", "reason")


def test_upn_mapping_delegated(env):
    """Another mapping method (implicit UPN, accepted with enforcement disabled)
    delegates just the same: the account is what counts."""
    name = uniq("upnd")
    upn = f"{name}@{REALM}"
    AD.user_create(name, upn=upn)
    leaf = leaves.issue(env.dir, name, upn=upn)
    a = apache(env)
    s = sections(a.url)
    s["mapping"]["enforcement"] = "disabled"
    d = env.certmapd(sections=s)
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, "status")
    eq([r["user"] for r in authed(a, 1)], [f"{name}@{REALM.upper()}"], "user")


def test_sid_extension_mapping_delegated(env):
    """The SID extension maps (strong) and the same account is delegated."""
    name = uniq("sidd")
    AD.user_create(name)
    leaf = leaves.issue(env.dir, name, sid=AD.user_sid(name))
    a = apache(env)
    s = sections(a.url)
    s["mapping"]["methods"] = "sid"
    d = env.certmapd(sections=s)
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, "status")
    eq([r["user"] for r in authed(a, 1)], [f"{name}@{REALM.upper()}"], "user")


def test_401_on_a_reused_connection_retried_with_a_fresh_token(env):
    """A backend that wants a token on every request (no connection-bound
    authentication) answers the second request on a pooled connection, sent
    without one (send = first), with 401 Negotiate: certmapd retries it once
    on a new connection with a fresh token, and the client never sees the 401."""
    name, leaf = mapped_user(env)
    a = apache(env, connection_bound=False)
    d = env.certmapd(sections=sections(a.url))
    for i in range(2):
        eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, f"request {i}")
    got = authed(a, 2)
    eq(len(got), 2, "both authenticated at the backend")
    statuses = [r["status"] for r in a.access()]
    check(401 in statuses, f"the backend's 401 on the reused connection: {statuses}")
    eq([l["status"] for l in d.wait_access(2)], ["200", "200"], "the client saw 200 twice")
    eq(exchanges(d), (1, 1), "one KDC exchange, then a fresh token from the cached credential")


def test_cache_hit_no_second_kdc_exchange(env):
    name, leaf = mapped_user(env)
    a = apache(env)
    # No pooled backend connection: every request needs a token of its own.
    d = env.certmapd(sections=sections(a.url, backend={"keepalive_connections": "0"}))
    for i in range(3):
        eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, f"request {i}")
    eq(exchanges(d), (1, 2), "(KDC exchanges, tokens from the cached credential)")
    eq(len(authed(a, 3)), 3, "authenticated at the backend")


def test_sensitive_account_refused_403(env):
    name, leaf = mapped_user(env, "sens", sensitive=True)
    a = apache(env)
    d = env.certmapd(sections=sections(a.url))
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 403, "status")
    eq(d.wait_access(1)[0]["reason"], "delegation_refused", "reason")
    check("KDC can't fulfill requested option" in d.stderr(), "the KDC's words in the log")
    time.sleep(0.3)  # a line httpd would write after its answer
    eq(a.access(), [], "nothing reached the backend")


def test_service_without_delegation_right_403(env):
    """svc-nodeleg has keys and an SPN but no delegation right: it starts (its
    own ticket is fine), and a user's request is refused by the KDC at S4U2Proxy."""
    name, leaf = mapped_user(env)
    a = apache(env)
    d = env.certmapd(sections=sections(a.url, delegation={
        "principal": KDC.nodeleg_principal, "keytab": KDC.nodeleg_keytab}))
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 403, "status")
    eq(d.wait_access(1)[0]["reason"], "delegation_refused", "reason")
    time.sleep(0.3)  # a line httpd would write after its answer
    eq(a.access(), [], "nothing reached the backend")


def test_keytab_of_another_account_is_a_startup_error(env):
    """A keytab whose keys the KDC does not take for the principal: start-up stops."""
    a = apache(env)
    bad = os.path.join(env.dir, "stale.keytab")
    subprocess.run(["cp", KDC.seg_keytab, bad], check=True)
    d = env.certmapd(sections=sections(a.url, delegation={
        "principal": KDC.nodeleg_principal, "keytab": KDC.nodeleg_keytab}), start=False)
    # nodeleg.keytab under svc-seg's name would fail -t; under its own name but
    # with the KDC unreachable, start-up goes on (503 later): checked elsewhere.
    p = subprocess.run([BIN, "-t", "-c", d.conf_path], capture_output=True, text=True, timeout=60)
    eq(p.returncode, 0, f"-t accepts a keytab holding the principal ({p.stderr})")


def test_keytab_without_the_principal_refused_by_t(env):
    a = apache(env)
    d = env.certmapd(sections=sections(a.url, delegation={"keytab": KDC.nodeleg_keytab}),
                     start=False)
    p = subprocess.run([BIN, "-t", "-c", d.conf_path], capture_output=True, text=True, timeout=60)
    eq(p.returncode, 1, "exit status")
    check(re.search(r":\d+: \[delegation\] keytab: .* holds no key for \[delegation\] principal "
                    r"svc-seg@", p.stderr) is not None, p.stderr)


def test_two_users_never_share_a_backend_connection(env):
    """Apache caches the authentication per TCP connection (GssapiConnectionBound,
    IIS's authPersistNonNTLM): a connection that carried one user's token must
    never carry another user's request."""
    u1, l1 = mapped_user(env, "one")
    u2, l2 = mapped_user(env, "two")
    a = apache(env, connection_bound=True)
    d = env.certmapd(sections=sections(a.url), )
    for leaf in (l1, l2, l1, l2, l1, l2):
        eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, "status")
    by_conn = {}
    for r in authed(a, 6):
        by_conn.setdefault(r["conn"], set()).add(r["user"])
    check(all(len(users) == 1 for users in by_conn.values()), f"users per connection: {by_conn}")
    eq(set().union(*by_conn.values()), {f"{u1}@{REALM.upper()}", f"{u2}@{REALM.upper()}"},
       "both users authenticated")
    check(len(by_conn) == 2, f"one pooled connection per user, reused: {by_conn}")
    eq(exchanges(d)[0], 2, "one KDC exchange per user")


def test_path_without_mapping_forwarded_as_nobody(env):
    """A location with mapping = off has no account to delegate as: its
    requests go to the backend with no token and no Authorization (the client's
    is removed), on a backend connection of nobody's own, never on one a
    user's token authenticated (Apache, connection-bound, would take it as that
    user's). Here Apache answers 401 itself, and certmapd relays it."""
    name, leaf = mapped_user(env)
    a = apache(env, connection_bound=True)
    s = sections(a.url)
    s["location /public/"] = {"mapping": "off"}
    d = env.certmapd(sections=s)
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, "the mapped user first")
    status, _, hdrs = curl(d.base + "/public/x", args=leaf.curl_args() + [
        "-H", "Authorization: Negotiate bm90IGEgdG9rZW4="])
    eq(status, 401, "the path without mapping: the backend's own answer")
    check("www-authenticate: negotiate" in hdrs.lower(), f"the backend's challenge relayed: {hdrs}")
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, "the mapped user again")
    log = d.wait_access(3)
    eq([(l["status"], l["reason"], l["user"]) for l in log],
       [("200", "-", f"{name}@{REALM}"), ("401", "-", "-"), ("200", "-", f"{name}@{REALM}")],
       "access log")
    deadline = time.time() + 5
    while len(a.access()) < 4 and time.time() < deadline:
        time.sleep(0.05)
    by_path = [(r["request"].split()[1].split("?")[0], r["user"], r["conn"]) for r in a.access()]
    public = [x for x in by_path if x[0] == "/public/x"]
    users = {x[2] for x in by_path if x[1] != "-"}
    eq([(p, u) for p, u, _ in public], [("/public/x", "-")], "at the backend: nobody")
    check(public[0][2] not in users, f"nobody's request on a user's connection: {by_path}")
    eq(exchanges(d)[0], 1, "one KDC exchange, for the user only")


def test_send_always(env):
    name, leaf = mapped_user(env)
    a = apache(env)
    d = env.certmapd(sections=sections(a.url, delegation={"send": "always"}))
    for i in range(3):
        status, body, _ = curl(d.base + PATH, args=leaf.curl_args())
        eq(status, 200, f"request {i}")
    auth = authed(a, 3)
    eq(len(auth), 3, "three authenticated requests")
    eq(len({r["conn"] for r in auth}), 1, "on one pooled backend connection")
    eq(exchanges(d), (1, 2), "one KDC exchange, then the cached credential")


def test_kdc_down_503_then_recovery(env):
    """The KDC is reached through a relay the test stops and starts (the
    directory, on the same Samba, stays up): no KDC, 503 kdc_unavailable and
    nothing forwarded; the KDC back, the same request passes."""
    name, leaf = mapped_user(env)
    relay = SlowProxy(target_port=88)
    relay.start()
    env.add_cleanup(relay.stop)
    relay.pause()
    conf = os.path.join(env.dir, "krb5-relay.conf")
    with open(KDC.krb5_conf) as f:
        text = f.read()
    text = re.sub(r"(?m)^(\s*)kdc = [^\n]+", rf"\1kdc = 127.0.0.1:{relay.port}", text)
    text = re.sub(r"\[libdefaults\]", "[libdefaults]\n  udp_preference_limit = 1\n  kdc_timeout = 1000",
                  text, count=1)
    with open(conf, "w") as f:
        f.write(text)
    a = apache(env)
    d = env.certmapd(sections=sections(a.url, krb5_conf=conf, delegation={"timeout": "2s"}))
    status, _, hdrs = curl(d.base + PATH, args=leaf.curl_args())
    eq(status, 503, "status while no KDC answers")
    check("retry-after:" in hdrs.lower(), "Retry-After")
    eq(d.wait_access(1)[0]["reason"], "kdc_unavailable", "reason")
    time.sleep(0.3)
    eq(a.access(), [], "nothing forwarded without the token")
    relay.resume()
    deadline = time.time() + 30
    while time.time() < deadline:
        status = curl(d.base + PATH, args=leaf.curl_args())[0]
        if status == 200:
            break
        eq(status, 503, "fail closed while the KDC comes back")
        time.sleep(1)
    eq(status, 200, "served once the KDC answers")


def test_channel_binding_with_an_https_backend(env):
    name, leaf = mapped_user(env)
    g = GssBackend(env.dir, KDC, tls=True, require_bindings=True)
    g.start()
    env.add_cleanup(g.stop)
    d = env.certmapd(sections=sections(f"https://localhost:{g.port}",
                                       backend={"ca_file": pki("root-ca.crt")}))
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, "status with channel bindings")
    got = [r for r in g.requests() if r.get("principal")]
    eq([(r["principal"], r["bindings"]) for r in got], [(f"{name}@{REALM.upper()}", "match")],
       "principal and bindings at the backend")


def test_channel_binding_off_refused_by_a_backend_that_requires_it(env):
    name, leaf = mapped_user(env)
    g = GssBackend(env.dir, KDC, tls=True, require_bindings=True)
    g.start()
    env.add_cleanup(g.stop)
    d = env.certmapd(sections=sections(f"https://localhost:{g.port}",
                                       delegation={"channel_binding": "off"},
                                       backend={"ca_file": pki("root-ca.crt")}))
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 502, "status")
    eq(d.wait_access(1)[0]["reason"], "backend_auth_failed", "reason")


def test_wrong_channel_binding_refused(env):
    """A backend that expects the bindings of another certificate (as if a
    man in the middle had terminated the TLS connection) refuses certmapd's
    token: 502 backend_auth_failed, and nothing relayed."""
    name, leaf = mapped_user(env)
    g = GssBackend(env.dir, KDC, tls=True, require_bindings=True,
                   expect_cert=pki("good.crt"))
    g.start()
    env.add_cleanup(g.stop)
    d = env.certmapd(sections=sections(f"https://localhost:{g.port}",
                                       backend={"ca_file": pki("root-ca.crt")}))
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 502, "status")
    eq(d.wait_access(1)[0]["reason"], "backend_auth_failed", "reason")
    eq([r["bindings"] for r in g.requests() if r.get("bindings") not in (None, "absent")],
       ["mismatch"], "the backend saw bindings that do not match its expectation")


def test_map_delegate(env):
    name, leaf = mapped_user(env)
    sens, sleaf = mapped_user(env, "msens", sensitive=True)
    a = apache(env)
    d = env.certmapd(sections=sections(a.url), start=False)
    p = subprocess.run([BIN, "map", "-c", d.conf_path, "--cert", leaf.chain, "--delegate"],
                       capture_output=True, text=True, timeout=60)
    eq(p.returncode, 0, f"exit status ({p.stdout[-600:]} {p.stderr[-300:]})")
    check(f"client         {name}@{REALM.upper()}" in p.stdout, p.stdout)
    check("service        HTTP/eas.corp.example.test@" in p.stdout, p.stdout)
    check("verdict: delegated" in p.stdout, p.stdout)
    p = subprocess.run([BIN, "map", "-c", d.conf_path, "--cert", sleaf.chain, "--delegate"],
                       capture_output=True, text=True, timeout=60)
    eq(p.returncode, 1, "a sensitive account: refused")
    check("verdict: delegation_refused: " in p.stdout, p.stdout)


if __name__ == "__main__":
    run([v for k, v in sorted(globals().items()) if k.startswith("test_")])
