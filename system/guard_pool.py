"""A guard's bulkhead: a bounded queue of calls and a bounded set of worker slots.

Plain bookkeeping for the GuardSupervisor, which maps slots to worker actors. A slot is busy from the moment it
is handed calls until its worker reports them done (or dies); calls wait in the queue only while every slot is
busy, and the queue's bound turns a flood into ``overloaded`` answers instead of unbounded memory.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

C = TypeVar("C")


class GuardPool(Generic[C]):
    """Admission and assignment of calls to at most ``max_workers`` slots; see the module docstring."""

    def __init__(self, max_workers: int, queue_limit: int, max_batch: int = 4, hold_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.max_workers = max_workers
        self.queue_limit = queue_limit
        self.max_batch = max_batch
        # How long queued calls may wait for a busy worker to come back (and take them all in one batch) before
        # another worker is used; 0: never wait.
        self.hold_s = hold_s
        self._clock = clock
        self._queue: deque[C] = deque()
        self._since: deque[float] = deque()  # when each queued call arrived
        self._idle: list[int] = []
        self._busy: dict[int, list[C]] = {}
        self._next_slot = 0
        # Slot numbers of closed slots, reused first so a replacement worker keeps its predecessor's name.
        self._closed: list[int] = []

    def admit(self, call: C) -> bool:
        """Queue a call; False when the queue is full (the caller answers ``overloaded``)."""
        if len(self._queue) >= self.queue_limit:
            return False
        self._queue.append(call)
        self._since.append(self._clock())
        return True

    def assignments(self) -> list[tuple[int, list[C], bool]]:
        """Hand queued calls to free slots: (slot, calls, whether the slot is new and needs a worker).

        Each free slot in turn takes up to ``max_batch`` calls (its worker makes them one after another); a new
        slot is opened only when no slot is free. ``max_batch`` is the supervisor's to set: as many calls as a
        worker finishes in a few milliseconds, so a fast guard's calls travel in few messages (each message costs
        about as much CPU as a call) and a slow guard's are spread over all the workers.

        While some slot is busy, calls that would not fill a batch wait (up to ``hold_s``) for it to come back
        rather than going out one by one to other workers: with a fast guard, more workers only add messages.
        ``held()`` says when the oldest waiting call must go anyway.
        """
        out: list[tuple[int, list[C], bool]] = []
        while self._queue and not self._holding():
            new = False
            if self._idle:
                slot = self._idle.pop()
            elif self.slots < self.max_workers:
                slot = self._new_slot()
                new = True
            else:
                break
            take = min(self.max_batch, len(self._queue))
            calls = [self._queue.popleft() for _ in range(take)]
            for _ in range(take):
                self._since.popleft()
            self._busy[slot] = calls
            out.append((slot, calls, new))
        return out

    def _holding(self) -> bool:
        return (self.hold_s > 0 and bool(self._busy) and len(self._queue) < self.max_batch
                and self._clock() - self._since[0] < self.hold_s)

    def held(self) -> float | None:
        """Seconds until the oldest call held back for a busy worker must be handed out; None if none is held."""
        if not self._queue or not self._holding():
            return None
        return max(0.0, self._since[0] + self.hold_s - self._clock())

    def _new_slot(self) -> int:
        if self._closed:
            self._closed.sort()
            return self._closed.pop(0)
        slot = self._next_slot
        self._next_slot += 1
        return slot

    def done(self, slot: int) -> list[C]:
        """The slot's worker finished its calls; the slot is free again."""
        calls = self._busy.pop(slot, [])
        if slot not in self._idle:
            self._idle.append(slot)
        return calls

    def lost(self, slot: int) -> list[C]:
        """The slot's worker died: close the slot and return the calls it held (to be answered as failed)."""
        was_open = slot in self._busy or slot in self._idle
        calls = self._busy.pop(slot, [])
        if slot in self._idle:
            self._idle.remove(slot)
        if was_open:
            self._closed.append(slot)
        return calls

    def open_slot(self, slot: int) -> None:
        """Count an already running worker as a free slot (workers started ahead of demand)."""
        if slot not in self._busy and slot not in self._idle:
            self._idle.append(slot)
            self._next_slot = max(self._next_slot, slot + 1)
            if slot in self._closed:
                self._closed.remove(slot)

    def drain(self) -> list[C]:
        """Take every queued call (the guard is going away)."""
        calls = list(self._queue)
        self._queue.clear()
        self._since.clear()
        return calls

    def busy_slots(self) -> set[int]:
        """The slots whose workers hold calls."""
        return set(self._busy)

    @property
    def slots(self) -> int:
        """Slots open (busy or free)."""
        return len(self._idle) + len(self._busy)

    @property
    def busy(self) -> int:
        """Slots with calls."""
        return len(self._busy)

    @property
    def queued(self) -> int:
        """Calls waiting for a slot."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Calls with workers now."""
        return sum(len(calls) for calls in self._busy.values())
