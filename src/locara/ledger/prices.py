"""Cloud price table: what the tokens run locally would have cost on hosted APIs.

The table ships with Locara (``prices.json`` beside this file, list prices per million
tokens with their source). A ``prices.json`` in LOCARA_HOME overrides it: entries with
the same name replace the shipped ones, new names are added, ``null`` removes one,
and ``"replace": true`` drops the shipped table altogether.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locara.errors import ConfigError
from locara.settings import Settings


@dataclass(frozen=True)
class Price:
    name: str
    input_per_mtok: float
    output_per_mtok: float
    source: str | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok
        ) / 1e6


@dataclass(frozen=True)
class PriceTable:
    currency: str
    as_of: str | None
    prices: tuple[Price, ...]
    overridden_by: str | None = None


def shipped_prices_path() -> Path:
    return Path(__file__).resolve().parent / "prices.json"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"cannot read the price table {path}: {exc}",
            f"fix the JSON in {path} or delete it to use the shipped prices",
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
        raise ConfigError(
            f'price table {path} must be an object with a "models" object',
            'write e.g. {"models": {"my-api": {"input": 1.0, "output": 2.0}}} (USD per 1M tokens)',
        )
    return data


def _price(name: str, entry: Any, path: Path) -> Price:
    def rate(key: str) -> float:
        value = entry.get(key) if isinstance(entry, dict) else None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ConfigError(
                f"price table {path}: {name}.{key} must be a number >= 0, got {value!r}",
                f'give {name} both "input" and "output" prices per 1M tokens, e.g. '
                '{"input": 0.15, "output": 0.6}',
            )
        return float(value)

    source = entry.get("source") if isinstance(entry, dict) else None
    return Price(name, rate("input"), rate("output"), source if isinstance(source, str) else None)


def load_prices(settings: Settings) -> PriceTable:
    """The shipped table merged with the user's override file, if there is one."""
    shipped_path = shipped_prices_path()
    shipped = _read(shipped_path)
    entries: dict[str, Any] = dict(shipped.get("models", {}))
    currency = str(shipped.get("currency", "USD"))
    as_of = shipped.get("as_of")
    overridden: str | None = None
    user_path = settings.prices_path
    if user_path.exists():
        user = _read(user_path)
        overridden = str(user_path)
        if user.get("replace") is True:
            entries = {}
        for name, entry in user.get("models", {}).items():
            if entry is None:
                entries.pop(name, None)
            else:
                entries[name] = entry
        currency = str(user.get("currency", currency))
        as_of = user.get("as_of", as_of)
    prices = tuple(
        _price(name, e, user_path if overridden and name in _names(user_path) else shipped_path)
        for name, e in entries.items()
    )
    return PriceTable(currency, str(as_of) if as_of else None, prices, overridden)


def _names(path: Path) -> set[str]:
    return set(_read(path).get("models", {}))
