"""Replay and backfill reads shared by the streams of a process.

A thousand viewers of one execution that all need seqs 501..1000 (a flood batch that came
without its chunks, a resync after Redis came back, a crowd joining at once) ask the
database once: the first asks, the others await the same read, and the page stays in a small
cache for the ones a moment behind. Every page read is of committed output (its upper bound
comes from a committed state or a message published after commit), so a cached page is
never stale. The frames are shared too, with their encodings (streaming/frames.py).
"""

import asyncio
import time
import weakref
from collections import OrderedDict

from streaming.db import run_db
from streaming.frames import Frame, output_frame
from streaming.pages import ChunkPage, read_page
from streaming.replay import OutputState, output_state, read_chunks

# Recent pages kept, and what they may hold in all (chunk text of frame pages, bytes of
# encoded pages): enough for viewers a few pages apart to share, small beside a process's
# memory.
SHARED_PAGES = 64
SHARED_PAGE_CHARS = 16 * 1024 * 1024

PageKey = tuple[str, int, int, str | None, str | None]
Page = list[Frame] | ChunkPage


def _chars(page: Page) -> int:
    if isinstance(page, ChunkPage):
        return len(page.body)
    return sum(len(frame.data["data"]) for frame in page)


def kept(page: Page) -> bool:
    """Whether the cache keeps a page this big once read (a page read ahead that it would
    not keep is read again when asked for: not worth reading ahead)."""
    return _chars(page) <= SHARED_PAGE_CHARS // 4


class PageCache:
    def __init__(self) -> None:
        self.pending: dict[PageKey, asyncio.Future[Page]] = {}
        self.pages: OrderedDict[PageKey, tuple[Page, int]] = OrderedDict()
        self.chars = 0

    def remember(self, key: PageKey, page: Page) -> None:
        if not kept(page):
            return  # a few huge chunks: not worth evicting everything else for
        size = _chars(page)
        self.pages[key] = (page, size)
        self.chars += size
        while len(self.pages) > SHARED_PAGES or self.chars > SHARED_PAGE_CHARS:
            _, (_, evicted) = self.pages.popitem(last=False)
            self.chars -= evicted


_caches: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PageCache]" = (
    weakref.WeakKeyDictionary()
)


def _read(state: OutputState, after: int, upto: int, output_type: str | None) -> list[Frame]:
    return [output_frame(chunk) for chunk in read_chunks(state, after, upto, output_type)]


async def shared_page(
    state: OutputState, after: int, upto: int, output_type: str | None
) -> list[Frame]:
    """One page (`read_chunks`) as frames, read once however many streams want it."""
    key = (state.execution_id, after, upto, output_type, None)
    return await _shared(key, _read, state, after, upto, output_type)  # type: ignore[return-value]


async def shared_rows(
    state: OutputState, after: int, upto: int, output_type: str | None, kind: str
) -> ChunkPage:
    """One page of the log encoded for `kind`'s format (`streaming.pages.read_page`,
    FAST_PAGE_ROWS at most), read and encoded once however many streams want it."""
    key = (state.execution_id, after, upto, output_type, kind)
    page = await _shared(key, read_page, state, after, upto, output_type, kind)
    return page  # type: ignore[return-value]


def prefetch_rows(
    state: OutputState, after: int, upto: int, output_type: str | None, kind: str
) -> None:
    """Start reading the page `shared_rows` will be asked for next, without waiting: the
    database thread reads it while the stream writes the current one."""
    key = (state.execution_id, after, upto, output_type, kind)
    _start(_cache(), key, read_page, state, after, upto, output_type, kind)


def _cache() -> PageCache:
    loop = asyncio.get_running_loop()
    cache = _caches.get(loop)
    if cache is None:
        cache = _caches[loop] = PageCache()
    return cache


def _start(cache: PageCache, key: PageKey, read, *args) -> "asyncio.Future[Page] | None":
    """The read of `key` under way (started now if need be); None when it is cached."""
    if key in cache.pages:
        return None
    task = cache.pending.get(key)
    if task is None:
        # Its own task: a viewer that leaves mid-read cancels only its own wait.
        task = asyncio.ensure_future(run_db(read, *args))
        cache.pending[key] = task
        task.add_done_callback(lambda done: _settle(cache, key, done))
    return task


async def _shared(key: PageKey, read, *args) -> Page:
    cache = _cache()
    task = _start(cache, key, read, *args)
    if task is None:
        cache.pages.move_to_end(key)
        return cache.pages[key][0]
    return await asyncio.shield(task)


def _settle(cache: PageCache, key: PageKey, task: "asyncio.Future[Page]") -> None:
    cache.pending.pop(key, None)
    if not task.cancelled() and task.exception() is None:
        cache.remember(key, task.result())


_states: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, tuple[float, asyncio.Future]]]" = weakref.WeakKeyDictionary()


async def shared_state(execution_id: str, not_before: float) -> OutputState | None:
    """The execution's state (`output_state`), read once for the streams that ask while a
    read is under way: a status change wakes every viewer of the execution at once.

    A read is shared only if it started at or after `not_before` (monotonic time): when the
    caller learned of the change (a message's arrival), whose commit it must see.
    """
    loop = asyncio.get_running_loop()
    pending = _states.setdefault(loop, {})
    started, task = pending.get(execution_id, (-1.0, None))
    if task is None or started < not_before:
        started = time.monotonic()
        task = asyncio.ensure_future(run_db(output_state, execution_id))
        pending[execution_id] = (started, task)
        task.add_done_callback(lambda done: _forget_state(pending, execution_id, done))
    return await asyncio.shield(task)


def _forget_state(pending: dict, execution_id: str, task: asyncio.Future) -> None:
    if pending.get(execution_id, (0, None))[1] is task:
        del pending[execution_id]
    if not task.cancelled():
        task.exception()  # retrieved: every waiter got it, or none was left to
