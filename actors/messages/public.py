"""The public protocol: what users send to the orchestrator and what they get back."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class Orchestrate:
    """Call one guard with a payload; asked of the actor with globalName ``aeyon-orchestrator``.

    ``request_id`` may be None (one is generated); ``timeout`` is in seconds, 0 < timeout <= 300.
    """

    request_id: str | None
    service: str
    payload: dict[str, Any]
    timeout: float = 30.0
    client_id: str | None = None


@attrs.frozen
class OrchestrationResult:
    """The single answer to an ``Orchestrate``: a success with the guard's JSON, or an error with its code."""

    request_id: str
    service: str | None
    status: str
    result: Any = None
    error_code: str | None = None
    error_message: str | None = None
    error_detail: Any = None
    duration_ms: float = 0.0
    http_status: int = 200
    retry_after: int | None = None
    # A fail-open guard failed: a success with no result; error_code and error_message say what failed.
    degraded: bool = False

    @property
    def ok(self) -> bool:
        """True when the guard answered and its answer is in ``result``."""
        return self.status == "success"


@attrs.frozen
class OrchestrateBatch:
    """Several ``Orchestrate`` calls in one message (the Python gateway sends those its threads made meanwhile);
    each is answered once, in ``ResultsBatch`` messages to the sender."""

    calls: tuple[Orchestrate, ...]


@attrs.frozen
class ResultsBatch:
    """The answers to calls of one or more ``OrchestrateBatch`` messages, in one message."""

    results: tuple[OrchestrationResult, ...]
