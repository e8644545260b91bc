"""The manual tells the truth about the tree: links resolve, named commands exist, curl works.

README.md and docs/*.md are read as text. Links are checked against files and against the
anchors GitHub derives from headings; `manage.py <command>` against Django's command list;
`make <target>` against the Makefile; every `curl` example runs against a real server.
"""

import ast
import functools
import io
import os
import re
import subprocess
import unicodedata
from pathlib import Path

import pytest
from django.core.management import call_command, get_commands

from executions.models import Execution
from tests.runner_helpers import wait_until
from tests.server_helpers import running_server

BASE_DIR = Path(__file__).resolve().parent.parent
DOCS = [BASE_DIR / "README.md", *sorted((BASE_DIR / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]+`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6}) +(.+?) *#*$", re.M)
MANAGE_COMMAND = re.compile(r"manage\.py +([a-z_]+)")
MAKE_TARGET = re.compile(r"(?:^|[\s;&|(`])make +([A-Za-z][\w-]*)")
MAKE_RULE = re.compile(r"^([A-Za-z][\w-]*) *:(?!=)", re.M)


def prose(text: str) -> str:
    """The text outside code, where Markdown links live."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def code(text: str) -> str:
    """The code blocks and code spans, where commands are shown."""
    return "\n".join([*FENCE.findall(text), *INLINE_CODE.findall(FENCE.sub("", text))])


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in ("L", "N"))
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for _, heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        name, n = base, 0
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def relative_links(path: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(prose(path.read_text()))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


def reachable_from(start: Path) -> set[Path]:
    """The Markdown pages a reader reaches from `start` by following relative links."""
    seen, todo = {start}, [start]
    while todo:
        page = todo.pop()
        for target in relative_links(page):
            linked = (page.parent / target.partition("#")[0]).resolve()
            if linked.suffix == ".md" and linked.exists() and linked not in seen:
                seen.add(linked)
                todo.append(linked)
    return seen


def test_it_leads_from_the_readme_to_every_page_of_the_manual():
    unreachable = set(DOCS) - reachable_from(BASE_DIR / "README.md")
    assert sorted(str(page.relative_to(BASE_DIR)) for page in unreachable) == []


ARTIFACTS = BASE_DIR / "test-artifacts"


def _written_by_the_suite(linked: Path) -> bool:
    """A screenshot or figure under test-artifacts/ (git-ignored) that a test writes by name.

    It exists only once that test has run: a fresh clone, a test run alone, or a browser test
    that failed first would otherwise fail this one too. The name must still be one a test
    writes, so a renamed screenshot is caught.
    """
    if linked.parent != ARTIFACTS:
        return False
    name = rf"[\"']{re.escape(linked.stem)}(\.{linked.suffix[1:]})?[\"']"
    return re.search(name, _test_sources()) is not None


@functools.cache
def _test_sources() -> str:
    """The suite's source, read once for all the links it is searched for."""
    return "\n".join(p.read_text() for p in (BASE_DIR / "tests").glob("*.py"))


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(BASE_DIR)))
def test_it_links_only_to_files_and_anchors_that_exist(path):
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.is_relative_to(BASE_DIR):
            broken.append(f"{target}: outside the repository")
        elif not linked.exists() and not _written_by_the_suite(linked):
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with that anchor")
    assert broken == []


def test_it_computes_anchors_as_github_does(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Streaming output and events\n## Plain-text output: `GET /api/v1/x/{id}/output`\n"
        "## Web page: fast and long logs\n## Notes\n## Notes\n```sh\n# not a heading\n```\n"
    )
    assert anchors(page) == {
        "streaming-output-and-events",
        "plain-text-output-get-apiv1xidoutput",
        "web-page-fast-and-long-logs",
        "notes",
        "notes-1",
    }


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(BASE_DIR)))
def test_it_names_only_management_commands_that_exist(path):
    named = set(MANAGE_COMMAND.findall(path.read_text()))
    assert named - set(get_commands()) == set()


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(BASE_DIR)))
def test_it_names_only_make_targets_that_exist(path):
    rules = set(MAKE_RULE.findall((BASE_DIR / "Makefile").read_text()))
    named = set(MAKE_TARGET.findall(code(path.read_text())))
    assert named - rules == set()


def test_it_finds_commands_in_code_only():
    text = "To make things work, run `make run` or\n```sh\nPORT=9000 make test\n```\n"
    assert set(MAKE_TARGET.findall(code(text))) == {"run", "test"}
    assert MANAGE_COMMAND.findall("`manage.py purge_output --dry-run`") == ["purge_output"]


# --- the curl examples, against a real server ------------------------------------------------

CURL = re.compile(r"^curl (?:[^\n]*\\\n)*[^\n]*", re.M)
# An example may name an execution by a placeholder id; the test gives it a real one.
PLACEHOLDER_ID = "01J…"
# What an example may answer besides success: cancelling `last` once it finished is a 409,
# and that is the documented answer.
DOCUMENTED_REFUSALS = {"/cancel/": {409}}


def curl_examples() -> list[tuple[str, str]]:
    examples = []
    for path in DOCS:
        for block in FENCE.findall(path.read_text()):
            if block.startswith(("```sh", "```bash")):
                for command in CURL.findall(block.split("\n", 1)[1]):
                    examples.append((str(path.relative_to(BASE_DIR)), command))
    return examples


def status_of(command: str, env: dict[str, str]) -> int:
    """Run the example with its headers on stdout and the body dropped; streams that would
    go on are cut once their status line has arrived."""
    # The options go first: an example may end with a comment.
    script = "curl -sS -D - -o /dev/null " + command.removeprefix("curl ")
    with subprocess.Popen(
        ["bash", "-c", script], env=env, stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        status_line = process.stdout.readline()
        process.terminate()
    assert status_line.startswith("HTTP/"), f"no HTTP status line from: {command}"
    return int(status_line.split()[1])


def test_it_has_curl_examples_of_every_kind_of_endpoint():
    commands = "\n".join(command for _, command in curl_examples())
    for endpoint in ("/actions/", "-d '", "/cancel/", "/re-run/", "/output?", "/output/stream"):
        assert endpoint in commands
    assert "/api/v1/stream?" in commands


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_runs_every_curl_example_against_a_real_server(actions, tenant, superuser):
    superuser.username = "admin"
    superuser.save()
    key = io.StringIO()
    call_command("create_api_key", "admin", stdout=key, stderr=io.StringIO())
    with running_server(RUNNER_POLL_SECONDS="0.2") as server:
        env = {**os.environ, "TG": server.url, "KEY": key.getvalue().strip()}
        assert status_of(f'curl -X POST -H "Authorization: Bearer $KEY" {_run_body()}', env) == 201
        wait_until(
            lambda: Execution.objects.filter(status="succeeded").exists(), 60, "a finished run"
        )
        finished = Execution.objects.filter(status="succeeded").latest("created_at").pk
        failures = []
        for where, command in curl_examples():
            status = status_of(command.replace(PLACEHOLDER_ID, finished), env)
            allowed = set().union(*(v for k, v in DOCUMENTED_REFUSALS.items() if k in command))
            if not (200 <= status < 300 or status in allowed):
                failures.append(f"{where}: {status}: {command}")
        cli = {**env, "TAILGATE_URL": server.url, "TAILGATE_API_KEY": env["KEY"]}
        for command in readme_cli_runs():
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=BASE_DIR,
                env=cli,
                capture_output=True,
                text=True,
                timeout=CLI_SECONDS,
            )
            if done.returncode != 0:
                failures.append(f"README.md: exit {done.returncode}: {command}\n{done.stderr}")
    assert failures == []


# The README's `tailgate run … --tail` must work as shown: it exits 0 once the run succeeded.
CLI_SECONDS = 120  # a failure bound only: the example prints 5 lines in about a second
CLI_RUN = re.compile(r"^\.venv/bin/tailgate run [^\n]*--tail$", re.M)


def readme_cli_runs() -> list[str]:
    blocks = FENCE.findall((BASE_DIR / "README.md").read_text())
    return [command for block in blocks for command in CLI_RUN.findall(block)]


def test_it_finds_the_readmes_cli_example():
    assert readme_cli_runs() == [
        ".venv/bin/tailgate run examples.print_lines count=5 delay=0.2 --tail"
    ]


def _run_body() -> str:
    return (
        "-H 'Content-Type: application/json' "
        """-d '{"action": "examples.print_lines", "parameters": {"count": 2}}' """
        "$TG/api/v1/executions/"
    )


# --- settings ---------------------------------------------------------------------------------

SETTINGS = BASE_DIR / "project" / "settings.py"
CONFIGURATION = BASE_DIR / "docs" / "configuration.md"


def environment_settings() -> dict[str, object]:
    """Every variable project/settings.py reads, with its default where it is a plain value."""
    found: dict[str, object] = {}
    for node in ast.walk(ast.parse(SETTINGS.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "env"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            default = next((k.value for k in node.keywords if k.arg == "default"), None)
            found[node.args[0].value] = (
                default.value if isinstance(default, ast.Constant) else Ellipsis
            )
    return found


def documented_defaults() -> dict[str, str]:
    """`| `NAME` | default | meaning |` rows of docs/configuration.md."""
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \| ([^|]*) \|", CONFIGURATION.read_text(), re.M)
    return {name: default.strip().strip("`") for name, default in rows}


def as_documented(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def test_it_documents_every_setting_with_its_default():
    documented = documented_defaults()
    assert set(environment_settings()) - set(documented) == set()
    wrong = {
        name: (documented[name], as_documented(value))
        for name, value in environment_settings().items()
        if value is not Ellipsis and value not in ("", None) and name in documented
        if documented[name] != as_documented(value)
    }
    assert wrong == {}


def test_it_reads_settings_and_defaults_from_the_code():
    settings = environment_settings()
    assert settings["RUNNER_CONCURRENCY"] == 8
    assert settings["DEPLOY_SECURE"] is False
    assert settings["MAX_CHUNK_BYTES"] is Ellipsis  # 1024 * 1024: not a plain value
    assert as_documented(30.0) == "30" and as_documented(False) == "false"
