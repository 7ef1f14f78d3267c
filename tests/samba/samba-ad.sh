#!/usr/bin/env bash
# samba-ad.sh provision|start|up|stop|status DIR: a throw-away Samba AD DC on loopback.
# (up = provision, then start: what the ctest fixture samba_setup runs.)
#
# The domain is CORP.EXAMPLE.TEST (NetBIOS CORP), Administrator's password is
# 'Passw0rd!Admin', the proxy's service account is svc-seg ('Passw0rd!Svc', also
# in DIR/svc.secret). LDAPS uses a server certificate this script issues itself
# for DNS:localhost and IP:127.0.0.1 from a small CA (DIR/private/tls/ca.pem), so
# clients verify the DC for real: connect to ldaps://127.0.0.1 (libldap replaces
# "localhost" by the machine's host name before checking names; see README.md).
#
# provision also sets up Kerberos constrained delegation (issue 12; see README.md):
# users alice, bob (disabled) and carol (sensitive, cannot be delegated); the
# backend's account eas-web with SPN HTTP/eas.corp.example.test; svc-seg with SPN
# HTTP/seg.corp.example.test, protocol transition and constrained delegation to
# HTTP/eas.corp.example.test; svc-nodeleg (SPN HTTP/nodeleg.corp.example.test,
# no delegation right); keytabs DIR/seg.keytab, DIR/nodeleg.keytab, DIR/eas.keytab;
# and DIR/krb5.conf (KRB5_CONFIG) with the KDC on 127.0.0.1. A DIR provisioned
# before this step existed gets it on its next provision (marker DIR/.kerberos).
#
# Only one Samba can hold the AD ports (88, 389, 636, ...) on 127.0.0.1, so start
# first stops a Samba of an earlier run that still holds them.
set -euo pipefail

ADMIN_PASS='Passw0rd!Admin'
SVC_PASS='Passw0rd!Svc'
ALICE_PASS='Passw0rd!Alice'
BOB_PASS='Passw0rd!Bob1'
CAROL_PASS='Passw0rd!Carol'
WEB_PASS='Passw0rd!Web1'
NODELEG_PASS='Passw0rd!NoDeleg'
SEG_SPN=HTTP/seg.corp.example.test
EAS_SPN=HTTP/eas.corp.example.test
NODELEG_SPN=HTTP/nodeleg.corp.example.test
REALM=CORP.EXAMPLE.TEST
DOMAIN=CORP
BASE_DN=DC=corp,DC=example,DC=test
START_TIMEOUT=60
# Samba's RPC endpoints default to 49152..65535, inside Linux's ephemeral range
# (32768..60999): a client connection of any test can hold one (even in
# TIME-WAIT) and the DC then fails to start. Below the range, away from it.
RPC_PORTS=2100-2199
STOP_TIMEOUT=20

usage() {
    echo "usage: $0 provision|start|up|stop|status DIR" >&2
    exit 2
}

[ $# -eq 2 ] || usage
CMD=$1
D=$2
case $D in "" | /) echo "samba-ad.sh: refusing DIR '$D'" >&2; exit 2 ;; esac
mkdir -p "$D"
D=$(cd "$D" && pwd)
CONF=$D/etc/smb.conf
TLS=$D/private/tls

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The pid file's process, if it is still a samba of this DIR.
own_pid() {
    local pid
    [ -f "$D/samba.pid" ] || return 1
    pid=$(cat "$D/samba.pid")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = samba ] || return 1
    # samba rewrites its command line; its stdout still tells which DIR it serves.
    [ "$(readlink "/proc/$pid/fd/1" 2>/dev/null)" = "$D/samba.log" ] || return 1
    echo "$pid"
}

# Sends <sig> to the process group led by <pid> (samba runs under setsid).
kill_group() {
    kill "-$2" -- "-$1" 2>/dev/null || kill "-$2" "$1" 2>/dev/null || true
}

wait_stopped() {
    local pid=$1 i
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
        if ! kill -0 "$pid" 2>/dev/null && ! port_open 636; then
            return 0
        fi
        sleep 0.1
    done
    kill_group "$pid" KILL
    for ((i = 0; i < 50; i++)); do
        port_open 636 || return 0
        sleep 0.1
    done
    echo "samba-ad.sh: port 636 still open after stopping samba $pid" >&2
    return 1
}

# A samba of another run (another DIR) holding the LDAPS port: stop it, by pid.
stop_stale() {
    local pids pid
    port_open 636 || return 0
    pids=$(ss -ltnpH 'sport = :636' 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u)
    for pid in $pids; do
        if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != samba ]; then
            echo "samba-ad.sh: port 636 is held by pid $pid, which is not samba" >&2
            return 1
        fi
        # -M single: the listener is the process that setsid started, the group leader.
        pid=$(ps -o pgid= -p "$pid" | tr -d ' ')
        echo "samba-ad.sh: stopping stale samba (process group $pid)" >&2
        kill_group "$pid" TERM
        wait_stopped "$pid"
    done
    if port_open 636; then
        echo "samba-ad.sh: port 636 is still held by another process" >&2
        return 1
    fi
}

# Issues DIR/private/tls/{ca,cert,key}.pem: a small CA and the DC's certificate for
# DNS:localhost, IP:127.0.0.1. The CA key stays in DIR/tls-ca.
make_tls() {
    local ca=$D/tls-ca
    [ -s "$TLS/cert.pem" ] && [ -s "$TLS/key.pem" ] && [ -s "$TLS/ca.pem" ] && return 0
    mkdir -p "$ca" "$TLS"
    chmod 700 "$ca"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$ca/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$ca/ca.key" -subj "/CN=certmapd test LDAP CA" -days 3650 \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        -out "$ca/ca.pem"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$ca/key.pem" 2>/dev/null
    openssl req -new -key "$ca/key.pem" -subj "/CN=localhost" -out "$ca/dc.csr"
    cat >"$ca/dc.ext" <<'EOF'
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
EOF
    openssl x509 -req -in "$ca/dc.csr" -CA "$ca/ca.pem" -CAkey "$ca/ca.key" -CAcreateserial \
        -days 3650 -extfile "$ca/dc.ext" -out "$ca/cert.pem" 2>/dev/null
    # Samba refuses a key file that others can read.
    install -m 0600 "$ca/key.pem" "$TLS/key.pem"
    install -m 0644 "$ca/cert.pem" "$TLS/cert.pem"
    install -m 0644 "$ca/ca.pem" "$TLS/ca.pem"
}

tool() {
    timeout 120 samba-tool "$@" -s "$CONF"
}

# Kerberos constrained delegation: accounts, SPNs, delegation rights, keytabs,
# krb5.conf. Every step checks first, so that an interrupted run can be repeated.
user_exists() {
    tool user show "$1" >/dev/null 2>&1
}

ensure_user() { # NAME PASSWORD [DESCRIPTION]
    user_exists "$1" && return 0
    tool user create "$1" "$2" --description="${3:-certmapd test user}" >/dev/null
    # Test accounts must not expire in the middle of a run.
    tool user setexpiry "$1" --noexpiry >/dev/null
}

ensure_spn() { # SPN ACCOUNT
    # It lists them one a line after a tab and a space.
    tool spn list "$2" 2>/dev/null | sed 's/^[[:space:]]*//' | grep -qixF "$1" && return 0
    tool spn add "$1" "$2" >/dev/null
}

# FILE from the keys of PRINCIPAL, with MODE and, when that group exists, GROUP.
# Written to a new file and renamed: exportkeytab writes into an existing keytab
# (keeping what it held), and a reader never sees a half-written one.
export_keytab() { # FILE PRINCIPAL MODE [GROUP]
    local tmp=$1.tmp
    local out
    rm -f "$tmp"
    # It says "Export one principal to ..." on stderr: shown only on failure.
    out=$(tool domain exportkeytab "$tmp" --principal="$2" 2>&1) || {
        echo "$out" >&2
        return 1
    }
    chmod "$3" "$tmp"
    if [ -n "${4:-}" ] && getent group "$4" >/dev/null; then
        chgrp "$4" "$tmp"
    fi
    mv -f "$tmp" "$1"
}

# msDS-SupportedEncryptionTypes = AES128 | AES256 on each ACCOUNT. Without it,
# exportkeytab by SPN gives only the RC4 key (arcfour-hmac, deprecated), so
# tickets to the backend would be RC4; a current AD's services are set to AES. samba-tool has no verb for the attribute: samba's own Python module
# (what samba-tool runs on) edits the local database.
set_aes_only() { # ACCOUNT...
    timeout 60 /usr/bin/python3 - "$CONF" "$@" <<'PY'
import sys
import ldb
from samba.auth import system_session
from samba.param import LoadParm
from samba.samdb import SamDB

lp = LoadParm()
lp.load(sys.argv[1])
db = SamDB(url=lp.samdb_url(), session_info=system_session(), lp=lp)
for name in sys.argv[2:]:
    res = db.search(db.domain_dn(), ldb.SCOPE_SUBTREE,
                    "(sAMAccountName=%s)" % ldb.binary_encode(name), ["dn"])
    if len(res) != 1:
        sys.exit("samba-ad.sh: no account %s" % name)
    m = ldb.Message(res[0].dn)
    m["enc"] = ldb.MessageElement("24", ldb.FLAG_MOD_REPLACE, "msDS-SupportedEncryptionTypes")
    db.modify(m)
PY
}

# DIR/krb5.conf, for KRB5_CONFIG. One relation per line: the one-line
# "REALM = { kdc = ... }" form is not parsed. forwardable: S4U2Proxy needs a
# forwardable TGT of the service (without it: KDC_ERR_BADOPTION).
# dns_canonicalize_hostname = false: the test host names are in no DNS, a lookup
# would only cost time. udp_preference_limit = 1: always TCP to the KDC (AD's
# tickets carry a PAC and are large: no UDP attempt that ends in a retry).
write_krb5_conf() {
    local lc=${REALM,,}
    printf '%s\n' \
        "[libdefaults]" \
        "  default_realm = $REALM" \
        "  dns_lookup_kdc = false" \
        "  dns_lookup_realm = false" \
        "  dns_canonicalize_hostname = false" \
        "  rdns = false" \
        "  forwardable = true" \
        "  udp_preference_limit = 1" \
        "" \
        "[realms]" \
        "  $REALM = {" \
        "    kdc = 127.0.0.1" \
        "  }" \
        "" \
        "[domain_realm]" \
        "  .$lc = $REALM" \
        "  $lc = $REALM" >"$D/krb5.conf.tmp"
    chmod 0644 "$D/krb5.conf.tmp"
    mv -f "$D/krb5.conf.tmp" "$D/krb5.conf"
}

kerberos() {
    [ -f "$D/.kerberos" ] && return 0
    ensure_user alice "$ALICE_PASS"
    if ! user_exists bob; then
        ensure_user bob "$BOB_PASS" "certmapd test user (disabled)"
        tool user disable bob >/dev/null
    fi
    ensure_user carol "$CAROL_PASS" "certmapd test user (sensitive, cannot be delegated)"
    # "on" fails when the flag is set already.
    if ! tool user sensitive carol show | grep -qF "UF_NOT_DELEGATED: True"; then
        tool user sensitive carol on >/dev/null
    fi
    ensure_user eas-web "$WEB_PASS" "EAS backend service account (HTTP/eas)"
    ensure_spn "$EAS_SPN" eas-web
    ensure_spn "$SEG_SPN" svc-seg
    local deleg
    deleg=$(tool delegation show svc-seg)
    if ! grep -qF "UF_TRUSTED_TO_AUTHENTICATE_FOR_DELEGATION: True" <<<"$deleg"; then
        tool delegation for-any-protocol svc-seg on >/dev/null
    fi
    if ! grep -qiF "msDS-AllowedToDelegateTo: $EAS_SPN" <<<"$deleg"; then
        tool delegation add-service svc-seg "$EAS_SPN" >/dev/null
    fi
    ensure_user svc-nodeleg "$NODELEG_PASS" "service account without delegation rights"
    ensure_spn "$NODELEG_SPN" svc-nodeleg
    set_aes_only eas-web svc-seg svc-nodeleg
    (umask 077 && printf '%s' "$NODELEG_PASS" >"$D/svc-nodeleg.secret")
    chmod 0600 "$D/svc-nodeleg.secret"
    export_keytab "$D/seg.keytab" svc-seg 0600
    export_keytab "$D/nodeleg.keytab" svc-nodeleg 0600
    # httpd's workers (User www-data) read the backend's keytab.
    export_keytab "$D/eas.keytab" "$EAS_SPN" 0640 www-data
    write_krb5_conf
    touch "$D/.kerberos"
    echo "samba-ad.sh: Kerberos delegation set up in $D (KRB5_CONFIG=$D/krb5.conf)"
}

provision() {
    if [ -f "$D/.provisioned" ]; then
        kerberos
        return 0
    fi
    if own_pid >/dev/null; then
        do_stop
    fi
    # A half-made domain from an interrupted run: start over.
    rm -rf "$D/etc" "$D/private" "$D/state" "$D/cache" "$D/bind-dns" "$D/tls-ca" \
        "$D/svc.secret" "$D"/*.tdb "$D/msg.lock" "$D/samba.pid" "$D/samba.log" \
        "$D/.kerberos" "$D/svc-nodeleg.secret" "$D"/*.keytab "$D"/*.keytab.tmp "$D/krb5.conf"
    timeout 120 samba-tool domain provision --targetdir="$D" --realm="$REALM" --domain="$DOMAIN" \
        --server-role=dc --dns-backend=NONE --adminpass="$ADMIN_PASS" --use-rfc2307 \
        --option="interfaces=lo" --option="bind interfaces only=yes" \
        --option="tls enabled=yes" --option="tls certfile=$TLS/cert.pem" \
        --option="tls keyfile=$TLS/key.pem" --option="tls cafile=$TLS/ca.pem" \
        --option="log file=$D/log.%m" --option="rpc server dynamic port range=$RPC_PORTS" \
        >"$D/provision.log" 2>&1 || {
        echo "samba-ad.sh: provision failed, see $D/provision.log:" >&2
        tail -20 "$D/provision.log" >&2
        return 1
    }
    make_tls
    tool user create svc-seg "$SVC_PASS" --description="certmapd service account" >/dev/null
    # Test accounts must not expire in the middle of a run.
    tool user setexpiry svc-seg --noexpiry >/dev/null
    (umask 077 && printf '%s' "$SVC_PASS" >"$D/svc.secret")
    chmod 0600 "$D/svc.secret"
    touch "$D/.provisioned"
    echo "samba-ad.sh: provisioned $REALM in $D"
    kerberos
}

ldaps_ok() {
    LDAPTLS_CACERT=$TLS/ca.pem LDAPTLS_REQCERT=demand timeout 10 \
        ldapsearch -LLL -o nettimeout=5 -H ldaps://127.0.0.1 -x -D "Administrator@${REALM,,}" \
        -w "$ADMIN_PASS" -b "$BASE_DN" -s base dn >/dev/null 2>&1
}

do_start() {
    local pid i
    if [ ! -f "$D/.provisioned" ]; then
        echo "samba-ad.sh: $D is not provisioned (run: $0 provision $D)" >&2
        return 1
    fi
    if pid=$(own_pid) && ldaps_ok; then
        echo "samba-ad.sh: already running (pid $pid)"
        return 0
    fi
    if pid=$(own_pid); then
        kill_group "$pid" TERM
        wait_stopped "$pid"
    fi
    # A domain provisioned before the RPC ports were set gets them now.
    grep -q "^[[:space:]]*rpc server dynamic port range" "$CONF" ||
        sed -i "/^\[global\]/a\\    rpc server dynamic port range = $RPC_PORTS" "$CONF"
    stop_stale
    make_tls
    # The DC outlives this script: it must not inherit the caller's other
    # descriptors (a `flock /tmp/certmapd-samba.lock ctest` lock held by the
    # DC would outlast that run and stall every later one).
    (
        for fd in /proc/self/fd/*; do
            fd=${fd##*/}
            [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-"
        done
        exec setsid samba -i -M single -s "$CONF" </dev/null >"$D/samba.log" 2>&1
    ) &
    pid=$!
    echo "$pid" >"$D/samba.pid"
    for ((i = 0; i < START_TIMEOUT * 4; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "samba-ad.sh: samba exited during start-up; last lines of $D/samba.log:" >&2
            tail -20 "$D/samba.log" >&2
            return 1
        fi
        if port_open 636 && ldaps_ok; then
            echo "samba-ad.sh: running (pid $pid), ldaps://127.0.0.1, CA $TLS/ca.pem"
            return 0
        fi
        sleep 0.25
    done
    echo "samba-ad.sh: no LDAPS answer after ${START_TIMEOUT}s; last lines of $D/samba.log:" >&2
    tail -20 "$D/samba.log" >&2
    kill_group "$pid" KILL
    return 1
}

do_stop() {
    local pid
    if pid=$(own_pid); then
        kill_group "$pid" TERM
        wait_stopped "$pid"
    fi
    rm -f "$D/samba.pid"
    echo "samba-ad.sh: stopped"
}

do_status() {
    local pid
    if pid=$(own_pid); then
        if ldaps_ok; then
            echo "running (pid $pid), LDAPS answers"
            return 0
        fi
        echo "running (pid $pid), LDAPS does not answer"
        return 1
    fi
    echo "stopped"
    return 3
}

case $CMD in
provision) provision ;;
start) do_start ;;
up) provision && do_start ;;
stop) do_stop ;;
status) do_status ;;
*) usage ;;
esac
