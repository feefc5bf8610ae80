// An event stream for user interfaces, in the spirit of todoki's `useEventStream`: the
// latest events of one subscription (recent history first, then live, no gap and no
// duplicate), the connection state and a replaying flag, with reconnect and clear.
//
// `createEventStream` is framework-free: a store with `subscribe(listener)` and
// `getSnapshot()`, the pair React's `useSyncExternalStore` takes. `useEventStream` is the
// React hook on top; React is passed in, so this module needs no React to load.

import { Client, httpBase, subscriptionSpec } from "./client.js";
import { ErrorCode, SwitchyardError } from "./errors.js";
import { allowedPriorities } from "./resume.js";

/** `GET /api/events` pages hold at most this many rows. */
const MAX_PAGE = 1000;

/**
 * The cursor to replay after so that a subscription `spec` starts with (about) its
 * latest `limit` stored matches: the server's newest candidates are listed with
 * `GET /api/events` (narrowed by the topic when there is one pattern, and the priority
 * when one is allowed), twice `limit` of them up to 1000, and the replay starts below
 * the oldest. A selective condition or filter may leave fewer than `limit` among them.
 * 0 when the log holds fewer candidates (everything is replayed).
 */
export async function historyStart(client, spec, limit) {
  if (!(limit > 0)) return null;
  const fetchFn = client.fetch;
  if (typeof fetchFn !== "function") return null;
  const asked = Math.min(MAX_PAGE, Math.max(1, Math.floor(limit)) * 2);
  const q = new URLSearchParams({ order: "desc", limit: String(asked) });
  const patterns = [...(spec.patterns || []), ...((spec.filter && spec.filter.topics) || [])];
  if (spec.pattern) patterns.push(spec.pattern);
  if (patterns.length === 1) q.set("topic", patterns[0]);
  const priorities = allowedPriorities(spec);
  if (priorities.length === 1) q.set("priority", priorities[0]);
  const headers = { Accept: "application/json" };
  if (client.token) headers.Authorization = `Bearer ${client.token}`;
  const res = await fetchFn(`${httpBase(client.urls[client.index])}/api/events?${q}`, { headers });
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    const e = (body && body.error) || {};
    throw new SwitchyardError(e.code || ErrorCode.UNEXPECTED, e.message || `HTTP ${res.status}`, {
      status: res.status,
    });
  }
  if (!Array.isArray(body) || body.length < asked) return 0;
  const oldest = body[body.length - 1].cursor;
  return Number.isInteger(oldest) ? Math.max(0, oldest - 1) : 0;
}

/**
 * A store of the latest events of one subscription. Options: a `client` (or the
 * {@link Client} options `url`/`urls`/`token`/`WebSocket`), `subscription` (as for
 * `client.subscribe`), `history` (stored matches to show first; 0 for none, default
 * `maxEvents`), `maxEvents` (kept, default 50, newest kept).
 */
export function createEventStream(options = {}) {
  const maxEvents = Math.max(1, options.maxEvents ?? 50);
  const history = options.history ?? maxEvents;
  const ownClient = !options.client;
  let client = null;
  let sub = null;
  let wanted = options.subscription || {};
  let listeners = new Set();
  let events = [];
  const seen = new Set();
  let snapshot = {
    events,
    state: "idle",
    isConnected: false,
    isReplaying: false,
    error: null,
    subscriptionId: null,
  };
  let stopTimer = null;
  // Each subscribe is a generation; only the shown one's deliveries are added, and a
  // newer one's that arrive before it is accepted wait in `early`.
  let generation = 0;
  let shown = 0;
  let early = [];

  function emit(patch) {
    snapshot = { ...snapshot, ...patch };
    for (const l of listeners) l();
  }

  /** Inserts by cursor (newest last), once, keeping the newest `maxEvents`. */
  function add(event) {
    const key = Number.isInteger(event.cursor) && event.cursor > 0 ? event.cursor : event.id;
    if (seen.has(key)) return;
    seen.add(key);
    const next = events.slice();
    let at = next.length;
    const c = event.cursor ?? Infinity;
    while (at > 0 && (next[at - 1].cursor ?? Infinity) > c) at -= 1;
    next.splice(at, 0, event);
    while (next.length > maxEvents) {
      const gone = next.shift();
      seen.delete(Number.isInteger(gone.cursor) && gone.cursor > 0 ? gone.cursor : gone.id);
    }
    events = next;
    emit({ events, isReplaying: !!(sub && sub.replaying) });
  }

  function start() {
    if (client) return;
    client = options.client || new Client(options);
    client.onState(({ state, delayMs, attempt, error }) => {
      emit({
        state,
        isConnected: state === "connected",
        isReplaying: state === "connected" && !!(sub && sub.replaying),
        reconnectInMs: delayMs ?? null,
        attempt: attempt ?? 0,
        error: error || (state === "connected" ? null : snapshot.error),
      });
    });
    emit({ state: client.state, isConnected: client.state === "connected" });
    change(wanted).catch((error) => emit({ error }));
  }

  /**
   * Replaces the subscription (and reloads its history). Resolves with the new
   * subscription id; rejects with the server's error, leaving the old one running.
   */
  async function change(subscription, { fromCursor } = {}) {
    wanted = subscription || {};
    if (!client) return null;
    const mine = ++generation;
    const spec = subscriptionSpec({ ...wanted, onDelivery: undefined });
    delete spec.id;
    let from = fromCursor ?? spec.from_cursor ?? null;
    if (from === null && history > 0 && spec.durable === undefined) {
      from = await historyStart(client, spec, Math.min(history, maxEvents));
    }
    if (from !== null) spec.from_cursor = from;
    emit({ isReplaying: from !== null });
    early = [];
    const deliver = (d) => {
      if (d.type === "event") add(d.event);
      else if (d.type === "replay_complete") emit({ isReplaying: false });
    };
    let next;
    try {
      next = await client.subscribe({
        ...spec,
        onDelivery: (d) => {
          if (mine === shown) deliver(d);
          else if (mine === generation) early.push(d);
        },
      });
    } finally {
      if (mine !== shown) emit({ isReplaying: !!(sub && sub.replaying) });
    }
    if (mine !== generation) {
      next.unsubscribe().catch(() => {});
      return null;
    }
    const old = sub;
    sub = next;
    shown = mine;
    events = [];
    seen.clear();
    emit({ events, subscriptionId: next.id, isReplaying: next.replaying, error: null });
    for (const d of early.splice(0)) deliver(d);
    if (old) old.unsubscribe().catch(() => {});
    return next.id;
  }

  function stop() {
    generation += 1;
    shown = -1;
    if (sub) sub.unsubscribe().catch(() => {});
    sub = null;
    if (client && ownClient) client.close();
    client = null;
    emit({ state: "idle", isConnected: false, isReplaying: false });
  }

  return {
    /** React's `useSyncExternalStore` pair; the first listener starts the stream. */
    subscribe(listener) {
      listeners.add(listener);
      clearTimeout(stopTimer);
      start();
      return () => {
        listeners.delete(listener);
        // Later, so that a listener that comes straight back (React's strict mode)
        // finds the stream still running.
        if (listeners.size === 0) stopTimer = setTimeout(() => listeners.size === 0 && stop(), 0);
      };
    },
    getSnapshot: () => snapshot,
    start,
    change,
    /** A fresh connection now, backoff reset. */
    reconnect() {
      if (client) client.reconnect();
      else start();
    },
    /** Forgets the events shown (the subscription goes on). */
    clear() {
      events = [];
      seen.clear();
      emit({ events });
    },
    close: stop,
    get client() {
      return client;
    },
  };
}

/**
 * React hook: `const {events, isConnected, isReplaying, error, reconnect, clear} =
 * useEventStream(React, {url, token, subscription: {patterns: ["task.>"]}})`. A change of
 * `subscription` (compared as JSON) resubscribes and reloads history.
 */
export function useEventStream(React, options) {
  const { useState, useEffect, useSyncExternalStore } = React;
  const [store] = useState(() => createEventStream(options));
  const key = JSON.stringify(options.subscription || {});
  useEffect(() => {
    if (store.client) store.change(JSON.parse(key)).catch(() => {});
  }, [store, key]);
  const snapshot = useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot);
  return { ...snapshot, reconnect: store.reconnect, clear: store.clear, setSubscription: store.change };
}
