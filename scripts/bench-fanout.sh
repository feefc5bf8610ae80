#!/usr/bin/env bash
# Fan-out and latency benchmarks (docs/benchmarks.md, "Fan-out and latency"): each run
# starts a fresh server on a free 127.0.0.1 port with a fresh data directory, runs one
# `switchyard bench`, and stops the server on every exit path.
# Usage: scripts/bench-fanout.sh SCENARIO STORE [RUNS]; prints one JSON report a run,
# with the server binary and store added.
#   fanout10     1 → 10, unpaced: --subscribers 10 --events 200000
#   fanout100    1 → 100, unpaced: --subscribers 100 --events 40000
#   steady       10,000 events/s → 10: --subscribers 10 --events 100000 --rate 10000 --batch 1
# STORE is `memory` or `sqlite`. SERVER_BIN is the server (default
# ./target/release/switchyard), GEN_BIN the load generator (default SERVER_BIN), so
# two servers can be compared under one generator. BENCH_EXTRA adds bench options.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:?scenario}
store=${2:?store: memory or sqlite}
runs=${3:-1}
server_bin=${SERVER_BIN:-./target/release/switchyard}
gen_bin=${GEN_BIN:-$server_bin}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

case "$scenario" in
    fanout10) args=(--subscribers 10 --events 200000) ;;
    fanout100) args=(--subscribers 100 --events 40000) ;;
    steady) args=(--subscribers 10 --events 100000 --rate 10000 --batch 1) ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac
case "$store" in
    memory) export SWITCHYARD_STORE__KIND=memory ;;
    sqlite) unset SWITCHYARD_STORE__KIND ;;
    *) echo "unknown store $store" >&2; exit 2 ;;
esac
export SWITCHYARD_LIMITS__PUBLISH_RATE_PER_SEC=10000000 RUST_LOG=warn

pid=
dir=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    if [ -n "$dir" ]; then rm -rf "$dir"; fi
    pid=
    dir=
}
trap cleanup EXIT INT TERM

for _ in $(seq "$runs"); do
    dir=$(mktemp -d)
    p=$(port)
    "$server_bin" serve --listen 127.0.0.1:"$p" --data-dir "$dir" &
    pid=$!
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$p/ready" >/dev/null 2>&1 && break
        sleep 0.05
    done
    # shellcheck disable=SC2086 # BENCH_EXTRA is a list of options
    report=$("$gen_bin" bench --json --url ws://127.0.0.1:"$p"/ws "${args[@]}" ${BENCH_EXTRA:-} || true)
    python3 -c 'import json,sys; r=json.loads(sys.argv[1] or "{}"); r["server_bin"]=sys.argv[2]; r["store"]=sys.argv[3]; print(json.dumps(r))' \
        "$report" "$server_bin" "$store"
    cleanup
done
