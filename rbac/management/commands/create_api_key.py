"""Issues an API key for a user from the server's shell (the key is printed once)."""

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from rbac.models import ApiKey

# Longer than this is "never" in practice; leave --expires out for a key that never expires.
MAX_EXPIRES_DAYS = 3650


class Command(BaseCommand):
    help = (
        "Create an API key for USER and print it, once: only a hash is stored. "
        "Send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`."
    )

    def add_arguments(self, parser):
        parser.add_argument("username", metavar="USER")
        parser.add_argument("--name", default="", help="what the key is for")
        parser.add_argument(
            "--expires",
            metavar="DAYS",
            help=f"days until the key expires (1..{MAX_EXPIRES_DAYS}); default: never",
        )

    def handle(self, *args, username, name, expires, **options):
        expires_in = _expires_in(expires)
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        if not user.is_active:
            raise CommandError(f"User {username!r} is inactive: a key for them would not work.")
        key, raw_key = ApiKey.issue(user, name=name, expires_in=expires_in)
        until = f"until {key.expires_at:%Y-%m-%d %H:%M} UTC" if key.expires_at else "no expiry"
        # The key goes to stdout only (for a pipe or the operator); notes go to stderr.
        self.stderr.write(
            f"API key {key.key_id} for {username} ({until}). It is shown only this once:"
        )
        self.stdout.write(raw_key)


def _expires_in(days: str | None) -> timedelta | None:
    if days is None:
        return None
    try:
        count = int(days)
    except ValueError:
        raise CommandError(f"--expires takes a whole number of days, not {days!r}.") from None
    if not 1 <= count <= MAX_EXPIRES_DAYS:
        raise CommandError(f"--expires must be between 1 and {MAX_EXPIRES_DAYS} days, not {count}.")
    return timedelta(days=count)
