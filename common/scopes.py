"""The scopes a credential (an API key, and the tokens a login issues for it) can grant.

Kept apart from common/tokens.py so that what only names scopes (key storage, the CLI)
does not load the JWT library.
"""

from __future__ import annotations

ALL_SCOPES = ("invoke_llm", "read_metrics")
