#!/usr/bin/env python3
"""LDAP answers are hostile input too. A fake directory (fakedc.py, real
LDAPS on loopback) answers certmapd's searches with malformed values,
referrals, too many entries, entries that do not hold what was asked for, or
plain garbage: certmapd must fail closed (503), refuse (403) or ignore, never
crash and never let anyone in, and recover once the answers are sane again."""
import os

import leaves
from fakedc import BASE, FakeDC, certmapd_for, entry, reference
from harness import check, curl, curl_until_recovered, eq, pki, run
from samba import sid_to_bytes

PATH = "/Microsoft-Server-ActiveSync?Cmd=Ping"
SID = "S-1-5-21-1-2-3-1500"


def account(dn, altsecid, sid=sid_to_bytes(SID), extra=()):
    attrs = [("objectClass", ["top", "person", "user"]), ("sAMAccountName", ["hostile"]),
             ("userPrincipalName", ["hostile@corp.example.test"]), ("objectSid", [sid]),
             ("userAccountControl", ["512"]), ("whenCreated", ["20200101000000.0Z"]),
             ("altSecurityIdentities", [altsecid])] + list(extra)
    return lambda msgid: entry(msgid, dn, attrs)


def start(env, scenario):
    state = {"scenario": scenario}
    dc = FakeDC(pki("server-chain.pem"), pki("server.key"), BASE,
                lambda base, scope: state["scenario"]())
    b, d = certmapd_for(env, [dc.uri])
    return state, dc, b, d


def test_referral_ignored_and_entry_mapped(env):
    leaf = leaves.issue(env.dir, "refd")
    good = account(f"CN=refd,CN=Users,{BASE}", leaves.strong_altsecid(leaf))
    state, dc, b, d = start(env, lambda: [
        lambda m: reference(m, "ldaps://elsewhere.example.test/CN=Configuration," + BASE), good])
    try:
        eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, "status")
        h = {k.lower(): v for k, v in b.requests()[0]["headers"]}
        eq(h["x-remote-user-sid"], SID, "the SID decoded from the binary objectSid")
        eq(h["x-remote-user-sam"], "CORP\\hostile", "the NetBIOS name from the directory")
    finally:
        dc.stop()


def test_malformed_sid_fails_closed(env):
    leaf = leaves.issue(env.dir, "badsid")
    value = leaves.strong_altsecid(leaf)
    bad = account(f"CN=badsid,CN=Users,{BASE}", value, sid=b"\x01\x05\x00")
    good = account(f"CN=badsid,CN=Users,{BASE}", value)
    state, dc, b, d = start(env, lambda: [bad])
    try:
        status, _, head = curl(d.base + PATH, args=leaf.curl_args())
        eq(status, 503, "a malformed objectSid: the answer is not trusted")
        check("retry-after:" in head.lower(), "Retry-After")
        eq(d.wait_access(1)[0]["reason"], "directory_unavailable", "reason")
        state["scenario"] = lambda: [good]
        eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, "sane answers again")
        eq(len(b.requests()), 1, "only the mapped request reached the backend")
    finally:
        dc.stop()


def test_control_characters_in_values_fail_closed(env):
    leaf = leaves.issue(env.dir, "ctl")
    value = leaves.strong_altsecid(leaf)
    nasty = account(f"CN=ctl,CN=Users,{BASE}", value,
                    extra=[("userPrincipalName", [b"evil@corp\r\nX-Remote-User: admin"])])
    state, dc, b, d = start(env, lambda: [nasty])
    try:
        status = curl(d.base + PATH, args=leaf.curl_args())[0]
        eq(status, 503, "a CR/LF in a directory value")
        eq(b.requests(), [], "nothing reaches the backend")
    finally:
        dc.stop()


def test_too_many_entries_is_ambiguous(env):
    leaf = leaves.issue(env.dir, "many")
    value = leaves.strong_altsecid(leaf)
    crowd = [account(f"CN=clone{i},CN=Users,{BASE}", value) for i in range(40)]
    state, dc, b, d = start(env, lambda: crowd)
    try:
        eq(curl(d.base + PATH, args=leaf.curl_args())[0], 403, "status")
        eq(d.wait_access(1)[0]["reason"], "ambiguous_mapping", "reason")
        eq(b.requests(), [], "backend requests")
    finally:
        dc.stop()


def test_entry_that_does_not_hold_the_value(env):
    """A directory that matched more loosely than AD does is not believed."""
    leaf = leaves.issue(env.dir, "loose")
    other = account(f"CN=loose,CN=Users,{BASE}", "X509:<I>DC=evil<SR>00")
    state, dc, b, d = start(env, lambda: [other])
    try:
        eq(curl(d.base + PATH, args=leaf.curl_args())[0], 403, "status")
        eq(d.wait_access(1)[0]["reason"], "no_mapping", "reason")
        eq(b.requests(), [], "backend requests")
    finally:
        dc.stop()


def test_huge_value(env):
    """A 2 MB altSecurityIdentities value is beyond any sane bound: the answer is
    refused whole (fail closed), and certmapd goes on serving."""
    leaf = leaves.issue(env.dir, "huge")
    value = leaves.strong_altsecid(leaf)
    dn = f"CN=huge,CN=Users,{BASE}"
    big = account(dn, value, extra=[("altSecurityIdentities", ["X509:<S>" + "x" * (2 << 20)])])
    state, dc, b, d = start(env, lambda: [big])
    try:
        eq(curl(d.base + PATH, args=leaf.curl_args())[0], 503, "a 2 MB value")
        eq(d.wait_access(1)[0]["reason"], "directory_unavailable", "reason")
        state["scenario"] = lambda: [account(dn, value)]
        eq(curl(d.base + PATH, args=leaf.curl_args())[0], 200, "still serving")
    finally:
        dc.stop()


def test_garbage_answer_then_recovery(env):
    leaf = leaves.issue(env.dir, "garbage")
    good = account(f"CN=garbage,CN=Users,{BASE}", leaves.strong_altsecid(leaf))
    state, dc, b, d = start(env, lambda: b"\x30\x84\xff\xff\xff\x7f" + os.urandom(64))
    try:
        status = curl(d.base + PATH, args=leaf.curl_args())[0]
        eq(status, 503, "garbage from the directory")
        state["scenario"] = lambda: [good]
        status = curl_until_recovered(d.base + PATH, leaf.curl_args(), timeout=30, interval=0.5)
        eq(status, 200, "recovered without a restart")
    finally:
        dc.stop()


if __name__ == "__main__":
    run([
        test_referral_ignored_and_entry_mapped,
        test_malformed_sid_fails_closed,
        test_control_characters_in_values_fail_closed,
        test_too_many_entries_is_ambiguous,
        test_entry_that_does_not_hold_the_value,
        test_huge_value,
        test_garbage_answer_then_recovery,
    ])
