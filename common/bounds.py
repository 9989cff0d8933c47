"""The worst case of a call, and how an upstream's usage claim is checked against it.

Everything an upstream may bill is bounded before the call, from the body as forwarded:

    prompt_bound(model) = bytes(forwarded body) - bytes(image and file payloads)
                          + sum over image parts of image_tokens(model, detail)
                          + sum over file parts of context_window(model)
    completion_bound    = n * max(every output-token field) + bytes(prediction)

A BPE token covers at least one byte, so the body's size in bytes bounds every text token
it holds (messages, tools, functions, response_format, prediction, any other parameter).
Image parts are billed by OpenAI's image rule, whose largest value per model family is
taken (the image's size is not trusted); a file part (a PDF) can bill at most the model's
context window. Rejected prediction tokens are billed as completion tokens.

An upstream's usage is a claim: `verify` accepts it only if both counts are plain integers
in [0, bound] with at least one prompt token; anything else charges the call at its bound.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from common.errors import BadRequest

INT32 = 2**31 - 1
# Fields that cap how many tokens the upstream may generate (chat and Responses names).
OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
# Billed outside tokens (per search, per second of audio): no token bound covers them;
# neither does a service tier priced above the list prices.
UNBOUNDED_FIELDS = ("web_search_options", "audio")

# Image tokens by model family, the largest each rule can give: (detail low, high/auto).
# Tile rule: base + per_tile * tiles, at most 8 tiles of 512 px (2048 x 768 after scaling).
# Patch rule (gpt-4.1-mini/nano, o4-mini): at most 1536 patches of 32 px, times a multiplier.
_IMAGE_TOKENS: tuple[tuple[str, int, int], ...] = (
    ("gpt-4o-mini", 2833, 2833 + 5667 * 8),
    ("gpt-4.1-mini", 2489, 2489),
    ("gpt-4.1-nano", 3779, 3779),
    ("gpt-5-mini", 2489, 2489),
    ("gpt-5-nano", 3779, 3779),
    ("o4-mini", 2642, 2642),
    ("gpt-4o", 85, 85 + 170 * 8),
    ("gpt-4.1", 85, 85 + 170 * 8),
    ("gpt-4.5", 85, 85 + 170 * 8),
    ("gpt-5", 85, 85 + 170 * 8),
    ("o1", 85, 85 + 170 * 8),
    ("o3", 85, 85 + 170 * 8),
)
# A model the table does not know gets the largest known rule.
_IMAGE_DEFAULT = (2833 + 5667 * 8, 2833 + 5667 * 8)

_CONTEXT_WINDOWS: tuple[tuple[str, int], ...] = (
    ("gpt-4.1", 1_047_576),
    ("gpt-4o", 128_000),
    ("gpt-5", 400_000),
    ("o1", 200_000),
    ("o3", 200_000),
    ("o4", 200_000),
)
_CONTEXT_DEFAULT = 2_000_000


def image_tokens(model: str, detail: object) -> int:
    """The most tokens one image part can bill on `model`."""
    low, high = next(
        ((lo, hi) for prefix, lo, hi in _IMAGE_TOKENS if model.startswith(prefix)),
        _IMAGE_DEFAULT,
    )
    return low if detail == "low" else high


def context_window(model: str) -> int:
    """The most input tokens `model` accepts (an upstream cannot bill more for one call)."""
    return next((n for prefix, n in _CONTEXT_WINDOWS if model.startswith(prefix)), _CONTEXT_DEFAULT)


@dataclass(frozen=True)
class Media:
    """The image and file parts of a body: their payload bytes and what they can bill."""

    payload_bytes: int
    images: tuple[object, ...]  # each image part's detail
    files: int

    def tokens(self, model: str) -> int:
        """The most tokens these parts can bill on `model`."""
        return sum(image_tokens(model, d) for d in self.images) + self.files * context_window(model)


def media(messages: Iterable[dict[str, Any]]) -> Media:
    """Find image and file parts in the messages as forwarded."""
    payload = files = 0
    images: list[object] = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind == "image_url":
                spec = part.get("image_url")
                url = spec.get("url") if isinstance(spec, dict) else spec
                if isinstance(url, str):
                    payload += len(orjson.dumps(url))
                images.append(spec.get("detail") if isinstance(spec, dict) else None)
            elif kind == "file":
                spec = part.get("file")
                data = spec.get("file_data") if isinstance(spec, dict) else None
                if isinstance(data, str):
                    payload += len(orjson.dumps(data))
                files += 1
    return Media(payload, tuple(images), files)


def prompt_bound(body_bytes: int, found: Media, model: str) -> int:
    """The most prompt tokens a body of `body_bytes` bytes can bill on `model`."""
    return body_bytes - found.payload_bytes + found.tokens(model)


def output_cap(params: dict[str, Any]) -> int | None:
    """The largest output-token field the client set (BadRequest if one is not a count)."""
    found: int | None = None
    for name in OUTPUT_FIELDS:
        value = params.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequest(f"{name} must be an integer >= 1", param=name)
        found = value if found is None else max(found, value)
    return found


def completion_bound(body: dict[str, Any]) -> int:
    """The most completion tokens the forwarded body can bill."""
    caps = [int(body[name]) for name in OUTPUT_FIELDS if isinstance(body.get(name), int)]
    n = body.get("n") or 1
    bound = int(n) * max(caps, default=0)
    prediction = body.get("prediction")
    if prediction is not None:
        bound += len(orjson.dumps(prediction))  # rejected prediction tokens bill as output
    return bound


def refuse_unbounded(params: dict[str, Any]) -> None:
    """BadRequest for parameters billed outside tokens (the reservation cannot cover them)."""
    for name in UNBOUNDED_FIELDS:
        if params.get(name) is not None:
            raise BadRequest(
                f"'{name}' is billed outside tokens, so its cost cannot be reserved",
                code="parameter_not_supported",
                param=name,
            )
    tier = params.get("service_tier")
    if tier is not None and tier not in ("auto", "default", "flex"):
        raise BadRequest(
            f"service_tier '{tier}' is billed above list prices, so its cost cannot be reserved",
            code="parameter_not_supported",
            param="service_tier",
        )
    modalities = params.get("modalities")
    if isinstance(modalities, list) and "audio" in modalities:
        raise BadRequest(
            "audio output is billed outside text tokens, so its cost cannot be reserved",
            code="parameter_not_supported",
            param="modalities",
        )


def read_usage(usage: object) -> tuple[int, int] | None:
    """(prompt, completion) from an upstream's usage object, or None if it is not two
    plain non-negative integers."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    for value in (prompt, completion):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return None
    assert isinstance(prompt, int)
    assert isinstance(completion, int)
    return prompt, completion


@dataclass(frozen=True)
class Charge:
    """What a call is charged: the tokens, and why the claim was not taken (if it was not)."""

    prompt: int
    completion: int
    unverified: str | None = None  # missing, invalid, implausible, over_bound
    cache_read: int = 0  # of `prompt`, read from the provider's prompt cache
    cache_write: int = 0  # of `prompt`, written to it


def verify(
    claim: tuple[int, int] | None, prompt_max: int, completion_max: int, *, invalid: bool = False
) -> Charge:
    """The claim if it is plausible and within the bound, else the bound itself."""
    if invalid:
        return Charge(prompt_max, completion_max, "invalid")
    if claim is None:
        return Charge(prompt_max, completion_max, "missing")
    prompt, completion = claim
    if prompt < 1:
        return Charge(prompt_max, completion_max, "implausible")  # every call bills a prompt
    if prompt > prompt_max or completion > completion_max:
        return Charge(prompt_max, completion_max, "over_bound")
    return Charge(prompt, completion)
