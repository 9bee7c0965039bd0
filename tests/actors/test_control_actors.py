"""The control plane's actors: Discovery (registry and events), Router (route tables pushed to entries),
EventBus (publish/subscribe, replay, interest), HealthMonitor with its workers."""

from __future__ import annotations

import time

import responses
from thespian.actors import ActorSystem

from actors.discovery import Discovery
from actors.event_bus import EventBus
from actors.health_monitor import HealthMonitor
from actors.messages import (
    Event,
    EventsAck,
    EventsDelivered,
    EventsInterest,
    HealthChecked,
    Publish,
    RegisterService,
    RegistryChanged,
    ReplayEvents,
    RoutesChanged,
    ServiceRegistered,
    ServiceSpec,
    ServiceUnregistered,
    Subscribe,
    Subscribed,
    UnregisterService,
)
from actors.messages.control import Configure, Peers, Refused, SupervisedService, Topology
from actors.messages.events import (
    REQUEST_FAILED,
    REQUEST_ROUTED,
    SERVICE_DISCOVERED,
    SERVICE_REGISTERED,
    SERVICE_UNREGISTERED,
    RegisterPublisher,
)
from actors.router import Router
from tests.actors.conftest import collect, collect_for, make_settings, of, request


def _events(received: list, event_type: str) -> list[Event]:
    return [m.event for m in of(Publish, received) if m.event.event_type == event_type]


def test_discovery_loads_the_environment_and_tells_the_root(asys: ActorSystem, peers: Peers) -> None:
    discovery = asys.createActor(Discovery)
    urls = {"tokenguard": "http://t:1", "biasguard": "http://b:2"}
    asys.tell(discovery, Configure(make_settings(guard_urls=urls), peers))
    received = collect(asys, lambda got: bool(of(RegistryChanged, got)) and len(_events(got, SERVICE_DISCOVERED)) == 2)
    specs = of(RegistryChanged, received)[0].specs
    assert [(s.name, s.service_type, s.url, s.source) for s in specs] == [
        ("biasguard", "biasguard", "http://b:2", "env"), ("tokenguard", "tokenguard", "http://t:1", "env")]


def test_discovery_registers_refuses_and_unregisters(asys: ActorSystem, peers: Peers) -> None:
    discovery = asys.createActor(Discovery)
    asys.tell(discovery, Configure(make_settings(), peers))
    collect(asys, lambda got: bool(of(RegistryChanged, got)))
    reply = request(asys, discovery, RegisterService("r1", "extra", "tokenguard", "http://x:1", {"a": 1}))
    assert isinstance(reply, ServiceRegistered) and reply.spec.name == "extra" and reply.spec.metadata == {"a": 1}
    received = collect(asys, lambda got: bool(of(RegistryChanged, got)) and bool(_events(got, SERVICE_REGISTERED)))
    assert [s.name for s in of(RegistryChanged, received)[0].specs] == ["extra"]
    duplicate = request(asys, discovery, RegisterService("r2", "extra", "tokenguard", "http://x:1"))
    assert isinstance(duplicate, Refused) and duplicate.code == "conflict" and duplicate.request_id == "r2"
    bad = request(asys, discovery, RegisterService("r3", "x y", "tokenguard", "http://x:1"))
    assert isinstance(bad, Refused) and bad.code == "invalid_request"
    gone = request(asys, discovery, UnregisterService("r4", "extra"))
    assert gone == ServiceUnregistered("r4", "extra")
    received = collect(asys, lambda got: bool(_events(got, SERVICE_UNREGISTERED)))
    missing = request(asys, discovery, UnregisterService("r5", "extra"))
    assert isinstance(missing, Refused) and missing.code == "unknown_service"


def test_router_pushes_one_route_table_per_change_to_every_entry(asys: ActorSystem, peers: Peers) -> None:
    router = asys.createActor(Router)
    spec = ServiceSpec("sec", "securityguard", "http://s:1/", {"path": "/v2/check"}, "api")
    asys.tell(router, Topology((SupervisedService(spec, peers.discovery),), (peers.event_bus,)))
    table = of(RoutesChanged, collect(asys, lambda got: bool(of(RoutesChanged, got))))[0]
    first_version = table.version
    (route,) = table.routes
    assert (route.service, route.endpoint, route.transform, route.metadata) == (
        "sec", "http://s:1/v2/check", "as_is", {"path": "/v2/check"})
    asys.tell(router, Topology((), (peers.event_bus,)))
    table = of(RoutesChanged, collect(asys, lambda got: bool(of(RoutesChanged, got))))[0]
    assert table.routes == ()
    assert table.version > first_version


def test_event_bus_delivers_replays_and_tells_publishers_the_interest(asys: ActorSystem, peers: Peers) -> None:
    bus = asys.createActor(EventBus)
    asys.tell(bus, Configure(make_settings(), peers))
    asys.tell(bus, Publish(Event(SERVICE_REGISTERED, time.time(), {"service_name": "a"})))
    subscribed = request(asys, bus, Subscribe("s1", (REQUEST_FAILED, SERVICE_REGISTERED), since=0))
    assert isinstance(subscribed, Subscribed)
    assert [e.event_type for e in subscribed.replay] == [SERVICE_REGISTERED]
    assert subscribed.replay[0].sequence == 1
    asys.tell(bus, Publish(Event(REQUEST_ROUTED, time.time())))
    asys.tell(bus, Publish(Event(REQUEST_FAILED, time.time(), {"code": "upstream_error"})))
    delivered = of(EventsDelivered, collect(asys, lambda got: bool(of(EventsDelivered, got))))
    assert [e.event_type for e in delivered[0].events] == [REQUEST_FAILED]
    assert delivered[0].events[0].sequence == 3
    # The next batch waits for the acknowledgement of this one.
    asys.tell(bus, Publish(Event(REQUEST_FAILED, time.time(), {"code": "upstream_timeout"})))
    assert not of(EventsDelivered, collect_for(asys, 0.3))
    asys.tell(bus, EventsAck(delivered[0].batch_id))
    later = of(EventsDelivered, collect(asys, lambda got: bool(of(EventsDelivered, got))))
    assert later[0].events[0].data == {"code": "upstream_timeout"}
    replayed = request(asys, bus, ReplayEvents("r1", since=1, event_types=(REQUEST_FAILED,)))
    assert [e.sequence for e in replayed.events] == [3, 4]


def test_event_bus_pushes_interest_changes_to_registered_publishers(asys: ActorSystem, peers: Peers) -> None:
    bus = asys.createActor(EventBus)
    asys.tell(bus, Configure(make_settings(), peers))
    # The test registers as a publisher (standing for an entry): nobody wants per-request events yet.
    assert asys.ask(bus, RegisterPublisher("p1"), 5) == EventsInterest(frozenset())
    # A subscriber to every type makes the per-request ones wanted, and publishers are told.
    asys.tell(bus, Subscribe("s1", ()))
    received = collect(asys, lambda got: any(isinstance(m, EventsInterest) for m in got))
    assert of(EventsInterest, received)[-1].event_types == frozenset({REQUEST_ROUTED, REQUEST_FAILED})


@responses.activate
def test_health_monitor_checks_each_guard_and_tells_its_supervisor(asys: ActorSystem, peers: Peers) -> None:
    responses.add(responses.GET, "http://a:1/health", json={"status": "healthy"})
    responses.add(responses.GET, "http://b:2/health", json={"status": "degraded"})
    responses.add(responses.GET, "http://c:3/health", status=500)
    monitor = asys.createActor(HealthMonitor)
    asys.tell(monitor, Configure(make_settings(disable_health_checks=False), peers))
    services = tuple(SupervisedService(ServiceSpec(n, "tokenguard", u), peers.router)
                     for n, u in (("a", "http://a:1"), ("b", "http://b:2"), ("c", "http://c:3")))
    asys.tell(monitor, Topology(services, ()))
    checked = of(HealthChecked, collect(asys, lambda got: len(of(HealthChecked, got)) == 3))
    assert {m.service: m.state for m in checked} == {"a": "HEALTHY", "b": "DEGRADED", "c": "UNHEALTHY"}
    assert {m.service: m.status_code for m in checked} == {"a": 200, "b": 200, "c": 500}


@responses.activate
def test_a_failed_health_check_is_tried_again_before_the_guard_is_reported_unhealthy(asys: ActorSystem,
                                                                                     peers: Peers) -> None:
    # Fails once, then passes: the supervisor only ever hears HEALTHY.
    responses.add(responses.GET, "http://a:1/health", status=503)
    responses.add(responses.GET, "http://a:1/health", json={"status": "healthy"})
    monitor = asys.createActor(HealthMonitor)
    asys.tell(monitor, Configure(make_settings(disable_health_checks=False), peers))
    asys.tell(monitor, Topology((SupervisedService(ServiceSpec("a", "tokenguard", "http://a:1"), peers.router),), ()))
    checked = of(HealthChecked, collect(asys, lambda got: bool(of(HealthChecked, got))))
    assert [m.state for m in checked] == ["HEALTHY"]
    assert len(responses.calls) == 2


@responses.activate
def test_a_guard_failing_every_attempt_is_reported_unhealthy_once(asys: ActorSystem, peers: Peers) -> None:
    responses.add(responses.GET, "http://a:1/health", status=503)
    monitor = asys.createActor(HealthMonitor)
    asys.tell(monitor, Configure(make_settings(disable_health_checks=False), peers))
    asys.tell(monitor, Topology((SupervisedService(ServiceSpec("a", "tokenguard", "http://a:1"), peers.router),), ()))
    checked = of(HealthChecked, collect(asys, lambda got: bool(of(HealthChecked, got))))
    assert [(m.state, m.status_code) for m in checked] == [("UNHEALTHY", 503)]
    assert len(responses.calls) == 3  # CHECK_ATTEMPTS
