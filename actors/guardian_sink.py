"""GuardianSink: sends FORENSIC_ANALYSIS_TRIGGERED events to Guardian Zero (GUARDIAN_ZERO_URL) when
GUARDIAN_ZERO_ENABLED, off the request path.

It subscribes to the EventBus like any subscriber and makes the blocking POSTs itself (it is a worker: nothing
else waits on it). Each event is tried ``ATTEMPTS`` times with fully jittered backoff; one that still fails is
counted and logged, and the batch is acknowledged either way, so a Guardian Zero that is down costs at most this
actor's own queue at the bus (bounded there).
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from actors.base import AeyonActor
from actors.messages import EventsAck, EventsDelivered, Subscribe, Subscribed
from actors.messages.control import Configure
from actors.messages.events import FORENSIC_ANALYSIS_TRIGGERED
from system.guard_client import GuardClient
from system.retry import RetryPolicy

ATTEMPTS = 3
TIMEOUT_S = 5.0
RETRY = RetryPolicy(max_attempts=ATTEMPTS, base_s=0.5, cap_s=4.0)


class GuardianSink(AeyonActor):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.url: str | None = None
        self.client: GuardClient | None = None
        self.rng = random.Random()
        self.sent = 0
        self.failed = 0

    def receiveMsg_Configure(self, message: Configure, sender: Any) -> None:
        self.url = message.settings.guardian_zero_url
        # (Again) on every Configure: a replaced EventBus starts without subscribers.
        self.send(message.peers.event_bus, Subscribe("guardian-zero", (FORENSIC_ANALYSIS_TRIGGERED,), None,
                                                     "guardian_zero"))

    def receiveMsg_Subscribed(self, message: Subscribed, sender: Any) -> None:
        pass

    def receiveMsg_EventsDelivered(self, message: EventsDelivered, sender: Any) -> None:
        if self.client is None:
            self.client = GuardClient()
        for event in message.events:
            body = json.dumps({"event_type": event.event_type, "sequence": event.sequence,
                               "timestamp": event.timestamp, "source": event.source, "data": event.data}).encode()
            if self._post(body, f"forensic-{event.sequence}"):
                self.sent += 1
            else:
                self.failed += 1
                self.log.error("could not deliver forensic event %d to Guardian Zero", event.sequence)
        self.send(sender, EventsAck(message.batch_id))

    def _post(self, body: bytes, request_id: str) -> bool:
        assert self.client is not None and self.url is not None
        for attempt in range(1, ATTEMPTS + 1):
            outcome = self.client.call(self.url, body, request_id, time.time() + TIMEOUT_S)
            if outcome.outcome == "success" or outcome.outcome == "guard_rejected":
                return outcome.outcome == "success"
            if attempt < ATTEMPTS:
                time.sleep(RETRY.backoff_s(attempt - 1, self.rng))
        return False

    def state(self) -> dict[str, Any]:
        """For inspection."""
        return {"url": self.url, "sent": self.sent, "failed": self.failed}
