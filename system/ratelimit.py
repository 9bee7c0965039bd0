"""Token buckets per identifier (a client ID or address), for the shim's ``429 rate_limited``.

The contract: "The rate-limit bucket of an identifier holds the whole minute's budget: a fresh identifier may send
SECURITY_MAX_REQUESTS_PER_MINUTE requests at once, then refills continuously." So a bucket holds ``capacity`` tokens
(the per-minute budget unless ``burst`` says otherwise), starts full, refills at ``per_minute / 60`` tokens a second,
and a request takes one token.

Accuracy. A token bucket admits at most ``capacity + rate * T`` requests in any window of T seconds: what it held at
the start plus what flowed in. Under steady over-limit load a fresh identifier therefore gets
``capacity + rate * 60`` requests in its first minute, which with the default capacity is ``2 * per_minute`` (the full
bucket, then the refill), and exactly ``rate * 60 = per_minute`` in each following minute, since the bucket is empty
from then on and only the refill gets through. For per_minute = 100: 200 requests in the first minute, 100 a minute
after that.

Memory is bounded two ways:

- A bucket that has refilled to capacity is indistinguishable from a fresh one, so it is not kept. Buckets live in
  an ``OrderedDict`` ordered by last use, and every ``take()`` first drops from the front each bucket that is full by
  now (full at ``updated_at + (capacity - tokens) / rate``). The front is the least recently used, and any bucket
  untouched for ``capacity / rate`` seconds (60 s by default) is full, so the dict holds at most the identifiers seen
  in the last refill period, plus a few that stop the sweep early. Each bucket is dropped at most once per insertion:
  amortized O(1) per call.
- A hard cap, ``max_identifiers``: when a new identifier arrives and the cap is reached, the least recently used
  bucket is evicted even if it is not full. That identifier then starts afresh with a full bucket: a leniency, paid
  only under a flood of distinct identifiers (counted in ``evicted``), and bounded by the cap's memory instead of
  the flood's.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import attrs

# Added to every Retry-After so that a client waiting exactly that long is not refused by float rounding.
_SLACK_S = 1e-6


@attrs.frozen
class RateLimitPolicy:
    """How much an identifier may send: ``per_minute`` requests a minute, with a bucket of ``burst`` (default: the
    whole minute's budget), scaled by ``share`` when several entries split one budget."""

    per_minute: int
    burst: int | None = None
    share: float = 1.0

    def __attrs_post_init__(self) -> None:
        # Comparisons are written so that NaN fails them.
        if isinstance(self.per_minute, bool) or not self.per_minute >= 1:
            raise ValueError(f"per_minute must be at least 1, not {self.per_minute!r}")
        if self.burst is not None and (isinstance(self.burst, bool) or not self.burst >= 1):
            raise ValueError(f"burst must be at least 1 (or None for per_minute), not {self.burst!r}")
        if not 0 < self.share <= 1:
            raise ValueError(f"share must be in (0, 1], not {self.share!r}")
        # A bucket smaller than one request would refuse every request forever; refuse the policy instead.
        if not self.capacity >= 1:
            raise ValueError(
                f"a share of {self.share!r} leaves a bucket of {self.capacity!r} tokens, less than one request: "
                f"raise the per-minute budget or split it among fewer entries"
            )

    @property
    def capacity(self) -> float:
        """Tokens a full bucket holds: the burst (or the per-minute budget) times the share."""
        return (self.burst if self.burst is not None else self.per_minute) * self.share

    @property
    def rate_per_s(self) -> float:
        """Tokens added each second: the per-minute budget over 60, times the share."""
        return self.per_minute / 60.0 * self.share


@attrs.frozen
class Decision:
    """The answer to one ``take()``."""

    allowed: bool
    retry_after_s: float  # 0 when allowed; else the seconds until the tokens asked for are there
    remaining: float  # tokens left in the bucket after this decision


class TokenBuckets:
    """One token bucket per identifier, all under one policy, holding only the buckets that are not full.

    See the module docstring for the accuracy bound and the two memory bounds. ``clock`` is read once per call.
    """

    def __init__(
        self,
        policy: RateLimitPolicy,
        clock: Callable[[], float] = time.monotonic,
        max_identifiers: int = 100_000,
    ):
        if isinstance(max_identifiers, bool) or not max_identifiers >= 1:
            raise ValueError(f"max_identifiers must be at least 1, not {max_identifiers!r}")
        self._policy = policy
        self._now = clock
        self.max_identifiers = max_identifiers
        # identifier -> (tokens, updated_at), least recently used first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.evicted = 0  # buckets dropped by the cap before they were full

    @property
    def policy(self) -> RateLimitPolicy:
        """The policy in force."""
        return self._policy

    def __len__(self) -> int:
        """Buckets held: identifiers whose bucket is not (known to be) full."""
        return len(self._buckets)

    def take(self, identifier: str, tokens: float = 1.0) -> Decision:
        """Take ``tokens`` from the identifier's bucket if it holds that many; otherwise refuse and say when to retry.

        A refused take takes nothing, so retrying after ``retry_after_s`` succeeds if nothing else drew on the bucket.
        """
        capacity = self._policy.capacity
        rate = self._policy.rate_per_s
        if not 0 < tokens <= capacity:
            raise ValueError(f"tokens must be in (0, capacity = {capacity!r}], not {tokens!r}")
        now = self._now()
        self._drop_full(now)
        state = self._buckets.get(identifier)
        if state is None:
            if len(self._buckets) >= self.max_identifiers:
                self._buckets.popitem(last=False)
                self.evicted += 1
            available, stamp = capacity, now
        else:
            available, stamp = self._refilled(state, now, capacity, rate)
        if available >= tokens:
            remaining = available - tokens
            decision = Decision(allowed=True, retry_after_s=0.0, remaining=remaining)
        else:
            remaining = available
            decision = Decision(allowed=False, retry_after_s=(tokens - available) / rate + _SLACK_S,
                                remaining=remaining)
        self._buckets[identifier] = (remaining, stamp)
        self._buckets.move_to_end(identifier)
        return decision

    def set_policy(self, policy: RateLimitPolicy) -> None:
        """Switch to ``policy``: each bucket is refilled up to now at the old rate, then clamped to the new capacity
        (a shrunk budget applies at once; a grown one is earned at the new rate, not granted)."""
        old_capacity, old_rate = self._policy.capacity, self._policy.rate_per_s
        now = self._now()
        new_capacity = policy.capacity
        for identifier, state in list(self._buckets.items()):
            available, stamp = self._refilled(state, now, old_capacity, old_rate)
            self._buckets[identifier] = (min(available, new_capacity), stamp)
        self._policy = policy
        self._drop_full(now)

    def _drop_full(self, now: float) -> None:
        capacity = self._policy.capacity
        rate = self._policy.rate_per_s
        buckets = self._buckets
        while buckets:
            identifier = next(iter(buckets))
            tokens, updated_at = buckets[identifier]
            if updated_at + (capacity - tokens) / rate > now:
                break
            del buckets[identifier]

    @staticmethod
    def _refilled(state: tuple[float, float], now: float, capacity: float, rate: float) -> tuple[float, float]:
        tokens, updated_at = state
        # A clock that steps back credits nothing, and the stamp never moves back, so no interval is credited twice.
        elapsed = max(0.0, now - updated_at)
        return min(capacity, tokens + elapsed * rate), max(now, updated_at)
