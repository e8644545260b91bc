// The rows of an output pane, virtualised: every loaded line is a record (lines.js) in blocks
// of BLOCK_ROWS; only the blocks in and near the viewport have elements, the others are
// represented by two spacers of their height, so the scrollbar reflects every loaded line.
//
//   .lines ─ top spacer (heights of the blocks above) ─ block k … block m (elements) ─ bottom spacer
//
// A block's height is measured once it has been on screen and estimated (visible rows × row
// height) until then. When a block above the reader changes height (measured, wrapped, a
// group folded), the scroll position moves by as much: the reader's line stays put.
// At 10,000 lines/s a frame builds the elements of the new rows of the last block or two,
// whatever the number of loaded lines (measured in docs/web.md).

// Rows per block: a block is built whole when it comes near the viewport, so small enough to
// build within a frame, large enough that 100,000 lines are 1,000 blocks to add up.
const BLOCK_ROWS = 100;
// Blocks are built this far (in viewport heights) above and below the viewport: a wheel
// scroll between two frames lands on built rows.
const OVERSCAN_VIEWPORTS = 1;

class Block {
  constructor(records) {
    this.records = records;
    this.el = null; // the block's element while it is near the viewport
    this.rendered = 0; // records of this block that have an element
    this.height = null; // measured (px), null: estimate
    this.estimate = null; // cached estimate, null: to compute
  }
}

export class VirtualRows {
  /**
   * `log`: the scrolling element; `container`: where the rows go (inside `log`);
   * `render(record)`: a record's element; `hidden(record)`: whether its row shows no line
   * (a folded group, a filtered stream).
   */
  constructor(log, container, render, hidden) {
    this.log = log;
    this.container = container;
    this.render = render;
    this.hidden = hidden;
    this.blocks = [];
    this.count = 0;
    this.top = document.createElement("div");
    this.bottom = document.createElement("div");
    this.top.className = this.bottom.className = "spacer";
    container.replaceChildren(this.top, this.bottom);
    this.lo = 0; // blocks [lo, hi) have elements
    this.hi = 0;
    this.domRows = 0;
    this.rowHeight = 0;
    this.topHeight = 0;
  }

  get first() {
    return this.blocks.length ? this.blocks[0].records[0].seq : null;
  }

  get last() {
    return this.blocks.length ? this.blocks.at(-1).records.at(-1).end : null;
  }

  /** The row height of one unwrapped line, read once from a probe row. */
  lineHeight() {
    if (this.rowHeight) return this.rowHeight;
    const probe = this.render({ seq: 0, end: 0, type: "stdout", text: "x", html: null, ts: "" });
    this.container.append(probe);
    this.rowHeight = probe.getBoundingClientRect().height || 20;
    probe.remove();
    return this.rowHeight;
  }

  heightOf(block) {
    if (block.height !== null) return block.height;
    if (block.estimate === null) {
      let shown = 0;
      for (const record of block.records) if (!this.hidden(record)) shown++;
      block.estimate = shown * this.lineHeight();
    }
    return block.estimate;
  }

  /** Forget every height (a group folded, a stream filtered, wrap toggled): measure again. */
  invalidate() {
    for (const block of this.blocks) block.height = block.estimate = null;
  }

  /** The block and index holding `seq` (a `\r` row covers several seqs), or null. */
  find(seq) {
    let lo = 0;
    let hi = this.blocks.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const records = this.blocks[mid].records;
      if (seq < records[0].seq) hi = mid - 1;
      else if (seq > records.at(-1).end) lo = mid + 1;
      else {
        const index = records.findIndex((record) => record.seq <= seq && seq <= record.end);
        return index < 0 ? null : { block: this.blocks[mid], at: mid, index };
      }
    }
    return null;
  }

  holds(record) {
    return this.find(record.seq)?.block.records.includes(record) ?? false;
  }

  // --- the model: every change is drawn by the next `draw` --------------------------------

  /** Add one record after the last one. */
  push(record) {
    const tail = this.blocks.at(-1);
    if (tail && tail.records.length < BLOCK_ROWS) {
      tail.records.push(record);
      tail.height = tail.estimate = null;
    } else {
      this.blocks.push(new Block([record]));
    }
    this.count++;
  }

  /** Where a block starts (px from the first row). */
  topOf(at) {
    let top = 0;
    for (let i = 0; i < at; i++) top += this.heightOf(this.blocks[i]);
    return top;
  }

  /** The element showing `seq`, if it has one. */
  element(seq) {
    const found = this.find(seq);
    if (!found?.block.el || found.index >= found.block.rendered) return null;
    return found.block.el.children[found.index];
  }

  /** Add records (in seq order) before the first one; returns the height added above. */
  prepend(records) {
    const blocks = [];
    for (let start = 0; start < records.length; start += BLOCK_ROWS) blocks.push(new Block(records.slice(start, start + BLOCK_ROWS)));
    this.blocks.unshift(...blocks);
    this.lo += blocks.length;
    this.hi += blocks.length;
    this.count += records.length;
    const added = blocks.reduce((sum, block) => sum + this.heightOf(block), 0);
    this.setTop(this.topHeight + added); // drawn at once: the caller moves the scroll position
    return added;
  }

  setTop(height) {
    this.topHeight = Math.max(0, height);
    this.top.style.height = `${this.topHeight}px`;
  }

  /** A record changed (a `\r` continuation): its element, if it has one, is drawn again. */
  changed(record) {
    const found = this.find(record.seq);
    if (!found) return;
    found.block.height = found.block.estimate = null;
    const old = found.block.el && found.index < found.block.rendered ? found.block.el.children[found.index] : null;
    old?.replaceWith(this.render(record));
  }

  /** Remove whole blocks from the top until at most `cap` rows remain; returns the height removed. */
  trimTop(cap) {
    let removed = 0;
    let spacer = 0;
    while (this.count > cap && this.blocks.length) {
      const block = this.blocks.shift();
      removed += this.heightOf(block);
      if (!block.el) spacer += this.heightOf(block);
      this.count -= block.records.length;
      this.drop(block);
      this.lo = Math.max(0, this.lo - 1);
      this.hi = Math.max(0, this.hi - 1);
    }
    this.setTop(this.topHeight - spacer); // drawn at once: the caller moves the scroll position
    return removed;
  }

  /** Remove rows from the bottom until exactly `cap` remain (the reader keeps the top). */
  trimBottom(cap) {
    while (this.count > cap) {
      const block = this.blocks.at(-1);
      const excess = this.count - cap;
      if (block.records.length <= excess) {
        this.blocks.pop();
        this.drop(block);
        this.count -= block.records.length;
        this.hi = Math.min(this.hi, this.blocks.length);
        this.lo = Math.min(this.lo, this.hi);
        continue;
      }
      block.records.length -= excess;
      this.count -= excess;
      block.height = block.estimate = null;
      if (block.el) for (; block.rendered > block.records.length; block.rendered--) block.el.lastElementChild.remove();
    }
  }

  clear() {
    for (const block of this.blocks) this.drop(block);
    this.blocks = [];
    this.count = this.lo = this.hi = 0;
    this.setTop(0);
    this.bottom.style.height = "0px";
  }

  drop(block) {
    if (!block.el) return;
    this.domRows -= block.rendered;
    block.el.remove();
    block.el = null;
    block.rendered = 0;
  }

  // --- drawing ------------------------------------------------------------------------------

  /** Offset of the rows' container in the scrolling element (the "load earlier" button above;
   * for a task's section, everything above it in the main log). The scrolling element is
   * positioned, and nothing between it and the container is. */
  offset() {
    return this.container.offsetTop;
  }

  /**
   * Bring the elements in line with the model and the scroll position, once a frame.
   * `atBottom`: following, the view is the end. Returns how far the scroll position moved
   * because blocks above the view changed height (the caller keeps it, unless following).
   */
  draw(atBottom) {
    const viewHeight = this.log.clientHeight;
    const scrollTop = this.log.scrollTop - this.offset();
    const shift = this.measure(scrollTop);
    const heights = this.blocks.map((block) => this.heightOf(block));
    const total = heights.reduce((sum, height) => sum + height, 0);
    const viewTop = atBottom ? total - viewHeight : scrollTop + shift;
    const margin = OVERSCAN_VIEWPORTS * viewHeight;
    let lo = 0;
    let top = 0;
    while (lo < this.blocks.length - 1 && top + heights[lo] < viewTop - margin) top += heights[lo++];
    let hi = lo;
    let bottom = top;
    while (hi < this.blocks.length && bottom < viewTop + viewHeight + margin) bottom += heights[hi++];
    this.show(lo, hi);
    this.setTop(top);
    this.bottom.style.height = `${total - bottom}px`;
    return shift;
  }

  /** Measure the blocks with elements; the height gained or lost above `viewTop`. */
  measure(viewTop) {
    let shift = 0;
    let top = 0;
    for (let at = 0; at < this.hi; at++) {
      const block = this.blocks[at];
      const before = this.heightOf(block);
      if (at >= this.lo && block.el && block.rendered === block.records.length) {
        const height = block.el.getBoundingClientRect().height;
        if (height !== before) {
          block.height = height;
          if (top + before <= viewTop) shift += height - before;
        }
      }
      top += before;
    }
    return shift;
  }

  /** Elements for blocks [lo, hi), none for the others; new rows of shown blocks drawn. */
  show(lo, hi) {
    for (let at = this.lo; at < this.hi; at++) if (at < lo || at >= hi) this.drop(this.blocks[at]);
    let before = null; // the first shown element at or after the block being placed
    for (let at = hi - 1; at >= lo; at--) {
      const block = this.blocks[at];
      if (!block.el) {
        block.el = document.createElement("div");
        block.el.className = "block";
        this.container.insertBefore(block.el, before ?? this.bottom);
      }
      if (block.rendered < block.records.length) {
        const rows = block.records.slice(block.rendered).map(this.render);
        block.el.append(...rows);
        this.domRows += rows.length;
        block.rendered = block.records.length;
      }
      before = block.el;
    }
    this.lo = lo;
    this.hi = hi;
  }

  /** Drop every element (the view changed: times, wrap): the next draw builds them again. */
  redraw() {
    for (const block of this.blocks) this.drop(block);
    this.lo = this.hi = 0;
    this.invalidate();
  }
}
