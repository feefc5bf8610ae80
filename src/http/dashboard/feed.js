// The dashboard's event feed, on the Switchyard client module (clients/js, served from
// the binary beside these files): one subscription at a time that opens on the latest
// stored matches (up to the timeline's row limit), then continues live with no gap and
// no duplicate (the server's replay from a cursor); after a reconnect the client
// resumes it. A changed filter replaces the subscription once the server accepted the
// new one, so a refused one (a bad CEL condition) leaves the old one running.

import { Client, uuidv7 } from "./client.js";
import { historyStart } from "./stream.js";

/**
 * Status values passed to `onStatus(status, detail)`:
 * "connecting", "connected", "waiting" (detail: {delayMs, attempt}), "suspended".
 */
export class Feed {
  constructor({ url, token, history, onStatus, onEvent, onReset, onNotice, onSubscribed }) {
    Object.assign(this, { url, token, history, onStatus, onEvent, onReset, onNotice, onSubscribed });
    this.client = null;
    this.sub = null;
    this.spec = { type: "all" };
    // The subscription shown, and the one being made (its early deliveries wait).
    this.shownId = null;
    this.makingId = null;
    this.early = [];
  }

  /** Connects (again, with the current token) and subscribes to the current filter. */
  start() {
    if (this.client) this.client.close();
    const client = new Client({
      url: this.url(),
      token: this.token(),
      requestTimeoutMs: 10000,
      onState: ({ state, delayMs, attempt }) => {
        if (this.client !== client) return;
        if (state === "reconnecting") this.onStatus("waiting", { delayMs, attempt });
        else if (state === "connected" || state === "connecting") this.onStatus(state);
        else this.onStatus("suspended");
      },
    });
    this.client = client;
    this.sub = null;
    this.shownId = null;
    this.onStatus("connecting");
    this.change(this.spec).catch((err) =>
      this.onNotice({ level: "error", text: `subscribe failed: ${err.code}: ${err.message}` }),
    );
  }

  /** Stops (while a token is missing); `start` resumes. */
  suspend() {
    const client = this.client;
    this.client = null;
    if (client) client.close();
    this.onStatus("suspended");
  }

  /** The manual reconnect button: a fresh connection now, backoff reset. */
  connectNow() {
    if (this.client) this.client.reconnect();
    else this.start();
  }

  deliver(d) {
    switch (d.type) {
      case "event":
        this.onEvent(d.event);
        break;
      case "replay_complete":
        if (this.replayAsked) {
          this.onNotice({ level: "info", text: `replay complete up to cursor ${d.lastCursor}` });
          this.replayAsked = false;
        }
        break;
      case "dropped":
        this.onNotice({ level: "warn", text: `${d.count} event(s) dropped by the server (${d.reason})` });
        break;
      case "gap":
        this.onNotice({ level: "warn", text: `events ${d.fromCursor}–${d.toCursor} were lost to retention` });
        break;
      default:
        break;
    }
  }

  /**
   * Replaces the subscription with `spec`: replays stored matches after `fromCursor`
   * when given, else the latest stored matches, then live. Rejects with the server's
   * error; then nothing changed.
   */
  async change(spec, fromCursor = null) {
    const client = this.client;
    if (!client) {
      this.spec = spec;
      return null;
    }
    const id = uuidv7();
    this.makingId = id;
    this.early = [];
    let from = fromCursor;
    if (from === null) {
      // Unreachable (or refused) history: start live; the filter still applies.
      from = await historyStart(client, spec, this.history).catch(() => null);
    }
    const subscription = from === null ? { ...spec } : { ...spec, from_cursor: from };
    const sub = await client.subscribe({
      ...subscription,
      id,
      onDelivery: (d) => {
        if (id === this.shownId) this.deliver(d);
        else if (id === this.makingId) this.early.push(d);
      },
    });
    if (this.client !== client || this.makingId !== id) {
      sub.unsubscribe().catch(() => {});
      return null;
    }
    const old = this.sub;
    this.sub = sub;
    this.spec = spec;
    this.shownId = id;
    this.makingId = null;
    this.replayAsked = fromCursor !== null;
    this.onReset();
    this.onSubscribed(spec, id);
    for (const d of this.early.splice(0)) this.deliver(d);
    if (old) old.unsubscribe().catch(() => {});
    return id;
  }
}
