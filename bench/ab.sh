#!/usr/bin/env bash
# A/B of two cutover-proxy binaries: alternates them (A B A B …) in front of the same
# two nginx backends and prints, per run, wrk's throughput at 64 connections and the
# proxy's CPU microseconds per request. For telling whether a change made the
# request path cheaper or dearer on a machine whose speed drifts between runs.
#
# Usage: bench/ab.sh A_BINARY B_BINARY [PAIRS] [SECS]
#   e.g. build an older commit into another target dir, then
#   bench/ab.sh /tmp/old-target/release/cutover-proxy target/release/cutover-proxy 3 5
#
# Needs nginx, wrk, curl, python3 and taskset. Traffic goes to 127.0.0.1 only; every
# run is bounded by SECS.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
[[ $# -ge 2 ]] || { sed -n '2,12p' "$0"; exit 1; }
A=$1; B=$2; PAIRS=${3:-3}; SECS=${4:-5}
for tool in nginx wrk curl python3 taskset; do
    command -v "$tool" >/dev/null || { echo "ab.sh: $tool not found" >&2; exit 1; }
done

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
OLD=$(port); NEW=$(port); P=$(port); ADMIN=$(port)
sed -e "s|@WORK@|$WORK|g" -e "s|@OLD@|$OLD|g" -e "s|@NEW@|$NEW|g" "$ROOT/bench/backends.conf" > "$WORK/backends.conf"
sed -e "s|@OLD@|$OLD|g" -e "s|@NEW@|$NEW|g" -e "s|@ADMIN@|$ADMIN|g" -e "s|@PORT@|$P|g" -e "s|@THREADS@|1|g" \
    "$ROOT/bench/cutover-proxy.toml" > "$WORK/cutover.toml"
taskset -c 1 nginx -c "$WORK/backends.conf" -p "$WORK" & PIDS+=($!)

for i in $(seq 1 "$PAIRS"); do
    for label in A B; do
        bin=$A; [[ $label == B ]] && bin=$B
        taskset -c 0 "$bin" --config "$WORK/cutover.toml" --log warn >/dev/null 2>&1 &
        pid=$!
        for _ in $(seq 1 200); do
            curl -s -o /dev/null -H 'Host: shop.test' "http://127.0.0.1:$P/" && break
            sleep 0.05
        done
        taskset -c 1 wrk -t1 -c64 -d1s -H 'Host: shop.test' "http://127.0.0.1:$P/" >/dev/null
        before=$(cpu_ticks "$pid")
        out=$(taskset -c 1 wrk -t1 -c64 -d"${SECS}s" -H 'Host: shop.test' "http://127.0.0.1:$P/")
        after=$(cpu_ticks "$pid")
        reqs=$(awk '/requests in/ { print $1 }' <<< "$out")
        rps=$(awk '/^Requests\/sec/ { print $2 }' <<< "$out")
        us=$(python3 -c "print(round(($after - $before) / $(getconf CLK_TCK) / max($reqs, 1) * 1e6, 2))")
        echo "pair $i $label: $rps req/s, $us CPU us/request"
        kill "$pid"; wait "$pid" 2>/dev/null || true
    done
done
