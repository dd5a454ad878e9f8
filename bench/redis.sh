#!/usr/bin/env bash
# The initial copy of `cutover cache sync --once` against the usual ways to fill a
# Redis with another's data (issue 19). Two redis-server instances on free 127.0.0.1
# ports in a temp dir, "source" and "target" (no persistence: --save '' --appendonly no).
#
# 1. Generates a RESP protocol file of 1,000,000 keys (--quick: 100,000): 80% strings
#    `session:N` of 80-120 random characters, 20% hashes `cart:N` of five small fields;
#    a fifth of the keys (an eighth of the strings, half the hashes) have a TTL of 1
#    to 24 h. Loads it into the source with `redis-cli --pipe`. The source takes no
#    writes while it is copied: this measures the initial copy, not following.
# 2. Each round runs every contender once, the order rotating from round to round,
#    with the target flushed (FLUSHALL SYNC) before each:
#    - cutover: `cutover cache sync --source redis://... --target redis://... --once`
#      (SCAN + DUMP / RESTORE ABSTTL, then one verification pass), wall clock until it
#      exits 0;
#    - redis-cli --pipe: the SAME protocol file replayed into the target, wall clock.
#      An upper bound, not a like-for-like peer: it replays a prepared file of writes
#      and never reads the live source;
#    - redis-cli --rdb: the peer that does read the live source: `redis-cli --rdb` of
#      the source (a replication snapshot, diskless) then a fresh redis-server on a
#      third port that loads that file, wall clock until it answers PING. A cold,
#      point-in-time copy: it needs a target that may be restarted and is empty.
#    After every copy (untimed) the copy's DBSIZE and INFO keyspace (keys, keys with a
#    TTL) must equal the source's, and its DEBUG DIGEST too (a digest of every key,
#    value and whether it has a TTL; the servers run with --enable-debug-command
#    local); the bench fails otherwise.
# 3. Prints a Markdown table to stdout (medians; keys/s; MB/s where MB is the source's
#    INFO memory used_memory_dataset in 10^6 bytes, the same numerator for every
#    contender; the ratio of each to redis-cli --pipe), then each round's times.
#    RIOT and RedisShake are not run: neither is packaged for pip, cargo or apt
#    (RIOT is a Java program, RedisShake a Go one), and the table says so.
#
# Usage: bench/redis.sh [--quick] [--rounds N] [--keys N] [--batch N] [--contenders LIST] [--out FILE]
#   default       1,000,000 keys, 3 rounds (a few minutes)
#   --quick       100,000 keys, 1 round (under a minute; a smoke check, not a result)
#   --rounds N    rounds of every contender, the order rotating (1 to 99)
#   --keys N      how many keys to generate (1,000 to 99,999,999)
#   --batch N     passed to `cutover cache sync --batch` (default: cutover's own)
#   --contenders  which to run, comma-separated: cutover, pipe, rdb (default: all
#                 three), e.g. --contenders pipe,rdb without a cutover build
#   --out FILE    also write the Markdown to FILE
#
# Environment: CUTOVER, the controller binary (default target/release/cutover; this
# script builds nothing: `cargo build --release --bin cutover`); TMPDIR,
# where the servers' dirs and the protocol file go (per million keys: a 170 MB
# protocol file and a 130 MB RDB; each server takes about 220 MB of memory). Needs redis-server and redis-cli 7 (`scripts/
# install-deps.sh --bench`), python3 and timeout; installs nothing. Traffic goes to
# 127.0.0.1 only; every wait and loop is bounded in count and time.
set -euo pipefail

script_start=$EPOCHREALTIME
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=3
ROUNDS_SET=0
KEYS=1000000
KEYS_SET=0
QUICK=0
BATCH=""
CONTENDERS=cutover,pipe,rdb
OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --rounds) ROUNDS=${2:?--rounds needs a number}; ROUNDS_SET=1; shift ;;
        --keys) KEYS=${2:?--keys needs a number}; KEYS_SET=1; shift ;;
        --batch) BATCH=${2:?--batch needs a number}; shift ;;
        --contenders) CONTENDERS=${2:?--contenders needs a list}; shift ;;
        --out) OUT=${2:?--out needs a file}; shift ;;
        -h|--help) awk 'NR > 1 { if (!/^#/) exit; sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) echo "redis.sh: unknown argument $1 (see --help)" >&2; exit 1 ;;
    esac
    shift
done
if [[ $QUICK == 1 ]]; then
    [[ $KEYS_SET == 1 ]] || KEYS=100000
    [[ $ROUNDS_SET == 1 ]] || ROUNDS=1
fi

log() { printf '%s\n' "$*" >&2; }
die() { log "redis.sh: $*"; exit 1; }

[[ $ROUNDS =~ ^[1-9][0-9]?$ ]] || die "--rounds must be 1 to 99, not $ROUNDS"
[[ $KEYS =~ ^[1-9][0-9]{3,7}$ ]] || die "--keys must be 1000 to 99999999, not $KEYS"
[[ -z $BATCH || $BATCH =~ ^[1-9][0-9]{0,6}$ ]] || die "--batch must be a positive number, not $BATCH"
RUN=()
for c in ${CONTENDERS//,/ }; do
    case "$c" in
        cutover|pipe|rdb) RUN+=("$c") ;;
        *) die "unknown contender $c (cutover, pipe, rdb)" ;;
    esac
done
((${#RUN[@]} > 0)) || die "--contenders names none"
want() { [[ ",$CONTENDERS," == *",$1,"* ]]; }
if [[ -n $OUT ]]; then
    [[ $OUT == /* ]] || OUT=$PWD/$OUT
    [[ -d $(dirname "$OUT") ]] || die "--out: $(dirname "$OUT") is not a directory"
fi

# ---- prerequisites ----------------------------------------------------------------
missing=0
need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        log "redis.sh: $1 not found; install it with: $2"
        missing=1
    fi
}
need redis-server "scripts/install-deps.sh --bench (or apt-get install -y redis-server)"
need redis-cli "scripts/install-deps.sh --bench (or apt-get install -y redis-tools)"
need python3 "apt-get install -y python3"
need timeout "apt-get install -y coreutils"
[[ $missing == 0 ]] || exit 1
REDIS_VERSION=$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')
REDIS_MAJOR=${REDIS_VERSION%%.*}
[[ ${REDIS_MAJOR:-0} -ge 7 ]] || die "redis-server 7 or newer needed (FLUSHALL SYNC, --enable-debug-command); found: $(redis-server --version)"

CUTOVER_DESC="-"
if want cutover; then
    if [[ -n ${CUTOVER:-} ]]; then
        [[ $CUTOVER == /* ]] || CUTOVER=$PWD/$CUTOVER
    else
        CUTOVER=${CARGO_TARGET_DIR:-$ROOT/target}/release/cutover
    fi
    [[ -x $CUTOVER ]] || die "$CUTOVER not found; build it with: cargo build --release --bin cutover (or set CUTOVER, or leave cutover out: --contenders pipe,rdb)"
    "$CUTOVER" cache sync --help >/dev/null 2>&1 \
        || die "$CUTOVER has no \`cache sync\` subcommand; rebuild it with: cargo build --release --bin cutover (or leave cutover out: --contenders pipe,rdb)"
    CUTOVER_DESC=${CUTOVER#"$ROOT"/}
fi

# ---- servers ----------------------------------------------------------------------
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
# lib.sh's cleanup stops every process in PIDS and removes WORK; first, the last log
# lines of a server that died.
bench_cleanup() {
    local rc=$? name
    trap - EXIT INT TERM
    for name in "${!SERVER_PID[@]}"; do
        if ! kill -0 "${SERVER_PID[$name]}" 2>/dev/null && [[ -s $WORK/$name/log ]]; then
            log "--- the $name redis-server has stopped; its log's last lines:"
            tail -n 5 "$WORK/$name/log" >&2 || true
        fi
    done
    cleanup
    exit "$rc"
}
declare -A SERVER_PID=() SERVER_PORT=()
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_server NAME [ARGS...]: a redis-server on a free 127.0.0.1 port, in $WORK/NAME.
start_server() {
    local name=$1 dir=$WORK/$1 port pid try i
    shift
    mkdir -p "$dir"
    for try in 1 2 3 4 5; do
        port=$(port)
        redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --logfile "$dir/log" \
            --save '' --appendonly no --daemonize no --enable-debug-command local \
            --repl-diskless-sync-delay 0 "$@" &
        pid=$!
        PIDS+=("$pid")
        for ((i = 0; i < 6000; i++)); do
            # While it loads a dump it answers -LOADING, not PONG.
            [[ $(redis-cli -h 127.0.0.1 -p "$port" PING 2>/dev/null) == PONG ]] && break
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.02
        done
        if [[ $(redis-cli -h 127.0.0.1 -p "$port" PING 2>/dev/null) == PONG ]]; then
            SERVER_PID[$name]=$pid
            SERVER_PORT[$name]=$port
            return 0
        fi
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        log "$name: redis-server on port $port did not answer (attempt $try of 5): $(tail -n 2 "$dir/log" 2>/dev/null)"
    done
    die "the $name redis-server did not start"
}
# stop_server NAME: stops it (no save) and waits for it.
stop_server() {
    local name=$1 pid=${SERVER_PID[$1]} keep=() p
    redis-cli -h 127.0.0.1 -p "${SERVER_PORT[$name]}" SHUTDOWN NOSAVE >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
    unset "SERVER_PID[$name]" "SERVER_PORT[$name]"
}
rc() { local port=$1; shift; redis-cli -h 127.0.0.1 -p "$port" "$@"; }
info_field() { # info_field PORT SECTION FIELD
    rc "$1" INFO "$2" | tr -d '\r' | awk -F: -v f="$3" '$1 == f { print $2 }'
}
# What must match between the source and a copy: DBSIZE, INFO keyspace's keys and
# expires, and DEBUG DIGEST.
fingerprint() {
    local port=$1 keyspace
    keyspace=$(rc "$port" INFO keyspace | tr -d '\r' | sed -n 's/^db0:keys=\([0-9]*\),expires=\([0-9]*\),.*/keys=\1 expires=\2/p')
    printf 'dbsize=%s %s digest=%s' "$(rc "$port" DBSIZE)" "${keyspace:-keys=0 expires=0}" "$(rc "$port" DEBUG DIGEST 2>&1)"
}
now() { printf '%s' "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }
# bounded LIMIT_S IN LOG CMD...: runs CMD under timeout, in the background so that
# the cleanup can stop it; stdin from IN, stdout and stderr to LOG; returns CMD's
# status (124 when it timed out).
bounded() {
    local limit=$1 in=$2 out=$3 pid status=0
    shift 3
    timeout --kill-after=10 "$limit" "$@" < "$in" > "$out" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait "$pid" || status=$?
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
    return "$status"
}
# Every copy is given this long (s): generous, a hang only.
LIMIT=$((120 + KEYS / 2000))

log "starting the source and the target redis-server in $WORK"
start_server source
start_server target
SRC=${SERVER_PORT[source]}
TGT=${SERVER_PORT[target]}
log "source on 127.0.0.1:$SRC, target on 127.0.0.1:$TGT ($REDIS_VERSION)"

# ---- 1. the data --------------------------------------------------------------------
gen_start=$(now)
read -r GEN_KEYS GEN_STRINGS GEN_HASHES GEN_TTLS GEN_CMDS < <(python3 - "$KEYS" "$WORK/data.resp" <<'PY'
import random, sys
n, out = int(sys.argv[1]), sys.argv[2]
rng = random.Random(19)
alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
def word(lo, hi):
    return bytes(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))
def bulk(b):
    return b"$%d\r\n%s\r\n" % (len(b), b)
# 4,096 string values of 80-120 random characters; 1,024 hash bodies of five fields.
values = [bulk(word(80, 120)) for _ in range(4096)]
bodies = [b"".join(bulk(b"sku:%d" % rng.randint(100000, 999999)) + bulk(word(4, 24)) for _ in range(5))
          for _ in range(1024)]
set_kv = b"*3\r\n$3\r\nSET\r\n$16\r\nsession:%08d\r\n"
set_ex = b"*5\r\n$3\r\nSET\r\n$16\r\nsession:%08d\r\n"
hset = b"*12\r\n$4\r\nHSET\r\n$13\r\ncart:%08d\r\n"
expire = b"*3\r\n$6\r\nEXPIRE\r\n$13\r\ncart:%08d\r\n"
def ttl(i):  # 1 to 24 hours: none expires during the bench
    return bulk(b"%d" % (3600 + (i * 7919) % 82800))
strings = hashes = ttls = extra = 0
buf = bytearray()
with open(out, "wb") as f:
    for i in range(n):
        if i % 5 == 4:
            buf += hset % i
            buf += bodies[(i * 40503) % 1024]
            hashes += 1
            if i % 10 == 9:
                buf += expire % i
                buf += ttl(i)
                ttls += 1
                extra += 1
        elif i % 10 == 3:
            buf += set_ex % i
            buf += values[(i * 2654435761) % 4096]
            buf += b"$2\r\nEX\r\n"
            buf += ttl(i)
            strings += 1
            ttls += 1
        else:
            buf += set_kv % i
            buf += values[(i * 2654435761) % 4096]
            strings += 1
        if len(buf) >= 1 << 22:
            f.write(buf)
            buf.clear()
    f.write(buf)
print(n, strings, hashes, ttls, n + extra)
PY
)
[[ ${GEN_KEYS:-} == "$KEYS" ]] || die "generating the protocol file failed"
RESP_BYTES=$(stat -c %s "$WORK/data.resp")
log "generated $GEN_KEYS keys ($GEN_STRINGS strings, $GEN_HASHES hashes, $GEN_TTLS with a TTL), $GEN_CMDS commands, $RESP_BYTES bytes of RESP in $(since "$gen_start") s"

# pipe_into PORT LOG: replays the protocol file; fails unless every reply came and none is an error.
pipe_into() {
    local port=$1 out=$2
    bounded "$LIMIT" "$WORK/data.resp" "$out" redis-cli -h 127.0.0.1 -p "$port" --pipe \
        || { cat "$out" >&2; die "redis-cli --pipe into port $port failed"; }
    grep -q "^errors: 0, replies: $GEN_CMDS\$" <(tr -d '\r' < "$out") \
        || { cat "$out" >&2; die "redis-cli --pipe into port $port: expected 0 errors and $GEN_CMDS replies"; }
}
load_start=$(now)
pipe_into "$SRC" "$WORK/load.log"
log "loaded into the source in $(since "$load_start") s"
SRC_PRINT=$(fingerprint "$SRC")
[[ $SRC_PRINT == "dbsize=$KEYS keys=$KEYS expires=$GEN_TTLS digest="* ]] \
    || die "the source holds $SRC_PRINT, not $KEYS keys of which $GEN_TTLS with a TTL"
[[ $SRC_PRINT != *ERR* ]] || die "DEBUG DIGEST failed on the source: $SRC_PRINT"
DATASET_BYTES=$(info_field "$SRC" memory used_memory_dataset)
USED_BYTES=$(info_field "$SRC" memory used_memory)
log "source: $SRC_PRINT; used_memory_dataset $DATASET_BYTES bytes (used_memory $USED_BYTES)"

# check_copy PORT WHAT: the copy on PORT must match the source.
check_copy() {
    local got
    got=$(fingerprint "$1")
    [[ $got == "$SRC_PRINT" ]] || die "$2: the copy differs from the source:
  source $SRC_PRINT
  copy   $got"
    log "  the copy matches the source (DBSIZE, keys with a TTL, DEBUG DIGEST)"
}
flush_target() {
    rc "$TGT" FLUSHALL SYNC >/dev/null
    [[ $(rc "$TGT" DBSIZE) == 0 ]] || die "FLUSHALL did not empty the target"
}

# ---- 2. the rounds -------------------------------------------------------------------
printf 'round\tcontender\tsecs\treported_keys\treported_bytes\treported_secs\tcopy_secs\tverify_secs\tline\n' > "$WORK/rounds.tsv"
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$WORK/rounds.tsv"; }

run_cutover() {
    local round=$1 t0 secs args out=$WORK/cutover-$1.log status=0 r_keys r_bytes r_secs r_copy r_verify r_line
    flush_target
    args=(cache sync --source "redis://127.0.0.1:$SRC" --target "redis://127.0.0.1:$TGT" --once
          --status-file "$WORK/status-$round.json")
    [[ -z $BATCH ]] || args+=(--batch "$BATCH")
    log "round $round: cutover ${args[*]}"
    t0=$(now)
    bounded "$LIMIT" /dev/null "$out" "$CUTOVER" "${args[@]}" || status=$?
    if [[ $status != 0 ]]; then
        tail -n 30 "$out" >&2
        die "cutover cache sync --once failed: exit $status$([[ $status != 124 ]] || echo ", timed out after $LIMIT s")"
    fi
    secs=$(since "$t0")
    log "  $secs s; it said: $(grep -E '^[0-9]+ keys copied|^converged' "$out" | tr '\n' ' ')"
    check_copy "$TGT" "cutover cache sync --once"
    # The keys, bytes and seconds of its closing line (or its status file), when it
    # says them in a form this understands; "-" otherwise.
    # Its own figures: from its status file (copied_keys, copied_bytes, elapsed_s,
    # copy_done_s, last_verify.took_ms), else from its summary line
    # ("N keys copied (X MiB) in Y s"); "-" for what neither says.
    IFS=$'\t' read -r r_keys r_bytes r_secs r_copy r_verify r_line < <(python3 - "$out" "$WORK/status-$round.json" <<'PY'
import json, re, sys
lines = [l.strip() for l in open(sys.argv[1], errors="replace") if l.strip()]
line = next((l for l in reversed(lines) if re.match(r"\d[\d,]* keys copied\b", l)), lines[-1] if lines else "-")
try:
    st = json.load(open(sys.argv[2]))
    st = st if isinstance(st, dict) else {}
except Exception:
    st = {}
def field(*path):
    v = st
    for k in path:
        v = v.get(k) if isinstance(v, dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
keys, nbytes, secs = field("copied_keys"), field("copied_bytes"), field("elapsed_s")
copy = field("copy_done_s")
took = field("last_verify", "took_ms")
m = re.search(r"(\d[\d,]*) keys copied \((\d+(?:\.\d+)?) (B|KiB|MiB|GiB)\) in (\d+(?:\.\d+)?)\s*s\b", line)
if m:
    unit = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[m.group(3)]
    keys = keys if keys is not None else float(m.group(1).replace(",", ""))
    nbytes = nbytes if nbytes is not None else float(m.group(2)) * unit
    secs = secs if secs is not None else float(m.group(4))
show = lambda v: "-" if v is None else repr(v)
print(show(keys), show(nbytes), show(secs), show(copy), show(None if took is None else took / 1000),
      line.replace("\t", " ")[:300], sep="\t")
PY
)
    record "$round" cutover "$secs" "${r_keys:--}" "${r_bytes:--}" "${r_secs:--}" "${r_copy:--}" "${r_verify:--}" "${r_line:--}"
}

run_pipe() {
    local round=$1 t0 secs
    flush_target
    log "round $round: redis-cli --pipe of the protocol file into the target"
    t0=$(now)
    pipe_into "$TGT" "$WORK/pipe-$round.log"
    secs=$(since "$t0")
    log "  $secs s"
    check_copy "$TGT" "redis-cli --pipe"
    record "$round" pipe "$secs" "$GEN_KEYS" "$RESP_BYTES" - - - -
}

RDB_BYTES=0
run_rdb() {
    local round=$1 t0 secs
    rm -rf "$WORK/rdbpeer"
    mkdir -p "$WORK/rdbpeer"
    log "round $round: redis-cli --rdb of the source, then a redis-server that loads it"
    t0=$(now)
    bounded "$LIMIT" /dev/null "$WORK/rdb-$round.log" redis-cli -h 127.0.0.1 -p "$SRC" --rdb "$WORK/rdbpeer/dump.rdb" \
        || { cat "$WORK/rdb-$round.log" >&2; die "redis-cli --rdb failed"; }
    start_server rdbpeer --dbfilename dump.rdb
    secs=$(since "$t0")
    RDB_BYTES=$(stat -c %s "$WORK/rdbpeer/dump.rdb")
    log "  $secs s ($RDB_BYTES bytes of RDB)"
    check_copy "${SERVER_PORT[rdbpeer]}" "redis-cli --rdb + load"
    stop_server rdbpeer
    rm -rf "$WORK/rdbpeer"
    record "$round" rdb "$secs" "$GEN_KEYS" "$RDB_BYTES" - - - -
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average before: $LOAD_BEFORE"
n=${#RUN[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    for ((k = 0; k < n; k++)); do
        c=${RUN[(r - 1 + k) % n]}
        "run_$c" "$r"
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average after: $LOAD_AFTER"

# ---- 3. the table --------------------------------------------------------------------
python3 - "$WORK/rounds.tsv" "$ROUNDS" "$QUICK" "$GEN_KEYS" "$GEN_STRINGS" "$GEN_HASHES" "$GEN_TTLS" \
    "$DATASET_BYTES" "$USED_BYTES" "$RESP_BYTES" "$CONTENDERS" "$CUTOVER_DESC" "${BATCH:--}" \
    "$LOAD_BEFORE" "$LOAD_AFTER" "$REDIS_VERSION" > "$WORK/table.md" <<'PY'
import csv, datetime, os, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t", quoting=csv.QUOTE_NONE))
rounds, quick = int(sys.argv[2]), sys.argv[3] == "1"
keys, strings, hashes, ttls = (int(x) for x in sys.argv[4:8])
dataset, used, resp = (int(x) for x in sys.argv[8:11])
contenders = sys.argv[11].split(",")
cutover_bin, batch, load_before, load_after, redis_version = sys.argv[12:17]
mb = dataset / 1e6

def secs(who):
    return [float(r["secs"]) for r in rows if r["contender"] == who]
def med(who):
    v = secs(who)
    return statistics.median(v) if v else None
def reported(who, key):
    v = [float(r[key]) for r in rows if r["contender"] == who and r[key] not in ("", "-")]
    return statistics.median(v) if v else None

names = {"cutover": "`cutover cache sync --once`" + (f" (--batch {batch})" if batch != "-" else ""),
         "pipe": "`redis-cli --pipe` of the prepared file (upper bound)",
         "rdb": "`redis-cli --rdb` + a redis-server loading it"}
flags = " --quick" if quick else ""
print(f"`bench/redis.sh{flags}` on {os.cpu_count()} cores, {datetime.date.today()}, Redis {redis_version}: "
      f"{keys:,} keys ({strings:,} strings of 80-120 B, {hashes:,} hashes of 5 fields; {ttls:,} with a TTL), "
      f"used_memory_dataset {mb:,.1f} MB of the source (used_memory {used / 1e6:,.1f} MB). "
      f"{rounds} round(s), the order rotating, medians; load average {load_before} before, {load_after} after.\n")
print("| contender | wall s | keys/s | MB/s (dataset) | time vs redis-cli --pipe |")
print("|---|---|---|---|---|")
pipe = med("pipe")
for who in ["cutover", "pipe", "rdb"]:
    if who not in contenders:
        continue
    s = med(who)
    ratio = f"{s / pipe:.2f}x" if pipe else "-"
    print(f"| {names[who]} | {s:.2f} | {keys / s:,.0f} | {mb / s:,.1f} | {ratio} |")
print("| RIOT | - | - | - | not run: not packaged for pip, cargo or apt (a Java program) |")
print("| RedisShake | - | - | - | not run: not packaged for pip, cargo or apt (a Go program) |")
print()
print("MB/s is the source's INFO memory `used_memory_dataset` (10^6 bytes) over the wall time, "
      "the same numerator for every contender, so it ranks them as keys/s does.")
print("Every copy was checked against the source afterwards, untimed: DBSIZE, keys with a TTL, DEBUG DIGEST.")
if "cutover" in contenders:
    print("`cutover cache sync --once` is timed from its start to its exit 0 (converged): its initial copy, "
          "then its verification pass, which reads every key on both sides again; the peers verify nothing.")
print("`redis-cli --pipe` replays the same writes from a prepared RESP file "
      f"({resp / 1e6:,.1f} MB): it never reads the live source, so it is an upper bound, not a peer that does the same job.")
if "rdb" in contenders:
    rdb = reported("rdb", "reported_bytes")
    print(f"`redis-cli --rdb` reads the live source (a replication snapshot, {rdb / 1e6:,.1f} MB of RDB) and a fresh "
          "redis-server on a third port loads it: a cold point-in-time copy that needs a target it may restart, "
          "with no changes after the snapshot.")
if "cutover" in contenders:
    ck, cb, cs = (reported("cutover", k) for k in ("reported_keys", "reported_bytes", "reported_secs"))
    cc, cv = reported("cutover", "copy_secs"), reported("cutover", "verify_secs")
    said = []
    if ck is not None:
        said.append(f"{ck:,.0f} keys copied")
    if cb is not None:
        said.append(f"{cb / 1e6:,.1f} MB of DUMP payloads ({cb / 1e6 / med('cutover'):,.1f} MB/s over the wall time)")
    if cs is not None:
        said.append(f"{cs:.2f} s by its own clock")
    if cc is not None:
        said.append(f"of which the initial copy {cc:.2f} s ({keys / cc:,.0f} keys/s, {mb / cc:,.1f} MB/s of dataset)")
    if cv is not None:
        said.append(f"the verification pass {cv:.2f} s")
    line = next((r["line"] for r in reversed(rows) if r["contender"] == "cutover"), "-")
    print(f"cutover's binary: `{cutover_bin}`; its own figures (status file, medians): "
          + (", ".join(said) if said else "none this script could read")
          + f". Its last summary: `{line}`.")
if rounds > 1 or len(contenders) > 1:
    print("\n| round | " + " | ".join(f"{w} (s)" for w in contenders) + " |")
    print("|---|" + "---|" * len(contenders))
    for r in range(1, rounds + 1):
        cells = []
        for w in contenders:
            v = [float(x["secs"]) for x in rows if x["contender"] == w and int(x["round"]) == r]
            cells.append(f"{v[0]:.2f}" if v else "-")
        print(f"| {r} | " + " | ".join(cells) + " |")
if quick:
    print("\n(--quick: a smoke check with a small data set; use the full run for figures.)")
PY
cat "$WORK/table.md"
if [[ -n $OUT ]]; then
    cp "$WORK/table.md" "$OUT"
    log "written to $OUT"
fi
log "bench/redis.sh: $(since "$script_start") s in all"
