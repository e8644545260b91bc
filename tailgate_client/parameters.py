"""`name=value` words from the command line, converted by the action's parameter schema.

Scalars (string, integer, number, boolean) are sent as the text typed: the server converts
text by the schema and names the field and the value when it cannot, so `cmd=42` stays the
string "42" and `count=lots` is refused as "must be of type integer". Only array and object
values that look like JSON are parsed here (`hosts=["a","b"]`, `env={"A":"1"}`); other text
for an array is left to the server, which splits it on commas.
"""

import json
from typing import Any

JSON_TYPES = {"array": "[", "object": "{"}


class ParameterSyntaxError(ValueError):
    """A word that is not `name=value`."""


def parse_parameters(
    pairs: list[str], schema: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """`name=value` words as a parameters object, by `schema` (name → {type, …}) when given."""
    parameters: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ParameterSyntaxError(f"parameter {pair!r} must look like name=value")
        kind = ((schema or {}).get(name) or {}).get("type")
        parameters[name] = _convert(kind, value)
    return parameters


def _convert(kind: str | None, value: str) -> Any:
    opener = JSON_TYPES.get(kind or "")
    if opener and value.lstrip().startswith(opener):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value  # the server says what is wrong with it
    return value


def describe_parameters(action: dict[str, Any]) -> str:
    """st2's `run REF -h`: the action's description, then required and optional parameters."""
    specs = action.get("parameters") or {}
    required = {n: s for n, s in specs.items() if s.get("required") and "default" not in s}
    optional = {n: s for n, s in specs.items() if n not in required}
    parts = [f"{action['ref']}: {action.get('description') or '(no description)'}\n"]
    for title, group in (("Required parameters", required), ("Optional parameters", optional)):
        if group:
            parts.append(f"\n{title}:\n" + "".join(_describe(n, s) for n, s in group.items()))
    if not specs:
        parts.append("\nThis action takes no parameters.\n")
    return "".join(parts)


def _describe(name: str, spec: dict[str, Any]) -> str:
    facts = [spec.get("type", "string")]
    if "default" in spec:
        facts.append(f"default: {json.dumps(spec['default'])}")
    if spec.get("enum"):
        facts.append("one of: " + ", ".join(json.dumps(v) for v in spec["enum"]))
    if spec.get("secret"):
        facts.append("secret")
    if spec.get("immutable"):
        facts.append("immutable")
    text = f"  {name} ({'; '.join(facts)})\n"
    if spec.get("description"):
        text += f"      {spec['description']}\n"
    return text
