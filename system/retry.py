"""When to try a guard call again, how long to wait first, and how many retries the whole process may have out.

Anchors:

- AWS Architecture Blog, "Exponential Backoff And Jitter": *full jitter*, ``sleep = uniform(0, min(cap, base *
  2**retry))``, which spreads the retries of many clients that failed together instead of sending them back in step.
- Envoy's route retry policy: ``retry_on`` connect-failure, reset and ``retriable_status_codes`` (here 502, 503, 504),
  ``num_retries`` (here ``max_attempts`` counts the first attempt too), and never past the request's deadline.
- Envoy's retry budget (``budget_percent`` of the active requests, ``min_retry_concurrency``): retries in flight are
  bounded by a share of the requests in flight, so a failing guard does not see its load multiplied by retries.

Whether a failure is retryable (a refused or reset connection, one of ``retry_statuses``) is decided by the caller,
which knows the error; this module only knows the numbers. Randomness comes from the ``random.Random`` passed in.
"""

from __future__ import annotations

import math
import random

import attrs


@attrs.frozen
class RetryPolicy:
    """Attempts per request and the full-jitter backoff between them."""

    max_attempts: int = 3  # attempts in all, the first included
    base_s: float = 0.025
    cap_s: float = 1.0
    retry_statuses: frozenset[int] = frozenset({502, 503, 504})
    # A retry must leave at least this long before the deadline for the attempt itself; less is a wasted call.
    min_attempt_s: float = 0.010

    def __attrs_post_init__(self) -> None:
        # Comparisons are written so that NaN fails them.
        if not self.max_attempts >= 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts!r}")
        if not 0 <= self.base_s <= self.cap_s:
            raise ValueError(f"need 0 <= base_s <= cap_s, not {self.base_s!r} and {self.cap_s!r}")
        if not self.min_attempt_s >= 0:
            raise ValueError(f"min_attempt_s must not be negative, not {self.min_attempt_s!r}")

    def is_retryable_status(self, status: int) -> bool:
        """Whether a guard's HTTP status is one to retry (Envoy's retriable_status_codes)."""
        return status in self.retry_statuses

    def backoff_ceiling_s(self, retry: int) -> float:
        """The most ``backoff_s(retry)`` may return: ``min(cap_s, base_s * 2**retry)``."""
        if retry < 0:
            raise ValueError(f"retry counts from 0, not {retry!r}")
        try:
            return min(self.cap_s, self.base_s * 2.0**retry)
        except OverflowError:  # 2**retry past float range: long past the cap
            return self.cap_s

    def backoff_s(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (from 0): full jitter, uniform in [0, ceiling]."""
        return rng.uniform(0.0, self.backoff_ceiling_s(retry))

    def should_retry(self, attempt: int, retryable: bool, remaining_s: float, backoff_s: float) -> bool:
        """Whether to try again after ``attempt`` attempts (1 after the first): attempts are left, the failure is
        retryable, and the backoff plus ``min_attempt_s`` fits before the deadline (``remaining_s`` from now)."""
        return attempt < self.max_attempts and retryable and backoff_s + self.min_attempt_s <= remaining_s


@attrs.frozen
class RetryBudget:
    """Envoy's retry budget: retries in flight at most ``percent`` of requests in flight, but always
    ``min_concurrency`` of them, so a quiet guard may still be retried."""

    percent: float = 0.2
    min_concurrency: int = 3

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.percent <= 1:
            raise ValueError(f"percent must be in [0, 1], not {self.percent!r}")
        if not self.min_concurrency >= 0:
            raise ValueError(f"min_concurrency must not be negative, not {self.min_concurrency!r}")

    def allowance(self, in_flight: int, retries_outstanding: int) -> int:
        """How many more retries may start now: ``max(min_concurrency, floor(percent * in_flight))`` less those
        outstanding, never below 0."""
        # Rounded first so float noise cannot cost a retry: 0.29 * 100 is 28.999999999999996, and 29% of 100 is 29.
        share = math.floor(round(self.percent * max(in_flight, 0), 9))
        limit = max(self.min_concurrency, share)
        return max(0, limit - retries_outstanding)
