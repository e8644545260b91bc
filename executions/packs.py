"""Loading action packs: `packs/<pack>/actions/<name>.yaml` plus entry-point files."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from django.db import transaction

from executions.models import Action, RunnerType
from executions.parameters import check_schema

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
METADATA_KEYS = {
    "name",
    "description",
    "runner_type",
    "entry_point",
    "parameters",
    "enabled",
    "pack",
}
NEEDS_ENTRY_POINT = {
    RunnerType.LOCAL_SHELL_SCRIPT,
    RunnerType.PYTHON_SCRIPT,
    RunnerType.REMOTE_SHELL_SCRIPT,
    RunnerType.WORKFLOW,
}


class PackError(Exception):
    """Bad action metadata; the message names the file and the field."""


@dataclass
class ActionSpec:
    path: Path
    ref: str
    pack: str
    name: str
    fields: dict[str, Any]


def _fail(path: Path, field: str, message: str) -> PackError:
    return PackError(f"{path}: {field}: {message}")


def read_action(path: Path) -> ActionSpec:
    """Parse and check one action metadata file (`<pack>/actions/<name>.yaml`)."""
    path = path.resolve()
    pack_dir = path.parent.parent
    pack = pack_dir.name
    if path.parent.name != "actions":
        raise _fail(path, "path", "action metadata must be in a pack's actions folder")
    try:
        meta = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise _fail(path, "yaml", str(exc).replace("\n", " ")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(path, "file", str(exc)) from None
    if not isinstance(meta, dict):
        raise _fail(path, "metadata", "must be a YAML mapping")
    unknown = set(meta) - METADATA_KEYS
    if unknown:
        raise _fail(path, ", ".join(sorted(map(str, unknown))), "unknown field")
    name = meta.get("name", path.stem)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _fail(path, "name", f"{name!r} must be letters, digits, '_' or '-'")
    if not NAME_RE.match(pack):
        raise _fail(path, "pack", f"folder name {pack!r} must be letters, digits, '_' or '-'")
    if meta.get("pack", pack) != pack:
        raise _fail(path, "pack", f"says {meta['pack']!r} but the file is in pack {pack!r}")
    runner_type = meta.get("runner_type")
    if runner_type not in RunnerType.values:
        raise _fail(
            path, "runner_type", f"{runner_type!r} is not one of {', '.join(RunnerType.values)}"
        )
    entry_point = meta.get("entry_point", "") or ""
    if not isinstance(entry_point, str):
        raise _fail(path, "entry_point", "must be a path relative to the pack's actions folder")
    if runner_type in NEEDS_ENTRY_POINT and not entry_point:
        raise _fail(path, "entry_point", f"is required for runner_type {runner_type}")
    if entry_point:
        target = (path.parent / entry_point).resolve()
        if not target.is_relative_to(pack_dir.resolve()):
            raise _fail(path, "entry_point", f"{entry_point!r} points outside the pack")
        if not target.is_file():
            raise _fail(path, "entry_point", f"file {entry_point!r} does not exist")
    parameters = meta.get("parameters") or {}
    problems = check_schema(parameters)
    if problems:
        field, message = problems[0].split(": ", 1)
        raise _fail(path, field, message)
    description = meta.get("description", "")
    if not isinstance(description, str):
        raise _fail(path, "description", "must be text")
    enabled = meta.get("enabled", True)
    if not isinstance(enabled, bool):
        raise _fail(path, "enabled", "must be true or false")
    return ActionSpec(
        path=path,
        ref=f"{pack}.{name}",
        pack=pack,
        name=name,
        fields={
            "description": description.strip(),
            "runner_type": runner_type,
            "entry_point": entry_point,
            "parameters": parameters,
            "enabled": enabled,
            "pack_path": str(pack_dir.resolve()),
        },
    )


def _metadata_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / "actions").is_dir():
        pattern = "actions/*.y*ml"
    elif path.is_dir():
        pattern = "*/actions/*.y*ml"
    else:
        raise PackError(f"{path}: path: no such file or folder")
    files = sorted(f for f in path.glob(pattern) if f.suffix in (".yaml", ".yml"))
    if not files:
        raise PackError(f"{path}: path: no action metadata (<pack>/actions/*.yaml) found here")
    return files


def find_action_files(paths: list[Path]) -> list[Path]:
    """Metadata files under each path: a packs folder, one pack, or one YAML file.

    A file reached through two of the paths is read once.
    """
    found: dict[Path, None] = {}
    for path in paths:
        for file in _metadata_files(Path(path)):
            found[file.resolve()] = None
    return list(found)


def register(paths: list[Path]) -> tuple[list[str], list[str]]:
    """Load every action under `paths`, all or nothing; returns (created, updated) refs.

    Raises PackError, naming the file and the field, before anything is written.
    """
    specs = [read_action(f) for f in find_action_files(paths)]
    seen: dict[str, Path] = {}
    for spec in specs:
        if spec.ref in seen:
            raise _fail(spec.path, "name", f"{spec.ref} is also defined in {seen[spec.ref]}")
        seen[spec.ref] = spec.path
    created: list[str] = []
    updated: list[str] = []
    with transaction.atomic():
        for spec in specs:
            _, was_created = Action.objects.update_or_create(
                ref=spec.ref, defaults={"pack": spec.pack, "name": spec.name, **spec.fields}
            )
            (created if was_created else updated).append(spec.ref)
    return created, updated
