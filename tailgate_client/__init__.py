"""Tailgate's Python client and `tailgate` CLI; needs httpx, httpx-sse and PyYAML, not Django.

from tailgate_client import Client
client = Client()                     # TAILGATE_URL, TAILGATE_API_KEY, config file
execution = client.executions.run("examples.print_lines", count=3)
"""

from tailgate_client.client import Client
from tailgate_client.errors import (
    Ambiguous,
    ApiError,
    AuthenticationFailed,
    BadRequest,
    Conflict,
    NotFound,
    NotSupported,
    PermissionDenied,
    ServerError,
    ServerUnreachable,
    StreamLost,
    TailgateError,
    TooManyRequests,
    ValidationFailed,
    WaitTimeout,
)
from tailgate_client.streams import StreamEvent

__all__ = [
    "Ambiguous",
    "ApiError",
    "AuthenticationFailed",
    "BadRequest",
    "Client",
    "Conflict",
    "NotFound",
    "NotSupported",
    "PermissionDenied",
    "ServerError",
    "ServerUnreachable",
    "StreamEvent",
    "StreamLost",
    "TailgateError",
    "TooManyRequests",
    "ValidationFailed",
    "WaitTimeout",
]
