"""The run form, generated from an action's parameter schema, and the list filters.

Every run form field is optional at the Django level: `executions.parameters` is the one
place that decides what is required and what a value must look like, so the API and the page
answer alike, and its errors are put back by the field they name.
"""

import json
from typing import Any

from django import forms

from executions.models import Action, ExecutionStatus, Tenant
from executions.parameters import ParameterError, validate_parameters

# Form fields of parameters are named `param-<name>`: a parameter name cannot hold a hyphen,
# so no parameter can collide with the form's own `tenant` field.
PARAM_PREFIX = "param-"
# A string parameter whose default is longer than this gets a text area.
LONG_TEXT_CHARS = 80


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _parameter_field(spec: dict[str, Any]) -> forms.Field:
    kind = spec.get("type", "string")
    default = spec.get("default")
    secret = bool(spec.get("secret"))
    attrs: dict[str, Any] = {}
    if spec.get("required") and default is None:
        attrs["required"] = True  # for assistive technology; the form itself is `novalidate`
    options: dict[str, Any] = {"required": False, "help_text": spec.get("description", "")}
    if spec.get("immutable"):
        options["disabled"] = True
    widget: forms.Widget
    if "enum" in spec:
        empty = [] if default is not None else [("", "—")]
        choices = empty + [(_text(choice), _text(choice)) for choice in spec["enum"]]
        # A CharField: the choices are checked by validate_parameters, with its message.
        widget = forms.Select(attrs=attrs, choices=choices)
        return forms.CharField(
            initial=_text(default) if default is not None else "", widget=widget, **options
        )
    if kind == "boolean":
        return forms.BooleanField(initial=bool(default), **options)
    if secret:
        if default is not None:
            attrs["placeholder"] = "(a default is set)"
        widget = forms.PasswordInput(attrs=attrs, render_value=False)
        return forms.CharField(widget=widget, strip=False, **options)
    initial: str | None = None if default is None else _text(default)
    if kind in ("integer", "number"):
        attrs["step"] = "1" if kind == "integer" else "any"
        widget = forms.NumberInput(attrs=attrs)
    elif kind in ("array", "object") or (
        initial and ("\n" in initial or len(initial) > LONG_TEXT_CHARS)
    ):
        attrs["rows"] = 3
        widget = forms.Textarea(attrs=attrs)
    else:
        widget = forms.TextInput(attrs=attrs)
    return forms.CharField(widget=widget, initial=initial, strip=False, **options)


class RunForm(forms.Form):
    """Run `action` in one of `tenants` (those the user may run it in)."""

    def __init__(self, action: Action, tenants: list[Tenant], *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.action = action
        default = next((t.slug for t in tenants if t.slug == "default"), tenants[0].slug)
        self.fields["tenant"] = forms.ChoiceField(
            choices=[(t.slug, t.slug) for t in tenants], initial=default
        )
        self.tenants = {t.slug: t for t in tenants}
        for name, spec in action.ordered_parameters():
            field = _parameter_field(spec)
            field.label = name
            field.widget.attrs.setdefault("autocomplete", "off")
            self.fields[PARAM_PREFIX + name] = field

    def clean(self) -> dict[str, Any] | None:
        cleaned = super().clean()
        try:
            validate_parameters(self.action.parameters, self.parameters())
        except ParameterError as exc:
            self.add_parameter_errors(exc.errors)
        return cleaned

    def tenant(self) -> Tenant:
        return self.tenants[self.cleaned_data["tenant"]]

    def parameters(self) -> dict[str, Any]:
        """The values given; an empty field is left out, so the default (or `required`) applies."""
        given = {}
        for field_name, field in self.fields.items():
            if not field_name.startswith(PARAM_PREFIX) or field.disabled:
                continue
            value = self.cleaned_data.get(field_name)
            if value is None or value == "":
                continue
            given[field_name.removeprefix(PARAM_PREFIX)] = value
        return given

    def add_parameter_errors(self, errors: list[dict[str, Any]]) -> None:
        """Put `validate_parameters` errors (`body.parameters.<name>`) by their fields."""
        for error in errors:
            name = error["location"].removeprefix("body.parameters").lstrip(".")
            message = error["message"]
            message = message[:1].upper() + message[1:] + "."
            field = PARAM_PREFIX + name
            self.add_error(field if name and field in self.fields else None, message)

    def parameter_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.fields if name.startswith(PARAM_PREFIX)]


class ListFilterForm(forms.Form):
    """The execution list's filters; each one is also a filter of the live event stream."""

    status = forms.ChoiceField(
        required=False, choices=[("", "any status"), *ExecutionStatus.choices]
    )
    action = forms.CharField(required=False, max_length=255)
    tenant = forms.CharField(required=False, max_length=64)

    def __init__(self, *args, action_refs: list[str], tenant_slugs: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["action"].widget = forms.Select(
            choices=[("", "any action"), *((ref, ref) for ref in action_refs)]
        )
        self.fields["tenant"].widget = forms.Select(
            choices=[("", "any tenant"), *((slug, slug) for slug in tenant_slugs)]
        )
        self.known = {"action": set(action_refs), "tenant": set(tenant_slugs)}

    def _known(self, name: str, what: str) -> str:
        # A value the select cannot show (a typo, a tenant not granted) would silently read
        # "any …" above an empty list: answer it instead.
        value = self.cleaned_data.get(name, "")
        if value and value not in self.known[name]:
            raise forms.ValidationError(
                f"There is no {what} “{value}” you may see; showing every {what}."
            )
        return value

    def clean_action(self) -> str:
        return self._known("action", "action")

    def clean_tenant(self) -> str:
        return self._known("tenant", "tenant")

    def filters(self) -> dict[str, str]:
        """The valid, non-empty filters (an invalid one is shown as an error and ignored)."""
        if not self.is_bound:
            return {}
        self.is_valid()
        return {k: v for k, v in self.cleaned_data.items() if v}
