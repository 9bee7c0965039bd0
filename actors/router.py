"""Router: owns the route table (service -> supervisor, endpoint, transform) and pushes it to every entry.

Entries never ask the Router anything on the request path; they route from the last table it pushed.
"""

from __future__ import annotations

from typing import Any

from actors.base import AeyonActor
from actors.messages import Route, RoutesChanged
from actors.messages.control import Configure, Topology
from system.routing import endpoint_for, transform_for


class Router(AeyonActor):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.version = 0
        self.routes: tuple[Route, ...] = ()

    def receiveMsg_Configure(self, message: Configure, sender: Any) -> None:
        pass

    def receiveMsg_Topology(self, message: Topology, sender: Any) -> None:
        self.version += 1
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
            )
            for s in message.services
        )
        table = RoutesChanged(self.version, self.routes)
        for entry in message.entries:
            self.send(entry, table)

    def state(self) -> dict[str, Any]:
        """For inspection."""
        return {"version": self.version, "routes": len(self.routes)}
