#!/usr/bin/env bash
# The Debian package, end to end, on a machine that has nothing yet:
#
#   ../shared/tools/fresh-debian -- 'tests/package/deb-test.sh --fresh-root'
#
# Installs the build dependencies (debian/control), builds the package with
# `dpkg-buildpackage -us -uc -b` from a copy of the tree, installs the .deb
# with apt, checks what it installed (the certmapd user, file owners and
# modes, man pages), adapts /etc/certmapd/certmapd.conf to the test PKI, an
# LDIF mapping source and a test backend, and starts /usr/sbin/certmapd the
# way the unit does: ExecStartPre and ExecStart read from the installed unit,
# as root, inside the unit's capability bounding set with no_new_privs, with
# the file system read-only but for /var/log/certmapd (ProtectSystem=strict),
# and a notification socket in systemd's place. Then: 403 cert_required
# without a certificate, 200 mapped to alice with one, privileges dropped,
# logrotate + SIGUSR1, `certmapd -t` as the certmapd user, SIGTERM, purge.
# Everything that listens does so in a network namespace of its own (on 443:
# the privileged port is the point), so nothing meets another test's ports.
#
# Changes the machine it runs on (packages, /etc, a system user): refuses to
# run without --fresh-root.
set -euo pipefail

die() { echo "deb-test: FAIL: $*" >&2; exit 1; }
step() { echo "== deb-test: $*"; }

if [ "${1:-}" = --in-netns ]; then
  phase=serve T=$2
else
  [ "${1:-}" = --fresh-root ] || die "run it in a throw-away root: fresh-debian -- '$0 --fresh-root'"
  phase=build T=
fi
[ "$(id -u)" = 0 ] || die "must run as root"
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/../.."
SRC=$(pwd)
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

# Mount namespaces: private propagation, or, in a chroot (whose / is no mount
# point, so propagation cannot be set), unchanged when no mount is shared:
# then nothing mounted here can reach the machine's own tree.
PROP=private
if ! unshare -m --propagation private true 2>/dev/null; then
  grep -q ' shared:' /proc/self/mountinfo &&
    die "cannot make a private mount namespace here: / is no mount point and mounts are shared"
  PROP=unchanged
fi
export PROP

# ---------------------------------------------------------------- phase 1
if [ $phase = build ]; then
  start=$SECONDS
  T=$(mktemp -d /tmp/deb-test.XXXXXX)
  step "build dependencies (debian/control) and the test's tools"
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends build-essential dpkg-dev fakeroot >/dev/null
  apt-get build-dep -y -q --no-install-recommends "$SRC" >/dev/null
  # clients, PKI, backend, pages, rotation; util-linux has setpriv and unshare
  apt-get install -y -q --no-install-recommends curl openssl python3 man-db logrotate procps \
    util-linux mount iproute2 >/dev/null

  step "dpkg-buildpackage -us -uc -b (in a copy of the tree: the .deb lands beside it)"
  mkdir "$T/src"
  tar -C "$SRC" --exclude=./.git --exclude='./build*' -cf - . | tar -C "$T/src" -xf -
  (cd "$T/src" && dpkg-buildpackage -us -uc -b) >"$T/build.log" 2>&1 ||
    { tail -n 40 "$T/build.log" >&2; die "dpkg-buildpackage failed (log above)"; }
  deb=$(ls "$T"/certmapd_*_*.deb)
  echo "built $(basename "$deb") in $((SECONDS - start)) s"

  step "apt install $(basename "$deb")"
  apt-get install -y -q --no-install-recommends "$deb" >"$T/install.log" 2>&1 ||
    { cat "$T/install.log" >&2; die "apt-get install failed"; }
  ver=$(dpkg-query -W -f '${Version}' certmapd)
  [ "$(/usr/sbin/certmapd --version)" = "certmapd $ver" ] ||
    die "package version $ver, but the binary says: $(/usr/sbin/certmapd --version)"

  step "what the package installed"
  getent passwd certmapd >/dev/null || die "no certmapd user"
  IFS=: read -r _ _ uid gid _ home shell < <(getent passwd certmapd)
  [ "$uid" -lt 1000 ] || die "certmapd is not a system user (uid $uid)"
  [ "$(getent group certmapd | cut -d: -f3)" = "$gid" ] || die "certmapd's group is not its own"
  [ "$home" = /nonexistent ] && [ "$shell" = /usr/sbin/nologin ] ||
    die "certmapd's home/shell: $home $shell"
  perm() { [ "$(stat -c '%U:%G %a' "$1")" = "$2" ] || die "$1 is $(stat -c '%U:%G %a' "$1"), want $2"; }
  perm /etc/certmapd "root:certmapd 750"
  perm /etc/certmapd/certmapd.conf "root:certmapd 640"
  perm /var/log/certmapd "certmapd:adm 2750"
  perm /var/log/certmapd/access.log "certmapd:adm 640"
  unit=/lib/systemd/system/certmapd.service
  [ -f $unit ] || die "no $unit"
  grep -qx 'Type=notify' $unit || die "the unit is not Type=notify"
  grep -qx '/etc/certmapd/certmapd.conf' /var/lib/dpkg/info/certmapd.conffiles ||
    die "/etc/certmapd/certmapd.conf is not a conffile"
  grep -qx '/etc/logrotate.d/certmapd' /var/lib/dpkg/info/certmapd.conffiles ||
    die "/etc/logrotate.d/certmapd is not a conffile"
  [ -e /etc/systemd/system/multi-user.target.wants/certmapd.service ] &&
    die "the unit was enabled at installation, before any certificate is there"
  # (By executable: this root shares its process table with the machine's.)
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/exe" 2>/dev/null)" = /usr/sbin/certmapd ] && die "certmapd was started at installation"
  done
  # shellcheck disable=SC2086 # $p is "SECTION PAGE"
  for p in "8 certmapd" "5 certmapd.conf"; do
    f=$(man -w $p) || die "man $p: not installed"
    out=$(MANWIDTH=80 man --warnings=w $p 2>&1 >/dev/null) || die "man $p failed: $out"
    [ -z "$out" ] || die "man $p warns: $out"
    echo "man $p: $f"
  done
  MANWIDTH=80 man 5 certmapd.conf | grep -q '^       keepalive_timeout = 65m$' ||
    die "certmapd.conf(5) does not show keepalive_timeout = 65m"
  # The packaged configuration is the example with the package's user and log.
  grep -qx 'user = certmapd' /etc/certmapd/certmapd.conf || die "the configuration lacks user = certmapd"

  step "the test PKI, the configuration adapted to it"
  tests/pki/mkpki.sh "$T/pki" >/dev/null
  for f in server-chain.pem server.key trust-anchors.pem trusted-issuers.pem crl.pem; do
    install -o root -g certmapd -m 0640 "$T/pki/$f" /etc/certmapd/
  done
  install -o root -g certmapd -m 0640 demo/users.ldif /etc/certmapd/users.ldif
  # key = value in [section] set (or removed: None); sections dropped whole.
  python3 - /etc/certmapd/certmapd.conf <<'EOF'
import re, sys
path = sys.argv[1]
want = {
    ("server", "listen"): "127.0.0.1:443", ("server", "workers"): "2",
    ("server", "detailed_errors"): "on",
    ("tls", "certificate"): "/etc/certmapd/server-chain.pem",
    ("tls", "private_key"): "/etc/certmapd/server.key",
    ("client_certificate", "mode"): "accept",
    ("client_certificate", "trust_anchors"): "/etc/certmapd/trust-anchors.pem",
    ("client_certificate", "trusted_issuers"): "/etc/certmapd/trusted-issuers.pem",
    ("client_certificate", "crl_file"): "/etc/certmapd/crl.pem",
    ("mapping", "source"): "ldif", ("mapping", "ldif_file"): "/etc/certmapd/users.ldif",
    ("mapping", "netbios_domain"): "CORP",
    ("backend", "url"): "http://127.0.0.1:8080",
}
drop = {"ldap"}
out, sec, seen = [], None, set()
for line in open(path):
    m = re.match(r"^\[([^\]]+)\]", line)
    if m:
        sec = m.group(1)
        if sec in drop:
            continue
    elif sec in drop:
        continue
    m = re.match(r"^;?\s*(\w+)\s*=", line)
    if m and (sec, m.group(1)) in want:
        key = (sec, m.group(1))
        if key in seen:
            continue
        line = f"{key[1]} = {want[key]}\n"
        seen.add(key)
    out.append(line)
missing = set(want) - seen
if missing:
    sys.exit(f"the packaged configuration has no line for {sorted(missing)}")
open(path, "w").write("".join(out))
EOF
  /usr/sbin/certmapd -t -c /etc/certmapd/certmapd.conf || die "certmapd -t refuses the adapted configuration"
  # A reload reads everything again as certmapd: the same check as that user must pass.
  setpriv --reuid=certmapd --regid=certmapd --clear-groups \
    /usr/sbin/certmapd -t -c /etc/certmapd/certmapd.conf ||
    die "certmapd -t as the certmapd user refuses the configuration: a reload would fail"

  step "serve, in network and process namespaces of its own"
  # Own process table too: logrotate's pkill must meet no other certmapd of the machine.
  unshare --net --pid --fork --mount-proc --propagation "$PROP" -- "$SELF" --in-netns "$T"

  step "apt purge"
  apt-get purge -y -q certmapd >"$T/purge.log" 2>&1 || { cat "$T/purge.log" >&2; die "purge failed"; }
  [ ! -e /usr/sbin/certmapd ] || die "/usr/sbin/certmapd is still there after purge"
  [ ! -e /var/log/certmapd ] || die "/var/log/certmapd is still there after purge"
  [ ! -e /etc/certmapd/certmapd.conf ] || die "the conffile is still there after purge"
  rm -rf "$T"
  echo "deb-test: OK ($((SECONDS - start)) s)"
  exit 0
fi

# ---------------------------------------------------------------- phase 2
# In new network and process namespaces: only lo, and only our processes.
ip link set lo up
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "${notify:-}"; }
trap cleanup EXIT

python3 tests/e2e/backend.py --port 8080 --log "$T/backend.log" 2>"$T/backend.err" &
pids+=($!)

# systemd's notification socket, played by a datagram socket that records
# each message with its sender's pid (NotifyAccess=main checks it). Like
# /run/systemd/notify it is writable by all: certmapd sends READY=1 after
# it dropped privileges.
notify=$(mktemp -d /run/deb-test-notify.XXXXXX)
chmod 0755 "$notify"
python3 - "$notify/notify" "$T/notify.log" <<'EOF' &
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o777)
with open(sys.argv[2], "a", buffering=1) as log:
    while True:
        data, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = next((int.from_bytes(d[:4], "little") for l, t, d in anc
                    if l == socket.SOL_SOCKET and t == socket.SCM_CREDENTIALS), 0)
        for line in data.decode().split("\n"):
            log.write(f"{pid} {line}\n")
EOF
pids+=($!)

unit=/lib/systemd/system/certmapd.service
value() { sed -n "s/^$1=//p" $unit; }
pre=$(value ExecStartPre) main=$(value ExecStart)
[ -n "$pre" ] && [ -n "$main" ] || die "the unit has no ExecStartPre/ExecStart"
# CapabilityBoundingSet=CAP_A CAP_B -> setpriv's -all,+a,+b
caps=-all
for c in $(value CapabilityBoundingSet); do caps+=",+$(tr '[:upper:]' '[:lower:]' <<<"${c#CAP_}")"; done
[ "$(value NoNewPrivileges)" = yes ] || die "the unit does not set NoNewPrivileges=yes"
[ "$(value ProtectSystem)" = strict ] || die "the unit does not set ProtectSystem=strict"
rw=$(value ReadWritePaths)
umask_=$(value UMask)
# As the unit runs a command: ProtectSystem=strict (all read-only but
# ReadWritePaths), the bounding set, no_new_privs, its umask, NOTIFY_SOCKET.
# A plain command (no function, no subshell), so that started with & its pid
# is the command's own: the main PID systemd would know.
SANDBOX='rw=$1 caps=$2 um=$3; shift 3
  for d in $rw; do mount --bind "$d" "$d" || exit 97; done
  for d in /etc /usr /var /opt /srv /boot /root /tmp; do
    if [ -d "$d" ]; then mount --rbind "$d" "$d" && mount -o remount,bind,ro "$d" || exit 97; fi
  done
  umask "$um"
  exec setpriv --bounding-set="$caps" --no-new-privs -- "$@"'
as_unit=(unshare -m --propagation "$PROP" -- sh -c "$SANDBOX" as_unit "$rw" "$caps" "$umask_")
echo "as the unit: bounding set $caps, no_new_privs, read-write only $rw, umask $umask_"
# The imitation must hold, or what follows proves nothing: refused for being read-only.
for f in /etc/certmapd/x /var/lib/x /tmp/x; do
  out=$("${as_unit[@]}" touch $f 2>&1) && die "the imitated unit could write $f"
  grep -q 'Read-only file system' <<<"$out" || die "the imitated unit: $out"
done
"${as_unit[@]}" sh -c 'touch /var/log/certmapd/x && rm /var/log/certmapd/x' ||
  die "the imitated unit cannot write to $rw"
export NOTIFY_SOCKET=$notify/notify
for _ in $(seq 50); do [ -S "$NOTIFY_SOCKET" ] && break; sleep 0.1; done
# shellcheck disable=SC2086 # the unit's command lines, split as systemd splits these
"${as_unit[@]}" $pre || die "ExecStartPre ($pre) failed"
# shellcheck disable=SC2086
"${as_unit[@]}" $main 2>"$T/certmapd.err" &
cm=$!
pids+=("$cm")
for _ in $(seq 150); do
  grep -q "^$cm READY=1$" "$T/notify.log" 2>/dev/null && break
  kill -0 $cm 2>/dev/null || { cat "$T/certmapd.err" >&2; die "certmapd exited before READY=1"; }
  sleep 0.1
done
grep -q "^$cm READY=1$" "$T/notify.log" ||
  { cat "$T/notify.log" "$T/certmapd.err" >&2; die "no READY=1 from certmapd's main process in 15 s"; }
(exec 3<>/dev/tcp/127.0.0.1/443) || die "READY=1 was sent, but nothing accepts on 127.0.0.1:443"
echo "READY=1 from pid $cm; $(grep "^$cm STATUS=" "$T/notify.log" | head -n 1 | cut -d' ' -f2-)"

step "privileges"
st=/proc/$cm/status
read -r _ ruid euid suid _ < <(grep '^Uid:' $st)
want_uid=$(id -u certmapd)
[ "$ruid $euid $suid" = "$want_uid $want_uid $want_uid" ] || die "certmapd runs as uid $ruid/$euid/$suid"
[ "$(awk '/^Groups:/ {print NF - 1}' $st)" = 0 ] || die "supplementary groups kept: $(grep Groups: $st)"
for c in CapEff CapPrm CapAmb; do
  [ "$(awk -v c="$c:" '$1 == c {print $2}' $st)" = 0000000000000000 ] || die "$c: $(grep "$c" $st)"
done
[ "$(awk '$1 == "NoNewPrivs:" {print $2}' $st)" = 1 ] || die "no_new_privs is not set"
echo "uid $euid (certmapd), no capability left, no_new_privs"

step "403 cert_required without a certificate, 200 with one"
CURL=(curl -sS --max-time 10 --cacert "$T/pki/root-ca.crt" -o "$T/body" -w '%{http_code}')
URL="https://localhost/Microsoft-Server-ActiveSync?Cmd=Ping"
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && break; sleep 0.1; done
code=$("${CURL[@]}" "$URL") || die "curl without a certificate failed"
[ "$code" = 403 ] || die "without a certificate: HTTP $code, want 403"
grep -q cert_required "$T/body" || die "the 403 body does not say cert_required: $(cat "$T/body")"
code=$("${CURL[@]}" --cert "$T/pki/good.chain.pem" --key "$T/pki/good.key" "$URL") ||
  die "curl with a certificate failed"
[ "$code" = 200 ] || die "with a certificate: HTTP $code, want 200 ($(cat "$T/body"))"
grep -q '"X-Remote-User", "alice@corp.example.test"' "$T/backend.log" ||
  die "the backend did not receive X-Remote-User alice@corp.example.test"
log=/var/log/certmapd/access.log
for _ in $(seq 50); do [ "$(grep -c . $log)" -ge 2 ] && break; sleep 0.1; done
grep -q 'status=403 .*reason=cert_required' $log || die "no 403 cert_required line in $log"
grep -q 'status=200 .*user=alice@corp.example.test' $log || die "no 200 alice line in $log"
echo "403 cert_required, 200 as alice@corp.example.test; both in $log"

step "logrotate, then SIGUSR1 (pkill: no systemd here)"
logrotate -f /etc/logrotate.d/certmapd 2>"$T/logrotate.err" ||
  { cat "$T/logrotate.err" >&2; die "logrotate failed"; }
[ -s "$T/logrotate.err" ] && { cat "$T/logrotate.err" >&2; die "logrotate complained"; }
[ -f $log.1 ] || die "logrotate did not rotate $log"
for _ in $(seq 50); do grep -q 'SIGUSR1: access log reopened' "$T/certmapd.err" && break; sleep 0.1; done
grep -q 'SIGUSR1: access log reopened' "$T/certmapd.err" || die "certmapd did not reopen its log"
"${CURL[@]}" "$URL&after=rotation" >/dev/null || die "curl after the rotation failed"
for _ in $(seq 50); do grep -q 'after=rotation' $log && break; sleep 0.1; done
grep -q 'after=rotation' $log || die "the request after the rotation is not in the new $log"
grep -q 'after=rotation' $log.1 && die "the request after the rotation went to the old file"
echo "rotated; the next line went to the new file ($(stat -c '%U:%G %a' $log))"

step "SIGTERM: STOPPING=1, then exit 0"
kill -TERM $cm
rc=0
wait $cm || rc=$?
[ $rc = 0 ] || { tail -n 20 "$T/certmapd.err" >&2; die "certmapd exited $rc after SIGTERM"; }
grep -q "^$cm STOPPING=1$" "$T/notify.log" || die "no STOPPING=1 from certmapd"
echo "stopped: exit 0, STOPPING=1 sent"
