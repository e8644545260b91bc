"""Checking run parameters against an action's parameter schema."""

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from executions.models.actions import MASK

PARAMETER_TYPES = ("string", "integer", "number", "boolean", "array", "object")
SCHEMA_KEYS = {"type", "default", "required", "description", "secret", "enum", "immutable"}
# Parameters reach actions as PARAM_<NAME> variables, `--name=` flags and Python keywords.
PARAMETER_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass
class ParameterError(Exception):
    """Bad run parameters; `errors` holds `{location, message, value}` for each of them."""

    errors: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(f"{e['location']}: {e['message']}" for e in self.errors)


def _from_json_text(kind: str, value: str, expected: type) -> Any:
    try:
        parsed = json.loads(value)
    except ValueError:
        raise ValueError(f"must be of type {kind}") from None
    if not isinstance(parsed, expected):
        raise ValueError(f"must be of type {kind}")
    return parsed


def _finite(kind: str, value: float) -> float:
    # NaN and infinity are not JSON: PostgreSQL's jsonb refuses them.
    if not math.isfinite(value):
        raise ValueError(f"must be a finite {kind}")
    return value


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
            return _finite(kind, value)
        if isinstance(value, str):
            return _finite(kind, float(value.strip()))
    elif kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
    elif kind == "array":
        if isinstance(value, list):
            return value
        if isinstance(value, str) and value.lstrip().startswith("["):
            return _from_json_text(kind, value, list)
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
    elif kind == "object":
        if isinstance(value, dict):
            return value
        if isinstance(value, str):
            return _from_json_text(kind, value, dict)
    raise ValueError(f"must be of type {kind}")


def _has_type(kind: str, value: Any) -> bool:
    """True when `value` already is of `kind` (metadata is typed YAML, not form text)."""
    if kind == "number" and isinstance(value, float):
        return math.isfinite(value)
    expected = {
        "string": str,
        "integer": int,
        "number": int,
        "boolean": bool,
        "array": list,
        "object": dict,
    }[kind]
    return isinstance(value, expected) and (kind == "boolean" or not isinstance(value, bool))


def _is_missing(kind: str, value: Any) -> bool:
    # An empty form field means "not given" for every type but text.
    return value is None or (kind != "string" and isinstance(value, str) and not value.strip())


def _error(location: str, message: str, value: Any, secret: bool) -> dict[str, Any]:
    # Error answers are logged and shown: a secret is masked there as everywhere else.
    return {"location": location, "message": message, "value": MASK if secret else value}


def _check_one(spec: dict[str, Any], location: str, value: Any) -> tuple[Any, dict | None]:
    """The coerced value of one given parameter, or the error about it."""
    kind = spec.get("type", "string")
    secret = bool(spec.get("secret"))
    try:
        value = _coerce(kind, value)
    except ValueError as exc:
        message = str(exc) if "must be" in str(exc) else f"must be of type {kind}"
        return None, _error(location, message, value, secret)
    if "enum" in spec and value not in spec["enum"]:
        choices = ", ".join(map(str, spec["enum"]))
        return None, _error(location, f"must be one of {choices}", value, secret)
    if spec.get("immutable") and value != spec.get("default"):
        return None, _error(location, "is immutable: only its default is allowed", value, secret)
    return value, None


def validate_parameters(schema: dict[str, dict], given: dict[str, Any] | None) -> dict[str, Any]:
    """Return the run parameters with defaults filled in, or raise ParameterError.

    Each error is `{location, message, value}`, `location` being `body.parameters.<name>`;
    a secret parameter's value is masked in its error.
    """
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ParameterError(
            [{"location": "body.parameters", "message": "must be an object", "value": given}]
        )
    errors: list[dict[str, Any]] = [
        _error(f"body.parameters.{name}", "is not a parameter of this action", value, False)
        for name, value in given.items()
        if name not in schema
    ]
    cleaned: dict[str, Any] = {}
    for name, spec in schema.items():
        location = f"body.parameters.{name}"
        if _is_missing(spec.get("type", "string"), given.get(name)):
            if spec.get("default") is not None:
                cleaned[name] = spec["default"]
            elif spec.get("required"):
                errors.append(_error(location, "is required", None, False))
            continue
        value, error = _check_one(spec, location, given[name])
        if error:
            errors.append(error)
        else:
            cleaned[name] = value
    if errors:
        raise ParameterError(errors)
    return cleaned


def _check_spec(where: str, spec: dict[str, Any]) -> list[str]:
    problems = []
    unknown = set(spec) - SCHEMA_KEYS
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    kind = spec.get("type", "string")
    if kind not in PARAMETER_TYPES:
        return [*problems, f"{where}.type: {kind!r} is not one of {', '.join(PARAMETER_TYPES)}"]
    for flag in ("required", "secret", "immutable"):
        if flag in spec and not isinstance(spec[flag], bool):
            problems.append(f"{where}.{flag}: must be true or false")
    if spec.get("immutable") is True and spec.get("default") is None:
        problems.append(f"{where}.immutable: an immutable parameter needs a default")
    enum = spec.get("enum")
    if "enum" in spec and (not isinstance(enum, list) or not enum):
        problems.append(f"{where}.enum: must be a non-empty list")
    elif enum and not all(_has_type(kind, choice) for choice in enum):
        problems.append(f"{where}.enum: every choice must be of type {kind}")
    default = spec.get("default")
    if default is not None and not _has_type(kind, default):
        problems.append(f"{where}.default: {default!r} is not of type {kind}")
    elif default is not None and isinstance(enum, list) and default not in enum:
        problems.append(f"{where}.default: {default!r} is not one of the enum choices")
    return problems


def check_schema(schema: Any) -> list[str]:
    """Problems with an action's parameter schema itself (for pack registration).

    Each problem reads `<field>: <message>`, the field being `parameters.<name>[.<key>]`.
    """
    if not isinstance(schema, dict):
        return ["parameters: must be a mapping of parameter name to schema"]
    problems = []
    for name, spec in schema.items():
        where = f"parameters.{name}"
        if not isinstance(name, str) or not PARAMETER_NAME_RE.match(name):
            problems.append(f"{where}: the name must be letters, digits and '_'")
        elif not isinstance(spec, dict):
            problems.append(f"{where}: must be a mapping")
        else:
            problems.extend(_check_spec(where, spec))
    return problems


def distinct_hosts(parameters: dict[str, Any]) -> list[str]:
    """A remote run's `hosts` as the runner uses them: stripped, blanks dropped, each once, in
    order (one host runs in the execution itself; several make one child execution each)."""
    hosts = parameters.get("hosts")
    if not isinstance(hosts, list):
        return []
    named = (host.strip() for host in hosts if isinstance(host, str))
    return list(dict.fromkeys(host for host in named if host))
