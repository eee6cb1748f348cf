"""Request bodies of the Ollama-compatible API (``/api/...``), strict at the edge."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from locara.server.adapters import AdapterList

INT32 = 2**31 - 1

KeepAlive = float | str | None
Format = Literal["json", ""] | dict[str, Any] | None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Options(_Body):
    """Ollama's ``options``. Engine-tuning hints (threads, GPU layers, mmap...) are accepted
    and left to Locara's planner; sampling and context options are honoured."""

    num_ctx: int | None = Field(default=None, ge=1, le=INT32)
    num_predict: int | None = Field(default=None, ge=-2, le=INT32)
    temperature: float | None = Field(default=None, ge=0, le=100)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=INT32)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repeat_penalty: float | None = Field(default=None, ge=0, le=100)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64)
    stop: list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-100, le=100)
    frequency_penalty: float | None = Field(default=None, ge=-100, le=100)
    # Accepted, not used: llama.cpp tuning the planner decides.
    num_keep: int | None = None
    typical_p: float | None = None
    repeat_last_n: int | None = None
    penalize_newline: bool | None = None
    numa: bool | None = None
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    use_mmap: bool | None = None
    num_thread: int | None = None
    low_vram: bool | None = None
    f16_kv: bool | None = None
    vocab_only: bool | None = None
    use_mlock: bool | None = None
    tfs_z: float | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None


class _Data(BaseModel):
    """Conversation data a client may send back as it came: unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")


class FunctionCall(_Data):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCall(_Data):
    function: FunctionCall
    id: str | None = None


class ToolFunction(_Data):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Data):
    type: Literal["function"] = "function"
    function: ToolFunction


class OllamaMessage(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    thinking: str | None = None


class _ModelNamed(_Body):
    model: str | None = Field(default=None, max_length=300)
    name: str | None = Field(default=None, max_length=300)  # older clients

    @model_validator(mode="after")
    def _one_name(self) -> _ModelNamed:
        if self.model is None:
            self.model = self.name
        return self


class ChatRequest(_ModelNamed):
    messages: list[OllamaMessage] = Field(default_factory=list)
    stream: bool | None = True
    format: Format = None
    options: Options | None = None
    keep_alive: KeepAlive = None
    adapters: AdapterList = Field(default=None, max_length=16)  # LoRA stack: "ID[:SCALE]"
    tools: list[Tool] | None = None
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class GenerateRequest(_ModelNamed):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    stream: bool | None = True
    raw: bool | None = False
    format: Format = None
    images: list[str] | None = None
    options: Options | None = None
    keep_alive: KeepAlive = None
    adapters: AdapterList = Field(default=None, max_length=16)  # LoRA stack: "ID[:SCALE]"
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class EmbedRequest(_ModelNamed):
    input: str | list[str]
    # As in Ollama: over-long input is cut to the context unless this is false.
    truncate: bool | None = True
    options: Options | None = None
    keep_alive: KeepAlive = None
    dimensions: int | None = Field(default=None, ge=1, le=INT32)


class LegacyEmbeddingsRequest(_ModelNamed):
    prompt: str
    options: Options | None = None
    keep_alive: KeepAlive = None


class ShowRequest(_ModelNamed):
    verbose: bool | None = None


class PullRequest(_ModelNamed):
    insecure: bool | None = None
    stream: bool | None = True
    username: str | None = None
    password: str | None = None


class DeleteRequest(_ModelNamed):
    pass
