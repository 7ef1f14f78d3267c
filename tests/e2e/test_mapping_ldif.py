#!/usr/bin/env python3
"""Certificate mapping end to end with `[mapping] source = ldif`: real
certificates issued for the case, an LDIF file of AD-shaped accounts, real
curl, real backend; and `certmapd map`, the administrator's test."""
import base64
import hashlib
import os
import subprocess

import leaves
from harness import BIN, check, curl, eq, pki, run
from samba import sid_to_bytes

DOMAIN_SID = "S-1-5-21-1111111111-2222222222-3333333333"
PATH = "/Microsoft-Server-ActiveSync?Cmd=Ping"


def account(name, rid, upn=None, altsecids=(), uac=512, when_created="20200101000000.0Z",
            extra=()):
    sid = f"{DOMAIN_SID}-{rid}"
    lines = [f"dn: CN={name},CN=Users,DC=corp,DC=example,DC=test", "objectClass: top",
             "objectClass: person", "objectClass: user", f"sAMAccountName: {name}",
             "objectSid:: " + base64.b64encode(sid_to_bytes(sid)).decode(),
             f"whenCreated: {when_created}", f"userAccountControl: {uac}",
             "accountExpires: 9223372036854775807"]
    if upn:
        lines.append(f"userPrincipalName: {upn}")
    lines += [f"altSecurityIdentities: {v}" for v in altsecids]
    lines += list(extra)
    return "\n".join(lines) + "\n\n", sid


def setup(env, accounts, mapping=None, extra_sections=None):
    ldif = os.path.join(env.dir, "accounts.ldif")
    with open(ldif, "w") as f:
        f.write("version: 1\n\n" + "".join(accounts))
    sections = {"mapping": {"source": "ldif", "ldif_file": ldif, "netbios_domain": "CORP",
                            **(mapping or {})}}
    sections.update(extra_sections or {})
    b = env.backend()
    d = env.certmapd(b, sections)
    return b, d


def headers(req):
    return {k.lower(): v for k, v in req["headers"]}


def test_strong_mapping_identity_headers(env):
    leaf = leaves.issue(env.dir, "alice", upn="alice@corp.example.test")
    entry, sid = account("alice", 1104, upn="alice@corp.example.test",
                         altsecids=[leaves.strong_altsecid(leaf)])
    b, d = setup(env, [entry])
    status, _, _ = curl(d.base + PATH, args=leaf.curl_args() + [
        "-H", "X-Remote-User: mallory@corp.example.test", "-H", "X-Remote-User-SID: S-1-5-18"])
    eq(status, 200, "status")
    h = headers(b.requests()[0])
    eq(h["x-remote-user"], "alice@corp.example.test", "X-Remote-User")
    eq(h["x-remote-user-dn"], "CN=alice,CN=Users,DC=corp,DC=example,DC=test", "X-Remote-User-DN")
    eq(h["x-remote-user-sid"], sid, "X-Remote-User-SID")
    eq(h["x-remote-user-sam"], "CORP\\alice", "X-Remote-User-Sam")
    eq(h["x-client-cert-mapping"], "altsecid:issuer-serial", "X-Client-Cert-Mapping")
    names = [k.lower() for k, _ in b.requests()[0]["headers"]]
    eq(names.count("x-remote-user"), 1, "the client's X-Remote-User removed")
    eq(names.count("x-remote-user-sid"), 1, "the client's X-Remote-User-SID removed")
    log = d.wait_access(1)[0]
    eq(log["user"], "alice@corp.example.test", "access log user")


def pubkey_sha1(crt):
    """SHA-1 of the subjectPublicKey bits, computed apart from certmapd."""
    der = subprocess.run(["openssl", "x509", "-in", crt, "-noout", "-pubkey"], capture_output=True,
                         check=True).stdout
    spki = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=der,
                          capture_output=True, check=True).stdout
    # The BIT STRING is the SPKI's last element; for P-256 its contents are the last 65 bytes.
    return hashlib.sha1(spki[-65:]).hexdigest().upper()


def test_each_strong_altsecid_form(env):
    ski_leaf = leaves.issue(env.dir, "uski", ski="A1B2C3D4E5F60718293A4B5C6D7E8F9001122334")
    pk_leaf = leaves.issue(env.dir, "upk")
    e1, _ = account("uski", 1200, altsecids=["X509:<SKI>A1B2C3D4E5F60718293A4B5C6D7E8F9001122334"])
    e2, _ = account("upk", 1201, altsecids=[f"X509:<SHA1-PUKEY>{pubkey_sha1(pk_leaf.crt)}"])
    b, d = setup(env, [e1, e2])
    eq(curl(d.base + PATH, args=ski_leaf.curl_args())[0], 200, "by SKI")
    eq(curl(d.base + PATH, args=pk_leaf.curl_args())[0], 200, "by SHA1-PUKEY")
    got = [(headers(r)["x-remote-user-sam"], headers(r)["x-client-cert-mapping"])
           for r in b.requests()]
    eq(got, [("CORP\\uski", "altsecid:ski"), ("CORP\\upk", "altsecid:sha1-pukey")], "mappings")


def test_weak_mapping_under_each_enforcement(env):
    leaf = leaves.issue(env.dir, "weakling", upn="weakling@corp.example.test")
    old, _ = account("weakling", 1300, upn="weakling@corp.example.test")
    for mode, want, reason in (("full", 403, "weak_mapping"), ("compatibility", 200, "-"),
                               ("disabled", 200, "-")):
        b, d = setup(env, [old], {"enforcement": mode})
        eq(curl(d.base + PATH, args=leaf.curl_args())[0], want, f"enforcement {mode}")
        eq(d.wait_access(1)[0]["reason"], reason, f"reason under {mode}")
        if want == 200:
            eq(headers(b.requests()[0])["x-client-cert-mapping"], "upn", "method")
        else:
            eq(b.requests(), [], "nothing reaches the backend")


def test_compatibility_refuses_certificate_older_than_account(env):
    leaf = leaves.issue(env.dir, "newacct", upn="newacct@corp.example.test")
    young, _ = account("newacct", 1301, upn="newacct@corp.example.test",
                       when_created="20990101000000.0Z")
    b, d = setup(env, [young], {"enforcement": "compatibility"})
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 403, "status")
    eq(d.wait_access(1)[0]["reason"], "weak_mapping", "reason")


def test_disabled_locked_account(env):
    leaf1 = leaves.issue(env.dir, "gone", upn="gone@corp.example.test")
    leaf2 = leaves.issue(env.dir, "locked", upn="locked@corp.example.test")
    e1, _ = account("gone", 1400, altsecids=[leaves.strong_altsecid(leaf1)], uac=514)
    e2, _ = account("locked", 1401, altsecids=[leaves.strong_altsecid(leaf2)],
                    extra=["msDS-User-Account-Control-Computed: 16"])
    b, d = setup(env, [e1, e2])
    eq(curl(d.base + PATH, args=leaf1.curl_args())[0], 403, "disabled")
    eq(curl(d.base + PATH, args=leaf2.curl_args())[0], 403, "locked")
    eq([l["reason"] for l in d.wait_access(2)], ["account_disabled", "account_disabled"], "reasons")
    eq(b.requests(), [], "backend requests")


def test_two_accounts_one_mapping(env):
    leaf = leaves.issue(env.dir, "shared")
    e1, _ = account("twin1", 1500, altsecids=[leaves.strong_altsecid(leaf)])
    e2, _ = account("twin2", 1501, altsecids=[leaves.strong_altsecid(leaf).lower()])
    b, d = setup(env, [e1, e2])
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 403, "status")
    eq(d.wait_access(1)[0]["reason"], "ambiguous_mapping", "reason")
    eq(b.requests(), [], "backend requests")


def test_sid_extension_match_and_mismatch(env):
    good_sid = f"{DOMAIN_SID}-1600"
    leaf_ok = leaves.issue(env.dir, "sidok", upn="sidok@corp.example.test", sid=good_sid)
    leaf_bad = leaves.issue(env.dir, "sidbad", upn="sidbad@corp.example.test",
                            sid=f"{DOMAIN_SID}-9999")
    e1, _ = account("sidok", 1600)
    e2, _ = account("sidbad", 1601, altsecids=[leaves.strong_altsecid(leaf_bad)])
    b, d = setup(env, [e1, e2])
    eq(curl(d.base + PATH, args=leaf_ok.curl_args())[0], 200, "SID extension maps")
    eq(headers(b.requests()[0])["x-client-cert-mapping"], "sid", "method")
    eq(headers(b.requests()[0])["x-remote-user-sid"], good_sid, "SID")
    eq(curl(d.base + PATH, args=leaf_bad.curl_args())[0], 403, "SID extension differs")
    eq(d.wait_access(2)[1]["reason"], "sid_mismatch", "reason")


def test_no_account(env):
    leaf = leaves.issue(env.dir, "nobody", upn="nobody@corp.example.test")
    entry, _ = account("somebody", 1700, upn="somebody@corp.example.test")
    b, d = setup(env, [entry], {"enforcement": "disabled"})
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 403, "status")
    eq(d.wait_access(1)[0]["reason"], "no_mapping", "reason")


def test_filter_metacharacters_in_upn(env):
    """A UPN built to widen an LDAP filter maps nothing, and breaks nothing."""
    entry, _ = account("victim", 1800, upn="victim@corp.example.test")
    b, d = setup(env, [entry], {"enforcement": "disabled"})
    eq(curl(d.base + PATH, cert="meta")[0], 403, "status")
    eq(d.wait_access(1)[0]["reason"], "no_mapping", "reason")
    eq(b.requests(), [], "backend requests")


def test_mapping_off_location(env):
    leaf = leaves.issue(env.dir, "unmapped")
    b, d = setup(env, [], extra_sections={"location /public": {"mapping": "off"}})
    eq(curl(d.base + "/public/x", args=leaf.curl_args())[0], 200, "mapping off")
    h = headers(b.requests()[0])
    check("x-remote-user" not in h, "no account headers where mapping is off")
    eq(h["x-client-cert-serial"], leaf.serial, "certificate headers still sent")
    eq(curl(d.base + PATH, args=leaf.curl_args())[0], 403, "mapped elsewhere: no account")


def test_keepalive_requests_each_mapped(env):
    leaf = leaves.issue(env.dir, "ka")
    entry, _ = account("ka", 1900, altsecids=[leaves.strong_altsecid(leaf)])
    b, d = setup(env, [entry])
    urls = []
    for _ in range(5):
        urls += ["-o", "/dev/null", d.base + PATH]
    p = subprocess.run(["curl", "-sS", "--cacert", pki("root-ca.crt"), *leaf.curl_args(),
                        "-w", "%{http_code}\n", *urls],
                       capture_output=True, text=True, timeout=30)
    eq(p.stdout.split(), ["200"] * 5, "statuses")
    eq(len({r["conn_id"] for r in b.requests()}), 1, "one backend connection")
    check(all(headers(r)["x-remote-user-sam"] == "CORP\\ka" for r in b.requests()), "identity")


# ---- certmapd map ---------------------------------------------------------------------


def map_cmd(conf, cert, *extra):
    return subprocess.run([BIN, "map", "-c", conf, "--cert", cert, *extra], capture_output=True,
                          text=True, timeout=60)


def test_map_command(env):
    leaf = leaves.issue(env.dir, "cli", upn="cli@corp.example.test")
    entry, sid = account("cli", 2000, altsecids=[leaves.strong_altsecid(leaf)])
    other = leaves.issue(env.dir, "stranger", upn="stranger@corp.example.test")
    b, d = setup(env, [entry])
    p = map_cmd(d.conf_path, leaf.chain)
    eq(p.returncode, 0, f"mapped: {p.stdout}{p.stderr}")
    check("verdict: mapped" in p.stdout, p.stdout)
    check(f"<SR>{leaf.serial_rev}" in p.stdout, "the lookup values are shown")
    check("(altsecid:issuer-serial, strong)" in p.stdout, "strength shown")
    check(sid in p.stdout, "the account's SID is shown")
    check("filter  (&(|(objectClass=user)" in p.stdout, "the filter is shown")
    p = map_cmd(d.conf_path, other.crt, "--chain", pki("issuing-ca.crt"))
    eq(p.returncode, 1, f"not mapped: {p.stdout}")
    check("verdict: denied: weak_mapping" in p.stdout or "verdict: denied: no_mapping" in p.stdout,
          p.stdout)
    p = map_cmd(d.conf_path, pki("revoked.chain.pem"))
    eq(p.returncode, 1, "revoked")
    check("certificate policy: refused: cert_revoked" in p.stdout, p.stdout)
    p = map_cmd(d.conf_path, leaf.chain, "--delegate")
    eq(p.returncode, 2, "--delegate without [delegation]")
    check("has no [delegation] mode = kerberos" in p.stderr and "principal" in p.stderr
          and "keytab" in p.stderr, f"says what delegation needs: {p.stderr}")
    p = map_cmd(os.path.join(env.dir, "missing.conf"), leaf.chain)
    eq(p.returncode, 2, "unreadable configuration")
    p = map_cmd(d.conf_path, os.path.join(env.dir, "missing.pem"))
    eq(p.returncode, 2, "unreadable certificate")
    check("certmapd map: certificate " in p.stderr and "cannot open" in p.stderr, p.stderr)
    der = os.path.join(env.dir, "leaf.der")
    subprocess.run(["openssl", "x509", "-in", leaf.crt, "-outform", "DER", "-out", der], check=True)
    p = map_cmd(d.conf_path, der)
    eq(p.returncode, 2, "a certificate OpenSSL cannot decode as PEM")
    check(f"certmapd map: certificate {der}: no PEM certificate: it is a DER certificate "
          f"(convert it with openssl x509 -inform DER" in p.stderr, p.stderr)
    junk = os.path.join(env.dir, "junk.pem")
    with open(junk, "w") as f:
        f.write("not a certificate\n")
    p = map_cmd(d.conf_path, junk)
    eq(p.returncode, 2, "a file that is no certificate")
    check("no -----BEGIN CERTIFICATE----- block, and not a DER certificate either (" in p.stderr,
          p.stderr)
    # A broken block after the leaf is an error, not a shorter chain (and cert_untrusted).
    broken = os.path.join(env.dir, "broken.pem")
    with open(leaf.chain) as f:
        text = f.read()
    cut = text.index("-----BEGIN CERTIFICATE-----", 1) + len("-----BEGIN CERTIFICATE-----\n")
    with open(broken, "w") as f:
        f.write(text[:cut] + "!" + text[cut + 1:])
    p = map_cmd(d.conf_path, broken)
    eq(p.returncode, 2, f"a broken intermediate: {p.stdout}")
    check("cannot parse PEM" in p.stderr, p.stderr)
    p = map_cmd(d.conf_path, leaf.crt, "--chain", der)
    eq(p.returncode, 2, "an undecodable chain file")
    check(f"certmapd map: chain {der}: no PEM certificate: it is a DER certificate" in p.stderr,
          p.stderr)
    eq(b.requests(), [], "map never forwards anything")


def test_config_check_parses_the_ldif(env):
    """certmapd -t reads the LDIF file too: a bad entry is a configuration error."""
    bad = os.path.join(env.dir, "bad.ldif")
    with open(bad, "w") as f:
        f.write("version: 1\n\ndn: CN=x,DC=corp,DC=example,DC=test\nchangetype: delete\n")
    d = env.certmapd(sections={"mapping": {"source": "ldif", "ldif_file": bad}}, start=False)
    p = subprocess.run([BIN, "-t", "-c", d.conf_path], capture_output=True, text=True, timeout=30)
    eq(p.returncode, 1, f"exit status: {p.stdout}{p.stderr}")
    check(f"{bad}:3: only entries" in p.stderr, f"FILE:LINE: reason: {p.stderr}")


if __name__ == "__main__":
    run([
        test_strong_mapping_identity_headers,
        test_each_strong_altsecid_form,
        test_weak_mapping_under_each_enforcement,
        test_compatibility_refuses_certificate_older_than_account,
        test_disabled_locked_account,
        test_two_accounts_one_mapping,
        test_sid_extension_match_and_mismatch,
        test_no_account,
        test_filter_metacharacters_in_upn,
        test_mapping_off_location,
        test_keepalive_requests_each_mapped,
        test_map_command,
        test_config_check_parses_the_ldif,
    ])
