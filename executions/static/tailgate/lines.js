// Turning stored chunks into the rows of an output pane, as a terminal would show them. Two
// steps, so that a pane can hold 100,000 lines and build elements only for the few on screen:
//
//   chunk ─▶ LineBuilder.build ─▶ a row record (plain data: seq, type, text, group, …)
//                │ continues an open row of its type? update that record in place (`\r`)
//                │ `::group::name` / `::endgroup::`? a group header / a hidden end row
//   record ─▶ renderRow ─▶ an element: line number link (#L<seq>), timestamp, ANSI colours,
//                          execution links (only for rows near the viewport, rows.js)
//
// A chunk without a trailing newline is continued by the next chunk of its output type (the
// runner flushes partial lines after silence), so a progress bar redrawn with `\r` arrives as
// many chunks: they become one row showing the text after the last `\r`. Download keeps the
// exact bytes; only the rendering resolves `\r`.

import { AnsiUp } from "./ansi_up.js";

const GROUP_START = "::group::";
const GROUP_END = "::endgroup::";
// Execution ids (ULIDs) in the output become links to their pages (a workflow prints its
// tasks' ids).
const ULID = /\b[0-9A-HJKMNP-TV-Z]{26}\b/g;

/** The text a terminal would show for a line's raw text: newline dropped, `\r` redraws resolved. */
export function lineText(data) {
  let text = data.endsWith("\n") ? data.slice(0, -1) : data;
  if (text.endsWith("\r")) text = text.slice(0, -1);
  const redraw = text.lastIndexOf("\r");
  return redraw >= 0 ? text.slice(redraw + 1) : text;
}

function clock(iso) {
  return iso ? iso.slice(11, 23) : "";
}

function linkify(row, text, pageUrl) {
  let last = 0;
  for (const match of text.matchAll(ULID)) {
    row.append(text.slice(last, match.index));
    const link = document.createElement("a");
    link.href = pageUrl.replace("ID", match[0]);
    link.className = "exec-link";
    link.textContent = match[0];
    row.append(link);
    last = match.index + match[0].length;
  }
  row.append(text.slice(last));
}

function relative(iso, startedAt) {
  if (!iso || !startedAt) return "";
  const seconds = Math.max(0, (Date.parse(iso) - startedAt) / 1000);
  return `+${seconds.toFixed(3)}s`;
}

/** Give every rendered row under `root` its time since the start (`data-rel`), once. */
export function withRelativeTimes(root, startedAt) {
  const start = startedAt ? Date.parse(startedAt) : null;
  for (const number of root.querySelectorAll("a.ln:not([data-rel])")) {
    number.dataset.rel = relative(number.dataset.ts, start);
  }
}

/**
 * Turns chunks into row records. `live` builders carry state from chunk to chunk (open rows per
 * output type, ANSI colours, the open group); a builder for earlier lines starts afresh.
 * `holds(record)` says whether a record is still in the pane (a trimmed open row is not
 * continued: the next chunk starts a row of its own).
 */
export class LineBuilder {
  constructor(holds = () => true) {
    this.ansi = new Map();
    this.open = new Map(); // output type → the record a continuation chunk extends
    this.group = null; // seq of the open `::group::` header
    this.holds = holds;
  }

  ansiFor(type) {
    let ansi = this.ansi.get(type);
    if (!ansi) {
      ansi = new AnsiUp();
      ansi.use_classes = true; // colours come from the stylesheet, tuned for contrast
      this.ansi.set(type, ansi);
    }
    return ansi;
  }

  /** The record for `chunk`: a new one, or the open row it continued (`record.seq < chunk.seq`). */
  build(chunk) {
    const open = this.open.get(chunk.output_type);
    if (open && this.holds(open)) {
      open.raw += chunk.data;
      open.end = chunk.seq;
      const ansi = new AnsiUp(); // redrawn from its own start
      ansi.use_classes = true;
      this.fill(open, ansi);
      this.track(open);
      return open;
    }
    const record = { seq: chunk.seq, end: chunk.seq, type: chunk.output_type, raw: chunk.data, ts: chunk.timestamp || "" };
    this.markGroup(record);
    this.fill(record, this.ansiFor(chunk.output_type));
    this.track(record);
    return record;
  }

  track(record) {
    record.cont = !record.raw.endsWith("\n");
    if (record.cont) return void this.open.set(record.type, record);
    this.open.delete(record.type);
    record.raw = null; // complete: the text is all a row needs
  }

  markGroup(record) {
    const text = record.raw.trimEnd();
    if (text.startsWith(GROUP_START)) {
      this.group = record.seq;
      record.head = text.slice(GROUP_START.length) || "group";
      return;
    }
    if (this.group !== null) record.group = this.group;
    if (text === GROUP_END) {
      record.groupEnd = true;
      this.group = null;
    }
  }

  fill(record, ansi) {
    if (record.head) return void (record.text = record.head);
    const text = lineText(record.raw);
    const styled = ansi.fg || ansi.bg || ansi.bold || ansi.faint || ansi.italic || ansi.underline;
    record.html = styled || text.includes("\x1b") ? ansi.ansi_to_html(text) : null; // escaped
    record.text = text;
  }
}

/**
 * The element for a record. `view`: {collapsed (Set of group seqs), times ("off", "abs",
 * "rel"), startedAt (ms), pageUrl}.
 */
export function renderRow(record, view) {
  const row = document.createElement("div");
  row.className = `line ${record.type}`;
  row.dataset.seq = record.seq;
  row.dataset.end = record.end;
  if (record.cont) row.classList.add("cont");
  const number = document.createElement("a");
  number.className = "ln";
  number.href = `#L${record.seq}`;
  number.dataset.n = record.seq;
  number.dataset.abs = clock(record.ts);
  if (view.times === "rel") number.dataset.rel = relative(record.ts, view.startedAt);
  number.dataset.ts = record.ts;
  row.append(number);
  if (record.head) {
    row.classList.add("group-head");
    row.dataset.group = record.seq;
    row.setAttribute("aria-expanded", String(!view.collapsed.has(record.seq)));
    row.append(record.text);
    return row;
  }
  if (record.group !== undefined) row.classList.add("in-group", `g${record.group}`);
  if (record.groupEnd) row.classList.add("group-end");
  if (record.html !== null) {
    const span = document.createElement("span");
    span.innerHTML = record.html; // ansi_up escapes HTML
    row.append(span);
  } else if (ULID.test(record.text)) {
    ULID.lastIndex = 0;
    linkify(row, record.text, view.pageUrl);
  } else {
    row.append(record.text);
  }
  return row;
}
