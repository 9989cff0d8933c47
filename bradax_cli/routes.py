"""The broker's path -> function table, read from infra/routes.toml.

One table drives the dev router and is the reference the Knative/Istio/Gateway API/nginx
manifests are tested against. Matching: `exact` matches one path; `prefix` matches the path
and everything below it (path-segment prefix); exact beats prefix, longer prefix beats shorter.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TABLE = REPO_ROOT / "infra" / "routes.toml"


@dataclass(frozen=True)
class PathRule:
    """One rule: an exact path or a path-segment prefix, owned by a function."""

    function: str
    path: str
    kind: str  # "exact" | "prefix"

    def matches(self, path: str) -> bool:
        """True if this rule covers `path`."""
        if self.kind == "exact":
            return path == self.path
        return path == self.path or path.startswith(self.path.rstrip("/") + "/")


@dataclass(frozen=True)
class FunctionSpec:
    """A deployable function: its source file, target name and path rules."""

    name: str
    source: str
    target: str
    rules: tuple[PathRule, ...]


class RouteTable:
    """The parsed table: functions and their rules, with `match(path)`."""

    def __init__(self, functions: dict[str, FunctionSpec]) -> None:
        self.functions = functions
        rules = [rule for spec in functions.values() for rule in spec.rules]
        self._exact = {rule.path: rule.function for rule in rules if rule.kind == "exact"}
        self._prefixes = sorted(
            (rule for rule in rules if rule.kind == "prefix"),
            key=lambda rule: len(rule.path),
            reverse=True,
        )

    @classmethod
    def load(cls, path: Path = DEFAULT_TABLE) -> RouteTable:
        """Read and check a routes.toml file."""
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
        functions: dict[str, FunctionSpec] = {}
        seen: dict[tuple[str, str], str] = {}
        for name, entry in raw.get("functions", {}).items():
            rules = []
            for item in entry["paths"]:
                kinds = [k for k in ("exact", "prefix") if k in item]
                if len(kinds) != 1 or not str(item[kinds[0]]).startswith("/"):
                    raise ValueError(f"{name}: each path needs one of exact/prefix, starting '/'")
                rule = PathRule(name, str(item[kinds[0]]), kinds[0])
                if (rule.kind, rule.path) in seen:
                    raise ValueError(f"{rule.path} is claimed by {seen[(rule.kind, rule.path)]}")
                seen[(rule.kind, rule.path)] = name
                rules.append(rule)
            functions[name] = FunctionSpec(name, entry["source"], entry["target"], tuple(rules))
        return cls(functions)

    @property
    def rules(self) -> list[PathRule]:
        """Every rule, in table order."""
        return [rule for spec in self.functions.values() for rule in spec.rules]

    def match(self, path: str) -> str | None:
        """The function that serves `path`, or None."""
        found = self._exact.get(path)
        if found is not None:
            return found
        for rule in self._prefixes:
            if rule.matches(path):
                return rule.function
        return None
