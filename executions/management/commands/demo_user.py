"""The demo superuser for a first look (password from the environment, else generated)."""

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

PASSWORD_ENV = "TAILGATE_DEMO_PASSWORD"


class Command(BaseCommand):
    help = (
        "Create (or reset) the demo superuser `admin`. The password comes from "
        f"{PASSWORD_ENV}, else a new one is generated and printed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username, **options):
        chosen = os.environ.get(PASSWORD_ENV, "")
        password = chosen or secrets.token_urlsafe(12)
        user, created = get_user_model().objects.get_or_create(username=username)
        user.is_staff = user.is_superuser = user.is_active = True
        user.set_password(password)
        user.save()
        verb = "Created" if created else "Reset"
        # A password the operator chose stays out of the logs; a generated one must be shown.
        shown = f"the password in {PASSWORD_ENV}" if chosen else f"password {password}"
        self.stdout.write(f"{verb} demo superuser. Log in as {username} with {shown}")
