"""Channels routes: the streams first, then everything else to Django.

`project/asgi.py` wraps both lists in rbac's auth middleware, which fills `scope["user"]`
(session cookie, `Authorization: Bearer` or `X-API-Key`) before any consumer runs.
"""

from django.core.asgi import get_asgi_application
from django.urls import path, re_path

from streaming.endpoints.events import EventSSEEndpoint
from streaming.endpoints.output import OutputSSEEndpoint, OutputTextEndpoint
from streaming.endpoints.websocket import StreamSocketEndpoint

http_routes = [
    path("api/v1/executions/<str:execution_id>/output", OutputTextEndpoint.as_asgi()),
    path("api/v1/executions/<str:execution_id>/output/stream", OutputSSEEndpoint.as_asgi()),
    path("api/v1/stream", EventSSEEndpoint.as_asgi()),
    # Last: Django serves every other path. (Channels routes take ASGI apps; the stubs
    # know only Django's views.)
    re_path(r"", get_asgi_application()),  # type: ignore[arg-type]
]
websocket_routes = [
    path("ws/v1/stream", StreamSocketEndpoint.as_asgi()),
]
