#!/usr/bin/env bash
# Memory per client connection for cutover-proxy, nginx and HAProxy: each proxy,
# one process, one worker or thread, behind the same two nginx backends with the
# same 50/50 split routed by Host as bench/proxy.sh, is given N client connections
# (500 by default) that each send one keep-alive request, read its answer and stay
# open. Its resident memory (VmRSS, and the anonymous part, RssAnon) is read before
# the connections, once they are open, and once every one has had its answer.
#
# This is the part of bench/proxy.sh's peak RSS that grows with the connections a
# proxy holds, apart from the load: what an idle keep-alive connection costs each
# proxy after a request, and how many upstream connections the burst opened.
#
# Usage: bench/conns.sh [--conns N] [--bin PATH]
#   --conns  client connections (default 500, at most 4000)
#   --bin    the cutover-proxy binary (default target/release/cutover-proxy)
#
# Needs nginx, haproxy, curl and python3 (scripts/install-deps.sh --bench).
# Traffic goes to 127.0.0.1 only; each proxy's part ends within 60 s.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONNS=500
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/cutover-proxy"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --conns) CONNS=$2; shift ;;
        --bin) BIN=$2; shift ;;
        -h|--help) awk 'NR > 1 { if (!/^#/) exit; print }' "$0"; exit 0 ;;
        *) echo "conns.sh: unknown argument $1 (see --help)" >&2; exit 1 ;;
    esac
    shift
done
[[ $CONNS =~ ^[0-9]+$ ]] && (( CONNS >= 1 && CONNS <= 4000 )) ||
    { echo "conns.sh: --conns takes 1 to 4000, not $CONNS" >&2; exit 1; }
for tool in nginx haproxy curl python3; do
    command -v "$tool" >/dev/null || { echo "conns.sh: $tool not found (scripts/install-deps.sh --bench)" >&2; exit 1; }
done
[[ -x $BIN ]] || { echo "conns.sh: $BIN not found; cargo build --release --bin cutover-proxy" >&2; exit 1; }
# Each connection is a file descriptor here and one or two in the proxy.
ulimit -n 16384 2>/dev/null || ulimit -n $(( CONNS * 2 + 256 )) 2>/dev/null || true

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
one_proxy_setup $(( CONNS + 100 ))

# measure NAME COMMAND...: prints "NAME rss0 anon0 rss1 anon1 rss2 anon2 upstream" (KB).
measure() {
    local name=$1; shift
    "$@" >"$WORK/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    await_proxy conns.sh "$name" 100
    timeout 60 python3 - "$P" "$CONNS" "$pid" "$name" "$OLD" "$NEW" <<'PY'
import socket, sys, time
port, n, pid, name, old, new = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]

def mem():
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon"):
            fields[k] = int(v.split()[0])
    return fields["VmRSS"], fields["RssAnon"]

def settle():
    # Resident memory moves for a moment after a burst; read it once it holds.
    last = None
    for _ in range(20):
        time.sleep(0.1)
        now = mem()
        if now == last:
            return now
        last = now
    return last

def upstream():
    count = 0
    for path in ("/proc/net/tcp",):
        for line in open(path).readlines()[1:]:
            f = line.split()
            rport = int(f[2].split(":")[1], 16)
            if f[3] == "01" and rport in (int(old), int(new)):
                count += 1
    return count

before = settle()
socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
opened = settle()
req = b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n"
for s in socks:
    s.sendall(req)
for s in socks:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit(f"{name}: a connection closed before its answer")
        data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        first = data.split(b"\r\n")[0]
        sys.exit(f"{name}: answered {first!r}")
answered = settle()
print(name, *before, *opened, *answered, upstream())
for s in socks:
    s.close()
PY
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

{
    measure cutover-proxy "$BIN" --config "$WORK/cutover.toml" --log warn
    measure nginx nginx -c "$WORK/nginx-proxy.conf" -p "$WORK" -g 'master_process off;'
    measure haproxy haproxy -f "$WORK/haproxy.cfg" -db -q
} > "$WORK/mem"

python3 - "$WORK/mem" "$CONNS" "$(date -u +%Y-%m-%d)" <<'PY'
import sys
path, n, day = sys.argv[1], int(sys.argv[2]), sys.argv[3]
print(f"`bench/conns.sh` {day}: {n} client connections, each after one request "
      "(resident memory in MB; per connection in KB).\n")
print("| proxy | RSS before | RSS open | RSS after a request each | anonymous after | per connection, open | per connection, after a request | upstream connections |")
print("|---|---|---|---|---|---|---|---|")
for line in open(path):
    name, r0, a0, r1, a1, r2, a2, up = line.split()
    r0, a0, r1, a1, r2, a2 = map(int, (r0, a0, r1, a1, r2, a2))
    print(f"| {name} | {r0/1024:.1f} | {r1/1024:.1f} | {r2/1024:.1f} | {a2/1024:.1f} | "
          f"{(r1-r0)/n:.1f} | {(r2-r0)/n:.1f} | {up} |")
PY
