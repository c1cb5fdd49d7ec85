#!/usr/bin/env bash
# Connections per second with AUTH, through the proxy's own client authentication
# (`--users-file`): redis-benchmark with `-k 0` opens a new connection for every request and
# sends `AUTH` on each. Every target runs in turn, round after round (interleaved); the report
# gives the median requests/s (each one a connect, an AUTH and a PING) and the proxy's CPU
# seconds per thousand connections.
#
#   benches/auth_connect.sh                              # this build
#   BINS="before=/path/to/old/sentinel-proxy after=target/release/sentinel-proxy" \
#       benches/auth_connect.sh                          # two builds side by side
#   ROUNDS=5 N=2000 C=10 benches/auth_connect.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_redis_packages
ROUNDS=${ROUNDS:-3} N=${N:-2000} C=${C:-10}
cargo build --release --quiet
BINS=${BINS:-"proxy=target/release/sentinel-proxy"}

LAB_DIR=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    lab_stop
    rm -rf "$LAB_DIR"
}
trap cleanup EXIT
lab_start
PW=bench-secret-pw
printf 'app:%s\n' "$(printf %s "$PW" | target/release/sentinel-proxy hash-password)" \
    >"$LAB_DIR/users"

declare -A PORTS=() PID=()
NAMES=()
for spec in $BINS; do
    name=${spec%%=*} bin=${spec#*=}
    port=$(free_port)
    "$bin" --threads 1 --users-file "$LAB_DIR/users" --listen "127.0.0.1:$port" \
        --metrics-listen "127.0.0.1:$(free_port)" --sentinels "$(lab_sentinel_list)" \
        2>"$LAB_DIR/$name.log" &
    PIDS+=($!)
    PID[$name]=$!
    wait_for 15 "$name" redis-cli -p "$port" --user app --pass "$PW" --no-auth-warning ping
    PORTS[$name]=$port
    NAMES+=("$name")
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
declare -A RPS=() CPU=()
for r in $(seq 1 "$ROUNDS"); do
    for name in "${NAMES[@]}"; do
        before=$(cpu_ticks "${PID[$name]}")
        out=$(redis-benchmark -p "${PORTS[$name]}" --user app -a "$PW" -k 0 -c "$C" -n "$N" \
            -t ping_mbulk --csv 2>/dev/null)
        after=$(cpu_ticks "${PID[$name]}")
        RPS[$name]+="$(grep '^"PING_MBULK"' <<<"$out" | cut -d, -f2 | tr -d '"') "
        CPU[$name]+="$(awk "BEGIN{print ($after - $before) / $TICK / ($N / 1000)}") "
    done
    echo "round $r of $ROUNDS done" >&2
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "# $(nproc) CPUs; medians of $ROUNDS interleaved rounds; redis-benchmark -k 0 -c $C -n $N"
printf '%-10s %16s %22s\n' target "connections/s" "proxy CPU s per 1000"
for name in "${NAMES[@]}"; do
    printf '%-10s %16.0f %22.3f\n' "$name" "$(median <<<"${RPS[$name]}")" \
        "$(median <<<"${CPU[$name]}")"
done
