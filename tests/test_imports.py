"""The shape of the code: what each function loads, no import circles, no oversized module.

Each function is loaded in a fresh interpreter the way its image serves it
(`functions_framework.aio.create_asgi_app(target, source)`, with dummy settings: nothing
connects at import) and held to its diet: the common/ modules it may load, and the packages
and modules it must not. The same load is repeated with those packages made unimportable, as
in an image that does not install them: it must still succeed.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from bradax_cli.routes import RouteTable

REPO = Path(__file__).resolve().parents[1]
TABLE = RouteTable.load()
# The folders whose modules the cycle and size rules cover.
PACKAGES = ("common", "functions", "bradax_cli", "infra")
MAX_LINES = 450
# Modules over MAX_LINES while they are being split. The rule holds both ways: a module
# listed here that has shrunk under the limit fails until it is removed from the list.
KNOWN_LARGE: frozenset[str] = frozenset()
# Packages some library imports only to learn whether they are installed (no use follows):
# such a package counts as loaded only if more of it than these modules is.
AVAILABILITY_PROBES: Mapping[str, frozenset[str]] = {
    # redis.utils: `import cryptography` sets CRYPTOGRAPHY_AVAILABLE (for OCSP, unused here)
    "cryptography": frozenset({"cryptography", "cryptography.__about__"}),
}


@dataclass(frozen=True)
class Diet:
    """What one function may load: `common` lists the common/ modules allowed (None: not
    pinned), `forbidden` the packages and modules it must not load."""

    forbidden: frozenset[str]
    common: frozenset[str] | None


def _common(*names: str) -> frozenset[str]:
    return frozenset({"common", *(f"common.{name}" for name in names)})


SERVING = ("background", "db", "deps", "errors", "http", "keyspace", "logs", "openapi", "redis")
SERVING += ("resp", "resp_cluster")
SERVING += ("runtime", "settings", "telemetry")
CREDENTIALS = ("apikeys", "audit", "auth", "bounds", "cache", "denylist", "limits", "projects")
CREDENTIALS += ("quota",)
CREDENTIALS += ("scopes", "services", "sessions", "tokens", "usage")
# Tracing: the traces SDK and exporter (redis-py loads OpenTelemetry's metrics SDK by itself
# when it is installed; no image but llm_invoke's installs it).
TRACES = (
    "common.tracing",
    "common.tracing_sdk",
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter",
)
DIETS: dict[str, Diet] = {
    # Checks PostgreSQL, Redis and the upstream: no tokens, no HTTP client library, no ledger.
    "health": Diet(
        forbidden=frozenset(
            {"jwt", "cryptography", "aiohttp", "openai", "prometheus_client", *TRACES}
        ),
        common=_common(*SERVING, "health", "migrate", "schemas"),
    ),
    # Issues tokens (jwt): talks to no upstream, renders no metrics, writes no usage.
    "auth_token": Diet(
        forbidden=frozenset(
            {"aiohttp", "openai", "prometheus_client", "common.llm", "common.ledger", *TRACES}
        ),
        common=_common(*SERVING, *CREDENTIALS, "schemas"),
    ),
    # Verifies tokens (jwt) and renders metrics: talks to no upstream.
    "metrics": Diet(
        forbidden=frozenset({"aiohttp", "openai", "common.llm", "common.invoke", *TRACES}),
        common=_common(
            *SERVING,
            *CREDENTIALS,
            "ledger",
            "ledger_rows",
            "ledger_workers",
            "prometheus",
            "reports",
        ),
    ),
    # The call pipeline: only exclusions are pinned (it uses most of common/).
    "llm_invoke": Diet(
        forbidden=frozenset(
            {"openai", "prometheus_client", "common.prometheus", "common.reports", "common.health"}
            # with no OTLP endpoint set, nothing of tracing's SDK is imported
            | {"common.tracing_sdk", "opentelemetry.sdk.trace", "opentelemetry.exporter"}
        ),
        common=None,
    ),
}

# Loads a function as its image does, optionally with some packages made unimportable,
# and prints the modules the process then holds.
LOAD_SCRIPT = """
import importlib.abc, json, sys
source, target, blocked = sys.argv[1], sys.argv[2], set(json.loads(sys.argv[3]))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Block())
from functions_framework.aio import create_asgi_app
app = create_asgi_app(target, source, "http")
assert callable(app)
print(json.dumps(sorted(sys.modules)))
"""


def _env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO),
        "DATABASE_URL": "postgresql://bradax:unused@127.0.0.1:9/bradax",
        "REDIS_URL": "redis://127.0.0.1:9/0",
        "JWT_SECRET_KEY": "x" * 40,
    }


def _third_party(names: Iterable[str]) -> list[str]:
    return sorted(name for name in names if not name.startswith("common"))


@dataclass(frozen=True)
class Load:
    """One load's outcome: the modules the process held (None: the load failed, see `error`)."""

    modules: frozenset[str] | None
    error: str

    def held(self) -> frozenset[str]:
        """The modules held; fails the test, with the traceback, if the load failed."""
        assert self.modules is not None, self.error
        return self.modules


@pytest.fixture(scope="module")
def loaded() -> dict[tuple[str, bool], Load]:
    """The modules each function's process holds, loaded normally (False) and with its
    forbidden packages unimportable (True); all loads run in parallel."""
    jobs = {}
    for name, spec in TABLE.functions.items():
        for blocking in (False, True):
            blocked = _third_party(DIETS[name].forbidden) if blocking else []
            args = [str(REPO / spec.source), spec.target, json.dumps(blocked)]
            jobs[name, blocking] = subprocess.Popen(
                [sys.executable, "-c", LOAD_SCRIPT, *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_env(),
                cwd="/",
            )
    found = {}
    for key, job in jobs.items():
        out, err = job.communicate(timeout=60)
        found[key] = Load(frozenset(json.loads(out)) if job.returncode == 0 else None, err)
    return found


def test_every_function_has_a_diet() -> None:
    """Each function in the route table is held to a diet here, and only those."""
    assert set(DIETS) == set(TABLE.functions)


def _holds(modules: frozenset[str], name: str) -> bool:
    """True if `name` (a package or module) is loaded beyond a mere availability probe."""
    held = {m for m in modules if m == name or m.startswith(f"{name}.")}
    return bool(held - AVAILABILITY_PROBES.get(name, frozenset()))


@pytest.mark.parametrize("function", sorted(DIETS))
def test_function_loads_nothing_it_must_not(
    loaded: dict[tuple[str, bool], Load], function: str
) -> None:
    """A function's process holds none of the packages and modules its diet forbids."""
    modules = loaded[function, False].held()
    assert "common.http" in modules  # the load did import the function's modules
    assert sorted(n for n in DIETS[function].forbidden if _holds(modules, n)) == []


@pytest.mark.parametrize("function", sorted(n for n, diet in DIETS.items() if diet.common))
def test_function_loads_only_its_listed_common_modules(
    loaded: dict[tuple[str, bool], Load], function: str
) -> None:
    """A function loads no common/ module outside its allow-list (a new one is added there
    consciously, and only if the function uses it)."""
    allowed = DIETS[function].common
    assert allowed is not None
    held = {m for m in loaded[function, False].held() if m == "common" or m.startswith("common.")}
    assert sorted(held - allowed) == []


@pytest.mark.parametrize("function", sorted(DIETS))
def test_function_loads_without_its_forbidden_packages_installed(
    loaded: dict[tuple[str, bool], Load], function: str
) -> None:
    """With its forbidden packages unimportable, a function still loads and builds its app
    (the load itself asserts the app; a failed import fails here with its traceback)."""
    modules = loaded[function, True].held()
    assert {"main", "common.runtime"} <= modules


def test_health_diet_names_the_issue_packages() -> None:
    """The health function's diet forbids jwt, cryptography, aiohttp, openai, prometheus_client."""
    required = {"jwt", "cryptography", "aiohttp", "openai", "prometheus_client"}
    assert required <= DIETS["health"].forbidden


# -- import circles ---------------------------------------------------------------------------


def _modules() -> dict[str, Path]:
    """Every module under PACKAGES by dotted name (a package by its __init__.py)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if ".venv" in path.parts:
                continue
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Ids of import nodes under `if TYPE_CHECKING:` (never run, so no circle)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(inner) for stmt in node.body for inner in ast.walk(stmt)}
    return skipped


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module -> the first-party modules it imports, at module level or inside functions."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = _type_checking_only(tree)
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = name.split(".")
                    if path.name != "__init__.py":
                        package.pop()
                    package = package[: len(package) - node.level + 1]
                    base = ".".join([*package, base] if base else package)
                for alias in node.names:  # `from pkg import mod` imports pkg.mod
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (each an import circle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_cycle_finder_finds_circles_direct_and_indirect() -> None:
    """The finder reports a two-module and a three-module circle, and no acyclic module."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c", "a"}, "f": {"a"}}
    assert cycles(graph) == [["a", "b"], ["c", "d", "e"]]


def test_import_graph_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    """An import inside a function body and a relative import both count as edges."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("def f():\n    from pkg import b\n")
    (tmp_path / "pkg" / "b.py").write_text("from . import a\n")
    (tmp_path / "pkg" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
    )
    modules = {
        "pkg": tmp_path / "pkg" / "__init__.py",
        **{f"pkg.{n}": tmp_path / "pkg" / f"{n}.py" for n in "abc"},
    }
    graph = import_graph(modules)
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg.c"] == set()
    assert cycles(graph) == [["pkg.a", "pkg.b"]]


def test_no_import_circles() -> None:
    """No two modules of common/, functions/, bradax_cli/ or infra/ import each other, directly
    or through others, at module level or inside a function."""
    graph = import_graph(_modules())
    assert "common.errors" in graph["common.http"]  # the graph is really read
    assert cycles(graph) == []


# -- module size ------------------------------------------------------------------------------


def _sources() -> list[str]:
    return [str(path.relative_to(REPO)) for path in _modules().values()]


def _lines(relative: str) -> int:
    return len((REPO / relative).read_text(encoding="utf-8").splitlines())


@pytest.mark.parametrize("module", _sources())
def test_module_is_at_most_450_lines(module: str) -> None:
    """A module has at most 450 lines, unless it is listed in KNOWN_LARGE while being split;
    a listed module that is no longer over the limit must leave the list."""
    lines = _lines(module)
    if module in KNOWN_LARGE:
        assert lines > MAX_LINES, f"{module} has {lines} lines: remove it from KNOWN_LARGE"
    else:
        assert lines <= MAX_LINES, f"{module} has {lines} lines (limit {MAX_LINES})"


def test_known_large_modules_exist() -> None:
    """Every KNOWN_LARGE entry names a module that exists (a split one leaves the list)."""
    assert sorted(KNOWN_LARGE - set(_sources())) == []
