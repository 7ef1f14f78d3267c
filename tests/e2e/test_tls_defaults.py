#!/usr/bin/env python3
"""TLS algorithms (tls/ctx.c, [tls] ciphers, ciphersuites, groups): by
default TLS 1.2 offers ECDHE with AEAD ciphers only (no CBC), TLS 1.3
OpenSSL's three suites, groups X25519, P-256, P-384, P-521; the server's order
wins over the client's, for ciphers, suites and groups; configured values
replace the defaults. The client is openssl s_client, which sends its lists
in the order given."""
import subprocess

from harness import check, curl, eq, pki, run
from leaves import issue

CBC = ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-ECDSA-AES128-SHA256",
       "ECDHE-ECDSA-AES256-SHA384"]
AEAD = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305"]
TLS13 = ["TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"]


def handshake(port, *args):
    """One s_client handshake with <args>: a dict of what -brief reports
    ("Protocol version", "Ciphersuite", "Server Temp Key"...), or None when it fails."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
           "-CAfile", pki("root-ca.crt"), "-verify_return_error", "-brief", *args]
    p = subprocess.run(cmd, input=b"", capture_output=True, timeout=20)
    out = p.stderr.decode("latin-1")
    if p.returncode != 0 or "CONNECTION ESTABLISHED" not in out:
        return None
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)


def agreed(port, what, *args):
    h = handshake(port, *args)
    check(h is not None, f"{what}: handshake failed ({' '.join(args)})")
    return h


def refused(port, what, *args):
    h = handshake(port, *args)
    check(h is None, f"{what}: handshake succeeded with {h and h.get('Ciphersuite')}")


def test_defaults_offer_aead_with_ecdhe_only(env):
    d = env.certmapd()
    for c in CBC:
        refused(d.port, f"CBC cipher {c}", "-tls1_2", "-cipher", c)
    for c in AEAD:
        eq(agreed(d.port, c, "-tls1_2", "-cipher", c)["Ciphersuite"], c, "TLS 1.2 cipher")
    for s in TLS13:
        eq(agreed(d.port, s, "-tls1_3", "-ciphersuites", s)["Ciphersuite"], s, "TLS 1.3 suite")
    for g in ("X448", "ffdhe2048"):
        refused(d.port, f"group {g}", "-tls1_3", "-groups", g)
    for g, shown in (("X25519", "X25519"), ("P-256", "prime256v1"), ("P-384", "secp384r1"),
                     ("P-521", "secp521r1")):
        key = agreed(d.port, g, "-tls1_3", "-groups", g)["Server Temp Key"]
        check(shown in key, f"group {g}: server temp key {key!r}")


def test_server_order_wins(env):
    """Each client lists the server's favourite last: the server's choice shows
    that its order, not the client's, decided (the client's first is in the
    server's list too)."""
    d = env.certmapd()
    h = agreed(d.port, "TLS 1.2", "-tls1_2", "-cipher", ":".join(reversed(AEAD)))
    eq(h["Ciphersuite"], "ECDHE-ECDSA-AES128-GCM-SHA256", "TLS 1.2 cipher chosen")
    h = agreed(d.port, "TLS 1.3", "-tls1_3", "-ciphersuites", ":".join(reversed(TLS13)))
    eq(h["Ciphersuite"], "TLS_AES_256_GCM_SHA384", "TLS 1.3 suite chosen")
    # TLS 1.2: the group is chosen from both lists (TLS 1.3 takes the client's key share)
    h = agreed(d.port, "groups", "-tls1_2", "-groups", "secp384r1:prime256v1:X25519")
    check(h["Server Temp Key"].startswith("X25519"), f"group chosen: {h['Server Temp Key']!r}")


def test_client_certificates_on_every_nist_curve(env):
    """TLS 1.2: OpenSSL refuses a client certificate whose EC curve is not
    among the server's groups (an illegal_parameter alert): the default groups
    keep P-256, P-384 and P-521 certificates working."""
    b = env.backend()
    d = env.certmapd(b)
    for key in ("ec", "p384", "p521"):
        leaf = issue(env.dir, f"leaf-{key}", upn="bob@corp.example.test", key=key)
        for version in (["--tlsv1.2", "--tls-max", "1.2"], ["--tlsv1.3"]):
            status, _, err = curl(d.base + "/", args=leaf.curl_args() + version)
            eq(status, 200, f"{key} certificate, {version[-1]} ({err[-300:]})")


def test_configured_algorithms_replace_the_defaults(env):
    b = env.backend()
    for builtin in ("yes", "no"):
        d = env.certmapd(b, {"tls": {
            "builtin_key_methods": builtin,
            "ciphers": "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-GCM-SHA384",
            "ciphersuites": "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256",
            "groups": "secp384r1:X25519:prime256v1"}})
        what = f"builtin_key_methods = {builtin}"
        h = agreed(d.port, what, "-tls1_2")
        eq(h["Ciphersuite"], "ECDHE-ECDSA-AES128-SHA", f"{what}: TLS 1.2, the first configured")
        check("secp384r1" in h["Server Temp Key"], f"{what}: group {h['Server Temp Key']!r}")
        refused(d.port, what, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
        eq(agreed(d.port, what, "-tls1_3")["Ciphersuite"], "TLS_CHACHA20_POLY1305_SHA256",
           f"{what}: TLS 1.3, the first configured")
        refused(d.port, what, "-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384")
        refused(d.port, what, "-tls1_3", "-groups", "secp521r1")
        # a request through the configured CBC cipher, certificate and all
        status, _, err = curl(d.base + "/cbc", cert="good",
                              args=["--tls-max", "1.2", "--ciphers", "ECDHE-ECDSA-AES128-SHA"])
        eq(status, 200, f"{what}: request over ECDHE-ECDSA-AES128-SHA ({err[-300:]})")


if __name__ == "__main__":
    run([test_defaults_offer_aead_with_ecdhe_only, test_server_order_wins,
         test_client_certificates_on_every_nist_curve,
         test_configured_algorithms_replace_the_defaults])
