"""Where a running `bradax dev` keeps its embedded servers' addresses, for the admin CLI.

`bradax dev` writes `<data dir>/dev.json` (its pid, the DATABASE_URL / REDIS_URL of the
servers it started and the MODEL_ROUTES it set) and removes it when it stops. An admin
command run in the same directory with DATABASE_URL unset reads it, so `bradax project list`
next to `bradax dev` talks to that instance (and knows the models it serves), never to
whatever PostgreSQL listens on the default address.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from bradax_cli.embedded import process_alive

STATE_FILE = "dev.json"
DEFAULT_DATA_DIR = ".bradax"


class DevInstanceGone(Exception):
    """dev.json names a `bradax dev` process that is no longer running."""


def data_dir() -> Path:
    """The dev data folder: BRADAX_DATA_DIR, else .bradax in the current directory."""
    return Path(os.environ.get("BRADAX_DATA_DIR") or DEFAULT_DATA_DIR)


def write(folder: Path, urls: dict[str, str]) -> Path:
    """Record this process and the URLs of the servers it started (readable by the owner)."""
    path = folder / STATE_FILE
    path.write_text(json.dumps({"pid": os.getpid(), **urls}, indent=2))
    path.chmod(0o600)
    return path


def remove(folder: Path) -> None:
    """Forget the instance (at `bradax dev`'s exit)."""
    with contextlib.suppress(FileNotFoundError):
        (folder / STATE_FILE).unlink()


def adopt(folder: Path | None = None) -> list[str]:
    """Put the running dev instance's URLs in force where unset; returns the names set.

    Nothing happens when DATABASE_URL is set or there is no dev.json; DevInstanceGone if
    dev.json names a process that died (its servers died with it).
    """
    folder = folder or data_dir()
    path = folder / STATE_FILE
    if os.environ.get("DATABASE_URL") or not path.is_file():
        return []
    try:
        state = json.loads(path.read_text())
        pid = int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not process_alive(pid):
        raise DevInstanceGone(
            f"{path} names a `bradax dev` (pid {pid}) that is not running: start `bradax dev` "
            "here again, or set DATABASE_URL and REDIS_URL"
        )
    adopted = []
    for name in ("DATABASE_URL", "REDIS_URL", "MODEL_ROUTES"):
        value = state.get(name.lower())
        if isinstance(value, str) and value and not os.environ.get(name):
            os.environ[name] = value
            adopted.append(name)
    return adopted
