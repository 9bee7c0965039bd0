"""Ops requests that wait on other actors (service listings, registrations), and the answers they get.

Plain bookkeeping for the HttpShim: an ``Op`` waits for named parts (one reply per guard supervisor for a listing,
Discovery's reply for a registration) and, for registrations, for the route table to show the change, so that a
caller who registered a service can use it as soon as the answer arrives (read-your-writes on that entry).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from actors.messages import Route, ServiceRegistered, ServiceUnregistered
from actors.messages.control import Reconfigured, Refused
from system.envelope import error_body, error_status, json_body, response_headers

LISTING_TIMEOUT_S = 1.0
CONTROL_TIMEOUT_S = 5.0
# After Discovery has answered, how long a registration waits for the route table to show it.
ROUTE_WAIT_S = 2.0


@attrs.define
class Op:
    """One ops request in progress."""

    key: str
    kind: str
    origin: Any
    request_id: str
    deadline: float
    waiting: set[str]
    replies: dict[str, Any] = attrs.field(factory=dict)
    # (service name, whether it must be present) once Discovery has confirmed a (un)registration.
    route: tuple[str, bool] | None = None


class OpsTable:
    """Ops requests by key; see the module docstring."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._now = clock
        self._ops: dict[str, Op] = {}
        self._keys = itertools.count(1)

    def start(self, kind: str, origin: Any, request_id: str, waiting: Iterable[str], timeout: float) -> Op:
        """Open an op waiting for these parts."""
        op = Op(f"op-{next(self._keys)}", kind, origin, request_id, self._now() + timeout, set(waiting))
        self._ops[op.key] = op
        return op

    def reply(self, key: str, part: str, value: Any, routes: Mapping[str, Route]) -> Op | None:
        """Record one part; return the op when it is complete (and forget it)."""
        op = self._ops.get(key)
        if op is None:
            return None
        op.replies[part] = value
        op.waiting.discard(part)
        if op.waiting:
            return None
        if isinstance(value, ServiceRegistered):
            op.route = (value.spec.name, True)
        elif isinstance(value, ServiceUnregistered):
            op.route = (value.name, False)
        if op.route is not None:
            op.deadline = self._now() + ROUTE_WAIT_S
        return self._complete_if_routed(op, routes)

    def routes_changed(self, routes: Mapping[str, Route]) -> list[Op]:
        """The ops whose change the new route table now shows (forgotten here)."""
        return [op for op in list(self._ops.values()) if op.route is not None and self._complete_if_routed(op, routes)]

    def _complete_if_routed(self, op: Op, routes: Mapping[str, Route]) -> Op | None:
        if op.route is not None and (op.route[0] in routes) != op.route[1]:
            return None
        return self._ops.pop(op.key, None)

    def waiting_for(self, key: str) -> str | None:
        """The part an op still waits for (one of them), or None."""
        op = self._ops.get(key)
        return next(iter(op.waiting), None) if op is not None else None

    def complete_now(self, op: Op) -> None:
        """Forget an op answered without waiting (nothing to wait for)."""
        self._ops.pop(op.key, None)

    def expired(self) -> list[Op]:
        """Ops past their deadline (forgotten here); they are answered with what has arrived."""
        now = self._now()
        late = [op for op in self._ops.values() if op.deadline <= now]
        for op in late:
            del self._ops[op.key]
        return late

    def next_deadline(self) -> float | None:
        """The earliest deadline, or None."""
        return min((op.deadline for op in self._ops.values()), default=None)


def services_view(routes: Mapping[str, Route], described: Mapping[str, dict[str, Any]],
                  last_known: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``services`` list of ``GET /v1/services``: route facts plus each supervisor's live state.

    A supervisor that did not answer in time is shown with its last known state and ``"responsive": false``.
    """
    services = []
    for name, route in sorted(routes.items()):
        state = described.get(name)
        responsive = state is not None
        if state is None:
            state = last_known.get(name, {"health": "UNKNOWN", "circuit": "closed", "in_flight": 0})
        services.append({
            "name": name,
            "service_type": route.service_type,
            "url": route.url,
            "endpoint": route.endpoint,
            **state,
            "metadata": route.metadata,
            "source": route.source,
            "responsive": responsive,
        })
    return services


def registry_answer(op: Op) -> tuple[int, list[tuple[str, str]], bytes]:
    """The HTTP answer (status, headers, body) to ``POST`` or ``DELETE /v1/services`` once its op ended."""
    reply = op.replies.get("discovery")
    if reply is None:
        return (503, response_headers(op.request_id, "service_unavailable", 1),
                error_body(op.request_id, None, "service_unavailable", "the registry did not answer"))
    if isinstance(reply, ServiceRegistered):
        spec = reply.spec
        return (201, [*response_headers(op.request_id), ("Location", f"/v1/services/{spec.name}")],
                json_body({"name": spec.name, "service_type": spec.service_type, "url": spec.url,
                           "metadata": spec.metadata, "source": spec.source}))
    if isinstance(reply, ServiceUnregistered):
        return 204, [("X-Request-ID", op.request_id)], b""
    assert isinstance(reply, Refused)
    return (error_status(reply.code), response_headers(op.request_id),
            error_body(op.request_id, None, reply.code, reply.message))


def reconfigure_answer(op: Op) -> tuple[int, list[tuple[str, str]], bytes]:
    """The HTTP answer to ``POST /v1/config`` once its op ended."""
    reply = op.replies.get("root")
    if isinstance(reply, Reconfigured):
        return 200, response_headers(op.request_id), json_body({"changed": list(reply.changed)})
    if isinstance(reply, Refused):
        return (error_status(reply.code), response_headers(op.request_id),
                error_body(op.request_id, None, reply.code, reply.message))
    return (503, response_headers(op.request_id, "service_unavailable", 1),
            error_body(op.request_id, None, "service_unavailable", "the orchestrator did not answer"))
