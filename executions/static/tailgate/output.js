// The output pane: one execution's lines, live over the page's one connection (live.js),
// drawn once per animation frame. Up to MODEL_CAP lines are loaded (as records, lines.js);
// only the rows in and near the viewport are elements (rows.js); the rest of the log is
// reachable by range reads (load earlier / later, go to line, search hits).
//
//   subscription ─chunk─▶ seq = cursor + 1? ─yes─▶ queue ─frame─▶ rows (a time budget each)
//                              │ no: a jump (a shared subscription joined late, an outage)
//                              ▼
//                     read the missing seqs over HTTP, then the held chunks, in order
//
// The pane holds one contiguous run of seqs [first, last]; `cursor` is the highest seq
// received. Following: new rows are appended, the oldest trimmed, the pane kept at the
// bottom. Paused (the reader scrolled up, or went to a line): new rows are appended until the
// cap, then the pane "detaches": nothing the reader sees is ever removed, and a button offers
// the newest lines.

import { STATE_TEXT } from "./common.js";
import { LineBuilder, renderRow, withRelativeTimes } from "./lines.js";
import { VirtualRows } from "./rows.js";

// Lines loaded (records in memory, about 150 bytes each): a long scroll back, and the
// scrollbar spans all of them; the rest of the log via range reads.
export const MODEL_CAP = 100000;
// Lines the subscription replays when the pane opens (the newest ones).
export const FIRST_WINDOW = 5000;
// Lines one range read returns: the lines endpoint's page (executions/web/views.py).
export const LOAD_PAGE = 5000;
// Lines one frame turns into records (a few microseconds each, no elements): at 60 frames/s
// far above any flood, and a backlog (a range read, a hidden tab) drains within a frame's
// budget.
const RECORDS_PER_FRAME = 5000;
// Lines waiting for a frame (a hidden tab gets none): past twice this, the oldest are dropped
// (following only keeps the newest MODEL_CAP anyway).
const QUEUE_CAP = MODEL_CAP;
// This close to the bottom counts as "at the bottom" (follow mode).
const BOTTOM_SLACK_PX = 24;
// A scroll this soon after the reader's wheel, touch, pointer or key is the reader's (a
// smooth scroll moves over several frames after its one wheel event): reaching the bottom
// of a detached pane then reads the newest lines.
const USER_SCROLL_MS = 1000;
// A failed range read (server restarting) is tried again after this long.
const FILL_RETRY_MS = 2000;
// A refused subscription that the API contradicts (the execution is still visible) is
// opened again after this long, at most this many times in a row.
const RESUBSCRIBE_MS = 1000;
const MAX_RESUBSCRIBES = 5;

export class OutputPane {
  /**
   * `root`: a clone of #pane-template. `urls`: {api, lines, download}. `options`: the execution
   * id, the page's Live, its last_seq and started_at when the page was rendered.
   */
  constructor(root, urls, options) {
    this.root = root;
    this.urls = urls;
    this.options = options;
    this.execution = options.executionId;
    this.onDoneCallback = options.onDone || (() => {});
    const q = (name) => root.querySelector(`[data-${name}]`);
    this.log = q("log");
    this.lines = q("lines");
    this.earlierButton = q("earlier");
    this.laterButton = q("later");
    this.jumpButton = q("jump");
    this.followButton = q("follow");
    this.conn = q("conn");
    this.empty = q("empty");
    this.notice = q("pane-notice");
    this.groupStyle = document.createElement("style");
    root.append(this.groupStyle);
    this.log.setAttribute("aria-label", `${options.label || "Output"} lines`);
    // A task's pane inside the main log (a section) scrolls with it: no scroll box of its own.
    this.scroller = options.scroller || this.log;
    this.inline = Boolean(options.scroller);
    if (this.inline) root.classList.add("inline");
    q("download").href = urls.download;
    root.outputPane = this; // tests read the loaded lines (`loadedRows`)

    this.collapsed = new Set(); // seqs of collapsed `::group::` headers
    this.hiddenTypes = new Set(); // output types filtered out (stdout, stderr)
    this.view = {
      collapsed: this.collapsed,
      times: "off",
      startedAt: options.startedAt ? Date.parse(options.startedAt) : null,
      pageUrl: options.pageUrl || "/executions/ID/",
      target: null, // the seq marked by go to line, a search or a permalink
    };
    const render = (record) => {
      const row = renderRow(record, this.view);
      if (record.seq === this.view.target) row.classList.add("target");
      return row;
    };
    this.rows = new VirtualRows(this.scroller, this.lines, render, (record) => this.isHidden(record));
    this.first = null; // seq of the first loaded row
    this.last = null; // highest seq loaded
    this.count = 0;
    this.cursor = 0; // highest seq received (everything below is shown or reachable)
    this.queue = [];
    this.held = []; // chunks received while the seqs before them are read
    this.filling = false;
    this.pendingDone = null;
    this.following = true;
    this.detached = false;
    this.loading = false;
    this.ended = false;
    this.unsubscribe = null;
    this.retries = 0; // resubscriptions after a refusal the API did not confirm
    this.frameRequested = false;
    this.userScrollAt = -Infinity; // when the reader last touched the log (wheel, key, …)
    this.lastScrollTop = 0;
    this.live = this.builder();
    this.afterFrame = () => {};
    this.onGrow = options.onGrow || (() => {});
    if (this.inline) this.following = false; // the main log follows for it
    this.bind();
    options.live.onState((state) => this.onLiveState(state));
  }

  builder() {
    return new LineBuilder((record) => this.rows.holds(record));
  }

  isHidden(record) {
    if (record.groupEnd || this.hiddenTypes.has(record.type)) return true;
    return record.group !== undefined && this.collapsed.has(record.group);
  }

  /** Timestamps: "off", "abs" (UTC clock) or "rel" (since the execution started). */
  showTimes(mode) {
    this.log.dataset.times = mode;
    this.view.times = mode;
    if (mode === "rel") withRelativeTimes(this.lines, this.options.startedAt);
    this.relayout();
  }

  /** Long lines wrap, or scroll sideways. */
  wrap(on) {
    this.log.classList.toggle("nowrap", !on);
    this.relayout();
  }

  /** Row heights changed (wrap, a filter, a folded group): measure again, keep the reader's line. */
  relayout() {
    this.rows.invalidate();
    if (this.following && !this.inline) this.scrollToBottom();
    this.schedule();
  }

  bind() {
    if (this.inline) this.scroller.addEventListener("scroll", () => this.schedule(), { passive: true });
    this.log.addEventListener("scroll", () => this.onScroll(), { passive: true });
    const touched = (event) => {
      if (event.key !== "End") this.userScrollAt = performance.now();
    };
    for (const name of ["wheel", "touchmove", "pointerdown", "keydown"]) {
      this.log.addEventListener(name, touched, { passive: true });
    }
    // End resumes following outright: a native scroll to the bottom can land short of it
    // while lines keep arriving, and then following would not resume.
    this.log.addEventListener("keydown", (event) => {
      if (event.key === "End") {
        event.preventDefault();
        this.jumpToLatest();
      }
    });
    this.log.addEventListener("click", (event) => this.onLogClick(event));
    this.earlierButton.addEventListener("click", () => this.loadEarlier());
    this.laterButton.addEventListener("click", () => this.loadLater());
    this.jumpButton.addEventListener("click", () => this.jumpToLatest());
    this.followButton.addEventListener("click", () => {
      if (this.following) this.setFollowing(false);
      else this.jumpToLatest();
    });
    for (const box of this.root.querySelectorAll("[data-show]")) {
      box.addEventListener("change", () => {
        this.log.classList.toggle(`hide-${box.dataset.show}`, !box.checked);
        if (box.checked) this.hiddenTypes.delete(box.dataset.show);
        else this.hiddenTypes.add(box.dataset.show);
        this.relayout();
      });
    }
  }

  // --- the subscription -------------------------------------------------------------------

  start() {
    if (this.unsubscribe || this.ended) return;
    if (this.cursor === 0) this.cursor = Math.max(0, (this.options.lastSeq || 0) - FIRST_WINDOW);
    this.unsubscribe = this.options.live.output(this.execution, this.cursor, {
      chunk: (chunk) => this.onChunk(chunk),
      done: (data) => this.onDone(data),
      gap: (data) => data.reason === "purged" && (this.root.dataset.purged = "true"),
      suberror: (problem) => this.onSubscriptionError(problem),
    });
  }

  stop() {
    if (this.unsubscribe) this.unsubscribe();
    this.unsubscribe = null;
  }

  onLiveState(state) {
    // The hub resubscribes by itself after a reconnect, at its cursor: nothing to do here.
    if (this.ended || this.root.dataset.conn === "gone") return;
    this.setConn(state.state);
  }

  onChunk(chunk) {
    if (this.filling) return void this.held.push(chunk);
    if (chunk.seq <= this.cursor) return; // never shown twice
    if (chunk.seq > this.cursor + 1) {
      this.held.push(chunk);
      return void this.fill(chunk.seq - 1);
    }
    this.accept(chunk);
  }

  accept(chunk) {
    this.retries = 0;
    this.cursor = chunk.seq;
    if (!this.detached) {
      this.queue.push(chunk);
      if (this.queue.length > 2 * QUEUE_CAP) this.queue = this.queue.slice(-QUEUE_CAP);
    }
    this.schedule();
  }

  /** Read the seqs up to `to` (at most the newest LOAD_PAGE of them), then the held chunks. */
  async fill(to) {
    this.filling = true;
    const from = Math.max(this.cursor + 1, to - LOAD_PAGE + 1);
    try {
      for (const chunk of await this.fetchRange(from, to)) if (chunk.seq > this.cursor) this.accept(chunk);
    } catch (error) {
      this.setConn("reconnecting");
      return void setTimeout(() => this.fill(to), FILL_RETRY_MS);
    }
    this.filling = false;
    const held = this.held;
    this.held = [];
    for (const chunk of held) this.onChunk(chunk);
    if (!this.filling && this.pendingDone) this.onDone(this.pendingDone);
  }

  onDone(data) {
    if (this.filling || data.final_seq > this.cursor) {
      this.pendingDone = data;
      if (!this.filling) this.fill(data.final_seq);
      return;
    }
    this.pendingDone = null;
    this.ended = true;
    this.unsubscribe = null; // the server ended the subscription
    if (data.output_purged_at) this.root.dataset.purged = "true";
    this.setConn("ended");
    this.schedule();
    this.onDoneCallback(data);
  }

  async onSubscriptionError(problem) {
    this.unsubscribe = null;
    // A refusal may be a stale verdict (the server re-checks access in passes): ask the API
    // before giving up; if it still shows the execution, subscribe again at the cursor.
    if ([401, 403, 404].includes(problem.status) && this.retries++ < MAX_RESUBSCRIBES) {
      const answer = await fetch(this.urls.api, { credentials: "same-origin" }).catch(() => null);
      if (answer?.ok) return void setTimeout(() => this.start(), RESUBSCRIBE_MS);
    }
    const state = problem.status === 404 ? "gone" : problem.status === 429 ? "limited" : "stopped";
    this.setConn(state);
    this.say(problem.detail || `The server answered ${problem.status}.`);
    // Logged out, or access withdrawn: the whole page stops and offers the login.
    if ([401, 403, 404].includes(problem.status)) this.options.live.stopHere(problem);
  }

  say(text) {
    this.notice.hidden = !text;
    this.notice.textContent = text || "";
  }

  // --- rendering ------------------------------------------------------------------------

  schedule() {
    if (this.frameRequested) return;
    this.frameRequested = true;
    requestAnimationFrame(() => this.frame());
  }

  frame() {
    this.frameRequested = false;
    const before = this.count;
    if (!this.loading) this.renderQueued();
    this.draw();
    if (this.count !== before) this.onGrow();
    this.updateControls();
    this.afterFrame();
    if (this.queue.length && !this.loading) this.schedule();
  }

  /** Elements for the rows in view; following, the end in view. */
  draw() {
    const bottom = this.following && !this.detached;
    const shift = this.rows.draw(bottom);
    if (bottom) this.scrollToBottom();
    else if (shift) this.scrollBy(shift); // blocks above the reader changed height
  }

  scrollBy(delta) {
    this.scroller.scrollTop += delta;
    if (!this.inline) this.lastScrollTop = this.log.scrollTop; // our own move, not the reader's
  }

  renderQueued() {
    let start = 0;
    while (start < this.queue.length && this.last !== null && this.queue[start].seq <= this.last) start++;
    // Following, older lines than the cap would be trimmed at once: skip them.
    if (this.following && this.queue.length - start > MODEL_CAP) start = this.queue.length - MODEL_CAP;
    const end = Math.min(this.queue.length, start + RECORDS_PER_FRAME);
    let batch = this.queue.slice(start, end);
    this.queue = this.queue.slice(end);
    if (!batch.length) return;
    if (this.last !== null && batch[0].seq !== this.last + 1) {
      // Not contiguous (a dropped backlog). Following: start afresh here, the skipped lines
      // are "earlier". Paused: leave the reader's rows alone.
      if (!this.following) return this.detach();
      this.clear();
    }
    if (!this.following && this.count + batch.length > MODEL_CAP) {
      batch = batch.slice(0, MODEL_CAP - this.count);
      this.append(batch, this.live);
      return this.detach();
    }
    this.append(batch, this.live);
    if (this.count > MODEL_CAP) this.trimTop(MODEL_CAP);
  }

  /** A new group starts folded, as GitHub Actions does. */
  noteGroup(record) {
    // Its rows are yet to come: no height to measure again.
    if (record.head) this.collapse(record.seq, true, false);
  }

  append(chunks, builder) {
    if (!chunks.length) return;
    for (const chunk of chunks) {
      const record = builder.build(chunk);
      if (record.seq !== chunk.seq) {
        this.rows.changed(record); // a `\r` continuation
        continue;
      }
      this.rows.push(record);
      this.noteGroup(record);
    }
    this.last = chunks.at(-1).seq;
    this.syncBounds();
  }

  prepend(chunks) {
    const builder = new LineBuilder(); // earlier lines: a fresh ANSI state, its own open rows
    const records = [];
    for (const chunk of chunks) {
      const record = builder.build(chunk);
      if (record.seq !== chunk.seq) continue;
      records.push(record);
      this.noteGroup(record);
    }
    this.scrollBy(this.rows.prepend(records)); // the reader's lines stay in place
    this.syncBounds();
  }

  trimTop(cap) {
    const removed = this.rows.trimTop(cap);
    // Following, the bottom is what counts; paused, the reader's rows stay put.
    if (!this.following) this.scrollBy(-removed);
    this.syncBounds();
  }

  trimBottom(cap) {
    this.rows.trimBottom(cap);
    this.last = this.rows.last;
    this.syncBounds();
  }

  clear() {
    this.rows.clear();
    this.lastScrollTop = this.log.scrollTop; // emptied: our own move to the top
    this.last = null;
    this.syncBounds();
  }

  syncBounds() {
    this.first = this.rows.first;
    this.count = this.rows.count;
    if (!this.count) this.last = null;
  }

  detach() {
    this.detached = true;
    this.queue = [];
    this.setFollowing(false);
  }

  // --- groups and line links --------------------------------------------------------------

  collapse(seq, on, relayout = true) {
    if (on === this.collapsed.has(seq)) return;
    if (on) this.collapsed.add(seq);
    else this.collapsed.delete(seq);
    const hidden = [...this.collapsed].map((s) => `.g${s}`).join(",");
    this.groupStyle.textContent = hidden ? `${hidden}{display:none}` : "";
    const head = this.lines.querySelector(`.group-head[data-seq="${seq}"]`);
    head?.setAttribute("aria-expanded", String(!on));
    if (relayout) this.relayout();
  }

  onLogClick(event) {
    const head = event.target.closest(".group-head");
    if (head && !event.target.closest("a")) {
      this.collapse(Number(head.dataset.seq), !this.collapsed.has(Number(head.dataset.seq)));
    }
  }

  // --- reading ranges ----------------------------------------------------------------------

  async fetchRange(from, to) {
    const response = await fetch(`${this.urls.lines}?from=${from}&to=${to}`, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`lines ${from}-${to}: ${response.status}`);
    return (await response.json()).chunks;
  }

  async withLoading(work) {
    if (this.loading) return;
    this.loading = true;
    try {
      await work();
    } catch (error) {
      this.setConn("failed");
    } finally {
      this.loading = false;
      this.schedule();
    }
  }

  loadEarlier() {
    const before = this.first ?? this.cursor + 1;
    if (before <= 1) return;
    return this.withLoading(async () => {
      const chunks = await this.fetchRange(Math.max(1, before - LOAD_PAGE), before - 1);
      if (chunks.length) this.prepend(chunks);
      this.setFollowing(false);
      if (this.count > MODEL_CAP) {
        // Keep the earlier lines the reader asked for; the newest go, a jump brings them back.
        this.trimBottom(MODEL_CAP);
        this.detach();
      }
    });
  }

  loadLater() {
    if (!this.detached || this.last === null || this.last >= this.cursor) return;
    return this.withLoading(async () => {
      const to = Math.min(this.cursor, this.last + LOAD_PAGE);
      this.append(await this.fetchRange(this.last + 1, to), this.range);
      if (this.count > MODEL_CAP) this.trimTop(MODEL_CAP);
      if (this.last >= this.cursor) this.detached = false; // live lines append again
    });
  }

  /** Show the lines around `seq` (read over HTTP when they are not loaded). */
  async loadAround(seq) {
    await this.withLoading(async () => {
      const from = Math.max(1, seq - LOAD_PAGE / 2);
      const chunks = await this.fetchRange(from, Math.min(this.known(), from + LOAD_PAGE - 1));
      this.queue = [];
      this.clear();
      this.range = this.builder();
      this.detached = true;
      this.setFollowing(false);
      this.append(chunks, this.range);
      if (this.last !== null && this.last >= this.cursor) this.detached = false;
    });
  }

  jumpToLatest() {
    if (!this.detached) {
      this.setFollowing(true);
      this.scrollToBottom();
      return;
    }
    const to = this.cursor;
    // Attached from now: lines arriving during the read are queued after it (frames wait
    // for the read, `loading`).
    this.detached = false;
    this.setFollowing(true);
    return this.withLoading(async () => {
      const latest = to >= 1 ? await this.fetchRange(Math.max(1, to - LOAD_PAGE + 1), to) : [];
      this.clear();
      // Through the queue, so frames build the rows a slice at a time.
      this.queue = latest.concat(this.queue.filter((chunk) => chunk.seq > to));
    });
  }

  /** The highest seq known to exist: received, or stored when the page was rendered. */
  known() {
    return Math.max(this.cursor, this.options.lastSeq || 0);
  }

  /** [seq, output type, text] of every loaded line, as its row shows it (for tests). */
  loadedRows() {
    const rows = [];
    for (const block of this.rows.blocks) {
      for (const record of block.records) rows.push([record.seq, record.type, renderRow(record, this.view).textContent]);
    }
    return rows;
  }

  /**
   * Scroll to line `seq`, loading it first, and mark it; false when there is no such line.
   * `stored`: the caller knows the line is stored (a search found it), though this pane may
   * not have heard of it yet (opened just now).
   */
  goToLine(seq, stored = false) {
    if (stored && Number.isInteger(seq)) this.options.lastSeq = Math.max(this.options.lastSeq || 0, seq);
    // One navigation at a time, in the order asked (next, next, previous…).
    this.navigation = (this.navigation || Promise.resolve()).then(() => this.navigate(seq));
    return this.navigation;
  }

  /** No line marked (the finder went to a line of another pane). */
  unmark() {
    this.view.target = null;
    this.lines.querySelector(".line.target")?.classList.remove("target");
  }

  async navigate(seq) {
    if (!Number.isInteger(seq) || seq < 1 || seq > this.known()) return false;
    this.setFollowing(false);
    if (!this.rows.find(seq)) await this.loadAround(seq);
    const found = this.rows.find(seq);
    if (!found) return false;
    const record = found.block.records[found.index];
    if (record.group !== undefined) this.collapse(record.group, false);
    this.lines.querySelector(".line.target")?.classList.remove("target");
    this.view.target = record.seq;
    this.reveal(record.seq);
    this.setFollowing(false);
    return true;
  }

  /** Scroll so that the row of `seq` is a third down the view, its elements built. */
  reveal(seq) {
    this.draw(); // the spacers span every loaded line: the position below exists
    const found = this.rows.find(seq);
    const third = this.scroller.clientHeight / 3;
    const estimate = this.rows.offset() + this.rows.topOf(found.at) + found.index * this.rows.lineHeight();
    this.scrollBy(estimate - third - this.scroller.scrollTop);
    this.draw();
    const row = this.rows.element(seq);
    if (!row) return;
    row.classList.add("target");
    this.scrollBy(row.getBoundingClientRect().top - this.scroller.getBoundingClientRect().top - third);
    this.draw(); // the blocks now in view
  }

  // --- follow mode ------------------------------------------------------------------------

  atBottom() {
    const log = this.log;
    return log.scrollHeight - log.scrollTop - log.clientHeight <= BOTTOM_SLACK_PX;
  }

  onScroll() {
    // Only a move up from where the pane last put itself leaves the end (the reader's
    // wheel, keys, scrollbar, find in page): rows arriving, rows trimmed above and range
    // reads move the position too, but the pane records those moves as its own.
    const up = this.log.scrollTop < this.lastScrollTop - 1;
    this.lastScrollTop = this.log.scrollTop;
    const byReader = performance.now() - this.userScrollAt < USER_SCROLL_MS;
    if (this.atBottom()) {
      // The reader came back to the end: a detached pane reads the newest lines.
      if (this.detached && byReader) this.jumpToLatest();
      else if (!this.detached && !this.following && !this.loading) this.setFollowing(true);
    } else if (this.following && up) {
      this.setFollowing(false);
    }
    this.schedule();
  }

  setFollowing(on) {
    this.following = on && !this.inline;
    this.followButton.setAttribute("aria-pressed", String(on));
    this.schedule();
  }

  scrollToBottom() {
    const target = this.log.scrollHeight - this.log.clientHeight;
    if (Math.abs(this.log.scrollTop - target) > 1) this.log.scrollTop = target;
    // Our own move: its scroll event may come merged with the reader's next one.
    this.lastScrollTop = target;
  }

  setConn(state) {
    this.conn.dataset.state = state;
    this.conn.textContent = state === "idle" ? "" : (STATE_TEXT[state] ?? state);
    this.root.dataset.conn = state;
  }

  updateControls() {
    const newer = this.detached ? this.cursor - (this.last ?? 0) : 0;
    // Written only when they change: each write invalidates the pane's layout.
    const earlier = (this.first ?? this.cursor + 1) - 1;
    const ended = this.root.dataset.purged ? "The output was purged." : "No output.";
    this.write(this.jumpButton, !this.detached, `${newer.toLocaleString()} newer lines · jump to the latest`);
    this.write(this.laterButton, !this.detached || !newer, `Load later lines (${newer.toLocaleString()} after these)`);
    this.write(this.earlierButton, earlier < 1 || this.root.dataset.purged === "true",
      `Load earlier lines (${earlier.toLocaleString()} before these)`);
    this.write(this.empty, this.count > 0 || this.queue.length > 0 || this.cursor > 0,
      this.ended ? ended : "No output yet.");
    // Tests can tell when everything delivered is on screen.
    const settled = String(this.ended && !this.queue.length && !this.loading && !this.filling);
    if (this.root.dataset.settled !== settled) this.root.dataset.settled = settled;
    if (this.root.dataset.rows !== String(this.count)) this.root.dataset.rows = String(this.count);
    const domRows = String(this.rows.domRows);
    if (this.root.dataset.domRows !== domRows) this.root.dataset.domRows = domRows;
    if (this.root.dataset.cursor !== String(this.cursor)) this.root.dataset.cursor = String(this.cursor);
  }

  write(element, hidden, text) {
    if (element.hidden !== hidden) element.hidden = hidden;
    if (!hidden && element.textContent !== text) element.textContent = text;
  }
}
