"""Shared fixtures: personas, tenants, actions, and the two modes.

Embedded mode (always): SQLite file database, in-memory channel layer.
Cluster mode (when DATABASE_URL and REDIS_URL are set): PostgreSQL and Redis. With
REQUIRE_SERVICES=1 a missing service fails the run instead of skipping cluster tests.
"""

import os
import socket
from urllib.parse import urlparse

import pytest
from django.conf import settings

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


def pytest_collection_modifyitems(config, items):
    if CLUSTER:
        return
    skip = pytest.mark.skip(reason="cluster mode only: set DATABASE_URL and REDIS_URL")
    for item in items:
        if "cluster" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cluster_mode() -> bool:
    return CLUSTER


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each test gets an empty in-memory layer (Redis: its own key prefix)."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


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
