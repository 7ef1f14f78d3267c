#!/usr/bin/env python3
"""The Kerberos constrained-delegation fixture of issue 12, proved without
certmapd: S4U2Self + S4U2Proxy through GSSAPI (kdc.py, what krb/ does) against
the Samba KDC of the ctest fixture `samba`, tokens sent to the real Kerberos
backends certmapd's tests use (Apache httpd + mod_auth_gssapi, apache.py; the
channel-binding checker gssbackend.py). The KDC's refusals are pinned here with
their exact GSSAPI codes and texts (tests/samba/README.md lists them), so a
change in Samba or MIT krb5 shows up as a failure of this test, not as a
mysterious reason code in certmapd's."""
import http.client
import json
import os
import ssl
import stat

from apache import Apache
from gssbackend import GssBackend
from harness import check, eq, pki, run
from kdc import (GSS_S_FAILURE, KRB5KDC_ERR_BADOPTION, KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN,
                 KRB5KDC_ERR_POLICY, KRB5KDC_ERR_S_PRINCIPAL_UNKNOWN, NODELEG_SPN, REALM, Kdc,
                 channel_binding_data)
from samba import Samba

KDC = Kdc()
AD = Samba()
PATH = "/Microsoft-Server-ActiveSync?Cmd=Ping&User=alice&DeviceId=D1&DeviceType=iPhone"
BADOPTION_TEXT = "KDC can't fulfill requested option"
_n = [0]


def uniq(base):
    _n[0] += 1
    return f"{base}{os.getpid() % 10000}k{_n[0]}"


def connect(port, tls):
    if tls:
        ctx = ssl.create_default_context(cafile=pki("root-ca.crt"))
        c = http.client.HTTPSConnection("127.0.0.1", port, timeout=15, context=ctx)
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    c.connect()
    return c


def get(c, authorization=None):
    """(status, headers [(name, value)], body) of one GET on connection <c>."""
    c.request("GET", PATH, headers={"Authorization": authorization} if authorization else {})
    r = c.getresponse()
    return r.status, r.getheaders(), r.read()


def challenges(headers):
    return [v for k, v in headers if k.lower() == "www-authenticate"]


def local_port(c):
    return "127.0.0.1:%d" % c.sock.getsockname()[1]


def token(user="alice", **kw):
    r = KDC.s4u(user, **kw)
    check(r.ok, f"S4U2Proxy for {user}: {r}")
    return r.header()


def test_fixture_files(env):
    for path, mode in ((KDC.seg_keytab, 0o600), (KDC.nodeleg_keytab, 0o600),
                       (KDC.eas_keytab, 0o640), (KDC.nodeleg_password_file, 0o600)):
        eq(stat.S_IMODE(os.stat(path).st_mode), mode, path)
    eq(open(KDC.nodeleg_password_file).read(), "Passw0rd!NoDeleg", "svc-nodeleg.secret")
    conf = open(KDC.krb5_conf).read()
    for line in ("default_realm = CORP.EXAMPLE.TEST", "dns_lookup_kdc = false",
                 "rdns = false", "forwardable = true", "kdc = 127.0.0.1"):
        check(line in conf, f"krb5.conf has {line!r}")
    eq(AD.get_attr("svc-seg", "msDS-AllowedToDelegateTo"), ["HTTP/eas.corp.example.test"],
       "svc-seg may delegate to the backend")
    eq(AD.get_attr("svc-nodeleg", "msDS-AllowedToDelegateTo"), [], "svc-nodeleg may not")
    uac = int(AD.get_attr("carol", "userAccountControl")[0])
    check(uac & 0x100000, f"carol is NOT_DELEGATED (userAccountControl {uac:#x})")


def test_alice_through_apache(env):
    a = Apache(env.dir, KDC).start()
    env.add_cleanup(a.stop)
    c = connect(a.port, False)
    status, headers, _ = get(c)
    eq(status, 401, "no token")
    eq(challenges(headers), ["Negotiate"], "the challenge")
    status, headers, body = get(c, token("alice"))
    eq(status, 200, f"S4U2Proxy token for alice; httpd: {a.errors(5)}")
    who = json.loads(body)
    eq(who["remote_user"], f"alice@{REALM}", "REMOTE_USER")
    eq(who["auth_type"], "Negotiate", "AUTH_TYPE")
    eq(who["conn"], local_port(c), "the connection it came on")
    check(who["headers"]["Authorization"].startswith("Negotiate "), "Authorization seen")
    # Not connection-bound: the next request on the connection needs a token again.
    status, _, _ = get(c)
    eq(status, 401, "second request without a token, GssapiConnectionBound Off")
    # mod_auth_gssapi passes no channel bindings to gss_accept_sec_context, and
    # MIT then accepts a token whatever bindings it carries.
    status, _, body = get(c, token("alice", bindings=b"tls-server-end-point:" + bytes(32)))
    eq((status, json.loads(body)["remote_user"]), (200, f"alice@{REALM}"),
       "bindings are not checked by mod_auth_gssapi")
    eq([(r["user"], r["status"], r["keepalive"]) for r in a.wait_access(4)],
       [("-", 401, 0), (f"alice@{REALM}", 200, 1), ("-", 401, 2), (f"alice@{REALM}", 200, 3)],
       "access log")


def test_apache_https_connection_bound(env):
    other = uniq("dave")
    AD.user_create(other, upn=f"{other}@corp.example.test")
    env.add_cleanup(lambda: AD.user_delete(other))
    a = Apache(env.dir, KDC, tls=True, connection_bound=True).start()
    env.add_cleanup(a.stop)
    c = connect(a.port, True)
    status, headers, _ = get(c)
    eq(status, 401, "no token")
    # mod_auth_gssapi offers NTLM too once connection-bound (multi-step mechanisms
    # become possible), though GssapiAllowedMech is krb5: IIS sends both as well.
    eq(challenges(headers), ["Negotiate", "NTLM"], "challenges, connection-bound")
    status, headers, body = get(c, token("alice"))
    eq(status, 200, "alice")
    eq(json.loads(body)["https"], "on", "over TLS")
    eq(dict(headers).get("Persistent-Auth"), "true", "Persistent-Auth signalled")
    status, _, body = get(c)
    eq(status, 200, "next request on the connection without Authorization")
    eq(json.loads(body)["remote_user"], f"alice@{REALM}", "still alice on this connection")
    c2 = connect(a.port, True)
    eq(get(c2)[0], 401, "another connection without a token")
    # A new token on the authenticated connection authenticates anew: the
    # connection is now the other user's.
    status, _, body = get(c, token(other))
    eq((status, json.loads(body)["remote_user"]), (200, f"{other}@{REALM}"), "re-auth")
    status, _, body = get(c)
    eq(json.loads(body)["remote_user"], f"{other}@{REALM}", "bound to the new user")
    conn = local_port(c)
    eq([(r["user"], r["status"]) for r in a.wait_access(6) if r["conn"] == conn],
       [("-", 401), (f"alice@{REALM}", 200), (f"alice@{REALM}", 200),
        (f"{other}@{REALM}", 200), (f"{other}@{REALM}", 200)], "one connection's requests")


def refused(r, stage, minor, text):
    eq((r.ok, r.stage, r.major, r.minor), (False, stage, GSS_S_FAILURE, minor), f"{r}")
    check(r.error.endswith(f"Minor ({minor}): {text}"), f"error text: {r.error!r}")
    eq(r.minor_text, text, "gss_display_status of the minor code")


def test_sensitive_user_refused(env):
    r = KDC.s4u("carol")
    # S4U2Self succeeds (the KDC gives a non-forwardable ticket), S4U2Proxy fails.
    eq(r.impersonated, f"carol@{REALM}", "S4U2Self for carol")
    refused(r, "s4u2proxy", KRB5KDC_ERR_BADOPTION, BADOPTION_TEXT)
    print(f"  carol (sensitive): {r.error}")


def test_service_without_delegation_refused(env):
    r = KDC.s4u("alice", service="svc-nodeleg")
    eq(r.impersonated, f"alice@{REALM}", "S4U2Self by svc-nodeleg")
    refused(r, "s4u2proxy", KRB5KDC_ERR_BADOPTION, BADOPTION_TEXT)
    print(f"  svc-nodeleg: {r.error}")
    # svc-seg itself, to a service not in its msDS-AllowedToDelegateTo: the same answer.
    r = KDC.s4u("alice", target=NODELEG_SPN.replace("/", "@"))
    refused(r, "s4u2proxy", KRB5KDC_ERR_BADOPTION, BADOPTION_TEXT)


def test_disabled_unknown_user_unknown_service_refused(env):
    r = KDC.s4u("bob")
    refused(r, "s4u2self", KRB5KDC_ERR_POLICY, "KDC policy rejects request")
    print(f"  bob (disabled): {r.error}")
    r = KDC.s4u(uniq("nobody"))
    refused(r, "s4u2self", KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN, "Client not found in Kerberos database")
    r = KDC.s4u("alice", target="HTTP@unknown.corp.example.test")
    refused(r, "s4u2proxy", KRB5KDC_ERR_S_PRINCIPAL_UNKNOWN, "Server not found in Kerberos database")


def test_enterprise_name_is_not_canonicalized(env):
    """LAB.md: Samba's KDC keeps an NT-ENTERPRISE name as it is; the backend then
    sees alice\\@corp.example.test@REALM, not alice@REALM. krb/ must impersonate
    sAMAccountName@REALM."""
    a = Apache(env.dir, KDC).start()
    env.add_cleanup(a.stop)
    c = connect(a.port, False)
    status, _, body = get(c, token("alice@corp.example.test", enterprise=True))
    eq(status, 200, "enterprise name")
    eq(json.loads(body)["remote_user"], f"alice\\@corp.example.test@{REALM}", "REMOTE_USER")


def test_gssbackend_channel_bindings(env):
    g = GssBackend(env.dir, KDC, tls=True).start()
    env.add_cleanup(g.stop)
    c = connect(g.port, True)
    status, headers, body = get(c)
    eq((status, challenges(headers)), (401, ["Negotiate"]), "no token")
    der = c.sock.getpeercert(binary_form=True)
    eq(channel_binding_data(der), g.cb_data, "the client's view of the server cert")
    status, _, body = get(c, token("alice", bindings=channel_binding_data(der)))
    eq(status, 200, f"right bindings: {body!r}")
    got = json.loads(body)
    eq((got["principal"], got["channel_bound"], got["bindings"]),
       (f"alice@{REALM}", True, "match"), "right bindings")
    wrong = b"tls-server-end-point:" + bytes(32)
    status, headers, body = get(c, token("alice", bindings=wrong))
    eq((status, json.loads(body)["reason"]), (401, "channel_bindings_mismatch"), "wrong")
    eq(challenges(headers), ["Negotiate"], "challenge after wrong bindings")
    status, _, body = get(c, token("alice"))
    eq((status, json.loads(body)["bindings"]), (200, "absent"),
       "no bindings, not required: MIT accepts")
    log = g.requests()
    eq(log[2]["error"], "Major (262144): Incorrect channel bindings were supplied, "
       "Minor (100001): Success", "MIT's GSS_S_BAD_BINDINGS")
    eq([(r["conn"], r["status"], r["principal"], r.get("bindings")) for r in log],
       [(local_port(c), 401, None, None), (local_port(c), 200, f"alice@{REALM}", "match"),
        (local_port(c), 401, None, "mismatch"), (local_port(c), 200, f"alice@{REALM}", "absent")],
       "the backend's log")
    g = GssBackend(env.dir, KDC, tls=True, require_bindings=True).start()
    env.add_cleanup(g.stop)
    c = connect(g.port, True)
    status, _, body = get(c, token("alice"))
    eq((status, json.loads(body)["reason"]), (401, "channel_bindings_absent"), "required")
    der = c.sock.getpeercert(binary_form=True)
    status, _, body = get(c, token("alice", bindings=channel_binding_data(der)))
    eq((status, json.loads(body)["principal"]), (200, f"alice@{REALM}"), "required, given")


def test_ensure_users(env):
    AD.user_delete("carol")
    eq(KDC.ensure_users(AD), ["carol"], "made again")
    uac = int(AD.get_attr("carol", "userAccountControl")[0])
    eq(uac & 0x100202, 0x100200, "normal, enabled, NOT_DELEGATED")
    refused(KDC.s4u("carol"), "s4u2proxy", KRB5KDC_ERR_BADOPTION, BADOPTION_TEXT)
    eq(KDC.ensure_users(AD), [], "nothing missing")


def test_gssbackend_connection_bound(env):
    g = GssBackend(env.dir, KDC, tls=True, connection_bound=True).start()
    env.add_cleanup(g.stop)
    c = connect(g.port, True)
    der = c.sock.getpeercert(binary_form=True)
    eq(get(c, token("alice", bindings=channel_binding_data(der)))[0], 200, "alice")
    status, _, body = get(c)
    eq((status, json.loads(body)["auth"]), (200, "connection"), "bound to the connection")
    eq(get(connect(g.port, True))[0], 401, "another connection")
    eq([(r["auth"], r["principal"]) for r in g.requests()],
       [("negotiate", f"alice@{REALM}"), ("connection", f"alice@{REALM}"), ("none", None)],
       "log")


if __name__ == "__main__":
    made = KDC.ensure_users(AD)
    if made:
        print(f"  recreated {made} (a test before this one deleted them)")
    run([test_fixture_files, test_alice_through_apache, test_apache_https_connection_bound,
         test_sensitive_user_refused, test_service_without_delegation_refused,
         test_disabled_unknown_user_unknown_service_refused, test_enterprise_name_is_not_canonicalized,
         test_gssbackend_channel_bindings, test_gssbackend_connection_bound, test_ensure_users])
