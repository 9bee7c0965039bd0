"""Router: owns the route table (service -> supervisor, endpoint, transform) and pushes it to every entry.

Entries never ask the Router anything on the request path; they route from the last table it pushed.
"""

from __future__ import annotations

import time
from typing import Any

from actors.base import AeyonActor
from actors.messages import Route, RoutesChanged
from actors.messages.control import Configure, Topology
from system.config import Settings
from system.policy import GuardPolicy
from system.routing import endpoint_for, transform_for


class Router(AeyonActor):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.version = 0
        self.settings: Any = Settings()
        self.routes: tuple[Route, ...] = ()

    def receiveMsg_Configure(self, message: Configure, sender: Any) -> None:
        self.settings = message.settings

    def receiveMsg_Topology(self, message: Topology, sender: Any) -> None:
        # Entries drop tables older than the last they took, so versions must keep growing across a restart of
        # this actor: the system-wide monotonic clock does that (the Router always runs on the leader's host).
        self.version = max(self.version + 1, time.monotonic_ns())
        self.routes = tuple(
            Route(
                service=s.spec.name,
                service_type=s.spec.service_type,
                url=s.spec.url,
                endpoint=endpoint_for(s.spec.service_type, s.spec.url, s.spec.metadata),
                transform=transform_for(s.spec.service_type),
                supervisor=s.supervisor,
                metadata=s.spec.metadata,
                source=s.spec.source,
                failure_policy=GuardPolicy.for_service(s.spec.name, s.spec.metadata, self.settings).failure_policy,
            )
            for s in message.services
        )
        table = RoutesChanged(self.version, self.routes, message.retiring)
        for entry in message.entries:
            self.send(entry, table)

    def state(self) -> dict[str, Any]:
        """For inspection."""
        return {"version": self.version, "routes": len(self.routes)}
