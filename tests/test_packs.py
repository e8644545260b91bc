"""Pack registration: the shipped packs, updates, and every kind of bad metadata."""

import re
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from executions.models import Action

SHIPPED_REFS = {
    "core.local",
    "core.remote",
    "examples.build",
    "examples.deploy",
    "examples.echo_secret",
    "examples.fail",
    "examples.print_lines",
    "examples.python_result",
    "examples.remote_uptime",
}

GOOD = """\
name: good
description: A fine action.
runner_type: local-shell-cmd
parameters:
  cmd:
    type: string
    default: echo hi
"""


def _pack(root: Path, files: dict[str, str], pack: str = "mypack") -> Path:
    """A packs folder holding one pack with `files` under its actions folder."""
    actions = root / "packs" / pack / "actions"
    actions.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        target = actions / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return root / "packs"


def _register(*paths) -> str:
    out = StringIO()
    call_command("register_actions", *map(str, paths), stdout=out)
    return out.getvalue()


def test_it_registers_the_shipped_packs(db):
    out = _register()

    metadata_files = [f for d in settings.PACKS_DIRS for f in d.glob("*/actions/*.yaml")]
    assert Action.objects.count() == len(metadata_files)
    assert set(Action.objects.values_list("ref", flat=True)) >= SHIPPED_REFS
    assert f"Registered {len(metadata_files)} actions ({len(metadata_files)} new, 0 updated)" in out


def test_it_keeps_what_the_metadata_says(db):
    _register()

    lines = Action.objects.get(ref="examples.print_lines")
    assert (lines.pack, lines.name, lines.runner_type) == (
        "examples",
        "print_lines",
        "local-shell-script",
    )
    assert lines.entry_point == "print_lines.sh"
    assert (Path(lines.pack_path) / "actions" / lines.entry_point).is_file()
    assert lines.parameters["count"]["type"] == "integer"
    assert lines.parameters["delay"]["default"] == 0.5
    assert Action.objects.get(ref="examples.echo_secret").secret_parameter_names() == {"password"}
    assert Action.objects.get(ref="core.remote").secret_parameter_names() == {
        "private_key",
        "password",
    }


def test_it_updates_instead_of_duplicating(db, tmp_path):
    packs = _pack(tmp_path, {"good.yaml": GOOD})
    _register(packs)
    (packs / "mypack" / "actions" / "good.yaml").write_text(
        GOOD.replace("A fine action.", "Changed.")
    )

    out = _register(packs)

    assert "(0 new, 1 updated)" in out
    assert list(Action.objects.values_list("ref", "description")) == [("mypack.good", "Changed.")]


def test_it_registers_the_shipped_packs_twice_without_duplicates(db):
    _register()
    count = Action.objects.count()

    out = _register()

    assert Action.objects.count() == count
    assert f"(0 new, {count} updated)" in out


def test_it_accepts_a_pack_folder_or_one_file(db, tmp_path):
    packs = _pack(tmp_path, {"good.yaml": GOOD, "other.yml": GOOD.replace("good", "other")})

    _register(packs / "mypack" / "actions" / "good.yaml")
    assert set(Action.objects.values_list("ref", flat=True)) == {"mypack.good"}

    _register(packs / "mypack")
    assert set(Action.objects.values_list("ref", flat=True)) == {"mypack.good", "mypack.other"}


def test_it_reads_a_file_reached_twice_once(db, tmp_path):
    packs = _pack(tmp_path, {"good.yaml": GOOD})

    out = _register(packs, packs / "mypack")

    assert "Registered 1 actions" in out
    assert Action.objects.count() == 1


SCRIPT = "runner_type: local-shell-script\nentry_point: {}\n"
BAD_METADATA = {
    "bad yaml": ("name: [unclosed\n", "yaml"),
    "not a mapping": ("- one\n- two\n", "metadata"),
    "unknown field": (GOOD + "colour: red\n", "colour: unknown field"),
    "bad runner type": ("runner_type: cobol\n", "runner_type: 'cobol' is not one of"),
    "no runner type": ("description: nothing\n", "runner_type: None is not one of"),
    "missing entry point": ("runner_type: python-script\n", "entry_point: is required"),
    "entry point file missing": (SCRIPT.format("nope.sh"), "entry_point: file 'nope.sh'"),
    "entry point outside the pack": (
        SCRIPT.format("../../outside.sh"),
        "entry_point: '../../outside.sh' points outside the pack",
    ),
    "entry point not text": (SCRIPT.format("[a, b]"), "entry_point: must be a path"),
    "parameters not a mapping": (
        "runner_type: local-shell-cmd\nparameters: [a]\n",
        "parameters: must be a mapping",
    ),
    "parameter not a mapping": (
        "runner_type: local-shell-cmd\nparameters:\n  cmd: text\n",
        "parameters.cmd: must be a mapping",
    ),
    "bad parameter name": (
        "runner_type: local-shell-cmd\nparameters:\n  my-param: {type: string}\n",
        "parameters.my-param: the name must be",
    ),
    "unknown parameter key": (
        "runner_type: local-shell-cmd\nparameters:\n  cmd: {typ: string}\n",
        "parameters.cmd: unknown key(s) typ",
    ),
    "bad parameter type": (
        "runner_type: local-shell-cmd\nparameters:\n  n: {type: float}\n",
        "parameters.n.type: 'float' is not one of",
    ),
    "bad default for the type": (
        "runner_type: local-shell-cmd\nparameters:\n  n: {type: integer, default: many}\n",
        "parameters.n.default: 'many' is not of type integer",
    ),
    "text default for an integer": (
        "runner_type: local-shell-cmd\nparameters:\n  n: {type: integer, default: '5'}\n",
        "parameters.n.default: '5' is not of type integer",
    ),
    "boolean default for an integer": (
        "runner_type: local-shell-cmd\nparameters:\n  n: {type: integer, default: true}\n",
        "parameters.n.default: True is not of type integer",
    ),
    "default not in enum": (
        "runner_type: local-shell-cmd\nparameters:\n  c: {enum: [red, blue], default: green}\n",
        "parameters.c.default: 'green' is not one of the enum choices",
    ),
    "enum not a list": (
        "runner_type: local-shell-cmd\nparameters:\n  c: {enum: red}\n",
        "parameters.c.enum: must be a non-empty list",
    ),
    "enum of the wrong type": (
        "runner_type: local-shell-cmd\nparameters:\n  n: {type: integer, enum: [1, two]}\n",
        "parameters.n.enum: every choice must be of type integer",
    ),
    "non-bool secret": (
        "runner_type: local-shell-cmd\nparameters:\n  p: {secret: 'yes'}\n",
        "parameters.p.secret: must be true or false",
    ),
    "non-bool required": (
        "runner_type: local-shell-cmd\nparameters:\n  p: {required: 1}\n",
        "parameters.p.required: must be true or false",
    ),
    "immutable without default": (
        "runner_type: local-shell-cmd\nparameters:\n  p: {immutable: true}\n",
        "parameters.p.immutable: an immutable parameter needs a default",
    ),
    "bad name": ("name: 'rm -rf'\nrunner_type: local-shell-cmd\n", "name: 'rm -rf' must be"),
    "name not text": ("name: [a]\nrunner_type: local-shell-cmd\n", "name: ['a'] must be"),
    "other pack": ("pack: core\nrunner_type: local-shell-cmd\n", "pack: says 'core'"),
    "description not text": (
        "description: [a]\nrunner_type: local-shell-cmd\n",
        "description: must be text",
    ),
    "enabled not bool": ("enabled: maybe\nrunner_type: local-shell-cmd\n", "enabled: must be true"),
}


@pytest.mark.parametrize("text, expected", BAD_METADATA.values(), ids=BAD_METADATA.keys())
def test_it_refuses_bad_metadata_and_registers_nothing(db, tmp_path, text, expected):
    (tmp_path / "outside.sh").write_text("echo out\n")
    # `a_good` sorts first: a loader writing as it reads would have saved it already.
    packs = _pack(tmp_path, {"a_good.yaml": GOOD, "b_bad.yaml": text})
    bad_file = packs / "mypack" / "actions" / "b_bad.yaml"

    with pytest.raises(CommandError) as caught:
        _register(settings.PACKS_DIRS[0], packs)

    message = str(caught.value)
    assert message.startswith(f"nothing registered: {bad_file}: "), message
    assert expected in message
    assert "\n" not in message
    assert Action.objects.count() == 0


def test_it_names_both_files_of_a_duplicate_ref(db, tmp_path):
    packs = _pack(tmp_path, {"a.yaml": GOOD, "b.yaml": GOOD})

    with pytest.raises(CommandError) as caught:
        _register(packs)

    message = str(caught.value)
    assert (
        f"{packs / 'mypack' / 'actions' / 'b.yaml'}: name: mypack.good is also defined in"
        in message
    )
    assert str(packs / "mypack" / "actions" / "a.yaml") in message
    assert Action.objects.count() == 0


def test_it_refuses_a_path_that_does_not_exist(db, tmp_path):
    missing = tmp_path / "nowhere"

    with pytest.raises(
        CommandError, match=re.escape(f"nothing registered: {missing}: path: no such file")
    ):
        _register(settings.PACKS_DIRS[0], missing)

    assert Action.objects.count() == 0


def test_it_refuses_a_folder_without_actions(db, tmp_path):
    with pytest.raises(CommandError, match="path: no action metadata"):
        _register(tmp_path)


def test_it_refuses_a_file_outside_an_actions_folder(db, tmp_path):
    stray = tmp_path / "stray.yaml"
    stray.write_text(GOOD)

    with pytest.raises(CommandError, match=re.escape(f"{stray}: path: action metadata must be in")):
        _register(stray)


def test_it_refuses_a_bad_pack_folder_name(db, tmp_path):
    packs = _pack(tmp_path, {"good.yaml": GOOD}, pack="my pack")

    with pytest.raises(CommandError, match="pack: folder name 'my pack' must be"):
        _register(packs)


def test_it_refuses_an_unreadable_file(db, tmp_path):
    packs = _pack(tmp_path, {"good.yaml": GOOD})
    (packs / "mypack" / "actions" / "good.yaml").write_bytes(b"name: \xff\xfe\n")

    with pytest.raises(CommandError, match=r"good\.yaml: file: "):
        _register(packs)


def test_it_leaves_earlier_registrations_alone_when_one_file_is_bad(db, tmp_path):
    packs = _pack(tmp_path, {"good.yaml": GOOD})
    _register(packs)
    (packs / "mypack" / "actions" / "good.yaml").write_text(GOOD.replace("A fine", "Changed"))
    (packs / "mypack" / "actions" / "worse.yaml").write_text("runner_type: nope\n")

    with pytest.raises(CommandError):
        _register(packs)

    assert list(Action.objects.values_list("description", flat=True)) == ["A fine action."]
