"""The Python gateway: call guards through a running orchestrator from any Python process.

::

    from system.gateway import Gateway
    with Gateway.connect(admin_port=1900) as gw:
        res = gw.orchestrate("tokenguard", {"text": "..."}, request_id="req-1", timeout=30)
        res.status, res.result, res.error_code, res.duration_ms

Safe to use from many threads. ``orchestrate`` calls from all threads go through one pump thread with an
endpoint of its own (Thespian's ``private()`` context): what the threads ask while earlier calls are out leaves
as one ``OrchestrateBatch`` message, and answers come back as ``ResultsBatch`` messages, which the pump hands to
the waiting threads by request id. One message each way for many calls is what makes the gateway cheap: on
``multiprocTCPBase`` a message costs about as much CPU as a guard call. The other calls (services, events, ...)
use an endpoint per thread, since replies to a shared endpoint would reach whichever thread is listening.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from actors.messages import (
    DescribeEntry,
    EntryDescribed,
    Event,
    EventsAck,
    EventsDelivered,
    EventsReplayed,
    ListServices,
    Orchestrate,
    OrchestrateBatch,
    OrchestrationResult,
    RegisterService,
    ReplayEvents,
    ResultsBatch,
    ServiceList,
    ServiceRegistered,
    ServiceUnregistered,
    StopOrchestrator,
    Subscribe,
    Subscribed,
    UnregisterService,
    Unsubscribe,
)
from actors.messages.control import ActorTree, DescribeTree, Refused, StopAccepted
from system.actor_system import join_system, leave_system, root_address
from system.errors import ERROR_STATUS, GatewayError
from system.validation import DEFAULT_TIMEOUT_S, new_request_id

# Time allowed past the request's own timeout for its answer to travel back.
REPLY_GRACE_S = 2.0
CONTROL_TIMEOUT_S = 10.0
# While calls are out, the pump listens this long at a time, so calls made meanwhile wait at most this long to
# leave (a thread cannot wake a Thespian listen); with nothing out it sleeps until a call comes.
PUMP_LISTEN_S = 0.001
MAX_CALLS_PER_BATCH = 256


class _Call:
    """One ``orchestrate`` call waiting for its answer."""

    __slots__ = ("answer", "deadline", "done", "message")

    def __init__(self, message: Orchestrate, deadline: float):
        self.message = message
        self.deadline = deadline
        self.done = threading.Event()
        self.answer: OrchestrationResult | None = None


class _Pump:
    """The thread that sends the calls of every thread in batches and hands the answers back."""

    def __init__(self, gateway: Gateway):
        self._gateway = gateway
        self._queue: list[_Call] = []
        self._wake = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="aeyon-gateway-pump", daemon=True)
        self._thread.start()

    def submit(self, call: _Call) -> None:
        with self._wake:
            self._queue.append(call)
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(5.0)

    def _run(self) -> None:
        manager = self._gateway._asys.private()
        endpoint = manager.__enter__()
        out: dict[str, collections.deque[_Call]] = {}  # request id -> calls out under it, oldest first
        try:
            while True:
                with self._wake:
                    if not self._queue and not out and not self._stop:
                        self._wake.wait(1.0)
                    if self._stop:
                        return
                    calls, self._queue = self._queue, []
                for start in range(0, len(calls), MAX_CALLS_PER_BATCH):
                    chunk = calls[start:start + MAX_CALLS_PER_BATCH]
                    for call in chunk:
                        out.setdefault(call.message.request_id or "", collections.deque()).append(call)
                    endpoint.tell(self._gateway._entry(), OrchestrateBatch(tuple(c.message for c in chunk)))
                if out:
                    self._receive(endpoint.listen(PUMP_LISTEN_S), out)
                    self._expire(out)
        finally:
            with contextlib.suppress(Exception):
                manager.__exit__(None, None, None)
            for waiting in out.values():
                for call in waiting:
                    call.done.set()

    @staticmethod
    def _receive(reply: Any, out: dict[str, collections.deque[_Call]]) -> None:
        results = reply.results if isinstance(reply, ResultsBatch) else \
            (reply,) if isinstance(reply, OrchestrationResult) else ()
        for result in results:
            waiting = out.get(result.request_id)
            if waiting:
                call = waiting.popleft()
                if not waiting:
                    del out[result.request_id]
                call.answer = result
                call.done.set()

    @staticmethod
    def _expire(out: dict[str, collections.deque[_Call]]) -> None:
        now = time.monotonic()
        for request_id in [r for r, waiting in out.items() if waiting[0].deadline <= now]:
            waiting = out[request_id]
            while waiting and waiting[0].deadline <= now:
                waiting.popleft().done.set()  # no answer: the caller reports upstream_timeout
            if not waiting:
                del out[request_id]


class Gateway:
    """A connection to a running orchestrator; see the module docstring."""

    def __init__(self, asys: Any, root: Any, entries: tuple[Any, ...]):
        self._asys = asys
        self._root = root
        self._entries = entries
        self._local = threading.local()
        self._contexts: list[Any] = []
        self._contexts_lock = threading.Lock()
        self._spread = itertools.count()
        self._closed = False
        self._pump: _Pump | None = None
        self._pump_lock = threading.Lock()

    @classmethod
    def connect(cls, admin_port: int = 1900, timeout: float = CONTROL_TIMEOUT_S) -> Gateway:
        """Join the actor system on ``admin_port``; raise ``GatewayError`` when no orchestrator runs there."""
        asys = join_system(admin_port)
        try:
            root = root_address(asys)
            request_id = new_request_id()
            reply = cls._ask_matching(asys, root, DescribeEntry(request_id), request_id, timeout)
        except Exception:
            leave_system(asys)
            raise
        entries = reply.entries if isinstance(reply, EntryDescribed) else ()
        return cls(asys, root, entries)

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Leave the actor system (the orchestrator keeps running)."""
        if self._closed:
            return
        self._closed = True
        if self._pump is not None:
            self._pump.stop()
        with self._contexts_lock:
            contexts, self._contexts = self._contexts, []
        for manager in contexts:
            with contextlib.suppress(Exception):
                manager.__exit__(None, None, None)
        leave_system(self._asys)

    # -- calls -------------------------------------------------------------------------------------------------

    def orchestrate(self, service: str, payload: dict[str, Any], request_id: str | None = None,
                    timeout: float = DEFAULT_TIMEOUT_S, client_id: str | None = None) -> OrchestrationResult:
        """Call one guard and wait for the single answer (an ``OrchestrationResult``, success or error)."""
        request_id = request_id or new_request_id()
        message = Orchestrate(request_id, service, payload, timeout, client_id)
        wait = (timeout if isinstance(timeout, int | float) and timeout > 0 else DEFAULT_TIMEOUT_S) + REPLY_GRACE_S
        if self._entries:
            call = _Call(message, time.monotonic() + wait)
            self._pumping().submit(call)
            call.done.wait(wait + 1.0)
            reply = call.answer
        else:
            # No shim to batch to (the orchestrator is not started yet): the root answers.
            reply = self._ask_matching(self._context(), self._root, message, request_id, wait)
        if isinstance(reply, OrchestrationResult):
            return reply
        if self._entries:
            self._refresh_entries()
        return OrchestrationResult(request_id, service, "error", error_code="upstream_timeout",
                                   error_message="no answer from the orchestrator in time",
                                   http_status=ERROR_STATUS["upstream_timeout"])

    def services(self) -> list[dict[str, Any]]:
        """Every registered guard with its live state (as ``GET /v1/services``)."""
        request_id = new_request_id()
        reply = self._control(ListServices(request_id), request_id)
        if not isinstance(reply, ServiceList):
            raise GatewayError("the orchestrator did not list its services")
        return list(reply.services)

    def register(self, name: str, service_type: str, url: str, metadata: dict[str, Any] | None = None,
                 ) -> ServiceRegistered:
        """Register a guard; raise ``GatewayError`` with the reason when refused."""
        request_id = new_request_id()
        reply = self._control(RegisterService(request_id, name, service_type, url, metadata or {}), request_id)
        if isinstance(reply, ServiceRegistered):
            return reply
        raise GatewayError(_refusal(reply))

    def unregister(self, name: str) -> ServiceUnregistered:
        """Remove a guard; raise ``GatewayError`` when there is none by that name."""
        request_id = new_request_id()
        reply = self._control(UnregisterService(request_id, name), request_id)
        if isinstance(reply, ServiceUnregistered):
            return reply
        raise GatewayError(_refusal(reply))

    def events(self, since: int = 0, types: tuple[str, ...] = ()) -> list[Event]:
        """The EventBus's buffered recent events after sequence ``since`` (of these types; all when empty)."""
        request_id = new_request_id()
        reply = self._control(ReplayEvents(request_id, since, types), request_id)
        if not isinstance(reply, EventsReplayed):
            raise GatewayError("the orchestrator did not answer with its events")
        return list(reply.events)

    def follow(self, types: tuple[str, ...] = (), since: int | None = None,
               idle_timeout: float | None = None) -> Iterator[Event]:
        """Events as they are published (after the buffered ones past ``since``, if given), until the caller stops
        iterating (or ``idle_timeout`` seconds pass with none). Each delivery is acknowledged, as the EventBus
        expects; an iterator left unread long enough is dropped by the bus, not the other way round."""
        request_id = new_request_id()
        endpoint = self._context()
        reply = self._ask_matching(endpoint, self._root, Subscribe(request_id, types, since, "gateway"), request_id,
                                   CONTROL_TIMEOUT_S)
        if not isinstance(reply, Subscribed):
            raise GatewayError("the orchestrator did not take the subscription")
        try:
            yield from reply.replay
            last = max((e.sequence for e in reply.replay), default=0)
            quiet_since = time.monotonic()
            while idle_timeout is None or time.monotonic() - quiet_since < idle_timeout:
                message = endpoint.listen(1.0)
                if isinstance(message, EventsDelivered):
                    endpoint.tell(reply.bus, EventsAck(message.batch_id))
                    for event in message.events:
                        if event.sequence > last:
                            last = event.sequence
                            quiet_since = time.monotonic()
                            yield event
        finally:
            endpoint.tell(reply.bus, Unsubscribe(request_id))

    def tree(self) -> dict[str, Any]:
        """The live actor tree (as ``GET /v1/actors``)."""
        request_id = new_request_id()
        reply = self._control(DescribeTree(request_id), request_id)
        if not isinstance(reply, ActorTree):
            raise GatewayError("the orchestrator did not draw its actor tree")
        return reply.tree

    def stop(self, drain: bool = True) -> StopAccepted:
        """Ask the orchestrator to stop (after the requests in flight are answered, with ``drain``); ``watched``
        when its ``aeyon serve`` process took the request."""
        request_id = new_request_id()
        reply = self._control(StopOrchestrator(request_id, drain), request_id)
        if not isinstance(reply, StopAccepted):
            raise GatewayError("the orchestrator did not answer the stop request")
        return reply

    def shutdown_system(self) -> None:
        """Stop the whole actor system from here (when no ``aeyon serve`` process is left to do it)."""
        self._asys.shutdown()
        self._closed = True

    # -- plumbing ----------------------------------------------------------------------------------------------

    def _control(self, message: Any, request_id: str) -> Any:
        return self._ask_matching(self._context(), self._root, message, request_id, CONTROL_TIMEOUT_S)

    def _pumping(self) -> _Pump:
        if self._closed:
            raise GatewayError("the gateway is closed")
        if self._pump is None:
            with self._pump_lock:
                if self._pump is None:
                    self._pump = _Pump(self)
        return self._pump

    def _entry(self) -> Any:
        """The next entry (HTTP shim) in turn."""
        entries = self._entries
        return entries[next(self._spread) % len(entries)] if entries else self._root

    def _context(self) -> Any:
        if self._closed:
            raise GatewayError("the gateway is closed")
        context = getattr(self._local, "context", None)
        if context is None:
            manager = self._asys.private()
            context = manager.__enter__()
            self._local.context = context
            with self._contexts_lock:
                self._contexts.append(manager)
        return context

    def _refresh_entries(self) -> None:
        request_id = new_request_id()
        reply = self._ask_matching(self._context(), self._root, DescribeEntry(request_id), request_id, 2.0)
        if isinstance(reply, EntryDescribed):
            self._entries = reply.entries

    @staticmethod
    def _ask_matching(endpoint: Any, target: Any, message: Any, request_id: str, timeout: float) -> Any:
        """Send and wait for the reply carrying ``request_id``: any message sent to this endpoint ends a
        ``listen``, and a late answer to an earlier request must not be taken for this one."""
        deadline = time.monotonic() + timeout
        endpoint.tell(target, message)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            reply = endpoint.listen(remaining)
            if reply is not None and getattr(reply, "request_id", None) == request_id:
                return reply


def _refusal(reply: Any) -> str:
    if isinstance(reply, Refused):
        return f"{reply.code}: {reply.message}"
    return "no answer from the orchestrator"
