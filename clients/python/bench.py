#!/usr/bin/env python3
"""Publish throughput of the Python client: `--events` single publishes pipelined through
the window (`submit`), against a running router, median of `--runs`.

    python3 clients/python/bench.py --url ws://127.0.0.1:9090/ws --window 64
"""
import argparse
import asyncio
import statistics
import sys
import os
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from switchyard import Client  # noqa: E402


async def run(url: str, window: int, events: int, batch: int) -> float:
    async with Client(url, window=window) as client:
        pad = "x" * 256
        start = time.perf_counter()
        futures = []
        if batch <= 1:
            for n in range(events):
                futures.append(await client.submit({"topic": "bench.py", "payload": {"n": n, "pad": pad}}))
        else:
            for n in range(0, events, batch):
                futures.append(await client.submit_batch(
                    [{"topic": "bench.py", "payload": {"n": n + i, "pad": pad}} for i in range(batch)]))
        await asyncio.gather(*futures)
        return events / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="ws://127.0.0.1:9090/ws")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rates = [asyncio.run(run(args.url, args.window, args.events, args.batch)) for _ in range(args.runs)]
    print(f"window {args.window} batch {args.batch}: median {statistics.median(rates):,.0f} events/s "
          f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})")


if __name__ == "__main__":
    main()
