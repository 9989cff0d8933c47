"""The CLI's console: JSON output, one-line errors, the argument parser class (a leaf module)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, NoReturn

import orjson


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line that points at --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def emit(value: Any) -> None:
    """Print a JSON document (the admin commands' output)."""
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")
    sys.stdout.flush()


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion on a fresh event loop."""
    return asyncio.run(coro)
