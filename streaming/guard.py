"""Revocation without polling per stream: one access re-check per principal per process.

    stream opens ─▶ guard.watch(principal, feed, execution_id | scope)
    access doorbell (rbac/signals.py, via the hub) naming the principal's user, or none
      ─▶ that principal's watch re-checks at once: one pass in the stream pool, whatever
         the number of its streams (principal valid? session valid? which watched
         executions still visible, and their state? the scope, for event streams)
    no doorbell for STREAM_ACCESS_RECHECK_SECONDS ─▶ the same re-check (the safety net for
         a lost doorbell, and for a lost final status: the verdict carries fresh states)
    a session's or API key's expiry time comes ─▶ the same re-check (no doorbell rings)
    ─▶ each stream gets the verdict in its inbox (`Control("access", verdict)`) and ends
       itself, or narrows what it sends, or catches up to the state.

A logout doorbell names the ended session: its streams end at once, without reading the
database (the session row may not be deleted yet when the bell rings).

A principal is (user, API key, session): streams opened with a key are not ended by the
user logging out elsewhere, and a session's streams end with that session.
"""

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.utils import timezone

from rbac.access import credentials_expire_at, session_still_valid, stream_scope, visible_among
from streaming.db import run_db
from streaming.live import Control, LiveFeed
from streaming.replay import OutputState, output_states, tenant_slugs

log = logging.getLogger(__name__)

# A session's streams are re-checked this long after its expiry time (clocks of the database
# and this process, and the row's second precision).
EXPIRY_MARGIN = 0.2
SESSION_ENDED = "Your session has ended (logged out, expired, or the password changed)."
CREDENTIALS_GONE = "Your credentials are no longer valid."


@dataclass(frozen=True)
class Principal:
    user_id: int
    api_key_id: int | None
    session_key: str | None

    @classmethod
    def of(cls, scope, user) -> "Principal":
        api_key = scope.get("api_key")
        session = scope.get("session") if api_key is None else None
        session_key = getattr(session, "session_key", None) if session is not None else None
        return cls(user.pk, api_key.pk if api_key is not None else None, session_key)


@dataclass(frozen=True)
class AccessVerdict:
    """A re-check's answer for every stream of one principal."""

    allowed: bool
    reason: str = ""
    visible: frozenset[str] = frozenset()
    states: dict[str, OutputState] = field(default_factory=dict)
    # For event streams: (StreamScope, tenant slugs by id), read once for all of them.
    scope: tuple[Any, dict[int, str]] | None = None

    def revoked(self, execution_id: str | None = None) -> str | None:
        """Why the stream (of `execution_id`, if any) must end; None if it may go on."""
        if not self.allowed:
            return self.reason
        if execution_id is not None and execution_id not in self.visible:
            return "This execution is no longer visible to you."
        return None


@dataclass(eq=False, slots=True)
class Watcher:
    feed: LiveFeed
    execution_id: str | None = None
    wants_scope: bool = False


def check_access(
    principal: Principal, user, api_key, execution_ids: frozenset[str], wants_scope: bool
) -> AccessVerdict:
    """The re-check (sync, in the stream pool): a handful of queries per principal."""
    if principal.session_key and not session_still_valid(principal.user_id, principal.session_key):
        return AccessVerdict(False, SESSION_ENDED)
    scope = None
    if wants_scope:
        stream = stream_scope(user, api_key=api_key)
        if stream is None:
            return AccessVerdict(False, CREDENTIALS_GONE)
        scope = (stream, tenant_slugs())
    visible = visible_among(user, execution_ids, api_key=api_key)
    if execution_ids and not visible and stream_scope(user, api_key=api_key) is None:
        return AccessVerdict(False, CREDENTIALS_GONE)
    return AccessVerdict(True, visible=visible, states=output_states(visible), scope=scope)


class PrincipalWatch:
    """The streams of one principal in this process, and the task that re-checks them."""

    def __init__(self, guard: "Guard", principal: Principal, user, api_key) -> None:
        self.guard = guard
        self.principal = principal
        self.user = user
        self.api_key = api_key
        self.watchers: set[Watcher] = set()
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None
        # When the session or API key ends by itself (time.monotonic()): an expiry rings no
        # doorbell, so the watch re-checks then rather than at the next safety re-check.
        self.expires_at: float | None = None

    def start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name=f"access {self.principal}")

    async def _run(self) -> None:
        try:
            await self._read_expiry()
            while self.watchers:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._until_recheck()):
                        await self.wake.wait()
                self.wake.clear()
                if self.watchers:
                    await self.recheck()
        finally:
            self.guard.forget(self)

    def _until_recheck(self) -> float:
        wait = settings.STREAM_ACCESS_RECHECK_SECONDS
        if self.expires_at is not None:
            wait = min(wait, max(0.0, self.expires_at - time.monotonic()) + EXPIRY_MARGIN)
        return wait

    async def _read_expiry(self) -> None:
        principal = self.principal
        try:
            ends = await run_db(
                credentials_expire_at,
                session_key=principal.session_key,
                api_key_id=principal.api_key_id,
            )
        except Exception:  # the database is away: the safety re-check still comes
            log.warning("reading the expiry of %s failed", principal, exc_info=True)
            return
        if ends is not None:
            self.expires_at = time.monotonic() + (ends - timezone.now()).total_seconds()

    async def recheck(self) -> None:
        await self._read_expiry()  # a session's moves on with its own activity
        watchers = list(self.watchers)
        ids = frozenset(w.execution_id for w in watchers if w.execution_id is not None)
        wants_scope = any(w.wants_scope for w in watchers)
        try:
            verdict = await run_db(
                check_access, self.principal, self.user, self.api_key, ids, wants_scope
            )
        except Exception:  # the database is away: keep streaming what was allowed, retry
            log.warning("access re-check failed for %s", self.principal, exc_info=True)
            return
        # Only the streams this check was about: one that joined while it ran was not in
        # `ids`, and its own opening check already let it in.
        self.tell(verdict, [w for w in watchers if w in self.watchers])

    def tell(self, verdict: AccessVerdict, watchers: list[Watcher] | None = None) -> None:
        control = Control("access", verdict)  # one for all: they share its reads
        for watcher in list(self.watchers) if watchers is None else watchers:
            watcher.feed.inbox.control(control)


class Guard:
    """The access watches of one process (one per event loop, owned by the hub)."""

    def __init__(self) -> None:
        self.watches: dict[Principal, PrincipalWatch] = {}

    def watch(self, principal: Principal, user, api_key, watcher: Watcher) -> None:
        watch = self.watches.get(principal)
        if watch is None:
            watch = self.watches[principal] = PrincipalWatch(self, principal, user, api_key)
        watch.watchers.add(watcher)
        watch.start()

    def unwatch(self, principal: Principal, watcher: Watcher) -> None:
        watch = self.watches.get(principal)
        if watch is not None:
            watch.watchers.discard(watcher)
            if not watch.watchers:
                watch.wake.set()  # its task ends (and forgets it)

    def forget(self, watch: PrincipalWatch) -> None:
        if self.watches.get(watch.principal) is watch and not watch.watchers:
            del self.watches[watch.principal]
        elif watch.watchers:  # a stream joined while this (ending) task was its task
            watch.task = None
            watch.start()

    def on_access_message(self, message: dict) -> None:
        """An access doorbell: re-check the principals it names (all, if it names none)."""
        user_ids = message.get("user_ids")
        ended = message.get("session_key")
        for principal, watch in list(self.watches.items()):
            if ended and principal.session_key == ended:
                watch.tell(AccessVerdict(False, SESSION_ENDED))
            elif user_ids is None or principal.user_id in user_ids:
                watch.wake.set()

    def recheck_all(self) -> None:
        for watch in self.watches.values():
            watch.wake.set()
