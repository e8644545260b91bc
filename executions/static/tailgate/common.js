// What the list and execution pages share: formatting, badges, CSRF, and a live event stream.

export const FINISHED = new Set(["succeeded", "failed", "timeout", "canceled", "abandoned"]);

// Retry delays after the server refused a stream outright (a 4xx/5xx answer ends an
// EventSource for good; a dropped connection is retried by EventSource itself).
const RETRY_MS = [1000, 2000, 5000, 10000, 30000];

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

/**
 * A lifecycle event stream (`/api/v1/stream?…`): EventSource resumes a dropped connection
 * with Last-Event-ID by itself; a refused one is opened again after a delay. `onOpen` runs on
 * every (re)connection, so the page can reconcile with the API after a gap it cannot replay
 * (a new EventSource has no Last-Event-ID), and `onState` reports live / reconnecting.
 */
export class EventStream {
  constructor(url, { onEvent, onOpen, onState }) {
    this.url = url;
    this.onEvent = onEvent;
    this.onOpen = onOpen || (() => {});
    this.onState = onState || (() => {});
    this.failures = 0;
    this.closed = false;
    this.source = null;
    this.timer = null;
  }

  open() {
    if (this.closed) return;
    const source = new EventSource(this.url);
    this.source = source;
    this.onState("connecting");
    source.onopen = () => {
      this.failures = 0;
      this.onState("live");
      this.onOpen();
    };
    source.onerror = () => {
      if (source.readyState !== EventSource.CLOSED) {
        this.onState("reconnecting");
        return;
      }
      this.source = null;
      this.onState("retrying");
      const delay = RETRY_MS[Math.min(this.failures++, RETRY_MS.length - 1)];
      this.timer = setTimeout(() => this.open(), delay);
    };
    for (const name of ["execution__create", "execution__update"]) {
      source.addEventListener(name, (event) => this.onEvent(name, JSON.parse(event.data)));
    }
    // The cursor was older than the event log keeps: what the page shows may be stale.
    source.addEventListener("reset", () => this.onOpen());
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    this.source = null;
    this.onState("closed");
  }
}

const STATE_TEXT = {
  idle: "updates paused",
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  retrying: "reconnecting…",
  closed: "",
};

export function showState(element, state) {
  if (!element) return;
  element.dataset.state = state;
  element.textContent = STATE_TEXT[state] ?? state;
}
