"""The retention command: parses and checks options, then runs `executions.retention`'s
passes (once, or every N seconds until a signal) and reports what they removed."""

import math
import signal
import threading
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, close_old_connections
from django.utils import timezone

from executions import retention
from executions.models import Action, Execution, Tenant


def _parse_before(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(
            f"--before {value!r} is not an ISO-8601 date or date-time "
            "(for example 2026-01-31 or 2026-01-31T12:00:00Z)"
        ) from None
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)


def _days_ago(
    now: datetime, days: int | None, flag: str, setting: str
) -> tuple[datetime | None, str | None]:
    """The cutoff `days` (the flag's, else the setting's) before `now`; or, for 0 days, no
    cutoff and what switched it off (`--days 0`, `OUTPUT_TTL_DAYS=0`)."""
    off = f"{flag} 0"
    if days is None:
        days, off = getattr(settings, setting), f"{setting}=0"
    return (now - timedelta(days=days), None) if days else (None, off)


def _stamp(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


class Command(BaseCommand):
    help = (
        "Delete the output of finished executions older than the TTL (OUTPUT_TTL_DAYS), in "
        "short batches that never block live work; with --executions also delete whole "
        "executions older than EXECUTION_TTL_DAYS. Executions that are not finished are "
        "never touched."
    )

    def add_arguments(self, parser):
        age = parser.add_argument_group("age (one of; default OUTPUT_TTL_DAYS days)")
        age.add_argument("--days", type=int, help="purge output finished N days ago or more")
        age.add_argument("--hours", type=int, help="purge output finished N hours ago or more")
        age.add_argument("--before", help="purge output finished before this ISO-8601 moment")
        parser.add_argument("--tenant", help="only this tenant (slug)")
        parser.add_argument("--action", help="only executions of this action ref")
        parser.add_argument(
            "--dry-run", action="store_true", help="count what would go, delete nothing"
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=retention.DEFAULT_BATCH_SIZE,
            help=f"output rows per transaction (default {retention.DEFAULT_BATCH_SIZE:,})",
        )
        parser.add_argument(
            "--pause-ratio",
            type=float,
            default=retention.DEFAULT_PAUSE_RATIO,
            metavar="RATIO",
            help="after each batch rest RATIO times as long as it took, leaving the database "
            f"to live work (default {retention.DEFAULT_PAUSE_RATIO:g}; 0 = full speed)",
        )
        parser.add_argument(
            "--executions",
            action="store_true",
            help="also delete whole executions older than EXECUTION_TTL_DAYS",
        )
        parser.add_argument(
            "--execution-days", type=int, help="with --executions: instead of EXECUTION_TTL_DAYS"
        )
        parser.add_argument(
            "--every",
            type=float,
            metavar="SECONDS",
            help="keep running, a pass every SECONDS; SIGTERM stops it between batches",
        )

    def handle(self, *args, **options):
        self.check_options(options)
        try:
            self.purge(options)
        except DatabaseError as exc:  # e.g. the database is down: a message, not a traceback
            raise CommandError(f"database error, stopped: {exc}") from None

    def purge(self, options) -> None:
        tenant = self.tenant(options["tenant"])
        action_ref = self.action_ref(options["action"])
        criteria, disabled = self.criteria(options, tenant, action_ref)
        for reason in disabled:
            self.say(reason)
        if not criteria.enabled:
            self.say("nothing to do: retention is disabled")
            return
        if options["dry_run"]:
            self.dry_run(criteria)
            return
        stop = threading.Event()
        with _stop_on_signals(stop):
            if options["every"] is None:
                self.run_once(criteria, options, stop)
            else:
                self.run_every(options, tenant, action_ref, stop)

    # --- arguments ----------------------------------------------------------------------
    def check_options(self, options) -> None:
        ages = [f"--{name}" for name in ("days", "hours", "before") if options[name] is not None]
        if len(ages) > 1:
            raise CommandError(f"use only one of --days, --hours, --before (got {', '.join(ages)})")
        for name in ("days", "hours", "execution_days"):
            if options[name] is not None and options[name] < 0:
                raise CommandError(f"--{name.replace('_', '-')} must be 0 or more")
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        if not 0 <= options["pause_ratio"] < math.inf:
            raise CommandError("--pause-ratio must be a number, 0 or more")
        if options["execution_days"] is not None and not options["executions"]:
            raise CommandError("--execution-days only makes sense with --executions")
        if options["before"] is not None:
            _parse_before(options["before"])
        for name in ("OUTPUT_TTL_DAYS", "EXECUTION_TTL_DAYS"):
            if getattr(settings, name) < 0:
                raise CommandError(f"{name} must be 0 or more, not {getattr(settings, name)}")
        if options["every"] is not None:
            if not 0 < options["every"] < math.inf:
                raise CommandError("--every must be a positive number of seconds")
            if options["dry_run"]:
                raise CommandError("--dry-run and --every do not go together")

    def criteria(
        self, options, tenant: Tenant | None, action_ref: str | None
    ) -> tuple[retention.Criteria, list[str]]:
        """The cutoffs as of now, and why a part is switched off (a TTL of 0)."""
        now = timezone.now()
        disabled = []
        if options["before"] is not None:
            output_before: datetime | None = _parse_before(options["before"])
        elif options["hours"] is not None:
            output_before = now - timedelta(hours=options["hours"])
            if options["hours"] == 0:
                output_before = None
                disabled.append("output purge disabled (--hours 0)")
        else:
            output_before, off = _days_ago(now, options["days"], "--days", "OUTPUT_TTL_DAYS")
            if off:
                disabled.append(f"output purge disabled ({off})")
        executions_before = None
        if options["executions"]:
            executions_before, off = _days_ago(
                now, options["execution_days"], "--execution-days", "EXECUTION_TTL_DAYS"
            )
            if off:
                disabled.append(f"execution deletion disabled ({off})")
        criteria = retention.Criteria(
            output_before=output_before,
            executions_before=executions_before,
            tenant=tenant,
            action_ref=action_ref,
        )
        return criteria, disabled

    def tenant(self, slug: str | None) -> Tenant | None:
        if slug is None:
            return None
        try:
            return Tenant.objects.get(slug=slug)
        except Tenant.DoesNotExist:
            raise CommandError(f"--tenant {slug!r}: no such tenant") from None

    def action_ref(self, ref: str | None) -> str | None:
        if ref is None:
            return None
        # An action removed since still has executions under its frozen ref.
        known = Action.objects.filter(ref=ref).exists()
        if not known and not Execution.objects.filter(action_ref=ref).exists():
            raise CommandError(f"--action {ref!r}: no such action and no execution of it")
        return ref

    # --- running ------------------------------------------------------------------------
    def dry_run(self, criteria: retention.Criteria) -> None:
        found = retention.estimate(criteria)
        if criteria.executions_before is not None:
            self.say(
                f"dry run: would delete {found.deleted_executions:,} executions "
                f"({found.deleted_rows:,} output rows) finished before "
                f"{_stamp(criteria.executions_before)}"
            )
        if criteria.output_before is not None:
            self.say(
                f"dry run: would delete {found.output_rows:,} output rows of "
                f"{found.output_executions:,} executions finished before "
                f"{_stamp(criteria.output_before)}"
            )

    def run_once(self, criteria: retention.Criteria, options, stop) -> None:
        on_batch = self.show_batch if self.stdout.isatty() else None
        done = self.run_pass(criteria, options, stop, on_batch=on_batch)
        self.say(self.summary(done, criteria))

    def run_every(self, options, tenant, action_ref, stop) -> None:
        self.say(f"collecting every {options['every']:g} s; SIGTERM stops between batches")
        passes = 0
        while not stop.is_set():
            passes += 1
            close_old_connections()  # a long-lived loop: drop connections past CONN_MAX_AGE
            criteria, _ = self.criteria(options, tenant, action_ref)
            try:
                done = self.run_pass(criteria, options, stop)
            except DatabaseError as exc:  # the collector outlives a database restart
                self.stderr.write(f"pass {passes}: database error, retrying next pass: {exc}")
                close_old_connections()
            else:
                self.say(f"pass {passes}: {self.summary(done, criteria)}")
            stop.wait(options["every"])
        self.say("stopped")

    def run_pass(self, criteria, options, stop, on_batch=None) -> retention.PassResult:
        done = retention.run_pass(
            criteria,
            options["batch_size"],
            on_batch=on_batch,
            should_stop=stop.is_set,
            pause_ratio=options["pause_ratio"],
            sleep=stop.wait,  # a signal ends the rest at once
        )
        if not stop.is_set():
            done.events = retention.prune_events(
                settings.EVENT_RETENTION_HOURS, options["batch_size"]
            )
        return done

    # --- reporting ----------------------------------------------------------------------
    def say(self, line: str) -> None:
        self.stdout.write(f"purge_output: {line}")
        self.stdout.flush()  # a pipe (cron log, systemd) sees each line as it happens

    def show_batch(self, batch: retention.BatchResult, total: retention.PassResult) -> None:
        self.stdout.write(
            f"  batch {total.batches:>5}: {batch.rows:>8,} rows, "
            f"{batch.purged + batch.deleted:>5,} executions "
            f"({batch.purged} purged, {batch.deleted} deleted) | "
            f"total {total.rows:,} rows, {total.purged + total.deleted:,} executions | "
            f"{total.rows_per_second:,.0f} rows/s"
        )
        self.stdout.flush()

    def summary(self, done: retention.PassResult, criteria: retention.Criteria) -> str:
        scope = []
        if criteria.output_before is not None:
            scope.append(f"output finished before {_stamp(criteria.output_before)}")
        if criteria.executions_before is not None:
            scope.append(f"executions finished before {_stamp(criteria.executions_before)}")
        verb = "stopped after deleting" if done.stopped else "deleted"
        return (
            f"{verb} {done.rows:,} output rows in {done.batches:,} batches, "
            f"output purged for {done.purged:,} executions, "
            f"{done.deleted:,} executions deleted ({'; '.join(scope)}), "
            f"{done.events:,} lifecycle events older than {settings.EVENT_RETENTION_HOURS} h "
            f"deleted "
            f"in {done.seconds:.1f} s, {done.rows_per_second:,.0f} rows/s"
        )


class _stop_on_signals:
    """SIGTERM and SIGINT set `stop` (checked between batches) instead of killing mid-way.

    Only the main thread may install handlers; called from elsewhere (tests), it is a no-op.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.previous: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, lambda *_: self.stop.set())
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
