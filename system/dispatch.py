"""The entry's side of the data plane: pending requests, their deadlines, and credit-based batching.

An entry (the HTTP shim) turns each valid request into a ``CallGuard`` for the guard's supervisor. Calls for one
supervisor leave as one ``CallBatch`` while no earlier batch to it is unacknowledged; calls that arrive meanwhile
wait and leave together when the credit (``CallAccepted``) comes back. At light load every batch holds one call;
under load batches grow by themselves, which is what keeps the per-request message cost low (shared/DESIGN.md).

Every request is answered exactly once: ``finish(key)`` hands out a pending request only the first time, so a
late reply after a timeout, or a second reply after a worker was replaced, finds nothing and is dropped.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from actors.messages import CallBatch, CallGuard, Route
from system.errors import RequestError
from system.routing import TRANSFORMS
from system.validation import OrchestrateRequest

# A batch unacknowledged this long is given up on (its supervisor is gone or stuck; its requests time out on
# their own deadlines), so one lost credit cannot stall a guard for good.
CREDIT_TIMEOUT_S = 5.0


@attrs.define(slots=True)
class Pending:
    """A request waiting for its guard; ``origin`` says whom to answer (opaque here)."""

    key: int
    request_id: str
    service: str
    origin: Any
    started: float
    deadline: float
    supervisor: Any
    payload_size: int


class Dispatcher:
    """Pending requests of one entry, and the calls waiting for credit; see the module docstring."""

    def __init__(
        self,
        reply_to: Any,
        max_in_flight: int,
        max_per_service: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
    ):
        self._reply_to = reply_to
        self.max_in_flight = max_in_flight
        # One guard's share of the in-flight limit: a hung guard cannot take the others' places.
        self.max_per_service = max_per_service or max_in_flight
        self._per_service: dict[str, int] = {}
        # Refusals the guards' supervisors pushed: service -> (code, message, until wall clock or None).
        self._gates: dict[str, tuple[str, str, float | None]] = {}
        self._now = clock
        self._wall = wallclock
        self._routes: dict[str, Route] = {}
        self._pending: dict[int, Pending] = {}
        self._deadlines: list[tuple[float, int]] = []
        # Keyed by service name: Thespian addresses are not hashable.
        self._outbox: dict[str, list[CallGuard]] = {}
        self._unacked: dict[str, tuple[int, float]] = {}
        self._next_key = 1
        self._next_batch = 1

    @property
    def in_flight(self) -> int:
        """Requests sent on and not yet answered."""
        return len(self._pending)

    @property
    def routes(self) -> dict[str, Route]:
        """The route table, by service name."""
        return self._routes

    def set_routes(self, routes: Iterable[Route], retiring: Iterable[Any] = ()) -> tuple[list[Pending], list[Pending]]:
        """Install a new route table. Returns the pending requests it strands, taken out of the table:
        (those whose service is gone, those whose supervisor was replaced). Requests already sent to a supervisor
        in ``retiring`` (its guard moved to another node) stay: it answers them; those not sent yet go to the
        new supervisor."""
        old = self._routes
        self._routes = {route.service: route for route in routes}
        retiring = tuple(retiring)

        def moved(service: str) -> bool:
            route = self._routes.get(service)
            return route is None or route.supervisor != old[service].supervisor

        for service in [s for s in old if moved(s)]:
            self._unacked.pop(service, None)
            self._gates.pop(service, None)  # a new supervisor pushes its own
            calls = self._outbox.get(service)
            if service in self._routes and any(old[service].supervisor == a for a in retiring):
                unsent = {call.key for call in calls or ()}
                for pending in self._pending.values():
                    if pending.key in unsent:
                        pending.supervisor = self._routes[service].supervisor
            else:
                self._outbox.pop(service, None)
        removed = [p for p in self._pending.values() if p.service not in self._routes]
        replaced = [p for p in self._pending.values()
                    if p.service in self._routes and p.supervisor != self._routes[p.service].supervisor
                    and not any(p.supervisor == a for a in retiring)]
        for pending in removed + replaced:
            self._forget(pending.key)
        return removed, replaced

    def submit(self, request: OrchestrateRequest, origin: Any) -> Pending:
        """Queue a valid request for its guard; raise ``RequestError`` (unknown_service, overloaded)."""
        route = self._routes.get(request.service)
        if route is None:
            raise RequestError("unknown_service", f"no service named {request.service!r} is registered",
                               request_id=request.request_id, service=request.service)
        gate = self._gates.get(request.service)
        if gate is not None:
            code, message, until = gate
            if until is None or self._wall() < until:
                retry_after = max(1, math.ceil(until - self._wall())) if until is not None else 5
                raise RequestError(code, message, request_id=request.request_id, service=request.service,
                                   retry_after=retry_after)
            del self._gates[request.service]
        if len(self._pending) >= self.max_in_flight:
            raise RequestError("overloaded", f"{self.max_in_flight} requests are already in flight",
                               request_id=request.request_id, service=request.service)
        if self._per_service.get(request.service, 0) >= self.max_per_service:
            raise RequestError("overloaded", f"{self.max_per_service} requests to {request.service} are already "
                                             "in flight", request_id=request.request_id, service=request.service)
        body = json.dumps(TRANSFORMS[route.transform](request.payload, request.request_id),
                          separators=(",", ":")).encode()
        now = self._now()
        key = self._next_key
        self._next_key += 1
        pending = Pending(key, request.request_id, request.service, origin, now, now + request.timeout,
                          route.supervisor, len(body))
        self._pending[key] = pending
        self._per_service[request.service] = self._per_service.get(request.service, 0) + 1
        heapq.heappush(self._deadlines, (pending.deadline, key))
        call = CallGuard(key, request.request_id, route.endpoint, body, self._wall() + request.timeout,
                         self._reply_to)
        self._outbox.setdefault(route.service, []).append(call)
        return pending

    def set_gate(self, service: str, code: str | None, message: str = "", until: float | None = None) -> None:
        """Refuse this service's requests here, with ``code``, until ``until`` (wall clock); ``code`` None lifts it."""
        if code is None:
            self._gates.pop(service, None)
        else:
            self._gates[service] = (code, message, until)

    def batches(self) -> list[tuple[Any, CallBatch]]:
        """The batches that may leave now: one per supervisor with waiting calls and no unacknowledged batch."""
        out = []
        now = self._now()
        for service, calls in self._outbox.items():
            if not calls:
                continue
            unacked = self._unacked.get(service)
            if unacked is not None and now - unacked[1] < CREDIT_TIMEOUT_S:
                continue
            live = tuple(call for call in calls if call.key in self._pending)
            calls.clear()
            if not live:
                continue
            batch = CallBatch(self._next_batch, service, live)
            self._next_batch += 1
            self._unacked[service] = (batch.batch_id, now)
            out.append((self._routes[service].supervisor, batch))
        return out

    def accepted(self, service: str, batch_id: int) -> None:
        """The supervisor took a batch: calls for its service may leave again."""
        unacked = self._unacked.get(service)
        if unacked is not None and unacked[0] == batch_id:
            del self._unacked[service]

    def take_all(self) -> list[Pending]:
        """Take every pending request (the entry is stopping and answers them all now)."""
        pendings = list(self._pending.values())
        for pending in pendings:
            self._forget(pending.key)
        self._outbox.clear()
        return pendings

    def pending(self, key: int) -> Pending | None:
        """A pending request, left in place."""
        return self._pending.get(key)

    def finish(self, key: int) -> Pending | None:
        """Take a pending request to answer it; None if it was answered already."""
        pending = self._forget(key)
        if len(self._deadlines) > 4 * len(self._pending) + 1024:
            # Answered requests leave their deadline behind; drop those now and then so the heap stays small.
            self._deadlines = [(d, k) for d, k in self._deadlines if k in self._pending]
            heapq.heapify(self._deadlines)
        return pending

    def expired(self) -> list[Pending]:
        """Take the pending requests whose timeout has passed (they are answered ``upstream_timeout``)."""
        now = self._now()
        out = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, key = heapq.heappop(self._deadlines)
            pending = self._forget(key)
            if pending is not None:
                out.append(pending)
        return out

    def _forget(self, key: int) -> Pending | None:
        pending = self._pending.pop(key, None)
        if pending is not None:
            left = self._per_service[pending.service] - 1
            if left:
                self._per_service[pending.service] = left
            else:
                del self._per_service[pending.service]
        return pending

    def next_deadline(self) -> float | None:
        """When the earliest pending request times out (monotonic), or None."""
        while self._deadlines and self._deadlines[0][1] not in self._pending:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def unacked_batches(self) -> int:
        """Batches sent and not yet acknowledged (for inspection)."""
        return len(self._unacked)
