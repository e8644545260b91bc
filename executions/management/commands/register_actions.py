"""Registers the actions of pack folders, all or nothing (`executions.packs`)."""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from executions.packs import PackError, register


class Command(BaseCommand):
    help = (
        "Load or update actions from pack folders (packs/<pack>/actions/<name>.yaml). "
        "All or nothing: one bad file registers nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "paths",
            nargs="*",
            type=Path,
            help="packs folders, pack folders or metadata files (default: PACKS_DIRS)",
        )

    def handle(self, *args, paths, **options):
        try:
            created, updated = register(paths or settings.PACKS_DIRS)
        except PackError as exc:
            raise CommandError(f"nothing registered: {exc}") from None
        self.stdout.write(
            f"Registered {len(created) + len(updated)} actions "
            f"({len(created)} new, {len(updated)} updated)."
        )
        for ref in created:
            self.stdout.write(f"  + {ref}")
