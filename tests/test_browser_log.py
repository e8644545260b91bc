"""Finding things in a log, in a real browser: search over the whole stored log, next and
previous, go to line, top, first stderr line and `#L` permalinks on a 1,000,000-line log;
`::group::` sections, `\\r` progress rows, execution links, the view toggles, and the pages
at 400 px.

The big log is written straight to the database (a bulk insert, not through a runner).
Screenshots land in test-artifacts/.
"""

import re
from datetime import UTC, datetime, timedelta

from django.db import transaction

from executions import services, storage
from executions.models import Execution, ExecutionStatus, OutputChunk
from tests.browser_helpers import (
    BROWSER_TEST,
    DOM_ROWS_BOUND,
    RUN_SECONDS,
    browser_personas,
    log_in,
    new_context,
    off_the_loop,
    screenshot,
    shown_lines,
    stored_lines,
    wait_settled,
)
from tests.runner_helpers import wait_until

pytest_plugins = ["tests.browser_helpers"]
pytestmark = BROWSER_TEST
tenant, owner = browser_personas()

BIG = 1_000_000
# Rows one insert statement carries while writing the big log.
INSERT_BATCH = 50_000
NEEDLE_EVERY = 100_000
FIRST_STDERR = 654_321
CHILD_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
SECTIONS_CMD = (
    "echo '::group::Install deps'; echo 'dep a'; echo 'dep b'; echo '::endgroup::'; "
    "echo 'after the group'; "
    "for p in 10 50 100; do printf '\\rprogress %d%%' $p; sleep 0.4; done; echo; "
    f"echo 'started task {CHILD_ID}'; "
    "echo 'a long line that wraps: " + "word " * 80 + "'"
)


def _big_line(seq: int) -> tuple[str, str]:
    if seq == FIRST_STDERR:
        return "stderr", "error: the first thing on stderr\n"
    if seq % NEEDLE_EVERY == 0:
        return "stdout", f"NEEDLE found at {seq}\n"
    return "stdout", f"big line {seq}\n"


def _write_big_log(action, tenant) -> Execution:
    with transaction.atomic():  # claimed before the server's runner can see it
        execution = services.create_execution(action, {"count": 1}, tenant=tenant)
        services.claim(execution.id, "test-runner")
    start = datetime.now(UTC)
    for first in range(1, BIG + 1, INSERT_BATCH):
        rows = []
        for seq in range(first, min(first + INSERT_BATCH, BIG + 1)):
            kind, data = _big_line(seq)
            rows.append((seq, kind, data, start + timedelta(milliseconds=seq)))
        with transaction.atomic():
            storage.insert_chunks(execution.id, rows)
    services.advance_last_seq(execution.id, BIG)
    services.finish(execution.id, ExecutionStatus.SUCCEEDED, exit_code=0)
    return execution


def _target(page) -> int:
    """The seq of the marked row, once it is scrolled into the log's view."""
    row = page.locator("#main-pane .line.target")
    row.wait_for()
    assert _in_view(page, row)
    return int(row.get_attribute("data-seq"))


def _in_view(page, row) -> bool:
    box = row.bounding_box()
    log = page.locator("#main-pane [data-log]").bounding_box()
    return log["y"] <= box["y"] and box["y"] + box["height"] <= log["y"] + log["height"]


def _wait_target(page, seq: int) -> None:
    page.locator(f"#main-pane .line.target[data-seq='{seq}']").wait_for()
    assert _target(page) == seq


def test_it_finds_lines_in_a_million_line_log(server, page, actions, tenant, owner):
    execution = off_the_loop(_write_big_log, actions["examples.print_lines"], tenant)
    log_in(page, server, "owner")
    # A permalink opens at its line, read from the middle of the log.
    page.goto(f"{server.url}/executions/{execution.id}/#L500001")
    _wait_target(page, 500_001)
    assert page.locator("#main-pane .line[data-seq='500001']").text_content() == "big line 500001"
    # Search: the whole log, page by page on the server; matches counted and highlighted.
    search = page.get_by_label("Search the whole log")
    search.fill("needle")
    count = page.locator("#main-pane [data-count]")
    page.locator("#main-pane .pane[data-searching='false']").wait_for()
    assert count.text_content() == "1 of 10"
    _wait_target(page, 100_000)
    current = page.evaluate("() => CSS.highlights.get('tg-current').size")
    assert current == 1  # "NEEDLE" in the current row, highlighted
    screenshot(page, "search-million-lines")
    page.get_by_role("button", name="Next match").click()
    _wait_target(page, 200_000)
    assert count.text_content() == "2 of 10"
    page.get_by_role("button", name="Previous match").click()
    page.get_by_role("button", name="Previous match").click()  # wraps around to the last
    _wait_target(page, 1_000_000)
    assert count.text_content() == "10 of 10"
    # Go to line, top, first stderr line; each one a shareable URL.
    page.get_by_label("Go to line").fill("777777")
    page.get_by_role("button", name="Go", exact=True).click()
    _wait_target(page, 777_777)
    assert page.evaluate("() => location.hash") == "#L777777"
    page.get_by_role("button", name="Top").click()
    _wait_target(page, 1)
    page.get_by_role("button", name="First stderr line").click()
    _wait_target(page, FIRST_STDERR)
    assert "stderr" in page.locator("#main-pane .line.target").get_attribute("class")
    # A line number is a permalink: clicking it makes the URL, the URL opens that line.
    page.locator("#main-pane .line[data-seq='654330'] a.ln").click()
    _wait_target(page, 654_330)
    assert page.url.endswith("#L654330")
    page.reload()
    _wait_target(page, 654_330)
    # A line that does not exist is answered, not ignored.
    page.get_by_label("Go to line").fill(str(BIG + 1))
    page.get_by_role("button", name="Go", exact=True).click()
    message = page.locator("#main-pane [data-find-message]")
    message.filter(has_text="There is no line").wait_for()
    assert message.text_content() == "There is no line 1000001: the log has 1,000,000 lines."
    assert int(page.locator("#main-pane .pane").get_attribute("data-dom-rows")) <= DOM_ROWS_BOUND


def test_it_folds_groups_and_redraws_progress_in_place(server, page, actions, owner):
    log_in(page, server, "owner")
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    response = page.context.request.post(
        f"{server.url}/api/v1/executions/",
        data={"action": "core.local", "parameters": {"cmd": SECTIONS_CMD}},
        headers={"X-CSRFToken": csrf, "Referer": server.url},
    )
    run = response.json()
    page.goto(f"{server.url}/executions/{run['id']}/")
    wait_settled(page)
    # `::group::` folds its lines (as GitHub Actions does); a click unfolds them.
    head = page.locator("#main-pane .line.group-head")
    assert head.text_content() == "Install deps"
    assert head.get_attribute("aria-expanded") == "false"
    dep = page.locator("#main-pane .line", has_text="dep a")
    assert dep.is_hidden()
    assert page.locator("#main-pane .line", has_text="after the group").is_visible()
    head.click()
    assert dep.is_visible()
    assert head.get_attribute("aria-expanded") == "true"
    # The progress bar came as several chunks (flushed during silences): one row, redrawn.
    chunks = list(
        OutputChunk.objects.filter(execution_id=run["id"], data__contains="progress")
        .order_by("seq")
        .values_list("data", flat=True)
    )
    assert len(chunks) > 1, chunks
    progress = page.locator("#main-pane .line", has_text="progress")
    assert progress.count() == 1
    assert progress.text_content() == "progress 100%"
    assert shown_lines(page) == stored_lines(run["id"])
    # Download keeps the exact bytes, every `\r` included.
    href = page.locator("#main-pane [data-download]").get_attribute("href")
    raw = page.context.request.get(f"{server.url}{href}").body()
    assert b"\rprogress 10%\rprogress 50%\rprogress 100%\n" in raw
    # An execution id in the output links to its page.
    link = page.locator("#main-pane a.exec-link")
    assert link.get_attribute("href") == f"/executions/{CHILD_ID}/"
    screenshot(page, "groups-and-progress")
    _check_toggles(page)


def _check_toggles(page) -> None:
    first_number = page.locator("#main-pane .line a.ln").first
    read = "(element) => getComputedStyle(element, '::before').content"
    assert first_number.evaluate(read) == '"1"'
    page.get_by_label("Timestamps").select_option("abs")
    assert re.fullmatch(r'"\d\d:\d\d:\d\d\.\d{3}  1"', first_number.evaluate(read))
    page.get_by_label("Timestamps").select_option("rel")
    assert re.fullmatch(r'"\+\d+\.\d{3}s  1"', first_number.evaluate(read))
    long_row = page.locator("#main-pane .line", has_text="a long line that wraps")
    wrapped = long_row.bounding_box()["height"]
    page.get_by_label("wrap").uncheck()
    assert long_row.bounding_box()["height"] < wrapped / 2
    page.get_by_role("button", name="Full screen").click()
    pane = page.locator("#main-pane .pane").bounding_box()
    viewport = page.viewport_size
    assert (pane["width"], pane["height"]) == (viewport["width"], viewport["height"])
    page.keyboard.press("Escape")
    assert page.locator("#main-pane .pane").bounding_box()["height"] < viewport["height"]


def test_it_fits_400_px_and_answers_unknown_filters(server, browser, actions, tenant, owner):
    context = new_context(browser, viewport={"width": 400, "height": 800})
    try:
        page = context.new_page()
        log_in(page, server, "owner")
        created = off_the_loop(
            services.create_execution, actions["examples.fail"], {}, tenant=tenant
        )
        wait_until(lambda: Execution.objects.get(pk=created.id).is_finished, RUN_SECONDS, "the run")
        page.goto(f"{server.url}/executions/?tenant=nope")
        assert page.get_by_text("There is no tenant “nope” you may see").is_visible()
        assert page.locator(f"tr[data-id='{created.id}']").is_visible()
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 400
        screenshot(page, "list-400px")
        page.goto(f"{server.url}/executions/{created.id}/")
        wait_settled(page)
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 400
        assert page.locator("#main-pane [data-log]").bounding_box()["height"] > 300
        screenshot(page, "execution-400px")
    finally:
        context.close()
