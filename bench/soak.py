"""Soak: minutes of mixed traffic against two broker processes, then a money reconciliation.

    python bench/soak.py [--minutes 3] [--concurrency 32]

Several projects (one with a small budget, one with a low hourly limit, one with PII rules),
streaming and non-streaming calls on both APIs, through two `bradax serve` processes sharing
PostgreSQL and Redis, over the mock upstream. It prints requests, answers by status and code,
p50/p99 latency, each broker's RSS at the start and end (steady growth would be a leak), and
reconciles: per project, the ledger's spend must equal the upstream's own usage priced, and no
project may be over its budget. It prints figures; the last line says RECONCILED or MISMATCH.
PostgreSQL/Redis come from DATABASE_URL / REDIS_URL (defaults: the local services).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections import Counter
from contextlib import AsyncExitStack, ExitStack
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run import ROOT, free_port, rss_mb, wait_http

PRICE = {
    "gpt-4.1-nano": (Decimal("0.10"), Decimal("0.40")),
    "gpt-4.1-mini": (Decimal("0.40"), Decimal("1.60")),
}
PROJECTS = {
    # id: (budget USD, max requests per hour, compliance)
    "proj_soak_big": ("1000", 10_000_000, None),
    "proj_soak_small": ("0.002", 10_000_000, None),
    "proj_soak_limited": ("1000", 300, None),
    "proj_soak_pii": ("1000", 10_000_000, "pii_detection"),
}
PROMPTS = [
    "Explique seguros de vida",
    "Resuma a apólice em três frases",
    "Meu CPF é 529.982.247-25, posso contratar?",  # blocked for proj_soak_pii
    "Quais coberturas existem para viagem internacional com a família?",
]


async def setup(env: dict[str, str]) -> dict[str, str]:
    """Create the soak projects (fresh) and return their API keys."""
    os.environ.update(env)
    from bradax_cli import provision
    from common import migrate
    from common.projects import ProjectFields
    from common.settings import load_settings

    settings = load_settings()
    await migrate.migrate(settings.database_url.get_secret_value())
    keys: dict[str, str] = {}
    async with AsyncExitStack() as stack:
        adm = await provision.open_admin(stack, settings)
        await adm.redis.call("FLUSHDB")
        for project_id, (budget, per_hour, compliance) in PROJECTS.items():
            await adm.db.execute("DELETE FROM usage_ledger WHERE project_id = $1", project_id)
            await adm.db.execute("DELETE FROM projects WHERE id = $1", project_id)
            fields = ProjectFields(
                name=project_id,
                division="soak",
                team="soak",
                budget_monthly_usd=Decimal(budget),
                max_tokens_per_request=256,
                max_requests_per_hour=per_hour,
                max_requests_per_second=1_000_000,
                allowed_models=("gpt-4.1-nano", "gpt-4.1-mini"),
                compliance_rules=tuple(compliance.split(",")) if compliance else None,
            )
            created = await provision.create_project(adm, project_id, fields)
            keys[project_id] = created["api_key"]["key"]
    return keys


async def worker(
    urls: list[str],
    keys: dict[str, str],
    tokens: dict[str, str],
    until: float,
    latencies: list[float],
    outcomes: Counter[str],
    rng: random.Random,
) -> None:
    """Send random calls until `until`."""
    async with httpx2.AsyncClient(timeout=60) as http:
        while time.monotonic() < until:
            project = rng.choice(list(PROJECTS))
            model = rng.choice(list(PRICE))
            messages = [{"role": "user", "content": rng.choice(PROMPTS)}]
            stream = rng.random() < 0.3
            url = rng.choice(urls)
            started = time.monotonic()
            if rng.random() < 0.5:
                request = http.build_request(
                    "POST",
                    url + "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {keys[project]}"},
                    json={"model": model, "messages": messages, "max_tokens": 32, "stream": stream},
                )
            else:
                request = http.build_request(
                    "POST",
                    url + "/api/v1/llm/invoke",
                    headers={"Authorization": f"Bearer {tokens[project]}"},
                    json={
                        "model": model,
                        "messages": messages,
                        "stream": stream,
                        "parameters": {"max_tokens": 32},
                    },
                )
            try:
                reply = await http.send(request, stream=True)
                body = await reply.aread()
                code = ""
                if reply.status_code >= 400:
                    try:
                        code = httpx2.Response(200, content=body).json()["error"]["code"]
                    except Exception:
                        code = "?"
                outcomes[f"{reply.status_code} {code}".strip()] += 1
            except httpx2.HTTPError as exc:
                outcomes[f"transport {type(exc).__name__}"] += 1
            latencies.append(time.monotonic() - started)


async def reconcile(env: dict[str, str], mock_url: str) -> bool:
    """Ledger spend per project == upstream usage priced; nobody over budget."""
    await asyncio.sleep(2.0)  # let the drainers copy the last records
    async with httpx2.AsyncClient() as http:
        stats = (await http.get(mock_url.removesuffix("/v1") + "/_mock/stats")).json()
    conn = await asyncpg.connect(env["DATABASE_URL"])
    try:
        rows = await conn.fetch(
            "SELECT request_id, project_id, model, cost_usd, status FROM usage_ledger "
            "WHERE project_id LIKE 'proj_soak_%'"
        )
        budgets = {
            r["id"]: r["budget_monthly_usd"]
            for r in await conn.fetch(
                "SELECT id, budget_monthly_usd FROM projects WHERE id LIKE 'proj_soak_%'"
            )
        }
    finally:
        await conn.close()
    ledger = {r["request_id"]: r for r in rows}
    upstream: dict[str, Decimal] = Counter()  # type: ignore[assignment]
    missing = 0
    for call in stats["calls"]:
        if call["outcome"] != "ok":
            continue
        row = ledger.get(call["request_id"])
        if row is None:
            missing += 1
            continue
        price_in, price_out = PRICE[call["model"]]
        upstream[row["project_id"]] += (
            call["prompt_tokens"] * price_in + call["completion_tokens"] * price_out
        ) / Decimal(1_000_000)
    spent: dict[str, Decimal] = Counter()  # type: ignore[assignment]
    for row in rows:
        spent[row["project_id"]] += row["cost_usd"]
    ok = missing == 0 and len(rows) == sum(1 for c in stats["calls"] if c["outcome"] == "ok")
    print(
        f"\nupstream calls served: {stats['by_outcome']}; ledger rows: {len(rows)}; "
        f"served calls missing from the ledger: {missing}"
    )
    print(f"{'project':<20} {'ledger spend':>16} {'upstream usage':>16} {'budget':>10}")
    for project in sorted(PROJECTS):
        line_ok = spent.get(project, Decimal(0)) == upstream.get(project, Decimal(0))
        under = spent.get(project, Decimal(0)) <= budgets[project]
        ok = ok and line_ok and under
        print(
            f"{project:<20} {spent.get(project, Decimal(0)):>16.9f} "
            f"{upstream.get(project, Decimal(0)):>16.9f} {budgets[project]:>10} "
            f"{'' if line_ok else 'MISMATCH '}{'' if under else 'OVER BUDGET'}"
        )
    return ok


async def main_async(args: argparse.Namespace) -> int:
    """Run the soak and print the figures."""
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/12")
    with ExitStack() as stack:
        mock_port = free_port()
        mock = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bradax_cli.mock_openai",
            "--port",
            str(mock_port),
            stdout=asyncio.subprocess.DEVNULL,
        )
        stack.callback(mock.terminate)
        mock_url = f"http://127.0.0.1:{mock_port}/v1"
        env.update(
            {
                "OPENAI_API_KEY": "mock-key",
                "OPENAI_BASE_URL": mock_url,
                "JWT_SECRET_KEY": env.get("JWT_SECRET_KEY", "soak-secret-" + "x" * 40),
                "RATE_LIMIT_IP_PER_HOUR": "0",
                "LOG_LEVEL": "WARNING",
            }
        )
        keys = await setup(env)
        import subprocess

        brokers = []
        for _ in range(2):
            port = free_port()
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bradax_cli.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            stack.callback(proc.terminate)
            brokers.append((proc, f"http://127.0.0.1:{port}"))
        for _, url in brokers:
            wait_http(url + "/live")
        wait_http(mock_url + "/models")
        tokens: dict[str, str] = {}
        async with httpx2.AsyncClient() as http:
            for project, key in keys.items():
                reply = await http.post(
                    brokers[0][1] + "/api/v1/auth/token",
                    json={"project_id": project, "api_key": key},
                )
                tokens[project] = reply.json()["access_token"]
        rss_start = [rss_mb(proc.pid) for proc, _ in brokers]
        latencies: list[float] = []
        outcomes: Counter[str] = Counter()
        until = time.monotonic() + args.minutes * 60
        rng = random.Random(args.seed)
        started = time.monotonic()
        await asyncio.gather(
            *(
                worker(
                    [u for _, u in brokers],
                    keys,
                    tokens,
                    until,
                    latencies,
                    outcomes,
                    random.Random(rng.random()),
                )
                for _ in range(args.concurrency)
            )
        )
        elapsed = time.monotonic() - started
        rss_end = [rss_mb(proc.pid) for proc, _ in brokers]
        latencies.sort()
        total = len(latencies)
        print(
            f"{total} requests in {elapsed:.0f} s ({total / elapsed:.0f}/s), "
            f"concurrency {args.concurrency}, 2 broker processes"
        )
        print(
            f"latency p50 {latencies[total // 2] * 1000:.1f} ms, "
            f"p99 {latencies[int(total * 0.99)] * 1000:.1f} ms"
        )
        print("answers:", ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))
        for i, (before, after) in enumerate(zip(rss_start, rss_end, strict=True)):
            print(f"broker {i}: RSS {before:.1f} MiB at start, {after:.1f} MiB at end")
        ok = await reconcile(env, mock_url)
        print("RECONCILED" if ok else "MISMATCH")
        return 0 if ok else 1


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=7)
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
