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

import attrs
from thespian.actors import ActorExitRequest, PoisonMessage, ThespianWatch, WakeupMessage, WatchMessage

from actors.base import AeyonActor
from actors.messages import (
    CallAccepted,
    CallBatch,
    DescribeService,
    Event,
    EventsInterest,
    ListServices,
    Orchestrate,
    OrchestrationResult,
    PublishBatch,
    RegisterService,
    RepliesBatch,
    RoutesChanged,
    ServiceDescription,
    ServiceList,
    ServiceRegistered,
    ServiceUnregistered,
    UnregisterService,
)
from actors.messages.control import (
    ActorDescription,
    ActorTree,
    Configure,
    DescribeActor,
    DescribeTree,
    Readiness,
    Refused,
    ShimListening,
)
from actors.messages.dataplane import GuardReplied
from actors.messages.events import REQUEST_FAILED, REQUEST_ROUTED, RegisterPublisher
from system.admin_auth import admin_refusal
from system.dispatch import Dispatcher, Pending
from system.envelope import degraded_body, error_body, error_status, json_body, response_headers, success_body
from system.errors import RequestError
from system.http_server import HttpLimits, HttpRequest, HttpServer
from system.ops import CONTROL_TIMEOUT_S, LISTING_TIMEOUT_S, Op, OpsTable, registry_answer, services_view
from system.policy import DEGRADABLE_CODES, FAIL_OPEN
from system.tree import TreeWalk
from system.validation import (
    new_request_id,
    parse_json_object,
    parse_orchestrate_body,
    valid_request_id,
    validate_orchestrate,
)

SWEEP_INTERVAL_S = 1.0
# /v1/actors answers within a second even when an actor is stuck (it is shown as unresponsive).
TREE_TIMEOUT_S = 0.8
ROOT_NAME = "aeyon-orchestrator"


class HttpShim(AeyonActor):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.settings: Any = None
        self.peers: Any = None
        self.server: HttpServer | None = None
        self.dispatcher: Dispatcher | None = None
        self.ready = False
        self.draining = False
        self.routes_version = -1
        self.interest: frozenset[str] = frozenset()
        self.events: list[Event] = []
        self.ops = OpsTable()
        self.walks: list[tuple[TreeWalk, Any, str]] = []
        self.described: dict[str, dict[str, Any]] = {}
        self.timer_at: float | None = None
        self.next_sweep = 0.0
        self.counters = {"requests": 0, "answered": 0, "timeouts": 0, "errors": 0, "cancelled": 0, "batches": 0,
                         "batched_calls": 0}
        self.conn_keys: dict[int, int] = {}

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
        """Work common to every message: pipelined requests, batches to send, events, the timer."""
        if self.server is not None:
            ready = self.server.take_ready()
            while ready:
                for request in ready:
                    self._handle_http(request)
                ready = self.server.take_ready()
            for conn_id in self.server.take_gone():
                # Like a proxy's 499: the caller left, so its request stops holding an in-flight place. The
                # guard call may still finish; its answer is then dropped.
                key = self.conn_keys.pop(conn_id, None)
                if key is not None and self.dispatcher is not None and self.dispatcher.finish(key) is not None:
                    self.counters["cancelled"] += 1
        if self.dispatcher is not None:
            for supervisor, batch in self.dispatcher.batches():
                self.counters["batches"] += 1
                self.counters["batched_calls"] += len(batch.calls)
                self.send(supervisor, batch)
        if self.events and self.peers is not None:
            self.send(self.peers.event_bus, PublishBatch(tuple(self.events)))
            self.events = []
        self._arm_timer()

    def receiveMsg_Configure(self, message: Configure, sender: Any) -> None:
        first = self.settings is None
        self.settings = message.settings
        self.peers = message.peers
        if not first:
            return
        settings = message.settings
        self.dispatcher = Dispatcher(self.myAddress, max(1, settings.max_in_flight // settings.shims),
                                     max(1, settings.max_in_flight_per_guard // settings.shims))
        server = HttpServer(HttpLimits(), self._protocol_error)
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
            self.next_sweep = now + SWEEP_INTERVAL_S
        for op in self.ops.expired():
            self._finish_op(op)
        for entry in [w for w in self.walks if w[0].deadline <= now]:
            self.walks.remove(entry)
            self._finish_walk(*entry)

    def _arm_timer(self) -> None:
        if self.server is None or self.dispatcher is None:
            return
        due = self.next_sweep
        deadline = self.dispatcher.next_deadline()
        if deadline is not None:
            due = min(due, deadline)
        ops_due = self.ops.next_deadline()
        if ops_due is not None:
            due = min(due, ops_due)
        for walk, _, _ in self.walks:
            due = min(due, walk.deadline)
        # Timers cannot be cancelled: arm one only when it is earlier than the one pending (stale ones are ignored).
        if self.timer_at is None or due < self.timer_at:
            self.timer_at = due
            self.wakeupAfter(max(0.0, due - time.monotonic()), payload=due)

    # -- control-plane pushes ----------------------------------------------------------------------------------

    def receiveMsg_RoutesChanged(self, message: RoutesChanged, sender: Any) -> None:
        if self.dispatcher is None or message.version <= self.routes_version:
            return
        self.routes_version = message.version
        removed, moved = self.dispatcher.set_routes(message.routes)
        for pending in removed:
            self._answer_error(pending, "service_unavailable", f"{pending.service} was unregistered", retry_after=1)
        for pending in moved:
            self._answer_error(pending, "upstream_error", f"{pending.service}: its supervisor was replaced")
        for op in self.ops.routes_changed(self.dispatcher.routes):
            self._finish_op(op)

    def receiveMsg_Readiness(self, message: Readiness, sender: Any) -> None:
        self.ready = message.ready
        self.draining = message.draining

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
        if REQUEST_ROUTED in self.interest:
            self.events.append(Event(REQUEST_ROUTED, time.time(), {
                "request_id": pending.request_id, "service_name": pending.service, "duration_ms": duration_ms}))
        if isinstance(pending.origin, int):
            body = success_body(pending.request_id, pending.service, raw, duration_ms)
            self._respond(pending.origin, 200, response_headers(pending.request_id), body)
        else:
            self.send(pending.origin, OrchestrationResult(pending.request_id, pending.service, "success",
                                                          result=json.loads(raw), duration_ms=duration_ms))

    def _answer_error(self, pending: Pending, code: str, message: str, guard_status: int = 0,
                      raw_detail: bytes | None = None, retry_after: int | None = None) -> None:
        self.counters["answered"] += 1
        duration_ms = (time.monotonic() - pending.started) * 1000.0
        status = error_status(code, guard_status)
        route = self.dispatcher.routes.get(pending.service) if self.dispatcher else None
        degrade = route is not None and route.failure_policy == FAIL_OPEN and code in DEGRADABLE_CODES
        if REQUEST_FAILED in self.interest:
            self.events.append(Event(REQUEST_FAILED, time.time(), {
                "request_id": pending.request_id, "service_name": pending.service, "code": code,
                "duration_ms": duration_ms}))
        if degrade and isinstance(pending.origin, int):
            body = degraded_body(pending.request_id, pending.service, code, message, duration_ms)
            self._respond(pending.origin, 200, response_headers(pending.request_id), body)
        elif degrade:
            self.send(pending.origin, OrchestrationResult(
                pending.request_id, pending.service, "success", error_code=code, error_message=message,
                duration_ms=duration_ms, degraded=True))
        elif isinstance(pending.origin, int):
            body = error_body(pending.request_id, pending.service, code, message, raw_detail)
            self._respond(pending.origin, status, response_headers(pending.request_id, code, retry_after), body)
        else:
            self.send(pending.origin, OrchestrationResult(
                pending.request_id, pending.service, "error", error_code=code, error_message=message,
                error_detail=json.loads(raw_detail) if raw_detail else None, duration_ms=duration_ms,
                http_status=status, retry_after=retry_after))

    # -- HTTP --------------------------------------------------------------------------------------------------

    def _respond(self, conn_id: int, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.conn_keys.pop(conn_id, None)
        if self.server is not None:
            self.server.respond(conn_id, status, headers, body)

    def _protocol_error(self, status: int, code: str, message: str) -> tuple[list[tuple[str, str]], bytes]:
        request_id = new_request_id()
        if status == 413:
            code = "payload_too_large"
        elif code not in ("request_timeout", "request_header_too_large"):
            code = "invalid_request"
        return response_headers(request_id), error_body(request_id, None, code, message)

    def _handle_http(self, request: HttpRequest) -> None:
        self.counters["requests"] += 1
        header_id = request.headers.get("x-request-id")
        request_id = header_id if header_id is not None and valid_request_id(header_id) else new_request_id()
        try:
            self._route_http(request, request_id)
        except Exception:
            self.counters["errors"] += 1
            self.log.exception("request %s %s failed", request.method, request.path)
            self._respond(request.conn_id, 500, response_headers(request_id),
                          error_body(request_id, None, "internal_error", "the orchestrator failed on this request"))

    def _route_http(self, request: HttpRequest, request_id: str) -> None:
        method, path = request.method, request.path
        if path == "/v1/orchestrate":
            if method != "POST":
                return self._method_not_allowed(request, request_id, "POST")
            return self._orchestrate_http(request)
        if path == "/health":
            if method not in ("GET", "HEAD"):
                return self._method_not_allowed(request, request_id, "GET")
            return self._respond(request.conn_id, 200, response_headers(request_id), json_body({"status": "ok"}))
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

    def _http_error(self, conn_id: int, exc: RequestError, fallback_id: str) -> None:
        request_id = exc.request_id or fallback_id
        self._respond(conn_id, exc.http_status, response_headers(request_id, exc.code, 1),
                      error_body(request_id, exc.service, exc.code, exc.message))

    def _orchestrate_http(self, request: HttpRequest) -> None:
        assert self.dispatcher is not None
        header_id = request.headers.get("x-request-id")
        fallback = header_id if header_id is not None and valid_request_id(header_id) else new_request_id()
        try:
            valid = parse_orchestrate_body(request.body, header_request_id=fallback,
                                           client_id=request.headers.get("x-client-id") or request.client_ip)
            pending = self.dispatcher.submit(valid, request.conn_id)
        except RequestError as exc:
            self._http_error(request.conn_id, exc, fallback)
            return
        self.conn_keys[request.conn_id] = pending.key

    def _admin_refused(self, request: HttpRequest, request_id: str) -> bool:
        refusal = admin_refusal(request.headers.get("authorization"), request.client_ip, self.settings.admin_token)
        if refusal is None:
            return False
        code, message = refusal
        self._respond(request.conn_id, error_status(code), response_headers(request_id),
                      error_body(request_id, None, code, message))
        return True

    # -- ops requests that wait on other actors ----------------------------------------------------------------

    def _register_http(self, request: HttpRequest, request_id: str) -> None:
        if self._admin_refused(request, request_id):
            return
        try:
            body = parse_json_object(request.body, request_id=request_id)
        except RequestError as exc:
            return self._http_error(request.conn_id, exc, request_id)
        self._register(request.conn_id, request_id, body.get("name"), body.get("service_type"), body.get("url"),
                       body.get("metadata"))

    def receiveMsg_RegisterService(self, message: RegisterService, sender: Any) -> None:
        self._register(sender, message.request_id, message.name, message.service_type, message.url,
                       message.metadata)

    def _register(self, origin: Any, request_id: str, *fields: Any) -> None:
        op = self.ops.start("register", origin, request_id, {"discovery"}, CONTROL_TIMEOUT_S)
        self.send(self.peers.discovery, RegisterService(op.key, *fields))

    def _unregister_http(self, request: HttpRequest, request_id: str, name: str) -> None:
        if self._admin_refused(request, request_id):
            return
        self._unregister(request.conn_id, request_id, name)

    def receiveMsg_UnregisterService(self, message: UnregisterService, sender: Any) -> None:
        self._unregister(sender, message.request_id, message.name)

    def _unregister(self, origin: Any, request_id: str, name: str) -> None:
        op = self.ops.start("unregister", origin, request_id, {"discovery"}, CONTROL_TIMEOUT_S)
        self.send(self.peers.discovery, UnregisterService(op.key, name))

    def _list_services(self, origin: Any, request_id: str) -> None:
        assert self.dispatcher is not None
        routes = self.dispatcher.routes
        op = self.ops.start("services", origin, request_id, routes, LISTING_TIMEOUT_S)
        for name, route in routes.items():
            self.send(route.supervisor, DescribeService(f"{op.key}/{name}"))
        if not routes:
            self.ops.complete_now(op)
            self._finish_op(op)

    def receiveMsg_ListServices(self, message: ListServices, sender: Any) -> None:
        self._list_services(sender, message.request_id)

    def receiveMsg_ServiceDescription(self, message: ServiceDescription, sender: Any) -> None:
        assert self.dispatcher is not None
        key, _, name = message.request_id.partition("/")
        self.described[message.service] = message.state
        self._part(key, name, message.state)

    def receiveMsg_ServiceRegistered(self, message: ServiceRegistered, sender: Any) -> None:
        self._part(message.request_id, "discovery", message)

    def receiveMsg_ServiceUnregistered(self, message: ServiceUnregistered, sender: Any) -> None:
        self._part(message.request_id, "discovery", message)

    def receiveMsg_Refused(self, message: Refused, sender: Any) -> None:
        self._part(message.request_id, "discovery", message)

    def _part(self, key: str, part: str, value: Any) -> None:
        assert self.dispatcher is not None
        op = self.ops.reply(key, part, value, self.dispatcher.routes)
        if op is not None:
            self._finish_op(op)

    def _finish_op(self, op: Op) -> None:
        assert self.dispatcher is not None
        if op.kind == "services":
            services = services_view(self.dispatcher.routes, op.replies, self.described)
            if isinstance(op.origin, int):
                self._respond(op.origin, 200, response_headers(op.request_id), json_body({"services": services}))
            else:
                self.send(op.origin, ServiceList(op.request_id, tuple(services)))
            return
        if isinstance(op.origin, int):
            self._respond(op.origin, *registry_answer(op))
            return
        reply = op.replies.get("discovery")
        if reply is None:
            reply = Refused(op.request_id, "service_unavailable", "the registry did not answer")
        self.send(op.origin, attrs.evolve(reply, request_id=op.request_id))

    # -- the live actor tree -----------------------------------------------------------------------------------

    def _walk_tree(self, origin: Any, request_id: str) -> None:
        walk = TreeWalk(ROOT_NAME, self.peers.orchestrator, time.monotonic() + TREE_TIMEOUT_S)
        self.walks.append((walk, origin, request_id))
        for question, address in walk.start():
            self.send(address, DescribeActor(question))

    def receiveMsg_DescribeTree(self, message: DescribeTree, sender: Any) -> None:
        self._walk_tree(sender, message.request_id)

    def receiveMsg_ActorDescription(self, message: ActorDescription, sender: Any) -> None:
        for entry in self.walks:
            walk = entry[0]
            if walk.owns(message.request_id):
                for question, address in walk.described(message):
                    self.send(address, DescribeActor(question))
                if walk.done:
                    self.walks.remove(entry)
                    self._finish_walk(*entry)
                return

    def _finish_walk(self, walk: TreeWalk, origin: Any, request_id: str) -> None:
        if isinstance(origin, int):
            self._respond(origin, 200, response_headers(request_id), json_body(walk.result()))
        else:
            self.send(origin, ActorTree(request_id, walk.result()))

    # -- the actor protocol's entry ----------------------------------------------------------------------------

    def receiveMsg_Orchestrate(self, message: Orchestrate, sender: Any) -> None:
        assert self.dispatcher is not None
        try:
            valid = validate_orchestrate(message.request_id, message.service, message.payload, message.timeout,
                                         message.client_id)
            self.dispatcher.submit(valid, sender)
        except RequestError as exc:
            # The caller matches the answer by the id it sent, even when that id is not a valid one.
            request_id = message.request_id if isinstance(message.request_id, str) else None
            service = message.service if isinstance(message.service, str) else None
            self.send(sender, OrchestrationResult(request_id or exc.request_id or new_request_id(), service, "error",
                                                  error_code=exc.code,
                                                  error_message=exc.message, http_status=exc.http_status))

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
