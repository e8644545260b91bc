"""The OpenAPI document matches behaviour: schemathesis against a real `manage.py serve`.

Two runs of `st run` with every check (authenticated by API key, and without credentials),
a bounded number of examples per operation, and 0 failures required. The server runs with
`--no-runner`: fuzzed commands are stored, never executed.

The stream endpoints never end while an execution runs, so schemathesis leaves them out;
`test_it_answers_fuzzed_stream_requests_quickly` fuzzes their parameters and headers with
Hypothesis instead: each request must answer a 4xx problem+json, or 200 and stream.

Two settings in the run's config, each with its reason:
- `allow-x00 = false`: every string refuses NUL (documented in the API description; JSON
  Schema has no way to say "any string but NUL" short of a pattern on every field);
- POST /executions/ may answer 422 to a schema-valid body: whether an action exists and
  which parameters it needs is the action's own schema (`GET /actions/{ref}/`), not the
  OpenAPI document's.
"""

import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executions import services
from executions.models import ExecutionStatus
from rbac.models import ApiKey
from tests.server_helpers import ARTIFACTS, serve
from tests.streaming_helpers import store

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# Per operation and run: with ~9 operations and 2 runs the whole test stays near 2 minutes on
# the shared 2-core machine.
MAX_EXAMPLES = 25
# A hang guard, not a timing: one run took over 300 s (pytest-timeout's default) on a machine
# loaded twenty times over.
SCHEMATHESIS_RUN_SECONDS = 900
# Every response, streams included, must start within this; a stream's first bytes are its
# status and headers. Generous: the machine is shared.
REQUEST_TIMEOUT_SECONDS = 20
# Bounds the fuzz of the stream endpoints (each case opens a connection).
STREAM_EXAMPLES = 60
STREAM_PATHS = (
    "/api/v1/stream",
    "/api/v1/executions/{id}/output/stream",
    "/api/v1/executions/{id}/output",
)

ID_IS_LAST = """
[parameters]
"path.id" = "last"
"""
CONFIG = """
[generation]
allow-x00 = false
codec = "utf-8"

[[operations]]
include-path = "/api/v1/executions/"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]
"""


@pytest.fixture
def world(actions, owner, tenant):
    """An owner's API key and one finished execution with output (`last` resolves to it),
    so every stream of it ends by itself."""
    execution = services.create_execution(actions["core.local"], {"cmd": "x"}, tenant=tenant)
    store(execution, ["one\n", "two\n"])
    services.finish(execution.id, ExecutionStatus.SUCCEEDED, exit_code=0)
    return {"key": ApiKey.issue(owner, name="fuzz")[1]}


@pytest.fixture
def server(world):
    with serve("--no-runner") as (_, url):
        yield url


def _schemathesis(url: str, tmp_path: Path, name: str, *args: str, extra_config="") -> None:
    config = tmp_path / f"schemathesis-{name}.toml"
    config.write_text(extra_config + CONFIG)
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(config),
        "run",
        f"{url}/api/v1/schema/",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--exclude-path-regex",
        "/output|/stream$",
        "--request-timeout",
        str(REQUEST_TIMEOUT_SECONDS),
        "--workers",
        "2",
        "--seed",
        "12",
        "--no-color",
        *args,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, timeout=SCHEMATHESIS_RUN_SECONDS
    )
    report = ARTIFACTS / f"schemathesis-{name}.txt"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    assert "Tested:" in result.stdout  # it ran operations, not just loaded the schema


@pytest.mark.timeout(SCHEMATHESIS_RUN_SECONDS + 120)  # the server starts first
def test_it_passes_schemathesis_with_an_api_key(server, world, tmp_path):
    # Both key headers carry the key (they must agree), and `{id}` is `last`, so every
    # operation on one execution reaches its logic instead of a 404 for a random id (the
    # anonymous run and the unit tests cover those).
    _schemathesis(
        server,
        tmp_path,
        "authenticated",
        "--header",
        f"Authorization: Bearer {world['key']}",
        "--header",
        f"X-API-Key: {world['key']}",
        extra_config=ID_IS_LAST,
    )


@pytest.mark.timeout(SCHEMATHESIS_RUN_SECONDS + 120)  # the server starts first
def test_it_passes_schemathesis_without_credentials(server, tmp_path):
    _schemathesis(server, tmp_path, "anonymous")


# --- the stream endpoints ------------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
QUERY_NAMES = st.sampled_from(
    [
        "events",
        "tenant",
        "action",
        "status",
        "execution",
        "parent",
        "from",
        "replay_limit",
        "type",
        "output_type",
        "action_refs",
        "execution_ids",
        "bogus",
    ]
)
QUERY_VALUES = st.one_of(
    TEXT,
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["*", "st2.*", "stdout", "last", "1e400", "nan", ",", "", "\x00"]),
)
HEADER_VALUES = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
)


@st.composite
def stream_requests(draw):
    path = draw(st.sampled_from(STREAM_PATHS)).format(
        id=draw(st.one_of(st.just("last"), TEXT.filter(lambda t: "/" not in t)))
    )
    pairs = draw(st.lists(st.tuples(QUERY_NAMES, QUERY_VALUES), max_size=4))
    query = "&".join(f"{quote(name)}={quote(value)}" for name, value in pairs)
    headers = {}
    if draw(st.booleans()):
        headers["Last-Event-ID"] = draw(HEADER_VALUES)
    if draw(st.booleans()):
        headers["Accept"] = draw(st.sampled_from(["text/event-stream", "*/*", "x/y"]))
    credentials = draw(st.sampled_from(["key", "key", "none", "garbage"]))
    return quote(path, safe="/"), query, headers, credentials


def test_it_answers_fuzzed_stream_requests_quickly(server, world):
    """Authenticated, anonymous, or with a key that is not one: never a 5xx, never silence."""
    auth = {
        "key": {"Authorization": f"Bearer {world['key']}"},
        "none": {},
        "garbage": {"X-API-Key": "tg_0123456789abcdef_nope"},
    }
    timeout = httpx.Timeout(REQUEST_TIMEOUT_SECONDS)
    with httpx.Client(base_url=server, timeout=timeout) as client:

        @settings(
            max_examples=STREAM_EXAMPLES,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(stream_requests())
        def check(request):
            path, query, headers, credentials = request
            url = f"{path}?{query}" if query else path
            headers = {**headers, **auth[credentials]}
            with client.stream("GET", url, headers=headers) as response:
                status = response.status_code
                assert status < 500, (url, headers, response.read()[:500])
                if credentials != "key":
                    assert status in (401, 404), (url, status)  # 404: not a stream path
                if status == 200:
                    kind = response.headers["content-type"]
                    assert kind.startswith(("text/event-stream", "text/plain")), kind
                else:
                    assert 400 <= status < 500, (url, status)
                    assert response.headers["content-type"] == "application/problem+json"
                    body = response.read()
                    assert httpx.Response(status, content=body).json()["status"] == status

        check()
