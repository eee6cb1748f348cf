"""The backend seam: one narrow protocol, values that cross it, and nothing else.

A backend turns a stored artifact into a ``LoadedModel``; a loaded model turns a
``GenerationRequest`` into a stream of ``Chunk``s whose last one carries the finish
reason and the usage. Heavy imports (llama_cpp, mlx) happen inside ``load()``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from locara.errors import UsageError

if TYPE_CHECKING:
    from locara.registry.manifest import ModelManifest

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "cancelled", "tool_calls"]
ToolMode = Literal["auto", "none", "required"]
# OpenAI's rule for function names; llama.cpp also builds grammar rule names from them.
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class ToolCall:
    """A function call an assistant made; ``arguments`` is JSON text, as OpenAI carries it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant's calls
    tool_call_id: str | None = None  # a tool result: the call it answers
    name: str | None = None  # a tool result: the function that produced it
    # A user's images (PNG, JPEG, ... bytes, checked and size-limited by the server), for
    # a model with a vision projector; the chat template puts them before the text.
    images: tuple[bytes, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Tool:
    """A function the model may call; ``parameters`` is the JSON schema of its arguments."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})


@dataclass(frozen=True)
class ToolChoice:
    """OpenAI's tool_choice: ``function`` set means that function must be called."""

    mode: ToolMode = "auto"
    function: str | None = None


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a streamed tool call: the first piece of call ``index`` has its id and
    name; ``arguments`` pieces concatenate to the call's JSON arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


def collect_tool_calls(deltas: Iterable[ToolCallDelta]) -> list[ToolCall]:
    """The complete calls a stream of deltas adds up to, in index order."""
    calls: dict[int, list[str]] = {}
    for d in deltas:
        call = calls.setdefault(d.index, ["", "", ""])
        call[0] = d.id or call[0]
        call[1] = d.name or call[1]
        call[2] += d.arguments
    return [
        ToolCall(id_ or f"call_{i}", name, args) for i, (id_, name, args) in sorted(calls.items())
    ]


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
class AdapterUse:
    """A LoRA adapter for one request, already bound to the loaded base by digest and
    shape (``locara.ecology.adapters.bind``); ``scale`` is llama.cpp's per-use scale."""

    id: str
    sha256: str
    path: Path
    scale: float = 1.0


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
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool | None = None  # None: as the chat template allows
    adapters: tuple[AdapterUse, ...] = ()  # a LoRA stack; empty: the base model alone
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
        self._validate_tools()
        return self

    @property
    def uses_tools(self) -> bool:
        """Tools are offered, or the conversation holds tool calls (which a model without
        tool support sees as their texts only)."""
        return bool(self.tools) or any(m.tool_calls for m in self.messages)

    def _validate_tools(self) -> None:
        names: set[str] = set()
        for i, tool in enumerate(self.tools):
            where = f"tools[{i}].function"
            if not _TOOL_NAME.fullmatch(tool.name):
                raise UsageError(
                    f"{where}.name {tool.name!r} is not a valid function name",
                    "use 1 to 64 letters, digits, underscores or dashes",
                )
            if tool.name in names:
                raise UsageError(f"{where}.name {tool.name!r} is defined twice", "name each once")
            names.add(tool.name)
            if tool.parameters.get("type", "object") != "object":
                raise UsageError(
                    f"{where}.parameters must be a JSON schema of type object, not "
                    f"{tool.parameters.get('type')!r}",
                    'pass {"type": "object", "properties": {...}}',
                )
        choice = self.tool_choice
        if choice.mode == "required" and not self.tools:
            raise UsageError(
                "tool_choice asks for a tool call but no tools were given", "pass tools"
            )
        if choice.function is not None and choice.function not in names:
            known = ", ".join(sorted(names)) or "none"
            raise UsageError(
                f"tool_choice names the function {choice.function!r}, which is not in tools "
                f"(given: {known})",
                "name one of the tools, or pass tool_choice auto",
            )
        if self.tools and self.prompt is not None:
            raise UsageError("tools need a chat (messages), not a raw prompt", "send messages")
        if self.tools and self.json_schema is not None:
            raise UsageError(
                "tools and a response format (JSON schema) cannot be combined",
                "omit one of them",
            )
        if self.tools and self.logprobs is not None:
            raise UsageError("logprobs are not available with tools", "omit logprobs")
        for i, m in enumerate(self.messages):
            for j, call in enumerate(m.tool_calls):
                where = f"messages[{i}].tool_calls[{j}].function"
                if not call.name:
                    raise UsageError(f"{where}.name is empty", "name the function that was called")
                try:
                    args = json.loads(call.arguments)
                except ValueError:
                    args = None
                if not isinstance(args, dict):
                    raise UsageError(
                        f"{where}.arguments is not a JSON object: {call.arguments[:80]!r}",
                        'send the arguments as JSON object text, e.g. "{}"',
                    )


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
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    # Per token since the previous chunk, when the request set ``logprobs``.
    logprobs: tuple[TokenLogprob, ...] = ()
    tool_calls: tuple[ToolCallDelta, ...] = ()


def cancelled_chunk(prompt_tokens: int, cached: int, elapsed_s: float) -> Chunk:
    """The last chunk of a request cancelled before its first token (during the prompt)."""
    return Chunk(
        "", 0, prompt_tokens, "cancelled", Usage(prompt_tokens, 0, cached),
        Timings(prompt_s=elapsed_s, generation_s=0.0, ttft_s=elapsed_s),
    )  # fmt: skip


@dataclass(frozen=True)
class Capabilities:
    chat: bool = True
    completion: bool = True
    embed: bool = False
    json_schema: bool = False
    tools: bool = False
    logprobs: bool = False
    lora: bool = False
    transcribe: bool = False  # speech to text (locara.backends.media.SpeechModel)
    ocr: bool = False  # text in images (locara.backends.media.OcrModel)
    vision: bool = False  # images in chat messages: a projector (mmproj) is loaded
    # Why ``tools`` is False, as the refusal a client sees: (what stops it, what to do).
    no_tools: tuple[str, str] = (
        "this backend does not call tools",
        "use a GGUF model, served by llama-server",
    )


@dataclass(frozen=True)
class LoadOptions:
    """How a backend loads a model; the loader fills every field from the plan."""

    n_ctx: int = 4096  # tokens per slot
    n_threads: int | None = None  # decoding; None: physical (performance) cores
    n_threads_batch: int | None = None  # prompt processing; None: as n_threads
    n_gpu_layers: int = 0
    embedding: bool = False
    flash_attn: bool = False
    kv_type: Literal["f16", "q8_0", "q4_0"] = "f16"
    n_batch: int = 512
    n_parallel: int = 1  # slots: requests decoded at once, each with n_ctx tokens of KV
    rpc_servers: tuple[str, ...] = ()  # llama.cpp RPC workers holding the offloaded layers
    # LoRA adapters bound to this base, loaded at scale 0 with the model by a llama-server
    # worker (requests choose theirs); the in-process backend loads them when asked.
    lora: tuple[AdapterUse, ...] = ()


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""


class LoadedModel(Protocol):
    capabilities: Capabilities
    n_ctx: int  # tokens of one request (prompt and answer)
    embed_ctx: int  # tokens of one embedding input (0: it does not embed)

    def generate(self, req: GenerationRequest) -> Iterator[Chunk]: ...

    def embed(self, texts: list[str]) -> list[list[float]]: ...

    def count_tokens(self, text: str) -> int: ...

    def close(self) -> None: ...


class Backend(Protocol):
    name: ClassVar[str]
    formats: ClassVar[frozenset[str]]

    def available(self) -> Availability: ...

    def load(self, path: Path, manifest: ModelManifest, opts: LoadOptions) -> LoadedModel: ...
