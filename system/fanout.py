"""Delivering events to subscribers so that no subscriber can hold up the others.

Each subscriber has its own bounded queue and at most one batch in flight; it acknowledges each batch before the
next is sent. A slow subscriber only fills its own queue: past ``max_queue`` its oldest events are dropped (and
counted). A subscriber that does not acknowledge within ``ack_timeout_s`` (crashed, gone, or stuck) is removed
(and counted). The EventBus turns this bookkeeping into messages.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs


@attrs.define
class _Subscriber:
    types: frozenset[str]
    handler: str
    queue: deque[Any] = attrs.field(factory=deque)
    in_flight: int | None = None
    sent_at: float = 0.0
    delivered: int = 0
    dropped: int = 0


class Fanout:
    """Per-subscriber queues with acknowledged batches; see the module docstring. Subscribers are keyed by a
    string (Thespian addresses are not hashable)."""

    def __init__(self, max_queue: int = 1000, max_batch: int = 100, ack_timeout_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.ack_timeout_s = ack_timeout_s
        self._now = clock
        self._subscribers: dict[str, _Subscriber] = {}
        self._next_batch = 1
        self.dropped_events = 0
        self.removed_subscribers = 0

    def subscribe(self, key: str, types: frozenset[str], handler: str = "actor") -> None:
        """Add a subscriber (all types when ``types`` is empty), or change what an existing one wants."""
        existing = self._subscribers.get(key)
        if existing is None:
            self._subscribers[key] = _Subscriber(types, handler)
        else:
            existing.types = types
            existing.handler = handler

    def unsubscribe(self, key: str) -> None:
        """Remove a subscriber and what waits for it."""
        self._subscribers.pop(key, None)

    def publish(self, event: Any, event_type: str) -> list[str]:
        """Queue an event for every subscriber that wants it; the handlers it was queued for."""
        handlers = []
        for subscriber in self._subscribers.values():
            if subscriber.types and event_type not in subscriber.types:
                continue
            if len(subscriber.queue) >= self.max_queue:
                subscriber.queue.popleft()
                subscriber.dropped += 1
                self.dropped_events += 1
            subscriber.queue.append(event)
            handlers.append(subscriber.handler)
        return handlers

    def ready(self) -> list[tuple[str, int, tuple[Any, ...]]]:
        """The batches that may go now: (subscriber key, batch id, events), one per idle subscriber."""
        out = []
        now = self._now()
        for key, subscriber in self._subscribers.items():
            if subscriber.in_flight is not None or not subscriber.queue:
                continue
            count = min(self.max_batch, len(subscriber.queue))
            events = tuple(subscriber.queue.popleft() for _ in range(count))
            subscriber.in_flight = self._next_batch
            subscriber.sent_at = now
            subscriber.delivered += count
            self._next_batch += 1
            out.append((key, subscriber.in_flight, events))
        return out

    def ack(self, key: str, batch_id: int) -> None:
        """The subscriber took a batch: the next may go."""
        subscriber = self._subscribers.get(key)
        if subscriber is not None and subscriber.in_flight == batch_id:
            subscriber.in_flight = None

    def expire(self) -> list[str]:
        """Remove (and return) the subscribers whose batch has waited for its acknowledgement too long."""
        now = self._now()
        dead = [key for key, s in self._subscribers.items()
                if s.in_flight is not None and now - s.sent_at > self.ack_timeout_s]
        for key in dead:
            del self._subscribers[key]
        self.removed_subscribers += len(dead)
        return dead

    def waiting_for_acks(self) -> bool:
        """Some batch is out (the bus must keep a timer running to expire it)."""
        return any(s.in_flight is not None for s in self._subscribers.values())

    def wanted(self) -> set[str]:
        """Every event type some subscriber wants ("*" when one wants all)."""
        out: set[str] = set()
        for subscriber in self._subscribers.values():
            out |= subscriber.types or {"*"}
        return out

    def describe(self) -> list[dict[str, Any]]:
        """For inspection."""
        return [{"handler": s.handler, "types": sorted(s.types), "queued": len(s.queue), "delivered": s.delivered,
                 "dropped": s.dropped, "waiting_for_ack": s.in_flight is not None}
                for s in self._subscribers.values()]

    def __len__(self) -> int:
        return len(self._subscribers)
