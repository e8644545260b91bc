"""A runner process without a web server (cluster mode, beside `serve --no-runner`)."""

import asyncio
import signal

from django.conf import settings
from django.core.management.base import BaseCommand

from executions.runner_service import RunnerService


class Command(BaseCommand):
    help = (
        "Run actions: claim scheduled executions and run up to --concurrency at once. "
        "SIGTERM or SIGINT stops claiming and lets running executions finish within "
        "RUNNER_SHUTDOWN_GRACE_SECONDS; what is left is stopped (its output says so) and "
        "marked abandoned. If this process dies, its actions' process groups die with it. "
        "Output writes the database refuses are retried for RUNNER_DB_OUTAGE_SECONDS "
        "(docs/guarantees.md)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--concurrency",
            type=int,
            default=settings.RUNNER_CONCURRENCY,
            help="executions run at once (default RUNNER_CONCURRENCY)",
        )

    def handle(self, *args, concurrency, **options):
        if concurrency < 1:
            self.stderr.write("--concurrency must be at least 1")
            raise SystemExit(2)
        asyncio.run(self._main(concurrency))

    async def _main(self, concurrency: int) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        service = RunnerService(concurrency)
        self.stdout.write(
            f"actionrunner {service.runner_id}: concurrency {concurrency}", ending="\n"
        )
        self.stdout.flush()
        await service.run_forever(stop)
        self.stdout.write("actionrunner stopped")
