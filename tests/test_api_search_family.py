"""`GET /executions/<id>/search?family=true`: search an execution and its visible descendants
(the sections of its page) in bounded steps, with a cursor (`in`, `from`) between requests."""

import pytest
from django.utils import timezone

from executions import services
from executions.models import Execution, OutputChunk
from executions.web.search import SEARCH_MAX_MATCHES, SEARCH_SCAN_ROWS

pytestmark = pytest.mark.django_db

MISSING_ID = "01J0000000000000000000000Z"


def _run(actions, tenant, parent=None, name="") -> Execution:
    return services.create_execution(
        actions["examples.print_lines"], {}, tenant=tenant, parent=parent, task_name=name
    )


def _add_output(execution: Execution, lines: list[str]) -> None:
    now = timezone.now()
    OutputChunk.objects.bulk_create(
        OutputChunk(execution=execution, seq=seq, output_type="stdout", data=text, timestamp=now)
        for seq, text in enumerate(lines, start=1)
    )
    Execution.objects.filter(pk=execution.pk).update(last_seq=len(lines))


def _search(client, execution, query: str):
    return client.get(f"/executions/{execution.id}/search?family=true&{query}")


@pytest.fixture
def family(actions, tenant) -> dict[str, Execution]:
    """A parent with two hosts, the first with a task of its own; each prints a needle."""
    root = _run(actions, tenant)
    first = _run(actions, tenant, parent=root, name="first")
    second = _run(actions, tenant, parent=root, name="second")
    nested = _run(actions, tenant, parent=first, name="nested")
    _add_output(root, ["root hay\n", "root NEEDLE\n"])
    _add_output(first, ["first needle\n", "hay\n", "needle again\n"])
    _add_output(second, ["hay\n"])
    _add_output(nested, ["hay\n", "hay\n", "nested needle\n"])
    return {"root": root, "first": first, "second": second, "nested": nested}


def test_it_finds_matches_in_the_execution_and_every_descendant(client, member, family):
    client.force_login(member)
    body = _search(client, family["root"], "q=needle").json()
    found = [(match["execution"], match["seq"]) for match in body["matches"]]
    assert sorted(found) == sorted(
        [
            (family["root"].id, 2),
            (family["first"].id, 1),
            (family["first"].id, 3),
            (family["nested"].id, 3),
        ]
    )
    assert found[0] == (family["root"].id, 2)  # the execution first, then its sections
    assert body["next"] is None


def test_it_searches_from_a_section_down_only(client, member, family):
    client.force_login(member)
    body = _search(client, family["first"], "q=needle").json()
    assert {match["execution"] for match in body["matches"]} == {
        family["first"].id,
        family["nested"].id,
    }


def test_it_resumes_at_the_cursor_it_gave(client, member, actions, tenant):
    root = _run(actions, tenant)
    child = _run(actions, tenant, parent=root, name="child")
    _add_output(root, ["needle\n"] * (SEARCH_MAX_MATCHES + 5))
    _add_output(child, ["needle\n"] * 3)
    client.force_login(member)
    first = _search(client, root, "q=needle").json()
    assert len(first["matches"]) == SEARCH_MAX_MATCHES
    assert first["next"] == {"in": root.id, "from": SEARCH_MAX_MATCHES + 1}
    cursor = first["next"]
    rest = _search(client, root, f"q=needle&in={cursor['in']}&from={cursor['from']}").json()
    assert [(m["execution"], m["seq"]) for m in rest["matches"]] == [
        *((root.id, seq) for seq in range(SEARCH_MAX_MATCHES + 1, SEARCH_MAX_MATCHES + 6)),
        *((child.id, seq) for seq in (1, 2, 3)),
    ]
    assert rest["next"] is None


def test_it_scans_a_bounded_number_of_lines_per_request(client, member, actions, tenant):
    root = _run(actions, tenant)
    child = _run(actions, tenant, parent=root, name="child")
    OutputChunk.objects.bulk_create(
        OutputChunk(
            execution=root, seq=seq, output_type="stdout", data="hay\n", timestamp=timezone.now()
        )
        for seq in range(1, SEARCH_SCAN_ROWS - 1)
    )
    Execution.objects.filter(pk=root.pk).update(last_seq=SEARCH_SCAN_ROWS - 2)
    _add_output(child, ["hay\n", "hay\n", "hay\n", "needle\n"])
    client.force_login(member)
    first = _search(client, root, "q=needle").json()
    assert first == {"matches": [], "next": {"in": child.id, "from": 3}}  # 2 seqs of budget left
    rest = _search(client, root, f"q=needle&in={child.id}&from=3").json()
    assert rest == {"matches": [{"execution": child.id, "seq": 4}], "next": None}


def test_it_leaves_out_descendants_the_caller_may_not_see(
    client, member, actions, tenant, other_tenant
):
    root = _run(actions, tenant)
    hidden = _run(actions, other_tenant, parent=root, name="elsewhere")
    _add_output(root, ["needle\n"])
    _add_output(hidden, ["needle\n"])
    client.force_login(member)
    body = _search(client, root, "q=needle").json()
    assert body["matches"] == [{"execution": root.id, "seq": 1}]
    refused = _search(client, root, f"q=needle&in={hidden.id}")
    assert (refused.status_code, refused["Content-Type"]) == (422, "application/problem+json")


@pytest.mark.parametrize(
    "query",
    [
        "q=a&family=maybe",
        "q=a&family=true&in=nope",
        f"q=a&family=true&in={MISSING_ID}",
        "q=a&family=true&in=",
        "q=a&family=true&from=0",
        "family=true",
    ],
)
def test_it_refuses_a_bad_family_search(client, member, family, query):
    client.force_login(member)
    response = client.get(f"/executions/{family['root'].id}/search?{query}")
    assert (response.status_code, response["Content-Type"]) == (422, "application/problem+json")
    assert response.json()["errors"][0]["location"].startswith("query.")


def test_it_refuses_a_cursor_without_family(client, member, family):
    client.force_login(member)
    response = client.get(f"/executions/{family['root'].id}/search?q=a&in={family['first'].id}")
    assert response.status_code == 422
    assert response.json()["errors"][0]["location"] == "query.in"


def test_it_hides_a_family_search_from_outsiders_and_anonymous_callers(client, outsider, family):
    assert _search(client, family["root"], "q=needle").status_code == 401
    client.force_login(outsider)
    hidden = _search(client, family["root"], "q=needle")
    assert (hidden.status_code, hidden["Content-Type"]) == (404, "application/problem+json")
    assert "matches" not in hidden.json()
