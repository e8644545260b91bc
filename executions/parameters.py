"""Checking run parameters against an action's parameter schema."""

from dataclasses import dataclass, field
from typing import Any

PARAMETER_TYPES = ("string", "integer", "number", "boolean", "array", "object")
SCHEMA_KEYS = {"type", "default", "required", "description", "secret", "enum", "immutable"}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass
class ParameterError(Exception):
    """Bad run parameters; `errors` holds `{location, message, value}` for each of them."""

    errors: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(f"{e['location']}: {e['message']}" for e in self.errors)


def _coerce(kind: str, value: Any) -> Any:
    """Convert `value` to `kind`, accepting text for scalars (forms and the CLI send text)."""
    if kind == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif kind == "integer":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
    elif kind == "number":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            return float(value.strip())
    elif kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
    elif kind == "array":
        if isinstance(value, list):
            return value
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
    elif kind == "object" and isinstance(value, dict):
        return value
    raise ValueError(f"must be of type {kind}")


def validate_parameters(schema: dict[str, dict], given: dict[str, Any] | None) -> dict[str, Any]:
    """Return the run parameters with defaults filled in, or raise ParameterError."""
    given = given or {}
    errors: list[dict[str, Any]] = []
    if not isinstance(given, dict):
        raise ParameterError(
            [{"location": "body.parameters", "message": "must be an object", "value": given}]
        )
    for name in given:
        if name not in schema:
            errors.append(
                {
                    "location": f"body.parameters.{name}",
                    "message": "is not a parameter of this action",
                    "value": given[name],
                }
            )
    cleaned: dict[str, Any] = {}
    for name, spec in schema.items():
        location = f"body.parameters.{name}"
        if name not in given or given[name] is None:
            if "default" in spec:
                cleaned[name] = spec["default"]
            elif spec.get("required"):
                errors.append({"location": location, "message": "is required", "value": None})
            continue
        try:
            value = _coerce(spec.get("type", "string"), given[name])
        except ValueError as exc:
            message = str(exc) if "must be" in str(exc) else f"must be of type {spec.get('type')}"
            errors.append({"location": location, "message": message, "value": given[name]})
            continue
        if "enum" in spec and value not in spec["enum"]:
            errors.append(
                {
                    "location": location,
                    "message": f"must be one of {', '.join(map(str, spec['enum']))}",
                    "value": given[name],
                }
            )
            continue
        cleaned[name] = value
    if errors:
        raise ParameterError(errors)
    return cleaned


def check_schema(schema: Any) -> list[str]:
    """Problems with an action's parameter schema itself (for pack registration)."""
    if not isinstance(schema, dict):
        return ["parameters: must be a mapping of parameter name to schema"]
    problems = []
    for name, spec in schema.items():
        where = f"parameters.{name}"
        if not isinstance(spec, dict):
            problems.append(f"{where}: must be a mapping")
            continue
        unknown = set(spec) - SCHEMA_KEYS
        if unknown:
            problems.append(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        kind = spec.get("type", "string")
        if kind not in PARAMETER_TYPES:
            problems.append(f"{where}.type: {kind!r} is not one of {', '.join(PARAMETER_TYPES)}")
            continue
        if "enum" in spec and not isinstance(spec["enum"], list):
            problems.append(f"{where}.enum: must be a list")
        if "default" in spec and spec["default"] is not None:
            try:
                _coerce(kind, spec["default"])
            except ValueError:
                problems.append(f"{where}.default: must be of type {kind}")
        for flag in ("required", "secret", "immutable"):
            if flag in spec and not isinstance(spec[flag], bool):
                problems.append(f"{where}.{flag}: must be true or false")
    return problems
