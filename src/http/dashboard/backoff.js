// Reconnect delays: exponential backoff with jitter, from 1 s up to 30 s.
// A pure function, so the browser tests can check it directly.

export const MIN_DELAY_MS = 1000;
export const MAX_DELAY_MS = 30000;

/**
 * The wait before reconnect attempt `attempt` (0 for the first retry): 1 s doubled per
 * attempt, capped at 30 s, then spread by ±20 % so that many dashboards that lost the
 * same server do not all come back at the same instant. Always within [1 s, 30 s].
 * `random` returns a number in [0, 1) (Math.random by default).
 */
export function backoffDelay(attempt, random = Math.random) {
  const n = Math.max(0, Math.min(attempt, 16));
  const base = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** n);
  const jittered = base * (0.8 + 0.4 * random());
  return Math.round(Math.min(MAX_DELAY_MS, Math.max(MIN_DELAY_MS, jittered)));
}
