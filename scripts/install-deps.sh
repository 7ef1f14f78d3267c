#!/usr/bin/env bash
# Installs the Debian 12 packages certmapd needs to build, test, run its demo
# and its benchmarks. Skips apt entirely when everything is already there.
set -euo pipefail

PACKAGES=(
  # build
  build-essential cmake pkg-config libssl-dev libevent-dev libldap-dev libinih-dev
  node-llhttp libcmocka-dev libjemalloc-dev
  # build: Kerberos constrained delegation (krb/) through MIT krb5's GSSAPI
  libkrb5-dev
  # build: sd_notify for the systemd unit's Type=notify (common/notify.c)
  libsystemd-dev
  # the Debian package (debian/, tests/package/): dpkg-buildpackage and dh;
  # tests: the manual pages rendered (groff, man), the unit checked (systemd-analyze)
  debhelper dpkg-dev fakeroot groff-base man-db systemd
  # build: the identity cache shared through Redis (shcache/): hiredis 0.14, no TLS
  libhiredis-dev
  # tests: real clients, a real directory, real peers. Every package named,
  # none left to Recommends (installed without them): samba-ad-provision holds
  # the AD schema that "samba-tool domain provision" reads; mount and
  # util-linux give tests a private /etc/hosts (unshare + mount --bind).
  python3 curl openssl ldap-utils samba samba-ad-dc samba-ad-provision krb5-user nginx haproxy
  procps mount util-linux iproute2
  # tests: a real Redis for the shared identity cache (tests/e2e/redis_server.py)
  redis-server redis-tools
  # tests: Kerberos backends for constrained delegation (tests/e2e/apache.py:
  # httpd + mod_auth_gssapi; tests/e2e/gssbackend.py and kdc.py: Debian's
  # /usr/bin/python3 with its gssapi module). apache2-bin holds httpd and the
  # modules; apache2 itself only adds the Debian layout, named for apache2ctl.
  apache2 apache2-bin libapache2-mod-auth-gssapi python3-gssapi
  # tests: an OCSP responder in tests/e2e/test_revocation.py (Debian's python3)
  python3-cryptography
  # tests: GnuTLS clients (tests/e2e/test_late_cert_clients.py), a TLS scanner
  gnutls-bin wget testssl.sh
  # tests: libFuzzer harnesses (tests/fuzz/run.sh): clang and its fuzzer runtime
  clang libclang-rt-14-dev
  # benchmarks
  gnuplot-nox apache2-utils strace
  # benchmarks: perf for bench/run --profile and --scaling --profile (uprobes, perf lock)
  linux-perf
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# krb5-user asks for a default realm: answer non-interactively.
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
# The distribution's own nginx, apache2, samba and redis services are not ours: tests start their own.
for svc in nginx apache2 apache-htcacheclean samba-ad-dc smbd nmbd winbind redis-server; do
  $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
done
