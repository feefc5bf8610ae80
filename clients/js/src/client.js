// The Switchyard client: one WebSocket at a time over one or several node URLs, with
// reconnect (backoff and jitter), resubscription and resume, a bounded window of
// unanswered publishes, and typed errors. Speaks only the wire protocol
// (docs/protocol.md); no dependencies; browsers and Node 18+ (Node 18–21: pass a
// `WebSocket` constructor, or run Node 20+ with --experimental-websocket).

import { backoffDelay, nextAttempt, DEFAULT_BACKOFF } from "./backoff.js";
import { ErrorCode, SwitchyardError } from "./errors.js";
import { Subscription } from "./subscription.js";

/** Publishes awaiting their answer at once: the server's own pipelining limit. */
export const DEFAULT_PUBLISH_WINDOW = 64;

const OPEN = 1;

/** A UUIDv7 (time-ordered), from `crypto.getRandomValues` (also outside secure contexts). */
export function uuidv7() {
  const b = new Uint8Array(16);
  globalThis.crypto.getRandomValues(b);
  let ms = Date.now();
  for (let i = 5; i >= 0; i--) {
    b[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  b[6] = (b[6] & 0x0f) | 0x70;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** The subscription object of docs/protocol.md 4.1 for the friendlier options. */
export function subscriptionSpec(options = {}) {
  const names = {
    fromCursor: "from_cursor",
    ackTimeoutMs: "ack_timeout_ms",
    maxAttempts: "max_attempts",
    maxInFlight: "max_in_flight",
  };
  const spec = {};
  for (const [key, value] of Object.entries(options)) {
    if (value === undefined || key === "onDelivery" || key === "bufferLimit") continue;
    spec[names[key] || key] = value;
  }
  if (typeof spec.patterns === "string") spec.patterns = [spec.patterns];
  if (spec.id === undefined) spec.id = uuidv7();
  return spec;
}

/** `http(s)://host` of a `ws(s)://host/...` URL (for the HTTP API). */
export function httpBase(wsUrl) {
  const u = new URL(wsUrl);
  u.protocol = u.protocol === "wss:" ? "https:" : "http:";
  return u.origin;
}

export class Client {
  constructor(options = {}) {
    const urls = options.urls ?? options.url;
    this.urls = (Array.isArray(urls) ? urls : [urls]).filter(Boolean).map(String);
    if (this.urls.length === 0) throw new TypeError("Client needs `url` or `urls`");
    this.token = options.token || "";
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    if (typeof this.WebSocket !== "function") {
      throw new TypeError(
        "no WebSocket: pass `WebSocket` (for example from the `ws` package), or use Node 22+ / 20 with --experimental-websocket",
      );
    }
    this.fetch = options.fetch || (globalThis.fetch ? globalThis.fetch.bind(globalThis) : null);
    this.backoff = { ...DEFAULT_BACKOFF, ...(options.backoff || {}) };
    this.maxAttempts = options.maxAttempts ?? null;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 30000;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10000;
    this.publishWindow = Math.max(1, options.publishWindow ?? DEFAULT_PUBLISH_WINDOW);
    this.random = options.random || Math.random;

    this.state = "connecting";
    this.stateListeners = new Set();
    this.errorListeners = new Set();
    this.ws = null;
    this.index = 0;
    this.failures = 0;
    this.timer = null;
    this.pending = new Map();
    this.nextRequest = 1;
    this.subs = new Map();
    this.inWindow = 0;
    this.windowWaiters = [];
    this.clockOffsetMs = 0;
    this.lastError = null;
    if (options.onState) this.onState(options.onState);
    if (options.onError) this.onError(options.onError);
    this.open();
  }

  // ---- observers ------------------------------------------------------------------

  /** `listener({state, attempt?, delayMs?, url?, error?})` on every change; returns an unsubscribe. */
  onState(listener) {
    this.stateListeners.add(listener);
    return () => this.stateListeners.delete(listener);
  }

  /** Errors that answer no call (a refused ack, a resubscribe refused). */
  onError(listener) {
    this.errorListeners.add(listener);
    return () => this.errorListeners.delete(listener);
  }

  setState(state, detail = {}) {
    this.state = state;
    for (const l of this.stateListeners) {
      try {
        l({ state, ...detail });
      } catch (e) {
        this.reportError(e);
      }
    }
  }

  reportError(error) {
    for (const l of this.errorListeners) {
      try {
        l(error);
      } catch {
        // A listener that throws is not our business.
      }
    }
  }

  /** Resolves once connected; rejects when the client fails, closes, or `timeoutMs` passes. */
  connected(timeoutMs = this.requestTimeoutMs) {
    if (this.state === "connected") return Promise.resolve();
    if (this.state === "failed" || this.state === "closed") return Promise.reject(this.finalError());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new SwitchyardError(ErrorCode.TIMEOUT, `not connected within ${timeoutMs} ms`));
      }, timeoutMs);
      const off = this.onState(({ state }) => {
        if (state === "connected") resolve();
        else if (state === "failed" || state === "closed") reject(this.finalError());
        else return;
        clearTimeout(timer);
        off();
      });
    });
  }

  finalError() {
    if (this.state === "closed") return new SwitchyardError(ErrorCode.CLOSED, "the client is closed");
    return this.lastError || new SwitchyardError(ErrorCode.FAILED, "the client gave up reconnecting");
  }

  // ---- the connection -------------------------------------------------------------

  socketUrl() {
    const url = new URL(this.urls[this.index]);
    if (this.token) url.searchParams.set("token", this.token);
    return url.toString();
  }

  open() {
    if (this.state === "closed" || this.state === "failed") return;
    this.timer = null;
    let ws;
    try {
      ws = new this.WebSocket(this.socketUrl());
    } catch (e) {
      this.lastError = new SwitchyardError(ErrorCode.FAILED, `cannot open a WebSocket: ${e.message}`);
      this.connectionEnded(false);
      return;
    }
    this.ws = ws;
    this.failuresBefore = this.failures;
    let opened = false;
    let done = false;
    // One ending per socket, whichever says so first. Some WebSocket implementations
    // (Node 20's) report a refused connection with `error` alone, never `close`.
    const end = () => {
      if (done) return;
      done = true;
      clearTimeout(guard);
      if (this.ws !== ws) return;
      this.ws = null;
      try {
        ws.close();
      } catch {
        // Already closing.
      }
      this.connectionEnded(opened);
    };
    const guard = setTimeout(() => opened || end(), this.connectTimeoutMs);
    ws.onopen = () => {
      clearTimeout(guard);
      if (this.ws !== ws) return;
      opened = true;
      this.failures = 0;
      this.lastError = null;
      this.restore();
      this.setState("connected", { url: this.urls[this.index] });
    };
    ws.onmessage = (m) => {
      if (this.ws === ws) this.receive(m.data);
    };
    ws.onerror = () => opened || end();
    ws.onclose = end;
  }

  /** After (re)connecting: measure the server clock, resubscribe, resend what is owed. */
  restore() {
    const sent = Date.now();
    this.request({ type: "ping" }, { retry: false })
      .then((pong) => {
        const at = Date.parse(pong.server_time);
        if (Number.isFinite(at)) this.clockOffsetMs = at - (sent + Date.now()) / 2;
      })
      .catch(() => {});
    const awaiting = new Set();
    for (const p of this.pending.values()) {
      if (p.frame.type === "subscribe") awaiting.add(p.frame.subscription.id);
    }
    for (const sub of this.subs.values()) {
      if (!awaiting.has(sub.id)) this.resubscribe(sub);
    }
    const ids = [...this.pending.keys()].sort((a, b) => a - b);
    for (const id of ids) {
      const p = this.pending.get(id);
      if (p && !p.sentOn.has(this.ws)) this.transmit(p);
    }
  }

  resubscribe(sub, tries = 0) {
    this.request(sub.resumeFrame(), { retry: false }).catch((error) => {
      if (error.code === ErrorCode.DISCONNECTED || !this.subs.has(sub.id)) return;
      // A durable name is still held by the connection the server has not noticed is
      // gone: try again shortly. Anything else is reported, and the subscription ends.
      if (/already active/.test(error.message) && tries < 20) {
        setTimeout(() => this.subs.has(sub.id) && this.ws && this.resubscribe(sub, tries + 1), 250);
        return;
      }
      this.subs.delete(sub.id);
      sub.end();
      this.reportError(error);
    });
  }

  /** The connection is gone: calls that cannot be retried fail, the others wait. */
  dropPending() {
    for (const [id, p] of this.pending) {
      if (!p.retry) {
        this.pending.delete(id);
        this.settle(p, null, new SwitchyardError(ErrorCode.DISCONNECTED, "the connection dropped before the reply"));
      } else {
        p.sentOn.clear();
      }
    }
  }

  connectionEnded(wasOpen) {
    this.dropPending();
    if (this.state === "closed" || this.state === "failed") return;
    // A node answering `unavailable` is not a healthy connection: the count goes on.
    if (this.moveOn) this.failures = this.failuresBefore;
    this.moveOn = false;
    this.failures += 1;
    if (!wasOpen && this.fetch) this.diagnose();
    if (this.maxAttempts !== null && this.failures > this.maxAttempts) {
      this.fail(this.lastError || new SwitchyardError(ErrorCode.FAILED, "the client gave up reconnecting"));
      return;
    }
    const next = nextAttempt(this.index, this.urls.length, this.failures);
    this.index = next.index;
    const delayMs = next.wait === null ? 0 : backoffDelay(next.wait, this.random(), this.backoff);
    this.setState("reconnecting", { attempt: this.failures, delayMs, url: this.urls[this.index] });
    this.timer = setTimeout(() => this.open(), delayMs);
  }

  /** A refused upgrade is invisible to a WebSocket: ask the HTTP API why (401: give up). */
  async diagnose() {
    try {
      const headers = this.token ? { Authorization: `Bearer ${this.token}` } : {};
      const res = await this.fetch(`${httpBase(this.urls[this.index])}/api/info`, { headers });
      if (res.status === 401) {
        this.fail(new SwitchyardError(ErrorCode.UNAUTHORIZED, "the server refused the credential (HTTP 401)", { status: 401 }));
      }
    } catch {
      // Unreachable: the reconnect schedule goes on.
    }
  }

  fail(error) {
    if (this.state === "closed" || this.state === "failed") return;
    this.lastError = error;
    clearTimeout(this.timer);
    this.setState("failed", { error });
    this.shutdown(error);
  }

  /** Drops the connection and connects again at once, backoff reset. */
  reconnect() {
    if (this.state === "closed") return;
    if (this.state === "failed") this.state = "connecting";
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onclose = null;
      ws.close(1000);
    }
    this.dropPending();
    this.failures = 0;
    this.setState("connecting");
    this.open();
  }

  /** Closes the connection; calls waiting answer `closed`, iterators end. */
  close() {
    if (this.state === "closed") return;
    clearTimeout(this.timer);
    this.setState("closed");
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
    this.shutdown(new SwitchyardError(ErrorCode.CLOSED, "the client is closed"));
  }

  shutdown(error) {
    for (const p of this.pending.values()) this.settle(p, null, error);
    this.pending.clear();
    for (const sub of this.subs.values()) sub.end();
    this.subs.clear();
    for (const w of this.windowWaiters.splice(0)) w.reject(error);
  }

  // ---- frames ---------------------------------------------------------------------

  sendFrame(frame) {
    if (this.ws && this.ws.readyState === OPEN) {
      this.ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  /** An ack while disconnected is moot: the server redelivers what was not acknowledged. */
  sendAck(subscriptionId, eventId) {
    this.sendFrame({ type: "ack", subscription_id: subscriptionId, event_id: eventId });
  }

  transmit(p) {
    if (this.sendFrame(p.frame)) p.sentOn.add(this.ws);
  }

  /** Sends a command and resolves with its reply (rejects with its `error`). */
  request(frame, { retry = true, timeoutMs = this.requestTimeoutMs } = {}) {
    if (this.state === "closed" || this.state === "failed") return Promise.reject(this.finalError());
    const id = this.nextRequest++;
    const p = { frame: { ...frame, request_id: id }, retry, sentOn: new Set(), earlier: null };
    const promise = new Promise((resolve, reject) => {
      p.resolve = resolve;
      p.reject = reject;
    });
    p.timer = setTimeout(() => {
      this.pending.delete(id);
      this.settle(p, null, new SwitchyardError(ErrorCode.TIMEOUT, `no reply within ${timeoutMs} ms`));
    }, timeoutMs);
    this.pending.set(id, p);
    this.transmit(p);
    return promise;
  }

  settle(p, value, error) {
    clearTimeout(p.timer);
    if (p.release) p.release();
    if (error) p.reject(error);
    else p.resolve(value);
  }

  receive(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (!msg || typeof msg !== "object") return;
    const sub = typeof msg.subscription_id === "string" && this.subs.get(msg.subscription_id);
    if (sub && ["event", "replay_complete", "dropped", "gap"].includes(msg.type)) {
      sub.receive(msg);
      return;
    }
    const p = msg.request_id !== undefined && this.pending.get(msg.request_id);
    if (!p) {
      if (msg.type === "error") this.reportError(SwitchyardError.fromServer(msg));
      return;
    }
    this.pending.delete(msg.request_id);
    this.judge(p, msg);
  }

  /** A reply: answer the call, or (cluster: `unavailable`) keep it for the next node. */
  judge(p, msg) {
    const unavailable = (e) => !!e && e.code === ErrorCode.UNAVAILABLE;
    if (msg.type === "error") {
      if (p.retry && unavailable(msg)) return this.retryElsewhere(p);
      return this.settle(p, null, SwitchyardError.fromServer(msg));
    }
    if (msg.type === "published_batch" && Array.isArray(msg.results)) {
      // An event stored the first time keeps that answer, not the resend's `duplicate`.
      const merged = msg.results.map((r, i) => {
        const first = p.earlier && p.earlier[i];
        return first && !unavailable(first.error) ? first : r;
      });
      if (p.retry && merged.some((r) => unavailable(r.error))) {
        p.earlier = merged;
        return this.retryElsewhere(p);
      }
      msg.results = merged;
    }
    this.settle(p, msg, null);
  }

  retryElsewhere(p) {
    this.pending.set(p.frame.request_id, p);
    p.sentOn.clear();
    this.moveOn = true;
    const ws = this.ws;
    if (ws) {
      this.ws = null;
      ws.onclose = null;
      ws.close(1000);
      this.connectionEnded(true);
    }
  }

  // ---- the calls ------------------------------------------------------------------

  /** Waits for a free slot in the window of unanswered publishes. */
  acquire() {
    if (this.inWindow < this.publishWindow) {
      this.inWindow += 1;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => this.windowWaiters.push({ resolve, reject }));
  }

  releaseSlot() {
    const next = this.windowWaiters.shift();
    if (next) next.resolve();
    else this.inWindow -= 1;
  }

  async publishFrame(frame) {
    await this.acquire();
    let released = false;
    const release = () => {
      if (!released) {
        released = true;
        this.releaseSlot();
      }
    };
    try {
      const promise = this.request(frame, { retry: true });
      const p = this.pending.get(this.nextRequest - 1);
      if (p) p.release = release;
      return await promise;
    } finally {
      release();
    }
  }

  /**
   * Publishes one event; resolves with `{eventId, cursor, duplicate}` once stored. An
   * event without an `id` gets one, so that a resend after a reconnect is recognised as
   * a duplicate rather than stored twice.
   */
  async publish(event) {
    const reply = await this.publishFrame({ type: "publish_event", event: withId(event) });
    return published(reply);
  }

  /** Publishes events in one frame: one `{ok, eventId, cursor, duplicate}` or `{ok: false, error}` each. */
  async publishBatch(events) {
    if (!Array.isArray(events)) throw new TypeError("publishBatch takes an array of events");
    const reply = await this.publishFrame({ type: "publish_batch", events: events.map(withId) });
    if (!Array.isArray(reply.results)) {
      throw new SwitchyardError(ErrorCode.UNEXPECTED, JSON.stringify(reply));
    }
    return reply.results.map((r) =>
      r.error ? { ok: false, error: SwitchyardError.fromServer(r.error) } : { ok: true, ...published(r) },
    );
  }

  /**
   * Subscribes: `{patterns, filter, condition, durable, ack, fromCursor, since, coalesce,
   * ackTimeoutMs, maxAttempts, maxInFlight, id}` (docs/protocol.md 4.1). Resolves with a
   * {@link Subscription} once the server accepted it; rejects with the server's error.
   * Deliveries go to `onDelivery` when given, else to the subscription's async iterator.
   */
  async subscribe(options = {}) {
    const spec = subscriptionSpec(options);
    if (this.subs.has(spec.id)) {
      throw new SwitchyardError(ErrorCode.INVALID_SUBSCRIPTION, `subscription id \`${spec.id}\` in use`);
    }
    const createdAt = new Date(Date.now() + this.clockOffsetMs).toISOString();
    const sub = new Subscription(this, spec, { ...options, createdAt });
    this.subs.set(spec.id, sub);
    try {
      await this.request({ type: "subscribe", subscription: spec }, { retry: true });
    } catch (e) {
      if (this.subs.get(spec.id) === sub) this.subs.delete(spec.id);
      sub.end();
      throw e;
    }
    return sub;
  }

  async unsubscribe(id) {
    const sub = this.subs.get(id);
    this.subs.delete(id);
    if (sub) sub.end();
    if (this.state !== "connected") return;
    await this.request({ type: "unsubscribe", subscription_id: id }, { retry: false });
  }

  /** A round trip; resolves with the server's time. */
  async ping() {
    return (await this.request({ type: "ping" })).server_time;
  }
}

function withId(event) {
  if (!event || typeof event !== "object" || Array.isArray(event)) return event;
  return event.id === undefined || event.id === null ? { ...event, id: uuidv7() } : event;
}

function published(reply) {
  if (typeof reply.event_id !== "string" || !Number.isInteger(reply.cursor)) {
    throw new SwitchyardError(ErrorCode.UNEXPECTED, JSON.stringify(reply));
  }
  return { eventId: reply.event_id, cursor: reply.cursor, duplicate: reply.duplicate === true };
}
