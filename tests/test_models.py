"""Models and their constraints: ids, statuses, seq uniqueness, masking, the event log."""

import json
import re
from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from executions import services
from executions.models import (
    Execution,
    ExecutionEvent,
    ExecutionStatus,
    OutputChunk,
    RunnerType,
    Tenant,
)
from executions.models.executions import new_execution_id

CROCKFORD_ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
SECRET = "hunter2-correct-horse"


def _execution(tenant, **fields) -> Execution:
    defaults = {"action_ref": "t.a", "runner_type": RunnerType.LOCAL_SHELL_CMD, "tenant": tenant}
    return Execution.objects.create(**{**defaults, **fields})


def _chunk(execution, seq, data="x\n") -> OutputChunk:
    return OutputChunk.objects.create(
        execution=execution, seq=seq, output_type="stdout", data=data, timestamp=timezone.now()
    )


def test_it_gives_executions_ulid_ids(tenant):
    execution = _execution(tenant)

    assert CROCKFORD_ULID.match(execution.id), execution.id
    assert Execution.objects.get(pk=execution.id) == execution


def test_it_makes_ids_that_sort_in_creation_order():
    ids = [new_execution_id() for _ in range(2000)]

    assert len(set(ids)) == len(ids)
    assert sorted(ids) == ids
    assert all(CROCKFORD_ULID.match(i) for i in ids)


def test_it_has_the_default_tenant_from_the_migrations(db):
    # No `tenant` fixture here: that one would create the row itself.
    assert Tenant.objects.filter(slug="default").exists()


def test_it_knows_every_status():
    assert ExecutionStatus.values == [
        "requested",
        "scheduled",
        "running",
        "succeeded",
        "failed",
        "timeout",
        "canceling",
        "canceled",
        "abandoned",
    ]


def test_it_refuses_a_duplicate_seq_in_one_execution(tenant):
    execution = _execution(tenant)
    _chunk(execution, 1)

    with pytest.raises(IntegrityError), transaction.atomic():
        _chunk(execution, 1, "again\n")

    assert list(execution.output.values_list("data", flat=True)) == ["x\n"]


def test_it_allows_the_same_seq_in_two_executions(tenant):
    first, second = _execution(tenant), _execution(tenant)

    _chunk(first, 1)
    _chunk(second, 1)

    assert OutputChunk.objects.filter(seq=1).count() == 2


def test_it_orders_output_by_seq(tenant):
    execution = _execution(tenant)
    for seq in (3, 1, 2):
        _chunk(execution, seq, f"line {seq}\n")

    assert [c.seq for c in execution.output.all()] == [1, 2, 3]
    assert not execution.output.get(seq=1).continues
    assert _chunk(execution, 4, "partial").continues


def test_it_masks_secret_parameters_of_an_execution(tenant):
    execution = _execution(
        tenant,
        parameters={"password": SECRET, "token": None, "user": "bob", "pin": 1234, "empty": ""},
        secret_parameters=["password", "token", "pin", "empty"],
    )

    assert execution.masked_parameters() == {
        "password": "********",
        "token": None,
        "user": "bob",
        "pin": "********",
        "empty": "********",
    }
    secrets = services.execution_secrets(execution)  # typed, as the run got them
    assert sorted(secrets, key=str) == [1234, SECRET]


def test_it_masks_secret_parameters_of_an_action(actions):
    action = actions["examples.echo_secret"]

    masked = action.mask_parameters({"password": SECRET, "cmd": "echo hi"})

    assert masked == {"password": "********", "cmd": "echo hi"}
    assert action.mask_parameters({"password": None}) == {"password": None}
    assert action.secret_parameter_names() == {"password"}


def test_it_records_a_masked_create_event(actions, tenant):
    action = actions["examples.echo_secret"]

    execution = services.create_execution(action, {"password": SECRET}, tenant=tenant)

    event = ExecutionEvent.objects.get(execution=execution)
    assert event.event == ExecutionEvent.CREATE == "execution__create"
    assert event.tenant == tenant
    assert event.payload["id"] == execution.id
    assert event.payload["status"] == "scheduled"
    assert event.payload["parameters"]["password"] == "********"
    assert SECRET not in json.dumps(event.payload)
    # The runner still needs the real value.
    execution.refresh_from_db()
    assert execution.parameters["password"] == SECRET
    assert execution.secret_parameters == ["password"]


def test_it_numbers_events_in_order(actions, tenant):
    action = actions["examples.print_lines"]

    first = services.create_execution(action, {"count": 1, "delay": 0}, tenant=tenant)
    second = services.create_execution(action, {"count": 1, "delay": 0}, tenant=tenant)
    services.claim(first.id, "runner-1")

    events = list(ExecutionEvent.objects.values_list("execution_id", "event"))
    assert events == [
        (first.id, "execution__create"),
        (second.id, "execution__create"),
        (first.id, "execution__update"),
    ]


def test_it_computes_duration(tenant):
    start = timezone.now()
    execution = _execution(tenant, started_at=start)
    assert execution.duration_seconds is None

    execution.finished_at = start + timedelta(seconds=2.5)

    assert execution.duration_seconds == 2.5
