"""The `tailgate` CLI against a real server: every command and output format, run waiting,
async and tailing, parameters converted by the action's schema, configuration, errors and
exit codes. (Tail itself: test_cli_tail.py.)"""

import io
import json
import re

import pytest
import yaml
from django.core.management import CommandError, call_command

from executions import services
from executions.models import Execution
from tests.cli_helpers import run_cli, stored_text, wait_finished
from tests.runner_helpers import wait_until

pytest_plugins = ["tests.cli_fixtures"]
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MISSING_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


def finished(action, **parameters) -> Execution:
    execution = services.create_execution(action, parameters)
    return wait_finished(execution.id)


def table_rows(out: str) -> list[list[str]]:
    """A table's header and rows, split on runs of spaces (the rule line left out)."""
    lines = out.splitlines()
    assert set(lines[1]) <= {"-", " "}
    return [line.split() for line in [lines[0], *lines[2:]]]


def test_it_lists_executions_as_a_table_json_yaml_and_chosen_attributes(tg, actions):
    ok = finished(actions["examples.print_lines"], count=2, delay=0)
    bad = finished(actions["examples.fail"])

    rows = table_rows(tg("execution", "list").out)
    assert rows[0] == ["id", "action_ref", "tenant", "status", "started_at", "finished_at"]
    assert [r[:4] for r in rows[1:]] == [
        [bad.id, "examples.fail", "default", "failed"],
        [ok.id, "examples.print_lines", "default", "succeeded"],
    ]
    listed = json.loads(tg("execution", "list", "-j").out)
    assert [e["id"] for e in listed] == [bad.id, ok.id] and listed[1]["exit_code"] == 0
    assert yaml.safe_load(tg("execution", "list", "-y").out) == listed

    chosen = table_rows(tg("execution", "list", "-a", "id", "status", "parameters.count").out)
    assert chosen == [
        ["id", "status", "parameters.count"],
        [bad.id, "failed"],
        [ok.id, "succeeded", "2"],
    ]
    picked = json.loads(tg("execution", "list", "-j", "--attr", "id", "parameters.count").out)
    assert picked == [{"id": bad.id}, {"id": ok.id, "parameters": {"count": 2}}]

    assert table_rows(tg("execution", "list", "--status", "failed").out)[1][0] == bad.id
    only = tg("execution", "list", "--action", "examples.print_lines", "-a", "id")
    assert table_rows(only.out)[1:] == [[ok.id]]
    newest = tg("execution", "list", "-n", "1", "-a", "id")
    assert table_rows(newest.out)[1:] == [[bad.id]]
    assert "only the newest 1 are shown" in newest.err
    every = tg("execution", "list", "-n", "-1", "-a", "id")
    assert table_rows(every.out)[1:] == [[bad.id], [ok.id]] and every.err == ""


def test_it_sizes_tables_to_the_terminal_or_to_given_widths(tg, actions):
    narrow = tg("action", "list", COLUMNS="60")
    assert max(len(line) for line in narrow.out.splitlines()) <= 60
    assert "core.local" in narrow.out and "Run a command on" in narrow.out
    fixed = tg("action", "list", "-a", "ref", "description", "-w", "12", "20")
    lines = fixed.out.splitlines()
    assert lines[0] == "ref" + " " * 11 + "description"
    assert all(len(line) <= 12 + 2 + 20 for line in lines)
    assert len(lines) > 2 + len(actions)  # long descriptions wrapped onto more lines


def test_it_shows_one_execution_in_every_format(tg, actions):
    execution = finished(actions["examples.print_lines"], count=2, delay=0)
    shown = tg("execution", "get", execution.id)
    assert shown.code == 0
    assert f"id: {execution.id}\n" in shown.out
    assert re.search(r"^status: succeeded \(\d+\.\d s elapsed\)$", shown.out, re.MULTILINE)
    assert "parameters:\n  count: 2\n  delay: 0\n" in shown.out
    assert tg("execution", "get", "last").out == shown.out
    assert tg("execution", "get").out == shown.out  # `last` by default

    as_json = json.loads(tg("execution", "get", execution.id, "-j").out)
    assert as_json["id"] == execution.id and as_json["exit_code"] == 0
    assert yaml.safe_load(tg("execution", "get", execution.id, "-y").out) == as_json
    picked = tg("execution", "get", execution.id, "-a", "id", "parameters.count")
    assert picked.out == f"id: {execution.id}\nparameters.count: 2\n"
    assert json.loads(tg("execution", "get", "last", "-j", "-a", "parameters.count").out) == {
        "parameters": {"count": 2}
    }


def test_it_lists_and_shows_actions(tg, actions):
    refs = [row[0] for row in table_rows(tg("action", "list").out)[1:]]
    assert refs == sorted(actions)
    core = json.loads(tg("action", "list", "--pack", "core", "-j").out)
    assert [a["ref"] for a in core] == ["core.local", "core.remote"]
    assert yaml.safe_load(tg("action", "list", "--pack", "core", "-y").out) == core

    local = tg("action", "get", "core.local")
    assert local.code == 0 and "ref: core.local\n" in local.out
    assert "parameters:\n  cmd:\n    type: string\n    required: true\n" in local.out
    typed = tg("action", "get", "core.local", "-a", "parameters.cmd.type", "runner_type")
    assert typed.out == "parameters.cmd.type: string\nrunner_type: local-shell-cmd\n"
    assert json.loads(tg("action", "get", "core.local", "-j").out)["ref"] == "core.local"
    missing = tg("action", "get", "nope.nope")
    assert missing.code == 2 and missing.err == "tailgate: There is no action nope.nope.\n"


def test_it_runs_and_waits_then_shows_the_execution_like_st2(tg, actions):
    done = tg("run", "examples.print_lines", "count=2", "delay=0")
    assert done.code == 0, done.err
    assert re.search(r"^status: succeeded \(\d+\.\d s elapsed\)$", done.out, re.MULTILINE)
    assert "exit_code: 0\n" in done.out
    assert "parameters:\n  count: 2\n" in done.out

    failed = tg("run", "examples.fail")
    assert failed.code == 1
    assert "status: failed (" in failed.out and "exit_code: 3\n" in failed.out
    as_json = json.loads(tg("run", "examples.print_lines", "count=1", "delay=0", "-j").out)
    assert as_json["status"] == "succeeded"
    assert as_json["finished_at"] is not None


def test_it_converts_parameters_by_the_actions_schema(tg, actions):
    assert tg("run", "core.local", "cmd=true").code == 0  # a string, not JSON's true
    number = json.loads(tg("run", "core.local", "cmd=42", "-j").out)
    assert number["parameters"]["cmd"] == "42"  # run, and failed: `42` is no command
    with_env = tg("run", "core.local", "cmd=echo $GREETING", 'env={"GREETING": "hi"}', "-j")
    run = json.loads(with_env.out)
    assert with_env.code == 0 and run["parameters"]["env"] == {"GREETING": "hi"}
    assert stored_text(run["id"]) == "hi\n"
    flags = json.loads(tg("run", "core.local", "cmd=true", "pty=yes", "timeout=30", "-j").out)
    assert flags["parameters"]["pty"] is True and flags["parameters"]["timeout"] == 30

    refused = tg("run", "examples.print_lines", "count=lots")
    assert refused.code == 2
    assert refused.err == (
        "tailgate: invalid input: body.parameters.count: must be of type integer (got 'lots')\n"
    )
    malformed = tg("run", "examples.print_lines", "count")
    assert malformed.code == 2 and "'count' must look like name=value" in malformed.err


def test_it_runs_async_or_tailing(tg, actions):
    started = tg("run", "examples.print_lines", "count=2", "delay=0", "-a")
    assert started.code == 0
    execution_id = started.out.split()[1]
    assert f"tailgate execution get {execution_id}\n" in started.out
    assert f"tailgate execution tail {execution_id}\n" in started.out
    assert wait_finished(execution_id).status == "succeeded"

    tailed = tg("run", "examples.print_lines", "count=2", "delay=0", "--tail")
    assert tailed.code == 0
    tailed_id = tailed.out.split('"')[1]
    assert tailed.out.startswith(f'Tailing execution "{tailed_id}"\n')
    # "has started" only when it was still running as the tail began
    body = tailed.out.split("\n", 1)[1].removeprefix(f"Execution {tailed_id} has started.\n\n")
    assert body == (
        stored_text(tailed_id) + f"\nExecution {tailed_id} has completed (status=succeeded).\n"
    )


def test_it_lists_an_actions_parameters_on_run_help(tg, actions):
    shown = tg("run", "examples.print_lines", "-h")
    assert shown.code == 0
    assert shown.out.startswith("examples.print_lines: Print `count` lines")
    assert (
        "Optional parameters:\n  count (integer; default: 10)\n      How many lines.\n" in shown.out
    )
    assert "  delay (number; default: 0.5)\n      Seconds between lines.\n" in shown.out
    assert "usage: tailgate run" in shown.out
    local = tg("run", "core.local", "--help").out
    assert "Required parameters:\n  cmd (string)\n      The command, run by /bin/sh -c.\n" in local
    assert "  pty (boolean; default: false)\n" in local
    bare = tg("run", "-h")
    assert bare.code == 0 and bare.out.startswith("usage: tailgate run")
    missing = tg("run", "nope.nope", "-h")
    assert missing.code == 2 and "There is no action nope.nope." in missing.err
    assert Execution.objects.count() == 0  # help runs nothing


def test_it_cancels_and_runs_again(tg, actions):
    long = services.create_execution(actions["core.local"], {"cmd": "sleep 60"})
    wait_until(
        lambda: Execution.objects.get(pk=long.id).status == "running", 60, "the run to start"
    )
    canceled = tg("execution", "cancel", long.id)
    assert canceled.code == 0 and canceled.out.startswith(f"Execution {long.id} is cancel")
    assert wait_finished(long.id).status == "canceled"
    again = tg("execution", "cancel", long.id)
    assert again.code == 2 and again.err.startswith("tailgate: ") and again.err.count("\n") == 1

    done = finished(actions["examples.print_lines"], count=1, delay=0)
    rerun = tg("execution", "re-run", done.id, "-j")
    assert rerun.code == 0
    assert json.loads(rerun.out)["status"] == "succeeded"
    assert json.loads(rerun.out)["id"] != done.id
    quick = tg("execution", "re-run", done.id, "--async")
    assert quick.code == 0 and "tailgate execution tail" in quick.out
    tailed = tg("execution", "re-run", done.id, "--tail")
    assert tailed.code == 0 and "Line: 1\n" in tailed.out


def test_it_prints_output_and_children(tg, actions):
    execution = finished(actions["examples.print_lines"], count=4, delay=0)
    output = tg("execution", "output", execution.id)
    assert output.code == 0 and output.out == stored_text(execution.id)
    assert tg("execution", "output", "last", "--type", "stderr").out == (
        "stderr -> Line: 1\nstderr -> Line: 3\n"
    )

    workflow = finished(actions["examples.deploy"], steps=1)
    rows = table_rows(tg("execution", "children", workflow.id, "-a", "task_name", "status").out)
    assert rows == [
        ["task_name", "status"],
        *[[t, "succeeded"] for t in ("build", "test", "summary")],
    ]
    children = json.loads(tg("execution", "list", "--parent", workflow.id, "-j").out)
    assert sorted(c["task_name"] for c in children) == ["build", "summary", "test"]


def test_it_explains_errors_in_one_line(server_url, key, config_home, actions):
    def run(key, *args):
        result = run_cli(server_url, key, *args, config_home=config_home)
        assert result.code == 2 and result.err.count("\n") == 1 and result.out == ""
        return result.err

    for wrong in (None, "tg_nope"):
        err = run(wrong, "execution", "list")
        assert "--api-key" in err and "TAILGATE_API_KEY" in err
        assert str(config_home / "tailgate" / "config") in err
    assert run(key, "execution", "get", "last") == "tailgate: No executions found.\n"
    assert run(key, "execution", "tail") == "tailgate: No executions found.\n"
    assert (
        run(key, "execution", "get", MISSING_ID)
        == f"tailgate: There is no execution {MISSING_ID}.\n"
    )
    assert run(key, "execution", "list", "--status", "bogus") == (
        "tailgate: invalid input: query.status: Select a valid choice. bogus is not one of the "
        "available choices. (got 'bogus')\n"
    )


def test_it_says_when_the_server_cannot_be_reached(config_home):
    result = run_cli("http://127.0.0.1:9", "k", "execution", "list", config_home=config_home)
    assert result.code == 2
    assert result.err.startswith("tailgate: cannot reach http://127.0.0.1:9: ")
    assert result.err.endswith("Set it with --url or TAILGATE_URL.\n")


def write_config(config_home, text: str) -> None:
    (config_home / "tailgate").mkdir(exist_ok=True)
    (config_home / "tailgate" / "config").write_text(text)


def test_it_takes_flags_over_environment_over_the_config_file(
    server_url, key, config_home, actions
):
    finished(actions["examples.print_lines"], count=1, delay=0)
    write_config(
        config_home, f"[general]\nbase_url = {server_url}\n[credentials]\napi_key = {key}\n"
    )
    assert run_cli(None, None, "execution", "get", "-a", "status", config_home=config_home).out == (
        "status: succeeded\n"
    )
    nowhere = "http://127.0.0.1:9"
    by_env = run_cli(None, None, "action", "list", config_home=config_home, TAILGATE_URL=nowhere)
    assert by_env.code == 2 and "cannot reach http://127.0.0.1:9" in by_env.err
    by_flag = run_cli(
        server_url, None, "action", "list", config_home=config_home, TAILGATE_URL=nowhere
    )
    assert by_flag.code == 0
    bad_key = run_cli(None, "tg_nope", "action", "list", config_home=config_home)
    assert bad_key.code == 2

    write_config(config_home, f"[general]\nbase_url = {server_url}\n[stream]\nurl = {nowhere}\n")
    apart = run_cli(None, key, "execution", "output", "last", config_home=config_home)
    assert apart.code == 2 and "cannot reach http://127.0.0.1:9" in apart.err  # streams go there
    fixed = run_cli(None, key, "--stream-url", server_url, "execution", "output", "last",
                    config_home=config_home)  # fmt: skip
    assert fixed.code == 0 and "Line: 1" in fixed.out
    after = run_cli(None, key, "execution", "output", "last", "--stream-url", server_url,
                    config_home=config_home)  # fmt: skip
    assert after.code == 0  # connection flags also after the command

    write_config(config_home, "this is not [an ini file\n")
    broken = run_cli(server_url, key, "action", "list", config_home=config_home)
    assert broken.code == 2 and "tailgate/config" in broken.err


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["run"],
        ["execution"],
        ["execution", "list"],
        ["execution", "get"],
        ["execution", "children"],
        ["execution", "cancel"],
        ["execution", "re-run"],
        ["execution", "output"],
        ["execution", "tail"],
        ["action"],
        ["action", "list"],
        ["action", "get"],
        ["tenant"],
        ["tenant", "list"],
        ["tenant", "get"],
        ["key"],
        ["key", "list"],
        ["key", "get"],
        ["key", "create"],
        ["key", "revoke"],
    ],
)
def test_it_has_help_on_every_command(command, config_home):
    result = run_cli(None, None, *command, "-h", config_home=config_home)
    assert result.code == 0 and result.out.startswith(
        f"usage: tailgate {' '.join(command)}".rstrip()
    )


def test_it_stops_quietly_when_the_reader_goes_away(server_url, key, config_home, actions):
    """`tailgate execution output ID | head -1`: no BrokenPipeError traceback."""
    from tests.cli_helpers import start_cli

    # 220 kB: more than a pipe holds, so the command surely writes after the reader left.
    execution = finished(actions["core.local"], cmd="seq 1 20000 | sed 's/^/line /'")
    cli = start_cli(server_url, key, "execution", "output", execution.id, config_home=config_home)
    assert cli.stdout.readline() == "line 1\n"
    cli.stdout.close()
    err = cli.stderr.read()
    assert cli.wait(timeout=60) == 0
    assert err == ""


def test_it_runs_in_the_tenant_asked_for(tg, actions, tenant):
    ran = json.loads(tg("run", "core.local", "cmd=true", "--tenant", tenant.slug, "-j").out)
    assert ran["tenant"] == tenant.slug and ran["status"] == "succeeded"
    listed = tg("execution", "list", "--tenant", tenant.slug, "-a", "id")
    assert table_rows(listed.out)[1:] == [[ran["id"]]]
    missing = tg("run", "core.local", "cmd=true", "--tenant", "nope")
    assert missing.code == 2 and missing.err == "tailgate: There is no tenant nope.\n"


def test_it_says_what_a_caller_may_not_do_in_one_line(server_url, config_home, actions, outsider):
    from rbac.models import ApiKey

    key = ApiKey.issue(outsider, name="cli")[1]
    refused = run_cli(server_url, key, "run", "core.local", "cmd=true", config_home=config_home)
    assert refused.code == 2
    assert refused.err == "tailgate: You may not run core.local in tenant default.\n"
    assert Execution.objects.count() == 0


def test_it_schedules_from_the_server_shell_with_the_cli_parameter_syntax(actions, tenant):
    """`manage.py run_action` takes the CLI's `name=value` words; the server converts them."""
    out = io.StringIO()
    call_command("run_action", "examples.print_lines", "count=3", "delay=0", stdout=out)
    execution = Execution.objects.get()
    assert execution.parameters["count"] == 3 and execution.status == "scheduled"
    assert f"execution {execution.id}" in out.getvalue()
    with pytest.raises(CommandError, match="'count' must look like name=value"):
        call_command("run_action", "examples.print_lines", "count")
    with pytest.raises(CommandError, match="bad parameters"):
        call_command("run_action", "examples.print_lines", "count=lots")
