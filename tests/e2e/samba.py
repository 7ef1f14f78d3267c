"""The Samba AD DC of the ctest fixture `samba`, and the directory edits tests make.

Python 3 standard library, ldap-utils (ldapsearch/ldapadd/ldapmodify/ldapdelete)
and tests/samba/samba-ad.sh. Accounts are written as Administrator over LDAPS
(passwords through unicodePwd, which AD accepts only on an encrypted connection),
which is what an AD administrator would do and takes milliseconds, where one
samba-tool run takes about a second.

    from samba import Samba
    ad = Samba()                      # CERTMAPD_SAMBA_DIR, started by the fixture
    ad.user_create("alice", upn="alice@corp.example.test")
    ad.set_altsecids("alice", ["X509:<I>DC=test,DC=example,DC=corp,CN=Corp Issuing CA<SR>0a1b"])
    sid = ad.user_sid("alice")        # "S-1-5-21-…"
"""
import base64
import os
import struct
import subprocess

SRC = os.environ.get("CERTMAPD_SOURCE_DIR",
                     os.path.abspath(os.path.join(os.path.dirname(__file__), "../..")))
SCRIPT = os.path.join(SRC, "tests", "samba", "samba-ad.sh")

REALM = "CORP.EXAMPLE.TEST"
DOMAIN = "CORP"
BASE_DN = "DC=corp,DC=example,DC=test"
ADMIN_DN = "Administrator@corp.example.test"
ADMIN_PASSWORD = "Passw0rd!Admin"
SVC_DN = "svc-seg@corp.example.test"
SVC_PASSWORD = "Passw0rd!Svc"

UF_ACCOUNTDISABLE = 0x2
UF_NORMAL_ACCOUNT = 0x200
UF_WORKSTATION_TRUST_ACCOUNT = 0x1000

TIMEOUT = 30


class SambaError(RuntimeError):
    pass


def sid_from_bytes(b):
    """objectSid (binary) as "S-1-5-21-…": revision, count, 48-bit big-endian
    authority, then count little-endian 32-bit sub-authorities."""
    if len(b) < 8:
        raise ValueError("objectSid shorter than 8 bytes")
    rev, count = b[0], b[1]
    if len(b) != 8 + 4 * count:
        raise ValueError(f"objectSid of {len(b)} bytes for {count} sub-authorities")
    auth = int.from_bytes(b[2:8], "big")
    subs = struct.unpack(f"<{count}I", b[8:])
    return "S-%d-%d" % (rev, auth) + "".join(f"-{s}" for s in subs)


def sid_to_bytes(sid):
    """"S-1-5-21-…" back to objectSid's binary form."""
    parts = sid.split("-")
    if len(parts) < 3 or parts[0] != "S":
        raise ValueError(f"not a SID: {sid!r}")
    rev, auth, subs = int(parts[1]), int(parts[2]), [int(p) for p in parts[3:]]
    return bytes([rev, len(subs)]) + auth.to_bytes(6, "big") + struct.pack(f"<{len(subs)}I", *subs)


def _ldif_value(attr, value):
    """One LDIF line; base64 when the value is not a safe string."""
    if isinstance(value, bytes):
        raw = value
    else:
        raw = value.encode("utf-8")
    safe = (raw and raw[0:1] not in (b" ", b":", b"<") and raw[-1:] != b" "
            and all(0x20 <= c < 0x7F for c in raw))
    if safe:
        return f"{attr}: {raw.decode('ascii')}\n"
    return f"{attr}:: {base64.b64encode(raw).decode('ascii')}\n"


def _unicode_pwd(password):
    return ('"' + password + '"').encode("utf-16-le")


class Samba:
    """One Samba AD DC directory made by samba-ad.sh (default: $CERTMAPD_SAMBA_DIR)."""

    def __init__(self, directory=None):
        directory = directory or os.environ.get("CERTMAPD_SAMBA_DIR")
        if not directory:
            raise SambaError("no Samba directory: set CERTMAPD_SAMBA_DIR (ctest fixture samba)")
        self.dir = os.path.abspath(directory)
        # libldap checks "localhost" against the machine's host name, not against
        # "localhost": the DC's certificate names IP:127.0.0.1, so connect by address.
        self.ldaps_uri = "ldaps://127.0.0.1"
        self.ldap_uri = "ldap://127.0.0.1"   # StartTLS only: AD refuses binds in clear
        self.ca_file = os.path.join(self.dir, "private", "tls", "ca.pem")
        self.base_dn = BASE_DN
        self.realm = REALM
        self.netbios = DOMAIN
        self.bind_dn = SVC_DN
        self.password_file = os.path.join(self.dir, "svc.secret")
        self.smb_conf = os.path.join(self.dir, "etc", "smb.conf")

    # ---- the server ------------------------------------------------------------

    def _script(self, verb, timeout=180):
        r = subprocess.run([SCRIPT, verb, self.dir], capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode != 0 and verb != "status":
            raise SambaError(f"samba-ad.sh {verb} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def provision(self):
        self._script("provision")
        return self

    def start(self):
        """Provisions if needed and starts; returns once LDAPS answers."""
        self._script("provision")
        self._script("start")
        return self

    def stop(self):
        """Stops the DC; returns once port 636 is closed."""
        self._script("stop")
        return self

    def running(self):
        return self._script("status").returncode == 0

    def env(self):
        e = dict(os.environ)
        e.update(LDAPTLS_CACERT=self.ca_file, LDAPTLS_REQCERT="demand")
        return e

    # ---- raw LDAP as Administrator ---------------------------------------------

    def _ldap(self, tool, args=(), ldif=None, ok=(0,)):
        cmd = [tool, "-H", self.ldaps_uri, "-x", "-D", ADMIN_DN, "-w", ADMIN_PASSWORD,
               "-o", "nettimeout=10"] + list(args)
        r = subprocess.run(cmd, input=ldif.encode() if ldif is not None else None,
                           capture_output=True, timeout=TIMEOUT, env=self.env())
        if r.returncode not in ok:
            raise SambaError(f"{tool} failed ({r.returncode}): "
                             f"{r.stderr.decode(errors='replace').strip()}")
        return r

    def search(self, base, scope="sub", filt="(objectClass=*)", attrs=()):
        """[(dn, {attr: [bytes, …]})], base64 already decoded; referrals left out."""
        r = self._ldap("ldapsearch", ["-LLL", "-o", "ldif-wrap=no", "-b", base, "-s", scope,
                                      filt] + list(attrs), ok=(0, 32))
        out, dn, cur = [], None, None
        for line in r.stdout.decode("utf-8").splitlines() + [""]:
            if not line:
                if dn is not None:
                    out.append((dn, cur))
                dn, cur = None, None
                continue
            if line.startswith("#") or line.startswith("ref:"):
                continue
            attr, _, rest = line.partition(":")
            if rest.startswith(":"):
                val = base64.b64decode(rest[1:].strip())
            else:
                val = rest[1:].encode("utf-8") if rest.startswith(" ") else rest.encode("utf-8")
            if attr == "dn":
                dn, cur = val.decode("utf-8"), {}
            elif cur is not None:
                cur.setdefault(attr, []).append(val)
        return out

    def modify(self, ldif):
        self._ldap("ldapmodify", ldif=ldif)

    def _find(self, name, attrs=()):
        filt = f"(sAMAccountName={name})"
        found = self.search(self.base_dn, "sub", filt, list(attrs) or ["dn"])
        return found[0] if found else (None, None)

    # ---- accounts ---------------------------------------------------------------

    def user_dn(self, name):
        """distinguishedName of sAMAccountName <name> (users, or computers with the $)."""
        dn, _ = self._find(name)
        if dn is None:
            raise SambaError(f"no account {name!r}")
        return dn

    def user_exists(self, name):
        return self._find(name)[0] is not None

    def user_delete(self, name):
        dn, _ = self._find(name)
        if dn is not None:
            self._ldap("ldapdelete", [dn])

    def user_create(self, name, upn=None, password="Passw0rd!User1", ou="CN=Users",
                    disabled=False):
        """Creates (after deleting one of that name) an enabled user; returns its DN.
        <upn> None: no userPrincipalName at all (AD allows that)."""
        self.user_delete(name)
        dn = f"CN={name},{ou},{self.base_dn}"
        uac = UF_NORMAL_ACCOUNT | (UF_ACCOUNTDISABLE if disabled else 0)
        ldif = (f"dn: {dn}\nchangetype: add\nobjectClass: user\n"
                + _ldif_value("sAMAccountName", name)
                + (_ldif_value("userPrincipalName", upn) if upn else "")
                + _ldif_value("unicodePwd", _unicode_pwd(password))
                + f"userAccountControl: {uac}\n")
        self.modify(ldif)
        return dn

    def user_disable(self, name):
        dn, attrs = self._find(name, ["userAccountControl"])
        if dn is None:
            raise SambaError(f"no account {name!r}")
        uac = int(attrs["userAccountControl"][0]) | UF_ACCOUNTDISABLE
        self.modify(f"dn: {dn}\nchangetype: modify\nreplace: userAccountControl\n"
                    f"userAccountControl: {uac}\n-\n")

    def user_enable(self, name):
        dn, attrs = self._find(name, ["userAccountControl"])
        if dn is None:
            raise SambaError(f"no account {name!r}")
        uac = int(attrs["userAccountControl"][0]) & ~UF_ACCOUNTDISABLE
        self.modify(f"dn: {dn}\nchangetype: modify\nreplace: userAccountControl\n"
                    f"userAccountControl: {uac}\n-\n")

    def user_sid(self, name):
        """objectSid of <name> as "S-1-5-21-…"."""
        dn, attrs = self._find(name, ["objectSid"])
        if dn is None or "objectSid" not in attrs:
            raise SambaError(f"no objectSid for {name!r}")
        return sid_from_bytes(attrs["objectSid"][0])

    def get_attr(self, name, attr):
        """Values of <attr> of <name> as str (bytes when not UTF-8); [] if none."""
        dn, attrs = self._find(name, [attr])
        if dn is None:
            raise SambaError(f"no account {name!r}")
        out = []
        for v in next((vals for a, vals in attrs.items() if a.lower() == attr.lower()), []):
            try:
                out.append(v.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(v)
        return out

    def set_altsecids(self, name, values):
        """Replaces altSecurityIdentities of <name> with <values> ([] removes them)."""
        self.set_attr(name, "altSecurityIdentities", list(values))

    def set_attr(self, name, attr, value):
        """Replaces <attr> of <name>: a value, a list of values, or None/[] to remove."""
        dn = self.user_dn(name)
        if value is None:
            values = []
        elif isinstance(value, (list, tuple)):
            values = list(value)
        else:
            values = [value]
        ldif = f"dn: {dn}\nchangetype: modify\nreplace: {attr}\n"
        for v in values:
            ldif += _ldif_value(attr, v if isinstance(v, bytes) else str(v))
        self.modify(ldif + "-\n")

    def computer_create(self, name, dns_host_name):
        """Creates (after deleting one of that name) computer account <name>$ with
        dNSHostName; returns its DN."""
        sam = name.upper().rstrip("$") + "$"
        self.user_delete(sam)
        dn = f"CN={name.rstrip('$')},CN=Computers,{self.base_dn}"
        ldif = (f"dn: {dn}\nchangetype: add\nobjectClass: computer\n"
                + _ldif_value("sAMAccountName", sam)
                + _ldif_value("dNSHostName", dns_host_name)
                + f"userAccountControl: {UF_WORKSTATION_TRUST_ACCOUNT}\n")
        self.modify(ldif)
        return dn


if __name__ == "__main__":
    # python3 samba.py DIR: a smoke test of the helpers against a running DC.
    import sys
    ad = Samba(sys.argv[1] if len(sys.argv) > 1 else None).start()
    ad.user_create("smoke", upn="smoke@corp.example.test", password="Passw0rd!Smoke")
    ad.set_altsecids("smoke", ["X509:<I>DC=test,DC=example,DC=corp,CN=Corp Issuing CA<SR>0A1B"])
    ad.user_disable("smoke")
    print(ad.user_dn("smoke"), ad.user_sid("smoke"), ad.get_attr("smoke", "userAccountControl"),
          ad.get_attr("smoke", "altSecurityIdentities"))
    ad.computer_create("ws1", "ws1.corp.example.test")
    print(ad.user_dn("WS1$"), ad.user_sid("WS1$"))
    ad.user_delete("smoke")
    ad.user_delete("WS1$")
