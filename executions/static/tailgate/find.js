// The pane's finding tools: search over the whole stored log (server-side, paged), next and
// previous match, go to line / top / first stderr line, line permalinks (#L<seq>), and the
// view toggles (timestamps, wrap, full screen).
//
//   query ─▶ GET search?q=&from=1 ─▶ matches (seqs) + scanned_to ─▶ … until the end of the log
//             each answer scans a bounded range, so the count grows as pages come in
//   next / previous ─▶ pane.goToLine(match) ─▶ highlight the matches in the visible rows
//
// A page with sections (a workflow's tasks, a remote run's hosts) searches them too:
//
//   query ─▶ GET search?q=&family=true ─▶ matches ({execution, seq}) + next ({in, from}) ─▶ …
//             kept in the page's order (the log's own lines, then each section's, depth first)
//   next / previous in a section ─▶ sections.open(id) (unfolds it and its parents)
//             ─▶ its pane.goToLine(seq), scrolling the one log
//
// Highlights use the CSS Custom Highlight API: ranges over the rows' text, no DOM changes,
// recomputed only for the rows on screen (after a frame or a scroll).

// Match seqs kept for next/previous: 100,000 numbers is under a megabyte; past it the count
// says "100,000+" and the reader narrows the search.
const MAX_MATCHES = 100000;
// Typing pauses this long before a search starts: one search per word, not per key.
const SEARCH_DEBOUNCE_MS = 300;

/** The rows in the log's view, its sections' included. Only blocks near the view are
 * elements (rows.js, 100 rows each): a few blocks per open pane are measured, and the rows
 * of the ones in view. */
function visibleRows(log) {
  const box = log.getBoundingClientRect();
  const inView = (rect) => rect.height && rect.bottom > box.top && rect.top < box.bottom;
  const rows = [];
  for (const block of log.querySelectorAll(".block")) {
    if (!inView(block.getBoundingClientRect())) continue;
    for (const row of block.children) if (inView(row.getBoundingClientRect())) rows.push(row);
  }
  return rows;
}

/** The execution a row's line belongs to: its pane's (the log's own, or a section's). */
function executionOf(row) {
  return row.closest(".pane")?.outputPane?.execution;
}

function rangesIn(row, needle) {
  const ranges = [];
  const walker = document.createTreeWalker(row, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.data.toLowerCase();
    for (let at = text.indexOf(needle); at >= 0; at = text.indexOf(needle, at + needle.length)) {
      const range = new Range();
      range.setStart(node, at);
      range.setEnd(node, at + needle.length);
      ranges.push(range);
    }
  }
  return ranges;
}

export class Finder {
  /**
   * `sections`: null, or the page's sections ({order(): Map id → place in the page,
   * open(id): the unfolded section's pane}): the search then covers them too.
   */
  constructor(pane, root, searchUrl, sections = null) {
    this.pane = pane;
    this.root = root;
    this.searchUrl = searchUrl;
    this.sections = sections;
    this.shown = pane; // the pane of the current match
    this.matches = [];
    this.index = -1;
    this.query = "";
    this.generation = 0;
    this.complete = true;
    const q = (name) => root.querySelector(`[data-${name}]`);
    this.input = q("search");
    this.count = q("count");
    this.lineInput = q("goto");
    this.message = q("find-message");
    this.bind(q);
    pane.afterFrame = () => this.highlight();
    pane.log.addEventListener("scroll", () => this.highlightSoon(), { passive: true });
  }

  bind(q) {
    let timer = null;
    this.input.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => this.search(this.input.value), SEARCH_DEBOUNCE_MS);
    });
    this.input.addEventListener("keydown", (event) => {
      if (event.key !== "Enter") return;
      event.preventDefault();
      clearTimeout(timer);
      if (this.input.value !== this.query) this.search(this.input.value);
      else this.step(event.shiftKey ? -1 : 1);
    });
    q("next").addEventListener("click", () => this.step(1));
    q("prev").addEventListener("click", () => this.step(-1));
    q("goto-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.goTo(Number(this.lineInput.value));
    });
    q("top").addEventListener("click", () => this.goTo(1));
    q("first-error").addEventListener("click", () => this.firstError());
    q("wrap").addEventListener("change", (event) => this.pane.wrap(event.target.checked));
    q("times").addEventListener("change", (event) => this.pane.showTimes(event.target.value));
    q("fullscreen").addEventListener("click", (event) => this.fullScreen(event.target));
  }

  say(text) {
    this.message.textContent = text;
  }

  // --- search ---------------------------------------------------------------------------

  async search(query) {
    const generation = ++this.generation;
    this.query = query;
    this.matches = [];
    this.index = -1;
    this.complete = false;
    this.say("");
    if (!query) return this.showCount();
    let cursor = this.sections ? { family: "true", from: 1 } : { from: 1 };
    while (generation === this.generation) {
      const page = await this.fetchPage({ q: query, ...cursor });
      if (!page || generation !== this.generation) return;
      this.add(page.matches);
      if (this.index < 0 && this.matches.length) this.step(1);
      cursor = this.nextCursor(page);
      if (!cursor || this.matches.length >= MAX_MATCHES) break;
      this.showCount();
    }
    this.complete = true;
    this.showCount();
  }

  /** Matches as {execution, seq}, in the page's order, the current one kept current. */
  add(found) {
    const room = MAX_MATCHES - this.matches.length;
    const own = this.pane.execution;
    const matches = found.slice(0, room).map((match) => (this.sections ? match : { execution: own, seq: match }));
    const current = this.matches[this.index];
    this.matches.push(...matches);
    if (!this.sections || !matches.length) return;
    // The server answers in creation order; a nested section sits inside its parent's.
    const order = this.sections.order();
    const place = (match) => order.get(match.execution) ?? order.size;
    this.matches.sort((a, b) => place(a) - place(b) || (a.execution < b.execution ? -1 : a.execution > b.execution ? 1 : a.seq - b.seq));
    if (current) this.index = this.matches.indexOf(current);
  }

  nextCursor(page) {
    if (this.sections) return page.next && { family: "true", in: page.next.in, from: page.next.from };
    return page.scanned_to >= page.last_seq ? null : { from: page.scanned_to + 1 };
  }

  async fetchPage(params) {
    const response = await fetch(`${this.searchUrl}?${new URLSearchParams(params)}`, { credentials: "same-origin" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      this.say(body.detail || `Search failed: the server answered ${response.status}.`);
      return null;
    }
    return body;
  }

  showCount() {
    const total = this.matches.length;
    const more = total >= MAX_MATCHES ? "+" : this.complete ? "" : "…";
    const text = !this.query ? "" : total ? `${this.index + 1} of ${total.toLocaleString()}${more}` : this.complete ? "no matches" : "searching…";
    this.count.textContent = text;
    this.root.dataset.searching = String(!this.complete);
    this.highlight();
  }

  async step(direction) {
    if (!this.matches.length) return;
    this.index = (this.index + direction + this.matches.length) % this.matches.length;
    this.showCount();
    await this.show(this.matches[this.index]);
    this.highlight();
  }

  /** Go to a match: in the log's own lines, or in a section, unfolded first. */
  async show({ execution, seq }) {
    const pane = execution === this.pane.execution ? this.pane : this.sections?.open(execution);
    if (!pane) return false;
    if (this.shown !== pane) this.shown.unmark();
    this.shown = pane;
    this.pane.setFollowing(false); // the one log stays where the line is
    return pane.goToLine(seq, true);
  }

  // --- lines ----------------------------------------------------------------------------

  async goTo(seq) {
    if (this.shown !== this.pane) this.shown.unmark();
    this.shown = this.pane;
    const known = this.pane.known();
    if (!(await this.pane.goToLine(seq))) {
      return this.say(`There is no line ${seq}: the log has ${known.toLocaleString()} lines.`);
    }
    this.say("");
    history.replaceState(null, "", `#L${seq}`);
  }

  async firstError() {
    this.say("Looking for the first stderr line…");
    for (let from = 1; ; ) {
      const page = await this.fetchPage({ type: "stderr", from });
      if (!page) return;
      if (page.matches.length) return this.goTo(page.matches[0]);
      if (page.scanned_to >= page.last_seq) return this.say("No line on stderr.");
      from = page.scanned_to + 1;
    }
  }

  fullScreen(button) {
    const on = !this.pane.root.classList.contains("fullscreen");
    this.pane.root.classList.toggle("fullscreen", on);
    document.body.classList.toggle("has-fullscreen", on);
    button.setAttribute("aria-pressed", String(on));
    const close = (event) => {
      if (event.key !== "Escape") return;
      document.removeEventListener("keydown", close);
      if (this.pane.root.classList.contains("fullscreen")) this.fullScreen(button);
    };
    if (on) document.addEventListener("keydown", close);
  }

  // --- highlights -----------------------------------------------------------------------

  highlightSoon() {
    if (this.highlightRequested) return;
    this.highlightRequested = true;
    requestAnimationFrame(() => {
      this.highlightRequested = false;
      this.highlight();
    });
  }

  highlight() {
    // One pair of highlights for the page: a pane without a query leaves them alone, unless it
    // drew them (its query was just cleared).
    if (!globalThis.CSS?.highlights || (!this.query && !this.drew)) return;
    this.drew = Boolean(this.query);
    const needle = this.query.toLowerCase();
    const all = [];
    const current = [];
    const target = this.matches[this.index];
    const isTarget = (row) =>
      target && Number(row.dataset.seq) <= target.seq && target.seq <= Number(row.dataset.end) && executionOf(row) === target.execution;
    if (needle) {
      for (const row of visibleRows(this.pane.log)) (isTarget(row) ? current : all).push(...rangesIn(row, needle));
    }
    CSS.highlights.set("tg-match", new Highlight(...all));
    CSS.highlights.set("tg-current", new Highlight(...current));
  }
}
