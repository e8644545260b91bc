"""The access-control test world: ten personas, two tenants, and requests through the whole
ASGI application (auth middleware, Channels routes, Django) exactly as a client sends them.

Personas and how they authenticate to the API and streams (pages always use the session):

    superuser     session            tenant admin (`admin`)  session
    operator      Bearer key         viewer                  session
    grantee       X-API-Key          (view_execution on E1 only, no tenant)
    outsider      session            (operator of `other` only)
    group_member  Bearer key         (operator of `default` through a group)
    deactivated   session            (a viewer, deactivated after logging in)
    anonymous     nothing            expired_key   an expired X-API-Key (a viewer's)
"""

import json
import time
from dataclasses import dataclass, field
from datetime import timedelta

from channels.testing import ApplicationCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone
from guardian.shortcuts import assign_perm

from executions import services
from executions.models import Execution, ExecutionEvent
from project.asgi import application as asgi
from rbac.models import ApiKey, Role, TenantGrant
from tests.streaming_helpers import DISCONNECT_SECONDS, Response, parse_sse, store
from tests.streaming_helpers import http_scope as stream_scope

PERSONAS = (
    "superuser",
    "admin",
    "operator",
    "viewer",
    "grantee",
    "outsider",
    "group_member",
    "deactivated",
    "anonymous",
    "expired_key",
)
T1 = {"E1", "W", "C", "S"}
ALL = T1 | {"X"}
SECRET = "hunter2-very-secret"
CSRF_SECRET = "a" * 32  # Django accepts the unmasked secret as the token


@dataclass
class Persona:
    name: str
    user: object = None
    api_headers: list = field(default_factory=list)
    web_headers: list = field(default_factory=list)
    key: str | None = None


@dataclass
class World:
    ids: dict[str, str]  # the executions, by name
    personas: dict[str, Persona]
    refs: dict[str, object]  # other objects' primary keys, for admin paths
    tenants: dict[str, object] = field(default_factory=dict)  # by slug

    def fill(self, path: str) -> str:
        return path.format(**self.ids, **self.refs)

    def names(self, ids) -> set[str]:
        wanted = set(ids)
        return {name for name, pk in self.ids.items() if pk in wanted}


def session_headers(user) -> list:
    client = Client()
    client.force_login(user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    cookie = f"{settings.SESSION_COOKIE_NAME}={session}; {settings.CSRF_COOKIE_NAME}={CSRF_SECRET}"
    return [(b"cookie", cookie.encode()), (b"x-csrftoken", CSRF_SECRET.encode())]


def _finished(action, tenant, parameters=None, *, parent=None, lines=("one\n", "two\n")):
    execution = services.create_execution(action, parameters or {}, tenant=tenant, parent=parent)
    services.claim(execution.id, "test-runner")
    store(execution, list(lines))
    services.finish(execution.id, "succeeded", exit_code=0)
    return Execution.objects.get(pk=execution.id)


def marker_child(world: World, parent: str) -> Execution:
    """A new child of `parent`: its `execution__create` event ends a replay we wait for."""
    action = Execution.objects.get(pk=world.ids[parent]).action
    return services.create_execution(
        action, {"count": 1}, parent=Execution.objects.get(pk=world.ids[parent])
    )


def build_world(actions, tenant, other_tenant, superuser, owner, member, outsider) -> World:
    User = get_user_model()
    lines = actions["examples.print_lines"]
    e1 = _finished(lines, tenant)
    w = _finished(actions["examples.deploy"], tenant)
    c = _finished(lines, tenant, parent=w)
    x = _finished(lines, other_tenant, lines=("theirs\n",))
    s = _finished(
        actions["examples.echo_secret"],
        tenant,
        {"password": SECRET},
        lines=("the password is ********\n",),
    )
    ids = {"E1": e1.id, "W": w.id, "C": c.id, "X": x.id, "S": s.id}

    operator = User.objects.create_user("operator")
    TenantGrant.objects.create(user=operator, tenant=tenant, role=Role.OPERATOR)
    grantee = User.objects.create_user("grantee")
    assign_perm("executions.view_execution", grantee, e1)
    group = Group.objects.create(name="ops")
    TenantGrant.objects.create(group=group, tenant=tenant, role=Role.OPERATOR)
    group_member = User.objects.create_user("groupie")
    group_member.groups.add(group)
    deactivated = User.objects.create_user("gone")
    TenantGrant.objects.create(user=deactivated, tenant=tenant, role=Role.VIEWER)
    expiring = User.objects.create_user("expiring")
    TenantGrant.objects.create(user=expiring, tenant=tenant, role=Role.VIEWER)

    personas = {name: Persona(name) for name in PERSONAS}
    for name, user in (
        ("superuser", superuser),
        ("admin", owner),
        ("viewer", member),
        ("outsider", outsider),
        ("deactivated", deactivated),
        ("operator", operator),
        ("grantee", grantee),
        ("group_member", group_member),
    ):
        persona = personas[name]
        persona.user = user
        persona.web_headers = persona.api_headers = session_headers(user)
    for name, header in (
        ("operator", b"authorization"),
        ("grantee", b"x-api-key"),
        ("group_member", b"authorization"),
        ("expired_key", b"x-api-key"),
    ):
        user = personas[name].user or expiring
        _, raw_key = ApiKey.issue(user, expires_in=timedelta(days=1))
        personas[name].key = raw_key
        value = f"Bearer {raw_key}" if header == b"authorization" else raw_key
        personas[name].api_headers = [(header, value.encode())]
    ApiKey.objects.filter(user=expiring).update(expires_at=timezone.now())
    User.objects.filter(pk=deactivated.pk).update(is_active=False)
    refs = {
        "default": tenant.pk,
        "other": other_tenant.pk,
        "action": lines.pk,
        "chunk": e1.output.first().pk,
        "event": ExecutionEvent.objects.filter(execution=e1).first().pk,
        "key": ApiKey.objects.filter(user=operator).get().pk,
        "grantee_user": grantee.pk,
        "group": group.pk,
    }
    return World(ids, personas, refs, {"default": tenant, "other": other_tenant})


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def http_scope(method: str, path: str, query: str, headers) -> dict:
    """A scope for the whole application: no `user` yet, the auth middleware under test sets it."""
    scope = stream_scope(path, query, headers, method=method)
    del scope["user"]
    return scope


async def call(method, path, *, query="", headers=(), body=None, stream=False) -> Reply:
    """One request through the whole ASGI application; a `stream` is left once it starts."""
    headers = list(headers)
    payload = b""
    if body is not None:
        payload = json.dumps(body).encode()
        headers.append((b"content-type", b"application/json"))
        headers.append((b"content-length", str(len(payload)).encode()))
    communicator = ApplicationCommunicator(asgi, http_scope(method, path, query, headers))
    await communicator.send_input({"type": "http.request", "body": payload})
    start = await communicator.receive_output(timeout=20)
    reply = Reply(start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, b"")
    more = not stream or reply.status != 200
    while more:
        message = await communicator.receive_output(timeout=20)
        reply.body += message.get("body", b"")
        more = message.get("more_body", False)
    if stream and reply.status == 200:
        await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(timeout=DISCONNECT_SECONDS)
    return reply


def names_in_results(reply: Reply, world: World) -> set[str]:
    return world.names(row["id"] for row in reply.json()["results"])


def names_in_html(reply: Reply, world: World) -> set[str]:
    return {name for name, pk in world.ids.items() if pk in reply.text}


class Stream(Response):
    """An open SSE response from the whole ASGI application, read frame by frame."""

    async def next_frame(self, timeout: float = 20) -> dict:
        """The next event (comments and `retry:` hints skipped)."""
        return await self.next_sse(timeout)

    async def drain(self, seconds: float) -> list[dict]:
        """Every event that arrives in the next `seconds` (less if the stream ends).

        Waits with `receive_nothing`, which, unlike a timed-out read, leaves the
        application running.
        """
        deadline = time.monotonic() + seconds
        frames = []
        while not self.ended and (left := deadline - time.monotonic()) > 0:
            if await self.communicator.receive_nothing(timeout=left, interval=0.02):
                break
            await self.read_message()  # already there: receive_nothing saw it
            while b"\n\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\n\n", 1)
                frame = parse_sse(raw.decode())
                if "event" in frame:
                    frames.append(frame)
        return frames

    async def until(self, done, timeout: float = 20) -> list[dict]:
        """Frames up to and including the first for which `done(frame)` is true."""
        deadline = time.monotonic() + timeout
        frames = []
        while not frames or not done(frames[-1]):
            frames.append(await self.next_frame(max(0.01, deadline - time.monotonic())))
        return frames

    async def close(self) -> None:
        await self.disconnect()


async def open_stream(path: str, *, query: str = "", headers=()) -> Stream:
    communicator = ApplicationCommunicator(asgi, http_scope("GET", path, query, headers))
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(timeout=20)
    stream = Stream(communicator)
    stream.status = start["status"]
    return stream


def created_event_of(execution_id: str):
    """A predicate: the `execution__create` event of `execution_id` (SSE or WebSocket)."""

    def matches(frame: dict) -> bool:
        return frame.get("event") == "execution__create" and frame["data"]["id"] == execution_id

    return matches
