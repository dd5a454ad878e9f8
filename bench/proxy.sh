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
# Then a second phase, cutover-proxy against nginx: WebSockets and gRPC, with
# cutover-bench-peer as the backends (a WebSocket echo; a gRPC server over h2c)
# and as the load. WebSocket: 1,000 connections each sending a 32-byte message and
# waiting for its echo (messages/s, p50, p99). gRPC: unary calls over 8 HTTP/2
# connections with 512 in flight (calls/s, p50, p99). A second table; a case
# that fails (e.g. a proxy that rejects its config) prints its error and shows `-`.
#
# Then a third phase, slowloris, cutover-proxy against nginx and HAProxy, each with
# the same client timeouts (bench/*-slowloris.*: 10 s from the accept to the first
# request head, 60 s keep-alive, 30 s send and body idle, the same connection cap):
# `cutover-bench-peer slowloris` opens 2,000 connections (500 with --quick) that
# send a request line, then a byte of header every 3 s, never ending the head. Once
# they are open, the same wrk as above runs for min(secs, 7) s, before the 10 s
# timeout; then, once the proxy has closed them, the same wrk alone. Per proxy: the
# good client's req/s and p99 with the slowloris connections open and alone, and
# how many of those the proxy closed (and when) and how many were still open when
# the peer stopped (15 s at most; sooner once none is left). With --quick the three
# proxies hold their slowloris connections at the same time (the good client's runs,
# one after another, still end before the timeout), so that the phase waits out the
# timeout once, not three times. A third table.
#
# With --threads 2 the first phase runs each proxy with two workers/threads
# (cutover-proxy `threads = 2`, nginx `worker_processes 2`, HAProxy `nbthread 2`)
# on both cores, beside wrk with two threads, cutover-load and the backends: this
# machine has two cores, so nothing is pinned apart, and CPU and RSS are summed
# over nginx's workers.
#
# Usage: bench/proxy.sh [--quick] [--rounds N] [--secs N] [--phases LIST] [--threads N]
#   default  3 rounds, 10 s per measurement (about 16 minutes)
#   --quick  1 round, 2 s per measurement, 500 slowloris connections (about a minute;
#            a smoke check, not a result)
#   --phases which phases to run, comma-separated: http, streams, slowloris
#            (default: all three), e.g. --phases slowloris
#   --threads workers/threads per proxy in the first phase: 1 (default) or 2; the
#            other phases always run one
#
# Needs nginx, haproxy, wrk, curl, python3 and taskset; installs nothing
# (scripts/install-deps.sh --bench does). Traffic goes to 127.0.0.1 only and every
# run is bounded by its duration.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=3
SECS=10
QUICK=0
PHASES=http,streams,slowloris
THREADS=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1; ROUNDS=1; SECS=2 ;;
        --rounds) ROUNDS=$2; shift ;;
        --secs) SECS=$2; shift ;;
        --phases) PHASES=$2; shift ;;
        --threads) THREADS=$2; shift ;;
        -h|--help) awk 'NR > 1 { if (!/^#/) exit; print }' "$0"; exit 0 ;;
        *) echo "proxy.sh: unknown argument $1 (see --help)" >&2; exit 1 ;;
    esac
    shift
done

for phase in ${PHASES//,/ }; do
    case "$phase" in
        http|streams|slowloris) ;;
        *) echo "proxy.sh: unknown phase $phase (http, streams, slowloris)" >&2; exit 1 ;;
    esac
done
want() { [[ ",$PHASES," == *",$1,"* ]]; }
case "$THREADS" in
    1) PROXY_CPUS=0; LOAD_CPUS=1 ;;
    2) PROXY_CPUS=0,1; LOAD_CPUS=0,1 ;;
    *) echo "proxy.sh: --threads must be 1 or 2, not $THREADS" >&2; exit 1 ;;
esac

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
(cd "$ROOT" && cargo build --release --quiet -p cutover-proxy -p cutover-load -p cutover-tests \
    --bin cutover-proxy --bin cutover-load --bin cutover-bench-peer)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release
PROXY_BIN=$TARGET/cutover-proxy
LOAD_BIN=$TARGET/cutover-load
PEER_BIN=$TARGET/cutover-bench-peer

# 500 connections through each proxy (and the slowloris phase's 2,000) need file
# descriptors; HAProxy refuses to start when its maxconn needs more than the limit
# allows.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
MAXCONN=$(( ($(ulimit -n) - 200) / 2 ))
(( MAXCONN > 8000 )) && MAXCONN=8000

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
OLD=$(port); NEW=$(port); P_CUTOVER=$(port); P_ADMIN=$(port); P_NGINX=$(port); P_HAPROXY=$(port)
# The second phase: its backends, and its proxies' ports.
WS=$(port); GRPC=$(port); P_CUTOVER_S=$(port); P_ADMIN_S=$(port); P_NGINX_WS=$(port); P_NGINX_GRPC=$(port)
# The third phase's proxies, and the request head timeout they share (seconds).
P_CUTOVER_L=$(port); P_ADMIN_L=$(port); P_NGINX_L=$(port); P_HAPROXY_L=$(port)
HEAD_TIMEOUT=10
render() { # render TEMPLATE OUT PORT [ADMIN [GRPCPORT [THREADS]]]
    sed -e "s|@WORK@|$WORK|g" -e "s|@OLD@|$OLD|g" -e "s|@NEW@|$NEW|g" -e "s|@ADMIN@|${4:-$P_ADMIN}|g" -e "s|@PORT@|$3|g" -e "s|@MAXCONN@|$MAXCONN|g" \
        -e "s|@HEAD@|$HEAD_TIMEOUT|g" -e "s|@THREADS@|${6:-1}|g" \
        -e "s|@WS@|$WS|g" -e "s|@GRPC@|$GRPC|g" -e "s|@GRPCPORT@|${5:-0}|g" \
        "$ROOT/bench/$1" > "$WORK/$2"
}
render backends.conf backends.conf 0
render cutover-proxy.toml cutover.toml "$P_CUTOVER" "$P_ADMIN" 0 "$THREADS"
render nginx-proxy.conf nginx-proxy.conf "$P_NGINX" "$P_ADMIN" 0 "$THREADS"
render haproxy.cfg haproxy.cfg "$P_HAPROXY" "$P_ADMIN" 0 "$THREADS"
render cutover-proxy-streams.toml cutover-streams.toml "$P_CUTOVER_S" "$P_ADMIN_S"
render nginx-streams.conf nginx-streams.conf "$P_NGINX_WS" "$P_ADMIN_S" "$P_NGINX_GRPC"
render cutover-proxy-slowloris.toml cutover-slowloris.toml "$P_CUTOVER_L" "$P_ADMIN_L"
render nginx-slowloris.conf nginx-slowloris.conf "$P_NGINX_L"
render haproxy-slowloris.cfg haproxy-slowloris.cfg "$P_HAPROXY_L"

wait_up() { # wait_up PORT NAME
    for _ in $(seq 1 200); do
        if curl -s -o /dev/null -H 'Host: shop.test' "http://127.0.0.1:$1/"; then return 0; fi
        sleep 0.05
    done
    echo "proxy.sh: $2 did not answer on port $1" >&2
    exit 1
}
hwm_kb() { # hwm_kb PID... -> the peak RSS of each, summed
    local kb=0 p
    for p in "$@"; do kb=$(( kb + $(awk '/^VmHWM/ { print $2 }' "/proc/$p/status") )); done
    echo "$kb"
}
ticks_of() { # ticks_of PID... -> CPU ticks, summed
    local t=0 p
    for p in "$@"; do t=$(( t + $(cpu_ticks "$p") )); done
    echo "$t"
}
wait_port() { # wait_port PORT PID -> 0 once something listens on PORT, 1 if PID died first
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# ---- First phase: HTTP, cutover-proxy against nginx and HAProxy ----
# (The phases' bodies are not indented, for the sake of their heredocs.)

if want http; then
taskset -c "$LOAD_CPUS" nginx -c "$WORK/backends.conf" -p "$WORK" & PIDS+=($!)
taskset -c "$PROXY_CPUS" "$PROXY_BIN" --config "$WORK/cutover.toml" --log warn 2>"$WORK/cutover.log" & CUTOVER_PID=$!; PIDS+=($CUTOVER_PID)
taskset -c "$PROXY_CPUS" nginx -c "$WORK/nginx-proxy.conf" -p "$WORK" & NGINX_MASTER=$!; PIDS+=($NGINX_MASTER)
taskset -c "$PROXY_CPUS" haproxy -f "$WORK/haproxy.cfg" -q & HAPROXY_PID=$!; PIDS+=($HAPROXY_PID)
wait_up "$OLD" "backend old"; wait_up "$P_CUTOVER" cutover-proxy; wait_up "$P_NGINX" nginx; wait_up "$P_HAPROXY" haproxy
# nginx's workers (its master does no proxying), comma-separated.
NGINX_PIDS=$(pgrep -P "$NGINX_MASTER" | paste -sd, -)

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
    for entry in "cutover-proxy:$P_CUTOVER:$CUTOVER_PID" "nginx:$P_NGINX:$NGINX_PIDS" "haproxy:$P_HAPROXY:$HAPROXY_PID"; do
        IFS=: read -r name p pids <<< "$entry"
        IFS=, read -r -a pid <<< "$pids"
        echo "round $round: $name ..." >&2
        before=$(ticks_of "${pid[@]}")
        out=$(taskset -c "$LOAD_CPUS" wrk -t"$THREADS" -c64 -d"${SECS}s" -H 'Host: shop.test' "http://127.0.0.1:$p/")
        after=$(ticks_of "${pid[@]}")
        rps=$(awk '/^Requests\/sec/ { print $2 }' <<< "$out")
        reqs=$(awk '/requests in/ { print $1 }' <<< "$out")
        bad=$(awk '/Non-2xx/ { print $NF } /Socket errors/ { n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<< "$out" | tail -n1)
        cpu=$(python3 -c "print(($after - $before) / $(getconf CLK_TCK) / max($reqs, 1) * 100000)")
        read -r a50 a99 a999 e5 <<< "$(taskset -c "$LOAD_CPUS" bash -c "$(declare -f latency); LOAD_BIN=$LOAD_BIN SECS=$SECS WORK=$WORK latency $p 5000 64")"
        read -r b50 b99 b999 e10 <<< "$(taskset -c "$LOAD_CPUS" bash -c "$(declare -f latency); LOAD_BIN=$LOAD_BIN SECS=$SECS WORK=$WORK latency $p 10000 64")"
        read -r _ _ _ e500 <<< "$(taskset -c "$LOAD_CPUS" bash -c "$(declare -f latency); LOAD_BIN=$LOAD_BIN SECS=$SECS WORK=$WORK latency $p 10000 500")"
        rss=$(python3 -c "print($(hwm_kb "${pid[@]}") / 1024)")
        errors=$(python3 -c "print(int(float('$bad') + sum(float(x) for x in ['$e5', '$e10', '$e500'] if x != 'nan')))")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$round" "$rps" "$cpu" \
            "$a50" "$a99" "$a999" "$b50" "$b99" "$b999" "$rss" "$errors" >> "$WORK/results.tsv"
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$WORK/results.tsv" "$ROUNDS" "$SECS" "$QUICK" "$THREADS" <<'PY'
import csv, statistics, sys, datetime, os
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
rounds, secs, quick = sys.argv[2], sys.argv[3], sys.argv[4] == "1"
threads = int(sys.argv[5])
def med(name, key):
    vals = [float(r[key]) for r in rows if r["proxy"] == name and r[key] not in ("", "nan")]
    return statistics.median(vals) if vals else float("nan")
names = ["cutover-proxy", "nginx", "haproxy"]
keys = [("rps", "max req/s (wrk)", "{:,.0f}"), ("cpu_s_per_100k", "CPU s / 100k req", "{:.2f}"),
        ("p50_5k", "p50 @5k (ms)", "{:.2f}"), ("p99_5k", "p99 @5k (ms)", "{:.2f}"), ("p999_5k", "p99.9 @5k (ms)", "{:.2f}"),
        ("p50_10k", "p50 @10k (ms)", "{:.2f}"), ("p99_10k", "p99 @10k (ms)", "{:.2f}"), ("p999_10k", "p99.9 @10k (ms)", "{:.2f}"),
        ("rss_mb", "peak RSS (MB)", "{:.1f}"), ("errors", "errors", "{:.0f}")]
print(f"\n`bench/proxy.sh{' --quick' if quick else ''}` on {os.cpu_count()} cores, {datetime.date.today()}: "
      f"{rounds} round(s), {secs} s per measurement, medians; "
      + ("proxies pinned to one core, one worker each.\n" if threads == 1 else
         f"{threads} workers/threads per proxy, every process on both cores (nginx's CPU and RSS summed over its workers).\n"))
print("| metric | cutover-proxy | nginx | HAProxy | cutover / nginx | cutover / HAProxy |")
print("|---|---|---|---|---|---|")
for key, label, fmt in keys:
    c, n, h = (med(x, key) for x in names)
    ratio = lambda a, b: "{:.2f}x".format(a / b) if b and b == b and a == a and b != 0 else "-"
    print(f"| {label} | {fmt.format(c)} | {fmt.format(n)} | {fmt.format(h)} | {ratio(c, n)} | {ratio(c, h)} |")
if quick:
    print("\n(--quick: a smoke check with short runs; use the full run for figures.)")
PY
fi

# ---- Second phase: WebSockets and gRPC, cutover-proxy against nginx ----

if want streams; then
# The first phase's processes are done; stop them so that they take no share of
# the cores. (HAProxy has no part here: it would need its own HTTP/2 set-up.)
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
PIDS=()

WS_CONNS=1000
GRPC_CONNS=8
GRPC_INFLIGHT=512
# Each load run stops itself at its deadline; this only guards against a hang.
LOAD_LIMIT=$(( SECS + 60 ))

taskset -c 1 "$PEER_BIN" ws-echo --listen "127.0.0.1:$WS" --threads 1 >"$WORK/ws-echo.log" 2>&1 & WS_PID=$!; PIDS+=($WS_PID)
taskset -c 1 "$PEER_BIN" grpc-server --listen "127.0.0.1:$GRPC" --name grpc --threads 1 >"$WORK/grpc-server.log" 2>&1 & GRPC_PID=$!; PIDS+=($GRPC_PID)
# A backend that does not start leaves its cases unmeasured (`-`), not the script failed.
WS_DOWN=""; GRPC_DOWN=""
if ! wait_port "$WS" "$WS_PID"; then
    echo "proxy.sh: the WebSocket echo did not start: $(cat "$WORK/ws-echo.log")" >&2
    WS_DOWN="the WebSocket echo backend did not start"
fi
if ! wait_port "$GRPC" "$GRPC_PID"; then
    echo "proxy.sh: the gRPC server did not start: $(cat "$WORK/grpc-server.log")" >&2
    GRPC_DOWN="the gRPC backend did not start"
fi

# cutover-proxy's case for each protocol: "" when it runs, else why not.
CUTOVER_WS_SKIP=""
CUTOVER_GRPC_SKIP=""
if ! err=$("$PROXY_BIN" --check --config "$WORK/cutover-streams.toml" 2>&1); then
    echo "proxy.sh: cutover-proxy rejects bench/cutover-proxy-streams.toml:" >&2
    echo "$err" >&2
    CUTOVER_GRPC_SKIP="cutover-proxy rejected the gRPC backend's config (protocol = \"h2\"); see the error above"
    # Without the h2 backend the WebSocket case can still run.
    sed -i '/^protocol = /d' "$WORK/cutover-streams.toml"
    if ! err=$("$PROXY_BIN" --check --config "$WORK/cutover-streams.toml" 2>&1); then
        echo "$err" >&2
        CUTOVER_WS_SKIP="cutover-proxy rejected its config; see the error above"
    fi
fi
CUTOVER_S_PID=""
if [[ -z $CUTOVER_WS_SKIP ]]; then
    taskset -c 0 "$PROXY_BIN" --config "$WORK/cutover-streams.toml" --log warn 2>"$WORK/cutover-streams.log" & CUTOVER_S_PID=$!; PIDS+=($CUTOVER_S_PID)
    if ! wait_port "$P_CUTOVER_S" "$CUTOVER_S_PID"; then
        echo "proxy.sh: cutover-proxy (streams) did not start: $(tail -n 20 "$WORK/cutover-streams.log")" >&2
        CUTOVER_WS_SKIP="cutover-proxy did not start"
        CUTOVER_GRPC_SKIP=${CUTOVER_GRPC_SKIP:-cutover-proxy did not start}
    fi
fi
taskset -c 0 nginx -c "$WORK/nginx-streams.conf" -p "$WORK" & NGINX_S_PID=$!; PIDS+=($NGINX_S_PID)
NGINX_SKIP=""
if ! wait_port "$P_NGINX_WS" "$NGINX_S_PID" || ! wait_port "$P_NGINX_GRPC" "$NGINX_S_PID"; then
    echo "proxy.sh: nginx (streams) did not start: $(tail -n 20 "$WORK/nginx-streams.err" 2>/dev/null)" >&2
    NGINX_SKIP="nginx did not start"
fi
# Why each case is not measured; empty when it is.
CUTOVER_WS_SKIP=${WS_DOWN:-$CUTOVER_WS_SKIP}; CUTOVER_GRPC_SKIP=${GRPC_DOWN:-$CUTOVER_GRPC_SKIP}
NGINX_WS_SKIP=${WS_DOWN:-$NGINX_SKIP}; NGINX_GRPC_SKIP=${GRPC_DOWN:-$NGINX_SKIP}

ws_case() { # ws_case PORT -> "msgs_per_s p50 p99 errors" (nan when it failed)
    rm -f "$WORK/ws.json"
    taskset -c 1 timeout "$LOAD_LIMIT" "$PEER_BIN" ws-load --url "ws://127.0.0.1:$1/" --host ws.test \
        --conns "$WS_CONNS" --secs "$SECS" --threads 1 --json "$WORK/ws.json" >"$WORK/ws-load.log" 2>&1 \
        || echo "proxy.sh: ws-load on port $1 failed: $(tail -n 5 "$WORK/ws-load.log")" >&2
    grep -q 'failed' "$WORK/ws-load.log" && grep 'failed' "$WORK/ws-load.log" >&2
    summary "$WORK/ws.json" messages msgs_per_s
}
grpc_case() { # grpc_case PORT -> "calls_per_s p50 p99 errors" (nan when it failed)
    rm -f "$WORK/grpc.json"
    taskset -c 1 timeout "$LOAD_LIMIT" "$PEER_BIN" grpc-load --target "127.0.0.1:$1" --host grpc.test \
        --conns "$GRPC_CONNS" --concurrency "$GRPC_INFLIGHT" --secs "$SECS" --threads 1 \
        --json "$WORK/grpc.json" >"$WORK/grpc-load.log" 2>&1 \
        || echo "proxy.sh: grpc-load on port $1 failed: $(tail -n 5 "$WORK/grpc-load.log")" >&2
    grep -q 'failed' "$WORK/grpc-load.log" && grep 'failed' "$WORK/grpc-load.log" >&2
    summary "$WORK/grpc.json" calls calls_per_s
}
summary() { # summary JSON COUNT_KEY RATE_KEY -> "rate p50 p99 errors"
    python3 - "$@" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
    nan = float("nan")
    num = lambda v: nan if v is None else float(v)
    if not r[sys.argv[2]]:
        print("nan nan nan", r["errors"])
    else:
        print(num(r[sys.argv[3]]), num(r["p50_ms"]), num(r["p99_ms"]), r["errors"])
except Exception:
    print("nan nan nan nan")
PY
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
printf 'proxy\tround\tws_rate\tws_p50\tws_p99\tws_errors\tgrpc_rate\tgrpc_p50\tgrpc_p99\tgrpc_errors\n' > "$WORK/streams.tsv"
for round in $(seq 1 "$ROUNDS"); do
    for entry in "cutover-proxy:$P_CUTOVER_S:$P_CUTOVER_S" "nginx:$P_NGINX_WS:$P_NGINX_GRPC"; do
        IFS=: read -r name pws pgrpc <<< "$entry"
        if [[ $name == cutover-proxy ]]; then ws_skip=$CUTOVER_WS_SKIP; grpc_skip=$CUTOVER_GRPC_SKIP; log=$WORK/cutover-streams.log
        else ws_skip=$NGINX_WS_SKIP; grpc_skip=$NGINX_GRPC_SKIP; log=$WORK/nginx-streams.err; fi
        ws="nan nan nan nan"; grpc="nan nan nan nan"
        echo "round $round: $name WebSocket ..." >&2
        if [[ -z $ws_skip ]]; then ws=$(ws_case "$pws"); else echo "  skipped: $ws_skip" >&2; fi
        echo "round $round: $name gRPC ..." >&2
        if [[ -z $grpc_skip ]]; then grpc=$(grpc_case "$pgrpc"); else echo "  skipped: $grpc_skip" >&2; fi
        read -r wr w50 w99 we <<< "$ws"
        read -r gr g50 g99 ge <<< "$grpc"
        if [[ ( $we =~ ^[1-9] || $ge =~ ^[1-9] ) && -s $log ]]; then
            echo "  errors; the last lines of $name's log:" >&2
            tail -n 3 "$log" | sed 's/^/    /' >&2
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$round" "$wr" "$w50" "$w99" "$we" \
            "$gr" "$g50" "$g99" "$ge" >> "$WORK/streams.tsv"
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$WORK/streams.tsv" "$ROUNDS" "$SECS" "$QUICK" "$WS_CONNS" "$GRPC_CONNS" "$GRPC_INFLIGHT" \
    "$CUTOVER_WS_SKIP" "$CUTOVER_GRPC_SKIP" "$NGINX_WS_SKIP" "$NGINX_GRPC_SKIP" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
rounds, secs, quick = sys.argv[2], sys.argv[3], sys.argv[4] == "1"
ws_conns, grpc_conns, inflight = (int(x) for x in sys.argv[5:8])
skips = {"cutover-proxy WebSocket": sys.argv[8], "cutover-proxy gRPC": sys.argv[9],
         "nginx WebSocket": sys.argv[10], "nginx gRPC": sys.argv[11]}
def med(name, key):
    vals = [float(r[key]) for r in rows if r["proxy"] == name and r[key] not in ("", "nan")]
    vals = [v for v in vals if v == v]
    return statistics.median(vals) if vals else float("nan")
def show(fmt, v):
    return fmt.format(v) if v == v else "-"
keys = [("ws_rate", f"WebSocket echoes/s ({ws_conns:,} conns)", "{:,.0f}"),
        ("ws_p50", "WebSocket p50 (ms)", "{:.2f}"), ("ws_p99", "WebSocket p99 (ms)", "{:.2f}"),
        ("ws_errors", "WebSocket errors", "{:.0f}"),
        ("grpc_rate", f"gRPC unary calls/s ({grpc_conns} conns, {inflight} in flight)", "{:,.0f}"),
        ("grpc_p50", "gRPC p50 (ms)", "{:.2f}"), ("grpc_p99", "gRPC p99 (ms)", "{:.2f}"),
        ("grpc_errors", "gRPC errors", "{:.0f}")]
print(f"\nWebSockets and gRPC: {rounds} round(s), {secs} s per measurement, medians; "
      "proxies pinned to one core, one worker each.\n")
print("| metric | cutover-proxy | nginx | cutover / nginx |")
print("|---|---|---|---|")
for key, label, fmt in keys:
    c, n = med("cutover-proxy", key), med("nginx", key)
    ratio = "{:.2f}x".format(c / n) if c == c and n == n and n != 0 and "errors" not in key else "-"
    print(f"| {label} | {show(fmt, c)} | {show(fmt, n)} | {ratio} |")
for what, why in skips.items():
    if why:
        print(f"\n({what}: not measured; {why}.)")
if quick:
    print("\n(--quick: a smoke check with short runs; use the full run for figures.)")
PY
fi

# ---- Third phase: a well-behaved client while slowloris connections are open ----

if want slowloris; then
# The earlier phases' processes are done.
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
PIDS=()

SL_CONNS=2000
(( QUICK )) && SL_CONNS=500
# Each held connection takes a descriptor in the peer and one in the proxy, and
# stays under the proxies' connection cap with room for the good client.
SL_NOTE=""
SL_MOST=$(( MAXCONN > 300 ? MAXCONN - 200 : 100 ))
if (( SL_CONNS > SL_MOST )); then
    SL_NOTE="$SL_CONNS slowloris connections wanted, $SL_MOST opened: the descriptor limit (ulimit -n) is $(ulimit -n)"
    SL_CONNS=$SL_MOST
fi
SL_EVERY=3                              # seconds between two bytes on a connection
SL_HOLD=$(( HEAD_TIMEOUT + 5 ))         # the peer stops then at the latest
SL_SECS=$(( SECS < HEAD_TIMEOUT - 3 ? SECS : HEAD_TIMEOUT - 3 ))  # the good client's run
(( SL_SECS >= 1 )) || SL_SECS=1
# How many proxies hold slowloris connections at once: as many as have their
# good-client runs, one after another, end before the head timeout (all three with
# --quick, one at a time in the full run).
SL_GROUP=$(( (HEAD_TIMEOUT - 3) / SL_SECS ))

# Removes a process that has been waited for from PIDS (its id may be reused).
forget() { local keep=() p; for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done; PIDS=("${keep[@]}"); }
ready() { # ready PORT PID -> 0 once PORT answers HTTP, 1 if PID died first or after 10 s
    for _ in $(seq 1 200); do
        if curl -s -o /dev/null -H 'Host: shop.test' "http://127.0.0.1:$1/"; then return 0; fi
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}
good_client() { # good_client PORT SECS -> "req_per_s p99_ms errors" (nan when it failed)
    taskset -c 1 timeout $(( $2 + 30 )) wrk -t1 -c64 -d"$2s" --latency -H 'Host: shop.test' \
        "http://127.0.0.1:$1/" 2>&1 | python3 -c '
import re, sys
t = sys.stdin.read()
unit = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}
rps = re.search(r"^Requests/sec:\s+([\d.]+)", t, re.M)
p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m|h)\s*$", t, re.M)
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
errors = (int(bad.group(1)) if bad else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)
if not rps:
    print("nan nan nan")
else:
    print(rps.group(1), float(p99.group(1)) * unit[p99.group(2)] if p99 else "nan", errors)
'
}

taskset -c 1 nginx -c "$WORK/backends.conf" -p "$WORK" & PIDS+=($!)
wait_up "$OLD" "backend old"; wait_up "$NEW" "backend new"
# Each proxy's process (the one whose memory counts), or why it is not measured.
declare -A SL_PORT=([cutover-proxy]=$P_CUTOVER_L [nginx]=$P_NGINX_L [haproxy]=$P_HAPROXY_L)
declare -A SL_PID=() SL_SKIP=()
if ! err=$("$PROXY_BIN" --check --config "$WORK/cutover-slowloris.toml" 2>&1); then
    echo "proxy.sh: cutover-proxy rejects bench/cutover-proxy-slowloris.toml:" >&2
    echo "$err" >&2
    SL_SKIP[cutover-proxy]="cutover-proxy rejected its config; see the error above"
else
    taskset -c 0 "$PROXY_BIN" --config "$WORK/cutover-slowloris.toml" --log warn 2>"$WORK/cutover-slowloris.log" & SL_PID[cutover-proxy]=$!; PIDS+=($!)
fi
taskset -c 0 nginx -c "$WORK/nginx-slowloris.conf" -p "$WORK" 2>"$WORK/nginx-slowloris.stderr" & SL_PID[nginx]=$!; PIDS+=($!)
taskset -c 0 haproxy -f "$WORK/haproxy-slowloris.cfg" -q 2>"$WORK/haproxy-slowloris.stderr" & SL_PID[haproxy]=$!; PIDS+=($!)
for name in cutover-proxy nginx haproxy; do
    [[ -z ${SL_SKIP[$name]:-} ]] || continue
    if ! ready "${SL_PORT[$name]}" "${SL_PID[$name]}"; then
        case $name in
            cutover-proxy) log=$WORK/cutover-slowloris.log ;;
            nginx) log=$WORK/nginx-slowloris.err ;;
            haproxy) log=$WORK/haproxy-slowloris.stderr ;;
        esac
        echo "proxy.sh: $name (slowloris) did not start: $(tail -n 20 "$log" 2>/dev/null)" >&2
        SL_SKIP[$name]="$name did not start"
    fi
done
# nginx's memory is its worker's.
if [[ -z ${SL_SKIP[nginx]:-} ]]; then
    SL_PID[nginx]=$(pgrep -P "${SL_PID[nginx]}" | head -n1)
fi
SL_ACTIVE=()
for name in cutover-proxy nginx haproxy; do
    [[ -n ${SL_SKIP[$name]:-} ]] || SL_ACTIVE+=("$name")
done

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
printf 'proxy\tround\trps_alone\tp99_alone\trps_slow\tp99_slow\terrors\topened\tclosed\tclosed_p50_s\tstill_open\trss_mb\toverlap\n' > "$WORK/slowloris.tsv"
for round in $(seq 1 "$ROUNDS"); do
    for (( g = 0; g < ${#SL_ACTIVE[@]}; g += SL_GROUP )); do
        group=("${SL_ACTIVE[@]:g:SL_GROUP}")
        echo "round $round: ${group[*]} with $SL_CONNS slowloris connections each ..." >&2
        declare -A peer=() t0=() t1=() slow=()
        for name in "${group[@]}"; do
            rm -f "$WORK/sl-$name.json"
            t0[$name]=$(date +%s.%N)
            taskset -c 1 timeout $(( SL_HOLD + 30 )) "$PEER_BIN" slowloris --target "127.0.0.1:${SL_PORT[$name]}" \
                --conns "$SL_CONNS" --secs "$SL_HOLD" --every "$SL_EVERY" --json "$WORK/sl-$name.json" \
                >"$WORK/sl-$name.log" 2>&1 & peer[$name]=$!; PIDS+=($!)
        done
        for name in "${group[@]}"; do
            # Bounded: the peer stops opening at its deadline.
            for _ in $(seq 1 $(( SL_HOLD * 20 ))); do
                grep -q 'connections open' "$WORK/sl-$name.log" && break
                kill -0 "${peer[$name]}" 2>/dev/null || break
                sleep 0.05
            done
        done
        for name in "${group[@]}"; do
            echo "  $name, with them ..." >&2
            slow[$name]=$(good_client "${SL_PORT[$name]}" "$SL_SECS")
            t1[$name]=$(date +%s.%N)
        done
        for name in "${group[@]}"; do
            wait "${peer[$name]}" || echo "proxy.sh: the slowloris peer failed: $(tail -n 5 "$WORK/sl-$name.log")" >&2
            forget "${peer[$name]}"
            sed "s/^/  $name: /" "$WORK/sl-$name.log" >&2
        done
        for name in "${group[@]}"; do
            echo "  $name, alone ..." >&2
            read -r r0 q0 e0 <<< "$(good_client "${SL_PORT[$name]}" "$SL_SECS")"
            read -r r1 q1 e1 <<< "${slow[$name]}"
            read -r opened closed c50 still overlap <<< "$(python3 - "$WORK/sl-$name.json" "${t0[$name]}" "${t1[$name]}" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
    first = r["first_close_s"]
    # Did the proxy close some before the good client's run ended?
    overlap = int(first is not None and first < float(sys.argv[3]) - float(sys.argv[2]))
    p50 = r["closed_after_s"]["p50"]
    print(r["opened"], r["closed_by_server"], "nan" if p50 is None else p50, r["still_open"], overlap)
except Exception:
    print("nan nan nan nan 0")
PY
)"
            if [[ $overlap == 1 ]]; then
                echo "  $name closed slowloris connections before the good client's run ended" >&2
            fi
            rss=$(python3 -c "print($(hwm_kb "${SL_PID[$name]}" || echo 0) / 1024)")
            errors=$(python3 -c "print(int(sum(float(x) for x in ['$e0', '$e1'] if x != 'nan')))")
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$round" "$r0" "$q0" "$r1" "$q1" \
                "$errors" "$opened" "$closed" "$c50" "$still" "$rss" "$overlap" >> "$WORK/slowloris.tsv"
        done
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$WORK/slowloris.tsv" "$ROUNDS" "$QUICK" "$SL_CONNS" "$SL_SECS" "$SL_HOLD" "$SL_EVERY" \
    "$HEAD_TIMEOUT" "$MAXCONN" "$SL_GROUP" "$SL_NOTE" "${SL_SKIP[cutover-proxy]:-}" "${SL_SKIP[nginx]:-}" "${SL_SKIP[haproxy]:-}" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
rounds, quick = sys.argv[2], sys.argv[3] == "1"
conns, secs, hold, every, head, maxconn, group = (int(x) for x in sys.argv[4:11])
note = sys.argv[11]
skips = dict(zip(["cutover-proxy", "nginx", "haproxy"], sys.argv[12:15]))
def med(name, key):
    vals = [float(r[key]) for r in rows if r["proxy"] == name and r[key] not in ("", "nan")]
    vals = [v for v in vals if v == v]
    return statistics.median(vals) if vals else float("nan")
def show(fmt, v):
    return fmt.format(v) if v == v else "-"
names = ["cutover-proxy", "nginx", "haproxy"]
kept = {n: med(n, "rps_slow") / med(n, "rps_alone") * 100 if med(n, "rps_alone") else float("nan") for n in names}
rows_out = [("rps_alone", "good client req/s, alone", "{:,.0f}", True),
            ("p99_alone", "good client p99 (ms), alone", "{:.2f}", True),
            ("rps_slow", f"good client req/s, {conns:,} slowloris open", "{:,.0f}", True),
            ("p99_slow", f"good client p99 (ms), {conns:,} slowloris open", "{:.2f}", True),
            ("kept", "req/s kept with slowloris (%)", "{:.0f}", False),
            ("errors", "good client errors", "{:.0f}", False),
            ("opened", "slowloris connections opened", "{:,.0f}", False),
            ("closed", "slowloris closed by the proxy", "{:,.0f}", False),
            ("closed_p50_s", "closed after (s, median, from connect)", "{:.1f}", False),
            ("still_open", "slowloris still open at the end", "{:,.0f}", False),
            ("rss_mb", "peak RSS (MB)", "{:.1f}", True)]
print(f"\nSlowloris: {conns:,} connections that send a request line, then a header byte every "
      f"{every} s, never ending the head; held until the proxy closes them, {hold} s at most. "
      f"The good client: wrk -t1 -c64 for {secs} s once the slowloris connections are open "
      f"(ending before the {head} s timeout), then {secs} s alone once they are closed"
      + (" (the proxies hold theirs at the same time, each measured in turn)" if group > 1 else "")
      + f". Same limits for all three: "
      f"{head} s from accept to the first request head (cutover `limits.request_head`, nginx "
      f"`client_header_timeout`, HAProxy `timeout http-request`), 60 s keep-alive, 30 s send "
      f"and body idle, {maxconn:,} connections. {rounds} round(s), medians; proxies pinned to one "
      "core, one worker each.\n")
print("| metric | cutover-proxy | nginx | HAProxy | cutover / nginx | cutover / HAProxy |")
print("|---|---|---|---|---|---|")
for key, label, fmt, ratio in rows_out:
    c, n, h = (kept[x] if key == "kept" else med(x, key) for x in names)
    r = lambda a, b: "{:.2f}x".format(a / b) if ratio and a == a and b == b and b != 0 else "-"
    print(f"| {label} | {show(fmt, c)} | {show(fmt, n)} | {show(fmt, h)} | {r(c, n)} | {r(c, h)} |")
for name in names:
    if skips[name]:
        print(f"\n({name}: not measured; {skips[name]}.)")
    elif any(r["overlap"] == "1" for r in rows if r["proxy"] == name):
        print(f"\n({name} closed slowloris connections before the good client's run ended in some round.)")
if note:
    print(f"\n({note}.)")
if quick:
    print("\n(--quick: a smoke check with short runs; use the full run for figures.)")
PY
fi
