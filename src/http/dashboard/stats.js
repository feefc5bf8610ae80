// The stats panel: polls /api/stats, shows the counters, and draws events published per
// second for each priority over the last few minutes on a canvas.

export const PRIORITIES = ["critical", "high", "normal", "low"];
/** Samples kept for the chart: five minutes at one per second. */
export const HISTORY = 300;
/** The chart spans at least this many samples, growing to HISTORY as they come. */
const MIN_SPAN = 60;

/**
 * Per-priority rates between two /api/stats samples (`{at, published}` with `at` in ms and
 * `published` the per-priority totals). A counter that went down (server restarted)
 * gives 0, not a negative rate.
 */
export function ratesBetween(prev, next) {
  const seconds = (next.at - prev.at) / 1000;
  const rates = {};
  for (const p of PRIORITIES) {
    const delta = (next.published[p] ?? 0) - (prev.published[p] ?? 0);
    rates[p] = seconds > 0 && delta > 0 ? delta / seconds : 0;
  }
  return rates;
}

/** The smallest 1, 2 or 5 × 10^n at or above `value` (at least 1): the chart's y-axis top. */
export function niceCeiling(value) {
  if (!(value > 1)) return 1;
  const exp = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 5, 10]) {
    if (m * exp >= value) return m * exp;
  }
  return 10 * exp;
}

function formatRate(r) {
  if (r >= 100) return r.toFixed(0);
  if (r >= 10) return r.toFixed(1);
  return r.toFixed(2);
}

export class StatsPanel {
  constructor(root) {
    this.root = root;
    this.canvas = root.querySelector("canvas");
    this.history = [];
    this.last = null;
    this.colors = {};
    const style = getComputedStyle(document.documentElement);
    for (const p of PRIORITIES) {
      this.colors[p] = style.getPropertyValue(`--${p}`).trim() || "#888";
    }
    this.grid = style.getPropertyValue("--grid").trim() || "#333";
    this.text = style.getPropertyValue("--muted").trim() || "#aaa";
    new ResizeObserver(() => this.draw()).observe(this.canvas);
  }

  /** Takes one /api/stats answer. */
  update(stats) {
    const sample = { at: performance.now(), published: stats.events.published };
    if (this.last) {
      this.history.push(ratesBetween(this.last, sample));
      if (this.history.length > HISTORY) this.history.shift();
    }
    this.last = sample;
    this.set("published", stats.events.published.total);
    this.set("delivered", stats.events.delivered.total);
    this.set("dropped", stats.events.dropped.total);
    this.set("dead-lettered", stats.events.dead_lettered.total);
    this.set("connections", stats.connections.open);
    this.set("subscriptions", stats.subscriptions);
    this.set("rate-published", formatRate(stats.rates_per_second.published));
    this.set("rate-delivered", formatRate(stats.rates_per_second.delivered));
    for (const p of PRIORITIES) this.set(`queue-${p}`, stats.queues[p]);
    this.set("queue-total", stats.queues.total);
    const latest = this.history[this.history.length - 1];
    for (const p of PRIORITIES) this.set(`rate-${p}`, latest ? formatRate(latest[p]) : "–");
    this.canvas.dataset.samples = String(this.history.length);
    this.draw();
  }

  set(name, value) {
    const node = this.root.querySelector(`[data-stat="${name}"]`);
    if (node) node.textContent = String(value ?? "–");
  }

  /** Redraws the chart: one line per priority, newest sample at the right edge. */
  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (width === 0 || height === 0) return;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    const left = 36;
    const bottom = height - 16;
    const top = 6;
    const plotW = width - left - 6;
    const plotH = bottom - top;
    let peak = 0;
    for (const s of this.history) for (const p of PRIORITIES) peak = Math.max(peak, s[p]);
    const ceiling = niceCeiling(peak);

    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = this.text;
    ctx.strokeStyle = this.grid;
    ctx.lineWidth = 1;
    ctx.textBaseline = "middle";
    for (const f of [0, 0.5, 1]) {
      const y = Math.round(bottom - f * plotH) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(left + plotW, y);
      ctx.stroke();
      ctx.textAlign = "right";
      ctx.fillText(String(+(ceiling * f).toFixed(2)), left - 4, y);
    }
    ctx.textBaseline = "alphabetic";
    ctx.textAlign = "left";
    const span = Math.min(HISTORY, Math.max(MIN_SPAN, this.history.length));
    ctx.fillText(span >= 120 ? `−${Math.round(span / 60)} min` : `−${span} s`, left, height - 3);
    ctx.textAlign = "right";
    ctx.fillText("now", left + plotW, height - 3);

    const step = plotW / (span - 1);
    const x0 = left + plotW - (this.history.length - 1) * step;
    ctx.lineWidth = 1.75;
    ctx.lineJoin = "round";
    // Lowest priority first, so critical is drawn on top.
    for (const p of [...PRIORITIES].reverse()) {
      ctx.strokeStyle = this.colors[p];
      ctx.beginPath();
      this.history.forEach((s, i) => {
        const x = x0 + i * step;
        const y = bottom - (s[p] / ceiling) * plotH;
        if (i === 0) ctx.moveTo(x, y);
        else ctx.lineTo(x, y);
      });
      ctx.stroke();
    }
  }
}
