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
setsid python3 tests/e2e/backend.py --port 8080 >"$RUN/backend.log" 2>&1 &
echo $! >"$RUN/backend.pid"
setsid build/certmapd -c "$RUN/certmapd.conf" >"$RUN/certmapd.log" 2>&1 &
echo $! >"$RUN/certmapd.pid"

for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/8443) 2>/dev/null && break
  sleep 0.1
done

CURL="curl -sS --cacert $RUN/pki/root-ca.crt --cert $RUN/pki/good.chain.pem --key $RUN/pki/good.key https://localhost:8443/Microsoft-Server-ActiveSync?Cmd=Ping"
echo
echo "certmapd is running on https://localhost:8443 (log: $RUN/certmapd.log; stop: demo/stop.sh)"
echo
echo "An accepted request, mapped to alice, and what the backend received (X-Remote-User...):"
echo "  $CURL"
echo
$CURL
echo
echo "Without a certificate certmapd answers 403 (reason cert_required in the log):"
echo "  curl --cacert $RUN/pki/root-ca.crt https://localhost:8443/Microsoft-Server-ActiveSync"
echo
echo "How the certificate maps, step by step, without serving:"
echo "  build/certmapd map -c $RUN/certmapd.conf --cert $RUN/pki/good.chain.pem"
