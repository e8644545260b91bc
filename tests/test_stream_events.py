"""`GET /api/v1/stream`: the global event stream, frame by frame."""

import itertools
from datetime import timedelta

import pytest
from channels.layers import channel_layers, get_channel_layer
from django.utils import timezone

from executions import publish, services
from executions.models import ExecutionEvent
from streaming.event_ids import decode as id_of
from streaming.event_ids import encode as token
from streaming.live import LIVE_BUFFER_MESSAGES
from tests.streaming_helpers import (
    Response,
    db,
    eventually,
    finish,
    followers,
    group_size,
    running_execution,
    store,
    write,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("home_loop")]

PATH = "/api/v1/stream"


@pytest.fixture
def in_memory_layer(settings):
    """A layer the test can fill faster than a stream's pump drains it (one event loop)."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 10 * LIVE_BUFFER_MESSAGES},
        }
    }
    channel_layers.backends.clear()


async def connect(user, query: str = "", last_event_id: int | None = None, tenant=None):
    headers = [] if last_event_id is None else [(b"last-event-id", str(last_event_id).encode())]
    response = await Response.get(PATH, query, user=user, headers=headers)
    assert response.status == 200, await response.body()
    if tenant is not None:
        group = publish.tenant_events_group(tenant.id)
        await eventually(lambda: group_size(group), what="the stream to subscribe")
    return response


def event_ids(execution_id=None) -> list[int]:
    events = ExecutionEvent.objects.order_by("id")
    if execution_id:
        events = events.filter(execution_id=execution_id)
    return list(events.values_list("id", flat=True))


async def test_it_sends_lifecycle_events_of_visible_tenants_only(
    actions, tenant, other_tenant, member
):
    response = await connect(member, tenant=tenant)
    action = actions["examples.print_lines"]
    await db(services.create_execution)(action, {"count": 1}, tenant=other_tenant)
    mine = await db(running_execution)(action, tenant)
    created, running = await response.next_sse(), await response.next_sse()
    assert (created["event"], created["data"]["id"], created["data"]["status"]) == (
        "execution__create",
        mine.id,
        "scheduled",
    )
    assert (running["event"], running["data"]["status"]) == ("execution__update", "running")
    assert [id_of(created["id"]), id_of(running["id"])] == await db(event_ids)(mine.id)
    assert created["data"]["tenant"] == "default"
    await write(mine, ["not asked for\n"])  # output is opt-in
    await finish(mine)
    assert (await response.next_sse())["data"]["status"] == "succeeded"


async def test_it_applies_every_filter_on_the_server(actions, tenant, member):
    lines, fail = actions["examples.print_lines"], actions["examples.fail"]
    parent = await db(running_execution)(lines, tenant)
    query = f"events=execution__u*&action=examples.print_lines&status=succeeded,failed&tenant=default&parent={parent.id}"
    response = await connect(member, query, tenant=tenant)

    def child(action):
        execution = services.create_execution(action, {}, tenant=tenant, parent=parent)
        services.claim(execution.id, "test-runner")
        return execution

    other_action = await db(child)(fail)
    wanted = await db(child)(lines)
    await finish(other_action, "failed", exit_code=1)  # other action
    await finish(parent)  # not a child of itself
    await finish(wanted, "failed", exit_code=2)
    frame = await response.next_sse()
    assert (frame["event"], frame["data"]["id"], frame["data"]["status"]) == (
        "execution__update",
        wanted.id,
        "failed",
    )
    only = await connect(member, f"execution={wanted.id.lower()}&events=*")
    await write(wanted, ["x\n"])
    assert (await only.next_sse())["data"]["data"] == "x\n"


async def test_it_sends_output_only_when_asked_and_without_ids(actions, tenant, member):
    execution = await db(running_execution)(actions["examples.print_lines"], tenant)
    response = await connect(member, "events=execution.output__create", tenant=tenant)
    await eventually(lambda: group_size(publish.tenant_output_group(tenant.id)), what="output")
    await write(execution, ["one\n", "two\n"])
    await db(store)(execution, ["three\n"])  # the layer lost this batch's message
    await write(execution, ["four\n"])
    await finish(execution)
    frames = [await response.next_sse() for _ in range(4)]
    assert [f["data"]["seq"] for f in frames] == [1, 2, 3, 4]
    assert all(f["event"] == "execution.output__create" and "id" not in f for f in frames)


async def test_it_resumes_exactly_after_last_event_id(actions, tenant, member):
    first = await db(running_execution)(actions["examples.print_lines"], tenant)
    await finish(first)
    ids = await db(event_ids)()
    response = await connect(member, last_event_id=token(ids[0]), tenant=tenant)
    replayed = [await response.next_sse() for _ in ids[1:]]
    assert [id_of(f["id"]) for f in replayed] == ids[1:]
    second = await db(running_execution)(actions["examples.print_lines"], tenant)
    live = await response.next_sse()
    assert live["data"]["id"] == second.id and id_of(live["id"]) > ids[-1]


async def test_it_resets_a_cursor_older_than_the_retention(actions, tenant, member, settings):
    old = await db(running_execution)(actions["examples.print_lines"], tenant)
    old_ids = await db(event_ids)()
    long_ago = timezone.now() - timedelta(hours=settings.EVENT_RETENTION_HOURS + 1)
    await db(ExecutionEvent.objects.filter(execution_id=old.id).update)(created_at=long_ago)
    recent = await db(running_execution)(actions["examples.print_lines"], tenant)
    recent_ids = await db(event_ids)(recent.id)
    response = await connect(member, last_event_id=token(old_ids[0]), tenant=tenant)
    reset = await response.next_sse()
    assert reset == {
        "event": "reset",
        "id": token(recent_ids[0] - 1),
        "data": {"last_event_id": token(old_ids[0]), "earliest_id": token(recent_ids[0])},
    }
    assert [id_of((await response.next_sse())["id"]) for _ in recent_ids] == recent_ids


async def test_it_counts_lagged_output_after_its_own_filters(
    in_memory_layer, actions, tenant, other_tenant, member
):
    lines, fail = actions["examples.print_lines"], actions["examples.fail"]
    wanted = await db(running_execution)(lines, tenant)
    unwanted = await db(running_execution)(fail, tenant)
    hidden = await db(running_execution)(lines, other_tenant)
    query = "events=execution.output__create&action=examples.print_lines"
    response = await connect(member, query, tenant=tenant)
    layer = get_channel_layer()
    group = publish.tenant_output_group(tenant.id)
    await eventually(lambda: group_size(group), what="output subscription")
    (channel,) = layer.groups[group]
    total = LIVE_BUFFER_MESSAGES + 40
    for seq in range(1, total + 1):
        # Straight onto the process hub's channel, so it cannot drain in between.
        for execution in (wanted, unwanted, hidden):
            await layer.send(channel, _batch(execution, seq))
    frames = [await response.next_sse() for _ in range(LIVE_BUFFER_MESSAGES + 1)]
    delivered = frames[:-1]
    assert {f["data"]["execution_id"] for f in delivered} == {wanted.id}
    assert [f["data"]["seq"] for f in delivered] == list(range(1, LIVE_BUFFER_MESSAGES + 1))
    assert frames[-1]["event"] == "lagged"
    assert frames[-1]["data"]["skipped"] == 40  # none of the other two executions' chunks
    await layer.send(channel, _batch(wanted, total + 1))
    assert (await response.next_sse())["data"]["seq"] == total + 1


def _batch(execution, seq: int) -> dict:
    chunk = {
        "seq": seq,
        "execution_id": execution.id,
        "output_type": "stdout",
        "data": f"{seq}\n",
        "timestamp": timezone.now().isoformat(),
        "action_ref": execution.action_ref,
        "runner_ref": execution.runner_type,
    }
    message = publish.output_batch_message(execution.id, seq, seq, [chunk])
    message["tenant_id"] = execution.tenant_id
    return message


async def test_it_recovers_lifecycle_events_from_the_log_when_it_falls_behind(
    in_memory_layer, actions, tenant, member
):
    execution = await db(running_execution)(actions["examples.print_lines"], tenant)
    response = await connect(member, tenant=tenant)
    layer = get_channel_layer()
    (channel,) = layer.groups[publish.tenant_events_group(tenant.id)]
    rows = await db(_silent_events)(execution, LIVE_BUFFER_MESSAGES + 30)
    for row in rows:
        await layer.send(
            channel, publish.event_message(row.id, row.event, row.payload, row.tenant_id)
        )
    frames = [await response.next_sse() for _ in range(len(rows) + 1)]
    lagged = frames[LIVE_BUFFER_MESSAGES]
    assert lagged["event"] == "lagged"
    assert lagged["data"] == {"skipped": 0, "resumed_after": token(rows[0].id - 1)}
    events = frames[:LIVE_BUFFER_MESSAGES] + frames[LIVE_BUFFER_MESSAGES + 1 :]
    assert [id_of(f["id"]) for f in events] == [row.id for row in rows]


def _silent_events(execution, count: int) -> list[ExecutionEvent]:
    """Event rows written without ringing the layer (the test rings them itself)."""
    payload = services.execution_payload(execution)
    events = [
        ExecutionEvent(
            event=ExecutionEvent.UPDATE,
            execution=execution,
            tenant=execution.tenant,
            payload=payload,
        )
        for _ in range(count)
    ]
    ExecutionEvent.objects.bulk_create(events)
    return list(ExecutionEvent.objects.order_by("-id")[:count])[::-1]


async def test_it_delivers_an_event_whose_transaction_committed_late(actions, tenant, member):
    execution = await db(running_execution)(actions["examples.print_lines"], tenant)
    response = await connect(member, tenant=tenant)
    earlier, later = await db(_silent_events)(execution, 2)
    group = publish.tenant_events_group(tenant.id)
    # The later id's transaction committed first; and the layer delivers each doorbell twice.
    for row in (later, later, earlier, earlier):
        await publish.agroup_send(
            group, publish.event_message(row.id, row.event, row.payload, row.tenant_id)
        )
    frames = [await response.next_sse(), await response.next_sse()]
    assert [f["data"]["id"] for f in frames] == [execution.id, execution.id]
    # Each once; the cursor (`id:`) never goes back, so a reconnect repeats nothing.
    assert [id_of(f["id"]) for f in frames] == [later.id, later.id]
    await finish(execution)
    assert (await response.next_sse())["data"]["status"] == "succeeded"


@pytest.mark.parametrize(
    ("query", "location"),
    [
        ("events=bogus", "query.events"),
        ("events=", "query.events"),
        ("status=done", "query.status"),
        ("execution=123", "query.execution"),
        ("parent=last", "query.parent"),
        ("tenant=a&tenant=b", "query.tenant"),
    ],
)
async def test_it_refuses_bad_filters_before_the_stream(member, query, location):
    response = await Response.get(PATH, query, user=member)
    await response.body()
    assert response.status == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert [e["location"] for e in response.json()["errors"]] == [location]


async def test_it_refuses_a_malformed_last_event_id_and_anonymous_callers(member):
    bad = await Response.get(PATH, user=member, headers=[(b"last-event-id", b"x")])
    await bad.body()
    assert (bad.status, bad.json()["errors"][0]["location"]) == (422, "header.Last-Event-ID")
    anonymous = await Response.get(PATH)
    await anonymous.body()
    assert anonymous.status == 401


async def test_it_stops_delivering_a_tenant_whose_grant_is_removed(
    actions, tenant, other_tenant, member, settings
):
    from rbac.models import Role, TenantGrant

    settings.STREAM_ACCESS_RECHECK_SECONDS = 0.1
    action = actions["examples.print_lines"]
    response = await connect(member, tenant=tenant)
    await db(member.tenant_grants.all().delete)()
    await eventually(lambda: _empty(publish.tenant_events_group(tenant.id)), what="revocation")
    await db(services.create_execution)(action, {}, tenant=tenant)  # no longer visible
    await db(TenantGrant.objects.create)(user=member, tenant=other_tenant, role=Role.VIEWER)
    await eventually(lambda: group_size(publish.tenant_events_group(other_tenant.id)), what="grant")
    visible = await db(services.create_execution)(action, {}, tenant=other_tenant)
    assert (await response.next_sse())["data"]["id"] == visible.id


async def _empty(group: str) -> bool:
    return await followers(group) == 0


async def test_it_ends_the_stream_of_a_deactivated_user(tenant, member, settings):
    settings.STREAM_ACCESS_RECHECK_SECONDS = 0.1
    response = await connect(member, tenant=tenant)
    member.is_active = False
    await db(member.save)()
    await response.body()
    assert response.ended


async def test_it_finds_events_whose_doorbell_was_lost(actions, tenant, member, settings):
    settings.STREAM_ACCESS_RECHECK_SECONDS = 0.1
    execution = await db(running_execution)(actions["examples.print_lines"], tenant)
    response = await connect(member, tenant=tenant)
    (row,) = await db(_silent_events)(execution, 1)  # in the log, never announced
    frame = await response.next_sse()
    assert id_of(frame["id"]) == row.id


async def test_it_follows_a_tenant_created_after_it_opened(actions, tenant, superuser):
    from executions.models import Tenant

    response = await connect(superuser, tenant=tenant)
    late = await db(Tenant.objects.create)(slug="late", name="Late")
    group = publish.tenant_events_group(late.id)
    await eventually(lambda: followers(group), what="the new tenant's group")  # well within 5 s
    created = await db(services.create_execution)(actions["examples.print_lines"], {}, tenant=late)
    frame = await response.next_sse()
    assert (frame["event"], frame["data"]["id"]) == ("execution__create", created.id)
    await response.disconnect()


@pytest.mark.parametrize("ahead", [1000, None, 2**63 - 1])  # ahead, forged, out of range
async def test_it_resets_a_cursor_from_the_future_then_goes_live(actions, tenant, member, ahead):
    execution = await db(running_execution)(actions["examples.print_lines"], tenant)
    latest = (await db(event_ids)())[-1]
    beyond = token(latest + ahead) if ahead == 1000 else (2**52 - 1 if ahead is None else ahead)
    response = await connect(member, last_event_id=beyond, tenant=tenant)
    reset = await response.next_sse()
    assert (reset["event"], id_of(reset["id"])) == ("reset", latest)
    assert reset["data"]["last_event_id"] == beyond
    await finish(execution)
    live = await response.next_sse()  # then live, from now on
    assert (live["data"]["id"], live["data"]["status"]) == (execution.id, "succeeded")
    await response.disconnect()


async def test_its_ids_show_nothing_of_other_tenants_activity(
    actions, tenant, other_tenant, member
):
    action = actions["examples.print_lines"]
    response = await connect(member, tenant=tenant)
    mine = []
    for _ in range(3):
        await db(running_execution)(action, other_tenant)  # ids the member never sees
        mine.append(await db(running_execution)(action, tenant))
    frames = [await response.next_sse() for _ in range(6)]  # create + running, each
    tokens = [frame["id"] for frame in frames]
    raw = [id_of(t) for t in tokens]
    assert raw == sorted(raw) and len(set(raw)) == 6  # the order is there, decoded ...
    assert any(b - a > 2 for a, b in itertools.pairwise(raw))  # ... with gaps
    assert min(tokens) > 10**6  # on the wire: no small sequence numbers to subtract
    assert all(0 < t < 2**53 for t in tokens)  # exact in JavaScript
    await response.disconnect()
