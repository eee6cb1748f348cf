"""Request bodies of the OpenAI-compatible API.

Where unknown fields are refused, and why:

- **Top-level request fields are strict** (an unknown one is a 400 naming it). A
  misspelt parameter (``max_token``, ``temprature``, ``stop_sequence``,
  ``response_fromat``) would otherwise be dropped and silently change the answer —
  its length, its randomness, its format. Every top-level field OpenAI documents is
  accepted: honoured, ignored when it cannot change the answer here (``store``,
  ``metadata``, ``user``, ``prompt_cache_key``, ``prediction``, ...), or refused with a
  message when Locara cannot do what it asks (``audio``, ``web_search_options``, ...).
  The same holds for ``response_format``, ``tools`` and ``stream_options``: a typo
  inside them changes behaviour too.
- **Messages, content parts and tool calls are lenient**: every documented field is
  accepted (null or empty ones especially: ``name``, ``refusal``, ``audio``,
  ``function_call``, ``tool_calls``, ``tool_call_id``, ``annotations``) and unknown ones
  are ignored. They are data, often a previous response sent back as it came
  (``message.model_dump()``), and they grow with every API revision; a stray field there
  does not change what the model is asked to do.

Locara's extras, beside OpenAI's own fields: ``top_k``, ``min_p``,
``repeat_penalty``, ``num_ctx`` (context size for this request; a loaded larger
context serves it without reload) and ``keep_alive`` (seconds, or a duration such
as "5m"; 0 unloads the model after the request, negative keeps it loaded).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from locara.server.adapters import AdapterList

INT32 = 2**31 - 1


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Data(BaseModel):
    """Part of a conversation: documented fields accepted, unknown ones ignored."""

    model_config = ConfigDict(extra="ignore")


class TextPart(_Data):
    type: Literal["text"]
    text: str


class RefusalPart(_Data):
    type: Literal["refusal"]
    refusal: str


class ImageUrl(_Data):
    url: str  # a data: URI (base64), or an http(s) URL when the operator allows fetching
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Data):
    type: Literal["image_url"]
    image_url: ImageUrl


class AudioPart(_Data):
    type: Literal["input_audio"]
    input_audio: dict[str, Any]


class FilePart(_Data):
    type: Literal["file"]
    file: dict[str, Any]


ContentPart = Annotated[
    TextPart | RefusalPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")
]


class FunctionCall(_Data):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(_Data):
    """A call in an assistant message (a previous response's ``tool_calls``)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Data):
    """A message of any role, with every field OpenAI documents for one.

    ``role``, the text of ``content`` (or of ``refusal``), an assistant's ``tool_calls``
    and a tool result's ``tool_call_id`` reach the model (the calls only for a model
    that takes tools); the others (audio, annotations) do not apply to a local chat
    template and are accepted so that a previous response can be sent back as it came.
    """

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    refusal: str | None = None
    audio: dict[str, Any] | None = None
    function_call: dict[str, Any] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    annotations: list[dict[str, Any]] | None = None


class JSONSchemaFormat(_Body):
    name: str = Field(max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ResponseFormatText(_Body):
    type: Literal["text"]


class ResponseFormatJSONObject(_Body):
    type: Literal["json_object"]


class ResponseFormatJSONSchema(_Body):
    type: Literal["json_schema"]
    json_schema: JSONSchemaFormat


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema,
    Field(discriminator="type"),
]


class StreamOptions(_Body):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class FunctionDef(_Body):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    """``tool_choice`` naming the one function the model must call."""

    type: Literal["function"]
    function: NamedFunction


ToolChoiceParam = Literal["auto", "none", "required"] | NamedToolChoice | None


Stop = str | list[str] | None
KeepAlive = float | str | None


class _Sampling(_Body):
    model: str | None = Field(default=None, max_length=300)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Stop = Field(default=None)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # Locara extras
    top_k: int | None = Field(default=None, ge=0, le=INT32)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repeat_penalty: float | None = Field(default=None, gt=0, le=10)
    num_ctx: int | None = Field(default=None, ge=1, le=INT32)
    keep_alive: KeepAlive = None
    adapters: AdapterList = Field(default=None, max_length=16)  # LoRA stack: "ID[:SCALE]"


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=INT32)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoiceParam = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDef] | None = None  # the deprecated form of tools
    function_call: str | dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # Refused when set to something Locara cannot do (see chat_completions).
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None
    # Accepted and ignored: they cannot change a local model's answer.
    metadata: dict[str, str] | None = None
    store: bool | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    service_tier: str | None = None
    prediction: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    safety_identifier: str | None = None
    # Locara: ground the chat in a collection, {"rag": {"collection": NAME, "k": 5}}.
    locara: dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1, le=INT32)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1, le=20)


class EmbeddingRequest(_Body):
    model: str | None = Field(default=None, max_length=300)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = "float"
    dimensions: int | None = Field(default=None, ge=1, le=INT32)
    user: str | None = None
    num_ctx: int | None = Field(default=None, ge=1, le=INT32)
    keep_alive: KeepAlive = None
