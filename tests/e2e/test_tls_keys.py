#!/usr/bin/env python3
"""Client keys of both types a device may hold (RSA and EC), both TLS versions
and both usual key-exchange groups, with `[tls] builtin_key_methods` on (the
default: tls/keymeth.c routes RSA and EC keys through OpenSSL's built-in
methods) and off (providers only). Each must accept a genuine chain and
refuse one whose signature was altered: the built-in path must verify
signatures exactly as the provider path does."""
import os
import subprocess

from harness import BIN, check, curl, eq, pki, run
from leaves import issue

PATH = "/Microsoft-Server-ActiveSync?Cmd=Ping&User=bob&DeviceId=K1&DeviceType=iPhone"


def tampered(env, crt_path, name):
    """A copy of the PEM certificate <crt_path> with one bit of its signature flipped
    (the last byte of the DER is the signature's last byte), chained with the issuing
    CA. It parses, the key still matches, only the issuer's signature is wrong."""
    der = subprocess.run(["openssl", "x509", "-in", crt_path, "-outform", "DER"],
                         check=True, capture_output=True).stdout
    der = der[:-1] + bytes([der[-1] ^ 0x01])
    pem = subprocess.run(["openssl", "x509", "-inform", "DER"], input=der, check=True,
                         capture_output=True).stdout
    chain = os.path.join(env.dir, f"{name}.chain.pem")
    with open(chain, "wb") as f:
        f.write(pem + open(pki("issuing-ca.crt"), "rb").read())
    return chain


def both_ways(check_fn):
    def on(env):
        check_fn(env, "yes")

    def off(env):
        check_fn(env, "no")

    on.__name__ = check_fn.__name__ + "_builtin"
    off.__name__ = check_fn.__name__ + "_providers"
    return [on, off]


def accepted(env, b, d, args, cn, what):
    status, _, err = curl(d.base + PATH, args=args)
    eq(status, 200, f"{what}: status ({err[-300:]})")
    h = {k.lower(): v for k, v in b.requests()[-1]["headers"]}
    eq(h["x-client-cert-subject"], f"CN={cn},OU=Users,DC=corp,DC=example,DC=test",
       f"{what}: subject forwarded")


def genuine_keys_accepted(env, builtin):
    b = env.backend()
    d = env.certmapd(b, {"tls": {"builtin_key_methods": builtin}})
    rsa = issue(env.dir, "rsaleaf", cn="bob-rsa", upn="bob@corp.example.test", key="rsa")
    ec = issue(env.dir, "ecleaf", cn="bob-ec", upn="bob@corp.example.test", key="ec")
    for leaf, cn in ((rsa, "bob-rsa"), (ec, "bob-ec")):
        for version in ("--tlsv1.2 --tls-max 1.2", "--tlsv1.3"):
            # (TLS 1.2 needs P-256 among the groups for the server's ECDSA
            # certificate; the first group offered is the one used.)
            for curve in ("X25519:prime256v1", "prime256v1", "secp384r1:prime256v1"):
                args = leaf.curl_args() + version.split() + ["--curves", curve]
                accepted(env, b, d, args, cn, f"{cn} {version} {curve}")
    eq(len(b.requests()), 12, "requests forwarded")


def s_client(port, leaf, extra):
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
           "-CAfile", pki("root-ca.crt"), "-ign_eof", "-cert", leaf.crt, "-key", leaf.key,
           "-cert_chain", pki("issuing-ca.crt")] + extra
    req = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    return subprocess.run(cmd, input=req, capture_output=True, timeout=20).stdout.decode("latin-1")


def rsa_pkcs1_and_resumption(env, builtin):
    """An RSA client signing with PKCS#1 v1.5 (TLS 1.2 only), and RSA and EC leaves
    resumed from a ticket (libssl decodes the leaf again from the ticket)."""
    b = env.backend()
    d = env.certmapd(b, {"tls": {"builtin_key_methods": builtin}})
    rsa = issue(env.dir, "rsaleaf", cn="bob-rsa", key="rsa")
    ec = issue(env.dir, "ecleaf", cn="bob-ec", key="ec")
    out = s_client(d.port, rsa, ["-tls1_2", "-client_sigalgs", "RSA+SHA256"])
    check("HTTP/1.1 200" in out, f"RSA PKCS#1 over TLS 1.2: {out[-600:]}")
    check("Peer signature type" not in out or "RSA" in out, "RSA signature")
    for leaf in (rsa, ec):
        for proto in ("-tls1_2", "-tls1_3"):
            sess = os.path.join(env.dir, f"{leaf.crt}{proto}.sess")
            out = s_client(d.port, leaf, [proto, "-sess_out", sess])
            check("HTTP/1.1 200" in out, f"{leaf.crt} {proto} first: {out[-600:]}")
            out = s_client(d.port, leaf, [proto, "-sess_in", sess])
            check("Reused" in out and "HTTP/1.1 200" in out,
                  f"{leaf.crt} {proto} resumed: {out[-600:]}")
    subjects = [{k.lower(): v for k, v in r["headers"]}["x-client-cert-subject"]
                for r in b.requests()]
    eq([s.split(",")[0] for s in subjects], ["CN=bob-rsa"] * 5 + ["CN=bob-ec"] * 4,
       "identities forwarded, resumed ones included")


def altered_signature_refused(env, builtin):
    b = env.backend()
    d = env.certmapd(b, {"tls": {"builtin_key_methods": builtin}})
    rsa = issue(env.dir, "rsaleaf", cn="bob-rsa", key="rsa")
    cases = ((tampered(env, pki("good.crt"), "good-tampered"), pki("good.key"), "EC"),
             (tampered(env, rsa.crt, "rsa-tampered"), rsa.key, "RSA"))
    for n, (chain, key, what) in enumerate(cases, 1):
        for version in ("--tlsv1.2 --tls-max 1.2", "--tlsv1.3"):
            status, _, _ = curl(d.base + PATH, args=["--cert", chain, "--key", key] +
                                version.split())
            eq(status, 403, f"{what} leaf with an altered signature, {version}: status")
    log = d.wait_access(4)
    eq([r["reason"] for r in log], ["cert_untrusted"] * 4, "reasons in the access log")
    eq(b.requests(), [], "requests that reached the backend")
    # A genuine certificate still passes after the refusals (nothing cached wrongly).
    status, _, _ = curl(d.base + PATH, cert="good")
    eq(status, 200, "good certificate afterwards")


def builtin_key_methods_value_checked(env):
    """`certmapd -t` takes yes and no, and refuses anything else, naming the key."""
    for value, rc in (("yes", 0), ("no", 0), ("maybe", 1)):
        d = env.certmapd(None, {"tls": {"builtin_key_methods": value}}, start=False)
        p = subprocess.run([BIN, "-t", "-c", d.conf_path], capture_output=True, text=True)
        eq(p.returncode, rc, f"exit status of -t with builtin_key_methods = {value}")
        if rc:
            check("builtin_key_methods" in p.stderr, f"error names the key: {p.stderr!r}")


if __name__ == "__main__":
    run(both_ways(genuine_keys_accepted) + both_ways(altered_signature_refused) +
        both_ways(rsa_pkcs1_and_resumption) +
        [builtin_key_methods_value_checked])
