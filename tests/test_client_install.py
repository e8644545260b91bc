"""The client works without the server: in a virtual environment that has no Django, it
imports and drives a real server; `pip install ./tailgate_client` installs it alone.

The first test builds the environment offline from this venv's own copies of the client's
dependencies (found by walking their declared requirements); the second really runs pip,
which needs PyPI for setuptools, and is skipped when PyPI cannot be reached.
"""

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.cli_helpers import COMMAND_SECONDS, cli_env
from tests.runner_helpers import BASE_DIR

pytest_plugins = ["tests.cli_fixtures"]
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CLIENT_DIR = BASE_DIR / "tailgate_client"
CLIENT_REQUIREMENTS = ["httpx", "httpx-sse", "PyYAML"]
PIP_SECONDS = 300
PROBE = (
    "import importlib.util, sys, tailgate_client, tailgate_client.cli;"
    "assert importlib.util.find_spec('django') is None, 'django is importable';"
    "loaded = sorted(m for m in sys.modules if m.split('.')[0] in"
    " ('django', 'executions', 'streaming', 'rbac', 'project'));"
    "print('server modules:', loaded)"
)


def dependency_closure(names: list[str]) -> list[importlib.metadata.Distribution]:
    """The distributions `names` need, by their requirements whose markers hold here."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower()
        if key in found:
            continue
        found[key] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(found.values())


def top_level_paths(dist: importlib.metadata.Distribution) -> set[Path]:
    """The importable packages and modules a distribution installed."""
    roots = set()
    for file in dist.files or []:
        first = file.parts[0]
        if first.endswith((".dist-info", ".pth")) or first in ("..", "__pycache__"):
            continue
        roots.add(Path(dist.locate_file(first)))
    return roots


def copy_client(target: Path) -> Path:
    shutil.copytree(
        CLIENT_DIR, target, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    )
    return target


def without_django_venv(root: Path) -> Path:
    """A venv whose only packages are the client and its dependencies; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", root], check=True)
    deps = root / "deps"
    deps.mkdir()
    for dist in dependency_closure(CLIENT_REQUIREMENTS):
        for path in top_level_paths(dist):
            (deps / path.name).symlink_to(path)
    copy_client(deps / "tailgate_client")
    (site_packages(root) / "client.pth").write_text(f"{deps}\n")
    return root / "bin" / "python"


def site_packages(root: Path) -> Path:
    return next((root / "lib").glob("python3*/site-packages"))


def run(python: Path | str, *args: str, config_home: Path) -> subprocess.CompletedProcess:
    # cwd outside the repository, so nothing of the server is importable from there.
    return subprocess.run(
        [str(python), *args],
        cwd=config_home,
        env=cli_env(config_home),
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
    )


def test_it_imports_and_runs_without_django(server_url, key, config_home, tmp_path, actions):
    python = without_django_venv(tmp_path / "venv")
    probe = run(python, "-c", PROBE, config_home=config_home)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout == "server modules: []\n"
    django = run(python, "-c", "import django", config_home=config_home)
    assert "ModuleNotFoundError: No module named 'django'" in django.stderr

    flags = ["-m", "tailgate_client.cli", "--url", server_url, "--api-key", key]
    tailed = run(python, *flags, "run", "examples.print_lines", "count=2", "delay=0", "--tail",
                 config_home=config_home)  # fmt: skip
    assert tailed.returncode == 0, tailed.stderr
    assert "stdout -> Line: 2\n" in tailed.stdout and "(status=succeeded)" in tailed.stdout
    listed = run(python, *flags, "execution", "list", "-y", "-a", "status",
                 config_home=config_home)  # fmt: skip
    assert listed.stdout == "- status: succeeded\n"


def test_it_installs_alone_with_pip(server_url, key, config_home, tmp_path, actions):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=PIP_SECONDS)
    source = copy_client(tmp_path / "tailgate_client")
    pip = subprocess.run(
        [venv / "bin" / "pip", "install", "--quiet", "--disable-pip-version-check", source],
        capture_output=True,
        text=True,
        timeout=PIP_SECONDS,
    )
    if pip.returncode != 0 and ("NewConnectionError" in pip.stderr or "No matching" in pip.stderr):
        pytest.skip(f"PyPI cannot be reached: {pip.stderr.strip().splitlines()[-1]}")
    assert pip.returncode == 0, pip.stderr
    installed = {d.metadata["Name"].lower() for d in importlib.metadata.distributions(
        path=[str(site_packages(venv))])}  # fmt: skip
    assert "tailgate-client" in installed and "django" not in installed
    probe = run(venv / "bin" / "python", "-c", PROBE, config_home=config_home)
    assert probe.returncode == 0 and probe.stdout == "server modules: []\n", probe.stderr
    command = run(venv / "bin" / "tailgate", "--url", server_url, "--api-key", key, "action", "get",
                  "core.local", "-a", "ref", config_home=config_home)  # fmt: skip
    assert command.returncode == 0 and command.stdout == "ref: core.local\n", command.stderr
