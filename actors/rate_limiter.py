"""RateLimiter: the authority on rate limits and on what repeated violations mean.

Budgets: every identifier's bucket holds SECURITY_MAX_REQUESTS_PER_MINUTE tokens and refills at that rate per
minute. The RateLimiter grants each entry (HTTP shim) its share of that budget (``RateLimitGrant``), and each
entry keeps its buckets itself, so no request waits for a message to this actor (a hop per request would cost as
much CPU as the guard call, shared/DESIGN.md). With one entry, the default, the share is the whole budget and the
limit is exact; with k entries each holds 1/k, so a client whose connections all land on one entry gets at most
1/k of its budget (never more than its budget). README.rst (Security) says so.

Violations: entries report refused requests in batches (``ViolationsObserved``); each is published as a
SECURITY_VIOLATION event (rate-limit refusals excepted: they would flood the bus), and an identifier with
``FORENSIC_THRESHOLD`` violations in ``FORENSIC_WINDOW_S`` raises FORENSIC_ANALYSIS_TRIGGERED.
"""

from __future__ import annotations

from typing import Any

from actors.base import AeyonActor
from actors.messages import Event, PublishBatch
from actors.messages.control import Configure, RateLimitGrant, Topology, ViolationsObserved
from actors.messages.events import FORENSIC_ANALYSIS_TRIGGERED, SECURITY_VIOLATION
from system.clock import wallclock
from system.forensic import ViolationTracker

FORENSIC_THRESHOLD = 10
FORENSIC_WINDOW_S = 60.0


class RateLimiter(AeyonActor):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.settings: Any = None
        self.peers: Any = None
        self.entries: tuple[Any, ...] = ()
        self.tracker = ViolationTracker(FORENSIC_THRESHOLD, FORENSIC_WINDOW_S)
        self.violations = 0
        self.forensic = 0

    def receiveMsg_Configure(self, message: Configure, sender: Any) -> None:
        self.settings = message.settings
        self.peers = message.peers
        self._grant()

    def receiveMsg_Topology(self, message: Topology, sender: Any) -> None:
        self.entries = message.entries
        self._grant()

    def _grant(self) -> None:
        if self.settings is None or not self.entries:
            return
        per_minute = self.settings.max_requests_per_minute
        # Each entry's bucket must hold at least one request, or that entry could never admit any.
        share = max(1.0 / len(self.entries), 1.0 / per_minute)
        for entry in self.entries:
            self.send(entry, RateLimitGrant(per_minute, min(1.0, share)))

    def receiveMsg_ViolationsObserved(self, message: ViolationsObserved, sender: Any) -> None:
        events = []
        now = wallclock()
        for identifier, violation, client_ip in message.violations:
            self.violations += 1
            if violation != "rate_limited":
                events.append(Event(SECURITY_VIOLATION, now, {"identifier": identifier, "violation_type": violation,
                                                              "client_ip": client_ip}, source="edge"))
            count = self.tracker.record(identifier)
            if count is not None:
                self.forensic += 1
                events.append(Event(FORENSIC_ANALYSIS_TRIGGERED, now, {
                    "identifier": identifier, "client_ip": client_ip, "violations": count,
                    "window_s": FORENSIC_WINDOW_S, "last_violation_type": violation}, source="rate_limiter"))
        if events and self.peers is not None:
            self.send(self.peers.event_bus, PublishBatch(tuple(events)))

    def state(self) -> dict[str, Any]:
        """For inspection."""
        return {"budget_per_minute": self.settings.max_requests_per_minute if self.settings else 0,
                "entries": len(self.entries), "violations": self.violations, "forensic_triggered": self.forensic,
                "tracked_identifiers": len(self.tracker)}
