#!/usr/bin/env bash
# Side-by-side redis-benchmark: direct to the master, through sentinel-proxy and (when the
# haproxy binary is installed) through HAProxy in tcp mode, interleaved over ROUNDS rounds on
# one lab. Prints the median requests/s of each, the ratio to direct, and the CPU seconds the
# target process (redis-server itself for direct) spent per million requests.
#
#   benches/compare.sh                  # ROUNDS=3 N=100000 C=50 P=1
#   ROUNDS=5 P=16 benches/compare.sh
#   EXTRA="raw=/path/to/other/sentinel-proxy" benches/compare.sh   # another build side by side
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_redis_packages
ROUNDS=${ROUNDS:-3} N=${N:-100000} C=${C:-50} P=${P:-1} D=${D:-3}

cargo build --release --quiet
LAB_DIR=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    lab_stop
    rm -rf "$LAB_DIR"
}
trap cleanup EXIT
lab_start
MASTER=$(lab_master_port)

declare -A PORTS=([direct]=$MASTER)
# The process whose CPU time is charged to each target (for direct: the master redis-server).
declare -A CPU_PID=([direct]=$(head -n 1 "$LAB_DIR/pids"))
NAMES=(direct)
for spec in "proxy=target/release/sentinel-proxy" ${EXTRA:-}; do
    name=${spec%%=*} bin=${spec#*=}
    port=$(free_port)
    "$bin" --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$(free_port)" \
        --sentinels "$(lab_sentinel_list)" 2>"$LAB_DIR/$name.log" &
    PIDS+=($!)
    CPU_PID[$name]=$!
    wait_for 15 "$name" redis-cli -p "$port" ping
    PORTS[$name]=$port
    NAMES+=("$name")
done
if command -v haproxy >/dev/null 2>&1; then
    HA=$(free_port)
    cat >"$LAB_DIR/haproxy.cfg" <<CFG
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 1s
    timeout client 1h
    timeout server 1h
listen redis
    bind 127.0.0.1:$HA
    server master 127.0.0.1:$MASTER
CFG
    haproxy -f "$LAB_DIR/haproxy.cfg" &
    PIDS+=($!)
    CPU_PID[haproxy]=$!
    wait_for 10 "haproxy" redis-cli -p "$HA" ping
    PORTS[haproxy]=$HA
    NAMES+=(haproxy)
fi

# CPU ticks (user + system) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

declare -A RESULTS CPU
for r in $(seq 1 "$ROUNDS"); do
    for name in "${NAMES[@]}"; do
        before=$(cpu_ticks "${CPU_PID[$name]}")
        out=$(redis-benchmark -p "${PORTS[$name]}" -t set,get -n "$N" -c "$C" -P "$P" -d "$D" -q | tr '\r' '\n' | grep "per second")
        for t in SET GET; do
            rps=$(grep "^$t:" <<<"$out" | awk '{print $2}')
            RESULTS[$name.$t]+="$rps "
        done
        # CPU seconds per million requests (SET and GET together: 2 x N requests).
        CPU[$name]+="$(awk "BEGIN{print ($(cpu_ticks "${CPU_PID[$name]}") - $before) / $TICK / (2 * $N / 1e6)}") "
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "redis-benchmark -t set,get -n $N -c $C -P $P -d $D, median of $ROUNDS interleaved rounds"
printf '%-8s %12s %12s %8s %8s %14s\n' target SET/s GET/s SET/dir GET/dir "CPU s/M req"
for t in SET GET; do declare "direct_$t=$(median <<<"${RESULTS[direct.$t]}")"; done
for name in "${NAMES[@]}"; do
    s=$(median <<<"${RESULTS[$name.SET]}"); g=$(median <<<"${RESULTS[$name.GET]}")
    printf '%-8s %12.0f %12.0f %8.2f %8.2f %14.1f\n' "$name" "$s" "$g" \
        "$(awk "BEGIN{print $s/$direct_SET}")" "$(awk "BEGIN{print $g/$direct_GET}")" \
        "$(median <<<"${CPU[$name]}")"
done
