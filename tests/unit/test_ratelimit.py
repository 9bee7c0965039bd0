"""TokenBuckets (per-identifier token buckets for 429 rate_limited), with a fake clock.

The last test drives the buckets with random takes and clock moves and checks the token-bucket bound against a
brute-force record of what was admitted.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from system.ratelimit import Decision, RateLimitPolicy, TokenBuckets


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(per_minute: int = 60, **kwargs: object) -> tuple[TokenBuckets, FakeClock]:
    clock = FakeClock()
    return TokenBuckets(RateLimitPolicy(per_minute), clock, **kwargs), clock  # type: ignore[arg-type]


# -- policy -------------------------------------------------------------------------------------------------------


def test_policy_capacity_is_the_whole_minute_by_default():
    policy = RateLimitPolicy(100)
    assert policy.capacity == 100
    assert policy.rate_per_s == pytest.approx(100 / 60)


def test_policy_burst_sets_capacity_but_not_rate():
    policy = RateLimitPolicy(100, burst=10)
    assert policy.capacity == 10
    assert policy.rate_per_s == pytest.approx(100 / 60)


def test_policy_share_halves_capacity_and_rate():
    whole, half = RateLimitPolicy(100), RateLimitPolicy(100, share=0.5)
    assert half.capacity == whole.capacity / 2
    assert half.rate_per_s == pytest.approx(whole.rate_per_s / 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"per_minute": 0},
        {"per_minute": -5},
        {"per_minute": True},
        {"per_minute": 10, "burst": 0},
        {"per_minute": 10, "share": 0},
        {"per_minute": 10, "share": 1.5},
        {"per_minute": 10, "share": float("nan")},
        {"per_minute": 1, "share": 0.5},  # a half-token bucket would refuse everything forever
    ],
)
def test_policy_refuses_nonsense(kwargs):
    with pytest.raises(ValueError):
        RateLimitPolicy(**kwargs)


def test_max_identifiers_must_be_positive():
    with pytest.raises(ValueError):
        TokenBuckets(RateLimitPolicy(10), max_identifiers=0)


def test_take_refuses_token_counts_outside_the_bucket():
    buckets, _ = make(10)
    for tokens in (0, -1, 10.5, float("nan")):
        with pytest.raises(ValueError):
            buckets.take("a", tokens)


# -- taking -------------------------------------------------------------------------------------------------------


def test_fresh_identifier_gets_exactly_the_capacity_at_once_then_is_refused():
    buckets, _ = make(100)
    decisions = [buckets.take("a") for _ in range(100)]
    assert all(d.allowed for d in decisions)
    assert decisions[-1].remaining == 0
    refused = buckets.take("a")
    assert not refused.allowed
    assert refused.retry_after_s > 0


def test_allowed_decision_reports_remaining_and_no_retry_after():
    buckets, _ = make(10)
    assert buckets.take("a") == Decision(allowed=True, retry_after_s=0.0, remaining=9)
    assert buckets.take("a", 4).remaining == 5


def test_identifiers_have_separate_buckets():
    buckets, _ = make(3)
    for _ in range(3):
        assert buckets.take("a").allowed
    assert not buckets.take("a").allowed
    assert buckets.take("b").allowed


def test_retry_after_is_the_time_to_one_token_and_honest():
    buckets, clock = make(60)  # one token a second
    policy = buckets.policy
    for _ in range(60):
        buckets.take("a")
    clock.advance(0.25)
    refused = buckets.take("a")
    assert not refused.allowed
    assert refused.remaining == pytest.approx(0.25)
    assert refused.retry_after_s == pytest.approx((1 - refused.remaining) / policy.rate_per_s, abs=1e-5)
    # Just short of it: still refused (and a refused take takes nothing).
    clock.advance(refused.retry_after_s - 1e-3)
    assert not buckets.take("a").allowed
    clock.advance(1e-3)
    assert buckets.take("a").allowed


def test_retry_after_is_honest_at_a_wall_clock_sized_time():
    # Float spacing near 1.7e9 is about 2e-7 s; waiting exactly retry_after must still succeed.
    clock = FakeClock(1_700_000_000.123)
    buckets = TokenBuckets(RateLimitPolicy(7), clock)
    for _ in range(7):
        buckets.take("a")
    refused = buckets.take("a")
    clock.advance(refused.retry_after_s)
    assert buckets.take("a").allowed


def test_retry_after_for_several_tokens():
    buckets, _ = make(60)
    buckets.take("a", 58)
    refused = buckets.take("a", 5)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(3.0, abs=1e-5)


def test_bucket_refills_continuously_up_to_capacity():
    buckets, clock = make(60)
    buckets.take("a", 60)
    clock.advance(10)
    assert buckets.take("a").remaining == pytest.approx(9)
    clock.advance(3600)
    assert buckets.take("a").remaining == pytest.approx(59)


def test_steady_overload_gets_twice_the_budget_in_the_first_minute_then_the_budget():
    per_minute = 100
    buckets, clock = make(per_minute)
    policy = buckets.policy
    interval = 60 / (10 * per_minute)  # ten times the allowed rate
    start = clock.now
    first = second = 0
    for i in range(2 * 10 * per_minute):
        clock.now = start + i * interval
        if buckets.take("a").allowed:
            if clock.now - start < 60:
                first += 1
            else:
                second += 1
    assert first == pytest.approx(policy.capacity + policy.rate_per_s * 60, rel=0.05)
    assert first == pytest.approx(2 * per_minute, rel=0.05)
    assert second == pytest.approx(per_minute, rel=0.05)


def test_shared_entry_gets_its_share():
    clock = FakeClock()
    buckets = TokenBuckets(RateLimitPolicy(100, share=0.5), clock)
    allowed = sum(buckets.take("a").allowed for _ in range(100))
    assert allowed == 50
    clock.advance(60)
    allowed = sum(buckets.take("a").allowed for _ in range(100))
    assert allowed == 50


# -- memory -------------------------------------------------------------------------------------------------------


def test_full_buckets_are_dropped_and_drained_ones_kept():
    buckets, clock = make(60)  # refills completely in 60 s
    buckets.take("light")  # full again 1 s later
    buckets.take("heavy", 60)  # full again 60 s later
    assert len(buckets) == 2
    clock.advance(2)
    buckets.take("other")  # every take sweeps
    assert len(buckets) == 2  # light is gone; heavy and other stay
    clock.advance(59)
    buckets.take("other")
    assert len(buckets) == 1  # heavy is full now; other was just used


def test_a_dropped_bucket_comes_back_full():
    buckets, clock = make(10)
    buckets.take("a", 10)
    clock.advance(60)
    buckets.take("b")
    assert len(buckets) == 1
    assert buckets.take("a").remaining == 9


def test_sweep_drops_every_full_bucket_at_the_front():
    buckets, clock = make(60)
    for i in range(1000):
        buckets.take(f"id{i}")
    assert len(buckets) == 1000
    clock.advance(1.0)
    buckets.take("late")
    assert len(buckets) == 1


def test_cap_holds_under_ten_times_more_identifiers():
    buckets, _ = make(60, max_identifiers=100)
    for i in range(1000):
        buckets.take(f"id{i}", 60)  # drained: never dropped as full
        assert len(buckets) <= 100
    assert len(buckets) == 100
    assert buckets.evicted == 900


def test_cap_evicts_the_least_recently_used():
    buckets, clock = make(60, max_identifiers=3)
    for name in ("a", "b", "c"):
        buckets.take(name, 60)
        clock.advance(0.01)
    buckets.take("a")  # a is now the most recently used; b the least
    buckets.take("d", 60)
    # a and c kept their drained buckets; b was evicted, so it starts afresh.
    assert not buckets.take("a").allowed
    assert not buckets.take("c").allowed
    assert buckets.take("b").remaining == 59


# -- set_policy ---------------------------------------------------------------------------------------------------


def test_set_policy_clamps_to_the_new_capacity():
    buckets, _ = make(100)
    buckets.take("a", 10)  # 90 left
    buckets.take("b", 95)  # 5 left
    buckets.set_policy(RateLimitPolicy(20))
    assert buckets.take("a").remaining == pytest.approx(19)
    assert buckets.take("b").remaining == pytest.approx(4)


def test_set_policy_credits_the_old_rate_up_to_the_change_and_the_new_after():
    buckets, clock = make(60)  # 1 token/s
    buckets.take("a", 60)
    clock.advance(10)  # 10 tokens at the old rate
    buckets.set_policy(RateLimitPolicy(600))  # 10 tokens/s
    clock.advance(1)  # +10 at the new rate
    assert buckets.take("a").remaining == pytest.approx(19)


def test_set_policy_does_not_grant_a_grown_capacity():
    buckets, _ = make(10)
    buckets.take("a", 10)
    buckets.set_policy(RateLimitPolicy(1000))
    assert not buckets.take("a").allowed
    assert buckets.policy == RateLimitPolicy(1000)


def test_set_policy_then_drops_buckets_that_are_full():
    buckets, _ = make(100)
    buckets.take("a", 5)  # 95 left: full under a 20-token bucket
    buckets.set_policy(RateLimitPolicy(20))
    assert len(buckets) == 0


def test_clock_stepping_back_credits_nothing_twice():
    buckets, clock = make(60)
    buckets.take("a", 60)
    clock.advance(-30)
    assert not buckets.take("a").allowed
    clock.advance(30)  # back to where the bucket was drained: still nothing earned
    assert not buckets.take("a").allowed
    clock.advance(1)
    assert buckets.take("a").allowed


# -- the bound, by property ---------------------------------------------------------------------------------------

IDENTIFIERS = ("a", "b", "c")

steps = st.lists(
    st.one_of(
        st.tuples(st.just("take"), st.sampled_from(IDENTIFIERS)),
        st.tuples(st.just("advance"), st.floats(min_value=0, max_value=5, allow_nan=False)),
    ),
    max_size=200,
)


@settings(max_examples=150, deadline=None)
@given(
    steps=steps,
    per_minute=st.integers(min_value=1, max_value=120),
    burst=st.one_of(st.none(), st.integers(min_value=1, max_value=20)),
    max_identifiers=st.sampled_from([len(IDENTIFIERS), 1000]),
)
def test_no_window_admits_more_than_capacity_plus_refill(steps, per_minute, burst, max_identifiers):
    """Whatever the interleaving, in any window [t, t + T] an identifier gets at most capacity + rate * T."""
    clock = FakeClock()
    policy = RateLimitPolicy(per_minute, burst=burst)
    buckets = TokenBuckets(policy, clock, max_identifiers=max_identifiers)
    admitted: dict[str, list[float]] = {name: [] for name in IDENTIFIERS}
    for step in steps:
        if step[0] == "advance":
            clock.advance(step[1])
        else:
            decision = buckets.take(step[1])
            assert decision.allowed == (decision.retry_after_s == 0)
            assert 0 <= decision.remaining <= policy.capacity
            if decision.allowed:
                admitted[step[1]].append(clock.now)
        assert len(buckets) <= max_identifiers
    for times in admitted.values():
        # The fullest windows start and end on admitted requests, so checking every such pair checks every window.
        for i in range(len(times)):
            for j in range(i, len(times)):
                span = times[j] - times[i]
                assert j - i + 1 <= policy.capacity + policy.rate_per_s * span + 1e-6


def test_decision_is_frozen():
    decision = Decision(allowed=True, retry_after_s=0.0, remaining=1.0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        decision.allowed = False  # type: ignore[misc]
