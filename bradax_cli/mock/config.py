"""The mock's knobs (`MockConfig`) and their checks; `BadConfig` names what cannot be applied."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Final

DEFAULT_MODELS: Final = ("gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o", "gpt-4o-mini")
RATE_FIELDS: Final = ("fail_rate_429", "fail_rate_500", "hang_rate", "cut_rate")


@dataclass
class MockConfig:
    """Knobs of the mock: latency, random failure rates, reply size, auth and known models."""

    latency_ms: float = 0
    fail_rate_429: float = 0
    fail_rate_500: float = 0
    hang_rate: float = 0
    cut_rate: float = 0
    cut_after_chunks: int = 2
    reply_words: int = 12
    retry_after: int | None = 1
    api_key: str | None = None
    # Bedrock: with both set, SigV4-signed requests are verified against them (else accepted)
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    models: tuple[str, ...] = field(default=DEFAULT_MODELS)
    seed: int | None = None


class BadConfig(ValueError):
    """A config, one-shot behaviour or scripted reply that cannot be applied."""


def is_number(value: object) -> bool:
    """True for an int or float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_int(value: object) -> bool:
    """True for an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_config(cfg: MockConfig) -> None:
    """Raise `BadConfig` when a field has the wrong type or range."""
    for name in ("latency_ms", *RATE_FIELDS):
        value = getattr(cfg, name)
        if not is_number(value) or value < 0:
            raise BadConfig(f"{name} must be a number >= 0")
    if sum(getattr(cfg, name) for name in RATE_FIELDS) > 1:
        raise BadConfig("the four rates must add up to at most 1")
    if not is_int(cfg.cut_after_chunks) or cfg.cut_after_chunks < 0:
        raise BadConfig("cut_after_chunks must be an integer >= 0")
    if not is_int(cfg.reply_words) or cfg.reply_words < 0:
        raise BadConfig("reply_words must be an integer >= 0")
    if cfg.retry_after is not None and (not is_int(cfg.retry_after) or cfg.retry_after < 0):
        raise BadConfig("retry_after must be an integer >= 0 or null")
    if cfg.api_key is not None and not isinstance(cfg.api_key, str):
        raise BadConfig("api_key must be a string or null")
    for name in ("aws_access_key_id", "aws_secret_access_key"):
        if getattr(cfg, name) is not None and not isinstance(getattr(cfg, name), str):
            raise BadConfig(f"{name} must be a string or null")
    if not all(isinstance(m, str) for m in cfg.models):
        raise BadConfig("models must be a list of strings")
    if cfg.seed is not None and not is_int(cfg.seed):
        raise BadConfig("seed must be an integer or null")


def config_json(cfg: MockConfig) -> dict[str, Any]:
    """The config as a JSON-ready dict."""
    data = asdict(cfg)
    data["models"] = list(cfg.models)
    return data
