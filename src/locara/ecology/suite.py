"""Task suites: JSONL prompts with checkable answers (exact, regex, contains, JSON schema).

One object per line::

    {"id": "capital-france", "prompt": "Name the capital city of France.",
     "check": "contains", "expected": "Paris", "max_tokens": 24}

``expected`` is the text (exact: equal after trimming; contains: a case-insensitive
substring), a regular expression (regex: searched), or a JSON Schema (json_schema: the
answer must parse as JSON and validate). A bad line is refused with its line number.
Locara ships ``basic`` (capitals, arithmetic, JSON extraction), which the bundled model
can score on; ``--suite basic`` names it, any other value is a path.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from locara.errors import UsageError

SHIPPED = ("basic",)


class SuiteItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    prompt: str = Field(min_length=1)
    check: Literal["exact", "regex", "contains", "json_schema"]
    expected: str | dict[str, Any]
    max_tokens: int = Field(default=24, ge=1, le=4096)
    system: str | None = None

    def score(self, answer: str) -> bool:
        """Whether ``answer`` passes this item's check."""
        text = answer.strip()
        if self.check == "json_schema":
            import jsonschema

            assert isinstance(self.expected, dict)  # enforced when the suite is read
            try:
                jsonschema.validate(json.loads(text), self.expected)
            except (ValueError, jsonschema.ValidationError):
                return False
            return True
        assert isinstance(self.expected, str)  # enforced when the suite is read
        if self.check == "exact":
            return text == self.expected.strip()
        if self.check == "contains":
            return self.expected.lower() in text.lower()
        return re.search(self.expected, text) is not None


@dataclass(frozen=True)
class Suite:
    name: str
    sha256: str  # of the file's bytes: a scorecard is bound to the exact suite
    items: tuple[SuiteItem, ...]
    data: bytes = field(default=b"", repr=False)  # the file, stored beside the models


def load_suite(spec: str) -> Suite:
    """A shipped suite by name, or a JSONL file; every line checked, by number."""
    if spec in SHIPPED:
        data = files("locara.ecology").joinpath(f"suites/{spec}.jsonl").read_bytes()
        name = spec
    else:
        path = Path(spec)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(
                f"cannot read suite {spec}: {exc.strerror or exc}",
                f"pass a JSONL file, or a shipped suite: {', '.join(SHIPPED)}",
            ) from None
        name = path.stem
    items: list[SuiteItem] = []
    seen: set[str] = set()
    for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = SuiteItem.model_validate_json(line)
            _check_expected(item)
        except (ValidationError, ValueError) as exc:
            why = exc.errors()[0] if isinstance(exc, ValidationError) else None
            detail = f"{'.'.join(map(str, why['loc']))}: {why['msg']}" if why else str(exc)
            raise UsageError(
                f"suite {name}, line {n}: {detail}",
                'each line is {"id", "prompt", "check": exact|regex|contains|json_schema, '
                '"expected"}',
            ) from None
        if item.id in seen:
            raise UsageError(f"suite {name}, line {n}: id {item.id!r} is used twice", "rename it")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise UsageError(f"suite {name} has no items", "add one JSON object per line")
    return Suite(name, hashlib.sha256(data).hexdigest(), tuple(items), data)


def _check_expected(item: SuiteItem) -> None:
    if item.check == "json_schema":
        import jsonschema

        if not isinstance(item.expected, dict):
            raise ValueError("expected: a json_schema check needs a JSON Schema object")
        try:
            jsonschema.Draft202012Validator.check_schema(item.expected)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"expected: not a valid JSON Schema ({exc.message})") from None
    elif not isinstance(item.expected, str):
        raise ValueError(f"expected: a {item.check} check needs a string")
    elif item.check == "regex":
        try:
            re.compile(item.expected)
        except re.error as exc:
            raise ValueError(f"expected: not a valid regular expression ({exc})") from None
