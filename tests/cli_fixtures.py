"""Fixtures of the CLI and client tests, loaded with `pytest_plugins = ["tests.cli_fixtures"]`:
a real server, the superuser's key, an empty config folder, `tg` (the CLI against the server)
and `nested` (the shipped packs plus the nested-workflow pack, registered)."""

import pytest

from tests.cli_helpers import Result, run_cli, write_nested_pack


@pytest.fixture
def server_url(cluster_mode):
    """A real `manage.py serve` (web + runner in one process) on the test database."""
    from tests.server_helpers import serve

    if cluster_mode:
        pytest.skip("embedded mode: the server runs the runner in-process on the SQLite test db")
    with serve(RUNNER_POLL_SECONDS="0.2") as (_process, url):
        yield url


@pytest.fixture
def key(superuser):
    from rbac.models import ApiKey

    return ApiKey.issue(superuser, name="cli")[1]


@pytest.fixture
def config_home(tmp_path):
    home = tmp_path / "config"
    home.mkdir()
    return home


@pytest.fixture
def tg(server_url, key, config_home):
    """`tg(*args, **env)`: the CLI against the test server with the superuser's key."""

    def run(*args: str, **env: str) -> Result:
        return run_cli(server_url, key, *args, config_home=config_home, **env)

    return run


@pytest.fixture
def nested(actions, tmp_path):
    """The shipped packs and the `nest` pack (a two-level nested workflow), registered."""
    from django.conf import settings

    from executions.models import Action
    from executions.packs import register

    register([*settings.PACKS_DIRS, write_nested_pack(tmp_path / "packs")])
    return {a.ref: a for a in Action.objects.all()}
