"""`manage.py purge_output`: what goes, what stays, in batches, and two collectors at once."""

import io
import queue
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone
from guardian.models import GroupObjectPermission, UserObjectPermission

from executions import retention
from executions.models import Execution, ExecutionEvent, ExecutionStatus, OutputChunk
from rbac.models import ExecutionGroupObjectPermission, ExecutionUserObjectPermission
from tests.runner_helpers import BASE_DIR, subprocess_env

S = ExecutionStatus
MINUTE = timedelta(minutes=1)
WEEK = timedelta(days=7)
UNFINISHED = [S.REQUESTED, S.SCHEDULED, S.RUNNING, S.CANCELING]


def make_execution(tenant, *, finished_at, status=S.SUCCEEDED, lines=3, ref="core.local", **kw):
    """An execution with `lines` output rows; `finished_at` may be a datetime or an age."""
    now = timezone.now()
    if isinstance(finished_at, timedelta):
        finished_at = now - finished_at
    execution = Execution.objects.create(
        action_ref=ref,
        runner_type="local-shell-cmd",
        tenant=tenant,
        status=status,
        finished_at=finished_at,
        last_seq=lines,
        **kw,
    )
    OutputChunk.objects.bulk_create(
        OutputChunk(
            execution=execution, seq=seq, output_type="stdout", data=f"{seq}\n", timestamp=now
        )
        for seq in range(1, lines + 1)
    )
    return execution


def purge(*args, stdout=None) -> str:
    out = stdout or io.StringIO()
    call_command("purge_output", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def rows_of(execution) -> int:
    return OutputChunk.objects.filter(execution_id=execution.pk).count()


def reloaded(execution) -> Execution:
    return Execution.objects.get(pk=execution.pk)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _ttls(settings):
    settings.OUTPUT_TTL_DAYS = 7
    settings.EXECUTION_TTL_DAYS = 90


# --- what goes ---------------------------------------------------------------------------
@pytest.mark.django_db
def test_it_purges_output_just_older_than_the_ttl_and_keeps_just_newer(tenant):
    older = make_execution(tenant, finished_at=WEEK + MINUTE)
    newer = make_execution(tenant, finished_at=WEEK - MINUTE)
    before = timezone.now()
    purge()
    assert rows_of(older) == 0
    assert reloaded(older).output_purged_at >= before
    assert rows_of(newer) == 3
    assert reloaded(newer).output_purged_at is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args, ttl",
    [
        ([], timedelta(days=2)),  # OUTPUT_TTL_DAYS, set to 2 below
        (["--days", "1"], timedelta(days=1)),
        (["--hours", "5"], timedelta(hours=5)),
    ],
)
def test_it_takes_the_ttl_from_the_setting_days_or_hours(tenant, settings, args, ttl):
    settings.OUTPUT_TTL_DAYS = 2
    older = make_execution(tenant, finished_at=ttl + MINUTE)
    newer = make_execution(tenant, finished_at=ttl - MINUTE)
    purge(*args)
    assert (rows_of(older), rows_of(newer)) == (0, 3)


@pytest.mark.django_db
def test_it_takes_an_iso_moment_exclusive(tenant):
    cutoff = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
    older = make_execution(tenant, finished_at=cutoff - timedelta(seconds=1))
    at = make_execution(tenant, finished_at=cutoff)
    purge("--before", "2026-01-10T12:00:00Z")
    assert (rows_of(older), rows_of(at)) == (0, 3)


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["2026-01-10T12:00:00", "2026-01-10 12:00"])
def test_it_reads_a_moment_without_zone_as_utc(tenant, value):
    older = make_execution(tenant, finished_at=datetime(2026, 1, 10, 11, 59, tzinfo=UTC))
    newer = make_execution(tenant, finished_at=datetime(2026, 1, 10, 12, 1, tzinfo=UTC))
    purge("--before", value)
    assert (rows_of(older), rows_of(newer)) == (0, 3)


@pytest.mark.django_db
def test_it_limits_to_a_tenant(tenant, other_tenant):
    ours = make_execution(tenant, finished_at=WEEK * 2)
    theirs = make_execution(other_tenant, finished_at=WEEK * 2)
    purge("--tenant", "other")
    assert (rows_of(ours), rows_of(theirs)) == (3, 0)


@pytest.mark.django_db
def test_it_limits_to_an_action(tenant):
    shell = make_execution(tenant, finished_at=WEEK * 2, ref="core.local")
    printer = make_execution(tenant, finished_at=WEEK * 2, ref="examples.print_lines")
    purge("--action", "examples.print_lines")
    assert (rows_of(shell), rows_of(printer)) == (3, 0)


@pytest.mark.django_db
def test_it_marks_output_purged_at_once(tenant):
    execution = make_execution(tenant, finished_at=WEEK * 2)
    silent = make_execution(tenant, finished_at=WEEK * 2, lines=0)
    purge()
    first = reloaded(execution).output_purged_at
    assert first is not None
    # An execution that never printed is marked too (last_seq 0 says it had nothing).
    assert reloaded(silent).output_purged_at is not None
    purge()
    assert reloaded(execution).output_purged_at == first


@pytest.mark.django_db
@pytest.mark.parametrize("status", UNFINISHED)
def test_it_never_touches_unfinished_executions(tenant, status):
    old = timezone.now() - timedelta(days=400)
    execution = make_execution(tenant, finished_at=old, status=status)
    Execution.objects.filter(pk=execution.pk).update(created_at=old)
    purge("--before", "2999-01-01", "--executions", "--execution-days", "1")
    assert rows_of(execution) == 3
    assert reloaded(execution).output_purged_at is None


@pytest.mark.django_db
def test_it_purges_every_finished_status(tenant):
    finished = [S.SUCCEEDED, S.FAILED, S.TIMEOUT, S.CANCELED, S.ABANDONED]
    executions = [make_execution(tenant, finished_at=WEEK * 2, status=s) for s in finished]
    purge()
    assert [rows_of(e) for e in executions] == [0] * len(finished)


# --- how it goes ---------------------------------------------------------------------------
@pytest.mark.django_db
def test_it_deletes_in_batches_of_batch_size(tenant):
    first = make_execution(tenant, finished_at=WEEK * 2, lines=30)
    second = make_execution(tenant, finished_at=WEEK * 3, lines=20)
    terminal = Terminal()
    purge("--batch-size", "7", stdout=terminal)
    batch_lines = [x for x in terminal.getvalue().splitlines() if x.lstrip().startswith("batch")]
    assert len(batch_lines) == 8  # 50 rows / 7 per batch
    assert "total 50 rows, 2 executions" in batch_lines[-1]
    assert "rows/s" in batch_lines[0]
    assert (rows_of(first), rows_of(second)) == (0, 0)


@pytest.mark.django_db
def test_it_deletes_at_most_batch_size_rows_per_transaction(tenant):
    execution = make_execution(tenant, finished_at=WEEK * 2, lines=50)
    criteria = retention.Criteria(output_before=timezone.now() - WEEK)
    batch = retention.purge_output_batch(criteria, 7)
    assert (batch.rows, batch.purged, rows_of(execution)) == (7, 0, 43)
    assert reloaded(execution).output_purged_at is None


@pytest.mark.django_db
def test_it_stops_between_batches_when_asked(tenant):
    execution = make_execution(tenant, finished_at=WEEK * 2, lines=50)
    criteria = retention.Criteria(output_before=timezone.now() - WEEK)
    seen = []
    done = retention.run_pass(
        criteria,
        10,
        on_batch=lambda batch, total: seen.append(batch),
        should_stop=lambda: len(seen) == 2,
    )
    assert (done.stopped, done.batches, rows_of(execution)) == (True, 2, 30)


@pytest.mark.django_db
def test_it_rests_after_each_batch_in_proportion_to_its_time(tenant):
    make_execution(tenant, finished_at=WEEK * 2, lines=30)
    criteria = retention.Criteria(output_before=timezone.now() - WEEK)
    rests: list[float] = []
    done = retention.run_pass(criteria, 10, pause_ratio=2.0, sleep=rests.append)
    assert done.batches == len(rests) == 3
    assert all(rest > 0 for rest in rests)


@pytest.mark.django_db
def test_it_prints_one_summary_line_when_not_on_a_terminal(tenant):
    make_execution(tenant, finished_at=WEEK * 2, lines=10)
    lines = purge("--batch-size", "3").splitlines()
    assert len(lines) == 1
    assert "deleted 10 output rows in 4 batches" in lines[0]
    assert "output purged for 1 executions" in lines[0]


@pytest.mark.django_db
def test_it_counts_without_deleting_on_dry_run(tenant):
    execution = make_execution(tenant, finished_at=WEEK * 2, lines=10)
    make_execution(tenant, finished_at=WEEK * 3, lines=5)
    make_execution(tenant, finished_at=timedelta(days=100), lines=4)
    out = purge("--dry-run", "--executions")
    assert "would delete 1 executions (4 output rows)" in out
    assert "would delete 15 output rows of 2 executions" in out
    assert OutputChunk.objects.count() == 19
    assert reloaded(execution).output_purged_at is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args, setting, reason",
    [
        (["--days", "0"], {}, "--days 0"),
        (["--hours", "0"], {}, "--hours 0"),
        ([], {"OUTPUT_TTL_DAYS": 0}, "OUTPUT_TTL_DAYS=0"),
    ],
)
def test_it_says_so_when_disabled(tenant, settings, args, setting, reason):
    for name, value in setting.items():
        setattr(settings, name, value)
    execution = make_execution(tenant, finished_at=timedelta(days=400))
    out = purge(*args)
    assert f"output purge disabled ({reason})" in out
    assert "nothing to do" in out
    assert rows_of(execution) == 3


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args, message",
    [
        (["--days", "-1"], "--days must be 0 or more"),
        (["--hours", "-3"], "--hours must be 0 or more"),
        (["--before", "yesterday"], "not an ISO-8601"),
        (["--days", "3", "--hours", "2"], "only one of --days, --hours, --before"),
        (["--days", "3", "--before", "2026-01-01"], "only one of"),
        (["--tenant", "nope"], "--tenant 'nope': no such tenant"),
        (["--action", "no.such"], "--action 'no.such': no such action"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--pause-ratio", "-0.5"], "--pause-ratio must be a number, 0 or more"),
        (["--pause-ratio", "nan"], "--pause-ratio must be a number, 0 or more"),
        (["--every", "inf"], "--every must be a positive number"),
        (["--execution-days", "3"], "only makes sense with --executions"),
        (["--executions", "--execution-days", "-2"], "--execution-days must be 0 or more"),
        (["--every", "0"], "--every must be a positive number"),
        (["--every", "5", "--dry-run"], "do not go together"),
        (["--days", "x"], "invalid int value"),
    ],
)
def test_it_rejects_bad_arguments_and_deletes_nothing(tenant, args, message):
    execution = make_execution(tenant, finished_at=timedelta(days=400))
    with pytest.raises(CommandError, match=message):
        purge(*args)
    assert rows_of(execution) == 3


def test_it_exits_non_zero_from_the_command_line():
    done = subprocess.run(
        [sys.executable, "manage.py", "purge_output", "--batch-size", "0"],
        cwd=BASE_DIR,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,  # a failure bound: manage.py starting on a busy machine
    )
    assert done.returncode != 0
    assert "--batch-size must be at least 1" in done.stderr
    assert "Traceback" not in done.stderr


# --- whole executions ----------------------------------------------------------------------
def grant_everything(execution, user, group) -> None:
    view = Permission.objects.get(codename="view_execution")
    ExecutionUserObjectPermission.objects.create(
        user=user, permission=view, content_object=execution
    )
    ExecutionGroupObjectPermission.objects.create(
        group=group, permission=view, content_object=execution
    )
    content_type = ContentType.objects.get_for_model(Execution)
    UserObjectPermission.objects.create(
        user=user, permission=view, content_type=content_type, object_pk=execution.pk
    )
    GroupObjectPermission.objects.create(
        group=group, permission=view, content_type=content_type, object_pk=execution.pk
    )
    ExecutionEvent.objects.create(
        event=ExecutionEvent.UPDATE, execution=execution, tenant=execution.tenant, payload={}
    )


@pytest.mark.django_db
def test_it_deletes_whole_executions_with_their_permissions(tenant, member):
    group = Group.objects.create(name="ops")
    old = make_execution(tenant, finished_at=timedelta(days=91))
    child = make_execution(tenant, finished_at=timedelta(days=91, minutes=1), parent=old)
    kept = make_execution(tenant, finished_at=timedelta(days=89))
    for execution in (old, child, kept):
        grant_everything(execution, member, group)

    out = purge("--executions")

    assert set(Execution.objects.values_list("pk", flat=True)) == {kept.pk}
    assert "3 executions deleted" not in out and "2 executions deleted" in out
    assert OutputChunk.objects.filter(execution_id__in=[old.pk, child.pk]).count() == 0
    assert ExecutionEvent.objects.exclude(execution_id=kept.pk).count() == 0
    for table in (ExecutionUserObjectPermission, ExecutionGroupObjectPermission):
        assert list(table.objects.values_list("content_object_id", flat=True)) == [kept.pk]
    for table in (UserObjectPermission, GroupObjectPermission):
        assert list(table.objects.values_list("object_pk", flat=True)) == [kept.pk]
    assert rows_of(kept) == 0  # older than the output TTL: output purged, execution kept


@pytest.mark.django_db
def test_it_takes_execution_days(tenant):
    old = make_execution(tenant, finished_at=timedelta(days=3, minutes=1))
    recent = make_execution(tenant, finished_at=timedelta(days=3) - MINUTE)
    purge("--executions", "--execution-days", "3")
    assert list(Execution.objects.values_list("pk", flat=True)) == [recent.pk]
    assert not Execution.objects.filter(pk=old.pk).exists()


@pytest.mark.django_db
def test_it_keeps_a_workflow_whose_child_still_runs(tenant):
    parent = make_execution(tenant, finished_at=timedelta(days=100), ref="examples.deploy")
    child = make_execution(tenant, finished_at=None, status=S.RUNNING, parent=parent)
    grandparent = make_execution(tenant, finished_at=timedelta(days=100), ref="examples.deploy")
    middle = make_execution(tenant, finished_at=timedelta(days=100), parent=grandparent)
    make_execution(tenant, finished_at=None, status=S.RUNNING, parent=middle)
    purge("--executions", "--days", "0")
    assert Execution.objects.count() == 5
    assert rows_of(child) == 3


@pytest.mark.django_db
def test_it_says_so_when_execution_deletion_is_disabled(tenant, settings):
    settings.EXECUTION_TTL_DAYS = 0
    execution = make_execution(tenant, finished_at=timedelta(days=400))
    out = purge("--executions")
    assert "execution deletion disabled (EXECUTION_TTL_DAYS=0)" in out
    assert reloaded(execution).output_purged_at is not None  # the output purge still ran


# --- a periodic collector ------------------------------------------------------------------
REST_SECONDS = 3600  # far longer than any test may wait: the rest must end on the signal
EXIT_SECONDS = 120  # a process start or exit on a busy machine; nowhere near REST_SECONDS


@pytest.mark.django_db(transaction=True)
def test_it_collects_every_n_seconds_until_sigterm(tenant):
    execution = make_execution(tenant, finished_at=WEEK * 2)
    collector = subprocess.Popen(
        [sys.executable, "manage.py", "purge_output", "--every", str(REST_SECONDS)],
        cwd=BASE_DIR,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in collector.stdout], daemon=True).start()
    try:
        seen = []
        while not any("pass 1:" in line for line in seen):
            seen.append(lines.get(timeout=EXIT_SECONDS))
        assert "deleted 3 output rows" in seen[-1]
        # Pass 1 is done and the collector rests for an hour: only a signal that ends the rest
        # lets it exit before the (generous) timeout.
        collector.send_signal(signal.SIGTERM)
        assert collector.wait(timeout=EXIT_SECONDS) == 0
    finally:
        if collector.poll() is None:
            collector.kill()
            collector.wait()
    assert rows_of(execution) == 0


# --- two collectors at once ----------------------------------------------------------------
def two_collectors(criteria: retention.Criteria) -> list[retention.PassResult]:
    """Run two passes at once, from one start line, each on its own connection."""
    start = threading.Barrier(2, timeout=120)  # a failure bound: two threads starting
    results: list[retention.PassResult] = []
    errors: list[BaseException] = []

    def collect():
        try:
            start.wait()
            results.append(retention.run_pass(criteria, batch_size=10))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=collect) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []  # a deadlock would surface here as an OperationalError
    assert len(results) == 2  # or a thread is still stuck
    return results


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_it_lets_two_collectors_purge_output_at_once(tenant):
    assert connection.vendor == "postgresql"
    old = [make_execution(tenant, finished_at=WEEK + i * MINUTE, lines=100) for i in range(30)]
    existing = OutputChunk.objects.count()
    results = two_collectors(retention.Criteria(output_before=timezone.now() - WEEK))
    assert sum(r.rows for r in results) == existing
    assert sum(r.purged for r in results) == len(old)
    assert OutputChunk.objects.count() == 0
    assert Execution.objects.filter(output_purged_at__isnull=False).count() == len(old)


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_it_lets_two_collectors_delete_and_purge_at_once(tenant):
    assert connection.vendor == "postgresql"
    old = [make_execution(tenant, finished_at=WEEK + i * MINUTE, lines=100) for i in range(30)]
    doomed = [make_execution(tenant, finished_at=timedelta(days=100, minutes=i)) for i in range(8)]
    for parent in doomed[:4]:
        make_execution(tenant, finished_at=timedelta(days=100), parent=parent, lines=20)
    existing = OutputChunk.objects.count()
    criteria = retention.Criteria(
        output_before=timezone.now() - WEEK, executions_before=timezone.now() - timedelta(90)
    )
    results = two_collectors(criteria)
    assert sum(r.rows for r in results) == existing
    assert sum(r.deleted for r in results) == len(doomed) + 4
    # One collector may purge a doomed execution's output before the other deletes it.
    assert len(old) <= sum(r.purged for r in results) <= len(old) + len(doomed) + 4
    assert set(Execution.objects.values_list("pk", flat=True)) == {e.pk for e in old}
    assert not Execution.objects.filter(output_purged_at__isnull=True).exists()
    assert OutputChunk.objects.count() == 0


def test_it_prunes_lifecycle_events_past_their_retention(actions, settings):
    import io
    from datetime import timedelta

    from django.core.management import call_command
    from django.utils import timezone

    from executions import services
    from executions.models import ExecutionEvent

    settings.EVENT_RETENTION_HOURS = 24
    old = services.create_execution(actions["core.local"], {"cmd": "true"})
    fresh = services.create_execution(actions["core.local"], {"cmd": "true"})
    ExecutionEvent.objects.filter(execution=old).update(
        created_at=timezone.now() - timedelta(hours=25)
    )
    call_command("purge_output", stdout=io.StringIO())
    assert not ExecutionEvent.objects.filter(execution=old).exists()
    assert ExecutionEvent.objects.filter(execution=fresh).count() == 1
