#!/usr/bin/env python3
"""An agent publishing its task lifecycle: agent.started, then per task task.created,
a few task.progress, task.completed (or task.failed, high priority), then agent.stopped.

    pip install ./clients/python
    cargo run --release -- serve
    python3 examples/python/monitor.py          # in another terminal
    python3 examples/python/agent.py --tasks 3

The client reconnects by itself if the router restarts meanwhile; every event carries
an id, so a publish resent after a reconnect is not stored twice.
"""
import argparse
import asyncio
import os
import random

from switchyard import Client


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="ws://127.0.0.1:9090/ws", help="comma-separated node URLs")
    ap.add_argument("--token", default=os.environ.get("SWITCHYARD_TOKEN"))
    ap.add_argument("--agent-id", default="agent-7")
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--step-ms", type=int, default=200)
    args = ap.parse_args()
    agent, step = args.agent_id, args.step_ms / 1000

    async with Client(args.url.split(","), token=args.token, max_attempts=5) as client:
        await client.publish({"topic": "agent.started", "source": agent, "agent_id": agent})
        for n in range(1, args.tasks + 1):
            task = f"{agent}-task-{n}"
            ids = {"source": agent, "agent_id": agent, "task_id": task}
            await client.publish({"topic": "task.created", **ids})
            for pct in (25, 50, 75):
                await asyncio.sleep(step)
                await client.publish({"topic": "task.progress", "priority": "low", **ids,
                                      "payload": {"percent": pct}})
            if random.random() < 0.2:
                done = await client.publish({"topic": "task.failed", "priority": "high", **ids,
                                             "payload": {"reason": "tool error"}})
            else:
                done = await client.publish({"topic": "task.completed", **ids})
            print(f"{task}: cursor {done.cursor}")
        await client.publish({"topic": "agent.stopped", "source": agent, "agent_id": agent})


if __name__ == "__main__":
    asyncio.run(main())
