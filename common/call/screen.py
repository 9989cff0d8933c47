"""The screening step for answers: personal data in a JSON answer, under the project's rule.

Requests are screened before admission (common.pii_guard.PIIGuard.request); streamed
answers are filtered as they pass (common.pii_stream). A blocked answer is settled at what
the call is charged, then refused (422); a redacted one says so in a `bradax` field.
"""

from __future__ import annotations

import dataclasses

from common import bounds
from common.call.model import Context, Outcome
from common.call.settle import Settler
from common.errors import PIIDetected
from common.llm import Completion
from common.pii_guard import PIIGuard
from common.wire import dumps


async def screen_answer(
    pii: PIIGuard, settler: Settler, ctx: Context, result: Completion, charge: bounds.Charge
) -> tuple[Completion, set[str]]:
    """The answer under the project's output rule, and the kinds of data it redacted."""
    action = pii.answer_action(ctx.project)
    if action is None:
        return result, set()
    try:
        data, kinds = await pii.answer(action, result.data, len(result.body))
    except PIIDetected as exc:
        await settler.settle(ctx, _blocked(result, charge, exc.code))
        raise
    except BaseException:
        await settler.settle(
            ctx,
            Outcome.charged(result.upstream, charge, "cancelled", 499, "client_disconnected"),
        )
        raise
    if kinds and action == "block":
        code = "output_pii_detected"
        await settler.settle(ctx, _blocked(result, charge, code))
        found = ", ".join(sorted(kinds))
        raise PIIDetected(
            f"the answer contains personal data ({found}) and was withheld",
            code=code,
            details={"pii_kinds": sorted(kinds)},
        )
    if kinds:
        notice = {"pii": {"action": "redacted", "kinds": sorted(kinds)}}
        data = {**data, "bradax": notice}
        result = dataclasses.replace(result, data=data, body=dumps(data))
    return result, kinds


def _blocked(result: Completion, charge: bounds.Charge, code: str) -> Outcome:
    return Outcome.charged(result.upstream, charge, "pii_blocked", 422, code)
