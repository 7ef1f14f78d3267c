#!/usr/bin/env bash
# Builds certmapd and runs the whole test suite (unit, end to end, Samba AD).
#   tests/run.sh                      normal build in build/
#   SANITIZE=1 BUILD_DIR=build-asan tests/run.sh   ASan + UBSan build
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
BUILD_DIR=${BUILD_DIR:-build}
args=(-DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-RelWithDebInfo}")
[ "${SANITIZE:-0}" = 1 ] && args+=(-DCERTMAPD_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug)
cmake -S . -B "$BUILD_DIR" "${args[@]}" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j"${CTEST_JOBS:-2}" --timeout 900
