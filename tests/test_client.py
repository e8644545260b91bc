"""The Python client (`tailgate_client.Client`) against a real server: configuration
fallbacks, managers, typed problem+json errors, output tails and the global event stream."""

import pytest

from executions import services
from executions.models import Execution
from tailgate_client import (
    Ambiguous,
    AuthenticationFailed,
    Client,
    Conflict,
    NotFound,
    NotSupported,
    PermissionDenied,
    ServerUnreachable,
    ValidationFailed,
    WaitTimeout,
    managers,
)
from tailgate_client.config import DEFAULT_URL, ConfigError, resolve
from tests.cli_helpers import CuttableProxy, stored_text, wait_finished

pytest_plugins = ["tests.cli_fixtures"]
MISSING_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No TAILGATE_* variables and an empty config folder: the client sees only the test's."""
    for name in ("TAILGATE_URL", "TAILGATE_STREAM_URL", "TAILGATE_API_KEY", "TAILGATE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config" / "tailgate" / "config"


@pytest.fixture
def client(server_url, key, isolated):
    with Client(server_url, api_key=key) as client:
        yield client


# --- configuration ------------------------------------------------------------------------
def test_it_falls_back_from_arguments_to_environment_to_file_to_default(isolated, monkeypatch):
    assert resolve() == resolve(None, None, None)
    assert (resolve().base_url, resolve().stream_url, resolve().api_key) == (
        DEFAULT_URL,
        DEFAULT_URL,
        None,
    )
    isolated.parent.mkdir(parents=True)
    isolated.write_text(
        "[general]\nbase_url = http://file:1/\n[stream]\nurl = http://file-stream:2\n"
        "[credentials]\napi_key = from-file\n"
    )
    assert (resolve().base_url, resolve().stream_url, resolve().api_key) == (
        "http://file:1",
        "http://file-stream:2",
        "from-file",
    )
    monkeypatch.setenv("TAILGATE_URL", "http://env:3")
    monkeypatch.setenv("TAILGATE_API_KEY", "from-env")
    assert (resolve().base_url, resolve().api_key) == ("http://env:3", "from-env")
    given = resolve("http://arg:4", "http://arg-stream:5", "from-arg")
    assert (given.base_url, given.stream_url, given.api_key) == (
        "http://arg:4",
        "http://arg-stream:5",
        "from-arg",
    )
    client = Client()
    assert (client.base_url, client.stream_url, client.api_key) == (
        "http://env:3",
        "http://file-stream:2",
        "from-env",
    )
    assert client.http.headers["Authorization"] == "Bearer from-env"


def test_it_streams_from_the_base_url_unless_told_and_reads_TAILGATE_CONFIG(
    isolated, monkeypatch, tmp_path
):
    monkeypatch.setenv("TAILGATE_URL", "http://only-base:1")
    assert resolve().stream_url == "http://only-base:1"
    elsewhere = tmp_path / "elsewhere.ini"
    elsewhere.write_text("[credentials]\napi_key = k2\n")
    monkeypatch.setenv("TAILGATE_CONFIG", str(elsewhere))
    assert resolve().api_key == "k2" and resolve().config_path == elsewhere


def test_it_refuses_a_config_file_that_is_not_ini(isolated):
    isolated.parent.mkdir(parents=True)
    isolated.write_text("no section header\n")
    with pytest.raises(ConfigError, match="tailgate/config"):
        resolve()


# --- managers -------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_it_gets_actions_by_ref_and_name(client, actions, tmp_path):
    assert [a["ref"] for a in client.actions.get_all()] == sorted(actions)
    assert [a["ref"] for a in client.actions.get_all(pack="core")] == ["core.local", "core.remote"]
    assert client.actions.get("core.local")["parameters"]["cmd"]["type"] == "string"
    assert client.actions.get_by_id("nope.nope") is None
    assert client.actions.get_by_name("local")["ref"] == "core.local"
    assert client.actions.get_by_name("nothing") is None
    with pytest.raises(NotFound) as missing:
        client.actions.get("nope.nope")
    assert missing.value.status == 404 and missing.value.detail == "There is no action nope.nope."
    for change in (client.actions.create, client.actions.update, client.actions.delete):
        with pytest.raises(NotSupported, match="register_actions"):
            change({"ref": "x.y"})


@pytest.mark.django_db(transaction=True)
def test_it_says_when_a_name_is_ambiguous(client, actions, tmp_path):
    from django.conf import settings

    from executions.packs import register

    other = tmp_path / "packs" / "other" / "actions"
    other.mkdir(parents=True)
    (other / "local.yaml").write_text("name: local\nrunner_type: local-shell-cmd\n")
    register([*settings.PACKS_DIRS, tmp_path / "packs"])
    with pytest.raises(Ambiguous, match=r"core\.local, other\.local"):
        client.actions.get_by_name("local")
    assert client.actions.get_by_name("local", pack="other")["ref"] == "other.local"


@pytest.mark.django_db(transaction=True)
def test_it_runs_waits_cancels_and_runs_again(client, actions):
    done = client.executions.run("examples.print_lines", count=2, delay=0)
    assert done["status"] == "succeeded" and done["parameters"] == {"count": 2, "delay": 0}
    assert client.executions.output(done["id"]) == stored_text(done["id"])
    assert client.executions.output(done["id"], type="stdout") == "stdout -> Line: 2\n"

    started = client.executions.run("core.local", {"cmd": "sleep 60"}, wait=False)
    assert started["status"] in ("requested", "scheduled")
    with pytest.raises(WaitTimeout) as waited:
        client.executions.wait(started["id"], timeout=0.3)
    assert waited.value.execution["id"] == started["id"]
    assert client.executions.cancel(started["id"])["status"] in ("canceling", "canceled")
    assert client.executions.wait(started["id"])["status"] == "canceled"
    with pytest.raises(Conflict) as conflict:
        client.executions.cancel(started["id"])
    problem = conflict.value
    assert (problem.status, problem.title) == (409, "Conflict")
    assert problem.instance == f"/api/v1/executions/{started['id']}/cancel/"

    again = client.executions.wait(client.executions.re_run(done["id"])["id"])
    assert again["id"] != done["id"] and again["status"] == "succeeded"
    for change in (client.executions.update, client.executions.delete):
        with pytest.raises(NotSupported):
            change(done["id"])


@pytest.mark.django_db(transaction=True)
def test_it_pages_through_every_execution(client, actions, monkeypatch):
    monkeypatch.setattr(managers, "PAGE_SIZE", 2)  # five rows: three pages
    made = [services.create_execution(actions["core.local"], {"cmd": "true"}) for _ in range(5)]
    newest_first = [e.id for e in reversed(made)]
    assert [e["id"] for e in client.executions.get_all()] == newest_first
    assert [e["id"] for e in client.executions.get_all(limit=3)] == newest_first[:3]
    assert client.executions.get_all(action=["examples.fail", "examples.build"]) == []
    for execution in made:
        wait_finished(execution.id)
    assert len(client.executions.get_all(status=["succeeded", "failed"])) == 5
    assert client.executions.get("last")["id"] == made[-1].id


@pytest.mark.django_db(transaction=True)
def test_it_raises_typed_errors_carrying_the_problem(client, server_url, actions):
    with pytest.raises(ValidationFailed) as invalid:
        client.executions.run("examples.print_lines", count="lots")
    assert invalid.value.status == 422
    assert invalid.value.errors == [
        {"location": "body.parameters.count", "message": "must be of type integer", "value": "lots"}
    ]
    assert str(invalid.value) == "body.parameters.count: must be of type integer (got 'lots')"
    assert client.executions.get_by_id(MISSING_ID) is None
    with pytest.raises(NotFound, match=f"There is no execution {MISSING_ID}."):
        client.executions.get(MISSING_ID)
    with pytest.raises(AuthenticationFailed) as refused:
        Client(server_url, api_key="tg_nope").actions.get_all()
    assert refused.value.status == 401 and refused.value.type
    with pytest.raises(ServerUnreachable, match=r"cannot reach http://127\.0\.0\.1:9"):
        Client("http://127.0.0.1:9", api_key="k").actions.get_all()
    assert Execution.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_it_gets_tenants_by_slug_and_name(client, server_url, member, other_tenant):
    from rbac.models import ApiKey

    assert [t["slug"] for t in client.tenants.get_all()] == ["default", "other"]
    assert client.tenants.get("other") == {"slug": "other", "name": "Other", "role": None}
    assert client.tenants.get_by_id("nope") is None
    assert client.tenants.get_by_name("other")["name"] == "Other"
    assert client.tenants.get_by_name("Default")["slug"] == "default"  # the display name
    assert client.tenants.get_by_name("nothing") is None
    with Client(server_url, api_key=ApiKey.issue(member)[1]) as viewer:
        assert viewer.tenants.get_all() == [
            {"slug": "default", "name": "Default", "role": "viewer"}
        ]
        assert viewer.tenants.get_by_id("other") is None  # hidden, like a missing one
        with pytest.raises(NotFound, match=r"There is no tenant other\."):
            viewer.tenants.get("other")
    for change in (client.tenants.create, client.tenants.update, client.tenants.delete):
        with pytest.raises(NotSupported, match="admin"):
            change("x")


@pytest.mark.django_db(transaction=True)
def test_it_creates_lists_and_revokes_keys(client, server_url, member):
    from rbac.models import ApiKey

    created = client.keys.create("bot", expires_in_days=3)
    assert created["key"].startswith(f"tg_{created['id']}_") and created["expires_at"]
    assert client.keys.create("forever")["expires_at"] is None
    assert [k["name"] for k in client.keys.get_all()] == ["forever", "bot", "cli"]
    assert "key" not in client.keys.get(created["id"])
    with Client(server_url, api_key=created["key"]) as bot:
        assert bot.keys.get_by_id(created["id"])["current"] is True
        assert bot.keys.revoke(created["id"])["state"] == "revoked"
        with pytest.raises(AuthenticationFailed):
            bot.keys.get_all()
    assert client.keys.get(created["id"])["state"] == "revoked"
    with Client(server_url, api_key=ApiKey.issue(member)[1]) as viewer:
        with pytest.raises(PermissionDenied, match="An API key cannot create API keys"):
            viewer.keys.create("copy")
        assert viewer.keys.get_by_id(created["id"]) is None  # not theirs
        with pytest.raises(NotFound):
            viewer.keys.revoke(client.keys.get_all()[0]["id"])
        with pytest.raises(ValidationFailed) as invalid:
            client.keys.create("x", expires_in_days=0)
        assert invalid.value.errors[0]["location"] == "body.expires_in_days"
    for change in (client.keys.update, client.keys.delete):
        with pytest.raises(NotSupported, match="revoke"):
            change(created["id"])


# --- streams ------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_it_tails_from_the_first_line_to_done_without_a_spurious_event(client, actions):
    execution = services.create_execution(
        actions["examples.print_lines"], {"count": 5, "delay": 0.05}
    )
    events = list(client.executions.tail(execution.id))
    assert [e.event for e in events] == ["execution.output__create"] * 5 + ["done"]
    assert [e.data["seq"] for e in events[:-1]] == [1, 2, 3, 4, 5]
    assert [e.id for e in events[:-1]] == ["1", "2", "3", "4", "5"]
    assert events[-1].data == {"final_seq": 5, "status": "succeeded", "exit_code": 0}
    stderr = list(client.executions.tail(execution.id, type="stderr"))
    assert [e.data["data"] for e in stderr[:-1]] == [f"stderr -> Line: {i}\n" for i in (1, 3, 5)]


@pytest.mark.django_db(transaction=True)
def test_it_tails_nested_workflows_with_child_events(client, nested):
    root = services.create_execution(nested["nest.outer"], {})
    events = list(client.executions.tail(root.id, include_children=True))
    children = [
        (e.event, e.data["task_name"], e.data["depth"]) for e in events if "child" in e.event
    ]
    assert children == [
        ("child_started", "first", 1),
        ("child_finished", "first", 1),
        ("child_started", "middle", 1),
        ("child_started", "one", 2),
        ("child_finished", "one", 2),
        ("child_started", "two", 2),
        ("child_finished", "two", 2),
        ("child_finished", "middle", 1),
        ("child_started", "last", 1),
        ("child_finished", "last", 1),
    ]
    assert all(e.data["status"] == "succeeded" for e in events if e.event == "child_finished")
    family = {root.id, *Execution.objects.filter(parent__isnull=False).values_list("id", flat=True)}
    for execution_id in family:
        printed = [
            e.data["data"]
            for e in events
            if e.event == "execution.output__create" and e.data["execution_id"] == execution_id
        ]
        assert "".join(printed) == stored_text(execution_id)
    stdout_only = list(client.executions.tail(root.id, type="stdout", include_children=True))
    assert [e for e in stdout_only if "child" in e.event] == [
        e for e in events if "child" in e.event
    ]  # the workflows' `other` progress lines still lead to their children
    printed = [e.data["data"] for e in stdout_only if e.event == "execution.output__create"]
    assert printed == ["outer first\n", "inner one 1\n", "inner one 2\n", "inner one 3\n",
                       "inner two no\n", "outer last\n"]  # fmt: skip
    without = list(client.executions.tail(root.id))
    assert {e.data.get("execution_id") for e in without[:-1]} == {root.id}


@pytest.mark.django_db(transaction=True)
def test_it_follows_the_global_event_stream_and_resumes_after_a_cut(
    server_url, key, isolated, actions, tmp_path
):
    gate = tmp_path / "gate"
    proxy = CuttableProxy(int(server_url.rsplit(":", 1)[1]))
    try:
        client = Client(proxy.url, api_key=key)
        execution = services.create_execution(
            actions["core.local"], {"cmd": f'while [ ! -e "{gate}" ]; do sleep 0.05; done'}
        )
        stream = client.events(
            last_event_id="0", events="execution__create,execution__update", execution=execution.id
        )
        seen = []
        for event in stream:
            seen.append(event)
            if event.data.get("status") == "running":
                break
        assert next(e.event for e in seen if e.event != "reset") == "execution__create"
        proxy.cut()  # the end can only come over a new connection, resumed after `running`
        gate.touch()
        rest = []
        for event in stream:
            assert event.id not in {e.id for e in seen}  # nothing from before the cut again
            rest.append(event.data["status"])
            if event.data["status"] == "succeeded":
                break
        assert rest[-1] == "succeeded" and "running" not in rest
        assert proxy.connections >= 2
    finally:
        proxy.close()
