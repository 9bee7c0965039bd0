"""HealthWorker: makes one blocking health check at a time for the HealthMonitor."""

from __future__ import annotations

import time
from typing import Any

from actors.base import AeyonActor
from actors.messages import CheckHealth, HealthChecked
from system.guard_client import GuardClient


class HealthWorker(AeyonActor):
    """GET a guard's /health with a timeout and report the state."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._client: GuardClient | None = None

    def receiveMsg_CheckHealth(self, message: CheckHealth, sender: Any) -> None:
        if self._client is None:
            self._client = GuardClient()
        started = time.monotonic()
        result = self._client.check_health(message.url, message.timeout_s)
        self.send(sender, HealthChecked(message.request_id, message.service, result.state, result.status,
                                        result.message, time.monotonic() - started))
