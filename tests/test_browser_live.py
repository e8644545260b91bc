"""The pages' one live connection, in a real browser: many tabs share one WebSocket through a
SharedWorker, and the pages say in words what the connection is doing (over the stream
limit, logged out, reconnecting after a restart).

Playwright drives Debian's chromium against a real `manage.py serve` on the test database.
Screenshots of each state land in test-artifacts/.
"""

import pytest

from executions.models import Execution
from tests.browser_helpers import (
    BROWSER_TEST,
    FAST,
    RUN_SECONDS,
    api_run,
    browser_personas,
    log_in,
    new_context,
    screenshot,
)
from tests.runner_helpers import wait_until
from tests.server_helpers import running_server

pytest_plugins = ["tests.browser_helpers"]
pytestmark = BROWSER_TEST
tenant, owner = browser_personas()

TABS = 20
# The per-tenant stream limit stays at its default (10): twenty tabs only load if they share.
STREAM_LIMIT = 10
# Parameters of examples.print_lines: a line every 0.2 s for ten minutes, longer than any test
# may take (pytest-timeout), so a ticker is running whenever a test looks, however slow the
# machine. Each test has a server of its own, stopped at its end with what still runs (the
# database is emptied after each test, and must not be while a runner writes).
TICKER = {"count": 3000, "delay": 0.2}
# A stopping server gives running work this long before it abandons it.
QUICK_STOP = {"RUNNER_SHUTDOWN_GRACE_SECONDS": "1"}
# After a restart, the new server's runner marks the old one's work abandoned after this long.
ABANDON = {"RUNNER_ABANDON_GRACE_SECONDS": "2", "RUNNER_HEARTBEAT_SECONDS": "0.5"}


@pytest.fixture
def own_server(django_db_setup, django_db_blocker):
    """A server for this test only, stopped (with its runner) when the test ends."""
    with django_db_blocker.unblock(), running_server(**FAST, **QUICK_STOP) as server:
        yield server


@pytest.fixture
def busy_server(django_db_setup, django_db_blocker):
    """A server whose runner runs all the tabs' executions at once."""
    env = {**FAST, **QUICK_STOP, "RUNNER_CONCURRENCY": str(TABS + 4)}
    env["STREAM_MAX_CONNECTIONS_PER_TENANT"] = str(STREAM_LIMIT)
    with django_db_blocker.unblock(), running_server(**env) as server:
        yield server


STATE_JS = """() => [document.documentElement.dataset.live,
    document.querySelector('#main-pane .pane').dataset.conn,
    document.querySelector('#main-pane .pane').dataset.rows,
    document.querySelector('#live-banner').innerText]"""


def _wait_live(tab, tabs) -> None:
    """Until the tab's pane is live; if it never is, say what every tab shows."""
    try:
        tab.locator("#main-pane .pane[data-conn='live']").wait_for()
    except Exception as exc:
        raise AssertionError([other.evaluate(STATE_JS) for other in tabs]) from exc


def _newest_seq(page) -> int:
    return page.evaluate(
        "() => Math.max(0, ...[...document.querySelectorAll('#main-pane .line')]"
        ".map((row) => Number(row.dataset.end)))"
    )


def _wait_growing(page, beyond: int) -> None:
    page.wait_for_function(
        """(beyond) => [...document.querySelectorAll('#main-pane .line')]
             .some((row) => Number(row.dataset.end) > beyond)""",
        arg=beyond,
    )


def test_it_keeps_twenty_tabs_live_on_one_shared_connection(busy_server, page, actions, owner):
    server = busy_server
    log_in(page, server, "owner")
    runs = [api_run(page, server, "examples.print_lines", TICKER) for _ in range(TABS)]
    tabs = [page]
    tabs += [page.context.new_page() for _ in range(TABS - 1)]
    try:
        for tab, run in zip(tabs, runs, strict=True):
            tab.goto(f"{server.url}/executions/{run['id']}/")
        for tab in tabs:
            _wait_live(tab, tabs)
            tab.locator("#main-pane .line").first.wait_for()
            assert tab.evaluate("() => document.documentElement.dataset.live") == "shared"
        # Every tab keeps receiving: each shows a line newer than what it showed a moment ago.
        seen = [_newest_seq(tab) for tab in tabs]
        for tab, before in zip(tabs, seen, strict=True):
            _wait_growing(tab, before)
        screenshot(tabs[-1], "twenty-tabs-last-tab")
        # The browser still reaches the admin, the API and the list beside them.
        extra = page.context.new_page()
        assert extra.goto(f"{server.url}/admin/").status == 200
        assert extra.goto(f"{server.url}/api/v1/executions/?limit=1").status == 200
        extra.goto(f"{server.url}/executions/")
        extra.locator("#live-state[data-state='live']").wait_for()
        assert extra.locator(f"tr[data-id='{runs[0]['id']}'] .badge").text_content() == "running"
        # A tab that closes gives its subscription back; the others stay live.
        tabs.pop().close()
        _wait_growing(tabs[0], _newest_seq(tabs[0]))
    finally:
        for tab in tabs[1:]:
            tab.close()


LIMITED_JS = """() => {
    const banner = document.querySelector('#live-banner');
    const conn = document.querySelector('#main-pane .conn');
    if (banner.dataset.state !== 'limited' || conn.dataset.state !== 'limited') return null;
    return [banner.querySelector('[data-text]').textContent, conn.textContent];
}"""


def test_it_says_so_over_the_limit_then_recovers(browser, actions, tenant, owner):
    """A browser that holds the tenant's only stream slot; a second one is refused, says why
    and when it retries, and goes live once the slot is free (Retry, or by itself)."""
    env = {**FAST, **QUICK_STOP, "STREAM_MAX_CONNECTIONS_PER_TENANT": "1"}
    with running_server(**env) as server:
        holder = new_context(browser)
        waiting = new_context(browser)
        try:
            first = holder.new_page()
            log_in(first, server, "owner")
            run = api_run(first, server, "examples.print_lines", TICKER)
            first.goto(f"{server.url}/executions/{run['id']}/")
            first.locator("#main-pane .pane[data-conn='live']").wait_for()

            second = waiting.new_page()
            log_in(second, server, "owner")
            second.goto(f"{server.url}/executions/{run['id']}/")
            # The page retries by itself every few seconds (connecting for a moment each
            # time): banner and pane are read together, in one moment they say "limited".
            text, conn = second.wait_for_function(LIMITED_JS).json_value()
            assert text.startswith("Over the stream limit: Your tenant already has 1 open")
            assert "Retrying at" in text
            assert conn == "over the stream limit"
            second.get_by_role("button", name="Retry now").wait_for()
            screenshot(second, "over-the-limit")

            holder.close()  # the slot is free now
            second.get_by_role("button", name="Retry now").click()
            second.locator("#main-pane .pane[data-conn='live']").wait_for()
            assert second.locator("#live-banner").is_hidden()
            second.locator("#main-pane .line").first.wait_for()
        finally:
            waiting.close()


def _open_ticker(page, server, query: str = "") -> dict:
    """Log in, start a ticker and open its page until its pane is live; the run."""
    log_in(page, server, "owner")
    run = api_run(page, server, "examples.print_lines", TICKER)
    page.goto(f"{server.url}/executions/{run['id']}/{query}")
    page.locator("#main-pane .pane[data-conn='live']").wait_for()
    return run


def test_it_stops_after_logout_and_links_to_the_login(own_server, page, actions, owner):
    server = own_server
    run = _open_ticker(page, server)
    page.locator("#main-pane .line").first.wait_for()
    other = page.context.new_page()  # another tab of the same browser logs out
    other.goto(f"{server.url}/executions/")
    other.get_by_role("button", name="Log out").click()
    other.wait_for_url("**/accounts/login/**")
    banner = page.locator("#live-banner[data-state='stopped']")
    banner.wait_for()
    assert "Log in again to continue." in banner.text_content()
    login = page.get_by_role("link", name="Log in again")
    assert login.is_visible()
    # No line arrives once stopped (the last ones received may still be drawn: wait for that).
    # The pane's own state, not its data-cursor: that is written when a frame draws, so
    # right after the stop it can still equal the last row while newer chunks wait queued.
    page.wait_for_function(
        """() => { const pane = document.querySelector('#main-pane .pane');
                   const own = pane.outputPane;
                   const rows = [...pane.querySelectorAll('.line')];
                   return !own.queue.length && !own.held.length && !own.filling && !own.loading
                     && Number(rows.at(-1).dataset.end) === own.cursor; }"""
    )
    stopped_at = _newest_seq(page)
    wait_until(
        lambda: Execution.objects.get(pk=run["id"]).last_seq > stopped_at + 10,
        RUN_SECONDS,
        "ticks",
    )
    assert _newest_seq(page) == stopped_at
    screenshot(page, "logged-out")
    login.click()
    page.get_by_label("Username").fill("owner")
    page.get_by_label("Password").fill("pw-owner")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"**/executions/{run['id']}/")  # back where the reader was
    page.locator("#main-pane .pane[data-conn='live']").wait_for()
    other.close()


def test_it_rereads_the_list_after_a_server_restart(page, actions, owner):
    """The server dies while an execution runs; the restarted server's runner marks it
    abandoned, and the list (reconnected) shows it without a reload."""
    with running_server(**FAST, **ABANDON, **QUICK_STOP) as server:
        log_in(page, server, "owner")
        run = api_run(page, server, "examples.print_lines", TICKER)
        wait_until(
            lambda: Execution.objects.get(pk=run["id"]).status == "running",
            RUN_SECONDS,
            "the run",
        )
        page.goto(f"{server.url}/executions/")
        page.locator("#live-state[data-state='live']").wait_for()
        row = page.locator(f"tr[data-id='{run['id']}']")
        row.locator(".badge", has_text="running").wait_for()
        page.evaluate("() => { window.__sameDocument = true; }")
        server.kill()
        page.locator("#live-banner[data-state='reconnecting']").wait_for()
        assert "Retrying at" in page.locator("#live-banner").text_content()
        screenshot(page, "list-reconnecting")
        server.start()
        row.locator(".badge", has_text="abandoned").wait_for()
        page.locator("#live-state[data-state='live']").wait_for()
        assert page.evaluate("() => window.__sameDocument") is True
        assert page.locator("#live-banner").is_hidden()


def _contiguous(tab) -> bool:
    seqs = tab.evaluate(
        "() => [...document.querySelectorAll('#main-pane .line')].map((r) => Number(r.dataset.seq))"
    )
    return seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_it_elects_a_leader_tab_without_a_shared_worker(own_server, page, actions, owner):
    """`?live=elected`: as in a browser without SharedWorker, one tab (the Web Lock holder)
    holds the socket for the others over a BroadcastChannel; when it closes, another tab
    takes over and every line still arrives once."""
    server = own_server
    log_in(page, server, "owner")
    run = api_run(page, server, "examples.print_lines", TICKER)
    url = f"{server.url}/executions/{run['id']}/?live=elected"
    page.goto(url)
    page.wait_for_function("() => document.documentElement.dataset.live === 'leader'")
    follower = page.context.new_page()
    follower.goto(url)
    follower.locator("#main-pane .pane[data-conn='live']").wait_for()
    assert follower.evaluate("() => document.documentElement.dataset.live") == "follower"
    _wait_growing(follower, _newest_seq(follower))
    page.close()  # the leader goes: the follower takes the lock and the socket
    follower.wait_for_function("() => document.documentElement.dataset.live === 'leader'")
    _wait_growing(follower, _newest_seq(follower) + 5)
    assert _contiguous(follower)


def test_it_falls_back_to_a_socket_of_its_own(own_server, page, actions, owner):
    _open_ticker(page, own_server, "?live=page")
    assert page.evaluate("() => document.documentElement.dataset.live") == "page"
    _wait_growing(page, _newest_seq(page) + 3)
    assert _contiguous(page)
