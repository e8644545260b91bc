"""Revocation is live: within 5 s of a grant or permission going, a user being deactivated or
a key being revoked, open streams stop delivering what the caller may no longer see.

Streams re-check every STREAM_ACCESS_RECHECK_SECONDS (2 s, not shortened here): the bound is
tested with the configuration that ships. Each case has a persona who also keeps something
visible (in the other tenant), so a probe written after the bound can be shown to be withheld
by a marker the persona still receives after it.
"""

import time

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from guardian.shortcuts import assign_perm, remove_perm

from executions.models import Execution
from rbac.models import ApiKey, Role, TenantGrant
from tests.rbac_helpers import (
    asgi,
    created_event_of,
    home_loop,  # noqa: F401 (fixture)
    open_stream,
    quick_passwords,  # noqa: F401 (fixture)
    session_headers,
)
from tests.streaming_helpers import running_execution, write

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("quick_passwords", "home_loop"),
]

db = database_sync_to_async
BOUND = 5.0  # seconds from the revocation to the last delivery
KINDS = ("grant", "permission", "group", "deactivate", "key")
# These end the caller's access to everything: the stream itself ends.
ENDS_ALL = {"deactivate", "key"}


class Case:
    """A persona who sees R (and X, which stays), and the change that takes R away."""

    def __init__(self, kind: str, actions, tenant, other_tenant):
        lines = actions["examples.print_lines"]
        self.kind = kind
        self.r = running_execution(lines, tenant)
        self.x = running_execution(lines, other_tenant)
        self.user = get_user_model().objects.create_user(f"revoked-{kind}")
        TenantGrant.objects.create(user=self.user, tenant=other_tenant, role=Role.VIEWER)
        self.headers = session_headers(self.user)
        if kind in ("grant", "deactivate"):
            TenantGrant.objects.create(user=self.user, tenant=tenant, role=Role.VIEWER)
        elif kind == "permission":
            assign_perm("executions.view_execution", self.user, self.r)
        elif kind == "group":
            self.group = Group.objects.create(name="watchers")
            TenantGrant.objects.create(group=self.group, tenant=tenant, role=Role.VIEWER)
            self.user.groups.add(self.group)
        elif kind == "key":
            TenantGrant.objects.create(user=self.user, tenant=tenant, role=Role.VIEWER)
            self.key, raw_key = ApiKey.issue(self.user)
            self.headers = [(b"authorization", f"Bearer {raw_key}".encode())]

    def revoke(self) -> None:
        if self.kind == "grant":
            TenantGrant.objects.filter(user=self.user, tenant=self.r.tenant).delete()
        elif self.kind == "permission":
            remove_perm("executions.view_execution", self.user, self.r)
        elif self.kind == "group":
            self.user.groups.remove(self.group)
        elif self.kind == "deactivate":
            self.user.is_active = False
            self.user.save()
        elif self.kind == "key":
            self.key.revoke()

    def marker(self) -> Execution:
        """A new child of X: an event this persona still receives."""
        from executions import services

        return services.create_execution(self.x.action, {"count": 1}, parent=self.x)


@pytest.fixture(params=KINDS)
def case(request, actions, tenant, other_tenant) -> Case:
    return Case(request.param, actions, tenant, other_tenant)


async def _revoke(case: Case) -> float:
    await db(case.revoke)()
    return time.monotonic()


async def test_it_ends_an_output_stream_within_5_seconds(case):
    stream = await open_stream(
        f"/api/v1/executions/{case.r.id}/output/stream", headers=case.headers
    )
    assert stream.status == 200
    await write(case.r, ["before\n"])
    assert (await stream.next_frame())["data"]["data"] == "before\n"
    revoked_at = await _revoke(case)
    frames = await stream.drain(BOUND)
    assert stream.ended, f"the stream is still open {BOUND} s after the revocation"
    assert time.monotonic() - revoked_at < BOUND
    assert "done" not in [frame["event"] for frame in frames]


async def test_it_stops_the_event_stream_within_5_seconds(case):
    stream = await open_stream("/api/v1/stream", query="events=*", headers=case.headers)
    assert stream.status == 200
    await write(case.r, ["before\n"])
    assert (await stream.next_frame())["data"]["execution_id"] == case.r.id
    revoked_at = await _revoke(case)
    await stream.drain(BOUND - (time.monotonic() - revoked_at))  # what comes until the bound
    if case.kind in ENDS_ALL:
        assert stream.ended, "the stream of a revoked caller is still open"
        return
    await write(case.r, ["probe after the bound\n"])
    marker = await db(case.marker)()
    frames = await stream.until(created_event_of(marker.id))
    await stream.close()
    leaked = [f for f in frames if f["event"] == "execution.output__create"]
    assert [f["data"]["execution_id"] for f in leaked] == []


async def _socket(case: Case) -> WebsocketCommunicator:
    headers = [(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1"), *case.headers]
    socket = WebsocketCommunicator(asgi, "/ws/v1/stream", headers=headers)
    connected, _ = await socket.connect(timeout=10)
    assert connected
    return socket


async def _next(socket, event: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        message = await socket.receive_json_from(timeout=max(0.01, deadline - time.monotonic()))
        if message["event"] == event:
            return message


async def test_it_ends_a_websocket_subscription_within_5_seconds(case):
    socket = await _socket(case)
    await socket.send_json_to({"action": "subscribe", "execution": case.r.id})
    await _next(socket, "subscribed")
    await write(case.r, ["before\n"])
    assert (await _next(socket, "execution.output__create"))["data"]["data"] == "before\n"
    revoked_at = await _revoke(case)
    error = await _next(socket, "error", timeout=BOUND)
    assert time.monotonic() - revoked_at < BOUND
    assert error["execution"] == case.r.id and error["data"]["status"] == 404
    # Nor may the open socket subscribe again: the answer is immediate.
    await socket.send_json_to({"action": "subscribe", "execution": case.r.id, "from": 1})
    again = await socket.receive_json_from(timeout=BOUND)
    assert (again["event"], again["data"]["status"]) == ("error", 404)
    await socket.disconnect()


async def test_it_stops_websocket_events_within_5_seconds(case):
    socket = await _socket(case)
    await socket.send_json_to({"action": "subscribe_events", "events": "*"})
    await _next(socket, "subscribed")
    await write(case.r, ["before\n"])
    assert (await _next(socket, "execution.output__create"))["execution"] == case.r.id
    revoked_at = await _revoke(case)
    if case.kind in ENDS_ALL:
        error = await _next(socket, "error", timeout=BOUND)
        assert time.monotonic() - revoked_at < BOUND
        assert error["data"]["status"] in (401, 404)
        await socket.disconnect()
        return
    while (left := BOUND - (time.monotonic() - revoked_at)) > 0:  # what comes until the bound
        if await socket.receive_nothing(timeout=left, interval=0.02):
            break
        await socket.receive_json_from(timeout=1)
    await write(case.r, ["probe after the bound\n"])
    marker = await db(case.marker)()
    leaked = []
    while True:
        message = await socket.receive_json_from(timeout=20)
        if created_event_of(marker.id)(message):
            break
        if message["event"] == "execution.output__create":
            leaked.append(message["execution"])
    await socket.disconnect()
    assert leaked == []
