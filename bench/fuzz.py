"""Long fuzzing pass: schemathesis cases against a live broker, every failure collected.

    python bench/fuzz.py [--cases-per-operation 2000] [--minutes N] [--seed S] [--only REGEX]

It starts the mock OpenAI upstream and the whole broker (`bradax serve`) over PostgreSQL and
Redis (DATABASE_URL / REDIS_URL, else postgresql://postgres@127.0.0.1:5432/test and
redis://127.0.0.1:6379/12), creates the fuzzed projects, then sends each operation of the
merged OpenAPI document half schema-valid and half schema-invalid cases, with the same
credentials, real-value substitutions and checks as tests/test_fuzz.py (the bounded CI pass),
but it keeps going after a failure. It prints the cases run per operation, the failures
grouped by check with a reproducing request each, and a last line `FUZZ OK` or
`FUZZ FAILURES: n` (exit status 0 or 1). With `--minutes`, each operation gets an even
share of the time and stops early when its share is spent. Do not run two passes against
the same database and Redis at once: each starts by recreating the fuzzed projects.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import hypothesis
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode

from tests import test_fuzz as fz
from tests.conftest import (
    MockUpstream,
    Process,
    Tenant,
    make_settings,
    serve_broker,
)


class TimeUp(Exception):
    """The --minutes budget is spent."""


@dataclass
class Finding:
    """One distinct failure: where, which check, what, how often, and how to reproduce it."""

    operation: str
    check: str
    message: str
    reproduce: str
    credential: str
    bug: str
    count: int = 0


@dataclass
class Results:
    """The distinct failures seen (the target counts the cases sent)."""

    findings: dict[tuple[str, str, str], Finding] = field(default_factory=dict)

    def add(
        self,
        case: schemathesis.Case[Any],
        check: str,
        message: str,
        reproduce: Callable[[], str],
        kind: str,
    ) -> None:
        """Count a failure; the first of each kind keeps its reproducing request."""
        operation = case.operation.label
        bug = fz.known_bug(f"{check}\n{message}", case.body)
        key = (operation, check, bug or _signature(message))
        if key not in self.findings:
            finding = Finding(operation, check, message.strip(), reproduce(), kind, bug.strip())
            self.findings[key] = finding
        self.findings[key].count += 1


def _signature(message: str) -> str:
    """What makes two failure messages the same failure: digits, ids and quotes dropped."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    first = re.sub(r"req_\w+", "req_*", first)
    first = re.sub(r"messages\.\d+", "messages.N", first)
    return re.sub(r"\d+(\.\d+)?", "N", first)[:160]


def _failures(exc: BaseException) -> list[tuple[str, str]]:
    """(check title, message) pairs of a check failure, a failure group or a transport error."""
    if isinstance(exc, FailureGroup):
        return [(f.title, f.message) for f in exc.exceptions]
    if isinstance(exc, Failure):
        return [(exc.title, exc.message)]
    if isinstance(exc, requests.exceptions.RequestException):
        return [("No answer", f"{type(exc).__name__}: {exc}")]
    return [(type(exc).__name__, str(exc))]


def fuzz_operation(
    operation: schemathesis.APIOperation[Any, Any, Any, Any],
    mode: GenerationMode,
    cases: int,
    seed: int,
    target: fz.FuzzTarget,
    results: Results,
    deadline: float,
) -> None:
    """Run up to `cases` cases of one operation in one generation mode, collecting failures."""

    @hypothesis.seed(seed)
    @hypothesis.settings(
        max_examples=cases,
        database=None,
        deadline=None,
        derandomize=False,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
        verbosity=hypothesis.Verbosity.quiet,
    )
    @hypothesis.given(case=operation.as_strategy(mode), data=st.data())
    def run(case: schemathesis.Case[Any], data: st.DataObject) -> None:
        if time.monotonic() > deadline:
            raise TimeUp
        kind, headers = "generated", None
        try:
            # Hypothesis draws the choices' seed: more variety for cases that repeat.
            rng = random.Random(data.draw(st.integers(0, 2**64 - 1), label="choices"))
            kind, headers = fz.prepare(case, rng, target)  # may log in for fresh tokens
            fz.send_and_check(case, headers, target)
        except (AssertionError, FailureGroup, requests.exceptions.RequestException) as exc:
            for check, message in _failures(exc):
                results.add(
                    case,
                    check,
                    message,
                    lambda: case.as_curl_command(headers=headers, base_url=target.url),
                    kind,
                )

    # Unsatisfiable: nothing to negate (no parameters, no body); the positive cases cover it.
    with contextlib.suppress(hypothesis.errors.Unsatisfiable):
        run()


async def _create_projects(settings: Any) -> dict[str, Tenant]:
    """Drop the fuzzed projects left by an earlier pass, then create them afresh."""
    import asyncpg

    from common import migrate

    dsn = settings.database_url.get_secret_value()
    await migrate.migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM projects WHERE id = ANY($1::text[])", list(fz.PROJECTS))
    finally:
        await conn.close()
    return await fz.make_fuzz_tenants(settings)


def _start_mock() -> tuple[subprocess.Popen[bytes], MockUpstream]:
    from bradax_cli.dev import start_mock_upstream

    proc, url = start_mock_upstream()
    return proc, MockUpstream(url)


def report(results: Results, target: fz.FuzzTarget, broker: Process, elapsed: float) -> int:
    """Print cases per operation and failures grouped by check; returns the failure count."""
    print(f"\n{sum(target.counts.values())} cases in {elapsed:.0f}s; {target.summary()}")
    print(f"answer time limit: {fz.OPENAI_TIMEOUT + fz.MARGIN:.1f}s")
    by_check: dict[str, list[Finding]] = defaultdict(list)
    for finding in results.findings.values():
        by_check[finding.check].append(finding)
    for check, findings in sorted(by_check.items()):
        print(f"\n=== {check}: {len(findings)} distinct, {sum(f.count for f in findings)} cases")
        for finding in sorted(findings, key=lambda f: (f.operation, f.message)):
            print(f"\n--- {finding.operation} ({finding.count} cases) {finding.bug}".rstrip())
            print("\n".join("    " + line for line in finding.message.splitlines()[:12]))
            print(f"    credential: {finding.credential} ('[Filtered]' is that Authorization)")
            print(f"    reproduce: {finding.reproduce[:3000]}")
    log = broker.output()
    crashes = log.count("Traceback")
    if crashes:
        print(f"\nthe broker logged {crashes} tracebacks; the last:\n{log[-4000:]}")
    return len(results.findings) + (1 if crashes else 0)


def main(argv: list[str] | None = None) -> int:
    """Start the mock upstream and the broker, fuzz every operation, print the results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases-per-operation", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=None, help="stop after this long")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--only", default=None, help="regex over 'METHOD /path' labels")
    parser.add_argument(
        "--chaos",
        action="store_true",
        help="make the mock upstream fail, hang and cut streams (tests/test_fuzz.py CHAOS)",
    )
    args = parser.parse_args(argv)
    # A plain `kill` stops the pass through the finally clauses: no orphaned servers.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    database_url = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/test"
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/12"
    settings = make_settings(database_url, redis_url)
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    tenants = asyncio.run(_create_projects(settings))
    mock_proc, mock = _start_mock()
    broker: Process | None = None
    try:
        folder = Path(tempfile.mkdtemp(prefix="bradax-fuzz-"))
        broker = serve_broker(
            settings,
            tmp=folder,
            OPENAI_BASE_URL=mock.url,
            JWT_ACCESS_TOKEN_EXPIRE_MINUTES="1440",  # the pass may outlast a default token
            LOG_LEVEL="WARNING",
            **fz.BROKER_ENV,
        )
        target = fz.FuzzTarget(broker.url, tenants, chaos=args.chaos)
        if args.chaos:
            mock.configure(**fz.CHAOS)
        for project_id, tenant in tenants.items():
            tenant.access_token = target.login(project_id)["access_token"]
        # The CI pass's schema: the merged document with the same checks and settings.
        operations = [
            result.ok() for result in fz.schema.get_all_operations() if isinstance(result, Ok)
        ]
        if args.only:
            operations = [op for op in operations if re.search(args.only, op.label)]
        print(
            f"fuzzing {len(operations)} operations of {broker.url}, "
            f"{args.cases_per_operation} cases each, seed {seed}"
            f"{', chaotic upstream' if args.chaos else ''}; broker log {broker.log}"
        )
        started = time.monotonic()
        end = started + args.minutes * 60 if args.minutes else float("inf")
        results = Results()
        half = max(1, args.cases_per_operation // 2)
        for index, operation in enumerate(operations):
            # With --minutes, each operation gets an even share of the time left.
            deadline = time.monotonic() + (end - time.monotonic()) / (len(operations) - index)
            note = ""
            try:
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    fuzz_operation(operation, mode, half, seed, target, results, deadline)
            except TimeUp:
                note = " (its share of --minutes ran out)"
            print(f"  {operation.label}: {target.counts[operation.label]} cases{note}", flush=True)
        failures = report(results, target, broker, time.monotonic() - started)
    finally:
        if broker is not None:
            broker.stop()
        mock_proc.terminate()
        mock_proc.wait(10)
    print(f"\nseed {seed}")
    print("FUZZ OK" if failures == 0 else f"FUZZ FAILURES: {failures}")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
