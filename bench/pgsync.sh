#!/usr/bin/env bash
# The initial sync of `cutover db sync` against the usual way to copy a database,
# `pg_dump -Fd -j 2 -Z 0` then `pg_restore -j 2`, and the steady replication lag
# under 2,000 writes/s. Two local PostgreSQL 15 clusters, "old" (the source) and
# "new" (the target), on free 127.0.0.1 ports in a temp dir, with logical
# replication enabled and the same settings.
#
# 1. Generates on the source a database of about 6 GB at scale 1 (accounts 1M rows,
#    orders 5M and events 20M, primary keys, secondary indexes, foreign keys), then
#    VACUUM (FREEZE, ANALYZE) and CHECKPOINT so that both contenders start equal.
# 2. The peer: pg_dump -Fd -j 2 -Z 0 of the source plus pg_restore -j 2 into an empty
#    database on the target, wall clock for both together; then drops that copy.
# 3. cutover: `cutover db sync` into an empty database on the target, wall clock
#    until it returns (it waits for every table's initial copy); then row counts
#    compared table by table and the subscription checked to be streaming.
#    Rounds alternate the order (peer first in odd rounds, cutover first in even).
# 4. Steady lag, on the replication of the last sync: pgbench on the source at
#    -R 2000 (one write per transaction, half INSERTs into events and half UPDATEs
#    of an orders row, 32 clients) while `cutover db status --watch --json` samples
#    the lag once a second: the heartbeat's round trip (the status waits up to 10 s for it,
#    so a longer lag shows as ">= 10000 ms") and the bytes the subscriber has not
#    flushed; PostgreSQL's pg_stat_replication.replay_lag is sampled alongside. Then
#    the catch-up: how long after the writes stop the slot confirms the last one,
#    and the row counts compared again.
# Then a table of the figures, and `cutover db cleanup`.
#
# Usage: bench/pgsync.sh [--scale F] [--quick] [--rounds N] [--lag-seconds S]
#   --scale F        multiplies every row count (default 1.0: about 6 GB, and up to
#                    about 36 GB of free disk for the clusters, their WAL and the dump)
#   --quick          --scale 0.01 and --lag-seconds 10 (about a minute; a smoke
#                    check, not a result)
#   --rounds N       rounds of both contenders, the order alternating (default 1);
#                    the table shows each round and the medians
#   --lag-seconds S  how long pgbench writes during the lag measurement (default 30)
#   --copy WHO       `cutover db sync --copy`: controller (default; the controller
#                    copies, large tables in parallel parts) or subscription
#                    (PostgreSQL's table sync)
#
# Environment: CUTOVER, the controller binary (default target/release/cutover, built
# first with cargo unless CUTOVER is set); PG_BIN, PostgreSQL 15's programs (default
# /usr/lib/postgresql/15/bin); TMPDIR, where the clusters and the dump go. As root
# the servers run as the `postgres` user. Traffic goes to 127.0.0.1 only; every wait
# and loop is bounded.
set -euo pipefail

script_start=$EPOCHREALTIME
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
SCALE=1.0
ROUNDS=1
LAG_SECS=30
LAG_SET=0
QUICK=0
COPY=controller
while [[ $# -gt 0 ]]; do
    case "$1" in
        --scale) SCALE=${2:?--scale needs a number}; shift ;;
        --quick) QUICK=1 ;;
        --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
        --lag-seconds) LAG_SECS=${2:?--lag-seconds needs a number}; LAG_SET=1; shift ;;
        --copy) COPY=${2:?--copy needs controller or subscription}; shift ;;
        -h|--help) sed -n '2,43p' "$0"; exit 0 ;;
        *) echo "pgsync.sh: unknown argument $1 (see --help)" >&2; exit 1 ;;
    esac
    shift
done
if [[ $QUICK == 1 ]]; then
    SCALE=0.01
    [[ $LAG_SET == 1 ]] || LAG_SECS=10
fi
if ! [[ $SCALE =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] || ! awk -v s="$SCALE" 'BEGIN { exit !(s > 0 && s <= 100) }'; then
    echo "pgsync.sh: --scale must be a number in (0, 100], not $SCALE" >&2
    exit 1
fi
[[ $COPY == controller || $COPY == subscription ]] || { echo "pgsync.sh: --copy must be controller or subscription, not $COPY" >&2; exit 1; }
[[ $ROUNDS =~ ^[1-9][0-9]?$ ]] || { echo "pgsync.sh: --rounds must be 1 to 99, not $ROUNDS" >&2; exit 1; }
[[ $LAG_SECS =~ ^[1-9][0-9]{0,3}$ ]] || { echo "pgsync.sh: --lag-seconds must be 1 to 9999, not $LAG_SECS" >&2; exit 1; }

log() { printf '%s\n' "$*" >&2; }
die() { log "pgsync.sh: $*"; exit 1; }

for p in initdb pg_ctl psql pg_dump pg_restore pgbench; do
    [[ -x $PG_BIN/$p ]] || die "$PG_BIN/$p not found (PostgreSQL 15's programs; set PG_BIN)"
done
command -v python3 >/dev/null || die "python3 not found"

if [[ -n ${CUTOVER:-} ]]; then
    [[ $CUTOVER == /* ]] || CUTOVER=$PWD/$CUTOVER
else
    CUTOVER=$ROOT/target/release/cutover
    log "building cutover (release)"
    (cd "$ROOT" && cargo build --release --locked -q --bin cutover)
fi
[[ -x $CUTOVER ]] || die "$CUTOVER is not an executable"
export CUTOVER_PG_BIN=$PG_BIN

rows() { awk -v n="$1" -v s="$SCALE" 'BEGIN { r = int(n * s + 0.5); if (r < 1) r = 1; printf "%d", r }'; }
N_ACCOUNTS=$(rows 1000000)
N_ORDERS=$(rows 5000000)
N_EVENTS=$(rows 20000000)
JOBS=$(nproc 2>/dev/null || echo 2)
((JOBS >= 1)) || JOBS=1
((JOBS <= 4)) || JOBS=4

work=$(mktemp -d "${TMPDIR:-/tmp}/cutover-pgsync.XXXXXX")
# At scale 1: 6 GB on the source, 6 GB restored, a 6 GB dump, and up to max_wal_size
# (8 GB) of WAL on each side.
need_kib=$(awk -v s="$SCALE" 'BEGIN { printf "%d", s * 36 * 1024 * 1024 + 2 * 1024 * 1024 }')
free_kib=$(df -Pk "$work" | awk 'NR == 2 { print $4 }')
if ((free_kib < need_kib)); then
    rmdir "$work"
    die "$((free_kib / 1024 / 1024)) GiB free under ${TMPDIR:-/tmp}, about $((need_kib / 1024 / 1024)) GiB needed at scale $SCALE (set TMPDIR)"
fi

bg_pids=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid c
    for pid in "${bg_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for c in old new; do
        if [[ $rc != 0 && -f $work/$c/log ]]; then
            log "--- the $c server's log, last lines:"
            tail -n 15 "$work/$c/log" >&2 || true
        fi
        if [[ -f $work/$c/data/postmaster.pid ]]; then
            as_pg "$PG_BIN/pg_ctl" -D "$work/$c/data" -m fast -t 60 stop >/dev/null 2>&1 \
                || as_pg "$PG_BIN/pg_ctl" -D "$work/$c/data" -m immediate -t 30 stop >/dev/null 2>&1 || true
        fi
    done
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

as_pg() {
    if [[ $(id -u) == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

if [[ $(id -u) == 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root and there is no postgres user to run the servers"
fi
chmod 711 "$work"
PASSWORD=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
PGPASS=$work/pgpass
printf '127.0.0.1:*:*:postgres:%s\n' "$PASSWORD" > "$PGPASS"
chmod 600 "$PGPASS"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_cluster NAME: initdb and start; writes the port to $work/NAME/port.
start_cluster() {
    local name=$1 dir=$work/$1 port try
    mkdir -p "$dir/sock"
    printf '%s\n' "$PASSWORD" > "$dir/pw"
    [[ $(id -u) != 0 ]] || chown -R postgres:postgres "$dir"
    as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        -E UTF8 --locale=C --pwfile="$dir/pw" > "$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb of $name failed"; }
    rm -f "$dir/pw"
    for try in 1 2 3 4 5; do
        port=$(free_port)
        # The last `port` line wins, so a retry appends a fresh one.
        cat >> "$dir/data/postgresql.conf" <<EOF

# bench/pgsync.sh
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/sock'
max_connections = 100
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
max_logical_replication_workers = 8
max_sync_workers_per_subscription = 2
max_worker_processes = 16
shared_buffers = 512MB
maintenance_work_mem = 256MB
work_mem = 16MB
max_wal_size = 8GB
min_wal_size = 1GB
checkpoint_timeout = 30min
EOF
        if as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 start > /dev/null 2>&1; then
            echo "$port" > "$dir/port"
            return 0
        fi
        log "$name: start on port $port failed (attempt $try of 5)"
    done
    tail -n 20 "$dir/log" >&2 || true
    die "the $name cluster did not start"
}

# q PORT DB ARGS...: psql as postgres over 127.0.0.1.
q() {
    local port=$1 db=$2
    shift 2
    PGPASSFILE=$PGPASS "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"
}
dsn() { printf 'host=127.0.0.1 port=%s user=postgres password=%s dbname=%s' "$1" "$PASSWORD" "$2"; }
now() { printf '%s' "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }

log "starting two PostgreSQL clusters in $work"
start_cluster old &
old_pid=$!
bg_pids+=("$old_pid")
start_cluster new || die "the new cluster did not start"
wait "$old_pid" || die "the old cluster did not start"
bg_pids=()
SRC_PORT=$(cat "$work/old/port")
TGT_PORT=$(cat "$work/new/port")
log "old (source) on 127.0.0.1:$SRC_PORT, new (target) on 127.0.0.1:$TGT_PORT"
export CUTOVER_SOURCE CUTOVER_TARGET
CUTOVER_SOURCE=$(dsn "$SRC_PORT" bench)
CUTOVER_TARGET=$(dsn "$TGT_PORT" bench)

# --- 1. the source database -------------------------------------------------------
log "generating the source database at scale $SCALE: $N_ACCOUNTS accounts, $N_ORDERS orders, $N_EVENTS events ($JOBS sessions)"
gen_start=$(now)
q "$SRC_PORT" postgres -c "CREATE DATABASE bench"
q "$SRC_PORT" bench <<'SQL'
CREATE TABLE accounts (
    id         bigint NOT NULL,
    email      text NOT NULL,
    name       text NOT NULL,
    balance    numeric(12,2) NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id         bigint GENERATED BY DEFAULT AS IDENTITY,
    account_id bigint NOT NULL,
    amount     numeric(12,2) NOT NULL,
    status     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE events (
    id         bigint GENERATED BY DEFAULT AS IDENTITY,
    account_id bigint NOT NULL,
    kind       smallint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    payload    text NOT NULL
);
SQL

# Chunks of at most 1M rows (at least four per table, so that small scales still run
# in parallel), handed out round-robin to $JOBS sessions.
chunk_sql=()
chunk_label=()
add_chunks() {
    local table=$1 n=$2 select=$3 size lo hi
    size=$(((n + 3) / 4))
    ((size <= 1000000)) || size=1000000
    for ((lo = 1; lo <= n; lo += size)); do
        hi=$((lo + size - 1))
        ((hi <= n)) || hi=$n
        # shellcheck disable=SC2059 # the format is the chunk's SELECT, its bounds the %s
        chunk_sql+=("INSERT INTO $table $(printf "$select" "$lo" "$hi")")
        chunk_label+=("$table $lo..$hi")
    done
}
add_chunks accounts "$N_ACCOUNTS" "(id, email, name, balance, created_at)
  SELECT g, 'user' || g || '@example.com', 'User ' || md5(g::text),
         (g %% 100000) / 100.0, timestamptz '2024-01-01' + g * interval '1 second'
  FROM generate_series(%s::bigint, %s) g"
add_chunks orders "$N_ORDERS" "(id, account_id, amount, status, created_at, updated_at)
  SELECT g, 1 + (g * 7919) %% $N_ACCOUNTS, (g %% 50000) / 100.0,
         (ARRAY['new','paid','shipped','delivered','returned'])[1 + g %% 5],
         timestamptz '2024-01-01' + g * interval '200 milliseconds',
         timestamptz '2024-01-01' + g * interval '200 milliseconds'
  FROM generate_series(%s::bigint, %s) g"
add_chunks events "$N_EVENTS" "(id, account_id, kind, created_at, payload)
  SELECT g, 1 + (g * 104729) %% $N_ACCOUNTS, (g %% 7)::smallint,
         timestamptz '2024-01-01' + g * interval '50 milliseconds',
         repeat(md5(g::text), 5)
  FROM generate_series(%s::bigint, %s) g"

gen_worker() {
    local w=$1 i
    for ((i = w; i < ${#chunk_sql[@]}; i += JOBS)); do
        q "$SRC_PORT" bench -c "${chunk_sql[i]}" || { log "  chunk ${chunk_label[i]} failed"; return 1; }
        log "  $(printf '%3d/%d' $((i + 1)) ${#chunk_sql[@]}) ${chunk_label[i]} ($(since "$gen_start") s)"
    done
}
workers=()
for ((w = 0; w < JOBS; w++)); do
    gen_worker "$w" &
    workers+=("$!")
    bg_pids+=("$!")
done
for pid in "${workers[@]}"; do
    wait "$pid" || die "generating the rows failed"
done
bg_pids=()

log "  keys and indexes ($(since "$gen_start") s)"
q "$SRC_PORT" bench -c "ALTER TABLE events ADD PRIMARY KEY (id);
    CREATE INDEX events_account_id ON events (account_id);
    CREATE INDEX events_created_at ON events (created_at);" &
ddl=$!
bg_pids+=("$ddl")
q "$SRC_PORT" bench -c "ALTER TABLE accounts ADD PRIMARY KEY (id);
    CREATE UNIQUE INDEX accounts_email ON accounts (email);
    ALTER TABLE orders ADD PRIMARY KEY (id);
    CREATE INDEX orders_account_id ON orders (account_id);
    CREATE INDEX orders_created_at ON orders (created_at);"
wait "$ddl" || die "indexing events failed"
bg_pids=()
log "  foreign keys ($(since "$gen_start") s)"
q "$SRC_PORT" bench -c "ALTER TABLE orders ADD CONSTRAINT orders_account_id_fkey
        FOREIGN KEY (account_id) REFERENCES accounts (id);
    ALTER TABLE events ADD CONSTRAINT events_account_id_fkey
        FOREIGN KEY (account_id) REFERENCES accounts (id);
    SELECT setval(pg_get_serial_sequence('orders', 'id'), (SELECT max(id) FROM orders));
    SELECT setval(pg_get_serial_sequence('events', 'id'), (SELECT max(id) FROM events));" > /dev/null
log "  VACUUM (FREEZE, ANALYZE) and CHECKPOINT ($(since "$gen_start") s)"
q "$SRC_PORT" bench -c "VACUUM (FREEZE, ANALYZE)"
q "$SRC_PORT" bench -c "CHECKPOINT"
DB_BYTES=$(q "$SRC_PORT" bench -Atc "SELECT pg_database_size('bench')")
DB_SIZE=$(q "$SRC_PORT" bench -Atc "SELECT pg_size_pretty(pg_database_size('bench'))")
log "source database: $DB_SIZE ($DB_BYTES bytes), generated in $(since "$gen_start") s"
q "$SRC_PORT" bench -Atc "SELECT format('  %-9s %12s rows  %s with indexes', c.relname, c.reltuples::bigint,
        pg_size_pretty(pg_total_relation_size(c.oid)))
    FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' ORDER BY c.relname" >&2

TABLES=$(q "$SRC_PORT" bench -Atc "SELECT string_agg(format('%I', relname), ' ' ORDER BY relname)
    FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'")

# counts PORT DB: "table count" per line, for every table of the source's public schema.
counts() {
    local port=$1 db=$2 t
    for t in $TABLES; do
        printf '%s %s\n' "$t" "$(q "$port" "$db" -Atc "SELECT count(*) FROM public.$t")"
    done
}
SRC_COUNTS=$(counts "$SRC_PORT" bench)

checkpoint_both() {
    q "$SRC_PORT" bench -c "CHECKPOINT"
    q "$TGT_PORT" postgres -c "CHECKPOINT"
}

# --- 2. the peer: pg_dump -j 2 | pg_restore -j 2 ------------------------------------
peer_times=()
run_peer() {
    local round=$1 t0 secs
    checkpoint_both
    rm -rf "$work/dump"
    q "$TGT_PORT" postgres -c "CREATE DATABASE restored"
    log "round $round: pg_dump -Fd -j 2 -Z 0 + pg_restore -j 2"
    t0=$(now)
    PGPASSFILE=$PGPASS "$PG_BIN/pg_dump" -h 127.0.0.1 -p "$SRC_PORT" -U postgres -d bench \
        -Fd -j 2 -Z 0 -f "$work/dump"
    log "  dump done ($(since "$t0") s)"
    PGPASSFILE=$PGPASS "$PG_BIN/pg_restore" -h 127.0.0.1 -p "$TGT_PORT" -U postgres -d restored \
        -j 2 --exit-on-error "$work/dump"
    secs=$(since "$t0")
    log "  restore done: $secs s in all"
    peer_times+=("$secs")
    local got
    got=$(counts "$TGT_PORT" restored)
    [[ $got == "$SRC_COUNTS" ]] || die "the restored copy's row counts differ from the source's: $got"
    rm -rf "$work/dump"
    q "$TGT_PORT" postgres -c "DROP DATABASE restored"
}

# --- 3. cutover db sync -------------------------------------------------------------
cutover_times=()
synced=0
run_cutover() {
    local round=$1 t0 secs got i state
    if [[ $synced == 1 ]]; then
        "$CUTOVER" db cleanup --name bench > "$work/cleanup.log" 2>&1 \
            || { cat "$work/cleanup.log" >&2; die "cutover db cleanup failed"; }
        q "$TGT_PORT" postgres -c "DROP DATABASE bench"
        synced=0
    fi
    q "$TGT_PORT" postgres -c "CREATE DATABASE bench"
    if [[ $round == 1 ]]; then
        log "cutover db check (the preflight, not timed):"
        "$CUTOVER" db check --name bench 2> "$work/check.log" | sed 's/^/  /' >&2 \
            || { cat "$work/check.log" >&2; die "cutover db check found a blocker"; }
    fi
    checkpoint_both
    log "round $round: cutover db sync"
    t0=$(now)
    "$CUTOVER" db sync --name bench --copy "$COPY" > "$work/sync.out" 2> "$work/sync.log" \
        || { tail -n 30 "$work/sync.log" >&2; die "cutover db sync failed"; }
    secs=$(since "$t0")
    synced=1
    sed 's/^/  /' "$work/sync.out" >&2
    log "  sync returned: $secs s"
    cutover_times+=("$secs")
    got=$(counts "$TGT_PORT" bench)
    [[ $got == "$SRC_COUNTS" ]] || die "row counts differ after the sync: source
$SRC_COUNTS
target
$got"
    log "  row counts match on every table ($(echo "$TABLES" | wc -w) tables)"
    state=
    for ((i = 0; i < 20; i++)); do
        state=$(q "$SRC_PORT" bench -Atc "SELECT state FROM pg_stat_replication WHERE application_name = 'bench'")
        [[ $state != streaming ]] || break
        sleep 0.5
    done
    [[ $state == streaming ]] || die "the subscription is not streaming after the sync (walsender state: ${state:-none})"
    q "$TGT_PORT" bench -Atc "SELECT pid IS NOT NULL FROM pg_stat_subscription
        WHERE subname = 'bench' AND relid IS NULL" | grep -qx t \
        || die "the subscription's apply worker is not running on the target"
    log "  the subscription is streaming"
}

for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2 == 1)); then
        run_peer "$r"
        run_cutover "$r"
    else
        run_cutover "$r"
        run_peer "$r"
    fi
done
TGT_BYTES=$(q "$TGT_PORT" bench -Atc "SELECT pg_database_size('bench')")

# --- 4. steady lag at 2,000 writes/s ------------------------------------------------
log "steady lag: pgbench -R 2000 -T $LAG_SECS -c 32 -j 2 on the source, cutover db status every second"
cat > "$work/insert.sql" <<'SQL'
\set aid random(1, :accounts)
INSERT INTO events (account_id, kind, payload) VALUES (:aid, 9, md5(random()::text));
SQL
cat > "$work/update.sql" <<'SQL'
\set oid random(1, :orders)
UPDATE orders SET status = 'paid', amount = amount + 1, updated_at = now() WHERE id = :oid;
SQL
# One sample a second from a single `cutover db status --watch --json` (a JSON line
# each: the heartbeat's round trip, and the bytes the subscriber has not flushed),
# for as long as pgbench writes.
PGPASSFILE=$PGPASS timeout $((LAG_SECS + 60)) "$PG_BIN/pgbench" -h 127.0.0.1 -p "$SRC_PORT" -U postgres -n \
    -f "$work/insert.sql@1" -f "$work/update.sql@1" -D accounts="$N_ACCOUNTS" -D orders="$N_ORDERS" \
    -R 2000 -T "$LAG_SECS" -c 32 -j 2 bench > "$work/pgbench.out" 2> "$work/pgbench.log" &
bench_pid=$!
bg_pids+=("$bench_pid")
lag_start=$(now)
"$CUTOVER" db status --watch --json --lag-within 10s --name bench > "$work/lag.jsonl" 2> "$work/status.log" &
watch_pid=$!
bg_pids+=("$watch_pid")
# PostgreSQL's own measure alongside, which is not cut off:
# pg_stat_replication.replay_lag of the subscription's walsender (NULL once idle).
for ((i = 0; i < LAG_SECS + 60; i++)); do
    kill -0 "$bench_pid" 2>/dev/null || break
    t0=$(now)
    q "$SRC_PORT" bench -Atc "SELECT coalesce(round(extract(epoch FROM replay_lag) * 1000, 1), 0)
        FROM pg_stat_replication WHERE application_name = 'bench'" >> "$work/replay_lag" || true
    sleep "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { r = 1 - (b - a); printf "%.3f", (r > 0 ? r : 0) }')"
done
wait "$bench_pid" || { cat "$work/pgbench.log" "$work/pgbench.out" >&2; die "pgbench failed"; }
bench_secs=$(since "$lag_start")
end_lsn=$(q "$SRC_PORT" bench -Atc "SELECT pg_current_wal_lsn()")
if kill -0 "$watch_pid" 2>/dev/null; then
    kill "$watch_pid"
    wait "$watch_pid" 2>/dev/null || true
else
    wait "$watch_pid" 2>/dev/null || true
    log "  cutover db status --watch stopped early: $(tail -n 3 "$work/status.log")"
fi
bg_pids=()
samples=$(grep -c '^{' "$work/lag.jsonl" || true)
log "  pgbench ran $bench_secs s; $samples lag samples"
((samples > 0)) || die "no lag sample: $(tail -n 3 "$work/status.log")"
grep -E '^(number of (transactions|failed)|latency|rate limit|tps)' "$work/pgbench.out" | sed 's/^/  pgbench: /' >&2 || true

# Every write has arrived: the slot's confirmed flush passes the source's last
# position, then the row counts match.
catchup_start=$(now)
catchup_limit=$((LAG_SECS * 20 + 60))
for ((i = 0; i < catchup_limit; i++)); do
    caught=$(q "$SRC_PORT" bench -Atc "SELECT confirmed_flush_lsn >= '$end_lsn'::pg_lsn
        FROM pg_replication_slots WHERE slot_name = 'bench'")
    [[ $caught != t ]] || break
    ((i == 0 || i % 10 != 0)) || log "  catching up: $(q "$SRC_PORT" bench -Atc "SELECT pg_size_pretty('$end_lsn'::pg_lsn - confirmed_flush_lsn)
        FROM pg_replication_slots WHERE slot_name = 'bench'") to go ($i s)"
    sleep 1
done
[[ $caught == t ]] || die "the target did not catch up within $catchup_limit s after pgbench stopped"
CATCHUP=$(since "$catchup_start")
got=$(counts "$TGT_PORT" bench)
SRC_COUNTS=$(counts "$SRC_PORT" bench)
[[ $got == "$SRC_COUNTS" ]] || die "row counts differ once the target caught up: source
$SRC_COUNTS
target
$got"
log "  caught up $CATCHUP s after pgbench stopped; row counts match on every table"

# --- 5. the table --------------------------------------------------------------------
python3 - "$work" "$DB_BYTES" "$TGT_BYTES" "$SCALE" "${peer_times[*]}" "${cutover_times[*]}" "$CATCHUP" <<'PY'
import json, math, pathlib, re, statistics, sys
work, db_bytes, tgt_bytes, scale = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
peer = [float(x) for x in sys.argv[5].split()]
cut = [float(x) for x in sys.argv[6].split()]
catchup = float(sys.argv[7])

def gib(n):
    return f"{n / 2**30:.2f} GiB"

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(p / 100 * len(xs)) - 1))]

# Heartbeat samples as (ms, at_least): the status waits 1 s for its beat, so a
# sample that gave up only says ">= 1 s".
beats, lag_bytes = [], []
for line in (work / "lag.jsonl").read_text().splitlines():
    if not line.startswith("{"):
        continue
    s = json.loads(line)
    if s.get("lag_seconds") is not None:
        beats.append((s["lag_seconds"]["seconds"] * 1000, bool(s["lag_seconds"]["at_least"])))
    if s.get("lag_bytes") is not None:
        lag_bytes.append(s["lag_bytes"])
replay = [float(x) for x in (work / "replay_lag").read_text().split()] if (work / "replay_lag").exists() else []

out = (work / "pgbench.out").read_text()
def grab(pattern):
    m = re.search(pattern, out, re.M)
    return m.group(1) if m else "?"
tps = grab(r"^tps = ([0-9.]+)")
done = grab(r"^number of transactions actually processed: (\d+)")
failed = grab(r"^number of failed transactions: (\d+)")
latency = grab(r"^latency average = ([0-9.]+ ms)")
behind = grab(r"^rate limit schedule lag: avg ([0-9.]+) ")
tps = f"{float(tps):,.0f}" if tps != "?" else tps

rows = [("source database size", f"{gib(db_bytes)} ({db_bytes:,} bytes; scale {scale})"),
        ("target after the sync", gib(tgt_bytes))]
if len(peer) > 1:
    for i, (p, c) in enumerate(zip(peer, cut), 1):
        first = "peer first" if i % 2 else "cutover first"
        rows.append((f"round {i} ({first})", f"pg_dump+pg_restore {p:.1f} s, cutover db sync {c:.1f} s, ratio {c / p:.2f}x"))
mp, mc = statistics.median(peer), statistics.median(cut)
label = "" if len(peer) == 1 else f" (median of {len(peer)})"
rows += [(f"pg_dump+pg_restore -j 2{label}", f"{mp:.1f} s"),
         (f"cutover db sync{label}", f"{mc:.1f} s"),
         ("ratio cutover/peer", f"{mc / mp:.2f}x (lower is better; target <= 1.0x)"),
         ("writes during the lag run", f"{tps}/s of 2,000/s asked ({done} writes, {failed} failed; latency avg {latency},"
          f" of which {behind} ms behind schedule)")]
if beats:
    ranked = sorted(beats)
    def beat(p):
        ms, at_least = ranked[min(len(ranked) - 1, max(0, math.ceil(p / 100 * len(ranked)) - 1))]
        return f">= {ms:.0f}" if at_least else f"{ms:.1f}"
    cut_off = sum(a for _, a in beats)
    note = f"; {cut_off} cut off at 10 s" if cut_off else ""
    rows.append(("steady lag, heartbeat",
                 f"p50 {beat(50)} ms, p99 {beat(99)} ms, max {beat(100)} ms ({len(beats)} samples{note})"))
else:
    rows.append(("steady lag, heartbeat", "no sample"))
if replay:
    rows.append(("steady lag, replay_lag", f"p50 {pct(replay, 50):.1f} ms, p99 {pct(replay, 99):.1f} ms, max {max(replay):.1f} ms (pg_stat_replication)"))
if lag_bytes:
    rows.append(("steady lag, unflushed", f"p50 {pct(lag_bytes, 50):,} B, p99 {pct(lag_bytes, 99):,} B, max {max(lag_bytes):,} B"))
rows.append(("catch-up after the writes", f"{catchup:.1f} s until the slot confirmed the last write"))
w = max(len(k) for k, _ in rows)
print()
for k, v in rows:
    print(f"{k:<{w}}  {v}")
PY

"$CUTOVER" db cleanup --name bench > "$work/cleanup.log" 2>&1 \
    || { cat "$work/cleanup.log" >&2; die "cutover db cleanup failed"; }
log "cutover db cleanup: done"
log "bench/pgsync.sh: $(since "$script_start") s in all"
