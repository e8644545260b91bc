"""Every route by every persona: the exact status, and for lists the exact set of executions.

Requests go through the whole ASGI application (`project.asgi`: the auth middleware, the
Channels routes, Django), so each persona authenticates as a real client would. The routes
are enumerated from Django's URL resolver and the Channels routers; a route the matrix does
not name fails `test_it_covers_every_route`.

The world: tenant `default` holds E1 (granted to `grantee` alone), workflow W with child C,
and S (a secret parameter); tenant `other` holds X.
"""

import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.core.handlers.asgi import ASGIHandler
from django.urls import URLPattern, URLResolver, get_resolver

from rbac.models import ApiKey, split_api_key
from streaming.routing import http_routes, websocket_routes
from tests.rbac_helpers import (
    ALL,
    PERSONAS,
    T1,
    World,
    asgi,
    build_world,
    call,
    names_in_html,
    names_in_results,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("home_loop"),
]


@pytest.fixture
def world(actions, tenant, other_tenant, superuser, owner, member, outsider) -> World:
    world = build_world(actions, tenant, other_tenant, superuser, owner, member, outsider)
    operator = world.personas["operator"]
    world.refs["own_key"] = split_api_key(operator.key or "")
    world.refs["spare_key"] = ApiKey.issue(operator.user, name="spare")[0].key_id
    return world


SEES = {
    "superuser": ALL,
    "admin": T1,
    "operator": T1,
    "viewer": T1,
    "grantee": {"E1"},
    "outsider": {"X"},
    "group_member": T1,
}
LOGGED_OUT = ("deactivated", "anonymous", "expired_key")
LAST = {"superuser": "S", "grantee": "E1", "outsider": "X"}  # everyone else: S
OPERATES = {"superuser": ALL, "admin": T1, "operator": T1, "group_member": T1, "outsider": {"X"}}
STAFF = ("superuser", "admin")
# The tenants each persona sees (`grantee`: through its one granted execution).
TENANTS = {"superuser": {"default", "other"}, "outsider": {"other"}}  # everyone else: default
KEY_HOLDERS = ("operator", "grantee", "group_member")  # personas that call with an API key


def each(rule) -> dict[str, Any]:
    """Expected answer per persona: `rule(persona)` for the logged-in, 401 for the others."""
    return {p: 401 if p in LOGGED_OUT else rule(p) for p in PERSONAS}


def everyone(answer) -> dict[str, Any]:
    return dict.fromkeys(PERSONAS, answer)


def sees(name: str, hidden=404) -> dict[str, Any]:
    return each(lambda p: 200 if name in SEES[p] else hidden)


def operates(name: str, ok: int) -> dict[str, Any]:
    def rule(p):
        if name in OPERATES.get(p, ()):
            return ok
        return 403 if name in SEES[p] else 404

    return each(rule)


def tenants_of(persona: str) -> set[str]:
    return TENANTS.get(persona, {"default"})


def slugs_in_results(reply, world: World) -> set[str]:
    return {row["slug"] for row in reply.json()["results"]}


def key_holders_in_results(reply, world: World) -> set[str]:
    """The personas whose own API key the list shows."""
    shown = {row["id"] for row in reply.json()["results"]}
    return {
        name
        for name, persona in world.personas.items()
        if persona.key and split_api_key(persona.key) in shown
    }


def pages(rule) -> dict[str, Any]:
    """Web pages: a persona without a session is sent to the login page."""
    return {p: 302 if p in LOGGED_OUT else rule(p) for p in PERSONAS}


@dataclass(frozen=True)
class Cell:
    route: str  # as enumerated (see `enumerated_routes`)
    path: str  # `{E1}`-style placeholders name the world's executions
    expect: dict[str, Any]
    method: str = "GET"
    query: str = ""
    body: dict | None = None
    web: bool = False  # pages and admin: the persona's session, not its API credentials
    listing: Any = None  # response → the set of world names it shows
    stream: bool = False  # never ends by itself: check the status, then leave
    notes: dict = field(default_factory=dict)


API = "api/v1/"
EXECS = f"{API}^executions/"
RUN = {"action": "examples.print_lines", "parameters": {"count": 1, "delay": 0}}

REST = [
    Cell(f"{API}^actions/$", "/api/v1/actions/", each(lambda p: 200)),
    Cell(
        f"{API}^actions/(?P<ref>[^/]+)/$",
        "/api/v1/actions/examples.print_lines/",
        each(lambda p: 200),
    ),
    Cell(
        f"{EXECS}$",
        "/api/v1/executions/",
        each(lambda p: (200, SEES[p])),
        listing=names_in_results,
    ),
    *[Cell(f"{EXECS}(?P<id>[^/.]+)/$", f"/api/v1/executions/{{{n}}}/", sees(n)) for n in ALL],
    Cell(
        f"{EXECS}(?P<id>[^/.]+)/$",
        "/api/v1/executions/last/",
        each(lambda p: (200, {LAST.get(p, "S")})),
        listing=lambda r, w: w.names({r.json()["id"]}),
    ),
    Cell(
        f"{EXECS}(?P<id>[^/.]+)/children/$",
        "/api/v1/executions/{W}/children/",
        each(lambda p: (200, {"C"}) if "W" in SEES[p] else 404),
        listing=names_in_results,
    ),
    Cell(
        f"{API}^tenants/$",
        "/api/v1/tenants/",
        each(lambda p: (200, tenants_of(p))),
        listing=slugs_in_results,
    ),
    *[
        Cell(
            f"{API}^tenants/(?P<slug>[^/.]+)/$",
            f"/api/v1/tenants/{slug}/",
            each(lambda p, slug=slug: 200 if slug in tenants_of(p) else 404),
        )
        for slug in ("default", "other", "nope")
    ],
    # Keys: each persona sees its own only (session personas hold none in this world).
    Cell(
        f"{API}^keys/$",
        "/api/v1/keys/",
        each(lambda p: (200, {p} & set(KEY_HOLDERS))),
        listing=key_holders_in_results,
    ),
    Cell(
        f"{API}^keys/(?P<id>[^/.]+)/$",
        "/api/v1/keys/{own_key}/",
        each(lambda p: 200 if p == "operator" else 404),
    ),
    Cell(f"{API}schema/", "/api/v1/schema/", {**everyone(200), "expired_key": 401}),
    Cell(f"{API}docs/", "/api/v1/docs/", {**everyone(200), "expired_key": 401}),
    Cell("^api/", "/api/v1/nowhere/", everyone(404)),
    # Writes last: they add executions and keys. A key cannot create keys (superusers' can).
    Cell(
        f"{API}^keys/$",
        "/api/v1/keys/",
        each(lambda p: 403 if p in KEY_HOLDERS else 201),
        method="POST",
        body={"name": "matrix"},
    ),
    Cell(
        f"{API}^keys/(?P<id>[^/.]+)/revoke/$",
        "/api/v1/keys/{spare_key}/revoke/",
        each(lambda p: 200 if p == "operator" else 404),
        method="POST",
    ),
    *[
        Cell(
            f"{EXECS}(?P<id>[^/.]+)/cancel/$",
            f"/api/v1/executions/{{{n}}}/cancel/",
            operates(n, 409),
            method="POST",
        )
        for n in ("E1", "X")
    ],
    *[
        Cell(
            f"{EXECS}(?P<id>[^/.]+)/re-run/$",
            f"/api/v1/executions/{{{n}}}/re-run/",
            operates(n, 201),
            method="POST",
        )
        for n in ("E1", "X")
    ],
    *[
        Cell(f"{EXECS}$", "/api/v1/executions/", cell_expect, method="POST", body=body)
        for cell_expect, body in (
            ({**operates("E1", 201), "outsider": None}, RUN),
            (
                {**operates("X", 201), **dict.fromkeys(SEES.keys() - {"superuser", "outsider"})},
                {**RUN, "tenant": "other"},
            ),
        )
    ],
]

OUTPUT = "http:api/v1/executions/<str:execution_id>/output"
STREAMS = [
    *[Cell(OUTPUT, f"/api/v1/executions/{{{n}}}/output", sees(n)) for n in ("E1", "C", "X")],
    *[
        Cell(f"{OUTPUT}/stream", f"/api/v1/executions/{{{n}}}/output/stream", sees(n))
        for n in ("E1", "X")
    ],
    Cell("http:api/v1/stream", "/api/v1/stream", each(lambda p: 200), stream=True),
    # StackStorm's names (aliases) widen nothing: the same answers as the names they alias.
    *[
        Cell(OUTPUT, f"/api/v1/executions/{{{n}}}/output", sees(n), query="output_type=stdout")
        for n in ("E1", "X")
    ],
    *[
        Cell(
            f"{OUTPUT}/stream",
            f"/api/v1/executions/{{{n}}}/output/stream",
            sees(n),
            query="output_type=stderr",
        )
        for n in ("E1", "X")
    ],
    Cell(
        "http:api/v1/stream",
        "/api/v1/stream",
        each(lambda p: 200),
        query="events=st2.execution__create&action_refs=examples.print_lines",
        stream=True,
    ),
]

ACCOUNTS = "accounts/"
PAGES = [
    Cell("", "/", everyone(302), web=True),
    Cell(
        "executions/",
        "/executions/",
        pages(lambda p: (200, SEES[p])),
        web=True,
        listing=names_in_html,
    ),
    *[
        Cell(
            "executions/<str:execution_id>/", f"/executions/{{{n}}}/", pages(sees(n).get), web=True
        )
        for n in ("E1", "C", "X")
    ],
    Cell(
        "executions/<str:execution_id>/lines",
        "/executions/{E1}/lines",
        sees("E1"),
        query="from=1&to=2",
        web=True,
    ),
    Cell(
        "executions/<str:execution_id>/search",
        "/executions/{E1}/search",
        sees("E1"),
        query="q=one",
        web=True,
    ),
    Cell("actions/", "/actions/", pages(lambda p: 200), web=True),
    Cell(
        "actions/<str:ref>/run",
        "/actions/examples.print_lines/run",
        pages(lambda p: 200 if p in OPERATES else 403),
        web=True,
    ),
    Cell(f"{ACCOUNTS}login/", "/accounts/login/", everyone(200), web=True),
    Cell(f"{ACCOUNTS}logout/", "/accounts/logout/", everyone(405), web=True),
    Cell(
        f"{ACCOUNTS}password_change/", "/accounts/password_change/", pages(lambda p: 200), web=True
    ),
    Cell(
        f"{ACCOUNTS}password_change/done/",
        "/accounts/password_change/done/",
        pages(lambda p: 200),
        web=True,
    ),
    Cell(f"{ACCOUNTS}password_reset/", "/accounts/password_reset/", everyone(200), web=True),
    Cell(
        f"{ACCOUNTS}password_reset/done/", "/accounts/password_reset/done/", everyone(200), web=True
    ),
    Cell(
        f"{ACCOUNTS}reset/<uidb64>/<token>/",
        "/accounts/reset/MQ/set-password/",
        everyone(200),
        web=True,
    ),
    Cell(f"{ACCOUNTS}reset/done/", "/accounts/reset/done/", everyone(200), web=True),
]

# --- the admin: each registered model's routes, with the two staff personas' answers --------

ADMIN = "admin/"
OBJECT = "<path:object_id>/"


def admin_answers(superuser, admin) -> dict[str, Any]:
    """Non-staff personas (and those without a session) are sent to the admin login."""
    return {**everyone(302), "superuser": superuser, "admin": admin}


def model_cells(model: str, target: str, answers: dict[str, tuple]) -> list[Cell]:
    """Cells for one admin model; `answers` maps a route suffix to (superuser, admin)."""
    cells = []
    for suffix, (for_superuser, for_admin) in answers.items():
        placeholder = "{" + target + "}"
        path = suffix.replace(OBJECT, placeholder + "/").replace("<id>", placeholder)
        path = path.replace("<object_pk>", placeholder)
        path = path.replace("<user_id>", "{grantee_user}").replace("<group_id>", "{group}")
        listing = names_in_html if suffix == "" and model == "executions/execution" else None
        cells.append(
            Cell(
                f"{ADMIN}{model}/{suffix}",
                f"/admin/{model}/{path}",
                admin_answers(for_superuser, for_admin),
                web=True,
                listing=listing,
            )
        )
    return cells


def plain_model(target: str, model: str, *, writable=True, admin=403, **extra) -> list[Cell]:
    """A model only superusers manage (the tenant admin has no model permission); rows of
    a read-only model (written by services only) cannot be added or deleted by anyone."""
    answers = {
        "": (200, admin),
        "add/": (200 if writable else 403, admin),
        f"{OBJECT}history/": (200, admin),
        f"{OBJECT}delete/": (200 if writable else 403, admin),
        f"{OBJECT}change/": (200, admin),
        OBJECT: (302, 302),
        **extra,
    }
    return model_cells(model, target, answers)


PERMISSIONS = "<object_pk>/permissions/"
ADMIN_CELLS = [
    Cell(ADMIN, "/admin/", admin_answers(200, 200), web=True),
    Cell(
        f"{ADMIN}login/",
        "/admin/login/",
        {**everyone(200), "superuser": 302, "admin": 302},
        web=True,
    ),
    Cell(f"{ADMIN}logout/", "/admin/logout/", admin_answers(405, 405), web=True),
    Cell(f"{ADMIN}password_change/", "/admin/password_change/", admin_answers(200, 200), web=True),
    Cell(
        f"{ADMIN}password_change/done/",
        "/admin/password_change/done/",
        admin_answers(200, 200),
        web=True,
    ),
    Cell(f"{ADMIN}autocomplete/", "/admin/autocomplete/", admin_answers(403, 403), web=True),
    Cell(f"{ADMIN}jsi18n/", "/admin/jsi18n/", admin_answers(200, 200), web=True),
    Cell(
        f"{ADMIN}r/<path:content_type_id>/<path:object_id>/",
        "/admin/r/1/1/",
        admin_answers(404, 404),
        web=True,
    ),
    *[
        Cell(
            f"{ADMIN}^(?P<app_label>auth|executions|rbac)/$",
            f"/admin/{app}/",
            admin_answers(200, 200 if app == "executions" else 404),
            web=True,
        )
        for app in ("executions", "auth", "rbac")
    ],
    Cell(f"{ADMIN}(?P<url>.*)$", "/admin/nowhere/", admin_answers(404, 404), web=True),
    # Executions: the tenant admin sees its tenant's, and grants on them.
    *model_cells(
        "executions/execution",
        "E1",
        {
            "": ((200, ALL), (200, T1)),
            "add/": (403, 403),
            f"{OBJECT}history/": (200, 200),
            f"{OBJECT}delete/": (403, 403),
            f"{OBJECT}change/": (200, 200),
            OBJECT: (302, 302),
            PERMISSIONS: (200, 200),
            f"{PERMISSIONS}user-manage/<user_id>/": (200, 200),
            f"{PERMISSIONS}group-manage/<group_id>/": (200, 200),
        },
    ),
    *model_cells(
        "executions/execution",
        "X",
        {
            f"{OBJECT}history/": (200, 302),
            f"{OBJECT}delete/": (403, 403),
            f"{OBJECT}change/": (200, 302),
            PERMISSIONS: (200, 403),
            f"{PERMISSIONS}user-manage/<user_id>/": (200, 403),
            f"{PERMISSIONS}group-manage/<group_id>/": (200, 403),
        },
    ),
    # Actions are shared by every tenant: granting on them is for superusers (and `*` admins).
    *plain_model(
        "action",
        "executions/action",
        **{
            PERMISSIONS: (200, 403),
            f"{PERMISSIONS}user-manage/<user_id>/": (200, 403),
            f"{PERMISSIONS}group-manage/<group_id>/": (200, 403),
        },
    ),
    # Tenants: the tenant admin sees its own and manages its grants.
    *model_cells(
        "executions/tenant",
        "default",
        {
            "": (200, 200),
            "add/": (200, 403),
            f"{OBJECT}history/": (200, 200),
            f"{OBJECT}delete/": (200, 403),
            f"{OBJECT}change/": (200, 200),
            OBJECT: (302, 302),
        },
    ),
    *model_cells("executions/tenant", "other", {f"{OBJECT}change/": (200, 302)}),
    *plain_model("chunk", "executions/outputchunk", writable=False),
    *plain_model("event", "executions/executionevent", writable=False),
    *plain_model("grantee_user", "auth/user", **{"<id>/password/": (200, 403)}),
    *plain_model("group", "auth/group"),
    *plain_model("key", "rbac/apikey"),
]

CELLS = [*REST, *STREAMS, *PAGES, *ADMIN_CELLS]
WEBSOCKET = "ws:ws/v1/stream"


def _canonical(route: str) -> str:
    """The admin's app-list pattern names its apps in set order: sort them."""
    return re.sub(
        r"\(\?P<app_label>([^)]*)\)",
        lambda m: "(?P<app_label>" + "|".join(sorted(m.group(1).split("|"))) + ")",
        route,
    )


def enumerated_routes() -> set[str]:
    """Every route: Django's URL patterns, and the Channels routes in front of Django."""

    def walk(patterns, prefix=""):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                yield prefix + str(pattern.pattern)

    routes = {_canonical(route) for route in walk(get_resolver().url_patterns)}
    routes |= {
        f"http:{route.pattern}"
        for route in http_routes
        if not isinstance(route.callback, ASGIHandler)
    }
    routes |= {f"ws:{route.pattern}" for route in websocket_routes}
    return routes


def test_it_covers_every_route():
    covered = {cell.route for cell in CELLS} | {WEBSOCKET}
    routes = enumerated_routes()
    assert sorted(routes - covered) == [], "routes the access matrix does not cover"
    assert sorted(covered - routes) == [], "matrix rows for routes that no longer exist"


async def _answer(cell: Cell, persona, world: World):
    headers = persona.web_headers if cell.web else persona.api_headers
    reply = await call(
        cell.method,
        world.fill(cell.path),
        query=cell.query,
        headers=headers,
        body=cell.body,
        stream=cell.stream,
    )
    if cell.listing is not None and reply.status == 200:
        return reply.status, cell.listing(reply, world)
    return reply.status


async def test_it_answers_every_persona_exactly(world):
    wrong = []
    for cell in CELLS:
        for name in PERSONAS:
            expected = cell.expect[name]
            if expected is None:  # checked by its own test
                continue
            if isinstance(expected, tuple):
                expected = (expected[0], set(expected[1]))
            got = await _answer(cell, world.personas[name], world)
            if got != expected:
                wrong.append(
                    f"{cell.method} {cell.path}{'?' + cell.query if cell.query else ''}"
                    f" as {name}: expected {expected}, got {got}"
                )
    assert wrong == [], "\n".join(wrong)


async def _websocket_answer(persona) -> tuple:
    headers = [(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1"), *persona.api_headers]
    socket = WebsocketCommunicator(asgi, "/ws/v1/stream", headers=headers)
    connected, _ = await socket.connect(timeout=30)
    assert connected  # refusals say why in an `error` message before closing
    await socket.send_json_to({"action": "subscribe_events"})
    first = await socket.receive_json_from(timeout=30)
    if first["event"] == "error":
        closed = await socket.receive_output(timeout=30)
        return first["data"]["status"], closed.get("code")
    await socket.disconnect()
    return first["event"], first.get("stream")


async def test_it_lets_exactly_the_logged_in_personas_open_the_websocket(world):
    """Who may open `ws:ws/v1/stream` (what each then sees: tests/test_no_leaks.py)."""
    answers = {name: await _websocket_answer(world.personas[name]) for name in PERSONAS}
    expected = {p: (401, 4401) if p in LOGGED_OUT else ("subscribed", "events") for p in PERSONAS}
    assert answers == expected


async def test_it_answers_running_in_an_unseen_tenant_like_a_missing_one(world):
    wrong = []
    for name, tenant in (
        ("outsider", "default"),
        *((name, "other") for name in ("admin", "operator", "viewer", "grantee", "group_member")),
    ):
        body = {**RUN, "tenant": tenant}
        persona = world.personas[name]
        reply = await call("POST", "/api/v1/executions/", headers=persona.api_headers, body=body)
        missing = await call(
            "POST",
            "/api/v1/executions/",
            headers=persona.api_headers,
            body={**body, "tenant": "nope"},
        )
        if (reply.status, missing.status) != (404, 404):
            wrong.append(f"{name} in {tenant}: {reply.status}, missing tenant: {missing.status}")
    assert wrong == []
