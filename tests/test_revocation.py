"""Revocation is pushed: when a grant or permission goes, a user is deactivated or a key is
revoked, open streams stop delivering what the caller may no longer see.

The access doorbell (rbac/signals.py) makes each web process re-check the caller's streams at
once. The periodic safety re-check (STREAM_ACCESS_RECHECK_SECONDS) is set to an hour here, so
whatever ends a stream in these tests is the doorbell; the tests wait on conditions, never on
a clock. Each case has a persona who also keeps something visible (in the other tenant), so a
probe written after the re-check can be shown to be withheld by a marker the persona still
receives after it. When the re-check has happened is seen on a witness: a second stream of
the same caller, of the revoked execution, which the same re-check ends (the guard hands its
verdict to all of a caller's streams at once, and a stream takes it before any later message).
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
    open_stream,
    session_headers,
)
from tests.streaming_helpers import running_execution, write

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("home_loop"),
]

db = database_sync_to_async
# A failure bound only: the doorbell ends access in milliseconds, and the safety re-check that
# could otherwise end it is an hour away (`_no_safety_recheck`).
WAIT_SECONDS = 60
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


@pytest.fixture(autouse=True)
def _no_safety_recheck(settings):
    settings.STREAM_ACCESS_RECHECK_SECONDS = 3600
    # With no re-check to fall back on, a doorbell skipped because a stalled loop overran the
    # layer's send timeout would leave access in place: give the ring as long as the test.
    settings.CHANNEL_LAYER_SEND_TIMEOUT_SECONDS = WAIT_SECONDS


@pytest.fixture(params=KINDS)
def case(request, actions, tenant, other_tenant) -> Case:
    return Case(request.param, actions, tenant, other_tenant)


async def _witness(case: Case):
    """A stream of the revoked execution, opened by the same caller before the revocation."""
    stream = await open_stream(
        f"/api/v1/executions/{case.r.id}/output/stream", headers=case.headers
    )
    assert stream.status == 200
    return stream


async def _rechecked(witness) -> None:
    """The caller's streams have been re-checked: the witness ended."""
    await witness.drain(WAIT_SECONDS)
    assert witness.ended, "no re-check after the revocation: the doorbell did not ring"


async def test_it_ends_an_output_stream_when_access_goes(case):
    stream = await open_stream(
        f"/api/v1/executions/{case.r.id}/output/stream", headers=case.headers
    )
    assert stream.status == 200
    await write(case.r, ["before\n"])
    assert (await stream.next_frame(WAIT_SECONDS))["data"]["data"] == "before\n"
    await db(case.revoke)()
    frames = await stream.drain(WAIT_SECONDS)
    assert stream.ended, "the stream is still open after the revocation"
    assert "done" not in [frame["event"] for frame in frames]


async def test_it_stops_the_event_stream_when_access_goes(case):
    stream = await open_stream("/api/v1/stream", query="events=*", headers=case.headers)
    assert stream.status == 200
    witness = await _witness(case)
    await write(case.r, ["before\n"])
    assert (await stream.next_frame(WAIT_SECONDS))["data"]["execution_id"] == case.r.id
    await db(case.revoke)()
    if case.kind in ENDS_ALL:
        await stream.drain(WAIT_SECONDS)
        assert stream.ended, "the stream of a revoked caller is still open"
        return
    await _rechecked(witness)
    await write(case.r, ["probe after the re-check\n"])
    marker = await db(case.marker)()
    frames = await stream.until(created_event_of(marker.id), timeout=WAIT_SECONDS)
    await stream.close()
    leaked = [f for f in frames if f["event"] == "execution.output__create"]
    assert [f["data"]["execution_id"] for f in leaked] == []


async def _socket(case: Case) -> WebsocketCommunicator:
    headers = [(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1"), *case.headers]
    socket = WebsocketCommunicator(asgi, "/ws/v1/stream", headers=headers)
    connected, _ = await socket.connect(timeout=WAIT_SECONDS)
    assert connected
    return socket


async def _next(socket, event: str, timeout: float = WAIT_SECONDS) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        message = await socket.receive_json_from(timeout=max(0.01, deadline - time.monotonic()))
        if message["event"] == event:
            return message


async def test_it_ends_a_websocket_subscription_when_access_goes(case):
    socket = await _socket(case)
    await socket.send_json_to({"action": "subscribe", "execution": case.r.id})
    await _next(socket, "subscribed")
    await write(case.r, ["before\n"])
    assert (await _next(socket, "execution.output__create"))["data"]["data"] == "before\n"
    await db(case.revoke)()
    error = await _next(socket, "error", timeout=WAIT_SECONDS)
    if case.kind in ENDS_ALL:  # the caller no longer authenticates: the socket closes
        assert error["execution"] == case.r.id and error["data"]["status"] == 401
        assert (await socket.receive_output(timeout=WAIT_SECONDS))["code"] == 4401
        return
    assert error["execution"] == case.r.id and error["data"]["status"] == 404
    # Nor may the open socket subscribe again: the answer is immediate.
    await socket.send_json_to({"action": "subscribe", "execution": case.r.id, "from": 1})
    again = await socket.receive_json_from(timeout=WAIT_SECONDS)
    assert (again["event"], again["data"]["status"]) == ("error", 404)
    await socket.disconnect(timeout=WAIT_SECONDS)


async def test_it_stops_websocket_events_when_access_goes(case):
    socket = await _socket(case)
    await socket.send_json_to({"action": "subscribe_events", "events": "*"})
    await _next(socket, "subscribed")
    witness = await _witness(case)
    await write(case.r, ["before\n"])
    assert (await _next(socket, "execution.output__create"))["execution"] == case.r.id
    await db(case.revoke)()
    if case.kind in ENDS_ALL:
        error = await _next(socket, "error", timeout=WAIT_SECONDS)
        assert error["data"]["status"] in (401, 404)
        await socket.disconnect(timeout=WAIT_SECONDS)
        return
    await _rechecked(witness)
    await write(case.r, ["probe after the re-check\n"])
    marker = await db(case.marker)()
    leaked = []
    while True:
        message = await socket.receive_json_from(timeout=WAIT_SECONDS)
        if created_event_of(marker.id)(message):
            break
        if message["event"] == "execution.output__create":
            leaked.append(message["execution"])
    await socket.disconnect(timeout=WAIT_SECONDS)
    assert leaked == []
