"""Reconnect across a router restart (SIGKILL, then the same port and data directory):
publishes in flight are resent and stored once, a live subscription with mixed
priorities resumes without a gap or a repeat, a durable one loses nothing."""
import asyncio
import collections
import unittest

import server

from switchyard import Backoff, Client

N = 400
PRIORITIES = ["low", "normal", "critical", "high", "low"]
WAIT = 20.0


class RestartTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        server.quiet_loop()
        self.server = server.Server()

    async def asyncTearDown(self):
        self.server.stop()

    def client(self, **kw):
        return Client(self.server.url, backoff=Backoff(initial=0.05, max=0.3),
                      request_timeout=WAIT, **kw)

    async def test_restart_loses_and_duplicates_nothing(self):
        async with self.client(window=16) as pub, self.client() as live, self.client() as work:
            watch = await live.subscribe(patterns=["r.>"])
            durable = await work.subscribe(patterns=["r.>"], durable="restart-worker")
            seen_live, seen_durable = [], []

            async def follow(sub, into, ack):
                async for event in sub:
                    into.append(event.id)
                    if ack:
                        await event.ack()

            followers = [asyncio.ensure_future(follow(watch, seen_live, False)),
                         asyncio.ensure_future(follow(durable, seen_durable, True))]
            loop = asyncio.get_running_loop()
            futures = []
            for n in range(N):
                event = {"topic": f"r.step{n % 3}", "priority": PRIORITIES[n % len(PRIORITIES)],
                         "payload": {"n": n}}
                futures.append(await pub.submit(event))
                if n == N // 2:
                    # Crash mid-stream, while publishes are in flight; the clients
                    # keep running (and retrying) meanwhile.
                    await loop.run_in_executor(None, self.server.restart)
            results = await asyncio.wait_for(asyncio.gather(*futures), WAIT)
            ids = [r.event_id for r in results]
            self.assertEqual(len(set(ids)), N)
            cursors = collections.Counter(r.cursor for r in results)
            self.assertEqual(max(cursors.values()), 1, "two events share a cursor")

            async def until_all(seen):
                while not set(ids) <= set(seen):
                    await asyncio.sleep(0.05)
            await asyncio.wait_for(until_all(seen_live), WAIT)
            await asyncio.wait_for(until_all(seen_durable), WAIT)
            self.assertEqual(sorted(seen_live), sorted(ids), "live: lost or repeated events")
            # Durable delivery is at least once: an ack in flight at the crash may come back.
            self.assertEqual(set(seen_durable), set(ids))
            self.assertLessEqual(len(seen_durable) - N, 16 + 100)
            for f in followers:
                f.cancel()
            # Every client really lost its connection and came back.
            self.assertEqual([c.connections for c in (pub, live, work)], [2, 2, 2])


if __name__ == "__main__":
    unittest.main()
