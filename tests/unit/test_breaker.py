"""CircuitBreaker (sliding-window trips, doubling open periods, half-open probes), with a fake clock.

The last part drives the breaker with random action sequences against a small reference model and checks the
invariants that must hold whatever the order of events.
"""

from __future__ import annotations

import json

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from system.breaker import (
    CAUSES,
    CLOSED,
    HALF_OPEN,
    OPEN,
    STATES,
    BreakerConfig,
    CircuitBreaker,
    Transition,
)

FAST, SLOW = 0.05, 5.0  # durations under and at the default slow_call_duration_s


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(**config) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    return CircuitBreaker(BreakerConfig(**config), clock), clock


def trip(breaker: CircuitBreaker, failures: int = 10) -> Transition:
    """Record failures until the breaker opens; the opening transition."""
    for _ in range(failures):
        transition = breaker.record(True, FAST)
        if transition is not None:
            return transition
    raise AssertionError("the breaker did not trip")


def reopen_from_half_open(breaker: CircuitBreaker, clock: FakeClock) -> Transition:
    """Wait out the open period, send one probe and fail it; the reopening transition."""
    clock.advance(breaker.retry_after_s())
    assert breaker.try_acquire()
    transition = breaker.record(True, FAST, probe=True)
    assert transition is not None
    return transition


# -- configuration ---------------------------------------------------------------------------------------------


def test_the_state_strings_are_the_http_contracts():
    assert (CLOSED, OPEN, HALF_OPEN) == ("closed", "open", "half_open")
    assert STATES == (CLOSED, OPEN, HALF_OPEN)


def test_default_config():
    assert attrs.asdict(BreakerConfig()) == {
        "window_size": 20, "minimum_calls": 10, "failure_rate_threshold": 0.5, "slow_call_duration_s": 5.0,
        "slow_call_rate_threshold": 0.8, "open_base_s": 5.0, "open_max_s": 60.0, "half_open_calls": 3}


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"window_size": 0, "minimum_calls": 0}, "window_size"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"window_size": 5, "minimum_calls": 6}, "minimum_calls"),
        ({"failure_rate_threshold": 0.0}, "failure_rate_threshold"),
        ({"failure_rate_threshold": 1.01}, "failure_rate_threshold"),
        ({"failure_rate_threshold": float("nan")}, "failure_rate_threshold"),
        ({"slow_call_rate_threshold": 0.0}, "slow_call_rate_threshold"),
        ({"slow_call_rate_threshold": 2.0}, "slow_call_rate_threshold"),
        ({"slow_call_duration_s": 0.0}, "slow_call_duration_s"),
        ({"open_base_s": 0.0}, "open_base_s"),
        ({"open_base_s": 61.0}, "open_base_s"),
        ({"open_max_s": 1.0}, "open_max_s"),
        ({"half_open_calls": 0}, "half_open_calls"),
    ],
)
def test_config_refuses_values_that_make_no_sense_and_names_the_field(overrides, names):
    with pytest.raises(ValueError, match=names):
        BreakerConfig(**overrides)


def test_config_accepts_the_edges():
    BreakerConfig(window_size=1, minimum_calls=1, failure_rate_threshold=1.0, slow_call_rate_threshold=1.0,
                  open_base_s=2.0, open_max_s=2.0, half_open_calls=1)


def test_open_period_doubles_from_the_base_and_stops_at_the_cap_even_for_absurd_trip_counts():
    config = BreakerConfig()
    assert [config.open_period_s(n) for n in range(1, 7)] == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert config.open_period_s(5000) == 60.0


# -- CLOSED: the sliding window --------------------------------------------------------------------------------


def test_a_new_breaker_is_closed_and_admits():
    breaker, _ = make()
    assert breaker.state == CLOSED
    assert breaker.try_acquire() is True
    assert breaker.retry_after_s() == 0.0
    assert breaker.poll() is None
    assert breaker.trips == 0


def test_no_trip_below_minimum_calls_even_when_every_call_failed():
    breaker, _ = make()
    for _ in range(9):
        assert breaker.record(True, FAST) is None
    assert breaker.state == CLOSED
    assert breaker.calls == 9
    transition = breaker.record(True, FAST)
    assert transition is not None
    assert transition.calls == 10


def test_trips_at_exactly_the_failure_rate_threshold_not_below():
    breaker, _ = make()
    for _ in range(5):
        breaker.record(False, FAST)
    for _ in range(4):
        assert breaker.record(True, FAST) is None  # 4 of 9: below minimum_calls anyway
    below, _ = make()
    for failed in [False] * 6 + [True] * 4:
        assert below.record(failed, FAST) is None  # 4 of 10 = 0.4 < 0.5
    assert below.state == CLOSED
    transition = breaker.record(True, FAST)  # 5 of 10 = 0.5
    assert transition == Transition(previous=CLOSED, state=OPEN, cause="failure_rate", failure_rate=0.5,
                                    slow_call_rate=0.0, calls=10, open_for_s=5.0, trips=1)
    assert breaker.state == OPEN


def test_a_threshold_that_is_not_a_binary_fraction_is_met_exactly():
    breaker, _ = make(failure_rate_threshold=0.3)
    for failed in [True] * 3 + [False] * 6:
        assert breaker.record(failed, FAST) is None
    transition = breaker.record(False, FAST)  # 3 of 10 = 0.3
    assert transition is not None
    assert transition.cause == "failure_rate"


def test_slow_calls_trip_at_the_slow_call_rate_threshold():
    breaker, _ = make()
    for _ in range(2):
        breaker.record(False, FAST)
    for _ in range(7):
        assert breaker.record(False, SLOW) is None
    transition = breaker.record(False, SLOW)  # 8 of 10 slow = 0.8
    assert transition is not None
    assert (transition.cause, transition.slow_call_rate, transition.failure_rate) == ("slow_call_rate", 0.8, 0.0)


def test_a_call_is_slow_from_slow_call_duration_s_on():
    breaker, _ = make(window_size=1, minimum_calls=1, slow_call_rate_threshold=1.0)
    assert breaker.record(False, 4.999) is None
    transition = breaker.record(False, 5.0)
    assert transition is not None
    assert transition.cause == "slow_call_rate"


def test_failure_names_the_cause_when_both_thresholds_are_reached():
    breaker, _ = make()
    transition = None
    for _ in range(10):
        transition = breaker.record(True, SLOW)
    assert transition is not None
    assert (transition.cause, transition.failure_rate, transition.slow_call_rate) == ("failure_rate", 1.0, 1.0)


def test_the_window_slides_old_calls_out():
    breaker, _ = make(window_size=4, minimum_calls=4, failure_rate_threshold=1.0)
    for failed in (True, True, True, False):
        assert breaker.record(failed, FAST) is None  # 3 of 4
    assert breaker.snapshot()["failure_rate"] == 0.75
    breaker.record(False, FAST)
    breaker.record(False, FAST)
    snapshot = breaker.snapshot()
    assert (snapshot["calls"], snapshot["failure_rate"]) == (4, 0.25)  # the first two failures slid out


def test_old_failures_sliding_out_keep_a_recovered_guard_closed():
    breaker, _ = make(window_size=10, minimum_calls=10)
    for _ in range(4):
        breaker.record(True, FAST)
    for _ in range(100):
        assert breaker.record(False, FAST) is None
    assert breaker.snapshot()["failure_rate"] == 0.0


def test_a_trip_clears_the_window():
    breaker, _ = make()
    trip(breaker)
    assert breaker.calls == 0
    assert breaker.snapshot()["failure_rate"] == 0.0


# -- OPEN ------------------------------------------------------------------------------------------------------


def test_open_refuses_calls():
    breaker, _ = make()
    trip(breaker)
    assert [breaker.try_acquire() for _ in range(5)] == [False] * 5


def test_retry_after_counts_down_to_zero():
    breaker, clock = make()
    trip(breaker)
    assert breaker.retry_after_s() == 5.0
    clock.advance(2.0)
    assert breaker.retry_after_s() == 3.0
    clock.advance(3.0)
    assert breaker.retry_after_s() == 0.0
    clock.advance(10.0)
    assert breaker.retry_after_s() == 0.0


def test_calls_finishing_while_open_are_ignored():
    breaker, clock = make()
    trip(breaker)
    clock.advance(1.0)
    for failed, duration in [(True, FAST), (False, SLOW), (False, FAST)] * 5:
        assert breaker.record(failed, duration) is None
    assert breaker.record_slow_in_progress() is None
    assert breaker.state == OPEN
    assert breaker.calls == 0
    assert breaker.retry_after_s() == 4.0
    assert breaker.trips == 1


def test_open_period_doubles_with_each_consecutive_trip_and_stops_at_the_cap():
    breaker, clock = make()
    periods = [trip(breaker).open_for_s]
    for _ in range(5):
        transition = reopen_from_half_open(breaker, clock)
        assert transition.cause == "probe_failed"
        assert breaker.retry_after_s() == transition.open_for_s
        periods.append(transition.open_for_s)
    assert periods == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert breaker.trips == 6


# -- OPEN -> HALF_OPEN -----------------------------------------------------------------------------------------


def test_poll_moves_to_half_open_once_the_open_period_has_elapsed():
    breaker, clock = make()
    trip(breaker)
    clock.advance(4.999)
    assert breaker.poll() is None
    assert breaker.state == OPEN
    clock.advance(0.001)
    transition = breaker.poll()
    assert transition == Transition(previous=OPEN, state=HALF_OPEN, cause="open_elapsed", failure_rate=0.0,
                                    slow_call_rate=0.0, calls=0, open_for_s=0.0, trips=1)
    assert breaker.state == HALF_OPEN
    assert breaker.poll() is None  # reported once


def test_state_reads_half_open_lazily_and_poll_still_reports_the_move():
    breaker, clock = make()
    trip(breaker)
    clock.advance(5.0)
    assert breaker.state == HALF_OPEN
    assert breaker.state == HALF_OPEN
    transition = breaker.poll()
    assert transition is not None
    assert (transition.previous, transition.state, transition.cause) == (OPEN, HALF_OPEN, "open_elapsed")


def test_a_due_move_made_by_try_acquire_is_reported_by_the_next_poll():
    breaker, clock = make()
    trip(breaker)
    clock.advance(6.0)
    assert breaker.try_acquire() is True
    transition = breaker.poll()
    assert transition is not None
    assert transition.cause == "open_elapsed"
    assert breaker.probes_acquired == 1  # the move did not forget the probe it admitted


def test_a_move_overtaken_before_poll_is_not_reported_out_of_order():
    breaker, clock = make()
    trip(breaker)
    clock.advance(5.0)
    assert breaker.try_acquire()  # moves to HALF_OPEN unreported
    reopened = breaker.record(True, FAST, probe=True)
    assert reopened is not None
    assert (reopened.previous, reopened.state) == (HALF_OPEN, OPEN)
    assert breaker.poll() is None  # "now half_open" would contradict the breaker, which is open


def test_health_check_passed_does_not_cut_the_base_open_period():
    breaker, clock = make()
    trip(breaker)
    clock.advance(4.9)
    assert breaker.health_check_passed() is None
    assert breaker.state == OPEN


def test_health_check_passed_cuts_an_escalated_open_period_short():
    breaker, clock = make()
    trip(breaker)
    clock.advance(5.0)
    assert breaker.try_acquire()
    breaker.record(True, FAST, probe=True)  # the probe fails: open again, now for 10 s
    clock.advance(5.0)
    assert breaker.state == OPEN
    transition = breaker.health_check_passed()
    assert transition is not None
    assert (transition.previous, transition.state, transition.cause) == (OPEN, HALF_OPEN, "health_check_passed")
    assert breaker.state == HALF_OPEN
    assert breaker.retry_after_s() == 0.0
    assert breaker.poll() is None
    assert breaker.try_acquire() is True


def test_health_check_passed_changes_nothing_unless_open():
    breaker, clock = make()
    assert breaker.health_check_passed() is None
    assert breaker.state == CLOSED
    trip(breaker)
    clock.advance(5.0)
    breaker.poll()
    assert breaker.try_acquire()
    assert breaker.health_check_passed() is None
    assert (breaker.state, breaker.probes_acquired) == (HALF_OPEN, 1)  # the probe slot is still taken


def test_health_check_passed_when_the_period_has_just_elapsed_leaves_the_report_to_poll():
    breaker, clock = make()
    trip(breaker)
    clock.advance(5.0)
    assert breaker.health_check_passed() is None  # already half-open in effect
    transition = breaker.poll()
    assert transition is not None
    assert transition.cause == "open_elapsed"


# -- HALF_OPEN -------------------------------------------------------------------------------------------------


def half_open(**config) -> tuple[CircuitBreaker, FakeClock]:
    breaker, clock = make(**config)
    trip(breaker)
    clock.advance(breaker.retry_after_s())
    assert breaker.poll() is not None
    return breaker, clock


def test_exactly_half_open_calls_probes_are_admitted():
    breaker, _ = half_open()
    assert [breaker.try_acquire() for _ in range(5)] == [True, True, True, False, False]
    assert breaker.probes_acquired == 3


def test_all_probes_succeeding_closes_and_resets_the_trips():
    breaker, _ = half_open()
    for _ in range(3):
        assert breaker.try_acquire()
    assert breaker.record(False, FAST, probe=True) is None
    assert breaker.record(False, FAST, probe=True) is None
    assert breaker.state == HALF_OPEN
    transition = breaker.record(False, FAST, probe=True)
    assert transition == Transition(previous=HALF_OPEN, state=CLOSED, cause="probes_succeeded", failure_rate=0.0,
                                    slow_call_rate=0.0, calls=3, open_for_s=0.0, trips=0)
    assert breaker.state == CLOSED
    assert breaker.trips == 0
    assert breaker.calls == 0  # the window starts over
    assert breaker.try_acquire() is True
    # The next trip starts from the base period again.
    assert trip(breaker).open_for_s == 5.0


def test_a_failed_probe_reopens_for_a_longer_period():
    breaker, _ = half_open()
    assert breaker.try_acquire()
    assert breaker.try_acquire()
    assert breaker.record(False, FAST, probe=True) is None
    transition = breaker.record(True, FAST, probe=True)
    assert transition == Transition(previous=HALF_OPEN, state=OPEN, cause="probe_failed", failure_rate=0.5,
                                    slow_call_rate=0.0, calls=2, open_for_s=10.0, trips=2)
    assert breaker.state == OPEN
    assert breaker.retry_after_s() == 10.0
    assert breaker.try_acquire() is False


def test_a_slow_probe_reopens_even_though_it_succeeded():
    breaker, _ = half_open()
    assert breaker.try_acquire()
    transition = breaker.record(False, SLOW, probe=True)
    assert transition is not None
    assert (transition.state, transition.cause, transition.open_for_s) == (OPEN, "probe_failed", 10.0)


def test_in_half_open_a_call_that_left_before_the_trip_is_ignored():
    breaker, _ = half_open()
    assert breaker.try_acquire()
    assert breaker.record(True, FAST, probe=False) is None
    assert breaker.state == HALF_OPEN
    assert breaker.calls == 0


def test_in_half_open_a_completion_with_no_probe_out_is_ignored():
    breaker, _ = half_open()
    assert breaker.record(True, FAST) is None
    assert breaker.record(True, FAST, probe=True) is None
    assert breaker.state == HALF_OPEN


def test_an_untracked_completion_counts_as_a_probe_while_one_is_out():
    breaker, _ = half_open(half_open_calls=1)
    assert breaker.try_acquire()
    transition = breaker.record(False, FAST)
    assert transition is not None
    assert transition.cause == "probes_succeeded"


def test_release_gives_a_probe_slot_back():
    breaker, _ = half_open()
    assert [breaker.try_acquire() for _ in range(3)] == [True] * 3
    breaker.release()
    assert breaker.probes_acquired == 2
    assert breaker.try_acquire() is True
    assert breaker.try_acquire() is False


def test_release_never_gives_back_more_than_was_taken():
    breaker, _ = half_open()
    breaker.release()
    assert breaker.probes_acquired == 0
    assert breaker.try_acquire()
    assert breaker.record(False, FAST, probe=True) is None
    breaker.release()  # the one probe came back: nothing is out
    assert breaker.probes_acquired == 1


def test_a_released_probe_does_not_count_towards_closing():
    breaker, _ = half_open(half_open_calls=2)
    assert breaker.try_acquire()
    assert breaker.try_acquire()
    breaker.release()
    assert breaker.record(False, FAST, probe=True) is None
    assert breaker.record(False, FAST, probe=True) is None  # nothing out: the released slot was never a call
    assert breaker.state == HALF_OPEN


def test_release_is_a_no_op_when_closed_or_open():
    breaker, _ = make()
    breaker.release()
    assert breaker.state == CLOSED
    trip(breaker)
    breaker.release()
    assert breaker.state == OPEN
    assert breaker.try_acquire() is False


# -- slow calls still in progress ------------------------------------------------------------------------------


def test_a_slow_call_in_progress_counts_as_slow_and_not_failed():
    breaker, _ = make()
    for _ in range(9):
        assert breaker.record_slow_in_progress() is None
    transition = breaker.record_slow_in_progress()
    assert transition is not None
    assert (transition.cause, transition.slow_call_rate, transition.failure_rate) == ("slow_call_rate", 1.0, 0.0)


def test_a_slow_probe_in_progress_reopens_and_finishes_the_probe():
    breaker, _ = half_open()
    assert breaker.try_acquire()
    transition = breaker.record_slow_in_progress(probe=True)
    assert transition is not None
    assert (transition.previous, transition.state, transition.cause) == (HALF_OPEN, OPEN, "probe_failed")


# -- snapshot and restore --------------------------------------------------------------------------------------


def test_snapshot_is_json_ready():
    breaker, _ = make()
    breaker.record(True, SLOW)
    breaker.record(False, FAST)
    snapshot = breaker.snapshot()
    assert json.loads(json.dumps(snapshot)) == snapshot
    assert snapshot == {"state": CLOSED, "trips": 0, "open_until_remaining_s": 0.0, "calls": 2,
                        "failure_rate": 0.5, "slow_call_rate": 0.5, "probes_acquired": 0, "probes_succeeded": 0}


def test_an_open_breaker_comes_back_open_with_its_remaining_time_and_trips_and_an_empty_window():
    breaker, clock = make()
    trip(breaker)
    reopen_from_half_open(breaker, clock)  # trips 2, open for 10 s
    clock.advance(4.0)
    snapshot = breaker.snapshot()
    assert (snapshot["state"], snapshot["trips"], snapshot["open_until_remaining_s"]) == (OPEN, 2, 6.0)

    later = FakeClock(50.0)  # a new process: another clock origin
    restored = CircuitBreaker.restore(json.loads(json.dumps(snapshot)), BreakerConfig(), later)
    assert (restored.state, restored.trips, restored.retry_after_s(), restored.calls) == (OPEN, 2, 6.0, 0)
    transition = restored.poll()
    assert transition is not None
    assert (transition.previous, transition.state, transition.cause, transition.trips, transition.open_for_s) == (
        CLOSED, OPEN, "restored", 2, 6.0)
    later.advance(6.0)
    assert restored.poll() is not None
    assert restored.try_acquire()
    reopened = restored.record(True, FAST, probe=True)
    assert reopened is not None
    assert reopened.open_for_s == 20.0  # trips carried over, so the period doubles from where it was


def test_a_closed_breaker_comes_back_closed_with_an_empty_window_and_nothing_to_report():
    breaker, _ = make()
    for _ in range(5):
        breaker.record(True, FAST)
    restored = CircuitBreaker.restore(breaker.snapshot(), BreakerConfig(), FakeClock())
    assert (restored.state, restored.trips, restored.calls) == (CLOSED, 0, 0)
    assert restored.poll() is None
    assert restored.snapshot()["failure_rate"] == 0.0


def test_a_half_open_breaker_comes_back_half_open_with_no_probes_out():
    breaker, _ = half_open()
    assert breaker.try_acquire()
    assert breaker.try_acquire()
    snapshot = breaker.snapshot()
    assert (snapshot["state"], snapshot["probes_acquired"]) == (HALF_OPEN, 2)
    restored = CircuitBreaker.restore(snapshot, BreakerConfig(), FakeClock())
    assert (restored.state, restored.probes_acquired, restored.trips) == (HALF_OPEN, 0, 1)
    assert restored.record(True, FAST) is None  # a call of the old process: not a probe of this one
    assert [restored.try_acquire() for _ in range(4)] == [True, True, True, False]
    transition = restored.poll()
    assert transition is not None
    assert (transition.previous, transition.state, transition.cause) == (CLOSED, HALF_OPEN, "restored")


def test_an_open_breaker_past_its_period_snapshots_as_half_open():
    breaker, clock = make()
    trip(breaker)
    clock.advance(7.0)
    snapshot = breaker.snapshot()
    assert (snapshot["state"], snapshot["open_until_remaining_s"]) == (HALF_OPEN, 0.0)


def test_restore_caps_the_remaining_open_time_at_the_configs_maximum():
    snapshot = {"state": OPEN, "trips": 9, "open_until_remaining_s": 300.0}
    restored = CircuitBreaker.restore(snapshot, BreakerConfig(open_max_s=30.0), FakeClock())
    assert restored.retry_after_s() == 30.0


@pytest.mark.parametrize(
    "snapshot",
    [
        {},
        {"state": "tripped"},
        {"state": OPEN, "trips": -1},
        {"state": OPEN, "trips": 1.5},
        {"state": OPEN, "trips": True},
        {"state": OPEN, "trips": 1, "open_until_remaining_s": -1.0},
        {"state": OPEN, "trips": 1, "open_until_remaining_s": float("nan")},
        {"state": OPEN, "trips": 1, "open_until_remaining_s": "5"},
    ],
)
def test_restore_refuses_a_broken_snapshot(snapshot):
    with pytest.raises(ValueError, match="snapshot"):
        CircuitBreaker.restore(snapshot, BreakerConfig(), FakeClock())


# -- random sequences against a reference model ----------------------------------------------------------------

CONFIG = BreakerConfig(window_size=4, minimum_calls=3, failure_rate_threshold=0.75, slow_call_duration_s=2.0,
                       slow_call_rate_threshold=0.75, open_base_s=1.0, open_max_s=8.0, half_open_calls=2)
DURATIONS = [0.1, 0.5, 1.9, 2.0, 30.0]  # two of five slow


class BreakerMachine(RuleBasedStateMachine):
    """Random records, acquires, releases, health checks, polls and clock moves; a plain model predicts each
    transition, and the invariants hold after every step."""

    @initialize(start=st.sampled_from(["fresh", "restored_open", "restored_half_open"]))
    def start(self, start):
        self.clock = FakeClock()
        # The model: what the breaker should be, written the obvious way.
        self.m_state = CLOSED
        self.m_trips = 0
        self.m_open_until = 0.0
        self.m_opened_at = 0.0
        self.m_window: list[tuple[bool, bool]] = []
        self.m_acquired = 0
        self.m_succeeded = 0
        self.m_unreported: tuple[str, str, str] | None = None
        if start == "fresh":
            self.breaker = CircuitBreaker(CONFIG, self.clock)
        else:
            state = OPEN if start == "restored_open" else HALF_OPEN
            self.breaker = CircuitBreaker.restore(
                {"state": state, "trips": 2, "open_until_remaining_s": 3.0}, CONFIG, self.clock)
            self.m_state, self.m_trips, self.m_unreported = state, 2, (CLOSED, state, "restored")
            self.m_open_until = self.clock.now + 3.0
            self.m_opened_at = self.m_open_until - min(CONFIG.open_base_s * 2, CONFIG.open_max_s)

    # -- the model's rules --

    def m_tick(self) -> None:
        if self.m_state == OPEN and self.clock.now >= self.m_open_until:
            self.m_state, self.m_acquired, self.m_succeeded = HALF_OPEN, 0, 0
            self.m_unreported = (OPEN, HALF_OPEN, "open_elapsed")

    def m_move(self, state: str, cause: str) -> tuple[str, str, str]:
        move = (self.m_state, state, cause)
        self.m_unreported = None
        if state == OPEN:
            self.m_trips += 1
            self.m_opened_at = self.clock.now
            self.m_open_until = self.clock.now + min(CONFIG.open_base_s * 2 ** (self.m_trips - 1), CONFIG.open_max_s)
        if state == CLOSED:
            self.m_trips = 0
        if state in (OPEN, CLOSED):
            self.m_window = []
        self.m_state, self.m_acquired, self.m_succeeded = state, 0, 0
        return move

    def m_record(self, failed: bool, slow: bool, probe: bool | None) -> tuple[str, str, str] | None:
        self.m_tick()
        if self.m_state == CLOSED:
            self.m_window = [*self.m_window, (failed, slow)][-CONFIG.window_size:]
            calls = len(self.m_window)
            if calls >= CONFIG.minimum_calls:
                if sum(f for f, _ in self.m_window) / calls >= CONFIG.failure_rate_threshold:
                    return self.m_move(OPEN, "failure_rate")
                if sum(s for _, s in self.m_window) / calls >= CONFIG.slow_call_rate_threshold:
                    return self.m_move(OPEN, "slow_call_rate")
        elif self.m_state == HALF_OPEN and probe is not False and self.m_acquired > self.m_succeeded:
            self.m_window = [*self.m_window, (failed, slow)][-CONFIG.window_size:]
            if failed or slow:
                return self.m_move(OPEN, "probe_failed")
            self.m_succeeded += 1
            if self.m_succeeded == CONFIG.half_open_calls:
                return self.m_move(CLOSED, "probes_succeeded")
        return None

    def check(self, transition: Transition | None, expected: tuple[str, str, str] | None) -> None:
        if expected is None:
            assert transition is None
            return
        assert transition is not None
        assert (transition.previous, transition.state, transition.cause) == expected
        assert transition.previous != transition.state
        assert transition.cause in CAUSES
        assert transition.trips == self.m_trips
        if transition.cause in ("failure_rate", "slow_call_rate"):
            assert transition.previous == CLOSED
            assert transition.calls >= CONFIG.minimum_calls
        if transition.state == OPEN:
            assert 0 < transition.open_for_s <= CONFIG.open_max_s
        else:
            assert transition.open_for_s == 0.0
        assert 0.0 <= transition.failure_rate <= 1.0
        assert 0.0 <= transition.slow_call_rate <= 1.0
        assert 0 <= transition.calls <= CONFIG.window_size

    # -- the actions --

    @rule(calls=st.lists(st.tuples(st.booleans(), st.sampled_from(DURATIONS), st.sampled_from([None, True, False])),
                         min_size=1, max_size=8))
    def record(self, calls):
        # Several at a time, so that windows fill and slide between the other actions.
        for failed, duration, probe in calls:
            expected = self.m_record(failed, duration >= CONFIG.slow_call_duration_s, probe)
            self.check(self.breaker.record(failed, duration, probe=probe), expected)

    @rule(probe=st.sampled_from([None, True, False]))
    def record_slow_in_progress(self, probe):
        expected = self.m_record(False, True, probe)
        self.check(self.breaker.record_slow_in_progress(probe=probe), expected)

    @rule()
    def try_acquire(self):
        self.m_tick()
        admitted = self.breaker.try_acquire()
        if self.m_state == CLOSED:
            assert admitted
        elif self.m_state == OPEN:
            assert not admitted
        else:
            assert admitted == (self.m_acquired < CONFIG.half_open_calls)
            self.m_acquired += admitted

    @rule()
    def release(self):
        self.m_tick()
        self.breaker.release()
        if self.m_state == HALF_OPEN and self.m_acquired > self.m_succeeded:
            self.m_acquired -= 1

    @rule()
    def health_check_passed(self):
        self.m_tick()
        cut = self.m_state == OPEN and self.clock.now - self.m_opened_at >= CONFIG.open_base_s
        expected = self.m_move(HALF_OPEN, "health_check_passed") if cut else None
        self.check(self.breaker.health_check_passed(), expected)

    @rule()
    def poll(self):
        self.m_tick()
        expected, self.m_unreported = self.m_unreported, None
        self.check(self.breaker.poll(), expected)

    @rule()
    def wait_out_the_cap(self):
        """However the breaker got OPEN, after open_max_s a poll() reports the way out."""
        was_open = self.breaker.state == OPEN
        self.clock.advance(CONFIG.open_max_s)
        self.m_tick()
        expected, self.m_unreported = self.m_unreported, None
        transition = self.breaker.poll()
        self.check(transition, expected)
        if was_open:
            assert transition is not None
            assert (transition.state, transition.cause) == (HALF_OPEN, "open_elapsed")

    @rule(seconds=st.sampled_from([0.0, 0.25, 1.0, 2.0, 4.0, 9.0]))
    def advance(self, seconds):
        self.clock.advance(seconds)

    # -- what always holds --

    @invariant()
    def state_matches_the_model(self):
        state = self.breaker.state
        assert state in STATES
        due = self.m_state == OPEN and self.clock.now >= self.m_open_until
        assert state == (HALF_OPEN if due else self.m_state)
        assert self.breaker.trips == self.m_trips

    @invariant()
    def probes_never_exceed_the_half_open_allowance(self):
        assert 0 <= self.breaker.probes_acquired <= CONFIG.half_open_calls

    @invariant()
    def the_window_never_overflows_and_matches_the_model(self):
        assert 0 <= self.breaker.calls <= CONFIG.window_size
        assert self.breaker.calls == len(self.m_window)
        snapshot = self.breaker.snapshot()
        if self.m_window:
            assert snapshot["failure_rate"] == sum(f for f, _ in self.m_window) / len(self.m_window)
            assert snapshot["slow_call_rate"] == sum(s for _, s in self.m_window) / len(self.m_window)
        assert 0.0 <= snapshot["failure_rate"] <= 1.0
        assert 0.0 <= snapshot["slow_call_rate"] <= 1.0

    @invariant()
    def open_counts_down_within_the_cap(self):
        retry_after = self.breaker.retry_after_s()
        assert 0.0 <= retry_after <= CONFIG.open_max_s
        assert (retry_after > 0.0) == (self.breaker.state == OPEN)


BreakerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_breaker_against_the_model = BreakerMachine.TestCase

