"""Health-check messages between the HealthMonitor, its workers and the guard supervisors."""

from __future__ import annotations

import attrs


@attrs.frozen
class CheckHealth:
    """HealthMonitor -> health worker: GET ``url``/health within ``timeout_s``."""

    request_id: str
    service: str
    url: str
    timeout_s: float


@attrs.frozen
class HealthChecked:
    """The result of one check: ``state`` is HEALTHY, DEGRADED or UNHEALTHY."""

    request_id: str
    service: str
    state: str
    status_code: int
    message: str
    duration_s: float


@attrs.frozen
class CheckNow:
    """Guard supervisor -> HealthMonitor: check this guard now (its breaker just opened)."""

    service: str
