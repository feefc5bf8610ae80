// The dead-letter view: the list from GET /api/dead-letters with reason and attempts, and
// Retry / Delete buttons (admin only; a non-admin sees the server's 403 message).

import { api } from "./api.js";
import { relativeTime } from "./timeline.js";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export class DeadLetters {
  constructor(root) {
    this.root = root;
    this.list = root.querySelector("#dl-list");
    this.message = root.querySelector("#dl-message");
    this.count = root.querySelector("#dl-count");
    this.loading = false;
    this.listFailed = false;
    root.querySelector("#dl-refresh").addEventListener("click", () => this.load());
  }

  say(text, level = "info") {
    this.message.textContent = text;
    this.message.dataset.level = level;
    this.message.hidden = !text;
  }

  async load() {
    if (this.loading) return;
    this.loading = true;
    try {
      const rows = await api("/api/dead-letters?limit=100");
      this.render(rows || []);
      if (this.listFailed) this.say("");
      this.listFailed = false;
    } catch (e) {
      this.list.replaceChildren();
      this.count.textContent = "";
      this.listFailed = true;
      if (e.status === 403) this.say(`Dead letters need an admin token: ${e.message}`, "error");
      else if (e.status !== 401) this.say(`Could not list dead letters: ${e.message}`, "error");
    } finally {
      this.loading = false;
    }
  }

  // Rows are keyed by id and reused: a reload (after every stats tick that saw a new dead
  // letter) must not swap the buttons out from under a pointer or the keyboard focus.
  render(rows) {
    this.count.textContent = `(${rows.length})`;
    if (rows.length === 0) {
      this.list.replaceChildren(el("li", "empty", "No dead letters."));
      return;
    }
    const existing = new Map(
      Array.from(this.list.querySelectorAll("li.dead-letter"), (li) => [li.dataset.id, li]),
    );
    const now = Date.now();
    const items = rows.map((dl) => {
      const li = existing.get(String(dl.id)) || this.row(dl);
      li.querySelector(".dl-facts").textContent =
        `#${dl.id} · ${dl.reason} · ${dl.attempts} attempt${dl.attempts === 1 ? "" : "s"}` +
        ` · ${relativeTime(Date.parse(dl.dead_at), now)} · sub ${dl.subscription}`;
      return li;
    });
    const same =
      items.length === this.list.children.length &&
      items.every((li, i) => this.list.children[i] === li);
    if (!same) this.list.replaceChildren(...items);
  }

  /** A new row for dead letter `dl`: topic, priority, facts (filled by render), buttons. */
  row(dl) {
    const li = el("li", "dead-letter");
    li.dataset.id = String(dl.id);
    const event = dl.event || {};
    const head = el("div", "dl-head");
    head.appendChild(el("span", "topic", event.topic || "?"));
    head.appendChild(el("span", `prio prio-${event.priority || "normal"}`, event.priority || ""));
    li.appendChild(head);
    li.appendChild(el("p", "dl-facts"));
    const actions = el("div", "dl-actions");
    const retry = el("button", "small", "Retry");
    retry.type = "button";
    retry.dataset.action = "retry";
    retry.setAttribute("aria-label", `Retry dead letter ${dl.id}`);
    retry.addEventListener("click", () =>
      this.act(dl.id, "retry", () =>
        api(`/api/dead-letters/${encodeURIComponent(dl.id)}/retry`, { method: "POST" }),
      ),
    );
    const remove = el("button", "small danger", "Delete");
    remove.type = "button";
    remove.dataset.action = "delete";
    remove.setAttribute("aria-label", `Delete dead letter ${dl.id}`);
    remove.addEventListener("click", () =>
      this.act(dl.id, "delete", () =>
        api(`/api/dead-letters/${encodeURIComponent(dl.id)}`, { method: "DELETE" }),
      ),
    );
    actions.append(retry, remove);
    li.appendChild(actions);
    return li;
  }

  async act(id, what, call) {
    try {
      const result = await call();
      if (what === "retry") {
        const how = result && result.retried ? result.retried : "retried";
        this.say(`Dead letter ${id} ${how}.`);
      } else {
        this.say(`Dead letter ${id} deleted.`);
      }
    } catch (e) {
      const prefix = e.status === 403 ? "Not allowed" : `Could not ${what} dead letter ${id}`;
      this.say(`${prefix}: ${e.message}`, "error");
    }
    await this.load();
  }
}
