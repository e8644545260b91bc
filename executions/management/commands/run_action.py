"""Schedules a run from the server's shell, without the API; a runner picks it up."""

from django.core.management.base import BaseCommand, CommandError

from executions import services
from executions.models import Tenant
from executions.parameters import ParameterError

# The one `name=value` syntax, shared with the `tailgate` CLI (a module without Django or
# httpx); values stay text, which `services.create_execution` converts by the action's schema.
from tailgate_client.parameters import ParameterSyntaxError, parse_parameters


class Command(BaseCommand):
    help = (
        "Schedule a run of an action, e.g. `run_action examples.print_lines count=20 delay=0.5`. "
        "A running runner (`make run`, or `manage.py actionrunner`) picks it up."
    )

    def add_arguments(self, parser):
        parser.add_argument("action", help="action ref, pack.name")
        parser.add_argument("parameters", nargs="*", help="name=value pairs")
        parser.add_argument("--tenant", default="default", help="tenant slug (default: default)")

    def handle(self, *args, action, parameters, tenant, **options):
        try:
            found = services.get_action(action)
        except services.ActionUnavailable as exc:
            raise CommandError(str(exc)) from None
        try:
            chosen = Tenant.objects.get(slug=tenant)
        except Tenant.DoesNotExist:
            raise CommandError(f"tenant {tenant!r} does not exist") from None
        try:
            execution = services.create_execution(
                found, parse_parameters(parameters), tenant=chosen
            )
        except ParameterSyntaxError as exc:
            raise CommandError(str(exc)) from None
        except ParameterError as exc:
            raise CommandError(f"bad parameters: {exc}") from None
        self.stdout.write(f"Scheduled {execution.action_ref} as execution {execution.id}")
        self.stdout.write(
            f"  watch: /executions/{execution.id}/  admin: /admin/executions/execution/{execution.id}/change/"
        )
