#!/usr/bin/env python3
"""testssl.sh (Debian's package, /usr/bin/testssl) against certmapd with its
default TLS settings: no finding of severity MEDIUM or above may remain that is
certmapd's to fix. Findings that belong to the test PKI are allow-listed below,
each with its reason. Offline: no DNS lookups, no CRL or OCSP fetches; the test
root CA is added so that the chain is trusted."""
import collections
import json
import os
import shutil
import subprocess
import time

from harness import check, pki, run

# Severities testssl gives; a scan problem (WARN, FATAL) fails the test too.
FAILING = {"MEDIUM", "HIGH", "CRITICAL", "WARN", "FATAL"}

# testssl ids of findings that are not certmapd's to fix, each with why.
NOT_OURS = {
    "cert_validityPeriod": "test PKI: mkpki.sh backdates the server certificate a day and "
                           "issues it for 825 days; testssl flags more than 825",
    "cert_revocation": "test PKI: mkpki.sh's server certificate names no CRL distribution "
                       "point and no OCSP URI",
}

# testssl checks that can fail (severity WARN) without saying anything about
# the server, each with why. Only their WARN is let through.
RACY = {
    "sessionresumption_ticket": "testssl's s_client </dev/null may quit before a TLS 1.3 "
                                "ticket arrives (against s_server -verify too); no finding",
    "sessionresumption_ID": "the same race, by session ID",
}

# Checks whose findings carry severities: protocols, standard cipher groups,
# forward secrecy, server preferences, server defaults (certificate), HTTP
# headers, vulnerabilities. Client simulation and the per-cipher list (-c, -e)
# only inform and would double the run time.
CHECKS = ["-p", "-s", "-f", "-P", "-S", "-h", "-U"]


def findings(path):
    with open(path) as f:
        doc = json.load(f)
    out = []
    for section in doc.get("scanResult", []):
        for value in section.values():
            if isinstance(value, list):
                out += [f for f in value if isinstance(f, dict) and "id" in f]
    return out


def test_testssl_finds_nothing_of_ours(env):
    testssl = shutil.which("testssl") or shutil.which("testssl.sh")
    check(testssl is not None, "testssl is not installed (scripts/install-deps.sh installs it)")
    d = env.certmapd(env.backend(), {"server": {"log_level": "info"}})
    out = os.path.join(env.dir, "testssl.json")
    cmd = [testssl, "--quiet", "--color", "0", "--warnings", "off", "--nodns", "none",
           "--ip", "127.0.0.1", "--connect-timeout", "10", "--openssl-timeout", "10",
           "--add-ca", os.path.abspath(pki("root-ca.crt")), "--jsonfile-pretty", out, *CHECKS,
           f"localhost:{d.port}"]
    t0 = time.time()
    p = subprocess.run(cmd, cwd=env.dir, capture_output=True, text=True, timeout=300)
    print(f"  testssl ran {time.time() - t0:.0f}s, exit {p.returncode}")
    with open(os.path.join(env.dir, "testssl.out"), "w") as f:  # kept when the test fails
        f.write(p.stdout + p.stderr)
    check(os.path.exists(out), f"testssl wrote no JSON: {p.stdout[-2000:]}{p.stderr[-2000:]}")
    found = findings(out)
    ids = {f["id"]: f for f in found}
    print("  severities: " + ", ".join(f"{k} {v}" for k, v in
                                       sorted(collections.Counter(f["severity"] for f in found)
                                              .items())))
    for f in found:
        if f["severity"] not in ("OK", "INFO", "DEBUG"):
            note = (f"  (not ours: {NOT_OURS[f['id']]})" if f["id"] in NOT_OURS else
                    f"  (racy check: {RACY[f['id']]})" if f["id"] in RACY else "")
            print(f"  {f['severity']:8} {f['id']}: {f['finding']}{note}")
    # The scan must really have reached the server: a trusted chain, TLS 1.2 and
    # 1.3 offered, a cipher order read.
    for want in ("cert_chain_of_trust", "TLS1_2", "TLS1_3", "cipher_order"):
        check(want in ids, f"testssl reported no {want}: the scan did not complete")
    check(ids["cert_chain_of_trust"]["severity"] == "OK",
          f"chain of trust: {ids['cert_chain_of_trust']['finding']}")
    ours = [f for f in found if f["severity"] in FAILING and f["id"] not in NOT_OURS
            and not (f["severity"] == "WARN" and f["id"] in RACY)]
    check(not ours, "findings certmapd must fix:\n" +
          "\n".join(f"  {f['severity']} {f['id']}: {f['finding']}" for f in ours))


if __name__ == "__main__":
    run([test_testssl_finds_nothing_of_ours])
