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
need kill procps
need runuser util-linux
# PostgreSQL 15 server binaries for the database tests (two clusters per test).
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
need pg_dump postgresql-client-15

# With --bench: the peers and load generator bench/proxy.sh compares against.
if [ "${1:-}" = "--bench" ]; then
  need nginx nginx
  need haproxy haproxy
  need wrk wrk
  need taskset util-linux
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

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found; install a Rust toolchain (1.85 or newer)" >&2
  exit 1
fi
