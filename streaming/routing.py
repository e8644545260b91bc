"""Channels routes: streaming consumers first, everything else to Django."""

from django.core.asgi import get_asgi_application
from django.urls import re_path

http_routes = [
    re_path(r"", get_asgi_application()),
]
websocket_routes: list = []
