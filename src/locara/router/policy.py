"""RouterPolicy files: which local candidates may answer, when to escalate, and to whom.

A policy is JSON or TOML, validated strictly (``extra="forbid"``: a misspelt field is
an error, not a silently ignored one). Its JSON Schema is ``docs/router-policy.schema.json``
(regenerate with ``python -m locara.router.policy > docs/router-policy.schema.json``).

Validation happens in two steps. ``RouterPolicy`` itself checks what the file alone can
say: ranges, unique names, references between sections, fallback cycles, and that a
``local_only`` policy names no remote target. ``load_policy`` then checks it against
this machine: every candidate is a known model, and every target's API-key variable is
set. Neither step ever reads or prints a key's value.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, model_validator

from locara.errors import ConfigError, LocaraError
from locara.settings import Settings

Privacy = Literal["local_only", "allow_remote"]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AdapterUse(_Strict):
    """One adapter of a stack, by its registered id, with llama.cpp's per-use scale."""

    id: str = Field(min_length=1)
    scale: float = Field(default=1.0, ge=0.0, le=4.0)


class Candidate(_Strict):
    """A local model (``id``, ``id:quant`` or ``id@sha256:<hex>``) and an adapter stack."""

    model: str = Field(min_length=1, description="Model reference: id, id:quant or id@sha256:HEX")
    name: Name | None = Field(default=None, description="How routes refer to it (default: model)")
    adapters: tuple[AdapterUse, ...] = ()

    @property
    def key(self) -> str:
        return self.name or self.model


class Filters(_Strict):
    """What a candidate must satisfy to be considered at all."""

    max_memory: ByteSize | None = Field(
        default=None, description='Most RAM a candidate may need, e.g. "2GiB" or bytes'
    )
    runtime: tuple[Literal["llama_cpp", "mlx"], ...] | None = Field(
        default=None, description="Backends allowed (default: any this machine supports)"
    )
    privacy: Privacy = Field(
        default="local_only",
        description="local_only: nothing ever leaves the machine; allow_remote: targets may be used",
    )


class Weights(_Strict):
    """score = utility·w_u + privacy·w_p + latency_fit·w_l − memory_cost·w_m (each term in 0..1)."""

    utility: float = Field(default=1.0, ge=0.0, le=100.0)
    privacy: float = Field(default=1.0, ge=0.0, le=100.0)
    latency_fit: float = Field(default=0.5, ge=0.0, le=100.0)
    memory_cost: float = Field(default=0.5, ge=0.0, le=100.0)


class SelfCheck(_Strict):
    """Ask the local model whether its own answer is right; escalate below ``min_yes_prob``."""

    min_yes_prob: float = Field(default=0.5, ge=0.0, le=1.0)


class SelfConsistency(_Strict):
    """Sample the local model ``samples`` more times and escalate below ``min_confidence``.

    confidence = the share of samples that say the same as the answer (the same words,
    case and punctuation aside) × the probability of its least likely tokens (exp of the
    tail logprob, 3 tokens). Both must be high: a model that says the same thing every time
    but with one unlikely word, or a fluent answer that changes from sample to sample, is
    not trusted. Each sample is one more local generation (and ledger row).
    """

    min_confidence: float = Field(ge=0.0, le=1.0)
    samples: int = Field(default=3, ge=1, le=16)
    temperature: float = Field(default=0.8, gt=0.0, le=2.0)


class Cascade(_Strict):
    """Answer locally, then escalate when a confidence signal falls under its threshold."""

    min_mean_logprob: float | None = Field(
        default=None,
        ge=-100.0,
        le=0.0,
        description="Escalate when the answer's mean token logprob is lower",
    )
    min_tail_logprob: float | None = Field(
        default=None,
        ge=-100.0,
        le=0.0,
        description="Escalate when the mean of the answer's 3 least likely tokens is lower "
        "(one wrong word in a fluent answer shows here, not in the mean)",
    )
    json_schema: bool = Field(
        default=True, description="Escalate when the request has a JSON schema the answer fails"
    )
    self_consistency: SelfConsistency | None = None
    self_check: SelfCheck | None = None


class Price(_Strict):
    """List price of a target, USD per million tokens (what answering locally saves)."""

    input: float = Field(ge=0.0, le=10_000.0)
    output: float = Field(ge=0.0, le=10_000.0)


class Target(_Strict):
    """An OpenAI-compatible endpoint: another Locara, llama-server, or a cloud API."""

    name: Name
    base_url: str = Field(pattern=r"^https?://[^\s/]+", description="e.g. http://127.0.0.1:8080/v1")
    model: str = Field(min_length=1, description="The model name sent to the endpoint")
    api_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the API key (the key itself never goes in a policy)",
    )
    timeout_s: float = Field(default=30.0, gt=0.0, le=600.0)
    require_consent: bool = Field(
        default=True, description="Escalate only when the request carries consent"
    )
    fallback: Name | None = Field(default=None, description="Target tried when this one fails")
    price: Price | None = None


class Route(_Strict):
    """Requests this route takes (by keyword or by similarity to examples), and how it answers."""

    name: Name
    keywords: tuple[str, ...] = Field(default=(), description="Case-insensitive words or phrases")
    examples: tuple[str, ...] = Field(default=(), description="Prompts compared by embedding")
    min_similarity: float = Field(default=0.6, ge=0.0, le=1.0)
    candidates: tuple[Name, ...] | None = Field(
        default=None, description="Candidate names this route may use (default: all)"
    )
    mode: Literal["local", "cascade", "escalate"] = Field(
        default="cascade",
        description="local: answer locally; cascade: locally, escalate on low confidence; "
        "escalate: send to the target directly",
    )
    escalate_to: Name | None = Field(default=None, description="Target (default: the policy's)")


class RouterPolicy(_Strict):
    """A whole policy file; see docs/router-policy.schema.json and the README."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Locara RouterPolicy")

    schema_version: Literal[1] = 1
    name: Name = Field(description="The virtual model name clients ask for (besides 'auto')")
    description: str | None = None
    candidates: tuple[Candidate, ...] = Field(min_length=1)
    filters: Filters = Filters()
    weights: Weights = Weights()
    routes: tuple[Route, ...] = ()
    default_route: Name | None = Field(
        default=None, description="Route for prompts no rule matches (default: cascade on all)"
    )
    cascade: Cascade = Cascade()
    targets: tuple[Target, ...] = ()
    escalate_to: Name | None = Field(default=None, description="Default escalation target")
    on_no_candidate: Literal["escalate", "refuse"] = "escalate"
    embedding_model: str | None = Field(
        default=None, description="Model for example similarity (default: all-minilm-l6-v2)"
    )

    @model_validator(mode="after")
    def _references(self) -> RouterPolicy:
        def unique(kind: str, names: list[str]) -> None:
            seen: set[str] = set()
            for n in names:
                if n in seen:
                    raise ValueError(f"{kind} name {n!r} is used twice")
                seen.add(n)

        unique("candidate", [c.key for c in self.candidates])
        unique("route", [r.name for r in self.routes])
        unique("target", [t.name for t in self.targets])
        cands = {c.key for c in self.candidates}
        targets = {t.name: t for t in self.targets}
        routes = {r.name for r in self.routes}

        def target(ref: str | None, where: str) -> None:
            if ref is not None and ref not in targets:
                known = ", ".join(sorted(targets)) or "none"
                raise ValueError(
                    f"{where} names the target {ref!r}, which is not defined (targets: {known})"
                )

        for r in self.routes:
            for c in r.candidates or ():
                if c not in cands:
                    raise ValueError(
                        f"route {r.name!r} names the candidate {c!r}, which is not defined "
                        f"(candidates: {', '.join(sorted(cands))})"
                    )
            target(r.escalate_to, f"route {r.name!r}")
            if r.mode == "escalate" and not (r.escalate_to or self.escalate_to):
                raise ValueError(f"route {r.name!r} has mode escalate but no target")
        target(self.escalate_to, "escalate_to")
        if self.default_route is not None and self.default_route not in routes:
            raise ValueError(f"default_route {self.default_route!r} is not a route")
        for t in self.targets:
            target(t.fallback, f"target {t.name!r} fallback")
            chain, at = [t.name], t.fallback
            while at is not None:
                if at in chain:
                    raise ValueError(f"fallback cycle: {' -> '.join([*chain, at])}")
                chain.append(at)
                at = targets[at].fallback
        if self.filters.privacy == "local_only" and self.targets:
            raise ValueError(
                "a local_only policy cannot name escalation targets "
                f"({', '.join(targets)}); set filters.privacy to allow_remote to use them"
            )
        return self

    def target(self, name: str) -> Target:
        return next(t for t in self.targets if t.name == name)

    def fallback_chain(self, first: str | None) -> list[Target]:
        """``first`` and its fallbacks, in order (acyclic: checked at validation)."""
        chain: list[Target] = []
        while first is not None:
            t = self.target(first)
            chain.append(t)
            first = t.fallback
        return chain


def json_schema() -> str:
    """The policy's JSON Schema, as written to docs/router-policy.schema.json."""
    return json.dumps(RouterPolicy.model_json_schema(), indent=2, sort_keys=True) + "\n"


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = str(err.get("ctx", {}).get("error", err["msg"])).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    return f"{loc}: {msg}" if loc else msg


def parse_policy(text: str, source: str) -> RouterPolicy:
    """A policy from JSON or TOML text (TOML when ``source`` ends in .toml)."""
    hint = f"fix {source} (schema: docs/router-policy.schema.json)"
    try:
        data = tomllib.loads(text) if source.endswith(".toml") else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"policy {source} is not valid {'TOML' if source.endswith('.toml') else 'JSON'}: {exc}",
            hint,
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"policy {source} must be an object", hint)
    try:
        return RouterPolicy.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"policy {source}: {_describe(exc)}", hint) from exc


def load_policy(
    path: Path, settings: Settings, env: Mapping[str, str] | None = None
) -> RouterPolicy:
    """Read, validate and check a policy against this machine's registry and environment."""
    from locara.ecology.adapters import AdapterRegistry
    from locara.registry.catalog import Registry
    from locara.registry.refs import parse_ref

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read policy {path}: {exc}", "pass the path of a policy file"
        ) from exc
    policy = parse_policy(text, str(path))
    registry, adapters = Registry(settings), AdapterRegistry(settings)
    for i, c in enumerate(policy.candidates):
        ref = parse_ref(c.model)
        if registry.path_of(ref.id) is None:
            near = registry.suggest(ref.id)
            raise ConfigError(
                f"policy {path}: candidates.{i}.model {c.model!r} is not a known model",
                ("did you mean: " + ", ".join(near) + "?")
                if near
                else "list models with: locara ls --all",
            )
        for j, a in enumerate(c.adapters):
            try:
                adapters.get(a.id)
            except LocaraError as exc:
                raise ConfigError(
                    f"policy {path}: candidates.{i}.adapters.{j}: {exc.message}",
                    exc.hint or "list adapters with: locara adapter ls",
                ) from exc
    env = os.environ if env is None else env
    for t in policy.targets:
        if t.api_key_env and not env.get(t.api_key_env):
            raise ConfigError(
                f"policy {path}: target {t.name!r} reads its API key from {t.api_key_env}, "
                "which is not set",
                f"export {t.api_key_env}=... before starting, or remove api_key_env",
            )
    return policy


if __name__ == "__main__":
    print(json_schema(), end="")
