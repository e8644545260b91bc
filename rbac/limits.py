"""Concurrent stream connections per tenant: at most SSE_MAX_CONNECTIONS_PER_TENANT.

A stream holds one slot in every tenant its caller counts against (`stream_tenant_ids`)
from before its first byte until the client leaves. Taking the slots is atomic: in cluster
mode (REDIS_URL) one Lua script checks and takes them in every tenant's sorted set at once,
so all web processes share the limit; in embedded mode a lock guards a dict in the process.

A Redis slot is a lease: its score is its expiry time, renewed every third of
SSE_SLOT_TTL_SECONDS while the stream lives, and purged by the next acquire once it lapses,
so a web process that crashed without releasing its slots frees them after the TTL.
"""

import asyncio
import logging
import threading
import uuid
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from channels.db import database_sync_to_async
from django.conf import settings

from rbac.access import stream_tenant_ids

log = logging.getLogger(__name__)

ALL_TENANTS_BUCKET = "all"

# KEYS: one sorted set per bucket. ARGV: slot id, limit, lease in ms.
# Returns 1 when the slot was taken in every bucket, 0 (and takes nothing) otherwise.
ACQUIRE_LUA = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local limit = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
for _, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
  if redis.call('ZCARD', key) >= limit then
    return 0
  end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now_ms + lease, ARGV[1])
  redis.call('PEXPIRE', key, lease)
end
return 1
"""

# Renews a held slot's lease (re-adding it if a stall let it lapse: the stream is real).
RENEW_LUA = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local lease = tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now_ms + lease, ARGV[1])
  redis.call('PEXPIRE', key, lease)
end
return 1
"""


class TooManyStreams(Exception):
    """The caller's tenant already has the maximum of open streams: answer 429."""

    def __init__(self, retry_after: int, limit: int):
        super().__init__(f"too many concurrent streams (limit {limit} per tenant)")
        self.retry_after = retry_after
        self.limit = limit

    def problem(self) -> dict:
        """The RFC 9457 body for the 429 answer (send `Retry-After: retry_after` with it)."""
        return {
            "type": "about:blank",
            "title": "Too Many Requests",
            "status": 429,
            "detail": (
                f"Your tenant already has {self.limit} open streams, the most allowed at once. "
                f"Close one, or retry in {self.retry_after} seconds."
            ),
        }


def _limit() -> int:
    return settings.SSE_MAX_CONNECTIONS_PER_TENANT


class LocalSlots:
    """Embedded mode: slots in this process; check-and-take happens under one lock."""

    def __init__(self) -> None:
        self._held: defaultdict[str, set[str]] = defaultdict(set)
        self._lock = threading.Lock()

    async def acquire(self, buckets: list[str], slot: str) -> bool:
        with self._lock:
            if any(len(self._held[bucket]) >= _limit() for bucket in buckets):
                return False
            for bucket in buckets:
                self._held[bucket].add(slot)
            return True

    async def renew(self, buckets: list[str], slot: str) -> None:
        """In-process slots cannot be orphaned by a crash: nothing to renew."""

    async def release(self, buckets: list[str], slot: str) -> None:
        with self._lock:
            for bucket in buckets:
                self._held[bucket].discard(slot)
                if not self._held[bucket]:
                    del self._held[bucket]

    def held(self, bucket: str) -> int:
        return len(self._held.get(bucket, ()))


class RedisSlots:
    """Cluster mode: slots in Redis sorted sets, shared by every web process."""

    def __init__(self, url: str) -> None:
        self.url = url
        # redis.asyncio clients belong to the event loop that made them.
        self._clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _scripts(self):
        loop = asyncio.get_running_loop()
        if loop not in self._clients:
            import redis.asyncio as redis

            client = redis.Redis.from_url(self.url)
            self._clients[loop] = (
                client,
                client.register_script(ACQUIRE_LUA),
                client.register_script(RENEW_LUA),
            )
        return self._clients[loop]

    def _keys(self, buckets: list[str]) -> list[str]:
        return [f"{settings.SSE_LIMIT_KEY_PREFIX}:{bucket}" for bucket in buckets]

    @staticmethod
    def _lease_ms() -> int:
        return int(settings.SSE_SLOT_TTL_SECONDS * 1000)

    async def acquire(self, buckets: list[str], slot: str) -> bool:
        _, acquire, _ = self._scripts()
        taken = await acquire(keys=self._keys(buckets), args=[slot, _limit(), self._lease_ms()])
        return bool(taken)

    async def renew(self, buckets: list[str], slot: str) -> None:
        _, _, renew = self._scripts()
        await renew(keys=self._keys(buckets), args=[slot, self._lease_ms()])

    async def release(self, buckets: list[str], slot: str) -> None:
        client, _, _ = self._scripts()
        async with client.pipeline(transaction=True) as pipe:
            for key in self._keys(buckets):
                pipe.zrem(key, slot)
            await pipe.execute()

    async def held(self, bucket: str) -> int:
        client, _, _ = self._scripts()
        return await client.zcard(self._keys([bucket])[0])


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


def stream_buckets(user) -> list[str]:
    """The limit buckets a stream of `user` takes a slot in (sorted: a stable key order)."""
    tenant_ids = stream_tenant_ids(user)
    if None in tenant_ids:
        return [ALL_TENANTS_BUCKET]
    if not tenant_ids:
        # No tenant at all (sees nothing): still limited, on their own.
        who = user.pk if user.is_authenticated else "anonymous"
        return [f"user:{who}"]
    return sorted(f"tenant:{tenant_id}" for tenant_id in tenant_ids)


async def _keep_renewed(store, buckets: list[str], slot: str) -> None:
    while True:
        await asyncio.sleep(settings.SSE_SLOT_TTL_SECONDS / 3)
        try:
            await store.renew(buckets, slot)
        except Exception:  # a Redis blip: the lease lasts two more renewals
            log.warning("could not renew stream slot", exc_info=True)


@asynccontextmanager
async def acquire_stream_slot(scope, user) -> AsyncIterator[None]:
    """Hold one stream slot for `user`'s tenant(s) for the duration of the `async with`.

    Raises TooManyStreams (answer 429 with `Retry-After`) when any of the caller's tenants
    is full. Superusers are limited too unless SSE_LIMIT_EXEMPT_SUPERUSERS is set. The slot
    is released on exit, including cancellation, so leave the block as soon as the client
    disconnects. `scope` is the connection's ASGI scope (for the log line of a refusal).
    """
    if user.is_superuser and settings.SSE_LIMIT_EXEMPT_SUPERUSERS:
        yield
        return
    buckets = await database_sync_to_async(stream_buckets)(user)
    store = slot_store()
    slot = uuid.uuid4().hex
    try:
        taken = await store.acquire(buckets, slot)
    except Exception:  # Redis down: streams still work from the database, unlimited
        log.warning("stream limit store unavailable; not limiting", exc_info=True)
        yield
        return
    if not taken:
        log.info("429 for %s on %s: %s full", user.pk, scope.get("path"), ",".join(buckets))
        raise TooManyStreams(retry_after=settings.SSE_RETRY_AFTER_SECONDS, limit=_limit())
    renewer = asyncio.create_task(_keep_renewed(store, buckets, slot))
    try:
        yield
    finally:
        renewer.cancel()
        await _release(store, buckets, slot)


async def _release(store, buckets: list[str], slot: str) -> None:
    # Shielded: a stream cancelled while releasing must still give its slot back.
    release = asyncio.ensure_future(store.release(buckets, slot))
    try:
        await asyncio.shield(release)
    except asyncio.CancelledError:
        await release
        raise
    except Exception:  # Redis blip: the lease lapses after SSE_SLOT_TTL_SECONDS
        log.warning("could not release stream slot", exc_info=True)
