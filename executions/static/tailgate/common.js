// What the list and execution pages share: formatting, badges, CSRF, the connection banner.

export const FINISHED = new Set(["succeeded", "failed", "timeout", "canceled", "abandoned"]);

/** `2025-01-31 12:00:05` in UTC, as the templates print it. */
export function formatTime(iso) {
  if (!iso) return "—";
  return new Date(iso).toISOString().slice(0, 19).replace("T", " ");
}

/** `0.4 s`, `3 min 04 s`, `2 h 05 min` (executions/web/views.py formats the same way). */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "—";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const whole = Math.floor(seconds);
  const minutes = Math.floor(whole / 60);
  if (minutes < 60) return `${minutes} min ${String(whole % 60).padStart(2, "0")} s`;
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
}

export function durationOf(startedAt, finishedAt) {
  if (!startedAt) return null;
  const end = finishedAt ? new Date(finishedAt) : new Date();
  return Math.max(0, (end - new Date(startedAt)) / 1000);
}

/** Show a duration in `element`; `tickDurations` keeps it current while it runs. */
export function showDuration(element, startedAt, finishedAt) {
  element.dataset.started = startedAt || "";
  element.dataset.finished = finishedAt || "";
  element.textContent = formatDuration(durationOf(startedAt, finishedAt));
}

/** Every second, refresh the durations of the elements still running (`data-started`, no `data-finished`). */
export function tickDurations(root) {
  setInterval(() => {
    for (const cell of root.querySelectorAll("[data-started]:not([data-started=''])")) {
      if (!cell.dataset.finished) cell.textContent = formatDuration(durationOf(cell.dataset.started, null));
    }
  }, 1000);
}

export function setBadge(badge, status) {
  badge.className = `badge status-${status}`;
  badge.textContent = status;
}

export function csrfToken() {
  const input = document.querySelector("input[name=csrfmiddlewaretoken]");
  return input ? input.value : "";
}

/** POST to the API with the session's CSRF token; the JSON answer, or throws its problem detail. */
export async function postApi(url) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { Accept: "application/json", "X-CSRFToken": csrfToken() },
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `The server answered ${response.status}.`);
  return body;
}

export async function getApi(url) {
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!response.ok) {
    const error = new Error(`The server answered ${response.status}.`);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

/** Why a negative exit code (executions/web/views.py `exit_note` says the same). */
export function exitNote(code) {
  if (code === null || code === undefined || code >= 0) return "";
  const names = { 1: "SIGHUP", 2: "SIGINT", 9: "SIGKILL", 15: "SIGTERM" };
  const why = { 9: " (killed)", 15: " (canceled, timed out or the server stopped)" };
  const name = names[-code] ? `, ${names[-code]}` : "";
  return `ended by signal ${-code}${name}${why[-code] || ""}`;
}

/** A connection state in words: the list's live indicator, each output pane's bar. */
export const STATE_TEXT = {
  idle: "updates paused",
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  limited: "over the stream limit",
  stopped: "stopped",
  // An output pane's subscription:
  ended: "complete",
  gone: "no longer visible",
  failed: "could not load",
};

const BANNER_TEXT = {
  reconnecting: "The live connection dropped.",
  limited: "Over the stream limit:",
  stopped: "Live updates stopped:",
};

function clockOf(ms) {
  return new Date(ms).toISOString().slice(11, 19);
}

/**
 * Say the connection's state in words in `banner` (#live-banner): why it is not live, when it
 * retries next (counting down), a Retry button, and after a logout a link to the login.
 */
export function connectionBanner(banner, live) {
  if (!banner) return;
  const text = banner.querySelector("[data-text]");
  const retry = banner.querySelector("[data-retry]");
  const login = banner.querySelector("[data-login]");
  let timer = null;
  retry.addEventListener("click", () => live.retry());
  live.onState((state) => {
    clearInterval(timer);
    banner.dataset.state = state.state;
    const lead = BANNER_TEXT[state.state];
    banner.hidden = !lead;
    if (!lead) return;
    const stopped = state.state === "stopped";
    retry.hidden = stopped;
    login.hidden = !stopped;
    const detail = stopped
      ? `${state.detail || "you are logged out, or your access was withdrawn."} Log in again to continue.`
      : state.detail || "";
    const show = () => {
      const seconds = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
      const when = state.retryAt ? ` Retrying at ${clockOf(state.retryAt)} UTC (in ${seconds} s).` : "";
      text.textContent = `${lead} ${detail}${stopped ? "" : when}`.replace(/\s+/g, " ").trim();
    };
    show();
    if (state.retryAt && !stopped) timer = setInterval(show, 1000);
  });
}
