"""The capture pipeline on its own: decoding, masking, line splitting, batching."""

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from executions.capture import (
    BATCH_MAX_LINES,
    NUL_SUBSTITUTE,
    PARTIAL_FLUSH_SECONDS,
    PARTIAL_MAX_AGE_SECONDS,
    PENDING_HIGH_WATER_LINES,
    LineSplitter,
    OutputLost,
    OutputSink,
    SecretMasker,
    StreamCapture,
    cut_utf8,
    mask_text,
)
from executions.models.actions import MASK

# Waiting for the sink's own tasks: a failure bound only (never a measure of how soon), long
# enough for an event loop a starved CPU stalls for seconds.
WAIT_SECONDS = 60


def _feed_in_pieces(text: str, secrets: list[str], cuts: list[int]) -> str:
    masker = SecretMasker(secrets)
    out, start = [], 0
    for cut in sorted(set(cuts)):
        out.append(masker.feed(text[start:cut]))
        start = cut
    out.append(masker.feed(text[start:]))
    out.append(masker.flush())
    return "".join(out)


def test_it_masks_a_secret_and_its_json_form():
    text = 'pw=hunter"2 json={"pw": "hunter\\"2"}\n'
    assert mask_text(text, ['hunter"2']) == f'pw={MASK} json={{"pw": "{MASK}"}}\n'


def test_it_masks_a_secret_split_across_every_possible_read():
    text = "before s3cr3t-value after s3cr3t-value\n"
    for cut in range(len(text) + 1):
        assert _feed_in_pieces(text, ["s3cr3t-value"], [cut]) == (f"before {MASK} after {MASK}\n")


def test_it_does_not_mask_a_prefix_of_a_secret():
    assert _feed_in_pieces("s3cr3t", ["s3cr3t-value"], [3]) == "s3cr3t"


def test_it_prefers_the_longer_of_two_overlapping_secrets():
    assert mask_text("abcdef abc", ["abc", "abcdef"]) == f"{MASK} {MASK}"


@settings(max_examples=300, deadline=None)
@given(
    secret=st.text(alphabet='ab"\\\nx', min_size=1, max_size=6),
    filler=st.lists(st.text(alphabet='ab"\\\nxyz', max_size=8), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=80), max_size=8),
)
def test_it_masks_the_same_whatever_the_split_points(secret, filler, cuts):
    text = secret.join(filler) + secret
    whole = mask_text(text, [secret])
    assert _feed_in_pieces(text, [secret], cuts) == whole
    assert whole == text.replace(secret, MASK) or secret != _json(secret)
    assert secret not in whole.replace(MASK, "\0")


def _json(secret: str) -> str:
    import json

    return json.dumps(secret)[1:-1]


@settings(max_examples=200, deadline=None)
@given(
    secret=st.text(alphabet="abcé€\n", min_size=2, max_size=8),
    prefix=st.text(alphabet="abcxyé€\n", max_size=20),
    suffix=st.text(alphabet="abcxyé€\n", max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=10),
)
def test_it_never_stores_a_secret_from_a_pipe_split_anywhere(secret, prefix, suffix, cuts):
    """Bytes through the whole stream path (decoder, masker, splitter), cut at byte level."""
    raw = (prefix + secret + suffix + secret).encode()
    capture = StreamCapture("stdout", [secret], max_chunk_bytes=1024)
    pieces, start = [], 0
    for cut in sorted({c for c in cuts if c < len(raw)}):
        pieces += capture.feed(raw[start:cut], now=0.0)
        start = cut
    pieces += capture.feed(raw[start:], now=0.0)
    pieces += capture.close(now=0.0)
    stored = "".join(pieces)
    assert stored == mask_text(raw.decode(), [secret])
    assert secret not in stored.replace(MASK, "\0")


def test_it_keeps_a_multibyte_character_split_across_reads_whole():
    capture = StreamCapture("stdout", [], max_chunk_bytes=1024)
    raw = "héllo €uro\n".encode()
    lines = []
    for i in range(len(raw)):
        lines += capture.feed(raw[i : i + 1], now=0.0)
    assert lines == ["héllo €uro\n"]


def test_it_replaces_invalid_utf8_without_failing():
    capture = StreamCapture("stdout", [], max_chunk_bytes=1024)
    lines = capture.feed(b"ok \xff\xfe bad\n", now=0.0) + capture.close(now=0.0)
    assert lines == ["ok \ufffd\ufffd bad\n"]


def test_it_splits_lines_and_keeps_blank_ones():
    splitter = LineSplitter(1024)
    assert splitter.feed("a\n\nb", now=0.0) == ["a\n", "\n"]
    assert splitter.partial == "b"
    assert splitter.feed("c\n", now=0.0) == ["bc\n"]


def test_it_flushes_a_partial_line_only_after_the_silence():
    capture = StreamCapture("stdout", [], max_chunk_bytes=1024)
    assert capture.feed(b"Password: ", now=10.0) == []
    assert capture.stale_partial(now=10.0 + PARTIAL_FLUSH_SECONDS / 2) == []
    assert capture.stale_partial(now=10.0 + PARTIAL_FLUSH_SECONDS) == ["Password: "]


def test_it_cuts_a_long_line_at_character_boundaries():
    line = "€" * 1000 + "\n"  # 3001 bytes
    pieces = cut_utf8(line, 1000)
    assert "".join(pieces) == line
    assert all(len(p.encode()) <= 1000 for p in pieces)
    assert len(pieces) == 4


def test_it_bounds_an_endless_line_as_it_arrives():
    capture = StreamCapture("stdout", [], max_chunk_bytes=4096)
    emitted = []
    for _ in range(10):
        emitted += capture.feed(b"x" * 3000, now=0.0)
    emitted += capture.close(now=0.0)
    assert "".join(emitted) == "x" * 30000
    assert all(len(p) <= 4096 for p in emitted)
    assert not any(p.endswith("\n") for p in emitted)


async def test_it_batches_with_gapless_seq_in_read_order():
    batches = []

    async def write(batch):
        batches.append(batch)

    sink = OutputSink("01TEST", write, max_chunk_bytes=1024)
    writer = asyncio.create_task(sink.run())
    await sink.feed("stdout", b"one\ntwo\n")
    await sink.feed("stderr", b"oops\n")
    await sink.feed("stdout", b"three")
    sink.close_streams()
    await asyncio.wait_for(writer, WAIT_SECONDS)
    rows = [row for batch in batches for row in batch.rows]
    assert [(seq, kind, data) for seq, kind, data, _ in rows] == [
        (1, "stdout", "one\n"),
        (2, "stdout", "two\n"),
        (3, "stderr", "oops\n"),
        (4, "stdout", "three"),
    ]
    assert all(b.first_seq == b.rows[0][0] and b.last_seq == b.rows[-1][0] for b in batches)


async def test_it_caps_the_batch_size():
    batches = []

    async def write(batch):
        batches.append(len(batch.rows))

    sink = OutputSink("01TEST", write, max_chunk_bytes=1024)
    writer = asyncio.create_task(sink.run())
    await sink.feed("stdout", b"x\n" * (BATCH_MAX_LINES * 2 + 10))
    sink.close_streams()
    await asyncio.wait_for(writer, WAIT_SECONDS)
    assert sum(batches) == BATCH_MAX_LINES * 2 + 10
    assert max(batches) == BATCH_MAX_LINES


async def test_it_flushes_a_prompt_without_a_newline_while_the_stream_is_open():
    written = asyncio.Queue()

    async def write(batch):
        await written.put(batch)

    sink = OutputSink("01TEST", write, max_chunk_bytes=1024)
    writer = asyncio.create_task(sink.run())
    await sink.feed("stdout", b"Continue? [y/N] ")
    batch = await asyncio.wait_for(written.get(), WAIT_SECONDS)
    assert [row[2] for row in batch.rows] == ["Continue? [y/N] "]
    sink.close_streams()
    await asyncio.wait_for(writer, WAIT_SECONDS)


def test_it_flushes_a_partial_line_redrawn_faster_than_the_silence_at_its_max_age():
    capture = StreamCapture("stdout", [], max_chunk_bytes=1024)
    now = 0.0
    flushed = []
    while now < PARTIAL_MAX_AGE_SECONDS + 0.2:
        capture.feed(b"\rprogress", now=now)
        flushed += capture.stale_partial(now=now)
        now += PARTIAL_FLUSH_SECONDS / 2
    assert len(flushed) == 1 and flushed[0].startswith("\rprogress")


async def test_it_does_not_flush_a_partial_line_while_the_writer_holds_the_readers_back():
    release = asyncio.Event()
    batches = []

    async def slow_write(batch):
        await release.wait()
        batches.append(batch)

    sink = OutputSink("01TEST", slow_write, max_chunk_bytes=1024)
    writer = asyncio.create_task(sink.run())
    # Enough lines to pass the high-water mark, ending mid-line.
    await sink.feed("stdout", b"line\n" * PENDING_HIGH_WATER_LINES + b"half a li")
    feeding = asyncio.create_task(sink.feed("stdout", b"ne\n"))  # blocked: no room
    await asyncio.sleep(PARTIAL_FLUSH_SECONDS * 3)  # a stall far longer than the silence
    assert not feeding.done()
    release.set()
    await asyncio.wait_for(feeding, WAIT_SECONDS)
    sink.close_streams()
    await asyncio.wait_for(writer, WAIT_SECONDS)
    data = [row[2] for batch in batches for row in batch.rows]
    assert data[-1] == "half a line\n"
    assert all(d.endswith("\n") for d in data)


class _FlakyWrite:
    """A batch writer that fails its first `failures` calls (as a database going away)."""

    def __init__(self, failures: int, error: Exception | None = None):
        self.failures = failures
        self.error = error or ConnectionError("server closed the connection")
        self.calls = 0
        self.stored: list[tuple[int, str, str]] = []
        self.attempts_seen: list[int] = []

    async def __call__(self, batch):
        self.calls += 1
        self.attempts_seen.append(batch.attempts)
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        self.stored += [(seq, kind, data) for seq, kind, data, _ in batch.rows]


async def test_it_keeps_a_batch_that_failed_to_commit_and_writes_it_again():
    write = _FlakyWrite(failures=3)
    sink = OutputSink("01TEST", write, max_chunk_bytes=1024)
    writer = asyncio.create_task(sink.run())
    await sink.feed("stdout", b"one\ntwo\n")
    await sink.feed("stderr", b"three\n")
    sink.close_streams()
    await asyncio.wait_for(writer, WAIT_SECONDS)
    assert [data for _, _, data in write.stored] == ["one\n", "two\n", "three\n"]
    assert [seq for seq, _, _ in write.stored] == [1, 2, 3]
    assert write.calls > 3 and write.attempts_seen[:4] == [0, 1, 2, 3]
    assert sink.stored_seq == 3 and sink.failure is None


async def test_it_holds_the_readers_while_a_failing_write_is_retried():
    write = _FlakyWrite(failures=10**9)
    sink = OutputSink("01TEST", write, max_chunk_bytes=1024, outage_limit=3600)
    writer = asyncio.create_task(sink.run())
    await sink.feed("stdout", b"line\n" * PENDING_HIGH_WATER_LINES)
    blocked = asyncio.create_task(sink.feed("stdout", b"more\n"))
    await wait_for_condition(lambda: write.calls >= 3)
    assert not blocked.done() and not sink.has_room  # the action would block on its pipe
    write.failures = 0  # the database is back
    await asyncio.wait_for(blocked, WAIT_SECONDS)
    sink.close_streams()
    await asyncio.wait_for(writer, WAIT_SECONDS)
    assert [seq for seq, _, _ in write.stored] == list(range(1, PENDING_HIGH_WATER_LINES + 2))
    assert write.stored[-1][2] == "more\n"


async def test_it_gives_up_after_the_outage_limit_and_says_why():
    write = _FlakyWrite(failures=10**9)
    sink = OutputSink("01TEST", write, max_chunk_bytes=1024, outage_limit=0.3)
    writer = asyncio.create_task(sink.run())
    await sink.feed("stdout", b"lost\n")
    with pytest.raises(OutputLost, match="unavailable for more than 0 s"):
        await asyncio.wait_for(writer, WAIT_SECONDS)
    assert "output after seq 0 could not be stored" in sink.failure
    await asyncio.wait_for(sink.feed("stdout", b"x\n" * 100_000), WAIT_SECONDS)  # never blocks
    assert write.stored == []


async def test_it_gives_up_at_once_on_an_error_retrying_cannot_fix():
    write = _FlakyWrite(failures=10**9, error=ValueError("bad data"))
    sink = OutputSink(
        "01TEST",
        write,
        max_chunk_bytes=1024,
        retryable=lambda exc: not isinstance(exc, ValueError),
    )
    writer = asyncio.create_task(sink.run())
    await sink.feed("stdout", b"x\n")
    with pytest.raises(OutputLost, match="bad data"):
        await asyncio.wait_for(writer, WAIT_SECONDS)
    assert write.calls == 1


async def wait_for_condition(predicate, timeout: float = WAIT_SECONDS):
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def test_it_stores_nul_as_the_visible_substitute():
    capture = StreamCapture("stdout", [], max_chunk_bytes=1024)
    assert capture.feed(b"a\x00b\n\x00", now=0) == [f"a{NUL_SUBSTITUTE}b\n"]
    assert capture.close(now=0) == [NUL_SUBSTITUTE]
