"""ASGI entry point: HTTP (Django, SSE consumers) and WebSocket routing."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from channels.routing import ProtocolTypeRouter, URLRouter
from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from rbac.middleware import TailgateAuthMiddleware  # noqa: E402
from streaming.routing import http_routes, websocket_routes  # noqa: E402

# One middleware authenticates both (session, Bearer, X-API-Key) and checks WebSocket origins.
application = ProtocolTypeRouter(
    {
        "http": TailgateAuthMiddleware(URLRouter(http_routes)),
        "websocket": TailgateAuthMiddleware(URLRouter(websocket_routes)),
    }
)
