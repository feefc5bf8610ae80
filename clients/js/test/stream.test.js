// The event-stream store (and the React hook's contract) against the real server:
// recent history first, then live, each event once; the replaying flag; clear; a
// filter change reloads the matching history.

import { test } from "node:test";
import assert from "node:assert/strict";

import { Client } from "../src/index.js";
import { createEventStream, useEventStream } from "../src/stream.js";
import { Server, until } from "./server.js";

test("history then live, once each; a filter change reloads history", async () => {
  const server = await Server.start();
  const pub = new Client({ url: server.url });
  try {
    for (let i = 0; i < 8; i++) {
      await pub.publish({ topic: i % 2 ? "agent.tick" : "task.tick", priority: i % 3 ? "low" : "high", payload: { i } });
    }
    const stream = createEventStream({ url: server.url, maxEvents: 5, subscription: { patterns: [">"] } });
    const seenReplaying = [];
    const off = stream.subscribe(() => seenReplaying.push(stream.getSnapshot().isReplaying));
    await until("the latest five stored", () => stream.getSnapshot().events.length === 5);
    assert.deepEqual(stream.getSnapshot().events.map((e) => e.payload.i), [3, 4, 5, 6, 7]);
    assert.ok(seenReplaying.includes(true), "replaying while the history loads");
    await until("connected, replay over", () => {
      const s = stream.getSnapshot();
      return s.isConnected && !s.isReplaying;
    });
    await pub.publish({ topic: "task.tick", payload: { i: 8 } });
    await until("the live one", () => stream.getSnapshot().events.at(-1).payload.i === 8);
    assert.deepEqual(stream.getSnapshot().events.map((e) => e.payload.i), [4, 5, 6, 7, 8]);

    await stream.change({ patterns: ["agent.>"] });
    await until("the agent history", () => stream.getSnapshot().events.length === 4);
    assert.deepEqual(stream.getSnapshot().events.map((e) => e.payload.i), [1, 3, 5, 7]);
    stream.clear();
    assert.equal(stream.getSnapshot().events.length, 0);
    await pub.publish({ topic: "agent.tick", payload: { i: 9 } });
    await until("after clear", () => stream.getSnapshot().events.length === 1);
    off();
    await until("stopped with its last listener", () => stream.getSnapshot().state === "idle");
  } finally {
    pub.close();
    await server.close();
  }
});

test("useEventStream drives React's hooks without React installed", () => {
  // A minimal stand-in for React's hook calls, recording what the hook asks for.
  const calls = [];
  const fakeReact = {
    useState: (init) => [init(), () => {}],
    useEffect: (fn, deps) => calls.push(["effect", deps.length]),
    useSyncExternalStore: (subscribe, get) => {
      calls.push(["store", typeof subscribe]);
      return get();
    },
  };
  const out = useEventStream(fakeReact, { url: "ws://127.0.0.1:9/ws", subscription: { patterns: ["x"] } });
  assert.deepEqual(out.events, []);
  assert.equal(out.isConnected, false);
  assert.equal(typeof out.reconnect, "function");
  assert.equal(typeof out.clear, "function");
  assert.deepEqual(calls, [["effect", 2], ["store", "function"]]);
});
