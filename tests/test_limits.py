"""Stream limits: per principal and per tenant (role holders only), atomic, released on leave,
shared through Redis, and never a 500 when Redis is busy or gone."""

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter

import httpx
import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from guardian.shortcuts import assign_perm

from executions import services
from rbac import limits
from rbac.limits import TooManyStreams, acquire_stream_slot, slot_store
from rbac.models import ApiKey, Role, TenantGrant
from tests.rbac_helpers import (
    open_stream,
    session_headers,
)
from tests.server_helpers import serve, session_cookie
from tests.streaming_helpers import RECEIVE_SECONDS, eventually

pytestmark = pytest.mark.django_db(transaction=True)

SCOPE = {"type": "http", "path": "/api/v1/stream"}


PRINCIPAL_LIMIT = 4
TENANT_LIMIT = 10
# A released slot is free at once; this bound only stops a broken release hanging the test
# (a starved server process may take seconds to see a connection close).
SLOT_BACK_SECONDS = 60


@pytest.fixture(autouse=True)
def _own_limits(settings):
    """Limits of 4 and 10 and, in cluster mode, Redis keys no other test run shares."""
    settings.STREAM_MAX_CONNECTIONS_PER_PRINCIPAL = PRINCIPAL_LIMIT
    settings.STREAM_MAX_CONNECTIONS_PER_TENANT = TENANT_LIMIT
    settings.STREAM_LIMIT_KEY_PREFIX = f"test:{uuid.uuid4().hex}"
    yield
    # A store built with a test's small pool must not outlive it, failed or not.
    limits._redis = None


def viewer(name: str, tenant) -> object:
    user = get_user_model().objects.create_user(name)
    TenantGrant.objects.create(user=user, tenant=tenant, role=Role.VIEWER)
    return user


async def _held(bucket: str) -> int:
    held = slot_store().held(bucket)
    return await held if asyncio.iscoroutine(held) else held


class Streams:
    """Opens streams that hold their slot until `close_all`."""

    def __init__(self, user, api_key=None):
        self.user = user
        self.scope = {**SCOPE, "api_key": api_key}
        self.release = asyncio.Event()
        self.opened = 0
        self.refused: list[TooManyStreams] = []
        self.tasks: list[asyncio.Task] = []

    async def _stream(self, entered: asyncio.Event) -> None:
        try:
            async with acquire_stream_slot(self.scope, self.user):
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
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in entered)), RECEIVE_SECONDS)

    async def close_all(self) -> None:
        self.release.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), RECEIVE_SECONDS)


def buckets(user, api_key=None) -> list[str]:
    return limits.stream_buckets(user, api_key)


async def _is(bucket: str, count: int) -> bool:
    return await _held(bucket) == count


# --- buckets --------------------------------------------------------------------------------


def test_it_puts_a_role_holder_in_their_own_bucket_and_their_tenants(member, tenant):
    assert buckets(member) == [f"tenant:{tenant.pk}", f"user:{member.pk}"]


def test_it_counts_group_grants_as_role_holding(db, tenant):
    user = get_user_model().objects.create_user("grouped")
    group = Group.objects.create(name="ops")
    user.groups.add(group)
    TenantGrant.objects.create(group=group, tenant=tenant, role=Role.OPERATOR)
    assert buckets(user) == [f"tenant:{tenant.pk}", f"user:{user.pk}"]


def test_it_keeps_object_permission_holders_out_of_the_tenant_bucket(db, actions, tenant):
    shared = services.create_execution(actions["core.local"], {"cmd": "true"}, tenant=tenant)
    guest = get_user_model().objects.create_user("guest")
    assign_perm("executions.view_execution", guest, shared)
    assert buckets(guest) == [f"user:{guest.pk}"]


def test_it_gives_each_superuser_their_own_bucket(superuser):
    other = get_user_model().objects.create_superuser("root2")
    assert buckets(superuser) == [f"user:{superuser.pk}"]
    assert buckets(other) == [f"user:{other.pk}"]


def test_it_puts_star_viewers_in_a_bucket_of_their_own_kind(db):
    star = get_user_model().objects.create_user("star")
    TenantGrant.objects.create(user=star, tenant=None, role=Role.VIEWER)
    assert buckets(star) == ["tenant:*", f"user:{star.pk}"]


def test_it_makes_an_api_key_its_own_principal(member, tenant):
    key, _ = ApiKey.issue(member, name="ci")
    assert buckets(member, key) == [f"key:{key.pk}", f"tenant:{tenant.pk}"]


# --- counting -------------------------------------------------------------------------------


async def test_it_lets_exactly_the_principal_limit_in_out_of_50_concurrent_connects(member, tenant):
    streams = Streams(member)
    await streams.open(50)
    assert streams.opened == PRINCIPAL_LIMIT
    assert len(streams.refused) == 50 - PRINCIPAL_LIMIT
    assert await _held(f"user:{member.pk}") == PRINCIPAL_LIMIT
    assert await _held(f"tenant:{tenant.pk}") == PRINCIPAL_LIMIT
    await streams.close_all()
    assert await _held(f"tenant:{tenant.pk}") == 0


async def test_it_caps_a_tenants_role_holders_together(tenant):
    users = [await database_sync_to_async(viewer)(f"v{i}", tenant) for i in range(4)]
    groups = [Streams(user) for user in users]
    for streams in groups:
        await streams.open(PRINCIPAL_LIMIT)
    assert sum(streams.opened for streams in groups) == TENANT_LIMIT
    (refused, *_) = [r for streams in groups for r in streams.refused]
    assert refused.bucket == f"tenant:{tenant.pk}"
    assert "Your tenant already has 10 open streams" in refused.problem()["detail"]
    for streams in groups:
        await streams.close_all()


async def test_it_does_not_let_a_shared_execution_lock_the_tenant_out(member, actions, tenant):
    def guest_of_one_execution():
        shared = services.create_execution(actions["core.local"], {"cmd": "true"}, tenant=tenant)
        guests = [get_user_model().objects.create_user(f"guest{i}") for i in range(3)]
        for guest in guests:
            assign_perm("executions.view_execution", guest, shared)
        return guests

    guests = await database_sync_to_async(guest_of_one_execution)()
    outside = [Streams(guest) for guest in guests]
    for streams in outside:
        await streams.open(10)  # 12 streams on the tenant's execution, none in its bucket
    assert sum(streams.opened for streams in outside) == 3 * PRINCIPAL_LIMIT
    ours = Streams(member)
    await ours.open(PRINCIPAL_LIMIT)
    assert ours.opened == PRINCIPAL_LIMIT and not ours.refused
    for streams in (*outside, ours):
        await streams.close_all()


async def test_it_does_not_let_a_star_viewer_lock_out_superusers(superuser):
    def star_viewer():
        star = get_user_model().objects.create_user("star")
        TenantGrant.objects.create(user=star, tenant=None, role=Role.VIEWER)
        return star

    star = Streams(await database_sync_to_async(star_viewer)())
    await star.open(20)
    root = Streams(superuser)
    await root.open(PRINCIPAL_LIMIT)
    assert (star.opened, root.opened) == (PRINCIPAL_LIMIT, PRINCIPAL_LIMIT)
    await star.close_all()
    await root.close_all()


async def test_it_counts_each_api_key_apart_but_in_the_same_tenant(member, tenant):
    key, _ = await database_sync_to_async(ApiKey.issue)(member, name="ci")
    session, by_key = Streams(member), Streams(member, api_key=key)
    await session.open(10)
    await by_key.open(10)
    assert (session.opened, by_key.opened) == (PRINCIPAL_LIMIT, PRINCIPAL_LIMIT)
    assert await _held(f"tenant:{tenant.pk}") == 2 * PRINCIPAL_LIMIT
    await session.close_all()
    await by_key.close_all()


async def test_it_gives_slots_back_when_streams_end(member):
    streams = Streams(member)
    await streams.open(PRINCIPAL_LIMIT)
    await streams.close_all()
    again = Streams(member)
    await again.open(PRINCIPAL_LIMIT)
    assert again.opened == PRINCIPAL_LIMIT and not again.refused
    await again.close_all()


async def test_it_gives_a_slot_back_when_a_stream_is_cancelled(member, tenant):
    streams = Streams(member)
    await streams.open(PRINCIPAL_LIMIT)
    streams.tasks[0].cancel()
    await eventually(
        lambda: _is(f"tenant:{tenant.pk}", PRINCIPAL_LIMIT - 1), what="a slot given back"
    )
    late = Streams(member)
    await late.open(1)
    assert late.opened == 1
    await late.close_all()
    streams.tasks.pop(0)
    await streams.close_all()


async def test_it_answers_with_retry_after_and_a_problem(member, settings):
    settings.STREAM_MAX_CONNECTIONS_PER_PRINCIPAL = 1
    settings.STREAM_RETRY_AFTER_SECONDS = 7
    streams = Streams(member)
    await streams.open(2)
    (refused,) = streams.refused
    assert refused.retry_after == 7
    problem = refused.problem()
    assert problem["status"] == 429 and problem["title"] == "Too Many Requests"
    assert "You have 1 open streams" in problem["detail"]
    assert "retry in 7 seconds" in problem["detail"]
    assert (b"retry-after", b"7") in refused.as_problem().headers
    await streams.close_all()


async def test_it_limits_each_tenant_separately(member, outsider):
    ours, theirs = Streams(member), Streams(outsider)
    await ours.open(12)
    await theirs.open(12)
    assert (ours.opened, theirs.opened) == (PRINCIPAL_LIMIT, PRINCIPAL_LIMIT)
    await ours.close_all()
    await theirs.close_all()


async def test_it_limits_superusers_unless_exempted(superuser, settings):
    streams = Streams(superuser)
    await streams.open(11)
    assert streams.opened == PRINCIPAL_LIMIT
    await streams.close_all()
    settings.STREAM_LIMIT_EXEMPT_SUPERUSERS = True
    exempt = Streams(superuser)
    await exempt.open(20)
    assert exempt.opened == 20
    await exempt.close_all()


async def test_it_limits_users_who_see_nothing_on_their_own(db):
    lonely = await database_sync_to_async(get_user_model().objects.create_user)("lonely")
    streams = Streams(lonely)
    await streams.open(11)
    assert streams.opened == PRINCIPAL_LIMIT
    assert await database_sync_to_async(buckets)(lonely) == [f"user:{lonely.pk}"]
    await streams.close_all()


# --- Redis: leases, pools, outages -----------------------------------------------------------


def _bucket(name: str) -> list[limits.Bucket]:
    return [limits.Bucket(name, TENANT_LIMIT)]


async def _lease_ms_left(store) -> int:
    """What is left of this process's lease in Redis, in ms (-2: none)."""
    async with store._turn(wait=None) as redis:
        return await redis.client.pttl(store._lease_key())


async def _set_lease_ms_left(store, ms: int) -> None:
    async with store._turn(wait=None) as redis:
        await redis.client.pexpire(store._lease_key(), ms)


@pytest.mark.cluster
async def test_it_frees_slots_of_a_crashed_process_after_the_lease(member, tenant, settings):
    # Taken under a lease no stall of this process outlasts (with a short one, a stall between
    # two takes let the first lapse, and the bucket was never full).
    settings.STREAM_SLOT_TTL_SECONDS = 3600
    store = slot_store()
    bucket = _bucket(f"tenant:{tenant.pk}")
    # A process that took slots and died: nobody renews or releases them.
    for _ in range(TENANT_LIMIT):
        assert await store.acquire(bucket, uuid.uuid4().hex) is None
    assert await store.acquire(bucket, uuid.uuid4().hex) == bucket[0]
    # The lease is STREAM_SLOT_TTL_SECONDS long (less what a stall of a minute took of it) ...
    assert (3600 - 60) * 1000 < await _lease_ms_left(store) <= 3600 * 1000
    await _set_lease_ms_left(store, 500)  # ... and here it passes sooner than an hour

    async def _a_slot_is_free() -> bool:
        probe = uuid.uuid4().hex
        if await store.acquire(bucket, probe) is None:
            await store.release(bucket, probe)
            return True
        return False

    await eventually(_a_slot_is_free, what="a free slot after the lease")


@pytest.mark.cluster
async def test_it_renews_the_lease_of_a_live_stream(member, tenant, settings):
    """Watched on the lease itself, not on the clock: with a short lease, a stall of this
    process longer than the lease lapsed it (as it should) and failed the test."""
    settings.STREAM_SLOT_TTL_SECONDS = 1.5  # a renewal every 0.5 s
    streams = Streams(member)
    await streams.open(1)  # one take: a stall between two takes could let the first lapse
    assert streams.opened == 1
    store = slot_store()
    # The stream's slot belongs to this process's lease (members are `<process>|<slot>`).
    async with store._turn(wait=None) as redis:
        members = await redis.client.zrange(
            f"{settings.STREAM_LIMIT_KEY_PREFIX}:user:{member.pk}", 0, -1
        )
    process = store._lease_key().rsplit(":", 1)[1]
    assert [m.decode().split("|")[0] for m in members] == [process]
    for _ in range(3):  # renewed again and again, not once
        # Pushed an hour out: only a renewal (a SET with the 1.5 s lease) brings it back under.
        await _set_lease_ms_left(store, 3600 * 1000)
        await eventually(lambda: _lease_ms_left_at_most(store, 1500), what="a lease renewal")
    await streams.close_all()


async def _lease_ms_left_at_most(store, ms: int) -> bool:
    return 0 < await _lease_ms_left(store) <= ms


@pytest.mark.cluster
async def test_it_keeps_one_lease_per_process_not_one_per_stream(member, tenant, settings):
    settings.STREAM_MAX_CONNECTIONS_PER_PRINCIPAL = 50
    settings.STREAM_MAX_CONNECTIONS_PER_TENANT = 50
    streams = Streams(member)
    await streams.open(40)
    assert streams.opened == 40
    renewers = [t for t in asyncio.all_tasks() if t.get_coro().__name__ == "_renew_lease"]
    assert len(renewers) == 1  # one task, one Redis key, whatever the number of streams
    await streams.close_all()
    await eventually(
        lambda: not any(t.get_coro().__name__ == "_renew_lease" for t in asyncio.all_tasks()),
        what="the renewer to stop with the last stream",
    )


@pytest.mark.cluster
async def test_it_survives_500_concurrent_acquires_on_a_small_pool(tenant, settings):
    """A pool of 3 connections, 500 acquires at once: each waits its turn (no
    MaxConnectionsError, no other exception than TooManyStreams) and the limits hold."""
    settings.STREAM_LIMIT_REDIS_POOL_SIZE = 3
    settings.STREAM_LIMIT_REDIS_WAIT_SECONDS = 60
    limits._redis = None  # a store (and pool) built with these settings
    users = await database_sync_to_async(lambda: [viewer(f"crowd{i}", tenant) for i in range(50)])()
    crowd = [Streams(user) for user in users]
    await asyncio.gather(*(streams.open(10) for streams in crowd))
    opened = sum(streams.opened for streams in crowd)
    refused = [r for streams in crowd for r in streams.refused]
    assert opened == TENANT_LIMIT and len(refused) == 500 - TENANT_LIMIT
    assert all(isinstance(r, TooManyStreams) and not r.reason for r in refused)
    await asyncio.gather(*(streams.close_all() for streams in crowd))
    assert await _held(f"tenant:{tenant.pk}") == 0
    limits._redis = None


@pytest.mark.cluster
async def test_it_answers_429_when_the_limiter_is_saturated(member, settings):
    settings.STREAM_LIMIT_REDIS_POOL_SIZE = 1
    settings.STREAM_LIMIT_REDIS_WAIT_SECONDS = 0.01
    limits._redis = None
    store = slot_store()
    async with store._turn(wait=None):  # the only connection is taken
        streams = Streams(member)
        await streams.open(1)
    (refused,) = streams.refused
    assert refused.reason and "saturated" in refused.as_problem().detail
    limits._redis = None


async def test_it_opens_streams_unlimited_when_redis_is_unreachable(member, settings):
    """Runs in both modes: nothing listens on port 1."""
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    streams = Streams(member)
    await streams.open(PRINCIPAL_LIMIT + 2)
    assert streams.opened == PRINCIPAL_LIMIT + 2 and not streams.refused
    await streams.close_all()


# --- through the streams: in-process, and real servers --------------------------------------


async def _connect_in_process(headers) -> tuple[int, dict, object]:
    stream = await open_stream("/api/v1/stream", headers=headers)
    communicator = stream.communicator
    if stream.status != 200:
        body = b""
        while True:
            message = await communicator.receive_output(timeout=RECEIVE_SECONDS)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await communicator.wait(timeout=RECEIVE_SECONDS)
        return stream.status, {"body": body}, None
    return stream.status, {}, stream


@pytest.mark.usefixtures("home_loop")
async def test_it_opens_exactly_10_of_50_concurrent_streams(member, tenant, settings):
    settings.STREAM_MAX_CONNECTIONS_PER_PRINCIPAL = TENANT_LIMIT
    headers = await database_sync_to_async(session_headers)(member)
    answers = await asyncio.gather(*(_connect_in_process(headers) for _ in range(50)))
    statuses = Counter(status for status, _, _ in answers)
    assert statuses == {200: 10, 429: 40}
    refusal = next(extra for status, extra, _ in answers if status == 429)
    assert json.loads(refusal["body"])["status"] == 429
    open_streams = [stream for _, _, stream in answers if stream is not None]

    # One client leaves: its slot is free again (at once; generous on a busy machine).
    await open_streams.pop().close()
    again = await _first_admitted(headers, within=SLOT_BACK_SECONDS)
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
    env = {
        "STREAM_MAX_CONNECTIONS_PER_TENANT": "10",
        "STREAM_MAX_CONNECTIONS_PER_PRINCIPAL": "10",
        "STREAM_LIMIT_KEY_PREFIX": f"test:{uuid.uuid4()}",
    }
    cookies = await database_sync_to_async(session_cookie)(member)
    with contextlib.ExitStack() as servers:
        logs = [tmp_path / f"server{i}.log" for i in range(2 if cluster_mode else 1)]
        urls = [
            servers.enter_context(serve("--no-runner", log_path=log, **env))[1] + "/api/v1/stream"
            for log in logs
        ]
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
        async with httpx.AsyncClient(
            cookies=cookies, timeout=RECEIVE_SECONDS, limits=limits
        ) as client:
            responses = await asyncio.gather(
                *(_open_real(client, urls[i % len(urls)]) for i in range(50))
            )
            statuses = Counter(r.status_code for r in responses)
            assert statuses == {200: 10, 429: 40}, statuses
            refused = next(r for r in responses if r.status_code == 429)
            assert refused.headers["content-type"] == "application/problem+json"
            assert int(refused.headers["retry-after"]) > 0
            admitted = [r for r in responses if r.status_code == 200]
            # A client goes away (its TCP connection closes): the slot comes back.
            await admitted.pop().aclose()
            left_at = time.monotonic()
            while (again := await _open_real(client, urls[-1])).status_code != 200:
                assert time.monotonic() - left_at < SLOT_BACK_SECONDS, "the slot did not come back"
            admitted.append(again)
            for response in admitted:
                await response.aclose()
            left_at = time.monotonic()
            back = []
            while len(back) < 10:
                response = await _open_real(client, urls[len(back) % len(urls)])
                if response.status_code == 200:
                    back.append(response)
                assert time.monotonic() - left_at < SLOT_BACK_SECONDS, f"{len(back)} of 10 back"
            for response in back:
                await response.aclose()
