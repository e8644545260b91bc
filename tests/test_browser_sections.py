"""Sections of the one log, in a real browser: a remote run's hosts as collapsible sections
(status, duration, link, each host's own lines), and the log's search reaching into them.

The hosts are Debian's sshd on loopback ports (tests/ssh_helpers.py: throwaway keys, the
`tailgate-ssh` user); each host prints the port it was reached on, so a section shows its own
host's lines and no other's. Screenshots land in test-artifacts/.
"""

import re

import pytest

from executions.models import Execution
from tests.browser_helpers import (
    BROWSER_TEST,
    api_run,
    browser_personas,
    log_in,
    screenshot,
    shown_lines,
    stored_lines,
    wait_settled,
)
from tests.runner_helpers import wait_until
from tests.ssh_helpers import (
    TEST_USER,
    running_lab,
)

pytest_plugins = ["tests.browser_helpers"]
pytestmark = BROWSER_TEST
tenant, owner = browser_personas()

# `$SSH_CONNECTION` ends with the server's port: each host names itself in its lines.
HOST_CMD = 'set -- $SSH_CONNECTION; echo "hello from port $4"; echo "bye from port $4"'


@pytest.fixture(scope="module")
def lab():
    with running_lab(2) as lab:
        yield lab


def _remote_run(page, server, lab, cmd: str) -> dict:
    parameters = {
        "hosts": [sshd.host for sshd in lab.servers],
        "username": TEST_USER,
        "private_key": lab.private_key,
        "cmd": cmd,
    }
    return api_run(page, server, "core.remote", parameters)


def _hosts(execution_id: str) -> dict[str, str]:
    """{host: child execution id} of a remote run."""
    children = Execution.objects.filter(parent_id=execution_id)
    return dict(children.values_list("task_name", "id"))


def _open(section) -> None:
    if section.get_attribute("open") is None:
        section.locator(":scope > summary").click()


def test_it_shows_each_host_of_a_remote_run_as_a_section_of_the_log(
    server, page, actions, lab, owner
):
    log_in(page, server, "owner")
    created = _remote_run(page, server, lab, HOST_CMD)
    # Opened at once: the hosts' executions may not exist yet, the page adds them as they come.
    page.goto(f"{server.url}/executions/{created['id']}/")
    page.locator("#status", has_text="succeeded").wait_for()
    sections = page.locator("#main-pane [data-log] #children > details.child")  # in the log
    sections.nth(1).wait_for(state="attached")
    assert sections.count() == 2
    hosts = _hosts(created["id"])
    assert sorted(hosts) == sorted(sshd.host for sshd in lab.servers)
    for sshd in lab.servers:
        child_id = hosts[sshd.host]
        section = page.locator(f"#children > details.child[data-id='{child_id}']")
        _open(section)
        wait_settled(page, f"details.child[data-id='{child_id}']")
        summary = section.locator(":scope > summary")
        assert summary.locator("[data-task]").text_content() == sshd.host
        assert summary.locator("[data-badge]").text_content() == "succeeded"
        assert re.fullmatch(r"\d+\.\d s", summary.locator("[data-duration]").text_content())
        assert summary.locator("[data-exit]").text_content() == "0"
        assert summary.locator("a[data-link]").get_attribute("href") == f"/executions/{child_id}/"
        rows = shown_lines(page, f"details.child[data-id='{child_id}']")
        assert [row[2] for row in rows] == [
            f"hello from port {sshd.port}",
            f"bye from port {sshd.port}",
        ]
        assert rows == stored_lines(child_id)
    # The run's own lines stay above the sections: one "finished" line per host.
    own = [row[2] for row in shown_lines(page)]
    for sshd in lab.servers:
        assert f"Host {sshd.host} finished (status=succeeded, exit_code=0)." in own
    screenshot(page, "execution-page-remote-hosts")
    # A section folds and unfolds; its lines are still there when it opens again.
    first = sections.nth(0)
    line = first.locator(".line").first
    assert line.is_visible()
    first.locator(":scope > summary").click()
    assert first.get_attribute("open") is None
    assert line.is_hidden()
    assert sections.nth(1).locator(".line").first.is_visible()  # the other host stays open
    first.locator(":scope > summary").click()
    line.wait_for()
    # Rendered by the server once finished: the same sections after a reload.
    page.reload()
    page.locator("#children > details.child").nth(1).wait_for(state="attached")
    ids = page.locator("#main-pane [data-log] #children > details.child").evaluate_all(
        "(sections) => sections.map((section) => section.dataset.id)"
    )
    assert sorted(ids) == sorted(hosts.values())


# Long enough that a host's section is taller than the log's view: finding its line scrolls.
LONG_HOST_CMD = (
    "set -- $SSH_CONNECTION; "
    'for i in $(seq 1 300); do if [ $i = 250 ]; then echo "needle on port $4"; '
    'else echo "hay $i"; fi; done'
)


# The log's own find bar (the sections' panes have hidden ones).
COUNT = "#main-pane > .pane > .find-bar [data-count]"


def _current(page) -> tuple[str, int]:
    """(execution, seq) of the marked row, once it is in the log's view and highlighted."""
    page.wait_for_function(
        """() => {
          const row = document.querySelector('#main-pane .line.target');
          const log = document.querySelector('#main-pane [data-log]').getBoundingClientRect();
          if (!row || row.offsetParent === null) return false;
          const box = row.getBoundingClientRect();
          return log.top <= box.top && box.bottom <= log.bottom
            && CSS.highlights.get('tg-current')?.size === 1;
        }"""
    )
    row = page.locator("#main-pane .line.target")
    assert row.count() == 1  # one marked line in the whole log
    pane = row.evaluate("(row) => row.closest('.pane').outputPane.execution")
    return pane, int(row.get_attribute("data-seq"))


def test_it_searches_the_sections_and_unfolds_the_one_with_the_match(
    server, page, actions, lab, owner
):
    log_in(page, server, "owner")
    created = _remote_run(page, server, lab, LONG_HOST_CMD)
    hosts = _hosts_when_finished(created["id"])
    page.goto(f"{server.url}/executions/{created['id']}/")
    page.locator("#status", has_text="succeeded").wait_for()
    sections = page.locator("#children > details.child")
    sections.nth(1).wait_for(state="attached")
    for i in range(2):  # both folded: the search has to unfold them
        if sections.nth(i).get_attribute("open") is not None:
            sections.nth(i).locator(":scope > summary").click()
    order = sections.evaluate_all(
        "(sections) => sections.map((s) => s.querySelector('[data-task]').textContent)"
    )
    first, second = (next(s for s in lab.servers if s.host == host) for host in order)
    search = page.get_by_role("searchbox", name="Search the whole log")
    count = page.locator(COUNT)
    search.fill("needle")
    page.locator("#main-pane > .pane[data-searching='false']").wait_for()
    assert count.text_content() == "1 of 2"
    assert _current(page) == (hosts[first.host], 250)
    section = page.locator(f"#children > details.child[data-id='{hosts[first.host]}']")
    assert section.get_attribute("open") is not None
    assert page.locator("#main-pane .line.target").text_content() == f"needle on port {first.port}"
    screenshot(page, "search-in-sections")
    page.get_by_role("button", name="Next match").click()
    page.locator(COUNT, has_text="2 of 2").wait_for()
    assert _current(page) == (hosts[second.host], 250)
    page.get_by_role("button", name="Previous match").click()
    page.locator(COUNT, has_text="1 of 2").wait_for()
    assert _current(page) == (hosts[first.host], 250)
    # The log's own lines come first, then the sections': the first host's port is in the
    # run's two lines about it and in that host's needle.
    search.fill(str(first.port))
    page.locator(COUNT, has_text="1 of 3").wait_for()
    own_pane, own_seq = _current(page)
    assert own_pane == created["id"]
    assert str(first.port) in page.locator("#main-pane .line.target").text_content()
    search.press("Shift+Enter")  # wraps around to the last match: the host's needle
    page.locator(COUNT, has_text="3 of 3").wait_for()
    assert _current(page) == (hosts[first.host], 250)
    assert own_seq < 5


def _hosts_when_finished(execution_id: str) -> dict[str, str]:
    wait_until(lambda: Execution.objects.get(pk=execution_id).is_finished, 120, "the run")
    return _hosts(execution_id)
