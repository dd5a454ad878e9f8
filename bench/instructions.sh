#!/usr/bin/env bash
# User-space instructions per proxied request for cutover-proxy, nginx and HAProxy,
# counted by valgrind (callgrind), with the same two nginx backends, the same 50/50
# split routed by Host and the same client as bench/proxy.sh.
#
# Time per request on this kind of machine (a small VM whose host takes CPU in
# bursts) moves by 10-20% between neighbouring runs; an instruction count does
# not, so a change to the request path can be measured in one run. What it leaves
# out: the kernel's share (the loopback sends and receives, about the same work for
# every proxy, see README "Performance"), cache misses, and anything valgrind's
# serialized threads hide. Under valgrind each proxy runs 20-50x slower; wrk keeps
# 16 connections busy, so each proxy sees the same concurrency.
#
# For each proxy: started under `valgrind --tool=callgrind --instr-atstart=no`,
# warmed up for 3 s, counting switched on, wrk for SECS seconds, counts dumped;
# instructions counted divided by the requests wrk completed.
#
# Usage: bench/instructions.sh [--secs N] [--only cutover] [--bin PATH]
#   --secs  counted seconds per proxy (default 10)
#   --only  cutover: cutover-proxy alone (to compare builds of it)
#   --bin   the cutover-proxy binary (default target/release/cutover-proxy)
#
# Needs valgrind, nginx, haproxy, wrk, curl and python3 (scripts/install-deps.sh
# --bench). Traffic goes to 127.0.0.1 only; every run is bounded by SECS.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECS=10
ONLY=all
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/cutover-proxy"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --secs) SECS=$2; shift ;;
        --only) ONLY=$2; shift ;;
        --bin) BIN=$2; shift ;;
        -h|--help) awk 'NR > 1 { if (!/^#/) exit; print }' "$0"; exit 0 ;;
        *) echo "instructions.sh: unknown argument $1 (see --help)" >&2; exit 1 ;;
    esac
    shift
done
tools=(valgrind callgrind_control wrk curl python3 nginx)
[[ $ONLY == all ]] && tools+=(haproxy)
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || { echo "instructions.sh: $tool not found (scripts/install-deps.sh --bench)" >&2; exit 1; }
done
[[ -x $BIN ]] || { echo "instructions.sh: $BIN not found; cargo build --release --bin cutover-proxy" >&2; exit 1; }

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
one_proxy_setup

# count NAME COMMAND...: prints "NAME requests instructions".
count() {
    local name=$1; shift
    local out="$WORK/callgrind.$name"
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" "$@" \
        >"$WORK/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    await_proxy instructions.sh "$name" 600
    wrk -t1 -c16 -d3s -H 'Host: shop.test' "http://127.0.0.1:$P/" >/dev/null
    callgrind_control -i on "$pid" >/dev/null 2>&1
    local res
    res=$(wrk -t1 -c16 -d"${SECS}s" -H 'Host: shop.test' "http://127.0.0.1:$P/")
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local reqs ir
    reqs=$(awk '/requests in/ { print $1 }' <<< "$res")
    # The dump taken above is the file with the most instructions.
    # printf: mawk prints a number over 2^31 with print in exponent form.
    ir=$(cat "$out"* | awk '/^(summary|totals):/ { if ($2 + 0 > m) m = $2 + 0 } END { printf "%.0f\n", m }')
    echo "$name $reqs $ir"
}

{
    count cutover-proxy "$BIN" --config "$WORK/cutover.toml" --log warn
    if [[ $ONLY == all ]]; then
        count nginx nginx -c "$WORK/nginx-proxy.conf" -p "$WORK" -g 'master_process off;'
        count haproxy haproxy -f "$WORK/haproxy.cfg" -db -q
    fi
} > "$WORK/counts"

python3 - "$WORK/counts" "$SECS" "$(date -u +%Y-%m-%d)" "$(nproc)" <<'PY'
import sys
path, secs, day, cores = sys.argv[1:]
rows = [l.split() for l in open(path) if l.strip()]
per = {name: int(ir) / max(int(reqs), 1) for name, reqs, ir in rows}
print(f"`bench/instructions.sh` on {cores} cores, {day}: user-space instructions per "
      f"request (valgrind callgrind), {secs} s counted per proxy, wrk -c16.\n")
head = "| proxy | requests counted | instructions / request |"
ratios = [p for p in ("nginx", "haproxy") if p in per]
head += "".join(f" cutover / {p} |" for p in ratios) if "cutover-proxy" in per else ""
print(head)
print("|" + "---|" * (head.count("|") - 1))
for name, reqs, ir in rows:
    line = f"| {name} | {int(reqs):,} | {per[name]:,.0f} |"
    if name == "cutover-proxy":
        line += "".join(f" {per[name] / per[p]:.2f}x |" for p in ratios)
    else:
        line += " - |" * len(ratios) if "cutover-proxy" in per else ""
    print(line)
PY
