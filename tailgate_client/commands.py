"""What each `tailgate` command does, given the parsed arguments and a `Client`.

Every handler returns the exit status: 0 done (for run/tail: the execution succeeded), 1 the
execution did not succeed. Errors are raised and turned into one line by `cli.main`.
"""

import sys
from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tailgate_client import formatting
from tailgate_client.client import Client
from tailgate_client.errors import NotFound, TailgateError
from tailgate_client.managers import FINISHED
from tailgate_client.parameters import describe_parameters, parse_parameters

EXECUTION_COLUMNS = ["id", "action_ref", "tenant", "status", "started_at", "finished_at"]
EXECUTION_DETAILS = [
    "id", "action_ref", "runner_type", "tenant", "status", "exit_code", "parameters", "parent",
    "task_name", "children", "created_at", "started_at", "finished_at", "output_purged_at",
    "error", "result",
]  # fmt: skip
ACTION_COLUMNS = ["ref", "runner_type", "description"]
ACTION_DETAILS = ["ref", "pack", "name", "description", "runner_type", "enabled", "parameters"]
TENANT_COLUMNS = ["slug", "name", "role"]
KEY_COLUMNS = ["id", "name", "state", "created_at", "expires_at", "last_used_at"]
KEY_DETAILS = [
    "id", "name", "state", "current", "created_at", "expires_at", "last_used_at", "revoked_at",
]  # fmt: skip
Row = dict[str, Any]
Handler = Callable[[Client, Namespace], int]
# st2's default for `execution list -n`.
DEFAULT_LIST_COUNT = 50


class NoExecutions(TailgateError):
    """`last` asked for, and the caller sees no execution at all."""

    def __init__(self) -> None:
        super().__init__("No executions found.")


def write(text: str, stream=None) -> None:
    stream = stream or sys.stdout
    stream.write(text)
    stream.flush()


def show(args: Namespace, value: Any, columns: list[str] | None = None) -> None:
    """`value` (a row or a list of rows) as JSON, YAML, a table or key/value lines."""
    attrs = getattr(args, "attr", None)
    if getattr(args, "json", False) or getattr(args, "yaml", False):
        picked = (
            [formatting.pick(v, attrs) for v in value]
            if isinstance(value, list)
            else (formatting.pick(value, attrs))
        )
        write(formatting.to_json(picked) if args.json else formatting.to_yaml(picked))
    elif isinstance(value, list):
        shown = formatting.columns_for(value, attrs, columns or [])
        write(formatting.table(value, shown, getattr(args, "width", None)))
    else:
        shown = formatting.columns_for([value], attrs, columns or [])
        write(formatting.details(value, shown, skip_empty=not attrs))


def show_execution(args: Namespace, execution: dict[str, Any]) -> None:
    """st2's layout by default: the status says how long it ran (`succeeded (2.5 s elapsed)`)."""
    plain = getattr(args, "attr", None) or args.json or args.yaml
    if not plain and (elapsed := _elapsed(execution)) is not None:
        execution = {**execution, "status": f"{execution['status']} ({elapsed:.1f} s elapsed)"}
    show(args, execution, EXECUTION_DETAILS)


def _elapsed(execution: dict[str, Any]) -> float | None:
    if not execution.get("started_at"):
        return None
    started = datetime.fromisoformat(execution["started_at"])
    ended = execution.get("finished_at")
    until = datetime.fromisoformat(ended) if ended else datetime.now(UTC)
    return (until - started).total_seconds()


def get_execution(client: Client, execution_id: str) -> dict[str, Any]:
    try:
        return client.executions.get(execution_id)
    except NotFound:
        if execution_id.lower() == "last":
            raise NoExecutions() from None
        raise


# --- actions, tenants, API keys: list and get -------------------------------------------
@dataclass(frozen=True)
class Resource:
    """How the CLI lists and shows one kind of resource."""

    manager: str  # the Client attribute: client.actions, client.tenants, client.keys
    columns: list[str]  # the table's columns
    details: list[str]  # the fields `get` shows
    lookup: str = "id"  # the argument naming one
    filters: tuple[str, ...] = ()  # the arguments `list` passes on as filters


ACTIONS = Resource("actions", ACTION_COLUMNS, ACTION_DETAILS, lookup="ref", filters=("pack",))
TENANTS = Resource("tenants", TENANT_COLUMNS, TENANT_COLUMNS, lookup="slug")
KEYS = Resource("keys", KEY_COLUMNS, KEY_DETAILS)


def lister(resource: Resource) -> Handler:
    """The `list` command of `resource`: a table (or JSON, YAML) of every row, paginated."""

    def list_(client: Client, args: Namespace) -> int:
        filters = {name: getattr(args, name) for name in resource.filters}
        show(args, getattr(client, resource.manager).get_all(**filters), resource.columns)
        return 0

    return list_


def getter(resource: Resource) -> Handler:
    """The `get` command of `resource`: one row's fields."""

    def get(client: Client, args: Namespace) -> int:
        found = getattr(client, resource.manager).get(getattr(args, resource.lookup))
        show(args, found, resource.details)
        return 0

    return get


action_list, action_get = lister(ACTIONS), getter(ACTIONS)
tenant_list, tenant_get = lister(TENANTS), getter(TENANTS)
key_list, key_get = lister(KEYS), getter(KEYS)


def each(args: Namespace, ids: list[str], change: Callable[[str], Row], says: str) -> int:
    """Cancel or revoke each of `ids` in turn: show the row (-j, -y) or say `says` of it."""
    for given in ids:
        changed = change(given)
        if args.json or args.yaml:
            show(args, changed)
        else:
            write(says.format(**changed) + "\n")
    return 0


def key_create(client: Client, args: Namespace) -> int:
    created = client.keys.create(args.name, args.expires_in_days)
    show(args, created, [*KEY_DETAILS, "key"])
    write("Note: the key is shown this once; the server keeps only its hash. Store it now.\n",
          sys.stderr)  # fmt: skip
    return 0


def key_revoke(client: Client, args: Namespace) -> int:
    return each(args, args.ids, client.keys.revoke, "API key {id} is revoked.")


# --- executions -------------------------------------------------------------------------
def execution_list(client: Client, args: Namespace) -> int:
    filters = {"status": args.status, "action": args.action, "tenant": args.tenant}
    wanted = None if args.last < 0 else args.last  # st2: -n -1 for all of them
    # One more than wanted, to know whether there were more.
    limit = None if wanted is None else wanted + 1
    rows = client.executions.get_all(limit=limit, parent=args.parent, **filters)
    show(args, rows[:wanted], EXECUTION_COLUMNS)
    if wanted is not None and len(rows) > wanted and not (args.json or args.yaml):
        write(f"Note: only the newest {args.last} are shown; use -n N for more.\n", sys.stderr)
    return 0


def execution_get(client: Client, args: Namespace) -> int:
    show_execution(args, get_execution(client, args.id))
    return 0


def execution_children(client: Client, args: Namespace) -> int:
    parent = get_execution(client, args.id)
    show(args, client.executions.children(parent["id"]), EXECUTION_COLUMNS)
    return 0


def execution_cancel(client: Client, args: Namespace) -> int:
    return each(args, args.ids, client.executions.cancel, "Execution {id} is {status}.")


def execution_output(client: Client, args: Namespace) -> int:
    execution = get_execution(client, args.id)
    with client.executions.open_output(execution["id"], args.type) as text:
        for chunk in text.chunks:
            write(chunk)
        if text.purged_at:
            write(f"tailgate: the output of {execution['id']} was purged on "
                  f"{text.purged_at}, after the retention period.\n", sys.stderr)  # fmt: skip
            return 1
    return 0


# --- run, re-run, tail ------------------------------------------------------------------
def run(client: Client, args: Namespace) -> int:
    if args.help or not args.ref:
        return run_help(client, args)
    action = client.actions.get(args.ref)
    parameters = parse_parameters(args.parameters, action.get("parameters"))
    return started(client, client.executions.create(args.ref, parameters, args.tenant), args)


def run_help(client: Client, args: Namespace) -> int:
    if args.ref:
        write(describe_parameters(client.actions.get(args.ref)) + "\n")
    write(args.parser.format_help())
    return 0


def re_run(client: Client, args: Namespace) -> int:
    return started(client, client.executions.re_run(args.id), args)


def started(client: Client, execution: dict[str, Any], args: Namespace) -> int:
    """After run / re-run: print hints (--async), follow (--tail) or wait and show (st2)."""
    execution_id = execution["id"]
    if args.run_async:
        write(f"Execution {execution_id} is {execution['status']}.\n\n"
              f"To see its result:\n  tailgate execution get {execution_id}\n\n"
              f"To follow its output:\n  tailgate execution tail {execution_id}\n")  # fmt: skip
        return 0
    if args.tail:
        write(f'Tailing execution "{execution_id}"\n')
        args.id = execution_id
        return tail(client, args)
    done = client.executions.wait(execution_id)
    show_execution(args, done)
    return 0 if done["status"] == "succeeded" else 1


def tail(client: Client, args: Namespace) -> int:
    """st2's `execution tail`: every line from the first, children at every depth."""
    execution = get_execution(client, args.id)
    execution_id = execution["id"]
    if execution["status"] not in FINISHED:
        write(f"Execution {execution_id} has started.\n\n")
    final: dict[str, Any] = {}
    for event in client.executions.tail(execution_id, args.type, include_children=True):
        if event.event == "done":
            final = event.data
        else:
            _print_event(client, event, args.include_metadata)
    status = final.get("status") or get_execution(client, execution_id)["status"]
    write(f"\nExecution {execution_id} has completed (status={status}).\n")
    return 0 if status == "succeeded" else 1


def _print_event(client: Client, event, include_metadata: bool) -> None:
    data = event.data
    if event.event == "execution.output__create":
        if include_metadata:
            write(f"[{data['timestamp']}][{data['output_type']}] {data['data']}")
        else:
            write(data["data"])
    elif event.event == "child_started":
        write(f"Child execution (task={data['task_name']}) {data['execution_id']} has started.\n\n")
    elif event.event == "child_finished":
        write(f"\nChild execution (task={data['task_name']}) {data['execution_id']} "
              f"has finished (status={data['status']}).\n")  # fmt: skip
    elif event.event == "gap":
        write(_gap_note(client, data), sys.stderr)


def _gap_note(client: Client, gap: dict[str, Any]) -> str:
    execution_id = gap.get("execution_id", "")
    count = gap["to_seq"] - gap["from_seq"] + 1
    if gap.get("reason") == "purged":
        purged_at = client.executions.get(execution_id).get("output_purged_at")
        return (f"[{count} chunks of output of {execution_id} were purged on {purged_at}, "
                f"after the retention period; `tailgate execution get {execution_id}` "
                "shows its status and result]\n")  # fmt: skip
    return (f"[{count} earlier chunks not shown ({gap.get('reason')}); the whole log: "
            f"tailgate execution output {execution_id}]\n")  # fmt: skip
