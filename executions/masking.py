"""Secrets: how a value reaches the process, and hiding it everywhere it may come back.

    secret values ─ render_text ──────────▶ PARAM_X=…, --x=… (what the process sees)
         │
         └─ secret_forms: every text the process could print for it
               │   its text, its JSON (spaced and compact, ASCII-escaped or not), its Python
               │   text (a python-script action printing it), each string inside an array or
               │   object; the maskers add the JSON-escaped form of each of those
               ▼
         SecretMasker (streams: output split anywhere)   Masker.value (structures: results,
                                                          errors; walked, never re-parsed)

One renderer serves the runners (environment, arguments) and the masking, so a secret is
masked in exactly the text the process was given. Structured values are masked by walking
them: a string has its secret forms replaced, a number or boolean equal to a secret value
becomes `********`, a container equal to a secret value becomes `********`; text inside
serialized JSON is never replaced (that could break the JSON).
"""

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from executions.models.actions import MASK


def render_text(value: Any) -> str:
    """A parameter as the process gets it in text (environment variable, `--name=value`):
    strings as they are, booleans `true`/`false`, arrays and objects as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _string_leaves(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _string_leaves(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _string_leaves(key)
            yield from _string_leaves(item)


def secret_forms(values: Iterable[Any]) -> list[str]:
    """Every text under which the secret `values` may appear, longest first."""
    forms: set[str] = set()
    for value in values:
        if value is None or value == "":
            continue
        forms.add(render_text(value))
        if not isinstance(value, str):
            forms.add(json.dumps(value))
            forms.add(json.dumps(value, ensure_ascii=False))
            forms.add(json.dumps(value, separators=(",", ":")))
            forms.add(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
            forms.add(str(value))
        if isinstance(value, (list, dict)):
            forms.update(_string_leaves(value))
    return sorted((f for f in forms if f), key=len, reverse=True)


def _with_json_escapes(texts: Iterable[str]) -> set[str]:
    """`texts` and each of them as it reads inside a JSON string (ASCII-escaped or not)."""
    forms = set()
    for text in texts:
        if text:
            forms.add(text)
            forms.add(json.dumps(text)[1:-1])
            forms.add(json.dumps(text, ensure_ascii=False)[1:-1])
    return forms


class SecretMasker:
    """Replaces every secret text (and its JSON-escaped forms) with `********` in a stream.

    Text that could be the start of a secret is held back until the next piece shows whether
    it is one, so a secret split across two reads is still masked. Feeding text in any pieces
    gives the same result as masking it whole. `texts` come from `secret_forms`.
    """

    def __init__(self, texts: Iterable[str]):
        self._forms = sorted(_with_json_escapes(texts), key=len, reverse=True)
        # Longest first: at one position a longer secret wins over a secret that prefixes it.
        self._pattern = re.compile("|".join(map(re.escape, self._forms))) if self._forms else None
        self._first_chars = {f[0] for f in self._forms}
        self._longest = max((len(f) for f in self._forms), default=0)
        self._held = ""

    def feed(self, text: str) -> str:
        if self._pattern is None:
            return text
        buf = self._held + text
        hold_from = self._hold_start(buf)
        out, pos = [], 0
        for match in self._pattern.finditer(buf):
            if match.start() >= hold_from:
                break
            out.append(buf[pos : match.start()])
            out.append(MASK)
            pos = match.end()
        keep_from = max(pos, hold_from)
        out.append(buf[pos:keep_from])
        self._held = buf[keep_from:]
        return "".join(out)

    def flush(self) -> str:
        """Everything held back, at the end of the stream (it is not a whole secret)."""
        held, self._held = self._held, ""
        if self._pattern is None:
            return held
        return self._pattern.sub(MASK, held)

    def _hold_start(self, buf: str) -> int:
        """Index of the longest suffix of `buf` that is a proper prefix of some secret."""
        for i in range(max(0, len(buf) - self._longest + 1), len(buf)):
            if buf[i] in self._first_chars:
                tail = buf[i:]
                if any(len(f) > len(tail) and f.startswith(tail) for f in self._forms):
                    return i
        return len(buf)


def mask_text(text: str, texts: Iterable[str]) -> str:
    """Mask a whole text at once (the reference the streaming masker must agree with)."""
    masker = SecretMasker(texts)
    return masker.feed(text) + masker.flush()


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same JSON type (True is not 1, 1.0 is 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


class Masker:
    """Masks values of any JSON shape given the secret values (typed, as the run got them)."""

    def __init__(self, values: Iterable[Any]):
        self.values = [v for v in values if v is not None and v != ""]
        self.forms = secret_forms(self.values)

    def text(self, text: str) -> str:
        return mask_text(text, self.forms) if self.forms else text

    def value(self, value: Any) -> Any:
        """`value` with every secret hidden, its structure kept (always valid JSON)."""
        if not self.values or value is None:
            return value
        if any(_same(value, secret) for secret in self.values if not isinstance(secret, str)):
            return MASK
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            return {self.text(str(k)): self.value(item) for k, item in value.items()}
        return value


def parameter_secrets(parameters: dict[str, Any], secret_names: Iterable[str]) -> list[Any]:
    """The values of the secret parameters among `parameters` (typed, empty ones left out)."""
    return [
        parameters[name]
        for name in secret_names
        if parameters.get(name) is not None and parameters.get(name) != ""
    ]
