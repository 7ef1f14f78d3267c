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
# Only one Samba can hold the AD ports (88, 389, 636, ...) on 127.0.0.1, so start
# first stops a Samba of an earlier run that still holds them.
set -euo pipefail

ADMIN_PASS='Passw0rd!Admin'
SVC_PASS='Passw0rd!Svc'
REALM=CORP.EXAMPLE.TEST
DOMAIN=CORP
BASE_DN=DC=corp,DC=example,DC=test
START_TIMEOUT=60
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

provision() {
    if [ -f "$D/.provisioned" ]; then
        return 0
    fi
    if own_pid >/dev/null; then
        do_stop
    fi
    # A half-made domain from an interrupted run: start over.
    rm -rf "$D/etc" "$D/private" "$D/state" "$D/cache" "$D/bind-dns" "$D/tls-ca" \
        "$D/svc.secret" "$D"/*.tdb "$D/msg.lock" "$D/samba.pid" "$D/samba.log"
    timeout 120 samba-tool domain provision --targetdir="$D" --realm="$REALM" --domain="$DOMAIN" \
        --server-role=dc --dns-backend=NONE --adminpass="$ADMIN_PASS" --use-rfc2307 \
        --option="interfaces=lo" --option="bind interfaces only=yes" \
        --option="tls enabled=yes" --option="tls certfile=$TLS/cert.pem" \
        --option="tls keyfile=$TLS/key.pem" --option="tls cafile=$TLS/ca.pem" \
        --option="log file=$D/log.%m" >"$D/provision.log" 2>&1 || {
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
    stop_stale
    make_tls
    setsid samba -i -M single -s "$CONF" </dev/null >"$D/samba.log" 2>&1 &
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
