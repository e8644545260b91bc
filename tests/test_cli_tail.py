"""`tailgate execution tail` against a real server: running, finished, failing, purged and
two-level nested executions, a connection cut mid-tail, and Ctrl-C."""

import signal

import pytest
from django.core.management import call_command

from executions import services
from executions.models import Execution
from tests.cli_helpers import (
    FINISH_SECONDS,
    CuttableProxy,
    finish,
    held_print_lines,
    start_cli,
    stored_text,
    wait_finished,
)
from tests.runner_helpers import wait_until

pytest_plugins = ["tests.cli_fixtures"]
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def lines(count: int) -> str:
    return "".join(f"{'stderr' if i % 2 else 'stdout'} -> Line: {i}\n" for i in range(1, count + 1))


def test_it_tails_a_running_execution_from_its_first_line(
    server_url, key, config_home, actions, tmp_path
):
    # Held after line 3 until the tail has begun: running then, whatever the CLI's start-up
    # takes, with lines printed before the tail began and after.
    gate = tmp_path / "gate"
    cmd = held_print_lines(6, gate, held_after=3)
    execution = services.create_execution(actions["core.local"], {"cmd": cmd})
    wait_until(
        lambda: Execution.objects.get(pk=execution.id).last_seq >= 3,
        FINISH_SECONDS,
        "the first three lines",
    )
    cli = start_cli(server_url, key, "execution", "tail", "last", config_home=config_home)
    assert cli.stdout.readline() == f"Execution {execution.id} has started.\n"
    gate.touch()
    out, err = finish(cli)
    assert cli.returncode == 0, err
    # stdout and stderr are two pipes: the stored order is the order the runner read them
    # (one read may bring two lines of one pipe), and the tail prints exactly that.
    stored = stored_text(execution.id)
    assert sorted(stored.splitlines()) == sorted(lines(6).splitlines())
    assert out == (f"\n{stored}\nExecution {execution.id} has completed (status=succeeded).\n")


def test_it_tails_a_finished_execution_without_saying_it_started(tg, actions):
    execution = services.create_execution(actions["examples.print_lines"], {"count": 3, "delay": 0})
    wait_finished(execution.id)
    result = tg("execution", "tail", execution.id)
    assert result.code == 0, result.err
    # Printed without a pause, on two pipes: the stored order is the order the runner read
    # them (one read may bring two stderr lines), and the tail prints exactly that.
    stored = stored_text(execution.id)
    assert sorted(stored.splitlines()) == sorted(lines(3).splitlines())
    assert result.out == stored + f"\nExecution {execution.id} has completed (status=succeeded).\n"


def test_it_prints_metadata_and_one_type_when_asked(tg, actions):
    execution = services.create_execution(actions["examples.print_lines"], {"count": 4, "delay": 0})
    wait_finished(execution.id)
    result = tg("execution", "tail", execution.id, "--type", "stderr", "--include-metadata")
    printed = result.out.splitlines()[:-2]
    assert len(printed) == 2
    assert all(line.startswith("[20") and "][stderr] stderr -> Line:" in line for line in printed)


def test_it_exits_one_when_the_execution_failed(tg, actions):
    result = tg("run", "examples.fail", "--tail", "--type", "stderr")
    assert result.code == 1
    assert "error: prerequisite missing\n" in result.out
    assert "checking prerequisites" not in result.out
    assert result.out.rstrip().endswith("has completed (status=failed).")


def test_it_says_when_the_output_was_purged_and_does_not_promise_it(tg, actions):
    execution = services.create_execution(actions["examples.print_lines"], {"count": 3, "delay": 0})
    wait_finished(execution.id)
    call_command("purge_output", "--before", "2999-01-01", stdout=None)
    assert Execution.objects.get(pk=execution.id).output_purged_at is not None

    result = tg("execution", "tail", execution.id)
    assert result.code == 0
    assert result.out == f"\nExecution {execution.id} has completed (status=succeeded).\n"
    assert "were purged on 20" in result.err and f"execution get {execution.id}" in result.err
    assert "execution output" not in result.err

    output = tg("execution", "output", execution.id)
    assert output.code == 1 and output.out == ""
    assert f"the output of {execution.id} was purged on 20" in output.err


NESTED_STORY = [
    "Execution {root} has started.",
    "",
    "Task first started (core.local, execution {first}).",
    "Child execution (task=first) {first} has started.",
    "",
    "outer first",
    "outer first err",
    "",
    "Child execution (task=first) {first} has finished (status=succeeded).",
    "Task first finished (status=succeeded).",
    "Task middle started (nest.inner, execution {middle}).",
    "Child execution (task=middle) {middle} has started.",
    "",
    "Task one started (core.local, execution {one}).",
    "Child execution (task=one) {one} has started.",
    "",
    "inner one 1",
    "inner one 2",
    "inner one 3",
    "",
    "Child execution (task=one) {one} has finished (status=succeeded).",
    "Task one finished (status=succeeded).",
    "Task two started (core.local, execution {two}).",
    "Child execution (task=two) {two} has started.",
    "",
    "inner two {fail}",
    "",
    "Child execution (task=two) {two} has finished (status={two_status}).",
    "Task two finished (status={two_status}).",
    "",
    "Child execution (task=middle) {middle} has finished (status={middle_status}).",
    "Task middle finished (status={middle_status}).",
]


def family(root: Execution) -> dict[str, str]:
    children = {c.task_name: c for c in root.children.all()}
    grandchildren = {c.task_name: c for c in children["middle"].children.all()}
    ids = {"root": root.id, **{k: v.id for k, v in {**children, **grandchildren}.items()}}
    ids.update(two_status=grandchildren["two"].status, middle_status=children["middle"].status)
    return ids


def test_it_tails_a_running_two_level_nested_workflow_whole(
    server_url, key, config_home, nested, tmp_path
):
    gate = tmp_path / "gate"
    root = services.create_execution(nested["nest.outer"], {"gate": str(gate)})
    cli = start_cli(server_url, key, "execution", "tail", root.id, config_home=config_home)
    assert cli.stdout.readline() == f"Execution {root.id} has started.\n"
    gate.touch()  # the workflow was held running until the tail had begun
    out, err = finish(cli)
    assert cli.returncode == 0, err
    ids = family(Execution.objects.get(pk=root.id))
    story = [line.format(fail="no", **ids) for line in NESTED_STORY] + [
        "Task last started (core.local, execution {last}).".format(**ids),
        "Child execution (task=last) {last} has started.".format(**ids),
        "",
        "outer last",
        "",
        "Child execution (task=last) {last} has finished (status=succeeded).".format(**ids),
        "Task last finished (status=succeeded).",
        "",
        f"Execution {root.id} has completed (status=succeeded).",
    ]
    assert f"Execution {root.id} has started.\n{out}".splitlines() == story, out


def test_it_tails_a_nested_workflow_whose_grandchild_fails(tg, nested):
    root = services.create_execution(nested["nest.outer"], {"fail_inner": "yes"})
    wait_finished(root.id)
    result = tg("execution", "tail", root.id)
    assert result.code == 1
    ids = family(Execution.objects.get(pk=root.id))
    assert ids["two_status"] == "failed" and "last" not in ids
    story = [line.format(fail="yes", **ids) for line in NESTED_STORY[2:]]
    assert result.out.splitlines() == [
        *story,
        "",
        f"Execution {root.id} has completed (status=failed).",
    ]


def test_it_prints_exactly_the_stored_output_across_cut_connections(
    server_url, key, config_home, actions, tmp_path
):
    """Three cuts, each while the action waits for the test (so the stream is surely open)."""
    gates = [tmp_path / f"gate{i}" for i in range(3)]
    phase = 'for i in $(seq {0} {1}); do echo line $i; echo err $i >&2; done; while [ ! -e "{2}" ]; do sleep 0.05; done'
    cmd = "; ".join(phase.format(10 * n + 1, 10 * n + 10, gate) for n, gate in enumerate(gates))
    proxy = CuttableProxy(int(server_url.rsplit(":", 1)[1]))
    try:
        execution = services.create_execution(actions["core.local"], {"cmd": cmd + "; echo end"})
        cli = start_cli(proxy.url, key, "execution", "tail", execution.id, config_home=config_home)
        seen = []
        for n, gate in enumerate(gates):
            while not seen or seen[-1] != f"err {10 * n + 10}\n":
                seen.append(cli.stdout.readline())
            proxy.cut()
            gate.touch()
        rest, err = finish(cli)
    finally:
        proxy.close()
    assert cli.returncode == 0, err
    printed = "".join(seen) + rest
    header = f"Execution {execution.id} has started.\n\n"
    footer = f"\nExecution {execution.id} has completed (status=succeeded).\n"
    assert printed.startswith(header) and printed.endswith(footer)
    assert printed[len(header) : -len(footer)] == stored_text(execution.id)
    assert stored_text(execution.id).count("\n") == 61
    assert proxy.connections >= 4  # it really reconnected after each cut


def test_it_exits_130_quietly_on_ctrl_c(server_url, key, config_home, actions):
    execution = services.create_execution(actions["core.local"], {"cmd": "echo started; sleep 60"})
    cli = start_cli(server_url, key, "execution", "tail", execution.id, config_home=config_home)
    assert cli.stdout.readline() == f"Execution {execution.id} has started.\n"
    assert cli.stdout.readline() == "\n"
    assert cli.stdout.readline() == "started\n"
    cli.send_signal(signal.SIGINT)
    _, err = finish(cli)
    assert cli.returncode == 130
    assert err == ""
    services.cancel(Execution.objects.get(pk=execution.id))
    wait_finished(execution.id)


def test_it_resumes_across_a_server_restart(key, config_home, actions, cluster_mode):
    """The server dies mid-tail (its runner, and so the run, with it) and comes back: the
    tail reconnects, prints exactly what was stored, and ends with the run abandoned."""
    from tests.server_helpers import running_server

    if cluster_mode:
        pytest.skip("embedded mode: the server runs the runner in-process on the SQLite test db")
    # Waits at most 60 s, in case the action outlived its runner.
    cmd = "seq 1 20 | sed 's/^/line /'; for i in $(seq 1 1200); do sleep 0.05; done; echo end"
    fast_abandon = {
        "RUNNER_POLL_SECONDS": "0.2",
        "RUNNER_HEARTBEAT_SECONDS": "0.5",
        "RUNNER_ABANDON_GRACE_SECONDS": "2",
    }
    with running_server(**fast_abandon) as server:
        execution = services.create_execution(actions["core.local"], {"cmd": cmd})
        cli = start_cli(server.url, key, "execution", "tail", execution.id, config_home=config_home)
        seen = []
        while not seen or seen[-1] != "line 20\n":
            seen.append(cli.stdout.readline())
        server.kill()
        server.start()
        rest, err = finish(cli)
    assert cli.returncode == 1, err
    printed = "".join(seen) + rest
    header = f"Execution {execution.id} has started.\n\n"
    footer = f"\nExecution {execution.id} has completed (status=abandoned).\n"
    assert printed.startswith(header) and printed.endswith(footer), printed
    assert printed[len(header) : -len(footer)] == stored_text(execution.id)
    assert stored_text(execution.id).startswith("line 1\n") and "end" not in printed
