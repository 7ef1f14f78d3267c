#!/usr/bin/env bash
# mkpki.sh OUTDIR: the test PKI every certmapd test uses (layout: OUTDIR/README).
#
# Two hierarchies whose issuing CAs share one subject name, a server certificate,
# CRLs in three states, and client leaves in every shape the verifier and the
# mapper must judge: good, SID extension, expired, not yet valid, revoked, wrong
# or missing EKU, issued by the root, issued by the look-alike issuing CA, LDAP
# filter metacharacters, embedded NULs, invalid UTF-8, a huge subject.
# ECDSA P-256 throughout; every issuance goes through `openssl ca` and its
# database so that serials, revocation and CRLs are real.
#
# Idempotent: nothing is done if OUTDIR/.complete is newer than this script and
# its helper. The PKI is built in a temporary directory and renamed into place,
# so a concurrent reader never sees half of it.
set -euo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$1
case $OUT in /) echo "mkpki.sh: refusing OUTDIR /" >&2; exit 2 ;; esac
OUT=${OUT%/}

if [ -f "$OUT/.complete" ] && [ "$OUT/.complete" -nt "$HERE/mkpki.sh" ] &&
   [ "$OUT/.complete" -nt "$HERE/resign.py" ]; then
    exit 0
fi

mkdir -p "$(dirname "$OUT")"
W=$(mktemp -d "$OUT.tmp.XXXXXX")
trap 'rm -rf "$W"' EXIT
cd "$W"

BASE=/DC=test/DC=example/DC=corp
ISSUING_SUBJ="$BASE/CN=Corp Issuing CA"
UPN_OID=1.3.6.1.4.1.311.20.2.3

utc() { date -u -d "$1" +%Y%m%d%H%M%SZ; }
hex() { printf '%s' "$1" | od -An -tx1 -v | tr -d ' \n'; }

cat >ca.cnf <<'EOF'
# One [ca] section for every CA: the environment says which database and key.
[ca]
default_ca = ca_any

[ca_any]
dir = $ENV::CM_DB
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
crlnumber = $dir/crlnumber
certificate = $ENV::CM_CACERT
private_key = $ENV::CM_CAKEY
default_md = sha256
default_days = 825
default_crl_days = 30
policy = policy_any
unique_subject = no
email_in_dn = no
copy_extensions = none
crl_extensions = crl_ext

[policy_any]
commonName = optional

[crl_ext]
authorityKeyIdentifier = keyid:always

[v3_root]
basicConstraints = critical,CA:true
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[v3_issuing]
basicConstraints = critical,CA:true,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[v3_server]
basicConstraints = critical,CA:false
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF

# Requests carry the subject, UTF8String everywhere (as AD CS writes it).
cat >req.cnf <<'EOF'
[req]
distinguished_name = req_dn
string_mask = utf8only
utf8 = yes
[req_dn]
EOF

# newkey NAME: an ECDSA P-256 key in NAME.key.
newkey() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null
}

# newdb CA FIRST_SERIAL: an empty `openssl ca` database for CA.
newdb() {
    mkdir -p "db/$1/newcerts"
    : >"db/$1/index.txt"
    echo "$2" >"db/$1/serial"
    echo 1000 >"db/$1/crlnumber"
}

# ca CA ARGS...: `openssl ca` on CA's database, key and certificate. -preserveDN keeps
# the request's subject exactly (RDN order, repeated DCs); the config's `preserve`
# is not honoured by OpenSSL 3.0.
ca() {
    local who=$1
    shift
    CM_DB="db/$who" CM_CACERT="$who.crt" CM_CAKEY="$who.key" \
        openssl ca -config ca.cnf -batch -notext -preserveDN "$@" 2>ca.log ||
        { cat ca.log >&2; echo "mkpki.sh: openssl ca ($who) failed" >&2; exit 1; }
}

# mkroot NAME SUBJECT: a self-signed root CA.
mkroot() {
    newkey "$1"
    newdb "$1" "$2"
    openssl req -new -config req.cnf -key "$1.key" -subj "$3" -out "$1.csr"
    ca "$1" -selfsign -keyfile "$1.key" -in "$1.csr" -out "$1.crt" -extensions v3_root \
        -startdate "$(utc '-1 day')" -days 3650
}

# issue CA NAME SUBJECT EXTFILE EXTSECTION [openssl ca options...]: NAME.key, NAME.crt.
# Valid from an hour ago unless the options say otherwise (a later -startdate
# wins): a test running in the second of issuance must not see "not yet valid".
issue() {
    local who=$1 name=$2 subj=$3 extfile=$4 section=$5
    shift 5
    newkey "$name"
    openssl req -new -config req.cnf -key "$name.key" -subj "$subj" -multivalue-rdn \
        -out "$name.csr"
    ca "$who" -in "$name.csr" -out "$name.crt" -extfile "$extfile" -extensions "$section" \
        -startdate "$(utc '-1 hour')" "$@"
}

# files NAME ISSUER: NAME.chain.pem (leaf + issuer) and NAME.bundle.pem (key + chain).
files() {
    cat "$1.crt" "$2.crt" >"$1.chain.pem"
    cat "$1.key" "$1.crt" "$2.crt" >"$1.bundle.pem"
}

# leafext NAME SAN [EKU] [EXTRA LINES]: NAME.ext with a [leaf] section for a client leaf.
# SAN is "type = value" lines, written to their own section: a comma inside a
# value (ASN1 generator modifiers) must not split it.
leafext() {
    local eku=${3-clientAuth}
    {
        echo "[leaf]"
        echo "basicConstraints = critical,CA:false"
        echo "keyUsage = critical,digitalSignature"
        [ -n "$eku" ] && echo "extendedKeyUsage = $eku"
        echo "subjectAltName = @san"
        echo "subjectKeyIdentifier = hash"
        echo "authorityKeyIdentifier = keyid:always"
        printf '%s\n' "${4-}"
        echo "[san]"
        printf '%s\n' "$2"
    } >"$1.ext"
}

# user_san CN: the usual SAN of an AD user (UPN and e-mail, both CN@corp.example.test).
user_san() {
    printf 'otherName = %s;UTF8:%s\nemail = %s\n' "$UPN_OID" "$1@corp.example.test" \
        "$1@corp.example.test"
}

# --- CAs ---------------------------------------------------------------------
mkroot root-ca 01 "$BASE/CN=Corp Root CA"
mkroot other-root-ca 7001 "/CN=Other Root CA"

newkey issuing-ca
newdb issuing-ca 2B0000000011AC0000000012
openssl req -new -config req.cnf -key issuing-ca.key -subj "$ISSUING_SUBJ" -out issuing-ca.csr
ca root-ca -in issuing-ca.csr -out issuing-ca.crt -extensions v3_issuing \
    -startdate "$(utc '-1 day')" -days 3000

# Same subject as issuing-ca, another key and hierarchy: a name match is not trust.
newkey other-issuing-ca
newdb other-issuing-ca 9001
openssl req -new -config req.cnf -key other-issuing-ca.key -subj "$ISSUING_SUBJ" \
    -out other-issuing-ca.csr
ca other-root-ca -in other-issuing-ca.csr -out other-issuing-ca.crt -extensions v3_issuing \
    -startdate "$(utc '-1 day')" -days 3000

cat root-ca.crt other-root-ca.crt >trust-anchors.pem
cat issuing-ca.crt >trusted-issuers.pem

# --- server ------------------------------------------------------------------
# issuing-ca's first serial is the one LAB.md §4 uses: the good leaf takes it.
leafext good "$(user_san alice)"
issue issuing-ca good "$BASE/OU=Users/CN=alice" good.ext leaf
files good issuing-ca

newkey server
openssl req -new -config req.cnf -key server.key -subj /CN=localhost -out server.csr
ca issuing-ca -in server.csr -out server.crt -extensions v3_server -startdate "$(utc '-1 day')"
cat server.crt issuing-ca.crt >server-chain.pem

# --- client leaves -----------------------------------------------------------
SID=S-1-5-21-436880987-830612363-2677326092-1102
leafext sid "$(user_san sidalice)" clientAuth "1.3.6.1.4.1.311.25.2 = ASN1:SEQUENCE:sid_names
[sid_names]
name = IMPLICIT:0C,SEQUENCE:sid_other
[sid_other]
type = OID:1.3.6.1.4.1.311.25.2.1
value = EXPLICIT:0C,OCTETSTRING:$SID"
issue issuing-ca sid "$BASE/OU=Users/CN=sidalice" sid.ext leaf
files sid issuing-ca

leafext expired "$(user_san expired)"
issue issuing-ca expired "$BASE/OU=Users/CN=expired" expired.ext leaf \
    -startdate "$(utc '-30 days')" -enddate "$(utc '-1 day')"
files expired issuing-ca

leafext notyet "$(user_san notyet)"
issue issuing-ca notyet "$BASE/OU=Users/CN=notyet" notyet.ext leaf \
    -startdate "$(utc '+10 days')" -enddate "$(utc '+400 days')"
files notyet issuing-ca

leafext revoked "$(user_san revoked)"
issue issuing-ca revoked "$BASE/OU=Users/CN=revoked" revoked.ext leaf
files revoked issuing-ca
ca issuing-ca -revoke revoked.crt -crl_reason keyCompromise

leafext noeku "$(user_san noeku)" emailProtection
issue issuing-ca noeku "$BASE/OU=Users/CN=noeku" noeku.ext leaf
files noeku issuing-ca

leafext noekuext "$(user_san noekuext)" ""
issue issuing-ca noekuext "$BASE/OU=Users/CN=noekuext" noekuext.ext leaf
files noekuext issuing-ca

leafext byroot "$(user_san byroot)"
issue root-ca byroot "$BASE/OU=Users/CN=byroot" byroot.ext leaf
files byroot root-ca

leafext otherissuer "$(user_san otherissuer)"
issue other-issuing-ca otherissuer "$BASE/OU=Users/CN=otherissuer" otherissuer.ext leaf
files otherissuer other-issuing-ca

# LDAP filter and DN metacharacters everywhere a mapper might paste them.
leafext meta "otherName = $UPN_OID;UTF8:*)(uid=*))(|(uid=*@corp.example.test
email = a(b)*@corp.example.test"
issue issuing-ca meta "$BASE/OU=Users/CN=a*)(b\\\\" meta.ext leaf
files meta issuing-ca

# A UTF8String UPN holding a NUL: an OCTET STRING retagged as UTF8String (12),
# because the UTF8 generator refuses a NUL.
RETAG="otherName = $UPN_OID;IMPLICIT:12U,FORMAT:HEX,OCTETSTRING"
leafext nulupn "$RETAG:$(hex alice)00$(hex '@corp.example.test')"
issue issuing-ca nulupn "$BASE/OU=Users/CN=nulupn" nulupn.ext leaf
files nulupn issuing-ca

# Same trick for a UPN whose bytes are not UTF-8 (C3 28: a lead byte, then no continuation).
leafext badutf8upn "$RETAG:$(hex ali)c328$(hex '@corp.example.test')"
issue issuing-ca badutf8upn "$BASE/OU=Users/CN=badutf8upn" badutf8upn.ext leaf
files badutf8upn issuing-ca

# Subjects the CLI cannot write: issued with a placeholder, then rewritten and
# re-signed by issuing-ca (same serial, same extensions).
leafext nulcn "$(user_san nulcn)"
issue issuing-ca nulcn "$BASE/OU=Users/CN=alice_evil" nulcn.ext leaf
/usr/bin/python3 "$HERE/resign.py" nulcn.crt issuing-ca.key nulcn.crt \
    "$(hex alice_evil)=$(hex alice)00$(hex evil)"
files nulcn issuing-ca

leafext badutf8 "$(user_san badutf8)"
issue issuing-ca badutf8 "$BASE/OU=Users/CN=bad__utf8" badutf8.ext leaf
/usr/bin/python3 "$HERE/resign.py" badutf8.crt issuing-ca.key badutf8.crt \
    "$(hex bad__utf8)=$(hex bad)c328$(hex utf8)"
files badutf8 issuing-ca

# 20 RDNs, one of them an OU of 4 000 bytes (the CLI stops at 64).
LONG_SUBJ=$BASE
for i in $(seq 1 15); do
    LONG_SUBJ="$LONG_SUBJ/OU=Unit $i"
done
LONG_SUBJ="$LONG_SUBJ/OU=LONGOU/CN=long"
leafext long "$(user_san long)"
issue issuing-ca long "$LONG_SUBJ" long.ext leaf
LONG_OU=$(for i in $(seq 0 399); do printf 'ou%07d.' "$i"; done)
/usr/bin/python3 "$HERE/resign.py" long.crt issuing-ca.key long.crt \
    "$(hex LONGOU)=$(hex "$LONG_OU")"
files long issuing-ca

# --- CRLs --------------------------------------------------------------------
for who in issuing-ca root-ca other-root-ca other-issuing-ca; do
    ca "$who" -gencrl -crldays 30 -out "crl-$who.pem"
done
ca issuing-ca -gencrl -crl_lastupdate "$(utc '-40 days')" -crl_nextupdate "$(utc '-10 days')" \
    -out crl-issuing-ca-expired.pem
cat crl-issuing-ca.pem crl-root-ca.pem crl-other-root-ca.pem crl-other-issuing-ca.pem >crl.pem
cat crl-issuing-ca-expired.pem crl-root-ca.pem crl-other-root-ca.pem crl-other-issuing-ca.pem \
    >crl-expired.pem
cat crl-root-ca.pem crl-other-root-ca.pem crl-other-issuing-ca.pem >crl-missing.pem

rm -f ./*.csr ca.log
mkdir cnf
mv ./*.ext ./*.cnf cnf/
chmod 0644 ./*.pem ./*.crt
chmod 0600 ./*.key

cat >README <<'EOF'
Test PKI made by tests/pki/mkpki.sh (ECDSA P-256; `openssl ca` databases in db/, configs in cnf/).
root-ca.crt/.key             /DC=test/DC=example/DC=corp/CN=Corp Root CA, self-signed
issuing-ca.crt/.key          /DC=test/DC=example/DC=corp/CN=Corp Issuing CA, issued by root-ca
other-root-ca.crt/.key       /CN=Other Root CA, self-signed
other-issuing-ca.crt/.key    same subject as issuing-ca, another key, issued by other-root-ca
trust-anchors.pem            root-ca + other-root-ca
trusted-issuers.pem          issuing-ca only
server.crt/.key              CN=localhost, SAN DNS:localhost,IP:127.0.0.1, serverAuth, by issuing-ca
server-chain.pem             server.crt + issuing-ca.crt
crl.pem                      current CRLs (+30 d) of all four CAs; issuing-ca's lists revoked
crl-expired.pem              as crl.pem, but issuing-ca's CRL expired 10 days ago
crl-missing.pem              CRLs of root-ca, other-root-ca, other-issuing-ca; none of issuing-ca
crl-<ca>.pem                 each CA's current CRL alone; crl-issuing-ca-expired.pem the expired one
Each leaf NAME: NAME.crt, NAME.key, NAME.chain.pem (leaf + issuer), NAME.bundle.pem (key + chain).
Leaves, unless said: by issuing-ca, valid since 1 h ago, clientAuth, UPN = e-mail = CN@corp...
good                         /DC=test/DC=example/DC=corp/OU=Users/CN=alice, serial per LAB §4
sid                          CN=sidalice, SID extension S-1-5-21-436880987-830612363-2677326092-1102
expired                      notAfter yesterday
notyet                       notBefore in 10 days
revoked                      revoked (keyCompromise) in crl.pem
noeku                        EKU emailProtection only
noekuext                     no EKU extension
byroot                       issued directly by root-ca
otherissuer                  issued by other-issuing-ca (trusted anchor, look-alike issuer name)
meta                         CN=a*)(b\ , UPN *)(uid=*))(|(uid=*@corp..., e-mail a(b)*@corp...
nulupn                       UPN alice<NUL>@corp.example.test (UTF8String)
badutf8upn                   UPN ali<C3 28>@corp.example.test (UTF8String, not UTF-8)
nulcn                        CN alice<NUL>evil (UTF8String), re-signed by issuing-ca
badutf8                      CN bad<C3 28>utf8 (UTF8String, not UTF-8); OpenSSL 3.0 cannot parse it
long                         20 RDNs, one OU of 4000 bytes, re-signed by issuing-ca
EOF

touch .complete
trap - EXIT
if [ -e "$OUT" ]; then
    OLD=$(mktemp -d "$OUT.old.XXXXXX")
    mv "$OUT" "$OLD/"
    mv "$W" "$OUT"
    rm -rf "$OLD"
else
    mv "$W" "$OUT"
fi
