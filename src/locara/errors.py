"""Every error Locara raises on purpose.

Each carries a one-line ``message`` and a ``hint``: the next thing to run or set.
Subclasses also inherit the matching builtin so callers that only know Python's
exceptions still catch them sensibly.

    LocaraError(Exception)
    ├── UsageError(ValueError)              bad arguments, bad references, bad sampling values
    │   ├── InvalidReferenceError           a model reference/id/digest/filename that is not allowed
    │   ├── TemplateRefusedError            a chat template refused the messages (role order, …)
    │   ├── AdapterMismatchError            an adapter refused for a base it was not made for
    │   └── UnknownAdapterError(KeyError)   no registered adapter with that id
    ├── UnknownModelError(KeyError)         no manifest with that id (suggests near matches)
    ├── ManifestError(ValueError)           a manifest that does not validate
    ├── StoreError(OSError)                 the store cannot be written/read (permissions, disk full)
    │   └── IntegrityError                  bytes whose size or SHA-256 differ from what was promised
    ├── FetchError(OSError)                 a download failed (url, HTTP status)
    │   └── OfflineError                    a model is needed and the network is off
    ├── ModelFormatError(ValueError)        not a GGUF, truncated, missing metadata
    │   └── ChatTemplateError               the model's chat template is broken (fails to render)
    ├── ContextOverflowError(ValueError)    prompt (+ max_tokens) longer than the context
    ├── NoFitError(MemoryError)             nothing fits this device (carries reasons)
    ├── BackendUnavailableError(RuntimeError) backend not installed or cannot run here
    ├── UnsupportedFeatureError(ValueError) a backend/model cannot do what was asked
    ├── BackendError(RuntimeError)          a backend failed while loading or generating
    ├── DeviceProfileError(ValueError)      a device profile file that is malformed
    ├── ServerBusyError(RuntimeError)       a model's request queue is full (HTTP 503 + Retry-After)
    ├── AuthError(PermissionError)          a missing or wrong API token, a foreign Host header
    ├── LedgerError(RuntimeError)           usage.db cannot be read (corrupted, locked)
    ├── ConfigError(ValueError)             a config file under LOCARA_HOME that is malformed
    ├── PinnedModelError(PermissionError)   removing a model an app pins (names the apps)
    ├── LicenseNotAcceptedError(PermissionError) an app's model license was not accepted
    └── UnknownAppError(KeyError)           no installed app with that id

Foreign exceptions (llama_cpp, mlx, httpx, sqlite) are translated where they enter
Locara, with ``raise ... from exc``, so the cause stays visible under LOCARA_DEBUG=1.
"""

from __future__ import annotations


class LocaraError(Exception):
    """Base of all Locara errors: a message and a hint naming the next action."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(LocaraError, ValueError):
    """Arguments the user can fix by typing something else."""


class InvalidReferenceError(UsageError):
    """A model reference, id, digest or filename that Locara refuses to build a path from."""


class TemplateRefusedError(UsageError):
    """A chat template's own check refused the messages (roles out of order, and the like)."""


class AdapterMismatchError(UsageError):
    """An adapter refused before loading: another base digest, architecture, tensors or shapes."""


class UnknownAdapterError(UsageError, KeyError):
    """No registered adapter with this id."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.message


class UnknownModelError(LocaraError, KeyError):
    """No manifest with this id; ``suggestions`` holds near matches."""

    def __init__(self, model: str, suggestions: list[str] | None = None) -> None:
        self.model = model
        self.suggestions = suggestions or []
        if self.suggestions:
            hint = "did you mean: " + ", ".join(self.suggestions) + "?  (list models: locara ls)"
        else:
            hint = "list known models with: locara ls --all"
        super().__init__(f"unknown model {model!r}", hint)

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.message


class ManifestError(LocaraError, ValueError):
    """A model or app manifest that does not validate."""


class StoreError(LocaraError, OSError):
    """The model store cannot be read or written."""


class IntegrityError(StoreError):
    """Bytes whose size or SHA-256 differ from the promised ones; nothing was kept."""

    def __init__(self, what: str, expected: str, actual: str, hint: str | None = None) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{what}: expected {expected}, got {actual}",
            hint or "the file was deleted; fetch it again with: locara pull MODEL",
        )


class FetchError(LocaraError, OSError):
    """A download failed."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        url: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.url = url
        self.status = status


class OfflineError(FetchError):
    """A model must be fetched but Locara is offline."""


class ModelFormatError(LocaraError, ValueError):
    """A model file that is not what it claims to be (not GGUF, truncated, missing metadata)."""


class ChatTemplateError(ModelFormatError):
    """The model's chat template is broken: it does not compile or fails while rendering."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(
            message,
            hint
            or "the model's template is at fault, not the request: check it with "
            "`locara show MODEL`, or set config.chat_template in its manifest",
        )


class ContextOverflowError(LocaraError, ValueError):
    """A prompt that does not fit the context window; never silently truncated."""

    def __init__(
        self, prompt_tokens: int, max_tokens: int, n_ctx: int, *, input_bytes: int | None = None
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.n_ctx = n_ctx
        if input_bytes is not None:
            # Refused before tokenizing: ``prompt_tokens`` is a lower bound.
            message = (
                f"the input is {input_bytes} bytes, at least {prompt_tokens} tokens, "
                f"but the context holds {n_ctx}"
            )
        elif max_tokens > 0:
            message = (
                f"prompt is {prompt_tokens} tokens; with max_tokens {max_tokens} it needs "
                f"{prompt_tokens + max_tokens} but the context holds {n_ctx}"
            )
        else:
            message = (
                f"prompt is {prompt_tokens} tokens but the context holds {n_ctx}"
                " (and at least one token must be left for the answer)"
            )
        super().__init__(message, "shorten the prompt, lower --max-tokens, or raise --ctx")


class NoFitError(LocaraError, MemoryError):
    """Nothing fits on this device; ``reasons`` says why for each candidate."""

    def __init__(self, message: str, reasons: list[str], hint: str | None = None) -> None:
        self.reasons = reasons
        super().__init__(message, hint or "see the alternatives with: locara plan MODEL")


class BackendUnavailableError(LocaraError, RuntimeError):
    """A backend is not installed or cannot run on this machine."""


class UnsupportedFeatureError(LocaraError, ValueError):
    """The chosen backend or model cannot do what the request asks for."""


class BackendError(LocaraError, RuntimeError):
    """A backend failed while loading a model or generating."""


class DeviceProfileError(LocaraError, ValueError):
    """A device profile (DeviceProfile.json) that cannot be read or is malformed."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(
            message, hint or "write a fresh one with: locara device --json -o DeviceProfile.json"
        )


class ServerBusyError(LocaraError, RuntimeError):
    """A model's request queue is full; the client should retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int, hint: str | None = None) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(
            message, hint or f"retry in {retry_after_s} s, or raise LOCARA_QUEUE_DEPTH"
        )


class AuthError(LocaraError, PermissionError):
    """A request without a valid API token where one is required."""


class LedgerError(LocaraError, RuntimeError):
    """The usage database cannot be read (corrupted, locked); the hint says how to repair."""


class ConfigError(LocaraError, ValueError):
    """A configuration file under LOCARA_HOME (e.g. prices.json) that cannot be used."""


class PinnedModelError(LocaraError, PermissionError):
    """A model that an app pins cannot be removed; ``holders`` names who holds it."""

    def __init__(self, message: str, holders: list[str], hint: str | None = None) -> None:
        self.holders = holders
        super().__init__(message, hint)


class LicenseNotAcceptedError(LocaraError, PermissionError):
    """An app uses a model under a non-permissive license and nobody accepted it."""


class UnknownAppError(LocaraError, KeyError):
    """No installed app with this id."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.message
