#!/usr/bin/python3
"""The Kerberos side of the Samba fixture (issue 12: constrained delegation).

tests/samba/samba-ad.sh provision makes, in the fixture's directory, the accounts,
SPNs, delegation rights, keytabs and krb5.conf that this module names (see
tests/samba/README.md). Kdc gives a test those paths, the environment that points
MIT krb5 at the fixture's KDC, and a reference S4U2Self + S4U2Proxy run through
GSSAPI, which is what certmapd's krb/ does:

    from kdc import Kdc
    k = Kdc()                                   # CERTMAPD_SAMBA_DIR
    r = k.s4u("alice")                          # svc-seg -> alice -> HTTP@eas.corp.example.test
    r.ok, r.header()                            # True, "Negotiate YII..."
    k.s4u("carol").error                        # "... KDC can't fulfill requested option"

The GSSAPI part runs under Debian's /usr/bin/python3 (python3-gssapi is only
installed for it), in a child process: `/usr/bin/python3 kdc.py s4u ...` prints
one JSON object. The same file holds the RFC 5929 tls-server-end-point helpers
that tests/e2e/gssbackend.py uses.
"""
import base64
import hashlib
import json
import os
import subprocess
import sys
import time

REALM = "CORP.EXAMPLE.TEST"
DNS_DOMAIN = "corp.example.test"
KDC_ADDRESS = "127.0.0.1"
SYSTEM_PYTHON = "/usr/bin/python3"
HERE = os.path.dirname(os.path.abspath(__file__))

# The backend: account eas-web, SPN HTTP/eas.corp.example.test. GSSAPI names it
# as a host-based service.
EAS_SPN = "HTTP/eas.corp.example.test"
EAS_SERVICE = "HTTP@eas.corp.example.test"
EAS_HOST = "eas.corp.example.test"
SEG_SPN = "HTTP/seg.corp.example.test"
NODELEG_SPN = "HTTP/nodeleg.corp.example.test"

# Accounts samba-ad.sh provision creates (name: password, what it is for).
USERS = {
    "alice": ("Passw0rd!Alice", "enabled, may be delegated"),
    "bob": ("Passw0rd!Bob1", "disabled"),
    "carol": ("Passw0rd!Carol", "sensitive: account is sensitive and cannot be delegated"),
}
SERVICES = {
    # name: (keytab file in the fixture directory, password, delegation)
    "svc-seg": ("seg.keytab", "Passw0rd!Svc", "protocol transition, may delegate to " + EAS_SPN),
    "svc-nodeleg": ("nodeleg.keytab", "Passw0rd!NoDeleg", "no delegation right"),
}

UF_ACCOUNTDISABLE = 0x2
UF_NORMAL_ACCOUNT = 0x200
UF_NOT_DELEGATED = 0x100000

# KDC answers seen with this fixture (tests/samba/README.md), as GSSAPI minor codes.
KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN = 2529638918   # "Client not found in Kerberos database"
KRB5KDC_ERR_S_PRINCIPAL_UNKNOWN = 2529638919   # "Server not found in Kerberos database"
KRB5KDC_ERR_POLICY = 2529638924                # "KDC policy rejects request"
KRB5KDC_ERR_BADOPTION = 2529638925             # "KDC can't fulfill requested option"
GSS_S_FAILURE = 0xD0000                        # 851968, "Unspecified GSS failure"

TIMEOUT = 30


# ---- RFC 5929 tls-server-end-point ---------------------------------------------

# Signature algorithm OIDs -> the hash RFC 5929 4.1 names for the channel binding:
# the signature's hash, SHA-256 when that is MD5 or SHA-1.
_SIG_HASH = {
    "1.2.840.10045.4.1": "sha256",       # ecdsa-with-SHA1 -> SHA-256
    "1.2.840.10045.4.3.1": "sha224",
    "1.2.840.10045.4.3.2": "sha256",
    "1.2.840.10045.4.3.3": "sha384",
    "1.2.840.10045.4.3.4": "sha512",
    "1.2.840.113549.1.1.4": "sha256",    # md5WithRSAEncryption -> SHA-256
    "1.2.840.113549.1.1.5": "sha256",    # sha1WithRSAEncryption -> SHA-256
    "1.2.840.113549.1.1.11": "sha256",
    "1.2.840.113549.1.1.12": "sha384",
    "1.2.840.113549.1.1.13": "sha512",
    "1.2.840.113549.1.1.14": "sha224",
}


def _der_item(b, i):
    """(tag, start of contents, end of contents) of the DER item at b[i]."""
    tag = b[i]
    n = b[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(b[i:i + k], "big")
        i += k
    return tag, i, i + n


def _oid(b):
    first = b[0]
    arcs = [first // 40 if first < 80 else 2, first % 40 if first < 80 else first - 80]
    v = 0
    for c in b[1:]:
        v = (v << 7) | (c & 0x7F)
        if not c & 0x80:
            arcs.append(v)
            v = 0
    return ".".join(map(str, arcs))


def cert_signature_oid(der):
    """The OID of a DER certificate's signatureAlgorithm (outside the TBS)."""
    tag, start, _ = _der_item(der, 0)
    if tag != 0x30:
        raise ValueError("not a DER certificate")
    _, _, tbs_end = _der_item(der, start)               # tbsCertificate
    tag, alg_start, _ = _der_item(der, tbs_end)         # signatureAlgorithm
    tag, oid_start, oid_end = _der_item(der, alg_start)
    if tag != 0x06:
        raise ValueError("no algorithm OID")
    return _oid(der[oid_start:oid_end])


def tls_server_end_point(der):
    """RFC 5929 4.1: the hash of the server's certificate (bytes)."""
    oid = cert_signature_oid(der)
    if oid not in _SIG_HASH:
        raise ValueError(f"no tls-server-end-point hash for signature algorithm {oid}")
    return hashlib.new(_SIG_HASH[oid], der).digest()


def channel_binding_data(der):
    """The application data of the channel bindings for a server certificate:
    b"tls-server-end-point:" + its hash (what gssapi.raw.ChannelBindings and
    gss_channel_bindings_struct.application_data carry)."""
    return b"tls-server-end-point:" + tls_server_end_point(der)


def pem_first_cert_der(path):
    """The first certificate of a PEM file (a server's own, before its chain), DER."""
    import ssl
    text = open(path).read()
    end = "-----END CERTIFICATE-----"
    first = text[:text.index(end) + len(end)]
    return ssl.PEM_cert_to_DER_cert(first[first.index("-----BEGIN CERTIFICATE-----"):])


# ---- the fixture ------------------------------------------------------------------

class S4UResult:
    """What one S4U2Self + S4U2Proxy run gave.

    ok        True when there is a token
    token     the initiator token (bytes; for Authorization: Negotiate), or None
    stage     where it stopped: "acquire" (the service's TGT from its keytab),
              "s4u2self" (gss_acquire_cred_impersonate_name), "s4u2proxy"
              (gss_init_sec_context), or "done"
    major, minor   GSSAPI status codes (0, 0 when ok); minor is the krb5 error
              code as an unsigned 32-bit number (KRB5KDC_ERR_* above)
    error     python-gssapi's message: "Major (...): ..., Minor (...): ..."
    major_text, minor_text   gss_display_status of each code
    impersonated   the name of the S4U2Self credential ("alice@CORP.EXAMPLE.TEST")
    flags     the context's flags (int) when ok
    seconds   how long it took
    """

    def __init__(self, d):
        self.raw = d
        self.ok = d.get("ok", False)
        self.token = base64.b64decode(d["token"]) if d.get("token") else None
        for k in ("stage", "major", "minor", "error", "major_text", "minor_text",
                  "impersonated", "flags", "seconds"):
            setattr(self, k, d.get(k))

    def header(self):
        """The Authorization header's value: "Negotiate <base64 token>"."""
        if not self.token:
            raise AssertionError(f"no token: {self.error}")
        return "Negotiate " + base64.b64encode(self.token).decode("ascii")

    def __repr__(self):
        if self.ok:
            return f"S4UResult(ok, {len(self.token)}-byte token, {self.seconds:.2f}s)"
        return f"S4UResult({self.stage}: {self.error})"


class Kdc:
    """The Kerberos half of one Samba fixture directory (default $CERTMAPD_SAMBA_DIR)."""

    def __init__(self, directory=None):
        directory = directory or os.environ.get("CERTMAPD_SAMBA_DIR")
        if not directory:
            raise RuntimeError("no Samba directory: set CERTMAPD_SAMBA_DIR (ctest fixture samba)")
        self.dir = os.path.abspath(directory)
        self.realm = REALM
        self.krb5_conf = os.path.join(self.dir, "krb5.conf")
        self.seg_keytab = os.path.join(self.dir, "seg.keytab")
        self.nodeleg_keytab = os.path.join(self.dir, "nodeleg.keytab")
        self.eas_keytab = os.path.join(self.dir, "eas.keytab")
        self.nodeleg_password_file = os.path.join(self.dir, "svc-nodeleg.secret")
        self.seg_principal = f"svc-seg@{REALM}"
        self.nodeleg_principal = f"svc-nodeleg@{REALM}"
        self.eas_spn = EAS_SPN
        self.eas_service = EAS_SERVICE
        if not os.path.exists(os.path.join(self.dir, ".kerberos")):
            raise RuntimeError(f"{self.dir} has no Kerberos set-up: run "
                               f"tests/samba/samba-ad.sh provision {self.dir}")

    def principal(self, user):
        """"alice" -> "alice@CORP.EXAMPLE.TEST"; a name with an @ is left as it is."""
        return user if "@" in user else f"{user}@{REALM}"

    def keytab(self, service):
        """The keytab of "svc-seg" or "svc-nodeleg"."""
        return os.path.join(self.dir, SERVICES[service][0])

    def env(self, base=None, **extra):
        """<base> (default os.environ) with KRB5_CONFIG set to the fixture's krb5.conf
        and KRB5CCNAME to a MEMORY cache, so nothing reads or writes a user's cache."""
        e = dict(os.environ if base is None else base)
        e["KRB5_CONFIG"] = self.krb5_conf
        e.setdefault("KRB5CCNAME", "MEMORY:certmapd-test")
        e.update(extra)
        return e

    def ensure_users(self, ad=None):
        """Recreates alice, bob (disabled) and carol (sensitive) when a test deleted
        them (test_ad_mapping deletes and recreates alice). Returns the names made."""
        from samba import Samba
        ad = ad or Samba(self.dir)
        made = []
        for name, (password, _) in USERS.items():
            if ad.user_exists(name):
                continue
            ad.user_create(name, upn=f"{name}@{DNS_DOMAIN}", password=password,
                           disabled=(name == "bob"))
            if name == "carol":
                uac = int(ad.get_attr(name, "userAccountControl")[0]) | UF_NOT_DELEGATED
                ad.set_attr(name, "userAccountControl", uac)
            made.append(name)
        return made

    def s4u(self, user, service="svc-seg", target=EAS_SERVICE, bindings=None,
            enterprise=False, keytab=None, timeout=TIMEOUT):
        """S4U2Self for <user> with <service>'s keytab, then S4U2Proxy to <target>
        (a host-based service name, "HTTP@host"), as certmapd does it through GSSAPI:
        gss_acquire_cred_from(client_keytab, MEMORY ccache), gss_acquire_cred_
        impersonate_name, gss_init_sec_context (krb5 mechanism, default flags).
        <bindings>: the channel bindings' application data (channel_binding_data()),
        or None. <enterprise>: impersonate an NT-ENTERPRISE name (user@upn-suffix).
        Returns an S4UResult; it does not raise on a Kerberos error."""
        args = [SYSTEM_PYTHON, os.path.abspath(__file__), "s4u",
                "--keytab", keytab or self.keytab(service),
                "--service", self.principal(service),
                "--user", user if enterprise else self.principal(user),
                "--target", target]
        if bindings is not None:
            args += ["--bindings-hex", bindings.hex()]
        if enterprise:
            args.append("--enterprise")
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                           env=self.env())
        try:
            d = json.loads(p.stdout)
        except ValueError:
            raise RuntimeError(f"kdc.py s4u failed ({p.returncode}): {p.stderr.strip()}")
        return S4UResult(d)


# ---- the child: GSSAPI under /usr/bin/python3 -------------------------------------

def _gss_status_text(err, code, is_major):
    """gss_display_status of <code>, every message joined."""
    try:
        texts = err.get_all_statuses(code, is_major)
    except Exception:
        return None
    return "; ".join(t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
                     for t in texts)


def _s4u_main(argv):
    import argparse
    p = argparse.ArgumentParser(prog="kdc.py s4u")
    p.add_argument("--keytab", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--target", default=EAS_SERVICE)
    p.add_argument("--bindings-hex")
    p.add_argument("--enterprise", action="store_true")
    a = p.parse_args(argv)

    import gssapi
    import gssapi.raw as gr
    krb5 = gssapi.OID.from_int_seq("1.2.840.113554.1.2.2")
    enterprise_nt = gssapi.OID.from_int_seq("1.2.840.113554.1.2.2.6")
    out = {"ok": False, "stage": "acquire"}
    t0 = time.monotonic()
    try:
        store = {b"client_keytab": a.keytab.encode(),
                 b"ccache": f"MEMORY:s4u-{os.getpid()}".encode()}
        svc = gssapi.Credentials(
            name=gssapi.Name(a.service, gssapi.NameType.kerberos_principal),
            usage="initiate", mechs=[krb5], store=store)
        out["stage"] = "s4u2self"
        who = gssapi.Name(a.user, enterprise_nt if a.enterprise
                          else gssapi.NameType.kerberos_principal)
        imp = svc.impersonate(who, mechs=[krb5], usage="initiate")
        out["impersonated"] = str(imp.name)
        out["stage"] = "s4u2proxy"
        cb = None
        if a.bindings_hex is not None:
            cb = gr.ChannelBindings(application_data=bytes.fromhex(a.bindings_hex))
        ctx = gssapi.SecurityContext(
            name=gssapi.Name(a.target, gssapi.NameType.hostbased_service), creds=imp,
            usage="initiate", mech=krb5, channel_bindings=cb)
        token = ctx.step()
        out.update(ok=True, stage="done", token=base64.b64encode(token).decode("ascii"),
                   flags=int(ctx.actual_flags), major=0, minor=0)
    except gssapi.exceptions.GSSError as e:
        out.update(major=e.maj_code, minor=e.min_code, error=str(e),
                   major_text=_gss_status_text(e, e.maj_code, True),
                   minor_text=_gss_status_text(e, e.min_code, False))
    out["seconds"] = time.monotonic() - t0
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "s4u":
        sys.exit(_s4u_main(sys.argv[2:]))
    # kdc.py DIR [USER]: a smoke test of the fixture.
    k = Kdc(sys.argv[1] if len(sys.argv) > 1 else None)
    for u in sys.argv[2:] or ["alice", "carol"]:
        print(u, k.s4u(u))
