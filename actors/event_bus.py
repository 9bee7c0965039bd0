"""EventBus: publish/subscribe of the contract's event types, with a bounded buffer of recent events for replay.

Delivery goes through ``system.fanout.Fanout``: each subscriber has its own bounded queue and one acknowledged
batch in flight, so a subscriber that crashes or stalls never holds up the others; its dropped events and its
removal are counted. The bus also tells publishers of per-request events (entries) which of those anybody wants,
so that with no subscriber the request path sends nothing here.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs
from thespian.actors import WakeupMessage

from actors.base import AeyonActor
from actors.messages import (
    Event,
    EventsAck,
    EventsDelivered,
    EventsInterest,
    EventsReplayed,
    Publish,
    PublishBatch,
    ReplayEvents,
    Subscribe,
    Subscribed,
    Unsubscribe,
)
from actors.messages.control import Configure
from actors.messages.events import EVENT_TYPES, PER_REQUEST_EVENT_TYPES, RegisterPublisher
from system import metrics
from system.fanout import Fanout

RECENT_EVENTS = 1000
TICK_S = 1.0


class EventBus(AeyonActor):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fanout = Fanout()
        self.addresses: dict[str, Any] = {}  # subscriber key -> address (addresses are not hashable)
        self.publishers: list[Any] = []
        self.recent: deque[Event] = deque(maxlen=RECENT_EVENTS)
        self.sequence = 0
        self.published = dict.fromkeys(EVENT_TYPES, 0)
        self.interest: frozenset[str] = frozenset()
        self.ticking = False

    def receiveMessage(self, message: Any, sender: Any) -> Any:
        result = super().receiveMessage(message, sender)
        self._deliver()
        return result

    def receiveMsg_Configure(self, message: Configure, sender: Any) -> None:
        self.fanout.max_queue = message.settings.events_queue
        self.fanout.ack_timeout_s = message.settings.events_ack_timeout_s
        for event_type in EVENT_TYPES:  # the series exist from the start, at zero
            metrics.EVENTS_PUBLISHED.labels(event_type)
            metrics.EVENTS_HANDLED.labels(event_type, "actor")

    # -- publishing --------------------------------------------------------------------------------------------

    def receiveMsg_Publish(self, message: Publish, sender: Any) -> None:
        self._publish(message.event)

    def receiveMsg_PublishBatch(self, message: PublishBatch, sender: Any) -> None:
        for event in message.events:
            self._publish(event)

    def _publish(self, event: Event) -> None:
        if event.event_type not in self.published:
            self.log.warning("dropped an event of unknown type %r", event.event_type)
            return
        self.sequence += 1
        event = attrs.evolve(event, sequence=self.sequence)
        self.recent.append(event)
        self.published[event.event_type] += 1
        metrics.EVENTS_PUBLISHED.labels(event.event_type).inc()
        for handler in self.fanout.publish(event, event.event_type):
            metrics.EVENTS_HANDLED.labels(event.event_type, handler).inc()

    def _deliver(self) -> None:
        for key, batch_id, events in self.fanout.ready():
            self.send(self.addresses[key], EventsDelivered(batch_id, events))
        if self.fanout.waiting_for_acks() and not self.ticking:
            self.ticking = True
            self.wakeupAfter(TICK_S)

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> None:
        self.ticking = False
        for key in self.fanout.expire():
            self.log.warning("dropped a subscriber that stopped acknowledging events: %s", key)
            self.addresses.pop(key, None)
            self._update_interest()

    # -- subscribing -------------------------------------------------------------------------------------------

    def receiveMsg_Subscribe(self, message: Subscribe, sender: Any) -> None:
        types = frozenset(t for t in message.event_types if t in self.published)
        key = str(sender)
        self.addresses[key] = sender
        self.fanout.subscribe(key, types, message.handler or "actor")
        replay: tuple[Event, ...] = ()
        if message.since is not None:
            replay = self._replay(message.since, types)
        self.send(sender, Subscribed(message.request_id, replay, self.myAddress))
        self._update_interest()

    def receiveMsg_Unsubscribe(self, message: Unsubscribe, sender: Any) -> None:
        self.fanout.unsubscribe(str(sender))
        self.addresses.pop(str(sender), None)
        self._update_interest()

    def receiveMsg_EventsAck(self, message: EventsAck, sender: Any) -> None:
        self.fanout.ack(str(sender), message.batch_id)

    def receiveMsg_ReplayEvents(self, message: ReplayEvents, sender: Any) -> None:
        types = frozenset(t for t in message.event_types if t in self.published)
        self.send(sender, EventsReplayed(message.request_id, self._replay(message.since, types)))

    def _replay(self, since: int, types: frozenset[str]) -> tuple[Event, ...]:
        return tuple(e for e in self.recent if e.sequence > since and (not types or e.event_type in types))

    def receiveMsg_RegisterPublisher(self, message: RegisterPublisher, sender: Any) -> None:
        self.publishers = [p for p in self.publishers if p != sender]
        self.publishers.append(sender)
        self.send(sender, EventsInterest(self.interest))

    def _update_interest(self) -> None:
        wanted = self.fanout.wanted()
        interest = frozenset(PER_REQUEST_EVENT_TYPES if "*" in wanted else wanted & PER_REQUEST_EVENT_TYPES)
        if interest != self.interest:
            self.interest = interest
            for publisher in self.publishers:
                self.send(publisher, EventsInterest(interest))

    def state(self) -> dict[str, Any]:
        """For inspection."""
        return {"subscribers": len(self.fanout), "sequence": self.sequence, "buffered": len(self.recent),
                "dropped_events": self.fanout.dropped_events, "removed_subscribers": self.fanout.removed_subscribers,
                "subscriptions": self.fanout.describe()}
