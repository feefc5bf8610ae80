#!/usr/bin/env python3
"""CPU contention for benchmarks: stands in for a machine busy with other work.

    python3 scripts/cpu_noise.py SECONDS [PROCESSES]

PROCESSES (default 2, one per core of the benchmark machine) each spin for 5-20 ms every
20-100 ms, at the same priority as everything else, then stop by themselves after
SECONDS (at most 600). Touches no network and no file. Used for scenario 4 in
docs/benchmarks.md: start it, then `switchyard bench` at once.
"""
import multiprocessing
import random
import sys
import time


def burn(seconds: float, seed: int) -> None:
    rng = random.Random(seed)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(rng.uniform(0.02, 0.1))
        stop = time.monotonic() + rng.uniform(0.005, 0.02)
        while time.monotonic() < stop:
            pass


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    seconds = min(float(sys.argv[1]), 600.0)
    processes = int(sys.argv[2]) if len(sys.argv) == 3 else 2
    workers = [
        multiprocessing.Process(target=burn, args=(seconds, i)) for i in range(processes)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


if __name__ == "__main__":
    main()
