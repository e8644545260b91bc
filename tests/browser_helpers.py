"""Helpers for the browser tests: Debian's chromium and the page (the real `manage.py serve`
is `tests.server_helpers.Server`).

Never downloads a browser: Playwright drives /usr/bin/chromium, installed with apt-get when
it is missing (the machines run as root).
"""

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from django.db import connections

from executions.models import OutputChunk
from tests.server_helpers import ARTIFACTS, Server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# Every wait in a page gives up after this long (ms): a stuck stream fails, never hangs.
PAGE_TIMEOUT_MS = 30_000


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
    """The text the page shows for a stored chunk (output.js `lineText`, ANSI rendered)."""
    text = data.removesuffix("\n").removesuffix("\r")
    return ANSI_SGR.sub("", text[text.rfind("\r") + 1 :])


def stored_lines(execution_id: str) -> list[list]:
    rows = OutputChunk.objects.filter(execution_id=execution_id).order_by("seq")
    return [
        [seq, kind, line_text(data)]
        for seq, kind, data in rows.values_list("seq", "output_type", "data")
    ]


SHOWN_LINES_JS = """(selector) => [...document.querySelectorAll(selector + ' .line')].map(
    (row) => [Number(row.dataset.seq), row.classList[1], row.textContent])"""


def shown_lines(page, pane: str = "#main-pane") -> list[list]:
    """[seq, output type, text] of every row in a pane, in DOM order."""
    return page.evaluate(SHOWN_LINES_JS, pane)


def wait_settled(page, pane: str = "#main-pane") -> None:
    """Until the pane's stream said `done` and every line it delivered is on screen."""
    page.wait_for_selector(f"{pane} .pane[data-settled='true']", timeout=PAGE_TIMEOUT_MS)


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# Installed in a page: frame gaps (requestAnimationFrame), event-loop lag (a timeout's delay,
# sampled every 50 ms), input delay (click handler start minus the event's time) and the most
# output rows the pane held.
PROBE_JS = """() => {
  const probe = (window.__probe = { gaps: [], lags: [], inputs: [], maxRows: 0, stop: false });
  const pane = document.querySelector('#main-pane .pane');
  let last = performance.now();
  const frame = (now) => {
    probe.gaps.push(now - last);
    last = now;
    probe.maxRows = Math.max(probe.maxRows, Number(pane.dataset.rows || 0));
    if (!probe.stop) requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
  probe.timer = setInterval(() => {
    const start = performance.now();
    setTimeout(() => probe.lags.push(performance.now() - start), 0);
  }, 50);
  document.addEventListener('click', (event) => probe.inputs.push(performance.now() - event.timeStamp), true);
}"""

RESULTS_JS = """() => {
  const probe = window.__probe;
  probe.stop = true;
  clearInterval(probe.timer);
  const sorted = (xs) => [...xs].sort((a, b) => a - b);
  const gaps = sorted(probe.gaps.slice(1));
  return {
    frames: gaps.length,
    maxGap: gaps.at(-1),
    p95Gap: gaps[Math.floor(gaps.length * 0.95)],
    maxLag: Math.max(...probe.lags),
    maxInput: Math.max(...probe.inputs),
    maxRows: probe.maxRows,
  };
}"""
