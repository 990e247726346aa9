#!/usr/bin/env bash
# Make sure the system packages mabrouter's demo and tests need are present:
# redis-server and redis-cli (tests start private servers; never the machine's shared 6379).
# Installs them with apt when missing and running as root; otherwise says what to run.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)  # the TLS tests make certificates
if [ "${MABROUTER_NEED_H2LOAD:-0}" = "1" ]; then
  command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
fi
if [ "${MABROUTER_NEED_NODE:-0}" = "1" ]; then
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
fi

# promtool checks the alert rules and Prometheus configurations in deploy/ (tests/integration/
# test_prometheus_rules.py). Debian ships it in the `prometheus` package, whose postinst starts a
# Prometheus server (init script) and which pulls web assets: only the promtool binary is taken out of
# the package (apt-get download + dpkg-deb), into /usr/local/bin. It needs nothing but libc.
install_promtool() {
  local work
  work="$(mktemp -d)"
  echo "installing promtool from Debian's prometheus package (the binary only)" >&2
  (
    cd "$work"
    apt-get download prometheus >/dev/null 2>&1 \
      || { apt-get update >/dev/null && apt-get download prometheus >/dev/null 2>&1; }
    dpkg-deb -x prometheus_*.deb extracted
    install -m 0755 extracted/usr/bin/promtool /usr/local/bin/promtool
  )
  rm -rf "$work"
}
if [ "${MABROUTER_NEED_PROMTOOL:-0}" = "1" ] && ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    install_promtool
  else
    echo "missing: promtool; as root, run: MABROUTER_NEED_PROMTOOL=1 $0" >&2
    exit 1
  fi
fi

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
else
  echo "missing system packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
