#!/usr/bin/env python3
"""Client-certificate policy end to end: real curl with the harness PKI's
certificates against certmapd and a real backend. Each refusal is checked
three ways: the status, the reason code in the access log, and that the
backend received nothing."""
import subprocess

from harness import Certmapd, check, curl, eq, pki, run

PATH = "/Microsoft-Server-ActiveSync?Cmd=Ping&User=alice&DeviceId=ABC123&DeviceType=iPhone"


def refused(env, cert, reason, sections=None, status=403):
    b = env.backend()
    d = env.certmapd(b, sections)
    got, body, _ = curl(d.base + PATH, cert=cert)
    eq(got, status, f"{cert}: status")
    log = d.wait_access(1)
    eq(len(log), 1, f"{cert}: access log lines")
    eq(log[0]["reason"], reason, f"{cert}: reason in the access log")
    eq(log[0]["status"], str(status), f"{cert}: status in the access log")
    eq(b.requests(), [], f"{cert}: requests that reached the backend")
    check(reason.encode() not in body, "reason code leaked into the body without detailed_errors")


def test_good_certificate_is_forwarded_with_identity(env):
    b = env.backend()
    d = env.certmapd(b)
    status, body, _ = curl(d.base + PATH, cert="good",
                           args=["-H", "X-Client-Cert-Subject: CN=mallory",
                                 "-H", "X-Remote-User: mallory@corp.example.test",
                                 "-H", "X-Forwarded-For: 10.9.9.9"])
    eq(status, 200, "status")
    reqs = b.requests()
    eq(len(reqs), 1, "requests at the backend")
    hdrs = reqs[0]["headers"]
    names = [k.lower() for k, _ in hdrs]
    h = {k.lower(): v for k, v in hdrs}
    eq(reqs[0]["target"], PATH, "request target, byte-exact")
    eq(h["x-client-cert-subject"], "CN=alice,OU=Users,DC=corp,DC=example,DC=test", "subject")
    eq(h["x-client-cert-issuer"], "CN=Corp Issuing CA,DC=corp,DC=example,DC=test", "issuer")
    eq(h["x-client-cert-serial"], "2B0000000011AC0000000012", "serial")
    fp = subprocess.run(["openssl", "x509", "-in", pki("good.crt"), "-noout", "-fingerprint",
                         "-sha256"], capture_output=True, text=True, check=True).stdout
    eq(h["x-client-cert-sha256"], fp.strip().split("=", 1)[1].replace(":", ""), "sha256")
    eq(names.count("x-client-cert-subject"), 1, "client-sent subject header removed")
    check("x-remote-user" not in names, "client-sent X-Remote-User must be removed")
    eq(h["x-forwarded-for"], "127.0.0.1", "X-Forwarded-For")
    eq(h["x-forwarded-proto"], "https", "X-Forwarded-Proto")
    log = d.wait_access(1)
    eq(log[0]["status"], "200", "access log status")
    eq(log[0]["serial"], "2B0000000011AC0000000012", "access log serial")
    eq(log[0]["reason"], "-", "access log reason")


def test_no_certificate_in_require_mode(env):
    refused(env, None, "cert_required")


def test_expired(env):
    refused(env, "expired", "cert_expired")


def test_not_yet_valid(env):
    refused(env, "notyet", "cert_expired")


def test_revoked(env):
    refused(env, "revoked", "cert_revoked")


def test_without_client_auth_eku(env):
    refused(env, "noeku", "cert_bad_usage")


def test_without_any_eku(env):
    refused(env, "noekuext", "cert_bad_usage")


def test_issued_directly_by_root(env):
    refused(env, "byroot", "issuer_not_allowed")


def test_same_named_issuer_under_other_root(env):
    refused(env, "otherissuer", "issuer_not_allowed")


def test_self_signed_unknown(env):
    # other-root-ca's leaf chain is not in trust anchors when only root-ca is trusted.
    refused(env, "otherissuer", "cert_untrusted",
            {"client_certificate": {"trust_anchors": pki("root-ca.crt")}})


def test_embedded_nul_in_subject(env):
    refused(env, "nulcn", "cert_malformed")


def test_embedded_nul_in_upn(env):
    refused(env, "nulupn", "cert_malformed")


def test_invalid_utf8_in_upn(env):
    # (A subject with invalid UTF-8 cannot even be decoded by OpenSSL: no client
    # can present it; tests/unit/tls covers that certificate.)
    refused(env, "badutf8upn", "cert_malformed")


def test_expired_crl_refuses(env):
    refused(env, "good", "cert_untrusted", {"client_certificate": {"crl_file": pki("crl-expired.pem")}})


def test_missing_crl_refuses(env):
    refused(env, "good", "cert_untrusted", {"client_certificate": {"crl_file": pki("crl-missing.pem")}})


def test_filter_metacharacters_pass_through_safely(env):
    b = env.backend()
    d = env.certmapd(b)
    status, _, _ = curl(d.base + PATH, cert="meta")
    eq(status, 200, "status")
    h = {k.lower(): v for k, v in b.requests()[0]["headers"]}
    check("*)(" in h["x-client-cert-subject"] or "\\2A" in h["x-client-cert-subject"].upper()
          or "a*" in h["x-client-cert-subject"], f"subject as sent: {h['x-client-cert-subject']}")


def test_huge_names_are_not_truncated(env):
    b = env.backend()
    d = env.certmapd(b, {"server": {"max_request_head": "64K"}})
    status, _, _ = curl(d.base + PATH, cert="long")
    eq(status, 200, "status")
    h = {k.lower(): v for k, v in b.requests()[0]["headers"]}
    check(len(h["x-client-cert-subject"]) > 4000, "long subject forwarded whole")


def test_detailed_errors_put_reason_in_body(env):
    b = env.backend()
    d = env.certmapd(b, {"server": {"detailed_errors": "on"}})
    status, body, _ = curl(d.base + PATH, cert="revoked")
    eq(status, 403, "status")
    check(b"cert_revoked" in body, f"body: {body!r}")


def test_accept_mode_with_and_without_certificate(env):
    b = env.backend()
    d = env.certmapd(b, {"client_certificate": {"mode": "accept"}})
    status, _, _ = curl(d.base + PATH)
    eq(status, 200, "accept mode without a certificate")
    status, _, _ = curl(d.base + PATH, cert="good")
    eq(status, 200, "accept mode with a good certificate")
    status, _, _ = curl(d.base + PATH, cert="expired")
    eq(status, 403, "accept mode with a bad certificate")
    reqs = b.requests()
    eq(len(reqs), 2, "requests at the backend")
    h0 = {k.lower() for k, _ in reqs[0]["headers"]}
    h1 = {k.lower(): v for k, v in reqs[1]["headers"]}
    check("x-client-cert-subject" not in h0, "no identity without a certificate")
    eq(h1["x-client-cert-serial"], "2B0000000011AC0000000012", "identity with the certificate")
    eq([l["reason"] for l in d.wait_access(3)], ["-", "-", "cert_expired"], "reasons")


def test_ignore_mode(env):
    b = env.backend()
    d = env.certmapd(b, {"client_certificate": {"mode": "ignore"}})
    eq(curl(d.base + PATH)[0], 200, "ignore mode without a certificate")
    # curl offers the certificate only if asked; nothing is asked, nothing is forwarded.
    eq(curl(d.base + PATH, cert="expired")[0], 200, "ignore mode, certificate not requested")
    for r in b.requests():
        check("x-client-cert-subject" not in {k.lower() for k, _ in r["headers"]}, "no identity")


def test_location_overrides_mode(env):
    b = env.backend()
    d = env.certmapd(b, {"client_certificate": {"mode": "accept"},
                         "location /Microsoft-Server-ActiveSync": {"client_certificate": "require"}})
    eq(curl(d.base + "/public")[0], 200, "open path")
    eq(curl(d.base + PATH)[0], 403, "protected path without a certificate")
    # Dot segments and case games do not escape the protected location.
    eq(curl(d.base + "/public/../Microsoft-Server-ActiveSync", args=["--path-as-is"])[0], 403,
       "dot segments")
    eq(curl(d.base + "/public/..%2fMicrosoft-Server-ActiveSync", args=["--path-as-is"])[0], 400,
       "encoded slash")
    eq(curl(d.base + PATH, cert="good")[0], 200, "protected path with a certificate")


def test_tls12_and_tls13(env):
    b = env.backend()
    d = env.certmapd(b)
    for args in (["--tlsv1.2", "--tls-max", "1.2"], ["--tlsv1.3"]):
        eq(curl(d.base + PATH, cert="good", args=args)[0], 200, f"good over {args}")
        eq(curl(d.base + PATH, cert="revoked", args=args)[0], 403, f"revoked over {args}")
    d2 = env.certmapd(b, {"tls": {"min_protocol": "TLSv1.3"}})
    eq(curl(d2.base + PATH, cert="good", args=["--tlsv1.2", "--tls-max", "1.2"])[0], 0,
       "TLS 1.2 refused with min_protocol = TLSv1.3")


def s_client(port, cert, extra, sess_in=None, sess_out=None, proto="-tls1_3"):
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
           "-CAfile", pki("root-ca.crt"), proto, "-ign_eof"]
    if cert:
        cmd += ["-cert", pki(f"{cert}.crt"), "-key", pki(f"{cert}.key"),
                "-cert_chain", pki("issuing-ca.crt")]
    if sess_in:
        cmd += ["-sess_in", sess_in]
    if sess_out:
        cmd += ["-sess_out", sess_out]
    cmd += extra
    req = b"GET /Microsoft-Server-ActiveSync HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    p = subprocess.run(cmd, input=req, capture_output=True, timeout=20)
    return p.stdout.decode("latin-1")


def test_resumed_session_keeps_identity(env):
    b = env.backend()
    d = env.certmapd(b)
    for proto in ("-tls1_2", "-tls1_3"):
        sess = f"{env.dir}/sess{proto}"
        out1 = s_client(d.port, "good", [], sess_out=sess, proto=proto)
        check("HTTP/1.1 200" in out1, f"first connection {proto}: {out1[-800:]}")
        out2 = s_client(d.port, None, [], sess_in=sess, proto=proto)
        check("Reused" in out2, f"session not resumed {proto}: {out2[:600]}")
        check("HTTP/1.1 200" in out2, f"resumed connection {proto}: {out2[-800:]}")
    reqs = b.requests()
    eq(len(reqs), 4, "requests")
    for r in reqs:
        h = {k.lower(): v for k, v in r["headers"]}
        eq(h.get("x-client-cert-serial"), "2B0000000011AC0000000012", "identity on every request")


def test_resumed_session_rechecks_revocation(env):
    """A session made while the certificate was good is refused once the CRL
    revokes it: resumption re-checks revocation."""
    b = env.backend()
    import os
    import shutil
    crl = os.path.join(env.dir, "crl-now.pem")
    shutil.copy(pki("crl.pem"), crl)
    d = env.certmapd(b, {"client_certificate": {"crl_file": crl}})
    sess = f"{env.dir}/sess"
    out1 = s_client(d.port, "revoked", [], sess_out=sess, proto="-tls1_2")
    check("HTTP/1.1 403" in out1, "revoked is refused")
    out2 = s_client(d.port, None, [], sess_in=sess, proto="-tls1_2")
    check("HTTP/1.1 403" in out2, f"resumed session of a revoked certificate: {out2[-600:]}")
    eq(b.requests(), [], "backend requests")


def test_client_renegotiation_refused(env):
    b = env.backend()
    d = env.certmapd(b)
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{d.port}", "-CAfile", pki("root-ca.crt"),
           "-tls1_2", "-cert", pki("good.crt"), "-key", pki("good.key"),
           "-cert_chain", pki("issuing-ca.crt")]
    p = subprocess.run(cmd, input=b"R\n", capture_output=True, timeout=20)
    out = (p.stdout + p.stderr).decode("latin-1")
    check("RENEGOTIATING" in out, f"s_client did not try: {out[-500:]}")
    check("no renegotiation" in out.lower() or "alert" in out.lower() or p.returncode != 0,
          f"renegotiation was not refused: {out[-800:]}")


if __name__ == "__main__":
    run([
        test_good_certificate_is_forwarded_with_identity,
        test_no_certificate_in_require_mode,
        test_expired,
        test_not_yet_valid,
        test_revoked,
        test_without_client_auth_eku,
        test_without_any_eku,
        test_issued_directly_by_root,
        test_same_named_issuer_under_other_root,
        test_self_signed_unknown,
        test_embedded_nul_in_subject,
        test_embedded_nul_in_upn,
        test_invalid_utf8_in_upn,
        test_expired_crl_refuses,
        test_missing_crl_refuses,
        test_filter_metacharacters_pass_through_safely,
        test_huge_names_are_not_truncated,
        test_detailed_errors_put_reason_in_body,
        test_accept_mode_with_and_without_certificate,
        test_ignore_mode,
        test_location_overrides_mode,
        test_tls12_and_tls13,
        test_resumed_session_keeps_identity,
        test_resumed_session_rechecks_revocation,
        test_client_renegotiation_refused,
    ])
