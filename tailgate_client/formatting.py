"""How the CLI shows resources: tables sized to the terminal, key/value details, JSON, YAML.

`-a/--attr` picks attributes by dotted path (`parameters.count`, `children.0`; `all` for
every top-level one); `-w/--width` fixes column widths (one value for every column, or one
per column in order). Without `-w`, columns take their natural width and, when the table is
wider than the terminal, the widest shrink and their cells wrap.
"""

import json
import shutil
import textwrap
from typing import Any

import yaml

MISSING = object()
COLUMN_GAP = "  "
# A column is never shrunk below this: narrower wraps every word onto its own line.
MIN_COLUMN_WIDTH = 8
# Used when stdout is not a terminal (a pipe, a file): wide enough not to wrap ids and dates.
FALLBACK_TERMINAL_COLUMNS = 160
# PyYAML folds lines longer than this; large enough that it never does.
YAML_WIDTH = 1_000_000


def lookup(obj: Any, path: str) -> Any:
    """The value at a dotted path; MISSING when any step is absent."""
    for step in path.split("."):
        if isinstance(obj, dict) and step in obj:
            obj = obj[step]
        elif isinstance(obj, list) and step.isdigit() and int(step) < len(obj):
            obj = obj[int(step)]
        else:
            return MISSING
    return obj


def columns_for(
    rows: list[dict[str, Any]], attrs: list[str] | None, default: list[str]
) -> list[str]:
    if not attrs:
        return default
    if attrs == ["all"]:
        return list(rows[0]) if rows else default
    return attrs


def pick(obj: dict[str, Any], attrs: list[str] | None) -> dict[str, Any]:
    """`obj` reduced to `attrs` (nested paths rebuilt as nested objects), for -j/-y."""
    if not attrs or attrs == ["all"]:
        return obj
    picked: dict[str, Any] = {}
    for path in attrs:
        value = lookup(obj, path)
        if value is MISSING:
            continue
        *parents, last = path.split(".")
        target = picked
        for step in parents:
            target = target.setdefault(step, {})
        target[last] = value
    return picked


def cell(value: Any) -> str:
    if value is MISSING or value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def to_yaml(value: Any) -> str:
    # No line folding: a long command stays on one line, as typed.
    return yaml.safe_dump(
        value, sort_keys=False, allow_unicode=True, default_flow_style=False, width=YAML_WIDTH
    )


def terminal_columns() -> int:
    return shutil.get_terminal_size((FALLBACK_TERMINAL_COLUMNS, 24)).columns


def table(rows: list[dict[str, Any]], columns: list[str], widths: list[int] | None = None) -> str:
    """A header, a rule, then one (possibly wrapped) block per row."""
    cells = [[cell(lookup(row, c)) for c in columns] for row in rows]
    sizes = _sizes(columns, cells, widths)
    lines = [_line(columns, sizes), _line(["-" * s for s in sizes], sizes)]
    for row in cells:
        wrapped = [textwrap.wrap(text, size) or [""] for text, size in zip(row, sizes, strict=True)]
        for i in range(max(len(w) for w in wrapped)):
            lines.append(_line([w[i] if i < len(w) else "" for w in wrapped], sizes))
    return "\n".join(lines) + "\n"


def _line(texts: list[str], sizes: list[int]) -> str:
    return COLUMN_GAP.join(t.ljust(s) for t, s in zip(texts, sizes, strict=True)).rstrip()


def _sizes(columns: list[str], cells: list[list[str]], widths: list[int] | None) -> list[int]:
    natural = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    if widths:
        given = widths * len(columns) if len(widths) == 1 else widths
        return [given[i] if i < len(given) else n for i, n in enumerate(natural)]
    room = terminal_columns() - len(COLUMN_GAP) * (len(columns) - 1)
    sizes = [max(n, 1) for n in natural]
    while sum(sizes) > room:
        widest = max(range(len(sizes)), key=lambda i: sizes[i])
        if sizes[widest] <= MIN_COLUMN_WIDTH:
            break  # the terminal is too narrow for these columns: let the lines run on
        sizes[widest] -= 1
    return sizes


def details(obj: dict[str, Any], attrs: list[str], skip_empty: bool = False) -> str:
    """One `name: value` line per attribute; objects and lists as indented YAML below.

    `skip_empty` leaves out attributes with no value (the default layout: a finished
    execution with no parent, error or result shows none of those lines).
    """
    lines = []
    for path in attrs:
        value = lookup(obj, path)
        if skip_empty and value in (MISSING, None, "", [], {}):
            continue
        if isinstance(value, (dict, list)) and value:
            block = textwrap.indent(to_yaml(value), "  ").rstrip("\n")
            lines.append(f"{path}:\n{block}")
        else:
            lines.append(f"{path}: {cell(value)}")
    return "\n".join(lines) + "\n"
