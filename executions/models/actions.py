from typing import Any

from django.db import models

MASK = "********"


def mask_parameters(values: dict[str, Any], secret_names) -> dict[str, Any]:
    """A copy of `values` with every parameter named in `secret_names` shown as `********`."""
    secret = set(secret_names)
    return {k: (MASK if k in secret and v is not None else v) for k, v in values.items()}


class RunnerType(models.TextChoices):
    LOCAL_SHELL_CMD = "local-shell-cmd"
    LOCAL_SHELL_SCRIPT = "local-shell-script"
    PYTHON_SCRIPT = "python-script"
    REMOTE_SHELL_CMD = "remote-shell-cmd"
    REMOTE_SHELL_SCRIPT = "remote-shell-script"
    WORKFLOW = "workflow"


class Action(models.Model):
    """A registered action: `ref` is `pack.name`; `parameters` maps a name to its schema.

    A parameter schema holds `type` (string, integer, number, boolean, array, object),
    `default`, `required`, `description`, `secret` and `enum`.
    """

    ref = models.CharField(max_length=255, unique=True)
    pack = models.CharField(max_length=100)
    name = models.CharField(max_length=150)
    description = models.TextField(blank=True)
    runner_type = models.CharField(max_length=32, choices=RunnerType.choices)
    entry_point = models.CharField(max_length=500, blank=True)
    parameters = models.JSONField(default=dict, blank=True)
    # Declaration order of `parameters` (jsonb on PostgreSQL does not keep key order): the
    # order of script arguments and of the run form's fields.
    parameter_order = models.JSONField(default=list, blank=True, editable=False)
    enabled = models.BooleanField(default=True)
    # The pack folder the action was loaded from, so entry points resolve relative to it.
    pack_path = models.CharField(max_length=1000, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["ref"]
        permissions = [("execute_action", "Can run this action")]

    def __str__(self) -> str:
        return self.ref

    def save(self, *args, **kwargs) -> None:
        self.parameter_order = list(self.parameters)
        super().save(*args, **kwargs)

    def ordered_parameters(self) -> list[tuple[str, dict]]:
        known = [name for name in self.parameter_order if name in self.parameters]
        rest = sorted(set(self.parameters) - set(known))
        return [(name, self.parameters[name]) for name in known + rest]

    def secret_parameter_names(self) -> set[str]:
        return {name for name, spec in self.parameters.items() if spec.get("secret")}

    def mask_parameters(self, values: dict[str, Any]) -> dict[str, Any]:
        """A copy of `values` with every secret parameter shown as `********`."""
        return mask_parameters(values, self.secret_parameter_names())
