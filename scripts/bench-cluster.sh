#!/usr/bin/env bash
# Cluster-mode benchmarks (docs/benchmarks.md, "Cluster mode"): each run starts a fresh
# redis-server and fresh nodes on 127.0.0.1, runs one `switchyard bench`, and stops
# them. Usage: scripts/bench-cluster.sh SCENARIO [RUNS]; prints one JSON report a run.
# BENCH_EXTRA adds `switchyard bench` options (e.g. BENCH_EXTRA="--window 32").
#   ingest-redis     one node on Redis (appendfsync everysec), no subscribers
#   ingest-redis-always  the same with appendfsync always
#   ingest-sqlite    one node on SQLite (store.synchronous_full), for the ratio
#   steady-2node     10,000 events/s published on node A, 10 subscribers on node B
#   steady-1node     the same with everything on one Redis-backed node
#   steady-sqlite    the same on one SQLite node
#   flood-2node      a low flood through A, 100 critical/s through B, subscribers on B
#   flood-sqlite     the same on one SQLite node
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:?scenario}
runs=${2:-3}
bin=${SWITCHYARD_BIN:-./target/release/switchyard}
[ -x "$bin" ] || cargo build --release --bin switchyard
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run_once() {
    local dir redis_port a_port b_port fsync=everysec pids=()
    dir=$(mktemp -d)
    redis_port=$(port); a_port=$(port); b_port=$(port)
    [ "$scenario" = ingest-redis-always ] && fsync=always
    export SWITCHYARD_LIMITS__PUBLISH_RATE_PER_SEC=10000000 RUST_LOG=warn
    if [[ "$scenario" == *-sqlite ]]; then
        "$bin" serve --listen 127.0.0.1:$a_port --data-dir "$dir/a" & pids+=($!)
    else
        redis-server --port $redis_port --bind 127.0.0.1 --dir "$dir" --save '' \
            --appendonly yes --appendfsync $fsync --daemonize no --loglevel warning &
        pids+=($!)
        until redis-cli -p $redis_port ping >/dev/null 2>&1; do sleep 0.05; done
        export SWITCHYARD_STORE__KIND=redis SWITCHYARD_STORE__REDIS_URL=redis://127.0.0.1:$redis_port/0
        SWITCHYARD_CLUSTER__NODE_NAME=a "$bin" serve --listen 127.0.0.1:$a_port & pids+=($!)
        if [[ "$scenario" == *2node ]]; then
            SWITCHYARD_CLUSTER__NODE_NAME=b "$bin" serve --listen 127.0.0.1:$b_port & pids+=($!)
        fi
    fi
    sleep 1
    local a=ws://127.0.0.1:$a_port/ws b=ws://127.0.0.1:$b_port/ws
    case "$scenario" in
        ingest-*) args=(--url $a --subscribers 0 --events 300000 --window 32) ;;
        steady-2node) args=(--url $a --subscribe-url $b --subscribers 10 --events 100000 --rate 10000 --batch 1) ;;
        steady-1node|steady-sqlite) args=(--url $a --subscribers 10 --events 100000 --rate 10000 --batch 1) ;;
        flood-2node) args=(--url $a --subscribe-url $b --critical-url $b --subscribers 10 \
            --duration-secs 10 --events 0 --priorities low=1 --critical-rate 100) ;;
        flood-sqlite) args=(--url $a --subscribers 10 \
            --duration-secs 10 --events 0 --priorities low=1 --critical-rate 100) ;;
        *) echo "unknown scenario $scenario" >&2; exit 2 ;;
    esac
    # shellcheck disable=SC2086 # BENCH_EXTRA is a list of options
    "$bin" bench --json "${args[@]}" ${BENCH_EXTRA:-} || true
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$dir"
}

for _ in $(seq "$runs"); do run_once; done
