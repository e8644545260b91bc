"""Tailgate's one settings module, driven by the environment.

Embedded mode (the default): SQLite in WAL mode, in-memory channel layer, one process.
Cluster mode: set DATABASE_URL (PostgreSQL) and REDIS_URL (channels-redis).
"""

import os
import secrets
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DATA_DIR = Path(env.str("TAILGATE_DATA_DIR", default=str(BASE_DIR / "var")))
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _embedded_secret_key() -> str:
    """A per-installation key kept in the data dir, so `make run` needs no configuration."""
    path = DATA_DIR / "secret-key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="") or _embedded_secret_key()
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# --- Database ---------------------------------------------------------------------------
EMBEDDED_DB_PATH = DATA_DIR / "tailgate.sqlite3"
DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{EMBEDDED_DB_PATH}")}
DB_IS_SQLITE = DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
if DB_IS_SQLITE:
    DATABASES["default"]["OPTIONS"] = {
        # WAL lets readers (streams) go on while the runner writes; IMMEDIATE takes the write
        # lock at BEGIN so two writers queue on busy_timeout instead of failing mid-transaction.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # A file, not :memory:, so runner and server processes started by the tests share it
    # (they get its path in DATABASE_URL); one per test process, so runs do not collide.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / f"test-{os.getpid()}.sqlite3")}
else:
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}
    # Kept connections: the runner's and the streams' thread pools (a few threads each) reuse
    # theirs instead of connecting for every batch or replay page (a connect costs more than
    # the query). The number of connections stays bounded by those pools' sizes.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

# --- Channel layer ------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
CHANNEL_LAYER_CAPACITY = env.int("CHANNEL_LAYER_CAPACITY", default=1000)
# redis-py 8 gives every connection a 5 s socket read timeout by default, exactly the 5 s that
# channels-redis blocks in BZPOPMIN when `receive()` waits on an idle channel: the socket
# timeout fires first and an idle receive raised redis TimeoutError (and dropped the
# connection) every 5 s. The read timeout must exceed that block; it still bounds how long a
# command waits on a Redis that stopped answering without closing the socket.
REDIS_SOCKET_TIMEOUT_SECONDS = env.float("REDIS_SOCKET_TIMEOUT_SECONDS", default=15)
# A ring (layer send) waits this long at most, then it is skipped and further rings are skipped
# for the cooldown: the writer goes on storing output while Redis is away, and streams catch
# up from the database (executions/publish.py).
CHANNEL_LAYER_SEND_TIMEOUT_SECONDS = env.float("CHANNEL_LAYER_SEND_TIMEOUT_SECONDS", default=1)
CHANNEL_LAYER_SEND_COOLDOWN_SECONDS = env.float("CHANNEL_LAYER_SEND_COOLDOWN_SECONDS", default=2)
if REDIS_URL:
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    # A pooled connection that Redis dropped (a restart) fails its next command once; the
    # pool's connections get no retry unless given one, so each stale connection cost a lost
    # send or receive after every restart. One immediate retry on a fresh connection.
    REDIS_RETRY = Retry(NoBackoff(), 1)
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
                        "retry": REDIS_RETRY,
                    }
                ],
                # Separate installations (or parallel test runs) sharing one Redis.
                "prefix": env.str("CHANNEL_LAYER_PREFIX", default="tailgate"),
                # The layer is lossy and bounded: a channel holding `capacity` messages drops
                # new ones silently, and messages expire after `expiry` seconds. Streams never
                # rely on it for correctness (they backfill from the database on a seq jump),
                # so these bound memory, not delivery.
                "capacity": CHANNEL_LAYER_CAPACITY,
                "expiry": 60,
                # A web process's hub re-joins its groups every minute (streaming/hub.py), so
                # one that died leaves its groups after this long, and nothing accumulates.
                "group_expiry": env.int("CHANNEL_LAYER_GROUP_EXPIRY", default=300),
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": CHANNEL_LAYER_CAPACITY, "expiry": 60},
        }
    }

# --- Tailgate -----------------------------------------------------------------------------


def _stream_limit(kind: str, name: str, default):
    """STREAM_<name> from the environment; milestone 1 named these SSE_<name> (they govern
    WebSocket and plain-text streams too), and that name is still read when the new one is unset."""
    read = getattr(env, kind)
    return read(f"STREAM_{name}", default=read(f"SSE_{name}", default=default))


OUTPUT_TTL_DAYS = env.int("OUTPUT_TTL_DAYS", default=7)
EXECUTION_TTL_DAYS = env.int("EXECUTION_TTL_DAYS", default=0)
EVENT_RETENTION_HOURS = env.int("EVENT_RETENTION_HOURS", default=24)
STREAM_KEEPALIVE_SECONDS = env.float("STREAM_KEEPALIVE_SECONDS", default=15)
STREAM_MAX_CONNECTIONS_PER_TENANT = _stream_limit("int", "MAX_CONNECTIONS_PER_TENANT", 10)
MAX_CHUNK_BYTES = env.int("MAX_CHUNK_BYTES", default=1024 * 1024)
PACKS_DIRS = [Path(p) for p in env.list("PACKS_DIRS", default=[str(BASE_DIR / "packs")])]
RUNNER_CONCURRENCY = env.int("RUNNER_CONCURRENCY", default=8)
RUNNER_HEARTBEAT_SECONDS = env.float("RUNNER_HEARTBEAT_SECONDS", default=2)
RUNNER_ABANDON_GRACE_SECONDS = env.float("RUNNER_ABANDON_GRACE_SECONDS", default=30)
RUNNER_POLL_SECONDS = env.float("RUNNER_POLL_SECONDS", default=1)
RUNNER_SHUTDOWN_GRACE_SECONDS = env.float("RUNNER_SHUTDOWN_GRACE_SECONDS", default=30)
# A runner retries an output write that fails (database restarting, connection killed) for
# this long, the action held on its pipe meanwhile; past it the run ends `failed` with the
# reason once the database is back (docs/guarantees.md).
RUNNER_DB_OUTAGE_SECONDS = env.float("RUNNER_DB_OUTAGE_SECONDS", default=300)
EMBEDDED_RUNNER = env.bool("EMBEDDED_RUNNER", default=True)
# Stream connection limits (rbac/limits.py), for SSE, plain-text and WebSocket streams alike:
# superusers count too unless exempted; a slot is a lease in Redis renewed while the stream
# lives, so a crashed web process frees its slots after STREAM_SLOT_TTL_SECONDS; the key prefix
# keeps installations sharing one Redis apart.
STREAM_LIMIT_EXEMPT_SUPERUSERS = _stream_limit("bool", "LIMIT_EXEMPT_SUPERUSERS", False)
STREAM_RETRY_AFTER_SECONDS = _stream_limit("int", "RETRY_AFTER_SECONDS", 5)
STREAM_SLOT_TTL_SECONDS = _stream_limit("float", "SLOT_TTL_SECONDS", 30)
STREAM_LIMIT_KEY_PREFIX = _stream_limit("str", "LIMIT_KEY_PREFIX", "tailgate:streams")
# Per principal (a user, or one API key), below the per-tenant limit so no single member or
# key fills their tenant alone; the tenant limit counts only the tenant's role holders.
STREAM_MAX_CONNECTIONS_PER_PRINCIPAL = _stream_limit("int", "MAX_CONNECTIONS_PER_PRINCIPAL", 5)
# The limiter's Redis pool per web process: a blocking pool (load waits, never a 500). One
# acquire is one round trip, so 20 connections pass thousands of stream starts a second; a
# start that finds no connection within the wait answers 429 with Retry-After.
STREAM_LIMIT_REDIS_POOL_SIZE = env.int("STREAM_LIMIT_REDIS_POOL_SIZE", default=20)
STREAM_LIMIT_REDIS_WAIT_SECONDS = env.float("STREAM_LIMIT_REDIS_WAIT_SECONDS", default=5)
# Revocation is pushed (rbac/signals.py rings, streams re-check at once); this is the safety
# net for a lost doorbell: one re-check per principal per web process, whatever its streams.
STREAM_ACCESS_RECHECK_SECONDS = env.float("STREAM_ACCESS_RECHECK_SECONDS", default=15)
# Backpressure (streaming/flow.py): what a stream may have written that its client has not
# taken yet, and how long a client may read nothing before it is disconnected.
STREAM_SEND_BUFFER_BYTES = env.int("STREAM_SEND_BUFFER_BYTES", default=1024 * 1024)
STREAM_STALL_SECONDS = env.float("STREAM_STALL_SECONDS", default=60)
# A web process leaves a layer group this long after its last stream of it ended: a client
# that reconnects at once (the usual case after a network blip) finds it still joined.
STREAM_GROUP_LINGER_SECONDS = env.float("STREAM_GROUP_LINGER_SECONDS", default=5)
# With this many streams in a web process, the hub wakes them every STREAM_COALESCE_SECONDS
# rather than per message (streaming/hub.py): one wake-up and one write per stream per tick,
# at the cost of at most that much latency; fewer streams are woken at once.
STREAM_COALESCE_MIN_STREAMS = env.int("STREAM_COALESCE_MIN_STREAMS", default=100)
STREAM_COALESCE_SECONDS = env.float("STREAM_COALESCE_SECONDS", default=0.05)

# --- Django -------------------------------------------------------------------------------
INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "guardian",
    "executions",
    "streaming",
    "rbac",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Refuses NUL, oversized bodies and too many fields with a 4xx before any view runs.
    "executions.api.edge.EdgeGuardMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]

ROOT_URLCONF = "project.urls"
# Database sessions that refuse keys Django never issues (a NUL in a forged cookie was a 500).
SESSION_ENGINE = "rbac.sessions"
ASGI_APPLICATION = "project.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns when it is missing
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Embedded mode serves static files from the app folders directly, no collectstatic step.
WHITENOISE_USE_FINDERS = env.bool("WHITENOISE_USE_FINDERS", default=True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/executions/"

GUARDIAN_RAISE_403 = False
ANONYMOUS_USER_NAME = None

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # An API key when the request presents one (Bearer or X-API-Key), else the session.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rbac.authentication.ApiKeyAuthentication",
        "executions.api.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON only: no browsable API, so no /api/ path ever answers an HTML page.
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "executions.api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "executions.api.problems.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Tailgate API",
    "DESCRIPTION": (
        "Run automation actions and follow their output live. Errors are "
        "`application/problem+json` (RFC 9457). The WebSocket `/ws/v1/stream` carries the "
        "same events as the two SSE endpoints; it is not described here."
    ),
    "VERSION": "1.0.0",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI's files come from the installed sidecar package, not a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "executions.api.schema.add_streaming_endpoints",
    ],
}

# --- Production (`DEPLOY_SECURE=1` behind TLS passes `manage.py check --deploy`) -------
DEPLOY_SECURE = env.bool("DEPLOY_SECURE", default=False)
if DEPLOY_SECURE:
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
