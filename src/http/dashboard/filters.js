// The filter bar: quick filters, a pattern field, a CEL condition field and priority
// toggles, turned into one subscription (docs/protocol.md section 4, subscriptions).

export const QUICK_FILTERS = [
  { label: "All", patterns: "" },
  { label: "Task", patterns: "task.>" },
  { label: "Agent", patterns: "agent.>" },
  { label: "Workflow", patterns: "workflow.>" },
  { label: "Cost", patterns: "cost.>" },
  { label: "Tool", patterns: "tool.>" },
  { label: "Logs", patterns: "logs.>" },
  { label: "System", patterns: "system.>, switchyard.>" },
];

export const PRIORITIES = ["critical", "high", "normal", "low"];

/** Topic patterns typed by the user: separated by commas or spaces. */
export function parsePatterns(text) {
  return String(text || "")
    .split(/[\s,]+/)
    .filter((p) => p.length > 0);
}

/**
 * The subscription for a filter state: patterns, a condition and the selected
 * priorities; every part given must match. No constraint at all is `{"type": "all"}`.
 */
export function buildSubscription({ patterns = "", condition = "", priorities = PRIORITIES }) {
  const sub = {};
  const list = parsePatterns(patterns);
  if (list.length > 0) {
    sub.type = "pattern";
    sub.patterns = list;
  }
  const cel = condition.trim();
  if (cel) {
    sub.type = sub.type || "conditional";
    sub.condition = cel;
  }
  const chosen = PRIORITIES.filter((p) => priorities.includes(p));
  if (chosen.length > 0 && chosen.length < PRIORITIES.length) {
    sub.type = sub.type || "filtered";
    sub.filter = { priorities: chosen };
  }
  sub.type = sub.type || "all";
  return sub;
}

/** A short human description of a subscription, for the status line. */
export function describe(sub) {
  const parts = [];
  parts.push(sub.patterns ? sub.patterns.join(", ") : "all topics");
  if (sub.filter && sub.filter.priorities) parts.push(sub.filter.priorities.join("+"));
  if (sub.condition) parts.push(`where ${sub.condition}`);
  return parts.join(" · ");
}

export class FilterBar {
  /** `onChange(spec)` returns a promise that rejects with the server's error reply. */
  constructor(root, { onChange }) {
    this.root = root;
    this.onChange = onChange;
    this.form = root.querySelector("#filter-form");
    this.patternInput = root.querySelector("#pattern");
    this.conditionInput = root.querySelector("#condition");
    this.conditionError = root.querySelector("#condition-error");
    this.patternError = root.querySelector("#pattern-error");
    this.quick = root.querySelector("#quick-filters");
    this.priorityButtons = Array.from(root.querySelectorAll("[data-priority-toggle]"));

    for (const q of QUICK_FILTERS) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "chip";
      b.textContent = q.label;
      b.dataset.patterns = q.patterns;
      b.setAttribute("aria-pressed", String(q.patterns === ""));
      b.addEventListener("click", () => {
        this.patternInput.value = q.patterns;
        this.apply();
      });
      this.quick.appendChild(b);
    }
    for (const b of this.priorityButtons) {
      b.addEventListener("click", () => {
        const on = b.getAttribute("aria-pressed") === "true";
        const others = this.priorityButtons.filter(
          (o) => o !== b && o.getAttribute("aria-pressed") === "true",
        );
        if (on && others.length === 0) return; // at least one priority stays on
        b.setAttribute("aria-pressed", String(!on));
        this.apply();
      });
    }
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.apply();
    });
  }

  state() {
    return {
      patterns: this.patternInput.value,
      condition: this.conditionInput.value,
      priorities: this.priorityButtons
        .filter((b) => b.getAttribute("aria-pressed") === "true")
        .map((b) => b.dataset.priorityToggle),
    };
  }

  spec() {
    return buildSubscription(this.state());
  }

  markQuick() {
    const current = parsePatterns(this.patternInput.value).join(",");
    for (const b of this.quick.children) {
      b.setAttribute("aria-pressed", String(parsePatterns(b.dataset.patterns).join(",") === current));
    }
  }

  showError(err) {
    const text = `${err.code}: ${err.message}`;
    const conditionProblem = err.code === "invalid_condition";
    const target = conditionProblem ? this.conditionError : this.patternError;
    const input = conditionProblem ? this.conditionInput : this.patternInput;
    target.textContent = text;
    target.hidden = false;
    input.setAttribute("aria-invalid", "true");
  }

  clearErrors() {
    for (const [box, input] of [
      [this.conditionError, this.conditionInput],
      [this.patternError, this.patternInput],
    ]) {
      box.textContent = "";
      box.hidden = true;
      input.removeAttribute("aria-invalid");
    }
  }

  async apply() {
    this.markQuick();
    const state = this.state();
    try {
      await this.onChange(buildSubscription(state));
      this.clearErrors();
    } catch (err) {
      this.clearErrors();
      this.showError(err);
    }
  }
}
