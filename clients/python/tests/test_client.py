"""The client against a real router (one shared server; each test uses its own topics):
publish and subscribe, filters, conditions, acks and redelivery, durable resume, typed
errors, several URLs, and the publish window's back-pressure."""
import asyncio
import socket
import unittest
import uuid

import server
from proxy import Proxy

from switchyard import (Backoff, Client, InvalidCondition, InvalidEvent, InvalidPattern,
                        InvalidSubscription, Published, ReplayComplete, UnknownEvent,
                        UnknownSubscription)

SERVER: "server.Server" = None  # type: ignore[assignment]  # set by setUpModule
WAIT = 10.0
FAST = Backoff(initial=0.05, max=0.5)


def setUpModule():
    global SERVER
    SERVER = server.Server()


def tearDownModule():
    SERVER.stop()


def prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


async def collect(sub, until_id, limit=WAIT):
    """Events up to and including the one with id `until_id`."""
    got = []
    while True:
        event = await sub.next_event(limit)
        got.append(event)
        if event.id == until_id:
            return got


class ClientTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        server.quiet_loop()
        self.client = await Client(SERVER.url, request_timeout=WAIT, backoff=FAST).connect()
        self.p = prefix()

    async def asyncTearDown(self):
        await self.client.close()

    async def test_publish_subscribe_and_batch(self):
        sub = await self.client.subscribe(patterns=[f"{self.p}.>"], notices=True)
        self.assertIsInstance(await asyncio.wait_for(sub.__anext__(), WAIT), ReplayComplete)
        one = await self.client.publish({"topic": f"{self.p}.created", "priority": "high",
                                         "payload": {"task_id": "t-1"}})
        self.assertIsInstance(one, Published)
        self.assertFalse(one.duplicate)
        results = await self.client.publish_batch([
            {"topic": f"{self.p}.a"}, {"topic": f"{self.p}.b", "priority": "urgent"},
            {"id": one.event_id, "topic": f"{self.p}.created"}])
        self.assertIsInstance(results[0], Published)
        self.assertIsInstance(results[1], InvalidEvent)
        self.assertIn("priority", results[1].message)
        self.assertEqual(results[2], Published(one.event_id, one.cursor, True))
        got = await collect(sub, results[0].event_id)
        self.assertEqual([e.id for e in got], [one.event_id, results[0].event_id])
        first = got[0]
        self.assertEqual((first.topic, first.priority, first.payload, first.cursor, first.attempt),
                         (f"{self.p}.created", "high", {"task_id": "t-1"}, one.cursor, 1))
        self.assertEqual(first["task_id"], "t-1")  # derived from the payload

    async def test_filters(self):
        sub = await self.client.subscribe(
            patterns=[f"{self.p}.>"], filter={"min_priority": "high", "agent_ids": ["a-7"]})
        events = [("critical", "a-7"), ("low", "a-7"), ("high", "a-8"), ("high", "a-7")]
        ids = [(await self.client.publish({"topic": f"{self.p}.x", "priority": prio,
                                           "agent_id": agent})).event_id for prio, agent in events]
        got = await collect(sub, ids[3])
        self.assertEqual([e.id for e in got], [ids[0], ids[3]])

    async def test_conditions(self):
        sub = await self.client.subscribe(
            patterns=[f"{self.p}.>"], condition="has(payload.cost) && payload.cost > 5.0")
        costs = [7.5, 1.0, None, 6]
        ids = []
        for cost in costs:
            payload = {} if cost is None else {"cost": cost}
            ids.append((await self.client.publish({"topic": f"{self.p}.cost", "payload": payload})).event_id)
        got = await collect(sub, ids[3])
        self.assertEqual([e.id for e in got], [ids[0], ids[3]])
        with self.assertRaises(InvalidCondition) as refused:
            await self.client.subscribe(patterns=[f"{self.p}.>"], condition="payload.cost >")
        self.assertIn("line 1", refused.exception.message)

    async def test_errors_are_typed(self):
        with self.assertRaises(InvalidEvent) as e:
            await self.client.publish({"topic": f"{self.p}.x", "colour": "red"})
        self.assertEqual(e.exception.code, "invalid_event")
        with self.assertRaises(InvalidPattern):
            await self.client.subscribe(patterns=["task..x"])
        with self.assertRaises(InvalidSubscription):
            await self.client.subscribe(patterns=[f"{self.p}.>"], max_in_flight=0, ack=True)
        with self.assertRaises(UnknownSubscription):
            await self.client.unsubscribe("no-such-subscription")
        plain = await self.client.subscribe(patterns=[f"{self.p}.>"])
        with self.assertRaises(InvalidSubscription):  # acks on a subscription without them
            await plain.ack("e-1", confirm=True)
        acked = await self.client.subscribe(patterns=[f"{self.p}.>"], ack=True)
        with self.assertRaises(UnknownEvent):
            await acked.ack("never-delivered", confirm=True)
        # The connection survived every refusal.
        self.assertTrue(await self.client.ping())

    async def test_acks_redelivery_and_dead_letters(self):
        dead = await self.client.subscribe(patterns=["switchyard.dead_letter"])
        sub = await self.client.subscribe(patterns=[f"{self.p}.>"], ack=True,
                                          ack_timeout_ms=1000, max_attempts=5)
        first = await self.client.publish({"topic": f"{self.p}.job"})
        event = await sub.next_event(WAIT)
        self.assertEqual((event.id, event.attempt), (first.event_id, 1))
        # Not acknowledged: redelivered after ack_timeout_ms.
        event = await sub.next_event(WAIT)
        self.assertEqual((event.id, event.attempt), (first.event_id, 2))
        await event.nack(confirm=True)  # requeue now
        event = await sub.next_event(WAIT)
        self.assertEqual((event.id, event.attempt), (first.event_id, 3))
        await event.ack(confirm=True)
        with self.assertRaises(UnknownEvent):  # no longer in flight
            await event.ack(confirm=True)
        second = await self.client.publish({"topic": f"{self.p}.job"})
        event = await sub.next_event(WAIT)
        self.assertEqual(event.id, second.event_id)
        await event.nack(requeue=False, confirm=True)
        notice = await dead.next_event(WAIT)
        while notice.payload.get("event_id") != second.event_id:
            notice = await dead.next_event(WAIT)
        self.assertEqual(notice.payload["reason"], "rejected")
        # The acknowledged first event never came back.
        third = await self.client.publish({"topic": f"{self.p}.job"})
        event = await sub.next_event(WAIT)
        self.assertEqual(event.id, third.event_id)
        await event.ack()

    async def test_durable_resume(self):
        name = f"d-{self.p}"
        sub = await self.client.subscribe(patterns=[f"{self.p}.>"], durable=name)
        ids = [(await self.client.publish({"topic": f"{self.p}.step", "payload": {"n": n}})).event_id
               for n in range(3)]
        got = await collect(sub, ids[2])
        await got[0].ack(confirm=True)
        await self.client.close()
        later = Client(SERVER.url, request_timeout=WAIT, backoff=FAST)
        async with later:
            # A new connection resumes: the two unacknowledged, then what came meanwhile.
            fourth = (await later.publish({"topic": f"{self.p}.step", "payload": {"n": 3}})).event_id
            again = await later.subscribe(patterns=[f"{self.p}.>"], durable=name)
            got = await collect(again, fourth)
            self.assertEqual([e.id for e in got], ids[1:] + [fourth])
            for e in got:
                await e.ack()

    async def test_a_drop_after_a_critical_event_does_not_skip_lower_ones(self):
        # docs/protocol.md 5.2-5.3: this batch reaches a subscriber critical first. The
        # connection drops right after that frame, the lower-priority ones still in the
        # network: resuming after the highest cursor seen would skip them.
        proxy = Proxy(SERVER.port)
        url = await proxy.start()
        try:
            async with Client(url, backoff=FAST, request_timeout=WAIT) as live:
                sub = await live.subscribe(patterns=[f"{self.p}.>"])
                await live.ping()  # replay_complete is in: what follows is live
                proxy.holding = True
                batch = await self.client.publish_batch(
                    [{"topic": f"{self.p}.e", "priority": p}
                     for p in ["low", "low", "normal", "critical", "high"]])
                await proxy.release_frame()
                first = await sub.next_event(WAIT)
                self.assertEqual(first.cursor, batch[3].cursor)
                proxy.cut()
                got = [first]
                while len({e.id for e in got}) < len(batch):
                    got.append(await sub.next_event(WAIT))
                # Anything the resume repeated would come before this later event.
                last = await self.client.publish({"topic": f"{self.p}.e", "priority": "low"})
                got += await collect(sub, last.event_id)
                self.assertEqual(sorted(e.cursor for e in got),
                                 [r.cursor for r in batch] + [last.cursor])
                self.assertEqual(live.connections, 2)
        finally:
            await proxy.close()

    async def test_several_urls_skip_a_dead_node(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = f"ws://127.0.0.1:{s.getsockname()[1]}/ws"  # bound, never listening
            async with Client([dead, SERVER.url], backoff=FAST, request_timeout=WAIT) as c:
                self.assertEqual(c.urls[c._index], SERVER.url)
                self.assertFalse((await c.publish({"topic": f"{self.p}.x"})).duplicate)

    async def test_publish_window_gives_back_pressure(self):
        async with Client(SERVER.url, window=4, request_timeout=WAIT, backoff=FAST) as c:
            await c.ping()
            SERVER.pause()  # no reply can come while the router is stopped
            try:
                futures = [await asyncio.wait_for(c.submit({"topic": f"{self.p}.w"}), WAIT)
                           for _ in range(4)]
                self.assertEqual(c.unanswered, 4)
                fifth = asyncio.ensure_future(c.submit({"topic": f"{self.p}.w"}))
                done, _ = await asyncio.wait([fifth], timeout=0.3)
                self.assertFalse(done, "a fifth publish went out with four unanswered")
                self.assertEqual(c.unanswered, 4)
            finally:
                SERVER.resume()
            futures.append(await asyncio.wait_for(fifth, WAIT))
            cursors = [(await asyncio.wait_for(f, WAIT)).cursor for f in futures]
            self.assertEqual(cursors, sorted(set(cursors)))
            self.assertEqual(c.unanswered, 0)


if __name__ == "__main__":
    unittest.main()
