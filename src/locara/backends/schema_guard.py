"""Bounds on the JSON schemas a request may turn into a grammar, checked before any backend.

A JSON schema becomes a GBNF grammar that constrains sampling. llama.cpp expands
repetition counts (``maxLength: 1500`` becomes 1,500 optional rules), one alternative
per enum value, and refuses some constructs outright (an empty ``enum`` or ``anyOf``);
in llama-cpp-python 0.3.36 a grammar that fails to build reaches the sampler as a
NULL pointer and the next token segfaults the process. A large but valid grammar is
the other risk: a 20,000-value enum makes every sampled token cost seconds while the
request holds the model. So the schema is walked here first and every construct that
is empty, unbounded or too large is refused with the JSON path of the offending part.
What passes is still built for real by the backend, which refuses a grammar llama.cpp
cannot build (see ``LlamaCppModel._grammar``).
"""

from __future__ import annotations

import json
from typing import Any

from locara.errors import UnsupportedFeatureError

MAX_SCHEMA_BYTES = 32 * 1024
MAX_DEPTH = 24
MAX_ENUM = 512
MAX_REPEAT = 1000  # minLength/maxLength/minItems/maxItems/min-/maxProperties
MAX_PATTERN = 512
MAX_GRAMMAR_BYTES = 128 * 1024
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_ALTERNATIVES = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMAS = ("items", "additionalProperties", "not", "contains")


def refuse(path: str, what: str) -> UnsupportedFeatureError:
    """The error for one unsupported part of a schema, named by its JSON path."""
    return UnsupportedFeatureError(
        f"unsupported JSON schema at {path}: {what}",
        "simplify that part of the schema (objects, arrays, strings, numbers, booleans, "
        f"enums of at most {MAX_ENUM} values, lengths and item counts of at most {MAX_REPEAT})",
    )


def check_schema(schema: dict[str, Any]) -> None:
    """Refuse a schema that is too large or uses something no grammar can be built from."""
    size = len(json.dumps(schema, ensure_ascii=False).encode("utf-8"))
    if size > MAX_SCHEMA_BYTES:
        raise refuse("$", f"the schema is {size} bytes; the limit is {MAX_SCHEMA_BYTES}")
    _walk(schema, "$", 0)


def _walk(node: Any, path: str, depth: int) -> None:
    if isinstance(node, bool):
        return  # true/false are valid (sub)schemas
    if not isinstance(node, dict):
        raise refuse(path, f"expected a schema object, got {type(node).__name__}")
    if depth > MAX_DEPTH:
        raise refuse(path, f"nested deeper than {MAX_DEPTH} levels")
    ref = node.get("$ref")
    if ref is not None and (not isinstance(ref, str) or not ref.startswith("#")):
        # Only references inside the document: a URL would make the converter fetch it.
        raise refuse(f"{path}.$ref", f"{ref!r} is not a local reference (#/...)")
    if "enum" in node:
        values = node["enum"]
        if not isinstance(values, list) or not values:
            raise refuse(f"{path}.enum", "an enum needs at least one value")
        if len(values) > MAX_ENUM:
            raise refuse(f"{path}.enum", f"{len(values)} values; the limit is {MAX_ENUM}")
    for key in _COUNTS:
        if key in node:
            value = node[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise refuse(f"{path}.{key}", f"{value!r} is not a non-negative integer")
            if value > MAX_REPEAT:
                raise refuse(f"{path}.{key}", f"{value} is larger than {MAX_REPEAT}")
    for lo, hi in (("minLength", "maxLength"), ("minItems", "maxItems")):
        if isinstance(node.get(lo), int) and isinstance(node.get(hi), int) and node[lo] > node[hi]:
            raise refuse(path, f"{lo} {node[lo]} is larger than {hi} {node[hi]}")
    pattern = node.get("pattern")
    if pattern is not None:
        if not isinstance(pattern, str):
            raise refuse(f"{path}.pattern", "a pattern must be a string")
        if len(pattern) > MAX_PATTERN:
            raise refuse(
                f"{path}.pattern", f"{len(pattern)} characters; the limit is {MAX_PATTERN}"
            )
    for key in _ALTERNATIVES:
        if key in node:
            options = node[key]
            if not isinstance(options, list) or not options:
                raise refuse(f"{path}.{key}", f"{key} needs at least one schema")
            if len(options) > MAX_ENUM:
                raise refuse(f"{path}.{key}", f"{len(options)} schemas; the limit is {MAX_ENUM}")
            for i, sub in enumerate(options):
                _walk(sub, f"{path}.{key}[{i}]", depth + 1)
    for key in _SUBSCHEMAS:
        if key in node and not isinstance(node[key], bool):
            _walk(node[key], f"{path}.{key}", depth + 1)
    for key in ("properties", "$defs", "definitions", "patternProperties"):
        props = node.get(key)
        if props is None:
            continue
        if not isinstance(props, dict):
            raise refuse(f"{path}.{key}", f"{key} must be an object")
        for name, sub in props.items():
            _walk(sub, f"{path}.{key}.{name}", depth + 1)
