"""certmapd -t -c FILE: a table of bad configurations (exit 1, FILE:LINE: reason on
stderr), good ones (exit 0, "FILE: configuration OK"), the shipped example, and
--version / --help / --help-config. Python standard library only."""
import os
import re
import shutil
import subprocess
import sys
import tempfile

from harness import private_hosts

SRC = os.environ.get("CERTMAPD_SOURCE_DIR",
                     os.path.abspath(os.path.join(os.path.dirname(__file__), "../..")))
BIN = os.environ.get("CERTMAPD_BIN", os.path.join(SRC, "build", "certmapd"))
PKI = os.environ.get("CERTMAPD_TEST_PKI", os.path.join(SRC, "build", "test-pki"))


def pki(name):
    return os.path.join(PKI, name)


def base(backend="http://127.0.0.1:9"):
    """A valid configuration, as lines; real certificates since -t loads them."""
    return [
        "[server]",                                         # 1
        "listen = 127.0.0.1:8443",                          # 2
        "[tls]",                                            # 3
        f"certificate = {pki('server-chain.pem')}",         # 4
        f"private_key = {pki('server.key')}",               # 5
        "[client_certificate]",                             # 6
        f"trust_anchors = {pki('trust-anchors.pem')}",      # 7
        f"trusted_issuers = {pki('trusted-issuers.pem')}",  # 8
        f"crl_file = {pki('crl.pem')}",                     # 9
        "[backend]",                                        # 10
        f"url = {backend}",                                 # 11
    ]


N = len(base())  # appended lines start at N + 1


def without(lines, prefix):
    return [l for l in lines if not l.startswith(prefix)]


# (name, lines, line number or None for "FILE: reason", phrase on stderr)
BAD = [
    ("unknown section", base() + ["[sever]"], N + 1, 'unknown section "sever"'),
    ("unknown key", base() + ["[server]", "wrokers = 2"], N + 2,
     '[server] unknown key "wrokers"'),
    ("unknown key in location", base() + ["[location /eas]", "mode = accept"], N + 2,
     '[location /eas] unknown key "mode"'),
    ("not a number", base() + ["[server]", "workers = abc"], N + 2,
     '[server] workers: "abc" is not a number (expected 0..1024)'),
    ("out of bounds", base() + ["[server]", "workers = 5000"], N + 2,
     '"5000" is out of range (expected 0..1024)'),
    ("duplicate key", base() + ["[server]", "workers = 2", "workers = 3"], N + 3,
     "workers: duplicate key (first set at line %d)" % (N + 2)),
    ("duplicate across repeated section", base() + ["[tls]", "min_protocol = TLSv1.3",
                                                    "[tls]", "min_protocol = TLSv1.2"],
     N + 4, "duplicate key"),
    ("bad size", base() + ["[server]", "max_request_head = 32Q"], N + 2, "unknown suffix"),
    ("size overflow", base() + ["[buffering]", "upload_read_ahead_size = 99999999999999999G"],
     N + 2, "too large"),
    ("size out of range", base() + ["[buffering]", "upload_read_ahead_size = 2G"], N + 2,
     "out of range (expected 0..1G)"),
    ("bad duration", base() + ["[backend]", "read_timeout = 10 minutes"], N + 2,
     "unknown unit"),
    ("bad bool", base() + ["[server]", "detailed_errors = sometimes"], N + 2,
     "not a boolean"),
    ("bad ciphers", base() + ["[tls]", "ciphers = ECDHE-ECDSA-AES128-GCM-SHA256:NO-SUCH-CIPHER"],
     N + 2, '[tls] ciphers: "NO-SUCH-CIPHER" matches no cipher this OpenSSL knows'),
    ("TLS 1.3 suite in ciphers", base() + ["[tls]", "ciphers = TLS_AES_256_GCM_SHA384"], N + 2,
     "[tls] ciphers: \"TLS_AES_256_GCM_SHA384\" is a TLS 1.3 suite: those go in ciphersuites"),
    ("ciphers leaving none", base() + ["[tls]", "ciphers = ECDHE:!ECDHE"], N + 2,
     "[tls] ciphers: \"ECDHE:!ECDHE\" leaves no TLS 1.2 cipher"),
    ("bad ciphersuites", base() + ["[tls]", "", "ciphersuites = TLS_AES_128_GCM_SHA256:AES128"],
     N + 3, '[tls] ciphersuites: "AES128" is not a TLS 1.3 suite this OpenSSL knows'),
    ("bad groups", base() + ["[tls]", "groups = X25519:brainpoolP999r1"], N + 2,
     '[tls] groups: "brainpoolP999r1" is not a group this OpenSSL knows'),
    ("group twice", base() + ["[tls]", "groups = secp384r1:P-384"], N + 2,
     "[tls] groups: \"secp384r1:P-384\" names a group twice"),
    ("ciphers unusable with the EC certificate",
     base() + ["[tls]", "ciphers = ECDHE-RSA-AES128-GCM-SHA256"], N + 2,
     "[tls] ciphers: no TLS 1.2 cipher of the list can be used with the EC key"),
    ("bad enum", base() + ["[client_certificate]", "mode = optional"], N + 2,
     '"optional" is not one of ignore, accept, require'),
    ("unreadable file", without(base(), "crl_file") + ["[client_certificate]",
                                                       "crl_file = /nonexistent/crl.pem"],
     N + 1,
     '[client_certificate] crl_file: cannot read "/nonexistent/crl.pem": '
     "No such file or directory"),
    ("directory as file", base() + ["[ldap]", "ca_file = /tmp"], N + 2, "not a regular file"),
    ("syntax error", base() + ["[server]", "this line has no equals sign"], N + 2,
     "syntax error"),
    ("unclosed section", base() + ["[server"], N + 1, "syntax error"),
    ("key before any section", ["workers = 1"] + base(), 1, "outside of any section"),
    ("long line", base() + ["; " + "x" * 300], N + 1, "longer than"),
    ("listen without port", base() + ["[server]", "listen = 127.0.0.2"], N + 2,
     "not HOST:PORT"),
    ("bad backend url", without(base(), "url") + ["url = http://eas/owa"], N, "without path"),
    ("bad ldap uri", base() + ["[ldap]", "uri = ldapz://dc1"], N + 2, "not an ldap://"),
    ("bad methods", base() + ["[mapping]", "methods = sid, upn, sid"], N + 2, "twice"),
    ("location without slash", base() + ["[location eas]"], N + 1, 'must start with "/"'),
    ("duplicate location", base() + ["[location /eas]", "[location /EAS]"], N + 2,
     "duplicate location (first at line %d)" % (N + 1)),
    ("missing certificate", without(base(), "certificate"), 3, "[tls] certificate is required"),
    ("missing backend url", without(base(), "url"), 10, "[backend] url is required"),
    ("missing backend section", base()[:9], None, "[backend] url is required"),
    ("require without trust anchors", without(base(), "trust_anchors"), 6,
     "mode = require (the default) needs trust_anchors"),
    ("location require without trust anchors",
     without(base(), "trust_anchors") + ["[client_certificate]", "mode = ignore",
                                         "[location /eas]", "client_certificate = accept"],
     N + 3, "[location /eas] client_certificate = accept needs"),
    ("mapping ldap without uri", base() + ["[mapping]", "source = ldap"], N + 2,
     "source = ldap needs [ldap] uri"),
    ("mapping ldap without base_dn", base() + ["[mapping]", "[ldap]", "uri = ldaps://dc1"],
     N + 1, "source = ldap needs [ldap] base_dn"),
    ("mapping ldif without file", base() + ["[mapping]", "source = ldif"], N + 2,
     "source = ldif needs ldif_file"),
    ("bind_dn without password", base() + ["[ldap]", "bind_dn = svc@corp"], N + 2,
     "bind_dn needs bind_password_file"),
]


def file_bad_cases(tmp):
    """Bad configurations that start-up refuses after loading the file (what a
    named file holds, the backend's name, the access log's directory): -t must
    refuse each of them too, with the line of the key. Same shape as BAD."""
    notpem = os.path.join(tmp, "not.pem")
    empty = os.path.join(tmp, "empty.secret")
    nul = os.path.join(tmp, "nul.secret")
    with open(notpem, "w") as f:
        f.write("this is not a PEM file\n")
    open(empty, "w").close()
    secret = os.path.join(tmp, "good.secret")
    with open(secret, "w") as f:
        f.write("Passw0rd!Svc\n")
    with open(nul, "wb") as f:
        f.write(b"Passw\0rd\n")
    ldap = ["[mapping]", "[ldap]", "uri = ldaps://127.0.0.1", "base_dn = DC=corp,DC=example,DC=test"]
    return [
        ("mapping ldap without bind_dn", base() + ldap, N + 1,
         "[mapping] source = ldap needs [ldap] bind_dn and bind_password_file"),
        ("empty password file", base() + ldap + ["bind_dn = svc@corp", f"bind_password_file = {empty}"],
         N + 6, f'[ldap] bind_password_file: "{empty}" is empty'),
        ("NUL in the password", base() + ldap + ["bind_dn = svc@corp", f"bind_password_file = {nul}"],
         N + 6, "NUL byte"),
        ("certificate not PEM", without(base(), "certificate") + ["[tls]", f"certificate = {notpem}"],
         N + 1, f"[tls] certificate {notpem}"),
        ("key of another certificate", without(base(), "private_key")
         + ["[tls]", f"private_key = {pki('good.key')}"], N + 1, "[tls] private_key"),
        ("trust anchors not PEM", without(base(), "trust_anchors")
         + ["[client_certificate]", f"trust_anchors = {notpem}"], N + 1,
         f"[client_certificate] trust_anchors {notpem}"),
        ("crl_file without a CRL", without(base(), "crl_file")
         + ["[client_certificate]", f"crl_file = {pki('trust-anchors.pem')}"], N + 1, "no CRL found"),
        ("backend ca_file not PEM", without(base("https://127.0.0.1:8443"), "url")
         + [f"url = https://127.0.0.1:8443", f"ca_file = {notpem}"], N + 1,
         "[backend] ca_file: cannot load"),
        ("backend name that does not resolve", without(base(), "url") + ["url = http://eas.invalid"],
         N, '[backend] url: cannot resolve "eas.invalid"'),
        ("delegation without mapping", base() + ["[delegation]", "mode = kerberos",
                                                 "principal = svc@CORP", f"keytab = {notpem}"],
         N + 2, "[delegation] mode = kerberos needs a [mapping] section"),
        ("delegation without keytab", base() + ldap + ["bind_dn = svc@corp",
                                                       f"bind_password_file = {secret}",
                                                       "[delegation]", "mode = kerberos",
                                                       "principal = svc@CORP"],
         N + 8, "[delegation] mode = kerberos needs principal and keytab"),
        ("delegation principal without realm", base() + ldap + [
            "bind_dn = svc@corp", f"bind_password_file = {secret}", "[delegation]",
            "mode = kerberos", "principal = svc-seg", f"keytab = {notpem}"],
         N + 9, '[delegation] principal "svc-seg" is not NAME@REALM'),
        ("delegation target_spn not HTTP/", base() + ldap + [
            "bind_dn = svc@corp", f"bind_password_file = {secret}", "[delegation]",
            "mode = kerberos", "principal = svc@CORP", f"keytab = {notpem}",
            "target_spn = eas.corp"],
         N + 11, '[delegation] target_spn "eas.corp" is not HTTP/HOST'),
        ("delegation keytab that is no keytab", base() + ldap + [
            "bind_dn = svc@corp", f"bind_password_file = {secret}", "[delegation]",
            "mode = kerberos", "principal = svc@CORP", f"keytab = {notpem}"],
         N + 10, f'[delegation] keytab: "{notpem}" holds no key for [delegation] principal svc@CORP'),
        ("access log in a missing directory", base() + ["[server]", "access_log = /nonexistent/a.log"],
         N + 2, '[server] access_log: cannot open "/nonexistent/a.log"'),
    ]


def good_cases(tmp):
    ldif = os.path.join(tmp, "users.ldif")
    with open(ldif, "w") as f:
        f.write("dn: CN=alice,CN=Users,DC=corp,DC=example,DC=test\ncn: alice\n")
    return [
        ("base", base()),
        ("ipv6 and https backend", base("https://[::1]:8443/") + [
            "[server]", "listen = [::1]:8444", "workers = 1"]),
        ("mapping from ldif, locations in any order", [
            "[location /Microsoft-Server-ActiveSync]", "mapping = on",
            "[location /public]", "client_certificate = ignore", "mapping = off",
        ] + base() + ["[mapping]", "source = ldif", f"ldif_file = {ldif}",
                      "methods = altsecid upn", "enforcement = compatibility",
                      "[buffering]", "upload_read_ahead_size = 100M"]),
        ("tls algorithms in OpenSSL syntax", base() + [
            "[tls]", "ciphers = ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL",
            "ciphersuites = TLS_AES_128_GCM_SHA256 : TLS_CHACHA20_POLY1305_SHA256",
            "groups = P-384:X25519:P-256"]),
        ("TLS 1.3 only, ciphers for another key type", base() + [
            "[tls]", "min_protocol = TLSv1.3", "ciphers = ECDHE-RSA-AES128-GCM-SHA256"]),
        ("certificates ignored everywhere",
         [l for l in base() if not l.startswith(("trust_anchors", "trusted_issuers", "crl_file"))]
         + ["[client_certificate]", "mode = ignore"]),
    ]


def example_conf(tmp):
    """The shipped example with its /etc/certmapd files replaced by real ones."""
    secret = os.path.join(tmp, "ldap.secret")
    with open(secret, "w") as f:
        f.write("Passw0rd!Svc\n")
    files = {
        "server-chain.pem": pki("server-chain.pem"),
        "server.key": pki("server.key"),
        "root-ca.pem": pki("trust-anchors.pem"),
        "issuing-ca.pem": pki("trusted-issuers.pem"),
        "ldap.secret": secret,
        "ldap-ca.pem": pki("root-ca.crt"),
    }
    with open(os.path.join(SRC, "conf", "certmapd.example.conf")) as f:
        text = f.read()
    unknown = set()

    def sub(m):
        if m.group(1) not in files:
            unknown.add(m.group(1))
            return m.group(0)
        return files[m.group(1)]

    text = "".join(l if l.lstrip().startswith((";", "#"))
                   else re.sub(r"/etc/certmapd/([\w.-]+)", sub, l)
                   for l in text.splitlines(keepends=True))
    if unknown:
        raise AssertionError(f"example names files this test does not know: {sorted(unknown)}")
    return text


def run(args, hosts=None, workdir=None):
    """certmapd ARGS; with <hosts>, the text of the only name database it sees:
    /etc/hosts, with no DNS (-t resolves the backend's name, as start-up does)."""
    wrap = []
    if hosts is not None:
        wrap = private_hosts(hosts, workdir, nsswitch="hosts: files\n")
    return subprocess.run(wrap + [BIN] + args, capture_output=True, text=True, timeout=60)


def main():
    if not os.path.exists(pki("server-chain.pem")):
        subprocess.run([os.path.join(SRC, "tests", "pki", "mkpki.sh"), PKI], check=True,
                       stdout=subprocess.DEVNULL)
    tmp = tempfile.mkdtemp(prefix="certmapd-conf-e2e-")
    passed = failed = 0

    def report(name, ok, detail=""):
        nonlocal passed, failed
        print(f"{'PASS' if ok else 'FAIL'} {name}{'' if ok else ': ' + detail}", flush=True)
        passed += ok
        failed += not ok

    def write(name, text):
        path = os.path.join(tmp, re.sub(r"\W+", "-", name) + ".conf")
        with open(path, "w") as f:
            f.write(text)
        return path

    try:
        for name, lines, line, phrase in BAD + file_bad_cases(tmp):
            path = write(name, "\n".join(lines) + "\n")
            # Names resolve from a hosts file only: no case waits for DNS.
            r = run(["-t", "-c", path], hosts="127.0.0.1 localhost\n", workdir=tmp)
            prefix = f"{path}:{line}: " if line else f"{path}: "
            ok = (r.returncode == 1 and r.stderr.startswith(prefix) and phrase in r.stderr
                  and "configuration OK" not in r.stdout)
            report(f"bad: {name}", ok,
                   f"exit {r.returncode}, stderr {r.stderr.strip()!r}; want {prefix!r} + {phrase!r}")

        for name, lines in good_cases(tmp):
            path = write(name, "\n".join(lines) + "\n")
            r = run(["-t", "-c", path])
            ok = r.returncode == 0 and r.stdout.strip() == f"{path}: configuration OK"
            report(f"good: {name}", ok,
                   f"exit {r.returncode}, stdout {r.stdout.strip()!r}, stderr {r.stderr.strip()!r}")

        try:
            path = write("example", example_conf(tmp))
            # The example's backend, eas.corp.example.test, as a site's DNS would have it.
            r = run(["-t", "-c", path], hosts="127.0.0.1 localhost\n127.0.0.1 eas.corp.example.test\n",
                  workdir=tmp)
            report("good: shipped example", r.returncode == 0 and "configuration OK" in r.stdout,
                   f"exit {r.returncode}, stderr {r.stderr.strip()!r}")
        except (AssertionError, OSError) as e:
            report("good: shipped example", False, str(e))

        missing = os.path.join(tmp, "no-such.conf")
        r = run(["-t", "-c", missing])
        report("bad: config file missing",
               r.returncode == 1 and r.stderr.startswith(f"{missing}: cannot open: "),
               f"exit {r.returncode}, stderr {r.stderr.strip()!r}")

        r = run(["--version"])
        report("--version", r.returncode == 0 and re.match(r"certmapd \d+\.\d+", r.stdout)
               is not None, f"exit {r.returncode}, stdout {r.stdout!r}")
        r = run(["--help"])
        report("--help", r.returncode == 0 and "-t" in r.stdout and "-c" in r.stdout,
               f"exit {r.returncode}, stdout {r.stdout!r}")
        r = run(["--help-config"])
        keys = re.findall(r"^\[([a-z_]+)[^\]]*\] ([a-z_]+) =", r.stdout, re.M)
        report("--help-config", r.returncode == 0 and ("server", "listen") in keys
               and ("location", "client_certificate") in keys and len(keys) >= 40
               and "IIS: serverRuntime uploadReadAheadSize" in r.stdout,
               f"exit {r.returncode}, {len(keys)} keys")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not passed else 0)


if __name__ == "__main__":
    main()
