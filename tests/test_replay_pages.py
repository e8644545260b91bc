"""Replay's fast path (streaming/pages.py): raw pages encoded a page at a time write exactly
what the frame path writes, streams read through it stay exact and resumable, and the pages
read ahead are the ones the stream asks for next."""

import threading
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from executions import storage
from executions.capture import NUL_SUBSTITUTE
from streaming import pages, shared_reads, sse
from streaming.frames import output_frame
from streaming.pages import SSE, TEXT, encode_sse, read_page
from streaming.replay import OutputState, chunk_payload, read_chunks
from tests.streaming_helpers import (
    RECEIVE_SECONDS,
    Response,
    db,
    finish,
    running_execution,
    seqs,
    store,
)

text = st.text(st.characters(exclude_categories=("Cs",)))  # lone surrogates never reach here
# A batch's chunks share one timestamp (the encoder makes each distinct one once).
SHARED_STAMP = datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=UTC)
stamps = st.one_of(st.just(SHARED_STAMP), st.datetimes(timezones=st.just(UTC)))
HOSTILE = [
    "plain\n",
    "crlf\r\n",
    "bare\rreturn",
    "",
    "\n",
    f"nul{NUL_SUBSTITUTE}here\n",
    'quote " back \\ slash </script>\n',
    "tab\t\x01\x1f\x7f control\n",
    "unicode é 😀 \u2028 \u2029 \ufeff\n",
    "data: event: id: 7\n\n",
    ": not a comment\n",
]


def _state(execution_id="01M8PV2WTMJPDAE5AZC6G7HQF1", action_ref="a.b", runner_ref="local"):
    return OutputState(execution_id, 1, "succeeded", 0, 0, None, action_ref, runner_ref)


def _frame_path_sse(state: OutputState, rows) -> bytes:
    """What the frame path writes for the same rows (ORM dicts, frames, one encode each)."""
    return b"".join(sse.encode(output_frame(chunk_payload(state, *row))) for row in rows)


@given(
    rows=st.lists(st.tuples(st.sampled_from(["stdout", "stderr", "other"]), text, stamps)),
    action_ref=text,
    runner_ref=text,
)
def test_it_encodes_a_page_as_the_frame_path_does(rows, action_ref, runner_ref):
    state = _state(action_ref=action_ref, runner_ref=runner_ref)
    numbered = [(seq, kind, data, stamp) for seq, (kind, data, stamp) in enumerate(rows, 1)]
    assert encode_sse(state, numbered, pages._datetime_stamp) == _frame_path_sse(state, numbered)


@pytest.mark.django_db(transaction=True)
def test_it_reads_the_rows_the_orm_reads(actions, tenant):
    execution = running_execution(actions["examples.print_lines"], tenant)
    store(execution, HOSTILE, "stdout")
    store(execution, HOSTILE[::-1], "stderr")
    execution.refresh_from_db()
    # Timestamps the database writes differently from isoformat: no or trailing-zero microseconds.
    for micro in (0, 100, 120000, 999999):
        stamp = datetime(2026, 1, 2, 3, 4, 5, micro, tzinfo=UTC)
        storage.store_batch(execution.id, [(execution.last_seq + 1, "other", f"{micro}\n", stamp)])
        execution.refresh_from_db()
    state = _state(execution.id, execution.action_ref, execution.runner_type)
    last = execution.last_seq
    for output_type in (None, "stdout", "stderr", "other"):
        chunks = read_chunks(state, 3, last, output_type)
        page = read_page(state, 3, last, output_type, SSE)
        assert page.body == b"".join(sse.encode(output_frame(chunk)) for chunk in chunks)
        text_page = read_page(state, 3, last, output_type, TEXT)
        assert text_page.body == "".join(chunk["data"] for chunk in chunks).encode()
        assert text_page.last_seq == page.last_seq == chunks[-1]["seq"]
        assert len(text_page) == len(page) == len(chunks)


@pytest.fixture
def small_pages(monkeypatch):
    """Pages of 3 rows, so a short log crosses several page boundaries."""
    monkeypatch.setattr(pages, "FAST_PAGE_ROWS", 3)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("home_loop", "small_pages")
async def test_it_replays_over_sse_across_pages_and_resumes_exactly(actions, tenant, member):
    execution = await db(running_execution)(actions["examples.print_lines"], tenant)
    await db(store)(execution, HOSTILE, "stdout")
    await db(store)(execution, ["err 1\n", "err 2\r\n"], "stderr")
    await finish(execution)
    total = len(HOSTILE) + 2
    url = f"/api/v1/executions/{execution.id}/output/stream"

    response = await Response.get(url, "from=0", user=member)
    frames = await response.events_until("done")
    assert seqs(frames) == list(range(1, total + 1))
    assert [f["data"]["data"] for f in frames[:-1]] == [*HOSTILE, "err 1\n", "err 2\r\n"]
    assert frames[-1]["data"]["final_seq"] == total
    await response.body()

    resumed = await Response.get(url, user=member, headers=[(b"last-event-id", b"4")])
    frames = await resumed.events_until("done")
    assert seqs(frames) == list(range(5, total + 1))
    await resumed.body()

    stderr = await Response.get(url, "from=0&type=stderr", user=member)
    frames = await stderr.events_until("done")
    assert seqs(frames) == [total - 1, total]
    await stderr.body()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("home_loop", "small_pages")
async def test_it_replays_plain_text_across_pages_filtered_in_sql(actions, tenant, member):
    execution = await db(running_execution)(actions["examples.print_lines"], tenant)
    await db(store)(execution, HOSTILE, "stdout")
    await db(store)(execution, ["e1\n", "e2\r\n", "e3 é\n", "e4\n"], "stderr")
    await db(store)(execution, HOSTILE[:2], "stdout")
    await finish(execution)
    url = f"/api/v1/executions/{execution.id}/output"

    whole = await Response.get(url, user=member)
    assert (await whole.body()).decode() == "".join(
        [*HOSTILE, "e1\n", "e2\r\n", "e3 é\n", "e4\n", *HOSTILE[:2]]
    )
    stderr = await Response.get(url, "type=stderr", user=member)
    assert (await stderr.body()).decode() == "e1\ne2\r\ne3 é\ne4\n"
    stdout = await Response.get(url, "type=stdout", user=member)
    assert (await stdout.body()).decode() == "".join([*HOSTILE, *HOSTILE[:2]])


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("home_loop", "small_pages")
async def test_it_reads_the_next_pages_while_one_is_written(actions, tenant, member, monkeypatch):
    execution = await db(running_execution)(actions["examples.print_lines"], tenant)
    await db(store)(execution, [f"line {n}\n" for n in range(1, 21)], "stdout")
    # From seq 21: stderr and stdout mixed, so a filtered page ends where no guess would.
    for output_type, count in [("stderr", 2), ("stdout", 1), ("stderr", 2), ("stdout", 1)]:
        await db(store)(execution, [f"{output_type}\n"] * count, output_type)
    await db(store)(execution, ["stderr\n"] * 3, "stderr")
    await finish(execution)
    url = f"/api/v1/executions/{execution.id}/output/stream"
    read_rows, started = pages.read_rows, []
    third_page_read, waited = threading.Event(), []

    def reading(execution_id, after, upto, output_type, kind):
        # The stream pool's threads: the second page's read lasts until the third's starts,
        # which only a stream that reads two pages ahead of the one it writes lets happen.
        started.append((output_type, after))
        if after == 6:
            third_page_read.set()
        if after == 3 and output_type is None:
            waited.append(third_page_read.wait(RECEIVE_SECONDS))  # a failure bound only
        return read_rows(execution_id, after, upto, output_type, kind)

    monkeypatch.setattr(pages, "read_rows", reading)
    response = await Response.get(url, "from=0", user=member)
    assert seqs(await response.events_until("done")) == list(range(1, 30))
    await response.body()
    assert waited == [True]
    # Every page once: the pages read ahead are the ones the stream then asked for.
    assert sorted(started) == [(None, after) for after in range(0, 29, 3)]

    started.clear()
    stderr = await Response.get(url, "from=0&type=stderr", user=member)
    assert seqs(await stderr.events_until("done")) == [21, 22, 24, 25, 27, 28, 29]
    await stderr.body()
    # Pages [21, 22, 24], [25, 27, 28], [29]: each read once, after the one before it.
    assert started == [("stderr", 0), ("stderr", 24), ("stderr", 28)]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("home_loop", "small_pages")
async def test_it_reads_no_page_ahead_that_the_cache_would_not_keep(
    actions, tenant, member, monkeypatch
):
    # Pages of three 100-character lines are over what the cache keeps: a page read ahead
    # would be dropped once read, and read again when the stream asks for it.
    monkeypatch.setattr(shared_reads, "SHARED_PAGE_CHARS", 4 * 200)
    execution = await db(running_execution)(actions["examples.print_lines"], tenant)
    await db(store)(execution, [f"{n:099d}\n" for n in range(1, 11)], "stdout")
    await finish(execution)
    read_rows, started = pages.read_rows, []

    def reading(execution_id, after, upto, output_type, kind):
        started.append(after)
        return read_rows(execution_id, after, upto, output_type, kind)

    monkeypatch.setattr(pages, "read_rows", reading)
    url = f"/api/v1/executions/{execution.id}/output"
    response = await Response.get(url, user=member)
    assert (await response.body()).decode() == "".join(f"{n:099d}\n" for n in range(1, 11))
    assert started == [0, 3, 6, 9]


def test_it_turns_a_timestamp_of_another_session_time_zone_into_utc():
    assert pages._postgresql_stamp("2026-01-02 08:34:05.5+05:30") == (
        "2026-01-02T03:04:05.500000+00:00"
    )
    assert pages._postgresql_stamp("2026-01-02 03:04:05+00") == "2026-01-02T03:04:05+00:00"
