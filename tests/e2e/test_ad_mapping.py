#!/usr/bin/env python3
"""Certificate mapping against a real Samba AD DC (the ctest fixture `samba`
provisions and starts it on loopback): accounts and altSecurityIdentities are
written with LDAP as Administrator, certificates are issued for each case,
requests are made with real curl through certmapd to a real backend."""
import os
import subprocess
import time

import leaves
from harness import BIN, check, curl, curl_until_recovered, eq, pki, run
from samba import Samba
from slowproxy import SlowProxy

PATH = "/Microsoft-Server-ActiveSync?Cmd=Ping&User=x&DeviceId=D1&DeviceType=iPhone"
AD = Samba()
REALM = "corp.example.test"
_n = [0]


def uniq(base):
    """Account names unique within this run (the DC lives for the whole suite)."""
    _n[0] += 1
    return f"{base}{os.getpid() % 10000}x{_n[0]}"


def ad_sections(mapping=None, uri=None, ldap=None):
    sections = {
        "mapping": {"source": "ldap", **(mapping or {})},
        "ldap": {"uri": uri or AD.ldaps_uri, "base_dn": AD.base_dn, "bind_dn": AD.bind_dn,
                 "bind_password_file": AD.password_file, "ca_file": AD.ca_file,
                 "timeout": "2s", **(ldap or {})},
    }
    return sections


def headers(req):
    return {k.lower(): v for k, v in req["headers"]}


def start(env, mapping=None, uri=None, ldap=None, extra=None):
    b = env.backend()
    sections = ad_sections(mapping, uri, ldap)
    sections.update(extra or {})
    return b, env.certmapd(b, sections)


def test_strong_altsecid_mapping(env):
    name = uniq("alice")
    upn = f"{name}@{REALM}"
    dn = AD.user_create(name, upn=upn)
    leaf = leaves.issue(env.dir, name, upn=upn)
    AD.set_altsecids(name, [leaves.strong_altsecid(leaf)])
    b, d = start(env)
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, "status")
    h = headers(b.requests()[0])
    eq(h["x-remote-user"], upn, "X-Remote-User")
    eq(h["x-remote-user-dn"].lower(), dn.lower(), "X-Remote-User-DN")
    eq(h["x-remote-user-sid"], AD.user_sid(name), "X-Remote-User-SID")
    eq(h["x-remote-user-sam"], f"CORP\\{name}", "X-Remote-User-Sam (NetBIOS name from the DC)")
    eq(h["x-client-cert-mapping"], "altsecid:issuer-serial", "method")
    eq(d.wait_access(1)[0]["user"], upn, "access log user")


def test_altsecid_is_case_insensitive_and_space_sensitive(env):
    n1, n2 = uniq("casey"), uniq("spacey")
    AD.user_create(n1)
    AD.user_create(n2)
    l1 = leaves.issue(env.dir, n1)
    l2 = leaves.issue(env.dir, n2)
    AD.set_altsecids(n1, [leaves.strong_altsecid(l1).lower()])
    AD.set_altsecids(n2, [f"X509:<I>DC=test, DC=example, DC=corp, CN=Corp Issuing CA<SR>{l2.serial_rev}"])
    b, d = start(env)
    eq(curl(d.base + PATH, args=l1.curl_args())[0], 200, "lower-case value matches")
    eq(curl(d.base + PATH, args=l2.curl_args())[0], 403, "spaces after commas do not")
    eq(d.wait_access(2)[1]["reason"], "no_mapping", "reason")


def test_sid_extension(env):
    good, bad = uniq("sidok"), uniq("sidbad")
    AD.user_create(good)
    AD.user_create(bad, upn=f"{bad}@{REALM}")
    l_ok = leaves.issue(env.dir, good, sid=AD.user_sid(good))
    other_sid = AD.user_sid(good)  # someone else's SID in the certificate
    l_bad = leaves.issue(env.dir, bad, upn=f"{bad}@{REALM}", sid=other_sid)
    AD.set_altsecids(bad, [leaves.strong_altsecid(l_bad)])
    b, d = start(env, {"methods": "altsecid, sid, upn"})
    eq(curl(d.base + PATH, args=l_ok.curl_args())[0], 200, "mapped by the SID extension")
    h = headers(b.requests()[0])
    eq((h["x-client-cert-mapping"], h["x-remote-user-sid"]), ("sid", AD.user_sid(good)), "SID")
    eq(curl(d.base + PATH, args=l_bad.curl_args())[0], 403, "SID extension of another account")
    eq(d.wait_access(2)[1]["reason"], "sid_mismatch", "reason")


def test_sid_in_san_url(env):
    """MS-PKCA 3.1.5.2.1.6: the SID in a SAN URL. Matching the account's objectSid
    it makes the weak UPN mapping strong (accepted under full); another account's
    SID is sid_mismatch; a malformed one makes the certificate malformed."""
    good, bad, ugly = uniq("urlok"), uniq("urlbad"), uniq("urlugly")
    for n in (good, bad, ugly):
        AD.user_create(n, upn=f"{n}@{REALM}")
    l_ok = leaves.issue(env.dir, good, upn=f"{good}@{REALM}",
                        san_uri=["https://example.test/x", leaves.sid_url(AD.user_sid(good))])
    l_bad = leaves.issue(env.dir, bad, upn=f"{bad}@{REALM}",
                         san_uri=leaves.sid_url(AD.user_sid(good)))
    l_ugly = leaves.issue(env.dir, ugly, upn=f"{ugly}@{REALM}",
                          san_uri=leaves.sid_url(AD.user_sid(ugly).lower()))
    AD.set_altsecids(bad, [leaves.strong_altsecid(l_bad)])
    b, d = start(env, {"methods": "altsecid, upn", "enforcement": "full"})
    eq(curl(d.base + PATH, args=l_ok.curl_args())[0], 200, "UPN made strong by the SID URL")
    h = headers(b.requests()[0])
    eq((h["x-client-cert-mapping"], h["x-remote-user-sid"]), ("upn", AD.user_sid(good)), "SID")
    eq(curl(d.base + PATH, args=l_bad.curl_args())[0], 403, "SID URL of another account")
    eq(curl(d.base + PATH, args=l_ugly.curl_args())[0], 403, "SID URL not spelled as objectSid")
    eq([l["reason"] for l in d.wait_access(3)[1:]], ["sid_mismatch", "cert_malformed"], "reasons")
    b, d = start(env, {"methods": "sid", "enforcement": "full"})
    eq(curl(d.base + PATH, args=l_ok.curl_args())[0], 200, "the sid method: objectSid lookup")
    eq(headers(b.requests()[0])["x-client-cert-mapping"], "sid:url", "method")


def test_issuer_sid_altsecid(env):
    """X509:<I>issuer<SID>sid: strong, for a SID in the extension or in a SAN URL;
    the same SID under another issuer does not match."""
    ext, url, other = uniq("isext"), uniq("isurl"), uniq("isother")
    for n in (ext, url, other):
        AD.user_create(n)
    l_ext = leaves.issue(env.dir, ext, sid=AD.user_sid(ext))
    l_url = leaves.issue(env.dir, url, san_uri=leaves.sid_url(AD.user_sid(url)))
    l_other = leaves.issue(env.dir, other, sid=AD.user_sid(other))
    AD.set_altsecids(ext, [f"X509:<I>{leaves.ISSUER_ASI}<SID>{AD.user_sid(ext)}"])
    AD.set_altsecids(url, [f"X509:<I>{leaves.ISSUER_ASI}<SID>{AD.user_sid(url)}"])
    AD.set_altsecids(other, [f"X509:<I>DC=test,DC=example,DC=corp,CN=Corp Root CA<SID>"
                             f"{AD.user_sid(other)}"])
    b, d = start(env, {"methods": "altsecid", "enforcement": "full"})
    eq(curl(d.base + PATH, args=l_ext.curl_args())[0], 200, "SID extension")
    eq(curl(d.base + PATH, args=l_url.curl_args())[0], 200, "SID URL")
    got = [(headers(r)["x-remote-user-sid"], headers(r)["x-client-cert-mapping"])
           for r in b.requests()]
    eq(got, [(AD.user_sid(ext), "altsecid:issuer-sid"), (AD.user_sid(url), "altsecid:issuer-sid")],
       "mappings")
    eq(curl(d.base + PATH, args=l_other.curl_args())[0], 403, "another issuer")
    eq(d.wait_access(3)[2]["reason"], "no_mapping", "reason")


def test_implicit_upn_under_each_enforcement(env):
    name = uniq("upnuser")
    upn = f"{name}@{REALM}"
    AD.user_create(name, upn=upn)
    leaf = leaves.issue(env.dir, name, upn=upn)  # issued after the account: compatibility accepts
    for mode, want in (("full", 403), ("compatibility", 200), ("disabled", 200)):
        b, d = start(env, {"enforcement": mode})
        eq(curl(d.base + PATH, args=leaf.curl_args())[0], want, f"enforcement {mode}")
        if want == 200:
            eq(headers(b.requests()[0])["x-client-cert-mapping"], "upn", "method")
        else:
            eq(d.wait_access(1)[0]["reason"], "weak_mapping", "reason")
            eq(b.requests(), [], "backend requests")


def test_compatibility_refuses_certificate_older_than_account(env):
    """The PKI's `good` leaf was issued before this account was created (minus
    the 10-minute backdating allowance): a weak mapping of it is refused."""
    name = uniq("late")
    AD.user_delete("alice")
    AD.user_create("alice", upn="alice@corp.example.test")
    try:
        b, d = start(env, {"enforcement": "compatibility", "methods": "upn"})
        eq(curl(d.base + PATH, cert="good")[0], 403, "status")
        eq(d.wait_access(1)[0]["reason"], "weak_mapping", "reason")
    finally:
        # Put back the fixture's alice (tests/samba/samba-ad.sh provision), whom the
        # Kerberos tests impersonate.
        AD.user_create("alice", upn="alice@corp.example.test", password="Passw0rd!Alice")
    del name


def test_weak_altsecid_forms(env):
    name = uniq("weakalt")
    AD.user_create(name)
    leaf = leaves.issue(env.dir, name, email=f"{name}@mail.example.test")
    AD.set_altsecids(name, [f"X509:<RFC822>{name}@mail.example.test"])
    b, d = start(env, {"enforcement": "disabled"})
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, "rfc822 under disabled")
    eq(headers(b.requests()[0])["x-client-cert-mapping"], "altsecid:rfc822", "method")
    b, d = start(env, {"enforcement": "full"})
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 403, "rfc822 under full")
    eq(d.wait_access(1)[0]["reason"], "weak_mapping", "reason")


def test_sha1_pukey_of_the_key(env):
    """<SHA1-PUKEY> as Microsoft documents it: the SHA-1 of the public key."""
    name = uniq("pukey")
    AD.user_create(name)
    leaf = leaves.issue(env.dir, name)
    AD.set_altsecids(name, [f"X509:<SHA1-PUKEY>{leaves.pubkey_sha1(leaf)}"])
    b, d = start(env, {"enforcement": "full"})
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, "strong under full")
    eq(headers(b.requests()[0])["x-client-cert-mapping"], "altsecid:sha1-pukey", "method")
    p = subprocess.run([BIN, "map", "-c", d.conf_path, "--cert", leaf.chain],
                       capture_output=True, text=True, timeout=60)
    eq(p.returncode, 0, f"certmapd map ({p.stdout[-600:]} {p.stderr[-300:]})")
    check("method         altsecid:sha1-pukey" in p.stdout, p.stdout)


def test_sha1_pukey_of_the_certificate(env):
    """<SHA1-PUKEY> holding the certificate's thumbprint, as ESC14 reports see it."""
    name = uniq("pucert")
    AD.user_create(name)
    leaf = leaves.issue(env.dir, name)
    AD.set_altsecids(name, [f"X509:<SHA1-PUKEY>{leaves.cert_sha1(leaf).lower()}"])
    b, d = start(env, {"enforcement": "full"})
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, "strong under full")
    eq(headers(b.requests()[0])["x-client-cert-mapping"], "altsecid:sha1-cert", "method")
    p = subprocess.run([BIN, "map", "-c", d.conf_path, "--cert", leaf.chain],
                       capture_output=True, text=True, timeout=60)
    eq(p.returncode, 0, f"certmapd map ({p.stdout[-600:]} {p.stderr[-300:]})")
    check("method         altsecid:sha1-cert" in p.stdout, p.stdout)
    check("(altsecid:sha1-cert, strong)" in p.stdout, "the lookup value is shown")


def test_dns_for_computer_accounts(env):
    host = uniq("ws").lower()
    fqdn = f"{host}.corp.example.test"
    AD.computer_create(host, fqdn)
    leaf = leaves.issue(env.dir, host, dns=fqdn)
    b, d = start(env, {"methods": "altsecid, upn, dns", "enforcement": "disabled"})
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, "status")
    h = headers(b.requests()[0])
    eq(h["x-client-cert-mapping"], "dns", "method")
    eq(h["x-remote-user-sam"].lower(), f"corp\\{host}$", "the computer account")


def test_disabled_user(env):
    name = uniq("bob")
    AD.user_create(name, upn=f"{name}@{REALM}")
    leaf = leaves.issue(env.dir, name)
    AD.set_altsecids(name, [leaves.strong_altsecid(leaf)])
    AD.user_disable(name)
    b, d = start(env)
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 403, "status")
    eq(d.wait_access(1)[0]["reason"], "account_disabled", "reason")
    eq(b.requests(), [], "backend requests")


def test_two_accounts_same_mapping(env):
    n1, n2 = uniq("twin"), uniq("twin")
    AD.user_create(n1)
    AD.user_create(n2)
    leaf = leaves.issue(env.dir, n1)
    AD.set_altsecids(n1, [leaves.strong_altsecid(leaf)])
    AD.set_altsecids(n2, [leaves.strong_altsecid(leaf)])
    b, d = start(env)
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 403, "status")
    eq(d.wait_access(1)[0]["reason"], "ambiguous_mapping", "reason")
    eq(b.requests(), [], "backend requests")


def test_metacharacters_and_nul(env):
    victim = uniq("victim")
    AD.user_create(victim, upn=f"{victim}@{REALM}")
    b, d = start(env, {"enforcement": "disabled"})
    eq(curl(d.base + PATH, cert="meta")[0], 403, "filter metacharacters in UPN and subject")
    eq(curl(d.base + PATH, cert="nulupn")[0], 403, "NUL in the UPN")
    eq(curl(d.base + PATH, cert="nulcn")[0], 403, "NUL in the subject")
    eq([l["reason"] for l in d.wait_access(3)], ["no_mapping", "cert_malformed", "cert_malformed"],
       "reasons")
    eq(b.requests(), [], "backend requests")


def test_wrong_bind_password_fails_at_start(env):
    bad = os.path.join(env.dir, "wrong.secret")
    with open(bad, "w") as f:
        f.write("Not-The-Password1")
    b = env.backend()
    d = env.certmapd(b, ad_sections(ldap={"bind_password_file": bad}), start=False)
    p = subprocess.run([os.environ.get("CERTMAPD_BIN"), "-c", d.conf_path], capture_output=True,
                       text=True, timeout=60)
    eq(p.returncode, 1, "exit status")
    check("Invalid credentials" in p.stderr, f"clear error: {p.stderr}")
    check("Not-The-Password1" not in p.stderr, "the password is never logged")


def test_directory_down_then_back(env):
    """Fail closed while the DC is down (503, Retry-After, directory_unavailable,
    never cached), recover without a restart once it answers again."""
    name = uniq("carol")
    AD.user_create(name)
    leaf = leaves.issue(env.dir, name)
    AD.set_altsecids(name, [leaves.strong_altsecid(leaf)])
    b, d = start(env, {"cache_ttl": "0"})
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, "directory up")
    AD.stop()
    try:
        status, body, head = curl(d.base + PATH, args=leaf.curl_args())
        eq(status, 503, "directory down")
        check("retry-after:" in head.lower(), "Retry-After sent")
        eq(d.wait_access(2)[1]["reason"], "directory_unavailable", "reason")
    finally:
        AD.start()
    status = curl_until_recovered(d.base + PATH, leaf.curl_args(), timeout=60, interval=1)
    eq(status, 200, "recovered without a restart")
    eq(len(b.requests()), 2, "only the mapped requests reached the backend")


def test_cached_identities_flow_while_directory_is_slow(env):
    known, fresh = uniq("known"), uniq("fresh")
    AD.user_create(known)
    AD.user_create(fresh)
    l_known = leaves.issue(env.dir, known)
    l_fresh = leaves.issue(env.dir, fresh)
    AD.set_altsecids(known, [leaves.strong_altsecid(l_known)])
    AD.set_altsecids(fresh, [leaves.strong_altsecid(l_fresh)])
    proxy = SlowProxy(target_port=636).start()
    try:
        b, d = start(env, uri=proxy.uri, ldap={"timeout": "5s"})
        eq(curl(d.base + PATH, args=l_known.curl_args())[0], 200, "first request: a lookup")
        proxy.set_delay(2.0)
        t0 = time.time()
        eq(curl(d.base + PATH, args=l_known.curl_args())[0], 200, "cached identity")
        cached = time.time() - t0
        check(cached < 1.5, f"a cached request waits for nobody ({cached:.2f}s)")
        t0 = time.time()
        eq(curl(d.base + PATH, args=l_fresh.curl_args())[0], 200, "uncached, slow directory")
        slow = time.time() - t0
        check(slow >= 2.0, f"the uncached request did wait for the directory ({slow:.2f}s)")
    finally:
        proxy.stop()


def test_reload_keeps_the_identity_cache(env):
    """A reload that changes neither [mapping] nor [ldap] keeps what the
    directory answered: with the directory unable to answer, a mapped device
    still gets in. One that changes [mapping] starts afresh."""
    known = uniq("kept")
    AD.user_create(known)
    leaf = leaves.issue(env.dir, known)
    AD.set_altsecids(known, [leaves.strong_altsecid(leaf)])
    proxy = SlowProxy(target_port=636).start()
    try:
        b, d = start(env, uri=proxy.uri, ldap={"timeout": "1s"})
        eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, "first request: a lookup")
        proxy.set_delay(3.0)  # longer than [ldap] timeout: the directory cannot answer
        d.reload(r"identity cache is kept.*\n(.*\n)*.*loaded as generation 2")
        eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, "after the reload: cached")
        with open(d.conf_path) as f:
            text = f.read()
        with open(d.conf_path, "w") as f:
            f.write(text.replace("[mapping]\n", "[mapping]\ncache_entries = 5000\n"))
        out = d.reload(r"loaded as generation 3")
        check("identity cache is kept" not in out, "a changed [mapping] starts a new cache")
        eq(curl(d.base + PATH, args=leaf.curl_args())[0], 503, "after a [mapping] change: asked again")
    finally:
        proxy.stop()


if __name__ == "__main__":
    run([
        test_strong_altsecid_mapping,
        test_altsecid_is_case_insensitive_and_space_sensitive,
        test_sid_extension,
        test_sid_in_san_url,
        test_issuer_sid_altsecid,
        test_implicit_upn_under_each_enforcement,
        test_compatibility_refuses_certificate_older_than_account,
        test_weak_altsecid_forms,
        test_sha1_pukey_of_the_key,
        test_sha1_pukey_of_the_certificate,
        test_dns_for_computer_accounts,
        test_disabled_user,
        test_two_accounts_same_mapping,
        test_metacharacters_and_nul,
        test_wrong_bind_password_fails_at_start,
        test_directory_down_then_back,
        test_cached_identities_flow_while_directory_is_slow,
        test_reload_keeps_the_identity_cache,
    ])
