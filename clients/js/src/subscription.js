// A live subscription: its deliveries as an async iterator (or a callback), with
// ack / nack, bounded buffering, and the resume state the client uses after a reconnect.

import { ResumeState } from "./resume.js";

/** Deliveries buffered for a reader that is behind, before the oldest events go. */
export const DEFAULT_BUFFER_LIMIT = 10000;

export class Subscription {
  constructor(client, spec, { onDelivery, bufferLimit = DEFAULT_BUFFER_LIMIT, createdAt }) {
    this.client = client;
    this.id = spec.id;
    this.spec = spec;
    this.resume = new ResumeState(spec, createdAt);
    /** True while a replay (asked for, or a resume) is running: until `replay_complete`. */
    this.replaying = this.wantsReplay(spec);
    this.onDelivery = onDelivery || null;
    this.bufferLimit = Math.max(1, bufferLimit);
    this.buffer = [];
    this.waiters = [];
    this.closed = false;
    this.lastCursor = null;
  }

  wantsReplay(spec) {
    return spec.from_cursor !== undefined || spec.since !== undefined || spec.durable !== undefined;
  }

  /** The subscribe frame that restores it after a reconnect. */
  resumeFrame() {
    const spec = { ...this.spec };
    delete spec.from_cursor;
    delete spec.since;
    Object.assign(spec, this.resume.resumePoint());
    this.replaying = this.wantsReplay(spec);
    return { type: "subscribe", subscription: spec };
  }

  /** A server frame for this subscription. */
  receive(msg) {
    switch (msg.type) {
      case "event": {
        const event = msg.event;
        const attempt = Number.isInteger(msg.attempt) ? msg.attempt : 1;
        const verdict = this.resume.accept(event, attempt);
        if (verdict === "reack") {
          this.client.sendAck(this.id, event.id);
          return;
        }
        if (verdict === "skip") return;
        if (Number.isInteger(event.cursor)) {
          this.lastCursor = Math.max(this.lastCursor ?? 0, event.cursor);
        }
        this.push({ type: "event", event, attempt });
        return;
      }
      case "replay_complete":
        this.resume.replayComplete();
        this.replaying = false;
        this.push({ type: "replay_complete", lastCursor: msg.last_cursor });
        return;
      case "dropped":
        this.push({ type: "dropped", count: msg.count, reason: msg.reason });
        return;
      case "gap":
        this.push({ type: "gap", fromCursor: msg.from_cursor, toCursor: msg.to_cursor, reason: msg.reason });
        return;
      default:
        return;
    }
  }

  push(delivery) {
    if (this.closed) return;
    if (this.onDelivery) {
      try {
        this.onDelivery(delivery);
      } catch (e) {
        this.client.reportError(e);
      }
      return;
    }
    const waiter = this.waiters.shift();
    if (waiter) {
      waiter({ value: delivery, done: false });
      return;
    }
    this.buffer.push(delivery);
    if (this.buffer.length > this.bufferLimit) {
      // A reader this far behind loses the oldest event (an acknowledged subscription
      // gets it again after its ack timeout), and is told, like the server's `dropped`.
      const at = this.buffer.findIndex((d) => d.type === "event");
      this.buffer.splice(at < 0 ? 0 : at, 1);
      const last = this.buffer[this.buffer.length - 1];
      if (last && last.type === "dropped" && last.reason === "client_buffer") last.count += 1;
      else this.buffer.push({ type: "dropped", count: 1, reason: "client_buffer" });
    }
  }

  /** The next delivery; `{done: true}` once unsubscribed, or the client closed or failed. */
  next() {
    if (this.buffer.length > 0) return Promise.resolve({ value: this.buffer.shift(), done: false });
    if (this.closed) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  [Symbol.asyncIterator]() {
    return {
      next: () => this.next(),
      return: async () => {
        await this.unsubscribe().catch(() => {});
        return { value: undefined, done: true };
      },
    };
  }

  /** The events only (notices skipped), as an async iterator of envelopes. */
  async *events() {
    for (;;) {
      const { value, done } = await this.next();
      if (done) return;
      if (value.type === "event") yield value.event;
    }
  }

  /** Acknowledges a delivered event (the event or its id). No reply on success. */
  ack(eventOrId) {
    const id = typeof eventOrId === "string" ? eventOrId : eventOrId && eventOrId.id;
    this.resume.resolved(id);
    this.client.sendAck(this.id, id);
  }

  /** Rejects a delivery: redelivered (after `delayMs`) when `requeue`, else dead-lettered. */
  nack(eventOrId, { requeue = true, delayMs = 0 } = {}) {
    const id = typeof eventOrId === "string" ? eventOrId : eventOrId && eventOrId.id;
    if (!requeue) this.resume.resolved(id);
    this.client.sendFrame({
      type: "nack",
      subscription_id: this.id,
      event_id: id,
      requeue,
      delay_ms: delayMs,
    });
  }

  /** Ends it on the server; its iterator finishes. */
  async unsubscribe() {
    if (this.closed) return;
    await this.client.unsubscribe(this.id);
  }

  /** Ends the iterator (no frame sent). */
  end() {
    this.closed = true;
    for (const w of this.waiters.splice(0)) w({ value: undefined, done: true });
  }
}
