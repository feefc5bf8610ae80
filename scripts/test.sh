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

cargo test --all-targets
cargo build --quiet --bin switchyard
python3 tests/python/protocol_conformance.py --binary target/debug/switchyard
# The Python client (clients/python) against the same binary: its own servers, free ports.
python3 -m unittest discover -s clients/python/tests
