"""Starts the real `switchyard` binary for the tests: a free port, a temporary data
directory, stopped (or killed) by the test. The binary is $SWITCHYARD_BINARY, else
target/debug/switchyard of this repository (build it with `cargo build --bin switchyard`).
"""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
# The tests run against this checkout's package, installed or not.
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..")))

BINARY = os.environ.get("SWITCHYARD_BINARY") or os.path.join(REPO, "target", "debug", "switchyard")
LISTENING = re.compile(r"switchyard listening on https?://127\.0\.0\.1:(\d+)")


class Server:
    """One router process. `restart()` starts it again on the same port and data dir."""

    def __init__(self, env: Optional[Dict[str, str]] = None) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="switchyard-py-")
        self.env = dict(os.environ, RUST_LOG="info", **(env or {}))
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> None:
        lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.proc = subprocess.Popen(
            [BINARY, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.dir.name],
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        stderr = self.proc.stderr
        assert stderr is not None

        def drain() -> None:  # keep reading so the server never blocks on a full pipe
            for line in stderr:
                lines.put(line)
            lines.put(None)
        self.drain = threading.Thread(target=drain, daemon=True)
        self.drain.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError("switchyard exited before listening")
            m = LISTENING.search(line)
            if m:
                self.port = int(m.group(1))
                return
        self.kill()
        raise RuntimeError("switchyard did not listen within 30 s")

    def kill(self) -> None:
        """SIGKILL: no shutdown sequence, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reap()

    def _reap(self) -> None:
        if self.proc is not None and self.proc.stderr is not None and self.proc.poll() is not None:
            self.drain.join(5)
            self.proc.stderr.close()

    def restart(self) -> None:
        self.kill()
        # The port was just freed; another process could take it, but not on a test box.
        for _ in range(50):
            try:
                self.start()
                return
            except RuntimeError:
                time.sleep(0.1)
        raise RuntimeError(f"could not restart on port {self.port}")

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reap()
        self.dir.cleanup()


def quiet_loop() -> None:
    """IsolatedAsyncioTestCase runs the loop in debug mode, which logs every callback
    over 0.1 s; on a shared, busy test machine that is noise, not a finding."""
    import asyncio
    asyncio.get_running_loop().slow_callback_duration = 2.0
