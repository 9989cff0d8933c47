"""Benchmark: the broker's added latency, throughput and CPU per request over the mock upstream.

    python bench/run.py [--duration 10] [--concurrency 1,16,64] [--server serve|image] [--trace]

It starts the mock upstream and the broker, one process pinned to one core, authentication +
governance + ledger on: `--server serve` (default) is `bradax serve`, every function's
functions-framework app behind the path router, driven on the spec's invoke API with an
access token; `--server image` is the llm_invoke image's own server (gunicorn + uvicorn
worker over functions-framework, common.function_server), driven on /v1/chat/completions
with the project's API key. It creates a project, then for each concurrency
drives wrk first straight at the mock and then through the broker, and prints requests/s,
p50/p99 latency, errors, the broker's added latency and its CPU time per request (from the
process' own accounting, steadier than wall time on a shared machine). It prints figures;
it asserts nothing. PostgreSQL and Redis come from DATABASE_URL / REDIS_URL, else the local
defaults, else embedded servers. Needs `wrk` on PATH. `--trace` turns tracing on (sampling
1.0), exporting by OTLP/HTTP to a sink in this process that accepts and discards the spans
(their count is printed), so the CPU figure includes building and exporting every span.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parents[1]
BODY_SPEC = {
    "model": "gpt-4.1-nano",
    "messages": [{"role": "user", "content": "Explique seguros de vida"}],
    "parameters": {"max_tokens": 16},
}
BODY_OPENAI = {
    "model": "gpt-4.1-nano",
    "messages": [{"role": "user", "content": "Explique seguros de vida"}],
    "max_tokens": 16,
}


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (a gunicorn master and its workers)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found.extend(process_tree(int(child)))
    return found


def tree_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process tree."""
    user = system = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            u, s = cpu_times(member)
            user, system = user + u, system + s
    return user, system


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children."""
    return sum(tree_times(pid))


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children in MiB."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    return total


@dataclass
class Run:
    """One wrk run's figures."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms_per_request: float | None = None

    @property
    def rps(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(
    url: str,
    body: dict[str, object],
    headers: dict[str, str],
    concurrency: int,
    duration: int,
    pin: str,
) -> Run:
    """Drive `url` with wrk (POST JSON) and parse its figures."""
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)  # noqa: SIM115
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {json.dumps(json.dumps(body))}",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    lines.append(
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("BENCH %d %d %d %d %d %d\\n", summary.requests, '
        "summary.duration, latency:percentile(50), latency:percentile(99), "
        "summary.errors.status + summary.errors.connect + summary.errors.read + "
        "summary.errors.write + summary.errors.timeout, 0))\nend"
    )
    script.write("\n".join(lines))
    script.close()
    threads = 1 if concurrency < 4 else 2
    cmd = [
        "taskset",
        "-c",
        pin,
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(concurrency),
        "-d",
        f"{duration}s",
        "--timeout",
        "10s",
        "-s",
        script.name,
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    found = re.search(r"BENCH (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    if not found:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    requests, micros, p50, p99, errors = (int(x) for x in found.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    return Run(requests, micros / 1e6, p50 / 1000, p99 / 1000, errors)


class TraceSink(BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP exports and discards them (counting the bytes received)."""

    received = 0

    def do_POST(self) -> None:
        size = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(size)
        TraceSink.received += size
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


def wait_http(url: str, timeout: float = 30) -> None:
    """Wait until GET url answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx2.get(url, timeout=1)
            return
        except httpx2.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(url)


async def _setup_project(env: dict[str, str]) -> str:
    os.environ.update(env)
    from decimal import Decimal

    from bradax_cli import provision
    from common import migrate
    from common.projects import ProjectFields
    from common.settings import load_settings

    settings = load_settings()
    await migrate.migrate(settings.database_url.get_secret_value())
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        adm = await provision.open_admin(stack, settings)
        await adm.db.execute("DELETE FROM projects WHERE id = 'proj_bench'")
        await adm.redis.call("FLUSHDB")
        fields = ProjectFields(
            name="Benchmark",
            division="bench",
            team="bench",
            budget_monthly_usd=Decimal("1000000"),
            max_tokens_per_request=4096,
            max_requests_per_hour=1_000_000_000,
            max_requests_per_second=1_000_000,
            allowed_models=("gpt-4.1-nano",),
        )
        created = await provision.create_project(adm, "proj_bench", fields)
    key: str = created["api_key"]["key"]
    return key


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--broker-core", default="0")
    parser.add_argument(
        "--server",
        choices=("serve", "image"),
        default="serve",
        help="bradax serve (every function) or the llm_invoke image's server",
    )
    parser.add_argument("--load-core", default="1")
    parser.add_argument(
        "--trace", action="store_true", help="traces on, exported to a sink in this process"
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="record a py-spy profile of the broker at the highest concurrency",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    levels = [int(x) for x in args.concurrency.split(",")]
    with ExitStack() as stack:
        env = dict(os.environ)
        if not env.get("DATABASE_URL"):
            env["DATABASE_URL"] = "postgresql://postgres@127.0.0.1:5432/test"
        if not env.get("REDIS_URL"):
            env["REDIS_URL"] = "redis://127.0.0.1:6379/12"
        mock_port, broker_port = free_port(), free_port()
        mock = subprocess.Popen(
            [
                "taskset",
                "-c",
                args.load_core,
                sys.executable,
                "-m",
                "bradax_cli.mock_openai",
                "--port",
                str(mock_port),
            ],
            stdout=subprocess.DEVNULL,
        )
        stack.callback(mock.terminate)
        env.update(
            {
                "OPENAI_API_KEY": "mock-key",
                "OPENAI_BASE_URL": f"http://127.0.0.1:{mock_port}/v1",
                "JWT_SECRET_KEY": env.get("JWT_SECRET_KEY", "bench-secret-" + "x" * 40),
                "RATE_LIMIT_IP_PER_HOUR": "0",
                "RATE_LIMIT_AUTH_PER_MINUTE": "0",
                "LOG_LEVEL": env.get("LOG_LEVEL", "INFO"),
                "WORKERS": "1",
            }
        )
        if args.trace:
            sink = ThreadingHTTPServer(("127.0.0.1", 0), TraceSink)
            threading.Thread(target=sink.serve_forever, daemon=True).start()
            stack.callback(sink.shutdown)
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink.server_port}"
            env["OTEL_TRACES_SAMPLER"] = "always_on"
        else:
            env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
            env.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)
        key = asyncio.run(_setup_project(env))
        log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="bradax-bench-", suffix=".log", delete=False
        )
        if args.server == "serve":
            command = ["-m", "bradax_cli.cli", "serve"]
        else:
            command = ["-m", "common.function_server", "--source"]
            command += ["functions/llm_invoke/main.py", "--target", "llm_invoke"]
        broker = subprocess.Popen(
            [
                "taskset",
                "-c",
                args.broker_core,
                sys.executable,
                *command,
                "--host",
                "127.0.0.1",
                "--port",
                str(broker_port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        stack.callback(broker.terminate)
        base = f"http://127.0.0.1:{broker_port}"
        wait_http(f"http://127.0.0.1:{mock_port}/v1/models")
        if args.server == "serve":
            wait_http(base + "/live")
            token = httpx2.post(
                base + "/api/v1/auth/token", json={"project_id": "proj_bench", "api_key": key}
            ).json()
            auth = {"Authorization": f"Bearer {token['access_token']}"}
            path, body = "/api/v1/llm/invoke", BODY_SPEC
        else:
            wait_http(base + "/v1/models")
            auth = {"Authorization": f"Bearer {key}"}
            path, body = "/v1/chat/completions", BODY_OPENAI
        # Warm up both paths (pools, caches, JIT-less but import-heavy first calls).
        wrk(base + path, body, auth, 8, 3, args.load_core)
        rss_start = rss_mb(broker.pid)
        print(
            f"{args.server}: {path}; broker pid {broker.pid} pinned to core {args.broker_core}; "
            "mock and wrk on core "
            f"{args.load_core}; {args.duration}s per run; log lines go to {log.name}; "
            f"traces {'on (sampled 1.0)' if args.trace else 'off'}"
        )
        print()
        header = (
            f"{'conc':>4} | {'direct rps':>10} {'p50':>7} {'p99':>7} | {'broker rps':>10} "
            f"{'p50':>7} {'p99':>7} {'errors':>6} | {'added p50':>9} {'added p99':>9} | "
            f"{'CPU ms/req':>10}"
        )
        print(header)
        print("-" * len(header))
        for level in levels:
            direct = wrk(
                f"http://127.0.0.1:{mock_port}/v1/chat/completions",
                BODY_OPENAI,
                {"Authorization": "Bearer mock-key"},
                level,
                args.duration,
                args.load_core,
            )
            spy = None
            if args.profile and level == levels[-1]:
                spy = subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "-o",
                        args.profile,
                        "--format",
                        "raw",
                        "-p",
                        str(broker.pid),
                        "-d",
                        str(args.duration),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            before = cpu_seconds(broker.pid)
            sys_before = tree_times(broker.pid)[1]
            through = wrk(base + path, body, auth, level, args.duration, args.load_core)
            used = cpu_seconds(broker.pid) - before
            system_share = (tree_times(broker.pid)[1] - sys_before) / used if used else 0.0
            if spy is not None:
                spy.wait()
            through.cpu_ms_per_request = used * 1000 / max(1, through.requests)
            print(
                f"{level:>4} | {direct.rps:>10.0f} {direct.p50_ms:>6.2f}m {direct.p99_ms:>6.2f}m"
                f" | {through.rps:>10.0f} {through.p50_ms:>6.2f}m {through.p99_ms:>6.2f}m "
                f"{through.errors:>6} | {through.p50_ms - direct.p50_ms:>8.2f}m "
                f"{through.p99_ms - direct.p99_ms:>8.2f}m | {through.cpu_ms_per_request:>10.3f}"
                f"  ({system_share:.0%} in the kernel)"
            )
        print()
        print(f"broker RSS: {rss_start:.1f} MiB after warm-up, {rss_mb(broker.pid):.1f} MiB at end")
        ledger = asyncio.run(_ledger_count(env))
        print(f"ledger rows for proj_bench: {ledger}")
        if args.trace:
            print(f"OTLP bytes received by the sink: {TraceSink.received}")
    return 0


async def _ledger_count(env: dict[str, str]) -> int:
    import asyncpg

    await asyncio.sleep(1.0)  # let the drainer copy the last records
    conn = await asyncpg.connect(env["DATABASE_URL"])
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM usage_ledger WHERE project_id = 'proj_bench'"
        )
        return count
    finally:
        await conn.close()


if __name__ == "__main__":
    raise SystemExit(main())
