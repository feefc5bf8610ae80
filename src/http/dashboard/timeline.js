// The live event timeline: newest first, at most MAX_ROWS rows, DOM updates batched into
// one requestAnimationFrame so that a fast stream costs one layout per frame.

export const MAX_ROWS = 500;

const FAMILIES = ["task", "agent", "workflow", "cost", "tool", "logs", "system"];
const PRIORITIES = ["critical", "high", "normal", "low"];

/** The icon family of a topic: its first segment when known; `switchyard.*` is system. */
export function topicFamily(topic) {
  const first = String(topic || "").split(".")[0].toLowerCase();
  if (first === "switchyard" || first === "system") return "system";
  if (first === "log") return "logs";
  return FAMILIES.includes(first) ? first : "other";
}

/** "just now", "12 s ago", "5 min ago", "3 h ago", "2 d ago". */
export function relativeTime(thenMs, nowMs) {
  const s = Math.floor((nowMs - thenMs) / 1000);
  if (!Number.isFinite(s) || s < 2) return "just now";
  if (s < 60) return `${s} s ago`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ago`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ago`;
  return `${Math.floor(h / 24)} d ago`;
}

/** An event's place in the router's log; events without one sort as newest. */
function cursorOf(event) {
  return typeof event.cursor === "number" ? event.cursor : Number.MAX_SAFE_INTEGER;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function icon(family) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", `icon fam-${family}`);
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("viewBox", "0 0 24 24");
  const use = document.createElementNS(ns, "use");
  use.setAttribute("href", `#icon-${family}`);
  svg.appendChild(use);
  return svg;
}

export class Timeline {
  constructor(list, { onCount }) {
    this.list = list;
    this.onCount = onCount;
    this.pending = [];
    this.frame = 0;
    this.paused = false;
    this.heldWhilePaused = 0;
    this.seen = new Set();
    setInterval(() => this.refreshTimes(), 5000);
  }

  /** Queues an event for the next frame (or holds it while paused). */
  add(event) {
    const key = String(event.cursor ?? event.id);
    if (this.seen.has(key)) return;
    this.seen.add(key);
    if (this.seen.size > MAX_ROWS * 4) {
      this.seen = new Set(Array.from(this.list.children, (li) => li.dataset.key));
    }
    this.pending.push(event);
    if (this.pending.length > MAX_ROWS) this.pending.splice(0, this.pending.length - MAX_ROWS);
    if (this.paused) {
      this.heldWhilePaused += 1;
      this.report();
      return;
    }
    this.schedule();
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    if (this.paused || this.pending.length === 0) return;
    const batch = this.pending;
    this.pending = [];
    const now = Date.now();
    // Newest first means highest cursor first. Live delivery is by priority, so an
    // older low-priority event can arrive after a newer critical one: it goes below it.
    batch.sort((a, b) => cursorOf(b) - cursorOf(a));
    const top = this.list.firstElementChild;
    const topCursor = top ? Number(top.dataset.cursor) : -Infinity;
    const fragment = document.createDocumentFragment();
    let next = top;
    for (const event of batch) {
      const row = this.row(event, now);
      const cursor = cursorOf(event);
      if (cursor > topCursor) {
        fragment.appendChild(row);
        continue;
      }
      while (next && Number(next.dataset.cursor) > cursor) next = next.nextElementSibling;
      this.list.insertBefore(row, next);
    }
    this.list.prepend(fragment);
    while (this.list.children.length > MAX_ROWS) this.list.lastElementChild.remove();
    this.report();
  }

  row(event, now) {
    const priority = PRIORITIES.includes(event.priority) ? event.priority : "normal";
    const family = topicFamily(event.topic);
    const li = el("li", `event prio-${priority}`);
    li.dataset.key = String(event.cursor ?? event.id);
    li.dataset.cursor = String(cursorOf(event));
    li.dataset.topic = event.topic || "";
    li.dataset.priority = priority;
    li.dataset.id = event.id || "";

    const head = el("button", "event-head");
    head.type = "button";
    head.setAttribute("aria-expanded", "false");
    head.appendChild(icon(family));
    head.appendChild(el("span", "prio", priority));
    head.appendChild(el("span", "topic", event.topic || event.type || "?"));
    head.appendChild(el("span", "source", event.source || ""));
    const time = el("time", "when");
    const at = Date.parse(event.timestamp);
    time.dateTime = event.timestamp || "";
    time.dataset.ms = String(at);
    time.title = event.timestamp || "";
    time.textContent = relativeTime(at, now);
    head.appendChild(time);
    li.appendChild(head);

    const detail = el("div", "event-detail");
    detail.hidden = true;
    li.appendChild(detail);
    head.addEventListener("click", () => {
      const open = head.getAttribute("aria-expanded") !== "true";
      head.setAttribute("aria-expanded", String(open));
      if (open && !detail.firstChild) this.fillDetail(detail, event);
      detail.hidden = !open;
    });
    return li;
  }

  fillDetail(detail, event) {
    const facts = el("dl", "facts");
    const fields = [
      ["cursor", event.cursor],
      ["id", event.id],
      ["type", event.type],
      ["target", event.target],
      ["agent", event.agent_id],
      ["task", event.task_id],
      ["correlation", event.correlation_id],
    ];
    for (const [name, value] of fields) {
      if (value === null || value === undefined || value === "") continue;
      facts.appendChild(el("dt", "", name));
      facts.appendChild(el("dd", "", String(value)));
    }
    detail.appendChild(facts);
    detail.appendChild(el("pre", "payload", JSON.stringify(event.payload ?? {}, null, 2)));
    if (event.metadata && Object.keys(event.metadata).length > 0) {
      detail.appendChild(el("pre", "payload metadata", JSON.stringify(event.metadata, null, 2)));
    }
  }

  refreshTimes() {
    const now = Date.now();
    for (const t of this.list.querySelectorAll("time.when")) {
      t.textContent = relativeTime(Number(t.dataset.ms), now);
    }
  }

  setPaused(paused) {
    this.paused = paused;
    if (!paused) {
      this.heldWhilePaused = 0;
      this.schedule();
    }
    this.report();
  }

  clear() {
    this.pending = [];
    this.heldWhilePaused = 0;
    this.seen.clear();
    this.list.replaceChildren();
    this.report();
  }

  report() {
    this.onCount({ shown: this.list.children.length, held: this.heldWhilePaused });
  }
}
