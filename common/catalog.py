"""The model catalog: every alias the broker serves, its upstream, price and fallbacks.

Each model alias resolves to an `Upstream` (base URL, key, upstream model name, price, the
dialect it speaks) and an optional fallback list. A model without a price is not served:
its cost could not be bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.pricing import Price, PriceTable
from common.settings import Settings


@dataclass(frozen=True)
class Upstream:
    """Where one model alias is served and what it costs."""

    alias: str
    base_url: str
    api_key: str | None
    model: str
    price: Price
    fallbacks: tuple[str, ...] = ()
    key_header: str = "authorization"
    query: tuple[tuple[str, str], ...] = ()
    # the wire protocol the upstream speaks (a key of common.llm.DIALECTS)
    dialect: str = "openai"


class ModelCatalog:
    """Every model alias the broker can serve, with its upstream and fallbacks."""

    def __init__(self, settings: Settings, prices: PriceTable) -> None:
        key_setting = settings.openai_api_key
        default_key = key_setting.get_secret_value() if key_setting else None
        self._upstreams: dict[str, Upstream] = {}
        aliases = set(prices.models) | set(settings.model_routes)
        for alias in aliases:
            route = settings.model_routes.get(alias)
            price = prices.get(alias)
            if price is None:
                continue  # a model without a price cannot be bounded: not served
            key = default_key
            if route is not None and route.api_key is not None:
                key = route.api_key.get_secret_value()
            self._upstreams[alias] = Upstream(
                alias=alias,
                base_url=(
                    route.base_url if route and route.base_url else settings.openai_base_url
                ).rstrip("/"),
                api_key=key,
                model=route.upstream_model if route and route.upstream_model else alias,
                price=price,
                fallbacks=route.fallbacks if route else (),
                key_header=route.key_header if route else "authorization",
                query=tuple(sorted(route.query.items())) if route else (),
            )

    def get(self, alias: str) -> Upstream | None:
        """The upstream serving `alias`, or None."""
        return self._upstreams.get(alias)

    def chain(self, alias: str) -> list[Upstream]:
        """The alias' upstream followed by its fallbacks (unknown fallbacks skipped)."""
        first = self._upstreams[alias]
        chain = [first]
        for name in first.fallbacks:
            extra = self._upstreams.get(name)
            if extra is not None and extra not in chain:
                chain.append(extra)
        return chain

    @property
    def models(self) -> list[str]:
        """Every servable alias, sorted."""
        return sorted(self._upstreams)
