#!/usr/bin/env bash
# Benchmarks the cutover-load generator against nginx (`return 200`) on loopback:
#   (a) open loop at 10,000 req/s: achieved rate and the generator's CPU;
#   (b) closed loop: cutover-load, oha and wrk alternated, same connections, medians,
#       and the CPU each generator spends per request at a fixed rate (vs oha);
#   (c) the generator's peak RSS after many requests.
#
# Usage: bench/loadgen.sh [--quick] [--connections N] [--rounds N]
#   default  (a) 60 s, (b) 3 rounds x 10 s each, (c) 10,000,000 requests
#   --quick  (a) 10 s, (b) 3 rounds x 5 s each,  (c) 1,000,000 requests
#
# Needs nginx, wrk, oha and GNU time; installs nothing. Traffic goes to 127.0.0.1 only,
# and every run is bounded by a duration or a request count.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0
CONNECTIONS=64
ROUNDS=3
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --connections) CONNECTIONS=$2; shift ;;
        --rounds) ROUNDS=$2; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "loadgen.sh: unknown argument $1 (see --help)" >&2; exit 1 ;;
    esac
    shift
done
if [[ $QUICK == 1 ]]; then
    OPEN_SECS=10; CLOSED_SECS=5; RSS_REQUESTS=1000000
else
    OPEN_SECS=60; CLOSED_SECS=10; RSS_REQUESTS=10000000
fi
OPEN_RATE=10000

missing=0
need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "loadgen.sh: $1 not found; install it with: $2" >&2
        missing=1
    fi
}
need nginx "apt-get install -y nginx"
need wrk "apt-get install -y wrk"
need oha "cargo install oha"
need cargo "a Rust toolchain (rustup)"
need python3 "apt-get install -y python3"
if [[ ! -x /usr/bin/time ]]; then
    echo "loadgen.sh: GNU time (/usr/bin/time) not found; install it with: apt-get install -y time" >&2
    missing=1
fi
[[ $missing == 0 ]] || exit 1

WORK=$(mktemp -d)
NGINX_PID=""
cleanup() {
    if [[ -n $NGINX_PID ]]; then kill "$NGINX_PID" 2>/dev/null || true; wait "$NGINX_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# A free loopback port: bind port 0, read what the kernel chose, release it.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed -e "s#@DIR@#$WORK#g" -e "s#@PORT@#$PORT#g" "$ROOT/bench/nginx-loadgen.conf" >"$WORK/nginx.conf"
nginx -c "$WORK/nginx.conf" -p "$WORK" >"$WORK/nginx.out" 2>&1 &
NGINX_PID=$!
URL="http://127.0.0.1:$PORT/"
for _ in $(seq 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    sleep 0.1
done

echo "building cutover-load (release)..." >&2
(cd "$ROOT" && cargo build --release -p cutover-load --quiet)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LOAD="$TARGET_DIR/release/cutover-load"

# Reads a number from JSON text on stdin: the first "key": value.
json_num() { grep -o "\"$1\": *[0-9.e+-]*" | head -1 | sed 's/.*: *//'; }
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

echo
echo "machine: $(nproc) cores, $(uname -sr); nginx $(nginx -v 2>&1 | sed 's/.*\///'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), $(oha --version)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
if awk -v l="$(cut -d' ' -f1 /proc/loadavg)" -v c="$(nproc)" 'BEGIN { exit !(l > c / 2) }'; then
    echo "WARNING: the machine is busy (1-minute load above half the cores): other work competes with"
    echo "the target and the generators, and the throughput figures will be noisy and low."
fi

# (a) Open loop. GNU time gives the generator's user+sys CPU seconds and peak RSS.
echo
echo "## (a) open loop: $OPEN_RATE req/s for ${OPEN_SECS}s, $CONNECTIONS connections"
/usr/bin/time -f "%U %S %e %M" -o "$WORK/open.time" \
    "$LOAD" -r "$OPEN_RATE" -d "${OPEN_SECS}s" -c "$CONNECTIONS" -q --json "$WORK/open.json" "$URL" >/dev/null
read -r user sys wall rss_kb <"$WORK/open.time"
achieved=$(json_num rate_achieved <"$WORK/open.json")
requests=$(json_num requests <"$WORK/open.json")
errors=$(json_num errors <"$WORK/open.json")
p99=$(grep -A4 '"latency_ms"' "$WORK/open.json" | json_num p99)
awk -v a="$achieved" -v r="$OPEN_RATE" -v u="$user" -v s="$sys" -v w="$wall" -v n="$requests" \
    -v e="$errors" -v p="$p99" -v m="$rss_kb" 'BEGIN {
    printf "| metric | value |\n|---|---|\n"
    printf "| requests | %d (errors %d) |\n", n, e
    printf "| achieved rate | %.1f req/s (%.2f%% off target) |\n", a, (a - r) * 100 / r
    printf "| generator CPU | %.2f s user + %.2f s sys over %.1f s = %.2f cores |\n", u, s, w, (u + s) / w
    printf "| corrected p99 | %s ms |\n", p
    printf "| peak RSS | %.1f MB |\n", m / 1024
}'

# (b) Closed loop, alternating the tools within each round so that drift on the machine
# (thermal, other work) spreads over all of them instead of favouring one. Each tool runs
# with its defaults (cutover-load: --threads = cores; wrk: -t = cores, as its docs
# suggest; oha: all cores); the one-thread rows show what the thread count is worth when
# the generator shares the machine with its target.
THREADS=$(nproc)
echo
echo "## (b) closed loop: $ROUNDS rounds x ${CLOSED_SECS}s, $CONNECTIONS connections, alternated"
TOOLS=(cutover-load oha wrk "cutover-load --threads 1" "wrk -t 1")
run_tool() {
    case "$1" in
        cutover-load) "$LOAD" -d "${CLOSED_SECS}s" -c "$CONNECTIONS" -q --json - "$URL" 2>/dev/null | json_num rate_achieved ;;
        "cutover-load --threads 1") "$LOAD" --threads 1 -d "${CLOSED_SECS}s" -c "$CONNECTIONS" -q --json - "$URL" 2>/dev/null | json_num rate_achieved ;;
        oha) oha -z "${CLOSED_SECS}s" -c "$CONNECTIONS" --no-tui --output-format json "$URL" 2>/dev/null | json_num requestsPerSec ;;
        wrk) wrk -t "$THREADS" -c "$CONNECTIONS" -d "${CLOSED_SECS}s" "$URL" | awk '/^Requests\/sec:/ { print $2 }' ;;
        "wrk -t 1") wrk -t 1 -c "$CONNECTIONS" -d "${CLOSED_SECS}s" "$URL" | awk '/^Requests\/sec:/ { print $2 }' ;;
    esac
}
for i in "${!TOOLS[@]}"; do : >"$WORK/rps.$i"; done
for round in $(seq "$ROUNDS"); do
    line="round $round:"
    for i in "${!TOOLS[@]}"; do
        run_tool "${TOOLS[$i]}" >>"$WORK/rps.$i"
        line="$line ${TOOLS[$i]} $(tail -1 "$WORK/rps.$i");"
    done
    echo "$line" >&2
done
oha_median=$(median <"$WORK/rps.1")
wrk_median=$(median <"$WORK/rps.2")
echo "| tool | rounds (req/s) | median req/s | vs wrk | vs oha |"
echo "|---|---|---|---|---|"
for i in "${!TOOLS[@]}"; do
    med=$(median <"$WORK/rps.$i")
    rounds=$(awk '{ printf "%s%.0f", (NR > 1 ? ", " : ""), $1 }' "$WORK/rps.$i")
    awk -v t="${TOOLS[$i]}" -v r="$rounds" -v m="$med" -v w="$wrk_median" -v o="$oha_median" \
        'BEGIN { printf "| %s | %s | %.0f | %.2fx | %.2fx |\n", t, r, m, m / w, m / o }'
done
echo "(cutover-load and wrk run $THREADS threads by default; \"vs wrk\" and \"vs oha\" compare with the default rows)"

# (b2) CPU per request at a fixed rate. Throughput on a shared 2-core machine moves with
# whatever else runs; the CPU a generator spends per request at the same fixed rate is a
# steadier measure of its cost. wrk has no fixed-rate mode, so this compares with oha (-q).
FIXED_RATE=20000
echo
echo "## (b2) generator CPU per request at a fixed $FIXED_RATE req/s: $ROUNDS rounds x ${CLOSED_SECS}s, alternated"
: >"$WORK/cpu.cl"; : >"$WORK/cpu.oha"
cpu_per_request() { # <time file> <json file> -> microseconds of CPU per 200 response
    read -r u s _ _ <"$1"
    n=$(json_num 200 <"$2")
    awk -v u="$u" -v s="$s" -v n="$n" 'BEGIN { printf "%.2f\n", (u + s) * 1e6 / n }'
}
for round in $(seq "$ROUNDS"); do
    /usr/bin/time -f "%U %S %e %M" -o "$WORK/fixed.time" \
        "$LOAD" -r "$FIXED_RATE" -d "${CLOSED_SECS}s" -c "$CONNECTIONS" -q --json "$WORK/fixed.json" "$URL" >/dev/null
    cpu_per_request "$WORK/fixed.time" "$WORK/fixed.json" >>"$WORK/cpu.cl"
    /usr/bin/time -f "%U %S %e %M" -o "$WORK/fixed.time" \
        oha -q "$FIXED_RATE" -z "${CLOSED_SECS}s" -c "$CONNECTIONS" --no-tui --output-format json "$URL" >"$WORK/fixed.json" 2>/dev/null
    cpu_per_request "$WORK/fixed.time" "$WORK/fixed.json" >>"$WORK/cpu.oha"
done
echo "| tool | rounds (µs CPU per request) | median |"
echo "|---|---|---|"
for pair in "cutover-load:cl" "oha:oha"; do
    med=$(median <"$WORK/cpu.${pair#*:}")
    rounds=$(paste -sd, "$WORK/cpu.${pair#*:}" | sed 's/,/, /g')
    echo "| ${pair%%:*} | $rounds | $med |"
done

# (c) Peak RSS after many requests (closed loop; the histograms are of fixed size, so
# memory should not grow with the count).
echo
echo "## (c) peak RSS after $RSS_REQUESTS requests (closed loop, $CONNECTIONS connections)"
/usr/bin/time -f "%U %S %e %M" -o "$WORK/rss.time" \
    "$LOAD" -n "$RSS_REQUESTS" -c "$CONNECTIONS" -q --json "$WORK/rss.json" "$URL" >/dev/null
read -r user sys wall rss_kb <"$WORK/rss.time"
requests=$(json_num requests <"$WORK/rss.json")
awk -v n="$requests" -v w="$wall" -v m="$rss_kb" \
    'BEGIN { printf "| requests | wall | peak RSS |\n|---|---|---|\n| %d | %.1f s | %.1f MB |\n", n, w, m / 1024 }'
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
