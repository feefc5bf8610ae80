// The client against the real server: publish and subscribe, filters and conditions,
// acks and redelivery, durable resume, typed errors, the publish window.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";

import { Client, ErrorCode, SwitchyardError } from "../src/index.js";
import { Server, take, until } from "./server.js";

let server;
before(async () => {
  server = await Server.start();
});
after(async () => {
  await server.close();
});

const connect = (opts = {}) => new Client({ url: server.url, requestTimeoutMs: 10000, ...opts });

test("publish and subscribe with patterns, a filter and a condition", async () => {
  const c = connect();
  try {
    const tasks = await c.subscribe({ patterns: ["js1.task.>"] });
    const urgent = await c.subscribe({ patterns: ["js1.>"], filter: { min_priority: "high" } });
    const costly = await c.subscribe({ patterns: ["js1.>"], condition: "payload.cost > 5.0" });
    const p = await c.publish({ topic: "js1.task.created", priority: "high", payload: { cost: 1.5 } });
    assert.equal(p.duplicate, false);
    assert.ok(p.cursor > 0 && typeof p.eventId === "string");
    const results = await c.publishBatch([
      { topic: "js1.agent.failed", priority: "critical", payload: { cost: 9.0 } },
      { topic: "js1.task.done", priority: "low" },
      { topic: "js1.bad", priority: "urgent" },
    ]);
    assert.deepEqual(results.map((r) => r.ok), [true, true, false]);
    assert.equal(results[2].error.code, ErrorCode.INVALID_EVENT);
    assert.ok(results[2].error instanceof SwitchyardError);

    const t = await take(tasks, 2);
    assert.deepEqual(t.map((d) => d.event.topic), ["js1.task.created", "js1.task.done"]);
    const u = await take(urgent, 2);
    assert.deepEqual(new Set(u.map((d) => d.event.topic)), new Set(["js1.task.created", "js1.agent.failed"]));
    const [k] = await take(costly, 1);
    assert.equal(k.event.topic, "js1.agent.failed");
    assert.equal(k.attempt, 1);
    // The same id again is a duplicate with the original cursor.
    const again = await c.publish({ id: p.eventId, topic: "js1.task.created" });
    assert.deepEqual(again, { ...p, duplicate: true });
  } finally {
    c.close();
  }
});

test("errors carry the protocol's codes", async () => {
  const c = connect();
  try {
    const code = (promise) =>
      promise.then(
        () => "no error",
        (e) => (e instanceof SwitchyardError ? e.code : `not typed: ${e}`),
      );
    assert.equal(await code(c.subscribe({ condition: "payload.n >" })), "invalid_condition");
    assert.equal(await code(c.subscribe({ patterns: ["a..b"] })), "invalid_pattern");
    assert.equal(await code(c.subscribe({ patterns: ["x"], bogus: 1 })), "invalid_subscription");
    assert.equal(await code(c.publish({ topic: "switchyard.mine" })), "forbidden");
    assert.equal(await code(c.publish({ priority: "high" })), "invalid_event");
    assert.equal(await code(c.unsubscribe("never-made")), "unknown_subscription");
    assert.equal(await code(c.request({ type: "unsubscribe", subscription_id: "nope" })), "unknown_subscription");
    assert.equal(await code(c.request({ type: "explode" })), "unknown_command");
    // An ack of an event not in flight: answered by no call, reported to onError.
    const errors = [];
    c.onError((e) => errors.push(e.code));
    const sub = await c.subscribe({ patterns: ["js2.>"], ack: true });
    sub.ack("not-in-flight");
    await until("the unknown_event error", () => errors.includes("unknown_event"));
    // The connection survived all of it.
    assert.match(await c.ping(), /^\d{4}-/);
  } finally {
    c.close();
  }
  await assert.rejects(c.publish({ topic: "x" }), (e) => e.code === ErrorCode.CLOSED);
});

test("acks and redelivery: nack requeues, an unacked delivery comes back, an ack ends it", async () => {
  const c = connect();
  try {
    const sub = await c.subscribe({ patterns: ["js3.>"], ack: true, ackTimeoutMs: 300, maxAttempts: 5 });
    await c.publish({ topic: "js3.job", payload: { n: 1 } });
    const [first] = await take(sub, 1);
    assert.equal(first.attempt, 1);
    sub.nack(first.event, { requeue: true });
    const [second] = await take(sub, 1);
    assert.equal(second.event.id, first.event.id);
    assert.equal(second.attempt, 2);
    // Not acknowledged: the ack timeout redelivers it.
    const [third] = await take(sub, 1);
    assert.equal(third.attempt, 3);
    sub.ack(third.event);
    await c.publish({ topic: "js3.job", payload: { n: 2 } });
    const [next] = await take(sub, 1);
    assert.deepEqual([next.event.payload, next.attempt], [{ n: 2 }, 1]);
    sub.ack(next.event);
    // nack without requeue dead-letters it.
    await c.publish({ topic: "js3.job", payload: { n: 3 } });
    const [last] = await take(sub, 1);
    sub.nack(last.event, { requeue: false });
    const res = await fetch(`${server.http}/api/dead-letters`);
    await until("the dead letter", async () => {
      const rows = await (await fetch(`${server.http}/api/dead-letters`)).json();
      return rows.some((r) => r.event.id === last.event.id && r.reason === "rejected");
    });
    assert.equal(res.status, 200);
  } finally {
    c.close();
  }
});

test("a durable subscription resumes with what was not acknowledged", async () => {
  const name = `js4-${Date.now()}`;
  const a = connect();
  const sub = await a.subscribe({ patterns: ["js4.>"], durable: name });
  const published = [];
  for (let i = 0; i < 4; i++) published.push((await a.publish({ topic: "js4.step", payload: { i } })).eventId);
  const got = await take(sub, 4);
  sub.ack(got[0].event);
  sub.ack(got[1].event);
  await a.ping(); // the acks are in before the connection goes
  a.close();
  await a.publish({ topic: "x" }).catch(() => {});

  const b = connect();
  try {
    await b.publish({ topic: "js4.step", payload: { i: 4 } });
    const again = await b.subscribe({ patterns: ["js4.>"], durable: name });
    const rest = await take(again, 3);
    assert.deepEqual(rest.map((d) => d.event.payload.i), [2, 3, 4]);
  } finally {
    b.close();
  }
  assert.equal(published.length, 4);
});

test("the publish window bounds unanswered publishes", async () => {
  const c = connect({ publishWindow: 4 });
  try {
    let most = 0;
    const sent = c.sendFrame.bind(c);
    c.sendFrame = (frame) => {
      most = Math.max(most, c.inWindow);
      return sent(frame);
    };
    const results = await Promise.all(
      Array.from({ length: 50 }, (_, i) => c.publish({ topic: "js5.tick", payload: { i } })),
    );
    assert.equal(new Set(results.map((r) => r.cursor)).size, 50);
    assert.ok(most <= 4, `at most 4 in flight, saw ${most}`);
    assert.ok(most >= 2, `pipelined, saw ${most}`);
    assert.equal(c.inWindow, 0);
  } finally {
    c.close();
  }
});
