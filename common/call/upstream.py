"""The upstream step: call the chain (retries, fallbacks, breaker in common.llm), and the one
place where a failed upstream call becomes the outcome it is ledgered and charged with.

A call the upstream may have billed is charged at its bound, never at $0: a timeout (it
may still be generating), a 200 that was unusable (`upstream_billed`), a client that went
away while the request was with the upstream. A refusal (4xx/5xx answered) costs nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from common.call.model import Context, Outcome
from common.call.request import payload
from common.call.settle import Settler
from common.errors import BrokerError, UpstreamBadResponse, UpstreamTimeout
from common.llm import Completion, StreamCall, UpstreamClient
from common.tracing import upstream_call


def failure_outcome(ctx: Context, exc: BaseException, *, streamed: bool) -> Outcome:
    """How an admitted call that ended in `exc` before any answer is ledgered."""
    if isinstance(exc, UpstreamBadResponse):
        answered = ctx.chain_upstream(exc.upstream_alias)
        return Outcome.charged(
            answered,
            ctx.at_bound(answered),
            "upstream_bad_response",
            exc.status,
            f"upstream_{exc.reason}",
            streamed=streamed,
        )
    if isinstance(exc, BrokerError):
        if not billed(exc):
            return Outcome(None, 0, 0, "upstream_error", exc.status, exc.code, streamed)
        charge = ctx.at_bound(None)
        return Outcome.charged(
            None, charge, "upstream_error", exc.status, exc.code, streamed=streamed
        )
    if isinstance(exc, asyncio.CancelledError):
        # The request may be with the upstream, which finishes (and bills) it anyway.
        charge = ctx.at_bound(None)
        return Outcome.charged(
            None, charge, "cancelled", 499, "client_disconnected", streamed=streamed
        )
    # A bug of ours after admission: release the reservation, record what happened.
    return Outcome(None, 0, 0, "internal_error", 500, "internal_error", streamed)


def billed(exc: BrokerError) -> bool:
    """May the upstream have billed a call that ended in `exc`? (a timeout, or an error
    class that says so with `upstream_billed = True`)"""
    return isinstance(exc, UpstreamTimeout) or bool(getattr(exc, "upstream_billed", False))


class UpstreamStep:
    """Calls the upstream chain for an admitted call; a failure is settled, then raised."""

    def __init__(self, client: UpstreamClient, settler: Settler) -> None:
        self.client = client
        self.settler = settler

    async def complete(self, ctx: Context, body: dict[str, Any]) -> Completion:
        """A non-streamed answer."""
        try:
            with upstream_call(ctx.call.model) as call:
                result = await self.client.complete(
                    ctx.chain,
                    payload(body),
                    ctx.request_id,
                    self.client.deadline(),
                    operation=ctx.call.operation,
                    forward=ctx.call.forward,
                )
                call.answered(result.upstream)
            return result
        except (Exception, asyncio.CancelledError) as exc:
            await self.settler.settle(ctx, failure_outcome(ctx, exc, streamed=False))
            raise

    async def open_stream(self, ctx: Context, body: dict[str, Any]) -> StreamCall:
        """An open SSE stream (its end is settled by common.call.stream)."""
        try:
            with upstream_call(ctx.call.model) as call:
                stream = await self.client.open_stream(
                    ctx.chain,
                    payload(body),
                    ctx.request_id,
                    self.client.deadline(),
                    strip_usage=not ctx.call.client_usage,
                    forward=ctx.call.forward,
                )
                call.answered(stream.upstream)
            return stream
        except (Exception, asyncio.CancelledError) as exc:
            await self.settler.settle(ctx, failure_outcome(ctx, exc, streamed=True))
            raise
