"""Concurrent stream limits that nobody can use against somebody else.

A stream holds one slot in each of its buckets from before its first byte until the client
leaves:

    principal   `key:<id>` when the stream authenticated with an API key, else `user:<pk>`;
                at most STREAM_MAX_CONNECTIONS_PER_PRINCIPAL. Superusers too, each in their own.
    tenant      `tenant:<id>` for every tenant the user holds a role in (a TenantGrant, to
                them or to a group of theirs); `tenant:*` for holders of a `*` grant;
                at most STREAM_MAX_CONNECTIONS_PER_TENANT.

Why this shape: the tenant limit caps what one tenant's people can hold together, so only
the tenant's own role holders count against it. Someone who sees a tenant through a single
object permission, a superuser, or an outsider counts only against their own principal
bucket, so they cannot lock the tenant's members out (issue 12: one shared execution was
enough to fill a tenant with 10 streams). The principal limit is below the tenant limit
(defaults 5 and 10), so no single member or key fills their tenant alone. Superusers and `*`
grant holders used to share one "all" bucket that a `*` viewer could fill; now superusers
count only in their own bucket, and `*` holders share `tenant:*` among themselves only.

Taking the slots is atomic: in cluster mode (REDIS_URL) one Lua script checks and takes them
in every bucket's sorted set at once, so all web processes share the limits; in embedded mode
a lock guards a dict in the process. A Redis slot belongs to its web process, which holds a
lease key (`<prefix>:proc:<id>`, STREAM_SLOT_TTL_SECONDS) renewed every third of that by one
task per process, however many streams it serves: nothing per stream per second. An acquire
first drops the slots of processes whose lease has lapsed, so a crashed web process frees
its slots after the TTL. (A process stalled longer than the TTL loses its slots; its open
streams go on, uncounted, until they end.)

Redis connections (issue 10, item 4): one BlockingConnectionPool per event loop, and at most
STREAM_LIMIT_REDIS_POOL_SIZE limiter commands in flight per process (a semaphore in front of
the pool), so load waits in line instead of raising MaxConnectionsError:

    no turn within STREAM_LIMIT_REDIS_WAIT_SECONDS  → TooManyStreams (429 + Retry-After):
        the limiter is saturated; shedding load keeps the limits true under any burst.
    Redis unreachable or failing                      → the stream opens unlimited, logged:
        streams read the database, not Redis, so an outage of the limiter store must not
        turn into an outage of every stream; limits are about fairness, not access.
"""

import asyncio
import logging
import threading
import uuid
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from channels.db import database_sync_to_async
from django.conf import settings
from django.db.models import Q

from executions.problems import Problem, problem_body
from rbac.models import TenantGrant

log = logging.getLogger(__name__)

ALL_TENANTS = "*"
# A Redis that accepts no connection within this long is treated as unreachable: a stream
# start waits at most this for the limiter, never the OS's TCP timeout (minutes).
REDIS_CONNECT_TIMEOUT_SECONDS = 2.0
# A command that gets no answer within this long fails (the stream then opens unlimited).
REDIS_COMMAND_TIMEOUT_SECONDS = 5.0

# KEYS: one sorted set per bucket. ARGV: this process's id, the slot id, the lease in ms,
# the key prefix of process leases, then one limit per key. Members are `<process>|<slot>`.
# Returns 0 when the slot was taken in every bucket; else the (1-based) index of a full
# bucket, and takes nothing. Buckets are small (their limit), so the purge loop is short.
ACQUIRE_LUA = """
local process, slot, lease, leases = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
for i, key in ipairs(KEYS) do
  for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    local owner = string.match(member, '^([^|]+)|')
    if owner == nil or redis.call('EXISTS', leases .. owner) == 0 then
      redis.call('ZREM', key, member)
    end
  end
  if redis.call('ZCARD', key) >= tonumber(ARGV[4 + i]) then
    return i
  end
end
redis.call('SET', leases .. process, '1', 'PX', lease)
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, 0, process .. '|' .. slot)
  redis.call('PEXPIRE', key, lease * 10)
end
return 0
"""


@dataclass(frozen=True)
class Bucket:
    name: str  # `user:<pk>`, `key:<id>`, `tenant:<id>`, `tenant:*`
    limit: int

    @property
    def is_tenant(self) -> bool:
        return self.name.startswith("tenant:")


class TooManyStreams(Exception):
    """A bucket of the caller is full (or the limiter is saturated): answer 429."""

    def __init__(self, retry_after: int, limit: int, bucket: str = "", reason: str = ""):
        super().__init__(f"too many concurrent streams ({bucket or 'limit'} {limit})")
        self.retry_after = retry_after
        self.limit = limit
        self.bucket = bucket
        self.reason = reason

    @property
    def detail(self) -> str:
        if self.reason:
            return f"{self.reason} Retry in {self.retry_after} seconds."
        who = "Your tenant already has" if self.bucket.startswith("tenant:") else "You have"
        return (
            f"{who} {self.limit} open streams, the most allowed at once. "
            f"Close one, or retry in {self.retry_after} seconds."
        )

    def as_problem(self) -> Problem:
        """The transport-neutral 429 (with `Retry-After`)."""
        retry = str(self.retry_after).encode()
        return Problem(429, self.detail, headers=[(b"retry-after", retry)])

    def problem(self) -> dict:
        """The RFC 9457 body for the 429 answer (send `Retry-After: retry_after` with it)."""
        return problem_body(429, self.detail, instance="")


def _principal_limit() -> int:
    return settings.STREAM_MAX_CONNECTIONS_PER_PRINCIPAL


def _tenant_limit() -> int:
    return settings.STREAM_MAX_CONNECTIONS_PER_TENANT


# --- buckets -----------------------------------------------------------------------------


def _granted_tenant_ids(user) -> set[int | None]:
    """Tenants `user` holds a role in, directly or through a group; None is a `*` grant."""
    grants = TenantGrant.objects.filter(Q(user_id=user.pk) | Q(group__user__id=user.pk))
    return set(grants.values_list("tenant_id", flat=True).distinct())


def principal_bucket(user, api_key=None) -> Bucket:
    if api_key is not None:
        return Bucket(f"key:{api_key.pk}", _principal_limit())
    who = user.pk if user.is_authenticated else "anonymous"
    return Bucket(f"user:{who}", _principal_limit())


def buckets_for(user, api_key=None) -> list[Bucket]:
    """Every bucket a stream of `user` (authenticated by `api_key`, if any) takes a slot in,
    sorted by name (a stable key order for the script)."""
    buckets = [principal_bucket(user, api_key)]
    if user.is_authenticated and not user.is_superuser:
        buckets += [
            Bucket(f"tenant:{ALL_TENANTS if tenant_id is None else tenant_id}", _tenant_limit())
            for tenant_id in _granted_tenant_ids(user)
        ]
    return sorted(buckets, key=lambda bucket: bucket.name)


def stream_buckets(user, api_key=None) -> list[str]:
    """The names of `buckets_for(user, api_key)`."""
    return [bucket.name for bucket in buckets_for(user, api_key)]


# --- stores ------------------------------------------------------------------------------


class LocalSlots:
    """Embedded mode: slots in this process; check-and-take happens under one lock."""

    def __init__(self) -> None:
        self._held: defaultdict[str, set[str]] = defaultdict(set)
        self._lock = threading.Lock()

    async def acquire(self, buckets: list[Bucket], slot: str) -> Bucket | None:
        """None when taken in every bucket; else the full bucket (nothing taken)."""
        with self._lock:
            for bucket in buckets:
                if len(self._held[bucket.name]) >= bucket.limit:
                    return bucket
            for bucket in buckets:
                self._held[bucket.name].add(slot)
            return None

    def hold(self) -> None:
        """In-process slots cannot be orphaned by a crash: no lease to keep."""

    def unhold(self) -> None:
        pass

    async def release(self, buckets: list[Bucket], slot: str) -> None:
        with self._lock:
            for bucket in buckets:
                self._held[bucket.name].discard(slot)
                if not self._held[bucket.name]:
                    del self._held[bucket.name]

    def held(self, name: str) -> int:
        return len(self._held.get(name, ()))


class LimiterBusy(Exception):
    """No Redis turn within STREAM_LIMIT_REDIS_WAIT_SECONDS."""


class _LoopClient:
    """One event loop's Redis client, script, turn semaphore, and process lease."""

    def __init__(self, url: str, pool_size: int) -> None:
        import redis.asyncio as redis

        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=settings.STREAM_LIMIT_REDIS_WAIT_SECONDS,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS,
            socket_timeout=REDIS_COMMAND_TIMEOUT_SECONDS,
        )
        self.client = redis.Redis(connection_pool=pool)
        self.acquire = self.client.register_script(ACQUIRE_LUA)
        # The pool never has to refuse: at most pool_size commands are in flight.
        self.turns = asyncio.Semaphore(pool_size)
        self.process = uuid.uuid4().hex  # the owner of this loop's slots
        self.held = 0  # slots taken through acquire_stream_slot and not yet released
        self.renewer: asyncio.Task | None = None


class RedisSlots:
    """Cluster mode: slots in Redis sorted sets, shared by every web process."""

    def __init__(self, url: str) -> None:
        self.url = url
        # redis.asyncio clients belong to the event loop that made them.
        self._clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _loop_client(self) -> _LoopClient:
        loop = asyncio.get_running_loop()
        if loop not in self._clients:
            self._clients[loop] = _LoopClient(self.url, settings.STREAM_LIMIT_REDIS_POOL_SIZE)
        return self._clients[loop]

    @asynccontextmanager
    async def _turn(self, *, wait: float | None) -> AsyncIterator[_LoopClient]:
        """A place in line for one command; LimiterBusy if none comes within `wait` s."""
        loop_client = self._loop_client()
        try:
            async with asyncio.timeout(wait):
                await loop_client.turns.acquire()
        except TimeoutError:
            raise LimiterBusy() from None
        try:
            yield loop_client
        finally:
            loop_client.turns.release()

    def _keys(self, buckets: list[Bucket]) -> list[str]:
        return [f"{settings.STREAM_LIMIT_KEY_PREFIX}:{bucket.name}" for bucket in buckets]

    @staticmethod
    def _lease_ms() -> int:
        return int(settings.STREAM_SLOT_TTL_SECONDS * 1000)

    def _member(self, slot: str) -> str:
        return f"{self._loop_client().process}|{slot}"

    def _lease_key(self) -> str:
        return f"{settings.STREAM_LIMIT_KEY_PREFIX}:proc:{self._loop_client().process}"

    async def acquire(self, buckets: list[Bucket], slot: str) -> Bucket | None:
        """None when taken in every bucket; else the full bucket (nothing taken)."""
        loop_client = self._loop_client()
        leases = f"{settings.STREAM_LIMIT_KEY_PREFIX}:proc:"
        args: list[str | int] = [loop_client.process, slot, self._lease_ms(), leases]
        args += [bucket.limit for bucket in buckets]
        async with self._turn(wait=settings.STREAM_LIMIT_REDIS_WAIT_SECONDS) as redis:
            full = int(await redis.acquire(keys=self._keys(buckets), args=args))
        return buckets[full - 1] if full else None

    def hold(self) -> None:
        """A stream holds its slots: this process's lease is renewed while any does."""
        loop_client = self._loop_client()
        loop_client.held += 1
        if loop_client.renewer is None or loop_client.renewer.done():
            loop_client.renewer = asyncio.create_task(self._renew_lease(loop_client))

    def unhold(self) -> None:
        loop_client = self._loop_client()
        loop_client.held -= 1
        if loop_client.held <= 0 and loop_client.renewer is not None:
            loop_client.renewer.cancel()  # no slot left to keep: let the lease lapse
            loop_client.renewer = None

    async def _renew_lease(self, loop_client: _LoopClient) -> None:
        key = self._lease_key()
        while True:
            await asyncio.sleep(settings.STREAM_SLOT_TTL_SECONDS / 3)
            try:
                async with self._turn(wait=settings.STREAM_LIMIT_REDIS_WAIT_SECONDS) as redis:
                    await redis.client.set(key, "1", px=self._lease_ms())
            except Exception:  # a Redis blip or a busy limiter: the lease lasts two more
                log.warning("could not renew this process's stream-slot lease", exc_info=True)

    async def release(self, buckets: list[Bucket], slot: str) -> None:
        # A release waits its turn however long: a slot must never be left taken.
        member = self._member(slot)
        async with self._turn(wait=None) as redis, redis.client.pipeline() as pipe:
            for key in self._keys(buckets):
                pipe.zrem(key, member)
            await pipe.execute()

    async def held(self, name: str) -> int:
        async with self._turn(wait=None) as redis:
            return await redis.client.zcard(f"{settings.STREAM_LIMIT_KEY_PREFIX}:{name}")


_local = LocalSlots()
_redis: RedisSlots | None = None


def slot_store() -> LocalSlots | RedisSlots:
    """The store for this mode (Redis when REDIS_URL is set)."""
    global _redis
    if not settings.REDIS_URL:
        return _local
    if _redis is None or _redis.url != settings.REDIS_URL:
        _redis = RedisSlots(settings.REDIS_URL)
    return _redis


# --- holding a slot ----------------------------------------------------------------------


def _busy() -> TooManyStreams:
    return TooManyStreams(
        retry_after=settings.STREAM_RETRY_AFTER_SECONDS,
        limit=0,
        reason="The stream limiter is saturated.",
    )


@asynccontextmanager
async def acquire_stream_slot(scope, user) -> AsyncIterator[None]:
    """Hold one slot in each of the caller's buckets for the duration of the `async with`.

    The principal is `scope["api_key"]` when set, else `user`. Raises TooManyStreams (answer
    429 with `Retry-After`; `as_problem()` builds it) when a bucket is full or the limiter is
    saturated. Superusers are limited in their own bucket unless STREAM_LIMIT_EXEMPT_SUPERUSERS.
    The slot is released on exit, including cancellation, so leave the block as soon as the
    client disconnects. If the limiter's Redis is unreachable, the stream opens unlimited.
    """
    if user.is_superuser and settings.STREAM_LIMIT_EXEMPT_SUPERUSERS:
        yield
        return
    buckets = await database_sync_to_async(buckets_for)(user, scope.get("api_key"))
    store = slot_store()
    slot = uuid.uuid4().hex
    try:
        full = await store.acquire(buckets, slot)
    except LimiterBusy:
        log.warning("429 for %s on %s: stream limiter saturated", user.pk, scope.get("path"))
        raise _busy() from None
    except Exception:  # Redis down: streams still work from the database, unlimited
        log.warning("stream limit store unavailable; not limiting", exc_info=True)
        yield
        return
    if full is not None:
        log.info("429 for %s on %s: %s full", user.pk, scope.get("path"), full.name)
        raise TooManyStreams(settings.STREAM_RETRY_AFTER_SECONDS, full.limit, full.name)
    store.hold()
    try:
        yield
    finally:
        store.unhold()
        await _release(store, buckets, slot)


async def _release(store, buckets: list[Bucket], slot: str) -> None:
    # Shielded: a stream cancelled while releasing must still give its slot back.
    release = asyncio.ensure_future(store.release(buckets, slot))
    try:
        await asyncio.shield(release)
    except asyncio.CancelledError:
        await release
        raise
    except Exception:  # Redis blip: the lease lapses after STREAM_SLOT_TTL_SECONDS
        log.warning("could not release stream slot", exc_info=True)
