"""Shared fixtures: personas, tenants, actions, the home loop, and the two modes.

Embedded mode (always): SQLite file database, in-memory channel layer.
Cluster mode (when DATABASE_URL and REDIS_URL are set): PostgreSQL and Redis. With
REQUIRE_SERVICES=1 a missing service fails the run instead of skipping cluster tests.

Passwords are hashed with MD5 (`tests/settings.py`), in this process and in every server and
runner a test starts, so a persona costs milliseconds, not a PBKDF2 run.
"""

import asyncio
import os
import signal
import socket
import uuid
from urllib.parse import urlparse

import pytest
from django.conf import settings
from django.test.utils import override_settings

from tests import settings as test_settings

CLUSTER = bool(os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"))
REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or default_port), timeout=3):
            return True
    except OSError:
        return False


def pytest_sessionstart(session):
    if not CLUSTER:
        if REQUIRE_SERVICES:
            pytest.exit("REQUIRE_SERVICES=1 but DATABASE_URL/REDIS_URL are not set", returncode=3)
        return
    missing = [
        name
        for name, url, port in (
            ("PostgreSQL", os.environ["DATABASE_URL"], 5432),
            ("Redis", os.environ["REDIS_URL"], 6379),
        )
        if not _reachable(url, port)
    ]
    if missing and REQUIRE_SERVICES:
        pytest.exit(f"cluster mode: {', '.join(missing)} not reachable", returncode=3)


# Modules whose subject is the same code in both modes (no database or channel-layer behaviour
# under test): they run in the embedded pass only, and the cluster pass leaves them out. Each
# with its reason; a single test says so with `@pytest.mark.either_mode`.
EITHER_MODE_MODULES = {
    # Pure functions: argument parsing, tables, error mapping of the CLI.
    "test_cli_units.py": "the CLI's parsing and rendering, no server",
    "test_client_install.py": "the client's packaging: a venv without Django, pip install",
    "test_event_ids.py": "event-id encoding, pure",
    "test_capture.py": "output capture and batching, in memory (the writer is a stub)",
    "test_parameters.py": "parameter validation against JSON Schema",
    "test_origin.py": "the Origin/Host check of the ASGI middleware, no database",
    "test_sse_encoding.py": "SSE framing, pure",
    # Subprocesses with their own environment, each naming its own mode.
    "test_settings.py": "each test starts manage.py with the environment it needs",
    # The OpenAPI document and its conformance: views and serializers, not storage.
    "test_api_schema.py": "the generated OpenAPI document",
    "test_schemathesis.py": "the API's answers against its schema (2 minutes a pass)",
    # Documentation: links, names, and the curl examples (the API is tested in both modes).
    "test_docs.py": "the documentation against the code",
    # The page is the subject: rendering, the live log's DOM, tabs and reconnects. The
    # streams behind it are tested in both modes by test_stream_*.py and test_hub*.py.
    "test_browser.py": "the pages in chromium",
    "test_browser_live.py": "the pages in chromium",
    "test_browser_log.py": "the pages in chromium",
}


def pytest_configure(config):
    # A pass started in the background by a non-interactive shell (.ci/passes runs the two
    # side by side with `&`) inherits SIGINT ignored, and so does every process the tests
    # start: a CLI sent Ctrl-C by a test would never see it. Handle it as a terminal would.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in EITHER_MODE_MODULES:
            item.add_marker(pytest.mark.either_mode)
    if CLUSTER:
        # A cluster-only test runs here whatever its module: it has no embedded run.
        once = [i for i in items if "either_mode" in i.keywords and "cluster" not in i.keywords]
        if once:
            config.hook.pytest_deselected(items=once)
            items[:] = [item for item in items if item not in once]
        return
    skip = pytest.mark.skip(reason="cluster mode only: set DATABASE_URL and REDIS_URL")
    for item in items:
        if "cluster" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _fast_password_hasher():
    """pytest-django has loaded project.settings before any conftest runs: override its hasher
    here, and hand tests/settings.py to the processes tests start (`manage.py` keeps an
    inherited DJANGO_SETTINGS_MODULE)."""
    inherited = os.environ.get("DJANGO_SETTINGS_MODULE")
    os.environ["DJANGO_SETTINGS_MODULE"] = test_settings.__name__
    with override_settings(PASSWORD_HASHERS=test_settings.PASSWORD_HASHERS):
        yield
    if inherited is not None:
        os.environ["DJANGO_SETTINGS_MODULE"] = inherited


@pytest.fixture
async def home_loop():
    """Sync publishes (services.finish, on_commit) ring the layer from this test's loop."""
    from channels.db import database_sync_to_async
    from django.db import connections

    from executions import publish
    from streaming import db as stream_db

    publish.set_home_loop(asyncio.get_running_loop())
    yield
    publish.set_home_loop(None)
    stream_db.close_connections()
    await database_sync_to_async(connections.close_all)()


@pytest.fixture
def cluster_mode() -> bool:
    return CLUSTER


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each test gets an empty in-memory layer (Redis: its own key prefix), and rings at once:
    a test that took Redis away must not leave the next one in the publish cooldown."""
    from channels.layers import channel_layers

    from executions import publish

    channel_layers.backends.clear()
    publish.forget_layer_failures()
    yield
    channel_layers.backends.clear()
    publish.forget_layer_failures()


@pytest.fixture(autouse=True)
def _close_async_thread_connections():
    """Close the connection `sync_to_async` opened in asgiref's worker thread after each test,
    so PostgreSQL can drop the test database at the end."""
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)
    from streaming.db import close_connections

    close_connections()


@pytest.fixture
def tenant(db):
    from executions.models import Tenant

    return Tenant.default()


@pytest.fixture
def other_tenant(db):
    from executions.models import Tenant

    return Tenant.objects.create(slug="other", name="Other")


@pytest.fixture
def actions(db):
    """The shipped packs, registered."""
    from executions.packs import register

    register(settings.PACKS_DIRS)
    from executions.models import Action

    return {a.ref: a for a in Action.objects.all()}


def _user(username, **extra):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(username, password="pw-" + username, **extra)


@pytest.fixture
def superuser(db):
    return _user("root", is_staff=True, is_superuser=True)


@pytest.fixture
def owner(db, tenant):
    """Tenant admin of the default tenant."""
    from rbac.models import Role, TenantGrant

    user = _user("owner", is_staff=True)
    TenantGrant.objects.create(user=user, tenant=tenant, role=Role.ADMIN)
    return user


@pytest.fixture
def member(db, tenant):
    """Viewer on the default tenant."""
    from rbac.models import Role, TenantGrant

    user = _user("member")
    TenantGrant.objects.create(user=user, tenant=tenant, role=Role.VIEWER)
    return user


@pytest.fixture
def outsider(db, other_tenant):
    """Operator on another tenant only: sees nothing of the default tenant."""
    from rbac.models import Role, TenantGrant

    user = _user("outsider")
    TenantGrant.objects.create(user=user, tenant=other_tenant, role=Role.OPERATOR)
    return user


@pytest.fixture
def execution(actions, tenant):
    """A running `examples.print_lines` of the default tenant that no runner runs: the test
    writes its output (`tests/streaming_helpers.py`)."""
    from tests.streaming_helpers import running_execution

    return running_execution(actions["examples.print_lines"], tenant)


@pytest.fixture
def owner_client(owner):
    """Django's test client, logged in as `owner`."""
    from django.test import Client

    client = Client()
    client.force_login(owner)
    return client


@pytest.fixture(autouse=True)
def _own_stream_limit_keys(settings):
    """Stream-limit slots under this test's own Redis keys, in this process and in the servers
    it starts (`tests/server_helpers.py`): test runs side by side on one Redis took each
    other's slots (users of both runs have the same primary keys), and a server killed with
    streams open leaves its slots to the next test until their lease lapses."""
    settings.STREAM_LIMIT_KEY_PREFIX = f"tailgate:streams:test-{os.getpid()}-{uuid.uuid4().hex}"
