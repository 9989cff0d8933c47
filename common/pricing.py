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
    """USD per 1M input and output tokens; prompt tokens read from or written to a
    provider's prompt cache have their own prices (None: the input price)."""

    input_per_1m: Decimal
    output_per_1m: Decimal
    cache_read_per_1m: Decimal | None = None
    cache_write_per_1m: Decimal | None = None

    def cost(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cache_read: int = 0,
        cache_write: int = 0,
    ) -> Decimal:
        """The exact cost of a call, in USD (`cache_read`/`cache_write`: of the prompt tokens)."""
        plain = prompt_tokens - cache_read - cache_write
        return (
            Decimal(plain) * self.input_per_1m
            + Decimal(cache_read) * self.read_per_1m
            + Decimal(cache_write) * self.write_per_1m
            + Decimal(completion_tokens) * self.output_per_1m
        ) / MILLION

    @property
    def read_per_1m(self) -> Decimal:
        """The price of a prompt token read from the cache."""
        return self.input_per_1m if self.cache_read_per_1m is None else self.cache_read_per_1m

    @property
    def write_per_1m(self) -> Decimal:
        """The price of a prompt token written to the cache."""
        return self.input_per_1m if self.cache_write_per_1m is None else self.cache_write_per_1m

    def worst_split(self, prompt_tokens: int) -> tuple[int, int]:
        """The (cache_read, cache_write) split of `prompt_tokens` that costs the most: what a
        call charged at its bound is charged (every token at the dearest prompt price)."""
        read, write = self.read_per_1m, self.write_per_1m
        if write > self.input_per_1m and write >= read:
            return 0, prompt_tokens
        if read > self.input_per_1m:
            return prompt_tokens, 0
        return 0, 0

    def bound(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """The most a call of these token bounds can cost (what admission reserves)."""
        return self.cost(prompt_tokens, completion_tokens, *self.worst_split(prompt_tokens))


class PriceTable:
    """Model -> Price, from the list prices and the configuration."""

    def __init__(self, settings: Settings) -> None:
        prices = {name: Price(*pair) for name, pair in LIST_PRICES.items()}
        prices.update({name: Price(*pair) for name, pair in settings.model_prices.items()})
        for alias, route in settings.model_routes.items():
            base = prices.get(route.upstream_model or alias) or prices.get(alias)
            inputs = route.input_per_1m if route.input_per_1m is not None else None
            outputs = route.output_per_1m if route.output_per_1m is not None else None
            if base is not None:
                inputs = base.input_per_1m if inputs is None else inputs
                outputs = base.output_per_1m if outputs is None else outputs
            if inputs is None or outputs is None:
                continue  # no price: not served
            prices[alias] = Price(
                inputs, outputs, route.cache_read_per_1m, route.cache_write_per_1m
            )
        self._prices = prices

    def get(self, model: str) -> Price | None:
        """The model's price, or None if it has none."""
        return self._prices.get(model)

    @property
    def models(self) -> list[str]:
        """Every priced model, sorted."""
        return sorted(self._prices)
