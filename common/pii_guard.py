"""The LGPD gate of the call path: requests before the upstream, answers before the client.

- Requests of projects with ``pii_detection``: every string of the upstream body
  (`common.pii_payload`) is scanned; ``pii_action`` blocks (422 ``pii_detected``, kinds
  only) or redacts a copy, which is what the upstream receives.
- Answers of projects whose `Project.answer_pii_action` is redact or block: the choices
  of a JSON answer, or the text of a stream as it passes (`common.pii_stream`).

Cost is bounded and never paid by the event loop: payloads above `INLINE_BYTES` are
scanned in a small thread pool (PII_SCAN_WORKERS), and every scan has a budget
(PII_SCAN_TIMEOUT_SECONDS, counted from submission, and PII_SCAN_MAX_CHARS). A scan
that runs out of budget or fails in any way refuses the request or answer (422
``pii_check_failed``): the gate fails closed.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Literal

from common.errors import PIIDetected
from common.logs import get_logger
from common.pii_payload import Budget, ScanAborted, Screened, Unscannable, screen
from common.pii_stream import StreamFilter
from common.projects import Project
from common.settings import Settings
from common.telemetry import Telemetry

__all__ = ["INLINE_BYTES", "PIIGuard"]

# Below this size a scan takes at most a few milliseconds (dense or evasive text): on the loop.
INLINE_BYTES = 8 * 1024
# Upstream body keys that are not text: the model is checked against the allowed list.
_REQUEST_KEEP = frozenset({"model", "stream"})


def _check_failed() -> PIIDetected:
    return PIIDetected(
        "personal-data check failed; the request was refused", code="pii_check_failed"
    )


class PIIGuard:
    """Scans requests and answers under each project's PII rules; one per process."""

    def __init__(self, settings: Settings, telemetry: Telemetry) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self._executor: ThreadPoolExecutor | None = None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.settings.pii_scan_workers, thread_name_prefix="pii-scan"
            )
        return self._executor

    async def _screen(
        self, value: Any, size: int, *, redact: bool, keep: frozenset[str] = frozenset()
    ) -> Screened:
        """Screen a payload inline or in the pool, within budget; raises PIIDetected."""
        settings = self.settings
        timeout = settings.pii_scan_timeout_seconds
        if size > settings.pii_scan_max_chars:
            raise _check_failed()
        budget = Budget(time.monotonic() + timeout, settings.pii_scan_max_chars)
        job = partial(
            screen,
            value,
            redact=redact,
            budget=budget,
            block_binary=settings.pii_binary_attachments == "block",
            keep=keep,
        )
        try:
            if size <= INLINE_BYTES:
                return job()
            loop = asyncio.get_running_loop()
            return await asyncio.wait_for(loop.run_in_executor(self._pool(), job), timeout)
        except Unscannable:
            raise PIIDetected(
                "a binary attachment cannot be checked for personal data and this broker "
                "refuses those",
                code="pii_unscannable_attachment",
            ) from None
        except (ScanAborted, TimeoutError):
            get_logger().warning("PII scan over budget; refused", size=size)
            raise _check_failed() from None
        except Exception:
            get_logger().exception("PII detection failed; refused")
            raise _check_failed() from None

    async def request(self, project: Project, body: dict[str, Any], size: int) -> dict[str, Any]:
        """The body the upstream may receive: the same, a redacted copy, or PIIDetected."""
        if "pii_detection" not in project.compliance_rules:
            return body
        redact = project.pii_action == "redact"
        screened = await self._screen(body, size, redact=redact, keep=_REQUEST_KEEP)
        if not screened.kinds:
            return body
        self.telemetry.incr("pii_detections_total", action=project.pii_action)
        if redact:
            value: dict[str, Any] = screened.value
            return value
        found = ", ".join(sorted(screened.kinds))
        raise PIIDetected(
            f"the prompt contains personal data ({found}); remove it or ask for redaction",
            details={"pii_kinds": sorted(screened.kinds)},
        )

    @staticmethod
    def answer_action(project: Project) -> Literal["redact", "block"] | None:
        """What to do with personal data in this project's answers, or None (not scanned)."""
        action = project.answer_pii_action
        return None if action == "off" else action

    async def answer(
        self, action: Literal["redact", "block"], data: dict[str, Any], size: int
    ) -> tuple[dict[str, Any], set[str]]:
        """An answer's choices screened: (the answer, redacted if asked; kinds found)."""
        choices = data.get("choices")
        if not isinstance(choices, list):
            return data, set()
        screened = await self._screen(choices, size, redact=action == "redact")
        if screened.kinds:
            self.telemetry.incr("pii_detections_total", action=f"output_{action}")
        if action == "redact" and screened.kinds:
            redacted = screened.value
            for choice in redacted:
                if isinstance(choice, dict) and choice.get("logprobs") is not None:
                    choice["logprobs"] = None  # its tokens would spell the data out again
            return {**data, "choices": redacted}, screened.kinds
        return data, screened.kinds

    @staticmethod
    def stream_filter(action: Literal["redact", "block"]) -> StreamFilter:
        """A filter for one streamed answer."""
        return StreamFilter(action)
