"""GuardPool: admission up to the queue bound, spreading calls over worker slots, and never losing a call."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from system.guard_pool import GuardPool


def test_admit_until_the_queue_limit_then_refuse():
    pool: GuardPool[str] = GuardPool(max_workers=2, queue_limit=3)
    assert [pool.admit(c) for c in "abcd"] == [True, True, True, False]
    assert pool.queued == 3


def test_admission_frees_up_once_calls_are_assigned():
    pool: GuardPool[int] = GuardPool(max_workers=1, queue_limit=2, max_batch=2)
    assert pool.admit(1) and pool.admit(2)
    assert not pool.admit(3)
    pool.assignments()
    assert pool.queued == 0
    assert pool.admit(3)


def test_an_empty_queue_assigns_nothing_and_opens_no_slot():
    pool: GuardPool[int] = GuardPool(max_workers=4, queue_limit=10)
    assert pool.assignments() == []
    assert pool.slots == 0


def test_first_call_opens_a_new_slot_flagged_new():
    pool: GuardPool[str] = GuardPool(max_workers=3, queue_limit=10)
    pool.admit("x")
    assert pool.assignments() == [(0, ["x"], True)]
    assert (pool.slots, pool.busy, pool.queued, pool.in_flight) == (1, 1, 0, 1)


def test_an_open_free_slot_is_used_before_a_new_one():
    pool: GuardPool[str] = GuardPool(max_workers=3, queue_limit=10)
    pool.open_slot(0)
    pool.admit("x")
    assert pool.assignments() == [(0, ["x"], False)]
    assert pool.slots == 1


def test_each_free_slot_takes_up_to_max_batch_calls_in_turn_opening_slots_as_needed():
    pool: GuardPool[int] = GuardPool(max_workers=3, queue_limit=100, max_batch=4)
    for i in range(6):
        pool.admit(i)
    out = pool.assignments()
    assert [(slot, new) for slot, _, new in out] == [(0, True), (1, True)]
    assert [calls for _, calls, _ in out] == [[0, 1, 2, 3], [4, 5]]


def test_with_a_batch_of_one_calls_are_spread_over_all_the_slots():
    pool: GuardPool[int] = GuardPool(max_workers=3, queue_limit=100, max_batch=1)
    for i in range(3):
        pool.admit(i)
    assert [calls for _, calls, _ in pool.assignments()] == [[0], [1], [2]]


def test_no_more_than_max_workers_slots_and_max_batch_calls_per_slot():
    pool: GuardPool[int] = GuardPool(max_workers=2, queue_limit=100, max_batch=3)
    for i in range(20):
        pool.admit(i)
    out = pool.assignments()
    assert len(out) == 2
    assert [len(calls) for _, calls, _ in out] == [3, 3]
    assert pool.queued == 14
    assert (pool.slots, pool.busy, pool.in_flight) == (2, 2, 6)
    assert pool.assignments() == []


def test_calls_keep_their_order():
    pool: GuardPool[int] = GuardPool(max_workers=2, queue_limit=100, max_batch=4)
    for i in range(8):
        pool.admit(i)
    handed = [c for _, calls, _ in pool.assignments() for c in calls]
    assert handed == list(range(8))


def test_a_busy_slot_gets_nothing_until_done():
    pool: GuardPool[str] = GuardPool(max_workers=1, queue_limit=10, max_batch=1)
    pool.admit("a")
    pool.admit("b")
    assert pool.assignments() == [(0, ["a"], True)]
    assert pool.assignments() == []
    assert pool.done(0) == ["a"]
    assert (pool.busy, pool.in_flight, pool.slots) == (0, 0, 1)
    assert pool.assignments() == [(0, ["b"], False)]


def test_done_twice_does_not_duplicate_the_free_slot():
    pool: GuardPool[str] = GuardPool(max_workers=2, queue_limit=10, max_batch=1)
    pool.admit("a")
    pool.assignments()
    pool.done(0)
    assert pool.done(0) == []
    assert pool.slots == 1


def test_lost_closes_the_slot_and_returns_its_calls():
    pool: GuardPool[str] = GuardPool(max_workers=1, queue_limit=10, max_batch=2)
    for c in "abc":
        pool.admit(c)
    pool.assignments()
    assert pool.lost(0) == ["a", "b"]
    assert (pool.slots, pool.busy, pool.in_flight, pool.queued) == (0, 0, 0, 1)
    # The closed slot's place is taken by a new worker, under the same slot number (so it keeps the name).
    [(slot, calls, new)] = pool.assignments()
    assert (calls, new) == (["c"], True)
    assert slot == 0


def test_lost_on_a_free_slot_closes_it_with_no_calls():
    pool: GuardPool[str] = GuardPool(max_workers=2, queue_limit=10)
    pool.open_slot(0)
    assert pool.lost(0) == []
    assert pool.slots == 0


def test_lost_on_an_unknown_slot_is_harmless():
    pool: GuardPool[str] = GuardPool(max_workers=2, queue_limit=10)
    assert pool.lost(7) == []
    assert pool.slots == 0


def test_open_slot_counts_a_running_worker_once_and_moves_the_next_slot_number():
    pool: GuardPool[str] = GuardPool(max_workers=3, queue_limit=10, max_batch=1)
    pool.open_slot(0)
    pool.open_slot(0)
    assert pool.slots == 1
    pool.open_slot(4)
    for c in "abc":
        pool.admit(c)
    out = pool.assignments()
    assert sorted(slot for slot, _, new in out if not new) == [0, 4]
    assert [slot for slot, _, new in out if new] == [5]


def test_open_slot_on_a_busy_slot_changes_nothing():
    pool: GuardPool[str] = GuardPool(max_workers=2, queue_limit=10)
    pool.admit("a")
    pool.assignments()
    pool.open_slot(0)
    assert (pool.slots, pool.busy) == (1, 1)


def test_drain_takes_every_queued_call_but_not_those_with_workers():
    pool: GuardPool[int] = GuardPool(max_workers=1, queue_limit=10, max_batch=2)
    for i in range(5):
        pool.admit(i)
    pool.assignments()
    assert pool.drain() == [2, 3, 4]
    assert pool.queued == 0
    assert pool.in_flight == 2
    assert pool.drain() == []


def test_a_reused_free_slot_gets_its_full_share():
    lone: GuardPool[int] = GuardPool(max_workers=1, queue_limit=100, max_batch=4)
    lone.open_slot(0)
    for i in range(4):
        lone.admit(i)
    assert lone.assignments() == [(0, [0, 1, 2, 3], False)]

    pair: GuardPool[int] = GuardPool(max_workers=2, queue_limit=100, max_batch=4)
    pair.open_slot(0)
    for i in range(6):
        pair.admit(i)
    assert [(slot, len(calls), new) for slot, calls, new in pair.assignments()] == [(0, 4, False), (1, 2, True)]


# -- holding calls for a busy worker ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def held_pool(max_batch: int = 4, hold_s: float = 0.01) -> tuple[GuardPool[int], FakeClock]:
    clock = FakeClock()
    return GuardPool(max_workers=3, queue_limit=100, max_batch=max_batch, hold_s=hold_s, clock=clock), clock


def test_with_no_worker_busy_a_lone_call_goes_at_once():
    pool, _ = held_pool()
    pool.admit(1)
    assert pool.held() is None
    assert pool.assignments() == [(0, [1], True)]


def test_while_a_worker_is_busy_a_call_short_of_a_batch_waits_for_it():
    pool, clock = held_pool()
    pool.admit(1)
    pool.assignments()
    pool.admit(2)
    assert pool.assignments() == []
    assert pool.held() == pytest.approx(0.01)
    clock.now += 0.004
    assert pool.held() == pytest.approx(0.006)
    # The busy worker comes back first: it takes the waiting call (and any that joined it) in one batch.
    pool.admit(3)
    pool.done(0)
    assert pool.held() is None
    assert pool.assignments() == [(0, [2, 3], False)]


def test_a_held_call_goes_to_another_worker_when_its_wait_is_over():
    pool, clock = held_pool()
    pool.admit(1)
    pool.assignments()
    pool.admit(2)
    clock.now += 0.01
    assert pool.held() is None
    assert pool.assignments() == [(1, [2], True)]


def test_a_full_batch_is_never_held():
    pool, _ = held_pool(max_batch=2)
    pool.admit(1)
    pool.assignments()
    pool.admit(2)
    pool.admit(3)
    assert pool.held() is None
    assert pool.assignments() == [(1, [2, 3], True)]


def test_without_a_hold_calls_spread_at_once():
    pool, _ = held_pool(hold_s=0.0)
    pool.admit(1)
    pool.assignments()
    pool.admit(2)
    assert pool.held() is None
    assert pool.assignments() == [(1, [2], True)]


def test_draining_forgets_when_the_held_calls_arrived():
    pool, clock = held_pool()
    pool.admit(1)
    pool.assignments()
    pool.admit(2)
    assert pool.drain() == [2]
    assert pool.held() is None
    clock.now += 1
    pool.admit(3)  # a fresh call waits its own full hold, not the drained call's
    assert pool.held() == pytest.approx(0.01)


# -- property: no call is ever lost or duplicated ---------------------------------------------------------------

pool_ops = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.integers(min_value=1, max_value=5)),
        st.tuples(st.just("assign")),
        st.tuples(st.just("done"), st.integers(min_value=0, max_value=20)),
        st.tuples(st.just("lost"), st.integers(min_value=0, max_value=20)),
        st.tuples(st.just("open"), st.integers(min_value=0, max_value=20)),
        st.tuples(st.just("drain")),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=1, max_value=5),
    st.sampled_from([0.0, 0.01]),
    pool_ops,
)
def test_every_admitted_call_is_assigned_or_drained_exactly_once(max_workers, queue_limit, max_batch, hold_s, ops):
    clock = FakeClock()
    pool: GuardPool[int] = GuardPool(max_workers, queue_limit, max_batch, hold_s=hold_s, clock=clock)
    next_call = 0
    admitted: list[int] = []
    placed: list[int] = []  # every call in an assignment or a drain, in the order handed out
    held: dict[int, list[int]] = {}  # the model: which calls each busy slot holds

    def assign() -> None:
        for slot, calls, _new in pool.assignments():
            assert slot not in held, "a busy slot was handed more work"
            assert 1 <= len(calls) <= max_batch
            held[slot] = list(calls)
            placed.extend(calls)

    for op in ops:
        if op[0] == "admit":
            for _ in range(op[1]):
                full = pool.queued >= queue_limit
                assert pool.admit(next_call) is not full
                if not full:
                    admitted.append(next_call)
                next_call += 1
        elif op[0] == "assign":
            clock.now += 0.004  # held calls go out after a few assignment rounds
            assign()
        elif op[0] == "done":
            if held:  # only a busy slot's worker reports done
                slot = sorted(held)[op[1] % len(held)]
                assert pool.done(slot) == held.pop(slot)
        elif op[0] == "lost":
            slot = sorted(held)[op[1] % len(held)] if held else op[1]
            assert pool.lost(slot) == held.pop(slot, [])
        elif op[0] == "open":
            if pool.slots < max_workers and op[1] not in held:
                pool.open_slot(op[1])
        else:
            placed.extend(pool.drain())
        assert pool.slots <= max_workers
        assert pool.busy == len(held)
        assert pool.in_flight == sum(len(calls) for calls in held.values())
        assert pool.queued <= queue_limit
        assert len(placed) == len(set(placed)), "a call was handed out twice"
        assert len(placed) + pool.queued == len(admitted)
    for slot in list(held):
        assert pool.done(slot) == held.pop(slot)
    assign()
    placed.extend(pool.drain())
    assert sorted(placed) == admitted
