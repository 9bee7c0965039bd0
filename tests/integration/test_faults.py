"""The fault-injection suite: real guards that misbehave on command (refused port, 500s, hangs, slow answers,
flapping) and actor processes SIGKILLed while requests flow. For each: every request gets exactly one answer with
the right code, the other guards are not touched, and the tree heals."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import guard_env
from tests.integration.test_events import Stream
from tests.support.fake_guard import FakeGuard, refused_port
from tests.support.orchestrator import Orchestrator, processes, running, wait_for
from tests.support.traffic import Traffic, find_node

pytestmark = pytest.mark.integration

# Short periods so that trips and recoveries happen within a test.
TUNED = {
    "AEYON_BREAKER_WINDOW": "10",
    "AEYON_BREAKER_MIN_CALLS": "5",
    "AEYON_BREAKER_SLOW_CALL": "0.5",
    "AEYON_BREAKER_OPEN": "1",
    "AEYON_BREAKER_OPEN_MAX": "2",
    "AEYON_HEALTH_INTERVAL": "1",
    "AEYON_HEALTH_TIMEOUT": "0.5",
    "AEYON_MAX_IN_FLIGHT": "400",
    # The kill tests restart several actors within seconds; the escalation itself has a test of its own.
    "AEYON_RESTART_MAX": "50",
}


@pytest.fixture(scope="module")
def tuned(guards: dict[str, FakeGuard], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    """An orchestrator with quick breakers and health checks, in front of the module's guards."""
    with running({**guard_env(guards), **TUNED}, Path(tmp_path_factory.mktemp("faults")) / "serve.log") as orch:
        yield orch


def _services(orch: Orchestrator) -> dict[str, dict]:
    return {s["name"]: s for s in orch.get("/v1/services").json()["services"]}


@pytest.fixture(autouse=True)
def recovered(tuned: Orchestrator, fresh_guards: dict[str, FakeGuard]) -> dict[str, FakeGuard]:
    """Every guard answering again, and every breaker closed and guard healthy before the test starts."""

    last: list = []

    def settled() -> bool:
        services = _services(tuned)
        unsettled = [(name, s["circuit"], s["health"], s["responsive"]) for name, s in services.items()
                     if s["circuit"] != "closed" or s["health"] != "HEALTHY" or not s["responsive"]]
        for name, *_ in unsettled:  # a half-open breaker closes only after successful probe calls
            tuned.orchestrate(name, {"text": "probe"}, timeout=2)
        last[:] = unsettled
        return not unsettled

    try:
        wait_for(settled, 30, "every breaker closed and every guard healthy", interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still unsettled: {last}") from None
    for guard in fresh_guards.values():
        guard.clear()
    return fresh_guards


def _code(response) -> str | None:
    return None if response.status_code == 200 else response.json()["error"]["code"]


# -- guards that misbehave -------------------------------------------------------------------------------------


def test_a_guard_on_a_refused_port_is_unavailable_and_the_others_serve(tuned: Orchestrator) -> None:
    port = refused_port()
    assert tuned.post("/v1/services", {"name": "gone", "service_type": "tokenguard",
                                       "url": f"http://127.0.0.1:{port}"}).status_code == 201
    try:
        wait_for(lambda: _services(tuned)["gone"]["health"] == "UNHEALTHY", 10, "the failed health checks")
        response = tuned.orchestrate("gone", {"text": "x"})
        assert (response.status_code, _code(response)) == (503, "service_unavailable")
        assert int(response.headers["Retry-After"]) >= 1
        assert tuned.orchestrate("tokenguard", {"text": "x"}).status_code == 200
    finally:
        tuned.session.delete(tuned.base_url + "/v1/services/gone", timeout=10)


def test_a_guard_allowed_unchecked_on_a_refused_port_fails_then_its_breaker_opens(tuned: Orchestrator) -> None:
    port = refused_port()
    assert tuned.post("/v1/services", {"name": "gone2", "service_type": "tokenguard",
                                       "url": f"http://127.0.0.1:{port}",
                                       "metadata": {"allow_unchecked": True}}).status_code == 201
    try:
        codes = [_code(tuned.orchestrate("gone2", {"text": "x"})) for _ in range(12)]
        assert set(codes) <= {"upstream_error", "circuit_open", "service_unavailable"}
        assert "upstream_error" in codes
        assert codes[-1] in ("circuit_open", "service_unavailable")
    finally:
        tuned.session.delete(tuned.base_url + "/v1/services/gone2", timeout=10)


def test_500s_trip_the_breaker_which_answers_fast_and_closes_again_when_the_guard_recovers(
    tuned: Orchestrator, recovered: dict[str, FakeGuard]
) -> None:
    recovered["biasguard"].set_mode("status", code=500)
    answers = [tuned.orchestrate("biasguard", {"text": "x"}) for _ in range(8)]
    codes = [_code(r) for r in answers]
    assert codes[:5] == ["upstream_error"] * 5  # minimum_calls before a trip
    assert codes[5:] == ["circuit_open"] * 3
    assert all(int(r.headers["Retry-After"]) >= 1 for r in answers[5:])
    calls_before = recovered["biasguard"].count(method="POST")
    started = time.monotonic()
    fast = tuned.orchestrate("biasguard", {"text": "x"})
    assert _code(fast) == "circuit_open" and time.monotonic() - started < 0.5
    assert recovered["biasguard"].count(method="POST") == calls_before  # open: the guard is not called
    state = _services(tuned)["biasguard"]
    assert state["circuit"] == "open"
    assert state["breaker"]["trips"] >= 1
    # 500s are not retried: one guard call per request.
    assert calls_before == 5
    recovered["biasguard"].set_mode("ok")
    wait_for(lambda: tuned.orchestrate("biasguard", {"text": "x"}).status_code == 200, 15, "the breaker to let calls")
    wait_for(lambda: _services(tuned)["biasguard"]["circuit"] == "closed"
             or tuned.orchestrate("biasguard", {"text": "x"}).status_code != 200, 10, "the breaker to close")
    assert _services(tuned)["biasguard"]["circuit"] == "closed"


def test_a_hung_guard_answers_504_trips_on_slow_calls_and_the_others_are_untouched(
    tuned: Orchestrator, recovered: dict[str, FakeGuard]
) -> None:
    recovered["trustguard"].set_mode("hang")
    with Traffic(tuned.base_url, ["trustguard", "tokenguard"], threads=4, timeout_s=1.0) as traffic:
        wait_for(lambda: _services(tuned)["trustguard"]["circuit"] == "open", 15, "the slow-call trip")
        wait_for(lambda: any(a.code == "circuit_open" for a in traffic.by_service("trustguard")), 15,
                 "a fast circuit_open answer")
        wait_for(lambda: traffic.count("tokenguard") > 50, 15, "traffic to the healthy guard")
    assert traffic.errors == []
    hung = traffic.by_service("trustguard")
    assert hung and {(a.status, a.code) for a in hung} <= {(504, "upstream_timeout"), (503, "circuit_open")}
    assert (503, "circuit_open") in {(a.status, a.code) for a in hung}
    healthy = traffic.by_service("tokenguard")
    assert healthy and all(a.status == 200 for a in healthy)
    assert all(a.echoed_id == a.request_id for a in traffic.answers)


@pytest.fixture
def fresh_service(tuned: Orchestrator, recovered: dict[str, FakeGuard]) -> Iterator[str]:
    """A service registered for this test only (its own supervisor, so its breaker's window starts empty),
    in front of the contextguard fake."""
    assert tuned.post("/v1/services", {"name": "fresh", "service_type": "contextguard",
                                       "url": recovered["contextguard"].url}).status_code == 201
    wait_for(lambda: tuned.orchestrate("fresh", {"text": "x"}).status_code == 200, 10, "the new service")
    try:
        yield "fresh"
    finally:
        tuned.session.delete(tuned.base_url + "/v1/services/fresh", timeout=10)


def test_slow_answers_under_the_threshold_keep_the_breaker_closed(tuned: Orchestrator, recovered: dict[str, FakeGuard],
                                                                  fresh_service: str) -> None:
    recovered["contextguard"].set_mode("slow", delay=0.1)
    assert [tuned.orchestrate(fresh_service, {"text": "x"}).status_code for _ in range(8)] == [200] * 8
    assert _services(tuned)[fresh_service]["circuit"] == "closed"


def test_slow_answers_over_the_threshold_trip_the_breaker(tuned: Orchestrator, recovered: dict[str, FakeGuard],
                                                          fresh_service: str) -> None:
    recovered["contextguard"].set_mode("slow", delay=0.7)
    # The window holds one fast call (the fixture's) and then these: 4 slow of 5 is 80%, the threshold.
    codes = [_code(tuned.orchestrate(fresh_service, {"text": "x"})) for _ in range(6)]
    assert codes[:4] == [None] * 4  # slow, but answered in time
    assert codes[4:] == ["circuit_open", "circuit_open"]


def test_a_flapping_guard_gets_exactly_one_answer_per_request(tuned: Orchestrator,
                                                              recovered: dict[str, FakeGuard]) -> None:
    recovered["healthguard"].set_mode("sequence", modes=[("ok", {}), ("status", {"code": 500}),
                                                         ("ok", {}), ("invalid_json", {})])
    with Traffic(tuned.base_url, ["healthguard", "tokenguard"], threads=3) as traffic:
        wait_for(lambda: traffic.count("healthguard") > 60, 20, "traffic")
    assert traffic.errors == []
    flapping = {(a.status, a.code) for a in traffic.by_service("healthguard")}
    assert flapping <= {(200, None), (502, "upstream_error"), (503, "circuit_open")}
    assert all(a.status == 200 for a in traffic.by_service("tokenguard"))
    assert all(a.echoed_id == a.request_id for a in traffic.answers)


@pytest.mark.parametrize(("sequence", "status", "calls"), [
    ([("reset", {}), ("ok", {})], 200, 2),
    ([("status", {"code": 503}), ("ok", {})], 200, 2),
    ([("status", {"code": 502}), ("status", {"code": 502}), ("status", {"code": 502})], 502, 3),
    ([("status", {"code": 500}), ("ok", {})], 502, 1),
])
def test_retries_cover_resets_and_502_503_504_only(tuned: Orchestrator, recovered: dict[str, FakeGuard],
                                                   sequence: list, status: int, calls: int) -> None:
    recovered["securityguard"].set_mode("sequence", modes=sequence)
    response = tuned.orchestrate("securityguard", {"text": "x"})
    assert response.status_code == status
    assert recovered["securityguard"].count(method="POST") == calls


# -- actors killed while requests flow -------------------------------------------------------------------------

KILLS = [
    pytest.param(("tokenguard", "worker-0"), {(502, "upstream_error")}, id="guard-worker"),
    pytest.param(("tokenguard",), {(502, "upstream_error"), (503, "service_unavailable")}, id="guard-supervisor"),
    pytest.param(("router",), set(), id="router"),
    pytest.param(("rate_limiter",), set(), id="rate-limiter"),
    pytest.param(("discovery",), set(), id="discovery"),
    pytest.param(("event_bus",), set(), id="event-bus"),
    pytest.param(("health_monitor",), set(), id="health-monitor"),
]


@pytest.mark.parametrize(("path", "allowed_failures"), KILLS)
def test_sigkill_while_requests_flow(tuned: Orchestrator, recovered: dict[str, FakeGuard], path: tuple[str, ...],
                                     allowed_failures: set, record_property) -> None:
    recovered["tokenguard"].set_mode("slow", delay=0.05)  # so that calls are in progress in the workers
    registered = tuned.post("/v1/services", {"name": "survivor", "service_type": "biasguard",
                                             "url": recovered["biasguard"].url})
    assert registered.status_code == 201
    try:
        with Traffic(tuned.base_url, ["tokenguard", "biasguard"], threads=3) as traffic:
            wait_for(lambda: traffic.count("tokenguard") > 20, 10, "traffic before the kill")
            victim = find_node(tuned.get("/v1/actors").json(), *path)
            assert victim is not None and victim["responsive"], victim
            kind = victim["actor_class"]
            before_kill = set(processes(tuned.tag, kind))
            os.kill(victim["pid"], signal.SIGKILL)
            killed_at = time.monotonic()
            # A new process of the same class appears (timed from the process table: the tree can take up to
            # its deadline to draw while the dead actor is still in it)...
            wait_for(lambda: set(processes(tuned.tag, kind)) - before_kill, 5, f"a new {kind} process",
                     interval=0.005)
            healed_s = time.monotonic() - killed_at

            def replaced() -> bool:
                node = find_node(tuned.get("/v1/actors").json(), *path)
                return node is not None and node["responsive"] and node["pid"] != victim["pid"]

            # ... and takes the dead one's place in the tree.
            wait_for(replaced, 5, f"a new {'/'.join(path)} in the tree", interval=0.02)
            record_property("healed_s", round(healed_s, 3))
            print(f"\n{'/'.join(path)}: replaced {healed_s * 1000:.0f} ms after SIGKILL")
            before = traffic.count("tokenguard")
            wait_for(lambda: traffic.count("tokenguard") > before + 20, 10, "traffic after the kill")
        assert traffic.errors == [], traffic.errors[:5]
        assert all(a.echoed_id == a.request_id for a in traffic.answers)
        assert all(a.status == 200 for a in traffic.by_service("biasguard")), "another guard was touched"
        outcomes = {(a.status, a.code) for a in traffic.by_service("tokenguard")}
        assert outcomes <= {(200, None)} | allowed_failures, outcomes
        # The registry survived whatever was killed, and the guard serves again.
        assert "survivor" in _services(tuned)
        wait_for(lambda: tuned.orchestrate("tokenguard", {"text": "x"}).status_code == 200, 10, "tokenguard again")
    finally:
        tuned.session.delete(tuned.base_url + "/v1/services/survivor", timeout=10)


def test_past_the_restart_intensity_the_orchestrator_escalates_and_stops(guards: dict[str, FakeGuard],
                                                                        tmp_path: Path) -> None:
    env = {**guard_env(guards), "AEYON_RESTART_MAX": "1", "AEYON_RESTART_PERIOD": "60"}
    with running(env, tmp_path / "serve.log") as orch:
        stream = Stream(orch.base_url + "/v1/events?types=ACTOR_RESTARTED,ARCHITECTURE_REVIEW_REQUESTED")
        router = find_node(orch.get("/v1/actors").json(), "router")
        assert router is not None
        os.kill(router["pid"], signal.SIGKILL)
        wait_for(lambda: (n := find_node(orch.get("/v1/actors").json(), "router")) is not None
                 and n["responsive"] and n["pid"] != router["pid"], 5, "the first restart")
        limiter = find_node(orch.get("/v1/actors").json(), "rate_limiter")
        assert limiter is not None
        os.kill(limiter["pid"], signal.SIGKILL)
        # The second death in the period is past the budget: the root asks `aeyon serve` to stop everything,
        # after telling subscribers.
        seen = stream.until(lambda e: e["event_type"] == "ARCHITECTURE_REVIEW_REQUESTED")
        assert [e["data"].get("actor") for e in seen if e["event_type"] == "ACTOR_RESTARTED"] == ["router"]
        assert orch.process.wait(30) == 1
        stream.close()
        assert "restart intensity exceeded" in orch.log()


def test_a_fail_open_guard_that_fails_answers_a_degraded_success(tuned: Orchestrator,
                                                                 recovered: dict[str, FakeGuard]) -> None:
    assert tuned.post("/v1/services", {"name": "advisory", "service_type": "biasguard",
                                       "url": recovered["biasguard"].url,
                                       "metadata": {"failure_policy": "fail_open"}}).status_code == 201
    try:
        # Until its first health check passes it is unavailable, which a fail-open guard also turns into a
        # degraded success: wait for a real one.
        wait_for(lambda: "degraded" not in tuned.orchestrate("advisory", {"text": "x"}).json(), 10, "the new service")
        recovered["biasguard"].set_mode("status", code=500)
        response = tuned.orchestrate("advisory", {"text": "x"}, request_id="adv-1")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "success" and body["degraded"] is True and body["result"] is None
        assert body["degraded_reason"]["code"] == "upstream_error"
        assert body["request_id"] == "adv-1"
        # The guard's own 4xx verdict is not a failure: it is passed back, not degraded.
        recovered["biasguard"].set_mode("status", code=422, body={"why": "no"})
        rejected = tuned.orchestrate("advisory", {"text": "x"})
        assert (rejected.status_code, _code(rejected)) == (422, "guard_rejected")
        # The same guard under its fail-closed registration still fails loudly.
        recovered["biasguard"].set_mode("status", code=500)
        assert _code(tuned.orchestrate("biasguard", {"text": "x"})) == "upstream_error"
    finally:
        tuned.session.delete(tuned.base_url + "/v1/services/advisory", timeout=10)


def test_fail_open_from_the_environment(guards: dict[str, FakeGuard], tmp_path: Path) -> None:
    env = {**guard_env(guards), "AEYON_FAIL_OPEN": "healthguard"}
    guards["healthguard"].set_mode("hang")
    try:
        with running(env, tmp_path / "serve.log") as orch:
            response = orch.orchestrate("healthguard", {"text": "x"}, timeout=0.5)
            assert response.status_code == 200
            assert response.json()["degraded_reason"]["code"] == "upstream_timeout"
            assert _services(orch)["healthguard"]["failure_policy"] == "fail_open"
    finally:
        guards["healthguard"].set_mode("ok")


def test_at_most_ten_health_checks_run_at_once(guards: dict[str, FakeGuard], tmp_path: Path) -> None:
    with FakeGuard() as stuck:
        stuck.set_health(mode="hang")
        env = {**guard_env(guards), "AEYON_HEALTH_TIMEOUT": "20"}
        with running(env, tmp_path / "serve.log") as orch:
            for i in range(12):
                assert orch.post("/v1/services", {"name": f"stuck-{i}", "service_type": "tokenguard",
                                                  "url": stuck.url}).status_code == 201

            def monitor() -> dict:
                return find_node(orch.get("/v1/actors").json(), "health_monitor") or {}

            wait_for(lambda: monitor().get("state", {}).get("checks_in_flight") == 10, 10, "ten checks in flight")
            # The walk may cut off a busy health worker's answer, but never its place in the tree.
            wait_for(lambda: len(monitor().get("children", [])) == 10, 10,
                     f"ten health workers in the tree: {dict((k, v) for k, v in monitor().items() if k != 'thespian')}")
            # A guard whose health checks hang gets no traffic; the others are served meanwhile.
            assert _code(orch.orchestrate("stuck-0", {"text": "x"})) == "service_unavailable"
            assert orch.orchestrate("tokenguard", {"text": "x"}).status_code == 200
            started = time.monotonic()
        print(f"\nstopped in {time.monotonic() - started:.1f} s with ten health checks hanging")
