"""``locara validate MODEL``: the checks that make a manifest + artifact a usable model.

The chat template renders in the sandbox (and keeps every message), each stop token is
one token of the vocabulary, a smoke prompt gets an answer, and the suite named runs
(its FitnessVector recorded). A user manifest that passes gets ``validated_at`` and
``validated_by``; curated manifests ship with the package and are left as they are.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from locara.backends.base import GenerationRequest, Message, Sampling
from locara.ecology.fitness import FitnessVector
from locara.ecology.suite import Suite
from locara.errors import LocaraError, UnsupportedFeatureError
from locara.settings import Settings

if TYPE_CHECKING:
    from locara.backends.llama_cpp import LlamaCppModel

SMOKE = "Name the capital city of France."
_SAMPLE = (
    Message("system", "You are terse."),
    Message("user", "Say hi."),
    Message("assistant", "Hi."),
    Message("user", SMOKE),
)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Validation:
    model_id: str
    sha256: str
    checks: tuple[Check, ...]
    fitness: FitnessVector | None
    recorded_in: Path | None  # the user manifest stamped, if any

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def validate_model(
    settings: Settings, reference: str, suite: Suite | None = None, by: str | None = None
) -> Validation:
    """Run every check on ``reference``; stamp its user manifest when all pass."""
    from locara.backends.llama_cpp import LlamaCppModel
    from locara.engine.loader import load, resolve
    from locara.planner.plan import PlanRequest
    from locara.registry.catalog import Registry, builtin_registry_dir

    request = PlanRequest(features=frozenset({"generation"}), n_parallel=1, in_process=True)
    resolved = resolve(settings, reference, request=request)
    manifest = resolved.manifest
    handle = load(settings, resolved)
    checks: list[Check] = []
    try:
        model = handle.model
        if not isinstance(model, LlamaCppModel):
            raise UnsupportedFeatureError(
                f"locara validate checks GGUF models; {manifest.id} runs on {handle.backend}",
                f"validate its GGUF: locara validate {manifest.id} (with --backend llama_cpp)",
            )
        checks.append(_template(model))
        checks += [_stop_token(model, w) for w in manifest.config.stop_tokens]
        checks.append(_smoke(model))
    finally:
        handle.close()
    fitness = None
    if suite is not None and all(c.ok for c in checks):
        from locara.ecology.evaluate import evaluate

        fitness = evaluate(settings, reference, suite)
        u = fitness.utility
        checks.append(Check(f"suite {suite.name}", True,
                            f"acc {u['acc']:.2f} ({u['passed']}/{u['n']}), run {fitness.run_id}"))  # fmt: skip
    stamped = None
    path = Registry(settings).path_of(manifest.id)
    if all(c.ok for c in checks) and path is not None and path.parent != builtin_registry_dir():
        stamped = _stamp(path, by or _who())
    return Validation(manifest.id, resolved.blob.sha256, tuple(checks), fitness, stamped)


def _template(model: LlamaCppModel) -> Check:
    if model.template is None:
        return Check("chat template", False, "none in the manifest or the GGUF")
    try:
        text = model.render_prompt(GenerationRequest(messages=_SAMPLE))
    except LocaraError as exc:
        return Check("chat template", False, exc.message)
    lost = [m.content for m in _SAMPLE if m.content not in text]
    if lost:
        return Check("chat template", False, f"the rendered prompt drops {lost[0]!r}")
    return Check("chat template", True, f"renders in the sandbox ({len(text)} characters)")


def _stop_token(model: LlamaCppModel, word: str) -> Check:
    tokens = model.tokenize(word, special=True)
    if len(tokens) != 1:
        return Check(f"stop token {word!r}", False,
                     f"is {len(tokens)} tokens, not one token of the vocabulary")  # fmt: skip
    return Check(f"stop token {word!r}", True, f"token {tokens[0]}")


def _smoke(model: LlamaCppModel) -> Check:
    req = GenerationRequest(
        messages=(Message("user", SMOKE),), max_tokens=16, sampling=Sampling(0.0, seed=0)
    )
    try:
        text = "".join(c.text for c in model.generate(req)).strip()
    except LocaraError as exc:
        return Check("smoke prompt", False, exc.message)
    return Check("smoke prompt", bool(text), repr(text[:60]) if text else "an empty answer")


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} (locara validate)"


def _stamp(path: Path, by: str) -> Path:
    data = json.loads(path.read_text(encoding="utf-8"))
    data["validated_at"] = dt.datetime.now(dt.UTC).date().isoformat()
    data["validated_by"] = by
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
