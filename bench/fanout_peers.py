"""The peers bench/fanout.py measures Tailgate against, set up in a temporary directory.

Nothing here is a dependency of Tailgate: `PeerProject.create` makes a venv of its own
(`python -m venv`, then pip installs django-eventstream and what it needs from PyPI) and
writes a tiny Django project beside it, with

- `/events/<channel>/`: django-eventstream 5's SSE view, DjangoModelStorage (every event is
  stored in PostgreSQL, as Tailgate stores every line), EVENTSTREAM_REDIS so that a publisher
  in another process reaches the web process (Redis pub/sub);
- `/naive/`: a naive Channels consumer, a raw ASGI app that joins one group with a channel of
  its own and writes each message it gets: one `group_send` per line, a channel per client.

`publisher.py MODE COUNT RATE GOFILE` waits for GOFILE, then sends COUNT events at RATE per
second on an absolute schedule, each carrying its sequence number and the time it was sent.
The whole directory is deleted by the caller at the end.
"""

import os
import subprocess
import sys
from pathlib import Path

# The same versions as Tailgate's where the two overlap (pyproject.toml), so the comparison is
# between designs, not library versions.
PEER_REQUIREMENTS = [
    "django-eventstream==5.3.4",
    "Django==6.1.3",
    "channels==4.3.2",
    "channels-redis==4.3.0",
    "daphne==4.2.3",
    "redis==8.1.0",
    "psycopg[binary]==3.3.9",
    "Twisted==26.10.0",
]

# SSE patterns the load client reads: (sequence number, send time).
EVENTSTREAM_PATTERN = r'data: \{"i": (\d+), "t": ([0-9.]+)\}'
NAIVE_PATTERN = r"id: (\d+)\ndata: ([0-9.]+)\n"

SETTINGS = """
import os

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "daphne",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "channels",
    "django_eventstream",
]
MIDDLEWARE = []
ROOT_URLCONF = "peerproj.urls"
ASGI_APPLICATION = "peerproj.asgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ["PEER_DB_NAME"],
        "USER": os.environ["PEER_DB_USER"],
        "PASSWORD": os.environ.get("PEER_DB_PASSWORD", ""),
        "HOST": os.environ["PEER_DB_HOST"],
        "PORT": os.environ["PEER_DB_PORT"],
    }
}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ["REDIS_URL"]], "prefix": os.environ["PEER_PREFIX"]},
    }
}
EVENTSTREAM_STORAGE_CLASS = "django_eventstream.storage.DjangoModelStorage"
EVENTSTREAM_REDIS = {
    "host": os.environ["PEER_REDIS_HOST"],
    "port": int(os.environ["PEER_REDIS_PORT"]),
    "db": int(os.environ.get("PEER_REDIS_DB", "0")),
}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
"""

URLS = """
import django_eventstream
from django.urls import include, path

urlpatterns = [
    path("events/<channel>/", include(django_eventstream.urls), {"format-channels": ["{channel}"]}),
]
"""

NAIVE = '''
import asyncio
import contextlib
import os

from channels.layers import get_channel_layer

GROUP = os.environ["PEER_GROUP"]
HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def naive_stream(scope, receive, send):
    """One channel per client, joined to one group; every group message is written as is.

    (Channels' AsyncHttpConsumer cannot do this: it handles one message at a time and stops
    when `handle` returns, so a raw ASGI app it is.)
    """
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(GROUP, channel)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": b": open\\n\\n", "more_body": True})

    async def pump():
        while True:
            message = await layer.receive(channel)
            body = message["text"].encode()
            await send({"type": "http.response.body", "body": body, "more_body": True})

    task = asyncio.create_task(pump())
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await layer.group_discard(GROUP, channel)
'''

ASGI = """
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peerproj.settings")
from django.core.asgi import get_asgi_application

django_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from peerproj.naive import naive_stream  # noqa: E402

application = ProtocolTypeRouter(
    {"http": URLRouter([path("naive/", naive_stream), re_path(r"", django_app)])}
)
"""

PUBLISHER = """
import json
import os
import sys
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peerproj.settings")
django.setup()
mode, count, rate, gofile = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
if mode == "eventstream":
    from django_eventstream import send_event

    channel = os.environ["PEER_CHANNEL"]

    def send(i):
        send_event(channel, "message", {"i": i, "t": time.time()})
else:
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    group_send = async_to_sync(get_channel_layer().group_send)
    group = os.environ["PEER_GROUP"]

    def send(i):
        group_send(group, {"type": "line", "text": f"id: {i}\\ndata: {time.time():.6f}\\n\\n"})

waited = time.time() + 600
while not os.path.exists(gofile) and time.time() < waited:
    time.sleep(0.01)
start = time.time()
late = 0.0
for i in range(1, count + 1):
    delay = start + (i - 1) / rate - time.time()
    if delay > 0:
        time.sleep(delay)
    else:
        late = max(late, -delay)
    send(i)
print(json.dumps({"sent": count, "seconds": time.time() - start, "max_late": late}), flush=True)
"""

MANAGE = """
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peerproj.settings")
from django.core.management import execute_from_command_line

execute_from_command_line(sys.argv)
"""


class PeerProject:
    """A venv + Django project in `root`; `env` is what its processes need."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root = root
        self.python = str(root / "venv" / "bin" / "python")
        self.daphne = str(root / "venv" / "bin" / "daphne")
        self.env = env

    @classmethod
    def create(cls, root: Path, env: dict[str, str], log) -> "PeerProject":
        root.mkdir(parents=True, exist_ok=True)
        project = cls(root, env)
        if not Path(project.python).exists():
            log(f"  peers: creating a venv in {root / 'venv'} (pip, from PyPI)")
            subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
        pip = [project.python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        with open(root / "pip.log", "w") as pip_log:
            subprocess.run(
                [*pip, *PEER_REQUIREMENTS],
                check=True,
                timeout=900,
                stdout=pip_log,
                stderr=subprocess.STDOUT,
            )
        package = root / "peerproj"
        package.mkdir(exist_ok=True)
        (package / "__init__.py").write_text("")
        for name, text in (
            ("settings.py", SETTINGS),
            ("urls.py", URLS),
            ("naive.py", NAIVE),
            ("asgi.py", ASGI),
        ):
            (package / name).write_text(text.lstrip())
        (root / "publisher.py").write_text(PUBLISHER.lstrip())
        (root / "manage.py").write_text(MANAGE.lstrip())
        subprocess.run(
            [project.python, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=root,
            env={**os.environ, **env},
            check=True,
            timeout=300,
        )
        return project

    def server_command(self, port: int) -> list[str]:
        return [self.daphne, "-b", "127.0.0.1", "-p", str(port), "peerproj.asgi:application"]

    def publisher_command(self, mode: str, count: int, rate: float, gofile: str) -> list[str]:
        return [self.python, "publisher.py", mode, str(count), str(rate), gofile]

    def version(self, package: str) -> str:
        out = subprocess.run(
            [self.python, "-m", "pip", "show", package], capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
        return "?"
