"""OTP-style restart intensity: at most ``max_restarts`` in any ``period_s``; past that, escalate."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class RestartIntensity:
    """Counts restarts in a sliding period; ``allow()`` is False once the budget is spent (OTP default 1 in 5 s;
    ours 5 in 10 s, since an actor process restarts in milliseconds)."""

    def __init__(self, max_restarts: int = 5, period_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.max_restarts = max_restarts
        self.period_s = period_s
        self._now = clock
        self._restarts: deque[float] = deque()
        self.total = 0

    def allow(self) -> bool:
        """Record a restart now; True while the restarts in the last period stay within the budget."""
        now = self._now()
        while self._restarts and self._restarts[0] <= now - self.period_s:
            self._restarts.popleft()
        self._restarts.append(now)
        self.total += 1
        return len(self._restarts) <= self.max_restarts
