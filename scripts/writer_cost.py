#!/usr/bin/env python3
"""What SQLite change capture (`[[sources]] kind = "sqlite"`) costs the program that
writes the table: single-row transactions per second, alternating three cases per
round (no triggers; the source's triggers with the router stopped; the router
running and draining), for each of two writer configurations.

    cargo build --release
    python3 scripts/writer_cost.py target/release/switchyard [rounds]

Prints one line per configuration: medians over the rounds, and the cost per change
in microseconds. Everything runs on 127.0.0.1 in a temp directory and stops itself.
"""
import json, os, socket, sqlite3, statistics, subprocess, sys, tempfile, time, urllib.request

ROWS = 400  # per run: 400 inserts and 400 updates, one transaction each
CONFIGS = [  # (label, journal_mode, synchronous)
    ("WAL, synchronous=NORMAL", "WAL", "NORMAL"),
    ("WAL, synchronous=FULL (SQLite's default synchronous)", "WAL", "FULL"),
]  # no rollback-journal case: the source puts the database in WAL mode
CREATE = "CREATE TABLE tasks (id TEXT PRIMARY KEY, status TEXT, agent_id TEXT, title TEXT)"


def writer(db, journal, sync, tag):
    c = sqlite3.connect(db, timeout=10, isolation_level=None)
    c.execute(f"PRAGMA journal_mode={journal}")
    c.execute(f"PRAGMA synchronous={sync}")
    t = time.perf_counter()
    for i in range(ROWS):
        c.execute("INSERT INTO tasks VALUES (?, 'new', 'a', 't')", (f"{tag}-{i}",))
        c.execute("UPDATE tasks SET status = 'done' WHERE id = ?", (f"{tag}-{i}",))
    rate = 2 * ROWS / (time.perf_counter() - t)
    c.close()
    return rate


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
        return json.load(r)


class Router:
    """`switchyard serve` with one SQLite source on `db`."""

    def __init__(self, binary, db, work):
        self.binary, self.db, self.work = binary, db, work

    def start(self):
        self.port = free_port()
        cfg = os.path.join(self.work, "router.toml")
        with open(cfg, "w") as f:
            f.write(f'[[sources]]\nkind = "sqlite"\npath = "{self.db}"\ntable = "tasks"\n'
                    f'key = "id"\ntopic = "task"\nstatus_column = "status"\n')
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--config", cfg,
             "--data-dir", os.path.join(self.work, "data")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                if get(self.port, "/api/sources")["sources"][0]["state"] == "running":
                    return
            except Exception:
                pass
            time.sleep(0.1)
        raise SystemExit("the router's source did not start")

    def settle(self):
        """Waits until the source has drained its outbox."""
        for _ in range(200):
            if get(self.port, "/api/sources")["sources"][0].get("lag", 0) == 0:
                return
            time.sleep(0.05)

    def stop(self):
        """Stops the router if it runs (again: a no-op)."""
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main():
    binary = os.path.abspath(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    for label, journal, sync in CONFIGS:
        with tempfile.TemporaryDirectory() as work:
            plain, watched = os.path.join(work, "plain.db"), os.path.join(work, "watched.db")
            for db in (plain, watched):
                sqlite3.connect(db).execute(CREATE)
            router = Router(binary, watched, work)
            none, triggers, running = [], [], []
            try:
                router.start()  # installs the triggers
                router.settle()
                router.stop()
                for r in range(rounds):
                    none.append(writer(plain, journal, sync, f"n{r}"))
                    triggers.append(writer(watched, journal, sync, f"t{r}"))
                    router.start()
                    running.append(writer(watched, journal, sync, f"r{r}"))
                    router.settle()
                    router.stop()
            finally:
                router.stop()
        m = [statistics.median(x) for x in (none, triggers, running)]
        cost = [(1e6 / m[i] - 1e6 / m[0]) for i in (1, 2)]
        print(f"{label}: tx/s none {m[0]:,.0f} | triggers {m[1]:,.0f} ({m[1] / m[0]:.2f}x, "
              f"+{cost[0]:.0f} us/change) | router running {m[2]:,.0f} ({m[2] / m[0]:.2f}x, "
              f"+{cost[1]:.0f} us/change)", flush=True)


if __name__ == "__main__":
    main()
