"""Messages on the per-request path: entry -> guard supervisor -> worker -> entry.

Requests travel in batches. An entry sends a ``CallBatch`` to a supervisor and holds later requests for that
supervisor until the batch is acknowledged with ``CallAccepted`` (the credit); under load the held requests form
the next, larger batch by themselves. Workers answer entries directly (``RepliesBatch``) and report to their
supervisor what happened (``WorkDone``), so the reply path crosses one actor less.
"""

from __future__ import annotations

from typing import Any

import attrs


def _short_repr(cls: type) -> type:
    """A batch's repr names its size, not every call: Thespian formats each message it sends and receives for a
    debug line, needed or not, and a batch's full repr costs about a microsecond per call in it."""

    def __repr__(self: Any) -> str:
        fields = {field.name: getattr(self, field.name) for field in attrs.fields(cls)}
        shown = ", ".join(f"{name}={len(value)} items" if isinstance(value, tuple) else f"{name}={value!r}"
                          for name, value in fields.items())
        return f"{cls.__name__}({shown})"

    cls.__repr__ = __repr__  # type: ignore[assignment]
    return cls


@attrs.frozen
class Route:
    """Where requests for one registered service go: its supervisor and the guard endpoint it calls."""

    service: str
    service_type: str
    url: str
    endpoint: str
    transform: str
    supervisor: Any
    metadata: dict[str, Any] = attrs.field(factory=dict)
    source: str = "api"
    failure_policy: str = "fail_closed"


@attrs.frozen
class CallGuard:
    """One guard call: POST ``body`` to ``endpoint`` before ``expires_at`` (wall clock, seconds).

    ``key`` is the entry's own correlation number (request ids are the caller's and need not be unique);
    ``reply_to`` is the entry that answers the caller.
    """

    key: int
    request_id: str
    endpoint: str
    body: bytes
    expires_at: float
    reply_to: Any


@_short_repr
@attrs.frozen(repr=False)
class CallBatch:
    """Calls for one supervisor, sent while no earlier batch from this entry is unacknowledged."""

    batch_id: int
    service: str
    calls: tuple[CallGuard, ...]


@attrs.frozen
class GuardReplied:
    """How one call ended. ``outcome`` is "success" or an error code of the contract.

    ``status`` is the guard's HTTP status (0 when it never answered); ``body`` is its raw JSON answer, kept as
    bytes so the HTTP entry can place it in its response without decoding and encoding it again.
    """

    key: int
    request_id: str
    outcome: str
    status: int = 0
    body: bytes = b""
    message: str = ""
    retry_after: int | None = None


@_short_repr
@attrs.frozen(repr=False)
class CallAccepted:
    """The credit for a ``CallBatch``; carries the calls the supervisor answered at once (breaker open, ...)."""

    batch_id: int
    service: str
    replies: tuple[GuardReplied, ...] = ()


@_short_repr
@attrs.frozen(repr=False)
class RepliesBatch:
    """Replies for one entry, from a worker (or from a supervisor answering for a worker that died)."""

    replies: tuple[GuardReplied, ...]


@_short_repr
@attrs.frozen(repr=False)
class WorkBatch:
    """Calls a supervisor hands to one idle worker, made one after another; ``retry_tokens`` is how many retries
    the worker may spend on them (the supervisor's retry budget), each call tried at most ``max_attempts`` times."""

    batch_id: int
    calls: tuple[CallGuard, ...]
    retry_tokens: int = 0
    max_attempts: int = 1


@attrs.frozen
class CallRecord:
    """What the breaker needs to know of one finished call."""

    outcome: str
    duration_s: float


@_short_repr
@attrs.frozen(repr=False)
class WorkDone:
    """A worker finished a ``WorkBatch`` and is idle again."""

    batch_id: int
    records: tuple[CallRecord, ...]
    retries: int = 0
    pid: int = 0
    # The batch's time less what the worker spent waiting for a CPU: the guard's own pace, which sizes batches
    # (a starved worker's wall times would make a fast guard look slow). 0: not known.
    busy_s: float = 0.0


@attrs.frozen
class GuardGate:
    """Guard supervisor -> entries: refuse calls to this guard yourselves, with ``code``, until ``until`` (wall
    clock; None: until told otherwise), or (``code`` None) send them on again. Pushed when the breaker or the
    health state changes, so a refusal costs no message; the supervisor still decides every call it gets."""

    service: str
    code: str | None = None
    message: str = ""
    until: float | None = None
