// The pure policies: the reconnect schedule, node rotation, and the resume state.

import { test } from "node:test";
import assert from "node:assert/strict";

import { backoffDelay, nextAttempt, ResumeState } from "../src/index.js";

test("backoff: 1 s doubling to 30 s, ±20 % jitter (the Rust client's schedule)", () => {
  const table = [[1, 1000], [2, 2000], [3, 4000], [4, 8000], [5, 16000], [6, 30000], [100, 30000]];
  for (const [attempt, ms] of table) assert.equal(backoffDelay(attempt, 0.5), ms, `attempt ${attempt}`);
  assert.equal(backoffDelay(1, 0), 800);
  assert.equal(backoffDelay(1, 0.999999), 1200);
  assert.equal(backoffDelay(0, 0.5), 1000);
  assert.equal(backoffDelay(1, 7), 1200);
  assert.equal(backoffDelay(3, 0.5, { initialMs: 50, maxMs: 120 }), 120);
});

test("rotation: other nodes at once, one wait per full round", () => {
  const table = [
    [[0, 1, 1], { index: 0, wait: 1 }],
    [[0, 1, 7], { index: 0, wait: 7 }],
    [[0, 2, 1], { index: 1, wait: null }],
    [[1, 2, 2], { index: 0, wait: 1 }],
    [[1, 3, 3], { index: 2, wait: 1 }],
    [[5, 2, 1], { index: 0, wait: null }],
  ];
  for (const [[i, n, f], want] of table) assert.deepEqual(nextAttempt(i, n, f), want);
});

const ev = (cursor, priority, id = `e${cursor}`) => ({ id, cursor, priority });

test("resume: from the smallest per-priority mark; what was handed over is skipped", () => {
  const r = new ResumeState({ patterns: [">"], from_cursor: 10 }, "2026-01-01T00:00:00Z");
  assert.equal(r.accept(ev(11, "low")), "deliver"); // replayed
  r.replayComplete();
  // Live: critical 14 overtook low 12 and 13, which were still waiting.
  assert.equal(r.accept(ev(14, "critical")), "deliver");
  assert.equal(r.accept(ev(12, "low")), "deliver");
  for (const p of ["high", "normal"]) r.marks.set(p, 20);
  assert.deepEqual(r.resumePoint(), { from_cursor: 12 });
  assert.equal(r.accept(ev(12, "low")), "deliver", "forgotten at or below the resume point");
  assert.equal(r.accept(ev(14, "critical")), "skip");
  assert.equal(r.accept(ev(13, "low")), "deliver");
  // A filter that allows only some priorities is not held back by the others.
  const f = new ResumeState({ filter: { min_priority: "high" } }, "t");
  f.accept(ev(5, "high"));
  f.accept(ev(7, "critical"));
  assert.deepEqual(f.resumePoint(), { from_cursor: 5 });
  // Coalescing delivers out of cursor order: no marks, it resumes from its start.
  const c = new ResumeState({ from_cursor: 4, coalesce: { key: "payload.k" } }, "t");
  c.replayComplete();
  for (const p of ["critical", "high", "normal", "low"]) c.accept(ev(9, p, `c${p}`));
  assert.deepEqual(c.resumePoint(), { from_cursor: 4 });
  // Before any mark and without a starting cursor: from the time it was made.
  assert.deepEqual(new ResumeState({}, "2026-01-01T00:00:00Z").resumePoint(), { since: "2026-01-01T00:00:00Z" });
});

test("resume with acks: unacked deliveries hold the point; acked ones come back re-acked", () => {
  const r = new ResumeState({ ack: true, from_cursor: 0 }, "t");
  r.replayComplete();
  for (const p of ["critical", "high", "normal", "low"]) r.accept(ev(p === "low" ? 3 : 9, p));
  r.resolved("e9");
  assert.deepEqual(r.resumePoint(), { from_cursor: 2 }, "below the unacked 3");
  assert.equal(r.accept(ev(9, "critical")), "reack");
  assert.equal(r.accept(ev(3, "low")), "deliver");
  // Durable: the server knows.
  assert.deepEqual(new ResumeState({ durable: "d" }, "t").resumePoint(), {});
});
