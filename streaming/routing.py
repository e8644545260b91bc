"""Channels routes: the streams first, then everything else to Django.

`project/asgi.py` wraps both lists in rbac's auth middleware, which fills `scope["user"]`
(session cookie, `Authorization: Bearer` or `X-API-Key`) before any consumer runs.
"""

from django.core.asgi import get_asgi_application
from django.urls import path, re_path

from streaming.consumers.events import EventStreamConsumer
from streaming.consumers.output import OutputStreamConsumer, OutputTextConsumer
from streaming.consumers.websocket import StreamSocketConsumer

http_routes = [
    path("api/v1/executions/<str:execution_id>/output", OutputTextConsumer.as_asgi()),
    path("api/v1/executions/<str:execution_id>/output/stream", OutputStreamConsumer.as_asgi()),
    path("api/v1/stream", EventStreamConsumer.as_asgi()),
    # Last: Django serves every other path. (Channels routes take ASGI apps; the stubs
    # know only Django's views.)
    re_path(r"", get_asgi_application()),  # type: ignore[arg-type]
]
websocket_routes = [
    path("ws/v1/stream", StreamSocketConsumer.as_asgi()),
]
