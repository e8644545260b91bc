"""Stream connection limits per tenant: atomic, released on leave, shared through Redis."""

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter

import httpx
import pytest
from channels.db import database_sync_to_async

from rbac import limits
from rbac.limits import TooManyStreams, acquire_stream_slot, slot_store
from rbac.models import Role, TenantGrant
from tests.rbac_helpers import (
    home_loop,  # noqa: F401 (fixture)
    open_stream,
    session_headers,
)
from tests.server_helpers import serve, session_cookie
from tests.streaming_helpers import eventually

pytestmark = pytest.mark.django_db(transaction=True)

SCOPE = {"type": "http", "path": "/api/v1/stream"}


@pytest.fixture(autouse=True)
def _own_limits(settings):
    """A limit of 10 and, in cluster mode, Redis keys no other test run shares."""
    settings.SSE_MAX_CONNECTIONS_PER_TENANT = 10
    settings.SSE_LIMIT_KEY_PREFIX = f"test:{uuid.uuid4().hex}"


async def _held(bucket: str) -> int:
    held = slot_store().held(bucket)
    return await held if asyncio.iscoroutine(held) else held


class Streams:
    """Opens streams that hold their slot until `close_all`."""

    def __init__(self, user):
        self.user = user
        self.release = asyncio.Event()
        self.opened = 0
        self.refused: list[TooManyStreams] = []
        self.tasks: list[asyncio.Task] = []

    async def _stream(self, entered: asyncio.Event) -> None:
        try:
            async with acquire_stream_slot(SCOPE, self.user):
                self.opened += 1
                entered.set()
                await self.release.wait()
        except TooManyStreams as refused:
            self.refused.append(refused)
            entered.set()

    async def open(self, count: int) -> None:
        """Start `count` connects at once; returns when each has its answer."""
        entered = [asyncio.Event() for _ in range(count)]
        self.tasks += [asyncio.create_task(self._stream(e)) for e in entered]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in entered)), 30)

    async def close_all(self) -> None:
        self.release.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 10)


async def test_it_lets_exactly_the_limit_in_out_of_50_concurrent_connects(member, tenant):
    streams = Streams(member)
    await streams.open(50)
    assert streams.opened == 10
    assert len(streams.refused) == 40
    assert await _held(f"tenant:{tenant.pk}") == 10
    await streams.close_all()
    assert await _held(f"tenant:{tenant.pk}") == 0


async def test_it_gives_slots_back_when_streams_end(member):
    streams = Streams(member)
    await streams.open(10)
    await streams.close_all()
    again = Streams(member)
    await again.open(10)
    assert again.opened == 10 and not again.refused
    await again.close_all()


async def test_it_gives_a_slot_back_when_a_stream_is_cancelled(member, tenant):
    streams = Streams(member)
    await streams.open(10)
    streams.tasks[0].cancel()
    await eventually(lambda: _is(f"tenant:{tenant.pk}", 9), what="9 slots held")
    late = Streams(member)
    await late.open(1)
    assert late.opened == 1
    await late.close_all()
    streams.tasks.pop(0)
    await streams.close_all()


async def _is(bucket: str, count: int) -> bool:
    return await _held(bucket) == count


async def test_it_answers_with_retry_after_and_a_problem(member, settings):
    settings.SSE_MAX_CONNECTIONS_PER_TENANT = 1
    settings.SSE_RETRY_AFTER_SECONDS = 7
    streams = Streams(member)
    await streams.open(2)
    (refused,) = streams.refused
    assert refused.retry_after == 7
    problem = refused.problem()
    assert problem["status"] == 429 and "retry in 7 seconds" in problem["detail"]
    await streams.close_all()


async def test_it_limits_each_tenant_separately(member, outsider):
    ours, theirs = Streams(member), Streams(outsider)
    await ours.open(12)
    await theirs.open(12)
    assert (ours.opened, theirs.opened) == (10, 10)
    await ours.close_all()
    await theirs.close_all()


async def test_it_counts_a_user_of_two_tenants_in_both(member, owner, other_tenant):
    await database_sync_to_async(TenantGrant.objects.create)(
        user=member, tenant=other_tenant, role=Role.VIEWER
    )
    both = Streams(member)
    await both.open(4)
    neighbours = Streams(owner)  # default tenant only
    await neighbours.open(10)
    assert both.opened == 4 and neighbours.opened == 6
    await both.close_all()
    await neighbours.close_all()


async def test_it_limits_superusers_unless_exempted(superuser, settings):
    streams = Streams(superuser)
    await streams.open(11)
    assert streams.opened == 10
    await streams.close_all()
    settings.SSE_LIMIT_EXEMPT_SUPERUSERS = True
    exempt = Streams(superuser)
    await exempt.open(20)
    assert exempt.opened == 20
    await exempt.close_all()


async def test_it_limits_users_who_see_nothing_on_their_own(db):
    from django.contrib.auth import get_user_model

    lonely = await database_sync_to_async(get_user_model().objects.create_user)("lonely")
    streams = Streams(lonely)
    await streams.open(11)
    assert streams.opened == 10
    buckets = await database_sync_to_async(limits.stream_buckets)(lonely)
    assert buckets == [f"user:{lonely.pk}"]
    await streams.close_all()


@pytest.mark.cluster
async def test_it_frees_slots_of_a_crashed_process_after_the_lease(member, tenant, settings):
    settings.SSE_SLOT_TTL_SECONDS = 1
    store = slot_store()
    bucket = f"tenant:{tenant.pk}"
    # A process that took slots and died: nobody renews or releases them.
    for _ in range(10):
        assert await store.acquire([bucket], uuid.uuid4().hex)
    refused = Streams(member)
    await refused.open(1)
    assert refused.opened == 0
    started = time.monotonic()

    async def _a_slot_is_free() -> bool:
        probe = uuid.uuid4().hex
        if await store.acquire([bucket], probe):
            await store.release([bucket], probe)
            return True
        return False

    await eventually(_a_slot_is_free, timeout=5, what="a free slot")
    assert time.monotonic() - started < 2.5


@pytest.mark.cluster
async def test_it_renews_the_lease_of_a_live_stream(member, tenant, settings):
    settings.SSE_SLOT_TTL_SECONDS = 0.6
    streams = Streams(member)
    await streams.open(10)
    store = slot_store()
    probe = uuid.uuid4().hex
    # Three lease lengths later the live streams still hold every slot.
    deadline = time.monotonic() + 1.8
    while time.monotonic() < deadline:
        assert not await store.acquire([f"tenant:{tenant.pk}"], probe)
        await asyncio.sleep(0.1)
    await streams.close_all()


# --- through the streams: in-process, and real servers --------------------------------------


async def _connect_in_process(headers) -> tuple[int, dict, object]:
    stream = await open_stream("/api/v1/stream", headers=headers)
    communicator = stream.communicator
    if stream.status != 200:
        body = b""
        while True:
            message = await communicator.receive_output(timeout=10)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await communicator.wait(timeout=5)
        return stream.status, {"body": body}, None
    return stream.status, {}, stream


@pytest.mark.usefixtures("home_loop")
async def test_it_opens_exactly_10_of_50_concurrent_streams(member, tenant):
    headers = await database_sync_to_async(session_headers)(member)
    answers = await asyncio.gather(*(_connect_in_process(headers) for _ in range(50)))
    statuses = Counter(status for status, _, _ in answers)
    assert statuses == {200: 10, 429: 40}
    refusal = next(extra for status, extra, _ in answers if status == 429)
    assert json.loads(refusal["body"])["status"] == 429
    open_streams = [stream for _, _, stream in answers if stream is not None]

    # One client leaves: its slot is free again within 2 s.
    await open_streams.pop().close()
    left_at = time.monotonic()
    again = await _first_admitted(headers, within=2.0)
    assert time.monotonic() - left_at < 2.0
    open_streams.append(again)
    for stream in open_streams:
        await stream.close()
    assert await _held(f"tenant:{tenant.pk}") == 0


async def _first_admitted(headers, within: float):
    """Connect until admitted (a refusal is immediate), for at most `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status, _, stream = await _connect_in_process(headers)
        if status == 200:
            return stream
    raise AssertionError(f"no slot came back within {within} s")


async def _open_real(client: httpx.AsyncClient, url: str):
    response = await client.send(client.build_request("GET", url), stream=True)
    if response.status_code != 200:
        await response.aread()
        await response.aclose()
    return response


@pytest.mark.slow
async def test_it_holds_the_limit_across_real_servers(member, tmp_path, cluster_mode):
    """50 concurrent connects, spread over two servers in cluster mode (one when embedded)."""
    env = {"SSE_MAX_CONNECTIONS_PER_TENANT": "10", "SSE_LIMIT_KEY_PREFIX": f"test:{uuid.uuid4()}"}
    cookies = await database_sync_to_async(session_cookie)(member)
    with contextlib.ExitStack() as servers:
        logs = [tmp_path / f"server{i}.log" for i in range(2 if cluster_mode else 1)]
        urls = [
            servers.enter_context(serve("--no-runner", log_path=log, **env))[1] + "/api/v1/stream"
            for log in logs
        ]
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
        async with httpx.AsyncClient(cookies=cookies, timeout=20, limits=limits) as client:
            responses = await asyncio.gather(
                *(_open_real(client, urls[i % len(urls)]) for i in range(50))
            )
            statuses = Counter(r.status_code for r in responses)
            assert statuses == {200: 10, 429: 40}, statuses
            refused = next(r for r in responses if r.status_code == 429)
            assert refused.headers["content-type"] == "application/problem+json"
            assert int(refused.headers["retry-after"]) > 0
            admitted = [r for r in responses if r.status_code == 200]
            # A client goes away (its TCP connection closes): the slot is back within 2 s.
            await admitted.pop().aclose()
            left_at = time.monotonic()
            while (again := await _open_real(client, urls[-1])).status_code != 200:
                assert time.monotonic() - left_at < 2.0, "the slot did not come back in 2 s"
            admitted.append(again)
            for response in admitted:
                await response.aclose()
            left_at = time.monotonic()
            back = []
            while len(back) < 10:
                response = await _open_real(client, urls[len(back) % len(urls)])
                if response.status_code == 200:
                    back.append(response)
                assert time.monotonic() - left_at < 2.0, f"{len(back)} of 10 slots came back"
            for response in back:
                await response.aclose()
