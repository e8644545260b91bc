"""`GET /api/v1/executions/{id}/output`: the output as plain text, live until the end."""

import pytest
from django.utils import timezone

from executions.models import Execution, OutputChunk
from tests.runner_helpers import run_execution
from tests.streaming_helpers import (
    Response,
    db,
    finish,
    store,
    write,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("home_loop")]


def path(execution) -> str:
    return f"/api/v1/executions/{execution.id}/output"


async def test_it_returns_a_finished_execution_at_once(actions, tenant, member):
    finished = await run_execution(
        actions["examples.print_lines"], {"count": 4, "delay": 0}, tenant=tenant
    )
    response = await Response.get(path(finished), user=member)
    assert response.status == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["x-execution-id"] == finished.id
    body = (await response.body()).decode()
    stored = await db(
        lambda: "".join(
            OutputChunk.objects.filter(execution_id=finished.id)
            .order_by("seq")
            .values_list("data", flat=True)
        )
    )()
    assert body == stored
    assert body.count("\n") == 4


async def test_it_sends_everything_so_far_then_live_lines_then_ends(execution, member):
    await db(store)(execution, ["first\n", "second "])
    response = await Response.get(path(execution), user=member)
    # An empty body first: daphne sends the status and headers with it, before any output.
    assert await response.read_message() == b""
    assert await response.read_message() == b"first\nsecond "
    await write(execution, ["half\n"])
    assert await response.read_message() == b"half\n"
    assert not response.ended
    await write(execution, ["last\n"], "stderr")
    assert await response.read_message() == b"last\n"
    await finish(execution)
    assert await response.body() == b"first\nsecond half\nlast\n"
    assert response.ended


async def test_it_sends_only_the_type_asked_for(execution, member):
    await db(store)(execution, ["out\n"], "stdout")
    await db(store)(execution, ["err\n"], "stderr")
    await finish(execution)
    response = await Response.get(path(execution), "type=stderr", user=member)
    assert await response.body() == b"err\n"


async def test_it_says_the_output_was_purged_instead_of_showing_nothing(execution, member):
    await db(store)(execution, ["gone\n"])
    await finish(execution)
    purged_at = timezone.now()

    def purge():
        OutputChunk.objects.filter(execution_id=execution.id).delete()
        Execution.objects.filter(pk=execution.id).update(output_purged_at=purged_at)

    await db(purge)()
    response = await Response.get(path(execution), user=member)
    assert await response.body() == b""
    assert response.headers["x-output-purged-at"] == purged_at.isoformat()


async def test_it_refuses_a_bad_type_before_the_output(execution, member):
    response = await Response.get(path(execution), "type=all", user=member)
    await response.body()
    assert response.status == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"] == [
        {
            "location": "query.type",
            "message": "must be one of stdout, stderr, other",
            "value": "all",
        }
    ]


async def test_it_answers_404_and_401_as_problems(execution, outsider):
    hidden = await Response.get(path(execution), user=outsider)
    await hidden.body()
    assert hidden.status == 404
    assert hidden.json()["title"] == "Not Found"
    anonymous = await Response.get(path(execution))
    await anonymous.body()
    assert anonymous.status == 401
    assert anonymous.headers["content-type"] == "application/problem+json"
