"""Secrets of every type are masked in the text the process was given, wherever it comes back.

Unit level: one renderer, structured masking that keeps JSON valid, and a property run of
10,000 random splits (1-byte writes, cuts inside multi-byte characters, JSON-escaped forms)
with 0 leaks and 0 over-masking. End to end: array and boolean secrets printed by a shell
action, and a workflow that templates a secret into a task's non-secret parameter.
"""

import json
import random

import pytest
from asgiref.sync import sync_to_async

from executions import services
from executions.capture import StreamCapture
from executions.masking import Masker, render_text, secret_forms
from executions.models import ExecutionEvent, ExecutionStatus
from executions.models.actions import MASK
from executions.runners import base
from tests.runner_helpers import output_of, register_pack, run_execution

S = ExecutionStatus
SPLIT_RUNS = 10_000


# --- one renderer -------------------------------------------------------------------------
def test_it_renders_parameters_for_the_process_and_for_masking_alike():
    assert base.parameter_text is render_text
    env = base.action_environment({"tokens": ["abc123", "def456"], "flag": True, "n": 7})
    assert env["PARAM_TOKENS"] == '["abc123", "def456"]'
    assert env["PARAM_FLAG"] == "true"
    assert env["PARAM_N"] == "7"
    forms = secret_forms([["abc123", "def456"], True, 7])
    assert {env["PARAM_TOKENS"], env["PARAM_FLAG"], env["PARAM_N"]} <= set(forms)
    assert {"abc123", "def456", '["abc123","def456"]', "True"} <= set(forms)


# --- structured masking ---------------------------------------------------------------------
def test_it_masks_a_result_by_walking_it_and_keeps_it_valid_json():
    masker = Masker([123, True, "hunter2"])
    result = {"count": 12345, "ok": True, "n": 123, "note": "id 123, pw hunter2", "list": [True]}
    masked = masker.value(result)
    assert masked == {
        "count": 12345,  # a number that merely contains the secret's digits is not the secret
        "ok": MASK,
        "n": MASK,
        "note": f"id {MASK}, pw {MASK}",
        "list": [MASK],
    }
    assert json.loads(json.dumps(masked)) == masked


def test_it_masks_a_container_secret_whole_and_its_strings_anywhere():
    masker = Masker([["abc123", "def456"], {"key": "k-9"}])
    assert masker.value(["abc123", "def456"]) == MASK
    assert masker.value({"tokens": ["x", "abc123"], "cfg": {"key": "k-9"}}) == {
        "tokens": ["x", MASK],
        "cfg": MASK,
    }
    assert masker.text('got ["abc123", "def456"] and {"key":"k-9"}') == f"got {MASK} and {MASK}"


def test_it_leaves_values_alone_without_secrets():
    assert Masker([]).value({"a": [1, "b"]}) == {"a": [1, "b"]}
    assert Masker([None, ""]).value("text") == "text"


# --- 10,000 random splits: 0 leaks, 0 over-masking ----------------------------------------
# Secrets are drawn from one alphabet and the filler around them from a disjoint one, so a
# secret can only appear where it was put: the exact expected output is known.
SECRET_CHARS = 'abcdef0123456789é€😀"\\/'
FILLER_CHARS = "xyzXYZ _-!?ü\n\t"


def _random_secret(rng: random.Random):
    text = "".join(rng.choice(SECRET_CHARS) for _ in range(rng.randint(3, 8)))
    kind = rng.choice(["string", "integer", "number", "boolean", "array", "object"])
    if kind == "string":
        return text
    if kind == "integer":
        return rng.randint(100, 10**9)
    if kind == "number":
        return rng.randint(100, 10**6) + 0.25
    if kind == "boolean":
        return rng.choice([True, False])
    if kind == "array":
        return [text, text[::-1] + "0"]
    return {"k" + text[:2]: text}


def _printed_forms(secret) -> list[str]:
    """How a process may print `secret`, written out here independently of masking.py: the
    shell's $PARAM_X, JSON (Python's spaced, jq -c's compact, with or without \\u escapes),
    Python's print(), and each string inside an array or object (a loop over its items)."""
    if isinstance(secret, str):
        return [secret]
    shell = ("true" if secret else "false") if isinstance(secret, bool) else None
    forms = [
        shell or (json.dumps(secret) if isinstance(secret, (list, dict)) else str(secret)),
        json.dumps(secret),
        json.dumps(secret, ensure_ascii=False, separators=(",", ":")),
        str(secret),
    ]
    if isinstance(secret, list):
        forms += secret
    if isinstance(secret, dict):
        forms += [*secret.keys(), *secret.values()]
    return forms


def _occurrence(rng: random.Random, secret) -> str:
    """One way the process may print `secret`, sometimes inside a JSON string."""
    form = rng.choice(_printed_forms(secret))
    if rng.random() < 0.3:
        form = json.dumps(form, ensure_ascii=rng.random() < 0.5)[1:-1]
    return form


def _pieces(rng: random.Random, data: bytes) -> list[bytes]:
    if rng.random() < 0.1:
        return [data[i : i + 1] for i in range(len(data))]  # 1-byte writes
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 12))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def _captured(pieces: list[bytes], secrets) -> str:
    capture = StreamCapture("stdout", secret_forms(secrets), max_chunk_bytes=1024 * 1024)
    lines = []
    for piece in pieces:
        lines += capture.feed(piece, now=0)
    return "".join(lines + capture.close(now=0))


def test_it_masks_every_secret_form_in_ten_thousand_random_splits():
    rng = random.Random(20261130)
    leaks = over_masked = runs = 0
    for _ in range(SPLIT_RUNS):
        secrets = [_random_secret(rng) for _ in range(rng.randint(1, 3))]
        fillers = [
            "".join(rng.choice(FILLER_CHARS) for _ in range(rng.randint(1, 6)))
            for _ in range(rng.randint(2, 5))
        ]
        inserted = [_occurrence(rng, rng.choice(secrets)) for _ in fillers[1:]]
        text = fillers[0] + "".join(o + f for o, f in zip(inserted, fillers[1:], strict=True))
        out = _captured(_pieces(rng, text.encode()), secrets)
        runs += 1
        leaks += any(form in out for form in inserted)
        over_masked += out != MASK.join(fillers)
    assert (runs, leaks, over_masked) == (SPLIT_RUNS, 0, 0)


# --- end to end ----------------------------------------------------------------------------
pytestmark_db = pytest.mark.django_db(transaction=True)


async def _output(execution_id: str) -> str:
    return "".join(data for _, _, data in await sync_to_async(output_of)(execution_id))


@pytestmark_db
async def test_it_masks_array_and_boolean_secrets_as_the_process_prints_them(tmp_path):
    pack = await register_pack(
        tmp_path,
        "sec",
        {
            "typed.yaml": "runner_type: local-shell-cmd\nparameters:\n"
            "  cmd: {type: string}\n"
            "  tokens: {type: array, secret: true}\n"
            "  flag: {type: boolean, secret: true}\n"
        },
    )
    action = pack["typed"]
    cmd = 'echo "all $PARAM_TOKENS"; echo "flag=$PARAM_FLAG"; echo "one abc123"'
    done = await run_execution(action, {"cmd": cmd, "tokens": ["abc123", "def456"], "flag": True})
    assert done.status == S.SUCCEEDED
    assert await _output(done.id) == f"all {MASK}\nflag={MASK}\none {MASK}\n"


@pytestmark_db
async def test_it_keeps_a_result_whole_when_a_secret_is_a_number_or_boolean(tmp_path):
    pack = await register_pack(
        tmp_path,
        "sec",
        {
            "counts.py": "def run(n, ok):\n    return {'count': 12345, 'ok': ok, 'n': n}\n",
            "counts.yaml": "runner_type: python-script\nentry_point: counts.py\nparameters:\n"
            "  n: {type: integer, secret: true}\n  ok: {type: boolean, secret: true}\n",
        },
    )
    action = pack["counts"]
    done = await run_execution(action, {"n": 123, "ok": True})
    assert done.status == S.SUCCEEDED, done.error
    assert done.result == {"count": 12345, "ok": MASK, "n": MASK}
    assert done.exit_code == 0


WORKFLOW = """
tasks:
  - name: use
    action: sec.shell
    parameters:
      cmd: 'echo "using token {{ token }}"; echo "plain {{ label }}"'
"""


@pytestmark_db
async def test_it_carries_a_secret_into_a_workflow_task_as_a_secret(tmp_path):
    pack = await register_pack(
        tmp_path,
        "sec",
        {
            "shell.yaml": "runner_type: local-shell-cmd\nparameters:\n  cmd: {type: string}\n",
            "flow.yaml": "runner_type: workflow\nentry_point: workflows/flow.yaml\n"
            "parameters:\n  token: {type: string, secret: true}\n  label: {type: string}\n",
            "workflows/flow.yaml": WORKFLOW,
        },
    )
    action = pack["flow"]
    done = await run_execution(action, {"token": "tok-7f3a9", "label": "shown"})
    assert done.status == S.SUCCEEDED, done.error
    child = await done.children.aget()
    assert await _output(child.id) == f"using token {MASK}\nplain shown\n"
    assert child.secret_parameters == ["cmd"]
    assert child.masked_parameters() == {"cmd": MASK}
    events = await sync_to_async(list)(
        ExecutionEvent.objects.filter(execution_id__in=[child.id, done.id]).values_list(
            "payload", flat=True
        )
    )
    assert events and not any("tok-7f3a9" in json.dumps(p) for p in events)
    payload = await sync_to_async(services.execution_payload)(child)
    assert "tok-7f3a9" not in json.dumps(payload)
