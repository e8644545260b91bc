"""A session's streams end with the session: logout, a password change, expiry (and an API
key's with its expiry).

Through the whole ASGI application (auth middleware included), with the session cookie a
browser sends. Logout and a password change ring the access doorbell: the safety re-check is
set to an hour here, so only the doorbell can end those streams, and the tests wait on the
stream's end, not on a clock. Expiry rings nothing: a session's streams are re-checked at its
expiry time, and the safety re-check catches it too.
"""

from datetime import datetime, timedelta

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from rbac.models import ApiKey
from streaming.guard import CREDENTIALS_GONE, SESSION_ENDED
from tests.rbac_helpers import Stream, asgi, open_stream
from tests.streaming_helpers import db, write

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("home_loop")]

# A failure bound only: the doorbell ends a stream in milliseconds, and the safety re-check
# that could otherwise end it is an hour away (`_no_safety_recheck`).
WAIT_SECONDS = 60


@pytest.fixture(autouse=True)
def _no_safety_recheck(settings):
    settings.STREAM_ACCESS_RECHECK_SECONDS = 3600
    # With no re-check to fall back on, a doorbell skipped because a stalled loop overran the
    # layer's send timeout would leave the stream open: give the ring as long as the test.
    settings.CHANNEL_LAYER_SEND_TIMEOUT_SECONDS = WAIT_SECONDS


def _logged_in(user) -> tuple[Client, list]:
    client = Client()
    client.force_login(user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    return client, [(b"cookie", f"{settings.SESSION_COOKIE_NAME}={session}".encode())]


def _sse_path(execution) -> str:
    return f"/api/v1/executions/{execution.id}/output/stream"


async def _open_sse(execution, headers):
    stream = await open_stream(_sse_path(execution), query="from=0", headers=headers)
    assert stream.status == 200
    await write(execution, ["before\n"])
    assert (await stream.next_frame(WAIT_SECONDS))["data"]["data"] == "before\n"
    return stream


async def test_logout_ends_the_sessions_sse_stream_with_a_reason(execution, member):
    client, headers = await db(_logged_in)(member)
    stream = await _open_sse(execution, headers)
    response = await db(client.post)("/accounts/logout/")
    assert response.status_code in (200, 302)
    frames = await stream.until(lambda frame: frame["event"] == "revoked", timeout=WAIT_SECONDS)
    assert "session has ended" in frames[-1]["data"]["detail"]
    await stream.drain(WAIT_SECONDS)  # returns as soon as the stream ends
    assert stream.ended


async def test_logout_ends_only_that_session(execution, member):
    _, other_headers = await db(_logged_in)(member)
    client, headers = await db(_logged_in)(member)
    kept = await _open_sse(execution, other_headers)
    ended = await open_stream(_sse_path(execution), query="from=0", headers=headers)
    await db(client.post)("/accounts/logout/")
    await ended.until(lambda frame: frame["event"] == "revoked", timeout=WAIT_SECONDS)
    await write(execution, ["after\n"])
    frame = await kept.until(lambda f: f["data"].get("data") == "after\n", timeout=WAIT_SECONDS)
    assert frame[-1]["event"] == "execution.output__create"
    await kept.close()


async def test_a_password_change_ends_the_sessions_streams(execution, member):
    _, headers = await db(_logged_in)(member)
    stream = await _open_sse(execution, headers)

    def change_password():
        member.set_password("a-new-password-here")
        member.save()

    await db(change_password)()
    await stream.until(lambda frame: frame["event"] == "revoked", timeout=WAIT_SECONDS)


async def test_an_expired_session_ends_at_the_safety_recheck(execution, member, settings):
    settings.STREAM_ACCESS_RECHECK_SECONDS = 0.5
    _, headers = await db(_logged_in)(member)
    stream = await _open_sse(execution, headers)
    past = timezone.now() - timedelta(seconds=1)
    await db(lambda: Session.objects.update(expire_date=past))()
    await stream.until(lambda frame: frame["event"] == "revoked", timeout=WAIT_SECONDS)


# How far ahead the credentials of the expiry tests expire, try after try: a stream opened
# after they expired is refused, as it must be, which a machine that stalls the test for longer
# than the lead causes; the next try gives it longer. Usually the first (2 s) is enough.
EXPIRY_LEADS_SECONDS = (2, 10, 40)


async def _open_before_expiry(execution, credentials) -> tuple[Stream, datetime]:
    """An SSE stream opened with credentials that expire soon after: `credentials(lead)` makes
    them (sync) and returns (headers, expiry time)."""
    for lead in EXPIRY_LEADS_SECONDS:
        headers, expires_at = await db(credentials)(timedelta(seconds=lead))
        stream = await open_stream(_sse_path(execution), query="from=0", headers=headers)
        if stream.status == 200:
            return stream, expires_at
        # Refused only because they had expired by then (never earlier): try a longer lead.
        assert (stream.status, timezone.now() >= expires_at) == (401, True), stream.status
    raise AssertionError(f"no stream opened within a lead of {lead} s")


async def test_a_session_that_expires_ends_its_stream_at_its_expiry(execution, member):
    """No safety re-check in this test (an hour): only the session's own expiry time ends it."""

    def expiring_session(lead: timedelta):
        _, headers = _logged_in(member)
        soon = timezone.now() + lead
        Session.objects.update(expire_date=soon)
        return headers, soon

    stream, soon = await _open_before_expiry(execution, expiring_session)
    frames = await stream.until(lambda frame: frame["event"] == "revoked", timeout=WAIT_SECONDS)
    assert frames[-1]["data"]["detail"] == SESSION_ENDED
    assert timezone.now() >= soon  # not before it expired


async def test_an_api_key_that_expires_ends_its_stream_at_its_expiry(execution, member):
    def expiring_key(lead: timedelta):
        key, raw = ApiKey.issue(member, expires_in=lead)
        return [(b"x-api-key", raw.encode())], key.expires_at

    stream, expires_at = await _open_before_expiry(execution, expiring_key)
    frames = await stream.until(lambda frame: frame["event"] == "revoked", timeout=WAIT_SECONDS)
    assert frames[-1]["data"]["detail"] == CREDENTIALS_GONE
    assert timezone.now() >= expires_at


async def test_logout_ends_the_websocket_and_it_can_no_longer_subscribe(execution, member):
    client, headers = await db(_logged_in)(member)
    socket = WebsocketCommunicator(
        asgi,
        "/ws/v1/stream",
        headers=[(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1"), *headers],
    )
    connected, _ = await socket.connect(timeout=WAIT_SECONDS)
    assert connected
    await socket.send_json_to({"action": "subscribe", "execution": execution.id})
    assert (await socket.receive_json_from(timeout=WAIT_SECONDS))["event"] == "subscribed"
    await db(client.post)("/accounts/logout/")
    error = await socket.receive_json_from(timeout=WAIT_SECONDS)
    assert (error["event"], error["data"]["status"]) == ("error", 401)
    assert "session has ended" in error["data"]["detail"]
    assert (await socket.receive_output(timeout=WAIT_SECONDS))["code"] == 4401


async def test_a_stream_answers_400_to_a_host_not_served_like_the_rest_api(execution, member):
    _, headers = await db(_logged_in)(member)
    stream = await open_stream(_sse_path(execution), headers=[(b"host", b"evil.example"), *headers])
    assert stream.status == 400
