"""A guard's health as its supervisor sees it: the contract's four states and whether traffic may pass."""

from __future__ import annotations

from system.guard_client import DEGRADED, HEALTHY, UNHEALTHY, UNKNOWN

STATES = (HEALTHY, DEGRADED, UNHEALTHY, UNKNOWN)

# orchestrator_service_health_status: 1 healthy, 0.5 degraded, 0 unhealthy (and unknown).
STATUS_VALUE = {HEALTHY: 1.0, DEGRADED: 0.5, UNHEALTHY: 0.0, UNKNOWN: 0.0}


class HealthState:
    """The latest check result of one guard. With checks disabled a guard is trusted until shown otherwise."""

    def __init__(self, checks_enabled: bool = True):
        self.checks_enabled = checks_enabled
        self.state = UNKNOWN
        self.checks = 0
        self.ever_healthy = False

    def record(self, state: str) -> bool:
        """Take one check result; True when the state changed."""
        if state not in STATES:
            raise ValueError(f"unknown health state {state!r}")
        self.checks += 1
        if state in (HEALTHY, DEGRADED):
            self.ever_healthy = True
        changed = state != self.state
        self.state = state
        return changed

    def refusal(self) -> tuple[str, str] | None:
        """Why a call must not be made now, as (code, message), or None when it may."""
        if not self.checks_enabled:
            return None
        if self.state == UNHEALTHY:
            return "service_unavailable", "the guard failed its health check"
        if not self.ever_healthy:
            return "service_unavailable", "the guard has not yet passed a health check"
        return None
