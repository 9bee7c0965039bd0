"""HttpShim: the data plane's entry. Owns the client sockets (one epoll fd watched through ThespianWatch), parses
HTTP with h11, validates, and sends calls straight to the guards' supervisors in credit-based batches. It also
takes ``Orchestrate`` messages from the actor system (the Python gateway), with the same checks and answers.

Every request is answered exactly once: from the supervisor's or worker's reply, from a refusal here, or with
``upstream_timeout`` when its deadline passes first.
"""

from __future__ import annotations

import json
import time
from typing import Any

from thespian.actors import ActorExitRequest, PoisonMessage, ThespianWatch, WakeupMessage, WatchMessage

from actors.base import AeyonActor
from actors.messages import (
    CallAccepted,
    CallBatch,
    EntrySwitched,
    Event,
    EventsAck,
    EventsDelivered,
    EventsInterest,
    EventsReplayed,
    Orchestrate,
    OrchestrateBatch,
    OrchestrationResult,
    PublishBatch,
    ReplayEvents,
    RepliesBatch,
    ResultsBatch,
    RoutesChanged,
    Subscribe,
    Subscribed,
    Unsubscribe,
)
from actors.messages.control import (
    AbandonPending,
    Configure,
    Drained,
    RateLimitGrant,
    Readiness,
    ShimListening,
    ViolationsObserved,
)
from actors.messages.dataplane import GuardGate, GuardReplied
from actors.messages.events import REQUEST_FAILED, REQUEST_ROUTED, RegisterPublisher
from actors.shim_ops import ShimOps
from system import metrics
from system.dispatch import Dispatcher, Pending
from system.edge import VIOLATION_TYPES, Edge, Screened
from system.envelope import degraded_body, error_body, error_status, json_body, response_headers, success_body
from system.errors import RequestError
from system.http_server import HttpLimits, HttpRequest, HttpServer
from system.openapi import openapi_document, ops_page
from system.ops import OpsTable
from system.policy import DEGRADABLE_CODES, FAIL_OPEN
from system.sse import KEEPALIVE, SseClient
from system.sse import parse_query as parse_sse_query
from system.tree import TreeWalk
from system.validation import (
    new_request_id,
    parse_orchestrate_body,
    valid_request_id,
    validate_orchestrate,
)

SWEEP_INTERVAL_S = 1.0
KEEPALIVE_S = 15.0


class Batched:
    """The origin of a request that came in an ``OrchestrateBatch``: its answer joins the caller's next
    ``ResultsBatch``."""

    __slots__ = ("address",)

    def __init__(self, address: Any):
        self.address = address


class HttpShim(ShimOps, AeyonActor):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.settings: Any = None
        self.peers: Any = None
        self.server: HttpServer | None = None
        self.dispatcher: Dispatcher | None = None
        self.ready = False
        self.draining = False
        self.accepting = True
        self.drained_sent = False
        self.routes_version = -1
        self.switched: list[Any] = []  # retiring supervisors told that no call of ours follows
        self.interest: frozenset[str] = frozenset()
        self.events: list[Event] = []
        self.ops = OpsTable()
        self.walks: list[tuple[TreeWalk, Any, str]] = []
        self.described: dict[str, dict[str, Any]] = {}
        self.timer_at: float | None = None
        self.next_sweep = 0.0
        self.counters = {"requests": 0, "answered": 0, "timeouts": 0, "errors": 0, "cancelled": 0, "batches": 0,
                         "batched_calls": 0, "result_batches": 0, "batched_results": 0,
                         "call_batches": 0, "batched_orchestrates": 0, "largest_call_batch": 0}
        self.conn_keys: dict[int, int] = {}
        self.sse: dict[int, SseClient] = {}
        self.sse_subscription: frozenset[str] = frozenset()
        self.next_keepalive = 0.0
        self.edge: Edge | None = None
        self.violations: list[tuple[str, str, str]] = []
        self.identifier_labels = metrics.IdentifierLabels()
        # Answers for batched callers (the Python gateway), sent as one ResultsBatch per caller after each message.
        self.results_out: list[tuple[Any, list[OrchestrationResult]]] = []

    # -- the actor's loop --------------------------------------------------------------------------------------

    def receiveMessage(self, message: Any, sender: Any) -> Any:
        # The watch must be returned from every message, and an exception escaping would make Thespian drop the
        # watch and leave every client hanging: so failures are contained here, logged and counted.
        try:
            super().receiveMessage(message, sender)
            self._after()
        except Exception:
            self.counters["errors"] += 1
            self.log.exception("HttpShim failed on %s", type(message).__name__)
        if self.server is None or isinstance(message, ActorExitRequest):
            return None
        return ThespianWatch([self.server.fileno()])

    def _after(self) -> None:
        """Work common to every message: pipelined requests, batches to send, answers to batched callers,
        events, the timer."""
        if self.server is not None:
            ready = self.server.take_ready()
            while ready:
                for request in ready:
                    self._handle_http(request)
                ready = self.server.take_ready()
            for conn_id in self.server.take_gone():
                self._drop_stream(conn_id)
                # Like a proxy's 499: the caller left, so its request stops holding an in-flight place. The
                # guard call may still finish; its answer is then dropped.
                key = self.conn_keys.pop(conn_id, None)
                if key is not None and self.dispatcher is not None and self.dispatcher.finish(key) is not None:
                    self.counters["cancelled"] += 1
        if self.dispatcher is not None:
            now = time.monotonic()
            for supervisor, batch in self.dispatcher.batches():
                self.counters["batches"] += 1
                self.counters["batched_calls"] += len(batch.calls)
                routing = metrics.ROUTING_DURATION.labels(batch.service)
                for call in batch.calls:
                    pending = self.dispatcher.pending(call.key)
                    if pending is not None:
                        routing.observe(now - pending.started)
                self.send(supervisor, batch)
            metrics.IN_FLIGHT.set(self.dispatcher.in_flight)
        if self.results_out:
            for address, results in self.results_out:
                self.counters["result_batches"] += 1
                self.counters["batched_results"] += len(results)
                self.send(address, ResultsBatch(tuple(results)))
            self.results_out = []
        if self.events and self.peers is not None:
            self.send(self.peers.event_bus, PublishBatch(tuple(self.events)))
            self.events = []
        if self.violations and self.peers is not None:
            self.send(self.peers.rate_limiter, ViolationsObserved(tuple(self.violations)))
            self.violations = []
        self._check_drained()
        self._arm_timer()

    def receiveMsg_Configure(self, message: Configure, sender: Any) -> None:
        first = self.settings is None
        moved_bus = self.peers is not None and self.peers.event_bus != message.peers.event_bus
        self.settings = message.settings
        self.peers = message.peers
        if not first:
            self._apply(message.settings)
            if moved_bus:  # a new EventBus knows nothing of us: subscribe and register again
                self.send(self.peers.event_bus, RegisterPublisher("shim"))
                self.sse_subscription = frozenset()
                self._resubscribe()
            return
        settings = message.settings
        self.dispatcher = Dispatcher(self.myAddress, max(1, settings.max_in_flight // settings.shims),
                                     max(1, settings.max_in_flight_per_guard // settings.shims))
        self.edge = Edge(settings, share=max(1.0 / settings.shims, 1.0 / settings.max_requests_per_minute))
        for violation in VIOLATION_TYPES:  # every series exists from the start, at zero
            metrics.SECURITY_VIOLATIONS.labels(violation)
        metrics.RATE_LIMIT_EXCEEDED.labels("other")
        server = HttpServer(_limits(settings), self._protocol_error)
        try:
            host, port = server.listen(settings.host, settings.port)
        except OSError as exc:
            server.close()
            self.send(sender, ShimListening(settings.host, settings.port, f"cannot listen on "
                                                                          f"{settings.host}:{settings.port}: {exc}"))
            return
        self.server = server
        self.next_sweep = time.monotonic() + SWEEP_INTERVAL_S
        self.send(sender, ShimListening(host, port))
        self.send(self.peers.event_bus, RegisterPublisher("shim"))

    def _apply(self, settings: Any) -> None:
        """New settings (a hot reload): limits and edge checks change; connections, buckets and pending requests
        stay."""
        if self.dispatcher is not None:
            self.dispatcher.max_in_flight = max(1, settings.max_in_flight // settings.shims)
            self.dispatcher.max_per_service = max(1, settings.max_in_flight_per_guard // settings.shims)
        if self.server is not None:
            self.server.limits = _limits(settings)
        if self.edge is not None:
            self.edge.reconfigure(settings)

    def receiveMsg_ActorExitRequest(self, message: ActorExitRequest, sender: Any) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def receiveMsg_WatchMessage(self, message: WatchMessage, sender: Any) -> None:
        if self.server is not None:
            for request in self.server.poll():
                self._handle_http(request)

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> None:
        if message.payload == self.timer_at:
            self.timer_at = None
        now = time.monotonic()
        if self.dispatcher is not None:
            for pending in self.dispatcher.expired():
                self.counters["timeouts"] += 1
                self._answer_error(pending, "upstream_timeout",
                                   f"no answer from {pending.service} within the request's timeout")
        if now >= self.next_sweep and self.server is not None:
            self.server.expire()
            if now >= self.next_keepalive:
                self.next_keepalive = now + KEEPALIVE_S
                for conn_id in list(self.sse):
                    self._stream(conn_id, KEEPALIVE)  # proxies close connections that stay silent
            self.next_sweep = now + SWEEP_INTERVAL_S
        self.expire_ops(now)

    def _arm_timer(self) -> None:
        if self.server is None or self.dispatcher is None:
            return
        due = self.next_sweep
        deadline = self.dispatcher.next_deadline()
        if deadline is not None:
            due = min(due, deadline)
        ops_due = self.ops_deadline()
        if ops_due is not None:
            due = min(due, ops_due)
        # Timers cannot be cancelled: arm one only when it is earlier than the one pending (stale ones are ignored).
        if self.timer_at is None or due < self.timer_at:
            self.timer_at = due
            self.wakeupAfter(max(0.0, due - time.monotonic()), payload=due)

    # -- control-plane pushes ----------------------------------------------------------------------------------

    def receiveMsg_RoutesChanged(self, message: RoutesChanged, sender: Any) -> None:
        if self.dispatcher is None or message.version <= self.routes_version:
            return
        self.routes_version = message.version
        removed, moved = self.dispatcher.set_routes(message.routes, message.retiring)
        for address in message.retiring:
            if not any(address == told for told in self.switched):
                self.switched.append(address)
                self.send(address, EntrySwitched(message.version))
        self.switched = [a for a in self.switched if any(a == r for r in message.retiring)]
        for pending in removed:
            self._answer_error(pending, "service_unavailable", f"{pending.service} was unregistered", retry_after=1)
        for pending in moved:
            self._answer_error(pending, "upstream_error", f"{pending.service}: its supervisor was replaced")
        for op in self.ops.routes_changed(self.dispatcher.routes):
            self._finish_op(op)

    def receiveMsg_GuardGate(self, message: GuardGate, sender: Any) -> None:
        route = self.dispatcher.routes.get(message.service) if self.dispatcher is not None else None
        if self.dispatcher is not None and (route is None or route.supervisor == sender):  # not a retired one's
            self.dispatcher.set_gate(message.service, message.code, message.message, message.until)

    def receiveMsg_Readiness(self, message: Readiness, sender: Any) -> None:
        self.ready = message.ready
        self.draining = message.draining
        self.accepting = message.accepting
        self.drained_sent = False

    def receiveMsg_AbandonPending(self, message: AbandonPending, sender: Any) -> None:
        if self.dispatcher is None:
            return
        abandoned = self.dispatcher.take_all()
        for pending in abandoned:
            self._answer_error(pending, "service_unavailable", f"the orchestrator is stopping: {message.reason}",
                               retry_after=1)
        self.drained_sent = True
        self.send(sender, Drained(len(abandoned)))

    def _check_drained(self) -> None:
        if self.draining and not self.accepting and not self.drained_sent and self.dispatcher is not None \
                and self.dispatcher.in_flight == 0 and self.peers is not None:
            self.drained_sent = True
            self.send(self.peers.orchestrator, Drained())

    def receiveMsg_EventsInterest(self, message: EventsInterest, sender: Any) -> None:
        self.interest = message.event_types

    # -- replies from the data plane ---------------------------------------------------------------------------

    def receiveMsg_CallAccepted(self, message: CallAccepted, sender: Any) -> None:
        assert self.dispatcher is not None
        self.dispatcher.accepted(message.service, message.batch_id)
        for reply in message.replies:
            self._answer_reply(reply)

    def receiveMsg_PoisonMessage(self, message: PoisonMessage, sender: Any) -> None:
        # A batch that made its supervisor fail twice comes back here: a bug, but its callers still get their
        # one answer, now, and the guard's credit is released.
        batch = message.poisonMessage
        if isinstance(batch, CallBatch) and self.dispatcher is not None:
            self.log.error("a supervisor failed on a batch for %s:\n%s", batch.service, message.details)
            self.dispatcher.accepted(batch.service, batch.batch_id)
            for call in batch.calls:
                pending = self.dispatcher.finish(call.key)
                if pending is not None:
                    self._answer_error(pending, "internal_error", "the orchestrator failed on this request")

    def receiveMsg_RepliesBatch(self, message: RepliesBatch, sender: Any) -> None:
        for reply in message.replies:
            self._answer_reply(reply)

    def _answer_reply(self, reply: GuardReplied) -> None:
        assert self.dispatcher is not None
        pending = self.dispatcher.finish(reply.key)
        if pending is None:
            return  # answered already (timed out, or its worker was replaced)
        if reply.outcome == "success":
            self._answer_success(pending, reply.body)
        else:
            self._answer_error(pending, reply.outcome, reply.message, reply.status, reply.body or None,
                               reply.retry_after)

    def _answer_success(self, pending: Pending, raw: bytes) -> None:
        self.counters["answered"] += 1
        duration_ms = (time.monotonic() - pending.started) * 1000.0
        metrics.REQUESTS.labels(pending.service, "success").inc()
        metrics.REQUEST_DURATION.labels(pending.service).observe(duration_ms / 1000.0)
        if REQUEST_ROUTED in self.interest:
            self.events.append(Event(REQUEST_ROUTED, time.time(), {
                "request_id": pending.request_id, "service_name": pending.service, "duration_ms": duration_ms}))
        if isinstance(pending.origin, int):
            body = success_body(pending.request_id, pending.service, raw, duration_ms)
            self._respond(pending.origin, 200, response_headers(pending.request_id), body)
        else:
            self._send_result(pending.origin, OrchestrationResult(pending.request_id, pending.service, "success",
                                                                  result=json.loads(raw), duration_ms=duration_ms))

    def _answer_error(self, pending: Pending, code: str, message: str, guard_status: int = 0,
                      raw_detail: bytes | None = None, retry_after: int | None = None) -> None:
        self.counters["answered"] += 1
        duration_ms = (time.monotonic() - pending.started) * 1000.0
        status = error_status(code, guard_status)
        route = self.dispatcher.routes.get(pending.service) if self.dispatcher else None
        degrade = route is not None and route.failure_policy == FAIL_OPEN and code in DEGRADABLE_CODES
        metrics.REQUESTS.labels(pending.service, "degraded" if degrade else code).inc()
        metrics.REQUEST_DURATION.labels(pending.service).observe(duration_ms / 1000.0)
        if REQUEST_FAILED in self.interest:
            self.events.append(Event(REQUEST_FAILED, time.time(), {
                "request_id": pending.request_id, "service_name": pending.service, "code": code,
                "duration_ms": duration_ms}))
        if degrade and isinstance(pending.origin, int):
            body = degraded_body(pending.request_id, pending.service, code, message, duration_ms)
            self._respond(pending.origin, 200, response_headers(pending.request_id), body)
        elif degrade:
            self._send_result(pending.origin, OrchestrationResult(
                pending.request_id, pending.service, "success", error_code=code, error_message=message,
                duration_ms=duration_ms, degraded=True))
        elif isinstance(pending.origin, int):
            body = error_body(pending.request_id, pending.service, code, message, raw_detail)
            self._respond(pending.origin, status, response_headers(pending.request_id, code, retry_after), body)
        else:
            self._send_result(pending.origin, OrchestrationResult(
                pending.request_id, pending.service, "error", error_code=code, error_message=message,
                error_detail=json.loads(raw_detail) if raw_detail else None, duration_ms=duration_ms,
                http_status=status, retry_after=retry_after))

    # -- HTTP --------------------------------------------------------------------------------------------------

    def _respond(self, conn_id: int, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.conn_keys.pop(conn_id, None)
        if self.server is not None:
            # While draining, every answer closes its connection: keep-alive clients reconnect, elsewhere.
            self.server.respond(conn_id, status, headers, body, close=self.draining)

    def _protocol_error(self, status: int, code: str, message: str) -> tuple[list[tuple[str, str]], bytes]:
        request_id = new_request_id()
        if status == 413:
            code = "payload_too_large"
            metrics.SECURITY_VIOLATIONS.labels("payload_too_large").inc()
        elif code not in ("request_timeout", "request_header_too_large"):
            code = "invalid_request"
            metrics.SECURITY_VIOLATIONS.labels("malformed_http").inc()
        return response_headers(request_id), error_body(request_id, None, code, message)

    def _handle_http(self, request: HttpRequest) -> None:
        self.counters["requests"] += 1
        header_id = request.headers.get("x-request-id")
        request_id = header_id if header_id is not None and valid_request_id(header_id) else new_request_id()
        try:
            assert self.edge is not None
            orchestrate = request.path == "/v1/orchestrate" and request.method == "POST"
            screened = self.edge.screen(request.path, request.headers, request.client_ip, request.body,
                                        orchestrate=orchestrate)
            if screened.refusal is not None:
                return self._refuse(request, request_id, screened)
            self._route_http(request, request_id, screened)
        except Exception:
            self.counters["errors"] += 1
            self.log.exception("request %s %s failed", request.method, request.path,
                               extra={"request_id": request_id})
            self._respond(request.conn_id, 500, response_headers(request_id),
                          error_body(request_id, None, "internal_error", "the orchestrator failed on this request"))

    def _refuse(self, request: HttpRequest, request_id: str, screened: Screened) -> None:
        refusal = screened.refusal
        assert refusal is not None
        self._violation(screened.identifier, refusal.violation, screened.client_ip)
        self._respond(request.conn_id, error_status(refusal.code),
                      response_headers(request_id, refusal.code, refusal.retry_after),
                      error_body(request_id, None, refusal.code, refusal.message))

    def _violation(self, identifier: str, violation: str, client_ip: str) -> None:
        metrics.SECURITY_VIOLATIONS.labels(violation).inc()
        if violation == "rate_limited":
            metrics.RATE_LIMIT_EXCEEDED.labels(self.identifier_labels.label(identifier)).inc()
        self.violations.append((identifier, violation, client_ip))

    # -- GET /v1/events (server-sent events) ---------------------------------------------------------------------

    def _open_event_stream(self, request: HttpRequest, request_id: str) -> None:
        assert self.server is not None
        try:
            types, since = parse_sse_query(request.query)
        except RequestError as exc:
            return self._http_error(request.conn_id, exc, request_id)
        headers = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"),
                   ("X-Request-ID", request_id)]
        if not self.server.start_stream(request.conn_id, 200, headers):
            return
        client = SseClient(types, replaying=since is not None)
        self.sse[request.conn_id] = client
        if since is not None:
            self.send(self.peers.event_bus, ReplayEvents(f"sse/{request.conn_id}", since, tuple(sorted(types))))
        self._resubscribe()

    def _resubscribe(self) -> None:
        # One subscription for all of this shim's streams: the union of what they want ("all" wins).
        wanted: frozenset[str] = frozenset()
        if any(not client.types for client in self.sse.values()):
            wanted = frozenset({"*"})
        else:
            for client in self.sse.values():
                wanted |= client.types
        if wanted == self.sse_subscription:
            return
        self.sse_subscription = wanted
        if not self.sse:
            self.send(self.peers.event_bus, Unsubscribe("sse"))
        else:
            types = () if "*" in wanted else tuple(sorted(wanted))
            self.send(self.peers.event_bus, Subscribe("sse", types, None, "sse"))

    def receiveMsg_Subscribed(self, message: Subscribed, sender: Any) -> None:
        pass

    def receiveMsg_EventsDelivered(self, message: EventsDelivered, sender: Any) -> None:
        for conn_id, client in list(self.sse.items()):
            if client.replaying:
                client.held.extend(message.events)
            else:
                self._stream(conn_id, client.frames(message.events))
        self.send(sender, EventsAck(message.batch_id))

    def receiveMsg_EventsReplayed(self, message: EventsReplayed, sender: Any) -> None:
        conn_id = int(message.request_id.partition("/")[2])
        client = self.sse.get(conn_id)
        if client is None:
            return
        client.replaying = False
        held, client.held = client.held, []
        self._stream(conn_id, client.frames([*message.events, *held]))

    def _stream(self, conn_id: int, data: bytes) -> None:
        if data and self.server is not None and not self.server.stream(conn_id, data):
            self._drop_stream(conn_id)

    def _drop_stream(self, conn_id: int) -> None:
        if self.sse.pop(conn_id, None) is not None:
            self._resubscribe()

    def receiveMsg_RateLimitGrant(self, message: RateLimitGrant, sender: Any) -> None:
        if self.edge is not None:
            self.edge.set_share(message.per_minute, message.share)

    def _route_http(self, request: HttpRequest, request_id: str, screened: Screened) -> None:
        method, path = request.method, request.path
        if path == "/v1/orchestrate":
            if method != "POST":
                return self._method_not_allowed(request, request_id, "POST")
            return self._orchestrate_http(request, screened)
        if path == "/health":
            if method not in ("GET", "HEAD"):
                return self._method_not_allowed(request, request_id, "GET")
            return self._respond(request.conn_id, 200, response_headers(request_id), json_body({"status": "ok"}))
        if path == "/":
            if method not in ("GET", "HEAD"):
                return self._method_not_allowed(request, request_id, "GET")
            return self._respond(request.conn_id, 200, [("Content-Type", "text/html; charset=utf-8"),
                                                        ("Cache-Control", "no-cache"), ("X-Request-ID", request_id)],
                                 ops_page())
        if path == "/openapi.json":
            if method not in ("GET", "HEAD"):
                return self._method_not_allowed(request, request_id, "GET")
            return self._respond(request.conn_id, 200, response_headers(request_id), openapi_document())
        if path == "/v1/config":
            if method == "GET":
                return self._show_config(request, request_id)
            if method == "POST":
                return self._reconfigure_http(request, request_id)
            return self._method_not_allowed(request, request_id, "GET, POST")
        if path == "/v1/events":
            if method != "GET":
                return self._method_not_allowed(request, request_id, "GET")
            return self._open_event_stream(request, request_id)
        if path == "/metrics":
            if method not in ("GET", "HEAD"):
                return self._method_not_allowed(request, request_id, "GET")
            return self._respond(request.conn_id, 200, [("Content-Type", metrics.CONTENT_TYPE),
                                                        ("X-Request-ID", request_id)], metrics.exposition())
        if path == "/ready":
            if method not in ("GET", "HEAD"):
                return self._method_not_allowed(request, request_id, "GET")
            if self.ready and not self.draining:
                return self._respond(request.conn_id, 200, response_headers(request_id),
                                     json_body({"status": "ready"}))
            state = "draining" if self.draining else "starting"
            return self._respond(request.conn_id, 503, response_headers(request_id), json_body({"status": state}))
        if path == "/v1/services":
            if method == "GET":
                return self._list_services(request.conn_id, request_id)
            if method == "POST":
                return self._register_http(request, request_id)
            return self._method_not_allowed(request, request_id, "GET, POST")
        if path == "/v1/actors":
            if method not in ("GET", "HEAD"):
                return self._method_not_allowed(request, request_id, "GET")
            return self._walk_tree(request.conn_id, request_id)
        if path.startswith("/v1/services/"):
            if method != "DELETE":
                return self._method_not_allowed(request, request_id, "DELETE")
            return self._unregister_http(request, request_id, path[len("/v1/services/"):])
        self._respond(request.conn_id, 404, response_headers(request_id),
                      error_body(request_id, None, "not_found", f"no route for {method} {path}"))

    def _method_not_allowed(self, request: HttpRequest, request_id: str, allowed: str) -> None:
        headers = [*response_headers(request_id), ("Allow", allowed)]
        self._respond(request.conn_id, 405, headers,
                      error_body(request_id, None, "method_not_allowed", f"{request.path} takes {allowed}"))

    def _service_label(self, service: str | None) -> str:
        # Only registered names become label values: a caller must not be able to mint new series.
        known = service is not None and self.dispatcher is not None and service in self.dispatcher.routes
        return service if known and service is not None else "-"

    def _http_error(self, conn_id: int, exc: RequestError, fallback_id: str) -> None:
        metrics.REQUESTS.labels(self._service_label(exc.service), exc.code).inc()
        request_id = exc.request_id or fallback_id
        self._respond(conn_id, exc.http_status, response_headers(request_id, exc.code, exc.retry_after or 1),
                      error_body(request_id, exc.service, exc.code, exc.message))

    def _orchestrate_http(self, request: HttpRequest, screened: Screened) -> None:
        assert self.dispatcher is not None
        header_id = request.headers.get("x-request-id")
        fallback = header_id if header_id is not None and valid_request_id(header_id) else new_request_id()
        try:
            if not self.accepting:
                raise RequestError("service_unavailable", "the orchestrator is shutting down", retry_after=1)
            valid = parse_orchestrate_body(request.body, header_request_id=fallback, client_id=screened.identifier)
            pending = self.dispatcher.submit(valid, request.conn_id)
        except RequestError as exc:
            if exc.code == "invalid_payload":
                self._violation(screened.identifier, "invalid_payload", screened.client_ip)
            if exc.code in ("unknown_service", "overloaded"):
                metrics.ROUTING.labels(self._service_label(exc.service), exc.code).inc()
            self._answer_refused(request.conn_id, exc, fallback)
            return
        self._routed(pending)
        self.conn_keys[request.conn_id] = pending.key

    def _answer_refused(self, conn_id: int, exc: RequestError, fallback: str) -> None:
        # Refused before any message: a fail-open guard still turns a refusal about the guard into a degraded
        # success, as when its supervisor refuses.
        route = self.dispatcher.routes.get(exc.service or "") if self.dispatcher else None
        if route is not None and route.failure_policy == FAIL_OPEN and exc.code in DEGRADABLE_CODES:
            request_id = exc.request_id or fallback
            metrics.REQUESTS.labels(route.service, "degraded").inc()
            self._respond(conn_id, 200, response_headers(request_id),
                          degraded_body(request_id, route.service, exc.code, exc.message, 0.0))
            return
        self._http_error(conn_id, exc, fallback)

    def _routed(self, pending: Pending) -> None:
        metrics.ROUTING.labels(pending.service, "routed").inc()
        metrics.PAYLOAD_SIZE.labels(pending.service).observe(pending.payload_size)

    # -- the actor protocol's entry ----------------------------------------------------------------------------

    def receiveMsg_OrchestrateBatch(self, message: OrchestrateBatch, sender: Any) -> None:
        origin = Batched(sender)
        self.counters["call_batches"] += 1
        self.counters["batched_orchestrates"] += len(message.calls)
        self.counters["largest_call_batch"] = max(self.counters["largest_call_batch"], len(message.calls))
        for call in message.calls:
            self._orchestrate(call, origin)

    def receiveMsg_Orchestrate(self, message: Orchestrate, sender: Any) -> None:
        self._orchestrate(message, sender)

    def _send_result(self, origin: Any, result: OrchestrationResult) -> None:
        """Answer an actor-system caller: at once, or (a batched caller) in its next ResultsBatch."""
        if not isinstance(origin, Batched):
            self.send(origin, result)
            return
        for address, results in self.results_out:
            if address == origin.address:
                results.append(result)
                return
        self.results_out.append((origin.address, [result]))

    def _orchestrate(self, message: Orchestrate, sender: Any) -> None:
        assert self.dispatcher is not None
        try:
            if not self.accepting:
                raise RequestError("service_unavailable", "the orchestrator is shutting down", retry_after=1)
            valid = validate_orchestrate(message.request_id, message.service, message.payload, message.timeout,
                                         message.client_id)
            # Actor-system callers are local and trusted; those that name a client_id are rate-limited by it.
            if message.client_id and self.edge is not None:
                refusal = self.edge.rate_limit("id:" + message.client_id)
                if refusal is not None:
                    self._violation("id:" + message.client_id, "rate_limited", "actor-system")
                    raise RequestError("rate_limited", refusal.message, request_id=valid.request_id,
                                       service=valid.service, retry_after=refusal.retry_after)
            self._routed(self.dispatcher.submit(valid, sender))
        except RequestError as exc:
            route = self.dispatcher.routes.get(exc.service or "")
            if route is not None and route.failure_policy == FAIL_OPEN and exc.code in DEGRADABLE_CODES:
                metrics.REQUESTS.labels(route.service, "degraded").inc()
                self._send_result(sender, OrchestrationResult(
                    exc.request_id or new_request_id(), route.service, "success", error_code=exc.code,
                    error_message=exc.message, degraded=True))
                return
            metrics.REQUESTS.labels(self._service_label(exc.service), exc.code).inc()
            # The caller matches the answer by the id it sent, even when that id is not a valid one.
            request_id = message.request_id if isinstance(message.request_id, str) else None
            service = message.service if isinstance(message.service, str) else None
            self._send_result(sender, OrchestrationResult(
                request_id or exc.request_id or new_request_id(), service, "error", error_code=exc.code,
                error_message=exc.message, http_status=exc.http_status, retry_after=exc.retry_after))

    def state(self) -> dict[str, Any]:
        """For inspection."""
        return {
            "listening": list(self.server.address) if self.server else None,
            "connections": self.server.connection_count if self.server else 0,
            "in_flight": self.dispatcher.in_flight if self.dispatcher else 0,
            "routes_version": self.routes_version,
            "ready": self.ready,
            **self.counters,
        }


def _limits(settings: Any) -> HttpLimits:
    return HttpLimits(header_timeout_s=settings.http_header_timeout_s, body_timeout_s=settings.http_body_timeout_s,
                      idle_timeout_s=settings.http_idle_timeout_s, max_connections=settings.http_max_connections)
