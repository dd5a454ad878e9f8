#!/usr/bin/env bash
# The switchover's write pause under the rehearsal's load: runs `cutover rehearse`
# (2,000 req/s through the proxy, 30% writes, five databases switched over)
# ROUNDS times on the release build and
# prints p50/p99/max of the write pause over every switchover, plus the verdicts.
# Every rehearsal must end with 0 failed requests and 0 lost writes.
# Usage: bench/switchover.sh [ROUNDS]   (default 4 rounds = 20 switchovers)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-4}
cargo build --release --locked -q --bin cutover --bin cutover-proxy --bin cutover-load
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for i in $(seq 1 "$rounds"); do
  echo "round $i of $rounds: cutover rehearse" >&2
  target/release/cutover rehearse --out "$out/round$i" > "$out/round$i.log" 2>&1 || {
    tail -20 "$out/round$i.log" >&2
    echo "round $i failed" >&2
    exit 1
  }
done
python3 - "$out" "$rounds" <<'PY'
import json, math, pathlib, sys
out, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
pauses, verdicts = [], []
for i in range(1, rounds + 1):
    r = json.loads((out / f"round{i}" / "report.json").read_text())
    pauses += [s["write_pause_ms"] for s in r["switchovers"]]
    verdicts.append(r["verdict"])
pauses.sort()
def pct(p):
    return pauses[min(len(pauses) - 1, math.ceil(p / 100 * len(pauses)) - 1)]
print(f"switchovers: {len(pauses)} in {rounds} rehearsal(s)")
print(f"write pause: p50 {pct(50):.0f} ms, p99 {pct(99):.0f} ms, max {pauses[-1]:.0f} ms, min {pauses[0]:.0f} ms")
failed = sum(v["failed_requests"] for v in verdicts)
lost = sum(v["lost_writes"] for v in verdicts)
print(f"failed requests: {failed}; lost writes: {lost}; longest downtime: {max(v['downtime_s'] for v in verdicts)} s")
sys.exit(1 if failed or lost else 0)
PY
