"""The official OpenAI SDK pointed at the broker's OpenAI-compatible API ({base_url}/v1).

It authenticates with the project API key, which that API accepts as the bearer and which
does not expire, so no token refresh is involved. The broker still governs every call
(allowed models, budget, rate limits, PII rules, ledger). `openai` is imported only here,
only when asked for: install it with `pip install "bradax-sdk[openai]"`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bradax._http import USER_AGENT, Config

if TYPE_CHECKING:
    import openai

__all__ = ["async_openai_client", "openai_client"]

_MISSING = 'the openai package is not installed: pip install "bradax-sdk[openai]"'


def _kwargs(config: Config, kwargs: dict[str, Any]) -> dict[str, Any]:
    headers = {"X-Bradax-Client": USER_AGENT, **(kwargs.pop("default_headers", None) or {})}
    return {
        "base_url": config.openai_base_url,
        "api_key": config.api_key,
        "default_headers": headers,
        **kwargs,
    }


def openai_client(config: Config, **kwargs: Any) -> openai.OpenAI:
    """An `openai.OpenAI` for the broker; kwargs go to its constructor (timeout, max_retries...)."""
    try:
        import openai
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(_MISSING) from exc
    return openai.OpenAI(**_kwargs(config, kwargs))


def async_openai_client(config: Config, **kwargs: Any) -> openai.AsyncOpenAI:
    """An `openai.AsyncOpenAI` for the broker; kwargs go to its constructor."""
    try:
        import openai
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(_MISSING) from exc
    return openai.AsyncOpenAI(**_kwargs(config, kwargs))
