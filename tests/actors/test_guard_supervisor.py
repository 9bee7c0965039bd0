"""GuardSupervisor and GuardWorker together: admission, the bulkhead, workers' replies, health refusals."""

from __future__ import annotations

import time
from typing import Any

import pytest
from thespian.actors import ActorSystem

from actors.guard_supervisor import GuardSupervisor
from actors.messages import CallAccepted, CallBatch, CallGuard, HealthChecked, RepliesBatch, ServiceSpec
from actors.messages.control import (
    ConfigureGuard,
    DescribeService,
    GuardStateSaved,
    HealthReport,
    Peers,
    ServiceDescription,
)
from actors.messages.events import CIRCUIT_BREAKER_OPENED, SERVICE_HEALTH_CHANGED, Publish
from system.breaker import BreakerConfig, CircuitBreaker
from tests.actors.conftest import Entry as _Entry
from tests.actors.conftest import collect, make_settings, of
from tests.support.canned_guard import CannedGuard, http_answer
from tests.support.fake_guard import refused_port

# Calls the guard never gets (admission, refusals) go to a port nobody listens on.
URL = f"http://127.0.0.1:{refused_port()}"


@pytest.fixture
def guard() -> Any:
    with CannedGuard(http_answer(200, b'{"safe": true}')) as canned:
        yield canned


def _supervisor(asys: ActorSystem, peers: Peers, url: str = URL, **settings: Any) -> Any:
    supervisor = asys.createActor(GuardSupervisor)
    spec = ServiceSpec("tokenguard", "tokenguard", url, {}, "env")
    asys.tell(supervisor, ConfigureGuard(spec, make_settings(**settings), peers))
    return supervisor


def _call(key: int, reply_to: Any, timeout: float = 5.0, url: str = URL) -> CallGuard:
    return CallGuard(key, f"r{key}", url + "/scan", b'{"text":"x"}', time.time() + timeout, reply_to)


def _base(guard: CannedGuard) -> str:
    return guard.url.removesuffix("/scan")


def _replies(received: list[Any]) -> dict[int, Any]:
    out = {}
    for message in of(CallAccepted, received):
        out.update({r.key: r for r in message.replies})
    for message in of(RepliesBatch, received):
        out.update({r.key: r for r in message.replies})
    return out


def test_calls_are_made_by_workers_and_every_call_is_answered_once(asys: ActorSystem, peers: Peers,
                                                                   guard: CannedGuard) -> None:
    supervisor = _supervisor(asys, peers, _base(guard))
    entry = asys.createActor(_Entry)
    asys.tell(entry, ("attach", supervisor))
    asys.tell(entry, CallBatch(1, "tokenguard", tuple(_call(k, entry, url=_base(guard)) for k in range(3))))
    received = collect(asys, lambda got: len(_replies(got)) == 3)
    replies = _replies(received)
    assert sorted(replies) == [0, 1, 2]
    assert {r.outcome for r in replies.values()} == {"success"}
    assert replies[0].body == b'{"safe": true}'
    assert len(of(CallAccepted, received)) == 1
    assert [r.headers["X-Request-ID"] for r in guard.received] == ["r0", "r1", "r2"]


def test_a_guard_failure_is_an_upstream_error_reply(asys: ActorSystem, peers: Peers, guard: CannedGuard) -> None:
    guard.answer = http_answer(503, b'{"e": 1}')
    supervisor = _supervisor(asys, peers, _base(guard))
    entry = asys.createActor(_Entry)
    asys.tell(entry, ("attach", supervisor))
    asys.tell(entry, CallBatch(1, "tokenguard", (_call(7, entry, url=_base(guard)),)))
    reply = _replies(collect(asys, lambda got: 7 in _replies(got)))[7]
    assert (reply.outcome, reply.status) == ("upstream_error", 503)


def test_a_guard_never_yet_healthy_gets_no_traffic(asys: ActorSystem, peers: Peers) -> None:
    supervisor = _supervisor(asys, peers, disable_health_checks=False)
    entry = asys.createActor(_Entry)
    asys.tell(entry, ("attach", supervisor))
    asys.tell(entry, CallBatch(1, "tokenguard", (_call(1, entry),)))
    reply = _replies(collect(asys, lambda got: 1 in _replies(got)))[1]
    assert reply.outcome == "service_unavailable"
    assert reply.retry_after and reply.retry_after >= 1


def test_a_passing_health_check_admits_traffic_and_is_reported(asys: ActorSystem, peers: Peers,
                                                               guard: CannedGuard) -> None:
    supervisor = _supervisor(asys, peers, _base(guard), disable_health_checks=False)
    asys.tell(supervisor, HealthChecked("h1", "tokenguard", "HEALTHY", 200, "ok", 0.01))
    received = collect(asys, lambda got: bool(of(HealthReport, got)) and bool(of(Publish, got)))
    assert of(HealthReport, received)[0] == HealthReport("tokenguard", "HEALTHY", True)
    event = of(Publish, received)[0].event
    assert event.event_type == SERVICE_HEALTH_CHANGED
    assert (event.data["previous"], event.data["state"]) == ("UNKNOWN", "HEALTHY")
    entry = asys.createActor(_Entry)
    asys.tell(entry, ("attach", supervisor))
    asys.tell(entry, CallBatch(1, "tokenguard", (_call(1, entry, url=_base(guard)),)))
    assert _replies(collect(asys, lambda got: 1 in _replies(got)))[1].outcome == "success"


def test_a_full_queue_answers_overloaded(asys: ActorSystem, peers: Peers) -> None:
    # No guard listens: the calls fail fast, but admission happens before any of them is made.
    supervisor = _supervisor(asys, peers, workers_per_guard=1, queue_per_guard=2)
    entry = asys.createActor(_Entry)
    asys.tell(entry, ("attach", supervisor))
    asys.tell(entry, CallBatch(1, "tokenguard", tuple(_call(k, entry) for k in range(5))))
    received = collect(asys, lambda got: len(_replies(got)) == 5)
    accepted = of(CallAccepted, received)[0]
    assert sorted(r.key for r in accepted.replies) == [2, 3, 4]
    assert {r.outcome for r in accepted.replies} == {"overloaded"}


def test_describe_service_reports_live_state(asys: ActorSystem, peers: Peers) -> None:
    supervisor = _supervisor(asys, peers)
    description = asys.ask(supervisor, DescribeService("d1"), 5)
    assert isinstance(description, ServiceDescription)
    assert description.request_id == "d1"
    assert description.service == "tokenguard"
    assert description.state["health"] == "UNKNOWN"
    assert description.state["circuit"] == "closed"
    assert description.state["in_flight"] == 0
    assert description.state["workers"] == 1


def _events(received: list[Any], event_type: str) -> list[Any]:
    return [m.event for m in of(Publish, received) if m.event.event_type == event_type]


def test_failures_trip_the_breaker_with_an_event_carrying_the_cause_and_figures(asys: ActorSystem, peers: Peers,
                                                                                guard: CannedGuard) -> None:
    guard.answer = http_answer(500, b'{"e": 1}')
    supervisor = _supervisor(asys, peers, _base(guard), workers_per_guard=1, breaker=BreakerConfig(
        window_size=4, minimum_calls=4, open_base_s=30, open_max_s=60))
    entry = asys.createActor(_Entry)
    asys.tell(entry, ("attach", supervisor))
    asys.tell(entry, CallBatch(1, "tokenguard", tuple(_call(k, entry, url=_base(guard)) for k in range(4))))
    received = collect(asys, lambda got: len(_replies(got)) == 4 and bool(_events(got, CIRCUIT_BREAKER_OPENED))
                       and bool(of(GuardStateSaved, got)))
    assert {r.outcome for r in _replies(received).values()} == {"upstream_error"}
    (opened,) = _events(received, CIRCUIT_BREAKER_OPENED)
    assert opened.data["service_name"] == "tokenguard"
    assert (opened.data["cause"], opened.data["failure_rate"], opened.data["calls"]) == ("failure_rate", 1.0, 4)
    assert opened.data["open_for_s"] == 30
    assert of(GuardStateSaved, received)[-1].state["breaker"]["state"] == "open"
    # Open: the next call is refused at once, with the time left as Retry-After, and the guard is not called.
    asys.tell(entry, CallBatch(2, "tokenguard", (_call(9, entry, url=_base(guard)),)))
    refused = _replies(collect(asys, lambda got: 9 in _replies(got)))[9]
    assert refused.outcome == "circuit_open"
    assert 25 <= (refused.retry_after or 0) <= 30
    assert len(guard.received) == 4


def test_a_restarted_supervisor_gets_its_open_breaker_back(asys: ActorSystem, peers: Peers) -> None:
    saved = {"breaker": CircuitBreaker(BreakerConfig()).snapshot() | {"state": "open", "trips": 2,
                                                                      "open_until_remaining_s": 20.0},
             "health": {"state": "HEALTHY", "ever_healthy": True, "checks": 3}}
    supervisor = asys.createActor(GuardSupervisor)
    spec = ServiceSpec("tokenguard", "tokenguard", URL, {}, "env")
    asys.tell(supervisor, ConfigureGuard(spec, make_settings(disable_health_checks=False), peers, saved))
    entry = asys.createActor(_Entry)
    asys.tell(entry, ("attach", supervisor))
    asys.tell(entry, CallBatch(1, "tokenguard", (_call(1, entry),)))
    reply = _replies(collect(asys, lambda got: 1 in _replies(got)))[1]
    # Health came back (no "never yet healthy" refusal), and so did the open breaker.
    assert reply.outcome == "circuit_open"
