"""Database faults under a real `manage.py actionrunner`: nothing it has read is lost.

Each test runs against a PostgreSQL of its module's own (tests/fault_helpers.py: initdb into a
temp dir, a spare port), so killing its connections or restarting it disturbs nobody else:

    runner ──▶ private PostgreSQL ◀── this test (psycopg: kills, restarts, reads the log)

The runner's output writer keeps a batch until it commits and retries it on a fresh
connection; past RUNNER_DB_OUTAGE_SECONDS it gives up and the run ends `failed` with a reason.
"""

import signal

import pytest
from django.utils.timezone import now as timezone_now

from executions.capture import NUL_SUBSTITUTE
from tests.fault_helpers import Installation, PrivatePostgres, postgres_available
from tests.runner_helpers import wait_until
from tests.server_helpers import ARTIFACTS

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.faults,
    pytest.mark.skipif(not postgres_available(), reason="initdb/pg_ctl not installed"),
]
# A run that prints LINES lines in bursts, so faults land while it writes.
LINES = 3000
PACED = (
    f"i=0; while [ $i -lt {LINES} ]; do i=$((i+1)); echo line $i; "
    "[ $((i % 200)) -eq 0 ] && sleep 0.1; done; true"
)
EXPECTED = [(i, f"line {i}\n") for i in range(1, LINES + 1)]
# Generous: a run of a few seconds on a machine shared by many test runs, plus a restart.
FINISH_SECONDS = 180
KILL_ROUNDS = 5
# The runner's limit in the outage test. The database stays away until the runner has given
# up (its log says so), not for a fixed time: a runner stalled through a fixed outage would
# see none and run on for ever.
OUTAGE_LIMIT_SECONDS = 3
GAVE_UP = "recording the outcome failed"


@pytest.fixture(scope="module")
def install():
    server = PrivatePostgres()
    try:
        server.init()
        server.start()
        installation = Installation(server)
        installation.create()
        yield installation
    finally:
        server.destroy()


@pytest.fixture
def runner(install, request):
    """A runner process on the private database; its log is checked for tracebacks."""
    log_path = ARTIFACTS / f"faults-db-{request.node.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = []

    def start(**env: str):
        process = install.start_runner(log_path, **env)
        started.append(process)
        return process

    start.log_path = log_path  # type: ignore[attr-defined]
    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except Exception:
                process.kill()
                process.wait()
    log = log_path.read_text()
    assert "Task exception was never retrieved" not in log, log
    assert "Traceback" not in log, log


def _first_output(install: Installation, execution_id: str) -> None:
    wait_until(lambda: install.output(execution_id), FINISH_SECONDS, "first output")


def _finished(install: Installation, execution_id: str) -> dict:
    return wait_until(lambda: install.finished(execution_id), FINISH_SECONDS, "the run to end")


def _stored(install: Installation, execution_id: str) -> int:
    return install.execution(execution_id)["last_seq"]


def _runner_connections(install: Installation) -> list[int]:
    rows = install.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = 'tailgate' AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    )
    return [r[0] for r in rows]


def test_it_keeps_every_line_when_its_connections_are_killed(install, runner):
    runner()
    execution_id = install.run_action("core.local", cmd=PACED)
    _first_output(install, execution_id)
    killed = 0
    for _ in range(KILL_ROUNDS):
        seen = _stored(install, execution_id)
        killed += len(_runner_connections(install))
        wait_until(
            lambda seen=seen: (
                _stored(install, execution_id) > seen or install.finished(execution_id)
            ),
            FINISH_SECONDS,
            "more output after the kill",
        )
    done = _finished(install, execution_id)
    assert killed > 0
    assert done["status"] == "succeeded", done
    assert install.output(execution_id) == EXPECTED
    assert done["last_seq"] == LINES


def test_it_keeps_every_line_across_a_postgres_restart(install, runner):
    runner()
    execution_id = install.run_action("core.local", cmd=PACED)
    _first_output(install, execution_id)
    install.server.restart()
    done = _finished(install, execution_id)
    assert done["status"] == "succeeded", done
    assert install.output(execution_id) == EXPECTED


def test_it_keeps_a_flood_whole_across_a_postgres_restart(install, runner):
    runner()
    count = 300_000
    execution_id = install.run_action("core.local", cmd=f"seq 1 {count}")
    _first_output(install, execution_id)
    install.server.restart()
    done = _finished(install, execution_id)
    assert done["status"] == "succeeded", done
    assert done["last_seq"] == count
    stored = install.sql(
        "SELECT count(*), min(seq), max(seq), "
        "sum(CASE WHEN data = seq::text || E'\\n' THEN 1 ELSE 0 END) "
        "FROM executions_outputchunk WHERE execution_id = %s",
        [execution_id],
    )
    assert stored == [(count, 1, count, count)]


def test_it_fails_with_a_reason_when_the_database_stays_away_too_long(install, runner):
    runner(RUNNER_DB_OUTAGE_SECONDS=str(OUTAGE_LIMIT_SECONDS))
    execution_id = install.run_action(
        "core.local", cmd="i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.05; done"
    )
    _first_output(install, execution_id)
    install.server.stop()
    # The run's output is lost past the limit; its end then waits for the database.
    wait_until(
        lambda: GAVE_UP in runner.log_path.read_text(), FINISH_SECONDS, "the runner to give up"
    )
    install.server.start()
    done = _finished(install, execution_id)
    assert done["status"] == "failed", done
    assert f"unavailable for more than {OUTAGE_LIMIT_SECONDS} s" in done["error"]
    stored = install.output(execution_id)
    assert [seq for seq, _ in stored] == list(range(1, done["last_seq"] + 1))
    assert [data for _, data in stored] == [f"tick {i}\n" for i in range(1, len(stored) + 1)]


def test_it_stores_nul_on_postgres_and_ends_with_the_true_status(install, runner):
    runner()
    execution_id = install.run_action(
        "core.local", cmd=r'printf "before\n"; printf "a\000b\n"; printf "after\n"'
    )
    done = _finished(install, execution_id)
    assert done["status"] == "succeeded", done
    assert install.output(execution_id) == [
        (1, "before\n"),
        (2, f"a{NUL_SUBSTITUTE}b\n"),
        (3, "after\n"),
    ]


@pytest.mark.django_db(transaction=True)
def test_a_connection_killed_during_copy_fails_as_transient_and_the_retry_stores_once(execution):
    """COPY is the first command of a batch's transaction, so a connection killed between two
    batches dies inside psycopg's copy(), which Django's cursor does not wrap by itself."""
    import psycopg
    from django.db import OperationalError, connection

    from executions import storage
    from executions.models import OutputChunk
    from tests.streaming_helpers import store

    store(execution, ["before\n"])
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    params = connection.get_connection_params()
    with psycopg.connect(**params, autocommit=True) as killer:
        killer.execute("SELECT pg_terminate_backend(%s)", [pid])
    rows = [(2, "stdout", "after\n", timezone_now())]
    with pytest.raises(OperationalError) as failed:
        storage.store_batch(execution.id, rows)
    assert storage.is_transient(failed.value)
    storage.store_batch(execution.id, rows, retry=True)  # a fresh connection
    stored = OutputChunk.objects.filter(execution_id=execution.id).order_by("seq")
    assert list(stored.values_list("seq", "data")) == [(1, "before\n"), (2, "after\n")]
