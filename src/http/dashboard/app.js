// The dashboard's entry point: wires the connection, timeline, filter bar, stats panel,
// dead-letter view and token prompt together. Every piece of data comes from the public
// API: the WebSocket protocol on /ws, GET /api/stats and the /api/dead-letters endpoints.

import { api, currentToken, getToken, setToken, socketUrl } from "./api.js";
import { DeadLetters } from "./deadletters.js";
import { FilterBar, describe } from "./filters.js";
import { Feed } from "./feed.js";
import { StatsPanel } from "./stats.js";
import { Timeline, MAX_ROWS } from "./timeline.js";

const STATS_INTERVAL_MS = 1000;

const $ = (selector) => document.querySelector(selector);

const statusBox = $("#status");
const statusText = $("#status-text");
const notice = $("#notice");
const timelineList = $("#timeline");
const subStatus = $("#sub-status");
const rowCount = $("#row-count");
const pauseButton = $("#pause");
const tokenDialog = $("#token-dialog");
const tokenForm = $("#token-form");
const tokenInput = $("#token-input");
const tokenError = $("#token-error");

let authNeeded = false;
let lastDeadLettered = null;

function showNotice({ level, text }) {
  notice.textContent = text;
  notice.dataset.level = level;
  notice.hidden = false;
}

function setStatus(status, detail) {
  statusBox.dataset.state = status;
  const labels = {
    connecting: "Connecting…",
    connected: "Connected",
    suspended: authNeeded ? "Token needed" : "Disconnected",
  };
  statusText.textContent =
    status === "waiting"
      ? `Reconnecting in ${Math.ceil(detail.delayMs / 1000)} s (attempt ${detail.attempt})`
      : labels[status] || status;
}

const timeline = new Timeline(timelineList, {
  onCount: ({ shown, held }) => {
    rowCount.textContent =
      held > 0 ? `${shown} shown · ${held} new while paused` : `${shown} shown (max ${MAX_ROWS})`;
    timelineList.dataset.rows = String(shown);
    $("#timeline-empty").hidden = shown > 0;
  },
});

const connection = new Feed({
  url: socketUrl,
  token: currentToken,
  history: MAX_ROWS,
  onStatus: setStatus,
  onEvent: (event) => timeline.add(event),
  onReset: () => timeline.clear(),
  onNotice: showNotice,
  onSubscribed: (sub, id) => {
    subStatus.textContent = `Subscribed: ${describe(sub)}`;
    subStatus.title = `subscription ${id}`;
    timelineList.dataset.subscription = id;
    timelineList.dataset.patterns = (sub.patterns || []).join(",");
    timelineList.dataset.condition = sub.condition || "";
  },
});

const filters = new FilterBar($("#filters"), {
  onChange: async (spec) => {
    const id = await connection.change(spec);
    if (id === null) subStatus.textContent = `Not connected; will subscribe to: ${describe(spec)}`;
  },
});

const stats = new StatsPanel($("#stats"));
const deadLetters = new DeadLetters($("#dead-letters"));

pauseButton.addEventListener("click", () => {
  const paused = pauseButton.getAttribute("aria-pressed") !== "true";
  pauseButton.setAttribute("aria-pressed", String(paused));
  pauseButton.textContent = paused ? "Resume" : "Pause";
  timeline.setPaused(paused);
});

$("#clear").addEventListener("click", () => timeline.clear());

$("#replay-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const raw = $("#replay-cursor").value.trim();
  const cursor = raw === "" ? 0 : Number(raw);
  if (!Number.isInteger(cursor) || cursor < 0) {
    showNotice({ level: "error", text: "The replay cursor must be a whole number, 0 or more." });
    return;
  }
  try {
    await connection.change(filters.spec(), cursor);
    showNotice({ level: "info", text: `Replaying stored events after cursor ${cursor}…` });
  } catch (err) {
    showNotice({ level: "error", text: `${err.code}: ${err.message}` });
  }
});

$("#reconnect").addEventListener("click", () => {
  if (authNeeded) {
    askForToken("");
    return;
  }
  connection.connectNow();
});

$("#token-button").addEventListener("click", () => askForToken(""));

function askForToken(message) {
  tokenError.textContent = message;
  tokenError.hidden = !message;
  tokenInput.value = "";
  if (!tokenDialog.open) tokenDialog.showModal();
  tokenInput.focus();
}

tokenForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  const token = tokenInput.value.trim();
  const previous = getToken();
  setToken(token);
  try {
    await api("/api/stats");
  } catch (err) {
    if (err.status === 401) {
      setToken(previous);
      askForToken("That token was refused (401). Check it and try again.");
      return;
    }
  }
  tokenDialog.close();
  authNeeded = false;
  connection.start();
  deadLetters.load();
});

$("#token-cancel").addEventListener("click", () => tokenDialog.close());

/** One /api/stats poll; a 401 means a token is needed: stop and ask for one. */
async function pollStats() {
  try {
    const s = await api("/api/stats");
    stats.update(s);
    const node = $("#node-name");
    node.textContent = s.node ? `node ${s.node}` : "";
    node.hidden = !s.node;
    $("#stats-error").hidden = true;
    if (s.events.dead_lettered.total !== lastDeadLettered) {
      lastDeadLettered = s.events.dead_lettered.total;
      deadLetters.load();
    }
    return true;
  } catch (err) {
    if (err.status === 401) {
      if (!authNeeded) {
        authNeeded = true;
        connection.suspend();
        askForToken(getToken() ? "The saved token was refused (401)." : "");
      }
      return false;
    }
    $("#stats-error").textContent = `Stats unavailable: ${err.message}`;
    $("#stats-error").hidden = false;
    return true;
  }
}

async function statsLoop() {
  if (!authNeeded || !tokenDialog.open) await pollStats();
  setTimeout(statsLoop, STATS_INTERVAL_MS);
}

async function main() {
  // Probe first, so that with auth on the token is asked for before any WebSocket attempt.
  const ok = await pollStats();
  if (ok) connection.start();
  setTimeout(statsLoop, STATS_INTERVAL_MS);
}

main();
