"""Every metric, declared once, with the contract's names and labels; and their exposition across processes.

Each actor is a process of its own, so metrics use prometheus_client's multiprocess mode: every process writes
its samples to files in one directory (``PROMETHEUS_MULTIPROC_DIR``, made by ``aeyon serve`` before anything
imports prometheus_client, and inherited by every forked actor), and ``GET /metrics`` merges the files of all
processes. Counters of a process that died stay in its files, so a restart never makes a counter go backwards.
Gauges say how they merge: state owned by one actor (a guard's health or breaker) keeps the most recent write,
so a restarted supervisor's value replaces its predecessor's; amounts spread over processes (requests in
flight) are summed over live processes, and the files of dead ones are dropped before each scrape. Measured cost
on the request path: README.rst (Observability).

Label cardinality is bounded: service names come from the registry; status labels from fixed sets; the
rate-limit identifier label from ``IdentifierLabels`` (the first 100 identifiers seen, then ``other``).
"""

from __future__ import annotations

import glob
import os
import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as _multiprocess

ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Up to the 30 s default request timeout and the 300 s maximum.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0)
SIZE_BUCKETS = (64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 10485760)

# -- the contract's metrics ------------------------------------------------------------------------------------

HEALTH_CHECKS = Counter("orchestrator_health_checks_total", "Active health checks, by result.",
                        ["service_name", "status"])
HEALTH_CHECK_DURATION = Histogram("orchestrator_health_check_duration_seconds", "Time one health check took.",
                                  ["service_name"], buckets=DURATION_BUCKETS)
SERVICE_HEALTH = Gauge("orchestrator_service_health_status", "1 healthy, 0.5 degraded, 0 unhealthy or unknown.",
                       ["service_name"], multiprocess_mode="mostrecent")
DISCOVERIES = Counter("orchestrator_service_discoveries_total", "Registry changes, by action.",
                      ["service_name", "action"])
DISCOVERED_SERVICES = Gauge("orchestrator_discovered_services", "Registered services, by health status.",
                            ["status"], multiprocess_mode="mostrecent")
ROUTING = Counter("orchestrator_routing_total", "Routing decisions at the entry.", ["service_name", "status"])
ROUTING_DURATION = Histogram("orchestrator_routing_duration_seconds",
                             "From a request's arrival to its call leaving for the guard's supervisor.",
                             ["service_name"], buckets=DURATION_BUCKETS)
PAYLOAD_SIZE = Histogram("orchestrator_payload_size_bytes", "Size of the body sent to the guard.",
                         ["service_name"], buckets=SIZE_BUCKETS)
REQUESTS = Counter("orchestrator_requests_total", "Requests answered, by outcome (success or error code).",
                   ["service_name", "status"])
REQUEST_DURATION = Histogram("orchestrator_request_duration_seconds", "From a request's arrival to its answer.",
                             ["service_name"], buckets=DURATION_BUCKETS)
ACTIVE_SERVICES = Gauge("orchestrator_active_services", "Services in the registry.", multiprocess_mode="mostrecent")
EVENTS_PUBLISHED = Counter("orchestrator_events_published_total", "Events published.", ["event_type"])
EVENTS_HANDLED = Counter("orchestrator_events_handled_total", "Events delivered to a subscriber.",
                         ["event_type", "handler"])
SECURITY_VIOLATIONS = Counter("orchestrator_security_violations_total", "Refused requests, by kind of violation.",
                              ["violation_type"])
RATE_LIMIT_EXCEEDED = Counter("orchestrator_rate_limit_exceeded_total",
                              "Requests refused for their identifier's rate limit (identifier: first 100 seen, "
                              "then 'other').", ["identifier"])

# -- more ------------------------------------------------------------------------------------------------------

BREAKER_STATE = Gauge("orchestrator_circuit_breaker_state", "0 closed, 1 half-open, 2 open.", ["service_name"],
                      multiprocess_mode="mostrecent")
BREAKER_TRIPS = Counter("orchestrator_circuit_breaker_trips_total", "Times the breaker opened.", ["service_name"])
ACTOR_RESTARTS = Counter("orchestrator_actor_restarts_total", "Actors replaced after they died.", ["actor_class"])
IN_FLIGHT = Gauge("orchestrator_requests_in_flight", "Requests waiting for their answer.",
                  multiprocess_mode="livesum")
GUARD_IN_FLIGHT = Gauge("orchestrator_guard_in_flight", "Calls with a guard's workers.", ["service_name"],
                        multiprocess_mode="mostrecent")
GUARD_QUEUE = Gauge("orchestrator_guard_queue_depth", "Calls waiting for one of a guard's workers.",
                    ["service_name"], multiprocess_mode="mostrecent")
GUARD_RETRIES = Counter("orchestrator_guard_retries_total", "Calls retried under the retry budget.",
                        ["service_name"])

BREAKER_VALUE = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class IdentifierLabels:
    """Bounds the ``identifier`` label: the first ``limit`` identifiers keep their own series, the rest share
    ``other`` (a new identifier after that cannot add a series, so the cardinality stays at ``limit`` + 1)."""

    def __init__(self, limit: int = 100):
        self.limit = limit
        self._known: set[str] = set()

    def label(self, identifier: str) -> str:
        """The label value for this identifier."""
        if identifier in self._known:
            return identifier
        if len(self._known) < self.limit:
            self._known.add(identifier)
            return identifier
        return "other"


def multiprocess_enabled() -> bool:
    """True in the orchestrator's processes (``aeyon serve`` set the directory)."""
    return bool(os.environ.get(ENV))


_PID = re.compile(r"_(\d+)\.db$")


def exposition() -> bytes:
    """The Prometheus text exposition of every process's metrics (this process's alone outside the
    orchestrator, e.g. in actor tests)."""
    if not multiprocess_enabled():
        from prometheus_client import REGISTRY

        return generate_latest(REGISTRY)
    _forget_dead_processes()
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


def _forget_dead_processes() -> None:
    # "livesum" gauges of processes that died (killed, restarted) must not be summed in.
    directory = os.environ[ENV]
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        match = _PID.search(path)
        if match and not _alive(int(match.group(1))):
            _multiprocess.mark_process_dead(int(match.group(1)), directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

