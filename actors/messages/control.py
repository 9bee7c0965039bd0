"""Control-plane messages: start-up and wiring, the service registry, routes, readiness and shutdown.

Control actors own state and push it to the actors that need it (route tables to entries, readiness to entries,
supervisors to the health monitor), so the per-request path never waits on them.
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class Start:
    """Sent by ``aeyon serve`` to the root: build the tree for these settings (a ``system.config.Settings``)."""

    request_id: str
    settings: Any
    # The environment the settings were read from (their variables only): hot reloads are checked against it.
    environ: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Started:
    """The tree is up and the HTTP shim listens on ``http_host``:``http_port``."""

    request_id: str
    http_host: str
    http_port: int
    # The actor system's session id (Thespian's admin calls setsid): what to reap if shutdown leaves anything.
    session_id: int = 0


@attrs.frozen
class StartFailed:
    """The tree could not be built; ``reason`` is one line for the operator."""

    request_id: str
    reason: str


@attrs.frozen
class Peers:
    """The addresses of the control actors, handed to every actor the root creates."""

    orchestrator: Any
    event_bus: Any
    discovery: Any
    router: Any
    rate_limiter: Any
    health_monitor: Any


@attrs.frozen
class Configure:
    """Root -> child: your settings and peers; sent again whenever a peer is replaced."""

    settings: Any
    peers: Peers


@attrs.frozen
class ServiceSpec:
    """A registered guard: its name (what callers put in ``service``), type, base URL and metadata.

    ``source`` says where it came from: "env", "embedded" or "api".
    """

    name: str
    service_type: str
    url: str
    metadata: dict[str, Any] = attrs.field(factory=dict)
    source: str = "api"


@attrs.frozen
class SupervisedService:
    """A registered guard and the address of the supervisor that owns it."""

    spec: ServiceSpec
    supervisor: Any


@attrs.frozen
class Topology:
    """Root -> Router and HealthMonitor: the current supervisors and entries, and the supervisors that a guard
    moved away from (to another node) and that still answer the calls they took (``retiring``)."""

    services: tuple[SupervisedService, ...]
    entries: tuple[Any, ...]
    retiring: tuple[Any, ...] = ()


@attrs.frozen
class Retire:
    """Root -> guard supervisor: your guard moved to another node; once each of ``entries`` has said it sends you
    nothing more (``EntrySwitched``) and you have answered what you took, stop."""

    entries: tuple[Any, ...] = ()


@attrs.frozen
class EntrySwitched:
    """Entry -> retiring guard supervisor: my route table (of this ``version``) has the new supervisor; no call of
    mine follows this."""

    version: int


@attrs.frozen
class ConfigureGuard:
    """Root -> guard supervisor: the guard you own (sent at creation and when its registration changes)."""

    spec: ServiceSpec
    settings: Any
    peers: Peers
    # What the previous supervisor of this guard saved (GuardStateSaved), given back on restart.
    saved: dict[str, Any] | None = None


@attrs.frozen
class RegisterService:
    """Add a guard to the registry; answered with ``ServiceRegistered`` or ``Refused``."""

    request_id: str
    name: str
    service_type: str
    url: str
    metadata: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class ServiceRegistered:
    """The guard is in the registry."""

    request_id: str
    spec: ServiceSpec


@attrs.frozen
class UnregisterService:
    """Remove a guard from the registry; answered with ``ServiceUnregistered`` or ``Refused``."""

    request_id: str
    name: str


@attrs.frozen
class ServiceUnregistered:
    """The guard is gone from the registry."""

    request_id: str
    name: str


@attrs.frozen
class Refused:
    """A control request that was not carried out: ``code`` is one of the contract's error codes."""

    request_id: str
    code: str
    message: str


@attrs.frozen
class RegistryChanged:
    """Discovery -> root: the whole registry after a change."""

    specs: tuple[ServiceSpec, ...]


@attrs.frozen
class RoutesChanged:
    """Router -> entries: the whole route table; ``version`` grows with every change. Requests already sent to a
    ``retiring`` supervisor stay pending: it answers them."""

    version: int
    routes: tuple[Any, ...]
    retiring: tuple[Any, ...] = ()


@attrs.frozen
class HealthReport:
    """Guard supervisor -> root: the guard's health state after a check (``first`` for its first check)."""

    service: str
    state: str
    first: bool


@attrs.frozen
class Readiness:
    """Root -> entries: whether ``GET /ready`` answers 200; while ``draining``, answers close their connections,
    and once ``accepting`` is false new requests are refused."""

    ready: bool
    draining: bool = False
    accepting: bool = True


@attrs.frozen
class ListServices:
    """Ask for every registered guard with its live state; answered with ``ServiceList``."""

    request_id: str


@attrs.frozen
class ServiceList:
    """Registered guards as JSON-ready dicts (the ``services`` list of ``GET /v1/services``)."""

    request_id: str
    services: tuple[dict[str, Any], ...]


@attrs.frozen
class DescribeService:
    """Entry -> guard supervisor: your live state, please; answered with ``ServiceDescription``."""

    request_id: str


@attrs.frozen
class ServiceDescription:
    """A guard supervisor's live state: health, circuit, in_flight, queue and counters."""

    request_id: str
    service: str
    state: dict[str, Any]


@attrs.frozen
class DescribeEntry:
    """Ask the root which actors take ``Orchestrate`` directly; answered with ``EntryDescribed``."""

    request_id: str


@attrs.frozen
class EntryDescribed:
    """The entries (HTTP shims) that accept ``Orchestrate`` without the root's relay."""

    request_id: str
    entries: tuple[Any, ...]


@attrs.frozen
class Relay:
    """A request passed on by the root: the receiver handles ``inner`` as if ``reply_to`` had sent it."""

    inner: Any
    reply_to: Any


@attrs.frozen
class StopOrchestrator:
    """Ask the orchestrator to stop (``aeyon stop``); the process that runs ``aeyon serve`` shuts it down, after
    the requests in flight are answered (``drain``) or at once."""

    request_id: str
    drain: bool = True


@attrs.frozen
class WatchShutdown:
    """Sent by the ``aeyon serve`` process: tell me (``ShutdownRequested``) when someone asks to stop."""

    request_id: str


@attrs.frozen
class ShutdownRequested:
    """Root -> the ``aeyon serve`` process: stop the actor system now."""

    request_id: str
    reason: str


@attrs.frozen
class ShimListening:
    """HTTP shim -> root: bound and listening (or ``error`` if the port could not be bound)."""

    host: str
    port: int
    error: str | None = None


@attrs.frozen
class RestoreRegistry:
    """Root -> a replacement Discovery: the registry as it was before the old one died."""

    specs: tuple[ServiceSpec, ...]
    peers: Peers


@attrs.frozen
class StopAccepted:
    """Reply to ``StopOrchestrator``: ``watched`` when the ``aeyon serve`` process was told to stop the system;
    otherwise nobody is watching and the caller must shut the actor system down itself."""

    request_id: str
    watched: bool
    session_id: int = 0


@attrs.frozen
class DescribeActor:
    """Any actor: describe yourself (answered with ``ActorDescription``); used to draw the live actor tree."""

    request_id: str


@attrs.frozen
class ActorDescription:
    """An actor's own account: class, process, its state and its children as (name, address) pairs."""

    request_id: str
    actor_class: str
    pid: int
    address: str
    state: dict[str, Any]
    # (name, address) for children to ask, or (name, address, node) for children the parent describes itself:
    # workers that may be blocked in a call are never asked (a message to a busy worker would wait).
    children: tuple[tuple[Any, ...], ...] = ()


@attrs.frozen
class DescribeTree:
    """Ask for the live actor tree (``GET /v1/actors``); answered with ``ActorTree``."""

    request_id: str


@attrs.frozen
class ActorTree:
    """The live actor tree: nested nodes ``{name, actor_class, address, pid, state, responsive, children}``."""

    request_id: str
    tree: dict[str, Any]


@attrs.frozen
class GuardStateSaved:
    """Guard supervisor -> root: breaker and health state to give back if the supervisor is restarted."""

    service: str
    state: dict[str, Any]


@attrs.frozen
class RateLimitGrant:
    """RateLimiter -> entry: its part of every identifier's budget (``share`` of ``per_minute``)."""

    per_minute: int
    share: float


@attrs.frozen
class ViolationsObserved:
    """Entry -> RateLimiter: security violations since the last report, as (identifier, violation type,
    client address)."""

    violations: tuple[tuple[str, str, str], ...]


@attrs.frozen
class Drain:
    """``aeyon serve`` (on SIGTERM) or ``aeyon stop`` -> root: stop gracefully. ``/ready`` turns 503 at once, new
    requests are still taken for ``grace_s`` (while load balancers notice), then refused; requests in flight get
    until ``timeout_s`` after that; then the root asks the serve process to stop everything."""

    request_id: str
    grace_s: float
    timeout_s: float


@attrs.frozen
class Drained:
    """Entry -> root: not accepting, and nothing left in flight."""

    in_flight: int = 0


@attrs.frozen
class AbandonPending:
    """Root -> entries, at the drain's deadline: answer every request still in flight now (503), then report
    ``Drained``."""

    reason: str


@attrs.frozen
class Reconfigure:
    """Change settings while running (hot reload): ``values`` by variable name; answered with ``Reconfigured``
    or ``Refused`` (the whole change refused, the running settings kept)."""

    request_id: str
    values: dict[str, Any]


@attrs.frozen
class Reconfigured:
    """The change is in effect; ``changed`` names the settings that differ now."""

    request_id: str
    changed: tuple[str, ...]
