"""The backend seam: one narrow protocol, values that cross it, and nothing else.

A backend turns a stored artifact into a ``LoadedModel``; a loaded model turns a
``GenerationRequest`` into a stream of ``Chunk``s whose last one carries the finish
reason and the usage. Heavy imports (llama_cpp, mlx) happen inside ``load()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from locara.errors import UsageError

if TYPE_CHECKING:
    from locara.registry.manifest import ModelManifest

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters; ``validate()`` rejects values no backend should accept."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None

    @property
    def reproducible(self) -> bool:
        """A seed was given: the same request must give the same answer every time.

        Backends then evaluate the whole prompt instead of reusing a cached prefix:
        llama.cpp's numerics differ with the batch shape a prompt is evaluated in, so a
        prefix-cache hit could change a greedy answer. The cost is the prompt's time.
        """
        return self.seed is not None

    @classmethod
    def of(cls, defaults: Mapping[str, Any] | None = None, **given: Any) -> Sampling:
        """A model's defaults (its manifest's ``default_params``), then what the caller set.

        The one mapping from options to sampling for every surface: keys that are not
        sampling fields are ignored in the defaults, None means "not set"; validated.
        """
        fields = {k: v for k, v in (defaults or {}).items() if k in cls.__dataclass_fields__}
        fields.update({k: v for k, v in given.items() if v is not None})
        return cls(**fields).validate()

    def validate(self) -> Sampling:
        def bad(name: str, value: object, rule: str) -> UsageError:
            return UsageError(f"invalid {name} {value!r}: {rule}", f"pass a {name} {rule}")

        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise bad("temperature", self.temperature, "that is >= 0")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", self.top_p, "in (0, 1]")
        if self.top_k < 0:
            raise bad("top_k", self.top_k, "that is >= 0 (0 disables it)")
        if not math.isfinite(self.min_p) or not 0 <= self.min_p <= 1:
            raise bad("min_p", self.min_p, "in [0, 1]")
        if not math.isfinite(self.repeat_penalty) or self.repeat_penalty <= 0:
            raise bad("repeat_penalty", self.repeat_penalty, "that is > 0")
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise bad("seed", self.seed, "in [0, 2^32)")
        return self


@dataclass(frozen=True)
class GenerationRequest:
    """A chat (``messages``) or raw completion (``prompt``) request."""

    messages: tuple[Message, ...] = ()
    prompt: str | None = None
    max_tokens: int | None = None  # None: until the context is full
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    json_schema: dict[str, Any] | None = None  # {} means "any JSON object"
    logprobs: int | None = None  # None: off; N >= 0: each token's logprob and N alternatives
    # Polled between batches of prompt work, so a long prompt stops soon after its client
    # went away (a generation stops between tokens anyway, when its iterator is closed).
    cancelled: Callable[[], bool] | None = field(default=None, compare=False, repr=False)

    def validate(self) -> GenerationRequest:
        if (self.prompt is None) == (not self.messages):
            raise UsageError("a request needs either messages or a prompt", "pass one of them")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise UsageError(
                f"invalid max_tokens {self.max_tokens}: must be > 0", "pass --max-tokens 1 or more"
            )
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise UsageError(
                f"invalid top_logprobs {self.logprobs}: must be in 0..20", "pass 0 to 20"
            )
        self.sampling.validate()
        return self


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    """Seconds; rates are tokens per second (0.0 when nothing was measured)."""

    prompt_s: float
    generation_s: float
    ttft_s: float

    def rates(self, usage: Usage) -> tuple[float, float]:
        evaluated = usage.prompt_tokens - usage.cached_tokens
        pp = evaluated / self.prompt_s if self.prompt_s > 0 else 0.0
        # The first token comes out of prompt processing; the rest are decode steps.
        decoded = max(usage.completion_tokens - 1, 0)
        tg = decoded / self.generation_s if self.generation_s > 0 and decoded else 0.0
        return pp, tg


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability, and the ``top`` alternatives when asked for."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Chunk:
    """One piece of a streamed answer; counts are cumulative so far."""

    text: str
    completion_tokens: int
    prompt_tokens: int
    elapsed_s: float
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    logprob: float | None = None
    # Per token since the previous chunk, when the request set ``logprobs``.
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Capabilities:
    chat: bool = True
    completion: bool = True
    embed: bool = False
    json_schema: bool = False
    tools: bool = False
    logprobs: bool = False
    lora: bool = False


@dataclass(frozen=True)
class LoadOptions:
    """How a backend loads a model; the loader fills every field from the plan."""

    n_ctx: int = 4096  # tokens per slot
    n_threads: int | None = None  # None: physical (performance) cores
    n_gpu_layers: int = 0
    embedding: bool = False
    flash_attn: bool = False
    kv_type: Literal["f16", "q8_0", "q4_0"] = "f16"
    n_batch: int = 512
    n_parallel: int = 1  # slots: requests decoded at once, each with n_ctx tokens of KV


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""


class LoadedModel(Protocol):
    capabilities: Capabilities
    n_ctx: int

    def generate(self, req: GenerationRequest) -> Iterator[Chunk]: ...

    def embed(self, texts: list[str]) -> list[list[float]]: ...

    def count_tokens(self, text: str) -> int: ...

    def close(self) -> None: ...


class Backend(Protocol):
    name: ClassVar[str]
    formats: ClassVar[frozenset[str]]

    def available(self) -> Availability: ...

    def load(self, path: Path, manifest: ModelManifest, opts: LoadOptions) -> LoadedModel: ...
