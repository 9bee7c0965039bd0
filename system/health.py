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

    def refusal(self, allow_unchecked: bool = False) -> tuple[str, str] | None:
        """Why a call must not be made now, as (code, message), or None when it may.

        ``allow_unchecked`` is the guard's policy for the time before its first passing check.
        """
        if not self.checks_enabled:
            return None
        if self.state == UNHEALTHY:
            return "service_unavailable", "the guard failed its health check"
        if not self.ever_healthy and not allow_unchecked:
            return "service_unavailable", "the guard has not yet passed a health check"
        return None

    def snapshot(self) -> dict[str, object]:
        """What must survive the supervisor's restart."""
        return {"state": self.state, "ever_healthy": self.ever_healthy, "checks": self.checks}

    def restore(self, snapshot: dict[str, object]) -> None:
        """Take back a snapshot (a replacement supervisor must not refuse traffic until the next check)."""
        state = snapshot.get("state")
        if state in STATES:
            self.state = str(state)
        self.ever_healthy = bool(snapshot.get("ever_healthy", False))
        checks = snapshot.get("checks", 0)
        self.checks = checks if isinstance(checks, int) else 0
