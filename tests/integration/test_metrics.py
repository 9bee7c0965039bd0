"""GET /metrics: the contract's metric names and labels, counted right across the actor processes."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import guard_env
from tests.support.fake_guard import FakeGuard
from tests.support.orchestrator import Orchestrator, running, wait_for
from tests.support.traffic import find_node

pytestmark = pytest.mark.integration

CONTRACT_METRICS = [
    "orchestrator_health_checks_total", "orchestrator_health_check_duration_seconds",
    "orchestrator_service_health_status", "orchestrator_service_discoveries_total",
    "orchestrator_discovered_services", "orchestrator_routing_total", "orchestrator_routing_duration_seconds",
    "orchestrator_payload_size_bytes", "orchestrator_requests_total", "orchestrator_request_duration_seconds",
    "orchestrator_active_services", "orchestrator_events_published_total", "orchestrator_events_handled_total",
    "orchestrator_security_violations_total", "orchestrator_rate_limit_exceeded_total",
]


@pytest.fixture(scope="module")
def counted(guards: dict[str, FakeGuard], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    """An orchestrator of this module's own, so its counts start from zero."""
    with running(guard_env(guards), Path(tmp_path_factory.mktemp("metrics")) / "serve.log") as orch:
        yield orch


def scrape(orch: Orchestrator) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics, by (name, sorted labels)."""
    response = orch.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_are_counted_by_service_and_outcome(counted: Orchestrator,
                                                     fresh_guards: dict[str, FakeGuard]) -> None:
    fresh_guards["biasguard"].set_mode("status", code=500)
    for _ in range(7):
        assert counted.orchestrate("tokenguard", {"text": "x"}).status_code == 200
    for _ in range(3):
        assert counted.orchestrate("biasguard", {"text": "x"}).status_code == 502
    assert counted.orchestrate("nosuch", {"text": "x"}).status_code == 404
    assert counted.post("/v1/orchestrate", data=b"{").status_code == 400
    samples = scrape(counted)
    assert value(samples, "orchestrator_requests_total", service_name="tokenguard", status="success") == 7
    assert value(samples, "orchestrator_requests_total", service_name="biasguard", status="upstream_error") == 3
    assert value(samples, "orchestrator_requests_total", service_name="-", status="unknown_service") == 1
    assert value(samples, "orchestrator_requests_total", service_name="-", status="invalid_request") == 1
    assert value(samples, "orchestrator_routing_total", service_name="tokenguard", status="routed") == 7
    assert value(samples, "orchestrator_request_duration_seconds_count", service_name="tokenguard") == 7
    assert value(samples, "orchestrator_request_duration_seconds_bucket", service_name="tokenguard", le="300.0") == 7
    assert value(samples, "orchestrator_payload_size_bytes_count", service_name="tokenguard") == 7
    # The retried 500s: one guard call each (500 is not retried), counted by the supervisor's process.
    assert value(samples, "orchestrator_active_services") == 6
    for name in fresh_guards:
        assert value(samples, "orchestrator_health_checks_total", service_name=name, status="healthy") >= 1
        assert value(samples, "orchestrator_service_health_status", service_name=name) == 1.0
        assert value(samples, "orchestrator_service_discoveries_total", service_name=name, action="discovered") == 1
        assert (("orchestrator_circuit_breaker_state", (("service_name", name),)) in samples)
    assert value(samples, "orchestrator_discovered_services", status="healthy") == 6
    assert value(samples, "orchestrator_events_published_total", event_type="SERVICE_DISCOVERED") == 6


def test_every_contract_metric_is_exposed(counted: Orchestrator) -> None:
    text = counted.get("/metrics").text
    missing = [name for name in CONTRACT_METRICS if f"# TYPE {name.removesuffix('_total')}" not in text]
    assert missing == []


def test_counters_survive_a_restarted_process_and_state_gauges_keep_one_value(
    counted: Orchestrator, fresh_guards: dict[str, FakeGuard]
) -> None:
    before = value(scrape(counted), "orchestrator_health_checks_total", service_name="tokenguard", status="healthy")
    node = find_node(counted.get("/v1/actors").json(), "health_monitor")
    assert node is not None
    os.kill(node["pid"], signal.SIGKILL)
    # The replacement checks every guard at once; the dead process's counts stay in.
    wait_for(lambda: value(scrape(counted), "orchestrator_health_checks_total", service_name="tokenguard",
                           status="healthy") > before, 10, "the new monitor's checks")
    supervisor = find_node(counted.get("/v1/actors").json(), "tokenguard")
    assert supervisor is not None
    os.kill(supervisor["pid"], signal.SIGKILL)
    wait_for(lambda: (n := find_node(counted.get("/v1/actors").json(), "tokenguard")) is not None
             and n["responsive"] and n["pid"] != supervisor["pid"], 10, "a new supervisor")
    samples = scrape(counted)
    states = [v for (name, labels), v in samples.items()
              if name == "orchestrator_circuit_breaker_state" and dict(labels).get("service_name") == "tokenguard"]
    assert states == [0.0]
    assert value(samples, "orchestrator_actor_restarts_total", actor_class="HealthMonitor") == 1
    assert value(samples, "orchestrator_actor_restarts_total", actor_class="GuardSupervisor") == 1
