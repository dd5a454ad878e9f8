# Sourced by the bench scripts: a work dir and the processes in PIDS, both gone on
# exit; free loopback ports; a process's CPU ticks; the one-proxy set-up.
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

# The one-proxy set-up of instructions.sh and conns.sh: free ports OLD NEW P ADMIN,
# the templates rendered into WORK for one worker or thread (at most MAXCONN client
# connections, 4000 by default), and the two nginx backends started. Needs ROOT.
one_proxy_setup() { # one_proxy_setup [MAXCONN]
    OLD=$(port); NEW=$(port); P=$(port); ADMIN=$(port)
    local pair
    for pair in backends.conf:backends.conf cutover-proxy.toml:cutover.toml \
        nginx-proxy.conf:nginx-proxy.conf haproxy.cfg:haproxy.cfg; do
        sed -e "s|@WORK@|$WORK|g" -e "s|@OLD@|$OLD|g" -e "s|@NEW@|$NEW|g" -e "s|@ADMIN@|$ADMIN|g" \
            -e "s|@PORT@|$P|g" -e "s|@MAXCONN@|${1:-4000}|g" -e "s|@THREADS@|1|g" \
            "$ROOT/bench/${pair%%:*}" > "$WORK/${pair##*:}"
    done
    nginx -c "$WORK/backends.conf" -p "$WORK" & PIDS+=($!)
}

# await_proxy SCRIPT NAME TRIES: polls the proxy on P (Host shop.test) every 0.1 s,
# at most TRIES times; if it never answers, prints the tail of WORK/NAME.log and exits.
await_proxy() {
    local i
    for (( i = 0; i < $3; i++ )); do
        curl -s -o /dev/null -H 'Host: shop.test' "http://127.0.0.1:$P/" && return 0
        sleep 0.1
    done
    echo "$1: $2 did not answer; its log:" >&2
    tail -20 "$WORK/$2.log" >&2
    exit 1
}
