"""Server-sent events for ``GET /v1/events``: query parsing, the wire format, and each client's stream state."""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import parse_qs

import attrs

from actors.messages.events import EVENT_TYPES, Event
from system.errors import RequestError

KEEPALIVE = b": keep-alive\n\n"


@attrs.define
class SseClient:
    """One ``GET /v1/events`` connection: the types it wants, the last sequence it got, and the live events held
    back while its replay is on the way (so the replay and the live stream join without gaps or repeats)."""

    types: frozenset[str]
    last_sequence: int = 0
    replaying: bool = False
    held: list[Event] = attrs.field(factory=list)

    def wants(self, event: Event) -> bool:
        """Not yet sent, and of a type it asked for."""
        return event.sequence > self.last_sequence and (not self.types or event.event_type in self.types)

    def frames(self, events: Iterable[Event]) -> bytes:
        """The wire form of the events it still wants, in order; remembers how far it got."""
        out = []
        for event in sorted(events, key=lambda e: e.sequence):
            if self.wants(event):
                out.append(frame(event))
                self.last_sequence = event.sequence
        return b"".join(out)


def parse_query(query: str) -> tuple[frozenset[str], int | None]:
    """``types=A,B`` (default all) and ``since=N`` (replay the buffered events after sequence N)."""
    params = parse_qs(query, keep_blank_values=True)
    types: set[str] = set()
    for value in params.get("types", []) + params.get("type", []):
        types.update(t.strip() for t in value.split(",") if t.strip())
    unknown = sorted(types - set(EVENT_TYPES))
    if unknown:
        raise RequestError("invalid_request", "unknown event types: " + ", ".join(unknown))
    since = None
    if "since" in params:
        raw = params["since"][-1]
        if not raw.isdigit() or len(raw) > 18:
            raise RequestError("invalid_request", "since must be a sequence number (0 or more)")
        since = int(raw)
    return frozenset(types), since


def frame(event: Event) -> bytes:
    """``id``, ``event`` and one ``data`` line of JSON."""
    data = json.dumps({"sequence": event.sequence, "event_type": event.event_type, "timestamp": event.timestamp,
                       "source": event.source, "data": event.data}, separators=(",", ":"))
    return f"id: {event.sequence}\nevent: {event.event_type}\ndata: {data}\n\n".encode()
