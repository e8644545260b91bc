"""REST API: /api/v1/keys/ — the caller's own API keys: list, show, create (shown once),
revoke; created from a session or by a superuser only; revoking ends the key's streams."""

import hashlib
from datetime import timedelta

import hypothesis
import pytest
from channels.db import database_sync_to_async
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from rbac import api as keys_api
from rbac.models import ApiKey
from tests.api_helpers import assert_problem, logged_in, post
from tests.rbac_helpers import call, open_stream
from tests.streaming_helpers import running_execution, write

pytestmark = pytest.mark.django_db

LIST = "/api/v1/keys/"
# A failure bound only: the doorbell ends the stream in milliseconds, and the safety re-check
# that could otherwise end it is an hour away (settings in the test).
WAIT_SECONDS = 60


def by_key(raw_key: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {raw_key}"}


# --- list and show ----------------------------------------------------------------------


def test_it_lists_only_the_callers_own_keys_newest_first(member, owner):
    old, _ = ApiKey.issue(member, name="old", expires_in=timedelta(days=30))
    new, raw_key = ApiKey.issue(member, name="ci")
    ApiKey.issue(owner, name="not yours")
    page = Client().get(LIST, **by_key(raw_key)).json()
    assert page["count"] == 2
    assert [row["id"] for row in page["results"]] == [new.key_id, old.key_id]
    row = page["results"][0]
    assert set(row) == {
        "id", "name", "state", "current", "created_at", "expires_at", "last_used_at",
        "revoked_at",
    }  # fmt: skip
    assert (row["name"], row["state"], row["current"], row["expires_at"]) == (
        "ci",
        "active",
        True,
        None,
    )
    assert row["last_used_at"] is not None  # this very request used it
    assert page["results"][1]["current"] is False
    assert page["results"][1]["expires_at"] is not None


def test_it_says_which_keys_are_expired_or_revoked(member):
    expired, _ = ApiKey.issue(member, expires_in=timedelta(days=1))
    ApiKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now())
    revoked, _ = ApiKey.issue(member)
    revoked.revoke()
    rows = logged_in(member).get(LIST).json()["results"]
    assert {row["id"]: row["state"] for row in rows} == {
        expired.key_id: "expired",
        revoked.key_id: "revoked",
    }
    assert all(row["current"] is False for row in rows)  # a session, not a key


def test_it_shows_an_own_key_and_hides_anyone_elses_like_a_missing_one(member, owner):
    mine, _ = ApiKey.issue(member, name="mine")
    theirs, _ = ApiKey.issue(owner, name="theirs")
    client = logged_in(member)
    assert client.get(f"{LIST}{mine.key_id}/").json()["name"] == "mine"
    for key_id in (theirs.key_id, "000000000000", "nope"):
        body = assert_problem(client.get(f"{LIST}{key_id}/"), 404)
        assert body["detail"] == f"You have no API key {key_id}."
    assert_problem(post(client, f"{LIST}{theirs.key_id}/revoke/"), 404)
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


def test_it_needs_credentials_and_refuses_unknown_parameters(member):
    key, raw_key = ApiKey.issue(member)
    for path in (LIST, f"{LIST}{key.key_id}/"):
        assert_problem(Client().get(path), 401)
    assert_problem(post(Client(), LIST, {"name": "x"}), 401)
    assert_problem(post(Client(), f"{LIST}{key.key_id}/revoke/"), 401)
    errors = assert_problem(Client().get(LIST, {"user": "root"}, **by_key(raw_key)), 422)
    assert [e["location"] for e in errors["errors"]] == ["query.user"]


# --- create -------------------------------------------------------------------------------


def test_it_creates_a_key_from_a_session_and_shows_it_once(member):
    client = logged_in(member)
    response = post(client, LIST, {"name": "laptop", "expires_in_days": 30})
    assert response.status_code == 201, response.content
    created = response.json()
    raw_key = created["key"]
    assert raw_key.startswith(f"tg_{created['id']}_")
    assert response["Location"].endswith(f"{LIST}{created['id']}/")
    assert (created["name"], created["state"], created["current"]) == ("laptop", "active", False)
    stored = ApiKey.objects.get(key_id=created["id"])
    assert stored.user == member
    assert stored.key_hash == hashlib.sha256(raw_key.encode()).hexdigest()
    left = stored.expires_at - timezone.now()
    assert timedelta(days=29) < left <= timedelta(days=30)
    # It works, and is never shown again.
    assert Client().get(LIST, **by_key(raw_key)).status_code == 200
    assert raw_key not in client.get(LIST).content.decode()
    assert raw_key not in client.get(f"{LIST}{created['id']}/").content.decode()


def test_it_creates_a_key_that_never_expires_by_default(member):
    created = post(logged_in(member), LIST, {"name": "forever"}).json()
    assert created["expires_at"] is None
    assert ApiKey.objects.get(key_id=created["id"]).expires_at is None


def test_it_refuses_to_create_a_key_with_a_key_unless_superuser(member, superuser):
    _, member_key = ApiKey.issue(member)
    body = assert_problem(post(Client(), LIST, {"name": "copy"}, **by_key(member_key)), 403)
    assert "An API key cannot create API keys" in body["detail"]
    assert ApiKey.objects.filter(user=member).count() == 1
    _, root_key = ApiKey.issue(superuser)
    response = post(Client(), LIST, {"name": "automation"}, **by_key(root_key))
    assert response.status_code == 201, response.content


def test_it_needs_the_csrf_token_with_a_session(member):
    client = logged_in(member, enforce_csrf_checks=True)
    assert_problem(post(client, LIST, {"name": "x"}), 403)
    key, _ = ApiKey.issue(member)
    assert_problem(post(client, f"{LIST}{key.key_id}/revoke/"), 403)
    key.refresh_from_db()
    assert key.revoked_at is None


@pytest.mark.parametrize(
    "body, location",
    [
        ({}, "body.name"),
        ({"name": ""}, "body.name"),
        ({"name": "x" * 101}, "body.name"),
        ({"name": "x", "expires_in_days": 0}, "body.expires_in_days"),
        ({"name": "x", "expires_in_days": 3651}, "body.expires_in_days"),
        ({"name": "x", "expires_in_days": "soon"}, "body.expires_in_days"),
        ({"name": "x", "expires": 3}, "body.expires"),
    ],
)
def test_it_refuses_invalid_bodies_naming_the_field(member, body, location):
    errors = assert_problem(post(logged_in(member), LIST, body), 422)["errors"]
    assert [e["location"] for e in errors] == [location]
    assert not ApiKey.objects.filter(user=member).exists()


# No deadline: each example is a real request and database write, and a busy machine makes its
# time vary; what is tested is the answer, not the speed.
@hypothesis.settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=100),
    days=st.none() | st.integers(1, keys_api.MAX_KEY_DAYS),
)
def test_it_creates_a_key_for_every_body_the_schema_allows(member, monkeypatch, name, days):
    """What the OpenAPI document promises (schemathesis runs with a key, which may not
    create keys, so it cannot check this operation's 201s): any name of 1 to 100 characters,
    spaces-only included, and any number of days in range."""
    monkeypatch.setattr(keys_api, "MAX_USABLE_KEYS_PER_USER", 10**6)
    body = {"name": name} if days is None else {"name": name, "expires_in_days": days}
    response = post(logged_in(member), LIST, body)
    assert response.status_code == 201, response.content
    assert response.json()["name"] == name
    assert ApiKey.objects.get(key_id=response.json()["id"]).name == name


def test_it_refuses_a_key_past_the_usable_keys_bound(member, monkeypatch):
    monkeypatch.setattr(keys_api, "MAX_USABLE_KEYS_PER_USER", 2)
    client = logged_in(member)
    first, _ = ApiKey.issue(member)
    ApiKey.issue(member)
    body = assert_problem(post(client, LIST, {"name": "third"}), 409)
    assert "revoke one first" in body["detail"]
    first.revoke()  # revoked keys do not count
    assert post(client, LIST, {"name": "third"}).status_code == 201


# --- revoke -------------------------------------------------------------------------------


def test_it_revokes_an_own_key_which_then_stops_working(member):
    key, raw_key = ApiKey.issue(member)
    client = logged_in(member)
    revoked = post(client, f"{LIST}{key.key_id}/revoke/")
    assert revoked.status_code == 200, revoked.content
    assert revoked.json()["state"] == "revoked" and revoked.json()["revoked_at"]
    assert_problem(Client().get(LIST, **by_key(raw_key)), 401)
    again = post(client, f"{LIST}{key.key_id}/revoke/")  # idempotent: the first time stays
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]


def test_it_lets_a_key_revoke_itself_and_its_owners_other_keys(member):
    other, other_raw = ApiKey.issue(member)
    key, raw_key = ApiKey.issue(member)
    assert post(Client(), f"{LIST}{other.key_id}/revoke/", **by_key(raw_key)).status_code == 200
    itself = post(Client(), f"{LIST}{key.key_id}/revoke/", **by_key(raw_key))
    assert itself.status_code == 200 and itself.json()["current"] is True
    for gone in (raw_key, other_raw):
        assert_problem(Client().get(LIST, **by_key(gone)), 401)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("home_loop")
async def test_it_ends_the_keys_open_streams_when_revoked_through_the_api(
    actions, tenant, member, settings
):
    settings.STREAM_ACCESS_RECHECK_SECONDS = 3600  # so only the doorbell can end it
    db = database_sync_to_async
    execution = await db(running_execution)(actions["examples.print_lines"], tenant)
    key, raw_key = await db(ApiKey.issue)(member)
    headers = [(b"authorization", f"Bearer {raw_key}".encode())]
    stream = await open_stream(f"/api/v1/executions/{execution.id}/output/stream", headers=headers)
    assert stream.status == 200
    await write(execution, ["before\n"])
    assert (await stream.next_frame())["data"]["data"] == "before\n"

    revoked = await call("POST", f"{LIST}{key.key_id}/revoke/", headers=headers)
    assert revoked.status == 200, revoked.body

    frames = await stream.drain(WAIT_SECONDS)
    assert stream.ended, "the revoked key's stream is still open"
    assert "done" not in [frame["event"] for frame in frames]
