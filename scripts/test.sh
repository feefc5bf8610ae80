#!/usr/bin/env bash
# The one test command (see README): installs what the suite needs when it is absent,
# then runs every test. Servers the tests use are started and stopped by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Python + websockets, for the conformance run of docs/protocol.md's literal frames.
if ! command -v python3 >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3 python3-websockets
fi
if ! python3 -c 'import websockets' >/dev/null 2>&1; then
    python3 -m pip install --quiet 'websockets>=12' 2>/dev/null \
        || { apt-get update -qq && apt-get install -y -qq python3-websockets; }
fi

# Headless Chromium and chromedriver, for the dashboard's browser tests (tests/dashboard.rs
# finds the driver through SWITCHYARD_CHROMEDRIVER, default /usr/bin/chromedriver).
if [ -z "${SWITCHYARD_CHROMEDRIVER:-}" ] && [ ! -x /usr/bin/chromedriver ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq chromium chromium-driver
fi

# redis-server, for cluster mode (tests/cluster.rs and the store contract suite start
# their own servers on free ports, in temporary directories).
if ! command -v redis-server >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq redis-server
fi

# Node.js, for the TypeScript client's suite (clients/js): 20 or newer, from Debian.
if ! command -v node >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq nodejs
fi

cargo test --all-targets
cargo build --quiet --bin switchyard
python3 tests/python/protocol_conformance.py --binary target/debug/switchyard
# The Python client (clients/python) against the same binary: its own servers, free ports.
python3 -m unittest discover -s clients/python/tests
# Node 22 has a global WebSocket, Node 20 behind --experimental-websocket; Debian's
# Node 18 has none, so the suite uses Debian's node-ws package there.
has_ws='process.exit(typeof WebSocket === "function" ? 0 : 1)'
node_flags=()
if node --experimental-websocket -e "$has_ws" >/dev/null 2>&1; then
    node_flags=(--experimental-websocket)
elif ! node -e "$has_ws" && ! node -e 'require("ws")' >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq node-ws
fi
SWITCHYARD_BIN="$PWD/target/debug/switchyard" \
    node "${node_flags[@]}" --test clients/js/test/*.test.js
