"""Fuzzing: schemathesis against the running broker over real HTTP (issue 9, part 2).

The whole broker (`bradax serve`) runs as a process over the session's PostgreSQL and Redis
and the mock OpenAI upstream. Every operation of the merged OpenAPI document (whatever paths
it holds when the test runs) gets schema-valid and schema-invalid requests; most carry a
real access token (or API key), some carry none or garbage. Each answer must be a documented
status with a documented content type, headers and body, never a 5xx, and must arrive within
OPENAI_TIMEOUT plus a margin. Streamed answers must be well-formed event streams.

This is the bounded CI pass (BRADAX_FUZZ_CASES fuzzing cases per operation, plus the
examples and coverage phases); `bench/fuzz.py` runs a long one with the same cases and checks.
Replay a pass with BRADAX_FUZZ_SEED=<the seed printed with the results>.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.transport import Response
from schemathesis.generation.meta import CONTENT_TYPE_PROBES, coverage_scenario

from bradax_cli.routes import REPO_ROOT
from common.settings import Settings
from tests.conftest import MockUpstream, Process, Tenant, create_tenant, serve_broker

# The upstream timeout the broker runs with: every answer must come within it plus MARGIN.
OPENAI_TIMEOUT = 5.0
MARGIN = 3.0
CASES_PER_OPERATION = int(os.environ.get("BRADAX_FUZZ_CASES", "100"))
SEED = int(os.environ.get("BRADAX_FUZZ_SEED") or random.randrange(2**32))
MODELS = ("gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o", "gpt-4o-mini")
# One project blocks personal data in prompts, the other redacts it; both may use every model.
PROJECTS = {"proj_fuzz": "block", "proj_fuzz_redact": "redact"}
CHAT_PATHS = ("/api/v1/llm/invoke", "/v1/chat/completions")
# Credentials a case may carry, with their weights: most are real.
CREDENTIALS = (
    *["token"] * 6,
    *["token_redact"] * 2,
    *["api_key"] * 2,
    "generated",  # whatever schemathesis generated for the security scheme (or nothing)
    "garbage",
)
GARBAGE = (
    "Bearer not-a-token",
    "Bearer bx_live_0000000000000000000000000000000000000000",
    "Bearer eyJhbGciOiJIUzI1NiJ9.e30.ZRrHA1JJJW8opsbCGfG_HACGpVUMN_a9IV7pAx_Zmeo",
    "Basic dXNlcjpwYXNz",
    "Bearer",
    "",
)
# Refusals a schema-valid request may get for state no schema can express: credentials,
# budget, policy (model, suspension), personal data, conflicts and limits.
POLICY_REFUSALS = frozenset({401, 402, 403, 404, 409, 422, 429})
# 400s that are policy or relations between fields, not shape: the project's max_tokens
# cap (by code), and /metrics' 'to' after 'from' (by message: its code is the generic one).
POLICY_400_CODES = frozenset({"max_tokens_exceeded"})
RELATION_400_MESSAGES = ("'to' must be after 'from'",)
HUGE_INT_BUG = (
    "FUZZ-BUG-5: a body integer beyond 64 bits (seed, an extra field) crashes orjson.dumps "
    "in common/invoke.py: 500"
)
# Broker bugs this suite found (see the issue 9 fuzzing report), by a pattern of the failure's
# title and message. They are NOT excused: a matching failure still fails, naming its bug.
KNOWN_BUGS = {
    r"give exactly one of refresh_token or token": "FUZZ-BUG-1: RevokeRequest's 'exactly one "
    "of refresh_token or token' rule is missing from the documented schema",
    r"project_id: must be 3-128 characters": "FUZZ-BUG-2: TokenRequest.project_id's pattern "
    "is missing from the documented schema",
    r"message needs content": "FUZZ-BUG-3: ChatMessage's 'content required for system, "
    "developer and user' rule is missing from the documented schema",
    r"at most 4 stop sequences": "FUZZ-BUG-4: ChatParameters.stop's 4-item limit is missing "
    "from the documented schema",
    r"SSE event violates schema": "FUZZ-BUG-6: the text/event-stream schema describes the "
    "stream as one string; OpenAPI tools read it as the schema of each event",
    r"Schema-violating request accepted[\s\S]*(Incorrect type|was \w+, became \w+)": (
        "FUZZ-BUG-7: the request models coerce JSON values of the wrong type (true -> 1, "
        "'16' -> 16, 0 -> false) instead of refusing them (pydantic lax mode)"
    ),
    r"non-JSON Content-Type": "FUZZ-BUG-8: the chat endpoints ignore Content-Type: a body "
    "sent as text/plain is served, not refused with the documented 415",
}


# Prompts that pass the message rules, some holding personal data (blocked or redacted).
PROMPTS = (
    "Explique seguros de vida",
    "Meu CPF é 529.982.247-25, qual o saldo?",
    "Escreva para joao.silva@example.com amanhã",
    "Cartão 4111 1111 1111 1111, CEP 01310-100",
    "",
)
# Characters random prompts are made of: ASCII, accents, CJK, emoji, controls, NUL.
ALPHABET = "abc XYZ 0123456789 .,;:!?-_/@()[]{}\"'\n\t\x00\x7fçãéü€中文字😀🚀"
ROLES = ("system", "developer", "user", "assistant")


def plain_messages(rng: random.Random) -> list[dict[str, str]]:
    """1-3 messages that pass the message rules, with known or random prompts."""
    messages = []
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.5:
            prompt = rng.choice(PROMPTS)
        else:
            prompt = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 200)))
        messages.append({"role": rng.choice(ROLES), "content": prompt})
    return messages


def merged_document() -> dict[str, Any]:
    """The broker's merged OpenAPI document, generated from the code as `bradax openapi` does.

    Built in a child process: generating it imports every function, which sets a placeholder
    JWT secret and caches settings in whatever process does it.
    """
    code = (
        "import sys; from bradax_cli.openapi_doc import render; sys.stdout.buffer.write(render())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=True, cwd=REPO_ROOT
    ).stdout
    document: dict[str, Any] = json.loads(out)
    return document


def fuzz_config(cases: int, seed: int) -> schemathesis.Config:
    """Schemathesis settings: every generation mode and response check, timely answers."""
    return schemathesis.Config.from_dict(
        {
            "seed": seed,
            "suppress-health-check": ["all"],
            "request-timeout": OPENAI_TIMEOUT + MARGIN + 10,
            "max-stream-events": 10_000,  # read streamed answers to their end
            "generation": {
                "mode": "all",
                "max-examples": cases,
                "no-shrink": True,
                "database": "none",
            },
            # Unknown query parameters are ignored, as HTTP APIs do: not a defect. (Unknown
            # body fields must still be refused: the request models forbid them.)
            "operations": [
                {"include-method": "GET", "generation": {"allow-extra-parameters": False}}
            ],
            "checks": {
                "max_response_time": OPENAI_TIMEOUT + MARGIN,
                # Replaced by schema_valid_request_accepted, which knows policy refusals.
                "positive_data_acceptance": {"enabled": False},
                # A schema-violating body may also be refused for its size (413, the body
                # limit every POST documents): a long array is both too long and too large.
                "negative_data_rejection": {
                    "expected-statuses": [
                        *map(str, (400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429)),
                        "5xx",
                    ]
                },
            },
            "phases": {"stateful": {"enabled": False}},
            # Keep request bodies readable in reports ("max_tokens" is no secret).
            "output": {
                "sanitization": {
                    "keys-to-sanitize": ["authorization", "api_key"],
                    "sensitive-markers": ["password", "secret"],
                }
            },
        }
    )


def _error_of(response: Response) -> tuple[str, str]:
    """(code, message) of an error body in either the spec's or OpenAI's shape."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return "", ""
    return str(error.get("code") or ""), str(error.get("message") or "")


def _has_huge_int(value: Any) -> bool:
    """True if a JSON value holds an integer outside 64 bits (orjson cannot encode it)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return not -(2**63) <= value < 2**64
    if isinstance(value, dict):
        return any(_has_huge_int(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_huge_int(item) for item in value)
    return False


def known_bug(message: str, body: Any = None) -> str:
    """The reference of the known bug a failure (title and message) matches, or ''."""
    for pattern, reference in KNOWN_BUGS.items():
        if re.search(pattern, message):
            return f" [{reference}]"
    if message.startswith("Server error") and _has_huge_int(body):
        return f" [{HUGE_INT_BUG}]"
    return ""


def schema_valid_request_accepted(
    ctx: schemathesis.CheckContext, response: Response, case: schemathesis.Case[Any]
) -> bool | None:
    """A schema-valid request is served, or refused only for state the schema cannot express."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    status = response.status_code
    if status < 400 or status >= 500 or status in POLICY_REFUSALS:
        return None
    code, message = _error_of(response)
    if status == 400 and (code in POLICY_400_CODES or message in RELATION_400_MESSAGES):
        return None
    raise AssertionError(f"schema-valid request refused with {status} {code}: {message}")


# What a failing upstream may legitimately turn into: documented 502/503/504 answers.
UPSTREAM_FAILURES = {502: "upstream_error", 503: "upstream_circuit_open", 504: "upstream_timeout"}


def only_upstream_failures(
    ctx: schemathesis.CheckContext, response: Response, case: schemathesis.Case[Any]
) -> bool | None:
    """Over a failing upstream, a 5xx must be the documented answer to that failure (no 500)."""
    if response.status_code < 500:
        return None
    code, message = _error_of(response)
    assert UPSTREAM_FAILURES.get(response.status_code) == code, (
        f"{response.status_code} {code}: {message}"
    )
    return None


def json_body_required(
    ctx: schemathesis.CheckContext, response: Response, case: schemathesis.Case[Any]
) -> bool | None:
    """An operation taking a JSON body does not serve a body sent as another media type."""
    body = case.operation.definition.raw.get("requestBody") or {}
    if "application/json" not in body.get("content", {}):
        return None
    sent = response.request.headers.get("Content-Type")
    if sent is None or "json" in sent.lower() or response.status_code >= 300:
        return None
    raise AssertionError(
        f"a body sent with non-JSON Content-Type {sent!r} was served ({response.status_code}), "
        "not refused with 415"
    )


def well_formed_stream(cut_allowed: bool) -> schemathesis.CheckFunction:
    """A check that a streamed answer is JSON chunk events ending with `data: [DONE]`.

    With `cut_allowed` (the upstream misbehaves on purpose) it may instead end with the
    broker's `upstream_stream_*` error event: the 200 was sent before the upstream failed.
    """

    def event_stream_is_well_formed(
        ctx: schemathesis.CheckContext, response: Response, case: schemathesis.Case[Any]
    ) -> bool | None:
        content_type = (response.headers.get("content-type") or [""])[0]
        if response.status_code != 200 or not content_type.startswith("text/event-stream"):
            return None
        text = response.text.replace("\r\n", "\n")
        events = [block for block in text.split("\n\n") if block.strip()]
        assert events, "empty event stream"
        payloads = [
            "".join(
                line.removeprefix("data:").strip()
                for line in block.split("\n")
                if line.startswith("data:")
            )
            for block in events
        ]
        payloads = [data for data in payloads if data]  # comments and keep-alives
        assert payloads, "the stream carried no data events"
        for index, data in enumerate(payloads):
            if data == "[DONE]":
                assert index == len(payloads) - 1, "events after data: [DONE]"
                continue
            try:
                chunk = json.loads(data)
            except ValueError:
                raise AssertionError(f"an event is not JSON: {data[:200]}") from None
            if "error" in chunk:
                code = str(chunk["error"].get("code", ""))
                assert cut_allowed, f"the stream carried an error event: {data}"
                assert code.startswith("upstream_stream_"), f"unexpected error event: {data}"
                assert index == len(payloads) - 1, "events after the error event"
                continue
            assert chunk.get("object") == "chat.completion.chunk", f"not a chunk: {data}"
        last = payloads[-1]
        if response.stream_cut_short:  # schemathesis stopped reading: no end to check
            return None
        assert last == "[DONE]" or (cut_allowed and "error" in last), (
            f"the stream did not end with data: [DONE]: {last}"
        )
        return None

    return event_stream_is_well_formed


def answered_within(seconds: float) -> schemathesis.CheckFunction:
    """A check that the whole answer (a stream's last byte included) took `seconds` < limit."""

    def answered_in_time(
        ctx: schemathesis.CheckContext, response: Response, case: schemathesis.Case[Any]
    ) -> bool | None:
        limit = OPENAI_TIMEOUT + MARGIN
        assert seconds < limit, f"answered in {seconds:.2f}s, over OPENAI_TIMEOUT + {MARGIN}s"
        return None

    return answered_in_time


@dataclass
class FuzzTarget:
    """The live broker under fuzzing, the credentials cases may carry, and what was seen."""

    url: str
    tenants: dict[str, Tenant]
    chaos: bool = False  # the upstream fails, hangs and cuts streams on purpose
    counts: Counter[str] = field(default_factory=Counter)
    phases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    slowest: float = 0.0

    def login(self, project_id: str) -> dict[str, Any]:
        """A fresh token pair for a project (a session family of its own)."""
        tenant = self.tenants[project_id]
        reply = httpx2.post(
            self.url + "/api/v1/auth/token",
            json={"project_id": project_id, "api_key": tenant.api_key},
            timeout=10,
        )
        assert reply.status_code == 200, reply.text
        pair: dict[str, Any] = reply.json()
        return pair

    def authorization(self, kind: str, garbage: int) -> str | None:
        """The Authorization header for a credential kind (None: keep the generated one)."""
        main, redact = self.tenants["proj_fuzz"], self.tenants["proj_fuzz_redact"]
        values = {
            "token": f"Bearer {main.access_token}",
            "token_redact": f"Bearer {redact.access_token}",
            "api_key": f"Bearer {main.api_key}",
            "garbage": GARBAGE[garbage],
        }
        return values.get(kind)

    def summary(self) -> str:
        """Cases per operation, statuses seen, the slowest answer."""
        phases = ", ".join(f"{name} {n}" for name, n in sorted(self.phases.items()))
        lines = [
            f"slowest answer {self.slowest:.2f}s; cases by phase: {phases}; "
            "cases per operation (by status):"
        ]
        for label, count in sorted(self.counts.items()):
            seen = ", ".join(
                f"{status} x{n}" for (op, status), n in sorted(self.statuses.items()) if op == label
            )
            lines.append(f"  {count:>6}  {label} ({seen})")
        return "\n".join(lines)


def _substitute(case: schemathesis.Case[Any], rng: random.Random, target: FuzzTarget) -> None:
    """Put real values where random ones could never pass (models, credentials, tokens).

    Schemathesis revalidates an edited body, so a case stays labelled positive or negative
    as its final body is.
    """
    body = case.body
    if not isinstance(body, dict) or rng.random() < 0.25:  # a quarter keep what was generated
        return
    path = case.operation.path
    if path in CHAT_PATHS and isinstance(body.get("model"), str):
        changed: dict[str, Any] = {"model": rng.choice(MODELS)}
        if rng.random() < 0.5:
            changed["messages"] = plain_messages(rng)
        case.body = {**body, **changed}
    elif path == "/api/v1/auth/token" and isinstance(body.get("project_id"), str):
        project_id = rng.choice(sorted(PROJECTS))
        changed = {"project_id": project_id}
        if rng.random() < 0.5:
            changed["api_key"] = target.tenants[project_id].api_key
        case.body = {**body, **changed}
    elif path == "/api/v1/auth/refresh" and isinstance(body.get("refresh_token"), str):
        case.body = {**body, "refresh_token": target.login("proj_fuzz")["refresh_token"]}
    elif path == "/api/v1/auth/revoke":
        pair = target.login("proj_fuzz")
        fresh = {
            name: pair["access_token" if name == "token" else name]
            for name in ("token", "refresh_token")
            if isinstance(body.get(name), str)
        }
        case.body = {**body, **fresh}


def prepare(
    case: schemathesis.Case[Any], rng: random.Random, target: FuzzTarget
) -> tuple[str, dict[str, str] | None]:
    """Pick a credential and real values for a case; returns (credential kind, headers)."""
    headers: dict[str, str] | None = None
    kind = rng.choice(CREDENTIALS)
    value = target.authorization(kind, rng.randrange(len(GARBAGE)))
    # A case generated without (or with a broken) Authorization keeps it: that is its point.
    # (Content-type probes are header cases too, but about the body: they get a credential.)
    header_case = bool(case.meta and case.meta.is_negative_at(ParameterLocation.HEADER))
    if value is not None and (not header_case or coverage_scenario(case) in CONTENT_TYPE_PROBES):
        headers = {"Authorization": value}
    else:
        kind = "generated"
    _substitute(case, rng, target)
    return kind, headers


def case_rng(case: schemathesis.Case[Any], target: FuzzTarget) -> random.Random:
    """Choices for a case that a pass with the same seed repeats (hypothesis replays cases)."""
    label = case.operation.label
    return random.Random(f"{SEED}|{label}|{target.counts[label]}|{case!r}")


def send_and_check(
    case: schemathesis.Case[Any], headers: dict[str, str] | None, target: FuzzTarget
) -> Response:
    """Send a case to the broker and validate the answer with every check (raises on failure)."""
    target.counts[case.operation.label] += 1
    target.phases[case.meta.phase.name.value if case.meta else "explicit"] += 1
    started = time.monotonic()
    response = case.call(base_url=target.url, headers=headers)
    elapsed = time.monotonic() - started
    target.statuses[(case.operation.label, response.status_code)] += 1
    target.slowest = max(target.slowest, elapsed)
    checks: list[schemathesis.CheckFunction] = [
        schema_valid_request_accepted,
        json_body_required,
        well_formed_stream(target.chaos),
        answered_within(elapsed),
    ]
    # Over a failing upstream, its documented 502/503/504 are answers, not server errors.
    excluded: list[schemathesis.CheckFunction] = [not_a_server_error] if target.chaos else []
    if target.chaos:
        checks.append(only_upstream_failures)
    try:
        case.validate_response(
            response,
            headers=headers,
            additional_checks=checks,
            excluded_checks=excluded,
            transport_kwargs={"base_url": target.url, "headers": headers},
        )
    except FailureGroup as group:
        # Name the known bugs among the failures (they still fail).
        found = {
            known_bug(f"{failure.title}\n{failure.message}", case.body)
            for failure in group.exceptions
        }
        if found - {""}:
            notes = "".join(f"\n  -{bug.strip(' []')}" for bug in sorted(found - {""}))
            raise FailureGroup(
                list(group.exceptions), f"{group.message}\nKnown bugs:{notes}"
            ) from None
        raise
    return response


async def make_fuzz_tenants(settings: Settings) -> dict[str, Tenant]:
    """Two projects with generous limits and budget, every model, PII rules, cache on."""
    tenants = {}
    for project_id, action in PROJECTS.items():
        tenants[project_id] = await create_tenant(
            settings,
            project_id,
            budget_monthly_usd="1000000",
            max_requests_per_hour=1_000_000_000,
            max_requests_per_second=1_000_000,
            allowed_models=MODELS,
            compliance_rules=("pii_detection",),
            pii_action=action,
            cache_enabled=True,
        )
    return tenants


# How the mock upstream misbehaves in the chaos pass: every answer must still be documented
# and come within OPENAI_TIMEOUT + MARGIN (a hang costs OPENAI_TIMEOUT, then 504).
CHAOS = {
    "latency_ms": 5,
    "fail_rate_429": 0.03,
    "fail_rate_500": 0.03,
    "hang_rate": 0.01,
    "cut_rate": 0.03,
    "retry_after": 1,
}
# The broker's environment on top of the test settings: the mock upstream's URL is added.
BROKER_ENV = {
    "OPENAI_TIMEOUT": str(OPENAI_TIMEOUT),
    "OPENAI_MAX_RETRIES": "1",
    "RATE_LIMIT_IP_PER_HOUR": "0",
    "RATE_LIMIT_AUTH_PER_MINUTE": "0",
    "AUTH_FAILURES_PER_IP": "1000000000",
    "AUTH_FAILURES_PER_PROJECT": "1000000000",
}


@pytest.fixture
async def fuzz_tenants(settings: Settings) -> dict[str, Tenant]:
    """The fuzzed projects, in the freshly emptied database."""
    return await make_fuzz_tenants(settings)


@pytest.fixture
def fuzz_target(
    settings: Settings, fuzz_tenants: dict[str, Tenant], mock: MockUpstream, tmp_path: Path
) -> Iterator[FuzzTarget]:
    """The whole broker as a process over the mock upstream, logged-in credentials ready."""
    proc: Process = serve_broker(settings, tmp=tmp_path, OPENAI_BASE_URL=mock.url, **BROKER_ENV)
    target = FuzzTarget(proc.url, fuzz_tenants)
    try:
        for project_id, tenant in fuzz_tenants.items():
            tenant.access_token = target.login(project_id)["access_token"]
        yield target
    finally:
        proc.stop()
        print(f"\nfuzz seed {SEED}; {target.summary()}")
        if "Traceback" in proc.output():
            print(f"broker log:\n{proc.output()[-5000:]}")


schema = schemathesis.openapi.from_dict(
    merged_document(), config=fuzz_config(CASES_PER_OPERATION, SEED)
)


@schema.parametrize()
def test_every_operation_survives_fuzzing(
    case: schemathesis.Case[Any], fuzz_target: FuzzTarget
) -> None:
    """Valid and invalid requests to every documented operation get documented, timely answers."""
    _, headers = prepare(case, case_rng(case, fuzz_target), fuzz_target)
    send_and_check(case, headers, fuzz_target)


@pytest.fixture
def chaos_target(fuzz_target: FuzzTarget, mock: MockUpstream) -> FuzzTarget:
    """The fuzzed broker over an upstream that fails, hangs and cuts streams on purpose."""
    mock.configure(**CHAOS)
    fuzz_target.chaos = True
    return fuzz_target


# (`exclude`, not `include`: schemathesis ORs includes with the config's per-operation filter.)
@schema.exclude(path_regex=f"^(?!({'|'.join(CHAT_PATHS)})$)").parametrize()
def test_chat_survives_a_failing_upstream(
    case: schemathesis.Case[Any], chaos_target: FuzzTarget
) -> None:
    """Chat calls over a failing upstream still get documented answers within the timeout."""
    _, headers = prepare(case, case_rng(case, chaos_target), chaos_target)
    send_and_check(case, headers, chaos_target)
