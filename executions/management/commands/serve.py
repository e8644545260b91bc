"""Embedded mode: daphne and the action runner in one process, on one event loop."""

import asyncio
import logging

from django.conf import settings
from django.core.management.base import BaseCommand

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Serve Tailgate with daphne. In embedded mode (the default) the action runner runs in "
        "the same event loop, so the in-memory channel layer reaches every stream."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--no-runner",
            action="store_true",
            help="serve only; executions are run by `manage.py actionrunner`",
        )
        parser.add_argument("--concurrency", type=int, default=settings.RUNNER_CONCURRENCY)

    def handle(self, *args, host, port, no_runner, concurrency, **options):
        # Importing daphne.server installs Twisted's asyncio reactor on `twisted_loop`.
        from daphne.server import twisted_loop
        from twisted.internet import reactor

        from executions import publish
        from project.asgi import application
        from project.server import server_class

        runner = None
        if settings.EMBEDDED_RUNNER and not no_runner:
            from executions.runner_service import RunnerService

            runner = RunnerService(concurrency)

        def start_runner():
            publish.set_home_loop(twisted_loop)
            if runner is not None:
                twisted_loop.create_task(runner.start_service())

        def stop_runner():
            if runner is not None:
                return _as_deferred(runner.stop(grace_seconds=5))
            return None

        def ready():
            mode = "cluster" if settings.REDIS_URL else "embedded"
            where = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
            self.stdout.write(
                f"Tailgate ({mode} mode{', runner in-process' if runner else ''}) on {where}/\n"
                f"  admin:      {where}/admin/\n  executions: {where}/executions/\n"
            )
            self.stdout.flush()

        reactor.callWhenRunning(start_runner)
        reactor.addSystemEventTrigger("before", "shutdown", stop_runner)
        interface = host.replace(":", r"\:")
        # daphne, with a flow-control extension in each scope: streams wait for slow clients.
        server_class()(
            application=application,
            endpoints=[f"tcp:port={port}:interface={interface}"],
            ready_callable=ready,
            application_close_timeout=5,
            # WebSockets' keep-alive: daphne pings an idle socket this often (SSE streams
            # send a comment at the same interval themselves).
            ping_interval=settings.STREAM_KEEPALIVE_SECONDS,
        ).run()


def _as_deferred(coro):
    from twisted.internet.defer import Deferred

    return Deferred.fromFuture(asyncio.ensure_future(coro))
