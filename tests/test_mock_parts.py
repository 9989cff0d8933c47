"""Tests of the mock upstream's parts (bradax_cli.mock): config checks, one-shot behaviours,
scripted replies, the protocol registry and the package layout."""

from __future__ import annotations

import random
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from bradax_cli import mock_openai
from bradax_cli.mock import server
from bradax_cli.mock.behaviours import ABSENT, HONEST, Behaviour, decide, parse_behaviour
from bradax_cli.mock.config import BadConfig, MockConfig, check_config, config_json
from bradax_cli.mock.script import Script

MOCK_DIR = Path(server.__file__).resolve().parent


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ([], "each behaviour must be a JSON object"),
        ({"statuss": 500}, "unknown behaviour keys: statuss"),
        ({"latency_ms": -1}, "latency_ms must be a number >= 0"),
        ({"latency_ms": True}, "latency_ms must be a number >= 0"),
        ({"status": 302}, "status must be an integer in 400..599"),
        ({"status": 500.0}, "status must be an integer in 400..599"),
        ({"retry_after": "1"}, "retry_after must be a number >= 0 or null"),
        ({"hang": 1}, "hang must be a boolean"),
        ({"cut_after_chunks": -1}, "cut_after_chunks must be an integer >= 0"),
        ({"redirect": ""}, "redirect must be true or a URL"),
        ({"echo_headers": "yes"}, "echo_headers must be a boolean"),
        ({"malformed": 0}, "malformed must be a boolean"),
        ({"oversize_bytes": 1.5}, "oversize_bytes must be an integer >= 0"),
        ({"trailing_zero_usage": None}, "trailing_zero_usage must be a boolean"),
    ],
)
def test_parse_behaviour_rejects_bad_items(item: Any, message: str) -> None:
    """Each malformed one-shot behaviour is refused with a message naming the bad key."""
    with pytest.raises(BadConfig) as caught:
        parse_behaviour(item)
    assert str(caught.value) == message


def test_parse_behaviour_reads_every_key() -> None:
    """A full one-shot item sets every field; usage is kept verbatim."""
    act = parse_behaviour(
        {
            "status": 429,
            "retry_after": 2.5,
            "hang": True,
            "cut_after_chunks": 3,
            "latency_ms": 7,
            "redirect": "http://x.test/",
            "echo_headers": True,
            "oversize_bytes": 10,
            "malformed": True,
            "usage": {"prompt_tokens": -1},
            "trailing_zero_usage": True,
        }
    )
    assert (act.status, act.retry_after, act.hang, act.cut_after, act.latency_ms) == (
        429, 2.5, True, 3, 7.0,
    )  # fmt: skip
    assert (act.redirect, act.echo_headers, act.oversize, act.malformed) == (
        "http://x.test/", True, 10, True,
    )  # fmt: skip
    assert act.usage == {"prompt_tokens": -1}
    assert act.zero_tail is True
    assert parse_behaviour({"usage": "absent"}).usage == ABSENT
    assert parse_behaviour({}).usage is HONEST


def test_decide_takes_the_queue_first_and_fills_defaults_from_the_config() -> None:
    """A queued behaviour runs before the rates, its unset latency and Retry-After from config."""
    cfg = MockConfig(latency_ms=5, retry_after=4, fail_rate_500=1.0)
    queue: deque[Behaviour] = deque([parse_behaviour({"status": 429})])
    first = decide(cfg, random.Random(1), queue)
    assert (first.status, first.latency_ms, first.retry_after) == (429, 5, 4)
    assert not queue
    second = decide(cfg, random.Random(1), queue)
    assert (second.status, second.latency_ms) == (500, 5)


@pytest.mark.parametrize(
    ("rates", "expected"),
    [
        ({"fail_rate_429": 1.0}, (429, False, -1)),
        ({"hang_rate": 1.0}, (0, True, -1)),
        ({"cut_rate": 1.0, "cut_after_chunks": 6}, (0, False, 6)),
        ({}, (0, False, -1)),
    ],
)
def test_decide_draws_from_the_rates(rates: dict[str, Any], expected: tuple[Any, ...]) -> None:
    """With an empty queue the config's rates pick 429, hang, cut or a normal answer."""
    act = decide(MockConfig(**rates), random.Random(3), deque())
    assert (act.status, act.hang, act.cut_after) == expected


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"fail_rate_429": 0.6, "cut_rate": 0.6}, "the four rates must add up to at most 1"),
        ({"hang_rate": -0.1}, "hang_rate must be a number >= 0"),
        ({"reply_words": True}, "reply_words must be an integer >= 0"),
        ({"retry_after": 1.5}, "retry_after must be an integer >= 0 or null"),
        ({"models": ("a", 1)}, "models must be a list of strings"),
        ({"seed": "7"}, "seed must be an integer or null"),
    ],
)
def test_check_config_rejects_bad_fields(changes: dict[str, Any], message: str) -> None:
    """A config with a field of the wrong type or range is refused, naming the field."""
    with pytest.raises(BadConfig) as caught:
        check_config(MockConfig(**changes))
    assert str(caught.value) == message


def test_config_json_lists_models() -> None:
    """The config's JSON form carries every field, models as a list."""
    data = config_json(MockConfig(models=("m1",), seed=3))
    assert data["models"] == ["m1"]
    assert data["seed"] == 3
    assert set(data) == set(MockConfig.__dataclass_fields__)


def test_script_pieces_come_in_order_and_size() -> None:
    """A script streams content, then refusal, then tool arguments, in chunk_chars pieces."""
    script = Script.parse(
        {"text": "abcde", "refusal": "no", "tool_arguments": "{}", "chunk_chars": 2}
    )
    assert script is not None
    assert script.pieces() == [
        ("content", "ab"), ("content", "cd"), ("content", "e"),
        ("refusal", "no"), ("tool_arguments", "{}"),
    ]  # fmt: skip
    assert Script.parse({"text": None}) is None
    with pytest.raises(BadConfig, match="chunk_chars must be an integer >= 1"):
        Script.parse({"text": "x", "chunk_chars": 0})
    with pytest.raises(BadConfig, match="unknown reply keys: txt"):
        Script.parse({"txt": "x"})


def test_build_app_mounts_every_registered_protocol() -> None:
    """Every route of every protocol in server.PROTOCOLS, and the control API, is served."""
    app = server.build_app(MockConfig())
    served = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
    assert ("POST", "/v1/chat/completions") in served
    assert ("GET", "/v1/models") in served
    assert ("GET", "/_mock/stats") in served
    state = app[server.STATE_KEY]
    for routes in server.PROTOCOLS:
        for method, path, _ in routes(state):
            assert (method, path) in served


def test_build_app_refuses_a_bad_config() -> None:
    """Building the app with an impossible config raises BadConfig."""
    with pytest.raises(BadConfig):
        server.build_app(MockConfig(fail_rate_500=2.0))


def test_entry_point_module_is_the_package() -> None:
    """bradax_cli.mock_openai serves the package's app and CLI, not a copy."""
    assert mock_openai.main is server.main
    assert mock_openai.build_app is server.build_app


def test_mock_modules_stay_small() -> None:
    """No module of the mock package is over 400 lines."""
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in MOCK_DIR.glob("*.py")}
    assert "openai_chat.py" in sizes
    assert {name: n for name, n in sizes.items() if n > 400} == {}
