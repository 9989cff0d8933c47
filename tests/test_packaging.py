"""Tests of how each function is packaged: its import closure, requirements and image.

Each function's main.py is imported in a fresh interpreter, by file path as functions-framework
loads it, with dummy settings (nothing connects at import). What it loads is compared with
functions/<name>/requirements.txt in both directions; infra/docker/Dockerfile and .dockerignore
are parsed and checked for what the images hold and how they run.
"""

from __future__ import annotations

import ast
import functools
import http.server
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bradax_cli.routes import RouteTable

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"
TABLE = RouteTable.load()
FUNCTIONS = sorted(TABLE.functions)
# The server the image runs: required by every function, imported by none of its modules.
SERVER = {"functions-framework", "uvicorn", "uvloop", "httptools"}
# Loaded when installed, but guarded by try/except ImportError where they are imported.
OPTIONAL = {
    "botocore",  # aws_lambda_powertools.shared.user_agent (patches boto's user agent if present)
    "cryptography",  # redis.utils (only notes whether it is installed, for OCSP checks)
    "sniffio",  # anyio._core._eventloop (detects the running async library if present)
    "xxhash",  # redis.cache (a faster key hash when installed; LangChain's tests bring it)
    # redis.observability loads OpenTelemetry's metrics SDK when it is installed (llm_invoke
    # installs it, for its traces; the anthropic SDK of the tests brings the API too)
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-semantic-conventions",
    "opentelemetry-proto",
    "opentelemetry-exporter-otlp-proto-common",
    "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry-exporter-otlp-common",
    "opentelemetry-exporter-http-transport",
    "psutil",  # opentelemetry.sdk.resources (process attributes, when psutil is installed)
}
# A namespace package several distributions share: a direct import of it is owned by the
# distribution of its longest listed prefix.
NAMESPACE_OWNERS = {
    "opentelemetry": "opentelemetry-api",
    "opentelemetry.sdk": "opentelemetry-sdk",
    "opentelemetry.exporter.otlp.proto.http": "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry.proto": "opentelemetry-proto",
}
# Interpreter artefacts of compiled extensions, not importable packages of their own.
NOT_PACKAGES = re.compile(r"^(_.*|cython_runtime)$")

# Loads a file by path the way functions-framework does (its folder appended to sys.path,
# module named after the file), then reports what it imported.
IMPORT_SCRIPT = """
import importlib.util, json, os, sys
baseline = set(sys.modules)
if sys.argv[1] == "cli":
    import bradax_cli.cli, common.migrate
    bradax_cli.cli.build_parser()
    first_party = ["bradax_cli.cli", "bradax_cli.admin", "common.migrate"]
else:
    source = os.path.realpath(sys.argv[1])
    spec = importlib.util.spec_from_file_location("main", source)
    module = importlib.util.module_from_spec(spec)
    sys.path.append(os.path.dirname(source))
    sys.modules["main"] = module
    spec.loader.exec_module(module)
    assert callable(getattr(module, sys.argv[2]))
    first_party = ["main"]
first_party += [n for n in sys.modules if n == "common" or n.startswith(("common.", "bradax_cli."))]
print(json.dumps({
    "new": sorted(set(sys.modules) - baseline),
    "files": sorted({getattr(sys.modules[n], "__file__", None) or "" for n in first_party} - {""}),
}))
"""


@dataclass(frozen=True)
class Closure:
    """What one fresh import loaded: top-level module names and first-party source files."""

    tops: frozenset[str]
    files: tuple[str, ...]


def _env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO),
        "DATABASE_URL": "postgresql://bradax:unused@127.0.0.1:9/bradax",
        "REDIS_URL": "redis://127.0.0.1:9/0",
        "JWT_SECRET_KEY": "x" * 40,
    }


@pytest.fixture(scope="module")
def closures() -> dict[str, Closure]:
    """Each function's (and the migrate CLI's) import closure, imported in parallel."""
    commands = {
        name: [str(REPO / spec.source), spec.target] for name, spec in TABLE.functions.items()
    }
    commands["cli"] = ["cli", ""]
    jobs = {
        name: subprocess.Popen(
            [sys.executable, "-c", IMPORT_SCRIPT, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            cwd="/",
        )
        for name, args in commands.items()
    }
    found: dict[str, Closure] = {}
    for name, job in jobs.items():
        out, err = job.communicate(timeout=60)
        assert job.returncode == 0, f"{name}: {err}"
        report = json.loads(out)
        tops = {module.split(".")[0] for module in report["new"]}
        tops -= set(sys.stdlib_module_names) | {"main", "common", "bradax_cli"}
        found[name] = Closure(frozenset(tops), tuple(report["files"]))
    return found


@functools.cache
def _module_owners() -> dict[str, list[str]]:
    return {k: v for k, v in importlib.metadata.packages_distributions().items()}


def _distributions(tops: Iterable[str]) -> set[str]:
    """Canonical distribution names providing these top-level modules."""
    found: set[str] = set()
    for top in tops:
        owners = _module_owners().get(top)
        if owners is None:
            assert NOT_PACKAGES.match(top), f"no installed distribution provides {top!r}"
            continue
        found |= {canonicalize_name(owner) for owner in owners}
    return found


def _requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def _function_requirements(function: str) -> list[Requirement]:
    return _requirements(REPO / "functions" / function / "requirements.txt")


def _declared(function: str) -> set[str]:
    return {canonicalize_name(req.name) for req in _function_requirements(function)}


def _closure(requirements: Iterable[Requirement]) -> set[str]:
    """Every distribution the requirements install (installed metadata, markers evaluated)."""
    extras_seen: dict[str, set[str]] = {}
    stack = list(requirements)
    while stack:
        req = stack.pop()
        name = canonicalize_name(req.name)
        wanted = set(req.extras) | {""}
        if name in extras_seen and wanted <= extras_seen[name]:
            continue
        extras_seen.setdefault(name, set()).update(wanted)
        for text in importlib.metadata.requires(req.name) or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in wanted):
                stack.append(sub)
    return set(extras_seen)


def _direct_imports(files: Iterable[str]) -> set[str]:
    """Top-level third-party names imported (anywhere, lazily too) by these source files."""
    names: set[str] = set()
    for file in files:
        for node in ast.walk(ast.parse(Path(file).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {_import_name(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(_import_name(node.module))
    return names - set(sys.stdlib_module_names) - {"__future__", "common", "bradax_cli"}


def _with_lazy_common(files: Iterable[str]) -> set[str]:
    """The files, plus the common/ modules they import only when needed (inside a function),
    whose packages the function's requirements install too."""
    seen = set(files)
    stack = list(seen)
    while stack:
        for node in ast.walk(ast.parse(Path(stack.pop()).read_text(encoding="utf-8"))):
            modules: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "common":
                modules = [f"common.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            for module in modules:
                path = REPO / (module.replace(".", "/") + ".py")
                if module.startswith("common.") and path.is_file() and str(path) not in seen:
                    seen.add(str(path))
                    stack.append(str(path))
    return seen


def _import_name(module: str) -> str:
    """The top-level name of an import, or the owning prefix inside a namespace package."""
    top = module.split(".")[0]
    if top not in NAMESPACE_OWNERS:
        return top
    return max((p for p in NAMESPACE_OWNERS if module == p or module.startswith(p + ".")), key=len)


def _direct_distributions(names: Iterable[str]) -> set[str]:
    """The distributions behind direct imports (namespace prefixes by NAMESPACE_OWNERS)."""
    owned = {canonicalize_name(NAMESPACE_OWNERS[n]) for n in names if n in NAMESPACE_OWNERS}
    return owned | _distributions(n for n in names if n not in NAMESPACE_OWNERS)


# -- import closures ---------------------------------------------------------------------------


@pytest.mark.parametrize("function", FUNCTIONS)
def test_function_imports_without_openai(closures: dict[str, Closure], function: str) -> None:
    """No function loads the openai package: nothing uses it at runtime."""
    assert "openai" not in closures[function].tops


def test_prometheus_client_is_loaded_by_metrics_only(closures: dict[str, Closure]) -> None:
    """prometheus_client is in the metrics function's import closure and no other."""
    loaded = {name for name in FUNCTIONS if "prometheus_client" in closures[name].tops}
    assert loaded == {"metrics"}


def test_aiohttp_is_loaded_exactly_where_declared(closures: dict[str, Closure]) -> None:
    """aiohttp is loaded by llm_invoke, the one function that declares it, and no other."""
    loaded = {name for name in FUNCTIONS if "aiohttp" in closures[name].tops}
    declared = {name for name in FUNCTIONS if "aiohttp" in _declared(name)}
    assert loaded == declared == {"llm_invoke"}


@pytest.mark.parametrize("function", FUNCTIONS)
def test_requirements_install_everything_the_function_loads(
    closures: dict[str, Closure], function: str
) -> None:
    """Every distribution behind a loaded module is installed by the function's requirements."""
    loaded = _distributions(closures[function].tops)
    missing = loaded - _closure(_function_requirements(function)) - OPTIONAL
    assert missing == set()
    assert {"starlette", "pydantic", "asyncpg"} <= loaded


@pytest.mark.parametrize("function", FUNCTIONS)
def test_requirements_list_the_direct_imports_and_nothing_else(
    closures: dict[str, Closure], function: str
) -> None:
    """The third-party imports of main.py and its common/ modules are exactly the listed ones."""
    files = closures[function].files
    assert any(file.endswith(f"functions/{function}/main.py") for file in files)
    direct = _direct_distributions(_direct_imports(_with_lazy_common(files)))
    assert direct == _declared(function) - SERVER


def test_requirement_closures_keep_optional_packages_out() -> None:
    """openai is installed by no function; prometheus-client only by metrics; aiohttp only by
    llm_invoke; the health function installs neither pyjwt nor cryptography."""
    installs = {name: _closure(_function_requirements(name)) for name in FUNCTIONS}
    assert {name for name, dists in installs.items() if "openai" in dists} == set()
    assert {name for name, d in installs.items() if "prometheus-client" in d} == {"metrics"}
    assert {name for name, d in installs.items() if "aiohttp" in d} == {"llm_invoke"}
    assert {"pyjwt", "cryptography"} & installs["health"] == set()


def test_requirement_specifiers_match_pyproject() -> None:
    """A requirement also named in pyproject.toml carries the same version specifier there."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    listed = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        listed += extra
    pinned = {canonicalize_name(Requirement(text).name): Requirement(text) for text in listed}
    compared = 0
    for function in FUNCTIONS:
        for req in _function_requirements(function):
            reference = pinned.get(canonicalize_name(req.name))
            if reference is not None:
                assert req.specifier == reference.specifier, (function, str(req))
                compared += 1
    assert compared >= 4 * 10


def test_migrate_image_dependencies_cover_the_cli(closures: dict[str, Closure]) -> None:
    """`bradax migrate` runs on the health function's requirements (the migrate image's)."""
    loaded = _distributions(closures["cli"].tops)
    health = _closure(_function_requirements("health"))
    assert loaded - health - OPTIONAL == set()
    assert "openai" not in closures["cli"].tops


# -- the Dockerfile ----------------------------------------------------------------------------


@dataclass
class Stage:
    """One build stage: its name, base and instructions as (KEYWORD, arguments)."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        """The arguments of every instruction with this keyword, in order."""
        return [args for key, args in self.instructions if key == keyword]


def _logical_lines(text: str) -> Iterator[str]:
    """Dockerfile lines with continuations joined and comments dropped."""
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        yield buffer + line
        buffer = ""
    if buffer:
        yield buffer


def _stages() -> list[Stage]:
    stages: list[Stage] = []
    for line in _logical_lines(DOCKERFILE.read_text(encoding="utf-8")):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, parts[0]))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


def _chain(target: str) -> list[Stage]:
    """The stages `target` is built from (FROM and COPY --from), base first."""
    by_name = {stage.name: stage for stage in _stages()}
    order: list[Stage] = []

    def visit(name: str) -> None:
        stage = by_name[name]
        deps = [stage.base] + [
            args.split()[0].removeprefix("--from=")
            for args in stage.args("COPY")
            if args.startswith("--from=")
        ]
        for dep in deps:
            if dep in by_name and by_name[dep] not in order:
                visit(dep)
        if stage not in order:
            order.append(stage)

    visit(target)
    return order


def _copies(stages: Iterable[Stage]) -> set[str]:
    """Sources of COPY instructions from the build context."""
    sources: set[str] = set()
    for stage in stages:
        for args in stage.args("COPY"):
            words = [w for w in args.split() if not w.startswith("--")]
            if not args.startswith("--from="):
                sources |= set(words[:-1])
    return sources


def test_default_target_is_the_function_image() -> None:
    """Building without --target gives the function image (the last stage)."""
    assert _stages()[-1].name == "function"
    assert "FUNCTION=${FUNCTION}" in " ".join(_chain("function")[-2].args("ENV"))


def test_function_image_copies_only_common_and_its_function() -> None:
    """The function image copies common/, its own folder and the health-check script."""
    assert _copies(_chain("function")) == {
        "functions/${FUNCTION}/requirements.txt",
        "common/",
        "functions/${FUNCTION}/",
        "infra/docker/healthcheck.py",
    }


def test_function_image_runs_as_a_numeric_non_root_user() -> None:
    """The last USER of the function image is a numeric uid other than 0."""
    users = [user for stage in _chain("function") for user in stage.args("USER")]
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0


@pytest.mark.parametrize("function", FUNCTIONS)
def test_function_image_serves_the_function_with_functions_framework_asgi(function: str) -> None:
    """CMD runs the guarded functions-framework ASGI server on $PORT with the function's source
    and target."""
    stage = _stages()[-1]
    (cmd,) = stage.args("CMD")
    argv = json.loads(cmd)
    assert argv[:2] == ["sh", "-c"]
    script = argv[2].replace("${FUNCTION}", function).replace("${PORT}", "8080")
    assert shlex.split(script) == [
        "exec", "python", "-m", "common.function_server",
        "--source", f"/app/{TABLE.functions[function].source}",
        "--target", TABLE.functions[function].target,
        "--port", "8080",
    ]  # fmt: skip
    assert TABLE.functions[function].source == f"functions/{function}/main.py"


def test_function_image_has_a_stdlib_healthcheck() -> None:
    """HEALTHCHECK runs the stdlib probe script with python (slim images have no curl)."""
    (check,) = _stages()[-1].args("HEALTHCHECK")
    assert check.split("CMD", 1)[1].strip() == '["python", "/app/healthcheck.py"]'
    assert "curl" not in DOCKERFILE.read_text()


def test_migrate_target_runs_bradax_migrate() -> None:
    """The migrate target adds bradax_cli and runs `bradax migrate` as a non-root user."""
    stage = {s.name: s for s in _stages()}["migrate"]
    assert "bradax_cli/" in _copies([stage])
    assert [json.loads(stage.args("ENTRYPOINT")[0]), json.loads(stage.args("CMD")[0])] == [
        ["bradax"],
        ["migrate"],
    ]
    assert stage.args("USER") == ["10001:10001"]


# -- .dockerignore -----------------------------------------------------------------------------


def _glob(pattern: str) -> re.Pattern[str]:
    """A Docker (Go filepath.Match + "**") pattern as a regex over slash-separated paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _in_context(path: str) -> bool:
    """True if .dockerignore lets `path` into the build context (the last match decides)."""
    included = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = _glob(line.lstrip("!").strip("/"))
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            included = negate
    return included


def test_dockerignore_keeps_secrets_caches_and_tests_out() -> None:
    """Env files, .git, virtualenvs, caches, tests and the SDK never reach the build context."""
    for path in (
        ".env",
        "infra/compose/.env",
        ".git/HEAD",
        ".venv/bin/python",
        "tests/test_infra.py",
        "sdk/setup.py",
        "bench/run.py",
        "common/__pycache__/http.cpython-311.pyc",
        "infra/routes.toml",
        "README.md",
    ):
        assert not _in_context(path), path


def test_dockerignore_lets_in_everything_the_dockerfile_copies() -> None:
    """Every file the Dockerfile copies, for every function, is in the build context."""
    checked = set()
    for function in FUNCTIONS:
        for source in _copies(_stages()):
            path = REPO / source.replace("${FUNCTION}", function)
            files = [path] if path.is_file() else sorted(path.rglob("*.py"))
            assert files, source
            for file in files:
                checked.add(relative := file.relative_to(REPO).as_posix())
                assert "__pycache__" in relative or _in_context(relative), relative
    assert "bradax_cli/cli.py" in checked
    assert "functions/metrics/main.py" in checked


# -- the health-check script -------------------------------------------------------------------


@functools.cache
def _healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bradax_healthcheck", REPO / "infra" / "docker" / "healthcheck.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_probes_a_path_of_each_function_itself() -> None:
    """Each function's container probe is a path the route table gives to that function."""
    probes: dict[str, tuple[str, int]] = _healthcheck().PROBES
    assert set(probes) == set(FUNCTIONS)
    assert {name: TABLE.match(path) for name, (path, _) in probes.items()} == {
        name: name for name in FUNCTIONS
    }


@pytest.fixture
def fake_function() -> Iterator[int]:
    """A local HTTP server answering /v1/models with 401 and /live with 503; yields its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response({"/v1/models": 401, "/live": 503}.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_wants_the_exact_expected_status(fake_function: int) -> None:
    """The probe passes on the expected status (401 for llm_invoke) and fails on a 503."""
    check = _healthcheck()
    assert check.probe("llm_invoke", fake_function) == (True, "GET /v1/models: 401 (expected 401)")
    assert check.probe("health", fake_function) == (False, "GET /live: 503 (expected 200)")


def test_healthcheck_fails_when_nothing_listens() -> None:
    """The probe reports unhealthy, naming the path, when the port is closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    healthy, reason = _healthcheck().probe("health", port)
    assert not healthy
    assert reason.startswith("GET /live: ")
