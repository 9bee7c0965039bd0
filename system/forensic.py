"""Repeated security violations from one identifier: when to ask for forensic analysis.

An identifier that commits ``threshold`` violations within ``window_s`` triggers once; it can trigger again only
after another full window. Memory is bounded: at most ``max_identifiers`` are tracked (the least recently seen
is forgotten first).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable


class ViolationTracker:
    """Counts violations per identifier in a sliding window; see the module docstring."""

    def __init__(self, threshold: int = 10, window_s: float = 60.0, max_identifiers: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self.window_s = window_s
        self.max_identifiers = max_identifiers
        self._now = clock
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()
        self._triggered: dict[str, float] = {}

    def record(self, identifier: str) -> int | None:
        """One violation; returns the count in the window when this one crosses the threshold, else None."""
        now = self._now()
        times = self._seen.pop(identifier, None)
        if times is None:
            times = deque()
            if len(self._seen) >= self.max_identifiers:
                forgotten, _ = self._seen.popitem(last=False)
                self._triggered.pop(forgotten, None)
        self._seen[identifier] = times
        times.append(now)
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(times) < self.threshold:
            return None
        last = self._triggered.get(identifier)
        if last is not None and now - last < self.window_s:
            return None
        self._triggered[identifier] = now
        return len(times)

    def __len__(self) -> int:
        return len(self._seen)
