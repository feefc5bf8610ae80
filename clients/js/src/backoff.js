// Reconnect policy as pure functions, so that tests can check them directly: the delay
// before an attempt (exponential backoff with jitter) and which URL to try next (round
// robin, one wait per full round). The same schedule as the Rust client
// (src/client/backoff.rs, src/client/rotation.rs).

/** 1 s, 2 s, 4 s ... up to 30 s, each spread by ±20 %. */
export const DEFAULT_BACKOFF = Object.freeze({
  initialMs: 1000,
  maxMs: 30000,
  multiplier: 2,
  jitter: 0.2,
});

const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));

/**
 * The wait before reconnect attempt `attempt` (1 for the first retry), for `random` in
 * [0, 1): `initialMs × multiplier^(attempt-1)`, capped at `maxMs`, then spread by
 * ± `jitter` so that many clients cut off together do not come back together.
 */
export function backoffDelay(attempt, random = Math.random(), policy = DEFAULT_BACKOFF) {
  const p = { ...DEFAULT_BACKOFF, ...policy };
  const n = clamp(Math.floor(Number(attempt) || 0) - 1, 0, 64);
  const base = Math.min(p.initialMs * Math.max(1, p.multiplier) ** n, p.maxMs);
  const jitter = clamp(p.jitter, 0, 1);
  const r = clamp(Number(random) || 0, 0, 1);
  return Math.max(0, Math.round(base * (1 + jitter * (2 * r - 1))));
}

/**
 * After `failures` (1 for the first) failed or lost connections in a row, the last on
 * `urls[index]`: the next URL, and the backoff round to wait first (`null`: try at
 * once). A URL not yet tried in this round is tried at once; after a full round of
 * failures the client waits `backoffDelay(round)`.
 */
export function nextAttempt(index, urlCount, failures) {
  const urls = Math.max(1, urlCount | 0);
  const f = Math.max(1, failures | 0);
  return {
    index: ((index % urls) + 1) % urls,
    wait: f % urls === 0 ? f / urls : null,
  };
}
