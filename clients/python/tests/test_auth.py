"""The client against a router with tokens (docs/security.md): a valid token works, HTTP
included (the resume start comes from GET /api/stats), a bad one is `Unauthorized`, and
grants refuse with `Forbidden`."""
import os
import tempfile
import unittest

import server

from switchyard import Client, Forbidden, Unauthorized

PLANNER = "planner-token-0123456789"
TOKENS = f"""
[[tokens]]
name = "planner"
token = "{PLANNER}"
publish = ["task.>"]
subscribe = ["task.>"]
"""


class AuthTest(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        path = os.path.join(cls.dir.name, "tokens.toml")
        with open(path, "w") as f:
            f.write(TOKENS)
        cls.server = server.Server(env={"SWITCHYARD_AUTH__TOKENS_FILE": path})

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.dir.cleanup()

    async def asyncSetUp(self):
        server.quiet_loop()

    async def test_token_grants_and_refusals(self):
        async with Client(self.server.url, token=PLANNER, request_timeout=10) as c:
            sub = await c.subscribe(patterns=["task.>"])
            self.assertIn("from_cursor", sub.spec)  # GET /api/stats answered with the token
            mine = await c.publish({"topic": "task.created"})
            event = await sub.next_event(10)
            self.assertEqual((event.id, event["source"]), (mine.event_id, "planner"))
            with self.assertRaises(Forbidden):
                await c.publish({"topic": "agent.started"})
            with self.assertRaises(Forbidden):
                await c.subscribe(patterns=["agent.>"])
            results = await c.publish_batch([{"topic": "task.a"}, {"topic": "agent.b"}])
            self.assertIsInstance(results[1], Forbidden)

    async def test_bad_or_missing_token_is_unauthorized(self):
        for token in ("wrong-token-0123456789", None):
            c = Client(self.server.url, token=token)
            with self.assertRaises(Unauthorized):
                await c.connect()
            self.assertEqual(c.state, "failed")
            with self.assertRaises(Unauthorized):  # later calls too, without waiting
                await c.publish({"topic": "task.x"})
            await c.close()


if __name__ == "__main__":
    unittest.main()
