// The dashboard's one WebSocket: connect, reconnect with backoff, and keep exactly one
// subscription open, resuming from the last cursor seen after a reconnect.

import { backoffDelay } from "./backoff.js";

const REQUEST_TIMEOUT_MS = 10000;

/**
 * Status values passed to `onStatus(status, detail)`:
 * "connecting", "connected", "waiting" (detail: {delayMs, attempt}), "suspended".
 */
export class Connection {
  constructor({ url, onStatus, onEvent, onNotice, onSubscribed }) {
    this.url = url;
    this.onStatus = onStatus;
    this.onEvent = onEvent;
    this.onNotice = onNotice;
    this.onSubscribed = onSubscribed;
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.suspended = true;
    this.nextRequestId = 1;
    this.pending = new Map();
    // The subscription the user asked for (without `from_cursor`), its server id, and
    // the highest cursor delivered on it.
    this.spec = { type: "all" };
    this.subId = null;
    this.lastCursor = null;
  }

  /** Starts (or restarts after `suspend`) connecting. */
  start() {
    this.suspended = false;
    this.connectNow();
  }

  /** Stops reconnecting (while a token is missing); `start` resumes. */
  suspend() {
    this.suspended = true;
    clearTimeout(this.timer);
    this.timer = null;
    this.drop();
    this.onStatus("suspended");
  }

  /** The manual reconnect button: a fresh connection now, backoff reset. */
  connectNow() {
    clearTimeout(this.timer);
    this.timer = null;
    this.attempt = 0;
    this.drop();
    this.open();
  }

  drop() {
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onopen = ws.onclose = ws.onerror = ws.onmessage = null;
      ws.close();
    }
    this.subId = null;
    for (const { reject, timer } of this.pending.values()) {
      clearTimeout(timer);
      reject({ code: "disconnected", message: "connection closed" });
    }
    this.pending.clear();
  }

  open() {
    if (this.suspended) return;
    this.onStatus("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch (e) {
      this.onNotice({ level: "error", text: `cannot open WebSocket: ${e.message}` });
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.onStatus("connected");
      // Resume where the last connection stopped: replay what was missed, then live.
      const resume = this.lastCursor === null ? {} : { from_cursor: this.lastCursor };
      this.subscribe({ ...this.spec, ...resume }).catch((err) =>
        this.onNotice({ level: "error", text: `subscribe failed: ${err.message}` }),
      );
    };
    ws.onmessage = (msg) => this.receive(msg.data);
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.subId = null;
      this.scheduleReconnect();
    };
    ws.onerror = () => {
      // Always followed by `close`, which schedules the reconnect.
    };
  }

  scheduleReconnect() {
    for (const { reject, timer } of this.pending.values()) {
      clearTimeout(timer);
      reject({ code: "disconnected", message: "connection lost" });
    }
    this.pending.clear();
    if (this.suspended) return;
    const delayMs = backoffDelay(this.attempt);
    this.attempt += 1;
    this.onStatus("waiting", { delayMs, attempt: this.attempt });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.open(), delayMs);
  }

  receive(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (msg.request_id !== undefined && this.pending.has(msg.request_id)) {
      const { resolve, reject, timer } = this.pending.get(msg.request_id);
      this.pending.delete(msg.request_id);
      clearTimeout(timer);
      if (msg.type === "error") reject(msg);
      else resolve(msg);
      return;
    }
    switch (msg.type) {
      case "event":
        if (msg.subscription_id !== this.subId || !msg.event) return;
        if (typeof msg.event.cursor === "number") {
          this.lastCursor = Math.max(this.lastCursor ?? 0, msg.event.cursor);
        }
        this.onEvent(msg.event);
        break;
      case "replay_complete":
        if (msg.subscription_id === this.subId) {
          this.onNotice({ level: "info", text: `replay complete up to cursor ${msg.last_cursor}` });
        }
        break;
      case "dropped":
        this.onNotice({
          level: "warn",
          text: `${msg.count} event(s) dropped by the server (${msg.reason})`,
        });
        break;
      case "error":
        this.onNotice({ level: "error", text: `${msg.code}: ${msg.message}` });
        break;
      default:
        break;
    }
  }

  /** Sends a command; resolves with its reply, rejects with an `error` reply. */
  request(command) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      return Promise.reject({ code: "disconnected", message: "not connected" });
    }
    const request_id = `d${this.nextRequestId++}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(request_id);
        reject({ code: "timeout", message: "no reply from the server" });
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(request_id, { resolve, reject, timer });
      ws.send(JSON.stringify({ ...command, request_id }));
    });
  }

  /**
   * Subscribes with `subscription` and, once the server accepted it, unsubscribes the
   * previous one: a refused subscription (a bad CEL condition) leaves the old one running.
   */
  async subscribe(subscription) {
    const reply = await this.request({ type: "subscribe", subscription });
    const old = this.subId;
    this.subId = reply.subscription_id;
    if (old && old !== this.subId) {
      this.request({ type: "unsubscribe", subscription_id: old }).catch(() => {});
    }
    this.onSubscribed(subscription, this.subId);
    return this.subId;
  }

  /**
   * Replaces the subscription with `spec`; with `fromCursor`, replays stored matches after
   * that cursor first. Rejects with the server's error; then nothing changed.
   */
  async change(spec, fromCursor = null) {
    const subscription = fromCursor === null ? spec : { ...spec, from_cursor: fromCursor };
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      // Not connected: used when the connection (re)opens.
      this.spec = spec;
      this.lastCursor = fromCursor;
      return null;
    }
    const id = await this.subscribe(subscription);
    this.spec = spec;
    this.lastCursor = fromCursor;
    return id;
  }
}
