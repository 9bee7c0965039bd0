"""Discovery: owns the service registry (from the environment, plus what operators register) and tells the root
whenever it changes; the root then starts or stops guard supervisors and the Router pushes new routes.
"""

from __future__ import annotations

from typing import Any

from actors.base import AeyonActor
from actors.messages import (
    Event,
    Publish,
    RegisterService,
    RegistryChanged,
    ServiceRegistered,
    ServiceUnregistered,
    UnregisterService,
)
from actors.messages.control import Configure, Refused, RestoreRegistry
from actors.messages.events import SERVICE_DISCOVERED, SERVICE_REGISTERED, SERVICE_UNREGISTERED
from system import metrics
from system.clock import wallclock
from system.errors import RequestError
from system.registry import Registry

_ACTIONS = {SERVICE_DISCOVERED: "discovered", SERVICE_REGISTERED: "registered", SERVICE_UNREGISTERED: "unregistered"}


class Discovery(AeyonActor):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.registry: Registry | None = None
        self.peers: Any = None

    def receiveMsg_Configure(self, message: Configure, sender: Any) -> None:
        self.peers = message.peers
        if self.registry is not None:
            # Again (a hot reload): the guards configured by environment follow their URL variables.
            if self.registry.follow_settings(message.settings):
                self._changed()
            return
        self.registry = Registry.from_settings(message.settings)
        for spec in self.registry.specs():
            self._publish(SERVICE_DISCOVERED, spec.name, {"service_type": spec.service_type, "url": spec.url,
                                                          "source": spec.source})
        self._changed()

    def receiveMsg_RestoreRegistry(self, message: RestoreRegistry, sender: Any) -> None:
        # A replacement Discovery gets the registry back from the root instead of re-reading the environment, so
        # services registered over the API survive the restart.
        self.peers = message.peers
        self.registry = Registry(message.specs)

    def receiveMsg_RegisterService(self, message: RegisterService, sender: Any) -> None:
        assert self.registry is not None
        try:
            spec = self.registry.register(message.name, message.service_type, message.url, message.metadata,
                                          message.request_id)
        except RequestError as exc:
            self.send(sender, Refused(message.request_id, exc.code, exc.message))
            return
        self.send(sender, ServiceRegistered(message.request_id, spec))
        self._publish(SERVICE_REGISTERED, spec.name, {"service_type": spec.service_type, "url": spec.url})
        self._changed()

    def receiveMsg_UnregisterService(self, message: UnregisterService, sender: Any) -> None:
        assert self.registry is not None
        try:
            spec = self.registry.unregister(message.name, message.request_id)
        except RequestError as exc:
            self.send(sender, Refused(message.request_id, exc.code, exc.message))
            return
        self.send(sender, ServiceUnregistered(message.request_id, spec.name))
        self._publish(SERVICE_UNREGISTERED, spec.name, {"service_type": spec.service_type, "url": spec.url})
        self._changed()

    def _changed(self) -> None:
        assert self.registry is not None
        self.send(self.peers.orchestrator, RegistryChanged(self.registry.specs()))

    def _publish(self, event_type: str, name: str, data: dict[str, Any]) -> None:
        metrics.DISCOVERIES.labels(name, _ACTIONS[event_type]).inc()
        self.send(self.peers.event_bus, Publish(Event(event_type, wallclock(), {"service_name": name, **data},
                                                      source="discovery")))

    def state(self) -> dict[str, Any]:
        """For inspection."""
        return {"services": len(self.registry.specs()) if self.registry else 0}
