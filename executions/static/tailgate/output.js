// The output pane: one execution's lines, live over SSE, rendered once per animation frame,
// with a bounded number of rows in the DOM and the rest reachable through "load earlier".
//
// The DOM always holds one contiguous run of seqs [first, last]. `cursor` is the highest seq
// the stream delivered. Following: new lines are appended, the oldest rows trimmed, and the
// pane kept at the bottom. Paused (the reader scrolled up): new lines are appended below
// until the cap, then the pane "detaches" (nothing above the reader is ever removed) and
// offers a jump to the latest lines, which reads them as a range.

import { AnsiUp } from "./ansi_up.js";
import { RowBlocks } from "./rows.js";

// Rows kept in the DOM: a long scroll back, still cheap for layout; the rest via "load earlier".
export const DOM_CAP = 10000;
// Lines the stream replays when the pane opens (`from=-FIRST_WINDOW`).
export const FIRST_WINDOW = 5000;
// Lines one "load earlier" click (or a jump to the latest) reads: the lines endpoint's page.
export const LOAD_PAGE = 5000;
// A reconnection replays at most this many missed lines (the server's maximum); a longer
// outage shows the newest ones, the rest through "load earlier".
const RESUME_REPLAY_LIMIT = 50000;
// Rows built per animation frame: 6x what 5,000 lines/s needs at 60 frames/s, so a backlog
// drains quickly, while one frame's work stays a few milliseconds.
const ROWS_PER_FRAME = 500;
// Lines waiting for a frame (a hidden tab gets none): past this the oldest are dropped.
const QUEUE_CAP = DOM_CAP;
// This close to the bottom counts as "at the bottom" (follow mode).
const BOTTOM_SLACK_PX = 24;
// Retry delays after the server refused the stream (EventSource gives up on a 4xx/5xx).
const RETRY_MS = [1000, 2000, 5000, 10000, 30000];

const CONN_TEXT = {
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  retrying: "reconnecting…",
  ended: "complete",
  paused: "not following live",
  gone: "no longer visible",
  failed: "could not load",
};

/** The text a terminal would show for a stored chunk (its newline and `\r` redraws resolved). */
export function lineText(data) {
  let text = data.endsWith("\n") ? data.slice(0, -1) : data;
  if (text.endsWith("\r")) text = text.slice(0, -1);
  const redraw = text.lastIndexOf("\r"); // a progress bar: show its last state
  return redraw >= 0 ? text.slice(redraw + 1) : text;
}

/** Fills rows; ANSI state (an open colour) carries over from line to line per output type. */
class Renderer {
  constructor() {
    this.ansi = new Map();
  }

  fill(row, chunk) {
    let ansi = this.ansi.get(chunk.output_type);
    if (!ansi) {
      ansi = new AnsiUp();
      ansi.use_classes = true; // colours come from the stylesheet, tuned for contrast
      this.ansi.set(chunk.output_type, ansi);
    }
    const text = lineText(chunk.data);
    const styled = ansi.fg || ansi.bg || ansi.bold || ansi.faint || ansi.italic || ansi.underline;
    if (styled || text.includes("\x1b")) row.innerHTML = ansi.ansi_to_html(text); // escapes HTML
    else row.textContent = text;
  }
}

export class OutputPane {
  /**
   * `root`: a clone of the page's #pane-template. `urls`: {stream, lines, download, api}.
   * `onDone(data)` gets the stream's `done` event.
   */
  constructor(root, urls, { onDone = () => {}, label = "Output" } = {}) {
    this.root = root;
    this.urls = urls;
    this.onDoneCallback = onDone;
    this.log = root.querySelector("[data-log]");
    this.lines = root.querySelector("[data-lines]");
    this.earlierButton = root.querySelector("[data-earlier]");
    this.jumpButton = root.querySelector("[data-jump]");
    this.followButton = root.querySelector("[data-follow]");
    this.conn = root.querySelector("[data-conn]");
    this.empty = root.querySelector("[data-empty]");
    this.log.setAttribute("aria-label", `${label} lines`);
    root.querySelector("[data-download]").href = urls.download;

    this.rows = new RowBlocks(this.lines);
    this.first = null; // seq of the first row in the DOM
    this.last = null; // seq of the last row in the DOM
    this.count = 0;
    this.cursor = 0; // highest seq the stream delivered
    this.queue = [];
    this.following = true;
    this.detached = false;
    this.loading = false;
    this.ended = false;
    this.source = null;
    this.failures = 0;
    this.frameRequested = false;
    this.live = new Renderer();
    this.bind();
  }

  bind() {
    this.log.addEventListener("scroll", () => this.onScroll(), { passive: true });
    // End resumes following outright: a native scroll to the bottom can land short of it
    // while lines keep arriving, and then following would not resume.
    this.log.addEventListener("keydown", (event) => {
      if (event.key === "End") {
        event.preventDefault();
        this.jumpToLatest();
      }
    });
    this.earlierButton.addEventListener("click", () => this.loadEarlier());
    this.jumpButton.addEventListener("click", () => this.jumpToLatest());
    this.followButton.addEventListener("click", () => {
      if (this.following) this.setFollowing(false);
      else this.jumpToLatest();
    });
    for (const box of this.root.querySelectorAll("[data-show]")) {
      box.addEventListener("change", () => {
        this.log.classList.toggle(`hide-${box.dataset.show}`, !box.checked);
        if (this.following) this.scrollToBottom();
      });
    }
  }

  // --- the stream -----------------------------------------------------------------------

  start() {
    if (this.source || this.ended) return;
    this.connect(this.cursor > 0 ? this.cursor + 1 : null);
  }

  stop() {
    clearTimeout(this.retryTimer);
    if (this.source) this.source.close();
    this.source = null;
  }

  connect(fromSeq) {
    const from = fromSeq === null ? -FIRST_WINDOW : fromSeq;
    const source = new EventSource(`${this.urls.stream}?from=${from}&replay_limit=${RESUME_REPLAY_LIMIT}`);
    this.source = source;
    this.setConn("connecting");
    source.onopen = () => {
      this.failures = 0;
      this.setConn("live");
    };
    source.onerror = () => {
      if (source.readyState !== EventSource.CLOSED) {
        this.setConn("reconnecting"); // EventSource resumes with Last-Event-ID by itself
        return;
      }
      this.source = null;
      this.retryLater();
    };
    source.addEventListener("execution.output__create", (event) => this.onChunk(JSON.parse(event.data)));
    source.addEventListener("gap", (event) => this.onGap(JSON.parse(event.data)));
    source.addEventListener("done", (event) => this.onDone(JSON.parse(event.data)));
  }

  retryLater() {
    this.setConn("retrying");
    const delay = RETRY_MS[Math.min(this.failures++, RETRY_MS.length - 1)];
    this.retryTimer = setTimeout(async () => {
      // A refused stream may mean the execution is gone for this user (or the session is):
      // ask the API before trying again, instead of retrying forever.
      const answer = await fetch(this.urls.api, { credentials: "same-origin" }).catch(() => null);
      if (answer && [401, 403, 404].includes(answer.status)) {
        this.setConn("gone");
        return;
      }
      // A new EventSource has no Last-Event-ID: resume from the cursor through `from`.
      if (!this.ended) this.connect(this.cursor > 0 ? this.cursor + 1 : null);
    }, delay);
  }

  onChunk(chunk) {
    if (chunk.seq <= this.cursor) return; // never shown twice
    this.cursor = chunk.seq;
    if (this.detached) {
      this.schedule(); // only the "newer lines" count changes
      return;
    }
    this.queue.push(chunk);
    if (this.queue.length > 2 * QUEUE_CAP) this.queue = this.queue.slice(-QUEUE_CAP);
    this.schedule();
  }

  onGap(gap) {
    if (gap.reason === "purged") this.root.dataset.purged = "true";
    // Other gaps need nothing: the next chunk's seq shows the jump, and "load earlier" reads it.
  }

  onDone(data) {
    this.ended = true;
    this.stop();
    this.finalSeq = data.final_seq;
    if (data.output_purged_at) this.root.dataset.purged = "true";
    this.setConn("ended");
    this.schedule();
    this.onDoneCallback(data);
  }

  // --- rendering ------------------------------------------------------------------------

  schedule() {
    if (this.frameRequested) return;
    this.frameRequested = true;
    requestAnimationFrame(() => this.frame());
  }

  frame() {
    this.frameRequested = false;
    if (!this.loading) this.renderQueued();
    if (this.following && !this.detached) this.scrollToBottom();
    this.updateControls();
    if (this.queue.length && !this.loading) this.schedule();
  }

  renderQueued() {
    let start = 0;
    while (start < this.queue.length && this.last !== null && this.queue[start].seq <= this.last) start++;
    // Following, older lines than the cap would be trimmed at once: skip them.
    if (this.following && this.queue.length - start > DOM_CAP) start = this.queue.length - DOM_CAP;
    const end = Math.min(this.queue.length, start + ROWS_PER_FRAME);
    let batch = this.queue.slice(start, end);
    this.queue = this.queue.slice(end);
    if (!batch.length) return;
    if (this.last !== null && batch[0].seq !== this.last + 1) {
      // Not contiguous (a long outage, or a dropped backlog). Following: start afresh here,
      // the skipped lines are "earlier". Paused: leave the reader's rows alone.
      if (!this.following) return this.detach();
      this.clear();
    }
    if (!this.following && this.count + batch.length > DOM_CAP) {
      batch = batch.slice(0, DOM_CAP - this.count);
      this.append(batch);
      return this.detach();
    }
    this.append(batch);
    if (this.count > DOM_CAP) this.trimTop(DOM_CAP);
  }

  makeRow(chunk, renderer) {
    const row = document.createElement("div");
    row.className = chunk.data.endsWith("\n") ? `line ${chunk.output_type}` : `line ${chunk.output_type} cont`;
    row.dataset.seq = chunk.seq;
    renderer.fill(row, chunk);
    return row;
  }

  append(chunks) {
    if (!chunks.length) return;
    this.rows.append(chunks.map((chunk) => this.makeRow(chunk, this.live)));
    this.syncBounds();
  }

  prepend(chunks) {
    const renderer = new Renderer(); // earlier lines do not share the live ANSI state
    const before = this.log.scrollHeight;
    this.rows.prepend(chunks.map((chunk) => this.makeRow(chunk, renderer)));
    this.log.scrollTop += this.log.scrollHeight - before; // the reader's lines stay in place
    this.syncBounds();
  }

  trimTop(cap) {
    this.rows.trimTop(cap);
    this.syncBounds();
  }

  trimBottom(cap) {
    this.rows.trimBottom(cap);
    this.syncBounds();
  }

  clear() {
    this.rows.clear();
    this.syncBounds();
  }

  syncBounds() {
    this.first = this.rows.first;
    this.last = this.rows.last;
    this.count = this.rows.count;
  }

  detach() {
    this.detached = true;
    this.queue = [];
    this.setFollowing(false);
  }

  // --- reading ranges ("load earlier", "jump to latest") ----------------------------------

  async fetchRange(from, to) {
    const url = `${this.urls.lines}?from=${from}&to=${to}`;
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`lines ${from}-${to}: ${response.status}`);
    return (await response.json()).chunks;
  }

  async loadEarlier() {
    const before = this.first ?? this.cursor + 1;
    if (this.loading || before <= 1) return;
    this.loading = true;
    this.earlierButton.disabled = true;
    try {
      const chunks = await this.fetchRange(Math.max(1, before - LOAD_PAGE), before - 1);
      if (chunks.length) this.prepend(chunks);
      if (this.count > DOM_CAP) {
        // Keep the earlier lines the reader asked for; the newest go, a jump brings them back.
        this.trimBottom(DOM_CAP);
        this.detach();
      } else {
        this.setFollowing(false);
      }
    } catch (error) {
      this.setConn("failed");
    } finally {
      this.loading = false;
      this.earlierButton.disabled = false;
      this.schedule();
    }
  }

  async jumpToLatest() {
    if (!this.detached) {
      this.setFollowing(true);
      this.scrollToBottom();
      return;
    }
    if (this.loading) return;
    this.loading = true;
    this.detached = false;
    this.setFollowing(true);
    this.clear();
    const to = this.cursor;
    try {
      const latest = to >= 1 ? await this.fetchRange(Math.max(1, to - LOAD_PAGE + 1), to) : [];
      // Through the queue, so frames build the rows a slice at a time; lines that came
      // while reading are already queued after them.
      this.queue = latest.concat(this.queue.filter((chunk) => chunk.seq > to));
    } catch (error) {
      this.setConn("failed");
    } finally {
      this.loading = false;
      this.schedule();
    }
  }

  // --- follow mode ------------------------------------------------------------------------

  atBottom() {
    const log = this.log;
    return log.scrollHeight - log.scrollTop - log.clientHeight <= BOTTOM_SLACK_PX;
  }

  onScroll() {
    // DOM changes happen only in animation frames, and scroll events are dispatched before
    // them, so "at the bottom" here is the reader's doing or our own scroll to the bottom.
    if (this.atBottom()) {
      if (this.detached) this.jumpToLatest();
      else if (!this.following) this.setFollowing(true);
    } else if (this.following) {
      this.setFollowing(false);
    }
  }

  setFollowing(on) {
    this.following = on;
    this.followButton.setAttribute("aria-pressed", String(on));
    this.schedule();
  }

  scrollToBottom() {
    const target = this.log.scrollHeight - this.log.clientHeight;
    if (Math.abs(this.log.scrollTop - target) > 1) this.log.scrollTop = target;
  }

  setConn(state) {
    this.conn.dataset.state = state;
    this.conn.textContent = CONN_TEXT[state] ?? state;
    this.root.dataset.conn = state;
  }

  updateControls() {
    const newer = this.detached ? this.cursor - (this.last ?? 0) : 0;
    // Written only when they change: each write invalidates the pane's layout.
    const earlier = (this.first ?? this.cursor + 1) - 1;
    const ended = this.root.dataset.purged ? "The output was purged." : "No output.";
    this.write(this.jumpButton, !this.detached, `${newer.toLocaleString()} newer lines · jump to the latest`);
    this.write(this.earlierButton, earlier < 1 || this.root.dataset.purged === "true",
      `Load earlier lines (${earlier.toLocaleString()} before these)`);
    this.write(this.empty, this.count > 0 || this.queue.length > 0 || this.cursor > 0,
      this.ended ? ended : "No output yet.");
    // Tests can tell when everything delivered is on screen.
    const settled = String(this.ended && !this.queue.length && !this.loading);
    if (this.root.dataset.settled !== settled) this.root.dataset.settled = settled;
    if (this.root.dataset.rows !== String(this.count)) this.root.dataset.rows = String(this.count);
  }

  write(element, hidden, text) {
    if (element.hidden !== hidden) element.hidden = hidden;
    if (!hidden && element.textContent !== text) element.textContent = text;
  }
}
