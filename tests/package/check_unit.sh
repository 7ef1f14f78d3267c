#!/usr/bin/env bash
# The systemd unit as CMake configured it (BUILD_DIR/certmapd.service):
# `systemd-analyze verify` finds nothing to say (directives, the commands it
# runs, the man pages of Documentation=), `systemd-analyze security` rates it
# at most 3.0 ("OK"), and it keeps what the issue asks of it.
# usage: check_unit.sh BUILD_DIR SBINDIR   (exit 77: no systemd-analyze, skipped)
set -euo pipefail
build=$(cd "$1" && pwd) sbindir=$2
command -v systemd-analyze >/dev/null || { echo "SKIP: no systemd-analyze (Debian: systemd)"; exit 77; }
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
fail=0
bad() { echo "FAIL: $*"; fail=1; }

# verify checks that Exec*= commands exist: point them at the binary just built.
sed "s|$sbindir/certmapd|$build/certmapd|g" "$build/certmapd.service" >"$t/certmapd.service"
mkdir -p "$t/man/man8" "$t/man/man5"
cp "$build/certmapd.8" "$t/man/man8/" && cp "$build/certmapd.conf.5" "$t/man/man5/"
out=$(cd "$t" && MANPATH=$t/man systemd-analyze verify ./certmapd.service 2>&1) ||
  bad "systemd-analyze verify failed: $out"
[ -z "$out" ] || bad "systemd-analyze verify says: $out"

sec=$(systemd-analyze security --offline=yes --threshold=30 "$t/certmapd.service" 2>&1) ||
  bad "systemd-analyze security rates the unit above 3.0: $(tail -n 1 <<<"$sec")"
echo "${sec##*$'\n'}"

u=$t/certmapd.service
want() { grep -Eq "$1" "$u" || bad "the unit lacks $2"; }
want '^Type=notify$' 'Type=notify'
want "^ExecStartPre=$build/certmapd -t -c /" 'ExecStartPre=certmapd -t -c FILE'
want '^ExecReload=/bin/kill -HUP \$MAINPID$' 'ExecReload=/bin/kill -HUP $MAINPID'
want '^ProtectSystem=strict$' 'ProtectSystem=strict'
want '^ReadWritePaths=/var/log/certmapd$' 'ReadWritePaths=/var/log/certmapd'
want '^NoNewPrivileges=yes$' 'NoNewPrivileges=yes'
want '^CapabilityBoundingSet=.*CAP_NET_BIND_SERVICE' 'CAP_NET_BIND_SERVICE in the bounding set'
# The drain lasts up to 30 s (proxy/main.c SHUTDOWN_GRACE_MS): systemd must wait longer.
stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s$/\1/p' "$u")
[ -n "$stop" ] && [ "$stop" -gt 30 ] || bad "TimeoutStopSec=${stop:-unset} does not outlast the 30 s drain"
grep -q 'SHUTDOWN_GRACE_MS 30000' "$(dirname "$0")/../../proxy/main.c" ||
  bad "proxy/main.c's drain is no longer 30 s: adjust TimeoutStopSec and this check"
[ $fail = 0 ] && echo "unit OK"
exit $fail
