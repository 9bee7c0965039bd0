"""The HTTP shim's ops endpoints: the service list, registrations, and the live actor tree.

A part of ``HttpShim`` (a mixin, so the shim's module stays about the data path): these requests wait on other
actors (Discovery, every guard supervisor, every actor for the tree), so each is an op with a deadline, answered
from whatever has arrived by then.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import attrs
from thespian.actors import Thespian_ActorStatus, Thespian_StatusReq

from actors.messages import (
    DescribeService,
    ListServices,
    RegisterService,
    ServiceDescription,
    ServiceList,
    ServiceRegistered,
    ServiceUnregistered,
    UnregisterService,
)
from actors.messages.control import (
    ActorDescription,
    ActorTree,
    DescribeActor,
    DescribeTree,
    Reconfigure,
    Reconfigured,
    Refused,
)
from system.admin_auth import admin_refusal
from system.config import describe
from system.dispatch import Dispatcher
from system.envelope import error_body, error_status, json_body, response_headers
from system.errors import RequestError
from system.http_server import HttpRequest
from system.ops import (
    CONTROL_TIMEOUT_S,
    LISTING_TIMEOUT_S,
    Op,
    OpsTable,
    reconfigure_answer,
    registry_answer,
    services_view,
)
from system.tree import TreeWalk, thespian_counters
from system.validation import parse_json_object

# /v1/actors answers within a second even when an actor is stuck (it is shown as unresponsive).
TREE_TIMEOUT_S = 0.8
ROOT_NAME = "aeyon-orchestrator"


class ShimOps:
    """The ops endpoints of ``HttpShim``; see the module docstring."""

    settings: Any
    peers: Any
    dispatcher: Dispatcher | None
    ops: OpsTable
    walks: list[tuple[TreeWalk, Any, str]]
    described: dict[str, dict[str, Any]]

    if TYPE_CHECKING:  # provided by HttpShim and Thespian's Actor; declared here for the type checker only

        def send(self, target: Any, message: Any) -> None: ...

        def _respond(self, conn_id: int, status: int, headers: list[tuple[str, str]], body: bytes) -> None: ...

        def _http_error(self, conn_id: int, exc: RequestError, fallback_id: str) -> None: ...

        def _violation(self, identifier: str, violation: str, client_ip: str) -> None: ...

    def expire_ops(self, now: float) -> None:
        """Answer the ops and tree walks whose deadline has passed."""
        for op in self.ops.expired():
            self._finish_op(op)
        for entry in [w for w in self.walks if w[0].deadline <= now]:
            self.walks.remove(entry)
            self._finish_walk(*entry)

    def ops_deadline(self) -> float | None:
        """The earliest deadline of an op or a walk."""
        dues = [walk.deadline for walk, _, _ in self.walks]
        due = self.ops.next_deadline()
        if due is not None:
            dues.append(due)
        return min(dues, default=None)

    def _admin_refused(self, request: HttpRequest, request_id: str) -> bool:
        refusal = admin_refusal(request.headers.get("authorization"), request.client_ip, self.settings.admin_token)
        if refusal is None:
            return False
        code, message = refusal
        self._violation("ip:" + request.client_ip, "admin_unauthorized", request.client_ip)
        self._respond(request.conn_id, error_status(code), response_headers(request_id),
                      error_body(request_id, None, code, message))
        return True

    # -- settings ----------------------------------------------------------------------------------------------

    def _show_config(self, request: HttpRequest, request_id: str) -> None:
        if self._admin_refused(request, request_id):
            return
        self._respond(request.conn_id, 200, response_headers(request_id), json_body(describe(self.settings)))

    def _reconfigure_http(self, request: HttpRequest, request_id: str) -> None:
        if self._admin_refused(request, request_id):
            return
        try:
            values = parse_json_object(request.body, request_id=request_id)
        except RequestError as exc:
            return self._http_error(request.conn_id, exc, request_id)
        op = self.ops.start("reconfigure", request.conn_id, request_id, {"root"}, CONTROL_TIMEOUT_S)
        self.send(self.peers.orchestrator, Reconfigure(op.key, values))

    def receiveMsg_Reconfigured(self, message: Reconfigured, sender: Any) -> None:
        self._part(message.request_id, "root", message)

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
        # From Discovery (a registration) or the root (a reconfiguration): the op knows which part it waits for.
        waiting = self.ops.waiting_for(message.request_id)
        self._part(message.request_id, waiting or "discovery", message)

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
                self._respond(op.origin, 200, response_headers(op.request_id),
                              json_body({"services": services, "generated_at": time.time()}))
            else:
                self.send(op.origin, ServiceList(op.request_id, tuple(services)))
            return
        if op.kind == "reconfigure":
            return self._respond(op.origin, *reconfigure_answer(op))
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
        self._ask_actors(walk.start())

    def _ask_actors(self, questions: list[tuple[str, Any]]) -> None:
        for question, address in questions:
            self.send(address, DescribeActor(question))
            self.send(address, Thespian_StatusReq())

    def receiveMsg_Thespian_ActorStatus(self, message: Thespian_ActorStatus, sender: Any) -> None:
        address = str(message.actorAddress)
        for entry in self.walks:
            if entry[0].owns_status(address):
                entry[0].status(address, thespian_counters(message))
                self._finish_if_done(entry)
                return

    def receiveMsg_DescribeTree(self, message: DescribeTree, sender: Any) -> None:
        self._walk_tree(sender, message.request_id)

    def receiveMsg_ActorDescription(self, message: ActorDescription, sender: Any) -> None:
        for entry in self.walks:
            walk = entry[0]
            if walk.owns(message.request_id):
                self._ask_actors(walk.described(message))
                self._finish_if_done(entry)
                return

    def _finish_if_done(self, entry: tuple[TreeWalk, Any, str]) -> None:
        if entry[0].done and entry in self.walks:
            self.walks.remove(entry)
            self._finish_walk(*entry)

    def _finish_walk(self, walk: TreeWalk, origin: Any, request_id: str) -> None:
        if isinstance(origin, int):
            self._respond(origin, 200, response_headers(request_id),
                          json_body({**walk.result(), "generated_at": time.time()}))
        else:
            self.send(origin, ActorTree(request_id, walk.result()))
