"""API keys: stored hashed, shown once, expire and revoke; Bearer, X-API-Key and session
authenticate the REST API (DRF) and the streams (the Channels middleware) the same way."""

import hashlib
import logging
from datetime import timedelta
from io import StringIO

import pytest
from channels.db import database_sync_to_async
from channels.generic.http import AsyncHttpConsumer
from channels.routing import URLRouter
from channels.testing import HttpCommunicator
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import path, re_path
from django.utils import timezone

from rbac.middleware import TailgateAuthMiddleware
from rbac.models import ApiKey

pytestmark = pytest.mark.django_db
# Async tests reach the database from another thread: they need committed rows.
in_threads = pytest.mark.django_db(transaction=True)

LIST = "/api/v1/executions/"


@pytest.fixture
def member_key(member):
    return ApiKey.issue(member, name="ci")


def test_it_stores_only_a_hash_of_the_key(member_key):
    key, raw_key = member_key
    row = ApiKey.objects.filter(pk=key.pk).values().get()
    assert raw_key not in {str(value) for value in row.values()}
    assert row["key_hash"] == hashlib.sha256(raw_key.encode()).hexdigest()
    assert raw_key.startswith(f"tg_{key.key_id}_")
    assert len(raw_key) > 50


def test_it_authenticates_by_key_id_and_hash(member_key):
    key, raw_key = member_key
    assert ApiKey.authenticate(raw_key) == key
    tampered = raw_key[:-1] + ("A" if raw_key[-1] != "A" else "B")
    assert ApiKey.authenticate(tampered) is None
    assert ApiKey.authenticate(f"tg_{'0' * 12}_{raw_key.split('_', 2)[2]}") is None
    for malformed in ("", "tg_", "tg__x", "nope", key.key_id, raw_key.replace("tg_", "xx_")):
        assert ApiKey.authenticate(malformed) is None


def test_it_refuses_expired_revoked_and_inactive_users_keys(member):
    expired, expired_raw = ApiKey.issue(member, expires_in=timedelta(days=1))
    ApiKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now())
    assert ApiKey.authenticate(expired_raw) is None

    revoked, revoked_raw = ApiKey.issue(member)
    revoked.revoke()
    assert ApiKey.authenticate(revoked_raw) is None

    _, raw_key = ApiKey.issue(member)
    member.is_active = False
    member.save()
    assert ApiKey.authenticate(raw_key) is None


def test_it_records_when_a_key_was_last_used(member_key):
    key, raw_key = member_key
    assert key.last_used_at is None
    ApiKey.authenticate(raw_key)
    key.refresh_from_db()
    assert key.last_used_at is not None


# --- REST API (DRF) ---------------------------------------------------------------------


def test_it_authenticates_the_api_by_bearer_and_by_x_api_key(member_key):
    _, raw_key = member_key
    client = Client()
    assert client.get(LIST, HTTP_AUTHORIZATION=f"Bearer {raw_key}").status_code == 200
    assert client.get(LIST, HTTP_AUTHORIZATION=f"bearer  {raw_key} ").status_code == 200
    assert client.get(LIST, HTTP_X_API_KEY=raw_key).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"HTTP_AUTHORIZATION": "Bearer tg_000000000000_nope"},
        {"HTTP_AUTHORIZATION": "Bearer"},
        {"HTTP_X_API_KEY": "garbage"},
        {"HTTP_X_API_KEY": ""},
    ],
)
def test_it_answers_401_problem_to_a_bad_key(headers):
    response = Client().get(LIST, **headers)
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert "Bearer" in response["WWW-Authenticate"]


def test_it_answers_401_to_a_revoked_key_and_never_echoes_it(member_key):
    key, raw_key = member_key
    key.revoke()
    response = Client().get(LIST, HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert response.status_code == 401
    assert raw_key not in response.content.decode()
    assert key.key_id not in response.content.decode()


def test_it_refuses_two_different_keys(member_key, owner):
    _, raw_key = member_key
    _, other_key = ApiKey.issue(owner)
    response = Client().get(LIST, HTTP_AUTHORIZATION=f"Bearer {raw_key}", HTTP_X_API_KEY=other_key)
    assert response.status_code == 401


def test_it_does_not_fall_back_to_the_session_when_a_key_is_bad(member):
    client = Client()
    client.force_login(member)
    assert client.get(LIST).status_code == 200
    assert client.get(LIST, HTTP_X_API_KEY="tg_000000000000_nope").status_code == 401


def test_it_needs_csrf_for_session_posts_but_not_for_keys(owner, actions):
    body = {"action": "examples.print_lines", "parameters": {"count": 1}}
    session = Client(enforce_csrf_checks=True)
    session.force_login(owner)
    refused = session.post(LIST, body, content_type="application/json")
    assert refused.status_code == 403
    _, raw_key = ApiKey.issue(owner)
    keyed = Client(enforce_csrf_checks=True)
    created = keyed.post(
        LIST, body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {raw_key}"
    )
    assert created.status_code == 201, created.content


def test_it_never_logs_a_key(member_key, caplog):
    key, raw_key = member_key
    caplog.set_level(logging.DEBUG)
    client = Client()
    client.get(LIST, HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    key.revoke()
    client.get(LIST, HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    client.get(LIST, HTTP_X_API_KEY=raw_key)
    client.get(f"/api/v1/nowhere/?{raw_key[:3]}", HTTP_X_API_KEY=raw_key)
    assert caplog.records
    logged = "\n".join(f"{r.getMessage()} {r.args} {r.exc_text}" for r in caplog.records)
    assert raw_key not in logged
    assert raw_key.split("_", 2)[2] not in logged


# --- streams (the Channels middleware) ----------------------------------------------------


class WhoAmI(AsyncHttpConsumer):
    async def handle(self, body):
        user, key = self.scope["user"], self.scope["api_key"]
        text = f"{user.get_username() or '-'} {key.key_id if key else '-'} "
        text += self.scope["auth_error"] or "-"
        await self.send_response(200, text.encode(), headers=[(b"content-type", b"text/plain")])


application = TailgateAuthMiddleware(URLRouter([path("api/v1/stream", WhoAmI.as_asgi())]))


async def _who(*headers: tuple[str, str]) -> str:
    raw = [(b"host", b"127.0.0.1")] + [(k.encode(), v.encode()) for k, v in headers]
    communicator = HttpCommunicator(application, "GET", "/api/v1/stream", headers=raw)
    response = await communicator.get_response(timeout=30)
    return response["body"].decode()


@database_sync_to_async
def _session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


@in_threads
async def test_it_authenticates_streams_by_bearer_x_api_key_and_session(member):
    key, raw_key = await database_sync_to_async(ApiKey.issue)(member)
    assert await _who(("authorization", f"Bearer {raw_key}")) == f"member {key.key_id} -"
    assert await _who(("x-api-key", raw_key)) == f"member {key.key_id} -"
    cookie = await _session_cookie(member)
    assert await _who(("cookie", cookie)) == "member - -"
    assert await _who() == "- - -"


@in_threads
async def test_it_leaves_a_stream_anonymous_on_a_bad_key_even_with_a_session(member):
    key, raw_key = await database_sync_to_async(ApiKey.issue)(member)
    cookie = await _session_cookie(member)
    await database_sync_to_async(key.revoke)()
    refused = await _who(("cookie", cookie), ("authorization", f"Bearer {raw_key}"))
    assert refused == "- - Invalid, expired or revoked API key."
    doubled = await _who(("x-api-key", raw_key), ("x-api-key", raw_key))
    assert doubled == "- - More than one x-api-key header."


@in_threads
async def test_it_leaves_a_deactivated_users_session_anonymous(member):
    cookie = await _session_cookie(member)
    member.is_active = False
    await database_sync_to_async(member.save)()
    assert await _who(("cookie", cookie)) == "- - -"


@in_threads
async def test_it_authenticates_nobody_on_a_host_not_allowed(member):
    _, raw_key = await database_sync_to_async(ApiKey.issue)(member)
    communicator = HttpCommunicator(
        application,
        "GET",
        "/api/v1/stream",
        headers=[(b"host", b"evil.com"), (b"x-api-key", raw_key.encode())],
    )
    response = await communicator.get_response(timeout=30)
    assert response["body"].decode() == "- - This host name is not served here."


# --- manage.py create_api_key -------------------------------------------------------------


def _create_api_key(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("create_api_key", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_it_creates_a_key_from_the_command_line_and_prints_it_once(member):
    out, err = _create_api_key("member", "--name", "deploy bot", "--expires", "30")
    raw_key = out.strip()
    key = ApiKey.authenticate(raw_key)
    assert key is not None and key.user == member and key.name == "deploy bot"
    assert timedelta(days=29) < key.expires_at - timezone.now() <= timedelta(days=30)
    assert raw_key not in err and key.key_id in err
    assert "shown only this once" in err


def test_it_creates_a_key_that_never_expires_by_default(member):
    out, _ = _create_api_key("member")
    assert ApiKey.authenticate(out.strip()).expires_at is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ghost"], "No user named 'ghost'."),
        (["member", "--expires", "soon"], "whole number of days, not 'soon'"),
        (["member", "--expires", "0"], "between 1 and 3650 days, not 0"),
        (["member", "--expires", "-5"], "between 1 and 3650 days, not -5"),
        (["member", "--expires", "99999"], "between 1 and 3650 days, not 99999"),
    ],
)
def test_it_explains_bad_command_arguments(member, args, message):
    with pytest.raises(CommandError, match=message):
        _create_api_key(*args)
    assert not ApiKey.objects.exists()


def test_it_refuses_a_key_for_an_inactive_user(member):
    member.is_active = False
    member.save()
    with pytest.raises(CommandError, match="inactive"):
        _create_api_key("member")


# --- the admin ----------------------------------------------------------------------------


def test_it_creates_a_key_in_the_admin_and_shows_it_once(superuser, member):
    client = Client()
    client.force_login(superuser)
    response = client.post(
        "/admin/rbac/apikey/add/", {"user": member.pk, "name": "laptop", "expires_at": ""}
    )
    assert response.status_code == 200
    key = ApiKey.objects.get()
    raw_key = response.context["raw_key"]
    assert raw_key in response.content.decode()
    assert ApiKey.authenticate(raw_key) == key
    change_page = client.get(f"/admin/rbac/apikey/{key.pk}/change/").content.decode()
    assert key.key_id in change_page and raw_key not in change_page
    listing = client.get("/admin/rbac/apikey/").content.decode()
    assert raw_key not in listing


def test_it_revokes_keys_from_the_admin(superuser, member_key):
    key, raw_key = member_key
    client = Client()
    client.force_login(superuser)
    response = client.post(
        "/admin/rbac/apikey/", {"action": "revoke", "_selected_action": [key.pk]}, follow=True
    )
    assert "Revoked 1 API key(s)." in response.content.decode()
    assert ApiKey.authenticate(raw_key) is None


class RecordingDjango(ASGIHandler):
    """Stands in for Django behind the router: records the scope it was given."""

    scopes: list = []

    async def __call__(self, scope, receive, send):
        self.scopes.append(scope)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@in_threads
async def test_it_leaves_the_paths_django_serves_to_django(member):
    django = RecordingDjango()
    routed = TailgateAuthMiddleware(
        URLRouter([path("api/v1/stream", WhoAmI.as_asgi()), re_path(r"", django)])
    )
    _, raw_key = await database_sync_to_async(ApiKey.issue)(member)
    headers = [(b"host", b"127.0.0.1"), (b"x-api-key", raw_key.encode())]
    page = await HttpCommunicator(routed, "GET", "/admin/", headers=headers).get_response()
    assert page["status"] == 204
    assert "user" not in django.scopes[-1]  # Django and DRF authenticate it themselves
    stream = await HttpCommunicator(routed, "GET", "/api/v1/stream", headers=headers).get_response()
    assert stream["body"].decode().startswith("member ")
