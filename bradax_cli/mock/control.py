"""The control API under `/_mock/` (no auth): `config`, `enqueue`, `reset`, `stats`, `reply`,
`last_request`, and `elsewhere/...`, the other origin `redirect` points to."""

from __future__ import annotations

from dataclasses import fields, replace

import orjson
from aiohttp import web

from bradax_cli.mock.behaviours import Behaviour, parse_behaviour
from bradax_cli.mock.config import BadConfig, MockConfig, check_config, config_json
from bradax_cli.mock.faults import ELSEWHERE
from bradax_cli.mock.http import JSON_CT, Route, dumps, error
from bradax_cli.mock.script import Script
from bradax_cli.mock.state import MockState


class Control:
    """The `/_mock/*` handlers over one mock's state."""

    def __init__(self, state: MockState) -> None:
        self.state = state

    async def config_get(self, request: web.Request) -> web.Response:
        """GET /_mock/config: the current config."""
        return web.json_response(config_json(self.state.config), dumps=dumps)

    async def config_post(self, request: web.Request) -> web.Response:
        """POST /_mock/config: partial update of the config, answers the whole config."""
        try:
            patch = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return error(400, "invalid JSON")
        if not isinstance(patch, dict):
            return error(400, "expected a JSON object of MockConfig fields")
        known = {f.name for f in fields(MockConfig)}
        unknown = sorted(set(patch) - known)
        if unknown:
            return error(400, f"unknown config fields: {', '.join(unknown)}")
        if "models" in patch:
            if not isinstance(patch["models"], list):
                return error(400, "models must be a list of strings")
            patch["models"] = tuple(patch["models"])
        candidate = replace(self.state.config, **patch)
        try:
            check_config(candidate)
        except BadConfig as exc:
            return error(400, str(exc))
        # The random sequence goes on unless a new seed was given.
        self.state.apply(candidate, keep_rng="seed" not in patch)
        return web.json_response(config_json(self.state.config), dumps=dumps)

    async def enqueue(self, request: web.Request) -> web.Response:
        """POST /_mock/enqueue: append one-shot behaviours for the next requests."""
        try:
            items = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return error(400, "invalid JSON")
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list):
            return error(400, "expected a JSON list of behaviours")
        parsed: list[Behaviour] = []
        for item in items:
            try:
                parsed.append(parse_behaviour(item))
            except BadConfig as exc:
                return error(400, str(exc))
        self.state.queue.extend(parsed)
        return web.json_response({"queued": len(self.state.queue)}, dumps=dumps)

    async def reset(self, request: web.Request) -> web.Response:
        """POST /_mock/reset: clear queue, script and stats, restore the start config."""
        self.state.restart()
        return web.json_response(config_json(self.state.config), dumps=dumps)

    async def stats(self, request: web.Request) -> web.Response:
        """GET /_mock/stats: counters and the most recent calls."""
        return web.Response(body=orjson.dumps(self.state.stats()), content_type=JSON_CT)

    async def reply(self, request: web.Request) -> web.Response:
        """POST /_mock/reply: script the text of the next answers (`{"text": null}` stops)."""
        try:
            data = orjson.loads(await request.read())
            self.state.script = Script.parse(data)
        except (orjson.JSONDecodeError, BadConfig) as exc:
            return error(400, str(exc) or "invalid JSON")
        return web.json_response({"scripted": self.state.script is not None}, dumps=dumps)

    async def last_request(self, request: web.Request) -> web.Response:
        """GET /_mock/last_request: the last chat request body, as received."""
        return web.Response(body=orjson.dumps(self.state.last_body), content_type=JSON_CT)

    async def last_headers(self, request: web.Request) -> web.Response:
        """GET /_mock/last_headers: the last chat request's headers (without credentials)."""
        return web.Response(body=orjson.dumps(self.state.last_headers), content_type=JSON_CT)

    async def elsewhere(self, request: web.Request) -> web.Response:
        """Any request to /_mock/elsewhere/...: counted (the origin a redirect points to)."""
        counts = self.state.elsewhere
        counts["hits"] += 1
        if request.headers.get("Authorization") or request.headers.get("api-key"):
            counts["with_authorization"] += 1
        return web.json_response({"elsewhere": True})


def routes(state: MockState) -> list[Route]:
    """The routes of the control API."""
    control = Control(state)
    return [
        ("GET", "/_mock/config", control.config_get),
        ("POST", "/_mock/config", control.config_post),
        ("POST", "/_mock/enqueue", control.enqueue),
        ("POST", "/_mock/reset", control.reset),
        ("GET", "/_mock/stats", control.stats),
        ("*", ELSEWHERE + "/{tail:.*}", control.elsewhere),
        ("POST", "/_mock/reply", control.reply),
        ("GET", "/_mock/last_request", control.last_request),
        ("GET", "/_mock/last_headers", control.last_headers),
    ]
