"""`tailgate`: run actions and follow their output from a terminal, as `st2` does.

    tailgate run examples.print_lines count=5 delay=0.2     waits, then shows the execution
    tailgate run examples.print_lines count=5 --tail        follows the output live
    tailgate run core.local cmd=make -a                     returns at once (async)
    tailgate run examples.print_lines -h                    the action's parameters
    tailgate execution list [--status S] [--action A] [--tenant T] [--parent ID] [-n N]
    tailgate execution get ID|last · output ID|last [--type T] · children ID
    tailgate execution tail [ID|last] [--type T] [--include-metadata]
    tailgate execution cancel ID… · re-run ID [--tail] [-a]
    tailgate action list [--pack P] · action get REF
    tailgate tenant list · tenant get SLUG
    tailgate key list · key get ID · key create NAME [--expires-in-days N] · key revoke ID…

Listing and showing commands take -j/--json, -y/--yaml, -a/--attr ATTR… (dotted paths,
`all`) and -w/--width N…; on run and re-run, -a means --async (as in st2) and --attr is long.

The server, the stream server and the key come from --url, --stream-url, --api-key, else
TAILGATE_URL, TAILGATE_STREAM_URL, TAILGATE_API_KEY, else ~/.config/tailgate/config.
Exit status: 0 done (run/tail: the execution succeeded), 1 the execution did not succeed,
2 an error (one line on stderr), 130 interrupted (Ctrl-C).
"""

import argparse
import os
import sys

from tailgate_client import commands
from tailgate_client.client import Client
from tailgate_client.config import ConfigError
from tailgate_client.errors import (
    ApiError,
    AuthenticationFailed,
    ServerError,
    ServerUnreachable,
    TailgateError,
    TooManyRequests,
    ValidationFailed,
)
from tailgate_client.parameters import ParameterSyntaxError

__all__ = ["build_parser", "main"]

OUTPUT_TYPES = ["stdout", "stderr", "other"]
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def _connection_options(top: bool) -> argparse.ArgumentParser:
    """--url/--stream-url/--api-key, before or after the command (top level sets defaults)."""
    parser = argparse.ArgumentParser(add_help=False)
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--url", default=default, help="server URL ($TAILGATE_URL)")
    parser.add_argument(
        "--stream-url", default=default, help="stream server URL ($TAILGATE_STREAM_URL)"
    )
    parser.add_argument("--api-key", default=default, help="API key ($TAILGATE_API_KEY)")
    return parser


def _format_options(attr_short: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("-j", "--json", action="store_true", help="print JSON")
    kind.add_argument("-y", "--yaml", action="store_true", help="print YAML")
    names = ["-a", "--attr"] if attr_short else ["--attr"]
    parser.add_argument(
        *names, nargs="+", metavar="ATTR", help="only these attributes (dotted paths, or all)"
    )
    parser.add_argument("-w", "--width", nargs="+", type=int, metavar="N", help="column widths")
    return parser


def _tail_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--type", choices=OUTPUT_TYPES, help="only this output stream")
    parser.add_argument(
        "--include-metadata", action="store_true", help="print each line as [timestamp][type] data"
    )
    return parser


def _start_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "-a", "--async", dest="run_async", action="store_true", help="do not wait: print its id"
    )
    mode.add_argument("--tail", action="store_true", help="follow its output until it ends")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailgate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_connection_options(top=True)],
    )
    commands_ = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    connection, shows = _connection_options(top=False), _format_options()
    starts = [connection, _start_options(), _tail_options(), _format_options(attr_short=False)]

    def add(group, name, handler, help, parents):
        sub = group.add_parser(name, help=help, description=help, parents=parents)
        sub.set_defaults(handler=handler, parser=sub)
        return sub

    run = commands_.add_parser(
        "run", help="run an action", description="Run an action.", parents=starts, add_help=False
    )
    run.set_defaults(handler=commands.run, parser=run)
    run.add_argument(
        "-h", "--help", action="store_true", help="this help; with REF, its parameters"
    )
    run.add_argument("ref", nargs="?", metavar="REF", help="action ref, pack.name")
    run.add_argument("parameters", nargs="*", metavar="name=value", help="run parameters")
    run.add_argument("--tenant", help="tenant slug (default: the default tenant)")

    execution = commands_.add_parser("execution", help="list, show, follow, cancel, re-run")
    group = execution.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    listing = add(group, "list", commands.execution_list, "executions, newest first",
                  [connection, shows])  # fmt: skip
    listing.add_argument("--status", help="comma list of statuses")
    listing.add_argument("--action", help="comma list of action refs")
    listing.add_argument("--tenant", help="comma list of tenant slugs")
    listing.add_argument("--parent", help="only the children of this execution")
    listing.add_argument("-n", "--last", type=int, default=commands.DEFAULT_LIST_COUNT,
                         metavar="N", help="how many (default %(default)s; -1: all)")  # fmt: skip
    for name, handler, help in (
        ("get", commands.execution_get, "one execution"),
        ("children", commands.execution_children, "a workflow's child executions"),
    ):
        add(group, name, handler, help, [connection, shows]).add_argument(
            "id", nargs="?" if name == "get" else None, default="last", help="id or last"
        )
    cancel = add(group, "cancel", commands.execution_cancel,
                 "cancel (kills the whole process tree)", [connection, shows])  # fmt: skip
    cancel.add_argument("ids", nargs="+", metavar="ID")
    rerun = add(group, "re-run", commands.re_run, "run again with the same parameters", starts)
    rerun.add_argument("id")
    output = add(group, "output", commands.execution_output, "the whole output", [connection])
    output.add_argument("id", nargs="?", default="last", help="id or last")
    output.add_argument("--type", choices=OUTPUT_TYPES, help="only this output stream")
    tail = add(group, "tail", commands.tail, "print output as it comes, until the end",
               [connection, _tail_options()])  # fmt: skip
    tail.add_argument("id", nargs="?", default="last", help="id or last (default)")

    action = commands_.add_parser("action", help="registered actions")
    group = action.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    add(group, "list", commands.action_list, "actions", [connection, shows]).add_argument(
        "--pack", help="only this pack"
    )
    add(group, "get", commands.action_get, "one action", [connection, shows]).add_argument("ref")

    tenant = commands_.add_parser("tenant", help="the tenants you may see, with your role")
    group = tenant.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    add(group, "list", commands.tenant_list, "tenants you may see", [connection, shows])
    add(group, "get", commands.tenant_get, "one tenant", [connection, shows]).add_argument("slug")

    key = commands_.add_parser("key", help="your API keys")
    group = key.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    add(group, "list", commands.key_list, "your API keys, newest first", [connection, shows])
    add(group, "get", commands.key_get, "one of your API keys", [connection, shows]).add_argument(
        "id", help="the key's id (the 12 hex digits after tg_)"
    )
    create = add(group, "create", commands.key_create,
                 "create an API key, shown once (only a superuser's key may create keys)",
                 [connection, shows])  # fmt: skip
    create.add_argument("name", help="what the key is for")
    create.add_argument("--expires-in-days", type=int, metavar="N",
                        help="it stops working after N days (default: never)")  # fmt: skip
    revoke = add(group, "revoke", commands.key_revoke, "revoke API keys; their streams end",
                 [connection, shows])  # fmt: skip
    revoke.add_argument("ids", nargs="+", metavar="ID")
    return parser


def explain(exc: Exception, client: Client | None) -> str:
    """One line that says what went wrong and, where it helps, what to do."""
    if isinstance(exc, ServerUnreachable):
        return f"{exc}. Is the server running? Set it with --url or TAILGATE_URL."
    if isinstance(exc, AuthenticationFailed):
        where = client.config_path if client else "~/.config/tailgate/config"
        return (
            f"{exc.detail} Set an API key with --api-key, TAILGATE_API_KEY, or "
            f"api_key under [credentials] in {where}."
        )
    if isinstance(exc, ValidationFailed):
        return f"invalid input: {exc}"
    if isinstance(exc, TooManyRequests):
        retry = f" Try again in {exc.retry_after:g} s." if exc.retry_after else ""
        return f"{exc.detail}{retry}"
    if isinstance(exc, ServerError):
        return f"the server failed ({exc.status}): {exc.detail}"
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = None
    try:
        client = Client(args.url, stream_url=args.stream_url, api_key=args.api_key)
        return args.handler(client, args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `tailgate … | head`: the reader left; say nothing, and keep Python from complaining
        # when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (TailgateError, ApiError, ConfigError, ParameterSyntaxError) as exc:
        sys.stderr.write(f"tailgate: {explain(exc, client)}\n")
        return EXIT_ERROR
    finally:
        if client:
            client.close()


def entry_point() -> None:
    """The console script: exit with main's status, quietly on Ctrl-C at any moment."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    entry_point()
