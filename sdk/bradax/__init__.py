"""bradax: the Python SDK of the bradax LLM broker.

    from bradax import Broker

    with Broker() as broker:  # BRADAX_BASE_URL, BRADAX_PROJECT_ID, BRADAX_API_KEY
        answer = broker.invoke("gpt-4.1-mini", "Say hello", max_tokens=50)
        print(answer.text, answer.cost_usd, answer.request_id)

`Broker` (sync, thread-safe) and `AsyncBroker` (asyncio) handle tokens (login, refresh before
expiry and after a 401, one refresh at a time), retry what is safe to retry with one
Idempotency-Key per call, stream typed deltas, and raise typed errors (`bradax.errors`).
"""

from bradax._http import __version__
from bradax.async_client import AsyncBroker
from bradax.client import Broker
from bradax.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequest,
    BradaxError,
    BudgetExceeded,
    Conflict,
    InternalServerError,
    ModelNotAllowed,
    NotFound,
    PermissionDenied,
    PIIBlocked,
    ProjectSuspended,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from bradax.models import Choice, InvokeResponse, Message, StreamDelta, TokenPair, Usage
from bradax.retry import RetryPolicy
from bradax.streaming import AsyncChatStream, ChatStream

__all__ = [
    "APIConnectionError",
    "APITimeoutError",
    "AsyncBroker",
    "AsyncChatStream",
    "AuthenticationError",
    "BadRequest",
    "BradaxError",
    "Broker",
    "BudgetExceeded",
    "ChatStream",
    "Choice",
    "Conflict",
    "InternalServerError",
    "InvokeResponse",
    "Message",
    "ModelNotAllowed",
    "NotFound",
    "PIIBlocked",
    "PermissionDenied",
    "ProjectSuspended",
    "RateLimited",
    "RetryPolicy",
    "ServiceUnavailable",
    "StreamDelta",
    "TokenPair",
    "UpstreamError",
    "UpstreamRateLimited",
    "UpstreamTimeout",
    "Usage",
    "__version__",
]
