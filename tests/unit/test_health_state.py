"""HealthState (whether a guard may be called) and RestartIntensity (OTP-style restart budget), with fake clocks."""

from __future__ import annotations

import pytest

from system.guard_client import DEGRADED, HEALTHY, UNHEALTHY, UNKNOWN
from system.health import STATES, STATUS_VALUE, HealthState
from system.restart import RestartIntensity

# -- HealthState -----------------------------------------------------------------------------------------------


def test_the_four_contract_states_and_their_metric_values():
    assert set(STATES) == {"HEALTHY", "DEGRADED", "UNHEALTHY", "UNKNOWN"}
    assert STATUS_VALUE == {"HEALTHY": 1.0, "DEGRADED": 0.5, "UNHEALTHY": 0.0, "UNKNOWN": 0.0}


def test_a_new_guard_is_unknown_and_refused_before_its_first_check():
    health = HealthState()
    assert health.state == UNKNOWN
    assert health.checks == 0
    assert health.ever_healthy is False
    code, message = health.refusal()
    assert code == "service_unavailable"
    assert "not yet" in message


def test_healthy_admits():
    health = HealthState()
    assert health.record(HEALTHY) is True
    assert health.refusal() is None
    assert health.ever_healthy is True


def test_degraded_admits():
    health = HealthState()
    health.record(DEGRADED)
    assert health.refusal() is None
    assert health.ever_healthy is True


def test_unhealthy_refuses_even_after_being_healthy():
    health = HealthState()
    health.record(HEALTHY)
    health.record(UNHEALTHY)
    code, message = health.refusal()
    assert code == "service_unavailable"
    assert "failed" in message
    assert health.ever_healthy is True


def test_unhealthy_first_check_refuses_and_is_not_ever_healthy():
    health = HealthState()
    assert health.record(UNHEALTHY) is True
    assert health.refusal() is not None
    assert health.ever_healthy is False


def test_recovery_admits_again():
    health = HealthState()
    health.record(UNHEALTHY)
    health.record(HEALTHY)
    assert health.refusal() is None


def test_unknown_after_healthy_still_admits():
    health = HealthState()
    health.record(HEALTHY)
    health.record(UNKNOWN)
    assert health.refusal() is None


def test_record_says_whether_the_state_changed_and_counts_checks():
    health = HealthState()
    assert [health.record(s) for s in (HEALTHY, HEALTHY, DEGRADED, DEGRADED, UNHEALTHY)] == [
        True, False, True, False, True]
    assert health.checks == 5
    assert health.state == UNHEALTHY


def test_recording_unknown_first_is_no_change():
    assert HealthState().record(UNKNOWN) is False


@pytest.mark.parametrize("state", [UNKNOWN, UNHEALTHY, HEALTHY])
def test_with_checks_disabled_every_call_is_admitted(state):
    health = HealthState(checks_enabled=False)
    assert health.refusal() is None
    health.record(state)
    assert health.refusal() is None


@pytest.mark.parametrize("state", ["healthy", "OK", "", "DOWN", None])
def test_an_unknown_state_raises_and_changes_nothing(state):
    health = HealthState()
    with pytest.raises(ValueError, match="unknown health state"):
        health.record(state)
    assert health.checks == 0
    assert health.state == UNKNOWN


# -- RestartIntensity ------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_five_restarts_in_ten_seconds_are_allowed_and_the_sixth_is_refused():
    clock = FakeClock()
    restarts = RestartIntensity(clock=clock)
    assert (restarts.max_restarts, restarts.period_s) == (5, 10.0)
    results = []
    for _ in range(6):
        results.append(restarts.allow())
        clock.now += 1.0
    assert results == [True] * 5 + [False]
    assert restarts.total == 6


def test_six_restarts_at_the_same_instant_refuse_the_sixth():
    restarts = RestartIntensity(clock=FakeClock())
    assert [restarts.allow() for _ in range(6)] == [True] * 5 + [False]


def test_the_window_slides_restarts_older_than_the_period_no_longer_count():
    clock = FakeClock()
    restarts = RestartIntensity(clock=clock)
    for _ in range(5):
        assert restarts.allow()
        clock.now += 1.0  # restarts at 1000..1004
    clock.now = 1010.0  # the restart at 1000 is exactly one period old: out of the window
    assert restarts.allow() is True
    clock.now = 1010.5  # 1001..1004 and 1010 are still in the window
    assert restarts.allow() is False


def test_a_quiet_period_restores_the_whole_budget():
    clock = FakeClock()
    restarts = RestartIntensity(max_restarts=2, period_s=5.0, clock=clock)
    assert [restarts.allow() for _ in range(2)] == [True, True]
    clock.now += 5.0
    assert [restarts.allow() for _ in range(2)] == [True, True]
    assert restarts.total == 4


def test_otp_default_style_budget_of_one():
    clock = FakeClock()
    restarts = RestartIntensity(max_restarts=1, period_s=5.0, clock=clock)
    assert restarts.allow() is True
    clock.now += 4.999
    assert restarts.allow() is False
