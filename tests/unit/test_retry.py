"""RetryPolicy (full-jitter backoff, when to try again) and RetryBudget (retries in flight as a share of requests)."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from system.retry import RetryBudget, RetryPolicy

# -- RetryPolicy: backoff --------------------------------------------------------------------------------------


def test_default_policy():
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.base_s, policy.cap_s, policy.min_attempt_s) == (3, 0.025, 1.0, 0.010)
    assert policy.retry_statuses == frozenset({502, 503, 504})


@pytest.mark.parametrize(("status", "retryable"), [(502, True), (503, True), (504, True), (500, False),
                                                   (429, False), (400, False), (200, False)])
def test_only_the_gateway_statuses_are_retried(status, retryable):
    assert RetryPolicy().is_retryable_status(status) is retryable


def test_backoff_ceiling_doubles_from_base_and_stops_at_cap():
    policy = RetryPolicy()
    assert [policy.backoff_ceiling_s(r) for r in range(8)] == [0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert policy.backoff_ceiling_s(5000) == 1.0


def test_backoff_stays_within_zero_and_the_ceiling_for_many_seeds_and_retries():
    policy = RetryPolicy()
    for seed in range(200):
        rng = random.Random(seed)
        for retry in range(12):
            assert 0.0 <= policy.backoff_s(retry, rng) <= min(policy.cap_s, policy.base_s * 2**retry)


def test_backoff_is_full_jitter_spread_over_the_whole_range_not_a_constant():
    policy = RetryPolicy()
    rng = random.Random(7)
    samples = [policy.backoff_s(6, rng) for _ in range(2000)]  # ceiling 1.0
    assert len(set(samples)) > 1900
    assert min(samples) < 0.05  # full jitter reaches down to 0, not ceiling/2 ("equal jitter")
    assert max(samples) > 0.95
    assert statistics.mean(samples) == pytest.approx(0.5, abs=0.05)


def test_backoff_is_reproducible_from_the_rng():
    policy = RetryPolicy()
    first = [policy.backoff_s(r, random.Random(3)) for r in range(5)]
    assert first == [policy.backoff_s(r, random.Random(3)) for r in range(5)]


def test_backoff_refuses_a_negative_retry():
    with pytest.raises(ValueError, match="retry"):
        RetryPolicy().backoff_s(-1, random.Random(0))


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"base_s": -0.1}, "base_s"),
        ({"base_s": 2.0, "cap_s": 1.0}, "cap_s"),
        ({"base_s": float("nan")}, "base_s"),
        ({"min_attempt_s": -1.0}, "min_attempt_s"),
    ],
)
def test_policy_refuses_values_that_make_no_sense(overrides, name):
    with pytest.raises(ValueError, match=name):
        RetryPolicy(**overrides)


# -- RetryPolicy: should_retry ---------------------------------------------------------------------------------


def test_retries_a_retryable_failure_with_attempts_and_time_left():
    assert RetryPolicy().should_retry(attempt=1, retryable=True, remaining_s=5.0, backoff_s=0.02) is True


def test_stops_at_the_attempt_limit_counting_the_first_attempt():
    policy = RetryPolicy(max_attempts=3)
    assert [policy.should_retry(n, True, 5.0, 0.02) for n in (1, 2, 3, 4)] == [True, True, False, False]


def test_one_attempt_means_no_retries():
    assert RetryPolicy(max_attempts=1).should_retry(1, True, 5.0, 0.0) is False


def test_never_retries_a_failure_that_is_not_retryable():
    assert RetryPolicy().should_retry(1, False, 5.0, 0.02) is False


def test_never_retries_when_backoff_and_a_minimal_attempt_do_not_fit_before_the_deadline():
    policy = RetryPolicy()
    assert policy.should_retry(1, True, remaining_s=0.5, backoff_s=0.49) is True  # 10 ms left for the attempt
    assert policy.should_retry(1, True, remaining_s=0.5, backoff_s=0.495) is False  # 5 ms: not worth the call
    assert policy.should_retry(1, True, remaining_s=0.005, backoff_s=0.0) is False
    assert policy.should_retry(1, True, remaining_s=0.0, backoff_s=0.0) is False
    assert policy.should_retry(1, True, remaining_s=-1.0, backoff_s=0.0) is False  # already past the deadline


# -- RetryBudget -----------------------------------------------------------------------------------------------


def test_default_budget():
    assert (RetryBudget().percent, RetryBudget().min_concurrency) == (0.2, 3)


def test_min_concurrency_with_nothing_in_flight():
    assert RetryBudget().allowance(in_flight=0, retries_outstanding=0) == 3


def test_below_fifteen_in_flight_min_concurrency_is_the_limit():
    assert [RetryBudget().allowance(n, 0) for n in (1, 10, 15, 19)] == [3, 3, 3, 3]


def test_above_fifteen_in_flight_twenty_percent_is_the_limit():
    budget = RetryBudget()
    assert [budget.allowance(n, 0) for n in (20, 24, 25, 50, 100, 1000)] == [4, 4, 5, 10, 20, 200]


def test_outstanding_retries_are_subtracted():
    budget = RetryBudget()
    assert budget.allowance(100, 5) == 15
    assert budget.allowance(0, 2) == 1


def test_the_allowance_is_never_negative():
    budget = RetryBudget()
    assert budget.allowance(0, 3) == 0
    assert budget.allowance(0, 50) == 0
    assert budget.allowance(100, 25) == 0


def test_float_noise_does_not_cost_a_retry():
    assert RetryBudget(percent=0.29, min_concurrency=0).allowance(100, 0) == 29


@pytest.mark.parametrize(
    ("overrides", "name"),
    [({"percent": -0.1}, "percent"), ({"percent": 1.5}, "percent"), ({"min_concurrency": -1}, "min_concurrency")],
)
def test_budget_refuses_values_that_make_no_sense(overrides, name):
    with pytest.raises(ValueError, match=name):
        RetryBudget(**overrides)


# -- properties ------------------------------------------------------------------------------------------------

policies = st.builds(
    lambda base, extra, attempts: RetryPolicy(max_attempts=attempts, base_s=base, cap_s=base + extra),
    st.floats(min_value=0.0, max_value=10.0),
    st.floats(min_value=0.0, max_value=100.0),
    st.integers(min_value=1, max_value=10),
)


@settings(max_examples=300, deadline=None)
@given(policies, st.integers(min_value=0, max_value=2000), st.integers(min_value=0, max_value=2**32))
def test_backoff_is_always_within_zero_and_the_capped_exponential(policy, retry, seed):
    backoff = policy.backoff_s(retry, random.Random(seed))
    assert 0.0 <= backoff <= policy.cap_s
    assert backoff <= policy.backoff_ceiling_s(retry)


@settings(max_examples=300, deadline=None)
@given(
    policies,
    st.integers(min_value=0, max_value=20),
    st.booleans(),
    st.floats(min_value=-10.0, max_value=100.0),
    st.floats(min_value=0.0, max_value=100.0),
)
def test_a_retry_is_granted_only_within_attempts_when_retryable_and_before_the_deadline(
        policy, attempt, retryable, remaining, backoff):
    if policy.should_retry(attempt, retryable, remaining, backoff):
        assert attempt < policy.max_attempts
        assert retryable
        assert backoff + policy.min_attempt_s <= remaining
    elif attempt < policy.max_attempts and retryable:
        assert backoff + policy.min_attempt_s > remaining


@settings(max_examples=300, deadline=None)
@given(
    st.floats(min_value=0.0, max_value=1.0),
    st.integers(min_value=0, max_value=50),
    st.integers(min_value=0, max_value=100_000),
    st.integers(min_value=0, max_value=100_000),
)
def test_the_budget_is_never_negative_and_never_beyond_its_limit(percent, minimum, in_flight, outstanding):
    budget = RetryBudget(percent=percent, min_concurrency=minimum)
    allowance = budget.allowance(in_flight, outstanding)
    assert allowance >= 0
    if allowance:  # granted retries top the outstanding ones up to the limit, exactly
        assert minimum <= allowance + outstanding <= max(minimum, percent * in_flight + 1e-6)
    if outstanding < minimum:
        assert allowance > 0  # the floor always lets a quiet guard be retried
    # More requests in flight never shrink the allowance; more retries out never grow it.
    assert budget.allowance(in_flight + 1, outstanding) >= allowance
    assert budget.allowance(in_flight, outstanding + 1) <= allowance
