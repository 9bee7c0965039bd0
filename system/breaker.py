"""A circuit breaker per guard: stop calling a guard that fails or crawls, probe it, and let traffic back in.

Two anchors, so the knobs mean what they mean elsewhere:

- resilience4j ``CircuitBreaker``, count-based sliding window: the last ``window_size`` calls are kept; nothing trips
  before ``minimum_calls`` (resilience4j's ``minimumNumberOfCalls``) are in the window; it opens when the failure rate
  reaches ``failure_rate_threshold`` or the share of calls slower than ``slow_call_duration_s``
  (``slowCallDurationThreshold``) reaches ``slow_call_rate_threshold`` (``slowCallRateThreshold``). Half-open admits
  ``half_open_calls`` probes (``permittedNumberOfCallsInHalfOpenState``). Unlike resilience4j, half-open here needs
  every probe to succeed: a guard that fails one in three probes is not well.
- Envoy outlier detection: the ejection time grows with each consecutive ejection (``base_ejection_time`` times the
  ejection count) and is capped by ``max_ejection_time``. Here the open period doubles per consecutive trip, from
  ``open_base_s`` up to ``open_max_s``, and a close resets the count.

The breaker is a plain object driven by its guard's supervisor: ``try_acquire()`` before a call, ``record()`` after
it, ``poll()`` on the supervisor's timer and before acting, so the time-based move OPEN -> HALF_OPEN is reported in
order. It only reads the clock it is given.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)

# Why a breaker changed state (Transition.cause).
CAUSES = (
    "failure_rate", "slow_call_rate", "probe_failed", "probes_succeeded", "open_elapsed", "health_check_passed",
    "restored",
)


@attrs.frozen
class BreakerConfig:
    """A breaker's knobs; see the module docstring for where each comes from."""

    window_size: int = 20
    minimum_calls: int = 10
    failure_rate_threshold: float = 0.5
    slow_call_duration_s: float = 5.0
    slow_call_rate_threshold: float = 0.8
    open_base_s: float = 5.0
    open_max_s: float = 60.0
    half_open_calls: int = 3

    def __attrs_post_init__(self) -> None:
        # Comparisons are written so that NaN fails them.
        if not self.window_size >= 1:
            raise ValueError(f"window_size must be at least 1, not {self.window_size!r}")
        if not 1 <= self.minimum_calls <= self.window_size:
            raise ValueError(f"minimum_calls must be between 1 and window_size ({self.window_size}), "
                             f"not {self.minimum_calls!r}")
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], not {value!r}")
        if not self.slow_call_duration_s > 0:
            raise ValueError(f"slow_call_duration_s must be positive, not {self.slow_call_duration_s!r}")
        if not 0 < self.open_base_s <= self.open_max_s:
            raise ValueError(f"need 0 < open_base_s <= open_max_s, not {self.open_base_s!r} and {self.open_max_s!r}")
        if not self.half_open_calls >= 1:
            raise ValueError(f"half_open_calls must be at least 1, not {self.half_open_calls!r}")

    def open_period_s(self, trips: int) -> float:
        """The open period after ``trips`` consecutive trips: doubling from ``open_base_s``, capped."""
        try:
            period = self.open_base_s * 2.0 ** (max(trips, 1) - 1)
        except OverflowError:  # thousands of trips in a row: long past the cap
            return self.open_max_s
        return min(period, self.open_max_s)


DEFAULT_CONFIG = BreakerConfig()


@attrs.frozen
class Transition:
    """A state change, for events and logs."""

    previous: str
    state: str
    cause: str
    failure_rate: float  # the window's figures at the moment of the change (0..1)
    slow_call_rate: float
    calls: int  # calls in the window
    open_for_s: float  # the open period chosen (0 unless state == OPEN)
    trips: int  # consecutive trips so far


class CircuitBreaker:
    """One guard's breaker: CLOSED counts calls in a sliding window, OPEN refuses, HALF_OPEN admits a few probes.

    The window holds CLOSED calls and, in HALF_OPEN, the probes (so the figures in transitions and snapshots show
    what the probes did); it is cleared on every trip and on closing, so a fresh CLOSED period starts from nothing.
    """

    def __init__(self, config: BreakerConfig = DEFAULT_CONFIG, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._now = clock
        self._state = CLOSED
        self._trips = 0
        self._open_until = 0.0
        self._opened_at = 0.0
        self._open_for_s = 0.0
        # The window: (failed, slow) per call, with running counts so a record is O(1).
        self._window: deque[tuple[bool, bool]] = deque(maxlen=config.window_size)
        self._failures = 0
        self._slow = 0
        # HALF_OPEN bookkeeping: probe slots taken (released ones given back) and probes that came back fine.
        self._probes_acquired = 0
        self._probes_succeeded = 0
        # A move made by the clock (or a restore) that poll() has not yet handed out.
        self._unreported: Transition | None = None

    # -- reading --------------------------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """CLOSED, OPEN or HALF_OPEN; an OPEN whose period has elapsed reads HALF_OPEN (the move itself is poll()'s)."""
        if self._state == OPEN and self._now() >= self._open_until:
            return HALF_OPEN
        return self._state

    @property
    def trips(self) -> int:
        """Consecutive trips since the breaker last closed."""
        return self._trips

    @property
    def calls(self) -> int:
        """Calls now in the window."""
        return len(self._window)

    @property
    def probes_acquired(self) -> int:
        """Probe slots taken in the current half-open period (0 outside HALF_OPEN)."""
        return self._probes_acquired

    def retry_after_s(self) -> float:
        """While OPEN, the seconds until HALF_OPEN (never negative); otherwise 0."""
        if self._state != OPEN:
            return 0.0
        return max(0.0, self._open_until - self._now())

    def reconfigure(self, config: BreakerConfig) -> None:
        """New thresholds and periods, keeping the state, the trips and the most recent calls of the window."""
        self.config = config
        recent = list(self._window)[-config.window_size:]
        self._window = deque(recent, maxlen=config.window_size)
        self._failures = sum(failed for failed, _ in recent)
        self._slow = sum(slow for _, slow in recent)

    def snapshot(self) -> dict[str, Any]:
        """The breaker as JSON-ready data: for inspection, and for ``restore()`` after a restart."""
        state = self.state
        failure_rate, slow_call_rate = self._rates()
        return {
            "state": state,
            "trips": self._trips,
            "open_until_remaining_s": self.retry_after_s() if state == OPEN else 0.0,
            "calls": len(self._window),
            "failure_rate": failure_rate,
            "slow_call_rate": slow_call_rate,
            "probes_acquired": self._probes_acquired if self._state == HALF_OPEN else 0,
            "probes_succeeded": self._probes_succeeded if self._state == HALF_OPEN else 0,
        }

    @classmethod
    def restore(
        cls,
        snapshot: Mapping[str, Any],
        config: BreakerConfig = DEFAULT_CONFIG,
        clock: Callable[[], float] = time.monotonic,
    ) -> CircuitBreaker:
        """A breaker from ``snapshot()``'s data: state, trips and remaining open time come back, the window is empty,
        and a HALF_OPEN breaker has no probes out. A state other than CLOSED is reported by the first ``poll()``
        (cause ``restored``), so the supervisor can announce it again."""
        state = snapshot.get("state")
        trips = snapshot.get("trips", 0)
        remaining = snapshot.get("open_until_remaining_s", 0.0)
        if state not in STATES:
            raise ValueError(f"snapshot state must be one of {STATES}, not {state!r}")
        if isinstance(trips, bool) or not isinstance(trips, int) or trips < 0:
            raise ValueError(f"snapshot trips must be a non-negative integer, not {trips!r}")
        if isinstance(remaining, bool) or not isinstance(remaining, (int, float)) or not remaining >= 0:
            raise ValueError(f"snapshot open_until_remaining_s must be a non-negative number, not {remaining!r}")
        breaker = cls(config, clock)
        breaker._trips = trips
        if state == OPEN:
            # A config loaded since may have a shorter cap; the cap wins.
            breaker._open_for_s = min(float(remaining), config.open_max_s)
            breaker._open_until = clock() + breaker._open_for_s
            # As if it had opened for its full period, of which ``remaining`` is left.
            breaker._opened_at = breaker._open_until - config.open_period_s(max(trips, 1))
        breaker._state = state
        if state != CLOSED:
            breaker._unreported = breaker._transition(CLOSED, state, "restored")
        return breaker

    # -- acting ---------------------------------------------------------------------------------------------------

    def poll(self) -> Transition | None:
        """Make the time-based move OPEN -> HALF_OPEN if it is due, and hand out the move not yet reported, if any."""
        self._tick()
        transition, self._unreported = self._unreported, None
        return transition

    def try_acquire(self) -> bool:
        """May a call go out now? CLOSED: yes; OPEN: no; HALF_OPEN: while probe slots are left (this takes one)."""
        self._tick()
        if self._state == CLOSED:
            return True
        if self._state == HALF_OPEN and self._probes_acquired < self.config.half_open_calls:
            self._probes_acquired += 1
            return True
        return False

    def release(self) -> None:
        """Give back a probe slot that was acquired but never used (the call was dropped before it went out)."""
        self._tick()
        if self._state == HALF_OPEN and self._probes_out > 0:
            self._probes_acquired -= 1

    def record(self, failed: bool, duration_s: float, *, probe: bool | None = None) -> Transition | None:
        """Count one finished call; the Transition it caused, if any.

        ``probe`` says whether ``try_acquire()`` admitted the call as a half-open probe. In HALF_OPEN only probes
        count: ``False`` (a call that was already out when the breaker tripped) is ignored, and ``None`` (the caller
        does not track it) counts as a probe while one is out. In CLOSED every call counts; in OPEN none does, since
        they all left before the trip.
        """
        return self._record(bool(failed), duration_s >= self.config.slow_call_duration_s, probe)

    def record_slow_in_progress(self, *, probe: bool | None = None) -> Transition | None:
        """Count a call that is still running but already past ``slow_call_duration_s`` as one slow, successful call.

        This lets a hung guard trip the breaker before its calls time out. The supervisor, which sees the call on a
        timer, does not ``record()`` that call again when it finishes: it has been counted. ``probe`` as in
        ``record()``; a probe counted here is finished as far as the breaker knows (and, being slow, reopens it).
        """
        return self._record(False, True, probe)

    def health_check_passed(self) -> Transition | None:
        """An active health check passed: an OPEN breaker that has been open for at least the base period goes
        HALF_OPEN at once; otherwise nothing changes.

        It cuts an escalated open period short when the guard is back, but never the base one: a guard whose
        ``/health`` passes while its calls fail would otherwise flap between OPEN and HALF_OPEN at every check.
        """
        self._tick()
        if self._state != OPEN:
            return None
        if self._now() - self._opened_at < self.config.open_base_s:
            return None
        return self._half_open("health_check_passed")

    # -- inside ---------------------------------------------------------------------------------------------------

    @property
    def _probes_out(self) -> int:
        # Probes admitted and not yet back; a failed one reopens the breaker, so only successes come back here.
        return self._probes_acquired - self._probes_succeeded

    def _tick(self) -> None:
        if self._state == OPEN and self._now() >= self._open_until:
            self._unreported = self._half_open("open_elapsed")

    def _record(self, failed: bool, slow: bool, probe: bool | None) -> Transition | None:
        self._tick()
        if self._state == CLOSED:
            self._append(failed, slow)
            if len(self._window) < self.config.minimum_calls:
                return None
            failure_rate, slow_call_rate = self._rates()
            # Failure is the worse news, so it names the cause when both thresholds are reached.
            if failure_rate >= self.config.failure_rate_threshold:
                return self._open("failure_rate")
            if slow_call_rate >= self.config.slow_call_rate_threshold:
                return self._open("slow_call_rate")
            return None
        if self._state == HALF_OPEN and probe is not False and self._probes_out > 0:
            self._append(failed, slow)
            if failed or slow:
                return self._open("probe_failed")
            self._probes_succeeded += 1
            if self._probes_succeeded >= self.config.half_open_calls:
                return self._close()
        return None

    def _append(self, failed: bool, slow: bool) -> None:
        if len(self._window) == self._window.maxlen:
            old_failed, old_slow = self._window[0]  # the deque drops it on append
            self._failures -= old_failed
            self._slow -= old_slow
        self._window.append((failed, slow))
        self._failures += failed
        self._slow += slow

    def _rates(self) -> tuple[float, float]:
        calls = len(self._window)
        if not calls:
            return 0.0, 0.0
        # Division (not threshold * calls) so that 5/10 meets a 0.5 threshold exactly, as floats.
        return self._failures / calls, self._slow / calls

    def _clear_window(self) -> None:
        self._window.clear()
        self._failures = self._slow = 0

    def _open(self, cause: str) -> Transition:
        previous = self._state
        self._trips += 1
        self._open_for_s = self.config.open_period_s(self._trips)
        self._opened_at = self._now()
        self._open_until = self._opened_at + self._open_for_s
        self._state = OPEN
        transition = self._transition(previous, OPEN, cause)
        self._clear_window()
        self._probes_acquired = self._probes_succeeded = 0
        self._unreported = None  # overtaken: reporting it now would contradict this one
        return transition

    def _half_open(self, cause: str) -> Transition:
        self._state = HALF_OPEN
        self._probes_acquired = self._probes_succeeded = 0
        self._unreported = None
        return self._transition(OPEN, HALF_OPEN, cause)

    def _close(self) -> Transition:
        self._state = CLOSED
        self._trips = 0
        transition = self._transition(HALF_OPEN, CLOSED, "probes_succeeded")
        self._clear_window()
        self._probes_acquired = self._probes_succeeded = 0
        self._unreported = None
        return transition

    def _transition(self, previous: str, state: str, cause: str) -> Transition:
        failure_rate, slow_call_rate = self._rates()
        return Transition(
            previous=previous,
            state=state,
            cause=cause,
            failure_rate=failure_rate,
            slow_call_rate=slow_call_rate,
            calls=len(self._window),
            open_for_s=self._open_for_s if state == OPEN else 0.0,
            trips=self._trips,
        )
