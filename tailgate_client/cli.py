"""`tailgate`: run actions and follow their output from a terminal.

    tailgate run examples.print_lines count=5 delay=0.2 --tail
    tailgate execution tail last [--type stdout] [--include-metadata]
    tailgate execution list [--status running] [--action examples.build]
    tailgate execution get ID [-j]
    tailgate execution cancel ID · tailgate execution re-run ID [--tail]
    tailgate action list

The server is TAILGATE_URL (default http://127.0.0.1:8000), the key TAILGATE_API_KEY (or
--url / --api-key). `tail` exits 0 when the execution succeeded and 1 otherwise.
"""

import argparse
import json
import sys
from typing import Any

import httpx

from tailgate_client.client import ApiError, Client

FINISHED = {"succeeded", "failed", "timeout", "canceled", "abandoned"}


def parse_parameters(pairs: list[str]) -> dict[str, Any]:
    """`name=value` pairs; a value that parses as JSON (numbers, lists, booleans) is taken as such."""
    parameters: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"tailgate: parameter {pair!r} must look like name=value")
        try:
            parameters[name] = json.loads(value)
        except json.JSONDecodeError:
            parameters[name] = value
    return parameters


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _print_output(event, include_metadata: bool) -> None:
    data = event.data
    if include_metadata:
        _write(f"[{data['timestamp']}][{data['output_type']}] {data['data']}")
    else:
        _write(data["data"])


def _follow(client: Client, execution_id: str, args) -> dict[str, Any]:
    """Print one execution's output from its first line until it ends; its final status."""
    final = None
    for event in client.follow_output(execution_id, args.type):
        if event.event == "execution.output__create":
            _print_output(event, args.include_metadata)
        elif event.event == "gap":
            skipped = event.data["to_seq"] - event.data["from_seq"] + 1
            sys.stderr.write(
                f"[{skipped} earlier lines not shown ({event.data.get('reason')}); "
                f"the whole log: tailgate execution output {execution_id}]\n"
            )
        elif event.event == "done":
            final = event.data
    return final or {}


def tail(client: Client, args) -> int:
    """StackStorm's `st2 execution tail`, with backfill, resume and workflow children."""
    execution = client.execution(args.id)
    execution_id = execution["id"]
    if execution["status"] not in FINISHED:
        _write(f"Execution {execution_id} has started.\n\n")
    if execution["runner_type"] == "workflow":
        _follow_children(client, execution_id, args)
    final = _follow(client, execution_id, args) if execution["runner_type"] != "workflow" else {}
    execution = client.execution(execution_id)
    if execution.get("output_purged_at"):
        _write(f"(output purged on {execution['output_purged_at']})\n")
    status = final.get("status") or execution["status"]
    _write(f"\nExecution {execution_id} has completed (status={status}).\n")
    return 0 if status == "succeeded" else 1


def _follow_children(client: Client, execution_id: str, args) -> None:
    """Follow a workflow's children one by one, each from its first line."""
    followed: set[str] = set()
    while True:
        pending = [c for c in client.children(execution_id) if c["id"] not in followed]
        if not pending:
            if client.execution(execution_id)["status"] in FINISHED:
                return
            _wait_for_child(client, execution_id, followed)
            continue
        child = pending[0]
        followed.add(child["id"])
        task = child.get("task_name") or child["action_ref"]
        _write(f"Child execution (task={task}) {child['id']} has started.\n\n")
        final = _follow(client, child["id"], args)
        status = final.get("status") or client.execution(child["id"])["status"]
        _write(f"\nChild execution (task={task}) {child['id']} has finished (status={status}).\n")


def _wait_for_child(client: Client, execution_id: str, followed: set[str]) -> None:
    """Wait for the workflow's next child or its end, on the workflow's own output stream."""
    for event in client.follow_output(execution_id, "other"):
        if event.event == "done":
            return
        if "started" in event.data.get("data", "") and any(
            c["id"] not in followed for c in client.children(execution_id)
        ):
            return


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = [max([len(c)] + [len(str(r.get(c) or "")) for r in rows]) for c in columns]
    _write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + "\n")
    for row in rows:
        cells = [str(row.get(c) if row.get(c) is not None else "") for c in columns]
        _write("  ".join(v.ljust(w) for v, w in zip(cells, widths, strict=True)) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailgate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="server URL (default $TAILGATE_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="API key (default $TAILGATE_API_KEY)")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run an action")
    run.add_argument("action", help="action ref, pack.name")
    run.add_argument("parameters", nargs="*", help="name=value pairs")
    run.add_argument("--tenant")
    run.add_argument("--tail", action="store_true", help="follow the output until it ends")
    _add_tail_options(run)

    execution = commands.add_parser("execution", help="list, show, tail, cancel, re-run")
    sub = execution.add_subparsers(dest="subcommand", required=True)
    tail_cmd = sub.add_parser("tail", help="print output as it is produced, until the end")
    tail_cmd.add_argument("id", nargs="?", default="last", help="execution id or `last`")
    _add_tail_options(tail_cmd)
    output = sub.add_parser("output", help="print the whole output so far")
    output.add_argument("id", nargs="?", default="last")
    output.add_argument("--type", choices=["stdout", "stderr", "other"])
    listing = sub.add_parser("list", help="newest executions first")
    listing.add_argument("--status")
    listing.add_argument("--action")
    listing.add_argument("--tenant")
    listing.add_argument("-n", "--limit", type=int, default=20)
    get = sub.add_parser("get", help="one execution")
    get.add_argument("id", nargs="?", default="last")
    get.add_argument("-j", "--json", action="store_true")
    cancel = sub.add_parser("cancel", help="cancel (kills the whole process tree)")
    cancel.add_argument("id")
    rerun = sub.add_parser("re-run", help="run again with the same parameters")
    rerun.add_argument("id")
    rerun.add_argument("--tail", action="store_true")
    _add_tail_options(rerun)

    action = commands.add_parser("action", help="registered actions")
    action.add_subparsers(dest="subcommand", required=True).add_parser("list")
    return parser


def _add_tail_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--type", choices=["stdout", "stderr", "other"], help="only this stream")
    parser.add_argument(
        "--include-metadata", action="store_true", help="print each line as [timestamp][type] data"
    )


def _started(client: Client, execution: dict[str, Any], args) -> int:
    if not args.tail:
        _write(json.dumps(execution, indent=2) + "\n")
        return 0
    _write(f'Tailing execution "{execution["id"]}"\n')
    args.id = execution["id"]
    return tail(client, args)


def dispatch(client: Client, args) -> int:
    if args.command == "run":
        return _started(
            client, client.run(args.action, parse_parameters(args.parameters), args.tenant), args
        )
    if args.command == "action":
        _table(client.actions(), ["ref", "runner_type", "description"])
        return 0
    if args.subcommand == "tail":
        return tail(client, args)
    if args.subcommand == "output":
        _write(client.output_text(args.id, args.type))
        return 0
    if args.subcommand == "list":
        rows = client.executions(
            status=args.status, action=args.action, tenant=args.tenant, limit=args.limit
        )
        _table(rows, ["id", "action_ref", "tenant", "status", "started_at", "exit_code"])
        return 0
    if args.subcommand == "get":
        found = client.execution(args.id)
        if args.json:
            _write(json.dumps(found, indent=2) + "\n")
        else:
            for key in (
                "id",
                "action_ref",
                "tenant",
                "status",
                "exit_code",
                "started_at",
                "finished_at",
                "parameters",
                "result",
                "error",
            ):
                value = found.get(key)
                shown = json.dumps(value) if isinstance(value, (dict, list)) else value
                _write(f"{key:12} {shown}\n")
        return 0
    if args.subcommand == "cancel":
        found = client.cancel(args.id)
        _write(f"Execution {found['id']} is {found['status']}.\n")
        return 0
    if args.subcommand == "re-run":
        return _started(client, client.re_run(args.id), args)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = Client(args.url, args.api_key)
    try:
        return dispatch(client, args)
    except ApiError as exc:
        sys.stderr.write(f"tailgate: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    except (OSError, httpx.TransportError) as exc:
        sys.stderr.write(f"tailgate: cannot reach {client.url}: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
