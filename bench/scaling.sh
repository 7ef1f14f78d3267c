# shellcheck shell=bash
# bench/scaling.sh, sourced by bench/run --scaling (issue 16 item 3): each front
# with one worker on core 0 (load on core 1), then with two workers on cores 0-1
# (the load on the same two cores: this machine has no third), for full
# handshakes + 1 request and keep-alive requests; RUNS rounds; then perf on the
# two-worker certmapd runs: where the time goes in locks. bench/scaling.py makes
# results/scaling.md from the figures (bench/README.md, "Multi-worker scaling").
#
# Uses from bench/run: W, BUILD, SRC, PKI, BP, BACKEND_PID, CERTMAPD, LOADGEN,
# AB, CLIENT, TCK, HS_N, HS_C, KA_N, KA_C, AB_N, AB_C, SMOKE, OUT, PIDS, FAILED,
# say, die, free_port, wait_port, front_pids, cpu_ticks, jget, stop_front,
# start_certmapd, start_nginx, start_haproxy (which read WORKERS, FRONT_CPU).

SC_TSV=$W/scaling.tsv
: >"$SC_TSV"
# sc_put RUN FRONT WORKERS PHASE FIGURE VALUE
sc_put() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$SC_TSV"; }

now_s() { date +%s.%N; }

# sc_cpus WORKERS: where the front and the load run. One worker: the front on
# core 0, loadgen/ab and the backend on core 1 (as bench/run). Two workers:
# everything on cores 0-1, the scheduler's to share.
sc_cpus() {
    if [ "$1" -eq 1 ]; then FRONT_CPU=0 LOAD_CPU=1; else FRONT_CPU=0-$(($1 - 1)) LOAD_CPU=0-$(($1 - 1)); fi
    taskset -apc "$LOAD_CPU" "$BACKEND_PID" >/dev/null 2>&1 || true
}

# sc_thread_ticks PIDS: "tid ticks" per thread of each process (utime + stime),
# sorted by tid (for join).
sc_thread_ticks() {
    local p t s
    for p in "$@"; do
        for t in /proc/"$p"/task/*; do
            s=$(cat "$t/stat" 2>/dev/null) || continue
            s=${s##*) }
            set -- $s
            echo "${t##*/} $((${12} + ${13}))"
        done
    done | sort -k1,1
}

# sc_measure RUN FRONT WORKERS PHASE PIDS -- LOADGEN ARGS: WORKERS loadgens
# at once (each with the given --connections: the same load per worker), on the
# load cores; the front's CPU from /proc over the wall time of the phase. "{i}"
# in an argument becomes the loadgen's number (0, 1, ...): its own leaves.
sc_measure() {
    local run=$1 front=$2 w=$3 phase=$4 pids=$5 i u0 k0 u1 k1 t0 t1 n=0 e=0 rc=0 js rps=0
    local lp=()
    shift 6
    sc_thread_ticks $pids >"$W/sc-threads0"
    read -r u0 k0 <<<"$(cpu_ticks $pids)"
    t0=$(now_s)
    for ((i = 0; i < w; i++)); do
        taskset -c "$LOAD_CPU" "$LOADGEN" "${@//\{i\}/$i}" >"$W/sc-lg$i.json" 2>>"$W/loadgen.log" &
        lp+=($!)
    done
    for i in "${lp[@]}"; do wait "$i" || rc=$?; done
    t1=$(now_s)
    read -r u1 k1 <<<"$(cpu_ticks $pids)"
    sc_thread_ticks $pids >"$W/sc-threads1"
    for ((i = 0; i < w; i++)); do
        js=$(cat "$W/sc-lg$i.json")
        n=$((n + $(jget requests "$js"))) e=$((e + $(jget errors "$js")))
        rps=$(awk -v a="$rps" -v b="$(jget rps "$js")" 'BEGIN {print a + b}')
    done
    if [ $rc -ne 0 ] || [ "$e" -ne 0 ]; then
        FAILED=1
        echo "bench/run --scaling: loadgen ($phase, $front, $w workers) failed: $e errors, exit $rc" >&2
    fi
    sc_figures "$run" "$front" "$w" "$phase" "$n" "$e" "$rps" "$t0" "$t1" "$u0" "$k0" "$u1" "$k1"
    say "$front w=$w $phase: $n requests, $rps req/s, $(awk -v t=$((u1 + k1 - u0 - k0)) -v h="$TCK" \
        -v n="$n" 'BEGIN {printf "%.1f", n ? t * 1e6 / h / n : 0}') µs CPU each"
}

# sc_phase RUN FRONT WORKERS PHASE PIDS PORT DIV HS-ARGS...: sc_measure of one
# phase: hs, full handshakes (HS-ARGS: the client's certificates), or ka,
# keep-alive requests (bench/run's CLIENT); HS_N or KA_N / DIV requests each.
sc_phase() {
    local run=$1 front=$2 w=$3 phase=$4 pids=$5 port=$6 div=$7
    shift 7
    if [ "$phase" = hs ]; then
        sc_measure "$run" "$front" "$w" hs "$pids" -- handshake --port "$port" "$@" \
            --requests "$((HS_N / div))" --connections "$HS_C" --max-time 300
    else
        sc_measure "$run" "$front" "$w" ka "$pids" -- keepalive --port "$port" "${CLIENT[@]}" \
            --requests "$((KA_N / div))" --connections "$KA_C" --max-time 300
    fi
}

# sc_figures RUN FRONT W PHASE N ERRORS RPS T0 T1 U0 K0 U1 K1: requests/s (the
# sum of the clients' own figures: they run at once, and loadgen's excludes its
# start-up, which reads 2 000 certificates with --cert-list), CPU µs per request
# (user, kernel), the front's busy cores (requests/s × CPU per request), per-core
# throughput (requests/s per busy core = 1e6 / CPU µs per request), and how the
# front's CPU fell on its threads or processes (the busiest two, as shares:
# SO_REUSEPORT's balance).
sc_figures() {
    local run=$1 front=$2 w=$3 phase=$4 n=$5 e=$6 rps=$7 t0=$8 t1=$9 u0=${10} k0=${11} u1=${12} k1=${13}
    sc_put "$run" "$front" "$w" "$phase" requests "$n"
    sc_put "$run" "$front" "$w" "$phase" errors "$e"
    [ "$n" -gt 0 ] || return 0
    sc_put "$run" "$front" "$w" "$phase" rps "$rps"
    sc_put "$run" "$front" "$w" "$phase" wall_s "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')"
    sc_put "$run" "$front" "$w" "$phase" cpu_us "$(awk -v t=$((u1 + k1 - u0 - k0)) -v h="$TCK" -v n="$n" 'BEGIN {printf "%.2f", t * 1e6 / h / n}')"
    sc_put "$run" "$front" "$w" "$phase" user_us "$(awk -v t=$((u1 - u0)) -v h="$TCK" -v n="$n" 'BEGIN {printf "%.2f", t * 1e6 / h / n}')"
    sc_put "$run" "$front" "$w" "$phase" sys_us "$(awk -v t=$((k1 - k0)) -v h="$TCK" -v n="$n" 'BEGIN {printf "%.2f", t * 1e6 / h / n}')"
    sc_put "$run" "$front" "$w" "$phase" busy_cores "$(awk -v t=$((u1 + k1 - u0 - k0)) -v h="$TCK" -v n="$n" -v r="$rps" 'BEGIN {printf "%.3f", r * t / h / n}')"
    sc_put "$run" "$front" "$w" "$phase" threads "$(join "$W/sc-threads0" "$W/sc-threads1" 2>/dev/null |
        awk '{d = $3 - $2; if (d > 0) print d}' | sort -rn | awk '{v[NR] = $1; s += $1}
        END {for (i = 1; i <= NR && i <= 2; i++) printf "%s%.0f%%", (i > 1 ? "/" : ""), s ? 100 * v[i] / s : 0}')"
}

# sc_ab RUN FRONT W PHASE PIDS PORT: WORKERS ab -k at once, as sc_measure.
sc_ab() {
    local run=$1 front=$2 w=$3 phase=$4 pids=$5 port=$6 i u0 k0 u1 k1 t0 t1 n=0 e=0 rc=0 out c f x r rps=0
    local lp=()
    [ -n "$AB" ] || return 0
    sc_thread_ticks $pids >"$W/sc-threads0"
    read -r u0 k0 <<<"$(cpu_ticks $pids)"
    t0=$(now_s)
    for ((i = 0; i < w; i++)); do
        timeout 300 taskset -c "$LOAD_CPU" "$AB" -q -k -c "$AB_C" -n "$AB_N" -E "$PKI/good.bundle.pem" \
            "https://127.0.0.1:$port/" >"$W/sc-ab$i.txt" 2>&1 &
        lp+=($!)
    done
    for i in "${lp[@]}"; do wait "$i" || rc=$?; done
    t1=$(now_s)
    read -r u1 k1 <<<"$(cpu_ticks $pids)"
    sc_thread_ticks $pids >"$W/sc-threads1"
    for ((i = 0; i < w; i++)); do
        out=$(cat "$W/sc-ab$i.txt")
        cat "$W/sc-ab$i.txt" >>"$W/ab.log"
        c=$(sed -n 's/^Complete requests: *\([0-9]*\).*/\1/p' <<<"$out")
        f=$(sed -n 's/^Failed requests: *\([0-9]*\).*/\1/p' <<<"$out")
        x=$(sed -n 's/^Non-2xx responses: *\([0-9]*\).*/\1/p' <<<"$out")
        r=$(sed -n 's/^Requests per second: *\([0-9.]*\).*/\1/p' <<<"$out")
        n=$((n + ${c:-0})) e=$((e + ${f:-1} + ${x:-0}))
        rps=$(awk -v a="$rps" -v b="${r:-0}" 'BEGIN {print a + b}')
    done
    if [ $rc -ne 0 ] || [ "$e" -ne 0 ] || [ "$n" -ne $((w * AB_N)) ]; then
        FAILED=1
        echo "bench/run --scaling: ab ($front, $w workers) failed: $n requests, $e errors, exit $rc (log $W/ab.log)" >&2
    fi
    sc_figures "$run" "$front" "$w" "$phase" "$n" "$e" "$rps" "$t0" "$t1" "$u0" "$k0" "$u1" "$k1"
    say "$front w=$w $phase (ab): $n requests, $rps req/s"
}

# The identity-cache configuration: [mapping] source = ldif with an account for
# good.crt's UPN (alice, as bench/mapping.sh) and one for each of SC_LEAVES
# leaves from mkleaves, so that handshakes with --cert-list put and get many
# distinct keys in mapping/cache.c's shards, and keep-alive requests with one
# certificate get the same key (one shard) from every worker. Each loadgen has
# its own 2 000 leaves (list.0, list.1), so that with 1 or 2 workers alike half
# the handshakes are a first sight (an identity-cache miss, and a chain the
# chain-verify cache has not seen) and half a second one.
SC_LEAVES=4000
sc_ldif() {
    local d=$W/scmap
    mkdir -p "$d/leaves"
    "$BUILD/bench/mkleaves" "$PKI/issuing-ca.crt" "$PKI/issuing-ca.key" "$d/leaves" "$SC_LEAVES" bench \
        2>"$d/mkleaves.log" || die "mkleaves failed: $(cat "$d/mkleaves.log")"
    head -n $((SC_LEAVES / 2)) "$d/leaves/list" >"$d/leaves/list.0"
    tail -n +$((SC_LEAVES / 2 + 1)) "$d/leaves/list" | head -n $((SC_LEAVES / 2)) >"$d/leaves/list.1"
    python3 - "$d/accounts.ldif" "$SC_LEAVES" <<'EOF'
import base64, struct, sys
base = "DC=corp,DC=example,DC=test"
def sid(rid):
    auth = [21, 436881243, 830612363, 2677326092, rid]
    return base64.b64encode(bytes([1, len(auth)]) + (5).to_bytes(6, "big") +
                            b"".join(struct.pack("<I", a) for a in auth)).decode()
with open(sys.argv[1], "w") as f:
    names = ["alice"] + ["bench%05d" % i for i in range(int(sys.argv[2]))]
    for i, n in enumerate(names):
        f.write(f"dn: CN={n},CN=Users,{base}\nobjectClass: top\nobjectClass: person\n"
                f"objectClass: organizationalPerson\nobjectClass: user\ncn: {n}\n"
                f"sAMAccountName: {n}\nuserPrincipalName: {n}@corp.example.test\n"
                f"distinguishedName: CN={n},CN=Users,{base}\nobjectSid:: {sid(1102 + i)}\n"
                f"userAccountControl: 512\nwhenCreated: 20200101000000.0Z\n\n")
EOF
    SC_MAPPING_CONF="[mapping]
source = ldif
ldif_file = $d/accounts.ldif
methods = upn
enforcement = disabled
cache_ttl = 5m"
}
start_certmapd_ldif() {
    # shellcheck disable=SC2034 # read by start_certmapd
    local MAPPING_CONF=$SC_MAPPING_CONF
    start_certmapd "$@"
}

# sc_front RUN FRONT WORKERS: start it, check it, measure each phase, stop it.
sc_front() {
    local run=$1 front=$2 w=$3 port pid pids js hs_args=("${CLIENT[@]}")
    sc_cpus "$w"
    port=$(free_port)
    say "run $run: $front, $w worker(s) on core(s) $FRONT_CPU, load on $LOAD_CPU"
    WORKERS=$w "start_$front" "$port" "$BP" "-w$w-r$run"
    pid=$!
    PIDS+=("$pid")
    wait_port "$port" "$pid" "$front"
    sleep 0.3 # nginx's workers fork after the master listens
    pids=$(front_pids "$pid" | tr '\n' ' ')
    if ! js=$(taskset -c "$LOAD_CPU" "$LOADGEN" handshake --port "$port" "${CLIENT[@]}" \
        --requests 20 --connections 2 --max-time 30 2>>"$W/loadgen.log"); then
        FAILED=1
        echo "bench/run --scaling: $front ($w workers) does not answer" >&2
        stop_front "$pid"
        return
    fi
    if [ "$front" = certmapd_ldif ]; then
        # Does it map? The backend echoes the identity it was given.
        js=$(curl -s --max-time 10 --cacert "$PKI/root-ca.crt" --cert "$PKI/good.chain.pem" \
            --key "$PKI/good.key" "https://127.0.0.1:$port/whoami" || true)
        [ "$js" = alice@corp.example.test ] ||
            { FAILED=1; echo "bench/run --scaling: certmapd_ldif does not map (got '$js')" >&2; }
        hs_args=(--cert-list "$W/scmap/leaves/list.{i}" --cafile "$PKI/root-ca.crt")
    fi
    if [ "$run" = prof ]; then
        sc_profile "$front" "$pid" "$pids" "$port" "${hs_args[@]}"
        stop_front "$pid"
        return
    fi
    sc_phase "$run" "$front" "$w" hs "$pids" "$port" 1 "${hs_args[@]}"
    sc_phase "$run" "$front" "$w" ka "$pids" "$port" 1
    sc_ab "$run" "$front" "$w" kab "$pids" "$port"
    stop_front "$pid"
}

# sc_profile FRONT PID PIDS PORT HS-ARGS...: perf record -g (DWARF stacks, all
# threads) of the front under the handshake and the keep-alive load, the same
# loadgens as the runs; then bench/scaling.py --locks sorts the samples in lock
# functions and futex by who took the lock. perf lock contention (the kernel's
# lock:contention_* tracepoints) over a keep-alive run, when perf has it.
sc_profile() {
    local front=$1 pid=$2 pids=$3 port=$4 phase ppid
    shift 4
    command -v perf >/dev/null || { echo "bench/run --scaling: perf missing: no profile" >&2; return 0; }
    mkdir -p "$OUT"
    for phase in hs ka; do
        perf record -q --call-graph dwarf,16384 -F 999 -p "$pid" -o "$W/sc-perf-$front-$phase.data" \
            2>"$W/sc-perf-$front-$phase.log" &
        ppid=$!
        sleep 0.5
        sc_phase prof "$front" "$SC_MAXW" "$phase" "$pids" "$port" 1 "$@"
        kill -INT "$ppid" 2>/dev/null || true
        wait "$ppid" 2>/dev/null || true
        perf script -i "$W/sc-perf-$front-$phase.data" -F comm,tid,period,ip,sym,dso \
            >"$W/sc-perf-$front-$phase.script" 2>/dev/null || continue
        python3 "$SRC/bench/scaling.py" --locks "$W/sc-perf-$front-$phase.script" \
            --title "$front, $SC_MAXW workers, $phase" >"$OUT/scaling-locks-$front-$phase.txt" ||
            echo "bench/run --scaling: bench/scaling.py --locks failed" >&2
        perf report -i "$W/sc-perf-$front-$phase.data" --stdio --no-children -g none --percent-limit 0.5 \
            --sort dso,symbol 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60 \
            >"$OUT/scaling-profile-$front-$phase.txt" || true
    done
    sc_lockcalls "$front" "$pid" "$pids" "$port" "$@"
    # Kernel lock contention in certmapd's threads (spinlocks, mutexes, rwsems:
    # the lock:contention_* tracepoints; a futex wait shows here only as the
    # kernel's own locks around it).
    if { perf lock -h 2>&1 || true; } | grep -q contention; then
        timeout -s INT "$SC_LOCK_S" perf lock record -p "$pid" -o "$W/sc-lock-$front.data" \
            >"$W/sc-lock-$front.log" 2>&1 &
        ppid=$!
        sleep 0.3
        sc_measure prof "$front" "$SC_MAXW" ka_lock "$pids" -- keepalive --port "$port" "${CLIENT[@]}" \
            --duration "$((SC_LOCK_S - 1))" --connections "$KA_C" --max-time 300
        wait "$ppid" 2>/dev/null || true
        perf lock contention -i "$W/sc-lock-$front.data" -E 15 \
            >"$OUT/scaling-perflock-$front-ka.txt" 2>&1 || true
    fi
}

# sc_lockcalls FRONT PID PIDS PORT HS-ARGS...: how many pthread mutex and
# read-write lock acquisitions a request makes (uprobes on libc's
# pthread_mutex_lock, pthread_rwlock_rdlock and _wrlock, counted by perf stat
# in the front's threads only; OpenSSL 3.0's CRYPTO_THREAD_read_lock/write_lock
# are one rwlock call each), for a handshake and a keep-alive request. The
# probes are removed afterwards. A quarter of the counts of the runs: each
# probe hit is a trap, ~20 times slower, and the count per request does not
# depend on the length of the run.
sc_lockcalls() {
    local front=$1 pid=$2 pids=$3 port=$4 libc phase spid ev f n
    shift 4
    # (awk reads to the end: an early exit would SIGPIPE ldconfig, fatal under pipefail)
    libc=$(ldconfig -p | awk '/libc\.so\.6 .*x86-64/ && !v {v = $NF} END {print v}')
    [ -n "$libc" ] || return 0
    perf probe -q -d 'probe_libc:pthread_*' >/dev/null 2>&1 || true
    if ! perf probe -q -x "$libc" -a pthread_mutex_lock -a pthread_rwlock_rdlock \
        -a pthread_rwlock_wrlock >"$W/sc-probe.log" 2>&1; then
        echo "bench/run --scaling: perf probe failed: no lock counts ($W/sc-probe.log)" >&2
        return 0
    fi
    for phase in hs ka; do
        f=$W/sc-stat-$front-$phase.csv
        perf stat -x, -e probe_libc:pthread_mutex_lock,probe_libc:pthread_rwlock_rdlock,probe_libc:pthread_rwlock_wrlock \
            -p "$pid" -o "$f" &
        spid=$!
        sleep 0.5
        sc_phase lockcalls "$front" "$SC_MAXW" "$phase" "$pids" "$port" 4 "$@"
        kill -INT "$spid" 2>/dev/null || true
        wait "$spid" 2>/dev/null || true
        # Who takes them, for handshakes: the same probes recorded with their
        # stacks over 50 handshakes (every call is a sample, and DWARF stacks
        # make large files; the keep-alive profile's owners are in
        # scaling-locks-*-ka.txt).
        if [ $phase = hs ]; then
            perf record -q -e probe_libc:pthread_rwlock_rdlock -e probe_libc:pthread_rwlock_wrlock \
                -e probe_libc:pthread_mutex_lock --call-graph dwarf,4096 -p "$pid" \
                -o "$W/sc-probe-$front-$phase.data" 2>>"$W/sc-probe.log" &
            spid=$!
            sleep 0.5
            taskset -c "$LOAD_CPU" "$LOADGEN" handshake --port "$port" "${@//\{i\}/0}" --requests 50 \
                --connections "$HS_C" --max-time 120 >/dev/null 2>>"$W/loadgen.log" || true
            kill -INT "$spid" 2>/dev/null || true
            wait "$spid" 2>/dev/null || true
            perf script -i "$W/sc-probe-$front-$phase.data" -F event,ip,sym,dso 2>/dev/null |
                python3 "$SRC/bench/scaling.py" --callers - \
                    --title "$front, $SC_MAXW workers, $phase: who takes pthread locks (uprobe samples)" \
                    >"$OUT/scaling-lockcallers-$front-$phase.txt" ||
                echo "bench/run --scaling: lock callers failed" >&2
            rm -f "$W/sc-probe-$front-$phase.data"
        fi
        n=$(awk -F'\t' -v f="$front" -v p="$phase" '$1 == "lockcalls" && $2 == f && $4 == p &&
            $5 == "requests" {v = $6} END {print v + 0}' "$SC_TSV")
        for ev in pthread_mutex_lock pthread_rwlock_rdlock pthread_rwlock_wrlock; do
            sc_put lockcalls "$front" "$SC_MAXW" "$phase" "$ev" "$(awk -F, -v e="probe_libc:$ev" -v n="$n" \
                '$3 == e && n > 0 {printf "%.2f", $1 / n}' "$f")"
        done
    done
    perf probe -q -d 'probe_libc:pthread_*' >/dev/null 2>&1 || true
}

# scaling_main: the whole --scaling run.
scaling_main() {
    local run front w
    SC_MAXW=$(($(nproc) < 2 ? 1 : 2))
    SC_LOCK_S=$([ "$SMOKE" -eq 1 ] && echo 3 || echo 8)
    [ "$SC_MAXW" -ge 2 ] || die "--scaling needs two cores"
    sc_ldif
    mkdir -p "$OUT"
    : >"$W/scaling-load.txt"
    for ((run = 1; run <= SC_RUNS; run++)); do
        echo "run $run start $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >>"$W/scaling-load.txt"
        for front in $SC_FRONTS; do
            for w in 1 "$SC_MAXW"; do
                sc_front "$run" "$front" "$w"
            done
        done
        echo "run $run end $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >>"$W/scaling-load.txt"
    done
    if [ "$PROFILE" -eq 1 ]; then
        for front in $SC_FRONTS; do
            [[ $front == certmapd* ]] && sc_front prof "$front" "$SC_MAXW"
        done
    fi
    cp "$SC_TSV" "$OUT/scaling.tsv"
    cp "$W/scaling-load.txt" "$OUT/scaling-load.txt"
    python3 "$SRC/bench/scaling.py" --report "$OUT/scaling.tsv" --load "$OUT/scaling-load.txt" \
        --machine "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(nproc) cores, Linux $(uname -r)" \
        --sizes "handshakes $HS_N per loadgen ($HS_C connections each), keep-alive $KA_N per loadgen on $KA_C connections, ab -k -n $AB_N -c $AB_C per ab; one loadgen/ab per worker" \
        --profiles "$OUT" >"$OUT/scaling.md" || die "bench/scaling.py failed"
    say "results: $OUT/scaling.md"
    if [ "$FAILED" -ne 0 ]; then
        echo "bench/run --scaling: some runs failed (loadgen log: $W/loadgen.log)" >&2
        exit 1
    fi
    exit 0
}
