// The rows of an output pane, kept in blocks of BLOCK_ROWS rows. Each block is a CSS
// containment boundary (`contain: content`), so appending to the last block, or removing the
// first, lays out one block and moves the others, instead of laying out 10,000 rows.
// Measured in headless chromium at 5,000 lines/s: flat rows ~50 frames in 3 s, blocks of 250
// ~140 (see docs/web.md).

// Rows per block: small enough that laying out the block being appended to is cheap, large
// enough that a 10,000-row pane is only 40 blocks.
const BLOCK_ROWS = 250;

export class RowBlocks {
  constructor(container) {
    this.container = container;
    this.count = 0;
  }

  get first() {
    const block = this.container.firstElementChild;
    return block ? Number(block.firstElementChild.dataset.seq) : null;
  }

  get last() {
    const block = this.container.lastElementChild;
    return block ? Number(block.lastElementChild.dataset.seq) : null;
  }

  newBlock(rows) {
    const block = document.createElement("div");
    block.className = "block";
    block.append(...rows);
    return block;
  }

  /** Add row elements (in seq order) after the last one. */
  append(rows) {
    let next = 0;
    const tail = this.container.lastElementChild;
    if (tail && tail.childElementCount < BLOCK_ROWS) {
      next = BLOCK_ROWS - tail.childElementCount;
      tail.append(...rows.slice(0, next));
    }
    const blocks = [];
    for (; next < rows.length; next += BLOCK_ROWS) blocks.push(this.newBlock(rows.slice(next, next + BLOCK_ROWS)));
    this.container.append(...blocks);
    this.count += rows.length;
  }

  /** Add row elements (in seq order) before the first one. */
  prepend(rows) {
    const blocks = [];
    for (let start = 0; start < rows.length; start += BLOCK_ROWS) {
      blocks.push(this.newBlock(rows.slice(start, start + BLOCK_ROWS)));
    }
    this.container.prepend(...blocks);
    this.count += rows.length;
  }

  /** Remove whole blocks from the top until at most `cap` rows remain. */
  trimTop(cap) {
    while (this.count > cap) {
      const block = this.container.firstElementChild;
      this.count -= block.childElementCount;
      block.remove();
    }
  }

  /** Remove rows from the bottom until exactly `cap` remain (the reader keeps the top). */
  trimBottom(cap) {
    while (this.count > cap) {
      const block = this.container.lastElementChild;
      const excess = this.count - cap;
      if (block.childElementCount <= excess) {
        this.count -= block.childElementCount;
        block.remove();
        continue;
      }
      const range = document.createRange();
      range.setStartBefore(block.children[block.childElementCount - excess]);
      range.setEndAfter(block.lastElementChild);
      range.deleteContents();
      this.count -= excess;
    }
  }

  clear() {
    this.container.replaceChildren();
    this.count = 0;
  }
}
