#!/usr/bin/env bash
# certmapd demo: installs what is needed, builds, makes a demo PKI (first run
# only), starts an echo backend on 127.0.0.1:8080 and certmapd on
# https://localhost:8443, then shows one accepted request and what the
# backend saw. Stop it with demo/stop.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUN=$ROOT/demo/run

scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" >/dev/null

mkdir -p "$RUN"
tests/pki/mkpki.sh "$RUN/pki" >/dev/null
sed "s|@PKI@|$RUN/pki|g; s|@RUN@|$RUN|g; s|@ROOT@|$ROOT|g" demo/certmapd.conf.in >"$RUN/certmapd.conf"
cp demo/users.ldif "$RUN/users.ldif"

demo/stop.sh >/dev/null 2>&1 || true
build/certmapd -t -c "$RUN/certmapd.conf"
# Both must be up before the showcase request: waiting for certmapd alone
# let the first request meet a backend still starting (502).
setsid python3 tests/e2e/backend.py --port 8080 >"$RUN/backend.log" 2>&1 &
echo $! >"$RUN/backend.pid"
setsid build/certmapd -c "$RUN/certmapd.conf" >"$RUN/certmapd.log" 2>&1 &
echo $! >"$RUN/certmapd.pid"

# wait_port NAME PIDFILE PORT LOG: until PORT accepts, for at most 10 s; fails
# with the process's log when it exits or never listens.
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$3") 2>/dev/null && return 0
    if ! kill -0 "$(cat "$2")" 2>/dev/null; then
      echo "demo: the $1 exited before listening on port $3; its log ($4):" >&2
      tail -n 20 "$4" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "demo: the $1 does not listen on port $3 after 10 s; its log ($4):" >&2
  tail -n 20 "$4" >&2
  return 1
}
wait_port backend "$RUN/backend.pid" 8080 "$RUN/backend.log"
wait_port certmapd "$RUN/certmapd.pid" 8443 "$RUN/certmapd.log"

CURL="curl -sS --cacert $RUN/pki/root-ca.crt --cert $RUN/pki/good.chain.pem --key $RUN/pki/good.key https://localhost:8443/Microsoft-Server-ActiveSync?Cmd=Ping"
echo
echo "certmapd is running on https://localhost:8443 (log: $RUN/certmapd.log; stop: demo/stop.sh)"
echo
echo "An accepted request, mapped to alice, and what the backend received (X-Remote-User...):"
echo "  $CURL"
echo
answer=$($CURL -w '\n%{http_code}' 2>&1) || true
status=${answer##*$'\n'}
body=${answer%$'\n'*}
echo "$body"
echo
if [ "$status" != 200 ]; then
  echo "demo: the showcase request failed: HTTP status ${status:-none}; certmapd's log ($RUN/certmapd.log):" >&2
  tail -n 20 "$RUN/certmapd.log" >&2
  exit 1
fi
if ! grep -q '"X-Remote-User", "alice@corp.example.test"' <<<"$body"; then
  echo "demo: the showcase request was answered, but the backend did not receive X-Remote-User alice@corp.example.test" >&2
  exit 1
fi
echo "Without a certificate certmapd answers 403 (reason cert_required in the log):"
echo "  curl --cacert $RUN/pki/root-ca.crt https://localhost:8443/Microsoft-Server-ActiveSync"
echo
echo "How the certificate maps, step by step, without serving:"
echo "  build/certmapd map -c $RUN/certmapd.conf --cert $RUN/pki/good.chain.pem"
