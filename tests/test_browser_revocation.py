"""Revocation in a real browser: a page open on a running execution stops when its reader's
access goes (a tenant grant deleted, the user deactivated, an object permission removed),
says why in the server's words, offers the login, and shows no line written after that.

The change is made through the server (a superuser in the admin, in another browser): in
embedded mode the server's channel layer lives in its own process, so a doorbell rung by
this test's ORM would never reach it. The server's periodic safety re-check is an hour away
(`DOORBELL_ONLY`), so what stops the page is the access doorbell rung by the admin's save.

The execution is `core.local` running `cat` on a FIFO this test writes to: each line is
written when the test decides, and reaches the page through the server's runner and hub.
Whether a line written after the stop could still have arrived is bounded by a witness: the
superuser's own tab on the same execution, which does show it.
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from guardian.shortcuts import assign_perm

from executions.models import Execution
from rbac.models import Role
from streaming.guard import SESSION_ENDED
from tests.browser_helpers import (
    BROWSER_TEST,
    FAST,
    api_run,
    browser_personas,
    log_in,
    new_context,
    off_the_loop,
    persona,
    screenshot,
    shown_lines,
)
from tests.runner_helpers import wait_until
from tests.server_helpers import running_server

pytest_plugins = ["tests.browser_helpers"]
pytestmark = [*BROWSER_TEST, pytest.mark.either_mode]
tenant, owner = browser_personas()

# The safety re-check (STREAM_ACCESS_RECHECK_SECONDS) an hour away: only the doorbell can end
# a stream within a test. A stopping server abandons the `cat` after 1 s.
DOORBELL_ONLY = {
    **FAST,
    "STREAM_ACCESS_RECHECK_SECONDS": "3600",
    "RUNNER_SHUTDOWN_GRACE_SECONDS": "1",
}
# A failure bound only: the runner starts `cat`, which opens the FIFO, within a poll or two.
READER_SECONDS = 60
STOPPED = "Live updates stopped:"
LOGIN_AGAIN = "Log in again to continue."
GONE = "This execution is no longer visible to you."

LINE_SHOWN_JS = """(text) => document.querySelector('#main-pane .pane').outputPane
    .loadedRows().some((row) => row[2] === text)"""


@pytest.fixture
def own_server(django_db_setup, django_db_blocker):
    """A server for this test only, stopped (with its runner) when the test ends."""
    with django_db_blocker.unblock(), running_server(**DOORBELL_ONLY) as server:
        yield server


@pytest.fixture
def root(db, tenant):
    return persona("root", tenant, Role.ADMIN, is_staff=True, is_superuser=True)


@pytest.fixture
def admin(browser, own_server, root):
    """The superuser's browser (a context of its own: its own session and shared worker)."""
    context = new_context(browser)
    page = context.new_page()
    log_in(page, own_server, "root")
    yield page
    context.close()


@dataclass
class FedRun:
    """A running `cat <fifo>`: `write` sends it a line, which becomes the run's next line."""

    id: str
    url: str
    fd: int

    def write(self, text: str) -> None:
        os.write(self.fd, f"{text}\n".encode())


def _open_writer(fifo: Path) -> int | None:
    """The FIFO's write end once `cat` reads it (None before: no reader yet)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: nobody has it open for reading yet
        return None
    os.set_blocking(fd, True)
    return fd


@pytest.fixture
def fed_run(admin, own_server, actions, tmp_path) -> Iterator[FedRun]:
    """A run the test feeds line by line; it ends (cat reads EOF) when the test does."""
    fifo = tmp_path / "lines"
    os.mkfifo(fifo)
    run = api_run(admin, own_server, "core.local", {"cmd": f"cat {fifo}"})
    fd = wait_until(lambda: _open_writer(fifo), READER_SECONDS, "cat reading the FIFO")
    try:
        yield FedRun(run["id"], f"{own_server.url}/executions/{run['id']}/", fd)
    finally:
        os.close(fd)


def _wait_shown(page, text: str) -> None:
    page.wait_for_function(LINE_SHOWN_JS, arg=text)


def _texts(page) -> list[str]:
    return [text for _, _, text in shown_lines(page)]


def _open_live(page, server, username: str, run: FedRun) -> None:
    """Log in as `username`, open the run, and see a line written while it is open arrive."""
    log_in(page, server, username)
    page.goto(run.url)
    page.locator("#main-pane .pane[data-conn='live']").wait_for()
    run.write(f"while {username} reads")
    _wait_shown(page, f"while {username} reads")


def _witness(admin, run: FedRun):
    """The superuser's tab on the same run: it keeps receiving after the reader's stop."""
    tab = admin.context.new_page()
    tab.goto(run.url)
    tab.locator("#main-pane .pane[data-conn='live']").wait_for()
    return tab


def _assert_stopped(page, run: FedRun, reason: str) -> None:
    """The page left the live state and says why, in the server's words, with the login."""
    banner = page.locator("#live-banner[data-state='stopped']")
    banner.wait_for()
    assert banner.locator("[data-text]").text_content() == f"{STOPPED} {reason} {LOGIN_AGAIN}"
    pane = page.locator("#main-pane .pane")
    assert pane.get_attribute("data-conn") != "live"
    assert page.locator("#main-pane .conn").text_content() != "live"
    login = banner.get_by_role("link", name="Log in again")
    assert login.is_visible()
    assert login.get_attribute("href") == f"/accounts/login/?next=/executions/{run.id}/"


def _assert_nothing_after_the_stop(page, witness, run: FedRun) -> None:
    """A line written once the page stopped reaches the witness, never the page."""
    before = _texts(page)
    run.write("after the stop")
    _wait_shown(witness, "after the stop")
    assert _texts(page) == before
    assert "after the stop" not in before


def _save_user(admin, server, user_id: int, change) -> None:
    """Open the user's admin page, let `change` edit the form, and save it."""
    admin.goto(f"{server.url}/admin/auth/user/{user_id}/change/")
    change(admin)
    admin.locator("input[name='_save']").click()
    admin.locator(".messagelist .success").wait_for()


def test_it_stops_when_the_tenant_grant_goes(own_server, admin, fed_run, page, tenant):
    reader = persona("reader", tenant, Role.VIEWER)  # sees the run through this grant only
    _open_live(page, own_server, "reader", fed_run)
    witness = _witness(admin, fed_run)

    _save_user(admin, own_server, reader.pk, lambda form: form.check("#id_tenant_grants-0-DELETE"))

    _assert_stopped(page, fed_run, GONE)
    assert page.locator("#main-pane .conn").text_content() == "no longer visible"
    _assert_nothing_after_the_stop(page, witness, fed_run)
    screenshot(page, "revoked")


def test_it_stops_when_the_user_is_deactivated(own_server, admin, fed_run, page, tenant):
    reader = persona("reader", tenant, Role.VIEWER)
    _open_live(page, own_server, "reader", fed_run)
    witness = _witness(admin, fed_run)

    _save_user(admin, own_server, reader.pk, lambda form: form.get_by_label("Active").uncheck())

    _assert_stopped(page, fed_run, SESSION_ENDED)
    _assert_nothing_after_the_stop(page, witness, fed_run)
    page.get_by_role("link", name="Log in again").click()
    page.wait_for_url(f"**/accounts/login/?next=/executions/{fed_run.id}/")
    assert page.get_by_role("button", name="Log in").is_visible()


def test_it_stops_when_the_object_permission_goes(own_server, admin, fed_run, page, tenant):
    """A user without a tenant grant who sees this one execution through guardian."""

    def grantee():
        from django.contrib.auth import get_user_model

        user = get_user_model().objects.create_user("grantee", password="pw-grantee")
        assign_perm("executions.view_execution", user, Execution.objects.get(pk=fed_run.id))
        return user

    user = off_the_loop(grantee)
    _open_live(page, own_server, "grantee", fed_run)
    witness = _witness(admin, fed_run)

    manage = f"/admin/executions/execution/{fed_run.id}/permissions/user-manage/{user.pk}/"
    admin.goto(f"{own_server.url}{manage}")
    admin.get_by_role("button", name="Remove all Permissions").click()  # the chosen box
    admin.get_by_role("button", name="Save").click()
    admin.locator(".messagelist .success").wait_for()

    _assert_stopped(page, fed_run, GONE)
    _assert_nothing_after_the_stop(page, witness, fed_run)
