// What a subscription remembers so that a resume after a reconnect loses nothing and
// repeats nothing (docs/protocol.md section 5.3), as a pure class without I/O.
//
// Live delivery is in priority order, so "resume after the highest cursor seen" can skip
// a lower-priority event still waiting when the connection dropped. Instead this keeps a
// mark per priority (the highest cursor of a live delivery of that priority; live events
// of one priority arrive in cursor order) and resumes from the smallest mark; everything
// the resume replays that was already handed over is recognised by its cursor and
// skipped. With acks, an event handed over but not yet acknowledged also holds the
// resume point below its cursor, and an acknowledged one that comes again (its ack was
// lost with the connection) is acknowledged again instead of handed over twice. A
// durable subscription resumes from the server's own state.

export const PRIORITIES = Object.freeze(["critical", "high", "normal", "low"]);

/** Cursors remembered at most, oldest forgotten first. */
export const MAX_REMEMBERED = 100000;

/** The priorities a subscription's filter lets through. */
export function allowedPriorities(spec) {
  const f = (spec && spec.filter) || {};
  let list = PRIORITIES;
  if (Array.isArray(f.priorities) && f.priorities.length > 0) {
    const wanted = f.priorities.map((p) => String(p).toLowerCase());
    list = list.filter((p) => wanted.includes(p));
  }
  if (typeof f.min_priority === "string") {
    const at = PRIORITIES.indexOf(f.min_priority.toLowerCase());
    if (at >= 0) list = list.filter((p) => PRIORITIES.indexOf(p) <= at);
  }
  return list;
}

export class ResumeState {
  /** `spec`: the subscription object as sent; `createdAt`: RFC 3339, server time. */
  constructor(spec, createdAt) {
    this.durable = typeof spec.durable === "string";
    this.acked = this.durable || spec.ack === true;
    this.priorities = allowedPriorities(spec);
    // A coalescing subscription delivers a held event when its window ends, out of
    // cursor order: it sets no marks, so it resumes from where it started (more, never less).
    this.coalescing = spec.coalesce !== undefined && spec.coalesce !== null;
    this.base = Number.isInteger(spec.from_cursor) ? spec.from_cursor : null;
    this.since = typeof spec.since === "string" ? spec.since : createdAt;
    // Before `replay_complete` a delivery may be a replayed one: it sets no mark.
    this.live = this.base === null && typeof spec.since !== "string" && !this.durable;
    this.marks = new Map();
    // Without acks: cursors handed over. With acks: cursors resolved (acked, rejected).
    this.seen = new Set();
    // With acks: event id → cursor of deliveries handed over and not yet resolved.
    this.inFlight = new Map();
  }

  /**
   * What to do with a delivered event: "deliver" it, "skip" it (already handed over),
   * or "reack" it (acknowledged before; acknowledge again, do not hand over).
   */
  accept(event, attempt = 1) {
    const cursor = event && event.cursor;
    // Dead-letter notices carry cursor 0 and are never replayed.
    if (!Number.isInteger(cursor) || cursor <= 0) return "deliver";
    if (this.acked) {
      if (this.seen.has(cursor)) return "reack";
      if (typeof event.id === "string") this.inFlight.set(event.id, cursor);
    } else {
      if (this.seen.has(cursor)) return "skip";
      this.remember(cursor);
    }
    if (this.live && attempt <= 1 && !this.coalescing) {
      const p = String(event.priority);
      this.marks.set(p, Math.max(this.marks.get(p) ?? 0, cursor));
    }
    return "deliver";
  }

  /** The replay is over: what follows is live. */
  replayComplete() {
    this.live = true;
  }

  /** An acknowledged (or rejected) delivery is resolved: never hand it over again. */
  resolved(eventId) {
    const cursor = this.inFlight.get(eventId);
    if (cursor === undefined) return;
    this.inFlight.delete(eventId);
    this.remember(cursor);
  }

  remember(cursor) {
    this.seen.add(cursor);
    if (this.seen.size > MAX_REMEMBERED) {
      this.seen.delete(this.seen.values().next().value);
    }
  }

  /**
   * Where to resume: `{from_cursor}`, `{since}`, or `{}` (durable: the server knows).
   * Moves the base to the resume point and forgets cursors at or below it.
   */
  resumePoint() {
    if (this.durable) {
      this.live = false;
      return {};
    }
    let point = Infinity;
    for (const p of this.priorities) {
      const mark = this.marks.get(p) ?? this.base;
      if (mark === null) {
        point = null;
        break;
      }
      point = Math.min(point, mark);
    }
    if (point !== null) {
      for (const cursor of this.inFlight.values()) point = Math.min(point, cursor - 1);
      if (point === Infinity) point = this.base ?? 0;
    }
    this.live = false;
    if (point === null) return { since: this.since };
    this.base = point;
    for (const cursor of this.seen) if (cursor <= point) this.seen.delete(cursor);
    return { from_cursor: point };
  }
}
