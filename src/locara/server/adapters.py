"""LoRA adapters named per request: Locara's ``adapters`` field on OpenAI and Ollama bodies.

Like llama-server's per-request ``lora`` list, but by adapter id, not by load index:
``"adapters": ["pirate:0.5", {"id": "terse", "scale": 1}]``. Each is bound to the
leased model by digest before generation starts, so a mismatch is a 400 naming both
digests and the model never sees the adapter.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from locara.backends.base import AdapterUse
from locara.engine.pool import Lease
from locara.settings import Settings


class AdapterParam(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(max_length=128)
    scale: float = 1.0


AdapterList = list[str | AdapterParam] | None


def request_adapters(
    settings: Settings, given: AdapterList, lease: Lease
) -> tuple[AdapterUse, ...]:
    """The request's adapters bound to the leased model (refusals raise UsageError: 400)."""
    from locara.ecology.adapters import AdapterSpec, bind_loaded

    if not given:
        return ()
    specs = [
        AdapterSpec.parse(a) if isinstance(a, str) else AdapterSpec(a.id, a.scale) for a in given
    ]
    handle = lease.handle
    return bind_loaded(settings, specs, handle.resolved, handle.model.capabilities.lora)
