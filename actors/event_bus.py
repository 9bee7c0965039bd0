"""EventBus: publish/subscribe of the contract's event types, with a bounded buffer of recent events.

It also tells publishers of per-request events (entries) which of those anybody wants, so that with no
subscriber the request path sends nothing here.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs

from actors.base import AeyonActor
from actors.messages import (
    Event,
    EventNotice,
    EventsInterest,
    Publish,
    PublishBatch,
    Subscribe,
    Subscribed,
    Unsubscribe,
)
from actors.messages.control import Configure
from actors.messages.events import EVENT_TYPES, PER_REQUEST_EVENT_TYPES, RegisterPublisher
from system import metrics

RECENT_EVENTS = 1000


class _Subscriber:
    __slots__ = ("address", "handler", "types")

    def __init__(self, address: Any, types: frozenset[str], handler: str):
        self.address = address
        self.types = types
        self.handler = handler

    def wants(self, event_type: str) -> bool:
        return not self.types or event_type in self.types


class EventBus(AeyonActor):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.subscribers: list[_Subscriber] = []
        self.publishers: list[Any] = []
        self.recent: deque[Event] = deque(maxlen=RECENT_EVENTS)
        self.sequence = 0
        self.published = dict.fromkeys(EVENT_TYPES, 0)
        self.interest: frozenset[str] = frozenset()

    def receiveMsg_Configure(self, message: Configure, sender: Any) -> None:
        for event_type in EVENT_TYPES:  # the series exist from the start, at zero
            metrics.EVENTS_PUBLISHED.labels(event_type)
            metrics.EVENTS_HANDLED.labels(event_type, "actor")

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
        for subscriber in self.subscribers:
            if subscriber.wants(event.event_type):
                self.send(subscriber.address, EventNotice(event))
                metrics.EVENTS_HANDLED.labels(event.event_type, subscriber.handler).inc()

    def receiveMsg_Subscribe(self, message: Subscribe, sender: Any) -> None:
        types = frozenset(t for t in message.event_types if t in self.published)
        self.subscribers = [s for s in self.subscribers if s.address != sender]
        self.subscribers.append(_Subscriber(sender, types, message.handler or "actor"))
        replay: tuple[Event, ...] = ()
        if message.since is not None:
            replay = tuple(e for e in self.recent
                           if e.sequence > message.since and (not types or e.event_type in types))
        self.send(sender, Subscribed(message.request_id, replay))
        self._update_interest()

    def receiveMsg_Unsubscribe(self, message: Unsubscribe, sender: Any) -> None:
        self.subscribers = [s for s in self.subscribers if s.address != sender]
        self._update_interest()

    def receiveMsg_RegisterPublisher(self, message: RegisterPublisher, sender: Any) -> None:
        self.publishers = [p for p in self.publishers if p != sender]
        self.publishers.append(sender)
        self.send(sender, EventsInterest(self.interest))

    def _update_interest(self) -> None:
        wanted: set[str] = set()
        for subscriber in self.subscribers:
            wanted |= PER_REQUEST_EVENT_TYPES if not subscriber.types else subscriber.types & PER_REQUEST_EVENT_TYPES
        interest = frozenset(wanted)
        if interest != self.interest:
            self.interest = interest
            for publisher in self.publishers:
                self.send(publisher, EventsInterest(interest))

    def state(self) -> dict[str, Any]:
        """For inspection."""
        return {"subscribers": len(self.subscribers), "sequence": self.sequence, "buffered": len(self.recent)}
