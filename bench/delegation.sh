# bench/delegation.sh, sourced by bench/run: Kerberos constrained delegation
# (issue 12), certmapd only.
#
#  (a) new delegated users per second against Samba's KDC: every request
#      presents the certificate of a user certmapd has not seen, so each is an
#      identity-cache miss (a directory search for its altSecurityIdentities)
#      and a credential-cache miss (S4U2Self + S4U2Proxy with the KDC), and
#      opens a backend connection of its own (connections belong to one user),
#      whose first request carries the token; the same certificates mapped by a
#      certmapd without [delegation] give the mapping's share;
#  (b) the keep-alive request with delegation on against off, for one user:
#      the same certmapd and the same Apache httpd backend, once with
#      [delegation] mode = kerberos and mod_auth_gssapi (the token on each new
#      backend connection, send = first; GssapiConnectionBound, IIS's
#      authPersistNonNTLM), once without either (identity headers only).
#
# When it cannot run, the result is "not measured: <why>", never a guess. The
# Samba DC is mapping.sh's ($BUILD/bench-samba, kept between runs; its
# provisioning makes the KDC side), started here and always stopped again; it
# is not started when another process holds the AD ports (88, 389, 636).
#
# Uses from bench/run: W, BUILD, SRC, PKI, CERTMAPD, LOADGEN, FRONT_CPU,
# LOAD_CPU, DELEG_N, HS_C, KA_N, KA_C, TCK, RESULTS, PIDS, FAILED, put, say,
# free_port, port_open, cpu_ticks, stop_front, measure, measure_ab; from mapping.sh: MAP_BASE_DN,
# MAP_REALM_LC, MAP_ADMIN_PASS.

DELEG_REALM=CORP.EXAMPLE.TEST
DELEG_SPN=HTTP/eas.corp.example.test
DELEG_PREFIX=dlg
# The test PKI's issuing CA as altSecurityIdentities writes an issuer (X509:<I>).
DELEG_ISSUER_ASI='DC=test,DC=example,DC=corp,CN=Corp Issuing CA'
APACHE_BIN=/usr/sbin/apache2
APACHE_MODULES=/usr/lib/apache2/modules

deleg_why() { [ -s "$W/deleg/why" ] || echo "$*" >"$W/deleg/why"; }

# The AD ports held by a process that is not the Samba of DIR (another test's DC).
deleg_ports_taken() { # DIR
    local p pid
    for p in 88 389 636; do
        port_open "$p" || continue
        pid=$(cat "$1/samba.pid" 2>/dev/null || echo 0)
        [ "$(readlink "/proc/$pid/fd/1" 2>/dev/null)" = "$1/samba.log" ] && continue
        echo "$p"
        return 0
    done
    return 1
}

deleg_prereq() {
    local cmd p
    for cmd in samba samba-tool ldapadd ldapmodify ldapsearch curl "$APACHE_BIN"; do
        command -v "$cmd" >/dev/null ||
            { deleg_why "$cmd is not installed (scripts/install-deps.sh)"; return 1; }
    done
    [ -f "$APACHE_MODULES/mod_auth_gssapi.so" ] ||
        { deleg_why "mod_auth_gssapi is not installed (libapache2-mod-auth-gssapi)"; return 1; }
    getent passwd www-data >/dev/null || { deleg_why "no user www-data for httpd"; return 1; }
    if p=$(deleg_ports_taken "$BUILD/bench-samba"); then
        deleg_why "port $p is held by another process (another Samba AD test runs)"
        return 1
    fi
}

# Samba AD with its KDC, on the load core (the directory and the KDC are not the
# front being measured). Provisioned (once) and started in two steps, the AD
# ports checked again in between: samba-ad.sh start stops a Samba of another
# directory that holds them, and a DC another test started meanwhile is not ours.
deleg_samba() {
    local dir=$BUILD/bench-samba p
    if ! taskset -c $LOAD_CPU timeout 300 "$SRC/tests/samba/samba-ad.sh" provision "$dir" \
        >"$W/deleg/samba.log" 2>&1; then
        deleg_why "Samba AD could not be provisioned: $(tail -1 "$W/deleg/samba.log")"
        return 1
    fi
    if p=$(deleg_ports_taken "$dir"); then
        deleg_why "port $p is held by another process (another Samba AD test runs)"
        return 1
    fi
    DELEG_SAMBA_DIR=$dir
    if ! taskset -c $LOAD_CPU timeout 120 "$SRC/tests/samba/samba-ad.sh" start "$dir" \
        >>"$W/deleg/samba.log" 2>&1; then
        deleg_why "Samba AD did not start: $(tail -1 "$W/deleg/samba.log")"
        return 1
    fi
    for p in seg.keytab eas.keytab krb5.conf svc.secret; do
        [ -s "$dir/$p" ] || { deleg_why "the Samba fixture made no $p (tests/samba/samba-ad.sh)"; return 1; }
    done
}

deleg_ldap() { # ldapadd|ldapmodify|ldapsearch ARGS...: as Administrator over LDAPS
    local cmd=$1
    shift
    LDAPTLS_CACERT=$DELEG_SAMBA_DIR/private/tls/ca.pem LDAPTLS_REQCERT=demand timeout 600 \
        "$cmd" -x -H ldaps://127.0.0.1 -D "Administrator@$MAP_REALM_LC" -w "$MAP_ADMIN_PASS" "$@"
}

# COUNT users dlgNNNNN (created once, kept with the DC) and as many leaves, each
# mapped strongly: altSecurityIdentities X509:<I>issuer<SR>serial, bytes
# reversed (KB5014754). The leaves' serials are new in every run, so the
# mappings are rewritten (one ldapmodify).
deleg_users() {
    local n=$1 d=$W/deleg i have
    if [ ! -f "$DELEG_SAMBA_DIR/.bench-deleg-users-v1-$n" ]; then
        # A password (an account without one is PASSWORD_EXPIRED, which certmapd
        # refuses) that never expires (the DC is kept between runs).
        local pwd
        pwd=$(printf '"Passw0rd!Deleg1"' | iconv -f UTF-8 -t UTF-16LE | base64 -w0)
        for ((i = 0; i < n; i++)); do
            printf 'dn: CN=%s%05d,CN=Users,%s\nobjectClass: user\nsAMAccountName: %s%05d\nuserPrincipalName: %s%05d@%s\nunicodePwd:: %s\nuserAccountControl: 66048\n\n' \
                "$DELEG_PREFIX" "$i" "$MAP_BASE_DN" "$DELEG_PREFIX" "$i" "$DELEG_PREFIX" "$i" \
                "$MAP_REALM_LC" "$pwd"
        done >"$d/users.ldif"
        # -c: users of an earlier, smaller run already exist
        deleg_ldap ldapadd -c -f "$d/users.ldif" >"$d/ldapadd.log" 2>&1 || true
        have=$(deleg_ldap ldapsearch -LLL -b "CN=Users,$MAP_BASE_DN" -E pr=1000/noprompt \
            "(sAMAccountName=$DELEG_PREFIX*)" dn 2>/dev/null | grep -c '^dn:' || true)
        if [ "$have" -lt "$n" ]; then
            deleg_why "could not create $n users in Samba AD ($have there): $(grep -m1 -i \
                'error\|ldap_' "$d/ldapadd.log")"
            return 1
        fi
        touch "$DELEG_SAMBA_DIR/.bench-deleg-users-v1-$n"
    fi
    mkdir -p "$d/leaves"
    if ! "$BUILD/bench/mkleaves" "$PKI/issuing-ca.crt" "$PKI/issuing-ca.key" "$d/leaves" \
        "$n" "$DELEG_PREFIX" 2>"$d/mkleaves.log"; then
        deleg_why "mkleaves failed: $(tail -1 "$d/mkleaves.log")"
        return 1
    fi
    awk -v base="$MAP_BASE_DN" -v iss="$DELEG_ISSUER_ASI" '{
        r = ""; for (i = length($2) - 1; i >= 1; i -= 2) r = r substr($2, i, 2)
        printf "dn: CN=%s,CN=Users,%s\nchangetype: modify\nreplace: altSecurityIdentities\naltSecurityIdentities: X509:<I>%s<SR>%s\n-\n\n", $1, base, iss, r
    }' "$d/leaves/serials" >"$d/altsecids.ldif"
    if ! deleg_ldap ldapmodify -f "$d/altsecids.ldif" >"$d/ldapmodify.log" 2>&1; then
        deleg_why "could not set altSecurityIdentities: $(grep -m1 -i 'error\|ldap_' "$d/ldapmodify.log")"
        return 1
    fi
}

# deleg_apache MODE PORT: Apache httpd (event MPM, one process, 64 threads) on the
# load core, answering "ok" from a static file on every path, with keep-alive
# unbounded. MODE on: mod_auth_gssapi with the EAS keytab, krb5 only, Require
# valid-user, GssapiConnectionBound On (what a backend behind send = first needs);
# off: the same server without authentication. Sets DELEG_APACHE_PID.
deleg_apache() {
    local mode=$1 port=$2 a=$W/deleg/apache-$1 loc
    # httpd's workers run as www-data: the path to its files must let them through.
    chmod o+x "$W" "$W/deleg"
    mkdir -p "$a/run" "$a/htdocs" "$a/rcache"
    chmod 755 "$a" "$a/run" "$a/htdocs"
    printf 'ok\n' >"$a/htdocs/ok"
    chown www-data:www-data "$a/rcache"
    install -m 0400 -o www-data -g www-data "$DELEG_SAMBA_DIR/eas.keytab" "$a/eas.keytab"
    install -m 0644 "$DELEG_SAMBA_DIR/krb5.conf" "$a/krb5.conf"
    if [ "$mode" = on ]; then
        loc="  AuthType GSSAPI
  AuthName EAS
  GssapiCredStore keytab:$a/eas.keytab
  GssapiAllowedMech krb5
  GssapiConnectionBound On
  Require valid-user"
    else
        loc="  Require all granted"
    fi
    cat >"$a/httpd.conf" <<EOF
ServerRoot "$a"
DefaultRuntimeDir "$a/run"
PidFile "$a/run/httpd.pid"
ErrorLog "$a/error.log"
LogLevel warn
Listen 127.0.0.1:$port
ServerName eas.corp.example.test
User www-data
Group www-data
Timeout 60
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 600
LoadModule mpm_event_module $APACHE_MODULES/mod_mpm_event.so
LoadModule authn_core_module $APACHE_MODULES/mod_authn_core.so
LoadModule authz_core_module $APACHE_MODULES/mod_authz_core.so
LoadModule authz_user_module $APACHE_MODULES/mod_authz_user.so
LoadModule auth_gssapi_module $APACHE_MODULES/mod_auth_gssapi.so
LoadModule alias_module $APACHE_MODULES/mod_alias.so
StartServers 1
ServerLimit 1
ThreadLimit 64
ThreadsPerChild 64
MaxRequestWorkers 64
MinSpareThreads 1
MaxSpareThreads 64
DocumentRoot "$a/htdocs"
# connection, user, status, earlier requests on this connection
LogFormat "%a:%{remote}p\t%u\t%>s\t%k" bench
CustomLog "$a/access.log" bench
BufferedLogs On
AliasMatch "^/" "$a/htdocs/ok"
<Location />
$loc
</Location>
EOF
    local err
    if ! err=$(env KRB5_CONFIG="$a/krb5.conf" "$APACHE_BIN" -f "$a/httpd.conf" -t 2>&1); then
        deleg_why "httpd refuses its configuration: $(tail -1 <<<"$err")"
        return 1
    fi
    KRB5_CONFIG=$a/krb5.conf KRB5RCACHEDIR=$a/rcache taskset -c $LOAD_CPU \
        "$APACHE_BIN" -f "$a/httpd.conf" -D FOREGROUND 2>"$a/stderr.log" &
    DELEG_APACHE_PID=$!
    PIDS+=("$DELEG_APACHE_PID")
    DELEG_STOP+=("$DELEG_APACHE_PID")
    for _ in $(seq 1 100); do
        port_open "$port" && return 0
        kill -0 "$DELEG_APACHE_PID" 2>/dev/null || break
        sleep 0.1
    done
    deleg_why "httpd ($mode) did not start: $(tail -1 "$a/error.log" 2>/dev/null)"
    return 1
}

# deleg_conf FILE PORT BACKEND-PORT ACCESS-LOG yes|no: certmapd like the plain
# front, with [mapping] source = ldap (the default methods sid, altsecid, upn and
# enforcement full: only a strong mapping passes) and, with yes, [delegation].
deleg_conf() {
    local dir=$DELEG_SAMBA_DIR
    cat >"$1" <<EOF
[server]
listen = 127.0.0.1:$2
workers = 1
access_log = $4
log_level = warn
keepalive_timeout = 10m
[tls]
certificate = $PKI/server-chain.pem
private_key = $PKI/server.key
[client_certificate]
mode = require
trust_anchors = $PKI/root-ca.crt
negotiate_at_handshake = yes
[backend]
url = http://127.0.0.1:$3
read_timeout = 65m
keepalive_connections = 64
[mapping]
source = ldap
cache_ttl = 5m
[ldap]
uri = ldaps://127.0.0.1
base_dn = $MAP_BASE_DN
bind_dn = svc-seg@$MAP_REALM_LC
bind_password_file = $dir/svc.secret
ca_file = $dir/private/tls/ca.pem
EOF
    [ "$5" = yes ] && cat >>"$1" <<EOF
[delegation]
mode = kerberos
principal = svc-seg@$DELEG_REALM
keytab = $dir/seg.keytab
target_spn = $DELEG_SPN
krb5_conf = $dir/krb5.conf
EOF
    return 0
}

# deleg_start CONF PORT: certmapd on the front core; sets DELEG_PID.
deleg_start() {
    local err
    if ! err=$("$CERTMAPD" -t -c "$1" 2>&1); then
        deleg_why "certmapd -t refuses the configuration $(basename "$1"): $(tail -1 <<<"$err")"
        return 1
    fi
    taskset -c $FRONT_CPU "$CERTMAPD" -c "$1" 2>"$1.stderr" &
    DELEG_PID=$!
    PIDS+=("$DELEG_PID")
    DELEG_STOP+=("$DELEG_PID")
    for _ in $(seq 1 150); do
        port_open "$2" && return 0
        kill -0 "$DELEG_PID" 2>/dev/null || break
        sleep 0.1
    done
    deleg_why "certmapd ($(basename "$1")) did not start: $(tail -1 "$1.stderr")"
    return 1
}

# deleg_status PORT CHAIN KEY: the HTTP status certmapd answers GET / with.
deleg_status() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 20 --cacert "$PKI/root-ca.crt" \
        --cert "$2" --key "$3" "https://127.0.0.1:$1/" 2>/dev/null || true
}

# deleg_front NAME CONF-ARGS...: a certmapd for one phase, checked with the probe
# leaf (a 200 from the Apache that requires Kerberos is a delegated request).
deleg_front() {
    local name=$1 port code
    shift
    port=$(free_port)
    deleg_conf "$W/deleg/$name.conf" "$port" "$@"
    deleg_start "$W/deleg/$name.conf" "$port" || return 1
    code=$(deleg_status "$port" "$DELEG_PROBE" "$DELEG_KEY")
    if [ "$code" != 200 ]; then
        deleg_why "certmapd ($name) answered '$code' for a mapped user's certificate (log:" \
            "$(tail -1 "$W/deleg/$name.conf.stderr"))"
        return 1
    fi
    DELEG_PORT=$port
}

deleg_stop() { # PID: stops it and drops it from DELEG_STOP
    local p keep=()
    stop_front "$1"
    for p in "${DELEG_STOP[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    DELEG_STOP=("${keep[@]}")
}

# deleg_measure_dc NAME N -- MEASURE-ARGS: measure, and the Samba DC's CPU per
# user over the same run (every process of its session: samba-ad.sh starts it
# under setsid), NAME_dc_cpu_us: what the directory and the KDC spend, on the
# load core.
deleg_measure_dc() {
    local name=$1 n=$2 sid u0 k0 u1 k1
    shift 3
    sid=$(cat "$DELEG_SAMBA_DIR/samba.pid" 2>/dev/null || echo 0)
    read -r u0 k0 <<<"$(cpu_ticks $(pgrep -s "$sid" 2>/dev/null))"
    measure "$@"
    read -r u1 k1 <<<"$(cpu_ticks $(pgrep -s "$sid" 2>/dev/null))"
    put certmapd "${name}_dc_cpu_us" "$(awk -v t=$((u1 + k1 - u0 - k0)) -v h="$TCK" -v n="$n" \
        'BEGIN {printf "%.1f", t * 1e6 / h / n}')"
}

deleg_run() {
    local n=$DELEG_N d=$W/deleg on_port off_port on_pid off_pid users
    deleg_prereq && deleg_samba && deleg_users "$((n + 1))" || return 1
    # The last leaf is the probe (and the keep-alive phase's one user); the first n
    # are the measurement.
    DELEG_KEY=$d/leaves/leaf.key
    DELEG_PROBE=$(printf '%s/leaves/%s%05d.pem' "$d" "$DELEG_PREFIX" "$n")
    head -n "$n" "$d/leaves/list" >"$d/list"
    cat "$DELEG_KEY" "$DELEG_PROBE" >"$d/probe.bundle.pem" # ab -E: key + chain
    on_port=$(free_port)
    deleg_apache on "$on_port" || return 1
    on_pid=$DELEG_APACHE_PID
    off_port=$(free_port)
    deleg_apache off "$off_port" || return 1
    off_pid=$DELEG_APACHE_PID

    # (a) the n new users: mapped only (the mapping's share), then delegated.
    local hs=(handshake --cert-list "$d/list" --cafile "$PKI/root-ca.crt" --requests "$n"
        --connections "$HS_C" --max-time 300)
    deleg_front map "$off_port" "$d/access-map.log" no || return 1
    deleg_measure_dc dmap "$n" -- certmapd dmap "$DELEG_PID" -- "${hs[@]}" --port "$DELEG_PORT"
    deleg_stop "$DELEG_PID"
    deleg_front deleg "$on_port" "$d/access-deleg.log" yes || return 1
    deleg_measure_dc deleg "$n" -- certmapd deleg "$DELEG_PID" -- "${hs[@]}" --port "$DELEG_PORT"
    put certmapd deleg_per_s "$(awk -F'\t' '$1 == "certmapd" && $2 == "deleg_rps" {v = $3} END {print v}' \
        "$RESULTS")"
    deleg_stop "$DELEG_PID"

    # (b) keep-alive, one user, delegation off, then on (same Apache, auth off/on).
    local ka=(keepalive --cert "$DELEG_PROBE" --key "$DELEG_KEY" --cafile "$PKI/root-ca.crt"
        --requests "$KA_N" --connections "$KA_C" --max-time 120)
    deleg_front kaoff "$off_port" off no || return 1
    measure certmapd dkaoff "$DELEG_PID" -- "${ka[@]}" --port "$DELEG_PORT"
    measure_ab certmapd "$DELEG_PID" "$DELEG_PORT" dkaboff "$d/probe.bundle.pem"
    deleg_stop "$DELEG_PID"
    deleg_front kaon "$on_port" off yes || return 1
    measure certmapd dkaon "$DELEG_PID" -- "${ka[@]}" --port "$DELEG_PORT"
    measure_ab certmapd "$DELEG_PID" "$DELEG_PORT" dkabon "$d/probe.bundle.pem"
    deleg_stop "$DELEG_PID"

    # What the Kerberos backend saw (its log is written when it stops): every one
    # of the n + 1 users authenticated, and the keep-alive phase's requests as its
    # user; tokens = requests authenticated anew (the first on each connection).
    deleg_stop "$on_pid"
    deleg_stop "$off_pid"
    users=$(awk -F'\t' -v re="^${DELEG_PREFIX}[0-9]+@${DELEG_REALM}\$" '$3 == 200 && $2 ~ re {print $2}' \
        "$d/apache-on/access.log" 2>/dev/null | sort -u | wc -l)
    put certmapd deleg_backend_users "$users"
    put certmapd dkaon_tokens "$(awk -F'\t' -v u="$(printf '%s%05d@%s' "$DELEG_PREFIX" "$n" \
        "$DELEG_REALM")" '$2 == u && $4 == 0' "$d/apache-on/access.log" 2>/dev/null | wc -l)"
    if [ "$users" -ne $((n + 1)) ]; then
        FAILED=1
        echo "bench/run: delegation: the Kerberos backend authenticated $users of $((n + 1)) users" \
            "($d/apache-on/access.log)" >&2
    fi
}

bench_delegation() {
    local p why
    mkdir -p "$W/deleg"
    rm -f "$W/deleg/why"
    DELEG_STOP=()
    say "delegation: $DELEG_N new users against Samba's KDC, keep-alive with delegation on and off"
    deleg_run || true
    for p in "${DELEG_STOP[@]}"; do stop_front "$p"; done
    DELEG_STOP=()
    # The DC started here is not left behind (it holds the AD ports).
    if [ -n "${DELEG_SAMBA_DIR:-}" ]; then
        "$SRC/tests/samba/samba-ad.sh" stop "$DELEG_SAMBA_DIR" >/dev/null 2>&1 || true
    fi
    why=$(head -1 "$W/deleg/why" 2>/dev/null || true)
    [ -n "$why" ] || why="no result"
    if [ -z "$(awk -F'\t' '$2 == "deleg_per_s"' "$RESULTS")" ]; then
        put certmapd deleg_not_measured "$why"
        say "delegation: new users not measured: $why"
    fi
    if [ -z "$(awk -F'\t' '$2 == "dkaon_cpu_us"' "$RESULTS")" ]; then
        put certmapd dka_not_measured "$why"
        say "delegation: keep-alive not measured: $why"
    fi
}
