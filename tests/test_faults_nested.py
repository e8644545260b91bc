"""A nested workflow's runner killed with SIGKILL at seeded-random points: every execution of
the family ends, no process of the dead runner's actions lives on, and the statuses agree.

    outer (workflow) ── inner (workflow) ── first  (shell: three lines, short sleeps)
                     │                   └─ second (shell)
                     └─ sibling (shell)

Three ways to pick the point of death, each round with one or two runner processes (and, when
the dead one was alone or by the draw, a fresh one started after it):

    lifecycle   the test holds the lock every lifecycle write takes (services.EVENT_ORDER_LOCK,
                PostgreSQL), so the runner stops inside its next write, uncommitted; the test
                lets k-1 writes through and kills the runner inside write k. The committed
                family is then exactly WRITES[:k-1], and the outcome is exact too.
    output      the runner dies once N lines of the family's output are stored (mid-sleep:
                its actions' processes are alive and must die with it). The test holds the
                lifecycle writes meanwhile too, so the family cannot end before the kill.
    canceling   the root is canceled while a task runs; the runner dies inside the next
                write (the cancel passed down, or a task's end).

A seed is drawn per run (TAILGATE_FAULT_SEED replays one); every failure names it.

What the survivors do (docs/guarantees.md, "Nothing stays running"): a root still `scheduled`
is claimed by a live runner and runs to its end there; a root that was running is not resumed:
the reaper abandons it after RUNNER_ABANDON_GRACE_SECONDS with every unfinished descendant,
`scheduled` children included (runners claim top-level executions only, so no other runner
ever takes a workflow's child).
"""

import os
import random
import signal
import subprocess
import uuid
from dataclasses import dataclass

import pytest
from asgiref.sync import async_to_sync
from django.db import connection

from executions import services
from executions.models import Execution, ExecutionStatus, OutputChunk
from executions.models.executions import FINISHED_STATUSES
from tests.fault_helpers import process_tree_pids
from tests.runner_helpers import register_pack, start_actionrunner, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster, pytest.mark.faults]
S = ExecutionStatus
# Every runner here reaps the others, so a live runner whose heartbeats stop for a grace is
# abandoned by its peer: the test's own hold at the gate (a lifecycle write shares the control
# thread with the heartbeat) plus a stall of the test or of that runner alone must stay far
# below it. 3 s did not on a starved CPU; each kill then waits about a grace.
GRACE_SECONDS = 15
HEARTBEAT_SECONDS = 0.5
# Waiting on another process (start-up on a busy machine, the reaper's next step): a bound for
# a broken product only, never a measure of how soon it happens.
WAIT_SECONDS = 180
# Rounds of runner start-ups, kills and a grace each, on a machine shared by many test runs.
TEST_SECONDS = 1200
# TAILGATE_FAULT_SEED replays a failed run's kill points (each failure message names its seed).
SEED = int(os.environ.get("TAILGATE_FAULT_SEED") or random.randrange(1 << 32))
# Runner processes are named by their PostgreSQL application name, so the test can tell which
# one is waiting on its lock.
APP_PREFIX = "tailgate-nested-"

LINES = "echo {0} 1; sleep 0.3; echo {0} 2; sleep 0.3; echo {0} 3"
PACK = {
    "shell.yaml": "runner_type: local-shell-cmd\n"
    "parameters:\n  cmd: {type: string}\n  env: {type: object}\n",
    "inner.yaml": "runner_type: workflow\nentry_point: workflows/inner.yaml\n"
    "parameters:\n  env: {type: object}\n",
    "outer.yaml": "runner_type: workflow\nentry_point: workflows/outer.yaml\n"
    "parameters:\n  env: {type: object}\n",
    "workflows/inner.yaml": f"""
tasks:
  - name: first
    action: nest.shell
    parameters: {{cmd: '{LINES.format("first")}', env: '{{{{ env }}}}'}}
  - name: second
    action: nest.shell
    parameters: {{cmd: '{LINES.format("second")}', env: '{{{{ env }}}}'}}
""",
    "workflows/outer.yaml": f"""
tasks:
  - name: inner
    action: nest.inner
    parameters: {{env: '{{{{ env }}}}'}}
  - name: sibling
    action: nest.shell
    parameters: {{cmd: '{LINES.format("sibling")}', env: '{{{{ env }}}}'}}
""",
}
PATHS = ("", "inner", "inner.first", "inner.second", "sibling")  # "" is the root

# Every lifecycle write of one run, in order, as (task path, status it commits).
WRITES = [
    ("", S.RUNNING),
    ("inner", S.SCHEDULED),
    ("inner", S.RUNNING),
    ("inner.first", S.SCHEDULED),
    ("inner.first", S.RUNNING),
    ("inner.first", S.SUCCEEDED),
    ("inner.second", S.SCHEDULED),
    ("inner.second", S.RUNNING),
    ("inner.second", S.SUCCEEDED),
    ("inner", S.SUCCEEDED),
    ("sibling", S.SCHEDULED),
    ("sibling", S.RUNNING),
    ("sibling", S.SUCCEEDED),
    ("", S.SUCCEEDED),
]
# Kill points (write k stopped half-way) at which a child is `scheduled`: its claim dies.
CHILD_SCHEDULED = [k for k, (path, status) in enumerate(WRITES, 1) if path and status == S.RUNNING]


def committed(k: int) -> dict[str, str]:
    """The family's statuses once writes 1..k have committed."""
    family: dict[str, str] = {"": S.SCHEDULED}
    for path, status in WRITES[:k]:
        family[path] = status
    return family


def outcome_of_kill_at(k: int) -> dict[str, str]:
    """The family's end when its runner dies inside write k (the documented recovery)."""
    if k == 1:  # the root's claim died: still scheduled, a live runner runs it all
        return dict.fromkeys(PATHS, S.SUCCEEDED)
    return {
        path: status if status in FINISHED_STATUSES else S.ABANDONED
        for path, status in committed(k - 1).items()
    }


@dataclass
class Runner:
    name: str
    process: subprocess.Popen

    def owns(self, execution: Execution) -> bool:
        return execution.runner_id.split(":")[1:2] == [str(self.process.pid)]


class Runners:
    """The runner processes of one test: started on demand, killed one at a time, and stopped
    (SIGTERM, then SIGKILL) at the end."""

    def __init__(self) -> None:
        self.live: list[Runner] = []
        self.started = 0

    def top_up(self, count: int) -> None:
        while len(self.live) > count:
            self.stop(self.live.pop())
        while len(self.live) < count:
            self.started += 1
            name = f"{APP_PREFIX}{os.getpid()}-{self.started}"
            process = start_actionrunner(
                "--concurrency",
                "2",
                PGAPPNAME=name,
                RUNNER_ABANDON_GRACE_SECONDS=str(GRACE_SECONDS),
                RUNNER_HEARTBEAT_SECONDS=str(HEARTBEAT_SECONDS),
                RUNNER_POLL_SECONDS="0.2",
            )
            self.live.append(Runner(name, process))

    def named(self, name: str) -> Runner:
        return next(r for r in self.live if r.name == name)

    def owner(self, execution: Execution) -> Runner:
        return next(r for r in self.live if r.owns(execution))

    def kill(self, runner: Runner) -> None:
        self.live.remove(runner)
        runner.process.send_signal(signal.SIGKILL)
        runner.process.wait(WAIT_SECONDS)

    @staticmethod
    def stop(runner: Runner) -> None:
        runner.process.terminate()
        try:
            runner.process.communicate(timeout=WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            runner.process.kill()
            runner.process.communicate()

    def stop_all(self) -> None:
        while self.live:
            self.stop(self.live.pop())


@pytest.fixture
def runners():
    pool = Runners()
    yield pool
    pool.stop_all()


@pytest.fixture
def outer(tmp_path):
    return async_to_sync(register_pack)(tmp_path, "nest", PACK)["outer"]


class LifecycleGate:
    """The lock every lifecycle write takes, held by the test: a runner stops inside its next
    write (created, claimed, finished), uncommitted, until the test lets that one through.

    Held on the test's own connection: a session may take a lock it holds again, so the test's
    own writes (creating the root) pass while every runner's wait."""

    def __init__(self) -> None:
        self._sql("SELECT pg_advisory_lock(%s)", [services.EVENT_ORDER_LOCK])

    @staticmethod
    def _sql(statement: str, params) -> tuple | None:
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchone()

    def waiting(self) -> str | None:
        """The application name of the runner stopped at the gate, if one is."""
        row = self._sql(
            "SELECT application_name FROM pg_stat_activity WHERE wait_event = 'advisory'"
            " AND datname = current_database() AND application_name LIKE %s",
            [f"{APP_PREFIX}%"],
        )
        return row[0] if row else None

    def step(self) -> None:
        """Let the waiting write commit; back once it has. Unlock and lock in one statement:
        the test's request queues before the runner can come back with its next write."""
        self._sql(
            "SELECT pg_advisory_unlock(%(k)s), pg_advisory_lock(%(k)s)",
            {"k": services.EVENT_ORDER_LOCK},
        )

    def open(self) -> None:
        self._sql("SELECT pg_advisory_unlock(%s)", [services.EVENT_ORDER_LOCK])


def family_of(root_id: str) -> dict[str, Execution]:
    """The root ("") and its descendants at every depth, by task path (`inner.first`)."""
    family = {"": Execution.objects.get(pk=root_id)}
    frontier = [("", root_id)]
    while frontier:
        path, parent_id = frontier.pop()
        for child in Execution.objects.filter(parent_id=parent_id).order_by("created_at", "pk"):
            child_path = f"{path}.{child.task_name}" if path else child.task_name
            family[child_path] = child
            frontier.append((child_path, child.pk))
    return family


def statuses(root_id: str) -> dict[str, str]:
    return {path: e.status for path, e in family_of(root_id).items()}


def all_finished(root_id: str) -> bool:
    return all(status in FINISHED_STATUSES for status in statuses(root_id).values())


def stdout_lines(root_id: str) -> int:
    ids = [e.pk for e in family_of(root_id).values()]
    chunks = OutputChunk.objects.filter(execution_id__in=ids, output_type="stdout")
    return sum(data.count("\n") for data in chunks.values_list("data", flat=True))


def assert_consistent(family: dict[str, Execution], killed: Runner, why: str) -> None:
    """Whatever the kill point: all ended, a workflow's tasks ran in order and stopped at the
    first that did not succeed, abandonment flows down, and nothing was resumed elsewhere."""
    root = family[""]
    for path, execution in family.items():
        assert execution.status in FINISHED_STATUSES, (why, path, execution.status)
        children = [c for p, c in family.items() if p.rpartition(".")[0] == path and p]
        assert all(c.status == S.SUCCEEDED for c in children[:-1]), (why, path)
        if execution.status == S.SUCCEEDED:
            assert all(c.status == S.SUCCEEDED for c in children), (why, path)
        if execution.status == S.ABANDONED:
            assert "stopped heartbeating" in execution.error, (why, path, execution.error)
            if path:
                parent = family[path.rpartition(".")[0]]
                assert parent.status == S.ABANDONED, (why, path, parent.status)
    if root.status == S.SUCCEEDED:  # it was still queued: another runner took all of it
        assert set(family) == set(PATHS), why
        assert not killed.owns(root), why
        assert {e.runner_id for e in family.values()} == {root.runner_id}, why
    else:  # not resumed: no other runner touched the family
        assert root.status == S.ABANDONED, (why, root.status)
        assert all(killed.owns(e) or not e.runner_id for e in family.values()), why


def finish_round(root_id: str, marker: str, killed: Runner, runners: Runners, fresh: bool):
    """After the kill: a fresh runner if asked (or none is left), then the family's end."""
    if fresh or not runners.live:
        runners.top_up(len(runners.live) + 1)
    wait_until(lambda: not process_tree_pids(marker), WAIT_SECONDS, "the actions to die")
    wait_until(lambda: all_finished(root_id), WAIT_SECONDS, "every execution to end")
    family = family_of(root_id)
    assert process_tree_pids(marker) == []
    return family


def _start_round(outer, rng: random.Random, runners: Runners) -> tuple[Execution, str]:
    # Runners are stopped (SIGTERM) only while there is nothing to claim: one stopped inside
    # a claim held at the gate would wait there for ever.
    runners.top_up(rng.choice((1, 2)))
    marker = f"nested-{os.getpid()}-{uuid.uuid4().hex}"
    root = services.create_execution(outer, {"env": {"TAILGATE_FAULT_MARK": marker}})
    return root, marker


@pytest.mark.timeout(TEST_SECONDS)
def test_it_ends_the_family_whatever_lifecycle_write_its_runner_dies_in(outer, runners):
    rng = random.Random(SEED)
    # Always the root's claim (taken by another runner) and a child's claim (a `scheduled`
    # child under a dead workflow); three more points drawn.
    rest = [k for k in range(2, len(WRITES) + 1) if k not in CHILD_SCHEDULED]
    points = [1, rng.choice(CHILD_SCHEDULED), *rng.sample(rest, 3)]
    rng.shuffle(points)
    for round_, k in enumerate(points):
        why = f"seed {SEED}, round {round_}, killed inside write {k} {WRITES[k - 1]}"
        gate = LifecycleGate()  # before the root exists: no runner can claim it unseen
        try:
            root, marker = _start_round(outer, rng, runners)
            for done in range(k):
                waiting = wait_until(gate.waiting, WAIT_SECONDS, f"write {done + 1}")
                assert statuses(root.pk) == committed(done), why
                if done + 1 < k:
                    gate.step()
            killed = runners.named(waiting)
            runners.kill(killed)  # inside write k, still uncommitted
        finally:
            gate.open()
        if k > 1:  # the one stopped at the gate is the one that claimed the root
            assert killed.owns(Execution.objects.get(pk=root.pk)), why
        family = finish_round(root.pk, marker, killed, runners, fresh=rng.random() < 0.5)
        assert {p: e.status for p, e in family.items()} == outcome_of_kill_at(k), why
        assert_consistent(family, killed, why)


def hold_until(gate: LifecycleGate, reached, last: int, what: str) -> int:
    """Let the family's lifecycle writes through one at a time until `reached()` holds, or a
    runner waits inside write `last + 1`: the family never runs ahead of the test, however long
    the test or a runner stalls. The number of writes let through."""
    let_through = 0

    def stopped() -> bool:
        nonlocal let_through
        if reached():
            return True
        if gate.waiting():
            if let_through == last:
                return True
            gate.step()
            let_through += 1
        return False

    wait_until(stopped, WAIT_SECONDS, what)
    return let_through


@pytest.mark.timeout(TEST_SECONDS)
def test_it_ends_the_family_whatever_output_line_its_runner_dies_at(outer, runners):
    rng = random.Random(SEED + 1)
    for round_ in range(3):
        lines = rng.randint(1, 5)  # inside the inner workflow: the root is still running
        why = f"seed {SEED + 1}, round {round_}, killed after {lines} stored lines"
        gate = LifecycleGate()  # the root cannot end before the kill, whatever the stalls
        try:
            root, marker = _start_round(outer, rng, runners)
            # ... while a task's processes are alive: they must die with their runner. (A test
            # that missed every task alive stops the family inside the root's last write.)
            hold_until(
                gate,
                lambda: stdout_lines(root.pk) >= lines and process_tree_pids(marker),  # noqa: B023
                len(WRITES) - 1,
                why,
            )
            killed = runners.owner(Execution.objects.get(pk=root.pk))
            runners.kill(killed)
        finally:
            gate.open()
        family = finish_round(root.pk, marker, killed, runners, fresh=rng.random() < 0.5)
        assert family[""].status == S.ABANDONED, why
        assert_consistent(family, killed, why)


@pytest.mark.timeout(TEST_SECONDS)
def test_it_ends_a_canceling_family_whose_runner_dies(outer, runners):
    """Canceled while `inner.first` runs, its runner killed inside the next lifecycle write (the
    cancel passed down, or a task's end): `canceling` is reaped as `running` is."""
    gate = LifecycleGate()  # `inner.first` cannot end unseen: its end is a lifecycle write
    try:
        root, marker = _start_round(outer, random.Random(SEED + 2), runners)
        first_running = WRITES.index(("inner.first", S.RUNNING)) + 1
        hold_until(
            gate, lambda: process_tree_pids(marker), first_running, "inner.first's processes"
        )
        services.cancel(Execution.objects.get(pk=root.pk))  # the test's session passes its gate
        waiting = wait_until(gate.waiting, WAIT_SECONDS, "the runner's next write")
        killed = runners.named(waiting)
        runners.kill(killed)
        assert Execution.objects.get(pk=root.pk).status == S.CANCELING
    finally:
        gate.open()
    family = finish_round(root.pk, marker, killed, runners, fresh=False)
    assert family[""].status == S.ABANDONED, family[""].error
    assert_consistent(family, killed, f"seed {SEED + 2}")
