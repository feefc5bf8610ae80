// Reconnect across a server restart: nothing lost, nothing duplicated, for a publisher
// that keeps publishing through the outage and a subscriber of mixed priorities.

import { test } from "node:test";
import assert from "node:assert/strict";

import { Client } from "../src/index.js";
import { Server, until } from "./server.js";

const PRIORITIES = ["low", "critical", "normal", "high"];

test("a restart loses and repeats nothing", async () => {
  const server = await Server.start();
  const fast = { initialMs: 50, maxMs: 200 };
  const states = [];
  const sub = new Client({ url: server.url, backoff: fast, onState: (s) => states.push(s.state) });
  const pub = new Client({ url: server.url, backoff: fast });
  try {
    const seen = [];
    const subscription = await sub.subscribe({
      patterns: ["js6.>"],
      onDelivery: (d) => d.type === "event" && seen.push(d.event),
    });
    assert.ok(subscription.id);
    const publish = (i) => pub.publish({ topic: "js6.tick", priority: PRIORITIES[i % 4], payload: { i } });
    const before = await Promise.all(Array.from({ length: 40 }, (_, i) => publish(i)));
    // Publishes in flight while the server goes down are resent after it is back.
    const during = Array.from({ length: 40 }, (_, i) => publish(40 + i));
    await server.restart();
    const after = await Promise.all([...during, ...Array.from({ length: 20 }, (_, i) => publish(80 + i))]);
    assert.equal(before.length + after.length, 100);
    await until("all 100 events at the subscriber", () => seen.length >= 100, 20000);
    await pub.ping();
    await new Promise((r) => setTimeout(r, 200));
    const ids = seen.map((e) => e.payload.i);
    assert.equal(new Set(ids).size, 100, "no event lost");
    assert.equal(ids.length, 100, "no event twice");
    assert.ok(states.includes("reconnecting"), `states: ${states}`);
    // Cursors: each publish answered once, with its own cursor, none twice.
    assert.equal(new Set([...before, ...after].map((p) => p.cursor)).size, 100);
  } finally {
    sub.close();
    pub.close();
    await server.close();
  }
});

test("several URLs: a dead node is passed over at once", async () => {
  const server = await Server.start();
  const c = new Client({ urls: ["ws://127.0.0.1:1/ws", server.url], backoff: { initialMs: 5000 } });
  try {
    // Within the first backoff wait: the second URL is tried without waiting.
    await c.connected(4000);
    assert.ok((await c.publish({ topic: "js8.x" })).cursor > 0);
  } finally {
    c.close();
    await server.close();
  }
});

test("a token is sent; a refused one fails with `unauthorized`; grants give `forbidden`", async () => {
  const server = await Server.start({
    config: `[auth]
[[auth.tokens]]
name = "agent"
token = "agent-token-0123456789"
publish = ["js7.>"]
subscribe = [">"]
`,
  });
  try {
    const good = new Client({ url: server.url, token: "agent-token-0123456789" });
    try {
      const sub = await good.subscribe({ patterns: ["js7.>"] });
      const p = await good.publish({ topic: "js7.hello" });
      const next = await sub.next();
      assert.equal(next.value.event.id, p.eventId);
      assert.equal(next.value.event.source, "agent");
      await assert.rejects(good.publish({ topic: "other.topic" }), (e) => e.code === "forbidden");
    } finally {
      good.close();
    }
    const bad = new Client({ url: server.url, token: "wrong-token-0123456789", backoff: { initialMs: 50 } });
    await assert.rejects(bad.connected(10000), (e) => e.code === "unauthorized" && e.status === 401);
    assert.equal(bad.state, "failed");
    await assert.rejects(bad.publish({ topic: "js7.x" }), (e) => e.code === "unauthorized");
    bad.close();
  } finally {
    await server.close();
  }
});
