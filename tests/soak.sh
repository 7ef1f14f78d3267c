#!/usr/bin/env bash
# The soak: certmapd under a mixed load for MINUTES minutes (default 5), then
# checks that nothing grew, crashed, leaked or let anyone through
# (tests/soak/soak.py says what it does and checks). Not part of the default
# suite; CI runs `tests/soak.sh 5` on the ASan build after the ASan suite.
#   tests/soak.sh [MINUTES]
# Environment: BUILD_DIR (default: build-asan when it has a certmapd, else
# build); the test PKI is made under it when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-5}
build=${BUILD_DIR:-}
if [ -z "$build" ]; then
  build=build
  if [ -x build-asan/certmapd ]; then build="build-asan"; fi
fi
[ -x "$build/certmapd" ] || { echo "soak: no $build/certmapd (build first)" >&2; exit 1; }
export CERTMAPD_BIN=$PWD/$build/certmapd
export CERTMAPD_TEST_PKI=$PWD/$build/test-pki
export CERTMAPD_SOURCE_DIR=$PWD
[ -f "$CERTMAPD_TEST_PKI/.complete" ] || tests/pki/mkpki.sh "$CERTMAPD_TEST_PKI" >/dev/null
# A small quarantine, so that RSS says what certmapd holds rather than what
# ASan keeps of freed memory; any report fails the soak.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:quarantine_size_mb=16
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
echo "soak: $minutes min on $build/certmapd"
exec /usr/bin/python3 tests/soak/soak.py "$minutes"
