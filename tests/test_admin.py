"""The admin: actions, executions (filters, search, masked read-only detail), output rows.

The execution list, detail and output list stay fast over a million output rows: their
query counts are pinned and no query counts the output table without a LIMIT.
"""

import re
import time
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from executions import services
from executions.admin import ADMIN_OUTPUT_LINES, CappedCountPaginator
from executions.models import Execution, OutputChunk

SECRET = "hunter2-correct-horse"
MILLION = 1_000_000
EXECUTIONS = "/admin/executions/execution/"
OUTPUT = "/admin/executions/outputchunk/"


@pytest.fixture
def admin_client(client, superuser):
    client.force_login(superuser)
    return client


def _run(actions, ref="examples.print_lines", parameters=None, **kwargs) -> Execution:
    return services.create_execution(actions[ref], parameters or {}, **kwargs)


def _add_output(execution: Execution, count: int) -> None:
    now = timezone.now()
    OutputChunk.objects.bulk_create(
        OutputChunk(
            execution=execution,
            seq=seq,
            output_type="stderr" if seq % 2 else "stdout",
            data=f"Line: {seq}\n",
            timestamp=now,
        )
        for seq in range(1, count + 1)
    )
    services.advance_last_seq(execution.id, count)


def _listed(response) -> set[str]:
    assert response.status_code == 200
    return {execution.id for execution in response.context["cl"].result_list}


def test_it_lists_the_registered_actions(admin_client, actions):
    response = admin_client.get("/admin/executions/action/")

    assert response.status_code == 200
    for ref in ("core.local", "examples.print_lines", "examples.deploy"):
        assert ref in response.text


def test_it_shows_an_action(admin_client, actions):
    action = actions["examples.print_lines"]

    response = admin_client.get(f"/admin/executions/action/{action.pk}/change/")

    assert response.status_code == 200
    assert "print_lines.sh" in response.text
    assert "Seconds between lines." in response.text


def test_it_lists_executions_with_their_columns(admin_client, actions, tenant):
    execution = _run(actions, tenant=tenant)
    start = timezone.now()
    services.claim(execution.id, "runner-1")
    services.finish(execution.id, "failed", exit_code=3)
    Execution.objects.filter(pk=execution.id).update(
        started_at=start, finished_at=start + timedelta(seconds=2.5)
    )

    response = admin_client.get(EXECUTIONS)

    assert _listed(response) == {execution.id}
    row = re.search(r"<tr>.*?</tr>", response.text.split("<tbody>")[1], re.S).group(0)
    for cell in (execution.id, "examples.print_lines", "default", "Failed", "2.5 s", ">3<"):
        assert cell in row


def test_it_filters_executions(admin_client, actions, tenant, other_tenant):
    lines = _run(actions, tenant=tenant)
    failing = _run(actions, "examples.fail", tenant=tenant)
    elsewhere = _run(actions, tenant=other_tenant)
    services.finish(failing.id, "failed", exit_code=3)
    old = _run(actions, tenant=tenant)
    Execution.objects.filter(pk=old.id).update(created_at=timezone.now() - timedelta(days=30))

    assert _listed(admin_client.get(EXECUTIONS)) == {lines.id, failing.id, elsewhere.id, old.id}
    assert _listed(admin_client.get(EXECUTIONS, {"status__exact": "failed"})) == {failing.id}
    assert _listed(admin_client.get(EXECUTIONS, {"action_ref": "examples.print_lines"})) == {
        lines.id,
        elsewhere.id,
        old.id,
    }
    assert _listed(admin_client.get(EXECUTIONS, {"tenant__id__exact": other_tenant.id})) == {
        elsewhere.id
    }
    week_ago = (timezone.now() - timedelta(days=7)).isoformat()
    tomorrow = (timezone.now() + timedelta(days=1)).isoformat()
    assert _listed(
        admin_client.get(EXECUTIONS, {"created_at__gte": week_ago, "created_at__lt": tomorrow})
    ) == {lines.id, failing.id, elsewhere.id}


def test_it_offers_the_filters(admin_client, actions, tenant, other_tenant):
    _run(actions, tenant=tenant)

    text = admin_client.get(EXECUTIONS).text

    for choice in (
        "?status__exact=canceling",
        "?action_ref=examples.print_lines",
        f"?tenant__id__exact={other_tenant.id}",
        "Past 7 days",
    ):
        assert choice in text


def test_it_searches_executions_by_id_and_action(admin_client, actions, tenant):
    lines = _run(actions, tenant=tenant)
    failing = _run(actions, "examples.fail", tenant=tenant)

    assert _listed(admin_client.get(EXECUTIONS, {"q": lines.id})) == {lines.id}
    assert _listed(admin_client.get(EXECUTIONS, {"q": f" {lines.id.lower()} "})) == {lines.id}
    assert _listed(admin_client.get(EXECUTIONS, {"q": "examples.fail"})) == {failing.id}
    assert _listed(admin_client.get(EXECUTIONS, {"q": "fail"})) == {failing.id}
    assert _listed(admin_client.get(EXECUTIONS, {"q": "nothing-like-this"})) == set()


def test_it_shows_an_execution_read_only_with_secrets_masked(admin_client, actions, tenant):
    execution = _run(actions, "examples.echo_secret", {"password": SECRET}, tenant=tenant)
    services.finish(
        execution.id,
        "succeeded",
        exit_code=0,
        result={"echo": f"the password is {SECRET}"},
        error=f"stderr mentioned {SECRET}",
    )

    response = admin_client.get(f"{EXECUTIONS}{execution.id}/change/")

    assert response.status_code == 200
    assert SECRET not in response.text
    assert "&quot;password&quot;: &quot;********&quot;" in response.text
    assert "the password is ********" in response.text
    assert "stderr mentioned ********" in response.text
    assert f'href="/executions/{execution.id}/"' in response.text
    assert 'name="_save"' not in response.text
    assert 'name="status"' not in response.text


def test_it_shows_the_last_200_output_lines(admin_client, actions, tenant):
    execution = _run(actions, tenant=tenant)
    _add_output(execution, 250)

    response = admin_client.get(f"{EXECUTIONS}{execution.id}/change/")

    assert ADMIN_OUTPUT_LINES == 200
    assert response.status_code == 200
    assert "Line: 250\n" in response.text
    assert "Line: 51\n" in response.text
    assert "Line: 50\n" not in response.text
    assert response.text.index("Line: 51\n") < response.text.index("Line: 250\n")
    assert 'class="tg-stderr" title="#51"' in response.text


def test_it_escapes_output(admin_client, actions, tenant):
    execution = _run(actions, tenant=tenant)
    OutputChunk.objects.create(
        execution=execution,
        seq=1,
        output_type="stdout",
        data="<script>x</script>\n",
        timestamp=timezone.now(),
    )

    response = admin_client.get(f"{EXECUTIONS}{execution.id}/change/")

    assert "&lt;script&gt;x&lt;/script&gt;" in response.text
    assert "<script>x</script>" not in response.text


def test_it_says_when_output_was_purged(admin_client, actions, tenant):
    execution = _run(actions, tenant=tenant)
    services.finish(execution.id, "succeeded", exit_code=0)
    purged = datetime(2030, 1, 2, 3, 4, tzinfo=UTC)
    Execution.objects.filter(pk=execution.id).update(output_purged_at=purged)

    response = admin_client.get(f"{EXECUTIONS}{execution.id}/change/")

    assert "output purged on 2030-01-02 03:04 UTC" in response.text


def test_it_reloads_the_detail_only_while_the_execution_runs(admin_client, actions, tenant):
    execution = _run(actions, tenant=tenant)
    page = f"{EXECUTIONS}{execution.id}/change/"
    assert "window.location.reload" in admin_client.get(page).text

    services.finish(execution.id, "canceled")

    assert "window.location.reload" not in admin_client.get(page).text


def test_it_says_when_there_is_no_output(admin_client, actions, tenant):
    execution = _run(actions, tenant=tenant)

    assert "(no output yet)" in admin_client.get(f"{EXECUTIONS}{execution.id}/change/").text


def test_it_lists_output_rows(admin_client, actions, tenant):
    execution = _run(actions, tenant=tenant)
    other = _run(actions, tenant=tenant)
    _add_output(execution, 3)
    _add_output(other, 2)

    everything = admin_client.get(OUTPUT)
    one = admin_client.get(OUTPUT, {"q": other.id})

    assert everything.status_code == 200
    assert len(everything.context["cl"].result_list) == 5
    assert {c.execution_id for c in one.context["cl"].result_list} == {other.id}
    assert "Line: 3" in everything.text


def test_it_allows_no_changes(admin_client, actions, tenant):
    execution = _run(actions, tenant=tenant)

    assert admin_client.get(f"{EXECUTIONS}add/").status_code == 403
    assert (
        admin_client.post(f"{EXECUTIONS}{execution.id}/change/", {"status": "failed"}).status_code
        == 403
    )
    assert admin_client.get(f"{EXECUTIONS}{execution.id}/delete/").status_code == 403
    execution.refresh_from_db()
    assert execution.status == "scheduled"


def test_it_keeps_the_admin_from_staff_without_it(client, member):
    client.force_login(member)

    response = client.get(EXECUTIONS)

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def _insert_million_rows(execution: Execution) -> None:
    """One INSERT … SELECT over a generated series: a few seconds, not minutes of ORM."""
    if connection.vendor == "postgresql":
        series = "generate_series(1, %s) AS s(i)"
        newline = "E'\\n'"
    else:
        series = (
            "(WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < %s) "
            "SELECT i FROM n) AS s"
        )
        newline = "char(10)"
    table = OutputChunk._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (execution_id, seq, output_type, data, timestamp) "
            f"SELECT %s, i, CASE WHEN i %% 2 = 1 THEN 'stderr' ELSE 'stdout' END, "
            f"'Line: ' || i || {newline}, %s FROM {series}",
            [execution.id, timezone.now(), MILLION],
        )
    services.advance_last_seq(execution.id, MILLION)


def _output_queries(captured: CaptureQueriesContext) -> list[str]:
    table = OutputChunk._meta.db_table
    return [q["sql"] for q in captured.captured_queries if table in q["sql"]]


@pytest.mark.slow
def test_it_stays_fast_over_a_million_output_rows(admin_client, actions, tenant):
    big = _run(actions, tenant=tenant)
    _insert_million_rows(big)
    small = _run(actions, tenant=tenant)
    _add_output(small, 5)
    assert OutputChunk.objects.filter(execution=big, seq=MILLION).exists()
    # session, user, then per page: list = tenants filter, capped count, rows, action refs;
    # detail = execution with tenant, rbac's grant and visibility checks (3), newest output;
    # output list = capped count, rows.
    pages = {
        "execution list": (EXECUTIONS, 6),
        "execution list, filtered": (f"{EXECUTIONS}?status__exact=scheduled&q=print", 6),
        "execution list, searched": (f"{EXECUTIONS}?q={big.id.lower()}", 6),
        "execution detail": (f"{EXECUTIONS}{big.id}/change/", 8),
        "output list": (OUTPUT, 4),
        "output list, searched": (f"{OUTPUT}?q={small.id}", 4),
    }

    for name, (url, expected) in pages.items():
        admin_client.get(url)  # warm the caches (templates, content types) first
        with CaptureQueriesContext(connection) as captured:
            started = time.monotonic()
            response = admin_client.get(url)
            elapsed = time.monotonic() - started
        print(f"{name}: {elapsed:.3f} s")
        assert response.status_code == 200, name
        queries = [q["sql"] for q in captured.captured_queries]
        assert len(queries) == expected, "\n".join([name, *queries])
        for sql in _output_queries(captured):
            if "COUNT(" in sql.upper():
                assert re.search(r"COUNT\(\*\) FROM \(SELECT .* LIMIT \d+\) subquery", sql), sql
            elif not re.search(r"\bLIMIT\b", sql):
                # Only a one-page list reads without LIMIT, after its capped count said so.
                cl = response.context["cl"]
                assert not cl.multi_page and cl.result_count <= cl.list_per_page, (name, sql)

    detail = admin_client.get(f"{EXECUTIONS}{big.id}/change/").text
    assert f"Line: {MILLION}\n" in detail
    assert f"Line: {MILLION - ADMIN_OUTPUT_LINES + 1}\n" in detail
    assert f"Line: {MILLION - ADMIN_OUTPUT_LINES}\n" not in detail
    found = admin_client.get(f"{EXECUTIONS}?q={big.id.lower()}")
    assert _listed(found) == {big.id}
    searched = admin_client.get(OUTPUT, {"q": small.id}).context["cl"].result_list
    assert [(c.execution_id, c.seq) for c in searched] == [(small.id, s) for s in (5, 4, 3, 2, 1)]


def test_it_caps_the_count_of_a_long_list(actions, tenant):
    execution = _run(actions, tenant=tenant)
    _add_output(execution, CappedCountPaginator.CAP + 50)
    rows = OutputChunk.objects.order_by("seq")

    assert CappedCountPaginator(rows, 100).count == CappedCountPaginator.CAP + 1
    assert CappedCountPaginator(rows[:20], 100).count == 20


def _demo_user() -> str:
    out = StringIO()
    call_command("demo_user", stdout=out)
    return out.getvalue()


def _logs_in(client, password: str) -> bool:
    response = client.post(
        "/admin/login/?next=/admin/", {"username": "admin", "password": password}
    )
    return response.status_code == 302 and response["Location"] == "/admin/"


def test_it_creates_the_demo_admin_with_the_chosen_password(client, db, monkeypatch):
    monkeypatch.setenv("TAILGATE_DEMO_PASSWORD", "chosen-demo-password")

    out = _demo_user()

    assert "Created demo superuser. Log in as admin" in out
    assert "chosen-demo-password" not in out
    assert _logs_in(client, "chosen-demo-password")
    user = get_user_model().objects.get(username="admin")
    assert user.is_superuser and user.is_staff and user.is_active


def test_it_prints_a_generated_password(client, db, monkeypatch):
    monkeypatch.delenv("TAILGATE_DEMO_PASSWORD", raising=False)

    out = _demo_user()

    password = re.search(r"with password (\S+)", out).group(1)
    assert len(password) >= 12
    assert _logs_in(client, password)
    assert not _logs_in(client, password + "x")


def test_it_resets_the_password_when_run_again(client, db, monkeypatch):
    monkeypatch.delenv("TAILGATE_DEMO_PASSWORD", raising=False)
    first = re.search(r"with password (\S+)", _demo_user()).group(1)

    out = _demo_user()

    second = re.search(r"with password (\S+)", out).group(1)
    assert out.startswith("Reset demo superuser.")
    assert second != first
    assert get_user_model().objects.filter(username="admin").count() == 1
    assert not _logs_in(client, first)
    assert _logs_in(client, second)


def test_it_lets_the_demo_admin_browse_the_example_actions(client, actions, monkeypatch):
    monkeypatch.setenv("TAILGATE_DEMO_PASSWORD", "chosen-demo-password")
    _demo_user()
    assert _logs_in(client, "chosen-demo-password")

    response = client.get("/admin/executions/action/", {"pack__exact": "examples"})

    assert response.status_code == 200
    assert "examples.print_lines" in response.text
    assert "core.local" not in response.text
