"""Prices in USD per 1M input / output tokens, and exact call costs.

Built-in OpenAI list prices can be overridden (MODEL_PRICES) or set per routed model
(MODEL_ROUTES). A model with no price cannot be bounded, so it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from common.settings import Settings

MILLION = Decimal(1_000_000)

# OpenAI list prices, USD per 1M tokens (input, output).
LIST_PRICES: dict[str, tuple[Decimal, Decimal]] = {
    "gpt-4.1": (Decimal("2.00"), Decimal("8.00")),
    "gpt-4.1-mini": (Decimal("0.40"), Decimal("1.60")),
    "gpt-4.1-nano": (Decimal("0.10"), Decimal("0.40")),
    "gpt-4o": (Decimal("2.50"), Decimal("10.00")),
    "gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")),
    "o3": (Decimal("2.00"), Decimal("8.00")),
    "o4-mini": (Decimal("1.10"), Decimal("4.40")),
    "o3-mini": (Decimal("1.10"), Decimal("4.40")),
    # embeddings bill input tokens only
    "text-embedding-3-small": (Decimal("0.02"), Decimal("0")),
    "text-embedding-3-large": (Decimal("0.13"), Decimal("0")),
}


@dataclass(frozen=True)
class Price:
    """USD per 1M input and output tokens."""

    input_per_1m: Decimal
    output_per_1m: Decimal

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """The exact cost of a call, in USD."""
        return (
            Decimal(prompt_tokens) * self.input_per_1m
            + Decimal(completion_tokens) * self.output_per_1m
        ) / MILLION


class PriceTable:
    """Model -> Price, from the list prices and the configuration."""

    def __init__(self, settings: Settings) -> None:
        prices = dict(LIST_PRICES)
        prices.update(settings.model_prices)
        for alias, route in settings.model_routes.items():
            base = prices.get(route.upstream_model or alias) or prices.get(alias)
            if route.input_per_1m is not None and route.output_per_1m is not None:
                prices[alias] = (route.input_per_1m, route.output_per_1m)
            elif base is not None:
                prices[alias] = (
                    route.input_per_1m if route.input_per_1m is not None else base[0],
                    route.output_per_1m if route.output_per_1m is not None else base[1],
                )
        self._prices = {name: Price(*pair) for name, pair in prices.items()}

    def get(self, model: str) -> Price | None:
        """The model's price, or None if it has none."""
        return self._prices.get(model)

    @property
    def models(self) -> list[str]:
        """Every priced model, sorted."""
        return sorted(self._prices)
