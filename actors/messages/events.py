"""EventBus messages: publish, subscribe, and the interest the bus pushes to publishers."""

from __future__ import annotations

from typing import Any

import attrs

SERVICE_HEALTH_CHANGED = "SERVICE_HEALTH_CHANGED"
SERVICE_DISCOVERED = "SERVICE_DISCOVERED"
SERVICE_REGISTERED = "SERVICE_REGISTERED"
SERVICE_UNREGISTERED = "SERVICE_UNREGISTERED"
REQUEST_ROUTED = "REQUEST_ROUTED"
REQUEST_FAILED = "REQUEST_FAILED"
CIRCUIT_BREAKER_OPENED = "CIRCUIT_BREAKER_OPENED"
CIRCUIT_BREAKER_CLOSED = "CIRCUIT_BREAKER_CLOSED"
FORENSIC_ANALYSIS_TRIGGERED = "FORENSIC_ANALYSIS_TRIGGERED"
ARCHITECTURE_REVIEW_REQUESTED = "ARCHITECTURE_REVIEW_REQUESTED"
# Not in the contract's list: extensions (an actor died and was replaced; a request was refused at the edge).
ACTOR_RESTARTED = "ACTOR_RESTARTED"
SECURITY_VIOLATION = "SECURITY_VIOLATION"

EVENT_TYPES: tuple[str, ...] = (
    SERVICE_HEALTH_CHANGED,
    SERVICE_DISCOVERED,
    SERVICE_REGISTERED,
    SERVICE_UNREGISTERED,
    REQUEST_ROUTED,
    REQUEST_FAILED,
    CIRCUIT_BREAKER_OPENED,
    CIRCUIT_BREAKER_CLOSED,
    FORENSIC_ANALYSIS_TRIGGERED,
    ARCHITECTURE_REVIEW_REQUESTED,
    ACTOR_RESTARTED,
    SECURITY_VIOLATION,
)

# Published once per request; entries send them only while somebody subscribes (see EventsInterest).
PER_REQUEST_EVENT_TYPES: frozenset[str] = frozenset({REQUEST_ROUTED, REQUEST_FAILED})


@attrs.frozen
class Event:
    """Something that happened; ``sequence`` is given by the EventBus (0 until published)."""

    event_type: str
    timestamp: float
    data: dict[str, Any] = attrs.field(factory=dict)
    source: str = ""
    sequence: int = 0


@attrs.frozen
class Publish:
    """Publish one event."""

    event: Event


@attrs.frozen
class PublishBatch:
    """Publish several events in one message (entries batch their per-request events)."""

    events: tuple[Event, ...]


@attrs.frozen
class Subscribe:
    """Receive ``EventNotice`` for these event types (all when empty); answered with ``Subscribed``.

    ``since`` replays buffered events with a sequence number above it (None: no replay).
    """

    request_id: str
    event_types: tuple[str, ...] = ()
    since: int | None = None
    # What the subscriber is, for orchestrator_events_handled_total{handler} (a short fixed name, e.g. "cli").
    handler: str = ""


@attrs.frozen
class Subscribed:
    """The subscription is active; ``replay`` holds the buffered events asked for; acknowledge deliveries to
    ``bus``."""

    request_id: str
    replay: tuple[Event, ...] = ()
    bus: Any = None


@attrs.frozen
class Unsubscribe:
    """Stop receiving events."""

    request_id: str


@attrs.frozen
class EventsDelivered:
    """Events for a subscriber; the next batch comes once this one is acknowledged with ``EventsAck``."""

    batch_id: int
    events: tuple[Event, ...]


@attrs.frozen
class EventsAck:
    """Subscriber -> EventBus: the batch arrived (a subscriber that stops acknowledging is dropped)."""

    batch_id: int


@attrs.frozen
class ReplayEvents:
    """The buffered events after ``since`` (sequence numbers), of these types (all when empty); answered with
    ``EventsReplayed``."""

    request_id: str
    since: int = 0
    event_types: tuple[str, ...] = ()


@attrs.frozen
class EventsReplayed:
    """Buffered events, oldest first."""

    request_id: str
    events: tuple[Event, ...]


@attrs.frozen
class RegisterPublisher:
    """An actor that would publish per-request events asks to be told which ones anybody wants."""

    request_id: str


@attrs.frozen
class EventsInterest:
    """EventBus -> publishers: the per-request event types that have subscribers now."""

    event_types: frozenset[str]
