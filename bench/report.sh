#!/usr/bin/env bash
# report.sh RESULTS.tsv OUTDIR MACHINE VERSIONS SIZES SMOKE [LIMITED]: writes
# OUTDIR/latest.md, OUTDIR/latest.dat and OUTDIR/latest.png (gnuplot) from the
# "front figure value" lines bench/run collected. Figures that are missing are
# shown as "—" and their goal as "not measured", never guessed. LIMITED, when
# set, says why the idle and held counts are below 10 000.
set -euo pipefail
RES=$1 OUT=$2 MACHINE=$3 VERSIONS=$4 SIZES=$5 SMOKE=$6 LIMITED=${7:-}

get() { awk -F'\t' -v f="$1" -v k="$2" '$1 == f && $2 == k {v = $3} END {print v}' "$RES"; }
# ratio A B: A/B with two decimals, or empty
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a != "" && b != "" && b + 0 > 0) printf "%.2f", a / b}'; }
min2() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "") print b; else if (b == "") print a; else print (a + 0 < b + 0 ? a : b)}'; }
show() { if [ -n "$1" ]; then printf '%s' "$1"; else printf '—'; fi; }
# n COUNT: 9800 → "9 800", as the labels write counts
n() { [ -n "$1" ] || { printf '—'; return; }; awk -v v="$1" 'BEGIN {s = sprintf("%d", v); o = ""; while (length(s) > 3) {o = " " substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3)} print s o}'; }
# better KEY: certmapd's ratio to the better (lower) peer, or empty
better() { ratio "$(get certmapd "$1")" "$(min2 "$(get nginx "$1")" "$(get haproxy "$1")")"; }
HELD_LO=$(get certmapd held_lo_conns) HELD_HI=$(get certmapd held_hi_conns)
[ -n "$HELD_LO" ] || HELD_LO=$(get nginx held_lo_conns)
[ -n "$HELD_HI" ] || HELD_HI=$(get nginx held_hi_conns)

MD=$OUT/latest.md
DAT=$OUT/latest.dat
{
    echo "# certmapd vs nginx vs HAProxy: mutual-TLS front benchmark"
    echo
    [ "$SMOKE" = 1 ] && echo "**Smoke run: tiny counts, the figures mean nothing.**" && echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- Machine: $MACHINE"
    echo "- Versions: $VERSIONS"
    echo "- Set-up: each front with one worker pinned to core 0, the load (bench/loadgen, ab) pinned"
    echo "  to core 1, with the nginx \`return 200\` backend (held Pings: bench/holdback, which never"
    echo "  answers them); ECDSA P-256 certificates from tests/pki/mkpki.sh, TLS 1.3, client chain"
    echo "  leaf + issuing CA verified up to the root by every front."
    echo "- Counts: $SIZES."
    [ -n "$LIMITED" ] && echo "- **Fewer than 10 000 connections:** $LIMITED."
    echo "- Server CPU = utime + stime of the front's processes from /proc/PID/stat over the phase,"
    echo "  divided by the requests completed; RSS = sum of VmRSS from /proc/PID/status. See bench/README.md."
    echo
    HC=$(get certmapd held_hi_kib) HB=$(better held_hi_kib)
    if [ -n "$HC" ]; then
        echo "**Headline (memory): RSS per held EAS Ping (mTLS connection + backend connection + \`Cmd=Ping\`" \
            "in flight), $(n "$HELD_HI") held: certmapd $HC KiB, nginx $(show "$(get nginx held_hi_kib)")," \
            "HAProxy $(show "$(get haproxy held_hi_kib)"); certmapd $(show "$HB")× the better peer.**" \
            "At $(n "$HELD_LO") held: $(show "$(get certmapd held_lo_kib)") KiB ($(show "$(better held_lo_kib)")×)." \
            "Idle connection: $(show "$(get certmapd idle_kib)") KiB ($(show "$(better idle_kib)")×)."
        echo
    fi
    echo "## Server cost (lower is better)"
    echo
    echo "| figure | certmapd | nginx | HAProxy | certmapd/nginx | certmapd/HAProxy | certmapd/better peer | goal (vs the better peer) | met |"
    echo "|---|---|---|---|---|---|---|---|---|"
} >"$MD"
: >"$DAT"

row() { # KEY LABEL GOAL(ratio or empty) PLOTLABEL
    local c n h rn rh best rb goal met
    c=$(get certmapd "$1") n=$(get nginx "$1") h=$(get haproxy "$1")
    rn=$(ratio "$c" "$n") rh=$(ratio "$c" "$h")
    best=$(min2 "$n" "$h")
    rb=$(ratio "$c" "$best")
    if [ -z "$3" ]; then
        goal="—" met="—"
    else
        goal="≤ $3×"
        if [ -z "$rb" ]; then
            met="not measured"
        elif awk -v r="$rb" -v g="$3" 'BEGIN {exit !(r <= g)}'; then
            met="**yes** ($rb×)"
        else
            met="**no** ($rb×)"
        fi
    fi
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$2" "$(show "$c")" "$(show "$n")" \
        "$(show "$h")" "$(show "$rn")" "$(show "$rh")" "$(show "$rb")" "$goal" "$met" >>"$MD"
    printf '"%s" %s %s %s\n' "$4" "${rn:-0}" "${rh:-0}" "${3:-0}" >>"$DAT"
}
# memory first, the held Ping first among it: it is what sizes a SEG
# Goals: issue 11 item 8 (held Ping, handshake, keep-alive with both tools);
# the idle connection's is issue 6's.
row held_lo_kib "**RSS per held EAS Ping, $(n "$HELD_LO") held (KiB)**" 0.5 "held Ping RSS\\n($(n "$HELD_LO"))"
row held_hi_kib "**RSS per held EAS Ping, $(n "$HELD_HI") held (KiB)**" 0.5 "held Ping RSS\\n($(n "$HELD_HI"))"
row idle_kib "RSS per idle mTLS connection (KiB; goal of issue 6)" 0.33 "idle connection\\nRSS"
row hs_cpu_us "server CPU per full mTLS handshake + 1 proxied request (µs)" 0.4 "full\\nhandshake"
row res_cpu_us "server CPU per resumed handshake + 1 proxied request (µs)" "" "resumed\\nhandshake"
row ka_cpu_us "server CPU per keep-alive proxied request, loadgen (µs)" 0.7 "keep-alive\\n(loadgen)"
row kab_cpu_us "server CPU per keep-alive proxied request, ab -k (µs)" 0.7 "keep-alive\\n(ab -k)"

MAP=$(get certmapd map_per_s)
MAPWHY=$(get certmapd map_not_measured)
{
    echo
    if [ -n "$MAP" ]; then
        echo "New certificates mapped per second against Samba AD (each a cache miss, certmapd only):"
        echo "**$MAP/s** over $(get certmapd map_requests) distinct certificates," \
            "server CPU $(show "$(get certmapd map_cpu_us)") µs each," \
            "latency p50 $(show "$(get certmapd map_p50_us)") µs, p99 $(show "$(get certmapd map_p99_us)") µs."
    else
        echo "New certificates mapped per second against Samba AD: not measured: ${MAPWHY:-no result}."
    fi
    echo
    DEL=$(get certmapd deleg_per_s) DELWHY=$(get certmapd deleg_not_measured)
    if [ -n "$DEL" ]; then
        DC=$(get certmapd deleg_cpu_us) DM=$(get certmapd dmap_cpu_us)
        echo "New delegated users per second against Samba's KDC (each a cache miss: a directory search," \
            "S4U2Self and S4U2Proxy, and a backend connection whose first request carries the token" \
            "to Apache httpd + mod_auth_gssapi; certmapd only): **$DEL/s** over $(get certmapd deleg_requests)" \
            "users, server CPU **$(show "$DC") µs** each, latency p50 $(show "$(get certmapd deleg_p50_us)") µs," \
            "p99 $(show "$(get certmapd deleg_p99_us)") µs; the backend authenticated" \
            "$(show "$(get certmapd deleg_backend_users)") users (with the probe's)." \
            "The same certificates mapped without \`[delegation]\` (same backend without authentication):" \
            "$(show "$(get certmapd dmap_rps)")/s, $(show "$DM") µs each, so delegation's own share is" \
            "$(show "$(awk -v a="$DC" -v b="$DM" 'BEGIN {if (a != "" && b != "") printf "%.1f", a - b}')") µs per user." \
            "Samba's DC (directory and KDC, one process, on the load core with loadgen and Apache) spent" \
            "$(show "$(get certmapd deleg_dc_cpu_us)") µs per delegated user, $(show "$(get certmapd dmap_dc_cpu_us)")" \
            "per user mapped only."
    else
        echo "New delegated users per second against Samba's KDC: not measured: ${DELWHY:-no result}."
    fi
    echo
    KON=$(get certmapd dkaon_cpu_us) KOFF=$(get certmapd dkaoff_cpu_us)
    if [ -n "$KON" ] && [ -n "$KOFF" ]; then
        echo "Keep-alive request of one mapped user, server CPU (µs), \`[delegation] mode = kerberos\`" \
            "(\`send = first\`: the token only on each new backend connection; Apache httpd +" \
            "mod_auth_gssapi, \`GssapiConnectionBound On\`) against no \`[delegation]\` (identity headers;" \
            "the same Apache without authentication):"
        echo
        echo "| load | delegation on | off | on/off | on: user / kernel | off: user / kernel |"
        echo "|---|---|---|---|---|---|"
        for t in ka:loadgen kab:"ab -k"; do
            k=${t%%:*}
            echo "| ${t#*:} | $(show "$(get certmapd d${k}on_cpu_us)") | $(show "$(get certmapd d${k}off_cpu_us)") |" \
                "$(show "$(ratio "$(get certmapd d${k}on_cpu_us)" "$(get certmapd d${k}off_cpu_us)")") |" \
                "$(show "$(get certmapd d${k}on_user_us)") / $(show "$(get certmapd d${k}on_sys_us)") |" \
                "$(show "$(get certmapd d${k}off_user_us)") / $(show "$(get certmapd d${k}off_sys_us)") |"
        done
        echo
        echo "($(show "$(get certmapd dkaon_requests)") loadgen and $(show "$(get certmapd dkabon_requests)") ab" \
            "requests with delegation on; the backend saw $(show "$(get certmapd dkaon_tokens)") connections" \
            "of that user, each authenticated by a token, the probes' included.)"
    else
        echo "Keep-alive request with delegation on against off: not measured:" \
            "$(show "$(get certmapd dka_not_measured)")."
    fi
    echo
    echo "## Which part costs what"
    echo
    echo "Server CPU per request, user / kernel time (µs, utime / stime from /proc/PID/stat):"
    echo
    echo "| phase | certmapd | nginx | HAProxy |"
    echo "|---|---|---|---|"
    for ph in hs:"full handshake + 1 request" res:"resumed handshake + 1 request" \
        ka:"keep-alive request (loadgen)" kab:"keep-alive request (ab -k, HTTP/1.0)"; do
        printf '| %s |' "${ph#*:}"
        for f in certmapd nginx haproxy; do
            printf ' %s / %s |' "$(show "$(get $f ${ph%%:*}_user_us)")" "$(show "$(get $f ${ph%%:*}_sys_us)")"
        done
        echo
    done
    echo
    NC=$(nproc)
    DP=$(get certmapd decode_providers_1_us) DB=$(get certmapd decode_builtin_1_us)
    if [ -n "$DP" ] && [ -n "$DB" ]; then
        echo "Decoding the client's certificate (\`d2i_X509\`, which libssl runs on every certificate a client" \
            "sends; bench/x509decode): $DP µs through OpenSSL 3.0's provider decoders, $DB µs through the" \
            "built-in key methods certmapd installs (\`[tls] builtin_key_methods\`). On $NC threads at once:" \
            "$(show "$(get certmapd decode_providers_${NC}_per_s)") decodes/s through providers" \
            "(one thread: $(show "$(get certmapd decode_providers_1_per_s)")), $(show "$(get certmapd decode_builtin_${NC}_per_s)")" \
            "through the built-in methods (one thread: $(show "$(get certmapd decode_builtin_1_per_s)"))."
        echo
    fi
    SC=$(get certmapd ka_syscalls) SCWHY=$(get certmapd ka_syscalls_why)
    if [ -n "$SC" ]; then
        printf 'System calls per keep-alive request (strace -c over a separate run of 20 000; the CPU figures come from runs without strace):'
        for f in certmapd nginx haproxy; do
            printf ' %s %s (%s);' "$f" "$(show "$(get $f ka_syscalls)")" \
                "$(show "$(get $f ka_syscalls_detail)")"
        done
        echo
        echo
        echo "Goal (issue 11 item 8): no more system calls per keep-alive request than the transport before" \
            "io/ (5.1 with loadgen): $(awk -v s="$SC" 'BEGIN {print (s <= 5.1 ? "**met**" : "**not met**")}') ($SC)."
        echo
    elif [ -n "$SCWHY" ]; then
        echo "System calls per keep-alive request: not measured: $SCWHY."
        echo
    fi
    HSC=$(get certmapd hs_cpu_us) HSB=$(min2 "$(get nginx hs_cpu_us)" "$(get haproxy hs_cpu_us)")
    if [ -n "$HSC" ] && [ -n "$HSB" ]; then
        echo "Full handshake: the goal (≤ 0.4× the better peer) is $(awk -v b="$HSB" 'BEGIN {printf "%.1f", 0.4 * b}') µs;" \
            "certmapd spends $HSC µs ($(get certmapd hs_user_us) user, $(get certmapd hs_sys_us) kernel)." \
            "bench/README.md says where (perf, by step of the handshake)."
        echo
    fi
    HPC=$(get certmapd held_hi_kib) HPB=$(min2 "$(get nginx held_hi_kib)" "$(get haproxy held_hi_kib)")
    if [ -n "$HPC" ] && [ -n "$HPB" ]; then
        echo "Held Ping: the goal (≤ 0.5× the better peer) is $(awk -v b="$HPB" 'BEGIN {printf "%.1f", 0.5 * b}') KiB;" \
            "certmapd holds $HPC KiB. bench/README.md has the heap profile of one held Ping (bench/heapprofile)."
        echo
    fi
    KA=$(get certmapd ka_cpu_us) KAK=$(get certmapd ka_sys_us)
    KAB=$(min2 "$(get nginx ka_cpu_us)" "$(get haproxy ka_cpu_us)")
    if [ -n "$KA" ] && [ -n "$KAK" ] && [ -n "$KAB" ]; then
        echo "Keep-alive: the goal (≤ 0.7× the better peer) is $(awk -v b="$KAB" 'BEGIN {printf "%.1f", 0.7 * b}') µs;" \
            "certmapd spends $KAK µs of its $KA µs in the kernel (its reads and writes on two sockets," \
            "epoll, and the wake-ups of the processes it sends to) and $(get certmapd ka_user_us) µs in user space" \
            "(OpenSSL's record layer, libevent, HTTP parsing and head building)."
        echo
    fi
    KAB_WHY=$(get certmapd kab_why)
    if [ -n "$(get certmapd kab_cpu_us)" ]; then
        echo "The same with ApacheBench (\`ab -k -c $(get certmapd kab_c) -E\`, HTTP/1.0 keep-alive, its own" \
            "client, another request head): certmapd $(get certmapd kab_cpu_us) µs" \
            "($(get certmapd kab_user_us) user / $(get certmapd kab_sys_us) kernel), $(show "$(better kab_cpu_us)")× the" \
            "better peer, against loadgen's $(show "$KA") µs ($(show "$(better ka_cpu_us)")×). Absolute figures differ" \
            "between load tools (LAB.md §5); the ratios are what to compare."
        echo
    elif [ -n "$KAB_WHY" ]; then
        echo "Keep-alive with ApacheBench: not measured: $KAB_WHY."
        echo
    fi
    if [ -n "$(get certmapd held_hi_kib)" ]; then
        printf 'What a held Ping adds to an idle connection (RSS per held Ping at %s − RSS per idle connection:' "$(n "$HELD_HI")"
        printf ' the backend connection, the request in flight and its state in the front): '
        for f in certmapd nginx haproxy; do
            printf '%s %s KiB' "$f" "$(show "$(awk -v a="$(get $f held_hi_kib)" -v b="$(get $f idle_kib)" \
                'BEGIN {if (a != "" && b != "") printf "%.1f", a - b}')")"
            [ $f = haproxy ] && echo "." || printf ', '
        done
        echo
    fi
    SSLK=$(get certmapd connmem_ssl_kib) LEAFK=$(get certmapd connmem_leaf_kib) CAK=$(get certmapd connmem_ca_kib)
    IDLE=$(get certmapd idle_kib)
    IDB=$(min2 "$(get nginx idle_kib)" "$(get haproxy idle_kib)")
    if [ -n "$SSLK" ] && [ -n "$IDLE" ]; then
        echo "Idle connection memory (bench/connmem: certmapd's own SSL_CTX, glibc heap per connection):" \
            "OpenSSL's server SSL object with its session after an mTLS handshake holds $SSLK KiB," \
            "of which the client's decoded leaf certificate is $LEAFK KiB (libssl keeps it for the connection's" \
            "life; OpenSSL 3.0 has no API to release it). The issuing CA the client also sent ($CAK KiB decoded)" \
            "is freed once the verdict is known. The rest of certmapd's $IDLE KiB RSS per connection," \
            "about $(awk -v a="$IDLE" -v b="$SSLK" 'BEGIN {printf "%.1f", a - b}') KiB, is its own state" \
            "(struct io, evbuffers, HTTP parser, timers, certificate facts) and allocator overhead."
        [ -n "$IDB" ] && echo "The goal (≤ 0.33× the better peer) is $(awk -v b="$IDB" 'BEGIN {printf "%.1f", 0.33 * b}') KiB: less than OpenSSL's SSL object alone."
        echo
    fi
    echo "## What the client saw (bench/loadgen on one core; it may be the bottleneck)"
    echo
    echo "| phase | front | requests | req/s | p50 µs | p99 µs | errors | resumed |"
    echo "|---|---|---|---|---|---|---|---|"
    for ph in hs res ka; do
        for f in certmapd nginx haproxy; do
            printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$ph" "$f" \
                "$(show "$(get $f ${ph}_requests)")" "$(show "$(get $f ${ph}_rps)")" \
                "$(show "$(get $f ${ph}_p50_us)")" "$(show "$(get $f ${ph}_p99_us)")" \
                "$(show "$(get $f ${ph}_errors)")" "$(show "$(get $f ${ph}_resumed)")"
        done
    done
    echo
    echo "ab -k (HTTP/1.0 keep-alive): requests, of which kept alive, req/s, failed:"
    for f in certmapd nginx haproxy; do
        echo "- $f: $(show "$(get $f kab_requests)"), $(show "$(get $f kab_keepalive)") kept alive," \
            "$(show "$(get $f kab_rps)") req/s, $(show "$(get $f kab_errors)") failed"
    done
    echo
    echo "Idle connections: RSS before → while held (KiB):"
    for f in certmapd nginx haproxy; do
        echo "- $f: $(show "$(get $f idle_rss_base_kib)") → $(show "$(get $f idle_rss_held_kib)")" \
            "with $(show "$(get $f idle_conns)") connections"
    done
    echo
    echo "Held Pings (the front started afresh on bench/holdback): RSS before → with the first batch →" \
        "with all (KiB), and how long loadgen took to send each batch:"
    for f in certmapd nginx haproxy; do
        echo "- $f: $(show "$(get $f held_rss_base_kib)") → $(show "$(get $f held_lo_rss_kib)")" \
            "with $(show "$(get $f held_lo_conns)") → $(show "$(get $f held_hi_rss_kib)") with" \
            "$(show "$(get $f held_hi_conns)"); $(show "$(get $f held_lo_ramp_s)") s + $(show "$(get $f held_hi_ramp_s)") s"
    done
    echo
    echo "Chart: [latest.png](latest.png) (certmapd's ratios to each peer; below the goal line is a goal met)."
} >>"$MD"

if command -v gnuplot >/dev/null; then
    gnuplot <<EOF || echo "report.sh: gnuplot failed, no chart" >&2
set terminal pngcairo size 1000,520 font "sans,10"
set output "$OUT/latest.png"
set title "certmapd relative to nginx and HAProxy (1.0 = same; lower is better)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set yrange [0:*]
set grid ytics
set ylabel "certmapd / peer"
set key outside top center horizontal
set bmargin 4
plot "$DAT" using 2:xtic(1) title "certmapd / nginx" lc rgb "#4a7fb5", \
     "" using 3 title "certmapd / HAProxy" lc rgb "#e08a2c", \
     "" using (\$4 > 0 ? \$4 : 1/0) with points pt 7 ps 1.5 lc rgb "#c0392b" title "goal (vs the better peer)"
EOF
fi
