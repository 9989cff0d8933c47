"""The model catalog: every alias the broker serves, its upstream, price and fallbacks.

Each model alias resolves to an `Upstream` (base URL, key, upstream model name, price, the
dialect it speaks) and an optional fallback list. A model without a price is not served:
its cost could not be bounded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from common.pricing import Price, PriceTable
from common.settings import ModelRoute, Settings


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
    region: str | None = None  # bedrock: the AWS region signed for


# Where each native provider is reached when a route names no base URL.
DEFAULT_BASE_URLS = {
    "anthropic": "https://api.anthropic.com/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta",
    "bedrock": "https://bedrock-runtime.{region}.amazonaws.com",
}


def _region(route: ModelRoute | None) -> str:
    if route is not None and route.region:
        return route.region
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


class ModelCatalog:
    """Every model alias the broker can serve, with its upstream and fallbacks."""

    def __init__(self, settings: Settings, prices: PriceTable) -> None:
        default_keys = {
            "openai": settings.openai_api_key,
            "anthropic": settings.anthropic_api_key,
            "gemini": settings.gemini_api_key,
        }
        self._upstreams: dict[str, Upstream] = {}
        aliases = set(prices.models) | set(settings.model_routes)
        for alias in aliases:
            route = settings.model_routes.get(alias)
            price = prices.get(alias)
            if price is None:
                continue  # a model without a price cannot be bounded: not served
            provider = route.provider if route else "openai"
            secret = route.api_key if route and route.api_key else default_keys.get(provider)
            region = _region(route) if provider == "bedrock" else None
            base_url = route.base_url if route and route.base_url else None
            if base_url is None:
                found = DEFAULT_BASE_URLS.get(provider)
                base_url = found.format(region=region) if found else settings.openai_base_url
            self._upstreams[alias] = Upstream(
                alias=alias,
                base_url=base_url.rstrip("/"),
                api_key=(secret.get_secret_value() if secret else None) or None,
                model=route.upstream_model if route and route.upstream_model else alias,
                price=price,
                fallbacks=route.fallbacks if route else (),
                key_header=route.key_header if route else "authorization",
                query=tuple(sorted(route.query.items())) if route else (),
                dialect=provider,
                region=region,
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
