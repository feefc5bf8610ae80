#!/usr/bin/env python3
"""A monitor: follows task.> and agent.> (or --patterns), one line per event, highest
priority first, across router restarts without missing or repeating an event.

    python3 examples/python/monitor.py --patterns 'task.>,agent.>' --min-priority normal

With --durable NAME it acknowledges each event and, started again with the same name,
first gets what arrived while it was away.
"""
import argparse
import asyncio
import os

from switchyard import Client, Dropped, Event, Gap, ReplayComplete

COLOURS = {"critical": "\033[1;31m", "high": "\033[33m", "normal": "", "low": "\033[2m"}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="ws://127.0.0.1:9090/ws", help="comma-separated node URLs")
    ap.add_argument("--token", default=os.environ.get("SWITCHYARD_TOKEN"))
    ap.add_argument("--patterns", default="task.>,agent.>")
    ap.add_argument("--min-priority", choices=list(COLOURS), default="low")
    ap.add_argument("--condition", help='a CEL condition, e.g. \'payload.percent > 50\'')
    ap.add_argument("--durable", help="a durable subscription name")
    args = ap.parse_args()

    async with Client(args.url.split(","), token=args.token) as client:
        sub = await client.subscribe(
            patterns=args.patterns.split(","), filter={"min_priority": args.min_priority},
            condition=args.condition, durable=args.durable, notices=True)
        async for item in sub:
            if isinstance(item, Event):
                colour = COLOURS.get(item.priority, "")
                print(f"{colour}{item.priority:8} {item.topic:16} #{item.cursor} "
                      f"{item['source']} {item.payload}\033[0m", flush=True)
                if sub.uses_acks:
                    await item.ack()
            elif isinstance(item, ReplayComplete):
                print(f"-- live from here (log at #{item.last_cursor})", flush=True)
            elif isinstance(item, Dropped):
                print(f"-- the router dropped {item.count} events: this monitor is too slow")
            elif isinstance(item, Gap):
                print(f"-- cursors {item.from_cursor}..{item.to_cursor} lost to retention")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
