"""`GET /api/v1/executions/{id}/output/stream`: SSE of one execution's output, frame by frame."""

import asyncio

import pytest
from channels.layers import channel_layers, get_channel_layer
from django.conf import settings as django_settings
from django.utils import timezone

from executions import publish, services
from executions.models import Execution, OutputChunk
from executions.runner_service import RunnerService
from streaming.live import LIVE_BUFFER_MESSAGES
from tests.streaming_helpers import (
    Response,
    db,
    eventually,
    finish,
    followers,
    group_size,
    ring,
    seqs,
    store,
    write,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("home_loop")]


def path(execution) -> str:
    return f"/api/v1/executions/{execution.id}/output/stream"


async def test_it_replays_then_follows_live_then_ends_with_done(execution, member):
    await db(store)(execution, ["one\n", "two\n"])
    response = await Response.get(path(execution), user=member)
    assert response.status == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    first = await response.next_sse(comments=True)
    assert first == {"retry": "2000"}
    replayed = [await response.next_sse(), await response.next_sse()]
    assert [(f["id"], f["data"]["data"]) for f in replayed] == [(1, "one\n"), (2, "two\n")]

    await write(execution, ["three\n"], "stderr")
    live = await response.next_sse()
    assert live["event"] == "execution.output__create"
    assert live["id"] == 3
    assert live["data"] == {
        "seq": 3,
        "execution_id": execution.id,
        "output_type": "stderr",
        "data": "three\n",
        "timestamp": live["data"]["timestamp"],
        "action_ref": "examples.print_lines",
        "runner_ref": "local-shell-script",
    }
    await finish(execution)
    done = await response.next_sse()
    assert done["event"] == "done"
    assert "id" not in done
    assert done["data"] == {"final_seq": 3, "status": "succeeded", "exit_code": 0}
    await response.body()
    assert response.ended


async def test_it_gives_replayed_and_live_chunks_the_same_payload(execution, member):
    batch = await db(store)(execution, ["same\n"])
    response = await Response.get(path(execution), user=member)
    replayed = await response.next_sse()
    await ring(execution, batch)  # the same chunk again, live: dropped as seq <= last sent
    await write(execution, ["next\n"])
    live = await response.next_sse()
    assert live["id"] == 2
    assert set(replayed["data"]) == set(live["data"])
    assert replayed["data"]["runner_ref"] == live["data"]["runner_ref"]


async def test_it_sends_a_chunk_committed_before_its_late_doorbell_exactly_once(execution, member):
    await write(execution, ["a\n"])
    late = await db(store)(execution, ["b\n", "c\n"])  # in the log, not yet announced
    response = await Response.get(path(execution), user=member)
    frames = [await response.next_sse() for _ in range(3)]
    await ring(execution, late)  # the doorbell for chunks already replayed
    await write(execution, ["d\n"])
    await finish(execution)
    frames += await response.events_until("done")
    assert seqs(frames) == [1, 2, 3, 4]


async def test_it_backfills_from_the_log_when_the_layer_lost_a_batch(execution, member):
    response = await Response.get(path(execution), user=member)
    await eventually(lambda: group_size(publish.execution_group(execution.id)), what="subscribe")
    await write(execution, ["1\n", "2\n"])
    await db(store)(execution, ["3\n", "4\n"])  # its message never arrives
    await write(execution, ["5\n"])  # starts at 5 while 2 was the last sent: a jump
    await finish(execution)
    frames = await response.events_until("done")
    assert seqs(frames) == [1, 2, 3, 4, 5]
    assert [f["data"]["data"] for f in frames[:-1]] == ["1\n", "2\n", "3\n", "4\n", "5\n"]


async def test_it_reads_a_batch_too_big_to_inline_from_the_log(execution, member):
    response = await Response.get(path(execution), user=member)
    await eventually(lambda: group_size(publish.execution_group(execution.id)), what="subscribe")
    batch = await db(store)(execution, [f"{i}\n" for i in range(1, 31)])
    await ring(execution, batch, inline=False)
    await finish(execution)
    frames = await response.events_until("done")
    assert seqs(frames) == list(range(1, 31))


async def test_it_catches_up_from_the_log_when_its_buffer_overflows(execution, member, settings):
    # Messages are put straight on the stream's channel, without yielding to its pump, so
    # more than the buffer holds arrive at once (the layer's own capacity is above that).
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 10 * LIVE_BUFFER_MESSAGES},
        }
    }
    channel_layers.backends.clear()
    response = await Response.get(path(execution), user=member)
    layer = get_channel_layer()
    group = publish.execution_group(execution.id)
    await eventually(lambda: group_size(group), what="subscribe")
    (channel,) = layer.groups[group]
    count = LIVE_BUFFER_MESSAGES + 50
    batches = [await db(store)(execution, [f"{i}\n"]) for i in range(1, count + 1)]
    for batch in batches:
        chunks = batch.as_messages(execution.action_ref, execution.runner_type)
        await layer.send(
            channel,
            publish.output_batch_message(execution.id, batch.first_seq, batch.last_seq, chunks),
        )
    await finish(execution)
    frames = await response.events_until("done")
    assert seqs(frames) == list(range(1, count + 1))


async def test_it_continues_exactly_after_last_event_id(execution, member):
    await db(store)(execution, [f"{i}\n" for i in range(1, 21)])
    await finish(execution)
    response = await Response.get(
        path(execution), "from=-3", user=member, headers=[(b"last-event-id", b"7")]
    )
    frames = await response.events_until("done")
    assert seqs(frames) == list(range(8, 21))
    assert [f["id"] for f in frames[:-1]] == list(range(8, 21))
    assert frames[-1]["data"]["final_seq"] == 20


async def test_it_counts_a_negative_from_back_from_the_end_and_says_what_it_skipped(
    execution, member
):
    await db(store)(execution, [f"{i}\n" for i in range(1, 51)])
    response = await Response.get(path(execution), "from=-10", user=member)
    gap = await response.next_sse()
    assert gap == {
        "event": "gap",
        "data": {"execution_id": execution.id, "from_seq": 1, "to_seq": 40, "reason": "from"},
    }
    frames = [await response.next_sse() for _ in range(10)]
    assert seqs(frames) == list(range(41, 51))
    await write(execution, ["51\n"])
    assert (await response.next_sse())["id"] == 51


async def test_it_cuts_the_replay_at_replay_limit_with_a_gap(execution, member):
    await db(store)(execution, [f"{i}\n" for i in range(1, 51)])
    await finish(execution)
    response = await Response.get(path(execution), "from=0&replay_limit=10", user=member)
    frames = await response.events_until("done")
    assert frames[0]["event"] == "gap"
    assert frames[0]["data"]["from_seq"] == 1
    assert frames[0]["data"]["to_seq"] == 40
    assert frames[0]["data"]["reason"] == "replay_limit"
    assert seqs(frames) == list(range(41, 51))


async def test_it_sends_one_type_with_seqs_as_ids_and_the_true_final_seq(execution, member):
    await db(store)(execution, ["o1\n"], "stdout")
    await db(store)(execution, ["e2\n"], "stderr")
    await db(store)(execution, ["o3\n", "o4\n"], "stdout")
    await write(execution, ["e5\n"], "stderr")
    await write(execution, ["o6\n"], "stdout")
    await finish(execution, "failed", exit_code=3)
    response = await Response.get(path(execution), "type=stderr&from=0", user=member)
    frames = await response.events_until("done")
    assert [f["id"] for f in frames[:-1]] == [2, 5]
    assert frames[-1]["data"] == {"final_seq": 6, "status": "failed", "exit_code": 3}


async def test_it_answers_a_finished_execution_at_once(execution, member):
    await db(store)(execution, ["only\n"])
    await finish(execution)
    response = await Response.get(path(execution), user=member)
    frames = await response.events_until("done")
    assert seqs(frames) == [1]
    await response.body()  # and the response ends


async def test_it_says_when_the_output_was_purged(execution, member):
    await db(store)(execution, ["1\n", "2\n"])
    await finish(execution)
    purged_at = timezone.now()

    def purge():
        OutputChunk.objects.filter(execution_id=execution.id).delete()
        Execution.objects.filter(pk=execution.id).update(output_purged_at=purged_at)

    await db(purge)()
    response = await Response.get(path(execution), "from=0", user=member)
    gap, done = await response.events_until("done")
    assert gap["data"] == {
        "execution_id": execution.id,
        "from_seq": 1,
        "to_seq": 2,
        "reason": "purged",
    }
    assert done["data"]["final_seq"] == 2
    assert done["data"]["output_purged_at"] == purged_at.isoformat()


async def test_it_resolves_last(execution, member):
    await write(execution, ["x\n"])
    await finish(execution)
    response = await Response.get("/api/v1/executions/last/output/stream", user=member)
    assert response.headers["x-execution-id"] == execution.id
    frames = await response.events_until("done")
    assert seqs(frames) == [1]


@pytest.mark.parametrize(
    ("query", "headers", "location"),
    [
        ("from=abc", [], "query.from"),
        ("from=1.5", [], "query.from"),
        ("replay_limit=0", [], "query.replay_limit"),
        ("replay_limit=50001", [], "query.replay_limit"),
        ("replay_limit=", [], "query.replay_limit"),
        ("type=stdin", [], "query.type"),
        ("from=1&from=2", [], "query.from"),
        ("", [(b"last-event-id", b"-1")], "header.Last-Event-ID"),
        ("", [(b"last-event-id", b"seven")], "header.Last-Event-ID"),
    ],
)
async def test_it_refuses_bad_parameters_before_the_stream(
    execution, member, query, headers, location
):
    response = await Response.get(path(execution), query, user=member, headers=headers)
    await response.body()
    assert response.status == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert problem["instance"] == path(execution)
    assert [e["location"] for e in problem["errors"]] == [location]


async def test_it_answers_404_for_missing_hidden_and_malformed_ids(execution, outsider, member):
    for who, execution_id in [
        (outsider, execution.id),
        (member, "01J0000000000000000000000Z"),
        (member, "nope"),
    ]:
        response = await Response.get(f"/api/v1/executions/{execution_id}/output/stream", user=who)
        await response.body()
        assert response.status == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"] == f"There is no execution {execution_id}."


async def test_it_answers_401_to_anonymous_and_405_to_post(execution, member):
    anonymous = await Response.get(path(execution))
    await anonymous.body()
    assert (anonymous.status, anonymous.json()["status"]) == (401, 401)
    post = await Response.get(path(execution), user=member, method="POST")
    await post.body()
    assert post.status == 405
    assert post.headers["allow"] == "GET"


async def test_it_sends_keepalive_comments(execution, member, settings):
    settings.STREAM_KEEPALIVE_SECONDS = 0.05
    response = await Response.get(path(execution), user=member)
    assert await response.next_sse(comments=True) == {"retry": "2000"}
    assert await response.next_sse(comments=True) == {"comment": "keepalive"}


async def test_it_releases_everything_when_the_client_goes(execution, member, settings):
    settings.STREAM_GROUP_LINGER_SECONDS = 0.1
    response = await Response.get(path(execution), user=member)
    group = publish.execution_group(execution.id)
    await eventually(lambda: group_size(group), what="subscribe")
    await response.next_sse(comments=True)
    await response.disconnect()  # waits for the app to return
    assert await followers(group) == 0  # at once
    await eventually(lambda: _has(group, 0), what="the hub to leave the group")


async def test_it_stops_delivering_when_access_is_revoked(execution, member, settings):
    settings.STREAM_ACCESS_RECHECK_SECONDS = 0.1
    response = await Response.get(path(execution), user=member)
    await response.next_sse(comments=True)
    await db(member.tenant_grants.all().delete)()
    await response.body()
    assert response.ended


async def test_it_ends_even_when_the_final_doorbell_is_lost(execution, member, settings):
    settings.STREAM_ACCESS_RECHECK_SECONDS = 0.1
    await write(execution, ["1\n"])
    response = await Response.get(path(execution), user=member)
    await response.next_sse()
    publish.set_home_loop(None)
    await db(_finish_without_ringing)(execution.id)
    frames = await response.events_until("done")
    assert frames[-1]["data"]["final_seq"] == 1


def _finish_without_ringing(execution_id):
    Execution.objects.filter(pk=execution_id).update(status="succeeded", exit_code=0)


async def test_it_delivers_a_fast_execution_whole_through_a_layer_of_capacity_one(
    actions, tenant, member, settings
):
    """Thousands of lines to three clients through a layer that holds one message per channel.

    Whatever the layer drops here (it depends on timing) is healed from the log; the real
    server test pauses a web process to make drops certain.
    """
    layer_config = dict(django_settings.CHANNEL_LAYERS["default"])
    layer_config["CONFIG"] = {**layer_config.get("CONFIG", {}), "capacity": 1}
    settings.CHANNEL_LAYERS = {"default": layer_config}
    channel_layers.backends.clear()
    created = await db(services.create_execution)(
        actions["examples.print_lines"], {"count": 3000, "delay": 0}, tenant=tenant
    )
    clients = [await Response.get(path(created), "from=0", user=member) for _ in range(3)]
    group = publish.execution_group(created.id)
    await eventually(lambda: _following(group, 3), what="three subscribers")
    runner = asyncio.create_task(_run(created.id))
    received = [await client.events_until("done", timeout=60) for client in clients]
    assert (await runner).last_seq == 3000
    for frames in received:
        assert seqs(frames) == list(range(1, 3001))
        assert frames[-1]["data"]["final_seq"] == 3000


async def _has(group: str, count: int) -> bool:
    return await group_size(group) == count


async def _following(group: str, count: int) -> bool:
    return await followers(group) == count


async def _run(execution_id):
    """Run an execution created earlier (so the client could connect first) to its end."""
    service = RunnerService(concurrency=1)
    claimed = await service.control_db(services.claim, execution_id, service.runner_id)
    await service.control_db(lambda: claimed.action)
    try:
        return await service.execute(claimed, asyncio.Event())
    finally:
        await asyncio.get_running_loop().run_in_executor(None, service.close)


async def test_it_answers_429_before_the_stream_when_the_tenant_is_full(
    execution, member, settings
):
    import uuid

    settings.STREAM_MAX_CONNECTIONS_PER_TENANT = 1
    settings.STREAM_LIMIT_KEY_PREFIX = f"test-streams-{uuid.uuid4().hex}"  # apart from other runs
    first = await Response.get(path(execution), user=member)
    assert first.status == 200
    second = await Response.get(path(execution), user=member)
    await second.body()
    assert (second.status, second.headers["content-type"]) == (429, "application/problem+json")
    assert second.headers["retry-after"] == str(settings.STREAM_RETRY_AFTER_SECONDS)
    await first.disconnect()  # frees the slot
    third = await Response.get(path(execution), user=member)
    assert third.status == 200
    await third.disconnect()
