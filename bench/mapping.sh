# bench/mapping.sh, sourced by bench/run: "new certificates mapped per second
# against Samba AD", certmapd only. Every request presents a certificate
# certmapd has not seen, so every one is an identity-cache miss and a directory
# search. When the measurement cannot run, the result is "not measured: <why>",
# never a guess; the first check is cheap (an LDIF source, no AD), so a
# certmapd that does not map yet costs the run no Samba start-up.
#
# Uses from bench/run: W, BUILD, SRC, PKI, BP, CERTMAPD, LOADGEN, FRONT_CPU,
# LOAD_CPU, MAP_N, HS_C, PIDS, put, say, free_port, wait_port, stop_front, measure.

MAP_REALM_LC=corp.example.test
MAP_BASE_DN=DC=corp,DC=example,DC=test
MAP_ADMIN_PASS='Passw0rd!Admin'

# map_conf FILE PORT MAPPING-SECTIONS: a certmapd configuration like the plain
# front's, plus the given [mapping]/[ldap] sections.
map_conf() {
    cat >"$1" <<EOF
[server]
listen = 127.0.0.1:$2
workers = 1
access_log = $W/map/access-$2.log
log_level = warn
[tls]
certificate = $PKI/server-chain.pem
private_key = $PKI/server.key
[client_certificate]
mode = require
trust_anchors = $PKI/root-ca.crt
negotiate_at_handshake = yes
[backend]
url = http://127.0.0.1:$BP
$3
EOF
}

# map_start CONF PORT: certmapd on the front core; echoes its pid.
map_start() {
    local err
    if ! err=$("$CERTMAPD" -t -c "$1" 2>&1); then
        echo "certmapd -t refuses a [mapping] configuration: $(echo "$err" | tail -1)" >"$W/map/why"
        return 1
    fi
    taskset -c $FRONT_CPU "$CERTMAPD" -c "$1" 2>"$1.stderr" &
    MAP_PID=$!
    PIDS+=("$MAP_PID")
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
        kill -0 "$MAP_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "certmapd with [mapping] did not start: $(tail -1 "$1.stderr")" >"$W/map/why"
    stop_front "$MAP_PID"
    return 1
}

# map_whoami PORT CERT KEY: the X-Remote-User the backend received, as it echoes it.
map_whoami() {
    curl -s --max-time 10 --cacert "$PKI/root-ca.crt" --cert "$2" --key "$3" \
        "https://127.0.0.1:$1/whoami" 2>/dev/null || true
}

# Step 1: does certmapd map at all? An LDIF source with one account for good.crt.
map_precheck() {
    local port out
    cat >"$W/map/alice.ldif" <<EOF
dn: CN=alice,CN=Users,$MAP_BASE_DN
objectClass: top
objectClass: person
objectClass: organizationalPerson
objectClass: user
cn: alice
sAMAccountName: alice
userPrincipalName: alice@$MAP_REALM_LC
distinguishedName: CN=alice,CN=Users,$MAP_BASE_DN
objectSid:: AQUAAAAAAAUVAAAAW0YKGosjgjEMwZSfTgQAAA==
userAccountControl: 512
whenCreated: 20200101000000.0Z
EOF
    port=$(free_port)
    map_conf "$W/map/ldif.conf" "$port" "[mapping]
source = ldif
ldif_file = $W/map/alice.ldif
methods = upn
enforcement = disabled"
    map_start "$W/map/ldif.conf" "$port" || return 1
    out=$(map_whoami "$port" "$PKI/good.chain.pem" "$PKI/good.key")
    stop_front "$MAP_PID"
    if [ "$out" != "alice@$MAP_REALM_LC" ]; then
        echo "certmapd does not map yet: with [mapping] source = ldif and an account for" \
            "good.crt's UPN, the backend received X-Remote-User '${out}' (issue 4)" >"$W/map/why"
        return 1
    fi
}

# Step 2: Samba AD with MAP_N users whose UPNs the MAP_N leaves carry.
map_samba() {
    local dir=$BUILD/bench-samba n=$1 i
    for cmd in samba samba-tool ldapadd curl; do
        command -v "$cmd" >/dev/null ||
            { echo "$cmd is not installed (scripts/install-deps.sh)" >"$W/map/why"; return 1; }
    done
    # Only one Samba can hold the AD ports; one of another run is not ours to stop.
    if (exec 3<>/dev/tcp/127.0.0.1/636) 2>/dev/null &&
        [ "$(readlink "/proc/$(cat "$dir/samba.pid" 2>/dev/null || echo 0)/fd/1" 2>/dev/null)" != \
            "$dir/samba.log" ]; then
        echo "port 636 is held by another process (another Samba AD test runs)" >"$W/map/why"
        return 1
    fi
    # Samba runs on the load core: the directory is not the front being measured.
    if ! taskset -c $LOAD_CPU timeout 300 "$SRC/tests/samba/samba-ad.sh" up "$dir" \
        >"$W/map/samba.log" 2>&1; then
        echo "Samba AD did not start: $(tail -1 "$W/map/samba.log")" >"$W/map/why"
        return 1
    fi
    MAP_SAMBA_DIR=$dir
    if [ ! -f "$dir/.bench-users-v2-$n" ]; then
        # With a password: an account without one has PASSWORD_EXPIRED in its
        # constructed userAccountControl, and certmapd refuses it (account_disabled).
        local pwd
        pwd=$(printf '"Passw0rd!Bench1"' | iconv -f UTF-8 -t UTF-16LE | base64 -w0)
        for ((i = 0; i < n; i++)); do
            printf 'dn: CN=bench%05d,CN=Users,%s\nobjectClass: user\nsAMAccountName: bench%05d\nuserPrincipalName: bench%05d@%s\nunicodePwd:: %s\nuserAccountControl: 512\n\n' \
                "$i" "$MAP_BASE_DN" "$i" "$i" "$MAP_REALM_LC" "$pwd"
        done >"$W/map/users.ldif"
        # -c: users of an earlier, smaller run already exist
        LDAPTLS_CACERT=$dir/private/tls/ca.pem LDAPTLS_REQCERT=demand timeout 600 \
            ldapadd -c -x -H ldaps://127.0.0.1 -D "Administrator@$MAP_REALM_LC" -w "$MAP_ADMIN_PASS" \
            -f "$W/map/users.ldif" >"$W/map/ldapadd.log" 2>&1 || true
        if [ "$(grep -c '^adding new entry' "$W/map/ldapadd.log")" -lt "$n" ]; then
            echo "could not create $n users in Samba AD: $(grep -m1 -i 'error\|ldap_' \
                "$W/map/ldapadd.log")" >"$W/map/why"
            return 1
        fi
        touch "$dir/.bench-users-v2-$n"
    fi
}

# bench_mapping: runs after the plain certmapd front is measured.
bench_mapping() {
    local port n=$MAP_N why
    mkdir -p "$W/map/leaves"
    if map_precheck && map_samba "$((n + 1))" &&
        { "$BUILD/bench/mkleaves" "$PKI/issuing-ca.crt" "$PKI/issuing-ca.key" "$W/map/leaves" \
            "$((n + 1))" bench 2>"$W/map/why" || { echo "mkleaves failed: $(cat "$W/map/why")" \
            >"$W/map/why"; false; }; }; then
        port=$(free_port)
        map_conf "$W/map/ldap.conf" "$port" "[mapping]
source = ldap
methods = upn
enforcement = disabled
cache_ttl = 5m
[ldap]
uri = ldaps://127.0.0.1
base_dn = $MAP_BASE_DN
bind_dn = svc-seg@$MAP_REALM_LC
bind_password_file = $MAP_SAMBA_DIR/svc.secret
ca_file = $MAP_SAMBA_DIR/private/tls/ca.pem"
        if map_start "$W/map/ldap.conf" "$port"; then
            # The last leaf is the probe; the first n are the measurement.
            local probe
            probe=$(printf '%s/bench%05d.pem' "$W/map/leaves" "$n")
            why=$(map_whoami "$port" "$probe" "$W/map/leaves/leaf.key")
            if [ "$why" = "$(printf 'bench%05d@%s' "$n" "$MAP_REALM_LC")" ]; then
                head -n "$n" "$W/map/leaves/list" >"$W/map/list"
                measure certmapd map "$MAP_PID" -- handshake --port "$port" \
                    --cert-list "$W/map/list" --cafile "$PKI/root-ca.crt" \
                    --requests "$n" --connections "$HS_C" --max-time 300
                local rps
                rps=$(awk -F'\t' '$1 == "certmapd" && $2 == "map_rps" {v = $3} END {print v}' \
                    "$RESULTS")
                put certmapd map_per_s "$rps"
            else
                echo "certmapd with Samba AD did not map a fresh certificate (backend got" \
                    "X-Remote-User '$why'; log: $(tail -1 "$W/map/ldap.conf.stderr"))" >"$W/map/why"
            fi
            stop_front "$MAP_PID"
        fi
    fi
    # The DC started here is not left behind (it holds the AD ports).
    if [ -n "${MAP_SAMBA_DIR:-}" ]; then
        "$SRC/tests/samba/samba-ad.sh" stop "$MAP_SAMBA_DIR" >/dev/null 2>&1 || true
    fi
    if [ -s "$W/map/why" ] && ! grep -q . <<<"$(awk -F'\t' '$2 == "map_per_s"' "$RESULTS")"; then
        why=$(head -1 "$W/map/why")
        put certmapd map_not_measured "$why"
        say "mapping: not measured: $why"
    fi
}
