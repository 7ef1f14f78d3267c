"""Client certificates made by a test for its own accounts: issued by the
test PKI's issuing CA with the openssl CLI, with the UPN, e-mail, DNS name,
SID extension and serial a mapping case needs."""
import hashlib
import os
import subprocess

from harness import pki

# Random serials: the Samba DC of a test run outlives one test, and mappings
# written by an earlier run must never match a new certificate.
def _serial():
    n = int.from_bytes(os.urandom(8), "big") & 0x7FFFFFFFFFFFFFFF
    return n | 0x1000000000000000


class Leaf:
    def __init__(self, directory, name):
        self.key = os.path.join(directory, f"{name}.key")
        self.crt = os.path.join(directory, f"{name}.crt")
        self.chain = os.path.join(directory, f"{name}.chain.pem")
        self.serial = None

    @property
    def serial_rev(self):
        """The serial's bytes reversed, as altSecurityIdentities <SR> writes it."""
        h = self.serial
        return "".join(h[i:i + 2] for i in range(len(h) - 2, -2, -2))

    def curl_args(self):
        return ["--cert", self.chain, "--key", self.key]


ISSUER_ASI = "DC=test,DC=example,DC=corp,CN=Corp Issuing CA"


def issue(directory, name, cn=None, upn=None, email=None, dns=None, sid=None, ou="Users",
          eku="clientAuth", ski="hash", key="ec", san_uri=None):
    """Issues a leaf named <name> in <directory>; returns a Leaf. <key>: "ec" (P-256),
    "p384", "p521" or "rsa" (2048 bits). <san_uri>: a URI SAN (a string or a list), e.g.
    sid_url(sid)."""
    leaf = Leaf(directory, name)
    leaf.serial = f"{_serial():016X}"
    cn = cn or name
    # In a section, one name a line: a URI such as the SID URL holds commas.
    san = []
    if upn is not None:
        san.append(f"otherName.{len(san)} = 1.3.6.1.4.1.311.20.2.3;UTF8:{upn}")
    if email is not None:
        san.append(f"email.{len(san)} = {email}")
    if dns is not None:
        san.append(f"DNS.{len(san)} = {dns}")
    for uri in ([san_uri] if isinstance(san_uri, str) else (san_uri or [])):
        san.append(f"URI.{len(san)} = {uri}")
    ext = ["[v3]", "basicConstraints=critical,CA:false", "keyUsage=critical,digitalSignature",
           f"extendedKeyUsage={eku}", f"subjectKeyIdentifier={ski}",
           "authorityKeyIdentifier=keyid"]
    if san:
        ext.append("subjectAltName=@san_names")
    if sid is not None:
        ext += ["1.3.6.1.4.1.311.25.2=ASN1:SEQUENCE:sid_names", "[sid_names]",
                "name=IMPLICIT:0C,SEQUENCE:sid_other", "[sid_other]",
                "type=OID:1.3.6.1.4.1.311.25.2.1", f"value=EXPLICIT:0C,OCTETSTRING:{sid}"]
    if san:
        ext += ["[san_names]", *san]
    extfile = os.path.join(directory, f"{name}.ext")
    with open(extfile, "w") as f:
        f.write("\n".join(ext) + "\n")
    csr = os.path.join(directory, f"{name}.csr")
    subj = f"/DC=test/DC=example/DC=corp/OU={ou}/CN={cn}"
    run = lambda args: subprocess.run(args, check=True, capture_output=True, timeout=30)
    keyopts = {"ec": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
               "p384": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
               "p521": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"],
               "rsa": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]}[key]
    run(["openssl", "genpkey", *keyopts, "-out", leaf.key])
    run(["openssl", "req", "-new", "-key", leaf.key, "-subj", subj, "-out", csr])
    run(["openssl", "x509", "-req", "-in", csr, "-CA", pki("issuing-ca.crt"), "-CAkey",
         pki("issuing-ca.key"), "-set_serial", f"0x{leaf.serial}", "-days", "30", "-sha256",
         "-extfile", extfile, "-extensions", "v3", "-out", leaf.crt])
    with open(leaf.chain, "w") as out:
        out.write(open(leaf.crt).read())
        out.write(open(pki("issuing-ca.crt")).read())
    return leaf


def sid_url(sid):
    """The SAN URL that carries a SID (MS-PKCA 3.1.5.2.1.6)."""
    return f"tag:microsoft.com,2022-09-14:sid:{sid}"


def strong_altsecid(leaf):
    return f"X509:<I>{ISSUER_ASI}<SR>{leaf.serial_rev}"


def _der(crt):
    return subprocess.run(["openssl", "x509", "-in", crt, "-outform", "DER"], check=True,
                          capture_output=True, timeout=30).stdout


def _tlv(b, i):
    """(tag, start of contents, end) of the DER element at <i>."""
    tag, n = b[i], b[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(b[i:i + k], "big")
        i += k
    return tag, i, i + n


def cert_sha1(leaf):
    """The certificate's SHA-1 thumbprint, upper-case hex."""
    return hashlib.sha1(_der(leaf.crt)).hexdigest().upper()


def pubkey_sha1(leaf):
    """SHA-1 of the subjectPublicKey BIT STRING contents (less its unused-bits
    byte), read from the DER here, apart from certmapd."""
    b = _der(leaf.crt)
    _, i, _ = _tlv(b, 0)            # Certificate
    _, i, _ = _tlv(b, i)            # TBSCertificate: walk its fields
    for _ in range(6):              # [0] version, serial, signature, issuer, validity, subject
        _, _, i = _tlv(b, i)
    _, i, _ = _tlv(b, i)            # SubjectPublicKeyInfo
    _, _, i = _tlv(b, i)            # AlgorithmIdentifier
    tag, start, end = _tlv(b, i)    # BIT STRING
    assert tag == 0x03
    return hashlib.sha1(b[start + 1:end]).hexdigest().upper()
