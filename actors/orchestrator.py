"""Orchestrator: the root actor (globalName ``aeyon-orchestrator``). Builds the tree, supervises every actor in
it, keeps the registry's latest copy, decides readiness, and relays requests that arrive at the root to the actor
that serves them.

Tree::

    Orchestrator
    ├─ EventBus, Discovery, Router, RateLimiter, HealthMonitor (─ HealthWorker x <=10)   control plane
    ├─ HttpShim x k                                                                      data plane: entries
    └─ GuardSupervisor x guards (─ GuardWorker x <=n)                                   data plane: calls

Multi-node: members that join this actor system's convention (``aeyon serve --join``) are announced by Thespian
(``notifyOnSystemRegistrationChanges``); guard supervisors are created on them by capability
(``system.placement``), and stay this root's children wherever they run. A guard on the leader moves to a member
that joins and may host it (its old supervisor answers what it took, then stops: ``Retire``); the guards of a member
that leaves or dies are placed again, on the leader or another member, with their saved breaker and health state.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from thespian.actors import ActorExitRequest, ActorSystemConventionUpdate, ChildActorExited, WakeupMessage

from actors.base import AeyonActor
from actors.discovery import Discovery
from actors.event_bus import EventBus
from actors.guard_supervisor import GuardSupervisor
from actors.guardian_sink import GuardianSink
from actors.health_monitor import HealthMonitor
from actors.http_shim import HttpShim
from actors.messages import (
    DescribeEntry,
    EntryDescribed,
    ListServices,
    Orchestrate,
    OrchestrateBatch,
    OrchestrationResult,
    RegisterService,
    RegistryChanged,
    ReplayEvents,
    ResultsBatch,
    ServiceList,
    ShutdownRequested,
    Start,
    Started,
    StartFailed,
    StopOrchestrator,
    Subscribe,
    UnregisterService,
    WatchShutdown,
)
from actors.messages.control import (
    AbandonPending,
    ActorDescription,
    Configure,
    ConfigureGuard,
    DescribeActor,
    DescribeTree,
    Drain,
    Drained,
    GuardStateSaved,
    HealthReport,
    Peers,
    Readiness,
    Reconfigure,
    Reconfigured,
    Refused,
    Relay,
    RestoreRegistry,
    Retire,
    ServiceSpec,
    ShimListening,
    StopAccepted,
    SupervisedService,
    Topology,
)
from actors.messages.events import ACTOR_RESTARTED, ARCHITECTURE_REVIEW_REQUESTED, Event, Publish
from actors.rate_limiter import RateLimiter
from actors.router import Router
from system import metrics
from system.clock import wallclock
from system.errors import ConfigError
from system.health import STATES
from system.placement import LEADER, Member, Placement
from system.reload import changed_fields, reconfigured
from system.restart import RestartIntensity

START_TIMEOUT_S = 15.0
ESCALATION_GRACE_S = 1.0
# After telling entries to answer what is left, how long to wait for them to say so before stopping anyway.
ABANDON_GRACE_S = 1.0
# A supervisor whose guard moved stops once it has answered what it took; at the latest after the longest request
# timeout (what it still holds then is answered service_unavailable as it stops).
RETIRE_MAX_S = 305.0

CONTROL_ACTORS: dict[str, type] = {
    "event_bus": EventBus,
    "discovery": Discovery,
    "router": Router,
    "rate_limiter": RateLimiter,
    "health_monitor": HealthMonitor,
    "guardian_sink": GuardianSink,  # only when GUARDIAN_ZERO_ENABLED
}


class _Shim:
    __slots__ = ("address", "listening")

    def __init__(self, address: Any):
        self.address = address
        self.listening = False


class _Guard:
    __slots__ = ("address", "health", "saved", "spec")

    def __init__(self, spec: ServiceSpec, address: Any = None):
        self.spec = spec
        self.address = address
        self.saved: dict[str, Any] | None = None
        self.health = "UNKNOWN"


class Orchestrator(AeyonActor):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.settings: Any = None
        self.starter: tuple[Any, str] | None = None
        self.started = False
        self.control: dict[str, Any] = {}
        self.shims: list[_Shim] = []
        self.guards: dict[str, _Guard] = {}
        self.registry: tuple[ServiceSpec, ...] = ()
        self.configured: set[str] = set()
        self.checked: set[str] = set()
        self.initialized = False
        self.watcher: Any = None
        self.escalated = ""
        self.draining: str | None = None
        self.environ: dict[str, str] = {}
        self.applied: dict[str, str] = {}
        self.accepting = True
        self.drained_shims: list[Any] = []
        self.drain_finished = False
        self.sink_pid: int | None = None
        self.http_address: tuple[str, int] | None = None
        self.exiting = False
        self.intensity = RestartIntensity()
        self.restarts = 0
        self._round_robin = itertools.count()
        self.placement = Placement()
        self.retiring: list[Any] = []  # supervisors of guards that moved, answering what they took

    # -- start -------------------------------------------------------------------------------------------------

    def receiveMsg_Start(self, message: Start, sender: Any) -> None:
        if self.settings is not None:
            if self.started and self.http_address is not None:
                self.send(sender, Started(message.request_id, *self.http_address, os.getsid(0)))
            else:
                self.send(sender, StartFailed(message.request_id, "the orchestrator is already starting"))
            return
        self.settings = message.settings
        self.environ = dict(message.environ)
        self.intensity = RestartIntensity(self.settings.restart_max, self.settings.restart_period_s)
        self.starter = (sender, message.request_id)
        self.notifyOnSystemRegistrationChanges(True)  # members joining and leaving (multi-node)
        self.configured = set(self.settings.guard_urls)
        self.initialized = self.settings.disable_health_checks or not self.configured
        sink = self.settings.guardian_zero_enabled and self.settings.guardian_zero_url
        for role, cls in CONTROL_ACTORS.items():
            if role != "guardian_sink" or sink:
                self.control[role] = self.createActor(cls)
        peers = self.peers()
        for address in self.control.values():
            self.send(address, Configure(self.settings, peers))
        if "guardian_sink" in self.control:
            self.send(self.control["guardian_sink"], DescribeActor("pid"))
        for _ in range(self.settings.shims):
            shim = _Shim(self.createActor(HttpShim))
            self.shims.append(shim)
            self.send(shim.address, Configure(self.settings, peers))
        self.wakeupAfter(START_TIMEOUT_S, payload="start-timeout")

    def peers(self) -> Peers:
        """The control actors' current addresses."""
        return Peers(self.myAddress, **{role: address for role, address in self.control.items()
                                        if role != "guardian_sink"})

    def receiveMsg_ShimListening(self, message: ShimListening, sender: Any) -> None:
        shim = next((s for s in self.shims if s.address == sender), None)
        if shim is None:
            return
        if message.error:
            self.log.error("%s", message.error)
            if not self.started and self.starter is not None:
                self.send(self.starter[0], StartFailed(self.starter[1], message.error))
                self.starter = None
            return
        shim.address = sender  # the address the shim itself reports; the one createActor gave is provisional
        shim.listening = True
        self.http_address = (message.host, message.port)
        self._push_topology()
        self._push_readiness()
        if not self.started and all(s.listening for s in self.shims) and self.starter is not None:
            self.started = True
            self.send(self.starter[0], Started(self.starter[1], message.host, message.port, os.getsid(0)))
            self.starter = None

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> None:
        if message.payload == "stop-accepting" and self.draining is not None:
            self.accepting = False
            self._push_readiness()
        if message.payload == "drain-deadline" and self.draining is not None and not self.drain_finished:
            # Whatever is still in flight is answered now rather than cut off; then stop (or in a moment).
            for shim in self.shims:
                if shim.listening:
                    self.send(shim.address, AbandonPending("the drain timeout passed"))
            self.wakeupAfter(ABANDON_GRACE_S, payload="drain-abandoned")
        if message.payload == "drain-abandoned":
            self._drain_done("the drain timeout passed; requests still in flight were answered 503")
        if message.payload == "escalate" and self.watcher is not None:
            self.exiting = True  # what dies from here on is the shutdown's doing: nothing is replaced
            self.send(self.watcher, ShutdownRequested("escalation", self.escalated))
        if (isinstance(message.payload, tuple) and message.payload[0] == "retire"
                and any(a == message.payload[1] for a in self.retiring)):
            self.send(message.payload[1], ActorExitRequest())
            self.retiring = [a for a in self.retiring if a != message.payload[1]]
            self._push_topology()
        if message.payload == "start-timeout" and not self.started and self.starter is not None:
            self.send(self.starter[0], StartFailed(self.starter[1], "the HTTP shim did not start in time"))
            self.starter = None

    # -- registry, supervisors, routes ---------------------------------------------------------------------------

    def receiveMsg_RegistryChanged(self, message: RegistryChanged, sender: Any) -> None:
        self.registry = message.specs
        wanted = {spec.name: spec for spec in message.specs}
        for name in list(self.guards):
            if name not in wanted:
                self.send(self.guards.pop(name).address, ActorExitRequest())
                self.placement.forget(name)
        for name, spec in wanted.items():
            guard = self.guards.get(name)
            if guard is None:
                guard = _Guard(spec)
                self.guards[name] = guard
                self._place(guard)
            elif guard.spec != spec:
                guard.spec = spec
                self.send(guard.address, ConfigureGuard(spec, self.settings, self.peers()))
        self._push_topology()
        self._service_gauges()

    def _service_gauges(self) -> None:
        metrics.ACTIVE_SERVICES.set(len(self.guards))
        for state in STATES:
            metrics.DISCOVERED_SERVICES.labels(state.lower()).set(
                sum(1 for g in self.guards.values() if g.health == state))

    def _place(self, guard: _Guard, node: str | None = None) -> None:
        """Create the guard's supervisor on ``node`` (by default where the placement rule says), handing it the
        state its previous supervisor saved."""
        name = guard.spec.name
        node = node or self.placement.choose(name)
        self.placement.place(name, node)
        guard.address = self.createActor(GuardSupervisor, targetActorRequirements=self.placement.requirements(node))
        self.send(guard.address, ConfigureGuard(guard.spec, self.settings, self.peers(), guard.saved))
        if node != LEADER:
            self.log.info("%s placed on member %s", name, node)

    def _push_topology(self) -> None:
        topology = Topology(
            tuple(SupervisedService(g.spec, g.address) for _, g in sorted(self.guards.items())),
            tuple(s.address for s in self.shims if s.listening),
            tuple(self.retiring),
        )
        for role in ("router", "health_monitor", "rate_limiter"):
            self.send(self.control[role], topology)

    # -- readiness ---------------------------------------------------------------------------------------------

    def receiveMsg_HealthReport(self, message: HealthReport, sender: Any) -> None:
        guard = self.guards.get(message.service)
        if guard is not None:
            guard.health = message.state
            self._service_gauges()
        if message.first:
            self.checked.add(message.service)
        if not self.initialized and self.configured <= self.checked:
            self.initialized = True
            self.log.info("initialized: every configured guard has had its first health check")
            self._push_readiness()

    def _push_readiness(self) -> None:
        draining = self.draining is not None
        readiness = Readiness(self.initialized and not draining, draining, self.accepting)
        for shim in self.shims:
            if shim.listening:
                self.send(shim.address, readiness)

    # -- supervision -------------------------------------------------------------------------------------------

    def receiveMsg_ChildActorExited(self, message: ChildActorExited, sender: Any) -> None:
        if self.exiting:
            return
        child = message.childAddress
        if any(a == child for a in self.retiring):
            # A supervisor whose guard moved has answered what it took. It stays listed as retiring until
            # RETIRE_MAX_S, when no request it held can still be waiting: a reply of its workers may still be
            # on its way to an entry, which must not take the request for lost meanwhile.
            return
        role = next((r for r, a in self.control.items() if a == child), None)
        shim = next((i for i, s in enumerate(self.shims) if s.address == child), None)
        guard = next((g for g in self.guards.values() if g.address == child), None)
        if role is None and shim is None and guard is None:
            return  # a supervisor we stopped on purpose
        if guard is not None and self.placement.node_of(guard.spec.name) != LEADER:
            # On a member: placed again (there, if it is still a member); its node's failures are not this
            # node's restart storm, so they do not count toward the escalation.
            self.restarts += 1
            metrics.ACTOR_RESTARTS.labels("GuardSupervisor").inc()
            self._restart_guard(guard)
            return
        if not self.intensity.allow():
            self._escalate(f"more than {self.intensity.max_restarts} restarts in {self.intensity.period_s:g} s")
            return
        self.restarts += 1
        kind = CONTROL_ACTORS[role].__name__ if role else "HttpShim" if shim is not None else "GuardSupervisor"
        metrics.ACTOR_RESTARTS.labels(kind).inc()
        if role is not None:
            self._restart_control(role)
        elif shim is not None:
            self._restart_shim(shim)
        elif guard is not None:
            self._restart_guard(guard)

    def _restart_control(self, role: str) -> None:
        self.log.warning("%s died; restarting it", role)
        self.control[role] = self.createActor(CONTROL_ACTORS[role])
        peers = self.peers()
        if role == "discovery":
            self.send(self.control[role], RestoreRegistry(self.registry, peers))
        else:
            self.send(self.control[role], Configure(self.settings, peers))
        if role == "guardian_sink":
            self.send(self.control[role], DescribeActor("pid"))
        self._push_peers(peers, skip=self.control[role])
        self._push_topology()
        self._publish(ACTOR_RESTARTED, {"actor": role, "restarts": self.restarts})

    def _restart_shim(self, index: int) -> None:
        self.log.warning("HTTP shim %d died; restarting it", index)
        shim = self.shims[index]
        shim.address = self.createActor(HttpShim)
        shim.listening = False
        self.send(shim.address, Configure(self.settings, self.peers()))
        self._publish(ACTOR_RESTARTED, {"actor": f"http_shim-{index}", "restarts": self.restarts})

    def _restart_guard(self, guard: _Guard) -> None:
        self.log.warning("the supervisor of %s died; restarting it", guard.spec.name)
        self._place(guard)
        self._push_topology()
        self._publish(ACTOR_RESTARTED, {"actor": guard.spec.name, "restarts": self.restarts,
                                        "node": self.placement.node_of(guard.spec.name)})

    # -- members (multi-node) ----------------------------------------------------------------------------------

    def receiveMsg_ActorSystemConventionUpdate(self, message: ActorSystemConventionUpdate, sender: Any) -> None:
        if self.exiting:
            return
        if message.remoteAdded:
            member = Member.from_capabilities(message.remoteAdminAddress, message.remoteCapabilities or {})
            if member is None:
                return
            self.placement.join(member)
            self.log.info("member %s joined (may host: %s)", member.name,
                          "any guard" if member.guards is None else ", ".join(sorted(member.guards)))
            moves = self.placement.moves(self.guards)
            for name, node in moves:
                guard = self.guards[name]
                old = guard.address
                self._place(guard, node)
                self.retiring.append(old)
                self.send(old, Retire(tuple(s.address for s in self.shims if s.listening)))
                self.wakeupAfter(RETIRE_MAX_S, payload=("retire", old))
            if moves:
                self._push_topology()
            return
        lost = self.placement.lost(message.remoteAdminAddress)
        if lost is None:
            return
        names = self.placement.on_member(lost.name)
        self.log.warning("member %s left or was lost; placing its guards again: %s", lost.name,
                         ", ".join(names) or "none")
        for name in names:
            lost_guard = self.guards.get(name)
            if lost_guard is None:
                self.placement.forget(name)
                continue
            self.restarts += 1
            metrics.ACTOR_RESTARTS.labels("GuardSupervisor").inc()
            self._place(lost_guard)
            self._publish(ACTOR_RESTARTED, {"actor": name, "restarts": self.restarts, "reason": "member lost",
                                            "node": self.placement.node_of(name)})
        if names:
            self._push_topology()

    def _push_peers(self, peers: Peers, skip: Any) -> None:
        configure = Configure(self.settings, peers)
        for address in self.control.values():
            if address != skip:
                self.send(address, configure)
        for shim in self.shims:
            self.send(shim.address, configure)
        for guard in self.guards.values():
            self.send(guard.address, ConfigureGuard(guard.spec, self.settings, peers))

    def receiveMsg_ActorDescription(self, message: ActorDescription, sender: Any) -> None:
        if self.control.get("guardian_sink") == sender:
            self.sink_pid = message.pid

    def receiveMsg_GuardStateSaved(self, message: GuardStateSaved, sender: Any) -> None:
        guard = self.guards.get(message.service)
        if guard is not None and guard.address == sender:
            guard.saved = message.state

    def _publish(self, event_type: str, data: dict[str, Any]) -> None:
        bus = self.control.get("event_bus")
        if bus is not None:
            self.send(bus, Publish(Event(event_type, wallclock(), data, source="orchestrator")))

    def _escalate(self, reason: str) -> None:
        self.log.critical("restart intensity exceeded (%s): stopping the orchestrator", reason)
        self.escalated = f"restart intensity exceeded: {reason}"
        self._publish(ARCHITECTURE_REVIEW_REQUESTED, {"reason": self.escalated})
        # A moment for the event to reach its subscribers (and Guardian Zero's operators) before everything stops.
        self.wakeupAfter(ESCALATION_GRACE_S, payload="escalate")

    # -- inspection --------------------------------------------------------------------------------------------

    def children(self) -> list[tuple[Any, ...]]:
        """Control actors by role, shims, and guard supervisors by service name."""
        out: list[tuple[Any, ...]] = [(role, address) for role, address in self.control.items()
                                      if role != "guardian_sink"]
        if "guardian_sink" in self.control:
            # It blocks while it posts to Guardian Zero: described here, never asked.
            out.append(("guardian_sink", self.control["guardian_sink"],
                        {"actor_class": "GuardianSink", "pid": self.sink_pid, "state": {}}))
        out += [(f"http_shim-{i}", shim.address) for i, shim in enumerate(self.shims)]
        out += [(name, guard.address) for name, guard in sorted(self.guards.items())]
        return out

    def state(self) -> dict[str, Any]:
        """For inspection."""
        return {"started": self.started, "initialized": self.initialized, "restarts": self.restarts,
                "services": len(self.registry), "watched": self.watcher is not None, **self.placement.describe(),
                "retiring": len(self.retiring)}

    # -- requests that arrive at the root ----------------------------------------------------------------------

    def _entry(self) -> Any:
        listening = [s for s in self.shims if s.listening] or self.shims
        return listening[next(self._round_robin) % len(listening)].address

    def receiveMsg_Orchestrate(self, message: Orchestrate, sender: Any) -> None:
        if not self.started:
            self.send(sender, OrchestrationResult(
                message.request_id or "", message.service, "error", error_code="service_unavailable",
                error_message="the orchestrator is not started", http_status=503, retry_after=1))
            return
        self.send(self._entry(), Relay(message, sender))

    def receiveMsg_OrchestrateBatch(self, message: OrchestrateBatch, sender: Any) -> None:
        if not self.started:
            self.send(sender, ResultsBatch(tuple(OrchestrationResult(
                call.request_id or "", call.service, "error", error_code="service_unavailable",
                error_message="the orchestrator is not started", http_status=503, retry_after=1)
                for call in message.calls)))
            return
        self.send(self._entry(), Relay(message, sender))

    def receiveMsg_ListServices(self, message: ListServices, sender: Any) -> None:
        if not self.started:
            self.send(sender, ServiceList(message.request_id, ()))
            return
        self.send(self._entry(), Relay(message, sender))

    # Registrations go through an entry, which answers once its own route table shows the change.
    def receiveMsg_RegisterService(self, message: RegisterService, sender: Any) -> None:
        self._relay_to_entry(message, sender)

    def receiveMsg_UnregisterService(self, message: UnregisterService, sender: Any) -> None:
        self._relay_to_entry(message, sender)

    def _relay_to_entry(self, message: Any, sender: Any) -> None:
        if not self.started:
            self.send(sender, Refused(message.request_id, "service_unavailable", "the orchestrator is not started"))
            return
        self.send(self._entry(), Relay(message, sender))

    # Event subscriptions and replays from outside the actor system go to the EventBus.
    def receiveMsg_Subscribe(self, message: Subscribe, sender: Any) -> None:
        self.send(self.control["event_bus"], Relay(message, sender))

    def receiveMsg_ReplayEvents(self, message: ReplayEvents, sender: Any) -> None:
        self.send(self.control["event_bus"], Relay(message, sender))

    def receiveMsg_DescribeTree(self, message: DescribeTree, sender: Any) -> None:
        self._relay_to_entry(message, sender)

    def receiveMsg_DescribeEntry(self, message: DescribeEntry, sender: Any) -> None:
        self.send(sender, EntryDescribed(message.request_id, tuple(s.address for s in self.shims if s.listening)))

    # -- stopping ----------------------------------------------------------------------------------------------

    def receiveMsg_WatchShutdown(self, message: WatchShutdown, sender: Any) -> None:
        self.watcher = sender

    def receiveMsg_StopOrchestrator(self, message: StopOrchestrator, sender: Any) -> None:
        if self.watcher is not None:
            if message.drain and self.started:
                # An operator asked: no grace for load balancers, but the requests in flight are answered.
                self._drain(0.0, self.settings.drain_timeout_s, "aeyon stop")
            else:
                self.exiting = True
                self.send(self.watcher, ShutdownRequested(message.request_id, "aeyon stop --now"))
        self.send(sender, StopAccepted(message.request_id, self.watcher is not None, os.getsid(0)))

    # -- hot reload --------------------------------------------------------------------------------------------

    def receiveMsg_Reconfigure(self, message: Reconfigure, sender: Any) -> None:
        try:
            settings, applied = reconfigured(self.environ, self.applied, message.values, self.settings)
        except ConfigError as exc:
            self.send(sender, Refused(message.request_id, "invalid_request", str(exc)))
            return
        changed = changed_fields(self.settings, settings)
        self.settings, self.applied = settings, applied
        self.intensity.max_restarts, self.intensity.period_s = settings.restart_max, settings.restart_period_s
        self.log.info("reconfigured: %s", ", ".join(changed) or "nothing changed")
        # Every actor applies what concerns it and keeps its state (breaker windows, health, buckets).
        peers = self.peers()
        configure = Configure(settings, peers)
        for address in self.control.values():
            self.send(address, configure)
        for shim in self.shims:
            self.send(shim.address, configure)
        for guard in self.guards.values():
            self.send(guard.address, ConfigureGuard(guard.spec, settings, peers))
        self._push_topology()
        self.send(sender, Reconfigured(message.request_id, tuple(changed)))

    # -- graceful drain ----------------------------------------------------------------------------------------

    def receiveMsg_Drain(self, message: Drain, sender: Any) -> None:
        self._drain(message.grace_s, message.timeout_s, "signal")

    def _drain(self, grace_s: float, timeout_s: float, why: str) -> None:
        if self.draining is not None:
            return
        self.log.info("draining (%s): /ready is 503; new requests taken for %g s, then refused; in-flight ones get "
                      "%g s more", why, grace_s, timeout_s)
        self.draining = why
        self.accepting = grace_s > 0
        self.drained_shims = []
        self._push_readiness()
        self.wakeupAfter(grace_s, payload="stop-accepting")
        self.wakeupAfter(grace_s + timeout_s, payload="drain-deadline")

    def receiveMsg_Drained(self, message: Drained, sender: Any) -> None:
        if self.draining is None or self.accepting:
            return
        if not any(address == sender for address in self.drained_shims):
            self.drained_shims.append(sender)
        if all(any(s.address == d for d in self.drained_shims) for s in self.shims if s.listening):
            self._drain_done("every request answered" if message.in_flight == 0 else
                             f"{message.in_flight} requests still in flight were answered 503")

    def _drain_done(self, how: str) -> None:
        if self.watcher is not None and not self.drain_finished:
            self.drain_finished = True
            self.log.info("drained: %s", how)
            self.exiting = True
            self.send(self.watcher, ShutdownRequested("drained", f"drained after {self.draining}: {how}"))

    def receiveMsg_ActorExitRequest(self, message: ActorExitRequest, sender: Any) -> None:
        # Children stop with us; their exits must not be taken for failures and replaced (that would leak
        # processes after shutdown).
        self.exiting = True
