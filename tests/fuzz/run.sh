#!/usr/bin/env bash
# Builds the libFuzzer harnesses (clang, CERTMAPD_FUZZ) and runs each for
# SECONDS (default 60; LONG = 600) on a copy of its seed corpus, so the repo
# is not modified. Prints each harness's executions and coverage (libFuzzer's
# final "#N DONE cov: X" line); exits non-zero if any harness crashed, leaked,
# timed out or broke an invariant (the input is kept under $FUZZ_OUT).
#   tests/fuzz/run.sh [SECONDS|LONG] [HARNESS...]
# Environment: BUILD_DIR (default build-fuzz), FUZZ_OUT (default a temp dir),
# FUZZ_JOBS (harnesses at once; default one per core).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-60}
[ "$secs" = LONG ] && secs=600
shift || true
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] ||
  harnesses=(http_stream cert_facts conf ldap_values ldif policy_path mapcmd proxyproto shared_value)
build=${BUILD_DIR:-build-fuzz}

cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DCERTMAPD_FUZZ=ON >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${harnesses[@]/#/fuzz_}" >/dev/null

out=${FUZZ_OUT:-$(mktemp -d /tmp/certmapd-fuzz-run.XXXXXX)}
mkdir -p "$out"
# fuzz_mapcmd needs the test PKI (its config names the PKI's CA and server files).
export CERTMAPD_TEST_PKI=$out/pki
[ -f "$CERTMAPD_TEST_PKI/.complete" ] || tests/pki/mkpki.sh "$CERTMAPD_TEST_PKI" >/dev/null
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# One harness: its corpus, its run, its line of the table in $out/$h.row.
fuzz_one() {
  local h=$1 corpus=$out/corpus-$h log=$out/$h.log rc=0
  rm -rf "$corpus"
  cp -r "tests/fuzz/corpus/$h" "$corpus"
  if [ "$h" = mapcmd ] || [ "$h" = cert_facts ]; then
    # This PKI's own leaves verify: the policy and the LDIF lookups are reached.
    for c in good sid long meta revoked expired; do
      openssl x509 -in "$CERTMAPD_TEST_PKI/$c.crt" -outform DER -out "$corpus/live-$c.der"
    done
  fi
  mkdir -p "$out/crash-$h"
  "$build/tests/fuzz/fuzz_$h" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$out/crash-$h/" "$corpus" >"$log" 2>&1 || rc=$?
  local done_line execs cov result=ok
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
  execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$done_line")
  cov=$(sed -nE 's/.*cov: ([0-9]+).*/\1/p' <<<"$done_line")
  if [ "$rc" -ne 0 ] || ls "$out/crash-$h/"* >/dev/null 2>&1; then
    result="FAILED (rc $rc): $log, $out/crash-$h/"
  fi
  printf '%-12s %10s %8s %s\n' "$h" "${execs:--}" "${cov:--}" "$result" >"$out/$h.row"
}

# One harness per core at a time (FUZZ_JOBS): each runs SECONDS either way.
jobs=${FUZZ_JOBS:-$(nproc)}
running=0
for h in "${harnesses[@]}"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  fuzz_one "$h" &
  running=$((running + 1))
done
wait || true
failed=0
printf '%-12s %10s %8s %s\n' harness execs cov result
for h in "${harnesses[@]}"; do
  if [ -f "$out/$h.row" ]; then
    cat "$out/$h.row"
    grep -q FAILED "$out/$h.row" && failed=1
  else
    printf '%-12s %10s %8s %s\n' "$h" - - "FAILED: no result"
    failed=1
  fi
done
rm -f /tmp/certmapd-fuzz-*-[0-9]* 2>/dev/null || true
if [ "$failed" -ne 0 ]; then
  echo "fuzz: a harness failed; inputs and logs kept in $out" >&2
  exit 1
fi
[ -n "${FUZZ_OUT:-}" ] || rm -rf "$out"
