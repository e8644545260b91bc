"""Helpers and fixtures for the browser tests: Debian's chromium and the page (the real
`manage.py serve` is `tests.server_helpers.Server`).

Never downloads a browser: Playwright drives /usr/bin/chromium, installed with apt-get when
it is missing (the machines run as root).

A browser test module starts with

    pytest_plugins = ["tests.browser_helpers"]
    pytestmark = BROWSER_TEST
    tenant, owner = browser_personas()

and makes any other persona with `persona`, off Playwright's thread: Playwright marks its
thread as running an event loop for as long as the browser lives, and saving a user rings an
access doorbell, which cannot be sent from such a thread.
"""

import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db import connections

from executions.models import OutputChunk, Tenant
from rbac.models import Role
from tests.server_helpers import ARTIFACTS, Server, running_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# Row elements a virtualised output pane may hold (output.js loads up to 100,000 lines, and
# builds the blocks of 100 rows within a viewport of the view: about 160 at 900 px).
DOM_ROWS_BOUND = 1_000
# Every wait in a page gives up after this long (ms): a stuck stream fails, never hangs. A
# failure bound only: on the loaded CI machine a page waits on a starved server and browser.
PAGE_TIMEOUT_MS = 60_000
# A run of a few seconds ends within this, waited on from the test (a failure bound only).
RUN_SECONDS = 120
# Streams in the server re-read the log this often when no doorbell reaches them (a runner in
# another process, embedded mode): short, so tests do not wait on it.
FAST = {"RUNNER_POLL_SECONDS": "0.2", "STREAM_ACCESS_RECHECK_SECONDS": "0.3"}


# The marks of every browser test module (`pytestmark = BROWSER_TEST`): the server reads the
# test database from another process, so each test commits (transaction=True).
BROWSER_TEST = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("django_beside_playwright"),
]


def ensure_chromium() -> str:
    """The chromium binary, installed from Debian's packages if missing."""
    if not Path(CHROMIUM).exists():
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise RuntimeError(f"{CHROMIUM} is missing: run `apt-get install -y chromium` as root")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    return CHROMIUM


def off_the_loop(function, *args, **kwargs):
    """Call `function` in a thread of its own and return its result.

    Playwright's sync API marks the test's thread as running an event loop, and a service
    that publishes (`async_to_sync`) refuses to run in such a thread.
    """

    def call():
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call).result()


def api_run(page, server: Server, action: str, parameters: dict) -> dict:
    """Run an action through the server's API with the page's session (and CSRF token)."""
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    response = page.context.request.post(
        f"{server.url}/api/v1/executions/",
        data=json.dumps({"action": action, "parameters": parameters}),
        headers={"Content-Type": "application/json", "X-CSRFToken": csrf, "Referer": server.url},
        timeout=PAGE_TIMEOUT_MS,  # the context's default timeout does not reach its requests
    )
    assert response.status == 201, response.text()
    return response.json()


def log_in(page, server: Server, username: str) -> None:
    """Through the login page, as a person would."""
    page.goto(f"{server.url}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(f"pw-{username}")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{server.url}/executions/")


# Colour and style sequences (SGR): the page renders them, its text does not show them.
ANSI_SGR = re.compile(r"\x1b\[[0-9;]*m")


def line_text(data: str) -> str:
    """The text the page shows for a line's raw text (lines.js `lineText`, ANSI rendered)."""
    text = data.removesuffix("\n").removesuffix("\r")
    text = ANSI_SGR.sub("", text[text.rfind("\r") + 1 :])
    return text.removeprefix("::group::") if text.startswith("::group::") else text


def page_rows(chunks) -> list[list]:
    """[first seq, output type, text] of the rows a page shows for (seq, type, data) chunks.

    A chunk without a newline is continued by the next chunk of its type: they make one row
    (at the first chunk's place), showing what is left after the last `\r`.
    """
    rows: list[list] = []
    open_rows: dict[str, tuple[list, str]] = {}
    for seq, kind, data in chunks:
        if kind in open_rows:
            row, raw = open_rows.pop(kind)
            raw += data
            row[2] = line_text(raw)
        else:
            row, raw = [seq, kind, line_text(data)], data
            rows.append(row)
        if not raw.endswith("\n"):
            open_rows[kind] = (row, raw)
    return rows


def stored_lines(execution_id: str) -> list[list]:
    rows = OutputChunk.objects.filter(execution_id=execution_id).order_by("seq")
    return page_rows(rows.values_list("seq", "output_type", "data"))


SHOWN_LINES_JS = (
    """(selector) => document.querySelector(selector + ' .pane').outputPane.loadedRows()"""
)
# Every line the pane has loaded (most of them have no element: the rows are virtualised),
# hidden ones (folded groups, `::endgroup::`) included.


def shown_lines(page, pane: str = "#main-pane") -> list[list]:
    """[seq, output type, text] of every line a pane has loaded, in order."""
    return page.evaluate(SHOWN_LINES_JS, pane)


def wait_settled(page, pane: str = "#main-pane") -> None:
    """Until the pane's stream said `done` and every line it delivered is on screen."""
    page.wait_for_selector(f"{pane} .pane[data-settled='true']", timeout=PAGE_TIMEOUT_MS)


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# Installed in a page (by the browser tests and bench/web_flood.py): frame gaps
# (requestAnimationFrame), event-loop lag (a timeout's delay, sampled every 50 ms), input delay
# (click handler start minus the event's time) and the most output rows the pane held as
# elements.
PROBE_JS = """() => {
  const probe = (window.__probe = { gaps: [], lags: [], inputs: [], maxRows: 0, stop: false });
  const pane = document.querySelector('#main-pane .pane');
  let last = performance.now();
  const frame = (now) => {
    probe.gaps.push(now - last);
    last = now;
    probe.maxRows = Math.max(probe.maxRows, Number(pane.dataset.domRows || 0));
    if (!probe.stop) requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
  probe.timer = setInterval(() => {
    const start = performance.now();
    setTimeout(() => probe.lags.push(performance.now() - start), 0);
  }, 50);
  document.addEventListener('click', (event) => probe.inputs.push(performance.now() - event.timeStamp), true);
}"""

# Stops the probe; its raw samples (gaps and inputs in ms) and their summary.
RESULTS_JS = """() => {
  const probe = window.__probe;
  probe.stop = true;
  clearInterval(probe.timer);
  const sorted = (xs) => [...xs].sort((a, b) => a - b);
  const gaps = sorted(probe.gaps.slice(1));
  return {
    gaps,
    inputs: sorted(probe.inputs),
    frames: gaps.length,
    maxGap: gaps.at(-1),
    p95Gap: gaps[Math.floor(gaps.length * 0.95)],
    maxLag: Math.max(...probe.lags),
    maxInput: Math.max(...probe.inputs),
    maxRows: probe.maxRows,
  };
}"""


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def django_beside_playwright():
    """Playwright's sync API keeps an event loop marked running in the test's thread for as
    long as the browser lives, which Django reads as "called from async code" and refuses
    database calls. Browser tests call the database synchronously, between browser steps,
    never from a coroutine, so the check is switched off for the module (autouse it there)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get on a machine that lacks it."""
    return ensure_chromium()


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def new_context(browser, **options):
    """A browser context whose every wait gives up after PAGE_TIMEOUT_MS (Playwright's own
    default, 30 s, is a bound a starved machine can reach)."""
    context = browser.new_context(**{"viewport": {"width": 1280, "height": 900}, **options})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    return context


@pytest.fixture
def page(browser):
    context = new_context(browser)
    page = context.new_page()
    # A failing test shows the page's script errors beside its own.
    page.on("pageerror", lambda error: print(f"page error: {error}"))
    page.on(
        "console", lambda message: message.type == "error" and print(f"console: {message.text}")
    )
    yield page
    context.close()


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker):
    """One server for the module (runner in-process); its database is the test database."""
    with django_db_blocker.unblock(), running_server(**FAST) as server:
        yield server


def browser_personas():
    """The `tenant` and `owner` fixtures of a browser test module, made off Playwright's
    thread (the suite's own, in conftest.py, save users from the test's thread)."""

    @pytest.fixture
    def tenant(db):
        return off_the_loop(Tenant.default)

    @pytest.fixture
    def owner(db, tenant):
        return persona("owner", tenant, Role.ADMIN, is_staff=True)

    return tenant, owner


def persona(username: str, tenant, role: str, **extra):
    """A user with a password `pw-<username>` and a grant, made off Playwright's thread."""
    from django.contrib.auth import get_user_model

    from rbac.models import TenantGrant

    def make():
        user = get_user_model().objects.create_user(username, password=f"pw-{username}", **extra)
        TenantGrant.objects.create(user=user, tenant=tenant, role=role)
        return user

    return off_the_loop(make)
