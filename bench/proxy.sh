#!/usr/bin/env bash
# Benchmarks cutover-proxy against nginx and HAProxy on loopback, side by side:
# the same two nginx backends, one worker/thread per proxy (pinned to core 0; the
# load generators and backends share core 1), a 50/50 split routed by Host.
#
# For each proxy: max throughput (wrk, closed loop, 64 connections), latency
# p50/p99/p99.9 at 5k and 10k req/s (cutover-load, open loop, coordinated-omission
# corrected), the proxy's CPU seconds per 100k requests (during the wrk run), and its
# peak RSS after a 10k req/s run over 500 connections. Proxies alternate A B C A B C
# and the table shows medians and ratios against nginx and HAProxy.
#
# Usage: bench/proxy.sh [--quick] [--rounds N] [--secs N]
#   default  3 rounds, 10 s per measurement (about 7 minutes)
#   --quick  1 round, 2 s per measurement (under a minute; a smoke check, not a result)
#
# Needs nginx, haproxy, wrk, curl, python3 and taskset; installs nothing. Traffic goes
# to 127.0.0.1 only and every run is bounded by its duration.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=3
SECS=10
QUICK=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1; ROUNDS=1; SECS=2 ;;
        --rounds) ROUNDS=$2; shift ;;
        --secs) SECS=$2; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "proxy.sh: unknown argument $1 (see --help)" >&2; exit 1 ;;
    esac
    shift
done

missing=0
need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "proxy.sh: $1 not found; install it with: $2" >&2
        missing=1
    fi
}
need nginx "apt-get install -y nginx"
need haproxy "apt-get install -y haproxy"
need wrk "apt-get install -y wrk"
need curl "apt-get install -y curl"
need python3 "apt-get install -y python3"
need taskset "apt-get install -y util-linux"
need cargo "a Rust toolchain"
[[ $missing == 0 ]] || exit 1

echo "building release binaries ..." >&2
(cd "$ROOT" && cargo build --release --quiet -p cutover-proxy -p cutover-load)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release
PROXY_BIN=$TARGET/cutover-proxy
LOAD_BIN=$TARGET/cutover-load

# 500 connections through each proxy need file descriptors; HAProxy refuses to start
# when its maxconn needs more than the limit allows.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
MAXCONN=$(( ($(ulimit -n) - 200) / 2 ))
(( MAXCONN > 8000 )) && MAXCONN=8000

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
OLD=$(port); NEW=$(port); P_CUTOVER=$(port); P_ADMIN=$(port); P_NGINX=$(port); P_HAPROXY=$(port)
render() { # render TEMPLATE OUT
    sed -e "s|@WORK@|$WORK|g" -e "s|@OLD@|$OLD|g" -e "s|@NEW@|$NEW|g" -e "s|@ADMIN@|$P_ADMIN|g" -e "s|@PORT@|$3|g" -e "s|@MAXCONN@|$MAXCONN|g" \
        "$ROOT/bench/$1" > "$WORK/$2"
}
render backends.conf backends.conf 0
render cutover-proxy.toml cutover.toml "$P_CUTOVER"
render nginx-proxy.conf nginx-proxy.conf "$P_NGINX"
render haproxy.cfg haproxy.cfg "$P_HAPROXY"

wait_up() { # wait_up PORT NAME
    for _ in $(seq 1 200); do
        if curl -s -o /dev/null -H 'Host: shop.test' "http://127.0.0.1:$1/"; then return 0; fi
        sleep 0.05
    done
    echo "proxy.sh: $2 did not answer on port $1" >&2
    exit 1
}

taskset -c 1 nginx -c "$WORK/backends.conf" -p "$WORK" & PIDS+=($!)
taskset -c 0 "$PROXY_BIN" --config "$WORK/cutover.toml" --log warn 2>"$WORK/cutover.log" & CUTOVER_PID=$!; PIDS+=($CUTOVER_PID)
taskset -c 0 nginx -c "$WORK/nginx-proxy.conf" -p "$WORK" & NGINX_MASTER=$!; PIDS+=($NGINX_MASTER)
taskset -c 0 haproxy -f "$WORK/haproxy.cfg" -q & HAPROXY_PID=$!; PIDS+=($HAPROXY_PID)
wait_up "$OLD" "backend old"; wait_up "$P_CUTOVER" cutover-proxy; wait_up "$P_NGINX" nginx; wait_up "$P_HAPROXY" haproxy
NGINX_PID=$(pgrep -P "$NGINX_MASTER" | head -n1)

cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
hwm_kb() { awk '/^VmHWM/ { print $2 }' "/proc/$1/status"; }
latency() { # latency PORT RATE CONNS -> "p50 p99 p999 errors"
    "$LOAD_BIN" -r "$2" -d "${SECS}s" -c "$3" --threads 1 -q --json "$WORK/lat.json" \
        -H 'Host: shop.test' "http://127.0.0.1:$1/" >/dev/null 2>&1 || true
    python3 - "$WORK/lat.json" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
    l = r["latency_ms"]
    print(l["p50"], l["p99"], l["p999"], r["errors"])
except Exception:
    print("nan nan nan nan")
PY
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
printf 'proxy\tround\trps\tcpu_s_per_100k\tp50_5k\tp99_5k\tp999_5k\tp50_10k\tp99_10k\tp999_10k\trss_mb\terrors\n' > "$WORK/results.tsv"
for round in $(seq 1 "$ROUNDS"); do
    for entry in "cutover-proxy:$P_CUTOVER:$CUTOVER_PID" "nginx:$P_NGINX:$NGINX_PID" "haproxy:$P_HAPROXY:$HAPROXY_PID"; do
        IFS=: read -r name p pid <<< "$entry"
        echo "round $round: $name ..." >&2
        before=$(cpu_ticks "$pid")
        out=$(taskset -c 1 wrk -t1 -c64 -d"${SECS}s" -H 'Host: shop.test' "http://127.0.0.1:$p/")
        after=$(cpu_ticks "$pid")
        rps=$(awk '/^Requests\/sec/ { print $2 }' <<< "$out")
        reqs=$(awk '/requests in/ { print $1 }' <<< "$out")
        bad=$(awk '/Non-2xx/ { print $NF } /Socket errors/ { n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<< "$out" | tail -n1)
        cpu=$(python3 -c "print(($after - $before) / $(getconf CLK_TCK) / max($reqs, 1) * 100000)")
        read -r a50 a99 a999 e5 <<< "$(taskset -c 1 bash -c "$(declare -f latency); LOAD_BIN=$LOAD_BIN SECS=$SECS WORK=$WORK latency $p 5000 64")"
        read -r b50 b99 b999 e10 <<< "$(taskset -c 1 bash -c "$(declare -f latency); LOAD_BIN=$LOAD_BIN SECS=$SECS WORK=$WORK latency $p 10000 64")"
        read -r _ _ _ e500 <<< "$(taskset -c 1 bash -c "$(declare -f latency); LOAD_BIN=$LOAD_BIN SECS=$SECS WORK=$WORK latency $p 10000 500")"
        rss=$(python3 -c "print($(hwm_kb "$pid") / 1024)")
        errors=$(python3 -c "print(int(float('$bad') + sum(float(x) for x in ['$e5', '$e10', '$e500'] if x != 'nan')))")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$round" "$rps" "$cpu" \
            "$a50" "$a99" "$a999" "$b50" "$b99" "$b999" "$rss" "$errors" >> "$WORK/results.tsv"
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$WORK/results.tsv" "$ROUNDS" "$SECS" "$QUICK" <<'PY'
import csv, statistics, sys, datetime, os
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
rounds, secs, quick = sys.argv[2], sys.argv[3], sys.argv[4] == "1"
def med(name, key):
    vals = [float(r[key]) for r in rows if r["proxy"] == name and r[key] not in ("", "nan")]
    return statistics.median(vals) if vals else float("nan")
names = ["cutover-proxy", "nginx", "haproxy"]
keys = [("rps", "max req/s (wrk)", "{:,.0f}"), ("cpu_s_per_100k", "CPU s / 100k req", "{:.2f}"),
        ("p50_5k", "p50 @5k (ms)", "{:.2f}"), ("p99_5k", "p99 @5k (ms)", "{:.2f}"), ("p999_5k", "p99.9 @5k (ms)", "{:.2f}"),
        ("p50_10k", "p50 @10k (ms)", "{:.2f}"), ("p99_10k", "p99 @10k (ms)", "{:.2f}"), ("p999_10k", "p99.9 @10k (ms)", "{:.2f}"),
        ("rss_mb", "peak RSS (MB)", "{:.1f}"), ("errors", "errors", "{:.0f}")]
print(f"\n`bench/proxy.sh{' --quick' if quick else ''}` on {os.cpu_count()} cores, {datetime.date.today()}: "
      f"{rounds} round(s), {secs} s per measurement, medians; proxies pinned to one core, one worker each.\n")
print("| metric | cutover-proxy | nginx | HAProxy | cutover / nginx | cutover / HAProxy |")
print("|---|---|---|---|---|---|")
for key, label, fmt in keys:
    c, n, h = (med(x, key) for x in names)
    ratio = lambda a, b: "{:.2f}x".format(a / b) if b and b == b and a == a and b != 0 else "-"
    print(f"| {label} | {fmt.format(c)} | {fmt.format(n)} | {fmt.format(h)} | {ratio(c, n)} | {ratio(c, h)} |")
if quick:
    print("\n(--quick: a smoke check with short runs; use the full run for figures.)")
PY
