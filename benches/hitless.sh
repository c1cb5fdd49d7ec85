#!/usr/bin/env bash
# Stateful clients across failovers, side by side: the redis-py clients of tests/hitless/clients.py
# (pub/sub RESP2 and RESP3, a BRPOP consumer, a BLMOVE reliable queue, a MULTI left open, a
# WATCH/MULTI retry loop, and their producers) through sentinel-proxy and through HAProxy in tcp
# mode (the usual Sentinel recipe: a `role:master` tcp-check on every node, `inter 1s fall 2 rise
# 2`, `on-marked-down shutdown-sessions`), each on a fresh local lab, across FAILOVERS planned
# failovers (SENTINEL FAILOVER) and then a kill -9 of the master. Prints one JSON report per target:
# per kind of client, errors and reconnects (planned / kill -9), lost and duplicated items.
#
#   benches/hitless.sh                 # both targets, FAILOVERS=5
#   FAILOVERS=3 benches/hitless.sh haproxy
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_redis_packages
ensure_redis_py
command -v haproxy >/dev/null 2>&1 || apt_install haproxy
FAILOVERS=${FAILOVERS:-5}
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(proxy haproxy)
cargo build --release --quiet
PY=target/redis-py/bin/python
PIDS=()
# Whatever happens, stop what this script started, by PID: the clients, the target, the lab.
cleanup() {
    [ -n "${CL_PID:-}" ] && kill "$CL_PID" 2>/dev/null
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    PIDS=()
    lab_stop
    [ -n "${LAB_DIR:-}" ] && rm -rf "$LAB_DIR"
    return 0
}
trap cleanup EXIT

master_is() { [ "$(lab_master_port)" = "$1" ] && redis-cli -p "$1" ROLE 2>/dev/null | head -n 1 | grep -qx master; }
# Both replicas of the current master are online (synced), as Sentinel would want to promote one.
replicas_online() { [ "$(redis-cli -p "$(lab_master_port)" INFO replication | grep -c 'state=online')" -eq 2 ]; }
master_moved() { local m; m=$(lab_master_port); [ "$m" != "$1" ] && master_is "$m"; }
failover() {
    local s
    for s in "${LAB_SENTINEL_PORTS[@]}"; do
        [ "$(redis-cli -p "$s" SENTINEL FAILOVER mymaster 2>/dev/null)" = OK ] && return 0
    done
    return 1
}
# The clients' operation counts, one JSON line.
progress() { echo progress >&"${CL[1]}"; local l; read -r -t 30 l <&"${CL[0]}"; echo "$l"; }
# Wait until every kind of client did 5 more operations than in the JSON line $1.
advanced() {
    local now; now=$(progress)
    "$PY" -c 'import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); sys.exit(0 if all(b[k] >= a.get(k,0)+5 for k in b) else 1)' "$1" "$now"
}

for target in "${TARGETS[@]}"; do
    LAB_DIR=$(mktemp -d)
    lab_start
    port=$(free_port)
    if [ "$target" = proxy ]; then
        target/release/sentinel-proxy --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$(free_port)" \
            --sentinels "$(lab_sentinel_list)" 2>"$LAB_DIR/proxy.log" &
    else
        {
            printf 'global\n    maxconn 1000\ndefaults\n    mode tcp\n    timeout connect 1s\n'
            printf '    timeout client 1h\n    timeout server 1h\n    timeout check 2s\n'
            printf '    default-server check inter 1s fall 2 rise 2 on-marked-down shutdown-sessions\n'
            printf 'listen redis\n    bind 127.0.0.1:%s\n    option tcp-check\n' "$port"
            printf '    tcp-check send PING\\r\\n\n    tcp-check expect string +PONG\n'
            printf '    tcp-check send info\\ replication\\r\\n\n    tcp-check expect string role:master\n'
            printf '    tcp-check send QUIT\\r\\n\n    tcp-check expect string +OK\n'
            for p in "${LAB_REDIS_PORTS[@]}"; do printf '    server r%s 127.0.0.1:%s\n' "$p" "$p"; done
        } >"$LAB_DIR/haproxy.cfg"
        haproxy -f "$LAB_DIR/haproxy.cfg" 2>"$LAB_DIR/haproxy.log" &
    fi
    PIDS+=($!)
    wait_for 20 "$target" redis-cli -p "$port" SET hitless:probe 1
    # A replica still in its first sync would lose what it missed if it were promoted.
    wait_for 60 "both replicas online" replicas_online
    coproc CL { exec "$PY" tests/hitless/clients.py "$port"; }
    start='{}'
    wait_for 30 "the clients to start" advanced "$start"
    for i in $(seq 1 "$FAILOVERS"); do
        old=$(lab_master_port)
        before=$(progress)
        wait_for 30 "SENTINEL FAILOVER to be accepted" failover
        wait_for 60 "a new master" master_moved "$old"
        wait_for 60 "the clients to go on after failover $i" advanced "$before" || true
        wait_for 60 "the lab to settle" lab_settled
        wait_for 60 "both replicas online" replicas_online
        echo "failover $i: $old -> $(lab_master_port)" >&2
    done
    echo kill >&"${CL[1]}"
    old=$(lab_master_port)
    before=$(progress)
    # The master's PID, as it reports it (a process this script's lab started).
    pid=$(redis-cli -p "$old" INFO server | tr -d '\r' | sed -n 's/^process_id://p')
    kill -9 "$pid"
    wait_for 60 "a new master after the kill -9" master_moved "$old"
    wait_for 60 "the clients to go on after the kill -9" advanced "$before" || true
    echo stop >&"${CL[1]}"
    read -r -t 60 report <&"${CL[0]}" || report='{"error": "no report"}'
    echo "== $target"
    echo "$report" >"target/hitless-$target.json"
    "$PY" - "$report" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
for kind, v in r.items():
    shown = {f: x for f, x in v.items() if f not in ("first_errors", "lost_sample")}
    print(f"{kind:10} {json.dumps(shown)}")
PY
    cleanup
done
