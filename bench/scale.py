"""Governed requests per second and Redis CPU per request: one Redis node vs a 3-shard cluster.

Starts its own servers (the embedded Valkey binary): one plain node, then three cluster
primaries with the slots split evenly. Against each, client processes run the governor's two
round trips per call exactly as the broker does (admit: deny-list, hourly and per-second
limits, reservation and intent; settle: release, charge, ledger record), over many projects
so the cluster spreads them. It prints the calls/s reached, the Redis CPU (user + sys, from
INFO) per call summed over the shards, and what that CPU means as a ceiling per shard.

    python bench/scale.py [--seconds 10] [--procs 2] [--concurrency 64] [--projects 300]

The calls/s are bounded by the client processes on a small machine; the CPU per call is the
figure that sizes Redis (capacity per shard = 1 s of CPU / CPU per call).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import secrets
import socket
import subprocess
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import redis as sync_redis

from bradax_cli.embedded import redis_server_binary
from common.db import Database
from common.quota import BudgetClaim, Governor, Limit, deny_keys, intent_record, to_nano
from common.redis import RedisStore
from common.settings import Settings
from common.usage import UsageRecord

SLOTS = 16384
MONTH = "203001"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server(folder: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *(redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "no", "--dir", str(folder), *extra),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait(check: object) -> None:
    for _ in range(400):
        try:
            if check():  # type: ignore[operator]
                return
        except sync_redis.RedisError:
            pass
        time.sleep(0.05)
    raise RuntimeError("redis did not come up")


def start_single(folder: Path) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    """One plain node."""
    port = _port()
    proc = _server(folder, port)
    _wait(lambda: sync_redis.Redis(port=port).ping())
    return [proc], [port]


def start_cluster(folder: Path, shards: int) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    """`shards` cluster primaries, slots split evenly, joined from Python."""
    ports = [_port() for _ in range(shards)]
    buses = [_port() for _ in range(shards)]
    procs = [
        _server(
            folder,
            port,
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            str(bus),
            "--cluster-config-file",
            str(folder / f"nodes-{port}.conf"),
        )
        for port, bus in zip(ports, buses, strict=True)
    ]
    for port in ports:
        _wait(lambda port=port: sync_redis.Redis(port=port).ping())
    share = SLOTS // shards
    for index, port in enumerate(ports):
        last = SLOTS - 1 if index == shards - 1 else (index + 1) * share - 1
        sync_redis.Redis(port=port).execute_command("CLUSTER", "ADDSLOTSRANGE", index * share, last)
    for port, bus in zip(ports[1:], buses[1:], strict=True):
        sync_redis.Redis(port=ports[0]).execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus)

    def ready() -> bool:
        for port in ports:
            info = sync_redis.Redis(port=port).execute_command("CLUSTER", "INFO").decode()
            if "cluster_state:ok" not in info or f"cluster_known_nodes:{shards}" not in info:
                return False
        return True

    _wait(ready)
    return procs, ports


def redis_cpu(ports: list[int]) -> float:
    """Seconds of CPU (user + sys) the servers used so far, summed."""
    total = 0.0
    for port in ports:
        info = sync_redis.Redis(port=port).info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


def _settings(port: int, cluster: bool) -> Settings:
    return Settings(
        database_url="postgresql://unused@127.0.0.1:1/unused",  # never reached: spend is seeded
        redis_url=f"redis://127.0.0.1:{port}",
        redis_cluster=cluster,
        jwt_secret_key=secrets.token_hex(32),
    )


async def _seed(port: int, cluster: bool, projects: int) -> None:
    store = RedisStore(_settings(port, cluster))
    from common.quota import budget_keys

    for n in range(projects):
        await store.call("HSET", budget_keys(f"proj_{n}", MONTH)[0], "spent", 0)
    await store.close()


async def _drive(port: int, cluster: bool, seconds: float, concurrency: int, projects: int) -> int:
    settings = _settings(port, cluster)
    store = RedisStore(settings)
    governor = Governor(store, Database(settings), soft_threshold=Decimal("0.8"))
    deadline = time.monotonic() + seconds
    done = 0
    bound = Decimal("0.00002")

    async def worker(seed: int) -> None:
        nonlocal done
        n = seed
        while time.monotonic() < deadline:
            n += concurrency
            project = f"proj_{n % projects}"
            request_id = f"req_{seed}_{n}"
            now_ms = int(time.time() * 1000)
            intent = intent_record(
                request_id=request_id,
                project_id=project,
                key_id="key_bench",
                model="gpt-4.1-nano",
                prompt_tokens=100,
                completion_tokens=25,
                cost_usd=bound,
                streamed=False,
                budget_month=MONTH,
                created_at_ms=now_ms,
            )
            claim = BudgetClaim(
                project, MONTH, request_id, to_nano(bound), 10**15, now_ms + 60_000, intent
            )
            limits = [
                Limit("hourly", f"p:{{{project}}}", 10**9, 3600),
                Limit("burst", f"ps:{{{project}}}", 10**9, 1),
            ]
            await governor.admit(
                now_ms=now_ms,
                deny=deny_keys(project, "key_bench", "jti_bench", None),
                limits=limits,
                budget=claim,
            )
            record = UsageRecord(
                request_id=request_id,
                project_id=project,
                key_id="key_bench",
                model="gpt-4.1-nano",
                upstream_model="gpt-4.1-nano",
                prompt_tokens=8,
                completion_tokens=12,
                cost_usd=Decimal("0.0000056"),
                latency_ms=3,
                status="success",
                http_status=200,
                error_code=None,
                streamed=False,
                cached=False,
                budget_month=MONTH,
                created_at_ms=now_ms,
            )
            await governor.settle(
                claim,
                request_id=request_id,
                project_id=project,
                month=MONTH,
                actual=record.cost_usd,
                record=record,
            )
            done += 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    await store.close()
    return done


def _client(args: tuple[int, bool, float, int, int]) -> int:
    return asyncio.run(_drive(*args))


def measure(ports: list[int], cluster: bool, options: argparse.Namespace) -> tuple[float, float]:
    """(calls per second, Redis CPU µs per call summed over the shards)."""
    asyncio.run(_seed(ports[0], cluster, options.projects))
    job = (ports[0], cluster, options.seconds, options.concurrency, options.projects)
    before = redis_cpu(ports)
    started = time.monotonic()
    with multiprocessing.Pool(options.procs) as pool:
        calls = sum(pool.map(_client, [job] * options.procs))
    elapsed = time.monotonic() - started
    cpu = redis_cpu(ports) - before
    return calls / elapsed, cpu / calls * 1_000_000


def main() -> None:
    """Run both topologies and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--projects", type=int, default=300)
    parser.add_argument("--shards", type=int, default=3)
    options = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cluster in (False, True):
            folder = Path(tmp) / ("cluster" if cluster else "single")
            folder.mkdir()
            if cluster:
                name = f"{options.shards} shards"
                procs, ports = start_cluster(folder, options.shards)
            else:
                name = "1 node"
                procs, ports = start_single(folder)
            try:
                rate, cpu_us = measure(ports, cluster, options)
            finally:
                for proc in procs:
                    proc.kill()
                    proc.wait(5)
            rows.append((name, rate, cpu_us, len(ports) * 1_000_000 / cpu_us))
    print(f"{'topology':<10} {'calls/s':>9} {'redis CPU µs/call':>18} {'ceiling calls/s':>16}")
    for name, rate, cpu_us, ceiling in rows:
        print(f"{name:<10} {rate:>9.0f} {cpu_us:>18.1f} {ceiling:>16.0f}")
    print(
        "calls/s: reached by the client processes here; ceiling: the shards' CPU divided by "
        "the CPU per call (one core per shard, keys spread evenly)."
    )


if __name__ == "__main__":
    main()
