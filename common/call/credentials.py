"""The credentials step: who is calling, with which scope.

The spec API takes access tokens; the OpenAI-compatible faces take a project API key too.
API-key guesses are counted against the client IP before they are verified (the failed
credentials limiter), unless the key was verified moments ago.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.requests import Request

from common.apikeys import looks_like_key
from common.auth import Authenticator, Principal
from common.errors import Unauthorized
from common.http import client_ip
from common.sessions import FailureGate
from common.settings import Settings

SCOPE = "invoke_llm"


class Credentials:
    """Verifies a call's credential (revocation is checked at admission)."""

    def __init__(
        self,
        settings: Settings,
        auth: Authenticator,
        failures: FailureGate,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.auth = auth
        self.failures = failures
        self.clock = clock

    async def verify(
        self, request: Request, *, api_key_allowed: bool, x_api_key: bool = False
    ) -> Principal:
        """The caller's principal; Unauthorized / InsufficientScope / 429 after guesses.
        `x_api_key`: without an Authorization header, the `x-api-key` header (Anthropic's)
        carries the key or token."""
        header = request.headers.get("authorization")
        if header is None and x_api_key and request.headers.get("x-api-key"):
            header = f"Bearer {request.headers['x-api-key'].strip()}"
        if api_key_allowed:
            principal = await self._api_credential(request, header)
        else:
            principal = self.auth.verify_token(header, SCOPE)
        await self.auth.ensure_key_usable(principal)
        return principal

    async def _api_credential(self, request: Request, header: str | None) -> Principal:
        if not header or not looks_like_key(header.partition(" ")[2].strip()):
            return await self.auth.verify_credential(header, SCOPE)
        if self.auth.knows_key(header):
            return await self.auth.verify_credential(header, SCOPE)  # verified moments ago
        ip = client_ip(request, self.settings.trusted_proxies)
        slot = await self.failures.take(ip, None, int(self.clock() * 1000))
        try:
            principal = await self.auth.verify_credential(header, SCOPE)
        except Unauthorized:
            raise  # the slot stays taken: a failed guess
        except BaseException:
            await self.failures.refund(slot)
            raise
        await self.failures.refund(slot)
        return principal
