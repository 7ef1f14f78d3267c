#!/usr/bin/python3
"""Rewrite subject attribute values of an issued certificate and sign it again.

The openssl CLI refuses to write names a hostile client could send: a CN with an
embedded NUL, a UTF8String that is not UTF-8, an OU longer than the 64-character
upper bound. mkpki.sh issues such certificates with `openssl ca` using a
placeholder value, then this script swaps the placeholder's bytes in the subject
for the real ones, re-encodes the DER lengths, and signs the new TBSCertificate
with the issuing CA's key through `openssl dgst` (ECDSA with SHA-256, the
algorithm `openssl ca` already wrote). Standard library only.

usage: resign.py IN.pem CA.key OUT.pem PLACEHOLDER_HEX=NEW_HEX [...]
"""
import base64
import subprocess
import sys


def read_tlv(buf, pos):
    """One DER TLV at <pos>: (tag byte, content start, content end)."""
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte tags are not used here")
    n = buf[pos + 1]
    pos += 2
    if n & 0x80:
        count = n & 0x7F
        if count == 0 or count > 4:
            raise ValueError("bad DER length")
        n = int.from_bytes(buf[pos:pos + count], "big")
        pos += count
    if pos + n > len(buf):
        raise ValueError("DER runs past its end")
    return tag, pos, pos + n


def children(buf, start, end):
    """The TLVs inside a constructed value, as (tag, raw bytes, content bytes)."""
    out = []
    pos = start
    while pos < end:
        tag, cs, ce = read_tlv(buf, pos)
        out.append((tag, buf[pos:ce], buf[cs:ce]))
        pos = ce
    return out


def encode(tag, content):
    n = len(content)
    if n < 0x80:
        head = bytes([tag, n])
    else:
        size = n.to_bytes((n.bit_length() + 7) // 8, "big")
        head = bytes([tag, 0x80 | len(size)]) + size
    return head + content


def patch_name(name, swaps, used):
    """Name = SEQUENCE OF SET OF SEQUENCE { type, value }: swap matching values."""
    _, cs, ce = read_tlv(name, 0)
    rdns = []
    for set_tag, _, set_body in children(name, cs, ce):
        atvs = []
        for atv_tag, _, atv_body in children(set_body, 0, len(set_body)):
            (oid_tag, oid_raw, _), (val_tag, val_raw, val) = children(atv_body, 0, len(atv_body))
            if val in swaps:
                used.add(val)
                val_raw = encode(val_tag, swaps[val])
            atvs.append(encode(atv_tag, oid_raw + val_raw))
        rdns.append(encode(set_tag, b"".join(atvs)))
    return encode(0x30, b"".join(rdns))


def main(argv):
    if len(argv) < 5:
        sys.exit(__doc__)
    src, cakey, dst = argv[1], argv[2], argv[3]
    swaps = {}
    for arg in argv[4:]:
        old, new = arg.split("=", 1)
        swaps[bytes.fromhex(old)] = bytes.fromhex(new)

    with open(src, encoding="ascii") as f:
        pem = f.read()
    b64 = pem.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
    der = base64.b64decode("".join(b64.split()))

    _, cs, ce = read_tlv(der, 0)
    tbs, sigalg, _ = children(der, cs, ce)
    fields = children(tbs[2], 0, len(tbs[2]))
    # version [0] is present in every v3 certificate: subject is the sixth field.
    if fields[0][0] != 0xA0:
        sys.exit("resign.py: expected a v3 certificate")
    used = set()
    raw = [f[1] for f in fields]
    raw[5] = patch_name(fields[5][1], swaps, used)
    if used != set(swaps):
        sys.exit("resign.py: placeholder not found in the subject")
    new_tbs = encode(0x30, b"".join(raw))

    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", cakey], input=new_tbs,
                         stdout=subprocess.PIPE, check=True).stdout
    cert = encode(0x30, new_tbs + sigalg[1] + encode(0x03, b"\x00" + sig))

    text = base64.b64encode(cert).decode("ascii")
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    with open(dst, "w", encoding="ascii") as f:
        f.write("-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n")


if __name__ == "__main__":
    main(sys.argv)
