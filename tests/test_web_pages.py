"""The web pages through Django's test client: login, list, execution page, run form, lines.

What the JavaScript does with them is tested in a real browser (test_browser.py).
"""

import json
import re

import pytest
from django.utils import timezone

from executions import services
from executions.models import Action, Execution, OutputChunk, RunnerType
from executions.models.actions import MASK
from executions.web.views import (
    LINES_PAGE,
    SEARCH_MAX_CHARS,
    SEARCH_MAX_MATCHES,
    SEARCH_SCAN_ROWS,
    exit_note,
    with_code,
)

pytestmark = pytest.mark.django_db

SECRET = "hunter2-correct-horse"
MISSING_ID = "01J0000000000000000000000Z"


def _run(actions, ref="examples.print_lines", parameters=None, **kwargs) -> Execution:
    return services.create_execution(actions[ref], parameters or {}, **kwargs)


def _login(client, user):
    client.force_login(user)
    return client


def _config(response, name: str) -> dict:
    found = re.search(
        rf'<script id="{name}" type="application/json">(.*?)</script>', response.text, re.S
    )
    assert found, f"no {name} on the page"
    return json.loads(found.group(1))


def _without_csrf(html: str) -> str:
    return re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", html)


def _add_output(execution: Execution, count: int, text=lambda seq: f"line {seq}\n") -> None:
    now = timezone.now()
    OutputChunk.objects.bulk_create(
        OutputChunk(
            execution=execution,
            seq=seq,
            output_type="stderr" if "ERR" in text(seq) else "stdout",
            data=text(seq),
            timestamp=now,
        )
        for seq in range(1, count + 1)
    )
    services.advance_last_seq(execution.id, count)


# --- login and the top bar -----------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/executions/", f"/executions/{MISSING_ID}/", "/actions/core.local/run"]
)
def test_it_sends_anonymous_visitors_to_the_login_page(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


def test_it_logs_in_through_the_login_page_and_lands_on_the_list(client, member):
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    assert 'name="username"' in page.text and 'type="password"' in page.text
    response = client.post("/accounts/login/", {"username": "member", "password": "pw-member"})
    assert (response.status_code, response["Location"]) == (302, "/executions/")


def test_it_says_when_the_login_fails(client, member):
    response = client.post("/accounts/login/", {"username": "member", "password": "wrong"})
    assert response.status_code == 200
    assert 'role="alert"' in response.text


def test_it_redirects_the_root_to_the_list(client):
    assert client.get("/")["Location"] == "/executions/"


def test_it_shows_the_user_and_their_tenants_in_the_top_bar(client, member, outsider, superuser):
    page = _login(client, member).get("/executions/")
    assert '<span class="user" title="Signed in as">member</span>' in page.text
    assert '<span class="tenants" title="Tenants">default</span>' in page.text
    page = _login(client, outsider).get("/executions/")
    assert '<span class="tenants" title="Tenants">other</span>' in page.text
    page = _login(client, superuser).get("/executions/")
    assert '<span class="tenants" title="Tenants">all tenants</span>' in page.text


# --- the list -----------------------------------------------------------------------------


def test_it_lists_only_the_executions_the_user_may_see(
    client, actions, tenant, other_tenant, member
):
    mine = _run(actions, tenant=tenant)
    theirs = _run(actions, tenant=other_tenant)
    page = _login(client, member).get("/executions/")
    assert page.status_code == 200
    assert f'data-id="{mine.id}"' in page.text
    assert f'data-id="{theirs.id}"' not in page.text
    assert _config(page, "list-config") == {"filters": {}, "limit": 100}


def test_it_shows_the_columns_of_a_finished_execution(client, actions, tenant, member):
    execution = _run(actions, tenant=tenant)
    services.claim(execution.id, "r")
    services.finish(execution.id, "failed", exit_code=3)
    page = _login(client, member).get("/executions/")
    row = re.search(rf'<tr data-id="{execution.id}".*?</tr>', page.text, re.S).group(0)
    assert 'data-status="failed"' in row
    assert '<span class="badge status-failed">failed</span>' in row
    assert '<td class="exit num">3</td>' in row
    assert ">examples.print_lines</a>" in row and '<td class="tenant">default</td>' in row
    assert re.search(r"\d\.\d s</td>", row)  # duration


def test_it_filters_the_list_by_status_action_and_tenant(
    client, actions, tenant, other_tenant, superuser
):
    lines = _run(actions, tenant=tenant)
    failing = _run(actions, "examples.fail", tenant=tenant)
    elsewhere = _run(actions, tenant=other_tenant)
    services.cancel(failing)
    client = _login(client, superuser)

    def listed(query: str) -> set[str]:
        return set(re.findall(r'<tr data-id="(\w+)"', client.get(f"/executions/?{query}").text))

    assert listed("status=scheduled") == {lines.id, elsewhere.id}
    assert listed("status=canceled") == {failing.id}
    assert listed("action=examples.fail") == {failing.id}
    assert listed("tenant=other") == {elsewhere.id}
    assert listed("tenant=default&action=examples.print_lines") == {lines.id}
    page = client.get("/executions/?tenant=other&status=scheduled")
    assert _config(page, "list-config")["filters"] == {"tenant": "other", "status": "scheduled"}


def test_it_shows_an_invalid_filter_as_an_error_and_ignores_it(client, actions, tenant, member):
    execution = _run(actions, tenant=tenant)
    page = _login(client, member).get("/executions/?status=sleeping")
    assert page.status_code == 200
    assert "Select a valid choice" in page.text
    assert f'data-id="{execution.id}"' in page.text


def test_it_answers_an_unknown_tenant_or_action_filter_with_a_message(
    client, actions, tenant, member
):
    execution = _run(actions, tenant=tenant)
    client = _login(client, member)
    page = client.get("/executions/?tenant=nope")
    assert "There is no tenant “nope” you may see; showing every tenant." in page.text
    assert f'data-id="{execution.id}"' in page.text  # the filter is ignored, not applied
    assert _config(page, "list-config")["filters"] == {}
    page = client.get("/executions/?action=no.such")
    assert "There is no action “no.such” you may see" in page.text
    assert client.get("/executions/?tenant=default").text.count("There is no") == 0


def test_it_explains_a_negative_exit_code(client, actions, tenant, member):
    execution = _run(actions, tenant=tenant)
    Execution.objects.filter(pk=execution.id).update(exit_code=-15, status="canceled")
    page = _login(client, member).get(f"/executions/{execution.id}/")
    assert "ended by signal 15, SIGTERM (canceled, timed out or the server stopped)" in page.text
    assert exit_note(0) == exit_note(None) == ""
    assert exit_note(-9) == "ended by signal 9, SIGKILL (killed)"
    assert exit_note(-99) == "ended by signal 99"


def test_it_renders_backticks_in_descriptions_as_code_and_escapes_the_rest():
    assert with_code("run `ls -l` <now>") == "run <code>ls -l</code> &lt;now&gt;"
    assert with_code("a `b` and `c") == "a <code>b</code> and `c"
    assert with_code("`<script>`") == "<code>&lt;script&gt;</code>"


def test_it_shows_action_descriptions_with_code(client, member, actions):
    Action.objects.filter(ref="core.local").update(description="Runs `cmd` in a shell <b>.")
    page = _login(client, member).get("/actions/")
    assert "Runs <code>cmd</code> in a shell &lt;b&gt;." in page.text


# --- the execution page ------------------------------------------------------------------


def test_it_shows_an_execution_with_its_secret_parameters_masked(client, actions, tenant, member):
    execution = _run(actions, "examples.echo_secret", {"password": SECRET}, tenant=tenant)
    page = _login(client, member).get(f"/executions/{execution.id}/")
    assert page.status_code == 200
    assert SECRET not in page.text
    assert f"<tr><td>password</td><td><code>{MASK}</code></td></tr>" in page.text
    assert "<tr><td>timeout</td><td><code>60</code></td></tr>" in page.text
    config = _config(page, "execution-config")
    assert config["execution"]["parameters"]["password"] == MASK
    assert config["execution"]["id"] == execution.id
    assert config["api"] == f"/api/v1/executions/{execution.id}/"
    assert config["lines"] == "/executions/ID/lines"


def test_it_masks_secrets_in_the_result_and_the_error(client, actions, tenant, member):
    execution = _run(actions, "examples.echo_secret", {"password": SECRET}, tenant=tenant)
    services.claim(execution.id, "r")
    services.finish(execution.id, "failed", result={"echo": SECRET}, error=f"it said {SECRET}")
    page = _login(client, member).get(f"/executions/{execution.id}/")
    assert SECRET not in page.text
    assert f"&quot;echo&quot;: &quot;{MASK}&quot;" in page.text
    assert f"it said {MASK}" in page.text


def test_it_answers_outsiders_with_the_same_404_page_as_a_missing_execution(
    client, actions, tenant, outsider
):
    execution = _run(actions, tenant=tenant)
    client = _login(client, outsider)
    hidden = client.get(f"/executions/{execution.id}/")
    missing = client.get(f"/executions/{MISSING_ID}/")
    assert hidden.status_code == missing.status_code == 404
    assert "There is no such execution, or you may not see it." in hidden.text
    assert _without_csrf(hidden.text) == _without_csrf(missing.text)
    assert execution.action_ref not in hidden.text


def test_it_answers_404_for_a_malformed_id(client, member):
    response = _login(client, member).get("/executions/not-an-id/")
    assert response.status_code == 404
    assert "There is no such execution" in response.text


def test_it_redirects_last_to_the_newest_execution_the_user_may_see(
    client, actions, tenant, other_tenant, member
):
    mine = _run(actions, tenant=tenant)
    _run(actions, tenant=other_tenant)
    response = _login(client, member).get("/executions/last/")
    assert response["Location"] == f"/executions/{mine.id}/"


def test_it_offers_cancel_and_rerun_to_operators_only(client, actions, tenant, owner, member):
    execution = _run(actions, tenant=tenant)
    as_owner = _login(client, owner).get(f"/executions/{execution.id}/")
    assert 'id="cancel"' in as_owner.text and 'id="rerun"' in as_owner.text
    assert _config(as_owner, "execution-config")["canOperate"] is True
    as_member = _login(client, member).get(f"/executions/{execution.id}/")
    assert 'id="cancel"' not in as_member.text and 'id="rerun"' not in as_member.text
    assert _config(as_member, "execution-config")["canOperate"] is False


def test_it_hides_cancel_once_the_execution_finished(client, actions, tenant, owner):
    execution = services.cancel(_run(actions, tenant=tenant))
    page = _login(client, owner).get(f"/executions/{execution.id}/")
    assert re.search(r'id="cancel"\s+hidden', page.text)


def test_it_says_when_the_output_was_purged(client, actions, tenant, member):
    execution = services.cancel(_run(actions, tenant=tenant))
    purged_at = timezone.now()
    Execution.objects.filter(pk=execution.id).update(output_purged_at=purged_at)
    page = _login(client, member).get(f"/executions/{execution.id}/")
    assert f"Output purged on {purged_at:%Y-%m-%d %H:%M} UTC." in page.text


def test_it_lists_the_tasks_of_a_workflow(client, actions, tenant, member):
    workflow = _run(actions, "examples.deploy", tenant=tenant)
    task = services.create_execution(
        actions["examples.print_lines"], {}, parent=workflow, task_name="build"
    )
    page = _login(client, member).get(f"/executions/{workflow.id}/")
    assert f'<details class="child" data-id="{task.id}">' in page.text
    assert "<strong data-task>build</strong>" in page.text
    config = _config(page, "execution-config")
    assert config["workflow"] is True
    assert [child["id"] for child in config["children"]] == [task.id]
    child_page = client.get(f"/executions/{task.id}/")
    assert f'task of <a href="/executions/{workflow.id}/">examples.deploy</a>' in child_page.text


# --- the lines endpoint ("load earlier") ---------------------------------------------------


def test_it_returns_a_range_of_lines(client, actions, tenant, member):
    execution = _run(actions, tenant=tenant)
    _add_output(execution, 30)
    response = _login(client, member).get(f"/executions/{execution.id}/lines?from=11&to=20")
    assert response.status_code == 200
    body = response.json()
    assert [chunk["seq"] for chunk in body["chunks"]] == list(range(11, 21))
    first = body["chunks"][0]
    assert {k: first[k] for k in ("seq", "output_type", "data")} == {
        "seq": 11,
        "output_type": "stdout",
        "data": "line 11\n",
    }
    stamp = OutputChunk.objects.get(execution=execution, seq=11).timestamp
    assert first["timestamp"] == stamp.isoformat()  # for the timestamps toggle
    assert (body["last_seq"], body["output_purged_at"]) == (30, None)


@pytest.mark.parametrize(
    "query", ["", "from=a&to=2", "from=0&to=2", "from=5&to=4", f"from=1&to={LINES_PAGE + 1}"]
)
def test_it_refuses_a_bad_range(client, actions, tenant, member, query):
    execution = _run(actions, tenant=tenant)
    response = _login(client, member).get(f"/executions/{execution.id}/lines?{query}")
    assert (response.status_code, response["Content-Type"]) == (422, "application/problem+json")
    assert "from" in response.json()["detail"]
    assert response.json()["errors"][0]["location"] == "query.from"


def test_it_hides_lines_from_outsiders_and_anonymous_callers(client, actions, tenant, outsider):
    execution = _run(actions, tenant=tenant)
    _add_output(execution, 3)
    anonymous = client.get(f"/executions/{execution.id}/lines?from=1&to=3")
    assert anonymous.status_code == 401
    hidden = _login(client, outsider).get(f"/executions/{execution.id}/lines?from=1&to=3")
    assert (hidden.status_code, hidden["Content-Type"]) == (404, "application/problem+json")
    assert "chunks" not in hidden.json()


# --- search ---------------------------------------------------------------------------------


def _search(client, execution, query: str):
    return client.get(f"/executions/{execution.id}/search?{query}")


def test_it_finds_lines_case_insensitively_in_bounded_steps(client, actions, tenant, member):
    execution = _run(actions, tenant=tenant)
    count = SEARCH_SCAN_ROWS + 50
    _add_output(execution, count, lambda seq: f"Needle {seq}\n" if seq % 40_000 == 7 else "hay\n")
    client = _login(client, member)
    first = _search(client, execution, "q=needle&from=1").json()
    assert first == {
        "matches": [7, 40_007, 80_007],
        "scanned_to": SEARCH_SCAN_ROWS,
        "last_seq": count,
    }
    rest = _search(client, execution, f"q=NEEDLE&from={SEARCH_SCAN_ROWS + 1}").json()
    assert rest == {"matches": [], "scanned_to": count, "last_seq": count}


def test_it_stops_a_page_of_matches_at_the_cap(client, actions, tenant, member):
    execution = _run(actions, tenant=tenant)
    _add_output(execution, SEARCH_MAX_MATCHES + 10)
    body = _search(_login(client, member), execution, "q=line").json()
    assert body["matches"] == list(range(1, SEARCH_MAX_MATCHES + 1))
    assert body["scanned_to"] == SEARCH_MAX_MATCHES  # the next page starts after the last match


def test_it_finds_the_first_stderr_line_and_treats_wildcards_literally(
    client, actions, tenant, member
):
    execution = _run(actions, tenant=tenant)
    _add_output(execution, 20, lambda seq: f"ERR 100% _{seq}\n" if seq in (5, 9) else "ok 1\n")
    client = _login(client, member)
    assert _search(client, execution, "type=stderr").json()["matches"] == [5, 9]
    assert _search(client, execution, "q=%25").json()["matches"] == [5, 9]  # `%` is literal
    assert _search(client, execution, "q=_").json()["matches"] == [5, 9]
    assert _search(client, execution, "q=ok&type=stderr").json()["matches"] == []


@pytest.mark.parametrize(
    "query",
    ["", "q=", "type=nope", "q=a&from=0", "q=a&from=x", "q=" + "a" * (SEARCH_MAX_CHARS + 1)],
)
def test_it_refuses_a_bad_search(client, actions, tenant, member, query):
    execution = _run(actions, tenant=tenant)
    response = _search(_login(client, member), execution, query)
    assert (response.status_code, response["Content-Type"]) == (422, "application/problem+json")
    assert response.json()["detail"] and response.json()["errors"][0]["location"].startswith(
        "query."
    )


def test_it_hides_search_from_outsiders_and_anonymous_callers(client, actions, tenant, outsider):
    execution = _run(actions, tenant=tenant)
    _add_output(execution, 3)
    assert _search(client, execution, "q=line").status_code == 401
    hidden = _search(_login(client, outsider), execution, "q=line")
    assert hidden.status_code == 404
    assert "matches" not in hidden.json()
    assert _search(client, Execution(id=MISSING_ID), "q=line").status_code == 404


# --- the run form --------------------------------------------------------------------------


@pytest.fixture
def form_action(db):
    return Action.objects.create(
        ref="tests.form",
        pack="tests",
        name="form",
        runner_type=RunnerType.LOCAL_SHELL_CMD,
        parameters={
            "cmd": {"type": "string", "required": True, "description": "The command."},
            "count": {"type": "integer", "default": 3},
            "ratio": {"type": "number"},
            "color": {"type": "string", "enum": ["red", "green"], "default": "green"},
            "verbose": {"type": "boolean", "default": True},
            "hosts": {"type": "array"},
            "env": {"type": "object", "default": {"A": "1"}},
            "token": {"type": "string", "secret": True, "default": "s3cret-default"},
            "mode": {"type": "string", "immutable": True, "default": "fixed"},
        },
    )


def _field(html: str, name: str) -> str:
    found = re.search(rf'<div class="field[^"]*" data-parameter="{name}">(.*?)</div>', html, re.S)
    assert found, f"no field {name}"
    return found.group(1)


def test_it_builds_the_form_from_the_parameter_schema(client, owner, form_action):
    page = _login(client, owner).get("/actions/tests.form/run")
    assert page.status_code == 200
    html = page.text
    order = re.findall(r'data-parameter="(\w+)"', html)
    assert order == [name for name, _ in form_action.ordered_parameters()]
    assert re.search(r'<input type="text" name="param-cmd"[^>]*required', _field(html, "cmd"))
    assert "The command." in _field(html, "cmd")
    assert re.search(
        r'<input type="number" name="param-count" value="3"[^>]*step="1"', _field(html, "count")
    )
    assert 'step="any"' in _field(html, "ratio")
    assert '<option value="green" selected>green</option>' in _field(html, "color")
    assert re.search(
        r'<input type="checkbox" name="param-verbose"[^>]*checked', _field(html, "verbose")
    )
    assert "<textarea" in _field(html, "hosts")
    assert "{&quot;A&quot;: &quot;1&quot;}" in _field(html, "env")
    token = _field(html, "token")
    assert 'type="password"' in token and "s3cret-default" not in html
    assert "disabled" in _field(html, "mode")
    assert "novalidate" in html


def test_it_shows_validation_errors_by_the_field(client, owner, form_action):
    response = _login(client, owner).post(
        "/actions/tests.form/run",
        {"tenant": "default", "param-count": "many", "param-color": "blue", "param-env": "{oops"},
    )
    assert response.status_code == 422
    html = response.text
    assert "Is required." in _field(html, "cmd")
    assert "Must be of type integer." in _field(html, "count")
    assert "Must be one of red, green." in _field(html, "color")
    assert "Must be of type object." in _field(html, "env")
    assert 'aria-invalid="true"' in _field(html, "count")
    assert not Execution.objects.exists()


def test_it_masks_a_secret_value_in_its_error(client, owner, db):
    Action.objects.create(
        ref="tests.pin",
        pack="tests",
        name="pin",
        runner_type=RunnerType.LOCAL_SHELL_CMD,
        parameters={"pin": {"type": "integer", "secret": True}},
    )
    response = _login(client, owner).post(
        "/actions/tests.pin/run", {"tenant": "default", "param-pin": "12ab-secret"}
    )
    assert response.status_code == 422
    assert "Must be of type integer." in _field(response.text, "pin")
    assert "12ab-secret" not in response.text


def test_it_runs_the_action_and_goes_to_the_live_page(client, owner, tenant, form_action):
    response = _login(client, owner).post(
        "/actions/tests.form/run",
        {"tenant": "default", "param-cmd": "echo hi", "param-count": "7", "param-hosts": "a, b"},
    )
    execution = Execution.objects.get()
    assert (response.status_code, response["Location"]) == (302, f"/executions/{execution.id}/")
    assert execution.parameters == {
        "cmd": "echo hi",
        "count": 7,
        "color": "green",
        "verbose": False,  # an unticked box is a given `false`
        "hosts": ["a", "b"],
        "env": {"A": "1"},
        "token": "s3cret-default",
        "mode": "fixed",
    }
    assert (execution.tenant, execution.created_by) == (tenant, owner)


def test_it_runs_in_the_chosen_tenant_only_if_allowed(client, superuser, other_tenant, actions):
    client = _login(client, superuser)
    response = client.post("/actions/examples.print_lines/run", {"tenant": "other"})
    assert response.status_code == 302
    assert Execution.objects.get().tenant == other_tenant


def test_it_refuses_the_form_to_a_viewer(client, member, actions):
    client = _login(client, member)
    page = client.get("/actions/examples.print_lines/run")
    assert page.status_code == 403
    assert "You may not run this action" in page.text
    assert (
        client.post("/actions/examples.print_lines/run", {"tenant": "default"}).status_code == 403
    )
    assert not Execution.objects.exists()


def test_it_offers_only_the_tenants_the_user_may_run_in(client, outsider, actions):
    client = _login(client, outsider)
    page = client.get("/actions/examples.print_lines/run")
    assert re.findall(r'<option value="(\w+)"', page.text) == ["other"]
    response = client.post("/actions/examples.print_lines/run", {"tenant": "default"})
    assert response.status_code == 422
    assert not Execution.objects.exists()


def test_it_answers_404_for_an_unknown_or_disabled_action(client, owner, actions):
    client = _login(client, owner)
    assert client.get("/actions/nope.nothing/run").status_code == 404
    Action.objects.filter(ref="examples.fail").update(enabled=False)
    response = client.get("/actions/examples.fail/run")
    assert response.status_code == 404
    assert "There is no such action, or it is disabled." in response.text


def test_it_lists_the_actions_with_run_links(client, member, actions):
    page = _login(client, member).get("/actions/")
    assert '<a class="button" href="/actions/examples.print_lines/run">Run…</a>' in page.text


# --- 404 pages: HTML for pages, problem+json under /api/ ----------------------------------


def test_it_answers_the_html_404_page_outside_the_api_and_problems_inside(client, member):
    client = _login(client, member)
    page = client.get("/no/such/page/")
    assert page.status_code == 404
    assert page["Content-Type"].startswith("text/html")
    assert "There is nothing at <code>/no/such/page/</code>." in page.text
    assert '<span class="user" title="Signed in as">member</span>' in page.text
    api = client.get("/api/v1/nothing-here/")
    assert (api.status_code, api["Content-Type"]) == (404, "application/problem+json")


def test_it_names_the_object_in_the_guardian_page_header(client, superuser, actions):
    action = actions["examples.deploy"]
    client = _login(client, superuser)
    page = client.get(f"/admin/executions/action/{action.pk}/permissions/")
    assert page.status_code == 200
    assert re.search(r"<h1>Object permissions</h1>\s*<h2>examples.deploy</h2>", page.text)
    user = client.get(
        f"/admin/executions/action/{action.pk}/permissions/user-manage/{superuser.pk}/"
    )
    assert user.status_code == 200
    assert "<h2>examples.deploy</h2>" in user.text
