"""Lifecycle event ids as clients see them: opaque, so they tell nothing about other tenants.

Events get their ids from one sequence shared by every tenant, so raw ids would show a viewer
of one tenant how busy the others are (the gaps between its own events). On the wire (the
global stream's `id:` field, WebSocket `id`, `reset` and `lagged` data) each id is replaced by a
keyed permutation of it: a 4-round Feistel network over 52 bits (so the token stays an exact
integer in JavaScript) with HMAC-SHA256 of SECRET_KEY as the round function. Tokens are
integers as before, and `Last-Event-ID` takes them back; their order means nothing.

Token 0 keeps its meaning "before every event" (cycle-walking keeps the permutation off 0).
A token that decodes past the newest event (forged, or from another installation) gets a
`reset`, like one older than the log keeps.
"""

import hashlib
import hmac
from functools import cache

from django.conf import settings

BITS = 52  # JavaScript's Number holds integers exactly up to 2**53
HALF = BITS // 2
MASK = (1 << HALF) - 1
ROUNDS = 4
LIMIT = 1 << BITS


@cache
def _key(secret: str) -> bytes:
    return hashlib.sha256(b"tailgate.event-ids:" + secret.encode()).digest()


def _round(value: int, number: int) -> int:
    message = number.to_bytes(1, "big") + value.to_bytes(4, "big")
    digest = hmac.new(_key(settings.SECRET_KEY), message, hashlib.sha256).digest()
    return int.from_bytes(digest[:4], "big") & MASK


def _forward(value: int) -> int:
    left, right = value >> HALF, value & MASK
    for number in range(ROUNDS):
        left, right = right, left ^ _round(right, number)
    return (left << HALF) | right


def _backward(token: int) -> int:
    left, right = token >> HALF, token & MASK
    for number in reversed(range(ROUNDS)):
        left, right = right ^ _round(left, number), left
    return (left << HALF) | right


def encode(event_id: int) -> int:
    """The token clients see for event `event_id` (0 stays 0)."""
    if event_id == 0:
        return 0
    if not 0 < event_id < LIMIT:
        raise ValueError(f"event id {event_id} is outside the {BITS}-bit token space")
    token = _forward(event_id)
    while token == 0:
        token = _forward(token)
    return token


def decode(token: int) -> int | None:
    """The event id a client's token stands for; None when it cannot be one of ours."""
    if token == 0:
        return 0
    if not 0 < token < LIMIT:
        return None
    event_id = _backward(token)
    while event_id == 0:
        event_id = _backward(event_id)
    return event_id
