#!/usr/bin/env bash
# Side-by-side redis-benchmark on one local Sentinel lab: direct to the master, through
# sentinel-proxy (one thread, and one thread per CPU), through any EXTRA builds, and through
# HAProxy in tcp mode when the haproxy binary is installed. Every scenario runs against every
# target in turn, round after round (interleaved, so drift hits all alike); the report gives
# medians over the rounds:
#   - requests/s of SET and GET and their ratio to direct;
#   - for the -c 1 scenario, p50/p99 latency and what the target adds over direct;
#   - CPU seconds per million requests of the target process (redis-server itself for direct),
#     read from /proc;
#   - RSS per idle proxied connection with IDLE client connections open (benches/idle_conns.py),
#     and how many connections the target then holds on the master.
#
#   benches/compare.sh                        # ROUNDS=3 N=100000 IDLE=9900
#   ROUNDS=5 SCENARIOS="c50p16" benches/compare.sh
#   SCENARIOS=none IDLE=2000 benches/compare.sh   # idle memory only
#   EXTRA="old=/path/to/other/sentinel-proxy" benches/compare.sh   # another build side by side
#   TLS=1 benches/compare.sh                  # and the TLS rows (below)
#   ACK=1 benches/compare.sh                  # and durable acknowledgements (below)
#   SCENARIOS="db1 resp3 evalsha auth" benches/compare.sh   # what applications send (below)
#   SCENARIOS=apps benches/compare.sh         # all of them, at -P 1 and -P 16
#   TLS=1 SCENARIOS=k0 benches/compare.sh     # a new connection per request (-k 0): with TLS,
#                                             # a handshake each: a reconnect storm's rate
#
# The application profiles: db1 (--dbnum 1: every client sends SELECT 1 first), resp3 (-3: HELLO 3
# first), evalsha (a script loaded once, then EVALSHA of it: an INCR of a random key), auth (every
# client sends AUTH first: as an ACL user made on the master, `--user bench -a PASS`, which Redis
# checks as it checks a requirepass password); each also at -P 16 (db1p16, resp3p16, evalsha16,
# auth16). At the end the report gives, per proxy, the clients it pinned and the connections it
# lent, by reason (its /metrics): in pooled mode these profiles should pin nothing; and, with
# FANIN clients at once (default 1000; FANIN=0: not run), the most master connections pooled mode
# held in each profile.
#
# TLS=1 adds, with certificates made by openssl: direct-tls (redis-benchmark --tls to the
# master's own tls-port), tls-client (TLS client → proxy → plain master), tls-backend (plain
# client → proxy → the master's tls-port, learned from a sentinel with tls-replication) and
# tls-both; each 1:1 on one thread like `proxy`, and pooled (pooled-tls-client, …) like `pooled`;
# haproxy-tls and haproxy-tls-both (HAProxy terminating TLS); NAME-tls-client for each EXTRA
# build. Their ratios are to plain direct, as every row's. The idle-connection RSS is measured
# for the plain targets only.
#
# ACK=1 adds durable acknowledgements: pooled-ack (the proxy with `--ack replicas:1`, one thread,
# its default pool for acks), proxy-ack (the same 1:1, `--pool 0`: the group's barrier
# connection confirms the writes of every session, src/session/barrier.rs), and a client making its own writes durable, `SET` then `WAIT 1 0`
# for each (examples/setwait.rs, -c/-P as redis-benchmark's): setwait-direct to the master,
# setwait-proxy (1:1) and setwait-pooled through the proxies above, and setwait-plain (the same
# tool's SET alone, direct: its baseline). The setwait rows have SET only (their GET columns
# repeat it). Before each run the replicas catch up with the master, so no row waits out the
# replication of the one before.
#
# IDLE defaults to 9900, not 10000: a 1:1 proxy needs two descriptors per connection, and this
# machine's hard limit on open files is 20000. It is clamped to what the limit allows.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_redis_packages
ROUNDS=${ROUNDS:-3} N=${N:-100000} IDLE=${IDLE:-9900}
SCENARIOS=${SCENARIOS:-"c50p1 c50p16 c1 d1024"}
[ "$SCENARIOS" = apps ] && SCENARIOS="db1 db1p16 resp3 resp3p16 evalsha evalsha16 auth auth16"
FANIN=${FANIN:-1000}
BENCH_AUTH="--user bench -a bench-pw"
# SCENARIOS=none: only the idle-connection memory.
[ "$SCENARIOS" = none ] && SCENARIOS="" ROUNDS=0
declare -A ARGS=(
    [c50p1]="-c 50 -P 1"
    [c50p16]="-c 50 -P 16"
    [c1]="-c 1 -P 1"
    [d1024]="-c 50 -P 1 -d 1024"
    [db1]="-c 50 -P 1 --dbnum 1"
    [resp3]="-c 50 -P 1 -3"
    [evalsha]="-c 50 -P 1"
    [auth]="-c 50 -P 1 $BENCH_AUTH"
    [db1p16]="-c 50 -P 16 --dbnum 1"
    [resp3p16]="-c 50 -P 16 -3"
    [evalsha16]="-c 50 -P 16"
    [auth16]="-c 50 -P 16 $BENCH_AUTH"
    [k0]="-c 50 -P 1 -k 0"
)
# -c 1 is latency-bound: fewer requests keep it as long as the others.
declare -A REQS=([c50p1]=$N [c50p16]=$((N * 4)) [c1]=$((N / 4)) [d1024]=$N [db1]=$N [resp3]=$N
    [evalsha]=$N [auth]=$N [db1p16]=$((N * 4)) [resp3p16]=$((N * 4)) [evalsha16]=$((N * 4))
    [auth16]=$((N * 4)) [k0]=$((N / 10)))

ulimit -n "$(ulimit -Hn)"
max_idle=$(( ($(ulimit -n) - 100) / 2 ))
(( IDLE > max_idle )) && IDLE=$max_idle

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
redis-cli -p "$MASTER" config set maxclients $((IDLE + 200)) >/dev/null
# The auth profiles' user (ACL rules are the master's own: the profiles run on it alone).
redis-cli -p "$MASTER" ACL SETUSER bench on '>bench-pw' '~*' '&*' '+@all' >/dev/null

declare -A PORTS=([direct]=$MASTER)
# The admin (metrics) port of each proxy target.
declare -A ADMIN=()
# Extra redis-benchmark (and redis-cli) arguments of a target: TLS ones for the TLS client side.
declare -A BENCH=()
# The process whose CPU time is charged to each target (for direct: the master redis-server).
declare -A CPU_PID=([direct]=$(head -n 1 "$LAB_DIR/pids"))
NAMES=(direct)
BIN=target/release/sentinel-proxy
# `pooled` (--pool) shares master connections between clients (one thread, like a sidecar's
# clients, which all come from 127.0.0.1); `proxy` is 1:1 (`--pool 0`). EXTRA entries are name=path pairs;
# a path may carry flags joined with commas (old=/path/bin,--pool,2).
for spec in "proxy=$BIN --threads 1 --pool 0" "pooled=$BIN --threads 1 --pool 1" \
    "proxy-mt=$BIN --threads 0 --pool 0" ${EXTRA:-}; do
    name=${spec%%=*} cmd=${spec#*=} cmd=${cmd//,/ }
    port=$(free_port) admin=$(free_port)
    ADMIN[$name]=$admin
    # shellcheck disable=SC2086
    $cmd --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$admin" \
        --max-clients $((IDLE + 100)) --sentinels "$(lab_sentinel_list)" 2>"$LAB_DIR/$name.log" &
    PIDS+=($!)
    CPU_PID[$name]=$!
    wait_for 15 "$name" redis-cli -p "$port" ping
    PORTS[$name]=$port
    NAMES+=("$name")
done
if [ "${TLS:-0}" = 1 ]; then
    tls=$LAB_DIR/tls
    mkdir -p "$tls"
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout "$tls/ca.key" -out "$tls/ca.pem" -days 2 \
        -subj /CN=bench-ca 2>/dev/null
    openssl req "${ec[@]}" -keyout "$tls/node.key" -out "$tls/node.csr" -subj /CN=127.0.0.1 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$tls/ext"
    openssl x509 -req -in "$tls/node.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
        -CAcreateserial -out "$tls/node.pem" -days 2 -extfile "$tls/ext" 2>/dev/null
    # The master also listens on a TLS port (set at run time), which a fourth sentinel, with
    # tls-replication, monitors: through it the proxy learns the master's TLS address.
    MASTER_TLS=$(free_port)
    for kv in "tls-cert-file $tls/node.pem" "tls-key-file $tls/node.key" \
        "tls-ca-cert-file $tls/ca.pem" "tls-auth-clients no" "tls-port $MASTER_TLS"; do
        # shellcheck disable=SC2086
        redis-cli -p "$MASTER" CONFIG SET $kv >/dev/null
    done
    TLS_SENTINEL=$(free_port)
    cat >"$LAB_DIR/sentinel-tls.conf" <<CONF
port $TLS_SENTINEL
bind 127.0.0.1
daemonize no
dir $LAB_DIR
tls-cert-file $tls/node.pem
tls-key-file $tls/node.key
tls-ca-cert-file $tls/ca.pem
tls-replication yes
sentinel monitor mymaster 127.0.0.1 $MASTER_TLS 1
CONF
    redis-sentinel "$LAB_DIR/sentinel-tls.conf" </dev/null >"$LAB_DIR/sentinel-tls.log" 2>&1 &
    PIDS+=($!)
    TLS_CLI="--tls --cacert $tls/ca.pem"
    PORTS[direct-tls]=$MASTER_TLS
    CPU_PID[direct-tls]=${CPU_PID[direct]}
    BENCH[direct-tls]=$TLS_CLI
    NAMES+=(direct-tls)
    serve_tls="--tls-cert-file $tls/node.pem --tls-key-file $tls/node.key"
    backend_tls="--master-tls-ca-file $tls/ca.pem --sentinels 127.0.0.1:$TLS_SENTINEL"
    plain_sentinels="--sentinels $(lab_sentinel_list)"
    tls_specs=("tls-client|$BIN|$serve_tls $plain_sentinels --pool 0|$TLS_CLI"
        "tls-backend|$BIN|$backend_tls --pool 0|" "tls-both|$BIN|$serve_tls $backend_tls --pool 0|$TLS_CLI"
        "pooled-tls-client|$BIN|$serve_tls $plain_sentinels --pool 1|$TLS_CLI"
        "pooled-tls-backend|$BIN|$backend_tls --pool 1|"
        "pooled-tls-both|$BIN|$serve_tls $backend_tls --pool 1|$TLS_CLI")
    # An EXTRA build gets a TLS client row too (NAME-tls-client, with the flags its spec has).
    for spec in ${EXTRA:-}; do
        name=${spec%%=*} cmd=${spec#*=} cmd=${cmd//,/ }
        tls_specs+=("$name-tls-client|$cmd|$serve_tls $plain_sentinels|$TLS_CLI")
    done
    for spec in "${tls_specs[@]}"; do
        IFS='|' read -r name bin flags cli <<<"$spec"
        port=$(free_port)
        # shellcheck disable=SC2086
        $bin --threads 1 $flags --listen "127.0.0.1:$port" \
            --metrics-listen "127.0.0.1:$(free_port)" 2>"$LAB_DIR/$name.log" &
        PIDS+=($!)
        CPU_PID[$name]=$!
        # shellcheck disable=SC2086
        wait_for 20 "$name" redis-cli $cli -p "$port" set k v
        PORTS[$name]=$port
        BENCH[$name]=$cli
        NAMES+=("$name")
    done
fi
# HAProxy (Debian's) in tcp mode, one process per target (so each is charged its own CPU), with
# its defaults otherwise: plain, and with TLS=1 terminating TLS (`bind … ssl crt`) to the plain
# master (haproxy-tls) and to the master's TLS port too (haproxy-tls-both).
command -v haproxy >/dev/null 2>&1 || apt_install haproxy
haproxy_target() { # NAME BIND-OPTIONS SERVER-LINE REDIS-CLI-ARGS
    local name=$1 port
    port=$(free_port)
    printf 'global\n    maxconn %s\ndefaults\n    mode tcp\n    timeout connect 1s\n    timeout client 1h\n    timeout server 1h\nlisten redis\n    bind 127.0.0.1:%s %s\n    %s\n' \
        $((IDLE + 50)) "$port" "$2" "$3" >"$LAB_DIR/$name.cfg"
    haproxy -f "$LAB_DIR/$name.cfg" 2>"$LAB_DIR/$name.log" &
    PIDS+=($!)
    CPU_PID[$name]=$!
    # shellcheck disable=SC2086
    wait_for 10 "$name" redis-cli $4 -p "$port" ping
    PORTS[$name]=$port
    BENCH[$name]=$4
    NAMES+=("$name")
}
haproxy_target haproxy "" "server master 127.0.0.1:$MASTER" ""
if [ "${TLS:-0}" = 1 ]; then
    cat "$tls/node.pem" "$tls/node.key" >"$tls/haproxy.pem"
    haproxy_target haproxy-tls "ssl crt $tls/haproxy.pem" "server master 127.0.0.1:$MASTER" "$TLS_CLI"
    haproxy_target haproxy-tls-both "ssl crt $tls/haproxy.pem" \
        "server master 127.0.0.1:$MASTER_TLS ssl verify required ca-file $tls/ca.pem" "$TLS_CLI"
fi

# Durable acknowledgements (ACK=1, above).
declare -A TOOL=()
if [ "${ACK:-0}" = 1 ]; then
    cargo build --release --quiet --example setwait
    for row in "proxy-ack=--pool 0" "pooled-ack="; do
        name=${row%%=*} mode=${row#*=}
        port=$(free_port) admin=$(free_port)
        # shellcheck disable=SC2086
        $BIN --threads 1 --ack replicas:1 $mode --listen "127.0.0.1:$port" \
            --metrics-listen "127.0.0.1:$admin" --max-clients $((IDLE + 100)) \
            --sentinels "$(lab_sentinel_list)" 2>"$LAB_DIR/$name.log" &
        PIDS+=($!)
        CPU_PID[$name]=$!
        ADMIN[$name]=$admin
        wait_for 15 "$name" redis-cli -p "$port" set k v
        PORTS[$name]=$port
        NAMES+=("$name")
    done
    for row in "setwait-plain=direct" "setwait-direct=direct" "setwait-proxy=proxy" "setwait-pooled=pooled"; do
        name=${row%%=*} via=${row#*=}
        PORTS[$name]=${PORTS[$via]}
        CPU_PID[$name]=${CPU_PID[$via]}
        TOOL[$name]=target/release/examples/setwait
        NAMES+=("$name")
    done
fi
# Wait until both replicas have everything the master has (one connection: a write, then WAIT).
caught_up() {
    printf 'SET compare:caught-up 1\nWAIT 2 30000\n' | redis-cli -p "$MASTER" >/dev/null
}

# CPU ticks (user + system) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
# A CSV field of one test's line: field TEST COLUMN (2 rps, 5 p50 ms, 7 p99 ms).
field() { grep "^\"$1\"" | cut -d, -f"$2" | tr -d '"'; }

# The evalsha profile's script (loaded on the master; a failover is not expected here).
SHA=$(redis-cli -p "$MASTER" SCRIPT LOAD "return redis.call('INCR', KEYS[1])")
# What redis-benchmark runs in a scenario: SET and GET, or the profile's own command.
workload() {
    case $1 in
        evalsha*) echo "EVALSHA $SHA 1 evalsha:__rand_int__" ;;
        *) echo "-t set,get" ;;
    esac
}

declare -A R
for r in $(seq 1 "$ROUNDS"); do
    for sc in $SCENARIOS; do
        n=${REQS[$sc]}
        for name in "${NAMES[@]}"; do
            [ "${ACK:-0}" = 1 ] && caught_up
            before=$(cpu_ticks "${CPU_PID[$name]}") rbefore=$(cpu_ticks "${CPU_PID[direct]}")
            if [ -n "${TOOL[$name]:-}" ]; then
                [[ $name == setwait-plain ]] && plain=--plain || plain=
                # shellcheck disable=SC2086
                out=$("${TOOL[$name]}" "${PORTS[$name]}" -n "$n" ${ARGS[$sc]} $plain)
                out=$(sed 'p; s/^"SET"/"GET"/' <<<"$out")
            else
                # shellcheck disable=SC2086
                # shellcheck disable=SC2046
                out=$(redis-benchmark ${BENCH[$name]:-} -p "${PORTS[$name]}" -n "$n" ${ARGS[$sc]} \
                    --csv $(workload "$sc"))
            fi
            after=$(cpu_ticks "${CPU_PID[$name]}") rafter=$(cpu_ticks "${CPU_PID[direct]}")
            if [[ $sc == evalsha* ]]; then
                # One command: its line stands in the SET and GET columns alike.
                out=$(sed -n '2p' <<<"$out" | sed 's/^"[^"]*"/"SET"/; p; s/^"SET"/"GET"/')
            fi
            for t in SET GET; do
                R[$sc.$name.$t]+="$(field "$t" 2 <<<"$out") "
                R[$sc.$name.$t.p50]+="$(field "$t" 5 <<<"$out") "
                R[$sc.$name.$t.p99]+="$(field "$t" 7 <<<"$out") "
            done
            # CPU seconds per million requests (SET and GET together: 2 x n requests; a profile's
            # own command: n).
            reqs=$((2 * n))
            [[ $sc == evalsha* || -n ${TOOL[$name]:-} ]] && reqs=$n
            R[$sc.$name.cpu]+="$(awk "BEGIN{print ($after - $before) / $TICK / ($reqs / 1e6)}") "
            # And what Redis itself spent per request through this target.
            R[$sc.$name.rcpu]+="$(awk "BEGIN{print ($rafter - $rbefore) / $TICK / ($reqs / 1e6)}") "
        done
    done
    echo "round $r of $ROUNDS done" >&2
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m() { median <<<"${R[$1]}"; }
echo "# $(nproc) CPUs; redis $(redis-server --version | grep -o 'v=[^ ]*'); medians of $ROUNDS interleaved rounds"
for sc in $SCENARIOS; do
    echo
    echo "## $sc: redis-benchmark $(workload "$sc") -n ${REQS[$sc]} ${ARGS[$sc]}"
    printf '%-18s %10s %10s %7s %7s %10s %10s %16s %16s %16s\n' target SET/s GET/s SET/dir GET/dir "CPU s/M" \
        "Redis s/M" "GET p50/p99 us" "added p50/p99" "SET p50/p99 us"
    ds=$(m "$sc.direct.SET") dg=$(m "$sc.direct.GET")
    d50=$(m "$sc.direct.GET.p50") d99=$(m "$sc.direct.GET.p99")
    for name in "${NAMES[@]}"; do
        s=$(m "$sc.$name.SET") g=$(m "$sc.$name.GET")
        p50=$(m "$sc.$name.GET.p50") p99=$(m "$sc.$name.GET.p99")
        s50=$(m "$sc.$name.SET.p50") s99=$(m "$sc.$name.SET.p99")
        printf '%-18s %10.0f %10.0f %7.2f %7.2f %10.1f %10.1f %16s %16s %16s\n' "$name" "$s" "$g" \
            "$(awk "BEGIN{print $s/$ds}")" "$(awk "BEGIN{print $g/$dg}")" "$(m "$sc.$name.cpu")" \
            "$(m "$sc.$name.rcpu")" \
            "$(awk "BEGIN{printf \"%d/%d\", $p50*1000, $p99*1000}")" \
            "$(awk "BEGIN{printf \"%+d/%+d\", ($p50-$d50)*1000, ($p99-$d99)*1000}")" \
            "$(awk "BEGIN{printf \"%d/%d\", $s50*1000, $s99*1000}")"
    done
done

echo
echo "## Clients pinned and connections lent, per proxy (its /metrics, every scenario together)"
for name in "${NAMES[@]}"; do
    [ -n "${ADMIN[$name]:-}" ] || continue
    counts=$(curl -s "http://127.0.0.1:${ADMIN[$name]}/metrics" | {
        grep -E '^sentinel_proxy_(pinned_sessions_total|borrow_seconds_count)' |
        sed -E 's/^sentinel_proxy_pinned_sessions_total\{.*reason="([^"]*)".*\} /pinned:\1=/;
                s/^sentinel_proxy_borrow_seconds_count\{.*outcome="([^"]*)",reason="([^"]*)".*\} /lent:\2:\1=/' |
        tr '\n' ' '; } || true)
    printf '%-18s %s\n' "$name" "${counts:-none}"
done

if [ "$FANIN" -gt 0 ] && [ -n "${PORTS[pooled]:-}" ] && [ -n "$SCENARIOS" ]; then
    echo
    echo "## Pooled mode's master connections with $FANIN clients at once (the most in use, idle < 2 s, while redis-benchmark ran)"
    printf '%-10s %12s\n' profile connections
    for sc in c50p1 db1 resp3 evalsha auth; do
        # shellcheck disable=SC2046,SC2086
        redis-benchmark -p "${PORTS[pooled]}" -n $((FANIN * 100)) ${ARGS[$sc]/-c 50/-c $FANIN} \
            --csv $(workload "$sc") >/dev/null 2>&1 &
        bench=$!
        most=0
        while kill -0 "$bench" 2>/dev/null; do
            n=$(redis-cli -p "$MASTER" CLIENT LIST TYPE normal | grep -v ' cmd=client|list' |
                grep -v ' name=sentinel-[0-9a-f]' | grep -v ' name=sentinel-proxy-lag ' | grep -c ' idle=[01] ' || true)
            (( n > most )) && most=$n
            sleep 0.2
        done
        wait "$bench" || true
        printf '%-10s %12s\n' "$sc" "$most"
    done
fi

echo
echo "## RSS per idle proxied connection, $IDLE client connections open (each sent one PING)"
printf '%-10s %12s %12s %12s %14s\n' target "before KiB" "after KiB" "KiB/conn" "on the master"
for name in "${NAMES[@]}"; do
    [[ $name == direct || -n ${BENCH[$name]:-} || $name == *tls* || -n ${TOOL[$name]:-} ]] && continue
    read -r _ before after per onmaster < <(python3 benches/idle_conns.py "${PORTS[$name]}" \
        "${CPU_PID[$name]}" "$IDLE" "$MASTER")
    printf '%-10s %12s %12s %12s %14s\n' "$name" "$before" "$after" "$per" "$onmaster"
    # Let the target close the connections before the next one is measured.
    sleep 2
done
